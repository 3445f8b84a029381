"""Command line for operators; settings come from the environment over ./local.settings.json.

python -m cleanup sweep [--dry-run]           one janitor sweep (JSON report)
python -m cleanup batches [--state S] [--json] [--continuation-token T]
                                              batches newest first, as a table, a page at a time
python -m cleanup logs BATCH [--attempt N]    a batch's container log
python -m cleanup retry BATCH [--json]        put a failed batch's inputs back
python -m cleanup release BATCH               move a quarantined batch to failed/
python -m cleanup backfill-index              index batches finished before the history index
python -m cleanup costs [--days N] [--batches] [--json]
                                              usage and estimated cost per profile (and batch)
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from cleanup import costs, history
from cleanup.admin import BadRequest, batch_logs, release_quarantined, retry_failed
from cleanup.sweep import sweep
from config import ConfigError, load_local_settings
from launcher import telemetry
from launcher.__main__ import add_settings_option, configure_logging
from launcher.batch import State, parse_iso
from launcher.clients import Clients, get_clients
from launcher.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, explain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cleanup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_sweep = sub.add_parser("sweep", help="run one janitor sweep")
    p_sweep.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p_list = sub.add_parser("batches", help="list batches newest first")
    p_list.add_argument("--state", choices=[s.value for s in State])
    p_list.add_argument("--limit", type=int, default=50)
    p_list.add_argument("--json", action="store_true", help="full rows as JSON, for scripts")
    p_logs = sub.add_parser("logs", help="print a batch's container log")
    p_logs.add_argument("batch")
    p_logs.add_argument("--attempt", type=int, help="which attempt (default: the latest)")
    p_list.add_argument("--continuation-token", help="from the previous page's output")
    p_backfill = sub.add_parser(
        "backfill-index", help="index batches finished before the history index (once)"
    )
    p_retry = sub.add_parser("retry", help="put a failed batch's inputs back into incoming/")
    p_retry.add_argument("batch")
    p_retry.add_argument("--json", action="store_true", help="the report as JSON")
    p_release = sub.add_parser(
        "release", help="move a quarantined batch to failed/ so that retry can restore it"
    )
    p_release.add_argument("batch")
    p_costs = sub.add_parser(
        "costs", help="usage and estimated cost per profile of the batches claimed in a window"
    )
    p_costs.add_argument(
        "--days",
        default=str(costs.DEFAULT_DAYS),
        help=f"the window: batches claimed in the last N days (default {costs.DEFAULT_DAYS}, "
        f"at most {costs.MAX_DAYS})",
    )
    p_costs.add_argument("--batches", action="store_true", help="also one line per batch")
    p_costs.add_argument("--json", action="store_true", help="the summary as JSON, for scripts")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_settings_option(parser)
    for command in (p_sweep, p_list, p_logs, p_retry, p_release, p_backfill, p_costs):
        add_settings_option(command, sub=True)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    telemetry.setup()
    try:
        settings = load_local_settings(args.settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _run(args, get_clients(settings))
    except BadRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        problem = explain(exc, settings)
        if problem is None:
            raise
        print(f"error: {problem.message}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def _dump(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _run(args: argparse.Namespace, clients: Clients) -> int:
    if args.command == "sweep":
        report = sweep(clients, dry_run=args.dry_run)
        _dump(report.to_dict())
        if report.lease_busy:
            return 3
        return 1 if report.errors else 0
    if args.command == "release":
        _dump(release_quarantined(clients, args.batch))
        return 0
    if args.command == "retry":
        result = retry_failed(clients, args.batch)
        if args.json:
            _dump(result)
        else:
            print(retry_text(result, clients.settings.incoming_prefix))
        return 0
    if args.command == "logs":
        logs = batch_logs(clients, args.batch, args.attempt)
        print(f"# batch {logs.batch} attempt {logs.attempt}: {logs.source}", file=sys.stderr)
        sys.stdout.write(
            logs.text if logs.text.endswith("\n") or not logs.text else logs.text + "\n"
        )
        return 0
    if args.command == "costs":
        summary = costs.per_profile(clients, costs.window_days(args.days), args.batches)
        if args.json:
            _dump(summary)
        else:
            print(costs_text(summary))
        return 0
    if args.command == "backfill-index":
        _dump({"indexed": history.backfill(clients)})
        return 0
    try:
        page = history.list_page(
            clients, State(args.state) if args.state else None, args.limit, args.continuation_token
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if args.json:
        _dump(page.to_dict())
    else:
        print(batches_table(page.batches, datetime.now(UTC)))
        if page.continuation_token:
            print(f"more: --continuation-token {page.continuation_token}")
    return 0


def retry_text(result: dict[str, Any], incoming: str) -> str:
    """What `retry` did, and how the new batch will be linked to the old."""
    batch = result["batch"]
    lines = [f"batch {batch}: {len(result['restored'])} input(s) put back into {incoming}"]
    lines += [f"  {name}" for name in result["restored"]]
    if result["restored_earlier"]:
        lines.append(f"{result['restored_earlier']} input(s) had been put back by an earlier retry")
    for kept in result["kept"]:
        lines.append(
            f"kept: {kept['file']} exists in {incoming}; old input stays at {kept['kept_at']}"
        )
    lines.append(
        f"the next poll claims them as a new batch that names this one (retry_of {batch}); "
        "`python -m cleanup batches` shows both"
    )
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]], numeric_from: int) -> str:
    """Aligned columns; columns from `numeric_from` on are right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i >= numeric_from else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def _amount(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _usage_cells(row: dict[str, Any]) -> tuple[str, ...]:
    return (
        _amount(row.get("vcpu_seconds"), 1),
        _amount(row.get("gb_seconds"), 1),
        _amount(row.get("gpu_seconds"), 1),
        _amount(row.get("cost"), 6),
    )


USAGE_HEADER = ("VCPU-S", "GB-S", "GPU-S")


def costs_text(summary: dict[str, Any]) -> str:
    """The cost summary as tables: one line per profile and the total, then (with --batches)
    one line per batch."""
    currency = summary["currency"]
    lines = [
        f"estimated cost of the batches claimed {summary['since']} .. {summary['until']} "
        f"({summary['days']:g} days; {currency} at the PRICE_* settings; running batches not "
        "counted)"
    ]
    if not summary["profiles"]:
        lines.append("no finished batches in this window")
        return "\n".join(lines)
    table: list[tuple[str, ...]] = [
        ("PROFILE", "BATCHES", "SUCCEEDED", "FAILED", "ATTEMPTS", *USAGE_HEADER, currency)
    ]
    for name, p in summary["profiles"].items():
        counts = (p["batches"], p["succeeded"], p["failed"], p["attempts"])
        table.append((name, *map(str, counts), *_usage_cells(p)))
    total = summary["total"]
    table.append(
        ("(total)", str(total["batches"]), "", "", str(total["attempts"]), *_usage_cells(total))
    )
    lines.append(_table(table, numeric_from=1))
    if summary["truncated"]:
        lines.append(f"truncated: only the newest {costs.MAX_ENTRIES} batches are summed")
    if "per_batch" in summary:
        rows: list[tuple[str, ...]] = [
            ("BATCH", "PROFILE", "STATE", "ATTEMPTS", *USAGE_HEADER, currency)
        ]
        for b in summary["per_batch"]:
            attempts = "-" if b["attempt"] is None else str(b["attempt"])
            rows.append((b["batch"], b["profile"], b["state"], attempts, *_usage_cells(b)))
        lines += ["", _table(rows, numeric_from=3)]
    return "\n".join(lines)


def _age(created: str | None, now: datetime) -> str:
    when = parse_iso(created) if created else None
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def batches_table(rows: list[dict[str, Any]], now: datetime) -> str:
    """One line per batch: what the user dropped, where it is, and why it failed."""
    retried_as = {r["retry_of"]: r["batch"] for r in rows if r.get("retry_of")}
    table = [("BATCH", "DROPPED", "STATE", "FILES", "ATTEMPTS", "AGE", "REASON")]
    for r in rows:
        notes = [r.get("reason") or r.get("error") or ""]
        if r.get("retry_of"):
            notes.append(f"retry of {r['retry_of']}")
        if r["batch"] in retried_as:
            notes.append(f"retried as {retried_as[r['batch']]}")
        elif r.get("retried_at"):
            notes.append(f"retried {r['retried_at']}")
        table.append(
            (
                r["batch"],
                str(r.get("label") or r.get("folder") or "-"),
                r["state"],
                str(r.get("files", "-")),
                str(r.get("attempt", "-")),
                _age(r.get("claimed_at"), now),
                "; ".join(n for n in notes if n),
            )
        )
    if len(table) == 1:
        return "no batches"
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        (
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        ).rstrip()
        for row in table
    )


if __name__ == "__main__":
    sys.exit(main())
