"""Results: one row per scenario, pass/fail checks, the run's report and how it is printed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .core import Mode


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    trials: int = 0
    dropped: int = 0
    lost: int = 0
    duplicated: int = 0
    double_launched: int = 0
    finished: int = 0
    unfinished: int = 0  # trials that ended with files stuck, or batches or groups left over
    failures: list[str] = field(default_factory=list)  # anything else that broke a promise
    notes: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)  # scenario-specific counts
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.double_launched or self.unfinished or self.failures
        )


@dataclass
class CheckResult:
    """One pass/fail statement (security, configuration, bad input)."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    mode: str
    seed: int
    rows: list[Row] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    bad_input: list[dict[str, Any]] = field(default_factory=list)
    bad_config: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    logdir: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for row, raw in zip(self.rows, out["rows"], strict=True):
            raw["ok"] = row.ok
        return out


def table(report: Report) -> str:
    header = (
        "| scenario | trials | files dropped | files lost | files duplicated "
        "| groups double-launched | batches finished | result |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.rows:
        result = "ok" if r.ok else "FAIL"
        lines.append(
            f"| {r.scenario} | {r.trials} | {r.dropped} | {r.lost} | {r.duplicated} "
            f"| {r.double_launched} | {r.finished} | {result} |"
        )
    return "\n".join(lines)


def print_report(report: Report, mode: Mode) -> None:
    print()
    print(table(report))
    print()
    for r in report.rows:
        for note in r.notes:
            print(f"- {r.scenario.split(':')[0]}: {note}")
    if report.bad_input:
        print("\nbad input, per blob:")
        for rec in report.bad_input:
            mark = "ok  " if rec.get("ok") else "FAIL"
            extra = f" [log: {rec['log_line']}]" if rec.get("log_line") else ""
            print(f"  {mark} {rec['kind']}: {rec.get('outcome')}{extra}")
    failed_cfg = [c for c in report.bad_config if not c["ok"]]
    if report.bad_config:
        print(
            f"\nbad configuration: {len(report.bad_config) - len(failed_cfg)}/"
            f"{len(report.bad_config)} cases refused correctly"
        )
        for c in failed_cfg:
            print(f"  FAIL {c['setting']} {c['case']}: poll {c['poll']} sweep {c['sweep']}")
    if report.checks:
        print("\nchecks:")
        for check in report.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name} ({check.detail})")
    problems = [f for r in report.rows for f in r.failures]
    if problems:
        print("\nproblems:")
        for p in problems[:60]:
            print(f"  - {p}")
    print(
        f"\nlimits: seed {report.seed}, mode {mode.name}; crash trials {mode.crash_trials}, race "
        f"{mode.race_ticks} ticks / {mode.race_files} files, {mode.fault_runs} fault run(s) of "
        f"{mode.fault_files} files, {mode.lease_trials} lease trial(s) per variant, "
        f"{mode.stall_trials} stall trials, {mode.skew_folders} skewed folders, "
        f"{mode.operator_batches} operator batches, {mode.refusal_files} files per refusal wave; "
        "each trial "
        f"bounded to {mode.trial_seconds:.0f}s, each drive to quiescence to "
        f"{mode.scenario_seconds:.0f}s, each fault run to {mode.fault_seconds:.0f}s; loopback "
        f"only (Azurite, ACI emulator, proxies, local Functions host on 127.0.0.1)."
    )
    print(f"total {report.seconds:.0f}s; logs in {report.logdir}")
    print("RESULT: " + ("ok" if report.ok else "FAILED"))
