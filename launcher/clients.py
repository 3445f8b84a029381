"""Azure clients, built in one place and reused across invocations.

The Functions worker keeps the Python process alive between timer runs, so connection pools,
credentials (and their token caches) and thread pools are created once per `Settings`.

Retries: the storage client keeps azure-core's own retry policy (storage throttling is 503 and
every storage call here is idempotent or hand-retried). The ARM client has azure-core retries
turned off; `launcher.aci` retries with tenacity instead, so the two never multiply.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import DefaultAzureCredential
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry
from azure.storage.queue import ExponentialRetry as QueueRetry
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from config import DEFAULT_ARM_ENDPOINT, Settings
from launcher.aci import AciHook
from launcher.batch import ManifestStore
from launcher.blobs import THROTTLED_HEADER, ConcurrentRunner
from launcher.clock import ServerClock

MAX_THROTTLE_SLEEP = 5.0
# Storage retries wait about 0.5, 2.5, 4.5, 8.5, 16.5 s (+-1 s jitter) instead of the SDK's
# default 15, 18, 24 s: a tick holds a 15-60 s lease and should not stall 15 s on a single 503.
STORAGE_FIRST_BACKOFF = 0.5
CONNECTION_TIMEOUT = 10
READ_TIMEOUT = 60
ARM_POLLING_INTERVAL = 1  # seconds; only used where a caller really waits on an LRO
# The notification queue (cleanup/notify.py) must not hold a sweep: short timeouts, two quick
# retries; an undelivered message stays pending for the next sweep.
QUEUE_CONNECTION_TIMEOUT = 3
QUEUE_READ_TIMEOUT = 5


class EmulatorToken(TokenCredential):
    """A FAKE credential for the local ACI emulator, which accepts any bearer token.

    Selected by ARM_AUTH=emulator, which config.py only allows for a loopback ARM_ENDPOINT, so it
    can never send a dummy token to Azure. Everything else on the ARM path is the production code.
    """

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("local-emulator-token", int(time.time()) + 3600)


class ThrottleAsServerBusy(SansIOHTTPPolicy):
    """Blob storage throttles with 503 ServerBusy, which its SDK retries; front ends and proxies
    may answer 429 instead, which the storage SDK would not retry. Treat them alike, after
    honouring a short Retry-After. The original status stays visible in a header so callers
    that must know whether a request was applied (see `blobs.delete_if_unchanged`) still can."""

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        http = response.http_response
        if http.status_code != 429:
            return
        try:
            time.sleep(min(float(http.headers.get("Retry-After", "1")), MAX_THROTTLE_SLEEP))
        except ValueError:
            pass
        http.headers[THROTTLED_HEADER] = "429"
        http.status_code = 503


# Proxy variables requests would consult on every request (any case).
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _environment_settings(verify: str | bool, env: Mapping[str, str]) -> tuple[bool, str | bool]:
    """(trust_env, verify) for a session: requests re-reads proxies, the CA bundle and ~/.netrc
    from the environment on every request, about a tenth of the CPU a claim spends per file.
    Without proxy variables that lookup is done once here instead, with requests' own rule for
    the CA bundle; with proxy variables requests keeps its usual per-request behaviour."""
    if any(k.lower() in _PROXY_ENV for k in env):
        return True, verify
    if verify is True:
        verify = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or True
    return False, verify


def _transport(pool_size: int, verify: str | bool = True) -> RequestsTransport:
    """A requests session whose pool matches IO_CONCURRENCY (requests defaults to 10)."""
    session = requests.Session()
    session.trust_env, verify = _environment_settings(verify, os.environ)
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_verify=verify,
        connection_timeout=CONNECTION_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )


def _arm_scope(settings: Settings) -> str:
    """Token audience: the public cloud's, or the sovereign cloud's own management endpoint."""
    if settings.arm_auth == "emulator" or settings.arm_endpoint == DEFAULT_ARM_ENDPOINT:
        return f"{DEFAULT_ARM_ENDPOINT}/.default"
    return f"{settings.arm_endpoint}/.default"


@dataclass
class Clients:
    settings: Settings
    blob_service: BlobServiceClient
    container: ContainerClient
    aci: ContainerInstanceManagementClient
    runner: ConcurrentRunner
    credential: TokenCredential | None
    store: ManifestStore
    hook: AciHook
    clock: ServerClock
    # Completion notification targets (cleanup/notify.py), None when not configured.
    queue: QueueClient | None = None
    webhook: requests.Session | None = None


_lock = threading.Lock()
_cache: dict[Settings, Clients] = {}


def build_clients(
    settings: Settings,
    storage_policies: Sequence[Any] = (),
    arm_policies: Sequence[Any] = (),
) -> Clients:
    """Build fresh clients. `*_policies` are extra per-retry azure-core policies (tests and the
    benchmark count real HTTP requests with them)."""
    pool = settings.io_concurrency + 8
    identity: TokenCredential | None = None
    clock = ServerClock()
    storage_kwargs: dict[str, Any] = {
        "transport": _transport(pool),
        # The storage SDK's name for extra per-retry policies.
        "_additional_pipeline_policies": [ThrottleAsServerBusy(), clock, *storage_policies],
        "retry_policy": ExponentialRetry(
            initial_backoff=STORAGE_FIRST_BACKOFF,  # type: ignore[arg-type]  # a float works
            increment_base=2,
            retry_total=5,
            random_jitter_range=1,
        ),
    }
    if settings.storage_connection_string:
        blob_service = BlobServiceClient.from_connection_string(
            settings.storage_connection_string, **storage_kwargs
        )
    else:
        identity = DefaultAzureCredential()
        assert settings.storage_account_url is not None
        blob_service = BlobServiceClient(
            settings.storage_account_url, credential=identity, **storage_kwargs
        )

    arm_credential: TokenCredential
    if settings.arm_auth == "emulator":
        arm_credential = EmulatorToken()
    else:
        identity = identity or DefaultAzureCredential()
        arm_credential = identity
    aci = ContainerInstanceManagementClient(
        arm_credential,
        settings.subscription_id,
        base_url=settings.arm_endpoint,
        credential_scopes=[_arm_scope(settings)],
        transport=_transport(pool, settings.arm_ca_bundle or True),
        retry_total=0,
        polling_interval=ARM_POLLING_INTERVAL,
        per_retry_policies=list(arm_policies),
    )
    container = blob_service.get_container_client(settings.watch_container)
    queue = _queue_client(settings, identity) if settings.notify_queue else None
    webhook = requests.Session() if settings.notify_webhook_url else None
    return Clients(
        settings=settings,
        blob_service=blob_service,
        container=container,
        aci=aci,
        runner=ConcurrentRunner(settings.io_concurrency),
        credential=identity,
        store=ManifestStore(container, settings, clock),
        hook=AciHook(aci, settings),
        clock=clock,
        queue=queue,
        webhook=webhook,
    )


def _queue_client(settings: Settings, identity: TokenCredential | None) -> QueueClient:
    """The notification queue in the data storage account, with storage's credential (the
    connection string's, or the same DefaultAzureCredential). Messages are base64-encoded, the
    encoding an Azure Functions queue trigger expects by default."""
    assert settings.notify_queue is not None
    kwargs: dict[str, Any] = {
        "transport": RequestsTransport(
            connection_timeout=QUEUE_CONNECTION_TIMEOUT, read_timeout=QUEUE_READ_TIMEOUT
        ),
        "retry_policy": QueueRetry(initial_backoff=0.5, increment_base=2, retry_total=2),  # type: ignore[arg-type]
        "message_encode_policy": TextBase64EncodePolicy(),
    }
    if settings.storage_connection_string:
        return QueueClient.from_connection_string(
            settings.storage_connection_string, settings.notify_queue, **kwargs
        )
    assert settings.queue_account_url is not None and identity is not None
    return QueueClient(
        settings.queue_account_url, settings.notify_queue, credential=identity, **kwargs
    )


def get_clients(settings: Settings) -> Clients:
    """The shared clients for `settings`, built on first use."""
    with _lock:
        clients = _cache.get(settings)
        if clients is None:
            clients = _cache[settings] = build_clients(settings)
        return clients
