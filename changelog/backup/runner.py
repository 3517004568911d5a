"""``backup run``: turn the change logs since the previous backup into a new manifest, copying the
content of changed objects into the content-addressed blob store.

**Phases.** (1) *Plan*: start from the previous manifest (the base) and apply, in order, every
record of the log objects after the base's checkpoint up to the watermark's ``last_object``
(``changelog.reader``; ids already seen are skipped). Only metadata moves here: the result is,
per key, the versions as of the watermark. A first run (no base) reads the logs from their
beginning; a bucket without ``baseline`` records there (written by the RGW follower's full sync)
is baselined by listing it (ListObjectVersions when versioned). (2) *Copy*: every changed key
whose current version has no content yet is read from the source, hashed (SHA-256) while spooled,
and stored as ``blobs/<sha>`` unless already there. (3) *Manifest*: the full state, written last.

**The ETag race (unversioned objects).** A record of an unversioned write says "at time t the
object had ETag e"; by the time we read it, it may have been overwritten, and the bytes of e are
gone. Three facts settle it:

* Only the *last* record of a key in a run matters: the plan applies all of them first, so an
  earlier record is never read at all. (Reading records in order instead would face "the
  object changed again since this record" at every overwrite within a run; the plan answers it
  for free: a later record of the same run exists and is the one we read, so what we read is
  taken only when that later record matches.)
* The last record is read with ``GET If-Match: e`` (one request; the response's ETag is checked
  too, and an MD5 ETag against the bytes). A match means the bytes are those of the record.
  A record may lack its ETag (the RGW follower leaves it out when it could not tell it): then
  the key is first listed (LastModified to the millisecond, and the ETag): alone, or with the
  other such keys near it in one range listing when that costs fewer requests (``probes``); a
  key missing from the listing was deleted since. An object modified after the record's time
  (the object's mtime, same clock) was written again since, else it is read with ``If-Match``
  on the ETag just listed.
* A mismatch (412) or a 404 means the object changed again after the record, so after the
  watermark: a record beyond this run covers it. This record is then **skipped**: the key keeps
  its state of the previous backup (its content or its absence) and is listed under
  ``lagging`` in the manifest, and the next run applies the later record. We never store bytes
  under a record they do not belong to, and never invent a state that did not exist.

Records with a version id have no race: ``GET versionId=v`` returns exactly that version or a
404. A 404 means the version was deleted after the watermark (a later record covers it): the
version is dropped, the next older one becomes current (read in turn), and the key is listed as
lagging.

**Resuming.** The run's marker ``runs/<id>.json`` holds the base, the log range (``after`` ..
``until``), the start time and an expiry it renews (``lock`` explains how cleanup respects it).
Progress goes to segments ``runs/<id>/<n>.json.zst``: listing pages of a first run and the
outcome of every copied object (its hash, size and metadata), written every ``flush_items`` /
``flush_seconds`` and only after the blobs they name are stored. A rerun finds the unfinished
run (its owner dead or its marker expired), replays the plan over the same log range (the logs
up to ``until`` do not change), reloads the segments and copies only what is not in them. A
blob stored after the last segment is found by the exists check (its content is read again
from the source to learn its hash, but not uploaded again). A blob is trusted without upload
when it is in the base manifest, was uploaded by this run, or exists and was written after the
run started; otherwise (older, so possibly being deleted by a concurrent cleanup) it is
uploaded again. If the marker lapsed (the process was paused past its expiry, or died and was
resumed late) nothing recorded is trusted: blobs are checked again before the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any

from changelog.backup import manifest as mf
from changelog.backup.lock import wait_for_unlocked
from changelog.backup.model import State, Version, current, norm_etag
from changelog.backup.probes import ProbeRange
from changelog.backup.probes import plan as plan_probes
from changelog.backup.source import ContentChanged, Source
from changelog.backup.store import RUNS, BackupStore, owner_id, owner_is_dead
from changelog.errors import ChangelogError, LockBusy, ObjectMissing, PermanentError, TransientError
from changelog.logformat import LogRecord, parse_rfc3339, rfc3339_us
from changelog.progress import Progress
from changelog.reader import LogReader, read_watermark
from changelog.targets import Target

logger = logging.getLogger(__name__)

# Marker expiry: renewed every third of it. A run that dies frees the store for a cleanup
# within this time (at once on the same host); a paused run past it must re-check its blobs.
MARKER_TTL = 300.0
# Clock difference allowed between this host and the destination's timestamps (blob mtimes).
SKEW = 300.0
# Progress is made durable at least this often (objects / seconds): what a crash can cost.
FLUSH_ITEMS = 500
FLUSH_SECONDS = 10.0
WORKERS = 8
ATTEMPTS = 4
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
# Contents up to this size are spooled in memory, larger ones go to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024
COPY_CHUNK = 256 * 1024
# How long a run waits for a cleanup in progress to finish before giving up.
CLEANUP_WAIT_S = 600.0
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")

Hook = Callable[[str], None]
# An item not probed by a range listing (its probe, when it needs one, is its own request).
_UNPROBED: Any = object()


def _no_hook(point: str) -> None:
    pass


@dataclass
class RunResult:
    backup_id: str | None  # None: nothing new since the last backup
    base: str | None
    as_of_us: int | None
    checkpoint: str | None
    resumed: bool = False
    log_objects: int = 0
    records: int = 0
    listed: int = 0
    objects: int = 0
    bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    deduplicated: int = 0
    lagging: int = 0
    seconds: float = 0.0
    manifest_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["as_of"] = rfc3339_us(self.as_of_us) if self.as_of_us is not None else None
        return d


@dataclass(frozen=True, slots=True)
class Item:
    """One object to copy: the current version of a changed key."""

    bucket: str
    key: str
    version: Version

    @property
    def ident(self) -> tuple[str, str, str | None, str | None]:
        return (self.bucket, self.key, self.version.version_id, self.version.etag)


@dataclass(frozen=True, slots=True)
class Outcome:
    item: Item
    kind: str  # "copied" | "vanished" | "changed"
    version: Version | None = None  # the version with its content, when copied
    uploaded: bool = False
    nbytes: int = 0

    def to_doc(self) -> list[Any]:
        return [*self.item.ident, self.kind, self.version.to_dict() if self.version else None]


@dataclass
class _Marker:
    """The run's marker/checkpoint document, renewed by a background thread."""

    store: BackupStore
    doc: dict[str, Any]
    ttl: float
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    lapsed: bool = False
    _last_write: float | None = None
    _mu: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"{RUNS}{self.doc['backup_id']}.json"

    def write(self, **changes: Any) -> None:
        with self._mu:
            t0 = self.monotonic()
            if self._last_write is not None and t0 > self._last_write + self.ttl:
                # Nobody saw a live marker for a while: a cleanup may have run meanwhile.
                self.lapsed = True
                self.doc["untrusted_blobs"] = True
                logger.warning("run marker %s lapsed (%.0f s since last renewal)", self.name, t0 - self._last_write)
            self.doc.update(changes)
            self.doc["expires"] = self.clock() + self.ttl
            self.store.put_doc(self.name, self.doc)
            self._last_write = t0

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.write()
            except ChangelogError as ex:
                logger.warning("renewing run marker %s failed: %s", self.name, ex)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="backup-marker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def check_lapse(self) -> None:
        with self._mu:
            if self._last_write is not None and self.monotonic() > self._last_write + self.ttl:
                self.lapsed = True


