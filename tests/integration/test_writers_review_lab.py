"""Writers review on the real lab: mutations made by paths other than a plain S3 PUT, DELETE or
multipart upload (the Swift API, Object Lock, ACL changes, copies onto themselves, browser-form
POST uploads, radosgw's AppendObject, `radosgw-admin object`), each followed by `rgw-changelog
serve`. Every such mutation must become exactly one committed record with the right op, version
id, size and etag (README's record table: size and etag as ListObjects shows them); a refused
request, or one that changes nothing, none.

Where a test reads a write's size and etag, it waits for the watermark after that write, so the
follower reads the index entry before a later change supersedes it (a superseded write's record
has null facts by design).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import socket
import tarfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.integration.test_newuser_review_lab import Serve, by_object, check_schema, now_us, running_serve
from tests.lab import S3_REGION, Lab, add_storage_class, s3_client

# radosgw's writers (what each logs to the bucket index) are under test: every release.
pytestmark = [pytest.mark.ceph]

SWIFT_SUBUSER = "swift"
SWIFT_SECRET = "WRITERSSWIFTSECRET"


@pytest.fixture(scope="module")
def serve(ceph_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with running_serve(ceph_lab, tmp_path_factory.mktemp("writers-serve"), only_new=True) as s:
        yield s


def settle(serve: Serve) -> None:
    """Until every mutation made so far is in a committed log object."""
    serve.wait_complete(now_us())


def new_bucket(s3: Any, name: str, **kwargs: Any) -> str:
    bucket = f"wr-{name}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, **kwargs)
    return bucket


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def facts(rec: dict[str, Any]) -> tuple[Any, Any]:
    return rec["size"], rec["etag"]


def listed(s3: Any, bucket: str) -> dict[str, tuple[int, str]]:
    """key -> (Size, ETag) as ListObjectsV2 answers them."""
    out: dict[str, tuple[int, str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = (int(o["Size"]), str(o["ETag"]).strip('"'))
    return out


def object_records(serve: Serve, bucket: str) -> dict[str, list[dict[str, Any]]]:
    records = serve.records(bucket)
    check_schema(records)
    assert [r["op"] for r in records if r["key"] is None] == ["bucket_create"]
    return by_object(records)


def ops(objects: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {k: [r["op"] for r in v] for k, v in objects.items()}


def error_code(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


# -- compression ---------------------------------------------------------------------------

ZIPPED = "ZIPPED"  # a storage class of the default placement whose data radosgw compresses
# zstd: the lab's Tentacle root cannot load radosgw's zlib plugin (it links libqatzip, not there),
# and radosgw then stores the object uncompressed.
COMPRESSION = "zstd"
DATA_POOL = "default.rgw.buckets.data"  # the default placement's own


@pytest.fixture(scope="module")
def zipped(ceph_lab: Lab) -> str:
    """The ``ZIPPED`` storage class (zstd), added to the lab's default placement once
    (``add_storage_class``: radosgw restarted, as for tests/integration/test_lifecycle_lab.py's
    COLD class)."""
    reason = add_storage_class(ceph_lab, ZIPPED, data_pool=DATA_POOL, compression=COMPRESSION)
    if reason is not None:
        pytest.skip(reason)
    return ZIPPED


def index_sizes(lab: Lab, bucket: str, key: str) -> tuple[int, int]:
    """(size, accounted_size) of ``key``'s bucket index entry, as `radosgw-admin bi list` shows it."""
    for e in json.loads(lab.radosgw_admin("bi", "list", f"--bucket={bucket}", f"--object={key}")):
        if e.get("type") == "plain" and e["entry"].get("name") == key:
            meta = e["entry"]["meta"]
            return int(meta["size"]), int(meta["accounted_size"])
    raise AssertionError(f"no index entry of {key} in {bucket}")


ZIPPED_BODY = b"a" * 100_000


