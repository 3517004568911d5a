"""One contract suite for every target (S3 through moto, local directory), plus the S3 error
translation at the edge and the URL factory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from changelog.errors import ConfigError, ObjectMissing, PermanentError, TransientError
from changelog.pipeline.targets import (
    DirectoryTarget,
    Part,
    S3Target,
    Target,
    UploadMissing,
    gc_uploads,
    make_target,
)

moto = pytest.importorskip("moto")

BUCKET = "changelog-target"  # not "logs": moto routes logs.* hosts to CloudWatch Logs


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    # moto needs credentials; never let a test reach a real account.
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 16)


@pytest.fixture(params=["dir", "s3"])
def target(request, tmp_path) -> Iterator[Target]:
    if request.param == "dir":
        yield DirectoryTarget(tmp_path / "target")
        return
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield S3Target(BUCKET, "some/prefix/", client=client, min_part_bytes=16)


def test_put_head_get_delete(target):
    assert target.head("a/b.jsonl") is None
    target.put("a/b.jsonl", b"hello\n", metadata={"cutoff": "2026-11-21T00:00:00.000000Z", "entries": "1"})
    assert target.head("a/b.jsonl") == {"cutoff": "2026-11-21T00:00:00.000000Z", "entries": "1"}
    assert target.get("a/b.jsonl") == b"hello\n"
    with target.open("a/b.jsonl") as f:
        assert f.read(3) == b"hel"
        assert f.read() == b"lo\n"
    target.put("a/b.jsonl", b"again", metadata={})
    assert target.get("a/b.jsonl") == b"again"
    assert target.head("a/b.jsonl") == {}
    target.delete("a/b.jsonl")
    target.delete("a/b.jsonl")  # missing is fine
    assert target.head("a/b.jsonl") is None
    with pytest.raises(ObjectMissing):
        target.get("a/b.jsonl")
    with pytest.raises(ObjectMissing):
        target.open("nothing/here")


def test_empty_and_large_objects(target):
    target.put("empty", b"")
    assert target.get("empty") == b""
    blob = os.urandom(3 * 1024 * 1024 + 17)
    target.put("big", blob)
    with target.open("big") as f:
        chunks = []
        while chunk := f.read(100_000):
            chunks.append(chunk)
    assert b"".join(chunks) == blob


def test_list_order_prefix_start_after_and_paging(target):
    names = ["a/1", "a/2", "a-b", "a/b/c", "a0", "b", "a/10", "ä/x", "a/b/d"]
    for n in names:
        target.put(n, n.encode())
    everything = [o.name for o in target.list()]
    assert everything == sorted(names, key=lambda n: n.encode())  # S3 order: UTF-8 bytes
    assert [o.name for o in target.list("a/")] == ["a/1", "a/10", "a/2", "a/b/c", "a/b/d"]
    assert [o.name for o in target.list("a/", start_after="a/10")] == ["a/2", "a/b/c", "a/b/d"]
    assert [o.name for o in target.list("", start_after="a/b/c")] == ["a/b/d", "a0", "b", "ä/x"]
    assert [o.name for o in target.list("", start_after="a-b", page=2)] == everything[1:]
    assert [o.name for o in target.list("zzz")] == []
    sizes = {o.name: o.size for o in target.list()}
    assert sizes["a/b/c"] == len(b"a/b/c")


def test_multipart_roundtrip(target):
    meta = {"cutoff": "x"}
    uid = target.create_multipart("m/obj", metadata=meta)
    assert [(u.name, u.upload_id) for u in target.list_uploads("m/")] == [("m/obj", uid)]
    assert target.head("m/obj") is None  # nothing visible before complete
    p1 = target.upload_part("m/obj", uid, 1, b"a" * 32)
    p1 = target.upload_part("m/obj", uid, 1, b"b" * 32)  # a retried part replaces the first
    p2 = target.upload_part("m/obj", uid, 2, b"tail")
    assert isinstance(p1, Part) and p1.size == 32
    target.complete_multipart("m/obj", uid, [p1, p2])
    assert target.get("m/obj") == b"b" * 32 + b"tail"
    assert target.head("m/obj") == meta
    assert list(target.list_uploads("m/")) == []
    if isinstance(target, DirectoryTarget):
        # (moto raises a bare KeyError here; the S3 mapping of NoSuchUpload is tested below.
        # Completing the same upload again may succeed on S3: it stays idempotent a while.)
        with pytest.raises(UploadMissing):
            target.complete_multipart("m/obj", "no-such-upload", [p1, p2])


def test_multipart_abort_and_gc(target):
    uid = target.create_multipart("g/one")
    target.upload_part("g/one", uid, 1, b"x" * 20)
    target.abort_multipart("g/one", uid)
    target.abort_multipart("g/one", uid)  # idempotent
    assert list(target.list_uploads("g/")) == []
    old = target.create_multipart("g/old")
    other = target.create_multipart("elsewhere/x")
    if isinstance(target, DirectoryTarget):  # moto reports every upload as initiated in 2010
        assert gc_uploads(target, "g/", older_than=3600) == 0
    assert gc_uploads(target, "g/", older_than=3600, now=time.time() + 7200) == 1
    assert [u.upload_id for u in target.list_uploads("")] == [other]
    assert target.head("g/old") is None
    target.abort_multipart("elsewhere/x", other)
    assert old


# --- directory specifics ---------------------------------------------------------------------


def test_directory_is_atomic_and_hides_bookkeeping(tmp_path):
    t = DirectoryTarget(tmp_path / "d")
    t.put("x/y", b"data", metadata={"k": "v"})
    uid = t.create_multipart("x/z")
    t.upload_part("x/z", uid, 1, b"part")
    assert [o.name for o in t.list()] == ["x/y"]  # no .meta/.tmp/.uploads, no unfinished upload
    assert (tmp_path / "d" / "x" / "y").read_bytes() == b"data"
    assert not any((tmp_path / "d" / ".tmp").iterdir())
    with pytest.raises(ValueError):
        t.put("../escape", b"")
    with pytest.raises(ValueError):
        t.put(".meta/x", b"")
    with pytest.raises(PermanentError):
        t.complete_multipart("x/z", uid, [Part(1, "", 999)])


def test_directory_name_collisions_are_permanent(tmp_path):
    # S3 holds "x" and "x/y" side by side; a directory cannot, and retrying will not help.
    t = DirectoryTarget(tmp_path / "d")
    t.put("x", b"file")
    with pytest.raises(PermanentError):
        t.put("x/y", b"")
    t.put("a/b", b"")
    with pytest.raises(PermanentError):
        t.put("a", b"")


# --- S3 client factory -------------------------------------------------------------------------


def _s3(target: Target) -> S3Target:
    assert isinstance(target, S3Target)
    return target


def test_every_s3_client_keeps_checksums_to_what_radosgw_accepts():
    """The three S3 users get their client from ``s3client.make_s3_client``, each with its own
    timeouts, retries and pool, and all without botocore's default CRC checksums."""
    from changelog.consumers.backup.source import make_client
    from rgw_module.admin import AdminClient

    admin = AdminClient("http://127.0.0.1:1", "ak", "sk", max_connections=7)
    clients = {
        "target": (_s3(make_target("s3://b", endpoint="http://127.0.0.1:1", region="default"))._s3,
                   ("auto", 4, 10, 60, 10)),
        "source": (make_client(endpoint="http://127.0.0.1:1", region="default"), ("path", 6, 10, 120, 32)),
        "admin": (admin._s3(), ("path", 4, 5, 60, 7)),
    }
    for name, (client, (style, attempts, connect, read, pool)) in clients.items():
        cfg: Any = client.meta.config  # botocore-stubs type few of Config's attributes
        assert cfg.request_checksum_calculation == "when_required", name
        assert cfg.response_checksum_validation == "when_required", name
        got = (cfg.s3["addressing_style"], cfg.retries["total_max_attempts"], cfg.connect_timeout,
               cfg.read_timeout, cfg.max_pool_connections)
        assert got == (style, attempts, connect, read, pool), name
        client.close()
    admin.close()


