"""What every phase of an RGW follower sweep shares (``rgw_module.follower`` builds it; the
phases in ``bucket_tracker``, ``datalog_reader``, ``full_sync``, ``bilog_reader``,
``generations`` and ``trim`` receive it): the radosgw client, the bucket filter, the settings, the
state, the fenced control-object write, the worker pool, the counters and the fault points.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from changelog.config import SourceConfig
from changelog.pipeline.index import ChangeIndex, RecordResult
from changelog.pipeline.loop import Clocks, Stopped
from changelog.pipeline.mutation import Mutation
from changelog.pipeline.store import LockRef, WriteOp
from rgw_module.admin import AdminClient
from rgw_module.bucket_index import BucketIndexReader
from rgw_module.follower_state import FollowerState, StateKeys
from rgw_module.mapping import BucketFilter
from rgw_module.partition_scope import PartitionScope

logger = logging.getLogger(__name__)

# Fault-injection points (tests): a hook raising here simulates a crash at that point.
FAULT_STEPS = (
    "recorded", "datalog", "full.recorded", "trim", "closing", "advance", "bucket.recorded", "late.recorded",
)  # fmt: skip

ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")


@dataclass(slots=True)
class FollowerStats:
    """The follower's counters (``Follower.stats``; key names in ``changelog.metrics``)."""

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
    # Losses the design accepts (docs/design.md §10): log streams (an instance, or a generation
    # of one) gone before they were read to their end, and the entries they still held where
    # an estimate was possible.
    instances_lost: int = 0
    entries_lost: int = 0
    # Entries radosgw added to a finished log generation after it was read to its end, read
    # while it was sealed (``BilogReader.read_sealed``) and recorded late.
    late_entries: int = 0
    # Log entries skipped on purpose, by reason (SKIP_REASONS).
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # bucket_create / bucket_delete records made (recorded or found already recorded), by op.
    bucket_ops: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Write records by where their size/etag/mtime/storage class came from (FACT_SOURCES).
    object_facts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


# Why an entry is skipped on purpose: the source filter (buckets, prefixes, exclude_buckets), or
# internal (the target's own bucket, multipart parts and other internal-namespace entries of
# the bucket index). Tenants' buckets are followed like the others (named ``tenant/bucket``).
SKIP_REASONS = ("filter", "internal")
# Another partition's bucket (``[scale] partitioned``): followed there, not counted here.
PARTITION = "partition"
# Why a bucket seen is not followed (``not_followed``; the filter's choices are not listed).
NOT_FOLLOWED_REASONS = ("internal", "access_denied")
# Where a write record's facts came from: the bucket index; nowhere, its index entry already
# described a later write (superseded, facts null); HEAD by choice (``object_info = "head"``
# counts nothing) or as the fallback when the index pool cannot be read.
FACT_SOURCES = ("index", "superseded", "head_fallback")


class Started(Generic[ResultT]):
    """Work ``SweepContext.start`` put on the worker pool: ``results`` waits for it (an exception
    in place of a result that raised); ``cancel`` drops what has not started yet (a drain that
    ended early: nobody will read it)."""

    def __init__(self, futures: list[Future[ResultT | BaseException]]) -> None:
        self._futures = futures

    def results(self) -> list[ResultT | BaseException]:
        return [f.result() for f in self._futures]

    def cancel(self) -> None:
        for f in self._futures:
            f.cancel()


