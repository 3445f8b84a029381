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
    """One in-memory Azurite for the whole session (tests isolate by container name)."""
    with run_azurite() as az:
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
