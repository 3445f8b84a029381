"""Scenario lease: the poll lease is stolen while its holder is still working."""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from typing import Any

from azure.storage.blob import BlobLeaseClient

import config
from localdev.proxy import FaultConfig

from .checks import Checker, add_verdict, drop_files
from .core import Interrupted, Mode, log
from .drive import drive
from .report import CheckResult, Report, Row
from .stack import Arena, Stack, fault_mix


def scenario_lease(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    """Three ways to lose the poll lease while still working, in turn over the trials:
    `claim`: the lease is broken in the middle of the victim's claims and a second poller takes
    it at once (both claim the same files for a few seconds); `launch`: the lease is broken
    while the victim's container group PUT is in flight and the new holder's whole tick runs
    before that PUT reaches ARM (a process that stalls longer than its lease); `faults`: as
    `claim`, with 10% of the victim's storage requests failing as well (500, 503, 429, dropped
    before or after storage applied them), lease renewals and Blob Batch deletes included."""
    row = Row("lease theft: poll lease broken mid-tick")
    checker = Checker(stack)
    arm = stack.arm_proxy()
    variants = ("claim", "launch", "faults")
    for trial in range(mode.lease_trials * len(variants)):
        variant = variants[trial % len(variants)]
        arena = stack.arena("lease")
        # In `claim` and `faults`, the victim is slowed down (150 ms per storage request, two at
        # a time) so its tick outlives a lease renewal (every LEASE_SECONDS/3 = 5 s) after the
        # theft. In `launch`, both use the same storage endpoint, as two instances of one app do
        # (the endpoint is part of the group spec).
        faults = FaultConfig.spread(0.10, retry_after_s=0.2) if variant == "faults" else None
        slow = (
            stack.storage_proxy(delay_ms=150, faults=faults, seed=rng.randrange(2**31))
            if variant != "launch"
            else None
        )
        settings = {
            config.BATCH_MAX_FILES: "10",
            config.MAX_BATCHES_PER_TICK: "20",
            config.MAX_ACTIVE_GROUPS: "40",
            config.IO_CONCURRENCY: "2",
            # Both pollers are alive: recovery must not race the victim's open claim.
            config.STUCK_CLAIM_SECONDS: "120",
        }
        victim_env = stack.env(arena, slow, arm, settings)
        thief_env = stack.env(arena, None, None, {**settings, config.IO_CONCURRENCY: "8"})
        files = mode.lease_files if variant != "launch" else 20
        names = [f"incoming/l{trial}/f{k:03d}.txt" for k in range(files)]
        drop_files(arena, names, rng)
        thief: dict[str, Any] = {}

        def steal(
            tr: int = trial,
            env: dict[str, str] = thief_env,
            a: Arena = arena,
            box: dict[str, Any] = thief,
            wait: bool = variant == "launch",
        ) -> None:
            BlobLeaseClient(a.container.get_blob_client("locks/poll")).break_lease(0)
            if wait:
                time.sleep(1.1)  # the victim stalls: its successor's clock is past this second

            def run_thief() -> None:
                with contextlib.suppress(Interrupted):
                    box["run"] = stack.run("poll", env, tag=f"lease{tr}.thief")

            thread = threading.Thread(target=run_thief, daemon=True)
            box["thread"] = thread
            thread.start()
            if wait:  # the victim's request is held until the thief's tick is over
                thread.join(120)

        tag = f"lease{trial}.victim"
        if slow is not None:
            nth = rng.randint(6, 16)
            slow.add_trigger(f"copy:{tag}", nth, steal, when="before", then="continue")
            where = f"copy #{nth}"
        else:
            arm.add_trigger(f"arm_put:{tag}", 1, steal, when="before", then="continue")
            where = "first group PUT (held until the thief's tick ended)"
        victim = stack.run("poll", victim_env, tag=tag)
        thread: Any = thief.get("thread")
        if thread is not None:
            thread.join(120)
        data = victim.report() or {}
        thief_data = (thief["run"].report() if "run" in thief else None) or {}
        planned = -(-files // 10)
        label = f"lease trial {trial} ({variant})"
        note = (
            f"trial {trial} ({variant}): lease broken at the victim's {where}; victim claimed "
            f"{len(data.get('claimed', []))}/{planned} batches, lease_lost="
            f"{data.get('lease_lost')}"
        )
        if slow is not None:
            err = victim.err()
            # Batches claim concurrently: the ones in flight when the tick stops (the log line
            # says how many) end with the files they had copied; no other batch may claim.
            stop = re.search(r"poll lease lost: stopping before claiming more \((\d+) batch", err)
            stop_at = stop.start() if stop else -1
            in_flight = int(stop.group(1)) if stop else 0
            after_stop = err[stop_at:] if stop_at >= 0 else ""
            claimed_after = len(re.findall(r": claimed \d+ file", after_stop))
            ok_stop = bool(data.get("lease_lost")) and stop_at >= 0 and claimed_after <= in_flight
            note += f", stopped claiming: {'yes' if ok_stop else 'NO'}"
            if not ok_stop:
                row.failures.append(f"{label}: the victim did not stop claiming")
            report.checks.append(
                CheckResult(f"{label}: a tick that loses its lease stops claiming", ok_stop)
            )
        if faults is not None and slow is not None:
            faulted = slow.fault_counts()
            note += f", victim's storage faults {faulted['total']} ({fault_mix(faulted)})"
            slow.set_faults(None)
        note += (
            f"; thief claimed {len(thief_data.get('claimed', []))}, launched "
            f"{sum(1 for x in thief_data.get('launched', []) if x.get('launched'))}"
        )
        row.notes.append(note)
        drain_env = {**thief_env, config.STUCK_CLAIM_SECONDS: "0"}  # both are dead now
        stats = drive(
            stack, arena, drain_env, drain_env, f"lease{trial}", seconds=mode.scenario_seconds
        )
        v = checker.check(arena)
        row.trials += 1
        add_verdict(row, v, label)
        if not stats.quiet:
            row.failures.append(f"{label}: not quiescent")
        log(f"{label}: {v.summary()}; {row.notes[-1]}")
    return row
