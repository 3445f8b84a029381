"""The ACI emulator is as strict as Azure by default: provisioning time, pull retries, update
semantics, log truncation, limits, quotas, budgets, resource groups, 403s, platform kills.

Each test shows one behaviour through the real SDK over HTTPS (docs/emulator.md lists them with
their sources); each would fail against the kinder emulator this replaced.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import (
    ContainerGroupSubnetId,
    ContainerPort,
    EnvironmentVariable,
    GpuResource,
)

from localdev.aci_emulator.options import Options
from localdev.aci_emulator.testing import Emulator, make_client, start_emulator
from tests.test_aci_emulator import (
    SUB,
    alive,
    error_code,
    finished,
    group,
    pid_of,
    status_of_put,
    wait_for,
)

SLEEP = "import time; print('up', flush=True); time.sleep(60)"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The defaults, except that every `rg-*` resource group exists."""
    with start_emulator(
        tmp_path_factory.mktemp("aci-strict"), kill_grace_seconds=1, resource_groups=["rg-*"]
    ) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _fresh(emulator: Emulator) -> Iterator[None]:
    emulator.reset(options=True)
    yield
    emulator.reset(options=True)


@pytest.fixture
def client(emulator: Emulator) -> ContainerInstanceManagementClient:
    return make_client(emulator, SUB, polling_interval=0.2, retry_total=0)


@pytest.fixture
def rg() -> str:
    return "rg-" + uuid.uuid4().hex[:8]


def raw_put(emulator: Emulator, rg: str, name: str, body: Any) -> requests.Response:
    return requests.put(
        f"{emulator.url}/subscriptions/{SUB}/resourceGroups/{rg}/providers/"
        f"Microsoft.ContainerInstance/containerGroups/{name}?api-version=2023-05-01",
        json=body.serialize(),
        headers={"Authorization": "Bearer x"},
        verify=str(emulator.ca),
        timeout=10,
    )


def raw_delete(emulator: Emulator, rg: str, name: str) -> requests.Response:
    return requests.delete(
        f"{emulator.url}/subscriptions/{SUB}/resourceGroups/{rg}/providers/"
        f"Microsoft.ContainerInstance/containerGroups/{name}?api-version=2023-05-01",
        headers={"Authorization": "Bearer x"},
        verify=str(emulator.ca),
        timeout=10,
    )


def refused(call: Any) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as exc:
        call()
    return exc.value


def container_view(client: ContainerInstanceManagementClient, rg: str, name: str) -> Any:
    got: Any = client.container_groups.get(rg, name)
    return got.containers[0].instance_view


# ------------------------------------------------------------------- defaults and provisioning


def test_defaults_are_azures(tmp_path: Path) -> None:
    """With no flags at all (as `make run` starts it, plus the app's resource group)."""
    with start_emulator(tmp_path) as emu:
        config = emu.configure()
    assert config == Options().public()
    assert (config["provision_seconds"], config["provision_timeout_seconds"]) == (2.0, 1800.0)
    assert (config["quota"], config["cores_quota"]) == (100, 100)
    assert (config["creates_per_5_minutes"], config["creates_per_hour"]) == (100, 300)
    assert (config["deletes_per_5_minutes"], config["deletes_per_hour"]) == (100, 300)
    assert config["group_limits"]["standard"] == {"cpu": 4.0, "memoryInGB": 16.0}
    assert config["resource_groups"] == ["rg-local"]
    assert config["authorization_failed"] is False and config["platform_kill_rate"] == 0


def test_provisioning_goes_pending_creating_with_waiting_containers(
    client: ContainerInstanceManagementClient, rg: str
) -> None:
    seen: list[tuple[Any, ...]] = []
    client.container_groups.begin_create_or_update(rg, "slow", group(), polling=False)

    def observe() -> bool:
        got: Any = client.container_groups.get(rg, "slow")
        view = got.containers[0].instance_view
        current = view.current_state.state if view and view.current_state else None
        events = tuple(e.name for e in view.events) if view else ()
        seen.append((got.provisioning_state, got.instance_view.state, current, events))
        return got.provisioning_state == "Succeeded"

    wait_for(observe, 15, "provisioning")
    assert seen[0][:3] == ("Pending", "Pending", None)
    assert ("Creating", "Pending", "Waiting", ("Pulling",)) in seen
    assert seen[-1][3][:4] == ("Pulling", "Pulled", "Created", "Started")


