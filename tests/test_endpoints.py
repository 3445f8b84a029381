"""The HTTP endpoints, called through the function objects exactly as the Functions host does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.storage.blob import BlobLeaseClient

import function_app
from config import get_settings
from tests.conftest import Pipeline
from tests.helpers import drop


@pytest.fixture
def app_env(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    for key, value in pipeline.env(
        ACI_IMAGE="python:3.11", ACI_COMMAND='["python", "-c", "pass"]'
    ).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield pipeline
    get_settings.cache_clear()


# The library builds its function list once per app (a second call reports duplicates), as the
# host does when it indexes the app.
FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}


def call(
    name: str, method: str, route: str, params: dict[str, str] | None = None
) -> tuple[int, Any]:
    fn = FUNCTIONS[name]
    trigger = fn.get_trigger()
    assert trigger.route == route and method in [str(m) for m in trigger.methods]
    assert str(trigger.auth_level) != "ANONYMOUS"
    req = func.HttpRequest(
        method=method, url=f"http://localhost/api/{route}", params=params or {}, body=b""
    )
    resp = fn.get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body() or b"null")


def test_every_http_function_needs_a_key_and_avoids_reserved_routes() -> None:
    routes = {}
    for fn in FUNCTIONS.values():
        trigger = fn.get_trigger()
        if trigger.get_binding_name() == "httpTrigger":
            routes[fn.get_function_name()] = trigger.route
            if fn.get_function_name() == "ops_status_assets":
                # The page's script and stylesheet: a <script src> cannot send a key header.
                assert trigger.auth_level == func.AuthLevel.ANONYMOUS
            else:
                assert trigger.auth_level in (func.AuthLevel.FUNCTION, func.AuthLevel.ADMIN)
            assert not trigger.route.lower().startswith("admin")
            assert not fn.get_function_name().lower().startswith("admin")
    assert routes == {
        "ops_janitor": "ops/janitor",
        "ops_poll": "ops/poll",
        "ops_batches": "ops/batches",
        "ops_batch": "ops/batches/{batch}",
        "ops_batch_log": "ops/batches/{batch}/logs/{attempt}",
        "ops_batch_retry": "ops/batches/{batch}/retry",
        "ops_now": "ops/now",
        "ops_costs": "ops/costs",
        "ops_status": "ops/status",
        "ops_status_assets": "ops/status/assets/{name}",
    }


def test_the_anonymous_route_serves_only_the_page_assets() -> None:
    fn = FUNCTIONS["ops_status_assets"].get_user_function()
    for name, status, kind in (
        ("status.js", 200, "text/javascript"),
        ("status.css", 200, "text/css"),
        ("status.html", 404, None),  # the page itself needs the key (route ops/status)
        ("../status.py", 404, None),
        ("__init__.py", 404, None),
    ):
        req = func.HttpRequest(
            method="GET",
            url=f"http://localhost/api/ops/status/assets/{name}",
            body=b"",
            route_params={"name": name},
        )
        resp = fn(req)
        assert resp.status_code == status, name
        if kind:
            assert resp.mimetype == kind
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_poll_then_janitor_then_list(app_env: Pipeline) -> None:
    drop(app_env.container, ["incoming/a.txt"])
    status, body = call("ops_poll", "POST", "ops/poll")
    assert status == 200 and len(body["claimed"]) == 1
    status, body = call("ops_janitor", "POST", "ops/janitor", {"dryRun": "true"})
    assert status == 200 and body["dry_run"] is True
    status, body = call("ops_batches", "GET", "ops/batches")
    assert status == 200 and body["count"] == 1 and body["continuationToken"] is None
    row = body["batches"][0]
    assert row["state"] in ("launched",) and row["attempt"] == 1 and row["group"]
    assert row["label"] == "a.txt" and row["files"] == 1 and row["bytes"] == 4
    status, body = call("ops_batches", "GET", "ops/batches", {"state": "succeeded"})
    assert status == 200 and body["count"] == 0


@pytest.mark.parametrize(
    ("name", "method", "route", "params", "needle"),
    [
        ("ops_janitor", "POST", "ops/janitor", {"dryRun": "maybe"}, "dryRun"),
        ("ops_janitor", "POST", "ops/janitor", {"force": "1"}, "unknown query parameter"),
        ("ops_poll", "POST", "ops/poll", {"x": "1"}, "unknown query parameter"),
        ("ops_batches", "GET", "ops/batches", {"state": "bogus"}, "state must be one of"),
        ("ops_batches", "GET", "ops/batches", {"limit": "zero"}, "limit must be an integer"),
        ("ops_batches", "GET", "ops/batches", {"limit": "0"}, "between 1 and"),
        ("ops_batches", "GET", "ops/batches", {"continuationToken": "x"}, "token is not valid"),
    ],
)
def test_bad_parameters_get_a_clear_400(
    app_env: Pipeline, name: str, method: str, route: str, params: dict[str, str], needle: str
) -> None:
    before = sorted(b.name for b in app_env.container.list_blobs())
    status, body = call(name, method, route, params)
    assert status == 400 and needle in body["message"]
    assert sorted(b.name for b in app_env.container.list_blobs()) == before


def test_busy_lease_gives_409(app_env: Pipeline) -> None:
    drop(app_env.container, ["incoming/a.txt"])
    call("ops_poll", "POST", "ops/poll")  # something for the janitor to look at
    for lock, name, route in (
        ("locks/janitor", "ops_janitor", "ops/janitor"),
        ("locks/poll", "ops_poll", "ops/poll"),
    ):
        blob = app_env.container.get_blob_client(lock)
        if not blob.exists():
            blob.upload_blob(b"")
        drop(app_env.container, ["incoming/b.txt"])
        lease = BlobLeaseClient(blob)
        lease.acquire(lease_duration=15)
        try:
            status, body = call(name, "POST", route)
        finally:
            lease.release()
        assert status == 409 and "holds the lease" in body["message"]


def test_invalid_configuration_is_a_500_naming_the_setting(
    app_env: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_ATTEMPTS", "lots")
    get_settings.cache_clear()
    status, body = call("ops_batches", "GET", "ops/batches")
    assert status == 500 and any("MAX_ATTEMPTS" in p for p in body["problems"])
