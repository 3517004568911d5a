"""The change index: N shard objects whose omap holds one entry per recorded mutation.

This is the write hook's target (``record`` / ``record_many``) and the collector's source
(``page`` / ``scan`` / ``remove`` / ``raise_floor``). The key layout and the guarded-write
protocol are in docs/design.md §2-3; the layout helpers are in ``changelog.pipeline.keys``.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson

from changelog.errors import CompareFailed, ConfigError, InvalidMutation, TransientError
from changelog.native import speedup
from changelog.pipeline import keys
from changelog.pipeline.control import META_KEY as META_KEY  # re-exported: the CLI reads it from here
from changelog.pipeline.mutation import Mutation, Op, packer
from changelog.pipeline.store import Cmp, LockRef, ObjectStore, WriteOp

logger = logging.getLogger(__name__)

MODES = ("write", "object")
# One RADOS op carries at most this many keys: the notes measured 1000 keys/op as the sweet spot
# (210-247k keys/s) and the OSD caps a page of omap reads at about that size too.
OP_KEYS = 1000
# A guarded write that keeps losing its compare (floor raised, another recorder on the stream)
# is retried this often before the error surfaces.
CAS_RETRIES = 20


@dataclass(frozen=True, slots=True)
class Entry:
    shard: int
    key: str
    time_us: int
    mutation: Mutation
    raw: bytes


@dataclass(frozen=True, slots=True)
class RecordResult:
    written: int
    duplicates: int

    def __add__(self, other: RecordResult) -> RecordResult:
        return RecordResult(self.written + other.written, self.duplicates + other.duplicates)


@dataclass(frozen=True, slots=True)
class ShardStats:
    shard: int
    entries: int
    oldest_us: int | None
    floor_us: int


_HEX2 = [f"{i:02x}" for i in range(256)]
_UNKNOWN = "\x00unknown"  # not a position (positions are printable ASCII): a stream not in the cache
# A record on its way into a shard: (mutation, encoded value, key tail). The tail is all of its data
# key after the time: ".<obj hash>.<version hash>.<first 16 hex chars of the event id>"
# (``keys.data_key``), so a key is ``keys.time_bound(t) + tail``.
_Pending = tuple[Mutation, bytes, str]
# In a tail, "<obj hash>.<version hash>" (the object key's suffix in object mode).
_OBJVER = slice(1, 1 + 16 + 1 + 8)
# A shard's runs in a batch (``_runs_py``): per source, in order of first appearance, the first
# and the last position of its records in that shard, when each source's positions strictly
# increase there (the follower's batches); None when one does not. ``_run_marks`` checks a shard
# against its stream marks with them, per source instead of per record.
_Runs = dict[str, tuple[str, str]] | None
# A shard's records of a batch: a list from ``_prepare_py``; from C, a ``_speedups.Records``, the
# same sequence whose values and tails sit in two buffers (no object per record until asked for).
_Records = Sequence[_Pending]
_Prepared = tuple[dict[int, _Records], dict[int, _Runs]]
# The first pass of ``record_many`` (``_prepare_py`` and ``_runs_py``) in C, or None where the
# module is not built or RGW_CHANGELOG_PURE_PYTHON=1 asks for Python. One contract with the
# Python reference (tests/unit/test_record_speed.py): the same shards, values, key tails and
# runs, byte for byte; None back from C means "Python decides" (a shape it does not handle, an
# invalid record), so every error and its message is the Python one.
_NativePrepare = Callable[[Sequence[Mutation], int, type], _Prepared | None]


_NATIVE_PREPARE: _NativePrepare | None = speedup("prepare_records")

# ``_fast_marks`` in C (``_speedups.fast_marks``), or None (not built, older build, or
# RGW_CHANGELOG_PURE_PYTHON=1). None back from C: "not the fast path", as from Python.
_NativeMarks = Callable[
    [list[_Pending], dict[tuple[int, str], str | None], int, type],
    tuple[dict[str, str | None], dict[str, str]] | None,
]


_NATIVE_MARKS: _NativeMarks | None = speedup("fast_marks")

# ``RecordOp.data_rows`` in C (``_speedups.record_rows``), or None: ``_data_keys`` serves.
_NATIVE_ROWS: Callable[[int, _Records], list[str | bytes] | None] | None = speedup("record_rows")


@dataclass(slots=True)
class RecordOp(WriteOp):
    """A shard's guarded record op whose data keys the store makes as it sends the op: for a
    store whose ``sends_record_keys`` is true (the RADOS store with its C write path; the
    sqlite store), so that no Python str is made per key, or only in C. ``records`` is (first
    time, pending): the i-th record's key is ``keys.time_bound(t + i) + tail``, its value the
    pending value. ``data_set()`` is that part as the dict the op would otherwise carry in
    ``set`` (the RADOS store's Python path); ``data_rows()`` the same pairs as one flat list
    [key, value, key, value, ...] (the sqlite store binds them so), made in C where built."""

    records: tuple[int, _Records] = (0, [])

    def data_set(self) -> dict[str, bytes]:
        t, pending = self.records
        return _data_keys(pending, t)

    def data_rows(self) -> list[str | bytes]:
        t, pending = self.records
        if _NATIVE_ROWS is not None:
            got = _NATIVE_ROWS(t, pending)
            if got is not None:
                return got
        return list(itertools.chain.from_iterable(_data_keys(pending, t).items()))

    def is_empty(self) -> bool:
        return not self.records[1] and WriteOp.is_empty(self)


def bucket_op_shard(op: Op, shards: int) -> int:
    """Where a bucket op is recorded: a ``bucket_create`` in the first shard, a
    ``bucket_delete`` in the last. A pass drains the shards in order, each in time order, so in
    the committed logs a bucket's create comes before the bucket's records of the same pass and
    its delete after them (the follower records a create before the bucket's first entries and
    a delete after its last ones; every record before a pass's cutoff is in that pass or an
    earlier one)."""
    return 0 if op is Op.BUCKET_CREATE else shards - 1


def _prepare(batch: Sequence[Mutation], shards: int) -> _Prepared:
    """The first pass of ``record_many`` over the whole batch, before anything is sent: type
    check, shard, encoded value and key tail of each record (so bad input fails here), grouped
    by shard in order of first appearance; and each shard's runs (``_runs_py``). In C when it
    is built (one call per batch, the runs noted while each record is in the cache)."""
    if _NATIVE_PREPARE is not None:
        got = _NATIVE_PREPARE(batch, shards, Mutation)
        if got is not None:
            return got
    by_shard = _prepare_py(batch, shards)
    return by_shard, {shard: _runs_py(pending) for shard, pending in by_shard.items()}


def _runs_py(pending: _Records) -> _Runs:
    """A shard's runs (see ``_Runs``): {source: (first, last position)}, or None when a
    source's positions do not strictly increase (a duplicate, a replay, out of order)."""
    runs: dict[str, list[str]] = {}
    for m, _, _ in pending:
        src, pos = m.source, m.position
        run = runs.get(src)
        if run is None:
            runs[src] = [pos, pos]
        elif pos <= run[1]:
            return None
        else:
            run[1] = pos
    return {src: (first, last) for src, (first, last) in runs.items()}


def _run_marks(
    runs: _Runs, streams: dict[tuple[int, str], str | None], shard: int
) -> tuple[dict[str, str | None], dict[str, str]] | None:
    """``_fast_marks`` from a shard's runs, one step per source: (old marks, new marks), or
    None when a source is not cached, its first record is not above its mark, or its
    positions do not increase (``runs`` None)."""
    if runs is None:
        return None
    old: dict[str, str | None] = {}
    high: dict[str, str] = {}
    for src, (first, last) in runs.items():
        mark = streams.get((shard, src), _UNKNOWN)
        if mark is _UNKNOWN or (mark is not None and first <= mark):
            return None
        old[src] = mark
        high[src] = last
    return old, high


def _prepare_py(batch: Iterable[Mutation], shards: int) -> dict[int, _Records]:
    """``_prepare`` in Python: the reference the C one matches byte for byte."""
    by_shard: dict[int, list[_Pending]] = defaultdict(list)
    # Power-of-two shard counts up to 256: the low byte of the digest is the modulo.
    mask = shards - 1 if shards <= 256 and shards & (shards - 1) == 0 else -1
    new_hash = keys.OBJECT_HASHER.copy
    new_event_hash = keys.EVENT_HASHER.copy
    from_bytes = int.from_bytes
    null_ver = "." + keys.NULL_VERSION_HASH + "."
    version_hash = keys.version_hash
    pack = packer().pack
    for m in batch:
        if m.__class__ is not Mutation and not isinstance(m, Mutation):
            raise InvalidMutation(f"not a Mutation: {type(m).__name__}")
        # keys.locate, inlined: blake2b-64 of bucket NUL key (a tenant's bucket as
        # "tenant/bucket", a name no other bucket can have).
        h = new_hash()
        h.update(f"{m.tenant}/{m.bucket}\x00{m.key}".encode() if m.tenant else f"{m.bucket}\x00{m.key}".encode())
        digest = h.digest()
        shard = digest[7] & mask if mask >= 0 else from_bytes(digest, "big") % shards
        if m.op.of_bucket:
            shard = bucket_op_shard(m.op, shards)
        vid = m.version_id
        # The event id (``mutation.event_id``), inlined: its first 16 hex chars end the key.
        e = new_event_hash()
        e.update(f"{m.source}\n{m.position}".encode())
        ver = null_ver if vid is None else f".{version_hash(vid)}."
        by_shard[shard].append((m, m.encode_with(pack), f".{digest.hex()}{ver}{e.hexdigest()[:16]}"))
    return dict(by_shard)


class ChangeIndex:
    """A sharded change index on an ``ObjectStore``. Thread-safe."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        shards: int,
        prefix: str = "changelog",
        mode: str = "write",
        clock: Callable[[], float] = time.time,
        create: bool = True,
    ) -> None:
        if not isinstance(shards, int) or not 1 <= shards <= 4096:
            raise ConfigError(f"index.shards must be an integer from 1 to 4096, not {shards!r}")
        if mode not in MODES:
            raise ConfigError(f"index.mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not prefix or any(c in prefix for c in "/\x00 "):
            raise ConfigError(f"index prefix {prefix!r} must be non-empty without '/', spaces or NUL")
        self.store = store
        self.shards = shards
        self.prefix = prefix
        self.mode = mode
        self._clock = clock
        self.control_oid = f"{prefix}.control"
        self._lock = threading.Lock()
        self._last_t = [0] * shards
        self._floor: list[int | None] = [None] * shards
        self._streams: dict[tuple[int, str], str | None] = {}
        self._open(create)

    # ------------------------------------------------------------------ layout

    def shard_oid(self, n: int) -> str:
        if not 0 <= n < self.shards:
            raise InvalidMutation(f"no shard {n}: this index has shards 0..{self.shards - 1}")
        return f"{self.prefix}.shard.{n:04d}"

    def first_entry_us(self, n: int) -> int | None:
        """The arrival time of the oldest entry waiting in shard ``n`` (None: it is empty): one
        one-key read. A collector trims only what it committed, so an entry recorded at or
        before this time is not committed yet."""
        first = self.store.omap_page(
            self.shard_oid(n), start_after=keys.DATA_PREFIX, end_before=keys.DATA_END, prefix=keys.DATA_PREFIX, limit=1
        )
        return keys.time_of(first[0][0]) if first else None

    def shard_of(self, bucket: str, key: str) -> int:
        """The shard of an object's records (a bucket op's: ``bucket_op_shard``)."""
        return keys.shard_of(bucket, key, self.shards)

    def _open(self, create: bool) -> None:
        got = self.store.omap_get(self.control_oid, [META_KEY])
        if META_KEY in got:
            meta = orjson.loads(got[META_KEY])
            if meta.get("shards") != self.shards or meta.get("mode") != self.mode:
                raise ConfigError(
                    f"index {self.prefix!r} was created with shards={meta.get('shards')} "
                    f"mode={meta.get('mode')!r}; config says shards={self.shards} mode={self.mode!r}"
                )
            return
        if not create:
            raise ConfigError(f"no change index {self.prefix!r} in this store")
        # Shards first, each with its floor: a reader that sees ``meta`` sees initialised shards.
        zero = keys.time_hex(0).encode()
        ops = [
            (self.shard_oid(n), WriteOp(create_exclusive=True, set={keys.FLOOR_KEY: zero}))
            for n in range(self.shards)
        ]
        for (oid, _), err in zip(ops, self.store.execute_many(ops), strict=True):
            if err is not None and not isinstance(err, CompareFailed):  # CompareFailed: exists already
                raise TransientError(f"cannot initialise shard {oid}: {err}") from err
        meta_doc = {"shards": self.shards, "mode": self.mode, "created": self._clock(), "version": 1}
        self.store.execute(self.control_oid, WriteOp(set={META_KEY: orjson.dumps(meta_doc)}))
        logger.info("created change index %s with %d shards, mode %s", self.prefix, self.shards, self.mode)

    # ------------------------------------------------------------------ write hook

    def record(self, m: Mutation) -> RecordResult:
        return self.record_many((m,))

    def record_many(self, ms: Iterable[Mutation]) -> RecordResult:
        """Record mutations: one atomic guarded op per shard, all shards concurrently.

        Records whose (source, position) is at or below the shard's high-water mark for that
        source were recorded before and are counted as duplicates. Raises ``InvalidMutation``
        before writing anything if any record cannot be encoded. Each shard's op is sent as soon
        as it is built, so a store error while building one (reading an uncached shard state)
        may surface after other shards were written: as with any failure, re-recording the
        batch is safe (those records are then duplicates).
        """
        batch = ms if isinstance(ms, list | tuple) else list(ms)
        by_shard, runs = _prepare(batch, self.shards)
        total = RecordResult(0, 0)
        attempt = 0
        while by_shard:
            attempt += 1
            sent: list[tuple[int, RecordResult, Callable[[], None]]] = []
            skipped: list[RecordResult] = []
            results = self.store.execute_many(self._ops(by_shard, runs, sent, skipped))
            for result in skipped:
                total = total + result
            retry: dict[int, _Records] = {}
            failure: BaseException | None = None
            for (shard, result, commit), err in zip(sent, results, strict=True):
                if err is None:
                    commit()
                    total = total + result
                elif isinstance(err, CompareFailed):
                    self._forget(shard)
                    retry[shard] = by_shard[shard]
                else:
                    self._forget(shard)
                    failure = failure or err
            if failure is not None:
                if isinstance(failure, Exception):
                    raise failure
                raise TransientError(str(failure))
            if retry and attempt >= CAS_RETRIES:
                raise TransientError(f"shards {sorted(retry)} kept failing their guarded write; giving up")
            by_shard = retry
        return total

    def _ops(
        self,
        todo: dict[int, _Records],
        runs: dict[int, _Runs],
        sent: list[tuple[int, RecordResult, Callable[[], None]]],
        skipped: list[RecordResult],
    ) -> Iterator[tuple[str, WriteOp]]:
        """The shards' ops, built one at a time as the store asks for them: each op leaves (aio)
        while the next one is built, so this CPU overlaps the OSD's work. ``sent`` gets the
        shards whose op was yielded, in order; ``skipped`` the results of shards with nothing new."""
        for shard, pend in todo.items():
            op, result, commit = self._build(shard, pend, runs.get(shard))
            if op is None:
                skipped.append(result)
                continue
            sent.append((shard, result, commit))
            yield self.shard_oid(shard), op

    def _forget(self, shard: int) -> None:
        with self._lock:
            self._floor[shard] = None
            for k in [k for k in self._streams if k[0] == shard]:
                del self._streams[k]

    @staticmethod
    def _select(pending: Sequence[_Pending], marks: dict[str, str]) -> tuple[list[_Pending], dict[str, str]]:
        """The records not recorded before (above their source's mark, first of their
        (source, position) in the batch), and each source's new high-water mark."""
        fresh: list[_Pending] = []
        seen: set[tuple[str, str]] = set()
        new_marks: dict[str, str] = dict(marks)
        for p in pending:
            m = p[0]
            src, pos = m.source, m.position
            mark = marks.get(src)
            if mark is not None and pos <= mark:
                continue
            ident = (src, pos)
            if ident in seen:
                continue
            seen.add(ident)
            fresh.append(p)
            cur = new_marks.get(src)
            if cur is None or pos > cur:
                new_marks[src] = pos
        return fresh, new_marks

    def _reserve(self, shard: int, floor: int, count: int) -> tuple[int, int]:
        """Times t .. t + count - 1 for new keys of this shard; also returns the previous last t."""
        with self._lock:
            prev = self._last_t[shard]
            t = max(int(self._clock() * 1_000_000), prev + 1, floor + 1)
            self._last_t[shard] = t + count - 1
        return t, prev

    def _build(
        self, shard: int, pending: _Records, runs: _Runs = None
    ) -> tuple[WriteOp | None, RecordResult, Callable[[], None]]:
        """The guarded op that records ``pending`` in ``shard`` (None when all were recorded
        before), its result and what to do once the op succeeded (update the stream cache).
        ``runs``: the shard's runs in the batch (``_runs_py``; None takes the general path)."""
        oid = self.shard_oid(shard)
        fast = self._fast_keys(shard, pending, runs)
        if fast is not None:
            floor, t, sets, old, new_marks = fast
            fresh = pending
        else:
            sources = sorted({p[0].source for p in pending})
            floor, marks = self._shard_state(shard, oid, sources)
            old = {src: marks.get(src) for src in sources}
            fresh, new_marks = self._select(pending, marks)
            if not fresh:
                return None, RecordResult(0, len(pending)), lambda: None
            t, _ = self._reserve(shard, floor, len(fresh))
            # The keys of the fresh records (``keys.data_key``).
            sets = {f"{keys.time_bound(t + i)}{tail}": value for i, (_, value, tail) in enumerate(fresh)}
        sources = sorted(old)
        asserts = [(keys.FLOOR_KEY, Cmp.LT, keys.time_hex(t))]
        op = WriteOp(asserts=asserts) if sets is not None else RecordOp(asserts=asserts, records=(t, pending))
        for src in sources:
            was = old[src]
            # An absent key compares as "": this also guards the first write of a new stream.
            op.asserts.append((keys.stream_key(src), Cmp.EQ, was or ""))
            new = new_marks.get(src)
            if new is not None and new != was:
                op.set[keys.stream_key(src)] = new.encode()
        if self.mode == "object":
            assert sets is not None  # object mode never takes RecordOp
            self._replace_entries(op, oid, floor, sets, fresh)
        elif sets is not None:
            op.set.update(sets)

        def commit() -> None:
            with self._lock:
                for src in sources:
                    self._streams[(shard, src)] = new_marks.get(src)

        return op, RecordResult(len(fresh), len(pending) - len(fresh)), commit

    def _fast_keys(
        self, shard: int, pending: _Records, runs: _Runs
    ) -> tuple[int, int, dict[str, bytes] | None, dict[str, str | None], dict[str, str]] | None:
        """The fast path of ``_build``: the shard's state is cached and positions increase per
        source (the follower's batches: ``runs`` is not None), so every record is above its
        source's mark and unique in the batch when each source's first record is above its
        mark (``_run_marks``: one step per source, the per-record part done by the first
        pass). The keys: None when the store makes them (``RecordOp``), else made here.
        Returns (floor, first time, keys, old marks, new marks); None for anything else (a
        stream not cached, a duplicate, a replay, positions out of order, object mode), which
        takes the general path.

        Reading the cache without the lock is safe: every value read here is asserted by the
        op, so a stale one only makes the op fail its compare and be retried."""
        floor = self._floor[shard]
        if self.mode == "object" or floor is None:
            return None
        marks = _run_marks(runs, self._streams, shard)
        if marks is None:
            return None
        t, _ = self._reserve(shard, floor, len(pending))
        sets = None if getattr(self.store, "sends_record_keys", False) else _data_keys(pending, t)
        return floor, t, sets, marks[0], marks[1]

    def _replace_entries(
        self, op: WriteOp, oid: str, floor: int, sets: dict[str, bytes], fresh: _Records
    ) -> None:
        """Object mode: one entry per object+version. ``op`` also removes the entries the fresh
        ones replace (asserting they are still the live ones) and points each object key at its
        new entry."""
        okeys = sorted({keys.OBJECT_PREFIX + p[2][_OBJVER] for p in fresh})
        live = {k: v.decode() for k, v in self.store.omap_get(oid, okeys).items()}
        for okey, dkey in live.items():
            op.asserts.append((okey, Cmp.EQ, dkey))
            if keys.time_of(dkey) > floor:
                op.remove.append(dkey)
        if op.remove:
            # Replacing an entry is only safe while the collector has not frozen it: the
            # floor must still be below it, not just below the new entries.
            guard = min(keys.time_of(k) for k in op.remove)
            op.asserts[0] = (keys.FLOOR_KEY, Cmp.LT, keys.time_hex(guard))
        osets = op.set
        for (dkey, value), (_, _, tail) in zip(sets.items(), fresh, strict=True):
            okey = keys.OBJECT_PREFIX + tail[_OBJVER]
            prev_key = osets.get(okey)
            if prev_key is not None:  # two writes of one object+version in one batch: keep the newer
                osets.pop(prev_key.decode(), None)
            osets[okey] = dkey.encode()
            osets[dkey] = value

    def _shard_state(self, shard: int, oid: str, sources: Sequence[str]) -> tuple[int, dict[str, str]]:
        with self._lock:
            floor = self._floor[shard]
            missing = [s for s in sources if (shard, s) not in self._streams]
            marks: dict[str, str | None] = {
                s: self._streams[(shard, s)] for s in sources if (shard, s) in self._streams
            }
        want = [keys.stream_key(s) for s in missing]
        if floor is None:
            want.append(keys.FLOOR_KEY)
        if want:
            got = self.store.omap_get(oid, want)
            for s in missing:
                raw = got.get(keys.stream_key(s))
                marks[s] = raw.decode() if raw is not None else None
            if floor is None:
                floor = int(got.get(keys.FLOOR_KEY, b"0"), 16)
            with self._lock:
                self._floor[shard] = floor
                for s in missing:
                    self._streams[(shard, s)] = marks[s]
        assert floor is not None
        return floor, {s: v for s, v in marks.items() if v is not None}

    # ------------------------------------------------------------------ reading

    def page(
        self, shard: int, *, start_after: str = "", end_before: str | None = None, limit: int = OP_KEYS
    ) -> list[Entry]:
        oid = self.shard_oid(shard)
        end = keys.DATA_END if end_before is None else min(end_before, keys.DATA_END)
        raw = self.store.omap_page(
            oid, start_after=max(start_after, keys.DATA_PREFIX), end_before=end, prefix=keys.DATA_PREFIX, limit=limit
        )
        out = []
        for k, v in raw:
            try:
                m = Mutation.decode(v)
            except InvalidMutation as ex:
                raise InvalidMutation(f"shard {shard} key {k}: {ex}") from ex
            out.append(Entry(shard, k, keys.time_of(k), m, v))
        return out

    def scan(
        self,
        shard: int,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        start_after: str = "",
        page: int = OP_KEYS,
    ) -> Iterator[Entry]:
        """Entries of time in [since_us, until_us), after ``start_after``, paged."""
        after = start_after
        if since_us:
            # Above every key of time since_us - 1 ('~' sorts after any hex digit), below time since_us.
            after = max(after, keys.time_bound(since_us - 1) + ".~")
        end = keys.time_bound(until_us) if until_us is not None else None
        while True:
            batch = self.page(shard, start_after=after, end_before=end, limit=page)
            if not batch:
                return
            yield from batch
            after = batch[-1].key

    # ------------------------------------------------------------------ collector side

    def floor(self, shard: int) -> int:
        got = self.store.omap_get(self.shard_oid(shard), [keys.FLOOR_KEY])
        return int(got.get(keys.FLOOR_KEY, b"0"), 16)

    def raise_floor(self, shard: int, t_us: int, *, fence: LockRef) -> int:
        """Raise the shard's floor to ``t_us`` (never lowers it), fenced by the shard lease."""
        oid = self.shard_oid(shard)
        for _ in range(CAS_RETRIES):
            current = self.floor(shard)
            if current >= t_us:
                return current
            op = WriteOp(
                fence=fence,
                asserts=[(keys.FLOOR_KEY, Cmp.EQ, keys.time_hex(current))],
                set={keys.FLOOR_KEY: keys.time_hex(t_us).encode()},
            )
            try:
                self.store.execute(oid, op)
            except CompareFailed:
                continue
            return t_us
        raise TransientError(f"shard {shard}: floor kept changing under us")

    def remove(self, shard: int, keys_: Sequence[str], *, fence: LockRef | None = None) -> None:
        """Remove exactly these data keys (missing ones are fine), fenced when ``fence`` is given.

        In object mode the ``o.`` pointer of each removed entry goes too, but only while it still
        points at that entry (a newer write may have replaced it).
        """
        oid = self.shard_oid(shard)
        plain: list[tuple[str, WriteOp]] = []
        for i in range(0, len(keys_), OP_KEYS):
            chunk = list(keys_[i : i + OP_KEYS])
            for k in chunk:
                keys.time_of(k)  # refuses anything that is not a data key
            if self.mode != "object":
                plain.append((oid, WriteOp(fence=fence, remove=chunk)))
                continue
            pointers = {keys.object_key(*k.split(".")[2:4]): k for k in chunk}
            for _ in range(CAS_RETRIES):
                current = {k: v.decode() for k, v in self.store.omap_get(oid, sorted(pointers)).items()}
                ours = [ok for ok, dk in pointers.items() if current.get(ok) == dk]
                op = WriteOp(
                    fence=fence,
                    remove=chunk + ours,
                    asserts=[(ok, Cmp.EQ, pointers[ok]) for ok in ours],
                )
                try:
                    self.store.execute(oid, op)
                    break
                except CompareFailed:
                    continue
            else:
                raise TransientError(f"shard {shard}: object pointers kept changing during trim")
        if plain:
            # Independent exact removals: sent together (RADOS: aio), every error surfaced.
            for err in self.store.execute_many(plain):
                if err is not None:
                    raise err

    def stats(self, shard: int) -> ShardStats:
        oid = self.shard_oid(shard)
        count = 0
        oldest: int | None = None
        after = keys.DATA_PREFIX
        while True:
            batch = self.store.omap_page(
                oid, start_after=after, end_before=keys.DATA_END, prefix=keys.DATA_PREFIX, limit=OP_KEYS
            )
            if not batch:
                break
            if oldest is None:
                oldest = keys.time_of(batch[0][0])
            count += len(batch)
            after = batch[-1][0]
        return ShardStats(shard, count, oldest, self.floor(shard))


