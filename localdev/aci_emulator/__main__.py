"""`python -m localdev.aci_emulator`: run the ACI emulator until SIGINT/SIGTERM (see the package
docstring for the flags, files and behaviour)."""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType

import trustme

from localdev.aci_emulator.images import REPO_ROOT, load_image_map
from localdev.aci_emulator.model import API_VERSION
from localdev.aci_emulator.options import UNKNOWN_IMAGE_MODES, Options, OptionsStore
from localdev.aci_emulator.persist import Persister
from localdev.aci_emulator.processes import ProcessManager
from localdev.aci_emulator.server import EmulatorServer
from localdev.aci_emulator.store import Store

logger = logging.getLogger("localdev.aci_emulator")


def _int_or_none(raw: str) -> int | None:
    """A count, or `none` for no limit."""
    return None if raw.lower() in ("none", "null", "") else int(raw)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Options()  # the strict (Azure) defaults
    p = argparse.ArgumentParser(
        prog="python -m localdev.aci_emulator",
        description="Local stand-in for the ARM API of Azure Container Instances.",
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".localdev" / "aci")
    p.add_argument("--images", type=Path, default=REPO_ROOT / "localdev" / "images.json")
    p.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="keep the container groups in this file across restarts (relative: to the state "
        "dir; default: in memory only)",
    )
    p.add_argument(
        "--quota",
        type=_int_or_none,
        default=d.quota,
        help="container groups per subscription and region (ContainerGroups; none: no limit)",
    )
    p.add_argument(
        "--cores-quota",
        type=_int_or_none,
        default=d.cores_quota,
        help="CPUs of standard groups per subscription and region (StandardCores)",
    )
    for kind in ("creates", "deletes"):
        p.add_argument(
            f"--{kind}-per-5-minutes",
            type=_int_or_none,
            default=getattr(d, f"{kind}_per_5_minutes"),
        )
        p.add_argument(
            f"--{kind}-per-hour", type=_int_or_none, default=getattr(d, f"{kind}_per_hour")
        )
    p.add_argument(
        "--group-limits",
        type=json.loads,
        default=d.group_limits,
        help="per-group CPU/memory/GPU limits as JSON (see docs/emulator.md)",
    )
    p.add_argument(
        "--resource-group",
        dest="resource_groups",
        action="append",
        default=None,
        metavar="GLOB",
        help=f"a resource group that exists (repeatable; default {d.resource_groups[0]})",
    )
    p.add_argument(
        "--authorization-failed",
        action="store_true",
        help="answer every ARM request with 403 AuthorizationFailed",
    )
    p.add_argument("--page-size", type=int, default=50, help="list page size (nextLink beyond)")
    p.add_argument(
        "--provision-seconds", type=float, default=d.provision_seconds, help="Pending+Creating time"
    )
    p.add_argument(
        "--provision-timeout-seconds",
        type=float,
        default=d.provision_timeout_seconds,
        help="a failing image pull turns provisioning Failed after this",
    )
    p.add_argument(
        "--platform-kill-rate",
        type=float,
        default=d.platform_kill_rate,
        help="chance per second that the platform kills a running container (exit 7147/7148)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every ARM request")
    p.add_argument("--fault-429-rate", type=float, default=0.0)
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of 429/503, s")
    p.add_argument(
        "--operation-retry-after",
        type=float,
        default=None,
        help="Retry-After on in-progress operation polls, s (default: the time left to "
        "provision; 0: none, as in recorded ACI traffic)",
    )
    p.add_argument("--fault-5xx-rate", type=float, default=0.0, help="500/503 before handling")
    p.add_argument(
        "--fault-after-commit-rate",
        type=float,
        default=0.0,
        help="mutations applied, then answered with 500",
    )
    p.add_argument(
        "--fault-drop-rate",
        type=float,
        default=0.0,
        help="requests handled, then the connection is closed without an answer",
    )
    p.add_argument("--unknown-image", choices=UNKNOWN_IMAGE_MODES, default="reject")
    p.add_argument("--kill-grace-seconds", type=float, default=2.0, help="SIGTERM to SIGKILL")
    p.add_argument("--restart-backoff-seconds", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="fault random seed")
    p.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="also pass this variable of the emulator's environment to containers",
    )
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down (killing containers) when the process that started the emulator exits",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> Options:
    options = OptionsStore(Options())
    options.update(
        {
            "quota": args.quota,
            "cores_quota": args.cores_quota,
            "creates_per_5_minutes": args.creates_per_5_minutes,
            "creates_per_hour": args.creates_per_hour,
            "deletes_per_5_minutes": args.deletes_per_5_minutes,
            "deletes_per_hour": args.deletes_per_hour,
            "group_limits": args.group_limits,
            "resource_groups": args.resource_groups or Options().resource_groups,
            "authorization_failed": args.authorization_failed,
            "page_size": args.page_size,
            "provision_seconds": args.provision_seconds,
            "provision_timeout_seconds": args.provision_timeout_seconds,
            "platform_kill_rate": args.platform_kill_rate,
            "latency_ms": args.latency_ms,
            "fault_429_rate": args.fault_429_rate,
            "retry_after": args.retry_after,
            "operation_retry_after": args.operation_retry_after,
            "fault_5xx_rate": args.fault_5xx_rate,
            "fault_after_commit_rate": args.fault_after_commit_rate,
            "fault_drop_rate": args.fault_drop_rate,
            "unknown_image": args.unknown_image,
            "kill_grace_seconds": args.kill_grace_seconds,
            "restart_backoff_seconds": args.restart_backoff_seconds,
            "seed": args.seed,
        }
    )
    return options.snapshot()


