"""The shape every consumer of the committed change logs takes.

A consumer is three things:

* a **checkpoint** in the index's store: omap key ``k.<name>`` of the control object
  (``changelog.pipeline.control``), holding the last log object it has fully consumed. A consumer may
  keep its own state under ``k.<name>.`` on the same object; ``Cursor.commit`` writes the
  checkpoint and that state in **one atomic op, fenced by the consumer's lease**, so a crash
  never applies a log object twice or skips one, and a consumer that lost its lease cannot
  write at all;
* a **reader** of the committed logs after the checkpoint, up to the collector's watermark
  (objects past it may still be recovered or re-uploaded);
* the **leased loop** (``changelog.pipeline.loop.run_leased``) under the lease ``consumer.<name>`` on the
  control object: one active instance per index, the others stand by.

``ConsumerRunner`` is that loop for any ``Consumer``. A consumer that works object by object
subclasses ``LogObjectConsumer`` and implements ``handle``; one that works in runs (backup)
implements ``step`` itself and commits where its run ends. Each consumer also brings its
metrics (``stats()``), its API routes (mounted under ``/_/<name>/``) and its config section.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from changelog.errors import PermanentError
from changelog.pipeline.control import CONSUMER_PREFIX, consumer_key, consumer_lock
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease, make_cookie
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.loop import Clocks, LoopCounts, LoopPolicy, Wake, run_leased
from changelog.pipeline.reader import LogObject, list_logs, read_object, read_watermark
from changelog.pipeline.store import WriteOp, omap_iter
from changelog.pipeline.targets import Target
from changelog.times import fmt_time

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Log objects handled per step of a LogObjectConsumer before the loop looks at pause, stop and
# the lease again (a step is then at most this many fenced commits long).
OBJECTS_PER_STEP = 16


# An API route of a consumer: (method, path under /_/<name>/) -> handler returning a JSON doc.
RouteHandler = Callable[[], Mapping[str, object]]


@dataclass(frozen=True)
class Checkpoint:
    """Where a consumer stands: ``after`` is the last log object it consumed to its end (None:
    nothing yet); ``records`` and ``objects`` count what it consumed in total; ``info`` is the
    consumer's own summary (e.g. the backup that covered it)."""

    name: str
    after: str | None = None
    records: int = 0
    objects: int = 0
    updated: float | None = None
    info: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "format": CHECKPOINT_FORMAT,
                "after": self.after,
                "records": self.records,
                "objects": self.objects,
                "updated": self.updated,
                "info": dict(self.info),
            }
        )

    @classmethod
    def decode(cls, name: str, raw: bytes | None) -> Checkpoint:
        if raw is None:
            return cls(name)
        doc = orjson.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise PermanentError(f"checkpoint of consumer {name!r} has an unknown format: {raw[:80]!r}")
        return cls(
            name,
            after=doc.get("after"),
            records=int(doc.get("records") or 0),
            objects=int(doc.get("objects") or 0),
            updated=doc.get("updated"),
            info={str(k): str(v) for k, v in (doc.get("info") or {}).items()},
        )

    def doc(self) -> dict[str, object]:
        return {
            "after": self.after,
            "records": self.records,
            "objects": self.objects,
            "updated": fmt_time(self.updated * 1_000_000) if self.updated else None,
            "info": dict(self.info),
        }


def load_checkpoint(index: ChangeIndex, name: str) -> Checkpoint:
    """A consumer's checkpoint as stored (no lease needed to read it)."""
    key = consumer_key(name)
    return Checkpoint.decode(name, index.store.omap_get(index.control_oid, [key]).get(key))


def consumers_doc(index: ChangeIndex, *, now: float | None = None) -> dict[str, object]:
    """Every consumer's checkpoint and lease, for the status document."""
    from changelog.status import lock_doc

    now = time.time() if now is None else now
    out: dict[str, object] = {}
    for key, raw in omap_iter(index.store, index.control_oid, prefix=CONSUMER_PREFIX):
        name = key[len(CONSUMER_PREFIX) :]
        if "." in name:  # a consumer's own state key, not a checkpoint
            continue
        cp = Checkpoint.decode(name, raw)
        lock = index.store.lock_info(index.control_oid, consumer_lock(name))
        out[name] = {**cp.doc(), "lease": lock_doc(lock, now)}
    return out


