"""What replication keeps per site in the index's store, beside the site's checkpoint (consumer
``replication-<site>``, ``changelog.consumers.framework``): omap keys ``k.replication-<site>.<...>``
of the control object.

* ``f.<id>`` **failed entries**: a record the site refused for good (403, no such bucket, ...),
  or kept failing on a transient error while the site answered everything else. The value holds
  the record itself, the error, when it first and last failed and how often. Written in the same
  fenced op as the checkpoint that moves past the record, so a crash neither loses an entry nor
  leaves a record both replicated and failed. ``<id>`` is a hash of (bucket, key, version), so an
  entry that fails again replaces its older self.
* ``q.<id>`` **retry requests** (``POST /_/crr/failed``, ``replicate failed retry``): written by
  whoever asks, taken by the site's consumer at its next step, which applies the entry's record
  again (a record superseded since is dropped with its reason: replaying a stale record must never
  undo a newer one).
* ``v.<id>`` the **version map**: source version -> the site's version of it, for versioned
  buckets (a version delete at the source deletes exactly that version at the site).
* ``pause``: the site is paused (``since``, optional ``resume_at``). Kept in the store, so a pause
  holds across restarts and every ``serve`` sees it, wherever it was asked for.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import orjson

from changelog.pipeline.control import consumer_key
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.store import WriteOp, omap_iter

CONSUMER_PREFIX = "replication-"
FAILED = "f."
RETRY = "q."
VERSION = "v."
PAUSE = "pause"
# The log object the site's consumer is applying (set before, removed with the commit past it):
# a successor that finds it set knows its predecessor died mid-object.
INFLIGHT = "inflight"
# Each record's outcome within the object in flight, written as it completes (``p.<index>``) and
# removed with the commit: a successor takes up the object where its predecessor died. Two-way on
# versioned buckets, it names what the record placed at the site (``pl``): the replicator's
# ledger of placements (``apply.Ledger``), which therefore never outlives the checkpoint.
PROGRESS = "p."
# The multipart uploads begun at the site for the object in flight (``u.<index>.<random>``:
# bucket, key, upload id: none yet when noted just before the upload is begun), written before
# their parts are sent and removed with the commit: a successor aborts those its predecessor left
# open (a killed process cannot), else they would
# hold their parts' space at the site for good, unseen in any listing of objects.
UPLOAD = "u."
# Failed-entry counts are reused this long (seconds).
COUNT_TTL = 10.0
_counts: dict[tuple[int, str, str], tuple[float, int]] = {}
_count_mu = threading.Lock()
# How long a scheduled resume waits by default (Backbeat's default).
DEFAULT_RESUME_HOURS = 6.0


def consumer_name(site: str) -> str:
    return CONSUMER_PREFIX + site


def state_prefix(site: str) -> str:
    """The site's omap keys on the control object start with this."""
    return consumer_key(consumer_name(site)) + "."


def entry_id(bucket: str, key: str | None, version_id: str | None) -> str:
    """A failed entry's id: stable for (bucket, key, version), safe in any omap key."""
    raw = orjson.dumps([bucket, key or "", version_id or "null"])
    return hashlib.sha256(raw).hexdigest()[:32]


def version_id_key(bucket: str, key: str, src_version: str) -> str:
    """The version map's key of ``src_version`` of (site bucket, key)."""
    return VERSION + hashlib.sha256(orjson.dumps([bucket, key, src_version])).hexdigest()[:32]


