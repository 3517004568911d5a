"""Figure 6, ``journal``: the peer comparison of issue 12, radosgw's own bucket logging in
**Journal** mode (new in Tentacle, Ceph 20.2) beside ``rgw-changelog serve``, on the same
radosgw and the same mixed workload, in four configurations:

* **none**: buckets nobody follows and no serve process;
* **serve**: buckets followed by a running ``rgw-changelog serve`` (default timings, index on
  RADOS, logs to a bucket of the same radosgw), started and caught up before the round, stopped
  after it (as in ``rgw-put``);
* **journal**: buckets with bucket logging in Journal mode (``ObjectRollTime`` ``ROLL_SHORT``)
  into a log bucket of the same tenant (with the bucket policy that lets the logging service
  principal write there);
* **both**: buckets with Journal logging and followed by serve.

A round in one configuration: N 4 KiB PUTs from boto3 threads (timed: the throughput figure),
then the mixed part (untimed): overwrites, copies, multipart uploads, DELETEs, a multi-object
delete, a unicode key with a space, and in a versioned bucket two versions per key, a delete
marker, the deletion of a version, a multi-object delete of versions and of current objects
(delete markers), a multipart upload. It also sends requests that must leave no record: PUTs
with ``If-None-Match: *`` on an existing key (412), PUTs signed with a wrong secret (403), PUTs
to a bucket that does not exist (404), DELETEs of missing keys and a multi-object delete naming
missing keys (no-ops). The workload keeps the ground truth itself: a ledger of every
acknowledged mutation (bucket, key, write | delete | delete_marker, version id, ETag) and of
every request that must leave no record.

Configurations rotate so that each goes first in turn (``reps`` rounds each, 4 in the full run,
1 with --quick); the throughput figures are the medians, against **none**.

Counting: after the last round serve's watermark passes the end of its rounds, and each Journal
source bucket is flushed with ``radosgw-admin bucket logging flush`` (the tail of a count only,
never for the lag) and its pending commits are waited for. Every committed log line is then
matched to the ledger: **missing** (a mutation with no record), **phantom** (a record of no
mutation, by cause when a refused or no-op request explains it) and **duplicate** (a mutation
recorded more than once). Our lines are read raw from every committed object (no reader dedup).
A Journal record carries no version id for a delete marker: a record without one matches its
mutation all the same and is counted in ``version_id_absent``.

Lag, on buckets of their own with Journal logging and serve (default timings) at once: one PUT
every 1/rate s; a poller lists our committed log objects and the Journal's log objects every
``POLL`` s, so the lag (first seen - PUT returned) includes up to ``POLL`` of detection delay.
Bucket logging commits a log object lazily, when a record arrives after the roll time, so the
writer keeps the bucket busy after the measured window (tail PUTs, not measured) until every
measured record is visible; then it stops and says how many tail records are still invisible
``IDLE`` s later. At ``ROLL_SHORT`` in every run; at the default roll time (300 s, read back
from radosgw) over one whole roll period in the full run only (about 5.5 min).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from changelog.pipeline.reader import list_logs, read_object
from tools.bench.common import (
    S3_REGION,
    Bench,
    Figure,
    FigureSkipped,
    lab_down,
    lab_release,
    lab_up,
    median,
    percentile,
    radosgw_admin,
    say,
)
from tools.bench.lag import LogPoller
from tools.bench.serve import ServeProcess

GROUP = "journal"
RELEASE = "tentacle"
OBJECT_BYTES = 4096
ROLL_SHORT = 5  # s: the short ObjectRollTime (radosgw accepts 0 and up)
POLL = 0.5  # s between listings of the log buckets in the lag phase
IDLE = 20.0  # s after the last write of a lag bucket before counting what is still invisible
CONFIGS = ("none", "serve", "journal", "both")
LOGGING_PRINCIPAL = "logging.s3.amazonaws.com"
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
JOURNAL_WRITE_OPS = {"REST.PUT.OBJECT", "REST.POST.UPLOAD"}
JOURNAL_DELETE_OPS = {"REST.DELETE.OBJECT", "REST.POST.DELETE_MULTI_OBJECT"}


# --------------------------------------------------------------------------- ground truth


def _version(v: str | None) -> str | None:
    return None if v in (None, "", "null", "-") else v


def _etag(e: str | None) -> str | None:
    e = (e or "").strip('"')
    return None if e in ("", "-") else e


@dataclass(frozen=True, slots=True)
class Change:
    """One mutation, as the ledger knows it or as a log says it."""

    bucket: str
    key: str
    kind: str  # write | delete | delete_marker
    version: str | None
    etag: str | None = None


class Ledger:
    """What the workload knows happened: every acknowledged mutation, and every request that
    must leave no record (with why)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.refused: list[tuple[str, str, str]] = []  # bucket, key, cause
        self._mu = threading.Lock()

    def add(self, bucket: str, key: str, kind: str, version: str | None = None, etag: str | None = None) -> None:
        with self._mu:
            self.changes.append(Change(bucket, key, kind, _version(version), _etag(etag)))

    def refuse(self, bucket: str, key: str, cause: str) -> None:
        with self._mu:
            self.refused.append((bucket, key, cause))