def test_a_compressed_object_is_listed_with_its_length_and_indexed_smaller(
    ceph_lab: Lab, zipped: str
) -> None:
    """radosgw's facts behind the next test: the entry's ``size`` is what is stored, its
    ``accounted_size`` the length S3 lists (the record's ``size``)."""
    s3: Any = s3_client(ceph_lab)  # StorageClass: radosgw's own, not an AWS one
    bucket = new_bucket(s3, "zip-facts")
    s3.put_object(Bucket=bucket, Key="z", Body=ZIPPED_BODY, StorageClass=zipped)
    assert listed(s3, bucket)["z"] == (len(ZIPPED_BODY), md5(ZIPPED_BODY))
    assert s3.head_object(Bucket=bucket, Key="z")["ContentLength"] == len(ZIPPED_BODY)
    stored, accounted = index_sizes(ceph_lab, bucket, "z")
    assert accounted == len(ZIPPED_BODY) and stored < accounted // 10, (stored, accounted)


def test_a_compressed_objects_record_has_its_length(serve: Serve, ceph_lab: Lab, zipped: str) -> None:
    s3: Any = s3_client(ceph_lab)  # StorageClass: radosgw's own, not an AWS one
    bucket = new_bucket(s3, "zip")
    s3.put_object(Bucket=bucket, Key="z", Body=ZIPPED_BODY, StorageClass=zipped)
    settle(serve)
    (rec,) = object_records(serve, bucket)["z"]
    assert (rec["op"], rec["storage_class"]) == ("write", zipped)
    assert facts(rec) == (len(ZIPPED_BODY), md5(ZIPPED_BODY)) == listed(s3, bucket)["z"]


# -- Swift -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Swift:
    """The lab user's Swift subuser: its storage URL and token."""

    url: str
    token: str
    http: urllib3.PoolManager

    def __call__(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> urllib3.BaseHTTPResponse:
        return self.http.request(
            method,
            f"{self.url}/{path}",
            body=body,
            headers={"X-Auth-Token": self.token, **(headers or {})},
            retries=False,
        )


@pytest.fixture(scope="module")
def swift(ceph_lab: Lab) -> Swift:
    user = json.loads(ceph_lab.radosgw_admin("user", "info", f"--access-key={ceph_lab.access_key}"))[
        "user_id"
    ]
    subuser = f"{user}:{SWIFT_SUBUSER}"
    with contextlib.suppress(RuntimeError):  # already there on a reused lab
        ceph_lab.radosgw_admin("subuser", "create", f"--uid={user}", f"--subuser={subuser}", "--access=full")
    ceph_lab.radosgw_admin(
        "key", "create", f"--subuser={subuser}", "--key-type=swift", f"--secret={SWIFT_SECRET}"
    )
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=60))
    resp = http.request(
        "GET",
        f"{ceph_lab.rgw_endpoint}/auth/v1.0",
        headers={"X-Auth-User": subuser, "X-Auth-Key": SWIFT_SECRET},
    )
    assert resp.status in (200, 204), (resp.status, resp.data[:300])
    return Swift(str(resp.headers["X-Storage-Url"]), str(resp.headers["X-Auth-Token"]), http)


