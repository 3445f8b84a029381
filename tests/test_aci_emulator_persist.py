"""The ACI emulator's `--state-file`: its groups outlive a restart, shown as Azure shows groups
after an outage of their host; and the janitor reads such an outage as a platform kill.

Real parts only: the emulator as a subprocess (stopped with SIGTERM and started again on the same
state dir, as `make run` does), the production SDK over HTTPS, Azurite for the pipeline test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import (
    EnvironmentVariable,
    ImageRegistryCredential,
)
from azure.storage.blob import ContainerClient

from launcher.poll import poll
from localdev.aci_emulator.testing import make_client, start_emulator
from localdev.aci_emulator.vocabulary import undocumented_values
from localdev.azurite import Azurite
from tests.armspec import ArmSpec, Recorder
from tests.conftest import Pipeline
from tests.test_aci_emulator import group, wait_for
from tests.test_janitor import manifest_of, only_batch, sweep_until

SUB = str(uuid.uuid4())
RG = "rg-persist"
STATE_FILE = "groups.json"
SECURE_VALUE = "s3cret-" + uuid.uuid4().hex  # must never reach the state file
REGISTRY_PASSWORD = "registry-" + uuid.uuid4().hex
PLATFORM_KILL = "Killing container (platform initiated)"


def state(client: ContainerInstanceManagementClient, name: str) -> tuple[str | None, int | None]:
    view = client.container_groups.get(RG, name).containers[0].instance_view
    current = view.current_state if view else None
    return (current.state, current.exit_code) if current else (None, None)


def get(client: ContainerInstanceManagementClient, name: str) -> Any:
    """The group through the SDK (typed Any: the models' optional fields are set here)."""
    return client.container_groups.get(RG, name)


def dig(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def logs(client: ContainerInstanceManagementClient, name: str) -> str:
    return str(client.containers.list_logs(RG, name, "main").content)


@dataclass
class Restarted:
    """What the first emulator showed before it stopped, and a client of the second one."""

    before: dict[str, dict[str, Any]]
    logs_before: dict[str, str]
    state_text: str
    client: ContainerInstanceManagementClient
    recorder: Recorder


@pytest.fixture(scope="module")
def restarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restarted]:
    """Three groups (finished, running with secrets, still provisioning), the emulator stopped
    and started again on the same state dir."""
    state_dir = tmp_path_factory.mktemp("aci-persist")
    options: dict[str, Any] = {
        "state_file": STATE_FILE,
        "provision_seconds": 0,
        "kill_grace_seconds": 1,
        "resource_groups": ["rg-*"],
    }
    with start_emulator(state_dir, **options) as first:
        client = make_client(first, SUB, polling_interval=0.2)
        cg = client.container_groups
        cg.begin_create_or_update(
            RG, "finished", group("print('line 1'); print('line 2'); raise SystemExit(3)")
        ).result()
        running = group(
            "print('working', flush=True); import time; time.sleep(600)",
            env=[EnvironmentVariable(name="TOKEN", secure_value=SECURE_VALUE)],
        )
        running.image_registry_credentials = [
            ImageRegistryCredential(server="python", username="u", password=REGISTRY_PASSWORD)
        ]
        cg.begin_create_or_update(RG, "running", running).result()
        wait_for(lambda: state(client, "finished") == ("Terminated", 3), what="finished exits")
        wait_for(lambda: "working" in logs(client, "running"), what="running runs")
        first.configure(provision_seconds=600)
        cg.begin_create_or_update(RG, "provisioning", group("pass"))
        wait_for(lambda: cg.get(RG, "provisioning").provisioning_state == "Pending")
        names = ("finished", "running", "provisioning")
        before = {n: cg.get(RG, n).as_dict() for n in names}
        logs_before = {n: logs(client, n) for n in ("finished", "running")}
    state_text = (state_dir / STATE_FILE).read_text()
    recorder = Recorder()
    with start_emulator(state_dir, **options) as second:
        yield Restarted(
            before,
            logs_before,
            state_text,
            make_client(second, SUB, polling_interval=0.2, per_retry_policies=[recorder]),
            recorder,
        )


def test_a_finished_group_comes_back_unchanged_logs_included(restarted: Restarted) -> None:
    client = restarted.client
    assert client.container_groups.get(RG, "finished").as_dict() == restarted.before["finished"]
    assert logs(client, "finished") == restarted.logs_before["finished"] == "line 1\nline 2\n"


def test_a_running_group_comes_back_killed_by_the_platform(restarted: Restarted) -> None:
    got = get(restarted.client, "running")
    assert got.instance_view.state == "Failed"
    view = got.containers[0].instance_view
    assert view.current_state.state == "Terminated"
    assert view.current_state.exit_code == 7148
    assert view.current_state.detail_status == "Error"
    start = "containers", 0, "instance_view", "current_state", "start_time"
    assert dig(got.as_dict(), start) == dig(restarted.before["running"], start)  # as it was
    assert view.current_state.finish_time >= view.current_state.start_time
    last = view.events[-1]
    assert (last.name, last.message, last.type) == ("Killing", PLATFORM_KILL, "Normal")
    events = "containers", 0, "instance_view", "events"
    assert dig(got.as_dict(), events)[:-1] == dig(restarted.before["running"], events)
    assert "working" in logs(restarted.client, "running")


def test_a_group_still_provisioning_comes_back_failed(restarted: Restarted) -> None:
    got = get(restarted.client, "provisioning")
    assert got.provisioning_state == "Failed"
    assert got.instance_view.state == "Failed"
    view = got.containers[0].instance_view
    assert (view.current_state.state, view.current_state.exit_code) == ("Terminated", 7148)
    failed = [e for e in view.events if e.name == "Failed"]
    assert failed and failed[-1].type == "Warning" and "interrupted" in failed[-1].message


def test_the_state_file_holds_no_secret(restarted: Restarted) -> None:
    assert '"running"' in restarted.state_text  # the file is the one written, with the group
    assert SECURE_VALUE not in restarted.state_text
    assert REGISTRY_PASSWORD not in restarted.state_text
    assert "TOKEN" in restarted.state_text  # the variable itself is kept, as ARM echoes it


def test_a_reloaded_group_without_its_secrets_runs_again_only_from_a_put(
    restarted: Restarted,
) -> None:
    cg = restarted.client.container_groups
    with pytest.raises(HttpResponseError) as refused:
        cg.begin_start(RG, "running").result()
    assert refused.value.status_code == 409
    assert refused.value.error is not None
    assert refused.value.error.code == "ContainerGroupSecretsNotPersisted"
    spec = group(
        f"import os; print('again', os.environ['TOKEN'] == {SECURE_VALUE!r})",
        env=[EnvironmentVariable(name="TOKEN", secure_value=SECURE_VALUE)],
    )
    cg.begin_create_or_update(RG, "finished", spec).result()  # no secrets: start would do too
    cg.begin_create_or_update(RG, "running", spec).result()  # deployed as new, secret back
    wait_for(lambda: "again True" in logs(restarted.client, "running"), what="rerun")


def test_reloaded_answers_hold_to_azures_contract(restarted: Restarted) -> None:
    """Runs last in this module: every answer the second emulator gave, against the spec
    (but the async operation polls of the PUTs above: the spec does not describe them)."""
    for name in ("finished", "running", "provisioning"):
        restarted.client.container_groups.get(RG, name)
    list(restarted.client.container_groups.list_by_resource_group(RG))
    recorder = restarted.recorder
    recorder.exchanges = [x for x in recorder.exchanges if "/operations/" not in x.url]
    assert recorder.problems(ArmSpec.load()) == []
    bodies = [x.response_body for x in recorder.exchanges if x.status == 200]
    groups = [b for b in bodies if isinstance(b, dict) and "properties" in b]
    groups += [g for b in bodies if isinstance(b, dict) for g in b.get("value") or []]
    assert len(groups) >= 3
    assert [v for g in groups for v in undocumented_values(g)] == []


# --- the pipeline: `make run` restarted while a batch runs ----------------------------------

LONG_FIRST_ATTEMPT = json.dumps(
    [
        "python",
        "-c",
        "import os, time; print('attempt', os.environ['ML_ATTEMPT'], flush=True); "
        "time.sleep(600 if os.environ['ML_ATTEMPT'] == '1' else 0)",
    ]
)


def running(p: Pipeline) -> bool:
    groups = p.groups()
    if not groups:
        return False
    view = p.get_group(str(groups[0].name)).containers[0].instance_view
    return bool(view and view.current_state and view.current_state.state == "Running")


def test_a_batch_whose_emulator_restarts_is_relaunched_as_a_platform_kill(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    """Strict defaults (2 s provisioning and all); a dedicated emulator with a state file, as
    `make run` starts it. The first attempt runs until the emulator stops; the second emulator
    reloads its group as killed by the platform (7148) and the janitor relaunches the batch
    without using up an attempt."""
    rg = "rg-" + container.container_name
    settings = {"ACI_IMAGE": "python:3.11", "ACI_COMMAND": LONG_FIRST_ATTEMPT, "MAX_ATTEMPTS": "1"}
    with start_emulator(tmp_path, state_file=STATE_FILE, resource_groups=[rg]) as first:
        p = Pipeline(azurite, first, container)
        container.upload_blob("incoming/a.txt", b"data")
        poll(p.clients(**settings))
        batch = only_batch(p)
        wait_for(lambda: running(p), timeout=60, what="attempt 1 running")
    with start_emulator(tmp_path, state_file=STATE_FILE, resource_groups=[rg]) as second:
        p = Pipeline(azurite, second, container)
        sweep_until(p.clients(**settings), lambda: manifest_of(p, batch)[0] == "done/", 120)
        _, m = manifest_of(p, batch)
        assert m["state"] == "succeeded" and m["platform_kills"] == 1
        assert [(a["outcome"], a["exit_code"]) for a in m["attempts"]] == [
            ("platform-killed", 7148),
            ("succeeded", 0),
        ]
        saved = container.download_blob(f"done/{batch}/_logs/attempt-1.log").readall().decode()
        assert "attempt 1" in saved  # the killed attempt's log, kept across the restart
        assert p.groups() == []
