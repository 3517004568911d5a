"""A bucket that gains lifecycle rules is listed once (issue 20, ``baseline``), on moto with the
schedule on the sqlite twin: objects written before the rule (their records applied while no
rule named the bucket, or no records at all) are scheduled and expire after it is added, as S3
applies a new rule to the objects already there; noncurrent versions and delete markers; a crash
mid-listing resumes after the last page written; records after the listing correct it; a bucket
that loses its rules and gains them again is listed again; ``source = "bucket"``."""

from __future__ import annotations

import datetime
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.lifecycle.baseline import Baseliner
from changelog.consumers.lifecycle.bucket_rules import BucketRules
from changelog.consumers.lifecycle.consumer import LifecycleConsumer, layout_of
from changelog.consumers.lifecycle.executor import Executor
from changelog.consumers.lifecycle.model import BaselineMark
from changelog.consumers.lifecycle.rules import RuleSet, parse_lifecycle
from changelog.consumers.lifecycle.schedule import Schedule
from changelog.pipeline.store import WriteOp, omap_iter
from tests.unit import test_lifecycle_executor
from tests.unit.test_lifecycle_bucket_rules import BucketLab, expire
from tests.unit.test_lifecycle_executor import Lab

aws = test_lifecycle_executor.aws  # the moto fixture

S = 1_000_000


class Crash(Exception):
    """A SIGKILL between a page's listing and its write (nothing of that page is written)."""


class Lister:
    """The S3 client the baseline lists through: counts ListObjectVersions requests, and can
    fail the ``fail_at``-th (a crash after the listing, before its page is written)."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.calls: list[dict[str, Any]] = []

    def list_object_versions(self, **kw: Any) -> Any:
        self.calls.append(kw)
        return self.s3.list_object_versions(**kw)


def set_rules(lb: Lab, rules: list[dict[str, Any]]) -> None:
    """The process restarted with other ``[[lifecycle.rules]]`` (same index and schedule objects)."""
    lb.section = parse_lifecycle({"day_seconds": 1, "shards": 2, "batch": 100, "rules": rules})
    lb.schedule = Schedule(lb.index.store, layout_of(lb.section, lb.index.prefix), RuleSet.of(lb.section))
    lb.executor = Executor(lb.schedule, lb.s3, batch=100, clock=lambda: time.time() + lb.offset)


def run(
    lb: Lab,
    *,
    ahead: float,
    page_keys: int = 1000,
    pages_per_step: int = 8,
    steps: int = 100,
    lister: Lister | None = None,
    bucket_rules: BucketRules | None = None,
) -> LifecycleConsumer:
    """One consumer process: steps (logs, listing pages, executor batches with the clock
    ``ahead``) until the logs are applied and nothing is left to list, at most ``steps``."""
    lb.offset = ahead
    baseliner = Baseliner(lb.schedule, lister or lb.s3, page_keys=page_keys, pages_per_step=pages_per_step)  # type: ignore[arg-type]
    consumer = LifecycleConsumer(
        lb.schedule, lb.executor, lb.logs, interval=0.01, baseliner=baseliner, bucket_rules=bucket_rules
    )
    runner = ConsumerRunner(lb.index, consumer, lease_ttl=30)
    assert runner.acquire()
    try:
        for _ in range(steps):
            runner.step(threading.Event())
            if not baseliner.pending:
                break
        assert runner.checkpoint().after == lb.writer.last_object
    finally:
        runner.step_down()
    return consumer


def schedule_of(lb: Lab, n: int) -> dict[str, bytes]:
    """Shard ``n``'s key states and due entries."""
    return {
        k: v for k, v in omap_iter(lb.index.store, lb.schedule.layout.oid(n)) if k.startswith(("k.", "d."))
    }


def mtime(lb: Lab, bucket: str, key: str, version: str | None = None) -> float:
    kw = {"VersionId": version} if version else {}
    return float(lb.s3.head_object(Bucket=bucket, Key=key, **kw)["LastModified"].timestamp())


def mark(lb: Lab, bucket: str) -> BaselineMark | None:
    return lb.schedule.baseline_mark("", bucket)


