"""Copying one object of a run (in a worker thread): read it from the source under the guard its
record allows (``GET versionId``, ``GET If-Match`` on the ETag, or the LastModified guard of a
record without ETag: ``runner`` explains the ETag race), hash it (SHA-256) while spooling it,
store it as a blob unless already there (``blobs``), read its tags when the GET says it has
some, and say what happened: an ``Outcome``. A version whose content is already held and whose
tags may have changed (``Version.tags_stale``) has only its tags read.

The tags are read after the content, by a second request: a tagging change in between is a
later record, which the next run applies (a backup's state of a key changed after its
``as_of`` may be newer than ``as_of``, as a listed bucket's is).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from changelog.consumers.backup.blobs import Blobs
from changelog.consumers.backup.model import Version, VersionDoc, norm_etag
from changelog.consumers.backup.source import ContentChanged, GetResult, Probe, Source
from changelog.errors import ObjectMissing, TransientError
from changelog.pipeline.logformat import parse_rfc3339

logger = logging.getLogger(__name__)

# Attempts per object, and the pause before each retry of a transient error.
ATTEMPTS = 4
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
# Contents up to this size are spooled in memory, larger ones go to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024
COPY_CHUNK = 256 * 1024
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class _Unprobed(enum.Enum):
    UNPROBED = "unprobed"


# An item not probed by a range listing: its probe, when it needs one, is its own request.
UNPROBED = _Unprobed.UNPROBED
# What a range listing told of an item before its fetch: the listing entry, None (absent from
# the listing: deleted since) or UNPROBED.
Prefetched = Probe | None | Literal[_Unprobed.UNPROBED]


# What identifies an item across attempts of a run: bucket, key, version id, ETag.
Ident = tuple[str, str, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Item:
    """One object to copy: the current version of a changed key."""

    bucket: str
    key: str
    version: Version

    @property
    def ident(self) -> Ident:
        return (self.bucket, self.key, self.version.version_id, self.version.etag)


# "vanished": gone (404) since its record; "changed": written again since its record.
OutcomeKind = Literal["copied", "vanished", "changed"]


# An outcome's row in a progress segment (a JSON array): its item's ident, kind and version.
OutcomeRow = tuple[str, str, str | None, str | None, OutcomeKind, VersionDoc | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    item: Item
    kind: OutcomeKind
    version: Version | None = None  # the version with its content, when copied
    uploaded: bool = False
    nbytes: int = 0

    def to_doc(self) -> OutcomeRow:
        """Its row in a progress segment."""
        return (*self.item.ident, self.kind, self.version.to_dict() if self.version else None)


class Fetcher:
    """Copies objects from ``source`` into ``blobs``. ``as_of_us``: the run's watermark (its
    records are complete up to it)."""

    def __init__(
        self, source: Source, blobs: Blobs, *, as_of_us: int, sleep: Callable[[float], None]
    ) -> None:
        self.source = source
        self.blobs = blobs
        self.as_of_us = as_of_us
        self.sleep = sleep

    def fetch(self, item: Item, pre: Prefetched = UNPROBED) -> Outcome:
        """Copy one object, retrying transient errors with backoff. ``pre``: the item's probe
        from a range listing (a retry probes again)."""
        for attempt in range(ATTEMPTS):
            try:
                return self._fetch_once(item, last=attempt == ATTEMPTS - 1, pre=pre if attempt == 0 else UNPROBED)
            except TransientError as ex:
                if attempt == ATTEMPTS - 1:
                    raise
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                logger.warning("copy of %s/%s failed (%s); retrying in %.1f s", item.bucket, item.key, ex, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def written_since(self, record_us: int, listed_us: int) -> bool:
        """Whether the listed object may be a later write than the record's. Listings give
        milliseconds on Pacific and Reef, whole seconds on Tentacle (as AWS does). Within one
        second the answer comes from the watermark: a later write in that second would have a
        record of this run after this one (this is the key's last), so the listed object is the
        record's when the run's watermark covers the whole second, and unknown before."""
        if listed_us % 1_000_000 == 0 and listed_us // 1_000_000 == record_us // 1_000_000:
            return self.as_of_us < (record_us // 1_000_000 + 1) * 1_000_000
        return listed_us // 1000 > record_us // 1000

    def _fetch_once(self, item: Item, *, last: bool, pre: Prefetched) -> Outcome:
        v = item.version
        if not v.needs_content:
            return self._retag(item)
        if v.version_id is None and v.etag is None:
            # A record without an ETag (the follower could not tell it): guard by time instead,
            # from a one-key listing or the key's entry in a range listing (``probes``).
            probe = self.source.probe(item.bucket, item.key) if pre is UNPROBED else pre
            if probe is None:
                return Outcome(item, "vanished")
            etag, _size, modified_us = probe
            if v.last_modified is not None and self.written_since(parse_rfc3339(v.last_modified), modified_us):
                return Outcome(item, "changed")
            v = dataclasses.replace(v, etag=etag)
        try:
            got = self.source.get(
                item.bucket, item.key, version_id=v.version_id, if_match=v.etag if v.version_id is None else None
            )
        except ObjectMissing:
            return Outcome(item, "vanished")
        except ContentChanged:
            return Outcome(item, "changed")
        if v.version_id is None and v.etag is not None and got.etag is not None and got.etag != v.etag:
            got.body.close()
            return Outcome(item, "changed")
        return self._store(item, v, got, last=last)

    def _retag(self, item: Item) -> Outcome:
        """Read again the tags of a version whose content is held (its id names it exactly)."""
        v = item.version
        try:
            tags = self.source.tags(item.bucket, item.key, version_id=v.version_id)
        except ObjectMissing:
            return Outcome(item, "vanished")
        return Outcome(item, "copied", dataclasses.replace(v, tags=tags, tags_stale=False))

    def _tags(self, item: Item, v: Version, got: GetResult) -> dict[str, str]:
        """The tags of the object just read: none without a GetObjectTagging when the GET said
        so (``GetResult.tag_count``)."""
        if got.tag_count <= 0:
            return {}
        try:
            return self.source.tags(item.bucket, item.key, version_id=got.version_id or v.version_id)
        except ObjectMissing:
            # Deleted since the GET: its delete record comes later; keep the content read.
            logger.info("%s/%s: gone before its tags could be read", item.bucket, item.key)
            return {}

    def _store(self, item: Item, v: Version, got: GetResult, *, last: bool) -> Outcome:
        """Hash and spool the body, check it against its size and MD5 ETag, store the blob."""
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        with got.body, tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            while chunk := got.body.read(COPY_CHUNK):
                sha.update(chunk)
                md5.update(chunk)
                spool.write(chunk)
                size += len(chunk)
            if size != got.size:
                raise TransientError(f"GET {item.bucket}/{item.key}: read {size} of {got.size} bytes")
            etag = got.etag or v.etag
            if etag and _MD5_RE.match(etag) and md5.hexdigest() != etag:
                if not last:
                    raise TransientError(f"GET {item.bucket}/{item.key}: content does not match its ETag")
                logger.warning("%s/%s: content MD5 differs from ETag %s (encrypted?); keeping it", item.bucket, item.key, etag)
            digest = sha.hexdigest()
            spool.seek(0)
            uploaded = self.blobs.ensure(digest, spool, size)
        tags = self._tags(item, v, got)
        version = dataclasses.replace(
            v,
            size=size,
            etag=norm_etag(etag),
            sha256=digest,
            metadata=dict(got.metadata),
            content_type=got.content_type,
            headers=dict(got.headers),
            tags=tags,
            tags_stale=False,
            last_modified=got.last_modified or v.last_modified,
        )
        return Outcome(item, "copied", version, uploaded, size if uploaded else 0)
