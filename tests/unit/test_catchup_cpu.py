"""The follower's page mapping in C (changelog/_speedups.c: ``map_bilog_page``, behind
``rgw_module.mapping.ShardMapper.map_page``) against the Python reference, ``ShardMapper.map``
entry by entry (issue 17, catch-up CPU): the same records (exact ``Mutation`` objects, field for
field) or the same first error, type and message, on every captured bilog entry of the three
releases and on generated pages whose entries, times, entry ids, versions, flags and facts are
neighbours of what radosgw writes, and of what the C code must hand back to Python.

Where the module is not built the C-only tests skip; the Python path runs in every case."""

from __future__ import annotations

import random
import struct
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from changelog.pipeline.index import _prepare_py
from changelog.pipeline.mutation import MAX_MTIME_NS, Mutation, Op
from rgw_module import bucket_index, mapping
from rgw_module.bucket_index import DirEntry, ObjectFacts, careful_dir_entry, decode_dir_entry
from rgw_module.mapping import BilogEntry, BucketShard, Facts, ShardMapper, parse_time_ns
from tests.unit.test_bucket_index import RELEASES as INDEX_RELEASES
from tests.unit.test_bucket_index import case_values
from tests.unit.test_bucket_index import load as load_index
from tests.unit.test_mapping_speed import CAPTURED, SHARDS, _varied, mixed_text, outcome, timestamps

try:
    from changelog import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(
    _speedups is None or mapping._NATIVE_MAP is None,
    reason="changelog._speedups is not built (no C compiler) or RGW_CHANGELOG_PURE_PYTHON=1",
)

POOL: list[BilogEntry] = [e for entries in CAPTURED.values() for e in entries]
OBSERVED = [5, 0, -3, 1_765_000_000_000_000_000, MAX_MTIME_NS, MAX_MTIME_NS + 1]


class StrSub(str):
    """A str subclass: C takes only exact strs and hands it back."""


def reference(
    bs: BucketShard, gen: int, page: list[BilogEntry], observed_ns: int, facts: Mapping[str, Facts] | None
) -> tuple[str, object, str]:
    """``map`` entry by entry, with one mapper for the page (what ``map_page`` must equal)."""
    mapper = ShardMapper(bs, gen)
    return outcome(lambda: [mapper.map(e, observed_ns=observed_ns, facts=facts) for e in page])


def paged(
    bs: BucketShard, gen: int, page: list[BilogEntry], observed_ns: int, facts: Mapping[str, Facts] | None
) -> tuple[str, object, str]:
    return outcome(lambda: ShardMapper(bs, gen).map_page(page, observed_ns=observed_ns, facts=facts))


def assert_same(
    bs: BucketShard, gen: int, page: list[BilogEntry], observed_ns: int, facts: Mapping[str, Facts] | None
) -> tuple[str, object, str]:
    want = reference(bs, gen, page, observed_ns, facts)
    got = paged(bs, gen, page, observed_ns, facts)
    assert got == want, (bs, gen, observed_ns, page, facts)
    if got[0] == "ok":
        assert isinstance(got[1], list)
        for m in got[1]:
            assert m is None or type(m) is Mutation
    return got


def odd_fact(rng: random.Random) -> Any:
    """ObjectFacts as the index gives them, and values the Mutation's checks refuse or C hands back."""
    size: Any = rng.choice([0, 64, 2**64 - 1, rng.randrange(10**12)] * 4 + [-1, 2**64, 1.5, True, None, "5"])
    etag: Any = rng.choice(["d41d8cd98f00b204e9800998ecf8427e", "", "\u00e9tag"] * 4 + [StrSub("x"), 5, None])
    mtime: Any = rng.choice([0, 1_765_000_000_123_456_789, MAX_MTIME_NS] * 4 + [-1, MAX_MTIME_NS + 1, 2.0])
    klass: Any = rng.choice([None, "", "COLD", "STANDARD"] * 4 + [StrSub("COLD"), 0, 7, "\u00e9"])
    if rng.random() < 0.05:
        return types.SimpleNamespace(size=size, etag=etag)  # no mtime_ns: AttributeError both ways
    return ObjectFacts(size, etag, mtime, klass, rng.choice(["", "owner"]))


def facts_for(rng: random.Random, bs: BucketShard, gen: int, page: list[BilogEntry]) -> dict[str, Any]:
    """Facts for about 70% of the page's records (by the position the Python path gives them)."""
    out: dict[str, Any] = {}
    for e in page:
        got = outcome(lambda: ShardMapper(bs, gen).map(e, observed_ns=5))  # noqa: B023
        if got[0] == "ok" and got[1] is not None and rng.random() < 0.7:
            assert isinstance(got[1], Mutation)
            out[got[1].position] = odd_fact(rng)
    return out


