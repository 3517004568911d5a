"""Two-way replication of versioned buckets (REP.2): the follower's OLH epoch in the records, the
``rgwx`` parameters on the requests that place a version, and what the replicator refuses or skips
without writing. The placement itself needs radosgw (a system user's ``rgwx-version-id``):
``tests/integration/test_two_way_versioned_lab.py``; moto ignores the parameters, which shows the
refusal of a site that does too."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from changelog.consumers.replication import rgwx
from changelog.consumers.replication.apply import (
    ECHO,
    OLH_EPOCH,
    REPLICA_META,
    REPLICA_VALUE,
    SRC_BUCKET,
    SRC_KEY,
    SRC_ZONE,
    WRITER,
    Destination,
    apply_record,
)
from changelog.pipeline.logformat import LogRecord
from rgw_module import mapping
from rgw_module.mapping import BilogEntry, BucketShard, ShardMapper
from tests.moto_env import two_versioned_zones

_ids = itertools.count(1)


class NoVersions:
    def get(self, key: str, src_version: str) -> str | None:
        return None


def rec(op: str, bucket: str, key: str, version: str | None, *, epoch: int | None = 7, writer: str | None = None,
        baseline: bool = False) -> LogRecord:
    n = next(_ids)
    t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    meta = {}
    if epoch is not None:
        meta[OLH_EPOCH] = str(epoch)
    if writer:
        meta[WRITER] = writer
    return LogRecord(id=f"v{n}", time=t, bucket=bucket, key=key, version_id=version, op=op, size=None, etag=None,
                     seq=f"{n:020d}", baseline=baseline, recorded=t, metadata=meta)


class Calls:
    """Every request the client sends: (method, URL)."""

    def __init__(self, client: Any) -> None:
        self.sent: list[tuple[str, str]] = []
        client.meta.events.register("before-send.s3", self._keep)

    def _keep(self, request: Any, **_: object) -> None:
        self.sent.append((request.method, request.url))

    def writes(self) -> list[tuple[str, str]]:
        return [(m, u) for m, u in self.sent if m in ("PUT", "POST", "DELETE")]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with two_versioned_zones(monkeypatch) as client:
        yield client


def dest(s3: Any) -> Destination:
    """Zone aaa's replicator, writing into zone bbb."""
    return Destination(s3, "bbb", True, zone="zone-aaa", two_way=True, peer_zone="zone-bbb",
                       replica_writers=frozenset({"rep-aaa"}))


def stack(s3: Any, bucket: str, key: str) -> list[str]:
    resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [str(o["VersionId"]) for o in resp.get("Versions", []) + resp.get("DeleteMarkers", [])]


# -- the follower


def test_versioned_writes_and_markers_carry_their_olh_epoch_with_the_writer() -> None:
    bs = BucketShard("aaa", "id", -1)
    link: BilogEntry = {"op_id": "1#00000000002.3.4", "op": "link_olh", "object": "k", "instance": "V1",
                        "state": "complete", "timestamp": "2026-12-06T10:00:00.000000000Z", "versioned": True,
                        "ver": {"pool": -1, "epoch": 12}}
    marker: BilogEntry = {**link, "op": "link_olh_del", "instance": "M1", "owner": "rep-aaa",
                          "ver": {"pool": -1, "epoch": 13}}
    plain: BilogEntry = {**link, "op": "write", "instance": "", "versioned": False, "ver": {"pool": 6, "epoch": 1}}
    on, off = ShardMapper(bs, 0, writer=True), ShardMapper(bs, 0)
    w = on.map(link, observed_ns=1)
    assert w is not None and w.metadata == {mapping.OLH_EPOCH: "12"}
    m = on.map(marker, observed_ns=1)
    assert m is not None and m.metadata == {WRITER: "rep-aaa", mapping.OLH_EPOCH: "13"}
    # A plain write's ``ver`` is the head object's RADOS version, not an OLH epoch.
    p = on.map(plain, observed_ns=1)
    assert p is not None and mapping.OLH_EPOCH not in p.metadata
    # Without ``record_writer`` records carry no metadata at all.
    w_off = off.map(link, observed_ns=1)
    assert w_off is not None and w_off.metadata == {}
    assert OLH_EPOCH == mapping.OLH_EPOCH


# -- the rgwx parameters


def test_rgwx_parameters_reach_only_the_calls_inside_the_block(s3: Any) -> None:
    rgwx.enable(s3)
    rgwx.enable(s3)  # idempotent: one handler
    calls = Calls(s3)
    with rgwx.params(rgwx.version("V-chosen", 2**40)):
        s3.put_object(Bucket="aaa", Key="k", Body=b"x")
    s3.put_object(Bucket="aaa", Key="k", Body=b"y")
    (first, url1), (_, url2) = calls.writes()
    assert first == "PUT" and url1.count("rgwx-version-id=V-chosen") == 1
    # Epochs are 32-bit signed in radosgw: clamped to 1 .. 2^31-1.
    assert f"rgwx-versioned-epoch={2**31 - 1}" in url1 and "rgwx" not in url2
    assert rgwx.clamp_epoch(-5) == 1 and rgwx.clamp_epoch(0) == 1


# -- the replicator


def test_a_site_that_ignores_rgwx_gets_no_stray_version_and_a_one_line_error(s3: Any) -> None:
    """moto, like a radosgw user without ``--system``, makes a version of its own id: it is
    removed again and the record fails in one line naming the fix."""
    v = s3.put_object(Bucket="aaa", Key="k", Body=b"a1")["VersionId"]
    out = apply_record(rec("write", "aaa", "k", v), s3, dest(s3), NoVersions())
    assert out.status == "failed" and out.reason is not None and "\n" not in out.reason
    assert "system user" in out.reason
    assert stack(s3, "bbb", "k") == []


