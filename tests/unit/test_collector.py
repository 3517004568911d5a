"""The collector on the embedded store (SqliteStore) with directory and S3 (moto) targets:
pass and commit protocol, rolling, multipart, recovery, fencing, outages, standby takeover,
watermark; and the reader on what it wrote."""

from __future__ import annotations

import dataclasses
import hashlib
import io
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
from collector_factory import collector

from changelog.api import Controls
from changelog.errors import ConfigError, LeaseLost, LockBusy, PermanentError, TransientError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.collector import Collector, CollectorState, PassResult, PendingCommit, ShardRange
from changelog.pipeline.control import COLLECTOR_LOCK as CONTROL_LOCK
from changelog.pipeline.control import COLLECTOR_PENDING_PREFIX as PENDING_PREFIX
from changelog.pipeline.control import SHARD_LOCK
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease, Renewer, renew_every
from changelog.pipeline.logformat import Compression, encode_object, iter_records, parse_log_name
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.reader import (
    LogReader,
    RecentIds,
    list_logs,
    read_records,
    read_watermark,
    target_status,
)
from changelog.pipeline.store import omap_iter
from changelog.pipeline.targets import DirectoryTarget, S3Target, Target

moto = pytest.importorskip("moto")


class Crash(BaseException):
    """Stands for the process dying at a hook point (nothing catches a BaseException)."""


def crash_at(step: str, nth: int = 1) -> Callable[[str], None]:
    seen: Counter[str] = Counter()

    def hook(name: str) -> None:
        seen[name] += 1
        if name == step and seen[name] == nth:
            raise Crash(step)

    return hook


def mutations(n: int, *, start: int = 0, source: str = "src", rng: random.Random | None = None) -> list[Mutation]:
    rng = rng or random.Random(start)
    return [
        Mutation(
            bucket=f"b{i % 3}",
            key=rng.choice([f"k/{i}", f"ключ\x00{i}", f"line\n{i}"]),
            op=Op.WRITE if i % 4 else Op.DELETE,
            mtime_ns=1_795_000_000_000_000_000 + i,
            source=source,
            position=f"{i:010d}",
            seq=f"{i:010d}",
            version_id=None if i % 5 else f"v{i}",
            size=i if i % 4 else None,
            etag="e" if i % 4 else None,
            metadata={"i": str(i)} if i % 9 == 0 else {},
        )
        for i in range(start, start + n)
    ]


class Env:
    """One index in a sqlite file, a target, and collectors opened on their own store handles
    (like separate processes: distinct lock holders)."""

    def __init__(self, tmp: Path, target: Target, *, shards: int = 4, mode: str = "write") -> None:
        self.tmp = tmp
        self.path = str(tmp / "index.db")
        self.shards = shards
        self.mode = mode
        self.target = target
        self.index = self.open_index()
        self.recorded: dict[str, Mutation] = {}
        self._n = 0

    def open_index(self, *, clock_offset: float = 0.0, index_clock: Callable[[], float] | None = None) -> ChangeIndex:
        store = SqliteStore(self.path, clock=lambda: time.time() + clock_offset)
        return ChangeIndex(store, shards=self.shards, prefix="t", mode=self.mode,
                           clock=index_clock or time.time)

    def record(self, n: int, index: ChangeIndex | None = None) -> list[Mutation]:
        ms = mutations(n, start=self._n)
        self._n += n
        (index or self.index).record_many(ms)
        for m in ms:
            self.recorded[m.event_id] = m
        return ms

    def collector(self, *, clock_offset: float = 0.0, target: Target | None = None, **kw: Any) -> Collector:
        opts: dict[str, Any] = dict(settle=0.0, lease_ttl=5.0, interval=0.02, backoff_base=0.01, roll_bytes=4 << 20,
                                    backoff_max=0.05, standby_retry=0.02, log_prefix="logs")
        opts.update(kw)
        return collector(self.open_index(clock_offset=clock_offset), target or self.target, **opts)

    def log_records(self, prefix: str = "logs") -> list[Any]:
        out: list[Any] = []
        for obj in list_logs(self.target, prefix=prefix):
            with self.target.open(obj.name) as f:
                out.extend(iter_records(f, obj.compression))
        return out

    def final_pass(self) -> PassResult:
        """One more pass by a fresh collector (like a restarted process), which then steps down."""
        c = self.collector()
        try:
            return c.run_pass()
        finally:
            c.step_down()

    def check_exactly_once(self) -> list[Any]:
        recs = self.log_records()
        ids = Counter(r.id for r in recs)
        assert max(ids.values(), default=1) == 1, "an id is in the logs twice"
        assert set(ids) == set(self.recorded)
        assert sum(self.index.stats(s).entries for s in range(self.shards)) == 0
        assert not list(omap_iter(self.index.store, self.index.control_oid, prefix=PENDING_PREFIX))
        return recs


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 16)


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path, DirectoryTarget(tmp_path / "target"))


@pytest.fixture(params=["dir", "s3"])
def any_env(request, tmp_path) -> Iterator[Env]:
    if request.param == "dir":
        yield Env(tmp_path, DirectoryTarget(tmp_path / "target"))
        return
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="changelog-test")
        yield Env(tmp_path, S3Target("changelog-test", "root/", client=client, min_part_bytes=16))


