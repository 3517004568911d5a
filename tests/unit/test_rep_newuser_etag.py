"""A multipart source object is copied to a site in its own parts, so that the replica has the
source's ETag (a new user's listing diff of Reef zones found every multipart replica of rclone
(5 MiB parts) and s3cmd (15 MiB) with another ETag than its original). On moto, whose multipart
ETag is S3's (MD5 of the parts' MD5s, ``-N``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from moto import mock_aws

from changelog.consumers.replication.apply import MIB, Destination, apply_record, source_part_size
from changelog.consumers.replication.sites import transfer_config
from tests.moto_env import offline_credentials
from tests.unit.test_replication_apply import Map, client, record

PART_BYTES = 8 * MIB


@pytest.mark.parametrize(
    ("etag", "size", "want"),
    [
        ("abc", 40_000_000, None),  # a PutObject's ETag
        (None, 40_000_000, None),
        ("abc-5", 0, None),
        ("abc-x", 40_000_000, None),
        ("abc-0", 40_000_000, None),
        ('"abc-5"', 40_000_000, 8 * MIB),  # the AWS CLI, boto3
        ("abc-8", 40_000_000, 5 * MIB),  # rclone
        ("abc-3", 40 * MIB, 15 * MIB),  # s3cmd (14 MiB would cut 3 parts too)
        ("abc-3", 20 * MIB, 8 * MIB),  # the common sizes in order: 8 MiB before 10
        ("abc-3", 11 * MIB, 5 * MIB),
        ("abc-2", 10 * MIB, 8 * MIB),  # 8 + 2 or 5 + 5: the AWS CLI's first
        ("abc-1", 1000, 1000),  # a single part
        ("abc-1", 12 * MIB, 12 * MIB),
        ("abc-1", 17 * MIB, None),  # larger than twice part_bytes
        ("abc-2", 64 * MIB, None),  # 32 MiB parts: larger than twice part_bytes
        ("abc-4", 12 * MIB, None),  # no whole MiB from 5 MiB cuts 12 MiB into 4 parts
    ],
)
def test_source_part_size(etag: str | None, size: int, want: int | None) -> None:
    assert source_part_size(etag, size, PART_BYTES) == want


def test_source_part_size_beyond_the_common_sizes() -> None:
    # None of them cuts 90 MiB into 5 parts: the smallest whole MiB that does, within the bound.
    assert source_part_size("abc-5", 90 * MIB, 64 * MIB) == 18 * MIB
    assert source_part_size("abc-5", 90 * MIB + 1, 64 * MIB) == 19 * MIB
    assert source_part_size("abc-5", 90 * MIB, PART_BYTES) is None


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    offline_credentials(monkeypatch)
    with mock_aws():
        c = client()
        for b in ("src", "dst"):
            c.create_bucket(Bucket=b)
        yield c


def upload_in_parts(s3: Any, key: str, data: bytes, part: int) -> str:
    up = s3.create_multipart_upload(Bucket="src", Key=key)["UploadId"]
    parts = []
    for n, off in enumerate(range(0, len(data), part), start=1):
        r = s3.upload_part(Bucket="src", Key=key, UploadId=up, PartNumber=n, Body=data[off : off + part])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    r = s3.complete_multipart_upload(Bucket="src", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    return str(r["ETag"]).strip('"')


def replicate(s3: Any, key: str, etag: str) -> Any:
    dest = Destination(client(), "dst", False, zone="zone-a")
    out = apply_record(record("write", key, etag=etag), client(), dest, Map(), transfer=transfer_config(PART_BYTES))
    assert out.status == "completed", out.reason
    return out


@pytest.mark.parametrize(
    ("size", "part"),
    [
        (11 * MIB + 7, 5 * MIB),  # rclone's and the lab load's 5 MiB parts: 3 parts
        (31 * MIB, 15 * MIB),  # s3cmd's 15 MiB parts
        (6 * MIB, 5 * MIB),  # below part_bytes, still two parts at the source
        (3 * MIB, 3 * MIB),  # a single part smaller than S3's smallest
    ],
)
def test_multipart_replica_keeps_the_source_etag(s3: Any, size: int, part: int) -> None:
    data = bytes(range(251)) * (size // 251) + b"x" * (size % 251)
    etag = upload_in_parts(s3, "mp", data, part)
    out = replicate(s3, "mp", etag)
    head = s3.head_object(Bucket="dst", Key="mp")
    assert head["ETag"].strip('"') == etag
    assert s3.get_object(Bucket="dst", Key="mp")["Body"].read() == data
    parts = -(-size // part)
    # GET; create, the parts, complete: no request more than any multipart copy.
    assert out.requests == 1 + 1 + parts + 1


def test_uneven_parts_are_guessed_wrong_and_copied_right(s3: Any) -> None:
    """Parts of uneven sizes cannot be told from the ETag: the guess (5 MiB) gives the replica
    another ETag, and the same content."""
    data = b"z" * (12 * MIB)
    up = s3.create_multipart_upload(Bucket="src", Key="odd")["UploadId"]
    parts = []
    for n, (a, b) in enumerate([(0, 6 * MIB), (6 * MIB, 11 * MIB), (11 * MIB, 12 * MIB)], start=1):
        r = s3.upload_part(Bucket="src", Key="odd", UploadId=up, PartNumber=n, Body=data[a:b])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    etag = s3.complete_multipart_upload(Bucket="src", Key="odd", UploadId=up, MultipartUpload={"Parts": parts})[
        "ETag"
    ].strip('"')
    assert source_part_size(etag, len(data), PART_BYTES) == 5 * MIB
    replicate(s3, "odd", etag)
    there = s3.head_object(Bucket="dst", Key="odd")["ETag"].strip('"')
    assert there.endswith("-3") and there != etag
    assert s3.get_object(Bucket="dst", Key="odd")["Body"].read() == data


def test_a_put_object_above_part_bytes_is_still_copied_in_parts(s3: Any) -> None:
    """Not a multipart source: unchanged (a single PUT of a stream would hold it in memory)."""
    data = b"p" * (9 * MIB)
    etag = s3.put_object(Bucket="src", Key="put", Body=io.BytesIO(data))["ETag"].strip('"')
    replicate(s3, "put", etag)
    assert s3.head_object(Bucket="dst", Key="put")["ETag"].strip('"').endswith("-2")


def test_the_caller_config_is_not_changed(s3: Any) -> None:
    cfg = transfer_config(PART_BYTES)
    data = b"q" * (11 * MIB)
    etag = upload_in_parts(s3, "k", data, 5 * MIB)
    dest = Destination(client(), "dst", False, zone="zone-a")
    apply_record(record("write", "k", etag=etag), client(), dest, Map(), transfer=cfg)
    assert (cfg.multipart_chunksize, cfg.multipart_threshold) == (PART_BYTES, PART_BYTES)
    assert isinstance(cfg, TransferConfig)