def _fast_keys(
    pending: list[_Pending], t: int, streams: dict[tuple[int, str], str | None], shard: int
) -> tuple[dict[str, bytes], dict[str, str | None], dict[str, str]] | None:
    """The fast path's keys from the first reserved time ``t`` on, checked record by record:
    (keys, old marks, new marks), or None when a record is not new above its stream's cached
    mark (``streams``: (shard, source) -> mark) or comes out of order (``_fast_marks``). The
    per-record reference of ``ChangeIndex._fast_keys``, which checks per source
    (``_run_marks``); the tests hold the two to the same answers."""
    marks = _fast_marks(pending, streams, shard)
    if marks is None:
        return None
    return _data_keys(pending, t), marks[0], marks[1]


def _data_keys(pending: _Records, t: int) -> dict[str, bytes]:
    """The data keys and values of ``pending`` recorded at times ``t``, ``t + 1``, ...: what
    ``keys.time_bound`` makes, one format per 256 keys (the key's time is its high part and
    ``_HEX2`` of its low byte)."""
    sets: dict[str, bytes] = {}
    n = t
    hi = f"d.{n >> 8:014x}"
    for _, value, tail in pending:
        low = n & 255
        if not low:
            hi = f"d.{n >> 8:014x}"
        sets[f"{hi}{_HEX2[low]}{tail}"] = value
        n += 1
    return sets


