"""Review 3 of lifecycle (ILM.1): what a user's writes racing the executor do, and rules that S3
refuses. On moto (S3's conditional deletes: ``If-Match``) with the schedule on the sqlite twin
(the harness of ``test_lifecycle_executor``). The executor's pacer (``max_actions_per_second``)
is given a sleep that writes the object a user would write while the executor waits: the window
between an entry's re-check and its delete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from changelog.consumers.lifecycle.rules import parse_lifecycle
from changelog.errors import ConfigError
from changelog.pacing import Pacer
from tests.unit import test_lifecycle_executor
from tests.unit.test_lifecycle_executor import Lab

aws = test_lifecycle_executor.aws  # the moto fixture


def racing_pacer(write: Callable[[], None]) -> Pacer:
    """A pacer of one action per second on a clock that never moves: every take after the first
    waits, and its wait is ``write`` (done once), a user's write landing while the executor
    paces its actions, after the entries' re-checks."""
    done: list[bool] = []

    def sleep(_: float) -> None:
        if not done:
            done.append(True)
            write()

    pacer = Pacer(1.0, clock=lambda: 0.0, sleep=sleep)
    pacer.take()  # the executor's first action waits too
    return pacer


def test_an_object_overwritten_after_its_recheck_is_not_deleted(aws: None, tmp_path: Path) -> None:
    """a and b are due; after their re-checks (HEAD: same ETag, same mtime) and before the delete,
    a user overwrites b. S3's lifecycle acts on the object as it is when it acts: the new b is
    not due. The executor's DeleteObjects named the key alone, so it deleted the new b (a
    user's fresh data lost, in an unversioned bucket)."""
    lb = Lab(tmp_path, [{"bucket": "plain", "expire_days": 1}])
    lb.bucket("plain")
    lb.put("plain", "a", b"old a")
    lb.put("plain", "b", b"old b")
    lb.commit()
    lb.executor.pacer = racing_pacer(lambda: lb.put("plain", "b", b"new b", log=False))
    consumer = lb.step(ahead=5)
    st = consumer.stats()
    print("stats:", {k: st[k] for k in ("expired", "skipped", "failed")})
    assert lb.keys("plain") == ["b"]
    assert lb.s3.get_object(Bucket="plain", Key="b")["Body"].read() == b"new b"
    assert (st["expired"], st["skipped"], st["failed"]) == (1, 1, 0)
    assert lb.planned() == []  # the stale entry is gone; the new b's record schedules it


def test_a_versioned_key_written_after_its_recheck_keeps_its_new_version_current(
    aws: None, tmp_path: Path
) -> None:
    """The same race in a versioned bucket: the delete marker the expiry writes went on top of
    the version the user just wrote, hiding it (and, under a noncurrent rule, expiring it days
    later). S3 acts on the current version it finds: the new one is not due."""
    lb = Lab(tmp_path, [{"bucket": "ver", "expire_days": 1}])
    lb.bucket("ver", versioned=True)
    lb.put("ver", "a", b"old a")
    lb.put("ver", "b", b"old b")
    lb.commit()
    new: list[str | None] = []
    lb.executor.pacer = racing_pacer(lambda: new.append(lb.put("ver", "b", b"new b", log=False)))
    lb.step(ahead=5)
    stack = lb.stack("ver", "b")
    print("b:", stack)
    assert stack[0] == (new[0], False), "the new version is current, no marker over it"
    assert [m for _, m in lb.stack("ver", "a")] == [True, False]  # a: expired, a marker over it


def test_rerun_after_an_expiry_whose_entry_stayed_writes_no_second_marker(aws: None, tmp_path: Path) -> None:
    """A crash after the delete and before the entry's removal: the rerun re-checks, finds the
    marker current and does nothing (one marker, as S3 leaves)."""
    lb = Lab(tmp_path, [{"bucket": "ver", "expire_days": 30}])
    lb.bucket("ver", versioned=True)
    lb.put("ver", "k", b"x")
    lb.commit()
    lb.step(ahead=0)
    (due,) = lb.schedule.due(10**18, 10)
    lb.s3.delete_object(Bucket="ver", Key="k")  # what the crashed executor did
    lb.step(ahead=60)
    assert [m for _, m in lb.stack("ver", "k")] == [True, False]
    assert lb.schedule.due(10**18, 10) == []
    assert due.entry.key == "k"


@pytest.mark.parametrize(
    "rule",
    [
        {"bucket": "b", "tags": {"t": "1"}, "abort_incomplete_multipart_days": 1},
        {"bucket": "b", "tags": {"t": "1"}, "expire_days": 3, "abort_incomplete_multipart_days": 1},
    ],
)
def test_an_abort_rule_with_tags_is_refused_in_one_line(rule: dict[str, object]) -> None:
    """S3 refuses AbortIncompleteMultipartUpload in a rule filtered by tags (an upload in
    progress has no tags to match). Accepted, the tags were ignored for the aborts: every upload
    under the rule's prefix was aborted, tagged or not."""
    with pytest.raises(ConfigError) as ei:
        parse_lifecycle({"rules": [rule]})
    msg = str(ei.value)
    assert "abort_incomplete_multipart_days" in msg and "tags" in msg and "\n" not in msg