class _Blobs:
    """Stores each content once: in-memory knowledge, then an exists check, then an upload;
    concurrent copies of the same content wait for the first one."""

    def __init__(
        self, store: BackupStore, *, base: set[str], not_before: float, hook: Hook
    ) -> None:
        self.store = store
        self.base = base
        self.not_before = not_before
        self.present: set[str] = set()
        self.uploaded: set[str] = set()
        # sha -> (size, modified) of every stored blob, when listed up front (``preload``).
        self.listing: dict[str, tuple[int, float]] | None = None
        self._inflight: dict[str, threading.Event] = {}
        self._mu = threading.Lock()
        self._hook = hook

    def preload(self) -> None:
        """The exists check for every blob at once: one listing of ``blobs/`` (a page per 1000
        blobs) instead of one request per copied object. Taken after the run's marker is
        written, so a blob missing here was not stored by an earlier attempt of this run."""
        self.listing = {sha: (info.size, info.modified) for sha, info in self.store.iter_blobs()}

    def ensure(self, sha: str, data: IO[bytes], size: int) -> bool:
        """Make sure blob ``sha`` is stored; True if this call uploaded it."""
        while True:
            with self._mu:
                if sha in self.present or sha in self.base:
                    return False
                ev = self._inflight.get(sha)
                if ev is None:
                    ev = self._inflight[sha] = threading.Event()
                    break
            ev.wait()
        try:
            if self.listing is not None:
                found = self.listing.get(sha)
            else:
                info = self.store.blob_info(sha)
                found = (info.size, info.modified) if info is not None else None
            if found is not None and found[0] == size and found[1] >= self.not_before:
                uploaded = False
            else:
                if found is not None:
                    logger.info("blob %s predates this run: storing it again", sha)
                data.seek(0)
                self.store.put_blob(sha, data, size)
                uploaded = True
                with self._mu:
                    self.uploaded.add(sha)
                self._hook("blob-stored")
            with self._mu:
                self.present.add(sha)
            return uploaded
        finally:
            with self._mu:
                del self._inflight[sha]
            ev.set()


