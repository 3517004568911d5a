"""The collector cut into streams (``[scale] partitioned``, docs/design.md §16): every ``serve``
of the index with the setting runs a ``StreamedCollector``, which takes its fair share of
``collector_partitions`` partition leases (``changelog.pipeline.partitions``, role
``collector``) and runs one ``Collector`` stream per partition held (``collector.Stream``):
the index shards ``s % count == n``, its own seq, names, pending records and state. A dead
instance's streams are free one lease TTL after its last renewal; whoever takes one recovers
its pending commits under their names and cutoffs.

The stream count is fixed for an index (``c.streams``): a key's shard, and so its stream, must
not change while its records are in flight. The published watermark (``publish``, by the holder
of stream 0, or a flush) is the minimum over the streams: ``complete_until_us`` of their
watermarks, ``readable_until_us`` of the cutoffs they committed through (the readers' bound,
``changelog.pipeline.reader``).

Across streams, records are ordered by their objects' names (cutoff, then seq) only, and a
bucket's records are in every stream. The one order a consumer relies on across them, the
``bucket_delete`` after every record of the bucket's lifetime, is kept by the stream that
drains the delete's shard: it commits a delete only once every other stream has committed what
was recorded up to it, in a pass cut off above their objects (``Collector._may_commit``, each
stream's ``Drained`` record, docs/design.md §16).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from changelog.config import CollectorConfig
from changelog.errors import CompareFailed, LeaseLost, LockBusy, ObjectMissing, PermanentError, TransientError
from changelog.pipeline.collector import (
    FLUSH_TIMEOUT,
    Collector,
    PassResult,
    Stream,
    drained_key,
)
from changelog.pipeline.commit import CollectorState, Drained
from changelog.pipeline.control import (
    COLLECTOR_LOCK,
    COLLECTOR_PENDING_PREFIX,
    COLLECTOR_ROLE,
    COLLECTOR_STATE_KEY,
    COLLECTOR_STREAMS_META_KEY,
    collector_seq_key,
    collector_state_key,
    partition_lock,
)
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease, lock_held, make_cookie
from changelog.pipeline.logformat import (
    Compression,
    encode_watermark,
    parse_log_name,
    rfc3339_us,
    watermark_name,
)
from changelog.pipeline.loop import Clocks, Stopped, Wake
from changelog.pipeline.partitions import Partitions
from changelog.pipeline.reader import newest_final
from changelog.pipeline.store import Cmp, WriteOp, omap_iter
from changelog.pipeline.targets import Target

logger = logging.getLogger(__name__)

# A flush request: the time it was asked (unix µs); every instance flushes its streams once
# they are behind it.
FLUSH_KEY = "c.flush"
# How often a flush looks whether every stream has passed its time.
FLUSH_POLL = 0.1
# ``Collector.step``'s flush_after_us for a flush asked of this instance: after every cutoff.
FLUSH_ALWAYS = 2**62

__all__ = ["StreamView", "StreamedCollector", "prepare_streams", "publish", "read_count", "streams_state"]


@dataclass(frozen=True, slots=True)
class Published:
    """The watermark over every stream, as ``publish`` computes it from the stored states."""

    complete_until_us: int
    readable_until_us: int
    last_object: str | None


@dataclass(frozen=True, slots=True)
class StreamView:
    """One stream as the control object has it (``status``, the metrics): its stored state, the
    last seq it allocated, its pending commits (log objects written, their entries not yet
    trimmed), how far it committed by recorded time and the bucket_delete it holds back."""

    n: int
    state: CollectorState
    seq: int
    pending: tuple[str, ...]
    drained: Drained = Drained()

    @property
    def committed_seq(self) -> int | None:
        """The seq of the stream's newest committed log object (None: none yet)."""
        parsed = parse_log_name(self.state.last_object) if self.state.last_object else None
        return parsed.seq if parsed is not None else None

    @property
    def last_commit_us(self) -> int | None:
        """The cutoff of the stream's newest committed log object (None: none yet)."""
        parsed = parse_log_name(self.state.last_object) if self.state.last_object else None
        return parsed.cutoff_us if parsed is not None else None