# --- S3 error translation ----------------------------------------------------------------------


def stubbed() -> tuple[S3Target, Stubber]:
    client = boto3.client("s3", region_name="us-east-1")
    stub = Stubber(client)
    stub.activate()
    return S3Target("b", "p", client=client), stub


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (500, "InternalError", TransientError),
        (503, "SlowDown", TransientError),
        (503, "ServiceUnavailable", TransientError),
        (429, "TooManyRequests", TransientError),
        (400, "RequestTimeout", TransientError),
        (403, "AccessDenied", PermanentError),
        (403, "InvalidAccessKeyId", PermanentError),
        (403, "SignatureDoesNotMatch", PermanentError),
        (404, "NoSuchBucket", PermanentError),
        (400, "EntityTooSmall", PermanentError),
        (404, "NoSuchKey", ObjectMissing),
        (404, "NoSuchUpload", UploadMissing),
    ],
)
def test_s3_errors_translated_by_status(status, code, error):
    t, stub = stubbed()
    stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with pytest.raises(error) as info:
        t.put("x", b"")
    assert info.value.__cause__ is not None  # raise ... from ex
    assert code in str(info.value)


@pytest.mark.parametrize(
    ("status", "code", "error", "text"),
    [
        (404, "NoSuchBucket", "NotFound", "HTTP 404 NoSuchBucket"),
        (503, "SlowDown", "TransientError", "HTTP 503 SlowDown"),
        (403, "AccessDenied", "AccessDenied", "needs a system user"),  # a PermanentError
        (400, "InvalidArgument", "PermanentError", "HTTP 400 InvalidArgument"),
    ],
)
def test_admin_s3_errors_read_through_refusal(status, code, error, text):
    """The follower's S3 reads (``AdminClient._s3_call``) read botocore's answer with
    ``s3client.refusal``: its own ``NotFound`` for a 404, one line naming the endpoint."""
    from rgw_module.admin import AdminClient

    admin = AdminClient("http://127.0.0.1:1", "ak", "sk")
    stub = Stubber(admin._s3())
    stub.activate()
    stub.add_client_error("list_objects_v2", service_error_code=code, http_status_code=status)
    with pytest.raises(Exception) as info:
        admin.list_objects("b", versions=False)
    assert type(info.value).__name__ == error and text in str(info.value)
    assert "http://127.0.0.1:1" in str(info.value) and info.value.__cause__ is not None
    admin.close()


