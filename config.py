"""Every app setting, read once into a frozen `Settings` object.

The names below are the user-facing contract: docs/settings.md documents each one (tests/test_docs.py checks it) and
infra/main.bicep sets them. `load_settings()` collects *all* problems and raises one
`ConfigError` naming every bad or missing setting, so an operator fixes a deployment in one pass
and nothing touches storage or ARM with a half-valid configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

import profiles
from settings_reader import (
    _parse_command,
    _parse_connection_string,
    _Reader,
)

# Setting names (one home for every string the operator types).
STORAGE_CONNECTION_STRING = "STORAGE_CONNECTION_STRING"
STORAGE_ACCOUNT_URL = "STORAGE_ACCOUNT_URL"
WATCH_CONTAINER = "WATCH_CONTAINER"
INCOMING_PREFIX = "INCOMING_PREFIX"
PROCESSING_PREFIX = "PROCESSING_PREFIX"
DONE_PREFIX = "DONE_PREFIX"
FAILED_PREFIX = "FAILED_PREFIX"
OUTPUT_PREFIX = "OUTPUT_PREFIX"
LOCK_PREFIX = "LOCK_PREFIX"
INDEX_PREFIX = "INDEX_PREFIX"
POLL_SCHEDULE = "POLL_SCHEDULE"
JANITOR_SCHEDULE = "JANITOR_SCHEDULE"
BATCH_MODE = "BATCH_MODE"
BATCH_READY_MARKER = "BATCH_READY_MARKER"
BATCH_SETTLE_SECONDS = "BATCH_SETTLE_SECONDS"
BATCH_MAX_FILES = "BATCH_MAX_FILES"
BATCH_MAX_BYTES = "BATCH_MAX_BYTES"
MAX_BATCHES_PER_TICK = "MAX_BATCHES_PER_TICK"
MAX_ACTIVE_GROUPS = "MAX_ACTIVE_GROUPS"
MAX_CREATES_PER_5_MIN = "MAX_CREATES_PER_5_MIN"
LEASE_SECONDS = "LEASE_SECONDS"
IO_CONCURRENCY = "IO_CONCURRENCY"
AZURE_SUBSCRIPTION_ID = "AZURE_SUBSCRIPTION_ID"
ACI_RESOURCE_GROUP = "ACI_RESOURCE_GROUP"
ACI_LOCATION = "ACI_LOCATION"
ARM_ENDPOINT = "ARM_ENDPOINT"
ARM_CA_BUNDLE = "ARM_CA_BUNDLE"
ARM_AUTH = "ARM_AUTH"
ACI_IMAGE = "ACI_IMAGE"
ACI_CPU = "ACI_CPU"
ACI_MEMORY_GB = "ACI_MEMORY_GB"
ACI_GPU_SKU = "ACI_GPU_SKU"
ACI_GPU_COUNT = "ACI_GPU_COUNT"
ACI_COMMAND = "ACI_COMMAND"
ACI_ENV_PREFIX = "ACI_ENV_"
ACI_SECURE_ENV_PREFIX = "ACI_SECURE_ENV_"
ACI_IDENTITY_ID = "ACI_IDENTITY_ID"
ACI_IDENTITY_CLIENT_ID = "ACI_IDENTITY_CLIENT_ID"
ACI_REGISTRY_SERVER = "ACI_REGISTRY_SERVER"
ACI_REGISTRY_USERNAME = "ACI_REGISTRY_USERNAME"
ACI_REGISTRY_PASSWORD = "ACI_REGISTRY_PASSWORD"  # noqa: S105 (a setting name)
ACI_SUBNET_ID = "ACI_SUBNET_ID"
GROUP_PREFIX = "GROUP_PREFIX"
JOB_TIMEOUT_MINUTES = "JOB_TIMEOUT_MINUTES"
MAX_ATTEMPTS = "MAX_ATTEMPTS"
NO_RETRY_EXIT_CODES = "NO_RETRY_EXIT_CODES"
KEEP_FAILED_GROUPS = "KEEP_FAILED_GROUPS"
ORPHAN_GRACE_MINUTES = "ORPHAN_GRACE_MINUTES"
STUCK_CLAIM_SECONDS = "STUCK_CLAIM_SECONDS"
VANISH_GRACE_SECONDS = "VANISH_GRACE_SECONDS"
MAX_PLATFORM_RELAUNCHES = "MAX_PLATFORM_RELAUNCHES"
ACI_LOG_ANALYTICS_WORKSPACE_ID = "ACI_LOG_ANALYTICS_WORKSPACE_ID"
ACI_LOG_ANALYTICS_WORKSPACE_KEY = "ACI_LOG_ANALYTICS_WORKSPACE_KEY"
STALL_ALARM_MINUTES = "STALL_ALARM_MINUTES"
NOTIFY_QUEUE = "NOTIFY_QUEUE"
NOTIFY_WEBHOOK_URL = "NOTIFY_WEBHOOK_URL"
NOTIFY_WEBHOOK_SECRET = "NOTIFY_WEBHOOK_SECRET"  # noqa: S105 (a setting name)
PRICE_VCPU_SECOND = "PRICE_VCPU_SECOND"
PRICE_GB_SECOND = "PRICE_GB_SECOND"
PRICE_GPU_SECOND_V100 = "PRICE_GPU_SECOND_V100"
JOB_PROFILES = "JOB_PROFILES"
BATCH_PARAMS_FILE = "BATCH_PARAMS_FILE"

# The seed system's names, accepted so its users can migrate by changing nothing.
SEED_ACCOUNT_NAME = "AzureAccountName"
SEED_ACCOUNT_KEY = "AzureAccountKey"
SEED_CONTAINER_NAME = "ContainerName"
SEED_RESOURCE_GROUP = "ResourceGroupName"

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
BATCH_MODES = ("tick", "folder")
ARM_AUTH_MODES = ("identity", "emulator")
# ACI's GPU SKUs: V100 (K80 and P100 were retired on 31 August 2023).
GPU_SKUS = ("V100",)
# The documented per-group maximums ("Resource availability & quota limits for ACI"):
# (CPU cores, memory GB) for a standard group and per V100 count; no GPU in a virtual network.
GROUP_LIMITS: dict[tuple[str, int] | None, tuple[float, float]] = {
    None: (4, 16),
    ("V100", 1): (6, 112),
    ("V100", 2): (12, 224),
    ("V100", 4): (24, 448),
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Default per-second prices (USD): ACI Linux pay-as-you-go hourly list prices for East US
# divided by 3600; their source, date and caveats: docs/notifications.md ("Cost per batch").
DEFAULT_PRICE_VCPU_SECOND = 0.0405 / 3600  # "Standard vCPU Duration", USD 0.0405 per hour
DEFAULT_PRICE_GB_SECOND = 0.00445 / 3600  # "Standard Memory Duration", USD 0.00445 per GB-hour
DEFAULT_PRICE_GPU_SECOND = {"V100": 3.06 / 3600}  # "V100 GPU Duration", USD 3.06 (unverified)
MIN_WEBHOOK_SECRET = 16
_QUEUE_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_GROUP_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*-?$")
_RESOURCE_GROUP_RE = re.compile(r"^[-\w._()]{1,90}$")
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class ConfigError(ValueError):
    """Raised once with every problem found, one per line, each naming its setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "Invalid configuration ("
            + str(len(problems))
            + " problem(s)):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Settings:
    """Parsed, validated settings; build with `load_settings()`."""

    # storage
    storage_connection_string: str | None
    storage_account_url: str | None
    watch_container: str
    incoming_prefix: str
    processing_prefix: str
    done_prefix: str
    failed_prefix: str
    output_prefix: str
    lock_prefix: str
    index_prefix: str
    # schedules and batching
    poll_schedule: str
    janitor_schedule: str
    batch_mode: str
    batch_ready_marker: str | None
    batch_settle_seconds: int
    batch_max_files: int
    batch_max_bytes: int
    max_batches_per_tick: int
    max_active_groups: int
    max_creates_per_5_min: int
    lease_seconds: int
    io_concurrency: int
    # ARM / ACI
    subscription_id: str
    resource_group: str
    location: str
    arm_endpoint: str
    arm_ca_bundle: str | None
    arm_auth: str
    image: str
    cpu: float
    memory_gb: float
    gpu_sku: str | None
    gpu_count: int
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]
    secure_env: tuple[tuple[str, str], ...] = field(repr=False)
    identity_id: str | None = None
    identity_client_id: str | None = None
    registry_server: str | None = None
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    subnet_id: str | None = None
    group_prefix: str = "ml-"
    # janitor
    job_timeout_minutes: float = 60.0
    max_attempts: int = 3
    no_retry_exit_codes: frozenset[int] = frozenset()
    keep_failed_groups: bool = False
    orphan_grace_minutes: int = 15
    stuck_claim_seconds: int = 300
    vanish_grace_seconds: int = 120
    max_platform_relaunches: int = 3
    log_analytics_workspace_id: str | None = None
    log_analytics_workspace_key: str | None = field(default=None, repr=False)
    stall_alarm_minutes: float = 10.0
    # completion notifications (cleanup/notify.py) and cost (launcher/cost.py)
    notify_queue: str | None = None
    notify_webhook_url: str | None = None
    notify_webhook_secret: str | None = field(default=None, repr=False)
    price_vcpu_second: float = DEFAULT_PRICE_VCPU_SECOND
    price_gb_second: float = DEFAULT_PRICE_GB_SECOND
    price_gpu_second: tuple[tuple[str, float], ...] = tuple(DEFAULT_PRICE_GPU_SECOND.items())
    # job profiles (profiles.py): the ACI_* settings are "default" when ACI_IMAGE is set
    job_profiles: tuple[profiles.Profile, ...] = ()
    has_default_profile: bool = True
    params_file: str = "_params.json"

    def for_profile(self, name: str, strict: bool = True) -> Settings:
        """These settings with the job spec and janitor rules of profile `name` (the default
        profile is these settings). Unknown: KeyError, or these settings when not `strict`."""
        for p in self.job_profiles:
            if p.name == name:
                return dataclasses.replace(self, **dict(p.spec))
        if (name == profiles.DEFAULT_PROFILE and self.has_default_profile) or not strict:
            return self
        raise KeyError(name)

    def profile_of(self, relative: str) -> str | None:
        """The profile of a file by its path under incoming/ (None: no profile takes it)."""
        return profiles.route(self.job_profiles, self.has_default_profile, relative)

    def profile_cap(self, name: str) -> int:
        """Active groups profile `name` may have: its own cap, within MAX_ACTIVE_GROUPS."""
        own = next((p.max_active_groups for p in self.job_profiles if p.name == name), None)
        return min(own or self.max_active_groups, self.max_active_groups)

    @property
    def profile_names(self) -> tuple[str, ...]:
        """Every configured profile: those of JOB_PROFILES, then "default" when there is one."""
        default = (profiles.DEFAULT_PROFILE,) if self.has_default_profile else ()
        return tuple(p.name for p in self.job_profiles) + default

    def profile_params(self, name: str) -> tuple[profiles.ParamSpec, ...]:
        return next((p.params for p in self.job_profiles if p.name == name), ())

    @property
    def notify_targets(self) -> tuple[str, ...]:
        """The configured notification targets, in delivery order ("queue", "webhook")."""
        return tuple(
            name
            for name, on in (("queue", self.notify_queue), ("webhook", self.notify_webhook_url))
            if on
        )

    @property
    def queue_account_url(self) -> str | None:
        """The queue endpoint of the storage account, for identity-based access: the blob
        endpoint's `.blob.` replaced by `.queue.` (connection strings name their own)."""
        if not self.storage_account_url:
            return None
        parsed = urlparse(self.storage_account_url)
        host = parsed.hostname or ""
        if ".blob." not in host:
            return None
        return self.storage_account_url.replace(".blob.", ".queue.", 1)

    @property
    def poll_lock_blob(self) -> str:
        return f"{self.lock_prefix}poll"

    @property
    def janitor_lock_blob(self) -> str:
        return f"{self.lock_prefix}janitor"

    @property
    def state_prefixes(self) -> tuple[str, ...]:
        """Prefixes a batch can live under; blob names must fit below the longest one."""
        return (self.processing_prefix, self.done_prefix, self.failed_prefix)

    @property
    def account_name(self) -> str:
        """Storage account name, used to tag groups so two deployments never sweep each other."""
        if self.storage_account_url:
            parsed = urlparse(self.storage_account_url)
            if parsed.hostname in LOOPBACK_HOSTS or (parsed.hostname or "").count(".") == 0:
                return parsed.path.strip("/").split("/")[0] or (parsed.hostname or "")
            return (parsed.hostname or "").split(".")[0]
        parts = _parse_connection_string(self.storage_connection_string or "")
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            return "devstoreaccount1"
        return parts.get("accountname", "")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate settings from `env` (default: the process environment)."""
    r = _Reader(os.environ if env is None else env)

    conn = r.text(STORAGE_CONNECTION_STRING)
    account_url = r.text(STORAGE_ACCOUNT_URL)
    seed_name, seed_key = r.raw(SEED_ACCOUNT_NAME), r.raw(SEED_ACCOUNT_KEY)
    if conn is None and account_url is None and seed_name:
        if seed_key:
            conn = (
                f"DefaultEndpointsProtocol=https;AccountName={seed_name};AccountKey={seed_key};"
                "EndpointSuffix=core.windows.net"
            )
        else:
            account_url = f"https://{seed_name}.blob.core.windows.net"
    if conn and account_url:
        r.problems.append(
            f"{STORAGE_CONNECTION_STRING} and {STORAGE_ACCOUNT_URL} are both set: choose one "
            "(the account URL uses managed identity)"
        )
    elif conn is None and account_url is None:
        r.problems.append(
            f"{STORAGE_CONNECTION_STRING} or {STORAGE_ACCOUNT_URL} is required "
            f"(or the seed names {SEED_ACCOUNT_NAME}/{SEED_ACCOUNT_KEY})"
        )
    if conn is not None:
        parts = _parse_connection_string(conn)
        if parts.get("usedevelopmentstorage", "").lower() != "true" and not (
            "accountname" in parts or "blobendpoint" in parts
        ):
            r.problems.append(
                f"{STORAGE_CONNECTION_STRING} has neither AccountName nor BlobEndpoint"
            )
    if account_url is not None and urlparse(account_url).scheme not in ("http", "https"):
        r.problems.append(
            f"{STORAGE_ACCOUNT_URL} must be an http(s) URL (value not shown: it may hold a SAS)"
        )

    container = r.required(
        WATCH_CONTAINER, "the blob container to watch", SEED_CONTAINER_NAME
    ).lower()
    if container and not _CONTAINER_RE.match(container):
        r.problems.append(
            f"{WATCH_CONTAINER}={container!r} is not a valid container name "
            "(3-63 lowercase letters, digits and single hyphens)"
        )

    prefixes = {
        INCOMING_PREFIX: r.prefix(INCOMING_PREFIX, "incoming/"),
        PROCESSING_PREFIX: r.prefix(PROCESSING_PREFIX, "processing/"),
        DONE_PREFIX: r.prefix(DONE_PREFIX, "done/"),
        FAILED_PREFIX: r.prefix(FAILED_PREFIX, "failed/"),
        OUTPUT_PREFIX: r.prefix(OUTPUT_PREFIX, "output/"),
        LOCK_PREFIX: r.prefix(LOCK_PREFIX, "locks/"),
        INDEX_PREFIX: r.prefix(INDEX_PREFIX, "index/"),
    }
    names = list(prefixes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = prefixes[a], prefixes[b]
            if pa.startswith(pb) or pb.startswith(pa):
                r.problems.append(f"{a}={pa!r} and {b}={pb!r} overlap: each needs its own folder")

    marker = r.text(BATCH_READY_MARKER)
    if marker is not None and ("/" in marker or marker in (".", "..")):
        r.problems.append(f"{BATCH_READY_MARKER}={marker!r} must be a plain file name like _READY")

    subscription = r.required(AZURE_SUBSCRIPTION_ID, "the subscription that hosts the groups")
    if subscription and not _GUID_RE.match(subscription):
        r.problems.append(f"{AZURE_SUBSCRIPTION_ID}={subscription!r} is not a GUID")
    resource_group = r.required(
        ACI_RESOURCE_GROUP, "the resource group for container groups", SEED_RESOURCE_GROUP
    )
    if resource_group and not _RESOURCE_GROUP_RE.match(resource_group):
        r.problems.append(f"{ACI_RESOURCE_GROUP}={resource_group!r} is not a valid resource group")
    location = r.required(ACI_LOCATION, "the Azure region for container groups, e.g. westeurope")

    arm_endpoint = (r.text(ARM_ENDPOINT) or DEFAULT_ARM_ENDPOINT).rstrip("/")
    arm_url = urlparse(arm_endpoint)
    if arm_url.scheme != "https" or not arm_url.hostname:
        r.problems.append(
            f"{ARM_ENDPOINT}={arm_endpoint!r} must be an https:// URL (bearer tokens need TLS)"
        )
    arm_auth = r.choice(ARM_AUTH, "identity", ARM_AUTH_MODES)
    if arm_auth == "emulator" and arm_url.hostname not in LOOPBACK_HOSTS:
        r.problems.append(
            f"{ARM_AUTH}=emulator is only allowed with a loopback {ARM_ENDPOINT}, got {arm_endpoint!r}"
        )
    ca_bundle = r.text(ARM_CA_BUNDLE)
    if ca_bundle is not None and not os.path.isfile(ca_bundle):
        r.problems.append(f"{ARM_CA_BUNDLE}={ca_bundle!r} is not a readable file")

    raw_profiles = r.text(JOB_PROFILES)
    image = (
        r.text(ACI_IMAGE) or ""
        if raw_profiles
        else r.required(
            ACI_IMAGE, f"the container image that processes a batch (or {JOB_PROFILES})"
        )
    )
    if image and (any(c.isspace() for c in image) or image != image.strip()):
        r.problems.append(f"{ACI_IMAGE}={image!r} is not an image reference")
    gpu_sku = r.text(ACI_GPU_SKU)
    if gpu_sku is not None and gpu_sku.upper() not in GPU_SKUS:
        r.problems.append(f"{ACI_GPU_SKU}={gpu_sku!r} must be one of: {', '.join(GPU_SKUS)}")
    gpu_count = r.number(ACI_GPU_COUNT, 1 if gpu_sku else 0, int, 0, 4)
    if gpu_count and not gpu_sku:
        r.problems.append(f"{ACI_GPU_COUNT} is set but {ACI_GPU_SKU} is not")

    command: tuple[str, ...] | None = None
    raw_command = r.text(ACI_COMMAND)
    if raw_command is not None:
        try:
            command = _parse_command(raw_command)
        except ValueError as exc:
            r.problems.append(f"{ACI_COMMAND}: {exc}")

    identity_id = r.text(ACI_IDENTITY_ID)
    if identity_id is not None and "/userassignedidentities/" not in identity_id.lower():
        r.problems.append(
            f"{ACI_IDENTITY_ID} must be the resource ID of a user-assigned identity "
            "(.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME)"
        )
    identity_client_id = r.text(ACI_IDENTITY_CLIENT_ID)
    if identity_client_id is not None and not _GUID_RE.match(identity_client_id):
        r.problems.append(f"{ACI_IDENTITY_CLIENT_ID}={identity_client_id!r} is not a GUID")
    if identity_id and not identity_client_id:
        r.problems.append(
            f"{ACI_IDENTITY_CLIENT_ID} is required with {ACI_IDENTITY_ID}: the container "
            "uses it as AZURE_CLIENT_ID to reach storage"
        )

    registry_server = r.text(ACI_REGISTRY_SERVER)
    registry_username = r.text(ACI_REGISTRY_USERNAME)
    registry_password = r.text(ACI_REGISTRY_PASSWORD)
    if (registry_username or registry_password) and not registry_server:
        r.problems.append(
            f"{ACI_REGISTRY_USERNAME}/{ACI_REGISTRY_PASSWORD} need {ACI_REGISTRY_SERVER}"
        )
    if bool(registry_username) != bool(registry_password):
        r.problems.append(f"{ACI_REGISTRY_USERNAME} and {ACI_REGISTRY_PASSWORD} go together")
    if registry_server and not registry_username and not identity_id:
        r.problems.append(
            f"{ACI_REGISTRY_SERVER} needs {ACI_IDENTITY_ID} (AcrPull) or "
            f"{ACI_REGISTRY_USERNAME}/{ACI_REGISTRY_PASSWORD}"
        )
    subnet_id = r.text(ACI_SUBNET_ID)
    if subnet_id is not None and "/subnets/" not in subnet_id.lower():
        r.problems.append(f"{ACI_SUBNET_ID} must be a subnet resource ID (.../subnets/NAME)")

    workspace_id = r.text(ACI_LOG_ANALYTICS_WORKSPACE_ID)
    workspace_key = r.text(ACI_LOG_ANALYTICS_WORKSPACE_KEY)
    if bool(workspace_id) != bool(workspace_key):
        r.problems.append(
            f"{ACI_LOG_ANALYTICS_WORKSPACE_ID} and {ACI_LOG_ANALYTICS_WORKSPACE_KEY} go together"
        )
    if workspace_id and not _GUID_RE.match(workspace_id):
        r.problems.append(
            f"{ACI_LOG_ANALYTICS_WORKSPACE_ID} must be the workspace's customer id (a GUID)"
        )

    notify_queue, webhook_url, webhook_secret = _notify_settings(r, conn, account_url)

    group_prefix = r.text(GROUP_PREFIX) or "ml-"
    if not _GROUP_PREFIX_RE.match(group_prefix) or len(group_prefix) > 20:
        r.problems.append(
            f"{GROUP_PREFIX}={group_prefix!r} must be 1-20 lowercase letters, digits and single "
            "hyphens, starting with a letter"
        )

    env_vars = r.env_group(ACI_ENV_PREFIX)
    secure_env = r.env_group(ACI_SECURE_ENV_PREFIX)
    overlap = {k for k, _ in env_vars} & {k for k, _ in secure_env}
    for name in sorted(overlap):
        r.problems.append(f"{ACI_ENV_PREFIX}{name} and {ACI_SECURE_ENV_PREFIX}{name} both set")
    reserved = {k for k, _ in (*env_vars, *secure_env) if k.startswith("ML_")}
    for name in sorted(reserved):
        r.problems.append(
            f"environment variable {name}: the ML_ prefix is reserved for the launcher"
        )

    settings = Settings(
        storage_connection_string=conn,
        storage_account_url=account_url.rstrip("/") if account_url else None,
        watch_container=container,
        incoming_prefix=prefixes[INCOMING_PREFIX],
        processing_prefix=prefixes[PROCESSING_PREFIX],
        done_prefix=prefixes[DONE_PREFIX],
        failed_prefix=prefixes[FAILED_PREFIX],
        output_prefix=prefixes[OUTPUT_PREFIX],
        lock_prefix=prefixes[LOCK_PREFIX],
        index_prefix=prefixes[INDEX_PREFIX],
        poll_schedule=r.schedule(POLL_SCHEDULE, "0 */1 * * * *"),
        janitor_schedule=r.schedule(JANITOR_SCHEDULE, "30 */2 * * * *"),
        batch_mode=r.choice(BATCH_MODE, "tick", BATCH_MODES),
        batch_ready_marker=marker,
        batch_settle_seconds=r.number(BATCH_SETTLE_SECONDS, 30, int, 0, 86400),
        batch_max_files=r.number(BATCH_MAX_FILES, 500, int, 1, 100_000),
        batch_max_bytes=r.number(BATCH_MAX_BYTES, 100 * 1024**3, int, 1),
        max_batches_per_tick=r.number(MAX_BATCHES_PER_TICK, 20, int, 1, 100),
        max_active_groups=r.number(MAX_ACTIVE_GROUPS, 20, int, 1, 5000),
        max_creates_per_5_min=r.number(MAX_CREATES_PER_5_MIN, 90, int, 1, 100),
        lease_seconds=r.number(LEASE_SECONDS, 60, int, 15, 60),
        io_concurrency=r.number(IO_CONCURRENCY, 32, int, 1, 256),
        subscription_id=subscription,
        resource_group=resource_group,
        location=location,
        arm_endpoint=arm_endpoint,
        arm_ca_bundle=ca_bundle,
        arm_auth=arm_auth,
        image=image,
        cpu=r.number(ACI_CPU, 1.0, float, 0.1, 24),
        memory_gb=r.number(ACI_MEMORY_GB, 1.5, float, 0.1, 448),
        gpu_sku=gpu_sku.upper() if gpu_sku else None,
        gpu_count=gpu_count,
        command=command,
        env=env_vars,
        secure_env=secure_env,
        identity_id=identity_id,
        identity_client_id=identity_client_id,
        registry_server=registry_server,
        registry_username=registry_username,
        registry_password=registry_password,
        subnet_id=subnet_id,
        group_prefix=group_prefix,
        job_timeout_minutes=r.number(JOB_TIMEOUT_MINUTES, 60.0, float, 0.01, 7 * 24 * 60),
        max_attempts=r.number(MAX_ATTEMPTS, 3, int, 1, 20),
        no_retry_exit_codes=r.int_set(NO_RETRY_EXIT_CODES),
        keep_failed_groups=r.boolean(KEEP_FAILED_GROUPS, False),
        orphan_grace_minutes=r.number(ORPHAN_GRACE_MINUTES, 15, int, 0, 7 * 24 * 60),
        stuck_claim_seconds=r.number(STUCK_CLAIM_SECONDS, 300, int, 0, 24 * 3600),
        vanish_grace_seconds=r.number(VANISH_GRACE_SECONDS, 120, int, 0, 24 * 3600),
        max_platform_relaunches=r.number(MAX_PLATFORM_RELAUNCHES, 3, int, 0, 20),
        log_analytics_workspace_id=workspace_id,
        log_analytics_workspace_key=workspace_key,
        stall_alarm_minutes=r.number(STALL_ALARM_MINUTES, 10.0, float, 0.1, 7 * 24 * 60),
        notify_queue=notify_queue,
        notify_webhook_url=webhook_url,
        notify_webhook_secret=webhook_secret,
        price_vcpu_second=r.number(PRICE_VCPU_SECOND, DEFAULT_PRICE_VCPU_SECOND, float, 0, 1),
        price_gb_second=r.number(PRICE_GB_SECOND, DEFAULT_PRICE_GB_SECOND, float, 0, 1),
        price_gpu_second=(
            (
                "V100",
                r.number(PRICE_GPU_SECOND_V100, DEFAULT_PRICE_GPU_SECOND["V100"], float, 0, 1),
            ),
        ),
    )
    if raw_profiles:
        settings = _with_profiles(r, settings, raw_profiles)
    elif r.text(BATCH_PARAMS_FILE):
        r.problems.append(f"{BATCH_PARAMS_FILE} is set but {JOB_PROFILES} is not")
    if settings.has_default_profile:
        r.problems += group_limit_problems(settings)
    if r.problems:
        raise ConfigError(r.problems)
    return settings


def _with_profiles(r: _Reader, s: Settings, raw: str) -> Settings:
    """JOB_PROFILES and BATCH_PARAMS_FILE (profiles.py), each profile's group checked like the
    ACI_* settings' one."""
    found = profiles.parse_profiles(raw, r.env, s.max_active_groups, r.problems)
    params_file = r.text(BATCH_PARAMS_FILE) or "_params.json"
    if "/" in params_file or params_file in (".", "..") or params_file == s.batch_ready_marker:
        r.problems.append(f"{BATCH_PARAMS_FILE}={params_file!r} must be a plain file name")
    for p in found:
        if p.params and s.batch_mode != "folder":
            r.problems.append(
                f"{JOB_PROFILES}.{p.name}.params need {BATCH_MODE}=folder: only there is a "
                "folder (and its parameters file) one batch"
            )
        names = {
            k: f"{JOB_PROFILES}.{p.name}.{k.removeprefix('ACI_').lower()}" for k in _LIMIT_NAMES
        }
        derived = dataclasses.replace(s, **dict(p.spec))
        r.problems += group_limit_problems(derived, names)
    return dataclasses.replace(
        s, job_profiles=found, has_default_profile=bool(s.image), params_file=params_file
    )


