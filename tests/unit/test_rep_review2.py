"""Review of replication (REP.1 one-way, REP.2 two-way) from an operator's point of view, on
moto: a sqlite index for the checkpoint and the site state, a directory target for the change
logs (the backup tests' ``Zone`` writes them), moto as the source zone and as the site (the
site's buckets are other buckets of the same moto, through ``bucket_map``).

Each test states what an operator expects; a failure is a bug the review found."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from moto import mock_aws

from changelog.config import ReplicationConfig, SiteConfig
from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.replication.apply import (
    REPLICA_META,
    SRC_BUCKET,
    SRC_ETAG,
    SRC_KEY,
    SRC_MTIME,
    SRC_VERSION,
    SRC_ZONE,
)
from changelog.consumers.replication.consumer import SiteReplicator
from changelog.consumers.replication.sites import object_status
from changelog.consumers.replication.state import SiteState
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.loop import Clocks
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone
from tests.unit.test_replication_two_way import Zones, rec


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def logs(tmp_path: Path) -> DirectoryTarget:
    return DirectoryTarget(tmp_path / "logs", fsync=False)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ChangeIndex]:
    idx = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
    yield idx
    idx.store.close()


def site_config(name: str = "east", **kw: Any) -> SiteConfig:
    return SiteConfig.model_validate({"name": name, "bucket_map": {"src": "dst", "vsrc": "dst"}, **kw})


def replicator(
    index: ChangeIndex, logs: DirectoryTarget, aws: Any, site: SiteConfig | None = None, **kw: Any
) -> SiteReplicator:
    rc = ReplicationConfig.unchecked(workers=2, interval=0.01)
    return SiteReplicator(
        index, logs, site or site_config(), rc, source=aws, site_client=aws, zone="z1", **kw
    )


def run_once(rep: SiteReplicator, index: ChangeIndex) -> None:
    runner = ConsumerRunner(index, rep, lease_ttl=5)
    assert runner.acquire()
    try:
        runner.step(threading.Event())
    finally:
        runner.step_down()


def body(aws: Any, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(aws.get_object(Bucket=bucket, Key=key)["Body"].read())
    except aws.exceptions.NoSuchKey:
        return None


def test_a_retried_old_delete_marker_never_deletes_a_newer_object_at_an_unversioned_site(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """A versioned source bucket replicated to an unversioned site bucket (the site mirrors the
    current version). The site refused a delete marker for a while (its bucket mapped wrongly);
    the user wrote the key again, and that write reached the site. An operator then retries the
    failed list ("retry everything"): the stale marker must be dropped as superseded, as it is on
    a versioned site, never delete the newer object the source still holds."""
    zone = Zone(aws, logs)
    zone.create_bucket("vsrc", versioned=True)
    aws.create_bucket(Bucket="dst")  # unversioned site bucket
    zone.put("vsrc", "k", b"v1")
    zone.commit()
    run_once(replicator(index, logs, aws), index)
    assert body(aws, "dst", "k") == b"v1"
    zone.delete("vsrc", "k")  # a delete marker at the source
    zone.commit()
    refused = site_config(bucket_map={"vsrc": "missing"})
    run_once(replicator(index, logs, aws, site=refused), index)
    st = SiteState(index, "east")
    assert len(list(st.failed())) == 1
    zone.put("vsrc", "k", b"v3")  # the user writes the key again
    zone.commit()
    run_once(replicator(index, logs, aws), index)
    assert body(aws, "dst", "k") == b"v3"
    assert st.request_retry() == 1  # "retry every failed entry"
    run_once(replicator(index, logs, aws), index)
    assert body(aws, "vsrc", "k") == b"v3"
    assert body(aws, "dst", "k") == b"v3", "the retried stale marker deleted the site's current object"
    assert list(st.failed()) == []


class _StepClock:
    """A monotonic clock the test moves (seconds), and the real wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_site_bucket_created_by_the_operator_takes_the_next_writes(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """The site's bucket was missing: the first record goes to the failed list (one line). The
    operator creates the bucket (README: "the site's buckets are the operator's: create them")
    and the users keep writing: the next writes must reach the site, not be failed without a
    request because the "no such bucket" answer is still cached (``BUCKET_TTL``, 60 s)."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    t = _StepClock()
    rep = replicator(index, logs, aws, clocks=Clocks(monotonic=t.monotonic))
    zone.put("src", "early", b"1")
    zone.commit()
    run_once(rep, index)
    st = SiteState(index, "east")
    assert [e.record.key for e in st.failed()] == ["early"]
    aws.create_bucket(Bucket="dst")  # the operator's fix
    t.now += 5.0  # a few seconds later
    zone.put("src", "later", b"2")
    zone.commit()
    run_once(rep, index)
    failed = sorted(str(e.record.key) for e in st.failed())
    assert body(aws, "dst", "later") == b"2", f"a write after the bucket was created failed: {failed}"


class _Repl:
    """What ``object_status`` reads of a ``Replication``: the index, the source client and
    the site replicators (the real ones)."""

    def __init__(self, index: ChangeIndex, source: Any, sites: dict[str, SiteReplicator]) -> None:
        self.index = index
        self.source = source
        self.sites = sites


def test_two_way_status_of_a_key_the_peer_wrote_is_completed(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """Two-way: zone z1's bucket ``src`` holds the peer's (z2) replica of a key the peer's user
    wrote; the peer's bucket ``dst`` holds that original. ``replicate status src k`` at z1 (or
    ``GET /_/crr/status/src/k``) must say COMPLETED: both zones hold the same write. A key that
    never converges in the status would keep an operator waiting for a replication that will
    never happen."""
    aws.create_bucket(Bucket="src")
    aws.create_bucket(Bucket="dst")
    put = aws.put_object(Bucket="dst", Key="k", Body=b"the peer's user wrote this")
    etag = put["ETag"].strip('"')
    mtime = int(aws.head_object(Bucket="dst", Key="k")["LastModified"].timestamp())
    # z2's replicator wrote its replica into z1's bucket, with the replica metadata it writes.
    aws.put_object(
        Bucket="src",
        Key="k",
        Body=b"the peer's user wrote this",
        Metadata={
            REPLICA_META: "true",
            SRC_ZONE: "z2",
            SRC_BUCKET: "dst",
            SRC_KEY: "k",
            SRC_VERSION: "null",
            SRC_ETAG: etag,
            SRC_MTIME: str(mtime),
        },
    )
    site = site_config("z2", two_way=True, peer_zone="z2", replica_writers=["rep-into-z1"])
    rep = replicator(index, logs, aws, site=site)
    doc = object_status(_Repl(index, aws, {"z2": rep}), "src", "k")  # type: ignore[arg-type]
    assert doc["sites"] == {"z2": "COMPLETED"}, doc
    assert doc["status"] == "COMPLETED"


def test_two_way_status_of_a_zones_own_write_at_the_peer_is_completed(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """The other direction, as a baseline: z1's own write, replicated to z2, is COMPLETED."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    zone.put("src", "mine", b"z1's user wrote this")
    zone.commit()
    site = site_config("z2", two_way=True, peer_zone="z2", replica_writers=["rep-into-z1"])
    rep = replicator(index, logs, aws, site=site)
    run_once(rep, index)
    doc = object_status(_Repl(index, aws, {"z2": rep}), "src", "mine")  # type: ignore[arg-type]
    assert doc["sites"] == {"z2": "COMPLETED"}, doc


