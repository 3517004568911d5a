"""Mutations radosgw makes by itself, with no request behind them, followed by `rgw-changelog
serve`: its own lifecycle processing (expiration, noncurrent-version expiration, the removal of an
expired delete marker, the abort of an incomplete multipart upload) and the Swift object
expirer (``X-Delete-After`` / ``X-Delete-At``). Each removal radosgw logs is one record, as a
user's DELETE would be, and replaying a bucket's records gives what radosgw lists afterwards; an
aborted upload leaves none.

Since Reef (18.2; ceph PR 54759, also in Tentacle 20.2) radosgw logs no lifecycle *removal* (a
version or a plain object deleted; a delete marker it makes is logged) when every zone of the
zonegroup is of tier type rgw, archive or "" (each zone then runs lifecycle itself, so sync need
not carry them): measured here, no bucket index log entry, no data log entry, so no record. A
zone of another tier type in the zonegroup (a `log` zone, which syncs nothing) makes radosgw log
them again: README, "radosgw's own lifecycle".

radosgw's lifecycle runs here through `radosgw-admin lc process` with a lifecycle day of 1
second (``rgw_lc_debug_interval``, set for client.admin only, so the lab's radosgw keeps its own
schedule); the expirer through `radosgw-admin objects expire`. Both run in radosgw-admin's
process, which reads the zonegroup when it starts: a zone added for a test needs no restart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.test_newuser_review_lab import Serve, check_schema, now_us
from tests.integration.test_writers_review_lab import Swift, serve, swift
from tests.lab import Lab, log_zone, s3_client

# radosgw's own writers are under test: every release.
pytestmark = [pytest.mark.ceph]

__all__ = ["serve", "swift"]  # the fixtures, shared with the writers review

DAY_S = 1  # rgw_lc_debug_interval: seconds in a lifecycle day, for radosgw-admin only


@pytest.fixture(name="log_zone")
def log_zone_fixture(ceph_lab: Lab) -> Iterator[None]:
    """On Reef and later, a `log` zone in the lab's zonegroup for the test (tests/lab.py
    ``log_zone``). On Pacific nothing: it logs lifecycle removals anyway."""
    if not ceph_lab.generations:
        yield
        return
    with log_zone(ceph_lab):
        yield


@pytest.fixture(scope="module")
def lc_days(ceph_lab: Lab) -> Iterator[int]:
    """radosgw-admin's lifecycle day compressed to ``DAY_S`` seconds, for this module."""
    ceph_lab.ceph("config", "set", "client.admin", "rgw_lc_debug_interval", str(DAY_S))
    try:
        yield DAY_S
    finally:
        ceph_lab.ceph("config", "rm", "client.admin", "rgw_lc_debug_interval")


def until(
    what: str,
    done: Callable[[], bool],
    step: Callable[[], object],
    left: Callable[[], object],
    timeout: float = 90,
) -> None:
    """``step`` (one lifecycle or expirer pass), then ``done``, until it holds. A bound, not a
    timing: a pass acts only on what is due by then, and a delete marker left alone by one
    pass's expiration is the next pass's work."""
    deadline = time.monotonic() + timeout
    while True:
        step()
        if done():
            return
        assert time.monotonic() < deadline, f"{what}: not done within {timeout:.0f}s: {left()}"
        time.sleep(1)


def versions_listed(s3: Any, bucket: str) -> set[tuple[str, str]]:
    """(key, version id) of every version and delete marker radosgw lists."""
    out: set[tuple[str, str]] = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            out.add((v["Key"], v["VersionId"]))
    return out


