"""Property checks of blob paths and group names derived from user input."""

from __future__ import annotations

import hashlib
import posixpath
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import config

from .core import SUBSCRIPTION
from .report import CheckResult


def property_checks(examples: int, seed: int) -> list[CheckResult]:
    """Blob paths and group names derived from user input, property-tested: with hypothesis
    when installed (shrinks failures to a minimal example), else a seeded random fuzzer."""
    from launcher.batch import MAX_BLOB_NAME, RENAMED_DIR, RESERVED_TOP, safe_relative_blob
    from launcher.launch import LaunchError, group_name
    from localdev.aci_emulator.model import check_group_name

    settings = config.load_settings(
        {
            "STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
            "WATCH_CONTAINER": "watch",
            "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
            "ACI_RESOURCE_GROUP": "rg",
            "ACI_LOCATION": "local",
            "ACI_IMAGE": "python:3.11",
            "ARM_ENDPOINT": "https://127.0.0.1:9",
            "ARM_AUTH": "emulator",
        }
    )
    batch_re = re.compile(r"\d{8}-\d{6}-[a-z2-7]{6}")

    def blob_property(relative: str, batch_id: str) -> None:
        source = "incoming/" + relative
        out = safe_relative_blob(settings, batch_id, relative, source)
        segments = out.split("/")
        assert all(s not in ("", ".", "..") for s in segments), out
        assert "\\" not in out and all(" " <= c != "\x7f" for c in out), out
        assert segments[0] not in RESERVED_TOP or out.startswith(RENAMED_DIR + "/"), out
        if out != relative:
            assert out == f"{RENAMED_DIR}/{hashlib.sha256(source.encode()).hexdigest()}", out
        for prefix in settings.state_prefixes:
            folder = f"{prefix}{batch_id}/"
            full = folder + out
            assert len(full) <= MAX_BLOB_NAME, len(full)
            assert posixpath.normpath(full) == full and full.startswith(folder), full

    def distinct_property(a: str, b: str, batch_id: str) -> None:
        if a != b:
            oa = safe_relative_blob(settings, batch_id, a, "incoming/" + a)
            ob = safe_relative_blob(settings, batch_id, b, "incoming/" + b)
            assert oa != ob, (a, b, oa)

    def group_property(prefix: str, batch_id: str, attempt: int) -> None:
        s = config.load_settings({**_PROPERTY_ENV, "GROUP_PREFIX": prefix})
        try:
            name = group_name(s, batch_id, attempt)
        except LaunchError:
            # Only input that is not a real batch id may be refused, never a real one.
            assert not batch_re.fullmatch(batch_id), (prefix, batch_id, attempt)
            return
        check_group_name(name)  # the emulator's copy of ACI's rule raises if invalid
        assert re.fullmatch(r"[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]", name) and len(name) <= 63

    results: list[CheckResult] = []
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError:
        hypothesis = None  # type: ignore[assignment]
    text = None
    if hypothesis is not None:
        tokens = [*"/.\\ %?#&\t\n\x7f_", "..", "_logs", "_batch.json", "_renamed", "x" * 200]
        text = st.lists(
            st.one_of(st.characters(codec="utf-8"), st.sampled_from(tokens)), max_size=400
        ).map("".join)
        stamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 12, 31)).map(
            lambda d: d.replace(tzinfo=UTC)
        )
        real_ids = st.builds(
            lambda d, s: d.strftime("%Y%m%d-%H%M%S-") + s,
            stamps,
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=6, max_size=6),
        )
        any_ids = st.one_of(real_ids, st.text(max_size=70))
        prefixes = st.from_regex(r"\A[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4}){0,2}-?\Z").filter(
            lambda p: len(p) <= 20
        )
        cfg = hypothesis.settings(
            max_examples=examples,
            derandomize=False,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        tests: list[tuple[str, Callable[[], None]]] = [
            (
                "blob paths from user names never leave their batch folder or exceed 1,024 chars",
                hypothesis.seed(seed)(cfg(hypothesis.given(text, real_ids)(blob_property))),
            ),
            (
                "two different user names never share a stored path",
                hypothesis.seed(seed)(
                    cfg(hypothesis.given(text, text, real_ids)(distinct_property))
                ),
            ),
            (
                "group names are valid ARM names for every prefix, batch id and attempt",
                hypothesis.seed(seed)(
                    cfg(hypothesis.given(prefixes, any_ids, st.integers(1, 20))(group_property))
                ),
            ),
        ]
        for label, test in tests:
            try:
                test()
                results.append(CheckResult(label, True, f"hypothesis, {examples} examples"))
            except Exception as exc:  # the shrunk counterexample is in the message
                results.append(CheckResult(label, False, f"{type(exc).__name__}: {exc}"[:400]))
        return results
    # Fallback: seeded fuzzing from an alphabet of troublemakers.
    rng = random.Random(seed)
    alphabet = [*"abcXYZ019/.\\ %?#&\t\n\x7f_-~é文😀", "..", "_logs", "_batch.json", "/"]

    def fuzz(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    def real_id() -> str:
        stamp = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(6 * 10**9))
        return stamp.strftime("%Y%m%d-%H%M%S-") + "".join(
            rng.choices("abcdefghijklmnopqrstuvwxyz234567", k=6)
        )

    cases: list[tuple[str, Callable[[], None]]] = [
        (
            "blob paths from user names never leave their batch folder or exceed 1,024 chars",
            lambda: blob_property(fuzz(rng.choice((20, 400, 1100))), real_id()),
        ),
        (
            "two different user names never share a stored path",
            lambda: distinct_property(fuzz(30), fuzz(30), real_id()),
        ),
        (
            "group names are valid ARM names for every prefix, batch id and attempt",
            lambda: group_property(
                rng.choice(["ml-", "ml", "a", "job-runner-", "x" * 20]),
                rng.choice([real_id(), fuzz(40)]),
                rng.randint(1, 20),
            ),
        ),
    ]
    for label, case in cases:
        try:
            for _ in range(examples):
                case()
            results.append(CheckResult(label, True, f"seeded fuzzing, {examples} examples"))
        except AssertionError as exc:
            results.append(CheckResult(label, False, f"counterexample: {exc}"[:400]))
    return results


_PROPERTY_ENV = {
    "STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "WATCH_CONTAINER": "watch",
    "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    "ACI_RESOURCE_GROUP": "rg",
    "ACI_LOCATION": "local",
    "ACI_IMAGE": "python:3.11",
    "ARM_ENDPOINT": "https://127.0.0.1:9",
    "ARM_AUTH": "emulator",
}
