"""The change index and its leases, one suite run unchanged on every store backend:
the embedded sqlite file everywhere, and RADOS against the lab cluster."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from changelog.errors import InvalidMutation, LeaseLost
from changelog.pipeline import keys
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.store import ObjectStore

StoreFactory = Callable[[], ObjectStore]  # picklable: ``store_factory`` in conftest.py


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


_counter = iter(range(1, 10**9))


def mut(bucket: str = "b", key: str = "k", *, op: Op = Op.WRITE, source: str = "test:s", position: str | None = None,
        version_id: str | None = None, **kw: Any) -> Mutation:
    n = next(_counter)
    return Mutation(
        bucket=bucket, key=key, op=op, mtime_ns=1_700_000_000_000_000_000 + n, source=source,
        position=f"{n:012d}" if position is None else position, seq=f"{n:012d}", version_id=version_id,
        size=kw.pop("size", 3 if op == Op.WRITE else None), etag=kw.pop("etag", "e" if op == Op.WRITE else None), **kw,
    )


def all_entries(index: ChangeIndex) -> list[Any]:
    return [e for s in range(index.shards) for e in index.scan(s, page=7)]


def test_ordering_per_shard_and_per_object(store: ObjectStore) -> None:
    clock = FakeClock()
    index = ChangeIndex(store, shards=4, clock=clock)
    muts = []
    for i in range(60):
        clock.t += 0.001
        m = mut(key=f"obj-{i % 9}", position=f"{i:08d}")
        muts.append(m)
        index.record(m)
    entries = all_entries(index)
    assert len(entries) == 60
    for s in range(4):
        ks = [e.key for e in entries if e.shard == s]
        assert ks == sorted(ks) and len(set(ks)) == len(ks)
        assert all(index.shard_of(e.mutation.bucket, e.mutation.key) == s for e in entries if e.shard == s)
    for k in {m.key for m in muts}:
        got = [e.mutation.seq for e in entries if e.mutation.key == k]
        assert got == sorted(got) == [m.seq for m in muts if m.key == k]


def test_record_many_batches_and_pages(store: ObjectStore) -> None:
    index = ChangeIndex(store, shards=3)
    muts = [mut(key=f"k{i}", position=f"{i:08d}") for i in range(2500)]
    res = index.record_many(muts)
    assert (res.written, res.duplicates) == (2500, 0)
    entries = all_entries(index)
    assert sorted(e.mutation.event_id for e in entries) == sorted(m.event_id for m in muts)
    # Paging by hand with odd sizes gives the same sequence as scan.
    for s in range(3):
        paged, after = [], ""
        while batch := index.page(s, start_after=after, limit=13):
            paged += batch
            after = batch[-1].key
        assert [e.key for e in paged] == [e.key for e in index.scan(s)]
    assert sum(index.stats(s).entries for s in range(3)) == 2500


def test_time_windows(store: ObjectStore) -> None:
    clock = FakeClock(1_800_000_000.0)
    index = ChangeIndex(store, shards=1, clock=clock)
    for i in range(10):
        clock.t = 1_800_000_000.0 + i
        index.record(mut(key=f"k{i}"))
    t0 = int(1_800_000_003.0 * 1e6)
    t1 = int(1_800_000_007.0 * 1e6)
    window = list(index.scan(0, since_us=t0, until_us=t1))
    assert [e.mutation.key for e in window] == ["k3", "k4", "k5", "k6"]
    assert all(t0 <= e.time_us < t1 for e in window)
    assert [e.mutation.key for e in index.scan(0, until_us=t0)] == ["k0", "k1", "k2"]
    st = index.stats(0)
    assert st.entries == 10 and st.oldest_us == int(1_800_000_000.0 * 1e6)


def test_monotonic_when_clock_steps_back(store: ObjectStore) -> None:
    clock = FakeClock(1_800_000_100.0)
    index = ChangeIndex(store, shards=1, clock=clock)
    for i in range(20):
        clock.t -= 3.0  # the wall clock keeps stepping back
        index.record(mut(key=f"k{i}"))
    ks = [e.key for e in index.scan(0)]
    assert ks == sorted(ks) and len(ks) == 20
    assert [e.mutation.key for e in index.scan(0)] == [f"k{i}" for i in range(20)]


def test_idempotent_rerecord_even_after_trim(store: ObjectStore) -> None:
    index = ChangeIndex(store, shards=2)
    muts = [mut(key=f"k{i}", source="rgw:b:id:3", position=f"{i:06d}") for i in range(50)]
    assert index.record_many(muts).written == 50
    again = index.record_many(muts)
    assert (again.written, again.duplicates) == (0, 50)
    # A second process (no shared cache) sees the same high-water marks.
    other = ChangeIndex(store, shards=2)
    assert other.record_many(muts[10:]).duplicates == 40
    # Emitted and trimmed: a replay still must not come back.
    for s in range(2):
        index.remove(s, [e.key for e in index.scan(s)])
    assert all_entries(index) == []
    assert ChangeIndex(store, shards=2).record_many(muts).written == 0
    # New positions on the same stream are recorded; duplicates inside one batch count once.
    newer = mut(key="k1", source="rgw:b:id:3", position="000100")
    assert other.record_many([newer, newer]).written == 1
    assert len(all_entries(index)) == 1


def test_object_mode_replaces_older_entry(store: ObjectStore) -> None:
    clock = FakeClock()
    index = ChangeIndex(store, shards=2, mode="object", clock=clock)
    index.record(mut(key="a", size=1))
    clock.t += 1
    index.record(mut(key="a", size=2))
    index.record(mut(key="a", version_id="v1", size=5))
    clock.t += 1
    index.record_many([mut(key="a", size=3), mut(key="b", size=9), mut(key="a", size=4)])
    entries = all_entries(index)
    by_obj = {(e.mutation.key, e.mutation.version_id): e.mutation.size for e in entries}
    assert len(entries) == 3
    assert by_obj == {("a", None): 4, ("a", "v1"): 5, ("b", None): 9}
    # An entry below the floor is being drained: it stays, and the new one is added beside it.
    shard = index.shard_of("b", "a")
    lease = Lease(store, index.shard_oid(shard), name="drain", ttl=10)
    assert lease.acquire()
    index.raise_floor(shard, int((clock.t + 1) * 1e6), fence=lease.ref)
    clock.t += 5
    index.record(mut(key="a", size=6))
    sizes = [e.mutation.size for e in index.scan(shard) if e.mutation.key == "a" and e.mutation.version_id is None]
    assert sizes == [4, 6]
    # Trimming the drained entry keeps the pointer to the newer one: a later write replaces it.
    old = [e.key for e in index.scan(shard) if e.mutation.size == 4]
    index.remove(shard, old, fence=lease.ref)
    clock.t += 1
    index.record(mut(key="a", size=7))
    sizes = [e.mutation.size for e in index.scan(shard) if e.mutation.key == "a" and e.mutation.version_id is None]
    assert sizes == [7]
    lease.release()


def test_exact_removal_leaves_the_rest(store: ObjectStore) -> None:
    index = ChangeIndex(store, shards=1)
    index.record_many([mut(key=f"k{i}") for i in range(30)])
    entries = list(index.scan(0))
    gone = [e.key for e in entries[::3]]
    index.remove(0, gone + [keys.data_key(1, "0" * 16, "0" * 8, "0" * 32)])  # a missing key is fine
    left = [e.key for e in index.scan(0)]
    assert left == [e.key for e in entries if e.key not in set(gone)]
    with pytest.raises(ValueError):
        index.remove(0, ["f"])  # never anything but data keys


def test_floor_blocks_late_writers(store: ObjectStore) -> None:
    clock = FakeClock(1_800_000_000.0)
    writer = ChangeIndex(store, shards=1, clock=clock)
    writer.record(mut(key="early"))
    collector_view = ChangeIndex(store, shards=1)
    lease = Lease(store, collector_view.shard_oid(0), name="drain", ttl=10)
    assert lease.acquire()
    cutoff = int(1_800_000_500.0 * 1e6)
    assert collector_view.raise_floor(0, cutoff, fence=lease.ref) == cutoff
    assert collector_view.raise_floor(0, cutoff - 10, fence=lease.ref) == cutoff  # never lowered
    # The writer's clock is 500 s behind and its floor cache is stale: its entry still lands above.
    writer.record(mut(key="late"))
    late = [e for e in writer.scan(0) if e.mutation.key == "late"]
    assert late and late[0].time_us > cutoff
    assert [e.mutation.key for e in writer.scan(0, until_us=cutoff)] == ["early"]
    lease.release()


def _hold_lease(factory: StoreFactory, oid: str, seconds: float, ready: Any) -> None:
    store = factory()
    lease = Lease(store, oid, name="drain", ttl=30, description="child")
    ok = lease.acquire()
    ready.put(ok)
    if ok:
        time.sleep(seconds)
        lease.release()
    store.close()


def test_lease_exclusive_between_processes(store: ObjectStore, store_factory: StoreFactory) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    oid = f"lease-{uuid.uuid4().hex[:8]}"
    child = ctx.Process(target=_hold_lease, args=(store_factory, oid, 4.0, ready))
    child.start()
    try:
        assert ready.get(timeout=60) is True
        mine = Lease(store, oid, name="drain", ttl=5)
        assert not mine.acquire()
        info = store.lock_info(oid, "drain")
        assert info is not None and info.cookie != mine.ref.cookie
    finally:
        child.join(60)
    assert child.exitcode == 0
    assert mine.acquire()  # released by the child
    mine.release()


def test_lease_expiry_takeover_and_fencing(store: ObjectStore) -> None:
    index = ChangeIndex(store, shards=1)
    oid = index.shard_oid(0)
    a = Lease(store, oid, name="drain", ttl=2)
    b = Lease(store, oid, name="drain", ttl=2)
    assert a.acquire()
    assert not b.acquire()
    index.raise_floor(0, 10, fence=a.ref)  # fenced write accepted while held
    deadline = time.monotonic() + 10
    while not b.acquire():  # a is not renewed: it expires and b takes over
        assert time.monotonic() < deadline, "lease never expired"
        time.sleep(0.2)
    takeover = time.monotonic()
    with pytest.raises(LeaseLost):
        a.check()
    with pytest.raises(LeaseLost):
        index.raise_floor(0, 20, fence=a.ref)  # the OSD refuses the old holder
    with pytest.raises(LeaseLost):
        index.remove(0, [keys.data_key(5, "0" * 16, "0" * 8, "0" * 32)], fence=a.ref)
    with pytest.raises(LeaseLost):
        a.renew()
    assert index.floor(0) == 10
    index.raise_floor(0, 30, fence=b.ref)
    assert index.floor(0) == 30
    b.release()
    assert time.monotonic() - takeover < 10


def test_renew_keeps_the_lease(store: ObjectStore) -> None:
    oid = f"renew-{uuid.uuid4().hex[:8]}"
    a = Lease(store, oid, name="control", ttl=2)
    b = Lease(store, oid, name="control", ttl=2)
    assert a.acquire()
    a.start_renewing()
    end = time.monotonic() + 5
    while time.monotonic() < end:
        assert not b.acquire()
        time.sleep(0.5)
    a.check()
    assert a.renewals >= 3
    a.release()
    assert b.acquire()
    b.release()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bucket": ""}, "bucket name is empty"),
        ({"bucket": "a/b"}, "NUL or '/'"),
        ({"key": ""}, "object key is empty"),
        ({"key": "x" * 1025}, "longer than 1024"),
        ({"key": "bad\udcffsurrogate"}, "not valid unicode"),
        ({"metadata": {"big": "v" * 600_000}}, "metadata too large"),
        ({"source": "has space"}, "source must be"),
        ({"position": ""}, "position must be"),
        ({"size": -1}, "size must be"),
        ({"op": "rename"}, "op must be one of"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(store: ObjectStore, kwargs: dict[str, Any], message: str) -> None:
    index = ChangeIndex(store, shards=2)
    good = mut(key="fine")
    with pytest.raises(InvalidMutation, match=message):
        bad = mut(**kwargs)
        index.record_many([good, bad])
    assert all_entries(index) == []


@pytest.mark.parametrize(
    "bucket, key",
    [
        ("b", "k" * 1024),
        ("b", "é" * 512),
        ("b", "with spaces and\nnewlines\tand\x00nul"),
        ("UPPER_case..bucket", "日本語/ключ/🙂"),
        ("b", "../../etc/passwd"),
        ("b", " "),
    ],
)
def test_odd_keys_are_stored_faithfully(store: ObjectStore, bucket: str, key: str) -> None:
    index = ChangeIndex(store, shards=4)
    m = mut(bucket=bucket, key=key, version_id="v\x00null", metadata={"x-amz-meta-a": "b" * 300_000})
    assert index.record(m).written == 1
    (got,) = all_entries(index)
    assert got.mutation == m


def test_shard_count_mismatch_is_an_error(store: ObjectStore) -> None:
    from changelog.errors import ConfigError

    ChangeIndex(store, shards=4, prefix="mm")
    with pytest.raises(ConfigError, match="created with shards=4"):
        ChangeIndex(store, shards=8, prefix="mm")
    with pytest.raises(ConfigError, match="mode"):
        ChangeIndex(store, shards=4, prefix="mm", mode="object")


def _record_stream(factory: StoreFactory, source: str, n: int) -> None:
    index = ChangeIndex(factory(), shards=2)
    for i in range(0, n, 25):
        index.record_many(
            [Mutation(bucket="b", key=f"{source}-{j % 7}", op=Op.WRITE, mtime_ns=j, source=source,
                      position=f"{j:08d}", seq=f"{j:08d}") for j in range(i, min(n, i + 25))]
        )


def test_concurrent_recorders_lose_nothing(store: ObjectStore, store_factory: StoreFactory) -> None:
    ChangeIndex(store, shards=2)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_stream, args=(store_factory, f"w{p}", 300)) for p in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    index = ChangeIndex(store, shards=2)
    got = sorted((e.mutation.source, e.mutation.position) for e in all_entries(index))
    assert got == sorted((f"w{p}", f"{j:08d}") for p in range(3) for j in range(300))

