"""The collector: drains the change index, exactly once, into JSON Lines log objects in a target
(docs/design.md §5-7).

One collector at a time holds the control lease; during a pass it also holds the ``drain``
lease of every shard it reads. A pass freezes each shard below a cutoff (the floor), streams the
entries below it into log objects, and commits each object with a pending record written
*before* the object becomes visible, so that a crash at any point leaves either nothing or a
record from which recovery finishes the job: trim if the object exists, rebuild the same bytes
under the same name if it does not. Every index and control write is fenced by the lease it
needs; a lost lease stops the pass at once (``LeaseLost``).

Pages are read ahead by ``changelog.pipeline.readahead``, objects encoded and uploaded by
``changelog.pipeline.upload``, the records kept in the control object are ``changelog.pipeline.commit``'s, and
the service loop is ``changelog.pipeline.loop.run_leased``.

With ``[scale] partitioned`` a collector is one *stream* (``Stream``): partition ``n`` of the
role ``collector``, held by lease (``changelog.pipeline.collector_streams`` runs the streams an
instance holds). It drains the index shards ``s % count == n``, under the partition's lease in
place of the control lease, keeps its state and seq under ``c.stream.<nnn>.``, names its objects
``<cutoff>-<seq>-p<nnn>``, and cuts off strictly above its last cutoff, so that once a pass ends
(``through_us``) the stream commits nothing at or below that cutoff again: the readers' bound.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import orjson

from changelog.config import CollectorConfig
from changelog.errors import LeaseLost, LockBusy, ObjectMissing, PermanentError, TransientError
from changelog.pipeline import keys
from changelog.pipeline.commit import CollectorState, Drained, PendingCommit, ShardRange
from changelog.pipeline.control import (
    COLLECTOR_LOCK,
    COLLECTOR_PENDING_PREFIX,
    COLLECTOR_ROLE,
    COLLECTOR_STATE_KEY,
    COLLECTOR_STREAM_PREFIX,
    COLLECTOR_STREAMS_META_KEY,
    SHARD_LOCK,
    collector_seq_key,
    collector_state_key,
    partition_lock,
)
from changelog.pipeline.index import ChangeIndex, bucket_op_shard
from changelog.pipeline.lease import Lease, Renewer, lock_held, make_cookie
from changelog.pipeline.logformat import (
    Compression,
    encode_watermark,
    log_name,
    parse_log_name,
    rfc3339_us,
    watermark_name,
)
from changelog.pipeline.loop import Clocks, LoopPolicy, Wake, run_leased
from changelog.pipeline.mutation import Mutation, Op, packer
from changelog.pipeline.readahead import Page, ReadAhead
from changelog.pipeline.store import WriteOp, omap_iter
from changelog.pipeline.targets import Target, gc_uploads
from changelog.pipeline.upload import LogWriter, TargetRefused, TargetRetry, Uploads, check_sizes, error_kind

# The records are ``changelog.pipeline.commit``'s; named here too, for the collector's users and tests.
__all__ = [
    "FAULT_STEPS",
    "ORDER_MARGIN_US",
    "Collector",
    "CollectorState",
    "Drained",
    "PassResult",
    "PendingCommit",
    "ShardRange",
    "Stream",
    "behind_of",
    "drained_key",
]

logger = logging.getLogger(__name__)

# Hook points, in pass order. ``fault_hook(step)`` is called at each; the fault-injection tests
# kill the process there.
FAULT_STEPS = (
    "pass",  # control lease held, before recovery
    "floor",  # after raising one shard's floor
    "seq",  # after allocating a log object's sequence number
    "read",  # after reading one page of a shard
    "part",  # after uploading one multipart part
    "pending",  # after writing the pending record
    "commit",  # lease checked, right before CompleteMultipartUpload / PUT
    "complete",  # the object is visible, nothing trimmed yet
    "trim",  # after trimming one batch of keys
    "drop",  # pending record dropped
    "watermark",  # state advanced, before the watermark object is written
    "recover.upload",  # recovery re-uploaded a missing object, before its trim
    "recover.trim",  # recovery trimmed one batch
)
# Lease renewals in flight at once when many are due together (every shard lease of a pass).
RENEW_WORKERS = 8
# Pages read ahead of the encoder (a page is ``page`` entries, ~250 KiB at 1000): the next reads
# overlap the encoding of this one.
READ_AHEAD_PAGES = 4
# Shards read at once, each up to READ_AHEAD_PAGES ahead (handed over in shard order).
READ_WORKERS = 2
# Trim batches (fenced removes) in flight at once.
TRIM_WORKERS = 8
# How long ``request_flush`` (the API's POST /_/flush) waits for its pass: a large backlog takes
# minutes to drain, and the caller is a person at a terminal or a script that can retry.
FLUSH_TIMEOUT = 300.0


# How an index entry's op field reads when it is a ``bucket_delete`` (``Mutation.encode_with``:
# msgpack, fixed field names): the stream that drains the delete's shard looks for these bytes
# in its pages (a bytes search) and decodes only an entry that has them.
_DELETE_TAG = packer().pack("o") + packer().pack(Op.BUCKET_DELETE.value)


# How far past a bucket_delete's recorded time the other streams must have committed before it
# goes. Recorded times are arrival times made unique per shard (the previous one + 1 µs), so a
# shard that took a burst runs ahead of the clock by a µs per record: a record of the bucket that
# arrived before the delete may carry a slightly later time. 0.1 s covers a burst of 100,000
# records into one shard, far beyond a follower round; it costs the delete at most one pass.
ORDER_MARGIN_US = 100_000


def drained_key(n: int) -> str:
    """``c.stream.<nnn>.drained``: collector stream ``n``'s ``Drained``, written with its state."""
    return f"{COLLECTOR_STREAM_PREFIX}{n:03d}.drained"


