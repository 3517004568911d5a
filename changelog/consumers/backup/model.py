"""The backed-up state of buckets: for every key, its versions newest first, and the rules that
turn one change-log record (docs/design.md §7) into a change of that state.

A run starts from the previous manifest (the *base*) and applies records to an *overlay* of the
keys they touch; the base is never modified, so a key can be put back to its base state when
its new content cannot be read any more (``runner``: the ETag race). Versions carry content
metadata and their tags (S3 object tagging); a version whose ``sha256`` is None still needs its
content copied, one marked ``tags_stale`` only its tags read again.

Record semantics (per bucket/key, in record order):

* ``write`` with a version id: that version becomes current. A write of a known version is a
  tagging change (PutObjectTagging with or without a VersionId is logged by radosgw as a
  ``write`` of that version, the ETag unchanged) or a replay: the version stays where it is,
  and its tags are read again if its content is held (``tags_stale``). A baseline record of a
  new version is placed by its time among the known versions.
* ``write`` without a version id (unversioned bucket, or the "null" version): replaces the
  null version and becomes current.
* ``delete`` with a version id: removes exactly that version (object or delete marker); the
  next older version, if any, becomes current. When nothing is left in a versioned bucket the
  key is marked for a *resolve*: older versions may exist that the logs never showed us
  (a baseline taken from records of current versions only), so the source is asked.
* ``delete`` without a version id: removes the null version (an unversioned delete).
* ``delete_marker``: a delete marker becomes current (the key is absent from a restore). One
  without a version id is the null version's marker (versioning suspended): it replaces the
  null version, object or marker.
* ``bucket_create``: the bucket exists (it may stay empty).
* ``bucket_delete``: the bucket and every version in it are gone (S3 deletes only an empty
  bucket; this record also stands for object deletes whose entries died with the bucket).

A tenant's bucket is named ``tenant/bucket`` here (``LogRecord.qualified_bucket``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import NotRequired, Required, TypedDict

from changelog.pipeline.logformat import LogRecord, parse_rfc3339


def norm_etag(etag: str | None) -> str | None:
    """ETags compare without their quotes (S3 returns them quoted, the logs may not)."""
    if etag is None:
        return None
    return etag.strip().strip('"') or None


class VersionDoc(TypedDict, total=False):
    """A version as JSON (manifests, progress segments). A delete marker carries only its id, the
    flag and its time. In a manifest, a key is its newest version's document with the older
    ones under ``older`` (``key_to_dict``)."""

    version_id: Required[str | None]
    delete_marker: bool
    size: int | None
    etag: str | None
    sha256: str | None
    last_modified: str | None
    metadata: dict[str, str]
    content_type: str
    headers: dict[str, str]  # content headers by their S3 API name (``CONTENT_HEADERS``)
    tags: dict[str, str]  # S3 object tags; absent: none (or a manifest from before tags were kept)
    older: NotRequired[list[VersionDoc]]


# The content headers kept with a version besides Content-Type (the ones replication copies),
# by their S3 API (boto3) names: a restore writes them back.
CONTENT_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a key: an object (content) or a delete marker."""

    version_id: str | None
    delete_marker: bool = False
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None  # RFC 3339
    sha256: str | None = None  # None: content not copied (yet)
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    # Its tags may have changed since they were read (a record rewrote this known version): read
    # them again. Not stored: a version is written to a manifest only once they are read.
    tags_stale: bool = False

    @property
    def needs_content(self) -> bool:
        return not self.delete_marker and self.sha256 is None

    def to_dict(self) -> VersionDoc:
        if self.delete_marker:
            d: VersionDoc = {"version_id": self.version_id, "delete_marker": True}
            if self.last_modified:
                d["last_modified"] = self.last_modified
            return d
        d = {
            "version_id": self.version_id,
            "size": self.size,
            "etag": self.etag,
            "sha256": self.sha256,
            "last_modified": self.last_modified,
        }
        if self.metadata:
            d["metadata"] = dict(sorted(self.metadata.items()))
        if self.content_type:
            d["content_type"] = self.content_type
        if self.headers:
            d["headers"] = dict(sorted(self.headers.items()))
        if self.tags:
            d["tags"] = dict(sorted(self.tags.items()))
        return d

    @classmethod
    def from_dict(cls, d: VersionDoc) -> Version:
        return cls(
            version_id=d.get("version_id"),
            delete_marker=bool(d.get("delete_marker", False)),
            size=d.get("size"),
            etag=d.get("etag"),
            last_modified=d.get("last_modified"),
            sha256=d.get("sha256"),
            metadata=dict(d.get("metadata") or {}),
            content_type=d.get("content_type"),
            headers=dict(d.get("headers") or {}),
            tags=dict(d.get("tags") or {}),
        )


