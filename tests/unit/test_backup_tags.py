"""Object tags in backups: a backup keeps each version's tags (S3 object tagging) and a restore
writes them back. The source in moto, change logs written by hand (``test_backup_support``) in
the shape radosgw's bucket index log gives them: a PutObjectTagging or DeleteObjectTagging is a
``write`` of the object (of the version it tags, on a versioned bucket) with the same ETag.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.restore import restore
from changelog.consumers.backup.runner import BackupRunner, RunResult
from changelog.consumers.backup.source import Source
from changelog.consumers.backup.store import BackupStore, decompress
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import CountingTarget, Zone, bucket_state

MiB = 1024 * 1024
# Characters a tagging header must carry through its URL encoding.
ODD_TAGS = {"a b": "c+d", "path/x": "k=1:2@h", "empty": ""}


class TagCountingSource(Source):
    """A ``Source`` that counts its GETs and GetObjectTaggings."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.calls: Counter[str] = Counter()
        self._mu = threading.Lock()

    def get(self, bucket: str, key: str, **kw: Any) -> Any:
        with self._mu:
            self.calls["get"] += 1
        return super().get(bucket, key, **kw)

    def tags(self, bucket: str, key: str, **kw: Any) -> dict[str, str]:
        with self._mu:
            self.calls["tags"] += 1
        return super().tags(bucket, key, **kw)


@pytest.fixture
def dest(tmp_path: Path) -> CountingTarget:
    return CountingTarget(DirectoryTarget(tmp_path / "dest", fsync=False))


@pytest.fixture
def store(dest: CountingTarget) -> BackupStore:
    return BackupStore(dest)


def run(store: BackupStore, logs: DirectoryTarget, source: Source) -> RunResult:
    r = BackupRunner(store, logs, source, progress=False).run()
    assert r.backup_id is not None
    return r


def tags_of(s3: Any, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
    kw = {"VersionId": version_id} if version_id else {}
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key, **kw)["TagSet"]}


def put_tags(s3: Any, bucket: str, key: str, tags: dict[str, str], version_id: str | None = None) -> None:
    kw = {"VersionId": version_id} if version_id else {}
    tagset = [{"Key": k, "Value": v} for k, v in tags.items()]
    s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tagset}, **kw)


def tagging_record(zone: Zone, bucket: str, key: str, version_id: str | None = None) -> None:
    """The record of a tagging change as the follower writes it: a write, the ETag unchanged."""
    kw = {"VersionId": version_id} if version_id else {}
    head = zone.s3.head_object(Bucket=bucket, Key=key, **kw)
    zone.pending.append(
        zone.record(
            bucket,
            key,
            "write",
            version_id=version_id,
            size=head["ContentLength"],
            etag=head["ETag"].strip('"'),
        )
    )


def restored_tags(
    store: BackupStore, s3: Any, backup_id: str, bucket: str, to: str, **kw: Any
) -> dict[str, dict[str, str]]:
    res = restore(store, Source(s3), bucket=bucket, to_bucket=to, backup_id=backup_id, progress=False, **kw)
    assert not res.failed, res.failed
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=to).get("Contents", [])]
    return {k: tags_of(s3, to, k) for k in keys}


