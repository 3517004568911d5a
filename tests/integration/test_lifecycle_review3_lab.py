"""Review 3 of lifecycle (ILM.1) on the lab's radosgw: a user's overwrite between the executor's
re-check of a due object and its delete. radosgw's own lifecycle deletes with
``unmod_since = mtime`` (rgw_lc.cc ``remove_expired_obj``): an object written since is kept.
The executor (the harness of ``tests/unit/test_lifecycle_executor``: the schedule on sqlite,
records written by the test) acts on radosgw here; its pacer's wait is where the user writes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab as CephLab
from tests.unit.test_lifecycle_executor import Lab
from tests.unit.test_lifecycle_review3 import racing_pacer

pytestmark = pytest.mark.ceph


def test_an_object_overwritten_after_its_recheck_is_not_deleted_by_radosgw(
    ceph_lab: CephLab, s3_client: Any, tmp_path: Path
) -> None:
    bucket = f"lc-r3-{uuid.uuid4().hex[:10]}"
    lb = Lab(tmp_path, [{"bucket": bucket, "expire_days": 1}])
    lb.s3 = s3_client
    lb.executor.client = s3_client
    lb.bucket(bucket)
    lb.put(bucket, "a", b"old a")
    lb.put(bucket, "b", b"old b")
    lb.commit()
    # The overwrite's mtime must be in a later second than the original's plus the executor's
    # one-second margin (radosgw compares whole seconds).
    time.sleep(2.2)
    lb.executor.pacer = racing_pacer(lambda: lb.put(bucket, "b", b"new b", log=False))
    t0 = time.monotonic()
    consumer = lb.step(ahead=5)
    st = consumer.stats()
    print(
        f"step {time.monotonic() - t0:.2f} s;",
        {k: st[k] for k in ("expired", "skipped", "failed", "requests")},
    )
    assert lb.keys(bucket) == ["b"]
    assert s3_client.get_object(Bucket=bucket, Key="b")["Body"].read() == b"new b"
    assert (st["expired"], st["skipped"], st["failed"]) == (1, 1, 0)
    assert lb.planned() == []


def test_the_conditional_expiry_still_expires_in_versioned_and_suspended_buckets(
    ceph_lab: CephLab, s3_client: Any, tmp_path: Path
) -> None:
    """The condition at the version's mtime (a record's may be a HEAD's whole second) plus a
    second: radosgw's versioned path ignores it and writes the marker; its suspended path
    honours it silently (a success answer, nothing done) when the object looks newer than the
    time sent, which a time without the margin did. Both expire as S3 would."""
    ver, susp = (f"lc-r3-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("ver", "susp"))
    lb = Lab(tmp_path, [{"bucket": ver, "expire_days": 1}, {"bucket": susp, "expire_days": 1}])
    lb.s3 = s3_client
    lb.executor.client = s3_client
    lb.bucket(ver, versioned=True)
    lb.bucket(susp, versioned=True)
    s3_client.put_bucket_versioning(Bucket=susp, VersioningConfiguration={"Status": "Suspended"})
    v = lb.put(ver, "k", b"v")
    lb.put(susp, "k", b"s")
    lb.commit()
    consumer = lb.step(ahead=5)
    st = consumer.stats()
    print({k: st[k] for k in ("expired", "skipped", "failed")})
    assert (st["expired"], st["skipped"], st["failed"]) == (2, 0, 0)
    stack = lb.stack(ver, "k")
    assert [m for _, m in stack] == [True, False] and stack[1][0] == v
    assert lb.stack(susp, "k") == [("null", True)]
    assert lb.keys(ver) == [] and lb.keys(susp) == []


def test_an_expired_object_delete_marker_is_removed_on_radosgw(
    ceph_lab: CephLab, s3_client: Any, tmp_path: Path
) -> None:
    """expire_days + noncurrent_expire_days: the object expires, its version expires as
    noncurrent, then the marker, alone, is removed (re-checked by a listing of the key's
    versions on radosgw); a key written again keeps its marker under its new version."""
    bucket = f"lc-r3-dm-{uuid.uuid4().hex[:8]}"
    lb = Lab(tmp_path, [{"bucket": bucket, "expire_days": 10, "noncurrent_expire_days": 10}])
    lb.s3 = s3_client
    lb.executor.client = s3_client
    lb.bucket(bucket, versioned=True)
    versions = {key: lb.put(bucket, key, b"x") for key in ("k", "k2", "again")}
    lb.commit()
    lb.step(ahead=60)
    for key in versions:
        (marker, is_marker), _ = lb.stack(bucket, key)
        assert is_marker
        lb._record("delete_marker", bucket, key, version=marker)
    lb.commit()
    lb.step(ahead=60)
    for key, v in versions.items():
        assert [m for _, m in lb.stack(bucket, key)] == [True]
        lb._record("delete", bucket, key, version=v)
    lb.commit()
    lb.step(ahead=0)
    again = lb.put(bucket, "again", b"new", log=False)
    before = lb.executor.snapshot()
    lb.step(ahead=60)
    st = {k: v - before[k] for k, v in lb.executor.snapshot().items()}
    print(st)
    assert lb.stack(bucket, "k") == [] and lb.stack(bucket, "k2") == []
    stack = lb.stack(bucket, "again")
    assert stack[0] == (again, False) and [m for _, m in stack] == [False, True]
    assert (st["markers_expired"], st["skipped"], st["failed"]) == (2, 1, 0)
    assert lb.planned() == []


def test_a_noncurrent_delete_marker_expires_as_noncurrent_on_radosgw(
    ceph_lab: CephLab, s3_client: Any, tmp_path: Path
) -> None:
    """noncurrent_expire_days: a user's marker m1 between v1 and v2 is noncurrent, and is
    removed with v1, as radosgw's own noncurrent expiry removes every noncurrent entry; the
    re-check lists the key's versions (a HEAD of a marker's version is a bare 404 on radosgw).
    A marker made current again (the version over it deleted, not yet in the logs) is kept."""
    bucket = f"lc-r3-nc-{uuid.uuid4().hex[:8]}"
    lb = Lab(tmp_path, [{"bucket": bucket, "noncurrent_expire_days": 1}])
    lb.s3 = s3_client
    lb.executor.client = s3_client
    lb.bucket(bucket, versioned=True)
    stacks = {}
    for key in ("k", "back"):
        lb.put(bucket, key, b"1")
        lb.delete(bucket, key)
        stacks[key] = lb.put(bucket, key, b"2")
    lb.commit()
    s3_client.delete_object(Bucket=bucket, Key="back", VersionId=stacks["back"])  # its marker current again
    before = lb.executor.snapshot()
    lb.step(ahead=5)
    st = {k: v - before[k] for k, v in lb.executor.snapshot().items()}
    print(st)
    assert lb.stack(bucket, "k") == [(stacks["k"], False)]
    assert [m for _, m in lb.stack(bucket, "back")] == [True]
    # k's v1 and m1, back's v1 (noncurrent below its marker); back's marker skipped: current again.
    assert (st["noncurrent_expired"], st["skipped"], st["failed"]) == (3, 1, 0)
