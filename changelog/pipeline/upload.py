"""The collector's upload pipeline: one log object at a time is encoded (``LogWriter``) and
streamed to the target in parts by a thread of its own (``PartUploader``), every target call
retried on transient errors (``TargetRetry``) and preceded by a lease check (docs/design.md §5).

A writer gets what it needs (the target, a retry, the lease ``guard``, the fault hook, sizes),
never the collector. It owns its multipart upload: the abort is registered the moment the
upload exists, and leaving the writer's ``with`` block without ``complete`` runs it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from changelog.config import CollectorConfig
from changelog.errors import ConfigError, InvalidMutation, ObjectMissing, PermanentError, TransientError
from changelog.pipeline import keys
from changelog.pipeline.commit import PendingCommit, ShardRange
from changelog.pipeline.logformat import (
    Compression,
    ObjectEncoder,
    encode_index_entries,
    encode_raw,
    rfc3339_us,
)
from changelog.pipeline.targets import Part, Target, UploadMissing

logger = logging.getLogger(__name__)

T = TypeVar("T")

# S3 caps an upload at 10000 parts.
MAX_PARTS = 10_000
# Full parts waiting for the upload thread while it sends one. Encoded bytes held per log object
# being written: the part in flight, the queued ones, the one the pass holds while it waits to
# queue it, and the encoder's buffer (up to a part plus a page): about (3 + UPLOAD_QUEUE_PARTS)
# x part_bytes (~40 MB at the default 8 MiB).
UPLOAD_QUEUE_PARTS = 1


def error_kind(ex: BaseException) -> str:
    """The ``kind`` label of a target error: ``transient`` (retried), ``missing`` (an object or
    upload that should be there is not) or ``permanent``."""
    if isinstance(ex, TransientError):
        return "transient"
    if isinstance(ex, ObjectMissing):
        return "missing"
    return "permanent"


class TargetRefused(PermanentError):
    """A target call refused for a cause that retrying it at once will not fix (access denied,
    a bucket gone, a name that cannot exist): not retried within the pass, which it fails. The
    running collector's loop retries the pass with capped backoff (``Collector.step``): an
    operator fixes a target while ``serve`` runs, and the follower never stops for it."""


class Retry(Protocol):
    """Runs one target call ``fn`` (``what`` names it in the log), retried as ``TargetRetry``
    says. ``check_first=False``: the caller checked the lease right before the first attempt."""

    def __call__(self, what: str, fn: Callable[[], T], *, check_first: bool = True) -> T: ...


@dataclass(frozen=True, kw_only=True)
class TargetRetry:
    """Retries transient target failures with capped exponential backoff. ``guard`` (the lease
    check) runs before every attempt, so no write goes out once the lease is lost; every
    failed attempt is reported to ``on_error`` (the collector counts them by ``error_kind``)."""

    guard: Callable[[], None]
    retries: int
    backoff_base: float
    backoff_max: float
    sleep: Callable[[float], None]
    on_error: Callable[[BaseException], None]

    def __call__(self, what: str, fn: Callable[[], T], *, check_first: bool = True) -> T:
        delay = self.backoff_base
        attempt = 0
        while True:
            if attempt or check_first:
                self.guard()
            try:
                return fn()
            except (TransientError, PermanentError, ObjectMissing) as ex:
                self.on_error(ex)
                if isinstance(ex, PermanentError) and not isinstance(ex, TargetRefused):
                    raise TargetRefused(str(ex)) from ex
                if not isinstance(ex, TransientError):
                    raise
                attempt += 1
                if attempt > self.retries:
                    raise
                logger.warning("%s failed (attempt %d/%d), retrying in %.1fs: %s", what, attempt,
                               self.retries, delay, ex)
                self.sleep(delay)
                delay = min(delay * 2, self.backoff_max)


@dataclass(frozen=True)
class Uploads:
    """What every ``LogWriter`` of one collector shares: where and how it uploads, the lease
    check, the fault hook and the object sizes."""

    target: Target
    retry: Retry
    guard: Callable[[], None]
    fault: Callable[[str], None]
    monotonic: Callable[[], float]
    part_bytes: int
    roll_entries: int
    roll_bytes: int
    roll_seconds: float


class PartUploader:
    """Uploads one log object's full parts, in order, from a thread of its own, while the pass
    goes on encoding: at most ``UPLOAD_QUEUE_PARTS`` parts wait while one is sent. ``send``
    does the upload itself; a failure is kept and raised to the pass by the next ``submit`` or
    by ``finish``, and no further part is sent after it."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=UPLOAD_QUEUE_PARTS)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="collector-upload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None or self._stop:
                continue  # drained, never sent
            try:
                self._send(data)
            except BaseException as ex:  # noqa: BLE001 - raised to the pass by submit/finish
                self._error = ex
            del data  # not held while waiting for the next part

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, data: bytes) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue

    def _join(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> None:
        """Wait until every submitted part is sent; raise the failure if one failed."""
        self._join()
        self._raise()

    def stop(self) -> None:
        """Send nothing more; returns once a part in flight is done and the thread is gone."""
        self._stop = True
        self._join()


@dataclass(slots=True)
class _Range:
    shard: int
    keys: list[str] = field(default_factory=list)


class LogWriter:
    """One log object being written: JSON lines through the encoder, parts uploaded as they
    fill (the multipart upload starts with the first full part, sent by a ``PartUploader``
    thread while encoding goes on), the ranges and keys emitted. Holds at most a few parts of
    encoded bytes plus the emitted keys.

    Use it as a context manager: leaving the block stops the upload thread and, unless
    ``complete`` made the object visible, aborts the multipart upload (best effort: the
    collector's upload GC catches what this misses)."""

    def __init__(self, up: Uploads, name: str, *, seq: int, cutoff_us: int, generation: int,
                 compression: Compression, metadata: dict[str, str] | None = None) -> None:
        self._up = up
        self.name = name
        self.seq = seq
        self.cutoff_us = cutoff_us
        self.generation = generation
        self._enc = ObjectEncoder(compression)
        self._create_metadata = metadata
        self.ranges: list[_Range] = []
        self._first_us: int | None = None
        self._last_us: int | None = None
        self._opened = up.monotonic()
        self._upload_id: str | None = None
        self._undo = contextlib.ExitStack()  # the abort of the upload, once it exists
        self._uploader: PartUploader | None = None
        self._parts: list[Part] = []  # appended by the upload thread
        self._parts_seen = 0  # parts whose "part" step the pass has reported
        self.stored_bytes = 0  # bytes of the object as stored (compressed), once complete

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    @property
    def entries(self) -> int:
        return self._enc.entries

    def add_many(self, shard: int, batch: Sequence[tuple[str, bytes]], start: int = 0, *, roll: bool = False) -> int:
        """Add the entries ``batch[start:]`` of ``shard`` (in key order); with ``roll``, stop
        right after the entry that makes the object full. Returns the index of the first entry
        not added. The lines are the same whatever the batches: ``encode_raw_many`` of each."""
        end = len(batch)
        if roll:
            end = min(end, start + max(1, self._up.roll_entries - self._enc.entries))
        entries = batch[start:end] if start or end < len(batch) else batch
        if not entries:
            return start
        keys_ = [key for key, _ in entries]
        # Pages come in key order, so with the first and the last every key is a data key.
        keys.time_of(keys_[0])
        keys.time_of(keys_[-1])
        times, lines = _encode(shard, entries)
        if roll:
            n = _lines_below(lines, self._up.roll_bytes - self._enc.raw_bytes)
            if n < len(lines):
                lines, keys_, times = lines[:n], keys_[:n], times[:n]
        self._enc.add_many(lines)
        if not self.ranges or self.ranges[-1].shard != shard:
            self.ranges.append(_Range(shard))
        self.ranges[-1].keys.extend(keys_)
        lo, hi = min(times), max(times)
        if self._first_us is None or lo < self._first_us:
            self._first_us = lo
        if self._last_us is None or hi > self._last_us:
            self._last_us = hi
        while self._enc.available >= self._up.part_bytes:
            if self._uploader is None:
                self._uploader = PartUploader(self._send_part)
            self._uploader.submit(self._enc.take(self._up.part_bytes))
        self._report_parts()
        return start + len(keys_)

    def full(self) -> bool:
        return self._enc.entries >= self._up.roll_entries or self._enc.raw_bytes >= self._up.roll_bytes

    def expired(self) -> bool:
        return self._up.monotonic() - self._opened >= self._up.roll_seconds

    def pending(self) -> PendingCommit:
        return PendingCommit(
            name=self.name,
            seq=self.seq,
            cutoff_us=self.cutoff_us,
            generation=self.generation,
            entries=self._enc.entries,
            first_us=self._first_us or 0,
            last_us=self._last_us or 0,
            ranges=tuple(ShardRange(r.shard, r.keys[0], r.keys[-1], len(r.keys)) for r in self.ranges),
        )

    def _report_parts(self) -> None:
        """The "part" step, from the pass's thread, once per part the upload thread finished."""
        while self._parts_seen < len(self._parts):
            self._parts_seen += 1
            self._up.fault("part")

    def wait_parts(self) -> None:
        """Every full part so far is uploaded (or its failure raised)."""
        uploader = self._uploader
        if uploader is not None:
            try:
                uploader.finish()
            except BaseException:
                # Interrupted (or a part failed): no part may go out after this, nor during the
                # abort that follows.
                uploader.stop()
                raise
            finally:
                self._uploader = None  # no cycle keeps this writer's keys alive
                self._report_parts()

    def _send_part(self, data: bytes) -> None:
        """Upload the next part (the upload thread's, or the last one's from ``complete``)."""
        up = self._up
        if self._upload_id is None:
            # S3 fixes metadata at create: a streamed object carries what is known now.
            meta = self._create_metadata or {"cutoff": rfc3339_us(self.cutoff_us), "seq": str(self.seq)}
            upload_id = up.retry(f"create upload {self.name}",
                                 lambda: up.target.create_multipart(self.name, metadata=meta))
            # The undo, registered right after the side effect (as s3transfer does): from here
            # on, leaving the writer without ``complete`` aborts this upload.
            self._undo.callback(self._abort_upload, upload_id)
            self._upload_id = upload_id
        upload_id = self._upload_id
        number = len(self._parts) + 1
        try:
            part = up.retry(f"upload part {number} of {self.name}",
                            lambda: up.target.upload_part(self.name, upload_id, number, data))
        except UploadMissing as ex:
            # Aborted under us (a collector that took over, or GC): as in ``complete``.
            up.guard()
            raise TransientError(f"upload of {self.name} vanished while sending part {number}: {ex}") from ex
        self.stored_bytes += len(data)
        self._parts.append(part)

    def complete(self, metadata: dict[str, str]) -> None:
        """Make the object visible (the pending record is already written)."""
        up = self._up
        self.wait_parts()
        rest = self._enc.finish()
        if self._upload_id is None:
            up.guard()
            up.fault("commit")
            up.retry(f"PUT {self.name}", lambda: up.target.put(self.name, rest, metadata=metadata), check_first=False)
            self.stored_bytes = len(rest)
            return
        if rest:
            self._send_part(rest)
            self._report_parts()
        upload_id = self._upload_id
        up.guard()
        up.fault("commit")
        try:
            up.retry(f"complete {self.name}", lambda: up.target.complete_multipart(self.name, upload_id, self._parts),
                     check_first=False)
        except UploadMissing as ex:
            # Aborted under us: most likely by a collector that took over (then our lease is
            # gone), else by GC; either way the pending record lets recovery rebuild it.
            up.guard()
            raise TransientError(f"upload of {self.name} vanished before completion: {ex}") from ex
        self._undo.pop_all()  # completed: nothing to abort any more

    def abort(self) -> None:
        """Stop the upload thread (no part goes out after the abort), then abort the multipart
        upload if one exists and was not completed. Runs on leaving the ``with`` block."""
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.stop()
        self._undo.close()

    def _abort_upload(self, upload_id: str) -> None:
        try:
            self._up.target.abort_multipart(self.name, upload_id)
        except (TransientError, PermanentError, ObjectMissing) as ex:
            logger.warning("could not abort upload %s of %s (GC will): %s", upload_id, self.name, ex)


# The recorded time in a data key: d.<t:016x>...
_TIME_START, _TIME_END = 2, 2 + keys.TIME_WIDTH


def _encode(shard: int, entries: Sequence[tuple[str, bytes]]) -> tuple[list[int], list[bytes]]:
    """The recorded times (from the keys) and the log lines of ``entries``; an invalid one is
    named by its shard and key."""
    try:
        return encode_index_entries(entries, time_start=_TIME_START, time_end=_TIME_END)
    except InvalidMutation:
        for key, raw in entries:
            try:
                encode_raw(int(key[_TIME_START:_TIME_END], 16), raw)
            except InvalidMutation as ex:
                raise InvalidMutation(f"shard {shard} key {key}: {ex}") from ex
        raise


def _lines_below(lines: Sequence[bytes], room: int) -> int:
    """How many of ``lines`` go into an object with ``room`` bytes left: up to and including the
    one that fills it."""
    total = 0
    for n, line in enumerate(lines, 1):
        total += len(line)
        if total >= room:
            return n
    return len(lines)


def check_sizes(cfg: CollectorConfig, target: Target) -> None:
    """What the config model cannot check alone: sizes against this target (and the bounds
    again, for configs built unchecked by tests)."""
    if (cfg.settle < 0 or cfg.interval <= 0 or cfg.roll_entries < 1 or cfg.roll_bytes < 1
            or cfg.roll_seconds < 0):
        raise ConfigError("collector: settle, roll_* must be >= 0 and interval, roll_entries, roll_bytes > 0")
    if cfg.part_bytes < target.min_part_bytes:
        raise ConfigError(
            f"collector.part_bytes must be at least {target.min_part_bytes} bytes for {target.url} "
            f"(got {cfg.part_bytes})"
        )
    if cfg.roll_bytes // cfg.part_bytes + 2 > MAX_PARTS:
        raise ConfigError(f"collector.roll_bytes / part_bytes must stay below {MAX_PARTS} parts")
