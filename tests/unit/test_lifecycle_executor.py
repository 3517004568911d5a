"""The lifecycle executor (issue 20) on moto (S3 semantics: versioning, delete markers, object
lock) with the schedule on the sqlite twin: the lifecycle consumer under its runner applies log
objects written from what the tests really did to the buckets, then acts on what is due, with
days compressed to one second (``day_seconds = 1``) and the executor's clock moved by hand."""

from __future__ import annotations

import datetime
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.lifecycle.consumer import LifecycleConsumer, layout_of, lifecycle_consumer
from changelog.consumers.lifecycle.executor import UNMODIFIED_SINCE, Executor, headers
from changelog.consumers.lifecycle.plan import plan, status
from changelog.consumers.lifecycle.rules import RuleSet, parse_lifecycle
from changelog.consumers.lifecycle.schedule import Schedule
from changelog.errors import TransientError
from changelog.pacing import Pacer
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.s3client import make_s3_client
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import LogWriter, rfc3339

S = 1_000_000


class Lab:
    """Buckets on moto, an index and a log directory, and the lifecycle consumer of ``rules``:
    every S3 call made through ``put``/``delete`` is recorded as the follower would record it,
    and ``commit`` writes the pending records as one log object."""

    def __init__(self, tmp_path: Path, rules: list[dict[str, Any]], day_seconds: int = 1) -> None:
        self.s3 = make_s3_client(None, access_key="testing", secret_key="testing", region="us-east-1",
                                 max_attempts=1, connect_timeout=5.0, read_timeout=30.0)  # fmt: skip
        self.index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
        self.logs = DirectoryTarget(tmp_path / "logs", fsync=False)
        self.writer = LogWriter(self.logs)
        self.section = parse_lifecycle(
            {"day_seconds": day_seconds, "shards": 2, "batch": 100, "rules": rules}
        )
        self.schedule = Schedule(
            self.index.store, layout_of(self.section, self.index.prefix), RuleSet.of(self.section)
        )
        self.offset = 0.0  # seconds the executor's clock is ahead of the wall clock
        self.executor = Executor(self.schedule, self.s3, batch=100, clock=lambda: time.time() + self.offset)
        self.pending: list[dict[str, Any]] = []
        self.n = 0

    def bucket(self, name: str, *, versioned: bool = False, **kw: Any) -> None:
        self.s3.create_bucket(Bucket=name, **kw)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def _record(
        self, op: str, bucket: str, key: str, *, version: str | None = None, head: Any = None
    ) -> None:
        self.n += 1
        now = int(time.time() * S)
        t = int(head["LastModified"].timestamp() * S) if head is not None else now
        self.pending.append({
            "v": 1, "id": hashlib.blake2b(f"x{self.n}".encode(), digest_size=16).hexdigest(),
            "time": rfc3339(t), "op": op, "tenant": None, "bucket": bucket, "key": key, "version_id": version,
            "size": head["ContentLength"] if head is not None else None,
            "etag": head["ETag"].strip('"') if head is not None else None,
            "mtime": rfc3339(t) if head is not None else None,
            "storage_class": head.get("StorageClass") or "STANDARD" if head is not None else None,
            "seq": f"000001.1.{self.n:016d}", "baseline": False, "recorded": rfc3339(max(now, t)),
        })  # fmt: skip

    def record_current(self, bucket: str, key: str) -> None:
        """The write record of the key's current version (an executor's copy, as the follower sees it)."""
        head = self.s3.head_object(Bucket=bucket, Key=key)
        self._record("write", bucket, key, version=head.get("VersionId"), head=head)

    def put(self, bucket: str, key: str, body: bytes, *, log: bool = True, **kw: Any) -> str | None:
        vid = self.s3.put_object(Bucket=bucket, Key=key, Body=body, **kw).get("VersionId")
        if log:
            self.record_current(bucket, key)
        return vid

    def delete(self, bucket: str, key: str) -> None:
        resp = self.s3.delete_object(Bucket=bucket, Key=key)
        if resp.get("DeleteMarker"):
            self._record("delete_marker", bucket, key, version=resp.get("VersionId"))
        else:
            self._record("delete", bucket, key)

    def commit(self) -> None:
        self.writer.write(self.pending)
        self.pending = []
        self.writer.watermark()

    def step(self, *, ahead: float) -> LifecycleConsumer:
        """One consumer run to the end of the logs, then executor batches with the clock
        ``ahead`` seconds ahead."""
        self.offset = ahead
        consumer = LifecycleConsumer(self.schedule, self.executor, self.logs, interval=0.01)
        runner = ConsumerRunner(self.index, consumer, lease_ttl=30)
        assert runner.acquire()
        try:
            runner.step(threading.Event())
            assert runner.checkpoint().after == self.writer.last_object
        finally:
            runner.step_down()
        return consumer

    def keys(self, bucket: str) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    def stack(self, bucket: str, key: str) -> list[tuple[str, bool]]:
        """(version id, is a marker) of ``key``, newest first."""
        r = self.s3.list_object_versions(Bucket=bucket, Prefix=key)
        rows: list[tuple[Any, str, bool]] = [
            (v, v["VersionId"], False) for v in r.get("Versions", []) if v["Key"] == key
        ]
        rows += [(m, m["VersionId"], True) for m in r.get("DeleteMarkers", []) if m["Key"] == key]
        # The latest first, then newest; moto lists whole seconds, so listing order breaks ties.
        rows.sort(key=lambda x: (not x[0]["IsLatest"], -x[0]["LastModified"].timestamp()))
        return [(v, m) for _, v, m in rows]

    def planned(self) -> list[tuple[str, str, str | None]]:
        out = []
        for d in plan(self.index.store, self.schedule.layout):
            ver = d["version_id"]
            out.append((str(d["action"]), str(d["key"]), None if ver is None else str(ver)))
        return out


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