def behind_of(
    t_us: int,
    n: int,
    peers: Mapping[int, tuple[Drained, CollectorState]],
    *,
    margin_us: int = ORDER_MARGIN_US,
) -> list[int]:
    """The collector streams among ``peers`` (each one's ``Drained`` and state, from one read)
    that have not committed every record recorded up to ``t_us`` (and ``margin_us`` past it):
    stream ``n`` commits a ``bucket_delete`` recorded at ``t_us`` only when there are none. A
    stream that holds back a delete of its own is through ``t_us`` if its hold is later by
    (time, stream): the lowest hold never waits for another, so holds cannot wait in a ring."""
    behind = []
    for m, (d, state) in sorted(peers.items()):
        done = d.done_us(state)
        if d.held_us and d.held_us == done:
            if (done, m) > (t_us, n):
                continue
        elif done > t_us + margin_us:
            continue
        behind.append(m)
    return behind


def _peer(got: Mapping[str, bytes], m: int) -> tuple[Drained, CollectorState]:
    """Stream ``m``'s ``Drained`` and state from an ``omap_get`` that read both."""
    return Drained.decode(got.get(drained_key(m))), CollectorState.decode(got.get(collector_state_key(m)))


@dataclass(frozen=True, slots=True)
class _Hold:
    """The ``bucket_delete`` a collector stream holds back (``Collector._may_commit``)."""

    recorded_us: int
    since: float  # monotonic time it was first held
    # Once no other stream is behind it: the highest cutoff of the objects that hold their
    # records of up to it (their ``through_us`` then). The delete goes in a pass cut off above.
    bound_us: int | None = None
    behind: tuple[int, ...] = ()
    logged: bool = False


@dataclass(frozen=True, slots=True)
class PassResult:
    cutoff_us: int
    objects: tuple[str, ...]
    entries: int
    recovered: int
    skipped_shards: tuple[int, ...]
    watermark_us: int | None


@dataclass(frozen=True, slots=True)
class Stream:
    """A collector stream (``[scale] partitioned``): partition ``n`` of ``count``, whose lease
    (``changelog.pipeline.partitions``, held and renewed by its owner) fences the stream's writes
    as the control lease fences the unpartitioned collector's. It drains the index shards
    ``s % count == n``: a key's shard is fixed, so every record of a key is in this stream."""

    n: int
    count: int
    lease: Lease

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.n

    def owns_name(self, name: str) -> bool:
        """A pending commit this stream recovers: its own, and (stream 0) the unpartitioned
        collector's, left when the index went partitioned."""
        parsed = parse_log_name(name)
        stream = parsed.stream if parsed is not None else None
        return stream == self.n or (stream is None and self.n == 0)


@dataclass(slots=True)
class _Counts:
    """The collector's counters (``Collector.stats``), guarded by ``Collector._stats_lock``."""

    passes: int = 0
    entries_emitted: int = 0
    objects_committed: int = 0
    bytes_committed: int = 0
    last_pass_entries: int | None = None
    last_pass_seconds: float | None = None
    last_pass_end: float | None = None
    complete_until: float | None = None
    target_errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Service-loop passes failed in a row (reset by a good one, a takeover, a step down).
    failed_passes: int = 0
    last_error: str | None = None
    last_failure: float | None = None
    # Passes of a collector stream that held back a bucket_delete (``Collector._may_commit``).
    bucket_delete_holds: int = 0