def compare(ledger: Ledger, records: Iterable[Change]) -> dict[str, Any]:
    """Match a log's records to the ledger: matched, missing, phantom (by cause), duplicate.

    A record matches a mutation of the same bucket, key, kind and version id; for writes whose
    record has an ETag, the ETag too (a refused PUT's record carries the refused body's ETag).
    A record with no version id matches a mutation that has one (e.g. a delete marker in the
    Journal) and is counted in ``version_id_absent``. A record left over is a phantom when a
    refused or no-op request on its key explains it, or when no mutation has its identity; else
    a duplicate."""
    pool: dict[tuple[str, str, str, str | None], list[str | None]] = defaultdict(list)
    by_key: dict[tuple[str, str, str], list[tuple[str, str, str, str | None]]] = defaultdict(list)
    for c in ledger.changes:
        ident = (c.bucket, c.key, c.kind, c.version)
        if ident not in pool:
            by_key[(c.bucket, c.key, c.kind)].append(ident)
        pool[ident].append(c.etag)
    known = set(pool)
    refused = Counter((b, k) for b, k, _ in ledger.refused)
    cause = {(b, k): why for b, k, why in ledger.refused}

    def take(ident: tuple[str, str, str, str | None], etag: str | None) -> bool:
        etags = pool.get(ident)
        if not etags:
            return False
        if etag is not None and any(e is not None for e in etags):
            if etag in etags:
                etags.remove(etag)
                return True
            if None in etags:
                etags.remove(None)
                return True
            return False
        etags.pop()
        return True

    n_records = matched = version_absent = 0
    left: list[Change] = []
    for r in records:
        n_records += 1
        if take((r.bucket, r.key, r.kind, r.version), r.etag if r.kind == "write" else None):
            matched += 1
        else:
            left.append(r)
    phantom: Counter[str] = Counter()
    duplicate = 0
    for r in left:
        if r.version is None and any(
            ident[3] is not None and take(ident, r.etag if r.kind == "write" else None)
            for ident in by_key.get((r.bucket, r.key, r.kind), ())
        ):
            matched += 1
            version_absent += 1
        elif refused[(r.bucket, r.key)] > 0:
            refused[(r.bucket, r.key)] -= 1
            phantom[cause[(r.bucket, r.key)]] += 1
        elif (r.bucket, r.key, r.kind, r.version) in known:
            duplicate += 1
        else:
            phantom["no such mutation"] += 1
    missing: Counter[str] = Counter()
    for (_, _, kind, _), etags in pool.items():
        if etags:
            missing[kind] += len(etags)
    n_phantom = sum(phantom.values())
    n_missing = sum(missing.values())
    mutations = len(ledger.changes)
    return {
        "mutations": mutations,
        "refused_requests": len(ledger.refused),
        "records": n_records,
        "matched": matched,
        "missing": n_missing,
        "phantom": n_phantom,
        "duplicate": duplicate,
        "exact": matched / max(1, mutations + n_phantom + duplicate),
        "missing_by_kind": dict(missing),
        "phantom_by_cause": dict(phantom),
        "version_id_absent": version_absent,
    }


# --------------------------------------------------------------------------- Journal mode


def journal_xml(target: str, prefix: str, roll: int | None) -> bytes:
    """A PutBucketLogging body with Ceph's extensions (LoggingType, ObjectRollTime: boto3's
    model does not know them)."""
    roll_xml = f"<ObjectRollTime>{roll}</ObjectRollTime>" if roll is not None else ""
    return (
        f'<BucketLoggingStatus xmlns="{S3_XMLNS}"><LoggingEnabled>'
        f"<TargetBucket>{target}</TargetBucket><TargetPrefix>{prefix}</TargetPrefix>"
        f"<LoggingType>Journal</LoggingType>{roll_xml}"
        "<TargetObjectKeyFormat><SimplePrefix/></TargetObjectKeyFormat>"
        "</LoggingEnabled></BucketLoggingStatus>"
    ).encode()