class RecordingTarget:
    """Passes through to a target and remembers every object made visible: (name, bytes)."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.url = inner.url
        self.min_part_bytes = inner.min_part_bytes
        self.visible: list[tuple[str, bytes]] = []
        self.parts: dict[str, list[bytes]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, name: str, data: bytes, *, metadata: Any = None) -> None:
        self.inner.put(name, data, metadata=metadata)
        if not name.endswith("_watermark.json"):
            self.visible.append((name, data))

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Any:
        self.parts.setdefault(upload_id, []).append(data)
        return self.inner.upload_part(name, upload_id, number, data)

    def complete_multipart(self, name: str, upload_id: str, parts: Any) -> None:
        self.inner.complete_multipart(name, upload_id, parts)
        self.visible.append((name, b"".join(self.parts[upload_id])))


class FlakyTarget(RecordingTarget):
    """A target that answers 503 to everything while ``down`` is set."""

    def __init__(self, inner: Target) -> None:
        super().__init__(inner)
        self.down = False
        self.failures = 0

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in ("put", "create_multipart", "upload_part", "complete_multipart", "head", "list",
                    "list_uploads", "abort_multipart") and object.__getattribute__(self, "down"):
            def fail(*a: Any, **kw: Any) -> Any:
                self.failures += 1
                raise TransientError(f"{name}: 503 ServiceUnavailable (injected)")
            return fail
        return attr


# --- the pass ---------------------------------------------------------------------------------


def test_drain_exactly_once_any_target(any_env):
    env = any_env
    env.record(1000)
    c = env.collector(roll_entries=300)
    result = c.run_pass()
    assert result.entries == 1000 and len(result.objects) == 4 and result.skipped_shards == ()
    assert list(result.objects) == sorted(result.objects)
    assert result.watermark_us == result.cutoff_us
    recs = env.check_exactly_once()
    # Per object+shard the records are in key order; per object (bucket/key) in seq order.
    by_obj: dict[tuple[str, str], list[str]] = {}
    for r in recs:
        by_obj.setdefault((r.bucket, r.key), []).append(r.seq)
    assert all(v == sorted(v) for v in by_obj.values())
    meta = env.target.head(result.objects[0])
    assert meta is not None and meta["entries"] == "300" and meta["seq"] == "1"
    wm = read_watermark(env.target, prefix="logs")
    assert wm is not None and wm.complete_until_us == result.cutoff_us and wm.last_object == result.objects[-1]
    assert c.state().last_object == result.objects[-1]
    # A second pass with nothing new writes no object.
    again = c.run_pass()
    assert again.objects == () and again.entries == 0
    c.close()


@pytest.mark.parametrize("roll_entries", [7, 100_000])
def test_bucket_create_comes_first_and_bucket_delete_last_in_the_committed_logs(env, roll_entries):
    """The records of one bucket land in every shard; its create (recorded before them) and its
    delete (recorded after) land in the first and the last shard, so the committed order has the
    create before and the delete after every record of the bucket, one object or several."""
    def bucket_op(op: Op, position: str) -> Mutation:
        return Mutation(bucket="gone", key="", op=op, mtime_ns=1, source="rgw-bucket:gone:id", position=position,
                        seq=f"000001.{position}")

    env.index.record_many([bucket_op(Op.BUCKET_CREATE, "0")])
    keyed = [dataclasses.replace(m, bucket="gone") for m in mutations(60, start=500)]
    env.index.record_many(keyed)
    env.index.record_many([bucket_op(Op.BUCKET_DELETE, "2")])
    env.record(40)  # other buckets' records, before and after in time
    c = env.collector(roll_entries=roll_entries)
    c.run_pass()
    c.close()
    order = [r.op for r in env.log_records() if r.bucket == "gone"]
    assert order[0] == "bucket_create" and order[-1] == "bucket_delete" and len(order) == 62
    assert {env.index.shard_of("gone", m.key) for m in keyed} >= {0, env.shards - 1}  # really everywhere


def test_settle_window_and_late_writer_below_the_floor(env):
    now = [time.time()]
    c = env.collector(settle=2.0, clock=lambda: now[0])
    env.record(50)
    assert c.run_pass().entries == 0  # everything is younger than the settle window
    now[0] += 3
    first = c.run_pass()
    assert first.entries == 50
    # A recorder whose clock is 60 s behind writes after the floor was raised to the cutoff:
    # its entries land above the floor, not below a range already drained.
    late = env.open_index(index_clock=lambda: time.time() - 60)
    env.record(20, index=late)
    assert all(late.stats(s).oldest_us is None or late.stats(s).oldest_us > first.cutoff_us
               for s in range(env.shards))
    now[0] += 3
    assert c.run_pass().entries == 20
    env.check_exactly_once()
    c.close()


def test_roll_by_entries_bytes_and_time(env):
    env.record(500)
    c = env.collector(roll_entries=100)
    assert len(c.run_pass().objects) == 5
    c.close()
    env.record(500)
    c2 = env.collector(roll_entries=10**6, roll_bytes=20_000)
    objs = c2.run_pass().objects
    assert len(objs) > 3
    assert all(int((env.target.head(o) or {})["entries"]) < 500 for o in objs)
    c2.close()
    env.record(300)
    mono = [0.0]

    def tick(step: str) -> None:
        if step == "read":
            mono[0] += 1.0  # each page read takes a second

    c3 = env.collector(roll_entries=10**6, page=10, roll_seconds=2.5, lease_ttl=600,
                       monotonic=lambda: mono[0], fault_hook=tick)
    assert 8 <= len(c3.run_pass().objects) <= 12  # ~32 pages, an object every 3 seconds
    c3.close()
    env.check_exactly_once()


@pytest.mark.parametrize("comp", list(Compression))
def test_multipart_streams_parts_and_bytes_match(any_env, comp):
    env = any_env
    ms = env.record(1500)
    target = RecordingTarget(env.target)
    c = env.collector(target=target, part_bytes=4096, roll_entries=10**6, roll_bytes=30 << 20, compression=comp)
    result = c.run_pass()
    assert len(result.objects) == 1
    name = result.objects[0]
    assert name.endswith(comp.extension)
    uploads = list(target.parts.values())
    if comp is Compression.NONE or len(b"".join(uploads[0] if uploads else [])) > 4096:
        assert len(uploads) == 1 and all(len(p) == 4096 for p in uploads[0][:-1])
    data = env.target.get(name)
    assert target.visible == [(name, data)]
    recs = list(iter_records(io.BytesIO(data), comp))
    assert {r.id for r in recs} == {m.event_id for m in ms}
    # The object is exactly the deterministic encoding of its records in order.
    assert data == encode_object([r.encode() for r in recs], comp)
    assert list(target.list_uploads("")) == []
    c.close()


def test_object_mode_index(tmp_path):
    env = Env(tmp_path, DirectoryTarget(tmp_path / "target"), mode="object")
    env.record(200)
    c = env.collector()
    assert c.run_pass().entries == 200
    env.check_exactly_once()
    c.close()


# --- crash recovery ----------------------------------------------------------------------------


def dead(c: Collector) -> None:
    """What is left of a collector that crashed: its leases stay in the store until they expire;
    only its renewals stop."""
    if c._renewer is not None:
        c._renewer.stop()


@pytest.mark.parametrize("comp", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("part_bytes", [1 << 20, 2048])
def test_crash_after_complete_then_missing_object_is_rebuilt_byte_identical(any_env, comp, part_bytes):
    env = any_env
    env.record(700)
    a = env.collector(part_bytes=part_bytes, compression=comp, roll_entries=250,
                      fault_hook=crash_at("complete", 2))
    with pytest.raises(Crash):
        a.run_pass()
    dead(a)
    pending = a.pending()
    assert len(pending) == 1
    name = pending[0].name
    original = env.target.get(name)
    env.target.delete(name)  # the object is gone: recovery must rebuild the same bytes
    b = env.collector(clock_offset=100.0, part_bytes=part_bytes, compression=comp, roll_entries=250)
    assert b.recover() == 1
    assert env.target.get(name) == original
    b.run_pass()
    env.check_exactly_once()
    b.close()


@pytest.mark.parametrize("step", ["read", "seq", "part", "pending", "commit", "complete", "trim", "drop",
                                  "watermark", "floor", "pass"])
def test_crash_at_each_step_then_restart(any_env, step):
    env = any_env
    env.record(600)
    a = env.collector(part_bytes=1024, roll_entries=200, page=50, trim_batch=30, fault_hook=crash_at(step, 2))
    try:
        a.run_pass()
    except Crash:
        pass
    dead(a)
    env.record(100)
    b = env.collector(clock_offset=100.0, part_bytes=1024, roll_entries=200)
    r = b.run_pass()
    assert r.recovered == (1 if step in ("pending", "commit", "complete", "trim") else 0)
    env.check_exactly_once()
    b.close()


def test_recovery_aborts_the_dead_upload_and_gc_collects_abandoned_ones(env):
    env.record(400)
    a = env.collector(part_bytes=1024, roll_entries=10**6, fault_hook=crash_at("commit"))
    with pytest.raises(Crash):
        a.run_pass()
    dead(a)
    stray = env.target.create_multipart("logs/2020/01/01/00/stray.jsonl")
    assert list(env.target.list_uploads(""))
    b = env.collector(clock_offset=100.0, part_bytes=1024, gc_age=0.0)
    assert b.run_pass().recovered == 1
    assert list(env.target.list_uploads("")) == []
    assert stray
    env.check_exactly_once()
    b.close()


def test_recover_needs_the_shard_leases(env):
    env.record(100)
    a = env.collector(fault_hook=crash_at("complete"))
    with pytest.raises(Crash):
        a.run_pass()
    dead(a)
    p = a.pending()[0]
    shard = p.ranges[0].shard
    blocker = Lease(SqliteStore(env.path, clock=lambda: time.time() + 100), env.index.shard_oid(shard),
                    name=SHARD_LOCK, ttl=30)
    assert blocker.acquire()
    b = env.collector(clock_offset=100.0)
    with pytest.raises(LockBusy):
        b.run_pass()
    blocker.release()
    assert b.run_pass().recovered == 1
    env.check_exactly_once()
    b.close()


# --- leases and fencing ----------------------------------------------------------------------


def test_stale_collector_reuploads_same_bytes_and_its_trims_are_refused(env):
    """A pauses right before its PUT, past its lease (its local clock does not notice); B takes
    over and recovers the pending object; A wakes, PUTs the same name with the same bytes, and
    the store refuses its fenced trim."""
    env.record(300)
    target = RecordingTarget(env.target)
    frozen = time.monotonic()
    b_box: list[Collector] = []

    def pause_and_let_b_take_over(step: str) -> None:
        if step == "commit" and not b_box:
            b = env.collector(clock_offset=100.0, target=target)
            b_box.append(b)
            assert b.run_pass().recovered == 1  # B rebuilt and uploaded A's object

    a = env.collector(target=target, monotonic=lambda: frozen, roll_entries=10**6,
                      fault_hook=pause_and_let_b_take_over)
    with pytest.raises(LeaseLost):
        a.run_pass()
    (name_b, bytes_b), (name_a, bytes_a) = target.visible
    assert name_a == name_b and bytes_a == bytes_b
    assert env.target.get(name_a) == bytes_b
    env.check_exactly_once()
    b_box[0].close()
    a.close()


def test_lease_lost_stops_the_pass_immediately(env):
    env.record(300)
    a = env.collector(page=20)
    calls = []

    def steal(step: str) -> None:
        calls.append(step)
        if step == "read" and len(calls) > 3:
            a._control._mark_lost("test")

    a._hook = steal
    with pytest.raises(LeaseLost):
        a.run_pass()
    assert calls.count("pending") == 0  # nothing was committed after the loss
    assert not a.active
    a.close()
    b = env.collector(clock_offset=100.0)  # a's lock stays in the store until it expires
    b.run_pass()
    env.check_exactly_once()
    b.close()


def test_run_pass_refuses_while_another_collector_is_active(env):
    a = env.collector()
    assert a.try_takeover()
    b = env.collector()
    with pytest.raises(LockBusy, match="held by"):
        b.run_pass()
    info = env.index.store.lock_info(env.index.control_oid, CONTROL_LOCK)
    assert info is not None and a.collector_id in info.description
    a.close()
    b.run_pass()
    b.close()


def test_busy_shard_is_skipped_and_holds_back_the_watermark(env):
    env.record(200)
    blocker = Lease(SqliteStore(env.path), env.index.shard_oid(2), name=SHARD_LOCK, ttl=30)
    assert blocker.acquire()
    c = env.collector()
    r = c.run_pass()
    assert r.skipped_shards == (2,) and r.watermark_us is None
    assert env.index.stats(2).entries > 0
    blocker.release()
    r = c.run_pass()
    assert r.skipped_shards == () and r.watermark_us == r.cutoff_us
    env.check_exactly_once()
    c.close()


def test_cutoffs_and_names_never_go_back_after_takeover(env):
    env.record(100)
    a = env.collector()
    first = a.run_pass()
    a.close()
    env.record(100)
    b = env.collector(clock=lambda: time.time() - 3600)  # its clock is an hour behind
    second = b.run_pass()
    assert second.cutoff_us == first.cutoff_us  # held at the last cutoff, not an hour back
    assert second.entries == 0  # what came after it waits for the clock to catch up
    assert b.state().generation == 2
    b.close()
    c = env.collector()
    third = c.run_pass()
    assert third.entries == 100 and third.objects[0] > first.objects[-1]
    assert c.state().generation == 3
    c.close()
    env.check_exactly_once()


# --- watermark -------------------------------------------------------------------------------


def test_watermark_is_capped_by_the_follower(env):
    now = [1_795_000_000.0]
    cap: list[int | None] = [None]
    c = env.collector(clock=lambda: now[0], settle=1.0, watermark_cap=lambda: cap[0])
    assert c.run_pass().watermark_us is None  # the follower has not caught up yet: no promise
    cap[0] = int((now[0] - 10) * 1e6)
    now[0] += 0.5
    # The cap was observed after this pass's cutoff: not usable yet.
    assert c.run_pass().watermark_us is None
    now[0] += 5
    r = c.run_pass()
    assert r.watermark_us == cap[0]  # min(cutoff, cap observed before the cutoff)
    cap[0] = int((now[0] + 100) * 1e6)  # a cap ahead of the cutoff is clipped to it
    now[0] += 5
    c.run_pass()
    now[0] += 5
    r = c.run_pass()
    assert r.watermark_us == r.cutoff_us - 0 or r.watermark_us <= r.cutoff_us
    assert read_watermark(env.target, prefix="logs").complete_until_us == r.watermark_us  # type: ignore[union-attr]
    c.close()


def test_watermark_never_goes_back(env):
    now = [1_795_000_000.0]
    c = env.collector(clock=lambda: now[0])
    r1 = c.run_pass()
    now[0] -= 100
    r2 = c.run_pass()
    assert r2.watermark_us == r1.watermark_us
    c.close()


# --- outages and standby ------------------------------------------------------------------------


def test_target_outage_backs_off_loses_nothing_and_drains_after(env):
    flaky = FlakyTarget(env.target)
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        time.sleep(0.001)

    c = env.collector(target=flaky, sleep=sleep, retries=3,
                      backoff_base=0.01, backoff_max=0.08, interval=0.01, roll_entries=50)
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(stop,))
    env.record(100)
    t.start()
    deadline = time.monotonic() + 10
    while env.index.stats(0).entries and time.monotonic() < deadline:
        time.sleep(0.01)
    flaky.down = True
    backlog = []
    for _ in range(10):
        env.record(30)
        time.sleep(0.03)
        backlog.append(sum(env.index.stats(s).entries for s in range(env.shards)))
    assert backlog[-1] >= 300 - 30  # the backlog grows while the target is down
    flaky.down = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        sum(env.index.stats(s).entries for s in range(env.shards)) or c.pending()
    ):
        time.sleep(0.02)
    stop.set()
    t.join(10)
    assert flaky.failures > 0
    assert sleeps and max(sleeps) <= 0.08 and sleeps[:3] == [0.01, 0.02, 0.04]
    env.check_exactly_once()


def test_standby_takes_over_within_ttl(env, capsys):
    env.record(100)
    a = env.collector(lease_ttl=1.0)
    b = env.collector(lease_ttl=1.0)
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=x.run, args=(s,)) for x, s in zip((a, b), stops, strict=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while not (a.active or b.active) and time.monotonic() < deadline:
        time.sleep(0.01)
    active, standby = (a, b) if a.active else (b, a)
    assert not standby.active
    # The active one hangs (renewals stop, nothing is released) until the end of the test.
    i = 0 if active is a else 1
    wake = threading.Event()
    active._hook = lambda step: wake.wait()
    dead(active)
    died = time.monotonic()
    while not standby.active and time.monotonic() < died + 5:
        time.sleep(0.01)
    took = time.monotonic() - died
    with capsys.disabled():
        print(f"\n[standby takeover after the active collector died: {took:.2f}s, lease ttl 1s]")
    assert standby.active  # within the 5 s waited; how fast is printed, never asserted
    stops[i].set()
    wake.set()  # it wakes up, finds its lease gone and stops writing
    threads[i].join(5)
    assert not active.active
    env.record(50)
    deadline = time.monotonic() + 5
    while sum(env.index.stats(s).entries for s in range(env.shards)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for s in stops:
        s.set()
    for t in threads:
        t.join(5)
    env.check_exactly_once()


def test_three_collectors_racing_in_threads(env, capsys):
    collectors = [env.collector(lease_ttl=1.0, roll_entries=40, page=25) for _ in range(3)]
    stops = [threading.Event() for _ in collectors]
    threads = [threading.Thread(target=c.run, args=(s,)) for c, s in zip(collectors, stops, strict=True)]
    for t in threads:
        t.start()
    rng = random.Random(3)
    handovers = 0
    for _ in range(25):
        env.record(rng.randint(5, 60))
        time.sleep(0.02)
        if rng.random() < 0.3:
            for c in collectors:
                if c.active:
                    c.step_down()  # a graceful hand-over: another one picks it up
                    handovers += 1
                    break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        sum(env.index.stats(s).entries for s in range(env.shards)) or collectors[0].pending()
    ):
        time.sleep(0.02)
    for s in stops:
        s.set()
    for t in threads:
        t.join(10)
    with capsys.disabled():
        print(f"\n[3 collectors, {handovers} hand-overs, {len(env.recorded)} mutations]")
    env.check_exactly_once()


# --- stats, pause, leases ------------------------------------------------------------------------


def wait_until(what: str, cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def backlog(env: Env) -> int:
    return sum(env.index.stats(s).entries for s in range(env.shards))


@pytest.mark.parametrize("comp", ["none", "gzip"])
def test_stats_count_passes_objects_and_stored_bytes(any_env, comp):
    env = any_env
    c = env.collector(roll_entries=200, compression=comp, part_bytes=max(env.target.min_part_bytes, 2048))
    s = c.stats()
    assert (s["passes"], s["entries_emitted"], s["objects_committed"], s["bytes_committed"]) == (0, 0, 0, 0)
    assert s["last_pass_entries"] is None and s["last_pass_seconds"] is None and s["complete_until"] is None
    assert s["target_errors"] == {}
    env.record(500)
    r = c.run_pass()
    s = c.stats()
    assert s["passes"] == 1 and s["entries_emitted"] == 500 and s["objects_committed"] == len(r.objects) == 3
    # As stored: after compression, whether PUT whole or uploaded in parts.
    assert s["bytes_committed"] == sum(o.size for o in list_logs(env.target, prefix="logs"))
    assert s["last_pass_entries"] == 500 and isinstance(s["last_pass_seconds"], float)
    assert isinstance(s["last_pass_end"], float)
    assert r.watermark_us is not None and s["complete_until"] == r.watermark_us / 1e6
    c.run_pass()  # nothing new: a pass all the same
    s2 = c.stats()
    assert s2["passes"] == 2 and s2["last_pass_entries"] == 0 and s2["entries_emitted"] == 500
    s2["target_errors"]["x"] = 1  # a snapshot: changing it changes nothing inside
    assert c.stats()["target_errors"] == {}
    c.close()


def test_a_commit_finished_by_recovery_is_counted_once(env):
    env.record(40)
    fail = [True]

    def hook(step: str) -> None:
        if step == "complete" and fail[0]:
            fail[0] = False
            raise TransientError("trim: OSD busy (injected)")  # the object is visible, not trimmed

    c = env.collector(fault_hook=hook)
    with pytest.raises(TransientError):
        c.run_pass()
    assert c.stats()["objects_committed"] == 0
    assert c.run_pass().recovered == 1
    s = c.stats()
    sizes = {o.name: o.size for o in list_logs(env.target, prefix="logs")}
    assert (s["objects_committed"], s["entries_emitted"], s["bytes_committed"]) == (1, 40, sum(sizes.values()))
    c.close()
    # A collector finishing the commit of one that crashed counts it, with the size as stored.
    env.record(10)
    a = env.collector(fault_hook=crash_at("complete"))
    with pytest.raises(Crash):
        a.run_pass()
    dead(a)
    (pending,) = a.pending()
    b = env.collector(clock_offset=100.0)
    assert b.recover() == 1
    size = next(o.size for o in list_logs(env.target, prefix="logs") if o.name == pending.name)
    s = b.stats()
    assert (s["objects_committed"], s["entries_emitted"], s["bytes_committed"]) == (1, 10, size)
    b.close()
    env.check_exactly_once()


def test_target_errors_are_counted_per_failed_attempt_by_kind(env):
    flaky = FlakyTarget(env.target)
    c = env.collector(target=flaky, retries=3)
    env.record(10)
    flaky.down = True
    with pytest.raises(TransientError):
        c.run_pass()
    # The PUT of the one log object: 1 try + 3 retries, each counted.
    assert c.stats()["target_errors"] == {"transient": 1 + 3}
    flaky.down = False
    r = c.run_pass()
    assert r.recovered == 1  # the pending record of the failed PUT: rebuilt and committed
    s = c.stats()
    assert s["target_errors"] == {"transient": 4}
    assert s["objects_committed"] == 1 and s["entries_emitted"] == 10 and s["bytes_committed"] > 0
    c.close()

    class Refusing(RecordingTarget):
        def put(self, name: str, data: bytes, *, metadata: Any = None) -> None:
            raise PermanentError(f"PUT {name}: 403 AccessDenied")

    env.record(5)
    d = env.collector(target=Refusing(env.target), retries=3)
    with pytest.raises(PermanentError):
        d.run_pass()
    assert d.stats()["target_errors"] == {"permanent": 1}  # not retried
    d.close()


def test_pause_hook_parks_the_service_loop_and_keeps_index_and_leases(env):
    controls = Controls(("collector",))
    c = env.collector(paused=lambda: controls.checkpoint("collector"), pause_poll=0.01)
    controls.pause("collector")
    env.record(50)
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(stop,))
    t.start()
    try:
        wait_until("the collector to park", lambda: controls.state()["collector"]["parked"])
        time.sleep(0.2)  # many poll intervals
        assert c.stats()["passes"] == 0 and backlog(env) == 50
        controls.resume("collector")
        wait_until("the backlog to drain", lambda: backlog(env) == 0)
        assert c.active
        controls.pause("collector")
        wait_until("the collector to park again", lambda: controls.state()["collector"]["parked"])
        passes = c.stats()["passes"]
        env.record(30)
        time.sleep(0.2)
        # Parked: no pass, nothing taken from the index, and the control lease still held.
        assert c.stats()["passes"] == passes and backlog(env) == 30
        assert c.active and c.control_lease.held
        controls.resume("collector")
        wait_until("the backlog to drain after resume", lambda: backlog(env) == 0)
    finally:
        stop.set()
        t.join(10)
    env.check_exactly_once()


def test_leases_are_the_control_lease_and_every_shard_lease(env):
    c = env.collector()
    leases = c.leases()
    assert len(leases) == 1 + env.shards and leases[0] is c.control_lease
    assert [lease.ref.name for lease in leases] == [CONTROL_LOCK] + [SHARD_LOCK] * env.shards
    env.record(20)
    c.run_pass()
    again = c.leases()
    assert all(a is b for a, b in zip(leases, again, strict=True))  # the same objects: counters stay
    assert again[0].held and not any(lease.held for lease in again[1:])  # shards are per pass
    assert all(lease.losses == 0 for lease in again)
    c.close()
    assert not any(lease.held for lease in c.leases())


def test_renewal_interval_leaves_a_second_chance():
    def lease(ttl: float) -> Lease:
        return Lease(object(), "x", name="n", ttl=ttl)  # type: ignore[arg-type]

    assert lease(30).renew_every == 10.0  # ttl/3; deadline 27 s after the lock call
    assert lease(3).renew_every == 1.0  # deadline 2.5 s after: 1.5 s to spare
    assert lease(1).renew_every == 0.25  # deadline 0.5 s after: not ttl/3, which left 0.17 s
    assert renew_every(30, 3) == 10.0


class GatedStore:
    """The store, with the next renewal held at the door until the test lets it through."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def lock(self, oid: str, ref: Any, *, duration: float, description: str = "", renew: bool = False) -> None:
        if renew and self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(10)
        self.inner.lock(oid, ref, duration=duration, description=description, renew=renew)


