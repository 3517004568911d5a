"""The usage consumer: applies each committed log object to the usage state shards exactly once.

For log object O (its records in log order, so in per-key order):

1. the records are grouped by state shard (``model.Layout.shard``: a hash of tenant and bucket);
2. for each shard they touch (or whose retention horizon the object's data time moves), the
   shard's ``a`` (the last log object applied to it) is read: a
   shard with ``a >= O`` is skipped (a predecessor applied O there before it died); else the
   inventory entries, totals and intervals the records need are read, the new values computed
   (``apply.ShardBatch``) and written in **one op** with ``a = O``, guarded by
   ``assert a == <the value read>``;
3. then the framework commits the checkpoint past O (fenced by the consumer's lease).

A crash between the shard writes and the commit replays O: every shard applies it at most once.
A process that lost its lease and still writes fails the guard (``CompareFailed``, answered as
``LeaseLost``: it stops). Nothing relies on the lease for correctness, and nothing of the state
is in the control object but the checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from changelog.consumers.framework import Cursor, LogObjectConsumer, ObjectBatch, RouteHandler
from changelog.consumers.usage.apply import (
    PrefixReader,
    ShardBatch,
    data_time_us,
    prefix_reader,
    stored_totals,
)
from changelog.consumers.usage.model import (
    APPLIED_KEY,
    DEFAULT_CONSUMER,
    MAXTIME_KEY,
    META_KEY,
    Layout,
    Totals,
    horizon_key,
)
from changelog.errors import CompareFailed, LeaseLost
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.reader import LogObject
from changelog.pipeline.store import Cmp, ObjectStore, WriteOp
from changelog.pipeline.targets import Target

if TYPE_CHECKING:
    from changelog.config import UsageConfig
    from changelog.pipeline.index import ChangeIndex

logger = logging.getLogger(__name__)

# State shards applied at once: their reads and writes are independent round trips (librados
# releases the GIL while it waits), so the OSD's latency overlaps; the guard of each write and
# the checkpoint committed after all of them keep it exactly once.
SHARD_WORKERS = 4
# This process's counters (``UsageState.snapshot``; ``prom.COUNTERS`` exports them).
COUNTERS = ("shard_writes", "shards_skipped", "guard_failures", "unknown_sizes")


class UsageState:
    """The usage state shards of one ``Layout`` in a store: reading, and the guarded write of
    one log object to one shard."""

    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self.store = store
        self.layout = layout
        self._mu = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)

    def read_prefix(self, n: int) -> PrefixReader:
        """Shard ``n``'s keys with a prefix, paged."""
        return prefix_reader(self.store, self.layout.oid(n))

    def totals(self, n: int) -> list[tuple[str, Totals]]:
        return list(stored_totals(self.read_prefix(n)))

    def head(self, n: int) -> Head:
        """What shard ``n`` says about itself."""
        keys = [APPLIED_KEY, MAXTIME_KEY, META_KEY, *(horizon_key(r) for r in self.layout.resolutions)]
        got = self.store.omap_get(self.layout.oid(n), keys)
        self.layout.check_meta(got.get(META_KEY))
        return Head(
            applied=got.get(APPLIED_KEY, b"").decode(),
            data_us=int(got.get(MAXTIME_KEY, b"0")),
            horizons={r: int(got[horizon_key(r)]) for r in self.layout.resolutions if horizon_key(r) in got},
            # An older meta (without the interval) is written again with the next change.
            has_meta=got.get(META_KEY) == self.layout.meta(),
        )

    def apply(
        self, n: int, obj: str, records: list[LogRecord], *, data_us: int, head: Head | None = None
    ) -> Head:
        """Apply ``records`` (log object ``obj``; none: only prune) to shard ``n`` with the data
        time ``data_us``, unless the shard has them already. Returns the shard's head after."""
        oid = self.layout.oid(n)
        head = head or self.head(n)
        if head.applied >= obj:
            self._count("shards_skipped")
            return head
        batch = ShardBatch(self.layout, records)
        keys = batch.keys()
        batch.load(self.store.omap_get(oid, keys), keys, max_us=max(data_us, head.data_us))
        read = self.read_prefix(n)
        batch.apply(read)
        changes = batch.changes(obj, horizons=head.horizons, stored=lambda: stored_totals(read))
        op = WriteOp(asserts=[(APPLIED_KEY, Cmp.EQ, head.applied)], set=changes.set, remove=changes.remove)
        op.remove_ranges.extend(changes.remove_ranges)
        if not head.has_meta:
            op.set[META_KEY] = self.layout.meta()
        try:
            self.store.execute(oid, op)
        except CompareFailed as ex:
            self._count("guard_failures")
            raise LeaseLost(f"usage state {oid} was written by another process while applying {obj}") from ex
        self._count("shard_writes")
        self._count("unknown_sizes", changes.unknown_sizes)
        return Head(obj, batch.max_us, {**head.horizons, **changes.horizons}, True)

    def _count(self, name: str, n: int = 1) -> None:
        with self._mu:
            self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        """This process's counters: shard writes, shards skipped (applied before), guard
        failures, writes of unknown size."""
        with self._mu:
            return {name: self.counts.get(name, 0) for name in COUNTERS}


