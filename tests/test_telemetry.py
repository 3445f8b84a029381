"""OpenTelemetry spans and metrics (launcher/telemetry.py), read with the SDK's in-memory
exporters on a real pipeline run (Azurite, the ACI emulator)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cleanup.sweep import sweep
from launcher.poll import poll
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import CountingPolicy, drop

SPANS = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def in_memory_providers() -> None:
    """Global providers can be set once per process: the first test of this module does it."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(SPANS))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    SPANS.clear()
    READER.get_metrics_data()  # a read resets nothing for cumulative sums: compare deltas
    yield SPANS


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def points(name: str) -> list[Any]:
    data = READER.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found += list(metric.data.data_points)
    return found


def total(name: str, **attrs: str) -> float:
    return sum(
        getattr(p, "value", 0) or getattr(p, "count", 0)
        for p in points(name)
        if all(p.attributes.get(k) == v for k, v in attrs.items())
    )


def test_a_real_run_has_spans_and_metrics(pipeline: Pipeline, spans: InMemorySpanExporter) -> None:
    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]')
    claimed_before = total("ml.files.claimed")
    finished_before = total("ml.batches.finished", outcome="succeeded")
    launches_before = total("ml.batch.drop_to_launch")
    drop(pipeline.container, ["incoming/a.txt", "incoming/b.txt"], b"12345")
    poll(clients)
    (tick,) = named(spans, "poll.tick")
    assert tick.attributes["ml.outcome"] == "busy" and tick.attributes["ml.batches_claimed"] == 1
    (claim,) = named(spans, "claim")
    batch = claim.attributes["ml.batch_id"]
    assert claim.attributes["ml.files"] == 2 and claim.attributes["ml.bytes"] == 10
    assert claim.attributes["ml.outcome"] == "claimed" and claim.parent == tick.context
    (launch,) = named(spans, "launch")
    assert launch.attributes["ml.batch_id"] == batch and launch.attributes["ml.attempt"] == 1
    assert launch.attributes["ml.outcome"] == "launched"
    assert str(launch.attributes["ml.group"]).startswith("ml-")
    assert total("ml.files.claimed") - claimed_before == 2
    assert total("ml.batch.drop_to_launch") - launches_before == 1

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not named(spans, "finish"):
        sweep(clients)
        time.sleep(0.5)
    (finish,) = named(spans, "finish")
    assert finish.attributes["ml.batch_id"] == batch and finish.attributes["ml.outcome"] == "done"
    assert finish.attributes["ml.files"] == 2 and finish.attributes["ml.attempt"] == 1
    sweeps = named(spans, "sweep")
    assert any(s.attributes["ml.finished"] == 1 for s in sweeps)
    assert finish.parent in [s.context for s in sweeps]
    assert total("ml.batches.finished", outcome="succeeded") - finished_before == 1
    assert total("ml.batches.finished", outcome="succeeded", profile="default") >= 1
    assert total("ml.batches.launched", profile="default") >= 1
    assert total("ml.batch.run_duration") >= 1
    assert [p.value for p in points("ml.incoming.files")][-1] == 0
    assert points("ml.groups.active") and points("ml.incoming.oldest_age")


def test_batch_and_group_metrics_carry_the_profile(
    pipeline: Pipeline, spans: InMemorySpanExporter
) -> None:
    """A folder routed to the non-default profile `model-x`: its claim, launch, finish, run
    time and groups are counted under `profile=model-x`, and nothing under `default`."""
    profiles = {
        "model-x": {"match": "x-*", "image": "python:3.11", "command": ["python", "-c", "pass"]}
    }
    clients = pipeline.clients(JOB_PROFILES=json.dumps(profiles), BATCH_MODE="folder")
    names = ["ml.files.claimed", "ml.batches.claimed", "ml.batches.launched"]
    names += ["ml.batch.drop_to_launch", "ml.batch.run_duration"]
    before = {(n, p): total(n, profile=p) for n in names for p in ("model-x", "default")}
    finished_before = total("ml.batches.finished", outcome="succeeded", profile="model-x")
    drop(pipeline.container, ["incoming/x-1/a.txt", "incoming/x-1/b.txt"], b"12345")
    poll(clients)
    (claim,) = named(spans, "claim")
    (launch,) = named(spans, "launch")
    assert claim.attributes["ml.profile"] == launch.attributes["ml.profile"] == "model-x"
    active = {p.attributes.get("profile"): p.value for p in points("ml.groups.active")}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not named(spans, "finish"):
        report = sweep(clients)
        if report.groups_by_profile:
            active = {p.attributes.get("profile"): p.value for p in points("ml.groups.active")}
        time.sleep(0.5)
    assert named(spans, "finish")[0].attributes["ml.profile"] == "model-x"
    delta = {k: total(k[0], profile=k[1]) - v for k, v in before.items()}
    assert delta == {
        ("ml.files.claimed", "model-x"): 2,
        ("ml.batches.claimed", "model-x"): 1,
        ("ml.batches.launched", "model-x"): 1,
        ("ml.batch.drop_to_launch", "model-x"): 1,
        ("ml.batch.run_duration", "model-x"): 1,
    } | {(n, "default"): 0 for n in names}
    assert total("ml.batches.finished", outcome="succeeded", profile="model-x") == (
        finished_before + 1
    )
    # While it ran, the group counted under its profile (the default profile had none, nor any
    # profile an earlier test in this process used: their gauges read 0); the finishing sweep
    # set every profile's gauge back to 0.
    assert {k: v for k, v in active.items() if v} == {"model-x": 1} and active["default"] == 0
    sweep(clients)  # the group is gone now
    final = {p.attributes.get("profile"): p.value for p in points("ml.groups.active")}
    assert final["model-x"] == 0 and final["default"] == 0


def test_an_idle_tick_is_still_one_request(pipeline: Pipeline, spans: InMemorySpanExporter) -> None:
    counter = CountingPolicy()
    clients = pipeline.clients(counter)
    counter.reset()
    assert poll(clients).idle
    assert counter.total == 1
    (tick,) = named(spans, "poll.tick")
    assert tick.attributes["ml.outcome"] == "idle"


def test_the_stall_shows_in_the_metric(pipeline: Pipeline, spans: InMemorySpanExporter) -> None:
    drop(pipeline.container, ["incoming/late.txt"])
    clients = pipeline.clients(STALL_ALARM_MINUTES="0.1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = sweep(clients)
        if report.stall and report.stall["stalled"]:
            break
        time.sleep(0.5)
    assert [p.value for p in points("ml.incoming.stalled_files")][-1] == 1
    assert [p.value for p in points("ml.incoming.oldest_age")][-1] > 6


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "otlp"),
        (
            {
                "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey="
                "00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
            },
            "azure-monitor",
        ),
    ],
)
def test_setup_picks_the_export_from_the_environment(env: dict[str, str], expected: str) -> None:
    code = (
        "from opentelemetry import trace\n"
        "from launcher import telemetry\n"
        f"print(telemetry.setup({env!r}), type(trace.get_tracer_provider()).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out[0] == expected
    assert (out[1] == "TracerProvider") == (expected != "none")
