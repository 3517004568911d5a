"""``changelog.consumers.replication.apply``: one record applied to one site, on moto (source
and site buckets in one moto account, each reached through a client of ``make_s3_client``)."""

from __future__ import annotations

import io
import itertools
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from moto import mock_aws
from moto.core.authorization import enable_iam_authentication

from changelog.consumers.replication.apply import (
    REPLICA_META,
    SRC_BUCKET,
    SRC_ETAG,
    SRC_KEY,
    SRC_MTIME,
    SRC_VERSION,
    SRC_ZONE,
    Applied,
    Destination,
    _Checked,
    apply_record,
)
from changelog.errors import TransientError
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.s3client import make_s3_client

UNICODE_KEY = "dir/ünï cødé+%?.txt"
SPACE_KEY = "a key with spaces"
MiB = 1024 * 1024

_ids = itertools.count(1)


def record(op: str, key: str | None, version: str | None = None, *, etag: str | None = None,
           baseline: bool = False, bucket: str = "src") -> LogRecord:
    n = next(_ids)
    return LogRecord(
        id=f"e{n}", time="2026-12-06T00:00:00.000000Z", bucket=bucket, key=key, version_id=version, op=op,
        size=None, etag=etag, seq=f"{n:020d}", baseline=baseline, recorded="2026-12-06T00:00:01.000000Z",
    )


class Map:
    """The caller's version map, in memory: what the consumer keeps per site bucket and key."""

    def __init__(self) -> None:
        self.d: dict[tuple[str, str], str] = {}

    def get(self, key: str, src_version: str) -> str | None:
        return self.d.get((key, src_version))

    def keep(self, key: str, applied: Applied) -> None:
        for src, site in applied.map_set.items():
            self.d[(key, src)] = site
        for src in applied.map_remove:
            self.d.pop((key, src), None)


def client(endpoint: str | None = None, *, access_key: str = "testing", secret_key: str = "testing",
           max_attempts: int = 2, connect_timeout: float = 5.0) -> Any:
    return make_s3_client(endpoint, access_key=access_key, secret_key=secret_key, region="us-east-1",
                          max_attempts=max_attempts, connect_timeout=connect_timeout, read_timeout=30.0)


