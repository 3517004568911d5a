"""Review of the one-time listing of a bucket that gains lifecycle rules (issue 20, ``baseline``):
scenarios where the listing and the change-log records meet at a page boundary, and a
transition made before the listing reaches its key. On moto with the schedule on the sqlite twin
(the harnesses of ``test_lifecycle_baseline`` and ``test_lifecycle_executor``).

Failing tests mark bugs (the report says where and how to fix them); the passing ones stay as
regression tests of what is right."""

from __future__ import annotations

import time
from pathlib import Path

from changelog.consumers.lifecycle.model import DueEntry, due_time
from changelog.consumers.lifecycle.rules import Action
from changelog.pipeline.store import omap_iter
from tests.unit import test_lifecycle_executor
from tests.unit.test_lifecycle_baseline import mark, mtime, run, set_rules
from tests.unit.test_lifecycle_executor import Lab

aws = test_lifecycle_executor.aws  # the moto fixture

S = 1_000_000


def dues(lb: Lab, key: str, action: Action) -> list[int]:
    """The due times (µs) of ``key``'s entries for ``action``, every shard."""
    out = []
    for n in range(lb.schedule.layout.shards):
        for k, raw in omap_iter(lb.index.store, lb.schedule.layout.oid(n), prefix="d."):
            e = DueEntry.decode(raw)
            if e.key == key and e.action is action:
                out.append(due_time(k))
    return out


def test_a_split_keys_boundary_version_expired_between_pages_keeps_the_rest_of_the_key(
    aws: None, tmp_path: Path
) -> None:
    """Page 1 ends inside key k (after v2, the version-id-marker); the executor, in the same
    step, deletes v2 (noncurrent, long due). Page 2 starts after (k, v2), a version that is gone:
    radosgw's cls_rgw ``encode_list_index_key`` then starts after the whole key (moto: after
    everything), so v1 is never listed and never expired, which S3 would do."""
    lb = Lab(tmp_path, [])
    lb.bucket("ver", versioned=True)
    v1 = lb.put("ver", "k", b"1", log=False)
    time.sleep(0.01)
    lb.put("ver", "k", b"2", log=False)
    time.sleep(0.01)
    v3 = lb.put("ver", "k", b"3", log=False)
    lb.put("ver", "z", b"1", log=False)
    set_rules(lb, [{"bucket": "ver", "noncurrent_expire_days": 1}])
    lb.commit()
    run(lb, ahead=10, page_keys=2, pages_per_step=1)
    m = mark(lb, "ver")
    print("mark after the listing:", m)
    run(lb, ahead=10)
    stack = lb.stack("ver", "k")
    assert (v1, False) not in stack, "v1 (noncurrent for long) was never listed, never expired"
    assert stack == [(v3, False)]


def test_a_late_record_of_an_older_version_between_pages_of_a_split_key_keeps_the_version_order(
    aws: None, tmp_path: Path
) -> None:
    """k has v1 (before the rule), v2 and v3 (after it; their records lag). Pages of one version
    (a page ends after its last complete key, so only a key that alone fills a page is split):
    page 1 lists a, page 2 v3 (k split after v3); then the records of v2 and v3 are applied;
    pages 3 and 4 list v2 and v1. The record of v2 (a version older than v3, which the listing
    has) goes on top of v3; page 3 lists v2 after v3, so it moves back under v3: the stack is
    v1, v2, v3, v3 current (its expiry), v2 and v1 noncurrent (their noncurrent expiry)."""
    lb = Lab(tmp_path, [])
    lb.bucket("ver", versioned=True)
    lb.put("ver", "a", b"1", log=False)
    v1 = lb.put("ver", "k", b"1", log=False)
    set_rules(lb, [{"bucket": "ver", "noncurrent_expire_days": 10, "expire_days": 60}])
    lb.commit()
    time.sleep(0.01)
    v2 = lb.put("ver", "k", b"2")
    time.sleep(0.01)
    v3 = lb.put("ver", "k", b"3")
    late, lb.pending = lb.pending, []  # the follower lags: their records come after page 1
    run(lb, ahead=0, page_keys=1, pages_per_step=1, steps=2)
    m = mark(lb, "ver")
    assert m is not None and (m.key_marker, m.version_marker) == ("k", v3)  # k split after v3
    lb.pending = late
    lb.commit()
    run(lb, ahead=0, page_keys=1, pages_per_step=1)
    planned = sorted(x for x in lb.planned() if x[1] == "k")
    print("planned for k:", planned)
    assert planned == sorted([("expire", "k", v3), ("noncurrent", "k", v2), ("noncurrent", "k", v1)])
    run(lb, ahead=20)
    assert lb.stack("ver", "k") == [(v3, False)]  # v2 and v1 noncurrent for 10 days and more