_LIMIT_NAMES = (ACI_GPU_SKU, ACI_SUBNET_ID, ACI_GPU_COUNT, ACI_CPU, ACI_MEMORY_GB)


def _notify_settings(
    r: _Reader, conn: str | None, account_url: str | None
) -> tuple[str | None, str | None, str | None]:
    """NOTIFY_QUEUE (a queue in the same storage account), NOTIFY_WEBHOOK_URL (https; plain
    http only to a loopback host, for tests) and its HMAC secret, which it requires."""
    queue = r.text(NOTIFY_QUEUE)
    if queue is not None:
        queue = queue.lower()
        if not _QUEUE_RE.match(queue):
            r.problems.append(
                f"{NOTIFY_QUEUE}={queue!r} is not a valid queue name (3-63 lowercase letters, "
                "digits and single hyphens)"
            )
        parts = _parse_connection_string(conn or "")
        if conn is not None and not (
            "queueendpoint" in parts
            or parts.get("usedevelopmentstorage", "").lower() == "true"
            or "accountname" in parts
        ):
            r.problems.append(
                f"{NOTIFY_QUEUE} needs a QueueEndpoint (or AccountName) in "
                f"{STORAGE_CONNECTION_STRING}"
            )
        if account_url is not None and ".blob." not in (urlparse(account_url).hostname or ""):
            r.problems.append(
                f"{NOTIFY_QUEUE}: the queue endpoint cannot be derived from {STORAGE_ACCOUNT_URL} "
                "(no '.blob.' in its host name); use a connection string with a QueueEndpoint"
            )
    url = r.text(NOTIFY_WEBHOOK_URL)
    secret = r.text(NOTIFY_WEBHOOK_SECRET)
    if url is not None:
        parsed = urlparse(url)
        loopback = parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS
        if not parsed.hostname or not (parsed.scheme == "https" or loopback):
            r.problems.append(
                f"{NOTIFY_WEBHOOK_URL} must be an https:// URL (plain http only to a loopback "
                "host; value not shown: it may hold a token)"
            )
        if secret is None:
            r.problems.append(
                f"{NOTIFY_WEBHOOK_SECRET} is required with {NOTIFY_WEBHOOK_URL}: every "
                "notification is signed with it (HMAC-SHA256)"
            )
        elif len(secret) < MIN_WEBHOOK_SECRET:
            r.problems.append(
                f"{NOTIFY_WEBHOOK_SECRET} must be at least {MIN_WEBHOOK_SECRET} characters "
                "(value not shown)"
            )
    elif secret is not None:
        r.problems.append(f"{NOTIFY_WEBHOOK_SECRET} is set but {NOTIFY_WEBHOOK_URL} is not")
    return queue, url, secret