def odd_entry(rng: random.Random, times: Iterator[str]) -> BilogEntry:
    """A captured entry with more of its fields replaced than ``_varied`` does: the ones C reads."""
    e: dict[str, object] = dict(_varied(rng, rng.choice(POOL), times))
    if rng.random() < 0.1:
        e["versioned"] = rng.choice([True, False, "true", "True", "false", 1, None])
    if rng.random() < 0.1:
        e.pop("versioned", None)
        e["bilog_flags"] = rng.choice([0, 1, 3, "1", "x", 2**70, -1, True, None, 1.0])
    if rng.random() < 0.1:
        e["op_id"] = rng.choice(
            [
                "7#00000000012.345.6",
                "12.345.6",
                "#1.2.3",
                "a#b#1.2.3",
                "1#" + "9" * 20 + "." + "9" * 20 + "." + "9" * 10,
                "1#" + "9" * 21 + ".1.1",
                "1#1.1." + "1" * 11,
                "1#1..1",
                "1#1.1.1.",
                "\u00e9#1.2.3",
                "1#\u0663.2.3",
                StrSub("1#1.2.3"),
                17,
                None,
            ]
        )
    if rng.random() < 0.1:
        e["object"] = rng.choice(
            [
                "a",
                "k" * 1024,
                "k" * 1025,
                "__",
                "__x",
                "_x",
                "",
                StrSub("obj"),
                5,
                None,
                mixed_text(rng, 8),
                "caf\u00e9",
            ]
        )
    if rng.random() < 0.1:
        e["instance"] = rng.choice(["", "null", "v1", None, False, 0, StrSub("v"), "\u00e9", "\ud800", 3])
    if rng.random() < 0.05:
        e["state"] = rng.choice(["complete", "pending", StrSub("complete"), None, 1])
    if rng.random() < 0.05:
        e["op"] = rng.choice(
            ["write", "del", "link_olh", "link_olh_del", "unlink_instance", "cancel", None, 3]
        )
    if rng.random() < 0.03:
        for field in ("op", "object", "timestamp", "op_id", "state"):
            if rng.random() < 0.3:
                e.pop(field, None)
    return e  # type: ignore[return-value]


def plain_entry(rng: random.Random) -> BilogEntry:
    """A captured entry, or a PUT's entry of the catch-up's shape."""
    if rng.random() < 0.5:
        return rng.choice(POOL)
    return write_entry(
        rng.randrange(1, 999),
        f"2026-12-07T02:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(10**9):09d}Z",
    )


def test_captured_pages_map_the_same_both_ways() -> None:
    rng = random.Random(170)
    mapped = 0
    for bs in SHARDS:
        for gen in (0, 1, 123456):
            for entries in CAPTURED.values():
                page = list(entries)
                for observed in OBSERVED:
                    got = assert_same(bs, gen, page, observed, None)
                    if got[0] == "ok":
                        mapped += sum(m is not None for m in got[1])  # type: ignore[union-attr]
                assert_same(bs, gen, page, 5, facts_for(rng, bs, gen, page))
    assert mapped >= 1_000  # the comparison covered real records


def test_generated_pages_map_the_same_both_ways() -> None:
    rng = random.Random(2027)
    times = timestamps(rng, 10**9)
    bad = ok = records = 0
    for _ in range(2_500):
        bs = rng.choice(SHARDS[:4]) if rng.random() < 0.9 else rng.choice(SHARDS)
        gen = rng.choice([0, 1, 42])
        odd = rng.choice([0.02, 0.1, 0.5])
        page = [
            odd_entry(rng, times) if rng.random() < odd else plain_entry(rng)
            for _ in range(rng.randint(1, 40))
        ]
        facts: Mapping[str, Any] | None = facts_for(rng, bs, gen, page) if rng.random() < 0.6 else None
        if facts is not None and rng.random() < 0.1:
            facts = types.MappingProxyType(dict(facts))  # not a dict: Python reads every entry
        got = assert_same(bs, gen, page, rng.choice(OBSERVED), facts)
        ok += got[0] == "ok"
        bad += got[0] != "ok"
        records += sum(m is not None for m in got[1]) if got[0] == "ok" else 0  # type: ignore[union-attr]
    assert ok >= 500 and bad >= 100 and records >= 5_000  # both outcomes were compared


