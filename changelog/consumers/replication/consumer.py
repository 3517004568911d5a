"""Replication of the zone's buckets to one S3 site (REP.1), as a consumer of the committed
change logs (``changelog.consumers.framework``): ``SiteReplicator`` is the consumer
``replication-<site>``, with its own checkpoint and lease, so a slow or broken site never holds
up another one.

**A step.** Pending operator requests first (a pause, retries of failed entries), then the
committed log objects after the checkpoint, one at a time: the object's records go to
``workers`` queues by a hash of (bucket, key), so each key's records are applied in log order
while different keys go in parallel (``apply.apply_record`` does one record). When the whole
object is done, one fenced op commits the checkpoint past it together with what the object
changed in the site's state: failed entries, the version map (``state``).

**Failures.** botocore retries each request (capped exponential backoff with jitter,
``max_attempts``). A record the site refuses for good (403, no such bucket, bad request) becomes
a failed entry and the site moves on. A transient failure (the site or the source unreachable,
5xx, throttled) ends the step without a commit: the loop backs off and the same log object is
taken up again where it stopped: the records it finished are not applied again (their outcomes
and version-map changes are kept; two-way, what they placed at the site: a version placed and
missing there now was deleted there, and is not placed again), and the few that were in flight are applied **carefully**
(``careful``: what is already at the site is recognised by its replica metadata and not written
twice, so a versioned site gets no duplicate version). Before applying an object the consumer
notes its name (``inflight``, removed with the commit past it): a successor that finds it set
knows its predecessor died mid-object and applies that whole object carefully. A log object that
keeps failing on a transient error (``LENIENT_AFTER`` times) while the site answers a probe is
not an outage: its failing records become failed entries, so one bad key cannot stall a site.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from changelog.consumers.framework import OBJECTS_PER_STEP, Cursor, RouteHandler, committed_objects
from changelog.consumers.replication.apply import (
    ECHO,
    OLDER,
    WRITER,
    Applied,
    Destination,
    UploadNotes,
    apply_record,
)
from changelog.consumers.replication.state import (
    FAILED,
    INFLIGHT,
    PROGRESS,
    RETRY,
    UPLOAD,
    FailedEntry,
    SiteState,
    consumer_name,
    entry_id,
    version_id_key,
)
from changelog.consumers.replication.two_way import KeyMemory
from changelog.errors import ChangelogError, PermanentError, TransientError
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import LogRecord, parse_log_name
from changelog.pipeline.loop import Clocks
from changelog.pipeline.reader import LogObject, list_logs, read_object
from changelog.pipeline.s3client import s3_call, translate_error
from changelog.pipeline.targets import Target

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3.client import S3Client

    from changelog.config import ReplicationConfig, SiteConfig

logger = logging.getLogger(__name__)

# Consecutive transient failures of one log object, with the site answering a probe, after which
# its failing records go to the failed list instead of holding the site up.
LENIENT_AFTER = 5
# Seconds of clock difference with a site allowed when looking for an upload noted before its
# id was known (``SiteReplicator._uploads_of``).
UPLOAD_SKEW = 300.0
# How long a bucket's versioning state at the site is trusted.
BUCKET_TTL = 60.0
# A refusal ("no such bucket", 403) is remembered only this long: the operator's fix (creating
# the site's bucket, granting access) reaches the next writes, while a log object full of
# records for a missing bucket still costs one lookup every few seconds, not one each.
REFUSAL_TTL = 2.0
# Failed entries past their retention are looked for this often (seconds).
EXPIRE_EVERY = 600.0
# Completions are averaged over this window for the throughput (seconds).
THROUGHPUT_WINDOW = 60.0
# The backlog (read from the pending log objects) is recomputed at most this often (seconds).
BACKLOG_TTL = 10.0


# Two-way: log time read again on taking the lease to recall each key's last records
# (``SiteReplicator._recall``); the memory matters within a second or a clock skew of a write.
RECALL_SECONDS = 120.0

@dataclass
class Counters:
    """What a site did since this process started, in operations and bytes."""

    completed: int = 0
    completed_bytes: int = 0
    failed: int = 0
    failed_bytes: int = 0
    skipped: int = 0
    # Two-way: skipped as echoes (the peer's replicas), and as older than the peer's version.
    echoes: int = 0
    older: int = 0
    requests: int = 0
    retried: int = 0
    window: deque[tuple[float, int, int]] = field(default_factory=deque)

    def add(self, applied: Applied, rec: LogRecord, now: float) -> None:
        self.requests += applied.requests
        if rec.is_bucket_op:
            return  # not replicated (the site's buckets are the operator's), nor in the backlog
        if applied.status == "completed":
            self.completed += 1
            self.completed_bytes += applied.bytes
            self.window.append((now, 1, applied.bytes))
        elif applied.status == "skipped":
            self.skipped += 1
            reason = applied.reason or ""
            if reason.startswith(ECHO):
                self.echoes += 1
            elif reason.startswith(OLDER):
                self.older += 1
        else:
            self.failed += 1
            self.failed_bytes += rec.size or 0

    def throughput(self, now: float) -> tuple[float, float]:
        """Operations and bytes per second over the last ``THROUGHPUT_WINDOW``."""
        while self.window and self.window[0][0] < now - THROUGHPUT_WINDOW:
            self.window.popleft()
        ops = sum(w[1] for w in self.window)
        nbytes = sum(w[2] for w in self.window)
        return ops / THROUGHPUT_WINDOW, nbytes / THROUGHPUT_WINDOW


@dataclass(frozen=True)
class Backlog:
    """Records committed to the logs and not yet applied at the site."""

    records: int = 0
    bytes: int = 0
    objects: int = 0
    oldest_us: int | None = None  # the time of the oldest such record


_NO_RECORD = LogRecord(
    id="",
    time="",
    bucket="",
    key=None,
    version_id=None,
    op="write",
    size=None,
    etag=None,
    seq="",
    baseline=False,
    recorded="",
)


def _map_changes(bucket: str, key: str, applied: Applied) -> Iterator[tuple[str, str | None]]:
    """The version map's changes of one outcome: (state key, site version or None: removed)."""
    for src in applied.map_remove:
        yield version_id_key(bucket, key, src), None
    for src, site_v in applied.map_set.items():
        yield version_id_key(bucket, key, src), site_v


