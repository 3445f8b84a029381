"""Drop local files or folders into the watched folder, the way a user would.

    .venv/bin/python scripts/drop.py path/to/folder [more paths] [--as NAME]

Reads STORAGE_CONNECTION_STRING (or STORAGE_ACCOUNT_URL with your az login), WATCH_CONTAINER,
INCOMING_PREFIX and BATCH_READY_MARKER from the environment or local.settings.json. A folder is
uploaded under incoming/<folder name>/; with a ready marker configured it is written last, so the
poller claims the folder only once every file is there. If storage cannot be reached it says so
within seconds (exit 4): locally, is `make run` up?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient, ContainerClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import ConfigError, settings_environment  # noqa: E402 (after the path is set)

EXIT_ENVIRONMENT = 4
# The reachability check: a refused connection fails at once, a silent one after this long.
PROBE = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}


def reachable(container: ContainerClient, where: str) -> str | None:
    """Why `container` cannot be used (one line), or None: one request, no retries."""
    try:
        container.get_container_properties()
    except (ServiceRequestError, ServiceResponseError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return f"cannot reach storage at {where} ({first}): is `make run` up?"
    except HttpResponseError as exc:
        code = getattr(exc, "error_code", None) or exc.status_code
        if code == "ContainerNotFound":
            return (
                f"container {container.container_name!r} does not exist at {where}: "
                "`make run` creates it; check WATCH_CONTAINER"
            )
        return f"storage at {where} refused: {code}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--as", dest="name", help="folder name to use under incoming/")
    parser.add_argument("--settings", help="local.settings.json to read (default: ./ if there)")
    args = parser.parse_args(argv)
    try:
        local = ROOT / "local.settings.json"
        values = settings_environment(args.settings or (local if local.exists() else None))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    conn, url = values.get("STORAGE_CONNECTION_STRING"), values.get("STORAGE_ACCOUNT_URL")
    name = values.get("WATCH_CONTAINER") or "watch"

    def container_client(**options: Any) -> ContainerClient:
        if conn:
            service = BlobServiceClient.from_connection_string(conn, **options)
        else:
            service = BlobServiceClient(str(url), credential=DefaultAzureCredential(), **options)
        return service.get_container_client(name)

    if not conn and not url:
        print("set STORAGE_CONNECTION_STRING or STORAGE_ACCOUNT_URL", file=sys.stderr)
        return 2
    probe = container_client(**PROBE)
    problem = reachable(probe, probe.primary_endpoint.rsplit("/", 1)[0])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    container = container_client()
    incoming = values.get("INCOMING_PREFIX") or "incoming/"
    marker = values.get("BATCH_READY_MARKER")
    for path in args.paths:
        if path.is_dir():
            folder = args.name or path.name
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                name = f"{incoming}{folder}/{f.relative_to(path).as_posix()}"
                container.upload_blob(name, f.read_bytes(), overwrite=True)
                print(f"uploaded {name}")
            if marker:
                container.upload_blob(f"{incoming}{folder}/{marker}", b"", overwrite=True)
                print(f"uploaded {incoming}{folder}/{marker} (ready marker)")
        elif path.is_file():
            name = f"{incoming}{args.name + '/' if args.name else ''}{path.name}"
            container.upload_blob(name, path.read_bytes(), overwrite=True)
            print(f"uploaded {name}")
        else:
            print(f"no such file or folder: {path}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
