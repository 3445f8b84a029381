"""The scenario registry and the run of a suite over one shared stack."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .badconfig import scenario_config
from .badinput import scenario_badinput
from .core import Interrupted, Mode, log
from .crash import scenario_crash
from .faults import scenario_faults
from .lease import scenario_lease
from .operator import scenario_operator
from .race import scenario_race
from .refusals import scenario_refusals
from .report import Report, Row
from .security import scan_secrets, scenario_security
from .skew import scenario_skew
from .stack import Stack
from .stall import scenario_stall

# A scenario runs on the shared stack with its own seeded rng and returns its row; it may also
# add checks and per-case records to the report.
Scenario = Callable[[Stack, Mode, random.Random, Report], Row]

# The registry: every scenario by its `--only` name, in the order the suite runs and reports them.
SCENARIOS: dict[str, Scenario] = {
    "crash": scenario_crash,
    "race": scenario_race,
    "faults": scenario_faults,
    "lease": scenario_lease,
    "stall": scenario_stall,
    "skew": scenario_skew,
    "operator": scenario_operator,
    "refusals": scenario_refusals,
    "badinput": scenario_badinput,
    "config": scenario_config,
    "security": scenario_security,
}


# Mostly waiting in the storage SDK's retry back-off (15 s and more after each fault): runs
# alongside the other scenarios, which use their own containers and resource groups.
BACKGROUND = ("faults",)


def run_suite(mode: Mode, seed: int, only: Sequence[str], workdir: Path) -> Report:
    report = Report(mode=mode.name, seed=seed, logdir=str(workdir / "logs"))
    started = time.monotonic()
    rows: dict[str, Row] = {}
    errors: list[BaseException] = []

    def scenario(stack: Stack, name: str) -> None:
        rng = random.Random(f"{seed}:{name}")
        log(f"scenario {name} ...")
        t0 = time.monotonic()
        try:
            row = SCENARIOS[name](stack, mode, rng, report)
        except Interrupted:
            return
        except BaseException as exc:
            errors.append(exc)
            stack.stop.set()
            raise
        row.seconds = round(time.monotonic() - t0, 1)
        rows[name] = row
        log(f"scenario {name}: {'ok' if row.ok else 'FAIL'} in {row.seconds:.0f}s")

    with Stack(workdir, seed) as stack:
        stack.start()
        log(f"stack up: Azurite :{stack.azurite.port}, ACI emulator {stack.emulator.url}")
        background = [
            threading.Thread(target=scenario, args=(stack, n), name=n, daemon=True)
            for n in only
            if n in BACKGROUND and len(only) > 1
        ]
        try:
            for thread in background:
                thread.start()
            for name in only:
                if not any(t.name == name for t in background):
                    scenario(stack, name)
            for thread in background:
                while thread.is_alive():
                    thread.join(1)
            if errors:
                raise errors[0]
            if "security" in rows:
                # Every process of the whole run has finished: scan all their logs.
                check = scan_secrets(stack)
                report.checks.append(check)
                log(f"security: {'ok  ' if check.ok else 'FAIL'} {check.name} ({check.detail})")
                if not check.ok:
                    rows["security"].failures.append(f"{check.name}: {check.detail}")
        finally:
            stack.stop.set()
    report.rows = [rows[n] for n in SCENARIOS if n in rows]
    report.seconds = round(time.monotonic() - started, 1)
    return report
