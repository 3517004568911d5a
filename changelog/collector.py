"""The collector: drains the change index, exactly once, into JSON Lines log objects in a target
(docs/design.md §5-7).

One collector at a time holds the control lease; during a pass it also holds the ``drain``
lease of every shard it reads. A pass freezes each shard below a cutoff (the floor), streams the
entries below it into log objects, and commits each object with a pending record written
*before* the object becomes visible, so that a crash at any point leaves either nothing or a
record from which recovery finishes the job: trim if the object exists, rebuild the same bytes
under the same name if it does not. Every index and control write is fenced by the lease it
needs; a lost lease stops the pass at once (``LeaseLost``).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from changelog import keys
from changelog.errors import (
    ConfigError,
    InvalidMutation,
    LeaseLost,
    LockBusy,
    ObjectMissing,
    PermanentError,
    TransientError,
)
from changelog.index import OP_KEYS, ChangeIndex
from changelog.lease import Lease, make_cookie
from changelog.logformat import (
    Compression,
    ObjectEncoder,
    encode_raw,
    encode_raw_many,
    encode_watermark,
    log_name,
    parse_log_name,
    rfc3339_us,
    watermark_name,
)
from changelog.store import WriteOp, omap_iter
from changelog.targets import Part, Target, UploadMissing, gc_uploads

logger = logging.getLogger(__name__)

MiB = 1024 * 1024

# Control-object keys owned by the collector (the index owns ``meta``, the RGW follower ``r.``).
PENDING_PREFIX = "c.pending."
STATE_KEY = "c.state"
SEQ_KEY = "c.seq"
CONTROL_LOCK = "collector"
SHARD_LOCK = "drain"

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
# S3 caps an upload at 10000 parts.
MAX_PARTS = 10_000
# Lease renewals in flight at once when many are due together (every shard lease of a pass).
RENEW_WORKERS = 8
# Pages read ahead of the encoder (a page is ``page`` entries, ~250 KiB at 1000): the next reads
# overlap the encoding of this one.
READ_AHEAD_PAGES = 4
# Shards read at once, each up to READ_AHEAD_PAGES ahead (handed over in shard order).
READ_WORKERS = 2
# Full parts waiting for the upload thread while it sends one. Encoded bytes held per log object
# being written: the part in flight, the queued ones, the one the pass holds while it waits to
# queue it, and the encoder's buffer (up to a part plus a page): about (3 + UPLOAD_QUEUE_PARTS)
# x part_bytes (~40 MB at the default 8 MiB).
UPLOAD_QUEUE_PARTS = 1
# Trim batches (fenced removes) in flight at once.
TRIM_WORKERS = 8


@dataclass(frozen=True, slots=True)
class ShardRange:
    """The keys of one shard in one log object: every data key in ``[first, last]``."""

    shard: int
    first: str
    last: str
    count: int


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """What a log object holds, written to the control object before the object is made visible.
    Its content is a pure function of the index ranges, so it can be rebuilt byte for byte."""

    name: str
    seq: int
    cutoff_us: int
    generation: int
    entries: int
    first_us: int
    last_us: int
    ranges: tuple[ShardRange, ...]

    @property
    def key(self) -> str:
        return PENDING_PREFIX + self.name

    @property
    def compression(self) -> Compression:
        parsed = parse_log_name(self.name)
        if parsed is None:
            raise PermanentError(f"pending record names no log object: {self.name!r}")
        return parsed.compression

    def metadata(self) -> dict[str, str]:
        return {
            "cutoff": rfc3339_us(self.cutoff_us),
            "seq": str(self.seq),
            "entries": str(self.entries),
            "first-time": rfc3339_us(self.first_us),
            "last-time": rfc3339_us(self.last_us),
        }

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "name": self.name,
                "seq": self.seq,
                "cutoff_us": self.cutoff_us,
                "generation": self.generation,
                "entries": self.entries,
                "first_us": self.first_us,
                "last_us": self.last_us,
                "ranges": [[r.shard, r.first, r.last, r.count] for r in self.ranges],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> PendingCommit:
        try:
            d = orjson.loads(data)
            return cls(
                name=d["name"],
                seq=int(d["seq"]),
                cutoff_us=int(d["cutoff_us"]),
                generation=int(d["generation"]),
                entries=int(d["entries"]),
                first_us=int(d["first_us"]),
                last_us=int(d["last_us"]),
                ranges=tuple(ShardRange(int(s), str(f), str(la), int(c)) for s, f, la, c in d["ranges"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as ex:
            raise PermanentError(f"unreadable pending commit record ({len(data)} bytes): {ex}") from ex


@dataclass(frozen=True, slots=True)
class CollectorState:
    """``c.state`` in the control object."""

    last_cutoff_us: int = 0
    last_object: str | None = None
    watermark_us: int = 0
    generation: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "last_cutoff_us": self.last_cutoff_us,
                "last_object": self.last_object,
                "watermark_us": self.watermark_us,
                "generation": self.generation,
            }
        )

    @classmethod
    def decode(cls, data: bytes | None) -> CollectorState:
        if not data:
            return cls()
        try:
            d = orjson.loads(data)
            return cls(
                last_cutoff_us=int(d.get("last_cutoff_us", 0)),
                last_object=d.get("last_object"),
                watermark_us=int(d.get("watermark_us", 0)),
                generation=int(d.get("generation", 0)),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as ex:
            raise PermanentError(f"unreadable collector state ({len(data)} bytes): {ex}") from ex


@dataclass(frozen=True, slots=True)
class PassResult:
    cutoff_us: int
    objects: tuple[str, ...]
    entries: int
    recovered: int
    skipped_shards: tuple[int, ...]
    watermark_us: int | None


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


def error_kind(ex: BaseException) -> str:
    """The ``kind`` label of a target error: ``transient`` (retried), ``missing`` (an object or
    upload that should be there is not) or ``permanent``."""
    if isinstance(ex, TransientError):
        return "transient"
    if isinstance(ex, ObjectMissing):
        return "missing"
    return "permanent"


@dataclass(slots=True)
class _Range:
    shard: int
    keys: list[str] = field(default_factory=list)


def renew_every(lease: Lease) -> float:
    """How long after its last renewal a lease is renewed again: ttl/3 as usual, but never
    leaving less slack before the local deadline (ttl - margin) than that same interval, so a
    late or failed renewal gets a second chance (ttl 3 s: every 1 s, 1.5 s to spare; ttl 1 s:
    every 0.25 s)."""
    return min(lease.ttl / 3, (lease.ttl - lease.margin) / 2)


class _Renewer(threading.Thread):
    """Renews a changing set of leases from one thread (one thread per shard would not scale to
    thousands of shards). Each lease is renewed ``interval`` after its last renewal (not after
    the end of a round over all of them), the most urgent first, several at a time when many
    are due, so one slow RPC does not delay the others. A refused renewal marks that lease lost.

    ``discard`` waits for an in-flight renewal of that lease to finish: once it returns, the
    renewer no longer touches the lease, so a renewal never overlaps its release or its
    re-acquisition by the next pass. (Without that, a renewal that was already on its way when
    a pass released its shards came back refused, marked the lease lost and dropped it from the
    set, *after* the next pass had taken it again: that lease then went unrenewed and the pass
    died of "lease drain ... not held" one TTL later.)
    """

    def __init__(self, ttl: float, *, monotonic: Callable[[], float] = time.monotonic,
                 workers: int = RENEW_WORKERS) -> None:
        super().__init__(name="collector-leases", daemon=True)
        self.ttl = float(ttl)
        self.interval = self.ttl / 3  # the longest wait between two looks at the set
        self._monotonic = monotonic
        self._workers = max(1, workers)
        self._leases: dict[str, Lease] = {}
        self._busy: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop_event = threading.Event()

    def add(self, lease: Lease) -> None:
        with self._cond:
            self._leases[lease.oid] = lease
            self._retry_at.pop(lease.oid, None)
            self._cond.notify_all()

    def discard(self, lease: Lease) -> None:
        """Stop renewing ``lease``; returns once no renewal of it is in flight (or after a TTL, if
        the store does not answer: the lease cannot be trusted by then anyway)."""
        with self._cond:
            deadline = time.monotonic() + self.ttl
            while lease.oid in self._busy and self.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("renewal of %s still in flight after %.0fs; dropping it anyway", lease, self.ttl)
                    break
                self._cond.wait(left)
            if self._leases.get(lease.oid) is lease:
                del self._leases[lease.oid]
            self._retry_at.pop(lease.oid, None)

    def stop(self, *, wait: bool = True) -> None:
        """Stop renewing; with ``wait``, return once renewals in flight are over (so a release that
        follows does not race one)."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(self.ttl)

    def _due(self, now: float) -> tuple[list[Lease], float]:
        """The leases to renew now, most urgent first, and when to look again (``_cond`` held)."""
        due: list[tuple[float, Lease]] = []
        wake = now + self.interval
        for oid, lease in self._leases.items():
            if oid in self._busy:
                continue
            remaining = lease.remaining()
            # Renewed ``every`` after its last lock call, when its local deadline is
            # ttl - margin - every away.
            at = now + remaining - (lease.ttl - lease.margin - renew_every(lease))
            at = max(at, self._retry_at.get(oid, at))
            if at <= now:
                due.append((remaining, lease))
            else:
                wake = min(wake, at)
        due.sort(key=lambda item: item[0])
        return [lease for _, lease in due], wake

    def run(self) -> None:
        pool: ThreadPoolExecutor | None = None
        try:
            while not self._stop_event.is_set():
                with self._cond:
                    now = self._monotonic()
                    due, wake = self._due(now)
                    if not due:
                        # Real-time wait, bounded: the clock may be a test's.
                        self._cond.wait(min(self.interval, max(0.005, wake - now)))
                        continue
                    self._busy.update(lease.oid for lease in due)
                if len(due) == 1 or self._workers == 1:
                    for lease in due:
                        self._renew(lease)
                else:
                    if pool is None:
                        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="collector-renew")
                    list(pool.map(self._renew, due))
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            with self._cond:
                self._busy.clear()
                self._cond.notify_all()

    def _renew(self, lease: Lease) -> None:
        outcome = "renewed"
        try:
            if self._stop_event.is_set():
                outcome = "stopped"
            else:
                lease.renew()
        except LeaseLost:
            outcome = "lost"
        except Exception as ex:  # noqa: BLE001 - TransientError, or anything else: retry soon
            outcome = "failed"
            logger.warning("renewing %s failed, retrying soon: %s", lease, ex)
        finally:
            with self._cond:
                self._busy.discard(lease.oid)
                if outcome == "lost" and self._leases.get(lease.oid) is lease:
                    del self._leases[lease.oid]
                if outcome == "failed":
                    self._retry_at[lease.oid] = self._monotonic() + min(1.0, renew_every(lease) / 2)
                else:
                    self._retry_at.pop(lease.oid, None)
                self._cond.notify_all()


