"""Scenario skew: pollers and sweepers whose clocks are ten minutes off, in folder mode."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter

import config

from .checks import Checker, add_verdict, content_for, record
from .core import REPO_ROOT, WORKER_IMAGE, Interrupted, Mode, log
from .drive import quiescent
from .report import CheckResult, Report, Row
from .stack import Stack

SKEW_DIR = REPO_ROOT / "localdev" / "skew"  # its sitecustomize shifts time.time and datetime.now
SKEW_SECONDS = 600
SETTLE_SECONDS = 5
# (role, clock offset in seconds) of every looping process: each wrong clock next to a right one.
PROCESSES: tuple[tuple[str, int], ...] = (
    ("poll", SKEW_SECONDS),
    ("poll", -SKEW_SECONDS),
    ("poll", 0),
    ("sweep", SKEW_SECONDS),
    ("sweep", -SKEW_SECONDS),
)


def scenario_skew(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    """Folders are uploaded file by file, with gaps shorter than BATCH_SETTLE_SECONDS (5 s),
    while pollers at +600 s, -600 s and 0 and sweepers at +600 s and -600 s loop. The containers
    run the sample worker image, which reads its inputs with the SAS the launcher dated.

    What a clock ten minutes off would break: a poller ahead takes a folder for settled after
    its first file and splits it into several batches; one behind never sees one settle; a SAS
    dated by a clock ahead starts in the future and the worker fails; a sweeper ahead times out
    running jobs; STUCK_CLAIM_SECONDS (300) is shorter than the skew, so a poller ahead would
    take live claims for abandoned ones. Each is checked: one batch per folder, every batch
    succeeded at its first attempt, nothing recovered (every process is alive)."""
    row = Row("skew: clocks +-10 min, folders uploaded file by file", trials=1)
    arena = stack.arena("skew")
    base = {
        config.BATCH_MODE: "folder",
        config.BATCH_SETTLE_SECONDS: str(SETTLE_SECONDS),
        config.STUCK_CLAIM_SECONDS: "300",
        config.MAX_BATCHES_PER_TICK: "10",
        config.MAX_ACTIVE_GROUPS: "20",
        config.ACI_IMAGE: WORKER_IMAGE,
        config.ACI_COMMAND: "",
        config.MAX_ATTEMPTS: "1",  # a failed attempt is final: it shows in failed/
        config.JOB_TIMEOUT_MINUTES: "3",
    }

    def env_for(skew: int) -> dict[str, str]:
        extra = {
            "PYTHONPATH": os.pathsep.join([str(SKEW_DIR), str(REPO_ROOT)]),
            "ML_CLOCK_SKEW_SECONDS": str(skew),
        }
        return stack.env(arena, None, None, {**base, **extra})

    folders = [f"job{k:03d}" for k in range(mode.skew_folders)]
    uploads_done = threading.Event()
    lock = threading.Lock()
    ticks: Counter[str] = Counter()
    claimed: Counter[str] = Counter()
    recovered: list[str] = []
    crashed: list[str] = []
    gaps: list[float] = []

    def upload(share: list[str], seed: float) -> None:
        urng = random.Random(seed)
        for folder in share:
            for k in range(urng.randint(2, 5)):
                if stack.stop.is_set():
                    return
                name = f"incoming/{folder}/part-{k}.txt"
                data = content_for(name, urng)
                arena.container.upload_blob(name, data, overwrite=True)
                with lock:
                    record(arena, name, data)
                gap = urng.uniform(0.2, 2.0)  # well inside the settle window
                gaps.append(gap)
                time.sleep(gap)

    def loop(role: str, skew: int, seed: float) -> None:
        lrng = random.Random(seed)
        env = env_for(skew)
        label = f"{role}{skew:+d}"
        deadline = time.monotonic() + mode.scenario_seconds
        while not stack.stop.is_set() and time.monotonic() < deadline:
            run = stack.run(role, env, tag=f"skew.{label}")
            data = run.report() or {}
            with lock:
                ticks[label] += 1
                claimed[label] += len(data.get("claimed") or [])
                recovered.extend(data.get("recovered") or [])
                if run.crashed:
                    crashed.append(f"{run.stderr.name}: rc {run.rc}")
            if uploads_done.is_set() and quiescent(stack, arena):
                return
            time.sleep(lrng.uniform(0, 0.5))

    started = time.monotonic()
    uploaders = [
        threading.Thread(target=upload, args=(folders[i::3], rng.random()), daemon=True)
        for i in range(3)
    ]
    loops = [
        threading.Thread(target=loop, args=(role, skew, rng.random()), daemon=True)
        for role, skew in PROCESSES
    ]
    for t in uploaders + loops:
        t.start()
    for t in uploaders:
        t.join()
    uploads_done.set()
    upload_seconds = time.monotonic() - started
    for t in loops:
        while t.is_alive():
            t.join(1)
            if stack.stop.is_set():
                raise Interrupted("stopping")
    quiet = quiescent(stack, arena)
    v = Checker(stack).check(arena)
    add_verdict(row, v, "skew")
    if not quiet:
        row.failures.append(f"not quiescent {mode.scenario_seconds:.0f}s after the uploads began")

    # One batch per folder.
    per_folder: dict[str, set[str]] = {}
    for key, batches in v.batches.items():
        folder = arena.dropped[key].name.split("/")[1]
        per_folder.setdefault(folder, set()).update(batches)
    split = {f: sorted(b) for f, b in per_folder.items() if len(b) > 1}
    for folder, batches in sorted(split.items())[:5]:
        row.failures.append(f"folder {folder} split into {len(batches)} batches: {batches}")
    # Every batch succeeded at its first attempt (the worker read its inputs with its SAS).
    attempts: Counter[str] = Counter()
    failed: list[str] = []
    for blob in arena.container.list_blobs():
        found = re.fullmatch(r"(done|failed)/([^/]+)/_batch\.json", blob.name)
        if not found:
            continue
        manifest = json.loads(arena.container.download_blob(blob.name).readall())
        outcomes = [a.get("outcome") or "?" for a in manifest.get("attempts", [])]
        attempts[str(len(outcomes))] += 1
        if found.group(1) == "failed" or len(outcomes) != 1:
            reasons = [a.get("reason") for a in manifest.get("attempts", [])]
            failed.append(f"{found.group(2)}: {found.group(1)}, attempts {outcomes} {reasons}")
    row.failures += [f"batch {f}" for f in failed[:5]]
    if recovered:
        row.failures.append(f"live claims recovered as abandoned: {sorted(set(recovered))[:5]}")
    row.notes += [f"unhandled exception in {c}" for c in crashed[:3]]
    row.figures.update(
        folders=len(folders),
        split_folders=len(split),
        failed_batches=len(failed),
        recovered=len(recovered),
        ticks=sum(ticks.values()),
    )
    for label, n in claimed.items():
        row.figures[f"claimed_by_{label}"] = n
    ok_folders = not split and len(per_folder) == len(folders)
    report.checks.append(
        CheckResult(
            "clocks 10 minutes off never split a folder being uploaded",
            ok_folders,
            f"{len(folders)} folders, {len(split)} split",
        )
    )
    report.checks.append(
        CheckResult(
            "clocks 10 minutes off: every batch succeeds at its first attempt (SAS, timeouts)",
            not failed and v.finished > 0,
            f"{v.finished} batches, {len(failed)} failed or retried",
        )
    )
    report.checks.append(
        CheckResult(
            "clocks 10 minutes off never recover a live claim",
            not recovered,
            f"{len(recovered)} recovered",
        )
    )
    row.notes.append(
        f"{len(folders)} folders ({len(arena.dropped)} files) uploaded in {upload_seconds:.0f}s, "
        f"gaps {min(gaps, default=0):.1f}-{max(gaps, default=0):.1f}s (settle "
        f"{SETTLE_SECONDS}s); {sum(ticks.values())} ticks; batches claimed per poller clock: "
        + ", ".join(f"{k} {claimed[k]}" for k in sorted(claimed) if k.startswith("poll"))
        + f"; {v.finished} batches, {len(split)} split folders, {len(failed)} failed"
    )
    log(f"skew: {v.summary()}; {row.notes[-1]}")
    return row
