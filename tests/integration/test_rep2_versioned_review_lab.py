"""Review of two-way replication of versioned buckets (REP.2): scenarios where the two zones'
stacks of a key end different, or garbage stays, shown on one lab radosgw with two buckets standing
for the two zones (``a`` and ``b``) and the replicator's ``apply_record`` called directly, as the
consumer would, with records whose ``olh_epoch`` is read from the source bucket's own bilog.

Each zone's replicator writes as a system user (``--system``: ``rgwx-version-id`` and
``rgwx-versioned-epoch`` are honoured), like ``test_two_way_versioned_lab.py``. A crash between two
requests of an apply is a ``BaseException`` raised from botocore's ``before-send`` (nothing after
it is sent, like a SIGKILL); the replay is ``careful=True``, as the consumer's.

Run: ``RGW_CHANGELOG_REQUIRE_CEPH=1 CEPH_RELEASE=pacific tools/test
tests/integration/test_rep2_versioned_review_lab.py`` (or with a lab's env lines exported).
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
import uuid
import xml.etree.ElementTree as ET  # noqa: S405 - radosgw's own listing
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from changelog.consumers.replication import apply
from changelog.consumers.replication.apply import OLH_EPOCH, Applied, Destination, apply_record
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.s3client import make_s3_client
from tests.lab import Lab
from tests.lab import s3_client as lab_client

_ids = itertools.count(1)


class NoVersions:
    """The two-way versioned path keeps no version map."""

    def get(self, key: str, src_version: str) -> str | None:
        return None


class Placed:
    """The replicator's ledger of placements in one site bucket (``apply.Ledger``): what the
    consumer saves with each record's outcome, before its checkpoint, and reads again when it
    takes the object up after a crash."""

    def __init__(self, placed: set[tuple[str, str, str]], bucket: str) -> None:
        self._placed = placed
        self._bucket = bucket

    def placed(self, key: str, version: str) -> bool:
        return (self._bucket, key, version) in self._placed


class Killed(BaseException):
    """A SIGKILL between two requests of an apply (not an ``Exception``: nothing catches it)."""


def client_as(lab: Lab, access: str, secret: str) -> Any:
    return make_s3_client(
        lab.rgw_endpoint, access_key=access, secret_key=secret, region="default",
        max_attempts=3, connect_timeout=30, read_timeout=60,
    )  # fmt: skip


@dataclass
class Zones:
    """Two versioned buckets of one lab standing for zones a and b, the users' client, and a
    system user's client for each replicator."""

    lab: Lab
    user: Any
    sys: Any
    plain: Any  # a user that is NOT a system user (an operator's mistake)
    a: str
    b: str
    # (site bucket, key, version id) each replicator placed: its ledger, kept across a kill
    # after a record's outcome was saved (before the checkpoint).
    placed: set[tuple[str, str, str]] = field(default_factory=set)

    def dest(self, into: str, *, client: Any = None) -> Destination:
        """The replicator writing into bucket ``into`` (from the other bucket)."""
        src, dst = ("b", "a") if into == self.a else ("a", "b")
        return Destination(
            client or self.sys, into, True, zone=f"zone-{src}", two_way=True, peer_zone=f"zone-{dst}",
            replica_writers=frozenset({"rep-into-" + src}),
        )  # fmt: skip

    def other(self, bucket: str) -> str:
        return self.b if bucket == self.a else self.a

    def epoch(self, bucket: str, vid: str) -> int:
        """The OLH epoch the follower would put in the record of ``vid``: its ``link_olh`` or
        ``link_olh_del`` entry's ``ver.epoch``."""
        out = json.loads(
            self.lab.radosgw_admin("bilog", "list", f"--bucket={bucket}", "--max-entries=100000")
        )
        found = [
            int(e["ver"]["epoch"])
            for e in out
            if e.get("op") in ("link_olh", "link_olh_del") and e.get("instance") == vid
        ]
        assert found, f"no link_olh entry for {vid} in {bucket}'s bilog"
        return found[-1]

    def rec(self, op: str, bucket: str, key: str, vid: str, *, epoch: bool = True) -> LogRecord:
        n = next(_ids)
        t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta = {OLH_EPOCH: str(self.epoch(bucket, vid))} if epoch else {}
        return LogRecord(
            id=f"r{n}", time=t, bucket=bucket, key=key, version_id=vid, op=op, size=None, etag=None,
            seq=f"{n:020d}", baseline=False, recorded=t, metadata=meta,
        )  # fmt: skip

    def apply(self, op: str, src: str, key: str, vid: str, **kw: Any) -> Applied:
        """Apply a record of ``src`` (with its bilog epoch unless a plain version delete) to
        the other bucket."""
        rec = self.rec(op, src, key, vid, epoch=op != "delete")
        dest = kw.pop("dest", None) or self.dest(self.other(src))
        # ``saved=False``: killed after the apply's last request, before its outcome (and what it
        # placed) was saved.
        saved = kw.pop("saved", True)
        out = apply_record(rec, self.user, dest, NoVersions(), ledger=Placed(self.placed, dest.bucket), **kw)
        if saved:
            self.placed.update((dest.bucket, key, v) for v in out.placed)
        print(f"apply {op} {vid} {src}->{self.other(src)}: {out.status} {out.reason}")
        return out

    def stack(self, bucket: str, key: str) -> list[tuple[str, bool]]:
        """(version id, is a delete marker) of ``key``, newest first, as radosgw lists them (from
        the XML: versions and markers interleave in stack order)."""
        raw: list[bytes] = []

        def keep(http_response: Any, **_: object) -> None:
            raw.append(http_response.content)

        s3 = lab_client(self.lab)
        s3.meta.events.register("after-call.s3.ListObjectVersions", keep)
        for _ in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
            pass
        out = []
        for body in raw:
            for el in ET.fromstring(body):  # noqa: S314 - the lab's own answer
                kind = el.tag.rsplit("}", 1)[-1]
                if kind not in ("Version", "DeleteMarker"):
                    continue
                f = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in el}
                if urllib.parse.unquote(f["Key"]) == key:
                    out.append((f["VersionId"], kind == "DeleteMarker"))
        return out

    def current(self, bucket: str, key: str) -> str | None:
        """The version id of ``key``'s current entry (a delete marker's too), by HEAD."""
        try:
            return str(self.user.head_object(Bucket=bucket, Key=key).get("VersionId"))
        except Exception as ex:  # noqa: BLE001 - a 404 with the marker's id, or nothing
            headers = getattr(ex, "response", {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return headers.get("x-amz-version-id")

    def put(self, bucket: str, key: str, body: bytes) -> str:
        return str(self.user.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"])

    def marker(self, bucket: str, key: str) -> str:
        resp = self.user.delete_object(Bucket=bucket, Key=key)
        assert resp.get("DeleteMarker"), resp
        return str(resp["VersionId"])


@pytest.fixture(scope="module")
def zones(ceph_lab: Lab) -> Iterator[Zones]:
    tag = uuid.uuid4().hex[:8]
    keys = {}
    for uid, extra in ((f"h4-sys-{tag}", ["--system"]), (f"h4-plain-{tag}", [])):
        doc = json.loads(
            ceph_lab.radosgw_admin("user", "create", f"--uid={uid}", f"--display-name={uid}", *extra)
        )
        keys[uid] = (doc["keys"][0]["access_key"], doc["keys"][0]["secret_key"])
    user = lab_client(ceph_lab)
    z = Zones(
        ceph_lab, user, client_as(ceph_lab, *keys[f"h4-sys-{tag}"]), client_as(ceph_lab, *keys[f"h4-plain-{tag}"]),
        f"h4a-{tag}", f"h4b-{tag}",
    )  # fmt: skip
    for b in (z.a, z.b):
        user.create_bucket(Bucket=b)
        user.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        statement = {
            "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam:::user/h4-plain-{tag}"]},
            "Action": ["s3:*"],
            "Resource": [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"],
        }
        user.put_bucket_policy(
            Bucket=b, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        )
    yield z


def key_of(name: str) -> str:
    return f"{name}/{uuid.uuid4().hex[:6]}"


def test_a_placeholder_dance_on_one_side_only_sinks_the_peers_next_write(zones: Zones) -> None:
    """Zone b's user deletes the key and writes it again (marker mB, then V2) while zone a's
    user deletes it (marker mA). At b, mA lands below V2 directly; at a, mB meets a's marker mA
    on top and is placed with the placeholder dance, whose PUT and DELETE raise a's OLH epoch by
    two. b's V2 then arrives at a at its own epoch, below a's OLH epoch: stored below the top,
    not current. b shows V2, a shows the key deleted, for good (nothing else is logged)."""
    z, k = zones, key_of("dance")
    v1 = z.put(z.a, k, b"v1")
    assert z.apply("write", z.a, k, v1).status == "completed"
    m_b = z.marker(z.b, k)
    v2 = z.put(z.b, k, b"v2 from b, after its delete")
    m_a = z.marker(z.a, k)
    # Each zone's records reach the other in their order.
    assert z.apply("delete_marker", z.a, k, m_a).status == "completed"
    assert z.apply("delete_marker", z.b, k, m_b).status == "completed"
    assert z.apply("write", z.b, k, v2).status == "completed"
    sa, sb = z.stack(z.a, k), z.stack(z.b, k)
    print(f"a {sa}\nb {sb}")
    assert sorted(sa) == sorted(sb)
    assert z.current(z.b, k) == v2
    assert z.current(z.a, k) == z.current(z.b, k), "the zones disagree on the key's current entry"
    assert sa == sb


@pytest.mark.xfail(
    strict=True,
    reason="known limit (README, design §15): a version delete raises the key's OLH epoch in its own zone only; the peer's marker of the same key, made before, lands below the top there (no placeholder stays: fixed)",
)
def test_a_crash_after_the_placeholder_then_the_marker_undeleted_leaves_the_placeholder(zones: Zones) -> None:
    """The placement of a's marker mA at b (b's current entry is b's own marker: the dance) is
    killed right after the placeholder PUT. Before the replay, a's user removes mA (DELETE
    ?versionId: the usual undelete). The careful replay finds mA gone at the source and skips;
    a's delete of mA finds nothing at b. The empty placeholder stays b's current version: b's
    users read an empty object that no one wrote, a never has it."""
    z, k = zones, key_of("crash")
    # 20.2 places a marker on a marker: no placeholder, nothing to kill; the rest of the
    # scenario (the undelete, then b's marker reaching a) runs on every release.
    dance = z.lab.release in ("pacific", "reef")
    v1 = z.put(z.a, k, b"v1")
    assert z.apply("write", z.a, k, v1).status == "completed"
    m_b = z.marker(z.b, k)
    m_a = z.marker(z.a, k)
    sent: list[str] = []

    def kill_after_placeholder(request: Any, **_: object) -> None:
        # The marker's placement once a placeholder is at the site (a HEAD of the key may
        # come between them).
        placeholder_put = any(x.startswith("PUT") and "rgwcl-placeholder" in x for x in sent)
        if placeholder_put and request.method == "DELETE" and "rgwcl-placeholder" not in request.url:
            raise Killed(request.url)
        sent.append(f"{request.method} {request.url}")

    z.sys.meta.events.register("before-send.s3", kill_after_placeholder, unique_id="h4-kill")
    try:
        if dance:
            with pytest.raises(Killed):
                z.apply("delete_marker", z.a, k, m_a)
        else:
            assert z.apply("delete_marker", z.a, k, m_a).status == "completed"
            assert not [x for x in sent if "rgwcl-placeholder" in x], sent
    finally:
        z.sys.meta.events.unregister("before-send.s3", unique_id="h4-kill")
    print("\n".join(sent))
    z.user.delete_object(Bucket=z.a, Key=k, VersionId=m_a)  # a's user undeletes
    z.apply("delete_marker", z.a, k, m_a, careful=True)  # the consumer's replay
    z.apply("delete", z.a, k, m_a)  # a's record of the undelete
    assert z.apply("delete_marker", z.b, k, m_b).status == "completed"  # b's marker reaches a
    sa, sb = z.stack(z.a, k), z.stack(z.b, k)
    print(f"a {sa}\nb {sb}")
    assert not [v for v, _ in sb if "placeholder" in v], f"a placeholder stayed at b: {sb}"
    assert sorted(sa) == sorted(sb)
    assert z.current(z.a, k) == z.current(z.b, k)


def test_deleting_a_marker_below_the_first_listing_page_deletes_it(zones: Zones) -> None:
    """A key with more than 1,000 entries: the marker that a's user removes (DELETE ?versionId)
    is old, so at b it is below the first page of ListObjectVersions. On 16.2 a HEAD ?versionId
    of a marker is a bare 404; ``site_stack_ids`` reads only the first page: b keeps the marker
    (a deleted entry stays at b)."""
    z, k = zones, key_of("deep")
    v0 = z.put(z.a, k, b"v0")
    assert z.apply("write", z.a, k, v0).status == "completed"
    m = z.marker(z.a, k)
    assert z.apply("delete_marker", z.a, k, m).status == "completed"
    # 1,000 versions on top at b (b's users' own: where a's record is applied).
    for n in range(1000):
        z.put(z.b, k, b"%d" % n)
    z.user.delete_object(Bucket=z.a, Key=k, VersionId=m)
    out = z.apply("delete", z.a, k, m)
    assert out.status == "completed"
    assert m not in [v for v, _ in z.stack(z.b, k)], f"marker {m} stayed at b ({out.reason})"


def test_a_marker_replayed_below_the_first_listing_page_is_found(zones: Zones) -> None:
    """The careful replay of a marker already at b, under 1,000 newer entries: ``site_stack_ids``
    (first page only) misses it, and the replay places it again, with the placeholder dance, and
    ends in a TransientError it will meet on every retry."""
    z, k = zones, key_of("deepreplay")
    v0 = z.put(z.a, k, b"v0")
    assert z.apply("write", z.a, k, v0).status == "completed"
    m = z.marker(z.a, k)
    assert z.apply("delete_marker", z.a, k, m).status == "completed"
    for n in range(1000):
        z.put(z.b, k, b"%d" % n)
    before = z.stack(z.b, k)
    out = z.apply("delete_marker", z.a, k, m, careful=True)
    assert out.status == "completed" and "already" in (out.reason or ""), out
    assert z.stack(z.b, k) == before


def test_a_site_user_without_system_fails_a_marker_in_one_line_and_leaves_nothing(zones: Zones) -> None:
    """The replicator's user at b is not a system user (the operator forgot ``--system``): a
    write fails in one line naming the fix (README). A delete marker must too: not a marker of
    b's own id, an empty placeholder of its own id left current, and a TransientError that the
    consumer retries for ever (each retry adding another marker and empty version)."""
    z, k = zones, key_of("plain")
    v1 = z.put(z.a, k, b"v1")
    assert z.apply("write", z.a, k, v1).status == "completed"
    m = z.marker(z.a, k)
    before = z.stack(z.b, k)
    out = None
    error = None
    try:
        out = z.apply("delete_marker", z.a, k, m, dest=z.dest(z.b, client=z.plain))
    except Exception as ex:  # noqa: BLE001 - what the consumer would get
        error = f"{type(ex).__name__}: {ex}"
    after = z.stack(z.b, k)
    print(f"out {out} error {error}\nbefore {before}\nafter {after}")
    assert error is None, error
    assert out is not None and out.status == "failed" and "system user" in (out.reason or "")
    assert after == before, "entries of the plain user's own ids stayed at b"


def test_a_replayed_write_does_not_bring_back_a_version_the_site_user_deleted(zones: Zones) -> None:
    """a's replicator places a's V at b, then is killed before its checkpoint. b's user deletes V
    by id; b's record of it is still on its way to a (link down) when a's consumer replays the
    write (careful): V is not at b, still at a: placed again. Then b's delete reaches a. b shows
    V, which its user deleted; a does not. (The ledger: V's placement was saved with the record's
    outcome, so the replay skips it.)"""
    z, k = zones, key_of("replay")
    v0 = z.put(z.a, k, b"v0")
    assert z.apply("write", z.a, k, v0).status == "completed"
    v = z.put(z.a, k, b"v, deleted at b")
    assert z.apply("write", z.a, k, v).status == "completed"  # then killed before the checkpoint
    z.user.delete_object(Bucket=z.b, Key=k, VersionId=v)  # b's user
    z.apply("write", z.a, k, v, careful=True)  # the replay
    assert z.apply("delete", z.b, k, v).status == "completed"  # b's delete reaches a
    sa, sb = z.stack(z.a, k), z.stack(z.b, k)
    print(f"a {sa}\nb {sb}")
    assert v not in [x for x, _ in sb], "the version b's user deleted is back at b"
    assert sa == sb


def test_a_replayed_marker_does_not_come_back_after_the_site_user_removed_it(zones: Zones) -> None:
    """The same for a delete marker: placed at b, b's user removes it (undelete), a's replay
    places it again before b's removal reaches a."""
    z, k = zones, key_of("replaym")
    v0 = z.put(z.a, k, b"v0")
    assert z.apply("write", z.a, k, v0).status == "completed"
    m = z.marker(z.a, k)
    assert z.apply("delete_marker", z.a, k, m).status == "completed"  # then killed before the checkpoint
    z.user.delete_object(Bucket=z.b, Key=k, VersionId=m)  # b's user undeletes
    z.apply("delete_marker", z.a, k, m, careful=True)  # the replay
    assert z.apply("delete", z.b, k, m).status == "completed"  # b's undelete reaches a
    sa, sb = z.stack(z.a, k), z.stack(z.b, k)
    print(f"a {sa}\nb {sb}")
    assert m not in [x for x, _ in sb], "the marker b's user removed is back at b"
    assert sa == sb


@pytest.mark.xfail(
    strict=True,
    reason="known limit (README, design §15): killed between a placement's answer and the record's saved outcome (one state write), the replay puts back what the site's user deleted meanwhile, until the echo of that delete returns",
)
def test_a_replay_after_a_kill_before_the_outcome_was_saved_does_not_bring_back_a_deleted_version(
    zones: Zones,
) -> None:
    """The window the ledger leaves: a's replicator places V at b and is killed before V's
    placement is saved with the record's outcome. b's user deletes V; a's replay finds V at a,
    not at b, and nothing saying it was placed: placed again. (a's record of b's delete, sent
    back to b, deletes it there again: printed.)"""
    z, k = zones, key_of("window")
    v0 = z.put(z.a, k, b"v0")
    assert z.apply("write", z.a, k, v0).status == "completed"
    v = z.put(z.a, k, b"v, deleted at b")
    assert z.apply("write", z.a, k, v, saved=False).status == "completed"  # killed before saving
    z.user.delete_object(Bucket=z.b, Key=k, VersionId=v)  # b's user
    z.apply("write", z.a, k, v, careful=True)  # the replay
    assert z.apply("delete", z.b, k, v).status == "completed"  # b's delete reaches a
    sb = z.stack(z.b, k)
    try:
        assert v not in [x for x, _ in sb], "the version b's user deleted is back at b"
    finally:
        z.apply("delete", z.a, k, v)  # a's record of that delete (no writer: not an echo)
        print(f"after the echo of b's delete: a {z.stack(z.a, k)}\nb {z.stack(z.b, k)}")


def test_careful_replays_of_a_marker_keep_the_peers_next_write_current(zones: Zones) -> None:
    """A marker replayed a few times (``careful``: each deletes the fixed placeholder id, which is
    not there) must not raise b's OLH epoch: a's next write must be current at b as at a."""
    z, k = zones, key_of("replays")
    v0 = z.put(z.a, k, b"v0")
    assert z.apply("write", z.a, k, v0).status == "completed"
    m = z.marker(z.a, k)
    for _ in range(3):
        assert z.apply("delete_marker", z.a, k, m, careful=True).status == "completed"
    v1 = z.put(z.a, k, b"v1")
    assert z.apply("write", z.a, k, v1).status == "completed"
    assert z.current(z.a, k) == v1
    assert z.current(z.b, k) == v1


def learn_the_site(z: Zones) -> Applied:
    """A placement of a's version over b's own current version of the same key: radosgw 16.2
    checks ``If-None-Match: *`` against the version placed (new: no 412), 20.2 against the key's
    current entry (a 412: the replicator then stops sending it to that site, ``KEY_CONDITIONS``).
    In a new pair of buckets (their bilogs, read for the epochs, stay short: the module's
    buckets hold more than ``Zones.epoch`` reads by the end on 20.2)."""
    tag = uuid.uuid4().hex[:4]
    a, b = f"{z.a}-l{tag}", f"{z.b}-l{tag}"
    for bucket in (a, b):
        z.user.create_bucket(Bucket=bucket)
        z.user.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def into(bucket: str, src: str) -> Destination:
        return Destination(
            z.sys, bucket, True, zone=f"zone-{src}", two_way=True, peer_zone=f"zone-{bucket}",
            replica_writers=frozenset({"x"}),
        )  # fmt: skip

    k = key_of("learn")
    vb = z.put(b, k, b"b's own")
    # A new key at a: no 412 on any release.
    assert apply_record(z.rec("write", b, k, vb), z.user, into(a, b), NoVersions()).status == "completed"
    v = z.put(a, k, b"from a, over b's")
    out = apply_record(z.rec("write", a, k, v), z.user, into(b, a), NoVersions())
    print(f"apply write {v} {a}->{b}: {out}")
    assert out.status == "completed", out
    assert z.current(a, k) == z.current(b, k) == v
    return out


def endpoint_learnt(z: Zones) -> bool:
    return str(z.sys.meta.endpoint_url) in apply.KEY_CONDITIONS


def test_the_null_version_guard_costs_no_request_on_16_2_and_one_412_per_site_on_20_2(
    zones: Zones, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's cost. 16.2: the header only (HEAD by id, source GET, PUT: 3 requests), the
    site never learnt. 20.2: the first placement over a key with a current entry is refused (412)
    and costs 4 requests more (the bucket's versioning, HEAD by id, the source GET again, the PUT
    again: the body is sent twice); then 3 again, the guard no longer sent there."""
    monkeypatch.setattr(apply, "KEY_CONDITIONS", set())  # a replicator process just started
    endpoint = str(zones.sys.meta.endpoint_url)
    first = learn_the_site(zones)
    second = learn_the_site(zones)
    print(
        f"{zones.lab.release}: requests {first.requests} then {second.requests}, learnt {apply.KEY_CONDITIONS}"
    )
    per_version, per_key = (3, 3), (7, 3)
    if zones.lab.release == "pacific":
        assert (first.requests, second.requests) == per_version
        assert endpoint not in apply.KEY_CONDITIONS
    elif zones.lab.release == "tentacle":
        assert (first.requests, second.requests) == per_key
        assert endpoint in apply.KEY_CONDITIONS
    else:  # 18.2: not measured here yet; one of the two, and learnt only on a 412
        got = (first.requests, second.requests)
        assert got in (per_version, per_key)
        assert (endpoint in apply.KEY_CONDITIONS) == (got == per_key)


@pytest.mark.parametrize("learnt", [False, True], ids=["first-placement", "after-a-placement-on-a-key"])
def test_a_site_bucket_suspended_since_fails_in_one_line_and_keeps_the_null_version(
    zones: Zones, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, learnt: bool
) -> None:
    """b's operator suspends versioning on b (the replicator learned "Enabled" once). a's next
    version must not replace b's users' null version, and the record fails in one line. (The
    guard, ``If-None-Match: *`` on the placement, is checked against the version placed on 16.2;
    20.2 checks it against the key's current entry, and the replicator stops sending it there at
    the first 412 in a bucket with versioning on: ``learnt``, a placement on a key with a current
    entry at that site first.)"""
    monkeypatch.setattr(apply, "KEY_CONDITIONS", set())  # a replicator process just started
    z, k = zones, key_of("suspended")
    if learnt:
        learn_the_site(z)
        if endpoint_learnt(z):
            request.applymarker(
                pytest.mark.xfail(
                    strict=True,
                    reason="known limit (README, design §15): 20.2 checks If-None-Match against the key's "
                    "current entry; once the replicator stopped sending it to a site, versioning suspended "
                    "there is seen within the replicator's bucket cache time (60 s)",
                )
            )
    bucket = f"{z.b}-s-{uuid.uuid4().hex[:4]}"
    z.user.create_bucket(Bucket=bucket)
    z.user.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    z.user.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    z.user.put_object(Bucket=bucket, Key=k, Body=b"b's null version")
    v = z.put(z.a, k, b"from a")
    rec = z.rec("write", z.a, k, v)
    dest = Destination(
        z.sys, bucket, True, zone="zone-a", two_way=True, peer_zone="zone-b", replica_writers=frozenset({"x"})
    )
    error = None
    out = None
    try:
        out = apply_record(rec, z.user, dest, NoVersions())
    except Exception as ex:  # noqa: BLE001 - what the consumer would get
        error = f"{type(ex).__name__}: {ex}"
    st = z.stack(bucket, k)
    print(f"out {out} error {error} stack {st}")
    null = z.user.get_object(Bucket=bucket, Key=k, VersionId="null")["Body"].read()
    assert null == b"b's null version"
    assert error is None and out is not None and out.status == "failed", (out, error)
    assert "versioning is Suspended" in (out.reason or "") and "\n" not in (out.reason or ""), out
    assert v not in [x for x, _ in st]
