"""The launch contract: `ML_*` environment variables set on the container by the launcher.

All problems are collected and reported together, each naming its variable, so a broken launch
configuration is fixed in one pass (exit code 1) before any storage call is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

REQUIRED = {
    "ML_BATCH_ID": "the batch id",
    "ML_ATTEMPT": "the attempt number",
    "ML_CONTAINER": "the blob container that holds the batch",
    "ML_BATCH_PREFIX": "the batch folder, e.g. processing/<batch>/",
    "ML_MANIFEST": "the manifest blob, e.g. processing/<batch>/_batch.json",
    "ML_OUTPUT_PREFIX": "where results go, e.g. output/<batch>/",
    "ML_STORAGE_ACCOUNT_URL": "the blob endpoint, e.g. https://<account>.blob.core.windows.net",
}
SAS_VARIABLE = "ML_STORAGE_SAS"
# Not ML_-prefixed: the launcher reserves ML_ and forwards operator variables (ACI_ENV_*) as is.
CONCURRENCY_VARIABLE = "WORKER_CONCURRENCY"
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 32


class ConfigError(Exception):
    """Every configuration problem found, one per entry, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class WorkerSettings:
    batch_id: str
    attempt: int
    container: str
    batch_prefix: str
    manifest: str
    output_prefix: str
    account_url: str
    sas: str | None = field(default=None, repr=False)  # a secret: never in repr or logs
    concurrency: int = DEFAULT_CONCURRENCY


def load_settings(env: Mapping[str, str]) -> WorkerSettings:
    """Parse and validate the contract; raise ConfigError naming every bad variable."""
    problems: list[str] = []
    values: dict[str, str] = {}
    for name, meaning in REQUIRED.items():
        value = (env.get(name) or "").strip()
        if not value:
            problems.append(f"{name} is not set ({meaning})")
        values[name] = value

    attempt = 0
    if values["ML_ATTEMPT"]:
        try:
            attempt = int(values["ML_ATTEMPT"])
        except ValueError:
            problems.append(f"ML_ATTEMPT={values['ML_ATTEMPT']!r} is not an integer")
        else:
            if attempt < 0:
                problems.append(f"ML_ATTEMPT={attempt} must not be negative")
    for name in ("ML_BATCH_PREFIX", "ML_OUTPUT_PREFIX"):
        if values[name] and not values[name].endswith("/"):
            problems.append(f"{name}={values[name]!r} must end with '/' (it is a folder prefix)")
    url = values["ML_STORAGE_ACCOUNT_URL"]
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            problems.append(f"ML_STORAGE_ACCOUNT_URL={url!r} is not an http(s) URL")
        elif parsed.query:
            problems.append(
                "ML_STORAGE_ACCOUNT_URL must not carry a query string: pass the SAS in "
                f"{SAS_VARIABLE}"
            )

    concurrency = DEFAULT_CONCURRENCY
    raw_concurrency = (env.get(CONCURRENCY_VARIABLE) or "").strip()
    if raw_concurrency:
        try:
            concurrency = int(raw_concurrency)
        except ValueError:
            problems.append(f"{CONCURRENCY_VARIABLE}={raw_concurrency!r} is not an integer")
        else:
            if not 1 <= concurrency <= MAX_CONCURRENCY:
                problems.append(
                    f"{CONCURRENCY_VARIABLE}={concurrency} must be 1..{MAX_CONCURRENCY}"
                )

    if problems:
        raise ConfigError(problems)
    return WorkerSettings(
        batch_id=values["ML_BATCH_ID"],
        attempt=attempt,
        container=values["ML_CONTAINER"],
        batch_prefix=values["ML_BATCH_PREFIX"],
        manifest=values["ML_MANIFEST"],
        output_prefix=values["ML_OUTPUT_PREFIX"],
        account_url=url.rstrip("/"),
        sas=clean_sas(env.get(SAS_VARIABLE)),
        concurrency=concurrency,
    )


def clean_sas(raw: str | None) -> str | None:
    """The SAS token without whitespace or a leading '?'; None when unset (use identity)."""
    sas = (raw or "").strip().lstrip("?")
    return sas or None
