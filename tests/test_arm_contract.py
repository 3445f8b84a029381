"""Azure's contract: every ARM request the app sends and every answer of the ACI emulator,
checked over real HTTP against Azure's vendored OpenAPI spec (tests/azure_spec, strict mode) and
the documented state and event values (localdev/aci_emulator/vocabulary.py).

The traffic is the real app's: `build_group` + `AciHook` (create, get, list, logs, mark_kept,
stop, delete) through `build_clients` with a recording azure-core policy, one run per supported
configuration, plus the error answers the app meets (404, 400, 409, 429, 500, 503)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from launcher.aci import AciError, AciHook
from launcher.batch import Manifest, State, iso, new_batch_id, utcnow
from launcher.clients import Clients
from launcher.launch import build_group, group_name
from localdev.aci_emulator.vocabulary import (
    CONTAINER_STATES,
    EVENT_NAMES,
    GROUP_STATES,
    PROVISIONING_STATES,
    undocumented_values,
)
from tests.armspec import SPEC_PATH, ArmSpec, Recorder
from tests.conftest import Pipeline

SPEC = ArmSpec.load()
IDENTITY = (
    "/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/ml-containers"
)
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SUBNET = (
    "/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg/providers/"
    "Microsoft.Network/virtualNetworks/v/subnets/aci"
)
QUICK = {"ACI_IMAGE": "python:3.11-slim", "ACI_COMMAND": '["python", "-c", "print(42)"]'}
# Every configuration the app supports that changes the PUT body (docs/settings.md).
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "sas-from-account-key": QUICK,
    "managed-identity": {**QUICK, "ACI_IDENTITY_ID": IDENTITY, "ACI_IDENTITY_CLIENT_ID": CLIENT_ID},
    "registry-password": {
        **QUICK,
        "ACI_REGISTRY_SERVER": "myregistry.azurecr.io",
        "ACI_REGISTRY_USERNAME": "puller",
        "ACI_REGISTRY_PASSWORD": "registry-secret",
    },
    "registry-identity": {
        **QUICK,
        "ACI_REGISTRY_SERVER": "myregistry.azurecr.io",
        "ACI_IDENTITY_ID": IDENTITY,
        "ACI_IDENTITY_CLIENT_ID": CLIENT_ID,
    },
    "subnet": {**QUICK, "ACI_SUBNET_ID": SUBNET},
    "gpu": {**QUICK, "ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "1", "ACI_CPU": "2"},
    "env-and-secure-env": {**QUICK, "ACI_ENV_MODEL": "small", "ACI_SECURE_ENV_TOKEN": "s3cret"},
    "image-default-command": {"ACI_IMAGE": "busybox:1.36"},
    "log-analytics": {
        **QUICK,
        "ACI_LOG_ANALYTICS_WORKSPACE_ID": "11111111-2222-3333-4444-555555555555",
        "ACI_LOG_ANALYTICS_WORKSPACE_KEY": "workspace-secret-key",
    },
}
LIFECYCLE_OPERATIONS = {
    "ContainerGroups_CreateOrUpdate",
    "ContainerGroups_Get",
    "ContainerGroups_ListByResourceGroup",
    "Containers_ListLogs",
    "ContainerGroups_Update",
    "ContainerGroups_Stop",
    "ContainerGroups_Delete",
}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_clients(pipeline: Pipeline, recorder: Recorder, **overrides: str) -> Clients:
    return pipeline.clients(arm_policies=(recorder,), **overrides)


def launch(clients: Clients, attempt: int = 1) -> str:
    """Create one batch's group exactly as `launch_batch` does; returns its name."""
    now = iso(utcnow()) or ""
    manifest = Manifest(batch_id=new_batch_id(), state=State.CLAIMED, created=now, updated=now)
    name = group_name(clients.settings, manifest.batch_id, attempt)
    clients.hook.create(name, build_group(clients, manifest, attempt))
    return name


def wait_for(hook: AciHook, name: str, state: str, timeout: float = 20) -> Any:
    """Poll the app's own GET until the first container reaches `state`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        group = hook.get(name)
        view = group.containers[0].instance_view if group is not None else None
        current = view.current_state if view is not None else None
        if current is not None and current.state == state:
            return group
        time.sleep(0.1)
    raise TimeoutError(f"{name} never reached {state}")


def wait_provisioned(hook: AciHook, name: str, timeout: float = 60) -> None:
    """Poll the app's own GET until the group is past provisioning (ACI answers updates and
    deletes with ContainerGroupTransitioning until then; the hook's retries are bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        group = hook.get(name)
        if group is not None and group.provisioning_state not in ("Pending", "Creating"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name} still provisioning after {timeout}s")


def assert_conforms(recorder: Recorder) -> None:
    assert recorder.exchanges, "no ARM traffic was recorded"
    problems = recorder.problems(SPEC)
    for x in recorder.exchanges:
        for body in group_bodies(x.response_body):
            problems += [f"{x.method} {x.url}: undocumented {v}" for v in undocumented_values(body)]
    assert problems == []


