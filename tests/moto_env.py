"""The environment of a test that talks to moto: fake credentials and region, and no profile, so
that no real AWS account is ever reachable from a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from changelog.pipeline.s3client import make_s3_client

REGION = "us-east-1"


def offline_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's fake credentials and region for this test, and no ``AWS_PROFILE``."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@contextlib.contextmanager
def two_versioned_zones(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """One moto S3 client holding zone aaa's and zone bbb's buckets (``aaa``, ``bbb``), both
    versioned: the two sides of the two-way replication tests."""
    offline_credentials(monkeypatch)
    with mock_aws():
        client = make_s3_client(
            None, access_key="testing", secret_key="testing", region=REGION,
            max_attempts=2, connect_timeout=5.0, read_timeout=30.0,
        )  # fmt: skip
        for b in ("aaa", "bbb"):
            client.create_bucket(Bucket=b)
            client.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        yield client