def test_a_transition_copy_listed_before_its_record_keeps_the_objects_age(aws: None, tmp_path: Path) -> None:
    """z is written after the rule (its record applied) and transitioned at once (day 0) in the
    step that lists page 1 (a); page 2 lists z's copy before the copy's record comes. The copy
    is then a fresh version (age from the copy's mtime), and its record an update in place that
    leaves the transition's note unused: z expires 30 days after the copy, not after its write
    (S3 keeps an object's age across transitions; the records-only path does, via the note)."""
    lb = Lab(tmp_path, [])
    lb.bucket("plain")
    lb.put("plain", "a", b"a", log=False)
    set_rules(
        lb, [{"bucket": "plain", "transition_days": 0, "storage_class": "STANDARD_IA", "expire_days": 30}]
    )
    lb.commit()
    lb.put("plain", "z", b"z")
    lb.commit()
    born = int(mtime(lb, "plain", "z") * S)
    time.sleep(2.1)  # the copy's mtime 2 s later (moto: whole seconds)
    run(lb, ahead=0, page_keys=1, pages_per_step=1, steps=1)
    assert lb.executor.snapshot()["transitioned"] >= 1
    assert lb.s3.head_object(Bucket="plain", Key="z").get("StorageClass") == "STANDARD_IA"
    run(lb, ahead=0, page_keys=1, pages_per_step=1)  # page 2 lists z's copy
    lb.record_current("plain", "z")  # the copy's record comes after
    lb.commit()
    run(lb, ahead=0)
    got = dues(lb, "z", Action.EXPIRE)
    print("z expire due - its write's mtime: %s s" % [(d - born) / S for d in got])
    assert len(got) == 1 and abs(got[0] - (born + 30 * S)) < S


def test_a_listed_old_object_due_for_two_transitions_goes_straight_to_the_last(
    aws: None, tmp_path: Path
) -> None:
    """A transition chain (two rules, days 1 and 2) on an object older than both: one copy,
    into the last class; the copy's record (age kept by the note) schedules nothing more."""
    lb = Lab(tmp_path, [])
    lb.bucket("plain")
    lb.put("plain", "k", b"x", log=False)
    set_rules(
        lb,
        [
            {"bucket": "plain", "id": "warm", "transition_days": 1, "storage_class": "STANDARD_IA"},
            {"bucket": "plain", "id": "cold", "transition_days": 2, "storage_class": "ONEZONE_IA"},
        ],
    )
    lb.commit()
    consumer = run(lb, ahead=5)
    assert consumer.stats()["transitioned"] == 1
    assert lb.s3.head_object(Bucket="plain", Key="k")["StorageClass"] == "ONEZONE_IA"
    lb.record_current("plain", "k")
    lb.commit()
    before = lb.executor.snapshot()["transitioned"]
    run(lb, ahead=5)
    assert lb.planned() == [] and lb.executor.snapshot()["transitioned"] == before
    assert lb.s3.head_object(Bucket="plain", Key="k")["StorageClass"] == "ONEZONE_IA"


