"""The lifecycle consumer's GC of replication's leftovers (``lifecycle.leftovers``) on moto: an
upload abandoned at a site is aborted once idle; one still receiving parts, one in a bucket the
site does not replicate, and one of another user are left alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from changelog.consumers.lifecycle.leftovers import LeftoverReaper, Site, leftover_reaper
from changelog.pipeline.s3client import make_s3_client
from tests.unit import test_lifecycle_executor

aws = test_lifecycle_executor.aws  # the moto fixture

# moto lists every upload with this fixed Owner (and an Initiator ARN of its own), whatever the
# caller; radosgw names the uploading user in both, as ListBuckets' Owner.ID (Pacific lab, 16.2.15:
# all three "tester"). The tests give the reaper moto's value as the site user's id.
MOTO_OWNER = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"


def client() -> Any:
    return make_s3_client(None, access_key="testing", secret_key="testing", region="us-east-1",
                          max_attempts=1, connect_timeout=5.0, read_timeout=30.0)  # fmt: skip


def upload(s3: Any, bucket: str, key: str, *, part: bool = True) -> str:
    uid = str(
        s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"rgw-changelog-replica": "1"})[
            "UploadId"
        ]
    )
    if part:
        s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"p" * 1024)
    return uid


def open_ids(s3: Any, bucket: str) -> set[str]:
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_idle_replication_uploads_are_aborted_and_live_ones_kept(aws: None, tmp_path: Path) -> None:
    s3 = client()
    for b in ("dst", "renamed", "other"):
        s3.create_bucket(Bucket=b)
    site = Site("s1", s3, frozenset(), {"src2": "renamed"}, ())
    now = [time.time()]
    reaper = LeftoverReaper([site], idle_s=3600, interval=600, clock=lambda: now[0])
    reaper._owner["s1"] = MOTO_OWNER
    dead = upload(s3, "dst", "big")
    mapped = upload(s3, "renamed", "k", part=False)
    stranger = upload(s3, "other", "k")  # a bucket no record mentioned: never listed
    reaper.saw({"dst", "src2"})
    # moto says every upload began in 2010: only the parts' times tell they are live.
    assert reaper.run() == 1  # the one without parts counts from its start
    assert open_ids(s3, "renamed") == set() and dead in open_ids(s3, "dst")
    assert reaper.counts["leftovers_active"] == 1
    now[0] += 60
    assert reaper.run() == 0  # the interval
    now[0] += 3600
    assert reaper.run(force=True) == 1
    assert open_ids(s3, "dst") == set() and open_ids(s3, "other") == {stranger}
    assert reaper.snapshot()["leftovers_aborted"] == 2
    del mapped


def test_uploads_of_another_user_are_never_taken(aws: None, tmp_path: Path) -> None:
    s3 = client()
    s3.create_bucket(Bucket="dst")
    uid = upload(s3, "dst", "k", part=False)
    reaper = LeftoverReaper(
        [Site("s1", s3, frozenset(), {}, ())], idle_s=600, clock=lambda: time.time() + 10**6
    )
    reaper._owner["s1"] = "someone-else"  # the site credentials' user is not the uploads' owner
    reaper.saw({"dst"})
    assert reaper.run() == 0 and open_ids(s3, "dst") == {uid}


def test_the_reaper_follows_the_replication_sites_of_the_config(tmp_path: Path) -> None:
    from changelog.config import parse_config

    cfg = parse_config({
        "lifecycle": {"leftovers_days": 0.5},
        "replication": {"sites": [{"name": "s1", "endpoint": "http://127.0.0.1:1", "access_key": "a",
                                   "secret_key": "b", "buckets": ["x"], "bucket_map": {"x": "y"}}]},
    })  # fmt: skip
    reaper = leftover_reaper(cfg)
    assert reaper is not None and reaper.idle_s == 43_200
    (site,) = reaper.sites
    assert (site.site_bucket("x"), site.replicates("x"), site.replicates("z")) == ("y", True, False)
    assert leftover_reaper(parse_config({"lifecycle": {"leftovers_days": 0}})) is None
