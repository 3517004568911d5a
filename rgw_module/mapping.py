"""Bucket-index-log entries to mutations: pure functions, no I/O.

One user-visible mutation must become exactly one record (H7). What radosgw 16.2.15 writes to a
bucket-index shard's log for each S3 operation, as captured on the lab (``rgw_module/README.md`` has the
full table; ``tests/unit/rgw_bilog_*.json`` hold captured entries):

=================================  ==================================================  ==========
S3 operation                        bilog entries (op, instance, versioned flag)        record
=================================  ==================================================  ==========
PUT / COPY / multipart complete     ``write`` ("", false)                               WRITE
tagging, ACL, copy onto itself      ``write`` ("", false)                               WRITE
DELETE (unversioned)                ``del`` ("", false)                                 DELETE
DELETE of a missing key             nothing                                             -
multipart upload internals          ``write``/``del`` of ``_multipart_<key>.<id>.*``    -
versioned PUT / COPY / multipart    ``write`` (v, true) + ``link_olh`` (v)              WRITE v
tagging / ACL of a version          ``write`` (v, false)                                WRITE v
DeleteObjectTagging, no VersionId,  ``write`` ("", false)                               -
versioned bucket, current not null
versioned DELETE                    ``link_olh_del`` (marker id)                        DELETE_MARKER
DELETE ?versionId=v                 ``unlink_instance`` (v) + ``del`` (v, true)         DELETE v
DELETE ?versionId=<marker>          ``unlink_instance`` (marker id)                     DELETE marker
PUT, versioning suspended           ``write`` ("", true) + ``link_olh`` ("")            WRITE None
PUT of a new key, suspended         ``write`` ("", false)                               WRITE None
DELETE, versioning suspended        ``link_olh_del`` ("") + ``del`` ("", true)          DELETE_MARKER None
DELETE ?versionId=null              ``unlink_instance`` ("null") + ...                  DELETE None
=================================  ==================================================  ==========

(None is the null version, in every op: radosgw's "" and "null" instances both map to it, and
``Mutation`` normalises a "null" given by any other path.) The DeleteObjectTagging row is an
entry of no mutation: radosgw applies the request to the key's OLH object, not to the current
version (which keeps its tags), and writes a null-instance index entry the bucket has no version
for. Its log entry is that of a real tag change of the null version; only the bucket index tells
them apart (``rgw_module.bucket_index``: ``NO_WRITE``). So: ``link_olh`` / ``link_olh_del`` / ``unlink_instance`` carry the versioned operations, and a
``write`` or ``del`` flagged ``versioned`` is their companion and is dropped. Entries whose
state is not ``complete`` and ops that are not object mutations (``cancel``, ``syncstop``,
``resync``) are dropped too.

Object names in the log are bucket-index names: a name that starts with ``_`` is escaped as
``__name``, and ``_<ns>_<name>`` is an entry of an internal namespace (multipart parts and
upload metadata). ``index_name_to_key`` undoes that.

Bucket names: a tenant's bucket is ``tenant/bucket`` here (``qualified_name``), as radosgw's admin
API and data log name it; a record carries ``tenant`` and the bare ``bucket``. Each bucket
lifetime also gets a ``bucket_create`` and, once gone, a ``bucket_delete`` record
(``bucket_mutation``).

Entry times: ``timestamp`` is the object's mtime (H6). For writes and delete markers that is the
time of the mutation; a ``del`` or ``unlink_instance`` carries the *deleted* version's mtime, so
deletes are stamped with the time the follower read them (an upper bound).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypedDict

from changelog.errors import PermanentError
from changelog.native import speedup
from changelog.pipeline.logformat import rfc3339_us
from changelog.pipeline.mutation import MAX_MTIME_NS, MAX_STREAM_BYTES, Mutation, Op

# Width of the per-bucket generation in ``seq``: string order must stay numeric order.
GENERATION_WIDTH = 6
# Within one generation, full-sync (baseline) records sort before incremental ones.
BASELINE_TAG = "0"
INCREMENTAL_TAG = "1"
_COUNTER_MAX = 10**12 - 1


class BadEntry(PermanentError):
    """A bucket-index-log entry this code cannot place in stream order."""


class BilogEntry(TypedDict, total=False):
    """One bucket-index-log entry as radosgw's admin API lists it: the fields read here (the
    others, such as ``zones_trace``, are left alone). Captured entries are in
    ``tests/unit/rgw_bilog_*.json``."""

    op_id: str  # "<shard>#<index_ver>.<object version>.<subop>"
    op: str  # write, del, link_olh, link_olh_del, unlink_instance, cancel, ...
    object: str  # the bucket-index name
    instance: str  # the version id ("" when none)
    state: str  # "complete" or "pending"
    timestamp: str
    versioned: bool | str  # Reef and later
    bilog_flags: int | str  # Pacific: bit 0 is BILOG_FLAG_VERSIONED_OP
    owner: str  # a delete marker's maker ("" on other entries)
    ver: dict[str, int]  # {"pool", "epoch"}: on link_olh / link_olh_del the OLH epoch


@dataclass(frozen=True, slots=True, order=True)
class BucketShard:
    """One bucket-index shard of one bucket instance, in one bucket-index-log *generation*: one
    log stream. ``shard`` is -1 for an unsharded bucket.

    Reef and later reshard a bucket in place: the instance id stays, the shard count changes and
    a new log generation starts empty beside the old one, which radosgw keeps (with
    ``log_data``) until it is trimmed. Pacific has generation 0 only (a reshard makes a new
    instance id instead). Generation 0 keeps the names it always had, so state written before
    generations existed stays valid."""

    bucket: str  # qualified: ``tenant/bucket`` for a tenant's bucket (``qualified_name``)
    bucket_id: str
    shard: int
    log_gen: int = 0

    @property
    def key(self) -> str:
        """As in the data log, ``<bucket>:<bucket_id>:<shard>``, plus ``@<generation>`` after 0."""
        base = f"{self.bucket}:{self.bucket_id}" + (f":{self.shard}" if self.shard >= 0 else "")
        return f"{base}@{self.log_gen}" if self.log_gen else base

    @property
    def instance(self) -> str:
        """The admin API's ``bucket-instance`` parameter (the generation travels apart)."""
        return f"{self.bucket}:{self.bucket_id}" + (f":{self.shard}" if self.shard >= 0 else "")

    @property
    def source(self) -> str:
        """The mutation stream name: ``rgw:<bucket>:<bucket_id>:<shard>[@<generation>]``. Each
        generation is its own stream: its positions start again from 1."""
        gen = f"@{self.log_gen}" if self.log_gen else ""
        return _stream_name("rgw", self.bucket, f"{self.bucket_id}:{self.shard}{gen}")

    @classmethod
    def parse(cls, key: str) -> BucketShard | None:
        head, at, gen_text = key.rpartition("@")
        gen = 0
        if at and gen_text.isdigit():
            key, gen = head, int(gen_text)
        parts = key.split(":")
        if len(parts) == 3 and parts[2].lstrip("-").isdigit():
            return cls(parts[0], parts[1], int(parts[2]), gen)
        if len(parts) == 2:
            return cls(parts[0], parts[1], -1, gen)
        return None