def test_a_renewal_in_flight_never_overlaps_the_release_and_retake_of_its_lease(env):
    """The "lost a lease ... lock drain not held" of short TTLs: a pass released its shard leases
    while the renewer was renewing one of them; the refusal came back after the next pass had
    taken the lease again, marked it lost and dropped it from the renewals, and the pass died of
    it a TTL later. Now discarding a lease waits for its renewal in flight."""
    store = GatedStore(SqliteStore(env.path))
    lease = Lease(store, env.index.shard_oid(0), name=SHARD_LOCK, ttl=2.0)  # type: ignore[arg-type]
    assert lease.acquire()
    renewer = Renewer(2.0)
    renewer.start()
    renewer.add(lease)
    store.armed = True
    assert store.entered.wait(10), "no renewal came"
    released = threading.Event()

    def next_pass() -> None:
        renewer.discard(lease)  # the end of a pass ...
        lease.release()
        released.set()
        assert lease.acquire()  # ... and the start of the next one
        renewer.add(lease)

    t = threading.Thread(target=next_pass)
    t.start()
    try:
        assert not released.wait(0.3), "the lease was released under a renewal in flight"
        store.gate.set()
        t.join(10)
        assert released.is_set() and lease.held and lease.losses == 0
        renewals = lease.renewals
        wait_until("renewals of the retaken lease", lambda: lease.renewals >= renewals + 2)
        assert lease.held and lease.losses == 0
    finally:
        store.gate.set()
        renewer.stop()
        lease.release()
        store.inner.close()