def pending_by_stream(index: ChangeIndex) -> dict[int, list[str]]:
    """The pending commits by the stream that wrote them (-1: the unpartitioned collector's)."""
    pending: dict[int, list[str]] = {}
    for key, _ in omap_iter(index.store, index.control_oid, prefix=COLLECTOR_PENDING_PREFIX):
        # The key names the object (``PendingCommit.key``): nothing to decode, nothing that can
        # fail a collector round on a record only the stream's recovery should judge.
        name = key[len(COLLECTOR_PENDING_PREFIX) :]
        parsed = parse_log_name(name)
        stream = parsed.stream if parsed is not None and parsed.stream is not None else -1
        pending.setdefault(stream, []).append(name)
    return pending


def views(got: dict[str, bytes], count: int, pending: dict[int, list[str]]) -> list[StreamView]:
    """Every stream's view from one ``omap_get`` of its ``view_keys``, stream 0 first."""
    return [
        StreamView(
            n,
            CollectorState.decode(got.get(collector_state_key(n))),
            int(got.get(collector_seq_key(n), b"0")),
            tuple(pending.get(n, ())),
            Drained.decode(got.get(drained_key(n))),
        )
        for n in range(count)
    ]


def view_keys(count: int) -> list[str]:
    """The control keys ``views`` reads: each stream's state, seq and ``Drained``."""
    return [k for n in range(count) for k in (collector_state_key(n), collector_seq_key(n), drained_key(n))]


def read_count(index: ChangeIndex) -> int | None:
    """The stream count the index was cut into; None: never partitioned."""
    raw = index.store.omap_get(index.control_oid, [COLLECTOR_STREAMS_META_KEY]).get(
        COLLECTOR_STREAMS_META_KEY
    )
    return None if raw is None else int(orjson.loads(raw)["count"])


def draining(index: ChangeIndex, shard: int, now: float) -> tuple[bool, int]:
    """Whether a collector holds the lease to drain index ``shard`` now (the unpartitioned
    collector's, or the lease of the stream the shard belongs to), and the last cutoff of the
    collector that drains it (unix µs; 0: none yet): the unpartitioned collector's, or, once the
    index was cut into streams, the larger of it and the stream's. Whether a collector is around
    to commit what waits in ``shard`` (``BucketTracker``: a bucket deleted and created again
    waits for its delete's commit only then); a cutoff alone proves no commit (a pass may die
    after persisting it)."""
    store, oid = index.store, index.control_oid
    got = store.omap_get(oid, [COLLECTOR_STATE_KEY, COLLECTOR_STREAMS_META_KEY])
    cutoff = CollectorState.decode(got.get(COLLECTOR_STATE_KEY)).last_cutoff_us
    locks = [COLLECTOR_LOCK]
    raw = got.get(COLLECTOR_STREAMS_META_KEY)
    if raw is not None:
        n = shard % int(orjson.loads(raw)["count"])
        key = collector_state_key(n)
        cutoff = max(cutoff, CollectorState.decode(store.omap_get(oid, [key]).get(key)).last_cutoff_us)
        locks.append(partition_lock(COLLECTOR_ROLE, n))
    infos = [store.lock_info(oid, lock) for lock in locks]
    return any(lock_held(i, now) for i in infos), cutoff


def prepare_streams(index: ChangeIndex, count: int) -> None:
    """Record the stream count on first use; refuse another one (``PermanentError``).

    The first write is a compare-and-set (``c.streams`` asserted absent in the same op): two
    instances starting together with different ``collector_partitions`` both read no count, and
    without the guard the later write would win after the earlier one had started cutting the
    index its way. With it exactly one count is stored and the other instance fails."""
    have = read_count(index)
    if have is None:
        key = COLLECTOR_STREAMS_META_KEY
        # An absent key compares as the empty value (changelog.pipeline.store): "only if absent".
        op = WriteOp(asserts=[(key, Cmp.EQ, "")], set={key: orjson.dumps({"count": count})})
        try:
            index.store.execute(index.control_oid, op)
        except CompareFailed:
            have = read_count(index)
            if have is None:  # only if someone removed the key in between: try again later
                raise TransientError("the stream count changed while it was being recorded") from None
            logger.info("collector: another instance recorded the stream count first (%d)", have)
        else:
            logger.info("collector: the index is cut into %d streams", count)
            return
    if have != count:
        raise PermanentError(
            f"[scale] collector_partitions = {count}, but the index's collector is cut into {have} streams "
            "(fixed once used: a key's stream must not change while its records are in flight)"
        )


