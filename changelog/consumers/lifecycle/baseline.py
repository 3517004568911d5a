"""The one-time listing of a bucket that gains lifecycle rules: its existing versions scheduled
as their records would have been (S3 applies a new rule to the objects already there).

The schedule keeps the versions of governed buckets only, from the records applied while they
are governed. A bucket that gains its first rule (named in ``[[lifecycle.rules]]`` after a
restart, or given a lifecycle configuration with ``source = "bucket"``) has objects no record
kept. The consumer then lists the bucket once (ListObjectVersions, ``PAGE_KEYS`` per page) and
applies each page to the schedule (``Schedule.apply_listing``: ``ShardBatch.listed`` schedules
each version through the records' own ``_schedule``), writing the position after the page
(``b.<bid>``: ``model.BaselineMark``) in the same guarded op. A crash resumes after the last page
written: never from scratch, never a page lost; a page applied again is harmless (a key takes the
listed stack, keeping what the schedule already knew of it).

**Records and the listing.** A page is listed after every record applied before it, so it is
never older than what the schedule holds (``Schedule.apply_listing`` reads the shard's ``g``
before listing and writes guarded by it). Records applied after the page (the consumer may lag
the bucket) describe mutations before or after it: a write of a version the page listed is an
update in place; any other record moves the key on as ever. The executor re-checks every object
before acting, so an entry the listing made that a later record corrects is never acted on.

**When.** ``want`` queues a bucket whose mark is not ``done``; ``run`` lists at most
``PAGES_PER_STEP`` pages per consumer step (the lease checked before each), so a large bucket
does not keep the loop from the logs. A bucket no rule names any more loses its mark with its
keys (``Schedule.reschedule``, ``reschedule_bucket``): if it gains rules again, it is listed
again. The cost: one listing per bucket in its life, where radosgw's own lifecycle lists every
bucket with a policy every day.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from changelog.consumers.lifecycle.model import BASELINE_DONE, BaselineMark, listed_seq
from changelog.consumers.lifecycle.schedule import ListedVersion, Schedule
from changelog.consumers.lifecycle.uploads_gc import s3_bucket
from changelog.errors import ChangelogError, PermanentError
from changelog.pipeline.s3client import refusal, s3_call, translate_error

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

# Versions per ListObjectVersions request: S3's (and radosgw's rgw_max_listing_results) cap.
PAGE_KEYS = 1000
# Pages listed per consumer step at most (each one request and one schedule write): about
# 8,000 versions, a few seconds, before the loop looks at the logs, the lease and stop again.
PAGES_PER_STEP = 8
COUNTERS = ("baseline_pages", "baseline_versions", "baseline_buckets_done", "baseline_failed")


class NoSuchBucket(ChangelogError):
    """The bucket is gone: nothing to list (a bucket created later comes with its records)."""


def _translate(ex: Exception, what: str) -> ChangelogError:
    r = refusal(ex)
    if r is not None and r.code == "NoSuchBucket":
        return NoSuchBucket(f"{what}: {r}")
    return translate_error(ex, what)


@dataclass(frozen=True)
class Page:
    """One ListObjectVersions page: per key, its versions newest first, in key order; the
    markers the next page starts from (None: the listing is complete)."""

    keys: list[list[ListedVersion]]
    next_key: str | None
    next_version: str | None
    # The last key goes on in the next page (it alone filled this one: ``next_version`` set).
    split: bool = False
    # The next page starts after (or inside) a key listed to its end (``BaselineMark.key_done``).
    key_done: bool = False

    @property
    def versions(self) -> int:
        return sum(len(vs) for vs in self.keys)


def _us(t: Any) -> int:
    return int(t.timestamp() * 1_000_000)


def list_page(client: S3Client, bucket: str, mark: BaselineMark, *, limit: int = PAGE_KEYS) -> Page:
    """The page of ``bucket`` (qualified) after ``mark``'s position. Versions and delete
    markers come in two lists: each key's are merged newest first (the latest, then newer
    LastModified, then each list's own order: Tentacle lists whole seconds), and numbered
    (``listed_seq``) from ``mark.versions`` on, so a key's older versions get smaller seqs.

    A truncated page ends after its last complete key: the versions of the key it stops in are
    dropped (the next page, after that complete key, lists them again from the key's newest).
    A page never ends at a version id-marker that may be gone by the next page (the executor
    expires, a client deletes): radosgw then starts after the whole key (cls_rgw
    ``encode_list_index_key``: ENOENT gives ``name + "\\x01"``), and the key's older versions
    would never be listed. Only a key that alone fills a page is split (``Page.split``)."""
    req: dict[str, object] = {"Bucket": s3_bucket(bucket), "MaxKeys": limit}
    if mark.key_marker:
        req["KeyMarker"] = mark.key_marker
        if mark.version_marker:
            req["VersionIdMarker"] = mark.version_marker
    resp = s3_call(f"ListObjectVersions {bucket}", lambda: client.list_object_versions(**req), _translate)  # type: ignore[arg-type]
    rows: list[
        tuple[tuple[bytes, bool, int, int, int], tuple[str, str | None, bool, str | None, str | None, int]]
    ] = []
    for kind, items in ((0, resp.get("Versions", [])), (1, resp.get("DeleteMarkers", []))):
        for i, o in enumerate(items):
            vid = o.get("VersionId")
            ver = None if vid in (None, "", "null") else str(vid)
            t = _us(o["LastModified"])
            etag = (str(o.get("ETag", "")).strip('"') or None) if kind == 0 else None
            sc = str(o.get("StorageClass") or "STANDARD") if kind == 0 else None
            rank = (o["Key"].encode(errors="surrogatepass"), not o.get("IsLatest"), -t, kind, i)
            rows.append((rank, (o["Key"], ver, kind == 1, etag, sc, t)))
    rows.sort(key=lambda r: r[0])
    truncated = bool(resp.get("IsTruncated")) and bool(rows)
    if mark.key_done:
        # After a whole key: S3 starts after it, but radosgw (its index key for a key-marker
        # alone is the plain name, which sorts before the key's version entries) and moto list
        # that key's versions again: they were applied with an earlier page.
        last_ver = rows[-1][1][1] if rows else None
        rows = [r for r in rows if r[1][0] != mark.key_marker]
        if truncated and not rows:
            # Nothing but that key (it has a page of versions): on through it, still dropped.
            # Should that version be gone by the next page, radosgw starts after the whole key.
            at = str(resp.get("NextVersionIdMarker") or last_ver or "null")
            return Page([], mark.key_marker, at, key_done=True)
    split = False
    next_key = next_version = None
    if truncated:
        last_key = rows[-1][1][0]
        whole = [r for r in rows if r[1][0] != last_key]
        if whole:
            rows, next_key, next_version = whole, whole[-1][1][0], ""
        else:
            split = True
            next_key = str(resp.get("NextKeyMarker") or last_key)
            next_version = str(resp.get("NextVersionIdMarker") or rows[-1][1][1] or "null")
    keys: list[list[ListedVersion]] = []
    for pos, (_, (key, ver, marker, etag, sc, t)) in enumerate(rows, start=mark.versions):
        lv = ListedVersion(key, ver, marker, etag, sc, t, listed_seq(pos))
        if keys and keys[-1][0].key == key:
            keys[-1].append(lv)
        else:
            keys.append([lv])
    return Page(keys, next_key, next_version, split, key_done=truncated and not split)


@dataclass
class Baseliner:
    """Lists the buckets that gained rules, page by page, into ``schedule`` (module docstring)."""

    schedule: Schedule
    client: S3Client
    pages_per_step: int = PAGES_PER_STEP
    page_keys: int = PAGE_KEYS
    clock: Callable[[], float] = time.time
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Buckets to list, in the order they were wanted (dict: ordered, no duplicates).
    _queue: dict[str, None] = field(default_factory=dict)
    _failed: dict[str, str] = field(default_factory=dict)

    def want(self, buckets: Iterable[str]) -> int:
        """Queue each of ``buckets`` (qualified) the schedule has not listed to its end; how many
        were queued."""
        queued = 0
        for b in buckets:
            if b in self._queue:
                continue
            tenant, _, name = b.rpartition("/")
            mark = self.schedule.baseline_mark(tenant, name)
            if mark is not None and mark.done:
                continue
            self._queue[b] = None
            queued += 1
        return queued

    def forget(self, bucket: str) -> None:
        """``bucket`` lost its rules (its mark went with its keys)."""
        self._queue.pop(bucket, None)
        self._failed.pop(bucket, None)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def run(self, check: Callable[[], None]) -> bool:
        """List up to ``pages_per_step`` pages of the queued buckets, ``check()`` (the lease)
        before each. True when pages were listed and more are left for the next step. A
        transient S3 error is raised (the step backs off; the position is where the last page
        left it)."""
        pages = 0
        later: list[str] = []
        while pages < self.pages_per_step and self._queue:
            bucket = next(iter(self._queue))
            if not self.schedule.rules.governs(bucket):
                # Its rules not read yet by this process (source = "bucket" reads the tracked
                # buckets' configurations 200 per step): listed once they are. A bucket that
                # lost them is forgotten by the consumer (``forget``).
                del self._queue[bucket]
                later.append(bucket)
                continue
            check()
            self._page(bucket)
            pages += 1
        for b in later:
            self._queue[b] = None
        return pages > 0 and bool(self._queue)

    def _page(self, bucket: str) -> None:
        tenant, _, name = bucket.rpartition("/")
        n = self.schedule.layout.shard(tenant, name)[0]
        head = self.schedule.head(n)  # before the listing: its g guards the page's write
        mark = self.schedule.baseline_mark(tenant, name)
        now = int(self.clock() * 1_000_000)
        if mark is None:
            mark = BaselineMark(tenant, name, started_us=now)
            logger.info("lifecycle: listing bucket %s once: it gained lifecycle rules", bucket)
        if mark.done:
            self._done(bucket, mark)
            return
        try:
            page = list_page(self.client, bucket, mark, limit=self.page_keys)
        except NoSuchBucket:
            page = Page([], None, None)
        except PermanentError as ex:
            # Refused (e.g. 403): kept pending, tried again when the lease is next taken.
            logger.warning("lifecycle: cannot list bucket %s for its existing objects: %s", bucket, ex)
            self._queue.pop(bucket, None)
            self._failed[bucket] = str(ex)
            self.counts["baseline_failed"] += 1
            return
        cont_key = mark.key_marker if mark.version_marker and not mark.key_done else None
        # The page's last key goes on in the next page only when it alone filled this one.
        last = len(page.keys) - 1 if page.split else -1
        keys = [(vs, vs[0].key == cont_key, i != last) for i, vs in enumerate(page.keys)]
        # A split key whose last versions ended the previous page: this one starts past it.
        ended = cont_key if cont_key is not None and not (keys and keys[0][1]) else None
        new = replace(
            mark,
            key_marker=page.next_key or "",
            version_marker=page.next_version or "",
            key_done=page.key_done,
            versions=mark.versions + page.versions,
            pages=mark.pages + 1,
        )
        if page.next_key is None:
            new = replace(new, state=BASELINE_DONE, done_us=now)
        self.schedule.apply_listing(head, new, keys, listed_us=now, ended=ended)
        self.counts["baseline_pages"] += 1
        self.counts["baseline_versions"] += page.versions
        self._failed.pop(bucket, None)
        if new.done:
            self._done(bucket, new)

    def _done(self, bucket: str, mark: BaselineMark) -> None:
        self._queue.pop(bucket, None)
        self.counts["baseline_buckets_done"] += 1
        logger.info(
            "lifecycle: bucket %s listed: %d versions in %d pages scheduled",
            bucket,
            mark.versions,
            mark.pages,
        )

    def snapshot(self) -> dict[str, int]:
        out = {name: self.counts.get(name, 0) for name in COUNTERS}
        out["baseline_pending"] = len(self._queue)
        return out

    def doc(self) -> dict[str, object]:
        """This process's view: the buckets queued or listed since it took the lease."""
        return {
            "pending": len(self._queue),
            "failed": dict(sorted(self._failed.items())),
        }


def baseline_doc(schedule: Schedule, buckets: Iterable[str]) -> list[dict[str, object]]:
    """Per governed bucket (``buckets``), its listing state as the schedule holds it: ``pending``
    (never listed), ``listing`` (pages applied so far) or ``done``, with the versions listed."""
    marks: Mapping[str, BaselineMark] = {
        m.qualified_bucket: m for n in range(schedule.layout.shards) for m in schedule.baseline_marks(n)
    }
    out: list[dict[str, object]] = []
    for b in sorted(set(buckets) | set(marks)):
        m = marks.get(b)
        out.append(
            {
                "bucket": b,
                "state": m.state if m is not None else "pending",
                "versions": m.versions if m is not None else 0,
                "pages": m.pages if m is not None else 0,
            }
        )
    return out


__all__ = ["COUNTERS", "PAGES_PER_STEP", "PAGE_KEYS", "Baseliner", "Page", "baseline_doc", "list_page"]
