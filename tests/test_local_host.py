"""localdev/host/: NCRONTAB/TimeSpan parsing in-process, everything else against a real host
process loading tests/hostapps/sample_app.py on a free port.

Timing assertions are deliberately loose (medians, generous deadlines): they check the
cadence and the absence of overlap, not the scheduler's precision.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from localdev.host import (
    CronSchedule,
    HostError,
    KeyRing,
    RouteTemplate,
    ScheduleError,
    TimeSpanSchedule,
    apply_settings,
    next_occurrences,
    parse_schedule,
    resolve_setting_references,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP = REPO_ROOT / "tests" / "hostapps" / "sample_app.py"
MASTER_KEY = "test-master-key"
FUNCTION_KEY = "test-function-key"
STARTUP_TIMEOUT = 20.0
SAMPLE_ENV_NAMES = (
    "TICK_SCHEDULE",
    "SLOW_SCHEDULE",
    "HOSTAPP_TICK_FILE",
    "HOSTAPP_SLOW_FILE",
    "HOSTAPP_SLOW_SECONDS",
    "HOSTAPP_STARTUP_FILE",
    "HOSTAPP_MANUAL_FILE",
    "HOSTAPP_GREETING",
    "HOSTAPP_ONLY_IN_SETTINGS",
    "LOCALDEV_MASTER_KEY",
    "LOCALDEV_FUNCTION_KEY",
)


# --------------------------------------------------------------------------- NCRONTAB


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("expression", "base", "expected"),
    [
        # the examples in the Microsoft timer-trigger docs
        ("0 */5 * * * *", "2024-03-01T10:03:27", ["10:05:00", "10:10:00", "10:15:00"]),
        ("0 0 * * * *", "2024-03-01T10:03:27", ["11:00:00", "12:00:00"]),
        ("0 0 */2 * * *", "2024-03-01T10:03:27", ["12:00:00", "14:00:00"]),
        ("0 0 9-17 * * *", "2024-03-01T16:30:00", ["17:00:00", "2024-03-02T09:00:00"]),
        ("0 30 9 * * *", "2024-03-01T09:30:00", ["2024-03-02T09:30:00"]),
        # 2024-03-01 is a Friday: weekdays only, so Monday the 4th comes next
        ("0 30 9 * * 1-5", "2024-03-01T09:00:00", ["09:30:00", "2024-03-04T09:30:00"]),
        ("0 30 9 * Jan Mon", "2024-02-01T00:00:00", ["2025-01-06T09:30:00", "2025-01-13T09:30:00"]),
        ("5-7 * * * * *", "2024-03-01T10:00:00", ["10:00:05", "10:00:06", "10:00:07", "10:01:05"]),
        ("5,8,10 * * * * *", "2024-03-01T10:00:09", ["10:00:10", "10:01:05"]),
        ("0 5 * * * *", "2024-03-01T10:05:00", ["11:05:00"]),
        # NCrontab specifics: "a/step" runs to the end of the range, names are prefixes
        ("5/20 * * * * *", "2024-03-01T10:00:00", ["10:00:05", "10:00:25", "10:00:45"]),
        ("0 0 12 * * saturday", "2024-03-01T00:00:00", ["2024-03-02T12:00:00"]),
        # the 31st skips short months
        ("0 0 0 31 * *", "2024-04-01T00:00:00", ["2024-05-31T00:00:00", "2024-07-31T00:00:00"]),
        # day AND day-of-week must match (NCrontab), unlike Vixie cron's OR: Friday the 13th
        ("0 0 0 13 * 5", "2024-01-01T00:00:00", ["2024-09-13T00:00:00", "2024-12-13T00:00:00"]),
        ("* * * * * *", "2024-12-31T23:59:59.900000", ["2025-01-01T00:00:00"]),
    ],
)
def test_ncrontab_next_occurrences(expression: str, base: str, expected: list[str]) -> None:
    schedule = parse_schedule(expression)
    assert isinstance(schedule, CronSchedule)
    start = at(base)
    wanted = [at(e) if "T" in e else at(f"{base[:10]}T{e}") for e in expected]
    assert next_occurrences(schedule, start, len(wanted)) == wanted


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 */5 * * *", "'0 0 */5 * * *'"),  # five-field crontab: suggests the six-field form
        ("*/5 * * * *", "6 fields"),
        ("0 0 0 * * * 2024", "6 fields"),
        ("0 0 24 * * *", "[Hour]"),
        ("60 * * * * *", "[Second]"),
        ("0 0 0 * * 7", "[DayOfWeek]"),  # NCrontab's days of week are 0-6
        ("0 0 0 ? * *", "[Day]"),
        ("0 0 0 L * *", "[Day]"),
        ("0 0 0 * Foo *", "known value name"),
        ("0 0 0 30 2 *", "never occurs"),
        ("every minute", "not recognized"),
        ("", "not recognized"),
    ],
)
def test_invalid_schedules_are_refused(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match="not recognized") as caught:
        parse_schedule(expression)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("00:00:30", timedelta(seconds=30)),
        ("00:05:00", timedelta(minutes=5)),
        ("01:00:00", timedelta(hours=1)),
        ("1.02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("00:00:01.5", timedelta(seconds=1.5)),
        ("24:00:00", timedelta(days=24)),  # documented: hh of 24 or more reads as dd:hh:mm
    ],
)
def test_timespan_schedules(text: str, interval: timedelta) -> None:
    schedule = parse_schedule(text)
    assert schedule == TimeSpanSchedule(interval)
    base = at("2024-03-01T10:00:00")
    assert schedule.next_after(base) == base + interval


def test_zero_timespan_is_refused() -> None:
    with pytest.raises(ScheduleError, match="longer than zero"):
        parse_schedule("00:00:00")


def test_setting_references_resolve_from_the_environment() -> None:
    env = {"POLL_SCHEDULE": "0 */5 * * * *"}
    assert resolve_setting_references("%POLL_SCHEDULE%", env, where="f") == "0 */5 * * * *"
    with pytest.raises(HostError, match="'%MISSING%' does not resolve to a value"):
        resolve_setting_references("%MISSING%", env, where="Functions.f")


def test_existing_environment_wins_over_local_settings() -> None:
    env = {"A": "from-env"}
    applied = apply_settings({"A": "from-file", "B": "from-file"}, env)
    assert env == {"A": "from-env", "B": "from-file"}
    assert applied == ["B"]


def test_route_templates() -> None:
    route = RouteTemplate.parse("items/{item_id:int}/{rest?}")
    assert route.match("/items/42") == {"item_id": "42"}
    assert route.match("/ITEMS/42/more/") == {"item_id": "42", "rest": "more"}
    assert route.match("/items/abc") is None
    catch_all = RouteTemplate.parse("files/{*path}")
    assert catch_all.match("/files/a/b.txt") == {"path": "a/b.txt"}
    bounded = RouteTemplate.parse("page/{n:int:min(1)}/{lang=en}")
    assert bounded.match("/page/0") is None
    assert bounded.match("/page/3") == {"n": "3", "lang": "en"}


def test_key_rules() -> None:
    keys = KeyRing(master="m", function="f")
    assert keys.allows("anonymous", None)
    assert keys.allows("function", "f") and keys.allows("function", "m")
    assert not keys.allows("function", None) and not keys.allows("function", "x")
    assert keys.allows("admin", "m") and not keys.allows("admin", "f")
    # the header wins over ?code=, as in the host's AuthenticationLevelHandler
    assert keys.presented("wrong", {"code": ["f"]}) == "wrong"
    assert keys.presented(None, {"code": ["f", "g"]}) == "f"


# --------------------------------------------------------------------------- host process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HostProcess:
    """A host started by the tests, its files and its combined output."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    files: dict[str, Path]
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def lines(self, name: str) -> list[str]:
        path = self.files[name]
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SAMPLE_ENV_NAMES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_host(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    if "--settings" not in args:  # hermetic: never pick up a stray local.settings.json
        empty = log.parent / "empty.settings.json"
        empty.write_text('{"IsEncrypted": false, "Values": {}}')
        args = ["--settings", str(empty), *args]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "localdev.host", "--app", str(SAMPLE_APP), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_host(directory: Path, values: dict[str, str], args: list[str], **env: str) -> HostProcess:
    """Write local.settings.json, start the host, wait until it answers on its port."""
    files = {name: directory / f"{name}.txt" for name in ("tick", "slow", "startup", "manual")}
    settings = directory / "local.settings.json"
    port = free_port()
    settings.write_text(
        json.dumps({"IsEncrypted": False, "Values": values, "Host": {"LocalHttpPort": port}})
    )
    log = directory / "host.log"
    process = run_host(
        ["--settings", str(settings), *args],
        clean_env(
            HOSTAPP_TICK_FILE=str(files["tick"]),
            HOSTAPP_SLOW_FILE=str(files["slow"]),
            HOSTAPP_STARTUP_FILE=str(files["startup"]),
            HOSTAPP_MANUAL_FILE=str(files["manual"]),
            **env,
        ),
        log,
    )
    host = HostProcess(process, port, log, files, time.time())

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"host exited with {process.returncode}:\n{host.output()}")
        try:
            return requests.get(host.url, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, STARTUP_TIMEOUT, "the host to answer")
    return host


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    """One host for the HTTP and scheduling tests; the port comes from Host.LocalHttpPort."""
    values = {
        "TICK_SCHEDULE": "* * * * * *",
        "SLOW_SCHEDULE": "* * * * * *",
        "LOCALDEV_MASTER_KEY": MASTER_KEY,
        "LOCALDEV_FUNCTION_KEY": FUNCTION_KEY,
        "HOSTAPP_GREETING": "from-settings",
        "HOSTAPP_ONLY_IN_SETTINGS": "settings-value",
    }
    running = start_host(
        tmp_path_factory.mktemp("host"), values, [], HOSTAPP_GREETING="from-environment"
    )
    yield running
    running.stop()