class BucketLogging:
    """Configures bucket logging: boto3's PutBucketLogging with its body swapped for Ceph's XML
    just before signing (so the request is signed over what is sent)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.s3 = bench.s3()
        self._body: bytes | None = None
        self.s3.meta.events.register("before-sign.s3.PutBucketLogging", self._swap)

    def _swap(self, request: Any, **_: Any) -> None:
        body = self._body
        if body is None:
            return
        request.data = body
        for name in list(request.headers.keys()):
            if name.lower().startswith("x-amz-checksum-") or name.lower() in (
                "x-amz-sdk-checksum-algorithm",
                "content-md5",
                "content-length",
            ):
                del request.headers[name]
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        request.headers["Content-Length"] = str(len(body))

    def journal(self, src: str, target: str, roll: int | None) -> dict[str, Any]:
        """Journal-mode logging of ``src`` into ``target`` under ``<src>/`` (``roll`` None: the
        default ObjectRollTime); the configuration radosgw reports back."""
        self._body = journal_xml(target, f"{src}/", roll)
        try:
            self.s3.put_bucket_logging(
                Bucket=src, BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": target, "TargetPrefix": f"{src}/"}}
            )
        finally:
            self._body = None
        info = json.loads(radosgw_admin(self.bench.lab, "bucket", "logging", "info", "--bucket", src))
        conf = info.get("bucketLoggingStatus", {}).get("loggingEnabled", {})
        if conf.get("loggingType") != "Journal":
            raise RuntimeError(f"bucket logging of {src} is not in Journal mode after PutBucketLogging: {info}")
        return dict(conf)

    def disable(self, src: str) -> None:
        self.s3.put_bucket_logging(Bucket=src, BucketLoggingStatus={})

    def flush(self, src: str, timeout: float = 90.0) -> float:
        """``radosgw-admin bucket logging flush`` (commit the pending log object now), then until
        no log object of ``src`` waits for its commit: seconds taken."""
        t0 = time.monotonic()
        radosgw_admin(self.bench.lab, "bucket", "logging", "flush", "--bucket", src)
        while True:
            out = radosgw_admin(self.bench.lab, "bucket", "logging", "list", "--bucket", src).strip()
            try:
                pending = json.loads(out) if out else []
            except ValueError:
                pending = [out]
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"bucket logging of {src}: still pending after {timeout:.0f}s: {pending}")
            time.sleep(0.5)


@dataclass(frozen=True, slots=True)
class JournalLine:
    bucket: str
    key: str
    op: str
    version: str | None
    etag: str | None


def parse_journal(text: str) -> list[JournalLine]:
    """Journal records: ``owner bucket [dd/Mon/yyyy:hh:mm:ss +zzzz] op key size version etag``,
    space separated, the key unquoted (it may hold spaces: it is what lies between the op and
    the last three fields); a dash for an empty field."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        t = line.split(" ")
        if len(t) < 9 or not t[2].startswith("[") or not t[3].endswith("]"):
            raise ValueError(f"not a Journal record: {line!r}")
        out.append(JournalLine(t[1], " ".join(t[5:-3]), t[4], _version(t[-2]), _etag(t[-1])))
    return out


def journal_change(line: JournalLine, versioned: set[str]) -> Change:
    if line.op in JOURNAL_WRITE_OPS:
        kind = "write"
    elif line.op in JOURNAL_DELETE_OPS:
        # A versioned bucket's DELETE without a version id creates a delete marker.
        kind = "delete" if line.version is not None or line.bucket not in versioned else "delete_marker"
    else:
        kind = line.op  # an op the workload never sends: a phantom
    return Change(line.bucket, line.key, kind, line.version, line.etag)