def lab(tmp_path: Path, rules: list[dict[str, Any]], day_seconds: int = 1) -> Lab:
    """A ``Lab`` whose executor's clock is frozen at its making (plus ``ahead``): on a loaded
    machine (CI) a step may come more than a (1 s) day after the writes, and ``ahead=0`` must
    still find nothing due."""
    lb = Lab(tmp_path, rules, day_seconds)
    base = time.time()
    lb.executor.clock = lambda: base + lb.offset
    return lb


def test_expires_exactly_the_due_objects_and_never_an_overwritten_key(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "plain", "prefix": "tmp/", "expire_days": 5}])
    lb.bucket("plain")
    for k in ("tmp/a", "tmp/b", "tmp/c", "keep/d"):
        lb.put("plain", k, b"one")
    lb.commit()
    lb.step(ahead=0)  # not due yet: nothing happens
    assert lb.keys("plain") == ["keep/d", "tmp/a", "tmp/b", "tmp/c"]
    lb.put("plain", "tmp/b", b"two", log=False)  # overwritten; its record not in the logs yet
    lb.s3.delete_object(Bucket="plain", Key="tmp/c")  # deleted; likewise
    consumer = lb.step(ahead=7)
    assert lb.keys("plain") == ["keep/d", "tmp/b"]
    assert lb.s3.get_object(Bucket="plain", Key="tmp/b")["Body"].read() == b"two"
    st = consumer.stats()
    assert (st["expired"], st["skipped"], st["failed"]) == (1, 2, 0)
    assert lb.planned() == []  # every entry acted on or dropped


def test_versioned_expiry_writes_a_marker_and_noncurrent_expiry_deletes_the_version(
    aws: None, tmp_path: Path
) -> None:
    lb = lab(tmp_path, [{"bucket": "ver", "expire_days": 3, "noncurrent_expire_days": 2}])
    lb.bucket("ver", versioned=True)
    v1 = lb.put("ver", "k", b"1")
    v2 = lb.put("ver", "k", b"2")
    lb.commit()
    assert lb.planned() == []  # the logs are not applied yet
    lb.step(ahead=0)
    assert lb.planned() == [("noncurrent", "k", v1), ("expire", "k", v2)]
    lb.step(ahead=10)
    stack = lb.stack("ver", "k")
    assert [m for _, m in stack] == [True, False] and stack[1][0] == v2  # a marker over v2; v1 gone
    # The executor's own actions come back through the logs: v2 is now noncurrent.
    marker = stack[0][0]
    lb._record("delete_marker", "ver", "k", version=marker)
    lb._record("delete", "ver", "k", version=v1)
    lb.commit()
    lb.step(ahead=0)
    assert lb.planned() == [("noncurrent", "k", v2)]
    lb.step(ahead=10)
    assert lb.stack("ver", "k") == [(marker, True)]


