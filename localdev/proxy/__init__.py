"""Loopback HTTP(S) reverse proxy for tests, chaos runs and benchmarks.

Sits between a client (the azure SDKs, the launcher, a poller in another process) and a local
emulator (Azurite for blobs and queues, the ARM emulator for Container Instances) so a run can:

* COUNT requests by kind (`storage_kind` / `queue_kind` / `arm_kind` classify them) and add a
  fixed DELAY per request, standing in for a cloud round trip in benchmarks;
* inject FAULTS (500, 503, 429 + Retry-After, and dropped connections both before forwarding and
  after the upstream applied the request: "applied but the response was lost");
* fire TRIGGERS: a callback (e.g. `os.kill(pid, SIGKILL)`) on the Nth request of a kind, before it
  is forwarded or after the upstream applied it, which is how crash tests pick their crash point.

It forwards the request target byte-for-byte (Shared Key signs the path and query, not the host),
streams bodies in fixed-size chunks both ways so multi-GB blobs pass in bounded memory, and keeps
one upstream keep-alive connection per client connection (= per handler thread).

In-process: ``with Proxy(upstream=azurite_url, delay_ms=20) as p: ... p.counts()``.
Other processes: ``python -m localdev.proxy --upstream URL --port N`` prints the URL (and the CA
path with ``--tls``) and is steered through ``/_proxy/...`` (counts, reset, config, trigger), a
control endpoint that is never counted, delayed or faulted.

Modules: `classify` (request kinds), `rules` (faults, triggers, refusals and their error
answers), `handler` (the HTTP server and per-connection forwarding), `core` (`Proxy`), `cli`
(the command line; `__main__`). Every public name is importable from `localdev.proxy`.
"""

from __future__ import annotations

from .classify import Classifier, Flavor, arm_kind, kind_matches, queue_kind, storage_kind
from .cli import main
from .core import MAX_PAUSE_SECONDS, Proxy
from .handler import BUFFER_LIMIT, CHUNK, CONTROL_PREFIX, HOP_BY_HOP
from .rules import FAULT_LABELS, FaultConfig, Refusal, Then, Trigger, When

__all__ = [
    "BUFFER_LIMIT",
    "CHUNK",
    "CONTROL_PREFIX",
    "FAULT_LABELS",
    "HOP_BY_HOP",
    "MAX_PAUSE_SECONDS",
    "Classifier",
    "FaultConfig",
    "Flavor",
    "Proxy",
    "Refusal",
    "Then",
    "Trigger",
    "When",
    "arm_kind",
    "kind_matches",
    "main",
    "queue_kind",
    "storage_kind",
]
