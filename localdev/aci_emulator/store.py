"""The emulator's state: container groups, their async operations, and the processes behind them.

All state lives in memory behind one re-entrant lock. Time moves forward in `_advance`, which
every request runs for the groups it touches and a ticker thread runs for all groups every 50 ms,
so a group provisions, starts and finishes whether or not anyone polls it, and a poll always sees
up-to-date state. Killing processes blocks (SIGTERM, grace, SIGKILL), so it happens outside the
lock; `pending_kills` keeps a group from starting new processes before the old ones are gone.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import subprocess
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from localdev.aci_emulator.images import ImageMap
from localdev.aci_emulator.limits import RateBudgets, check_group_limits, check_quotas
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
from localdev.aci_emulator.persist import Persister, check_rerunnable
from localdev.aci_emulator.processes import ProcessManager, base_environment, exit_code
from localdev.aci_emulator.state import (
    MAX_BACKOFF_SECONDS,
    MAX_OPERATIONS,
    PLATFORM_EXIT_CODES,
    TICK_SECONDS,
    ContainerRun,
    Group,
    Key,
    Operation,
    Response,
    add_event,
    decode_token,
    encode_token,
    not_found,
    read_log,
    transitioning,
)

logger = logging.getLogger(__name__)
TERMINATED_STATES = ("Succeeded", "Failed", "Stopped")


class Store:
    """Container groups of every subscription and resource group this emulator has seen."""

    def __init__(
        self,
        options: OptionsStore,
        images: ImageMap,
        processes: ProcessManager,
        state_dir: Path,
        pass_env: tuple[str, ...] = (),
        *,
        persister: Persister | None = None,
    ) -> None:
        self.options = options
        self.images = images
        self.processes = processes
        self.log_dir = state_dir / "logs"
        self.base_env = base_environment(pass_env)
        self.lock = threading.RLock()
        self.groups: dict[Key, Group] = {}
        self.operations: OrderedDict[str, Operation] = OrderedDict()
        self.budgets = RateBudgets()
        self._random = random.Random(options.snapshot().seed)
        self._stop = threading.Event()
        self._closed = False  # set at shutdown: no process may start after the final sweep
        self.persister = persister  # None: the groups live in memory only
        self.revision = 0  # bumped by every change worth persisting (`changed`)
        self._ticker = threading.Thread(target=self._tick_loop, name="aci-ticker", daemon=True)

    # ---------------------------------------------------------------- lifecycle

    def run_clock(self) -> None:
        """Reload persisted groups, then start the ticker that moves every group forward."""
        if self.persister is not None:
            self.persister.load(self)
        self._ticker.start()

    def changed(self) -> None:
        """A change the state file must get (callers hold the lock); the ticker writes it."""
        self.revision += 1

    def shutdown(self) -> None:
        """Stop the clock and kill every container process (the emulator is going away)."""
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(5)
        with self.lock:
            self._closed = True
            if self.persister is not None:  # as the groups are now, running containers included
                self.persister.save(self, force=True)
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
            self.budgets.reset()
            self.changed()
        self.processes.terminate(procs, grace=self.options.snapshot().kill_grace_seconds)
        return count

    def _tick_loop(self) -> None:
        last = time.time()
        while not self._stop.wait(TICK_SECONDS):
            try:
                kill_rate = self.options.snapshot().platform_kill_rate
                with self.lock:
                    now = time.time()
                    for group in list(self.groups.values()):
                        if kill_rate:
                            self._platform_kills(group, kill_rate * (now - last), now)
                        self._advance(group, now)
                    last = now
                if self.persister is not None:
                    self.persister.save(self)
            except Exception:  # the clock must keep going whatever one group does
                logger.exception("ticker failed")

    def _platform_kills(self, group: Group, chance: float, now: float) -> None:
        """ACI sometimes stops a container itself (host maintenance, repair): `platform_kill_rate`."""
        for c in group.containers:
            if c.proc is None or c.platform_exit is not None or self._random.random() >= chance:
                continue
            self.platform_kill(group, c, now, self._random.choice(PLATFORM_EXIT_CODES))

    def platform_kill(self, group: Group, c: ContainerRun, now: float, code: int) -> None:
        """The platform ends a running container: exit code 7147 or 7148 with the event "Killing
        container (platform initiated)", then the restart policy applies. A live process is
        killed (the ticker records the exit); one already gone (it died with an earlier
        emulator, see `persist`) is recorded at once."""
        c.platform_exit = code
        add_event(c.events, now, "Killing", "Killing container (platform initiated)")
        logger.info("%s: platform killed container %s", group.label, c.spec.name)
        if c.proc is not None:
            self.processes.kill_now(c.proc)
        else:
            self._terminated(group, c, code, now)

    # ---------------------------------------------------------------- ARM operations

    def put(self, sub: str, rg: str, name: str, body: Any, base: str) -> Response:
        """Create, or update as "Update containers in Azure Container Instances" describes: the
        same spec changes nothing on a live group; a modified property restarts a running
        group's containers in place; a terminated group (Succeeded, Failed, Stopped) is
        deployed as new and runs again; some properties can only change by delete + create."""
        check_subscription(sub)
        check_resource_group(rg)
        spec = validate_group(name, body)
        opts = self.options.snapshot()
        check_group_limits(spec, opts.group_limits)
        creates = (opts.creates_per_5_minutes, opts.creates_per_hour)
        old: list[subprocess.Popen[bytes]] = []
        with self.lock:
            pull_failure = self.images.check(
                name, [c.image for c in spec.containers], opts.unknown_image
            )
            now = time.time()
            key = (sub.lower(), rg.lower(), name.lower())
            group = self.groups.get(key)
            if group is None:
                region = normalize_location(spec.location)
                check_quotas(
                    spec,
                    (
                        g.spec
                        for g in self.groups.values()
                        if g.key[0] == key[0] and normalize_location(g.spec.location) == region
                    ),
                    opts.quota,
                    opts.cores_quota,
                )
                budget = self.budgets.take(sub, spec.location, "create", creates, now)
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
                self.changed()
                logger.info("created %s (generation %s)", group.label, group.generation)
                headers = self._op_header(group, now, base) | budget
                return Response(201, self._render(group, True), headers)
            self._advance(group, now)
            if normalize_location(spec.location) != normalize_location(group.spec.location):
                raise ArmError(
                    409,
                    "InvalidResourceLocation",
                    f"The resource '{name}' already exists in location "
                    f"'{group.spec.location}' in resource group '{group.rg}'. A resource with "
                    f"the same name cannot be created in location '{spec.location}'.",
                )
            state = self._group_state(group)
            terminated = not group.provisioning and state in TERMINATED_STATES
            if not terminated and spec.comparable() == group.spec.comparable():
                group.spec = dataclasses.replace(group.spec, tags=spec.tags)
                self.changed()
                headers = self._op_header(group, now, base)
                headers |= self.budgets.headers(sub, spec.location, "create", creates, now)
                return Response(200, self._render(group, True), headers)
            if group.provisioning:
                raise transitioning(name)
            changed = immutable_change(group.spec, spec)
            if changed:
                raise bad_request(
                    "InvalidContainerGroupUpdate",
                    f"The updates on container group '{name}' are invalid ({changed} changed). "
                    "If you are going to update the os type, restart policy, network profile, "
                    "ports, CPU, memory or GPU resources for a container group, you must delete "
                    "it first and then create a new one.",
                )
            if terminated:
                budget = self.budgets.take(sub, spec.location, "create", creates, now)
                group.deployment += 1
            else:
                budget = self.budgets.headers(sub, spec.location, "create", creates, now)
                for c in group.containers:
                    if c.proc is not None:
                        add_event(c.events, now, "Killing", f"Killing container {c.spec.name}")
                old = [p for _, p in group.running()]
                group.pending_kills += 1
            group.identity = render_identity(spec.identity, group.id)
            self._provision(
                group, spec, now, opts, pull_failure=pull_failure, keep_events=not terminated
            )
            group.secrets_lost = False  # a PUT brings the whole spec, secure values included
            self.changed()
            how = f"deployed as new (it was {state})" if terminated else "restarting in place"
            logger.info("redeploying %s (generation %s): %s", group.label, group.generation, how)
            headers = self._op_header(group, now, base) | budget
            response = Response(200, self._render(group, True), headers)
        if old:
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
            self.changed()
            return Response(200, self._render(group, True))

    def get(self, sub: str, rg: str, name: str) -> Response:
        with self.lock:
            return Response(200, self._render(self._lookup(sub, rg, name), True))

    def delete(self, sub: str, rg: str, name: str) -> Response:
        opts = self.options.snapshot()
        deletes = (opts.deletes_per_5_minutes, opts.deletes_per_hour)
        with self.lock:
            key = (sub.lower(), rg.lower(), name.lower())
            group = self.groups.get(key)
            if group is None:
                return Response(204)
            now = time.time()
            self._advance(group, now)
            if group.provisioning:
                raise transitioning(name)
            budget = self.budgets.take(sub, group.spec.location, "delete", deletes, now)
            del self.groups[key]
            self.changed()
            procs = [p for _, p in group.running()]
            body = self._render(group, True)
        self.processes.terminate(procs, grace=opts.kill_grace_seconds)
        logger.info("deleted %s (%s process(es) killed)", group.label, len(procs))
        return Response(200, body, budget)

    def stop(self, sub: str, rg: str, name: str) -> Response:
        opts = self.options.snapshot()
        with self.lock:
            group = self._lookup(sub, rg, name)
            if group.provisioning:
                raise transitioning(name)
            now = time.time()
            group.stopped = True
            for c in group.containers:
                c.restart_at = None
                if c.state == "Waiting" and c.previous is not None:
                    c.state, c.previous = "Terminated", None
                    c.detail = "Completed" if c.exit_code == 0 else "Error"
                if c.proc is not None:
                    add_event(c.events, now, "Killing", f"Stopping container {c.spec.name}")
            running = group.running()
            group.pending_kills += 1
            self.changed()
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
            check_rerunnable(group)
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
            check_rerunnable(group)
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
            path, running = run.log_path, run.proc is not None
        return Response(200, {"content": read_log(path, tail, running)})

    def list_groups(
        self, sub: str, rg: str | None, skiptoken: str | None, link_base: str
    ) -> Response:
        check_subscription(sub)
        if rg is not None:
            check_resource_group(rg)
        page_size = self.options.snapshot().page_size
        after = decode_token(skiptoken) if skiptoken else None
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
                token = encode_token((page[-1].key[1], page[-1].key[2]))
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
                    due = group.ready_at
                    if due <= now:  # a failing pull is being retried: until it may change
                        due = min(group.timeout_at, group.next_pull or group.timeout_at)
                    retry_after = round(min(max(due - now, 0.05), 5.0), 2)
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
        (containers Waiting, Pulling) for the second, then the containers start, or a failing
        pull is retried until `provision_timeout_seconds`. With `keep_events` (an update in
        place, start, restart) the containers keep their events and restart counts."""
        old = {c.spec.name: c for c in group.containers} if keep_events else {}
        group.generation += 1
        group.spec = spec
        group.provisioning_state = "Pending"
        group.stopped = False
        group.accepted = now
        group.creating_at = now + opts.provision_seconds / 2
        group.ready_at = now + opts.provision_seconds
        group.pull_failure = pull_failure
        group.timeout_at = now + opts.provision_timeout_seconds
        group.next_pull = None
        group.pull_backoff = 0.0
        group.events = []
        self.changed()
        suffix = f"-{group.deployment}" if group.deployment > 1 else ""
        log_dir = (
            self.log_dir
            / group.sub.lower()
            / group.rg.lower()
            / f"{group.name}-{group.uid[:8]}{suffix}"
        )
        runs = []
        for c in spec.containers:
            runs.append(self.container_run(c, log_dir / f"{c.name}.log"))
            before = old.get(c.name)
            if before is not None:
                runs[-1].events = list(before.events)
                runs[-1].restart_count = before.restart_count
                runs[-1].started_once = before.started_once
        group.containers = runs

    def container_run(self, c: ContainerSpec, log_path: Path) -> ContainerRun:
        """A container's run as its image rule says (command, folder, environment)."""
        rule = self.images.resolve(c.image)
        env = dict(self.base_env)
        if rule is not None:
            env.update(rule.env)
        env.update(c.env)
        return ContainerRun(
            spec=c,
            argv=rule.argv(c.command) if rule is not None else [],
            cwd=rule.cwd if rule is not None else Path.cwd(),
            env=env,
            log_path=log_path,
            pull_fails=rule is None or rule.pull == "fail",
        )

    def _advance(self, group: Group, now: float) -> None:
        if group.provisioning_state == "Pending" and now >= group.creating_at:
            group.provisioning_state = "Creating"
            self.changed()
            for c in group.containers:
                c.state, c.detail, c.previous = "Waiting", "", None
                add_event(c.events, now, "Pulling", f'pulling image "{c.spec.image}"')
        if (
            group.provisioning_state == "Creating"
            and now >= group.ready_at
            and group.pending_kills == 0
            and not group.pull_failure
        ):
            group.provisioning_state = "Succeeded"
            self.changed()
            for c in group.containers:
                add_event(c.events, now, "Pulled", f'Successfully pulled image "{c.spec.image}"')
                add_event(c.events, now, "Created", "Created container")
                self._start(group, c, now)
        if (
            group.pull_failure
            and not group.stopped
            and group.provisioning_state in ("Creating", "Failed")
            and now >= (group.next_pull or group.ready_at)
            and group.pending_kills == 0
        ):
            self._fail_pull(group, now)
        for c in group.containers:
            if c.proc is not None:
                returncode = c.proc.poll()
                if returncode is not None:
                    self._exited(group, c, c.proc, returncode, now)
            elif c.restart_at is not None and now >= c.restart_at and not group.stopped:
                self._start(group, c, now)

    def _fail_pull(self, group: Group, now: float) -> None:
        """One failed pull attempt: Failed + BackOff events, then back off and try again, as
        ACI keeps doing; provisioning turns Failed once `provision_timeout_seconds` is over
        ("Azure Container Instances states": "timeout after 30 minutes"), and the group stays
        Pending (a Failed provisioning does not stop the attempts)."""
        retry = group.next_pull is not None
        base = self.options.snapshot().restart_backoff_seconds
        group.pull_backoff = min(MAX_BACKOFF_SECONDS, group.pull_backoff * 2 or base)
        group.next_pull = now + group.pull_backoff
        self.changed()
        if group.provisioning_state == "Creating" and now >= group.timeout_at:
            group.provisioning_state = "Failed"
            logger.info("%s: image pull still failing (provisioningState Failed)", group.label)
        for c in group.containers:
            if not c.pull_fails:
                continue
            image = c.spec.image
            if retry:
                add_event(c.events, now, "Pulling", f'pulling image "{image}"')
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

    def _start(self, group: Group, c: ContainerRun, now: float) -> None:
        if self._closed:
            return
        if c.started_once:
            c.restart_count += 1
        c.restart_at = None
        if not c.argv:
            self.start_failed(
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
            self.start_failed(
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
        self.changed()
        logger.info("%s: container %s started (pid %s)", group.label, c.spec.name, proc.pid)

    def start_failed(
        self, group: Group, c: ContainerRun, now: float, code: int, message: str
    ) -> None:
        add_event(c.events, now, "Failed", message, "Warning")
        self.changed()
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
        code = exit_code(returncode) if c.platform_exit is None else c.platform_exit
        self._terminated(group, c, code, now)

    def _terminated(self, group: Group, c: ContainerRun, code: int, now: float) -> None:
        c.platform_exit = None
        c.state, c.exit_code, c.finish = "Terminated", code, now
        c.detail = "Completed" if code == 0 else "Error"
        logger.info("%s: container %s exited with %s", group.label, c.spec.name, code)
        self.changed()
        self._after_exit(group, c, now)

    def _after_exit(self, group: Group, c: ContainerRun, now: float) -> None:
        """Apply the restart policy: Never keeps Terminated; OnFailure/Always back off and rerun."""
        policy = group.spec.restart_policy
        if group.stopped or policy == "Never" or (policy == "OnFailure" and c.exit_code == 0):
            return
        if group.secrets_lost:  # reloaded without its secure values: it cannot run as it was
            logger.warning(
                "%s: not restarting %s (secrets not persisted)", group.label, c.spec.name
            )
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