class Cursor:
    """A consumer's view of its checkpoint while it holds its lease: read it, read its own
    state keys, and commit progress (checkpoint + state, one fenced op)."""

    def __init__(self, index: ChangeIndex, name: str, lease: Lease, clock: Callable[[], float]) -> None:
        self.index = index
        self.name = name
        self.lease = lease
        self._clock = clock
        self.state_prefix = consumer_key(name) + "."
        self.checkpoint = load_checkpoint(index, name)

    def reload(self) -> Checkpoint:
        self.checkpoint = load_checkpoint(self.index, self.name)
        return self.checkpoint

    def read_state(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The consumer's own state values (``keys`` without the ``k.<name>.`` prefix)."""
        got = self.index.store.omap_get(self.index.control_oid, [self.state_prefix + k for k in keys])
        return {k[len(self.state_prefix) :]: v for k, v in got.items()}

    def put_state(self, set_state: Mapping[str, bytes], remove_state: Sequence[str] = ()) -> None:
        """Write some of the consumer's own state keys without moving the checkpoint (progress
        within a unit of work), fenced by the lease like ``commit``."""
        op = WriteOp(fence=self.lease.ref)
        for k, v in set_state.items():
            op.set[self.state_prefix + k] = v
        op.remove.extend(self.state_prefix + k for k in remove_state)
        self.lease.check()
        self.index.store.execute(self.index.control_oid, op)

    def read_state_prefix(self, sub: str) -> dict[str, bytes]:
        """The consumer's own state keys that start with ``sub`` (keys without the prefix)."""
        prefix = self.state_prefix + sub
        return {k[len(self.state_prefix) :]: v for k, v in omap_iter(self.index.store, self.index.control_oid, prefix=prefix)}

    def commit(
        self,
        after: str | None,
        *,
        records: int = 0,
        objects: int = 0,
        info: Mapping[str, str] | None = None,
        set_state: Mapping[str, bytes] | None = None,
        remove_state: Sequence[str] = (),
    ) -> Checkpoint:
        """Advance the checkpoint to ``after`` and apply the state changes, atomically, under the
        lease (``LeaseLost`` if it is gone: nothing is written then)."""
        cp = Checkpoint(
            self.name,
            after=after,
            records=self.checkpoint.records + records,
            objects=self.checkpoint.objects + objects,
            updated=self._clock(),
            info=dict(self.checkpoint.info if info is None else info),
        )
        op = WriteOp(fence=self.lease.ref)
        op.set[consumer_key(self.name)] = cp.encode()
        for k, v in (set_state or {}).items():
            op.set[self.state_prefix + k] = v
        op.remove.extend(self.state_prefix + k for k in remove_state)
        self.lease.check()
        self.index.store.execute(self.index.control_oid, op)
        self.checkpoint = cp
        return cp


class Consumer(Protocol):
    """A consumer of the committed logs. ``step`` does one unit of work from ``cursor`` (which
    it advances with ``cursor.commit``); it is called every ``interval`` while the consumer
    holds its lease, and should return soon after ``stop`` is set."""

    name: str
    interval: float
    # Set by the runner: ends the wait for the next step now (an operator's "run now").
    wake: Callable[[], None]

    def step(self, cursor: Cursor, stop: threading.Event) -> None: ...

    def stats(self) -> Mapping[str, object]: ...

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]: ...


@dataclass(frozen=True)
class ObjectBatch:
    """What a ``LogObjectConsumer`` returns for one log object: its own state changes, written
    atomically with the checkpoint that moves past that object."""

    set_state: Mapping[str, bytes] = field(default_factory=dict)
    remove_state: Sequence[str] = ()
    info: Mapping[str, str] | None = None


def committed_objects(logs: Target, after: str | None, *, prefix: str = "") -> Iterator[LogObject]:
    """The log objects a consumer may read after its checkpoint ``after``: those up to the
    collector's watermark (objects past it may still be recovered or re-uploaded)."""
    wm = read_watermark(logs, prefix=prefix)
    if wm is None or wm.last_object is None:
        return
    for obj in list_logs(logs, prefix=prefix, after=after):
        if obj.name > wm.last_object:
            return
        yield obj