def test_transition_copies_in_place_and_keeps_the_objects_age(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "plain", "transition_days": 2, "storage_class": "STANDARD_IA", "expire_days": 30},
                        {"bucket": "ver", "transition_days": 2, "storage_class": "STANDARD_IA"}])  # fmt: skip
    lb.bucket("plain")
    lb.bucket("ver", versioned=True)
    lb.put("plain", "k", b"data", Metadata={"colour": "blue"}, ContentType="text/x-test")
    v1 = lb.put("ver", "k", b"data")
    lb.commit()
    lb.step(ahead=5)
    head = lb.s3.head_object(Bucket="plain", Key="k")
    assert (head["StorageClass"], head["Metadata"], head["ContentType"]) == (
        "STANDARD_IA",
        {"colour": "blue"},
        "text/x-test",
    )
    stack = lb.stack("ver", "k")
    assert len(stack) == 1 and stack[0][0] != v1  # the copy is a new version; the original went
    assert lb.s3.head_object(Bucket="ver", Key="k")["StorageClass"] == "STANDARD_IA"
    before = {d["key"]: d["due"] for d in plan(lb.index.store, lb.schedule.layout) if d["bucket"] == "plain"}
    lb.record_current("plain", "k")  # the copy's write record: new mtime, same age
    lb.commit()
    lb.step(ahead=0)
    after = {
        d["key"]: (d["action"], d["due"])
        for d in plan(lb.index.store, lb.schedule.layout)
        if d["bucket"] == "plain"
    }
    assert after == {"k": ("expire", before["k"])}


