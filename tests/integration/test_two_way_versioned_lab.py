"""Two-way replication of a versioned bucket (REP.2, issue 19) on two lab radosgw zones: both
zones (1,000 user mutations each, at once; 100 keys mutated in both within half a second) end
with one stack of versions per key, the same version ids in the same order, through 3 SIGKILLs of
each serve and the link cut for 60 s; nothing a user wrote is lost, nothing a user deleted comes
back, and no replica is ever sent back (README "Two-way replication", versioned buckets).

Each zone's replicator writes into the other as a system user (``rgwx-version-id`` and
``rgwx-versioned-epoch`` place the peer's version under its own id at its own OLH epoch). The
load, per zone at once: PUTs of own and shared keys, multipart uploads, plain DELETEs (delete
markers), deletes of a version by id, and conflict keys written (or deleted) in both zones
within a second, which on Pacific and Reef also makes delete markers land on delete markers
(placed under a placeholder version).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET  # noqa: S405 - radosgw's own listing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_replication_lab import Proxy
from tests.integration.test_two_way_lab import (
    ACCESS,
    MIB,
    ZONES,
    Zone,
    body_of,
    lab_client_as,
    load_with_faults,
    make_bucket,
    rgw_log,
)
from tests.lab import Lab, second_lab
from tests.lab import s3_client as lab_client

PER_ZONE = 800  # user mutations of each zone's own thread (with the conflicts' 200: 1,000 a zone)
CONFLICTS = 100  # keys mutated in both zones within a second
OWN_KEYS = 80
SHARED_KEYS = 40
LOAD_SECONDS = 100.0
KILLS = 3  # of each zone's serve
OUTAGE = 60.0
CONVERGE_BOUND = 240.0


@pytest.fixture(scope="module")
def peer_lab(ceph_lab: Lab) -> Iterator[Lab]:
    with second_lab(ceph_lab.release, prefix="ceph-lab-zone-b-") as lab:
        yield lab


def system_user(lab: Lab, uid: str) -> tuple[str, str]:
    doc = json.loads(lab.radosgw_admin("user", "create", f"--uid={uid}", f"--display-name={uid}", "--system"))
    return doc["keys"][0]["access_key"], doc["keys"][0]["secret_key"]


@dataclass
class Ledger:
    """What the users did: version ids made (with their content's md5) and deleted, per zone."""

    made: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)  # vid -> (zone, key, md5|None)
    deleted: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    mu: threading.Lock = field(default_factory=threading.Lock)

    def add(self, zone: str, key: str, vid: str | None, md5: str | None) -> None:
        with self.mu:
            self.counts[zone] += 1
            if vid:
                self.made[vid] = (zone, key, md5)

    def delete(self, zone: str, vid: str) -> None:
        with self.mu:
            self.counts[zone] += 1
            self.deleted.add(vid)

    def own(self, zone: str, key: str) -> list[str]:
        with self.mu:
            return [
                v for v, (z, k, _) in self.made.items() if z == zone and k == key and v not in self.deleted
            ]


def write(s3: Any, zone: Zone, key: str, data: bytes, ledger: Ledger) -> None:
    resp = s3.put_object(Bucket=zone.bucket, Key=key, Body=data)
    ledger.add(zone.name, key, resp.get("VersionId"), hashlib.md5(data).hexdigest())  # noqa: S324


def marker(s3: Any, zone: Zone, key: str, ledger: Ledger) -> None:
    resp = s3.delete_object(Bucket=zone.bucket, Key=key)
    # On 16.2 and 18.2 a DELETE while the current entry is a marker makes none (the id answered
    # is then no entry's): the final stacks show which ids exist.
    ledger.add(zone.name, key, resp.get("VersionId") if resp.get("DeleteMarker") else None, None)


