"""The status page in a real browser (Debian's chromium, headless, driven by playwright-core)
against the real local stack (`python -m localdev.run`: Azurite, the ACI emulator running the
sample worker, the local Functions host with its timers and keys).

The stack runs two job profiles besides the default one (the example's ACI_* settings):
`model-a` takes folders whose name starts with `<`, `model-b` takes `slow-*` folders, runs a
container that sleeps, and may have one active group. Five folders are dropped: `good` (default,
succeeds), `bad` (default, an unreadable file: fails with exit code 2), one named
`<img src=x onerror=alert(1)>` (model-a, succeeds) and `slow-1`, `slow-2` (model-b: one runs, the
other waits at the profile's cap). tests/browser/status_page.mjs then checks through the page
that the batches appear with their profile and reach done and failed, that the Profiles table
shows each profile's groups against its cap, waiting files, done, failed and cost, that the
failed attempt's log opens, that retry works, that the name shows as text, that the janitor
runs after its dry run, and that no request leaves the app's origin or carries the key anywhere
but in a header.
Its screenshot goes to the test's temporary folder, or to $STATUS_PAGE_SCREENSHOT (the one in
docs/ was made that way).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "local.settings.example.json"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DRIVER = REPO_ROOT / "tests" / "browser" / "status_page.mjs"
# Set STATUS_PAGE_SCREENSHOT=docs/status-page.png to refresh the README's screenshot.
SCREENSHOT_ENV = "STATUS_PAGE_SCREENSHOT"
XSS = "<img src=x onerror=alert(1)>"
KEY = "local-function-key"
JOB_PROFILES = {
    "model-a": {"match": "<*", "image": "modellauncher/worker:latest"},
    "model-b": {
        "match": "slow-*",
        "image": "python:3.11-slim",
        "command": ["python", "-c", "import time; time.sleep(900)"],
        "max_active_groups": 1,
    },
}


def _require_browser() -> None:
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} missing: apt-get install -y chromium")
    if not (REPO_ROOT / "node_modules" / "playwright-core").is_dir():
        problems.append("node_modules/playwright-core missing: npm ci")
    if shutil.which("node") is None:
        problems.append("node missing")
    if problems:
        pytest.fail("the browser test needs: " + "; ".join(problems))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(host base URL, Azurite connection string) of a running `localdev.run`, with the
    example's settings plus JOB_PROFILES."""
    settings = json.loads(EXAMPLE.read_text())
    settings["Values"]["JOB_PROFILES"] = json.dumps(JOB_PROFILES)
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps(settings))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdev.run",
            "--free-ports",
            "--settings",
            str(settings_file),
            "--state-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "Model Launcher is running" in text, text
        host = next(x for x in lines if "Functions host on" in x).split("http://")[1].split("/")[0]
        blob_url = next(x for x in lines if "Azurite on" in x).split("Azurite on ")[1].split(",")[0]
        conn = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
            f"K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint={blob_url};"
        )
        yield f"http://{host}", conn
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    log = (tmp_path / "functions-host.log").read_text(errors="replace")
    assert KEY not in log, "the function key appeared in the host's log"


def test_status_page_in_a_real_browser(stack: tuple[str, str], tmp_path: Path) -> None:
    _require_browser()
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "status-page.png").resolve()
    base, conn = stack
    # The HTML and the data need the key; only the two static assets are public.
    assert requests.get(f"{base}/api/ops/status", timeout=30).status_code == 401
    assert requests.get(f"{base}/api/ops/now", timeout=30).status_code == 401
    page = requests.get(f"{base}/api/ops/status", headers={"x-functions-key": KEY}, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["Referrer-Policy"] == "no-referrer"
    script = requests.get(f"{base}/api/ops/status/assets/status.js", timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    assert requests.get(f"{base}/api/ops/status/assets/x.js", timeout=30).status_code == 404

    container = BlobServiceClient.from_connection_string(conn).get_container_client("watch")
    container.upload_blob("incoming/good/hello.txt", b"hello\nworld\n")
    container.upload_blob("incoming/bad/broken.txt", b"\xff\xfe not UTF-8")
    container.upload_blob(f"incoming/{XSS}/x.txt", b"fine\n")
    container.upload_blob("incoming/slow-1/x.txt", b"slow\n")
    container.upload_blob("incoming/slow-2/x.txt", b"slow\n")

    shot.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["node", str(DRIVER), base, KEY, str(shot)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    assert proc.stdout.strip(), proc.stderr[-4000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and found["error"] is None, (found, proc.stderr[-4000:])
    assert found["xssCellText"] == XSS  # shown as text ...
    assert found["profileCells"] == {"good": "default", "bad": "default", XSS: "model-a"}
    # The Profiles table, once good, bad and the script-named folder are finished and model-b
    # holds its one group (slow-1 runs; slow-2 waits, claimable, at the profile's cap).
    profiles = found["profiles"]
    costs = {name: row.pop("cost") for name, row in profiles.items()}
    assert profiles == {
        "default": {"groups": "0 / 20", "waiting": "0", "done": "1", "failed": "1", "atCap": False},
        "model-a": {"groups": "0 / 20", "waiting": "0", "done": "1", "failed": "0", "atCap": False},
        "model-b": {"groups": "1 / 1", "waiting": "1", "done": "0", "failed": "0", "atCap": True},
    }
    assert costs["model-b"] == "0 USD"
    assert all(c.endswith(" USD") and c != "0 USD" for c in (costs["default"], costs["model-a"]))
    assert found["imgElements"] == 0 and found["dialogs"] == []  # ... never as markup
    assert found["foreign"] == [] and found["keyInUrl"] == []
    # CSP violations and error answers would be reported here (the answers named in failed).
    assert found["consoleErrors"] == [], found["failedResponses"]
    assert found["failedResponses"] == []
    assert found["detailFiles"] == ["bad/broken.txt"]
    assert "unreadable" in found["logExcerpt"]
    assert found["timelineBars"] >= 3
    assert shot.stat().st_size > 10_000
    # The retry put the input back and marked the old batch; the CLI's history says so too.
    failed = container.download_blob(f"failed/{found['badBatch']}/_batch.json").readall()
    assert json.loads(failed)["retried"]["restored"]