class RadosgwCopy:
    """moto's client with radosgw's CopyObject answer: no x-amz-version-id, even when the copy
    is a new version (measured on 16.2 to 20.2); every other call goes to moto unchanged."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def copy_object(self, **kw: Any) -> Any:
        resp = dict(self._s3.copy_object(**kw))
        resp.pop("VersionId", None)
        return resp


def test_a_versioned_transition_drops_the_original_when_the_copy_names_no_version(
    aws: None, tmp_path: Path
) -> None:
    lb = lab(tmp_path, [{"bucket": "ver", "transition_days": 1, "storage_class": "STANDARD_IA"},
                        {"bucket": "plain", "transition_days": 1, "storage_class": "STANDARD_IA"}])  # fmt: skip
    # An S3Client by delegation (every call but copy_object is moto's).
    lb.executor.client = RadosgwCopy(lb.s3)  # type: ignore[assignment]
    lb.bucket("ver", versioned=True)
    lb.bucket("plain")
    v1 = lb.put("ver", "k", b"data")
    lb.put("plain", "k", b"data")
    lb.commit()
    lb.step(ahead=5)
    stack = lb.stack("ver", "k")
    # The new version found by a HEAD, the original deleted: one version, in the class.
    assert len(stack) == 1 and stack[0][0] != v1
    assert lb.s3.head_object(Bucket="ver", Key="k")["StorageClass"] == "STANDARD_IA"
    assert lb.s3.head_object(Bucket="plain", Key="k")["StorageClass"] == "STANDARD_IA"
    assert lb.executor.counts["transitioned"] == 2


def test_a_crash_after_acting_and_before_the_entry_is_removed_is_harmless(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb = lab(tmp_path, [{"bucket": "ver", "expire_days": 1},
                        {"bucket": "tver", "transition_days": 1, "storage_class": "STANDARD_IA"}])  # fmt: skip
    lb.bucket("ver", versioned=True)
    lb.bucket("tver", versioned=True)
    v1 = lb.put("ver", "k", b"1")
    t1 = lb.put("tver", "k", b"1")
    lb.commit()
    lb.step(ahead=0)
    assert len(lb.planned()) == 2  # nothing was due yet
    # The process dies after the actions, before its entries are removed.
    with monkeypatch.context() as m:
        m.setattr(lb.schedule, "finish", lambda *a, **k: 0)
        lb.step(ahead=5)
    assert [m for _, m in lb.stack("ver", "k")] == [True, False]
    assert len(lb.stack("tver", "k")) == 1
    assert len(lb.planned()) == 2  # both entries still there
    before = lb.executor.snapshot()
    lb.step(ahead=5)  # the next holder takes the same entries again
    assert [m for _, m in lb.stack("ver", "k")] == [True, False]  # still one marker, not two
    assert lb.stack("ver", "k")[1][0] == v1
    stack = lb.stack("tver", "k")
    assert len(stack) == 1 and stack[0][0] != t1  # not copied again
    st = {k: v - before[k] for k, v in lb.executor.snapshot().items()}
    # The marker found current: skipped. The copy found in the class: done, and the original's
    # version deleted again (a no-op: it is gone). Two HEADs and that delete; no copy.
    assert (st["expired"], st["transitioned"], st["skipped"], st["requests"]) == (0, 0, 1, 3)
    assert lb.planned() == []


def test_a_transition_killed_between_copy_and_delete_is_finished_by_the_retry(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb = lab(tmp_path, [{"bucket": "tver", "transition_days": 1, "storage_class": "STANDARD_IA"}])
    lb.bucket("tver", versioned=True)
    t1 = lb.put("tver", "k", b"1")
    lb.commit()
    lb.step(ahead=0)

    def die(e: Any) -> None:
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(lb.executor, "_drop_original", die)
        with pytest.raises(KeyboardInterrupt):
            lb.step(ahead=5)
    assert len(lb.stack("tver", "k")) == 2  # the copy made, the original still there
    requests = lb.executor.counts["requests"]
    lb.step(ahead=5)
    stack = lb.stack("tver", "k")
    assert len(stack) == 1 and stack[0][0] != t1
    assert lb.executor.counts["requests"] - requests == 2  # a HEAD and the delete: no second copy
    assert lb.planned() == []


def test_tags_are_read_only_for_due_objects_and_must_match(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "plain", "expire_days": 2, "tags": {"class": "tmp"}}])
    lb.bucket("plain")
    lb.put("plain", "a", b"x", Tagging="class=tmp")
    lb.put("plain", "b", b"x", Tagging="class=keep")
    lb.put("plain", "c", b"x")
    lb.commit()
    requests = lb.step(ahead=0).stats()["requests"]
    assert requests == 0  # nothing due: no request at all
    st = lb.step(ahead=5).stats()
    assert lb.keys("plain") == ["b", "c"]
    assert (st["expired"], st["skipped"]) == (1, 2)
    assert st["requests"] == 3 * 2 + 1  # a HEAD and a tagging read per due object, one delete


def test_a_refused_delete_goes_to_the_failed_list_and_can_be_retried(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "lck", "noncurrent_expire_days": 1}])
    lb.bucket("lck", ObjectLockEnabledForBucket=True)
    v1 = lb.put("lck", "k", b"1", ObjectLockMode="COMPLIANCE", ChecksumAlgorithm="CRC32",
                ObjectLockRetainUntilDate=datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC))  # fmt: skip
    lb.put("lck", "k", b"2")
    lb.commit()
    st = lb.step(ahead=5).stats()
    assert st["failed"] == 1
    assert lb.planned() == []
    doc = status(lb.index.store, lb.schedule.layout, now_us=int(time.time() * S))
    assert (doc["failed"], doc["due_now"]) == (1, 0)
    n = lb.schedule.layout.shard("", "lck")[0]
    ((_, failed),) = list(lb.schedule.failed(n))
    assert failed["v"] == v1 and "AccessDenied" in str(failed["error"])
    assert lb.schedule.retry_failed(n) == 1
    assert lb.planned() == [("noncurrent", "k", v1)]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_s3_keeps_every_entry_and_raises_transient(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "plain", "expire_days": 1}])
    lb.bucket("plain")
    lb.put("plain", "a", b"x")
    lb.commit()
    lb.step(ahead=0)
    dead = make_s3_client(f"http://127.0.0.1:{_dead_port()}", access_key="k", secret_key="s", region="us-east-1",
                          max_attempts=1, connect_timeout=1.0, read_timeout=1.0)  # fmt: skip
    with pytest.raises(TransientError):
        Executor(lb.schedule, dead).run_batch(int((time.time() + 5) * S))
    assert lb.planned() == [("expire", "a", None)]
    lb.step(ahead=5)
    assert lb.keys("plain") == []


def test_the_factory_builds_the_consumer_from_its_section(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "plain", "expire_days": 1}])
    consumer = lifecycle_consumer(lb.section, lb.index, lb.logs, lb.s3, name="lc-two")
    assert consumer.executor is not None and consumer.executor.batch == 100
    assert consumer.schedule.layout.oid(1) == f"{lb.index.prefix}.lc-two.0001"
    assert consumer.schedule.layout.day_us == S
    assert lifecycle_consumer(lb.section, lb.index, lb.logs, None).executor is None


class SlowHeads:
    """moto's client whose HEADs take 50 ms, counting how many run at once."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self._lock = threading.Lock()
        self.running = self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def head_object(self, **kw: Any) -> Any:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            return self._s3.head_object(**kw)
        finally:
            with self._lock:
                self.running -= 1


