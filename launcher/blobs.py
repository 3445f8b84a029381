"""Blob operations with the exact semantics the claim protocol relies on.

Every write here is conditional, and every condition failure is turned into a plain answer
("it changed", "it is gone", "it is ours") so callers never guess from exception types. The
storage SDK retries transient failures itself (azure-core's policy); the one exception is the
conditional delete that transfers ownership of a file, which retries by hand so that a 404 after a
lost response can be told apart from a 404 caused by somebody else.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobProperties, ContainerClient

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Statuses worth another try for a hand-retried call; everything else is an answer.
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
HAND_RETRIES = 6
THROTTLED_HEADER = "x-ml-original-status"


class Outcome(Enum):
    """What a conditional operation found."""

    DONE = "done"
    CHANGED = "changed"  # the blob exists with another etag (overwritten)
    MISSING = "missing"  # the blob is not there (deleted by somebody else)
    AMBIGUOUS_DONE = "ambiguous"  # a retry after a lost response found it gone: most likely ours


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in _TRANSIENT_STATUS


def is_refusal(exc: BaseException) -> bool:
    """A 4xx that the helpers here do not turn into an Outcome: the service refused the request
    and applied nothing (archive tier, somebody else's lease, no permission). Retrying does not
    help until somebody changes the blob or the permissions."""
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    return status is not None and 400 <= status < 500 and status not in (404, 408, 429)


def _backoff(attempt: int) -> None:
    time.sleep(min(0.2 * 2**attempt, 5.0))


def _wait_for_copy(dst: BlobClient, result: dict[str, Any], source: str) -> None:
    status = result.get("copy_status")
    delay = 0.2
    while status == "pending":
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
        status = dst.get_blob_properties().copy.status
    if status != "success":
        raise RuntimeError(f"copy of {source!r} to {dst.blob_name!r} ended with status {status!r}")


def copy_blob(container: ContainerClient, source: str, etag: str, dest: str) -> Outcome:
    """Server-side copy of exactly version `etag` of `source` to `dest`, waiting for completion.

    Same-account copies usually finish synchronously; a pending copy (large blobs in Azure) is
    polled until it settles, because deleting the source before that would lose the file.
    """
    src = container.get_blob_client(source)
    dst = container.get_blob_client(dest)
    try:
        result = dst.start_copy_from_url(
            src.url,
            source_etag=etag,
            source_match_condition=MatchConditions.IfNotModified,
        )
    except ResourceModifiedError:
        return Outcome.CHANGED
    except ResourceNotFoundError:
        return Outcome.MISSING
    except HttpResponseError as exc:
        if exc.status_code == 404:  # CannotVerifyCopySource: the source is gone
            return Outcome.MISSING
        if exc.status_code == 412:
            return Outcome.CHANGED
        raise
    _wait_for_copy(dst, result, source)
    return Outcome.DONE


def _settle_delete(status: int, code: str, uncertain: bool) -> Outcome | None:
    """The Outcome of a conditional delete's answer; None if the answer is a refusal (see
    `is_refusal`) or transient, which the callers handle."""
    if 200 <= status < 300:
        return Outcome.DONE
    if status == 404:
        return Outcome.AMBIGUOUS_DONE if uncertain else Outcome.MISSING
    if status == 412 and "lease" not in code.lower():
        return Outcome.AMBIGUOUS_DONE if uncertain else Outcome.CHANGED
    return None


def delete_if_unchanged(
    container: ContainerClient, name: str, etag: str, uncertain: bool = False
) -> Outcome:
    """Delete `name` only if it still has `etag`; the success of this call is what makes a
    claimed file ours. Retried by hand so a 404 that follows a lost response is reported as
    AMBIGUOUS_DONE (most likely our own earlier attempt) rather than MISSING; so is a 412 then,
    because a blob that is gone fails If-Match with 412 on some services (Azurite does), and
    even a changed blob may have been re-dropped after our delete: keeping the copy never
    loses a file, dropping it could. `uncertain` says an earlier attempt may have been applied.

    Snapshots of the blob go with it: storage refuses to delete a blob that has snapshots
    (409 SnapshotsPresent), which would leave such a file unclaimable forever. A blob leased by
    somebody else raises (see `is_refusal`) instead of reading as CHANGED."""
    blob = container.get_blob_client(name)
    for attempt in range(HAND_RETRIES):
        try:
            blob.delete_blob(
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
                delete_snapshots="include",
                retry_total=0,
            )
            return Outcome.DONE
        except ResourceModifiedError:
            return Outcome.AMBIGUOUS_DONE if uncertain else Outcome.CHANGED
        except ResourceNotFoundError:
            return Outcome.AMBIGUOUS_DONE if uncertain else Outcome.MISSING
        except HttpResponseError as exc:
            code = str(getattr(exc, "error_code", None) or "")
            settled = _settle_delete(exc.status_code or 0, code, uncertain)
            if settled is not None:
                return settled
            if not is_transient(exc) or attempt == HAND_RETRIES - 1:
                raise
            uncertain = uncertain or not _throttled(exc)
        except (ServiceRequestError, ServiceResponseError):
            if attempt == HAND_RETRIES - 1:
                raise
            uncertain = True
        _backoff(attempt)
    raise AssertionError("unreachable")


def _throttled(exc: HttpResponseError) -> bool:
    """A throttled request was not applied; any other 5xx may have been."""
    headers = getattr(exc.response, "headers", None) or {}
    return exc.status_code == 429 or headers.get(THROTTLED_HEADER) == "429"


class DeleteRefused(HttpResponseError):
    """Storage refused one delete of a batch (see `is_refusal`); nothing was applied."""

    def __init__(self, name: str, status: int, code: str) -> None:
        super().__init__(message=f"delete of {name!r} refused: {status} {code}")
        self.status_code = status
        self.error_code = code


# Blob Batch: at most 256 subrequests per request (a service limit).
BATCH_DELETE_LIMIT = 256
# Containers whose account refused Blob Batch requests (e.g. hierarchical namespace accounts,
# where Blob Batch was not available): their deletes go one by one from then on.
_no_batch: set[str] = set()


def delete_many_if_unchanged(
    container: ContainerClient, items: Sequence[tuple[str, str]]
) -> list[Outcome | BaseException]:
    """`delete_if_unchanged` for many (name, etag) pairs in Blob Batch requests (up to 256
    deletes per request instead of one request each), with the same outcome per blob: each
    subrequest carries its own If-Match, and a batch whose answer is lost or failed marks all of
    its still-open deletes uncertain before they are retried, exactly like a single delete.

    Results are in input order: an Outcome, `DeleteRefused` (a refusal), or the exception that
    ended the retries. An account that refuses the batch request itself (a 4xx on the whole
    batch, which applies nothing) gets single deletes instead."""
    if len(items) > BATCH_DELETE_LIMIT:
        head, tail = items[:BATCH_DELETE_LIMIT], items[BATCH_DELETE_LIMIT:]
        return delete_many_if_unchanged(container, head) + delete_many_if_unchanged(container, tail)
    results: list[Outcome | BaseException | None] = [None] * len(items)
    uncertain = [False] * len(items)
    pending = list(range(len(items)))
    for attempt in range(HAND_RETRIES):
        if not pending:
            break
        if container.url in _no_batch:
            break
        last = attempt == HAND_RETRIES - 1
        try:
            parts = list(
                container.delete_blobs(
                    *[
                        {
                            "name": items[i][0],
                            "etag": items[i][1],
                            "match_condition": MatchConditions.IfNotModified,
                            "delete_snapshots": "include",
                        }
                        for i in pending
                    ],
                    raise_on_any_failure=False,
                    retry_total=0,
                )
            )
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            status = exc.status_code if isinstance(exc, HttpResponseError) else None
            if not is_transient(exc) and status is not None and 400 <= status < 500:
                logger.warning(
                    "storage refused a Blob Batch request (%s %s): deleting one by one",
                    status,
                    getattr(exc, "error_code", None),
                )
                _no_batch.add(container.url)
                break
            if last or not is_transient(exc):
                for i in pending:
                    results[i] = exc
                return _done(results)
            if not (isinstance(exc, HttpResponseError) and _throttled(exc)):
                for i in pending:
                    uncertain[i] = True
            _backoff(attempt)
            continue
        if len(parts) != len(pending):
            raise RuntimeError(f"Blob Batch answered {len(parts)} of {len(pending)} deletes")
        retry = []
        for i, part in zip(pending, parts, strict=True):
            status = part.status_code
            code = str(part.headers.get("x-ms-error-code") or "")
            settled = _settle_delete(status, code, uncertain[i])
            if settled is not None:
                results[i] = settled
            elif status in _TRANSIENT_STATUS:
                uncertain[i] = uncertain[i] or status != 429
                if last:  # may have been applied: the caller must not drop the copy
                    results[i] = RuntimeError(
                        f"delete of {items[i][0]!r} still failing after retries: {status} {code}"
                    )
                else:
                    retry.append(i)
            else:
                results[i] = DeleteRefused(items[i][0], status, code)
        pending = retry
        if pending:
            _backoff(attempt)
    for i in pending:  # the account does not take Blob Batch requests
        try:
            results[i] = delete_if_unchanged(container, items[i][0], items[i][1], uncertain[i])
        except Exception as exc:
            results[i] = exc
    return _done(results)


def _done(results: list[Outcome | BaseException | None]) -> list[Outcome | BaseException]:
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def delete_quietly(container: ContainerClient, name: str) -> bool:
    """Delete `name` unconditionally; a missing blob counts as deleted. True if it existed."""
    try:
        container.delete_blob(name)
        return True
    except ResourceNotFoundError:
        return False


def move_blob(
    container: ContainerClient, source: str, dest: str, keep_source: bool = False
) -> bool:
    """Copy then delete a blob the app owns (two requests). Idempotent: a rerun after a crash
    finds the source gone and the destination in place. True if this call moved it.
    `keep_source`: copy only (the caller deletes the source itself, conditionally)."""
    src = container.get_blob_client(source)
    try:
        result = container.get_blob_client(dest).start_copy_from_url(src.url)
    except ResourceNotFoundError:
        return False
    except HttpResponseError as exc:
        if exc.status_code == 404:
            return False
        raise
    _wait_for_copy(container.get_blob_client(dest), result, source)
    if not keep_source:
        delete_quietly(container, source)
    return True


class Restore(Enum):
    RESTORED = "restored"
    EXISTS = "exists"  # the destination holds another file: left alone
    MISSING = "missing"  # the source is gone (restored by an earlier run)


def restore_blob(
    container: ContainerClient, source: str, dest: str, metadata: dict[str, str] | None = None
) -> Restore:
    """Move an app-owned blob to a place users write to, never over what is there: the copy
    is create-only (If-None-Match: *), so a file a user dropped under the same name wins and
    the source stays. The source is deleted only after its copy landed, and only the version
    that was copied."""
    src = container.get_blob_client(source)
    try:
        props = src.get_blob_properties()
    except ResourceNotFoundError:
        return Restore.MISSING
    dst = container.get_blob_client(dest)
    try:
        result = dst.start_copy_from_url(
            src.url,
            source_etag=props.etag,
            source_match_condition=MatchConditions.IfNotModified,
            match_condition=MatchConditions.IfMissing,  # If-None-Match: *
            metadata=metadata,
        )
    except ResourceExistsError:
        return Restore.EXISTS
    except ResourceNotFoundError:
        return Restore.MISSING
    except HttpResponseError as exc:
        if exc.status_code in (409, 412) and _exists(dst):
            return Restore.EXISTS
        if exc.status_code == 404:
            return Restore.MISSING
        raise
    _wait_for_copy(dst, result, source)
    try:
        src.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
    except (ResourceNotFoundError, ResourceModifiedError):
        pass  # removed or replaced meanwhile: the copy is in place either way
    return Restore.RESTORED


def _exists(blob: BlobClient) -> bool:
    try:
        blob.get_blob_properties()
    except ResourceNotFoundError:
        return False
    return True


def list_blobs(
    container: ContainerClient, prefix: str, include: list[str] | None = None
) -> Iterator[BlobProperties]:
    yield from container.list_blobs(name_starts_with=prefix, include=include)


class ConcurrentRunner:
    """A bounded pool that runs I/O calls concurrently and never one by one.

    Created once per settings and reused across invocations (threads are cheap when idle).
    """

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ml-io")

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R | BaseException]:
        """Run fn over items; results in input order, exceptions returned rather than raised."""
        futures: list[Future[R]] = [self._pool.submit(fn, item) for item in items]
        out: list[R | BaseException] = []
        for fut in futures:
            try:
                out.append(fut.result())
            except BaseException as exc:
                out.append(exc)
        return out

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        return self._pool.submit(fn, *args)


class LeaseLost(RuntimeError):
    """The lock lease was lost (expired, broken or stolen) while work was under way."""


MAX_RENEWALS_IN_FLIGHT = 3


class LeaseLock:
    """A finite blob lease used as a cross-process lock, renewed in the background.

    A tick that loses its lease notices through `lost` / `check()` and stops before claiming
    anything more; it never waits for the lease to come back.
    """

    def __init__(self, container: ContainerClient, blob_name: str, seconds: int) -> None:
        self._container = container
        self._blob_name = blob_name
        self._seconds = seconds
        self._lease: BlobLeaseClient | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        # Monotonic time until which the lease is ours for sure: the send time of the last
        # acquire or renewal that succeeded, plus the lease duration.
        self._valid_until = 0.0
        self._thread: threading.Thread | None = None
        self._renewals = 0
        self._renewals_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._blob_name

    @property
    def lease_id(self) -> str | None:
        return self._lease.id if self._lease else None

    def try_acquire(self) -> bool:
        """Take the lease, creating the lock blob on first use. False if somebody holds it."""
        blob = self._container.get_blob_client(self._blob_name)
        lease = BlobLeaseClient(blob, lease_id=str(uuid.uuid4()))
        for _ in range(2):
            try:
                sent = time.monotonic()
                lease.acquire(lease_duration=self._seconds)
                self._valid_until = sent + self._seconds
                break
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    blob.upload_blob(b"", overwrite=False)
            except HttpResponseError as exc:
                if exc.status_code == 409:  # LeaseAlreadyPresent
                    return False
                raise
        else:
            return False
        self._lease = lease
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"lease-{self._blob_name}", daemon=True
        )
        self._thread.start()
        return True

    def _renew_loop(self) -> None:
        """Start a renewal every third of the lease, each on a thread of its own, whether or not
        the previous one has answered: on overloaded storage one renewal can take seconds, and
        waiting for it before starting the next would let the lease run out between two slow
        ones. At most three are in flight; any that fails means the lease is lost."""
        interval = max(self._seconds / 3.0, 1.0)
        while not self._stop.wait(interval):
            with self._renewals_lock:
                if self._renewals >= MAX_RENEWALS_IN_FLIGHT:
                    continue
                self._renewals += 1
            threading.Thread(
                target=self._renew_once,
                args=(interval,),
                name=f"renew-{self._blob_name}",
                daemon=True,
            ).start()

    def _renew(self) -> bool:
        """One renewal. Any failure means we can no longer prove we hold the lease: it is
        marked lost, unless the renewal merely raced our own release."""
        lease = self._lease
        if lease is None or self._stop.is_set() or self._lost.is_set():
            return False
        try:
            sent = time.monotonic()
            lease.renew()
            with self._renewals_lock:
                self._valid_until = max(self._valid_until, sent + self._seconds)
        except Exception as exc:
            if not self._stop.is_set():
                logger.warning("lease on %s lost: %s", self._blob_name, exc)
                self._lost.set()
            return False
        return True

    def _renew_once(self, interval: float) -> None:
        started = time.monotonic()
        try:
            renewed = self._renew()
        finally:
            with self._renewals_lock:
                self._renewals -= 1
        took = time.monotonic() - started
        if renewed and took > interval:
            logger.warning(
                "lease on %s: renewal took %.1f s of a %s s lease (storage is slow)",
                self._blob_name,
                took,
                self._seconds,
            )

    def remaining(self) -> float:
        """Seconds for which the lease is certainly still ours (0 once it is lost)."""
        if self._lost.is_set():
            return 0.0
        return max(0.0, self._valid_until - time.monotonic())

    def holds_for(self, seconds: float) -> bool:
        """True if the lease is ours for at least `seconds` more, renewing it now if needed:
        the guard of a write that must not land after somebody else may hold the lease."""
        if self.remaining() >= seconds:
            return True
        return self._renew() and self.remaining() >= seconds

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def confirm(self) -> bool:
        """Renew now and wait for the answer. True proves that nobody has taken the lease since
        we acquired it (a lease that was broken or taken by another cannot be renewed), so
        anything written before this call is visible to whoever takes it next."""
        return self._renew()

    def check(self) -> None:
        if self._lost.is_set():
            raise LeaseLost(f"lease on {self._blob_name} was lost")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lease is not None and not self._lost.is_set():
            try:
                self._lease.release()
            except HttpResponseError as exc:
                # Somebody broke or took it after the last renewal: it was lost after all.
                logger.warning(
                    "lease on %s was lost before its release: %s",
                    self._blob_name,
                    getattr(exc, "error_code", None) or exc.status_code,
                )
                self._lost.set()
        self._lease = None

    def __enter__(self) -> LeaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
