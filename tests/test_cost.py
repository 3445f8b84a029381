"""Cost per batch on a real pipeline run: each attempt's vCPU-, GB- and GPU-seconds and estimate
from the group's own resources and the PRICE_* settings, the batch total, the history row, the
batch detail, the per-profile sum (GET ops/costs) and `python -m cleanup costs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanup import costs, history, status
from launcher.batch import parse_iso
from launcher.poll import poll
from tests.conftest import Pipeline
from tests.helpers import all_names, drop
from tests.test_first_hour import cli
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


def test_the_costs_cli_sums_per_profile_and_lists_batches(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Two profiles of different sizes, one finished batch each: `cleanup costs` shows a line per
    profile and the total, `--batches` a line per batch, `--json` the same numbers as the API."""
    quick = ["python", "-c", "print(42)"]
    profiles = {
        "small": {"match": "s*", "image": "python:3.11-slim", "command": quick},
        "large": {
            "match": "l*",
            "image": "python:3.11-slim",
            "command": quick,
            "cpu": 2,
            "memory_gb": 4,
        },
    }
    settings = {
        "ACI_IMAGE": "",
        "JOB_PROFILES": json.dumps(profiles),
        "BATCH_MODE": "folder",
        **PRICES,
    }
    drop(pipeline.container, ["incoming/s1/a.txt", "incoming/l1/b.txt"])
    clients = pipeline.clients(**settings)
    poll(clients)
    batches = {n.split("/")[1] for n in all_names(pipeline.container, "processing/")}
    assert len(batches) == 2
    sweep_until(
        clients, lambda: all(manifest_of(pipeline, b)[0] == "done/" for b in batches), timeout=90
    )
    manifests = {b: manifest_of(pipeline, b)[1] for b in batches}
    profile_of = {b: m["profile"] for b, m in manifests.items()}
    assert sorted(profile_of.values()) == ["large", "small"]
    env = pipeline.env(**settings)

    as_json = cli("cleanup", "costs", "--json", "--batches", cwd=tmp_path, env=env)
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    api = json.loads(json.dumps(costs.per_profile(clients, 7, with_batches=True)))
    for window_end in ("since", "until"):  # storage's "now", read by each process
        assert parse_iso(api.pop(window_end)) and parse_iso(summary.pop(window_end))
    assert summary == api
    assert sorted(summary["profiles"]) == ["large", "small"]
    for b, m in manifests.items():
        entry = summary["profiles"][profile_of[b]]
        assert (entry["batches"], entry["succeeded"], entry["attempts"]) == (1, 1, 1)
        assert entry["cost"] == pytest.approx(m["cost"]["cost"])
        assert entry["vcpu_seconds"] == pytest.approx(m["cost"]["vcpu_seconds"])
    large, small = summary["profiles"]["large"], summary["profiles"]["small"]
    # Per second, the large profile uses twice the vCPUs and four times the memory (4 GB vs 1.5).
    assert large["vcpu_seconds"] / large["gb_seconds"] == pytest.approx(0.5, rel=0.05)
    assert small["vcpu_seconds"] / small["gb_seconds"] == pytest.approx(1 / 1.5, rel=0.05)
    assert summary["total"]["cost"] == pytest.approx(large["cost"] + small["cost"])
    assert {r["batch"]: r["profile"] for r in summary["per_batch"]} == profile_of

    table = cli("cleanup", "costs", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split()[:5] == ["PROFILE", "BATCHES", "SUCCEEDED", "FAILED", "ATTEMPTS"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["large"][1:5] == ["1", "1", "0", "1"]
    assert rows["(total)"][1:3] == ["2", "2"]  # batches, attempts (no state split)
    assert rows["(total)"][-1] == f"{summary['total']['cost']:,.6f}"
    assert not any(b in table.stdout for b in batches)  # no per-batch lines without --batches
    detailed = cli("cleanup", "costs", "--batches", "--days", "1", cwd=tmp_path, env=env).stdout
    for b in batches:
        [line] = [x for x in detailed.splitlines() if x.startswith(b)]
        assert line.split()[1:4] == [profile_of[b], "succeeded", "1"]


def test_the_costs_cli_names_bad_input_in_one_line(pipeline: Pipeline, tmp_path: Path) -> None:
    env = pipeline.env()
    for days in ("0", "94", "week"):
        bad = cli("cleanup", "costs", "--days", days, cwd=tmp_path, env=env)
        assert bad.returncode == 2
        assert bad.stderr.startswith("error: days must be") and bad.stderr.count("\n") == 1
    missing = cli("cleanup", "costs", cwd=tmp_path, env={**env, "WATCH_CONTAINER": "nosuch"})
    assert missing.returncode == 4 and "'nosuch' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty = cli("cleanup", "costs", cwd=tmp_path, env=env)
    assert empty.returncode == 0 and "no finished batches in this window" in empty.stdout
