"""Row 7: the sweep of G finished groups (set up directly with the app's own claim and launch,
not measured): wall time, requests per group and batch, requests in flight."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .common import Row
from .harness import Bench

SWEEP_ARM_TARGET = 4.0
SWEEP_STORAGE_FIXED = (
    9  # read, logs, record, list, final manifest, 2 index entries, delete manifest + 1
)
SWEEP_FILES_PER_BATCH = 5


def setup_launched(env: dict[str, str], groups: int) -> int:
    """Claim `groups` batches and launch one group each with the app's own claim and launch
    functions, directly against Azurite and the emulator (no proxy, not measured)."""
    from config import load_settings
    from launcher.batch import utcnow
    from launcher.blobs import LeaseLock
    from launcher.claim import Plan, claim, plan_batches, scan
    from launcher.clients import build_clients
    from launcher.launch import launch_batch

    settings = load_settings(env)
    clients = build_clients(settings)
    listing = list(
        clients.container.list_blobs(
            name_starts_with=settings.incoming_prefix, include=["metadata"]
        )
    )
    plans = plan_batches(settings, scan(settings, listing, utcnow()).claimable, groups)
    lease = LeaseLock(clients.container, settings.poll_lock_blob, settings.lease_seconds)
    assert lease.try_acquire()
    with lease:

        def one(plan: Plan) -> bool:
            result = claim(clients, plan, lease)
            assert result.manifest is not None and result.etag is not None
            return launch_batch(clients, result.manifest, result.etag, set()).launched

        with ThreadPoolExecutor(max_workers=8) as pool:
            return sum(1 for ok in pool.map(one, plans) if ok)


def wait_terminated(emulator: Any, rg: str, groups: int, timeout: float = 300) -> None:
    """Wait until every group of `rg` has run its `python -c pass` to the end."""
    needle = f"/resourcegroups/{rg}/".lower()
    deadline = time.monotonic() + timeout
    while True:
        mine = [g for g in emulator.groups() if needle in g["id"].lower()]
        done = [
            g
            for g in mine
            if g["containers"] and all(c["state"] == "Terminated" for c in g["containers"])
        ]
        if len(mine) == groups and len(done) == groups:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(done)}/{groups} groups terminated after {timeout}s")
        time.sleep(0.5)


def run(bench: Bench) -> None:
    from cleanup.sweep import SWEEP_CONCURRENCY

    groups = bench.cfg.sweep_groups
    print(f"7. sweep of {groups} finished groups (set up directly, not measured)")
    bench.fresh_azurite()
    container = bench.new_container("sweep")
    bench.seed(container, groups * SWEEP_FILES_PER_BATCH)
    name = container.container_name
    direct = bench.env(name, bench.claim_overrides(), via_proxy=False)
    direct["BATCH_MAX_FILES"] = str(SWEEP_FILES_PER_BATCH)
    launched = setup_launched(direct, groups)
    assert launched == groups, launched
    wait_terminated(bench.emulator, "rg-" + name, groups)
    res = bench.run_worker("sweep", bench.env(name, bench.claim_overrides()))
    bench.raw["sweep"] = res
    report = res["report"]
    finished = len(report["finished"]) + len(report["failed"])
    assert finished == groups, report
    arm, storage = res["counts"]["arm"]["total"], res["counts"]["storage"]["total"]
    seconds = res["seconds"]
    arm_per, storage_per = arm / finished, storage / finished
    moved = SWEEP_FILES_PER_BATCH + 1  # the inputs and the attempt's log
    storage_limit = 2 * moved + SWEEP_STORAGE_FIXED
    mean_in_flight = (arm + storage) * bench.cfg.delay_ms / 1000 / seconds
    peak, bound = res["peak_in_flight"], SWEEP_CONCURRENCY + bench.cfg.io_concurrency
    bench.add(Row("sweep_wall_s", "7", f"Sweep of {groups} finished groups: wall time (load {res['loadavg']:.1f})", round(seconds, 2), "s", "-", None, False))  # fmt: skip
    bench.add(Row("sweep_arm_per_group", "7", "Sweep: ARM requests per finished group", round(arm_per, 3), "", f"<= {SWEEP_ARM_TARGET:g}", arm_per <= SWEEP_ARM_TARGET, True))  # fmt: skip
    bench.add(Row("sweep_storage_per_batch", "7", f"Sweep: storage requests per finished batch ({moved} blobs moved)", round(storage_per, 3), "", f"<= {storage_limit} (2/blob + {SWEEP_STORAGE_FIXED})", storage_per <= storage_limit, True))  # fmt: skip
    bench.add(Row("sweep_peak_in_flight", "7", f"Sweep: peak requests in flight (SWEEP_CONCURRENCY={SWEEP_CONCURRENCY} groups at once, their moves on the {bench.cfg.io_concurrency}-wide pool)", peak, "", f"{SWEEP_CONCURRENCY}..{bound} (concurrent, bounded)", SWEEP_CONCURRENCY <= peak <= bound, False))  # fmt: skip
    bench.add(Row("sweep_mean_in_flight", "7", "Sweep: requests in flight on average (requests x delay / wall)", round(mean_in_flight, 1), "", "-", None, False))  # fmt: skip