def test_collector_releases_and_retakes_shard_leases_without_losing_one(env):
    """Many short passes: no lease is ever marked lost (each pass releases and retakes its shard
    leases; the TTL is long enough that a loaded machine does not miss a renewal)."""
    c = env.collector(lease_ttl=5.0, interval=0.01)
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(stop,))
    t.start()
    try:
        for _ in range(20):
            env.record(20)
            time.sleep(0.05)
        wait_until("the backlog to drain", lambda: backlog(env) == 0)
        wait_until("more passes", lambda: c.stats()["passes"] >= 20)
    finally:
        stop.set()
        t.join(10)
    assert {lease.oid: lease.losses for lease in c.leases() if lease.losses} == {}
    env.check_exactly_once()


# --- configuration, records ----------------------------------------------------------------------


def test_config_checks(env):
    s3 = S3Target("b", client=boto3.client("s3", region_name="us-east-1"))
    with pytest.raises(ConfigError, match="part_bytes"):
        collector(env.index, s3, part_bytes=1024)
    with pytest.raises(ConfigError):
        collector(env.index, env.target, part_bytes=1, roll_bytes=10**9)


def test_records_roundtrip():
    p = PendingCommit("logs/2026/01/01/00/20260101T000000.000000Z-0000000001.jsonl.zst", 1, 5, 2, 10, 3, 4,
                      (ShardRange(0, "d.a", "d.b", 4), ShardRange(3, "d.c", "d.d", 6)))
    assert PendingCommit.decode(p.encode()) == p
    assert p.compression is Compression.ZSTD
    assert p.metadata()["entries"] == "10"
    s = CollectorState(5, "x", 4, 3)
    assert CollectorState.decode(s.encode()) == s
    assert CollectorState.decode(None) == CollectorState()