def stream_progress(index: ChangeIndex, count: int) -> list[tuple[CollectorState, int]]:
    """Every stream's stored state (a default one where none is stored yet) and the time before
    which it committed every record (``Drained.done_us``: below a bucket_delete it holds back,
    or a pass that skipped shards), stream 0 first, in one read."""
    keys = [k for n in range(count) for k in (collector_state_key(n), drained_key(n))]
    got = index.store.omap_get(index.control_oid, keys)
    out = []
    for n in range(count):
        state = CollectorState.decode(got.get(collector_state_key(n)))
        out.append((state, Drained.decode(got.get(drained_key(n))).done_us(state)))
    return out


def combined(states: list[CollectorState], *, last_object: str | None = None, floor_us: int = 0) -> Published:
    """The minimum over the streams; ``last_object``: the newest name at or below the readable
    bound that a stream is known to have committed (never below ``last_object``, the one
    published before: a consumer's upper end, as the backup's ``until``). ``floor_us``: the
    unpartitioned collector's last cutoff, below which no stream commits again (a stream takes
    over above it, and that collector finished every stream's pending commits), so a stream that
    has not passed since it ran is through it (else its objects would hide behind a stale
    bound)."""
    readable = min(max(s.through_us, floor_us) for s in states)
    newest = [s.last_object for s in states if s.last_object is not None]
    for name in newest:
        parsed = parse_log_name(name)
        if (
            parsed is not None
            and parsed.cutoff_us <= readable
            and (last_object is None or name > last_object)
        ):
            last_object = name
    return Published(min(s.watermark_us for s in states), readable, last_object)


def publish(
    index: ChangeIndex, target: Target, *, log_prefix: str, count: int, now_us: int
) -> Published | None:
    """Write the watermark object over every stream, unless it would not move forward (two
    instances may publish at once: the later of two racing writes may carry the older values,
    which the next publish mends). None while a stream has committed nothing through."""
    name = watermark_name(log_prefix)
    try:
        doc: object = orjson.loads(target.get(name))
    except (ObjectMissing, orjson.JSONDecodeError):
        doc = None
    old = doc if isinstance(doc, dict) else {}
    prev_last = old.get("last_object")
    # The streams' states and the unpartitioned collector's last cutoff, in one read.
    keys = [collector_state_key(n) for n in range(count)]
    got = index.store.omap_get(index.control_oid, [COLLECTOR_STATE_KEY, *keys])
    floor = CollectorState.decode(got.get(COLLECTOR_STATE_KEY)).last_cutoff_us
    pub = combined(
        [CollectorState.decode(got.get(k)) for k in keys],
        last_object=prev_last if isinstance(prev_last, str) else None,
        floor_us=floor,
    )
    if not pub.readable_until_us:
        return None
    # Both figures are lower bounds that only grow: the higher of what is there and what the
    # states say now is still true (a racing publisher may have written older ones).
    had = Published(_int(old.get("complete_until_us")), _int(old.get("readable_until_us")), pub.last_object)
    pub = Published(
        max(pub.complete_until_us, had.complete_until_us),
        max(pub.readable_until_us, had.readable_until_us),
        pub.last_object,
    )
    # The newest object at or below the bound, by listing what came since (``combined`` knows
    # each stream's newest only: under steady load all but the slowest stream's are above the
    # bound, and the consumers, which stop at ``last_object``, would stall).
    newest = newest_final(target, prefix=log_prefix, after=pub.last_object, until_us=pub.readable_until_us)
    if newest is not None:
        pub = Published(pub.complete_until_us, pub.readable_until_us, newest)
    if pub == had and old.get("streams") == count:
        return pub
    body = encode_watermark(
        complete_until_us=pub.complete_until_us,
        last_object=pub.last_object,
        updated_us=now_us,
        readable_until_us=pub.readable_until_us,
        streams=count,
    )
    target.put(name, body, metadata={})
    return pub


