"""The record path in C (changelog/_speedups.c: ``prepare_records``, ``record_rows``) against
the Python reference in changelog.pipeline.index (``_prepare_py``, ``_runs_py``, ``_data_keys``),
byte for byte (issue 17): the shard, the stored value and the data key tail of every record, each
shard's runs (the marks check folded into the first pass), for awkward records
(unicode and control characters, the longest keys and buckets, every msgpack width of strings,
ints and maps, tenants, versions, bucket ops), for records the C code must hand back to Python
(then the same result, or the same error), and the whole ``record_many`` on sqlite both ways.

Where the module is not built the C-only tests skip; the Python path runs in every case, and
tests/unit/test_speedups.py fails a CI build that lost the module."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import msgpack
import pytest

from changelog.errors import InvalidMutation
from changelog.pipeline import index as index_mod
from changelog.pipeline import keys
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import (
    ChangeIndex,
    RecordOp,
    _fast_keys,
    _fast_marks_py,
    _Pending,
    _prepare_py,
    _Records,
    _run_marks,
    _runs_py,
)
from changelog.pipeline.mutation import Mutation, Op, event_id
from changelog.pipeline.store import WriteOp

try:
    from changelog import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(
    _speedups is None, reason="changelog._speedups is not built (no C compiler)"
)

SHARD_COUNTS = [1, 2, 3, 16, 17, 256, 257, 1000, 4096]


def _char(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.5:
        return rng.choice("abcxyz019._-/ ~")
    if pick < 0.6:
        return chr(rng.randrange(1, 0x20))  # control characters (no NUL: not in names)
    if pick < 0.75:
        return chr(rng.randrange(0x80, 0x800))
    if pick < 0.9:
        cp = rng.randrange(0x800, 0x10000 - 0x800)
        return chr(cp + 0x800 if cp >= 0xD800 else cp)  # no surrogate
    return chr(rng.randrange(0x10000, 0x110000))


def _text(rng: random.Random, n: int) -> str:
    return "".join(_char(rng) for _ in range(n))


def _utf8_cut(s: str, limit: int) -> str:
    """``s`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    return s.encode()[:limit].decode(errors="ignore")


def _mutation(rng: random.Random, i: int) -> Mutation:
    """Any valid Mutation: every optional field set or not, strings of every msgpack width."""
    op = rng.choice(list(Op))
    bucket_op = op.of_bucket
    length = rng.choice([1, 31, 32, 255, 256, 1024, rng.randrange(1, 60)])
    key = "" if bucket_op else _utf8_cut(_text(rng, length), 1024) or "k"
    etag_len = rng.choice([0, 31, 32, 255, 256, 65535, 65536, 40])
    big = rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
    return Mutation(
        bucket=_utf8_cut(rng.choice(["b", "bench-bucket", _text(rng, rng.randrange(1, 80))]), 255).replace(
            "/", "_"
        )
        or "b",
        key=key,
        op=op,
        mtime_ns=rng.choice([0, big, rng.randrange(0, 2**64)]),
        source=rng.choice(
            [f"rgw:b:id.1:{i % 11}", "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(200))]
        ),
        position=rng.choice([f"{i:020d}", f"00001.{i}.5", "~" * 100]),
        seq=rng.choice(["", f"{i:020d}", _text(rng, rng.randrange(0, 40))]),
        version_id=None if bucket_op or rng.random() < 0.5 else rng.choice(["null", "v1", _text(rng, 40)]),
        size=None if bucket_op or rng.random() < 0.3 else big,
        etag=None
        if bucket_op or rng.random() < 0.3
        else ("e" * etag_len if rng.random() < 0.5 else _text(rng, 33)),
        baseline=rng.random() < 0.3,
        metadata={}
        if bucket_op or rng.random() < 0.5
        else {
            _text(rng, rng.randrange(0, 6)): _text(rng, rng.randrange(0, 20))
            for _ in range(rng.choice([1, 15, 16, 40]))
        },
        tenant=rng.choice(["", "", "t", "tenant_1"]),
        obj_mtime_ns=None if bucket_op or rng.random() < 0.3 else big,
        storage_class=None if bucket_op or rng.random() < 0.5 else rng.choice(["STANDARD", _text(rng, 5)]),
    )


def _batch(seed: int, n: int) -> list[Mutation]:
    rng = random.Random(seed)
    return [_mutation(rng, i) for i in range(n)]


def _native_prepare(batch: list[Mutation], shards: int) -> Mapping[int, _Records]:
    """The C first pass's records; its runs checked against the Python reference's on the way."""
    assert _speedups is not None
    got = _speedups.prepare_records(batch, shards, Mutation)
    assert got is not None, "the C record path handed back a batch it must handle"
    by_shard, runs = got
    assert list(runs) == list(by_shard)
    for shard, pend in by_shard.items():
        assert runs[shard] == _runs_py(pend)
        assert runs[shard] is None or list(runs[shard] or {}) == list(_runs_py(pend) or {})  # sources in order
    return by_shard


def _records(got: object) -> Mapping[int, _Records]:
    """The records of ``index._prepare`` (records, runs) or of ``_prepare_py``."""
    return got[0] if isinstance(got, tuple) else got  # type: ignore[return-value]


def _plain(by_shard: Mapping[int, _Records]) -> list[tuple[int, list[tuple[int, bytes, str]]]]:
    """Comparable: shards in their order, each record as (its place in the batch, value, tail)."""
    return [(shard, [(id(m), value, tail) for m, value, tail in pend]) for shard, pend in by_shard.items()]


def test_native_record_path_is_used_where_required() -> None:
    """CI sets RGW_CHANGELOG_REQUIRE_NATIVE=1: there the record path must be the C one (unless
    RGW_CHANGELOG_PURE_PYTHON=1 asks for Python)."""
    if os.environ.get("RGW_CHANGELOG_REQUIRE_NATIVE", "") != "1":
        pytest.skip("RGW_CHANGELOG_REQUIRE_NATIVE=1 not set (CI sets it)")
    pure = os.environ.get("RGW_CHANGELOG_PURE_PYTHON", "") == "1"
    assert (index_mod._NATIVE_PREPARE is None) is pure
    assert (index_mod._NATIVE_MARKS is None) is pure
    assert (index_mod._NATIVE_ROWS is None) is pure
    # The RADOS store's write op in C (tests/integration/test_record_native_lab.py runs it).
    assert all(hasattr(_speedups, name) for name in ("write_op_send", "write_op_wait", "fast_marks"))


# --- the Python reference, pinned ---------------------------------------------------------------


def test_python_reference_is_the_documented_layout() -> None:
    """``_prepare_py`` gives what keys.py and Mutation.encode say: the shard function, the value,
    and a tail that makes ``keys.data_key``."""
    for shards in SHARD_COUNTS:
        batch = _batch(shards, 200)
        by_shard = _prepare_py(batch, shards)
        seen = 0
        for shard, pend in by_shard.items():
            for m, value, tail in pend:
                seen += 1
                want = (
                    index_mod.bucket_op_shard(m.op, shards)
                    if m.op.of_bucket
                    else keys.shard_of(f"{m.tenant}/{m.bucket}" if m.tenant else m.bucket, m.key, shards)
                )
                assert shard == want
                assert value == m.encode()
                obj = keys.object_hash(f"{m.tenant}/{m.bucket}" if m.tenant else m.bucket, m.key)
                assert keys.time_bound(77) + tail == keys.data_key(
                    77, obj, keys.version_hash(m.version_id), m.event_id
                )
        assert seen == len(batch)


# --- C against Python ---------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("shards", SHARD_COUNTS)
def test_prepare_is_python_byte_for_byte_on_random_records(shards: int) -> None:
    for seed in range(4):
        batch = _batch(seed * 1000 + shards, 250)
        got = _native_prepare(batch, shards)
        want = _prepare_py(batch, shards)
        assert list(got) == list(want)  # the same shards, in order of first appearance
        assert _plain(got) == _plain(want)


@needs_native
def test_prepare_awkward_records() -> None:
    """One record at a time, the edges named: each must be handled in C, byte for byte."""
    base = {
        "bucket": "b",
        "key": "k",
        "op": Op.WRITE,
        "mtime_ns": 1,
        "source": "s",
        "position": "p",
        "seq": "q",
    }
    cases: list[dict[str, object]] = [
        {},
        {"key": "é/\U0001f600/\x01\x7f\u2028"},
        {"key": "x" * 1024},
        {"key": "\U0001f600" * 256},  # 1024 UTF-8 bytes
        {"bucket": "b" * 255},
        {"version_id": None},
        {"version_id": "null"},  # the null version: None, one hash
        {"version_id": ""},
        {"version_id": "\U0001f600v"},
        {"seq": ""},
        {"seq": "s" * 31},
        {"seq": "s" * 32},
        {"seq": "s" * 255},
        {"seq": "s" * 256},
        {"etag": "e" * 65535},
        {"etag": "e" * 65536},
        {"etag": ""},
        {"size": 0},
        {"size": 127},
        {"size": 128},
        {"size": 255},
        {"size": 256},
        {"size": 65535},
        {"size": 65536},
        {"size": 2**32 - 1},
        {"size": 2**32},
        {"size": 2**64 - 1},
        {"mtime_ns": 0},
        {"mtime_ns": 2**64 - 1},
        {"obj_mtime_ns": 0},
        {"obj_mtime_ns": 2**63},
        {"baseline": True},
        {"metadata": {"a": "1"}},
        {"metadata": {f"k{i}": "v" * i for i in range(15)}},
        {"metadata": {f"k{i}": "v" for i in range(16)}},  # map16
        {"metadata": {"": "", "é": "\x00"}},
        {"tenant": "t_1"},
        {"storage_class": "STANDARD_IA"},
        {"op": Op.DELETE_MARKER, "version_id": "v"},
        {"op": Op.BUCKET_CREATE, "key": ""},
        {"op": Op.BUCKET_DELETE, "key": "", "tenant": "t"},
        {"source": "~" * 200, "position": "!" * 100},
    ]
    for shards in (1, 7, 16, 4096):
        for case in cases:
            m = Mutation(**{**base, **case})  # type: ignore[arg-type]
            got, want = _native_prepare([m], shards), _prepare_py([m], shards)
            assert _plain(got) == _plain(want), case
            assert msgpack.unpackb(next(iter(got.values()))[0][1], raw=False)["t"] == m.mtime_ns


class _Str(str):
    __slots__ = ()


class _SubMutation(Mutation):
    __slots__ = ()


def _same_outcome(batch: list[Mutation], shards: int) -> None:
    """``index._prepare`` (C, Python where C hands back) and the Python reference: the same
    records or the same error."""

    def outcome(fn: object) -> object:
        try:
            return _plain(_records(fn(batch, shards)))  # type: ignore[operator]
        except (InvalidMutation, UnicodeEncodeError, TypeError, ValueError) as ex:
            return f"{type(ex).__name__}: {ex}"

    assert outcome(index_mod._prepare) == outcome(_prepare_py)


@needs_native
def test_shapes_left_to_python_give_the_python_result() -> None:
    assert _speedups is not None
    good = Mutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q")
    handed_back = [
        Mutation(bucket=_Str("b"), key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q"),
        Mutation(
            bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q", etag="\ud800"
        ),
        Mutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q\udfff"),
        Mutation(
            bucket="b",
            key="k",
            op=Op.WRITE,
            mtime_ns=1,
            source="s",
            position="p",
            seq="q",
            metadata={"a": "x" * (600 * 1024)},
        ),  # too large: Python's error
        Mutation(
            bucket="b",
            key="k",
            op=Op.WRITE,
            mtime_ns=1,
            source="s",
            position="p",
            seq="q",
            metadata=_FrozenMap({"a": "1"}),
        ),
        _SubMutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q"),
    ]
    for odd in handed_back:
        for batch in ([odd], [good, odd], [odd, good, good]):
            assert _speedups.prepare_records(batch, 16, Mutation) is None
            _same_outcome(batch, 16)
    with pytest.raises(InvalidMutation, match="not a Mutation: str"):
        index_mod._prepare([good, "x"], 4)  # type: ignore[list-item]


class _FrozenMap(dict[str, str]):
    """A Mapping that is not exactly a dict."""


def test_record_many_takes_any_iterable() -> None:
    batch = _batch(5, 50)

    def gen() -> Iterator[Mutation]:
        yield from batch

    for prepare in (index_mod._prepare, _prepare_py):
        assert _plain(_records(prepare(list(gen()), 16))) == _plain(_prepare_py(batch, 16))


# --- the fast path's keys -----------------------------------------------------------------------


def _pending(n: int, sources: int = 3) -> list[_Pending]:
    ms = [
        Mutation(
            bucket="b",
            key=f"k{i}",
            op=Op.WRITE,
            mtime_ns=i,
            source=f"s{i % sources}",
            position=f"{i:08d}",
            seq="q",
        )
        for i in range(n)
    ]
    return list(next(iter(_prepare_py(ms, 1).values())))


def test_fast_keys_are_the_data_keys_and_refuse_what_is_not_new() -> None:
    pend = _pending(600)
    fresh: dict[tuple[int, str], str | None] = {(0, "s0"): None, (0, "s1"): "", (0, "s2"): None}
    # Times across a 256 boundary (the high part is formatted once per 256 keys), near 2**64.
    for t in (0, 1, 250, 2**40 + 255, 2**64 - 600):
        got = _fast_keys(pend, t, fresh, 0)
        assert got is not None
        sets, old, high = got
        assert list(sets) == [keys.time_bound(t + i) + p[2] for i, p in enumerate(pend)]
        assert list(sets.values()) == [p[1] for p in pend]
        assert old == {"s0": None, "s1": "", "s2": None}
        assert high == {"s0": "00000597", "s1": "00000598", "s2": "00000599"}
    replay = {**fresh, (0, "s0"): "00000000"}  # s0's first position was recorded before
    for streams, batch in [
        (replay, pend),
        ({(0, "s0"): None, (0, "s1"): None}, pend),  # s2 not cached
        ({(1, "s0"): None, (1, "s1"): None, (1, "s2"): None}, pend),  # another shard's marks
        (fresh, [pend[0], pend[6], pend[3]]),  # s0 goes back
        (fresh, [pend[0], pend[0]]),  # a duplicate
    ]:
        assert _fast_keys(batch, 10, streams, 0) is None


def _marks_cases() -> list[tuple[dict[tuple[int, str], str | None], list[_Pending]]]:
    pend = _pending(600)
    fresh: dict[tuple[int, str], str | None] = {(0, "s0"): None, (0, "s1"): "", (0, "s2"): None}
    return [
        (fresh, pend),
        (fresh, []),
        ({**fresh, (0, "s0"): "00000000"}, pend),  # s0's first position was recorded before
        ({**fresh, (0, "s1"): "00000000"}, pend),  # s1's mark is below its first position
        ({(0, "s0"): None, (0, "s1"): None}, pend),  # s2 not cached
        ({(1, "s0"): None, (1, "s1"): None, (1, "s2"): None}, pend),  # another shard's marks
        (fresh, [pend[0], pend[6], pend[3]]),  # s0 goes back
        (fresh, [pend[0], pend[0]]),  # a duplicate
        ({(0, "s0"): "\u00e9", (0, "s1"): None, (0, "s2"): None}, pend),  # non-ASCII mark above all
    ]


def test_fast_marks_are_fast_keys_without_the_keys() -> None:
    """``_fast_marks`` (the check when the store makes the keys, ``RecordOp``) decides as
    ``_fast_keys`` and gives its old and new marks; ``RecordOp.data_set`` gives its keys."""
    for streams, batch in _marks_cases():
        got = _fast_keys(batch, 10, streams, 0)
        marks = _fast_marks_py(batch, streams, 0)
        if got is None:
            assert marks is None
            continue
        sets, old, high = got
        assert marks == (old, high)
        op = RecordOp(records=(10, batch))
        assert op.data_set() == sets and list(op.data_set()) == list(sets)
        assert op.is_empty() is (not batch)


def test_run_marks_decide_as_the_per_record_check() -> None:
    """``_run_marks`` (the marks from the first pass's runs, one step per source) decides as
    ``_fast_marks_py`` (one step per record) and gives the same old and new marks."""
    for streams, batch in _marks_cases():
        assert _run_marks(_runs_py(batch), streams, 0) == _fast_marks_py(batch, streams, 0)
    rng = random.Random(3)
    pend = _pending(300, sources=5)
    for _ in range(300):
        batch = rng.sample(pend, rng.randrange(1, 12))
        if rng.random() < 0.5:
            batch.sort(key=lambda p: p[0].position)
        if rng.random() < 0.2:
            batch.append(rng.choice(batch))
        cached: dict[tuple[int, str], str | None] = {
            (0, f"s{k}"): rng.choice([None, "", f"{rng.randrange(300):08d}"]) for k in range(5) if rng.random() < 0.9
        }
        assert _run_marks(_runs_py(batch), cached, 0) == _fast_marks_py(batch, cached, 0)


@needs_native
def test_runs_in_c_match_python() -> None:
    """The runs ``prepare_records`` notes per shard and source: those of ``_runs_py``, for the
    follower's shape (positions increasing per source), replays, duplicates and going back."""
    pend = _pending(600)
    ms = [p[0] for p in pend]
    for batch in (ms, ms[::-1], ms[:10] + ms[5:20], ms + [ms[-1]], [ms[3]], ms[::7] + ms[1::7]):
        for shards in (1, 3, 16):
            _native_prepare(batch, shards)  # compares its runs with _runs_py's
    by_shard, runs = index_mod._prepare(ms, 1)
    assert runs == {0: {"s0": ("00000000", "00000597"), "s1": ("00000001", "00000598"), "s2": ("00000002", "00000599")}}
    assert index_mod._prepare(ms[:3] + ms[:1], 1)[1] == {0: None}


@needs_native
def test_records_from_c_are_the_python_records() -> None:
    """A shard's ``_speedups.Records`` (values and tails in buffers) reads as the list of
    ``_prepare_py``: length, items (each a fresh (mutation, value, tail)), negative indexes,
    the end; and it outlives the batch it was made from."""
    assert _speedups is not None
    batch = _batch(42, 300)
    got = _native_prepare(batch, 3)
    want = _prepare_py(batch, 3)
    del batch
    for shard, recs in got.items():
        assert type(recs) is _speedups.Records
        ref = want[shard]
        assert len(recs) == len(ref)
        assert recs[0] == ref[0] and recs[-1] == ref[-1] and recs[0][0] is ref[0][0]
        assert [r for r in recs] == list(ref)
        with pytest.raises(IndexError):
            recs[len(ref)]
        rows = RecordOp(records=(7, recs)).data_rows()
        assert rows == [x for kv in index_mod._data_keys(ref, 7).items() for x in kv]


@needs_native
def test_record_rows_in_c_match_python() -> None:
    """``RecordOp.data_rows`` (C ``record_rows``) is ``data_set``'s pairs, flat, in order; any
    other shape is handed back to Python."""
    assert _speedups is not None
    pend = _pending(600)
    for t in (0, 1, 250, 2**40 + 255, 2**64 - 600):
        flat = _speedups.record_rows(t, pend)
        want = [x for kv in index_mod._data_keys(pend, t).items() for x in kv]
        assert flat == want and all(type(a) is type(b) for a, b in zip(flat or [], want, strict=True))
        assert RecordOp(records=(t, pend)).data_rows() == want
    assert _speedups.record_rows(5, []) == []
    assert _speedups.record_rows(2**64 - 5, pend) is None  # past 2**64: keys.time_hex refuses it
    assert _speedups.record_rows(5, [pend[0][:2]]) is None  # type: ignore[list-item]
    assert _speedups.record_rows(5, [(pend[0][0], bytearray(b"x"), pend[0][2])]) is None  # type: ignore[list-item]
    assert _speedups.record_rows(5, [(pend[0][0], b"x", "t")]) is None


@needs_native
def test_fast_marks_in_c_match_python() -> None:
    fast_marks = getattr(_speedups, "fast_marks", None)
    if fast_marks is None:
        pytest.fail("changelog._speedups is built from an older source: rebuild it")
    for streams, batch in _marks_cases():
        assert fast_marks(batch, streams, 0, Mutation) == _fast_marks_py(batch, streams, 0)
    pend = _pending(10)
    fresh: dict[tuple[int, str], str | None] = {(0, "s0"): None, (0, "s1"): None, (0, "s2"): None}

    class Sub(Mutation):
        __slots__ = ()

    # Shapes only Python handles: None (the fast path is not taken: the general one decides).
    sub = Sub(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s0", position="00000001", seq="q")
    assert fast_marks([(sub, b"", "t")], fresh, 0, Mutation) is None
    assert fast_marks([pend[0][:2]], fresh, 0, Mutation) is None
    assert fast_marks(pend, fresh, 0, Mutation) is not None


class _KeysMadeByTheStore(SqliteStore):
    """A store that makes a ``RecordOp``'s data keys itself, as the RADOS store does in C: the
    index then hands it records, not keys (``sends_record_keys``)."""

    sends_record_keys = True

    def execute_many(self, ops: Iterable[tuple[str, WriteOp]]) -> list[BaseException | None]:
        def made() -> Iterator[tuple[str, WriteOp]]:
            for oid, op in ops:
                if isinstance(op, RecordOp):
                    self.record_ops += 1
                    op = WriteOp(asserts=op.asserts, set={**op.set, **op.data_set()})
                yield oid, op

        return super().execute_many(made())

    record_ops = 0


class _KeysMadeByTheIndex(SqliteStore):
    """A store that takes its data keys in ``set`` (``sends_record_keys`` false): the index
    makes them (``_data_keys``)."""

    sends_record_keys = False


def test_the_fast_path_hands_record_ops_to_a_store_that_makes_keys(tmp_path: Path) -> None:
    dumps = []
    for cls in (_KeysMadeByTheStore, SqliteStore, _KeysMadeByTheIndex):
        store = cls(str(tmp_path / f"{cls.__name__}.db"))
        index = ChangeIndex(store, shards=2, clock=lambda: 1_800_000_000.0)
        ms = [m for m, _, _ in _pending(900)]
        results = [index.record_many(ms[i : i + 300]) for i in range(0, 900, 300)]
        dumps.append((results, _dump(store, index)))
        if isinstance(store, _KeysMadeByTheStore):
            assert store.record_ops == 4  # batches 2 and 3, both shards (the first reads the marks)
        store.close()
    assert dumps[0] == dumps[1] == dumps[2]


# --- the whole record path, both ways -----------------------------------------------------------


def _dump(store: SqliteStore, index: ChangeIndex) -> dict[str, list[tuple[str, bytes]]]:
    return {
        index.shard_oid(n): store.omap_page(index.shard_oid(n), limit=100_000) for n in range(index.shards)
    }


@pytest.mark.parametrize("mode", ["write", "object"])
def test_record_many_stores_the_same_bytes_both_ways(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same batches (first contact, replays, duplicates, out-of-order positions, bucket ops)
    through ``record_many`` with the C path and with the Python one: the same omap, key for key,
    byte for byte (a fixed clock makes the times the same)."""
    rng = random.Random(7)
    ms = _batch(11, 400)
    batches = [ms[:150], ms[100:250], ms[250:], ms[::-1][:50], [ms[3]] * 3]
    dumps = []
    pick = rng.randrange(len(ms))
    ways = ("native", "store makes keys", "index makes keys", "python rows", "python")
    for way in ways:
        if way == "python rows":
            monkeypatch.setattr(index_mod, "_NATIVE_ROWS", None)
        if way == "python":
            monkeypatch.setattr(index_mod, "_NATIVE_PREPARE", None)
        cls = {"store makes keys": _KeysMadeByTheStore, "index makes keys": _KeysMadeByTheIndex}.get(way, SqliteStore)
        store = cls(str(tmp_path / f"{way}.db"))
        index = ChangeIndex(store, shards=8, mode=mode, clock=lambda: 1_800_000_000.0)
        results = [index.record_many(b) for b in batches]
        results.append(index.record(ms[pick]))
        dumps.append((results, _dump(store, index)))
        store.close()
    assert all(dump == dumps[0] for dump in dumps[1:])
    assert sum(r.written for r in dumps[0][0]) > 0
    assert any(r.duplicates for r in dumps[0][0])


def test_event_id_in_the_key_is_the_mutation_event_id() -> None:
    m = Mutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="src", position="pos", seq="q")
    ((_, _, tail),) = next(iter(index_mod._prepare([m], 4)[0].values()))
    assert tail.endswith("." + event_id("src", "pos")[:16])
