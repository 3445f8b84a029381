"""The ACI hook: every Azure Container Instances call the app makes, and nothing else.

Orchestration (what to launch, when to delete) lives in `launcher.launch` and `cleanup.sweep`.
Here: tenacity retries exactly the transient failures (429 honouring Retry-After, 5xx, timeouts,
dropped connections, ContainerGroupTransitioning) with bounded, jittered backoff; azure-core's
own ARM retry is off (see `launcher.clients`). Creates and deletes never wait on the SDK's LRO
poller: the initial response is all the app needs, and the janitor observes progress later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import ContainerGroup, Resource
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

TAG_MANAGED_BY = "managed-by"
TAG_MANAGED_BY_VALUE = "model-launcher"
TAG_SOURCE = "ml-source"
TAG_BATCH = "ml-batch"
TAG_ATTEMPT = "ml-attempt"
TAG_CREATED = "ml-created"
TAG_KEPT = "ml-kept"
TAG_PROFILE = "ml-profile"  # the batch's job profile (profiles.py); absent: "default"
TRANSITIONING = "ContainerGroupTransitioning"
RESOURCE_GROUP_NOT_FOUND = "ResourceGroupNotFound"
LEASE_LOST = "LeaseLost"  # not an ARM code: the launcher stopped before sending a PUT
RETRY_ATTEMPTS = 6
RETRY_MAX_SECONDS = 120.0
MAX_RETRY_AFTER = 30.0


class AciError(RuntimeError):
    """A permanent ARM error, with its code and message for the batch manifest."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def _retry_after(exc: HttpResponseError) -> float | None:
    value = getattr(exc.response, "headers", {}).get("Retry-After") if exc.response else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _is_transient(exc: BaseException) -> bool:
    """Worth another try within this call. A 429 whose Retry-After is longer than we would wait
    (ACI's spent create budget answers minutes) is not: it is recorded on the batch at once and
    the next tick tries again, instead of blocking this one on pointless retries."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    if isinstance(exc, HttpResponseError):
        if exc.status_code == 429:
            wait = _retry_after(exc)
            return wait is None or wait <= MAX_RETRY_AFTER
        if exc.status_code in (408, 500, 502, 503, 504):
            return True
        return _error_code(exc) == TRANSITIONING
    return False


def _error_code(exc: HttpResponseError) -> str:
    if exc.error is not None and exc.error.code:
        return str(exc.error.code)
    return str(getattr(exc, "reason", None) or exc.status_code)


class _Wait:
    """Retry-After when the service gives one (capped), jittered exponential backoff otherwise."""

    def __init__(self) -> None:
        self._fallback = wait_random_exponential(multiplier=0.5, max=10)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, HttpResponseError):
            wait = _retry_after(exc)
            if wait is not None:
                return min(wait, MAX_RETRY_AFTER)
        return float(self._fallback(state))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "ARM call %s failed transiently (attempt %s): %s",
        getattr(state.fn, "__name__", "?"),
        state.attempt_number,
        exc,
    )


@dataclass(frozen=True)
class GroupInfo:
    """One of our container groups as the list call shows it (no instance view)."""

    name: str
    batch_id: str | None
    attempt: int
    created: float | None
    provisioning_state: str | None
    kept: bool = False
    profile: str = "default"


def source_tag(settings: Settings) -> str:
    """Which deployment owns a group: two apps sharing a resource group never touch each
    other's groups."""
    return f"{settings.account_name}/{settings.watch_container}"


class AciHook:
    def __init__(self, client: ContainerInstanceManagementClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.rg = settings.resource_group

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            for attempt in Retrying(
                retry=retry_if_exception(_is_transient),
                wait=_Wait(),
                stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_MAX_SECONDS),
                before_sleep=_log_retry,
                reraise=True,
            ):
                with attempt:
                    return fn(*args, **kwargs)
        except ResourceNotFoundError as exc:
            # A missing resource group is a deployment problem, not "this group is missing".
            if _error_code(exc) == RESOURCE_GROUP_NOT_FOUND:
                raise AciError(_error_code(exc), exc.message or str(exc), 404) from exc
            raise
        except HttpResponseError as exc:
            raise AciError(_error_code(exc), exc.message or str(exc), exc.status_code) from exc
        raise AssertionError("unreachable")

    def list_groups(self) -> list[GroupInfo]:
        """Our groups in the resource group: one request per page of 100 (usually one)."""

        def fetch() -> list[ContainerGroup]:
            return list(self.client.container_groups.list_by_resource_group(self.rg))

        ours = []
        want = source_tag(self.settings)
        for group in self._call(fetch):
            tags = group.tags or {}
            if tags.get(TAG_MANAGED_BY) != TAG_MANAGED_BY_VALUE or tags.get(TAG_SOURCE) != want:
                continue
            try:
                attempt = int(tags.get(TAG_ATTEMPT, "0"))
            except ValueError:
                attempt = 0
            try:
                created: float | None = float(tags[TAG_CREATED])
            except (KeyError, ValueError):
                created = None
            ours.append(
                GroupInfo(
                    name=str(group.name),
                    batch_id=tags.get(TAG_BATCH),
                    attempt=attempt,
                    created=created,
                    provisioning_state=group.provisioning_state,
                    kept=tags.get(TAG_KEPT) == "true",
                    profile=tags.get(TAG_PROFILE) or "default",
                )
            )
        return ours

    def create(
        self, name: str, group: ContainerGroup, guard: Callable[[], bool] | None = None
    ) -> None:
        """Send the PUT and return once ARM accepted it (201/200); never polls the LRO.

        `guard` runs before every try (retries included) and must say True: the launcher's
        proof that it still holds the poll lease, so no PUT leaves once it may not (AciError
        `LeaseLost` otherwise)."""

        def put() -> None:
            if guard is not None and not guard():
                raise AciError(LEASE_LOST, "the poll lease is no longer held: PUT not sent")
            self.client.container_groups.begin_create_or_update(self.rg, name, group, polling=False)

        try:
            self._call(put)
        except ResourceNotFoundError as exc:  # e.g. ResourceGroupNotFound: record it, go on
            raise AciError(_error_code(exc), exc.message or str(exc), exc.status_code) from exc

    def get(self, name: str) -> ContainerGroup | None:
        try:
            return self._call(self.client.container_groups.get, self.rg, name)
        except ResourceNotFoundError:
            return None

    def logs(self, name: str, container: str, tail: int | None = None) -> str:
        try:
            result = self._call(
                self.client.containers.list_logs, self.rg, name, container, tail=tail
            )
        except ResourceNotFoundError:
            return ""
        return str(result.content or "")

    def mark_kept(self, name: str) -> None:
        """Tag a failed group the operator wants to inspect, so sweeps leave it alone."""
        group = self.get(name)
        if group is None:
            return
        tags = dict(group.tags or {}) | {TAG_KEPT: "true"}
        self._call(self.client.container_groups.update, self.rg, name, Resource(tags=tags))

    def stop(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._call(self.client.container_groups.stop, self.rg, name)

    def delete(self, name: str) -> bool:
        """Delete a group; a missing group counts as deleted. Returns False if it was missing.

        Raises AciError with code ContainerGroupTransitioning if it is still being created after
        the retries; the janitor then tries again on its next sweep.
        """

        def delete() -> int:
            poller = self.client.container_groups.begin_delete(
                self.rg, name, polling=False, cls=lambda resp, _body, _headers: resp
            )
            response: Any = poller.result()
            return int(response.http_response.status_code)

        try:
            status = self._call(delete)
        except ResourceNotFoundError:
            return False
        return status != 204
