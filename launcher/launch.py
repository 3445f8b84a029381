"""The launch step: one container group per claimed batch, exactly once.

Exactly once rests on three things: the group name is a pure function of (batch id, attempt),
so a retried or recovered launch finds its own group and adopts it instead of creating another;
only the holder of the poll lease launches; and the manifest moves claimed -> launched with an
etag-conditional write after the PUT was accepted. A launcher that lost its lease while its PUT
was in flight cannot restart a group its successor created: both build the same spec from the
same manifest version (see `build_group`). Launches never wait on the SDK's LRO poller.

How the container reaches storage (never with the account key):
- with ACI_IDENTITY_ID: its user-assigned managed identity (AZURE_CLIENT_ID is set for it);
- otherwise a SAS passed as an ACI *secure* value, for the watched container only, with
  read/create/write and no list/delete, expiring JOB_TIMEOUT_MINUTES + 30 minutes after launch.
  Flat-namespace storage cannot scope a SAS to a folder, so the permission set and expiry are the
  scope; a key-based account signs a service SAS, an identity-based one a user delegation SAS.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.mgmt.containerinstance.models import (
    Container,
    ContainerGroup,
    ContainerGroupDiagnostics,
    ContainerGroupIdentity,
    ContainerGroupSubnetId,
    EnvironmentVariable,
    GpuResource,
    ImageRegistryCredential,
    LogAnalytics,
    OperatingSystemTypes,
    ResourceRequests,
    ResourceRequirements,
    UserAssignedIdentities,
)
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from config import Settings
from launcher import telemetry
from launcher.aci import (
    LEASE_LOST,
    TAG_ATTEMPT,
    TAG_BATCH,
    TAG_CREATED,
    TAG_MANAGED_BY,
    TAG_MANAGED_BY_VALUE,
    TAG_PROFILE,
    TAG_SOURCE,
    AciError,
    source_tag,
)
from launcher.batch import (
    MANIFEST_NAME,
    Attempt,
    Manifest,
    ManifestConflict,
    State,
    iso,
    parse_iso,
)
from launcher.blobs import LeaseLock
from launcher.clients import Clients

logger = logging.getLogger(__name__)

CONTAINER_NAME = "worker"
SPEC_FRESH_SECONDS = 120  # a manifest version older than this is rewritten before a launch
_GROUP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]$")


class LaunchError(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def group_name(settings: Settings, batch_id: str, attempt: int) -> str:
    """Deterministic ARM-valid name: `<GROUP_PREFIX><batch id>-a<attempt>`."""
    name = f"{settings.group_prefix}{batch_id}-a{attempt}"
    if len(name) > 63 or not _GROUP_NAME_RE.match(name):
        raise LaunchError("InvalidContainerGroupName", f"derived group name {name!r} is invalid")
    return name


# A SAS starts this long before its issue time: `issued` is storage's time (see launcher.clock),
# and the servers that check it may disagree with each other by a little (Azure's own advice
# for SAS start times is 15 minutes).
SAS_START_SKEW = timedelta(minutes=15)


def _storage_access(
    clients: Clients, issued: datetime, expiry_minutes: float, settings: Settings
) -> tuple[list[EnvironmentVariable], list[EnvironmentVariable]]:
    """Environment (plain, secure) that lets the container reach storage (with the identity of
    the batch's profile, in `settings`); a SAS is valid from SAS_START_SKEW before `issued`
    until `expiry_minutes` after it."""
    url = clients.blob_service.url.rstrip("/")
    plain = [EnvironmentVariable(name="ML_STORAGE_ACCOUNT_URL", value=url)]
    if settings.identity_id:
        plain.append(EnvironmentVariable(name="AZURE_CLIENT_ID", value=settings.identity_client_id))
        return plain, []
    start, expiry = issued - SAS_START_SKEW, issued + timedelta(minutes=expiry_minutes)
    permission = ContainerSasPermissions(read=True, create=True, write=True)
    cred = clients.blob_service.credential
    account_key = getattr(cred, "account_key", None)
    signing: dict[str, Any]
    if account_key:
        signing = {"account_key": account_key}
    elif clients.credential is not None:
        signing = {
            "user_delegation_key": clients.blob_service.get_user_delegation_key(start, expiry)
        }
    else:
        raise LaunchError(
            "NoStorageAccessForContainer",
            "storage is reached with a SAS connection string: set ACI_IDENTITY_ID so containers "
            "use their own identity, or use an account key / managed identity for the app",
        )
    sas = generate_container_sas(
        clients.blob_service.account_name or settings.account_name,
        settings.watch_container,
        permission=permission,
        start=start,
        expiry=expiry,
        **signing,
    )
    return plain, [EnvironmentVariable(name="ML_STORAGE_SAS", secure_value=sas)]


def build_group(clients: Clients, manifest: Manifest, attempt: int) -> ContainerGroup:
    """The full container group spec for one attempt of one batch.

    Everything derives from the settings and from this version of the manifest (its `updated`
    time, storage's clock, dates the SAS and the creation tag), so two launchers that build the
    spec of one attempt from the same manifest send byte-identical PUTs: ACI leaves a live group
    alone when a PUT changes nothing. (A user delegation SAS, for identity-based storage access,
    is only as repeatable as its key.) The job spec is the batch's profile's (profiles.py), and
    its parameters, checked at claim time, are plain ML_PARAM_* variables: they can never
    change the image, command, identity, registry or a secure value."""
    try:
        s = clients.settings.for_profile(manifest.profile)
    except KeyError:
        raise LaunchError(
            "UnknownProfile", f"job profile {manifest.profile!r} is not in JOB_PROFILES"
        ) from None
    store = clients.store
    folder = store.folder(manifest.batch_id)
    env = [
        EnvironmentVariable(name="ML_BATCH_ID", value=manifest.batch_id),
        EnvironmentVariable(name="ML_ATTEMPT", value=str(attempt)),
        EnvironmentVariable(name="ML_CONTAINER", value=s.watch_container),
        EnvironmentVariable(name="ML_BATCH_PREFIX", value=folder),
        EnvironmentVariable(name="ML_MANIFEST", value=folder + MANIFEST_NAME),
        EnvironmentVariable(
            name="ML_OUTPUT_PREFIX", value=f"{s.output_prefix}{manifest.batch_id}/"
        ),
        EnvironmentVariable(name="ML_PROFILE", value=manifest.profile),
    ]
    env += [
        EnvironmentVariable(name=k, value=v) for k, v in sorted((manifest.params or {}).items())
    ]
    issued = parse_iso(manifest.updated) or clients.clock.now()
    storage_plain, storage_secure = _storage_access(clients, issued, s.job_timeout_minutes + 30, s)
    env += storage_plain
    env += [EnvironmentVariable(name=k, value=v) for k, v in s.env]
    env += storage_secure
    env += [EnvironmentVariable(name=k, secure_value=v) for k, v in s.secure_env]

    requests = ResourceRequests(memory_in_gb=s.memory_gb, cpu=s.cpu)
    if s.gpu_sku and s.gpu_count:
        requests.gpu = GpuResource(count=s.gpu_count, sku=s.gpu_sku)
    container = Container(
        name=CONTAINER_NAME,
        image=s.image,
        resources=ResourceRequirements(requests=requests),
        command=list(s.command) if s.command else None,
        environment_variables=env,
    )
    group = ContainerGroup(
        location=s.location,
        containers=[container],
        os_type=OperatingSystemTypes.LINUX,
        restart_policy="Never",
        tags={
            TAG_MANAGED_BY: TAG_MANAGED_BY_VALUE,
            TAG_SOURCE: source_tag(s),
            TAG_BATCH: manifest.batch_id,
            TAG_ATTEMPT: str(attempt),
            TAG_CREATED: str(int(issued.timestamp())),
            TAG_PROFILE: manifest.profile,
        },
    )
    if s.identity_id:
        group.identity = ContainerGroupIdentity(
            type="UserAssigned", user_assigned_identities={s.identity_id: UserAssignedIdentities()}
        )
    if s.registry_server:
        if s.registry_username:
            cred = ImageRegistryCredential(
                server=s.registry_server, username=s.registry_username, password=s.registry_password
            )
        else:
            cred = ImageRegistryCredential(server=s.registry_server, identity=s.identity_id)
        group.image_registry_credentials = [cred]
    if s.subnet_id:
        group.subnet_ids = [ContainerGroupSubnetId(id=s.subnet_id)]
    if s.log_analytics_workspace_id and s.log_analytics_workspace_key:
        # ACI ships every line of the container's log to the workspace: the complete log,
        # where the one ACI keeps after the container stopped is its last 16 KB / 1,000 lines.
        group.diagnostics = ContainerGroupDiagnostics(
            log_analytics=LogAnalytics(
                workspace_id=s.log_analytics_workspace_id,
                workspace_key=s.log_analytics_workspace_key,
                log_type="ContainerInstanceLogs",
            )
        )
    return group


@dataclass
class LaunchResult:
    batch_id: str
    group: str
    launched: bool
    adopted: bool = False
    error: dict[str, str] | None = None
    etag: str | None = None


@telemetry.traced_launch
def launch_batch(
    clients: Clients,
    manifest: Manifest,
    etag: str,
    existing: set[str],
    *,
    confirm: bool = False,
    lease: LeaseLock | None = None,
) -> LaunchResult:
    """Launch the next attempt of a `claimed` batch and record it on the manifest.

    `existing` holds the names of our groups from this tick's list call; a name found there is
    adopted. `confirm=True` (used for batches recovered from an earlier tick, whose PUT may have
    landed after the list was taken) double-checks with a GET before creating.
    A permanent error is recorded on the manifest (`last_error`) and the batch stays `claimed`,
    so a later tick retries it; nothing is lost.

    `lease` (the poll lease) guards the PUT: it is sent, and retried, only while the lease is
    ours for at least half its duration more (`LeaseLock.holds_for`), so a launcher that stalled
    does not deploy after a successor may have acted. A PUT already in flight can still land
    late; the container's own check (docs/container.md) covers that.
    """
    assert manifest.state is State.CLAIMED, manifest.state
    attempt = manifest.attempt + 1
    now = clients.clock.now()
    name = ""
    adopted = False
    try:
        name = group_name(clients.settings, manifest.batch_id, attempt)
        adopted = name in existing or (confirm and clients.hook.get(name) is not None)
        if adopted:
            logger.info("batch %s: adopting existing group %s", manifest.batch_id, name)
        else:
            issued = parse_iso(manifest.updated)
            if issued is None or now - issued > timedelta(seconds=SPEC_FRESH_SECONDS):
                # The spec (SAS validity) is dated from this manifest version: refresh it first
                # when the batch waited long in `claimed`, e.g. for room to launch.
                etag = clients.store.update(manifest, etag)
            guard = None
            if lease is not None:
                margin = clients.settings.lease_seconds / 2
                guard = lambda: lease.holds_for(margin)  # noqa: E731
            clients.hook.create(name, build_group(clients, manifest, attempt), guard)
            logger.info("batch %s: created group %s (attempt %s)", manifest.batch_id, name, attempt)
    except (AciError, LaunchError) as exc:
        if exc.code == LEASE_LOST:
            logger.warning(
                "batch %s: poll lease lost: group %s not created", manifest.batch_id, name
            )
            return LaunchResult(manifest.batch_id, name, False, etag=etag)
        logger.error("batch %s: launch of attempt %s failed: %s", manifest.batch_id, attempt, exc)
        manifest.last_error = {"code": exc.code, "message": exc.message, "at": iso(now) or ""}
        try:
            new_etag = clients.store.update(manifest, etag)
        except ManifestConflict:
            new_etag = None
        return LaunchResult(
            manifest.batch_id, name, False, error=dict(manifest.last_error), etag=new_etag
        )

    manifest.state = State.LAUNCHED
    manifest.attempt = attempt
    manifest.group = name
    manifest.launched_at = iso(now)
    manifest.last_error = None
    manifest.attempts.append(Attempt(attempt=attempt, group=name, launched_at=iso(now)))
    new_etag = clients.store.update(manifest, etag)
    return LaunchResult(manifest.batch_id, name, True, adopted=adopted, etag=new_etag)
