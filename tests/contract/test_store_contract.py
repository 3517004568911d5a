"""The ObjectStore contract, run unchanged on the embedded sqlite store and on RADOS.

Every behaviour the index, the leases and the collector rely on is pinned here, with the RADOS
answer as the reference (see ``changelog.pipeline.store``): ordering and paging, atomic guarded ops, the
comparison semantics of omap_cmp (absent key = empty value), fencing, cls_lock exclusivity
between processes, expiry, renew and takeover.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from changelog.errors import (
    ChangelogError,
    CompareFailed,
    LeaseLost,
    LockBusy,
    ObjectMissing,
    PermanentError,
    TransientError,
)
from changelog.pipeline.store import Cmp, LockInfo, LockRef, ObjectStore, WriteOp, omap_iter

StoreFactory = Callable[[], ObjectStore]
OID = "obj"
LOCK = "drain"


def put(store: ObjectStore, oid: str, pairs: dict[str, bytes]) -> None:
    store.execute(oid, WriteOp(set=pairs))


def everything(store: ObjectStore, oid: str = OID) -> dict[str, bytes]:
    return dict(omap_iter(store, oid, page=7))


# -- the other holder: a separate process with its own store (RADOS: its own client) --------


def _peer_main(factory: StoreFactory, conn: Connection) -> None:
    store = factory()
    try:
        while True:
            request = conn.recv()
            if request is None:
                return
            method, args, kwargs = request
            try:
                if method == "fenced_set":
                    oid, ref, key = args
                    store.execute(oid, WriteOp(fence=ref, set={key: b"peer"}))
                    result: Any = None
                else:
                    result = getattr(store, method)(*args, **kwargs)
            except ChangelogError as ex:
                conn.send(("error", type(ex).__name__, str(ex)))
            else:
                conn.send(("ok", result, ""))
    finally:
        store.close()


class Peer:
    """Calls store methods in the peer process; returns the result, or the error's class name."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.conn.send((method, args, kwargs))
        if not self.conn.poll(60):
            raise TimeoutError(f"peer did not answer {method}")
        status, value, _message = self.conn.recv()
        return value if status == "ok" else f"!{value}"


@contextmanager
def peer_process(factory: StoreFactory) -> Iterator[Peer]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_peer_main, args=(factory, theirs), daemon=True)
    proc.start()
    try:
        yield Peer(ours)
    finally:
        ours.send(None)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


@pytest.fixture
def peer(store_factory: StoreFactory) -> Iterator[Peer]:
    with peer_process(store_factory) as p:
        yield p


# -- objects and reads -------------------------------------------------------------------


def test_missing_object_reads_as_empty(store: ObjectStore) -> None:
    assert store.omap_page("nothing-here") == []
    assert store.omap_get("nothing-here", ["a", "b"]) == {}
    assert store.lock_info("nothing-here", LOCK) is None
    assert "nothing-here" not in store.list_objects()
    store.remove_object("nothing-here")  # missing is fine


def test_keys_come_back_in_byte_order(store: ObjectStore) -> None:
    keys = [f"d.{random.getrandbits(64):016x}" for _ in range(300)] + [
        "f",
        "o.1",
        "s.x",
        "d/",
        "D",
        "d.",
        "d",
    ]
    random.shuffle(keys)
    put(store, OID, {k: k.encode() for k in keys})
    got = list(omap_iter(store, OID, page=37))
    assert [k for k, _ in got] == sorted(keys, key=str.encode)
    assert all(v == k.encode() for k, v in got)


MODEL_KEYS = ["a", "a.0", "a.1", "a.10", "a.2", "ab", "b", "b.0", "b.1", "c", "c~", "d"]


