"""Telemetry, the Azure Functions way: OpenTelemetry spans and metrics.

`setup()` (called once per process by function_app.py and the command lines) picks the export:
- `APPLICATIONINSIGHTS_CONNECTION_STRING` set: `azure-monitor-opentelemetry`'s
  `configure_azure_monitor()` (traces and metrics to Application Insights; host.json's
  `"telemetryMode": "OpenTelemetry"` makes the Functions host export its own the same way);
- else `OTEL_EXPORTER_OTLP_ENDPOINT` set: the OTLP/HTTP exporters (the standard OTEL_* variables
  apply);
- neither: nothing; the OpenTelemetry API's no-op tracer and meter cost next to nothing.

The instruments below are created against the global API, so they report to whatever provider is
installed (a test installs in-memory ones). Nothing here talks to storage: an idle poll tick is
still one List Blobs request. The decorators wrap the app's steps without changing them.

Every metric about a batch or a group carries the attribute `profile` (its job profile,
profiles.py): the names come from the settings, so the number of series stays bounded.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
NAME = "model-launcher"
APPINSIGHTS = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP = "OTEL_EXPORTER_OTLP_ENDPOINT"

tracer = trace.get_tracer(NAME)
meter = metrics.get_meter(NAME)

FILES_WAITING = meter.create_gauge(
    "ml.incoming.files", unit="{file}", description="files waiting in incoming/"
)
OLDEST_WAITING = meter.create_gauge(
    "ml.incoming.oldest_age", unit="s", description="age of the oldest file waiting in incoming/"
)
STALLED_FILES = meter.create_gauge(
    "ml.incoming.stalled_files",
    unit="{file}",
    description="claimable files older than STALL_ALARM_MINUTES (the stall alarm when > 0)",
)
ACTIVE_GROUPS = meter.create_gauge(
    "ml.groups.active", unit="{group}", description="our container groups that exist, by profile"
)
BATCHES_LAUNCHED = meter.create_counter(
    "ml.batches.launched",
    unit="{batch}",
    description="container groups created for batches (first launches and relaunches)",
)
BATCHES_FINISHED = meter.create_counter(
    "ml.batches.finished", unit="{batch}", description="batches finished, by outcome"
)
FILES_CLAIMED = meter.create_counter(
    "ml.files.claimed", unit="{file}", description="files claimed (its rate is the claim rate)"
)
BATCHES_CLAIMED = meter.create_counter("ml.batches.claimed", unit="{batch}")
DROP_TO_LAUNCH = meter.create_histogram(
    "ml.batch.drop_to_launch",
    unit="s",
    description="from the newest file of a batch settling in incoming/ to its first launch",
)
RUN_DURATION = meter.create_histogram(
    "ml.batch.run_duration", unit="s", description="container run time of an attempt, by outcome"
)

_setup_lock = threading.Lock()
_configured: list[str] = []  # which export setup() chose, once
# batch id -> when its newest file was last modified (claimed in this process, not launched yet)
_dropped: dict[str, datetime] = {}
_dropped_lock = threading.Lock()
MAX_REMEMBERED = 10_000
# Profiles the ml.groups.active gauge has reported (the settings' and the groups' tags).
_group_profiles: set[str] = set()


def setup(environ: dict[str, str] | None = None) -> str:
    """Install the exporters the environment asks for, once; returns which ("azure-monitor",
    "otlp" or "none")."""
    env = os.environ if environ is None else environ
    with _setup_lock:
        if _configured:
            return _configured[0]
        # The exporters are imported only when asked for: they are heavy and optional.
        if env.get(APPINSIGHTS):
            from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415

            # Logs are not exported here: the Functions host already forwards the worker's logs,
            # so exporting them too would show every line twice.
            configure_azure_monitor(connection_string=env[APPINSIGHTS], disable_logging=True)
            chosen = "azure-monitor"
        elif env.get(OTLP):
            from opentelemetry.exporter.otlp.proto.http import (  # noqa: PLC0415
                metric_exporter,
                trace_exporter,
            )

            resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", NAME)})
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(trace_exporter.OTLPSpanExporter()))
            trace.set_tracer_provider(provider)
            reader = PeriodicExportingMetricReader(metric_exporter.OTLPMetricExporter())
            metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
            chosen = "otlp"
        else:
            chosen = "none"
        _configured.append(chosen)
        if chosen != "none":
            logger.info("telemetry: exporting with %s", chosen)
        return chosen


# The span of the running poll tick and sweep: their steps run on worker threads (a tick's
# batches, a sweep's groups), where the OpenTelemetry context does not follow by itself.
_roots: dict[str, trace.Span] = {}


def _span(
    name: str,
    describe: Callable[..., dict[str, Any]],
    after: Callable[..., None],
    parent: str | None = None,
) -> Any:
    """A decorator: run the function in span `name`, with attributes from `describe(*args)`
    before and `after(span, result, *args)` once it returned. Without a current span, the
    running `parent` (poll.tick or sweep) is the parent."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            context = None
            if parent and not trace.get_current_span().get_span_context().is_valid:
                root = _roots.get(parent)
                context = trace.set_span_in_context(root) if root is not None else None
            with tracer.start_as_current_span(name, context=context) as span:
                if parent is None:
                    _roots[name] = span
                try:
                    span.set_attributes(_clean(describe(*args, **kwargs)))
                except Exception:  # telemetry never breaks the pipeline
                    logger.debug("telemetry: describe %s failed", name, exc_info=True)
                try:
                    result = fn(*args, **kwargs)
                finally:
                    if parent is None and _roots.get(name) is span:
                        del _roots[name]
                try:
                    after(span, result, *args, **kwargs)
                except Exception:
                    logger.debug("telemetry: after %s failed", name, exc_info=True)
                return result

        return cast(F, wrapper)

    return decorator


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


