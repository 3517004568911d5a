"""Review of replication (REP.1 one-way, REP.2 two-way, unversioned buckets) on one lab radosgw,
from an operator's point of view. The site is the same radosgw (another bucket, through
``bucket_map``), so one lab is enough: `rgw-changelog serve` follows the source bucket and
replicates to the site bucket; for two-way, two `serve` processes (zones "a" and "b"), each
following its own bucket and writing into the other's as a user of its own.

* one-way: odd keys (unicode, spaces, ``+``, ``%``, a leading and a trailing ``/``, ``?``/``#``,
  900 bytes), zero-byte objects, sizes around the replicator's part size, content headers,
  user metadata, tags with spaces, CopyObject within and across buckets: each key arrives with
  its bytes, headers, metadata and tags, and its status (``GET /_/crr/status/<bucket>/<key>``)
  reads COMPLETED;
* two-way: a key the peer wrote reads COMPLETED at both zones; bucket-level changes (tagging,
  ACL, versioning-free settings) start no ping-pong; a serve restarted with a changed config
  (no ``replica_writers``) still sends no echo back.

A failure is a bug the review found (the report says which)."""

from __future__ import annotations

import contextlib
import json
import random
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_replication_lab import LOG_PREFIX, Replicating, Site, make_rep, wait_caught_up
from tests.lab import Lab

__all__ = ["make_rep"]  # the fixture, used by the one-way test

# The replication consumer's own behaviour: CI runs it on Pacific only.
pytestmark = [pytest.mark.ceph, pytest.mark.release_neutral]

MIB = 1024 * 1024
PART = 8 * MIB  # the part size Replicating's config sets (part_bytes = "8MiB")

ODD_KEYS = [
    "ünï/ключ ✓.txt",
    "with space/and+plus",
    "100%/%2F%zz",
    "/leading-slash",
    "trailing/",
    "q?a=1&b#frag",
    "x" * 900,
]
TAGS = [("team name", "red one"), ("a+b", "c+d"), ("k=", "v/w=x")]


def tagging(tags: list[tuple[str, str]]) -> str:
    q = urllib.parse.quote
    return "&".join(f"{q(k, safe='')}={q(v, safe='')}" for k, v in tags)


