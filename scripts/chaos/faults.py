"""Scenario faults: 10% of storage and of ARM requests fail."""

from __future__ import annotations

import random
import re
from collections import Counter

import config
from localdev.proxy import FaultConfig

from .checks import Checker, add_verdict, drop_files
from .core import PASS_COMMAND, WORKER_IMAGE, Mode, log
from .drive import drive
from .report import Report, Row
from .stack import Stack, fault_mix


def scenario_faults(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("faults: 10% storage + 10% ARM requests fail")
    checker = Checker(stack)
    for run_index in range(mode.fault_runs):
        seed = rng.randrange(2**31)
        worker = mode.fault_worker and run_index == 0
        storage = stack.storage_proxy(faults=FaultConfig.spread(0.10, retry_after_s=0.2), seed=seed)
        arm = stack.arm_proxy(
            faults=FaultConfig.spread(0.10, retry_after_s=0.2, flavor="arm"), seed=seed + 1
        )
        arena = stack.arena("faults")
        env = stack.env(
            arena,
            storage,
            arm,
            {
                config.BATCH_MAX_FILES: "10",
                # The real sample worker reads and writes through the same faulty proxy; the
                # quick run keeps to a no-op container to stay short.
                config.ACI_IMAGE: WORKER_IMAGE if worker else "python:3.11",
                config.ACI_COMMAND: "" if worker else PASS_COMMAND,
                config.MAX_ATTEMPTS: "3",
                config.JOB_TIMEOUT_MINUTES: "3",
            },
        )
        names = [f"incoming/run{run_index}/doc{k:03d}.txt" for k in range(mode.fault_files)]
        drop_files(arena, names, rng)
        stats = drive(
            stack,
            arena,
            env,
            env,
            f"faults{run_index}",
            seconds=mode.fault_seconds,
            run_seconds=mode.fault_seconds,
        )
        v = checker.check(arena)
        row.trials += 1
        add_verdict(row, v, f"fault run {run_index}")
        if not stats.quiet:
            row.failures.append(
                f"fault run {run_index}: not quiescent after {mode.fault_seconds:.0f}s"
            )
        s_counts, s_faults = storage.counts(), storage.fault_counts()
        a_counts, a_faults = arm.counts(), arm.fault_counts()
        for key, value in (
            ("storage_requests", s_counts["total"]),
            ("storage_faults", s_faults["total"]),
            ("arm_requests", a_counts["total"]),
            ("arm_faults", a_faults["total"]),
        ):
            row.figures[key] = row.figures.get(key, 0) + value
        outcomes = Counter(
            "done" if n.startswith("done/") else "failed"
            for n in (b.name for b in arena.container.list_blobs())
            if re.fullmatch(r"(done|failed)/[^/]+/_batch\.json", n)
        )
        row.notes.append(
            f"run {run_index} ({'sample worker' if worker else 'no-op container'}): storage "
            f"{s_faults['total']}/{s_counts['total']} requests faulted "
            f"({fault_mix(s_faults)}), ARM {a_faults['total']}/{a_counts['total']} "
            f"({fault_mix(a_faults)}); batches {dict(outcomes)}; {stats.runs} runs, "
            f"{len(stats.crashed)} ended by an unhandled exception, {len(stats.timed_out)} "
            "stopped by the time bound"
        )
        log(f"faults run {run_index}: {v.summary()}; {row.notes[-1]}")
        storage.set_faults(None)
        arm.set_faults(None)
    return row