class World:
    """Source bucket ``src`` (versioned or not), site buckets ``dst-u`` (unversioned) and
    ``dst-v`` (versioned), and the version map of each site bucket."""

    def __init__(self, *, source_versioned: bool) -> None:
        self.s3 = client()
        self.source = client()
        self.site = client()
        for b in ("src", "dst-u", "dst-v"):
            self.s3.create_bucket(Bucket=b)
        self.s3.put_bucket_versioning(Bucket="dst-v", VersioningConfiguration={"Status": "Enabled"})
        if source_versioned:
            self.s3.put_bucket_versioning(Bucket="src", VersioningConfiguration={"Status": "Enabled"})
        self.maps = {"dst-u": Map(), "dst-v": Map()}

    def dest(self, versioned: bool, **kw: Any) -> Destination:
        return Destination(self.site, "dst-v" if versioned else "dst-u", versioned, zone="zone-a", **kw)

    def apply(self, rec: LogRecord, versioned: bool, *, careful: bool = False, **kw: Any) -> Applied:
        dest = self.dest(versioned, **{k: v for k, v in kw.items() if k == "storage_class"})
        vmap = self.maps[dest.bucket]
        out = apply_record(rec, self.source, dest, vmap, careful=careful, transfer=kw.get("transfer"))
        if rec.key is not None:
            vmap.keep(rec.key, out)
        return out

    def put(self, key: str, data: bytes, **kw: Any) -> tuple[str | None, str]:
        r = self.s3.put_object(Bucket="src", Key=key, Body=data, **kw)
        return r.get("VersionId"), r["ETag"].strip('"')

    def site_bytes(self, bucket: str, key: str, version: str | None = None) -> bytes:
        extra = {"VersionId": version} if version else {}
        return bytes(self.s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())

    def site_entries(self, key: str) -> list[tuple[str, bool]]:
        """(version id, is a delete marker) of every entry of ``key`` at the versioned site."""
        r = self.s3.list_object_versions(Bucket="dst-v", Prefix=key)
        out = [(v["VersionId"], False) for v in r.get("Versions", []) if v["Key"] == key]
        out += [(m["VersionId"], True) for m in r.get("DeleteMarkers", []) if m["Key"] == key]
        return sorted(out)

    def site_keys(self, bucket: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def plain(aws: None) -> World:
    return World(source_versioned=False)


@pytest.fixture
def versioned(aws: None) -> World:
    return World(source_versioned=True)


# -- write --------------------------------------------------------------------------------------


@pytest.mark.parametrize("site_versioned", [False, True], ids=["unversioned-site", "versioned-site"])
@pytest.mark.parametrize("key", [UNICODE_KEY, SPACE_KEY])
def test_write_copies_content_headers_metadata_and_tags(plain: World, key: str, site_versioned: bool) -> None:
    _, etag = plain.put(key, b"hello world", ContentType="text/x-test", CacheControl="max-age=60",
                        ContentDisposition="inline", ContentLanguage="fr", Metadata={"color": "blue"},
                        Tagging="team=storage&tier=gold")
    out = plain.apply(record("write", key, etag=etag), site_versioned)
    assert (out.status, out.reason, out.bytes) == ("completed", None, 11)
    bucket = "dst-v" if site_versioned else "dst-u"
    got = plain.s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == b"hello world"
    assert (got["ContentType"], got["CacheControl"], got["ContentDisposition"], got["ContentLanguage"]) == (
        "text/x-test", "max-age=60", "inline", "fr")
    assert got["Metadata"] == {
        "color": "blue", REPLICA_META: "true", SRC_ZONE: "zone-a", SRC_BUCKET: "src",
        SRC_KEY: quote(key, safe=""), SRC_VERSION: "null", SRC_ETAG: etag,
        SRC_MTIME: str(int(plain.s3.head_object(Bucket="src", Key=key)["LastModified"].timestamp())),
    }
    tags = plain.s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("team", "storage"), ("tier", "gold")]
    if site_versioned:
        assert out.map_set == {"null": got["VersionId"]}
    else:
        assert out.map_set == {}
    # GET, GET tagging, PUT.
    assert out.requests == 3


def test_write_storage_class(plain: World) -> None:
    _, etag = plain.put("k", b"x")
    out = plain.apply(record("write", "k", etag=etag), False, storage_class="STANDARD_IA")
    assert out.status == "completed"
    assert plain.s3.head_object(Bucket="dst-u", Key="k")["StorageClass"] == "STANDARD_IA"