# --- reader ----------------------------------------------------------------------------------------


def test_reader_lists_and_streams_in_order_with_checkpoints(env):
    now = [1_795_000_000.0]
    idx = env.open_index(index_clock=lambda: now[0])
    env.record(100, index=idx)
    c = env.collector(clock=lambda: now[0] + 1, roll_entries=30, compression="gzip")
    first = c.run_pass()
    now[0] += 10
    env.record(100, index=idx)
    second = c.run_pass()
    objs = list(list_logs(env.target, prefix="logs"))
    assert [o.name for o in objs] == list(first.objects + second.objects)
    assert all(o.compression == "gzip" and o.size > 0 for o in objs)
    # Since a time: exactly the objects with a later cutoff.
    assert [o.name for o in list_logs(env.target, prefix="logs", since_us=first.cutoff_us)] == list(second.objects)
    recs = list(read_records(env.target, prefix="logs"))
    assert len(recs) == 200 and len({r.id for r in recs}) == 200
    late = list(read_records(env.target, prefix="logs", since_us=int((now[0] - 1) * 1e6)))
    assert len(late) == 100
    only = list(read_records(env.target, prefix="logs", bucket="b1", key_prefix="k/"))
    assert only and all(r.bucket == "b1" and r.key.startswith("k/") for r in only)
    # Resume from a checkpoint: nothing twice, nothing skipped.
    reader = LogReader(env.target, prefix="logs")
    got = []
    for obj, rec in reader.records():
        got.append(rec.id)
        if obj.name == first.objects[-1]:
            break
    reader2 = LogReader(env.target, prefix="logs", checkpoint=first.objects[-2])
    rest = [rec.id for _, rec in reader2.records()]
    assert len(set(got) | set(rest)) == 200
    assert reader2.checkpoint == second.objects[-1]
    status = target_status(env.target, prefix="logs")
    assert status["last_object"] == second.objects[-1]
    assert status["watermark"]["complete_until_us"] == second.cutoff_us
    c.close()


