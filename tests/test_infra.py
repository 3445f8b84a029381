"""infra/main.bicep and config.py agree on the app settings (what can be checked without Azure)."""

from __future__ import annotations

import re
import subprocess

import pytest

import config
from config import ConfigError, load_settings
from tests.conftest import REPO_ROOT

BICEP = (REPO_ROOT / "infra" / "main.bicep").read_text()
# Platform settings read by the Functions host, not by the app.
PLATFORM = {
    "FUNCTIONS_EXTENSION_VERSION",
    "AzureWebJobsStorage__accountName",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
}


def bicep_setting_names() -> set[str]:
    return set(re.findall(r"\{\s*name:\s*'([A-Za-z0-9_]+)'\s*,\s*value:", BICEP))


def known_setting_names() -> set[str]:
    return {
        v
        for k, v in vars(config).items()
        if k.isupper() and isinstance(v, str) and v.isupper() and "_" in v
    }


def test_every_app_setting_in_bicep_is_known_to_config() -> None:
    names = bicep_setting_names()
    assert {"STORAGE_ACCOUNT_URL", "WATCH_CONTAINER", "ACI_IMAGE"} <= names  # the parser found them
    unknown = names - known_setting_names() - PLATFORM
    assert unknown == set()


def test_bicep_sets_every_required_setting() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({})
    required = {
        name
        for name in known_setting_names()
        if any(p.startswith(name + " ") for p in info.value.problems)
    }
    assert required >= {
        "WATCH_CONTAINER",
        "AZURE_SUBSCRIPTION_ID",
        "ACI_RESOURCE_GROUP",
        "ACI_LOCATION",
        "ACI_IMAGE",
    }
    missing = required - bicep_setting_names() - {"STORAGE_CONNECTION_STRING"}  # bicep uses the URL
    assert missing == set()
    assert "STORAGE_ACCOUNT_URL" in bicep_setting_names()


def test_settings_as_bicep_sets_them_are_valid() -> None:
    sample = {
        "STORAGE_ACCOUNT_URL": "https://mlacct.blob.core.windows.net",
        "WATCH_CONTAINER": "watch",
        "POLL_SCHEDULE": "0 */1 * * * *",
        "JANITOR_SCHEDULE": "30 */2 * * * *",
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
        "ACI_RESOURCE_GROUP": "rg-ml",
        "ACI_LOCATION": "westeurope",
        "ACI_IMAGE": "mlacr.azurecr.io/modellauncher/worker:latest",
        "ACI_IDENTITY_ID": "/subscriptions/x/resourceGroups/rg-ml/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ml-containers",
        "ACI_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "ACI_REGISTRY_SERVER": "mlacr.azurecr.io",
        "ACI_SUBNET_ID": "/subscriptions/x/resourceGroups/rg-ml/providers/Microsoft.Network/virtualNetworks/v/subnets/aci",
    }
    assert set(sample) == (bicep_setting_names() - PLATFORM)
    settings = load_settings(sample)
    assert settings.identity_id and settings.storage_account_url


def test_deploy_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "deploy.sh")], check=True)