class LogObjectConsumer:
    """Base for consumers that handle the committed logs one log object at a time, each object
    applied exactly once with the checkpoint (``handle`` must not write elsewhere, or must be
    idempotent where it does)."""

    name = "consumer"
    interval = 5.0

    def __init__(self, logs: Target, *, log_prefix: str = "", per_step: int = OBJECTS_PER_STEP) -> None:
        self.wake: Callable[[], None] = lambda: None
        self.logs = logs
        self.log_prefix = log_prefix
        self.per_step = per_step
        self.records_total = 0
        self.objects_total = 0

    def handle(self, cursor: Cursor, obj: LogObject, records: list[LogRecord]) -> ObjectBatch:
        raise NotImplementedError

    def pending_objects(self, after: str | None) -> Iterator[LogObject]:
        """Committed log objects after ``after``, up to the collector's watermark."""
        return committed_objects(self.logs, after, prefix=self.log_prefix)

    def step(self, cursor: Cursor, stop: threading.Event) -> None:
        for n, obj in enumerate(self.pending_objects(cursor.checkpoint.after)):
            if n >= self.per_step or stop.is_set():
                return
            records = list(read_object(self.logs, obj.name))
            batch = self.handle(cursor, obj, records)
            cursor.commit(
                obj.name,
                records=len(records),
                objects=1,
                info=batch.info,
                set_state=batch.set_state,
                remove_state=batch.remove_state,
            )
            self.records_total += len(records)
            self.objects_total += 1

    def stats(self) -> Mapping[str, object]:
        return {"records_consumed": self.records_total, "objects_consumed": self.objects_total}

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        return {}


class ConsumerRunner:
    """Runs one ``Consumer`` under its lease with the leased loop; a ``LeasedRole``."""

    def __init__(
        self,
        index: ChangeIndex,
        consumer: Consumer,
        *,
        lease_ttl: float = 30.0,
        clocks: Clocks | None = None,
        paused: Callable[[], bool] | None = None,
        owner: str | None = None,
    ) -> None:
        self.index = index
        self.consumer = consumer
        self.name = f"consumer {consumer.name}"
        self.clocks = clocks or Clocks()
        self.paused = paused
        self.owner = owner or make_cookie(f"consumer.{consumer.name}")
        self.lease = Lease(
            index.store,
            index.control_oid,
            name=consumer_lock(consumer.name),
            ttl=lease_ttl,
            description=f"change-log consumer {consumer.name} {self.owner}",
            cookie=self.owner,
            monotonic=self.clocks.monotonic,
        )
        self.policy = LoopPolicy.for_lease(consumer.interval, lease_ttl)
        self.counts = LoopCounts()
        self._wake = Wake()
        consumer.wake = self._wake.set
        self._cursor: Cursor | None = None

    def __repr__(self) -> str:
        return f"ConsumerRunner({self.consumer.name!r}, {self.index.prefix!r})"

    # LeasedRole
    def acquire(self) -> bool:
        return self.lease.take(on_taken=self._open_cursor)

    def _open_cursor(self) -> None:
        self._cursor = Cursor(self.index, self.consumer.name, self.lease, self.clocks.clock)
        logger.info("%s active (checkpoint %s)", self.name, self._cursor.checkpoint.after or "none")

    def step(self, stop: threading.Event) -> None:
        if self._cursor is None:
            raise PermanentError(f"{self.name}: step without the lease")
        self.consumer.step(self._cursor, stop)

    def step_down(self) -> None:
        self._cursor = None
        self.lease.release()

    def run(self, stop: threading.Event) -> None:
        run_leased(
            self,
            stop,
            self.policy,
            paused=self.paused,
            monotonic=self.clocks.monotonic,
            counts=self.counts,
            wake=self._wake,
        )

    def checkpoint(self) -> Checkpoint:
        return self._cursor.checkpoint if self._cursor is not None else load_checkpoint(self.index, self.consumer.name)

    def stats(self) -> Mapping[str, object]:
        cp = self.checkpoint()
        return {
            **self.consumer.stats(),
            "active": self.lease.held,
            "steps": self.counts.steps,
            "transient_errors": self.counts.transient_errors,
            "leases_lost": self.counts.leases_lost,
            # Every step failed (transiently) for this long, this many in a row (0: not failing).
            "failing_seconds": self.failing_seconds(),
            "failed_in_row": self.counts.failed_in_row,
            "last_step_error": self.counts.last_error,
            "checkpoint": cp.after,
            "checkpoint_updated": cp.updated,
        }

    def failing_seconds(self) -> float:
        since = self.counts.failing_since
        return 0.0 if since is None else max(0.0, self.clocks.monotonic() - since)

    def status(self) -> dict[str, object]:
        return {**self.checkpoint().doc(), "live": dict(self.stats())}
