"""The results as the benchmark prints and saves them: the Markdown table and the JSON runs."""

from __future__ import annotations

from typing import Any

from .common import Row


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[Row]) -> str:
    """A Markdown table: printed, and pasted as is into docs/performance.md."""
    lines = ["| # | figure | value | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{fmt(r.value)} {r.unit}".strip()
        met = "–" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.section} | {r.metric} | {value} | {r.target} | {met} |")
    return "\n".join(lines)


def slim(res: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of one run: figures and counts, reports trimmed to their sizes."""
    report = res.get("report") or {}
    out = {
        "seconds": round(res["seconds"], 3),
        "cpu_seconds": round(res["cpu_seconds"], 3),
        "helper_cpu_seconds": res["helper_cpu_seconds"],
        "loadavg": round(res["loadavg"], 2),
        "files": res["files"],
        "counts": res["counts"],
        "peak_rss_mb": round(res["peak_rss_kb"] / 1024, 1),
        "rss_before_mb": round(res["rss_before_kb"] / 1024, 1),
        "marks": {k: round(v, 4) for k, v in res["marks"].items()},
        "peak_in_flight": res["peak_in_flight"],
        "report": {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()},
    }
    return out | {k: res[k] for k in ("left_in_incoming", "lease", "ballast") if k in res}
