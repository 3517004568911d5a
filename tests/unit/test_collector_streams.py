"""Collector streams (``[scale] partitioned``, ``changelog.pipeline.collector_streams``) on the
embedded store (SqliteStore) with directory and S3 (moto) targets: instances drain disjoint
streams; every record is committed once and read once through one single-name checkpoint, per
key in order; a process dying at each fault step of a stream is recovered by another instance
under the same names; the reader never yields a stream object above the published
``readable_until_us``; unpartitioned names and stream names are read side by side, both ways
across a switch of the setting; the stream count is fixed; status and flush cover every stream.

A "process" is an instance on its own store handle; one whose clock is 100 s ahead sees the
leases of a dead one expired (as ``test_collector``'s takeovers do).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from test_collector import Crash, crash_at, dead

from changelog.config import CollectorConfig
from changelog.errors import LockBusy, PermanentError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.collector import FAULT_STEPS, Collector, CollectorState, Stream
from changelog.pipeline.collector_streams import StreamedCollector, prepare_streams, publish, streams_state
from changelog.pipeline.control import (
    COLLECTOR_PENDING_PREFIX,
    COLLECTOR_ROLE,
    COLLECTOR_STATE_KEY,
    partition_lock,
)
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease
from changelog.pipeline.logformat import LogRecord, log_name, parse_log_name
from changelog.pipeline.loop import Clocks
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.reader import LogReader, list_logs, read_object, read_watermark
from changelog.pipeline.store import omap_iter
from changelog.pipeline.targets import DirectoryTarget, S3Target, Target
from changelog.status import collector_doc

moto = pytest.importorskip("moto")

SHARDS = 8
STREAMS = 4
KEYS = 24  # few keys: each gets many mutations, whose order the logs must keep


class Env:
    """One index in a sqlite file, a target, the mutations recorded (in order), and a consumer
    that resumes from one name, as every consumer does, after each step of a test."""

    def __init__(self, tmp: Path, target: Target) -> None:
        self.path = str(tmp / "index.db")
        self.target = target
        self.index = self.open_index()
        self.recorded: list[Mutation] = []
        self.consumer = LogReader(target, prefix="logs")
        self.consumed: list[LogRecord] = []
        self.rng = random.Random(17)
        self.count = STREAMS  # the streams the index is cut into

    def open_index(self, offset: float = 0.0) -> ChangeIndex:
        store = SqliteStore(self.path, clock=lambda: time.time() + offset)
        return ChangeIndex(store, shards=SHARDS, prefix="t", clock=lambda: time.time() + offset)

    def record(self, n: int, index: ChangeIndex | None = None) -> None:
        start = len(self.recorded)
        ms = [
            Mutation(bucket=f"b{k % 3}", key=f"k{k}", op=Op.WRITE if i % 5 else Op.DELETE,
                     mtime_ns=1_795_000_000_000_000_000 + i, source="src", position=f"{i:010d}",
                     seq=f"{i:010d}", size=i if i % 5 else None, etag="e" if i % 5 else None)
            for i in range(start, start + n)
            for k in [self.rng.randrange(KEYS)]
        ]  # fmt: skip
        (index or self.index).record_many(ms)
        self.recorded += ms

    def config(self, **kw: Any) -> CollectorConfig:
        opts: dict[str, Any] = dict(
            settle=0.0,
            lease_ttl=5.0,
            interval=0.02,
            backoff_base=0.01,
            backoff_max=0.05,
            roll_entries=60,
            roll_bytes=4 << 20,
            page=25,
            trim_batch=20,
            part_bytes=1024,
        )
        opts.update(kw)
        return CollectorConfig.unchecked(**opts)

    def streamed(
        self,
        *,
        offset: float = 0.0,
        hook: Callable[[str], None] | None = None,
        count: int = STREAMS,
        compression: str = "none",
        **kw: Any,
    ) -> StreamedCollector:
        return StreamedCollector(self.open_index(offset), self.target, self.config(**kw), count=count,
                                 log_prefix="logs", compression=compression, clocks=Clocks(clock=lambda: time.time() + offset),
                                 fault_hook=hook)  # fmt: skip

    def plain(
        self, *, offset: float = 0.0, hook: Callable[[str], None] | None = None, **kw: Any
    ) -> Collector:
        return Collector(self.open_index(offset), self.target, self.config(**kw), log_prefix="logs",
                         clocks=Clocks(clock=lambda: time.time() + offset), fault_hook=hook)  # fmt: skip

    def consume(self) -> list[str]:
        """The consumer reads on from its checkpoint; the names of the objects it read. Each
        is at or below the bound of the watermark published now (the bound only grows)."""
        before = len(self.consumed)
        names: list[str] = []
        for obj, rec in self.consumer.records():
            self.consumed.append(rec)
            if not names or names[-1] != obj.name:
                names.append(obj.name)
        wm = read_watermark(self.target, prefix="logs")
        for name in names:
            parsed = parse_log_name(name)
            assert parsed is not None
            if parsed.stream is not None:
                assert wm is not None and wm.readable_until_us is not None
                assert parsed.cutoff_us <= wm.readable_until_us, (name, wm)
        assert len(self.consumed) >= before
        return names

    def committed(self) -> list[tuple[str, LogRecord]]:
        """Every record of every object, object by object (not through the reader's dedup)."""
        out = []
        for info in self.target.list("logs/"):
            if parse_log_name(info.name) is not None:
                out += [(info.name, r) for r in read_object(self.target, info.name)]
        return out

    def check(self) -> None:
        """Every recorded mutation committed once, in the stream of its shard, read once by the
        consumer, each key's records in recording order; the index and pending records empty."""
        want = {m.event_id: m for m in self.recorded}
        committed = self.committed()
        ids = Counter(r.id for _, r in committed)
        assert max(ids.values(), default=1) == 1, "an id committed twice"
        assert set(ids) == set(want)
        for name, r in committed:
            parsed = parse_log_name(name)
            assert parsed is not None
            if parsed.stream is not None:
                assert self.index.shard_of(r.bucket, r.key or "") % self.count == parsed.stream, name
        self.consume()
        got = Counter(r.id for r in self.consumed)
        assert max(got.values(), default=1) == 1 and self.consumer.skipped == 0, (
            "the consumer read an id twice"
        )
        assert set(got) == set(want), f"{len(set(want) - set(got))} records never read by the consumer"
        per_key: dict[str, list[str]] = {}
        for r in self.consumed:
            per_key.setdefault(r.key or "", []).append(r.id)
        for m in self.recorded:
            assert per_key[m.key].pop(0) == m.event_id, f"{m.key}: records out of order"
        assert sum(self.index.stats(s).entries for s in range(SHARDS)) == 0
        assert not list(omap_iter(self.index.store, self.index.control_oid, prefix=COLLECTOR_PENDING_PREFIX))


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 16)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, DirectoryTarget(tmp_path / "target"))