def multipart(s3: Any, zone: Zone, key: str, n: int, ledger: Ledger) -> None:
    data = body_of(zone.name, n, 9 * MIB)
    up = s3.create_multipart_upload(Bucket=zone.bucket, Key=key)
    parts = []
    for i, chunk in enumerate((data[: 5 * MIB], data[5 * MIB :])):
        r = s3.upload_part(Bucket=zone.bucket, Key=key, UploadId=up["UploadId"], PartNumber=i + 1, Body=chunk)
        parts.append({"PartNumber": i + 1, "ETag": r["ETag"]})
    resp = s3.complete_multipart_upload(
        Bucket=zone.bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    ledger.add(zone.name, key, resp.get("VersionId"), hashlib.md5(data).hexdigest())  # noqa: S324


def zone_load(zone: Zone, ledger: Ledger, *, seed: int) -> None:
    s3, rnd = zone.s3, random.Random(seed)
    t0 = time.monotonic()
    for n in range(PER_ZONE):
        key = (
            f"s/{rnd.randrange(SHARED_KEYS):02d}"
            if rnd.random() < 0.35
            else f"{zone.name}/{rnd.randrange(OWN_KEYS):02d}"
        )
        try:
            roll = rnd.random()
            if n in (PER_ZONE // 3, 2 * PER_ZONE // 3):
                multipart(s3, zone, f"m/{zone.name}/{n}", n, ledger)
            elif roll < 0.6:
                write(s3, zone, key, body_of(zone.name, n, rnd.choice([0, 100, 4096, 70_000])), ledger)
            elif roll < 0.8:
                marker(s3, zone, key, ledger)
            else:
                mine = ledger.own(zone.name, key)
                if mine:
                    vid = rnd.choice(mine)
                    s3.delete_object(Bucket=zone.bucket, Key=key, VersionId=vid)
                    ledger.delete(zone.name, vid)
                else:
                    write(s3, zone, key, body_of(zone.name, n, 100), ledger)
        except Exception as ex:  # noqa: BLE001 - counted; the test fails on any
            ledger.errors.append(f"zone {zone.name} #{n} {key}: {type(ex).__name__}: {ex}")
        ahead = t0 + LOAD_SECONDS * (n + 1) / PER_ZONE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def conflict_load(zones: dict[str, Zone], ledger: Ledger, *, seed: int) -> None:
    """Each conflict key mutated in both zones within 0.5 s: write/write, write/marker,
    marker/marker (a marker on a marker at the replica)."""
    rnd = random.Random(seed)
    t0 = time.monotonic()
    for i in range(CONFLICTS):
        key = f"c/{i:02d}"
        kind = ("ww", "wm", "mm")[i % 3]
        try:
            for z in ZONES:  # a first version on both sides, then the conflict
                write(zones[z].s3, zones[z], key, body_of(z, 1000 + i, 500), ledger)
            time.sleep(0.3)
            order = list(ZONES) if rnd.random() < 0.5 else list(reversed(ZONES))
            for j, z in enumerate(order):
                if j:
                    time.sleep(rnd.uniform(0.0, 0.5))
                if kind == "ww" or (kind == "wm" and j == 0):
                    write(zones[z].s3, zones[z], key, body_of(z, 2000 + i, 800), ledger)
                else:
                    marker(zones[z].s3, zones[z], key, ledger)
        except Exception as ex:  # noqa: BLE001
            ledger.errors.append(f"conflict {key}: {type(ex).__name__}: {ex}")
        ahead = t0 + LOAD_SECONDS * (i + 1) / CONFLICTS - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


Stack = dict[str, list[tuple[str, bool, str | None]]]


def stacks(zone: Zone) -> Stack:
    """key -> [(version id, is a delete marker, ETag)] newest first, as radosgw lists them: from
    the listing's XML, where versions and markers interleave in stack order (boto3 parses them
    into two lists)."""
    out: Stack = {}
    raw: list[bytes] = []

    def keep(http_response: Any, **_: object) -> None:
        raw.append(http_response.content)

    s3 = lab_client(zone.lab)
    s3.meta.events.register("after-call.s3.ListObjectVersions", keep)
    for _ in s3.get_paginator("list_object_versions").paginate(Bucket=zone.bucket):
        pass
    for body in raw:
        for el in ET.fromstring(body):
            kind = el.tag.rsplit("}", 1)[-1]
            if kind not in ("Version", "DeleteMarker"):
                continue
            field_ = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in el}
            etag = field_.get("ETag", "").strip('"') or None
            if etag and "-" in etag:
                # A multipart ETag depends on the parts (the replica is copied in 8 MiB parts):
                # the content is compared by reading it back.
                etag = "multipart"
            out.setdefault(urllib.parse.unquote(field_["Key"]), []).append(
                (field_["VersionId"], kind == "DeleteMarker", etag)
            )
    return out


def top(zone: Zone, key: str) -> str | None:
    """The version id of ``key``'s current entry (a marker's too)."""
    try:
        return str(zone.s3.head_object(Bucket=zone.bucket, Key=key).get("VersionId"))
    except Exception as ex:  # noqa: BLE001 - a 404 with the marker's id, or nothing
        headers = getattr(ex, "response", {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return headers.get("x-amz-version-id")


def failed_entries(*zones: Zone) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for z in zones:
        assert z.peer is not None
        out += z.get(f"/_/crr/failed?site={z.peer.name}")["Versions"]
    return out


def placeholder_puts(zone: Zone) -> int:
    """The replicator's placeholder versions at ``zone`` (delete markers placed on markers)."""
    with open(rgw_log(zone.lab), "rb") as f:
        f.seek(zone.log_offset)
        return sum(1 for line in f if b'"PUT ' in line and b"rgwcl-placeholder" in line)


def same_sets(a: Stack, b: Stack) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        sa = sorted(a.get(key, []))
        sb = sorted(b.get(key, []))
        if sa != sb:
            out.append(f"{key}: a {sa} b {sb}")
    return out


def echo_writes(zone: Zone, own_ids: set[str]) -> tuple[Counter[str], list[str]]:
    """From radosgw's access log: the replicator's writes at ``zone`` per version id it placed,
    and those that placed one of ``zone``'s own users' versions (an echo)."""
    placed: Counter[str] = Counter()
    echoes = []
    prefix = f"/{zone.bucket}/"
    with open(rgw_log(zone.lab), "rb") as f:
        f.seek(zone.log_offset)
        for raw in f:
            m = ACCESS.search(raw.decode(errors="replace"))
            if m is None or m.group(1) != zone.into or not m.group(3).startswith(prefix):
                continue
            method, target, status = m.group(2), m.group(3), int(m.group(4))
            _, _, query = target.partition("?")
            params = urllib.parse.parse_qs(query, keep_blank_values=True)
            vid = (params.get("rgwx-version-id") or [""])[0]
            if method in ("PUT", "POST", "DELETE") and vid and 200 <= status < 300:
                placed[vid] += 1
                if vid in own_ids:
                    echoes.append(target)
    return placed, echoes


@pytest.mark.two_sites
def test_versioned_two_way_keeps_one_stack_through_crashes_and_an_outage(
    ceph_lab: Lab, peer_lab: Lab, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    bucket = f"tv-{tag}"
    labs = {"a": ceph_lab, "b": peer_lab}
    zones: dict[str, Zone] = {}
    for z, lab in labs.items():
        into = f"rep-into-{z}-{tag}"
        zones[z] = Zone(z, lab, tmp_path, bucket, tag, into, system_user(lab, into))
        make_bucket(zones[z].s3, bucket, into)
        zones[z].s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        zones[z].s3.create_bucket(Bucket=zones[z].log_bucket)
        zones[z].log_offset = rgw_log(lab).stat().st_size
    a, b = zones["a"], zones["b"]
    a.peer, b.peer = b, a
    a.link, b.link = Proxy(b.lab.rgw_endpoint), Proxy(a.lab.rgw_endpoint)
    for z in (a, b):
        assert z.peer is not None
        lab_client_as(z.peer.lab, *z.peer.into_keys).head_bucket(Bucket=bucket)
    ledger = Ledger()
    try:
        a.start()
        b.start()
        # The followers' first full sync of the (empty) bucket is over before the load: a
        # full-sync record carries no OLH epoch and is not replicated two-way (README).
        started = time.time()
        deadline = time.monotonic() + 60
        while not (a.caught_up(started) and b.caught_up(started)):
            assert time.monotonic() < deadline, "the serves did not catch up before the load"
            time.sleep(0.5)
        loads = [
            threading.Thread(target=zone_load, args=(z, ledger), kwargs={"seed": 31 + n}, daemon=True)
            for n, z in enumerate((a, b))
        ]
        loads.append(
            threading.Thread(target=conflict_load, args=(zones, ledger), kwargs={"seed": 7}, daemon=True)
        )
        kills, outage = load_with_faults(zones, loads, seed=3, jitter=2.0)
        assert kills == {"a": KILLS, "b": KILLS} and outage["restored"] - outage["cut"] >= OUTAGE
        for t in loads:
            t.join()
        load_end, load_end_wall = time.monotonic(), time.time()
        assert not ledger.errors, ledger.errors[:5]
        assert ledger.counts == {"a": PER_ZONE + 2 * CONFLICTS, "b": PER_ZONE + 2 * CONFLICTS}, ledger.counts

        # 1. One stack per key on both sides: the same entries in the same order.
        deadline = load_end + CONVERGE_BOUND
        converged = None
        sa: Stack = {}
        sb: Stack = {}
        while time.monotonic() < deadline:
            for z in (a, b):
                z.check_running()
            if a.caught_up(load_end_wall) and b.caught_up(load_end_wall):
                sa, sb = stacks(a), stacks(b)
                if sa == sb:
                    converged = time.monotonic() - load_end
                    break
            time.sleep(2.0)
        failed = failed_entries(a, b)
        placeholders = sum(placeholder_puts(z) for z in (a, b))
        print(
            f"\nversioned two-way: {dict(ledger.counts)} user mutations, converged {converged} s after the load; "
            f"{sum(len(v) for v in sa.values())} entries on {len(sa)} keys; {placeholders} placeholder PUTs; "
            f"failed entries {failed[:3]}"
        )
        assert not failed, failed[:5]
        if converged is None:
            sa, sb = stacks(a), stacks(b)
            caught = {z.name: z.caught_up(load_end_wall) for z in (a, b)}
            pytest.fail(f"no convergence (caught up: {caught}):\n" + "\n".join(same_sets(sa, sb)[:20]))
        # The current entry (HEAD): the same on every key but where a version delete in one zone
        # raised the key's OLH epoch there while the other zone's entry was on its way (README,
        # "Versioned buckets", limits): listed, not asserted. Such an entry is on top of the
        # stack in both zones, and current only in the zone that made it.
        disagree = {key: (top(a, key), top(b, key)) for key in sorted(sa)}
        disagree = {key: tops for key, tops in disagree.items() if tops[0] != tops[1]}
        print(f"current entries differ on {len(disagree)} of {len(sa)} keys: {list(disagree.items())[:5]}")
        for key, tops in disagree.items():
            first, is_marker, _ = sa[key][0]
            # A HEAD answers a current delete marker with a bare 404 on 16.2 and 18.2 (no id).
            assert first in tops or (is_marker and None in tops), (key, tops, sa[key][:3])

        # 2. Nothing lost, nothing back: every version a user made and did not delete is on both
        # sides with its content; every version a user deleted is on neither.
        present = {vid: (key, m, e) for key, rows in sa.items() for vid, m, e in rows}
        lost = [
            vid
            for vid, (z, k, md5) in ledger.made.items()
            if md5 and vid not in ledger.deleted and vid not in present
        ]
        back = [vid for vid in ledger.deleted if vid in present]
        wrong = [
            vid
            for vid, (z, k, md5) in ledger.made.items()
            if md5 and vid in present and present[vid][2] not in (md5, "multipart")
        ]
        for vid, (key, _, etag) in present.items():
            if etag == "multipart":
                for z in (a, b):
                    body = z.s3.get_object(Bucket=bucket, Key=key, VersionId=vid)["Body"].read()
                    if hashlib.md5(body).hexdigest() != ledger.made[vid][2]:  # noqa: S324
                        wrong.append(f"{vid} at {z.name}")
        assert not lost, lost[:10]
        assert not back, back[:10]
        assert not wrong, wrong[:10]
        # Only the users' versions and markers are there (no leftover placeholder).
        assert all(vid in ledger.made for vid in present), [v for v in present if v not in ledger.made][:10]

        # 3. No echo: no replicator ever placed a version at the zone that made it.
        for z in (a, b):
            own = {vid for vid, (zz, _, _) in ledger.made.items() if zz == z.name}
            placed, echoes = echo_writes(z, own)
            print(
                f"zone {z.name}: the peer's replicator placed {len(placed)} version ids "
                f"({sum(placed.values())} requests, at most {max(placed.values(), default=0)} per id)"
            )
            assert not echoes, echoes[:10]
    finally:
        for z in (a, b):
            z.kill()
            if z.link is not None:
                z.link.close()
