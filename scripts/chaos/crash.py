"""Scenario crash: SIGKILL poll or sweep at a chosen request."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter

import config

from .checks import Checker, add_verdict, content_for, drop_files, sha
from .core import FLAKY_COMMAND, Mode, log
from .drive import DriveStats, drive, run_parallel
from .report import Report, Row
from .stack import Dropped, Run, Stack

# (role, request kind, highest nth): where a SIGKILL lands. Poll: claim (list, copy, the Blob
# Batch of conditional deletes, manifest put_blob) and launch (arm_put). Sweep: finalize (arm_get,
# arm_logs, put_blob of logs, manifests and the notification outbox), relaunch (arm_put via
# hand-back), delete (arm_delete), the move to done/failed (list, copy, delete) and the
# completion notification (queue_send: after the batch finished, before or after its message
# went out and before the manifest records it). Every trial's arena has a notification queue.
CRASH_POINTS: tuple[tuple[str, str, int], ...] = (
    ("poll", "list", 2),
    ("poll", "copy", 6),
    ("poll", "batch", 4),
    ("poll", "put_blob", 6),
    ("poll", "arm_put", 3),
    ("sweep", "list", 4),
    ("sweep", "copy", 8),
    ("sweep", "delete", 8),
    ("sweep", "put_blob", 6),
    ("sweep", "arm_get", 4),
    ("sweep", "arm_logs", 3),
    ("sweep", "arm_delete", 3),
    ("sweep", "arm_put", 2),
    ("sweep", "queue_send", 2),
)


def scenario_crash(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("crash: SIGKILL poll/sweep at a request")
    storage = stack.storage_proxy()
    queue = stack.queue_proxy()
    arm = stack.arm_proxy()
    checker = Checker(stack)
    plans = []
    points = list(CRASH_POINTS)
    rng.shuffle(points)  # a short run still covers a seeded mix of roles and phases
    # ... and always the crash between a batch's finish and its notification.
    points.sort(key=lambda p: p[1] != "queue_send")
    for i in range(mode.crash_trials):
        role, kind, top = points[i % len(points)]
        plans.append(
            (i, role, kind, rng.randint(1, top), rng.choice(("before", "after")), rng.random())
        )
    rng.shuffle(plans)
    fired: Counter[str] = Counter()
    lock = threading.Lock()

    def trial(plan: tuple[int, str, str, int, str, float]) -> None:
        i, role, kind, nth, when, seed = plan
        trng = random.Random(seed)
        arena = stack.arena("crash", notify=True)
        holder: dict[str, subprocess.Popen[bytes]] = {}
        proxy = arm if kind.startswith("arm_") else queue if kind.startswith("queue_") else storage
        target = f"c{i}.{role}"

        def kill() -> None:
            proc = holder.get(role)
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)

        trig = proxy.add_trigger(f"{kind}:{target}", nth, kill, when=when)  # type: ignore[arg-type]
        settings = {
            config.BATCH_MAX_FILES: str(trng.randint(1, 4)),
            config.ACI_COMMAND: FLAKY_COMMAND,
        }
        poll_env = stack.env(arena, storage, arm, settings, queue=queue)
        sweep_env = dict(poll_env)
        files = [f"incoming/t{i}/f{k:02d}.txt" for k in range(trng.randint(3, 10))]
        drop_files(arena, files, trng, workers=4)
        stats = DriveStats()
        deadline = time.monotonic() + mode.trial_seconds
        waves = 0
        redropped: list[str] = []
        # Every killed poll (and some sweeps): the user drops names again right after the crash.
        redrop = role == "poll" or trng.random() < 0.3

        def after_kill(run: Run) -> None:
            """Right after the crash, the user drops files again under names the dead tick had
            already taken out of incoming/ (a new version each); after a killed poll, the next
            tick comes long before the dead tick's claim counts as abandoned."""
            if redrop:
                drop_again()
            if role == "poll":
                early = {**poll_env, config.STUCK_CLAIM_SECONDS: "300"}
                stack.run("poll", early, tag=f"c{i}.early", timeout=60)

        def drop_again() -> None:
            present = {b.name for b in arena.container.list_blobs(name_starts_with="incoming/")}
            gone = [d.name for k, d in arena.dropped.items() if "#" not in k]
            gone = [n for n in gone if n not in present]
            # Names taken by the claim the crash interrupted first: the hard case for recovery.
            open_claims = [
                b.name
                for b in arena.container.list_blobs(
                    name_starts_with="processing/", include=["metadata"]
                )
                if b.name.endswith("/_batch.json")
                and (b.metadata or {}).get("mlstate") == "claiming"
            ]
            taken = {
                f["source"]
                for m in open_claims
                for f in json.loads(arena.container.download_blob(m).readall())["files"]
            }
            gone.sort(key=lambda n: n not in taken)
            for name in gone[:2]:
                data = content_for(name + " (dropped again)", trng)
                arena.container.upload_blob(name, data, overwrite=True)
                arena.dropped[name + "#2"] = Dropped(name, sha(data), len(data))
                redropped.append(name)

        while True:
            left = max(deadline - time.monotonic(), 1)
            drive(
                stack,
                arena,
                poll_env,
                sweep_env,
                f"c{i}",
                seconds=left,
                holder=holder,
                on_kill=after_kill,
                stats=stats,
            )
            # A crash point that was not reached yet gets another wave of files (at most two).
            if trig.fired.is_set() or waves >= 2 or time.monotonic() >= deadline:
                break
            waves += 1
            more = [f"incoming/t{i}/w{waves}-{k:02d}.txt" for k in range(trng.randint(2, 6))]
            drop_files(arena, more, trng, workers=4)
        v = checker.check(arena)
        label = f"trial {i} ({role} {kind}#{nth} {when}{', re-drop' if redropped else ''})"
        with lock:
            row.trials += 1
            add_verdict(row, v, label)
            if not stats.quiet:
                row.failures.append(f"{label}: not quiescent after {mode.trial_seconds:.0f}s")
            if trig.fired.is_set():
                fired[f"{role}:{kind}"] += 1
            row.notes += [f"{label}: unhandled exception in {c}" for c in stats.crashed[:2]]
            status = "ok" if v.clean and stats.quiet else "PROBLEM"
            log(
                f"crash {row.trials}/{mode.crash_trials}: {label} "
                f"{'killed' if stats.killed else 'not reached'}; {v.summary()} "
                f"[{stats.seconds:.0f}s] {status}"
            )

    run_parallel(stack, trial, plans, mode.crash_parallel)
    total_fired = sum(fired.values())
    row.figures["kills_fired"] = total_fired
    row.notes.insert(
        0,
        f"{total_fired}/{row.trials} kills fired, at "
        + ", ".join(f"{k} {n}" for k, n in sorted(fired.items())),
    )
    row.notes.insert(
        1,
        f"notifications: {row.figures.get('notified', 0)} distinct message ids for "
        f"{row.finished} finished batches, {row.figures.get('notify_repeats', 0)} repeats "
        "(same id, same bytes: dropped by receivers)",
    )
    return row