def test_tags_round_trip_small_and_multipart(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """Tags (odd characters included) come back with a restore, for an object written whole and
    one written in parts; an untagged object costs no GetObjectTagging (its GET said so)."""
    zone.create_bucket("docs")
    zone.put("docs", "small", b"small body", content_type="text/plain")
    put_tags(aws, "docs", "small", ODD_TAGS)
    zone.put("docs", "big", b"x" * (6 * MiB))
    put_tags(aws, "docs", "big", {"size": "big"})
    zone.put("docs", "plain", b"no tags")
    zone.commit()
    src = TagCountingSource(aws)
    r = run(store, logs, src)
    assert src.calls == {"get": 3, "tags": 2}
    doc = mf.load(store, r.backup_id or "").keys("docs")
    assert doc["small"].get("tags") == ODD_TAGS and "tags" not in doc["plain"]
    got = restored_tags(store, aws, r.backup_id or "", "docs", "docs-restored", part_bytes=5 * MiB)
    assert got == {"small": ODD_TAGS, "big": {"size": "big"}, "plain": {}}
    assert bucket_state(aws, "docs-restored") == bucket_state(aws, "docs")


def test_tags_only_change_is_backed_up_without_storing_the_blob_again(
    store: BackupStore, dest: CountingTarget, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """PutObjectTagging on an existing object (same ETag): the next backup holds the new tags, the
    previous one still the old; the content is read again but its blob is not stored again."""
    zone.create_bucket("site")
    zone.put("site", "page", b"<p>page</p>")
    put_tags(aws, "site", "page", {"stage": "draft"})
    zone.commit()
    first = run(store, logs, Source(aws))
    blobs_before = dest.blob_puts()
    put_tags(aws, "site", "page", {"stage": "live", "owner": "web"})
    tagging_record(zone, "site", "page")
    zone.commit()
    second = run(store, logs, Source(aws))
    assert second.copied == 1 and second.uploaded == 0 and second.deduplicated == 1
    assert dest.blob_puts() == blobs_before
    assert restored_tags(store, aws, second.backup_id or "", "site", "site-2") == {
        "page": {"stage": "live", "owner": "web"}
    }
    assert restored_tags(store, aws, first.backup_id or "", "site", "site-1") == {"page": {"stage": "draft"}}


def test_tags_removed_restore_untagged(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """DeleteObjectTagging: the object restores without tags (the old ones were kept before)."""
    zone.create_bucket("data")
    zone.put("data", "k", b"content")
    put_tags(aws, "data", "k", {"keep": "no"})
    zone.commit()
    run(store, logs, Source(aws))
    aws.delete_object_tagging(Bucket="data", Key="k")
    tagging_record(zone, "data", "k")
    zone.commit()
    src = TagCountingSource(aws)
    r = run(store, logs, src)
    assert src.calls == {"get": 1}  # the GET said: no tags
    assert "tags" not in mf.load(store, r.backup_id or "").keys("data")["k"]
    assert restored_tags(store, aws, r.backup_id or "", "data", "data-restored") == {"k": {}}


def test_versioned_tagging_of_an_older_version_keeps_the_current_one(
    store: BackupStore, dest: CountingTarget, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """radosgw logs PutObjectTagging with a VersionId as a write of that version. The backup reads
    only its tags (no GET, no blob), and it stays an older version: moving it first restored the
    old content as the current object. Tagging the current version (no VersionId) likewise."""
    zone.create_bucket("vers", versioned=True)
    v1 = zone.put("vers", "k", b"one")["version_id"]
    zone.commit()
    run(store, logs, Source(aws))  # v1's content is held from here on
    v2 = zone.put("vers", "k", b"two")["version_id"]
    zone.commit()
    run(store, logs, Source(aws))
    blobs_before = dest.blob_puts()
    put_tags(aws, "vers", "k", {"old": "1"}, version_id=v1)
    tagging_record(zone, "vers", "k", version_id=v1)
    put_tags(aws, "vers", "k", {"cur": "2"})
    tagging_record(zone, "vers", "k", version_id=v2)
    zone.commit()
    src = TagCountingSource(aws)
    r = run(store, logs, src)
    assert src.calls == {"tags": 2} and r.retagged == 2 and r.copied == 0
    assert dest.blob_puts() == blobs_before
    doc = mf.load(store, r.backup_id or "").keys("vers")["k"]
    assert (doc["version_id"], doc.get("tags")) == (v2, {"cur": "2"})
    assert [(o["version_id"], o.get("tags")) for o in doc.get("older", [])] == [(v1, {"old": "1"})]
    got = restored_tags(store, aws, r.backup_id or "", "vers", "vers-restored")
    assert got == {"k": {"cur": "2"}}
    assert aws.get_object(Bucket="vers-restored", Key="k")["Body"].read() == b"two"


def test_a_manifest_without_tags_still_restores(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """A manifest written before tags were kept (no ``tags`` anywhere) restores, untagged; the
    next run on top of it keeps working."""
    zone.create_bucket("old")
    zone.put("old", "a", b"alpha", metadata={"m": "1"})
    put_tags(aws, "old", "a", {"t": "1"})
    zone.put("old", "b", b"beta")
    zone.commit()
    r = run(store, logs, Source(aws))
    name = mf.manifest_name(r.backup_id or "")
    raw = decompress(store.target.get(name))
    assert b'"tags"' in raw
    doc = mf.load(store, r.backup_id or "").doc
    for key_doc in doc["buckets"]["old"]["objects"].values():
        key_doc.pop("tags", None)
    mf.write(store, doc)
    assert b'"tags"' not in decompress(store.target.get(name))
    assert restored_tags(store, aws, r.backup_id or "", "old", "old-restored") == {"a": {}, "b": {}}
    assert bucket_state(aws, "old-restored") == bucket_state(aws, "old")
    zone.put("old", "c", b"gamma")
    put_tags(aws, "old", "c", {"t": "3"})
    zone.commit()
    nxt = run(store, logs, Source(aws))
    assert restored_tags(store, aws, nxt.backup_id or "", "old", "old-next") == {
        "a": {},
        "b": {},
        "c": {"t": "3"},
    }
