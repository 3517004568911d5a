"""Object tags through backup and restore on real radosgw: S3 mutations -> the RGW follower ->
the change index on RADOS -> the collector's logs -> ``backup run`` -> restores whose tags are
compared with the source's at each backup.

radosgw (Reef 18.2.7, measured) logs PutObjectTagging and DeleteObjectTagging as a ``write`` of
the object with its ETag unchanged (of the version tagged, with or without a VersionId, on a
versioned bucket), and sends ``x-amz-tagging-count`` with GET and HEAD only when there are tags.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from changelog.config import CollectorConfig, SourceConfig
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.restore import restore
from changelog.consumers.backup.runner import BackupRunner, RunResult
from changelog.consumers.backup.source import Source
from changelog.consumers.backup.store import BackupStore
from changelog.pipeline.collector import Collector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.reader import last_log, read_watermark
from changelog.pipeline.targets import S3Target
from rgw_module.admin import AdminClient
from rgw_module.follower import Follower
from tests.lab import Lab
from tests.unit.test_backup_support import bucket_state

pytestmark = pytest.mark.ceph

MiB = 1024 * 1024
ODD = {"a b": "c+d", "path/x": "k=1:2@h", "ünï": "cödé", "empty": ""}


@dataclass
class Pipe:
    s3: Any
    follower: Follower
    collector: Collector
    logs: S3Target
    store: BackupStore
    buckets: list[str]

    def sync(self) -> None:
        """Everything done so far is in the logs and under the watermark (as test_backup_lab)."""
        time.sleep(1.0 - time.time() % 1.0 + 0.05)
        for _ in range(20):
            self.follower.run_until_caught_up(timeout=120)
            self.collector.flush()
            wm = read_watermark(self.logs)
            last = last_log(self.logs)
            if wm is not None and (last is None or wm.last_object == last.name):
                return
        raise AssertionError("the watermark does not catch up with the last log object")

    def backup(self) -> RunResult:
        t0 = time.monotonic()
        r = BackupRunner(self.store, self.logs, Source(self.s3), buckets=self.buckets, progress=False).run()
        print(
            f"backup {r.backup_id}: {r.records} records, {r.copied} copied, {r.uploaded} uploaded, "
            f"{r.retagged} retagged in {time.monotonic() - t0:.1f} s"
        )
        assert r.backup_id is not None
        return r

    def tags(self, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
        kw = {"VersionId": version_id} if version_id else {}
        resp = self.s3.get_object_tagging(Bucket=bucket, Key=key, **kw)
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}  # radosgw: no TagSet when none

    def tag(self, bucket: str, key: str, tags: dict[str, str], version_id: str | None = None) -> None:
        kw = {"VersionId": version_id} if version_id else {}
        tagset = [{"Key": k, "Value": v} for k, v in tags.items()]
        self.s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tagset}, **kw)

    def snapshot(self, bucket: str) -> dict[str, tuple[Any, dict[str, str]]]:
        """key -> ((content, metadata, content type), tags) of every current object."""
        return {k: (v, self.tags(bucket, k)) for k, v in bucket_state(self.s3, bucket).items()}

    def restored(self, backup_id: str, bucket: str) -> dict[str, tuple[Any, dict[str, str]]]:
        to = f"rs-{uuid.uuid4().hex[:12]}"
        res = restore(
            self.store,
            Source(self.s3),
            bucket=bucket,
            to_bucket=to,
            backup_id=backup_id,
            progress=False,
            part_bytes=5 * MiB,
        )
        assert not res.failed, res.failed
        return self.snapshot(to)


@pytest.fixture
def pipe(ceph_lab: Lab, s3_client: Any) -> Iterator[Pipe]:
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:8]
    rados = RadosStore(
        conffile=ceph_lab.conf,
        pool=ceph_lab.pool,
        namespace=f"test-bktags-{tag}",
        keyring=ceph_lab.keyring or None,
    )
    index = ChangeIndex(rados, shards=8)
    admin = AdminClient(ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key)
    plain, vers = f"bkt-plain-{tag}", f"bkt-vers-{tag}"
    for b in (plain, vers, f"bkt-logs-{tag}", f"bkt-store-{tag}"):
        s3_client.create_bucket(Bucket=b)
    s3_client.put_bucket_versioning(Bucket=vers, VersioningConfiguration={"Status": "Enabled"})
    follower = Follower(
        index,
        admin,
        SourceConfig(
            buckets=(plain, vers), poll_interval=0.2, trim_datalog=False, lease_ttl=10.0, object_info="head"
        ),
    )
    assert follower.acquire()
    logs = S3Target(f"bkt-logs-{tag}", "changes/", client=s3_client)
    collector = Collector(
        index, logs, CollectorConfig(settle=0.0, lease_ttl=10.0), watermark_cap=follower.caught_up_until_us
    )
    store = BackupStore(S3Target(f"bkt-store-{tag}", "store/", client=s3_client))
    try:
        yield Pipe(s3_client, follower, collector, logs, store, [plain, vers])
    finally:
        collector.close()
        follower.close()
        for oid in rados.list_objects():
            rados.remove_object(oid)
        rados.close()
        admin.close()


def test_tags_are_backed_up_and_restored_with_tagging_only_changes(pipe: Pipe) -> None:
    """Tags written with the object (PUT and multipart), then changed alone: PutObjectTagging on
    an unversioned object, DeleteObjectTagging, and on a versioned key PutObjectTagging of an
    older version (VersionId) and of the current one. Every backup restores each object with the
    tags it had then; the tagging-only changes store no blob again, and the older version's new
    tags are in the manifest while the current version stays current."""
    s3 = pipe.s3
    plain, vers = pipe.buckets
    s3.put_object(
        Bucket=plain, Key="odd", Body=b"odd tags", Tagging="a%20b=c%2Bd&empty=&path%2Fx=k%3D1%3A2%40h"
    )
    pipe.tag(plain, "odd", ODD)  # the UTF-8 key and value, which a header would not carry as such
    s3.put_object(Bucket=plain, Key="drop", Body=b"tags soon dropped", Tagging="t=1")
    s3.put_object(Bucket=plain, Key="retag", Body=b"tags soon changed", Tagging="stage=draft")
    s3.put_object(Bucket=plain, Key="none", Body=b"never tagged")
    up = s3.create_multipart_upload(Bucket=plain, Key="mp")
    parts = []
    for n in (1, 2):
        r = s3.upload_part(
            Bucket=plain, Key="mp", UploadId=up["UploadId"], PartNumber=n, Body=os.urandom(5 * MiB)
        )
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(
        Bucket=plain, Key="mp", UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    # Reef keeps no tags given to CreateMultipartUpload (measured): tagged once complete.
    pipe.tag(plain, "mp", {"kind": "multipart"})
    v1 = s3.put_object(Bucket=vers, Key="doc", Body=b"one", Tagging="v=1")["VersionId"]
    pipe.sync()
    pipe.backup()  # v1's content is held from here on
    v2 = s3.put_object(Bucket=vers, Key="doc", Body=b"two", Tagging="v=2")["VersionId"]
    pipe.sync()
    first = pipe.backup()
    snap1 = {b: pipe.snapshot(b) for b in pipe.buckets}
    assert snap1[plain]["odd"][1] == ODD and snap1[plain]["mp"][1] == {"kind": "multipart"}

    pipe.tag(plain, "retag", {"stage": "live", "owner": "web"})
    s3.delete_object_tagging(Bucket=plain, Key="drop")
    pipe.tag(plain, "none", {"now": "tagged"})
    pipe.tag(vers, "doc", {"v": "1b"}, version_id=v1)
    pipe.tag(vers, "doc", {"v": "2b"})
    pipe.sync()
    second = pipe.backup()
    snap2 = {b: pipe.snapshot(b) for b in pipe.buckets}
    assert snap2[plain]["drop"][1] == {} and snap2[vers]["doc"][1] == {"v": "2b"}
    assert second.uploaded == 0, "a tagging change stored a blob again"
    assert second.copied == 3 and second.retagged >= 2, second

    doc = mf.load(pipe.store, second.backup_id or "").keys(vers)["doc"]
    assert (doc["version_id"], doc.get("tags")) == (v2, {"v": "2b"})
    assert [(o["version_id"], o.get("tags")) for o in doc.get("older", [])] == [(v1, {"v": "1b"})]
    assert pipe.tags(vers, "doc", v1) == {"v": "1b"}

    for r, snap in ((first, snap1), (second, snap2)):
        for b in pipe.buckets:
            got = pipe.restored(r.backup_id or "", b)
            assert sorted(got) == sorted(snap[b]), (r.backup_id, b)
            for k in snap[b]:
                assert got[k] == snap[b][k], f"{r.backup_id} {b}/{k}"
