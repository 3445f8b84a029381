"""Row 6: ARM requests per launched batch, and listing -> group PUT accepted."""

from __future__ import annotations

from .common import Row
from .harness import Bench

LAUNCH_ARM_TARGET = 2.0
LAUNCH_LATENCY_TARGET_S = 1.0
LAUNCH_FILES = 10


def run(bench: Bench) -> None:
    print(f"6. launch: a {LAUNCH_FILES}-file drop")
    bench.fresh_azurite()
    container = bench.new_container("launch")
    bench.seed(container, LAUNCH_FILES)
    res = bench.run_worker("poll", bench.env(container.container_name))
    bench.raw["launch"] = res
    report = res["report"]
    launched = sum(1 for x in report["launched"] if x["launched"])
    assert launched >= 1, report
    arm = res["counts"]["arm"]["total"]
    per_batch = arm / launched
    latency = res["marks"]["arm:PUT"] - res["marks"]["storage:GET:list"]
    bench.add(Row("launch_arm_per_batch", "6", "Launch: ARM requests per launched batch", round(per_batch, 2), "", f"<= {LAUNCH_ARM_TARGET:g}", per_batch <= LAUNCH_ARM_TARGET, True))  # fmt: skip
    bench.add(Row("launch_latency_s", "6", f"Launch: listing finds {LAUNCH_FILES} files -> PUT accepted, at {bench.cfg.delay_ms:g} ms/request", round(latency, 3), "s", f"< {LAUNCH_LATENCY_TARGET_S:g} s", latency < LAUNCH_LATENCY_TARGET_S, False))  # fmt: skip
