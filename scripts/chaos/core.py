"""Constants, run modes and the small things every module of the suite uses."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

# Every poll, sweep and host process runs here, with it on PYTHONPATH.
REPO_ROOT = Path(__file__).resolve().parents[2]
SUBSCRIPTION = "00000000-0000-0000-0000-0000000c4a05"
PASS_COMMAND = '["python", "-c", "pass"]'
# Exit code from the batch id: a third of the batches always fail (they end in failed/), a third
# fail their first attempt only (relaunch), a third succeed: every janitor path runs.
FLAKY_COMMAND = json.dumps(
    [
        "python",
        "-c",
        "import os, sys, zlib; h = zlib.crc32(os.environ['ML_BATCH_ID'].encode()) % 3; "
        "sys.exit(1 if h == 0 or (h == 1 and os.environ['ML_ATTEMPT'] == '1') else 0)",
    ]
)
WORKER_IMAGE = "modellauncher/worker:latest"
TAG_ENV = "AZURE_HTTP_USER_AGENT"
TAG_RE = re.compile(r"chaos-tag/(\S+)")
MIB = 1024 * 1024
GIB = 1024 * MIB
HASH_LIMIT = 8 * MIB  # larger blobs are compared by size and sampled ranges
STORAGE_WRITES = (
    "put_blob",
    "put_block",
    "put_block_list",
    "copy",
    "delete",
    "batch",
    "delete_container",
    "create_container",
    "set_metadata",
    "abort_copy",
    "lease",
)
ARM_WRITES = ("arm_put", "arm_delete", "arm_patch", "arm_stop", "arm_other")


class Interrupted(RuntimeError):
    """The run is stopping (Ctrl-C, SIGTERM): no new process may start."""


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Mode:
    """Trial counts and time bounds of one run."""

    name: str
    crash_trials: int
    crash_parallel: int
    race_ticks: int
    race_files: int
    race_waves: int
    fault_runs: int
    fault_files: int
    lease_trials: int
    lease_files: int
    big_block_mib: int  # a real block blob, uploaded (the sparse 1 GiB page blob is always there)
    config_cases: int | None  # None: every case
    property_examples: int
    trial_seconds: float  # bound on one crash/lease trial
    scenario_seconds: float  # bound on one scenario's drive to quiescence
    fault_seconds: float  # bound on one fault run (storage retries back off 15 s and more)
    fault_worker: bool  # the first fault run uses the sample worker image (else a no-op one)
    stall_trials: int  # stall variants in turn (see stall.VARIANTS)
    stall_parallel: int
    skew_folders: int  # folders uploaded file by file while skewed pollers and sweepers loop
    operator_batches: int  # batches of the first wave (some spoiled, the others fail and retry)
    refusal_files: int  # files per wave, a quarter of them refused


FULL = Mode(
    name="full",
    crash_trials=100,
    crash_parallel=3,
    race_ticks=200,
    race_files=1000,
    race_waves=10,
    fault_runs=2,
    fault_files=60,
    lease_trials=3,
    lease_files=160,
    big_block_mib=1024,
    config_cases=None,
    property_examples=3000,
    trial_seconds=150,
    scenario_seconds=420,
    fault_seconds=900,
    fault_worker=True,
    stall_trials=8,
    stall_parallel=2,
    skew_folders=24,
    operator_batches=8,
    refusal_files=80,
)
QUICK = Mode(
    name="quick",
    crash_trials=8,
    crash_parallel=2,
    race_ticks=30,
    race_files=100,
    race_waves=3,
    fault_runs=1,
    fault_files=8,
    lease_trials=1,
    lease_files=120,
    big_block_mib=16,
    config_cases=14,
    property_examples=300,
    trial_seconds=120,
    scenario_seconds=180,
    fault_seconds=240,
    fault_worker=False,
    stall_trials=2,
    stall_parallel=2,
    skew_folders=6,
    operator_batches=4,
    refusal_files=16,
)
