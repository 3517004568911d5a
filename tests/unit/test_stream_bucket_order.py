"""Collector streams (``[scale] partitioned``) and a bucket's ``bucket_delete`` (docs/design.md
§16, ``Collector._may_commit``): the delete is recorded after every record of the bucket's
lifetime and goes to the index's last shard, whose stream commits it only once every other
stream has committed what was recorded up to it, in a pass cut off above their objects. Checked
as a consumer sees it (``read_records``: object names in order, up to the published bound), on
the embedded store with a fake clock: a stalled stream, a stream whose holder died until it is
taken over, two deletes, streams without shards, a single stream (no change), and the rule that
keeps holds from waiting on each other in a ring.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from changelog.metrics import ChangelogMetrics, make_registry
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.collector import (
    ORDER_MARGIN_US,
    Collector,
    Stream,
    behind_of,
)
from changelog.pipeline.collector_streams import prepare_streams, publish, stream_progress, streams_state
from changelog.pipeline.commit import CollectorState, Drained
from changelog.pipeline.control import COLLECTOR_ROLE, partition_lock
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease
from changelog.pipeline.logformat import parse_log_name
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.reader import LogReader, read_object
from changelog.pipeline.targets import DirectoryTarget
from rgw_module.mapping import bucket_mutation
from tests.collector_factory import collector
from tests.unit.fake_rgw import FakeClock

SHARDS = 4  # bucket_deletes go to shard 3


@dataclass
class World:
    """An index on a sqlite file, a directory target and one fake clock for all (so a lease
    left by a dead holder expires when the test says), cut into ``count`` streams."""

    tmp: Path
    count: int
    shards: int = SHARDS
    clock: FakeClock = field(default_factory=FakeClock)
    n: int = 0  # mutations recorded so far (their positions)
    closers: list[Any] = field(default_factory=list)
    partitioned: bool = True  # False: for the unpartitioned collector

    def __post_init__(self) -> None:
        self.store = SqliteStore(str(self.tmp / "index.db"), clock=self.clock.time)
        self.index = ChangeIndex(self.store, shards=self.shards, prefix="t", clock=self.clock.time)
        self.target = DirectoryTarget(self.tmp / "logs", fsync=False)
        if self.partitioned:
            prepare_streams(self.index, self.count)

    def lease(self, n: int, *, ttl: float = 3600.0, cookie: str | None = None) -> Lease:
        name = partition_lock(COLLECTOR_ROLE, n)
        return Lease(
            self.store,
            self.index.control_oid,
            name=name,
            ttl=ttl,
            cookie=cookie,
            monotonic=self.clock.monotonic,
        )

    def stream(self, n: int, *, lease: Lease | None = None, **kw: Any) -> Collector:
        """Stream ``n``'s collector under ``lease`` (a fresh one taken now if not given)."""
        if lease is None:
            lease = self.lease(n)
            assert lease.acquire()
        self.closers.append(lease.release)
        c = collector(self.index, self.target, settle=0.0, clock=self.clock.time, monotonic=self.clock.monotonic,
                      stream=Stream(n, self.count, lease), **kw)  # fmt: skip
        self.closers.append(c.step_down)
        return c

    def key_in(self, stream: int, bucket: str, *, not_last: bool = False) -> str:
        """A key of ``bucket`` whose records are in ``stream`` (with ``not_last``: not in the
        last shard, the delete's)."""
        return next(
            k
            for k in (f"k{i}" for i in range(1000))
            if self.index.shard_of(bucket, k) % self.count == stream
            and not (not_last and self.index.shard_of(bucket, k) == self.shards - 1)
        )

    def write(self, bucket: str, key: str) -> None:
        self.n += 1
        self.index.record_many([Mutation(bucket=bucket, key=key, op=Op.WRITE, mtime_ns=self.n, source="s",
                                         position=f"{self.n:010d}", seq=f"{self.n:010d}", size=1, etag="e")])  # fmt: skip

    def bucket_op(self, op: Op, bucket: str) -> None:
        self.n += 1
        self.index.record_many(
            [bucket_mutation(op, bucket=bucket, marker="m1", generation=0, time_ns=self.n)]
        )

    def step(self, *streams: Collector) -> None:
        """One second later, a pass of each of ``streams``, then the watermark published."""
        self.clock.advance(1.0)
        for c in streams:
            c.run_pass()
        publish(self.index, self.target, log_prefix="", count=self.count, now_us=int(self.clock.time() * 1e6))

    def committed(self, bucket: str | None = None) -> list[str]:
        """The records as a consumer reads them (names in order, up to the published bound):
        ``op key`` (``op`` alone for a bucket op), prefixed by the bucket when ``bucket`` is None."""
        out = []
        for _, r in LogReader(self.target).records():
            if bucket is not None and r.bucket != bucket:
                continue
            text = r.op if not r.key else f"{r.op} {r.key}"
            out.append(text if bucket is not None else f"{r.bucket}: {text}")
        return out

    def in_stream(self, n: int) -> list[str]:
        """``bucket: op key`` of every record stream ``n`` committed, bound or not (what a
        consumer reads only once every stream is through its objects' cutoffs)."""
        out = []
        for info in self.target.list(""):
            parsed = parse_log_name(info.name)
            if parsed is not None and parsed.stream == n:
                out += [
                    f"{r.bucket}: {r.op} {r.key or ''}".rstrip() for r in read_object(self.target, info.name)
                ]
        return out

    def replayed(self) -> dict[str, set[str]]:
        """What a replayer that clears a bucket on bucket_delete ends with, per bucket."""
        buckets: dict[str, set[str]] = {}
        for _, r in LogReader(self.target).records():
            keys = buckets.setdefault(r.bucket, set())
            if r.op == "bucket_delete":
                keys.clear()
            elif r.op == "write":
                keys.add(r.key or "")
            elif r.op == "delete":
                keys.discard(r.key or "")
        return buckets

    def close(self) -> None:
        for call in reversed(self.closers):
            call()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Any]:
    worlds: list[World] = []

    def make(count: int, **kw: Any) -> World:
        home = tmp_path / f"w{len(worlds)}"
        home.mkdir()
        w = World(home, count, **kw)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