def test_swift_writes_copies_and_deletes_are_one_record_each(
    serve: Serve, ceph_lab: Lab, swift: Swift
) -> None:
    s3 = s3_client(ceph_lab)
    c = f"wr-swift-{uuid.uuid4().hex[:8]}"
    assert swift("PUT", c).status == 201
    assert swift("PUT", f"{c}/o1", b"swift one").status == 201
    settle(serve)
    assert swift("POST", f"{c}/o1", headers={"X-Object-Meta-Color": "blue"}).status == 202
    assert swift("COPY", f"{c}/o1", headers={"Destination": f"{c}/o2"}).status == 201
    assert swift("PUT", f"{c}/o3", headers={"X-Copy-From": f"{c}/o1"}).status == 201
    settle(serve)
    assert swift("DELETE", f"{c}/o2").status == 204
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("t/1", b"one"), ("t/2", b"two two")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    resp = swift("PUT", f"{c}?extract-archive=tar", archive.getvalue(), {"Accept": "application/json"})
    assert resp.status == 200 and json.loads(resp.data)["Number Files Created"] == 2, resp.data[:300]
    for k in ("b1", "b2"):
        assert swift("PUT", f"{c}/{k}", k.encode()).status == 201
    resp = swift(
        "POST",
        "?bulk-delete",
        f"{c}/b1\n{c}/b2\n{c}/never-was\n".encode(),
        {"Content-Type": "text/plain", "Accept": "application/json"},
    )
    assert resp.status == 200, resp.data[:300]
    answer = json.loads(resp.data)
    assert (answer["Number Deleted"], answer["Number Not Found"]) == (2, 1), answer
    # Refused or of nothing: none may leave a record.
    assert swift("PUT", f"{c}/bad-etag", b"x", {"ETag": "0" * 32}).status == 422
    assert swift("POST", f"{c}/missing", headers={"X-Object-Meta-A": "b"}).status == 404
    assert swift("COPY", f"{c}/missing", headers={"Destination": f"{c}/missing-copy"}).status == 404
    assert swift("DELETE", f"{c}/missing").status == 404
    settle(serve)

    objects = object_records(serve, c)
    assert ops(objects) == {
        "o1": ["write", "write"],  # the PUT, then the POST of its metadata
        "o2": ["write", "delete"],
        "o3": ["write"],
        "t/1": ["write"],
        "t/2": ["write"],
        "b1": ["write", "delete"],
        "b2": ["write", "delete"],
    }, ops(objects)
    now = listed(s3, c)
    assert set(now) == {"o1", "o3", "t/1", "t/2"}
    for key, recs in objects.items():
        writes = [r for r in recs if r["op"] == "write"]
        if key in now:
            assert facts(writes[-1]) == now[key], (key, writes[-1])
    assert facts(objects["o1"][0]) == (9, md5(b"swift one"))  # read before the POST


def test_swift_large_object_manifests(serve: Serve, ceph_lab: Lab, swift: Swift) -> None:
    s3 = s3_client(ceph_lab)
    c = f"wr-swlo-{uuid.uuid4().hex[:8]}"
    assert swift("PUT", c).status == 201
    segs = {"segs/1": b"a" * 1000, "segs/2": b"b" * 500}
    for k, data in segs.items():
        assert swift("PUT", f"{c}/{k}", data).status == 201
    assert swift("PUT", f"{c}/dlo", headers={"X-Object-Manifest": f"{c}/segs/"}).status == 201
    manifest = [{"path": f"/{c}/{k}", "etag": md5(d), "size_bytes": len(d)} for k, d in segs.items()]
    assert swift("PUT", f"{c}/slo?multipart-manifest=put", json.dumps(manifest).encode()).status == 201
    assert swift("HEAD", f"{c}/slo").headers["Content-Length"] == "1500"
    settle(serve)
    before = listed(s3, c)
    resp = swift("DELETE", f"{c}/slo?multipart-manifest=delete")
    assert resp.status == 200, resp.data[:300]
    settle(serve)

    objects = object_records(serve, c)
    assert ops(objects) == {
        "segs/1": ["write", "delete"],  # the SLO's segments go with it
        "segs/2": ["write", "delete"],
        "dlo": ["write"],
        "slo": ["write", "delete"],
    }, ops(objects)
    assert set(listed(s3, c)) == {"dlo"}
    # A DLO manifest is an empty object: its record, as ListObjects, says 0 bytes (GET: 1500).
    assert facts(objects["dlo"][0]) == before["dlo"] == (0, md5(b""))
    for k, data in segs.items():
        assert facts(objects[k][0]) == (len(data), md5(data))


def test_a_swift_slo_manifest_record_has_its_listed_size(serve: Serve, ceph_lab: Lab, swift: Swift) -> None:
    s3 = s3_client(ceph_lab)
    c = f"wr-slo-{uuid.uuid4().hex[:8]}"
    assert swift("PUT", c).status == 201
    assert swift("PUT", f"{c}/seg", b"s" * 100).status == 201
    manifest = [{"path": f"/{c}/seg", "etag": md5(b"s" * 100), "size_bytes": 100}]
    assert swift("PUT", f"{c}/slo?multipart-manifest=put", json.dumps(manifest).encode()).status == 201
    settle(serve)
    (rec,) = object_records(serve, c)["slo"]
    assert rec["op"] == "write"
    size, etag = listed(s3, c)["slo"]
    assert size > 0  # the manifest's length, as radosgw lists it
    assert facts(rec) == (size, etag)


