"""Core review (3) on the real lab: `rgw-changelog serve` follows radosgw while boto3 drives
concurrent writers of one key; the committed record of the object that stays live must carry its
size and etag (README, "Change-log records": null only for a write superseded before the
follower read it).

A racing PUT that loses radosgw's head-object guard (-ECANCELED: answered 200, "we lost in a
race") or a conditional PUT refused at the head write (-EEXIST: 412) completes its prepared
index entry with a *cancel*, which rewrites the entry's ``ver`` to ``{pool: -1, epoch: 0}``
(cls_rgw ``rgw_bucket_complete_op``) and leaves the live object's size, etag and mtime in it.
The follower matched facts by ``ver`` only. tests/unit/test_core_review3.py has the captured
entry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.test_newuser_review_lab import Serve, check_schema, now_us, running_serve
from tests.lab import Lab, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import TaggingTypeDef

# radosgw's own behaviour (its cancel path) is what is under test: every release.
pytestmark = [pytest.mark.ceph]

WRITERS = 6
MAX_ROUNDS = 30


@pytest.fixture(scope="module")
def serve(ceph_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with running_serve(ceph_lab, tmp_path_factory.mktemp("core3-serve"), only_new=True) as s:
        yield s


def index_ver(lab: Lab, bucket: str, key: str) -> tuple[int, int] | None:
    """The ``ver`` (pool, epoch) of ``key``'s plain bucket index entry, as `radosgw-admin bi list` shows it."""
    for e in json.loads(lab.radosgw_admin("bi", "list", f"--bucket={bucket}", f"--object={key}")):
        if e.get("type") == "plain" and e["entry"].get("name") == key:
            ver = e["entry"].get("ver") or {}
            return int(ver.get("pool", 0)), int(ver.get("epoch", 0))
    return None


def race(lab: Lab, bucket: str, key: str, round_: int, conditional: bool) -> tuple[int, list[str]]:
    """``WRITERS`` PUTs of ``key`` at once, each body of its own size: (successes, error codes)."""
    ok: list[int] = []
    failed: list[str] = []
    start = threading.Barrier(WRITERS)

    def put(i: int) -> None:
        s3 = s3_client(lab)
        body = os.urandom(1_000_000 + round_ * WRITERS + i)
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
        start.wait()
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
            ok.append(i)
        except ClientError as ex:
            failed.append(str(ex.response["Error"]["Code"]))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ok), failed


@pytest.mark.parametrize("conditional", [False, True], ids=["overwrites", "if-none-match"])
def test_the_live_object_keeps_its_facts_after_cancelled_racers(
    serve: Serve, ceph_lab: Lab, conditional: bool
) -> None:
    s3 = s3_client(ceph_lab)
    bucket = f"core3-race-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    if not conditional:
        s3.put_object(Bucket=bucket, Key="seed", Body=b"s")
    serve.wait_complete(now_us())  # the bucket is followed before the follower is held
    # The follower is held while the writers race, so it reads the bilog and the index after
    # the last cancel: deterministic, where a free-running follower might read in between.
    os.kill(serve.proc.pid, signal.SIGSTOP)
    cancelled_key = None
    try:
        for n in range(MAX_ROUNDS):
            key = "hot" if not conditional else f"new-{n}"
            if not conditional and n == 0:
                s3.put_object(Bucket=bucket, Key=key, Body=b"first")
            wins, failed = race(ceph_lab, bucket, key, n, conditional)
            print(f"round {n}: {wins} of {WRITERS} answered success, refused: {failed}")
            if conditional and wins == WRITERS:
                pytest.skip("this radosgw ignores If-None-Match on PUT")
            if index_ver(ceph_lab, bucket, key) == (-1, 0):
                cancelled_key = key
                break
    finally:
        os.kill(serve.proc.pid, signal.SIGCONT)
    assert cancelled_key is not None, f"no cancelled racer in {MAX_ROUNDS} rounds (a precondition)"
    head = s3.head_object(Bucket=bucket, Key=cancelled_key)
    serve.wait_complete(now_us())

    records = serve.records(bucket)
    check_schema(records)
    writes = [r for r in sorted(records, key=lambda r: r["seq"]) if r["key"] == cancelled_key]
    assert writes and all(r["op"] == "write" for r in writes), writes
    last = writes[-1]
    assert (last["size"], last["etag"]) == (head["ContentLength"], head["ETag"].strip('"')), (
        f"the live object's record: size {last['size']} etag {last['etag']}; HEAD: "
        f"{head['ContentLength']} {head['ETag']}"
    )
    assert set(last["metadata"]) == {"writer"} and last["metadata"]["writer"], last
    # Every other record of the key is of a write superseded before the follower read it.
    assert all((r["size"], r["etag"]) == (None, None) for r in writes[:-1]), writes
    if conditional:
        assert len(writes) == 1, writes  # one PUT succeeded: one record


def rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + ".000000Z"


def delete_tags_records(serve: Serve, ceph_lab: Lab) -> tuple[list[dict[str, Any]], str, str]:
    """PUT k, PutObjectTagging, DeleteObjectTagging on a new unversioned bucket: (records of k,
    HEAD's etag, a lower bound of every record's time)."""
    s3 = s3_client(ceph_lab)
    bucket = f"core3-tags-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    before = rfc3339(time.time_ns() - 60 * 1_000_000_000)  # a minute of slack: a bound, not a timing
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello")
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "t", "Value": "v"}]})
    s3.delete_object_tagging(Bucket=bucket, Key="k")
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    serve.wait_complete(now_us())
    records = serve.records(bucket)
    check_schema(records)
    writes = [r for r in sorted(records, key=lambda r: r["seq"]) if r["key"] == "k"]
    assert [(r["op"], r["version_id"]) for r in writes] == [("write", None)] * 3, writes
    return writes, etag, before


def test_delete_object_tagging_is_a_write_without_an_empty_etag_or_a_1970_mtime(
    serve: Serve, ceph_lab: Lab
) -> None:
    """Reef 18.2.7 logs a DeleteObjectTagging as a ``write`` stamped "0.000000" and rewrites the
    index entry with an empty etag and owner and a 1 ns mtime: the record said mtime 1970-01-01
    and etag "". A record's facts are the object's or null."""
    writes, etag, before = delete_tags_records(serve, ceph_lab)
    for r in writes:
        assert r["etag"] in (etag, None), r
        assert r["mtime"] is None or r["mtime"] >= before, r
        assert r["size"] in (5, None), r
    assert (writes[0]["size"], writes[0]["etag"]) in ((5, etag), (None, None)), writes[0]


def test_delete_object_tagging_is_a_write_of_its_own_time(serve: Serve, ceph_lab: Lab) -> None:
    """A record's time is when the mutation happened (or, as for deletes, when it was seen)."""
    writes, _, before = delete_tags_records(serve, ceph_lab)
    for r in writes:
        assert r["time"] >= before, f"a record stamped {r['time']}: {r}"


# -- DeleteObjectTagging without a VersionId on a versioned bucket ------------------------------
#
# radosgw (16.2.15, 18.2.7, 20.2.4) applies it to the key's head object by name, the OLH object,
# not to the current version (which keeps its tags): it logs a ``write`` of instance "" and adds a
# null-instance index entry (size 0, etag "", no FLAG_VER) of a null version the bucket does not
# have (HEAD ?versionId=null: 404). The same log entry stands for a real tag change of a null
# version (suspended bucket, an object older than versioning): its index entry has FLAG_VER.


FLAG_VER = 0x1


