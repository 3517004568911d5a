"""The change-log format: one JSON object per line for every mutation, log object names sortable
by cutoff, and deterministic compression (docs/design.md §7).

Everything here is a pure function of its input: the same index entries encode to the same
bytes, compressed the same way, so the collector can rebuild a lost log object byte for byte
from the index (crash recovery, §6) and a stale collector's late upload equals the new one's.
"""

from __future__ import annotations

import enum
import functools
import gzip
import io
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Protocol

import msgpack
import orjson
import zstandard

from changelog.errors import InvalidMutation, PermanentError
from changelog.native import speedup
from changelog.pipeline.mutation import Mutation, event_id

# Fixed compression settings: a log object must be rebuildable byte for byte, so nothing here
# may depend on the host, the time or the input chunking. (Byte identity still assumes the same
# zlib/zstd library versions on the host that rebuilds; see docs/design.md §6.)
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
# Lines are handed to the compressor in blocks of at least this size: one call per block instead
# of per line, and block boundaries depend only on the sequence of lines.
FEED_BYTES = 64 * 1024

WATERMARK_NAME = "_watermark.json"

_CUTOFF_FMT = "%Y%m%dT%H%M%S"
_NAME_RE = re.compile(
    r"^(?:(?P<prefix>.*)/)?(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/"
    r"(?P<cutoff>(?P<date>\d{8})T(?P<hms>\d{6})\.(?P<us>\d{6})Z)-(?P<seq>\d{10})(?:-p(?P<stream>\d{3}))?\.jsonl(?P<ext>\.gz|\.zst)?$"
)


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self]

    @classmethod
    def parse(cls, value: str | Compression) -> Compression:
        try:
            return cls(value)
        except ValueError:
            raise PermanentError(
                f"compression must be one of {[c.value for c in cls]}, not {value!r}"
            ) from None


_EXTENSIONS = {Compression.NONE: ".jsonl", Compression.GZIP: ".jsonl.gz", Compression.ZSTD: ".jsonl.zst"}
_BY_SUFFIX = {"": Compression.NONE, ".gz": Compression.GZIP, ".zst": Compression.ZSTD}


# --- time -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _second_prefix(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def rfc3339_us(t_us: int) -> str:
    """``2026-11-21T22:18:00.123456Z`` for microseconds since the epoch (UTC)."""
    sec, us = divmod(t_us, 1_000_000)
    return f"{_second_prefix(sec)}.{us:06d}Z"


def parse_rfc3339(s: str) -> int:
    """Microseconds since the epoch for an RFC 3339 time (``Z`` or an offset; no zone = UTC)."""
    text = s.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as ex:
        raise ValueError(f"not an RFC 3339 time: {s!r}") from ex
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return to_us(dt)


