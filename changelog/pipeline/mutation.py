"""The mutation record: one user-visible object mutation, as the write hook hands it to the index.

Frozen and self-describing. ``encode``/``decode`` give the compact msgpack form stored as the
omap value of an index entry; the JSON form consumers see is in ``logformat``.
"""

from __future__ import annotations

import enum
import re
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
    # A bucket (instance) appeared or went away: ``key`` is empty (null in the log).
    BUCKET_CREATE = "bucket_create"
    BUCKET_DELETE = "bucket_delete"

    @property
    def of_bucket(self) -> bool:
        return self in _BUCKET_OPS


# Op.of_bucket: a set of strings (an Op is one) is looked up in C; asked several times a record.
_BUCKET_OPS = frozenset({"bucket_create", "bucket_delete"})


# radosgw's tenant names: letters, digits and underscore (``rgw_user`` tenant rules).
MAX_TENANT_BYTES = 64
_TENANT_CHARS = re.compile(r"[A-Za-z0-9_]+")


def valid_tenant(name: str) -> bool:
    """A tenant name a record may hold (letters, digits and _, up to ``MAX_TENANT_BYTES``)."""
    return 0 < len(name) <= MAX_TENANT_BYTES and _TENANT_CHARS.fullmatch(name) is not None


# msgpack stores integers in at most 64 bits: larger ones cannot be encoded.
MAX_UINT64 = 2**64 - 1
# mtime_ns is a uint64 of nanoseconds: up to 2554-07-21, far past any real object's mtime.
MAX_MTIME_NS = MAX_UINT64


class InvalidField(InvalidMutation):
    """An ``InvalidMutation`` that names the field at fault. ``str()`` is the full message;
    ``field`` and ``why`` let a caller with its own context say ``line 4: mtime: ...``."""

    def __init__(self, field_name: str, why: str, *, label: str | None = None) -> None:
        super().__init__(f"{label or field_name} {why}")
        self.field = field_name
        self.why = why


def _printable_ascii(s: object, max_len: int) -> bool:
    """A stream name or position: 1..max_len printable ASCII chars (they go into omap keys)."""
    # 0x21..0x7E: ASCII, printable (0x20..0x7E), and no space; in C, not per character (this
    # runs twice for every record).
    return isinstance(s, str) and 0 < len(s) <= max_len and s.isascii() and s.isprintable() and " " not in s


def _utf8(field_name: str, s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as ex:
        raise InvalidField(field_name, f"is not valid unicode (lone surrogate at {ex.start})") from ex


def _kind(value: object) -> str:
    """How a wrong value is named in a message: its JSON-ish type and a short repr."""
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40] + '...' if len(shown) > 40 else shown}"