def test_reader_skips_repeated_ids(env):
    env.record(10)
    c = env.collector()
    (name,) = c.run_pass().objects
    data = env.target.get(name)
    parsed = parse_log_name(name)
    assert parsed is not None
    dup = name.replace("-0000000001.", "-0000000002.")
    env.target.put(dup, data)  # the same records again (a consumer re-reading an overlap)
    reader = LogReader(env.target, prefix="logs")
    assert len([r for _, r in reader.records()]) == 10 and reader.skipped == 10
    ids = RecentIds(2)
    assert ids.add("a") and ids.add("b") and not ids.add("a") and ids.add("c")
    assert "a" not in ids and len(ids) == 2
    c.close()


def test_watermark_document_on_target(env):
    env.record(5)
    c = env.collector()
    r = c.run_pass()
    doc = orjson.loads(env.target.get("logs/_watermark.json"))
    assert doc["complete_until_us"] == r.cutoff_us and doc["last_object"] == r.objects[-1]
    assert hashlib.sha256(env.target.get(r.objects[0])).hexdigest()
    c.close()


# --- failures inside the pipelined steps --------------------------------------------------------


def pipeline_threads() -> list[threading.Thread]:
    """The pass's helper threads (readers, part uploader, trims) still alive; not the renewer."""
    return [t for t in threading.enumerate()
            if t.name.startswith("collector-") and not t.name.startswith("collector-leases")]