@pytest.mark.parametrize(
    ("start_after", "end_before", "prefix", "limit"),
    [
        ("", None, "", 1000),
        ("", None, "", 3),
        ("a.1", None, "", 4),
        ("", "b", "", 1000),
        ("a.0", "b.0", "", 2),
        ("", None, "a.", 1000),
        ("", None, "a.", 2),
        ("a.1", None, "a.", 1000),
        ("b", None, "a.", 1000),  # start_after beyond the prefix: nothing
        ("", "a.2", "a.", 1000),
        ("", None, "c", 1000),
        ("", None, "zz", 1000),
        ("", "a", "", 1000),  # end_before at the first key: nothing
        ("c", "b", "", 1000),  # empty range
        ("", None, "", 0),
    ],
)
def test_page_bounds(
    store: ObjectStore, start_after: str, end_before: str | None, prefix: str, limit: int
) -> None:
    put(store, OID, {k: b"v" + k.encode() for k in MODEL_KEYS})
    expected = [
        k
        for k in MODEL_KEYS
        if k > start_after and (end_before is None or k < end_before) and k.startswith(prefix)
    ]
    page = store.omap_page(OID, start_after=start_after, end_before=end_before, prefix=prefix, limit=limit)
    # A page may be short, never wrong: it is a prefix of the expected keys, up to limit.
    assert [k for k, _ in page] == expected[: len(page)]
    assert len(page) <= limit
    assert all(v == b"v" + k.encode() for k, v in page)
    if limit:
        walked = list(
            omap_iter(store, OID, start_after=start_after, end_before=end_before, prefix=prefix, page=limit)
        )
        assert [k for k, _ in walked] == expected


def test_large_page_and_large_op(store: ObjectStore) -> None:
    pairs = {f"d.{i:016x}.{'0' * 40}": os.urandom(200) for i in range(2500)}
    store.execute(OID, WriteOp(set=dict(list(pairs.items())[:1000])))
    store.execute(OID, WriteOp(set=dict(list(pairs.items())[1000:])))
    first = store.omap_page(OID, limit=1000)
    assert 0 < len(first) <= 1000
    assert [k for k, _ in first] == sorted(pairs)[: len(first)]
    assert everything(store) == pairs


def test_omap_get(store: ObjectStore) -> None:
    put(store, OID, {"a": b"1", "b": b"", "c": b"3"})
    assert store.omap_get(OID, ["a", "b", "zz", "a"]) == {"a": b"1", "b": b""}
    assert store.omap_get(OID, []) == {}
    many = [f"k{i:05d}" for i in range(1500)]
    put(store, OID, {k: k.encode() for k in many[::2]})
    assert store.omap_get(OID, many) == {k: k.encode() for k in many[::2]}


ODD_KEYS = [
    "with space",
    "slash/and:colon",
    "tilde~",
    "del\x7f",
    "ctl\x01\x1f",
    "%2F",
    "dot.",
    ".",
    "~",
    "é",
    "日本",
]


def test_odd_keys_and_binary_values(store: ObjectStore) -> None:
    values = {
        "with space": bytes(range(256)),
        "slash/and:colon": b"\x00",
        "tilde~": b"",
        "del\x7f": b"a\x00b\x00",
        "ctl\x01\x1f": b"\xff" * 3,
    }
    pairs = {k: values.get(k, k.encode() + b"\x00tail") for k in ODD_KEYS}
    pairs["big"] = os.urandom(600 * 1024)
    put(store, OID, pairs)
    assert everything(store) == pairs
    assert store.omap_get(OID, list(pairs)) == pairs


@pytest.mark.parametrize("key", ["", "nul\x00inside"])
def test_unusable_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(PermanentError):
        store.execute(OID, WriteOp(set={key: b"v"}))
    with pytest.raises(PermanentError):
        store.execute(OID, WriteOp(asserts=[(key, Cmp.EQ, "")], set={"ok": b"v"}))
    assert everything(store) == {}