def _fast_marks(
    pending: list[_Pending], streams: dict[tuple[int, str], str | None], shard: int
) -> tuple[dict[str, str | None], dict[str, str]] | None:
    """``_fast_keys``' check without the keys: (old marks, new marks), or None when a record
    is not new above its stream's cached mark or comes out of order. In C when it is built.
    The index checks per source instead (``_run_marks``, from the first pass's runs); this
    per-record check is the reference the tests compare that with."""
    if _NATIVE_MARKS is not None:
        return _NATIVE_MARKS(pending, streams, shard, Mutation)
    return _fast_marks_py(pending, streams, shard)


def _fast_marks_py(
    pending: list[_Pending], streams: dict[tuple[int, str], str | None], shard: int
) -> tuple[dict[str, str | None], dict[str, str]] | None:
    """``_fast_marks`` in Python: the reference the C one matches."""
    old: dict[str, str | None] = {}
    high: dict[str, str] = {}
    for m, _, _ in pending:
        src = m.source
        pos = m.position
        top = high.get(src)
        if top is None:
            mark = streams.get((shard, src), _UNKNOWN)
            if mark is _UNKNOWN or (mark is not None and pos <= mark):
                return None
            old[src] = mark
        elif pos <= top:
            return None
        high[src] = pos
    return old, high


class HookStream:
    """Positions for a write hook that has no source stream of its own: one stream per
    process start, positions a fixed-width counter, so a retried ``record`` of the same
    mutation object (same position) is recorded once."""

    def __init__(self, name: str = "hook") -> None:
        import socket

        self.source = f"{name}:{socket.gethostname()}:{os.getpid()}:{time.time_ns():x}"
        self._n = 0
        self._lock = threading.Lock()

    def next_position(self) -> str:
        with self._lock:
            self._n += 1
            return f"{self._n:016x}"
