"""Function keys: the master and function key from the settings, and the host's rules for them."""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from collections.abc import Mapping

MASTER_KEY_SETTING = "LOCALDEV_MASTER_KEY"
FUNCTION_KEY_SETTING = "LOCALDEV_FUNCTION_KEY"
KEY_FIELDS = {MASTER_KEY_SETTING: "master", FUNCTION_KEY_SETTING: "function"}


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The two keys this host knows and the host's rules for them."""

    master: str
    function: str

    def presented(self, header: str | None, query: Mapping[str, list[str]]) -> str | None:
        """The key a request carries: the ``x-functions-key`` header first, then ``code``."""
        if header is not None:
            return header
        codes = query.get("code")
        return codes[0] if codes else None

    def _is(self, presented: str | None, key: str) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), key.encode())

    def allows(self, auth_level: str, presented: str | None) -> bool:
        """Whether a request with ``presented`` may call a function at ``auth_level``."""
        if auth_level == "anonymous":
            return True
        if self._is(presented, self.master):
            return True
        return auth_level == "function" and self._is(presented, self.function)


def resolve_keys(environ: Mapping[str, str]) -> tuple[KeyRing, list[str]]:
    """Keys from the settings; unset ones are generated (and named, to be logged once)."""
    generated = []
    values = {}
    for setting in (MASTER_KEY_SETTING, FUNCTION_KEY_SETTING):
        value = environ.get(setting, "")
        if not value:
            value = secrets.token_urlsafe(32)
            generated.append(setting)
        values[setting] = value
    return KeyRing(values[MASTER_KEY_SETTING], values[FUNCTION_KEY_SETTING]), generated
