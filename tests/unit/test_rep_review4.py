"""Review 4 of one-way replication (REP.1) from a replication engineer's point of view, on moto:
a sqlite index for the checkpoint and the site state, a directory target for the change logs
(the backup tests' ``Zone`` writes them), moto as the source zone and as the site (the site's
buckets are other buckets of the same moto, through ``bucket_map``).

Each test states what an operator expects; a failure is a bug the review found."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.replication.state import SiteState
from changelog.errors import TransientError
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone
from tests.unit.test_rep_review2 import aws, body, index, logs, replicator, run_once, site_config

__all__ = ["aws", "index", "logs"]  # fixtures

MIB = 1024 * 1024


def test_a_key_failing_twice_is_retried_with_its_latest_write(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """An unversioned key is written while the site's bucket is missing (one failed entry), and
    written again while it is still missing: the entry "replaces its older self" (README,
    ``state.py``). The operator creates the bucket and retries every failed entry: the site
    must get the source's latest content, not have the retry dropped as superseded because the
    entry still holds the first write (whose ETag the source no longer has)."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    zone.put("src", "k", b"first")
    zone.commit()
    run_once(replicator(index, logs, aws), index)
    zone.put("src", "k", b"second")
    zone.commit()
    run_once(replicator(index, logs, aws), index)
    st = SiteState(index, "east")
    entries = list(st.failed())
    assert len(entries) == 1 and entries[0].attempts == 2
    aws.create_bucket(Bucket="dst")  # the operator's fix
    assert st.request_retry() == 1
    run_once(replicator(index, logs, aws), index)
    assert body(aws, "dst", "k") == b"second", "the retry of the failed key lost its latest write"
    assert list(st.failed()) == []