@pytest.fixture(params=["dir", "s3"])
def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "dir":
        yield Env(tmp_path, DirectoryTarget(tmp_path / "target"))
        return
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="changelog-test")
        yield Env(tmp_path, S3Target("changelog-test", "root/", client=client, min_part_bytes=16))


def kill(sc: StreamedCollector) -> None:
    """What is left of an instance that died: its leases stay until they expire."""
    sc.partitions._renewer.stop()
    for c in sc._streams.values():
        dead(c)


def rounds(*instances: StreamedCollector, n: int = 3, env: Env | None = None) -> None:
    for _ in range(n):
        for sc in instances:
            sc.step()
        if env is not None:
            env.consume()


# --------------------------------------------------------------------------- names and state


def test_stream_names_sort_by_cutoff_first_and_parse_beside_the_old_ones():
    old = log_name("logs", 1_700_000_000_000_001, 7, "gzip")
    new = log_name("logs", 1_700_000_000_000_001, 3, "gzip", stream=2)
    later = log_name("logs", 1_700_000_000_000_002, 1, "none", stream=0)
    assert new.endswith("-0000000003-p002.jsonl.gz") and old.endswith("-0000000007.jsonl.gz")
    p_old, p_new = parse_log_name(old), parse_log_name(new)
    assert p_old is not None and p_old.stream is None and p_old.seq == 7
    assert p_new is not None and p_new.stream == 2 and p_new.seq == 3 and p_new.cutoff_us == p_old.cutoff_us
    assert sorted([later, old, new]) == [new, old, later]
    assert parse_log_name(new.replace("-p002", "-p2")) is None


def test_unpartitioned_state_is_stored_as_before():
    state = CollectorState(last_cutoff_us=5, last_object="x", watermark_us=4, generation=2)
    assert orjson.loads(state.encode()) == {
        "last_cutoff_us": 5,
        "last_object": "x",
        "watermark_us": 4,
        "generation": 2,
    }
    streamed = CollectorState(last_cutoff_us=5, through_us=5)
    assert CollectorState.decode(streamed.encode()) == streamed


