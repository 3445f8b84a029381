"""The emulator's state: container groups, their async operations, and the processes behind them.

All state lives in memory behind one re-entrant lock. Time moves forward in `_advance`, which
every request runs for the groups it touches and a ticker thread runs for all groups every 50 ms,
so a group provisions, starts and finishes whether or not anyone polls it, and a poll always sees
up-to-date state. Killing processes blocks (SIGTERM, grace, SIGKILL), so it happens outside the
lock; `pending_kills` keeps a group from starting new processes before the old ones are gone.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import subprocess
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localdev.aci_emulator.images import ImageMap
from localdev.aci_emulator.model import (
    API_VERSION,
    RESOURCE_TYPE,
    ArmError,
    ContainerSpec,
    GroupSpec,
    bad_request,
    check_resource_group,
    check_subscription,
    group_id,
    immutable_change,
    iso,
    normalize_location,
    render_identity,
    sanitize,
    validate_group,
)
from localdev.aci_emulator.options import Options, OptionsStore
from localdev.aci_emulator.processes import ProcessManager, base_environment, exit_code
from localdev.aci_emulator.vocabulary import EVENT_NAMES, EVENT_TYPES

logger = logging.getLogger(__name__)

PROVISIONING = ("Pending", "Creating")
MAX_OPERATIONS = 20_000
LOG_LIMIT_BYTES = 4 * 1024 * 1024  # ACI returns at most the last 4 MB of a log
TICK_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 60.0

Key = tuple[str, str, str]


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Event:
    name: str
    message: str
    type: str
    first: float
    last: float
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "firstTimestamp": iso(self.first, millis=False),
            "lastTimestamp": iso(self.last, millis=False),
            "name": self.name,
            "message": self.message,
            "type": self.type,
        }


def add_event(
    events: list[Event], now: float, name: str, message: str, type_: str = "Normal"
) -> None:
    """Record an event the way Kubernetes-style event lists do: repeats bump `count`. Only
    names and types ACI documents (see `vocabulary`) may be emitted."""
    if name not in EVENT_NAMES or type_ not in EVENT_TYPES:
        raise ValueError(f"undocumented ACI event {name!r} ({type_!r})")
    for event in events:
        if event.name == name and event.message == message:
            event.count += 1
            event.last = now
            return
    events.append(Event(name=name, message=message, type=type_, first=now, last=now))


@dataclass
class ContainerRun:
    """One container of one generation of a group, and its process."""

    spec: ContainerSpec
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    pull_fails: bool = False
    state: str | None = None  # None (not created yet) | Waiting | Running | Terminated
    detail: str = ""
    start: float | None = None
    finish: float | None = None
    exit_code: int | None = None
    previous: dict[str, Any] | None = None
    restart_count: int = 0
    restart_at: float | None = None
    backoff: float = 0.0
    started_once: bool = False
    events: list[Event] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def current_state(self) -> dict[str, Any] | None:
        if self.state == "Running" and self.start is not None:
            return {"state": "Running", "startTime": iso(self.start), "detailStatus": ""}
        if self.state == "Terminated" and self.start is not None and self.finish is not None:
            return {
                "state": "Terminated",
                "startTime": iso(self.start),
                "exitCode": self.exit_code,
                "finishTime": iso(self.finish),
                "detailStatus": self.detail,
            }
        if self.state == "Waiting":
            return {"state": "Waiting", "detailStatus": self.detail}
        return None

    def view(self) -> dict[str, Any] | None:
        current = self.current_state()
        if current is None and not self.events:
            return None
        out: dict[str, Any] = {"restartCount": self.restart_count}
        if current is not None:
            out["currentState"] = current
        if self.previous is not None:
            out["previousState"] = self.previous
        out["events"] = [e.to_json() for e in self.events]
        return out


@dataclass
class Group:
    uid: str
    sub: str
    rg: str
    name: str
    spec: GroupSpec
    identity: dict[str, Any] | None
    generation: int = 0
    provisioning_state: str = "Pending"
    accepted: float = 0.0
    creating_at: float = 0.0
    ready_at: float = 0.0
    pull_failure: str | None = None
    containers: list[ContainerRun] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    stopped: bool = False
    pending_kills: int = 0

    @property
    def id(self) -> str:
        return group_id(self.sub, self.rg, self.name)

    @property
    def label(self) -> str:
        """Short name for log lines."""
        return f"{self.rg}/{self.name}"

    @property
    def key(self) -> Key:
        return (self.sub.lower(), self.rg.lower(), self.name.lower())

    @property
    def provisioning(self) -> bool:
        return self.provisioning_state in PROVISIONING

    def running(self) -> list[tuple[ContainerRun, subprocess.Popen[bytes]]]:
        return [(c, c.proc) for c in self.containers if c.proc is not None]


@dataclass
class Operation:
    id: str
    sub: str
    key: Key
    uid: str
    generation: int
    resource_id: str
    started: float


def not_found(rg: str, name: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{RESOURCE_TYPE}/{name}' under resource group '{rg}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def transitioning(name: str) -> ArmError:
    return ArmError(
        409,
        "ContainerGroupTransitioning",
        f"The container group '{name}' is still transitioning, please retry later.",
    )


def _encode_token(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        rg, name = raw
        return (str(rg), str(name))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise bad_request("InvalidSkipToken", f"The skip token '{token}' is invalid.") from exc


class Store:
    """Container groups of every subscription and resource group this emulator has seen."""

    def __init__(
        self,
        options: OptionsStore,
        images: ImageMap,
        processes: ProcessManager,
        state_dir: Path,
        pass_env: tuple[str, ...] = (),
    ) -> None:
        self.options = options
        self.images = images
        self.processes = processes
        self.log_dir = state_dir / "logs"
        self.base_env = base_environment(pass_env)
        self.lock = threading.RLock()
        self.groups: dict[Key, Group] = {}
        self.operations: OrderedDict[str, Operation] = OrderedDict()
        self._stop = threading.Event()
        self._closed = False  # set at shutdown: no process may start after the final sweep
        self._ticker = threading.Thread(target=self._tick_loop, name="aci-ticker", daemon=True)

    # ---------------------------------------------------------------- lifecycle

    def run_clock(self) -> None:
        """Start the ticker thread that moves every group forward in time."""
        self._ticker.start()

    def shutdown(self) -> None:
        """Stop the clock and kill every container process (the emulator is going away)."""
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(5)
        with self.lock:
            self._closed = True
            procs = [p for g in self.groups.values() for _, p in g.running()]
            self.groups.clear()
        self.processes.terminate(procs, grace=min(self.options.snapshot().kill_grace_seconds, 2.0))
        logger.info("stopped %s container process(es)", len(procs))

    def reset(self) -> int:
        """Forget every group (killing their processes); returns how many there were."""
        with self.lock:
            count = len(self.groups)
            procs = [p for g in self.groups.values() for _, p in g.running()]
            self.groups.clear()
            self.operations.clear()
        self.processes.terminate(procs, grace=self.options.snapshot().kill_grace_seconds)
        return count

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                with self.lock:
                    now = time.time()
                    for group in list(self.groups.values()):
                        self._advance(group, now)
            except Exception:  # the clock must keep going whatever one group does
                logger.exception("ticker failed")

    # ---------------------------------------------------------------- ARM operations

    def put(self, sub: str, rg: str, name: str, body: Any, base: str) -> Response:
        check_subscription(sub)
        check_resource_group(rg)
        spec = validate_group(name, body)
        opts = self.options.snapshot()
        old: list[subprocess.Popen[bytes]] = []
        with self.lock:
            pull_failure = self._check_images(name, spec, opts)
            now = time.time()
            key = (sub.lower(), rg.lower(), name.lower())
            group = self.groups.get(key)
            if group is None:
                used = sum(1 for g in self.groups.values() if g.sub.lower() == key[0])
                if opts.quota is not None and used >= opts.quota:
                    raise bad_request(
                        "ContainerGroupQuotaReached",
                        f"Resource type '{RESOURCE_TYPE}' container group quota 'ContainerGroups' "
                        f"exceeded in region '{normalize_location(spec.location)}'. "
                        f"Limit: '{opts.quota}', Usage: '{used}' Requested: '1'.",
                    )
                uid = uuid.uuid4().hex
                group = Group(
                    uid=uid,
                    sub=sub,
                    rg=rg,
                    name=name,
                    spec=spec,
                    identity=render_identity(spec.identity, group_id(sub, rg, name)),
                )
                self._provision(group, spec, now, opts, pull_failure=pull_failure)
                self.groups[key] = group
                logger.info("created %s (generation %s)", group.label, group.generation)
                return Response(201, self._render(group, True), self._op_header(group, now, base))
            self._advance(group, now)
            if normalize_location(spec.location) != normalize_location(group.spec.location):
                raise ArmError(
                    409,
                    "InvalidResourceLocation",
                    f"The resource '{name}' already exists in location "
                    f"'{group.spec.location}' in resource group '{group.rg}'. A resource with "
                    f"the same name cannot be created in location '{spec.location}'.",
                )
            if spec.comparable() == group.spec.comparable():
                group.spec = dataclasses.replace(group.spec, tags=spec.tags)
                return Response(200, self._render(group, True), self._op_header(group, now, base))
            if group.provisioning:
                raise transitioning(name)
            changed = immutable_change(group.spec, spec)
            if changed:
                raise bad_request(
                    "InvalidContainerGroupUpdate",
                    f"The updates on container group '{name}' are invalid ({changed} changed). "
                    "If you are going to update the os type, restart policy, network profile, "
                    "CPU, memory or GPU resources for a container group, you must delete it "
                    "first and then create a new one.",
                )
            old = [p for _, p in group.running()]
            group.pending_kills += 1
            group.identity = render_identity(spec.identity, group.id)
            self._provision(group, spec, now, opts, pull_failure=pull_failure)
            logger.info("redeploying %s (generation %s)", group.label, group.generation)
            response = Response(200, self._render(group, True), self._op_header(group, now, base))
        self._kill(group, old, opts)
        return response

    def patch(self, sub: str, rg: str, name: str, body: Any) -> Response:
        """ACI's PATCH updates tags only."""
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise bad_request("InvalidRequestContent", "The request must contain a 'tags' object.")
        with self.lock:
            group = self._lookup(sub, rg, name)
            group.spec = dataclasses.replace(group.spec, tags=dict(tags))
            return Response(200, self._render(group, True))

    def get(self, sub: str, rg: str, name: str) -> Response:
        with self.lock:
            return Response(200, self._render(self._lookup(sub, rg, name), True))

    def delete(self, sub: str, rg: str, name: str) -> Response:
        opts = self.options.snapshot()
        with self.lock:
            key = (sub.lower(), rg.lower(), name.lower())
            group = self.groups.get(key)
            if group is None:
                return Response(204)
            self._advance(group, time.time())
            if group.provisioning:
                raise transitioning(name)
            del self.groups[key]
            procs = [p for _, p in group.running()]
            body = self._render(group, True)
        self.processes.terminate(procs, grace=opts.kill_grace_seconds)
        logger.info("deleted %s (%s process(es) killed)", group.label, len(procs))
        return Response(200, body)

    def stop(self, sub: str, rg: str, name: str) -> Response:
        opts = self.options.snapshot()
        with self.lock:
            group = self._lookup(sub, rg, name)
            if group.provisioning:
                raise transitioning(name)
            group.stopped = True
            for c in group.containers:
                c.restart_at = None
                if c.state == "Waiting" and c.previous is not None:
                    c.state, c.previous = "Terminated", None
                    c.detail = "Completed" if c.exit_code == 0 else "Error"
            running = group.running()
            group.pending_kills += 1
        self._kill(group, [p for _, p in running], opts, record=running)
        logger.info("stopped %s", group.label)
        return Response(204)

    def start_group(self, sub: str, rg: str, name: str, base: str) -> Response:
        """Run a stopped or finished group again (202), or nothing if it is running (204)."""
        opts = self.options.snapshot()
        with self.lock:
            group = self._lookup(sub, rg, name)
            if group.provisioning:
                raise transitioning(name)
            if not group.stopped and self._group_state(group) == "Running":
                return Response(204)
            now = time.time()
            self._provision(
                group, group.spec, now, opts, pull_failure=group.pull_failure, keep_events=True
            )
            return Response(202, None, self._op_header(group, now, base))

    def restart(self, sub: str, rg: str, name: str, base: str) -> Response:
        opts = self.options.snapshot()
        with self.lock:
            group = self._lookup(sub, rg, name)
            if group.provisioning:
                raise transitioning(name)
            now = time.time()
            old = [p for _, p in group.running()]
            group.pending_kills += 1
            self._provision(
                group, group.spec, now, opts, pull_failure=group.pull_failure, keep_events=True
            )
            response = Response(204, None, self._op_header(group, now, base))
        self._kill(group, old, opts)
        return response

    def logs(self, sub: str, rg: str, name: str, container: str, tail: int | None) -> Response:
        with self.lock:
            group = self._lookup(sub, rg, name)
            run = next((c for c in group.containers if c.spec.name == container), None)
            if run is None:
                raise ArmError(
                    404,
                    "ContainerNotFound",
                    f"The container '{container}' is not found in container group '{name}'.",
                )
            if not run.started_once:
                if group.provisioning:
                    raise transitioning(name)
                raise bad_request(
                    "ContainerLogNotAvailable",
                    f"The log of container '{container}' in container group '{name}' is not "
                    "available: the container has not started.",
                )
            path = run.log_path
        return Response(200, {"content": read_log(path, tail)})

    def list_groups(
        self, sub: str, rg: str | None, skiptoken: str | None, link_base: str
    ) -> Response:
        check_subscription(sub)
        if rg is not None:
            check_resource_group(rg)
        page_size = self.options.snapshot().page_size
        after = _decode_token(skiptoken) if skiptoken else None
        with self.lock:
            now = time.time()
            items = [
                g
                for g in self.groups.values()
                if g.key[0] == sub.lower() and (rg is None or g.key[1] == rg.lower())
            ]
            items.sort(key=lambda g: g.key[1:])
            if after is not None:
                items = [g for g in items if g.key[1:] > after]
            page = items[:page_size]
            for group in page:
                self._advance(group, now)
            body: dict[str, Any] = {"value": [self._render(g, False) for g in page]}
            if len(items) > len(page):
                token = _encode_token((page[-1].key[1], page[-1].key[2]))
                body["nextLink"] = f"{link_base}?api-version={API_VERSION}&$skiptoken={token}"
        return Response(200, body)

    def operation(self, sub: str, op_id: str) -> Response:
        """The Azure-AsyncOperation status of a PUT/start/restart: it follows the group's
        provisioning state; a deleted or redeployed group cancels it."""
        with self.lock:
            op = self.operations.get(op_id)
            if op is None or op.sub.lower() != sub.lower():
                raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' was not found.")
            group = self.groups.get(op.key)
            body: dict[str, Any] = {
                "id": op.resource_id,
                "name": op_id,
                "startTime": iso(op.started),
            }
            if group is None or group.uid != op.uid or group.generation != op.generation:
                body["status"] = "Canceled"
                body["error"] = {
                    "code": "OperationCanceled",
                    "message": "The operation was canceled: the container group was deleted or "
                    "redeployed.",
                }
                return Response(200, body)
            now = time.time()
            self._advance(group, now)
            body["status"] = group.provisioning_state
            headers = {}
            if group.provisioning:
                retry_after = self.options.snapshot().operation_retry_after
                if retry_after is None:  # poll again when provisioning is due to end
                    retry_after = round(min(max(group.ready_at - now, 0.05), 5.0), 2)
                if retry_after:
                    headers["Retry-After"] = f"{retry_after:g}"
            if group.provisioning_state == "Failed":
                body["error"] = {
                    "code": "InaccessibleImage",
                    "message": group.pull_failure or "The container group failed to provision.",
                }
            body["properties"] = {
                "events": [e.to_json() for c in group.containers for e in c.events]
            }
            return Response(200, body, headers)

    # ---------------------------------------------------------------- introspection

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "groups": len(self.groups),
                "running_processes": sum(len(g.running()) for g in self.groups.values()),
                "operations": len(self.operations),
            }

    def describe(self) -> list[dict[str, Any]]:
        """Debug view for tests and humans: pids and log files, never secrets."""
        with self.lock:
            return [
                {
                    "id": g.id,
                    "generation": g.generation,
                    "provisioningState": g.provisioning_state,
                    "state": self._group_state(g),
                    "containers": [
                        {
                            "name": c.spec.name,
                            "pid": c.proc.pid if c.proc is not None else None,
                            "state": c.state,
                            "exitCode": c.exit_code,
                            "restartCount": c.restart_count,
                            "logPath": str(c.log_path),
                        }
                        for c in g.containers
                    ],
                }
                for g in self.groups.values()
            ]

    # ---------------------------------------------------------------- internals

    def _lookup(self, sub: str, rg: str, name: str) -> Group:
        group = self.groups.get((sub.lower(), rg.lower(), name.lower()))
        if group is None:
            raise not_found(rg, name)
        self._advance(group, time.time())
        return group

    def _check_images(self, name: str, spec: GroupSpec, opts: Options) -> str | None:
        """Reject inaccessible images now (as ACI does at PUT time); return the pull-failure
        message if a container's image is to fail asynchronously instead."""
        failing = []
        for c in spec.containers:
            rule = self.images.resolve(c.image)
            if (rule is None and opts.unknown_image == "reject") or (
                rule is not None and rule.pull == "inaccessible"
            ):
                raise bad_request(
                    "InaccessibleImage",
                    f"The image '{c.image}' in container group '{name}' is not accessible. "
                    "Please check the image and registry credential.",
                )
            if rule is None or rule.pull == "fail":
                failing.append(c.image)
        if not failing:
            return None
        return f"Failed to pull image(s) {', '.join(repr(i) for i in failing)} for container group '{name}'."

    def _op_header(self, group: Group, now: float, base: str) -> dict[str, str]:
        op = Operation(
            id=str(uuid.uuid4()),
            sub=group.sub,
            key=group.key,
            uid=group.uid,
            generation=group.generation,
            resource_id=group.id,
            started=now,
        )
        self.operations[op.id] = op
        while len(self.operations) > MAX_OPERATIONS:
            self.operations.popitem(last=False)
        location = normalize_location(group.spec.location)
        url = (
            f"{base}/subscriptions/{group.sub}/providers/Microsoft.ContainerInstance/locations/"
            f"{location}/operations/{op.id}?api-version={API_VERSION}"
        )
        return {"Azure-AsyncOperation": url}

    def _provision(
        self,
        group: Group,
        spec: GroupSpec,
        now: float,
        opts: Options,
        *,
        pull_failure: str | None,
        keep_events: bool = False,
    ) -> None:
        """Start a new generation: Pending for the first half of `provision_seconds`, Creating
        for the second, then the containers start (or the pull fails)."""
        old_events = {c.spec.name: c.events for c in group.containers} if keep_events else {}
        group.generation += 1
        group.spec = spec
        group.provisioning_state = "Pending"
        group.stopped = False
        group.accepted = now
        group.creating_at = now + opts.provision_seconds / 2
        group.ready_at = now + opts.provision_seconds
        group.pull_failure = pull_failure
        group.events = []
        log_dir = (
            self.log_dir / group.sub.lower() / group.rg.lower() / f"{group.name}-{group.uid[:8]}"
        )
        runs = []
        for c in spec.containers:
            rule = self.images.resolve(c.image)
            env = dict(self.base_env)
            if rule is not None:
                env.update(rule.env)
            env.update(c.env)
            runs.append(
                ContainerRun(
                    spec=c,
                    argv=rule.argv(c.command) if rule is not None else [],
                    cwd=rule.cwd if rule is not None else Path.cwd(),
                    env=env,
                    log_path=log_dir / f"{c.name}.log",
                    pull_fails=rule is None or rule.pull == "fail",
                    events=list(old_events.get(c.name, [])),
                )
            )
        group.containers = runs

    def _advance(self, group: Group, now: float) -> None:
        if group.provisioning_state == "Pending" and now >= group.creating_at:
            group.provisioning_state = "Creating"
            for c in group.containers:
                add_event(c.events, now, "Pulling", f'pulling image "{c.spec.image}"')
        if (
            group.provisioning_state == "Creating"
            and now >= group.ready_at
            and group.pending_kills == 0
        ):
            if group.pull_failure:
                self._fail_pull(group, now)
            else:
                group.provisioning_state = "Succeeded"
                for c in group.containers:
                    add_event(
                        c.events, now, "Pulled", f'Successfully pulled image "{c.spec.image}"'
                    )
                    self._start(group, c, now)
        for c in group.containers:
            if c.proc is not None:
                returncode = c.proc.poll()
                if returncode is not None:
                    self._exited(group, c, c.proc, returncode, now)
            elif c.restart_at is not None and now >= c.restart_at and not group.stopped:
                self._start(group, c, now)

    def _fail_pull(self, group: Group, now: float) -> None:
        group.provisioning_state = "Failed"
        for c in group.containers:
            if not c.pull_fails:
                continue
            image = c.spec.image
            add_event(
                c.events,
                now,
                "Failed",
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to '
                f'pull and unpack image "{image}": not found',
                "Warning",
            )
            add_event(c.events, now, "Failed", "Error: ErrImagePull", "Warning")
            add_event(c.events, now, "BackOff", f'Back-off pulling image "{image}"')
            c.state, c.detail = "Waiting", "ErrImagePull"
        logger.info("%s: image pull failed (provisioningState Failed)", group.label)

    def _start(self, group: Group, c: ContainerRun, now: float) -> None:
        if self._closed:
            return
        if c.started_once:
            c.restart_count += 1
        c.restart_at = None
        if not c.argv:
            self._start_failed(
                group,
                c,
                now,
                127,
                f'Error: failed to start container "{c.spec.name}": the image mapping has no '
                f'command for image "{c.spec.image}" and the container sets none',
            )
            return
        try:
            proc = self.processes.spawn(c.argv, c.cwd, c.env, c.log_path)
        except OSError as exc:
            self._start_failed(
                group,
                c,
                now,
                126 if isinstance(exc, PermissionError) else 127,
                f'Error: failed to start container "{c.spec.name}": exec: "{c.argv[0]}": '
                f"{exc.strerror or exc}",
            )
            return
        c.proc = proc
        c.state, c.detail = "Running", ""
        c.start, c.finish, c.exit_code = now, None, None
        c.started_once = True
        add_event(c.events, now, "Started", "Started container")
        logger.info("%s: container %s started (pid %s)", group.label, c.spec.name, proc.pid)

    def _start_failed(
        self, group: Group, c: ContainerRun, now: float, code: int, message: str
    ) -> None:
        add_event(c.events, now, "Failed", message, "Warning")
        c.state, c.detail, c.exit_code = "Terminated", "Error", code
        c.start = c.finish = now
        c.started_once = True
        logger.warning("%s: %s", group.label, message)
        self._after_exit(group, c, now)

    def _exited(
        self,
        group: Group,
        c: ContainerRun,
        proc: subprocess.Popen[bytes],
        returncode: int,
        now: float,
    ) -> None:
        if c.proc is not proc:
            return  # already recorded (by the ticker or by the thread that killed it)
        c.proc = None
        self.processes.reaped(proc)
        code = exit_code(returncode)
        c.state, c.exit_code, c.finish = "Terminated", code, now
        c.detail = "Completed" if code == 0 else "Error"
        logger.info("%s: container %s exited with %s", group.label, c.spec.name, code)
        self._after_exit(group, c, now)

    def _after_exit(self, group: Group, c: ContainerRun, now: float) -> None:
        """Apply the restart policy: Never keeps Terminated; OnFailure/Always back off and rerun."""
        policy = group.spec.restart_policy
        if group.stopped or policy == "Never" or (policy == "OnFailure" and c.exit_code == 0):
            return
        base = self.options.snapshot().restart_backoff_seconds
        ran = (c.finish or now) - (c.start or now)
        c.backoff = base if c.backoff == 0 or ran > MAX_BACKOFF_SECONDS else c.backoff * 2
        c.backoff = min(c.backoff, MAX_BACKOFF_SECONDS)
        c.previous = c.current_state()
        c.state, c.detail = "Waiting", "CrashLoopBackOff: Back-off restarting failed"
        c.restart_at = now + c.backoff
        add_event(c.events, now, "BackOff", "Back-off restarting failed container", "Warning")

    def _kill(
        self,
        group: Group,
        procs: list[subprocess.Popen[bytes]],
        opts: Options,
        record: list[tuple[ContainerRun, subprocess.Popen[bytes]]] | None = None,
    ) -> None:
        """Kill `procs` (outside the lock), record their exits, then let the group go on."""
        try:
            self.processes.terminate(procs, grace=opts.kill_grace_seconds)
        finally:
            with self.lock:
                now = time.time()
                for c, proc in record or []:
                    if proc.returncode is not None:
                        self._exited(group, c, proc, proc.returncode, now)
                group.pending_kills -= 1

    def _group_state(self, group: Group) -> str:
        if group.stopped:
            return "Stopped"
        if group.provisioning or group.pull_failure:
            return "Pending"
        states = [c.state for c in group.containers]
        if any(s in ("Running", "Waiting", None) for s in states):
            return "Running"
        return "Succeeded" if all(c.exit_code == 0 for c in group.containers) else "Failed"

    def _render(self, group: Group, instance_view: bool) -> dict[str, Any]:
        """The group as ARM returns it; list results (instance_view=False) omit instance views."""
        props = sanitize(group.spec.properties)
        props["restartPolicy"] = group.spec.restart_policy
        props.setdefault("sku", "Standard")
        props.setdefault("initContainers", [])
        props["provisioningState"] = group.provisioning_state
        for cjson, run in zip(props["containers"], group.containers, strict=True):
            cprops = cjson["properties"]
            cprops.setdefault("ports", [])
            if instance_view and (view := run.view()) is not None:
                cprops["instanceView"] = view
        if isinstance(props.get("ipAddress"), dict):
            props["ipAddress"].setdefault("ip", "127.0.0.1")
        if instance_view:
            props["instanceView"] = {
                "events": [e.to_json() for e in group.events],
                "state": self._group_state(group),
            }
        out: dict[str, Any] = {
            "properties": props,
            "id": group.id,
            "name": group.name,
            "type": RESOURCE_TYPE,
            "location": group.spec.location,
            "tags": dict(group.spec.tags),
        }
        if group.identity is not None:
            out["identity"] = group.identity
        if group.spec.zones is not None:
            out["zones"] = list(group.spec.zones)
        return out


def read_log(path: Path, tail: int | None) -> str:
    """The last 4 MB of a container log, or its last `tail` lines."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - LOG_LIMIT_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    if tail is None:
        return text
    return "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
