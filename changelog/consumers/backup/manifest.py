"""Backup manifests: one zstd-compressed JSON document per finished backup, holding the full
state of every backed-up bucket as of the change-log watermark the backup reached.

``manifests/<backup_id>.json.zst``::

    {"format": 1, "backup_id": "20261121T221800.123456Z-1a2b", "base": <previous id or null>,
     "started": T, "finished": T, "as_of": T, "as_of_us": int,
     "checkpoint": <name of the last change-log object consumed, or null>,
     "buckets": {bucket: {"versioned": bool,
                          "objects": {key: {"version_id", "size", "etag", "sha256",
                                            "last_modified", "metadata"?, "content_type"?, "headers"?,
                                            "tags"?, "delete_marker"?, "older"?: [...]}}}},
     "lagging": [{"bucket", "key", "version_id", "etag", "reason"}],
     "listed": {bucket: T}, "stats": {...},
     "behind"?: {bucket: {"after": <log object or null>, "as_of_us": int or null}}}

``as_of`` is the watermark's ``complete_until``: every mutation before it is reflected, except
the ``lagging`` keys (content that changed again before it could be read; see ``runner``) and,
for a bucket baselined by listing, changes between ``as_of`` and ``listed[bucket]`` may be
reflected too (a listing is not a snapshot). A key whose newest version is a delete marker is
kept (with its older versions) but is absent from a restore. The same facts are in the object's
metadata (``as-of``, ``objects``, ``bytes``) so that ``backup list`` reads no manifest body.

``behind`` names the followed buckets a ``backup run --bucket`` left out: their records after
``after`` (null: from the logs' beginning, the bucket never backed up) are not applied yet, and
their state is that of an earlier backup, as of ``as_of_us``. The next run that covers such a
bucket reads the logs from there for it (and lists it when ``after`` is null), so a run of some
buckets loses nothing of the others.

``tags`` (S3 object tags, ``{key: value}``) is left out when a version has none; manifests
written before tags were kept have none anywhere, and their objects restore untagged.

The backup id is the run's UTC start time (microseconds) plus 4 random hex digits
(``20261121T221800.123456Z-1a2b``), so ids sort by time.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict, cast

from changelog.consumers.backup.model import (
    Version,
    VersionDoc,
    Versions,
    current,
    key_from_dict,
    key_to_dict,
)
from changelog.consumers.backup.store import MANIFEST_SUFFIX, MANIFESTS, BackupStore
from changelog.errors import ObjectMissing, PermanentError
from changelog.pipeline.logformat import parse_rfc3339, rfc3339_us

FORMAT = 1
_ID_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{4}$")


def new_backup_id(now: float | None = None) -> str:
    t_us = int((time.time() if now is None else now) * 1_000_000)
    sec, us = divmod(t_us, 1_000_000)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(sec))}.{us:06d}Z-{secrets.token_hex(2)}"


def is_backup_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def manifest_name(backup_id: str) -> str:
    if not is_backup_id(backup_id):
        raise PermanentError(f"not a backup id: {backup_id!r} (expected YYYYMMDDTHHMMSS.ffffffZ-xxxx)")
    return f"{MANIFESTS}{backup_id}{MANIFEST_SUFFIX}"


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What ``backup list`` shows of a backup, read from the manifest object's metadata."""

    backup_id: str
    as_of_us: int
    objects: int
    bytes: int
    manifest_bytes: int
    modified: float

    @property
    def as_of(self) -> str:
        return rfc3339_us(self.as_of_us)

    def to_dict(self) -> dict[str, object]:
        return {
            "backup_id": self.backup_id,
            "as_of": self.as_of,
            "objects": self.objects,
            "bytes": self.bytes,
            "manifest_bytes": self.manifest_bytes,
            "written": rfc3339_us(int(self.modified * 1_000_000)),
        }


class Lagging(TypedDict):
    """A key the backup left at its previous state: its record's object vanished or changed
    again before it could be read (``runner``: the ETag race)."""

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    reason: str  # "vanished" | "changed"


