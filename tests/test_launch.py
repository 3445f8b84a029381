"""The launch step against the ACI emulator with the real SDK: spec, exactly once, faults, caps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from azure.storage.blob import BlobLeaseClient

from launcher.aci import AciError
from launcher.batch import Manifest, State
from launcher.launch import build_group
from launcher.poll import poll, recover
from localdev.proxy import Proxy, arm_kind
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import drop

IDENTITY = (
    "/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/ml-containers"
)
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SUBNET = (
    "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/aci"
)
PRINT_ENV = (
    '["python", "-c", "import os; print(sorted((k, len(v)) for k, v in os.environ.items() '
    "if k.startswith(('ML_', 'MODEL', 'TOKEN', 'AZURE_CLIENT_ID'))))\"]"
)


def groups_by_batch(p: Pipeline) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for g in p.groups():
        out.setdefault((g.tags or {}).get("ml-batch", "?"), []).append(str(g.name))
    return out


def manifests(p: Pipeline) -> dict[str, dict]:
    out = {}
    for blob in p.container.list_blobs(name_starts_with="processing/"):
        if blob.name.endswith("/_batch.json"):
            m = json.loads(p.container.download_blob(blob.name).readall())
            out[m["batch_id"]] = m
    return out


def wait_terminated(p: Pipeline, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = p.get_group(name).containers[0].instance_view
        if view and view.current_state and view.current_state.state == "Terminated":
            return
        time.sleep(0.2)
    raise TimeoutError(name)


def test_a_batch_becomes_exactly_one_group_with_the_right_spec(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt", "incoming/b.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11-slim",
        ACI_COMMAND=PRINT_ENV,
        ACI_CPU="2",
        ACI_MEMORY_GB="3.5",
        ACI_ENV_MODEL="small",
        ACI_SECURE_ENV_TOKEN="top-secret-value",
        ACI_IDENTITY_ID=IDENTITY,
        ACI_IDENTITY_CLIENT_ID=CLIENT_ID,
        ACI_REGISTRY_SERVER="myregistry.azurecr.io",
        ACI_SUBNET_ID=SUBNET,
    )
    report = poll(clients)
    assert [x["launched"] for x in report.launched] == [True]
    [batch] = manifests(pipeline).values()
    assert batch["state"] == "launched" and batch["attempt"] == 1
    assert groups_by_batch(pipeline) == {batch["batch_id"]: [batch["group"]]}
    group = pipeline.get_group(batch["group"])
    assert group.name == f"ml-{batch['batch_id']}-a1"
    assert group.tags["managed-by"] == "model-launcher" and group.tags["ml-attempt"] == "1"
    assert group.restart_policy == "Never" and group.os_type == "Linux"
    assert list(group.identity.user_assigned_identities) == [IDENTITY]
    assert [s.id for s in group.subnet_ids] == [SUBNET]
    assert group.image_registry_credentials[0].server == "myregistry.azurecr.io"
    container = group.containers[0]
    res = container.resources.requests
    assert (res.cpu, res.memory_in_gb, res.gpu) == (2.0, 3.5, None)
    env = {e.name: e for e in container.environment_variables}
    assert env["MODEL"].value == "small"
    assert env["ML_BATCH_ID"].value == batch["batch_id"]
    assert env["ML_MANIFEST"].value == f"processing/{batch['batch_id']}/_batch.json"
    assert env["ML_OUTPUT_PREFIX"].value == f"output/{batch['batch_id']}/"
    assert env["AZURE_CLIENT_ID"].value == CLIENT_ID
    assert "ML_STORAGE_SAS" not in env  # identity, no SAS
    assert env["TOKEN"].value is None and env["TOKEN"].secure_value is None  # never echoed
    # The process saw its batch and the secure value.
    wait_terminated(pipeline, batch["group"])
    logs = (
        pipeline.arm()
        .containers.list_logs(pipeline.resource_group, batch["group"], "worker")
        .content
    )
    assert f"('ML_BATCH_ID', {len(batch['batch_id'])})" in logs
    assert "('TOKEN', 16)" in logs


def test_a_gpu_group_is_launched_but_not_in_a_virtual_network(pipeline: Pipeline) -> None:
    """ACI has no GPU groups in a virtual network ("Resource availability & quota limits for
    ACI"): config.py refuses that combination at start (the emulator would refuse the PUT,
    tests/test_aci_emulator_strict.py); without the subnet the GPU group launches."""
    from config import ConfigError

    drop(pipeline.container, ["incoming/a.txt"])
    gpu = {"ACI_IMAGE": "python:3.11", "ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "1"}
    with pytest.raises(ConfigError, match="GPU resources in a virtual network"):
        pipeline.settings(ACI_SUBNET_ID=SUBNET, **gpu)
    assert pipeline.groups() == []
    poll(pipeline.clients(**gpu))
    [m] = manifests(pipeline).values()
    assert m["state"] == "launched"
    res = pipeline.get_group(m["group"]).containers[0].resources.requests
    assert (res.gpu.sku, res.gpu.count) == ("V100", 1)


def test_without_identity_the_container_gets_a_scoped_sas_as_a_secure_value(
    pipeline: Pipeline,
) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(ACI_IMAGE="python:3.11-slim", ACI_COMMAND=PRINT_ENV)
    poll(clients)
    [batch] = manifests(pipeline).values()
    env = {
        e.name: e for e in pipeline.get_group(batch["group"]).containers[0].environment_variables
    }
    assert env["ML_STORAGE_SAS"].value is None  # secure: not echoed
    # The SAS the launcher built: read/create/write only, never the account key.
    from launcher.batch import Manifest
    from launcher.launch import build_group

    spec = build_group(clients, Manifest.from_bytes(json.dumps(batch).encode()), 1)
    sas = next(
        e.secure_value
        for e in spec.containers[0].environment_variables
        if e.name == "ML_STORAGE_SAS"
    )
    assert "sp=rcw" in sas and "sig=" in sas
    assert clients.blob_service.credential.account_key not in json.dumps(spec.serialize())


def test_max_active_groups_is_respected(pipeline: Pipeline) -> None:
    drop(pipeline.container, [f"incoming/f{i}.txt" for i in range(5)])
    clients = pipeline.clients(
        BATCH_MAX_FILES="1",
        MAX_ACTIVE_GROUPS="2",
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "pass"]',
    )
    report = poll(clients)
    assert report.room == 2 and len(report.claimed) == 2
    assert len(pipeline.groups()) == 2
    assert len(list(pipeline.container.list_blobs(name_starts_with="incoming/"))) == 3
    report = poll(clients)  # still two groups (finished ones hold quota until deleted)
    assert report.room == 0 and report.claimed == []
    assert len(pipeline.groups()) == 2


def test_quota_error_is_recorded_and_retried(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt", "incoming/b.txt"])
    pipeline.emulator.configure(quota=0)
    clients = pipeline.clients(
        BATCH_MAX_FILES="1", ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]'
    )
    report = poll(clients)
    assert len(report.claimed) == 2 and not any(x["launched"] for x in report.launched)
    for m in manifests(pipeline).values():
        assert m["state"] == "claimed"
        assert m["last_error"]["code"] == "ContainerGroupQuotaReached"
    assert pipeline.groups() == []
    pipeline.emulator.configure(quota=None)
    report = recover(clients)  # what the janitor hands back, or the next busy tick does
    assert sum(x["launched"] for x in report.launched) == 2
    assert {m["state"] for m in manifests(pipeline).values()} == {"launched"}
    assert all(len(v) == 1 for v in groups_by_batch(pipeline).values())


def test_invalid_image_and_invalid_name_are_permanent_errors(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(ACI_IMAGE="inaccessible.example/nope:1")
    poll(clients)
    [m] = manifests(pipeline).values()
    assert m["state"] == "claimed" and m["last_error"]["code"] == "InaccessibleImage"
    spec = build_group(clients, Manifest.from_bytes(json.dumps(m).encode()), 1)
    with pytest.raises(AciError) as info:
        clients.hook.create("Not_A_Valid--Name", spec)
    assert info.value.status == 400 and "name" in (info.value.code + info.value.message).lower()


def test_throttling_and_server_errors_still_launch_each_batch_exactly_once(
    pipeline: Pipeline,
) -> None:
    drop(pipeline.container, [f"incoming/f{i}.txt" for i in range(8)])
    pipeline.emulator.configure(
        fault_429_rate=0.1, fault_5xx_rate=0.1, fault_after_commit_rate=0.1, retry_after=0.1, seed=7
    )
    clients = pipeline.clients(
        BATCH_MAX_FILES="1", ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]'
    )
    for _ in range(5):
        poll(clients)
        recover(clients)
        if all(m["state"] == "launched" for m in manifests(pipeline).values()) and not list(
            pipeline.container.list_blobs(name_starts_with="incoming/")
        ):
            break
    pipeline.emulator.configure(fault_429_rate=0, fault_5xx_rate=0, fault_after_commit_rate=0)
    ms = manifests(pipeline)
    assert len(ms) == 8 and {m["state"] for m in ms.values()} == {"launched"}
    by_batch = groups_by_batch(pipeline)
    assert sorted(by_batch) == sorted(ms) and all(len(v) == 1 for v in by_batch.values())
    stats = pipeline.emulator.stats()
    assert sum(stats.get("faults", {}).values()) > 0, stats


def run_poll_killed_at(pipeline: Pipeline, kind: str, when: str) -> int:
    """Run `python -m launcher poll` in a real subprocess whose ARM traffic goes through a
    proxy that SIGKILLs it at the first `kind` request (before it is sent or after ARM applied it)."""
    holder: dict[str, subprocess.Popen[bytes]] = {}
    with Proxy(
        pipeline.emulator.url, tls=True, upstream_ca=str(pipeline.emulator.ca), classify=arm_kind
    ) as proxy:
        proxy.add_trigger(kind, 1, lambda: os.kill(holder["p"].pid, signal.SIGKILL), when=when)
        env = pipeline.subprocess_env(
            ARM_ENDPOINT=proxy.url,
            ARM_CA_BUNDLE=str(proxy.ca_path),
            ACI_IMAGE="python:3.11",
            ACI_COMMAND='["python", "-c", "pass"]',
        )
        holder["p"] = subprocess.Popen(
            [sys.executable, "-m", "launcher", "poll"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return holder["p"].wait(60)


def test_crash_between_claim_and_launch_leads_to_one_group(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    assert run_poll_killed_at(pipeline, "arm_put", "before") == -signal.SIGKILL
    [m] = manifests(pipeline).values()
    assert m["state"] == "claimed" and pipeline.groups() == []
    _break_lease(pipeline)
    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    recover(clients)
    [m] = manifests(pipeline).values()
    assert m["state"] == State.LAUNCHED.value
    assert groups_by_batch(pipeline) == {m["batch_id"]: [m["group"]]}


def test_crash_between_put_and_manifest_update_leads_to_one_group(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    assert run_poll_killed_at(pipeline, "arm_put", "after") == -signal.SIGKILL
    [m] = manifests(pipeline).values()
    assert m["state"] == "claimed"
    assert len(pipeline.groups()) == 1  # ARM applied the PUT before the crash
    _break_lease(pipeline)
    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    report = recover(clients)
    assert [x["adopted"] for x in report.launched] == [True]
    [m] = manifests(pipeline).values()
    assert m["state"] == "launched"
    assert groups_by_batch(pipeline) == {m["batch_id"]: [m["group"]]}


def _break_lease(p: Pipeline) -> None:
    """A crashed tick's lease expires after LEASE_SECONDS; break it to skip the wait."""
    BlobLeaseClient(p.container.get_blob_client("locks/poll")).break_lease(0)


