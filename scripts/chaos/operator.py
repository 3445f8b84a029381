"""Scenario operator: manifests truncated or deleted by hand, repairs, releases and retries."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import config
from localdev.proxy import Refusal

from .checks import Checker, add_verdict, content_for, drop_files, sha
from .core import PASS_COMMAND, Interrupted, Mode, log
from .drive import drive
from .report import CheckResult, Report, Row
from .stack import Arena, Dropped, Run, Stack

FAIL_COMMAND = '["python", "-c", "raise SystemExit(1)"]'


def _manifests(arena: Arena, prefix: str = "processing/") -> dict[str, str]:
    """batch -> mlstate of every manifest under `prefix`."""
    return {
        b.name.split("/")[1]: str((b.metadata or {}).get("mlstate"))
        for b in arena.container.list_blobs(name_starts_with=prefix, include=["metadata"])
        if b.name.endswith("/_batch.json") and b.name.count("/") == 2
    }


def _finished(arena: Arena) -> dict[str, str]:
    """batch -> done | failed."""
    return {
        b.name.split("/")[1]: b.name.split("/")[0]
        for b in arena.container.list_blobs()
        if b.name.endswith("/_batch.json")
        and b.name.count("/") == 2
        and b.name.startswith(("done/", "failed/"))
    }


class Operator:
    """The operator's hands: edits manifests, runs `python -m cleanup release|retry`."""

    def __init__(self, stack: Stack, arena: Arena, env: Mapping[str, str]) -> None:
        self.stack = stack
        self.arena = arena
        self.env = env
        self.saved: dict[str, tuple[bytes, dict[str, str]]] = {}

    def spoil(self, batch: str, how: str) -> None:
        """`truncate` (an editor cut it short; metadata kept), `reshape` (another tool wrote
        valid JSON of another shape, metadata gone) or `delete`."""
        blob = self.arena.container.get_blob_client(f"processing/{batch}/_batch.json")
        original = blob.download_blob().readall()
        self.saved[batch] = (original, dict(blob.get_blob_properties().metadata or {}))
        if how == "truncate":
            blob.upload_blob(
                original[: len(original) // 2], overwrite=True, metadata=self.saved[batch][1]
            )
        elif how == "reshape":
            blob.upload_blob(b'{"hello": "world"}', overwrite=True)
        else:
            blob.delete_blob()

    def repair(self, batch: str) -> None:
        """Put the original manifest back (from the operator's copy), metadata included."""
        data, metadata = self.saved[batch]
        self.arena.container.get_blob_client(f"processing/{batch}/_batch.json").upload_blob(
            data, overwrite=True, metadata=metadata
        )

    def cli(self, *args: str) -> tuple[Run, dict[str, Any] | None]:
        """`python -m cleanup <args>`; its JSON answer, if it printed one."""
        if self.stack.stop.is_set():
            raise Interrupted("stopping")
        started = time.monotonic()
        tag = f"operator.{args[0]}"
        proc, out, err = self.stack.spawn([sys.executable, "-m", "cleanup", *args], self.env, tag)
        rc = self.stack.procs.wait(proc, 120)
        run = Run(args[0], tag, rc, out, err, round(time.monotonic() - started, 2))
        try:
            data = json.loads(run.out())
        except (json.JSONDecodeError, OSError):
            data = None
        return run, data if isinstance(data, dict) else None


def scenario_operator(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    """An operator spoils manifests while batches flow, repairs or releases them, and retries
    failed batches after their users dropped some names again.

    1. Wave A fails (MAX_ATTEMPTS 1); right after its launch one of its manifests is truncated
       or overwritten with JSON of another shape. Wave B cannot launch (ARM refuses its PUTs):
       one `claimed` manifest is truncated, another deleted.
    2. Wave C arrives: it must flow to done/ while the three spoiled batches are reported by id
       as quarantined by every sweep, and the spoiled launched batch's group is left alone.
    3. Repair: `release` of the launched one is refused (its group exists); its manifest and
       the deleted one are put back from the operator's copy; the truncated `claimed` one is
       released to failed/.
    4. Retry every failed batch with `python -m cleanup retry`, after some of their names were
       dropped again with new content: those new files must never be overwritten (both
       versions end in a batch), and a second retry changes nothing."""
    row = Row("operator: spoiled manifests, release, retry over re-dropped names", trials=1)
    arena = stack.arena("operator")
    arm = stack.arm_proxy()
    base = {
        config.BATCH_MAX_FILES: "3",
        config.MAX_ATTEMPTS: "1",
        config.MAX_BATCHES_PER_TICK: "20",
        config.MAX_ACTIVE_GROUPS: "40",
        config.STUCK_CLAIM_SECONDS: "0",
    }
    env_fail = stack.env(arena, None, arm, {**base, config.ACI_COMMAND: FAIL_COMMAND})
    env_ok = stack.env(arena, None, arm, {**base, config.ACI_COMMAND: PASS_COMMAND})
    op = Operator(stack, arena, env_ok)
    checks: list[CheckResult] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(CheckResult(f"operator: {name}", ok, detail))
        if not ok:
            row.failures.append(f"{name}: {detail}")

    # 1. Wave A, launched to fail; one manifest spoiled at once.
    batches = mode.operator_batches
    drop_files(arena, [f"incoming/a/f{k:03d}.txt" for k in range(3 * batches)], rng)
    stack.run("poll", env_fail, tag="operator.poll")
    launched = sorted(b for b, s in _manifests(arena).items() if s == "launched")
    spoiled_launched = rng.choice(launched)
    launched_how = rng.choice(("truncate", "reshape"))
    group = json.loads(
        arena.container.download_blob(f"processing/{spoiled_launched}/_batch.json").readall()
    )["group"]
    op.spoil(spoiled_launched, launched_how)
    # Wave B: ARM refuses its group PUTs, so its batches stay `claimed`.
    arm.set_refusals(
        [Refusal("arm_put", status=404, code="ResourceGroupNotFound", message="(chaos)")]
    )
    drop_files(arena, [f"incoming/b/f{k:03d}.txt" for k in range(6)], rng)
    stack.run("poll", env_ok, tag="operator.poll")
    arm.set_refusals([])
    claimed = sorted(b for b, s in _manifests(arena).items() if s == "claimed")
    truncated, deleted = claimed[0], claimed[1]
    op.spoil(truncated, "truncate")
    op.spoil(deleted, "delete")
    spoiled = {spoiled_launched, truncated, deleted}
    log(
        f"operator: spoiled {spoiled_launched} (launched, {launched_how}), {truncated} "
        f"(claimed, truncate), {deleted} (claimed, manifest deleted)"
    )

    # 2. Wave C flows; every sweep names the spoiled batches.
    wave_c = [f"incoming/c/f{k:03d}.txt" for k in range(6)]
    drop_files(arena, wave_c, rng)
    sweeps: list[dict[str, Any]] = []
    polls: list[dict[str, Any]] = []

    def flowing() -> bool:
        done = _finished(arena)
        wave_a = set(launched) - {spoiled_launched}
        return (
            all(done.get(b) == "failed" for b in wave_a)
            and all(n not in _incoming(arena) for n in wave_c)
            and not [b for b, s in _manifests(arena).items() if b not in spoiled]
        )

    _rounds(stack, env_ok, "operator", flowing, mode.scenario_seconds, polls=polls, sweeps=sweeps)
    reported = [{q["batch"] for q in s.get("quarantined", [])} for s in sweeps]
    c_done = [n for n in wave_c if _in_done(arena, n)]
    # A spoiled launched manifest whose metadata survived is read once its group ended; from
    # then on, every sweep names all three.
    named = next((i for i, r in enumerate(reported) if r == spoiled), len(reported))
    check(
        "spoiled manifests are quarantined and reported by id by every sweep",
        named < len(reported) and all(r == spoiled for r in reported[named:]),
        f"{len(sweeps)} sweeps; last named {sorted(reported[-1]) if reported else []}, "
        f"spoiled {sorted(spoiled)}",
    )
    check(
        "other batches keep flowing past quarantined ones",
        len(c_done) == len(wave_c) and flowing(),
        f"{len(c_done)}/{len(wave_c)} files of the new wave done",
    )
    groups = {str(g.name) for g in stack.groups(arena.rg)}
    left_alone = set(sweeps[-1].get("left_alone", [])) if sweeps else set()
    check(
        "a quarantined launched batch's group is left alone",
        group in groups and left_alone == {group},
        f"group {group} exists: {group in groups}; left alone: {sorted(left_alone)}",
    )

    # 3. Repair and release.
    refused_run, _ = op.cli("release", spoiled_launched)
    check(
        "release refuses a batch whose group still exists",
        refused_run.rc == 2 and group in refused_run.err(),
        f"rc {refused_run.rc}: {refused_run.err().strip()[-200:]}",
    )
    op.repair(spoiled_launched)
    op.repair(deleted)
    released_run, released = op.cli("release", truncated)
    check(
        "release moves a quarantined batch to failed/",
        released_run.rc == 0 and released is not None and released.get("inputs") == 3,
        f"rc {released_run.rc}: {released}",
    )
    stats = drive(stack, arena, env_ok, env_ok, "operator.repaired", seconds=mode.scenario_seconds)
    after = _finished(arena)
    check(
        "repaired batches finish, the released one is in failed/",
        stats.quiet
        and after.get(spoiled_launched) == "failed"
        and after.get(deleted) == "done"
        and after.get(truncated) == "failed",
        f"{spoiled_launched}: {after.get(spoiled_launched)}, {deleted}: {after.get(deleted)}, "
        f"{truncated}: {after.get(truncated)}",
    )

    # 4. Users drop some names of failed batches again; the operator retries every one.
    failed = sorted(b for b, where in _finished(arena).items() if where == "failed")
    redropped: dict[str, list[str]] = {}
    for index, batch in enumerate(failed):
        names = [
            f["source"]
            for f in json.loads(
                arena.container.download_blob(f"failed/{batch}/_batch.json").readall()
            )["files"]
        ]
        if index % 2 == 0:
            pick = rng.sample(names, k=rng.randint(1, max(1, len(names) - 1)))
            for name in pick:
                data = content_for(name + " (dropped again)", rng)
                arena.container.upload_blob(name, data, overwrite=True)
                arena.dropped[name + "#2"] = Dropped(name, sha(data), len(data))
            redropped[batch] = sorted(pick)
    bad_retry: list[str] = []
    not_noop: list[str] = []
    restored_total = kept_total = 0
    for batch in failed:
        run, answer = op.cli("retry", batch)
        first: dict[str, Any] = answer or {}
        kept = sorted(k["file"] for k in first.get("kept", []))
        restored_total += len(first.get("restored", []))
        kept_total += len(kept)
        if run.rc != 0 or kept != redropped.get(batch, []):
            bad_retry.append(f"{batch}: rc {run.rc}, kept {kept}, expected {redropped.get(batch)}")
        for name in redropped.get(batch, []):
            body = arena.container.download_blob(name).readall()
            if sha(body) != arena.dropped[name + "#2"].sha256:
                bad_retry.append(f"{batch}: {name} in incoming/ was overwritten")
        run2, again = op.cli("retry", batch)
        second: dict[str, Any] = again or {}
        if (
            run2.rc != 0
            or second.get("restored") != []
            or second.get("restored_earlier") != len(first.get("restored", []))
        ):
            not_noop.append(f"{batch}: {second}")
    check(
        "retry never overwrites a file dropped again",
        not bad_retry and kept_total > 0,
        f"{len(failed)} failed batches retried: {restored_total} restored, {kept_total} kept "
        f"(dropped again); {bad_retry[:2]}",
    )
    check("a second retry is a no-op", not not_noop, f"{not_noop[:2]}")
    stats = drive(stack, arena, env_ok, env_ok, "operator.retried", seconds=mode.scenario_seconds)
    if not stats.quiet:
        row.failures.append("not quiescent after the retries")
    v = Checker(stack).check(arena)
    add_verdict(row, v, "operator")
    report.checks += checks
    row.figures.update(
        quarantined=len(spoiled),
        retried=len(failed),
        restored=restored_total,
        kept=kept_total,
        checks_ok=sum(1 for c in checks if c.ok),
        checks=len(checks),
    )
    row.notes.append(
        f"spoiled: launched {spoiled_launched} ({launched_how}), claimed {truncated} "
        f"(truncated, released), claimed {deleted} (manifest deleted, restored); "
        f"{len(sweeps)} sweeps named all three; {len(failed)} failed batches retried "
        f"({restored_total} inputs restored, {kept_total} kept because their names were dropped "
        f"again); {sum(1 for c in checks if c.ok)}/{len(checks)} operator checks ok"
    )
    log(f"operator: {v.summary()}; {row.notes[-1]}")
    return row


def _incoming(arena: Arena) -> set[str]:
    return {b.name for b in arena.container.list_blobs(name_starts_with="incoming/")}


def _in_done(arena: Arena, source: str) -> bool:
    for blob in arena.container.list_blobs(name_starts_with="done/"):
        if blob.name.endswith("/_batch.json"):
            manifest = json.loads(arena.container.download_blob(blob.name).readall())
            if any(f["source"] == source for f in manifest.get("files", [])):
                return True
    return False


def _rounds(
    stack: Stack,
    env: Mapping[str, str],
    tag: str,
    until: Callable[[], bool],
    seconds: float,
    *,
    polls: list[dict[str, Any]],
    sweeps: list[dict[str, Any]],
    min_rounds: int = 3,
) -> None:
    """Poll and sweep in turn, at least `min_rounds` times, until `until()` or `seconds`
    passed; keep their reports."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stack.stop.is_set():
            raise Interrupted("stopping")
        polls.append(stack.run("poll", env, tag=f"{tag}.poll").report() or {})
        sweeps.append(stack.run("sweep", env, tag=f"{tag}.sweep").report() or {})
        if len(sweeps) >= min_rounds and until():
            return
        time.sleep(0.3)