class BehindDoc(TypedDict):
    """A followed bucket a run left out (``backup run --bucket``): where its records resume."""

    after: str | None  # its last log object applied (None: none, from the logs' beginning)
    as_of_us: int | None  # when its state in the manifest is from (None: not backed up yet)


class BucketDoc(TypedDict):
    versioned: bool
    objects: dict[str, VersionDoc]  # key -> its versions (``model.key_to_dict``)


class ManifestDoc(TypedDict):
    """A manifest ``manifests/<backup_id>.json.zst`` (``build``)."""

    format: int
    backup_id: str
    base: str | None
    started: str
    finished: str
    as_of: str
    as_of_us: int
    checkpoint: str | None  # the last log object applied
    buckets: dict[str, BucketDoc]
    lagging: list[Lagging]
    listed: dict[str, str]  # bucket -> when a first run listed it
    stats: dict[str, int]
    behind: NotRequired[dict[str, BehindDoc]]


class Manifest:
    """A loaded manifest document."""

    def __init__(self, doc: ManifestDoc) -> None:
        if doc.get("format") != FORMAT:
            raise PermanentError(f"manifest format {doc.get('format')!r} is not {FORMAT}")
        self.doc = doc

    @property
    def backup_id(self) -> str:
        return str(self.doc["backup_id"])

    @property
    def base(self) -> str | None:
        return self.doc.get("base")

    @property
    def checkpoint(self) -> str | None:
        return self.doc.get("checkpoint")

    @property
    def as_of_us(self) -> int:
        return int(self.doc["as_of_us"])

    @property
    def behind(self) -> dict[str, BehindDoc]:
        """Buckets left out by a run of some buckets (module doc)."""
        return dict(self.doc.get("behind", {}))

    @property
    def lagging(self) -> list[Lagging]:
        return list(self.doc.get("lagging", []))

    def bucket_names(self) -> list[str]:
        return sorted(self.doc.get("buckets", {}))

    def versioned(self, bucket: str) -> bool:
        b = self.doc.get("buckets", {}).get(bucket)
        return bool(b and b.get("versioned", False))

    def keys(self, bucket: str) -> Mapping[str, VersionDoc]:
        b = self.doc.get("buckets", {}).get(bucket)
        return b.get("objects", {}) if b else {}

    def state(self) -> dict[str, dict[str, Versions]]:
        """bucket -> key -> versions (the runner's base)."""
        return {b: {k: key_from_dict(d) for k, d in self.keys(b).items()} for b in self.bucket_names()}

    def objects(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, Version]]:
        """(key, current version) of every key of ``bucket`` visible in a restore, by key."""
        keys = self.keys(bucket)
        for key in sorted(keys):
            if not key.startswith(prefix):
                continue
            cur = current(key_from_dict(keys[key]))
            if cur is not None:
                yield key, cur

    def shas(self) -> set[str]:
        """Every content hash the manifest references (current and older versions)."""
        out: set[str] = set()
        for bucket in self.bucket_names():
            for d in self.keys(bucket).values():
                for v in (d, *d.get("older", ())):
                    sha = v.get("sha256")
                    if sha:
                        out.add(sha)
        return out

    def references(self) -> Iterator[tuple[str, int | None]]:
        """(sha, size) of every referenced version (a sha may repeat)."""
        for bucket in self.bucket_names():
            for d in self.keys(bucket).values():
                for v in (d, *d.get("older", ())):
                    sha = v.get("sha256")
                    if sha:
                        yield sha, v.get("size")


def build(
    *,
    backup_id: str,
    base: str | None,
    started_us: int,
    finished_us: int,
    as_of_us: int,
    checkpoint: str | None,
    snapshot: Mapping[str, Mapping[str, Versions]],
    versioned: set[str],
    lagging: Sequence[Lagging],
    listed: Mapping[str, str],
    stats: Mapping[str, int],
    behind: Mapping[str, BehindDoc] | None = None,
) -> ManifestDoc:
    buckets: dict[str, BucketDoc] = {}
    for bucket, keys in snapshot.items():
        buckets[bucket] = {
            "versioned": bucket in versioned,
            "objects": {k: key_to_dict(v) for k, v in keys.items() if v},
        }
    doc: ManifestDoc = {
        "format": FORMAT,
        "backup_id": backup_id,
        "base": base,
        "started": rfc3339_us(started_us),
        "finished": rfc3339_us(finished_us),
        "as_of": rfc3339_us(as_of_us),
        "as_of_us": as_of_us,
        "checkpoint": checkpoint,
        "buckets": buckets,
        "lagging": list(lagging),
        "listed": dict(listed),
        "stats": dict(stats),
    }
    if behind:
        doc["behind"] = dict(sorted(behind.items()))
    return doc