def test_a_failing_pull_retries_until_the_provisioning_timeout(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(
        unknown_image="pull-failure",
        provision_seconds=0,
        provision_timeout_seconds=2,
        restart_backoff_seconds=0.2,
    )
    client.container_groups.begin_create_or_update(
        rg, "nopull", group(image="nosuch/img:1"), polling=False
    )

    def retried() -> Any:
        view = container_view(client, rg, "nopull")
        counts = {e.name: e.count for e in view.events} if view else {}
        return counts if counts.get("BackOff", 0) >= 2 else None

    counts = wait_for(retried, 5, "a second pull attempt")
    assert counts["Failed"] >= 2 and counts["Pulling"] >= 2
    got: Any = client.container_groups.get(rg, "nopull")
    assert got.provisioning_state == "Creating"  # still trying: not Failed at once
    assert got.containers[0].instance_view.current_state.state == "Waiting"
    wait_for(
        lambda: client.container_groups.get(rg, "nopull").provisioning_state == "Failed",
        10,
        "provisioning to fail after the timeout",
    )
    failed: Any = client.container_groups.get(rg, "nopull")
    assert failed.instance_view.state == "Pending"


# ------------------------------------------------------------------- PUT on an existing group


def test_modified_running_group_restarts_its_containers_in_place(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(provision_seconds=0.2)
    client.container_groups.begin_create_or_update(rg, "live", group(SLEEP)).result()
    pid = pid_of(emulator, "live")
    before = container_view(client, rg, "live")
    assert before.restart_count == 0
    assert status_of_put(client, rg, "live", group(SLEEP)) == 200  # same spec: nothing happens
    assert pid_of(emulator, "live") == pid and alive(pid)

    changed = group(SLEEP, env=[EnvironmentVariable(name="NEW", value="1")])
    assert status_of_put(client, rg, "live", changed) == 200
    wait_for(lambda: not alive(pid), 5, "the old process to be killed")

    def restarted() -> Any:
        view = container_view(client, rg, "live")
        state = view.current_state if view else None
        return view if state and state.state == "Running" and view.restart_count == 1 else None

    after = wait_for(restarted, 10, "the restart")
    assert after.current_state.start_time > before.current_state.start_time
    assert "Killing" in [e.name for e in after.events]
    new_pid = pid_of(emulator, "live")
    assert new_pid != pid and alive(new_pid)


@pytest.mark.parametrize("end", ["Succeeded", "Failed", "Stopped"])
def test_put_for_a_terminated_group_deploys_it_as_new_and_it_runs_again(
    emulator: Emulator,
    client: ContainerInstanceManagementClient,
    rg: str,
    end: str,
    tmp_path: Path,
) -> None:
    """The late-PUT hazard: the same spec, sent again after the group ended, runs it again."""
    emulator.configure(provision_seconds=0.2)
    runs = tmp_path / "runs"
    then = {"Succeeded": "", "Failed": "; raise SystemExit(3)", "Stopped": "; time.sleep(60)"}
    code = f"import time; open({str(runs)!r}, 'a').write('x'); print('ran', flush=True)"
    body = group(code + then[end])
    client.container_groups.begin_create_or_update(rg, "again", body).result()
    wait_for(lambda: runs.exists(), 10, "the first run")
    if end == "Stopped":
        client.container_groups.stop(rg, "again")
    else:
        finished(client, rg, "again")
    ended: Any = client.container_groups.get(rg, "again")
    assert ended.instance_view.state == end

    assert status_of_put(client, rg, "again", body) == 200  # the same spec
    wait_for(lambda: runs.read_text() == "xx", 10, "the second run")
    view = wait_for(lambda: container_view(client, rg, "again"), 10, "the new deployment")
    assert view.restart_count == 0  # a new deployment, not a restart
    logs = wait_for(lambda: client.containers.list_logs(rg, "again", "main").content, 10, "logs")
    assert logs == "ran\n"  # and a new log


def test_properties_that_require_delete_are_refused(
    client: ContainerInstanceManagementClient, rg: str
) -> None:
    client.container_groups.begin_create_or_update(rg, "fixed", group(SLEEP)).result()
    ported: Any = group(SLEEP)
    ported.containers[0].ports = [ContainerPort(port=8080)]
    for body in (group(SLEEP, cpu=2.0), group(SLEEP, restart="Always"), ported):
        exc = refused(lambda b=body: client.container_groups.begin_create_or_update(rg, "fixed", b))
        assert (exc.status_code, error_code(exc)) == (400, "InvalidContainerGroupUpdate")


# ------------------------------------------------------------------- logs


def test_logs_keep_4_mb_while_running_and_16_kb_or_1000_lines_after(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str, tmp_path: Path
) -> None:
    emulator.configure(provision_seconds=0)
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        "for i in range(3000): print(f'line {i:05d} ' + 'x' * 40)\n"
        "print('written', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
    )
    client.container_groups.begin_create_or_update(rg, "chatty", group(code)).result()
    wait_for(lambda: "written" in client.containers.list_logs(rg, "chatty", "main").content)
    running = client.containers.list_logs(rg, "chatty", "main").content
    assert running.count("\n") == 3001 and running.startswith("line 00000 ")
    go.touch()
    finished(client, rg, "chatty")
    stopped = client.containers.list_logs(rg, "chatty", "main").content
    assert len(stopped.encode()) <= 16 * 1024
    assert stopped.count("\n") <= 1000
    assert stopped.endswith("line 02999 " + "x" * 40 + "\nwritten\n")
    assert client.containers.list_logs(rg, "chatty", "main", tail=1).content == "written\n"


# ------------------------------------------------------------------- limits and quotas


def test_per_group_limits_and_no_gpu_in_a_virtual_network(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    big_memory: Any = group()
    big_memory.containers[0].resources.requests.memory_in_gb = 17
    gpu_in_vnet: Any = group()
    gpu_in_vnet.containers[0].resources.requests.gpu = GpuResource(count=1, sku="V100")
    gpu_in_vnet.subnet_ids = [
        ContainerGroupSubnetId(
            id=f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/"
            "virtualNetworks/v/subnets/s"
        )
    ]
    for body in (group(cpu=4.5), big_memory, gpu_in_vnet):
        exc = refused(
            lambda b=body: client.container_groups.begin_create_or_update(
                rg, "big", b, polling=False
            )
        )
        assert (exc.status_code, error_code(exc)) == (409, "ServiceUnavailable")
        assert "Resource requested:" in str(exc.message)
    gpu: Any = group(cpu=6)
    gpu.containers[0].resources.requests.gpu = GpuResource(count=1, sku="V100")
    assert status_of_put(client, rg, "gpu", gpu) == 201  # V100 x1: up to 6 CPU / 112 GB
    emulator.configure(group_limits={"standard": {"cpu": 8, "memoryInGB": 32}})
    assert status_of_put(client, rg, "big", group(cpu=4.5)) == 201  # the table is configurable


def test_standard_cores_quota_per_region(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(cores_quota=5)
    assert status_of_put(client, rg, "c1", group(cpu=3)) == 201
    exc = refused(
        lambda: client.container_groups.begin_create_or_update(
            rg, "c2", group(cpu=3), polling=False
        )
    )
    assert (exc.status_code, error_code(exc)) == (400, "ContainerGroupQuotaReached")
    assert "'StandardCores' exceeded in region 'westeurope'. Limit: '5', Usage: '3'" in str(
        exc.message
    )
    assert status_of_put(client, rg, "c2", group(cpu=2)) == 201
    north: Any = group(cpu=3)
    north.location = "northeurope"
    assert status_of_put(client, rg, "c3", north) == 201


def test_create_and_delete_budgets_count_down_then_throttle(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(provision_seconds=0, creates_per_5_minutes=2, deletes_per_hour=1)
    pt5m = "x-ms-ratelimit-remaining-subscription-resource-requests-pt5m"
    pt1h = "x-ms-ratelimit-remaining-subscription-resource-requests-pt1h"
    body = group(SLEEP)  # running all along: a same-spec PUT is then a no-op, not a create
    first, second = raw_put(emulator, rg, "b1", body), raw_put(emulator, rg, "b2", body)
    assert (first.headers[pt5m], first.headers[pt1h]) == ("1", "299")
    assert (second.headers[pt5m], second.headers[pt1h]) == ("0", "298")
    third = raw_put(emulator, rg, "b3", body)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "ResourceRequestsThrottled"
    assert int(third.headers["Retry-After"]) > 250  # until the oldest create leaves the window
    assert raw_put(emulator, rg, "b1", body).status_code == 200  # no create: not throttled

    deleted = raw_delete(emulator, rg, "b1")
    assert (deleted.status_code, deleted.headers[pt1h]) == (200, "0")
    throttled = raw_delete(emulator, rg, "b2")
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 3000
    assert client.container_groups.get(rg, "b2").name == "b2"  # still there


# ------------------------------------------------------------------- ARM scope checks


def test_missing_resource_group_is_404_and_the_403_mode(
    emulator: Emulator, client: ContainerInstanceManagementClient
) -> None:
    for call in (
        lambda: client.container_groups.begin_create_or_update("nope", "g", group(), polling=False),
        lambda: client.container_groups.get("nope", "g"),
        lambda: list(client.container_groups.list_by_resource_group("nope")),
    ):
        exc = refused(call)
        assert (exc.status_code, error_code(exc)) == (404, "ResourceGroupNotFound")
    emulator.configure(authorization_failed=True)
    for call in (
        lambda: client.container_groups.get("rg-any", "g"),
        lambda: list(client.container_groups.list()),
    ):
        exc = refused(call)
        assert (exc.status_code, error_code(exc)) == (403, "AuthorizationFailed")


# ------------------------------------------------------------------- platform kills


def test_platform_kills_end_containers_with_7147_or_7148(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(provision_seconds=0)
    client.container_groups.begin_create_or_update(rg, "victim", group(SLEEP)).result()
    pid = pid_of(emulator, "victim")
    emulator.configure(platform_kill_rate=1)
    done = finished(client, rg, "victim")
    assert not alive(pid)
    assert done.instance_view.state == "Failed"
    view = done.containers[0].instance_view
    assert view.current_state.exit_code in (7147, 7148)
    assert ("Killing", "Killing container (platform initiated)") in [
        (e.name, e.message) for e in view.events
    ]
