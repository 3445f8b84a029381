"""The emulator's container groups on disk (`--state-file`), so they outlive a restart.

A restart of the emulator is, for its groups, an outage of the host they ran on: their
processes died with it. Reloaded groups therefore look the way Azure shows groups after such an
outage, which is what the emulator's platform kills already produce (`Store.platform_kill`):

- a container that was running: `Terminated`, exit code 7148 ("Killed due to a host issue /
  container group failure"), event `Killing` "Killing container (platform initiated)", finish
  time = when the state was last saved; the group state becomes `Failed` (restart policy Never);
- a group still provisioning (Pending/Creating): provisioning `Failed`, each container
  `Terminated` with exit code 7148 and a `Failed` (Warning) event saying provisioning was
  interrupted by the outage (re-provisioning would need the secure values, see below);
- a group whose image pull keeps failing goes on failing, from the same back-off and timeout;
- everything else (terminated, stopped, waiting) comes back as it was: states, exit codes,
  times, events, restart counts. Container logs stay in the state dir's `logs/` and are read
  with ACI's truncation rules, as before.

Secrets never reach the file: a group is written as ARM echoes it (`model.sanitize`: no secure
environment values, registry passwords, Azure Files or Log Analytics keys, secret volumes or
protected settings). So a reloaded group that had any cannot run its old spec again: its restart
policy is not applied and POST start/restart answer 409 `ContainerGroupSecretsNotPersisted` (an
emulator-only code) until a PUT of the whole spec deploys it as new (Azure would keep them).
Not kept either: in-flight async operations (a poll answers 404 `OperationNotFound`) and the
create/delete budget history.

Writes are atomic (temp file + `os.replace`) and cheap: the store counts changes that matter
(`Store.changed`: create, update, delete, provisioning steps, a container starting or ending),
and the ticker writes at most every `SAVE_INTERVAL_SECONDS` when there was one, plus a heartbeat
every `HEARTBEAT_SECONDS` while a container runs (so a killed emulator's outage time is close)
and a final write at shutdown. Log output never triggers a write.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localdev.aci_emulator.model import ArmError, render_identity, sanitize, validate_group
from localdev.aci_emulator.state import ContainerRun, Event, Group

if TYPE_CHECKING:
    from localdev.aci_emulator.store import Store

logger = logging.getLogger(__name__)

STATE_VERSION = 1
SAVE_INTERVAL_SECONDS = 0.5
HEARTBEAT_SECONDS = 30.0
OUTAGE_EXIT_CODE = 7148
INTERRUPTED = (
    "Provisioning of container group '{name}' was interrupted: the host it was deployed to "
    "became unavailable (the ACI emulator restarted)"
)
GROUP_FIELDS = (
    "uid",
    "sub",
    "rg",
    "name",
    "generation",
    "provisioning_state",
    "accepted",
    "creating_at",
    "ready_at",
    "deployment",
    "pull_failure",
    "timeout_at",
    "next_pull",
    "pull_backoff",
    "stopped",
)
RUN_FIELDS = (
    "state",
    "detail",
    "start",
    "finish",
    "exit_code",
    "previous",
    "restart_count",
    "restart_at",
    "backoff",
    "started_once",
)


def check_rerunnable(group: Group) -> None:
    """POST start/restart would rerun the old spec, whose secure values were never saved."""
    if group.secrets_lost:
        raise ArmError(
            409,
            "ContainerGroupSecretsNotPersisted",
            f"The container group '{group.name}' was reloaded by a restarted ACI emulator, which "
            "does not store secrets: deploy it again with PUT (the whole spec) to run it.",
        )


def dump_group(group: Group) -> dict[str, Any]:
    """One group as JSON, without any secret (`sanitize`)."""
    props = sanitize(group.spec.properties)
    return {
        **{name: getattr(group, name) for name in GROUP_FIELDS},
        "secrets_lost": group.secrets_lost or props != group.spec.properties,
        "spec": {
            "location": group.spec.location,
            "tags": group.spec.tags,
            "identity": group.spec.identity,
            "zones": group.spec.zones,
            "properties": props,
        },
        "events": [asdict(e) for e in group.events],
        "containers": [
            {
                **{name: getattr(c, name) for name in RUN_FIELDS},
                "log_path": str(c.log_path),
                "running": c.proc is not None,
                "events": [asdict(e) for e in c.events],
            }
            for c in group.containers
        ],
    }


class Persister:
    """Writes the store's groups to `path` and reloads them when the emulator starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._revision = -1  # the store revision last written
        self._written = 0.0  # monotonic time of the last write

    def save(self, store: Store, force: bool = False) -> None:
        """Write the groups if something changed (at most every SAVE_INTERVAL_SECONDS), on the
        heartbeat while a container runs, or now with `force` (shutdown)."""
        now = time.monotonic()
        with store.lock:
            since = now - self._written
            running = any(g.running() for g in store.groups.values())
            due = store.revision != self._revision and since >= SAVE_INTERVAL_SECONDS
            if not (force or due or (running and since >= HEARTBEAT_SECONDS)):
                return
            revision = store.revision
            data = {
                "version": STATE_VERSION,
                "saved_at": time.time(),
                "groups": [dump_group(g) for g in store.groups.values()],
            }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._revision, self._written = revision, now

    def load(self, store: Store) -> int:
        """Put the saved groups back into `store` as Azure shows them after an outage of their
        host (see the module docstring); returns how many. An unreadable file is set aside."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('version')!r}")
            at = float(data["saved_at"])
            groups = [(self._group(store, raw), raw) for raw in data["groups"]]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, ArmError) as exc:
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            logger.error(
                "state file %s unreadable (%s): starting empty, kept as %s", self.path, exc, aside
            )
            return 0
        with store.lock:
            for group, raw in groups:
                store.groups[group.key] = group
                self._outage(store, group, raw, at)
            store.changed()
        logger.info("reloaded %s container group(s) from %s", len(groups), self.path)
        return len(groups)

    @staticmethod
    def _group(store: Store, raw: dict[str, Any]) -> Group:
        spec_json = raw["spec"]
        spec = validate_group(raw["name"], spec_json)
        group = Group(
            spec=spec,
            identity=None,
            secrets_lost=bool(raw["secrets_lost"]),
            events=[Event(**e) for e in raw["events"]],
            **{name: raw[name] for name in GROUP_FIELDS},
        )
        group.identity = render_identity(spec.identity, group.id)
        for cspec, craw in zip(spec.containers, raw["containers"], strict=True):
            run: ContainerRun = store.container_run(cspec, Path(craw["log_path"]))
            for name in RUN_FIELDS:
                setattr(run, name, craw[name])
            run.events = [Event(**e) for e in craw["events"]]
            group.containers.append(run)
        return group

    @staticmethod
    def _outage(store: Store, group: Group, raw: dict[str, Any], at: float) -> None:
        """The host went down at `at`: what was running or provisioning ended then."""
        interrupted = group.provisioning and not group.pull_failure
        if interrupted:
            group.provisioning_state = "Failed"
        message = INTERRUPTED.format(name=group.name)
        for c, craw in zip(group.containers, raw["containers"], strict=True):
            if interrupted:
                store.start_failed(group, c, at, OUTAGE_EXIT_CODE, message)
            elif craw["running"]:
                store.platform_kill(group, c, at, OUTAGE_EXIT_CODE)
            if c.restart_at is not None and (interrupted or group.secrets_lost):
                # Its restart policy would run it again, which needs what was not saved (the
                # secure values) or a provisioning that failed: it stays as it ended.
                c.restart_at = None
                c.state, c.previous = "Terminated", None
                c.detail = "Completed" if c.exit_code == 0 else "Error"