class _FlushRequest:
    """One ``request_flush`` waiting for the loop's flush pass: its result or what it died of."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: PassResult | None = None
        self.error: BaseException | None = None

    def finish(self, result: PassResult | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass(slots=True)
class _Cursor:
    """Where a pass is in its read-ahead: the page in hand and the first entry not yet written."""

    reader: ReadAhead
    cutoff: int = 0
    shard: int = 0
    page: Page = field(default_factory=list)
    i: int = 0
    done: bool = False  # no page left, or stopping
    stopped: bool = False  # the service loop is stopping: the rest stays in the index
    held_us: int | None = None  # a bucket_delete held back: its recorded time (the rest stays)

    def pending(self) -> bool:
        return self.i < len(self.page)


class Collector:
    """Drains a ``ChangeIndex`` into change-log objects in a ``Target``, as ``config`` says.

    ``run(stop)`` is the service loop (``changelog.pipeline.loop.run_leased``: standby until the control
    lease is free, then a pass every ``interval``); ``run_pass()``, ``flush()`` and
    ``recover()`` are single steps for the CLI and tests. ``paused()`` is asked before each
    pass: while it says so, no pass starts, the leases stay held and renewed, and the index,
    pending records and state are left as they are.
    """

    def __init__(
        self,
        index: ChangeIndex,
        target: Target,
        config: CollectorConfig | None = None,
        *,
        compression: Compression | str = Compression.NONE,
        log_prefix: str = "",
        clocks: Clocks | None = None,
        collector_id: str | None = None,
        watermark_cap: Callable[[], int | None] | None = None,
        fault_hook: Callable[[str], None] | None = None,
        paused: Callable[[], bool] | None = None,
        stream: Stream | None = None,
    ) -> None:
        cfg = self.config = config if config is not None else CollectorConfig()
        check_sizes(cfg, target)
        self.index = index
        self.store = index.store
        self.target = target
        self.compression = Compression.parse(compression)
        self.log_prefix = log_prefix.strip("/")
        self.collector_id = collector_id or make_cookie("collector")
        self.stream = stream
        self.name = f"collector {self.collector_id}" + (f" stream {stream.n}" if stream is not None else "")
        n = stream.n if stream is not None else None
        self._state_key = collector_state_key(n)
        self._seq_key = collector_seq_key(n)
        # The shards this collector drains: every one, or its stream's.
        self._drains = [s for s in range(index.shards) if stream is None or stream.owns(s)]
        self._drained_key = drained_key(stream.n) if stream is not None else None
        # A stream that drains the shard where bucket_deletes go (the last, ``bucket_op_shard``),
        # beside other streams that have shards: it commits a delete only once they committed
        # what was recorded before it (``_may_commit``). Its last shard to drain, so holding the
        # delete back leaves nothing of the pass after it. None: it never holds one back.
        self._peers = [m for m in range(stream.count) if m != stream.n and m < index.shards] if stream else []
        last = bucket_op_shard(Op.BUCKET_DELETE, index.shards)
        self._delete_shard = last if self._peers and stream is not None and stream.owns(last) else None
        self._drained = Drained()
        self._hold: _Hold | None = None
        # The other streams' progress, read once in a pass that meets a bucket_delete.
        self._peer_view: dict[int, tuple[Drained, CollectorState]] | None = None
        self._clocks = clocks if clocks is not None else Clocks()
        self._cap = watermark_cap
        self._hook = fault_hook
        self._paused = paused
        self._stop: threading.Event | None = None  # step()'s: a pass ends early when it is set
        self._wake = Wake()  # ends the loop's wait for the next pass (a flush request)
        self._flush_lock = threading.Lock()
        self._flushes: list[_FlushRequest] = []
        self._stats_lock = threading.Lock()
        self._counts = _Counts()
        self._visible: dict[str, int] = {}  # objects completed whose commit is not finished: stored bytes
        monotonic = self._clocks.monotonic
        self._control = stream.lease if stream is not None else Lease(
            self.store, index.control_oid, name=COLLECTOR_LOCK, ttl=cfg.lease_ttl,
            description=f"change-log collector {self.collector_id}",
            cookie=f"{self.collector_id}:{make_cookie()}", monotonic=monotonic)
        self._shards = [
            Lease(self.store, index.shard_oid(n), name=SHARD_LOCK, ttl=cfg.lease_ttl,
                  description=f"drained by {self.collector_id}", cookie=self._control.ref.cookie,
                  monotonic=monotonic)
            for n in range(index.shards)
        ]
        self._retry = TargetRetry(guard=self._control.check, retries=cfg.retries, backoff_base=cfg.backoff_base,
                                  backoff_max=cfg.backoff_max, sleep=self._clocks.sleep, on_error=self._target_error)
        self._uploads = Uploads(target=target, retry=self._retry, guard=self._control.check, fault=self._fault,
                                monotonic=monotonic, part_bytes=cfg.part_bytes, roll_entries=cfg.roll_entries,
                                roll_bytes=cfg.roll_bytes, roll_seconds=cfg.roll_seconds)
        policy = LoopPolicy.for_lease(cfg.interval, cfg.lease_ttl, backoff_base=cfg.backoff_base,
                                      backoff_max=cfg.backoff_max, pause_poll=cfg.pause_poll)
        self.policy = policy if cfg.standby_retry is None else dataclasses.replace(policy, standby=cfg.standby_retry)
        self._renewer: Renewer | None = None
        self._active = False
        self._state = CollectorState()
        self._seq = 0
        self._published: tuple[int, str | None] | None = None
        self._caps: list[tuple[int, int]] = []  # (observed at, cap) pairs, see _watermark
        self._last_gc = float("-inf")
        self.took_over_at: float | None = None  # monotonic time of the last takeover

    def __repr__(self) -> str:
        return f"Collector({self.collector_id!r}, {self.index.prefix!r} -> {self.target.url!r})"

    # ------------------------------------------------------------------ helpers

    def _fault(self, step: str) -> None:
        if self._hook is not None:
            self._hook(step)

    def _now_us(self) -> int:
        return int(self._clocks.clock() * 1_000_000)

    def _control_write(self, op: WriteOp) -> None:
        self._control.check()
        op.fence = self._control.ref
        self.store.execute(self.index.control_oid, op)

    def _target_error(self, ex: BaseException) -> None:
        with self._stats_lock:
            self._counts.target_errors[error_kind(ex)] += 1

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, object]:
        """A snapshot of the counters, for ``changelog.metrics`` (keys documented there):
        ``passes``, ``entries_emitted``, ``objects_committed``, ``bytes_committed`` (as stored,
        after compression), ``last_pass_entries``, ``last_pass_seconds``, ``last_pass_end`` and
        ``complete_until`` (unix seconds; None until known), ``target_errors`` ({kind: count},
        one per failed attempt), ``failed_passes`` (passes of the service loop failed in a row),
        ``last_error`` (the last failed pass's error, one line) and ``last_failure`` (unix
        seconds), ``active``; a collector stream's ``bucket_delete_holds`` (passes that held
        back a ``bucket_delete`` for other streams, ``_may_commit``) and ``bucket_delete_held``
        (the recorded time of the one held back now, unix seconds; None: none)."""
        hold = self._hold
        with self._stats_lock:
            c = self._counts
            return {
                "bucket_delete_holds": c.bucket_delete_holds,
                "bucket_delete_held": hold.recorded_us / 1_000_000 if hold is not None else None,
                "passes": c.passes,
                "entries_emitted": c.entries_emitted,
                "objects_committed": c.objects_committed,
                "bytes_committed": c.bytes_committed,
                "last_pass_entries": c.last_pass_entries,
                "last_pass_seconds": c.last_pass_seconds,
                "last_pass_end": c.last_pass_end,
                "complete_until": c.complete_until,
                "target_errors": dict(c.target_errors),
                "failed_passes": c.failed_passes,
                "last_error": c.last_error,
                "last_failure": c.last_failure,
                "active": self.active,
            }

    def _count_object(self, entries: int, stored_bytes: int) -> None:
        with self._stats_lock:
            self._counts.objects_committed += 1
            self._counts.entries_emitted += entries
            self._counts.bytes_committed += stored_bytes

    def _count_failure(self, ex: BaseException | None) -> None:
        """A service-loop pass failed with ``ex``; None: a good pass, a takeover, a step down."""
        with self._stats_lock:
            c = self._counts
            if ex is None:
                c.failed_passes = 0
                return
            c.failed_passes += 1
            c.last_error = " ".join(f"{type(ex).__name__}: {ex}".split())
            c.last_failure = self._clocks.clock()

    def _count_pass(self, result: PassResult, seconds: float) -> None:
        with self._stats_lock:
            c = self._counts
            c.passes += 1
            c.last_pass_entries = result.entries
            c.last_pass_seconds = seconds
            c.last_pass_end = self._clocks.clock()
            if self._state.watermark_us:
                c.complete_until = self._state.watermark_us / 1_000_000

    # ------------------------------------------------------------------ leases

    def leases(self) -> list[Lease]:
        """The control lease and every shard's drain lease (the same objects for the life of the
        collector, held or not: their renewal and loss counters stay with them)."""
        return [self._control, *self._shards]

    @property
    def control_lease(self) -> Lease:
        return self._control

    def role_leases(self) -> list[Lease]:
        """The lease of the role (the control lease; shard leases come and go with each pass)."""
        return [self._control]

    @property
    def active(self) -> bool:
        """True while this collector holds the control lease."""
        return self._active and self._control.held

    def try_takeover(self) -> bool:
        """Try once to become the active collector. On success: renewals start, the state is
        loaded and the generation advanced (fenced)."""
        if self.active:
            return True
        if self._active or self._renewer is not None:
            self.step_down()  # a lease was lost: stop the old renewals before starting over
        if self.stream is None:
            if not self._control.acquire():
                return False
            if busy := self._streams_running():
                self._control.release()
                raise LockBusy(f"collector streams {busy} are held by partitioned serves ([scale] partitioned): "
                               "stop them, or run this one partitioned too")
        elif not self._control.held:
            return False  # the stream's partition lease is its owner's to take
        try:
            self._renewer = Renewer(self.config.lease_ttl, name="collector-leases", monotonic=self._clocks.monotonic,
                                    workers=RENEW_WORKERS)
            if self.stream is None:
                self._renewer.add(self._control)
            self._renewer.start()
            self._load_state()
            floor = self._other_cutoffs()
            self._state = replace(self._state, generation=self._state.generation + 1,
                                  last_cutoff_us=max(self._state.last_cutoff_us, floor))
            if self.stream is not None:
                # The stream cuts above the unpartitioned collector's last cutoff from now on,
                # and that collector finished the stream's pending commits: nothing of the stream
                # at or below it is to come (the readers' bound may pass it).
                self._state = replace(self._state, through_us=max(self._state.through_us, floor))
            self._control_write(WriteOp(set={self._state_key: self._state.encode()}))
        except BaseException:
            self.step_down()
            raise
        self._active = True
        self._count_failure(None)
        self._published = None
        self._caps.clear()
        self.took_over_at = self._clocks.monotonic()
        logger.info("collector %s is active (generation %d)", self.collector_id, self._state.generation)
        return True

    def step_down(self) -> None:
        """Stop renewing and release every lease still held."""
        self._active = False
        self._count_failure(None)
        self._answer_flushes(None, LeaseLost(f"collector {self.collector_id} stepped down"))
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
        for lease in self._shards:
            lease.release()
        if self.stream is None:
            self._control.release()

    close = step_down

    def _ensure_active(self) -> None:
        if not self.try_takeover():
            info = self.store.lock_info(self.index.control_oid, COLLECTOR_LOCK)
            who = f"{info.description} ({info.holder})" if info else "another collector"
            raise LockBusy(f"the control lease is held by {who}")

    def _take_shards(self, shards: Sequence[int]) -> list[int]:
        """Take the drain lease of each shard; the ones that are busy."""
        busy = []
        for n in shards:
            lease = self._shards[n]
            if lease.held:
                continue
            if lease.acquire():
                renewer = self._renewer
                if renewer is None:
                    # Stepped down (from another thread) while this pass was running.
                    lease.release()
                    raise LeaseLost(f"collector {self.collector_id} stepped down during the pass")
                renewer.add(lease)
            else:
                busy.append(n)
        return busy

    def _release_shards(self) -> None:
        for lease in self._shards:
            if lease.held:
                if self._renewer is not None:
                    self._renewer.discard(lease)
                lease.release()

    # ------------------------------------------------------------------ state

    def _load_state(self) -> None:
        extra = [self._drained_key] if self._drained_key is not None else []
        got = self.store.omap_get(self.index.control_oid, [self._state_key, self._seq_key, *extra])
        self._state = CollectorState.decode(got.get(self._state_key))
        self._seq = int(got.get(self._seq_key, b"0"))
        if self._drained_key is not None:
            self._drained = Drained.decode(got.get(self._drained_key))

    def _streams_running(self) -> list[int]:
        """The collector streams held now by a live instance (none unless the index was run
        with ``[scale] partitioned``): the unpartitioned collector does not run beside them."""
        got = self.store.omap_get(self.index.control_oid, [COLLECTOR_STREAMS_META_KEY])
        if COLLECTOR_STREAMS_META_KEY not in got:
            return []
        now = self._clocks.clock()
        busy = []
        for n in range(int(orjson.loads(got[COLLECTOR_STREAMS_META_KEY])["count"])):
            info = self.store.lock_info(self.index.control_oid, partition_lock(COLLECTOR_ROLE, n))
            if lock_held(info, now):
                busy.append(n)
        return busy

    def _other_cutoffs(self) -> int:
        """At a takeover: the floor under this collector's cutoffs from the collectors of the
        index's other mode, so that names never go back across a switch of ``[scale]
        partitioned`` (a reader's checkpoint may be any of their names). A stream starts above
        the unpartitioned collector's last cutoff; the unpartitioned collector above every
        stream's."""
        if self.stream is not None:
            got = self.store.omap_get(self.index.control_oid, [COLLECTOR_STATE_KEY])
            return CollectorState.decode(got.get(COLLECTOR_STATE_KEY)).last_cutoff_us
        cutoffs = [CollectorState.decode(raw).last_cutoff_us
                   for key, raw in omap_iter(self.store, self.index.control_oid, prefix=COLLECTOR_STREAM_PREFIX)
                   if key.endswith(".state")]
        return max(cutoffs) + 1 if cutoffs else 0

    @staticmethod
    def read_state(index: ChangeIndex) -> tuple[CollectorState, list[PendingCommit]]:
        """The collector state and the pending commits as stored in ``index`` (for status
        displays: no lease needed, no collector either)."""
        got = index.store.omap_get(index.control_oid, [COLLECTOR_STATE_KEY])
        pending = [PendingCommit.decode(v)
                   for _, v in omap_iter(index.store, index.control_oid, prefix=COLLECTOR_PENDING_PREFIX)]
        return CollectorState.decode(got.get(COLLECTOR_STATE_KEY)), pending

    def state(self) -> CollectorState:
        """The collector state as stored (for status displays)."""
        return self.read_state(self.index)[0]

    def pending(self) -> list[PendingCommit]:
        """Uncommitted (or committed but not yet trimmed) log objects, oldest first: every one
        for the unpartitioned collector, a stream's own (``Stream.owns_name``) for a stream."""
        pending = self.read_state(self.index)[1]
        stream = self.stream
        return pending if stream is None else [p for p in pending if stream.owns_name(p.name)]

    # ------------------------------------------------------------------ service loop (LeasedRole)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: ``changelog.pipeline.loop.run_leased`` with this collector as the role.
        A pass in hand when ``stop`` is set ends at its next page (``step``)."""
        run_leased(self, stop, self.policy, paused=self._paused, monotonic=self._clocks.monotonic, wake=self._wake)

    def acquire(self) -> bool:
        try:
            return self.try_takeover()
        except LeaseLost as ex:
            # Lost again before the takeover was done (a step_down from another thread, or a
            # stall past the TTL): not active, and try_takeover has released what it held.
            logger.warning("collector %s lost the control lease while taking over: %s", self.collector_id, ex)
            return False

    def step(self, stop: threading.Event, *, flush_after_us: int | None = None) -> None:
        """One pass; it commits what it encoded and ends early once ``stop`` is set. With flush
        requests waiting, a pass with no settle window, whose result answers them; the same
        for a stream when a flush was asked at ``flush_after_us``, after its last cutoff."""
        with self._flush_lock:
            flushes, self._flushes = self._flushes, []
        asked = flush_after_us is not None and flush_after_us > self._state.last_cutoff_us
        self._stop = stop
        try:
            result = self.run_pass(settle=0.0 if flushes or asked else None)
        except BaseException as ex:
            for f in flushes:
                f.finish(None, ex)
            if not isinstance(ex, LeaseLost):
                self._count_failure(ex)
            if isinstance(ex, TargetRefused | ObjectMissing):
                # A target problem (refused, or an object that vanished under the pass) fails
                # this pass only: the loop retries with capped backoff, health reports it, and
                # the follower keeps recording. Only start-up finds configuration errors.
                raise TransientError(f"pass failed: {ex}") from ex
            raise
        finally:
            self._stop = None
        self._count_failure(None)
        for f in flushes:
            f.finish(result, None)

    def request_flush(self, timeout: float = FLUSH_TIMEOUT) -> PassResult:
        """For the running service (the API's POST /_/flush): the loop's next pass, started at
        once, has no settle window; its result once it is done. ``LockBusy`` on a standby (the
        active collector is another process), ``TransientError`` when the pass failed or none
        came within ``timeout`` (paused), ``PermanentError`` when it failed for good."""
        req = _FlushRequest()
        with self._flush_lock:
            if not self.active:
                raise LockBusy(f"collector {self.collector_id} is a standby: flush the active one")
            self._flushes.append(req)
        self._wake.set()
        if not req.done.wait(timeout):
            with self._flush_lock:
                if req in self._flushes:
                    self._flushes.remove(req)
            raise TransientError(f"no flush pass within {timeout:.0f}s (is the collector paused?)")
        if req.error is not None:
            kind = PermanentError if isinstance(req.error, PermanentError) else TransientError
            raise kind(f"the flush pass failed: {req.error}") from req.error
        assert req.result is not None
        return req.result

    def _answer_flushes(self, result: PassResult | None, error: BaseException | None) -> None:
        with self._flush_lock:
            flushes, self._flushes = self._flushes, []
        for f in flushes:
            f.finish(result, error)

    def flush(self) -> PassResult:
        """A pass with no settle window: everything recorded so far."""
        return self.run_pass(settle=0.0)

    def recover(self) -> int:
        """Finish every pending commit (needs the control lease); how many there were."""
        self._ensure_active()
        try:
            return self._recover_all()
        finally:
            self._release_shards()

    # ------------------------------------------------------------------ a pass

    def run_pass(self, *, settle: float | None = None) -> PassResult:
        """One pass (docs/design.md §5): recover, cut off, drain every shard below the cutoff
        into log objects, commit them, advance the watermark."""
        self._ensure_active()
        self._fault("pass")
        t0 = self._clocks.monotonic()
        try:
            result = self._pass(self.config.settle if settle is None else settle)
        finally:
            self._release_shards()
        self._count_pass(result, self._clocks.monotonic() - t0)
        return result

    def _pass(self, settle: float) -> PassResult:
        self._load_state()
        self._maybe_gc()
        recovered = self._recover_all()
        cutoff = self._cut_off(settle)
        skipped = tuple(self._take_shards(self._drains))
        if skipped:
            logger.warning("shards %s are locked by another drainer; skipped this pass", list(skipped))
        drained = [shard for shard in self._drains if shard not in skipped]
        # Every floor first (each fenced by its shard lease): from here on the keys below the
        # cutoff of every shard to drain can only shrink, so the pages below can be read ahead.
        for shard in drained:
            lease = self._shards[shard]
            lease.check()
            self.index.raise_floor(shard, cutoff, fence=lease.ref)
            self._fault("floor")
        self._peer_view = None
        objects, entries, stopped, held = self._drain(drained, cutoff)
        if self.stream is not None and self._drained_key is not None:
            # Every object of this pass is committed (a failed commit raised), recovery came
            # first, and the next cutoff is above this one: nothing will sort at or below it.
            # Every record before the cutoff is committed too, unless shards were skipped or the
            # pass stopped early, or before the bucket_delete held back (written in the same op:
            # another stream reads both together, ``_may_commit``).
            self._state = replace(self._state, through_us=cutoff)
            if not skipped and not stopped:
                done = cutoff if held is None else held
                self._drained = Drained(max(done, self._drained.drained_us), held or 0)
            else:
                self._drained = Drained(self._drained.drained_us)
            state = {self._state_key: self._state.encode(), self._drained_key: self._drained.encode()}
            self._control_write(WriteOp(set=state))
        if held is not None:
            self._note_hold()
        complete = cutoff if held is None else min(cutoff, held)
        watermark = None if skipped or stopped else self._advance_watermark(complete)
        if stopped:
            logger.info("stopping: pass ended early after %d objects; the rest stays in the index", len(objects))
        if objects or recovered:
            logger.info("pass: cutoff %s, %d entries in %d objects, %d recovered", rfc3339_us(cutoff),
                        entries, len(objects), recovered)
        return PassResult(cutoff, tuple(objects), entries, recovered, skipped, watermark)

    def _cut_off(self, settle: float) -> int:
        """This pass's cutoff: now - settle, never below the last one (persisted first)."""
        observed_us = self._now_us()
        if self._cap is not None:
            cap = self._cap()
            if cap is not None:
                self._caps.append((observed_us, cap))
        # A stream cuts off strictly above its last pass: its objects of a new pass sort above
        # ``through_us`` (the unpartitioned collector orders by seq within a cutoff instead).
        floor = self._state.last_cutoff_us + (1 if self.stream is not None else 0)
        cutoff = max(observed_us - int(settle * 1_000_000), floor)
        if cutoff != self._state.last_cutoff_us:
            # Persisted before any object carries it: cutoffs (and so names) never go back,
            # even across a takeover by a collector whose clock is behind.
            self._state = replace(self._state, last_cutoff_us=cutoff)
            self._control_write(WriteOp(set={self._state_key: self._state.encode()}))
        return cutoff

    def _drain(self, shards: Sequence[int], cutoff: int) -> tuple[list[str], int, bool, int | None]:
        """Stream the entries of ``shards`` below ``cutoff`` into log objects and commit each;
        the objects, their entries, whether the pass stopped early, and the recorded time of a
        ``bucket_delete`` held back (None: none; it and what follows it in its shard stay). Each
        writer's ``with`` aborts its upload if the object is not committed."""
        objects: list[str] = []
        entries = 0
        if not shards:
            return objects, entries, False, None
        bound = keys.time_bound(cutoff)
        reader = ReadAhead(self._page, shards, bound, depth=READ_AHEAD_PAGES, workers=READ_WORKERS)
        cur = _Cursor(reader, cutoff)
        try:
            while cur.pending() or self._next_page(cur):
                with self._open_writer(cutoff) as writer:
                    self._fill(writer, cur)
                    objects.append(self._commit(writer))
                entries += writer.entries
        finally:
            cur.reader.close()
        return objects, entries, cur.stopped, cur.held_us

    def _next_page(self, cur: _Cursor) -> bool:
        """The next page into ``cur``; False once there is none, or the loop is stopping."""
        if cur.done:
            return False
        if self._stop is not None and self._stop.is_set():
            # Shutting down: commit what is encoded, leave the rest in the index for the next
            # pass (whoever runs it); the watermark stays where it is.
            cur.done = cur.stopped = True
            return False
        self._control.check()
        item = cur.reader.get()
        if item is None:
            cur.done = True
            return False
        cur.shard, cur.page = item
        cur.i = 0
        if cur.shard == self._delete_shard:
            held = self._held_at(cur.page, cur.cutoff)
            if held is not None:
                # The delete's shard is the stream's last: the pass ends with what came before.
                cur.held_us = keys.time_of(cur.page[held][0])
                cur.page = cur.page[:held]
                cur.done = True
                if not cur.page:
                    return False
        self._fault("read")
        return True

    # ------------------------------------------------------------------ bucket_deletes across streams

    def _held_at(self, page: Page, cutoff: int) -> int | None:
        """The position in ``page`` (of the delete's shard) of the first ``bucket_delete`` that
        may not be committed in a pass cut off at ``cutoff`` (``_may_commit``); None: none."""
        # One search over the page first: about a tenth of its encoding, and nearly every page
        # has no delete (a match across two entries only costs the look at each below).
        if _DELETE_TAG not in b"".join([raw for _, raw in page]):
            return None
        for j, (key, raw) in enumerate(page):
            if _DELETE_TAG in raw and Mutation.decode(raw).op is Op.BUCKET_DELETE:
                if not self._may_commit(keys.time_of(key), cutoff):
                    return j
        return None

    def _may_commit(self, t_us: int, cutoff: int) -> bool:
        """Whether this stream may commit the ``bucket_delete`` recorded at ``t_us`` in this
        pass, cut off at ``cutoff`` (docs/design.md §16). The follower records a bucket's delete
        after every record of its lifetime, so with a later recorded time; the records of the
        bucket in other streams can be in objects committed later than this pass's, and a reader
        that meets the delete first (in name order: cutoff, then seq) would apply them after it.
        So: every other stream with shards must have committed every record recorded up to
        ``t_us`` and a margin past it (``behind_of``), and this pass's cutoff must be above
        every cutoff of theirs at that moment (their ``through_us``: the objects holding those
        records lie at or below it), so that its objects sort after theirs. Until then the
        delete, and what follows it in its shard, wait for a later pass."""
        hold = self._hold
        if hold is None or hold.recorded_us != t_us:
            hold = _Hold(t_us, self._clocks.monotonic())
        if hold.bound_us is None:
            peers = self._peers_now()
            behind = behind_of(t_us, self._stream_n, peers)
            bound = None if behind else max(state.through_us for _, state in peers.values())
            hold = replace(hold, bound_us=bound, behind=tuple(behind))
        if hold.bound_us is not None and cutoff > hold.bound_us:
            if hold.logged:
                logger.info(
                    "collector stream %d: commits the bucket_delete recorded at %s, held back %.0f s",
                    self._stream_n,
                    rfc3339_us(t_us),
                    self._clocks.monotonic() - hold.since,
                )
            self._hold = None
            return True
        self._hold = hold
        return False

    def _peers_now(self) -> dict[int, tuple[Drained, CollectorState]]:
        """The other streams' ``Drained`` and states, read once in a pass (only a pass that
        meets a bucket_delete reads them): they only move forward, so a read from earlier in the
        pass is a safe answer later in it."""
        if self._peer_view is None:
            want = [k for m in self._peers for k in (drained_key(m), collector_state_key(m))]
            got = self.store.omap_get(self.index.control_oid, want)
            self._peer_view = {m: _peer(got, m) for m in self._peers}
        return self._peer_view

    def _note_hold(self) -> None:
        """A pass held a bucket_delete back: counted; said once at INFO when it has been held
        for a lease TTL (another stream is stalled, or its holder died and is not taken over yet)."""
        with self._stats_lock:
            self._counts.bucket_delete_holds += 1
        hold = self._hold
        if hold is None or hold.logged:
            return
        held_for = self._clocks.monotonic() - hold.since
        if held_for < self.config.lease_ttl:
            return
        self._hold = replace(hold, logged=True)
        why = (
            f"streams {list(hold.behind)} have not committed what was recorded before it"
            if hold.behind
            else "its objects must sort after the other streams' (next pass)"
        )
        logger.info(
            "collector stream %d holds back the bucket_delete recorded at %s for %.0f s: %s "
            "(a stream whose holder died is taken over one lease TTL after)",
            self._stream_n,
            rfc3339_us(hold.recorded_us),
            held_for,
            why,
        )

    @property
    def _stream_n(self) -> int:
        return self.stream.n if self.stream is not None else -1

    def _fill(self, writer: LogWriter, cur: _Cursor) -> None:
        """Add pages to ``writer`` until it is full, rolls over by age at the end of a page, or
        the pages run out."""
        while True:
            cur.i = writer.add_many(cur.shard, cur.page, cur.i, roll=True)
            if writer.full():
                return
            if cur.pending():
                continue
            if writer.expired() or not self._next_page(cur):
                return

    def _open_writer(self, cutoff: int) -> LogWriter:
        seq = self._seq + 1
        # Allocated (fenced) before the name is used anywhere: names are never reused.
        self._control_write(WriteOp(set={self._seq_key: str(seq).encode()}))
        self._seq = seq
        self._fault("seq")
        name = log_name(self.log_prefix, cutoff, seq, self.compression,
                        stream=self.stream.n if self.stream is not None else None)
        return LogWriter(self._uploads, name, seq=seq, cutoff_us=cutoff, generation=self._state.generation,
                         compression=self.compression)

    def _commit(self, writer: LogWriter) -> str:
        """Commit protocol (design §5.5): pending record, complete, trim, drop."""
        writer.wait_parts()  # every full part is uploaded (or its error raised) first
        pending = writer.pending()
        self._control_write(WriteOp(set={pending.key: pending.encode()}))
        self._fault("pending")
        writer.complete(pending.metadata())
        # Visible now: should the trim fail, recovery finishes this commit and counts it.
        self._visible[pending.name] = writer.stored_bytes
        self._fault("complete")
        self._trim([(r.shard, r.keys) for r in writer.ranges], step="trim")
        self._finish(pending)
        self._count_object(pending.entries, self._visible.pop(pending.name))
        self._fault("drop")
        return pending.name

    def _trim(self, ranges: Sequence[tuple[int, Sequence[str]]], *, step: str) -> None:
        """Remove exactly these keys of each shard, in batches of ``trim_batch``, each batch
        fenced by its shard lease (checked right before the batch is sent). The batches are
        independent exact removals: several are in flight at once (``TRIM_WORKERS``); ``step``
        fires once per batch done, in order. On any failure, no batch is left in flight."""
        size = self.config.trim_batch
        batches = [(shard, keys_[i : i + size]) for shard, keys_ in ranges for i in range(0, len(keys_), size)]
        if len(batches) <= 1 or TRIM_WORKERS <= 1:
            for shard, batch in batches:
                self._trim_batch(shard, batch)
                self._fault(step)
            return
        with ThreadPoolExecutor(min(TRIM_WORKERS, len(batches)), thread_name_prefix="collector-trim") as pool:
            futures = [pool.submit(self._trim_batch, shard, batch) for shard, batch in batches]
            try:
                for f in futures:
                    f.result()
                    self._fault(step)
            except BaseException as first:
                for f in futures:
                    f.cancel()
                # A lost lease outranks any other failure (run() must go to standby, not retry
                # or stop): look at every batch that ran, waiting for those still in flight.
                for f in futures:
                    if f.cancelled():
                        continue
                    try:
                        ex = f.exception()
                    except BaseException:  # noqa: BLE001 - interrupted while waiting: keep first
                        break
                    if isinstance(ex, LeaseLost) and ex is not first:
                        raise ex from first
                raise

    def _trim_batch(self, shard: int, batch: Sequence[str]) -> None:
        lease = self._shards[shard]
        lease.check()
        self.index.remove(shard, batch, fence=lease.ref)

    def _finish(self, pending: PendingCommit) -> None:
        """Drop the pending record and remember the object, in one fenced op."""
        if self._state.last_object is None or pending.name > self._state.last_object:
            self._state = replace(self._state, last_object=pending.name)
        self._control_write(WriteOp(set={self._state_key: self._state.encode()}, remove=[pending.key]))

    # ------------------------------------------------------------------ recovery

    def _recover_all(self) -> int:
        done = 0
        for pending in self.pending():
            self._recover(pending)
            done += 1
        return done

    def _page(self, shard: int, after: str, end: str) -> Page:
        """One page of raw data entries (key, stored value) of a shard in ``(after, end)``.
        Raw: the log line is encoded straight from the stored value (``encode_raw``)."""
        return self.store.omap_page(
            self.index.shard_oid(shard),
            start_after=max(after, keys.DATA_PREFIX),
            end_before=min(end, keys.DATA_END),
            prefix=keys.DATA_PREFIX,
            limit=self.config.page,
        )

    def _range_pages(self, r: ShardRange) -> Iterator[Page]:
        """The entries of a recorded range, in key order, a page at a time (the floor has
        frozen it)."""
        after = keys.time_bound(keys.time_of(r.first))  # below every key of first's time
        end = keys.time_bound(keys.time_of(r.last) + 1)
        first, last = r.first, r.last
        while batch := self._page(r.shard, after, end):
            yield [(key, raw) for key, raw in batch if first <= key <= last]
            after = batch[-1][0]

    def _recover(self, pending: PendingCommit) -> None:
        busy = self._take_shards(sorted({r.shard for r in pending.ranges}))
        if busy:
            raise LockBusy(f"cannot recover {pending.name}: shards {busy} are locked by another drainer")
        logger.info("recovering %s (%d entries)", pending.name, pending.entries)
        exists = self._retry(f"HEAD {pending.name}", lambda: self.target.head(pending.name)) is not None
        uploaded = 0
        if not exists:
            uploaded = self._reupload(pending)
            self._fault("recover.upload")
        self._trim([(r.shard, [key for page in self._range_pages(r) for key, _ in page]) for r in pending.ranges],
                   step="recover.trim")
        self._finish(pending)
        # Counted by the process that finishes the commit, like ``_commit`` does.
        if not exists:
            stored = uploaded
        elif pending.name in self._visible:
            stored = self._visible.pop(pending.name)
        else:
            stored = self._stored_size(pending.name)  # uploaded by a collector before us
        self._count_object(pending.entries, stored)

    def _reupload(self, pending: PendingCommit) -> int:
        """Rebuild a pending object that never became visible, byte for byte, from the index
        ranges its record names (the floor froze them); the bytes stored."""
        uploads = self._retry(f"list uploads of {pending.name}", lambda: list(self.target.list_uploads(pending.name)))
        for up in uploads:
            if up.name == pending.name:
                self._retry(f"abort {up.upload_id}", functools.partial(
                    self.target.abort_multipart, up.name, up.upload_id))
        with LogWriter(self._uploads, pending.name, seq=pending.seq, cutoff_us=pending.cutoff_us,
                       generation=pending.generation, compression=pending.compression,
                       metadata=pending.metadata()) as writer:
            for r in pending.ranges:
                for entries in self._range_pages(r):
                    writer.add_many(r.shard, entries)
            writer.wait_parts()
            rebuilt = writer.pending()
            if [(r.shard, r.first, r.last, r.count) for r in rebuilt.ranges] != [
                (r.shard, r.first, r.last, r.count) for r in pending.ranges
            ]:
                # Only possible if someone removed index keys behind the collector's back.
                logger.error("%s: the index no longer holds exactly the recorded ranges; "
                             "uploading what is left", pending.name)
            writer.complete(pending.metadata())
        logger.info("re-uploaded %s", pending.name)
        return writer.stored_bytes

    def _stored_size(self, name: str) -> int:
        """The size of a log object as stored, best effort (0 if the target will not say)."""
        try:
            for info in self.target.list(name, page=1):
                return info.size if info.name == name else 0
        except (TransientError, PermanentError) as ex:
            self._target_error(ex)
        return 0

    # ------------------------------------------------------------------ housekeeping

    def _maybe_gc(self) -> None:
        if self.stream is not None and self.stream.n != 0:
            return  # one stream's holder cleans the target for all
        now = self._clocks.monotonic()
        if now - self._last_gc < self.config.gc_interval:
            return
        self._last_gc = now
        prefix = self.log_prefix + "/" if self.log_prefix else ""
        # Best effort. The first pass after a takeover (``_last_gc`` starts at -inf) removes
        # what interrupted writes left; only the active collector does, never a standby.
        try:
            self.target.remove_stale(older_than=self.config.gc_age, now=self._clocks.clock())
            n = gc_uploads(self.target, prefix, older_than=self.config.gc_age, now=self._clocks.clock())
        except (TransientError, PermanentError, ObjectMissing) as ex:
            self._target_error(ex)
            logger.warning("target clean-up (stale temporary files, abandoned uploads) failed: %s", ex)
            return
        if n:
            logger.info("aborted %d abandoned multipart uploads", n)

    def _advance_watermark(self, cutoff: int) -> int | None:
        """Everything recorded below ``cutoff`` is committed: advance and publish the watermark.

        With a ``watermark_cap`` (the RGW follower's caught-up time) only a cap observed at or
        before ``cutoff`` counts: every entry recorded for it was in the index by then, so below
        the cutoff this pass drained."""
        wm = cutoff
        if self._cap is not None:
            usable = [cap for at, cap in self._caps if at <= cutoff]
            if not usable:
                return None
            wm = min(cutoff, max(usable))
            newest = max(at for at, _ in self._caps if at <= cutoff)
            self._caps = [(at, cap) for at, cap in self._caps if at >= newest]
        wm = max(wm, self._state.watermark_us)
        if wm != self._state.watermark_us:
            self._state = replace(self._state, watermark_us=wm)
            self._control_write(WriteOp(set={self._state_key: self._state.encode()}))
        self._fault("watermark")
        if self.stream is not None:
            return wm  # published over every stream (``collector_streams.publish``)
        published = (wm, self._state.last_object)
        if wm and published != self._published:
            body = encode_watermark(complete_until_us=wm, last_object=self._state.last_object,
                                    updated_us=self._now_us())
            name = watermark_name(self.log_prefix)
            self._retry(f"PUT {name}", lambda: self.target.put(name, body, metadata={}))
            self._published = published
        return wm

