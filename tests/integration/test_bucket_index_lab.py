"""Object facts from the bucket index on the lab (issue 14): a follower with the default
``object_info`` ("index") gives every write record the size, etag, mtime and storage class that
S3 HEAD answers for it, and null ones only to a write already superseded when the index was
read: by a later write of the same key in the same round, or by an overwrite that lands between
the bilog read and the index read (the race, injected in the omap read).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from changelog.config import SourceConfig
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.mutation import Mutation, Op
from rgw_module.admin import AdminClient
from rgw_module.bucket_index import BucketIndexReader, LazyOmap, OmapSource
from rgw_module.follower import Follower
from tests.lab import Lab, tear_down

pytestmark = pytest.mark.ceph

PART = 5 * 1024 * 1024
UNICODE_KEY = "dir/\u00fcn\u00ef c\u00f8d\u00e9 \u65e5\u672c x.txt"
INDEX_POOL = "default.rgw.buckets.index"


class Env:
    def __init__(self, lab: Lab, s3: Any, index: ChangeIndex, admin: AdminClient) -> None:
        self.lab = lab
        self.s3 = s3
        self.index = index
        self.admin = admin
        self.followers: list[Follower] = []
        self.readers: list[BucketIndexReader] = []
        # The race injection: called once before the first omap read that asks for its key
        # (the index entry's name), whichever thread reads it: the follower fetches the next
        # rounds' pages and their index entries in the background, even after a caught-up run.
        self.before_read: dict[bytes, Any] = {}
        self._injecting = threading.Lock()

    def reader(self) -> BucketIndexReader:
        def open_omap() -> OmapSource:
            from changelog.pipeline.backends.rados import OmapReader

            return OmapReader(conffile=self.lab.conf, keyring=self.lab.keyring or None)

        lazy = LazyOmap(open_omap)

        def read(pool: str, oid: str, keys: Sequence[bytes]) -> Mapping[bytes, bytes]:
            with self._injecting:  # a concurrent read of the key waits for the injection
                for key in keys:
                    hook = self.before_read.pop(key, None)
                    if hook is not None:
                        hook()
            return lazy(pool, oid, keys)

        reader = BucketIndexReader(read, INDEX_POOL)
        reader.close = lazy.close  # type: ignore[method-assign]  # the wrapper has no close
        return reader

    def follower(self, buckets: list[str], reader: BucketIndexReader | None) -> Follower:
        # Default object_info ("index"); only the timing is a test's.
        config = SourceConfig.unchecked(buckets=buckets, poll_interval=0.2, trim_datalog=False, lease_ttl=10.0)
        assert config.object_info == "index"
        f = Follower(self.index, self.admin, config, bucket_index=reader)
        if reader is not None:
            self.readers.append(reader)
        assert f.acquire()
        self.followers.append(f)
        return f

    def bucket(self, versioning: str | None = None) -> str:
        name = f"bi-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        if versioning:
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning})
        return name


@pytest.fixture
def env(ceph_lab: Lab, s3_client: Any) -> Iterator[Env]:
    from changelog.pipeline.backends.rados import RadosStore

    ns = f"test-bi-{uuid.uuid4().hex[:10]}"
    store = RadosStore(conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=ns, keyring=ceph_lab.keyring or None)
    admin = AdminClient(ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key)
    e = Env(ceph_lab, s3_client, ChangeIndex(store, shards=4), admin)
    try:
        yield e
    finally:
        tear_down([*e.followers, *e.readers], store, admin)


def writes(index: ChangeIndex) -> list[Mutation]:
    out = [e.mutation for n in range(index.shards) for e in index.scan(n)]
    return sorted((m for m in out if m.op is Op.WRITE and not m.baseline), key=lambda m: (m.bucket, m.key, m.seq))


def head(s3: Any, m: Mutation) -> dict[str, Any]:
    kw: dict[str, Any] = {"Bucket": m.bucket, "Key": m.key}
    if m.version_id is not None:
        kw["VersionId"] = m.version_id
    return dict(s3.head_object(**kw))


def multipart(s3: Any, bucket: str, key: str) -> None:
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for n, body in enumerate([b"a" * PART, b"tail"], start=1):
        p = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=body)
        parts.append({"PartNumber": n, "ETag": p["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts})


def assert_facts_are_head(s3: Any, m: Mutation) -> None:
    h = head(s3, m)
    got = (m.size, m.etag, m.storage_class, m.obj_mtime_ns is not None and m.obj_mtime_ns // 1_000_000_000)
    # HEAD names no class for the default one; a record calls it STANDARD, as listings do.
    want = (h["ContentLength"], h["ETag"].strip('"'), h.get("StorageClass", "STANDARD"), int(h["LastModified"].timestamp()))
    assert got == want, f"{m.bucket}/{m.key} {m.version_id}: {got} != HEAD {want}"


def test_index_facts_equal_head_and_superseded_writes_stay_null(env: Env) -> None:
    s3 = env.s3
    plain, versioned, suspended = env.bucket(), env.bucket("Enabled"), env.bucket("Enabled")
    f = env.follower([plain, versioned, suspended], env.reader())
    f.run_until_caught_up(timeout=60)

    s3.put_object(Bucket=plain, Key="a", Body=b"first")
    s3.put_object(Bucket=plain, Key="a", Body=b"second, longer")  # supersedes the first
    s3.copy_object(Bucket=plain, Key="c", CopySource={"Bucket": plain, "Key": "a"})
    multipart(s3, plain, "mp")
    s3.put_object(Bucket=plain, Key="t", Body=b"tagged later")
    s3.put_object_tagging(Bucket=plain, Key="t", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    s3.put_object(Bucket=plain, Key="_under", Body=b"u")
    s3.put_object(Bucket=plain, Key=UNICODE_KEY, Body=b"unicode")
    # Stored as given: "STANDARD" (HEAD says it), where an implicit class is "" (HEAD: none);
    # the record says STANDARD for both.
    s3.put_object(Bucket=plain, Key="std", Body=b"explicit class", StorageClass="STANDARD")
    v1 = s3.put_object(Bucket=versioned, Key="k", Body=b"v1")["VersionId"]
    s3.put_object(Bucket=versioned, Key="k", Body=b"version two")
    multipart(s3, versioned, "vmp")
    s3.put_object(Bucket=suspended, Key="k", Body=b"a version")
    s3.put_bucket_versioning(Bucket=suspended, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=suspended, Key="k", Body=b"null one")
    s3.put_object(Bucket=suspended, Key="k", Body=b"null two, longer")  # supersedes "null one"
    f.run_until_caught_up(timeout=60)

    got = writes(env.index)
    last: dict[tuple[str, str, str | None], Mutation] = {}
    for m in got:
        last[(m.bucket, m.key, m.version_id)] = m
    for m in got:
        if last[(m.bucket, m.key, m.version_id)] is m:
            assert_facts_are_head(s3, m)
        else:
            assert (m.size, m.etag, m.obj_mtime_ns, m.storage_class) == (None, None, None, None), m
    superseded = sorted((m.bucket, m.key) for m in got if m.size is None)
    assert superseded == sorted([(plain, "a"), (plain, "t"), (suspended, "k")])
    assert any(m.version_id == v1 and m.size == 2 for m in got)
    assert {m.storage_class for m in got if m.size is not None} == {"STANDARD"}
    assert f._ctx.stats.object_facts["superseded"] == 3
    assert f._ctx.stats.object_facts["index"] == len(got) - 3


def test_overwrite_between_the_log_read_and_the_index_read_leaves_the_write_null(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b], env.reader())
    f.run_until_caught_up(timeout=60)

    # The race: the page holding the first write is read, then the key is overwritten, then
    # the index is read. Armed before the write: a background fetch may read the page at once.
    env.before_read[b"race"] = lambda: s3.put_object(Bucket=b, Key="race", Body=b"the overwrite, longer")
    s3.put_object(Bucket=b, Key="race", Body=b"first write")
    f.run_until_caught_up(timeout=60)
    f.run_until_caught_up(timeout=60)

    first, second = writes(env.index)
    assert (first.size, first.etag) == (None, None)
    assert_facts_are_head(s3, second)
    assert second.size == len(b"the overwrite, longer")


def test_unreadable_index_pool_falls_back_to_head_with_one_warning(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    s3 = env.s3
    b = env.bucket()

    def open_omap() -> OmapSource:
        from changelog.pipeline.backends.rados import OmapReader

        return OmapReader(conffile=env.lab.conf, keyring=env.lab.keyring or None)

    f = env.follower([b], BucketIndexReader(LazyOmap(open_omap), "no-such-index-pool"))
    f.run_until_caught_up(timeout=60)
    caplog.set_level("WARNING", logger="rgw_module.bilog_reader")
    for n in range(3):
        s3.put_object(Bucket=b, Key=f"k{n}", Body=b"x" * (n + 1))
        f.run_until_caught_up(timeout=60)
    got = writes(env.index)
    assert [m.size for m in got] == [1, 2, 3]  # from HEAD
    warnings = [r.getMessage() for r in caplog.records if "bucket index" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-index-pool" in warnings[0], warnings
    assert f._ctx.stats.object_facts["head_fallback"] == 3


def test_writes_after_a_reshard_get_their_facts_from_the_new_index_objects(env: Env) -> None:
    """Reef and later reshard in place (index generation 1: ``.dir.<id>.1.<shard>``); Pacific
    makes a new instance (``.dir.<new id>.<shard>``, taken with a baseline)."""
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b], env.reader())
    f.run_until_caught_up(timeout=60)
    s3.put_object(Bucket=b, Key="before", Body=b"before the reshard")
    f.run_until_caught_up(timeout=60)
    env.lab.radosgw_admin("bucket", "reshard", "--bucket", b, "--num-shards", "3", "--yes-i-really-mean-it")
    f.run_until_caught_up(timeout=60)  # Pacific: the new instance's baseline
    for n in range(6):
        s3.put_object(Bucket=b, Key=f"after-{n}", Body=b"y" * (n + 1))
    f.run_until_caught_up(timeout=60)
    got = [m for m in writes(env.index) if m.key.startswith("after-")]
    assert len(got) == 6
    assert {m.source for m in got} != {m.source for m in writes(env.index) if m.key == "before"}
    for m in got:
        assert_facts_are_head(s3, m)
    assert f._ctx.stats.object_facts["superseded"] == 0
