"""Two-way replication (REP.2) in ``changelog.consumers.replication.apply``, on moto: zone A's
bucket ``a`` and zone B's bucket ``b``, each replicated to the other with ``two_way``. Echoes
(the peer's replicas) are never sent back, by their writer or by their replica metadata;
writes and deletes follow last writer wins (``origin_order``); random crossing workloads on
both sides converge to one state."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from moto import mock_aws

from changelog.consumers.replication.apply import (
    ECHO,
    REPLICA_META,
    SRC_BUCKET,
    SRC_ETAG,
    SRC_KEY,
    SRC_MTIME,
    SRC_ZONE,
    WRITER,
    Applied,
    Destination,
    apply_record,
    is_replica,
    origin_order,
    src_key,
)
from changelog.consumers.replication.two_way import KeyMemory
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.s3client import make_s3_client

_ids = itertools.count(1)


def rec(op: str, bucket: str, key: str, *, etag: str | None = None, time: datetime | None = None,
        writer: str | None = None) -> LogRecord:
    n = next(_ids)
    t = (time or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return LogRecord(
        id=f"e{n}", time=t, bucket=bucket, key=key, version_id=None, op=op, size=None, etag=etag,
        seq=f"{n:020d}", baseline=False, recorded=t, metadata={WRITER: writer} if writer else {},
    )


class NoVersions:
    def get(self, key: str, src_version: str) -> str | None:
        return None


class Zones:
    """Zone A (bucket ``aaa``) and zone B (``bbb``) in one moto account. The replicator that
    writes into zone X does so as user ``rep-X``: zone X's records by ``rep-X`` are echoes."""

    def __init__(self) -> None:
        self.s3 = make_s3_client(None, access_key="testing", secret_key="testing", region="us-east-1",
                                 max_attempts=2, connect_timeout=5.0, read_timeout=30.0)
        for b in ("aaa", "bbb"):
            self.s3.create_bucket(Bucket=b)
        # Each replicator's memory of echoes, by the zone whose records it reads.
        self.memory = {"aaa": KeyMemory(), "bbb": KeyMemory()}

    def dest(self, to: str) -> Destination:
        """The destination of zone ``to``'s peer's replicator (its writes land in ``to``)."""
        frm = "bbb" if to == "aaa" else "aaa"
        return Destination(self.s3, to, versioned=False, zone=f"zone-{frm}", two_way=True,
                           peer_zone=f"zone-{to}", replica_writers=frozenset({f"rep-{frm}"}))

    def replicate(self, r: LogRecord) -> Applied:
        """Apply a record of zone ``r.bucket`` to the other zone, as its replicator does."""
        memory = self.memory[r.bucket]
        out = apply_record(r, self.s3, self.dest("bbb" if r.bucket == "aaa" else "aaa"), NoVersions(),
                           before=memory.before(r))
        memory.note(r, out)
        return out

    def put(self, bucket: str, key: str, body: bytes, **kw: Any) -> LogRecord:
        etag = self.s3.put_object(Bucket=bucket, Key=key, Body=body, **kw)["ETag"].strip('"')
        return rec("write", bucket, key, etag=etag)

    def state(self, bucket: str) -> dict[str, bytes]:
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k: bytes(self.s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys}


@pytest.fixture
def zones(monkeypatch: pytest.MonkeyPatch) -> Iterator[Zones]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield Zones()


def test_src_key_names_a_short_key_and_digests_a_long_one() -> None:
    """A replica's SRC_KEY: the key percent-encoded, or the digest of one whose encoding would
    not fit AWS's 2 KB of user metadata (a 1,024-byte key of 3-byte characters: 3 KB)."""
    assert src_key("a b/é") == "a%20b%2F%C3%A9"
    long = "\u20ac" * 341  # 1,023 UTF-8 bytes, 3,069 characters percent-encoded
    digest = src_key(long)
    assert digest.startswith("sha256:") and len(digest) == 71 and digest != src_key(long + "x")
    meta = {SRC_KEY: digest, SRC_BUCKET: "b" * 63, SRC_ZONE: "zone-a", SRC_ETAG: "e" * 34, REPLICA_META: "true"}
    assert is_replica(meta, long, "b" * 63) and not is_replica(meta, long[:-1], "b" * 63)


