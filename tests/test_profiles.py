"""Job profiles and per-batch parameters on the local stack (Azurite, the strict ACI emulator,
the real SDKs): routing by folder, one spec per profile, per-profile caps, blocked files, and
parameters that reach the container or fail their batch."""

from __future__ import annotations

import json
import time

import pytest
from azure.core.exceptions import HttpResponseError

from cleanup.status import now_snapshot
from cleanup.sweep import sweep
from config import ConfigError, load_settings
from launcher.poll import poll
from profiles import check_params
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import all_names, drop, settings_env

PRINT_PARAMS = [
    "python",
    "-c",
    "import os; print(sorted((k, v) for k, v in os.environ.items() if k.startswith('ML_PARAM_')))",
]


def two_profiles(cap_a: int | None = None, **extra_b: object) -> str:
    """Model A: the sample worker; model B: a python image that prints its parameters."""
    a: dict[str, object] = {"match": ["a", "a-*"], "image": "modellauncher/worker:latest"}
    if cap_a is not None:
        a["max_active_groups"] = cap_a
    b: dict[str, object] = {
        "match": "b*",
        "image": "python:3.11-slim",
        "command": PRINT_PARAMS,
        "cpu": 2,
        "memory_gb": 3,
        "env": {"MODEL": "b"},
        "secure_env": {"TOKEN": "@MODEL_B_TOKEN"},
        "max_attempts": 1,
        "params": {
            "threshold": {"type": "number", "default": 0.5, "min": 0, "max": 1},
            "mode": {"type": "string", "allowed": ["fast", "exact"], "default": "fast"},
        },
    } | extra_b
    return json.dumps({"model-a": a, "model-b": b})


def profile_env(p: Pipeline, profiles: str, **overrides: str) -> dict[str, str]:
    """Profiles only (no ACI_IMAGE: no default profile), in folder mode."""
    return {
        "ACI_IMAGE": "",
        "JOB_PROFILES": profiles,
        "BATCH_MODE": "folder",
        "MODEL_B_TOKEN": "b-secret-token",
        **overrides,
    }


def by_profile(p: Pipeline) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for g in p.groups():
        out.setdefault((g.tags or {}).get("ml-profile", "?"), []).append(str(g.name))
    return out


def manifest_of(p: Pipeline, prefix: str, batch: str) -> dict:
    return json.loads(p.container.download_blob(f"{prefix}{batch}/_batch.json").readall())


def test_two_profiles_route_two_folders_to_two_specs_and_unmatched_files_stay(
    pipeline: Pipeline,
) -> None:
    drop(pipeline.container, ["incoming/a/x.txt", "incoming/b/y.txt", "incoming/c/z.txt"])
    drop(pipeline.container, ["incoming/loose.txt"])
    clients = pipeline.clients(**profile_env(pipeline, two_profiles()))
    report = poll(clients)
    assert sorted(c["profile"] for c in report.claimed) == ["model-a", "model-b"]
    groups = by_profile(pipeline)
    assert sorted(groups) == ["model-a", "model-b"]
    a = pipeline.get_group(groups["model-a"][0])
    b = pipeline.get_group(groups["model-b"][0])
    assert a.containers[0].image == "modellauncher/worker:latest"
    assert (a.containers[0].resources.requests.cpu, a.containers[0].command) == (1.0, None)
    assert b.containers[0].image == "python:3.11-slim"
    assert b.containers[0].command == PRINT_PARAMS
    assert (
        b.containers[0].resources.requests.cpu,
        b.containers[0].resources.requests.memory_in_gb,
    ) == (2.0, 3.0)
    env_a = {e.name: e.value for e in a.containers[0].environment_variables}
    env_b = {e.name: e for e in b.containers[0].environment_variables}
    assert env_a["ML_PROFILE"] == "model-a" and "MODEL" not in env_a and "TOKEN" not in env_a
    assert env_b["ML_PROFILE"].value == "model-b" and env_b["MODEL"].value == "b"
    assert env_b["TOKEN"].value is None  # a secure value: never echoed
    # The manifests record the profile; the files no profile takes stay, reported blocked.
    for c in report.claimed:
        assert manifest_of(pipeline, "processing/", c["batch"])["profile"] == c["profile"]
    assert all_names(pipeline.container, "incoming/") == ["incoming/c/z.txt", "incoming/loose.txt"]
    assert set(report.blocked) == {"incoming/c/z.txt", "incoming/loose.txt"}
    assert "no job profile" in report.blocked["incoming/c/z.txt"]