def totals(doc: ManifestDoc) -> tuple[int, int]:
    """(objects visible in a restore, their bytes)."""
    m = Manifest(doc)
    n = size = 0
    for bucket in m.bucket_names():
        for _key, v in m.objects(bucket):
            n += 1
            size += v.size or 0
    return n, size


def write(store: BackupStore, doc: ManifestDoc) -> int:
    objects, nbytes = totals(doc)
    meta = {"as-of": str(doc["as_of"]), "as-of-us": str(doc["as_of_us"]), "objects": str(objects), "bytes": str(nbytes)}
    return store.put_doc(manifest_name(str(doc["backup_id"])), doc, zstd=True, metadata=meta)


def load(store: BackupStore, backup_id: str) -> Manifest:
    doc = store.get_doc(manifest_name(backup_id), zstd=True)
    if doc is None:
        raise ObjectMissing(f"no backup {backup_id} in {store.url}")
    if not isinstance(doc, dict):
        raise PermanentError(f"{store.url}{manifest_name(backup_id)} is not a manifest (not a JSON object)")
    return Manifest(cast(ManifestDoc, doc))  # our own document; its format is checked


def exists(store: BackupStore, backup_id: str) -> bool:
    return store.stat(manifest_name(backup_id)) is not None


def backup_ids(store: BackupStore) -> list[str]:
    """Every finished backup's id, oldest first (one listing, no manifest read)."""
    out = []
    for info in store.list(MANIFESTS):
        name = info.name[len(MANIFESTS) :]
        if name.endswith(MANIFEST_SUFFIX) and is_backup_id(name[: -len(MANIFEST_SUFFIX)]):
            out.append(name[: -len(MANIFEST_SUFFIX)])
    return sorted(out)


def list_backups(store: BackupStore) -> list[BackupInfo]:
    """Every finished backup, oldest first."""
    out: list[BackupInfo] = []
    for info in store.list(MANIFESTS):
        name = info.name[len(MANIFESTS) :]
        if not name.endswith(MANIFEST_SUFFIX) or not is_backup_id(name[: -len(MANIFEST_SUFFIX)]):
            continue
        backup_id = name[: -len(MANIFEST_SUFFIX)]
        meta = store.head(info.name) or {}
        try:
            as_of_us = int(meta["as-of-us"]) if "as-of-us" in meta else parse_rfc3339(meta["as-of"])
            objects, nbytes = int(meta["objects"]), int(meta["bytes"])
        except (KeyError, ValueError):
            # Metadata lost (a copied store): read the manifest itself.
            m = load(store, backup_id)
            as_of_us = m.as_of_us
            objects, nbytes = totals(m.doc)
        out.append(BackupInfo(backup_id, as_of_us, objects, nbytes, info.size, info.modified))
    out.sort(key=lambda b: b.backup_id)
    return out


def select(backups: list[BackupInfo], *, backup_id: str | None = None, at_us: int | None = None) -> BackupInfo:
    """The backup named, or the latest whose state is as of ``at_us`` or earlier."""
    if backup_id is not None:
        for b in backups:
            if b.backup_id == backup_id:
                return b
        raise PermanentError(f"no backup {backup_id!r} (see `backup list`)")
    if at_us is None:
        if not backups:
            raise PermanentError("there are no backups yet")
        return backups[-1]
    eligible = [b for b in backups if b.as_of_us <= at_us]
    if not eligible:
        raise PermanentError(f"no backup is as of {rfc3339_us(at_us)} or earlier")
    return max(eligible, key=lambda b: (b.as_of_us, b.backup_id))