def test_origin_order_uses_a_replicas_source_and_breaks_ties_by_zone() -> None:
    of = {"key": "k", "bucket": "src"}
    replica = {
        REPLICA_META: "true", SRC_MTIME: "100", SRC_ZONE: "zone-x", SRC_ETAG: "e1", SRC_KEY: "k", SRC_BUCKET: "src"
    }  # fmt: skip
    assert origin_order(500, "zone-b", replica, **of) == (100, "zone-x")  # its own mtime: when copied
    assert origin_order(100, "zone-x", {}, **of) == (100, "zone-x")  # the original, seen at its zone
    assert origin_order(100, "zone-b", {}, **of) > origin_order(100, "zone-a", {}, **of)  # a tie within a second
    assert origin_order(101, "zone-a", {}, **of) > origin_order(100, "zone-b", {}, **of)
    bad = {**replica, SRC_MTIME: "bad"}
    assert origin_order(7, "zone-a", bad, **of) == (7, "zone-a")
    # A user's copy of a replica (to another key, or from another bucket) is an original.
    assert origin_order(500, "zone-b", replica, key="copy", bucket="src") == (500, "zone-b")
    assert origin_order(500, "zone-b", replica, key="k", bucket="other") == (500, "zone-b")


def test_an_echo_is_dropped_by_its_writer_with_no_request(zones: Zones) -> None:
    zones.put("aaa", "k", b"from a")
    r = zones.put("bbb", "k", b"a replica written here by a's replicator")
    echo = rec("write", "bbb", "k", etag=r.etag, writer="rep-bbb")
    out = zones.replicate(echo)
    assert (out.status, out.requests) == ("skipped", 0) and out.reason and out.reason.startswith("echo")
    assert zones.state("aaa") == {"k": b"from a"}


def test_an_echo_without_a_writer_is_recognised_by_its_replica_metadata(zones: Zones) -> None:
    first = zones.replicate(zones.put("aaa", "k", b"v1"))
    assert first.status == "completed"
    meta = zones.s3.head_object(Bucket="bbb", Key="k")["Metadata"]
    assert meta[SRC_ZONE] == "zone-aaa" and meta[SRC_MTIME].isdigit()
    # B's follower recorded the replica write without a writer: sent back, it stops at the GET.
    etag = zones.s3.head_object(Bucket="bbb", Key="k")["ETag"].strip('"')
    out = zones.replicate(rec("write", "bbb", "k", etag=etag))
    assert out.status == "skipped" and out.reason and out.reason.startswith("echo"), out
    assert out.requests == 1
    assert zones.state("aaa") == zones.state("bbb") == {"k": b"v1"}


@pytest.mark.parametrize("site_origin", [10**10, 1])
def test_a_write_never_replaces_a_newer_one_at_the_peer(zones: Zones, site_origin: int) -> None:
    # B holds A-origin content stamped far in the future (or the past).
    zones.s3.put_object(Bucket="bbb", Key="k", Body=b"there",
                        Metadata={REPLICA_META: "true", SRC_MTIME: str(site_origin), SRC_ETAG: "zz",
                                  SRC_KEY: "k", SRC_BUCKET: "aaa"})
    out = zones.replicate(zones.put("aaa", "k", b"here"))
    newer_there = site_origin > 10**9
    assert out.status == ("skipped" if newer_there else "completed"), out
    assert zones.state("bbb")["k"] == (b"there" if newer_there else b"here")


def test_a_delete_removes_the_peers_older_copy_but_not_a_newer_write(zones: Zones) -> None:
    zones.replicate(zones.put("aaa", "old", b"1"))
    deleted_at = zones.s3.head_object(Bucket="aaa", Key="old")["LastModified"]
    zones.s3.delete_object(Bucket="aaa", Key="old")
    out = zones.replicate(rec("delete", "aaa", "old", time=deleted_at))
    assert out.status == "completed" and "old" not in zones.state("bbb")
    # The echo of that delete at B (no writer: plain deletes carry none) writes nothing at A.
    back = zones.replicate(rec("delete", "bbb", "old", time=deleted_at))
    assert back.status == "completed" and back.reason == "nothing to delete at the site"
    # A write at B newer than what A deleted survives A's delete.
    zones.s3.put_object(Bucket="bbb", Key="new", Body=b"newer",
                        Metadata={REPLICA_META: "true", SRC_MTIME: str(10**10), SRC_ETAG: "n",
                                  SRC_KEY: "new", SRC_BUCKET: "aaa"})
    zones.s3.put_object(Bucket="aaa", Key="new", Body=b"x")
    zones.s3.delete_object(Bucket="aaa", Key="new")
    out = zones.replicate(rec("delete", "aaa", "new", time=datetime.now(UTC)))
    assert out.status == "skipped" and zones.state("bbb")["new"] == b"newer"