def tag_set(s3: Any, bucket: str, key: str) -> list[tuple[str, str]]:
    return sorted((t["Key"], t["Value"]) for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"])


def status_of(rep: Replicating, bucket: str, key: str) -> dict[str, Any]:
    doc = rep.get(f"/_/crr/status/{bucket}/{urllib.parse.quote(key, safe='')}")
    assert isinstance(doc, dict)
    return doc


def test_odd_objects_arrive_whole_and_read_completed(ceph_lab: Lab, s3_client: Any, make_rep: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    src, dst, other = f"rv2-src-{tag}", f"rv2-dst-{tag}", f"rv2-oth-{tag}"
    for b in (src, dst, other):
        s3_client.create_bucket(Bucket=b)
    rep = make_rep(
        [src, other],
        [Site("self", ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key, "default",
              {src: dst, other: dst})],
    )  # fmt: skip
    expected: dict[str, bytes] = {}
    try:
        rep.start()
        for k in ODD_KEYS:
            s3_client.put_object(Bucket=src, Key=k, Body=k.encode())
            expected[k] = k.encode()
        s3_client.put_object(Bucket=src, Key="empty", Body=b"")
        expected["empty"] = b""
        s3_client.put_object(
            Bucket=src, Key="headers", Body=b"h", ContentType="text/x-review; charset=utf-8",
            CacheControl="max-age=60, private", ContentDisposition='attachment; filename="r v.txt"',
            ContentLanguage="de-CH", ContentEncoding="identity", Metadata={"owner": "ops team", "n": "1"},
            Tagging=tagging(TAGS),
        )  # fmt: skip
        expected["headers"] = b"h"
        for name, size in (("part-1", PART - 1), ("part", PART), ("part+1", PART + 1)):
            data = (name.encode() * (size // len(name) + 1))[:size]
            s3_client.put_object(Bucket=src, Key=name, Body=data)
            expected[name] = data
        # A source multipart object (two 5 MiB parts and a byte).
        up = s3_client.create_multipart_upload(Bucket=src, Key="mp")
        parts, data = [], b""
        for n, chunk in enumerate((b"a" * (5 * MIB), b"b" * (5 * MIB), b"c"), start=1):
            r = s3_client.upload_part(Bucket=src, Key="mp", UploadId=up["UploadId"], PartNumber=n, Body=chunk)
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
            data += chunk
        s3_client.complete_multipart_upload(
            Bucket=src, Key="mp", UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
        )
        expected["mp"] = data
        # CopyObject within the bucket (metadata copied, then replaced) and from another bucket.
        s3_client.copy_object(Bucket=src, Key="copy-same", CopySource={"Bucket": src, "Key": "headers"})
        expected["copy-same"] = b"h"
        s3_client.copy_object(
            Bucket=src, Key="copy-replaced", CopySource={"Bucket": src, "Key": "headers"},
            MetadataDirective="REPLACE", Metadata={"replaced": "yes"}, ContentType="text/plain",
        )  # fmt: skip
        expected["copy-replaced"] = b"h"
        s3_client.put_object(Bucket=other, Key="elsewhere", Body=b"from the other bucket")
        s3_client.copy_object(Bucket=src, Key="copy-cross", CopySource={"Bucket": other, "Key": "elsewhere"})
        expected["copy-cross"] = b"from the other bucket"
        expected["elsewhere"] = b"from the other bucket"
        t0 = time.monotonic()
        wait_caught_up(rep, s3_client, ["self"], time.time(), timeout=240)
        print(f"\nodd objects: caught up {time.monotonic() - t0:.1f}s after the writes")

        problems: list[str] = []
        for k, data in expected.items():
            try:
                got = s3_client.get_object(Bucket=dst, Key=k)["Body"].read()
            except Exception as ex:  # noqa: BLE001 - collected
                problems.append(f"{k!r}: not at the site ({ex})")
                continue
            if got != data:
                problems.append(f"{k!r}: {len(got)} bytes at the site, {len(data)} at the source")
        for k in ("headers", "copy-same", "copy-replaced"):
            a, b = s3_client.head_object(Bucket=src, Key=k), s3_client.head_object(Bucket=dst, Key=k)
            for h in (
                "ContentType",
                "CacheControl",
                "ContentDisposition",
                "ContentLanguage",
                "ContentEncoding",
            ):
                if a.get(h) != b.get(h):
                    problems.append(f"{k!r}: {h} {b.get(h)!r} at the site, {a.get(h)!r} at the source")
            user = {m: v for m, v in b["Metadata"].items() if not m.startswith("rgwcl-")}
            if user != a["Metadata"]:
                problems.append(f"{k!r}: metadata {user} at the site, {a['Metadata']} at the source")
            if tag_set(s3_client, dst, k) != tag_set(s3_client, src, k):
                problems.append(
                    f"{k!r}: tags {tag_set(s3_client, dst, k)} at the site, {tag_set(s3_client, src, k)} at the source"
                )
        for k in expected:
            if k == "elsewhere":
                continue
            doc = status_of(rep, src, k)
            if doc.get("status") != "COMPLETED":
                problems.append(f"{k!r}: status {doc}")
        failed = rep.get("/_/crr/failed?site=self")["Versions"]
        assert not failed, failed
        assert not problems, "\n".join(problems)
    finally:
        rep.kill()


# --------------------------------------------------------------------------- two-way, one lab


def make_user(lab: Lab, uid: str) -> tuple[str, str]:
    doc = json.loads(lab.radosgw_admin("user", "create", f"--uid={uid}", f"--display-name={uid}"))
    return doc["keys"][0]["access_key"], doc["keys"][0]["secret_key"]


def allow(s3: Any, bucket: str, user: str) -> None:
    """The bucket's owner and ``user`` (the peer's replicator) may do everything in it."""
    owner = s3.list_buckets()["Owner"]["ID"]
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam:::user/{user}", f"arn:aws:iam:::user/{owner}"]},
        "Action": ["s3:*"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
    }
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )


@dataclass
class TwoWayServe(Replicating):
    """One zone's `serve` (a ``Replicating`` with a two-way site and ``record_writer``)."""

    zone: str = ""
    peer: str = ""
    peer_bucket: str = ""
    into_keys: tuple[str, str] = ("", "")  # the peer's user this zone's replicator writes as
    replica_writers: list[str] = field(default_factory=list)

    def write_config(self) -> Path:
        lab = self.lab
        keyring = f'keyring = "{lab.keyring}"\n' if lab.keyring else ""
        path = self.tmp / "serve.toml"
        path.write_text(
            f"""
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}pool = "{lab.pool}"
namespace = "{self.ns}"
shards = 8

[source]
endpoint = "{lab.rgw_endpoint}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "default"
buckets = {json.dumps(self.buckets)}
poll_interval = 0.2
record_writer = true

[target]
url = "s3://{self.log_bucket}/{LOG_PREFIX}/"
region = "default"

[collector]
interval = 0.5
settle = 0.5
lease_ttl = 3.0
roll_seconds = 2

[replication]
workers = 4
interval = 0.2
lease_ttl = 3.0
max_attempts = 2
zone = "{self.zone}"

[[replication.sites]]
name = "{self.peer}"
endpoint = "{lab.rgw_endpoint}"
access_key = "{self.into_keys[0]}"
secret_key = "{self.into_keys[1]}"
region = "default"
two_way = true
bucket_map = {{ "{self.buckets[0]}" = "{self.peer_bucket}" }}
replica_writers = {json.dumps(self.replica_writers)}

[api]
listen = "127.0.0.1:{self.port}"

[logging]
level = "INFO"
"""
        )
        return path


@pytest.fixture
def two_zones(ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> Iterator[tuple[TwoWayServe, TwoWayServe]]:
    """Zones "a" and "b" on the one lab: buckets ``tw2-a-*`` and ``tw2-b-*``, users
    ``rep-into-a-*`` / ``rep-into-b-*`` (the replicator writing into that zone's bucket)."""
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:8]
    buckets = {z: f"tw2-{z}-{tag}" for z in ("a", "b")}
    users = {z: f"rep-into-{z}-{tag}" for z in ("a", "b")}
    keys = {z: make_user(ceph_lab, users[z]) for z in ("a", "b")}
    zones: dict[str, TwoWayServe] = {}
    for z, peer in (("a", "b"), ("b", "a")):
        s3_client.create_bucket(Bucket=buckets[z])
        allow(s3_client, buckets[z], users[z])
        log_bucket = f"tw2-logs-{z}-{tag}"
        s3_client.create_bucket(Bucket=log_bucket)
        tmp = tmp_path / z
        tmp.mkdir()
        zones[z] = TwoWayServe(
            ceph_lab, tmp, f"test-rv2-{z}-{tag}", log_bucket, [buckets[z]], [],
            zone=z, peer=peer, peer_bucket=buckets[peer], into_keys=keys[peer], replica_writers=[users[z]],
        )  # fmt: skip
    try:
        yield zones["a"], zones["b"]
    finally:
        for zs in zones.values():
            zs.kill()
            store = RadosStore(
                conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=zs.ns, keyring=ceph_lab.keyring or None
            )
            for oid in store.list_objects():
                store.remove_object(oid)
            store.close()


def both_caught_up(a: TwoWayServe, b: TwoWayServe, s3: Any, timeout: float = 180.0) -> float:
    """Both zones' replicators consumed logs covering now, twice in a row (an echo written by
    one lands in the other's log after the first round)."""
    t0 = time.monotonic()
    for _ in range(2):
        t = time.time()
        wait_caught_up(a, s3, [a.peer], t, timeout=timeout)
        wait_caught_up(b, s3, [b.peer], t, timeout=timeout)
    return time.monotonic() - t0


def live(zs: TwoWayServe) -> dict[str, Any]:
    return dict(zs.get(f"/_/crr/status/{zs.peer}")["live"])


def contents(s3: Any, bucket: str) -> dict[str, bytes]:
    out = {}
    for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        out[o["Key"]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def test_two_way_status_bucket_ops_and_a_changed_config(
    ceph_lab: Lab, s3_client: Any, two_zones: tuple[TwoWayServe, TwoWayServe]
) -> None:
    a, b = two_zones
    ba, bb = a.buckets[0], b.buckets[0]
    a.start()
    b.start()
    problems: list[str] = []
    try:
        s3_client.put_object(Bucket=ba, Key="from-a", Body=b"written at a")
        s3_client.put_object(Bucket=bb, Key="from-b", Body=b"written at b")
        s3_client.put_object(Bucket=ba, Key="tagged", Body=b"t", Tagging=tagging(TAGS))
        waited = both_caught_up(a, b, s3_client)
        print(f"\ntwo-way: converged {waited:.1f}s after the first writes")
        assert contents(s3_client, ba) == contents(s3_client, bb)
        if tag_set(s3_client, bb, "tagged") != sorted(TAGS):
            problems.append(f"tags at b: {tag_set(s3_client, bb, 'tagged')}, written at a: {sorted(TAGS)}")

        # Status, at each zone, of each key: both zones hold the same write.
        for zs, bucket in ((a, ba), (b, bb)):
            for key in ("from-a", "from-b"):
                doc = status_of(zs, bucket, key)
                if doc.get("status") != "COMPLETED":
                    problems.append(f"zone {zs.zone}: status of {key}: {doc}")

        # Bucket-level changes at both zones: nothing to replicate, no ping-pong.
        before = {z.zone: live(z) for z in (a, b)}
        for bucket in (ba, bb):
            s3_client.put_bucket_tagging(
                Bucket=bucket, Tagging={"TagSet": [{"Key": "env", "Value": "review two"}]}
            )
            s3_client.put_bucket_acl(Bucket=bucket, ACL="public-read")
            s3_client.put_bucket_acl(Bucket=bucket, ACL="private")
            s3_client.delete_bucket_tagging(Bucket=bucket)
        # Object ACL changes: on a zone's own object and on a replica.
        s3_client.put_object_acl(Bucket=ba, Key="from-a", ACL="public-read")
        s3_client.put_object_acl(Bucket=ba, Key="from-b", ACL="public-read")
        both_caught_up(a, b, s3_client)
        time.sleep(3)
        both_caught_up(a, b, s3_client)
        after = {z.zone: live(z) for z in (a, b)}
        for z in ("a", "b"):
            grew = after[z]["completed"] - before[z]["completed"]
            print(f"zone {z}: {grew} completions after the bucket and ACL changes; live {after[z]}")
            # At most the two object ACL changes at a (a re-copy each); nothing at b.
            if grew > (2 if z == "a" else 0):
                problems.append(f"zone {z}: {grew} completions after bucket/ACL changes (ping-pong?)")
        assert contents(s3_client, ba) == contents(s3_client, bb)

        # Zone a restarted with a changed config: no replica_writers (echoes then known only by
        # the replica metadata). Writes at b reach a once, and are not sent back.
        a.kill()
        a.replica_writers = []
        a.start()
        both_caught_up(a, b, s3_client)
        before = {z.zone: live(z) for z in (a, b)}
        for i in range(5):
            s3_client.put_object(Bucket=bb, Key=f"b-after-restart-{i}", Body=f"b{i}".encode())
        both_caught_up(a, b, s3_client)
        time.sleep(3)
        both_caught_up(a, b, s3_client)
        after = {z.zone: live(z) for z in (a, b)}
        sent_back = after["a"]["completed"] - before["a"]["completed"]
        print(f"after the restart: a completed {sent_back}, b completed "
              f"{after['b']['completed'] - before['b']['completed']}; a echoes {after['a']['echoes']}")  # fmt: skip
        if sent_back:
            problems.append(
                f"zone a sent {sent_back} of b's writes back after a restart without replica_writers"
            )
        assert contents(s3_client, ba) == contents(s3_client, bb)
        for zs in (a, b):
            failed = zs.get(f"/_/crr/failed?site={zs.peer}")["Versions"]
            if failed:
                problems.append(f"zone {zs.zone}: failed entries {failed}")
        assert not problems, "\n".join(problems)
    finally:
        for zs in (a, b):
            with contextlib.suppress(Exception):
                zs.kill()


def test_two_way_keys_written_again_and_again_on_both_sides(
    ceph_lab: Lab, s3_client: Any, two_zones: tuple[TwoWayServe, TwoWayServe]
) -> None:
    """Keys written over and over at both zones (each write a few hundred ms after the other
    zone's, so replicas and user writes cross), then: one last write at either zone, clearly
    after everything else (that write is on both sides); and a delete at one zone crossing a
    write at the other (README: "a write and a delete that cross leave the write")."""
    a, b = two_zones
    bucket = {"a": a.buckets[0], "b": b.buckets[0]}
    a.start()
    b.start()
    rnd = random.Random(11)
    keys = [f"again/{i}" for i in range(6)]
    crossing = [f"cross/{i}" for i in range(6)]
    try:
        for k in crossing:
            s3_client.put_object(Bucket=bucket["a"], Key=k, Body=b"first, at a")
        for n in range(12):
            for k in keys:
                z = "a" if (n + keys.index(k)) % 2 == 0 else "b"
                s3_client.put_object(Bucket=bucket[z], Key=k, Body=f"{k} round {n} at {z}".encode())
            time.sleep(rnd.uniform(0.2, 0.6))
        both_caught_up(a, b, s3_client)
        # The crossing: b's user deletes the replica of a's write while a's user writes again.
        for k in crossing:
            s3_client.delete_object(Bucket=bucket["b"], Key=k)
            s3_client.put_object(Bucket=bucket["a"], Key=k, Body=b"second, at a")
        time.sleep(3.5)
        last: dict[str, bytes] = {}
        for k in keys:
            z = rnd.choice("ab")
            last[k] = f"{k} last at {z}".encode()
            s3_client.put_object(Bucket=bucket[z], Key=k, Body=last[k])
        waited = both_caught_up(a, b, s3_client)
        print(f"\nagain and again: converged {waited:.1f}s after the last writes; "
              f"a {live(a)['completed']} completed / {live(a)['echoes']} echoes, "
              f"b {live(b)['completed']} completed / {live(b)['echoes']} echoes")  # fmt: skip
        ca, cb = contents(s3_client, bucket["a"]), contents(s3_client, bucket["b"])
        problems = [
            f"{k}: a {ca.get(k)!r}, b {cb.get(k)!r}"
            for k in sorted(set(ca) | set(cb))
            if ca.get(k) != cb.get(k)
        ]
        problems += [f"{k}: {ca.get(k)!r}, last written {v!r}" for k, v in last.items() if ca.get(k) != v]
        problems += [
            f"{k}: {ca.get(k)!r} after the crossing" for k in crossing if ca.get(k) != b"second, at a"
        ]
        for zs in (a, b):
            failed = zs.get(f"/_/crr/failed?site={zs.peer}")["Versions"]
            problems += [f"zone {zs.zone}: failed {f}" for f in failed]
        assert not problems, "\n".join(problems)
    finally:
        for zs in (a, b):
            with contextlib.suppress(Exception):
                zs.kill()


def test_two_way_a_copy_of_a_replica_reaches_the_peer(
    ceph_lab: Lab, s3_client: Any, two_zones: tuple[TwoWayServe, TwoWayServe]
) -> None:
    """Zone b's user writes ``orig``; its replica reaches zone a. Zone a's user copies it
    (CopyObject, metadata copied as S3 does by default) to a new key, and over another key of
    its own: both are zone a's users' writes and must reach zone b."""
    a, b = two_zones
    ba, bb = a.buckets[0], b.buckets[0]
    a.start()
    b.start()
    try:
        s3_client.put_object(Bucket=bb, Key="orig", Body=b"written at b")
        s3_client.put_object(Bucket=ba, Key="mine", Body=b"written at a")
        both_caught_up(a, b, s3_client)
        assert s3_client.get_object(Bucket=ba, Key="orig")["Body"].read() == b"written at b"
        time.sleep(1.5)  # the copy over "mine" is clearly the key's last write
        s3_client.copy_object(Bucket=ba, Key="copy", CopySource={"Bucket": ba, "Key": "orig"})
        s3_client.copy_object(Bucket=ba, Key="mine", CopySource={"Bucket": ba, "Key": "orig"})
        both_caught_up(a, b, s3_client)
        ca, cb = contents(s3_client, ba), contents(s3_client, bb)
        print(f"\nzone a: {ca}\nzone b: {cb}\na live {live(a)}")
        assert cb.get("copy") == b"written at b", "zone a's copy of a replica never reached zone b"
        assert cb.get("mine") == b"written at b", "zone a's copy over its own key never reached zone b"
        assert ca == cb
    finally:
        for zs in (a, b):
            with contextlib.suppress(Exception):
                zs.kill()
