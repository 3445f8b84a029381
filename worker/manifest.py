"""Reading the batch manifest, the worker's only list of inputs.

The worker never lists blobs: its SAS may lack the list permission, and the manifest is the
launcher's single source of truth for what the batch contains. Unknown keys are ignored so the
launcher can grow the manifest without breaking deployed worker images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SUPPORTED_VERSION = 1


class ManifestError(Exception):
    """The manifest cannot be used at all (the launch contract is broken: exit 1)."""


@dataclass(frozen=True)
class InputFile:
    name: str  # the user's relative path, for display and type detection
    blob: str  # relative to the batch prefix; may be `_renamed/<hex>`
    source: str | None
    size: int | None

    def unsafe_reason(self) -> str | None:
        """Why `blob` cannot be joined under the batch prefix, or None when it can."""
        if not self.blob:
            return "empty blob path"
        if self.blob.startswith("/") or "\\" in self.blob:
            return f"blob path {self.blob!r} is not a plain relative path"
        if any(seg in ("", ".", "..") for seg in self.blob.split("/")):
            return f"blob path {self.blob!r} has an empty, '.' or '..' segment"
        return None


@dataclass(frozen=True)
class Manifest:
    batch_id: str | None
    files: list[InputFile]
    ready_marker: str | None
    state: str | None = None
    attempt: int | None = None
    params_file: str | None = None

    def is_marker(self, f: InputFile) -> bool:
        """A ready marker (`_READY` or `.../_READY`) only signals a complete folder, and a
        folder's parameters file (`<folder>/_params.json`) reaches the container as ML_PARAM_*
        variables: neither is an input."""
        marker, params = self.ready_marker, self.params_file
        if params and f.name.count("/") == 1 and f.name.split("/", 1)[1] == params:
            return True
        return bool(marker) and (f.name == marker or f.name.endswith("/" + str(marker)))


def parse_manifest(data: bytes, expected_batch_id: str) -> Manifest:
    """Validate the parts the worker relies on; raise ManifestError naming the first problem."""
    try:
        raw: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError("not a JSON object")
    version = raw.get("version")
    if version != SUPPORTED_VERSION:
        raise ManifestError(
            f"unsupported version {version!r} (this worker understands {SUPPORTED_VERSION})"
        )
    batch_id = raw.get("batch_id")
    if batch_id is not None and batch_id != expected_batch_id:
        raise ManifestError(
            f"batch_id {batch_id!r} does not match ML_BATCH_ID {expected_batch_id!r}"
        )
    files = raw.get("files")
    if not isinstance(files, list):
        raise ManifestError("'files' is missing or not a list")
    entries: list[InputFile] = []
    for i, item in enumerate(files):
        if not isinstance(item, dict):
            raise ManifestError(f"files[{i}] is not an object")
        name, blob = item.get("name"), item.get("blob")
        if not isinstance(blob, str):
            raise ManifestError(f"files[{i}] has no string 'blob'")
        if not isinstance(name, str) or not name:
            name = blob
        size = item.get("size")
        source = item.get("source")
        entries.append(
            InputFile(
                name=name,
                blob=blob,
                source=source if isinstance(source, str) else None,
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    marker, params = raw.get("ready_marker"), raw.get("params_file")
    state, attempt = raw.get("state"), raw.get("attempt")
    return Manifest(
        batch_id=batch_id if isinstance(batch_id, str) else None,
        files=entries,
        ready_marker=marker if isinstance(marker, str) and marker else None,
        state=state if isinstance(state, str) else None,
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        params_file=params if isinstance(params, str) and params else None,
    )