def write_entry(i: int, timestamp: str, *, op: str = "write", instance: str = "") -> BilogEntry:
    """A bilog entry as Pacific writes a PUT's."""
    return {
        "op_id": f"3#00000000{i:03d}.{i + 1000}.6",
        "op": op,
        "object": f"obj/{i:08d}",
        "instance": instance,
        "state": "complete",
        "timestamp": timestamp,
        "ver": {"pool": 6, "epoch": i + 1},
        "bilog_flags": 0,
        "versioned": False,
        "owner": "",
    }


def test_every_generated_time_is_parse_time_ns_or_handed_back() -> None:
    """A write's record time is ``parse_time_ns`` of its entry's timestamp, both ways, for
    valid times of every year C takes (1970-2261) and their neighbours."""
    rng = random.Random(9)
    times = list(zip(range(20_000), timestamps(rng, 20_000), strict=False))
    times += [(i, t) for i, t in enumerate([
        "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999999Z", "2261-12-31T23:59:59.999999999Z",
        "2262-01-01T00:00:00Z", "2024-02-29T12:00:00.5Z", "2023-02-29T12:00:00Z", "2000-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2026-12-07T02:20:11.1234567891234Z",
        "2026-12-07T02:20:11.Z", "2026-12-07T02:20:11.", "2026-12-07T02:20:11Z", "2026-12-07T02:20:11",
        "2026-12-07T02:20:11ZZ", "2026-12-07T02:20:11.5", "2026-12-07T24:00:00Z", "2026-12-07T23:60:00Z",
        "2026-12-07T23:59:60Z", "2026-00-07T00:00:00Z", "2026-12-00T00:00:00Z", "2026-04-31T00:00:00Z",
    ])]  # fmt: skip
    good = write_entry(999, "2026-12-07T02:20:11.5Z")
    taken = 0
    for i, t in times:  # each after a plain first record: C maps it (or hands it back)
        page = [good, write_entry(i, t)]
        got = assert_same(SHARDS[0], 1, page, 5, None)
        if got[0] == "ok":
            m = got[1][1]  # type: ignore[index]
            # A time that parses to 0 (none set, or unreadable) is stamped when seen (5).
            assert m is not None and m.mtime_ns == (parse_time_ns(t) or 5)
            taken += 1
    assert taken >= 5_000


@needs_native
def test_plain_pages_are_mapped_in_c_and_give_the_same_stored_records() -> None:
    """C takes the plain entries of every op (none handed back) and its records store the same
    bytes as the Python path's (``record_many``'s first pass over both)."""
    bs = SHARDS[0]
    ops = ["write", "del", "link_olh", "link_olh_del", "unlink_instance"]
    page = [
        write_entry(
            i, f"2026-12-07T02:20:{i % 60:02d}.{i:09d}Z", op=ops[i % 5], instance=["", "v1", "null"][i % 3]
        )
        for i in range(1, 600)
    ]
    mapper = ShardMapper(bs, 3)
    first = mapper.map(page[0], observed_ns=5)
    assert first is not None and mapper._shared is not None
    facts = {m.position: ObjectFacts(i, f"etag{i}", i * 7, [None, "COLD"][i % 2], "") for i, m in enumerate(
        ShardMapper(bs, 3).map(e, observed_ns=5) for e in page) if m is not None and i % 3}  # fmt: skip
    native: Callable[..., list[object] | None] = _speedups.map_bilog_page
    for f in (None, facts):
        got = native(page, 1, f, 5, mapper._shared, mapping._MAP_OPS, Mutation)
        assert got is not None and ... not in got
        want = [ShardMapper(bs, 3).map(e, observed_ns=5, facts=f) for e in page[1:]]
        assert got == want
        records = [m for m in got if isinstance(m, Mutation)]
        assert len(records) == len(page) - 1
        assert _prepare_py(records, 16) == _prepare_py([m for m in want if m is not None], 16)
        assert sum(m.op is Op.DELETE_MARKER for m in records) > 0


@needs_native
def test_the_python_fallback_maps_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """``map_page`` with C turned off (as where it is not built) equals ``map_page`` with it."""
    rng = random.Random(4)
    times = timestamps(rng, 10**9)
    pages = [[odd_entry(rng, times) for _ in range(30)] for _ in range(200)] + [
        list(e) for e in CAPTURED.values()
    ]
    with_c = [paged(SHARDS[0], 1, p, 5, None) for p in pages]
    monkeypatch.setattr(mapping, "_NATIVE_MAP", None)
    assert [paged(SHARDS[0], 1, p, 5, None) for p in pages] == with_c


# -- bucket index entries: ``_speedups.dir_entry`` against ``_fast_dir_entry`` --------------------


