"""The bucket index facts of a page in C (changelog/_speedups.c: ``index_facts``, behind
``rgw_module.bucket_index.BucketIndexReader.facts``) against the Python reference,
``bucket_index._facts_py`` (issue 17, catch-up CPU): the same ``{position: ObjectFacts}`` on every
captured page and index state of the three releases, and on generated pages whose index entries
are neighbours of what radosgw writes (another ``ver``, mtime, flags, instance, an empty etag, an
entry that does not exist, a cancelled operation's, a null instance entry no null version made,
truncated and corrupted values), including every case the C code must hand back to Python.

Where the module is not built the C-only tests skip; the Python path runs in every case."""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from rgw_module import bucket_index
from rgw_module.bucket_index import (
    FLAG_VER,
    FLAG_VER_MARKER,
    INSTANCE_PREFIX,
    BucketIndexReader,
    DirEntry,
    ObjectFacts,
    careful_dir_entry,
    instance_key,
    plain_key,
)
from rgw_module.mapping import BilogEntry, BucketShard, position_of
from tests.unit.test_bucket_index import RELEASES, load, states

try:
    from changelog import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(
    _speedups is None or bucket_index._NATIVE_FACTS is None,
    reason="changelog._speedups is not built (no C compiler) or RGW_CHANGELOG_PURE_PYTHON=1",
)

BS = BucketShard("b", "inst.1", 0, 0)
POS1 = position_of("00000000001.1.1")


