"""The collector's records in the control object (key names in ``changelog.pipeline.control``): the
pending commit written before a log object becomes visible (docs/design.md §5.5), from which
recovery finishes or rebuilds it, and the collector state ``c.state``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import orjson

from changelog.errors import PermanentError
from changelog.pipeline.control import COLLECTOR_PENDING_PREFIX
from changelog.pipeline.logformat import Compression, parse_log_name, rfc3339_us


def _encode(record: PendingCommit | CollectorState, **replaced: object) -> bytes:
    """A record's fields as one JSON object, in field order (the stored layout: a record
    written before an upgrade reads back the same), ``replaced`` given in their stead."""
    return orjson.dumps({f.name: replaced.get(f.name, getattr(record, f.name)) for f in dataclasses.fields(record)})


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
        if not data:
            return cls()
        try:
            d = orjson.loads(data)
            return cls(
                last_cutoff_us=int(d.get("last_cutoff_us", 0)),
                last_object=d.get("last_object"),
                watermark_us=int(d.get("watermark_us", 0)),
                generation=int(d.get("generation", 0)),
                through_us=int(d.get("through_us", 0)),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as ex:
            raise PermanentError(f"unreadable collector state ({len(data)} bytes): {ex}") from ex