# --------------------------------------------------------------------------- sharing


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_two_instances_drain_disjoint_streams_every_record_once_in_key_order(any_env, compression):
    env = any_env
    a, b = env.streamed(compression=compression), env.streamed(compression=compression)
    env.record(300)
    rounds(a, b, n=4, env=env)
    held_a, held_b = set(a.partitions.held()), set(b.partitions.held())
    assert held_a.isdisjoint(held_b) and held_a | held_b == set(range(STREAMS)), (held_a, held_b)
    assert len(held_a) == len(held_b) == 2
    for _ in range(3):
        env.record(150)
        rounds(a, b, n=1, env=env)
    rounds(a, b, n=2)
    names = [name for name, _ in env.committed()]
    streams = {parse_log_name(n).stream for n in names}  # type: ignore[union-attr]
    assert streams == set(range(STREAMS))
    # Each stream numbers its own objects 1, 2, 3 ...
    for s in range(STREAMS):
        seqs = sorted({parse_log_name(n).seq for n in names if parse_log_name(n).stream == s})  # type: ignore[union-attr]
        assert seqs == list(range(1, len(seqs) + 1))
    env.check()
    doc = streams_state(env.index)
    assert doc["partitioned"] is True and doc["unheld"] == []
    assert sorted(sum(doc["holders"].values(), [])) == list(range(STREAMS))  # type: ignore[arg-type]
    assert {a.instance, b.instance} == set(doc["holders"])  # type: ignore[arg-type]
    wm = read_watermark(env.target, prefix="logs")
    assert wm is not None and wm.readable_until_us and wm.complete_until_us
    # `status --json` (collector part): who holds which stream; every instance's metrics know
    # the combined watermark, not only the publisher's.
    status = collector_doc(env.index)
    assert status["streams"]["holders"] == doc["holders"]  # type: ignore[index]
    assert a.stats()["complete_until"] and b.stats()["complete_until"]
    print(f"\nstreams: {len(names)} objects from {STREAMS} streams, {len(env.recorded)} records")
    a.close()
    b.close()


def test_a_newcomer_gets_its_share_and_a_closed_instance_hands_over(env):
    a = env.streamed()
    env.record(200)
    rounds(a, n=2, env=env)
    assert a.partitions.held() == list(range(STREAMS))
    b = env.streamed()
    env.record(200)
    rounds(a, b, n=3, env=env)
    assert len(a.partitions.held()) == len(b.partitions.held()) == 2
    a.close()
    env.record(100)
    rounds(b, n=2, env=env)
    assert b.partitions.held() == list(range(STREAMS))
    env.check()
    b.close()


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("step", [s for s in FAULT_STEPS if not s.startswith("recover.")])
def test_a_kill_at_each_step_of_a_stream_is_recovered_by_another_instance(any_env, step):
    env = any_env
    env.record(400)
    a = env.streamed(hook=crash_at(step, 2))
    with pytest.raises(Crash):
        rounds(a, n=3, env=env)
    kill(a)
    env.consume()
    pending = [p.name for p in Collector.read_state(env.index)[1]]
    # Another instance, its clock 100 s on: the dead one's leases and membership have expired.
    b = env.streamed(offset=100.0)
    env.record(100, b.index)
    rounds(b, n=2, env=env)
    assert b.partitions.held() == list(range(STREAMS))
    # A pending commit is finished under its name (rebuilt if it never became visible).
    names = {name for name, _ in env.committed()}
    assert set(pending) <= names
    env.check()
    b.close()


@pytest.mark.parametrize("step", ["recover.upload", "recover.trim"])
def test_a_kill_during_recovery_is_recovered_by_a_third_instance(env, step):
    env.record(300)
    a = env.streamed(hook=crash_at("pending"))
    with pytest.raises(Crash):
        rounds(a, n=2)
    kill(a)
    b = env.streamed(offset=100.0, hook=crash_at(step))
    with pytest.raises(Crash):
        rounds(b, n=2, env=env)
    kill(b)
    c = env.streamed(offset=200.0)
    rounds(c, n=2, env=env)
    env.check()
    c.close()


def test_the_reader_stops_below_a_stream_whose_object_is_pending(env):
    """Stream 0 dies with an object pending (not visible); stream 1 goes on and commits objects
    with later cutoffs. The consumer must not read them before stream 0's object is recovered,
    or its one-name checkpoint would pass it for good."""
    count = env.count = 2
    prepare_streams(env.index, count)
    leases = [Lease(env.index.store, env.index.control_oid, name=partition_lock(COLLECTOR_ROLE, n), ttl=5.0,
                    cookie=f"t{n}") for n in range(count)]  # fmt: skip
    assert all(lease.acquire() for lease in leases)

    def stream(n: int, hook: Callable[[str], None] | None = None) -> Collector:
        return Collector(
            env.index,
            env.target,
            env.config(),
            log_prefix="logs",
            fault_hook=hook,
            stream=Stream(n, count, leases[n]),
        )

    def pub() -> None:
        publish(env.index, env.target, log_prefix="logs", count=count, now_us=int(time.time() * 1e6))

    s0, s1 = stream(0), stream(1)
    env.record(200)
    s0.run_pass()
    s1.run_pass()
    pub()
    first = env.consume()
    assert first
    env.record(200)
    s0 = stream(0, crash_at("commit"))
    with pytest.raises(Crash):
        s0.run_pass()
    dead(s0)
    [stuck] = Collector.read_state(env.index)[1]
    for _ in range(3):
        env.record(50)
        s1.run_pass()
        pub()
        assert env.consume() == []
    later = [n for n in (i.name for i in env.target.list("logs/")) if parse_log_name(n) and n > stuck.name]
    assert later, "stream 1 committed nothing above the pending object"
    wm = read_watermark(env.target, prefix="logs")
    assert wm is not None and wm.readable_until_us is not None and wm.readable_until_us < stuck.cutoff_us
    # Listing from the start: still nothing at or above the pending object's cutoff.
    assert all(o.cutoff_us < stuck.cutoff_us for o in list_logs(env.target, prefix="logs"))
    s0 = stream(0)
    assert s0.run_pass().recovered == 1
    s1.run_pass()
    pub()
    assert stuck.name in env.consume()
    s0.close()
    s1.close()
    for lease in leases:
        lease.release()
    env.check()


