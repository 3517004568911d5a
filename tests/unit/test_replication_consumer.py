"""The replication consumer (``SiteReplicator``) on real stores: a sqlite index for the
checkpoint and the site state, a directory target for the change logs (written by the backup
tests' ``Zone``), moto as both the source zone and the site (the site's buckets are other buckets
of the same moto, through ``bucket_map``)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from changelog.config import ReplicationConfig, SiteConfig
from changelog.consumers.framework import ConsumerRunner, Cursor, load_checkpoint
from changelog.consumers.replication import consumer as consumer_mod
from changelog.consumers.replication.apply import SRC_VERSION
from changelog.consumers.replication.consumer import SiteReplicator
from changelog.consumers.replication.state import SiteState
from changelog.errors import TransientError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone


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
    return SiteConfig.model_validate({"name": name, "bucket_map": {"src": "dst", "vsrc": "vdst"}, **kw})


def replicator(
    index: ChangeIndex, logs: DirectoryTarget, aws: Any, site: SiteConfig | None = None, **kw: Any
) -> SiteReplicator:
    rc = ReplicationConfig.unchecked(workers=kw.pop("workers", 4), interval=0.01)
    return SiteReplicator(
        index, logs, site or site_config(), rc, source=aws, site_client=kw.pop("client", aws), zone="z1", **kw
    )


def run_once(rep: SiteReplicator, index: ChangeIndex) -> ConsumerRunner:
    runner = ConsumerRunner(index, rep, lease_ttl=5)
    assert runner.acquire()
    runner.step(threading.Event())
    return runner


def setup_buckets(zone: Zone, aws: Any) -> None:
    zone.create_bucket("src")
    zone.create_bucket("vsrc", versioned=True)
    aws.create_bucket(Bucket="dst")
    aws.create_bucket(Bucket="vdst")
    aws.put_bucket_versioning(Bucket="vdst", VersioningConfiguration={"Status": "Enabled"})


def state(aws: Any, bucket: str) -> dict[str, bytes]:
    out = {}
    for o in aws.list_objects_v2(Bucket=bucket).get("Contents", []):
        out[o["Key"]] = aws.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def version_chain(aws: Any, bucket: str, *, replica: bool) -> dict[str, tuple[str, list[str]]]:
    """key -> (its latest version, all its versions sorted): source version ids (at a site,
    from the replica's metadata) or "marker" (moto lists times to the second: the order of
    versions within a second is not known, the latest is)."""
    out: dict[str, list[str]] = {}
    for key, vid, is_marker in reversed(_ordered(aws.list_object_versions(Bucket=bucket))):
        if is_marker:
            ident = "marker"
        elif replica:
            ident = aws.head_object(Bucket=bucket, Key=key, VersionId=vid)["Metadata"][SRC_VERSION]
        else:
            ident = vid
        out.setdefault(key, []).append(ident)
    return {k: (v[-1], sorted(v)) for k, v in out.items()}


def same_chains(aws: Any) -> bool:
    """The site's versioned bucket holds the source's versions, and each key's latest entry is
    the same (a version, or a marker). The markers are not counted: moto makes no delete marker
    for a key without versions (AWS and radosgw do, and the lab test counts them), so a marker
    made while the versions before it had all been superseded at the source is missing at a
    moto site."""

    def chains(bucket: str, replica: bool) -> dict[str, tuple[str, list[str]]]:
        out = {}
        for k, (latest, chain) in version_chain(aws, bucket, replica=replica).items():
            objs = [v for v in chain if v != "marker"]
            if objs:
                out[k] = (latest, objs)
        return out

    assert chains("vdst", True) == chains("vsrc", False)
    return True


def _ordered(resp: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, version id, is marker) newest first per key, markers and versions merged."""
    rows = [(v["Key"], v["LastModified"], v["VersionId"], False) for v in resp.get("Versions", [])]
    rows += [(m["Key"], m["LastModified"], m["VersionId"], True) for m in resp.get("DeleteMarkers", [])]
    latest = {
        v["VersionId"] for v in resp.get("Versions", []) + resp.get("DeleteMarkers", []) if v["IsLatest"]
    }
    rows.sort(key=lambda r: (r[0], r[2] not in latest, -r[1].timestamp()))
    return [(k, vid, m) for k, _, vid, m in rows]


