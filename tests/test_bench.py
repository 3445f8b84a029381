"""`scripts/bench.py --tiny` works end to end and its request-count rows meet their targets.

Only counts are asserted: they are deterministic (the proxies count every request the app
sends), while timings and memory depend on the machine and are never asserted anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COUNTED = {
    "idle_poll_storage",  # 1: an idle tick is one List Blobs
    "idle_poll_arm",
    "idle_sweep_arm",  # 2: an idle sweep is one ARM list and at most one List Blobs
    "idle_sweep_storage",
    "claim_storage_per_file",  # 3: one copy + one delete per file, amortised
    "scale_all_claimed",  # 5: everything waiting is claimed in one tick
    "launch_arm_per_batch",  # 6: list + PUT, no LRO polling
    "sweep_arm_per_group",  # 7: GET + logs + DELETE per finished group, amortised list
    "sweep_storage_per_batch",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "--tiny", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    document["stdout"] = proc.stdout
    return document


def test_tiny_benchmark_reports_every_row_with_a_target(tiny_run: dict[str, Any]) -> None:
    rows = {r["key"]: r for r in tiny_run["rows"]}
    assert set(rows) >= COUNTED, sorted(COUNTED - set(rows))
    for row in tiny_run["rows"]:
        assert row["target"], row
        assert row["value"] is not None, row
    assert {r["key"] for r in tiny_run["rows"] if r["counted"]} == COUNTED
    assert "| # | figure | value | target | met |" in tiny_run["stdout"]


def test_tiny_benchmark_request_counts_meet_their_targets(tiny_run: dict[str, Any]) -> None:
    rows = {r["key"]: r for r in tiny_run["rows"]}
    missed = {k: (rows[k]["value"], rows[k]["target"]) for k in COUNTED if not rows[k]["met"]}
    assert not missed, missed
    assert rows["idle_poll_storage"]["value"] == 1
    assert rows["idle_poll_arm"]["value"] == 0
    assert rows["idle_sweep_arm"]["value"] == 1
