"""A new user's review of replication on real radosgw (found on Reef 18.2.7, run on every
release): multipart objects of the common clients' part sizes keep their ETag at the site, so a
listing diff of keys, sizes and ETags converges; and a tenant's bucket replicates (botocore's
bucket-name check refused ``tenant:bucket`` before any request: every record failed)."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from changelog.consumers.replication.sites import tenant_names
from changelog.pipeline.s3client import make_s3_client
from tests.integration.test_replication_lab import Site, make_buckets, wait_caught_up
from tests.integration.test_replication_lab import make_rep as make_rep  # noqa: PLC0414 - the fixture
from tests.integration.test_replication_lab import site_lab as site_lab  # noqa: PLC0414 - the fixture
from tests.lab import Lab
from tests.lab import s3_client as lab_client

pytestmark = pytest.mark.ceph

MIB = 1 << 20
TENANT = "nutenant"
TENANT_KEYS = ("NUTENANTKEY", "NUTENANTSECRET")


def upload(s3: Any, bucket: str, key: str, data: bytes, part: int) -> str:
    cfg = TransferConfig(multipart_threshold=min(part, len(data)), multipart_chunksize=part)
    s3.upload_fileobj(io.BytesIO(data), bucket, key, Config=cfg)
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def listing(s3: Any, bucket: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    return out


def test_multipart_replicas_keep_the_source_etag(
    ceph_lab: Lab, site_lab: Lab, s3_client: Any, make_rep: Any
) -> None:
    bucket = f"nu-mp-{uuid.uuid4().hex[:8]}"
    site_s3 = lab_client(site_lab)
    make_buckets(s3_client, [bucket], versioned=set())
    make_buckets(site_s3, [bucket], versioned=set())
    rep = make_rep([bucket], [Site("lab", site_lab.rgw_endpoint, site_lab.access_key, site_lab.secret_key, "default")])
    try:
        rep.start()
        data = bytes(range(256)) * (23 * MIB // 256)
        etags = {
            "rclone 5 MiB": upload(s3_client, bucket, "rclone 5 MiB", data, 5 * MIB),
            "aws 8 MiB": upload(s3_client, bucket, "aws 8 MiB", data, 8 * MIB),
            "s3cmd 15 MiB": upload(s3_client, bucket, "s3cmd 15 MiB", data, 15 * MIB),
            # 4 parts of 23 MiB: no common size fits, the smallest whole MiB (6) does.
            "6 MiB ü+%": upload(s3_client, bucket, "6 MiB ü+%", data, 6 * MIB),
            "one part": upload(s3_client, bucket, "one part", data[:MIB], 5 * MIB),
        }
        assert all("-" in e for e in etags.values()), etags
        wait_caught_up(rep, s3_client, ["lab"], time.time(), timeout=180)
        assert listing(site_s3, bucket) == listing(s3_client, bucket)
        assert site_s3.get_object(Bucket=bucket, Key="s3cmd 15 MiB")["Body"].read() == data
        assert rep.get("/_/crr/failed?site=lab")["Versions"] == []
    finally:
        rep.kill()


def _tenant_user(lab: Lab) -> Any:
    try:
        lab.radosgw_admin(
            "user", "create", "--tenant", TENANT, "--uid", "owner", "--display-name", "owner",
            "--access-key", TENANT_KEYS[0], "--secret-key", TENANT_KEYS[1],
        )  # fmt: skip
    except RuntimeError as ex:
        if "exists" not in str(ex).lower():
            raise
    return make_s3_client(
        lab.rgw_endpoint, access_key=TENANT_KEYS[0], secret_key=TENANT_KEYS[1], region="default",
        max_attempts=3, connect_timeout=10, read_timeout=60,
    )  # fmt: skip


def _allow(s3: Any, bucket: str, user: str) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam:::user/{user}"]}, "Action": ["s3:*"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }],
    }  # fmt: skip
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


@pytest.fixture
def tenant_bucket(ceph_lab: Lab, site_lab: Lab) -> Iterator[tuple[str, Any, Any]]:
    """A bucket of the same name of tenant TENANT at both labs, readable by the source lab's
    user and writable by the site lab's (their policies)."""
    bucket = f"nu-ten-{uuid.uuid4().hex[:8]}"
    src, dst = _tenant_user(ceph_lab), _tenant_user(site_lab)
    for s3 in (src, dst):
        s3.create_bucket(Bucket=bucket)
        # Both labs' S3 user (the replicator reads the source and writes the site as it).
        _allow(s3, bucket, os.environ.get("RGW_USER", "tester"))
    yield bucket, src, dst


def test_a_tenants_bucket_replicates(
    ceph_lab: Lab, site_lab: Lab, s3_client: Any, make_rep: Any, tenant_bucket: tuple[str, Any, Any]
) -> None:
    bucket, src, dst = tenant_bucket
    rep = make_rep(
        [f"{TENANT}/{bucket}"],
        [Site("lab", site_lab.rgw_endpoint, site_lab.access_key, site_lab.secret_key, "default")],
    )
    try:
        rep.start()
        time.sleep(1.0)  # the bucket is found through the data log: writes after the start
        src.put_object(Bucket=bucket, Key="k ü+%", Body=b"one")
        src.put_object(Bucket=bucket, Key="gone", Body=b"two")
        src.delete_object(Bucket=bucket, Key="gone")
        wait_caught_up(rep, s3_client, ["lab"], time.time(), timeout=180)
        assert rep.get("/_/crr/failed?site=lab")["Versions"] == []
        assert listing(dst, bucket) == listing(src, bucket)
        # One-way, the replica is the site user's (the bucket's owner gets a 403 reading it).
        site_user = tenant_names(lab_client(site_lab))
        assert site_user.get_object(Bucket=f"{TENANT}:{bucket}", Key="k ü+%")["Body"].read() == b"one"
    finally:
        rep.kill()