# --------------------------------------------------------------------------- switching


def test_old_unpartitioned_logs_are_read_beside_the_streams_both_ways(env):
    plain = env.plain(hook=crash_at("complete", 3))
    env.record(300)
    with pytest.raises(Crash):
        plain.run_pass()
    dead(plain)
    env.consume()
    legacy_pending = Collector.read_state(env.index)[1]
    assert len(legacy_pending) == 1 and parse_log_name(legacy_pending[0].name).stream is None  # type: ignore[union-attr]
    # Partitioned now: stream 0 finishes the unpartitioned collector's commit first.
    a = env.streamed(offset=100.0)
    env.record(200, a.index)
    rounds(a, n=2, env=env)
    legacy_cutoff = CollectorState.decode(env.index.store.omap_get(
        env.index.control_oid, [COLLECTOR_STATE_KEY])[COLLECTOR_STATE_KEY]).last_cutoff_us  # fmt: skip
    stream_names = [n for n, _ in env.committed() if parse_log_name(n).stream is not None]  # type: ignore[union-attr]
    assert stream_names and all(parse_log_name(n).cutoff_us > legacy_cutoff for n in stream_names)  # type: ignore[union-attr]
    # While a stream is held, an unpartitioned collector does not start beside it.
    back = env.plain(offset=100.0)
    with pytest.raises(LockBusy):
        back.run_pass()
    a.close()
    # Back to unpartitioned: its cutoffs go on above the streams'.
    env.record(100, back.index)
    back.run_pass()
    back.close()
    names = [n for n, _ in env.committed()]
    newest = max(names, key=lambda n: parse_log_name(n).cutoff_us)  # type: ignore[union-attr]
    assert parse_log_name(newest).stream is None  # type: ignore[union-attr]
    env.check()


def test_the_stream_count_is_fixed_once_used(env):
    prepare_streams(env.index, 4)
    prepare_streams(env.index, 4)
    with pytest.raises(PermanentError, match="cut into 4 streams"):
        prepare_streams(env.index, 3)
    sc = env.streamed(count=2)
    with pytest.raises(PermanentError):
        sc.step()
    sc.close()


# --------------------------------------------------------------------------- flush, stats


def test_flush_on_one_instance_flushes_every_stream(env):
    """Two instances in their service loops with a long settle window: a flush asked of one
    makes every stream commit what was recorded before it, and the watermark says so."""
    a, b = env.streamed(settle=3600.0, interval=0.05), env.streamed(settle=3600.0, interval=0.05)
    stop = threading.Event()
    threads = [threading.Thread(target=sc.run, args=(stop,), daemon=True) for sc in (a, b)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while not (a.partitions.held() and b.partitions.held()):
            assert time.monotonic() < deadline, "the streams were not shared"
            time.sleep(0.05)
        env.record(300)
        recorded_us = int(time.time() * 1_000_000)
        t0 = time.monotonic()
        result = a.request_flush(timeout=30)
        print(f"\nflush of {STREAMS} streams over 2 instances: {time.monotonic() - t0:.2f}s")
        assert result.cutoff_us >= recorded_us
        wm = read_watermark(env.target, prefix="logs")
        assert (
            wm is not None and wm.readable_until_us is not None and wm.readable_until_us >= result.cutoff_us
        )
        env.consume()
        assert {r.id for r in env.consumed} == {m.event_id for m in env.recorded}
        stats = a.stats()
        assert stats["partitions_count"] == STREAMS and stats["active"] is True
        assert int(str(stats["entries_emitted"])) + int(str(b.stats()["entries_emitted"])) == 300
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not a.partitions.held() and not b.partitions.held()
    env.check()