def test_a_delete_failing_after_a_write_of_the_key_is_retried_as_a_delete(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """The site had the key; then it refused the key's records for a while (here: mapped to a
    bucket that does not exist): a write fails, then the delete of the key fails too. Once the
    site takes records again the operator retries: the key must be gone at the site, as at the
    source (the delete is the entry's latest state, the write it replaced is superseded)."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    zone.put("src", "k", b"v0")
    zone.commit()
    run_once(replicator(index, logs, aws), index)
    assert body(aws, "dst", "k") == b"v0"
    refused = site_config(bucket_map={"src": "missing"})
    zone.put("src", "k", b"v1")
    zone.commit()
    run_once(replicator(index, logs, aws, site=refused), index)
    zone.delete("src", "k")
    zone.commit()
    run_once(replicator(index, logs, aws, site=refused), index)
    st = SiteState(index, "east")
    assert [e.attempts for e in st.failed()] == [2]
    assert st.request_retry() == 1
    run_once(replicator(index, logs, aws), index)
    assert body(aws, "src", "k") is None
    assert body(aws, "dst", "k") is None, (
        "the retried entry dropped the delete: the site keeps a stale object"
    )
    assert list(st.failed()) == []


class _SiteGoingDown:
    """The site (moto) as seen through a link that goes down after the first part of an upload
    and stays down, so that s3transfer's own abort of the upload fails too."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.tripped = False

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if name not in ("upload_part", "abort_multipart_upload"):
            return fn

        def call(**kw: Any) -> Any:
            if name == "upload_part" and kw.get("PartNumber", 1) > 1 and not self.tripped:
                self.down = self.tripped = True
            if self.down:
                from botocore.exceptions import EndpointConnectionError

                raise EndpointConnectionError(endpoint_url="http://site:7480")
            return fn(**kw)

        return call


def test_an_upload_the_site_outage_kept_open_is_aborted_once_the_site_is_back(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """The link to the site goes down in the middle of a multipart copy: the step fails (the
    record is tried again later) and s3transfer's abort of the upload fails as well. Once the
    site is back the object arrives whole, and the upload begun before the outage is not left
    open at the site for good."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    data = bytes(range(256)) * (11 * MIB // 256)
    zone.put("src", "big", data)
    zone.commit()
    site = _SiteGoingDown(aws)
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, use_threads=False)
    rep = replicator(index, logs, aws, transfer=transfer)
    rep.client = site  # type: ignore[assignment]
    runner = ConsumerRunner(index, rep, lease_ttl=30)
    assert runner.acquire()
    try:
        with pytest.raises(TransientError):
            runner.step(threading.Event())
        assert len(aws.list_multipart_uploads(Bucket="dst").get("Uploads", [])) == 1
        site.down = False  # the link is back
        runner.step(threading.Event())
    finally:
        runner.step_down()
    assert body(aws, "dst", "big") == data
    left = aws.list_multipart_uploads(Bucket="dst").get("Uploads", [])
    assert left == [], f"the upload begun before the outage is still open at the site: {left}"


def test_completions_count_the_records_the_backlog_counted(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex
) -> None:
    """A new bucket with two objects: the backlog reads 2 records (bucket operations are not
    replicated and not counted there), and once they are applied the site's completions
    (``/_/metrics/crr/<site>/completions``, ``_completed_total``) read 2, not 3: a bucket
    creation replicates nothing."""
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    rec = zone.record("src", "", "bucket_create")
    rec["key"] = None
    zone.pending.append(rec)
    zone.put("src", "a", b"1")
    zone.put("src", "b", b"22")
    zone.commit()
    rep = replicator(index, logs, aws)
    assert rep.backlog(None).records == 2
    run_once(rep, index)
    stats = rep.stats()
    assert (stats["completed"], stats["completed_bytes"]) == (2, 3), stats


def test_a_large_object_is_copied_within_the_sites_part_count_limit(
    aws: Any, logs: DirectoryTarget, index: ChangeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 and radosgw take at most 10,000 parts per upload (``rgw_multipart_part_upload_limit``),
    so with the default 8 MiB ``part_bytes`` an object above ~78 GiB must be copied in larger
    parts (s3transfer's ``ChunksizeAdjuster`` does that when it knows the size). Here the limit
    is scaled down to 2 parts (s3transfer's own adjuster, given max_parts=2), and an object of
    three 5 MiB parts is replicated: it must arrive, in at most 2 parts, not be cut into 3."""
    from s3transfer import upload as s3upload
    from s3transfer.utils import ChunksizeAdjuster

    class TwoParts(ChunksizeAdjuster):
        def __init__(self) -> None:
            super().__init__(max_parts=2)

    monkeypatch.setattr(s3upload, "ChunksizeAdjuster", TwoParts)
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    aws.create_bucket(Bucket="dst")
    data = bytes(range(256)) * (11 * MIB // 256)
    zone.put("src", "big", data)
    zone.commit()
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, use_threads=False)
    run_once(replicator(index, logs, aws, transfer=transfer), index)
    assert body(aws, "dst", "big") == data
    etag = aws.head_object(Bucket="dst", Key="big")["ETag"].strip('"')
    assert etag.endswith("-2"), f"copied in more parts than the site allows: ETag {etag}"


@pytest.mark.parametrize("hours", ["1e300", "nan", "inf", "10000"])
def test_resume_in_an_absurd_number_of_hours_is_refused_and_stores_nothing(
    tmp_path: Path, hours: str
) -> None:
    """`replicate resume SITE --in HOURS` with HOURS past what ``POST /_/crr/resume/<site>/schedule``
    takes (a year), not a number, or infinite: a one-line error, exit non-zero, and nothing
    stored: not a pause forever (nan, inf), not a resume time that every later `replicate sites`
    and `status` fail to show (1e300: "unexpected OverflowError")."""
    from click.testing import CliRunner

    from changelog.cli import cli

    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[index]
backend = "sqlite"
path = "{tmp_path / "index.db"}"
shards = 2

[target]
url = "file://{tmp_path / "logs"}/"

[source]
endpoint = "http://127.0.0.1:9"
access_key = "testing"
secret_key = "testing"

[[replication.sites]]
name = "east"
endpoint = "http://127.0.0.1:9"
access_key = "testing"
secret_key = "testing"
"""
    )
    runner = CliRunner()
    got = runner.invoke(cli, ["-c", str(config), "replicate", "resume", "east", "--in", hours])
    assert got.exit_code != 0, got.output
    assert len(got.output.strip().splitlines()) <= 3 and "Traceback" not in got.output, got.output
    sites = runner.invoke(cli, ["-c", str(config), "replicate", "sites", "--json"])
    assert sites.exit_code == 0, sites.output
    assert '"paused": false' in sites.output.replace('"paused":false', '"paused": false'), sites.output