def test_list_and_remove_objects(store: ObjectStore) -> None:
    for oid in ["idx.shard.0001", "idx.shard.0000", "idx.control", "other"]:
        put(store, oid, {"k": b"v"})
    store.lock("idx.shard.0000", LockRef(LOCK, "c"), duration=30)
    assert store.list_objects("idx.") == ["idx.control", "idx.shard.0000", "idx.shard.0001"]
    assert store.list_objects("idx.shard.") == ["idx.shard.0000", "idx.shard.0001"]
    assert set(store.list_objects()) == {"idx.shard.0000", "idx.shard.0001", "idx.control", "other"}
    store.remove_object("idx.shard.0000")
    assert store.list_objects("idx.shard.") == ["idx.shard.0001"]
    assert store.omap_page("idx.shard.0000") == []
    assert store.lock_info("idx.shard.0000", LOCK) is None  # the lock went with the object


# -- write ops ---------------------------------------------------------------------------


def test_any_applied_op_creates_the_object(store: ObjectStore) -> None:
    store.execute("a", WriteOp())
    store.execute("b", WriteOp(asserts=[("k", Cmp.EQ, "")]))
    store.lock("c", LockRef(LOCK, "x"), duration=30)
    assert store.list_objects() == ["a", "b", "c"]


def test_remove_and_ranges_apply_before_set(store: ObjectStore) -> None:
    put(store, OID, {k: b"old" for k in "abcdefgh"})
    store.execute(
        OID,
        WriteOp(
            remove=["a", "h", "missing"],
            remove_ranges=[("c", "f"), ("zz", "zzz")],
            set={"d": b"new", "h": b"new"},
        ),
    )
    assert everything(store) == {"b": b"old", "d": b"new", "f": b"old", "g": b"old", "h": b"new"}


def test_remove_range_end_is_excluded(store: ObjectStore) -> None:
    keys = ["d.0001", "d.0002", "d.0003", "d/", "e"]
    put(store, OID, {k: b"v" for k in keys})
    store.execute(OID, WriteOp(remove_ranges=[("d.", "d.0003")]))
    assert list(everything(store)) == ["d.0003", "d/", "e"]


def test_failed_assert_applies_nothing(store: ObjectStore) -> None:
    put(store, OID, {"f": b"0005", "a": b"1", "b": b"2", "c": b"3"})
    before = everything(store)
    op = WriteOp(
        asserts=[("f", Cmp.EQ, "0005"), ("f", Cmp.LT, "0003")],
        set={"new": b"x", "a": b"changed"},
        remove=["b"],
        remove_ranges=[("c", "d")],
    )
    with pytest.raises(CompareFailed):
        store.execute(OID, op)
    assert everything(store) == before


CMP_CASES = [
    # stored, op, given, holds
    ("m", Cmp.EQ, "m", True),
    ("m", Cmp.EQ, "n", False),
    ("m", Cmp.EQ, "", False),
    ("m", Cmp.LT, "n", True),
    ("m", Cmp.LT, "m", False),
    ("m", Cmp.LT, "a", False),
    ("m", Cmp.LT, "ma", True),  # a prefix sorts first
    ("ma", Cmp.LT, "m", False),
    ("m", Cmp.GT, "a", True),
    ("m", Cmp.GT, "m", False),
    ("m", Cmp.GT, "z", False),
    ("ma", Cmp.GT, "m", True),
    ("00000000000000ff", Cmp.LT, "0000000000000100", True),  # fixed-width hex, as the floor
    ("a\x00b", Cmp.EQ, "a\x00b", True),  # NUL inside a value is compared, not a terminator
    ("a\x00b", Cmp.EQ, "a", False),
    ("a", Cmp.LT, "a\x00", True),
    ("", Cmp.EQ, "", True),
    ("", Cmp.LT, "a", True),
    # RADOS compares values as signed chars: non-ASCII bytes sort *below* ASCII.
    ("é", Cmp.LT, "z", True),
    ("é", Cmp.GT, "z", False),
    ("é", Cmp.GT, "\x00", False),
    ("a\u0080", Cmp.LT, "a\x00", True),
    ("é", Cmp.EQ, "é", True),
    ("ÿ", Cmp.GT, "é", True),  # c3 bf > c3 a9 either way
]