class SweepContext:
    """The services of one follower, handed to each phase of its sweep. ``guard`` raises when
    the follower lease is no longer held; ``fence`` is that lease, asserted by every write."""

    def __init__(
        self,
        index: ChangeIndex,
        admin: AdminClient,
        config: SourceConfig,
        *,
        clocks: Clocks,
        guard: Callable[[], None],
        fence: LockRef,
        pool: ThreadPoolExecutor,
        fault_hook: Callable[[str], None] | None = None,
        internal_buckets: Iterable[str] = (),
        bucket_index: BucketIndexReader | None = None,
        scope: PartitionScope | None = None,
    ) -> None:
        self.index = index
        # A partition of the follower (``[scale] partitioned``): its buckets, and where its state
        # lives; None: the whole zone, state under ``r.``.
        self.scope = scope
        self.keys = StateKeys.of(None if scope is None else scope.index)
        self.store = index.store
        self.control_oid = index.control_oid
        self.admin = admin
        self.config = config
        self.filter = BucketFilter(
            None if config.all_buckets else config.buckets, config.prefixes, config.exclude_buckets
        )
        self.internal_buckets = frozenset(internal_buckets)
        # The bucket index reader (``object_info = "index"``); None: no RADOS access (HEAD).
        self.bucket_index = bucket_index
        # Buckets seen and not followed, with the reason (NOT_FOLLOWED_REASONS: the filter's are
        # the operator's own choice and may be most of the zone).
        self.not_followed: dict[str, str] = {}
        # Buckets the source user may not list, and when to ask again (``FullSyncRunner``).
        self.denied: dict[str, float] = {}
        # Buckets deleted and created again whose new lifetime waits for the collector to cut
        # off past the old one's bucket_delete, and until when at most (``BucketTracker.resolve``).
        self.recreating: dict[str, float] = {}
        self.clocks = clocks
        self.guard = guard
        self.fence = fence
        self.state = FollowerState()
        self.stats = FollowerStats()
        # Guards ``stats`` and ``state.shards``: ``Follower.stats`` reads them from other threads,
        # and the data-log shards are read in parallel.
        self.lock = threading.Lock()
        # Trim the bucket index logs, and the data log, up to what is recorded. The data log is
        # zone-wide: with several followers on one zone only one may trim it. Tests turn both off.
        self.trim_bilogs = bool(config.trim_logs)
        self.trim_datalog = bool(config.trim_logs and config.trim_datalog)
        self.stop: threading.Event | None = None
        self._pool = pool
        self._hook = fault_hook

    def now(self) -> float:
        return self.clocks.clock()

    def fault(self, step: str) -> None:
        if self._hook is not None:
            self._hook(step)

    def check_running(self) -> None:
        """Between two units of work: stop when asked to, and never work without the lease."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped()
        self.guard()

    def count_error(self, kind: str) -> None:
        with self.lock:
            self.stats.source_errors[kind] += 1

    def owns(self, bucket: str) -> bool:
        """Whether ``bucket`` is this follower's: always, but for a partition (another
        partition's bucket is followed there, and is not counted or named here)."""
        return self.scope is None or self.scope.owns_bucket(bucket)

    def skip_reason(self, bucket: str) -> str | None:
        """Why ``bucket`` is not followed (SKIP_REASONS, or ``PARTITION``: another partition's),
        None if it is."""
        if self.scope is not None and not self.scope.owns_bucket(bucket):
            return PARTITION
        if self.filter.follows(bucket):
            return None
        return "internal" if bucket in self.internal_buckets else "filter"

    def followed_again(self, bucket: str) -> None:
        """A bucket named as not followed is followed now (it may be listed again)."""
        with self.lock:
            self.not_followed.pop(bucket, None)
        logger.info("bucket %s is followed again", bucket)

    def skipped(self, reason: str, entries: int = 1, *, bucket: str | None = None) -> None:
        """Count ``entries`` log entries skipped for ``reason``; a bucket not followed for another
        reason than the filter is named once (a WARNING unless it is internal: its changes are
        not in the logs)."""
        if reason == PARTITION:
            return  # followed by another partition
        new = False
        with self.lock:
            if entries:
                self.stats.skipped[reason] += entries
            if bucket is not None and reason != "filter" and bucket not in self.not_followed:
                self.not_followed[bucket] = reason
                new = True
        if new and reason == "internal":
            logger.info("bucket %s is not followed (%s)", bucket, reason)
        elif new and reason == "access_denied":
            logger.warning("bucket %s is not followed (%s): it waits, its log kept, until the source user may "
                           "list it", bucket, reason)
        elif new:
            logger.warning("bucket %s is not followed (%s): its changes are not logged", bucket, reason)

    def count_facts(self, source: str, records: int) -> None:
        """Count ``records`` write records whose facts came from ``source`` (FACT_SOURCES)."""
        if records:
            with self.lock:
                self.stats.object_facts[source] += records

    def lost(self, bucket: str, instance: str, entries: int | None, why: str) -> None:
        """A log stream of ``bucket`` went away before it was read to its end (an accepted loss,
        docs/design.md §10): WARNING, counted. ``entries``: the estimate, None if unknown."""
        with self.lock:
            self.stats.instances_lost += 1
            self.stats.entries_lost += entries or 0
        logger.warning(
            "bucket %s: instance %s %s before its log was read to its end: entries lost: %s",
            bucket, instance, why, "unknown" if entries is None else f"about {entries}",
        )  # fmt: skip

    def write(self, sets: Mapping[str, bytes] | None = None, remove: Sequence[str] = ()) -> None:
        """One fenced write to the control object (nothing when there is nothing to write)."""
        op = WriteOp(set=dict(sets or {}), remove=list(remove), fence=self.fence)
        if not op.is_empty():
            self.store.execute(self.control_oid, op)

    def parallel(self, fn: Callable[[ItemT], ResultT], items: Sequence[ItemT]) -> list[ResultT | BaseException]:
        """``fn`` over ``items`` on the worker pool; an exception is returned in its place."""

        def call(item: ItemT) -> ResultT | BaseException:
            try:
                return fn(item)
            except Exception as ex:  # noqa: BLE001 - handed back to the caller, which decides
                return ex

        if len(items) <= 1:
            return [call(i) for i in items]
        return list(self._pool.map(call, items))

    def start(self, fn: Callable[[ItemT], ResultT], items: Sequence[ItemT]) -> Started[ResultT]:
        """``parallel``, started now and collected later (``Started.results``): the bilog reader
        fetches the next rounds while it records the current one."""

        def call(item: ItemT) -> ResultT | BaseException:
            try:
                return fn(item)
            except Exception as ex:  # noqa: BLE001 - handed back to the caller, which decides
                return ex

        return Started([self._pool.submit(call, item) for item in items])

    def record(self, mutations: list[Mutation]) -> RecordResult:
        """Record ``mutations`` in the index (under the lease), counted."""
        if not mutations:
            return RecordResult(0, 0)
        self.guard()
        result = self.index.record_many(mutations)
        with self.lock:
            self.stats.mutations_recorded += result.written
            self.stats.mutations_duplicate += result.duplicates
        return result