def test_versioned_writes_map_each_version(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one")
    v2, e2 = versioned.put("k", b"two")
    a1 = versioned.apply(record("write", "k", v1, etag=e1), True)
    a2 = versioned.apply(record("write", "k", v2, etag=e2), True)
    assert a1.status == a2.status == "completed"
    assert v1 and v2
    s1, s2 = a1.map_set[v1], a2.map_set[v2]
    assert versioned.site_bytes("dst-v", "k", s1) == b"one"
    assert versioned.site_bytes("dst-v", "k", s2) == b"two"
    assert versioned.site_bytes("dst-v", "k") == b"two"
    assert versioned.s3.head_object(Bucket="dst-v", Key="k", VersionId=s1)["Metadata"][SRC_VERSION] == v1


def test_write_superseded_by_a_newer_etag_is_skipped(plain: World) -> None:
    _, old = plain.put("k", b"old")
    plain.put("k", b"new")
    out = plain.apply(record("write", "k", etag=old), False)
    assert out.status == "skipped"
    assert out.reason is not None and out.reason.startswith("superseded: etag changed")
    assert plain.site_keys("dst-u") == []


def test_write_of_a_deleted_version_is_skipped(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one")
    versioned.s3.delete_object(Bucket="src", Key="k", VersionId=v1)
    out = versioned.apply(record("write", "k", v1, etag=e1), True)
    assert out.status == "skipped"
    assert out.reason is not None and out.reason.startswith("superseded: version gone")
    assert versioned.site_entries("k") == []


def test_write_of_an_old_version_to_an_unversioned_site_is_skipped(versioned: World) -> None:
    """A tag change of a version that is no longer current must not replace the site's copy."""
    v1, e1 = versioned.put("k", b"one")
    v2, e2 = versioned.put("k", b"two")
    assert versioned.apply(record("write", "k", v2, etag=e2), False).status == "completed"
    out = versioned.apply(record("write", "k", v1, etag=e1), False)
    assert out.status == "skipped" and out.reason is not None and "no longer the current" in out.reason
    assert versioned.site_bytes("dst-u", "k") == b"two"


def test_tag_change_of_a_version_adds_no_version(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one", Tagging="a=1")
    first = versioned.apply(record("write", "k", v1, etag=e1), True)
    assert v1
    site_v = first.map_set[v1]
    versioned.s3.put_object_tagging(Bucket="src", Key="k", VersionId=v1,
                                    Tagging={"TagSet": [{"Key": "a", "Value": "2"}, {"Key": "b", "Value": "3"}]})
    out = versioned.apply(record("write", "k", v1, etag=e1), True)
    assert (out.status, out.bytes, out.map_set) == ("completed", 0, {})
    assert versioned.site_entries("k") == [(site_v, False)]
    tags = versioned.s3.get_object_tagging(Bucket="dst-v", Key="k", VersionId=site_v)["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("a", "2"), ("b", "3")]
    versioned.s3.delete_object_tagging(Bucket="src", Key="k", VersionId=v1)
    out = versioned.apply(record("write", "k", v1, etag=e1), True)
    assert out.status == "completed"
    assert versioned.s3.get_object_tagging(Bucket="dst-v", Key="k", VersionId=site_v)["TagSet"] == []
    assert versioned.site_entries("k") == [(site_v, False)]


def test_null_version_on_a_versioned_site_keeps_one_version(plain: World) -> None:
    """An unversioned source has one (null) version per key: the site keeps one as well."""
    _, e1 = plain.put("k", b"one")
    a1 = plain.apply(record("write", "k", etag=e1), True)
    _, e2 = plain.put("k", b"two")
    a2 = plain.apply(record("write", "k", etag=e2), True)
    assert a1.status == a2.status == "completed"
    assert plain.site_entries("k") == [(a2.map_set["null"], False)]
    assert plain.site_bytes("dst-v", "k") == b"two"


def test_multipart_streams_in_parts(plain: World) -> None:
    data = bytes(range(256)) * (15 * MiB // 256)
    _, etag = plain.put("big", data)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    out = plain.apply(record("write", "big", etag=etag), False, transfer=cfg)
    assert (out.status, out.bytes) == ("completed", 15 * MiB)
    head = plain.s3.head_object(Bucket="dst-u", Key="big")
    assert head["ETag"].strip('"').endswith("-3")
    assert plain.site_bytes("dst-u", "big") == data
    # GET; create, 3 parts, complete.
    assert out.requests == 6


def test_a_short_body_never_completes() -> None:
    body = _Checked(io.BytesIO(b"abc"), 5, "GET src/k")
    reader = io.BufferedReader(body)
    with pytest.raises(TransientError, match="3 bytes of 5"):
        reader.read()


# -- careful and baseline -------------------------------------------------------------------------


def test_careful_replay_adds_no_version(versioned: World) -> None:
    """A replay of records whose first application happened (a crash before the checkpoint):
    the version map of the replayed records is lost, the site already has their effects."""
    v1, e1 = versioned.put("k", b"one")
    v2, e2 = versioned.put("k", b"two")
    v3, e3 = versioned.put("k", b"three")
    versioned.s3.delete_object(Bucket="src", Key="k", VersionId=v1)
    m = versioned.s3.delete_object(Bucket="src", Key="k")["VersionId"]
    recs = [record("write", "k", v1, etag=e1), record("write", "k", v2, etag=e2), record("write", "k", v3, etag=e3),
            record("delete", "k", v1), record("delete_marker", "k", m)]
    first = [versioned.apply(r, True, careful=True).status for r in recs]
    # v1 was deleted at the source before its write was applied: skipped.
    assert first == ["skipped", "completed", "completed", "completed", "completed"]
    entries = versioned.site_entries("k")
    saved = dict(versioned.maps["dst-v"].d)
    assert len(entries) == 3  # v2, v3 and the marker
    # The map kept: every record finds its effect.
    again = [versioned.apply(r, True, careful=True) for r in recs]
    assert [a.status for a in again] == ["skipped", "completed", "completed", "completed", "completed"]
    assert versioned.site_entries("k") == entries
    # The map lost with the crash: found again at the site.
    versioned.maps["dst-v"].d.clear()
    lost = [versioned.apply(r, True, careful=True) for r in recs]
    assert [a.status for a in lost] == ["skipped", "completed", "completed", "completed", "completed"]
    assert versioned.site_entries("k") == entries
    assert versioned.maps["dst-v"].d == saved
    assert sum(a.bytes for a in lost) == 0


def test_careful_write_after_an_upload_is_found_without_the_map(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one")
    v2, e2 = versioned.put("k", b"two")
    versioned.apply(record("write", "k", v1, etag=e1), True)
    versioned.apply(record("write", "k", v2, etag=e2), True)
    entries = versioned.site_entries("k")
    versioned.maps["dst-v"].d.clear()
    # v1 is not the site's current version: found by listing the key's versions.
    out = versioned.apply(record("write", "k", v1, etag=e1), True, careful=True)
    assert (out.status, out.bytes, out.reason) == ("completed", 0, "already at the site")
    assert v1 and versioned.site_bytes("dst-v", "k", out.map_set[v1]) == b"one"
    assert versioned.site_entries("k") == entries


@pytest.mark.parametrize("site_versioned", [False, True], ids=["unversioned-site", "versioned-site"])
def test_careful_null_write_replayed(plain: World, site_versioned: bool) -> None:
    _, etag = plain.put("k", b"one")
    rec = record("write", "k", etag=etag)
    assert plain.apply(rec, site_versioned).status == "completed"
    before = plain.site_entries("k")
    out = plain.apply(rec, site_versioned, careful=True)
    assert (out.status, out.bytes) == ("completed", 0)
    assert plain.site_entries("k") == before


def test_baseline_already_at_the_site_copies_nothing(plain: World) -> None:
    _, etag = plain.put("k", b"same")
    plain.s3.put_object(Bucket="dst-u", Key="k", Body=b"same")  # the site's own copy
    out = plain.apply(record("write", "k", etag=etag, baseline=True), False)
    assert (out.status, out.bytes, out.requests) == ("completed", 0, 1)
    assert REPLICA_META not in plain.s3.head_object(Bucket="dst-u", Key="k")["Metadata"]
    _, etag2 = plain.put("other", b"new")
    plain.s3.put_object(Bucket="dst-u", Key="other", Body=b"old")
    out = plain.apply(record("write", "other", etag=etag2, baseline=True), False)
    assert (out.status, out.bytes) == ("completed", 3)
    assert plain.site_bytes("dst-u", "other") == b"new"


# -- delete ---------------------------------------------------------------------------------------


def test_delete_on_an_unversioned_site(plain: World) -> None:
    _, etag = plain.put(UNICODE_KEY, b"x")
    plain.apply(record("write", UNICODE_KEY, etag=etag), False)
    plain.s3.delete_object(Bucket="src", Key=UNICODE_KEY)
    out = plain.apply(record("delete", UNICODE_KEY), False)
    assert out.status == "completed"
    assert plain.site_keys("dst-u") == []


def test_late_delete_never_removes_a_newer_replica(plain: World) -> None:
    _, etag = plain.put("k", b"x")
    plain.apply(record("write", "k", etag=etag), False)
    plain.s3.delete_object(Bucket="src", Key="k")
    plain.put("k", b"again")
    out = plain.apply(record("delete", "k"), False)
    assert (out.status, out.reason) == ("skipped", "superseded: rewritten at the source")
    assert plain.site_keys("dst-u") == ["k"]


def test_delete_of_the_null_version_on_a_versioned_site(plain: World) -> None:
    _, etag = plain.put("k", b"x")
    w = plain.apply(record("write", "k", etag=etag), True)
    plain.s3.delete_object(Bucket="src", Key="k")
    out = plain.apply(record("delete", "k"), True)
    assert (out.status, out.map_remove) == ("completed", ["null"])
    assert w.map_set["null"] and plain.site_entries("k") == []


def test_version_delete_on_a_versioned_site(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one")
    v2, e2 = versioned.put("k", b"two")
    versioned.apply(record("write", "k", v1, etag=e1), True)
    keep = versioned.apply(record("write", "k", v2, etag=e2), True)
    versioned.s3.delete_object(Bucket="src", Key="k", VersionId=v1)
    out = versioned.apply(record("delete", "k", v1), True)
    assert (out.status, out.map_remove) == ("completed", [v1])
    assert v2 and versioned.site_entries("k") == [(keep.map_set[v2], False)]
    # Nothing mapped any more: nothing to delete, even when careful.
    again = versioned.apply(record("delete", "k", v1), True, careful=True)
    assert again.status == "completed" and again.reason is not None and again.reason.startswith("nothing to delete")
    assert len(versioned.site_entries("k")) == 1


def test_careful_version_delete_finds_the_replica_without_the_map(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one")
    versioned.put("k", b"two")
    versioned.apply(record("write", "k", v1, etag=e1), True)
    versioned.maps["dst-v"].d.clear()
    out = versioned.apply(record("delete", "k", v1), True, careful=True)
    assert (out.status, out.map_remove) == ("completed", [v1])
    assert versioned.site_entries("k") == []


def test_version_delete_on_an_unversioned_site_keeps_the_current_version(versioned: World) -> None:
    """An unversioned site mirrors the current version: deleting it brings the previous back."""
    v1, e1 = versioned.put("k", b"one")
    v2, e2 = versioned.put("k", b"two")
    versioned.apply(record("write", "k", v1, etag=e1), False)
    versioned.apply(record("write", "k", v2, etag=e2), False)
    # A version the site does not hold: nothing changes.
    skipped = versioned.apply(record("delete", "k", v1), False)
    assert skipped.status == "skipped" and skipped.reason is not None
    assert skipped.reason.startswith("version delete on an unversioned site")
    versioned.s3.delete_object(Bucket="src", Key="k", VersionId=v2)
    out = versioned.apply(record("delete", "k", v2), False)
    assert out.status == "completed"
    assert versioned.site_bytes("dst-u", "k") == b"one"
    assert versioned.s3.head_object(Bucket="dst-u", Key="k")["Metadata"][SRC_VERSION] == v1
    versioned.s3.delete_object(Bucket="src", Key="k", VersionId=v1)
    out = versioned.apply(record("delete", "k", v1), False)
    assert out.status == "completed"
    assert versioned.site_keys("dst-u") == []


# -- delete markers and bucket ops -----------------------------------------------------------------


def test_delete_marker_on_a_versioned_site(versioned: World) -> None:
    v1, e1 = versioned.put(SPACE_KEY, b"one")
    versioned.apply(record("write", SPACE_KEY, v1, etag=e1), True)
    m = versioned.s3.delete_object(Bucket="src", Key=SPACE_KEY)["VersionId"]
    out = versioned.apply(record("delete_marker", SPACE_KEY, m), True)
    assert out.status == "completed"
    site_marker = out.map_set[m]
    assert sorted(e for e in versioned.site_entries(SPACE_KEY) if e[1]) == [(site_marker, True)]
    assert versioned.site_keys("dst-v") == []
    # Replayed (careful): no second marker.
    versioned.maps["dst-v"].d.pop((SPACE_KEY, m))
    again = versioned.apply(record("delete_marker", SPACE_KEY, m), True, careful=True)
    assert (again.status, again.map_set) == ("completed", {m: site_marker})
    assert len(versioned.site_entries(SPACE_KEY)) == 2
    # Deleting the marker at the source deletes the site's marker.
    versioned.s3.delete_object(Bucket="src", Key=SPACE_KEY, VersionId=m)
    out = versioned.apply(record("delete", SPACE_KEY, m), True)
    assert out.status == "completed"
    assert versioned.site_keys("dst-v") == [SPACE_KEY]


def test_careful_marker_replay_without_the_delete_marker_header(versioned: World) -> None:
    """radosgw (16.2 to 20.2) answers a HEAD of a key whose latest entry is a delete marker with
    a bare 404, without AWS's ``x-amz-delete-marker``: the site client here loses the header."""

    def strip(response_dict: dict[str, Any], **_: Any) -> None:
        response_dict["headers"].pop("x-amz-delete-marker", None)

    versioned.site.meta.events.register("before-parse.s3.HeadObject", strip)
    v1, e1 = versioned.put("k", b"one")
    versioned.apply(record("write", "k", v1, etag=e1), True)
    m = versioned.s3.delete_object(Bucket="src", Key="k")["VersionId"]
    first = versioned.apply(record("delete_marker", "k", m), True)
    versioned.maps["dst-v"].d.clear()
    again = versioned.apply(record("delete_marker", "k", m), True, careful=True)
    assert (again.status, again.map_set) == ("completed", first.map_set)
    assert len(versioned.site_entries("k")) == 2


def test_delete_marker_on_an_unversioned_site(versioned: World) -> None:
    v1, e1 = versioned.put("k", b"one")
    versioned.apply(record("write", "k", v1, etag=e1), False)
    m = versioned.s3.delete_object(Bucket="src", Key="k")["VersionId"]
    out = versioned.apply(record("delete_marker", "k", m), False)
    assert out.status == "completed"
    assert versioned.site_keys("dst-u") == []


@pytest.mark.parametrize("op", ["bucket_create", "bucket_delete"])
def test_bucket_ops_do_nothing(plain: World, op: str) -> None:
    out = plain.apply(record(op, None), True)
    assert (out.status, out.requests) == ("completed", 0)
    assert out.reason is not None and "operator" in out.reason


# -- errors ---------------------------------------------------------------------------------------


def test_wrong_credentials_at_the_site_fail_in_one_line(aws: None) -> None:
    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_user(UserName="replicator")
    policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
    iam.put_user_policy(UserName="replicator", PolicyName="s3", PolicyDocument=policy)
    key = iam.create_access_key(UserName="replicator")["AccessKey"]
    s3 = client()
    for b in ("src", "dst-u"):
        s3.create_bucket(Bucket=b)
    etag = s3.put_object(Bucket="src", Key="k", Body=b"x")["ETag"].strip('"')
    with enable_iam_authentication():
        source = client(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])
        site = client(access_key="AKIAWRONGWRONGWRONG0", secret_key="nope")
        out = apply_record(record("write", "k", etag=etag), source, Destination(site, "dst-u", False), Map())
    assert out.status == "failed"
    assert out.reason is not None and "\n" not in out.reason
    assert "dst-u/k" in out.reason and "InvalidAccessKeyId" in out.reason
    assert out.requests >= 2


def test_missing_site_bucket_fails(plain: World) -> None:
    _, etag = plain.put("k", b"x")
    out = apply_record(record("write", "k", etag=etag), plain.source, Destination(plain.site, "no-such-bucket", False),
                       Map())
    assert out.status == "failed" and out.reason is not None and "NoSuchBucket" in out.reason


def test_unreachable_site_is_transient(plain: World) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    site = client(f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=0.5)
    _, etag = plain.put("k", b"x")
    with pytest.raises(TransientError, match="dst-u/k"):
        apply_record(record("write", "k", etag=etag), plain.source, Destination(site, "dst-u", False), Map())
    with pytest.raises(TransientError):
        apply_record(record("delete_marker", "k", "v"), plain.source, Destination(site, "dst-v", True), Map())