def test_a_mixed_history_converges_and_replaying_it_adds_nothing(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    rnd = random.Random(5)
    for _round in range(3):
        for n in range(40):
            key = f"k{rnd.randrange(8)}"
            bucket = rnd.choice(["src", "vsrc"])
            r = rnd.random()
            if r < 0.6:
                zone.put(bucket, key, f"{_round}.{n}".encode(), metadata={"n": str(n)}, content_type="text/x")
            elif r < 0.85:
                zone.delete(bucket, key)
            elif bucket == "vsrc" and zone.versions(bucket, key):
                zone.delete_version(bucket, key, rnd.choice(zone.versions(bucket, key)))
        zone.commit()
    rep = replicator(index, logs, aws)
    run_once(rep, index).step_down()
    assert state(aws, "dst") == state(aws, "src")
    assert same_chains(aws)
    got = aws.head_object(Bucket="dst", Key=next(iter(state(aws, "dst"))))
    assert (
        got["ContentType"] == "text/x"
        and "n" in got["Metadata"]
        and got["Metadata"]["rgwcl-src-zone"] == "z1"
    )
    assert rep.stats()["completed"] > 0 and rep.stats()["failed"] == 0


@pytest.mark.parametrize("where", ["before the commit", "mid-object"])
def test_a_crash_adds_no_version(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """serve dies while applying each log object: after its last record and before the commit
    past it, or mid-object (after a record reached the site, before its outcome was saved). The
    successor takes the object up where it stopped (the record in hand applied carefully), and the
    site ends with exactly the source's versions."""
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    rnd = random.Random(9)
    objects = []
    for _round in range(4):
        for n in range(25):
            key = f"k{rnd.randrange(5)}"
            r = rnd.random()
            if r < 0.6:
                zone.put("vsrc", key, f"{_round}.{n}".encode())
            elif r < 0.8:
                zone.delete("vsrc", key)
            elif zone.versions("vsrc", key):
                zone.delete_version("vsrc", key, rnd.choice(zone.versions("vsrc", key)))
        objects.append(zone.commit())

    class Died(Exception):
        pass

    real_commit = Cursor.commit
    died: list[str | None] = []

    def dying_commit(self: Cursor, after: str | None, **kw: Any) -> Any:
        if after != self.checkpoint.after and after not in died:
            died.append(after)
            raise Died(after)
        return real_commit(self, after, **kw)

    real_put = Cursor.put_state
    puts = {"n": 0}

    def dying_put(self: Cursor, set_state: Any, remove_state: Any = ()) -> Any:
        if any(k.startswith("p.") for k in set_state):
            puts["n"] += 1
            if puts["n"] % 7 == 0:
                died.append(None)
                raise Died("mid-object")
        return real_put(self, set_state, remove_state)

    if where == "mid-object":
        monkeypatch.setattr(Cursor, "put_state", dying_put)
    else:
        monkeypatch.setattr(Cursor, "commit", dying_commit)
    for _ in range(200):
        if load_checkpoint(index, "replication-east").after == objects[-1]:
            break
        rep = replicator(index, logs, aws)
        runner = ConsumerRunner(index, rep, lease_ttl=5)
        assert runner.acquire()
        with contextlib.suppress(Died):
            runner.step(threading.Event())
        runner.lease.release()
    assert died == objects if where == "before the commit" else len(died) >= 5
    assert load_checkpoint(index, "replication-east").after == objects[-1]
    assert same_chains(aws)
    # Every site version is the replica of one source version: no duplicates.
    idents = version_chain(aws, "vdst", replica=True)
    for key, (_, chain) in idents.items():
        objs = [v for v in chain if v != "marker"]
        assert len(objs) == len(set(objs)), (key, chain)


def test_a_transient_failure_mid_object_commits_nothing_and_the_retry_adds_no_version(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    for i in range(20):
        zone.put("vsrc", f"k{i % 5}", f"v{i}".encode())
    name = zone.commit()
    real = consumer_mod.apply_record
    calls = {"n": 0}

    def flaky(rec: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 12:
            raise TransientError("site unreachable (injected)")
        return real(rec, *a, **kw)

    monkeypatch.setattr(consumer_mod, "apply_record", flaky)
    rep = replicator(index, logs, aws, workers=1)
    runner = ConsumerRunner(index, rep, lease_ttl=5)
    assert runner.acquire()
    with pytest.raises(TransientError):
        runner.step(threading.Event())
    assert load_checkpoint(index, rep.name).after is None
    assert rep.last_error and "injected" in rep.last_error
    runner.step(threading.Event())
    assert load_checkpoint(index, rep.name).after == name
    runner.step_down()
    assert same_chains(aws)


def test_a_refused_site_bucket_fails_into_the_list_and_a_retry_completes(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    for i in range(3):
        zone.put("src", f"k{i}", b"x")
    zone.commit()
    rep = replicator(index, logs, aws)  # "dst" does not exist at the site: NoSuchBucket, permanent
    run_once(rep, index).step_down()
    st = SiteState(index, "east")
    failed = list(st.failed())
    assert sorted(e.record.key or "" for e in failed) == ["k0", "k1", "k2"]
    assert all("dst" in e.error for e in failed)
    doc = failed[0].backbeat("east")
    assert doc["StorageClass"] == "east" and doc["Bucket"] == "src" and doc["Size"] == 1
    assert load_checkpoint(index, rep.name).after is not None  # the site moved on
    aws.create_bucket(Bucket="dst")
    assert st.request_retry() == 3
    rep2 = replicator(index, logs, aws)
    run_once(rep2, index).step_down()
    assert list(st.failed()) == [] and st.retry_requests() == []
    assert state(aws, "dst") == state(aws, "src")


def test_a_retried_entry_never_undoes_a_newer_state(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    zone.put("src", "k", b"old")
    zone.commit()
    rep = replicator(index, logs, aws)
    run_once(rep, index).step_down()
    assert len(list(SiteState(index, "east").failed())) == 1
    aws.create_bucket(Bucket="dst")
    zone.put("src", "k", b"new")  # the failed record is stale now
    zone.commit()
    run_once(replicator(index, logs, aws), index).step_down()
    assert state(aws, "dst") == {"k": b"new"}
    st = SiteState(index, "east")
    # The newer record replicated the same (bucket, key, version): the entry is resolved.
    assert list(st.failed()) == []


def test_pause_holds_and_a_scheduled_resume_resumes(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    zone.put("src", "a", b"1")
    zone.commit()
    st = SiteState(index, "east")
    st.pause()
    rep = replicator(index, logs, aws)
    run_once(rep, index).step_down()
    assert state(aws, "dst") == {} and rep.parked
    assert rep.backlog(None).records == 1
    st.schedule_resume(hours=0.0)
    run_once(rep, index).step_down()
    assert state(aws, "dst") == {"a": b"1"} and not st.paused()
    assert rep.backlog(load_checkpoint(index, rep.name).after).records == 0


def test_prefixes_and_buckets_select_what_a_site_gets(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    zone.put("src", "in/a", b"1")
    zone.put("src", "out/b", b"2")
    zone.put("vsrc", "in/c", b"3")
    zone.commit()
    site = SiteConfig.model_validate(
        {"name": "east", "bucket_map": {"src": "dst"}, "buckets": ["src"], "prefixes": ["in/"]}
    )
    run_once(replicator(index, logs, aws, site=site), index).step_down()
    assert state(aws, "dst") == {"in/a": b"1"}
    assert state(aws, "vdst") == {}


def test_one_key_keeps_its_order_across_workers(aws: Any, logs: DirectoryTarget, index: ChangeIndex) -> None:
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    for i in range(60):
        zone.put("src", f"k{i % 6}", f"{i}".encode())
        if i % 7 == 0:
            zone.delete("src", f"k{(i + 1) % 6}")
    zone.commit()
    run_once(replicator(index, logs, aws, workers=8), index).step_down()
    assert state(aws, "dst") == state(aws, "src")


def _site_current(aws: Any, key: str) -> bytes | None:
    try:
        return aws.get_object(Bucket="vdst", Key=key)["Body"].read()
    except aws.exceptions.NoSuchKey:
        return None


def test_a_retried_old_version_never_lands_on_a_newer_one(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    zone.create_bucket("vsrc", versioned=True)
    zone.put("vsrc", "k", b"v1")
    zone.commit()
    run_once(replicator(index, logs, aws), index).step_down()  # vdst missing: v1 -> failed list
    st = SiteState(index, "east")
    assert len(list(st.failed())) == 1
    aws.create_bucket(Bucket="vdst")
    aws.put_bucket_versioning(Bucket="vdst", VersioningConfiguration={"Status": "Enabled"})
    zone.put("vsrc", "k", b"v2")
    zone.commit()
    run_once(replicator(index, logs, aws), index).step_down()
    assert _site_current(aws, "k") == b"v2"
    assert st.request_retry() == 1
    run_once(replicator(index, logs, aws), index).step_down()
    assert _site_current(aws, "k") == b"v2"
    assert list(st.failed()) == []  # superseded: dropped, with its reason in the log


def test_a_retried_old_marker_never_hides_a_newer_version(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    zone.create_bucket("vsrc", versioned=True)
    aws.create_bucket(Bucket="vdst")
    aws.put_bucket_versioning(Bucket="vdst", VersioningConfiguration={"Status": "Enabled"})
    zone.put("vsrc", "k", b"v1")
    zone.commit()
    run_once(replicator(index, logs, aws), index).step_down()
    zone.delete("vsrc", "k")
    zone.commit()
    # The site refuses the marker for good (its bucket mapped to one that does not exist).
    run_once(
        replicator(index, logs, aws, site=site_config(bucket_map={"vsrc": "missing"})), index
    ).step_down()
    st = SiteState(index, "east")
    assert len(list(st.failed())) == 1
    zone.put("vsrc", "k", b"v3")
    zone.commit()
    run_once(replicator(index, logs, aws), index).step_down()
    assert st.request_retry() == 1
    run_once(replicator(index, logs, aws), index).step_down()
    assert _site_current(aws, "k") == b"v3" and list(st.failed()) == []


class _DownSource:
    def __getattr__(self, name: str) -> Any:
        def fail(**kw: Any) -> Any:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://source:7480")

        return fail


def test_a_source_outage_holds_the_site_back_and_fails_nothing(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    zone.put("src", "k", b"x")
    name = zone.commit()
    rep = replicator(index, logs, aws)
    rep.source = _DownSource()  # type: ignore[assignment]
    runner = ConsumerRunner(index, rep, lease_ttl=30)
    assert runner.acquire()
    for _ in range(3 * consumer_mod.LENIENT_AFTER):
        with pytest.raises(TransientError):
            runner.step(threading.Event())
    assert load_checkpoint(index, rep.name).after is None
    assert list(SiteState(index, "east").failed()) == []
    rep.source = aws  # the source is back
    runner.step(threading.Event())
    runner.step_down()
    assert load_checkpoint(index, rep.name).after == name and state(aws, "dst") == {"k": b"x"}


def test_a_two_way_site_drops_echoes_and_keeps_the_peers_newer_writes(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """Two-way (REP.2) through the consumer: an echo (a record whose writer is the peer's
    replicator) costs no request and is counted; a write older than the peer's version is
    not sent (counted as older); this zone's own writes reach the peer."""
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    zone.put("src", "mine", b"from here")
    # The peer's replica of its own write, as this zone's follower records it.
    echo = zone.put("src", "theirs", b"from the peer", log=False)
    zone.pending.append(zone.record("src", "theirs", "write", size=13, etag=echo["etag"],
                                    metadata={"writer": "rep-into-z1"}))
    # A key the peer wrote later than this zone did (its origin mtime far ahead).
    zone.put("src", "late", b"older here")
    aws.put_object(Bucket="dst", Key="late", Body=b"newer there")
    zone.commit()
    site = site_config(two_way=True, peer_zone="z2", replica_writers=["rep-into-z1"])
    rep = replicator(index, logs, aws, site=site)
    run_once(rep, index).step_down()
    stats = rep.stats()
    assert (stats["echoes"], stats["completed"]) == (1, 1), stats
    assert state(aws, "dst")["mine"] == b"from here"
    assert "theirs" not in state(aws, "dst")
    # "late": the peer's object (same second, z2 > z1 in the zone order) wins the tie.
    assert state(aws, "dst")["late"] == b"newer there" and stats["older"] == 1


@pytest.mark.parametrize("restart", [False, True])
def test_a_two_way_write_over_a_replica_beats_it_across_a_restart(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex, restart: bool
) -> None:
    """This zone's user overwrote the peer's replica: the peer's original would win the order
    (its clock is ahead), but the log says the user's write came after it.
    A replicator that takes over after the echo was committed reads that back from the log."""
    zone = Zone(aws, logs)
    setup_buckets(zone, aws)
    # The peer's write, stamped by a clock 30 s ahead (its replica here stamped alike): the order
    # alone would keep it.
    ahead = int(time.time()) + 30
    aws.put_object(Bucket="dst", Key="k", Body=b"the peer's write",
                   Metadata={"rgwcl-replica": "true", "rgwcl-src-mtime": str(ahead), "rgwcl-src-zone": "z2"})
    echo = zone.put("src", "k", b"the peer's write", log=False)  # its replica here
    echo_rec = zone.record("src", "k", "write", size=16, etag=echo["etag"], metadata={"writer": "rep-into-z1"})
    echo_rec["time"] = f"{datetime.fromtimestamp(ahead, UTC):%Y-%m-%dT%H:%M:%S}.000000Z"
    zone.pending.append(echo_rec)
    zone.commit()
    site = site_config(two_way=True, peer_zone="z2", replica_writers=["rep-into-z1"])
    first = replicator(index, logs, aws, site=site)
    run_once(first, index).step_down()
    assert first.stats()["echoes"] == 1
    zone.put("src", "k", b"the user's later write")
    zone.commit()
    second = replicator(index, logs, aws, site=site) if restart else first
    run_once(second, index).step_down()
    assert state(aws, "dst")["k"] == b"the user's later write"
