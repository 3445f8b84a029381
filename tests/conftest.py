"""Shared fixtures: a real Azurite per test session, a fresh container per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from localdev.azurite import Azurite, run_azurite  # noqa: E402


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite (blob and queue services) for the whole session (tests isolate by
    container and queue name)."""
    with run_azurite(queue_port=0) as az:
        yield az


@pytest.fixture
def container_name() -> str:
    return "t" + uuid.uuid4().hex[:20]


@pytest.fixture
def blob_service(azurite: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def container(blob_service: BlobServiceClient, container_name: str) -> ContainerClient:
    return blob_service.create_container(container_name)


# --- the ACI emulator and a whole pipeline (Azurite + emulator, real SDKs over HTTP) ----------

import os  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from azure.mgmt.containerinstance import ContainerInstanceManagementClient  # noqa: E402
from azure.mgmt.containerinstance.models import ContainerGroup  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from launcher.clients import Clients, build_clients  # noqa: E402
from localdev.aci_emulator.testing import Emulator, make_client, start_emulator  # noqa: E402
from tests.helpers import SUBSCRIPTION, settings_env  # noqa: E402


@pytest.fixture(scope="session")
def aci_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulator per session (tests isolate by resource group)."""
    with start_emulator(tmp_path_factory.mktemp("aci"), page_size=20) as emulator:
        yield emulator


@dataclass
class Pipeline:
    """Settings, clients and inspectors for one test's container and resource group."""

    azurite: Azurite
    emulator: Emulator
    container: ContainerClient
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def resource_group(self) -> str:
        return "rg-" + self.container.container_name

    def env(self, **overrides: str) -> dict[str, str]:
        env = settings_env(
            self.azurite.connection_string,
            self.container.container_name,
            ARM_ENDPOINT=self.emulator.url,
            ARM_CA_BUNDLE=str(self.emulator.ca),
            ACI_RESOURCE_GROUP=self.resource_group,
            ACI_COMMAND="",
        )
        env.update(self.overrides)
        env.update(overrides)
        return {k: v for k, v in env.items() if v != ""}

    def settings(self, **overrides: str) -> Settings:
        return load_settings(self.env(**overrides))

    def clients(
        self, *storage_policies: Any, arm_policies: tuple[Any, ...] = (), **overrides: str
    ) -> Clients:
        return build_clients(self.settings(**overrides), list(storage_policies), list(arm_policies))

    def arm(self) -> ContainerInstanceManagementClient:
        return make_client(self.emulator, SUBSCRIPTION, polling_interval=0.2)

    def groups(self) -> list[ContainerGroup]:
        return list(self.arm().container_groups.list_by_resource_group(self.resource_group))

    def get_group(self, name: str) -> ContainerGroup:
        return self.arm().container_groups.get(self.resource_group, name)

    def subprocess_env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACI_", "BATCH_"))}
        env.update(self.env(**overrides))
        env["PYTHONPATH"] = str(REPO_ROOT)
        return env


@pytest.fixture
def pipeline(
    azurite: Azurite, aci_emulator: Emulator, container: ContainerClient
) -> Iterator[Pipeline]:
    """A test's own container and resource group against an emulator as strict as Azure (its
    defaults: 2 s provisioning, quotas, create/delete budgets, per-group limits, resource groups
    that must exist; see docs/emulator.md). Each test starts with no groups and fresh budgets,
    and only its own resource group exists."""
    pipeline = Pipeline(azurite, aci_emulator, container)
    aci_emulator.reset(options=True)
    aci_emulator.configure(resource_groups=[pipeline.resource_group], retry_after=0.2)
    yield pipeline
