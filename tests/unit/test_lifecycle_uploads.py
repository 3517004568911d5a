"""Lifecycle's abort of incomplete multipart uploads (``changelog.consumers.lifecycle.uploads_gc``)
on moto: the uploads in progress come from the follower's table (written here as the follower
writes it), due ``days × day_seconds`` after they began; due ones are aborted, others left,
an upload already completed costs one request and no harm, and the table of a partitioned
follower is read the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from moto import mock_aws

from changelog.consumers.lifecycle.uploads_gc import AbortRule, UploadReaper
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.control import FOLLOWER_PARTITION_META_KEY
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.s3client import make_s3_client
from changelog.pipeline.store import WriteOp
from rgw_module.follower_state import ZONE_KEYS, StateKeys

S = 1_000_000


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ChangeIndex, object]]:
    with mock_aws():
        s3 = make_s3_client(None, access_key="testing", secret_key="testing", region="us-east-1",
                            max_attempts=1, connect_timeout=5.0, read_timeout=30.0)  # fmt: skip
        index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
        yield index, s3
        index.store.close()


def track(index: ChangeIndex, bucket: str, key: str, upload_id: str, started: float, keys: StateKeys = ZONE_KEYS) -> None:
    """What the follower writes when it reads the upload's meta object in the log."""
    value = orjson.dumps({"key": key, "started_ns": int(started * 1e9), "bucket_id": "zone.1"})
    index.store.execute(index.control_oid, WriteOp(set={keys.upload(bucket, upload_id): value}))


def open_uploads(s3: object, bucket: str) -> set[str]:
    got = s3.list_multipart_uploads(Bucket=bucket)  # type: ignore[attr-defined]
    return {u["UploadId"] for u in got.get("Uploads", [])}


def test_due_uploads_are_aborted_and_the_others_left(env: tuple[ChangeIndex, object]) -> None:
    index, s3 = env
    for b in ("bkt", "other"):
        s3.create_bucket(Bucket=b)  # type: ignore[attr-defined]
    now = time.time()

    def start(bucket: str, key: str, age_s: float) -> str:
        uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]  # type: ignore[attr-defined]
        track(index, bucket, key, uid, now - age_s)
        return str(uid)

    old = start("bkt", "tmp/old", 10)
    young = start("bkt", "tmp/young", 1)
    unruled = start("bkt", "keep/old", 10)
    elsewhere = start("other", "tmp/old", 10)
    reaper = UploadReaper(
        index.store, index.control_oid, [AbortRule("r", "bkt", "tmp/", 5)], s3, day_us=S, clock=lambda: now  # type: ignore[arg-type]
    )
    assert [u.upload_id for u, _ in reaper.due(int(now * S))] == [old]
    assert reaper.run() == 1
    assert open_uploads(s3, "bkt") == {young, unruled} and open_uploads(s3, "other") == {elsewhere}
    assert reaper.snapshot() == {"uploads_aborted": 1, "uploads_gone": 0, "uploads_failed": 0, "uploads_listings": 2}
    # Not again: the follower has not read the abort yet, but this process remembers it.
    assert reaper.run(force=True) == 0
    # Later the young one is due too; one completed meanwhile costs one request and no harm.
    s3.upload_part(Bucket="bkt", Key="tmp/young", UploadId=young, PartNumber=1, Body=b"x")  # type: ignore[attr-defined]
    later = UploadReaper(
        index.store, index.control_oid, [AbortRule("r", "bkt", "tmp/", 5)], s3, day_us=S, clock=lambda: now + 10  # type: ignore[arg-type]
    )
    s3.complete_multipart_upload(  # type: ignore[attr-defined]
        Bucket="bkt", Key="tmp/young", UploadId=young,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s3.list_parts(Bucket="bkt", Key="tmp/young", UploadId=young)["Parts"][0]["ETag"]}]},  # type: ignore[attr-defined]
    )  # fmt: skip
    assert later.run() == 2  # the old one (still in the table) and the young one
    assert later.snapshot()["uploads_gone"] == 2
    assert s3.get_object(Bucket="bkt", Key="tmp/young")["Body"].read() == b"x"  # type: ignore[attr-defined]


def test_uploads_the_log_did_not_show_are_found_by_listing_the_rule_s_prefix(env: tuple[ChangeIndex, object]) -> None:
    """radosgw Reef and later log no bucket-index-log entry for an upload's meta object: the
    uploads of the buckets an abort rule names are also listed (with the rule's prefix)."""
    index, s3 = env
    s3.create_bucket(Bucket="bkt")  # type: ignore[attr-defined]
    untracked = str(s3.create_multipart_upload(Bucket="bkt", Key="tmp/x")["UploadId"])  # type: ignore[attr-defined]
    outside = str(s3.create_multipart_upload(Bucket="bkt", Key="keep/x")["UploadId"])  # type: ignore[attr-defined]
    later = time.time() + 10  # moto's Initiated is now: 10 s later, 5 one-second days have passed
    reaper = UploadReaper(index.store, index.control_oid, [AbortRule("r", "bkt", "tmp/", 5)], s3, day_us=S, clock=lambda: later)  # type: ignore[arg-type]
    assert [u.upload_id for u in reaper.uploads()] == [untracked]
    assert reaper.run() == 1
    assert open_uploads(s3, "bkt") == {outside}


def test_the_shortest_matching_rule_applies_and_partitioned_tables_are_read(env: tuple[ChangeIndex, object]) -> None:
    index, s3 = env
    s3.create_bucket(Bucket="bkt")  # type: ignore[attr-defined]
    index.store.execute(index.control_oid, WriteOp(set={FOLLOWER_PARTITION_META_KEY: b'{"count": 2}'}))
    now = time.time()
    uid = str(s3.create_multipart_upload(Bucket="bkt", Key="logs/x")["UploadId"])  # type: ignore[attr-defined]
    track(index, "bkt", "logs/x", uid, now - 3, StateKeys.of(1))
    rules = [AbortRule("long", "bkt", "", 7), AbortRule("short", "bkt", "logs/", 2)]
    reaper = UploadReaper(index.store, index.control_oid, rules, s3, day_us=S, clock=lambda: now)  # type: ignore[arg-type]
    due = reaper.due(int(now * S))
    assert [(u.upload_id, r.rule) for u, r in due] == [(uid, "short")]
    assert reaper.run() == 1 and open_uploads(s3, "bkt") == set()


def test_lifecycle_counters_are_exported_as_metrics() -> None:
    from prometheus_client import generate_latest

    from changelog.metrics import ChangelogMetrics, make_registry

    class Lifecycle:
        def stats(self) -> dict[str, object]:
            return {"records_consumed": 5, "expired": 3, "noncurrent_expired": 1, "uploads_aborted": 2, "requests": 9}

    class Other:
        def stats(self) -> dict[str, object]:
            return {"records_consumed": 7}

    metrics = ChangelogMetrics(consumers={"lifecycle": Lifecycle(), "usage": Other()})
    text = generate_latest(make_registry(metrics, process=False)).decode()
    assert 'rgw_changelog_lifecycle_actions_total{action="expired",consumer="lifecycle"} 3.0' in text
    assert 'rgw_changelog_lifecycle_actions_total{action="uploads_aborted",consumer="lifecycle"} 2.0' in text
    assert 'rgw_changelog_lifecycle_requests_total{consumer="lifecycle"} 9.0' in text
    assert 'consumer="usage"' not in "\n".join(line for line in text.splitlines() if "lifecycle_" in line)
