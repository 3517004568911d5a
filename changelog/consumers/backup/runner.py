"""``backup run``: turn the change logs since the previous backup into a new manifest, copying the
content of changed objects into the content-addressed blob store.

**Phases.** (1) *Plan*: start from the previous manifest (the base) and apply, in order, every
record of the log objects after the base's checkpoint up to the watermark's ``last_object``
(``changelog.pipeline.reader``; ids already seen are skipped). Only metadata moves here: the result is,
per key, the versions as of the watermark. A first run (no base) reads the logs from their
beginning; a bucket without ``baseline`` records there (written by the RGW follower's full sync)
is baselined by listing it (ListObjectVersions when versioned). (2) *Copy*: every changed key
whose current version has no content yet is read from the source, hashed (SHA-256) while spooled,
and stored as ``blobs/<sha>`` unless already there. (3) *Manifest*: the full state, written last.
This module runs the phases; the copy is ``copier`` (the worker pool and batched probes),
``fetch`` (one object) and ``blobs`` (each content once); the run's marker and segments are
``runs``.

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

**Some buckets** (``only``: ``backup run --bucket``). The manifest keeps one checkpoint, so a
run that skipped the other followed buckets' records must say where each of them stopped: it
lists them under ``behind`` (``manifest``) with their previous state. A later run reads the logs
from the oldest position of a bucket it covers and applies each bucket's records only after its
own position; a bucket left out since before the first backup is listed when first covered.

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
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.blobs import Blobs
from changelog.consumers.backup.copier import Copier, CopyPolicy, CopyTotals, resolve_deleted
from changelog.consumers.backup.fetch import Fetcher, Ident, OutcomeRow
from changelog.consumers.backup.lock import wait_for_unlocked
from changelog.consumers.backup.model import State, Version, VersionDoc
from changelog.consumers.backup.runs import (
    MARKER_TTL,
    Hook,
    ListSegment,
    MarkerDoc,
    RunMarker,
    SegmentDoc,
    Segments,
    drop_run,
    find_unfinished,
    no_hook,
)
from changelog.consumers.backup.source import Source
from changelog.consumers.backup.store import BackupStore, owner_id
from changelog.errors import ChangelogError, TransientError
from changelog.pipeline.logformat import LogRecord, rfc3339_us
from changelog.pipeline.reader import LogReader, read_watermark
from changelog.pipeline.targets import Target
from changelog.progress import Progress

logger = logging.getLogger(__name__)

# Clock difference allowed between this host and the destination's timestamps (blob mtimes).
SKEW = 300.0
# Progress is made durable at least this often (objects / seconds): what a crash can cost.
FLUSH_ITEMS = 500
FLUSH_SECONDS = 10.0
WORKERS = 8
# How long a run waits for a cleanup in progress to finish before giving up.
CLEANUP_WAIT_S = 600.0


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
    retagged: int = 0  # versions held whose tags were read again (tagging changes)
    lagging: int = 0
    seconds: float = 0.0
    manifest_bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["as_of"] = rfc3339_us(self.as_of_us) if self.as_of_us is not None else None
        return d

    def add_copies(self, totals: CopyTotals) -> None:
        self.copied += totals.copied
        self.copied_bytes += totals.copied_bytes
        self.uploaded += totals.uploaded
        self.uploaded_bytes += totals.uploaded_bytes
        self.deduplicated += totals.deduplicated
        self.retagged += totals.retagged


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
        only: Iterable[str] | None = None,
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
        hook: Hook = no_hook,
        progress: bool | None = None,
    ) -> None:
        self.store = store
        self.logs = logs
        self.log_prefix = log_prefix
        self.source = source
        self._includes = includes
        self.buckets = sorted(set(buckets)) if buckets is not None else None
        # This run's buckets among the followed ones (None: all); the others fall ``behind``.
        self.only = frozenset(only) if only else None
        self.exclude = set(exclude_buckets)
        self.marker_ttl = marker_ttl
        self.skew = skew
        self.cleanup_wait = cleanup_wait
        self.owner = owner or owner_id("backup")
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.hook = hook
        self.progress = progress
        self.copy_policy = CopyPolicy(
            workers=max(1, workers),
            flush_items=flush_items,
            flush_seconds=flush_seconds,
            monotonic=monotonic,
            hook=hook,
            progress=progress,
        )

    # ------------------------------------------------------------------ selection

    def wanted(self, bucket: str, key: str | None = None) -> bool:
        if bucket in self.exclude:
            return False
        if self.buckets is not None and bucket not in self.buckets:
            return False
        return self._includes is None or self._includes(bucket, key)

    def covers(self, bucket: str) -> bool:
        """Whether this run backs up ``bucket`` (followed, and among ``only``)."""
        return self.wanted(bucket) and (self.only is None or bucket in self.only)

    def _followed_buckets(self) -> list[str]:
        names = self.buckets if self.buckets is not None else self.source.list_buckets()
        return [b for b in names if self.wanted(b)]

    # ------------------------------------------------------------------ entry point

    def run(self) -> RunResult:
        t_start = self.monotonic()
        ids = mf.backup_ids(self.store)
        base = mf.load(self.store, ids[-1]) if ids else None
        marker_doc, segments = find_unfinished(self.store, base.backup_id if base else None, now=self.clock())
        resumed = marker_doc is not None
        if marker_doc is None:
            marker_doc = self._new_marker(base)
            if marker_doc is None:
                assert base is not None
                return RunResult(
                    None, base.backup_id, base.as_of_us, base.checkpoint, seconds=self.monotonic() - t_start
                )
        else:
            marker_doc["owner"] = self.owner
            marker_doc["released"] = False
            # The crashed attempt may have covered fewer buckets (``only``): read from where
            # this one's buckets need it (records already applied are skipped by position).
            after = self._read_from(base)
            if marker_doc["after"] is not None and (after is None or after < marker_doc["after"]):
                marker_doc["after"] = after
        result = self._run_marked(RunMarker(self.store, marker_doc, self.marker_ttl, self.clock, self.monotonic),
                                  base, segments, resumed=resumed)
        result.seconds = self.monotonic() - t_start
        return result

    def _read_from(self, base: mf.Manifest | None) -> str | None:
        """The log object after which this run reads: the base's checkpoint, or the position of
        a bucket a previous run left behind that this run covers, if older (None: from the
        logs' beginning)."""
        after = base.checkpoint if base else None
        for bucket, left in (base.behind if base else {}).items():
            if self.covers(bucket) and (after is None or left["after"] is None or left["after"] < after):
                after = left["after"]
        return after

    def _new_marker(self, base: mf.Manifest | None) -> MarkerDoc | None:
        """The marker of a new run: the log range after ``base`` up to the watermark. None when
        the logs hold nothing new since ``base``."""
        wm = read_watermark(self.logs, prefix=self.log_prefix)
        if wm is None:
            # Transient: a new index's collector publishes its first watermark after its first
            # pass (with a follower, after the follower's first catch-up); serve's backup
            # consumer waits for it and runs then, where a permanent error would stop serve.
            raise TransientError(
                f"no change-log watermark in {self.logs.url}: the collector has not completed a pass yet"
            )
        after = self._read_from(base)
        until = wm.last_object
        if base is not None and (until is None or (after is not None and until <= after)):
            logger.info("nothing new since backup %s (checkpoint %s)", base.backup_id, after)
            return None
        now = self.clock()
        return {
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

    def _run_marked(
        self, marker: RunMarker, base: mf.Manifest | None, segments: list[SegmentDoc], *, resumed: bool
    ) -> RunResult:
        """The run, visible to cleanups by its marker (renewed meanwhile)."""
        # Marker first, then look for a cleanup (lock.py: "write mine, then read theirs").
        marker.write()
        marker.start()
        try:
            wait_for_unlocked(self.store, timeout=self.cleanup_wait, clock=self.clock, sleep=self.sleep)
            self.hook("registered")
            return self._run(marker, base, segments, resumed=resumed)
        except BaseException:
            marker.stop()
            # Failed, not crashed: the next run may resume at once. The expiry stays, so a
            # cleanup still protects what this run stored until then (and the next run can
            # trust it).
            with contextlib.suppress(ChangelogError):
                if mf.exists(self.store, marker.run_id) is False:
                    marker.write(released=True)
            raise
        finally:
            marker.stop()

    # ------------------------------------------------------------------ the run

    def _run(
        self, marker: RunMarker, base: mf.Manifest | None, segments: list[SegmentDoc], *, resumed: bool
    ) -> RunResult:
        doc = marker.doc
        result = RunResult(marker.run_id, doc.get("base"), int(doc["as_of_us"]), doc.get("until"), resumed=resumed)
        state = State(base.state() if base else None)
        if base is not None:
            state.versioned.update(b for b in base.bucket_names() if base.versioned(b))
        writer = Segments(self.store, marker.run_id, first=len(segments), hook=self.hook)
        # 1. plan
        listed, behind = self._plan(state, base, doc, [s for s in segments if s["kind"] == "list"], writer, result)
        self.hook("planned")
        # 2. copy
        done: dict[Ident, OutcomeRow] = {}
        if not doc.get("untrusted_blobs"):
            for seg in segments:
                if seg["kind"] == "fetch":
                    for row in seg["outcomes"]:
                        done[(row[0], row[1], row[2], row[3])] = row
        base_shas = base.shas() if base else set()
        blobs = Blobs(self.store, base=base_shas, not_before=float(doc["started"]) - self.skew, hook=self.hook)
        resolve_deleted(state, self.source)
        copier = Copier(
            state,
            self.source,
            Fetcher(self.source, blobs, as_of_us=int(doc["as_of_us"]), sleep=self.sleep),
            marker=marker,
            segments=writer,
            policy=self.copy_policy,
        )
        copier.run(done)
        result.add_copies(copier.totals)
        # 3. manifest
        marker.check_lapse()
        if marker.lapsed:
            self._recheck(marker, blobs, base_shas)
        self._write_manifest(
            marker, state, lagging=copier.lagging, listed=listed, behind=behind, result=result, segments=writer.next
        )
        return result

    def _plan(
        self,
        state: State,
        base: mf.Manifest | None,
        doc: MarkerDoc,
        list_pages: list[ListSegment],
        segments: Segments,
        result: RunResult,
    ) -> tuple[dict[str, str], dict[str, mf.BehindDoc]]:
        """Apply the run's records to ``state``; on a first run, baseline by listing every
        followed bucket without ``baseline`` records (and so later a bucket left out since
        before the first backup). Returns when each bucket was listed, and the buckets this run
        leaves behind (``only``)."""
        listed: dict[str, str] = dict(base.doc.get("listed", {})) if base else {}
        checkpoint = base.checkpoint if base else None
        was_behind = base.behind if base else {}
        # Where each bucket's records start: after its own position if it was left behind.
        starts = {b: left["after"] for b, left in was_behind.items()}
        left_out: set[str] = set()
        baselined: set[str] = set()
        with Progress("backup: reading change logs", unit="records", enabled=self.progress) as bar:
            for name, rec in self._records(doc.get("after"), doc.get("until"), result):
                bucket = rec.qualified_bucket
                if not self.wanted(bucket, rec.key):
                    continue
                start = starts.get(bucket, checkpoint)
                if start is not None and name <= start:
                    continue  # applied by an earlier backup
                if not self.covers(bucket):
                    left_out.add(bucket)
                    continue
                state.apply(rec)
                result.records += 1
                if rec.baseline and not rec.is_bucket_op:
                    baselined.add(rec.qualified_bucket)
                bar.update(1)
        followed = self._followed_buckets() if base is None else []
        to_list = followed if base is None else [b for b, left in was_behind.items() if left["after"] is None]
        for bucket in to_list:
            if bucket in baselined or not self.covers(bucket) or bucket in state.deleted:
                continue
            if base is not None and not self.source.bucket_exists(bucket):
                # Left behind before its first backup and deleted since: nothing to back up.
                logger.info("bucket %s, left behind by an earlier run, is gone", bucket)
                continue
            self._list_bucket(state, bucket, list_pages, segments, result)
            listed[bucket] = rfc3339_us(int(self.clock() * 1_000_000))
        behind: dict[str, mf.BehindDoc] = {}
        if self.only is not None:
            as_of = base.as_of_us if base else None
            for bucket in sorted({*state.buckets, *was_behind, *left_out, *followed}):
                if self.wanted(bucket) and not self.covers(bucket) and bucket not in state.deleted:
                    behind[bucket] = was_behind.get(bucket) or {"after": checkpoint, "as_of_us": as_of}
        return listed, behind

    def _write_manifest(
        self,
        marker: RunMarker,
        state: State,
        *,
        lagging: list[mf.Lagging],
        listed: dict[str, str],
        behind: dict[str, mf.BehindDoc],
        result: RunResult,
        segments: int,
    ) -> None:
        """Write the manifest (the run's end), then drop the run's marker and segments."""
        doc = marker.doc
        run_id = marker.run_id
        stats = {k: v for k, v in result.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
        doc_m = mf.build(
            backup_id=run_id,
            base=doc.get("base"),
            started_us=int(float(doc["started"]) * 1_000_000),
            finished_us=int(self.clock() * 1_000_000),
            as_of_us=int(doc["as_of_us"]),
            checkpoint=doc.get("until"),
            snapshot=state.snapshot(),
            versioned=state.versioned,
            lagging=lagging,
            listed=listed,
            stats=stats,
            behind=behind,
        )
        result.objects, result.bytes = mf.totals(doc_m)
        result.lagging = len(lagging)
        result.manifest_bytes = mf.write(self.store, doc_m)
        self.hook("manifest-written")
        marker.stop()
        drop_run(self.store, run_id, segments=segments)
        logger.info(
            "backup %s: %d records, %d objects copied (%d blobs uploaded, %d already stored), %d lagging",
            run_id, result.records, result.copied, result.uploaded, result.deduplicated, result.lagging,
        )

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
        self, state: State, bucket: str, pages: list[ListSegment], segments: Segments, result: RunResult
    ) -> None:
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

        def add(entries: Iterable[tuple[str, VersionDoc]]) -> None:
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
                entries = [(k, v.to_dict()) for k, v in lp.entries]
                add(entries)
                bar.update(len(entries))
                key_marker, version_marker, finished = lp.key_marker, lp.version_marker, lp.key_marker is None
                segments.write(
                    {
                        "kind": "list",
                        "bucket": bucket,
                        "versioned": versioned,
                        "entries": entries,
                        "key_marker": key_marker,
                        "version_marker": version_marker,
                        "done": finished,
                    }
                )

    def _recheck(self, marker: RunMarker, blobs: Blobs, base_shas: set[str]) -> None:
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
