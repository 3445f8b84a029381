"""Drop local files or folders into the watched folder, the way a user would.

    .venv/bin/python scripts/drop.py path/to/folder [more paths] [--as NAME]

Reads STORAGE_CONNECTION_STRING (or STORAGE_ACCOUNT_URL with your az login), WATCH_CONTAINER,
INCOMING_PREFIX and BATCH_READY_MARKER from the environment or local.settings.json. A folder is
uploaded under incoming/<folder name>/; with a ready marker configured it is written last, so the
poller claims the folder only once every file is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parent.parent


def setting(name: str, default: str | None = None) -> str | None:
    if name in os.environ:
        return os.environ[name]
    local = ROOT / "local.settings.json"
    if local.exists():
        value = json.loads(local.read_text()).get("Values", {}).get(name)
        if value is not None:
            return str(value)
    return default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--as", dest="name", help="folder name to use under incoming/")
    args = parser.parse_args(argv)
    conn, url = setting("STORAGE_CONNECTION_STRING"), setting("STORAGE_ACCOUNT_URL")
    if conn:
        service = BlobServiceClient.from_connection_string(conn)
    elif url:
        service = BlobServiceClient(url, credential=DefaultAzureCredential())
    else:
        print("set STORAGE_CONNECTION_STRING or STORAGE_ACCOUNT_URL", file=sys.stderr)
        return 2
    container = service.get_container_client(setting("WATCH_CONTAINER", "watch") or "watch")
    incoming = setting("INCOMING_PREFIX", "incoming/") or "incoming/"
    marker = setting("BATCH_READY_MARKER")
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