def _floor(got: dict[str, bytes]) -> int:
    """``combined``'s ``floor_us`` from an ``omap_get`` that read ``COLLECTOR_STATE_KEY``: the
    unpartitioned collector's last cutoff (0 if it never ran), as ``publish`` reads it, so the
    status and the metrics give the bound the watermark object gets."""
    return CollectorState.decode(got.get(COLLECTOR_STATE_KEY)).last_cutoff_us


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0


def streams_state(index: ChangeIndex, *, now: float | None = None) -> dict[str, object]:
    """``status`` of a partitioned collector (no lease needed): the count, the combined
    watermark, which instance holds which stream (a lock expired at ``now`` is nobody's: its
    holder stopped renewing it), and each stream's stored state, seq and pending commits."""
    count = read_count(index)
    if count is None:
        return {"partitioned": False}
    now = time.time() if now is None else now
    store, oid = index.store, index.control_oid
    pending = pending_by_stream(index)
    got = store.omap_get(oid, [COLLECTOR_STATE_KEY, *view_keys(count)])
    streams = views(got, count, pending)
    holder: dict[int, str] = {}
    for n in range(count):
        info = store.lock_info(oid, partition_lock(COLLECTOR_ROLE, n))
        if lock_held(info, now):
            holder[n] = info.cookie
    holders: dict[str, list[int]] = {}
    for n, who in sorted(holder.items()):
        holders.setdefault(who, []).append(n)
    pub = combined([v.state for v in streams], floor_us=_floor(got))
    return {
        "partitioned": True,
        "count": count,
        "watermark": rfc3339_us(pub.complete_until_us) if pub.complete_until_us else None,
        "readable_until": rfc3339_us(pub.readable_until_us) if pub.readable_until_us else None,
        "holders": holders,
        "unheld": [n for n in range(count) if n not in holder],
        "by_partition": {
            str(v.n): {
                "holder": holder.get(v.n),
                "seq": v.seq,
                "committed_seq": v.committed_seq,
                "last_cutoff": rfc3339_us(v.state.last_cutoff_us) if v.state.last_cutoff_us else None,
                "through": rfc3339_us(v.state.through_us) if v.state.through_us else None,
                "watermark": rfc3339_us(v.state.watermark_us) if v.state.watermark_us else None,
                # Every record recorded before it is committed (below a bucket_delete held back).
                "drained": rfc3339_us(v.drained.drained_us) if v.drained.drained_us else None,
                # A bucket_delete held back until the other streams committed what came before it.
                "held_bucket_delete": rfc3339_us(v.drained.held_us) if v.drained.held_us else None,
                "last_object": v.state.last_object,
                "generation": v.state.generation,
                "pending": list(v.pending),
            }
            for v in streams
        },
        **({"unpartitioned_pending": pending[-1]} if -1 in pending else {}),
    }


