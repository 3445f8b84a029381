"""Command line: `python -m cleanup sweep [--dry-run]`,
`python -m cleanup batches [--state S] [--limit N] [--continuation-token T]`,
`python -m cleanup retry BATCH`, `python -m cleanup backfill-index`."""

from __future__ import annotations

import argparse
import json
import sys

from cleanup import history
from cleanup.admin import BadRequest, retry_failed
from cleanup.sweep import sweep
from config import ConfigError, get_settings
from launcher import telemetry
from launcher.__main__ import configure_logging
from launcher.batch import State
from launcher.clients import get_clients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleanup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sweep = sub.add_parser("sweep", help="run one janitor sweep")
    p_sweep.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p_list = sub.add_parser("batches", help="list batches newest first")
    p_list.add_argument("--state", choices=[s.value for s in State])
    p_list.add_argument("--limit", type=int, default=50)
    p_list.add_argument("--continuation-token", help="from the previous page's output")
    sub.add_parser("backfill-index", help="index batches finished before the history index (once)")
    p_retry = sub.add_parser("retry", help="put a failed batch's inputs back into incoming/")
    p_retry.add_argument("batch")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    telemetry.setup()
    try:
        clients = get_clients(get_settings())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "sweep":
        report = sweep(clients, dry_run=args.dry_run)
        print(json.dumps(report.to_dict(), indent=2, default=str))
        if report.lease_busy:
            return 3
        return 1 if report.errors else 0
    if args.command == "retry":
        try:
            restored = retry_failed(clients, args.batch)
        except BadRequest as exc:
            print(exc, file=sys.stderr)
            return 2
        print(json.dumps({"batch": args.batch, "restored": restored}, indent=2))
        return 0
    if args.command == "backfill-index":
        print(json.dumps({"indexed": history.backfill(clients)}))
        return 0
    try:
        page = history.list_page(
            clients, State(args.state) if args.state else None, args.limit, args.continuation_token
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(page.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