# A key's versions, newest first. Unversioned keys have at most one (version_id None).
Versions = tuple[Version, ...]


def current(versions: Versions | None) -> Version | None:
    """The version a reader of the key sees, or None if the key is absent (deleted, or its
    newest version is a delete marker)."""
    if not versions or versions[0].delete_marker:
        return None
    return versions[0]


def key_to_dict(versions: Versions) -> VersionDoc:
    """Manifest form of a key: its newest version's fields, and the older ones under ``older``."""
    d = versions[0].to_dict()
    if len(versions) > 1:
        d["older"] = [v.to_dict() for v in versions[1:]]
    return d


def key_from_dict(d: VersionDoc) -> Versions:
    return (Version.from_dict(d), *(Version.from_dict(o) for o in d.get("older", ())))


def _time_key(v: Version) -> int:
    try:
        return parse_rfc3339(v.last_modified) if v.last_modified else 0
    except ValueError:
        return 0


class State:
    """Bucket -> key -> versions, as a base (read-only) plus an overlay of changed keys."""

    def __init__(self, base: Mapping[str, Mapping[str, Versions]] | None = None) -> None:
        self._base: dict[str, Mapping[str, Versions]] = {b: keys for b, keys in (base or {}).items()}
        # (bucket, key) -> versions; an empty tuple means "deleted".
        self.overlay: dict[tuple[str, str], Versions] = {}
        # Keys of versioned buckets whose last known version was deleted: ask the source.
        self.resolve: set[tuple[str, str]] = set()
        self.versioned: set[str] = set()
        # Buckets whose last record was a bucket_delete: left out of the snapshot.
        self.deleted: set[str] = set()
        self.buckets: set[str] = set(self._base)
        # (bucket, key, version) -> seq of its baseline record in this run: the tie-break of two
        # versions listed with the same time (listings in whole seconds: Tentacle, AWS).
        self._baseline_seq: dict[tuple[str, str, str | None], str] = {}

    def _by_time(self, bucket: str, key: str, versions: Versions) -> Versions:
        """Full-sync records of one key may come in any order: place by time, newest first, then
        by their seq (listing order) when the listing's times tie."""

        def order(v: Version) -> tuple[int, str]:
            return _time_key(v), self._baseline_seq.get((bucket, key, v.version_id), "")

        return tuple(sorted(versions, key=order, reverse=True))

    # -- reading

    def get(self, bucket: str, key: str) -> Versions:
        hit = self.overlay.get((bucket, key))
        if hit is not None:
            return hit
        return self._base.get(bucket, {}).get(key, ())

    def base(self, bucket: str, key: str) -> Versions:
        return self._base.get(bucket, {}).get(key, ())

    def keys(self, bucket: str) -> Iterator[str]:
        """Every key of ``bucket`` with at least one version (any order)."""
        base = self._base.get(bucket, {})
        for key, versions in base.items():
            if (bucket, key) not in self.overlay and versions:
                yield key
        for (b, key), versions in self.overlay.items():
            if b == bucket and versions:
                yield key

    def snapshot(self) -> dict[str, dict[str, Versions]]:
        """The merged state: bucket -> key -> versions (keys without versions left out)."""
        merged: dict[str, dict[str, Versions]] = {b: dict(self._base.get(b, {})) for b in self.buckets}
        for (bucket, key), versions in self.overlay.items():
            merged.setdefault(bucket, {})[key] = versions
        return {b: {k: v for k, v in sorted(merged[b].items()) if v} for b in sorted(merged) if b not in self.deleted}

    def needing_content(self) -> Iterator[tuple[str, str, Version]]:
        """(bucket, key, version) of every changed key whose current version has no content yet,
        and of every version of a changed key whose tags are to be read again."""
        for (bucket, key), versions in self.overlay.items():
            cur = current(versions)
            if cur is not None and cur.needs_content:
                yield bucket, key, cur
            for v in versions:
                if v.tags_stale and not v.needs_content and not v.delete_marker:
                    yield bucket, key, v

    # -- writing

    def set(self, bucket: str, key: str, versions: Versions) -> None:
        self.buckets.add(bucket)
        self.overlay[(bucket, key)] = versions

    def revert(self, bucket: str, key: str) -> None:
        """Put a key back to its base state (its new content could not be read)."""
        self.overlay.pop((bucket, key), None)
        self.resolve.discard((bucket, key))

    def clear_bucket(self, bucket: str) -> None:
        """Forget everything known of ``bucket`` (a listing is about to replace it)."""
        self.buckets.add(bucket)
        for key in list(self.keys(bucket)):
            self.overlay[(bucket, key)] = ()
        self.resolve = {bk for bk in self.resolve if bk[0] != bucket}

    def update_version(self, bucket: str, key: str, version: Version) -> bool:
        """Replace the version with the same id (content found); False if it is gone."""
        versions = self.get(bucket, key)
        for i, v in enumerate(versions):
            if v.version_id == version.version_id and not v.delete_marker:
                self.set(bucket, key, (*versions[:i], version, *versions[i + 1 :]))
                return True
        return False

    def drop_version(self, bucket: str, key: str, version_id: str | None) -> None:
        """A version vanished from the source: forget it (its delete record comes later)."""
        versions = self.get(bucket, key)
        left = tuple(v for v in versions if v.version_id != version_id)
        self.set(bucket, key, left)
        if not left and bucket in self.versioned:
            self.resolve.add((bucket, key))

    def apply(self, rec: LogRecord) -> None:
        """Apply one change-log record (see the module docstring for the rules)."""
        bucket, key, vid = rec.qualified_bucket, rec.key, rec.version_id or None
        if key is None:
            self._apply_bucket(bucket, rec)
            return
        self.buckets.add(bucket)
        self.deleted.discard(bucket)
        if vid is not None:
            self.versioned.add(bucket)
        versions = self.get(bucket, key)
        if rec.op == "write":
            new = Version(
                version_id=vid,
                size=rec.size,
                etag=norm_etag(rec.etag),
                last_modified=rec.mtime or rec.time,
                metadata=dict(rec.metadata),
            )
            same = next((v for v in versions if v.version_id == vid and not v.delete_marker), None)
            if rec.baseline and vid is not None:
                self._baseline_seq[(bucket, key, vid)] = rec.seq
            if same is not None and vid is not None:
                # A version we know (its content and metadata are immutable): a tagging change
                # (radosgw logs PutObjectTagging as a write of the version it tags, the current
                # one or an older one) or a replay. It keeps its place among the versions
                # (moving it first made an older version current) and its content; only its
                # tags are read again, if its content is held (else with its content, if read).
                mark = replace(same, tags_stale=True) if same.sha256 is not None else same
                self.set(bucket, key, tuple(mark if v is same else v for v in versions))
                self.resolve.discard((bucket, key))
                return
            # An unversioned rewrite with the same ETag and size is read again all the same: a
            # CopyObject onto itself (MetadataDirective REPLACE) keeps both and changes only the
            # Content-Type or user metadata, and a PutObjectTagging or DeleteObjectTagging only
            # the tags, which no record carries. Its blob is not uploaded again (``blobs``: the
            # base's blobs are trusted).
            rest = tuple(v for v in versions if v.version_id != vid)
            if rec.baseline and vid is not None and rest:
                self.set(bucket, key, self._by_time(bucket, key, (new, *rest)))
            else:
                self.set(bucket, key, (new, *rest))
            self.resolve.discard((bucket, key))
        elif rec.op == "delete_marker":
            marker = Version(version_id=vid, delete_marker=True, last_modified=rec.time)
            rest = tuple(v for v in versions if v.version_id != vid)
            if rec.baseline and vid is not None:
                self._baseline_seq[(bucket, key, vid)] = rec.seq
                self.set(bucket, key, self._by_time(bucket, key, (marker, *rest)))
            else:
                self.set(bucket, key, (marker, *rest))
            self.resolve.discard((bucket, key))
        elif rec.op == "delete":
            left = tuple(v for v in versions if v.version_id != vid)
            self.set(bucket, key, left)
            if vid is not None and not left and bucket in self.versioned:
                self.resolve.add((bucket, key))
            else:
                self.resolve.discard((bucket, key))
        else:
            raise ValueError(f"unknown op {rec.op!r} in record {rec.id}")

    def _apply_bucket(self, bucket: str, rec: LogRecord) -> None:
        if rec.op == "bucket_create":
            self.buckets.add(bucket)
            self.deleted.discard(bucket)
        elif rec.op == "bucket_delete":
            self.clear_bucket(bucket)
            self.versioned.discard(bucket)
            self.deleted.add(bucket)
        else:
            raise ValueError(f"op {rec.op!r} without a key in record {rec.id}")
