"""Review of the follower's sealed log generations and of buckets deleted and created again
(``rgw_module.generations``, ``bilog_reader.read_sealed``, ``bucket_tracker.resolve``), on the
fake radosgw world of ``test_follower_unit``: restarts and crashes around the points where these
paths keep state only in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from changelog.pipeline.collector import Stream
from changelog.pipeline.collector_streams import prepare_streams, publish
from changelog.pipeline.control import COLLECTOR_ROLE, partition_lock
from changelog.pipeline.lease import Lease
from changelog.pipeline.reader import read_records
from changelog.pipeline.targets import DirectoryTarget
from tests.collector_factory import collector
from tests.unit import test_follower_unit as follower_unit
from tests.unit.test_follower_unit import (
    Crash,
    World,
    caught_up,
    committed_then_waiting,
    fresh_bucket,
    start_follower,
)


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """``test_follower_unit``'s world of a fake radosgw, an index and followers."""
    yield from follower_unit.make_world.__wrapped__(tmp_path)  # type: ignore[attr-defined]


def test_a_restart_while_a_recreated_bucket_waits_loses_none_of_its_records(
    make_world: Callable[..., World], tmp_path: Path, cleanup: list[Callable[[], object]]
) -> None:
    """The data log's news of the new lifetime's shards is consumed while the follower waits
    (the shards are dropped with the tombstone's); a follower that restarts (or another that
    takes the lease) after the collector cut off past the delete must still read them."""
    w = make_world("reef")
    rgw = w.rgw
    f1 = start_follower(w, recreated_bucket_wait=600.0)
    fresh_bucket(w, f1, "re", shards=2)
    rgw.put("re", "a")
    caught_up(w, f1)
    target = DirectoryTarget(tmp_path / "logs", fsync=False)
    c = collector(w.index, target, settle=0.0, clock=w.clock.time)
    assert c.acquire()
    cleanup.append(c.step_down)
    rgw.delete("re", "a")
    caught_up(w, f1)
    w.clock.advance(1.0)
    c.run_pass()
    rgw.delete_bucket("re")
    w.clock.advance(1.0)
    rgw.create_bucket("re", shards=2)
    rgw.put("re", "b")
    for _ in range(3):
        w.clock.advance(5.0)
        assert not f1.sweep().complete  # waiting for the collector
    f1.close()  # killed while it waits
    w.clock.advance(1.0)
    c.run_pass()  # the delete committed
    f2 = start_follower(w, recreated_bucket_wait=600.0)
    caught_up(w, f2)
    w.clock.advance(120.0)  # every shard cooled: nothing more will make it read them
    caught_up(w, f2)
    assert committed_then_waiting(w, target, "re") == [
        "bucket_create", "write a", "delete a", "bucket_delete", "bucket_create", "write b"
    ]


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Calls to make at the end of a test that failed or not (collectors' and leases' renewals
    stopped before ``make_world`` closes the index)."""
    calls: list[Callable[[], object]] = []
    yield calls
    for call in reversed(calls):
        call()


def committed(target: DirectoryTarget, bucket: str) -> list[str]:
    """``bucket``'s records in committed log order: ``bucket_create``, ``write b``..."""
    return [r.op if not r.key else f"{r.op} {r.key}" for r in read_records(target) if r.bucket == bucket]


def test_a_recreated_bucket_waits_for_its_delete_to_be_committed_not_only_cut_off(
    make_world: Callable[..., World], tmp_path: Path, cleanup: list[Callable[[], object]]
) -> None:
    """A collector pass persists its cutoff before it drains, but a pass that dies while reading
    (a crash, a lost lease, a target failing mid-upload) commits nothing: the next pass, with a
    later cutoff, drains the shards in order, the new bucket_create (first shard) before the old
    bucket_delete (last shard), and a replayer ends with the new lifetime deleted."""
    w = make_world("reef")
    rgw = w.rgw
    target = DirectoryTarget(tmp_path / "logs", fsync=False)
    armed = {"crash": False}

    def hook(step: str) -> None:
        if step == "read" and armed["crash"]:
            armed["crash"] = False
            raise Crash(step)

    c = collector(w.index, target, settle=0.0, clock=w.clock.time, fault_hook=hook)
    assert c.acquire()
    cleanup.append(c.step_down)
    f = start_follower(w, recreated_bucket_wait=600.0)
    fresh_bucket(w, f, "re", shards=2)
    rgw.put("re", "a")
    rgw.delete("re", "a")
    caught_up(w, f)
    w.clock.advance(1.0)
    c.run_pass()
    rgw.delete_bucket("re")
    caught_up(w, f)  # bucket_delete recorded
    w.clock.advance(1.0)
    rgw.create_bucket("re", shards=2)
    rgw.put("re", "b")
    w.clock.advance(1.0)
    armed["crash"] = True
    with pytest.raises(Crash):
        c.run_pass()  # cut off past the delete, then died while reading: nothing committed
    for _ in range(3):
        w.clock.advance(5.0)
        f.sweep()
    w.clock.advance(5.0)
    c.run_pass()
    caught_up(w, f)
    w.clock.advance(5.0)
    c.run_pass()
    ops = committed(target, "re")
    assert ops == ["bucket_create", "write a", "delete a", "bucket_delete", "bucket_create", "write b"]


