"""Failures an operator can fix, told in one line that names what to check.

A missing container, storage that refuses the app's credentials or cannot be reached, a
resource group that does not exist: each used to surface as a 45-line traceback that never
named the container, or as an empty 500. `explain` turns such an exception into a `Problem`
(code, one-line message, HTTP status); the CLIs print it and exit with EXIT_ENVIRONMENT, the
ops endpoints answer it as JSON, and the timers log it once at error level. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from config import ConfigError, Settings
from launcher.aci import AciError

logger = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_CONFIG = 2  # invalid settings (config.py names every bad one)
EXIT_ENVIRONMENT = 4  # storage or ARM refused or could not be reached: see the message

_AUTH_CODES = frozenset(
    {
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "AuthorizationSourceIPMismatch",
        "AuthorizationProtocolMismatch",
        "AuthorizationResourceTypeMismatch",
        "KeyBasedAuthenticationNotPermitted",
        "InvalidAuthenticationInfo",
        "NoAuthenticationInformation",
    }
)


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    status: int  # what an ops endpoint answers

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


def storage_endpoint(settings: Settings) -> str:
    """Where the app reaches storage, for messages (never the key)."""
    if settings.storage_account_url:
        return settings.storage_account_url
    parts = dict(
        p.split("=", 1) for p in (settings.storage_connection_string or "").split(";") if "=" in p
    )
    lowered = {k.strip().lower(): v.strip() for k, v in parts.items()}
    if lowered.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1 (Azurite)"
    if "blobendpoint" in lowered:
        return lowered["blobendpoint"]
    return f"account {settings.account_name}"


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)
    if code is None and exc.error is not None:
        code = exc.error.code
    return str(getattr(code, "value", code) or exc.status_code or "")


def explain(exc: BaseException, settings: Settings) -> Problem | None:
    """The operator-facing Problem behind `exc`, or None if it is not one (a bug)."""
    account, container = settings.account_name, settings.watch_container
    where = storage_endpoint(settings)
    if isinstance(exc, AciError):
        rg = settings.resource_group
        if exc.code == "ResourceGroupNotFound":
            return Problem(
                exc.code,
                f"resource group {rg!r} does not exist in subscription {settings.subscription_id}:"
                " create it or correct ACI_RESOURCE_GROUP",
                503,
            )
        if exc.code in ("AuthorizationFailed", "InvalidAuthenticationToken") or exc.status in (
            401,
            403,
        ):
            return Problem(
                exc.code,
                f"ARM refused the app's identity on resource group {rg!r} ({exc.code}): grant it "
                "the Contributor role there (scripts/deploy.sh does) or check AZURE_CLIENT_ID",
                503,
            )
        return None
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        code = _code(exc)
        if code == "ContainerNotFound":
            return Problem(
                code,
                f"storage container {container!r} does not exist in {where}: create it "
                f"(az storage container create --account-name {account} -n {container}) "
                "or correct WATCH_CONTAINER",
                503,
            )
        if code in _AUTH_CODES or exc.status_code in (401, 403):
            return _auth_problem(code or str(exc.status_code), where, settings)
        return None
    if isinstance(exc, ClientAuthenticationError):
        code = _code(exc) if exc.status_code else "CredentialUnavailable"
        return _auth_problem(code, where, settings)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return Problem(
            "StorageUnreachable",
            f"cannot reach storage at {where} ({first}): is it running (locally: make run), and "
            "do DNS and the private endpoint resolve from here?",
            503,
        )
    return None


def _auth_problem(code: str, where: str, settings: Settings) -> Problem:
    if settings.storage_connection_string:
        check = "check STORAGE_CONNECTION_STRING (key or SAS) and the account's firewall"
    else:
        check = (
            "grant the app's managed identity 'Storage Blob Data Contributor' on the account "
            "(AZURE_CLIENT_ID selects a user-assigned one) and check the account's firewall"
        )
    return Problem(code, f"storage at {where} refused the app's credentials ({code}): {check}", 503)


def run_logged(what: str, load: Callable[[], Settings], work: Callable[[Settings], T]) -> T | None:
    """Run a timer's work; a configuration error or an operator Problem is logged once at
    error level, without a traceback, instead of raising (the next invocation tries again)."""
    try:
        settings = load()
    except ConfigError as exc:
        logger.error("%s: not run: %s", what, exc)
        return None
    try:
        return work(settings)
    except Exception as exc:
        problem = explain(exc, settings)
        if problem is None:
            raise
        logger.error("%s: not run: %s", what, problem.message)
        return None