def to_us(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- records ----------------------------------------------------------------------------------


class IndexEntry(Protocol):
    """What ``encode_entry`` needs of an index entry (``changelog.pipeline.index.Entry``)."""

    @property
    def time_us(self) -> int: ...

    @property
    def mutation(self) -> Mutation: ...


# The record schema version every line carries as ``"v"`` (docs/record.schema.json). A reader
# meeting a larger one refuses it (``NewerSchema``) instead of misreading fields it does not know.
SCHEMA_VERSION = 1


class NewerSchema(PermanentError):
    """A change-log line of a schema version this code does not know."""


def _schema_version(doc: dict[str, object]) -> None:
    v = doc.get("v", 0)  # lines written before the schema had a version: 0
    if type(v) is not int or v < 0:
        raise PermanentError(f"malformed change-log line: v must be a schema version number, not {v!r}")
    if v > SCHEMA_VERSION:
        raise NewerSchema(
            f"change-log record of schema version {v}: this rgw-changelog reads versions up to "
            f"{SCHEMA_VERSION}; upgrade it to read these logs"
        )


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of a change-log object, as consumers read it (docs/design.md §7, the schema in
    docs/record.schema.json). ``key`` is None for a bucket op; ``version_id`` None is the null
    version; ``mtime`` is the written object's mtime (``time`` is the mutation's)."""

    id: str
    time: str
    bucket: str
    key: str | None
    version_id: str | None
    op: str
    size: int | None
    etag: str | None
    seq: str
    baseline: bool
    recorded: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    tenant: str | None = None
    mtime: str | None = None
    storage_class: str | None = None
    v: int = SCHEMA_VERSION

    @property
    def time_us(self) -> int:
        return parse_rfc3339(self.time)

    @property
    def recorded_us(self) -> int:
        return parse_rfc3339(self.recorded)

    @property
    def is_bucket_op(self) -> bool:
        return self.op in BUCKET_OPS

    @property
    def s3_bucket(self) -> str:
        """The bucket's name in an S3 request: ``tenant:bucket`` for a tenant's bucket."""
        return f"{self.tenant}:{self.bucket}" if self.tenant else self.bucket

    @property
    def qualified_bucket(self) -> str:
        """``tenant/bucket`` (radosgw's spelling, as in ``[source]`` filters), or the bucket."""
        return f"{self.tenant}/{self.bucket}" if self.tenant else self.bucket

    @classmethod
    def from_json(cls, line: bytes | str) -> LogRecord:
        try:
            doc = orjson.loads(line)
            if not isinstance(doc, dict):
                raise TypeError(f"a line must be a JSON object, not {type(doc).__name__}")
            _schema_version(doc)
            return cls(
                id=doc["id"],
                time=doc["time"],
                bucket=doc["bucket"],
                key=doc["key"],
                version_id=None if doc.get("version_id") == "null" else doc.get("version_id"),
                op=doc["op"],
                size=doc.get("size"),
                etag=doc.get("etag"),
                seq=doc["seq"],
                baseline=bool(doc.get("baseline", False)),
                recorded=doc["recorded"],
                metadata=doc.get("metadata") or {},
                tenant=doc.get("tenant") or None,
                mtime=doc.get("mtime"),
                storage_class=doc.get("storage_class"),
                v=doc.get("v", 0),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as ex:
            raise PermanentError(f"malformed change-log line ({len(line)} bytes): {ex}") from ex

    def to_dict(self) -> dict[str, object]:
        """Its JSON form (docs/design.md §7), in field order."""
        doc: dict[str, object] = {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "time": self.time,
            "op": self.op,
            "tenant": self.tenant,
            "bucket": self.bucket,
            "key": self.key,
            "version_id": self.version_id,
            "size": self.size,
            "etag": self.etag,
            "mtime": self.mtime,
            "storage_class": self.storage_class,
            "seq": self.seq,
            "baseline": self.baseline,
            "recorded": self.recorded,
        }
        if self.metadata:
            doc["metadata"] = dict(sorted(self.metadata.items()))
        return doc

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_APPEND_NEWLINE)


BUCKET_OPS = frozenset(("bucket_create", "bucket_delete"))


def record_of(entry: IndexEntry) -> LogRecord:
    m = entry.mutation
    return LogRecord(
        id=m.event_id,
        time=rfc3339_us(m.mtime_ns // 1000),
        bucket=m.bucket,
        key=m.key or None,
        version_id=m.version_id,
        op=m.op.value,
        size=m.size,
        etag=m.etag,
        seq=m.seq,
        baseline=m.baseline,
        recorded=rfc3339_us(entry.time_us),
        metadata=m.metadata,
        tenant=m.tenant or None,
        mtime=None if m.obj_mtime_ns is None else rfc3339_us(m.obj_mtime_ns // 1000),
        storage_class=m.storage_class,
    )


def encode_entry(entry: IndexEntry) -> bytes:
    """The JSON line (newline included) of one index entry. Deterministic: field order is fixed,
    metadata keys are sorted, times are formatted from integers."""
    return record_of(entry).encode()


def encode_raw(time_us: int, raw: bytes) -> bytes:
    """``encode_entry`` straight from an index entry's stored msgpack value: the same bytes,
    without building (and re-validating) a ``Mutation``."""
    return encode_raw_many(((time_us, raw),))[0]


# Second -> "YYYY-MM-DDTHH:MM:SS.%06dZ" (the format of ``rfc3339_us`` for the times of that
# second) for ``encode_raw_many``: entries come in time order, so the last second and a small
# dict (cleared when it grows) catch nearly every lookup.
_FORMAT_CACHE: dict[int, str] = {}
_FORMAT_CACHE_MAX = 4096


def _second_format(sec: int) -> str:
    fmt = _FORMAT_CACHE.get(sec)
    if fmt is None:
        if len(_FORMAT_CACHE) >= _FORMAT_CACHE_MAX:
            _FORMAT_CACHE.clear()
        fmt = _FORMAT_CACHE[sec] = _second_prefix(sec) + ".%06dZ"
    return fmt

# Between two documents of one ``orjson.dumps`` call: compact JSON never holds a raw newline (one
# in a string is escaped), so ``,\n,`` in the output is exactly where one line ends.
_LINE_BREAK = orjson.Fragment(b"\n")
_SEPARATOR = b",\n,"


# The C encoder (changelog/_speedups.c, built by the package build when a compiler is there):
# ``(items, schema version) -> lines``, or None for a value shape it leaves to Python; and the
# same for index entries, ``(entries, time start, time end, schema version) -> (times, lines)``.
NativeEncoder = Callable[[list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...], int], list[bytes] | None]
NativeEntriesEncoder = Callable[
    [Sequence[tuple[str, bytes]], int, int, int], tuple[list[int], list[bytes]] | None
]


def _native_encoder() -> tuple[NativeEncoder, NativeEntriesEncoder] | tuple[None, None]:
    """The C encoder, unless it is not built or ``RGW_CHANGELOG_PURE_PYTHON=1`` (tests and
    debugging) asks for the Python one."""
    raw_many, entries = speedup("encode_raw_many"), speedup("encode_entries")
    if raw_many is None or entries is None:
        return None, None
    return raw_many, entries


_NATIVE, _NATIVE_ENTRIES = _native_encoder()
# Which encoder ``encode_raw_many`` uses: "native" or "python" (for status and the benchmarks).
ENCODER = "python" if _NATIVE is None else "native"


def encode_raw_many(items: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """The JSON lines of many ``(recorded time, stored value)`` pairs, in order: exactly
    ``encode_raw`` of each (the collector's pass and the byte-identical rebuild of recovery both
    go through here). The collector's hot path: the C encoder when it is built, else
    ``_encode_raw_many_py``; the two are one contract (tests/unit/test_drain_speed.py)."""
    if _NATIVE is not None:
        return encode_raw_many_native(_NATIVE, items)
    return _encode_raw_many_py(items)


def encode_raw_many_native(native: NativeEncoder, items: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """``encode_raw_many`` by ``native``; a batch it does not handle whole (a value shape it
    does not know, an undecodable value) is encoded again by ``_encode_raw_many_py``, which
    raises the one error for an invalid value."""
    batch = items if isinstance(items, list | tuple) else list(items)
    lines = native(batch, SCHEMA_VERSION)
    return _encode_raw_many_py(batch) if lines is None else lines


def encode_index_entries(
    entries: Sequence[tuple[str, bytes]], *, time_start: int, time_end: int
) -> tuple[list[int], list[bytes]]:
    """``encode_raw_many`` of index entries ``(key, stored value)`` whose keys hold their
    recorded time in hex at ``[time_start:time_end]`` (1 to 16 digits; the collector's pages):
    the times, ``int(key[time_start:time_end], 16)``, and the lines. With the C encoder the
    times are parsed there too (in Python, the times and the pairs cost a third of what the C
    encoding does); anything it does not take goes the Python way, with the same result or
    error."""
    if _NATIVE_ENTRIES is not None:
        got = _NATIVE_ENTRIES(entries, time_start, time_end, SCHEMA_VERSION)
        if got is not None:
            return got
    times = [int(key[time_start:time_end], 16) for key, _ in entries]
    pairs = list(zip(times, [raw for _, raw in entries], strict=True))
    # Not through ``encode_raw_many``: this is a producer of lines of its own (the tests'
    # record-schema guard wraps each producer once).
    return times, _encode_raw_many_py(pairs) if _NATIVE is None else encode_raw_many_native(_NATIVE, pairs)


def _encode_raw_many_py(items: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """``encode_raw_many`` in Python: the reference the C encoder matches byte for byte, and
    the encoder where it is not built.

    The documents go through one ``orjson.dumps`` call, as one array with a raw newline
    between them (orjson's compact output of a document is the same inside an array as alone,
    and its per-call cost is several times its per-document cost), then are cut at the
    newlines."""
    unpackb = msgpack.unpackb
    second_format = _second_format
    # The second of the last time formatted, as [lo, lo + 1 s): empty before the first one.
    lo = hi = rlo = rhi = 0
    fmt = rfmt = ""
    docs: list[dict[str, object] | orjson.Fragment] = []
    append = docs.append
    line_break = _LINE_BREAK
    version = SCHEMA_VERSION
    raw = b""
    try:
        for time_us, raw in items:
            d = unpackb(raw, raw=False)
            t = d["t"] // 1000
            if t.__class__ is not int or time_us.__class__ is not int:
                raise TypeError(f"times must be integers: {t!r}, {time_us!r}")
            if not lo <= t < hi:
                sec = t // 1_000_000
                fmt = second_format(sec)
                lo = sec * 1_000_000
                hi = lo + 1_000_000
            if not rlo <= time_us < rhi:
                rsec = time_us // 1_000_000
                rfmt = second_format(rsec)
                rlo = rsec * 1_000_000
                rhi = rlo + 1_000_000
            mt = d.get("mt")
            doc: dict[str, object] = {
                "v": version,
                "id": event_id(d["src"], d["p"]),
                "time": fmt % (t - lo),
                "op": d["o"],
                "tenant": d.get("tn"),
                "bucket": d["b"],
                "key": d["k"] or None,
                "version_id": d.get("v"),
                "size": d.get("s"),
                "etag": d.get("e"),
                "mtime": None if mt is None else rfc3339_us(mt // 1000),
                "storage_class": d.get("sc"),
                "seq": d["q"],
                "baseline": bool(d.get("bl", False)),
                "recorded": rfmt % (time_us - rlo),
            }
            meta = d.get("m")
            if meta:
                doc["metadata"] = dict(sorted(meta.items()))
            if docs:
                append(line_break)
            append(doc)
        if not docs:
            return []
        raw = b""
        body = orjson.dumps(docs)
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException, orjson.JSONEncodeError) as ex:
        raise InvalidMutation(f"undecodable index entry ({len(raw)} bytes): {ex!r}") from ex
    lines = body[1:-1].split(_SEPARATOR)
    if len(lines) * 2 - 1 != len(docs):
        raise AssertionError(f"{len(docs)} documents came out as {len(lines)} lines")
    return [line + b"\n" for line in lines]


# --- names ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class LogName:
    """A parsed log object name. Orders like the names themselves: by cutoff, then seq (a
    stream's names, ``-p<nnn>`` after the seq, sort by cutoff first too)."""

    cutoff_us: int
    seq: int
    compression: Compression
    name: str
    # The collector stream (partition) that wrote it; None: the one unpartitioned collector.
    stream: int | None = None


def format_cutoff(cutoff_us: int) -> str:
    sec, us = divmod(cutoff_us, 1_000_000)
    return f"{time.strftime(_CUTOFF_FMT, time.gmtime(sec))}.{us:06d}Z"


def _join(prefix: str, rest: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{rest}" if prefix else rest


def hour_dir(prefix: str, t_us: int) -> str:
    """``<prefix>/YYYY/MM/DD/HH/`` of a time: the date partition of a log object."""
    return _join(prefix, time.strftime("%Y/%m/%d/%H/", time.gmtime(t_us // 1_000_000)))


def log_name(
    prefix: str, cutoff_us: int, seq: int, compression: Compression | str, *, stream: int | None = None
) -> str:
    """``<prefix>/YYYY/MM/DD/HH/<cutoff>-<seq:010d>.jsonl[.gz|.zst]``; a collector stream's
    (``[scale] partitioned``): ``<cutoff>-<seq:010d>-p<stream:03d>.jsonl[...]``, its seq its own."""
    if not 0 <= seq < 10**10:
        raise ValueError(f"log sequence out of range: {seq}")
    c = Compression.parse(compression)
    tail = "" if stream is None else f"-p{stream:03d}"
    if stream is not None and not 0 <= stream < 1000:
        raise ValueError(f"log stream out of range: {stream}")
    return f"{hour_dir(prefix, cutoff_us)}{format_cutoff(cutoff_us)}-{seq:010d}{tail}{c.extension}"


def parse_log_name(name: str) -> LogName | None:
    """The cutoff, seq and compression of a log object name; None for any other name (the
    watermark, foreign objects). The date directories must agree with the cutoff."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    try:
        sec = datetime.strptime(match["date"] + match["hms"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    if (match["y"], match["m"], match["d"], match["h"]) != (
        f"{sec.year:04d}",
        f"{sec.month:02d}",
        f"{sec.day:02d}",
        f"{sec.hour:02d}",
    ):
        return None
    cutoff_us = to_us(sec) + int(match["us"])
    stream = int(match["stream"]) if match["stream"] is not None else None
    return LogName(cutoff_us, int(match["seq"]), _BY_SUFFIX[match["ext"] or ""], name, stream)


def compression_of(name: str) -> Compression:
    """Compression of an object by its extension."""
    if name.endswith(".gz"):
        return Compression.GZIP
    if name.endswith(".zst"):
        return Compression.ZSTD
    return Compression.NONE


def start_after_time(prefix: str, t_us: int) -> str:
    """A listing start-after name such that exactly the log objects with cutoff > t_us follow
    it (all records of an object with cutoff <= t_us were recorded before t_us)."""
    # '-' (after the cutoff in real names) sorts below '.', so every name with this cutoff is
    # below the marker and every later cutoff above it.
    return f"{hour_dir(prefix, t_us)}{format_cutoff(t_us)}."


def watermark_name(prefix: str) -> str:
    return _join(prefix, WATERMARK_NAME)


def encode_watermark(
    *,
    complete_until_us: int,
    last_object: str | None,
    updated_us: int,
    readable_until_us: int | None = None,
    streams: int | None = None,
) -> bytes:
    """The watermark object. With collector streams (``streams``, their count) it also says
    ``readable_until_us``: every stream has committed every object whose cutoff is at or below
    it, and will only commit objects above it; readers list stream objects up to it only."""
    doc: dict[str, object] = {
        "complete_until": rfc3339_us(complete_until_us),
        "complete_until_us": complete_until_us,
        "last_object": last_object,
        "updated": rfc3339_us(updated_us),
    }
    if streams is not None:
        doc["streams"] = streams
        doc["readable_until_us"] = readable_until_us if readable_until_us is not None else 0
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


# --- compression ------------------------------------------------------------------------------


class _Codec(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


# Fixed gzip header: no name, mtime 0, no extra flags, OS 255 ("unknown") so that the bytes do
# not depend on the host (zlib's own gzip wrapper writes the build's OS code).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._header = True

    def compress(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._z.compress(data)
        if self._header:
            self._header = False
            return _GZIP_HEADER + out
        return out

    def flush(self) -> bytes:
        head = _GZIP_HEADER if self._header else b""
        self._header = False
        return head + self._z.flush() + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


class _Zstd:
    def __init__(self) -> None:
        cctx = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=False, write_dict_id=False, threads=0
        )
        self._z = cctx.compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


def _codec(compression: Compression) -> _Codec:
    match compression:
        case Compression.NONE:
            return _Identity()
        case Compression.GZIP:
            return _Gzip()
        case Compression.ZSTD:
            return _Zstd()
    raise AssertionError(compression)


class ObjectEncoder:
    """Turns a sequence of JSON lines into the bytes of one log object, streaming: the caller
    takes compressed output as it accumulates (``take``) and the rest at ``finish``.

    The output is a pure function of the sequence of lines: lines go to the compressor in
    blocks cut at the first line boundary past ``FEED_BYTES`` (so compressed output appears in
    steps of about that much input; uncompressed output at once)."""

    def __init__(self, compression: Compression | str) -> None:
        self.compression = Compression.parse(compression)
        self._codec = _codec(self.compression)
        self._lines: list[bytes] = []
        self._buffered = 0
        self._out = bytearray()
        self._finished = False
        self.entries = 0
        self.raw_bytes = 0  # uncompressed JSON bytes so far

    def add(self, line: bytes) -> None:
        if self._finished:
            raise ValueError("encoder already finished")
        self.entries += 1
        self.raw_bytes += len(line)
        if self.compression is Compression.NONE:
            self._out += line  # nothing to batch for: output is ready at once
            return
        self._lines.append(line)
        self._buffered += len(line)
        if self._buffered >= FEED_BYTES:
            self._feed()

    def add_many(self, lines: list[bytes]) -> None:
        """``add`` of each line, in order (the same output, line for line)."""
        if self._finished:
            raise ValueError("encoder already finished")
        if self.compression is Compression.NONE:
            data = b"".join(lines)
            self.entries += len(lines)
            self.raw_bytes += len(data)
            self._out += data
            return
        for line in lines:
            self.add(line)

    def _feed(self) -> None:
        if self._lines:
            self._out += self._codec.compress(b"".join(self._lines))
            self._lines.clear()
            self._buffered = 0

    @property
    def available(self) -> int:
        """Compressed bytes ready to be taken."""
        return len(self._out)

    def take(self, n: int) -> bytes:
        """The first ``n`` ready bytes (``n <= available``)."""
        if n > len(self._out):
            raise ValueError(f"only {len(self._out)} bytes ready, {n} asked")
        with memoryview(self._out) as view:
            chunk = bytes(view[:n])  # one copy (a slice would copy twice)
        del self._out[:n]
        return chunk

    def finish(self) -> bytes:
        """Flush the compressor; the remaining bytes of the object."""
        if not self._finished:
            self._feed()
            self._out += self._codec.flush()
            self._finished = True
        rest = bytes(self._out)
        self._out.clear()
        return rest


def encode_object(lines: Iterator[bytes] | list[bytes], compression: Compression | str) -> bytes:
    """All bytes of an object holding ``lines`` (small objects and tests)."""
    enc = ObjectEncoder(compression)
    out = bytearray()
    for line in lines:
        enc.add(line)
        out += enc.take(enc.available)
    out += enc.finish()
    return bytes(out)


def decompressed(stream: IO[bytes], compression: Compression | str) -> IO[bytes]:
    """A readable binary stream of the uncompressed content (streams; never reads it whole)."""
    match Compression.parse(compression):
        case Compression.NONE:
            return stream
        case Compression.GZIP:
            return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
        case Compression.ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
            return io.BufferedReader(reader, buffer_size=FEED_BYTES)
    raise AssertionError(compression)


def iter_lines(stream: IO[bytes], compression: Compression | str) -> Iterator[bytes]:
    """The JSON lines of an object's content, without their newline; a torn last line (no
    newline) is reported, not silently dropped."""
    body = decompressed(stream, compression)
    try:
        for line in body:
            if not line.endswith(b"\n"):
                raise PermanentError(f"change-log object ends with an incomplete line ({len(line)} bytes)")
            if line.strip():
                yield line[:-1]
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as ex:
        raise PermanentError(f"corrupt {Compression.parse(compression).value} change-log object: {ex}") from ex


def iter_records(stream: IO[bytes], compression: Compression | str) -> Iterator[LogRecord]:
    for line in iter_lines(stream, compression):
        yield LogRecord.from_json(line)