@dataclass(frozen=True)
class FailedEntry:
    """A record a site could not take: what it was, why, since when."""

    id: str
    record: LogRecord
    error: str
    first_failed: float
    last_failed: float
    attempts: int = 1

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "record": self.record.encode().decode("utf-8"),
                "error": self.error,
                "first_failed": self.first_failed,
                "last_failed": self.last_failed,
                "attempts": self.attempts,
            }
        )

    @classmethod
    def decode(cls, entry: str, raw: bytes) -> FailedEntry:
        doc = orjson.loads(raw)
        return cls(
            entry,
            LogRecord.from_json(doc["record"]),
            str(doc.get("error", "")),
            float(doc.get("first_failed", 0.0)),
            float(doc.get("last_failed", 0.0)),
            int(doc.get("attempts", 1)),
        )

    def again(self, error: str, now: float, record: LogRecord | None = None) -> FailedEntry:
        """The entry failed again, for ``record`` when a later record of its (bucket, key,
        version) failed: the entry then holds that one, the state a retry must bring (the one
        it replaces is superseded by it)."""
        return FailedEntry(self.id, record or self.record, error, self.first_failed, now, self.attempts + 1)

    def backbeat(self, site: str) -> dict[str, object]:
        """The entry as Backbeat's failed list shows it (``StorageClass`` names the site)."""
        r = self.record
        return {
            "Bucket": r.qualified_bucket,
            "Key": r.key,
            "VersionId": r.version_id or "null",
            "StorageClass": site,
            "Size": r.size,
            "LastModified": r.mtime or r.time,
            "Op": r.op,
            "Error": self.error,
            "Attempts": self.attempts,
            "FirstFailed": _iso(self.first_failed),
            "LastFailed": _iso(self.last_failed),
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class SiteState:
    """Reads (and, for operator requests, writes) a site's keys; the consumer writes its own
    through its cursor, fenced by its lease."""

    def __init__(self, index: ChangeIndex, site: str) -> None:
        self.index = index
        self.site = site
        self.prefix = state_prefix(site)

    def _iter(self, sub: str, *, after: str = "") -> Iterator[tuple[str, bytes]]:
        start = self.prefix + sub + after if after else ""
        for k, v in omap_iter(self.index.store, self.index.control_oid, prefix=self.prefix + sub, start_after=start):
            yield k[len(self.prefix) + len(sub) :], v

    # -- failed entries

    def failed(self, *, marker: str | None = None, limit: int | None = None) -> Iterator[FailedEntry]:
        """Failed entries in id order, after ``marker`` (an id), at most ``limit``."""
        n = 0
        for entry, raw in self._iter(FAILED, after=marker or ""):
            if limit is not None and n >= limit:
                return
            yield FailedEntry.decode(entry, raw)
            n += 1

    def failed_entry(self, entry: str) -> FailedEntry | None:
        key = self.prefix + FAILED + entry
        raw = self.index.store.omap_get(self.index.control_oid, [key]).get(key)
        return FailedEntry.decode(entry, raw) if raw is not None else None

    def count_failed(self) -> int:
        """How many failed entries the site has; counted at most every ``COUNT_TTL`` seconds per
        process (a scrape of the metrics must not read a long failed list each time)."""
        key = (id(self.index.store), self.index.control_oid, self.site)
        now = time.monotonic()
        with _count_mu:
            got = _counts.get(key)
            if got is not None and now - got[0] < COUNT_TTL:
                return got[1]
        n = sum(1 for _ in self._iter(FAILED))
        with _count_mu:
            _counts[key] = (now, n)
        return n

    def request_retry(self, entries: list[str] | None = None, *, now: float | None = None) -> int:
        """Ask the site's consumer to retry ``entries`` (ids; None: every failed entry). Returns
        how many were asked for (ids without a failed entry are ignored)."""
        now = time.time() if now is None else now
        wanted = [e.id for e in self.failed()] if entries is None else [e for e in entries if self.failed_entry(e)]
        op = WriteOp()
        for entry in wanted:
            op.set[self.prefix + RETRY + entry] = orjson.dumps({"requested": now})
        if not op.is_empty():
            self.index.store.execute(self.index.control_oid, op)
        return len(wanted)

    def retry_requests(self) -> list[str]:
        return [entry for entry, _ in self._iter(RETRY)]

    # -- the version map

    def site_version(self, bucket: str, key: str, src_version: str) -> str | None:
        k = self.prefix + version_id_key(bucket, key, src_version)
        raw = self.index.store.omap_get(self.index.control_oid, [k]).get(k)
        return raw.decode("utf-8") if raw is not None else None

    # -- pause

    def pause_doc(self) -> dict[str, float | None] | None:
        k = self.prefix + PAUSE
        raw = self.index.store.omap_get(self.index.control_oid, [k]).get(k)
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return {"since": doc.get("since"), "resume_at": doc.get("resume_at")}

    def paused(self, now: float | None = None) -> bool:
        """Paused now (a scheduled resume that is due counts as resumed)."""
        doc = self.pause_doc()
        if doc is None:
            return False
        at = doc.get("resume_at")
        return at is None or (time.time() if now is None else now) < at

    def pause(self, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        doc = self.pause_doc()
        since = doc["since"] if doc and doc.get("since") else now
        self._set(PAUSE, orjson.dumps({"since": since, "resume_at": None}))

    def resume(self) -> None:
        op = WriteOp()
        op.remove.append(self.prefix + PAUSE)
        self.index.store.execute(self.index.control_oid, op)

    def schedule_resume(self, hours: float = DEFAULT_RESUME_HOURS, *, now: float | None = None) -> float:
        """Pause now (if not yet) and resume in ``hours``; returns when."""
        now = time.time() if now is None else now
        doc = self.pause_doc()
        since = doc["since"] if doc and doc.get("since") else now
        at = now + hours * 3600.0
        self._set(PAUSE, orjson.dumps({"since": since, "resume_at": at}))
        return at

    def _set(self, sub: str, value: bytes) -> None:
        op = WriteOp()
        op.set[self.prefix + sub] = value
        self.index.store.execute(self.index.control_oid, op)

    def status_doc(self, now: float | None = None) -> Mapping[str, object]:
        now = time.time() if now is None else now
        doc = self.pause_doc()
        at = doc.get("resume_at") if doc else None
        since = doc.get("since") if doc else None
        return {
            "paused": self.paused(now),
            "paused_since": _iso(since) if since else None,
            "resume_at": _iso(at) if at else None,
        }