@pytest.mark.parametrize(
    "key",
    [
        "ünï/ключ ✓.txt",
        "with space/and+plus",
        "100%/%2F%zz",
        "/leading-slash",
        "trailing/",
        "q?a=1&b#frag",
        "x" * 900,
    ],
)
def test_odd_keys_replicate_and_report_completed(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex, key: str
) -> None:
    """Odd keys (unicode, spaces, ``+``, ``%``, a leading ``/``, a trailing ``/``, ``?``/``#``,
    900 bytes) replicate with their bytes, and their status reads COMPLETED."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    zone.put("src", key, b"odd")
    zone.put("src", key + ".empty", b"")
    zone.commit()
    rep = replicator(index, logs, aws)
    run_once(rep, index)
    assert body(aws, "dst", key) == b"odd"
    assert body(aws, "dst", key + ".empty") == b""
    assert list(SiteState(index, "east").failed()) == []
    doc = object_status(_Repl(index, aws, {"east": rep}), "src", key)  # type: ignore[arg-type]
    assert doc["status"] == "COMPLETED", doc


def test_tags_with_spaces_and_plus_signs_arrive_as_written(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """Tag keys and values with spaces, ``+``, ``=``, ``:`` and ``/`` arrive at the site as the
    source has them (the tagging header is a query string: a space must not become a ``+``)."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    tags = [("team name", "red one"), ("a+b", "c+d"), ("k=", "v/w=x"), ("at@", "x:y z")]
    aws.put_object(Bucket="src", Key="t", Body=b"x", Tagging="&".join(f"{_q(k)}={_q(v)}" for k, v in tags))
    etag = aws.head_object(Bucket="src", Key="t")["ETag"].strip('"')
    zone.pending.append(zone.record("src", "t", "write", size=1, etag=etag))
    zone.commit()
    run_once(replicator(index, logs, aws), index)
    got = aws.get_object_tagging(Bucket="dst", Key="t")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in got) == sorted(tags)