def test_with_collector_streams_an_old_lifetimes_record_is_not_committed_after_its_bucket_delete(
    make_world: Callable[..., World], tmp_path: Path, cleanup: list[Callable[[], object]]
) -> None:
    """[scale] partitioned: the bucket_delete (index shard 3) is in another stream than the old
    lifetime's write of ``k`` (its delete died with the bucket's log, a known limit that the
    bucket_delete covers). The write's stream is stalled (its holder died, or is slow) while the
    delete's stream passes; taken over, it commits the write with a later cutoff. Were the delete
    committed already, a replayer would bring ``k`` back into the bucket's next lifetime: the
    delete's stream holds it back until the write's stream has committed what was recorded
    before it, and commits it in a pass cut off above that one's objects. The follower, which
    starts the new lifetime once the delete is committed, waits meanwhile."""
    w = make_world("reef")
    rgw = w.rgw
    target = DirectoryTarget(tmp_path / "logs", fsync=False)
    count = 2
    prepare_streams(w.index, count)
    leases = [
        Lease(w.index.store, w.index.control_oid, name=partition_lock(COLLECTOR_ROLE, n), ttl=3600.0)
        for n in range(count)
    ]
    assert all(lease.acquire() for lease in leases)
    cleanup.extend(lease.release for lease in leases)
    streams = [
        collector(w.index, target, settle=0.0, clock=w.clock.time, stream=Stream(n, count, leases[n]))
        for n in range(count)
    ]
    cleanup.extend(s.step_down for s in streams)

    def passes(*ns: int) -> None:
        w.clock.advance(1.0)
        for n in ns:
            streams[n].run_pass()
        publish(w.index, target, log_prefix="", count=count, now_us=int(w.clock.time() * 1_000_000))

    f = start_follower(w, recreated_bucket_wait=600.0)
    fresh_bucket(w, f, "re", shards=2)
    key = next(k for k in (f"k{i}" for i in range(100)) if w.index.shard_of("re", k) % count == 0)
    passes(0, 1)
    rgw.put("re", key)
    caught_up(w, f)  # the write recorded (stream 0)
    rgw.delete("re", key)
    rgw.delete_bucket("re")  # before the follower read the delete: lost with the log
    caught_up(w, f)  # bucket_delete recorded (stream 1)
    passes(1)  # stream 0 stalls
    rgw.create_bucket("re", shards=2)
    rgw.put("re", "new")
    for _ in range(3):
        w.clock.advance(1.0)
        f.sweep()
    passes(0, 1)
    passes(0, 1)
    caught_up(w, f)  # the delete committed: the new lifetime recorded
    passes(0, 1)
    objects: set[str] = set()
    for r in read_records(target):
        if r.bucket != "re":
            continue
        if r.op == "bucket_delete":
            objects.clear()
        elif r.op == "write":
            objects.add(r.key or "")
        elif r.op == "delete":
            objects.discard(r.key or "")
    assert objects == {"new"}


def test_a_recreated_bucket_waits_while_a_collector_that_ran_just_now_is_taken_over(
    make_world: Callable[..., World], tmp_path: Path, cleanup: list[Callable[[], object]]
) -> None:
    """The collector that drains the delete's shard died (its serve killed): its lease expires
    one TTL later, and another serve takes it at its next round. In between nobody holds it, but
    the collector that runs next drains the shards in order, the new bucket_create before the
    old bucket_delete: seen on the lab with two partitioned serves, a replayer ended with the
    new lifetime's objects deleted. The follower waits while a collector cut off within
    ``recreated_bucket_wait``, not only while one holds its lease."""
    w = make_world("reef")
    rgw = w.rgw
    f = start_follower(w, recreated_bucket_wait=600.0)
    fresh_bucket(w, f, "re", shards=2)
    rgw.put("re", "a")
    caught_up(w, f)
    rgw.delete("re", "a")
    caught_up(w, f)
    target = DirectoryTarget(tmp_path / "logs", fsync=False)
    dead = collector(w.index, target, settle=0.0, clock=w.clock.time)
    assert dead.acquire()
    w.clock.advance(1.0)
    dead.run_pass()  # its last pass: then its serve is killed (its lease gone with it)
    dead.step_down()
    rgw.delete_bucket("re")
    w.clock.advance(1.0)
    rgw.create_bucket("re", shards=2)
    rgw.put("re", "b")
    for _ in range(3):
        w.clock.advance(5.0)
        assert not f.sweep().complete  # nobody holds the lease, but a collector will be back
    assert committed_then_waiting(w, target, "re") == ["bucket_create", "write a", "delete a", "bucket_delete"]
    taker = collector(w.index, target, settle=0.0, clock=w.clock.time)  # taken over
    assert taker.acquire()
    cleanup.append(taker.step_down)
    w.clock.advance(1.0)
    taker.run_pass()
    caught_up(w, f)
    assert committed_then_waiting(w, target, "re") == [
        "bucket_create", "write a", "delete a", "bucket_delete", "bucket_create", "write b"
    ]


def test_a_recreated_bucket_does_not_wait_for_a_collector_gone_for_longer_than_the_wait(
    make_world: Callable[..., World], tmp_path: Path
) -> None:
    w = make_world("reef")
    rgw = w.rgw
    f = start_follower(w, recreated_bucket_wait=60.0)
    fresh_bucket(w, f, "re", shards=2)
    rgw.put("re", "a")
    caught_up(w, f)
    target = DirectoryTarget(tmp_path / "logs", fsync=False)
    gone = collector(w.index, target, settle=0.0, clock=w.clock.time)
    assert gone.acquire()
    w.clock.advance(1.0)
    gone.run_pass()
    gone.step_down()
    w.clock.advance(120.0)  # the collector has not run since
    rgw.delete("re", "a")
    caught_up(w, f)
    rgw.delete_bucket("re")
    rgw.create_bucket("re", shards=2)
    rgw.put("re", "b")
    w.clock.advance(1.0)
    assert f.sweep().complete
    assert committed_then_waiting(w, target, "re") == [
        "bucket_create", "write a", "delete a", "bucket_delete", "bucket_create", "write b"
    ]
