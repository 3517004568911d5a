"""The mutation record: one user-visible object mutation, as the write hook hands it to the index.

Frozen and self-describing. ``encode``/``decode`` give the compact msgpack form stored as the
omap value of an index entry; the JSON form consumers see is in ``logformat``.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgpack

from changelog.errors import InvalidMutation
from changelog.pipeline import keys

# S3 caps a key at 1024 bytes; radosgw accepts the same. Anything larger is not a real key.
MAX_KEY_BYTES = 1024
# Bucket names: S3 allows 63, radosgw's relaxed names allow up to 255.
MAX_BUCKET_BYTES = 255
# An index entry is one omap value; keep it well below what makes an OSD op slow.
MAX_ENCODED_BYTES = 512 * 1024
# Stream names and positions are stored inside omap keys: printable ASCII only, bounded.
MAX_STREAM_BYTES = 200
MAX_POSITION_BYTES = 100


class Op(enum.StrEnum):
    WRITE = "write"
    DELETE = "delete"
    DELETE_MARKER = "delete_marker"


def _printable_ascii(s: str) -> bool:
    return all(0x21 <= ord(c) <= 0x7E for c in s)


def _utf8(field_name: str, s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as ex:
        raise InvalidMutation(f"{field_name} is not valid unicode (lone surrogate at {ex.start})") from ex


@dataclass(frozen=True, slots=True)
class Mutation:
    """One object mutation.

    ``source`` names the stream the event came from (e.g. one bucket-index-log shard) and
    ``position`` its place in that stream; string order of positions is stream order. Together
    they are the event's stable identity: recording the same (source, position) twice yields
    one index entry. ``seq`` orders the records of one bucket/key: for two of them, string
    order of ``seq`` is mutation order.
    """

    bucket: str
    key: str
    op: Op
    mtime_ns: int
    source: str
    position: str
    seq: str
    version_id: str | None = None
    size: int | None = None
    etag: str | None = None
    baseline: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.op, Op):
            try:
                object.__setattr__(self, "op", Op(self.op))
            except ValueError as ex:
                raise InvalidMutation(f"op must be one of {[o.value for o in Op]}, not {self.op!r}") from ex
        if not isinstance(self.bucket, str) or not self.bucket:
            raise InvalidMutation("bucket name is empty")
        if len(_utf8("bucket", self.bucket)) > MAX_BUCKET_BYTES:
            raise InvalidMutation(f"bucket name longer than {MAX_BUCKET_BYTES} bytes")
        if "\x00" in self.bucket or "/" in self.bucket:
            raise InvalidMutation(f"bucket name {self.bucket!r} contains NUL or '/'")
        if not isinstance(self.key, str) or not self.key:
            raise InvalidMutation("object key is empty")
        if len(_utf8("key", self.key)) > MAX_KEY_BYTES:
            raise InvalidMutation(f"object key longer than {MAX_KEY_BYTES} bytes")
        if self.version_id is not None:
            _utf8("version_id", self.version_id)
        if not isinstance(self.mtime_ns, int) or self.mtime_ns < 0:
            raise InvalidMutation(f"mtime_ns must be a non-negative int, not {self.mtime_ns!r}")
        if not self.source or len(self.source) > MAX_STREAM_BYTES or not _printable_ascii(self.source):
            raise InvalidMutation(f"source must be 1..{MAX_STREAM_BYTES} printable ASCII chars: {self.source!r}")
        if not self.position or len(self.position) > MAX_POSITION_BYTES or not _printable_ascii(self.position):
            raise InvalidMutation(
                f"position must be 1..{MAX_POSITION_BYTES} printable ASCII chars: {self.position!r}"
            )
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise InvalidMutation(f"size must be a non-negative int, not {self.size!r}")
        for k, v in self.metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidMutation("metadata keys and values must be strings")
            _utf8("metadata", k)
            _utf8("metadata", v)

    @property
    def event_id(self) -> str:
        """Stable identity of the source event: 32 hex chars, the same on every retry."""
        return event_id(self.source, self.position)

    def encode(self) -> bytes:
        return self.encode_with(packer().pack)

    def encode_with(self, pack: Callable[[object], bytes]) -> bytes:
        """``encode`` with the caller's ``msgpack.Packer().pack`` (the record loop fetches its
        packer once per batch). The field order is fixed, so the bytes are too."""
        doc: dict[str, object] = {
            "b": self.bucket,
            "k": self.key,
            "o": self.op._value_,
            "t": self.mtime_ns,
            "src": self.source,
            "p": self.position,
            "q": self.seq,
        }
        if self.version_id is not None:
            doc["v"] = self.version_id
        if self.size is not None:
            doc["s"] = self.size
        if self.etag is not None:
            doc["e"] = self.etag
        if self.baseline:
            doc["bl"] = True
        if self.metadata:
            doc["m"] = dict(self.metadata)
        data: bytes = pack(doc)
        if len(data) > MAX_ENCODED_BYTES:
            raise InvalidMutation(
                f"record for {self.bucket}/{self.key[:80]!r} encodes to {len(data)} bytes "
                f"(limit {MAX_ENCODED_BYTES}); metadata too large"
            )
        return data

    @classmethod
    def decode(cls, data: bytes) -> Mutation:
        try:
            doc = msgpack.unpackb(data, raw=False)
            return cls(
                bucket=doc["b"],
                key=doc["k"],
                op=Op(doc["o"]),
                mtime_ns=doc["t"],
                source=doc["src"],
                position=doc["p"],
                seq=doc["q"],
                version_id=doc.get("v"),
                size=doc.get("s"),
                etag=doc.get("e"),
                baseline=bool(doc.get("bl", False)),
                metadata=doc.get("m") or {},
            )
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as ex:
            raise InvalidMutation(f"undecodable index entry ({len(data)} bytes): {ex}") from ex


_local = threading.local()


def packer() -> msgpack.Packer:
    """This thread's reusable packer (``Packer.pack`` is not re-entrant across threads; packb
    builds a Packer per call, and reusing one halves the encode cost on the record path)."""
    p: msgpack.Packer | None = getattr(_local, "packer", None)
    if p is None:
        p = _local.packer = msgpack.Packer(use_bin_type=True)
    return p


def event_id(source: str, position: str) -> str:
    h = keys.EVENT_HASHER.copy()
    h.update(f"{source}\n{position}".encode())
    return h.hexdigest()
