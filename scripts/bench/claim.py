"""Rows 3 and 4: claiming N files in one tick, its storage requests per file and its speed
against the one-by-one baseline and the raw concurrent ceiling."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from .common import Row
from .harness import Bench, median_by

CLAIM_FIXED_ALLOWANCE = 50  # storage requests per claiming tick beyond one copy + one delete
SPEEDUP_TARGET = 10.0
CEILING_TARGET = 0.8


def claim_tick(
    bench: Bench,
    files: int,
    ballast: int = 0,
    sample_lease: bool = False,
    stock: bool | None = None,
) -> dict[str, Any]:
    """Claim `files` files with one poll tick in a worker process, on a fresh Azurite that
    also holds `ballast` unrelated blobs (so that its per-request cost matches a larger
    drop's); with `sample_lease`, watch the poll lock blob's lease from here (directly, not
    through the proxy) while the tick runs."""
    bench.fresh_azurite(stock)
    container = bench.new_container("claim")
    bench.seed(container, files)
    if ballast:
        # After the files, as in a large drop: Azurite keeps blobs in one array in insertion
        # order, and deleting near its front (what a claim does) shifts everything after.
        bench.seed(bench.new_container("ballast"), ballast, prefix="ballast/")
    lock = container.get_blob_client("locks/poll")
    samples: list[tuple[float, str]] = []

    def watch(proc: subprocess.Popen[str]) -> None:
        while proc.poll() is None:
            try:
                lease = lock.get_blob_properties().lease
                state = f"{lease.state}/{lease.status}"
            except ResourceNotFoundError:
                state = "absent"
            samples.append((time.time(), state))
            time.sleep(0.1)

    env = bench.env(container.container_name, bench.claim_overrides())
    res = bench.run_worker("poll", env, during=watch if sample_lease else None)
    res["left_in_incoming"] = sum(1 for _ in container.list_blobs(name_starts_with="incoming/"))
    res["lease_samples"] = samples
    res["ballast"] = ballast
    return res


def raw_loop(bench: Bench, op: str, files: int, stock: bool | None = None) -> dict[str, Any]:
    """The baseline or the ceiling on `files` files, on a fresh Azurite."""
    bench.fresh_azurite(stock)
    container = bench.new_container(op)
    bench.seed(container, files)
    res = bench.run_worker(op, bench.env(container.container_name), dest=f"processing/{op}/")
    assert res["files"] == files, res
    return res


def run(bench: Bench) -> None:
    cfg = bench.cfg
    n, nb = cfg.claim_files, cfg.baseline_files
    print(f"3-4. claiming {n} files: this project, the raw concurrent loop, the baseline")
    # Each round measures the three back to back and yields its own ratios: on a shared
    # machine the load drifts, and a ratio of two runs a minute apart would measure it.
    rounds: list[dict[str, Any]] = []
    for _ in range(cfg.rounds):
        project = claim_tick(bench, n)
        assert project["files"] == n and project["left_in_incoming"] == 0, project["report"]
        ceiling = raw_loop(bench, "ceiling", n)
        baseline = raw_loop(bench, "baseline", nb)
        rate = n / project["seconds"]
        rounds.append(
            {
                "project": project,
                "ceiling": ceiling,
                "baseline": baseline,
                "rate": rate,
                "ceiling_rate": n / ceiling["seconds"],
                "baseline_rate": nb / baseline["seconds"],
                "speedup": rate / (nb / baseline["seconds"]),
                "of_ceiling": rate / (n / ceiling["seconds"]),
            }
        )
    mid = median_by(rounds, "rate")
    project = mid["project"]
    bench.raw.update(claim=project, ceiling=mid["ceiling"], baseline=mid["baseline"])
    keys = ("rate", "ceiling_rate", "baseline_rate", "speedup", "of_ceiling")
    bench.raw["claim_rounds"] = [{k: round(r[k], 3) for k in keys} for r in rounds]
    storage = max(r["project"]["counts"]["storage"]["total"] for r in rounds)
    per_file = storage / n
    limit = 2 + CLAIM_FIXED_ALLOWANCE / n
    bench.add(Row("claim_storage_per_file", "3", f"Claim {n:,} files in one tick: storage requests per file", round(per_file, 4), "", f"<= {limit:.3f} (2 + {CLAIM_FIXED_ALLOWANCE}/{n})", per_file <= limit + 1e-9, True))  # fmt: skip
    speedup = median_by(rounds, "speedup")["speedup"]
    of_ceiling = median_by(rounds, "of_ceiling")["of_ceiling"]
    at = f"at {cfg.delay_ms:g} ms/request"
    how = f"median of {cfg.rounds} rounds" if cfg.rounds > 1 else "1 round"
    loads = "/".join(f"{r['project']['loadavg']:.1f}" for r in rounds)
    bench.add(Row("claim_rate_project", "4", f"Claim speed {at}: this project, whole tick of {n:,} files ({how}; load {loads})", round(mid["rate"], 1), "files/s", "-", None, False))  # fmt: skip
    bench.add(Row("claim_rate_ceiling", "4", f"Claim speed {at}: raw concurrent copy-and-delete loop, {cfg.io_concurrency} wide, same round", round(mid["ceiling_rate"], 1), "files/s", "-", None, False))  # fmt: skip
    bench.add(Row("claim_rate_baseline", "4", f"Claim speed {at}: one-by-one baseline ({nb:,} files), same round", round(mid["baseline_rate"], 1), "files/s", "-", None, False))  # fmt: skip
    bench.add(Row("claim_speedup", "4", f"Claim speed: project / one-by-one baseline ({how})", round(speedup, 2), "x", f">= {SPEEDUP_TARGET:g}x", speedup >= SPEEDUP_TARGET, False))  # fmt: skip
    bench.add(Row("claim_of_ceiling", "4", f"Claim speed: project / raw concurrent loop ({how})", round(of_ceiling, 2), "", f">= {CEILING_TARGET:g}", of_ceiling >= CEILING_TARGET, False))  # fmt: skip
    helpers = project["helper_cpu_seconds"]
    stack = project["cpu_seconds"] + sum(helpers.values())
    cores = stack / project["seconds"]
    azurite = 1000 * helpers.get("azurite", 0.0) / project["counts"]["storage"]["total"]
    bench.add(Row("claim_stack_cores", "4", f"CPU used by tick + Azurite + proxies during that tick (Azurite {azurite:.1f} ms/request)", round(cores, 2), f"of {cfg.cpu_count} cores", f"- (near {cfg.cpu_count}: CPU-bound, the machine is the limit)", None, False))  # fmt: skip
    if not cfg.stock_azurite:
        # For comparison, one round of project and baseline on stock Azurite, whose O(n log n)
        # Delete Blob makes it the limit of any concurrent claim on a small machine.
        project = claim_tick(bench, n, stock=True)
        assert project["files"] == n and project["left_in_incoming"] == 0, project["report"]
        baseline = raw_loop(bench, "baseline", nb, stock=True)
        stock_rate, stock_base = n / project["seconds"], nb / baseline["seconds"]
        bench.raw["claim_stock_azurite"] = {"rate": round(stock_rate, 3), "baseline_rate": round(stock_base, 3)}  # fmt: skip
        bench.add(Row("claim_speedup_stock_azurite", "4", f"For comparison, on stock Azurite (1 round): project {stock_rate:.0f} / baseline {stock_base:.1f} files/s", round(stock_rate / stock_base, 2), "x", "- (Azurite-bound on small machines)", None, False))  # fmt: skip