@pytest.mark.parametrize(("stored", "cmp", "given", "holds"), CMP_CASES)
def test_assert_compares_stored_to_given(
    store: ObjectStore, stored: str, cmp: Cmp, given: str, holds: bool
) -> None:
    put(store, OID, {"k": stored.encode()})
    op = WriteOp(asserts=[("k", cmp, given)], set={"applied": b"1"})
    if holds:
        store.execute(OID, op)
        assert store.omap_get(OID, ["applied"]) == {"applied": b"1"}
    else:
        with pytest.raises(CompareFailed):
            store.execute(OID, op)
        assert store.omap_get(OID, ["applied"]) == {}


@pytest.mark.parametrize("cmp", [Cmp.NE, Cmp.GTE, Cmp.LTE])
def test_comparisons_rados_lacks_are_refused(store: ObjectStore, cmp: Cmp) -> None:
    put(store, OID, {"k": b"m"})
    with pytest.raises(PermanentError):
        store.execute(OID, WriteOp(asserts=[("k", cmp, "a")], set={"applied": b"1"}))
    assert store.omap_get(OID, ["applied"]) == {}


@pytest.mark.parametrize(
    ("cmp", "given", "holds"),
    [(Cmp.EQ, "", True), (Cmp.EQ, "x", False), (Cmp.LT, "a", True), (Cmp.LT, "", False), (Cmp.GT, "", False)],
)
@pytest.mark.parametrize("object_exists", [True, False])
def test_absent_key_compares_as_empty(
    store: ObjectStore, cmp: Cmp, given: str, holds: bool, object_exists: bool
) -> None:
    if object_exists:
        put(store, OID, {"other": b"v"})
    op = WriteOp(asserts=[("absent", cmp, given)], set={"applied": b"1"})
    if holds:
        store.execute(OID, op)
        assert store.omap_get(OID, ["applied"]) == {"applied": b"1"}
    else:
        with pytest.raises(CompareFailed):
            store.execute(OID, op)
        assert store.omap_get(OID, ["applied"]) == {}
        assert (OID in store.list_objects()) == object_exists


def test_compare_and_swap_of_a_new_key(store: ObjectStore) -> None:
    """The index's high-water mark: "create if absent" is an EQ "" assert."""
    store.execute(OID, WriteOp(asserts=[("s.src", Cmp.EQ, "")], set={"s.src": b"0001"}))
    with pytest.raises(CompareFailed):
        store.execute(OID, WriteOp(asserts=[("s.src", Cmp.EQ, "")], set={"s.src": b"0002"}))
    store.execute(OID, WriteOp(asserts=[("s.src", Cmp.EQ, "0001")], set={"s.src": b"0002"}))
    assert store.omap_get(OID, ["s.src"]) == {"s.src": b"0002"}


def test_create_exclusive(store: ObjectStore) -> None:
    store.execute(OID, WriteOp(create_exclusive=True, set={"k": b"1"}))
    with pytest.raises(CompareFailed):
        store.execute(OID, WriteOp(create_exclusive=True, set={"k": b"2"}))
    assert everything(store) == {"k": b"1"}


