"""The input of ``rgw-changelog record``: JSON Lines checked one line at a time into mutations,
every error naming its line and its field (``line 4: mtime: ...``).

``check_input`` reads the whole input before anything is recorded, so that a bad line can stop
the run with nothing recorded; the good lines wait in a spool (in memory up to ``SPOOL_MEMORY``,
then on disk) as encoded mutations, ready for the index.

Identity: each line's (source, position) is its event identity. Without ``--source`` the run
is one new stream (``HookStream``); with ``--source NAME`` a line's position is its ``position``
field or else its line number, so a rerun of the same input is recorded once (the index skips a
position at or below its source's high-water mark).
"""

from __future__ import annotations

import math
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from changelog.errors import InvalidMutation
from changelog.pipeline.index import HookStream
from changelog.pipeline.logformat import SCHEMA_VERSION
from changelog.pipeline.mutation import MAX_MTIME_NS, InvalidField, Mutation, Op
from changelog.times import TIME_HELP, parse_time

# Bad lines shown one by one: enough to see a pattern; the rest are counted.
MAX_SHOWN = 20
# Integer positions and seqs, and line-number positions, are written with this many digits so
# that string order (the index's order of positions) is number order: 20 digits hold any uint64.
NUMBER_WIDTH = 20
# Encoded mutations up to this size stay in memory while the input is checked; more go to disk.
SPOOL_MEMORY = 64 * 1024 * 1024
MAX_MTIME_S = MAX_MTIME_NS // 1_000_000_000

FIELDS = frozenset({
    "bucket", "key", "op", "version_id", "size", "etag", "mtime", "mtime_ns", "time",
    "seq", "source", "position", "baseline", "metadata", "tenant", "storage_class",
    # of a change-log line: its schema version; id and recorded are made again when recorded
    "v", "id", "recorded",
})  # fmt: skip
_LEN = struct.Struct("<I")


class BadLine(InvalidMutation):
    """One input line that cannot be recorded: ``line N: <field>: <why>``."""

    def __init__(self, lineno: int, why: str, *, field_name: str | None = None) -> None:
        super().__init__(f"line {lineno}: {field_name}: {why}" if field_name else f"line {lineno}: {why}")
        self.lineno = lineno
        self.field = field_name
        self.why = why

    def doc(self) -> dict[str, object]:
        return {"line": self.lineno, "field": self.field, "error": self.why}


def _kind(value: object) -> str:
    shown = orjson.dumps(value).decode() if value is not None else "null"
    return f"{type(value).__name__} {shown[:40] + '...' if len(shown) > 40 else shown}"


