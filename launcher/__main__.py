"""Command line: `python -m launcher poll|recover|check-config` (same code the timer runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from config import ConfigError, load_local_settings
from launcher import telemetry
from launcher.clients import get_clients
from launcher.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, explain
from launcher.poll import poll, recover

logger = logging.getLogger("launcher")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # azure-core logs every request header at INFO; keep the app's own lines readable.
    logging.getLogger("azure").setLevel(logging.WARNING)


def add_settings_option(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """`--settings FILE`; on a subcommand too (`sub`), where it must not reset the main one."""
    parser.add_argument(
        "--settings",
        metavar="FILE",
        default=argparse.SUPPRESS if sub else None,
        help="read the Values of this local.settings.json under the environment "
        "(default: ./local.settings.json when it exists; the environment wins)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    parser.add_argument("command", choices=["poll", "recover", "check-config"])
    parser.add_argument("-v", "--verbose", action="store_true")
    add_settings_option(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    telemetry.setup()
    try:
        settings = load_local_settings(args.settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print("configuration is valid")
        return 0
    clients = get_clients(settings)
    try:
        report = poll(clients) if args.command == "poll" else recover(clients)
    except Exception as exc:
        problem = explain(exc, settings)
        if problem is None:
            raise
        print(f"error: {problem.message}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    print(json.dumps(report.to_dict(), indent=2, default=str, ensure_ascii=False))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
