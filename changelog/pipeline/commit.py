"""The collector's records in the control object (key names in ``changelog.pipeline.control``): the
pending commit written before a log object becomes visible (docs/design.md §5.5), from which
recovery finishes or rebuilds it, the collector state ``c.state``, and a collector stream's
``Drained`` record (docs/design.md §16)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from changelog.errors import PermanentError
from changelog.pipeline.control import COLLECTOR_PENDING_PREFIX
from changelog.pipeline.logformat import Compression, parse_log_name, rfc3339_us


def _encode(record: PendingCommit | CollectorState | Drained, **replaced: object) -> bytes:
    """A record's fields as one JSON object, in field order (the stored layout: a record
    written before an upgrade reads back the same), ``replaced`` given in their stead."""
    return orjson.dumps({f.name: replaced.get(f.name, getattr(record, f.name)) for f in dataclasses.fields(record)})


_Record = TypeVar("_Record", "CollectorState", "Drained")


def _decode(cls: type[_Record], data: bytes | None, what: str) -> _Record:
    """A record written by ``_encode``: the default record where there is none, each field read
    by name (absent: its default; an ``int`` field through ``int``), so that a record written
    before a field was added reads back. Unreadable: ``PermanentError`` naming ``what``."""
    if not data:
        return cls()
    try:
        d = orjson.loads(data)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = d.get(f.name, f.default)
            values[f.name] = int(value) if f.type == "int" else value
        return cls(**values)
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as ex:
        raise PermanentError(f"unreadable {what} ({len(data)} bytes): {ex}") from ex


@dataclass(frozen=True, slots=True)
class ShardRange:
    """The keys of one shard in one log object: every data key in ``[first, last]``."""

    shard: int
    first: str
    last: str
    count: int


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """What a log object holds, written to the control object before the object is made visible.
    Its content is a pure function of the index ranges, so it can be rebuilt byte for byte."""

    name: str
    seq: int
    cutoff_us: int
    generation: int
    entries: int
    first_us: int
    last_us: int
    ranges: tuple[ShardRange, ...]

    @property
    def key(self) -> str:
        return COLLECTOR_PENDING_PREFIX + self.name

    @property
    def compression(self) -> Compression:
        parsed = parse_log_name(self.name)
        if parsed is None:
            raise PermanentError(f"pending record names no log object: {self.name!r}")
        return parsed.compression

    def metadata(self) -> dict[str, str]:
        return {
            "cutoff": rfc3339_us(self.cutoff_us),
            "seq": str(self.seq),
            "entries": str(self.entries),
            "first-time": rfc3339_us(self.first_us),
            "last-time": rfc3339_us(self.last_us),
        }

    def encode(self) -> bytes:
        # Ranges as arrays [shard, first, last, count]: compact, and what ``decode`` reads.
        return _encode(self, ranges=[[r.shard, r.first, r.last, r.count] for r in self.ranges])

    @classmethod
    def decode(cls, data: bytes) -> PendingCommit:
        try:
            d = orjson.loads(data)
            return cls(
                name=d["name"],
                seq=int(d["seq"]),
                cutoff_us=int(d["cutoff_us"]),
                generation=int(d["generation"]),
                entries=int(d["entries"]),
                first_us=int(d["first_us"]),
                last_us=int(d["last_us"]),
                ranges=tuple(ShardRange(int(s), str(f), str(la), int(c)) for s, f, la, c in d["ranges"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as ex:
            raise PermanentError(f"unreadable pending commit record ({len(data)} bytes): {ex}") from ex


@dataclass(frozen=True, slots=True)
class CollectorState:
    """``c.state`` in the control object (``c.stream.<nnn>.state`` for a collector stream)."""

    last_cutoff_us: int = 0
    last_object: str | None = None
    watermark_us: int = 0
    generation: int = 0
    # A stream's only: every object of the stream with a cutoff at or below it is committed,
    # and the stream's next cutoffs are above it (the readers' bound, ``readable_until_us``).
    through_us: int = 0

    def encode(self) -> bytes:
        if not self.through_us:
            # The unpartitioned collector's record stays as it was stored before streams.
            return orjson.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                 if f.name != "through_us"})
        return _encode(self)

    @classmethod
    def decode(cls, data: bytes | None) -> CollectorState:
        return _decode(cls, data, "collector state")


@dataclass(frozen=True, slots=True)
class Drained:
    """How far a collector stream has committed its records by their recorded time, written in
    the op that writes its ``through_us`` at the end of a pass: every record of the stream
    recorded before ``drained_us`` is committed, in objects whose cutoff is at or below that
    ``through_us``. ``held_us``: the recorded time of the ``bucket_delete`` the stream holds back
    (0: none); ``drained_us`` is then that time."""

    drained_us: int = 0
    held_us: int = 0

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, data: bytes | None) -> Drained:
        return _decode(cls, data, "collector stream record")

    def done_us(self, state: CollectorState) -> int:
        """Every record recorded before it is committed: ``drained_us``, or the stream's
        watermark where that is higher (it is also such a time, §7: a stream last run by a
        version that did not write this record has only that)."""
        return max(self.drained_us, state.watermark_us)