def null_instance_entry(lab: Lab, bucket: str, key: str) -> dict[str, Any] | None:
    """The null-instance index entry of ``key`` (``radosgw-admin bi list``), or None. The
    listing prints the versioned entries' omap keys raw (0x80 ...): not UTF-8."""
    tool = [os.path.join(lab.bin, "radosgw-admin")] if lab.bin else ["radosgw-admin", "-c", lab.conf]
    if not lab.bin and lab.keyring:
        tool += ["-k", lab.keyring]
    out = subprocess.run(
        [*tool, "bi", "list", f"--bucket={bucket}", f"--object={key}"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    for e in json.loads(out.decode("utf-8", "surrogateescape")):
        if e.get("type") == "instance" and e["entry"].get("name") == key and not e["entry"].get("instance"):
            return dict(e["entry"])
    return None


def tags(s3: Any, bucket: str, key: str, version_id: str | None = None) -> list[str]:
    extra = {"VersionId": version_id} if version_id else {}
    return [t["Key"] for t in s3.get_object_tagging(Bucket=bucket, Key=key, **extra)["TagSet"]]


def key_records(serve: Serve, bucket: str, key: str) -> list[tuple[str, str | None]]:
    records = serve.records(bucket)
    check_schema(records)
    return [(r["op"], r["version_id"]) for r in sorted(records, key=lambda r: r["seq"]) if r["key"] == key]


TAG: TaggingTypeDef = {"TagSet": [{"Key": "t", "Value": "v"}]}
CURRENT_TAG: TaggingTypeDef = {"TagSet": [{"Key": "cur", "Value": "1"}]}


def test_delete_object_tagging_of_a_versioned_key_records_no_null_version(
    serve: Serve, ceph_lab: Lab
) -> None:
    """DeleteObjectTagging without a VersionId on a versioned bucket acts on the current
    version; it must not give a record of a null version the bucket does not have."""
    s3 = s3_client(ceph_lab)
    bucket = f"core3-vtags-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v = s3.put_object(Bucket=bucket, Key="k", Body=b"hello")["VersionId"]
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=TAG)
    s3.delete_object_tagging(Bucket=bucket, Key="k")
    serve.wait_complete(now_us())

    # What radosgw did (the premise): a null-instance entry no null version made; the current
    # version kept its tags, and there is no null version.
    entry = null_instance_entry(ceph_lab, bucket, "k")
    assert entry is not None and not int(entry["flags"]) & FLAG_VER, entry
    assert tags(s3, bucket, "k") == ["t"] and tags(s3, bucket, "k", v) == ["t"]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k", VersionId="null")
    # PUT and PutObjectTagging (without a VersionId: of the current version) are writes of v.
    assert key_records(serve, bucket, "k") == [("write", v), ("write", v)]


def test_two_delete_object_taggings_read_together_record_nothing(serve: Serve, ceph_lab: Lab) -> None:
    """The first of two such requests read in one page no longer finds its index entry (the
    second rewrote it): it is recognised by the second's. The follower is held meanwhile so that
    both are read together, after the second."""
    s3 = s3_client(ceph_lab)
    bucket = f"core3-vtags2-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v = s3.put_object(Bucket=bucket, Key="k", Body=b"hello")["VersionId"]
    serve.wait_complete(now_us())  # the bucket is followed before the follower is held
    os.kill(serve.proc.pid, signal.SIGSTOP)
    try:
        s3.delete_object_tagging(Bucket=bucket, Key="k")
        s3.delete_object_tagging(Bucket=bucket, Key="k")
    finally:
        os.kill(serve.proc.pid, signal.SIGCONT)
    serve.wait_complete(now_us())
    assert key_records(serve, bucket, "k") == [("write", v)]


def test_tag_changes_of_a_suspended_buckets_null_version_are_writes(serve: Serve, ceph_lab: Lab) -> None:
    """A PUT while versioning is suspended writes the null version: PutObjectTagging and
    DeleteObjectTagging (with or without ``versionId=null``) change its tags, each a write."""
    s3 = s3_client(ceph_lab)
    bucket = f"core3-stags-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v = s3.put_object(Bucket=bucket, Key="k", Body=b"versioned")["VersionId"]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"the null version")
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=TAG)
    s3.delete_object_tagging(Bucket=bucket, Key="k")
    assert tags(s3, bucket, "k", "null") == []
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=TAG)
    s3.delete_object_tagging(Bucket=bucket, Key="k", VersionId="null")
    assert tags(s3, bucket, "k", "null") == []
    serve.wait_complete(now_us())
    entry = null_instance_entry(ceph_lab, bucket, "k")
    assert entry is not None and int(entry["flags"]) & FLAG_VER, entry
    assert key_records(serve, bucket, "k") == [("write", v)] + [("write", None)] * 5


