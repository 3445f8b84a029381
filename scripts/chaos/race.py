"""Scenario race: three pollers and two sweepers looping while files arrive."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import config

from .checks import Checker, add_verdict, drop_files
from .core import FLAKY_COMMAND, Interrupted, Mode, log
from .drive import drive
from .report import Report, Row
from .stack import Stack


def scenario_race(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("race: 3 pollers + 2 sweepers looping", trials=1)
    arena = stack.arena("race")
    env = stack.env(
        arena,
        None,
        None,
        {
            config.BATCH_MAX_FILES: "25",
            config.MAX_BATCHES_PER_TICK: "8",
            config.MAX_ACTIVE_GROUPS: "40",
            config.IO_CONCURRENCY: "8",
            # Realistic, well above a claim's duration: these processes are alive.
            config.STUCK_CLAIM_SECONDS: "20",
            config.ACI_COMMAND: FLAKY_COMMAND,
        },
    )
    ticks = Counter[str]()
    busy = Counter[str]()
    crashed: list[str] = []
    lock = threading.Lock()
    waves_done = [0]
    started = time.monotonic()

    def total() -> int:
        with lock:
            return sum(ticks.values())

    def maybe_drop() -> None:
        # Wave k goes in once k/waves of the ticks have run (the first one at once).
        with lock:
            due = min(mode.race_waves, 1 + sum(ticks.values()) * mode.race_waves // mode.race_ticks)
            todo = list(range(waves_done[0], due))
            waves_done[0] = max(due, waves_done[0])
        for w in todo:
            files = mode.race_files
            count = files * (w + 1) // mode.race_waves - files * w // mode.race_waves
            names = [f"incoming/w{w:02d}/f{k:04d}.dat" for k in range(count)]
            drop_files(arena, names, rng)
            log(f"race: wave {w + 1}/{mode.race_waves} dropped ({count} files) at tick {total()}")

    def loop(role: str, index: int) -> None:
        lrng = random.Random(rng.random())
        while not stack.stop.is_set():
            if total() >= mode.race_ticks and waves_done[0] >= mode.race_waves:
                return
            maybe_drop()
            run = stack.run(role, env, tag=f"race.{role}{index}")
            data = run.report() or {}
            with lock:
                ticks[role] += 1
                if data.get("lease_busy") or run.rc == 3:
                    busy[role] += 1
                if run.crashed:
                    crashed.append(f"{run.stderr.name}: rc {run.rc}")
            time.sleep(lrng.uniform(0, 0.3))

    maybe_drop()
    threads = [
        threading.Thread(target=loop, args=(role, i), name=f"race-{role}{i}", daemon=True)
        for role, i in (("poll", 1), ("poll", 2), ("poll", 3), ("sweep", 1), ("sweep", 2))
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(1)
            if stack.stop.is_set():
                raise Interrupted("stopping")
    loops_seconds = time.monotonic() - started
    log(f"race: {total()} ticks in {loops_seconds:.0f}s ({dict(ticks)}); draining")
    # Drain: every looping process has exited, so immediate recovery is safe now.
    drain_env = {**env, config.STUCK_CLAIM_SECONDS: "0"}
    stats = drive(stack, arena, drain_env, drain_env, "race.drain", seconds=mode.scenario_seconds)
    v = Checker(stack).check(arena)
    add_verdict(row, v, "race")
    if not stats.quiet:
        row.failures.append(f"not quiescent {mode.scenario_seconds:.0f}s after the loops")
    row.figures.update(
        ticks=sum(ticks.values()), poll_ticks=ticks["poll"], sweep_ticks=ticks["sweep"]
    )
    row.notes.append(
        f"{sum(ticks.values())} ticks ({ticks['poll']} poll, {ticks['sweep']} sweep) "
        f"in {loops_seconds:.0f}s; lease busy: {busy['poll']} poll, {busy['sweep']} sweep; "
        f"{v.creates} group creates; drain {stats.runs} runs"
    )
    row.notes += [f"unhandled exception in {c}" for c in crashed[:3]]
    log(f"race: {v.summary()}")
    return row
