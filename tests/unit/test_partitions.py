"""``changelog.pipeline.partitions``: instances share a role's partitions by lease, on the sqlite
twin of the RADOS store with injected clocks. At every point no partition has two holders; the
shares converge to the fair split; a dead instance's partitions go to the others one TTL later;
a clean shutdown hands them over at once; a newcomer gets its share."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.control import partition_lock
from changelog.pipeline.lease import Renewer, make_cookie
from changelog.pipeline.partitions import Partitions, fair_share, preference
from changelog.pipeline.store import ObjectStore

OID = "idx.control"
TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "i.db"), clock=clock.time)
    yield s
    s.close()


def member(store: SqliteStore, clock: Clock, name: str, count: int = 16) -> Partitions:
    # A renewer that is never started: the test renews by hand (``renew``), in fake time.
    return Partitions(
        store, OID, role="follower", count=count, instance=f"{name}-{make_cookie('t')}", ttl=TTL,
        clock=clock.time, monotonic=clock.monotonic, renewer=Renewer(TTL, monotonic=clock.monotonic),
    )  # fmt: skip


def renew(*ps: Partitions) -> None:
    for p in ps:
        for n in p.held():
            p.lease(n).renew()


def holders(store: ObjectStore, count: int = 16) -> dict[int, str]:
    out = {}
    for n in range(count):
        info = store.lock_info(OID, partition_lock("follower", n))
        if info is not None:
            out[n] = info.cookie
    return out


def assert_disjoint(*ps: Partitions) -> None:
    seen: dict[int, str] = {}
    for p in ps:
        for n in p.held():
            assert n not in seen, f"partition {n} held by {seen[n]} and {p.instance}"
            seen[n] = p.instance
    # What the instances believe is what the store says.
    assert holders(ps[0].store) == seen


def rounds(ps: list[Partitions], clock: Clock, n: int) -> None:
    for _ in range(n):
        for p in ps:
            p.refresh()
            assert_disjoint(*ps)
        clock.now += 1
        renew(*ps)


def test_fair_share_splits_the_remainder_by_name_order() -> None:
    members = ["a", "b", "c"]
    assert [fair_share(16, members, m) for m in members] == [6, 5, 5]
    assert fair_share(16, ["a", "b"], "c") == 5  # not yet listed: counted in
    assert fair_share(3, ["a", "b", "c", "d"], "d") == 0
    assert sorted(preference("x", 16)) == list(range(16)) and preference("x", 16) != preference("y", 16)


def test_three_instances_converge_to_the_fair_split_never_sharing_a_partition(store: SqliteStore, clock: Clock) -> None:
    ps = [member(store, clock, name) for name in ("a", "b", "c")]
    rounds(ps, clock, 4)
    got = sorted(len(p.held()) for p in ps)
    assert got == [5, 5, 6], got
    assert sorted(itertools.chain.from_iterable(p.held() for p in ps)) == list(range(16))


def test_a_dead_instance_s_partitions_go_to_the_others_one_ttl_later(store: SqliteStore, clock: Clock) -> None:
    ps = [member(store, clock, name) for name in ("a", "b", "c")]
    rounds(ps, clock, 4)
    dead, alive = ps[0], ps[1:]
    orphans = set(dead.held())
    assert orphans
    # The dead one neither refreshes nor renews; within the TTL nobody may take its partitions.
    for _ in range(int(TTL) - 2):
        for p in alive:
            p.refresh()
            assert not orphans & set(p.held())
        clock.now += 1
        renew(*alive)
    clock.now += 3  # past its leases' TTL and its heartbeat
    rounds(alive, clock, 3)
    assert sorted(itertools.chain.from_iterable(p.held() for p in alive)) == list(range(16))
    assert sorted(len(p.held()) for p in alive) == [8, 8]
    assert set(holders(store).values()) == {p.instance for p in alive}


def test_a_clean_shutdown_hands_over_at_once_and_a_newcomer_gets_its_share(store: SqliteStore, clock: Clock) -> None:
    a, b = member(store, clock, "a"), member(store, clock, "b")
    rounds([a, b], clock, 3)
    assert sorted(len(p.held()) for p in (a, b)) == [8, 8]
    b.close()
    assert a.refresh() == list(range(16))  # no TTL to wait for
    c = member(store, clock, "c")
    rounds([a, c], clock, 3)
    assert sorted(len(p.held()) for p in (a, c)) == [8, 8]
    assert a.released >= 8 and c.taken == 8


def test_a_lost_partition_is_dropped_and_taken_again(store: SqliteStore, clock: Clock) -> None:
    a = member(store, clock, "a", count=4)
    assert a.refresh() == [0, 1, 2, 3]
    # Someone breaks partition 2's lock (an operator, or a TTL that passed while this one hung).
    info = store.lock_info(OID, partition_lock("follower", 2))
    assert info is not None and store.break_lock(OID, info)
    with pytest.raises(Exception, match="lost"):
        a.lease(2).renew()
    assert 2 not in a.held()
    assert a.refresh() == [0, 1, 2, 3]  # free again: taken again


def test_more_instances_than_partitions_leave_some_idle(store: SqliteStore, clock: Clock) -> None:
    ps = [member(store, clock, name, count=2) for name in ("a", "b", "c")]
    rounds(ps, clock, 3)
    assert sorted(len(p.held()) for p in ps) == [0, 1, 1]


def test_doc_says_who_holds_what(store: SqliteStore, clock: Clock) -> None:
    a, b = member(store, clock, "a", count=4), member(store, clock, "b", count=4)
    rounds([a, b], clock, 3)
    doc = a.doc()
    assert doc["count"] == 4
    members = doc["members"]
    assert isinstance(members, dict) and set(members) == {a.instance, b.instance}
    assert doc["holders"] == {a.instance: a.held(), b.instance: b.held()}
    assert doc["this"] == {"instance": a.instance, "partitions": a.held()}
