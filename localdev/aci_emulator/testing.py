"""Helpers for tests and dev scripts: run the real emulator in a subprocess and talk to it.

`start_emulator` runs `python -m localdev.aci_emulator` exactly as a developer would, so tests go
through the same TLS, routing and process handling. `make_client` builds the production SDK
client; only the endpoint, the trusted CA and the (fake) credential differ from Azure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from localdev.aci_emulator.images import REPO_ROOT
from localdev.aci_emulator.options import INT_OR_NONE
from localdev.aci_emulator.processes import kill_recorded

ARM_SCOPE = "https://management.azure.com/.default"


class EmulatorCredential:
    """A FAKE azure-core TokenCredential returning a fixed dummy bearer token.

    The ACI emulator accepts any bearer token; real Azure rejects this one. Use it only with an
    emulator on loopback: it exists so tests need no Azure login, not as a way around one.
    """

    TOKEN = "aci-emulator-fake-token"  # deliberately fake: the emulator ignores it

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return AccessToken(self.TOKEN, int(time.time()) + 3600)

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        return AccessTokenInfo(self.TOKEN, int(time.time()) + 3600)

    def close(self) -> None:
        """Nothing to release (part of the credential protocol)."""


@dataclass
class Emulator:
    """A running emulator started by `start_emulator`."""

    url: str
    ca: Path
    pid: int
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        context = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change options at run time, e.g. `configure(fault_429_rate=0.5, retry_after=0.2)`;
        returns all options. Keys: `Options` fields (see `localdev.aci_emulator.options`)."""
        result: dict[str, Any] = self._call("POST", "config", options)
        return result

    def stats(self) -> dict[str, Any]:
        """Request/response/fault counters plus group and process counts."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def reset_stats(self) -> None:
        self._call("POST", "stats/reset", {})

    def groups(self) -> list[dict[str, Any]]:
        """Debug view of every group: states, pids, log paths (never secrets)."""
        result: list[dict[str, Any]] = self._call("GET", "groups")
        return result

    def reset(self, options: bool = False) -> int:
        """Delete every group (killing its processes); with `options`, restore start options."""
        result: dict[str, Any] = self._call("POST", "reset", {"options": options})
        return int(result["groups_removed"])

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM the emulator (it kills its containers); SIGKILL and clean up after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        kill_recorded(self.state_dir / "pids")
        return self.process.returncode


def _flags(options: dict[str, Any]) -> list[str]:
    """Options as CLI flags: None -> `none` (a lifted limit; other None values are left out),
    True -> a bare switch, a list -> the
    flag repeated (`resource_groups` -> `--resource-group`), a dict -> JSON."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + ("resource-group" if key == "resource_groups" else key.replace("_", "-"))
        if isinstance(value, bool):
            argv += [flag] if value else []
            continue
        if isinstance(value, dict):
            argv += [flag, json.dumps(value)]
            continue
        if value is None:  # "no limit" where a limit can be lifted, else the default
            argv += [flag, "none"] if key in INT_OR_NONE and key != "seed" else []
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            argv += [flag, str(item)]
    return argv


@contextlib.contextmanager
def start_emulator(
    state_dir: Path,
    *,
    images: Path | None = None,
    timeout: float = 30,
    **options: Any,
) -> Iterator[Emulator]:
    """Run the emulator until the context exits. `options` become CLI flags
    (`quota=3` -> `--quota 3`, `pass_env=["A", "B"]` -> `--pass-env A --pass-env B`)."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    info_path = state_dir / "emulator.json"
    info_path.unlink(missing_ok=True)
    log_path = state_dir / "emulator.log"
    argv = [sys.executable, "-m", "localdev.aci_emulator", "--port", "0", "--exit-with-parent"]
    argv += ["--state-dir", str(state_dir)]
    argv += ["--images", str(images or REPO_ROOT / "localdev" / "images.json")]
    argv += _flags(options)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    emulator = None
    try:
        deadline = time.monotonic() + timeout
        while emulator is None:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the ACI emulator exited with {process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ACI emulator did not start in {timeout}s (log {log_path})")
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                info = json.loads(info_path.read_text())
                if info.get("pid") == process.pid:
                    emulator = Emulator(
                        url=info["url"],
                        ca=Path(info["ca"]),
                        pid=process.pid,
                        state_dir=state_dir,
                        process=process,
                        log_path=log_path,
                    )
            time.sleep(0.05)
        yield emulator
    finally:
        if emulator is not None:
            emulator.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()


def make_client(
    emulator: Emulator, subscription_id: str, **kwargs: Any
) -> ContainerInstanceManagementClient:
    """The production SDK client pointed at the emulator: `base_url` and `connection_verify`
    are the only differences (plus the fake credential). Extra kwargs go to the client, e.g.
    `polling_interval=0.2` or `retry_backoff_factor=0.1`."""
    return ContainerInstanceManagementClient(
        EmulatorCredential(),
        subscription_id,
        base_url=emulator.url,
        credential_scopes=[ARM_SCOPE],
        connection_verify=str(emulator.ca),
        **kwargs,
    )