def test_anonymous_route_builds_a_real_http_request(host: HostProcess) -> None:
    got = requests.get(f"{host.url}/api/echo/anon?a=1&b=two&a=3", timeout=5)
    assert got.status_code == 200
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Echo"] == "yes"
    echo = got.json()
    assert echo["method"] == "GET"
    assert echo["params"] == {"a": "1,3", "b": "two"}  # repeated values joined, as the host does
    assert echo["url"] == f"http://127.0.0.1:{host.port}/api/echo/anon?a=1&b=two&a=3"
    assert echo["user_agent"].startswith("python-requests")
    posted = requests.post(f"{host.url}/API/Echo/Anon", data=b"payload \xe2\x9c\x93", timeout=5)
    assert posted.status_code == 200
    assert posted.json()["method"] == "POST"
    assert posted.json()["body"] == "payload ✓"


def test_settings_reach_the_app_and_the_environment_wins(host: HostProcess) -> None:
    echo = requests.get(f"{host.url}/api/echo/anon", timeout=5).json()
    assert echo["greeting"] == "from-environment"
    assert echo["only_in_settings"] == "settings-value"


def test_route_parameters(host: HostProcess) -> None:
    got = requests.get(f"{host.url}/api/items/42/extra", timeout=5)
    assert got.status_code == 200
    assert got.json()["route_params"] == {"item_id": "42", "rest": "extra"}
    assert requests.get(f"{host.url}/api/items/42", timeout=5).json()["route_params"] == {
        "item_id": "42"
    }
    assert requests.get(f"{host.url}/api/items/not-a-number", timeout=5).status_code == 404