@dataclass(frozen=True, slots=True)
class Mutation:
    """One object mutation.

    ``tenant`` is the bucket's tenant ("" for none) and ``bucket`` its name within the tenant.
    ``key`` is "" for a bucket op (``Op.of_bucket``) and only then. The null version of an
    object is ``version_id`` None, in every op (never the string "null").
    ``size``, ``etag``, ``obj_mtime_ns`` (the object's mtime) and ``storage_class`` describe
    what a write wrote; null when not known (a write superseded before it could be read).

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
    tenant: str = ""
    obj_mtime_ns: int | None = None
    storage_class: str | None = None

    def __post_init__(self) -> None:
        if self.op.__class__ is not Op and not isinstance(self.op, Op):
            try:
                object.__setattr__(self, "op", Op(self.op))
            except ValueError as ex:
                raise InvalidField("op", f"must be one of {[o.value for o in Op]}, not {self.op!r}") from ex
        self._check_names()
        if type(self.mtime_ns) is not int or not 0 <= self.mtime_ns <= MAX_MTIME_NS:
            raise InvalidField(
                "mtime_ns",
                f"must be a non-negative int below 2**64 (before year 2554), not {self.mtime_ns!r}",
            )
        if not _printable_ascii(self.source, MAX_STREAM_BYTES):
            raise InvalidField(
                "source", f"must be 1..{MAX_STREAM_BYTES} printable ASCII chars: {self.source!r}"
            )
        if not _printable_ascii(self.position, MAX_POSITION_BYTES):
            raise InvalidField(
                "position", f"must be 1..{MAX_POSITION_BYTES} printable ASCII chars: {self.position!r}"
            )
        if not isinstance(self.seq, str):
            raise InvalidField("seq", f"must be a string, not {_kind(self.seq)}")
        if self.size is not None and (type(self.size) is not int or not 0 <= self.size <= MAX_UINT64):
            raise InvalidField("size", f"must be a non-negative int below 2**64, not {self.size!r}")
        if self.etag is not None and not isinstance(self.etag, str):
            raise InvalidField("etag", f"must be a string, not {_kind(self.etag)}")
        if self.obj_mtime_ns is not None and (
            type(self.obj_mtime_ns) is not int or not 0 <= self.obj_mtime_ns <= MAX_MTIME_NS
        ):
            raise InvalidField("mtime", f"must be a non-negative int below 2**64, not {self.obj_mtime_ns!r}")
        if self.storage_class is not None and (not isinstance(self.storage_class, str) or not self.storage_class):
            raise InvalidField("storage_class", f"must be a non-empty string or null, not {_kind(self.storage_class)}")
        self._check_metadata()
        if self.op.of_bucket and (
            self.size is not None or self.etag is not None or self.obj_mtime_ns is not None
            or self.storage_class is not None or self.metadata
        ):
            raise InvalidField("op", f"{self.op.value} describes a bucket: no size, etag, mtime, storage class or metadata")

    def _check_names(self) -> None:
        """bucket, key and version_id: strings that the S3 and radosgw naming rules allow."""
        if not isinstance(self.bucket, str):
            raise InvalidField("bucket", f"must be a string, not {_kind(self.bucket)}", label="bucket name")
        if not self.bucket:
            raise InvalidField("bucket", "is empty", label="bucket name")
        if len(_utf8("bucket", self.bucket)) > MAX_BUCKET_BYTES:
            raise InvalidField("bucket", f"longer than {MAX_BUCKET_BYTES} bytes", label="bucket name")
        if "\x00" in self.bucket or "/" in self.bucket:
            raise InvalidField("bucket", f"{self.bucket!r} contains NUL or '/'", label="bucket name")
        if not isinstance(self.tenant, str):
            raise InvalidField("tenant", f"must be a string, not {_kind(self.tenant)}")
        if self.tenant and not valid_tenant(self.tenant):
            raise InvalidField("tenant", f"{self.tenant!r} is not a tenant name (letters, digits and _)")
        if not isinstance(self.key, str):
            raise InvalidField("key", f"must be a string, not {_kind(self.key)}", label="object key")
        if self.op.of_bucket:
            if self.key:
                raise InvalidField("key", f"must be empty for {self.op.value} (got {self.key[:80]!r})", label="object key")
            if self.version_id is not None:
                raise InvalidField("version_id", f"must be null for {self.op.value}")
            return
        if not self.key:
            raise InvalidField("key", "is empty", label="object key")
        if len(_utf8("key", self.key)) > MAX_KEY_BYTES:
            raise InvalidField("key", f"longer than {MAX_KEY_BYTES} bytes", label="object key")
        if self.version_id is not None:
            if not isinstance(self.version_id, str):
                raise InvalidField("version_id", f"must be a string or null, not {_kind(self.version_id)}")
            if self.version_id in ("null", ""):
                # One spelling of the null version: radosgw and S3 say "null" in some places
                # and nothing ("", the bucket index's instance) in others; a record always
                # says null (None).
                object.__setattr__(self, "version_id", None)
                return
            _utf8("version_id", self.version_id)

    def _check_metadata(self) -> None:
        if self.metadata.__class__ is dict and not self.metadata:
            return  # the common case, without the ABC check
        if not isinstance(self.metadata, Mapping):
            raise InvalidField("metadata", f"must be an object of strings, not {_kind(self.metadata)}")
        for k, v in self.metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidField("metadata", f"keys and values must be strings, not {k!r}: {_kind(v)}")
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
        if self.tenant:
            doc["tn"] = self.tenant
        if self.obj_mtime_ns is not None:
            doc["mt"] = self.obj_mtime_ns
        if self.storage_class is not None:
            doc["sc"] = self.storage_class
        data: bytes = pack(doc)
        if len(data) > MAX_ENCODED_BYTES:
            raise InvalidField(
                "metadata",
                f"too large: the record encodes to {len(data)} bytes (limit {MAX_ENCODED_BYTES})",
                label=f"record for {self.bucket}/{self.key[:80]!r}: metadata",
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
                tenant=doc.get("tn", ""),
                obj_mtime_ns=doc.get("mt"),
                storage_class=doc.get("sc"),
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
