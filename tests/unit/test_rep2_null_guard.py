"""Two-way replication of versioned buckets (REP.2): the guard of a site's null version when its
bucket's versioning was suspended since the replicator learnt it (``If-None-Match: *`` on each
placement, ``apply.KEY_CONDITIONS``), and what it costs in requests.

moto checks ``If-None-Match`` against the key's current object, as radosgw 20.2 does (16.2 checks
it against the version placed): what the replicator does at such a site is shown here. moto
ignores the ``rgwx-`` parameters, so a placement ends failed ("the site made ... instead of"):
these tests look at the requests sent, not at the outcome. The guard against a suspended bucket
itself, and 16.2's per-version check, need radosgw:
``tests/integration/test_rep2_versioned_review_lab.py`` (moto answers a HEAD by an unknown version
id in a suspended bucket with a 400, before any placement)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from changelog.consumers.replication import apply
from changelog.consumers.replication.apply import OLH_EPOCH, Destination, apply_record
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.s3client import make_s3_client
from tests.moto_env import REGION, two_versioned_zones

_ids = itertools.count(1)
MIB = 1024 * 1024


class NoVersions:
    def get(self, key: str, src_version: str) -> str | None:
        return None


def rec(bucket: str, key: str, version: str) -> LogRecord:
    n = next(_ids)
    t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return LogRecord(
        id=f"g{n}", time=t, bucket=bucket, key=key, version_id=version, op="write", size=None, etag=None,
        seq=f"{n:020d}", baseline=False, recorded=t, metadata={OLH_EPOCH: "7"},
    )  # fmt: skip


class Sent:
    """Every request the client sends: (method, URL, headers)."""

    def __init__(self, client: Any) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        client.meta.events.register("before-send.s3", self._keep)

    def _keep(self, request: Any, **_: object) -> None:
        headers = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()}
        self.requests.append((request.method, request.url, headers))

    def placements(self) -> list[dict[str, str]]:
        """The headers of the requests that make an object: PUTs of a body, multipart completions."""
        return [
            h
            for m, u, h in self.requests
            if (m == "PUT" and "versioning" not in u and "partNumber=" not in u)
            or (m == "POST" and "uploadId=" in u)
        ]

    def versioning_reads(self) -> int:
        return sum(1 for m, u, _ in self.requests if m == "GET" and u.endswith("?versioning"))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # What the replicator learnt of sites in this process: nothing yet.
    monkeypatch.setattr(apply, "KEY_CONDITIONS", set())
    with two_versioned_zones(monkeypatch) as client:
        yield client


def dest(s3: Any) -> Destination:
    """Zone aaa's replicator, writing into zone bbb (its cached knowledge: versioning Enabled)."""
    return Destination(
        s3, "bbb", True, zone="zone-aaa", two_way=True, peer_zone="zone-bbb",
        replica_writers=frozenset({"rep-aaa"}),
    )  # fmt: skip


def test_a_new_key_is_placed_with_the_guard_and_no_versioning_read(s3: Any) -> None:
    v = s3.put_object(Bucket="aaa", Key="fresh", Body=b"from aaa")["VersionId"]
    sent = Sent(s3)
    out = apply_record(rec("aaa", "fresh", v), s3, dest(s3), NoVersions())
    print(out)
    assert [h.get("If-None-Match") for h in sent.placements()][:1] == ["*"]
    assert sent.versioning_reads() == 0
    assert apply.KEY_CONDITIONS == set()


def test_a_site_checking_the_condition_against_the_key_is_learnt_once(s3: Any) -> None:
    """A 412 with versioning on and the version not there: the site compares ``If-None-Match``
    with the key's current entry (20.2, moto). The PUT is made again without it, and no later
    placement at that site carries it (no request more on the normal path)."""
    s3.put_object(Bucket="bbb", Key="k", Body=b"bbb's own version")
    v = s3.put_object(Bucket="aaa", Key="k", Body=b"from aaa")["VersionId"]
    sent = Sent(s3)
    out = apply_record(rec("aaa", "k", v), s3, dest(s3), NoVersions())
    print(out)
    assert [h.get("If-None-Match") for h in sent.placements()][:2] == ["*", None]
    assert sent.versioning_reads() == 1
    assert apply.KEY_CONDITIONS == {str(s3.meta.endpoint_url)}
    w = s3.put_object(Bucket="aaa", Key="k", Body=b"from aaa again")["VersionId"]
    sent.requests.clear()
    apply_record(rec("aaa", "k", w), s3, dest(s3), NoVersions())
    assert sent.placements() and all(h.get("If-None-Match") is None for h in sent.placements())
    assert sent.versioning_reads() == 0