def test_a_lost_lease_in_a_parallel_trim_outranks_an_earlier_batch_failure(env, monkeypatch):
    """Trim batches run in parallel: when the first fails with a transient error and a later one
    finds its lease lost, the pass must raise LeaseLost (run() goes to standby), not the retryable
    error; nothing is lost either way."""
    env.record(300)
    c = env.collector(trim_batch=10, roll_entries=10**6)
    real = c._trim_batch
    calls: list[int] = []

    def trim_batch(shard: int, batch: Any) -> None:
        calls.append(shard)
        if len(calls) == 1:
            raise TransientError("injected: busy")
        if len(calls) == 2:
            time.sleep(0.05)  # fails after the first one
            raise LeaseLost("injected: shard lease lost")
        real(shard, batch)

    monkeypatch.setattr(c, "_trim_batch", trim_batch)
    with pytest.raises(LeaseLost, match="injected"):
        c.run_pass()
    c.step_down()
    # The committed object's keys are trimmed by recovery in the next pass: exactly once.
    env.final_pass()
    env.check_exactly_once()


def test_an_upload_aborted_under_the_collector_between_parts_is_retried_by_a_later_pass(env):
    """A takeover (or GC) aborts the multipart upload while the upload thread is still sending
    parts: the part's NoSuchUpload becomes a transient failure of the pass (the collector still
    holds its lease), and the next pass commits everything, once."""
    env.record(2000)

    class AbortingTarget(RecordingTarget):
        aborted = False

        def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Any:
            if number == 2 and not self.aborted:
                self.aborted = True
                self.inner.abort_multipart(name, upload_id)
            return super().upload_part(name, upload_id, number, data)

    target = AbortingTarget(env.target)
    c = env.collector(target=target, part_bytes=4096, roll_entries=10**6, retries=0)
    with pytest.raises(TransientError, match="vanished while sending part 2"):
        c.run_pass()
    assert target.aborted
    assert not pipeline_threads()
    c.run_pass()
    c.step_down()
    env.check_exactly_once()