def test_a_version_written_while_a_transition_waits_for_its_pace_stays_current(
    aws: None, tmp_path: Path
) -> None:
    """A versioned bucket's transition copies the re-checked version (by its id) onto the key:
    a version the user writes between the re-check and the copy (the pacer's wait came after
    the re-check) ended under the copy of the older one, its content no longer current (and
    due for noncurrent expiry). S3 transitions the version in place: the user's write stays
    current. The wait now comes before the re-check, which then finds the key changed."""
    lb = Lab(tmp_path, [{"bucket": "ver", "transition_days": 1, "storage_class": "STANDARD_IA"}])
    lb.bucket("ver", versioned=True)
    lb.put("ver", "k", b"old")
    lb.commit()
    lb.executor.pacer = racing_pacer(lambda: lb.put("ver", "k", b"new", log=False))
    lb.step(ahead=5)
    print("k:", lb.stack("ver", "k"))
    assert lb.s3.get_object(Bucket="ver", Key="k")["Body"].read() == b"new"


def test_an_expired_object_delete_marker_is_removed_under_an_expiration_days_rule(
    aws: None, tmp_path: Path
) -> None:
    """expire_days + noncurrent_expire_days on a versioned bucket (the usual clean-up rule): the
    object expires (a marker over it), its version then expires as noncurrent, and the marker
    was left alone, the key's only version. S3 removes such an expired object delete marker
    under an Expiration Days rule (once the marker is that old), and so does radosgw's own
    lifecycle (rgw_lc.cc, current expiration of a delete marker with no version under it).
    Left, they pile up, one per key ever written, in every listing of versions. A key written
    again after its marker's entry (the write not yet in the logs) keeps its marker and its
    new version (the re-check)."""
    lb = Lab(tmp_path, [{"bucket": "ver", "expire_days": 10, "noncurrent_expire_days": 10}])
    lb.bucket("ver", versioned=True)
    versions = {key: lb.put("ver", key, b"x") for key in ("k", "again")}
    lb.commit()
    lb.step(ahead=60)  # both expire: a marker over each
    for key in versions:
        lb._record("delete_marker", "ver", key, version=marker_of(lb, key))
    lb.commit()
    lb.step(ahead=60)  # the versions below the markers expire as noncurrent
    for key, v in versions.items():
        assert lb.stack("ver", key) == [(marker_of(lb, key), True)]
        lb._record("delete", "ver", key, version=v)
    lb.commit()
    lb.step(ahead=0)  # the lone markers are scheduled
    again = lb.put("ver", "again", b"new", log=False)
    before = lb.executor.snapshot()
    consumer = lb.step(ahead=60)
    print("stats:", consumer.stats(), "planned:", lb.planned())
    assert lb.stack("ver", "k") == [], "the lone marker is removed"
    assert [(v, m) for v, m in lb.stack("ver", "again")][0] == (again, False)
    assert len(lb.stack("ver", "again")) == 2  # its marker stays, under the new version
    st = consumer.stats()
    assert (st["failed"] - before["failed"], st["skipped"] - before["skipped"]) == (0, 1)
    assert lb.planned() == []


def test_a_lone_delete_marker_is_removed_under_a_tag_filtered_expiration_rule(
    aws: None, tmp_path: Path
) -> None:
    """radosgw's tag filter lets every delete marker through (rgw_lc.cc ``LCOpFilter_Tags``; on
    the Reef and Pacific labs a tag-filtered Expiration Days rule removed the lone markers as an
    unfiltered one did): a lone marker under a tag rule's prefix is removed, with no tag check
    (a marker has no tags to read); a marker over a version stays, and so does one under
    another prefix."""
    lb = Lab(tmp_path, [{"bucket": "ver", "prefix": "t/", "tags": {"class": "x"}, "expire_days": 2}])
    lb.bucket("ver", versioned=True)
    for key in ("t/lone", "t/over", "o/lone"):
        v = lb.put("ver", key, b"x")
        lb.delete("ver", key)
        if key.endswith("lone"):
            lb.s3.delete_object(Bucket="ver", Key=key, VersionId=v)
            lb._record("delete", "ver", key, version=v)
    lb.commit()
    lb.step(ahead=0)
    assert [(a, k) for a, k, _ in lb.planned()] == [("expire_marker", "t/lone")]
    consumer = lb.step(ahead=5)
    st = consumer.stats()
    print("stats:", {k: st[k] for k in ("markers_expired", "skipped", "failed", "requests")})
    assert lb.stack("ver", "t/lone") == []
    assert [m for _, m in lb.stack("ver", "t/over")] == [True, False]
    assert [m for _, m in lb.stack("ver", "o/lone")] == [True]
    assert (st["markers_expired"], st["skipped"], st["failed"]) == (1, 0, 0)
    assert lb.planned() == []


def marker_of(lb: Lab, key: str) -> str:
    (vid, is_marker), *_ = lb.stack("ver", key)
    assert is_marker
    return vid


def test_a_noncurrent_delete_marker_expires_as_noncurrent(aws: None, tmp_path: Path) -> None:
    """A user's delete (marker m1 over v1), then a new version v2: m1 is noncurrent. radosgw's
    own lifecycle removes every noncurrent entry under NoncurrentVersionExpiration, markers
    included; here m1 stays for ever (and with it the key's later marker, never alone)."""
    lb = Lab(tmp_path, [{"bucket": "ver", "noncurrent_expire_days": 1}])
    lb.bucket("ver", versioned=True)
    v1 = lb.put("ver", "k", b"1")
    lb.delete("ver", "k")
    v2 = lb.put("ver", "k", b"2")
    lb.commit()
    lb.step(ahead=5)
    print("k:", lb.stack("ver", "k"))
    assert lb.stack("ver", "k") == [(v2, False)]
    assert v1 is not None
