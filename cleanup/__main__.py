"""Command line: `python -m cleanup sweep [--dry-run]`, `python -m cleanup batches [--state S]`,
`python -m cleanup retry BATCH`, `python -m cleanup release BATCH` (a quarantined batch)."""

from __future__ import annotations

import argparse
import json
import sys

from cleanup.admin import BadRequest, batch_summaries, release_quarantined, retry_failed
from cleanup.sweep import sweep
from config import ConfigError, get_settings
from launcher.__main__ import configure_logging
from launcher.batch import State
from launcher.clients import Clients, get_clients
from launcher.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, explain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleanup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sweep = sub.add_parser("sweep", help="run one janitor sweep")
    p_sweep.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p_list = sub.add_parser("batches", help="list batches newest first")
    p_list.add_argument("--state", choices=[s.value for s in State])
    p_list.add_argument("--limit", type=int, default=50)
    p_retry = sub.add_parser("retry", help="put a failed batch's inputs back into incoming/")
    p_retry.add_argument("batch")
    p_release = sub.add_parser(
        "release", help="move a quarantined batch to failed/ so that retry can restore it"
    )
    p_release.add_argument("batch")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _run(args, get_clients(settings))
    except Exception as exc:
        problem = explain(exc, settings)
        if problem is None:
            raise
        print(f"error: {problem.message}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def _run(args: argparse.Namespace, clients: Clients) -> int:
    if args.command == "sweep":
        report = sweep(clients, dry_run=args.dry_run)
        print(json.dumps(report.to_dict(), indent=2, default=str, ensure_ascii=False))
        if report.lease_busy:
            return 3
        return 1 if report.errors else 0
    if args.command == "release":
        try:
            released = release_quarantined(clients, args.batch)
        except BadRequest as exc:
            print(exc, file=sys.stderr)
            return 2
        print(json.dumps(released, indent=2, ensure_ascii=False))
        return 0
    if args.command == "retry":
        try:
            result = retry_failed(clients, args.batch)
        except BadRequest as exc:
            print(exc, file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    rows = batch_summaries(clients, State(args.state) if args.state else None, args.limit)
    print(json.dumps(rows, indent=2, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