@pytest.mark.parametrize("seed", range(40))
def test_crossing_writes_and_deletes_on_both_sides_converge(zones: Zones, seed: int) -> None:
    """Both zones write and delete the same few keys; each zone's records (its users' and, as
    its follower would see them, the peer replicator's writes and deletes) reach the other side
    in a random interleaving. When every record is applied, both zones hold the same keys and
    bytes, and no replica write was ever sent back."""
    rnd = random.Random(seed)
    pending: dict[str, list[LogRecord]] = {"aaa": [], "bbb": []}
    keys = [f"k{i}" for i in range(4)]

    def mutate(bucket: str) -> None:
        key = rnd.choice(keys)
        if rnd.random() < 0.3:
            try:
                t = zones.s3.head_object(Bucket=bucket, Key=key)["LastModified"]
            except Exception:  # noqa: BLE001 - absent: nothing to delete
                return
            zones.s3.delete_object(Bucket=bucket, Key=key)
            pending[bucket].append(rec("delete", bucket, key, time=t))
        else:
            pending[bucket].append(zones.put(bucket, key, f"{bucket}-{rnd.random()}".encode()))

    echoes_sent = 0

    def head(bucket: str, key: str) -> tuple[str, datetime] | None:
        try:
            h = zones.s3.head_object(Bucket=bucket, Key=key)
        except Exception:  # noqa: BLE001 - absent
            return None
        return h["ETag"], h["LastModified"]

    def step(bucket: str) -> None:
        nonlocal echoes_sent
        r = pending[bucket].pop(0)
        to = "bbb" if bucket == "aaa" else "aaa"
        key = r.key or ""
        before = head(to, key)
        out = zones.replicate(r)
        after = head(to, key)
        if r.metadata.get(WRITER):
            echoes_sent += out.status != "skipped"
        if after != before:  # the replicator wrote at ``to``: its follower records it
            if after is None:  # a plain delete: the deleted object's mtime, no writer
                assert before is not None
                pending[to].append(rec("delete", to, key, time=before[1]))
            else:
                etag = zones.s3.head_object(Bucket=to, Key=r.key or "")["ETag"].strip('"')
                pending[to].append(rec("write", to, r.key or "", etag=etag, writer=f"rep-{to}"))

    for _ in range(60):
        choice = rnd.random()
        if choice < 0.4:
            mutate(rnd.choice(["aaa", "bbb"]))
        else:
            side = rnd.choice([b for b in ("aaa", "bbb") if pending[b]] or ["aaa"])
            if pending[side]:
                step(side)
    while pending["aaa"] or pending["bbb"]:
        step(rnd.choice([b for b in ("aaa", "bbb") if pending[b]]))
    assert echoes_sent == 0
    assert zones.state("aaa") == zones.state("bbb")


def test_the_two_way_settings_parse_and_a_missing_zone_name_is_one_line() -> None:
    from changelog.config import parse_config
    from changelog.errors import ConfigError

    site = {"name": "b", "endpoint": "http://127.0.0.1:9", "two_way": True, "replica_writers": ["rep-into-a"]}
    cfg = parse_config({"source": {"record_writer": True}, "replication": {"zone": "a", "sites": [site]}})
    s = cfg.replication.sites[0]
    assert (cfg.source.record_writer, s.two_way, s.peer, s.replica_writers) == (True, True, "b", ("rep-into-a",))
    with pytest.raises(ConfigError) as err:
        parse_config({"replication": {"sites": [site]}})
    assert "replication.zone" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config({"replication": {"zone": "a", "sites": [{**site, "replica_writers": [""]}]}})
    assert "replica_writers" in str(err.value)
    with pytest.raises(ConfigError, match="two_way: set .source. record_writer = true"):
        parse_config({"replication": {"zone": "a", "sites": [site]}})
    with pytest.raises(ConfigError, match='record_writer needs object_info = "index"'):
        parse_config({"source": {"record_writer": True, "object_info": "head"}})


