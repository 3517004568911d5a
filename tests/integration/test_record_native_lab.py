"""The RADOS store's write ops in C (``_speedups.write_op_send``, ``index.RecordOp``: the record
path's keys made as the op is sent, issue 17) against the binding's way on the lab's cluster:
the same batches recorded both ways into two namespaces leave the same omap, key for key and
byte for byte; guarded ops fail with the same errors (assert, fence, exclusive create,
must_exist, an unsupported compare, a pool deleted under the store).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import rados

from changelog.errors import CompareFailed, LeaseLost, ObjectMissing, PermanentError
from changelog.pipeline import index as index_mod
from changelog.pipeline.backends.rados import RadosStore
from changelog.pipeline.index import ChangeIndex, RecordOp
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.store import Cmp, LockRef, WriteOp, omap_iter
from tests.lab import Lab

pytestmark = pytest.mark.ceph

# The ways a RadosStore can write: C with the keys made in C, the binding's (the reference),
# and C stores whose sends fall back to the binding (a RecordOp's keys then made in Python).
WAYS = ("native", "binding", "fallback")


def _store(lab: Lab, namespace: str, way: str, pool: str | None = None, **kw: Any) -> RadosStore:
    store = RadosStore(
        conffile=lab.conf, keyring=lab.keyring or None, pool=pool or lab.pool, namespace=namespace, **kw
    )
    if way == "binding":
        store._native = None
    elif way == "fallback" and store._native is not None:
        # Every send refused ("a shape only the binding builds"): the binding's _build path,
        # with the index still handing over RecordOps (sends_record_keys stays true).
        store._native.send = lambda oid, op: None  # type: ignore[method-assign]
    return store


@pytest.fixture(autouse=True)
def _c_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests compare the C way with the binding's explicitly: they run it even under
    RGW_CHANGELOG_PURE_PYTHON=1 (the index then checks the marks in Python, the store still
    makes the keys in C)."""
    monkeypatch.delenv("RGW_CHANGELOG_PURE_PYTHON", raising=False)


@pytest.fixture
def stores(ceph_lab: Lab) -> Iterator[Callable[[str], RadosStore]]:
    opened: list[RadosStore] = []
    probe = _store(ceph_lab, "probe", "native")
    native_built = probe._native is not None
    probe.close()
    if not native_built:
        pytest.skip("changelog._speedups is not built (or built from an older source: no write_op_send)")
    run = uuid.uuid4().hex[:10]

    def make(way: str) -> RadosStore:
        store = _store(ceph_lab, f"native-{run}-{way}", way)
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            for oid in store.list_objects():
                store.remove_object(oid)
            store.close()


def _batch(sources: int, n: int, start: int = 0) -> list[Mutation]:
    out = []
    for i in range(start, start + n):
        pos = f"{i:08d}"
        op = Op.DELETE if i % 13 == 0 else Op.WRITE
        out.append(
            Mutation(
                bucket="bkt" if i % 17 else "b\u00fcck\u00e9t",
                key=f"dir/obj-{i % 97}-\u65e5\u672c" if i % 5 == 0 else f"dir/obj-{i % 97}",
                op=op,
                mtime_ns=1_700_000_000_000_000_000 + i,
                source=f"rgw:bkt:id.1:{i % sources}",
                position=pos,
                seq=pos,
                size=None if op is Op.DELETE else i * 10,
                etag=None if op is Op.DELETE else f"{i:032x}",
                version_id=None if i % 3 else f"v{i}",
                metadata={"x-amz-meta-k": f"\u00e9{i}"} if i % 7 == 0 else {},
            )
        )
    return out


def _dump(store: RadosStore) -> dict[str, list[tuple[str, bytes]]]:
    return {oid: list(omap_iter(store, oid)) for oid in store.list_objects()}


@pytest.mark.parametrize("mode", ["write", "object"])
def test_record_many_writes_the_same_omap_every_way(stores: Callable[[str], RadosStore], mode: str) -> None:
    """First contact, the fast path over many batches (ops of ~1000 and of a few keys), replays,
    duplicates, positions going back and bucket ops: the same results and the same omap."""
    ms = _batch(11, 6000)
    bucket_ops = [
        Mutation(
            bucket="nb", key="", op=Op.BUCKET_CREATE, mtime_ns=1, source="rgw:nb:1:0", position="1", seq="1"
        ),
        Mutation(
            bucket="nb", key="", op=Op.BUCKET_DELETE, mtime_ns=2, source="rgw:nb:1:0", position="2", seq="2"
        ),
    ]
    batches = [
        ms[:16],
        ms[16:2000],
        ms[2000:5000],
        ms[1500:2500],
        ms[5000:],
        ms[::-1][:40],
        [ms[3]] * 3,
        bucket_ops,
    ]
    outcomes = {}
    for way in WAYS:
        store = stores(way)
        index = ChangeIndex(store, shards=4, mode=mode, clock=lambda: 1_800_000_000.0)
        results = [index.record_many(b) for b in batches]
        outcomes[way] = (results, _dump(store))
    assert outcomes["native"] == outcomes["binding"] == outcomes["fallback"]
    results, dump = outcomes["native"]
    assert sum(r.written for r in results) == len(ms) + 2
    assert sum(r.duplicates for r in results) == 1000 + 40 + 3
    entries = sum(len(v) for v in dump.values())
    # Write mode keeps every record; object mode one entry (and its pointer) per object+version.
    assert entries > len(ms) if mode == "write" else 100 < entries < len(ms)