def _number(value: object, lineno: int, name: str) -> str | None:
    """A position or seq: a string as given, a non-negative int zero-padded (so that string order
    is number order), None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if type(value) is int and value >= 0:
        return f"{value:0{NUMBER_WIDTH}d}"
    raise BadLine(lineno, f"must be a string or a non-negative integer, not {_kind(value)}", field_name=name)


def _mtime_ns(doc: dict[str, object], lineno: int) -> int:
    """The mutation time, from one of ``mtime_ns`` (int), ``mtime`` or ``time`` (a time string or
    epoch seconds); now when none is given."""
    given = [name for name in ("mtime_ns", "mtime", "time") if doc.get(name) is not None]
    if not given:
        return time.time_ns()
    name = given[0]
    if len(given) > 1:
        raise BadLine(
            lineno, f"give one of mtime_ns, mtime, time, not {' and '.join(given)}", field_name=name
        )
    raw = doc[name]
    if name == "mtime_ns":
        if type(raw) is not int or not 0 <= raw <= MAX_MTIME_NS:
            raise BadLine(
                lineno, f"must be an integer from 0 to {MAX_MTIME_NS}, not {_kind(raw)}", field_name=name
            )
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise BadLine(lineno, f"must be a time ({TIME_HELP}), not {_kind(raw)}", field_name=name)
    if isinstance(raw, str):
        try:
            ns = parse_time(raw) * 1000
        except (ValueError, OverflowError):
            raise BadLine(lineno, f"{raw!r} is not a time (use {TIME_HELP})", field_name=name) from None
    elif not math.isfinite(raw) or not 0 <= raw <= MAX_MTIME_S:
        raise BadLine(
            lineno,
            f"{raw!r} is out of range: epoch seconds from 0 to {MAX_MTIME_S} (2554-07-21)",
            field_name=name,
        )
    else:
        ns = raw * 1_000_000_000 if isinstance(raw, int) else int(raw * 1e9)
    if not 0 <= ns <= MAX_MTIME_NS:
        raise BadLine(lineno, f"{raw!r} is out of range: from 1970 to 2554-07-21", field_name=name)
    return ns


class LineReader:
    """Turns input lines into mutations with their identity; raises ``BadLine``."""

    def __init__(self, *, source: str | None) -> None:
        self._stream = HookStream("cli")
        self._source = source
        # source -> (last position, its line): positions of one source must not go back, or
        # the index would take the later lines of a batch as duplicates of the earlier ones.
        self._last: dict[str, tuple[str, int]] = {}

    def parse(self, lineno: int, line: bytes) -> tuple[Mutation, bytes]:
        """The line's mutation and its encoded form (the index entry's value)."""
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as ex:
            raise BadLine(lineno, f"not JSON ({ex})") from None
        if not isinstance(doc, dict):
            raise BadLine(lineno, f"expected a JSON object, not {_kind(doc)}")
        unknown = sorted(set(doc) - FIELDS)
        if unknown:
            raise BadLine(
                lineno, f"unknown field (known: {', '.join(sorted(FIELDS))})", field_name=unknown[0]
            )
        try:
            m = self._mutation(doc, lineno)
            data = m.encode()  # checks the size limit
        except InvalidField as ex:
            # An absent field is "missing", not the "is empty" of an empty one.
            why = "missing" if ex.why == "is empty" and ex.field not in doc else ex.why
            raise BadLine(lineno, why, field_name=ex.field) from None
        except BadLine:
            raise
        except InvalidMutation as ex:
            raise BadLine(lineno, str(ex)) from None
        last = self._last.get(m.source)
        if last is not None and m.position < last[0]:
            raise BadLine(
                lineno,
                f"{m.position!r} comes before {last[0]!r} (line {last[1]}) in string order; "
                f"the positions of source {m.source!r} must not go back",
                field_name="position",
            )
        self._last[m.source] = (m.position, lineno)
        return m, data

    def _mutation(self, doc: dict[str, object], lineno: int) -> Mutation:
        baseline = doc.get("baseline", False)
        if not isinstance(baseline, bool):
            raise BadLine(lineno, f"must be true or false, not {_kind(baseline)}", field_name="baseline")
        # A change-log line (schema 1, with "v") says the mutation time in ``time`` and the
        # written object's in ``mtime``; other input gives one of mtime_ns, mtime or time.
        obj_mtime_ns: int | None = None
        if "v" in doc and doc["v"] != SCHEMA_VERSION:
            raise BadLine(lineno, f"schema version {doc['v']!r} is not {SCHEMA_VERSION}", field_name="v")
        if "v" in doc and doc.get("mtime") is not None:
            obj_mtime_ns = _mtime_ns({"mtime": doc["mtime"]}, lineno)
            doc = {k: v for k, v in doc.items() if k != "mtime"}
        mtime_ns = _mtime_ns(doc, lineno)
        position = _number(doc.get("position"), lineno, "position")
        if position is None:
            position = f"{lineno:0{NUMBER_WIDTH}d}" if self._source else self._stream.next_position()
        seq = _number(doc.get("seq"), lineno, "seq") or f"{mtime_ns:020d}.{position}"
        source = doc.get("source")
        return Mutation(
            tenant=doc.get("tenant") or "",  # type: ignore[arg-type]  # Mutation checks every type
            bucket=doc.get("bucket", ""),  # type: ignore[arg-type]
            key="" if doc.get("key", "") is None else doc.get("key", ""),  # type: ignore[arg-type]
            op=doc.get("op", "write"),  # type: ignore[arg-type]
            mtime_ns=mtime_ns,
            source=(self._source or self._stream.source) if source is None else source,  # type: ignore[arg-type]
            position=position,
            seq=seq,
            version_id=doc.get("version_id"),  # type: ignore[arg-type]
            size=doc.get("size"),  # type: ignore[arg-type]
            etag=doc.get("etag"),  # type: ignore[arg-type]
            obj_mtime_ns=obj_mtime_ns,
            storage_class=doc.get("storage_class"),  # type: ignore[arg-type]
            baseline=baseline,
            metadata={} if doc.get("metadata") is None else doc["metadata"],  # type: ignore[arg-type]
        )


@dataclass
class Checked:
    """The whole input, checked: the good mutations (spooled, encoded) and the bad lines."""

    lines: int = 0
    good: int = 0
    last_good: int = 0  # the line number of the last good line
    bad: int = 0
    shown: list[BadLine] = field(default_factory=list)
    _spool: tempfile.SpooledTemporaryFile[bytes] = field(
        default_factory=lambda: tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    )

    def add(self, data: bytes) -> None:
        """One good mutation, encoded (``Mutation.encode``)."""
        self._spool.write(_LEN.pack(len(data)))
        self._spool.write(data)
        self.good += 1

    def reject(self, bad: BadLine) -> None:
        self.bad += 1
        if len(self.shown) < MAX_SHOWN:
            self.shown.append(bad)

    def batches(self, size: int) -> Iterator[list[Mutation]]:
        """The good mutations in input order, ``size`` at a time."""
        self._spool.seek(0)
        batch: list[Mutation] = []
        for _ in range(self.good):
            (n,) = _LEN.unpack(self._spool.read(_LEN.size))
            batch.append(Mutation.decode(self._spool.read(n)))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def bad_lines_text(self) -> str:
        """The bad lines' numbers, for a summary: ``4, 9 and 3 more``."""
        numbers = ", ".join(str(b.lineno) for b in self.shown)
        more = self.bad - len(self.shown)
        return f"{numbers} and {more} more" if more else numbers

    def close(self) -> None:
        self._spool.close()


def check_input(lines: Iterable[bytes], *, source: str | None) -> Checked:
    """Every line of ``lines`` checked; blank lines are skipped (but counted in line numbers)."""
    reader = LineReader(source=source)
    checked = Checked()
    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            checked.lines += 1
            try:
                _, data = reader.parse(lineno, line)
            except BadLine as bad:
                checked.reject(bad)
                continue
            checked.add(data)
            checked.last_good = lineno
    except BaseException:
        checked.close()
        raise
    return checked


def check_source(name: str) -> str | None:
    """Why ``name`` cannot be a source (the rule of ``Mutation.source``), or None."""
    try:
        Mutation(bucket="b", key="k", op=Op.WRITE, mtime_ns=0, source=name, position="0", seq="0")
    except InvalidField as ex:
        return ex.why
    return None