def twelve_scheduled(tmp_path: Path, *, expire_days: int) -> Lab:
    """Bucket ``plain`` with twelve objects ``k00``..``k11`` whose records are applied (scheduled
    to expire after ``expire_days``), nothing due yet."""
    lb = lab(tmp_path, [{"bucket": "plain", "expire_days": expire_days}])
    lb.bucket("plain")
    for i in range(12):
        lb.put("plain", f"k{i:02d}", b"x")
    lb.commit()
    lb.step(ahead=0)
    return lb


def test_the_re_checks_of_a_batch_run_in_parallel_and_the_actions_in_order(aws: None, tmp_path: Path) -> None:
    lb = twelve_scheduled(tmp_path, expire_days=30)
    lb.put("plain", "k05", b"rewritten", log=False)  # changed since its record: dropped, not deleted
    slow = SlowHeads(lb.s3)
    lb.executor.client = slow  # type: ignore[assignment]
    lb.executor.workers = 4
    t0 = time.monotonic()
    assert lb.executor.run_batch(int((time.time() + 40) * S)) == 12
    took = time.monotonic() - t0
    print(f"[12 re-checks of 0.05 s each, 4 workers: {took:.2f} s]")
    assert slow.most == 4  # four at a time, not one after another
    assert lb.keys("plain") == ["k05"] and lb.planned() == []
    assert (lb.executor.counts["expired"], lb.executor.counts["skipped"]) == (11, 1)


def test_a_transition_keeps_the_objects_acl(aws: None, tmp_path: Path) -> None:
    lb = lab(tmp_path, [{"bucket": "plain", "transition_days": 1, "storage_class": "STANDARD_IA"},
                        {"bucket": "ver", "transition_days": 1, "storage_class": "STANDARD_IA"}])  # fmt: skip
    lb.bucket("plain")
    lb.bucket("ver", versioned=True)
    lb.put("plain", "public", b"x", ACL="public-read")
    lb.put("plain", "private", b"x")
    lb.put("ver", "public", b"x", ACL="public-read")
    lb.commit()

    def grants(bucket: str, key: str) -> list[tuple[str, str]]:
        acl = lb.s3.get_object_acl(Bucket=bucket, Key=key)
        return sorted(
            (str(g["Grantee"].get("URI") or g["Grantee"].get("ID")), str(g["Permission"]))
            for g in acl["Grants"]
        )

    before = {(b, k): grants(b, k) for b, k in (("plain", "public"), ("plain", "private"), ("ver", "public"))}
    all_users = ("http://acs.amazonaws.com/groups/global/AllUsers", "READ")
    assert all_users in before[("plain", "public")] and all_users not in before[("plain", "private")]
    lb.step(ahead=3)
    for (b, k), was in before.items():
        assert lb.s3.head_object(Bucket=b, Key=k)["StorageClass"] == "STANDARD_IA"
        assert grants(b, k) == was, (b, k)


def test_max_actions_per_second_spreads_the_deletes_over_time(aws: None, tmp_path: Path) -> None:
    """``[lifecycle] max_actions_per_second``: each DeleteObjects waits for the previous one's
    share of time (keys / rate); the factory gives the executor the section's rate."""
    lb = twelve_scheduled(tmp_path, expire_days=30)
    slept: list[float] = []
    now = [0.0]

    def sleep(s: float) -> None:
        slept.append(round(s, 6))
        now[0] += s

    lb.executor.pacer = Pacer(10, clock=lambda: now[0], sleep=sleep)
    lb.executor.delete_batch = 5
    assert lb.executor.run_batch(int((time.time() + 40) * S)) == 12
    assert lb.keys("plain") == [] and slept == [0.5, 0.5]  # 5 keys, then 5 after 0.5 s, then 2 after 0.5 s
    section = parse_lifecycle(
        {"day_seconds": 1, "max_actions_per_second": 25, "rules": [{"bucket": "plain", "expire_days": 1}]}
    )
    consumer = lifecycle_consumer(section, lb.index, lb.logs, lb.s3, name="paced")
    assert consumer.executor is not None and consumer.executor.pacer.rate == 25
    assert consumer.reaper is not None and consumer.reaper.pacer is consumer.executor.pacer


