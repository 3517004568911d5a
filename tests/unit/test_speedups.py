"""The C encoder (changelog/_speedups.c) against the Python one, byte for byte, on random records
(issue 17): random unicode and control characters in every string, metadata of many keys that
share prefixes, times at the edges of what the C code formats, value shapes it must hand back to
Python (and then the same error as Python's), random page cuts, and several threads at once (it
encodes without the GIL). tests/unit/test_drain_speed.py pins both to the frozen reference.

Where the module is not built these tests skip, except ``test_native_is_built_where_required``:
CI sets ``RGW_CHANGELOG_REQUIRE_NATIVE=1``, so a build that silently lost the extension fails."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable

import msgpack
import pytest

from changelog.errors import InvalidMutation
from changelog.pipeline import logformat
from changelog.pipeline.logformat import SCHEMA_VERSION, _encode_raw_many_py, encode_raw_many_native
from changelog.pipeline.mutation import Mutation, Op
from tests.unit.test_drain_speed import _items as _mutation_items

try:
    from changelog import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(_speedups is None, reason="changelog._speedups is not built (no C compiler)")

T0 = 1_795_300_000_123_456  # 2026-11-21T22:26:40.123456Z
# 9999-12-31T23:59:59.999999Z: the last recorded time the C code formats (packed times, uint64
# nanoseconds, end in 2554).
MAX_US = 253_402_300_799_999_999
Items = list[tuple[int, bytes]]


def _native(items: Items) -> list[bytes]:
    """The C encoder alone (no fallback): for values of the shapes it must handle itself."""
    assert _speedups is not None
    lines = _speedups.encode_raw_many(items, SCHEMA_VERSION)
    assert lines is not None, "the C encoder handed back a batch it must handle"
    return lines


def _outcome(encode: Callable[[Items], list[bytes]], items: Items) -> list[bytes] | str:
    try:
        return encode(items)
    except InvalidMutation as ex:
        return f"InvalidMutation: {ex}"


# --- random strings and records ---------------------------------------------------------------


def _char(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.4:
        return rng.choice("abcxyz019._-/ ")
    if pick < 0.55:
        return chr(rng.randrange(0, 0x20))  # control characters, escaped
    if pick < 0.65:
        return rng.choice('"\\\x7f\u2028\u2029\ufeff')
    if pick < 0.8:
        return chr(rng.randrange(0x80, 0x800))  # 2 UTF-8 bytes
    if pick < 0.9:
        cp = rng.randrange(0x800, 0x10000 - 0x800)
        return chr(cp + 0x800 if cp >= 0xD800 else cp)  # 3 bytes, no surrogate
    return chr(rng.randrange(0x10000, 0x110000))  # 4 bytes


def _text(rng: random.Random, n: int) -> str:
    return "".join(_char(rng) for _ in range(n))


def _metadata(rng: random.Random) -> dict[str, str]:
    # Keys sharing prefixes and differing in multi-byte characters: the sort order is Python's.
    stems = ["", "a", "ab", "é", "\U0001f600", "a\x00", "A", "~"]
    return {
        rng.choice(stems) + _text(rng, rng.randrange(0, 4)): _text(rng, rng.randrange(0, 12))
        for _ in range(rng.choice([1, 2, 5, 40]))
    }


def _time_ns(rng: random.Random) -> int:
    return rng.choice(
        [0, 999, 1000, 1_000_000_000, T0 * 1000, 2**64 - 1, rng.randrange(0, 2**64)]
    )


def _value(rng: random.Random, i: int) -> dict[str, object]:
    """A stored value as Mutation.encode_with packs it, but without Mutation's checks: any
    string anywhere, every optional field present or not."""
    doc: dict[str, object] = {
        "b": _text(rng, rng.randrange(1, 20)),
        "k": rng.choice(["", _text(rng, rng.randrange(1, 300))]),
        "o": rng.choice([op.value for op in Op] + [_text(rng, 3)]),
        "t": _time_ns(rng),
        "src": _text(rng, rng.randrange(0, 200)),
        "p": rng.choice([f"{i:020d}", _text(rng, rng.randrange(0, 100))]),
        "q": _text(rng, rng.randrange(0, 20)),
    }
    optional: dict[str, object] = {
        "v": _text(rng, rng.randrange(0, 30)),
        "s": rng.choice([0, 1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63)]),
        "e": _text(rng, 32),
        "bl": rng.choice([True, False]),
        "m": _metadata(rng),
        "tn": _text(rng, rng.randrange(0, 10)),
        "mt": _time_ns(rng),
        "sc": _text(rng, rng.randrange(1, 12)),
    }
    for name, value in optional.items():
        if rng.random() < 0.5:
            doc[name] = value
    return doc


def _items(seed: int, n: int) -> Items:
    rng = random.Random(seed)
    t = T0
    out = []
    for i in range(n):
        t = rng.choice([t + 1, t + 999_999, t, rng.randrange(0, MAX_US + 1)])
        out.append((t, msgpack.packb(_value(rng, i))))
    return out


# --- the tests --------------------------------------------------------------------------------


def test_native_is_built_where_required() -> None:
    if os.environ.get("RGW_CHANGELOG_REQUIRE_NATIVE", "") != "1":
        pytest.skip("RGW_CHANGELOG_REQUIRE_NATIVE=1 not set (CI sets it)")
    assert _speedups is not None, "changelog._speedups is not built: the package build lost the C encoder"
    if os.environ.get("RGW_CHANGELOG_PURE_PYTHON", "") != "1":
        assert logformat.ENCODER == "native"


@pytest.mark.parametrize("pure", ["1", ""])
def test_pure_python_is_forced_by_the_environment(pure: str) -> None:
    env = {**os.environ, "RGW_CHANGELOG_PURE_PYTHON": pure}
    out = subprocess.run(
        [sys.executable, "-c", "from changelog.pipeline import logformat; print(logformat.ENCODER)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == ("python" if pure or _speedups is None else "native")


@needs_native
def test_event_id_is_blake2b_128_across_block_boundaries() -> None:
    assert _speedups is not None
    rng = random.Random(1)
    for n in [*range(0, 300), 1023, 1024, 1025, 5000]:
        data = rng.randbytes(n)
        assert _speedups.event_id(data) == hashlib.blake2b(data, digest_size=16).hexdigest(), n


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_random_records_encode_as_in_python(seed: int) -> None:
    items = _items(seed, 400)
    assert _native(items) == _encode_raw_many_py(items)


@needs_native
def test_mutations_of_every_op_encode_as_in_python() -> None:
    rng = random.Random(5)
    items = []
    for i in range(300):
        op = rng.choice(list(Op))
        m = Mutation(
            bucket="b-1", key="" if op.of_bucket else _text(rng, rng.randrange(1, 50)), op=op,
            mtime_ns=_time_ns(rng), source=f"rgw:b-1:z.{i % 7}:{i % 11}", position=f"{i:020d}", seq=f"{i:016x}",
            version_id=None if op.of_bucket else rng.choice([None, "null", f"v{i}"]),
            size=rng.choice([None, 0, 2**64 - 1]) if op is Op.WRITE else None,
            metadata={} if op.of_bucket else rng.choice([{}, _metadata(rng)]),
            tenant=rng.choice(["", "t_1"]), baseline=rng.random() < 0.5,
        )
        items.append((T0 + i, m.encode()))
    assert _native(items) == _encode_raw_many_py(items)


@needs_native
def test_page_cuts_do_not_change_the_lines() -> None:
    items = _items(9, 1000)
    whole = _encode_raw_many_py(items)
    rng = random.Random(9)
    cuts = sorted(rng.sample(range(1, len(items)), 60))
    pages = [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]
    assert [line for page in pages for line in _native(page)] == whole


class RawMap(bytes):
    """Packed bytes that ``_pack_map`` inserts as they are."""


def _pack_map(pairs: list[tuple[object, object]]) -> bytes:
    """A msgpack map in the given order, repeated keys kept (msgpack.packb of a dict cannot)."""
    return bytes([0x80 | len(pairs)]) + b"".join(
        msgpack.packb(k) + (v if isinstance(v, RawMap) else msgpack.packb(v)) for k, v in pairs
    )


BASE: dict[str, object] = {"b": "bk", "k": "key", "o": "write", "t": T0 * 1000, "src": "s", "p": "1", "q": "q"}

# (name, value, the C encoder handles it itself): shapes Mutation never packs, and broken ones.
SHAPES: list[tuple[str, bytes, bool]] = [
    ("nil optionals", msgpack.packb({**BASE, "v": None, "s": None, "e": None, "mt": None, "sc": None, "tn": None, "m": None, "bl": None}), True),
    ("nil key", msgpack.packb({**BASE, "k": None}), True),
    ("empty tenant", msgpack.packb({**BASE, "tn": ""}), True),
    ("empty metadata", msgpack.packb({**BASE, "m": {}}), True),
    ("int baseline", msgpack.packb({**BASE, "bl": 7}), True),
    ("negative size", msgpack.packb({**BASE, "s": -5}), True),
    ("unknown fields", msgpack.packb({**BASE, "zz": 1, "yy": None, "xx": "x", "ww": {"a": "b"}}), True),
    ("map16 and str16", msgpack.packb({**BASE, "m": {f"k{i}": "v" * 300 for i in range(20)}}), True),
    ("str32", msgpack.packb({**BASE, "k": "x" * 70_000}), True),
    ("repeated field", _pack_map([*BASE.items(), ("b", "second")]), True),
    ("repeated metadata key", _pack_map([*BASE.items(), ("m", RawMap(b"\x82\xa1a\xa11\xa1a\xa12"))]), False),
    ("float time", msgpack.packb({**BASE, "t": 1.5e18}), False),
    ("negative time", msgpack.packb({**BASE, "t": -1_000_000_000}), False),
    ("largest time", msgpack.packb({**BASE, "t": 2**64 - 1, "mt": 2**64 - 1}), True),
    ("bool time", msgpack.packb({**BASE, "t": True}), False),
    ("bool size", msgpack.packb({**BASE, "s": True}), False),
    ("float mtime", msgpack.packb({**BASE, "mt": 2.5}), False),
    ("int op", msgpack.packb({**BASE, "o": 3}), False),
    ("int source", msgpack.packb({**BASE, "src": 3}), False),
    ("bytes bucket", msgpack.packb({**BASE, "b": b"x"}, use_bin_type=True), False),
    ("list key", msgpack.packb({**BASE, "k": ["a"]}), False),
    ("int metadata value", msgpack.packb({**BASE, "m": {"a": 1}}), False),
    ("str metadata", msgpack.packb({**BASE, "m": "abc"}), False),
    ("missing seq", msgpack.packb({k: v for k, v in BASE.items() if k != "q"}), False),
    ("not a map", msgpack.packb(["b", "k"]), False),
    ("int map key", _pack_map([*BASE.items(), (1, "x")]), False),
    ("trailing byte", msgpack.packb(BASE) + b"\x00", False),
    ("torn", msgpack.packb(BASE)[:-1], False),
    ("invalid UTF-8", msgpack.packb({**BASE, "q": "Q"}).replace(b"\xa1Q", b"\xa1\xff"), False),
    ("surrogate", msgpack.packb({**BASE, "q": "QQQ"}).replace(b"\xa3QQQ", b"\xa3\xed\xa0\x80"), False),
    ("overlong", msgpack.packb({**BASE, "q": "QQ"}).replace(b"\xa2QQ", b"\xa2\xc0\x80"), False),
]


@needs_native
@pytest.mark.parametrize(("name", "raw", "handled"), SHAPES, ids=[s[0] for s in SHAPES])
def test_other_shapes_encode_or_fail_as_in_python(name: str, raw: bytes, handled: bool) -> None:
    assert _speedups is not None
    items = [(T0, msgpack.packb(BASE)), (T0 + 1, raw)]
    assert (_speedups.encode_raw_many(items, SCHEMA_VERSION) is not None) is handled
    with_fallback = functools.partial(encode_raw_many_native, _speedups.encode_raw_many)
    assert _outcome(with_fallback, items) == _outcome(_encode_raw_many_py, items)


@needs_native
@pytest.mark.parametrize("recorded", [-1, 2**63, 2**70, MAX_US + 1, True])
def test_recorded_times_outside_the_c_range_go_to_python(recorded: int) -> None:
    assert _speedups is not None
    items = [(recorded, msgpack.packb(BASE))]
    assert _speedups.encode_raw_many(items, SCHEMA_VERSION) is None
    with_fallback = functools.partial(encode_raw_many_native, _speedups.encode_raw_many)
    assert _outcome(with_fallback, items) == _outcome(_encode_raw_many_py, items)


@needs_native
def test_any_iterable_of_pairs_is_taken() -> None:
    items = _items(4, 30)
    expected = _encode_raw_many_py(items)
    assert _speedups is not None
    encode = functools.partial(encode_raw_many_native, _speedups.encode_raw_many)
    assert encode(iter(items)) == expected
    assert encode(tuple(items)) == expected
    assert encode([[t, raw] for t, raw in items]) == expected  # type: ignore[misc]  # lists: handed back
    assert encode([]) == []


@needs_native
def test_threads_encode_at_once() -> None:
    items = _items(2, 1000)
    expected = _encode_raw_many_py(items)
    results: list[list[bytes]] = []

    def run() -> None:
        results.append(_native(items))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


@needs_native
@pytest.mark.parametrize("seed", range(3))
def test_corrupted_values_fail_or_encode_as_in_python(seed: int) -> None:
    """Bytes flipped, cut or inserted anywhere in real values: the C reader never reads past a
    value nor accepts what Python refuses."""
    assert _speedups is not None
    rng = random.Random(seed)
    good = _items(seed, 200)
    with_fallback = functools.partial(encode_raw_many_native, _speedups.encode_raw_many)
    for t, raw in good:
        data = bytearray(raw)
        for _ in range(rng.choice([1, 1, 2, 5])):
            at = rng.randrange(len(data))
            match rng.randrange(3):
                case 0:
                    data[at] = rng.randrange(256)
                case 1:
                    del data[at:]
                case _:
                    data.insert(at, rng.randrange(256))
            if not data:
                break
        items = [(t, bytes(data))]
        assert _outcome(with_fallback, items) == _outcome(_encode_raw_many_py, items)


# --- index entries: the times in the keys ---------------------------------------------------------
# Real Mutations here: the Python way goes through ``encode_raw_many``, which the session's
# record-schema guard (tests/conftest.py) checks line by line.


def _entries(items: Items, fmt: str = "d.{:016x}.{:08d}") -> list[tuple[str, bytes]]:
    return [(fmt.format(t, i), raw) for i, (t, raw) in enumerate(items)]


def _entries_py(entries: list[tuple[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[bytes]] | str:
    with monkeypatch.context() as m:
        m.setattr(logformat, "_NATIVE", None)
        m.setattr(logformat, "_NATIVE_ENTRIES", None)
        try:
            return logformat.encode_index_entries(entries, time_start=2, time_end=18)
        except (InvalidMutation, ValueError) as ex:
            return f"{type(ex).__name__}: {ex}"


def _entries_any(entries: list[tuple[str, bytes]]) -> tuple[list[int], list[bytes]] | str:
    try:
        return logformat.encode_index_entries(entries, time_start=2, time_end=18)
    except (InvalidMutation, ValueError) as ex:
        return f"{type(ex).__name__}: {ex}"


@needs_native
@pytest.mark.parametrize("fmt", ["d.{:016x}.{:08d}", "d.{:016X}.{:08d}", "d.{:016x}"])
def test_index_entries_encode_with_their_times(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _speedups is not None
    items = _mutation_items(11, 300)
    entries = _entries(items, fmt)
    got = _speedups.encode_entries(entries, 2, 18, SCHEMA_VERSION)
    assert got == ([t for t, _ in items], _encode_raw_many_py(items))
    assert _entries_any(entries) == got == _entries_py(entries, monkeypatch)


# Keys the C parser hands back (Python's int() takes some of them, refuses others), and values
# it hands back: the result or the error is Python's.
ODD_KEYS = ["d.0x00000000000001.a", "d.0000_00000000000.a", "d.12", "d. 000000000000001", "d.000000000000zzzz.a",
            "d.", "d.000000000000000\u0661.a"]  # the last: an Arabic-Indic 1, which int() reads


@needs_native
@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_go_the_python_way(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _speedups is not None
    entries = [*_entries(_mutation_items(12, 3)), (key, _mutation_items(12, 1)[0][1])]
    assert _speedups.encode_entries(entries, 2, 18, SCHEMA_VERSION) is None
    assert _entries_any(entries) == _entries_py(entries, monkeypatch)


@needs_native
def test_an_invalid_value_among_entries_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [*_entries(_mutation_items(13, 5)), ("d.0000000000000001.x", b"\xc1")]
    assert _speedups is not None and _speedups.encode_entries(entries, 2, 18, SCHEMA_VERSION) is None
    outcome = _entries_any(entries)
    assert isinstance(outcome, str) and outcome.startswith("InvalidMutation") and outcome == _entries_py(entries, monkeypatch)


@needs_native
@pytest.mark.parametrize(("start", "end"), [(2, 2), (2, 19), (-1, 5)])
def test_the_time_field_is_1_to_16_digits(start: int, end: int) -> None:
    assert _speedups is not None
    with pytest.raises(ValueError):
        _speedups.encode_entries(_entries(_items(14, 2)), start, end, SCHEMA_VERSION)