@pytest.fixture
def swift_versioning(ceph_lab: Lab) -> Iterator[None]:
    """radosgw's Swift object versioning (off by default), on for the test: radosgw reads the
    option at each request, so a `ceph config set` is enough."""
    ceph_lab.ceph("config", "set", "client.rgw.gw", "rgw_swift_versioning_enabled", "true")
    try:
        yield
    finally:
        ceph_lab.ceph("config", "rm", "client.rgw.gw", "rgw_swift_versioning_enabled")


def test_swift_versioning_archives_and_restores_are_one_record_each(
    serve: Serve, ceph_lab: Lab, swift: Swift, swift_versioning: None
) -> None:
    s3 = s3_client(ceph_lab)
    c, archive = f"wr-swv-{uuid.uuid4().hex[:8]}", f"wr-swarch-{uuid.uuid4().hex[:8]}"
    assert swift("PUT", archive).status == 201
    deadline = time.monotonic() + 60  # until radosgw has the option from the monitors
    while True:
        assert swift("PUT", c, headers={"X-Versions-Location": archive}).status in (201, 202)
        if swift("HEAD", c).headers.get("X-Versions-Location") == archive:
            break
        assert time.monotonic() < deadline, "radosgw never took rgw_swift_versioning_enabled"
        time.sleep(0.5)
    bodies = [b"v1", b"v22", b"v333"]
    for body in bodies:
        assert swift("PUT", f"{c}/o", body).status == 201
        settle(serve)
    # The two older versions are in the archive; a DELETE moves the newest of them back.
    assert swift("DELETE", f"{c}/o").status == 204
    settle(serve)

    assert listed(s3, c) == {"o": (3, md5(b"v22"))}
    (kept,) = listed(s3, archive).items()
    assert kept[1] == (2, md5(b"v1"))
    current = object_records(serve, c)["o"]
    assert [r["op"] for r in current] == ["write"] * 4, current  # three PUTs, the restore
    assert [facts(r) for r in current] == [(len(b), md5(b)) for b in [*bodies, b"v22"]]
    archived = object_records(serve, archive)
    assert ops(archived) == {kept[0]: ["write"], **{k: ["write", "delete"] for k in archived if k != kept[0]}}
    assert len(archived) == 2, archived
    # The restore is radosgw's own copy: on Pacific and Reef its index entry names no owner, so
    # its record has no writer; Tentacle names the requester.
    print("restore record's metadata:", current[-1].get("metadata"))


# -- Object Lock -------------------------------------------------------------------------------


