"""Command line: `python -m scripts.chaos` (from the repository root), the suite's only entry."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import tempfile
from pathlib import Path
from typing import Any

from . import __doc__ as suite_doc
from .core import FULL, QUICK, log
from .report import print_report
from .suite import SCENARIOS, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.chaos", description=(suite_doc or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small counts (used by make test)")
    parser.add_argument("--seed", type=int, default=20261123, help="seed of every random choice")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--crash-trials", type=int, help="override the number of crash trials")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="logs and emulator state (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    mode = QUICK if args.quick else FULL
    if args.crash_trials is not None:
        mode = dataclasses.replace(mode, crash_trials=args.crash_trials)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    # The SDK warns about error bodies it cannot parse (Azurite's 500s on unlistable names).
    logging.getLogger("azure").setLevel(logging.ERROR)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C, even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log(f"mode {mode.name}, seed {args.seed}, scenarios {','.join(only)}, workdir {workdir}")
    try:
        report = run_suite(mode, args.seed, only, workdir)
    except KeyboardInterrupt:
        log("interrupted: every process started by this run was stopped")
        return 130
    print_report(report, mode)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
