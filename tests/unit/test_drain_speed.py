"""The drain's encoder pinned byte for byte (issue 17): any faster ``encode_raw_many`` (a native
one, or a reworked Python loop) must produce exactly the lines of the reference below, a frozen
copy of the encoder as of 2026-12-06, on varied records and whatever the page boundaries. A log
object must be rebuildable byte for byte (docs/design.md §6), so this is a contract, not a
snapshot to refresh.

Every test runs against both encoders: the Python one and the C one (changelog/_speedups.c),
which must handle these records itself, never by handing them back to Python. The C case is
skipped only where the module is not built; tests/unit/test_speedups.py fails when
``RGW_CHANGELOG_REQUIRE_NATIVE=1`` (CI) and it is missing."""

from __future__ import annotations

import functools
import hashlib
import random
import time
from collections.abc import Callable, Iterable

import msgpack
import orjson
import pytest

from changelog.errors import InvalidMutation
from changelog.pipeline.logformat import SCHEMA_VERSION, _encode_raw_many_py, encode_raw_many_native
from changelog.pipeline.mutation import Mutation, Op

try:
    from changelog import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

Encode = Callable[[list[tuple[int, bytes]]], list[bytes]]

T0 = 1_795_300_000_123_456  # 2026-11-21T22:26:40.123456Z


# --- the reference: the encoder as it was, written for clarity, not speed -------------------


def _ref_time(t_us: int) -> str:
    sec, us = divmod(t_us, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{us:06d}Z"


def _ref_line(time_us: int, raw: bytes) -> bytes:
    d = msgpack.unpackb(raw, raw=False)
    mt = d.get("mt")
    doc: dict[str, object] = {
        "v": SCHEMA_VERSION,
        "id": hashlib.blake2b(f"{d['src']}\n{d['p']}".encode(), digest_size=16).hexdigest(),
        "time": _ref_time(d["t"] // 1000),
        "op": d["o"],
        "tenant": d.get("tn"),
        "bucket": d["b"],
        "key": d["k"] or None,
        "version_id": d.get("v"),
        "size": d.get("s"),
        "etag": d.get("e"),
        "mtime": None if mt is None else _ref_time(mt // 1000),
        "storage_class": d.get("sc"),
        "seq": d["q"],
        "baseline": bool(d.get("bl", False)),
        "recorded": _ref_time(time_us),
    }
    if d.get("m"):
        doc["metadata"] = dict(sorted(d["m"].items()))
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


# --- varied records ---------------------------------------------------------------------------

# Strings that exercise JSON escaping: quotes, backslashes, every control character, DEL,
# non-ASCII of 2, 3 and 4 UTF-8 bytes, U+2028 (not escaped by orjson), '/' (not escaped).
NASTY = ['"', "\\", "".join(map(chr, range(32))), "\x7f", "ü", "ключ", "中文", "🙂", "\u2028", "a/b", " "]


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(NASTY) if rng.random() < 0.3 else rng.choice("abcxyz019._-") for _ in range(n))


def _mutation(rng: random.Random, i: int) -> Mutation:
    op = rng.choice(list(Op))
    writes = op is Op.WRITE
    return Mutation(
        bucket=rng.choice(["photos", "b-1", "x" * 63]),
        key="" if op.of_bucket else rng.choice([f"a/{i}.jpg", _text(rng, rng.randrange(1, 40)), "k" * 1024]),
        op=op,
        mtime_ns=rng.randrange(0, 2**62),
        source=rng.choice(["rgw:photos:abc.1:0", f"rgw:b-1:z.{i % 7}:{i % 11}"]),
        position=f"{i:020d}",
        seq=rng.choice([f"{i:016x}", f"{i:020d}"]),
        tenant=rng.choice(["", "t_1", "tenant"]),
        version_id=None if op.of_bucket else rng.choice([None, f"v{i}", "ABCdef-_.123"]),
        size=rng.choice([None, 0, i, 2**53]) if writes else None,
        etag=rng.choice([None, "d41d8cd98f00b204e9800998ecf8427e", "abc-12"]) if writes else None,
        obj_mtime_ns=rng.choice([None, rng.randrange(0, 2**62)]) if writes else None,
        storage_class=rng.choice([None, "STANDARD", "COLD"]) if writes else None,
        baseline=rng.random() < 0.3,
        metadata={} if op.of_bucket else rng.choice([{}, {"z": "1", "a": "ü", "m": _text(rng, 5)}, {"only": ""}]),
    )


def _items(seed: int, n: int) -> list[tuple[int, bytes]]:
    """``n`` (recorded time, stored value) pairs, times mostly rising within a second, with
    jumps across seconds, days and years (the encoder caches the formatted second)."""
    rng = random.Random(seed)
    t = T0
    out = []
    for i in range(n):
        t += rng.choice([1, 7, 999_999, 86_400_000_000, 0]) if rng.random() < 0.9 else rng.randrange(0, 2**55) - t
        out.append((t, _mutation(rng, i).encode()))
    return out


def _native_only(items: list[tuple[int, bytes]]) -> list[bytes]:
    """The C encoder alone: a record it handed back to Python would pass by Python's output."""
    assert _speedups is not None
    lines = _speedups.encode_raw_many(items, SCHEMA_VERSION)
    assert lines is not None, "the C encoder handed a batch of ordinary records back to Python"
    return lines


@pytest.fixture(params=["python", "native"])
def encoder(request: pytest.FixtureRequest) -> Encode:
    if request.param == "python":
        return _encode_raw_many_py
    if _speedups is None:
        pytest.skip("changelog._speedups is not built (no C compiler at install time)")
    return _native_only


@pytest.mark.parametrize("seed", range(4))
def test_encode_raw_many_equals_the_reference(encoder: Encode, seed: int) -> None:
    items = _items(seed, 600)
    assert encoder(items) == [_ref_line(t, raw) for t, raw in items]


def test_lines_do_not_depend_on_the_page_boundaries(encoder: Encode) -> None:
    items = _items(7, 900)
    whole = b"".join(encoder(items))
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(items)), 40))
    pages: Iterable[list[tuple[int, bytes]]] = (items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True))
    assert b"".join(line for page in pages for line in encoder(page)) == whole


@pytest.mark.parametrize("impl", ["python", "native"])
def test_an_undecodable_entry_is_refused_not_skipped(impl: str) -> None:
    items = _items(3, 20)
    if impl == "python":
        encode: Encode = _encode_raw_many_py
    elif _speedups is None:
        pytest.skip("changelog._speedups is not built (no C compiler at install time)")
    else:
        encode = functools.partial(encode_raw_many_native, _speedups.encode_raw_many)
    for bad in (b"\xc1garbage", b"\x80", msgpack.packb({"b": "x"}), items[0][1] + b"\x00"):
        batch = [*items[:10], (T0, bad), *items[10:]]
        if _speedups is not None:
            # The C encoder refuses nothing itself: it hands the batch back, and the Python
            # encoder raises the one error with its one message.
            assert _speedups.encode_raw_many(batch, SCHEMA_VERSION) is None
        with pytest.raises(InvalidMutation):
            encode(batch)