def test_a_delete_waits_for_a_stalled_stream_and_sorts_after_its_records(world: Any) -> None:
    """Stream 1 drains the delete's shard; stream 0 holds an older write of the bucket and does
    not pass (slow, or its holder died). Stream 1 holds the delete back (and what follows it in
    that shard), commits the rest, keeps its watermark below the delete and says so (stats,
    status); once stream 0 committed the write, the delete is committed in a pass cut off above
    it: a replayer ends with the bucket empty."""
    w = world(2)
    s0, s1 = w.stream(0), w.stream(1)
    w.step(s0, s1)
    old = w.key_in(0, "b")
    w.write("b", old)
    w.clock.advance(0.5)
    w.bucket_op(Op.BUCKET_DELETE, "b")
    t_delete = int(w.clock.time() * 1e6)
    w.clock.advance(0.5)
    after_in_last = next(k for k in (f"x{i}" for i in range(1000)) if w.index.shard_of("o", k) == SHARDS - 1)
    after_elsewhere = w.key_in(1, "o", not_last=True)
    w.write("o", after_in_last)  # another bucket, recorded after the delete, in the delete's shard
    w.write("o", after_elsewhere)  # and in stream 1's other shard
    for _ in range(3):
        w.step(s1)  # stream 0 stalls
    assert w.committed() == []  # stream 0 is behind: a consumer sees nothing of stream 1 yet
    # Stream 1 committed all but the delete and what follows it in its shard.
    assert w.in_stream(1) == [f"o: write {after_elsewhere}"]
    assert w.index.first_entry_us(SHARDS - 1) == t_delete
    stats = s1.stats()
    assert stats["bucket_delete_holds"] == 3
    assert stats["bucket_delete_held"] == t_delete / 1e6
    text = generate_latest(make_registry(ChangelogMetrics(collector=s1), process=False)).decode()
    exported = {x.name: x.value for f in text_string_to_metric_families(text) for x in f.samples}
    assert exported["rgw_changelog_collector_bucket_delete_holds_total"] == 3
    assert exported["rgw_changelog_collector_bucket_delete_held_timestamp_seconds"] == t_delete / 1e6
    state = streams_state(w.index)
    part = state["by_partition"]["1"]  # type: ignore[index]
    assert part["held_bucket_delete"] is not None and part["drained"] == part["held_bucket_delete"]
    s1_state, s1_done = stream_progress(w.index, 2)[1]
    assert s1_done == t_delete and s1_state.watermark_us <= t_delete < s1_state.through_us
    w.step(s0, s1)  # stream 0 commits the write; stream 1 cuts off with it: not above it yet
    w.step(s0, s1)
    assert w.committed("b") == [f"write {old}", "bucket_delete"]
    assert w.committed("o") == [f"write {after_elsewhere}", f"write {after_in_last}"]
    assert w.replayed()["b"] == set()
    assert s1.stats()["bucket_delete_held"] is None
    names = [obj.name for obj, r in LogReader(w.target).records() if r.bucket == "b"]
    write_obj, delete_obj = (parse_log_name(n) for n in names)
    assert write_obj is not None and delete_obj is not None
    assert delete_obj.cutoff_us > write_obj.cutoff_us  # not a tie that seq order would break
    print(f"delete held for {s1.stats()['bucket_delete_holds']} passes")