def group_limit_problems(s: Settings, names: Mapping[str, str] | None = None) -> list[str]:
    """A container group ACI can never deploy, refused at start instead of failing every
    launch: over the documented per-group maximums, or a GPU in a virtual network. `names`:
    what to call the settings in the problems (a profile's fields)."""
    problems: list[str] = []
    n = dict(zip(_LIMIT_NAMES, _LIMIT_NAMES, strict=True)) | dict(names or {})
    ACI_GPU_SKU, ACI_SUBNET_ID, ACI_GPU_COUNT, ACI_CPU, ACI_MEMORY_GB = (n[k] for k in _LIMIT_NAMES)
    if s.gpu_sku and s.subnet_id:
        problems.append(
            f"{ACI_GPU_SKU} with {ACI_SUBNET_ID}: ACI does not support GPU resources in a "
            "virtual network"
        )
    key = (s.gpu_sku, s.gpu_count) if s.gpu_sku else None
    if key is not None and key not in GROUP_LIMITS:
        counts = sorted(k[1] for k in GROUP_LIMITS if k is not None and k[0] == s.gpu_sku)
        problems.append(
            f"{ACI_GPU_COUNT}={s.gpu_count}: ACI offers {s.gpu_sku} groups with "
            f"{', '.join(map(str, counts))} GPU(s)"
        )
        return problems
    max_cpu, max_memory = GROUP_LIMITS[key]
    what = f"{s.gpu_count} x {s.gpu_sku} group" if key else "standard container group"
    if s.cpu > max_cpu:
        problems.append(
            f"{ACI_CPU}={s.cpu:g} exceeds ACI's maximum of {max_cpu:g} CPU cores per {what}"
        )
    if s.memory_gb > max_memory:
        problems.append(
            f"{ACI_MEMORY_GB}={s.memory_gb:g} exceeds ACI's maximum of {max_memory:g} GB per {what}"
        )
    return problems