class _Versions:
    """The version map as one worker sees it while applying a log object: what the store holds,
    overlaid with what this object changed so far (``changes``: the records applied by an earlier
    attempt of the same object, then this worker's; the same key always goes to one worker).
    Two-way, versioned: also the ledger of what this object's records placed at the site bucket
    (``apply.Ledger``: ``placed``, (key, version id), from the same records' outcomes)."""

    def __init__(
        self,
        state: SiteState,
        bucket: str,
        changes: dict[str, str | None],
        placed: set[tuple[str, str]] | None = None,
    ) -> None:
        self._state = state
        self._bucket = bucket
        self._changes = dict(changes)
        self._placed = set(placed or ())

    def get(self, key: str, src_version: str) -> str | None:
        k = version_id_key(self._bucket, key, src_version)
        if k in self._changes:
            return self._changes[k]
        return self._state.site_version(self._bucket, key, src_version)

    def placed(self, key: str, version: str) -> bool:
        return (key, version) in self._placed

    def apply(self, key: str, applied: Applied) -> None:
        self._changes.update(_map_changes(self._bucket, key, applied))
        self._placed.update((key, v) for v in applied.placed)


@dataclass(frozen=True)
class _Done:
    """One record's outcome within a log object: ``bucket`` is the site's bucket (None when the
    site's bucket could not be had). Saved (``PROGRESS``) as the record completes, before the
    checkpoint: with the versions and markers it placed (``Applied.placed``), it is the
    replicator's ledger of placements until the commit past the object removes it."""

    rec: LogRecord
    applied: Applied
    bucket: str | None

    def encode(self) -> bytes:
        a = self.applied
        doc: dict[str, object] = {
            "s": a.status,
            "r": a.reason,
            "n": a.bytes,
            "q": a.requests,
            "ms": a.map_set,
            "mr": a.map_remove,
            "b": self.bucket,
        }
        if a.placed:
            doc["pl"] = a.placed
        return orjson.dumps(doc)

    @staticmethod
    def decode(raw: bytes) -> _Done:
        """An outcome saved by ``encode`` (its record is taken from the log object again)."""
        d = orjson.loads(raw)
        applied = Applied(
            d["s"],
            d.get("r"),
            int(d.get("n") or 0),
            int(d.get("q") or 0),
            dict(d.get("ms") or {}),
            list(d.get("mr") or []),
            [str(v) for v in d.get("pl") or []],
        )
        return _Done(_NO_RECORD, applied, d.get("b"))


