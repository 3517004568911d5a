"""Size, etag, mtime and storage class of written objects, read from the bucket index itself.

The bucket index log (bilog) does not carry an object's size or etag. The bucket index entry
does: ``rgw_bucket_dir_entry`` (cls/rgw/cls_rgw_types.h), an omap value of the index shard
object. This module decodes it (``decode_dir_entry``), names the omap keys and index objects
(``plain_key``, ``instance_key``, ``index_oid``), and ``BucketIndexReader`` matches a page of bilog entries of
one shard to the entries now in the index: one omap read per index object per batch, instead
of one S3 HEAD per written object.

Layout (the same on Pacific 16.2.15, Reef 18.2.7 and Tentacle 20.2.4: captured on the labs
into ``tests/unit/data/bucket_index_<release>.json`` by ``tools/capture-bucket-index``):

* Encoding: ``rgw_bucket_dir_entry`` struct v8 (compat 3) holding ``rgw_bucket_dir_entry_meta``
  v7 (compat 3) on all three; Tentacle's owner is still encoded as a string. Newer structs are
  read up to what is known and the rest skipped by the ENCODE_START length. ``storage_class``
  is "" for an object written without one (``radosgw-admin bi list`` prints "STANDARD" for it on
  Tentacle only) and as given otherwise: a PUT with ``StorageClass=STANDARD`` stores
  "STANDARD", and HEAD answers it (checked on Pacific).
* Index objects: ``.dir.<bucket_id>.<shard>`` (``.dir.<bucket_id>`` when unsharded), in the
  zone's index pool. The bucket *id*, not the marker: after a Pacific reshard the new
  instance's id names them while the marker stays the first instance's. Reef and Tentacle
  reshard in place: the index objects of generation 1 are ``.dir.<bucket_id>.1.<shard>``, and
  the bilog read is that generation's (``BucketShard.log_gen`` 1).
* Omap keys: a plain object's entry is its index name (the bilog's ``object``: a key starting
  with ``_`` is ``__key``; UTF-8 as is); a versioned bucket's object version is
  ``b"\x801000_" + name + b"\0i" + instance`` and its null version has the *empty* instance
  (``\x801000_name\0i``; the plain key then holds a placeholder, FLAG_VER_MARKER, never
  matched); ``\x801001_name`` is the OLH entry, ``name\0v<n>\0i<instance>`` the listing entry
  and ``\x800_<index_ver>...`` the bilog entries themselves. python3-rados 16.2 cannot pass
  these keys (a NUL ends them, 0x80 fails its UTF-8 decoding): ``OmapReader`` in
  ``changelog.pipeline.backends.rados`` reads them through librados' C API.

The matching rule ("a record must never carry the size of a different write"). A bilog
``write`` entry's ``ver`` (pool, epoch) is the version of the object's head in RADOS that this
write produced (pool id and PG log version): any later write, tagging or ACL rewrite of the
object gives a new epoch, and the index entry carries the ``ver`` of the write it describes now.
So facts are taken only when the entry's ``ver`` equals the record's:

* unversioned ``write`` (PUT, COPY, multipart complete, tagging/ACL): plain key ``name``; for
  the tagging of a versioned bucket's null version (logged with no instance) the null
  instance entry ``\x801000_name\0i``, whichever carries the ``ver``;
* versioned write: the record is the ``link_olh`` (its ``ver`` is the OLH's: pool -1); its
  companion ``write`` (versioned flag, same object and instance, before it in the same shard's
  log) carries the head's ``ver``; the instance entry ``\x801000_name\0i<instance>`` is read.
  Without the companion in the page (a page boundary) the ``link_olh`` timestamp, which is its
  write's mtime to the nanosecond, must equal the entry's mtime;
* versioning suspended: ``write`` ("" instance, versioned) + ``link_olh`` (""): as above, on
  the null instance entry; a suspended PUT of a key that never had versions is a plain
  ``write`` of the plain key;
* tagging/ACL of a version: ``write`` (v, not versioned): the instance entry of v.

A ``write`` that changed no object version: DeleteObjectTagging without a VersionId on a
versioned bucket whose current version is not the null one (measured on Pacific 16.2.15, Reef
18.2.7 and Tentacle 20.2.4). radosgw removes the tags attribute of the key's head object *by
name*, which is the OLH object there, not the current version (GetObjectTagging still answers
its tags), and completes an index op on the instance-less key: cls_rgw's ``read_key_entry``
finds the placeholder (FLAG_VER_MARKER) under the plain key and goes to the null instance key,
where no entry exists, so ``rgw_bucket_complete_op`` creates one from the op: size 0, etag "",
owner "", ``versioned_epoch`` 0 and *no FLAG_VER* (HEAD ?versionId=null answers 404, listings
do not show it). Its log entry (``write``, instance "", not versioned) is the same as that of a
real tag change of the null version, whose entry is under the same key; but every real null
version's entry carries FLAG_VER (``link_olh`` and the conversion of a plain entry set it, and
``rgw_bucket_complete_op`` keeps it: ``entry.flags &= FLAG_VER``). So a write whose matched entry
is a null instance entry without FLAG_VER gets ``NO_WRITE``: no record. An earlier such write
of the key in the same page, superseded by that one, is one too, when only entries of other
versions of the key come between them (nothing that could have made or removed its null
version: ``_earlier_no_writes``). The same request on the null version itself (current or not,
or an object written before versioning was enabled) is a real change of its tags and recorded.

One exception: a *cancelled* operation on the key since (a racing PUT that lost the head's
guard, answered 200; a conditional PUT refused at the head write, 412) rewrites the entry's
``ver`` to pool -1, epoch 0 and leaves its meta alone (cls_rgw ``rgw_bucket_complete_op`` sets
``entry.ver = op.ver`` for a cancel too). Such an entry still describes the write that made it,
and is matched by that write's mtime, to the nanosecond (its bilog entry's ``timestamp``):
otherwise the live object's record went without facts (tests/unit/test_core_review3.py).

Evidence, the same on all three releases (``tests/unit/test_bucket_index.py``): each of the 22
last writes of the workload matched its entry, whose size, etag, mtime (to the second) and
storage class equal the S3 HEAD answer; the only unmatched records were the first of two
quick overwrites and the *race*: ``race`` written, its bilog entry read (``ver`` epoch N), the
key overwritten, the index read: its entry then has epoch M != N and the second write's size,
so the first record stays null. ``index_ver`` is not used: it is the shard's change counter at
the entry's last update, equal here too, but nothing makes it name the head object's content;
``ver`` does.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from changelog.errors import ChangelogError, PermanentError
from changelog.native import speedup
from rgw_module.mapping import (
    NO_WRITE_SIZE,
    BilogEntry,
    BucketShard,
    index_name_to_key,
    is_versioned_op,
    parse_time_ns,
    position_of,
)

logger = logging.getLogger(__name__)

# Bucket index key prefixes (cls_rgw.cc ``bucket_index_prefixes``), after the 0x80 byte.
BI_PREFIX = b"\x80"
INSTANCE_PREFIX = BI_PREFIX + b"1000_"
OLH_PREFIX = BI_PREFIX + b"1001_"
# Entry flags (rgw_bucket_dir_entry::FLAG_*).
FLAG_VER = 0x1
FLAG_CURRENT = 0x2
FLAG_DELETE_MARKER = 0x4
FLAG_VER_MARKER = 0x8
# A bucket index entry is a few hundred bytes; one whose struct claims more than this is garbage
# (bounds what a corrupt length can make the decoder skip or copy).
MAX_ENTRY_BYTES = 16 * 1024 * 1024

ReadOmap = Callable[[str, str, Sequence[bytes]], Mapping[bytes, bytes]]


class BadIndexEntry(PermanentError):
    """A bucket index value that is not a decodable ``rgw_bucket_dir_entry``."""


class DirEntry(NamedTuple):
    """The fields of an ``rgw_bucket_dir_entry`` used here (times in ns since the epoch). A
    named tuple: one is made per index entry read, and a tuple is made several times faster
    than a frozen dataclass."""

    name: str
    instance: str
    exists: bool
    ver_pool: int
    ver_epoch: int
    index_ver: int
    size: int
    mtime_ns: int
    etag: str
    # None: the default class, stored as "" (a class given explicitly, even "STANDARD", is
    # stored and answered by HEAD as given)
    storage_class: str | None
    accounted_size: int
    flags: int
    versioned_epoch: int
    struct_v: int
    # The identity that wrote the content (``meta.owner``: the ACL owner of the written attrs, the
    # requester of a PutObject/CopyObject, the initiator of a multipart upload; measured in
    # docs/design.md §15): the follower's ``writer`` (``[source] record_writer``).
    owner: str = ""


class ObjectFacts(NamedTuple):
    """What a write record gets from the index. (A named tuple: one is made per write the
    follower reads, in a quarter of a frozen dataclass's time.)"""

    size: int
    etag: str
    mtime_ns: int
    storage_class: str | None
    owner: str = ""  # who wrote the content (``DirEntry.owner``)


# The facts of a ``write`` that changed no object version (module docstring): its record is
# dropped (``rgw_module.mapping.NO_WRITE_SIZE``).
NO_WRITE = ObjectFacts(NO_WRITE_SIZE, "", 0, None)


class _Reader:
    """Little-endian Ceph decoding over ``data[pos:end]``, every read bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise BadIndexEntry(f"bucket index entry truncated at byte {self.pos} (need {n} of {self.end - self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        raw = self.take(self.u32())
        try:
            return raw.decode()
        except UnicodeDecodeError as ex:
            raise BadIndexEntry(f"bucket index entry: a string is not UTF-8 at byte {self.pos - len(raw)}") from ex

    def skip_string(self) -> None:
        self.take(self.u32())

    def time_ns(self) -> int:
        sec, nsec = struct.unpack("<II", self.take(8))
        return int(sec) * 1_000_000_000 + int(nsec)

    def packed(self) -> int:
        """``decode_packed_val``: one byte below 0x80, else 0x80|width then that many bytes."""
        c = self.u8()
        if c < 0x80:
            return c
        width = c & 0x7F
        if width not in (1, 2, 4, 8):
            raise BadIndexEntry(f"bucket index entry: bad packed value width {width} at byte {self.pos - 1}")
        return int.from_bytes(self.take(width), "little")

    def start(self, what: str, min_v: int = 1) -> tuple[int, int]:
        """ENCODE_START's header: (struct_v, end). A newer struct is read up to what is known
        and the rest skipped by its length."""
        v, _compat, length = struct.unpack("<BBI", self.take(6))
        if v < min_v:
            raise BadIndexEntry(f"bucket index entry: {what} version {v} is older than {min_v}")
        if length > self.end - self.pos:
            raise BadIndexEntry(f"bucket index entry: {what} claims {length} bytes, {self.end - self.pos} left")
        return v, self.pos + length

    def finish(self, end: int, what: str) -> None:
        if self.pos > end:
            raise BadIndexEntry(f"bucket index entry: {what} overruns its length")
        self.pos = end


_HEAD = struct.Struct("<BBI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_SIZE_TIME = struct.Struct("<QII")
_make_entry = DirEntry._make


def decode_dir_entry(data: bytes) -> DirEntry:
    """An ``rgw_bucket_dir_entry`` (struct v3 or later: every radosgw since 2013); BadIndexEntry
    on truncated or garbage input.

    The common entry (no pending operations, one-byte packed ``ver`` fields or wider) is read by
    ``_fast_dir_entry`` in one pass of ``unpack_from`` calls; anything it does not take as
    well-formed is read again by the careful reader, which says what is wrong (or reads an
    entry the fast pass does not cover). Both give the same entry: tests/unit/test_bucket_index.py
    compares them on every captured entry, every truncation and random corruption."""
    if len(data) > MAX_ENTRY_BYTES:
        raise BadIndexEntry(f"bucket index entry of {len(data)} bytes is too large")
    if _NATIVE_DIR_ENTRY is not None:
        got = _NATIVE_DIR_ENTRY(data)
        if got.__class__ is tuple:
            return _make_entry(got)
        if got is None:
            return careful_dir_entry(data)
    try:
        fast = _fast_dir_entry(data)
    except (struct.error, ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        fast = None
    return fast if fast is not None else careful_dir_entry(data)


def _native_dir_entry() -> Callable[[bytes], Any] | None:
    """``_speedups.dir_entry``: ``_fast_dir_entry`` in C (its fields as a tuple, None where the
    careful reader decides, Ellipsis for what is not bytes), or None where the module is not
    built or RGW_CHANGELOG_PURE_PYTHON=1 asks for Python (tests/unit/test_catchup_cpu.py
    compares both on every captured entry, truncation and random corruption)."""
    got: Callable[[bytes], Any] | None = speedup("dir_entry")
    return got


_NATIVE_DIR_ENTRY = _native_dir_entry()


def _fast_dir_entry(data: bytes) -> DirEntry | None:
    """``decode_dir_entry``'s one pass over a well-formed entry; None (or a struct/Unicode/
    index error) for anything else, which the careful reader then reads."""
    u32, u64 = _U32.unpack_from, _U64.unpack_from
    v, _, length = _HEAD.unpack_from(data, 0)
    end = 6 + length
    if v < 3 or end > len(data):
        return None
    (n,) = u32(data, 6)
    pos = 10 + n
    name = data[10:pos].decode()
    exists = data[pos + 8] != 0
    # rgw_bucket_dir_entry_meta
    mv, _, mlen = _HEAD.unpack_from(data, pos + 9)
    pos += 15
    mend = pos + mlen
    if mv < 1 or mend > end:
        return None
    size, sec, nsec = _SIZE_TIME.unpack_from(data, pos + 1)  # after the category byte
    pos += 17
    (n,) = u32(data, pos)
    etag = data[pos + 4 : pos + 4 + n].decode()
    pos += 4 + n
    (n,) = u32(data, pos)
    owner = data[pos + 4 : pos + 4 + n].decode()
    pos += 4 + n
    pos += 4 + u32(data, pos)[0]  # owner_display_name
    if mv >= 2:
        pos += 4 + u32(data, pos)[0]  # content_type
    accounted = size
    if mv >= 4:
        (accounted,) = u64(data, pos)
        pos += 8
    if mv >= 5:
        pos += 4 + u32(data, pos)[0]  # user_data
    storage_class = ""
    if mv >= 6:
        (n,) = u32(data, pos)
        storage_class = data[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
    if pos > mend:
        return None
    pos = mend
    if u32(data, pos)[0] != 0:  # pending operations: the careful reader
        return None
    pos += 4
    pool, epoch, index_ver, instance, flags, versioned_epoch = -1, 0, 0, "", 0, 0
    if v >= 2:
        pos += 4 + u32(data, pos)[0]  # locator
    if v >= 4:
        ev, _, elen = _HEAD.unpack_from(data, pos)
        pos += 6
        vend = pos + elen
        if ev < 1 or vend > end:
            return None
        pool, pos = _packed(data, pos)
        if pool >= 1 << 63:
            pool -= 1 << 64
        epoch, pos = _packed(data, pos)
        if pos > vend:
            return None
        pos = vend
    if v >= 5:
        index_ver, pos = _packed(data, pos)
        pos += 4 + u32(data, pos)[0]  # tag
    if v >= 6:
        (n,) = u32(data, pos)
        instance = data[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
    if v >= 7:
        (flags,) = _U16.unpack_from(data, pos)
        pos += 2
    if v >= 8:
        (versioned_epoch,) = u64(data, pos)
        pos += 8
    if pos > end:
        return None
    # Positional, in DirEntry's field order (the keyword form costs a third of the pass).
    return _make_entry((
        name, instance, exists, pool, epoch, index_ver, size, sec * 1_000_000_000 + nsec, etag,
        storage_class or None, accounted, flags, versioned_epoch, v, owner,
    ))  # fmt: skip


def _packed(data: bytes, pos: int) -> tuple[int, int]:
    """``decode_packed_val`` at ``pos``: (value, position after it); ValueError on a bad width."""
    c = data[pos]
    if c < 0x80:
        return c, pos + 1
    width = c & 0x7F
    if width not in (1, 2, 4, 8) or pos + 1 + width > len(data):
        raise ValueError("bad packed value")
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def careful_dir_entry(data: bytes) -> DirEntry:
    """``decode_dir_entry`` read field by field with every read bounds-checked, saying what is
    wrong with a bad entry (the reference the fast pass is tested against)."""
    if len(data) > MAX_ENTRY_BYTES:
        raise BadIndexEntry(f"bucket index entry of {len(data)} bytes is too large")
    r = _Reader(bytes(data))
    try:
        v, end = r.start("rgw_bucket_dir_entry", 3)
        name = r.string()
        r.u64()  # ver.epoch, again in ``ver`` below
        exists = r.u8() != 0
        meta = _meta(r)
        for _ in range(r.u32()):  # pending_map: tag -> rgw_bucket_pending_info
            r.skip_string()
            _, pend_end = r.start("rgw_bucket_pending_info")
            r.finish(pend_end, "rgw_bucket_pending_info")
        pool, epoch, index_ver, instance, flags, versioned_epoch = -1, 0, 0, "", 0, 0
        if v >= 2:
            r.skip_string()  # locator
        if v >= 4:
            _, ver_end = r.start("rgw_bucket_entry_ver")
            pool = r.packed()
            if pool >= 1 << 63:
                pool -= 1 << 64  # int64: -1 is "no pool"
            epoch = r.packed()
            r.finish(ver_end, "rgw_bucket_entry_ver")
        if v >= 5:
            index_ver = r.packed()
            r.skip_string()  # tag
        if v >= 6:
            instance = r.string()
        if v >= 7:
            flags = r.u16()
        if v >= 8:
            versioned_epoch = r.u64()
        r.finish(end, "rgw_bucket_dir_entry")
    except BadIndexEntry:
        raise
    except (struct.error, ValueError, IndexError) as ex:  # defensive: _Reader checks bounds
        raise BadIndexEntry(f"bucket index entry undecodable: {ex}") from ex
    size, mtime_ns, etag, storage_class, accounted, owner = meta
    return DirEntry(
        name=name, instance=instance, exists=exists, ver_pool=pool, ver_epoch=epoch,
        index_ver=index_ver, size=size, mtime_ns=mtime_ns, etag=etag,
        storage_class=storage_class or None, accounted_size=accounted, flags=flags,
        versioned_epoch=versioned_epoch, struct_v=v, owner=owner,
    )  # fmt: skip


def _meta(r: _Reader) -> tuple[int, int, str, str, int, str]:
    """``rgw_bucket_dir_entry_meta``: (size, mtime_ns, etag, storage_class, accounted_size, owner)."""
    v, end = r.start("rgw_bucket_dir_entry_meta")
    r.u8()  # category
    size = r.u64()
    mtime_ns = r.time_ns()
    etag = r.string()
    owner = r.string()
    r.skip_string()  # owner_display_name
    if v >= 2:
        r.skip_string()  # content_type
    accounted = r.u64() if v >= 4 else size
    if v >= 5:
        r.skip_string()  # user_data
    storage_class = r.string() if v >= 6 else ""
    r.finish(end, "rgw_bucket_dir_entry_meta")
    return size, mtime_ns, etag, storage_class, accounted, owner


# -- names ---------------------------------------------------------------------------------------


def plain_key(index_name: str) -> bytes:
    """The omap key of an unversioned object's entry (``index_name``: the bilog's ``object``)."""
    return index_name.encode()


def instance_key(index_name: str, instance: str) -> bytes:
    """The omap key of a versioned bucket's object version (``\\x801000_name\\0i<instance>``);
    the null version has an empty instance."""
    return INSTANCE_PREFIX + index_name.encode() + b"\0i" + instance.encode()


def olh_key(index_name: str) -> bytes:
    return OLH_PREFIX + index_name.encode()


def index_oid(bs: BucketShard) -> str:
    """The index shard object of ``bs``: ``.dir.<bucket_id>[.<gen>][.<shard>]`` (module docstring)."""
    name = f".dir.{bs.bucket_id}"
    if bs.log_gen:
        name += f".{bs.log_gen}"
    if bs.shard >= 0:
        name += f".{bs.shard}"
    return name


# -- matching ------------------------------------------------------------------------------------


class Lookup(NamedTuple):
    """One write record's index read: the keys its entry may be under (the first whose ``ver``
    matches wins) and the ``ver`` its write gave the head object. (A named tuple: one is made per
    write the follower reads.)"""

    position: str  # of the record-producing entry
    keys: tuple[bytes, ...]
    pool: int
    epoch: int
    # Set instead of a ``ver`` for a ``link_olh`` whose companion ``write`` was in an earlier
    # page: the entry's mtime (ns) must equal the record's (``link_olh`` carries its write's).
    mtime_ns: int | None = None

    def matches(self, d: DirEntry) -> bool:
        if not d.exists:
            return False
        if self.mtime_ns is not None:
            return d.mtime_ns == self.mtime_ns
        return (d.ver_pool, d.ver_epoch) == (self.pool, self.epoch)


def _ver(entry: BilogEntry) -> tuple[int, int] | None:
    ver = entry.get("ver")
    if not isinstance(ver, dict):
        return None
    try:
        return int(ver.get("pool", -1)), int(ver.get("epoch", 0))
    except (TypeError, ValueError):
        return None


def lookups(page: Sequence[BilogEntry]) -> list[Lookup]:
    """For each write record of ``page`` (in log order, companions included): the index keys to
    read and the ``ver`` its entry must carry. Records without a usable ``ver``, and versioned
    writes whose companion ``write`` is not in ``page``, are left out.

    In C where it is built (``_speedups.index_lookups``), which hands back to ``_lookups_py``
    (the reference) any page with a shape it does not handle (tests/unit/test_catchup_cpu.py)."""
    if _NATIVE_LOOKUPS is not None and page.__class__ is list:
        got: list[Lookup] | None = _NATIVE_LOOKUPS(page, Lookup, _LOOKUP_CONSTS)
        if got is not None:
            return got
    return _lookups_py(page)


def _lookups_py(page: Sequence[BilogEntry]) -> list[Lookup]:
    """``lookups`` in Python."""
    out: list[Lookup] = []
    # (object, instance) -> ver of the latest versioned ``write`` companion seen.
    companions: dict[tuple[str, str], tuple[int, int]] = {}
    for entry in page:
        op = entry.get("op")
        # Only these two ops are writes (``interpret``); the others are skipped before any work.
        if (op != "write" and op != "link_olh") or entry.get("state", "complete") != "complete":
            continue
        obj = str(entry.get("object", ""))
        inst = str(entry.get("instance") or "")
        ver = _ver(entry)
        if op == "write" and is_versioned_op(entry):
            if ver is not None:
                companions[(obj, inst)] = ver
            continue
        if index_name_to_key(obj) is None:
            continue  # the internal namespace: no record (``interpret``)
        position = position_of(str(entry.get("op_id", "")))
        if op == "write":
            if ver is None:
                continue
            # A rewrite (tagging, ACL) of a versioned bucket's null version is logged without an
            # instance, and its entry is the instance entry with the empty instance; the plain
            # key then holds a placeholder (FLAG_VER_MARKER) whose ``ver`` never matches.
            keys = (instance_key(obj, inst),) if inst else (plain_key(obj), instance_key(obj, ""))
            out.append(Lookup(position, keys, *ver))
        elif op == "link_olh":
            companion = companions.get((obj, inst))
            if companion is not None:
                out.append(Lookup(position, (instance_key(obj, inst),), *companion))
            elif mtime_ns := parse_time_ns(str(entry.get("timestamp", ""))):
                out.append(Lookup(position, (instance_key(obj, inst),), -1, 0, mtime_ns))
    return out


def _native_lookups() -> Callable[..., Any] | None:
    got: Callable[..., Any] | None = speedup("index_lookups")
    return got


# ``lookups`` in C, or None (not built, or RGW_CHANGELOG_PURE_PYTHON=1), and what it is given
# besides the page: the instance keys' prefix and the empty instance.
_NATIVE_LOOKUPS = _native_lookups()
_LOOKUP_CONSTS = (INSTANCE_PREFIX, "")


class OmapSource(Protocol):
    """What reads the index: ``changelog.pipeline.backends.rados.OmapReader``."""

    def get(self, pool: str, oid: str, keys: Sequence[bytes]) -> Mapping[bytes, bytes]: ...

    def close(self) -> None: ...


class LazyOmap:
    """A ``ReadOmap`` that opens its client on first use, so that a follower starts (and falls
    back to HEAD) when the cluster is unreachable. A client that cannot be opened, for whatever
    reason, makes every call raise one ``PermanentError`` naming the cause."""

    def __init__(self, opener: Callable[[], OmapSource]) -> None:
        self._opener = opener
        self._source: OmapSource | None = None
        self._failed: PermanentError | None = None
        self._lock = threading.Lock()

    def _open(self) -> OmapSource:
        with self._lock:
            if self._failed is not None:
                raise self._failed
            if self._source is None:
                try:
                    self._source = self._opener()
                except ImportError as ex:
                    self._failed = PermanentError(f"the rados binding cannot be loaded: {ex}")
                    raise self._failed from ex
                except ChangelogError as ex:
                    self._failed = PermanentError(str(ex))
                    raise self._failed from ex
            return self._source

    def __call__(self, pool: str, oid: str, keys: Sequence[bytes]) -> Mapping[bytes, bytes]:
        return self._open().get(pool, oid, keys)

    def close(self) -> None:
        with self._lock:
            if self._source is not None:
                self._source.close()
                self._source = None


class BucketIndexReader:
    """Facts of the write records of a bilog page, from the bucket index (module docstring)."""

    def __init__(self, read_omap: ReadOmap, pool: str) -> None:
        self.read_omap = read_omap
        self.pool = pool

    def __repr__(self) -> str:
        return f"BucketIndexReader(pool={self.pool!r})"

    def close(self) -> None:
        close = getattr(self.read_omap, "close", None)
        if callable(close):
            close()

    def facts(self, bs: BucketShard, page: Sequence[BilogEntry]) -> dict[str, ObjectFacts]:
        """``{position: facts}`` of the write records of ``page`` whose index entry is still the
        one their write made; the others (superseded, deleted) are absent; the writes that
        changed no object version are ``NO_WRITE`` (module docstring). One omap read."""
        wanted = lookups(page)
        if not wanted:
            return {}
        values = self.read_omap(self.pool, index_oid(bs), sorted({k for w in wanted for k in w.keys}))
        if _NATIVE_FACTS is not None and wanted.__class__ is list and values.__class__ is dict:
            got: dict[str, ObjectFacts] | None = _NATIVE_FACTS(wanted, values, _FACTS_CONSTS)
            if got is not None:
                return got
        return _facts_py(bs, page, wanted, values)


def _facts_py(
    bs: BucketShard, page: Sequence[BilogEntry], wanted: Sequence[Lookup], values: Mapping[bytes, bytes]
) -> dict[str, ObjectFacts]:
    """``BucketIndexReader.facts`` after its omap read, in Python: the reference, and what
    decides every page ``_speedups.index_facts`` hands back (an entry the careful reader must
    read, a write of no object version, a cancelled operation's entry; tests/unit/test_index_facts.py)."""
    decoded: dict[bytes, DirEntry | None] = {}
    out: dict[str, ObjectFacts] = {}
    stamps: dict[str, int] | None = None
    no_writes = 0
    for w in wanted:
        for key in w.keys:
            if key not in decoded:
                raw = values.get(key)
                decoded[key] = None if raw is None else _decode_or_none(raw, bs, key)
            d = decoded[key]
            if d is None:
                continue
            # A null instance entry no null version made: no FLAG_VER, which every version's
            # entry has (module docstring). A plain key never has the prefix: one test per write.
            if key.startswith(INSTANCE_PREFIX) and not d.flags & FLAG_VER and not d.instance \
                    and w.matches(d):  # fmt: skip
                out[w.position] = NO_WRITE
                no_writes += 1
                break
            if not _describes_content(d):
                continue
            if not w.matches(d):
                if not _cancelled(d):
                    continue
                if stamps is None:
                    stamps = _write_stamps(page)
                if stamps.get(w.position) != d.mtime_ns:
                    continue
            out[w.position] = ObjectFacts(d.accounted_size, d.etag, d.mtime_ns, d.storage_class, d.owner)
            break
    if no_writes:
        no_writes += _earlier_no_writes(page, out)
        logger.debug("bucket index %s: %d write(s) of no object version (DeleteObjectTagging of an OLH)",
                     bs.key, no_writes)  # fmt: skip
    return out


def _native_facts() -> Callable[..., Any] | None:
    got: Callable[..., Any] | None = speedup("index_facts")
    return got


# ``_facts_py`` in C for the common page, or None (not built, or RGW_CHANGELOG_PURE_PYTHON=1),
# and what it is given besides the lookups and the values.
_NATIVE_FACTS = _native_facts()
_FACTS_CONSTS = (ObjectFacts, INSTANCE_PREFIX, MAX_ENTRY_BYTES)


def _earlier_no_writes(page: Sequence[BilogEntry], out: dict[str, ObjectFacts]) -> int:
    """Mark ``NO_WRITE`` in ``out`` the writes of ``page`` found in no entry (superseded) that
    precede a ``NO_WRITE`` of the same key with only entries of the key's other versions between
    them: the null instance entry both went to was there all along, and never a version's (only
    an entry of the null version, ``link_olh``/``unlink_instance``/``del`` of "" or "null", or
    the plain object's could have changed that). Returns how many were marked."""
    marked = 0
    # Objects whose next instance-less write, later in the page, is a NO_WRITE.
    chained: set[str] = set()
    for entry in reversed(page):
        obj = str(entry.get("object", ""))
        inst = str(entry.get("instance") or "")
        if (inst and inst != "null") or entry.get("state", "complete") != "complete":
            continue  # another version's entry, or a prepared op (its completion is logged too)
        if entry.get("op") != "write" or inst or is_versioned_op(entry):
            chained.discard(obj)  # the null version's (or the plain object's) own op
            continue
        try:
            position = position_of(str(entry.get("op_id", "")))
        except PermanentError:
            chained.discard(obj)
            continue
        got = out.get(position)
        if got is NO_WRITE:
            chained.add(obj)
        elif got is None and obj in chained:
            out[position] = NO_WRITE
            marked += 1
        else:
            chained.discard(obj)
    return marked


def _describes_content(d: DirEntry) -> bool:
    """Whether ``d``'s meta describes written content. Reef 18.2.7's DeleteObjectTagging
    rewrites the entry with an empty meta but the size (etag "", owner "", mtime 1 ns: HEAD then
    answers Last-Modified 1970) and logs a ``write`` stamped "0.000000"; its record goes without
    facts rather than with an empty etag and a 1970 mtime (tests/unit/test_core_review3.py)."""
    return bool(d.etag) and d.mtime_ns >= _NS_PER_S


_NS_PER_S = 1_000_000_000


# The ``ver`` a cancelled operation leaves on its entry (``cls_obj_complete_cancel``: pool -1,
# epoch 0; module docstring).
CANCELLED_VER = (-1, 0)


def _cancelled(d: DirEntry) -> bool:
    """Whether ``d`` is a live entry whose ``ver`` a cancelled operation overwrote: radosgw
    completes a prepared entry with a cancel when the head write fails (a racing PUT that lost
    the head's guard, answered 200; a conditional PUT refused at the head, 412), and cls_rgw's
    ``rgw_bucket_complete_op`` sets ``entry.ver = op.ver`` before it looks at the op. The entry
    keeps the meta (size, etag, mtime) of the write that made it, but not that write's ``ver``.
    A versioned bucket's placeholder plain entry (FLAG_VER_MARKER) is never one."""
    return d.exists and (d.ver_pool, d.ver_epoch) == CANCELLED_VER and not d.flags & FLAG_VER_MARKER


def _write_stamps(page: Sequence[BilogEntry]) -> dict[str, int]:
    """``{position: timestamp in ns}`` of the page's ``write`` and ``link_olh`` entries: the
    mtime their write gave the object, to the nanosecond (cls_rgw logs ``entry.meta.mtime``)."""
    out: dict[str, int] = {}
    for e in page:
        if e.get("op") in ("write", "link_olh") and e.get("state", "complete") == "complete":
            try:
                out[position_of(str(e.get("op_id", "")))] = parse_time_ns(str(e.get("timestamp", "")))
            except PermanentError:
                continue  # an entry id that is not a position: no record to give facts to
    return out


def _decode_or_none(raw: bytes, bs: BucketShard, key: bytes) -> DirEntry | None:
    try:
        return decode_dir_entry(raw)
    except BadIndexEntry as ex:
        # One entry radosgw wrote in a form not understood here: that record goes without
        # facts; the others of the page keep theirs.
        logger.warning("bucket index %s entry %r: %s", bs.key, key, ex)
        return None
