"""config.py: one error naming every bad setting; aliases; defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config import (
    ConfigError,
    load_settings,
    load_settings_file,
    settings_environment,
)
from settings_reader import ncrontab_problem

SUB = "00000000-0000-0000-0000-000000000001"


def base_env(**extra: str) -> dict[str, str]:
    env = {
        "STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "WATCH_CONTAINER": "watch",
        "AZURE_SUBSCRIPTION_ID": SUB,
        "ACI_RESOURCE_GROUP": "rg-ml",
        "ACI_LOCATION": "westeurope",
        "ACI_IMAGE": "modellauncher/worker:latest",
    }
    env.update(extra)
    return env


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.problems


def test_minimal_settings_and_defaults() -> None:
    s = load_settings(base_env())
    assert s.incoming_prefix == "incoming/"
    assert s.processing_prefix == "processing/"
    assert s.done_prefix == "done/" and s.failed_prefix == "failed/"
    assert s.batch_mode == "tick" and s.batch_settle_seconds == 30
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.poll_schedule == "0 */1 * * * *"
    assert s.account_name == "devstoreaccount1"


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "WATCH_CONTAINER": "Bad_Name",
        "AZURE_SUBSCRIPTION_ID": "not-a-guid",
        "ACI_CPU": "lots",
        "BATCH_MODE": "sometimes",
        "POLL_SCHEDULE": "*/5 * * * *",
        "LEASE_SECONDS": "90",
        "ARM_ENDPOINT": "http://management.azure.com",
    }
    found = problems(env)
    text = "\n".join(found)
    for name in (
        "STORAGE_CONNECTION_STRING",
        "WATCH_CONTAINER",
        "AZURE_SUBSCRIPTION_ID",
        "ACI_RESOURCE_GROUP",
        "ACI_LOCATION",
        "ACI_IMAGE",
        "ACI_CPU",
        "BATCH_MODE",
        "POLL_SCHEDULE",
        "LEASE_SECONDS",
        "ARM_ENDPOINT",
    ):
        assert name in text, f"{name} missing from:\n{text}"
    assert len(found) >= 11


def test_seed_aliases_are_accepted() -> None:
    s = load_settings(
        {
            "AzureAccountName": "acct",
            "AzureAccountKey": "a2V5",
            "ContainerName": "data",
            "ResourceGroupName": "rg-old",
            "AZURE_SUBSCRIPTION_ID": SUB,
            "ACI_LOCATION": "westeurope",
            "ACI_IMAGE": "img",
        }
    )
    assert s.watch_container == "data"
    assert s.resource_group == "rg-old"
    assert s.storage_connection_string and "AccountName=acct" in s.storage_connection_string
    assert s.account_name == "acct"
    # Without a key the seed name means identity-based access.
    env = base_env(AzureAccountName="acct")
    del env["STORAGE_CONNECTION_STRING"]
    assert load_settings(env).storage_account_url == "https://acct.blob.core.windows.net"


def test_env_and_secure_env_are_collected_and_secrets_hidden_from_repr() -> None:
    s = load_settings(
        base_env(
            ACI_ENV_MODEL="small",
            ACI_SECURE_ENV_API_TOKEN="s3cret",
            ACI_REGISTRY_SERVER="r.io",
            ACI_REGISTRY_USERNAME="u",
            ACI_REGISTRY_PASSWORD="hunter2",
        )
    )
    assert s.env == (("MODEL", "small"),)
    assert s.secure_env == (("API_TOKEN", "s3cret"),)
    assert "s3cret" not in repr(s) and "hunter2" not in repr(s)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"ACI_ENV_ML_BATCH_ID": "x"}, "ML_ prefix is reserved"),
        ({"ACI_ENV_A": "1", "ACI_SECURE_ENV_A": "2"}, "both set"),
        ({"ACI_REGISTRY_USERNAME": "u"}, "ACI_REGISTRY_SERVER"),
        ({"ACI_REGISTRY_SERVER": "r.azurecr.io"}, "ACI_IDENTITY_ID"),
        ({"ACI_IDENTITY_ID": "/subscriptions/x/rg/y"}, "user-assigned identity"),
        ({"ACI_GPU_COUNT": "2"}, "ACI_GPU_SKU"),
        ({"ACI_GPU_SKU": "A100"}, "ACI_GPU_SKU"),
        ({"ACI_SUBNET_ID": "/subscriptions/x/vnet"}, "ACI_SUBNET_ID"),
        ({"GROUP_PREFIX": "ML_"}, "GROUP_PREFIX"),
        ({"INCOMING_PREFIX": "work/", "PROCESSING_PREFIX": "work/"}, "overlap"),
        ({"ARM_AUTH": "emulator"}, "loopback"),
        ({"ACI_COMMAND": "[1, 2]"}, "ACI_COMMAND"),
        ({"STORAGE_ACCOUNT_URL": "https://a.blob.core.windows.net"}, "both set"),
        ({"BATCH_READY_MARKER": "a/b"}, "BATCH_READY_MARKER"),
        ({"KEEP_FAILED_GROUPS": "maybe"}, "KEEP_FAILED_GROUPS"),
        ({"ARM_CA_BUNDLE": "/nonexistent/ca.pem"}, "ARM_CA_BUNDLE"),
        # float() parses these, and NaN slips through every bound check.
        ({"ACI_CPU": "nan"}, "ACI_CPU='nan' is not a number"),
        ({"ACI_MEMORY_GB": "NaN"}, "ACI_MEMORY_GB"),
        ({"JOB_TIMEOUT_MINUTES": "nan"}, "JOB_TIMEOUT_MINUTES"),
        ({"JOB_TIMEOUT_MINUTES": "inf"}, "JOB_TIMEOUT_MINUTES"),
    ],
)
def test_bad_settings_are_named(extra: dict[str, str], needle: str) -> None:
    text = "\n".join(problems(base_env(**extra)))
    assert needle in text


def test_command_forms() -> None:
    assert load_settings(base_env(ACI_COMMAND='["python", "-m", "worker"]')).command == (
        "python",
        "-m",
        "worker",
    )
    assert load_settings(base_env(ACI_COMMAND="python -m 'my worker'")).command == (
        "python",
        "-m",
        "my worker",
    )


@pytest.mark.parametrize(
    "expr", ["0 */5 * * * *", "0 30 9 * * 1-5", "0 0 * * * *", "*/10 * * * * *", "0 0 9 * Jan Mon"]
)
def test_valid_ncrontab(expr: str) -> None:
    assert ncrontab_problem(expr) is None


@pytest.mark.parametrize(
    "expr",
    [
        "*/5 * * * *",
        "60 * * * * *",
        "0 0 25 * * *",
        "0 */0 * * * *",
        "0 5-1 * * * *",
        "x * * * * *",
    ],
)
def test_invalid_ncrontab(expr: str) -> None:
    assert ncrontab_problem(expr) is not None


def test_prefix_normalisation() -> None:
    s = load_settings(base_env(INCOMING_PREFIX="/drop", OUTPUT_PREFIX="results"))
    assert s.incoming_prefix == "drop/" and s.output_prefix == "results/"


def test_no_retry_exit_codes() -> None:
    assert load_settings(base_env(NO_RETRY_EXIT_CODES="1, 2")).no_retry_exit_codes == {1, 2}
    assert "NO_RETRY_EXIT_CODES" in "\n".join(problems(base_env(NO_RETRY_EXIT_CODES="x")))
    assert "cannot be listed" in "\n".join(problems(base_env(NO_RETRY_EXIT_CODES="0")))


def test_vanish_grace_is_a_validated_setting() -> None:
    assert load_settings(base_env()).vanish_grace_seconds == 120
    assert load_settings(base_env(VANISH_GRACE_SECONDS="600")).vanish_grace_seconds == 600
    assert any("VANISH_GRACE_SECONDS" in p for p in problems(base_env(VANISH_GRACE_SECONDS="-1")))
    assert any("VANISH_GRACE_SECONDS" in p for p in problems(base_env(VANISH_GRACE_SECONDS="x")))


def test_settings_file_values_sit_under_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {**base_env(), "MAX_ATTEMPTS": 5}}))
    env = settings_environment(path, {"WATCH_CONTAINER": "fromenv"})
    assert env["ACI_IMAGE"] == "modellauncher/worker:latest" and env["MAX_ATTEMPTS"] == "5"
    assert env["WATCH_CONTAINER"] == "fromenv"  # the environment wins, as in the host
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings_file(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"ACI_CPU": "8"}, "ACI_CPU=8 exceeds ACI's maximum of 4 CPU cores per standard"),
        ({"ACI_MEMORY_GB": "32"}, "ACI_MEMORY_GB=32 exceeds ACI's maximum of 16 GB"),
        (
            {"ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "2", "ACI_CPU": "16"},
            "maximum of 12 CPU cores per 2 x V100 group",
        ),
        ({"ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "3"}, "ACI_GPU_COUNT=3: ACI offers V100"),
        (
            {
                "ACI_GPU_SKU": "V100",
                "ACI_SUBNET_ID": "/subscriptions/s/resourceGroups/r/providers/"
                "Microsoft.Network/virtualNetworks/v/subnets/aci",
            },
            "does not support GPU resources in a virtual network",
        ),
        ({"ACI_GPU_SKU": "K80"}, "ACI_GPU_SKU='K80' must be one of: V100"),
        ({"ACI_LOG_ANALYTICS_WORKSPACE_KEY": "k"}, "go together"),
    ],
)
def test_a_group_aci_can_never_deploy_is_refused_at_start(
    overrides: dict[str, str], named: str
) -> None:
    env = base_env(**overrides)
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert any(named in p for p in info.value.problems), info.value.problems


def test_the_largest_documented_groups_are_accepted() -> None:
    for overrides in (
        {"ACI_CPU": "4", "ACI_MEMORY_GB": "16"},
        {"ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "4", "ACI_CPU": "24", "ACI_MEMORY_GB": "448"},
    ):
        load_settings(base_env(**overrides))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"NOTIFY_QUEUE": "Bad_Queue!"}, "NOTIFY_QUEUE='bad_queue!' is not a valid queue name"),
        ({"NOTIFY_WEBHOOK_URL": "http://hooks.example.com/x"}, "must be an https:// URL"),
        (
            {"NOTIFY_WEBHOOK_URL": "https://hooks.example.com/x"},
            "NOTIFY_WEBHOOK_SECRET is required",
        ),
        (
            {"NOTIFY_WEBHOOK_URL": "https://hooks.example.com/x", "NOTIFY_WEBHOOK_SECRET": "short"},
            "NOTIFY_WEBHOOK_SECRET must be at least 16 characters",
        ),
        ({"NOTIFY_WEBHOOK_SECRET": "0123456789abcdef0"}, "NOTIFY_WEBHOOK_URL is not"),
        ({"PRICE_VCPU_SECOND": "-1"}, "PRICE_VCPU_SECOND='-1' must be between 0 and 1"),
        ({"PRICE_GPU_SECOND_V100": "cheap"}, "PRICE_GPU_SECOND_V100='cheap' is not a number"),
        (
            {
                "STORAGE_CONNECTION_STRING": "BlobEndpoint=https://x.example/;SharedAccessSignature=sv=1",
                "NOTIFY_QUEUE": "done",
            },
            "NOTIFY_QUEUE needs a QueueEndpoint",
        ),
    ],
)
def test_bad_notification_and_price_settings_are_named(extra: dict[str, str], needle: str) -> None:
    assert any(needle in p for p in problems(base_env(**extra))), problems(base_env(**extra))


def test_notification_targets_and_prices() -> None:
    s = load_settings(
        base_env(
            NOTIFY_QUEUE="Batches-Finished",
            NOTIFY_WEBHOOK_URL="http://127.0.0.1:8080/hook",  # plain http: loopback only
            NOTIFY_WEBHOOK_SECRET="0123456789abcdef-secret",
            PRICE_GB_SECOND="0.000002",
        )
    )
    assert s.notify_targets == ("queue", "webhook") and s.notify_queue == "batches-finished"
    assert s.price_gb_second == 0.000002
    # The default: East US's USD 0.0405 per vCPU-hour (docs/notifications.md), per second.
    assert s.price_vcpu_second == pytest.approx(0.00001125)
    assert "0123456789abcdef-secret" not in repr(s)
    assert load_settings(base_env()).notify_targets == ()
    env = base_env(NOTIFY_QUEUE="done")
    env.pop("STORAGE_CONNECTION_STRING")
    identity = load_settings(env | {"STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"})
    assert identity.queue_account_url == "https://acct.queue.core.windows.net"
    local = env | {"STORAGE_ACCOUNT_URL": "http://127.0.0.1:10000/devstoreaccount1"}
    assert any("cannot be derived" in p for p in problems(local))
