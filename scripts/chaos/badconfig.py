"""Scenario config: every setting missing or malformed in turn must stop both entry points."""

from __future__ import annotations

import random
import threading
from typing import Any

import config

from .core import Mode, log
from .drive import run_parallel
from .report import CheckResult, Report, Row
from .stack import SETTING_NAMES, Stack

MISSING = None
# For every setting name in config.py: values that must be refused (None: remove the setting),
# plus extra variables to set or remove for that case. A setting added to config.py without an
# entry here is reported, so this table keeps up with the code.
BAD_VALUES: dict[str, list[str | None]] = {
    "STORAGE_CONNECTION_STRING": [MISSING, "AccountKey=abc;Nonsense=1"],
    "STORAGE_ACCOUNT_URL": ["ftp://127.0.0.1/devstoreaccount1", "http://127.0.0.1:1"],
    "WATCH_CONTAINER": [MISSING, "Bad_Name", "ab", "a--b"],
    "INCOMING_PREFIX": ["/", "a//b/", "../up/", "processing/"],
    "PROCESSING_PREFIX": ["a//b/", "./x/", "incoming/sub/"],
    "DONE_PREFIX": ["..", "incoming/"],
    "FAILED_PREFIX": ["a//", "done/"],
    "OUTPUT_PREFIX": ["./", "locks/"],
    "LOCK_PREFIX": ["x//y", "output/"],
    "POLL_SCHEDULE": ["*/5 * * * *", "61 * * * * *", "x * * * * *"],
    "JANITOR_SCHEDULE": ["0 */2 * * * * *", "0 0 25 * * *", "0 0 0 0 * *"],
    "BATCH_MODE": ["batch", "files"],
    "BATCH_READY_MARKER": ["a/b", ".."],
    "BATCH_SETTLE_SECONDS": ["abc", "-1", "86401", "1.5"],
    "BATCH_MAX_FILES": ["0", "100001", "ten"],
    "BATCH_MAX_BYTES": ["0", "1e9", "-5"],
    "MAX_BATCHES_PER_TICK": ["0", "101", "x"],
    "MAX_ACTIVE_GROUPS": ["0", "5001"],
    "MAX_CREATES_PER_5_MIN": ["0", "101"],
    "LEASE_SECONDS": ["14", "61", "-1", "abc"],
    "IO_CONCURRENCY": ["0", "257"],
    "AZURE_SUBSCRIPTION_ID": [MISSING, "not-a-guid", "00000000-0000-0000-0000-00000000000"],
    "ACI_RESOURCE_GROUP": [MISSING, "bad/rg", "r" * 91],
    "ACI_LOCATION": [MISSING],
    # 127.0.0.2 is loopback on Linux but not to config.py: it must refuse the fake ARM token.
    "ARM_ENDPOINT": ["http://127.0.0.1:1", "not a url", "https://127.0.0.2:1"],
    "ARM_CA_BUNDLE": ["/nonexistent/chaos/ca.pem"],
    "ARM_AUTH": ["password", "none"],
    "ACI_IMAGE": [MISSING, "bad image", "img\tname"],
    "ACI_CPU": ["0", "17", "abc", "nan"],
    "ACI_MEMORY_GB": ["0", "65", "inf", "nan"],
    "ACI_GPU_SKU": ["T4"],
    "ACI_GPU_COUNT": ["2", "x"],
    "ACI_COMMAND": ['["unterminated', "[1, 2]", "'unbalanced"],
    "ACI_IDENTITY_ID": ["not-a-resource-id"],
    "ACI_IDENTITY_CLIENT_ID": ["not-a-guid"],
    "ACI_REGISTRY_SERVER": ["chaos.azurecr.io"],
    "ACI_REGISTRY_USERNAME": ["someone"],
    "ACI_REGISTRY_PASSWORD": ["pw-without-user"],
    "ACI_SUBNET_ID": ["not-a-subnet"],
    "GROUP_PREFIX": ["ML_", "1abc", "a--b", "g" * 21],
    "JOB_TIMEOUT_MINUTES": ["0", "abc", "-5", "nan"],
    "MAX_ATTEMPTS": ["0", "21", "x"],
    "NO_RETRY_EXIT_CODES": ["1,x", "0"],
    "KEEP_FAILED_GROUPS": ["maybe"],
    "ORPHAN_GRACE_MINUTES": ["-1", "x"],
    "STUCK_CLAIM_SECONDS": ["-1", "86401"],
    "VANISH_GRACE_SECONDS": ["-1", "86401", "x"],
    "MAX_PLATFORM_RELAUNCHES": ["-1", "21", "x"],
    # Either alone is refused (they go together); a key alone names the key's partner too.
    "ACI_LOG_ANALYTICS_WORKSPACE_ID": ["not-a-guid"],
    "ACI_LOG_ANALYTICS_WORKSPACE_KEY": ["key-without-workspace"],
    "INDEX_PREFIX": ["a//b/", "locks/"],
    "STALL_ALARM_MINUTES": ["0", "x", "nan"],
    "NOTIFY_QUEUE": ["Bad_Queue!", "a--b"],
    # Plain http to a non-loopback host (the secret missing is named too).
    "NOTIFY_WEBHOOK_URL": ["http://hooks.example.com/x"],
    "NOTIFY_WEBHOOK_SECRET": ["secret-without-a-url"],
    "PRICE_VCPU_SECOND": ["-1", "x", "nan"],
    "PRICE_GB_SECOND": ["2", "x"],
    "PRICE_GPU_SECOND_V100": ["-0.1", "x"],
    "JOB_PROFILES": ["{", "[]", '{"m": {"match": "m"}}', '{"m": {"match": "m/x", "image": "i"}}'],
    "BATCH_PARAMS_FILE": ["a/b", "_params.json"],  # without JOB_PROFILES: refused too
}
# Cases that need more than one variable: (setting named in the message, variables to set,
# variables to remove).
COMBINED: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    (
        "STORAGE_ACCOUNT_URL",
        "both storage settings",
        {"STORAGE_ACCOUNT_URL": "http://127.0.0.1:1/x"},
        (),
    ),
    (
        "ACI_GPU_COUNT",
        "count above 4 with a SKU",
        {"ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "5"},
        (),
    ),
    (
        "ACI_IDENTITY_CLIENT_ID",
        "identity without client id",
        {
            "ACI_IDENTITY_ID": "/subscriptions/x/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i"
        },
        (),
    ),
    (
        "ACI_REGISTRY_PASSWORD",
        "registry user without password",
        {"ACI_REGISTRY_SERVER": "chaos.azurecr.io", "ACI_REGISTRY_USERNAME": "u"},
        (),
    ),
    ("ACI_ENV_", "variable name not valid", {"ACI_ENV_1BAD": "x"}, ()),
    ("ML_BATCH_ID", "reserved ML_ prefix", {"ACI_ENV_ML_BATCH_ID": "x"}, ()),
    ("ACI_SECURE_ENV_", "secure variable name not valid", {"ACI_SECURE_ENV_bad-name": "x"}, ()),
    (
        "ACI_SECURE_ENV_TOKEN",
        "plain and secure at once",
        {"ACI_ENV_TOKEN": "a", "ACI_SECURE_ENV_TOKEN": "b"},
        (),
    ),
    (
        "WATCH_CONTAINER",
        "seed alias ContainerName invalid",
        {"ContainerName": "Bad_Name"},
        ("WATCH_CONTAINER",),
    ),
    (
        "ACI_RESOURCE_GROUP",
        "seed alias ResourceGroupName invalid",
        {"ResourceGroupName": "bad/rg"},
        ("ACI_RESOURCE_GROUP",),
    ),
    (
        "STORAGE_CONNECTION_STRING",
        "seed AzureAccountKey without AzureAccountName",
        {"AzureAccountKey": "abc"},
        ("STORAGE_CONNECTION_STRING",),
    ),
]
# Names config.py defines that are not testable here, and why (reported in the output).
NOT_TESTED = {
    config.SEED_ACCOUNT_NAME: "a valid-looking account name makes a valid configuration that "
    "would reach the real Azure endpoint; never sent from this loopback-only suite",
}