@pytest.mark.parametrize("op", ["write", "delete", "delete_marker"])
def test_the_null_version_is_refused_in_one_line(s3: Any, op: str) -> None:
    s3.put_object(Bucket="aaa", Key="k", Body=b"a1")
    calls = Calls(s3)
    out = apply_record(rec(op, "aaa", "k", None), s3, dest(s3), NoVersions())
    assert out.status == "failed" and out.reason and "null version" in out.reason and "\n" not in out.reason
    assert calls.sent == []


def test_a_record_without_an_epoch_is_refused_before_any_write(s3: Any) -> None:
    v = s3.put_object(Bucket="aaa", Key="k", Body=b"a1")["VersionId"]
    calls = Calls(s3)
    out = apply_record(rec("write", "aaa", "k", v, epoch=None, baseline=True), s3, dest(s3), NoVersions())
    assert out.status == "failed" and out.reason and OLH_EPOCH in out.reason
    assert calls.writes() == [] and stack(s3, "bbb", "k") == []


def test_an_echo_is_dropped_by_its_writer_with_no_request(s3: Any) -> None:
    calls = Calls(s3)
    out = apply_record(rec("write", "aaa", "k", "V1", writer="rep-aaa"), s3, dest(s3), NoVersions())
    assert out.status == "skipped" and (out.reason or "").startswith(ECHO) and calls.sent == []


def test_a_peer_version_deleted_there_is_not_sent_back(s3: Any) -> None:
    """Zone aaa holds a replica of bbb's version, which bbb's user has deleted since; aaa's
    record of the replica lost its writer: the replica's metadata stops it (no resurrection)."""
    meta = {REPLICA_META: REPLICA_VALUE, SRC_ZONE: "zone-bbb", SRC_KEY: "k", SRC_BUCKET: "bbb"}
    v = s3.put_object(Bucket="aaa", Key="k", Body=b"from b", Metadata=meta)["VersionId"]
    calls = Calls(s3)
    out = apply_record(rec("write", "aaa", "k", v), s3, dest(s3), NoVersions())
    assert out.status == "skipped" and (out.reason or "").startswith(ECHO), out
    assert calls.writes() == [] and stack(s3, "bbb", "k") == []


def test_deleting_a_version_the_peer_does_not_hold_writes_nothing(s3: Any) -> None:
    """The peer's own version delete, echoed back, ends here: radosgw logs no entry for a
    DELETE ?versionId of nothing, but the replicator does not send one either."""
    s3.put_object(Bucket="bbb", Key="k", Body=b"b1")
    calls = Calls(s3)
    out = apply_record(rec("delete", "aaa", "k", "not-there"), s3, dest(s3), NoVersions())
    assert out.status == "completed" and "nothing to delete" in (out.reason or "")
    assert calls.writes() == [] and len(stack(s3, "bbb", "k")) == 1


def test_deleting_a_version_or_marker_the_peer_holds_removes_it(s3: Any) -> None:
    keep = s3.put_object(Bucket="bbb", Key="k", Body=b"b1")["VersionId"]
    gone = s3.put_object(Bucket="bbb", Key="k", Body=b"b2")["VersionId"]
    marker = s3.delete_object(Bucket="bbb", Key="k")["VersionId"]
    for vid in (gone, marker):
        out = apply_record(rec("delete", "aaa", "k", vid), s3, dest(s3), NoVersions())
        assert out.status == "completed" and out.reason is None, out
    assert stack(s3, "bbb", "k") == [keep]


def test_a_marker_already_at_the_peer_is_not_placed_again_on_a_replay(s3: Any) -> None:
    s3.put_object(Bucket="bbb", Key="k", Body=b"b1")
    marker = s3.delete_object(Bucket="bbb", Key="k")["VersionId"]
    s3.put_object(Bucket="aaa", Key="k", Body=b"a1")
    calls = Calls(s3)
    out = apply_record(rec("delete_marker", "aaa", "k", marker), s3, dest(s3), NoVersions(), careful=True)
    assert out.status == "completed" and "already" in (out.reason or "")
    # Only the fixed placeholder id of a half-done placement is deleted (nothing there).
    assert [m for m, _ in calls.writes()] == ["DELETE"] and "rgwcl-placeholder" in calls.writes()[0][1]
    assert len(stack(s3, "bbb", "k")) == 2


def test_a_marker_deep_in_a_long_stack_is_found_past_the_first_listing_page(s3: Any) -> None:
    """A HEAD by id cannot tell a marker from nothing: the key's listing is read to its end."""
    s3.put_object(Bucket="bbb", Key="k", Body=b"b0")
    marker = s3.delete_object(Bucket="bbb", Key="k")["VersionId"]
    for i in range(1001):
        s3.put_object(Bucket="bbb", Key="k", Body=b"%d" % i)
    s3.put_object(Bucket="bbb", Key="k0", Body=b"a longer key, listed after k's entries")
    out = apply_record(rec("delete", "aaa", "k", marker), s3, dest(s3), NoVersions())
    assert out.status == "completed" and out.reason is None, out
    resp = s3.list_object_versions(Bucket="bbb", Prefix="k", MaxKeys=2000)
    assert marker not in [m["VersionId"] for m in resp.get("DeleteMarkers", [])]
