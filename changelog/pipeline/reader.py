"""The consumer side: list committed change-log objects after a time or a checkpoint name, and
stream their records in order, each event id once (docs/design.md §8). Used by the CLI
(``logs list``, ``logs cat``, ``status``) and by the backup tool.

Log object names sort by cutoff then sequence number, and an object only appears after every
object before it in that order (the collector commits them one at a time and recovers a
pending one before writing the next), so a consumer resumes with a start-after listing from
the name of the last object it finished: nothing is skipped and nothing read twice. Every
record recorded at or after time T is in an object whose cutoff is after T.

Collector streams (``[scale] partitioned``) commit side by side, each in increasing cutoff, so
a stream's object may appear below a name another stream committed earlier. Their objects are
listed only up to the watermark's ``readable_until_us`` (the lowest cutoff every stream has
committed through, and will never commit at or below again): below it the order is final, and
the one-name checkpoint stays exact. The bound is read, before listing again, when the first
stream name shows up; the logs of an unpartitioned collector are listed as ever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict

import orjson

from changelog.errors import ObjectMissing
from changelog.pipeline.logformat import (
    LogRecord,
    iter_records,
    parse_log_name,
    parse_rfc3339,
    rfc3339_us,
    start_after_time,
    watermark_name,
)
from changelog.pipeline.targets import Target

logger = logging.getLogger(__name__)

# How many recent ids a reader remembers to drop repeats: far more than one log object holds
# by default (roll_entries = 100k), which is all a consumer resuming from a checkpoint re-reads.
DEDUP_IDS = 200_000


@dataclass(frozen=True, slots=True)
class LogObject:
    name: str
    cutoff_us: int
    seq: int
    compression: str
    size: int


@dataclass(frozen=True, slots=True)
class Watermark:
    complete_until_us: int
    last_object: str | None
    updated_us: int | None
    # Collector streams only (``[scale] partitioned``): stream objects up to this cutoff are
    # listed (module docstring); None: an unpartitioned collector's watermark.
    readable_until_us: int | None = None


class RecentIds:
    """A bounded set of the most recently added ids (oldest forgotten first)."""

    def __init__(self, capacity: int = DEDUP_IDS) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> bool:
        """Remember ``item``; False if it was already there."""
        if item in self._ids:
            return False
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]
        return True


def _dir(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def list_logs(
    target: Target,
    *,
    prefix: str = "",
    since_us: int | None = None,
    after: str | None = None,
) -> Iterator[LogObject]:
    """Committed log objects under ``prefix`` in order: those whose cutoff is after
    ``since_us`` and whose name is after ``after`` (a checkpoint). Other names are skipped.
    Collector streams' objects end at the watermark's ``readable_until_us`` (module docstring)."""
    start = ""
    if since_us is not None:
        start = start_after_time(prefix, since_us)
    if after:
        start = max(start, after)
    bound: int | None = None
    bounded = False
    while True:
        relist = False
        for info in target.list(_dir(prefix), start_after=start):
            parsed = parse_log_name(info.name)
            if parsed is None:
                continue
            if since_us is not None and parsed.cutoff_us <= since_us:
                continue
            if parsed.stream is not None and not bounded:
                # Read before the listing that is yielded from: every object at or below the
                # bound was committed before it was published, so that listing holds them all.
                wm = read_watermark(target, prefix=prefix)
                # No watermark yet: nothing is final. One without the bound: the unpartitioned
                # collector's (before a switch to streams, or again after one: it finished every
                # stream's pending objects first), final up to its last object's cutoff; a stream
                # object above it waits for the streams' first published bound (a stream may
                # still commit below it, and a checkpoint would then skip that object).
                if wm is None:
                    bound = 0
                elif wm.readable_until_us is not None:
                    bound = wm.readable_until_us
                else:
                    last = parse_log_name(wm.last_object) if wm.last_object else None
                    bound = last.cutoff_us if last is not None else 0
                bounded = relist = True
                break
            if bound is not None and parsed.cutoff_us > bound:
                return  # later names sort at or above this cutoff: none is final yet
            yield LogObject(info.name, parsed.cutoff_us, parsed.seq, parsed.compression.value, info.size)
            start = info.name
        if not relist:
            return


def newest_final(target: Target, *, prefix: str, after: str | None, until_us: int) -> str | None:
    """The newest committed log object after ``after`` whose cutoff is at or below ``until_us``
    (names sort by cutoff first: the listing stops at the first one above it); None if none."""
    newest = None
    for info in target.list(_dir(prefix), start_after=after or ""):
        parsed = parse_log_name(info.name)
        if parsed is None:
            continue
        if parsed.cutoff_us > until_us:
            break
        newest = info.name
    return newest


def read_object(target: Target, name: str) -> Iterator[LogRecord]:
    """The records of one log object, streamed and decompressed by extension."""
    parsed = parse_log_name(name)
    compression = parsed.compression if parsed is not None else "none"
    with target.open(name) as stream:
        yield from iter_records(stream, compression)


def read_records(
    target: Target,
    *,
    prefix: str = "",
    since_us: int | None = None,
    until_us: int | None = None,
    after: str | None = None,
    bucket: str | None = None,
    key_prefix: str | None = None,
    seen: RecentIds | None = None,
) -> Iterator[LogRecord]:
    """Records in log order, each id once. ``since_us``/``until_us`` select by the ``recorded``
    time (arrival in the index, the order logs are written in): ``[since, until)``."""
    for _, rec in LogReader(target, prefix=prefix, seen=seen).records(
        since_us=since_us, until_us=until_us, after=after, bucket=bucket, key_prefix=key_prefix
    ):
        yield rec


class LogReader:
    """A resumable reader: ``checkpoint`` is the name of the last object read to its end;
    records already seen (by id, within the last ``DEDUP_IDS``) are skipped."""

    def __init__(
        self,
        target: Target,
        *,
        prefix: str = "",
        checkpoint: str | None = None,
        seen: RecentIds | None = None,
    ) -> None:
        self.target = target
        self.prefix = prefix
        self.checkpoint = checkpoint
        self.seen = seen if seen is not None else RecentIds()
        self.skipped = 0

    def objects(self, *, since_us: int | None = None, after: str | None = None) -> Iterator[LogObject]:
        return list_logs(self.target, prefix=self.prefix, since_us=since_us, after=after or self.checkpoint)

    def records(
        self,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        after: str | None = None,
        bucket: str | None = None,
        key_prefix: str | None = None,
    ) -> Iterator[tuple[LogObject, LogRecord]]:
        """(object, record) pairs in order; the checkpoint advances as each object ends."""
        for obj in self.objects(since_us=since_us, after=after):
            try:
                records = read_object(self.target, obj.name)
                for rec in records:
                    if not self.seen.add(rec.id):
                        self.skipped += 1
                        continue
                    # A tenant's bucket is asked for as "tenant/bucket"; a bucket op (no key)
                    # concerns every key of its bucket, so a key prefix keeps it.
                    if bucket is not None and rec.qualified_bucket != bucket:
                        continue
                    if key_prefix is not None and rec.key is not None and not rec.key.startswith(key_prefix):
                        continue
                    if since_us is not None or until_us is not None:
                        t = rec.recorded_us
                        if since_us is not None and t < since_us:
                            continue
                        if until_us is not None and t >= until_us:
                            continue
                    yield obj, rec
            except ObjectMissing:
                # Deleted between listing and reading (retention): nothing to read there.
                logger.warning("log object %s vanished while reading", obj.name)
            self.checkpoint = obj.name


def read_watermark(target: Target, *, prefix: str = "") -> Watermark | None:
    name = watermark_name(prefix)
    try:
        doc: object = orjson.loads(target.get(name))
    except ObjectMissing:
        return None
    except orjson.JSONDecodeError as ex:
        logger.warning("unreadable watermark %s: %s", name, ex)
        return None
    if not isinstance(doc, dict):
        logger.warning("unreadable watermark %s: not a JSON object", name)
        return None
    until = doc.get("complete_until_us")
    if not isinstance(until, int):
        until = parse_rfc3339(str(doc["complete_until"]))
    updated, last = doc.get("updated"), doc.get("last_object")
    readable = doc.get("readable_until_us")
    return Watermark(
        until,
        str(last) if last is not None else None,
        parse_rfc3339(updated) if isinstance(updated, str) else None,
        int(readable) if isinstance(readable, int) else None,
    )


def last_log(target: Target, *, prefix: str = "", after: str | None = None) -> LogObject | None:
    """The newest committed log object (listing from ``after``, e.g. the watermark's)."""
    last = None
    for obj in list_logs(target, prefix=prefix, after=after):
        last = obj
    return last


class WatermarkDoc(TypedDict):
    complete_until: str
    complete_until_us: int
    last_object: str | None


class TargetStatus(TypedDict):
    """What ``status`` shows of the target."""

    last_object: str | None
    watermark: WatermarkDoc | None


def target_status(target: Target, *, prefix: str = "") -> TargetStatus:
    """What ``status`` shows of the target: the newest log object and the watermark."""
    wm = read_watermark(target, prefix=prefix)
    last = last_log(target, prefix=prefix, after=wm.last_object if wm else None)
    name = last.name if last else (wm.last_object if wm else None)
    return {
        "last_object": name,
        "watermark": None
        if wm is None
        else {
            "complete_until": rfc3339_us(wm.complete_until_us),
            "complete_until_us": wm.complete_until_us,
            "last_object": wm.last_object,
        },
    }
