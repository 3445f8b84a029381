"""Running poll and sweep processes until the pipeline is quiet, and trials in parallel."""

from __future__ import annotations

import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cleanup import notify

from .core import Interrupted
from .stack import Arena, Run, Stack, break_leases

# Where unsent completion notifications wait (LOCK_PREFIX is the default `locks/` in chaos).
OUTBOX = "locks/" + notify.OUTBOX


def quiescent(stack: Stack, arena: Arena, allowed_incoming: set[str] | None = None) -> bool:
    """incoming/ holds only what may stay, nothing is in processing/, no notification waits
    in the outbox (cleanup/notify.py), no group exists."""
    for blob in arena.container.list_blobs(name_starts_with="incoming/"):
        if allowed_incoming is None or blob.name not in allowed_incoming:
            return False
    for prefix in ("processing/", OUTBOX):
        if next(iter(arena.container.list_blobs(name_starts_with=prefix)), None) is not None:
            return False
    return not stack.groups(arena.rg)


@dataclass
class DriveStats:
    runs: int = 0
    killed: int = 0
    crashed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    quiet: bool = False
    seconds: float = 0.0


def drive(
    stack: Stack,
    arena: Arena,
    poll_env: Mapping[str, str],
    sweep_env: Mapping[str, str],
    tag: str,
    *,
    seconds: float,
    allowed_incoming: set[str] | None = None,
    holder: dict[str, subprocess.Popen[bytes]] | None = None,
    on_round: Callable[[int], None] | None = None,
    on_kill: Callable[[Run], None] | None = None,
    stats: DriveStats | None = None,
    run_seconds: float = 120,
) -> DriveStats:
    """Alternate poll and sweep processes until quiescent or `seconds` passed. A process killed
    by a trigger leaves its leases behind: they are broken at once (the holder is dead)."""
    stats = stats or DriveStats()
    started = time.monotonic()
    deadline = started + seconds
    rounds = 0
    while time.monotonic() < deadline:
        if stack.stop.is_set():
            raise Interrupted("stopping")
        for role, env in (("poll", poll_env), ("sweep", sweep_env)):
            run = stack.run(role, env, tag=f"{tag}.{role}", holder=holder, timeout=run_seconds)
            stats.runs += 1
            if run.killed:
                stats.killed += 1
                break_leases(arena.container)
                if on_kill is not None:
                    on_kill(run)
            elif run.rc is None:
                stats.timed_out.append(f"{run.stderr.name}: still running after {run_seconds:.0f}s")
            elif run.crashed:
                stats.crashed.append(f"{run.stderr.name}: rc {run.rc}")
        rounds += 1
        if on_round is not None:
            on_round(rounds)
        if quiescent(stack, arena, allowed_incoming):
            stats.quiet = True
            break
        time.sleep(0.3)
    stats.seconds += round(time.monotonic() - started, 1)
    return stats


def run_parallel(
    stack: Stack, fn: Callable[[Any], None], items: Sequence[Any], workers: int
) -> None:
    """Run trials on a small pool; the first exception (or Ctrl-C) stops the others."""
    errors: list[BaseException] = []

    def guarded(item: Any) -> None:
        if stack.stop.is_set() or errors:
            return
        try:
            fn(item)
        except Interrupted:
            return
        except BaseException as exc:
            errors.append(exc)
            traceback.print_exc()
            stack.stop.set()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial")
    try:
        for future in [pool.submit(guarded, item) for item in items]:
            future.result()
    except BaseException:
        # Ctrl-C: stop the trials still running now, instead of letting them run to the end.
        stack.stop.set()
        stack.procs.kill_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]
