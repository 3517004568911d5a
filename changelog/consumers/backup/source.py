"""The S3 side of a backup: read the source buckets (GET by version, conditional GET, version
listings) and write restored objects, through a client made by ``changelog.pipeline.s3client``. Errors
are translated there, by HTTP status; a few S3 answers mean more here: 412 is
``ContentChanged``, a missing key or version ``ObjectMissing``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import IO, TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlencode

from changelog.consumers.backup.model import CONTENT_HEADERS, Version, norm_etag
from changelog.errors import ChangelogError, ObjectMissing, PermanentError
from changelog.pipeline.logformat import rfc3339_us, to_us
from changelog.pipeline.s3client import TranslatedBody, make_s3_client, refusal, s3_call, translate_error

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedMultipartUploadTypeDef,
        CreateMultipartUploadRequestTypeDef,
        GetObjectRequestTypeDef,
        ListObjectsV2RequestTypeDef,
        ListObjectVersionsOutputTypeDef,
        ListObjectVersionsRequestTypeDef,
        ObjectTypeDef,
        PutObjectRequestTypeDef,
        TagTypeDef,
    )

logger = logging.getLogger(__name__)

LIST_PAGE = 1000
T = TypeVar("T")


def s3_name(bucket: str) -> str:
    """A bucket as S3 requests spell it: a tenant's ``tenant/bucket`` (the backup's and
    radosgw's name) is ``tenant:bucket`` in S3."""
    return bucket.replace("/", ":", 1)

# What a listing tells of one current object: (ETag, size, LastModified in microseconds).
Probe = tuple[str | None, int, int]


class ContentChanged(ChangelogError):
    """The object is no longer the one a record describes (412 on a conditional GET)."""


@dataclass(frozen=True, slots=True)
class GetResult:
    body: IO[bytes]
    etag: str | None
    size: int
    version_id: str | None
    last_modified: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # ``model.CONTENT_HEADERS``
    # ``x-amz-tagging-count``: AWS S3 and radosgw (measured on Reef 18.2.7, GET and HEAD) send it
    # whenever the object has tags and leave it out when it has none (also after a
    # DeleteObjectTagging), so 0 here means "no tags, no GetObjectTagging needed".
    tag_count: int = 0


@dataclass(frozen=True, slots=True)
class ListPage:
    entries: list[tuple[str, Version]]  # (key, version), per key newest first
    key_marker: str | None  # where the next page starts; None: listing complete
    version_marker: str | None


def _vid(v: object) -> str | None:
    return None if v in (None, "", "null") else str(v)


def _time(t: object) -> str | None:
    return rfc3339_us(to_us(t)) if isinstance(t, datetime) else None


def _version_rows(resp: ListObjectVersionsOutputTypeDef) -> list[tuple[str, datetime, bool, Version]]:
    """(key, LastModified, latest, version) of every version and delete marker of a
    ListObjectVersions page."""
    rows: list[tuple[str, datetime, bool, Version]] = []
    for o in resp.get("Versions", []):
        v = Version(
            version_id=_vid(o.get("VersionId")),
            size=int(o.get("Size", 0)),
            etag=norm_etag(o.get("ETag")),
            last_modified=_time(o.get("LastModified")),
        )
        rows.append((o["Key"], o["LastModified"], bool(o.get("IsLatest")), v))
    for d in resp.get("DeleteMarkers", []):
        v = Version(version_id=_vid(d.get("VersionId")), delete_marker=True, last_modified=_time(d.get("LastModified")))
        rows.append((d["Key"], d["LastModified"], bool(d.get("IsLatest")), v))
    return rows


def _translate(ex: Exception, what: str) -> ChangelogError:
    r = refusal(ex)
    if r is not None:
        if r.status == 412 or r.code == "PreconditionFailed":
            return ContentChanged(f"{what}: changed since the record (412)")
        if r.code in ("NoSuchVersion", "NoSuchKey") or r.status == 404 and r.code not in ("NoSuchBucket",):
            return ObjectMissing(f"{what}: {r.status} {r.code}")
        if r.status == 400 and r.code == "InvalidArgument" and "version" in str(ex).lower():
            return ObjectMissing(f"{what}: {r.code} (version gone)")
    return translate_error(ex, what)


