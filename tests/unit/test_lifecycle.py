"""Lifecycle rules and the due-time schedule (issue 20) on the sqlite twin: a real index store for
the checkpoint and the schedule shards, a directory target holding log objects written as the
collector writes them (with record times the tests choose), and the lifecycle consumer under its
runner, without an executor (the executor is in test_lifecycle_executor.py, on moto)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.lifecycle.consumer import LifecycleConsumer, layout_of
from changelog.consumers.lifecycle.model import APPLIED_KEY, DUE_PREFIX, KEY_PREFIX, Note, due_time
from changelog.consumers.lifecycle.plan import plan, status
from changelog.consumers.lifecycle.rules import LifecycleConfig, RuleSet, parse_lifecycle
from changelog.consumers.lifecycle.schedule import Schedule
from changelog.errors import ConfigError, LeaseLost, PermanentError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.reader import read_object
from changelog.pipeline.store import ObjectStore, WriteOp, omap_iter
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import LogWriter, rfc3339

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 10  # seconds in a lifecycle day here (day_seconds)
S = 1_000_000


def us(at: float) -> int:
    return int((T0 + at) * S)


# --------------------------------------------------------------------------- rules


def test_rules_parse_with_defaults() -> None:
    cfg = parse_lifecycle(
        {"enabled": True, "rules": [
            {"bucket": "logs", "prefix": "tmp/", "expire_days": 30, "noncurrent_expire_days": 7},
            {"id": "cold", "bucket": "acme/media", "tags": {"tier": "cold"}, "transition_days": 10,
             "storage_class": "COLD"},
        ]}
    )  # fmt: skip
    assert (cfg.day_seconds, cfg.shards, cfg.batch, cfg.delete_batch) == (86400.0, 16, 1000, 1000)
    rules = RuleSet.of(cfg)
    assert [r.id for r in rules.rules] == ["rule-0", "cold"]
    assert rules.governs("logs") and rules.governs("acme/media") and not rules.governs("media")
    assert [r.id for r in rules.for_key("logs", "tmp/x")] == ["rule-0"]
    assert rules.for_key("logs", "keep/x") == ()
    due = rules.current("acme/media", "a", born_us=5, storage_class=None)
    assert [(d.due_us, d.action.value) for d in due] == [(5 + 10 * 86400 * S, "transition")]
    # Already in the target class: nothing to move.
    assert rules.current("acme/media", "a", born_us=5, storage_class="COLD") == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"rules": [{"bucket": "b"}]}, "give at least one of expire_days"),
        (
            {"rules": [{"bucket": "b", "expire_days": 0}]},
            "lifecycle.rules[0].expire_days must be at least 1 (got 0)",
        ),
        (
            {"rules": [{"bucket": "b", "expire_days": "3"}]},
            'lifecycle.rules[0].expire_days must be an integer (got "3")',
        ),
        ({"rules": [{"bucket": "b", "expire_dayz": 3}]}, "unknown key lifecycle.rules[0].expire_dayz"),
        ({"rules": [{"bucket": "b", "transition_days": 3}]}, "transition_days and storage_class go together"),
        (
            {"rules": [{"bucket": "b", "expire_days": 3, "transition_days": 3, "storage_class": "C"}]},
            "transition_days must be less than expire_days",
        ),
        ({"rules": [{"bucket": "t:b", "expire_days": 3}]}, "tenant/bucket, not tenant:bucket"),
        ({"rules": [{"bucket": "b", "abort_incomplete_multipart_days": 0}]}, "abort_incomplete_multipart_days"),
        (
            {"rules": [{"bucket": "b", "expire_days": 1}, {"bucket": "c", "expire_days": 1, "id": "rule-0"}]},
            "two rules are named 'rule-0'",
        ),
        ({"day_seconds": 0}, "lifecycle.day_seconds must be greater than 0 (got 0)"),
        (
            {"rules": [{"bucket": "b", "expire_days": 1, "tags": {"a": 1}}]},
            "lifecycle.rules[0].tags.a must be a string",
        ),
    ],
)
def test_bad_rules_are_refused_in_one_line(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_lifecycle(doc)
    assert message in str(ei.value)
    assert "\n" not in str(ei.value)


# --------------------------------------------------------------------------- the schedule


@dataclass
class Records:
    """Change-log lines with chosen mutation times (seconds from T0), written as log objects."""

    writer: LogWriter
    n: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)
    last_recorded: int = 0

    def add(self, at: float, op: str, bucket: str, key: str | None = None, *, version: str | None = None,
            etag: str | None = "e", mtime: float | None = None, storage_class: str | None = None,
            baseline: bool = False, tenant: str | None = None, seq: str | None = None) -> None:  # fmt: skip
        self.n += 1
        t = us(at)
        self.last_recorded = max(t, self.last_recorded + 1)
        write = op == "write"
        self.pending.append(
            {
                "v": 1,
                "id": hashlib.blake2b(f"l{self.n}".encode(), digest_size=16).hexdigest(),
                "time": rfc3339(t),
                "op": op,
                "tenant": tenant,
                "bucket": bucket,
                "key": key,
                "version_id": version,
                "size": 1 if write else None,
                "etag": etag if write else None,
                "mtime": rfc3339(us(at if mtime is None else mtime)) if write else None,
                "storage_class": (storage_class or "STANDARD") if write else None,
                "seq": seq or f"000001.1.{self.n:016d}",
                "baseline": baseline,
                "recorded": rfc3339(self.last_recorded),
            }
        )

    def commit(self) -> str:
        name = self.writer.write(self.pending)
        self.pending = []
        self.writer.watermark()
        return name


RULES: dict[str, Any] = {
    "day_seconds": DAY,
    "shards": 4,
    "rules": [
        {"id": "tmp", "bucket": "b", "prefix": "tmp/", "expire_days": 3},
        {"id": "ver", "bucket": "v", "expire_days": 5, "noncurrent_expire_days": 2},
        {"id": "cold", "bucket": "c", "transition_days": 1, "storage_class": "COLD", "expire_days": 4},
    ],
}


@dataclass
class Env:
    index: ChangeIndex
    logs: DirectoryTarget
    recs: Records
    section: LifecycleConfig

    @property
    def store(self) -> ObjectStore:
        return self.index.store

    def schedule(self, name: str = "lifecycle", section: LifecycleConfig | None = None) -> Schedule:
        section = section or self.section
        return Schedule(self.store, layout_of(section, self.index.prefix, name=name), RuleSet.of(section))

    def drain(self, name: str = "lifecycle", section: LifecycleConfig | None = None) -> LifecycleConsumer:
        consumer = LifecycleConsumer(self.schedule(name, section), None, self.logs, name=name, interval=0.01)
        runner = ConsumerRunner(self.index, consumer, lease_ttl=30)
        assert runner.acquire()
        try:
            for _ in range(100):
                runner.step(threading.Event())
                if runner.checkpoint().after == self.recs.writer.last_object:
                    return consumer
        finally:
            runner.step_down()
        raise AssertionError("lifecycle did not catch up")

    def due(self, name: str = "lifecycle") -> list[tuple[float, str, str, str | None]]:
        """(due seconds from T0, action, key, version) of every scheduled entry, by due time."""
        pending = self.schedule(name).due(2**62, 10_000)
        return sorted(
            (due_time(p.dkey) / S - T0, p.entry.action.value, p.entry.key, p.entry.ver) for p in pending
        )

    def raw(self, name: str = "lifecycle") -> dict[str, bytes]:
        """Every schedule key but the write token: for comparing two schedules."""
        sched = self.schedule(name)
        return {
            f"{n}:{k}": v
            for n in range(sched.layout.shards)
            for k, v in omap_iter(self.store, sched.layout.oid(n))
            if k.startswith((DUE_PREFIX, KEY_PREFIX))
        }


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
    logs = DirectoryTarget(tmp_path / "logs", fsync=False)
    made = Env(index, logs, Records(LogWriter(logs)), parse_lifecycle(RULES))
    yield made
    index.store.close()


def test_unversioned_overwrite_reschedules_and_delete_cancels(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "b", "tmp/a")
    r.add(1, "write", "b", "tmp/b")
    r.add(2, "write", "b", "keep/c")  # no rule: kept in the schedule's inventory, never due
    r.add(3, "write", "other", "tmp/x")  # a bucket no rule names: not kept at all
    r.commit()
    env.drain()
    assert env.due() == [(30.0, "expire", "tmp/a", None), (31.0, "expire", "tmp/b", None)]
    r.add(10, "write", "b", "tmp/a", etag="e2")  # overwrite: counts from its own mtime
    r.add(11, "delete", "b", "tmp/b")
    r.commit()
    env.drain()
    assert env.due() == [(40.0, "expire", "tmp/a", None)]


def test_versioned_noncurrent_counts_from_the_next_write(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "v", "k", version="v1")
    r.add(7, "write", "v", "k", version="v2")  # v1 noncurrent since 7
    r.commit()
    env.drain()
    assert env.due() == [(27.0, "noncurrent", "k", "v1"), (57.0, "expire", "k", "v2")]
    r.add(9, "delete_marker", "v", "k", version="m1")  # v2 noncurrent since 9; a marker has no action
    r.commit()
    env.drain()
    assert env.due() == [(27.0, "noncurrent", "k", "v1"), (29.0, "noncurrent", "k", "v2")]
    # The marker removed: v2 is current again, due from its own mtime; then v2 deleted: v1 is.
    r.add(12, "delete", "v", "k", version="m1")
    r.commit()
    env.drain()
    assert env.due() == [(27.0, "noncurrent", "k", "v1"), (57.0, "expire", "k", "v2")]
    r.add(13, "delete", "v", "k", version="v2")
    r.commit()
    env.drain()
    assert env.due() == [(50.0, "expire", "k", "v1")]


def test_suspended_null_version_is_replaced_not_made_noncurrent(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "v", "k")  # the null version, before versioning
    r.add(1, "write", "v", "k", version="v1")  # null noncurrent since 1
    r.add(2, "write", "v", "k", etag="n2")  # suspended: a new null version replaces the old one
    r.commit()
    env.drain()
    assert env.due() == [(22.0, "noncurrent", "k", "v1"), (52.0, "expire", "k", None)]
    r.add(3, "delete_marker", "v", "k")  # a null marker replaces the null version
    r.commit()
    env.drain()
    assert env.due() == [(22.0, "noncurrent", "k", "v1")]


def test_baseline_schedules_existing_objects_from_their_mtime(env: Env) -> None:
    r = env.recs
    # A versioned listing, oldest first: v1 (mtime -100), v2 (mtime -40); both long due.
    r.add(-100, "write", "v", "k", version="v1", baseline=True, seq="000001.0.00000000000000001")
    r.add(-40, "write", "v", "k", version="v2", baseline=True, seq="000001.0.00000000000000002")
    r.add(-500, "write", "b", "tmp/old", baseline=True, seq="000001.0.00000000000000003")
    r.commit()
    env.drain()
    assert env.due() == [(-470.0, "expire", "tmp/old", None), (-20.0, "noncurrent", "k", "v1"),
                         (10.0, "expire", "k", "v2")]  # fmt: skip


def test_a_tag_update_in_place_keeps_age_and_place(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "v", "k", version="v1")
    r.add(5, "write", "v", "k", version="v2")
    # PutObjectTagging on v1 arrives as a write of v1 with its ETag and mtime: still noncurrent.
    r.add(6, "write", "v", "k", version="v1", mtime=0)
    r.commit()
    env.drain()
    assert env.due() == [(25.0, "noncurrent", "k", "v1"), (55.0, "expire", "k", "v2")]


def test_a_rebaseline_of_the_same_versions_changes_nothing(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "v", "k", version="v1")
    r.add(5, "write", "v", "k", version="v2")
    r.add(6, "delete_marker", "v", "k", version="m1")
    r.commit()
    env.drain()
    before = env.due()
    # A full sync of a new generation lists them again, oldest first, at their own mtimes.
    for n, (at, op, ver) in enumerate([(0, "write", "v1"), (5, "write", "v2"), (6, "delete_marker", "m1")]):
        r.add(at, op, "v", "k", version=ver, baseline=True, seq=f"000002.0.{n:016d}")
    r.commit()
    env.drain()
    assert env.due() == before == [(25.0, "noncurrent", "k", "v1"), (26.0, "noncurrent", "k", "v2")]


def test_transition_note_keeps_the_original_age(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "c", "k", etag="x")
    r.commit()
    env.drain()
    assert env.due() == [(10.0, "transition", "k", None), (40.0, "expire", "k", None)]
    sched = env.schedule()
    (p,) = [p for p in sched.due(us(10), 10) if p.entry.action.value == "transition"]
    assert sched.set_note(p, Note("x", "COLD", p.entry.born_us))
    r.add(11, "write", "c", "k", etag="x", storage_class="COLD")  # the executor's copy
    r.commit()
    env.drain()
    assert env.due() == [(40.0, "expire", "k", None)]  # from the original's mtime, not 11
    r.add(12, "write", "c", "k", etag="x", storage_class="COLD")  # a user's rewrite: its own age
    r.commit()
    env.drain()
    assert env.due() == [(52.0, "expire", "k", None)]


def test_bucket_delete_drops_what_was_recorded_before_it(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "b", "tmp/a")
    r.add(1, "bucket_delete", "b")
    r.add(2, "write", "b", "tmp/new")  # the bucket's next lifetime
    r.commit()
    env.drain()
    assert env.due() == [(32.0, "expire", "tmp/new", None)]


# --------------------------------------------------------------------------- exactly once


def _mixed(r: Records) -> None:
    for i in range(12):
        r.add(i, "write", "b", f"tmp/{i}")
        r.add(i, "write", "v", f"k{i % 3}", version=f"v{i}")
    r.add(20, "delete", "b", "tmp/3")
    r.add(21, "delete_marker", "v", "k1", version="m")


def test_replaying_a_log_object_changes_nothing(env: Env) -> None:
    _mixed(env.recs)
    obj = env.recs.commit()
    env.drain()
    before = env.raw()
    sched = env.schedule()
    by_shard = _by_shard(sched, list(read_object(env.logs, obj)))
    assert len(by_shard) >= 2
    assert not any(sched.apply(n, obj, recs) for n, recs in by_shard.items())
    assert env.raw() == before


def _by_shard(sched: Schedule, records: list[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for rec in records:
        out.setdefault(sched.layout.shard(rec.tenant or "", rec.bucket)[0], []).append(rec)
    return out


def test_a_crash_between_shard_writes_applies_each_shard_once(env: Env) -> None:
    _mixed(env.recs)
    obj = env.recs.commit()
    sched = env.schedule()
    by_shard = _by_shard(sched, list(read_object(env.logs, obj)))
    assert len(by_shard) >= 2
    first = min(by_shard)
    assert sched.apply(first, obj, by_shard[first])  # then the process dies: no checkpoint
    env.drain()  # the next holder replays the object
    env.drain("rebuild")  # the same logs into another schedule, without a crash
    mine = {k.split(":", 1)[1]: v for k, v in env.raw().items()}
    rebuilt = {k.split(":", 1)[1]: v for k, v in env.raw("rebuild").items()}
    assert mine == rebuilt
    assert env.store.omap_get(sched.layout.oid(first), [APPLIED_KEY])[APPLIED_KEY] == obj.encode()


def test_a_writer_that_read_before_another_write_fails_its_guard(env: Env) -> None:
    env.recs.add(0, "write", "b", "tmp/a")
    obj = env.recs.commit()
    sched = env.schedule()
    (rec,) = list(read_object(env.logs, obj))
    n = sched.layout.shard("", "b")[0]
    stale = sched.head(n)
    env.store.execute(sched.layout.oid(n), WriteOp(set={"g": b"someone-else"}))
    with pytest.raises(LeaseLost):
        sched.apply(n, obj, [rec], head=stale)


def test_rules_changed_are_rescheduled_from_the_schedule(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "b", "tmp/a")
    r.add(1, "write", "b", "keep/c")
    r.add(2, "write", "v", "k")
    r.commit()
    env.drain()
    changed = parse_lifecycle({**RULES, "rules": [{"id": "all", "bucket": "b", "expire_days": 1}]})
    sched = env.schedule(section=changed)
    with pytest.raises(PermanentError, match="other rules"):
        sched.apply(sched.layout.shard("", "b")[0], "zz", [])
    env.recs.add(3, "write", "b", "keep/d")
    env.recs.commit()
    env.drain(section=changed)  # the lease taken: rescheduled, then the new object applied
    got = sorted((due_time(p.dkey) / S - T0, p.entry.key) for p in sched.due(2**62, 100))
    assert got == [(10.0, "tmp/a"), (11.0, "keep/c"), (13.0, "keep/d")]  # "v" is no longer governed


def test_another_day_length_is_refused(env: Env) -> None:
    env.recs.add(0, "write", "b", "tmp/a")
    env.recs.commit()
    env.drain()
    other = parse_lifecycle({**RULES, "day_seconds": 86400})
    with pytest.raises(PermanentError, match="keep \\[lifecycle\\] day_seconds"):
        env.schedule(section=other).head(env.schedule().layout.shard("", "b")[0])


def test_plan_and_status(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "b", "tmp/a")
    r.add(0, "write", "v", "k", version="v1")
    r.add(1, "write", "v", "k", version="v2")
    r.commit()
    env.drain()
    layout = env.schedule().layout
    doc = plan(env.store, layout)
    assert [(d["action"], d["bucket"], d["key"], d["version_id"], d["rule"]) for d in doc] == [
        ("noncurrent", "v", "k", "v1", "ver"), ("expire", "b", "tmp/a", None, "tmp"), ("expire", "v", "k", "v2", "ver")
    ]  # fmt: skip
    assert doc[0]["due"] == rfc3339(us(21))
    assert [d["key"] for d in plan(env.store, layout, bucket="b")] == ["tmp/a"]
    assert plan(env.store, layout, until_us=us(21)) == doc[:1]
    st = status(env.store, layout, now_us=us(30))
    assert (st["due_now"], st["scheduled_later"], st["failed"]) == (2, 1, 0)
    assert st["next_due"] == rfc3339(us(51))
