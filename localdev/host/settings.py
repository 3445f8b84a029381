"""App settings for the local host: local.settings.json, ``%NAME%`` references and host.json.

Settings go into ``os.environ`` before the app is imported, because the app reads them at
import or first use; variables already in the environment win, as with Core Tools.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from localdev.host.errors import HostError

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")

DEFAULT_ROUTE_PREFIX = "api"


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """The parts of local.settings.json this host uses."""

    values: dict[str, str]
    local_http_port: int | None = None


def read_local_settings(path: Path) -> LocalSettings:
    """Parse local.settings.json; Core Tools' layout, plain-text values only."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise HostError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise HostError(f"{path}: cannot read ({exc.strerror})") from exc
    if not isinstance(raw, dict):
        raise HostError(f"{path}: expected a JSON object with a 'Values' object")
    if raw.get("IsEncrypted"):
        raise HostError(
            f"{path}: IsEncrypted is true; this host reads plain-text values only "
            "(decrypt with `func settings decrypt` or set IsEncrypted to false)"
        )
    raw_values = raw.get("Values") or {}
    if not isinstance(raw_values, dict):
        raise HostError(f"{path}: 'Values' must be an object of strings")
    values: dict[str, str] = {}
    for name, value in raw_values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            values[name] = "True" if value else "False"  # what Core Tools' JSON reader makes of it
        elif isinstance(value, (str, int, float)):
            values[name] = str(value)
        else:
            raise HostError(f"{path}: Values.{name} must be a string, not {type(value).__name__}")
    port: int | None = None
    host_section = raw.get("Host")
    if isinstance(host_section, dict) and host_section.get("LocalHttpPort") is not None:
        try:
            port = int(host_section["LocalHttpPort"])
        except (TypeError, ValueError) as exc:
            raise HostError(f"{path}: Host.LocalHttpPort must be a port number") from exc
    return LocalSettings(values=values, local_http_port=port)


def apply_settings(values: Mapping[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Copy settings into the environment unless already set there; return the names copied.

    Existing variables win so a one-off ``NAME=value python -m localdev.host`` overrides the
    file, as with Core Tools.
    """
    applied = []
    for name, value in values.items():
        if name in environ:
            logger.debug("Setting %s: keeping the value already in the environment", name)
            continue
        environ[name] = value
        applied.append(name)
    if "TZ" in applied and hasattr(time, "tzset"):
        time.tzset()  # schedules follow the local time zone, as in the host
    return applied


_SETTING_REF = re.compile(r"%([^%]+)%")


def resolve_setting_references(value: str, environ: Mapping[str, str], *, where: str) -> str:
    """Replace ``%NAME%`` with the app setting, like the host's name resolver."""

    def _lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        resolved = environ.get(name)
        if resolved is None:
            raise HostError(
                f"Error indexing method '{where}': '%{name}%' does not resolve to a value "
                f"(app setting {name} is neither in the environment nor in local.settings.json Values)"
            )
        return resolved

    return _SETTING_REF.sub(_lookup, value)


def read_route_prefix(app_dir: Path) -> str:
    """``extensions.http.routePrefix`` from host.json (default ``api``)."""
    host_json = app_dir / "host.json"
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    try:
        data = json.loads(host_json.read_text(encoding="utf-8-sig"))
        prefix = data.get("extensions", {}).get("http", {}).get("routePrefix")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise HostError(f"{host_json}: cannot read extensions.http.routePrefix ({exc})") from exc
    return DEFAULT_ROUTE_PREFIX if prefix is None else str(prefix).strip("/")