def test_objects_written_before_the_rule_expire_after_it_is_added(aws: None, tmp_path: Path) -> None:
    lb = Lab(tmp_path, [{"bucket": "other", "expire_days": 30}])
    lb.bucket("other")
    lb.bucket("plain")
    lb.bucket("quiet")
    for k in ("tmp/a", "tmp/b", "keep/c"):
        lb.put("plain", k, b"x")  # their records are applied while no rule names the bucket
    for k in ("q1", "q2"):
        lb.put("quiet", k, b"x", log=False)  # no record at all (written before the follower)
    lb.commit()
    run(lb, ahead=0)
    assert lb.planned() == [] and mark(lb, "plain") is None
    set_rules(
        lb, [{"bucket": "plain", "prefix": "tmp/", "expire_days": 3}, {"bucket": "quiet", "expire_days": 3}]
    )
    consumer = run(lb, ahead=0)
    assert sorted(lb.planned()) == [
        ("expire", "q1", None), ("expire", "q2", None), ("expire", "tmp/a", None), ("expire", "tmp/b", None),
    ]  # fmt: skip
    st = consumer.stats()
    assert (st["baseline_versions"], st["baseline_buckets_done"], st["baseline_pending"]) == (5, 2, 0)
    m = mark(lb, "plain")
    assert m is not None and m.done and m.versions == 3
    doc = consumer._status_doc()["baseline"]
    assert isinstance(doc, dict)
    assert doc["buckets"] == [
        {"bucket": "plain", "pages": 1, "state": "done", "versions": 3},
        {"bucket": "quiet", "pages": 1, "state": "done", "versions": 2},
    ]
    # Not due before their day 3 (counted from their own mtime), due after it.
    run(lb, ahead=1)
    assert lb.keys("plain") == ["keep/c", "tmp/a", "tmp/b"] and lb.keys("quiet") == ["q1", "q2"]
    lister = Lister(lb.s3)
    consumer = run(lb, ahead=5, lister=lister)
    assert lb.keys("plain") == ["keep/c"] and lb.keys("quiet") == []
    assert consumer.stats()["expired"] == 4
    assert lister.calls == []  # listed once in its life: a new process does not list it again


def test_noncurrent_versions_and_delete_markers_are_scheduled_as_their_records_would_be(
    aws: None, tmp_path: Path
) -> None:
    lb = Lab(tmp_path, [])
    lb.bucket("ver", versioned=True)
    k1v1 = lb.put("ver", "k1", b"1", log=False)
    k2v1 = lb.put("ver", "k2", b"1", log=False)
    k3v1 = lb.put("ver", "k3", b"1", log=False)
    time.sleep(2.1)  # the next versions (and the marker) later (moto: whole seconds)
    k1v2 = lb.put("ver", "k1", b"2", log=False)
    marker = lb.s3.delete_object(Bucket="ver", Key="k2")["VersionId"]
    set_rules(lb, [{"bucket": "ver", "noncurrent_expire_days": 2, "expire_days": 30}])
    lb.commit()
    run(lb, ahead=0)
    assert sorted(lb.planned()) == [
        ("expire", "k1", k1v2), ("expire", "k3", k3v1), ("noncurrent", "k1", k1v1), ("noncurrent", "k2", k2v1),
    ]  # fmt: skip
    # Noncurrent since the next version's mtime, not their own: not due 2 s after their write.
    run(lb, ahead=mtime(lb, "ver", "k1", k1v2) + 1.5 - time.time())
    assert len(lb.stack("ver", "k1")) == 2 and len(lb.stack("ver", "k2")) == 2
    run(lb, ahead=5)
    assert lb.stack("ver", "k1") == [(k1v2, False)]
    assert lb.stack("ver", "k2") == [(marker, True)]  # the marker stays (no ExpiredObjectDeleteMarker)
    assert lb.stack("ver", "k3") == [(k3v1, False)]


