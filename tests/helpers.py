"""Test helpers shared by several test modules (settings, request counting, dropping files)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import ContainerClient

from config import Settings, load_settings

SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"


def settings_env(connection_string: str, container: str, **overrides: str) -> dict[str, str]:
    env = {
        "STORAGE_CONNECTION_STRING": connection_string,
        "WATCH_CONTAINER": container,
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "ACI_RESOURCE_GROUP": "rg-test",
        "ACI_LOCATION": "local",
        "ACI_IMAGE": "modellauncher/worker:latest",
        "ARM_ENDPOINT": "https://127.0.0.1:9",
        "ARM_AUTH": "emulator",
        "BATCH_SETTLE_SECONDS": "0",
        "STUCK_CLAIM_SECONDS": "0",
        "LEASE_SECONDS": "15",
        "IO_CONCURRENCY": "8",
    }
    env.update(overrides)
    return env


def make_settings(connection_string: str, container: str, **overrides: str) -> Settings:
    return load_settings(settings_env(connection_string, container, **overrides))


def request_kind(request: Any) -> str:
    """Classify a storage request the way the benchmark proxy does (method + operation)."""
    method = request.method
    query = request.query if hasattr(request, "query") else {}
    comp = query.get("comp")
    if method == "GET" and comp == "list":
        return "list"
    if method == "PUT" and "x-ms-copy-source" in request.headers:
        return "copy"
    if comp:
        return f"{method.lower()}:{comp}"
    return {"PUT": "put", "DELETE": "delete", "GET": "get", "HEAD": "head"}.get(method, method)


class CountingPolicy(SansIOHTTPPolicy):
    """Counts every HTTP request that actually leaves the client (retries included)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def on_request(self, request: PipelineRequest) -> None:
        with self._lock:
            self.counts[request_kind(request.http_request)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


class SideEffectPolicy(SansIOHTTPPolicy):
    """Runs `action` once, just before the first request for which `match` is true: the way a
    user's concurrent upload or delete lands between two steps of the claim."""

    def __init__(self, match: Callable[[Any], bool], action: Callable[[], None]) -> None:
        self.match = match
        self.action = action
        self.fired = False
        self._lock = threading.Lock()

    def on_request(self, request: PipelineRequest) -> None:
        with self._lock:
            if self.fired or not self.match(request.http_request):
                return
            self.fired = True
        self.action()


def drop(container: ContainerClient, names: Iterable[str], data: bytes = b"data") -> None:
    for name in names:
        container.upload_blob(name, data, overwrite=True)


def all_names(container: ContainerClient, prefix: str = "") -> list[str]:
    return [b.name for b in container.list_blobs(name_starts_with=prefix)]