def group_bodies(body: Any) -> Iterator[dict[str, Any]]:
    """The container group documents in a response (a group, or a list page of them)."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("value"), list):
        yield from (g for g in body["value"] if isinstance(g, dict))
    elif "properties" in body:
        yield body


def observed(recorder: Recorder) -> dict[str, set[str]]:
    """The state and event values seen in the recorded responses, by kind."""
    seen: dict[str, set[str]] = {k: set() for k in ("provisioning", "group", "container", "event")}
    for x in recorder.exchanges:
        for body in group_bodies(x.response_body):
            props = body["properties"]
            seen["provisioning"].add(props.get("provisioningState"))
            if "instanceView" in props:
                seen["group"].add(props["instanceView"].get("state"))
            for c in props.get("containers", []):
                view = c["properties"].get("instanceView") or {}
                if view.get("currentState"):
                    seen["container"].add(view["currentState"]["state"])
                seen["event"] |= {e["name"] for e in view.get("events", [])}
    return seen


@pytest.mark.parametrize("config", sorted(CONFIGURATIONS))
def test_a_whole_group_lifecycle_conforms_to_the_spec(
    pipeline: Pipeline, recorder: Recorder, config: str
) -> None:
    clients = make_clients(pipeline, recorder, **CONFIGURATIONS[config])
    hook = clients.hook
    name = launch(clients)
    assert [g.name for g in hook.list_groups()] == [name]
    wait_for(hook, name, "Terminated")
    assert "42" in hook.logs(name, "worker") or config == "image-default-command"
    hook.mark_kept(name)
    hook.stop(name)
    assert hook.delete(name) is True
    assert hook.delete(name) is False  # 204: already gone
    assert hook.get(name) is None  # 404
    assert hook.logs(name, "worker") == ""  # 404

    assert recorder.operation_ids(SPEC) == LIFECYCLE_OPERATIONS
    put = next(x for x in recorder.exchanges if x.method == "PUT")
    assert put.status == 201 and put.request_body["properties"]["containers"]
    assert {x.status for x in recorder.exchanges if x.method == "DELETE"} == {200, 204}
    assert 404 in {x.status for x in recorder.exchanges if x.method == "GET"}
    assert_conforms(recorder)


def test_error_answers_the_app_meets_conform_to_the_spec(
    pipeline: Pipeline, recorder: Recorder
) -> None:
    emulator = pipeline.emulator
    clients = make_clients(pipeline, recorder, **QUICK)
    hook = clients.hook
    # Throttling and server errors before handling; the app retries them.
    emulator.configure(fault_queue=["429", "503", "500"])
    assert hook.list_groups() == []
    # A PUT applied and then answered with 500: the retried PUT adopts the group (200).
    emulator.configure(fault_queue=[{"fault": "after-commit", "method": "PUT"}])
    name = launch(clients)
    # 400: an image ACI cannot reach; 400: an update that must delete first; 409: a location
    # change; 409: a delete while the group is still provisioning (one raw SDK call: the app's
    # hook would retry ContainerGroupTransitioning for minutes).
    with pytest.raises(AciError, match="InaccessibleImage"):
        launch(make_clients(pipeline, recorder, ACI_IMAGE="inaccessible.example/x:1"))
    wait_provisioned(hook, name)  # a loaded machine can outlast the hook's retries
    with pytest.raises(AciError, match="InvalidContainerGroupUpdate"):
        hook.create(name, _changed(clients, name, cpu=2.0))
    other = make_clients(pipeline, recorder, ACI_LOCATION="elsewhere", **QUICK)
    with pytest.raises(AciError, match="InvalidResourceLocation"):
        other.hook.create(name, _changed(other, name))
    emulator.configure(provision_seconds=30)
    slow = launch(clients, attempt=2)
    with pytest.raises(HttpResponseError) as exc:
        clients.aci.container_groups.begin_delete(pipeline.resource_group, slow, polling=False)
    assert exc.value.status_code == 409
    # 404s: a missing group's get, logs and stop; then a tag update of a live one.
    assert hook.get("missing") is None and hook.logs("missing", "worker") == ""
    hook.stop("missing")
    hook.mark_kept(name)

    statuses = {x.status for x in recorder.exchanges}
    assert {200, 201, 400, 404, 409, 429, 500, 503} <= statuses
    assert_conforms(recorder)


def _changed(clients: Clients, name: str, cpu: float | None = None) -> Any:
    """The spec of an existing group as another launcher (other settings) would send it."""
    group = clients.hook.get(name)
    assert group is not None
    body = build_group(clients, _manifest_of(group), int(group.tags["ml-attempt"]))
    if cpu is not None:
        body.containers[0].resources.requests.cpu = cpu
    return body


def _manifest_of(group: Any) -> Manifest:
    now = iso(utcnow()) or ""
    return Manifest(batch_id=group.tags["ml-batch"], state=State.CLAIMED, created=now, updated=now)


def test_the_emulator_emits_only_documented_states_and_events(
    pipeline: Pipeline, recorder: Recorder
) -> None:
    """Drive every state the app can meet: provisioning, running, success, failure, a failed
    image pull and a stop; each value seen must be documented (and the run must see them)."""
    emulator = pipeline.emulator
    clients = make_clients(pipeline, recorder, **QUICK)
    hook = clients.hook
    emulator.configure(provision_seconds=0.6)
    ok = launch(clients)
    hook.get(ok)  # Pending
    wait_for(hook, ok, "Terminated")
    # ACI retries a failing pull until its provisioning timeout (30 minutes): shortened here.
    emulator.configure(provision_seconds=0, provision_timeout_seconds=2)
    failing = make_clients(
        pipeline, recorder, ACI_IMAGE="python:3.11-slim", ACI_COMMAND='["python", "-c", "exit(3)"]'
    )
    bad = launch(failing)
    sleeper = make_clients(
        pipeline,
        recorder,
        ACI_IMAGE="python:3.11-slim",
        ACI_COMMAND='["python", "-c", "import time; time.sleep(60)"]',
    )
    stopped = launch(sleeper)
    wait_for(hook, stopped, "Running")
    hook.stop(stopped)
    pull = launch(make_clients(pipeline, recorder, ACI_IMAGE="registry.invalid/x:1"))
    wait_for(hook, bad, "Terminated")
    deadline = time.monotonic() + 20
    while (g := hook.get(pull)) is not None and g.provisioning_state != "Failed":
        assert time.monotonic() < deadline, "the pull never failed"
        time.sleep(0.1)
    hook.get(stopped)

    assert_conforms(recorder)
    seen = observed(recorder)
    assert {"Pending", "Succeeded", "Failed"} <= seen["provisioning"] <= PROVISIONING_STATES
    assert {"Pending", "Running", "Succeeded", "Failed", "Stopped"} <= seen["group"] <= GROUP_STATES
    assert {"Running", "Terminated", "Waiting"} <= seen["container"] <= CONTAINER_STATES
    assert {"Pulling", "Pulled", "Started", "Failed", "BackOff"} <= seen["event"] <= EVENT_NAMES


GROUP_URL = (
    "https://127.0.0.1/subscriptions/s/resourceGroups/rg/providers/"
    "Microsoft.ContainerInstance/containerGroups/g?api-version=2023-05-01"
)


def minimal_group() -> dict[str, Any]:
    requests = {"cpu": 1, "memoryInGB": 1.5}
    container = {"name": "w", "properties": {"image": "i", "resources": {"requests": requests}}}
    return {"location": "l", "properties": {"osType": "Linux", "containers": [container]}}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda g: g.update(etag="x"), "body.etag: property not defined by the spec"),
        (lambda g: g.update(id="x"), "body.id: read-only property sent in a request"),
        (
            lambda g: g["properties"].update(instanceView={}),
            "body.properties.instanceView: read-only property sent in a request",
        ),
        (lambda g: g.update(tags={"a": 1}), "body.tags.a: expected a string, got 1"),
        (lambda g: g.update(location=None), "body.location: null is not allowed"),
        (
            lambda g: g["properties"].update(osType="linux"),
            "body.properties.osType: 'linux' is not one of ['Windows', 'Linux']",
        ),
        (
            lambda g: g["properties"]["containers"][0]["properties"].pop("image"),
            "body.properties.containers[0].properties: required property 'image' is missing",
        ),
        (
            lambda g: g["properties"]["containers"][0]["properties"].update(gpu={}),
            "body.properties.containers[0].properties.gpu: property not defined by the spec",
        ),
    ],
)
def test_the_validator_rejects_what_the_spec_does_not_allow(change: Any, problem: str) -> None:
    group = minimal_group()
    assert SPEC.check_request("PUT", GROUP_URL, group) == []
    change(group)
    assert SPEC.check_request("PUT", GROUP_URL, group) == [
        f"ContainerGroups_CreateOrUpdate request: {problem}"
    ]


def test_the_validator_checks_statuses_query_and_empty_bodies() -> None:
    stop = GROUP_URL.replace("/g?", "/g/stop?")
    assert SPEC.check_response("POST", stop, 204, None) == []
    assert SPEC.check_response("POST", stop, 200, {}) == [
        "ContainerGroups_Stop response: status 200 is not documented"
    ]
    assert SPEC.check_response("POST", stop, 204, {}) == [
        "ContainerGroups_Stop response 204: the spec documents no body"
    ]
    assert SPEC.check_response("GET", GROUP_URL, 404, {"error": {"code": "c", "x": 1}}) == [
        "ContainerGroups_Get response 404: body.error.x: property not defined by the spec"
    ]
    assert SPEC.check_request("GET", GROUP_URL + "&debug=1", None) == [
        "ContainerGroups_Get request: query parameter 'debug' is not defined"
    ]
    with pytest.raises(LookupError):
        SPEC.operation("GET", GROUP_URL.replace("/g?", "/g/operations/x?"))


def test_the_vendored_spec_is_the_upstream_file() -> None:
    """PROVENANCE.md names the upstream commit and this digest: the file is never hand-edited."""
    digest = hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()
    assert digest in (SPEC_PATH.parent / "PROVENANCE.md").read_text()
    assert SPEC.api_version == "2023-05-01"