def test_object_lock_changes_are_writes_and_refused_deletes_leave_nothing(
    serve: Serve, ceph_lab: Lab
) -> None:
    s3 = s3_client(ceph_lab)
    bucket = new_bucket(s3, "lock", ObjectLockEnabledForBucket=True)
    body = b"locked"
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=body)["VersionId"]
    settle(serve)
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    s3.put_object_retention(
        Bucket=bucket, Key="k", VersionId=v1, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
    )
    settle(serve)
    s3.put_object_legal_hold(Bucket=bucket, Key="k", VersionId=v1, LegalHold={"Status": "ON"})
    settle(serve)
    refused = {
        "delete": error_code(lambda: s3.delete_object(Bucket=bucket, Key="k", VersionId=v1)),
        "bypass under legal hold": error_code(
            lambda: s3.delete_object(Bucket=bucket, Key="k", VersionId=v1, BypassGovernanceRetention=True)
        ),
        "shorter retention": error_code(
            lambda: s3.put_object_retention(
                Bucket=bucket,
                Key="k",
                VersionId=v1,
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until - datetime.timedelta(hours=1)},
            )
        ),
    }
    assert refused == dict.fromkeys(refused, "AccessDenied"), refused
    multi = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "VersionId": v1}]})
    assert [e["Code"] for e in multi.get("Errors", [])] == ["AccessDenied"], multi
    assert not multi.get("Deleted")
    # Reads are no mutations.
    s3.get_object_retention(Bucket=bucket, Key="k", VersionId=v1)
    s3.get_object_legal_hold(Bucket=bucket, Key="k", VersionId=v1)
    s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read()
    s3.put_object_legal_hold(Bucket=bucket, Key="k", VersionId=v1, LegalHold={"Status": "OFF"})
    settle(serve)
    s3.delete_object(Bucket=bucket, Key="k", VersionId=v1, BypassGovernanceRetention=True)
    settle(serve)

    recs = object_records(serve, bucket)["k"]
    # PUT, retention, legal hold on, legal hold off, the bypass delete.
    assert [r["op"] for r in recs] == ["write", "write", "write", "write", "delete"], recs
    assert {r["version_id"] for r in recs} == {v1}
    assert [facts(r) for r in recs[:4]] == [(len(body), md5(body))] * 4
    assert recs[-1]["size"] is None
    assert not s3.list_object_versions(Bucket=bucket).get("Versions")


# -- ACLs and copies onto themselves ---------------------------------------------------------


def test_acl_changes_and_self_copies_are_one_write_each(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    plain = new_bucket(s3, "acl")
    body = b"acl me"
    s3.put_object(Bucket=plain, Key="a", Body=body)
    settle(serve)
    s3.put_object_acl(Bucket=plain, Key="a", ACL="public-read")
    settle(serve)
    s3.copy_object(
        Bucket=plain, Key="a", CopySource={"Bucket": plain, "Key": "a"}, MetadataDirective="REPLACE",
        Metadata={"m": "1"},
    )  # fmt: skip
    versioned = new_bucket(s3, "aclv")
    s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    va = s3.put_object(Bucket=versioned, Key="a", Body=b"v1")["VersionId"]
    vb = s3.put_object(Bucket=versioned, Key="a", Body=b"v22")["VersionId"]
    settle(serve)
    s3.put_object_acl(Bucket=versioned, Key="a", VersionId=va, ACL="public-read")
    settle(serve)
    s3.copy_object(
        Bucket=versioned, Key="a", CopySource={"Bucket": versioned, "Key": "a", "VersionId": va},
        MetadataDirective="REPLACE", Metadata={"m": "1"},
    )  # fmt: skip
    # radosgw's CopyObject answer may lack x-amz-version-id: the new version is the latest one.
    (vc,) = [v["VersionId"] for v in s3.list_object_versions(Bucket=versioned)["Versions"] if v["IsLatest"]]
    # Refused: no record.
    assert (
        error_code(lambda: s3.put_object_acl(Bucket=plain, Key="missing", ACL="public-read")) == "NoSuchKey"
    )
    settle(serve)

    (key,) = object_records(serve, plain).values()
    assert [(r["op"], r["version_id"]) for r in key] == [("write", None)] * 3, key
    assert [facts(r) for r in key] == [(len(body), md5(body))] * 3

    recs = object_records(serve, versioned)["a"]
    assert [(r["op"], r["version_id"]) for r in recs] == [
        ("write", va), ("write", vb), ("write", va), ("write", vc),
    ], recs  # fmt: skip
    assert [facts(r) for r in recs] == [(2, md5(b"v1")), (3, md5(b"v22")), (2, md5(b"v1")), (2, md5(b"v1"))]
    # The ACL change is no new version: it leaves the key's stack alone.
    assert ["olh_epoch" in (r.get("metadata") or {}) for r in recs] == [True, True, False, True]


# -- POST Object (browser form upload) ---------------------------------------------------------


def test_post_object_is_one_write_and_a_refused_form_none(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    bucket = new_bucket(s3, "post")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=60))
    body = b"posted from a form"
    form = s3.generate_presigned_post(bucket, "form/upload.txt", ExpiresIn=600)
    resp = http.request("POST", form["url"], fields={**form["fields"], "file": ("upload.txt", body)})
    assert resp.status in (200, 201, 204), resp.data[:300]
    small = s3.generate_presigned_post(
        bucket, "form/too-big.txt", Conditions=[["content-length-range", 1, 5]], ExpiresIn=600
    )
    resp = http.request("POST", small["url"], fields={**small["fields"], "file": ("too-big.txt", body)})
    assert resp.status == 400, resp.data[:300]
    settle(serve)

    objects = object_records(serve, bucket)
    assert ops(objects) == {"form/upload.txt": ["write"]}
    assert (
        facts(objects["form/upload.txt"][0])
        == (len(body), md5(body))
        == listed(s3, bucket)["form/upload.txt"]
    )


