"""Process one batch: read the manifest, analyse inputs concurrently, write results and summary.

Exit codes (the janitor records them on the batch):
  0  every input processed
  1  configuration error: a missing/invalid ML_* variable or an unusable manifest
  2  at least one input is unreadable (missing blob, invalid UTF-8 in a text type, invalid JSON)
  3  storage error (authorization, network, throttling after retries): a relaunch may succeed
  4  unexpected internal error (a bug)
  5  not run: this attempt is not the batch's current one, or it already started once (a late
     or repeated deployment of the same container group); nothing was read or written
The summary is written for codes 1 (once the environment is valid), 2 and 3 whenever storage
allows it, so every failure can be inspected under the output prefix. A failure also writes
`_error.json` there (the contract the janitor reads to name a failed batch's cause; see
ERROR_NAME and worker/README.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from worker import __version__
from worker.analysis import InputUnreadable, analyze, describe, human_size
from worker.manifest import InputFile, Manifest, ManifestError, parse_manifest
from worker.settings import ConfigError, WorkerSettings, clean_sas, load_settings

logger = logging.getLogger("worker")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_UNREADABLE = 2
EXIT_STORAGE = 3
EXIT_INTERNAL = 4
EXIT_NOT_CURRENT = 5

MAX_BLOB_NAME = 1024
CHUNK_SIZE = 4 * 1024 * 1024  # per-request download size: bounds memory per concurrent input
PROGRESS_EVERY = 256 * 1024 * 1024
SUMMARY_NAME = "_summary.json"
# The failure report the janitor reads into the batch's reason: {"version", "attempt",
# "exit_code", "reason", "files": [{"name", "error"}]}; kept small (the janitor reads 64 KiB).
ERROR_NAME = "_error.json"
MAX_ERROR_FILES = 20
RESULTS_DIR = "_results"
JSON_CONTENT = ContentSettings(content_type="application/json; charset=utf-8")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


class RedactingFormatter(logging.Formatter):
    """Removes secrets from every formatted line, tracebacks included, whatever logged them."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def sas_secrets(sas: str | None) -> list[str]:
    """The SAS and its signature in every encoding a log line could show, for redaction."""
    if not sas:
        return []
    secrets = [sas, unquote(sas)]
    for part in sas.split("&"):
        if part.startswith("sig="):
            signature = unquote(part[4:])
            secrets += [part[4:], signature, quote(signature, safe="")]
    return secrets


# The worker's own copy of its log (a temporary file), uploaded next to the batch at the end:
# ACI keeps only the last 16 KB / 1,000 lines of a stopped container's log, which is what the
# janitor saves.
full_log_path: str | None = None


def setup_logging(secrets: list[str]) -> None:
    # Container logs are read as UTF-8; user file names must survive whatever the locale is.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingFormatter(secrets))
    global full_log_path  # one per process, like the root logger
    fd, full_log_path = tempfile.mkstemp(prefix="worker-", suffix=".log")
    os.close(fd)
    full = logging.FileHandler(full_log_path, encoding="utf-8", errors="backslashreplace")
    full.setFormatter(RedactingFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler, full]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # SDK warnings go through the redacting handler too
    # The SDK's per-request logging is noise in container logs; its warnings still show.
    logging.getLogger("azure").setLevel(logging.WARNING)


def result_blob_name(output_prefix: str, blob: str) -> tuple[str, bool]:
    """`<output>/<blob>.result.json`, or a hashed name when that would exceed 1,024 chars."""
    name = f"{output_prefix}{blob}.result.json"
    if len(name) <= MAX_BLOB_NAME:
        return name, False
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
    return f"{output_prefix}{RESULTS_DIR}/{digest}.result.json", True


def storage_error_text(exc: AzureError) -> str:
    """A short, secret-free description of a storage failure."""
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None) or (exc.reason or "error")
        return f"storage error {exc.status_code} {code}"
    return f"storage error {type(exc).__name__}"


