"""Azure's limits on container groups: per-group sizes, regional quotas, create/delete budgets,
and the resource-group and authorization checks ARM makes before ACI sees a request.

Sources (Microsoft Learn):
- "Resource availability & quota limits for ACI": per-group maximums (standard: 4 CPU / 16 GB,
  the same in a virtual network; V100 GPU: 1 GPU 6 CPU 112 GB, 2: 12/224, 4: 24/448; "deployments
  with GPU resources are not supported in an Azure virtual network deployment"), per region and
  subscription 100 standard container groups and 100 standard cores, and 300 creates per hour /
  100 per 5 minutes, with the same budget for deletes.
- Recorded ACI traffic (PUT responses): `x-ms-ratelimit-remaining-subscription-resource-requests-pt5m`
  and `...-pt1h` count down the create budget; the emulator sends the delete budget under the
  same two names on DELETE responses (no recording of those was found).
- ARM request throttling ("Understand how Azure Resource Manager throttles requests"): a spent
  resource-provider budget answers 429 `ResourceRequestsThrottled`, "Number of requests for
  action ... exceeded the limit of 'N' for time interval '00:05:00'. Please try again after 'S'
  seconds.", with Retry-After.
- Over-sized groups: ACI answers 409 `ServiceUnavailable` "The requested resource is not
  available in the location ... Resource requested: '4' CPU '16' GB memory 'Linux' OS virtual
  network" (seen in virtual-kubelet issue #592); the quota errors read "Resource type
  'Microsoft.ContainerInstance/containerGroups' container group quota 'StandardCores' exceeded
  in region 'eastus'. Limit: '10', Usage: '10' Requested: '1'." (azure-docs issue #51738).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from localdev.aci_emulator.model import RESOURCE_TYPE, ArmError, GroupSpec, normalize_location

# The documented per-group maximums (a configurable table: `group_limits`).
DEFAULT_GROUP_LIMITS: dict[str, Any] = {
    "standard": {"cpu": 4, "memoryInGB": 16},
    "gpu": {
        "V100": {
            "1": {"cpu": 6, "memoryInGB": 112},
            "2": {"cpu": 12, "memoryInGB": 224},
            "4": {"cpu": 24, "memoryInGB": 448},
        }
    },
}
FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0
WINDOWS = ((FIVE_MINUTES, "pt5m", "00:05:00"), (ONE_HOUR, "pt1h", "01:00:00"))
REMAINING_HEADER = "x-ms-ratelimit-remaining-subscription-resource-requests-"


def validate_group_limits(value: Any) -> dict[str, Any]:
    """`{"standard": {"cpu", "memoryInGB"}, "gpu": {SKU: {COUNT: {"cpu", "memoryInGB"}}}}`."""

    def pair(v: Any, where: str) -> dict[str, float]:
        if not isinstance(v, dict) or set(v) != {"cpu", "memoryInGB"}:
            raise ValueError(f"group_limits.{where} must be {{'cpu': N, 'memoryInGB': N}}")
        for key in ("cpu", "memoryInGB"):
            if isinstance(v[key], bool) or not isinstance(v[key], int | float) or v[key] <= 0:
                raise ValueError(f"group_limits.{where}.{key} must be a positive number")
        return {"cpu": float(v["cpu"]), "memoryInGB": float(v["memoryInGB"])}

    if not isinstance(value, dict) or set(value) - {"standard", "gpu"} or "standard" not in value:
        raise ValueError("group_limits must be an object with 'standard' and optional 'gpu'")
    gpu = value.get("gpu") or {}
    if not isinstance(gpu, dict):
        raise ValueError("group_limits.gpu must be an object of SKUs")
    out: dict[str, Any] = {"standard": pair(value["standard"], "standard"), "gpu": {}}
    for sku, counts in gpu.items():
        if not isinstance(counts, dict) or not all(str(c).isdigit() for c in counts):
            raise ValueError(f"group_limits.gpu.{sku} must map GPU counts to limits")
        out["gpu"][sku] = {str(c): pair(v, f"gpu.{sku}.{c}") for c, v in counts.items()}
    return out


def _fmt(value: float) -> str:
    return f"{value:g}"


def group_resources(spec: GroupSpec) -> tuple[float, float, int, str | None]:
    """(CPU, memory GB, GPU count, GPU SKU) requested by all containers of a group."""
    cpu = memory = 0.0
    gpus = 0
    sku = None
    for c in spec.properties.get("containers") or []:
        requests = ((c.get("properties") or {}).get("resources") or {}).get("requests") or {}
        cpu += float(requests.get("cpu") or 0)
        memory += float(requests.get("memoryInGB") or 0)
        gpu = requests.get("gpu")
        if isinstance(gpu, dict):
            gpus += int(gpu.get("count") or 0)
            sku = sku or gpu.get("sku")
    return cpu, memory, gpus, sku


def check_group_limits(spec: GroupSpec, limits: dict[str, Any]) -> None:
    """Refuse a group larger than one deployment may be, or a GPU group in a virtual network."""
    cpu, memory, gpus, sku = group_resources(spec)
    in_vnet = bool(spec.properties.get("subnetIds"))
    os_type = spec.properties.get("osType", "Linux")
    requested = f"Resource requested: '{_fmt(cpu)}' CPU '{_fmt(memory)}' GB memory '{os_type}' OS"
    if in_vnet:
        requested += " virtual network"
    if gpus:
        requested += f" '{gpus}' '{sku}' GPU"
    allowed: dict[str, float] | None
    if gpus:
        allowed = None if in_vnet else (limits.get("gpu") or {}).get(sku or "", {}).get(str(gpus))
    else:
        allowed = limits["standard"]
    if allowed is None or cpu > allowed["cpu"] or memory > allowed["memoryInGB"]:
        raise ArmError(
            409,
            "ServiceUnavailable",
            "The requested resource is not available in the location "
            f"'{normalize_location(spec.location)}' at this moment. Please retry with a "
            f"different resource request or in another location. {requested}",
        )


def quota_error(quota: str, region: str, limit: int, usage: float, requested: float) -> ArmError:
    return ArmError(
        400,
        "ContainerGroupQuotaReached",
        f"Resource type '{RESOURCE_TYPE}' container group quota '{quota}' exceeded in region "
        f"'{region}'. Limit: '{limit}', Usage: '{_fmt(usage)}' Requested: '{_fmt(requested)}'.",
    )


def check_quotas(
    spec: GroupSpec,
    neighbours: Iterable[GroupSpec],
    group_quota: int | None,
    cores_quota: int | None,
) -> None:
    """The regional quotas a new group must fit in: `ContainerGroups` and `StandardCores`.
    `neighbours` are the subscription's other groups in the same region; every existing group
    counts, whatever its state, until it is deleted (as in ACI: finished groups hold quota)."""
    region = normalize_location(spec.location)
    others = list(neighbours)
    if group_quota is not None and len(others) + 1 > group_quota:
        raise quota_error("ContainerGroups", region, group_quota, len(others), 1)
    cpu, _memory, gpus, _sku = group_resources(spec)
    if cores_quota is not None and not gpus:  # GPU groups count against their SKU's cores
        used = sum(group_resources(g)[0] for g in others if not group_resources(g)[2])
        if used + cpu > cores_quota:
            raise quota_error("StandardCores", region, cores_quota, used, cpu)


class RateBudgets:
    """Creates and deletes per (subscription, region) in sliding 5-minute and 1-hour windows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str, str], deque[float]] = {}

    def reset(self) -> None:
        with self._lock:
            self._events.clear()

    def _window(self, key: tuple[str, str, str], now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - ONE_HOUR:
            events.popleft()
        return events

    def take(
        self, sub: str, location: str, kind: str, limits: tuple[int | None, int | None], now: float
    ) -> dict[str, str]:
        """Spend one `kind` ("create" | "delete") or raise 429; returns the remaining-budget
        headers for the response."""
        key = (sub.lower(), normalize_location(location), kind)
        with self._lock:
            events = self._window(key, now)
            for (seconds, _suffix, interval), limit in zip(WINDOWS, limits, strict=True):
                if limit is None:
                    continue
                inside = [t for t in events if t > now - seconds]
                if len(inside) >= limit:
                    oldest = inside[-limit] if limit else now
                    retry = max(1, math.ceil(oldest + seconds - now))
                    action = "write" if kind == "create" else "delete"
                    raise ArmError(
                        429,
                        "ResourceRequestsThrottled",
                        f"Number of requests for action '{RESOURCE_TYPE}/{action}' exceeded the "
                        f"limit of '{limit}' for time interval '{interval}'. Please try again "
                        f"after '{retry}' seconds.",
                        {"Retry-After": str(retry)},
                    )
            events.append(now)
            return self._headers(events, limits, now)

    def headers(
        self, sub: str, location: str, kind: str, limits: tuple[int | None, int | None], now: float
    ) -> dict[str, str]:
        """The remaining-budget headers without spending anything (e.g. a no-op PUT)."""
        key = (sub.lower(), normalize_location(location), kind)
        with self._lock:
            return self._headers(self._window(key, now), limits, now)

    @staticmethod
    def _headers(
        events: deque[float], limits: tuple[int | None, int | None], now: float
    ) -> dict[str, str]:
        out = {}
        for (seconds, suffix, _interval), limit in zip(WINDOWS, limits, strict=True):
            if limit is not None:
                used = sum(1 for t in events if t > now - seconds)
                out[REMAINING_HEADER + suffix] = str(max(0, limit - used))
        return out


def resource_group_exists(rg: str, patterns: Iterable[str]) -> bool:
    """Resource group names are case-insensitive; patterns are fnmatch globs."""
    return any(fnmatch.fnmatchcase(rg.lower(), p.lower()) for p in patterns)


def resource_group_not_found(rg: str) -> ArmError:
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")


def authorization_failed(action: str, scope: str) -> ArmError:
    client = "00000000-0000-0000-0000-0000000000a1"  # a fake caller object id
    return ArmError(
        403,
        "AuthorizationFailed",
        f"The client '{client}' with object id '{client}' does not have authorization to "
        f"perform action '{action}' over scope '{scope}' or the scope is invalid. If access was "
        "recently granted, please refresh your credentials.",
    )


def default_group_limits() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_GROUP_LIMITS)
