"""Review of scale-out mode (``[scale] partitioned``): collector streams and the readers' bound,
as an operator meets them (the index switched to partitioned with logs already there, streams
committing side by side in several processes). Each test states the invariant it checks;
failing ones are bugs found by the review (docs/design.md §16).

A "process" is a stream ``Collector`` with a partition lease of its own (as in
``test_collector_streams``): the tests drive their interleaving by hand.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_collector import Crash, crash_at, dead
from test_collector_streams import STREAMS, Env, rounds

from changelog.consumers.framework import committed_objects
from changelog.errors import LockBusy
from changelog.pipeline.collector import Collector, Stream
from changelog.pipeline.collector_streams import prepare_streams, publish, streams_state
from changelog.pipeline.control import COLLECTOR_LOCK, COLLECTOR_ROLE, partition_lock
from changelog.pipeline.lease import Lease
from changelog.pipeline.logformat import parse_log_name, rfc3339_us
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.reader import list_logs, read_object, read_watermark
from changelog.pipeline.targets import DirectoryTarget


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, DirectoryTarget(tmp_path / "target"))


def stream_collectors(env: Env, count: int) -> tuple[list[Lease], Callable[..., Collector]]:
    """Partition leases held by hand (one per "process") and a factory of stream collectors."""
    prepare_streams(env.index, count)
    leases = [Lease(env.index.store, env.index.control_oid, name=partition_lock(COLLECTOR_ROLE, n), ttl=30.0,
                    cookie=f"p{n}") for n in range(count)]  # fmt: skip
    assert all(lease.acquire() for lease in leases)

    def stream(n: int, hook: Callable[[str], None] | None = None) -> Collector:
        return Collector(env.index, env.target, env.config(), log_prefix="logs", fault_hook=hook,
                         stream=Stream(n, count, leases[n]))  # fmt: skip

    return leases, stream


def read_on(env: Env) -> list[str]:
    """The consumer reads on from its checkpoint (without ``Env.consume``'s own check of the
    bound, which would stop the scenario at its first step); the names of the objects read."""
    names: list[str] = []
    for obj, rec in env.consumer.records():
        env.consumed.append(rec)
        if not names or names[-1] != obj.name:
            names.append(obj.name)
    return names


def pending_hook(action: Callable[[], None]) -> Callable[[str], None]:
    """A fault hook that runs ``action`` once, when the pass has recorded its pending commit
    (the object is being uploaded: another process goes on meanwhile)."""
    done: list[bool] = []

    def hook(step: str) -> None:
        if step == "pending" and not done:
            done.append(True)
            action()

    return hook


# --------------------------------------------------------------------------- the readers' bound


@pytest.mark.parametrize("history", ["unpartitioned_logs_before", "fresh_index"])
def test_switch_to_partitioned_a_slow_stream_commit_is_not_skipped_by_a_consumer(
    env: Env, history: str
) -> None:
    """The index ran unpartitioned (its logs and watermark are there), then every ``serve``
    turns ``[scale] partitioned`` on. Stream 0 (one process) cuts off and uploads a big object;
    meanwhile stream 1 (another process) cuts off later, commits, and a consumer reads on. The
    consumer must not pass stream 0's object: every record once, through its one-name
    checkpoint (design §16, the readers' bound)."""
    count = env.count = 2
    if history == "unpartitioned_logs_before":
        plain = env.plain()
        env.record(100)
        plain.run_pass()
        plain.close()
        read_on(env)
        wm = read_watermark(env.target, prefix="logs")
        assert wm is not None and wm.readable_until_us is None
    leases, stream = stream_collectors(env, count)
    env.record(200)
    s1 = stream(1)
    read_meanwhile: list[str] = []

    def other_process() -> None:
        time.sleep(0.002)  # stream 1's cutoff is later than stream 0's
        s1.run_pass()
        read_meanwhile.extend(read_on(env))

    s0 = stream(0, pending_hook(other_process))
    s0.run_pass()
    s0_objects = [n for n, _ in env.committed() if parse_log_name(n).stream == 0]  # type: ignore[union-attr]
    assert s0_objects
    for _ in range(2):
        s0.run_pass()
        s1.run_pass()
        publish(env.index, env.target, log_prefix="logs", count=count, now_us=int(time.time() * 1e6))
        read_on(env)
    read_ids = {r.id for r in env.consumed}
    missed = [m for m in env.recorded if m.event_id not in read_ids]
    assert not missed, (
        f"the consumer never read {len(missed)} of {len(env.recorded)} records: while no stream "
        f"watermark was published, it read stream 1's objects {read_meanwhile} unbounded (the "
        f"watermark left by the unpartitioned collector has no readable_until_us) and its checkpoint "
        f"passed stream 0's object {s0_objects[0]}, committed later with a lower cutoff"
    )
    s0.close()
    s1.close()
    for lease in leases:
        lease.release()


def test_an_unpartitioned_commit_cut_short_is_not_skipped_after_a_restart_partitioned(env: Env) -> None:
    """The unpartitioned collector is SIGKILLed mid-commit (its object pending, not visible);
    the operator restarts the fleet with ``[scale] partitioned``. Stream 0 finishes that commit
    (design §16), but another process's stream 2 happens to pass first and a checkpointed
    reader reads on meanwhile. The reader must still get the recovered records (they are
    committed under the old name, below the stream objects)."""
    count = env.count = 4
    before = env.plain()
    env.record(100)
    before.run_pass()
    before.close()
    read_on(env)
    plain = env.plain(hook=crash_at("pending"))
    env.record(200)
    with pytest.raises(Crash):
        plain.run_pass()
    dead(plain)
    [stuck] = Collector.read_state(env.index)[1]
    assert parse_log_name(stuck.name).stream is None  # type: ignore[union-attr]
    # The unpartitioned collector had committed before: its watermark is there.
    assert read_watermark(env.target, prefix="logs") is not None
    leases, stream = stream_collectors(env, count)
    env.record(100)
    s2 = stream(2)
    time.sleep(0.002)
    s2.run_pass()
    read_meanwhile = read_on(env)
    s0 = stream(0)
    assert s0.run_pass().recovered == 1
    others = [stream(n) for n in (1, 3)]
    for _ in range(2):
        for c in (s0, s2, *others):
            c.run_pass()
        publish(env.index, env.target, log_prefix="logs", count=count, now_us=int(time.time() * 1e6))
        read_on(env)
    read_ids = {r.id for r in env.consumed}
    stuck_ids = {r.id for r in read_object(env.target, stuck.name)}
    assert stuck_ids <= read_ids, (
        f"the reader never read {len(stuck_ids - read_ids)} records of {stuck.name}, the unpartitioned "
        f"commit stream 0 finished after the restart: it had read {read_meanwhile} first (the "
        "unpartitioned watermark left no readable_until_us) and its checkpoint was past that name"
    )
    for c in (s0, s2, *others):
        c.close()
    for lease in leases:
        lease.release()


# --------------------------------------------------------------------------- consumers' upper end


def mutations_in_stream(env: Env, stream: int, n: int, *, start: int = 0) -> list[Mutation]:
    """``n`` writes of keys whose index shard belongs to ``stream`` (of ``env.count``)."""
    keys = [f"k{i}" for i in range(200) if env.index.shard_of("b0", f"k{i}") % env.count == stream][:8]
    return [
        Mutation(bucket="b0", key=keys[i % len(keys)], op=Op.WRITE, mtime_ns=1_795_000_000_000_000_000 + i,
                 source="src", position=f"{i:010d}", seq=f"{i:010d}", size=i, etag="e")
        for i in range(start, start + n)
    ]  # fmt: skip


def test_consumers_read_a_busy_stream_that_is_not_stream_0(env: Env) -> None:
    """One `serve` with the default 4 streams under steady load; every write lands in stream
    1's index shards (a quiet index with a few hot keys, or more streams than index shards,
    which "leaves streams empty"). The consumers that stop at the watermark's ``last_object``
    (replication, usage, lifecycle, the backup's ``until``: ``framework.committed_objects``)
    must read every object at or below the watermark's ``readable_until`` as ``logs cat``
    does, not wait for the load to stop."""
    env.count = STREAMS
    sc = env.streamed()
    for r in range(6):
        env.index.record_many(mutations_in_stream(env, 1, 30, start=30 * r))
        sc.step()
        time.sleep(0.01)
    wm = read_watermark(env.target, prefix="logs")
    assert wm is not None and wm.readable_until_us is not None
    readable = [o.name for o in list_logs(env.target, prefix="logs")]  # what `logs cat` reads
    assert len(readable) >= 4, readable
    got = [o.name for o in committed_objects(env.target, None, prefix="logs")]
    assert got == readable, (
        f"under steady load in stream 1 the consumers read {len(got)} of the {len(readable)} "
        f"objects below readable_until (the watermark's last_object is {wm.last_object!r}): "
        "replication, usage, lifecycle and backup stand still while `logs cat` reads on"
    )
    sc.close()


# --------------------------------------------------------------------------- the two modes


def test_an_unpartitioned_collector_and_streams_starting_together_never_drain_side_by_side(env: Env) -> None:
    """A rolling change of ``[scale] partitioned``: one `serve` starts partitioned while another
    (or `collect`) starts unpartitioned at the same moment. The streams look at the collector
    lease at the start of their round and take their partitions after; the unpartitioned
    collector looks at the partition leases once, at its takeover. The design promises the two
    never drain side by side (§16: their names would interleave for the readers)."""
    env.count = STREAMS
    env.record(200)
    streamed = env.streamed()
    plain = env.plain()
    took: list[bool] = []
    refresh = streamed.partitions.refresh

    def refresh_after_the_other_took_over() -> list[int]:
        # The other process's takeover lands between the streams' look at the collector lease
        # and their partition refresh (the interleaving two processes can have).
        took.append(plain.try_takeover())
        return refresh()

    streamed.partitions.refresh = refresh_after_the_other_took_over  # type: ignore[method-assign]
    with contextlib.suppress(LockBusy):  # the streams stand by: what the service's loop is told
        streamed.step()
    env.record(100)
    plain_objects = list(plain.run_pass().objects) if plain.active else []
    stream_objects = sorted({n for n, _ in env.committed() if parse_log_name(n).stream is not None})  # type: ignore[union-attr]
    print(f"\nside by side: unpartitioned took over {took}, streams held {streamed.partitions.held()}")
    assert not (took[0] and streamed.partitions.held()), (
        f"the unpartitioned collector took over (and committed {plain_objects}) while the streams "
        f"{streamed.partitions.held()} were held and committed {stream_objects}: the two modes drained "
        "side by side"
    )
    plain.close()
    streamed.close()


def test_back_to_partitioned_the_watermark_s_last_object_is_readable(env: Env) -> None:
    """Partitioned, then unpartitioned for a while (its objects committed, the watermark's
    ``last_object`` one of them), then partitioned again. Until every stream has passed once,
    the published ``readable_until_us`` comes from the streams' states of the first period. The
    backup reads up to the watermark's ``last_object`` through the bounded reader and then
    records that name as its checkpoint (``backup.runner._records``, manifest ``checkpoint``):
    every object up to ``last_object`` must be readable, or the run skips them for good."""
    env.count = STREAMS
    first = env.streamed()
    env.record(100)
    rounds(first, n=2)
    first.close()
    plain = env.plain()
    env.record(100)
    plain.run_pass()
    plain.close()
    unpartitioned = sorted({n for n, _ in env.committed() if parse_log_name(n).stream is None})  # type: ignore[union-attr]
    assert unpartitioned
    # Partitioned again: stream 0's holder passes and publishes; another process holds the
    # other streams and has not passed yet.
    leases, stream = stream_collectors(env, STREAMS)
    env.record(50)
    s0 = stream(0)
    s0.run_pass()
    publish(env.index, env.target, log_prefix="logs", count=STREAMS, now_us=int(time.time() * 1e6))
    wm = read_watermark(env.target, prefix="logs")
    assert wm is not None and wm.last_object is not None
    listed = [o.name for o in list_logs(env.target, prefix="logs")]
    up_to_last = sorted(n for n, _ in env.committed() if n <= wm.last_object)
    hidden = sorted(set(up_to_last) - set(listed))
    assert not hidden, (
        f"the watermark names last_object {wm.last_object} but its readable_until_us "
        f"{wm.readable_until_us} (from the streams' first partitioned period) hides {len(hidden)} "
        f"objects up to it from every reader, e.g. {hidden[:2]}: a backup run now records "
        "last_object as its checkpoint without having read them"
    )
    # ``status`` (and the metrics, from the same combination) give the bound just published,
    # not the first period's.
    assert wm.readable_until_us is not None
    assert streams_state(env.index)["readable_until"] == rfc3339_us(wm.readable_until_us)
    s0.close()
    for lease in leases:
        lease.release()


def test_streams_that_stood_by_once_keep_their_leases_after(env: Env) -> None:
    """A partitioned `serve` runs its streams; an unpartitioned collector (an old-config `serve`
    retrying every ``standby_retry``, or `collect --once`) holds the collector lease for a moment
    (its takeover takes the lease, then finds the streams held and lets go). A round of the
    streams that sees it stands by (``LockBusy``) and the next takes the streams back. From
    then on their partition leases must be renewed like before: still held several TTLs later
    (the service's interval can be longer than a TTL)."""
    env.count = STREAMS
    ttl = 1.0
    sc = env.streamed(lease_ttl=ttl)
    env.record(50)
    assert sc.step() == list(range(STREAMS))
    other = Lease(env.index.store, env.index.control_oid, name=COLLECTOR_LOCK, ttl=30.0, cookie="old-serve")
    assert other.acquire()
    with pytest.raises(LockBusy):
        sc.step()  # stands by
    other.release()
    env.record(50)
    assert sc.step() == list(range(STREAMS))
    time.sleep(3 * ttl)
    held = sc.partitions.held()
    infos = [
        env.index.store.lock_info(env.index.control_oid, partition_lock(COLLECTOR_ROLE, n))
        for n in range(STREAMS)
    ]
    live = [
        n
        for n, i in enumerate(infos)
        if i is not None and i.cookie == sc.instance and (i.expires_at or 0) > time.time()
    ]
    print(f"\nafter standing by once: held {held}, live leases in the store {live}")
    assert held == list(range(STREAMS)) and live == list(range(STREAMS)), (
        f"{3 * ttl:.0f}s after taking the streams back, this instance holds streams {held} and the "
        f"store has live leases of it for {live}: Partitions.close() at standing by stopped its "
        "renewer thread for good, and the partitions taken afterwards are never renewed"
    )
    sc.close()
