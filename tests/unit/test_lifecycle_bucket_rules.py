"""``[lifecycle] source = "bucket"`` (issue 20): the rules read from each bucket's own S3 lifecycle
configuration, on moto: PutBucketLifecycleConfiguration, then the records of what the test did,
then the schedule and the executor; what a configuration changed, added or removed does to
entries already scheduled; and the one-line refusals of what we cannot honour."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.lifecycle.bucket_rules import BucketRules, from_s3
from changelog.consumers.lifecycle.consumer import LifecycleConsumer, layout_of
from changelog.consumers.lifecycle.executor import Executor
from changelog.consumers.lifecycle.rules import Action, RuleSet, parse_lifecycle
from changelog.consumers.lifecycle.schedule import Schedule
from changelog.errors import ConfigError
from tests.unit import test_lifecycle_executor
from tests.unit.test_lifecycle_executor import Lab

aws = test_lifecycle_executor.aws  # the moto fixture

S = 1_000_000


class BucketLab(Lab):
    """``Lab`` with the rules from the buckets: one ``BucketRules`` whose clock the test moves
    (``rules_ahead``), shared by every step's consumer as one process's would be."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, [])
        self.section = parse_lifecycle(
            {"day_seconds": 1, "shards": 2, "batch": 100, "source": "bucket", "bucket_rules_interval": 60}
        )
        self.schedule = Schedule(
            self.index.store, layout_of(self.section, self.index.prefix), RuleSet.of(self.section)
        )
        self.executor = Executor(
            self.schedule, self.s3, batch=100, workers=4, clock=lambda: time.time() + self.offset
        )
        self.rules_ahead = 0.0
        self.bucket_rules = BucketRules(
            self.s3, 1.0, interval=60, clock=lambda: time.time() + self.rules_ahead
        )

    def step(self, *, ahead: float) -> LifecycleConsumer:
        self.offset = ahead
        consumer = LifecycleConsumer(
            self.schedule, self.executor, self.logs, interval=0.01, bucket_rules=self.bucket_rules
        )
        runner = ConsumerRunner(self.index, consumer, lease_ttl=30)
        assert runner.acquire()
        try:
            runner.step(__import__("threading").Event())
        finally:
            runner.step_down()
        return consumer

    def configure(self, bucket: str, *rules: dict[str, Any]) -> None:
        if rules:
            self.s3.put_bucket_lifecycle_configuration(
                Bucket=bucket,
                LifecycleConfiguration={"Rules": list(rules)},  # type: ignore[arg-type]
            )
        else:
            self.s3.delete_bucket_lifecycle(Bucket=bucket)


def expire(rid: str, days: int, prefix: str = "", status: str = "Enabled") -> dict[str, Any]:
    return {"ID": rid, "Status": status, "Filter": {"Prefix": prefix}, "Expiration": {"Days": days}}


