"""A tiny Functions app (Python v2 model) used only by tests/test_local_host.py.

Each function records what happened in a file named by an environment variable, so tests
can observe a host running in another process. A function whose variable is unset does
nothing. Named ``sample_app`` (not function_app) so it never shadows the real app module.
"""

from __future__ import annotations

import json
import os
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _append(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer")
def tick(timer: func.TimerRequest) -> None:
    """Records each firing time and the TimerRequest it got."""
    _append(
        "HOSTAPP_TICK_FILE",
        json.dumps(
            {
                "at": time.time(),
                "past_due": timer.past_due,
                "type": type(timer).__module__ + "." + type(timer).__name__,
                "is_timer_request": isinstance(timer, func.TimerRequest),
            }
        ),
    )


@app.timer_trigger(schedule="%SLOW_SCHEDULE%", arg_name="timer")
def slow(timer: func.TimerRequest) -> None:
    """Runs longer than its period, to show runs never overlap."""
    if not os.environ.get("HOSTAPP_SLOW_FILE"):
        return
    _append("HOSTAPP_SLOW_FILE", f"start {time.time()}")
    time.sleep(float(os.environ.get("HOSTAPP_SLOW_SECONDS", "2.5")))
    _append("HOSTAPP_SLOW_FILE", f"end {time.time()}")


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
def startup(timer: func.TimerRequest) -> None:
    """Yearly, so any run while a test watches comes from run_on_startup."""
    _append("HOSTAPP_STARTUP_FILE", f"{time.time()}")


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
def manual(timer: func.TimerRequest, context: func.Context) -> None:
    """Run through --once or the admin API; also receives the invocation context."""
    _append("HOSTAPP_MANUAL_FILE", f"{context.function_name} {context.invocation_id}")


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
def boom(timer: func.TimerRequest) -> None:
    """Always fails, for --once's exit code."""
    raise RuntimeError("boom from the sample app")


def _echo(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "method": req.method,
        "url": req.url,
        "params": dict(req.params),
        "route_params": dict(req.route_params),
        "body": req.get_body().decode("utf-8", "replace"),
        "user_agent": req.headers.get("user-agent"),
        "greeting": os.environ.get("HOSTAPP_GREETING"),
        "only_in_settings": os.environ.get("HOSTAPP_ONLY_IN_SETTINGS"),
    }
    return func.HttpResponse(
        json.dumps(body), mimetype="application/json", headers={"X-Echo": "yes"}
    )


@app.route(route="echo/anon", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo_anon(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req)


@app.route(route="echo/func", methods=["GET", "POST"])
def echo_func(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req)


@app.route(route="echo/admin", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def echo_admin(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req)


@app.route(
    route="items/{item_id:int}/{rest?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
def items(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req)


@app.route(route="fail", auth_level=func.AuthLevel.ANONYMOUS)
def fail(req: func.HttpRequest) -> func.HttpResponse:
    raise ValueError("failing on purpose")


@app.route(route="text", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def text(req: func.HttpRequest) -> str:
    return "plain text from an async function"