def qualified_name(tenant: str, bucket: str) -> str:
    """The follower's name of a bucket: ``tenant/bucket`` for a tenant's bucket, as radosgw's admin
    API and data log spell it (unique across tenants), the bare name for a bucket of no tenant."""
    return f"{tenant}/{bucket}" if tenant else bucket


def split_name(qualified: str) -> tuple[str, str]:
    """(tenant, bucket) of a qualified name (``qualified_name``): ("", name) without a tenant."""
    tenant, slash, bucket = qualified.partition("/")
    return (tenant, bucket) if slash else ("", qualified)


def s3_bucket_name(qualified: str) -> str:
    """The bucket's name in an S3 request: ``tenant:bucket`` for a tenant's bucket (radosgw reads
    the tenant before the colon; a ``/`` would be a path separator)."""
    tenant, bucket = split_name(qualified)
    return f"{tenant}:{bucket}" if tenant else bucket


def _stream_name(kind: str, bucket: str, rest: str) -> str:
    name = f"{kind}:{bucket}:{rest}"
    # Printable ASCII without the space (0x21..0x7E), checked in C: a per-character loop cost
    # more than the rest of a bilog entry's mapping.
    if len(name) <= MAX_STREAM_BYTES and name.isascii() and name.isprintable() and " " not in name:
        return name
    # Relaxed bucket names can be long (255) or odd: a stable hash keeps the stream name short.
    digest = hashlib.blake2b(bucket.encode(), digest_size=12).hexdigest()
    return f"{kind}:#{digest}:{rest}"[:MAX_STREAM_BYTES]


