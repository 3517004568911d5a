"""The edge to radosgw: a small client for its admin REST API (data log, bucket index logs,
bucket stats and metadata) plus the few S3 reads the follower needs (full-sync listings and
size/etag lookups).

Requests are signed with botocore's ``S3SigV4Auth``. Query values are percent-encoded with
nothing left "safe", so ``:`` in a bucket instance travels as ``%3A``: radosgw computes the
signature on that form and rejects a raw ``:``. Every failure is translated here, once, into the
project's errors: ``TransientError`` (connection trouble, timeouts, 5xx, 429), ``PermanentError``
(403, 400 and other refusals) and ``NotFound`` (404: a deleted bucket, a bucket instance gone
after a reshard, an object overwritten since), each with a one-line message naming the endpoint.
TLS: ``verify`` (False, a CA bundle's path, or True) applies to both the admin requests and the
S3 reads; a certificate that fails the check is a ``PermanentError`` saying to set
``[source] ca_bundle``.

Facts checked on Pacific 16.2.15 (see ``rgw_module/README.md``):

* ``GET /admin/log?type=bucket-index&bucket=B`` is refused (400); the API wants
  ``bucket-instance=<bucket>:<bucket_id>[:<shard>]``. With the shard it lists that shard.
* A bucket-index-log ``marker`` and ``end-marker`` may be given bare (``00000000003.12.6``) or with
  the shard prefix the entries carry (``1#00000000003.12.6``). Listing starts after the marker;
  ``DELETE ...&end-marker=M`` trims every entry up to and including M.
* ``DELETE /admin/log?type=data&id=N&marker=M`` trims a data-log shard up to and including M
  (``end-marker`` is refused there with 400).
* After a reshard or a bucket deletion the old instance's log answers 404 ``NoSuchKey`` (a bucket
  deleted right after its last object DELETE: already gone when the data log names it).

Tenants (Pacific 16.2.15, Reef 18.2, Tentacle 20.2): the admin API names a tenant's bucket
``tenant/bucket`` everywhere: the bucket listing, ``/admin/bucket?bucket=t/b``,
``/admin/metadata/bucket?key=t/b``, ``bucket-instance=t/b:<id>[:<shard>]`` for the log (the S3
spelling ``t:b`` answers 404 or 400 there), and the data log's keys. S3 wants ``t:b`` (botocore's
client-side bucket-name check refuses the colon, so it is switched off here), and lists another
user's bucket only for a system user. The follower names buckets ``tenant/bucket`` throughout
(``rgw_module.mapping.qualified_name``); ``s3_bucket_name`` turns that into the S3 form.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from botocore.handlers import validate_bucket_name

from changelog.errors import ObjectMissing, PermanentError, TransientError
from changelog.pipeline.s3client import make_s3_client, refusal, untrusted_certificate, unverified
from rgw_module.mapping import BilogEntry, BucketShard, parse_time_ns, qualified_name, s3_bucket_name

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ListObjectsV2RequestTypeDef, ListObjectVersionsRequestTypeDef

logger = logging.getLogger(__name__)

# The most entries radosgw returns per log page (its own cap is 1000).
MAX_ENTRIES = 1000
# S3 listings: the protocol's own maximum page.
MAX_KEYS = 1000
# radosgw's default zonegroup signs as "default"; radosgw accepts any region name in a signature.
DEFAULT_REGION = "default"
T = TypeVar("T")


class NotFound(ObjectMissing):
    """HTTP 404: the bucket, bucket instance (after a reshard or delete) or object is gone."""


@dataclass(frozen=True, slots=True)
class DataLogEntry:
    """One data-log entry: "this bucket-index shard changed, go read its log". Reef and later
    name the log generation (``shard.log_gen``); ``has_gen`` says whether the entry did."""

    shard: BucketShard
    timestamp: str
    has_gen: bool = False


@dataclass(frozen=True, slots=True)
class DataLogPage:
    entries: list[DataLogEntry]
    # The position of the last entry returned ("" when the page is empty and the shard was read
    # from its start): pass it as ``marker`` to read on, or trim up to it.
    marker: str
    truncated: bool


@dataclass(frozen=True, slots=True)
class BucketStats:
    name: str  # qualified: ``tenant/bucket`` for a tenant's bucket
    bucket_id: str
    # The id of the bucket's first instance: survives a reshard, changes when the bucket is
    # deleted and created again.
    marker: str
    num_shards: int
    creation_ns: int
    owner: str
    # The newest bucket-index-log marker per shard, bare ("" for an empty shard).
    max_markers: dict[int, str] = field(default_factory=dict)

    def shards(self) -> list[BucketShard]:
        if self.num_shards <= 0:
            return [BucketShard(self.name, self.bucket_id, -1)]
        return [BucketShard(self.name, self.bucket_id, n) for n in range(self.num_shards)]


@dataclass(frozen=True, slots=True)
class BilogInfo:
    """A bucket instance's bucket-index-log generations (Reef and later; Pacific: generation 0
    only) and the newest marker of each shard of the newest one, from one response, so the
    markers and the generation they belong to are consistent."""

    oldest_gen: int
    latest_gen: int
    # generation -> number of shards (0: unsharded)
    generations: dict[int, int]
    max_markers: dict[int, str]
    generation_aware: bool

    def next_gen(self, gen: int) -> int | None:
        later = [g for g in self.generations if g > gen]
        return min(later) if later else None


class AccessDenied(PermanentError):
    """radosgw refused an S3 read of a bucket (403): the source user may not read it."""


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object (version) from an S3 listing."""

    key: str
    version_id: str | None  # None from a plain (unversioned) listing
    delete_marker: bool
    size: int | None
    etag: str | None
    mtime_ns: int
    storage_class: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectPage:
    items: list[ListedObject]
    key_marker: str
    version_marker: str
    truncated: bool


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else etag