@dataclass(frozen=True)
class Head:
    """A shard's own keys: the last log object applied, its data time, its retention horizons."""

    applied: str
    data_us: int
    horizons: Mapping[int, int]
    has_meta: bool


class UsageConsumer(LogObjectConsumer):
    """``usage``: per-bucket totals and interval series, kept in ``state``'s shards.

    The **data time** (the latest record time in the logs so far, each record's time capped at
    its arrival time + ``apply.CLOCK_SKEW_US``: ``apply.data_time_us``) drives retention in every
    shard alike: it is the maximum of the shards' ``m`` when the lease is taken, then grows with
    each log object's records. A shard whose retention horizon it moves past is written (pruned)
    even when the object has no records for it, so an idle shard ages out like the others and a
    rebuild from the logs prunes at the same objects. The shards' heads are cached while this
    process holds the lease (the guard in each write catches a cache made stale by another)."""

    def __init__(
        self,
        state: UsageState,
        logs: Target,
        *,
        name: str = "usage",
        interval: float = 5.0,
        log_prefix: str = "",
    ) -> None:
        super().__init__(logs, log_prefix=log_prefix)
        self.name = name
        self.interval = interval
        self.state = state
        self._cursor: Cursor | None = None
        self._heads: dict[int, Head] = {}
        self._data_us = 0
        # Threads start on first use and idle between objects.
        self._pool = ThreadPoolExecutor(SHARD_WORKERS, thread_name_prefix=f"consumer-{name}")

    def _open(self, cursor: Cursor) -> None:
        """A new lease: what another process wrote since is read again."""
        if cursor is not self._cursor:
            heads = {n: self.state.head(n) for n in range(self.state.layout.shards)}
            self._heads = heads
            self._data_us = max((h.data_us for h in heads.values()), default=0)
            # Last: a read that failed (a TransientError) leaves the cache marked stale, and the
            # next step with the same cursor reads every head again.
            self._cursor = cursor

    def handle(self, cursor: Cursor, obj: LogObject, records: list[LogRecord]) -> ObjectBatch:
        self._open(cursor)
        by_shard: dict[int, list[LogRecord]] = defaultdict(list)
        for r in records:
            by_shard[self.state.layout.shard(r.tenant or "", r.bucket)[0]].append(r)
            self._data_us = max(self._data_us, data_time_us(r))
        layout = self.state.layout
        todo = [
            n
            for n in range(layout.shards)
            if n in by_shard or layout.prunes(self._data_us, self._heads[n].horizons)
        ]
        # Not a fence (the state is not on the lease's object) but a cheap early stop; the guard
        # in each write is what keeps a stale writer out.
        cursor.lease.check()
        futures = {
            n: self._pool.submit(
                self.state.apply, n, obj.name, by_shard.get(n, []), data_us=self._data_us, head=self._heads[n]
            )
            for n in todo
        }
        failed: list[BaseException] = []
        for n, future in futures.items():
            try:
                self._heads[n] = future.result()
            except BaseException as ex:  # noqa: BLE001 - every shard's outcome first, then raised
                failed.append(ex)
        if failed:
            self._cursor = None  # read the heads again before the next object
            raise next((ex for ex in failed if isinstance(ex, LeaseLost)), failed[0])
        return ObjectBatch()

    def stats(self) -> Mapping[str, object]:
        return {**super().stats(), **self.state.snapshot()}

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        return {}


def layout_of(section: UsageConfig, index_prefix: str, *, name: str = DEFAULT_CONSUMER) -> Layout:
    """The state layout ``[usage]`` gives for consumer ``name`` of the index ``index_prefix``."""
    return Layout.make(
        index_prefix,
        consumer=name,
        shards=section.shards,
        interval=section.interval,
        retention=int(section.retention),
        retention_hourly=int(section.retention_hourly),
        retention_daily=int(section.retention_daily),
    )


def usage_consumer(
    section: UsageConfig, index: ChangeIndex, logs: Target, *, name: str = DEFAULT_CONSUMER
) -> UsageConsumer:
    """The usage consumer ``name`` of ``index`` (another name: another checkpoint and another
    state, e.g. a rebuild from the logs beside the live one)."""
    state = UsageState(index.store, layout_of(section, index.prefix, name=name))
    return UsageConsumer(state, logs, name=name, interval=section.poll_interval)
