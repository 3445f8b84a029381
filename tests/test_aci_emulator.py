"""The ACI emulator against the real SDK over HTTPS: the emulator runs as a subprocess (as in
development) and every container is a real local process. No mocks."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import psutil
import pytest
import requests
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import (
    Container,
    ContainerGroup,
    ContainerGroupIdentity,
    ContainerGroupSubnetId,
    EnvironmentVariable,
    GpuResource,
    ImageRegistryCredential,
    ResourceRequests,
    ResourceRequirements,
    UserAssignedIdentities,
)

from localdev.aci_emulator.testing import Emulator, make_client, start_emulator

SUB = str(uuid.uuid4())
PY = sys.executable
T = TypeVar("T")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Azure's defaults, with two explicit opt-outs for the speed of these unit tests:
    provisioning takes no time unless a test sets `provision_seconds` (the strict default, 2 s,
    is tested in test_aci_emulator_strict.py), and every `rg-*` resource group exists."""
    with start_emulator(
        tmp_path_factory.mktemp("aci"),
        kill_grace_seconds=1,
        provision_seconds=0,
        resource_groups=["rg-*"],
    ) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _fresh(emulator: Emulator) -> Iterator[None]:
    """Every test starts with no groups, no faults and zeroed counters."""
    emulator.reset(options=True)
    emulator.reset_stats()
    yield
    emulator.reset(options=True)


@pytest.fixture
def client(emulator: Emulator) -> ContainerInstanceManagementClient:
    return make_client(emulator, SUB, polling_interval=0.2, retry_backoff_factor=0.05)


@pytest.fixture
def rg() -> str:
    return "rg-" + uuid.uuid4().hex[:8]


def group(
    code: str = "pass",
    *,
    env: list[EnvironmentVariable] | None = None,
    image: str = "python:3.11",
    restart: str = "Never",
    cpu: float = 1.0,
    tags: dict[str, str] | None = None,
) -> ContainerGroup:
    return ContainerGroup(
        location="westeurope",
        os_type="Linux",
        restart_policy=restart,
        tags=tags or {"test": "yes"},
        containers=[
            Container(
                name="main",
                image=image,
                command=[PY, "-c", code],
                environment_variables=env or [],
                resources=ResourceRequirements(requests=ResourceRequests(cpu=cpu, memory_in_gb=1)),
            )
        ],
    )


