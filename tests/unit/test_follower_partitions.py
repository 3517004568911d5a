"""``rgw_module.follower_partitions``: the follower cut into partitions, several instances on one
index, against the in-memory radosgw of ``fake_rgw`` on a fake clock (leases expire on it).

Each test reads the records back from the change index and checks every mutation is there
exactly once, in order per key (``test_follower_unit.records``), whichever instance recorded
it: instances sharing the partitions, one dying and the others taking its partitions, an
unpartitioned follower's state split into partitions and merged back, the data log trimmed
only as far as every partition read it, and the settings refused in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changelog.config import SourceConfig
from changelog.errors import PermanentError, TransientError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.lease import Renewer
from rgw_module.follower import Follower
from rgw_module.follower_migrate import bucket_of
from rgw_module.follower_partitions import (
    META_KEY,
    PartitionedFollower,
    merge_partitions,
    partitioned_state,
    read_meta,
)
from rgw_module.follower_state import ZONE_KEYS, StateKeys
from rgw_module.partition_scope import bucket_partition
from rgw_module.trim import marker_order
from tests.unit.fake_rgw import FakeClock, FakeRadosgw, Release
from tests.unit.test_follower_unit import ArrivalIndex, bucket_ops, history

TTL = 30.0
FAST: dict[str, object] = {"poll_interval": 0.01, "lease_ttl": TTL, "trim_interval": 0.0, "workers": 2}
BUCKETS = [f"b{i}" for i in range(8)]


class Zone:
    """One fake radosgw zone, one index (its sqlite locks on the fake clock), and the
    instances following it."""

    def __init__(self, tmp: Path, release: Release = "reef") -> None:
        self.clock = FakeClock()
        self.store = SqliteStore(str(tmp / "index.db"), clock=self.clock.time)
        self.index = ArrivalIndex(self.store, shards=4, clock=self.clock.time)
        self.rgw = FakeRadosgw(self.clock, release=release, datalog_shards=16)
        self.instances: list[PartitionedFollower] = []
        self.plain: list[Follower] = []

    def instance(self, name: str, count: int = 4) -> PartitionedFollower:
        # A renewer never started: ``step`` renews the leases of the live instances by hand, so
        # an instance that stops stepping stops renewing, as a dead process does.
        pf = PartitionedFollower(
            self.index,
            self.rgw,
            SourceConfig.unchecked(**FAST),
            count=count,
            instance=name,
            clocks=self.clock.clocks(),
            renewer=Renewer(TTL),
        )
        self.instances.append(pf)
        return pf

    def step(self, *live: PartitionedFollower, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        for pf in live:
            for lease in pf.leases():
                lease.renew()
        for pf in live:
            pf.step()

    def until_caught_up(self, *live: PartitionedFollower, rounds: int = 60) -> None:
        """Step until every partition is caught up past now (each instance's view agrees)."""
        since = self.clock.time()
        for _ in range(rounds):
            self.step(*live)
            cu = live[0].caught_up_until()
            if cu is not None and cu > since:
                return
        raise AssertionError(f"not caught up after {rounds} rounds: {partitioned_state(self.index)}")

    def close(self) -> None:
        for pf in self.instances:
            pf.close()
        for f in self.plain:
            f.close()
        self.store.close()


@pytest.fixture
def zone(tmp_path: Path) -> Iterator[Zone]:
    z = Zone(tmp_path)
    yield z
    z.close()


def workload(rgw: FakeRadosgw, rounds: int, tag: str) -> dict[str, dict[str, list[str]]]:
    """Writes and deletes over every bucket; what each key's history must then end with."""
    expect: dict[str, dict[str, list[str]]] = {b: {} for b in BUCKETS}
    live: set[tuple[str, str]] = set()
    for r in range(rounds):
        for i, b in enumerate(BUCKETS):
            key = f"{tag}-{(r + i) % 5}"
            if (r + i) % 4 == 3:
                rgw.delete(b, key)
                if (b, key) in live:  # radosgw logs no delete of a missing key
                    expect[b].setdefault(key, []).append("delete")
                    live.discard((b, key))
            else:
                rgw.put(b, key, f"{tag}{r}".encode())
                expect[b].setdefault(key, []).append("write")
                live.add((b, key))
    return expect


def assert_recorded(z: Zone, expect: dict[str, dict[str, list[str]]], tag: str) -> None:
    for b, keys in expect.items():
        got = {k: v for k, v in history(z.index, b).items() if k.startswith(tag)}
        want = {k: [op for op in ops] for k, ops in keys.items()}
        assert got == {k: v for k, v in want.items() if v}, b


def test_two_instances_share_the_partitions_and_record_each_mutation_once(zone: Zone) -> None:
    rgw = zone.rgw
    for b in BUCKETS[:4]:
        rgw.create_bucket(b, shards=3)
        rgw.put(b, "old", b"before")  # a baseline: existed before the first start
    a, b_ = zone.instance("A"), zone.instance("B")
    zone.until_caught_up(a, b_)
    zone.clock.advance(3.0)  # created clearly after the first start: no baseline
    for b in BUCKETS[4:]:
        rgw.create_bucket(b, shards=2)
    expect = workload(rgw, 12, "w")
    zone.until_caught_up(a, b_)
    assert_recorded(zone, expect, "w")
    assert sorted(a.partitions.held() + b_.partitions.held()) == [0, 1, 2, 3]
    assert len(a.partitions.held()) == len(b_.partitions.held()) == 2
    # Each bucket's records and state are its partition's alone.
    state = partitioned_state(zone.index)
    by_partition = state["by_partition"]
    assert isinstance(by_partition, dict)
    for name in BUCKETS:
        owner = bucket_partition(name, 4)
        holders = [p for p, doc in by_partition.items() if name in doc["buckets"]]
        assert holders == [str(owner)], name
        born_before = name in BUCKETS[:4]
        assert bucket_ops(zone.index, name) == ["baseline bucket_create" if born_before else "bucket_create"]
    # The baseline of the old objects, once.
    for name in BUCKETS[:4]:
        assert history(zone.index, name)["old"] == ["baseline write"]
    assert state["holders"] == {"A": a.partitions.held(), "B": b_.partitions.held()}
    assert state["unheld"] == []
    # The zone's caught_up_until is the lowest of the partitions'.
    cus = [doc["caught_up_until"] for doc in by_partition.values()]
    assert state["caught_up_until"] == min(cus)
    stats = a.stats()
    assert stats["partitions_held"] == a.partitions.held() and stats["mutations_recorded"] > 0
    # `rgw-changelog status` (text) says who holds what.
    from changelog.cli.pipeline import _follower_text

    text = _follower_text(state)
    assert text.startswith("4 partitions, held by A: ") and "; B: " in text and "8 buckets" in text, text


def test_a_dead_instance_s_partitions_are_taken_within_the_ttl(zone: Zone) -> None:
    rgw = zone.rgw
    for b in BUCKETS:
        rgw.create_bucket(b, shards=3)
    a, b_, c = zone.instance("A"), zone.instance("B"), zone.instance("C")
    zone.until_caught_up(a, b_, c)
    first = workload(rgw, 6, "x")
    zone.step(a, b_, c)  # some recorded, not all read: B dies in the middle of things
    lost = b_.partitions.held()
    assert lost
    second = workload(rgw, 6, "y")
    died = zone.clock.time()
    taken_at = None
    for _ in range(3 * int(TTL)):
        zone.step(a, c)
        if taken_at is None and sorted(a.partitions.held() + c.partitions.held()) == [0, 1, 2, 3]:
            taken_at = zone.clock.time()
    assert taken_at is not None and taken_at - died <= TTL + 2 * FAST["poll_interval"] + 2.0, taken_at - died
    zone.until_caught_up(a, c)
    assert_recorded(zone, first, "x")
    assert_recorded(zone, second, "y")
    # B comes back: it gets its share again, and nothing is recorded twice.
    third = workload(rgw, 4, "z")
    zone.until_caught_up(a, b_, c)
    for _ in range(5):
        zone.step(a, b_, c)
    assert sorted(len(p.partitions.held()) for p in (a, b_, c)) == [1, 1, 2]
    assert_recorded(zone, third, "z")
    assert_recorded(zone, first, "x")


def test_an_unpartitioned_state_is_split_then_merged_back_without_loss_or_baseline(zone: Zone) -> None:
    rgw = zone.rgw
    for b in BUCKETS:
        rgw.create_bucket(b, shards=3)
    f = Follower(zone.index, rgw, SourceConfig.unchecked(**FAST), clocks=zone.clock.clocks())
    zone.plain.append(f)
    assert f.acquire()
    zone.clock.advance(1.0)
    f.run_until_caught_up(timeout=60)
    one = workload(rgw, 5, "p")
    zone.clock.advance(1.0)
    f.run_until_caught_up(timeout=60)
    two = workload(rgw, 5, "q")  # not read by the plain follower: the partitions must
    f.release()
    listings = rgw.count("list_objects")
    a, b_ = zone.instance("A"), zone.instance("B")
    zone.until_caught_up(a, b_)
    assert read_meta(zone.index) == 4
    assert not list(zone.store.omap_get(zone.index.control_oid, [ZONE_KEYS.boot, ZONE_KEYS.caught_up]))
    assert rgw.count("list_objects") == listings  # no new baseline: the markers moved over
    assert_recorded(zone, one, "p")
    assert_recorded(zone, two, "q")
    # Back to one follower: stop the instances, merge, follow on.
    three = workload(rgw, 5, "r")
    a.step_down()
    b_.step_down()
    assert merge_partitions(zone.index) == 4
    assert read_meta(zone.index) is None
    g = Follower(zone.index, rgw, SourceConfig.unchecked(**FAST), clocks=zone.clock.clocks())
    zone.plain.append(g)
    assert g.acquire()
    zone.clock.advance(1.0)
    g.run_until_caught_up(timeout=60)
    assert rgw.count("list_objects") == listings
    assert_recorded(zone, three, "r")
    for name in BUCKETS:
        assert bucket_ops(zone.index, name) == ["baseline bucket_create"]  # once, by the first follower


def test_the_data_log_is_trimmed_only_as_far_as_every_partition_read_it(zone: Zone) -> None:
    rgw = zone.rgw
    for b in BUCKETS:
        rgw.create_bucket(b, shards=3)
    a = zone.instance("A", count=2)
    # Only partition 0 taken (a second member announced, never stepping): partition 1 never ran.
    b_ = zone.instance("B", count=2)
    b_.partitions.refresh()
    b_.partitions.close()
    zone.store.execute(zone.index.control_oid, _heartbeat("B", zone.clock.time() + 10 * TTL))
    zone.step(a)
    assert a.partitions.held() == [0] or a.partitions.held() == [1]
    workload(rgw, 4, "t")
    for _ in range(3):
        zone.step(a)
    assert rgw.count("datalog_trim") == 0  # the other partition has no markers yet
    zone.step(b_)
    zone.step(a, b_)
    zone.step(a, b_)
    assert rgw.count("datalog_trim") > 0
    # Every trim was at or below both partitions' markers of that shard.
    for call in [c for c in rgw.calls if c.method == "datalog_trim"]:
        n = int(call.arg)
        got = zone.store.omap_get(zone.index.control_oid, [StateKeys.of(p).datalog(n) for p in range(2)])
        assert len(got) == 2


def _heartbeat(instance: str, expires: float) -> object:
    import orjson

    from changelog.pipeline.control import partition_member_key
    from changelog.pipeline.store import WriteOp

    return WriteOp(set={partition_member_key("follower", instance): orjson.dumps({"expires": expires})})


def test_another_partition_count_is_refused_in_one_line(zone: Zone) -> None:
    zone.rgw.create_bucket("b0", shards=1)
    a = zone.instance("A", count=4)
    zone.step(a)
    a.step_down()
    other = zone.instance("C", count=8)
    with pytest.raises(PermanentError) as ex:
        other.step()
    assert "cut into 4 partitions" in str(ex.value) and "\n" not in str(ex.value)


def test_no_split_while_an_unpartitioned_follower_runs(zone: Zone) -> None:
    zone.rgw.create_bucket("b0", shards=1)
    f = Follower(zone.index, zone.rgw, SourceConfig.unchecked(**FAST), clocks=zone.clock.clocks())
    zone.plain.append(f)
    assert f.acquire()
    a = zone.instance("A")
    with pytest.raises(TransientError, match="unpartitioned follower"):
        a.step()
    assert read_meta(zone.index) is None
    assert zone.store.omap_get(zone.index.control_oid, [META_KEY]) == {}


def test_data_log_markers_sort_by_their_numbers() -> None:
    fifo = ["00000000000000000000:00000000000000000009", "00000000000000000000:00000000000000000010",
            "00000000000000000001:00000000000000000000"]  # fmt: skip
    omap = ["1_1700000000.000009_1.1", "1_1700000000.000010_1.1", "1_1700000001.000001_1.1"]
    for markers in (fifo, omap):
        assert sorted(reversed(markers), key=marker_order) == markers
    assert marker_order("") < marker_order(fifo[0])


def test_a_sealed_shard_s_key_goes_with_its_bucket_when_split() -> None:
    """``r.s.`` keys (shards of finished log generations, still re-read) belong to their bucket's
    partition like its markers; before they were not understood, and dropped by a split."""
    assert bucket_of("s.photos:abc.4126.1:3@2") == "photos"
    assert bucket_of("s.tenant/photos:abc.4126.1:0@1") == "tenant/photos"
    assert bucket_of("m.photos:abc.4126.1:3@2") == bucket_of("p.photos:abc.4126.1:3") == "photos"