# -- AppendObject ------------------------------------------------------------------------------


def append(lab: Lab, bucket: str, key: str, position: int, data: bytes) -> urllib3.BaseHTTPResponse:
    """radosgw's AppendObject extension: ``PUT /bucket/key?append&position=N``, SigV4-signed."""
    url = f"{lab.rgw_endpoint}/{bucket}/{key}?append&position={position}"
    request = AWSRequest(method="PUT", url=url, data=data)
    S3SigV4Auth(Credentials(lab.access_key, lab.secret_key), "s3", S3_REGION).add_auth(request)
    return urllib3.request("PUT", url, body=data, headers=dict(request.headers), retries=False, timeout=60)


def test_each_append_is_one_write_with_the_size_after_it(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    bucket = new_bucket(s3, "append")
    after: list[tuple[int, str]] = []
    position = 0
    for chunk in (b"first ", b"second ", b"third"):
        resp = append(ceph_lab, bucket, "log.txt", position, chunk)
        assert resp.status == 200, resp.data[:300]
        position += len(chunk)
        head = s3.head_object(Bucket=bucket, Key="log.txt")
        after.append((int(head["ContentLength"]), str(head["ETag"]).strip('"')))
        settle(serve)
    assert [size for size, _ in after] == [6, 13, 18]
    # Refused appends: a wrong position, a plain object, a versioned bucket.
    assert append(ceph_lab, bucket, "log.txt", 1, b"bad").status == 409
    s3.put_object(Bucket=bucket, Key="plain", Body=b"plain")
    assert append(ceph_lab, bucket, "plain", 5, b"more").status == 409
    versioned = new_bucket(s3, "appendv")
    s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    assert append(ceph_lab, versioned, "x", 0, b"abc").status == 409
    settle(serve)

    objects = object_records(serve, bucket)
    assert ops(objects) == {"log.txt": ["write"] * 3, "plain": ["write"]}, ops(objects)
    assert [facts(r) for r in objects["log.txt"]] == after
    assert facts(objects["plain"][0]) == (5, md5(b"plain"))
    # (An empty bucket has no records yet, not even its bucket_create.)
    assert [r for r in serve.records(versioned) if r["key"] is not None] == []


# -- radosgw-admin object --------------------------------------------------------------------


def test_radosgw_admin_object_rm_and_rewrite(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    bucket = new_bucket(s3, "admin")
    s3.put_object(Bucket=bucket, Key="rm-me", Body=b"x" * 10)
    s3.put_object(Bucket=bucket, Key="rewrite-me", Body=b"y" * 20)
    settle(serve)
    ceph_lab.radosgw_admin("object", "rm", f"--bucket={bucket}", "--object=rm-me")
    ceph_lab.radosgw_admin("object", "rewrite", f"--bucket={bucket}", "--object=rewrite-me")
    with pytest.raises(RuntimeError, match="No such file"):
        ceph_lab.radosgw_admin("object", "rm", f"--bucket={bucket}", "--object=never-was")
    versioned = new_bucket(s3, "adminv")
    s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=versioned, Key="o", Body=b"1")["VersionId"]
    settle(serve)
    ceph_lab.radosgw_admin("object", "rm", f"--bucket={versioned}", "--object=o")
    # Tentacle makes a delete marker; Pacific and Reef leave a versioned key alone.
    markers = [m["VersionId"] for m in s3.list_object_versions(Bucket=versioned).get("DeleteMarkers", [])]
    print("radosgw-admin object rm on a versioned key made delete markers", markers)
    settle(serve)

    objects = object_records(serve, bucket)
    assert ops(objects) == {"rm-me": ["write", "delete"], "rewrite-me": ["write", "write"]}, ops(objects)
    first, rewrite = objects["rewrite-me"]
    # A rewrite logs a write of the same content: same size, etag and mtime.
    assert facts(first) == facts(rewrite) == (20, md5(b"y" * 20)) == listed(s3, bucket)["rewrite-me"]
    assert first["mtime"] == rewrite["mtime"]
    recs = object_records(serve, versioned)["o"]
    assert [(r["op"], r["version_id"]) for r in recs] == [("write", v1)] + [
        ("delete_marker", m) for m in markers
    ]


# -- failed requests -------------------------------------------------------------------------


def attempt(call: Any) -> str:
    """``ok``, or the error code of a refused request."""
    try:
        call()
    except ClientError as ex:
        return str(ex.response["Error"]["Code"])
    return "ok"


def cut_put(lab: Lab, bucket: str, key: str, *, length: int = 4_000_000, sent: int = 200_000) -> None:
    """A PUT whose client goes away after ``sent`` of ``length`` bytes (a crashed uploader)."""
    url = urllib.parse.urlsplit(f"{lab.rgw_endpoint}/{bucket}/{key}")
    request = AWSRequest(
        method="PUT",
        url=url.geturl(),
        headers={"Content-Length": str(length), "x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
    )
    S3SigV4Auth(Credentials(lab.access_key, lab.secret_key), "s3", S3_REGION).add_auth(request)
    head = f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30) as conn:
        conn.sendall(head.encode() + b"z" * sent)


def test_failed_requests_leave_no_record(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    bucket = new_bucket(s3, "fail")
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    src: Any = {"Bucket": bucket, "Key": "src"}
    codes = {
        "md5": attempt(
            lambda: s3.put_object(Bucket=bucket, Key="md5", Body=b"x", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")
        ),
        "missing-copy": attempt(
            lambda: s3.copy_object(
                Bucket=bucket, Key="missing-copy", CopySource={"Bucket": bucket, "Key": "no"}
            )
        ),
    }
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mpu")["UploadId"]
    try:
        s3.upload_part(Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=1, Body=b"p" * 100)
        codes["mpu"] = attempt(
            lambda: s3.complete_multipart_upload(
                Bucket=bucket,
                Key="mpu",
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": f'"{"0" * 32}"'}]},
            )
        )
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="mpu", UploadId=upload)
    assert codes == {"md5": "BadDigest", "missing-copy": "NoSuchKey", "mpu": "InvalidPart"}, codes
    cut_put(ceph_lab, bucket, "cut-new")
    cut_put(ceph_lab, bucket, "src")
    # Conditional copies: Reef and later refuse them (412; radosgw answers a failed
    # If-None-Match with 304 where S3 answers 412); Pacific reads the conditions from
    # x-amz-copy-if-*, not x-amz-copy-source-if-*, so boto3's are ignored and the copies are made.
    conditional = {
        "if-match": attempt(
            lambda: s3.copy_object(Bucket=bucket, Key="if-match", CopySource=src, CopySourceIfMatch='"0000"')
        ),
        "if-none-match": attempt(
            lambda: s3.copy_object(
                Bucket=bucket,
                Key="if-none-match",
                CopySource=src,
                CopySourceIfNoneMatch=f'"{md5(b"source")}"',
            )
        ),
    }
    print("conditional copies:", conditional)
    assert set(conditional.values()) <= {"ok", "PreconditionFailed", "304"}, conditional
    settle(serve)

    objects = object_records(serve, bucket)
    made = {k: ["write"] for k, code in conditional.items() if code == "ok"}
    assert ops(objects) == {"src": ["write"], **made}, (ops(objects), conditional)
    assert facts(objects["src"][0]) == (6, md5(b"source")) == listed(s3, bucket)["src"]