def test_must_exist(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        store.execute(OID, WriteOp(must_exist=True, set={"k": b"1"}))
    with pytest.raises(ObjectMissing):  # also before a fence or an assert
        store.execute(OID, WriteOp(must_exist=True, fence=LockRef(LOCK, "c"), asserts=[("k", Cmp.EQ, "")]))
    assert OID not in store.list_objects()
    put(store, OID, {"a": b"1"})
    store.execute(OID, WriteOp(must_exist=True, set={"k": b"1"}))
    assert everything(store) == {"a": b"1", "k": b"1"}
    with pytest.raises(PermanentError):
        store.execute(OID, WriteOp(must_exist=True, create_exclusive=True))


def test_execute_many_results_are_independent(store: ObjectStore) -> None:
    ref = LockRef(LOCK, "me")
    store.lock("locked", ref, duration=30)
    put(store, "guarded", {"f": b"5"})
    ops: list[tuple[str, WriteOp]] = [
        ("plain", WriteOp(set={"a": b"1"})),
        ("guarded", WriteOp(asserts=[("f", Cmp.LT, "3")], set={"x": b"1"})),
        ("locked", WriteOp(fence=ref, set={"a": b"1"})),
        ("locked", WriteOp(fence=LockRef(LOCK, "not-me"), set={"b": b"1"})),
        ("absent", WriteOp(must_exist=True, set={"a": b"1"})),
        ("plain", WriteOp(create_exclusive=True)),
        ("bad", WriteOp(set={"": b"1"})),
        ("guarded", WriteOp(asserts=[("f", Cmp.EQ, "5")], set={"y": b"1"})),
    ]
    # More ops than the aio window, to every shard-like object.
    ops += [(f"shard.{i % 16:04d}", WriteOp(set={f"d.{i:06d}": b"v"})) for i in range(200)]
    results = store.execute_many(ops)
    kinds = [type(r).__name__ if r is not None else None for r in results[:8]]
    assert kinds == [
        None,
        "CompareFailed",
        None,
        "LeaseLost",
        "ObjectMissing",
        "CompareFailed",
        "PermanentError",
        None,
    ]
    assert results[8:] == [None] * 200
    assert everything(store, "plain") == {"a": b"1"}
    assert everything(store, "guarded") == {"f": b"5", "y": b"1"}
    assert everything(store, "locked") == {"a": b"1"}
    assert "absent" not in store.list_objects()
    assert sum(len(everything(store, f"shard.{i:04d}")) for i in range(16)) == 200
    assert store.execute_many([]) == []


# -- locks and fencing -------------------------------------------------------------------


def test_fence_accepts_the_holder_only(store: ObjectStore, other_store: ObjectStore) -> None:
    ref = LockRef(LOCK, "me")
    with pytest.raises(LeaseLost):  # nobody holds it (and the object does not exist yet)
        store.execute(OID, WriteOp(fence=ref, set={"a": b"1"}))
    store.lock(OID, ref, duration=30)
    store.execute(OID, WriteOp(fence=ref, set={"a": b"1"}))
    refused = [
        (store, LockRef(LOCK, "other-cookie")),
        (store, LockRef("other-name", "me")),
        (other_store, ref),  # the same cookie from another client is another holder
    ]
    for s, r in refused:
        with pytest.raises(LeaseLost):
            s.execute(OID, WriteOp(fence=r, set={"b": b"1"}))
    put(store, "elsewhere", {"k": b"v"})
    with pytest.raises(LeaseLost):  # the lock must be on the same object
        store.execute("elsewhere", WriteOp(fence=ref, set={"b": b"1"}))
    assert everything(store) == {"a": b"1"}


def test_fence_is_checked_before_asserts(store: ObjectStore) -> None:
    put(store, OID, {"f": b"9"})
    with pytest.raises(LeaseLost):
        store.execute(OID, WriteOp(fence=LockRef(LOCK, "me"), asserts=[("f", Cmp.LT, "1")], set={"a": b"1"}))


def test_lock_is_exclusive_and_lock_info(store: ObjectStore, other_store: ObjectStore) -> None:
    mine, theirs = LockRef(LOCK, "me"), LockRef(LOCK, "them")
    before = time.time()
    store.lock(OID, mine, duration=30, description="collector A")
    info = store.lock_info(OID, LOCK)
    assert info is not None
    assert (info.name, info.cookie, info.description) == (LOCK, "me", "collector A")
    assert info.holder
    # Expiry is now + duration (sub-second durations included) on the store's clock.
    assert info.expires_at is not None and before + 30 - 0.5 <= info.expires_at <= time.time() + 30 + 0.5
    with pytest.raises(LockBusy):
        other_store.lock(OID, theirs, duration=30)
    with pytest.raises(LockBusy):
        other_store.lock(OID, mine, duration=30)  # same cookie, other client
    with pytest.raises(LockBusy):
        store.lock(OID, theirs, duration=30)  # same client, other cookie
    other_info = other_store.lock_info(OID, LOCK)
    assert other_info == info
    # Another lock name on the same object is another lock.
    other_store.lock(OID, LockRef("other", "them"), duration=30)


def test_lock_without_expiry(store: ObjectStore) -> None:
    store.lock(OID, LockRef(LOCK, "me"), duration=0)
    info = store.lock_info(OID, LOCK)
    assert info is not None and info.expires_at is None


def test_relock_by_the_holder_extends(store: ObjectStore, other_store: ObjectStore) -> None:
    ref = LockRef(LOCK, "me")
    store.lock(OID, ref, duration=5, description="first")
    first = store.lock_info(OID, LOCK)
    store.lock(OID, ref, duration=60, description="again")
    again = store.lock_info(OID, LOCK)
    assert first is not None and again is not None and first.expires_at and again.expires_at
    assert again.expires_at >= first.expires_at + 50
    assert (again.cookie, again.holder, again.description) == ("me", first.holder, "again")
    with pytest.raises(LockBusy):
        other_store.lock(OID, LockRef(LOCK, "them"), duration=5)


def test_unlock(store: ObjectStore, other_store: ObjectStore) -> None:
    ref = LockRef(LOCK, "me")
    with pytest.raises(LeaseLost):
        store.unlock(OID, ref)  # never held (object missing)
    store.lock(OID, ref, duration=30)
    with pytest.raises(LeaseLost):
        other_store.unlock(OID, ref)  # same cookie, other client
    with pytest.raises(LeaseLost):
        store.unlock(OID, LockRef(LOCK, "other"))
    assert store.lock_info(OID, LOCK) is not None
    store.unlock(OID, ref)
    assert store.lock_info(OID, LOCK) is None
    with pytest.raises(LeaseLost):
        store.unlock(OID, ref)
    other_store.lock(OID, LockRef(LOCK, "them"), duration=30)
    with pytest.raises(LeaseLost):
        store.execute(OID, WriteOp(fence=ref, set={"a": b"1"}))


def test_renew_extends_and_fails_once_lost(store: ObjectStore, other_store: ObjectStore) -> None:
    ref = LockRef(LOCK, "me")
    with pytest.raises(LeaseLost):
        store.lock(OID, ref, duration=2, renew=True)  # renew of a lock never taken
    start = time.time()
    store.lock(OID, ref, duration=2)
    time.sleep(1.0)
    store.lock(OID, ref, duration=5, renew=True, description="renewed")
    info = store.lock_info(OID, LOCK)
    assert info is not None and info.expires_at is not None
    assert info.expires_at >= start + 5.5
    assert info.description == "renewed"
    time.sleep(max(0.0, start + 2.5 - time.time()))  # past the first expiry
    with pytest.raises(LockBusy):
        other_store.lock(OID, LockRef(LOCK, "them"), duration=5)
    store.execute(OID, WriteOp(fence=ref, set={"a": b"1"}))


def test_expiry_without_a_taker_loses_the_lease(store: ObjectStore) -> None:
    ref = LockRef(LOCK, "me")
    store.lock(OID, ref, duration=1)
    deadline = time.time() + 6
    while store.lock_info(OID, LOCK) is not None:
        assert time.time() < deadline, "the lock never expired"
        time.sleep(0.2)
    with pytest.raises(LeaseLost):
        store.execute(OID, WriteOp(fence=ref, set={"a": b"1"}))
    with pytest.raises(LeaseLost):  # renew is "still mine?": an expired lock is not
        store.lock(OID, ref, duration=5, renew=True)
    with pytest.raises(LeaseLost):
        store.unlock(OID, ref)
    store.lock(OID, ref, duration=5)  # but it can be taken again
    store.execute(OID, WriteOp(fence=ref, set={"a": b"1"}))


def test_lock_exclusive_between_processes(store: ObjectStore, peer: Peer) -> None:
    mine, theirs = LockRef(LOCK, "parent"), LockRef(LOCK, "child")
    store.lock(OID, mine, duration=30, description="parent")
    assert peer.call("lock", OID, theirs, duration=30) == "!LockBusy"
    assert peer.call("lock", OID, mine, duration=30) == "!LockBusy"  # same cookie, other process
    assert peer.call("fenced_set", OID, mine, "child-wrote") == "!LeaseLost"
    assert peer.call("unlock", OID, mine) == "!LeaseLost"
    store.unlock(OID, mine)
    assert peer.call("lock", OID, theirs, duration=30, description="child") is None
    with pytest.raises(LockBusy):
        store.lock(OID, mine, duration=30)
    with pytest.raises(LeaseLost):
        store.execute(OID, WriteOp(fence=mine, set={"parent-wrote": b"1"}))
    assert peer.call("fenced_set", OID, theirs, "child-wrote") is None
    info = store.lock_info(OID, LOCK)
    assert info is not None and (info.cookie, info.description) == ("child", "child")
    assert peer.call("lock_info", OID, LOCK) == info
    assert everything(store) == {"child-wrote": b"peer"}


def test_expiry_and_takeover_between_processes(store: ObjectStore, peer: Peer) -> None:
    mine, theirs = LockRef(LOCK, "parent"), LockRef(LOCK, "child")
    assert peer.call("lock", OID, theirs, duration=2) is None
    taken = time.time()
    assert peer.call("fenced_set", OID, theirs, "before") is None
    while True:
        try:
            store.lock(OID, mine, duration=30)
            break
        except LockBusy:
            assert time.time() - taken < 6, "the expired lock was never released"
            time.sleep(0.1)
    waited = time.time() - taken
    assert 1.8 <= waited <= 3.0, waited
    assert peer.call("fenced_set", OID, theirs, "after") == "!LeaseLost"
    assert peer.call("lock", OID, theirs, duration=2, renew=True) == "!LeaseLost"
    assert peer.call("lock", OID, theirs, duration=2) == "!LockBusy"
    assert peer.call("unlock", OID, theirs) == "!LeaseLost"
    store.execute(OID, WriteOp(fence=mine, set={"parent": b"1"}))
    assert everything(store) == {"before": b"peer", "parent": b"1"}


def test_break_lock_removes_exactly_the_reported_holder(store: ObjectStore, peer: Peer) -> None:
    mine, theirs = LockRef(LOCK, "parent"), LockRef(LOCK, "child")
    missing = LockInfo(name=LOCK, cookie="child", holder="client.1", description="", expires_at=None)
    assert store.break_lock(OID, missing) is False  # no object, no lock
    assert peer.call("lock", OID, theirs, duration=30) is None
    info = store.lock_info(OID, LOCK)
    assert info is not None and info.cookie == "child"
    # Only that holder with that cookie: another cookie, or the same cookie of another client
    # (this store's), is not broken.
    assert store.break_lock(OID, dataclasses.replace(info, cookie="other")) is False
    store.lock(OID, LockRef("mine", "x"), duration=30)
    own = store.lock_info(OID, "mine")
    assert own is not None
    assert store.break_lock(OID, dataclasses.replace(info, holder=own.holder)) is False
    assert store.lock_info(OID, LOCK) == info
    assert store.break_lock(OID, info) is True
    assert store.lock_info(OID, LOCK) is None
    assert store.lock_info(OID, "mine") is not None  # another lock of the object is untouched
    # The broken holder is fenced off and cannot renew; the breaker takes the lock.
    assert peer.call("fenced_set", OID, theirs, "late") == "!LeaseLost"
    assert peer.call("lock", OID, theirs, duration=30, renew=True) == "!LeaseLost"
    store.lock(OID, mine, duration=30)
    assert store.break_lock(OID, info) is False  # the lock changed hands: nothing to break
    assert peer.call("lock", OID, theirs, duration=30) == "!LockBusy"
    store.execute(OID, WriteOp(fence=mine, set={"parent": b"1"}))


def test_break_lock_of_an_expired_holder_is_nothing(store: ObjectStore, peer: Peer) -> None:
    assert peer.call("lock", OID, LockRef(LOCK, "child"), duration=1) is None
    info = store.lock_info(OID, LOCK)
    assert info is not None
    time.sleep(1.5)
    assert store.break_lock(OID, info) is False
    store.lock(OID, LockRef(LOCK, "parent"), duration=30)


def _cas_increments(factory: StoreFactory, count: int, threads: int, start_at: float) -> int:
    """Increment the counter ``count`` times from each of ``threads`` threads, all starting at
    ``start_at`` (so that the processes really overlap); returns how many CAS attempts failed."""
    store = factory()
    retries = 0

    def work() -> None:
        nonlocal retries
        time.sleep(max(0.0, start_at - time.time()))
        for _ in range(count):
            while True:
                current = store.omap_get(OID, ["n"]).get("n", b"").decode()
                nxt = f"{int(current or '0') + 1:08d}"
                try:
                    store.execute(OID, WriteOp(asserts=[("n", Cmp.EQ, current)], set={"n": nxt.encode()}))
                    break
                except CompareFailed:
                    retries += 1

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    store.close()
    return retries


def test_compare_and_swap_is_atomic_across_processes_and_threads(
    store: ObjectStore, store_factory: StoreFactory
) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        start_at = time.time() + 3  # after both workers have started and connected
        pending = [pool.apply_async(_cas_increments, (store_factory, 100, 2, start_at)) for _ in range(2)]
        retries = [p.get(timeout=120) for p in pending]
    assert store.omap_get(OID, ["n"]) == {"n": f"{2 * 2 * 100:08d}".encode()}
    print(f"\n{sum(retries)} compare-and-swap retries")


# -- RADOS connection edge -----------------------------------------------------------------


def test_rados_unreachable_cluster_fails_fast_and_says_where(tmp_path: Path) -> None:
    pytest.importorskip("rados", reason="python3-rados is not importable")
    from changelog.pipeline.backends.rados import RadosStore

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "unreachable.conf"
    conf.write_text(
        f"[global]\nmon host = [v2:127.0.0.1:{port}]\nauth client required = none\nms bind ipv6 = false\n"
        f"log file = {tmp_path}/client.log\n"
    )
    start = time.monotonic()
    with pytest.raises(TransientError) as raised:
        RadosStore(conffile=str(conf), pool="changelog", connect_timeout=2)
    assert time.monotonic() - start < 4
    message = str(raised.value)
    assert str(conf) in message and "\n" not in message


@pytest.mark.ceph
def test_rados_unknown_client_is_a_permanent_error(ceph_lab: Any) -> None:
    pytest.importorskip("rados", reason="python3-rados is not importable")
    from changelog.pipeline.backends.rados import RadosStore

    with pytest.raises(PermanentError, match=re.escape(ceph_lab.conf)):
        RadosStore(
            conffile=ceph_lab.conf, keyring=ceph_lab.keyring, pool=ceph_lab.pool, client_name="client.nobody"
        )
    with pytest.raises(PermanentError, match="no such pool"):
        RadosStore(conffile=ceph_lab.conf, keyring=ceph_lab.keyring, pool="no-such-pool-here")


# -- throughput (printed with -s, not asserted) --------------------------------------------


def test_throughput_report(store: ObjectStore, backend: str) -> None:
    rounds, per_op = 50, 1000
    value = os.urandom(200)
    ops = [
        {f"d.{r * per_op + i:016x}.{'a' * 16}.{'b' * 8}.{'c' * 16}": value for i in range(per_op)}
        for r in range(rounds)
    ]
    start = time.perf_counter()
    for pairs in ops:
        store.execute("bench", WriteOp(asserts=[("f", Cmp.LT, "d.")], set=pairs))
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(1 for _ in omap_iter(store, "bench", page=1000))
    read = time.perf_counter() - start
    assert count == rounds * per_op
    print(
        f"\n[{backend}] execute: {rounds} ops x {per_op} keys (61 B names, 200 B values): "
        f"{rounds * per_op / elapsed:,.0f} keys/s ({elapsed / rounds * 1000:.1f} ms/op); "
        f"paged read: {count / read:,.0f} keys/s"
    )
