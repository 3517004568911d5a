"""Record schema 1 end to end on the lab (issue 14, "Must show"): `rgw-changelog serve` at its
default `[source]` settings (sizes from the bucket index, no HEAD) follows a mixed workload of
real clients, and the committed change logs are checked against what radosgw answered.

The workload: plain PUTs and overwrites (two within one second), a server-side COPY, a 3-part
multipart upload, one awscli upload (when `aws` is installed), a versioned bucket (versions, a
delete marker, a delete of a version and of the marker), a versioning-Suspended bucket, the
issue's null-version sequence, a tenant user's bucket, buckets deleted right after (and 0.3 s
after) their last DELETE and an emptied versioned bucket deleted. Then:

1. every committed line validates against docs/record.schema.json;
2. no line spells the null version "null", and the issue's sequence logs `write a`, `delete a`,
   `write b`, `delete_marker b`, each with a null ``version_id``;
3. replaying the committed records with the backup's ``State`` gives every surviving bucket's
   ``list_object_versions`` (versions, delete markers, etag and size of each), and no deleted
   bucket;
4. every write record's size and etag are those of the write it describes (null only for a
   write superseded before the follower read it: counted, and only a handful allowed);
5. every write record's ``mtime`` is within seconds of its ``time`` and of radosgw's answer;
6. each deleted bucket has a ``bucket_delete`` after all of its records, each created bucket a
   ``bucket_create`` before them: (a, b) in committed order, the order a replaying consumer
   reads; (c) by ``seq``;
7. the tenant's records carry ``tenant``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from changelog.consumers.backup.model import State, Version, Versions, norm_etag
from changelog.pipeline.logformat import LogRecord, compression_of, iter_lines, parse_log_name, parse_rfc3339
from changelog.pipeline.s3client import make_s3_client
from tests.integration.test_rgw_serve import LOG_PREFIX, Serve, serve, wait_for_watermark
from tests.lab import S3_REGION, S3_TIMEOUT, Lab
from tests.record_schema import problems

pytestmark = pytest.mark.ceph
__all__ = ["serve"]  # the fixture, imported from test_rgw_serve

TENANT = "t1"
# The same user as tests/integration/test_tenants_lab.py: either test may create it first.
TENANT_USER = ("u1", "T1KEY", "T1SECRET")
PART = 5 * 1024 * 1024
# Writes whose record may leave size and etag null (superseded before the follower read the
# index entry): the workload has 5 writes superseded without a catch-up in between (a quick
# overwrite, two in the Suspended bucket, two in the null-version sequence); a null for any other
# write fails, and more than these mean a bug.
MAX_SUPERSEDED_NULLS = 5
MTIME_SLACK_S = 5.0
# Buckets deleted right after their last DELETE: several, as whether the last records and the
# bucket_delete share a log object (and so a pass of the collector) is a matter of timing.
QUICK_BUCKETS = 3
# ... and some deleted a moment after their last DELETE (the follower, polling a hot bucket every
# 0.2 s, has likely read the DELETEs): their delete records and the bucket_delete then tend to
# fall in one pass of the collector, so in one log object.
SOON_BUCKETS = 3
SOON_DELAY_S = 0.3


def ensure_tenant_user(lab: Lab) -> None:
    uid, key, secret = TENANT_USER
    try:
        lab.radosgw_admin("user", "create", "--tenant", TENANT, "--uid", uid, "--display-name", uid,
                          "--access-key", key, "--secret-key", secret)  # fmt: skip
    except RuntimeError as ex:
        if "exists" not in str(ex).lower():
            raise


@dataclass(frozen=True)
class Write:
    """One write the workload made, as radosgw answered it. ``bucket`` is qualified
    (``tenant/bucket`` for the tenant's)."""

    bucket: str
    key: str
    version_id: str | None
    etag: str
    size: int
    at: int  # its place in ``Workload.touched``
    t: float  # when radosgw answered it (this host's clock: the lab's too)


@dataclass
class Workload:
    s3: Any
    tenant_s3: Any
    tag: str
    writes: list[Write] = field(default_factory=list)
    # (qualified bucket, key, version id) of every version each mutation wrote or removed, in
    # order: a write whose version is touched again later was superseded
    touched: list[tuple[str, str, str | None]] = field(default_factory=list)
    # places in ``touched`` where the test waited for the follower to catch up
    catch_ups: list[int] = field(default_factory=list)
    gone_at: dict[str, int] = field(default_factory=dict)  # bucket -> its place in ``touched``
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def name(self, kind: str) -> str:
        return f"s1-{kind}-{self.tag}"

    def client(self, bucket: str) -> tuple[Any, str]:
        """The client and the S3 name of a qualified bucket name."""
        tenant, _, plain = bucket.rpartition("/")
        return (self.tenant_s3 if tenant else self.s3), plain

    def create(self, bucket: str) -> None:
        s3, plain = self.client(bucket)
        s3.create_bucket(Bucket=plain)
        self.created.append(bucket)

    def wrote(self, bucket: str, key: str, version_id: str | None, etag: str | None, size: int) -> None:
        self.writes.append(Write(bucket, key, version_id, norm(etag), size, len(self.touched), time.time()))
        self.touched.append((bucket, key, version_id))

    def superseded_unread(self, x: Write) -> bool:
        """Whether ``x``'s version was overwritten or removed (or its bucket deleted) before
        the follower caught up: its index entry may be gone when the follower reads it."""
        later = [j for j, t in enumerate(self.touched) if j > x.at and t == (x.bucket, x.key, x.version_id)]
        if x.bucket in self.gone_at:
            later.append(self.gone_at[x.bucket])
        return bool(later) and not any(x.at < c <= min(later) for c in self.catch_ups)

    def caught_up(self) -> None:
        self.catch_ups.append(len(self.touched))

    def versioning(self, bucket: str, status: str) -> None:
        s3, plain = self.client(bucket)
        s3.put_bucket_versioning(Bucket=plain, VersioningConfiguration={"Status": status})

    def put(self, bucket: str, key: str, body: bytes) -> str | None:
        s3, plain = self.client(bucket)
        r = s3.put_object(Bucket=plain, Key=key, Body=body)
        vid = _vid(r.get("VersionId"))
        self.wrote(bucket, key, vid, r["ETag"], len(body))
        return vid

    def copy(self, bucket: str, key: str, src: str) -> None:
        s3, plain = self.client(bucket)
        r = s3.copy_object(Bucket=plain, Key=key, CopySource={"Bucket": plain, "Key": src})
        size = s3.head_object(Bucket=plain, Key=src)["ContentLength"]
        self.wrote(bucket, key, _vid(r.get("VersionId")), r["CopyObjectResult"]["ETag"], size)

    def multipart(self, bucket: str, key: str, parts: int) -> None:
        s3, plain = self.client(bucket)
        up = s3.create_multipart_upload(Bucket=plain, Key=key)["UploadId"]
        done = []
        for n in range(1, parts + 1):
            p = s3.upload_part(Bucket=plain, Key=key, UploadId=up, PartNumber=n, Body=bytes([n]) * PART)
            done.append({"PartNumber": n, "ETag": p["ETag"]})
        r = s3.complete_multipart_upload(Bucket=plain, Key=key, UploadId=up, MultipartUpload={"Parts": done})
        vid = _vid(r.get("VersionId"))
        etag = r.get("ETag")
        if not norm(etag):  # radosgw 16.2 answers CompleteMultipartUpload with an empty ETag
            etag = s3.head_object(Bucket=plain, Key=key, **({"VersionId": vid} if vid else {}))["ETag"]
        self.wrote(bucket, key, vid, etag, parts * PART)

    def delete(self, bucket: str, key: str, version_id: str | None = None, *, vid_text: str | None = None) -> str | None:
        """DELETE (of one version when ``version_id``/``vid_text`` given); returns the new
        delete marker's id, if one was made (None for a null marker too)."""
        s3, plain = self.client(bucket)
        asked = vid_text if vid_text is not None else version_id
        r = s3.delete_object(Bucket=plain, Key=key, **({"VersionId": asked} if asked else {}))
        marker = _vid(r.get("VersionId")) if r.get("DeleteMarker") and asked is None else None
        if asked is not None:
            self.touched.append((bucket, key, _vid(asked)))
        elif marker is None:  # an unversioned delete, or a null marker over the null version
            self.touched.append((bucket, key, None))
        return marker

    def delete_bucket(self, bucket: str) -> None:
        s3, plain = self.client(bucket)
        s3.delete_bucket(Bucket=plain)
        self.deleted.append(bucket)
        self.gone_at[bucket] = len(self.touched)
        self.touched.append((bucket, "", None))

    def awscli_upload(self, bucket: str, key: str, path: Path, lab: Lab) -> None:
        """`aws s3 cp` of a 9 MiB file: awscli's own multipart (8 MiB parts)."""
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": lab.access_key,
            "AWS_SECRET_ACCESS_KEY": lab.secret_key,
            "AWS_DEFAULT_REGION": S3_REGION,
            # radosgw 16.2 refuses the newer default checksum trailers
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        path.write_bytes(b"a" * (9 * 1024 * 1024))
        subprocess.run(
            ["aws", "--endpoint-url", lab.rgw_endpoint, "s3", "cp", str(path), f"s3://{bucket}/{key}"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        head = self.s3.head_object(Bucket=bucket, Key=key)
        self.wrote(bucket, key, None, head["ETag"], head["ContentLength"])


def norm(etag: str | None) -> str:
    return norm_etag(etag) or ""


def _vid(v: str | None) -> str | None:
    return None if v in (None, "", "null") else v


# --------------------------------------------------------------------------- the workload


def phase_one(w: Workload, tmp: Path, lab: Lab) -> None:
    """Create every bucket and write; the follower catches up after this."""
    plain, ver, susp, emptied = (w.name(k) for k in ("p", "v", "s", "e"))
    tb = f"{TENANT}/{w.name('t')}"
    quick = [w.name(f"q{i}") for i in range(QUICK_BUCKETS)] + [w.name(f"d{i}") for i in range(SOON_BUCKETS)]
    for b in (plain, ver, susp, *quick, emptied, tb):
        w.create(b)
    for b in (ver, susp, emptied):
        w.versioning(b, "Enabled")
    w.put(plain, "a", b"hello")
    w.put(plain, "zero", b"")
    w.put(plain, "dir/ünï cødé x.txt", b"unicode")
    w.multipart(plain, "mp", 3)
    if shutil.which("aws"):
        w.awscli_upload(plain, "aws-cp", tmp / "aws-cp.bin", lab)
    else:
        w.notes.append("awscli step skipped: `aws` not installed")
    for i in range(3):
        w.put(ver, "v", b"v" * (i + 1))
    w.put(ver, "w", b"w")
    w.multipart(ver, "vmp", 3)
    w.put(susp, "s", b"s-versioned")
    for b in quick:
        for k in ("q1", "q2"):
            w.put(b, k, k.encode())
    w.put(emptied, "e", b"e1")
    w.put(emptied, "e", b"e22")
    w.put(tb, "x", b"tenant x")
    w.put(tb, "y", b"tenant y")


def phase_two(w: Workload) -> None:
    """Overwrites, copies, deletes of every kind, the null-version sequence and bucket deletes,
    without waiting for the follower."""
    plain, ver, susp, emptied = (w.name(k) for k in ("p", "v", "s", "e"))
    tb = f"{TENANT}/{w.name('t')}"
    w.put(plain, "a", b"hello, again")  # overwrite
    w.put(plain, "fast", b"1")  # twice within one second: the first may be superseded unread
    w.put(plain, "fast", b"22")
    w.copy(plain, "a-copy", "a")
    w.delete(plain, "zero")
    # versioned: a delete marker, a delete of one version, a delete of the marker
    ver_ids = [x.version_id for x in w.writes if x.bucket == ver and x.key == "v"]
    marker = w.delete(ver, "v")
    assert marker is not None
    w.delete(ver, "v", ver_ids[0])
    w.delete(ver, "v", marker)
    w.delete(ver, "w")  # a marker left in place
    # suspended: a null object over a versioned one, its null marker, a null object again
    w.versioning(susp, "Suspended")
    w.put(susp, "s", b"s-null")
    w.delete(susp, "s")
    w.put(susp, "t", b"t-null")
    w.put(susp, "t", b"t-null-2")
    null_sequence(w, w.name("n"))
    # the tenant writes and deletes
    w.put(tb, "x", b"tenant x, again")
    w.delete(tb, "y")
    # a bucket deleted a few ms after its last DELETE
    for b in (w.name(f"q{i}") for i in range(QUICK_BUCKETS)):
        w.delete(b, "q1")
        w.delete(b, "q2")
        w.delete_bucket(b)
    for b in (w.name(f"d{i}") for i in range(SOON_BUCKETS)):
        w.delete(b, "q1")
        w.delete(b, "q2")
        time.sleep(SOON_DELAY_S)
        w.delete_bucket(b)
    # a versioned bucket emptied (every version and marker) and deleted
    m = w.delete(emptied, "e")
    for x in [x for x in w.writes if x.bucket == emptied]:
        w.delete(emptied, "e", x.version_id)
    w.delete(emptied, "e", m)
    w.delete_bucket(emptied)


def null_sequence(w: Workload, b: str) -> None:
    """The issue's reproduction, step by step."""
    w.create(b)
    w.put(b, "a", b"a")
    w.versioning(b, "Enabled")
    w.delete(b, "a", vid_text="null")
    w.versioning(b, "Suspended")
    w.put(b, "b", b"b")
    w.delete(b, "b")


# --------------------------------------------------------------------------- reading the logs


def committed_lines(s3: Any, bucket: str) -> list[tuple[int, bytes]]:
    """Every line of every committed log object with the object's number, in committed order
    (object names sort by cutoff; a replaying consumer reads them so)."""
    out: list[tuple[int, bytes]] = []
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{LOG_PREFIX}/"):
        for o in page.get("Contents", []):
            name = o["Key"]
            if parse_log_name(name) is not None:
                body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
                out.extend((n, line) for line in iter_lines(io.BytesIO(body), compression_of(name)))
                n += 1
    return out


# A version as compared: (id, is a delete marker, etag, size); a key: its versions and the latest.
VersionView = tuple[str | None, bool, str | None, int | None]
KeyView = tuple[set[VersionView], VersionView | None]


def listing(w: Workload, bucket: str) -> dict[str, KeyView]:
    """key -> its versions and the latest one, per radosgw."""
    s3, plain = w.client(bucket)
    out: dict[str, KeyView] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=plain):
        for marker, xs in ((False, page.get("Versions", [])), (True, page.get("DeleteMarkers", []))):
            for o in xs:
                v: VersionView = (
                    _vid(o["VersionId"]), marker, None if marker else norm(o["ETag"]), None if marker else o["Size"]
                )  # fmt: skip
                versions, latest = out.get(o["Key"], (set(), None))
                versions.add(v)
                out[o["Key"]] = (versions, v if o["IsLatest"] else latest)
    return out


def as_listing(versions: Versions) -> KeyView:
    """A replayed key as ``listing`` shows one (``versions`` newest first)."""

    def one(v: Version) -> VersionView:
        return (v.version_id, v.delete_marker, None if v.delete_marker else v.etag, None if v.delete_marker else v.size)

    return {one(v) for v in versions}, one(versions[0])


# --------------------------------------------------------------------------- the checks


def show(r: LogRecord) -> str:
    return orjson.dumps(r.to_dict()).decode()


def check_lines(lines: list[bytes]) -> tuple[list[str], list[str]]:
    """(1) schema problems and (2) lines spelling the null version "null"."""
    invalid, null_text = [], []
    for line in lines:
        doc = orjson.loads(line)
        found = problems(doc)
        if found:
            invalid.append(f"{'; '.join(found)}: {line.decode()[:400]}")
        if isinstance(doc, dict) and doc.get("version_id") == "null":
            null_text.append(line.decode()[:400])
    return invalid, null_text


def check_null_sequence(records: list[LogRecord], w: Workload) -> list[str]:
    """(2) the issue's reproduction gives one spelling of the null version in every op."""
    name = w.name("n")
    got = [(r.key, r.op, r.version_id) for r in records if r.bucket == name and not r.is_bucket_op]
    want = [("a", "write", None), ("a", "delete", None), ("b", "write", None), ("b", "delete_marker", None)]
    # per key in committed order (keys may share a log object in either order)
    if sorted(got, key=lambda g: g[0] or "") != want:
        return [f"null-version sequence logged as {got}, expected (per key) {want}"]
    return []


def check_replay(records: list[LogRecord], w: Workload) -> list[str]:
    """(3) the backup's replay against radosgw's listings; deleted buckets absent."""
    state = State()
    for r in records:
        state.apply(r)
    snap = state.snapshot()
    out: list[str] = []
    for bucket in w.created:
        if bucket in w.deleted:
            if bucket in snap:
                out.append(f"deleted bucket {bucket} is in the replayed state: {snap[bucket]}")
            continue
        want = listing(w, bucket)
        got = {k: as_listing(v) for k, v in snap.get(bucket, {}).items()}
        if bucket not in snap:
            out.append(f"bucket {bucket} is missing from the replayed state")
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                out.append(f"{bucket}/{key}: replayed {got.get(key)} != listed {want.get(key)}")
    return out


Pairs = list[tuple[LogRecord, Write]]


def check_sizes(records: list[LogRecord], w: Workload) -> tuple[list[str], list[str], Pairs]:
    """(4) each write record against the write it describes: (failures, the records left null
    for a write superseded before the follower caught up, each record with its write)."""
    got: dict[tuple[str, str, str | None], list[LogRecord]] = defaultdict(list)
    for r in records:
        if r.op == "write" and r.key is not None:
            got[(r.qualified_bucket, r.key, r.version_id)].append(r)
    made: dict[tuple[str, str, str | None], list[Write]] = defaultdict(list)
    for x in w.writes:
        made[(x.bucket, x.key, x.version_id)].append(x)
    out: list[str] = []
    nulls: list[str] = []
    pairs: Pairs = []
    for group in sorted(set(got) | set(made), key=str):
        recs, writes = got.get(group, []), made.get(group, [])
        if len(recs) != len(writes):
            out.append(f"{group}: {len(recs)} write records for {len(writes)} writes: {[show(r) for r in recs]}")
            continue
        for r, x in zip(recs, writes, strict=True):
            pairs.append((r, x))
            if r.size is None or r.etag is None:
                if w.superseded_unread(x):
                    nulls.append(show(r))
                else:
                    out.append(f"null size/etag for a write not superseded before a catch-up ({x}): {show(r)}")
            if (r.size is not None and r.size != x.size) or (r.etag is not None and norm(r.etag) != x.etag):
                out.append(f"wrong size/etag, wrote size {x.size} etag {x.etag}: {show(r)}")
    if len(nulls) > MAX_SUPERSEDED_NULLS:
        out.append(f"{len(nulls)} superseded writes left null (at most {MAX_SUPERSEDED_NULLS} expected)")
    return out, nulls, pairs


def check_mtimes(pairs: Pairs) -> list[str]:
    """(5) a write's mtime is there (unless its size is null: superseded), near its ``time``
    and near when radosgw answered the write."""
    out: list[str] = []
    for r, x in pairs:
        if r.mtime is None:
            if r.size is not None:
                out.append(f"write without mtime: {show(r)}")
            continue
        mtime = parse_rfc3339(r.mtime) / 1e6
        if abs(mtime - parse_rfc3339(r.time) / 1e6) > MTIME_SLACK_S or abs(mtime - x.t) > MTIME_SLACK_S:
            out.append(f"mtime far from time or from the write's answer at {x.t:.3f}: {show(r)}")
    return out


def check_bucket_ops(records: list[LogRecord], objects: list[int], w: Workload) -> tuple[list[str], list[str]]:
    """(6) per bucket, in committed order (``objects[i]``: the log object of ``records[i]``):
    its one ``bucket_delete`` (deleted buckets only) after every other record of it, and its one
    ``bucket_create`` before them. Returns (delete failures, create failures)."""

    def at(i: int) -> str:
        return f"[object {objects[i]}, line {i}] {show(records[i])}"

    deletes_bad: list[str] = []
    creates_bad: list[str] = []
    for bucket in w.created:
        mine = [(i, r) for i, r in enumerate(records) if r.qualified_bucket == bucket]
        creates = [i for i, r in mine if r.op == "bucket_create"]
        deletes = [i for i, r in mine if r.op == "bucket_delete"]
        keyed = [i for i, r in mine if not r.is_bucket_op]
        if len(creates) != 1:
            creates_bad.append(f"{bucket}: {len(creates)} bucket_create records")
        elif keyed and creates[0] > keyed[0]:
            early = [i for i in keyed if i < creates[0]]
            # Within one log object lines go by index shard, not by arrival: say which it was.
            c = creates[0]
            if any(records[i].recorded_us < records[c].recorded_us for i in early):
                why = "recorded after them"
            elif all(objects[i] == objects[c] for i in early):
                why = "recorded first, placed after them in the same log object"
            else:
                why = "recorded first, in a later log object"
            creates_bad.append(f"{bucket} ({why}): {at(c)} comes after {[at(i) for i in early]}")
        if bucket not in w.deleted:
            deletes_bad += [f"{bucket}: bucket_delete of a live bucket: {at(i)}" for i in deletes]
        elif len(deletes) != 1:
            deletes_bad.append(f"{bucket}: {len(deletes)} bucket_delete records (deleted once)")
        elif keyed and deletes[0] < keyed[-1]:
            late = [at(i) for i in keyed if i > deletes[0]]
            same = all(objects[i] == objects[deletes[0]] for i in keyed if i > deletes[0])
            deletes_bad.append(f"{bucket} ({'same log object' if same else 'a later log object'}): "
                               f"{at(deletes[0])} comes before {late}")  # fmt: skip
    return deletes_bad, creates_bad


def deleted_bucket_notes(records: list[LogRecord], objects: list[int], w: Workload) -> list[str]:
    """What the logs kept of each deleted bucket's last mutations (its deletes may die with it)
    and whether its bucket_delete shares a log object with them (where order is by index shard)."""
    out: list[str] = []
    for bucket in w.deleted:
        mine = [(objects[i], r) for i, r in enumerate(records) if r.qualified_bucket == bucket]
        removals = sum(r.op in ("delete", "delete_marker") for _, r in mine)
        gone = [n for n, r in mine if r.op == "bucket_delete"]
        shared = sum(n in gone and not r.is_bucket_op for n, r in mine)
        out.append(f"deleted bucket {bucket}: {removals} delete records kept, bucket_delete in object "
                   f"{gone}, sharing it with {shared} keyed records")  # fmt: skip
    return out


def check_bucket_op_seqs(records: list[LogRecord], w: Workload) -> list[str]:
    """(6c) by ``seq`` (the per-object order token): each bucket's ``bucket_create`` sorts before
    and its ``bucket_delete`` after every other record of the bucket."""
    out: list[str] = []
    for bucket in w.created:
        mine = [r for r in records if r.qualified_bucket == bucket]
        keyed = [r.seq for r in mine if not r.is_bucket_op]
        for r in mine:
            if r.op == "bucket_create" and keyed and r.seq >= min(keyed):
                out.append(f"{bucket}: bucket_create seq {r.seq} not below {min(keyed)}")
            if r.op == "bucket_delete" and keyed and r.seq <= max(keyed):
                out.append(f"{bucket}: bucket_delete seq {r.seq} not above {max(keyed)}")
    return out


def check_tenant(records: list[LogRecord], w: Workload) -> list[str]:
    """(7) the tenant's bucket's records carry the tenant; nobody else's do."""
    name = w.name("t")
    theirs = [r for r in records if r.bucket == name]
    out = [f"tenant record without tenant {TENANT!r}: {show(r)}" for r in theirs if r.tenant != TENANT]
    if not any(r.op == "write" for r in theirs):
        out.append(f"no write record of the tenant's bucket {TENANT}/{name}")
    out += [f"tenant on a bucket of no tenant: {show(r)}" for r in records if r.bucket != name and r.tenant]
    return out


# --------------------------------------------------------------------------- the test


def drop_bucket(s3: Any, bucket: str) -> None:
    """Empty (every version and marker) and delete ``bucket``."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for o in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"], VersionId=o["VersionId"])
    s3.delete_bucket(Bucket=bucket)


def drop_tenant_buckets(tenant_s3: Any) -> None:
    """The tenant's buckets of earlier runs: a full sync of one (at serve's start) needs a system
    user, which the lab's user is not; serve stops on that (see the report of issue 14)."""
    for b in tenant_s3.list_buckets().get("Buckets", []):
        if b["Name"].startswith("s1-t-"):
            drop_bucket(tenant_s3, b["Name"])


def default_source(serve: Serve) -> None:
    """serve.toml without `object_info`: the default method (the bucket index)."""
    path = serve.config
    path.write_text(re.sub(r"(?m)^object_info = .*\n", "", path.read_text()))


def test_schema1_end_to_end(serve: Serve, ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> None:
    ensure_tenant_user(ceph_lab)
    tenant_s3 = make_s3_client(
        ceph_lab.rgw_endpoint, access_key=TENANT_USER[1], secret_key=TENANT_USER[2], region=S3_REGION,
        max_attempts=3, connect_timeout=S3_TIMEOUT, read_timeout=S3_TIMEOUT,
    )  # fmt: skip
    drop_tenant_buckets(tenant_s3)
    w = Workload(s3_client, tenant_s3, uuid.uuid4().hex[:8])
    try:
        run_and_check(w, serve, ceph_lab, s3_client, tmp_path)
    finally:
        # Every bucket left behind would be followed (a full sync) by the next run's serve.
        serve.kill()
        for bucket in [*(b for b in w.created if b not in w.deleted), serve.log_bucket]:
            s3, plain = w.client(bucket)
            drop_bucket(s3, plain)


def run_and_check(w: Workload, serve: Serve, ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> None:
    serve.buckets = ["*"]
    # Every bucket made by the workload is found by "*"; those the lab held before are left out
    # (following them would start with a full sync of every bucket the other tests left).
    serve.exclude_buckets = ceph_lab.bucket_names()
    default_source(serve)
    t_start = time.monotonic()
    serve.start()
    wait_for_watermark(s3_client, serve, time.time())
    t0 = time.monotonic()
    phase_one(w, tmp_path, ceph_lab)
    wait_for_watermark(s3_client, serve, time.time())
    w.caught_up()
    phase_two(w)
    wait_for_watermark(s3_client, serve, time.time())
    took = time.monotonic() - t0

    numbered = committed_lines(s3_client, serve.log_bucket)
    lines = [line for _, line in numbered]
    invalid, null_text = check_lines(lines)
    mine = [(n, r) for n, r in ((n, LogRecord.from_json(line)) for n, line in numbered) if r.bucket.endswith(w.tag)]
    records = [r for _, r in mine]
    sizes, nulls, pairs = check_sizes(records, w)
    deletes_last, creates_first = check_bucket_ops(records, [n for n, _ in mine], w)
    checks = {
        "1 schema": invalid,
        "2 null spelling": null_text + check_null_sequence(records, w),
        "3 replay = listings": check_replay(records, w),
        "4 size/etag": sizes,
        "5 mtime": check_mtimes(pairs),
        "6a bucket_delete last": deletes_last,
        "6b bucket_create first": creates_first,
        "6c bucket ops by seq": check_bucket_op_seqs(records, w),
        "7 tenant": check_tenant(records, w),
    }
    writes = sum(r.op == "write" for r in records)
    print(f"\nschema1: {len(lines)} lines committed, {len(records)} of this test ({writes} writes) in "
          f"{numbered[-1][0] + 1 if numbered else 0} log objects, "
          f"{len(w.writes)} writes made, {len(nulls)} superseded writes with null size, serve start-up {t0 - t_start:.1f}s, "
          f"workload+catch-up {took:.1f}s")  # fmt: skip
    for note in w.notes:
        print(f"schema1: {note}")
    for line in nulls:
        print(f"schema1: superseded, null: {line}")
    for line in deleted_bucket_notes(records, [n for n, _ in mine], w):
        print(f"schema1: {line}")
    for name, failures in checks.items():
        print(f"schema1: check {name}: {'ok' if not failures else f'{len(failures)} FAILED'}")
        for f in failures[:20]:
            print(f"    {f}")
    failed = {name: fs for name, fs in checks.items() if fs}
    assert not failed, "\n".join(f"{name}: {fs[0]}" for name, fs in failed.items())
