"""Row 5: ten times the files waiting, all claimed in one tick, in bounded memory, under a
lease held throughout, in time growing at most linearly."""

from __future__ import annotations

from .claim import claim_tick
from .common import PEAK_RSS_TARGET_MB, Row
from .harness import Bench


def lease_held(
    samples: list[tuple[float, str]], start: float, end: float, margin: float = 1.0
) -> tuple[bool, dict[str, int]]:
    """Was the poll lease held from the first sample that saw it until the tick ended?

    Samples taken after the first `leased` one and more than `margin` seconds before the tick
    returned must all be `leased/locked` (the tick releases the lease in its last moments)."""
    inside = [(t, s) for t, s in samples if start <= t <= end - margin]
    first = next((i for i, (_, s) in enumerate(inside) if s == "leased/locked"), None)
    if first is None:
        return False, {"samples": len(inside), "leased": 0, "gaps": 0}
    after = inside[first:]
    gaps = sum(1 for _, s in after if s != "leased/locked")
    detail = {"samples": len(inside), "leased": len(after) - gaps, "gaps": gaps}
    return gaps == 0, detail


def run(bench: Bench) -> None:
    cfg = bench.cfg
    n, n0 = cfg.scale_files, cfg.claim_files
    print(f"5. scale: {n0:,} then {n:,} files waiting, one tick each, same store size")
    small = claim_tick(bench, n0, ballast=n - n0)
    big = claim_tick(bench, n, sample_lease=True)
    bench.raw.update(scale_small=small, scale=big)
    report = big["report"]
    claimed = big["files"]
    one_tick = claimed == n and big["left_in_incoming"] == 0
    bench.add(Row("scale_all_claimed", "5", f"{n:,} files waiting: claimed in one tick", claimed, "files", f"= {n:,}, none left", one_tick, True))  # fmt: skip
    peak = big["peak_rss_kb"] / 1024
    bench.add(Row("scale_peak_rss_mb", "5", f"{n:,}-file tick: peak memory (VmHWM) of the tick process", round(peak, 1), "MB", f"< {PEAK_RSS_TARGET_MB:g} MB", peak < PEAK_RSS_TARGET_MB, False))  # fmt: skip
    held, detail = lease_held(big["lease_samples"], big["wall_start"], big["wall_end"])
    held = held and not report["lease_lost"] and not report["lease_busy"]
    big["lease"] = detail
    renewals = big["counts"]["storage"].get("lease:renew", 0)
    bench.add(Row("scale_lease_held", "5", f"{n:,}-file tick: poll lease held throughout ({detail['leased']} samples, {renewals} renewals), lease_lost false", "yes" if held else "no", "", "yes", held, False))  # fmt: skip
    t0, t1 = small["seconds"], big["seconds"]
    ratio, limit = t1 / t0, (n / n0) * (1 + cfg.tolerance)
    bench.add(Row("scale_tick_seconds_small", "5", f"Tick time, {n0:,} files (+{n - n0:,} ballast blobs; load {small['loadavg']:.1f})", round(t0, 2), "s", "-", None, False))  # fmt: skip
    bench.add(Row("scale_tick_seconds_large", "5", f"Tick time, {n:,} files (load {big['loadavg']:.1f})", round(t1, 2), "s", "-", None, False))  # fmt: skip
    bench.add(Row("scale_time_ratio", "5", f"Tick time growth, {n0:,} -> {n:,} files", round(ratio, 2), "x", f"<= {limit:.1f}x (linear +{cfg.tolerance:.0%})", ratio <= limit, False))  # fmt: skip
    cpu_ratio = big["cpu_seconds"] / small["cpu_seconds"]
    bench.add(Row("scale_cpu_ratio", "5", f"Tick process CPU time growth, {n0:,} -> {n:,} files (the app's own work; load-independent)", round(cpu_ratio, 2), "x", f"- (linear: ~{n / n0:g}x)", None, False))  # fmt: skip
    if "claim" in bench.raw:
        empty = bench.raw["claim"]["seconds"]
        why = "- (stock Azurite's Delete Blob grows with blobs stored)" if cfg.stock_azurite else "- (with the preload, blobs stored barely matter)"  # fmt: skip
        bench.add(Row("scale_tick_seconds_empty", "5", f"For comparison: tick time, {n0:,} files, empty store (row 4)", round(empty, 2), "s", why, None, False))  # fmt: skip
