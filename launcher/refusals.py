"""Files storage refuses to move, remembered so that they cost no copy on later ticks.

A file under an immutability policy or legal hold, or one the app's role may not delete, is
copied, its delete refused and its copy removed, on every tick, forever: about twenty requests
per otherwise idle tick, and nothing in the report. So a refusal is remembered in one small
blob, `<LOCK_PREFIX>refused.json` (name -> etag, storage's error code, when), and the file is
reported under `blocked` with that code instead of being tried again, until something about it
changes: a new version (another etag), or an hour later (`RECHECK_SECONDS`), because a changed
permission or a lifted hold leaves no trace in the listing.

Cost: read only on a tick that found something claimable (an idle tick stays one List Blobs;
a tick whose only claimable files are remembered refusals costs the listing and this read, and
takes no lease; it is read at the first claimable file of the listing, which the tick reads
no further than its batches need, so only the names it listed are pruned); written only when it
changed, under the poll lease, conditionally (a lost race
just means the next tick records it again). Leases held by somebody else and the archive tier
are not remembered here: the listing itself shows them (`claim.blocked_reason`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContainerClient, ContentSettings

from launcher.batch import iso, parse_iso

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 3600
REFUSALS_BLOB = "refused.json"
# Refusals that come and go by themselves (a lease taken or released) are not remembered.
_TRANSIENT_CODES = frozenset(
    {
        "LeaseIdMissing",
        "LeaseAlreadyPresent",
        "LeaseIdMismatchWithBlobOperation",
        "LeaseLost",
        "LeaseIsBrokenAndCannotBeRenewed",
    }
)


def _bare(etag: str) -> str:
    return etag.strip('"')


@dataclass
class Refusals:
    """The remembered refusals of one watched container; `load` before use."""

    container: ContainerClient
    blob_name: str
    entries: dict[str, dict[str, str]] = field(default_factory=dict)
    etag: str | None = None
    changed: bool = False

    def load(self) -> Refusals:
        try:
            downloader = self.container.get_blob_client(self.blob_name).download_blob()
            data = downloader.readall()
            self.etag = str(downloader.properties.etag)
        except ResourceNotFoundError:
            return self
        try:
            raw: Any = json.loads(data)
            files = raw["files"]
            self.entries = {
                str(k): {"etag": str(v["etag"]), "code": str(v["code"]), "at": str(v["at"])}
                for k, v in files.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s is unreadable: starting afresh", self.blob_name)
            self.entries, self.changed = {}, True
        return self

    def reason(self, name: str, etag: str, now: datetime) -> str | None:
        """Why `name` at version `etag` is not to be tried now, or None."""
        entry = self.entries.get(name)
        if entry is None or _bare(entry["etag"]) != _bare(etag):
            return None
        at = parse_iso(entry["at"])
        if at is None or now - at >= timedelta(seconds=RECHECK_SECONDS):
            return None
        return (
            f"storage refused to move it ({entry['code']}); tried again when the file changes "
            f"or after {iso(at + timedelta(seconds=RECHECK_SECONDS))}"
        )

    def record(self, refused: dict[str, tuple[str, str]], now: datetime) -> None:
        """Remember `source -> (etag, code)` refusals from this tick."""
        for name, (etag, code) in refused.items():
            if code in _TRANSIENT_CODES:
                continue
            self.entries[name] = {"etag": _bare(etag), "code": code, "at": iso(now) or ""}
            self.changed = True

    def prune(
        self, seen: dict[str, str], first: str | None = None, last: str | None = None
    ) -> None:
        """Forget files that are gone or changed. `seen`: name -> etag of the remembered files
        a listing showed, which covered the names from `first` to `last` (None: from the start,
        to the end). A tick stops listing once it has its batches, so an entry outside that
        range is kept unless it was seen changed: it was not looked at."""
        for name in list(self.entries):
            if name in seen:
                gone = _bare(seen[name]) != _bare(self.entries[name]["etag"])
            else:
                gone = (first is None or name >= first) and (last is None or name <= last)
            if gone:
                del self.entries[name]
                self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        blob = self.container.get_blob_client(self.blob_name)
        body = json.dumps({"version": 1, "files": self.entries}, ensure_ascii=False).encode()
        # Create-only the first time, then only over the version read: never a blind write.
        conditions: dict[str, Any] = (
            {"overwrite": True, "etag": self.etag, "match_condition": MatchConditions.IfNotModified}
            if self.etag
            else {"overwrite": False}
        )
        try:
            result = blob.upload_blob(
                body,
                content_settings=ContentSettings(content_type="application/json"),
                **conditions,
            )
        except (ResourceExistsError, ResourceModifiedError):
            logger.info(
                "%s changed meanwhile: refusals are recorded on a later tick", blob.blob_name
            )
            return
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                return
            raise
        self.etag, self.changed = str(result["etag"]), False