def test_function_level_needs_the_function_or_master_key(host: HostProcess) -> None:
    url = f"{host.url}/api/echo/func"
    for denied in (
        requests.get(url, timeout=5),
        requests.get(url, headers={"x-functions-key": "wrong"}, timeout=5),
        requests.get(url, params={"code": "wrong"}, timeout=5),
        # a present header wins over ?code=, as in the host
        requests.get(
            url, headers={"x-functions-key": "wrong"}, params={"code": FUNCTION_KEY}, timeout=5
        ),
    ):
        assert denied.status_code == 401
        assert denied.content == b""
    assert requests.get(url, headers={"x-functions-key": FUNCTION_KEY}, timeout=5).ok
    assert requests.get(url, params={"code": FUNCTION_KEY}, timeout=5).ok
    assert requests.get(url, headers={"x-functions-key": MASTER_KEY}, timeout=5).ok
    with_code = requests.post(url, params={"code": MASTER_KEY, "x": "1"}, data="hi", timeout=5)
    assert with_code.ok
    assert with_code.json()["params"] == {"code": MASTER_KEY, "x": "1"}  # passed through


def test_admin_level_needs_the_master_key(host: HostProcess) -> None:
    url = f"{host.url}/api/echo/admin"
    assert requests.get(url, timeout=5).status_code == 401
    assert (
        requests.get(url, headers={"x-functions-key": FUNCTION_KEY}, timeout=5).status_code == 401
    )
    assert requests.get(url, params={"code": FUNCTION_KEY}, timeout=5).status_code == 401
    assert requests.get(url, headers={"x-functions-key": MASTER_KEY}, timeout=5).ok
    assert requests.get(url, params={"code": MASTER_KEY}, timeout=5).ok


