"""The follower: records every object mutation of one radosgw zone into the change index, from
outside radosgw, through the admin REST API (rgw_module/README.md). It is a leased role of
``changelog.pipeline.loop.run_leased``: one follower per index holds the follower lease, and each of its
steps is one *sweep*:

1. reads the data-log shards from their persisted markers to their end (``datalog_reader``):
   each entry names a bucket-index shard that changed; that shard becomes *pending*;
2. resolves buckets it does not know, or whose instance id changed (reshard, deleted and created
   again), recording a ``bucket_create`` for each bucket it learns of and a ``bucket_delete`` for
   each it finds gone, and runs a page budget of *full syncs*, baseline records of a bucket's
   objects (``bucket_tracker``, ``full_sync``);
3. reads each pending bucket-index shard's log from its persisted marker to its end, in pages,
   records each round with one ``ChangeIndex.record_many`` and *then* persists the shards'
   markers (``bilog_reader``); a bucket whose log generation was read to its end moves on to
   the next one (``generations``);
4. trims the bucket-index logs and data log up to the persisted markers, never beyond (``trim``).

The data log coalesces (H5): radosgw logs a shard at most once per ``rgw_data_log_window`` (30 s)
and re-logs it later while it stays busy. A shard that had activity therefore stays pending
(*hot*) and is re-read every sweep until it has been quiet for ``hot_seconds``.

``caught_up_until`` (H8) is the start time of the last sweep that read every data-log shard and
every pending shard to its end with no full sync outstanding: every mutation radosgw completed
before it is in the index. The collector caps its watermark with it.

A tenant's bucket is named ``tenant/bucket`` throughout (state keys, stream names, filters),
as radosgw's admin API names it; its records carry ``tenant`` and the bare ``bucket``.

The state (``follower_state``) lives in the index's control object under ``r.`` keys
(``changelog.pipeline.control``), written only under the follower lease (fenced).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypedDict

from changelog.config import SourceConfig
from changelog.errors import PermanentError, TransientError
from changelog.pipeline.control import FOLLOWER_LOCK, FOLLOWER_REQUEST_PREFIX
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease, make_cookie
from changelog.pipeline.loop import Clocks, LoopCounts, LoopPolicy, Stopped, run_leased
from changelog.pipeline.mutation import Op
from changelog.pipeline.store import WriteOp
from rgw_module.admin import AdminClient
from rgw_module.bilog_reader import BilogReader
from rgw_module.bucket_index import BucketIndexReader
from rgw_module.bucket_tracker import BucketTracker
from rgw_module.datalog_reader import DataLogReader
from rgw_module.follower_migrate import merge_partitions, read_meta
from rgw_module.follower_state import dump_json, follower_state
from rgw_module.full_sync import FullSyncRunner
from rgw_module.generations import advance_generations, start_closing
from rgw_module.partition_scope import PartitionScope
from rgw_module.sweep_context import FACT_SOURCES, FAULT_STEPS, SKIP_REASONS, SweepContext
from rgw_module.trim import Trimmer

__all__ = [
    "FAULT_STEPS",
    "LEASE_NAME",
    "Follower",
    "FollowerStatsDoc",
    "Stopped",
    "SweepResult",
    "follower_state",
]

logger = logging.getLogger(__name__)

LEASE_NAME = FOLLOWER_LOCK
BUCKET_OPS = (Op.BUCKET_CREATE.value, Op.BUCKET_DELETE.value)
# Persist caught_up_until at most this often: it is a hint for a restarted follower, the live
# value is in memory.
CAUGHT_UP_PERSIST_S = 5.0
PARTITION_CAUGHT_UP_PERSIST_S = 1.0


@dataclass(frozen=True, slots=True)
class SweepResult:
    """One sweep: whether it was complete (``caught_up_until`` moved to ``started``), and what
    it recorded."""

    complete: bool
    started: float
    recorded: int
    duplicates: int
    entries: int
    baseline: int


class FollowerStatsDoc(TypedDict):
    """``Follower.stats()``: counters since the process started, and the live lag."""

    mutations_recorded: int
    mutations_duplicate: int
    baseline_recorded: int
    entries_read: int
    entries_skipped: int
    sweeps: int
    complete_sweeps: int
    full_syncs_started: int
    full_syncs_done: int
    full_syncs_running: int
    pending_shards: int
    bilog_trims: int
    datalog_trims: int
    caught_up_until: float | None
    lag_seconds: dict[str, dict[str, float]]  # bucket -> index shard -> seconds behind
    source_errors: dict[str, int]  # kind (datalog, bilog, trim, transient) -> count
    lease_held: bool
    instances_lost: int  # log streams gone before read to their end (docs/design.md §10)
    entries_lost: int  # the entries they held, where an estimate was possible
    late_entries: int  # added by radosgw to a finished log generation after it was read to its end
    skipped: dict[str, int]  # reason (filter, internal) -> log entries skipped
    not_followed: dict[str, str]  # buckets seen and not followed (internal ones) -> reason
    bucket_ops: dict[str, int]  # bucket_create, bucket_delete -> records made
    # Where write records' size and etag came from: index, superseded (null: the entry already
    # described a later write), head_fallback (the index pool could not be read)
    object_facts: dict[str, int]


class Follower:
    """Follows one radosgw zone into ``index`` with the settings of ``config`` (the ``[source]``
    section). ``run(stop)`` is the service loop; ``sweep()`` one step (the follower lease must
    be held: see ``acquire``). ``paused``: asked before each step (the lease stays held);
    ``fault_hook``: called at each of ``FAULT_STEPS`` (tests simulate crashes there)."""

    def __init__(
        self,
        index: ChangeIndex,
        admin: AdminClient,
        config: SourceConfig | None = None,
        *,
        clocks: Clocks | None = None,
        follower_id: str | None = None,
        fault_hook: Callable[[str], None] | None = None,
        paused: Callable[[], bool] | None = None,
        internal_buckets: Iterable[str] = (),
        bucket_index: BucketIndexReader | None = None,
        partition: PartitionScope | None = None,
        lease: Lease | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        config = config if config is not None else SourceConfig()
        if (
            config.poll_interval <= 0
            or config.page_entries < 1
            or config.workers < 1
            or config.shards_per_round < 1
        ):
            raise PermanentError(
                "follower: poll_interval, page_entries, workers and shards_per_round must be > 0"
            )
        self.name = "follower" if partition is None else f"follower partition {partition.index}"
        self.config = config
        self.index = index
        self.admin = admin
        self.clocks = clocks if clocks is not None else Clocks()
        self.follower_id = follower_id or make_cookie("follower")
        self.partition = partition
        # A partition's lease, pool and bucket-index reader belong to its runner
        # (``rgw_module.follower_partitions``): this follower does not release or close them.
        self._owns_shared = lease is None
        self.lease = lease or Lease(
            index.store,
            index.control_oid,
            name=LEASE_NAME,
            ttl=config.lease_ttl,
            description=f"rgw follower {self.follower_id}",
            cookie=self.follower_id,
            monotonic=self.clocks.monotonic,
        )
        self._paused = paused
        self._pool = pool or ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rgw-follower")
        self._ctx = ctx = SweepContext(
            index,
            admin,
            config,
            clocks=self.clocks,
            guard=self.lease.check,
            fence=self.lease.ref,
            pool=self._pool,
            fault_hook=fault_hook,
            internal_buckets=internal_buckets,
            bucket_index=bucket_index,
            scope=partition,
        )
        self._buckets = BucketTracker(ctx)
        self._datalog = DataLogReader(ctx, self._buckets)
        self._full_syncs = FullSyncRunner(ctx, self._buckets.resolve)
        self._bilogs = BilogReader(ctx, self._buckets)
        self._trimmer = Trimmer(ctx)
        self._loop_counts = LoopCounts()
        self._loaded = False
        self._caught_up_persisted = float("-inf")

    def __repr__(self) -> str:
        return f"Follower({self.follower_id!r}, {self.admin.endpoint!r} -> {self.index.prefix!r})"

    # ------------------------------------------------------------------ public API

    @property
    def trim(self) -> bool:
        """Whether logs are trimmed (``config.trim_logs``); tests turn it off for a while."""
        return self._ctx.trim_bilogs

    @trim.setter
    def trim(self, on: bool) -> None:
        self._ctx.trim_bilogs = on

    def caught_up_until_us(self) -> int | None:
        """Every mutation radosgw completed before this time (unix µs) is in the index; None
        until the first complete sweep. The collector's ``watermark_cap``."""
        with self._ctx.lock:
            return self._ctx.state.caught_up_us

    def caught_up_until(self) -> float | None:
        us = self.caught_up_until_us()
        return None if us is None else us / 1_000_000

    def stats(self) -> FollowerStatsDoc:
        """Counters for ``changelog.metrics`` (keys documented there)."""
        now = self.clocks.clock()
        ctx = self._ctx
        with ctx.lock:
            s, st = ctx.stats, ctx.state
            lag: dict[str, dict[str, float]] = defaultdict(dict)
            for sh in st.shards.values():
                lag[sh.bs.bucket][str(sh.bs.shard)] = 0.0 if sh.at_end else max(0.0, now - sh.since)
            errors = dict(s.source_errors)
            # Sweeps that failed with a transient error are counted by the loop.
            if self._loop_counts.transient_errors:
                errors["transient"] = errors.get("transient", 0) + self._loop_counts.transient_errors
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
                "full_syncs_running": len(st.full),
                "pending_shards": len(st.shards),
                "bilog_trims": s.bilog_trims,
                "datalog_trims": s.datalog_trims,
                "caught_up_until": None if st.caught_up_us is None else st.caught_up_us / 1_000_000,
                "lag_seconds": dict(lag),
                "source_errors": errors,
                "lease_held": self.lease.held,
                "instances_lost": s.instances_lost,
                "entries_lost": s.entries_lost,
                "late_entries": s.late_entries,
                "skipped": {reason: s.skipped.get(reason, 0) for reason in SKIP_REASONS},
                "not_followed": dict(sorted(ctx.not_followed.items())),
                "bucket_ops": {op: s.bucket_ops.get(op, 0) for op in BUCKET_OPS},
                "object_facts": {kind: s.object_facts.get(kind, 0) for kind in FACT_SOURCES},
            }

    def status(self) -> dict[str, object]:
        """A JSON-able view of the follower state for ``rgw-changelog status``, with the buckets
        this process saw and does not follow (internal ones) and why."""
        with self._ctx.lock:
            not_followed = dict(sorted(self._ctx.not_followed.items()))
            # Buckets deleted and created again whose new lifetime waits for the collector, and
            # until when at most (unix time).
            recreating = dict(sorted(self._ctx.recreating.items()))
        doc = follower_state(self.index, self._ctx.keys, self.lease.ref.name)
        return {**doc, "not_followed": not_followed, "recreating": recreating}

    def request_full_sync(self, bucket: str) -> None:
        """Ask for a new baseline of ``bucket`` (``tenant/bucket`` for a tenant's; any process
        may ask; the running follower acts on it at its next sweep)."""
        op = WriteOp(set={FOLLOWER_REQUEST_PREFIX + bucket: dump_json({"at": self.clocks.clock()})})
        self.index.store.execute(self.index.control_oid, op)

    # ------------------------------------------------------------------ the leased role

    def acquire(self) -> bool:
        """Try once to take the follower lease; once taken, the next sweep (re)loads the state."""
        return self.lease.take(on_taken=self._unload)

    def _unload(self) -> None:
        self._loaded = False

    def step(self, stop: threading.Event) -> None:
        """One sweep (``run_leased``'s step): a set ``stop`` ends it between two units of work."""
        self._ctx.stop = stop
        self.sweep()

    def step_down(self) -> None:
        self.release()

    def release(self) -> None:
        self.lease.release()

    def leases(self) -> list[Lease]:
        """The leases this follower takes (for the health check and the metrics)."""
        return [self.lease]

    def close(self) -> None:
        if not self._owns_shared:
            return
        self.release()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._ctx.bucket_index is not None:
            self._ctx.bucket_index.close()  # its own RADOS client

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: standby until the follower lease is free, then a sweep every
        ``poll_interval`` (``changelog.pipeline.loop.run_leased``: transient errors back off, a lost
        lease drops back to standby, a permanent error is raised)."""
        cfg = self.config
        policy = LoopPolicy.for_lease(
            cfg.poll_interval,
            cfg.lease_ttl,
            backoff_base=cfg.backoff_base,
            backoff_max=cfg.backoff_max,
            pause_poll=min(cfg.poll_interval, 0.5),
        )
        run_leased(
            self, stop, policy, paused=self._paused, monotonic=self.clocks.monotonic, counts=self._loop_counts
        )

    # ------------------------------------------------------------------ a sweep

    def sweep(self) -> SweepResult:
        """One sweep (module docstring). Needs the lease (``acquire``)."""
        ctx, st = self._ctx, self._ctx.state
        self.lease.check()
        if not self._loaded:
            self._load()
        started = ctx.now()
        before = dataclasses.replace(ctx.stats, source_errors=dict(ctx.stats.source_errors))
        if st.boot is None or not st.boot.done:
            self._buckets.bootstrap()
        self._buckets.announce()
        self._buckets.scan_now_and_then()
        self._buckets.take_requests()
        for name in sorted(ctx.recreating):  # deleted and created again: may its new lifetime start?
            self._buckets.resolve(name)
        complete = self._datalog.read()
        complete = self._full_syncs.run() and complete
        complete = self._bilogs.drain() and complete
        # A log generation finished: its successor is read from its start right away.
        if advance_generations(ctx, self._buckets.resolve):
            complete = self._bilogs.drain() and complete
        self._bilogs.read_sealed()
        # A bucket found resharded or new during the drain starts a full sync: not caught up yet
        # (but for buckets the source user may not list: named, waiting, ``FullSyncRunner``).
        now = ctx.now()
        waiting = any(ctx.denied.get(name, 0.0) <= now for name in st.full)
        complete = complete and not waiting and not st.closing and not ctx.recreating
        self._trimmer.trim()
        with ctx.lock:
            ctx.stats.sweeps += 1
            if complete:
                ctx.stats.complete_sweeps += 1
        if complete:
            self._set_caught_up(started)
        s = ctx.stats
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
        since = self.clocks.clock() if since is None else since
        deadline = self.clocks.monotonic() + timeout
        while True:
            result = self.sweep()
            if result.complete and result.started >= since:
                return result
            if self.clocks.monotonic() > deadline:
                raise TransientError(f"follower not caught up after {timeout:.0f}s")
            self.clocks.sleep(min(self.config.poll_interval, 0.2))

    def _load(self) -> None:
        """Read the persisted state (after taking the lease: another follower may have moved it)."""
        ctx, st = self._ctx, self._ctx.state
        if self.partition is None and read_meta(self.index) is not None:
            # Partitioned before ([scale] partitioned = true): merged back into one follower's
            # state first. Refused (TransientError: tried again) while a partitioned serve runs:
            # following the zone from an empty r. state beside the partitions would record it
            # all twice.
            merged = merge_partitions(self.index, now=self.clocks.clock())
            logger.warning("follower state of %s partitions merged back into one follower's", merged)
        now = ctx.now()
        st.load(ctx.store, ctx.control_oid, now, ctx.keys)
        for b in st.buckets.values():
            if b.closing and b.state != "gone":
                start_closing(ctx, b, now, persist=False)
        self._loaded = True
        logger.info(
            "follower state loaded: %d buckets (%d in full sync), %d pending shards, %d data-log markers",
            len(st.buckets),
            len(st.full),
            len(st.shards),
            len(st.datalog),
        )

    def _set_caught_up(self, started: float) -> None:
        us = int(started * 1_000_000)
        ctx = self._ctx
        with ctx.lock:
            if ctx.state.caught_up_us is not None and us <= ctx.state.caught_up_us:
                return
            ctx.state.caught_up_us = us
        now = self.clocks.monotonic()
        # A partition's is what the collector reads (the minimum over the partitions caps its
        # watermark): persisted more often.
        every = CAUGHT_UP_PERSIST_S if self.partition is None else PARTITION_CAUGHT_UP_PERSIST_S
        if now - self._caught_up_persisted >= every:
            ctx.write({ctx.keys.caught_up: str(us).encode()})
            self._caught_up_persisted = now
