"""Azure Functions entry points (Python v2 model). Wiring only: every trigger calls a plain
function in `launcher/` or `cleanup/`, which also run from the command line.

The operator endpoints live under /api/ops/: the Functions host reserves routes (and function
names) starting with "admin" for its own admin API and refuses to load such functions
("The specified route conflicts with one or more built in routes", azure-functions-host#1781).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from cleanup import admin, costs, status
from cleanup.sweep import sweep
from config import get_settings
from launcher import telemetry
from launcher.clients import get_clients
from launcher.errors import run_logged
from launcher.poll import poll

logging.getLogger("azure").setLevel(logging.WARNING)
telemetry.setup()  # OpenTelemetry export if configured (launcher/telemetry.py)
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.timer_trigger(schedule="%POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
def poll_timer(timer: func.TimerRequest) -> None:
    """Claim new files and launch their batches (exactly one List Blobs when idle)."""
    run_logged("poll", get_settings, lambda s: poll(get_clients(s)))


@app.timer_trigger(schedule="%JANITOR_SCHEDULE%", arg_name="timer", run_on_startup=False)
def janitor_timer(timer: func.TimerRequest) -> None:
    """Finish terminated batches, keep logs, relaunch or dead-letter, delete groups."""
    run_logged("janitor", get_settings, lambda s: sweep(get_clients(s)))


def _reply(reply: admin.Reply) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(reply.body, indent=2, default=str),
        status_code=reply.status,
        mimetype="application/json",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


def _asset(found: tuple[bytes, str] | None) -> func.HttpResponse:
    if found is None:
        return func.HttpResponse(b"", status_code=404)
    body, mimetype = found
    return func.HttpResponse(
        body, status_code=200, mimetype=mimetype, charset="utf-8", headers=status.SECURITY_HEADERS
    )


@app.route(route="ops/janitor", methods=["POST"])
def ops_janitor(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(admin.run_janitor(dict(req.params)))


@app.route(route="ops/poll", methods=["POST"])
def ops_poll(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(admin.run_poll(dict(req.params)))


@app.route(route="ops/batches", methods=["GET"])
def ops_batches(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(admin.list_batches(dict(req.params)))


@app.route(route="ops/batches/{batch}", methods=["GET"])
def ops_batch(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(status.get_batch(dict(req.params) | dict(req.route_params)))


@app.route(route="ops/batches/{batch}/logs/{attempt}", methods=["GET"])
def ops_batch_log(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(status.get_log(dict(req.params) | dict(req.route_params)))


@app.route(route="ops/batches/{batch}/retry", methods=["POST"])
def ops_batch_retry(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(status.retry(dict(req.params) | dict(req.route_params)))


@app.route(route="ops/now", methods=["GET"])
def ops_now(req: func.HttpRequest) -> func.HttpResponse:
    return _reply(status.get_now(dict(req.params)))


@app.route(route="ops/costs", methods=["GET"])
def ops_costs(req: func.HttpRequest) -> func.HttpResponse:
    """Usage and estimated cost per profile over the last `days` (cleanup/costs.py)."""
    return _reply(costs.get_costs(dict(req.params)))


@app.route(route="ops/status", methods=["GET"])
def ops_status(req: func.HttpRequest) -> func.HttpResponse:
    """The status page (HTML). Its data comes from the keyed JSON endpoints above."""
    return _asset(status.page_html())


@app.route(route="ops/status/assets/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def ops_status_assets(req: func.HttpRequest) -> func.HttpResponse:
    """The page's script and stylesheet: public because a <script src> cannot send the key,
    and they are the same in every deployment, with no data in them."""
    return _asset(status.page_asset(req.route_params.get("name", "")))