def wait_for(fn: Callable[[], T | None], timeout: float = 10, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finished(client: ContainerInstanceManagementClient, rg: str, name: str) -> Any:
    """The group once its containers are done (SDK models type every field Optional: Any)."""

    def check() -> Any:
        g: Any = client.container_groups.get(rg, name)
        return g if g.instance_view.state in ("Succeeded", "Failed") else None

    return wait_for(check, what=f"{name} to finish")


def status_of_put(client: ContainerInstanceManagementClient, rg: str, name: str, body: Any) -> int:
    poller: Any = client.container_groups.begin_create_or_update(
        rg, name, body, polling=False, cls=lambda resp, _body, _headers: resp
    )
    return int(poller.result().http_response.status_code)


def group_state(client: ContainerInstanceManagementClient, rg: str, name: str) -> str | None:
    got: Any = client.container_groups.get(rg, name)
    return cast(str | None, got.instance_view.state)


def pid_of(emulator: Emulator, name: str) -> int:
    def find() -> int | None:
        for g in emulator.groups():
            if g["id"].endswith("/" + name):
                return g["containers"][0]["pid"]
        return None

    return wait_for(find, what=f"a process for {name}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def error_code(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


# ------------------------------------------------------------------- lifecycle


def test_create_polls_to_succeeded_then_runs_to_exit_0(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(provision_seconds=0.6)
    initial: Any = client.container_groups.begin_create_or_update(
        rg, "ok", group("print('hello')"), polling=False
    ).result()
    assert initial.provisioning_state == "Pending"
    assert initial.instance_view.state == "Pending"

    started = time.monotonic()
    result: Any = client.container_groups.begin_create_or_update(
        rg, "ok2", group("import time; time.sleep(0.5); print('hello')")
    ).result()
    assert result.provisioning_state == "Succeeded"
    assert 0.5 <= time.monotonic() - started < 5  # polled every 0.2 s, never a fixed 30 s

    done = finished(client, rg, "ok2")
    assert done.instance_view.state == "Succeeded"
    view = done.containers[0].instance_view
    state = view.current_state
    assert (state.state, state.exit_code, state.detail_status) == ("Terminated", 0, "Completed")
    assert state.start_time <= state.finish_time
    assert [e.name for e in view.events][:4] == ["Pulling", "Pulled", "Created", "Started"]
    assert client.containers.list_logs(rg, "ok2", "main").content == "hello\n"
    stats = emulator.stats()
    assert stats["requests"]["GET operation"] >= 2  # Pending/Creating seen, then Succeeded


def test_default_sdk_client_never_waits_its_30_second_polling_interval(
    emulator: Emulator, rg: str
) -> None:
    default = make_client(emulator, SUB)  # polling_interval 30 s, as in production
    started = time.monotonic()
    default.container_groups.begin_create_or_update(rg, "fast", group()).result()
    assert time.monotonic() - started < 3  # the first status poll (made at once) sees Succeeded

    emulator.configure(provision_seconds=1)
    started = time.monotonic()
    default.container_groups.begin_create_or_update(rg, "slow", group()).result()
    assert 1 <= time.monotonic() - started < 5  # Retry-After: the time left, not 30 s

    def operation_retry_after(name: str) -> str | None:
        put = requests.put(
            f"{emulator.url}/subscriptions/{SUB}/resourceGroups/{rg}/providers/"
            f"Microsoft.ContainerInstance/containerGroups/{name}?api-version=2023-05-01",
            json=group().serialize(),
            headers={"Authorization": "Bearer x"},
            verify=str(emulator.ca),
            timeout=10,
        )
        assert put.status_code == 201 and "Retry-After" not in put.headers
        poll = requests.get(
            put.headers["Azure-AsyncOperation"],
            headers={"Authorization": "Bearer x"},
            verify=str(emulator.ca),
            timeout=10,
        )
        assert poll.json()["status"] in ("Pending", "Creating")
        return poll.headers.get("Retry-After")

    assert 0 < float(operation_retry_after("auto") or 0) <= 1
    emulator.configure(operation_retry_after=0)  # exactly like recorded ACI traffic
    assert operation_retry_after("none") is None


def test_non_zero_exit_fails_the_group_and_logs_keep_order(
    client: ContainerInstanceManagementClient, rg: str
) -> None:
    code = (
        "import sys\n"
        "print('one', flush=True); print('two', file=sys.stderr, flush=True)\n"
        "print('three', flush=True); sys.exit(3)"
    )
    client.container_groups.begin_create_or_update(rg, "bad", group(code)).result()
    done = finished(client, rg, "bad")
    assert done.instance_view.state == "Failed"
    state = done.containers[0].instance_view.current_state
    assert (state.state, state.exit_code, state.detail_status) == ("Terminated", 3, "Error")
    assert client.containers.list_logs(rg, "bad", "main").content == "one\ntwo\nthree\n"
    assert client.containers.list_logs(rg, "bad", "main", tail=1).content == "three\n"


def test_env_and_secure_values_reach_the_process_but_never_come_back(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    secret, password = "s3cr3t-" + uuid.uuid4().hex, "pw-" + uuid.uuid4().hex
    code = "import os; print(os.environ['PLAIN'], os.environ['SECRET'], 'HOME' in os.environ)"
    body: Any = group(
        code,
        env=[
            EnvironmentVariable(name="PLAIN", value="visible"),
            EnvironmentVariable(name="SECRET", secure_value=secret),
        ],
    )
    body.image_registry_credentials = [
        ImageRegistryCredential(server="example.azurecr.io", username="me", password=password)
    ]
    client.container_groups.begin_create_or_update(rg, "env", body).result()
    finished(client, rg, "env")
    assert client.containers.list_logs(rg, "env", "main").content == f"visible {secret} True\n"

    raw_get = str(
        client.container_groups.get(rg, "env", cls=lambda r, _b, _h: r.http_response.text())
    )
    raw_pages = [
        requests.get(
            f"{emulator.url}{path}?api-version=2023-05-01",
            headers={"Authorization": "Bearer x"},
            verify=str(emulator.ca),
            timeout=10,
        ).text
        for path in (
            f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups",
            f"/subscriptions/{SUB}/providers/Microsoft.ContainerInstance/containerGroups",
        )
    ]
    for text in (raw_get, *raw_pages):
        assert "env" in text and "visible" in text
        assert secret not in text and password not in text
        assert "secureValue" not in text and "password" not in text
    got: Any = client.container_groups.get(rg, "env")
    env = {e.name: (e.value, e.secure_value) for e in got.containers[0].environment_variables}
    assert env == {"PLAIN": ("visible", None), "SECRET": (None, None)}
    assert got.image_registry_credentials[0].username == "me"
    assert secret not in emulator.log_path.read_text()


def test_identity_gpu_subnet_registry_and_tags_are_echoed(
    client: ContainerInstanceManagementClient, rg: str
) -> None:
    """(GPU and subnet in two groups: ACI refuses GPU groups in a virtual network.)"""
    uai = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"
    subnet = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
    body: Any = group(tags={"managed-by": "model-launcher", "ml-batch": "b1"})
    body.identity = ContainerGroupIdentity(
        type="SystemAssigned, UserAssigned",
        user_assigned_identities={uai: UserAssignedIdentities()},
    )
    body.containers[0].resources.requests.gpu = GpuResource(count=1, sku="V100")
    client.container_groups.begin_create_or_update(rg, "shapes", body).result()
    in_vnet: Any = group()
    in_vnet.subnet_ids = [ContainerGroupSubnetId(id=subnet)]
    client.container_groups.begin_create_or_update(rg, "vnet", in_vnet).result()
    assert client.container_groups.get(rg, "vnet").subnet_ids[0].id == subnet
    got: Any = client.container_groups.get(rg, "shapes")
    assert got.tags == {"managed-by": "model-launcher", "ml-batch": "b1"}
    assert got.identity.principal_id and got.identity.tenant_id
    ids = got.identity.user_assigned_identities[uai]
    assert ids.principal_id and ids.client_id and ids.principal_id != ids.client_id
    gpu = got.containers[0].resources.requests.gpu
    assert (gpu.count, gpu.sku) == (1, "V100")
    assert (got.os_type, got.restart_policy, got.sku) == ("Linux", "Never", "Standard")


def test_on_failure_restart_policy_reruns_until_success(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str, tmp_path: Path
) -> None:
    emulator.configure(restart_backoff_seconds=0.1)
    marker = tmp_path / "ran-once"
    code = (
        f"import os, sys\nm = {str(marker)!r}\n"
        "if os.path.exists(m): sys.exit(0)\nopen(m, 'w').close(); sys.exit(1)"
    )
    client.container_groups.begin_create_or_update(
        rg, "retry", group(code, restart="OnFailure")
    ).result()
    done = finished(client, rg, "retry")
    view = done.containers[0].instance_view
    assert done.instance_view.state == "Succeeded"
    assert view.restart_count == 1
    assert view.previous_state.exit_code == 1
    assert view.current_state.exit_code == 0


def test_same_spec_put_is_adopted_without_restart_and_immutable_changes_are_refused(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    client.container_groups.begin_create_or_update(
        rg, "idem", group("import time; time.sleep(30)")
    ).result()
    pid = pid_of(emulator, "idem")
    again = group("import time; time.sleep(30)", tags={"test": "again"})
    assert status_of_put(client, rg, "idem", again) == 200
    assert pid_of(emulator, "idem") == pid and alive(pid)
    assert client.container_groups.get(rg, "idem").tags == {"test": "again"}
    with pytest.raises(HttpResponseError) as exc:
        client.container_groups.begin_create_or_update(
            rg, "idem", group("import time; time.sleep(30)", cpu=2.0)
        )
    assert exc.value.status_code == 400
    assert error_code(exc.value) == "InvalidContainerGroupUpdate"


def test_stop_kills_the_process_and_start_runs_it_again(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    client.container_groups.begin_create_or_update(
        rg, "stopme", group("import time; time.sleep(60)")
    ).result()
    pid = pid_of(emulator, "stopme")
    assert group_state(client, rg, "stopme") == "Running"
    client.container_groups.stop(rg, "stopme")
    assert not alive(pid)
    got: Any = client.container_groups.get(rg, "stopme")
    assert got.instance_view.state == "Stopped"
    assert got.provisioning_state == "Succeeded"
    state = got.containers[0].instance_view.current_state
    assert (state.state, state.exit_code) == ("Terminated", 143)  # SIGTERM
    assert "Killing" in [e.name for e in got.containers[0].instance_view.events]

    client.container_groups.begin_start(rg, "stopme").result()
    new_pid = pid_of(emulator, "stopme")
    assert new_pid != pid and alive(new_pid)
    assert group_state(client, rg, "stopme") == "Running"


def test_delete_kills_a_running_container(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    client.container_groups.begin_create_or_update(rg, "doomed", group(code)).result()
    pid = pid_of(emulator, "doomed")
    child = wait_for(lambda: psutil.Process(pid).children(), what="the grandchild")[0].pid
    deleted: Any = client.container_groups.begin_delete(
        rg, "doomed", cls=lambda resp, body, _h: (resp.http_response.status_code, body)
    ).result()
    assert deleted[0] == 200 and deleted[1].name == "doomed"
    assert not alive(pid)
    wait_for(lambda: not alive(child), 5, "the grandchild to die")  # the whole process group
    with pytest.raises(ResourceNotFoundError):
        client.container_groups.get(rg, "doomed")
    gone = client.container_groups.begin_delete(
        rg, "doomed", polling=False, cls=lambda resp, _b, _h: resp.http_response.status_code
    ).result()
    assert gone == 204
    assert emulator.stats()["running_processes"] == 0


# ------------------------------------------------------------------- errors


def test_group_still_provisioning_is_transitioning(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(provision_seconds=5)
    assert status_of_put(client, rg, "slow", group()) == 201
    assert client.container_groups.get(rg, "slow").provisioning_state in ("Pending", "Creating")
    calls: list[Callable[[], Any]] = [
        lambda: client.container_groups.begin_delete(rg, "slow"),
        lambda: client.container_groups.stop(rg, "slow"),
        lambda: client.containers.list_logs(rg, "slow", "main"),
    ]
    for call in calls:
        with pytest.raises(HttpResponseError) as exc:
            call()
        assert exc.value.status_code == 409
        assert error_code(exc.value) == "ContainerGroupTransitioning"
    # an equivalent PUT is still fine (adoption while provisioning)
    assert status_of_put(client, rg, "slow", group()) == 200


def test_missing_group_is_404(client: ContainerInstanceManagementClient, rg: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: client.container_groups.get(rg, "nope"),
        lambda: client.container_groups.stop(rg, "nope"),
        lambda: client.containers.list_logs(rg, "nope", "main"),
    ]
    for call in calls:
        with pytest.raises(ResourceNotFoundError) as exc:
            call()
        assert exc.value.status_code == 404
        assert error_code(exc.value) == "ResourceNotFound"


@pytest.mark.parametrize(
    "name", ["UpperCase", "-lead", "trail-", "dou--ble", "a" * 64, "under_score", "dot.name"]
)
def test_invalid_group_names_are_rejected(
    client: ContainerInstanceManagementClient, rg: str, name: str
) -> None:
    with pytest.raises(HttpResponseError) as exc:
        client.container_groups.begin_create_or_update(rg, name, group(), polling=False)
    assert exc.value.status_code == 400
    assert error_code(exc.value) == "InvalidContainerGroupName"


def test_valid_name_edge_cases_are_accepted(
    client: ContainerInstanceManagementClient, rg: str
) -> None:
    for name in ("a", "0", "a" * 63, "a-b-c", "9-x", "ml-2026-a1"):
        assert status_of_put(client, rg, name, group()) == 201, name
    names = {g.name for g in client.container_groups.list_by_resource_group(rg)}
    assert names == {"a", "0", "a" * 63, "a-b-c", "9-x", "ml-2026-a1"}


def test_bad_specs_get_aci_error_codes(client: ContainerInstanceManagementClient, rg: str) -> None:
    def put_raw(body: dict[str, Any]) -> str | None:
        with pytest.raises(HttpResponseError) as exc:
            client.container_groups.begin_create_or_update(
                rg, "spec", cast(Any, json.dumps(body).encode()), polling=False
            )
        assert exc.value.status_code == 400
        return error_code(exc.value)

    def body(**container: Any) -> dict[str, Any]:
        props = {"image": "python:3.11", "resources": {"requests": {"cpu": 1, "memoryInGB": 1}}}
        props.update(container)
        return {
            "location": "westeurope",
            "properties": {
                "osType": "Linux",
                "containers": [{"name": "main", "properties": props}],
            },
        }

    no_image = body()
    del no_image["properties"]["containers"][0]["properties"]["image"]
    assert put_raw(no_image) == "InvalidRequestContent"
    assert put_raw(body(resources={})) == "ResourceRequestsNotSpecified"
    assert put_raw(body(environmentVariables=[{"name": "a.b", "value": "x"}])) == (
        "InvalidContainerEnvironmentVariable"
    )
    no_os = body()
    del no_os["properties"]["osType"]
    assert put_raw(no_os) == "InvalidOsType"
    no_location = body()
    del no_location["location"]
    assert put_raw(no_location) == "LocationRequired"
    assert put_raw({"location": "x", "properties": {"osType": "Linux", "containers": []}}) == (
        "InvalidRequestContent"
    )


def test_quota_counts_groups_in_the_subscription_and_region(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(quota=2)
    assert status_of_put(client, rg, "q1", group()) == 201
    assert status_of_put(client, rg + "-other", "q2", group()) == 201
    with pytest.raises(HttpResponseError) as exc:
        client.container_groups.begin_create_or_update(rg, "q3", group(), polling=False)
    assert exc.value.status_code == 400
    assert error_code(exc.value) == "ContainerGroupQuotaReached"
    assert "'ContainerGroups' exceeded in region 'westeurope'" in str(exc.value.message)
    elsewhere: Any = group()
    elsewhere.location = "North Europe"  # another region has its own quota
    assert status_of_put(client, rg, "q-north", elsewhere) == 201
    assert status_of_put(client, rg, "q1", group()) == 200  # re-PUT of an existing group is fine
    client.container_groups.begin_delete(rg, "q1").result()
    assert status_of_put(client, rg, "q3", group()) == 201


def test_unknown_image_is_inaccessible_or_fails_to_pull(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    with pytest.raises(HttpResponseError) as exc:
        client.container_groups.begin_create_or_update(rg, "img", group(image="nosuch/img:1"))
    assert exc.value.status_code == 400
    assert error_code(exc.value) == "InaccessibleImage"
    with pytest.raises(ResourceNotFoundError):
        client.container_groups.get(rg, "img")

    # A short provisioning timeout (Azure's is 30 min; the retries are tested on their own).
    emulator.configure(
        unknown_image="pull-failure", provision_timeout_seconds=0.5, restart_backoff_seconds=0.1
    )
    for name, image in (("img", "nosuch/img:1"), ("img2", "registry.invalid/worker:1")):
        with pytest.raises(HttpResponseError):  # the LRO ends Failed
            client.container_groups.begin_create_or_update(rg, name, group(image=image)).result()
        got: Any = client.container_groups.get(rg, name)
        assert got.provisioning_state == "Failed"
        assert got.instance_view.state == "Pending"
        view = got.containers[0].instance_view
        assert (view.current_state.state, view.current_state.detail_status) == (
            "Waiting",
            "ErrImagePull",
        )
        events = {(e.name, e.type) for e in view.events}
        assert ("Failed", "Warning") in events and ("BackOff", "Normal") in events
        with pytest.raises(HttpResponseError) as logs_exc:
            client.containers.list_logs(rg, name, "main")
        assert error_code(logs_exc.value) == "ContainerLogNotAvailable"
    assert emulator.stats()["running_processes"] == 0


# ------------------------------------------------------------------- listing


def test_list_omits_instance_view_and_pages_with_next_link(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(page_size=2)
    names = [f"page-{i}" for i in range(5)]
    for name in names:
        client.container_groups.begin_create_or_update(rg, name, group()).result()
    emulator.reset_stats()
    listed: list[Any] = list(client.container_groups.list_by_resource_group(rg))
    assert [g.name for g in listed] == names
    assert emulator.stats()["requests"]["GET list_resource_group"] == 3
    for g in listed:
        assert g.instance_view is None
        assert g.containers[0].instance_view is None
        assert g.provisioning_state == "Succeeded"
    everywhere = [g.name for g in client.container_groups.list() if str(g.id).split("/")[4] == rg]
    assert everywhere == names
    assert emulator.stats()["requests"]["GET list_subscription"] == 3


# ------------------------------------------------------------------- faults and auth


def test_429_is_retried_by_the_sdk_honouring_retry_after(
    emulator: Emulator, client: ContainerInstanceManagementClient, rg: str
) -> None:
    emulator.configure(fault_queue=["429", "429"], retry_after=0.5)
    started = time.monotonic()
    assert status_of_put(client, rg, "throttled", group()) == 201
    assert time.monotonic() - started >= 1.0  # two Retry-After: 0.5 waits
    stats = emulator.stats()
    assert stats["faults"] == {"429": 2}
    assert stats["requests"]["PUT container_group"] == 3

    # Half of all requests throttled: the SDK's retry policy (allowed 10 status retries instead
    # of its default 3) gets every call through.
    patient = make_client(emulator, SUB, polling_interval=0.2, retry_status=10)
    emulator.configure(fault_429_rate=0.5, retry_after=0.02, seed=7)
    patient.container_groups.begin_create_or_update(rg, "busy", group()).result()
    for _ in range(8):
        assert patient.container_groups.get(rg, "throttled").name == "throttled"
    assert len(list(patient.container_groups.list_by_resource_group(rg))) == 2
    assert emulator.stats()["faults"]["429"] > 5


def test_5xx_rate_is_survived_and_a_faulted_request_changes_nothing(
    emulator: Emulator, rg: str
) -> None:
    retrying = make_client(
        emulator, SUB, polling_interval=0.2, retry_backoff_factor=0.01, retry_status=10
    )
    emulator.configure(fault_5xx_rate=0.5, retry_after=0.05, seed=11)
    retrying.container_groups.begin_create_or_update(rg, "flaky", group()).result()
    for _ in range(6):
        retrying.container_groups.get(rg, "flaky")
    faults = emulator.stats()["faults"]
    assert faults.get("500", 0) + faults.get("503", 0) > 0

    emulator.configure(fault_5xx_rate=0, fault_queue=[{"fault": "500", "method": "PUT"}])
    bare = make_client(emulator, SUB, retry_total=0)
    with pytest.raises(HttpResponseError) as exc:
        bare.container_groups.begin_create_or_update(rg, "never", group(), polling=False)
    assert exc.value.status_code == 500
    with pytest.raises(ResourceNotFoundError):
        bare.container_groups.get(rg, "never")


def test_after_commit_and_drop_faults_apply_the_change(emulator: Emulator, rg: str) -> None:
    bare = make_client(emulator, SUB, retry_total=0)
    emulator.configure(fault_queue=[{"fault": "after-commit", "method": "PUT"}])
    with pytest.raises(HttpResponseError) as exc:
        bare.container_groups.begin_create_or_update(rg, "landed", group(), polling=False)
    assert exc.value.status_code == 500
    assert bare.container_groups.get(rg, "landed").name == "landed"  # it was created anyway
    assert status_of_put(bare, rg, "landed", group()) == 200  # the retry adopts it

    emulator.configure(fault_queue=[{"fault": "drop", "method": "DELETE"}])
    with pytest.raises((ServiceResponseError, ServiceRequestError)):
        bare.container_groups.begin_delete(rg, "landed", polling=False)
    with pytest.raises(ResourceNotFoundError):
        bare.container_groups.get(rg, "landed")
    assert emulator.stats()["faults"] == {"after-commit": 1, "drop": 1}


def test_latency_is_added(emulator: Emulator, client: ContainerInstanceManagementClient) -> None:
    emulator.configure(latency_ms=300)
    started = time.monotonic()
    list(client.container_groups.list())
    assert time.monotonic() - started >= 0.3


def test_bearer_token_and_api_version_are_required(emulator: Emulator, rg: str) -> None:
    base = f"{emulator.url}/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups"

    def call(query: str, headers: dict[str, str]) -> requests.Response:
        return requests.get(base + query, headers=headers, verify=str(emulator.ca), timeout=10)

    no_auth = call("?api-version=2023-05-01", {})
    assert no_auth.status_code == 401
    assert no_auth.json()["error"]["code"] == "AuthenticationFailed"
    assert "WWW-Authenticate" in no_auth.headers
    assert call("?api-version=2023-05-01", {"Authorization": "Basic abc"}).status_code == 401
    ok = call("?api-version=2023-05-01", {"Authorization": "Bearer anything"})
    assert ok.status_code == 200 and ok.json() == {"value": []}
    old = call("?api-version=2018-10-01", {"Authorization": "Bearer anything"})
    assert (old.status_code, old.json()["error"]["code"]) == (400, "NoRegisteredProviderFound")
    missing = call("", {"Authorization": "Bearer anything"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (
        400,
        "MissingApiVersionParameter",
    )
