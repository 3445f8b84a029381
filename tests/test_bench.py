"""`python -m scripts.bench --tiny` works end to end and its request-count rows meet their targets.

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
    "idle_sweep_arm",  # 2: an idle sweep is one ARM list and at most two List Blobs
    "idle_sweep_storage",
    "claim_storage_per_file",  # 3: one copy + one delete per file, amortised
    "scale_all_claimed",  # 5: everything waiting is claimed in one tick
    "launch_arm_per_batch",  # 6: list + PUT, no LRO polling
    "sweep_arm_per_group",  # 7: GET + logs + DELETE per finished group, amortised list
    "sweep_storage_per_batch",
    "history_small_all_requests",  # 8: a history page is one or two List Blobs ...
    "history_small_failed_requests",
    "history_large_all_requests",
    "history_large_failed_requests",
    "history_same_cost_all",  # ... whatever the number of finished batches
    "history_same_cost_failed",
    "backlog_storage_requests",  # 9: a tick's requests grow with what it claims, not what waits
    "backlog_list_requests",
    "backlog_room0_list_requests",
    "backlog_blocked_in_front",
    "backlog_drain_ticks",
    "backlog_drain_lost_duplicated",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--tiny", "--json", str(out)],
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
    assert rows["backlog_room0_list_requests"]["value"] == 1
    assert rows["backlog_drain_lost_duplicated"]["value"] == 0


@pytest.mark.parametrize("patched", [False, True], ids=["stock", "fast-delete"])
def test_fast_delete_preload_is_loaded_and_keeps_azurite_delete_semantics(
    tmp_path: Path, patched: bool
) -> None:
    """The benchmark's Azurite preload (localdev/azurite_fast_delete.js) changes how a delete
    updates Azurite's indices, never which blobs a delete removes or refuses: the same script
    gives the same answers on stock Azurite and with the preload."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
    from azure.storage.blob import BlobServiceClient

    from localdev.azurite import FAST_DELETE_PRELOAD, connection_string, run_azurite

    log = tmp_path / "azurite.log"
    with run_azurite(log_file=log, preload=FAST_DELETE_PRELOAD if patched else None) as az:
        service = BlobServiceClient.from_connection_string(connection_string(az.port))
        box = service.create_container("preload")
        etags = {
            f"in/{i:03d}": box.upload_blob(f"in/{i:03d}", b"x").get_blob_properties().etag
            for i in range(120)
        }
        # Single deletes, conditional: a stale ETag is refused and the blob stays.
        with pytest.raises(ResourceModifiedError):
            box.delete_blob("in/000", etag='"0x1"', match_condition=MatchConditions.IfNotModified)
        for i in range(0, 60):
            box.delete_blob(
                f"in/{i:03d}",
                etag=etags[f"in/{i:03d}"],
                match_condition=MatchConditions.IfNotModified,
            )
        # A Blob Batch of conditional deletes (what a claim sends).
        batch = [
            {
                "name": f"in/{i:03d}",
                "etag": etags[f"in/{i:03d}"],
                "match_condition": MatchConditions.IfNotModified,
            }
            for i in range(60, 100)
        ]
        assert all(r.status_code == 202 for r in box.delete_blobs(*batch))
        # Snapshots: several rows match, so the original LokiJS path runs.
        snapped = box.get_blob_client("in/100")
        snapshot = snapped.create_snapshot()["snapshot"]
        with pytest.raises(ResourceExistsError):  # SnapshotsPresent
            snapped.delete_blob()
        box.get_blob_client("in/100", snapshot=snapshot).delete_blob()
        snapped.create_snapshot()
        snapped.delete_blob(delete_snapshots="include")
        left = sorted(b.name for b in box.list_blobs(include=["snapshots"]))
        assert left == [f"in/{i:03d}" for i in range(101, 120)]
        # The indices are consistent after all of it: point reads agree with the listing.
        assert box.get_blob_client("in/101").exists()
        assert not box.get_blob_client("in/099").exists()
        assert not box.get_blob_client("in/000").exists()
    assert ("azurite_fast_delete: LokiJS findAndRemove patched" in log.read_text()) is patched