def replayed(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The (key, version id) pairs a replay of a versioned bucket's records leaves."""
    alive: set[tuple[str, str]] = set()
    for r in records:
        if r["key"] is None:
            continue
        pair = (r["key"], r["version_id"] or "null")
        if r["op"] in ("write", "delete_marker"):
            alive.add(pair)
        elif r["op"] == "delete":
            assert pair in alive, f"a delete of a version never written: {pair}"
            alive.discard(pair)
    return alive


def key_ops(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        if r["key"] is not None:
            out.setdefault(r["key"], []).append(r["op"])
    return out


def committed(serve: Serve, bucket: str) -> list[dict[str, Any]]:
    serve.wait_complete(now_us())
    records = serve.records(bucket)
    check_schema(records)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a record committed twice"
    return records


def test_radosgw_lifecycle_expirations_are_one_record_each(
    serve: Serve, ceph_lab: Lab, lc_days: int, log_zone: None
) -> None:
    s3 = s3_client(ceph_lab)
    tag = uuid.uuid4().hex[:8]
    plain, vers = f"exp-plain-{tag}", f"exp-vers-{tag}"
    for b in (plain, vers):
        s3.create_bucket(Bucket=b)
    s3.put_bucket_versioning(Bucket=vers, VersioningConfiguration={"Status": "Enabled"})
    for b in (plain, vers):
        for i in range(3):
            s3.put_object(Bucket=b, Key=f"x/{i}", Body=b"one")
        s3.put_object(Bucket=b, Key="keep", Body=b"kept")  # outside the rules' prefix
    s3.put_object(Bucket=vers, Key="x/0", Body=b"two")  # x/0's first version noncurrent
    upload = s3.create_multipart_upload(Bucket=plain, Key="x/mp")["UploadId"]
    s3.upload_part(Bucket=plain, Key="x/mp", UploadId=upload, PartNumber=1, Body=b"p" * 1024)
    rules: Any = {
        "Rules": [
            {
                "ID": "expire-x",
                "Status": "Enabled",
                "Filter": {"Prefix": "x/"},
                "Expiration": {"Days": 1},
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            }
        ]
    }
    for b in (plain, vers):
        s3.put_bucket_lifecycle_configuration(Bucket=b, LifecycleConfiguration=rules)
    time.sleep(lc_days + 1)  # every version and the upload more than a day old

    def plain_done() -> bool:
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=plain).get("Contents", [])]
        return listed == ["keep"] and not s3.list_multipart_uploads(Bucket=plain).get("Uploads")

    def vers_done() -> bool:
        # Every x/ key's versions gone: the current ones behind a delete marker, which, once
        # alone, is an expired delete marker, removed by a later pass (radosgw 16.2-20.2 leave the
        # listing's last key's marker in place: not waited for).
        listing = s3.list_object_versions(Bucket=vers)
        return [v["Key"] for v in listing.get("Versions", [])] == ["keep"]

    # One pass over every bucket with a lifecycle configuration (Pacific's `lc process` ignores
    # --bucket; each bucket costs radosgw-admin ~2 s, so the buckets' configurations are removed
    # at the end). Three passes a day apart: the current versions' markers, then the versions
    # made noncurrent by them, then the markers left alone.
    t0 = time.monotonic()
    try:
        until(
            "radosgw's lifecycle",
            lambda: plain_done() and vers_done(),
            lambda: ceph_lab.radosgw_admin("lc", "process"),
            lambda: (s3.list_objects_v2(Bucket=plain), s3.list_object_versions(Bucket=vers)),
        )
    finally:
        for b in (plain, vers):
            s3.delete_bucket_lifecycle(Bucket=b)
    print(f"radosgw's lifecycle passes: {time.monotonic() - t0:.1f}s")

    records = committed(serve, plain)
    assert key_ops(records) == {"keep": ["write"], **{f"x/{i}": ["write", "delete"] for i in range(3)}}
    # The aborted upload left no record, as an upload aborted by its user does.
    assert "x/mp" not in key_ops(records)

    records = committed(serve, vers)
    assert replayed(records) == versions_listed(s3, vers)
    ops = key_ops(records)
    print({k: v for k, v in sorted(ops.items())})
    # Per x/ key: each version written once and deleted once, one delete marker made by the
    # expiration, and one delete more where radosgw removed that marker since.
    markers = {k for k, _ in versions_listed(s3, vers)} - {"keep"}
    for i in range(3):
        key, versions = f"x/{i}", 2 if i == 0 else 1
        deletes = versions + (key not in markers)
        want = ["write"] * versions + ["delete"] * deletes + ["delete_marker"]
        assert sorted(ops[key]) == sorted(want), ops[key]


def test_swift_expiring_objects_are_one_delete_each(serve: Serve, ceph_lab: Lab, swift: Swift) -> None:
    s3 = s3_client(ceph_lab)
    c = f"exp-swift-{uuid.uuid4().hex[:8]}"
    assert swift("PUT", c).status == 201
    put_at = time.time()
    assert swift("PUT", f"{c}/after", b"after", {"X-Delete-After": "1"}).status == 201
    assert swift("PUT", f"{c}/at", b"at", {"X-Delete-At": str(int(time.time()) + 2)}).status == 201
    assert swift("PUT", f"{c}/keep", b"keep").status == 201
    # Each write's facts read before any removal: a write the follower finds removed by the time
    # it reads the index (radosgw's own expirer thread may pass at any moment) has none, by design.
    serve.wait_complete(now_us())
    time.sleep(max(0.0, 3 - (time.time() - put_at)))
    # Expired: GET answers 404 at once; the listing keeps the object until the expirer's pass.
    assert swift("GET", f"{c}/after").status == 404

    def expired() -> bool:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=c).get("Contents", [])] == ["keep"]

    until(
        "the Swift object expirer", expired, lambda: ceph_lab.radosgw_admin("objects", "expire"),
        lambda: s3.list_objects_v2(Bucket=c),
    )  # fmt: skip
    records = committed(serve, c)
    assert key_ops(records) == {"after": ["write", "delete"], "at": ["write", "delete"], "keep": ["write"]}
    sizes = {r["key"]: r["size"] for r in records if r["op"] == "write"}
    assert sizes["keep"] == 4
    assert sizes["after"] in (5, None) and sizes["at"] in (2, None), sizes
    print(f"write sizes of the expiring objects: {sizes}")


def test_with_only_rgw_zones_reef_and_later_log_no_lifecycle_removal(
    serve: Serve, ceph_lab: Lab, lc_days: int
) -> None:
    """radosgw's own behaviour: the lab's zonegroup has one zone, of tier type "". Pacific logs
    the removal, so it is a record; Reef and later do not, so no follower can see it (README: a
    `log` zone in the zonegroup, or rgw-changelog's lifecycle)."""
    s3 = s3_client(ceph_lab)
    bucket = f"exp-unlogged-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="x/0", Body=b"one")
    rule: Any = {"ID": "expire-x", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 1}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
    time.sleep(lc_days + 1)
    try:
        until(
            "radosgw's lifecycle",
            lambda: not s3.list_objects_v2(Bucket=bucket).get("Contents"),
            lambda: ceph_lab.radosgw_admin("lc", "process"),
            lambda: s3.list_objects_v2(Bucket=bucket),
        )
    finally:
        s3.delete_bucket_lifecycle(Bucket=bucket)
    ops = key_ops(committed(serve, bucket))
    print(f"{ceph_lab.release}: records of an object radosgw's lifecycle removed: {ops}")
    assert ops == {"x/0": ["write"] if ceph_lab.generations else ["write", "delete"]}