LOCAL_SETTINGS_FILE = "local.settings.json"


def load_settings_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `Values` of a local.settings.json (Core Tools' layout) as strings; ConfigError names
    the file and what is wrong with it."""
    try:
        raw = json.loads(open(path, encoding="utf-8-sig").read())  # noqa: SIM115
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except ValueError as exc:
        raise ConfigError([f"{path}: not valid JSON ({exc})"]) from None
    values = raw.get("Values") if isinstance(raw, dict) else None
    if not isinstance(values, dict):
        raise ConfigError([f"{path}: expected a JSON object with a 'Values' object"])
    if raw.get("IsEncrypted"):
        raise ConfigError([f"{path}: IsEncrypted is true; only plain-text values can be read"])
    out: dict[str, str] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            out[name] = "True" if value else "False"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
    return out


def settings_environment(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a command-line tool runs with: the settings file's Values under the environment
    (the environment wins, as in the Functions host). Without `path`, ./local.settings.json is
    read when it exists, so the CLIs run beside `make run` with the same settings."""
    env = dict(os.environ if environ is None else environ)
    if path is None:
        if not os.path.isfile(LOCAL_SETTINGS_FILE):
            return env
        path = LOCAL_SETTINGS_FILE
    return {**load_settings_file(path), **env}


def load_local_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Settings for a command-line tool: `settings_environment(path)`, validated."""
    return load_settings(settings_environment(path))


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, parsed once on first use (the Functions worker reuses them)."""
    return load_settings()