@functools.lru_cache(maxsize=65536)
def str_hash_linux(text: str) -> int:
    """Ceph's ``ceph_str_hash_linux`` (src/common/ceph_hash.cc: the Linux dcache hash) of
    ``text``'s UTF-8 bytes, unsigned 32 bits."""
    h = 0
    for c in text.encode():
        h = ((h + (c << 4) + (c >> 4)) * 11) & 0xFFFFFFFF
    return h


def datalog_shard(bucket: str, shard: int, datalog_shards: int) -> int:
    """The data-log shard radosgw logs a bucket-index shard to (``RGWDataChangesLog::choose_oid``:
    hash of the bucket name plus the index shard number). Checked on the lab: ``cap5`` shards
    0, 2, 6, 8, 9 were logged to data-log shards 24, 26, 30, 32, 33. ``bucket`` is qualified;
    the hash is of the name within the tenant (``t1/tb1`` shards 3 and 5: data-log shards 111 and
    113 of 128, as for ``tb1``)."""
    # The sum is an unsigned 32-bit int in radosgw: it wraps before the remainder.
    return ((str_hash_linux(split_name(bucket)[1]) + max(shard, 0)) & 0xFFFFFFFF) % datalog_shards


def full_sync_source(bucket: str, bucket_id: str, generation: int) -> str:
    return _stream_name("rgw-full", bucket, f"{bucket_id}:{generation}")


def bucket_op_source(bucket: str, marker: str) -> str:
    """The stream of one bucket's ``bucket_create`` and ``bucket_delete``: the qualified name and
    the bucket's *marker* (its first instance id: a reshard keeps it, deleting and creating the
    bucket again makes a new one), so each bucket lifetime has its own stream."""
    return _stream_name("rgw-bucket", bucket, marker)


# Positions in a bucket-op stream: the create sorts before the delete (the index drops a
# (source, position) it has seen, so a replay after a crash records each once).
BUCKET_CREATE_POSITION = "0"
BUCKET_DELETE_POSITION = "1"
# The ``seq`` tags of bucket ops within a generation: the create sorts before the baseline and
# incremental records ("000001.0" < "000001.0.<...>" < "000001.1.<...>"), the delete after them.
BUCKET_DELETE_TAG = "2"


def bucket_mutation(
    op: Op, *, bucket: str, marker: str, generation: int, time_ns: int, baseline: bool = False
) -> Mutation:
    """A ``bucket_create`` or ``bucket_delete`` record of the qualified ``bucket`` (lifetime
    ``marker``): key "", no version; its ``seq`` is that of ``generation``'s first record (create)
    or sorts after its last one (delete)."""
    if not op.of_bucket:
        raise ValueError(f"not a bucket op: {op}")
    tenant, name = split_name(bucket)
    create = op is Op.BUCKET_CREATE
    tag = BASELINE_TAG if create else BUCKET_DELETE_TAG
    return Mutation(
        bucket=name,
        tenant=tenant,
        key="",
        op=op,
        mtime_ns=max(time_ns, 0),
        source=bucket_op_source(bucket, marker),
        position=BUCKET_CREATE_POSITION if create else BUCKET_DELETE_POSITION,
        seq=f"{generation:0{GENERATION_WIDTH}d}.{tag}",
        baseline=baseline,
    )


# Every bilog time radosgw writes (Pacific, Reef, Tentacle: tests/unit/rgw_bilog_captured*.json)
# is "YYYY-MM-DDTHH:MM:SS.<9 digits>Z", or "0.000000" for a time never set.
_SECONDS_LEN = 19
_SECONDS_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


def parse_time_ns(text: str) -> int:
    """radosgw's RFC 3339 times (``2026-11-21T22:24:22.997149240Z``, any fraction width) in ns.

    The common shape is read here: its whole seconds once per distinct second (``_epoch_seconds``),
    its fraction as digits. Anything else goes to ``_parse_time_ns_any``, whose result this one
    equals on the common shape (tests/unit/test_mapping_speed.py)."""
    seconds = _epoch_seconds(text[:_SECONDS_LEN])
    if seconds is not None:
        rest = text[_SECONDS_LEN:]
        if not rest or rest == "Z":
            return seconds * 1_000_000_000
        frac = rest[1:-1] if rest[-1] == "Z" else rest[1:]
        if rest[0] == "." and frac.isdigit():
            return seconds * 1_000_000_000 + int(frac[:9].ljust(9, "0"))
    return _parse_time_ns_any(text)


