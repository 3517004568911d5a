"""The follower: records every object mutation of one radosgw zone into the change index, from
outside radosgw, through the admin REST API (rgw_module/README.md).

A *sweep* (every ``poll_interval``):

1. reads the data-log shards from their persisted markers to their end (with a bucket list,
   only the shards those buckets log to, after checking that none was resharded): each entry
   names a bucket-index shard that changed; that shard becomes *pending*;
2. resolves buckets it does not know, or whose instance id changed (reshard, deleted and created
   again), and runs a page budget of *full syncs* (baseline records of a bucket's objects);
3. reads each pending bucket-index shard's log from its persisted marker to its end, in pages,
   maps the entries to mutations (``mapping``), records each round of pages with one
   ``ChangeIndex.record_many`` and *then* persists the shards' markers: a crash in between
   replays entries that the index drops by their (source, position) high-water mark (H1);
4. trims the bucket-index logs and data log up to the persisted markers, never beyond.

The data log coalesces (H5): radosgw logs a shard at most once per ``rgw_data_log_window`` (30 s)
and re-logs it later while it stays busy. A shard that had activity therefore stays pending
(*hot*) and is re-read every sweep until it has been quiet for ``hot_seconds``.

``caught_up_until`` (H8) is the start time of the last sweep that read every data-log shard and
every pending shard to its end with no full sync outstanding: every mutation radosgw completed
before it is in the index. The collector caps its watermark with it.

State lives in the index's control object under ``r.`` keys, written only under the follower
lease (fenced), so one follower per zone:

==================================  ===========================================================
``r.boot``                          ``{"time_ns", "done"}``: radosgw's clock at the first start
``r.dl.<nnnn>``                     data-log shard marker
``r.p.<bucket>:<id>:<shard>``       pending bucket-index shard: ``{"hot_until": unix time}``
``r.m.<bucket>:<id>:<shard>``       bucket-index-log marker (bare), last entry recorded
``r.k.<bucket>``                    bucket: ``{"id", "marker", "gen", "shards", "state"}``
``r.f.<bucket>``                    full-sync progress
``r.rq.<bucket>``                   a full sync asked for (``request_full_sync``)
``r.cu``                            caught_up_until, microseconds
==================================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from changelog.errors import LeaseLost, PermanentError, TransientError
from changelog.index import ChangeIndex, RecordResult
from changelog.lease import Lease, make_cookie
from changelog.mutation import Mutation, Op
from changelog.store import WriteOp, omap_iter
from rgw_module.admin import MAX_ENTRIES, AdminClient, BilogInfo, BucketStats, NotFound
from rgw_module.mapping import (
    BucketFilter,
    BucketShard,
    baseline_mutation,
    bilog_marker,
    datalog_shard,
    map_entry,
)

logger = logging.getLogger(__name__)

R = "r."
BOOT_KEY = "r.boot"
DATALOG_PREFIX = "r.dl."
PENDING_PREFIX = "r.p."
MARKER_PREFIX = "r.m."
BUCKET_PREFIX = "r.k."
FULL_PREFIX = "r.f."
REQUEST_PREFIX = "r.rq."
CAUGHT_UP_KEY = "r.cu"
LEASE_NAME = "follower"

# radosgw's rgw_data_log_window is 30 s: a shard is re-logged at most that often while busy, so
# it stays hot for twice that after its last sign of activity.
HOT_SECONDS = 60.0
# A bucket created after the follower's first start (both times from radosgw's clock) was born
# with its bucket-index log complete (log_data was on): it is followed from its first entry, no
# baseline. The first start is read from radosgw's Date header, truncated to whole seconds, so a
# bucket counts as created after it only when it is one full second past it.
FRESH_MARGIN_NS = 1_000_000_000
# Bucket-index shards read per round: each contributes up to one page (1000 entries) to the
# round's record batch, so this bounds memory (H9) while keeping rounds large.
SHARDS_PER_ROUND = 16
# Full-sync listing pages per sweep, so that a huge baseline does not starve incremental work.
FULL_SYNC_PAGES = 8
# With an explicit bucket list only the data-log shards those buckets log to are read each sweep;
# every shard is still read this often, as a safety net.
DATALOG_FULL_INTERVAL = 60.0
# radosgw's default number of index shards for a new bucket (bucket_index_max_shards): the
# data-log shards of a bucket not seen yet are predicted with at least this many.
DEFAULT_INDEX_SHARDS = 11
# Persist caught_up_until at most this often.
CAUGHT_UP_PERSIST_S = 5.0
# Fault-injection points (tests): a hook raising here simulates a crash at that point.
FAULT_STEPS = ("recorded", "datalog", "full.recorded", "trim", "closing", "advance")

T = TypeVar("T")


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _dl_key(n: int) -> str:
    return f"{DATALOG_PREFIX}{n:04d}"


@dataclass(slots=True)
class _Bucket:
    name: str
    bucket_id: str
    marker: str
    gen: int  # ours: bumped on every new instance, full sync or log generation (orders ``seq``)
    shards: int  # of the log generation being followed
    state: str  # "full" | "incr" | "gone"
    log_gen: int = 0  # radosgw's bucket-index-log generation being followed (Reef and later)
    closing: bool = False  # a newer log generation exists: finish this one, then move on

    def encode(self) -> bytes:
        d: dict[str, Any] = {
            "id": self.bucket_id, "marker": self.marker, "gen": self.gen, "shards": self.shards, "state": self.state,
        }  # fmt: skip
        if self.log_gen or self.closing:
            d["log_gen"] = self.log_gen
            d["closing"] = self.closing
        return _json(d)

    @classmethod
    def decode(cls, name: str, raw: bytes) -> _Bucket:
        d = orjson.loads(raw)
        return cls(
            name,
            str(d["id"]),
            str(d.get("marker", "")),
            int(d["gen"]),
            int(d.get("shards", 0)),
            str(d["state"]),
            int(d.get("log_gen", 0)),
            bool(d.get("closing", False)),
        )

    def shard_list(self) -> list[BucketShard]:
        if self.shards <= 0:
            return [BucketShard(self.name, self.bucket_id, -1, self.log_gen)]
        return [BucketShard(self.name, self.bucket_id, n, self.log_gen) for n in range(self.shards)]

    def owns(self, bs: BucketShard) -> bool:
        """Whether ``bs`` is a shard of the instance and log generation being followed."""
        return self.state != "gone" and self.bucket_id == bs.bucket_id and self.log_gen == bs.log_gen

    def outgrown_by(self, bs: BucketShard) -> bool:
        """Whether ``bs`` is of a newer log generation of the same instance (resharded in place)."""
        return self.state != "gone" and self.bucket_id == bs.bucket_id and bs.log_gen > self.log_gen


@dataclass(slots=True)
class _FullSync:
    bucket_id: str
    gen: int
    versions: bool | None = None
    prefix_idx: int = 0
    key_marker: str = ""
    version_marker: str = ""
    counter: int = 0
    started: float = 0.0

    def encode(self) -> bytes:
        return _json(dataclasses.asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> _FullSync:
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class _Shard:
    bs: BucketShard
    marker: str | None = None  # None until loaded from the control object
    hot_until: float = 0.0
    persisted_hot: float = 0.0
    since: float = 0.0  # when it became pending and not yet read to its end (lag)
    at_end: bool = False
    trimmed: str = ""
    last_trim: float = float("-inf")


@dataclass(frozen=True, slots=True)
class SweepResult:
    complete: bool
    started: float
    recorded: int
    duplicates: int
    entries: int
    baseline: int


@dataclass(slots=True)
class _Stats:
    mutations_recorded: int = 0
    mutations_duplicate: int = 0
    baseline_recorded: int = 0
    entries_read: int = 0
    entries_skipped: int = 0
    sweeps: int = 0
    complete_sweeps: int = 0
    full_syncs_started: int = 0
    full_syncs_done: int = 0
    bilog_trims: int = 0
    datalog_trims: int = 0
    source_errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Stopped(Exception):
    """The follower was asked to stop between two units of work."""


class Follower:
    """Follows one radosgw zone into ``index``. ``run(stop)`` is the service loop; ``sweep()``
    one step (the follower lease must be held: see ``acquire``)."""

    def __init__(
        self,
        index: ChangeIndex,
        admin: AdminClient,
        *,
        buckets: Iterable[str] | None = None,
        prefixes: Mapping[str, Sequence[str]] | None = None,
        exclude_buckets: Iterable[str] = (),
        lease_ttl: float = 30.0,
        poll_interval: float = 1.0,
        hot_seconds: float = HOT_SECONDS,
        page_entries: int = MAX_ENTRIES,
        object_info: bool = False,
        trim: bool = True,
        trim_datalog: bool = True,
        trim_interval: float = 10.0,
        bucket_scan_interval: float = 300.0,
        full_sync_pages: int = FULL_SYNC_PAGES,
        datalog_full_interval: float = DATALOG_FULL_INTERVAL,
        shards_per_round: int = SHARDS_PER_ROUND,
        workers: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        paused: Callable[[], bool] | None = None,
        fault_hook: Callable[[str], None] | None = None,
        follower_id: str | None = None,
    ) -> None:
        if poll_interval <= 0 or page_entries < 1 or workers < 1 or shards_per_round < 1:
            raise PermanentError("follower: poll_interval, page_entries, workers and shards_per_round must be > 0")
        self.index = index
        self.store = index.store
        self.admin = admin
        self.filter = BucketFilter(buckets, prefixes, exclude_buckets)
        self.poll_interval = float(poll_interval)
        self.hot_seconds = float(hot_seconds)
        self.page_entries = int(page_entries)
        self.object_info = object_info
        self.trim = trim
        # The data log is zone-wide: with several followers on one zone (different filters or
        # indexes) only one may trim it.
        self.trim_datalog = trim_datalog
        self.trim_interval = float(trim_interval)
        self.bucket_scan_interval = float(bucket_scan_interval)
        self.full_sync_pages = int(full_sync_pages)
        self.datalog_full_interval = float(datalog_full_interval)
        self.shards_per_round = int(shards_per_round)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._paused = paused
        self._hook = fault_hook
        self.follower_id = follower_id or make_cookie("follower")
        self.lease = Lease(
            self.store,
            index.control_oid,
            name=LEASE_NAME,
            ttl=lease_ttl,
            description=f"rgw follower {self.follower_id}",
            cookie=self.follower_id,
            monotonic=monotonic,
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rgw-follower")
        self._stop: threading.Event | None = None
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._loaded = False
        self._boot: dict[str, Any] | None = None
        self._datalog: dict[int, str] = {}
        self._dl_trimmed: dict[int, tuple[str, float]] = {}
        self._to_trim: dict[BucketShard, str] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._full: dict[str, _FullSync] = {}
        self._shards: dict[BucketShard, _Shard] = {}
        self._excluded_seen: dict[BucketShard, float] = {}
        self._caught_up_us: int | None = None
        self._caught_up_persisted = float("-inf")
        self._last_scan = float("-inf")
        self._last_full_datalog = float("-inf")
        self._warned_info: set[str] = set()
        # bucket -> shards of its closing log generation not yet read to their end since the
        # newer generation was seen (in memory: rebuilt from ``closing`` on load)
        self._closing: dict[str, set[BucketShard]] = {}
        # Whether radosgw has log generations (Reef and later); None until one answer says.
        self._generation_aware: bool | None = None

    def __repr__(self) -> str:
        return f"Follower({self.follower_id!r}, {self.admin.endpoint!r} -> {self.index.prefix!r})"

    # ------------------------------------------------------------------ public API

    def caught_up_until_us(self) -> int | None:
        """Every mutation radosgw completed before this time (unix µs) is in the index; None
        until the first complete sweep. The collector's ``watermark_cap``."""
        with self._lock:
            return self._caught_up_us

    def caught_up_until(self) -> float | None:
        us = self.caught_up_until_us()
        return None if us is None else us / 1_000_000

    def stats(self) -> dict[str, Any]:
        """Counters for ``changelog.metrics`` (keys documented there)."""
        now = self._clock()
        with self._lock:
            s = self._stats
            lag: dict[str, dict[str, float]] = defaultdict(dict)
            for sh in self._shards.values():
                lag[sh.bs.bucket][str(sh.bs.shard)] = 0.0 if sh.at_end else max(0.0, now - sh.since)
            return {
                "mutations_recorded": s.mutations_recorded,
                "mutations_duplicate": s.mutations_duplicate,
                "baseline_recorded": s.baseline_recorded,
                "entries_read": s.entries_read,
                "entries_skipped": s.entries_skipped,
                "sweeps": s.sweeps,
                "complete_sweeps": s.complete_sweeps,
                "full_syncs_started": s.full_syncs_started,
                "full_syncs_done": s.full_syncs_done,
                "full_syncs_running": len(self._full),
                "pending_shards": len(self._shards),
                "bilog_trims": s.bilog_trims,
                "datalog_trims": s.datalog_trims,
                "caught_up_until": None if self._caught_up_us is None else self._caught_up_us / 1_000_000,
                "lag_seconds": dict(lag),
                "source_errors": dict(s.source_errors),
                "lease_held": self.lease.held,
            }

    def request_full_sync(self, bucket: str) -> None:
        """Ask for a new baseline of ``bucket`` (any process may ask; the running follower acts
        on it at its next sweep)."""
        self.store.execute(self.index.control_oid, WriteOp(set={REQUEST_PREFIX + bucket: _json({"at": self._clock()})}))

    def acquire(self) -> bool:
        """Try once to take the follower lease; on success the state is (re)loaded."""
        if self.lease.held:
            return True
        if not self.lease.acquire():
            return False
        self.lease.start_renewing()
        self._loaded = False
        return True

    def release(self) -> None:
        self.lease.release()

    def close(self) -> None:
        self.release()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: standby until the follower lease is free, then a sweep every
        ``poll_interval``. Transient errors back off (capped, exponential); a lost lease drops
        back to standby; a permanent error is raised."""
        self._stop = stop
        delay = self.backoff_base
        standby = min(2.0, self.lease.ttl / 4)
        try:
            while not stop.is_set():
                if self._paused is not None and self._paused():
                    stop.wait(min(self.poll_interval, 0.5))
                    continue
                try:
                    if not self.acquire():
                        stop.wait(standby)
                        continue
                except TransientError as ex:
                    logger.warning("follower: cannot take the lease: %s", ex)
                    stop.wait(standby)
                    continue
                t0 = self._monotonic()
                try:
                    self.sweep()
                except Stopped:
                    break
                except LeaseLost as ex:
                    logger.warning("follower %s lost its lease, back to standby: %s", self.follower_id, ex)
                    self.lease.release()
                    continue
                except TransientError as ex:
                    self._count_error("transient")
                    logger.warning("follower sweep failed, next in %.1fs: %s", delay, ex)
                    stop.wait(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_base
                stop.wait(max(0.0, self.poll_interval - (self._monotonic() - t0)))
        finally:
            self.release()
            logger.info("follower %s stopped", self.follower_id)

    # ------------------------------------------------------------------ a sweep

    def sweep(self) -> SweepResult:
        """One sweep (module docstring). Needs the lease (``acquire``)."""
        self.lease.check()
        if not self._loaded:
            self._load()
        started = self._clock()
        before = dataclasses.replace(self._stats, source_errors=dict(self._stats.source_errors))
        if self._boot is None or not self._boot.get("done"):
            self._bootstrap()
        self._maybe_scan_buckets()
        self._take_requests()
        complete = self._read_datalog()
        complete = self._run_full_syncs() and complete
        complete = self._drain() and complete
        # A log generation finished: its successor is read from its start right away.
        if self._advance_generations():
            complete = self._drain() and complete
        # A bucket found resharded or new during the drain starts a full sync: not caught up yet.
        complete = complete and not self._full and not self._closing
        self._trim()
        with self._lock:
            self._stats.sweeps += 1
            if complete:
                self._stats.complete_sweeps += 1
        if complete:
            self._set_caught_up(started)
        s = self._stats
        return SweepResult(
            complete=complete,
            started=started,
            recorded=s.mutations_recorded - before.mutations_recorded,
            duplicates=s.mutations_duplicate - before.mutations_duplicate,
            entries=s.entries_read - before.entries_read,
            baseline=s.baseline_recorded - before.baseline_recorded,
        )

    def run_until_caught_up(self, *, timeout: float = 60.0, since: float | None = None) -> SweepResult:
        """Sweep until one complete sweep started after ``since`` (default: now). For tests and
        the CLI's one-shot mode."""
        since = self._clock() if since is None else since
        deadline = self._monotonic() + timeout
        while True:
            result = self.sweep()
            if result.complete and result.started >= since:
                return result
            if self._monotonic() > deadline:
                raise TransientError(f"follower not caught up after {timeout:.0f}s")
            self._sleep(min(self.poll_interval, 0.2))

    # ------------------------------------------------------------------ helpers

    def _fault(self, step: str) -> None:
        if self._hook is not None:
            self._hook(step)

    def _check_running(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Stopped()
        self.lease.check()

    def _count_error(self, kind: str) -> None:
        with self._lock:
            self._stats.source_errors[kind] += 1

    def _write(self, set_: Mapping[str, bytes] | None = None, remove: Sequence[str] = ()) -> None:
        op = WriteOp(set=dict(set_ or {}), remove=list(remove), fence=self.lease.ref)
        if not op.is_empty():
            self.store.execute(self.index.control_oid, op)

    def _parallel(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T | BaseException]:
        """``fn`` over ``items`` on the worker pool; an exception is returned in its place."""

        def call(item: Any) -> T | BaseException:
            try:
                return fn(item)
            except Exception as ex:  # noqa: BLE001 - handed back to the caller, which decides
                return ex

        if len(items) <= 1:
            return [call(i) for i in items]
        return list(self._pool.map(call, items))

    def _record(self, mutations: list[Mutation]) -> RecordResult:
        if not mutations:
            return RecordResult(0, 0)
        self.lease.check()
        result = self.index.record_many(mutations)
        with self._lock:
            self._stats.mutations_recorded += result.written
            self._stats.mutations_duplicate += result.duplicates
        return result

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        """Read the persisted state (after taking the lease: another follower may have moved it)."""
        oid = self.index.control_oid
        got = self.store.omap_get(oid, [BOOT_KEY, CAUGHT_UP_KEY])
        self._boot = orjson.loads(got[BOOT_KEY]) if BOOT_KEY in got else None
        self._caught_up_us = int(got[CAUGHT_UP_KEY]) if CAUGHT_UP_KEY in got else None
        self._datalog = {int(k[len(DATALOG_PREFIX) :]): v.decode() for k, v in omap_iter(self.store, oid, prefix=DATALOG_PREFIX)}
        self._dl_trimmed = {}
        self._buckets = {
            k[len(BUCKET_PREFIX) :]: _Bucket.decode(k[len(BUCKET_PREFIX) :], v)
            for k, v in omap_iter(self.store, oid, prefix=BUCKET_PREFIX)
        }
        self._full = {k[len(FULL_PREFIX) :]: _FullSync.decode(v) for k, v in omap_iter(self.store, oid, prefix=FULL_PREFIX)}
        self._shards = {}
        now = self._clock()
        for k, v in omap_iter(self.store, oid, prefix=PENDING_PREFIX):
            bs = BucketShard.parse(k[len(PENDING_PREFIX) :])
            if bs is None:
                continue
            hot = float(orjson.loads(v).get("hot_until", 0.0))
            self._shards[bs] = _Shard(bs, hot_until=hot, persisted_hot=hot, since=now)
        self._closing = {}
        for b in self._buckets.values():
            if b.closing and b.state != "gone":
                self._start_closing(b, now, persist=False)
        self._loaded = True
        logger.info(
            "follower state loaded: %d buckets (%d in full sync), %d pending shards, %d data-log markers",
            len(self._buckets),
            len(self._full),
            len(self._shards),
            len(self._datalog),
        )

    def _set_caught_up(self, started: float) -> None:
        us = int(started * 1_000_000)
        with self._lock:
            if self._caught_up_us is not None and us <= self._caught_up_us:
                return
            self._caught_up_us = us
        now = self._monotonic()
        if now - self._caught_up_persisted >= CAUGHT_UP_PERSIST_S:
            self._write({CAUGHT_UP_KEY: str(us).encode()})
            self._caught_up_persisted = now

    # ------------------------------------------------------------------ bootstrap and buckets

    def _bootstrap(self) -> None:
        if self._boot is None:
            boot_ns = self.admin.server_time_ns()
            n = self.admin.datalog_shards()
            markers = self._parallel(self.admin.datalog_info, list(range(n)))
            for m in markers:
                if isinstance(m, BaseException):
                    raise m
            self._datalog = {i: str(m) for i, m in enumerate(markers)}
            self._boot = {"time_ns": boot_ns, "done": False}
            self._write({BOOT_KEY: _json(self._boot), **{_dl_key(i): m.encode() for i, m in self._datalog.items()}})
            logger.info("follower bootstrap: %d data-log shards, radosgw time %d", n, boot_ns)
        names = [n for n in self.admin.list_buckets() if self.filter.follows(n)]
        for name in names:
            self._check_running()
            if name not in self._buckets or self._buckets[name].state == "gone":
                self._resolve(name)
        self._boot = {**self._boot, "done": True}
        self._write({BOOT_KEY: _json(self._boot)})
        self._last_scan = self._monotonic()
        logger.info("follower bootstrap done: %d buckets, %d to full-sync", len(names), len(self._full))

    def _maybe_scan_buckets(self) -> None:
        """Now and then, list the zone's buckets: finds deleted ones (to drop their state) and new
        empty ones (the data log names a bucket only once it has a change)."""
        if self._monotonic() - self._last_scan < self.bucket_scan_interval:
            return
        self._last_scan = self._monotonic()
        names = set(self.admin.list_buckets())
        for name in sorted(n for n in names if self.filter.follows(n)):
            b = self._buckets.get(name)
            if b is None or b.state == "gone":
                self._resolve(name)
        for name, b in sorted(self._buckets.items()):
            if b.state != "gone" and name not in names:
                self._resolve(name)

    def _take_requests(self) -> None:
        for k, _ in list(omap_iter(self.store, self.index.control_oid, prefix=REQUEST_PREFIX)):
            name = k[len(REQUEST_PREFIX) :]
            if not self.filter.follows(name):
                logger.warning("full sync of %s asked for, but the source filter does not follow it", name)
                self._write(remove=[k])
                continue
            try:
                stats = self.admin.bucket_stats(name)
            except NotFound:
                logger.warning("full sync of %s asked for, but there is no such bucket", name)
                self._write(remove=[k])
                continue
            known = self._buckets.get(name)
            gen = known.gen + 1 if known is not None else 1
            logger.info("full sync of bucket %s requested: generation %d", name, gen)
            self._start_full_sync(stats, gen, extra_remove=[k])

    def _resolve(self, name: str) -> None:
        """Bring the bucket record of ``name`` up to date with radosgw: new bucket, reshard,
        deleted, or deleted and created again."""
        if not self.filter.follows(name):
            return
        try:
            stats: BucketStats | None = self.admin.bucket_stats(name)
        except NotFound:
            stats = None
        known = self._buckets.get(name)
        if stats is None:
            if known is not None and known.state != "gone":
                logger.info("bucket %s is gone (deleted): dropping its follower state", name)
                tomb = dataclasses.replace(known, state="gone")
                self._write({BUCKET_PREFIX + name: tomb.encode()}, self._bucket_keys(name) + [FULL_PREFIX + name])
                self._forget(name)
                self._buckets[name] = tomb
            else:
                self._forget(name)
            return
        if known is not None and known.state != "gone" and known.bucket_id == stats.bucket_id:
            return
        gen = known.gen + 1 if known is not None else 1
        boot_ns = int((self._boot or {}).get("time_ns", 0))
        fresh = (
            boot_ns > 0
            and stats.creation_ns > boot_ns + FRESH_MARGIN_NS
            and stats.bucket_id == stats.marker
        )
        if known is not None and known.state != "gone":
            why = "resharded" if known.marker == stats.marker else "deleted and created again"
            logger.info(
                "bucket %s %s: instance %s -> %s, generation %d", name, why, known.bucket_id, stats.bucket_id, gen
            )
        info = self._bilog_info(stats) if fresh else None
        if info is not None and info.oldest_gen == 0:
            # Born after the follower's first start, never resharded, or resharded in place with
            # every log generation kept: its log is complete from its first entry, so it is
            # followed exactly, without a baseline, from generation 0.
            b = _Bucket(
                name, stats.bucket_id, stats.marker, gen, info.generations.get(0, stats.num_shards), "incr", 0,
                info.latest_gen > 0,
            )  # fmt: skip
            self._write({BUCKET_PREFIX + name: b.encode()}, self._bucket_keys(name, keep=stats.bucket_id))
            self._forget(name, keep=stats.bucket_id)
            self._closing.pop(name, None)
            self._buckets[name] = b
            if b.closing:
                self._start_closing(b, self._clock(), persist=True)
            logger.info("following new bucket %s (%s) from its first log entry", name, stats.bucket_id)
            return
        self._start_full_sync(stats, gen)

    def _bucket_keys(self, name: str, *, keep: str | None = None) -> list[str]:
        """The r.m / r.p keys of ``name`` (of every instance but ``keep``)."""
        out: list[str] = []
        for prefix in (MARKER_PREFIX, PENDING_PREFIX):
            for k, _ in omap_iter(self.store, self.index.control_oid, prefix=f"{prefix}{name}:"):
                bs = BucketShard.parse(k[len(prefix) :])
                if bs is not None and bs.bucket == name and bs.bucket_id != keep:
                    out.append(k)
        return out

    def _forget(self, name: str, *, keep: str | None = None) -> None:
        for bs in [bs for bs in self._shards if bs.bucket == name and bs.bucket_id != keep]:
            del self._shards[bs]
        self._full.pop(name, None)

    def _start_full_sync(self, stats: BucketStats, gen: int, *, extra_remove: Sequence[str] = ()) -> None:
        """Baseline, then incremental: the log markers are taken *before* the listing, so every
        change is either in the listing or after the markers (or both)."""
        name = stats.name
        # The markers and the log generation they belong to come from one response.
        info = self._bilog_info(stats)
        b = _Bucket(
            name, stats.bucket_id, stats.marker, gen, info.generations[info.latest_gen], "full", info.latest_gen
        )
        fs = _FullSync(stats.bucket_id, gen, started=self._clock())
        sets: dict[str, bytes] = {BUCKET_PREFIX + name: b.encode(), FULL_PREFIX + name: fs.encode()}
        for bs in b.shard_list():
            sets[MARKER_PREFIX + bs.key] = info.max_markers.get(bs.shard, "").encode()
        removes = [k for k in self._bucket_keys(name) if k not in sets] + list(extra_remove)
        self._write(sets, removes)
        self._forget(name)
        self._closing.pop(name, None)
        self._buckets[name] = b
        self._full[name] = fs
        with self._lock:
            self._stats.full_syncs_started += 1
        logger.info(
            "full sync of bucket %s (%s, %d shards, generation %d) started", name, stats.bucket_id, stats.num_shards, gen
        )

    def _bilog_info(self, stats: BucketStats) -> BilogInfo:
        """Log generations of the bucket's current instance (Pacific: generation 0 with the
        shards of ``stats``). A bucket gone between two calls is retried by the next sweep."""
        try:
            info = self.admin.bilog_info(stats.name, stats.bucket_id)
        except NotFound as ex:
            raise TransientError(f"bucket {stats.name} changed while it was being resolved") from ex
        self._generation_aware = info.generation_aware
        if not info.generation_aware:
            return BilogInfo(0, 0, {0: stats.num_shards}, stats.max_markers, False)
        return info

    def _start_closing(self, b: _Bucket, now: float, *, persist: bool) -> dict[str, bytes]:
        """A newer log generation of ``b`` exists: read each shard of the current one to its end
        once more (entries may have landed after its last read), then move on
        (``_advance_generations``). Returns the control-object writes, or makes them."""
        b.closing = True
        shards = b.shard_list()
        self._closing[b.name] = set(shards)
        sets: dict[str, bytes] = {BUCKET_PREFIX + b.name: b.encode()}
        for bs in shards:
            sh = self._shards.get(bs)
            if sh is None:
                sh = self._shards[bs] = _Shard(bs, since=now)
            sh.at_end = False
            sh.since = min(sh.since, now) if sh.since else now
            sh.hot_until = max(sh.hot_until, now + self.hot_seconds)
            sh.persisted_hot = sh.hot_until
            sets[PENDING_PREFIX + bs.key] = _json({"hot_until": sh.hot_until})
        logger.info(
            "bucket %s: a newer bucket-index-log generation than %d exists (resharded): finishing %d shards",
            b.name, b.log_gen, len(shards),
        )  # fmt: skip
        if persist:
            self._write(sets)
            self._fault("closing")  # a newer generation seen and persisted, not yet read
            return {}
        return sets

    def _advance_generations(self) -> bool:
        """Move each bucket whose closing generation was read to its end to the next one: the old
        generation is trimmed up to what was recorded (all of it), the next is read from its
        first entry. True when a bucket moved on."""
        moved = False
        for name in sorted(self._closing):
            if self._closing[name]:
                continue
            self._check_running()
            b = self._buckets.get(name)
            if b is None or b.state != "incr" or not b.closing:
                if b is None or b.state == "gone":
                    self._closing.pop(name, None)
                continue
            try:
                info = self.admin.bilog_info(name, b.bucket_id)
            except NotFound:
                self._closing.pop(name, None)
                self._resolve(name)
                continue
            except TransientError as ex:
                self._count_error("bilog")
                logger.warning("bucket %s: log generations unreadable: %s", name, ex)
                continue
            nxt = info.next_gen(b.log_gen)
            old = b.shard_list()
            if nxt is None:
                # Nothing newer after all (the generation seen was this one's successor, since
                # removed?): keep following this one.
                b.closing = False
                self._closing.pop(name, None)
                self._write({BUCKET_PREFIX + name: b.encode()})
                continue
            if self.trim:
                # The persisted markers: everything up to them is recorded.
                got = self.store.omap_get(self.index.control_oid, [MARKER_PREFIX + bs.key for bs in old])
                jobs = [(bs, got[MARKER_PREFIX + bs.key].decode()) for bs in old if got.get(MARKER_PREFIX + bs.key)]
                results = self._parallel(lambda j: self.admin.bilog_trim(j[0], j[1]), jobs)
                for (bs, _m), r in zip(jobs, results, strict=True):
                    if isinstance(r, BaseException) and not isinstance(r, NotFound):
                        self._count_error("trim")
                        logger.warning("trimming bucket index log %s: %s", bs.key, r)
            self._fault("advance")  # old generation trimmed, the switch not yet written
            nb = _Bucket(
                name, b.bucket_id, b.marker, b.gen + 1, info.generations[nxt], "incr", nxt, info.latest_gen > nxt
            )
            now = self._clock()
            sets: dict[str, bytes] = {BUCKET_PREFIX + name: nb.encode()}
            new_shards = nb.shard_list()
            for bs in new_shards:
                sets[PENDING_PREFIX + bs.key] = _json({"hot_until": now + self.hot_seconds})
            removes = [p + bs.key for bs in old for p in (MARKER_PREFIX, PENDING_PREFIX)]
            self._write(sets, removes)
            for bs in old:
                self._shards.pop(bs, None)
                self._to_trim.pop(bs, None)
            for bs in new_shards:
                self._shards[bs] = _Shard(
                    bs, marker="", hot_until=now + self.hot_seconds, persisted_hot=now + self.hot_seconds, since=now
                )
            self._buckets[name] = nb
            self._closing.pop(name, None)
            if nb.closing:
                self._start_closing(nb, now, persist=True)
            moved = True
            logger.info(
                "bucket %s: log generation %d done, following generation %d (%d shards) from its start",
                name, b.log_gen, nxt, nb.shards,
            )  # fmt: skip
        return moved

    # ------------------------------------------------------------------ data log

    def _datalog_targets(self) -> list[int]:
        """The data-log shards to read this sweep: all of them when every bucket is followed (or
        now and then), else only those the followed and excluded buckets log to (H9: 11 requests
        per bucket per sweep instead of 128)."""
        every = sorted(self._datalog)
        now = self._monotonic()
        if self.filter.all or not every or now - self._last_full_datalog >= self.datalog_full_interval:
            self._last_full_datalog = now
            return every
        n = max(every) + 1
        names = sorted(self.filter.buckets | self.filter.exclude)
        if len(names) * (DEFAULT_INDEX_SHARDS + 1) >= n:
            return every
        # A reshard changes the shard count, and so where the new shards are logged: check each
        # followed bucket's instance first (started before this sweep, so caught_up_until holds),
        # and on Reef and later its newest log generation (a reshard in place keeps the id).
        newest: dict[str, int] = {}
        for name in sorted(self.filter.buckets):
            if not self.filter.follows(name):
                continue
            b = self._buckets.get(name)
            try:
                current: str | None = self.admin.bucket_instance_id(name)
            except NotFound:
                current = None
            known = None if b is None or b.state == "gone" else b.bucket_id
            if known != current:
                self._resolve(name)
            b = self._buckets.get(name)
            if b is None or b.state == "gone" or self._generation_aware is False:
                continue
            try:
                info = self.admin.bilog_info(name, b.bucket_id)
            except NotFound:
                continue  # the next sweep resolves it
            self._generation_aware = info.generation_aware
            if info.latest_gen > b.log_gen:
                newest[name] = max(n for g, n in info.generations.items() if g >= b.log_gen)
                if not b.closing:
                    self._start_closing(b, self._clock(), persist=True)
        targets: set[int] = set()
        for name in names:
            b = self._buckets.get(name)
            shards = max(b.shards if b is not None else 0, newest.get(name, 0), DEFAULT_INDEX_SHARDS)
            targets.update(datalog_shard(name, s, n) for s in range(shards))
        return sorted(t for t in targets if t in self._datalog)

    def _read_datalog(self) -> bool:
        shards = self._datalog_targets()
        results = self._parallel(self._read_datalog_shard, shards)
        complete = True
        for n, r in zip(shards, results, strict=True):
            if isinstance(r, Stopped):
                raise r
            if isinstance(r, LeaseLost | PermanentError):
                raise r
            if isinstance(r, BaseException):
                self._count_error("datalog")
                logger.warning("data log shard %d: %s", n, r)
                complete = False
        return complete

    def _read_datalog_shard(self, n: int) -> None:
        while True:
            self._check_running()
            marker = self._datalog.get(n, "")
            page = self.admin.datalog_list(n, marker)
            sets: dict[str, bytes] = {}
            now = self._clock()
            for e in page.entries:
                bs = e.shard
                if self.filter.excluded(bs.bucket):
                    with self._lock:
                        self._excluded_seen.setdefault(bs, now)
                    continue
                if not self.filter.follows(bs.bucket):
                    continue
                with self._lock:
                    b = self._buckets.get(bs.bucket)
                    if e.has_gen and b is not None and b.state != "gone" and b.bucket_id == bs.bucket_id:
                        if b.outgrown_by(bs) and not b.closing:
                            # Resharded in place: finish this generation first (every shard read
                            # to its end from now on), then follow the next one from its start.
                            sets.update(self._start_closing(b, now, persist=False))
                        if bs.log_gen != b.log_gen:
                            continue
                    sh = self._shards.get(bs)
                    if sh is None:
                        sh = self._shards[bs] = _Shard(bs, since=now)
                    elif sh.at_end:
                        sh.at_end = False
                        sh.since = now
                    sh.hot_until = max(sh.hot_until, now + self.hot_seconds)
                    if sh.hot_until - sh.persisted_hot > 5.0:
                        sets[PENDING_PREFIX + bs.key] = _json({"hot_until": sh.hot_until})
                        sh.persisted_hot = sh.hot_until
            if page.marker and page.marker != marker:
                sets[_dl_key(n)] = page.marker.encode()
            if sets:
                self._write(sets)
                self._fault("datalog")
                if any(k.startswith(BUCKET_PREFIX) for k in sets):
                    self._fault("closing")  # a newer generation seen and persisted, not yet read
            self._datalog[n] = page.marker or marker
            if not page.truncated or not page.entries:
                return

    # ------------------------------------------------------------------ full sync

    def _run_full_syncs(self) -> bool:
        budget = self.full_sync_pages
        for name in sorted(self._full):
            while budget > 0 and name in self._full:
                self._check_running()
                budget -= 1
                try:
                    self._full_sync_page(name)
                except NotFound:
                    self._resolve(name)
                    break
        return not self._full

    def _full_sync_page(self, name: str) -> None:
        fs = self._full[name]
        b = self._buckets[name]
        if fs.versions is None:
            fs.versions = self.admin.bucket_versioning(name, fs.bucket_id) != "off"
        prefixes = self.filter.list_prefixes(name)
        if fs.prefix_idx < len(prefixes):
            page = self.admin.list_objects(
                name,
                prefix=prefixes[fs.prefix_idx],
                key_marker=fs.key_marker,
                version_marker=fs.version_marker,
                versions=fs.versions,
            )
            ms: list[Mutation] = []
            for i, o in enumerate(page.items):
                if not self.filter.wants(name, o.key):
                    continue
                ms.append(
                    baseline_mutation(
                        bucket=name,
                        bucket_id=fs.bucket_id,
                        generation=fs.gen,
                        counter=fs.counter + i,
                        key=o.key,
                        version_id=o.version_id,
                        delete_marker=o.delete_marker,
                        size=o.size,
                        etag=o.etag,
                        mtime_ns=o.mtime_ns,
                    )
                )
            result = self._record(ms)
            with self._lock:
                self._stats.baseline_recorded += result.written
            self._fault("full.recorded")
            fs.counter += len(page.items)
            if page.truncated:
                fs.key_marker, fs.version_marker = page.key_marker, page.version_marker
            else:
                fs.prefix_idx += 1
                fs.key_marker = fs.version_marker = ""
        if fs.prefix_idx < len(prefixes):
            self._write({FULL_PREFIX + name: fs.encode()})
            return
        # Done: the bucket turns incremental, and every shard is read once from the markers
        # taken before the listing (a change during the listing may sit in any of them).
        b.state = "incr"
        now = self._clock()
        sets = {BUCKET_PREFIX + name: b.encode()}
        for bs in b.shard_list():
            with self._lock:
                sh = self._shards.get(bs) or _Shard(bs, since=now)
                sh.hot_until = max(sh.hot_until, now + self.hot_seconds)
                sh.persisted_hot = sh.hot_until
                sh.at_end = False
                self._shards[bs] = sh
            sets[PENDING_PREFIX + bs.key] = _json({"hot_until": sh.hot_until})
        self._write(sets, [FULL_PREFIX + name])
        del self._full[name]
        with self._lock:
            self._stats.full_syncs_done += 1
        logger.info(
            "full sync of bucket %s done: %d objects listed in %.1fs", name, fs.counter, now - fs.started
        )

    # ------------------------------------------------------------------ bucket index logs

    def _candidates(self) -> list[_Shard]:
        """Pending shards ready to read: of a known, incremental bucket instance. Resolves
        unknown buckets and new instances on the way; drops shards of old instances."""
        to_resolve = sorted(
            {
                bs.bucket
                for bs in self._shards
                if (b := self._buckets.get(bs.bucket)) is None or b.state == "gone" or b.bucket_id != bs.bucket_id
            }
        )
        now = self._clock()
        for name in to_resolve:
            self._check_running()
            self._resolve(name)
        stale: list[BucketShard] = []
        out: list[_Shard] = []
        for bs, sh in sorted(self._shards.items()):
            b = self._buckets.get(bs.bucket)
            if b is None or not b.owns(bs):
                stale.append(bs)
                if b is not None and b.outgrown_by(bs) and not b.closing:
                    self._start_closing(b, now, persist=True)
            elif b.state == "incr":
                out.append(sh)
        if stale:
            self._write(remove=[PENDING_PREFIX + bs.key for bs in stale])
            for bs in stale:
                self._shards.pop(bs, None)
        missing = [sh for sh in out if sh.marker is None]
        for i in range(0, len(missing), 1000):
            chunk = missing[i : i + 1000]
            got = self.store.omap_get(self.index.control_oid, [MARKER_PREFIX + sh.bs.key for sh in chunk])
            for sh in chunk:
                raw = got.get(MARKER_PREFIX + sh.bs.key)
                sh.marker = raw.decode() if raw is not None else ""
                sh.trimmed = sh.trimmed or ""
        return out

    def _drain(self) -> bool:
        """Read every pending shard to its end, in rounds; record, then persist markers."""
        queue = deque(self._candidates())
        complete = True
        while queue:
            self._check_running()
            batch = [queue.popleft() for _ in range(min(len(queue), self.shards_per_round))]
            pages = self._parallel(lambda sh: self.admin.bilog_list(sh.bs, sh.marker or "", max_entries=self.page_entries), batch)
            now = self._clock()
            observed_ns = int(now * 1_000_000_000)
            mutations: list[Mutation] = []
            advanced: list[tuple[_Shard, str, bool, bool]] = []  # shard, new marker, had entries, more
            gone: list[_Shard] = []
            for sh, page in zip(batch, pages, strict=True):
                if isinstance(page, NotFound):
                    gone.append(sh)
                    continue
                if isinstance(page, LeaseLost | PermanentError | Stopped):
                    raise page
                if isinstance(page, BaseException):
                    complete = False
                    self._count_error("bilog")
                    logger.warning("bucket index log %s: %s", sh.bs.key, page)
                    continue
                b = self._buckets[sh.bs.bucket]
                for entry in page:
                    m = map_entry(entry, sh.bs, generation=b.gen, observed_ns=observed_ns)
                    if m is None or not self.filter.wants(m.bucket, m.key):
                        with self._lock:
                            self._stats.entries_skipped += 1
                        continue
                    mutations.append(m)
                with self._lock:
                    self._stats.entries_read += len(page)
                marker = bilog_marker(str(page[-1].get("op_id", ""))) if page else (sh.marker or "")
                more = len(page) >= self.page_entries
                advanced.append((sh, marker, bool(page), more))
                if more:
                    queue.append(sh)
            if self.object_info:
                mutations = self._with_object_info(mutations)
            self._record(mutations)
            self._fault("recorded")
            self._persist_shards(advanced, now)
            for sh in gone:
                self._instance_gone(sh)
        return complete

    def _persist_shards(self, advanced: Sequence[tuple[_Shard, str, bool, bool]], now: float) -> None:
        """Persist the markers of a recorded round; drop shards that went quiet."""
        sets: dict[str, bytes] = {}
        removes: list[str] = []
        cooled: list[_Shard] = []
        for sh, marker, active, more in advanced:
            if marker != (sh.marker or ""):
                sets[MARKER_PREFIX + sh.bs.key] = marker.encode()
            if active:
                sh.hot_until = max(sh.hot_until, now + self.hot_seconds)
                if sh.hot_until - sh.persisted_hot > 5.0:
                    sets[PENDING_PREFIX + sh.bs.key] = _json({"hot_until": sh.hot_until})
            elif not more and now >= sh.hot_until:
                removes.append(PENDING_PREFIX + sh.bs.key)
                cooled.append(sh)
        self._write(sets, removes)
        with self._lock:
            for sh, marker, _active, more in advanced:
                sh.marker = marker
                if not more and (waiting := self._closing.get(sh.bs.bucket)) is not None:
                    waiting.discard(sh.bs)
                if PENDING_PREFIX + sh.bs.key in sets:
                    sh.persisted_hot = sh.hot_until
                if not more and not sh.at_end:
                    sh.at_end = True
                elif more and sh.at_end:
                    sh.at_end = False
                    sh.since = now
            for sh in cooled:
                self._shards.pop(sh.bs, None)
                if self.trim and sh.marker and sh.marker != sh.trimmed:
                    self._to_trim[sh.bs] = sh.marker

    def _instance_gone(self, sh: _Shard) -> None:
        """The shard's bucket instance answered 404: resharded away or deleted."""
        name = sh.bs.bucket
        logger.info("bucket index log %s is gone; checking bucket %s", sh.bs.key, name)
        self._resolve(name)
        b = self._buckets.get(name)
        if b is not None and b.owns(sh.bs) and b.state == "incr":
            # Same instance, same generation, and its log is gone: someone else removed the
            # generation (`radosgw-admin bilog autotrim`) before it was read to its end. What it
            # held is unknown: a new baseline says what exists now.
            try:
                stats = self.admin.bucket_stats(name)
            except NotFound:
                return  # deleted meanwhile: the next sweep drops it
            if stats.bucket_id == b.bucket_id:
                logger.warning(
                    "bucket %s: log generation %d removed before it was read to its end: full sync", name, b.log_gen
                )
                self._start_full_sync(stats, b.gen + 1)
            b = self._buckets.get(name)
        if b is None or not b.owns(sh.bs):
            self._write(remove=[PENDING_PREFIX + sh.bs.key, MARKER_PREFIX + sh.bs.key])
            self._shards.pop(sh.bs, None)

    def _with_object_info(self, mutations: list[Mutation]) -> list[Mutation]:
        """Size and etag of written versions: the bucket index log does not carry them."""
        # A later change of the same unversioned key within the same second would make a
        # second-resolution listing (Tentacle) describe it instead: only the last one is looked up.
        last: dict[tuple[str, str], int] = {}
        for i, m in enumerate(mutations):
            if m.version_id is None:
                last[(m.bucket, m.key)] = i
        idx = [
            i
            for i, m in enumerate(mutations)
            if m.op is Op.WRITE
            and m.size is None
            and (
                m.version_id is not None
                or last[(m.bucket, m.key)] == i
                or mutations[last[(m.bucket, m.key)]].mtime_ns // 1_000_000_000 != m.mtime_ns // 1_000_000_000
            )
        ]
        if not idx:
            return mutations

        def look(i: int) -> tuple[int, str | None] | None:
            m = mutations[i]
            return self.admin.object_info(m.bucket, m.key, m.version_id, m.mtime_ns)

        out = list(mutations)
        for i, info in zip(idx, self._parallel(look, idx), strict=True):
            if isinstance(info, TransientError):
                raise info
            if isinstance(info, BaseException):
                m = mutations[i]
                if m.bucket not in self._warned_info:
                    self._warned_info.add(m.bucket)
                    logger.warning("size/etag of objects in bucket %s unavailable: %s", m.bucket, info)
                continue
            if info is not None:
                out[i] = dataclasses.replace(out[i], size=info[0], etag=info[1])
        return out

    # ------------------------------------------------------------------ trimming

    def _trim(self) -> None:
        """Trim logs up to the persisted markers (everything at or before them is in the index),
        at most every ``trim_interval`` per log while it is busy."""
        if not self.trim:
            return
        now = self._monotonic()
        with self._lock:
            jobs: list[tuple[BucketShard, str, _Shard | None]] = [
                (sh.bs, sh.marker, sh)
                for sh in self._shards.values()
                if sh.marker
                and sh.marker != sh.trimmed
                and now - sh.last_trim >= self.trim_interval
                and (b := self._buckets.get(sh.bs.bucket)) is not None
                and b.state == "incr"
            ]
            jobs += [(bs, m, None) for bs, m in self._to_trim.items()]
            self._to_trim = {}
            excluded = list(self._excluded_seen)
            self._excluded_seen.clear()

        def trim_shard(job: tuple[BucketShard, str, _Shard | None]) -> None:
            try:
                self.admin.bilog_trim(job[0], job[1])
            except NotFound:
                pass

        for job, r in zip(jobs, self._parallel(trim_shard, jobs), strict=True):
            bs, marker, sh = job
            if isinstance(r, BaseException):
                self._count_error("trim")
                logger.warning("trimming bucket index log %s: %s", bs.key, r)
                if sh is None:
                    with self._lock:
                        self._to_trim.setdefault(bs, marker)
                continue
            with self._lock:
                self._stats.bilog_trims += 1
                if sh is not None:
                    sh.trimmed = marker
                    sh.last_trim = now
            self._fault("trim")

        # The change-log target bucket's own writes: nobody records them, trim them as they come.
        def trim_excluded(bs: BucketShard) -> None:
            try:
                self.admin.bilog_trim(bs, self.admin.bilog_max_marker(bs))
            except NotFound:
                pass

        for bs, r2 in zip(excluded, self._parallel(trim_excluded, excluded), strict=True):
            if isinstance(r2, BaseException):
                self._count_error("trim")
                logger.warning("trimming bucket index log %s: %s", bs.key, r2)

        dl: list[tuple[int, str]] = []
        for n, m in sorted(self._datalog.items()) if self.trim_datalog else ():
            done, at = self._dl_trimmed.get(n, ("", float("-inf")))
            if m and m != done and now - at >= self.trim_interval:
                dl.append((n, m))

        def trim_dl(item: tuple[int, str]) -> None:
            self.admin.datalog_trim(item[0], item[1])

        for (n, m), r3 in zip(dl, self._parallel(trim_dl, dl), strict=True):
            if isinstance(r3, BaseException):
                self._count_error("trim")
                logger.warning("trimming data log shard %d: %s", n, r3)
                continue
            self._dl_trimmed[n] = (m, now)
            with self._lock:
                self._stats.datalog_trims += 1

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """A JSON-able view of the follower state for ``rgw-changelog status``."""
        return follower_state(self.index)


def follower_state(index: ChangeIndex) -> dict[str, Any]:
    """The persisted follower state, read directly from the control object."""
    oid = index.control_oid
    got = index.store.omap_get(oid, [BOOT_KEY, CAUGHT_UP_KEY])
    buckets: dict[str, Any] = {}
    for k, v in omap_iter(index.store, oid, prefix=BUCKET_PREFIX):
        d = orjson.loads(v)
        buckets[k[len(BUCKET_PREFIX) :]] = d
    full = {k[len(FULL_PREFIX) :]: orjson.loads(v) for k, v in omap_iter(index.store, oid, prefix=FULL_PREFIX)}
    pending = sum(1 for _ in omap_iter(index.store, oid, prefix=PENDING_PREFIX))
    markers = sum(1 for _ in omap_iter(index.store, oid, prefix=MARKER_PREFIX))
    cu = int(got[CAUGHT_UP_KEY]) / 1_000_000 if CAUGHT_UP_KEY in got else None
    lock = index.store.lock_info(oid, LEASE_NAME)
    return {
        "bootstrapped": bool(orjson.loads(got[BOOT_KEY]).get("done")) if BOOT_KEY in got else False,
        "caught_up_until": cu,
        "buckets": {
            name: {
                "bucket_id": d.get("id"),
                "generation": d.get("gen"),
                "log_generation": d.get("log_gen", 0),
                "shards": d.get("shards"),
                "state": d.get("state"),
                **({"closing": True} if d.get("closing") else {}),
                **({"full_sync_listed": full[name].get("counter", 0)} if name in full else {}),
            }
            for name, d in sorted(buckets.items())
        },
        "pending_shards": pending,
        "shard_markers": markers,
        "lease": None if lock is None else {"holder": lock.holder, "cookie": lock.cookie, "expires_at": lock.expires_at},
    }
