"""Apply ONE change-log record to ONE replication site: the state change a record describes,
read from the source zone and written to the site's bucket through their S3 clients.

What each op does at the site (docs of the interface: ``apply_record``):

* ``write``: the source version (or, for the null version, the object whose ETag the record
  names) is streamed to the site by s3transfer (multipart above the threshold; in memory at
  most ``max_in_memory_upload_chunks`` x ``multipart_chunksize``, 10 x 8 MiB by default, plus a
  read buffer), with its content headers, user metadata and tags, plus the replica
  metadata (``REPLICA_META`` and ``SRC_*``) that names the source. A write whose state is gone
  at the source (version deleted, ETag changed: a later record carries the newer state) is
  skipped. On a versioned site a write of a version already replicated (the caller's version
  map) is a change of its tags: only the tags of that site version are updated.
* ``delete``: of the null version / an unversioned object, deletes the site's object (or the
  mapped site version), unless the source has it again; of a version, deletes the mapped site
  version.
* ``delete_marker``: a delete marker at a versioned site, a delete at an unversioned one.
* ``bucket_create`` / ``bucket_delete``: nothing. The site's buckets are the operator's: they
  are made and configured (versioning, lifecycle, access) where they live.

Deliberate limits:

* **ACLs are not copied.** A grant names a canonical user id (or an e-mail) of the source zone's
  user database; those ids do not exist at another zone or a cloud, where a copied grant would
  be refused or, worse, match someone else. A replica gets the site's default ACL (owned by
  the site credentials' user). A ``PutObjectAcl`` arrives as a write: it re-copies an
  unversioned object and is a no-op change of tags on a replicated version.
* Object lock, server-side encryption settings and checksums are not copied.
* A delete marker carries no metadata to recognise it by: a careful replay finds it only as
  the site's latest entry (or through the version map). Replayed with its map entry lost
  after later versions of the key reached the site, it makes a second marker (an extra
  history entry; the current state is unchanged).
* A site of an unversioned bucket mirrors the source's *current* version: a version delete
  there re-copies the source's new current version (or deletes the key if there is none).

Idempotence: ``careful=True`` (a replay whose first application may have happened) looks for
the record's replica at the site (``SRC_VERSION``/``SRC_ETAG``) before any upload, so a replay
adds no version. Errors: what may pass (site or source unreachable, 5xx, throttling after
botocore's retries) raises ``TransientError`` for the caller to retry (with ``careful=True``:
a retry may follow a half-done apply); what will not pass (403, bad credentials, a missing site
bucket, other 4xx) comes back as ``Applied("failed")`` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import IO, TYPE_CHECKING, Literal, Protocol, TypeVar, cast
from urllib.parse import quote, urlencode

from s3transfer.futures import NonThreadedExecutor, TransferFuture
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from changelog.consumers.replication import rgwx
from changelog.errors import ChangelogError, ObjectMissing, PermanentError, TransientError, one_line
from changelog.pipeline.logformat import LogRecord, parse_rfc3339
from changelog.pipeline.s3client import TranslatedBody, refusal, s3_call, translate_error

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.client import BaseClient
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import (
        DeleteObjectRequestTypeDef,
        GetObjectOutputTypeDef,
        GetObjectRequestTypeDef,
        HeadObjectRequestTypeDef,
        ListObjectVersionsRequestTypeDef,
        TaggingTypeDef,
    )

logger = logging.getLogger(__name__)

# User-metadata keys (x-amz-meta-...) written on every replica.
REPLICA_META = "rgwcl-replica"
SRC_ZONE, SRC_BUCKET, SRC_KEY, SRC_VERSION, SRC_ETAG = (
    "rgwcl-src-zone",
    "rgwcl-src-bucket",
    "rgwcl-src-key",
    "rgwcl-src-version",
    "rgwcl-src-etag",
)
# The source object's mtime (whole seconds since the epoch, as HEAD's Last-Modified gives it):
# a replica's place in two-way replication's last-writer-wins order (its own mtime is the time
# it was copied).
SRC_MTIME = "rgwcl-src-mtime"
# The record metadata key of who wrote a change (``[source] record_writer``).
WRITER = "writer"
# Two-way: seconds a peer's clock may run ahead of this zone's: a peer write stamped later than
# this after its replica was written here is a later write, not the content the replica brought.
CLOCK_SLACK = 2
# The record metadata key of a plain delete's deleted object's mtime (``[source] record_writer``).
DELETED_MTIME = "deleted_mtime"
# The record metadata key of a version's or delete marker's OLH epoch (``[source] record_writer``).
OLH_EPOCH = "olh_epoch"
# ``Applied.reason`` prefixes of two-way skips: an echo (a replica the peer wrote here), and a
# write or delete older than what the peer holds (last writer wins).
ECHO = "echo: "
OLDER = "last writer wins: "
REPLICA_VALUE = "true"
# The longest percent-encoded key kept as it is in ``SRC_KEY`` (longer: its digest).
SRC_KEY_MAX = 512
# Two-way, versioned: the site endpoints whose radosgw checks a PUT's ``If-None-Match`` against
# the key's current entry (20.2), not against the version placed (16.2): ``mirror_write``'s
# guard of a null version is not sent there (learnt at the first 412, per process).
KEY_CONDITIONS: set[str] = set()
# Two-way, versioned: the epochs a placeholder version is tried at, from a delete marker's
# own, to find the key's OLH epoch at the site (``mirror_marker``).
PLACEHOLDER_TRIES = 16
# The null version's id, in SRC_VERSION and as the version map's key.
NULL = "null"
# Site versions a careful apply HEADs looking for a replica, newest first: a replay concerns the
# records of one uncommitted log object, so its replica, if any, is among the key's newest.
CAREFUL_HEADS = 8
# Read buffer between the source's response body and s3transfer: reads of whole parts in few
# socket reads, and fixed memory whatever the object's size.
READ_BUFFER = 256 * 1024
# The content headers a replica gets from its source.
CONTENT_HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")

T = TypeVar("T")


@dataclass(frozen=True)
class Destination:
    """A site's bucket, as one apply writes to it."""

    client: S3Client  # the site's client (``changelog.pipeline.s3client.make_s3_client``)
    bucket: str  # destination bucket name at the site
    versioned: bool  # site bucket versioning Enabled (the caller learns it once per bucket)
    storage_class: str | None = None  # storage class of replicas, None: the site's default
    zone: str = ""  # source zone name written into SRC_ZONE
    # Two-way replication (REP.2): the site also replicates to this zone. Its replica writes
    # here are echoes (never sent back): recognised by their writer (``replica_writers``: the
    # identities its replicator writes here as) or, when a record has no writer, by the
    # source object's replica metadata naming ``peer_zone``. Writes and deletes follow last
    # writer wins (``docs/design.md`` §15).
    two_way: bool = False
    peer_zone: str = ""
    replica_writers: frozenset[str] = frozenset()


class Before(Protocol):
    """What this zone's log said of a key before a record (``two_way.Before``)."""

    @property
    def overwrote(self) -> str | None: ...
    @property
    def overwrote_at(self) -> int: ...
    @property
    def written(self) -> str | None: ...
    @property
    def written_echo(self) -> bool: ...


class VersionMap(Protocol):
    """Source version id -> site version id, per (site bucket, key); kept by the caller."""

    def get(self, key: str, src_version: str) -> str | None: ...


class Ledger(Protocol):
    """Two-way, versioned: the versions and delete markers the replicator placed at this site
    bucket that its checkpoint does not cover yet (``Applied.placed`` of the records applied
    before, kept by the caller: ``consumer`` saves them with each record's outcome). One of them
    missing at the site now was deleted there by a user since: not placed again."""

    def placed(self, key: str, version: str) -> bool: ...