def test_tag_changes_of_a_null_version_older_than_versioning_are_writes(serve: Serve, ceph_lab: Lab) -> None:
    """An object written before versioning was enabled is the key's null version: a
    DeleteObjectTagging without a VersionId changes its tags while it is current (its plain
    entry) and, on radosgw, also once a newer version is current (the null version's head is the
    OLH object; the current version keeps its tags); with ``versionId=null`` as well."""
    s3 = s3_client(ceph_lab)
    bucket = f"core3-otags-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"older than versioning")
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=TAG)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.delete_object_tagging(Bucket=bucket, Key="k")
    assert tags(s3, bucket, "k", "null") == []
    v = s3.put_object(Bucket=bucket, Key="k", Body=b"newer")["VersionId"]
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=TAG, VersionId="null")
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=CURRENT_TAG)
    s3.delete_object_tagging(Bucket=bucket, Key="k")
    # radosgw's doing: the null version lost its tags, the current one kept them.
    assert (tags(s3, bucket, "k", "null"), tags(s3, bucket, "k", v)) == ([], ["cur"])
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=TAG, VersionId="null")
    s3.delete_object_tagging(Bucket=bucket, Key="k", VersionId="null")
    serve.wait_complete(now_us())
    entry = null_instance_entry(ceph_lab, bucket, "k")
    assert entry is not None and int(entry["flags"]) & FLAG_VER, entry
    assert key_records(serve, bucket, "k") == [
        ("write", None),  # PUT
        ("write", None),  # PutObjectTagging
        ("write", None),  # DeleteObjectTagging of the current null version
        ("write", v),  # PUT of v
        ("write", None),  # PutObjectTagging ?versionId=null
        ("write", v),  # PutObjectTagging (the current version)
        ("write", None),  # DeleteObjectTagging: the null version's tags
        ("write", None),  # PutObjectTagging ?versionId=null
        ("write", None),  # DeleteObjectTagging ?versionId=null
    ]


def test_a_bucket_deleted_and_created_again_ends_its_first_life_before_the_second_starts(
    serve: Serve, ceph_lab: Lab
) -> None:
    """README (Buckets): a consumer replaying the log clears the bucket on ``bucket_delete``.
    Recorded in the same collector pass (the bucket deleted and created again within one pass),
    the second lifetime's ``bucket_create`` (first index shard) is committed before the first
    lifetime's ``bucket_delete`` (last shard): a replayer ended with the bucket deleted (the backup
    left the live, new bucket out of its snapshot unless an object record of it came later). The
    follower now waits, while the collector runs, for a cutoff past the delete before it starts the
    new lifetime (``[source] recreated_bucket_wait``)."""
    s3 = s3_client(ceph_lab)
    bucket = f"core3-again-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a", Body=b"first life")
    serve.wait_complete(now_us())  # the first lifetime is followed before it ends
    s3.delete_object(Bucket=bucket, Key="a")
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    serve.wait_complete(now_us())
    started = now_us()
    while not any(r["op"] == "bucket_delete" for r in serve.records(bucket)):
        assert now_us() - started < 120_000_000, f"no bucket_delete; serve log:\n{serve.log_tail()}"
        serve.post("/_/flush")
        serve.wait_complete(now_us())
    records = serve.records(bucket)  # committed order
    check_schema(records)
    ops = [(r["op"], r["seq"][:6]) for r in records if r["key"] is None]
    assert ops == [
        ("bucket_create", "000001"),
        ("bucket_delete", "000001"),
        ("bucket_create", "000002"),
    ], ops
    # Replayed in committed order, the bucket exists at the end.
    live = False
    for r in records:
        if r["op"] in ("bucket_create", "bucket_delete"):
            live = r["op"] == "bucket_create"
    assert live, records
