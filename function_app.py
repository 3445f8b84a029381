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

from cleanup import admin
from cleanup.sweep import sweep
from config import get_settings
from launcher.clients import get_clients
from launcher.errors import run_logged
from launcher.poll import poll

logging.getLogger("azure").setLevel(logging.WARNING)
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