def test_a_profiles_cap_holds_while_the_other_keeps_launching(pipeline: Pipeline) -> None:
    folders = ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]
    drop(pipeline.container, [f"incoming/{f}/in.txt" for f in folders])
    clients = pipeline.clients(**profile_env(pipeline, two_profiles(cap_a=1)))
    report = poll(clients)
    assert {k: len(v) for k, v in by_profile(pipeline).items()} == {"model-a": 1, "model-b": 3}
    assert report.capped == {"model-a": 2}
    left = all_names(pipeline.container, "incoming/")
    assert left == ["incoming/a-2/in.txt", "incoming/a-3/in.txt"]
    # The next tick: model A is still at its cap (its group exists), nothing else to launch.
    drop(pipeline.container, ["incoming/b-4/in.txt"])
    report = poll(clients)
    assert report.active_by_profile == {"model-a": 1, "model-b": 3}
    assert [c["profile"] for c in report.claimed] == ["model-b"]
    assert report.capped == {"model-a": 2}
    assert {k: len(v) for k, v in by_profile(pipeline).items()} == {"model-a": 1, "model-b": 4}
    # The status API splits the groups and what waits by profile.
    snap = now_snapshot(clients)
    assert snap["groups"]["by_profile"] == {
        "model-a": {"active": 1, "max": 1},
        "model-b": {"active": 4, "max": 20},
    }
    assert snap["incoming"]["claimable_by_profile"] == {"model-a": 2}


