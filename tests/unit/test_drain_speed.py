"""The drain's encoder pinned byte for byte (issue 17): any faster ``encode_raw_many`` (a native
one, or a reworked Python loop) must produce exactly the lines of the reference below, a frozen
copy of the encoder as of 2026-12-06, on varied records and whatever the page boundaries. A log
object must be rebuildable byte for byte (docs/design.md §6), so this is a contract, not a
snapshot to refresh."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable

import msgpack
import orjson
import pytest

from changelog.errors import InvalidMutation
from changelog.pipeline.logformat import SCHEMA_VERSION, encode_raw_many
from changelog.pipeline.mutation import Mutation, Op

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


@pytest.mark.parametrize("seed", range(4))
def test_encode_raw_many_equals_the_reference(seed: int) -> None:
    items = _items(seed, 600)
    assert encode_raw_many(items) == [_ref_line(t, raw) for t, raw in items]


def test_lines_do_not_depend_on_the_page_boundaries() -> None:
    items = _items(7, 900)
    whole = b"".join(encode_raw_many(items))
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(items)), 40))
    pages: Iterable[list[tuple[int, bytes]]] = (items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True))
    assert b"".join(line for page in pages for line in encode_raw_many(page)) == whole


def test_an_undecodable_entry_is_refused_not_skipped() -> None:
    items = _items(3, 20)
    for bad in (b"\xc1garbage", b"\x80", msgpack.packb({"b": "x"}), items[0][1] + b"\x00"):
        with pytest.raises(InvalidMutation):
            encode_raw_many([*items[:10], (T0, bad), *items[10:]])
