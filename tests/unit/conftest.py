"""Fixtures shared by the backup tests (moto as the source zone, change logs in a directory).
A test module that defines a fixture of the same name uses its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from changelog.pipeline.targets import DirectoryTarget
from tests.moto_env import offline_credentials
from tests.unit.test_backup_support import Zone


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An S3 client of a moto zone (us-east-1), no real credentials reachable."""
    offline_credentials(monkeypatch)
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def logs(tmp_path: Path) -> DirectoryTarget:
    """The change logs, written by hand (``Zone``)."""
    return DirectoryTarget(tmp_path / "logs", fsync=False)


@pytest.fixture
def zone(aws: Any, logs: DirectoryTarget) -> Zone:
    return Zone(aws, logs)
