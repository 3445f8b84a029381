"""The reliability suite's short seeded run (`python -m scripts.chaos --quick`), in `make test`.

The suite starts its own Azurite, ACI emulator, proxies and Functions host and drives the real
poll and sweep processes (see the package docstring); this module runs it once, reads its JSON
report and turns every promise into an assertion, so a failure names the scenario and the check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

SEED = 7
SCENARIOS = (
    "crash",
    "race",
    "faults",
    "lease",
    "stall",
    "skew",
    "operator",
    "refusals",
    "badinput",
    "config",
    "security",
)
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: Path = tmp_path_factory.mktemp("chaos")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.chaos",
            "--quick",
            "--seed",
            str(SEED),
            "--json",
            str(out / "report.json"),
            "--workdir",
            str(out / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    path = out / "report.json"
    assert path.exists(), f"no report (exit {result.returncode}):\n{result.stdout[-4000:]}"
    data: dict[str, Any] = json.loads(path.read_text())
    data["output"] = result.stdout[-6000:]
    data["exit_code"] = result.returncode
    return data


def row(report: dict[str, Any], index: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = report["rows"]
    assert len(rows) == len(SCENARIOS), report["output"]
    return rows[index]


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=SCENARIOS)
def test_nothing_lost_duplicated_or_launched_twice(report: dict[str, Any], index: int) -> None:
    r = row(report, index)
    assert (r["lost"], r["duplicated"], r["double_launched"], r["unfinished"]) == (0, 0, 0, 0), r
    assert r["failures"] == [], r["failures"]


def test_the_scenarios_really_ran(report: dict[str, Any]) -> None:
    rows = {name: row(report, i) for i, name in enumerate(SCENARIOS)}
    crash, race, faults, lease = rows["crash"], rows["race"], rows["faults"], rows["lease"]
    badinput, config, security = rows["badinput"], rows["config"], rows["security"]
    # Most crash points are reached for sure; a few depend on which batches the flaky command
    # fails (it hashes the random batch id) or on whether a poll relaunches a batch before the
    # janitor does, so a trial can end before its request comes (a full run fires 98-99 of 100).
    fired = crash["notes"][0]
    assert crash["trials"] >= 8 and crash["figures"]["kills_fired"] >= crash["trials"] - 2, fired
    assert "poll:" in fired and "sweep:" in fired, fired
    assert crash["finished"] > 0 and crash["dropped"] > 0
    # Every finished batch's notification arrived (distinct ids = finished batches; the checker
    # fails a trial on a missing, unexpected or non-deduplicable message), also in the trial
    # killed between a batch's finish and its notification.
    assert "sweep:queue_send" in fired, fired
    assert crash["figures"]["notified"] == crash["finished"], crash["figures"]
    assert race["dropped"] >= 100 and race["figures"]["ticks"] >= 30
    assert race["figures"]["poll_ticks"] > 0 and race["figures"]["sweep_ticks"] > 0
    assert faults["figures"]["storage_faults"] > 0 and faults["finished"] > 0
    assert lease["trials"] >= 2 and lease["finished"] > 0
    # Every stall was reached, lasted past the lease, and the other poller took the batch over.
    stall = rows["stall"]["figures"]
    assert rows["stall"]["trials"] >= 2 and rows["stall"]["finished"] > 0
    assert stall["stalls"] == stall["takeovers"] == rows["stall"]["trials"], rows["stall"]
    assert stall["held_requests"] > 0
    # Skewed clocks: no folder split, every batch succeeded first time, no live claim taken.
    skew = rows["skew"]["figures"]
    assert skew["folders"] >= 6 and rows["skew"]["finished"] == skew["folders"], rows["skew"]
    assert (skew["split_folders"], skew["failed_batches"], skew["recovered"]) == (0, 0, 0)
    claims = sum(v for k, v in skew.items() if k.startswith("claimed_by_poll"))
    assert claims == skew["folders"], skew
    # Three spoiled manifests quarantined and repaired; retries kept the re-dropped files.
    operator = rows["operator"]["figures"]
    assert operator["quarantined"] == 3 and operator["checks_ok"] == operator["checks"] >= 8
    assert operator["retried"] > 0 and operator["restored"] > 0 and operator["kept"] > 0
    # Refused files were copied once per version (one of them has two), never again.
    refusals = rows["refusals"]["figures"]
    assert refusals["refused_files"] > 0 and refusals["refusals"] > 0
    assert refusals["refused_copies"] == refusals["refused_files"] + 1, refusals
    assert badinput["dropped"] >= 30
    assert config["trials"] > 0 and security["trials"] == 1
    assert report["exit_code"] == 0 and report["ok"], report["output"]


def test_every_awkward_blob_is_accounted_for(report: dict[str, Any]) -> None:
    records = report["bad_input"]
    assert len(records) >= 30
    for rec in records:
        assert rec["ok"], rec
        assert rec.get("outcome"), rec


def test_every_bad_setting_stops_both_entry_points_before_any_request(
    report: dict[str, Any],
) -> None:
    cases = report["bad_config"]
    assert cases
    for case in cases:
        for role in ("poll", "sweep"):
            got = case[role]
            assert got["rc"] == 2 and got["requests"] == 0, case
            assert case["setting"] in got["message"], case


def test_every_security_and_reliability_check_holds(report: dict[str, Any]) -> None:
    checks = {c["name"]: c for c in report["checks"]}
    expected = [
        "ops endpoints refuse missing or wrong keys",
        "refused calls change nothing",
        "dry runs",
        "no secret in container groups read back from ARM",
        "in any log",
        "blob paths from user names never leave their batch folder",
        "two different user names never share a stored path",
        "group names are valid ARM names",
        "without a download",
        "a tick that loses its lease stops claiming",
        "a claimer whose link stalls past its lease never undoes its successor's work",
        "clocks 10 minutes off never split a folder being uploaded",
        "clocks 10 minutes off: every batch succeeds at its first attempt",
        "clocks 10 minutes off never recover a live claim",
        "operator: spoiled manifests are quarantined and reported by id",
        "operator: release refuses a batch whose group still exists",
        "operator: retry never overwrites a file dropped again",
        "operator: a second retry is a no-op",
        "refused files stay in incoming/ and are reported blocked",
        "a refused file is copied once per version",
        "bad configuration never reaches storage or ARM",
    ]
    for needle in expected:
        assert any(needle in name for name in checks), (needle, sorted(checks))
    failed = [c for c in checks.values() if not c["ok"]]
    assert failed == []