def test_unknown_routes_and_wrong_methods_are_404(host: HostProcess) -> None:
    assert requests.get(f"{host.url}/api/nope", timeout=5).status_code == 404
    assert requests.get(f"{host.url}/echo/anon", timeout=5).status_code == 404  # no prefix
    # The real host answers 404, not 405, to a method the function does not accept
    # (Azure/azure-functions-host#10098); keys are not even looked at.
    wrong = requests.delete(f"{host.url}/api/echo/anon", timeout=5)
    assert wrong.status_code == 404
    assert wrong.content == b""
    admin_only_get = requests.post(
        f"{host.url}/api/echo/admin", headers={"x-functions-key": MASTER_KEY}, timeout=5
    )
    assert admin_only_get.status_code == 404
    assert "(the Functions host answers 404, not 405)" in host.output()


def test_failures_answer_500_and_the_host_keeps_going(host: HostProcess) -> None:
    failed = requests.get(f"{host.url}/api/fail", timeout=5)
    assert failed.status_code == 500
    assert failed.content == b""
    output = host.output()
    assert "Executed 'Functions.fail' (Failed, Id=" in output
    assert "ValueError: failing on purpose" in output  # with its traceback
    text = requests.get(f"{host.url}/api/text", timeout=5)  # an async function returning str
    assert text.status_code == 200
    assert text.text == "plain text from an async function"
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_admin_api_runs_a_timer_function_now(host: HostProcess) -> None:
    url = f"{host.url}/admin/functions/manual"
    assert (
        requests.post(url, headers={"x-functions-key": FUNCTION_KEY}, timeout=5).status_code == 401
    )
    assert requests.post(url, headers={"x-functions-key": MASTER_KEY}, timeout=5).status_code == 202
    wait_until(lambda: len(host.lines("manual")) == 1, 10, "the manual run")
    function_name, invocation_id = host.lines("manual")[0].split()
    assert function_name == "manual"  # the context argument
    assert f"Executed 'Functions.manual' (Succeeded, Id={invocation_id}, Duration=" in host.output()


def test_timer_fires_every_second_from_a_setting(host: HostProcess) -> None:
    wait_until(lambda: len(host.lines("tick")) >= 5, 15, "five ticks")
    ticks = [json.loads(line) for line in host.lines("tick")]
    assert all(t["is_timer_request"] and t["past_due"] is False for t in ticks)
    assert ticks[0]["type"] == "azure.functions.timer.TimerRequest"
    times = [t["at"] for t in ticks]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert 0.7 <= statistics.median(gaps) <= 1.5
    assert statistics.median(t % 1 for t in times) < 0.5  # on the second, like "* * * * * *"
    output = host.output()
    assert "The next 5 occurrences of the 'tick' schedule (Cron: '* * * * * *')" in output
    assert "Executing 'Functions.tick' (Reason='Timer fired at " in output
    assert "Executed 'Functions.tick' (Succeeded, Id=" in output


def test_runs_of_one_function_never_overlap(host: HostProcess) -> None:
    def runs() -> list[tuple[float, float]]:
        events = [line.split() for line in host.lines("slow")]
        starts = [float(t) for kind, t in events if kind == "start"]
        ends = [float(t) for kind, t in events if kind == "end"]
        assert len(starts) - len(ends) in (0, 1), events  # at most one run in flight
        return list(zip(starts, ends, strict=False))

    wait_until(lambda: len(runs()) >= 2, 20, "two complete slow runs")
    completed = runs()
    for (_, previous_end), (next_start, _) in itertools.pairwise(completed):
        assert next_start >= previous_end
    # occurrences that passed during a run are not queued: one catch-up run, logged
    assert "Function 'Functions.slow' was still running at its next occurrence" in host.output()


def test_run_on_startup(host: HostProcess) -> None:
    wait_until(lambda: len(host.lines("startup")) >= 1, 10, "the startup run")
    time.sleep(0.5)
    startup_runs = host.lines("startup")
    assert len(startup_runs) == 1  # its yearly schedule never fires during the test
    assert float(startup_runs[0]) - host.started_at < STARTUP_TIMEOUT
    assert "Function 'startup' is configured to run on startup. Executing now." in host.output()


def running_slow(running: HostProcess) -> bool:
    """Whether the slow function is in the middle of a run."""
    lines = running.lines("slow")
    return bool(lines) and lines[-1].startswith("start")