@dataclass
class Applied:
    """What applying one record did."""

    status: Literal["completed", "skipped", "failed"]
    # skipped: why ("superseded: ..."); failed: the one-line error; completed: a note or None.
    reason: str | None = None
    bytes: int = 0  # content bytes copied
    requests: int = 0  # S3 requests this apply made (source + site)
    map_set: dict[str, str] = field(default_factory=dict)  # src_version -> site_version to remember
    map_remove: list[str] = field(default_factory=list)  # src_versions to forget
    # Two-way, versioned: the version or marker ids placed at the site (for the ``Ledger``).
    placed: list[str] = field(default_factory=list)


class ContentChanged(ChangelogError):
    """A conditional GET found another object than the record's (412)."""


class _Skip(Exception):
    """The record's state is gone at the source; a later record carries the newer one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _translate(ex: Exception, what: str) -> ChangelogError:
    """``translate_error``, refined: a missing version, a delete marker addressed by version
    (405) and radosgw's 400 for an unknown version id are ``ObjectMissing``, 412 is
    ``ContentChanged``; a missing bucket stays permanent."""
    r = refusal(ex)
    if r is not None:
        if r.status == 412 or r.code == "PreconditionFailed":
            return ContentChanged(f"{what}: {r}")
        if r.code in ("NoSuchKey", "NoSuchVersion") or (r.status in (404, 405) and r.code != "NoSuchBucket"):
            return ObjectMissing(f"{what}: {r}")
        if r.status == 400 and r.code == "InvalidArgument" and "version" in r.message.lower():
            return ObjectMissing(f"{what}: {r}")
    return translate_error(ex, what)


def _at(fn: Callable[..., T], version: str | None) -> Callable[..., T]:
    """``fn`` (an S3 call on a key) for ``version``; None: the key's current object."""
    return partial(fn, VersionId=version) if version is not None else fn


def _vid(v: object) -> str | None:
    """A version id from a response; None for none or the null version."""
    return None if v in (None, "", NULL) else str(v)


def _seconds(t: object) -> int | None:
    """Whole seconds since the epoch of a response's ``LastModified``."""
    return int(t.timestamp()) if isinstance(t, datetime) else None


def src_key(key: str) -> str:
    """``SRC_KEY``'s value: the key percent-encoded (a header value is ASCII), or for a key
    whose encoding is longer than ``SRC_KEY_MAX`` its SHA-256 (AWS allows 2 KB of user metadata
    in all, and a 1,024-byte key of 3-byte characters encodes to 3 KB)."""
    quoted = quote(key, safe="")
    if len(quoted) <= SRC_KEY_MAX:
        return quoted
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def is_replica(metadata: Mapping[str, str], key: str, bucket: str) -> bool:
    """``metadata`` is a replica's of ``key`` from source bucket ``bucket``, as a replicator
    wrote it. A user's CopyObject of a replica carries the same metadata (S3 copies user
    metadata unless told otherwise), naming the key and bucket it was copied from: that copy is
    a user's write, not a replica."""
    return (
        metadata.get(REPLICA_META) == REPLICA_VALUE
        # (the full encoding too: what a long key's replica written before the digest holds)
        and metadata.get(SRC_KEY) in (src_key(key), quote(key, safe=""))
        and metadata.get(SRC_BUCKET) == bucket
    )


def origin_order(
    mtime: int | None, zone: str, metadata: Mapping[str, str], *, key: str, bucket: str
) -> tuple[int, str]:
    """Where an object version of ``key`` stands in two-way replication's last-writer-wins
    order: its origin's mtime in whole seconds (a replica's ``SRC_MTIME``, else its own
    Last-Modified), then its origin zone's name (a replica's ``SRC_ZONE``, else ``zone``, where
    it was written): in a tie within a second the zone named last wins. ``bucket``: the source
    bucket a replica of it names (``is_replica``; a user's copy of a replica is an original).
    Both sites compute the same order for the same version from a HEAD (Last-Modified has whole
    seconds), so they pick the same winner; and a zone's own versions of one second keep their
    order against the other zone's (an ETag tie-break would interleave them)."""
    if is_replica(metadata, key, bucket):
        origin = metadata.get(SRC_MTIME, "")
        if origin.isdigit():
            return int(origin), metadata.get(SRC_ZONE) or zone
    return mtime or 0, zone


def _etag(e: object) -> str | None:
    return str(e).strip('"') or None if e else None


def _headers(ex: BaseException | None) -> Mapping[str, str]:
    """The HTTP headers of the S3 error response behind ``ex`` (a HEAD's 404 tells a delete
    marker only there)."""
    resp = getattr(ex, "response", None)
    meta = resp.get("ResponseMetadata", {}) if isinstance(resp, dict) else {}
    headers = meta.get("HTTPHeaders", {}) if isinstance(meta, dict) else {}
    return headers if isinstance(headers, dict) else {}


@dataclass(frozen=True)
class _Head:
    """What a HEAD says of one object version, or of a delete marker (``delete_marker``)."""

    version_id: str | None
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    delete_marker: bool = False
    mtime: int | None = None  # Last-Modified, whole seconds since the epoch


@dataclass
class _SourceObject:
    """An open GET of the source version to copy."""

    body: IO[bytes]
    size: int
    etag: str | None
    version_id: str | None
    metadata: Mapping[str, str]
    response: GetObjectOutputTypeDef


class _Readable(Protocol):
    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...

    def close(self) -> None: ...


class _Checked(io.RawIOBase):
    """A response body that must end after exactly ``size`` bytes: a shorter or longer stream
    raises ``TransientError`` before s3transfer completes the upload, so no cut replica is
    ever written."""

    def __init__(self, body: _Readable, size: int, what: str) -> None:
        self._body = body
        self._size = size
        self._what = what
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        n = self._body.readinto(buffer) or 0
        self.count += n
        if self.count > self._size or (n == 0 and self.count != self._size):
            raise TransientError(
                f"{self._what}: the body had {self.count} bytes of {self._size} (Content-Length)"
            )
        return n

    def close(self) -> None:
        self._body.close()
        super().close()


class _Recorder:
    """The site client as s3transfer sees it: every call passed through, counted, and the
    new version's id kept from the PUT or the multipart completion (s3transfer drops the
    responses)."""

    def __init__(
        self,
        client: S3Client,
        condition: Mapping[str, str] | None = None,
        place: Mapping[str, str] | None = None,
        on_upload: UploadNotes | None = None,
    ) -> None:
        self._client = client
        # Told of each multipart upload before it is begun at the site and of its id before any
        # part is sent: a process killed mid-upload cannot abort it, its successor can.
        self._on_upload = on_upload
        # ``rgwx`` parameters of the request that makes the object (in s3transfer's thread).
        self._place = dict(place or {})
        self._lock = threading.Lock()  # parts are uploaded by s3transfer's threads
        self.calls = 0
        self.version_id: str | None = None
        # ``IfMatch``/``IfNoneMatch`` for the request that makes the object (s3transfer passes
        # no conditions through its extra arguments).
        self._condition = dict(condition or {})

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def put_object(self, **kwargs: object) -> Mapping[str, object]:
        self._count()
        kwargs.update(self._condition)
        with rgwx.params(self._place):
            resp = cast("Mapping[str, object]", self._client.put_object(**kwargs))  # type: ignore[arg-type]
        self.version_id = _vid(resp.get("VersionId"))
        return resp

    def complete_multipart_upload(self, **kwargs: object) -> Mapping[str, object]:
        self._count()
        kwargs.update(self._condition)
        with rgwx.params(self._place):
            resp = cast("Mapping[str, object]", self._client.complete_multipart_upload(**kwargs))  # type: ignore[arg-type]
        self.version_id = _vid(resp.get("VersionId"))
        return resp

    def create_multipart_upload(self, **kwargs: object) -> object:
        self._count()
        noted = self._on_upload(str(kwargs["Bucket"]), str(kwargs["Key"])) if self._on_upload else None
        resp = cast("Mapping[str, object]", self._client.create_multipart_upload(**kwargs))  # type: ignore[arg-type]
        if noted is not None:
            try:
                noted(str(resp["UploadId"]))
            except BaseException:
                # s3transfer registers its abort only once this call returned.
                with contextlib.suppress(Exception):
                    self.abort_multipart_upload(
                        Bucket=kwargs["Bucket"], Key=kwargs["Key"], UploadId=resp["UploadId"]
                    )
                raise
        return resp

    def upload_part(self, **kwargs: object) -> object:
        self._count()
        return self._client.upload_part(**kwargs)  # type: ignore[arg-type]

    def abort_multipart_upload(self, **kwargs: object) -> object:
        self._count()
        return self._client.abort_multipart_upload(**kwargs)  # type: ignore[arg-type]