def config_cases() -> tuple[list[tuple[str, str, dict[str, str], tuple[str, ...]]], list[str]]:
    """Every (setting, description, set, remove) case, and settings with no known bad value."""
    cases: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = []
    unknown = []
    for name in sorted(SETTING_NAMES):
        values = BAD_VALUES.get(name)
        if values is None:
            unknown.append(name)
            continue
        for value in values:
            if value is None:
                cases.append((name, "missing", {}, (name,)))
            else:
                cases.append((name, f"{value!r}", {name: value}, ()))
    cases += COMBINED
    return cases, unknown


def scenario_config(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("bad configuration: refuse to start")
    arena = stack.arena("config")
    storage = stack.storage_proxy()
    arm = stack.arm_proxy()
    base = stack.env(arena, storage, arm)
    cases, unknown = config_cases()
    for name in unknown:
        row.failures.append(
            f"setting {name} has no malformed value in scripts/chaos/badconfig.py BAD_VALUES"
        )
    if mode.config_cases is not None and len(cases) > mode.config_cases:
        # Always the required ones missing; the rest a seeded sample.
        must = [c for c in cases if c[1] == "missing"]
        rest = [c for c in cases if c[1] != "missing"]
        cases = must + rng.sample(rest, max(mode.config_cases - len(must), 0))
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    storage.reset_counts()
    arm.reset_counts()

    def one(item: tuple[int, tuple[str, str, dict[str, str], tuple[str, ...]]]) -> None:
        index, (setting, what, sets, removes) = item
        env = {k: v for k, v in base.items() if k not in removes}
        env.update(sets)
        outcome: dict[str, Any] = {"setting": setting, "case": what}
        for role in ("poll", "sweep"):
            tag = f"cfg{index}.{role}"
            run = stack.run(role, env, tag=tag, timeout=60)
            err = run.err()
            lines = [ln for ln in err.splitlines() if ln.strip()]
            head = next((ln for ln in lines if ln.startswith("Invalid configuration")), "")
            named = [ln.strip() for ln in lines if ln.strip().startswith("- ") and setting in ln]
            requests = sum(
                n
                for counts in (storage.counts(), arm.counts())
                for k, n in counts.items()
                if k.endswith(":" + tag)
            )
            outcome[role] = {"rc": run.rc, "message": named[0] if named else head or err[-200:]}
            outcome[role]["requests"] = requests
            outcome[role]["ok"] = (
                run.rc == 2 and bool(head) and bool(named) and requests == 0 and not run.out()
            )
        outcome["ok"] = outcome["poll"]["ok"] and outcome["sweep"]["ok"]
        with lock:
            results.append(outcome)

    run_parallel(stack, one, list(enumerate(cases)), 4)
    results.sort(key=lambda r: (r["setting"], r["case"]))
    total = storage.counts()["total"] + arm.counts()["total"]
    for r in results:
        if not r["ok"]:
            row.failures.append(
                f"{r['setting']} {r['case']}: poll rc {r['poll']['rc']} / sweep rc "
                f"{r['sweep']['rc']}: {r['poll']['message'][:120]}"
            )
    if total:
        row.failures.append(f"{total} storage/ARM request(s) during bad-configuration runs")
    row.trials = len(results)
    settings_covered = len({r["setting"] for r in results})
    row.notes.append(
        f"{len(results)} cases over {settings_covered} settings x (poll, sweep): "
        f"{sum(r['ok'] for r in results)} refused with exit 2 and one message naming the "
        f"setting; {total} requests reached storage or ARM"
    )
    for name, why in NOT_TESTED.items():
        row.notes.append(f"not tested: {name}: {why}")
    report.bad_config = results
    report.checks.append(
        CheckResult(
            "bad configuration never reaches storage or ARM", total == 0, f"{total} requests"
        )
    )
    log(f"config: {row.notes[0]}")
    return row
