"""What every phase of an RGW follower sweep shares (``rgw_module.follower`` builds it; the
phases in ``bucket_tracker``, ``datalog_reader``, ``full_sync``, ``bilog_reader``,
``generations`` and ``trim`` receive it): the radosgw client, the bucket filter, the settings, the
state, the fenced control-object write, the worker pool, the counters and the fault points.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from changelog.config import SourceConfig
from changelog.pipeline.index import ChangeIndex, RecordResult
from changelog.pipeline.loop import Clocks, Stopped
from changelog.pipeline.mutation import Mutation
from changelog.pipeline.store import LockRef, WriteOp
from rgw_module.admin import AdminClient
from rgw_module.follower_state import FollowerState
from rgw_module.mapping import BucketFilter

logger = logging.getLogger(__name__)

# Fault-injection points (tests): a hook raising here simulates a crash at that point.
FAULT_STEPS = ("recorded", "datalog", "full.recorded", "trim", "closing", "advance")

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
    ) -> None:
        self.index = index
        self.store = index.store
        self.control_oid = index.control_oid
        self.admin = admin
        self.config = config
        self.filter = BucketFilter(
            None if config.all_buckets else config.buckets, config.prefixes, config.exclude_buckets
        )
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
