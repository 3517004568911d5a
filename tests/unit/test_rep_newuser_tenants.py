"""A tenant's bucket (``tenant:bucket`` in S3) reaches radosgw from the replicator's clients: the
site's and the source's (a new user's review on Reef found every record of ``t1/tbk`` failed in
one line by botocore's bucket-name check, before any request, and ``config check --connect``
too)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from changelog.config import SiteConfig
from changelog.consumers.replication.sites import site_client, tenant_names
from changelog.pipeline.s3client import make_s3_client
from tests.moto_env import offline_credentials


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    offline_credentials(monkeypatch)
    with mock_aws():
        yield


def plain_client() -> Any:
    return make_s3_client(None, access_key="testing", secret_key="testing", region="us-east-1",
                          max_attempts=1, connect_timeout=5.0, read_timeout=5.0)  # fmt: skip


def test_botocore_alone_refuses_the_name_before_sending(aws: None) -> None:
    with pytest.raises(Exception, match="Invalid bucket name"):
        plain_client().get_bucket_versioning(Bucket="t1:tbk")


def test_the_site_client_sends_a_tenant_bucket(aws: None) -> None:
    client = site_client(SiteConfig(name="b", buckets=["t1/tbk"]), max_attempts=1, pool=1)
    # The server judges the name: moto has no such bucket (radosgw has the tenant's).
    with pytest.raises(ClientError) as ex:
        client.get_bucket_versioning(Bucket="t1:tbk")
    assert ex.value.response["Error"]["Code"] == "NoSuchBucket"


def test_tenant_names_keeps_the_other_handlers(aws: None) -> None:
    client = tenant_names(plain_client())
    client.create_bucket(Bucket="plain")
    client.put_object(Bucket="plain", Key="k", Body=b"x")
    assert client.get_object(Bucket="plain", Key="k")["Body"].read() == b"x"
