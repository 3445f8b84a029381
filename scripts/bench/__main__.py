"""Command line: `python -m scripts.bench` (from the repository root); see the package
docstring for what it measures and how."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .common import Config
from .harness import Bench, run_proxy
from .report import slim, table
from .sections import SECTIONS

ALL = ",".join(SECTIONS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Benchmark the app against Azurite and the ACI emulator behind counting, "
        "delaying proxies (see the scripts.bench docstring).",
    )
    p.add_argument("--tiny", action="store_true", help="50 / 200 files, 10 groups, 2,000 waiting")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--delay-ms", type=float, default=20.0, help="added per request by the proxies")
    p.add_argument("--files", type=int, help="files of the claim runs (default 1,000; tiny 50)")
    p.add_argument(
        "--baseline-files", type=int, help="files of each baseline run (default files/5, >= 50)"
    )
    p.add_argument("--scale-files", type=int, help="files of the scale run (default 10x; tiny 4x)")
    p.add_argument(
        "--backlog-files", type=int, help="files waiting in row 9 (default 100,000; tiny 2,000)"
    )
    p.add_argument("--groups", type=int, help="finished groups to sweep (default 200; tiny 10)")
    p.add_argument("--rounds", type=int, help="runs of project and ceiling (default 3; tiny 1)")
    p.add_argument("--tolerance", type=float, default=0.2, help="allowed excess over linear")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    p.add_argument("--only", default=ALL, help=f"sections to run (default {ALL})")
    p.add_argument("--profile", type=Path, help="record every worker with py-spy into this folder")
    p.add_argument("--workdir", type=Path, help="keep worker and proxy logs here (default: temp)")
    p.add_argument(
        "--stock-azurite",
        action="store_true",
        help="run Azurite without the fast-delete preload (see the scripts.bench docstring)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so Azurite, the emulator and the proxies are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from cleanup.sweep import SWEEP_CONCURRENCY
    from config import load_settings
    from localdev.aci_emulator.testing import start_emulator

    claim_files = args.files or (50 if args.tiny else 1000)
    scale_files = args.scale_files or claim_files * (4 if args.tiny else 10)
    cfg = Config(
        tiny=args.tiny,
        delay_ms=args.delay_ms,
        claim_files=claim_files,
        baseline_files=args.baseline_files or max(50, claim_files // 5),
        scale_files=scale_files,
        sweep_groups=args.groups or (10 if args.tiny else 200),
        batch_max_files=max(1, claim_files // 2),
        tolerance=args.tolerance,
        rounds=max(1, args.rounds or (1 if args.tiny else 3)),
        stock_azurite=args.stock_azurite,
        sweep_concurrency=SWEEP_CONCURRENCY,
        backlog_files=args.backlog_files or (2_000 if args.tiny else 100_000),
        blocked_files=300 if args.tiny else 10_000,
        blocked_claimable=50 if args.tiny else 1_000,
        drain_files=600 if args.tiny else 2_000,
    )
    only = set(args.only.split(","))
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ml-bench-")))
        # Azure's defaults, except that the sweep sets up `sweep_groups` (200) groups at once:
        # ContainerGroups, StandardCores and the create/delete budgets (100 per 5 minutes) are
        # Azure's "changeable limits", raised here as a subscription running at that scale
        # would have them raised. Every benchmark resource group is `rg-<container>`.
        emulator = stack.enter_context(
            start_emulator(
                workdir / "aci",
                resource_groups=["rg-*"],
                quota=None,
                cores_quota=None,
                creates_per_5_minutes=None,
                creates_per_hour=None,
                deletes_per_5_minutes=None,
                deletes_per_hour=None,
            )
        )
        bench = Bench(cfg, workdir, emulator, args.profile)
        stack.callback(bench.close)
        bench.storage = stack.enter_context(
            run_proxy(
                f"http://127.0.0.1:{bench.azurite_port}",
                cfg.delay_ms,
                workdir / "proxy-storage.log",
            )
        )
        bench.arm = stack.enter_context(
            run_proxy(emulator.url, cfg.delay_ms, workdir / "proxy-arm.log", True, str(emulator.ca))
        )
        cfg.io_concurrency = load_settings(bench.env("probe")).io_concurrency
        print(
            f"benchmark: {cfg.delay_ms:g} ms per request; claim {cfg.claim_files:,} files "
            f"({cfg.rounds} round(s)), scale {cfg.scale_files:,}, sweep {cfg.sweep_groups} "
            f"groups; IO_CONCURRENCY {cfg.io_concurrency}; {cfg.cpu_count} CPU(s), load "
            f"{load_start:.1f}; Azurite {'stock' if cfg.stock_azurite else 'with fast-delete preload'}",
            flush=True,
        )
        for section, run in SECTIONS.items():
            if section in only:
                run(bench)
    elapsed = time.monotonic() - started
    rows = bench.rows
    missed = [r.key for r in rows if r.met is False]
    print()
    print(table(rows))
    print(f"\nmissed: {', '.join(missed) or 'none'}; took {elapsed:.0f} s")
    if args.json:
        document = {
            "config": asdict(cfg),
            "rows": [asdict(r) for r in rows],
            "missed": missed,
            "elapsed_seconds": round(elapsed, 1),
            "loadavg": {"start": load_start, "end": os.getloadavg()[0]},
            "raw": {
                k: (slim(v) if isinstance(v, dict) and "seconds" in v else v)
                for k, v in bench.raw.items()
            },
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