def _q(s: str) -> str:
    return quote(s, safe="")


def test_two_way_a_users_copy_of_a_replica_reaches_the_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two-way: zone B's user wrote ``orig``; its replica is in zone A. Zone A's user then copies
    that object to a new key (CopyObject, the default metadata directive COPY: the replica
    metadata naming B comes along). The copy is a write of zone A's user (its record names that
    writer, not B's replicator): it must reach zone B, not be dropped as an echo."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    with mock_aws():
        zones = Zones()
        assert zones.replicate(zones.put("bbb", "orig", b"B's user wrote this")).status == "completed"
        assert zones.state("aaa") == {"orig": b"B's user wrote this"}
        # Zone A's user copies the replica to a new key (and the follower records its writer).
        resp = zones.s3.copy_object(Bucket="aaa", Key="copy", CopySource={"Bucket": "aaa", "Key": "orig"})
        etag = resp["CopyObjectResult"]["ETag"].strip('"')
        out = zones.replicate(rec("write", "aaa", "copy", etag=etag, writer="user-of-a"))
        assert out.status == "completed", out
        assert zones.state("bbb").get("copy") == b"B's user wrote this"


def test_two_way_a_users_newer_copy_of_a_replica_is_not_overwritten_as_an_own_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two-way: zone A's ``orig`` has a replica at zone B. Zone A's user writes ``k``; a few
    seconds later (before A's replicator gets to that record: an outage, a pause) zone B's user
    copies the replica ``orig`` onto ``k``, a newer write. A's replicator must keep B's newer
    write (last writer wins), not take it for an earlier replica of its own (the copy carries the
    replica metadata naming zone A) and overwrite it."""

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    with mock_aws():
        zones = Zones()
        assert zones.replicate(zones.put("aaa", "orig", b"A's orig")).status == "completed"
        older = zones.put("aaa", "k", b"A's user wrote k first")
        time.sleep(2.1)  # B's copy is clearly later, in whole seconds
        zones.s3.copy_object(Bucket="bbb", Key="k", CopySource={"Bucket": "bbb", "Key": "orig"})
        out = zones.replicate(older)
        assert zones.state("bbb")["k"] == b"A's orig", f"B's newer copy was overwritten ({out})"