# A follower's pages come in time order, so a few thousand seconds hold its working set.
@functools.lru_cache(maxsize=4096)
def _epoch_seconds(base: str) -> int | None:
    """Epoch seconds of "YYYY-MM-DDTHH:MM:SS" (UTC), None for any other text or an invalid date."""
    if _SECONDS_SHAPE.fullmatch(base) is None:
        return None
    try:
        dt = datetime(
            int(base[0:4]),
            int(base[5:7]),
            int(base[8:10]),
            int(base[11:13]),
            int(base[14:16]),
            int(base[17:19]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return int(dt.timestamp())


def _parse_time_ns_any(text: str) -> int:
    """``parse_time_ns`` of any text: surrounding spaces, offsets, odd fractions, "0.000000"."""
    text = text.strip()
    if not text:
        return 0
    base, _, frac = text.rstrip("Z").partition(".")
    try:
        dt = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return 0  # radosgw prints "0.000000" for a time never set
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
    digits = "".join(c for c in frac if c.isdigit())[:9].ljust(9, "0")
    return int(dt.timestamp()) * 1_000_000_000 + int(digits)


def bilog_marker(op_id: str) -> str:
    """The entry's marker without the ``<shard>#`` prefix: what to resume or trim from."""
    return op_id.partition("#")[2] if "#" in op_id else op_id


# ``position_of``'s fast path: [<shard>#]<ver>.<ver>.<subop> in ASCII digits no wider than the
# padded fields (wider ones, and other digits ``int()`` reads, take the general path).
_ASCII_POSITION = re.compile(r"(?:[^#]*#)?([0-9]{1,20})\.([0-9]{1,20})\.([0-9]{1,10})")


def position_of(op_id: str) -> str:
    """A fixed-width position whose string order is the shard log's order.

    radosgw names entries ``<index_ver:011>.<object version>.<subop>`` (``cls_rgw``'s
    ``get_index_ver_key``): only the first field is padded, so every field is padded here.
    """
    m = _ASCII_POSITION.fullmatch(op_id)
    if m is not None:  # the common shape, without int(): zfill pads as the format below does
        return f"{m[1].zfill(20)}.{m[2].zfill(20)}.{m[3].zfill(10)}"
    parts = bilog_marker(op_id).split(".")
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit()):
        raise BadEntry(f"bucket index log entry id {op_id!r} is not <ver>.<ver>.<subop>")
    return f"{int(parts[0]):020d}.{int(parts[1]):020d}.{int(parts[2]):010d}"


def index_name_to_key(name: str) -> str | None:
    """The S3 key of a bucket-index name, or None for an internal-namespace entry."""
    if not name:
        return None
    if name.startswith("__"):
        return name[1:]
    if name.startswith("_"):
        return None  # "_multipart_<key>.<upload>.meta", parts, shadow objects...
    return name


MULTIPART_PREFIX = "_multipart_"
MULTIPART_META_SUFFIX = ".meta"


def multipart_meta(name: str) -> tuple[str, str] | None:
    """(key, upload id) of a bucket-index name that is a multipart upload's meta object,
    ``_multipart_<key>.<upload id>.meta`` (RGWMPObj: the upload id, ``2~<random>``, has no
    dot); None for any other name. radosgw writes that entry when the upload is initiated and
    removes it when the upload is completed or aborted, both logged in the bucket index log."""
    if not (name.startswith(MULTIPART_PREFIX) and name.endswith(MULTIPART_META_SUFFIX)):
        return None
    key, dot, upload_id = name[len(MULTIPART_PREFIX) : -len(MULTIPART_META_SUFFIX)].rpartition(".")
    if not dot or not key or not upload_id:
        return None
    return key, upload_id


def is_versioned_op(entry: BilogEntry) -> bool:
    """Whether the entry is flagged as part of a versioned operation: ``versioned`` (Reef and
    later) or bit 0 of ``bilog_flags`` (Pacific: BILOG_FLAG_VERSIONED_OP); False when neither
    can be read."""
    v = entry.get("versioned")
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return v.lower() == "true"
    try:
        return bool(int(entry.get("bilog_flags", 0) or 0) & 1)
    except (TypeError, ValueError):
        return False


class Change(NamedTuple):
    """What one bilog entry means for the user: an op on a key (and version). (A named tuple:
    one is made per entry the follower reads.)"""

    key: str
    op: Op
    version_id: str | None
    # The mutation time if the entry carries it, None for deletes (their timestamp is the
    # deleted version's mtime).
    mtime_ns: int | None


def interpret(entry: BilogEntry) -> Change | None:
    """The user-visible mutation an entry stands for, or None for entries that are internal or
    the companion of another entry of the same mutation (table in the module docstring)."""
    if entry.get("state", "complete") != "complete":
        return None
    key = index_name_to_key(str(entry.get("object", "")))
    if key is None:
        return None
    op = entry.get("op")
    instance = str(entry.get("instance") or "")
    versioned = is_versioned_op(entry)
    # A time never set ("0.000000": Reef's DeleteObjectTagging) is no time: the record is
    # stamped when seen, as a delete is, not with 1970.
    ts = parse_time_ns(str(entry.get("timestamp", ""))) or None
    if op == "write":
        if versioned:
            return None  # the link_olh that follows is the record
        return Change(key, Op.WRITE, instance or None, ts)
    if op == "del":
        if versioned:
            return None  # unlink_instance / link_olh_del is the record
        return Change(key, Op.DELETE, instance or None, None)
    if op == "link_olh":
        return Change(key, Op.WRITE, instance or None, ts)
    if op == "link_olh_del":
        return Change(key, Op.DELETE_MARKER, instance or None, ts)
    if op == "unlink_instance":
        return Change(key, Op.DELETE, instance or None, None)
    return None  # cancel, syncstop, resync, unknown


def incremental_seq(generation: int, position: str) -> str:
    return f"{generation:0{GENERATION_WIDTH}d}.{INCREMENTAL_TAG}.{position}"


def baseline_seq(generation: int, mtime_ns: int, counter: int) -> str:
    """Baseline records of one object sort by mtime (oldest version first), then by listing
    order reversed: a versioned listing gives the newest version of a key first."""
    return f"{generation:0{GENERATION_WIDTH}d}.{BASELINE_TAG}.{mtime_ns // 1000:017d}.{_COUNTER_MAX - counter:012d}"


def map_entry(
    entry: BilogEntry,
    bs: BucketShard,
    *,
    generation: int,
    observed_ns: int,
) -> Mutation | None:
    """The mutation record of one bilog entry of shard ``bs``, or None (see ``interpret``). For
    a page of entries, ``ShardMapper`` does the same with the shard's constants computed once."""
    return ShardMapper(bs, generation).map(entry, observed_ns=observed_ns)


class Facts(Protocol):
    """What a write wrote, as ``rgw_module.bucket_index.ObjectFacts`` says (None: the default
    storage class). A ``size`` of ``NO_WRITE_SIZE`` says the entry changed no object: no record."""

    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def storage_class(self) -> str | None: ...
    @property
    def owner(self) -> str: ...


# ``Facts.size`` of a ``write`` entry that the bucket index shows changed no object version
# (``rgw_module.bucket_index.NO_WRITE``: DeleteObjectTagging without a VersionId on a versioned
# bucket): the entry stands for no record. Not a size, so the C mapper hands it back to ``map``.
NO_WRITE_SIZE = -1

# The ``metadata`` key of the writer's identity (``[source] record_writer``).
WRITER = "writer"
# The ``metadata`` key of a plain delete's deleted object's mtime (the ``del`` entry's
# ``timestamp``; the record's ``time`` is when the follower saw the delete), with the writer.
DELETED_MTIME = "deleted_mtime"
# The ``metadata`` key of a version's or delete marker's OLH epoch (its place in the key's stack of
# versions: radosgw orders them by it, newest first), with the writer: the ``link_olh`` or
# ``link_olh_del`` entry's ``ver.epoch``. Two-way replication of versioned buckets places the
# peer's replica at the same epoch.
OLH_EPOCH = "olh_epoch"


class ShardMapper:
    """``map_entry`` for the entries of one shard and generation: the tenant, bucket name,
    stream name and ``seq`` prefix they share are computed once, not per entry.

    They are computed at the first mapped entry, at the step where ``map_entry`` computes them,
    and kept only once computed: every entry fails (or not) at the same step and with the same
    error as it does in ``map_entry``.

    ``writer``: records carry who wrote them (``metadata.writer``, ``[source] record_writer``):
    a write found in the index its entry's owner, a delete marker its bilog entry's ``owner``."""

    __slots__ = ("bs", "generation", "writer", "_shared")

    def __init__(self, bs: BucketShard, generation: int, *, writer: bool = False) -> None:
        self.bs = bs
        self.generation = generation
        self.writer = writer
        self._shared: tuple[str, str, str, str] | None = None

    def _constants(self) -> tuple[str, str, str, str]:
        """(tenant, bucket name, source, seq prefix): what every record of the shard shares."""
        shared = self._shared
        if shared is None:
            tenant, name = split_name(self.bs.bucket)
            source = self.bs.source
            prefix = incremental_seq(self.generation, "")
            shared = self._shared = (tenant, name, source, prefix)
        return shared

    def map(
        self, entry: BilogEntry, *, observed_ns: int, facts: Mapping[str, Facts] | None = None
    ) -> Mutation | None:
        """The mutation record of one bilog entry of the shard, or None (see ``interpret``).
        ``facts``: what the page's writes wrote, by position (from the bucket index); a write
        found there carries them (radosgw stores no class for the default one: STANDARD), and
        one the index shows changed nothing (``NO_WRITE_SIZE``) makes no record."""
        change = interpret(entry)
        if change is None:
            return None
        position = position_of(str(entry.get("op_id", "")))
        mtime = change.mtime_ns if change.mtime_ns is not None else max(observed_ns, 0)
        tenant, name, source, seq_prefix = self._constants()
        fact = facts.get(position) if facts and change.op is Op.WRITE else None
        if fact is not None and fact.size == NO_WRITE_SIZE:
            return None  # no object changed (``NO_WRITE_SIZE``)
        if fact is None:
            meta: dict[str, str] = {}
            if self.writer and change.op is Op.DELETE_MARKER:
                owner = entry.get("owner")
                if isinstance(owner, str) and owner:
                    meta = {WRITER: owner}
            elif self.writer and change.op is Op.DELETE and entry.get("op") == "del":
                deleted = _parse_time_ns_any(str(entry.get("timestamp", "")))
                if deleted > 0:
                    meta = {DELETED_MTIME: rfc3339_us(deleted // 1000)}
            if self.writer:
                _olh_epoch(entry, meta)
            return Mutation(
                bucket=name,
                tenant=tenant,
                key=change.key,
                op=change.op,
                mtime_ns=mtime,
                source=source,
                position=position,
                seq=seq_prefix + position,
                version_id=change.version_id,
                metadata=meta,
            )
        return Mutation(
            bucket=name,
            tenant=tenant,
            key=change.key,
            op=change.op,
            mtime_ns=mtime,
            source=source,
            position=position,
            seq=seq_prefix + position,
            version_id=change.version_id,
            size=fact.size,
            etag=fact.etag,
            obj_mtime_ns=fact.mtime_ns,
            storage_class=fact.storage_class or "STANDARD",
            metadata=_olh_epoch(entry, {WRITER: fact.owner} if fact.owner else {}) if self.writer else {},
        )

    def map_page(
        self, page: list[BilogEntry], *, observed_ns: int, facts: Mapping[str, Facts] | None = None
    ) -> list[Mutation | None]:
        """``[self.map(e, observed_ns=..., facts=...) for e in page]``, the same records and the
        same first error, with most of the page mapped in C (``_speedups.map_bilog_page``) where
        it is built: entry by entry in Python until a first record is made (its checks prove the
        shard's names valid: that record's bucket, tenant and stream are every record's), then the
        rest in one C call, which hands back to ``map`` every entry whose shape or values it does
        not take as plain, a fact of ``NO_WRITE_SIZE`` among them (tests/unit/test_catchup_cpu.py
        compares both ways)."""
        native = _NATIVE_MAP
        if (
            native is None
            or self.writer
            or not 0 <= observed_ns <= MAX_MTIME_NS
            or (facts and facts.__class__ is not dict)
        ):
            return [self.map(e, observed_ns=observed_ns, facts=facts) for e in page]
        out: list[Mutation | None] = []
        i, n = 0, len(page)
        while i < n:
            m = self.map(page[i], observed_ns=observed_ns, facts=facts)
            out.append(m)
            i += 1
            if m is not None:
                break
        if i >= n or self._shared is None:
            return out
        rest = native(page, i, facts or None, observed_ns, self._shared, _MAP_OPS, Mutation)
        if rest is None:  # arguments only Python handles
            rest = [...] * (n - i)
        for j, got in enumerate(rest, i):
            out.append(self.map(page[j], observed_ns=observed_ns, facts=facts) if got is ... else got)
        return out


# ``ShardMapper.map_page`` in C (changelog/_speedups.c), or None where the module is not built or
# RGW_CHANGELOG_PURE_PYTHON=1 asks for Python.
def _native_map() -> Any:
    return speedup("map_bilog_page")


_NATIVE_MAP = _native_map()
_MAP_OPS = (Op.WRITE, Op.DELETE, Op.DELETE_MARKER)


def _olh_epoch(entry: BilogEntry, meta: dict[str, str]) -> dict[str, str]:
    """``meta`` with the OLH epoch of a versioned write's or delete marker's entry (``link_olh``,
    ``link_olh_del``: their ``ver.epoch``), when it has one."""
    if entry.get("op") in ("link_olh", "link_olh_del"):
        ver = entry.get("ver")
        epoch = ver.get("epoch") if isinstance(ver, dict) else None
        if isinstance(epoch, int) and epoch > 0:
            meta[OLH_EPOCH] = str(epoch)
    return meta


def baseline_mutation(
    *,
    bucket: str,
    bucket_id: str,
    generation: int,
    counter: int,
    key: str,
    version_id: str | None,
    delete_marker: bool,
    size: int | None,
    etag: str | None,
    mtime_ns: int,
    storage_class: str | None = None,
) -> Mutation:
    """A full-sync record: one existing object (version) or delete marker of the qualified
    ``bucket``. The listing's LastModified is the object's mtime too (milliseconds on Pacific
    and Reef, seconds on Tentacle)."""
    tenant, name = split_name(bucket)
    return Mutation(
        bucket=name,
        tenant=tenant,
        key=key,
        op=Op.DELETE_MARKER if delete_marker else Op.WRITE,
        mtime_ns=mtime_ns,
        source=full_sync_source(bucket, bucket_id, generation),
        position=f"{counter:016d}",
        seq=baseline_seq(generation, mtime_ns, counter),
        version_id=version_id,
        size=None if delete_marker else size,
        etag=None if delete_marker else etag,
        obj_mtime_ns=None if delete_marker else mtime_ns,
        storage_class=None if delete_marker else storage_class,
        baseline=True,
    )


class BucketFilter:
    """Which buckets and keys are followed: ``buckets`` (None or ``["*"]``: all), per-bucket key
    ``prefixes``, and ``exclude`` (e.g. the change-log target bucket itself, whose own writes
    must not be logged). Every name is qualified (``tenant/bucket``; a bare name is the bucket of
    no tenant)."""

    def __init__(
        self,
        buckets: Iterable[str] | None = None,
        prefixes: Mapping[str, Sequence[str]] | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        names = tuple(buckets) if buckets is not None else ("*",)
        self.all = not names or "*" in names
        self.buckets = frozenset(n for n in names if n != "*")
        self.exclude = frozenset(exclude)
        self.prefixes: dict[str, tuple[str, ...]] = {}
        for bucket, ps in (prefixes or {}).items():
            kept = sorted(set(ps))
            if "" in kept or not kept:
                continue
            # A prefix covered by a shorter one adds nothing (and would list objects twice).
            self.prefixes[bucket] = tuple(p for p in kept if not any(p != q and p.startswith(q) for q in kept))

    def __repr__(self) -> str:
        which = "*" if self.all else sorted(self.buckets)
        return f"BucketFilter(buckets={which}, prefixes={self.prefixes}, exclude={sorted(self.exclude)})"

    def excluded(self, bucket: str) -> bool:
        return bucket in self.exclude

    def follows(self, bucket: str) -> bool:
        return bucket not in self.exclude and (self.all or bucket in self.buckets)

    def wants_every_key(self, bucket: str) -> bool:
        """Whether ``wants(bucket, key)`` is true of every key (no prefixes for the bucket)."""
        return not self.prefixes.get(bucket)

    def wants(self, bucket: str, key: str) -> bool:
        wanted = self.prefixes.get(bucket)
        return not wanted or any(key.startswith(p) for p in wanted)

    def list_prefixes(self, bucket: str) -> tuple[str, ...]:
        """The prefixes a full sync lists ("" = the whole bucket)."""
        return self.prefixes.get(bucket) or ("",)