def read_journal(s3: Any, log_bucket: str, prefix: str, seen: set[str] | None = None) -> list[tuple[str, JournalLine]]:
    """The records of the Journal's committed log objects under ``prefix`` (those not in
    ``seen``, which is updated): (object name, line)."""
    out: list[tuple[str, JournalLine]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=log_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"]
            if seen is not None:
                if name in seen:
                    continue
                seen.add(name)
            text = s3.get_object(Bucket=log_bucket, Key=name)["Body"].read().decode("utf-8", "replace")
            out.extend((name, line) for line in parse_journal(text))
    return out


# --------------------------------------------------------------------------- the workload


@dataclass
class Buckets:
    plain: str
    versioned: str


class Workload:
    """One round of the mixed workload in a pair of buckets, its ground truth in a Ledger."""

    def __init__(self, bench: Bench, s3: Any, n: int) -> None:
        import boto3
        from botocore.config import Config

        self.s3 = s3
        self.n = n
        self.m = max(4, n // 40)
        self.threads = bench.threads
        self.missing_bucket = bench.name("jmissing")  # never created
        lab = bench.lab
        self.denied = boto3.session.Session().client(
            "s3",
            endpoint_url=lab.rgw_endpoint,
            aws_access_key_id=lab.access_key,
            aws_secret_access_key="wrong-" + lab.secret_key,
            region_name=S3_REGION,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 1},
            ),
        )

    def puts(self, bucket: str, prefix: str, ledger: Ledger, n: int | None = None) -> float:
        """The timed part: ``n`` (default: the round's) PUTs of 4 KiB on ``threads`` threads; PUT/s."""
        n = self.n if n is None else n
        body = os.urandom(OBJECT_BYTES)
        s3 = self.s3

        def one(i: int) -> None:
            key = f"{prefix}/put/{i:07d}"
            r = s3.put_object(Bucket=bucket, Key=key, Body=body)
            ledger.add(bucket, key, "write", r.get("VersionId"), r["ETag"])

        t0 = time.monotonic()
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, range(n)))
        return n / (time.monotonic() - t0)

    def mixed(self, b: Buckets, p: str, ledger: Ledger) -> int:
        """The untimed part; how many requests it sent."""
        s3, m = self.s3, self.m
        u, v = b.plain, b.versioned
        sent = Counter[str]()
        quarter = max(1, m // 4)

        def put(bucket: str, key: str, **kw: Any) -> Any:
            sent["put"] += 1
            return s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(OBJECT_BYTES), **kw)

        def k(i: int) -> str:
            return f"{p}/put/{i:07d}"

        def overwrite(i: int) -> None:
            r = put(u, k(i))
            ledger.add(u, k(i), "write", r.get("VersionId"), r["ETag"])

        def copy(i: int) -> None:
            dst = f"{p}/copy/{i:07d}"
            sent["copy"] += 1
            r = s3.copy_object(Bucket=u, Key=dst, CopySource={"Bucket": u, "Key": k(i)})
            ledger.add(u, dst, "write", r.get("VersionId"), r["CopyObjectResult"]["ETag"])

        def multipart(bucket: str, key: str) -> None:
            sent["multipart"] += 3
            up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            part = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=1, Body=os.urandom(OBJECT_BYTES))
            r = s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
            )
            ledger.add(bucket, key, "write", r.get("VersionId"), r["ETag"])

        def delete(i: int) -> None:
            sent["delete"] += 1
            s3.delete_object(Bucket=u, Key=k(i))
            ledger.add(u, k(i), "delete")

        def delete_missing(j: int) -> None:
            key = f"{p}/missing/{j}"
            sent["delete"] += 1
            s3.delete_object(Bucket=u, Key=key)
            ledger.refuse(u, key, "DELETE of a missing key (no-op)")

        def multi_delete() -> None:
            present = [k(i) for i in range(3 * m, 4 * m)]
            absent = [f"{p}/missing-multi/{j}" for j in range(quarter)]
            sent["multi_delete"] += 1
            r = s3.delete_objects(Bucket=u, Delete={"Objects": [{"Key": x} for x in present + absent]})
            if r.get("Errors"):
                raise RuntimeError(f"multi-object delete: {r['Errors'][:3]}")
            for d in r.get("Deleted", []):
                if d["Key"] in present:
                    ledger.add(u, d["Key"], "delete")
                else:
                    ledger.refuse(u, d["Key"], "multi-object delete of a missing key (no-op)")

        def refused_put(client: Any, bucket: str, key: str, status: int, cause: str, **kw: Any) -> None:
            sent["refused"] += 1
            try:
                r = client.put_object(Bucket=bucket, Key=key, Body=os.urandom(OBJECT_BYTES), **kw)
            except ClientError as ex:
                got = ex.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if got != status:
                    raise
                ledger.refuse(bucket, key, cause)
                return
            # Accepted after all: a mutation like any other (the ledger says what happened).
            say(f"journal: expected HTTP {status} ({cause}) for {bucket}/{key}, the PUT succeeded")
            ledger.add(bucket, key, "write", r.get("VersionId"), r["ETag"])

        def unicode() -> None:
            keys = [f"{p}/ünï côdé/{j}" for j in range(2)]
            for key in keys:
                r = put(u, key)
                ledger.add(u, key, "write", r.get("VersionId"), r["ETag"])
            sent["delete"] += 1
            s3.delete_object(Bucket=u, Key=keys[0])
            ledger.add(u, keys[0], "delete")

        def versions(j: int) -> None:
            key = f"{p}/v/{j}"
            r1, r2 = put(v, key), put(v, key)
            ledger.add(v, key, "write", r1["VersionId"], r1["ETag"])
            ledger.add(v, key, "write", r2["VersionId"], r2["ETag"])
            sent["delete"] += 2
            dm = s3.delete_object(Bucket=v, Key=key)
            ledger.add(v, key, "delete_marker", dm["VersionId"])
            s3.delete_object(Bucket=v, Key=key, VersionId=r1["VersionId"])
            ledger.add(v, key, "delete", r1["VersionId"])

        def versioned_refused(j: int) -> None:
            key = f"{p}/vk/{j}"
            r = put(v, key)
            ledger.add(v, key, "write", r["VersionId"], r["ETag"])
            refused_put(s3, v, key, 412, "412 If-None-Match PUT (versioned bucket)", IfNoneMatch="*")

        def versioned_multi_delete() -> None:
            keys = [f"{p}/vm/{j}" for j in range(m)]
            vids = {}
            for key in keys:
                r = put(v, key)
                vids[key] = r["VersionId"]
                ledger.add(v, key, "write", r["VersionId"], r["ETag"])
            half = len(keys) // 2
            objects = [{"Key": x, "VersionId": vids[x]} for x in keys[:half]] + [{"Key": x} for x in keys[half:]]
            sent["multi_delete"] += 1
            r = s3.delete_objects(Bucket=v, Delete={"Objects": objects})
            if r.get("Errors"):
                raise RuntimeError(f"versioned multi-object delete: {r['Errors'][:3]}")
            for d in r.get("Deleted", []):
                if d["Key"] in keys[:half]:
                    ledger.add(v, d["Key"], "delete", d.get("VersionId"))
                else:
                    ledger.add(v, d["Key"], "delete_marker", d.get("DeleteMarkerVersionId"))

        tasks: list[Callable[[], None]] = []
        tasks += [partial(overwrite, i) for i in range(m)]
        tasks += [partial(copy, i) for i in range(m, m + m // 2)]
        tasks += [partial(multipart, u, f"{p}/mp/{j}") for j in range(2)]
        tasks += [partial(delete, i) for i in range(2 * m, 3 * m)]
        tasks += [partial(delete_missing, j) for j in range(quarter)]
        tasks += [multi_delete, unicode]
        tasks += [
            partial(refused_put, s3, u, k(i), 412, "412 If-None-Match PUT", IfNoneMatch="*")
            for i in range(4 * m, 4 * m + max(2, m // 2))
        ]
        tasks += [partial(refused_put, self.denied, u, f"{p}/denied/{j}", 403, "403 wrong secret") for j in range(quarter)]
        tasks += [
            partial(refused_put, s3, self.missing_bucket, f"{p}/nobucket/{j}", 404, "404 no such bucket")
            for j in range(quarter)
        ]
        tasks += [partial(versions, j) for j in range(max(2, m // 2))]
        tasks += [partial(versioned_refused, j) for j in range(quarter)]
        tasks += [versioned_multi_delete, partial(multipart, v, f"{p}/vmp/0")]
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda f: f(), tasks))
        return sum(sent.values())


def remove_all(s3: Any, bucket: str) -> None:
    """Delete every version, delete marker and upload of ``bucket``, then the bucket."""
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            objs = [
                {"Key": o["Key"], "VersionId": o["VersionId"]}
                for o in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for i in range(0, len(objs), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objs[i : i + 1000], "Quiet": True})
        for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        s3.delete_bucket(Bucket=bucket)
    except ClientError as ex:
        if ex.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise


# --------------------------------------------------------------------------- lag


class _Poller(LogPoller):
    """Every POLL s: our new committed log objects and the Journal's new log objects; the first
    time each (bucket, key) was seen in each."""

    def __init__(self, serve: ServeProcess, s3: Any, log_bucket: str, buckets: list[str]) -> None:
        super().__init__(serve, name="journal-lag-poller", every=POLL)
        self.s3 = s3
        self.log_bucket = log_bucket
        self.buckets = set(buckets)
        self.ours: dict[tuple[str, str], float] = {}
        self.journal: dict[tuple[str, str], float] = {}
        self._names: set[str] = set()

    def on_record(self, rec: Any, t: float) -> None:
        if rec.bucket in self.buckets:
            self.ours.setdefault((rec.bucket, rec.key), t)

    def poll(self) -> None:
        super().poll()
        for bucket in self.buckets:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.log_bucket, Prefix=f"{bucket}/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    if name in self._names:
                        continue
                    t = time.time()
                    body = self.s3.get_object(Bucket=self.log_bucket, Key=name)["Body"].read()
                    for line in parse_journal(body.decode("utf-8", "replace")):
                        self.journal.setdefault((line.bucket, line.key), t)
                    self._names.add(name)


@dataclass
class LagRun:
    """One lag bucket: PUTs at ``rate`` for ``window`` s (measured), then tail PUTs until every
    measured record is visible in the Journal (or ``extra`` s more), then ``IDLE`` s of quiet."""

    bucket: str
    roll: int
    rate: float
    window: float
    extra: float
    put_at: dict[str, float] = field(default_factory=dict)
    tail_at: dict[str, float] = field(default_factory=dict)
    gave_up: bool = False
    tail_invisible_journal: int = 0
    tail_invisible_ours: int = 0
    error: BaseException | None = None

    def write(self, s3: Any, poller: _Poller) -> None:
        try:
            self._write(s3, poller)
        except BaseException as ex:  # noqa: BLE001 - reported by the figure
            self.error = ex

    def _write(self, s3: Any, poller: _Poller) -> None:
        body = b"x" * OBJECT_BYTES
        t0 = next_t = time.monotonic()
        i = 0
        while True:
            elapsed = time.monotonic() - t0
            measuring = elapsed < self.window
            if not measuring:
                if all((self.bucket, k) in poller.journal for k in self.put_at):
                    break
                if elapsed > self.window + self.extra:
                    self.gave_up = True
                    break
            key = f"{'m' if measuring else 't'}/{i:06d}"
            s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            (self.put_at if measuring else self.tail_at)[key] = time.time()
            i += 1
            next_t = max(next_t + 1 / self.rate, time.monotonic())
            time.sleep(max(0.0, next_t - time.monotonic()))
        time.sleep(IDLE)
        self.tail_invisible_journal = sum(1 for k in self.tail_at if (self.bucket, k) not in poller.journal)
        self.tail_invisible_ours = sum(1 for k in self.tail_at if (self.bucket, k) not in poller.ours)

    def lags(self, seen: dict[tuple[str, str], float]) -> list[float]:
        return [seen[(self.bucket, k)] - t for k, t in self.put_at.items() if (self.bucket, k) in seen]


# --------------------------------------------------------------------------- the figure


def run(bench: Bench) -> list[Figure]:
    release, version = lab_release(bench.lab, bench.s3())
    if release == RELEASE:
        return _run(bench, version)
    why = (
        f"the lab ({bench.lab.rgw_endpoint}) runs Ceph {release or '(release unknown)'}{' ' + version if version else ''}; "
        "bucket logging in Journal mode needs Tentacle (20.2): `tools/run-bench journal` boots a tentacle lab, "
        "or pass --lab DIR of one"
    )
    if not bench.throwaway:
        raise FigureSkipped(why)
    # The run's own throwaway lab is of another release: boot a tentacle one for this figure.
    directory = bench.tmp / "lab-tentacle"
    try:
        lab = lab_up(directory, RELEASE)
    except SystemExit as ex:
        raise FigureSkipped(f"{why}; booting one failed: {str(ex).splitlines()[-1]}") from None
    sub = Bench(
        lab=lab,
        tag=bench.tag,
        tmp=bench.tmp,
        scale=bench.scale,
        quick=bench.quick,
        profile=bench.profile,
        threads=bench.threads,
        throwaway=True,
    )
    try:
        release, version = lab_release(lab, sub.s3())
        if release != RELEASE:
            raise FigureSkipped(f"tools/ceph-lab up --release {RELEASE} gave a {release} lab")
        return _run(sub, version)
    finally:
        sub.close()
        lab_down(directory)


def _run(bench: Bench, version: str) -> list[Figure]:
    threads = bench.threads
    s3 = bench.s3(pool=2 * threads + 8)
    n = bench.size(800, 150, minimum=50)
    reps = bench.reps(4, 1)
    full = not bench.quick
    buckets = {c: Buckets(bench.name(f"j{c}"), bench.name(f"j{c}-v")) for c in CONFIGS}
    lag_short = bench.name(f"jlag{ROLL_SHORT}")
    lag_default = bench.name("jlagdef")
    lag_buckets = [lag_short, *([lag_default] if full else [])]
    log_bucket = bench.name("jlog")
    journal_sources = [b for c in ("journal", "both") for b in (buckets[c].plain, buckets[c].versioned)]
    versioned = {b.versioned for b in buckets.values()}
    logging = BucketLogging(bench)
    serve: ServeProcess | None = None
    created: list[str] = []
    ledgers = {c: Ledger() for c in CONFIGS}
    rates: dict[str, list[float]] = {c: [] for c in CONFIGS}
    mixed_requests = 0
    try:
        for b in [*(x for c in CONFIGS for x in (buckets[c].plain, buckets[c].versioned)), *lag_buckets, log_bucket]:
            s3.create_bucket(Bucket=b)
            created.append(b)
        for c in CONFIGS:
            s3.put_bucket_versioning(Bucket=buckets[c].versioned, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_policy(
            Bucket=log_bucket,
            Policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "BenchJournal",
                            "Effect": "Allow",
                            "Principal": {"Service": LOGGING_PRINCIPAL},
                            "Action": "s3:PutObject",
                            "Resource": f"arn:aws:s3:::{log_bucket}/*",
                        }
                    ],
                }
            ),
        )
        confs = {src: logging.journal(src, log_bucket, ROLL_SHORT) for src in [*journal_sources, lag_short]}
        if full:
            confs[lag_default] = logging.journal(lag_default, log_bucket, None)
        roll_default = int(confs[lag_default]["objectRollTime"]) if full else None
        say(
            f"journal: Journal logging on {len(confs)} buckets into {log_bucket} "
            f"(ObjectRollTime {ROLL_SHORT} s{f', and the default {roll_default} s' if full else ''})"
        )
        followed = [buckets[c].plain for c in ("serve", "both")] + [buckets[c].versioned for c in ("serve", "both")]
        serve = ServeProcess(bench, s3, what="journal", buckets=[*followed, *lag_buckets])
        workload = Workload(bench, s3, n)
        # Warm-up: a prefix of its own, left out of every count.
        for c in CONFIGS:
            workload.puts(buckets[c].plain, "warmup", Ledger(), max(20, n // 10))

        # ---------------------------------------------------------------- rounds
        waits: list[float] = []
        for rep in range(reps):
            order = CONFIGS[rep % len(CONFIGS) :] + CONFIGS[: rep % len(CONFIGS)]
            for c in order:
                prefix = f"r{rep}"
                with_serve = c in ("serve", "both")
                if with_serve:
                    serve.start()
                    waits.append(serve.wait_watermark(time.time()))
                rate = workload.puts(buckets[c].plain, prefix, ledgers[c])
                t_mixed = time.monotonic()
                mixed_requests = workload.mixed(buckets[c], prefix, ledgers[c])
                t_mixed = time.monotonic() - t_mixed
                if with_serve:
                    serve.check()
                    serve.wait_watermark(time.time() + 0.001, timeout=240)
                    serve.stop()
                rates[c].append(rate)
                say(f"journal rep {rep + 1}/{reps} {c:8}: {rate:6.1f} PUT/s (then {mixed_requests} mixed requests in {t_mixed:.1f}s)")

        # ---------------------------------------------------------------- counts
        flush_s = {src: round(logging.flush(src), 2) for src in journal_sources}
        say(f"journal: flushed the Journal of {len(flush_s)} buckets (the tail of the count only)")
        ours_records: dict[str, list[Change]] = {"serve": [], "both": []}
        owner = {b: c for c in ("serve", "both") for b in (buckets[c].plain, buckets[c].versioned)}
        ours_objects = 0
        for obj in list(list_logs(serve.target)):
            ours_objects += 1
            for rec in read_object(serve.target, obj.name):
                cfg = owner.get(rec.bucket)
                if cfg is not None and not rec.key.startswith("warmup/"):
                    ours_records[cfg].append(Change(rec.bucket, rec.key, rec.op, _version(rec.version_id), _etag(rec.etag)))
        journal_records: dict[str, list[Change]] = {"journal": [], "both": []}
        journal_objects = 0
        for c in ("journal", "both"):
            for src in (buckets[c].plain, buckets[c].versioned):
                lines = read_journal(s3, log_bucket, f"{src}/")
                journal_objects += len({obj_name for obj_name, _ in lines})
                journal_records[c] += [
                    journal_change(line, versioned) for _, line in lines if not line.key.startswith("warmup/")
                ]
        counts = {
            "ours_serve": compare(ledgers["serve"], ours_records["serve"]),
            "ours_both": compare(ledgers["both"], ours_records["both"]),
            "journal_journal": compare(ledgers["journal"], journal_records["journal"]),
            "journal_both": compare(ledgers["both"], journal_records["both"]),
        }
        for which, count in counts.items():
            say(f"journal: {which}: {_count_text(count)}")

        # ---------------------------------------------------------------- lag
        serve.start()
        serve.wait_watermark(time.time())
        poller = _Poller(serve, s3, log_bucket, lag_buckets)
        poller.poll()  # skip what is there already
        poller.ours.clear()
        poller.journal.clear()
        poller.start()
        runs = [LagRun(lag_short, ROLL_SHORT, 5.0, bench.size(60, 20, minimum=10), ROLL_SHORT + 60)]
        if full:
            assert roll_default is not None
            # One whole roll period, less 2 s: the log object is named after the second of its
            # first record, so a record in the last second of the period could land in the next
            # object and wait a second roll period.
            runs.append(LagRun(lag_default, roll_default, 2.0, roll_default - 2.0, roll_default + 60))
        say(
            "journal lag: "
            + "; ".join(f"{r.bucket}: roll {r.roll} s, {r.rate:g} PUT/s for {r.window:g} s, then tail PUTs" for r in runs)
        )
        writers = [threading.Thread(target=r.write, args=(s3, poller), name=f"lag-{r.roll}") for r in runs]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        for r in runs:
            if r.error is not None:
                raise r.error
        deadline = time.monotonic() + 120
        while any(len(r.lags(poller.ours)) < len(r.put_at) for r in runs) and time.monotonic() < deadline:
            serve.check()
            time.sleep(0.5)
        poller.stop.set()
        poller.join()
        if poller.error is not None:
            raise poller.error
        serve.stop()
    finally:
        if serve is not None:
            serve.close()
        for src in [*journal_sources, *lag_buckets]:
            if src in created:
                try:
                    logging.disable(src)
                except ClientError as ex:
                    say(f"WARNING: disabling bucket logging of {src}: {ex}")
        for b in reversed(created):
            try:
                remove_all(s3, b)
            except ClientError as ex:
                say(f"WARNING: removing bucket {b}: {ex}")

    # -------------------------------------------------------------------- figures
    common: dict[str, Any] = {
        "ceph": version,
        "puts_per_round": n,
        "object_bytes": OBJECT_BYTES,
        "mixed_requests_per_round": mixed_requests,
        "threads": threads,
        "reps": reps,
        "journal_roll_s": ROLL_SHORT,
        "serve": "default [source]/[collector] timings (poll 1 s, interval 5 s, settle 2 s)",
    }
    runs_params = {c: [round(x, 1) for x in v] for c, v in rates.items()}
    base = median(rates["none"])
    figures = [
        Figure(
            GROUP,
            f"journal_put_with_{name}",
            "PUT/s",
            median(rates[c]),
            base,
            "nothing (no serve, no bucket logging)",
            params={**common, "runs": runs_params, "catch_up_s": [round(w, 1) for w in waits]},
        )
        for name, c in (("serve", "serve"), ("journal", "journal"), ("both", "both"))
    ]
    figures.append(
        Figure(
            GROUP,
            "journal_put_serve_vs_journal",
            "PUT/s",
            median(rates["serve"]),
            median(rates["journal"]),
            "bucket logging in Journal mode (peer)",
            params={**common, "runs": runs_params},
        )
    )
    count_params = {
        **common,
        "counts": counts,
        "log_objects": {"ours": ours_objects, "journal": journal_objects},
        "journal_flush_s": flush_s,
    }
    for name, ours_key, theirs_key, what in (
        ("journal_records_exact", "ours_serve", "journal_journal", "Journal-mode bucket logging, own buckets (c)"),
        ("journal_records_exact_both", "ours_both", "journal_both", "Journal-mode bucket logging, same buckets (d)"),
    ):
        ours_count, theirs_count = counts[ours_key], counts[theirs_key]
        figures.append(
            Figure(
                GROUP,
                name,
                "fraction",
                ours_count["exact"],
                theirs_count["exact"],
                what,
                params=count_params,
                summary=f"ours: {_count_text(ours_count)} | Journal: {_count_text(theirs_count)}",
            )
        )
    for r in runs:
        ours, theirs = r.lags(poller.ours), r.lags(poller.journal)
        if not ours or not theirs:
            raise RuntimeError(f"journal lag at roll {r.roll} s: matched {len(ours)} of our records, {len(theirs)} Journal")
        params = {
            **common,
            "roll_s": r.roll,
            "rate_per_s": r.rate,
            "window_s": r.window,
            "puts_measured": len(r.put_at),
            "puts_tail": len(r.tail_at),
            "poll_s": POLL,
            "invisible_ours": len(r.put_at) - len(ours),
            "invisible_journal": len(r.put_at) - len(theirs),
            "journal_gave_up": r.gave_up,
            "max_ours_s": round(max(ours), 2),
            "max_journal_s": round(max(theirs), 2),
            "idle_s": IDLE,
            "tail_invisible_after_idle": {"ours": r.tail_invisible_ours, "journal": r.tail_invisible_journal},
        }
        if r.roll == ROLL_SHORT and not full:
            params["note"] = "default roll time (300 s) not measured with --quick: it needs over 5 minutes"
        label = "default" if full and r.bucket == lag_default else f"roll{r.roll}"
        for p in (50, 99):
            figures.append(
                Figure(
                    GROUP,
                    f"journal_lag_p{p}_{label}",
                    "s",
                    percentile(ours, p),
                    percentile(theirs, p),
                    f"Journal log object visible, ObjectRollTime {r.roll} s",
                    higher_is_better=False,
                    params=params,
                    summary=(
                        f"{r.tail_invisible_journal}/{len(r.tail_at)} Journal records and {r.tail_invisible_ours} of ours "
                        f"still invisible {IDLE:g} s after the last write (lazy roll)"
                        + ("; the default roll time (300 s) is not measured with --quick" if not full else "")
                    )
                    if p == 99
                    else None,
                )
            )
    if not full:
        say("journal: lag at the default roll time (300 s) skipped with --quick (needs over 5 minutes)")
    return figures


def _count_text(c: dict[str, Any]) -> str:
    text = f"{c['mutations']} mutations, {c['missing']} missing, {c['phantom']} phantom, {c['duplicate']} duplicate"
    if c["phantom_by_cause"]:
        text += " (" + ", ".join(f"{why}: {k}" for why, k in sorted(c["phantom_by_cause"].items())) + ")"
    if c["version_id_absent"]:
        text += f", {c['version_id_absent']} without their version id"
    return text
