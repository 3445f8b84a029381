"""Container processes: start, reap and kill local stand-ins for containers without orphans.

Every container runs in its own session (so its process group id is its pid); killing a
container signals the whole group, which takes down anything the process started too, the way a
container's exit takes down everything inside it. Pids of live processes are also written to
`<state-dir>/pids/` so a supervisor that had to SIGKILL the emulator can still clean up
(`testing.Emulator.stop` does).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# Inherited from the emulator's own environment: enough for a Python (or shell) process to run
# and to find its packages, nothing that identifies the developer's Azure session.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
)


def exit_code(returncode: int) -> int:
    """Popen's returncode as a container runtime reports it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def base_environment(extra_names: Iterable[str] = ()) -> dict[str, str]:
    names = (*INHERITED_ENV, *extra_names)
    env = {name: os.environ[name] for name in names if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"  # logs appear while the process runs, as `docker logs` shows
    return env


class ProcessManager:
    """Starts container processes and tracks their pid files; killing is synchronous."""

    def __init__(self, state_dir: Path) -> None:
        self.pid_dir = state_dir / "pids"
        self.pid_dir.mkdir(parents=True, exist_ok=True)

    def spawn(
        self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Start one process with stdout and stderr both appended to `log_path` (one file
        descriptor for both, so their lines stay in the order they were written)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        (self.pid_dir / str(proc.pid)).write_text(_start_time(proc.pid) or "")
        return proc

    def reaped(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget a process that has exited; kill whatever it left behind in its group."""
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (self.pid_dir / str(proc.pid)).unlink()

    def kill_now(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a container's process group without waiting (the ticker reaps it)."""
        _signal_group(proc.pid, signal.SIGKILL)

    def terminate(self, procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
        """SIGTERM each process group, SIGKILL what is left after `grace` seconds, wait for all.
        Blocks: callers must not hold the store lock."""
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in live:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                logger.error("process %s survived SIGKILL for 10 s", proc.pid)
                continue
            self.reaped(proc)

    def kill_leftovers(self) -> int:
        """SIGKILL the groups recorded by an emulator that could not clean up."""
        return kill_recorded(self.pid_dir)


def kill_recorded(pid_dir: Path) -> int:
    """SIGKILL the process groups recorded in `pid_dir` whose leader is still the process that
    was started (same pid *and* start time, so a reused pid is never hit); returns how many."""
    killed = 0
    if not pid_dir.is_dir():
        return killed
    for path in pid_dir.iterdir():
        if path.name.isdigit():
            recorded = path.read_text().strip()
            if recorded and _start_time(int(path.name)) == recorded:
                _signal_group(int(path.name), signal.SIGKILL)
                killed += 1
        path.unlink(missing_ok=True)
    return killed


def _start_time(pid: int) -> str | None:
    """The process start time from /proc (clock ticks since boot), None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