class _Racing:
    """The peer's client, with a user write at the peer landing between the replicator's HEAD
    and its PUT (``racing`` times)."""

    def __init__(self, client: Any, racing: int = 1) -> None:
        self._client = client
        self.racing = racing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_object(self, **kw: Any) -> Any:
        if self.racing:
            self.racing -= 1
            self._client.put_object(Bucket=kw["Bucket"], Key=kw["Key"], Body=b"written at the peer meanwhile")
        return self._client.put_object(**kw)


@pytest.mark.parametrize("there_before", [False, True])
def test_a_peer_write_racing_the_replica_is_never_overwritten(zones: Zones, there_before: bool) -> None:
    from changelog.errors import TransientError

    if there_before:
        zones.s3.put_object(Bucket="bbb", Key="k", Body=b"old",
                            Metadata={REPLICA_META: "true", SRC_MTIME: "1", SRC_KEY: "k", SRC_BUCKET: "aaa"})
    r = zones.put("aaa", "k", b"from a")
    d = zones.dest("bbb")
    racing = Destination(_Racing(zones.s3), d.bucket, False, zone=d.zone, two_way=True, peer_zone=d.peer_zone)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match="changed at the site meanwhile"):
        apply_record(r, zones.s3, racing, NoVersions())
    assert zones.state("bbb")["k"] == b"written at the peer meanwhile"
    # The retry judges again: the peer's write (the same second, zone-bbb > zone-aaa) stays.
    out = apply_record(r, zones.s3, d, NoVersions(), careful=True)
    assert out.status == "skipped" and zones.state("bbb")["k"] == b"written at the peer meanwhile"