class _KnownSize(BaseSubscriber):
    """Tells s3transfer the size of the stream it uploads (it cannot learn it from a response
    body): it then sizes the parts so that an object fits in 10,000 of them, S3's and radosgw's
    limit (``rgw_multipart_part_upload_limit``), instead of cutting ``part_bytes`` parts and
    failing past ~78 GiB at the default 8 MiB."""

    def __init__(self, size: int) -> None:
        self.size = size

    def on_queued(self, future: TransferFuture, **kwargs: object) -> None:
        future.meta.provide_transfer_size(self.size)


MIB = 1 << 20
# The smallest part S3 (and s3transfer) allows but the last.
MIN_PART = 5 * MIB
# Part sizes of the common clients, the most common first (AWS CLI and boto3, rclone, s3cmd).
COMMON_PARTS = (8 * MIB, 5 * MIB, 15 * MIB, 16 * MIB, 10 * MIB)


def source_part_size(etag: str | None, size: int, part_bytes: int) -> int | None:
    """The part size a multipart source object was most likely uploaded in, from its ETag
    (``<md5>-<N>``) and size: its size for a single part, else the first of the common clients'
    part sizes (``COMMON_PARTS``: the AWS CLI and boto3 8 MiB, rclone 5 MiB, s3cmd 15 MiB) that
    cuts ``size`` into N parts, else the smallest whole number of MiB from 5 MiB up that does.
    Copied in parts of that size, the replica has the source's ETag (radosgw 18.2 ignores
    ``partNumber`` on a HEAD: the layout cannot be asked for); a guess that is wrong (parts of
    uneven sizes) costs only that: the replica's ETag differs, its content is the same. None:
    not a multipart ETag, no whole MiB fits, or parts larger than twice ``part_bytes`` (what
    bounds an upload's memory)."""
    if not etag or size <= 0:
        return None
    _, dash, count = etag.strip('"').rpartition("-")
    if not dash or not count.isdigit() or int(count) < 1:
        return None
    parts = int(count)
    if parts == 1:
        return size if size <= 2 * part_bytes else None
    smallest = max(MIN_PART, -(-size // parts))
    fits = [p for p in COMMON_PARTS if p >= smallest and (parts - 1) * p < size]
    part = fits[0] if fits else -(-smallest // MIB) * MIB
    if (parts - 1) * part >= size or part > 2 * part_bytes:
        return None
    return part


# ``on_upload(site bucket, key)``: called before a multipart upload is begun at the site (to
# note it), returns what is called with the upload's id once it is known.
UploadNotes = Callable[[str, str], Callable[[str], None]]


def apply_record(
    rec: LogRecord,
    source: S3Client,
    dest: Destination,
    versions: VersionMap,
    *,
    careful: bool = False,
    transfer: TransferConfig | None = None,
    retry: bool = False,
    before: Before | None = None,
    on_upload: UploadNotes | None = None,
    ledger: Ledger | None = None,
) -> Applied:
    """Apply ``rec`` to ``dest``, reading the source through ``source``. ``versions``: the
    caller's map of this site bucket's versions (read only: the changes come back in
    ``map_set``/``map_remove``, to be kept with the checkpoint). ``careful``: the record may
    have been applied already (a replay after a crash, a retry): check the site first.
    ``transfer``: s3transfer's settings (boto3's ``TransferConfig`` is one); None: defaults.
    ``retry``: the record is applied out of its order (a failed entry retried after later
    records of the key may have reached the site): a write or a delete marker is applied only
    while it is still the source's current state, so it never lands on top of a newer one.
    ``before`` (two-way): what this zone's log said of the key before ``rec``
    (``two_way.KeyMemory``): the peer's replica this zone's users overwrote, what a delete
    deleted. ``on_upload``: told of each multipart upload before it is begun at the site, and
    of its id before its parts are sent (to abort it if this process dies mid-upload).
    ``ledger`` (two-way, versioned): what the replicator placed at the site and its checkpoint
    does not cover yet; what it placed this time comes back in ``placed``, to be kept with the
    record's outcome. Raises ``TransientError`` when trying again later may succeed."""
    if rec.is_bucket_op:
        return Applied("completed", reason="bucket operations are not replicated: buckets are the operator's")
    if not rec.key:
        return Applied("failed", reason=f"{rec.op} record {rec.id} without a key")
    writer = rec.metadata.get(WRITER)
    if writer is not None and writer in dest.replica_writers:
        return Applied("skipped", reason=f"{ECHO}written here by {writer}, the peer's replicator")
    run = _Apply(rec, rec.key, source, dest, versions, careful=careful, transfer=transfer, retry=retry)
    run.before = before
    run.on_upload = on_upload
    run.ledger = ledger
    try:
        return run.run()
    except _Skip as ex:
        return Applied("skipped", reason=ex.reason, requests=run.requests, placed=run.placed_ids)
    except (PermanentError, ObjectMissing, ContentChanged) as ex:
        logger.debug("apply %s failed", rec.id, exc_info=True)
        # What was done before the failure stays true at the site: return it to be kept.
        return Applied(
            "failed",
            reason=one_line(str(ex)),
            requests=run.requests,
            map_set=run.map_set,
            map_remove=run.map_remove,
            placed=run.placed_ids,
        )


class _Apply:
    """One record's application (used once)."""

    def __init__(
        self,
        rec: LogRecord,
        key: str,
        source: S3Client,
        dest: Destination,
        versions: VersionMap,
        *,
        careful: bool,
        transfer: TransferConfig | None,
        retry: bool = False,
    ) -> None:
        self.rec = rec
        self.retry = retry
        self.key = key
        self.source = source
        self.dest = dest
        self.versions = versions
        self.careful = careful
        self.transfer = transfer
        self.requests = 0
        self.bytes = 0
        self.map_set: dict[str, str] = {}
        self.map_remove: list[str] = []
        self.before: Before | None = None
        self.on_upload: UploadNotes | None = None
        self.ledger: Ledger | None = None
        self.placed_ids: list[str] = []
        self.tags_written = False  # ``sync_tags`` changed the site's tags
        # Two-way: the peer's object must still be the one ``last_writer_wins`` judged.
        self.condition: dict[str, str] | None = None

    # -- requests

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self.requests += 1
        return s3_call(what, fn, _translate)

    def _site(self, op: str, version: str | None = None) -> str:
        v = f"?versionId={version}" if version else ""
        return f"{op} {self.dest.bucket}/{self.key}{v} at {self.dest.client.meta.endpoint_url}"

    def _src(self, op: str, version: str | None = None) -> str:
        v = f"?versionId={version}" if version else ""
        return f"{op} source {self.rec.s3_bucket}/{self.key}{v}"

    def _done(self, reason: str | None = None) -> Applied:
        return Applied(
            "completed",
            reason=reason,
            bytes=self.bytes,
            requests=self.requests,
            map_set=self.map_set,
            map_remove=self.map_remove,
            placed=self.placed_ids,
        )

    def run(self) -> Applied:
        op = self.rec.op
        if self.dest.two_way and self.dest.versioned:
            return self.mirror()
        if op == "write":
            return self.write()
        if op == "delete":
            return self.delete() if self.rec.version_id is None else self.delete_version(self.rec.version_id)
        if op == "delete_marker":
            return self.delete_marker()
        raise PermanentError(f"record {self.rec.id}: unknown op {op!r}")

    # -- the ops

    def write(self) -> Applied:
        rec, v = self.rec, self.rec.version_id
        sv = v or NULL
        if self.dest.versioned and v is not None:
            mapped = self.versions.get(self.key, v)
            # A version's content never changes: the record is a change of its tags (or ACL).
            if mapped is not None and self.sync_tags(v, mapped):
                return self._done("tags of the replicated version updated")
        if (v is not None and not self.dest.versioned) or self.retry:
            self.require_current(v)
        checking = self.careful or rec.baseline
        # Check before the GET when what to look for is known; else after it, with its ETag.
        early = checking and (rec.etag is not None or (v is not None and not rec.baseline))
        if early:
            found = self.already_there(sv, rec.etag)
            if found is not None:
                return self.found(sv, found)
        obj = self.get_source(v)
        with obj.body:
            if self.dest.two_way:
                self.last_writer_wins(obj)
            if checking and not early:
                found = self.already_there(sv, obj.etag)
                if found is not None:
                    return self.found(sv, found)
            try:
                site_version = self.upload(obj, sv)
            except ContentChanged as ex:
                if self.condition is None:
                    raise
                # The peer's object changed since it was judged: judge again on the retry.
                raise TransientError(f"{self._site('PUT')}: changed at the site meanwhile ({ex})") from ex
        return self.written(sv, site_version)

    def delete(self) -> Applied:
        """The null version (or the unversioned object) was deleted at the source."""
        head = self.source_head()
        stale = None
        if head is not None and not head.delete_marker and head.version_id is None:
            if not (self.dest.two_way and self.stale_peer_replica(head)):
                raise _Skip("superseded: rewritten at the source")
            stale = head
        if self.dest.two_way:
            done = self.delete_two_way()
            if stale is not None:
                self.delete_source_replica()
            return done
        if self.dest.versioned:
            mapped = self.versions.get(self.key, NULL)
            if mapped is None and self.careful:
                found = self.find_replica(NULL, None)
                mapped = found.version_id if found is not None else None
            if mapped is not None:
                self.delete_site(mapped)
                self.map_remove.append(NULL)
                return self._done()
        self.delete_site(None)
        return self._done()

    def delete_version(self, v: str) -> Applied:
        if self.dest.versioned:
            mapped = self.versions.get(self.key, v)
            if mapped is None and self.careful:
                found = self.find_replica(v, None)
                mapped = found.version_id if found is not None else None
            if mapped is None:
                return self._done(f"nothing to delete: no replica of version {v} at the site")
            self.delete_site(mapped)
            self.map_remove.append(v)
            return self._done()
        head = self.site_head()
        if head is not None and head.metadata.get(SRC_VERSION) != v:
            raise _Skip("version delete on an unversioned site: the site holds another version")
        # The site mirrors the source's current version, which this delete may have changed
        # (the deleted version was current, or was a delete marker hiding an older one).
        return self.resync_current()

    def delete_marker(self) -> Applied:
        sv = self.rec.version_id or NULL
        if not self.dest.versioned:
            # A retry comes after later records of the key: on an unversioned site an old
            # marker would delete the newer write they brought.
            if self.retry:
                self.require_current_marker(sv)
            self.delete_site(None)
            return self._done()
        # A marker's own id maps only to its site marker (the null id may map to a version).
        if sv != NULL and self.versions.get(self.key, sv) is not None:
            return self._done("the delete marker is already at the site")
        if self.retry:
            self.require_current_marker(sv)
        if self.careful:
            # Markers carry no metadata: this one is recognised by its place. At the source it is
            # the n-th of a run of consecutive markers on top of the key's last version; a replay
            # comes before any later record of the key, so if it reached the site, the site's top
            # run of markers has at least n of them, the n-th from the bottom being this one.
            n = self.marker_position(self.source, self.rec.s3_bucket, sv)
            if n is None:
                raise _Skip("superseded: the delete marker is gone at the source")
            run = self.top_markers(self.dest.client, self.dest.bucket)
            if len(run) >= n:
                self.map_set[sv] = run[len(run) - n]
                self.drop_old_null(sv, run[len(run) - n])
                return self._done("the delete marker is already at the site")
        marker = self.delete_site(None)
        if marker is not None:
            self.map_set[sv] = marker
        # A null delete marker (suspended source) replaces the null version.
        self.drop_old_null(sv, marker)
        return self._done()

    def require_current_marker(self, sv: str) -> None:
        """A retried delete marker still hides the key at the source, else ``_Skip``."""
        head = self.source_head()
        if head is None or not head.delete_marker or (head.version_id or NULL) != sv:
            raise _Skip("superseded: the delete marker is no longer current at the source")

    # -- two-way (REP.2)

    def last_writer_wins(self, obj: _SourceObject) -> None:
        """Before a write reaches the peer: ``_Skip`` when it is an echo (the source object is
        the peer's own replica) or when the peer holds a newer write. One HEAD at the peer.

        The write is this zone's current version (the source GET checked it), so it replaces
        this zone's own earlier replica there, and a peer write it overwrote here
        (``Before.overwrote``). Against any other peer write, last writer wins
        (``origin_order``): a site never overwrites a newer version with an older one."""
        if self.is_peer_replica(obj.metadata):
            raise _Skip(f"{ECHO}the source object is a replica from {self.dest.peer_zone}")
        theirs = self.site_head()
        # The write replaces only what was judged here: radosgw (16.2 to 20.2) honours these on
        # a PutObject in an unversioned bucket, the ETag unquoted; 20.2 on a multipart
        # completion too (older ones ignore it there: a race of a few milliseconds remains).
        self.condition = {"IfNoneMatch": "*"} if theirs is None else {"IfMatch": theirs.etag or ""}
        if theirs is None or theirs.delete_marker:
            return
        ours = origin_order(_seconds(obj.response.get("LastModified")), self.dest.zone, {}, **self.mine)
        if self.is_own_replica(theirs):
            if (
                theirs.metadata.get(SRC_ETAG) == obj.etag
                and origin_order(0, "", theirs.metadata, **self.mine) == ours
            ):
                # The same write: a replay, or a change of its tags (PutObjectTagging logs a write
                # of the same object; on 16.2 it also moves the mtime, and the object is copied
                # again below). Tags follow the object's origin: this zone's object, its tags.
                self.sync_tags(None, None)
                raise _Skip("already at the site" + (" (its tags updated)" if self.tags_written else ""))
            return  # an earlier version of this zone's
        there = origin_order(theirs.mtime, self.dest.peer_zone, theirs.metadata, **self.mine)
        if self.overwrote(theirs, there[0]):
            return  # the peer still holds what this zone's users overwrote here
        if there > ours:
            raise _Skip(f"{OLDER}the site holds a newer write ({there} > {ours})")

    @property
    def mine(self) -> dict[str, str]:
        """``origin_order``'s key and bucket for a site object: this zone's replicas there name
        this key of this zone's bucket."""
        return {"key": self.key, "bucket": self.rec.s3_bucket}

    @property
    def theirs(self) -> dict[str, str]:
        """``origin_order``'s key and bucket for a source object: the peer's replicas here name
        this key of the peer's bucket (this zone's site bucket)."""
        return {"key": self.key, "bucket": self.dest.bucket}

    def is_own_replica(self, head: _Head) -> bool:
        """``head``, at the site, is a replica of this zone's (written by its replicator), not
        a peer user's copy of one."""
        return is_replica(head.metadata, **self.mine) and head.metadata.get(SRC_ZONE) == self.dest.zone

    def is_peer_replica(self, meta: Mapping[str, str]) -> bool:
        """A source object (or version) with ``meta`` is the peer's replica here, not a user's
        copy of one. (Not decided by the record's writer: with a replicator's user missing from
        ``replica_writers``, this is what stops its echoes.)"""
        return is_replica(meta, **self.theirs) and meta.get(SRC_ZONE) == self.dest.peer_zone

    def overwrote(self, theirs: _Head, origin: int) -> bool:
        """The peer's object is the content of the key's last echo here, which this zone's
        users then replaced: the same ETag, written at the peer no later than the replica
        arrived here (``CLOCK_SLACK``; a later rewrite of the same bytes is a newer write)."""
        before = self.before
        return (
            before is not None
            and before.overwrote is not None
            and before.overwrote == theirs.etag
            and origin <= before.overwrote_at + CLOCK_SLACK
        )

    def deleted_at(self) -> int:
        """The deleted object's mtime, whole seconds: the follower's ``deleted_mtime`` (the
        bilog ``del`` entry's timestamp), else the record's ``time`` (when the follower saw
        the delete: later, so a peer write in between loses to the delete)."""
        raw = self.rec.metadata.get(DELETED_MTIME)
        if raw:
            with contextlib.suppress(ValueError):
                return parse_rfc3339(raw) // 1_000_000
        return self.rec.time_us // 1_000_000

    def stale_peer_replica(self, head: _Head) -> bool:
        """The source's object, found where this zone's user deleted the key, is the peer's
        replica of a write older than the deleted object: it landed after the delete (the peer's
        replicator found the key absent here: a plain delete leaves no tombstone), and the
        delete, newer, stands on both sides."""
        meta = head.metadata
        if not self.is_peer_replica(meta):
            return False
        return origin_order(head.mtime, self.dest.peer_zone, meta, **self.theirs) < (
            self.deleted_at(),
            self.dest.zone,
        )

    def delete_source_replica(self) -> None:
        """Delete the stale peer replica at the source (``stale_peer_replica``): its echo was
        dropped, so nothing else would. This zone's follower records the delete; sent to the
        peer, it finds the key gone there."""
        what = self._src("DELETE stale replica of")
        with contextlib.suppress(ObjectMissing):
            self._call(what, partial(self.source.delete_object, Bucket=self.rec.s3_bucket, Key=self.key))

    def delete_two_way(self) -> Applied:
        """A delete reaches the peer unless the peer holds a newer write than what was
        deleted. What it deleted comes from the log (``Before``): this zone's own write (then
        whatever is older in the order goes: the deleted object's mtime and this zone), or the
        peer's content, an echo (then only that content: the same ETag, or for a multipart
        replica whose ETag differs, a peer write no newer than the replica). This zone's own
        replica there, and a peer write this zone's users had replaced, are older. Nothing
        there: nothing to do and no request written (the peer's own delete, echoed back, ends
        here)."""
        theirs = self.site_head()
        if theirs is None or theirs.delete_marker:
            return self._done("nothing to delete at the site")
        before, deleted = self.before, self.deleted_at()
        there = origin_order(theirs.mtime, self.dest.peer_zone, theirs.metadata, **self.mine)
        if self.is_own_replica(theirs) or self.overwrote(theirs, there[0]):
            older = True
        elif before is not None and before.written_echo:
            # The order only where the ETags cannot tell (a multipart original or replica: their
            # ETags differ): a peer write of the replica's second is not the replica's content.
            multipart = "-" in (before.written or "") or "-" in (theirs.etag or "")
            older = theirs.etag == before.written or (multipart and there <= (deleted, self.dest.peer_zone))
            older = older and there[0] <= deleted + CLOCK_SLACK
        else:
            older = there < (deleted, self.dest.zone)
        if not older:
            raise _Skip(f"{OLDER}the site holds a newer write than the deleted object")
        self.delete_site(None)
        return self._done()

    # -- two-way on versioned buckets (REP.2): one stack on both sides

    def mirror(self) -> Applied:
        """Both zones hold every version and delete marker of a key under the same version id
        and at the same OLH epoch (the source's, from the record's ``olh_epoch``), written by a
        system user through ``rgwx``: radosgw orders a key's stack by epoch, newest first, then
        the smaller id on top, so both stacks are one, in one order. The epoch is a Lamport
        clock: a zone's write gets its key's highest epoch + 1, replicas included, so what a
        user wrote after a replica arrived is above it on both sides; concurrent writes tie and
        the smaller version id is current on both. Echoes: a replica's records name the
        replicator as writer (dropped before this), and a version or marker already at the
        peer is not written again (a replay, or an echo that lost its writer)."""
        v = self.rec.version_id
        if v is None:
            raise PermanentError(
                f"record {self.rec.id}: the null version of versioned bucket {self.rec.s3_bucket} is not "
                "replicated two-way (written before versioning was enabled, or while suspended)"
            )
        rgwx.enable(self.dest.client)
        if self.rec.op == "write":
            return self.mirror_write(v)
        if self.rec.op == "delete":
            return self.mirror_delete(v)
        if self.rec.op == "delete_marker":
            return self.mirror_marker(v)
        raise PermanentError(f"record {self.rec.id}: unknown op {self.rec.op!r}")

    def olh_epoch(self) -> int:
        raw = self.rec.metadata.get(OLH_EPOCH, "")
        if not raw.isdigit():
            raise PermanentError(
                f"record {self.rec.id} has no {OLH_EPOCH} (a full-sync record, or [source] record_writer was "
                "off): its place in the key's versions is unknown"
            )
        return int(raw)

    def mirror_write(self, v: str) -> Applied:
        theirs = self.site_head(v)
        if theirs is not None:
            # A replay, or a change of the version's tags (a write of the same version). Tags
            # follow the version's origin: only this zone's own versions' tags are sent, so a
            # tag change never goes back and forth.
            if self.is_own_replica(theirs):
                with contextlib.suppress(_Skip):
                    self.sync_tags(v, v)
            return self._done("the version is already at the site")
        if self.placed_before(v):
            raise self.deleted_since(v)
        # A version placed in a bucket whose versioning is suspended replaces the null version
        # (radosgw answers with the id asked for: measured on 16.2 and 20.2), and the caller's
        # knowledge of the bucket may be a minute old. 16.2 checks ``If-None-Match: *`` against
        # the version placed: a new id passes, the null version of a suspended bucket is a 412.
        # 20.2 checks it against the key's current entry (a 412 on most placements): learnt at
        # the first 412 in a bucket with versioning on, then not sent to that site again.
        endpoint = str(self.dest.client.meta.endpoint_url)
        while True:
            guarded = endpoint not in KEY_CONDITIONS
            obj = self.get_source(v)
            with obj.body:
                if self.is_peer_replica(obj.metadata):
                    # The peer's version, no longer there: deleted since (its delete follows).
                    raise _Skip(
                        f"{ECHO}the source version is a replica from {self.dest.peer_zone}, gone there since"
                    )
                if guarded and obj.size >= self.upload_config(obj).multipart_threshold:
                    # 16.2 and 18.2 ignore the condition on a multipart completion: one request
                    # more for an upload of several.
                    self.require_site_versioning()
                self.condition = {"IfNoneMatch": "*"} if guarded else None
                try:
                    placed = self.upload(obj, v, place=rgwx.version(v, self.olh_epoch()))
                    break
                except ContentChanged as ex:
                    if not guarded:
                        raise TransientError(f"{self._site('PUT', v)}: {ex}") from ex
                    self.require_site_versioning()
                    if self.site_head(v) is not None:
                        return self._done("the version is already at the site (placed meanwhile)")
            logger.info(
                "%s: the site checks If-None-Match against the key's current entry: not sent there again",
                self._site("PUT", v),
            )
            KEY_CONDITIONS.add(endpoint)
        self.placed("PUT", placed, v)
        self.placed_ids.append(v)
        return self._done()

    def require_site_versioning(self) -> None:
        """The site bucket's versioning, read again (the caller learns it once a minute): a
        ``PermanentError`` unless Enabled. Only where a placement could replace the null version
        of a bucket whose versioning was suspended since: before a multipart upload, and when
        a placement's condition failed."""
        where = f"bucket {self.dest.bucket} at {self.dest.client.meta.endpoint_url}"
        resp = self._call(
            f"GET versioning of {where}",
            lambda: self.dest.client.get_bucket_versioning(Bucket=self.dest.bucket),
        )
        status = resp.get("Status") or "not enabled"
        if status != "Enabled":
            raise PermanentError(
                f"site {where}: versioning is {status}: a version placed there would replace its null "
                "version (enable versioning there, then retry the failed entries)"
            )

    def mirror_delete(self, v: str) -> Applied:
        """A version (or delete marker) deleted here is deleted at the peer, if it is there:
        a delete that finds nothing writes nothing (the peer's own delete, echoed back, ends
        here)."""
        theirs = self.site_head(v)
        if theirs is None and v not in self.site_stack_ids():
            return self._done(f"nothing to delete: version {v} is not at the site")
        self.delete_site(v)
        return self._done()

    def mirror_marker(self, m: str) -> Applied:
        if (self.careful or self.retry) and m in self.site_stack_ids():
            self.delete_placeholder(m)
            return self._done("the delete marker is already at the site")
        if self.careful or self.retry:
            if self.placed_before(m):
                # Placed, then removed by a site user (an undelete); a crash mid-way may have
                # left its placeholder.
                self.delete_placeholder(m)
                raise self.deleted_since(m)
            if m not in self.stack_ids(self.source, self.rec.s3_bucket, self._src("list versions of")):
                # Gone at the source since (an undelete): a crash mid-way below may have left
                # its placeholder at the site, current.
                self.delete_placeholder(m)
                raise _Skip(f"superseded: delete marker {m} is gone at the source")
        epoch = self.olh_epoch()
        self.place_marker(m, epoch)
        if m in self.site_stack_ids():
            # (noted once seen: 16.2 and 18.2 answer a dropped marker with its id too)
            self.placed_ids.append(m)
            # A replay after a crash mid-way below: the placeholder that the marker was placed
            # on the first time round may still be there.
            self.delete_placeholder(m)
            return self._done()
        # radosgw 16.2 and 18.2 drop a delete marker while the key's current entry is one (ceph
        # PR #41897, reverted in 20.2): make a placeholder version current, place the marker,
        # remove the placeholder. cls_rgw (rgw_bucket_link_olh, rgw_bucket_unlink_instance,
        # BIOLHEntry::start_modify) decides how, with the key's OLH epoch O, which S3 does not
        # show:
        # * a link at epoch P < O is written below the top and changes nothing else; at P >= O
        #   it sets O = P and becomes current (on a tie, if its id sorts first: the
        #   placeholder's id sorts before any radosgw makes);
        # * an unlink at epoch P < O only drops the entry from the key's list: right for an
        #   entry below the top, but the current one would stay the key's head, gone (every
        #   later PutObject of the key answers 404, measured on 16.2); without an epoch it
        #   raises O by one, and the peer's next write, at its own epoch, then lands below the
        #   top here.
        # So the placeholder goes in at the marker's epoch, then one higher, ... until it is
        # current (P = max(epoch, O); each miss is removed below the top at its own epoch, at
        # no cost to O); the marker goes in at its epoch; the placeholder is removed at P, and
        # the key's head moves to whatever its list has on top. O ends as a plain placement of
        # the marker would leave it. Readers may see the empty placeholder for a few
        # milliseconds.
        placeholder = self.placeholder(m)
        for at in range(epoch, epoch + PLACEHOLDER_TRIES):
            self.rgwx_put(placeholder, at)
            if self.current_id() == placeholder:
                self.place_marker(m, epoch)
                self.delete_at(placeholder, at)
                break
            self.delete_at(placeholder, at)
        if m not in self.site_stack_ids():
            raise TransientError(f"{self._site('DELETE')}: delete marker {m} was not placed at the site")
        self.placed_ids.append(m)
        return self._done("placed under a placeholder version (the key's current entry was a delete marker)")

    def placed_before(self, v: str) -> bool:
        """The ``Ledger`` says ``v`` (missing at the site: the caller looked) was placed there
        before: a user of the site deleted it since, and the site's record of that delete comes
        back here. Placed again (a replay after a crash, a later record of the same version), it
        would be back at the site, which its user deleted."""
        return self.ledger is not None and self.ledger.placed(self.key, v)

    @staticmethod
    def deleted_since(v: str) -> _Skip:
        return _Skip(f"superseded: {v} was placed at the site, deleted there since (its delete comes back)")

    @staticmethod
    def placeholder(m: str) -> str:
        """The placeholder version's id for placing marker ``m``: fixed, so that a replay after
        a crash mid-way deletes it; "--" first, so that it sorts before every version id
        radosgw makes (letters, digits, "-", ".", "_")."""
        return f"--rgwcl-placeholder-{m}"

    def delete_placeholder(self, m: str) -> None:
        """On a replay (``careful``): the placeholder of ``m`` is deleted, if a crash left it
        (deleting a version id that is not there writes nothing, not even a log entry)."""
        if self.careful or self.retry:
            self.delete_site(self.placeholder(m))

    def placed(self, what: str, made: str | None, wanted: str) -> None:
        """The site made ``made`` where ``wanted`` was asked for: a user that is not a system
        user (its ``rgwx-`` parameters are ignored). The stray entry is removed again."""
        if made == wanted:
            return
        if made is not None:
            self.delete_site(made)
        raise PermanentError(
            f"{self._site(what)}: the site made {made or 'nothing'} instead of {wanted}: the replicator's user there "
            "must be a system user (radosgw-admin user modify --uid ... --system) to place versions"
        )

    def place_marker(self, m: str, epoch: int) -> None:
        delete = partial(self.dest.client.delete_object, Bucket=self.dest.bucket, Key=self.key)
        with rgwx.params(rgwx.version(m, epoch)):
            resp = self._call(self._site("DELETE (marker)", m), delete)
        # 16.2 and 18.2 answer a dropped marker with its id too (the caller lists the key).
        self.placed("DELETE (marker)", _vid(resp.get("VersionId")), m)

    def delete_at(self, version: str, epoch: int) -> None:
        """Delete one version at the site at OLH epoch ``epoch`` (not the key's epoch + 1): only
        a version below the top, or the current one at the key's OLH epoch (``mirror_marker``)."""
        delete = partial(
            self.dest.client.delete_object, Bucket=self.dest.bucket, Key=self.key, VersionId=version
        )
        with contextlib.suppress(ObjectMissing), rgwx.params({rgwx.EPOCH: str(rgwx.clamp_epoch(epoch))}):
            self._call(self._site("DELETE", version), delete)

    def current_id(self) -> str | None:
        """The version id of the site key's current entry (a marker's too)."""
        head = self.site_head()
        return head.version_id if head is not None else None

    def rgwx_put(self, version: str, epoch: int) -> None:
        meta = {
            REPLICA_META: REPLICA_VALUE,
            SRC_ZONE: self.dest.zone,
            SRC_BUCKET: self.rec.s3_bucket,
            SRC_KEY: src_key(self.key),
        }
        put = partial(
            self.dest.client.put_object,
            Bucket=self.dest.bucket,
            Key=self.key,
            Body=b"",
            Metadata=meta,
            ACL="bucket-owner-full-control",
        )
        guarded = str(self.dest.client.meta.endpoint_url) not in KEY_CONDITIONS
        try:
            # The condition as for a version (``mirror_write``): not the null version.
            with rgwx.params(rgwx.version(version, epoch)):
                resp = self._call(
                    self._site("PUT placeholder", version), partial(put, IfNoneMatch="*") if guarded else put
                )
        except ContentChanged:
            self.require_site_versioning()
            # Versioning is on: the placeholder is there already (a crash mid-way), or the site
            # checks the condition against the key's current entry (20.2): put again.
            with rgwx.params(rgwx.version(version, epoch)):
                resp = self._call(self._site("PUT placeholder", version), put)
        self.placed("PUT placeholder", _vid(resp.get("VersionId")), version)

    def site_stack_ids(self) -> set[str]:
        """The version and delete marker ids of exactly this key at the site (``stack_ids``)."""
        return self.stack_ids(self.dest.client, self.dest.bucket, self._site("list versions of"))

    def stack_ids(self, client: S3Client, bucket: str, what: str) -> set[str]:
        """The version and delete marker ids of exactly this key in ``bucket``, every page of
        them (a HEAD by version id cannot tell a delete marker from nothing: both are a bare
        404 on 16.2 to 20.2). A key's entries come first in a listing by prefix."""
        key = self.key
        ids: set[str] = set()
        req: ListObjectVersionsRequestTypeDef = {"Bucket": bucket, "Prefix": key}
        while True:
            resp = self._call(what, partial(client.list_object_versions, **req))
            rows = [*resp.get("Versions", []), *resp.get("DeleteMarkers", [])]
            ids.update(str(o.get("VersionId") or NULL) for o in rows if o.get("Key") == key)
            if any(o.get("Key") != key for o in rows) or not resp.get("IsTruncated"):
                return ids
            req["KeyMarker"] = str(resp.get("NextKeyMarker", ""))
            req["VersionIdMarker"] = str(resp.get("NextVersionIdMarker", ""))

    # -- steps

    def require_current(self, v: str | None) -> None:
        """An unversioned site holds the source's current version: a write of a version that
        is no longer current (a tag change of an old one) must not replace it. The same holds
        for a retry on any site (``retry``). ``v`` None: the null version (or an unversioned
        object)."""
        head = self.source_head()
        if head is None or head.delete_marker or head.version_id != v:
            raise _Skip(f"superseded: version {v or NULL} is no longer the current one at the source")

    def already_there(self, sv: str, etag: str | None) -> _Head | None:
        """The site object that already holds this record's state, if any: a replica of the
        same source version and ETag (careful), or for a baseline record an object of the same
        ETag (the site's own copy counts, by its plain ETag)."""
        if self.careful:
            found = self.find_replica(sv, etag)
            if found is not None:
                return found
        if self.rec.baseline and etag is not None:
            head = self.site_head()
            if head is not None and not head.delete_marker:
                meta = head.metadata
                theirs = meta.get(SRC_ETAG) if meta.get(REPLICA_META) else head.etag
                if theirs == etag:
                    return head
        return None

    def found(self, sv: str, head: _Head) -> Applied:
        if self.dest.versioned and head.version_id is not None:
            self.map_set[sv] = head.version_id
            self.drop_old_null(sv, head.version_id)
        if self.careful and head.metadata.get(REPLICA_META):
            # The first application may have stopped before a later tag change was copied.
            with contextlib.suppress(_Skip):  # the version is gone since: a later record says so
                self.sync_tags(self.rec.version_id, head.version_id if self.dest.versioned else None)
        return self._done("already at the site")

    def written(self, sv: str, site_version: str | None) -> Applied:
        if self.dest.versioned:
            if site_version is None:
                logger.warning(
                    "%s: no version id in the answer: is the bucket's versioning enabled?", self._site("PUT")
                )
                return self._done("the site gave no version id: version not mapped")
            self.map_set[sv] = site_version
            self.drop_old_null(sv, site_version)
        return self._done()

    def drop_old_null(self, sv: str, keep: str | None) -> None:
        """The source has one null version: once its new state is at the site, delete the
        site version that held the previous one."""
        if sv != NULL:
            return
        old = self.versions.get(self.key, NULL)
        if old is not None and old != keep:
            self.delete_site(old)

    def resync_current(self) -> Applied:
        """Make an unversioned site hold the source's current version, or nothing."""
        try:
            obj = self.open_source({"Bucket": self.rec.s3_bucket, "Key": self.key}, self._src("GET"))
        except ObjectMissing:
            self.delete_site(None)
            return self._done("no current version left at the source: deleted at the site")
        with obj.body:
            self.upload(obj, obj.version_id or NULL)
        return self._done("the source's current version copied")

    # -- the site

    def site_head(self, version: str | None = None) -> _Head | None:
        req: HeadObjectRequestTypeDef = {"Bucket": self.dest.bucket, "Key": self.key}
        if version is not None:
            req["VersionId"] = version
        return self._head(self.dest.client, req, self._site("HEAD", version))

    def _head(self, client: S3Client, req: HeadObjectRequestTypeDef, what: str) -> _Head | None:
        try:
            resp = self._call(what, partial(client.head_object, **req))
        except ObjectMissing as ex:
            headers = _headers(ex.__cause__)
            if headers.get("x-amz-delete-marker") == "true":
                return _Head(_vid(headers.get("x-amz-version-id")), delete_marker=True)
            return None
        return _Head(
            _vid(resp.get("VersionId")),
            _etag(resp.get("ETag")),
            dict(resp.get("Metadata") or {}),
            mtime=_seconds(resp.get("LastModified")),
        )

    def is_replica_of(self, head: _Head, sv: str, etag: str | None) -> bool:
        meta = head.metadata
        return (
            not head.delete_marker
            and meta.get(SRC_VERSION) == sv
            and meta.get(SRC_BUCKET) == self.rec.s3_bucket
            and (etag is None or meta.get(SRC_ETAG) == etag)
        )

    def find_replica(self, sv: str, etag: str | None) -> _Head | None:
        """The site version holding the replica of source version ``sv`` (and ``etag`` when
        given): the current one, or on a versioned site one of the key's newest."""
        current = self.site_head()
        if current is not None and self.is_replica_of(current, sv, etag):
            return current
        if not self.dest.versioned:
            return None
        for version in self.site_versions()[:CAREFUL_HEADS]:
            if current is not None and version == current.version_id:
                continue
            head = self.site_head(version)
            if head is not None and self.is_replica_of(head, sv, etag):
                return head
        return None

    def site_versions(self) -> list[str]:
        """Ids of the object versions (not delete markers) of exactly this key, newest first.
        The key's versions come first in a listing by prefix: longer keys sort after it."""
        resp = self._call(
            self._site("list versions of"),
            lambda: self.dest.client.list_object_versions(Bucket=self.dest.bucket, Prefix=self.key),
        )
        rows = [o for o in resp.get("Versions", []) if o.get("Key") == self.key]
        rows.sort(key=lambda o: (not o.get("IsLatest"), -o["LastModified"].timestamp()))
        return [str(o["VersionId"]) for o in rows if o.get("VersionId")]

    def _stack(self, client: S3Client, bucket: str, where: str) -> list[tuple[str, bool]]:
        """(version id, is a delete marker) of exactly this key, newest first (the first page of
        its listing: a key's own entries come first, longer keys sort after it)."""
        resp = self._call(
            f"list versions of {where} {bucket}/{self.key}",
            lambda: client.list_object_versions(Bucket=bucket, Prefix=self.key),
        )
        rows: list[tuple[bool, float, str, bool]] = [
            (not o.get("IsLatest"), -o["LastModified"].timestamp(), str(o.get("VersionId") or NULL), False)
            for o in resp.get("Versions", [])
            if o.get("Key") == self.key
        ]
        rows += [
            (not o.get("IsLatest"), -o["LastModified"].timestamp(), str(o.get("VersionId") or NULL), True)
            for o in resp.get("DeleteMarkers", [])
            if o.get("Key") == self.key
        ]
        rows.sort(key=lambda r: (r[0], r[1]))
        return [(vid, marker) for _, _, vid, marker in rows]

    def marker_position(self, client: S3Client, bucket: str, marker: str) -> int | None:
        """Where delete marker ``marker`` stands in its run of consecutive markers at the source,
        counted from the bottom (1: right on top of a version or of nothing); None: no such
        marker."""
        stack = self._stack(client, bucket, "source")
        ids = [vid for vid, _ in stack]
        if marker not in ids or not stack[ids.index(marker)][1]:
            return None
        n = 0
        for _, is_marker in stack[ids.index(marker) :]:
            if not is_marker:
                break
            n += 1
        return n

    def top_markers(self, client: S3Client, bucket: str) -> list[str]:
        """The site's delete markers on top of this key's newest version, newest first."""
        out = []
        for vid, is_marker in self._stack(client, bucket, "site"):
            if not is_marker:
                break
            out.append(vid)
        return out

    def delete_site(self, version: str | None) -> str | None:
        """Delete the site's key (or one version of it); the delete marker's id if one was made."""
        req: DeleteObjectRequestTypeDef = {"Bucket": self.dest.bucket, "Key": self.key}
        if version is not None:
            req["VersionId"] = version
        try:
            resp = self._call(self._site("DELETE", version), partial(self.dest.client.delete_object, **req))
        except ObjectMissing:
            return None  # already gone: what a delete wants
        return _vid(resp.get("VersionId")) if resp.get("DeleteMarker") else None

    def sync_tags(self, v: str | None, site_version: str | None) -> bool:
        """Give the site object (version) the source version's tags; False if that site
        version is gone (the caller's map is stale)."""
        tags = self.source_tags(v)
        client, bucket, key = self.dest.client, self.dest.bucket, self.key
        try:
            # Only a change is written: a tagging request is one more mutation at the site (a
            # careful replay finds its replica's tags already right), and radosgw 18.2's
            # DeleteObjectTagging resets the object's listed ETag and its Last-Modified.
            there = self._tag_set(client, bucket, site_version, self._site("GET tagging", site_version))
            if sorted(there) == sorted(tags):
                return True
            self.tags_written = True
            if tags:
                tagging: TaggingTypeDef = {"TagSet": [{"Key": k, "Value": val} for k, val in tags]}
                put = partial(client.put_object_tagging, Bucket=bucket, Key=key, Tagging=tagging)
                self._call(self._site("PUT tagging", site_version), _at(put, site_version))
            else:
                delete = partial(client.delete_object_tagging, Bucket=bucket, Key=key)
                self._call(self._site("DELETE tagging", site_version), _at(delete, site_version))
        except ObjectMissing:
            return False
        return True

    def upload(self, obj: _SourceObject, sv: str, *, place: Mapping[str, str] | None = None) -> str | None:
        """Stream ``obj`` to the site key; the new site version's id (None if unversioned).
        ``place``: ``rgwx`` parameters of the request that makes the object."""
        extra = self.upload_args(obj, sv)
        config = self.upload_config(obj)
        # boto3's TransferConfig(use_threads=False) runs the parts in this thread.
        executor = NonThreadedExecutor if getattr(config, "use_threads", True) is False else None
        recorder = _Recorder(self.dest.client, self.condition, place, self.on_upload)
        what = self._site("upload to")
        try:
            with TransferManager(cast("BaseClient", recorder), config, executor_cls=executor) as manager:
                future = manager.upload(
                    obj.body, self.dest.bucket, self.key, extra_args=extra, subscribers=[_KnownSize(obj.size)]
                )
                s3_call(what, future.result, _translate)
        finally:
            self.requests += recorder.calls
        self.bytes += obj.size
        return recorder.version_id

    def upload_config(self, obj: _SourceObject) -> TransferConfig:
        """s3transfer's settings for copying ``obj``: a multipart source is copied in its own
        parts where its ETag tells their size (``source_part_size``), so that the replica has
        the same ETag; anything else in ``part_bytes`` parts above ``part_bytes``."""
        config = self.transfer or TransferConfig()
        part = source_part_size(obj.etag, obj.size, config.multipart_chunksize)
        if part is None:
            return config
        config = copy.copy(config)
        config.multipart_chunksize = part
        # A single part too (below the threshold it would be a PutObject, of another ETag).
        config.multipart_threshold = min(part, obj.size)
        return config

    def upload_args(self, obj: _SourceObject, sv: str) -> dict[str, object]:
        resp = obj.response
        meta = dict(obj.metadata)
        meta.update(
            {
                REPLICA_META: REPLICA_VALUE,
                SRC_ZONE: self.dest.zone,
                SRC_BUCKET: self.rec.s3_bucket,
                SRC_KEY: src_key(self.key),
                SRC_VERSION: sv,
                SRC_ETAG: obj.etag or "",
            }
        )
        mtime = _seconds(resp.get("LastModified"))
        if mtime is not None:
            meta[SRC_MTIME] = str(mtime)
        args: dict[str, object] = {"Metadata": meta}
        for name in CONTENT_HEADERS:
            value = resp.get(name)
            if value:
                args[name] = value
        expires = resp.get("Expires")
        if isinstance(expires, datetime):
            args["Expires"] = expires
        if int(resp.get("TagCount") or 0) > 0:
            tags = self.source_tags(obj.version_id)
            if tags:
                # %20, not "+": radosgw decodes this header without turning "+" into a space.
                args["Tagging"] = urlencode(tags, quote_via=quote)
        if self.dest.storage_class:
            args["StorageClass"] = self.dest.storage_class
        if self.dest.two_way:
            # The replicator writes as a user of its own, who owns the replica: without this grant
            # the bucket's owner gets 403 reading it (measured on 16.2). The owner recorded in the
            # bucket index (the echo mark) stays the replicator.
            args["ACL"] = "bucket-owner-full-control"
        return args

    # -- the source

    def source_head(self) -> _Head | None:
        """The source's current object (no version asked: it works on unversioned buckets)."""
        return self._head(self.source, {"Bucket": self.rec.s3_bucket, "Key": self.key}, self._src("HEAD"))

    def source_tags(self, v: str | None) -> list[tuple[str, str]]:
        what = self._src("GET tagging", v)
        try:
            return self._tag_set(self.source, self.rec.s3_bucket, v, what)
        except ObjectMissing as ex:
            raise _Skip(f"superseded: version gone at the source ({what})") from ex

    def _tag_set(
        self, client: S3Client, bucket: str, version: str | None, what: str
    ) -> list[tuple[str, str]]:
        """The (key, value) tags of this key (``version``; None: the current object) in ``bucket``."""
        get = partial(client.get_object_tagging, Bucket=bucket, Key=self.key)
        resp = self._call(what, _at(get, version))
        return [(t["Key"], t["Value"]) for t in resp.get("TagSet", [])]

    def get_source(self, v: str | None) -> _SourceObject:
        """The GET of the record's state: its version, or the object of its ETag; ``_Skip``
        when that state is gone (never the bytes of another version)."""
        req: GetObjectRequestTypeDef = {"Bucket": self.rec.s3_bucket, "Key": self.key}
        if v is not None:
            req["VersionId"] = v
        elif self.rec.etag:
            req["IfMatch"] = f'"{self.rec.etag}"'
        what = self._src("GET", v)
        try:
            obj = self.open_source(req, what)
        except ContentChanged as ex:
            raise _Skip(f"superseded: etag changed at the source ({what})") from ex
        except ObjectMissing as ex:
            raise _Skip(f"superseded: {'version' if v else 'object'} gone at the source ({what})") from ex
        if v is None and obj.version_id is not None:
            obj.body.close()
            raise _Skip(f"superseded: the null version is no longer current at the source ({what})")
        return obj

    def open_source(self, req: GetObjectRequestTypeDef, what: str) -> _SourceObject:
        resp = self._call(what, partial(self.source.get_object, **req))
        size = int(resp.get("ContentLength") or 0)
        raw = _Checked(TranslatedBody(resp["Body"], what, _translate), size, what)
        return _SourceObject(
            # Buffered: s3transfer reads each part with read(n) and takes a short read for
            # the end of the stream; a raw body may return less at any time.
            body=io.BufferedReader(raw, buffer_size=READ_BUFFER),
            size=size,
            etag=_etag(resp.get("ETag")),
            version_id=_vid(resp.get("VersionId")),
            metadata=dict(resp.get("Metadata") or {}),
            response=resp,
        )