def _sas_of(spec: object) -> str:
    env = spec.containers[0].environment_variables  # type: ignore[attr-defined]
    return next(e.secure_value for e in env if e.name == "ML_STORAGE_SAS")


def test_the_spec_of_an_attempt_does_not_depend_on_when_it_is_built(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher that lost the poll lease while its PUT was in flight, and the new holder that
    launched the same attempt meanwhile, send byte-identical PUTs, tags included (ACI restarts
    a running group on a PUT that changes any property): no clock goes into the spec."""
    import time

    from launcher.batch import iso, new_batch_id, utcnow

    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    now = iso(utcnow()) or ""
    m = Manifest(batch_id=new_batch_id(), state=State.CLAIMED, created=now, updated=now)
    first = build_group(clients, m, 1)
    clients.clock.observe(time.time() + 7 * 60, time.time())  # seven minutes later
    second = build_group(clients, m, 1)
    assert first.serialize() == second.serialize()
    assert _sas_of(first) == _sas_of(second)


def test_a_batch_that_waited_in_claimed_is_refreshed_before_its_launch(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SAS is dated from the manifest version; one that waited (e.g. for room) is rewritten
    first, so the container never gets a SAS that expires early."""
    from datetime import timedelta

    from launcher.batch import ManifestStore, iso, new_batch_id, parse_iso, utcnow
    from launcher.launch import launch_batch

    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    old = iso(utcnow() - timedelta(hours=3)) or ""
    m = Manifest(batch_id=new_batch_id(), state=State.CLAIMED, created=old, updated=old)
    store: ManifestStore = clients.store
    etag = store.create(m)
    m.updated = old  # as read back from a batch that waited three hours
    sent = []
    monkeypatch.setattr(clients.hook, "create", lambda name, group, guard=None: sent.append(group))
    result = launch_batch(clients, m, etag, set())
    assert result.launched and len(sent) == 1
    start = parse_iso(
        dict(p.split("=", 1) for p in _sas_of(sent[0]).split("&"))["st"].replace("%3A", ":")
    )
    assert start is not None and start > utcnow() - timedelta(minutes=20)  # 15 min of skew room


def test_no_put_leaves_once_the_poll_lease_may_be_someone_elses(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher that stalled past its lease, which a successor then took, sends no PUT: the
    batch stays `claimed` for the new holder, with no error recorded."""
    from azure.storage.blob import BlobLeaseClient

    from launcher.batch import ManifestStore, iso, new_batch_id, utcnow
    from launcher.blobs import LeaseLock
    from launcher.launch import launch_batch

    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    now = iso(utcnow()) or ""
    m = Manifest(batch_id=new_batch_id(), state=State.CLAIMED, created=now, updated=now)
    store: ManifestStore = clients.store
    etag = store.create(m)
    lease = LeaseLock(clients.container, clients.settings.poll_lock_blob, 15)
    assert lease.try_acquire()
    try:
        lock = clients.container.get_blob_client(clients.settings.poll_lock_blob)
        BlobLeaseClient(lock).break_lease(0)
        BlobLeaseClient(lock).acquire(15)  # the successor
        # The stall: by the launcher's own clock, its last renewal is a lease duration ago.
        real = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: real() + 15)
        result = launch_batch(clients, m, etag, set(), lease=lease)
        monkeypatch.setattr(time, "monotonic", real)
    finally:
        lease.release()
    assert not result.launched and result.error is None
    assert pipeline.groups() == []
    found = store.read(m.batch_id)
    assert found is not None and found[0].state is State.CLAIMED and found[0].last_error is None


def _tick_refused(pipeline: Pipeline, code: str) -> None:
    """The tick fails at its first ARM call with an AciError naming Azure's code, before it
    claims anything: the files stay in incoming/ for the tick after the fix."""
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    with pytest.raises(AciError) as info:
        poll(clients)
    assert info.value.code == code
    names = [b.name for b in pipeline.container.list_blobs()]
    assert [n for n in names if n != "locks/poll"] == ["incoming/a.txt"]


def test_a_missing_role_assignment_fails_the_tick_before_anything_is_claimed(
    pipeline: Pipeline,
) -> None:
    """Azure answers 403 `AuthorizationFailed` when the app's identity has no role there."""
    pipeline.emulator.configure(authorization_failed=True)
    _tick_refused(pipeline, "AuthorizationFailed")


def test_a_missing_resource_group_fails_the_tick_before_anything_is_claimed(
    pipeline: Pipeline,
) -> None:
    """Azure answers 404 `ResourceGroupNotFound` for a resource group that does not exist."""
    pipeline.emulator.configure(resource_groups=[])
    _tick_refused(pipeline, "ResourceGroupNotFound")


def test_a_spent_create_budget_is_recorded_without_pointless_retries(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spent create budget (429, Retry-After of minutes) is recorded on the batch with one
    PUT; the next tick tries again."""
    drop(pipeline.container, ["incoming/a.txt"])
    pipeline.emulator.configure(creates_per_5_minutes=0)
    pipeline.emulator.reset_stats()
    poll(pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]'))
    [m] = manifests(pipeline).values()
    assert m["state"] == "claimed" and m["last_error"]["code"] == "ResourceRequestsThrottled"
    assert pipeline.emulator.stats()["requests"]["PUT container_group"] == 1


def test_log_analytics_gets_every_line_and_its_key_is_never_echoed(pipeline: Pipeline) -> None:
    """With a workspace configured, the spec carries ACI's Log Analytics diagnostics (the
    complete log, where ACI keeps only a stopped container's last 16 KB); the key is a secret."""
    settings = {
        "ACI_IMAGE": "python:3.11",
        "ACI_COMMAND": '["python", "-c", "pass"]',
        "ACI_LOG_ANALYTICS_WORKSPACE_ID": "11111111-2222-3333-4444-555555555555",
        "ACI_LOG_ANALYTICS_WORKSPACE_KEY": "workspace-secret-key",
    }
    clients = pipeline.clients(**settings)
    assert "workspace-secret-key" not in repr(clients.settings)
    drop(pipeline.container, ["incoming/a.txt"])
    poll(clients)
    [m] = manifests(pipeline).values()
    spec = build_group(clients, Manifest.from_bytes(json.dumps(m).encode()), m["attempt"])
    la = spec.diagnostics.log_analytics
    assert (la.workspace_id, la.workspace_key) == (
        "11111111-2222-3333-4444-555555555555",
        "workspace-secret-key",
    )
    echoed = pipeline.get_group(m["group"])
    assert "workspace-secret-key" not in json.dumps(echoed.as_dict())
