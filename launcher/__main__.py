"""Command line: `python -m launcher poll|recover|check-config` (same code the timer runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from config import ConfigError, get_settings
from launcher import telemetry
from launcher.clients import get_clients
from launcher.poll import poll, recover

logger = logging.getLogger("launcher")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # azure-core logs every request header at INFO; keep the app's own lines readable.
    logging.getLogger("azure").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    parser.add_argument("command", choices=["poll", "recover", "check-config"])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    telemetry.setup()
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print("configuration is valid")
        return 0
    clients = get_clients(settings)
    report = poll(clients) if args.command == "poll" else recover(clients)
    print(json.dumps(report.to_dict(), indent=2, default=str))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