@dataclass
class Outcome:
    """What happened to one input; `kind` is ok, unreadable or storage."""

    entry: InputFile
    input_blob: str
    result_blob: str
    hashed_name: bool
    kind: str = "ok"
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "name": self.entry.name,
            "blob": self.entry.blob,
            "source": self.entry.source,
            "input": self.input_blob,
            "result": self.result_blob,
            "status": "ok" if self.kind == "ok" else "error",
        }
        if self.error:
            rec["error"] = self.error
            rec["error_kind"] = self.kind
        rec.update(self.stats)
        rec["seconds"] = round(self.seconds, 3)
        return rec


class BatchRun:
    """One attempt at one batch."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        self.started = utcnow()
        self.credential: Any = None
        self.skipped = False  # not the current attempt, or a repeated start: nothing done
        self.first_exit: int | None = None  # a repeated start's first run's exit code

    def client(self) -> BlobServiceClient:
        """SAS when the launcher passed one, else the container's managed identity."""
        if self.s.sas:
            credential: Any = AzureSasCredential(self.s.sas)
            logger.info("storage access: SAS from ML_STORAGE_SAS")
        else:
            from azure.identity import DefaultAzureCredential  # noqa: PLC0415 (only when used)

            self.credential = credential = DefaultAzureCredential()
            logger.info(
                "storage access: managed identity (AZURE_CLIENT_ID %s)",
                "set" if os.environ.get("AZURE_CLIENT_ID") else "not set",
            )
        return BlobServiceClient(
            self.s.account_url,
            credential=credential,
            max_single_get_size=CHUNK_SIZE,
            max_chunk_get_size=CHUNK_SIZE,
        )

    def run(self) -> int:
        s = self.s
        logger.info(
            "batch %s attempt %d: worker %s starting, manifest %s",
            s.batch_id,
            s.attempt,
            __version__,
            s.manifest,
        )
        service = self.client()
        try:
            container = service.get_container_client(s.container)
            code = self._run(container)
            if not self.skipped:
                self._record_exit(container, code)
                self._upload_full_log(container)
            return code
        finally:
            service.close()
            if self.credential is not None:
                self.credential.close()

    def _run(self, container: ContainerClient) -> int:
        s = self.s
        try:
            data = container.get_blob_client(s.manifest).download_blob().readall()
            manifest = parse_manifest(data, s.batch_id)
        except ResourceNotFoundError:
            # The batch left processing/ (finished, or released): this is a late or repeated
            # deployment of a group whose work is done. Nothing is read or written, so the
            # finished batch's outputs stay as they are (see `_not_current`).
            self.skipped = True
            logger.warning(
                "batch %s attempt %d: not run: manifest %s not found: the batch has moved on "
                "(exit %d)",
                s.batch_id,
                s.attempt,
                s.manifest,
                EXIT_NOT_CURRENT,
            )
            return EXIT_NOT_CURRENT
        except ManifestError as exc:
            return self._abort(container, EXIT_CONFIG, f"manifest {s.manifest} is unusable: {exc}")
        except AzureError as exc:
            return self._abort(
                container,
                EXIT_STORAGE,
                f"cannot read manifest {s.manifest}: {storage_error_text(exc)}",
            )

        try:
            stale = self._not_current(container, manifest)
        except AzureError as exc:
            return self._abort(
                container,
                EXIT_STORAGE,
                f"cannot record the attempt's start: {storage_error_text(exc)}",
            )
        if stale:
            self.skipped = True
            code = EXIT_NOT_CURRENT if self.first_exit is None else self.first_exit
            logger.warning(
                "batch %s attempt %d: not run: %s (exit %d%s)",
                s.batch_id,
                s.attempt,
                stale,
                code,
                "" if self.first_exit is None else ", the first run's exit code",
            )
            return code
        inputs, markers, duplicates = self._plan(manifest)
        logger.info(
            "batch %s attempt %d: %d inputs (%d ready markers skipped)",
            s.batch_id,
            s.attempt,
            len(inputs),
            len(markers),
        )
        workers = max(1, min(s.concurrency, len(inputs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="input") as pool:
            outcomes = list(pool.map(lambda f: self._process(container, f), inputs))

        unreadable = [o for o in outcomes if o.kind == "unreadable"]
        storage = [o for o in outcomes if o.kind == "storage"]
        code = EXIT_STORAGE if storage else EXIT_UNREADABLE if unreadable else EXIT_OK
        summary = self._summary(
            manifest, outcomes, markers=markers, duplicates=duplicates, code=code
        )
        if not self._upload(container, s.output_prefix + SUMMARY_NAME, summary, "summary"):
            code = EXIT_STORAGE
        if code != EXIT_OK:
            failed = storage + unreadable
            if failed:
                what = "unreadable" if failed[0].kind == "unreadable" else "not readable (storage)"
                reason = f"input {failed[0].entry.name} is {what}: {failed[0].error}"
            else:
                reason = f"cannot write {s.output_prefix}{SUMMARY_NAME}"
            if len(failed) > 1:
                reason += f" (and {len(failed) - 1} more input(s))"
            self._report_error(container, code, reason, failed)
        totals = summary["totals"]
        if code == EXIT_OK:
            logger.info(
                "batch %s attempt %d: succeeded: %d inputs, %s, %d lines, %d words",
                s.batch_id,
                s.attempt,
                totals["inputs"],
                human_size(totals["bytes"]),
                totals["lines"],
                totals["words"],
            )
        else:
            logger.error(
                "FAILED: batch %s attempt %d: %d of %d inputs failed (%d unreadable, %d storage "
                "errors), exit %d",
                s.batch_id,
                s.attempt,
                totals["failed"],
                totals["inputs"],
                len(unreadable),
                len(storage),
                code,
            )
        return code

    def _not_current(self, container: ContainerClient, manifest: Manifest) -> str | None:
        """The exactly-once contract of a container (docs/container.md): run
        only if this is the batch's current attempt, and only once. ACI runs a group again when
        a PUT for it arrives after it terminated (it is deployed as new) and restarts it when a
        PUT changes it; a launcher that stalled past its lease may send such a late PUT. So the
        worker checks the manifest (state `launched`, attempt = ML_ATTEMPT) and then claims the
        attempt with a create-only marker blob next to the batch; a second start of the same
        attempt finds the marker and does nothing. Returns why not to run, or None."""
        s = self.s
        if manifest.state is not None and (
            manifest.state != "launched" or manifest.attempt != s.attempt
        ):
            return (
                f"the batch is {manifest.state}, attempt {manifest.attempt}; "
                f"this is attempt {s.attempt}"
            )
        marker = f"{s.batch_prefix}_logs/attempt-{s.attempt}.started"
        try:
            container.upload_blob(marker, iso(utcnow()).encode(), overwrite=False)
        except ResourceExistsError:
            self.first_exit = self._first_exit(container)
            return f"attempt {s.attempt} already started once ({marker} exists)"
        return None

    def _exit_marker(self) -> str:
        return f"{self.s.batch_prefix}_logs/attempt-{self.s.attempt}.exit"

    def _record_exit(self, container: ContainerClient, code: int) -> None:
        """Best effort: a repeated start of this attempt repeats this exit code (see
        `_not_current`), so the janitor records the outcome of the run that did the work."""
        try:
            container.upload_blob(self._exit_marker(), str(code).encode(), overwrite=True)
        except AzureError as exc:
            logger.warning("could not record the exit code: %s", storage_error_text(exc))

    def _upload_full_log(self, container: ContainerClient) -> None:
        """Best effort: the complete log of this attempt as `_logs/attempt-<n>.worker.log`."""
        name = f"{self.s.batch_prefix}_logs/attempt-{self.s.attempt}.worker.log"
        for handler in logging.getLogger().handlers:
            handler.flush()
        if full_log_path is None:
            return
        try:
            with open(full_log_path, "rb") as data:
                container.upload_blob(name, data, overwrite=True)
        except (AzureError, OSError) as exc:
            logger.warning("could not save the full log: %s", exc)

    def _first_exit(self, container: ContainerClient) -> int | None:
        try:
            data = container.get_blob_client(self._exit_marker()).download_blob().readall()
            return int(data.decode().strip())
        except (AzureError, ValueError, UnicodeDecodeError):
            return None

    def _plan(self, manifest: Manifest) -> tuple[list[InputFile], list[InputFile], list[InputFile]]:
        """Inputs to process, ready markers to skip, and repeated blobs (processed once)."""
        inputs: list[InputFile] = []
        markers: list[InputFile] = []
        duplicates: list[InputFile] = []
        seen: set[str] = set()
        for f in manifest.files:
            if manifest.is_marker(f):
                markers.append(f)
            elif f.blob in seen:
                duplicates.append(f)
                logger.warning("manifest lists blob %s more than once: processed once", f.blob)
            else:
                seen.add(f.blob)
                inputs.append(f)
        return inputs, markers, duplicates

    def _process(self, container: ContainerClient, entry: InputFile) -> Outcome:
        s = self.s
        result_blob, hashed = result_blob_name(s.output_prefix, entry.blob)
        out = Outcome(entry, s.batch_prefix + entry.blob, result_blob, hashed)
        began = time.monotonic()
        unsafe = entry.unsafe_reason()
        if unsafe:
            out.kind, out.error = "unreadable", f"unsafe manifest entry: {unsafe}"
        else:
            out.kind, out.error, out.stats = self._analyze(container, out.input_blob, entry)
        out.seconds = time.monotonic() - began

        if out.kind == "ok":
            logger.info("processed %s: %s", entry.name, describe(out.stats))
        elif out.kind == "unreadable":
            logger.error("FAILED: input %s is unreadable: %s", entry.name, out.error)
        else:
            logger.error("FAILED: input %s could not be read: %s", entry.name, out.error)

        result = {
            "version": 1,
            "batch_id": s.batch_id,
            "attempt": s.attempt,
            "processed_at": iso(utcnow()),
            **out.record(),
        }
        written = self._upload(container, result_blob, result, f"result for {entry.name}")
        if not written and out.kind == "ok":
            out.kind, out.error = "storage", "result could not be written"
        return out

    def _analyze(
        self, container: ContainerClient, blob: str, entry: InputFile
    ) -> tuple[str, str | None, dict[str, Any]]:
        next_report = PROGRESS_EVERY

        def progress(done: int) -> None:
            nonlocal next_report
            if done >= next_report:
                logger.info("reading %s: %s so far", entry.name, human_size(done))
                next_report += PROGRESS_EVERY

        try:
            downloader = container.get_blob_client(blob).download_blob(max_concurrency=1)
            return "ok", None, analyze(entry.name, downloader.chunks(), progress)
        except InputUnreadable as exc:
            return "unreadable", str(exc), {}
        except ResourceNotFoundError:
            return "unreadable", f"blob {blob} not found (404)", {}
        except ClientAuthenticationError as exc:
            return (
                "storage",
                storage_error_text(exc) + " (check the SAS or the identity's role)",
                {},
            )
        except AzureError as exc:
            return "storage", storage_error_text(exc), {}

    def _upload(
        self, container: ContainerClient, name: str, doc: dict[str, Any], what: str
    ) -> bool:
        data = json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")
        try:
            container.get_blob_client(name).upload_blob(
                data, overwrite=True, content_settings=JSON_CONTENT
            )
        except AzureError as exc:
            logger.error("FAILED: cannot write %s to %s: %s", what, name, storage_error_text(exc))
            return False
        return True

    def _summary(
        self,
        manifest: Manifest | None,
        outcomes: list[Outcome],
        *,
        markers: list[InputFile],
        duplicates: list[InputFile],
        code: int,
        fatal: str | None = None,
    ) -> dict[str, Any]:
        s = self.s
        finished = utcnow()
        ok = [o for o in outcomes if o.kind == "ok"]
        texts = [o.stats["text"] for o in ok if "text" in o.stats]
        summary: dict[str, Any] = {
            "version": 1,
            "batch_id": s.batch_id,
            "attempt": s.attempt,
            "status": "succeeded" if code == EXIT_OK else "failed",
            "exit_code": code,
            "started_at": iso(self.started),
            "finished_at": iso(finished),
            "duration_seconds": round((finished - self.started).total_seconds(), 3),
            "worker": {
                "version": __version__,
                "python": platform.python_version(),
                "host": platform.node(),
            },
            "manifest": s.manifest,
            "input_prefix": s.batch_prefix,
            "output_prefix": s.output_prefix,
            "totals": {
                "inputs": len(outcomes),
                "succeeded": len(ok),
                "failed": len(outcomes) - len(ok),
                "skipped_markers": len(markers),
                "bytes": sum(o.stats.get("size", 0) for o in ok),
                "text_inputs": len(texts),
                "lines": sum(t["lines"] for t in texts),
                "words": sum(t["words"] for t in texts),
                "csv_rows": sum(o.stats["csv"]["rows"] for o in ok if "csv" in o.stats),
            },
            "files": [o.record() for o in outcomes],
            "errors": [
                {"name": o.entry.name, "blob": o.entry.blob, "kind": o.kind, "error": o.error}
                for o in outcomes
                if o.kind != "ok"
            ],
            "skipped": [{"name": f.name, "blob": f.blob, "reason": "ready marker"} for f in markers]
            + [{"name": f.name, "blob": f.blob, "reason": "duplicate blob"} for f in duplicates],
            # Results whose natural name would pass the 1,024-character limit.
            "hashed_result_names": {o.entry.blob: o.result_blob for o in outcomes if o.hashed_name},
        }
        if manifest is not None and manifest.ready_marker:
            summary["ready_marker"] = manifest.ready_marker
        if fatal:
            summary["error"] = fatal
        return summary

    def _abort(self, container: ContainerClient, code: int, reason: str) -> int:
        """Fail before any input was touched, still leaving a summary when storage allows."""
        logger.error("FAILED: batch %s attempt %d: %s", self.s.batch_id, self.s.attempt, reason)
        summary = self._summary(None, [], markers=[], duplicates=[], code=code, fatal=reason)
        self._upload(container, self.s.output_prefix + SUMMARY_NAME, summary, "summary")
        self._report_error(container, code, reason, [])
        return code

    def _report_error(
        self, container: ContainerClient, code: int, reason: str, failed: list[Outcome]
    ) -> None:
        """Write the failure report the janitor turns into the batch's reason (best effort)."""
        doc = {
            "version": 1,
            "attempt": self.s.attempt,
            "exit_code": code,
            "reason": reason,
            "files": [{"name": o.entry.name, "error": o.error} for o in failed[:MAX_ERROR_FILES]],
        }
        self._upload(container, self.s.output_prefix + ERROR_NAME, doc, "error report")


def main(env: dict[str, str] | None = None) -> int:
    """Run the worker; returns the process exit code."""
    environ = dict(os.environ) if env is None else env
    setup_logging(sas_secrets(clean_sas(environ.get("ML_STORAGE_SAS"))))
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        for problem in exc.problems:
            logger.error("configuration error: %s", problem)
        logger.error("FAILED: configuration error, exit %d", EXIT_CONFIG)
        return EXIT_CONFIG
    try:
        return BatchRun(settings).run()
    except Exception:
        logger.exception("FAILED: internal error, exit %d", EXIT_INTERNAL)
        return EXIT_INTERNAL