def test_the_fast_path_sends_record_ops(stores: Callable[[str], RadosStore]) -> None:
    """With the C path the index hands the store ``RecordOp``s (no key made in Python)."""
    store = stores("native")
    assert store.sends_record_keys
    assert not stores("binding").sends_record_keys
    index = ChangeIndex(store, shards=2, clock=lambda: 1_800_000_000.0)
    index.record_many(_batch(3, 300))  # first contact: the general path reads the marks
    seen: list[type] = []
    execute_many = store.execute_many

    def spy(ops: Any) -> Any:
        def each() -> Iterator[tuple[str, WriteOp]]:
            for oid, op in ops:
                seen.append(type(op))
                yield oid, op

        return execute_many(each())

    store.execute_many = spy  # type: ignore[method-assign]
    assert index.record_many(_batch(3, 300, start=300)).written == 300
    assert seen and set(seen) == {RecordOp}
    if index_mod._NATIVE_MARKS is None and index_mod._NATIVE_PREPARE is not None:  # not PURE_PYTHON
        pytest.fail("_speedups.fast_marks missing while write_op_send is built")


def _guarded_ops(lock: LockRef, other: LockRef) -> list[tuple[str, WriteOp]]:
    """One op of each shape, and each way an op can fail, in an order where each sees the
    previous ones' effects."""
    big = {f"k.{i:05d}.\u00e9": bytes([i % 256]) * (i % 9) for i in range(1500)}
    return [
        (
            "a",
            WriteOp(set={"k1": b"v1", "k2": b"", "\u00fcml": "\u00e9t\u00e9".encode(), "bin": b"\x00\xff"}),
        ),
        (
            "a",
            WriteOp(
                asserts=[("k1", Cmp.EQ, "v1"), ("\u00fcml", Cmp.EQ, "\u00e9t\u00e9"), ("n", Cmp.EQ, "")],
                set=big,
            ),
        ),
        ("a", WriteOp(asserts=[("\u00fcml", Cmp.EQ, "\u00e9t")], set={"never": b"x"})),
        ("a", WriteOp(asserts=[("k1", Cmp.EQ, "nope")], set={"never": b"x"})),
        ("a", WriteOp(asserts=[("k1", Cmp.GT, "v0"), ("k1", Cmp.LT, "v2")], remove=["k2", "absent"])),
        ("a", WriteOp(remove_ranges=[("k.00100", "k.01000")], set={"k.00500": b"back"})),
        ("a", WriteOp(create_exclusive=True, set={"never": b"x"})),
        ("b", WriteOp(create_exclusive=True, set={"new": b"1"})),
        ("missing", WriteOp(must_exist=True, set={"never": b"x"})),
        ("b", WriteOp(must_exist=True, asserts=[("new", Cmp.EQ, "1")], set={"exists": b"1"})),
        ("locked", WriteOp(fence=lock, set={"fenced": b"1"})),
        ("locked", WriteOp(fence=other, set={"never": b"x"})),
        ("unlocked", WriteOp(fence=lock, set={"never": b"x"})),
        ("a", WriteOp(asserts=[("k1", Cmp.NE, "x")], set={"never": b"x"})),
        ("a", WriteOp(set={"bad\x00key": b"x"})),
        ("a", WriteOp(must_exist=True, create_exclusive=True)),
    ]


def test_guarded_ops_fail_the_same_way(stores: Callable[[str], RadosStore]) -> None:
    outcomes = {}
    for way in WAYS:
        store = stores(way)
        lock = LockRef("fence", f"me-{way}")
        store.lock("locked", lock, duration=60)
        results = store.execute_many(_guarded_ops(lock, LockRef("fence", "someone-else")))
        outcomes[way] = ([type(r) if r is not None else None for r in results], _dump(store))
    kinds, dump = outcomes["binding"]
    assert kinds == [
        None, None, CompareFailed, CompareFailed, None, None, CompareFailed, None, ObjectMissing, None,
        None, LeaseLost, LeaseLost, PermanentError, PermanentError, PermanentError,
    ]  # fmt: skip
    assert outcomes["native"] == outcomes["binding"] == outcomes["fallback"]
    assert dict(dump["a"])["k.00500"] == b"back" and "k.00200.\u00e9" not in dict(dump["a"])
    assert "fenced" in dict(dump["locked"]) and "missing" not in dump


def test_a_pool_deleted_under_the_store_fails_the_same_way(ceph_lab: Lab) -> None:
    pool = f"native-gone-{uuid.uuid4().hex[:8]}"
    cluster = rados.Rados(
        conffile=ceph_lab.conf, conf={"keyring": ceph_lab.keyring} if ceph_lab.keyring else {}
    )
    cluster.connect()
    try:
        cluster.create_pool(pool)
        opened = {way: _store(ceph_lab, "", way, pool=pool, op_timeout=10) for way in WAYS}
        if opened["native"]._native is None:
            pytest.skip("changelog._speedups is not built (or built from an older source: no write_op_send)")
        try:
            for store in opened.values():
                assert store.execute_many([("o", WriteOp(set={"k": b"v"}))]) == [None]
            cluster.delete_pool(pool)
            for store in opened.values():  # each client knows the pool is gone (else a race)
                store._cluster.wait_for_latest_osdmap()
            got = {}
            for way, store in opened.items():
                results = store.execute_many(
                    [("o", WriteOp(set={"k": b"v"})), ("p", WriteOp(must_exist=True))]
                )
                got[way] = [(type(r), str(r)) for r in results]
            assert got["native"] == got["binding"] == got["fallback"]
            assert all(kind is not type(None) for kind, _ in got["native"]), got
        finally:
            for store in opened.values():
                store.close()
    finally:
        if pool in cluster.list_pools():
            cluster.delete_pool(pool)
        cluster.shutdown()
