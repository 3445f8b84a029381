"""Cost per batch on a real pipeline run: each attempt's vCPU-, GB- and GPU-seconds and estimate
from the group's own resources and the PRICE_* settings, the batch total, the history row, the
batch detail and the per-profile sum (GET ops/costs)."""

from __future__ import annotations

import pytest

from cleanup import costs, history, status
from launcher.batch import parse_iso
from launcher.poll import poll
from tests.conftest import Pipeline
from tests.helpers import drop
from tests.test_janitor import EXIT_BY_ATTEMPT, manifest_of, only_batch, sweep_until

PRICES = {"PRICE_VCPU_SECOND": "0.001", "PRICE_GB_SECOND": "0.0001"}


def test_every_attempt_records_usage_and_the_batch_its_total(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/model-input.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND=EXIT_BY_ATTEMPT,
        ACI_ENV_FAIL_UNTIL="1",  # attempt 1 fails, attempt 2 succeeds
        ACI_CPU="2",
        ACI_MEMORY_GB="3",
        **PRICES,
    )
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/", timeout=90)
    _, m = manifest_of(pipeline, batch)
    assert [a["outcome"] for a in m["attempts"]] == ["failed", "succeeded"]
    for a in m["attempts"]:
        billed = a["billed_seconds"]
        # Billed from the launch (ARM accepted the PUT) to the container's finish.
        launched, finished = parse_iso(a["launched_at"]), parse_iso(a["finished_at"])
        assert launched and finished
        assert billed == pytest.approx((finished - launched).total_seconds(), abs=1.1)
        assert billed > 0 and billed >= (a["duration_seconds"] or 0) - 1
        assert a["vcpu_seconds"] == pytest.approx(2 * billed, abs=0.2)
        assert a["gb_seconds"] == pytest.approx(3 * billed, abs=0.2)
        assert a["gpu_seconds"] == 0
        expected = a["vcpu_seconds"] * 0.001 + a["gb_seconds"] * 0.0001
        assert a["cost"] == pytest.approx(expected, rel=1e-3)
    total = m["cost"]
    assert total["currency"] == "USD"
    for key in ("vcpu_seconds", "gb_seconds", "cost"):
        assert total[key] == pytest.approx(sum(a[key] for a in m["attempts"]), rel=1e-3)

    # The status API: the history row (index metadata), the batch detail and the sum.
    [row] = [r for r in history.list_page(clients, None, 10).batches if r["batch"] == batch]
    assert row["profile"] == "default" and row["cost"] == pytest.approx(total["cost"])
    assert row["vcpu_seconds"] == pytest.approx(total["vcpu_seconds"])
    detail = status.batch_detail(clients, batch)
    assert detail["summary"]["cost"] == total["cost"]
    assert [a["cost"] for a in detail["attempts"]] == [a["cost"] for a in m["attempts"]]
    summed = costs.per_profile(clients, days=1)
    assert summed["profiles"]["default"]["batches"] == 1
    assert summed["profiles"]["default"]["succeeded"] == 1
    assert summed["total"]["cost"] == pytest.approx(total["cost"])
    assert not summed["truncated"]


def test_the_cost_window_is_validated() -> None:
    for days in ("0", "94", "week"):
        reply = costs.get_costs({"days": days})
        assert reply.status == 400, reply
    assert costs.get_costs({"since": "x"}).status == 400
