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
from changelog.pipeline.collector import Collector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.store import ObjectStore
from changelog.pipeline.targets import S3Target
from rgw_module.admin import AdminClient
from rgw_module.follower import Follower

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REGION = "default"  # the zonegroup name radosgw signs with

T = TypeVar("T")


class Counted:
    """An S3 client whose HTTP requests are counted by operation (a botocore ``before-send``
    hook on the client)."""

    def __init__(self, endpoint: str, key: str, secret: str, *, pool: int = 32) -> None:
        self.client = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION, pool=pool)
        self.ops: Counter[str] = Counter()
        self._mu = threading.Lock()
        self.client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", **kw: Any) -> None:
        with self._mu:
            self.ops[event_name.rsplit(".", 1)[-1]] += 1

    def reset(self) -> None:
        with self._mu:
            self.ops.clear()

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


# --------------------------------------------------------------------------- the change logs


class ChangeLogs:
    """The RGW follower and the collector writing the source bucket's change logs (an 8-shard
    index in ``store``, logs at the root of the log bucket): what every consumer reads."""

    def __init__(self, store: ObjectStore, admin: AdminClient, src_bucket: str) -> None:
        self.index = ChangeIndex(store, shards=8)
        source = SourceConfig(buckets=(src_bucket,), poll_interval=0.2, trim_datalog=False, lease_ttl=30.0)
        self.follower = Follower(self.index, admin, source)
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
        ours_ops = dict(self.ours.ops)
        if before_theirs:
            say(before_theirs)
        mirror, theirs_s = self.mirror()
        return Round(result, mirror, ours_s, theirs_s, ours_ops, dict(self.theirs.ops))


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