def _dt_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _split_markers(text: str) -> dict[int, str]:
    """``"0#,1#00000000007.20.6"`` -> ``{0: "", 1: "00000000007.20.6"}``; an unsharded bucket's
    bare marker is shard -1."""
    out: dict[int, str] = {}
    if not text:
        return out
    for part in text.split(","):
        if "#" in part:
            n, _, m = part.partition("#")
            out[int(n)] = m
        else:
            out[-1] = part
    return out


class AdminClient:
    """radosgw admin REST API and S3 reads of one zone endpoint. Thread-safe."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = DEFAULT_REGION,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_connections: int = 16,
        verify: bool | str = True,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise PermanentError(f"source.endpoint must be an http(s) URL, not {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.region = region or DEFAULT_REGION
        self._access_key = access_key
        self._secret_key = secret_key
        self._creds = Credentials(access_key, secret_key)
        # urllib3's TLS options (None: its defaults, certificates checked; dropped for http).
        https = self.endpoint.startswith("https://")
        cert_reqs = "CERT_NONE" if https and verify is False else None
        if verify is False:
            unverified(self.endpoint)
        ca_certs = verify if https and isinstance(verify, str) else None
        self._verify = verify
        self._timeouts = (connect_timeout, read_timeout)
        self._http = urllib3.PoolManager(
            maxsize=max_connections,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            cert_reqs=cert_reqs,
            ca_certs=ca_certs,
        )
        self._s3_client: S3Client | None = None
        self._s3_lock = threading.Lock()
        self._max_connections = max_connections

    def __repr__(self) -> str:
        return f"AdminClient({self.endpoint!r}, access_key={self._access_key!r})"

    # ------------------------------------------------------------------ admin REST plumbing

    def request(
        self, method: str, path: str, params: Sequence[tuple[str, str | int | None]]
    ) -> tuple[int, dict[str, str], bytes]:
        """One signed admin request: (status, headers, body). Raises on transport errors and on
        every status >= 400 (``NotFound`` for 404)."""
        query = "&".join(k if v is None else f"{k}={quote(str(v), safe='')}" for k, v in params)
        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        what = f"radosgw {method} {path}?{query} at {self.endpoint}"
        req = AWSRequest(method=method, url=url, data=b"")
        S3SigV4Auth(self._creds, "s3", self.region).add_auth(req)
        prepared = req.prepare()
        try:
            resp = self._http.request(method, prepared.url, headers=dict(prepared.headers.items()), body=None)
        except urllib3.exceptions.HTTPError as ex:
            self._check_tls(ex)
            raise TransientError(f"{what}: {type(ex).__name__}: {ex}") from ex
        headers = {k.lower(): v for k, v in resp.headers.items()}
        if resp.status >= 400:
            code = ""
            try:
                code = str(json.loads(resp.data).get("Code", ""))
            except (ValueError, AttributeError):
                code = resp.data[:100].decode("utf-8", "replace")
            message = f"{what}: HTTP {resp.status} {code}".rstrip()
            if resp.status == 404:
                raise NotFound(message)
            if resp.status >= 500 or resp.status in (408, 429):
                raise TransientError(message)
            if resp.status in (401, 403):
                message += (
                    " (the source user needs admin caps "
                    '"buckets=read; metadata=read; datalog=*; bilog=*" and the right keys)'
                )
            raise PermanentError(message)
        return resp.status, headers, resp.data

    def _check_tls(self, ex: BaseException) -> None:
        """Raise the one-line ``PermanentError`` of an untrusted server certificate (a matter of
        configuration: no retry helps), if that is what ``ex`` is."""
        untrusted = untrusted_certificate(ex)
        if untrusted is not None:
            raise PermanentError(
                f"source {self.endpoint}: {untrusted}: set [source] ca_bundle to its CA's PEM file (or verify = false)"
            ) from ex

    def _get_json(self, path: str, params: Sequence[tuple[str, str | int | None]]) -> Any:
        _, _, body = self.request("GET", path, params)
        if not body:
            return None
        try:
            # orjson: half the decoding CPU of a bilog page (4.3 against 8.2 us an entry); the
            # standard parser stays the judge of what orjson refuses (a lone surrogate's escape,
            # an integer past 64 bits), so nothing that parsed before is refused now.
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        try:
            return json.loads(body)
        except ValueError as ex:
            raise TransientError(f"radosgw GET {path} at {self.endpoint}: unreadable JSON ({ex})") from ex

    # ------------------------------------------------------------------ data log

    def server_time_ns(self) -> int:
        """radosgw's clock (the ``Date`` header of a cheap admin call), whole seconds."""
        _, headers, _ = self.request("GET", "/admin/log", [("type", "data")])
        try:
            return _dt_ns(parsedate_to_datetime(headers["date"]))
        except (KeyError, TypeError, ValueError) as ex:
            raise TransientError(f"radosgw at {self.endpoint} sent no usable Date header") from ex

    def datalog_shards(self) -> int:
        doc = self._get_json("/admin/log", [("type", "data")])
        try:
            return int(doc["num_objects"])
        except (KeyError, TypeError, ValueError) as ex:
            raise TransientError(f"radosgw at {self.endpoint}: unexpected data log info {doc!r}") from ex

    def datalog_list(self, shard: int, marker: str = "", *, max_entries: int = MAX_ENTRIES) -> DataLogPage:
        # extra-info gives each entry its own position (log_id): the FIFO-backed data log of
        # Reef and later answers the page ``marker`` "" once it reaches the end, so the page
        # marker alone cannot say where a complete read stopped.
        params: list[tuple[str, str | int | None]] = [
            ("type", "data"),
            ("id", shard),
            ("max-entries", max_entries),
            ("extra-info", "true"),
        ]
        if marker:
            params.append(("marker", marker))
        doc = self._get_json("/admin/log", params)
        entries: list[DataLogEntry] = []
        last = ""
        for wrapped in doc.get("entries", []):
            e = wrapped.get("entry", wrapped) if isinstance(wrapped, dict) else {}
            last = str(wrapped.get("log_id") or last) if isinstance(wrapped, dict) else last
            if e.get("entity_type") != "bucket":
                continue
            bs = BucketShard.parse(str(e.get("key", "")))
            if bs is None or bs.log_gen:
                logger.warning("data log shard %d: unparsable key %r, skipped", shard, e.get("key"))
                continue
            gen = e.get("gen")
            if gen is not None:
                bs = dataclasses.replace(bs, log_gen=int(gen))
            entries.append(DataLogEntry(bs, str(e.get("timestamp", "")), gen is not None))
        truncated = str(doc.get("truncated", "false")).lower() == "true"
        return DataLogPage(entries, last or str(doc.get("marker") or "") or marker, truncated)

    def datalog_info(self, shard: int) -> str:
        """The marker of the shard's newest entry ("" when it never had one)."""
        doc = self._get_json("/admin/log", [("type", "data"), ("id", shard), ("info", None)])
        return str(doc.get("marker") or "")

    def datalog_trim(self, shard: int, marker: str) -> None:
        """Remove the shard's entries up to and including ``marker``."""
        if marker:
            self.request("DELETE", "/admin/log", [("type", "data"), ("id", shard), ("marker", marker)])

    # ------------------------------------------------------------------ buckets

    def list_buckets(self) -> list[str]:
        """Every bucket name in the zone (metadata listing, paged)."""
        names: list[str] = []
        marker = ""
        while True:
            params: list[tuple[str, str | int | None]] = [("max-entries", MAX_KEYS)]
            if marker:
                params.append(("marker", marker))
            doc = self._get_json("/admin/metadata/bucket", params)
            if isinstance(doc, list):  # radosgw without paging support answers a plain list
                return [str(n) for n in doc]
            names.extend(str(n) for n in doc.get("keys", []))
            marker = str(doc.get("marker") or "")
            if str(doc.get("truncated", "false")).lower() != "true" or not marker:
                return names

    def bucket_stats(self, bucket: str) -> BucketStats:
        """The bucket's current instance; ``NotFound`` when there is no such bucket."""
        d = self._get_json("/admin/bucket", [("bucket", bucket), ("stats", "true")])
        try:
            # "bucket" is the name within the tenant; the follower's name carries the tenant.
            return BucketStats(
                name=qualified_name(str(d.get("tenant") or ""), str(d["bucket"])),
                bucket_id=str(d["id"]),
                marker=str(d.get("marker") or d["id"]),
                num_shards=int(d.get("num_shards", 0)),
                creation_ns=parse_time_ns(str(d.get("creation_time") or d.get("mtime") or "")),
                owner=str(d.get("owner", "")),
                max_markers=_split_markers(str(d.get("max_marker", ""))),
            )
        except (KeyError, TypeError, ValueError) as ex:
            raise TransientError(f"radosgw at {self.endpoint}: unexpected stats for bucket {bucket}: {ex}") from ex

    def bucket_instance_id(self, bucket: str) -> str:
        """The bucket's current instance id, from its entrypoint (one small read, where the
        stats read every index shard's header); ``NotFound`` when there is no such bucket."""
        doc = self._get_json("/admin/metadata/bucket", [("key", bucket)])
        try:
            return str(doc["data"]["bucket"]["bucket_id"])
        except (KeyError, TypeError) as ex:
            raise TransientError(f"radosgw at {self.endpoint}: no bucket id in the entrypoint of {bucket}") from ex

    def bucket_versioning(self, bucket: str, bucket_id: str) -> str:
        """``"off"`` (never versioned), ``"enabled"`` or ``"suspended"``, from the instance metadata
        (the admin API answers for every owner, where S3 would need the owner's rights)."""
        doc = self._get_json("/admin/metadata/bucket.instance", [("key", f"{bucket}:{bucket_id}")])
        try:
            flags = int(doc["data"]["bucket_info"]["flags"])
        except (KeyError, TypeError, ValueError) as ex:
            raise TransientError(f"radosgw at {self.endpoint}: no flags in bucket instance {bucket}: {ex}") from ex
        # RGWBucketInfo flags: BUCKET_VERSIONED = 2, BUCKET_VERSIONS_SUSPENDED = 4.
        if not flags & 2:
            return "off"
        return "suspended" if flags & 4 else "enabled"

    # ------------------------------------------------------------------ bucket index logs

    def bilog_list(self, bs: BucketShard, marker: str = "", *, max_entries: int = MAX_ENTRIES) -> list[BilogEntry]:
        """Up to ``max_entries`` entries of one bucket-index shard's log, after ``marker``.
        ``NotFound`` when the bucket instance is gone (deleted, or resharded away)."""
        # ``generation`` always: Reef and later list the *newest* generation without it (and
        # trim generation 0); Pacific ignores it.
        params: list[tuple[str, str | int | None]] = [
            ("type", "bucket-index"),
            ("bucket-instance", bs.instance),
            ("generation", bs.log_gen),
            ("max-entries", max_entries),
        ]
        if marker:
            params.append(("marker", marker))
        doc = self._get_json("/admin/log", params)
        if not isinstance(doc, list):
            raise TransientError(f"radosgw at {self.endpoint}: bucket index log of {bs.key} is not a list")
        return doc

    def bilog_info(self, bucket: str, bucket_id: str) -> BilogInfo:
        """The instance's log generations and the newest generation's shard markers.
        ``NotFound`` when the instance is gone."""
        doc = self._get_json(
            "/admin/log", [("type", "bucket-index"), ("bucket-instance", f"{bucket}:{bucket_id}"), ("info", None)]
        )
        try:
            markers = _split_markers(str(doc.get("max_marker") or ""))
            if "latest_gen" not in doc:  # Pacific: one generation, its shards are the markers'
                return BilogInfo(0, 0, {0: len(markers) if -1 not in markers else 0}, markers, False)
            gens = {int(g["gen"]): int(g["num_shards"]) for g in doc.get("generations", [])}
            latest = int(doc["latest_gen"])
            gens.setdefault(latest, len(markers) if -1 not in markers else 0)
            return BilogInfo(int(doc.get("oldest_gen", 0)), latest, gens, markers, True)
        except (KeyError, TypeError, ValueError, AttributeError) as ex:
            raise TransientError(
                f"radosgw at {self.endpoint}: unexpected bucket index log info of {bucket}:{bucket_id}: {ex}"
            ) from ex

    def bilog_max_marker(self, bs: BucketShard) -> str:
        """The newest marker of the shard, "" when ``bs`` is not of the newest generation (radosgw
        tells the markers of that one only)."""
        doc = self._get_json("/admin/log", [("type", "bucket-index"), ("bucket-instance", bs.instance), ("info", None)])
        if int(doc.get("latest_gen", 0) or 0) != bs.log_gen:
            return ""
        return str(doc.get("max_marker") or "")

    def bilog_trim(self, bs: BucketShard, end_marker: str) -> None:
        """Remove the shard's log entries up to and including ``end_marker``, in its generation
        (radosgw's trim defaults to generation 0, not the newest)."""
        if end_marker:
            self.request(
                "DELETE",
                "/admin/log",
                [
                    ("type", "bucket-index"),
                    ("bucket-instance", bs.instance),
                    ("generation", bs.log_gen),
                    ("end-marker", end_marker),
                ],
            )

    # ------------------------------------------------------------------ S3 reads

    def _s3(self) -> S3Client:
        with self._s3_lock:
            if self._s3_client is None:
                self._s3_client = make_s3_client(
                    self.endpoint,
                    access_key=self._access_key,
                    secret_key=self._secret_key,
                    region=self.region,
                    addressing_style="path",
                    verify=self._verify,
                    max_attempts=3,
                    connect_timeout=self._timeouts[0],
                    read_timeout=self._timeouts[1],
                    max_pool=self._max_connections,
                )
                # A tenant's bucket is "tenant:bucket" in S3, which botocore's name check refuses
                # before sending; radosgw is the judge of its own bucket names.
                self._s3_client.meta.events.unregister("before-parameter-build.s3", validate_bucket_name)
            return self._s3_client

    def _s3_call(self, what: str, fn: Callable[[S3Client], T]) -> T:
        where = f"S3 {what} at {self.endpoint}"
        try:
            return fn(self._s3())
        except BotoCoreError as ex:
            self._check_tls(ex)
            # Below HTTP (connection, timeout, truncated read): worth another sweep.
            raise TransientError(f"{where}: {type(ex).__name__}: {ex}") from ex
        except Exception as ex:
            r = refusal(ex)
            if r is None:
                raise
            message = f"{where}: HTTP {r.status} {r.code}".rstrip()
            if r.status == 404 or r.code in ("NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404"):
                raise NotFound(message) from ex
            if r.status >= 500 or r.status in (408, 429) or r.code in ("SlowDown", "RequestTimeout"):
                raise TransientError(message) from ex
            if r.status == 403:
                message += (
                    " (listing another user's or a tenant's bucket needs a system user:"
                    " radosgw-admin user modify --uid=<source user> [--tenant=<its tenant>] --system)"
                )
                raise AccessDenied(message) from ex
            raise PermanentError(message) from ex

    def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        key_marker: str = "",
        version_marker: str = "",
        versions: bool,
        max_keys: int = MAX_KEYS,
    ) -> ObjectPage:
        """One page of the bucket's objects (``versions``: every version and delete marker, by key
        then newest first), after the given markers. ``bucket`` is qualified (``tenant/bucket``)."""
        bucket = s3_bucket_name(bucket)
        if not versions:
            req: ListObjectsV2RequestTypeDef = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
            if key_marker:
                req["StartAfter"] = key_marker
            resp = self._s3_call(f"ListObjectsV2 {bucket}", lambda c: c.list_objects_v2(**req))
            items = [
                ListedObject(
                    key=o["Key"],
                    version_id=None,
                    delete_marker=False,
                    size=int(o.get("Size", 0)),
                    etag=_strip_etag(o.get("ETag")),
                    mtime_ns=_dt_ns(o["LastModified"]),
                    storage_class=o.get("StorageClass") or "STANDARD",
                )
                for o in resp.get("Contents", [])
            ]
            last = items[-1].key if items else key_marker
            return ObjectPage(items, last, "", bool(resp.get("IsTruncated")) and bool(items))
        vreq: ListObjectVersionsRequestTypeDef = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if key_marker:
            vreq["KeyMarker"] = key_marker
            if version_marker:
                vreq["VersionIdMarker"] = version_marker
        vresp = self._s3_call(f"ListObjectVersions {bucket}", lambda c: c.list_object_versions(**vreq))
        # Each list is in index order (per key, newest first); boto3 splits radosgw's one sequence
        # into two. Rank for the merge: newer mtime, then the latest one, then each list's own
        # order: Tentacle lists whole seconds, so versions of one second tie on mtime.
        ranked = [
            (
                (0 if o.get("IsLatest") else 1, 0, i),
                ListedObject(
                    key=o["Key"],
                    version_id=str(o.get("VersionId") or "null"),
                    delete_marker=False,
                    size=int(o.get("Size", 0)),
                    etag=_strip_etag(o.get("ETag")),
                    mtime_ns=_dt_ns(o["LastModified"]),
                    storage_class=o.get("StorageClass") or "STANDARD",
                ),
            )
            for i, o in enumerate(vresp.get("Versions", []))
        ] + [
            (
                (0 if d.get("IsLatest") else 1, 1, i),
                ListedObject(
                    key=d["Key"],
                    version_id=str(d.get("VersionId") or "null"),
                    delete_marker=True,
                    size=None,
                    etag=None,
                    mtime_ns=_dt_ns(d["LastModified"]),
                ),
            )
            for i, d in enumerate(vresp.get("DeleteMarkers", []))
        ]
        # Versions and delete markers come in two lists: restore the listing order (key, newest
        # first) so that a page replayed after a crash yields the same sequence.
        listed = [o for _, o in sorted(ranked, key=lambda p: (p[1].key.encode(), -p[1].mtime_ns, p[0]))]
        truncated = bool(vresp.get("IsTruncated"))
        return ObjectPage(
            listed,
            str(vresp.get("NextKeyMarker") or (listed[-1].key if listed else key_marker)),
            str(vresp.get("NextVersionIdMarker") or ""),
            truncated and bool(listed),
        )

    def object_info(self, bucket: str, key: str, version_id: str | None, mtime_ns: int) -> tuple[int, str | None] | None:
        """(size, etag) of the object version a bucket-index-log ``write`` entry describes, or None
        when it cannot be told any more (overwritten or deleted since).

        A version id names the version exactly (HEAD). Without one the object may have been
        overwritten since: the listing's LastModified (radosgw truncates the index mtime to
        milliseconds) must equal the entry's mtime, else the answer would describe a newer write.
        ``bucket`` is qualified (``tenant/bucket``).
        """
        bucket = s3_bucket_name(bucket)
        try:
            if version_id is not None:
                head = self._s3_call(
                    f"HeadObject {bucket}",
                    lambda c: c.head_object(Bucket=bucket, Key=key, VersionId=version_id),
                )
                return int(head.get("ContentLength", 0)), _strip_etag(head.get("ETag"))
            resp = self._s3_call(
                f"ListObjectsV2 {bucket}", lambda c: c.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            )
        except NotFound:
            return None
        except PermanentError as ex:
            if "HTTP 405" in str(ex):  # a delete marker has no size
                return None
            raise
        for o in resp.get("Contents", []):
            if o["Key"] != key:
                continue
            listed = _dt_ns(o["LastModified"])
            # Pacific lists milliseconds; Tentacle whole seconds (then the follower drops the
            # earlier of two writes of one key within one second that it reads together).
            same = listed // 1_000_000 == mtime_ns // 1_000_000 or (
                listed % 1_000_000_000 == 0 and listed // 1_000_000_000 == mtime_ns // 1_000_000_000
            )
            if same:
                return int(o.get("Size", 0)), _strip_etag(o.get("ETag"))
        return None

    def bucket_lifecycle(self, bucket: str) -> dict[str, Any] | None:
        """The bucket's S3 lifecycle configuration (``Rules``), None when it has none or is gone."""
        try:
            doc = self._s3_call(
                f"lifecycle of {bucket}",
                lambda s3: s3.get_bucket_lifecycle_configuration(Bucket=s3_bucket_name(bucket)),
            )
        except NotFound:  # NoSuchLifecycleConfiguration, NoSuchBucket
            return None
        return {"Rules": list(doc.get("Rules") or [])}

    def close(self) -> None:
        self._http.clear()
        with self._s3_lock:
            if self._s3_client is not None:
                self._s3_client.close()
                self._s3_client = None
