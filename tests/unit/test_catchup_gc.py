"""A bilog page's entries and its records taken out of the cyclic GC's lists
(``_speedups.untrack_plain``, called by ``rgw_module.bilog_reader``; issue 17, catch-up CPU): what
is untracked (JSON values of every captured release, the records mapped from them) and what is
left to the collector (anything that could be part of a cycle).

Where the module is not built the tests skip: nothing is untracked then."""

from __future__ import annotations

import copy
import gc
import weakref
from typing import Any

import orjson
import pytest

from changelog.pipeline.mutation import Mutation, Op
from rgw_module import bilog_reader
from rgw_module.mapping import ShardMapper
from tests.unit.test_mapping_speed import CAPTURED, SHARDS

try:
    from changelog import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    _speedups is None or bilog_reader._UNTRACK is None,
    reason="changelog._speedups is not built (no C compiler) or RGW_CHANGELOG_PURE_PYTHON=1",
)


def untrack(objs: list[Any]) -> int:
    return _speedups.untrack_plain(objs, Mutation, Op)


def fresh(entries: list[Any]) -> list[Any]:
    """The entries as the admin API's JSON decoding gives them (new, tracked dicts)."""
    return list(orjson.loads(orjson.dumps(entries)))


def test_every_captured_entry_and_its_record_is_untracked_and_unchanged() -> None:
    records = 0
    for release, entries in CAPTURED.items():
        page = fresh(entries)
        before = copy.deepcopy(page)
        assert all(gc.is_tracked(e) for e in page if any(isinstance(v, dict) for v in e.values()))
        assert untrack(page) >= len(page) // 2
        assert not any(gc.is_tracked(e) for e in page), release
        assert page == before
        for bs in SHARDS[:3]:
            mapped = [m for m in ShardMapper(bs, 1).map_page(page, observed_ns=5) if m is not None]
            want = [copy.copy(m) for m in mapped]
            untrack(mapped)
            assert not any(gc.is_tracked(m) for m in mapped) and mapped == want
            records += len(mapped)
    assert records >= 100


def test_what_could_be_in_a_cycle_stays_tracked() -> None:
    cases: list[Any] = [
        {"a": [1]},  # a list
        {"a": {"b": {}}},  # a dict two levels down
        {"a": {"b": [2]}},
        {"a": type("O", (), {})()},  # an object
        [{"op": "write"}],  # not a dict nor a record
    ]
    assert untrack(cases) == 0 and all(gc.is_tracked(c) for c in cases)
    other = type("Other", (), {})()
    m = Mutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q")
    nested = Mutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=1, source="s", position="p", seq="q")
    object.__setattr__(nested, "metadata", {"a": ["c"]})  # (refused by the constructor; a record's slot)
    assert untrack([other, nested, m]) == 1
    assert gc.is_tracked(other) and gc.is_tracked(nested) and not gc.is_tracked(m)
    assert untrack((m,)) == 0  # type: ignore[arg-type]  # a list only


def test_an_untracked_entry_given_a_container_is_tracked_again_and_collected() -> None:
    """A dict tracks itself again when a container goes in (CPython's dicts): a cycle made
    through an untracked entry later is still found by the collector."""
    (entry,) = fresh([{"op": "write", "ver": {"pool": 6, "epoch": 1}}])
    assert untrack([entry]) == 1 and not gc.is_tracked(entry)

    class Holder:
        pass

    h = Holder()
    entry["holder"] = h
    h.entry = entry  # type: ignore[attr-defined]
    assert gc.is_tracked(entry)
    gone = weakref.ref(h)
    del h, entry
    gc.collect()
    assert gone() is None