class _Recording:
    """The peer's client, keeping the arguments of each PutObject."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.puts: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_object(self, **kw: Any) -> Any:
        self.puts.append(kw)
        return self._client.put_object(**kw)


def test_a_replica_gives_the_bucket_owner_full_control_and_is_conditional(zones: Zones) -> None:
    """The replicator owns its replicas: the bucket's owner is granted full control (radosgw
    answers it 403 otherwise); and the PUT replaces only what was judged."""
    rec_client = _Recording(zones.s3)
    d = zones.dest("bbb")
    dest = Destination(rec_client, d.bucket, False, zone=d.zone, two_way=True, peer_zone=d.peer_zone)  # type: ignore[arg-type]
    assert apply_record(zones.put("aaa", "k", b"x"), zones.s3, dest, NoVersions()).status == "completed"
    assert [(p.get("ACL"), p.get("IfNoneMatch")) for p in rec_client.puts] == [("bucket-owner-full-control", "*")]
    etag = zones.s3.head_object(Bucket="bbb", Key="k")["ETag"].strip('"')
    assert apply_record(zones.put("aaa", "k", b"y"), zones.s3, dest, NoVersions()).status == "completed"
    assert rec_client.puts[-1].get("IfMatch") == etag


def test_an_older_peer_write_landing_after_a_newer_delete_is_deleted_on_both_sides(zones: Zones) -> None:
    """Zone A writes k; zone B writes k later and deletes it. A's replica of its (older) write
    reaches B after the delete (B's key is absent: no tombstone), before B's replicator reads its
    delete. The delete is newer than A's write: both zones end without k (the two-site lab test
    found both keeping A's write: B's delete was skipped as "rewritten at the source")."""
    x = zones.put("aaa", "k", b"a's older write")
    w = zones.put("bbb", "k", b"b's newer write")
    deleted_mtime = zones.s3.head_object(Bucket="bbb", Key="k")["LastModified"]
    zones.s3.delete_object(Bucket="bbb", Key="k")
    d = dataclasses.replace(rec("delete", "bbb", "k"),
                            metadata={"deleted_mtime": deleted_mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    assert zones.replicate(x).status == "completed"  # lands at B, where k is absent
    assert zones.replicate(w).status == "skipped"  # B's write is gone at B
    out = zones.replicate(d)
    assert out.status == "completed", out
    assert zones.state("aaa") == {} and zones.state("bbb") == {}


def test_a_careful_replay_of_a_replica_already_at_the_peer_writes_nothing_there(zones: Zones) -> None:
    """A replicator killed after its PUT reached the peer replays the record carefully: it finds
    its replica there and, the source having no tags, must not send a DeleteObjectTagging (a
    write: one more mutation at the peer per user mutation; and radosgw 18.2 resets the object's
    ETag in listings and its Last-Modified to 1970 on it: the two-site lab test on Reef found
    c/033 listed with ETag "" at one zone only)."""
    r = zones.put("aaa", "k", b"x")
    assert zones.replicate(r).status == "completed"
    calls: list[str] = []

    def note(model: Any, **_: Any) -> None:
        calls.append(model.name)

    zones.s3.meta.events.register("before-call.s3", note)
    out = apply_record(r, zones.s3, zones.dest("bbb"), NoVersions(), careful=True)
    assert (out.status, out.reason) == ("completed", "already at the site")
    writes = [c for c in calls if not c.startswith(("Head", "Get", "List"))]
    assert writes == [], calls
    # Tags the source has are still given to the replica on a replay.
    zones.s3.put_object_tagging(Bucket="aaa", Key="k", Tagging={"TagSet": [{"Key": "t", "Value": "1"}]})
    calls.clear()
    assert apply_record(r, zones.s3, zones.dest("bbb"), NoVersions(), careful=True).status == "completed"
    assert "PutObjectTagging" in calls
    assert zones.s3.get_object_tagging(Bucket="bbb", Key="k")["TagSet"] == [{"Key": "t", "Value": "1"}]


def test_a_delete_of_a_replica_leaves_a_peer_write_of_the_replicas_second(zones: Zones) -> None:
    """A's v1 reaches B; in the same second A's user writes v2 and B's user deletes the replica
    of v1. The delete and v2 cross: v2 stays on both sides (README). B's delete names only the
    replica's mtime (when it arrived, the second of v2): judged by the order alone, v2 was "no
    newer than the replica" and deleted at A, and A's replicator then sent that delete back to
    B after v2's replica: v2 lost everywhere, one write more at B (the two-site lab test found
    both, keys e/000 and e/004). The ETags tell v1's replica from v2; the order is for a
    multipart replica only, whose ETag differs from its original's."""
    import time as _time

    _time.sleep(1.02 - _time.time() % 1)  # the next writes share their second
    assert zones.replicate(zones.put("aaa", "k", b"v1")).status == "completed"  # the replica at B
    etag = zones.s3.head_object(Bucket="bbb", Key="k")["ETag"].strip('"')
    echo = rec("write", "bbb", "k", etag=etag, writer="rep-bbb")
    v2 = zones.put("aaa", "k", b"v2, A's user, the second the replica arrived")
    deleted_mtime = zones.s3.head_object(Bucket="bbb", Key="k")["LastModified"]
    zones.s3.delete_object(Bucket="bbb", Key="k")
    delete = dataclasses.replace(
        rec("delete", "bbb", "k"), metadata={"deleted_mtime": deleted_mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    )
    assert zones.replicate(echo).status == "skipped"
    out = zones.replicate(delete)
    assert out.status == "skipped" and out.reason and out.reason.startswith("last writer wins"), out
    assert zones.replicate(v2).status == "completed"
    assert zones.state("aaa") == zones.state("bbb") == {"k": b"v2, A's user, the second the replica arrived"}


def test_a_tag_change_of_a_zones_own_object_reaches_the_peer_once(zones: Zones) -> None:
    """PutObjectTagging logs a write of the same object (same ETag): its replica is already at
    the peer, and only its tags are brought up to date there; the peer's record of that tagging
    names the replica's writer, an echo."""
    first = zones.put("aaa", "k", b"x")
    assert zones.replicate(first).status == "completed"
    zones.s3.put_object_tagging(Bucket="aaa", Key="k", Tagging={"TagSet": [{"Key": "t", "Value": "1"}]})
    out = zones.replicate(rec("write", "aaa", "k", etag=first.etag))
    assert out.status == "skipped" and "tags updated" in (out.reason or ""), out
    assert zones.s3.get_object_tagging(Bucket="bbb", Key="k")["TagSet"] == [{"Key": "t", "Value": "1"}]
    assert zones.state("bbb")["k"] == b"x"
    # Applied again (a replay): nothing to change, nothing written.
    again = zones.replicate(rec("write", "aaa", "k", etag=first.etag))
    assert again.status == "skipped" and "tags updated" not in (again.reason or "")
    echo = zones.replicate(rec("write", "bbb", "k", etag=first.etag, writer="rep-aaa"))
    assert echo.status == "skipped" and (echo.reason or "").startswith(ECHO)
