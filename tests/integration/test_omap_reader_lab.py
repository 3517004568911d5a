"""``OmapReader.get`` in C (``_speedups.omap_get_keys``, the follower's bucket index read) against
its ctypes loop on the lab's librados: the same values for binary index keys (NUL, 0x80), UTF-8
and plain keys, empty values, keys an object lacks, more keys than one read op takes
(``BY_KEYS_CHUNK``) and an object that does not exist; errors as the ctypes loop raises them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import rados

from changelog.errors import PermanentError
from changelog.pipeline.backends.rados import BY_KEYS_CHUNK, OmapReader
from rgw_module.admin import AdminClient
from tests.lab import Lab

pytestmark = pytest.mark.ceph

INDEX_POOL = "default.rgw.buckets.index"


@pytest.fixture
def readers(ceph_lab: Lab) -> Iterator[tuple[OmapReader, OmapReader]]:
    fast = OmapReader(conffile=ceph_lab.conf, keyring=ceph_lab.keyring or None)
    slow = OmapReader(conffile=ceph_lab.conf, keyring=ceph_lab.keyring or None)
    slow._fast = None  # the ctypes loop, the reference
    try:
        if fast._fast is None:
            pytest.skip("changelog._speedups is not built (or RGW_CHANGELOG_PURE_PYTHON=1)")
        yield fast, slow
    finally:
        fast.close()
        slow.close()


def test_plain_and_utf8_keys_past_one_chunk_with_empty_values(ceph_lab: Lab, readers: Any) -> None:
    fast, slow = readers
    oid = f"omap-reader-{uuid.uuid4().hex[:10]}"
    n = BY_KEYS_CHUNK + 300
    keys = [f"k.{i:05d}" if i % 7 else f"k.{i:05d}.\u00fcn\u00ef \u65e5" for i in range(n)]
    values = [b"" if i % 11 == 0 else f"value {i}".encode() * (1 + i % 5) for i in range(n)]
    cluster = rados.Rados(conffile=ceph_lab.conf, conf={"keyring": ceph_lab.keyring} if ceph_lab.keyring else {})
    cluster.connect()
    try:
        io = cluster.open_ioctx(ceph_lab.pool)
        with rados.WriteOpCtx() as op:
            io.set_omap(op, tuple(keys), tuple(values))
            io.operate_write_op(op, oid)
        asked = [k.encode() for k in keys[::2]] + [b"absent.1", b"absent\x00\x80.2"] + [k.encode() for k in keys[1::2]]
        got = fast.get(ceph_lab.pool, oid, asked)
        assert got == slow.get(ceph_lab.pool, oid, asked)
        assert got == {k.encode(): v for k, v in zip(keys, values, strict=True)}
        assert fast.get(ceph_lab.pool, oid, []) == {} == slow.get(ceph_lab.pool, oid, [])
        assert fast.get(ceph_lab.pool, f"{oid}.missing", asked[:5]) == {}
        io.remove_object(oid)
        io.close()
    finally:
        cluster.shutdown()


def test_binary_bucket_index_keys_read_the_same_both_ways(ceph_lab: Lab, readers: Any, s3_client: Any) -> None:
    fast, slow = readers
    bucket = f"omr-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for i in range(20):
        s3_client.put_object(Bucket=bucket, Key=f"obj-{i % 6}-\u00e9", Body=b"x" * i)
    s3_client.delete_object(Bucket=bucket, Key="obj-1-\u00e9")
    admin = AdminClient(ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key)
    bucket_id = admin.bucket_stats(bucket).bucket_id
    admin.close()
    objs = index_objects(ceph_lab, f".dir.{bucket_id}")
    assert objs, "no bucket index object found for the bucket"
    seen_binary = False
    for oid in objs:
        entries = slow.page(INDEX_POOL, oid, limit=1000)
        keys = [k for k, _ in entries]
        seen_binary |= any(b"\x00" in k or k.startswith(b"\x80") for k in keys)
        asked = keys + [b"\x801000_nothing\x00i", b"\x00"]
        assert fast.get(INDEX_POOL, oid, asked) == slow.get(INDEX_POOL, oid, asked) == dict(entries)
    assert seen_binary, "the versioned bucket's index held no binary keys"


def test_a_missing_pool_is_the_same_one_line_error(readers: Any) -> None:
    fast, slow = readers
    messages = []
    for reader in (fast, slow):
        with pytest.raises(PermanentError) as info:
            reader.get("no-such-pool-omr", "x", [b"k"])
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def index_objects(lab: Lab, prefix: str) -> list[str]:
    cluster = rados.Rados(conffile=lab.conf, conf={"keyring": lab.keyring} if lab.keyring else {})
    cluster.connect()
    try:
        io = cluster.open_ioctx(INDEX_POOL)
        names = sorted(o.key for o in io.list_objects() if o.key.startswith(prefix))
        io.close()
        return names
    finally:
        cluster.shutdown()
