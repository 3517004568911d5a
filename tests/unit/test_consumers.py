"""The consumer framework on real stores: a sqlite index for the checkpoint and the state, a
directory target for the change logs (written by the backup tests' ``Zone``, with moto as the
zone), and the backup consumer on top."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from moto import mock_aws

from changelog.config import parse_config
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.consumer import BackupConsumer
from changelog.consumers.backup.store import BackupStore
from changelog.consumers.framework import (
    ConsumerRunner,
    Cursor,
    LogObjectConsumer,
    ObjectBatch,
    consumers_doc,
    load_checkpoint,
)
from changelog.errors import LeaseLost, PermanentError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.control import consumer_key
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.reader import LogObject
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def logs(tmp_path: Path) -> DirectoryTarget:
    return DirectoryTarget(tmp_path / "logs", fsync=False)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ChangeIndex]:
    idx = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
    yield idx
    idx.store.close()


class CountWrites(LogObjectConsumer):
    """Counts write records per bucket in its own state keys, committed with the checkpoint."""

    name = "count"
    interval = 0.01

    def __init__(self, logs: DirectoryTarget, *, fail_on: str | None = None) -> None:
        super().__init__(logs, per_step=100)
        self.fail_on = fail_on
        self.handled: list[str] = []

    def handle(self, cursor: Cursor, obj: LogObject, records: list[LogRecord]) -> ObjectBatch:
        writes: dict[str, int] = {}
        for rec in records:
            if rec.key == self.fail_on:
                raise PermanentError(f"cannot handle {rec.key}")
            if rec.op == "write":
                writes[rec.bucket] = writes.get(rec.bucket, 0) + 1
        old = cursor.read_state([f"n.{b}" for b in writes])
        self.handled.append(obj.name)
        return ObjectBatch(set_state={k: str(int(old.get(k, b"0")) + n).encode() for b, n in writes.items() for k in [f"n.{b}"]})


def counts(index: ChangeIndex, name: str = "count") -> dict[str, int]:
    prefix = consumer_key(name) + ".n."
    from changelog.pipeline.store import omap_iter

    return {k[len(prefix) :]: int(v) for k, v in omap_iter(index.store, index.control_oid, prefix=prefix)}


def three_objects(zone: Zone) -> list[str]:
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    names = []
    for round_ in range(3):
        for i in range(round_ + 1):
            zone.put("aaa", f"k{round_}.{i}", b"x")
        zone.put("bbb", f"k{round_}", b"y")
        names.append(zone.commit())
    return names


def test_each_log_object_is_applied_once_with_the_checkpoint(aws: Any, logs: DirectoryTarget, index: ChangeIndex) -> None:
    zone = Zone(aws, logs)
    names = three_objects(zone)
    consumer = CountWrites(logs)
    runner = ConsumerRunner(index, consumer, lease_ttl=5)
    assert runner.acquire()
    runner.step(threading.Event())
    assert consumer.handled == names
    assert counts(index) == {"aaa": 6, "bbb": 3}
    cp = load_checkpoint(index, "count")
    assert cp.after == names[-1] and cp.objects == 3 and cp.records == 9
    # Nothing new: nothing applied again.
    runner.step(threading.Event())
    assert counts(index) == {"aaa": 6, "bbb": 3} and consumer.handled == names
    zone.put("aaa", "late", b"z")
    late = zone.commit()
    runner.step(threading.Event())
    assert counts(index) == {"aaa": 7, "bbb": 3} and consumer.handled[-1] == late
    runner.step_down()


def test_a_failure_mid_way_keeps_what_was_committed_and_applies_the_rest_once(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    zone = Zone(aws, logs)
    names = three_objects(zone)
    broken = ConsumerRunner(index, CountWrites(logs, fail_on="k2.0"), lease_ttl=5)
    assert broken.acquire()
    with pytest.raises(PermanentError, match="k2.0"):
        broken.step(threading.Event())
    # Objects 1 and 2 are in, with their checkpoint; object 3 is not.
    assert counts(index) == {"aaa": 3, "bbb": 2}
    assert load_checkpoint(index, "count").after == names[1]
    broken.step_down()
    fixed = CountWrites(logs)
    runner = ConsumerRunner(index, fixed, lease_ttl=5)
    assert runner.acquire()
    runner.step(threading.Event())
    assert fixed.handled == [names[2]]
    assert counts(index) == {"aaa": 6, "bbb": 3}
    runner.step_down()


def test_one_active_consumer_and_a_lost_lease_writes_nothing(aws: Any, logs: DirectoryTarget, index: ChangeIndex) -> None:
    zone = Zone(aws, logs)
    three_objects(zone)
    first = ConsumerRunner(index, CountWrites(logs), lease_ttl=5)
    second = ConsumerRunner(index, CountWrites(logs), lease_ttl=5)
    assert first.acquire()
    assert not second.acquire()  # stands by while the first holds the lease
    assert first._cursor is not None
    cursor = first._cursor
    # The first loses its lock (expired and taken over): its commits are refused by the store.
    first.lease.stop_renewing()
    index.store.unlock(index.control_oid, first.lease.ref)
    assert second.acquire()
    with pytest.raises(LeaseLost):
        cursor.commit("zzz", records=1, set_state={"n.aaa": b"999"})
    assert load_checkpoint(index, "count").after is None and counts(index) == {}
    second.step(threading.Event())
    assert counts(index) == {"aaa": 6, "bbb": 3}
    second.step_down()


def test_the_leased_loop_runs_and_status_shows_the_checkpoint(aws: Any, logs: DirectoryTarget, index: ChangeIndex) -> None:
    zone = Zone(aws, logs)
    names = three_objects(zone)
    consumer = CountWrites(logs)
    runner = ConsumerRunner(index, consumer, lease_ttl=5)
    stop = threading.Event()
    t = threading.Thread(target=runner.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 10
    while load_checkpoint(index, "count").after != names[-1] and time.monotonic() < deadline:
        time.sleep(0.01)
    doc = consumers_doc(index)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    assert doc["count"]["after"] == names[-1]  # type: ignore[index]
    assert doc["count"]["lease"]["description"].startswith("change-log consumer count")  # type: ignore[index]
    assert runner.stats()["steps"] >= 1 and runner.stats()["records_consumed"] == 9
    assert not runner.lease.held  # released on stop
    assert consumers_doc(index)["count"]["lease"] is None  # type: ignore[index]


def test_a_checkpoint_of_an_unknown_format_is_refused(index: ChangeIndex) -> None:
    from changelog.pipeline.store import WriteOp

    index.store.execute(index.control_oid, WriteOp(set={consumer_key("count"): orjson.dumps({"format": 9})}))
    with pytest.raises(PermanentError, match="unknown format"):
        load_checkpoint(index, "count")


def test_backup_consumer_runs_backups_and_commits_their_position(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex, tmp_path: Path
) -> None:
    zone = Zone(aws, logs)
    names = three_objects(zone)
    cfg = parse_config(
        {
            "target": {"url": f"file://{tmp_path}/logs/"},
            "source": {"endpoint": "https://s3.amazonaws.com", "access_key": "testing", "secret_key": "testing"},
            "backup": {"url": f"file://{tmp_path}/dest/", "interval": 60.0},
        }
    )
    consumer = BackupConsumer(cfg, interval=60.0)
    runner = ConsumerRunner(index, consumer, lease_ttl=5)
    assert runner.acquire()
    runner.step(threading.Event())
    backups = mf.list_backups(BackupStore(DirectoryTarget(tmp_path / "dest")))
    assert len(backups) == 1 and backups[0].objects == 9
    cp = load_checkpoint(index, "backup")
    assert cp.after == names[-1] and cp.info["backup_id"] == backups[0].backup_id and cp.records == 9
    # Nothing new: no new backup, the checkpoint stays.
    runner.step(threading.Event())
    assert len(mf.list_backups(BackupStore(DirectoryTarget(tmp_path / "dest")))) == 1
    zone.put("aaa", "k0.0", b"changed")
    last = zone.commit()
    woken: list[bool] = []
    consumer.wake = lambda: woken.append(True)
    answer = consumer.routes()[("POST", "run")]()
    assert answer["requested"] is True and woken == [True]
    runner.step(threading.Event())
    assert load_checkpoint(index, "backup").after == last
    assert consumer.stats()["runs"] == 3 and consumer.stats()["last_copied"] == 1
    status = consumer.routes()[("GET", "status")]()
    assert status["last"]["copied"] == 1  # type: ignore[index]
    runner.step_down()