def test_a_crash_mid_listing_resumes_after_the_last_page_and_schedules_each_version_once(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb = Lab(tmp_path, [])
    lb.bucket("big", versioned=True)
    expected: Counter[tuple[str, str, str | None]] = Counter()
    for i in range(7):
        vids = [lb.put("big", f"k{i}", b"%d" % n, log=False) for n in range(1 + i % 4)]
        expected[("expire", f"k{i}", vids[-1])] += 1
        for v in vids[:-1]:
            expected[("noncurrent", f"k{i}", v)] += 1
    # 16 versions. Pages of 3 end after their last complete key (k0; k1; k2 alone fills one and
    # is split after it, k3 after its 3rd version, ...).
    total = sum(expected.values())
    set_rules(lb, [{"bucket": "big", "expire_days": 30, "noncurrent_expire_days": 30}])
    lb.commit()
    # The first process writes 2 pages, then dies after listing the third (before writing it).
    real = Schedule.apply_listing
    writes = [0]

    def apply_then_die(self: Schedule, *a: Any, **kw: Any) -> None:
        if writes[0] == 2:
            raise Crash("SIGKILL")
        writes[0] += 1
        real(self, *a, **kw)

    monkeypatch.setattr(Schedule, "apply_listing", apply_then_die)
    with pytest.raises(Crash):
        run(lb, ahead=0, page_keys=3, pages_per_step=1)
    m = mark(lb, "big")
    assert m is not None and (m.state, m.pages, m.versions) == ("listing", 2, 3)
    monkeypatch.setattr(Schedule, "apply_listing", real)
    lister = Lister(lb.s3)
    consumer = run(lb, ahead=0, page_keys=3, pages_per_step=1, lister=lister)
    # Resumed where the mark stood (never from the start), every version once.
    assert lister.calls[0].get("KeyMarker") == m.key_marker and lister.calls[0]["KeyMarker"]
    print("pages after the crash:", [(c.get("KeyMarker"), c.get("VersionIdMarker")) for c in lister.calls])
    # Every page moves on (never back to the start): at least one version per request.
    key_markers = [c["KeyMarker"] for c in lister.calls]
    assert key_markers == sorted(key_markers) and len(lister.calls) <= total - 3
    assert consumer.stats()["baseline_versions"] == total - 3
    assert Counter(lb.planned()) == expected
    m = mark(lb, "big")
    assert m is not None and m.done and m.versions == total
    # The whole listing applied again (its mark removed by hand) changes no key and no entry.
    n, bid = lb.schedule.layout.shard("", "big")
    before = schedule_of(lb, n)
    lb.index.store.execute(lb.schedule.layout.oid(n), WriteOp(remove=[f"b.{bid}"]))
    run(lb, ahead=0, page_keys=3, pages_per_step=1)
    assert schedule_of(lb, n) == before


def test_a_key_changed_after_the_listing_is_never_wrongly_expired(aws: None, tmp_path: Path) -> None:
    lb = Lab(tmp_path, [])
    lb.bucket("plain")
    for k in ("a", "b", "c"):
        lb.put("plain", k, b"old", log=False)
    set_rules(lb, [{"bucket": "plain", "expire_days": 5}])
    lb.commit()
    run(lb, ahead=0)
    assert sorted(lb.planned()) == [("expire", "a", None), ("expire", "b", None), ("expire", "c", None)]
    time.sleep(2.1)  # moto's mtimes are whole seconds
    # Overwritten and deleted after the listing; their records not in the logs yet.
    lb.put("plain", "a", b"new")
    lb.delete("plain", "b")
    pending, lb.pending = lb.pending, []
    new_due = mtime(lb, "plain", "a") + 5
    consumer = run(lb, ahead=new_due - 0.5 - time.time())  # the listed versions are due: re-checked
    assert lb.keys("plain") == ["a"] and lb.s3.get_object(Bucket="plain", Key="a")["Body"].read() == b"new"
    assert (consumer.stats()["expired"], consumer.stats()["skipped"]) == (1, 2)  # c expired
    # The records come: a is scheduled from its new mtime, b is gone.
    lb.pending = pending
    lb.commit()
    run(lb, ahead=new_due - 0.5 - time.time())
    assert lb.keys("plain") == ["a"] and lb.planned() == [("expire", "a", None)]
    run(lb, ahead=new_due + 0.5 - time.time())
    assert lb.keys("plain") == []


def test_records_applied_before_the_listing_reached_a_key_are_kept_with_its_older_versions(
    aws: None, tmp_path: Path
) -> None:
    lb = Lab(tmp_path, [])
    lb.bucket("ver", versioned=True)
    for k in ("a", "b", "c", "d"):
        lb.put("ver", k, b"1", log=False)
    old = lb.put("ver", "z", b"1", log=False)  # before the rule: no record kept
    set_rules(lb, [{"bucket": "ver", "noncurrent_expire_days": 2, "expire_days": 30}])
    # After the rule, before the listing reaches z: z's new version's record is applied first.
    new = lb.put("ver", "z", b"2")
    lb.commit()
    consumer = run(lb, ahead=0, page_keys=2, pages_per_step=1)
    assert consumer.stats()["baseline_pages"] == 5  # each page ends after its first key (a, b, c, d; z)
    assert sorted(x for x in lb.planned() if x[1] == "z") == [("expire", "z", new), ("noncurrent", "z", old)]
    # A record of a version the listing found (the follower lagging) is that version, though the
    # record's mtime is precise and the listing's truncated: it does not become the newest.
    head = lb.s3.head_object(Bucket="ver", Key="z", VersionId=old)
    head["LastModified"] += datetime.timedelta(milliseconds=400)
    lb._record("write", "ver", "z", version=old, head=head)
    lb.commit()
    run(lb, ahead=0)
    assert sorted(x for x in lb.planned() if x[1] == "z") == [("expire", "z", new), ("noncurrent", "z", old)]
    run(lb, ahead=5)
    assert lb.stack("ver", "z") == [(new, False)]


def test_a_bucket_that_loses_its_rules_and_gains_them_again_is_listed_again(
    aws: None, tmp_path: Path
) -> None:
    lb = Lab(tmp_path, [])
    lb.bucket("plain")
    lb.put("plain", "a", b"x", log=False)
    set_rules(lb, [{"bucket": "plain", "expire_days": 30}])
    lb.commit()
    run(lb, ahead=0)
    assert lb.planned() == [("expire", "a", None)] and mark(lb, "plain") is not None
    set_rules(lb, [{"bucket": "other", "expire_days": 30}])
    run(lb, ahead=0)
    assert lb.planned() == [] and mark(lb, "plain") is None  # its keys and its mark dropped
    lb.put("plain", "b", b"x")  # recorded while no rule names the bucket: not kept
    lb.commit()
    run(lb, ahead=0)
    set_rules(lb, [{"bucket": "plain", "expire_days": 3}])
    lister = Lister(lb.s3)
    consumer = run(lb, ahead=0, lister=lister)
    assert len(lister.calls) == 1 and consumer.stats()["baseline_versions"] == 2
    assert sorted(lb.planned()) == [("expire", "a", None), ("expire", "b", None)]
    run(lb, ahead=5)
    assert lb.keys("plain") == []


def test_source_bucket_a_bucket_given_its_first_configuration_is_listed(aws: None, tmp_path: Path) -> None:
    lb = BucketLab(tmp_path)
    lb.bucket("cfg")
    for k in ("tmp/a", "keep/b"):
        lb.put("cfg", k, b"x")  # applied while the bucket has no configuration: not kept
    lb.commit()
    run(lb, ahead=0, bucket_rules=lb.bucket_rules)
    assert lb.planned() == [] and mark(lb, "cfg") is None
    lb.configure("cfg", expire("tmp", 3, "tmp/"))
    lb.rules_ahead = 61  # read again at the next refresh
    consumer = run(lb, ahead=0, bucket_rules=lb.bucket_rules)
    assert lb.planned() == [("expire", "tmp/a", None)]
    assert consumer.stats()["baseline_versions"] == 2
    run(lb, ahead=5, bucket_rules=lb.bucket_rules)
    assert lb.keys("cfg") == ["keep/b"]
    # The configuration deleted: the mark goes with the keys; put back, the bucket is listed again.
    lb.configure("cfg")
    lb.rules_ahead = 122
    run(lb, ahead=0, bucket_rules=lb.bucket_rules)
    assert mark(lb, "cfg") is None
    lb.configure("cfg", expire("all", 3))
    lb.rules_ahead = 183
    lister = Lister(lb.s3)
    run(lb, ahead=0, bucket_rules=lb.bucket_rules, lister=lister)
    assert len(lister.calls) == 1 and lb.planned() == [("expire", "keep/b", None)]


def test_a_bucket_whose_rules_are_not_read_yet_waits_and_is_not_marked(aws: None, tmp_path: Path) -> None:
    lb = Lab(tmp_path, [{"bucket": "plain", "expire_days": 3}])
    lb.bucket("plain")
    lb.put("plain", "a", b"x", log=False)
    lister = Lister(lb.s3)
    baseliner = Baseliner(lb.schedule, lister, pages_per_step=4)  # type: ignore[arg-type]
    assert baseliner.want(["plain"]) == 1
    rules = lb.schedule.rules
    lb.schedule.rules = RuleSet((), day_seconds=1)  # source = "bucket": its configuration not read yet
    assert baseliner.run(lambda: None) is False
    assert (baseliner.pending, lister.calls, mark(lb, "plain")) == (1, [], None)
    lb.schedule.rules = rules  # read: listed
    assert baseliner.run(lambda: None) is False
    assert baseliner.pending == 0 and len(lister.calls) == 1 and lb.planned() == [("expire", "a", None)]
    m = mark(lb, "plain")
    assert m is not None and m.done and m.versions == 1


def test_the_listing_counters_are_exported_as_metrics() -> None:
    from prometheus_client import generate_latest

    from changelog.metrics import ChangelogMetrics, make_registry

    class Lifecycle:
        def stats(self) -> dict[str, object]:
            return {"expired": 0, "baseline_versions": 1500, "baseline_pages": 2, "baseline_buckets_done": 1,
                    "baseline_pending": 3}  # fmt: skip

    text = generate_latest(
        make_registry(ChangelogMetrics(consumers={"lifecycle": Lifecycle()}), process=False)
    ).decode()
    assert 'rgw_changelog_lifecycle_baseline_versions_total{consumer="lifecycle"} 1500.0' in text
    assert 'rgw_changelog_lifecycle_baseline_pages_total{consumer="lifecycle"} 2.0' in text
    assert 'rgw_changelog_lifecycle_baseline_buckets_total{consumer="lifecycle"} 1.0' in text
    assert 'rgw_changelog_lifecycle_baseline_pending_buckets{consumer="lifecycle"} 3.0' in text


def test_lifecycle_status_shows_each_governed_buckets_listing(aws: None, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from changelog.cli import cli
    from changelog.pipeline.backends.sqlite import SqliteStore
    from changelog.pipeline.index import ChangeIndex

    conf = tmp_path / "rgw-changelog.toml"
    conf.write_text(f"""
[index]
backend = "sqlite"
path = "{tmp_path / "index.db"}"
shards = 2

[target]
url = "file://{tmp_path / "logs"}/"

[lifecycle]
day_seconds = 1
shards = 2

[[lifecycle.rules]]
bucket = "plain"
expire_days = 3

[[lifecycle.rules]]
bucket = "later"
expire_days = 3
""")  # fmt: skip
    index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
    section = parse_lifecycle({"day_seconds": 1, "shards": 2, "rules": [
        {"bucket": "plain", "expire_days": 3}, {"bucket": "later", "expire_days": 3}]})  # fmt: skip
    schedule = Schedule(index.store, layout_of(section, index.prefix), RuleSet.of(section))
    (tmp_path / "lab").mkdir()
    lb = Lab(tmp_path / "lab", [])  # moto's buckets
    lb.bucket("plain")
    for k in ("a", "b"):
        lb.put("plain", k, b"x", log=False)
    baseliner = Baseliner(schedule, lb.s3)
    baseliner.want(["plain"])
    baseliner.run(lambda: None)
    runner = CliRunner()
    res = runner.invoke(cli, ["-c", str(conf), "lifecycle", "status", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["baseline"] == [
        {"bucket": "later", "pages": 0, "state": "pending", "versions": 0},
        {"bucket": "plain", "pages": 1, "state": "done", "versions": 2},
    ]
    res = runner.invoke(cli, ["-c", str(conf), "lifecycle", "status"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.splitlines()]
    assert ["later", "pending", "0"] in rows and ["plain", "done", "2"] in rows, res.stdout