def test_generated_keys_and_clean_shutdown(tmp_path: Path) -> None:
    """Without key settings the host makes keys up (logged once); SIGINT waits for a run."""
    running = start_host(
        tmp_path,
        {"TICK_SCHEDULE": "0 0 0 1 1 *", "SLOW_SCHEDULE": "* * * * * *"},
        [],
        HOSTAPP_SLOW_SECONDS="1.5",
    )
    try:
        output = running.output()
        keys = {}
        for setting in ("LOCALDEV_MASTER_KEY", "LOCALDEV_FUNCTION_KEY"):
            marker = f"{setting} is not set; generated for this run: "
            assert output.count(marker) == 1
            keys[setting] = output.split(marker)[1].split()[0]
        url = f"{running.url}/api/echo/func"
        assert requests.get(url, timeout=5).status_code == 401
        headers = {"x-functions-key": keys["LOCALDEV_FUNCTION_KEY"]}
        assert requests.get(url, headers=headers, timeout=5).ok
        admin = {"x-functions-key": keys["LOCALDEV_MASTER_KEY"]}
        assert requests.get(f"{running.url}/api/echo/admin", headers=admin, timeout=5).ok
        wait_until(lambda: running_slow(running), 10, "a slow run in flight")
    finally:
        code = running.stop(signal.SIGINT)
    assert code == 0
    assert running.lines("slow")[-1].startswith("end")  # the running invocation finished
    assert "Host stopped" in running.output()


def test_shutdown_abandons_runs_after_the_grace_period(tmp_path: Path) -> None:
    running = start_host(
        tmp_path,
        {"TICK_SCHEDULE": "0 0 0 1 1 *", "SLOW_SCHEDULE": "* * * * * *"},
        ["--grace-seconds", "0.5"],
        HOSTAPP_SLOW_SECONDS="30",
    )
    wait_until(lambda: running_slow(running), 10, "a slow run in flight")
    stopped = time.monotonic()
    assert running.stop(signal.SIGTERM) == 0
    assert time.monotonic() - stopped < 10
    assert "Still running after 0.5s, abandoned: slow" in running.output()


def test_missing_schedule_setting_stops_startup(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    process = run_host(["--port", str(free_port())], clean_env(SLOW_SCHEDULE="0 0 0 1 1 *"), log)
    assert process.wait(STARTUP_TIMEOUT) == 2
    output = log.read_text()
    assert "Error indexing method 'Functions.tick': '%TICK_SCHEDULE%' does not resolve" in output
    assert "TICK_SCHEDULE is neither in the environment nor in local.settings.json" in output


def test_five_field_schedule_stops_startup(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    env = clean_env(TICK_SCHEDULE="*/5 * * * *", SLOW_SCHEDULE="0 0 0 1 1 *")
    process = run_host(["--port", str(free_port())], env, log)
    assert process.wait(STARTUP_TIMEOUT) == 2
    assert "needs a leading {second} field, e.g. '0 */5 * * * *'" in log.read_text()


@pytest.mark.parametrize(
    ("function", "exit_code", "expected"),
    [
        ("tick", 0, "Executed 'Functions.tick' (Succeeded"),
        ("boom", 1, "RuntimeError: boom from the sample app"),
        ("echo_anon", 2, "'echo_anon' is HTTP-triggered"),
        ("nope", 2, "no timer-triggered function named 'nope'"),
    ],
)
def test_once(tmp_path: Path, function: str, exit_code: int, expected: str) -> None:
    """--once runs one timer function; other functions' settings are not needed."""
    log, ticks = tmp_path / "host.log", tmp_path / "tick.txt"
    env = clean_env(TICK_SCHEDULE="0 0 0 1 1 *", HOSTAPP_TICK_FILE=str(ticks))
    process = run_host(["--once", function], env, log)
    assert process.wait(STARTUP_TIMEOUT) == exit_code
    assert expected in log.read_text()
    if function == "tick":
        assert len(ticks.read_text().splitlines()) == 1


def test_routes_reserved_by_the_real_host_are_refused(tmp_path: Path) -> None:
    """Like Azure, which answers "The specified route conflicts with one or more built in routes"."""
    app = tmp_path / "function_app.py"
    app.write_text(
        "import azure.functions as func\n"
        "app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)\n"
        "@app.route(route='admin/janitor')\n"
        "def janitor(req: func.HttpRequest) -> func.HttpResponse:\n"
        "    return func.HttpResponse('x')\n"
    )
    log = tmp_path / "host.log"
    (tmp_path / "local.settings.json").write_text('{"IsEncrypted": false, "Values": {}}')
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "localdev.host", "--app", str(app), "--port", str(free_port())],
            cwd=REPO_ROOT,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert process.wait(STARTUP_TIMEOUT) == 2
    assert "conflicts with one or more built in routes" in log.read_text()