class _ReadAhead:
    """Reads the data pages of shards below a bound from threads of their own (``workers``
    shards at a time, each at most ``depth`` pages ahead of the consumer) and hands them over in
    shard order, pages in key order: ``get()`` gives ``(shard, page)`` for every non-empty page,
    then None; a read error is raised by the ``get()`` that reaches it. Reads only: every write
    stays with the pass, which checks its leases as before."""

    def __init__(self, collector: Collector, shards: Sequence[int], end: str, *, depth: int,
                 workers: int) -> None:
        self._c = collector
        self._shards = list(shards)
        self._end = end
        self._workers = max(1, workers)
        self._queues: list[queue.Queue[list[tuple[str, bytes]] | BaseException | None]] = [
            queue.Queue(maxsize=max(1, depth)) for _ in self._shards]
        self._cond = threading.Condition()
        self._next = 0  # the next shard (position in ``shards``) a worker takes
        self._pos = 0  # the shard the consumer is on: workers stay within ``workers`` of it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"collector-read-{i}", daemon=True)
                         for i in range(min(self._workers, len(self._shards)))]
        for t in self._threads:
            t.start()

    def _take(self) -> int | None:
        with self._cond:
            while not self._stop.is_set():
                if self._next >= len(self._shards):
                    return None
                if self._next < self._pos + self._workers:
                    self._next += 1
                    return self._next - 1
                self._cond.wait(0.1)
            return None

    def _run(self) -> None:
        while (i := self._take()) is not None:
            shard, q = self._shards[i], self._queues[i]
            try:
                after = ""
                while not self._stop.is_set():
                    batch = self._c._page(shard, after, self._end)
                    if not batch:
                        break
                    self._put(q, batch)
                    after = batch[-1][0]
                self._put(q, None)
            except BaseException as ex:  # noqa: BLE001 - handed to the consumer, raised there
                self._put(q, ex)
                return

    def _put(self, q: queue.Queue[list[tuple[str, bytes]] | BaseException | None],
             item: list[tuple[str, bytes]] | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> tuple[int, list[tuple[str, bytes]]] | None:
        while self._pos < len(self._shards):
            q = self._queues[self._pos]
            item = q.get()
            if isinstance(item, BaseException):
                q.put(item)  # every later get() raises it too
                raise item
            if item is None:
                with self._cond:
                    self._pos += 1
                    self._cond.notify_all()
                continue
            return self._shards[self._pos], item
        return None

    def close(self) -> None:
        """Stop reading; returns once the threads are gone (reads in flight finish first)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            while t.is_alive():
                for q in self._queues:
                    try:
                        while True:
                            q.get_nowait()
                    except queue.Empty:
                        pass
                t.join(0.05)


class Collector:
    """Drains a ``ChangeIndex`` into change-log objects in a ``Target``.

    ``run(stop)`` is the service loop (standby until the control lease is free, then a pass
    every ``interval``); ``run_pass()``, ``flush()`` and ``recover()`` are single steps for the
    CLI and tests.
    """

    def __init__(
        self,
        index: ChangeIndex,
        target: Target,
        *,
        settle: float = 2.0,
        lease_ttl: float = 30.0,
        roll_bytes: int = 64 * MiB,
        roll_entries: int = 100_000,
        roll_seconds: float = 60.0,
        part_bytes: int = 8 * MiB,
        compression: Compression | str = Compression.NONE,
        log_prefix: str = "",
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        collector_id: str | None = None,
        watermark_cap: Callable[[], int | None] | None = None,
        fault_hook: Callable[[str], None] | None = None,
        retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        standby_retry: float | None = None,
        gc_age: float = 3600.0,
        gc_interval: float = 600.0,
        page: int = OP_KEYS,
        trim_batch: int = OP_KEYS,
        paused: Callable[[], bool] | None = None,
        pause_poll: float = 0.25,
    ) -> None:
        if settle < 0 or interval <= 0 or roll_entries < 1 or roll_bytes < 1 or roll_seconds < 0:
            raise ConfigError("collector: settle, roll_* must be >= 0 and interval, roll_entries, roll_bytes > 0")
        if part_bytes < target.min_part_bytes:
            raise ConfigError(
                f"collector.part_bytes must be at least {target.min_part_bytes} bytes for {target.url} "
                f"(got {part_bytes})"
            )
        if roll_bytes // part_bytes + 2 > MAX_PARTS:
            raise ConfigError(f"collector.roll_bytes / part_bytes must stay below {MAX_PARTS} parts")
        self.index = index
        self.store = index.store
        self.target = target
        self.settle = float(settle)
        self.lease_ttl = float(lease_ttl)
        self.roll_bytes = int(roll_bytes)
        self.roll_entries = int(roll_entries)
        self.roll_seconds = float(roll_seconds)
        self.part_bytes = int(part_bytes)
        self.compression = Compression.parse(compression)
        self.log_prefix = log_prefix.strip("/")
        self.interval = float(interval)
        self.collector_id = collector_id or make_cookie("collector")
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.standby_retry = standby_retry if standby_retry is not None else min(2.0, self.lease_ttl / 4)
        self.gc_age = gc_age
        self.gc_interval = gc_interval
        self.page = page
        self.trim_batch = trim_batch
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._cap = watermark_cap
        self._hook = fault_hook
        self._stop: threading.Event | None = None  # run()'s: a pass ends early when it is set
        self._paused = paused
        self.pause_poll = float(pause_poll)
        self._stats_lock = threading.Lock()
        self._counts = _Counts()
        self._visible: dict[str, int] = {}  # objects completed whose commit is not finished: stored bytes
        self._control = Lease(
            self.store,
            index.control_oid,
            name=CONTROL_LOCK,
            ttl=self.lease_ttl,
            description=f"change-log collector {self.collector_id}",
            cookie=f"{self.collector_id}:{make_cookie()}",
            monotonic=monotonic,
        )
        self._shards = [
            Lease(
                self.store,
                index.shard_oid(n),
                name=SHARD_LOCK,
                ttl=self.lease_ttl,
                description=f"drained by {self.collector_id}",
                cookie=self._control.ref.cookie,
                monotonic=monotonic,
            )
            for n in range(index.shards)
        ]
        self._renewer: _Renewer | None = None
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
        return int(self._clock() * 1_000_000)

    def _control_write(self, op: WriteOp) -> None:
        self._control.check()
        op.fence = self._control.ref
        self.store.execute(self.index.control_oid, op)

    def _retry(self, what: str, fn: Callable[[], Any], *, check_first: bool = True) -> Any:
        """Run a target call, retrying transient failures with capped exponential backoff. The
        control lease is checked before every attempt (the caller may have checked it just
        before the first): no write goes out once it is lost."""
        delay = self.backoff_base
        attempt = 0
        while True:
            if attempt or check_first:
                self._control.check()
            try:
                return fn()
            except (TransientError, PermanentError, ObjectMissing) as ex:
                self._target_error(ex)
                if not isinstance(ex, TransientError):
                    raise
                attempt += 1
                if attempt > self.retries:
                    raise
                logger.warning("%s failed (attempt %d/%d), retrying in %.1fs: %s", what, attempt,
                               self.retries, delay, ex)
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def _target_error(self, ex: BaseException) -> None:
        with self._stats_lock:
            self._counts.target_errors[error_kind(ex)] += 1

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters, for ``changelog.metrics`` (keys documented there):
        ``passes``, ``entries_emitted``, ``objects_committed``, ``bytes_committed`` (as stored,
        after compression), ``last_pass_entries``, ``last_pass_seconds``, ``last_pass_end`` and
        ``complete_until`` (unix seconds; None until known), ``target_errors`` ({kind: count},
        one per failed attempt)."""
        with self._stats_lock:
            c = self._counts
            return {
                "passes": c.passes,
                "entries_emitted": c.entries_emitted,
                "objects_committed": c.objects_committed,
                "bytes_committed": c.bytes_committed,
                "last_pass_entries": c.last_pass_entries,
                "last_pass_seconds": c.last_pass_seconds,
                "last_pass_end": c.last_pass_end,
                "complete_until": c.complete_until,
                "target_errors": dict(c.target_errors),
                "active": self.active,
            }

    def _count_object(self, entries: int, stored_bytes: int) -> None:
        with self._stats_lock:
            self._counts.objects_committed += 1
            self._counts.entries_emitted += entries
            self._counts.bytes_committed += stored_bytes

    def _count_pass(self, result: PassResult, seconds: float) -> None:
        with self._stats_lock:
            c = self._counts
            c.passes += 1
            c.last_pass_entries = result.entries
            c.last_pass_seconds = seconds
            c.last_pass_end = self._clock()
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
        if not self._control.acquire():
            return False
        try:
            self._renewer = _Renewer(self.lease_ttl, monotonic=self._monotonic)
            self._renewer.add(self._control)
            self._renewer.start()
            self._load_state()
            self._state = replace(self._state, generation=self._state.generation + 1)
            self._control_write(WriteOp(set={STATE_KEY: self._state.encode()}))
        except BaseException:
            self.step_down()
            raise
        self._active = True
        self._published = None
        self._caps.clear()
        self.took_over_at = self._monotonic()
        logger.info("collector %s is active (generation %d)", self.collector_id, self._state.generation)
        return True

    def step_down(self) -> None:
        """Stop renewing and release every lease still held."""
        self._active = False
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
        for lease in self._shards:
            lease.release()
        self._control.release()

    close = step_down

    def _ensure_active(self) -> None:
        if not self.try_takeover():
            info = self.store.lock_info(self.index.control_oid, CONTROL_LOCK)
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
        got = self.store.omap_get(self.index.control_oid, [STATE_KEY, SEQ_KEY])
        self._state = CollectorState.decode(got.get(STATE_KEY))
        self._seq = int(got.get(SEQ_KEY, b"0"))

    def state(self) -> CollectorState:
        """The collector state as stored (for status displays)."""
        return CollectorState.decode(self.store.omap_get(self.index.control_oid, [STATE_KEY]).get(STATE_KEY))

    def pending(self) -> list[PendingCommit]:
        """Uncommitted (or committed but not yet trimmed) log objects, oldest first."""
        return [
            PendingCommit.decode(v)
            for _, v in omap_iter(self.store, self.index.control_oid, prefix=PENDING_PREFIX)
        ]

    # ------------------------------------------------------------------ service loop

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: standby until the control lease can be taken, then a pass
        every ``interval``. Transient failures back off (capped, exponential); a lost lease
        drops back to standby; a permanent error is raised.

        Before each pass (and each takeover attempt) the ``paused`` hook is asked; while it says
        so, no pass starts: the pass in hand finishes, the leases stay held and renewed, and the
        index, pending records and state are left as they are until it says go on."""
        delay = self.backoff_base
        self._stop = stop
        try:
            while not stop.is_set():
                if self._paused is not None and self._paused():
                    # Paused: no new pass. Leases keep being renewed, markers and index stay.
                    stop.wait(self.pause_poll)
                    continue
                if not self.active:
                    try:
                        taken = self.try_takeover()
                    except TransientError as ex:
                        logger.warning("cannot take the control lease: %s", ex)
                        taken = False
                    if not taken:
                        stop.wait(self.standby_retry)
                        continue
                try:
                    self.run_pass()
                except LeaseLost as ex:
                    logger.warning("collector %s lost a lease, stopped writing: %s", self.collector_id, ex)
                    self.step_down()
                    continue
                except TransientError as ex:
                    logger.warning("pass failed, next in %.1fs: %s", delay, ex)
                    stop.wait(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_base
                stop.wait(self.interval)
        finally:
            self._stop = None
            self.step_down()

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
        t0 = self._monotonic()
        try:
            result = self._pass(self.settle if settle is None else settle)
        finally:
            self._release_shards()
        self._count_pass(result, self._monotonic() - t0)
        return result

    def _pass(self, settle: float) -> PassResult:
        self._load_state()
        self._maybe_gc()
        recovered = self._recover_all()
        observed_us = self._now_us()
        if self._cap is not None:
            cap = self._cap()
            if cap is not None:
                self._caps.append((observed_us, cap))
        cutoff = max(observed_us - int(settle * 1_000_000), self._state.last_cutoff_us)
        if cutoff != self._state.last_cutoff_us:
            # Persisted before any object carries it: cutoffs (and so names) never go back,
            # even across a takeover by a collector whose clock is behind.
            self._state = replace(self._state, last_cutoff_us=cutoff)
            self._control_write(WriteOp(set={STATE_KEY: self._state.encode()}))
        skipped = tuple(self._take_shards(range(self.index.shards)))
        if skipped:
            logger.warning("shards %s are locked by another drainer; skipped this pass", list(skipped))
        objects: list[str] = []
        entries = 0
        writer: _LogWriter | None = None
        drained = [shard for shard in range(self.index.shards) if shard not in skipped]
        # Every floor first (each fenced by its shard lease): from here on the keys below the
        # cutoff of every shard to drain can only shrink, so the pages below can be read ahead.
        for shard in drained:
            lease = self._shards[shard]
            lease.check()
            self.index.raise_floor(shard, cutoff, fence=lease.ref)
            self._fault("floor")
        reader = (_ReadAhead(self, drained, keys.time_bound(cutoff), depth=READ_AHEAD_PAGES,
                             workers=READ_WORKERS) if drained else None)
        stopped = False
        try:
            while reader is not None:
                if self._stop is not None and self._stop.is_set():
                    # Shutting down: commit what is encoded, leave the rest in the index for the
                    # next pass (whoever runs it); the watermark stays where it is.
                    stopped = True
                    break
                self._control.check()
                item = reader.get()
                if item is None:
                    break
                shard, batch = item
                self._fault("read")
                i = 0
                while i < len(batch):
                    if writer is None:
                        writer = self._open_writer(cutoff)
                    i = writer.add_many(shard, batch, i, roll=True)
                    if writer.full():
                        objects.append(self._commit(writer))
                        entries += writer.entries
                        writer = None
                if writer is not None and writer.expired():
                    objects.append(self._commit(writer))
                    entries += writer.entries
                    writer = None
            if writer is not None:
                objects.append(self._commit(writer))
                entries += writer.entries
                writer = None
        finally:
            if reader is not None:
                reader.close()
            if writer is not None:
                writer.abort()
        watermark = None if skipped or stopped else self._advance_watermark(cutoff)
        if stopped:
            logger.info("stopping: pass ended early after %d objects; the rest stays in the index", len(objects))
        if objects or recovered:
            logger.info("pass: cutoff %s, %d entries in %d objects, %d recovered", rfc3339_us(cutoff),
                        entries, len(objects), recovered)
        return PassResult(cutoff, tuple(objects), entries, recovered, skipped, watermark)

    def _open_writer(self, cutoff: int) -> _LogWriter:
        seq = self._seq + 1
        # Allocated (fenced) before the name is used anywhere: names are never reused.
        self._control_write(WriteOp(set={SEQ_KEY: str(seq).encode()}))
        self._seq = seq
        self._fault("seq")
        name = log_name(self.log_prefix, cutoff, seq, self.compression)
        return _LogWriter(self, name, seq=seq, cutoff_us=cutoff, generation=self._state.generation,
                          compression=self.compression)

    def _commit(self, writer: _LogWriter) -> str:
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
        batches = [(shard, keys_[i : i + self.trim_batch])
                   for shard, keys_ in ranges for i in range(0, len(keys_), self.trim_batch)]
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
        self._control_write(WriteOp(set={STATE_KEY: self._state.encode()}, remove=[pending.key]))

    # ------------------------------------------------------------------ recovery

    def _recover_all(self) -> int:
        done = 0
        for pending in self.pending():
            self._recover(pending)
            done += 1
        return done

    def _page(self, shard: int, after: str, end: str) -> list[tuple[str, bytes]]:
        """One page of raw data entries (key, stored value) of a shard in ``(after, end)``.
        Raw: the log line is encoded straight from the stored value (``encode_raw``)."""
        return self.store.omap_page(
            self.index.shard_oid(shard),
            start_after=max(after, keys.DATA_PREFIX),
            end_before=min(end, keys.DATA_END),
            prefix=keys.DATA_PREFIX,
            limit=self.page,
        )

    def _range_pages(self, r: ShardRange) -> Iterator[list[tuple[str, bytes]]]:
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
            uploads = self._retry(f"list uploads of {pending.name}",
                                  lambda: list(self.target.list_uploads(pending.name)))
            for up in uploads:
                if up.name == pending.name:
                    self._retry(f"abort {up.upload_id}", functools.partial(
                        self.target.abort_multipart, up.name, up.upload_id))
            writer = _LogWriter(self, pending.name, seq=pending.seq, cutoff_us=pending.cutoff_us,
                                generation=pending.generation, compression=pending.compression,
                                metadata=pending.metadata())
            try:
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
            finally:
                writer.abort()
            uploaded = writer.stored_bytes
            logger.info("re-uploaded %s", pending.name)
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
        now = self._monotonic()
        if now - self._last_gc < self.gc_interval:
            return
        self._last_gc = now
        prefix = self.log_prefix + "/" if self.log_prefix else ""
        try:
            n = gc_uploads(self.target, prefix, older_than=self.gc_age, now=self._clock())
        except TransientError as ex:
            self._target_error(ex)
            logger.warning("multipart upload GC failed: %s", ex)
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
            self._control_write(WriteOp(set={STATE_KEY: self._state.encode()}))
        self._fault("watermark")
        published = (wm, self._state.last_object)
        if wm and published != self._published:
            body = encode_watermark(complete_until_us=wm, last_object=self._state.last_object,
                                    updated_us=self._now_us())
            name = watermark_name(self.log_prefix)
            self._retry(f"PUT {name}", lambda: self.target.put(name, body, metadata={}))
            self._published = published
        return wm


class _PartUploader:
    """Uploads one log object's full parts, in order, from a thread of its own, while the pass
    goes on encoding: at most ``UPLOAD_QUEUE_PARTS`` parts wait while one is sent. The upload
    itself (create on the first part, retries, lease checks before every attempt) is the
    writer's ``_send_part``; a failure is kept and raised to the pass by the next ``submit`` or
    by ``finish``, and no further part is sent after it."""

    def __init__(self, writer: _LogWriter) -> None:
        self._w = writer
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=UPLOAD_QUEUE_PARTS)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="collector-upload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None or self._stop:
                continue  # drained, never sent
            try:
                self._w._send_part(data)
            except BaseException as ex:  # noqa: BLE001 - raised to the pass by submit/finish
                self._error = ex
            del data  # not held while waiting for the next part

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, data: bytes) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue

    def _join(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> None:
        """Wait until every submitted part is sent; raise the failure if one failed."""
        self._join()
        self._raise()

    def stop(self) -> None:
        """Send nothing more; returns once a part in flight is done and the thread is gone."""
        self._stop = True
        self._join()


class _LogWriter:
    """One log object being written: JSON lines through the encoder, parts uploaded as they
    fill (the multipart upload starts with the first full part, sent by a ``_PartUploader``
    thread while encoding goes on), the ranges and keys emitted. Holds at most a few parts of
    encoded bytes plus the emitted keys."""

    def __init__(
        self,
        collector: Collector,
        name: str,
        *,
        seq: int,
        cutoff_us: int,
        generation: int,
        compression: Compression,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self._c = collector
        self.name = name
        self.seq = seq
        self.cutoff_us = cutoff_us
        self.generation = generation
        self._enc = ObjectEncoder(compression)
        self._create_metadata = metadata
        self.ranges: list[_Range] = []
        self._first_us: int | None = None
        self._last_us: int | None = None
        self._opened = collector._monotonic()
        self._upload_id: str | None = None
        self._uploader: _PartUploader | None = None
        self._parts: list[Part] = []  # appended by the upload thread
        self._parts_seen = 0  # parts whose "part" step the pass has reported
        self._done = False
        self.stored_bytes = 0  # bytes of the object as stored (compressed), once complete

    @property
    def entries(self) -> int:
        return self._enc.entries

    def add(self, shard: int, key: str, raw: bytes) -> None:
        self.add_many(shard, [(key, raw)])

    def add_many(self, shard: int, batch: Sequence[tuple[str, bytes]], start: int = 0, *, roll: bool = False) -> int:
        """Add the entries ``batch[start:]`` of ``shard`` (in key order); with ``roll``, stop
        right after the entry that makes the object full. Returns the index of the first entry
        not added. The lines are the same whatever the batches: ``encode_raw_many`` of each."""
        c = self._c
        end = len(batch)
        if roll:
            end = min(end, start + max(1, c.roll_entries - self._enc.entries))
        entries = batch[start:end] if start or end < len(batch) else batch
        if not entries:
            return start
        keys_ = [key for key, _ in entries]
        # Pages come in key order, so with the first and the last every key is a data key.
        keys.time_of(keys_[0])
        keys.time_of(keys_[-1])
        width = keys.TIME_WIDTH + 2
        times = [int(key[2:width], 16) for key in keys_]
        try:
            lines = encode_raw_many(zip(times, [raw for _, raw in entries], strict=True))
        except InvalidMutation:
            for (key, raw), t in zip(entries, times, strict=True):
                try:
                    encode_raw(t, raw)
                except InvalidMutation as ex:
                    raise InvalidMutation(f"shard {shard} key {key}: {ex}") from ex
            raise
        if roll:
            room = c.roll_bytes - self._enc.raw_bytes
            total = 0
            for n, line in enumerate(lines, 1):
                total += len(line)
                if total >= room:
                    if n < len(lines):
                        lines, keys_, times = lines[:n], keys_[:n], times[:n]
                    break
        self._enc.add_many(lines)
        if not self.ranges or self.ranges[-1].shard != shard:
            self.ranges.append(_Range(shard))
        self.ranges[-1].keys.extend(keys_)
        lo, hi = min(times), max(times)
        if self._first_us is None or lo < self._first_us:
            self._first_us = lo
        if self._last_us is None or hi > self._last_us:
            self._last_us = hi
        part_bytes = c.part_bytes
        while self._enc.available >= part_bytes:
            if self._uploader is None:
                self._uploader = _PartUploader(self)
            self._uploader.submit(self._enc.take(part_bytes))
        self._report_parts()
        return start + len(keys_)

    def full(self) -> bool:
        return self._enc.entries >= self._c.roll_entries or self._enc.raw_bytes >= self._c.roll_bytes

    def expired(self) -> bool:
        return self._c._monotonic() - self._opened >= self._c.roll_seconds

    def pending(self) -> PendingCommit:
        return PendingCommit(
            name=self.name,
            seq=self.seq,
            cutoff_us=self.cutoff_us,
            generation=self.generation,
            entries=self._enc.entries,
            first_us=self._first_us or 0,
            last_us=self._last_us or 0,
            ranges=tuple(ShardRange(r.shard, r.keys[0], r.keys[-1], len(r.keys)) for r in self.ranges),
        )

    def _report_parts(self) -> None:
        """The "part" step, from the pass's thread, once per part the upload thread finished."""
        while self._parts_seen < len(self._parts):
            self._parts_seen += 1
            self._c._fault("part")

    def wait_parts(self) -> None:
        """Every full part so far is uploaded (or its failure raised)."""
        uploader = self._uploader
        if uploader is not None:
            try:
                uploader.finish()
            except BaseException:
                # Interrupted (or a part failed): no part may go out after this, nor during the
                # abort that follows.
                uploader.stop()
                raise
            finally:
                self._uploader = None  # no cycle keeps this writer's keys alive
                self._report_parts()

    def _send_part(self, data: bytes) -> None:
        """Upload the next part (the upload thread's, or the last one's from ``complete``)."""
        c = self._c
        if self._upload_id is None:
            # S3 fixes metadata at create: a streamed object carries what is known now.
            meta = self._create_metadata or {"cutoff": rfc3339_us(self.cutoff_us), "seq": str(self.seq)}
            self._upload_id = c._retry(
                f"create upload {self.name}", lambda: c.target.create_multipart(self.name, metadata=meta)
            )
            # The undo is registered right away: abort() runs on every exit but a completed one.
        upload_id = self._upload_id
        number = len(self._parts) + 1
        try:
            part = c._retry(
                f"upload part {number} of {self.name}",
                lambda: c.target.upload_part(self.name, upload_id, number, data),
            )
        except UploadMissing as ex:
            # Aborted under us (a collector that took over, or GC): as in ``complete``.
            c._control.check()
            raise TransientError(f"upload of {self.name} vanished while sending part {number}: {ex}") from ex
        self.stored_bytes += len(data)
        self._parts.append(part)

    def complete(self, metadata: dict[str, str]) -> None:
        """Make the object visible (the pending record is already written)."""
        c = self._c
        self.wait_parts()
        rest = self._enc.finish()
        if self._upload_id is None:
            c._control.check()
            c._fault("commit")
            c._retry(f"PUT {self.name}", lambda: c.target.put(self.name, rest, metadata=metadata),
                     check_first=False)
            self.stored_bytes = len(rest)
        else:
            if rest:
                self._send_part(rest)
                self._report_parts()
            upload_id = self._upload_id
            c._control.check()
            c._fault("commit")
            try:
                c._retry(
                    f"complete {self.name}",
                    lambda: c.target.complete_multipart(self.name, upload_id, self._parts),
                    check_first=False,
                )
            except UploadMissing as ex:
                # Aborted under us: most likely by a collector that took over (then our lease is
                # gone), else by GC; either way the pending record lets recovery rebuild it.
                c._control.check()
                raise TransientError(f"upload of {self.name} vanished before completion: {ex}") from ex
        self._done = True

    def abort(self) -> None:
        """Best effort: drop an unfinished multipart upload (GC catches what this misses). The
        upload thread is stopped first, so no part goes out after the abort."""
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.stop()
        if self._done or self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._c.target.abort_multipart(self.name, upload_id)
        except (TransientError, PermanentError, ObjectMissing) as ex:
            logger.warning("could not abort upload %s of %s (GC will): %s", upload_id, self.name, ex)