def test_a_site_bucket_suspended_before_the_placement_fails_in_one_line_and_is_not_learnt(s3: Any) -> None:
    """bbb's operator suspends versioning between the replicator's HEAD and its PUT, and bbb's
    user writes the null version: the guarded PUT's 412 makes the replicator read the
    versioning, the record fails in one line naming the fix, nothing is placed again, the null
    version stays, and the guard is still sent to that site."""
    s3.put_object(Bucket="bbb", Key="k", Body=b"bbb's own version")
    v = s3.put_object(Bucket="aaa", Key="k", Body=b"from aaa")["VersionId"]
    operator = make_s3_client(
        None, access_key="testing", secret_key="testing", region=REGION,
        max_attempts=1, connect_timeout=5.0, read_timeout=30.0,
    )  # fmt: skip

    def suspend_first(request: Any, **_: object) -> None:
        if request.method == "PUT" and "versioning" not in request.url and not operator_done:
            operator_done.append(True)
            operator.put_bucket_versioning(Bucket="bbb", VersioningConfiguration={"Status": "Suspended"})
            operator.put_object(Bucket="bbb", Key="k", Body=b"bbb's null version")

    operator_done: list[bool] = []
    s3.meta.events.register("before-send.s3", suspend_first, unique_id="suspend-first")
    sent = Sent(s3)
    out = apply_record(rec("aaa", "k", v), s3, dest(s3), NoVersions())
    print(out, [(m, u) for m, u, _ in sent.requests])
    assert operator_done
    assert out.status == "failed" and "versioning is Suspended" in (out.reason or ""), out
    assert "\n" not in (out.reason or "")
    assert [h.get("If-None-Match") for h in sent.placements()] == ["*"]
    assert sent.versioning_reads() == 1
    assert apply.KEY_CONDITIONS == set()
    null = s3.get_object(Bucket="bbb", Key="k", VersionId="null")["Body"].read()
    assert null == b"bbb's null version"


def test_a_multipart_placement_reads_the_versioning_first_until_the_site_is_learnt(s3: Any) -> None:
    """16.2 and 18.2 ignore the condition on a multipart completion: one versioning read before
    an upload of several requests, none once the site is known to check the key (20.2)."""
    body = b"x" * (6 * MIB)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, use_threads=False)
    v = s3.put_object(Bucket="aaa", Key="big", Body=body)["VersionId"]
    sent = Sent(s3)
    apply_record(rec("aaa", "big", v), s3, dest(s3), NoVersions(), transfer=config)
    parts = sum(1 for m, u, _ in sent.requests if m == "PUT" and "partNumber=" in u)
    print(f"parts {parts}, requests {[(m, u.split('?', 1)[-1]) for m, u, _ in sent.requests]}")
    assert parts == 2
    assert sent.versioning_reads() == 1
    # The completion carries it (radosgw 20.2 checks it there; 16.2 and 18.2 ignore it).
    assert [h.get("If-None-Match") for h in sent.placements()] == ["*"]
    # The versioning is read before the upload begins.
    first_post = next(i for i, (m, u, _) in enumerate(sent.requests) if m == "POST")
    read = next(i for i, (m, u, _) in enumerate(sent.requests) if u.endswith("?versioning"))
    assert read < first_post
    apply.KEY_CONDITIONS.add(str(s3.meta.endpoint_url))
    w = s3.put_object(Bucket="aaa", Key="big", Body=body)["VersionId"]
    sent.requests.clear()
    apply_record(rec("aaa", "big", w), s3, dest(s3), NoVersions(), transfer=config)
    assert sent.versioning_reads() == 0
    assert all(h.get("If-None-Match") is None for h in sent.placements())
