"""What an attempt used and what it probably cost: vCPU-seconds, GB-seconds, GPU-seconds and an
estimate from the per-second prices in settings (PRICE_VCPU_SECOND, PRICE_GB_SECOND,
PRICE_GPU_SECOND_V100; defaults and their source: docs/notifications.md).

What is measured: ACI bills a container group from the start of its image pull until it stops.
The app does not see the pull start, so an attempt's billed time is taken from the manifest's
`launched_at` (the moment ARM accepted the group's PUT, on storage's clock) to the container's
finish time as ACI reports it (or, without one, the moment the janitor recorded the attempt:
a timeout, a vanished group, a failed pull). That includes ACI's scheduling before the pull,
so the estimate errs on the high side by a few seconds per attempt, never low; for a vanished
group or a failed pull it is an upper bound (ended when the janitor noticed). Resources are
the group's own (its spec as ARM returns it), so a batch that ran with other resources than
today's settings is priced by what it ran with.

The totals are an estimate for dashboards and chargeback, not an invoice: no discounts,
reservations, spot prices, taxes, or the per-group public IP.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from config import Settings

CURRENCY = "USD"
USAGE_FIELDS = ("vcpu_seconds", "gb_seconds", "gpu_seconds", "cost")


@dataclass(frozen=True)
class Resources:
    """What one container group requested (ACI bills requests, not use)."""

    cpu: float
    memory_gb: float
    gpu_count: int = 0
    gpu_sku: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> Resources:
        return cls(s.cpu, s.memory_gb, s.gpu_count if s.gpu_sku else 0, s.gpu_sku)

    @classmethod
    def from_group(cls, group: Any) -> Resources | None:
        """Summed over the group's containers (one here); None if ARM did not say."""
        total_cpu, total_memory, gpus, sku = 0.0, 0.0, 0, None
        for container in getattr(group, "containers", None) or []:
            requests = getattr(getattr(container, "resources", None), "requests", None)
            if requests is None:
                return None
            total_cpu += float(requests.cpu or 0)
            total_memory += float(requests.memory_in_gb or 0)
            gpu = getattr(requests, "gpu", None)
            if gpu is not None and gpu.count:
                gpus += int(gpu.count)
                sku = str(gpu.sku)
        if not total_cpu and not total_memory:
            return None
        return cls(total_cpu, total_memory, gpus, sku)


def billed_seconds(
    launched_at: datetime | None, started_at: datetime | None, end: datetime
) -> float | None:
    """Seconds from the launch (or, without one, the container's start) to `end`."""
    begin = launched_at or started_at
    if begin is None:
        return None
    return max(0.0, round((end - begin).total_seconds(), 1))


def usage(s: Settings, resources: Resources, seconds: float) -> dict[str, float]:
    """vCPU-, GB- and GPU-seconds of one attempt and its estimated cost at the settings' prices."""
    gpu_price = dict(s.price_gpu_second).get(resources.gpu_sku or "", 0.0)
    vcpu = resources.cpu * seconds
    gb = resources.memory_gb * seconds
    gpu = resources.gpu_count * seconds
    cost = vcpu * s.price_vcpu_second + gb * s.price_gb_second + gpu * gpu_price
    return {
        "vcpu_seconds": round(vcpu, 1),
        "gb_seconds": round(gb, 1),
        "gpu_seconds": round(gpu, 1),
        "cost": round(cost, 6),
    }


def total(attempts: list[Any]) -> dict[str, Any]:
    """The batch's sum over its attempts (records without usage count as zero)."""
    sums = dict.fromkeys(USAGE_FIELDS, 0.0)
    for rec in attempts:
        for key in USAGE_FIELDS:
            sums[key] += float(getattr(rec, key, None) or 0.0)
    out: dict[str, Any] = {k: round(v, 6 if k == "cost" else 1) for k, v in sums.items()}
    out["currency"] = CURRENCY
    return out