def test_an_interrupted_wait_for_parts_stops_the_upload_thread_before_the_abort(env, monkeypatch):
    """A KeyboardInterrupt while the pass waits for its parts: the upload thread is stopped (no
    part goes out after the abort), no collector thread is left, and a rerun commits all, once."""
    import changelog.pipeline.upload as upload_mod

    env.record(2000)
    target = RecordingTarget(env.target)
    c = env.collector(target=target, part_bytes=4096, roll_entries=10**6)
    real_finish = upload_mod.PartUploader.finish

    def finish(self: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(upload_mod.PartUploader, "finish", finish)
    with pytest.raises(KeyboardInterrupt):
        c.run_pass()
    monkeypatch.setattr(upload_mod.PartUploader, "finish", real_finish)
    assert not pipeline_threads()
    assert not list(env.target.list_uploads("logs"))
    c.step_down()
    env.final_pass()
    env.check_exactly_once()


def test_stopping_run_ends_a_long_pass_early_and_the_next_pass_finishes_it(env):
    """``serve`` stops its collector by setting run()'s event: a pass in hand over a large
    backlog ends at the next page instead of draining it all (a shutdown must not outlast the
    service manager's stop timeout), commits what it encoded, leaves the watermark, and the next
    pass drains the rest: exactly once."""
    env.record(3000)
    stop = threading.Event()

    def hook(step: str) -> None:
        if step == "drop":
            stop.set()  # right after the first object's commit

    c = env.collector(roll_entries=100, page=50, fault_hook=hook)
    done = threading.Thread(target=c.run, args=(stop,))
    done.start()
    done.join(30)
    assert not done.is_alive()
    assert not pipeline_threads()
    left = sum(env.index.stats(s).entries for s in range(env.shards))
    assert 0 < left <= 3000 - 100, left  # the first object (at least) committed, most left
    assert read_watermark(env.target, prefix="logs") is None
    env.final_pass()
    assert read_watermark(env.target, prefix="logs") is not None
    env.check_exactly_once()


def test_request_flush_runs_a_pass_with_no_settle_window_now(env):
    """The API's POST /_/flush: the running loop's wait for its next pass ends, and that pass
    drains everything recorded so far, whatever the settle window and the interval say."""
    c = env.collector(settle=3600.0, interval=3600.0)
    standby = env.collector()
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(stop,))
    t.start()
    try:
        wait_until("the first pass", lambda: c.stats()["passes"] >= 1)
        env.record(30)
        res = c.request_flush(timeout=10)
        assert res.entries == 30 and res.watermark_us == res.cutoff_us
        assert backlog(env) == 0 and c.stats()["passes"] == 2
        with pytest.raises(LockBusy, match="standby"):
            standby.request_flush(timeout=1)
    finally:
        stop.set()
        t.join(10)
    state, pending = Collector.read_state(env.index)
    assert state.last_object == res.objects[-1] and pending == []
    env.check_exactly_once()