def fast_py(data: bytes) -> object:
    """``_fast_dir_entry``'s outcome, a failure of any kind being None (the careful reader's turn)."""
    try:
        return bucket_index._fast_dir_entry(data)
    except (struct.error, ValueError, IndexError):
        return None


def same_dir_entry(data: bytes) -> bool:
    """C gives ``_fast_dir_entry``'s fields, or None (the careful reader then decides; where the
    Python pass reads an entry, the careful reader reads the same, tests/unit/test_bucket_index.py).
    True when C read the entry itself."""
    got = _speedups.dir_entry(data)
    want = fast_py(data)
    if got is None:
        assert want is None or want == careful_dir_entry(data), data
        return False
    assert want is not None and DirEntry._make(got) == want, data
    assert [type(x) for x in got] == [type(x) for x in want], data
    return True


@needs_native
def test_c_reads_every_captured_index_entry_as_the_python_pass() -> None:
    raws = [
        raw
        for release in INDEX_RELEASES
        for case in load_index(release)["cases"]
        for _, _, raw in case_values(case)
    ]
    assert len(raws) >= 60 and all(same_dir_entry(raw) for raw in raws)


@needs_native
def test_c_agrees_with_the_python_pass_on_every_truncation_and_corruption() -> None:
    rng = random.Random(23)
    raws = [
        raw
        for release in INDEX_RELEASES
        for case in load_index(release)["cases"]
        for _, _, raw in case_values(case)
    ]
    read = 0
    for raw in raws:
        for n in range(len(raw)):
            same_dir_entry(raw[:n])
        extra = b"future fields"
        body = raw[6:] + extra
        read += same_dir_entry(bytes([9, raw[1]]) + struct.pack("<I", len(body)) + body)
    for _ in range(30_000):
        data = bytearray(rng.choice(raws))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        read += same_dir_entry(bytes(data))
    for _ in range(3_000):
        same_dir_entry(bytes(rng.randrange(256) for _ in range(rng.randint(0, 60))))
    assert read >= 3_000  # corrupted values C still read as entries (a flipped size or etag byte)
    assert _speedups.dir_entry(bytearray(raws[0])) is ...  # not bytes: Python's pass decides
    assert decode_dir_entry(bytearray(raws[0])) == decode_dir_entry(raws[0])  # type: ignore[arg-type]


# -- bucket index lookups: ``_speedups.index_lookups`` against ``_lookups_py`` --------------------


def lookup_entry(rng: random.Random, times: Iterator[str]) -> BilogEntry:
    """An entry as ``odd_entry`` makes them, with ``ver`` fields C reads or hands back too."""
    e: dict[str, object] = dict(odd_entry(rng, times) if rng.random() < 0.03 else plain_entry(rng))
    if rng.random() < 0.02:
        e["ver"] = rng.choice(
            [
                {"pool": 6, "epoch": 3},
                {"pool": -1, "epoch": 9},
                {"epoch": 2},
                {"pool": 6},
                {},
                {"pool": "6", "epoch": 1},
                {"pool": 6, "epoch": None},
                {"pool": True, "epoch": 1},
                {"pool": 2**70, "epoch": 1},
                {"pool": 1.5, "epoch": 1},
                [6, 1],
                None,
                "6:1",
            ]
        )
    if rng.random() < 0.1:
        e["op"] = rng.choice(["write", "link_olh"])
        e["versioned"] = rng.choice([True, False])
    return e  # type: ignore[return-value]


@needs_native
def test_c_lookups_equal_the_python_ones() -> None:
    rng = random.Random(31)
    times = timestamps(rng, 10**9)
    pages = [list(e) for e in CAPTURED.values()]
    pages += [[lookup_entry(rng, times) for _ in range(rng.randint(1, 40))] for _ in range(4_000)]
    by_c = 0
    for page in pages:
        want = outcome(lambda: bucket_index._lookups_py(page))  # noqa: B023
        assert outcome(lambda: bucket_index.lookups(page)) == want, page  # noqa: B023
        got = _speedups.index_lookups(page, bucket_index.Lookup, bucket_index._LOOKUP_CONSTS)
        if got is not None:
            assert ("ok", got, "") == want, page
            assert all(type(w) is bucket_index.Lookup for w in got)
            by_c += len(got)
    assert by_c >= 5_000  # C made most of the lookups compared
    plain = [write_entry(i, "2026-12-07T02:20:11.5Z") for i in range(1, 500)]
    assert _speedups.index_lookups(plain, bucket_index.Lookup, bucket_index._LOOKUP_CONSTS) == (
        bucket_index._lookups_py(plain)
    )
    assert bucket_index.lookups(tuple(plain)) == bucket_index._lookups_py(plain)  # not a list: Python