def test_delete_markers_split_over_pages_of_one_are_scheduled_once_from_the_one_above(
    aws: None, tmp_path: Path
) -> None:
    """k's stack is marker m2, v2, marker m1, v1 (pages of 1 split it at every entry): each
    version is scheduled once, noncurrent since the mtime of the entry above it (a marker), and
    so is the noncurrent marker m1 (since v2's mtime: radosgw's noncurrent expiry removes
    markers too); the current marker m2, over v2, is not. (A suspended bucket's null version is
    not modelled: moto's null write drops the key's whole version history.)"""
    lb = Lab(tmp_path, [])
    lb.bucket("ver", versioned=True)
    v1 = lb.put("ver", "k", b"1", log=False)
    time.sleep(1.1)
    m1 = lb.s3.delete_object(Bucket="ver", Key="k")["VersionId"]
    time.sleep(1.1)
    v2 = lb.put("ver", "k", b"2", log=False)
    time.sleep(1.1)
    m2 = lb.s3.delete_object(Bucket="ver", Key="k")["VersionId"]
    set_rules(lb, [{"bucket": "ver", "noncurrent_expire_days": 10, "expire_days": 30}])
    lb.commit()
    consumer = run(lb, ahead=0, page_keys=1, pages_per_step=1)  # v1 due 10 s after m1: not yet
    assert (consumer.stats()["baseline_versions"], consumer.stats()["baseline_pages"]) == (4, 4)
    assert sorted(lb.planned()) == sorted([("noncurrent", "k", v) for v in (v2, m1, v1)])
    # v1 below m1, m1 below v2, v2 below m2: listed mtimes are whole seconds, 1.1 s apart.
    want = sorted(int((mtime_of(lb, above) + 10) * S) for above in (m1, v2, m2))
    got = sorted(dues(lb, "k", Action.NONCURRENT))
    assert all(abs(g - w) < S for g, w in zip(got, want, strict=True)), (got, want)
    # Just after each due time, the one below is gone and the next one not yet.
    run(lb, ahead=(want[0] + S // 2) / S - time.time())
    assert lb.stack("ver", "k") == [(m2, True), (v2, False), (m1, True)]
    run(lb, ahead=(want[1] + S // 2) / S - time.time())
    assert lb.stack("ver", "k") == [(m2, True), (v2, False)]


def mtime_of(lb: Lab, version: str | None) -> float:
    """The listed mtime of a version or delete marker of bucket ``ver``."""
    r = lb.s3.list_object_versions(Bucket="ver")
    (m,) = [d for d in [*r.get("Versions", []), *r.get("DeleteMarkers", [])] if d["VersionId"] == version]
    return float(m["LastModified"].timestamp())


def test_a_key_listed_to_its_end_over_pages_is_not_listed_again_after_it(aws: None, tmp_path: Path) -> None:
    """a (3 versions) is split by pages of 2 and ends in page 2; page 2 ends after a (b
    dropped: c follows). Page 3 starts after the whole key a: S3 starts at b, moto (as radosgw)
    lists a's versions again, a page of them: they are dropped and the listing goes on through
    them (it went back to a's newest for ever before), so it ends, each version scheduled once."""
    lb = Lab(tmp_path, [])
    lb.bucket("ver", versioned=True)
    va = [lb.put("ver", "a", b"%d" % n, log=False) for n in range(3)]
    vb = lb.put("ver", "b", b"1", log=False)
    vc = lb.put("ver", "c", b"1", log=False)
    set_rules(lb, [{"bucket": "ver", "noncurrent_expire_days": 30, "expire_days": 30}])
    lb.commit()
    consumer = run(lb, ahead=0, page_keys=2, pages_per_step=1, steps=10)
    m = mark(lb, "ver")
    print("mark:", m, "stats:", consumer.stats())
    assert m is not None and m.done and m.versions == 5
    assert consumer.stats()["baseline_versions"] == 5
    assert sorted(lb.planned()) == sorted(
        [("expire", "a", va[2]), ("noncurrent", "a", va[1]), ("noncurrent", "a", va[0]), ("expire", "b", vb),
         ("expire", "c", vc)]
    )  # fmt: skip