def both_ways(
    monkeypatch: pytest.MonkeyPatch, bs: BucketShard, page: Sequence[BilogEntry], omap: Mapping[bytes, bytes]
) -> tuple[dict[str, ObjectFacts], dict[str, ObjectFacts] | None]:
    """``facts`` the Python way, and what C alone made of the page (None: handed back)."""

    def read(pool: str, oid: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return {k: omap[k] for k in keys if k in omap}

    reader = BucketIndexReader(read, "pool")
    with monkeypatch.context() as m:
        m.setattr(bucket_index, "_NATIVE_FACTS", None)
        want = reader.facts(bs, page)
    got = reader.facts(bs, page)
    assert got == want, page
    assert [type(v) for v in got.values()] == [ObjectFacts] * len(got)
    wanted = bucket_index.lookups(page)
    alone = None
    if _speedups is not None and wanted:
        alone = _speedups.index_facts(wanted, read("pool", "", [k for w in wanted for k in w.keys]),
                                      bucket_index._FACTS_CONSTS)  # fmt: skip
        if alone is not None:
            assert alone == want, page
    return want, alone


def test_the_python_path_serves_without_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the speedup off (RGW_CHANGELOG_PURE_PYTHON=1 or no build) facts are the reference's."""
    monkeypatch.setattr(bucket_index, "_NATIVE_FACTS", None)
    raw = entry_bytes(fields(name="k", pool=6, epoch=3))
    page = [write("k", 1, (6, 3))]
    assert BucketIndexReader(lambda p, o, k: {plain_key("k"): raw}, "pool").facts(BS, page) == {
        POS1: ObjectFacts(5, "e" * 32, 1_796_524_283_931_073_980, None, "tester")
    }


# -- captured pages ------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("release", RELEASES)
def test_captured_pages_give_the_same_facts_both_ways(release: str, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = load(release)
    pages = by_c = 0
    for case, omaps in zip(doc["cases"], states(doc), strict=True):
        by_shard: dict[BucketShard, list[BilogEntry]] = defaultdict(list)
        for e in case.get("mid_entries", []) + case["entries"]:
            by_shard[BucketShard(case["bucket"], e["bucket_id"], e["shard"], e.get("log_gen", 0))].append(e)
        for bs, page in by_shard.items():
            omap = omaps.get(bucket_index.index_oid(bs), {})
            _, alone = both_ways(monkeypatch, bs, page, omap)
            pages += 1
            by_c += alone is not None
    assert pages >= 15 and by_c >= pages // 2  # C took most captured pages


# -- generated pages -----------------------------------------------------------------------------


def fields(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "k", "instance": "", "exists": True, "pool": 6, "epoch": 3, "index_ver": 1, "size": 5,
        "mtime_ns": 1_796_524_283_931_073_980, "etag": "e" * 32, "owner": "tester", "storage_class": "",
        "accounted_size": 5, "flags": 0, "versioned_epoch": 0,
    }  # fmt: skip
    base.update(kw)
    return base


def _s(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def _packed(v: int) -> bytes:
    return bytes([v]) if 0 <= v < 0x80 else bytes([0x88]) + struct.pack("<Q", v & (2**64 - 1))


def entry_bytes(f: Mapping[str, Any]) -> bytes:
    """An ``rgw_bucket_dir_entry`` (struct v8, meta v7) with the given fields."""
    sec, nsec = divmod(f["mtime_ns"], 1_000_000_000)
    meta = (
        b"\x01" + struct.pack("<QII", f["size"], sec, nsec) + _s(f["etag"].encode()) + _s(f["owner"].encode())
        + _s(b"display") + _s(b"") + struct.pack("<Q", f["accounted_size"]) + _s(b"")
        + _s(f["storage_class"].encode())
    )  # fmt: skip
    ver = _packed(f["pool"]) + _packed(f["epoch"])
    body = (
        _s(f["name"].encode()) + struct.pack("<Q", f["epoch"]) + bytes([int(f["exists"])])
        + b"\x07\x03" + struct.pack("<I", len(meta)) + meta + struct.pack("<I", 0) + _s(b"")
        + b"\x01\x01" + struct.pack("<I", len(ver)) + ver + _packed(f["index_ver"]) + _s(b"tag")
        + _s(f["instance"].encode()) + struct.pack("<H", f["flags"]) + struct.pack("<Q", f["versioned_epoch"])
    )  # fmt: skip
    return b"\x08\x03" + struct.pack("<I", len(body)) + body


def test_the_encoder_writes_what_the_careful_reader_reads() -> None:
    f = fields(instance="v1", pool=-1, epoch=0, flags=FLAG_VER | FLAG_VER_MARKER, storage_class="COLD")
    d = careful_dir_entry(entry_bytes(f))
    assert d == DirEntry("k", "v1", True, -1, 0, 1, 5, f["mtime_ns"], "e" * 32, "COLD", 5, 9, 0, 8, "tester")


def write(key: str, i: int, ver: tuple[int, int] | None, *, instance: str = "", op: str = "write",
          versioned: bool = False, timestamp: str = "2026-12-07T19:00:00.123456789Z") -> BilogEntry:  # fmt: skip
    e: dict[str, Any] = {
        "op_id": f"00000000001.{i}.1", "op": op, "object": key, "instance": instance, "state": "complete",
        "timestamp": timestamp, "versioned": versioned, "bilog_flags": 0,
    }  # fmt: skip
    if ver is not None:
        e["ver"] = {"pool": ver[0], "epoch": ver[1]}
    return e  # type: ignore[return-value]


def odd_value(rng: random.Random, raw: bytes) -> bytes:
    """A truncated, corrupted or foreign value (C hands most of these back)."""
    r = rng.random()
    if r < 0.3:
        return raw[: rng.randrange(len(raw))]
    if r < 0.8:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))


def generated_page(rng: random.Random) -> tuple[list[BilogEntry], dict[bytes, bytes]]:
    page: list[BilogEntry] = []
    omap: dict[bytes, bytes] = {}
    keys = [f"obj{j}" for j in range(rng.randint(1, 6))] + ["d\u00fcr/\u65e5"]
    for i in range(1, rng.randint(1, 30)):
        key = rng.choice(keys)
        ver = (rng.choice([6, 7, -1]), rng.choice([0, 3, 4, 2**40]))
        kind = rng.random()
        instance = rng.choice(["", "", "", "v1", "null"])
        if kind < 0.1:
            page.append(write(key, i, ver, instance=instance, op="link_olh",
                              timestamp=rng.choice(["2026-12-07T19:00:00.123456789Z", "0.000000", "x"])))  # fmt: skip
        elif kind < 0.2:
            page.append(write(key, i, ver, instance=instance, versioned=True))
        else:
            page.append(write(key, i, ver if rng.random() < 0.95 else None, instance=instance))
        # The index entries under the write's keys: its own, another write's, or odd ones.
        for k in (plain_key(key), instance_key(key, instance)):
            if rng.random() < 0.3:
                continue
            f = fields(
                name=key,
                instance=rng.choice([instance, instance, "", "v2"]),
                exists=rng.random() < 0.9,
                pool=ver[0] if rng.random() < 0.7 else rng.choice([-1, 6, 9]),
                epoch=ver[1] if rng.random() < 0.7 else rng.choice([0, 3, 5]),
                mtime_ns=rng.choice([1_796_524_283_931_073_980, 1_796_524_800_123_456_789, 999_999_999, 1_000_000_000, 1]),
                etag=rng.choice(["e" * 32, "e" * 32, "", "\u00e9t"]),
                owner=rng.choice(["tester", "", "\u00fc"]),
                storage_class=rng.choice(["", "", "COLD", "STANDARD"]),
                accounted_size=rng.choice([5, 0, 2**63]),
                flags=rng.choice([0, 0, FLAG_VER, FLAG_VER | 2, FLAG_VER_MARKER, FLAG_VER_MARKER | FLAG_VER]),
            )
            raw = entry_bytes(f)
            omap[k] = odd_value(rng, raw) if rng.random() < 0.05 else raw
    return page, omap


@needs_native
def test_generated_pages_give_the_same_facts_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(17)
    by_c = handed_back = facts = 0
    for _ in range(3_000):
        page, omap = generated_page(rng)
        want, alone = both_ways(monkeypatch, BS, page, omap)
        facts += len(want)
        if alone is None:
            handed_back += 1
        else:
            by_c += 1
    assert by_c >= 1_000 and handed_back >= 300 and facts >= 3_000  # both sides of C's line exercised


@needs_native
def test_every_case_c_hands_back_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """One page per case C leaves to Python: each gives the reference's facts."""
    page = [write("k", 1, (6, 3))]
    good = entry_bytes(fields())
    cases: dict[str, dict[bytes, Any]] = {
        "truncated": {plain_key("k"): good[:-3]},
        "too old a struct": {plain_key("k"): b"\x02\x02" + good[2:]},
        "cancelled": {plain_key("k"): entry_bytes(fields(pool=-1, epoch=0))},
    }
    for why, omap in cases.items():
        want, alone = both_ways(monkeypatch, BS, page, omap)
        assert alone is None, why
    # A write of no object version: the null instance entry, without FLAG_VER, holds its ver.
    no_write = {instance_key("k", ""): entry_bytes(fields(flags=0))}
    want, alone = both_ways(monkeypatch, BS, page, no_write)
    assert alone is None and want == {POS1: bucket_index.NO_WRITE}
    # A value that is not bytes, values that are not a dict: Python.
    wanted = bucket_index.lookups(page)
    assert _speedups.index_facts(wanted, {plain_key("k"): bytearray(good)}, bucket_index._FACTS_CONSTS) is None  # type: ignore[dict-item]
    assert _speedups.index_facts(tuple(wanted), {plain_key("k"): good}, bucket_index._FACTS_CONSTS) is None  # type: ignore[arg-type]
    assert _speedups.index_facts(wanted, {plain_key("k"): good}, (ObjectFacts, INSTANCE_PREFIX, 10)) is None
    assert _speedups.index_facts(wanted, {plain_key("k"): good}, bucket_index._FACTS_CONSTS) == {
        POS1: ObjectFacts(5, "e" * 32, 1_796_524_283_931_073_980, None, "tester")
    }