class StreamedCollector:
    """This instance's share of the collector streams (module docstring). The same face as
    ``Collector`` to the service: ``run``, ``stats``, ``leases``, ``role_leases``,
    ``request_flush``, ``active``."""

    def __init__(
        self,
        index: ChangeIndex,
        target: Target,
        config: CollectorConfig | None = None,
        *,
        count: int,
        compression: Compression | str = Compression.NONE,
        log_prefix: str = "",
        clocks: Clocks | None = None,
        instance: str | None = None,
        watermark_cap: Callable[[], int | None] | None = None,
        fault_hook: Callable[[str], None] | None = None,
        paused: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config if config is not None else CollectorConfig()
        self.index = index
        self.target = target
        self.count = count
        self.compression = Compression.parse(compression)
        self.log_prefix = log_prefix.strip("/")
        self.instance = instance or make_cookie("collector")
        self.name = "collector"
        self._clocks = clocks if clocks is not None else Clocks()
        self._cap = watermark_cap
        self._hook = fault_hook
        self._paused = paused
        self.partitions = Partitions(
            index.store,
            index.control_oid,
            role=COLLECTOR_ROLE,
            count=count,
            instance=self.instance,
            ttl=self.config.lease_ttl,
            clock=self._clocks.clock,
            monotonic=self._clocks.monotonic,
        )
        self._streams: dict[int, Collector] = {}
        self._held: list[int] = []
        self._retry_at: dict[int, tuple[float, float]] = {}  # stream -> (when, backoff)
        self._prepared = False
        self._wake = Wake()
        self._flush_local = threading.Event()
        self._lock = threading.Lock()
        self._retired: dict[str, object] = {}
        self._retired_errors: dict[str, int] = {}  # target_errors of the streams dropped
        self._published: Published | None = None
        self._seen: Published | None = None  # combined from the stored states at the last round
        self._views: tuple[StreamView, ...] = ()  # every stream as stored, at the last round
        self.errors: dict[str, int] = {"transient": 0, "leases_lost": 0}

    def __repr__(self) -> str:
        return f"StreamedCollector({self.instance!r}, {self.count} streams, {self.target.url!r})"

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: refresh this instance's share, then a pass of every stream held,
        every ``interval`` (sooner on a flush request). A transient error backs off that stream
        only; a lost lease drops it (another instance has it); a permanent error is raised."""
        try:
            while not stop.is_set():
                if self._paused is not None and self._paused():
                    stop.wait(self.config.pause_poll)
                    continue
                t0 = self._clocks.monotonic()
                try:
                    self.step(stop)
                except Stopped:
                    break
                except (TransientError, LeaseLost) as ex:
                    self.errors["transient"] += 1
                    logger.warning("collector streams: %s", ex)
                left = max(0.0, self.config.interval - (self._clocks.monotonic() - t0))
                self._wake.wait(stop, left)
        finally:
            self.step_down()

    def step(self, stop: threading.Event | None = None) -> list[int]:
        """One round: refresh the share, a pass of each stream held (without a settle window
        when a flush asks for one), publish the watermark when holding stream 0. The streams
        held."""
        if not self._prepared:
            prepare_streams(self.index, self.count)
            self._prepared = True
        got = self.index.store.omap_get(
            self.index.control_oid, [FLUSH_KEY, COLLECTOR_STATE_KEY, *view_keys(self.count)]
        )
        flush_us = int(got[FLUSH_KEY]) if FLUSH_KEY in got else 0
        # Every instance knows the combined watermark and every stream's progress (its
        # metrics), not only the publisher and the holders: read with the flush request, plus
        # one page of pending commits (there are few: they live from upload to trim).
        streams = views(got, self.count, pending_by_stream(self.index))
        self._seen = combined([v.state for v in streams], floor_us=_floor(got))
        self._views = tuple(streams)
        held = self.partitions.refresh()
        # Looked at after the partitions are taken, as the unpartitioned collector looks at
        # them after taking its lease: whichever of two starting at once looks last sees the
        # other and stands by, so the two never drain side by side.
        info = self.index.store.lock_info(self.index.control_oid, COLLECTOR_LOCK)
        if lock_held(info, self._clocks.clock()):
            # An unpartitioned collector (a serve without [scale] partitioned, or `collect`):
            # the two never drain side by side, their names would interleave for the readers.
            self._drop_all()
            self.partitions.close()
            raise LockBusy(
                f"the unpartitioned collector lease is held by {info.description}: streams stand by"
            )
        for n in held:
            if n not in self._held and n in self._streams:
                # Taken again (a new lease): a fresh stream collector, which loads the state
                # another instance may have moved meanwhile.
                self._retire(self._streams.pop(n))
        self._held = held
        local = self._flush_local.is_set()
        self._flush_local.clear()
        for n in held:
            if stop is not None and stop.is_set():
                raise Stopped()
            self._pass(n, stop, flush_us=flush_us, local=local)
        if 0 in self._held:
            self._publish()
        return held

    def _stream(self, n: int) -> Collector:
        c = self._streams.get(n)
        if c is None:
            c = self._streams[n] = Collector(
                self.index,
                self.target,
                self.config,
                compression=self.compression,
                log_prefix=self.log_prefix,
                clocks=self._clocks,
                collector_id=self.instance,
                watermark_cap=self._cap,
                fault_hook=self._hook,
                stream=Stream(n, self.count, self.partitions.lease(n)),
            )
        return c

    def _pass(self, n: int, stop: threading.Event | None, *, flush_us: int, local: bool) -> None:
        when, backoff = self._retry_at.get(n, (0.0, 0.0))
        if self._clocks.monotonic() < when:
            return
        c = self._stream(n)
        try:
            if not c.try_takeover():
                return
            # A flush asked for after this stream's last cutoff: no settle window this time.
            c.step(stop or threading.Event(), flush_after_us=FLUSH_ALWAYS if local else flush_us)
        except LeaseLost as ex:
            self.errors["leases_lost"] += 1
            logger.warning("collector stream %d lost its lease, stopped writing: %s", n, ex)
            self._held = [h for h in self._held if h != n]
            self._retire(self._streams.pop(n))
        except TransientError as ex:
            self.errors["transient"] += 1
            backoff = min(max(backoff * 2, self.config.backoff_base), self.config.backoff_max)
            self._retry_at[n] = (self._clocks.monotonic() + backoff, backoff)
            logger.warning("collector stream %d: pass failed, next in %.1fs: %s", n, backoff, ex)
        else:
            self._retry_at.pop(n, None)

    def _publish(self) -> Published | None:
        try:
            pub = publish(
                self.index,
                self.target,
                log_prefix=self.log_prefix,
                count=self.count,
                now_us=int(self._clocks.clock() * 1_000_000),
            )
        except (TransientError, PermanentError) as ex:
            logger.warning("collector streams: the watermark was not published: %s", ex)
            return None
        if pub is not None:
            self._published = pub
        return pub

    def _retire(self, c: Collector) -> None:
        """Keep a replaced stream collector's counters; stop its shard-lease renewals."""
        c.step_down()
        with self._lock:
            for k, v in c.stats().items():
                if k in _COUNTERS:
                    self._retired[k] = int(str(self._retired.get(k, 0))) + int(str(v or 0))
                elif k == "target_errors" and isinstance(v, dict):
                    # A counter of the process (rgw_changelog_target_errors_total): it must not
                    # go down when a stream is dropped.
                    kept = self._retired_errors
                    for kind, n in v.items():
                        kept[kind] = kept.get(kind, 0) + int(n)

    def _drop_all(self) -> None:
        for n in list(self._streams):
            self._retire(self._streams.pop(n))
        self._held = []

    def step_down(self) -> None:
        self._drop_all()
        self.partitions.close()

    close = step_down

    # ------------------------------------------------------------------ flush

    def request_flush(self, timeout: float = FLUSH_TIMEOUT) -> PassResult:
        """For the running service (``POST /_/flush``): ask every instance to flush its
        streams (``c.flush``, read at each round), flush this one's now, and wait until every
        record recorded before the request is readable; then publish. The result: the readable
        cutoff and the combined watermark (the objects are every stream's, not listed here).
        ``TransientError`` when that takes longer than ``timeout``.

        Two rounds: once every stream committed every record recorded before the time asked
        (``Drained.done_us``: not only cut off past it, a bucket_delete held back before it
        holds the flush too), each one's records of before it lie in objects at or below the
        highest cutoff reached (``goal``); a second flush brings every stream through that one,
        and the readers' bound with them."""
        asked = int(self._clocks.clock() * 1_000_000)
        deadline = self._clocks.monotonic() + timeout
        goal, second = asked, False
        self._ask(goal)
        while True:
            progress = stream_progress(self.index, self.count)
            states = [state for state, _ in progress]
            reached = [s.through_us for s in states] if second else [done for _, done in progress]
            if min(reached) >= goal:
                if second:
                    break
                goal, second = max(s.through_us for s in states), True
                if min(s.through_us for s in states) >= goal:
                    break
                self._ask(goal)
                continue
            if self._clocks.monotonic() > deadline:
                behind = [n for n, r in enumerate(reached) if r < goal]
                raise TransientError(f"no flush of collector streams {behind} within {timeout:.0f}s")
            self._clocks.sleep(FLUSH_POLL)
        pub = self._publish() or combined(states)
        return PassResult(pub.readable_until_us, (), 0, 0, (), pub.complete_until_us or None)

    def _ask(self, until_us: int) -> None:
        """Every stream whose last cutoff is below ``until_us`` passes without a settle window."""
        self.index.store.execute(self.index.control_oid, WriteOp(set={FLUSH_KEY: str(until_us).encode()}))
        self._flush_local.set()
        self._wake.set()

    # ------------------------------------------------------------------ what the service asks

    @property
    def active(self) -> bool:
        return bool(self.partitions.held())

    def leases(self) -> list[Lease]:
        """The partition leases held, and the shard leases of the streams run here."""
        out = self.partitions.held_leases()
        for c in list(self._streams.values()):
            out += c.leases()[1:]
        return out

    def role_leases(self) -> list[Lease]:
        return self.partitions.held_leases()

    def stats(self) -> dict[str, object]:
        """``Collector.stats`` over the streams this process ran: counters summed (also
        ``bucket_delete_holds``), ``bucket_delete_held`` the oldest one held back now, the last
        pass's figures of the latest, ``complete_until`` the combined watermark last
        published or computed, ``partitions_held``; ``readable_until`` (the readers' bound) and
        ``streams``: every stream as the control object had it at this instance's last round,
        held here or not (``_view_stats``)."""
        with self._lock:
            out: dict[str, object] = dict(self._retired)
        streams = [c.stats() for _, c in sorted(list(self._streams.items()))]
        errors: dict[str, int] = {}
        last_end = None
        for st in streams:
            for k in _COUNTERS:
                out[k] = int(str(out.get(k, 0))) + int(str(st.get(k) or 0))
            for kind, v in dict(st.get("target_errors") or {}).items():  # type: ignore[call-overload]
                errors[kind] = errors.get(kind, 0) + int(v)
            end = st.get("last_pass_end")
            if isinstance(end, float) and (last_end is None or end >= last_end):
                last_end = end
                for k in ("last_pass_entries", "last_pass_seconds", "last_pass_end"):
                    out[k] = st.get(k)
        failed = [st for st in streams if int(str(st.get("failed_passes") or 0))]
        out["failed_passes"] = max((int(str(st["failed_passes"])) for st in failed), default=0)
        out["last_error"] = next((st.get("last_error") for st in failed), None)
        out["last_failure"] = next((st.get("last_failure") for st in failed), None)
        with self._lock:
            for kind, n in self._retired_errors.items():
                errors[kind] = errors.get(kind, 0) + n
        out["target_errors"] = errors
        pubs = [p for p in (self._published, self._seen) if p is not None and p.complete_until_us]
        out["complete_until"] = max(p.complete_until_us for p in pubs) / 1_000_000 if pubs else None
        out["active"] = self.active
        held = self.partitions.held()
        out["partitions_held"] = held
        out["partitions_count"] = self.count
        bound = max((p.readable_until_us for p in (self._published, self._seen) if p is not None), default=0)
        out["readable_until"] = bound / 1_000_000 if bound else None
        out["streams"] = {str(v.n): _view_stats(v, held=v.n in held) for v in self._views}
        # The oldest bucket_delete a stream run here holds back now (unix seconds; None: none).
        holding = [float(str(h)) for st in streams if (h := st.get("bucket_delete_held")) is not None]
        out["bucket_delete_held"] = min(holding, default=None)
        for k in _COUNTERS:
            out.setdefault(k, 0)
        for k in ("last_pass_entries", "last_pass_seconds", "last_pass_end"):
            out.setdefault(k, None)
        return out


_COUNTERS = ("passes", "entries_emitted", "objects_committed", "bytes_committed", "bucket_delete_holds")


def _view_stats(v: StreamView, *, held: bool) -> dict[str, object]:
    """A stream in ``StreamedCollector.stats()["streams"]`` (``changelog.metrics``): times in
    unix seconds, None where the stream has none yet."""

    def secs(us: int | None) -> float | None:
        return us / 1_000_000 if us else None

    return {
        "held": held,
        "seq": v.seq,
        "committed_seq": v.committed_seq,
        "last_commit": secs(v.last_commit_us),
        "through": secs(v.state.through_us),
        "watermark": secs(v.state.watermark_us),
        "pending_commits": len(v.pending),
        "drained": secs(v.drained.drained_us),
        "held_bucket_delete": secs(v.drained.held_us),
    }