def test_a_dead_holders_stream_keeps_the_delete_back_until_it_is_taken_over(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Stream 0's holder dies with the old lifetime's write in its shards, its lease left in
    place. The delete waits through every pass of stream 1 meanwhile (said once at INFO, after
    a lease TTL); nobody takes stream 0 before its lease expires; once another holder took it
    over and passed, the delete is committed after the write."""
    w = world(2)
    dead_lease = w.lease(0, ttl=30.0, cookie="dead-holder")
    assert dead_lease.acquire()
    dead = w.stream(0, lease=dead_lease)
    s1 = w.stream(1, lease_ttl=30.0)
    w.step(dead, s1)
    old = w.key_in(0, "b")
    w.write("b", old)
    w.clock.advance(0.5)
    w.bucket_op(Op.BUCKET_DELETE, "b")
    # From here stream 0's holder is gone: it never passes or renews again.
    caplog.set_level(logging.INFO, logger="changelog.pipeline.collector")
    taker_lease = w.lease(0, cookie="taker")
    for _ in range(3):
        w.clock.advance(4.0)
        w.step(s1)
    assert not taker_lease.acquire()  # 15 s after the holder's last renewal: not expired yet
    for _ in range(5):
        w.clock.advance(4.0)
        w.step(s1)
    assert w.committed("b") == []
    held = [r for r in caplog.records if "holds back the bucket_delete" in r.getMessage()]
    assert len(held) == 1 and "streams [0]" in held[0].getMessage()  # once, for 8 passes
    assert s1.stats()["bucket_delete_holds"] == 8
    assert taker_lease.acquire()  # 35 s: expired, taken over
    taker = w.stream(0, lease=taker_lease)
    w.step(taker, s1)
    w.step(taker, s1)
    assert w.committed("b") == [f"write {old}", "bucket_delete"]
    assert w.replayed()["b"] == set()
    assert [r for r in caplog.records if "commits the bucket_delete" in r.getMessage()]


def test_two_deletes_wait_together_and_each_sorts_after_its_buckets_records(world: Any) -> None:
    """Two buckets deleted while stream 0, with a write of each, stalls: both deletes wait (the
    first stops its shard, the second is behind it), then both are committed after the writes,
    each bucket's records in order; the buckets' records recorded after their deletes in other
    streams (a new lifetime, once the follower stopped waiting) stay after them."""
    w = world(2)
    s0, s1 = w.stream(0), w.stream(1)
    w.step(s0, s1)
    a, b = w.key_in(0, "a"), w.key_in(0, "b")
    w.write("a", a)
    w.write("b", b)
    w.clock.advance(0.5)
    w.bucket_op(Op.BUCKET_DELETE, "a")
    w.clock.advance(0.5)
    w.bucket_op(Op.BUCKET_DELETE, "b")
    w.step(s1)
    w.step(s1)
    assert w.committed() == []
    w.step(s0, s1)
    w.clock.advance(0.5)
    w.bucket_op(Op.BUCKET_CREATE, "a")
    again = w.key_in(0, "a")
    w.write("a", again)
    w.step(s0, s1)
    w.step(s0, s1)
    assert w.committed("a") == [f"write {a}", "bucket_delete", "bucket_create", f"write {again}"]
    assert w.committed("b") == [f"write {b}", "bucket_delete"]
    assert w.replayed() == {"a": {again}, "b": set()}


def test_streams_without_shards_are_not_waited_for(world: Any) -> None:
    """Six streams on four shards: streams 4 and 5 own no shard and never pass here; the delete
    (shard 3, stream 3) waits for streams 0 to 2 only."""
    w = world(6)
    streams = [w.stream(n) for n in range(4)]
    w.step(*streams)
    old = w.key_in(1, "b")
    w.write("b", old)
    w.clock.advance(0.5)
    w.bucket_op(Op.BUCKET_DELETE, "b")
    w.step(streams[3])
    assert streams[3].stats()["bucket_delete_holds"] == 1
    w.step(*streams)
    w.step(*streams)
    assert streams[3].stats()["bucket_delete_held"] is None
    assert w.in_stream(3) == ["b: bucket_delete"]
    # Streams 4 and 5 only move the readers' bound (every stream passes in a service).
    w.step(*streams, w.stream(4), w.stream(5))
    assert w.committed("b") == [f"write {old}", "bucket_delete"]


def _script(w: World) -> None:
    """The same mutations for both sides of the single-stream comparison."""
    rng = random.Random(5)
    for bucket in ("a", "b", "c"):
        w.bucket_op(Op.BUCKET_CREATE, bucket)
    for i in range(40):
        w.write(rng.choice("abc"), f"k{rng.randrange(12)}")
        if i == 25:
            w.bucket_op(Op.BUCKET_DELETE, "b")
        w.clock.advance(0.01)


def test_a_single_stream_commits_a_delete_at_once_as_the_unpartitioned_collector_does(world: Any) -> None:
    """One stream has nobody to wait for: the delete is committed in the pass that reaches it,
    and the records come out in the unpartitioned collector's order."""
    one = world(1)
    s = one.stream(0)
    _script(one)
    one.step(s)
    assert s.stats()["bucket_delete_holds"] == 0
    plain_world = world(1, partitioned=False)
    plain = collector(plain_world.index, plain_world.target, settle=0.0, clock=plain_world.clock.time)
    assert plain.acquire()
    plain_world.closers.append(plain.step_down)
    _script(plain_world)
    plain_world.clock.advance(1.0)
    plain.run_pass()
    assert one.committed() == plain_world.committed()
    assert "b: bucket_delete" in one.committed()


def test_holds_never_wait_on_each_other_in_a_ring() -> None:
    """``behind_of``, the rule a stream holding a delete recorded at T applies to the others:
    a stream is through T once it committed what was recorded up to T and ``ORDER_MARGIN_US``
    past it. Every bucket_delete goes to one shard today, so only one stream ever holds one,
    but the rule must not deadlock if two did: of streams that hold deletes (the rest through
    every one of them), the hold lowest by (time, stream) is never behind another, also for
    holds closer together than the margin, and it goes first."""
    t = 1_000_000_000
    margin = ORDER_MARGIN_US

    def holding(at: int) -> tuple[Drained, CollectorState]:
        return Drained(at, at), CollectorState(through_us=at + 2 * margin, watermark_us=at - 1)

    def through(at: int) -> tuple[Drained, CollectorState]:
        return Drained(at), CollectorState(through_us=at, watermark_us=at)

    assert behind_of(t, 1, {0: through(t + margin + 1)}) == []
    assert behind_of(t, 1, {0: through(t + margin)}) == [0]  # within the margin: not yet
    assert behind_of(t, 1, {0: through(t + margin + 1), 2: holding(t)}) == []  # same time, higher
    assert behind_of(t, 2, {0: through(t + margin + 1), 1: holding(t)}) == [1]  # same time, lower
    assert behind_of(t, 1, {2: holding(t + 5)}) == []  # a later hold, within the margin
    assert behind_of(t + 5, 2, {1: holding(t)}) == [1]  # an earlier one
    # A stream whose record is missing (last run before it existed) counts by its watermark.
    assert behind_of(t, 1, {0: (Drained(), CollectorState(watermark_us=t + margin + 1))}) == []
    assert behind_of(t, 1, {0: (Drained(), CollectorState(watermark_us=t))}) == [0]
    rng = random.Random(3)
    for _ in range(2000):
        count = rng.randrange(2, 7)
        holds = {n: t + rng.randrange(0, 3 * margin, margin // 2) for n in range(count) if rng.random() < 0.6}
        if not holds:
            continue
        top = max(holds.values())
        views = {n: holding(holds[n]) if n in holds else through(top + margin + 1) for n in range(count)}
        first = min(holds, key=lambda n: (holds[n], n))
        others = {m: v for m, v in views.items() if m != first}
        assert behind_of(holds[first], first, others) == [], (holds, first)
        for m in holds.keys() - {first}:  # every other hold waits, for one that is lower
            rest = {k: v for k, v in views.items() if k != m}
            assert behind_of(holds[m], m, rest), (holds, m)