def wait_logs(p: Pipeline, name: str, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        try:
            logs = p.arm().containers.list_logs(p.resource_group, name, "worker").content or ""
        except HttpResponseError:  # still being created
            logs = ""
        if needle in logs:
            return logs
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the logs of {name}: {logs!r}")


def test_parameters_reach_the_container_and_a_bad_file_fails_its_batch(
    pipeline: Pipeline,
) -> None:
    c = pipeline.container
    drop(c, ["incoming/b-good/in.txt", "incoming/b-default/in.txt", "incoming/b-bad/in.txt"])
    c.upload_blob("incoming/b-good/_params.json", json.dumps({"threshold": 0.75}))
    c.upload_blob("incoming/b-bad/_params.json", json.dumps({"threshold": 5, "mode": "fast"}))
    clients = pipeline.clients(**profile_env(pipeline, two_profiles()))
    report = poll(clients)
    claimed = {
        manifest_of(pipeline, "processing/", x["batch"])["folder"]: x["batch"]
        for x in report.claimed
    }
    assert sorted(claimed) == ["b-bad", "b-default", "b-good"]
    [rejected] = report.rejected
    assert rejected["batch"] == claimed["b-bad"]
    assert "'threshold'" in rejected["reason"] and "maximum" in rejected["reason"]
    # The two good batches run with their parameters as plain environment variables.
    good = manifest_of(pipeline, "processing/", claimed["b-good"])
    assert good["params"] == {"ML_PARAM_THRESHOLD": "0.75", "ML_PARAM_MODE": "fast"}
    env = {
        e.name: e.value
        for e in pipeline.get_group(good["group"]).containers[0].environment_variables
    }
    assert (env["ML_PARAM_THRESHOLD"], env["ML_PARAM_MODE"]) == ("0.75", "fast")
    wait_logs(pipeline, good["group"], "('ML_PARAM_THRESHOLD', '0.75')")
    default = manifest_of(pipeline, "processing/", claimed["b-default"])
    wait_logs(pipeline, default["group"], "('ML_PARAM_THRESHOLD', '0.5')")
    assert len(pipeline.groups()) == 2  # the bad batch never got a group
    # The janitor sends the bad batch to failed/, its files (the parameters file too) kept.
    sweep(clients)
    bad = claimed["b-bad"]
    assert sorted(all_names(c, f"failed/{bad}/")) == [
        f"failed/{bad}/_batch.json",
        f"failed/{bad}/b-bad/_params.json",
        f"failed/{bad}/b-bad/in.txt",
    ]
    final = manifest_of(pipeline, "failed/", bad)
    assert final["state"] == "failed" and "parameter 'threshold'" in final["reason"]


def test_profile_config_errors_name_every_bad_field() -> None:
    env = settings_env("UseDevelopmentStorage=true", "profiles", BATCH_MODE="tick")
    env["JOB_PROFILES"] = json.dumps(
        {
            "default": {"image": "x"},
            "gpu": {"match": "g", "image": "x", "gpu_sku": "V100", "subnet_id": "/x/subnets/s"},
            "big": {"match": "b", "image": "x", "cpu": 8},
            "odd": {
                "image": "x",
                "max_active_groups": 50,
                "colour": "red",
                "secure_env": {"TOKEN": "plain-secret"},
                "params": {"t": {"type": "number", "default": 2, "max": 1}},
            },
        }
    )
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    text = str(err.value)
    assert "plain-secret" not in text
    for needle in (
        "JOB_PROFILES.default:",
        "JOB_PROFILES.gpu.gpu_sku with JOB_PROFILES.gpu.subnet_id",
        "JOB_PROFILES.big.cpu=8 exceeds",
        "JOB_PROFILES.odd.max_active_groups must be an integer from 1 to 20",
        "JOB_PROFILES.odd.colour is not a profile field",
        "JOB_PROFILES.odd.match must be",
        "JOB_PROFILES.odd.secure_env.TOKEN must name an app setting",
        "JOB_PROFILES.odd.params.t.default",
    ):
        assert needle in text, needle
    assert len(err.value.problems) == 8
    # Parameters need folder mode; without JOB_PROFILES, ACI_IMAGE stays required.
    env["JOB_PROFILES"] = two_profiles()
    env["MODEL_B_TOKEN"] = "t"
    with pytest.raises(ConfigError, match=r"JOB_PROFILES.model-b.params need BATCH_MODE=folder"):
        load_settings(env)
    env.pop("JOB_PROFILES")
    env.pop("ACI_IMAGE")
    with pytest.raises(ConfigError, match="ACI_IMAGE"):
        load_settings(env)


def test_without_job_profiles_nothing_changes(pipeline: Pipeline) -> None:
    """The ACI_* settings are the profile "default": every file is routed to it and a
    `_params.json` is an ordinary input."""
    drop(pipeline.container, ["incoming/a/x.txt", "incoming/a/_params.json"])
    report = poll(pipeline.clients(BATCH_MODE="folder"))
    [claimed] = report.claimed
    m = manifest_of(pipeline, "processing/", claimed["batch"])
    assert (m["profile"], m["params"], m["params_file"], claimed["files"]) == (
        "default",
        None,
        None,
        2,
    )
    [group] = pipeline.groups()
    assert group.tags["ml-profile"] == "default"


def test_the_worked_example_in_the_docs_is_valid_and_routes_as_it_says() -> None:
    """docs/profiles.md's two-model example, exactly as written (its `...` resource-ID parts
    filled in), loads, and routes and checks parameters the way the text beneath it says."""
    text = (REPO_ROOT / "docs" / "profiles.md").read_text(encoding="utf-8")
    example = text.split("## Worked example: two models", 1)[1]
    block = example.split("```text\n", 1)[1].split("```", 1)[0]
    head, raw = block.split("JOB_PROFILES=\n", 1)
    written = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    env = settings_env("UseDevelopmentStorage=true", "worked-example")
    env.pop("ACI_IMAGE")
    env |= written
    env["JOB_PROFILES"] = raw.replace(
        "/subscriptions/.../",
        "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.ManagedIdentity/",
    )
    s = load_settings(env)
    assert [p.name for p in s.job_profiles] == ["model-a", "model-b"]
    assert not s.has_default_profile
    for path, expected in (
        ("model-a-2024-06-01/img001.png", "model-a"),
        ("model-b-run7/scan01.tif", "model-b"),
        ("misc/notes.txt", None),
    ):
        assert s.profile_of(path) == expected, path
    b = next(p for p in s.job_profiles if p.name == "model-b")
    assert s.profile_cap("model-b") == 4
    env_b, why = check_params(b.params, json.dumps({"threshold": 0.8}).encode())
    assert (env_b, why) == ({"ML_PARAM_THRESHOLD": "0.8", "ML_PARAM_MODE": "fast"}, "")
    _, why = check_params(b.params, json.dumps({"threshold": 2}).encode())
    assert "'threshold'" in why


def test_the_readme_two_model_snippet_is_valid() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    snippet = text.split("Two models:", 1)[1].split("`", 2)[1]
    env = settings_env("UseDevelopmentStorage=true", "readme")
    env.pop("ACI_IMAGE")
    env["JOB_PROFILES"] = " ".join(snippet.split())
    s = load_settings(env)
    assert [(p.name, s.profile_cap(p.name)) for p in s.job_profiles] == [
        ("model-a", 20),
        ("model-b", 4),
    ]
    assert s.profile_of("b-2026/x.png") == "model-b" and s.profile_of("c/x.png") is None