@dataclass
class _Partial:
    """What an attempt at a log object that failed on a transient error had done: the outcomes of
    the records it finished (not applied again), and the records it had started and not finished
    (applied again carefully: they may have reached the site)."""

    done: dict[int, _Done] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)
    # The multipart uploads begun at the site for this object (``UPLOAD`` state key -> bucket,
    # key, upload id), a predecessor's included: their keys are removed with the commit.
    uploads: dict[str, bytes] = field(default_factory=dict)
    # Those to abort before the next attempt: a predecessor's, and after a transient failure
    # this process's (s3transfer's own abort fails when the site is down; a completed upload
    # answers 404).
    stale: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _ObjectResult:
    set_state: dict[str, bytes] = field(default_factory=dict)
    remove_state: list[str] = field(default_factory=list)


class SiteReplicator:
    """The consumer ``replication-<site>``: applies the committed logs at one site."""

    def __init__(
        self,
        index: ChangeIndex,
        logs: Target,
        site: SiteConfig,
        config: ReplicationConfig,
        *,
        source: S3Client,
        site_client: S3Client,
        transfer: TransferConfig | None = None,
        zone: str = "",
        log_prefix: str = "",
        clocks: Clocks | None = None,
        per_step: int = OBJECTS_PER_STEP,
    ) -> None:
        self.index = index
        self.logs = logs
        self.site = site
        self.config = config
        self.name = consumer_name(site.name)
        self.interval = config.interval
        self.wake: Callable[[], None] = lambda: None
        self.source = source
        self.client = site_client
        self.transfer = transfer
        self.zone = zone
        self.log_prefix = log_prefix
        self.clocks = clocks or Clocks()
        self.per_step = per_step
        self.state = SiteState(index, site.name)
        self.counters = Counters()
        self.parked = False
        self.last_error: str | None = None
        self.last_step: float | None = None
        self._attempts: dict[str, int] = {}
        self._partials: dict[str, _Partial] = {}
        # The log object a predecessor was applying when it died (read when a step first runs).
        self._crashed_in: str | None = None
        self._crashed_workers = 0
        self._crashed_uncertain: set[int] = set()
        self._crashed_progress: dict[int, _Done] = {}
        # Multipart uploads a predecessor began at the site and may have left open (``UPLOAD``).
        self._crashed_uploads: dict[str, bytes] = {}
        self._cursor_seen: Cursor | None = None
        self._failed_ids: set[str] | None = None
        self._buckets: dict[str, tuple[float, Destination | str]] = {}
        self._last_expire = 0.0
        self._backlog: tuple[float, str | None, Backlog] | None = None
        self._backlog_cache: dict[str, tuple[int, int, int | None]] = {}
        self._inflight: set[tuple[str, str | None]] = set()
        self._mu = threading.Lock()
        self._bucket_mu = threading.Lock()
        # Two-way: each key's last echo and write in this zone's log (``two_way``).
        self._keys = KeyMemory()

    def __repr__(self) -> str:
        return f"SiteReplicator({self.site.name!r})"

    # ------------------------------------------------------------------ the step

    def step(self, cursor: Cursor, stop: threading.Event) -> None:
        now = self.clocks.clock()
        self.last_step = now
        if self._check_paused(now):
            return
        if cursor is not self._cursor_seen:
            # A new lease: what the previous holder was doing, and what failed before.
            self._cursor_seen = cursor
            self._partials.clear()
            self._crashed_in = None
            self._crashed_uploads = {}
            raw = cursor.read_state([INFLIGHT]).get(INFLIGHT)
            doc = orjson.loads(raw) if raw else None
            after = cursor.checkpoint.after
            if isinstance(doc, dict) and (after is None or str(doc.get("object")) > after):
                self._crashed_in = str(doc["object"])
                self._crashed_workers = int(doc.get("workers") or 0)
                self._crashed_uncertain = {int(i) for i in doc.get("uncertain") or []}
                self._crashed_progress = {
                    int(k[len(PROGRESS) :]): _Done.decode(v)
                    for k, v in cursor.read_state_prefix(PROGRESS).items()
                }
                self._crashed_uploads = cursor.read_state_prefix(UPLOAD)
                logger.warning(
                    "replication to %s: a predecessor stopped while applying %s (%d records done); "
                    "taking it up where it stopped",
                    self.site.name, self._crashed_in, len(self._crashed_progress),
                )  # fmt: skip
            self._failed_ids = {e.id for e in self.state.failed()}
            if self.site.two_way:
                self._keys = KeyMemory()
                self._recall(after)
        self._take_retries(cursor)
        if now - self._last_expire >= EXPIRE_EVERY:
            self._expire(cursor, now)
        for n, obj in enumerate(self.pending_objects(cursor.checkpoint.after)):
            if n >= self.per_step or stop.is_set() or self.state.paused(self.clocks.clock()):
                return
            records = list(read_object(self.logs, obj.name))
            self._apply_object(cursor, obj, records)
        self.last_error = None

    def _recall(self, after: str | None) -> None:
        """Two-way, on taking the lease: what the log said of each key just before the
        checkpoint (``KeyMemory``), read again from the committed objects of the last
        ``RECALL_SECONDS`` of log time. Which records were echoes is in the records themselves
        (their writer), so the memory is the one a predecessor had."""
        name = parse_log_name(after) if after else None
        if name is None:
            return
        writers = frozenset(self.site.replica_writers)
        since = name.cutoff_us - int(RECALL_SECONDS * 1_000_000)
        for obj in list_logs(self.logs, prefix=self.log_prefix, since_us=since):
            if obj.name > name.name:
                break
            for rec in read_object(self.logs, obj.name):
                if rec.key is None or not self.site.wants(rec.qualified_bucket, rec.key):
                    continue
                echo = rec.metadata.get(WRITER) in writers
                self._keys.note(rec, Applied("skipped", reason=ECHO) if echo else Applied("completed"))

    def _check_paused(self, now: float) -> bool:
        doc = self.state.pause_doc()
        if doc is None:
            self.parked = False
            return False
        at = doc.get("resume_at")
        if at is not None and now >= at:
            logger.info("replication to %s: scheduled resume", self.site.name)
            self.state.resume()
            self.parked = False
            return False
        self.parked = True
        return True

    def pending_objects(self, after: str | None) -> Iterator[LogObject]:
        """Committed log objects after ``after``, up to the collector's watermark."""
        return committed_objects(self.logs, after, prefix=self.log_prefix)

    def _apply_object(self, cursor: Cursor, obj: LogObject, records: list[LogRecord]) -> None:
        """Apply one log object's records and commit past it with their state changes."""
        partial = self._partials.get(obj.name)
        if partial is None:
            partial = self._partials[obj.name] = _Partial()
            if obj.name == self._crashed_in:
                # A predecessor died while applying this object: the records it finished are
                # done (their outcomes were saved as they completed); the one each of its workers
                # had in hand may have reached the site.
                for i, d in sorted(self._crashed_progress.items()):
                    if i < len(records):
                        partial.done[i] = _Done(records[i], d.applied, d.bucket)
                        if self.site.two_way:
                            self._keys.note(records[i], d.applied)
                partial.uploads.update(self._crashed_uploads)
                partial.stale.update(self._crashed_uploads)
                partial.uncertain = self._in_hand(records, partial.done, self._crashed_workers)
                partial.uncertain |= self._crashed_uncertain - set(partial.done)
                self._note_inflight(cursor, obj.name, partial.uncertain)
            else:
                # Say which object is being applied, so that a successor knows what to take up.
                self._note_inflight(cursor, obj.name, set())
        try:
            self._abort_stale_uploads(partial)
        except TransientError as ex:
            self.last_error = str(ex)
            raise
        lenient = (
            self._attempts.get(obj.name, 0) >= LENIENT_AFTER
            and self._answers(self.client)
            and self._answers(self.source)
        )
        try:
            self._apply_all(records, partial, cursor, lenient=lenient)
        except TransientError as ex:
            self._attempts[obj.name] = self._attempts.get(obj.name, 0) + 1
            self.last_error = str(ex)
            partial.stale.update(partial.uploads)
            raise
        results = [partial.done[i] for i in sorted(partial.done)]
        out = self._fold(results)
        out.remove_state.append(INFLIGHT)
        out.remove_state.extend(f"{PROGRESS}{i:08d}" for i in partial.done)
        out.remove_state.extend(partial.uploads)
        cursor.commit(
            obj.name, records=len(records), objects=1, set_state=out.set_state, remove_state=out.remove_state
        )
        self._partials.pop(obj.name, None)
        self._attempts.pop(obj.name, None)
        self._crashed_in = None
        now = self.clocks.clock()
        with self._mu:
            for d in results:
                self.counters.add(d.applied, d.rec, now)
                eid = entry_id(d.rec.qualified_bucket, d.rec.key, d.rec.version_id)
                if d.applied.status == "failed":
                    assert self._failed_ids is not None
                    self._failed_ids.add(eid)
                elif self._failed_ids:
                    self._failed_ids.discard(eid)

    def _abort_stale_uploads(self, partial: _Partial) -> None:
        """Abort the multipart uploads an earlier attempt at the object (a predecessor that died,
        or this process before a transient failure) may have left open at the site (one that
        completed answers 404: nothing to do). A transient failure goes up: the rest are aborted
        at the next attempt."""
        for name, raw in sorted(partial.stale.items()):
            doc = orjson.loads(raw)
            bucket, key = str(doc["b"]), str(doc["k"])
            try:
                for upload in self._uploads_of(bucket, key, doc.get("u"), float(doc.get("t") or 0.0)):
                    # (one that completed answers 404 NoSuchUpload: permanent, logged below)
                    s3_call(
                        f"abort upload {upload} of {bucket}/{key} at site {self.site.name}",
                        functools.partial(self.client.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=upload),
                    )
                    logger.info(
                        "replication to %s: aborted the multipart upload of %s/%s an earlier attempt began",
                        self.site.name, bucket, key,
                    )  # fmt: skip
            except ChangelogError as err:
                if not isinstance(err, PermanentError):
                    raise
                logger.debug("replication to %s: %s", self.site.name, err)
            del partial.stale[name]

    def _uploads_of(self, bucket: str, key: str, upload: str | None, noted: float) -> list[str]:
        """The upload a note names; or, for a note written before its upload's id was known
        (the process died between the two), the open uploads of exactly that key begun since
        the note (give or take ``UPLOAD_SKEW`` of clock difference with the site)."""
        if upload is not None:
            return [upload]
        resp = s3_call(
            f"list uploads of {bucket}/{key} at site {self.site.name}",
            functools.partial(self.client.list_multipart_uploads, Bucket=bucket, Prefix=key),
        )
        return [
            str(u["UploadId"])
            for u in resp.get("Uploads", [])
            if u.get("Key") == key and u["Initiated"].timestamp() >= noted - UPLOAD_SKEW
        ]

    def _note_inflight(self, cursor: Cursor, name: str, uncertain: set[int]) -> None:
        """Say which object is being applied (with this process's worker count, and the records
        still uncertain from a predecessor), so that a successor knows what to take up."""
        doc = {"object": name, "workers": self.config.workers, "uncertain": sorted(uncertain)}
        cursor.put_state({INFLIGHT: orjson.dumps(doc)})

    def _queues(
        self, records: list[LogRecord], skip: Mapping[int, object], workers: int
    ) -> dict[int, list[tuple[int, LogRecord]]]:
        """The records still to apply, by worker: a hash of (bucket, key), so that each key's
        records go to one worker, in log order."""
        queues: dict[int, list[tuple[int, LogRecord]]] = {}
        for i, rec in enumerate(records):
            if i in skip or not self.site.wants(rec.qualified_bucket, rec.key):
                continue
            h = zlib.crc32(f"{rec.qualified_bucket}\0{rec.key or ''}".encode()) % workers
            queues.setdefault(h, []).append((i, rec))
        return queues

    def _in_hand(self, records: list[LogRecord], done: Mapping[int, _Done], workers: int) -> set[int]:
        """The records a predecessor with ``workers`` workers may have had in hand when it died:
        each worker's first record not done (all of them when the worker count is not known)."""
        if workers < 1:
            return set(range(len(records))) - set(done)
        return {q[0][0] for q in self._queues(records, done, workers).values() if q}

    def _apply_all(
        self, records: list[LogRecord], partial: _Partial, cursor: Cursor, *, lenient: bool
    ) -> None:
        """Apply the records ``partial`` has not done yet (workers by key, each key in order),
        adding their outcomes to it; on a transient failure, what was started and not finished
        is marked uncertain before the error goes up."""
        workers = max(1, self.config.workers)
        queues = self._queues(records, partial.done, workers)
        # The version map and the ledger of placements as the finished records left them.
        changes: dict[str, dict[str, str | None]] = {}
        placed: dict[str, set[tuple[str, str]]] = {}
        for i in sorted(partial.done):
            d = partial.done[i]
            if d.bucket is not None and d.rec.key is not None:
                changes.setdefault(d.bucket, {}).update(_map_changes(d.bucket, d.rec.key, d.applied))
                key = d.rec.key
                placed.setdefault(d.bucket, set()).update((key, v) for v in d.applied.placed)
        failure = threading.Event()
        started: set[int] = set()
        mu = threading.Lock()

        def note_upload(i: int, bucket: str, key: str) -> Callable[[str], None]:
            # Kept before the upload is begun, then with its id before any part is sent: a
            # successor aborts it if this process dies (``_abort_stale_uploads``).
            name = f"{UPLOAD}{i:08d}.{uuid.uuid4().hex[:16]}"

            def put(upload: str | None) -> None:
                doc = orjson.dumps({"b": bucket, "k": key, "u": upload, "t": self.clocks.clock()})
                cursor.put_state({name: doc})
                with mu:
                    partial.uploads[name] = doc

            put(None)
            return put

        def run(queue: list[tuple[int, LogRecord]]) -> None:
            versions: dict[str, _Versions] = {}
            for i, rec in queue:
                if failure.is_set():
                    return
                # Never start a record without the lease (a paused process that lost it while
                # a successor applies the same records): narrows, cannot close, that window.
                cursor.lease.check()
                with mu:
                    started.add(i)
                done = self._apply_one(
                    rec, versions, changes, careful=i in partial.uncertain, lenient=lenient,
                    on_upload=functools.partial(note_upload, i), placed=placed,
                )  # fmt: skip
                # Saved before it counts as done: a successor will not apply it again.
                cursor.put_state({f"{PROGRESS}{i:08d}": done.encode()})
                with mu:
                    partial.done[i] = done

        try:
            if len(queues) <= 1:
                for q in queues.values():
                    run(q)
            else:
                with ThreadPoolExecutor(
                    max_workers=min(workers, len(queues)), thread_name_prefix=self.name
                ) as pool:
                    futures = [pool.submit(run, q) for q in queues.values()]
                    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    if any(f.exception() is not None for f in finished):
                        failure.set()
                    for fut in futures:
                        fut.result()  # the first failure, once every worker stopped
        except BaseException:
            with mu:
                partial.uncertain.update(started - set(partial.done))
            raise

    def _apply_one(
        self,
        rec: LogRecord,
        versions: dict[str, _Versions],
        changes: dict[str, dict[str, str | None]],
        *,
        careful: bool,
        lenient: bool,
        retry: bool = False,
        on_upload: UploadNotes | None = None,
        placed: Mapping[str, set[tuple[str, str]]] | None = None,
    ) -> _Done:
        ident = (rec.qualified_bucket, rec.key)
        with self._mu:
            self._inflight.add(ident)
        try:
            if rec.is_bucket_op:
                # Buckets are the operator's (created and configured where they live).
                return _Done(rec, Applied("completed", reason="bucket operations are not replicated"), None)
            dest = self._destination(rec.qualified_bucket)
            if isinstance(dest, str):
                return _Done(rec, Applied("failed", reason=dest), None)
            vmap = versions.get(dest.bucket)
            if vmap is None:
                vmap = versions[dest.bucket] = _Versions(
                    self.state, dest.bucket, changes.get(dest.bucket, {}), (placed or {}).get(dest.bucket)
                )
            before = None if retry or not dest.two_way else self._keys.before(rec)
            try:
                applied = apply_record(
                    rec, self.source, dest, vmap, careful=careful, transfer=self.transfer, retry=retry,
                    before=before, on_upload=on_upload, ledger=vmap,
                )  # fmt: skip
            except TransientError as ex:
                if not lenient:
                    raise
                applied = Applied("failed", reason=f"kept failing: {ex}")
            if rec.key is not None:
                vmap.apply(rec.key, applied)
            if dest.two_way and not retry:
                self._keys.note(rec, applied)
            if applied.status == "skipped" or applied.reason:
                logger.debug(
                    "replication to %s: %s %s/%s (%s): %s %s",
                    self.site.name, rec.op, rec.qualified_bucket, rec.key, rec.version_id or "null",
                    applied.status, applied.reason,
                )  # fmt: skip
            return _Done(rec, applied, dest.bucket)
        finally:
            with self._mu:
                self._inflight.discard(ident)

    def _fold(self, results: list[_Done]) -> _ObjectResult:
        """The state changes of one object's outcomes, in log order: failed entries set or
        cleared, the version map's changes."""
        out = _ObjectResult()
        now = self.clocks.clock()
        vmap: dict[str, str | None] = {}
        for d in results:
            rec, applied = d.rec, d.applied
            eid = entry_id(rec.qualified_bucket, rec.key, rec.version_id)
            if applied.status == "failed":
                old = self.state.failed_entry(eid) if self._failed_ids and eid in self._failed_ids else None
                entry = (
                    old.again(applied.reason or "failed", now, rec)
                    if old
                    else FailedEntry(eid, rec, applied.reason or "failed", now, now)
                )
                out.set_state[FAILED + eid] = entry.encode()
                if FAILED + eid in out.remove_state:
                    out.remove_state.remove(FAILED + eid)
                logger.warning("replication to %s: %s", self.site.name, applied.reason)
            elif FAILED + eid in out.set_state or (self._failed_ids and eid in self._failed_ids):
                # A later record of the same (bucket, key, version) reached the site.
                out.set_state.pop(FAILED + eid, None)
                out.remove_state.append(FAILED + eid)
            if d.bucket is not None and rec.key is not None:
                vmap.update(_map_changes(d.bucket, rec.key, applied))
        for k, site_v in vmap.items():
            if site_v is None:
                out.remove_state.append(k)
            else:
                out.set_state[k] = site_v.encode("utf-8")
        return out

    # ------------------------------------------------------------------ the site's buckets

    def _destination(self, bucket: str) -> Destination | str:
        """The site's bucket for source ``bucket`` (cached ``BUCKET_TTL``), or why it cannot be
        written (a permanent refusal, one line; cached ``REFUSAL_TTL``)."""
        with self._bucket_mu:  # one lookup per bucket, whichever worker asks first
            return self._lookup_destination(bucket)

    def _lookup_destination(self, bucket: str) -> Destination | str:
        now = self.clocks.monotonic()
        got = self._buckets.get(bucket)
        if got is not None and now - got[0] < (BUCKET_TTL if isinstance(got[1], Destination) else REFUSAL_TTL):
            return got[1]
        name = self.site.site_bucket(bucket)
        try:
            resp = self.client.get_bucket_versioning(Bucket=name)
            dest: Destination | str = Destination(
                self.client,
                name,
                versioned=resp.get("Status") == "Enabled",
                storage_class=self.site.storage_class,
                zone=self.zone,
                two_way=self.site.two_way,
                peer_zone=self.site.peer,
                replica_writers=frozenset(self.site.replica_writers),
            )
        except Exception as ex:  # noqa: BLE001 - classified below
            err = translate_error(ex, f"bucket {name} at site {self.site.name}")
            if not isinstance(err, PermanentError):
                raise err from ex
            # One line naming the site and the bucket once: "bucket dst at site b: 404 ...".
            dest = str(err)
        self._buckets[bucket] = (now, dest)
        return dest

    @staticmethod
    def _answers(client: S3Client) -> bool:
        """Whether the site (or the source) answers at all: an outage of either is not a
        reason to fail records."""
        try:
            client.list_buckets()
        except Exception:  # noqa: BLE001 - any failure means no
            return False
        return True

    # ------------------------------------------------------------------ operator requests

    def _take_retries(self, cursor: Cursor) -> None:
        """Apply the records of failed entries an operator asked to retry; an entry that fails
        again stays (its attempts counted), one that succeeds or was superseded goes."""
        requested = self.state.retry_requests()
        if not requested:
            return
        set_state: dict[str, bytes] = {}
        remove: list[str] = []
        now = self.clocks.clock()
        for eid in requested:
            entry = self.state.failed_entry(eid)
            if entry is None:
                remove.append(RETRY + eid)
                continue
            self._buckets.pop(entry.record.qualified_bucket, None)  # the site's bucket may be there now
            try:
                done = self._apply_one(entry.record, {}, {}, careful=True, lenient=False, retry=True)
                rec, applied = done.rec, done.applied
            except TransientError as ex:
                # The site is down again: the requests stay for the next step.
                self.last_error = str(ex)
                break
            remove.append(RETRY + eid)
            with self._mu:
                self.counters.add(applied, rec, now)
                self.counters.retried += 1
            if applied.status == "failed":
                set_state[FAILED + eid] = entry.again(applied.reason or "failed", now).encode()
            else:
                remove.append(FAILED + eid)
                if self._failed_ids is not None:
                    self._failed_ids.discard(eid)
                if done.bucket is not None and rec.key is not None:
                    for k, site_v in _map_changes(done.bucket, rec.key, applied):
                        if site_v is None:
                            remove.append(k)
                        else:
                            set_state[k] = site_v.encode("utf-8")
                logger.info(
                    "replication to %s: retried %s %s/%s: %s",
                    self.site.name, rec.op, rec.qualified_bucket, rec.key, applied.status,
                )  # fmt: skip
        if set_state or remove:
            cursor.commit(cursor.checkpoint.after, set_state=set_state, remove_state=remove)

    def _expire(self, cursor: Cursor, now: float) -> None:
        self._last_expire = now
        old = [e.id for e in self.state.failed() if now - e.last_failed > self.config.failed_retention]
        if old:
            logger.info(
                "replication to %s: %d failed entries past their retention dropped", self.site.name, len(old)
            )
            cursor.commit(cursor.checkpoint.after, remove_state=[FAILED + e for e in old])
            if self._failed_ids is not None:
                self._failed_ids.difference_update(old)

    # ------------------------------------------------------------------ what it reports

    def processing(self, bucket: str, key: str | None) -> bool:
        with self._mu:
            return (bucket, key) in self._inflight

    def backlog(self, after: str | None) -> Backlog:
        """Records after checkpoint ``after`` not yet applied (read from the pending log objects;
        each one read once, then cached: log objects never change)."""
        now = self.clocks.monotonic()
        cached = self._backlog
        if cached is not None and cached[1] == after and now - cached[0] < BACKLOG_TTL:
            return cached[2]
        records = nbytes = objects = 0
        oldest: int | None = None
        names = set()
        try:
            for obj in self.pending_objects(after):
                names.add(obj.name)
                got = self._backlog_cache.get(obj.name)
                if got is None:
                    recs = [
                        r
                        for r in read_object(self.logs, obj.name)
                        if not r.is_bucket_op and self.site.wants(r.qualified_bucket, r.key)
                    ]
                    first = min((r.time_us for r in recs), default=None)
                    got = (len(recs), sum(r.size or 0 for r in recs if r.op == "write"), first)
                    self._backlog_cache[obj.name] = got
                records += got[0]
                nbytes += got[1]
                objects += 1
                if got[2] is not None and (oldest is None or got[2] < oldest):
                    oldest = got[2]
        except ChangelogError as ex:
            logger.debug("replication to %s: backlog not read: %s", self.site.name, ex)
            return cached[2] if cached is not None else Backlog()
        for name in list(self._backlog_cache):
            if name not in names:
                del self._backlog_cache[name]
        out = Backlog(records, nbytes, objects, oldest)
        self._backlog = (now, after, out)
        return out

    def stats(self) -> Mapping[str, object]:
        with self._mu:
            c = self.counters
            ops, bps = c.throughput(self.clocks.clock())
            return {
                "site": self.site.name,
                "completed": c.completed,
                "completed_bytes": c.completed_bytes,
                "failed": c.failed,
                "failed_bytes": c.failed_bytes,
                "skipped": c.skipped,
                "echoes": c.echoes,
                "older": c.older,
                "retried": c.retried,
                "requests": c.requests,
                "throughput_ops": round(ops, 3),
                "throughput_bytes": round(bps, 1),
                "paused": self.parked,
                "last_error": self.last_error,
            }

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        return {}