def _nothing(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {}


def _manifest_attrs(m: Any) -> dict[str, Any]:
    return {
        "ml.batch_id": m.batch_id,
        "ml.profile": getattr(m, "profile", None),
        "ml.group": m.group,
        "ml.attempt": m.attempt,
        "ml.files": len(m.files),
        "ml.bytes": sum(f.size for f in m.files),
    }


# -- poll tick ------------------------------------------------------------------------------------


def _after_tick(span: Any, report: Any, *args: Any, **kwargs: Any) -> None:
    outcome = "lease-busy" if report.lease_busy else "idle" if report.idle else "busy"
    span.set_attributes(
        {
            "ml.outcome": outcome,
            "ml.files_listed": report.listed,
            "ml.claimable": report.claimable,
            "ml.batches_claimed": len(report.claimed),
            "ml.batches_launched": sum(1 for x in report.launched if x.get("launched")),
            "ml.errors": len(report.errors),
        }
    )
    if report.errors:
        span.set_status(Status(StatusCode.ERROR, report.errors[0][:200]))
    if report.listing_complete:  # a tick stops listing once it has its batches (launcher.poll)
        FILES_WAITING.set(report.listed - report.folder_markers)


traced_tick = _span("poll.tick", _nothing, _after_tick)


# -- claim ----------------------------------------------------------------------------------------


def _describe_claim(clients: Any, plan: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {
        "ml.files": len(plan.files),
        "ml.bytes": sum(c.size for c in plan.files),
        "ml.folder": plan.folder,
        "ml.profile": plan.profile,
    }


def _after_claim(span: Any, result: Any, clients: Any, plan: Any, *a: Any, **k: Any) -> None:
    m = result.manifest
    span.set_attributes(
        _clean(
            {
                "ml.batch_id": m.batch_id if m else None,
                "ml.attempt": 0,
                "ml.files_owned": result.owned,
                "ml.outcome": "claimed" if m and result.owned else "empty",
            }
        )
    )
    attrs = {"profile": plan.profile}
    FILES_CLAIMED.add(result.owned, attrs)
    if m and result.owned:
        BATCHES_CLAIMED.add(1, attrs)
        newest = max((c.last_modified for c in plan.files), default=None)
        if newest is not None:
            with _dropped_lock:
                if len(_dropped) >= MAX_REMEMBERED:
                    _dropped.clear()
                _dropped[m.batch_id] = newest


traced_claim = _span("claim", _describe_claim, _after_claim, parent="poll.tick")


# -- launch ---------------------------------------------------------------------------------------


def _describe_launch(clients: Any, manifest: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _manifest_attrs(manifest) | {"ml.attempt": manifest.attempt + 1}


def _after_launch(span: Any, result: Any, clients: Any, manifest: Any, *a: Any, **k: Any) -> None:
    outcome = (
        "adopted"
        if result.adopted
        else "launched"
        if result.launched
        else f"error: {(result.error or {}).get('code', 'unknown')}"
    )
    span.set_attributes({"ml.group": result.group, "ml.outcome": outcome})
    if result.error:
        span.set_status(Status(StatusCode.ERROR, str(result.error.get("message", ""))[:200]))
    if result.launched:
        attrs = {"profile": manifest.profile}
        BATCHES_LAUNCHED.add(1, attrs)
        with _dropped_lock:
            dropped = _dropped.pop(result.batch_id, None)
        if dropped is not None:
            # Storage's clock (launcher/clock.py), like the drop time: a skewed host clock
            # would shift every point.
            elapsed = (clients.clock.now() - dropped).total_seconds()
            DROP_TO_LAUNCH.record(max(0.0, elapsed), attrs)


traced_launch = _span("launch", _describe_launch, _after_launch, parent="poll.tick")


# -- sweep and finish -----------------------------------------------------------------------------


def _after_sweep(span: Any, report: Any, *args: Any, **kwargs: Any) -> None:
    outcome = "lease-busy" if report.lease_busy else "idle" if report.idle else "busy"
    span.set_attributes(
        {
            "ml.outcome": outcome,
            "ml.dry_run": report.dry_run,
            "ml.groups": report.groups_seen,
            "ml.batches": report.batches_seen,
            "ml.finished": len(report.finished),
            "ml.failed": len(report.failed),
            "ml.relaunched": len(report.relaunched),
            "ml.errors": len(report.errors),
        }
    )
    if report.errors:
        span.set_status(Status(StatusCode.ERROR, report.errors[0][:200]))
    if report.dry_run:
        return
    if not report.lease_busy:
        # Every profile configured or seen in this process gets a point, 0 included: a profile
        # whose last group went away must not keep its last count.
        clients = args[0] if args else kwargs.get("clients")
        _group_profiles.update(clients.settings.profile_names if clients is not None else ())
        _group_profiles.update(report.groups_by_profile)
        for name in sorted(_group_profiles):
            ACTIVE_GROUPS.set(report.groups_by_profile.get(name, 0), {"profile": name})
    for entries, outcome_name in ((report.finished, "succeeded"), (report.failed, "failed")):
        for entry in entries:
            profile = entry.get("profile") or "default"
            BATCHES_FINISHED.add(1, {"outcome": outcome_name, "profile": profile})
            if entry.get("duration_seconds") is not None:
                RUN_DURATION.record(
                    float(entry["duration_seconds"]),
                    {"outcome": entry.get("outcome", ""), "profile": profile},
                )
    stall = report.stall or {}
    if "waiting_files" in stall:
        FILES_WAITING.set(stall["waiting_files"])
        OLDEST_WAITING.set(stall.get("oldest_waiting_seconds") or 0.0)
        STALLED_FILES.set(stall.get("files") or 0)


traced_sweep = _span("sweep", _nothing, _after_sweep)


def _describe_finish(sweep: Any, manifest: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _manifest_attrs(manifest) | {"ml.outcome": manifest.target}


def _after_finish(span: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    return None


traced_finish = _span("finish", _describe_finish, _after_finish, parent="sweep")
