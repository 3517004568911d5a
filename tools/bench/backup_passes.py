"""What the two backup benchmarks share (figure 5 in ``tools/bench/backup.py`` and the standalone
``python -m tools.bench.backup_standalone``): the change logs they back up from, the objects that
change between the full and the incremental pass, and the two tools' passes, each with its S3
requests counted on the wire and its wall time measured:

* **ours**: ``BackupRunner.run()``: reads the log objects after the previous checkpoint, copies
  the changed objects into the content-addressed store, writes a manifest.
* **baseline**: what a listing-based sync does (rclone's default way): list the source and the
  mirror, HEAD every source object to compare it (size, ETag, metadata: a listing has no user
  metadata), GET+PUT what differs, DELETE what is gone (``mirror_sync``).

The follower's and the collector's own requests are not counted: they run anyway, for every
consumer of the change log.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from changelog.config import CollectorConfig, SourceConfig
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.runner import BackupRunner, RunResult
from changelog.consumers.backup.source import Source, make_client
from changelog.consumers.backup.store import BackupStore
from changelog.pipeline.backends.rados import OmapReader
from changelog.pipeline.collector import Collector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.store import ObjectStore
from changelog.pipeline.targets import S3Target
from rgw_module.admin import AdminClient
from rgw_module.bucket_index import BucketIndexReader, LazyOmap, OmapSource
from rgw_module.follower import Follower

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REGION = "default"  # the zonegroup name radosgw signs with

T = TypeVar("T")


# A request as counted: (operation, bucket, the first path segment with its "/" of the key, or of
# a listing's prefix; "(root)" for a key with no "/", "" for a bucket request without prefix).
Call = tuple[str, str, str]
# Requests to the blob store that are part of storing a changed object's content (the exists
# check of one blob, its upload).
BLOB_OPS = frozenset({"HeadObject", "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"})


def request_call(op: str, url: str) -> Call:
    """The ``Call`` of a path-style S3 request to ``url``."""
    parts = urllib.parse.urlsplit(url)
    bucket, _, key = urllib.parse.unquote(parts.path).lstrip("/").partition("/")
    if not key:
        prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
        return (op, bucket, prefix.split("/", 1)[0] + "/" if "/" in prefix else prefix)
    return (op, bucket, key.split("/", 1)[0] + "/" if "/" in key else "(root)")


class Counted:
    """An S3 client whose HTTP requests are counted by operation, and by operation, bucket and
    key prefix (a botocore ``before-send`` hook on the client)."""

    def __init__(self, endpoint: str, key: str, secret: str, *, pool: int = 32) -> None:
        self.client = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION, pool=pool)
        self.ops: Counter[str] = Counter()
        self.calls: Counter[Call] = Counter()
        self._mu = threading.Lock()
        self.client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", request: Any = None, **kw: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        call = request_call(op, str(getattr(request, "url", "")))
        with self._mu:
            self.ops[op] += 1
            self.calls[call] += 1

    def reset(self) -> None:
        with self._mu:
            self.ops.clear()
            self.calls.clear()

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def parallel(fn: Callable[[T], Any], items: Iterable[T], workers: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def body(i: int, gen: int, size: int) -> bytes:
    """Object ``i``'s content at generation ``gen``: ``size`` bytes that differ between both."""
    head = f"object {i} generation {gen} ".encode()
    return (head * (size // len(head) + 1))[:size]


@dataclass(frozen=True, slots=True)
class BackupBuckets:
    """The benchmark's buckets: the source, its change logs, our backup store, the baseline's mirror."""

    src: str
    logs: str
    store: str
    mirror: str

    @classmethod
    def named(cls, name: Callable[[str], str]) -> BackupBuckets:
        return cls(*(name(x) for x in ("src", "logs", "store", "mirror")))

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.src, self.logs, self.store, self.mirror)


def is_copy(call: Call, buckets: BackupBuckets) -> bool:
    """Whether a request is part of copying a changed object (the rest detects what changed):
    reading it from the source (GET), storing its content (the blob's exists check and upload)
    or writing it to the mirror (PUT), and the mirror's DELETE of a deleted object. Probes
    (HEAD, listings of the source), the change logs, the watermark, manifests, run markers and
    segments, locks and the listing of ``blobs/`` (every blob's exists check at once) detect."""
    op, bucket, top = call
    if bucket == buckets.src:
        return op == "GetObject"
    if bucket == buckets.store:
        return top == "blobs/" and op in BLOB_OPS
    if bucket == buckets.mirror:
        return op in ("PutObject", "DeleteObject")
    return False


def split_requests(calls: dict[Call, int], buckets: BackupBuckets) -> tuple[int, dict[str, int]]:
    """(copy requests, detection requests by "operation role/prefix"), ``is_copy`` telling them
    apart; the role is which of ``buckets`` the request went to."""
    roles = {buckets.src: "src", buckets.logs: "logs", buckets.store: "store", buckets.mirror: "mirror"}
    copy = 0
    detect: Counter[str] = Counter()
    for call, n in calls.items():
        if is_copy(call, buckets):
            copy += n
        else:
            op, bucket, top = call
            detect[f"{op} {roles.get(bucket, bucket)}/{top}"] += n
    return copy, dict(sorted(detect.items()))


# --------------------------------------------------------------------------- the change logs


class ChangeLogs:
    """The RGW follower and the collector writing the source bucket's change logs (an 8-shard
    index in ``store``, logs at the root of the log bucket): what every consumer reads.

    The follower gets each write's size and ETag as ``serve`` does by default (``[source]
    object_info = "index"``): from the bucket index entries, read over RADOS with ``ceph_conf``
    and ``keyring`` (the lab's client.admin); so the backup has no record to probe."""

    def __init__(
        self, store: ObjectStore, admin: AdminClient, src_bucket: str, *, ceph_conf: str, keyring: str | None
    ) -> None:
        self.index = ChangeIndex(store, shards=8)
        source = SourceConfig(
            buckets=(src_bucket,), poll_interval=0.2, trim_datalog=False, lease_ttl=30.0, object_info="index"
        )

        def open_omap() -> OmapSource:
            return OmapReader(conffile=ceph_conf, keyring=keyring)

        self._omap = LazyOmap(open_omap)
        self.follower = Follower(
            self.index, admin, source, bucket_index=BucketIndexReader(self._omap, source.index_pool)
        )
        self.collector: Collector | None = None

    def start(self, log_bucket: str, client: S3Client) -> bool:
        """Take the follower's lease (False: busy) and start the collector, writing with ``client``."""
        if not self.follower.acquire():
            return False
        self.collector = Collector(
            self.index,
            S3Target(log_bucket, "", client=client),
            CollectorConfig(settle=0.0, lease_ttl=30.0),
            watermark_cap=self.follower.caught_up_until_us,
        )
        return True

    def catch_up(self, timeout: float) -> None:
        """One sweep: the follower reads radosgw's logs up to now, the collector writes them out."""
        assert self.collector is not None, "start() first"
        self.follower.run_until_caught_up(timeout=timeout)
        self.collector.flush()

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()
        self.follower.close()
        self._omap.close()


def etag_counts(records: Iterable[LogRecord], bucket: str, *, since_baseline: bool = True) -> tuple[int, int]:
    """(write records of ``bucket``, how many of them have an ETag); with ``since_baseline``
    only the records of writes (not the full sync's ``baseline`` records)."""
    n = with_etag = 0
    for r in records:
        if r.bucket != bucket or r.op != "write" or (since_baseline and r.baseline):
            continue
        n += 1
        with_etag += r.etag is not None
    return n, with_etag


# --------------------------------------------------------------------------- the change


@dataclass(frozen=True, slots=True)
class Changes:
    """The objects that change between the full and the incremental pass."""

    changed: int
    overwritten: list[int]
    new: int
    deleted: list[int]

    def expected(self, objects: int) -> int:
        """Objects in the source after the change."""
        return objects + self.new - len(self.deleted)

    def text(self) -> str:
        return f"{len(self.overwritten)} overwritten, {self.new} new, {len(self.deleted)} deleted"


def plan_changes(
    objects: int, fraction: float, weights: Sequence[int], rnd: random.Random, *, minimum: int
) -> Changes:
    """``fraction`` of ``objects`` (at least ``minimum``), split by ``weights`` (overwritten : new
    : deleted); which ones drawn from ``rnd``."""
    k = max(minimum, round(objects * fraction))
    n_over = round(k * weights[0] / sum(weights))
    n_new = round(k * weights[1] / sum(weights))
    n_del = k - n_over - n_new
    picked = rnd.sample(range(objects), n_over + n_del)
    return Changes(k, picked[:n_over], n_new, picked[n_over:])


def apply_changes(s3: S3Client, bucket: str, changes: Changes, *, objects: int, size: int, workers: int) -> None:
    """Overwrite ``data/N``, add ``new/N``, delete ``data/N`` as ``changes`` says."""
    parallel(
        lambda i: s3.put_object(Bucket=bucket, Key=f"data/{i:07d}", Body=body(i, 1, size)),
        changes.overwritten,
        workers,
    )
    parallel(
        lambda i: s3.put_object(Bucket=bucket, Key=f"new/{i:07d}", Body=body(objects + i, 1, size)),
        range(changes.new),
        workers,
    )
    parallel(lambda i: s3.delete_object(Bucket=bucket, Key=f"data/{i:07d}"), changes.deleted, workers)


def as_expected(changes: Changes, objects: int, backed_up: int, mirror: dict[str, int]) -> bool:
    """Whether the backup holds every object after the change and the mirror copied and deleted
    exactly the changed ones."""
    return (
        backed_up == changes.expected(objects)
        and mirror["copied"] == len(changes.overwritten) + changes.new
        and mirror["deleted"] == len(changes.deleted)
    )


# --------------------------------------------------------------------------- the two passes


@dataclass(frozen=True, slots=True)
class Round:
    """One pass of each tool: our backup's result, the mirror's counts, and each one's wall time
    and S3 requests by operation."""

    result: RunResult
    mirror: dict[str, int]
    ours_s: float
    theirs_s: float
    ours_ops: dict[str, int]
    theirs_ops: dict[str, int]
    ours_calls: dict[Call, int]
    theirs_calls: dict[Call, int]

    @property
    def ours_requests(self) -> int:
        return sum(self.ours_ops.values())

    @property
    def theirs_requests(self) -> int:
        return sum(self.theirs_ops.values())


class Passes:
    """Our backup and the listing-based mirror of the source bucket, each through a client of
    its own whose requests are counted (``ours``, ``theirs``), each timed."""

    def __init__(
        self, endpoint: str, key: str, secret: str, buckets: BackupBuckets, *, workers: int, progress: bool | None
    ) -> None:
        self.ours = Counted(endpoint, key, secret, pool=2 * workers)
        self.theirs = Counted(endpoint, key, secret, pool=2 * workers)
        self.buckets = buckets
        self.workers = workers
        self.progress = progress

    def backup(self) -> tuple[RunResult, float]:
        """``BackupRunner.run()`` over the change logs: its result and its wall time."""
        b, client = self.buckets, self.ours.client
        self.ours.reset()
        t = time.monotonic()
        result = BackupRunner(
            BackupStore(S3Target(b.store, "", client=client)),
            S3Target(b.logs, "", client=client),
            Source(client),
            buckets=[b.src],
            workers=self.workers,
            progress=self.progress,
        ).run()
        return result, time.monotonic() - t

    def mirror(self) -> tuple[dict[str, int], float]:
        """``mirror_sync`` of the source into the mirror: its counts and its wall time."""
        self.theirs.reset()
        t = time.monotonic()
        stats = mirror_sync(self.theirs.client, self.buckets.src, self.buckets.mirror, workers=self.workers)
        return stats, time.monotonic() - t

    def both(self, say: Callable[[str], None], before_ours: str | None, before_theirs: str | None) -> Round:
        """Our backup, then the mirror, each announced (when given a message) as it starts."""
        if before_ours:
            say(before_ours)
        result, ours_s = self.backup()
        ours_ops, ours_calls = dict(self.ours.ops), dict(self.ours.calls)
        if before_theirs:
            say(before_theirs)
        mirror, theirs_s = self.mirror()
        return Round(result, mirror, ours_s, theirs_s, ours_ops, dict(self.theirs.ops), ours_calls, dict(self.theirs.calls))


def backed_up(s3: S3Client, buckets: BackupBuckets, backup_id: str | None) -> int:
    """How many objects of the source bucket the backup ``backup_id`` holds."""
    latest = mf.load(BackupStore(S3Target(buckets.store, "", client=s3)), backup_id or "")
    return sum(1 for _ in latest.objects(buckets.src))


# --------------------------------------------------------------------------- the listing-based tool


def list_all(s3: S3Client, bucket: str) -> dict[str, tuple[str, int]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["ETag"].strip('"'), int(o["Size"]))
    return out


def mirror_sync(s3: S3Client, src: str, dst: str, *, workers: int, head: bool = True) -> dict[str, int]:
    """List both sides, HEAD every source object to compare, copy what differs, delete what is
    gone. The mirror keeps the source's ETag and metadata in its own metadata."""
    source = list_all(s3, src)
    mirror = list_all(s3, dst)
    stats = {"copied": 0, "deleted": 0, "checked": 0}
    mu = threading.Lock()

    def check(key: str) -> None:
        etag, size = source[key]
        meta: dict[str, str] = {}
        if head:
            h = s3.head_object(Bucket=src, Key=key)
            etag, size, meta = h["ETag"].strip('"'), int(h["ContentLength"]), dict(h.get("Metadata", {}))
        have = mirror.get(key)
        if have is not None and have == (etag, size):
            with mu:
                stats["checked"] += 1
            return
        got = s3.get_object(Bucket=src, Key=key)
        s3.put_object(Bucket=dst, Key=key, Body=got["Body"].read(), Metadata=meta)
        with mu:
            stats["copied"] += 1
            stats["checked"] += 1

    parallel(check, sorted(source), workers)
    gone = sorted(set(mirror) - set(source))
    parallel(lambda k: s3.delete_object(Bucket=dst, Key=k), gone, workers)
    stats["deleted"] = len(gone)
    return stats
