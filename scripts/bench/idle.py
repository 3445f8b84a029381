"""Rows 1 and 2: an idle poll tick and an idle sweep, in requests."""

from __future__ import annotations

from .common import Row
from .harness import Bench

IDLE_SWEEP_STORAGE_TARGET = 2  # processing/ for the sweep, incoming/ for the stall alarm


def run(bench: Bench) -> None:
    print("1-2. idle poll tick and idle sweep")
    bench.fresh_azurite()
    env = bench.env(bench.new_container("idle").container_name)
    res = bench.run_worker("poll", env)
    assert res["report"]["idle"], res["report"]
    bench.raw["idle_poll"] = res
    storage, arm = res["counts"]["storage"]["total"], res["counts"]["arm"]["total"]
    bench.add(Row("idle_poll_storage", "1", "Idle poll tick: storage requests", storage, "", "= 1", storage == 1, True))  # fmt: skip
    bench.add(Row("idle_poll_arm", "1", "Idle poll tick: ARM requests", arm, "", "= 0", arm == 0, True))  # fmt: skip
    res = bench.run_worker("sweep", env)
    assert res["report"]["idle"], res["report"]
    bench.raw["idle_sweep"] = res
    storage, arm = res["counts"]["storage"]["total"], res["counts"]["arm"]["total"]
    bench.add(Row("idle_sweep_arm", "2", "Idle sweep: ARM requests", arm, "", "= 1", arm == 1, True))  # fmt: skip
    bench.add(Row("idle_sweep_storage", "2", "Idle sweep: storage requests (processing/, and incoming/ for the stall alarm)", storage, "", f"<= {IDLE_SWEEP_STORAGE_TARGET}", storage <= IDLE_SWEEP_STORAGE_TARGET, True))  # fmt: skip