def test_s3_head_404_is_none_and_other_errors_raise():
    t, stub = stubbed()
    stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
    stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
    assert t.head("x") is None
    with pytest.raises(PermanentError):
        t.head("x")


def test_s3_multipart_call_sequence_and_prefix():
    t, stub = stubbed()
    stub.add_response("create_multipart_upload", {"UploadId": "u1"},
                      {"Bucket": "b", "Key": "p/n", "Metadata": {"a": "1"}})
    stub.add_response("upload_part", {"ETag": '"e1"'},
                      {"Bucket": "b", "Key": "p/n", "UploadId": "u1", "PartNumber": 1, "Body": b"xy"})
    # radosgw 16.2.15 answers CompleteMultipartUpload with an empty ETag: must not matter.
    stub.add_response("complete_multipart_upload", {"ETag": ""},
                      {"Bucket": "b", "Key": "p/n", "UploadId": "u1",
                       "MultipartUpload": {"Parts": [{"PartNumber": 1, "ETag": '"e1"'}]}})
    uid = t.create_multipart("n", metadata={"a": "1"})
    part = t.upload_part("n", uid, 1, b"xy")
    t.complete_multipart("n", uid, [part])
    stub.assert_no_pending_responses()


def test_s3_connection_errors_are_transient():
    t = make_target("s3://b", endpoint="http://127.0.0.1:9", access_key="a", secret_key="s", region="us-east-1",
                    max_attempts=1, connect_timeout=0.5)
    with pytest.raises(TransientError) as info:
        t.put("x", b"")
    assert info.value.__cause__ is not None


def test_s3_repr_has_no_secrets():
    t = make_target("s3://b/p/", endpoint="http://h:1", access_key="AKIDSECRET", secret_key="VERYSECRET")
    assert "SECRET" not in repr(t)


# --- factory ---------------------------------------------------------------------------------


def test_make_target_urls(tmp_path):
    d = make_target(f"file://{tmp_path}/logs/")
    assert isinstance(d, DirectoryTarget) and d.root == tmp_path / "logs"
    s = make_target("s3://bucket/some/prefix/?addressing_style=path&max_attempts=2",
                    endpoint="http://127.0.0.1:1", access_key="a", secret_key="b", region="r", compression="gzip")
    assert isinstance(s, S3Target) and s.url == "s3://bucket/some/prefix/" and s.prefix == "some/prefix/"
    bare = make_target("s3://bucket", region="r")
    assert isinstance(bare, S3Target) and bare.prefix == ""
    for bad in ("http://x/", "s3:///nobucket/", "s3://b/?bogus=1", "file://"):
        with pytest.raises(ConfigError):
            make_target(bad)
