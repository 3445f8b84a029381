"""Row 8: the newest history page at two sizes of finished history: same requests, fast."""

from __future__ import annotations

from typing import Any

from .common import Row
from .harness import Bench

HISTORY_PAGE = 50
HISTORY_SIZES = (1_000, 20_000)
HISTORY_REQUEST_TARGET = 5
HISTORY_SECONDS_TARGET = 0.5
HISTORY_FAILED_EVERY = 10  # one finished batch in ten failed


def seed_history(env: dict[str, str], start: int, stop: int) -> None:
    """Index entries of finished batches start..stop-1, one a minute (not measured)."""
    from datetime import UTC, datetime, timedelta

    from cleanup import history
    from config import load_settings
    from launcher.batch import FileEntry, Manifest, State, iso, new_batch_id
    from launcher.clients import build_clients

    clients = build_clients(load_settings(env))
    first = datetime(2025, 1, 1, tzinfo=UTC)

    def one(i: int) -> None:
        when = first + timedelta(minutes=i)
        failed = i % HISTORY_FAILED_EVERY == 0
        m = Manifest(
            batch_id=new_batch_id(when),
            state=State.FAILED if failed else State.SUCCEEDED,
            created=iso(when) or "",
            updated="",
            files=[
                FileEntry(f"incoming/job-{i}/a.txt", f"job-{i}/a.txt", f"job-{i}/a.txt", "e", 1)
            ],
            folder=f"job-{i}",
            attempt=1,
            reason="attempt 1/3: exit code 2 (Error)" if failed else None,
        )
        prefix = clients.settings.failed_prefix if failed else clients.settings.done_prefix
        history.record(clients, m, prefix)

    errors = [r for r in clients.runner.map(one, range(start, stop)) if r is not None]
    assert not errors, errors[:3]


def run(bench: Bench) -> None:
    sizes = (600, 1500) if bench.cfg.tiny else HISTORY_SIZES  # tiny: 60 failed still fill a page
    print(f"8. history: newest page of {HISTORY_PAGE} at {sizes[0]:,} and {sizes[1]:,} batches")
    bench.fresh_azurite()
    name = bench.new_container("history").container_name
    seeded = 0
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for size, scale in zip(sizes, ("small", "large"), strict=True):
        seed_history(bench.env(name, via_proxy=False), seeded, size)
        seeded = size
        for state in ("", "failed"):
            res = bench.run_worker("history", bench.env(name), state=state)
            assert res["report"]["rows"] == HISTORY_PAGE and res["report"]["more"], res
            results[(size, state)] = res
            bench.raw[f"history_{scale}_{state or 'all'}"] = res
            requests_, seconds = res["counts"]["storage"]["total"], res["seconds"]
            what = f"{state or 'all states'}, {size:,} finished batches"
            bench.add(Row(f"history_{scale}_{state or 'all'}_requests", "8", f"History page of {HISTORY_PAGE} ({what}): storage requests", requests_, "", f"<= {HISTORY_REQUEST_TARGET}", requests_ <= HISTORY_REQUEST_TARGET, True))  # fmt: skip
            bench.add(Row(f"history_{scale}_{state or 'all'}_seconds", "8", f"History page of {HISTORY_PAGE} ({what}): time at {bench.cfg.delay_ms:g} ms/request", round(seconds, 3), "s", f"< {HISTORY_SECONDS_TARGET}", seconds < HISTORY_SECONDS_TARGET, False))  # fmt: skip
    for state in ("", "failed"):
        small, large = (results[(n, state)]["counts"]["storage"]["total"] for n in sizes)
        bench.add(Row(f"history_same_cost_{state or 'all'}", "8", f"History page ({state or 'all states'}): requests at {sizes[1]:,} vs {sizes[0]:,} batches", f"{large} vs {small}", "", "equal", large == small, True))  # fmt: skip