class BackupRunner:
    """One ``backup run`` against a destination store, a change-log target and a source."""

    def __init__(
        self,
        store: BackupStore,
        logs: Target,
        source: Source,
        *,
        log_prefix: str = "",
        includes: Callable[[str, str | None], bool] | None = None,
        buckets: Iterable[str] | None = None,
        exclude_buckets: Iterable[str] = (),
        workers: int = WORKERS,
        marker_ttl: float = MARKER_TTL,
        skew: float = SKEW,
        flush_items: int = FLUSH_ITEMS,
        flush_seconds: float = FLUSH_SECONDS,
        cleanup_wait: float = CLEANUP_WAIT_S,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        hook: Hook = _no_hook,
        progress: bool | None = None,
    ) -> None:
        self.store = store
        self.logs = logs
        self.log_prefix = log_prefix
        self.source = source
        self._includes = includes
        self.buckets = sorted(set(buckets)) if buckets is not None else None
        self.exclude = set(exclude_buckets)
        self.workers = max(1, workers)
        self.marker_ttl = marker_ttl
        self.skew = skew
        self.flush_items = flush_items
        self.flush_seconds = flush_seconds
        self.cleanup_wait = cleanup_wait
        self.owner = owner or owner_id("backup")
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.hook = hook
        self.progress = progress
        self._as_of_us = 0  # the watermark of the run in hand (its records are complete up to it)

    # ------------------------------------------------------------------ selection

    def wanted(self, bucket: str, key: str | None = None) -> bool:
        if bucket in self.exclude:
            return False
        if self.buckets is not None and bucket not in self.buckets:
            return False
        return self._includes is None or self._includes(bucket, key)

    def _followed_buckets(self) -> list[str]:
        names = self.buckets if self.buckets is not None else self.source.list_buckets()
        return [b for b in names if self.wanted(b)]

    # ------------------------------------------------------------------ entry point

    def run(self) -> RunResult:
        t_start = self.monotonic()
        ids = mf.backup_ids(self.store)
        base = mf.load(self.store, ids[-1]) if ids else None
        marker_doc, segments = self._find_unfinished(base)
        resumed = marker_doc is not None
        if marker_doc is None:
            wm = read_watermark(self.logs, prefix=self.log_prefix)
            if wm is None:
                raise PermanentError(
                    f"no change-log watermark in {self.logs.url}: the collector has not completed a pass yet"
                )
            after = base.checkpoint if base else None
            until = wm.last_object
            if base is not None and (until is None or (after is not None and until <= after)):
                logger.info("nothing new since backup %s (checkpoint %s)", base.backup_id, after)
                return RunResult(None, base.backup_id, base.as_of_us, after, seconds=self.monotonic() - t_start)
            now = self.clock()
            marker_doc = {
                "format": 1,
                "backup_id": mf.new_backup_id(now),
                "owner": self.owner,
                "started": now,
                "base": base.backup_id if base else None,
                "after": after,
                "until": until,
                "as_of_us": max(wm.complete_until_us, base.as_of_us if base else 0),
                "untrusted_blobs": False,
            }
        else:
            marker_doc["owner"] = self.owner
            marker_doc["released"] = False
        marker = _Marker(self.store, marker_doc, self.marker_ttl, self.clock, self.monotonic)
        # Marker first, then look for a cleanup (lock.py: "write mine, then read theirs").
        marker.write()
        marker.start()
        try:
            wait_for_unlocked(self.store, timeout=self.cleanup_wait, clock=self.clock, sleep=self.sleep)
            self.hook("registered")
            result = self._run(marker, base, segments, resumed=resumed)
        except BaseException:
            marker.stop()
            # Failed, not crashed: the next run may resume at once. The expiry stays, so a
            # cleanup still protects what this run stored until then (and the next run can
            # trust it).
            with contextlib.suppress(ChangelogError):
                if mf.exists(self.store, str(marker_doc["backup_id"])) is False:
                    marker.write(released=True)
            raise
        finally:
            marker.stop()
        result.seconds = self.monotonic() - t_start
        return result

    def _find_unfinished(self, base: mf.Manifest | None) -> tuple[dict[str, Any] | None, list[Any]]:
        """A run to resume (its marker and segments), after refusing when one is alive and
        dropping those that cannot be resumed any more."""
        now = self.clock()
        found: dict[str, Any] | None = None
        for info in list(self.store.list(RUNS)):
            rest = info.name[len(RUNS) :]
            if "/" in rest or not rest.endswith(".json"):
                continue
            doc = self.store.get_doc(info.name)
            if not isinstance(doc, dict) or "backup_id" not in doc:
                continue
            run_id = str(doc["backup_id"])
            taken_over = doc.get("released") or owner_is_dead(str(doc.get("owner", "")))
            if float(doc.get("expires", 0)) > now and not taken_over:
                raise LockBusy(
                    f"backup run {run_id} is in progress ({doc.get('owner')}, marker valid for "
                    f"{float(doc['expires']) - now:.0f} s)"
                )
            if mf.exists(self.store, run_id):
                logger.info("run %s finished but was not cleaned up; removing its marker", run_id)
                self._drop_run(run_id)
            elif doc.get("base") != (base.backup_id if base else None) or found is not None:
                logger.warning("abandoning unfinished run %s (its base %s is not the latest)", run_id, doc.get("base"))
                self._drop_run(run_id)
            else:
                found = doc
        if found is None:
            return None, []
        if float(found.get("expires", 0)) <= now:
            # Dead long enough that a cleanup may have run: recorded blobs must be re-checked.
            found["untrusted_blobs"] = True
        segments = []
        for info in self.store.list(f"{RUNS}{found['backup_id']}/"):
            seg = self.store.get_doc(info.name, zstd=True)
            if isinstance(seg, dict):
                segments.append(seg)
        logger.info("resuming backup run %s (%d segments)", found["backup_id"], len(segments))
        return found, segments

    def _drop_run(self, run_id: str) -> None:
        for info in list(self.store.list(f"{RUNS}{run_id}/")):
            self.store.delete(info.name)
        self.store.delete(f"{RUNS}{run_id}.json")

    # ------------------------------------------------------------------ the run

    def _run(
        self, marker: _Marker, base: mf.Manifest | None, segments: list[Any], *, resumed: bool
    ) -> RunResult:
        doc = marker.doc
        run_id = str(doc["backup_id"])
        result = RunResult(run_id, doc.get("base"), int(doc["as_of_us"]), doc.get("until"), resumed=resumed)
        self._as_of_us = int(doc["as_of_us"])
        state = State(base.state() if base else None)
        if base is not None:
            state.versioned.update(b for b in base.bucket_names() if base.versioned(b))
        base_shas = base.shas() if base else set()
        listed: dict[str, str] = dict(base.doc.get("listed", {})) if base else {}

        # 1. plan
        baselined: set[str] = set()
        with Progress("backup: reading change logs", unit="records", enabled=self.progress) as bar:
            for _name, rec in self._records(doc.get("after"), doc.get("until"), result):
                if not self.wanted(rec.bucket, rec.key):
                    continue
                state.apply(rec)
                result.records += 1
                if rec.baseline:
                    baselined.add(rec.bucket)
                bar.update(1)
        seg_no = len(segments)
        if base is None:
            list_pages = [s for s in segments if s.get("kind") == "list"]
            for bucket in self._followed_buckets():
                if bucket in baselined:
                    continue
                seg_no = self._list_bucket(state, marker, bucket, list_pages, seg_no, result)
                listed[bucket] = rfc3339_us(int(self.clock() * 1_000_000))
        self.hook("planned")

        # 2. copy
        trusted = not doc.get("untrusted_blobs")
        done: dict[tuple[Any, ...], list[Any]] = {}
        for seg in segments:
            if seg.get("kind") == "fetch":
                for row in seg.get("outcomes", []):
                    done[tuple(row[:4])] = row
        blobs = _Blobs(self.store, base=base_shas, not_before=float(doc["started"]) - self.skew, hook=self.hook)
        lagging: list[dict[str, Any]] = []
        self._resolve(state, base)
        seg_no = self._copy(state, base, marker, blobs, done if trusted else {}, lagging, seg_no, result)

        # 3. manifest
        marker.check_lapse()
        if marker.lapsed:
            self._recheck(marker, blobs, base_shas)
        snapshot = state.snapshot()
        finished_us = int(self.clock() * 1_000_000)
        stats = {k: v for k, v in result.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
        doc_m = mf.build(
            backup_id=run_id,
            base=doc.get("base"),
            started_us=int(float(doc["started"]) * 1_000_000),
            finished_us=finished_us,
            as_of_us=int(doc["as_of_us"]),
            checkpoint=doc.get("until"),
            snapshot=snapshot,
            versioned=state.versioned,
            lagging=lagging,
            listed=listed,
            stats=stats,
        )
        result.objects, result.bytes = mf.totals(doc_m)
        result.lagging = len(lagging)
        result.manifest_bytes = mf.write(self.store, doc_m)
        self.hook("manifest-written")
        marker.stop()
        self._drop_run(run_id)
        logger.info(
            "backup %s: %d records, %d objects copied (%d blobs uploaded, %d already stored), %d lagging",
            run_id, result.records, result.copied, result.uploaded, result.deduplicated, result.lagging,
        )
        return result

    def _records(self, after: str | None, until: str | None, result: RunResult) -> Iterator[tuple[str, LogRecord]]:
        """Records of the log objects after ``after`` up to ``until`` (included), in order."""
        if until is None:
            return
        reader = LogReader(self.logs, prefix=self.log_prefix, checkpoint=after)
        last = None
        for obj, rec in reader.records():
            if obj.name > until:
                break
            if obj.name != last:
                result.log_objects += 1
                last = obj.name
            yield obj.name, rec

    def _list_bucket(
        self,
        state: State,
        marker: _Marker,
        bucket: str,
        pages: list[dict[str, Any]],
        seg_no: int,
        result: RunResult,
    ) -> int:
        """Baseline ``bucket`` by listing it; pages already listed by a crashed attempt come from
        its segments, and the listing continues where they end."""
        state.clear_bucket(bucket)
        mine = [p for p in pages if p.get("bucket") == bucket]
        versioned = bool(mine[0]["versioned"]) if mine else self.source.is_versioned(bucket)
        if versioned:
            state.versioned.add(bucket)
        key_marker: str | None = None
        version_marker: str | None = None
        finished = False

        def add(entries: Iterable[list[Any]]) -> None:
            for key, vdoc in entries:
                if not self.wanted(bucket, key):
                    continue
                v = Version.from_dict(vdoc)
                known = next((b for b in state.base(bucket, key) if b.version_id == v.version_id), None)
                if known is not None and known.sha256 and known.etag == v.etag:
                    v = known
                state.set(bucket, key, (*state.get(bucket, key), v))
                result.listed += 1

        for page in mine:
            add(page["entries"])
            key_marker, version_marker, finished = page["key_marker"], page["version_marker"], page["done"]
        with Progress(f"backup: listing {bucket}", unit="versions", enabled=self.progress) as bar:
            while not finished:
                lp = self.source.list_page(bucket, versioned=versioned, key_marker=key_marker, version_marker=version_marker)
                entries = [[k, v.to_dict()] for k, v in lp.entries]
                add(entries)
                bar.update(len(entries))
                key_marker, version_marker, finished = lp.key_marker, lp.version_marker, lp.key_marker is None
                self._write_segment(
                    marker,
                    seg_no,
                    {
                        "kind": "list",
                        "bucket": bucket,
                        "versioned": versioned,
                        "entries": entries,
                        "key_marker": key_marker,
                        "version_marker": version_marker,
                        "done": finished,
                    },
                )
                seg_no += 1
        return seg_no

    def _write_segment(self, marker: _Marker, n: int, seg: dict[str, Any]) -> None:
        self.store.put_doc(f"{RUNS}{marker.doc['backup_id']}/{n:06d}.json.zst", seg, zstd=True)
        self.hook("segment-written")

    def _resolve(self, state: State, base: mf.Manifest | None) -> None:
        """Keys of versioned buckets whose last known version was deleted: ask the source which
        versions are left (the newest one may be older than anything the logs showed)."""
        for bucket, key in sorted(state.resolve):
            versions = self.source.key_versions(bucket, key)
            known = {v.version_id: v for v in state.base(bucket, key) if not v.delete_marker}
            merged = tuple(
                known[v.version_id] if v.version_id in known and known[v.version_id].etag == v.etag else v
                for v in versions
            )
            state.set(bucket, key, merged)
        state.resolve.clear()

    def _copy(
        self,
        state: State,
        base: mf.Manifest | None,
        marker: _Marker,
        blobs: _Blobs,
        done: Mapping[tuple[Any, ...], list[Any]],
        lagging: list[dict[str, Any]],
        seg_no: int,
        result: RunResult,
    ) -> int:
        queue: deque[Item] = deque(Item(b, k, v) for b, k, v in sorted(state.needing_content(), key=lambda x: x[:2]))
        pending: list[list[Any]] = []
        last_flush = self.monotonic()

        def flush() -> None:
            nonlocal seg_no, last_flush
            if pending:
                self._write_segment(marker, seg_no, {"kind": "fetch", "outcomes": list(pending)})
                seg_no += 1
                pending.clear()
            last_flush = self.monotonic()

        def apply(out: Outcome) -> None:
            item = out.item
            if out.kind == "copied":
                assert out.version is not None
                if not state.update_version(item.bucket, item.key, out.version):
                    logger.debug("version of %s/%s left the plan meanwhile", item.bucket, item.key)
                result.copied += 1
                result.copied_bytes += out.version.size or 0
                if out.uploaded:
                    result.uploaded += 1
                    result.uploaded_bytes += out.nbytes
                else:
                    result.deduplicated += 1
                return
            lagging.append(
                {
                    "bucket": item.bucket,
                    "key": item.key,
                    "version_id": item.version.version_id,
                    "etag": item.version.etag,
                    "reason": out.kind,
                }
            )
            if item.version.version_id is None:
                # Unversioned and overwritten or deleted since: keep the previous backup's state.
                state.revert(item.bucket, item.key)
                return
            state.drop_version(item.bucket, item.key, item.version.version_id)
            if state.resolve:
                self._resolve(state, base)
            cur = current(state.get(item.bucket, item.key))
            if cur is not None and cur.needs_content:
                queue.append(Item(item.bucket, item.key, cur))

        initial = list(queue)
        queue.clear()
        # (item, its probe from a range listing: a listing entry, None for absent, or _UNPROBED)
        ready: deque[tuple[Item, Any]] = deque()
        # Exists checks: one per copied object, or one listing page per 1000 stored blobs
        # (estimated from the base): whichever costs fewer requests.
        if len(initial) > 2 * (len(blobs.base) // 1000 + 1):
            blobs.preload()
        with Progress("backup: copying", total=len(initial), unit="objects", enabled=self.progress) as bar:
            # Outcomes recorded by a crashed attempt of this run.
            for item in initial:
                row = done.get(item.ident)
                if row is None:
                    ready.append((item, _UNPROBED))
                    continue
                kind, vdoc = row[4], row[5]
                version = Version.from_dict(vdoc) if vdoc else None
                if version is not None and version.sha256:
                    blobs.present.add(version.sha256)
                apply(Outcome(item, kind, version))
                bar.update(1, nbytes=(version.size or 0) if version else 0)
            ranges, probing = self._plan_probes(state, ready)
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="backup-copy") as pool:
                running: set[Future[Any]] = set()
                listing: dict[Future[Any], ProbeRange] = {}
                while ready or queue or running or ranges:
                    # Range listings first (each a chain of pages whose keys feed the copies),
                    # on at most half of the slots so that copies go on meanwhile.
                    while ranges and len(listing) < max(1, self.workers // 2) and len(running) < 2 * self.workers:
                        rng = ranges.popleft()
                        page: Future[Any] = pool.submit(
                            self.source.probe_page, rng.bucket, prefix=rng.prefix, start_after=rng.start_after, token=rng.token
                        )
                        listing[page] = rng
                        running.add(page)
                    while queue:
                        ready.append((queue.popleft(), _UNPROBED))
                    while ready and len(running) < 2 * self.workers:
                        running.add(pool.submit(self._fetch, *ready.popleft(), blobs))
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        running.discard(fut)
                        rng_done = listing.pop(fut, None)
                        try:
                            if rng_done is not None:
                                ranges.extend(self._settle(rng_done, fut, ready, probing))
                                continue
                            out: Outcome = fut.result()
                        except BaseException:
                            for other in running:
                                other.cancel()
                            with contextlib.suppress(ChangelogError):
                                flush()
                            raise
                        apply(out)
                        pending.append(out.to_doc())
                        bar.update(1, nbytes=(out.version.size or 0) if out.version else 0)
                        self.hook("copied")
                    if len(pending) >= self.flush_items or self.monotonic() - last_flush >= self.flush_seconds:
                        flush()
                        marker.check_lapse()
            flush()
        return seg_no

    def _plan_probes(
        self, state: State, ready: deque[tuple[Item, Any]]
    ) -> tuple[deque[ProbeRange], dict[tuple[str, str], Item]]:
        """Batched probes (``probes``): per bucket, the items whose record has neither version id
        nor ETag (each needs a probe) that are worth a range listing leave ``ready`` and wait in
        the returned ranges (their items by bucket and key) until a page settles them."""
        need: dict[str, dict[str, Item]] = {}
        for item, _pre in ready:
            if item.version.version_id is None and item.version.etag is None:
                need.setdefault(item.bucket, {})[item.key] = item
        ranges: deque[ProbeRange] = deque()
        batched: set[tuple[str, str]] = set()
        for bucket, items in sorted(need.items()):
            if len(items) < 2:
                continue
            known = (k for k in state.keys(bucket) if current(state.get(bucket, k)) is not None)
            planned, _singles = plan_probes(bucket, items, known, page=self.source.probe_page_keys)
            for rng in planned:
                ranges.append(rng)
                batched.update((bucket, k) for _b, k in rng.keys)
                logger.debug(
                    "probing %d keys of %s by listing %r after %r (~%d pages)",
                    len(rng.keys), bucket, rng.prefix, rng.start_after, rng.estimate,
                )
        if batched:
            kept = [(item, pre) for item, pre in ready if (item.bucket, item.key) not in batched]
            ready.clear()
            ready.extend(kept)
        return ranges, {(rng.bucket, k): need[rng.bucket][k] for rng in ranges for _b, k in rng.keys}

    def _settle(
        self,
        rng: ProbeRange,
        fut: Future[Any],
        ready: deque[tuple[Item, Any]],
        probing: dict[tuple[str, str], Item],
    ) -> list[ProbeRange]:
        """A page of a range listing came back: its settled keys go to the copy with their
        listing entry; the range goes on (returned) unless finished or over its budget, when
        what is left is probed key by key."""
        try:
            entries, token = fut.result()
        except ChangelogError as ex:
            logger.warning("listing %s/%s to probe %d keys failed (%s): probing them one by one",
                           rng.bucket, rng.prefix, len(rng.unsettled()), ex)
            entries, token = None, None
        if entries is not None:
            for key, probe in rng.absorb(entries, token):
                ready.append((probing.pop((rng.bucket, key)), probe))
            if not rng.done and not rng.exhausted:
                return [rng]
            if rng.exhausted:
                logger.info("listing %s/%s: %d pages were not enough; probing %d keys one by one",
                            rng.bucket, rng.prefix, rng.pages, len(rng.unsettled()))
        for key in rng.unsettled():
            ready.append((probing.pop((rng.bucket, key)), _UNPROBED))
        return []

    def _fetch(self, item: Item, pre: Any, blobs: _Blobs) -> Outcome:
        """Copy one object (in a worker thread), retrying transient errors with backoff.
        ``pre``: the item's probe from a range listing (a retry probes again)."""
        for attempt in range(ATTEMPTS):
            try:
                return self._fetch_once(item, blobs, last=attempt == ATTEMPTS - 1, pre=pre if attempt == 0 else _UNPROBED)
            except TransientError as ex:
                if attempt == ATTEMPTS - 1:
                    raise
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                logger.warning("copy of %s/%s failed (%s); retrying in %.1f s", item.bucket, item.key, ex, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _written_since(self, record_us: int, listed_us: int) -> bool:
        """Whether the listed object may be a later write than the record's. Listings give
        milliseconds on Pacific and Reef, whole seconds on Tentacle (as AWS does). Within one
        second the answer comes from the watermark: a later write in that second would have a
        record of this run after this one (this is the key's last), so the listed object is the
        record's when the run's watermark covers the whole second, and unknown before."""
        if listed_us % 1_000_000 == 0 and listed_us // 1_000_000 == record_us // 1_000_000:
            return self._as_of_us < (record_us // 1_000_000 + 1) * 1_000_000
        return listed_us // 1000 > record_us // 1000

    def _fetch_once(self, item: Item, blobs: _Blobs, *, last: bool, pre: Any = _UNPROBED) -> Outcome:
        v = item.version
        if v.version_id is None and v.etag is None:
            # A record without an ETag (the follower could not tell it): guard by time instead,
            # from a one-key listing or the key's entry in a range listing (``probes``).
            probe = self.source.probe(item.bucket, item.key) if pre is _UNPROBED else pre
            if probe is None:
                return Outcome(item, "vanished")
            etag, _size, modified_us = probe
            if v.last_modified is not None and self._written_since(parse_rfc3339(v.last_modified), modified_us):
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
            uploaded = blobs.ensure(digest, spool, size)
        version = dataclasses.replace(
            v,
            size=size,
            etag=norm_etag(etag),
            sha256=digest,
            metadata=dict(got.metadata),
            content_type=got.content_type,
            last_modified=got.last_modified or v.last_modified,
        )
        return Outcome(item, "copied", version, uploaded, size if uploaded else 0)

    def _recheck(self, marker: _Marker, blobs: _Blobs, base_shas: set[str]) -> None:
        """After a lapse: be visible again, let any cleanup finish, then make sure every blob
        this run relies on is still there."""
        marker.write()
        wait_for_unlocked(self.store, timeout=self.cleanup_wait, clock=self.clock, sleep=self.sleep)
        missing = [sha for sha in sorted(blobs.present - base_shas) if self.store.blob_info(sha) is None]
        if missing:
            raise TransientError(
                f"{len(missing)} blobs of this run vanished while it was paused (e.g. {missing[0]}); "
                "run `backup run` again to copy them"
            )
        marker.write(untrusted_blobs=False)
        marker.lapsed = False