def test_a_chain_of_transitions_moves_down_it_once_and_never_back(aws: None, tmp_path: Path) -> None:
    """Two transitions of one key (STANDARD_IA at 1 day, ONEZONE_IA at 3): the object moves to
    each in turn, as S3's waterfall does, and once in the later class the earlier transition is
    not due again (before, the later copy's record scheduled the earlier one at once: the
    object went back and forth between the classes forever). An object written straight into
    the chain's last class is not moved at all. Days are 10 s here: with 1 s days a loaded
    machine (CI) took over a day between the write and the first step, so both were due."""
    lb = lab(tmp_path, [{"bucket": "plain", "id": "ia", "transition_days": 1, "storage_class": "STANDARD_IA"},
                        {"bucket": "plain", "id": "oz", "transition_days": 3, "storage_class": "ONEZONE_IA"}],
             day_seconds=10)  # fmt: skip
    lb.bucket("plain")
    lb.put("plain", "k", b"data")
    lb.put("plain", "last", b"data", StorageClass="ONEZONE_IA")
    lb.commit()

    def cls(key: str = "k") -> str:
        return str(lb.s3.head_object(Bucket="plain", Key=key)["StorageClass"])

    lb.step(ahead=20)
    assert cls() == "STANDARD_IA" and cls("last") == "ONEZONE_IA"
    lb.record_current("plain", "k")  # the copy's record: the same age, the new class
    lb.commit()
    assert [(a, k) for a, k, _ in lb.planned()] == [("transition", "k")]  # ONEZONE_IA only
    lb.step(ahead=40)
    assert cls() == "ONEZONE_IA"
    lb.record_current("plain", "k")
    lb.commit()
    consumer = lb.step(ahead=100)
    assert cls() == "ONEZONE_IA" and lb.planned() == []
    assert consumer.stats()["transitioned"] == 2  # the executor's counts since the start: nothing moved back


def test_transitions_due_together_go_straight_to_the_last_class(aws: None, tmp_path: Path) -> None:
    """Both steps of the waterfall passed when the executor first looks (an old object): one copy,
    into the later class, as S3 would; the earlier step's entry is dropped after it."""
    lb = lab(tmp_path, [{"bucket": "plain", "id": "ia", "transition_days": 1, "storage_class": "STANDARD_IA"},
                        {"bucket": "plain", "id": "oz", "transition_days": 3, "storage_class": "ONEZONE_IA"}])  # fmt: skip
    lb.bucket("plain")
    lb.put("plain", "k", b"data")
    lb.commit()
    consumer = lb.step(ahead=5)
    assert lb.s3.head_object(Bucket="plain", Key="k")["StorageClass"] == "ONEZONE_IA"
    assert consumer.stats()["transitioned"] == 1
    lb.record_current("plain", "k")
    lb.commit()
    consumer = lb.step(ahead=6)
    assert lb.s3.head_object(Bucket="plain", Key="k")["StorageClass"] == "ONEZONE_IA"
    assert (consumer.stats()["transitioned"], lb.planned()) == (1, [])


def test_a_client_given_to_the_executor_later_sends_the_conditional_delete_header(
    aws: None, tmp_path: Path
) -> None:
    """The conditional-delete header rides on a handler registered on the client; a client the
    executor is given after it was made (the lab tests give it radosgw's) must carry it too (it
    did not: the overwritten object was deleted on Pacific)."""
    lb = lab(tmp_path, [{"bucket": "plain", "expire_days": 1}])
    other = make_s3_client(None, access_key="testing", secret_key="testing", region="us-east-1",
                           max_attempts=1, connect_timeout=5.0, read_timeout=30.0)  # fmt: skip
    seen: list[bytes | None] = []
    other.meta.events.register(
        "before-send.s3", lambda request, **_: seen.append(request.headers.get(UNMODIFIED_SINCE))
    )
    lb.bucket("plain")
    lb.executor.client = other
    with headers({UNMODIFIED_SINCE: "2026-01-01T00:00:00Z"}):
        lb.executor.client.head_bucket(Bucket="plain")
    lb.executor.client.head_bucket(Bucket="plain")
    assert seen == [b"2026-01-01T00:00:00Z", None]