def tls_context(state_dir: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA (written to `ca.pem`) and a server certificate for the loopback names."""
    ca = trustme.CA(organization_name="ACI emulator (local development only)")
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ca_path = state_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ca_path


def write_json_atomically(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    parent = os.getppid()
    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # One emulator per state dir: a second one would kill the first one's containers as leftovers.
    lock = open(state_dir / "emulator.lock", "a")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        logger.error("another ACI emulator is using %s", state_dir)
        return 2
    info_path = state_dir / "emulator.json"
    info_path.unlink(missing_ok=True)
    try:
        initial = options_from_args(args)
        images = load_image_map(args.images)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    processes = ProcessManager(state_dir)
    leftovers = processes.kill_leftovers()
    if leftovers:
        logger.warning("killed %s container process(es) left by an earlier run", leftovers)
    context, ca_path = tls_context(state_dir)
    options = OptionsStore(initial)
    persister = Persister(state_dir / args.state_file) if args.state_file else None
    store = Store(options, images, processes, state_dir, tuple(args.pass_env), persister=persister)
    try:
        server = EmulatorServer(("127.0.0.1", args.port), store, options, initial, context)
    except OSError as exc:
        logger.error("cannot listen on 127.0.0.1:%s: %s", args.port, exc)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store.run_clock()
    serving = threading.Thread(target=server.serve_forever, name="aci-http", daemon=True)
    serving.start()
    write_json_atomically(
        info_path,
        {
            "url": server.url,
            "ca": str(ca_path),
            "pid": os.getpid(),
            "port": server.server_address[1],
            "state_dir": str(state_dir),
            "api_version": API_VERSION,
            "images": str(args.images.resolve()),
        },
    )
    logger.info(
        "ACI emulator listening on %s (api-version %s, CA %s, state %s)",
        server.url,
        API_VERSION,
        ca_path,
        state_dir,
    )
    try:
        while not stop.wait(0.5):
            if args.exit_with_parent and os.getppid() != parent:
                logger.warning("parent process %s exited", parent)
                break
    finally:
        logger.info("shutting down")
        server.shutdown()
        server.server_close()
        store.shutdown()
        info_path.unlink(missing_ok=True)
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
