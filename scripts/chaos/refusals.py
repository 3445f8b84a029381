"""Scenario refusals: storage keeps refusing to delete some files (immutability, permissions)."""

from __future__ import annotations

import random

import config
from localdev.proxy import Refusal

from .checks import Checker, add_verdict, content_for, drop_files, sha
from .core import Mode, log
from .drive import drive
from .report import CheckResult, Report, Row
from .stack import Dropped, Stack, labelled

# Names with these markers are refused for good: 409 as under an immutability policy or legal
# hold, 403 as when the app's role may not delete them. A FAKE (localdev.proxy.Refusal):
# Azurite has neither; a Blob Batch request is refused whole, so the client deletes one by one.
HOLD, NOPERM = "-hold", "-noperm"
REFUSALS = [
    Refusal(kind="delete", path=rf"/incoming/.*{HOLD}"),
    Refusal(
        kind="delete",
        path=rf"/incoming/.*{NOPERM}",
        status=403,
        code="AuthorizationPermissionMismatch",
        message="This request is not authorized to perform this operation using this permission.",
    ),
    Refusal(kind="batch", status=400, code="InvalidInput", message="(chaos: refused whole)"),
]
WAVES = 3
IDLE_TICKS = 3


def scenario_refusals(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    """Three waves of files, a quarter of them refused (half 409, half 403), while poll and
    sweep run to quiescence after each wave; then idle ticks. In the second wave, one refused
    file gets a new version (its user replaced it): that version is tried once more.

    Checked: refused files stay in incoming/ (legitimately), each poll reports them under
    `blocked` with storage's code, each version of a refused file is copied exactly once (its
    first tick), and everything else ends in a batch."""
    row = Row("refusals: storage refuses to delete some files, for good", trials=1)
    arena = stack.arena("refusals")
    labels: dict[str, str] = {}
    storage = stack.storage_proxy(classify=labelled(labels, arena.name))
    storage.set_refusals(REFUSALS)
    env = stack.env(arena, storage, None, {config.BATCH_MAX_FILES: "10"})
    refused: set[str] = set()
    versions = 0
    polls: list[dict[str, object]] = []
    bad_blocked: list[str] = []
    for wave in range(WAVES):
        names = []
        for k in range(mode.refusal_files):
            marker = ""
            if k % 4 == 0:
                marker = HOLD if k % 8 == 0 else NOPERM
            names.append(f"incoming/w{wave}/f{k:03d}{marker}.txt")
        locked = [n for n in names if HOLD in n or NOPERM in n]
        for name in locked:
            labels[name] = "refused"
        drop_files(arena, names, rng)
        for name in locked:
            arena.dropped[name].expect = frozenset({"incoming"})
        refused.update(locked)
        versions += len(locked)
        if wave == 1:
            # A user replaces a refused file of the first wave: the new version is tried once.
            name = sorted(n for n in refused if n.startswith("incoming/w0/"))[0]
            data = content_for(name + " v2", rng)
            arena.container.upload_blob(name, data, overwrite=True)
            arena.dropped[name].expect = frozenset({"gone"})  # replaced by its user
            arena.dropped[name + "#2"] = Dropped(
                name, sha(data), len(data), expect=frozenset({"incoming"})
            )
            versions += 1
        drive(
            stack,
            arena,
            env,
            env,
            f"refusals.w{wave}",
            seconds=mode.scenario_seconds,
            allowed_incoming=refused,
        )
    for _ in range(IDLE_TICKS):
        polls.append(stack.run("poll", env, tag="refusals.idle").report() or {})
    for tick in polls:
        blocked = tick.get("blocked")
        if not isinstance(blocked, dict):
            bad_blocked.append("no report")
            continue
        for name in sorted(refused):
            why = str(blocked.get(name, ""))
            code = "BlobImmutableDueToPolicy" if HOLD in name else "AuthorizationPermissionMismatch"
            if code not in why:
                bad_blocked.append(f"{name}: {why or 'not reported'}")
    copies = storage.counts().get("copy:refused", 0)
    faults = storage.fault_counts().get("refused", 0)
    stats = drive(stack, arena, env, env, "refusals", seconds=60, allowed_incoming=refused)
    v = Checker(stack).check(arena)
    add_verdict(row, v, "refusals")
    if not stats.quiet:
        row.failures.append("not quiescent")
    left = {b.name for b in arena.container.list_blobs(name_starts_with="incoming/")}
    checks = [
        CheckResult(
            "refused files stay in incoming/ and are reported blocked with storage's code",
            left == refused and not bad_blocked and bool(polls),
            f"{len(refused)} refused, {len(left)} left in incoming/; {bad_blocked[:3]}",
        ),
        CheckResult(
            "a refused file is copied once per version, never again on later ticks",
            copies == versions,
            f"{copies} copies of {versions} refused versions",
        ),
    ]
    report.checks += checks
    row.failures += [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    row.figures.update(refused_files=len(refused), refused_copies=copies, refusals=faults)
    row.notes.append(
        f"{WAVES} waves of {mode.refusal_files} files, {len(refused)} refused (409 and 403; "
        f"Blob Batch refused whole), one replaced by its user: {copies} copies for {versions} "
        f"refused versions, {faults} refusals answered; {v.finished} batches finished; "
        f"{IDLE_TICKS} idle ticks all reported every refused file blocked"
        if not bad_blocked
        else f"blocked report problems: {bad_blocked[:3]}"
    )
    log(f"refusals: {v.summary()}; {row.notes[-1]}")
    return row
