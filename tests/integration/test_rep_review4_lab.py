"""Review 4 of one-way replication (REP.1) on a lab radosgw, from a replication engineer's point
of view. The site is the same radosgw (another bucket, through ``bucket_map``), so one lab is
enough: `rgw-changelog serve` follows the source bucket and replicates to the site bucket.

* serve SIGKILLed while it copies multipart objects to the site: after a restart every object
  arrives whole, once, and the multipart upload the killed process had open at the site is not
  left there forever (it holds the parts' space at the site, unseen in any listing of objects).

A failure is a bug the review found (the report says which)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any

import pytest

from tests.integration.test_replication_lab import Site, make_rep, wait_caught_up
from tests.lab import Lab

__all__ = ["make_rep"]  # the fixture

# The replication consumer's own behaviour: CI runs it on Pacific only.
pytestmark = [pytest.mark.ceph, pytest.mark.release_neutral]

MIB = 1024 * 1024
PART = 8 * MIB  # the part size Replicating's config sets (part_bytes = "8MiB")


def open_uploads(s3: Any, bucket: str) -> set[tuple[str, str]]:
    resp = s3.list_multipart_uploads(Bucket=bucket)
    return {(u["Key"], u["UploadId"]) for u in resp.get("Uploads", [])}


def test_serve_killed_mid_multipart_copy_leaves_no_open_upload_at_the_site(
    ceph_lab: Lab, s3_client: Any, make_rep: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    src, dst = f"rv4-src-{tag}", f"rv4-dst-{tag}"
    for b in (src, dst):
        s3_client.create_bucket(Bucket=b)
    rep = make_rep(
        [src],
        [
            Site(
                "self", ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key, "default", {src: dst}
            )
        ],
    )
    rep.start()
    digests: dict[str, str] = {}
    orphans: set[tuple[str, str]] = set()
    for attempt in range(3):
        # A few objects of several parts each, so that one is being copied when serve dies.
        for i in range(4):
            data = os.urandom(6 * PART + 1234)
            key = f"big/{attempt}-{i}"
            s3_client.put_object(Bucket=src, Key=key, Body=data)
            digests[key] = hashlib.sha256(data).hexdigest()
        t0 = time.monotonic()
        while not open_uploads(s3_client, dst) and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        rep.kill()
        orphans = open_uploads(s3_client, dst)
        print(
            f"attempt {attempt}: serve killed {time.monotonic() - t0:.2f}s after the writes, open uploads {orphans}"
        )
        rep.start()
        if orphans:
            break
    assert orphans, "serve was never killed mid-upload (no open upload seen at the site)"
    waited = wait_caught_up(rep, s3_client, ["self"], time.time())
    print(f"caught up {waited:.1f}s after the restart")
    for key, digest in digests.items():
        got = s3_client.get_object(Bucket=dst, Key=key)["Body"].read()
        assert hashlib.sha256(got).hexdigest() == digest, f"{key}: the replica differs from the source"
    left = open_uploads(s3_client, dst)
    rep.stop()
    assert not left & orphans, (
        f"the killed serve's multipart uploads are still open at the site: {left & orphans}"
    )