def test_s3_rules_map_onto_ours_and_what_we_cannot_honour_is_left_out_in_one_line() -> None:
    docs: list[dict[str, Any]] = [
        {"ID": "all", "Status": "Enabled", "Filter": {"And": {"Prefix": "logs/", "Tags": [{"Key": "t", "Value": "1"}]}},
         "Expiration": {"Days": 30}, "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
         "Transitions": [{"Days": 90, "StorageClass": "COLD"}, {"Days": 10, "StorageClass": "WARM"}],
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}},
        {"ID": "tag", "Status": "Enabled", "Filter": {"Tag": {"Key": "k", "Value": "v"}}, "Expiration": {"Days": 3}},
        {"ID": "legacy", "Status": "Enabled", "Prefix": "old/", "Expiration": {"Days": 4}},
        {"ID": "off", "Status": "Disabled", "Filter": {}, "Expiration": {"Days": 1}},
        {"ID": "dated", "Status": "Enabled", "Filter": {}, "Expiration": {"Date": "2030-01-01T00:00:00Z"},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 5, "NewerNoncurrentVersions": 3}},
        {"ID": "sized", "Status": "Enabled", "Filter": {"ObjectSizeGreaterThan": 100}, "Expiration": {"Days": 1}},
        {"ID": "marker", "Status": "Enabled", "Filter": {}, "Expiration": {"ExpiredObjectDeleteMarker": True}},
    ]  # fmt: skip
    rules, warnings = from_s3("t1/b", docs)
    got = [(r.n, r.id, r.prefix, dict(r.tags), r.expire_days, r.noncurrent_expire_days, r.transition_days,
            r.storage_class, r.abort_days) for r in rules]  # fmt: skip
    assert got == [
        (0, "all", "logs/", {"t": "1"}, 30, 7, 10, "WARM", 2),  # transitions in day order
        (1, "all#2", "logs/", {"t": "1"}, None, None, 90, "COLD", None),
        (2, "tag", "", {"k": "v"}, 3, None, None, None, None),
        (3, "legacy", "old/", {}, 4, None, None, None, None),
    ]
    assert warnings == [
        "t1/b: lifecycle rule 'dated': Expiration.Date is not supported: left out",
        "t1/b: lifecycle rule 'dated': NewerNoncurrentVersions is not supported: noncurrent expiry left out",
        "t1/b: lifecycle rule 'sized': ObjectSizeGreaterThan/ObjectSizeLessThan filters are not supported: rule left out",
        "t1/b: lifecycle rule 'marker': Expiration.ExpiredObjectDeleteMarker is not supported: left out",
    ]
    rs = RuleSet(tuple(rules), day_seconds=1)
    assert rs.has("t1/b", "all#2", Action.TRANSITION) and not rs.has("t1/b", "all#2", Action.EXPIRE)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"source": "bucket", "rules": [{"bucket": "b", "expire_days": 1}]},
            'source = "bucket" reads the rules',
        ),
        ({"source": "buckets"}, "lifecycle.source"),
        ({"leftovers_days": 0.001}, "leftovers_days must be 0 (off) or at least"),
    ],
)
def test_bad_source_settings_are_refused_in_one_line(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_lifecycle(doc)
    assert message in str(ei.value) and "\n" not in str(ei.value)
    # Enabled without [[lifecycle.rules]] is fine when the buckets give them.
    assert parse_lifecycle({"enabled": True, "source": "bucket"}).source == "bucket"


def test_bucket_rules_expire_exactly_what_the_configuration_covers(aws: None, tmp_path: Path) -> None:
    lb = BucketLab(tmp_path)
    lb.bucket("cfg")
    lb.bucket("bare")
    lb.configure("cfg", expire("tmp", 5, "tmp/"), expire("off", 1, "keep/", status="Disabled"))
    for k in ("tmp/a", "tmp/b", "keep/c"):
        lb.put("cfg", k, b"x")
    lb.put("bare", "tmp/a", b"x")
    lb.commit()
    lb.step(ahead=0)
    assert lb.planned() == [("expire", "tmp/a", None), ("expire", "tmp/b", None)]
    lb.put("cfg", "tmp/b", b"again", log=False)  # rewritten, its record not applied: never expired
    consumer = lb.step(ahead=7)
    assert lb.keys("cfg") == ["keep/c", "tmp/b"] and lb.keys("bare") == ["tmp/a"]
    st = consumer.stats()
    assert (st["expired"], st["skipped"], st["bucket_rules_fetches"]) == (1, 1, 2)
    doc = consumer._status_doc()
    assert doc["source"] == "bucket"
    assert doc["bucket_rules"] == {
        "buckets_tracked": 2,
        "buckets_with_configuration": 1,
        "rules": 1,
        "left_out": [],
    }


def test_a_changed_configuration_reschedules_the_objects_already_kept(aws: None, tmp_path: Path) -> None:
    lb = BucketLab(tmp_path)
    lb.bucket("cfg")
    # A Disabled rule: the bucket has a configuration, so its keys are kept though nothing is due.
    lb.configure("cfg", expire("later", 5, "tmp/", status="Disabled"))
    for k in ("tmp/a", "keep/b"):
        lb.put("cfg", k, b"x")
    lb.commit()
    lb.step(ahead=0)
    assert lb.planned() == []
    # The rule enabled and widened: within the refresh interval nothing changes...
    lb.configure("cfg", expire("later", 3))
    lb.step(ahead=0)
    assert lb.planned() == []
    # ...after it, every kept key is scheduled from its own mtime (both written before the change).
    lb.rules_ahead = 61
    consumer = lb.step(ahead=0)
    assert sorted(lb.planned()) == [("expire", "keep/b", None), ("expire", "tmp/a", None)]
    assert consumer.stats()["buckets_rescheduled"] == 1
    lb.step(ahead=4)
    assert lb.keys("cfg") == []


def test_a_removed_configuration_drops_the_scheduled_entries(aws: None, tmp_path: Path) -> None:
    lb = BucketLab(tmp_path)
    lb.bucket("cfg")
    lb.configure("cfg", expire("soon", 2))
    lb.put("cfg", "a", b"x")
    lb.commit()
    lb.step(ahead=0)
    assert lb.planned() == [("expire", "a", None)]
    lb.configure("cfg")  # DeleteBucketLifecycle
    lb.rules_ahead = 61
    lb.step(ahead=5)  # refreshed before the executor's batch: the entry is gone, not acted on
    assert lb.planned() == [] and lb.keys("cfg") == ["a"]
    assert list(lb.schedule.bucket_marks(lb.schedule.layout.shard("", "cfg")[0])) == []


def test_the_executor_drops_an_entry_whose_rule_is_gone(aws: None, tmp_path: Path) -> None:
    lb = BucketLab(tmp_path)
    lb.bucket("cfg")
    lb.configure("cfg", expire("soon", 2))
    lb.put("cfg", "a", b"x")
    lb.commit()
    lb.step(ahead=0)
    # The rules as the executor sees them lost the rule (a refresh not yet written to the schedule).
    lb.schedule.rules = RuleSet((), day_seconds=1, governed=frozenset({"cfg"}))
    assert lb.executor.run_batch(int((time.time() + 5) * S)) == 1
    assert lb.keys("cfg") == ["a"] and lb.executor.counts["skipped"] == 1 and lb.planned() == []


def test_a_new_consumer_process_keeps_following_the_buckets_the_schedule_holds(
    aws: None, tmp_path: Path
) -> None:
    lb = BucketLab(tmp_path)
    lb.bucket("cfg")
    lb.configure("cfg", expire("soon", 2))
    lb.put("cfg", "a", b"x")
    lb.commit()
    lb.step(ahead=0)
    # Another process (nothing cached, no record of the bucket coming) after the rule changed.
    lb.configure("cfg", expire("soon", 10))
    lb.bucket_rules = BucketRules(lb.s3, 1.0, interval=60)
    lb.step(ahead=5)
    assert lb.keys("cfg") == ["a"]  # rescheduled to day 10 before the batch
    assert [(a, k) for a, k, _ in lb.planned()] == [("expire", "a")]