# The backup's client reads whole objects of any size: more attempts and a longer read timeout
# than a change-log target's defaults.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0


def make_client(
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
    pool: int = 32,
    verify: bool | str | None = None,
) -> S3Client:
    """A boto3 S3 client for the backup's source (or restore destination): path-style with an
    endpoint (radosgw), botocore's choice on AWS. ``verify``: the section's ``tls_verify``
    (False, a CA bundle's path, True; None: botocore's default)."""
    return make_s3_client(
        endpoint,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        addressing_style="path" if endpoint else "auto",
        verify=verify,
        max_attempts=MAX_ATTEMPTS,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool=pool,
    )


class Source:
    """The source zone (or the restore destination) as seen through one S3 client."""

    def __init__(self, client: S3Client, *, probe_page_keys: int = LIST_PAGE) -> None:
        self.s3 = client
        # Keys per page of ``probe_page`` (S3's maximum; smaller in tests).
        self.probe_page_keys = probe_page_keys

    def __repr__(self) -> str:
        return f"Source({self.s3.meta.endpoint_url!r})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return s3_call(what, fn, _translate)

    # -- reading

    def list_buckets(self) -> list[str]:
        resp = self._call("list buckets", self.s3.list_buckets)
        return sorted(b["Name"] for b in resp.get("Buckets", []))

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the source has ``bucket`` (a HEAD: False on 404)."""
        try:
            self._call(f"HEAD bucket {bucket}", lambda: self.s3.head_bucket(Bucket=s3_name(bucket)))
        except ObjectMissing:  # a bodiless 404 (``translate_error``)
            return False
        except PermanentError as ex:
            # A server that names the code: the S3 answer itself, not the message's text (which
            # holds the bucket's name).
            r = refusal(ex.__cause__) if ex.__cause__ is not None else None
            if r is not None and (r.status == 404 or r.code == "NoSuchBucket"):
                return False
            raise
        return True

    def is_versioned(self, bucket: str) -> bool:
        resp = self._call(f"versioning of {bucket}", lambda: self.s3.get_bucket_versioning(Bucket=s3_name(bucket)))
        return resp.get("Status") in ("Enabled", "Suspended")

    def list_page(
        self, bucket: str, *, versioned: bool, key_marker: str | None = None, version_marker: str | None = None
    ) -> ListPage:
        """One page of a bucket's versions (all versions and delete markers if ``versioned``,
        else its objects), in key order, each key's versions newest first."""
        if not versioned:
            req: ListObjectsV2RequestTypeDef = {"Bucket": s3_name(bucket), "MaxKeys": LIST_PAGE}
            if key_marker:
                req["StartAfter"] = key_marker
            resp = self._call(f"list {bucket}", partial(self.s3.list_objects_v2, **req))
            entries = [
                (
                    o["Key"],
                    Version(
                        version_id=None,
                        size=int(o.get("Size", 0)),
                        etag=norm_etag(o.get("ETag")),
                        last_modified=_time(o.get("LastModified")),
                    ),
                )
                for o in resp.get("Contents", [])
            ]
            more = bool(resp.get("IsTruncated")) and bool(entries)
            return ListPage(entries, entries[-1][0] if more else None, None)
        vreq: ListObjectVersionsRequestTypeDef = {"Bucket": s3_name(bucket), "MaxKeys": LIST_PAGE}
        if key_marker:
            vreq["KeyMarker"] = key_marker
            if version_marker:
                vreq["VersionIdMarker"] = version_marker
        vresp = self._call(f"list versions of {bucket}", partial(self.s3.list_object_versions, **vreq))
        rows = _version_rows(vresp)
        # Per key: the latest first, then newest first (the two lists come apart).
        rows.sort(key=lambda r: (r[0].encode(), not r[2], -r[1].timestamp()))
        entries = [(k, v) for k, _t, _l, v in rows]
        if vresp.get("IsTruncated"):
            return ListPage(entries, vresp.get("NextKeyMarker") or None, vresp.get("NextVersionIdMarker") or None)
        return ListPage(entries, None, None)

    def key_versions(self, bucket: str, key: str) -> list[Version]:
        """Every version of exactly ``key``, newest (the latest) first."""
        out: list[tuple[bool, datetime, Version]] = []
        req: ListObjectVersionsRequestTypeDef = {"Bucket": s3_name(bucket), "Prefix": key, "MaxKeys": LIST_PAGE}
        while True:
            resp = self._call(f"list versions of {bucket}/{key}", partial(self.s3.list_object_versions, **req))
            rows = _version_rows(resp)
            out.extend((latest, t, v) for k, t, latest, v in rows if k == key)
            # Keys sharing the prefix sort after ``key``: once the listing is past it, stop.
            past = any(k != key for k, _t, _l, _v in rows)
            if past or not resp.get("IsTruncated"):
                break
            req["KeyMarker"] = resp.get("NextKeyMarker", "")
            req["VersionIdMarker"] = resp.get("NextVersionIdMarker", "")
        out.sort(key=lambda r: (not r[0], -r[1].timestamp()))
        return [v for _l, _t, v in out]

    def probe(self, bucket: str, key: str) -> Probe | None:
        """(ETag, size, LastModified in microseconds) of the current object ``key``, from a
        one-key listing (a listing gives LastModified to the millisecond, a GET to the second),
        or None if there is no such object."""
        resp = self._call(f"list {bucket}/{key}", lambda: self.s3.list_objects_v2(Bucket=s3_name(bucket), Prefix=key, MaxKeys=1))
        for o in resp.get("Contents", []):
            if o["Key"] == key:
                return norm_etag(o.get("ETag")), int(o.get("Size", 0)), to_us(o["LastModified"])
        return None

    def probe_page(
        self, bucket: str, *, prefix: str, start_after: str | None, token: str | None
    ) -> tuple[list[tuple[str, Probe]], str | None]:
        """One page (``probe_page_keys``) of the current objects under ``prefix``: (key, probe)
        in listing order (UTF-8 byte order), and the continuation token (None: the listing is
        complete). The first page starts after ``start_after``, the next ones at ``token``. What
        ``probe`` tells of one key, for a run of keys at once (see ``copier``: batched probes)."""
        req: ListObjectsV2RequestTypeDef = {"Bucket": s3_name(bucket), "Prefix": prefix, "MaxKeys": self.probe_page_keys}
        if token:
            req["ContinuationToken"] = token
        elif start_after:
            req["StartAfter"] = start_after
        resp = self._call(f"list {bucket}/{prefix}", partial(self.s3.list_objects_v2, **req))
        entries = [
            (str(o["Key"]), (norm_etag(o.get("ETag")), int(o.get("Size", 0)), to_us(o["LastModified"])))
            for o in resp.get("Contents", [])
        ]
        nxt = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        return entries, (str(nxt) if nxt else None)

    def get(self, bucket: str, key: str, *, version_id: str | None = None, if_match: str | None = None) -> GetResult:
        """Open an object for reading. ``ObjectMissing`` if it (or that version) is gone,
        ``ContentChanged`` if ``if_match`` no longer matches."""
        req: GetObjectRequestTypeDef = {"Bucket": s3_name(bucket), "Key": key}
        if version_id is not None:
            req["VersionId"] = version_id
        if if_match:
            req["IfMatch"] = f'"{if_match}"'
        what = f"GET {bucket}/{key}" + (f"?versionId={version_id}" if version_id else "")
        resp = self._call(what, partial(self.s3.get_object, **req))
        return GetResult(
            body=io.BufferedReader(TranslatedBody(resp["Body"], what, _translate), buffer_size=256 * 1024),
            etag=norm_etag(resp.get("ETag")),
            size=int(resp.get("ContentLength", 0)),
            version_id=_vid(resp.get("VersionId")),
            last_modified=_time(resp.get("LastModified")),
            metadata=dict(resp.get("Metadata") or {}),
            content_type=resp.get("ContentType"),
            headers={h: str(resp[h]) for h in CONTENT_HEADERS if resp.get(h)},  # type: ignore[literal-required]
            tag_count=int(resp.get("TagCount") or 0),
        )

    def tags(self, bucket: str, key: str, *, version_id: str | None = None) -> dict[str, str]:
        """The tags of an object (GetObjectTagging; of that version if ``version_id``).
        ``ObjectMissing`` if it (or that version) is gone."""
        what = f"GET tagging of {bucket}/{key}" + (f"?versionId={version_id}" if version_id else "")
        if version_id is not None:
            call = partial(self.s3.get_object_tagging, Bucket=s3_name(bucket), Key=key, VersionId=version_id)
        else:
            call = partial(self.s3.get_object_tagging, Bucket=s3_name(bucket), Key=key)
        resp = self._call(what, call)
        return {str(t["Key"]): str(t["Value"]) for t in resp.get("TagSet", [])}

    def iter_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectTypeDef]:
        """Raw ListObjectsV2 entries (Key, Size, ETag, LastModified) of a bucket."""
        req: ListObjectsV2RequestTypeDef = {"Bucket": s3_name(bucket), "Prefix": prefix, "MaxKeys": LIST_PAGE}
        while True:
            resp = self._call(f"list {bucket}", partial(self.s3.list_objects_v2, **req))
            yield from resp.get("Contents", [])
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            req["ContinuationToken"] = token

    # -- writing (restore)

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self._call(f"HEAD bucket {bucket}", lambda: self.s3.head_bucket(Bucket=s3_name(bucket)))
            return
        except (ObjectMissing, PermanentError) as ex:
            if isinstance(ex, PermanentError) and "404" not in str(ex) and "NoSuchBucket" not in str(ex):
                raise
        self._call(f"create bucket {bucket}", lambda: self.s3.create_bucket(Bucket=s3_name(bucket)))

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str],
        content_type: str | None,
        headers: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        req: PutObjectRequestTypeDef = {"Bucket": s3_name(bucket), "Key": key, "Body": data, "Metadata": dict(metadata)}
        req.update(_content_args(content_type, headers, tags))  # type: ignore[typeddict-item]
        self._call(f"PUT {bucket}/{key}", partial(self.s3.put_object, **req))

    def create_multipart(
        self,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str],
        content_type: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Start a multipart upload. Its tags go on after completion (``put_tags``): radosgw
        (Reef 18.2.7, measured) accepts ``x-amz-tagging`` here and keeps no tags."""
        req: CreateMultipartUploadRequestTypeDef = {"Bucket": s3_name(bucket), "Key": key, "Metadata": dict(metadata)}
        req.update(_content_args(content_type, headers))  # type: ignore[typeddict-item]
        resp = self._call(f"create upload {bucket}/{key}", partial(self.s3.create_multipart_upload, **req))
        return str(resp["UploadId"])

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        resp = self._call(
            f"upload part {number} of {bucket}/{key}",
            lambda: self.s3.upload_part(Bucket=s3_name(bucket), Key=key, UploadId=upload_id, PartNumber=number, Body=data),
        )
        return str(resp["ETag"])

    def complete_multipart(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
        done: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]}
        self._call(
            f"complete upload {bucket}/{key}",
            lambda: self.s3.complete_multipart_upload(Bucket=s3_name(bucket), Key=key, UploadId=upload_id, MultipartUpload=done),
        )

    def put_tags(self, bucket: str, key: str, tags: Mapping[str, str]) -> None:
        """Set an object's tags (PutObjectTagging), replacing any it has."""
        tagset: list[TagTypeDef] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        self._call(
            f"PUT tagging of {bucket}/{key}",
            lambda: self.s3.put_object_tagging(Bucket=s3_name(bucket), Key=key, Tagging={"TagSet": tagset}),
        )

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        with contextlib.suppress(ChangelogError):
            self._call(
                f"abort upload {bucket}/{key}",
                lambda: self.s3.abort_multipart_upload(Bucket=s3_name(bucket), Key=key, UploadId=upload_id),
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.s3.close()


def _content_args(
    content_type: str | None, headers: Mapping[str, str] | None, tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """PutObject's and CreateMultipartUpload's arguments for a restored object's Content-Type,
    content headers (``model.CONTENT_HEADERS``; any other name is left out) and tags (the
    ``x-amz-tagging`` header, a URL query string: spaces as %20, not "+", which radosgw keeps as
    a plus sign: measured on Reef)."""
    out = {h: v for h, v in (headers or {}).items() if h in CONTENT_HEADERS}
    if content_type:
        out["ContentType"] = content_type
    if tags:
        out["Tagging"] = urlencode(sorted(tags.items()), quote_via=quote)
    return out
