"""The RADOS object store: omap, guarded write ops and cls_lock leases on a real Ceph cluster.

The only module of the project that imports ``rados`` (python3-rados, Debian's binding). Every
librados error is translated here, at the edge, into ``changelog.errors``. What the cluster does
(Pacific 16.2.15, checked by ``tests/contract``) and how ``changelog.pipeline.store`` semantics map onto it:

* ``omap_cmp`` compares ``stored <op> given`` byte-wise **as signed chars** (non-ASCII bytes sort
  below ASCII; omap *keys* sort as unsigned bytes); an absent key compares as the empty value; a
  failed comparison fails the whole op with ECANCELED. Only EQ, GT and LT exist on the OSD (NE,
  GTE and LTE answer EINVAL): the others are refused before sending. The binding sends a
  non-ASCII comparison value truncated to its length in characters; ``_cmp_value`` pads it.
* ``omap_cmp`` and ``assert_locked`` on a missing object fail with ENOENT, so an op that may
  create its object starts with an idempotent ``create`` (then a missing object compares as an
  empty omap, and an absent lock fails the fence with ENOENT). ``must_exist`` is an
  ``omap_cmp("" == "")``: the empty key can never be set, so it only checks that the object exists.
* Locks: ``lock`` sends LOCK_FLAG_MAY_RENEW (take it, or extend it if this client and cookie hold
  it), ``renew`` sends LOCK_FLAG_MUST_RENEW (ENOENT unless this client and cookie still hold it).
  A lock belongs to this client instance (``client.<id>``) and the cookie: after a reconnect the
  locks taken before are no longer ours. The cls method is called directly (see ``lock``), so
  expiry is exactly now + duration on the OSD's clock. ``break_lock`` calls cls_lock
  ``break_lock`` (the binding has no ``Ioctx.break_lock``) with the locker (``client.<id>``) and
  cookie that ``lock_info`` reported: the OSD removes exactly that locker or answers ENOENT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import math
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from ctypes import Array
from typing import Any

import rados

from changelog.errors import (
    ChangelogError,
    CompareFailed,
    LeaseLost,
    LockBusy,
    ObjectMissing,
    PermanentError,
    TransientError,
)
from changelog.native import speedup
from changelog.pipeline.backends import check_op
from changelog.pipeline.store import Cmp, LockInfo, LockRef, WriteOp

logger = logging.getLogger(__name__)

# aio write ops in flight in execute_many: enough to keep one OSD busy (the ceph-notes omap
# bench saturates at a window of 16-64), small enough to bound client memory.
AIO_WINDOW = 64
# get_omap_vals_by_keys requests are split so that one reply stays small.
BY_KEYS_CHUNK = 1000
# cls_lock flags (cls/lock/cls_lock_types.h).
LOCK_FLAG_MAY_RENEW = 1
LOCK_FLAG_MUST_RENEW = 2
LOCK_TYPE_EXCLUSIVE = 1
# entity_name_t types (msg/msg_types.h).
ENTITY_TYPES = {0x01: "mon", 0x02: "mds", 0x04: "osd", 0x08: "client", 0x10: "mgr"}

_PERMANENT_ERRNOS = frozenset(
    {errno.EPERM, errno.EACCES, errno.EINVAL, errno.EOPNOTSUPP, errno.ENAMETOOLONG, errno.E2BIG, errno.EFBIG}
)
# ``stored <op> given`` on the OSD, with the same constants (checked: stored "m" GT given "a" holds).
_OMAP_CMP = {
    Cmp.EQ: rados.LIBRADOS_CMPXATTR_OP_EQ,
    Cmp.LT: rados.LIBRADOS_CMPXATTR_OP_LT,
    Cmp.GT: rados.LIBRADOS_CMPXATTR_OP_GT,
}


def _errno(ex: BaseException) -> int | None:
    code = getattr(ex, "errno", None)
    return abs(code) if isinstance(code, int) else None


def _general(code: int | None, what: str, detail: str) -> ChangelogError:
    """The errors that mean the same whatever the call."""
    message = f"RADOS {what}: {detail}"
    if code in _PERMANENT_ERRNOS:
        return PermanentError(message)
    # Timeouts, ENOTCONN/ESHUTDOWN (also what a blocklisted client gets), EIO, ENOSPC, EAGAIN, and
    # anything unexpected: it may pass, so retry with backoff.
    return TransientError(message)


def _write_error(code: int | None, oid: str, op: WriteOp, detail: str) -> ChangelogError:
    if code == errno.ECANCELED:
        return CompareFailed(f"{oid}: an omap assert failed")
    if code == errno.EEXIST and op.create_exclusive:
        return CompareFailed(f"{oid}: object exists")
    if code == errno.ENOENT and op.must_exist:
        return ObjectMissing(f"{oid}: no such object")
    if code in (errno.ENOENT, errno.EBUSY) and op.fence is not None:
        return LeaseLost(f"{oid}: lock {op.fence.name!r} not held by {op.fence.cookie!r}")
    return _general(code, f"write {oid}", detail)


def _cmp_value(given: str) -> str:
    """Work around python3-rados (16.2.15) sending ``len(val)`` *characters'* worth of the value's
    UTF-8 bytes: pad a non-ASCII value so that its first ``len`` bytes are exactly the value."""
    extra = len(given.encode()) - len(given)
    return given + "\0" * extra if extra else given


def _encode_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _encode_struct(body: bytes, version: int = 1, compat: int = 1) -> bytes:
    """Ceph's ENCODE_START/ENCODE_FINISH framing."""
    return struct.pack("<BBI", version, compat, len(body)) + body


def assert_locked_payload(ref: LockRef) -> bytes:
    """cls_lock_assert_op: name, type, cookie, tag."""
    body = _encode_str(ref.name) + bytes([LOCK_TYPE_EXCLUSIVE]) + _encode_str(ref.cookie) + _encode_str("")
    return _encode_struct(body)


def lock_payload(ref: LockRef, description: str, duration: float, flags: int) -> bytes:
    """cls_lock_lock_op: name, type, cookie, tag, description, duration (utime_t), flags."""
    seconds = int(duration)
    nanos = min(999_999_999, round((duration - seconds) * 1e9))
    body = (
        _encode_str(ref.name)
        + bytes([LOCK_TYPE_EXCLUSIVE])
        + _encode_str(ref.cookie)
        + _encode_str("")
        + _encode_str(description)
        + struct.pack("<II", seconds, nanos)
        + bytes([flags])
    )
    return _encode_struct(body)


def break_payload(info: LockInfo) -> bytes:
    """cls_lock_break_op: name, locker (entity_name_t: u8 type, s64 num), cookie."""
    kind_name, _, num = info.holder.rpartition(".")
    kinds = {v: k for k, v in ENTITY_TYPES.items()}
    if kind_name not in kinds or not num.lstrip("-").isdigit():
        raise PermanentError(f"cannot break lock {info.name!r}: holder {info.holder!r} is not an entity name")
    locker = bytes([kinds[kind_name]]) + struct.pack("<q", int(num))
    return _encode_struct(_encode_str(info.name) + locker + _encode_str(info.cookie))


class _Decoder:
    """Just enough of Ceph's little-endian encoding to read cls_lock_get_info_reply."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError(f"truncated at {self.pos} (+{size} of {len(self.data)})")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def s64(self) -> int:
        value: int = struct.unpack("<q", self.take(8))[0]
        return value

    def string(self) -> str:
        return self.take(self.u32()).decode(errors="replace")

    def start(self) -> int:
        """ENCODE_START header: returns the position just past the struct."""
        self.take(2)  # version, compat
        length = self.u32()
        return self.pos + length

    def skip_entity_addr(self) -> None:
        marker = self.data[self.pos]
        if marker == 1:  # msgr2-era encoding: marker, then a versioned struct
            self.pos += 1
            self.pos = self.start()
        else:  # legacy: u32 0, u32 nonce, sockaddr_storage (128 bytes)
            self.take(4 + 4 + 128)


def decode_lock_info(name: str, data: bytes) -> LockInfo | None:
    """cls_lock_get_info_reply: map<locker_id_t, locker_info_t> lockers, u8 type, string tag,
    where locker_id_t = {entity_name_t locker, string cookie} and locker_info_t = {utime_t
    expiration, entity_addr_t addr, string description}."""
    dec = _Decoder(data)
    dec.start()
    count = dec.u32()
    if count == 0:
        return None
    # An exclusive lock has one locker; report the first if a shared lock was put there.
    end = dec.start()
    kind = dec.u8()
    num = dec.s64()
    cookie = dec.string()
    dec.pos = end
    end = dec.start()
    seconds, nanos = dec.u32(), dec.u32()
    dec.skip_entity_addr()
    description = dec.string()
    dec.pos = end
    expires = None if seconds == 0 and nanos == 0 else seconds + nanos / 1e9
    holder = f"{ENTITY_TYPES.get(kind, f'type{kind}')}.{num}"
    return LockInfo(name=name, cookie=cookie, holder=holder, description=description, expires_at=expires)


def client_conf(connect_timeout: float, op_timeout: float, keyring: str | None) -> dict[str, str]:
    """The options every client of this module sets on its cluster handle."""
    seconds = max(1, math.ceil(connect_timeout))
    conf = {
        # Without these an unreachable cluster hangs for 300 s ("hunting for new mon").
        "client_mount_timeout": str(seconds),
        "rados_mon_op_timeout": str(seconds),
        # An OSD op that takes longer fails with ETIMEDOUT (TransientError) instead of blocking
        # a lease holder forever; it may still have been applied (guarded ops make retry safe).
        "rados_osd_op_timeout": str(max(1, math.ceil(op_timeout))),
    }
    if keyring:
        conf["keyring"] = keyring
    return conf


# -- the record path's write ops in C ------------------------------------------------------------
#
# ``RadosStore.execute_many`` (the index's guarded ops: ~1000 keys each) builds and sends its ops
# through ``_speedups.write_op_send``: librados' own C functions, whose addresses ctypes looks
# up, on the very I/O context the binding opened (same client, so the same lock holder for a
# fence), so the op's keys and values reach librados without the binding's per-key conversions
# (issue 17). The context's ``rados_ioctx_t`` is read from the binding's ``Ioctx`` object: its
# layout is the binding's public Cython declaration (ceph src/pybind/rados/rados.pxd: ``rados``,
# ``io``, ``name``, ``state``, ``locator_key``, ``nspace``, then three more objects), which
# librbd's binding compiles against; it is used only when the fields around it hold exactly the
# objects the binding reports and librados confirms the pool and namespace, else the binding
# builds every op, as with RGW_CHANGELOG_PURE_PYTHON=1 (the reference; tests run both ways).

_WRITE_FUNCTIONS = (
    "rados_create_write_op",
    "rados_release_write_op",
    "rados_write_op_create",
    "rados_write_op_exec",
    "rados_write_op_omap_cmp",
    "rados_write_op_omap_rm_keys",
    "rados_write_op_omap_rm_range2",
    "rados_write_op_omap_set",
    "rados_aio_create_completion2",
    "rados_aio_write_op_operate",
    "rados_aio_wait_for_complete",
    "rados_aio_get_return_value",
    "rados_aio_release",
)
# How ``write_op_send`` starts an op: RadosStore._build's ``new`` (idempotent or exclusive) or
# the must_exist compare.
_CREATE_IDEMPOTENT, _CREATE_EXCLUSIVE, _MUST_EXIST = 0, 1, 2


def _ioctx_pointer(ioctx: rados.Ioctx) -> int | None:
    """The ``rados_ioctx_t`` inside the binding's ``Ioctx`` (see above), or None when the object
    does not have the declared layout."""
    kind = type(ioctx)
    word = ctypes.sizeof(ctypes.c_void_p)
    head = object.__basicsize__
    if kind.__module__ != "rados" or kind.__name__ != "Ioctx" or kind.__basicsize__ != head + 9 * word:
        return None

    def field(n: int) -> int:
        return ctypes.c_void_p.from_address(id(ioctx) + head + n * word).value or 0

    if (field(2), field(3), field(5)) != (id(ioctx.name), id(ioctx.state), id(ioctx.nspace)):
        return None
    return field(1) or None


class _NativeWriter:
    """``_speedups.write_op_send`` / ``write_op_wait`` bound to one open I/O context."""

    def __init__(
        self, send: Callable[..., Any], wait: Callable[..., int], functions: tuple[int, ...], io: int
    ) -> None:
        self._send = send
        self._wait = wait
        self._functions = functions
        self._io = io

    @classmethod
    def attach(cls, ioctx: rados.Ioctx) -> _NativeWriter | None:
        send, wait = speedup("write_op_send"), speedup("write_op_wait")
        io = _ioctx_pointer(ioctx)
        if send is None or wait is None or io is None:
            return None
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("rados") or "librados.so.2")
        except OSError:
            return None
        try:
            names = (*_WRITE_FUNCTIONS, "rados_ioctx_get_id", "rados_ioctx_get_namespace")
            fns = [getattr(lib, name) for name in names]
        except AttributeError:  # a librados older than Octopus
            return None
        get_id, get_ns = fns[-2], fns[-1]
        get_id.argtypes, get_id.restype = [ctypes.c_void_p], ctypes.c_int64
        get_ns.argtypes, get_ns.restype = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint], ctypes.c_int
        # The same librados the binding runs on (one copy per process), and the context it opened.
        buf = ctypes.create_string_buffer(4096)
        got = get_ns(io, buf, len(buf))
        namespace = buf.raw[: max(got, 0)].decode(errors="replace")
        if get_id(io) != ioctx.get_pool_id() or got < 0 or namespace != (ioctx.nspace or ""):
            logger.warning("the binding's I/O context is not as declared: write ops go through the binding")
            return None
        functions = tuple(ctypes.cast(fn, ctypes.c_void_p).value or 0 for fn in fns[:-2])
        return cls(send, wait, functions, io)

    def send(self, oid: str, op: WriteOp) -> tuple[int, Any] | None:
        """Send ``op`` (aio): (0, pending) or (-errno, None) when librados refused to send it;
        None for an op only the binding builds. Raises what ``RadosStore._build`` raises first
        (``check_op``)."""
        check_op(op)
        if "\x00" in oid:  # the binding cuts it there; let it
            return None
        create = _CREATE_EXCLUSIVE if op.create_exclusive else _CREATE_IDEMPOTENT
        if op.must_exist:
            create = _MUST_EXIST
        fence = assert_locked_payload(op.fence) if op.fence is not None else None
        asserts = [(key, int(_OMAP_CMP[cmp]), given) for key, cmp, given in op.asserts]
        result: tuple[int, Any] | None = self._send(
            self._functions,
            self._io,
            oid.encode(),
            create,
            fence,
            asserts,
            op.remove if op.remove.__class__ is list else list(op.remove),
            op.remove_ranges if op.remove_ranges.__class__ is list else list(op.remove_ranges),
            op.set if op.set.__class__ is dict else dict(op.set),
            getattr(op, "records", None),  # index.RecordOp: its data keys are made in C
        )
        return result

    def wait(self, pending: Any) -> int:
        """The sent op's return value (it waits with the GIL released)."""
        return self._wait(self._functions, pending)


class RadosStore:
    """``ObjectStore`` on one pool and namespace of a Ceph cluster, through one librados client.

    Thread-safe: librados is, and the binding releases the GIL while it waits.
    """

    def __init__(
        self,
        *,
        conffile: str,
        pool: str,
        namespace: str = "",
        keyring: str | None = None,
        client_name: str = "client.admin",
        connect_timeout: float = 10,
        op_timeout: float = 30,
    ) -> None:
        self._conffile = conffile
        self._pool = pool
        self._namespace = namespace
        conf = client_conf(connect_timeout, op_timeout, keyring)
        where = f"Ceph ({conffile}, {client_name}, pool {pool!r})"
        try:
            self._cluster = rados.Rados(conffile=conffile, conf=conf, name=client_name)
            self._cluster.connect(timeout=max(1, math.ceil(connect_timeout)))
        except rados.Error as ex:
            code = _errno(ex)
            message = f"cannot connect to {where}: {ex}"
            if code in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL):
                raise PermanentError(message) from ex
            raise TransientError(message) from ex
        try:
            self._ioctx = self._cluster.open_ioctx(pool)
            self._ioctx.set_namespace(namespace)
        except rados.Error as ex:
            self._cluster.shutdown()
            if _errno(ex) == errno.ENOENT:
                raise PermanentError(f"cannot open {where}: no such pool") from ex
            raise _general(_errno(ex), f"open pool {pool!r} ({conffile})", str(ex)) from ex
        self.client_id = f"client.{self._cluster.get_instance_id()}"
        self._closed = False
        # execute_many's ops built and sent in C (``_NativeWriter``), or None: the binding's way.
        self._native = _NativeWriter.attach(self._ioctx)

    @property
    def sends_record_keys(self) -> bool:
        """True: ``execute_many`` makes an ``index.RecordOp``'s data keys itself (in C), so the
        index hands it the records instead of a dict of keys."""
        return self._native is not None and not self._closed

    def __repr__(self) -> str:
        return f"RadosStore(pool={self._pool!r}, namespace={self._namespace!r}, conffile={self._conffile!r})"

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except rados.Error as ex:
            raise _general(_errno(ex), what, str(ex)) from ex

    # -- writes ----------------------------------------------------------------------------

    def _build(self, op: WriteOp) -> rados.WriteOp:
        """A librados write op for ``op``; the caller releases it. Guards come first, in the
        order the sqlite backend checks them, so both report the same error first."""
        check_op(op)
        ioctx = self._ioctx
        wop = rados.WriteOp().create()
        try:
            if op.must_exist:
                wop.omap_cmp("", "", rados.LIBRADOS_CMPXATTR_OP_EQ)
            else:
                wop.new(
                    rados.LIBRADOS_CREATE_EXCLUSIVE
                    if op.create_exclusive
                    else rados.LIBRADOS_CREATE_IDEMPOTENT
                )
            if op.fence is not None:
                wop.execute("lock", "assert_locked", assert_locked_payload(op.fence))
            for key, cmp, given in op.asserts:
                wop.omap_cmp(key, _cmp_value(given), _OMAP_CMP[cmp])
            if op.remove:
                ioctx.remove_omap_keys(wop, tuple(op.remove))
            for begin, end in op.remove_ranges:
                ioctx.remove_omap_range2(wop, begin, end)
            sets = op.set
            data_set = getattr(op, "data_set", None)  # index.RecordOp: its data keys, made here
            if data_set is not None:
                sets = {**sets, **data_set()}
            if sets:
                ioctx.set_omap(wop, tuple(sets), tuple(sets.values()))
        except BaseException:
            wop.release()
            raise
        return wop

    def execute(self, oid: str, op: WriteOp) -> None:
        wop = self._build(op)
        try:
            self._ioctx.operate_write_op(wop, oid)
        except rados.Error as ex:
            raise _write_error(_errno(ex), oid, op, str(ex)) from ex
        finally:
            wop.release()

    def execute_many(self, ops: Iterable[tuple[str, WriteOp]]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        # (index, oid, op, the binding's op and completion, or None and the native one's).
        inflight: deque[tuple[int, str, WriteOp, rados.WriteOp | None, Any]] = deque()
        ioctx = self._ioctx
        native = self._native if not self._closed else None

        def reap() -> None:
            index, oid, op, wop, completion = inflight.popleft()
            if wop is None:
                assert native is not None
                code = native.wait(completion)
            else:
                try:
                    completion.wait_for_complete()
                    code = completion.get_return_value()
                finally:
                    wop.release()
            if code < 0:
                detail = f"[errno {-code}] {errno.errorcode.get(-code, '?')}"
                results[index] = _write_error(-code, oid, op, detail)

        try:
            # ``ops`` may be a generator: each op leaves as soon as it is built.
            for oid, op in ops:
                index = len(results)
                results.append(None)
                if native is not None:
                    try:
                        sent = native.send(oid, op)
                    except ChangelogError as ex:
                        results[index] = ex
                        continue
                    if sent is not None:
                        code, pending = sent
                        if code < 0:
                            detail = f"[errno {-code}] Failed to operate aio write op for oid {oid}"
                            results[index] = _write_error(-code, oid, op, detail)
                            continue
                        inflight.append((index, oid, op, None, pending))
                        if len(inflight) >= AIO_WINDOW:
                            reap()
                        continue
                try:
                    wop = self._build(op)
                except ChangelogError as ex:
                    results[index] = ex
                    continue
                try:
                    completion = ioctx.operate_aio_write_op(wop, oid)
                except rados.Error as ex:
                    wop.release()
                    results[index] = _write_error(_errno(ex), oid, op, str(ex))
                    continue
                inflight.append((index, oid, op, wop, completion))
                if len(inflight) >= AIO_WINDOW:
                    reap()
        finally:
            # Never leave an op in flight behind us: its buffers belong to us.
            while inflight:
                reap()
        return results

    # -- reads -----------------------------------------------------------------------------

    def omap_page(
        self,
        oid: str,
        *,
        start_after: str = "",
        end_before: str | None = None,
        prefix: str = "",
        limit: int = 1000,
    ) -> list[tuple[str, bytes]]:
        if limit <= 0:
            return []
        out: list[tuple[str, bytes]] = []
        try:
            with rados.ReadOpCtx() as rop:
                pairs, _ = self._ioctx.get_omap_vals(rop, start_after, prefix, limit)
                self._ioctx.operate_read_op(rop, oid)
                for key, value in pairs:
                    if end_before is not None and key >= end_before:
                        break
                    out.append((key, value or b""))
        except rados.ObjectNotFound:
            return []
        except rados.Error as ex:
            raise _general(_errno(ex), f"read {oid}", str(ex)) from ex
        return out

    def omap_get(self, oid: str, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for i in range(0, len(unique), BY_KEYS_CHUNK):
                with rados.ReadOpCtx() as rop:
                    pairs, _ = self._ioctx.get_omap_vals_by_keys(rop, tuple(unique[i : i + BY_KEYS_CHUNK]))
                    self._ioctx.operate_read_op(rop, oid)
                    out.update((key, value or b"") for key, value in pairs)
        except rados.ObjectNotFound:
            return {}
        except rados.Error as ex:
            raise _general(_errno(ex), f"read {oid}", str(ex)) from ex
        return out

    def list_objects(self, prefix: str = "") -> list[str]:
        with self._translate(f"list pool {self._pool!r}"):
            return sorted(obj.key for obj in self._ioctx.list_objects() if obj.key.startswith(prefix))

    def remove_object(self, oid: str) -> None:
        try:
            self._ioctx.remove_object(oid)
        except rados.ObjectNotFound:
            pass
        except rados.Error as ex:
            raise _general(_errno(ex), f"remove {oid}", str(ex)) from ex

    # -- locks -----------------------------------------------------------------------------

    def lock(
        self,
        oid: str,
        ref: LockRef,
        *,
        duration: float,
        description: str = "",
        renew: bool = False,
    ) -> None:
        if duration < 0:
            raise PermanentError(f"negative lock duration {duration}")
        # cls_lock "lock" called directly, not Ioctx.lock_exclusive: the binding leaves the
        # timeval's tv_usec uninitialised, which added a random 0.9-2.4 s (unbounded in
        # principle) to every lock's duration here.
        wop = rados.WriteOp().create()
        try:
            flags = LOCK_FLAG_MUST_RENEW if renew else LOCK_FLAG_MAY_RENEW
            wop.execute("lock", "lock", lock_payload(ref, description, duration, flags))
            self._ioctx.operate_write_op(wop, oid)
        except rados.Error as ex:
            code = _errno(ex)
            if renew and code in (errno.ENOENT, errno.EBUSY):
                raise LeaseLost(f"{oid}: lock {ref.name!r} is no longer held by {ref.cookie!r}") from ex
            if code == errno.EBUSY:
                raise LockBusy(f"{oid}: lock {ref.name!r} is held by another client") from ex
            raise _general(code, f"lock {oid}", str(ex)) from ex
        finally:
            wop.release()

    def unlock(self, oid: str, ref: LockRef) -> None:
        try:
            self._ioctx.unlock(oid, ref.name, ref.cookie)
        except rados.Error as ex:
            code = _errno(ex)
            if code == errno.ENOENT:
                raise LeaseLost(f"{oid}: lock {ref.name!r} is not held by {ref.cookie!r}") from ex
            raise _general(code, f"unlock {oid}", str(ex)) from ex

    def lock_info(self, oid: str, name: str) -> LockInfo | None:
        try:
            _, reply = self._ioctx.execute(oid, "lock", "get_info", _encode_struct(_encode_str(name)))
        except rados.ObjectNotFound:
            return None
        except rados.Error as ex:
            raise _general(_errno(ex), f"lock info {oid}", str(ex)) from ex
        try:
            return decode_lock_info(name, bytes(reply))
        except (ValueError, IndexError) as ex:
            raise PermanentError(f"{oid}: cannot decode cls_lock get_info reply: {ex}") from ex

    def break_lock(self, oid: str, info: LockInfo) -> bool:
        wop = rados.WriteOp().create()  # allocates the op (not an object create)
        try:
            wop.execute("lock", "break_lock", break_payload(info))
            self._ioctx.operate_write_op(wop, oid)
        except rados.Error as ex:
            code = _errno(ex)
            if code == errno.ENOENT:  # that locker no longer holds it (or no object, no lock)
                return False
            raise _general(code, f"break lock {oid}", str(ex)) from ex
        finally:
            wop.release()
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ioctx.close()
        finally:
            self._cluster.shutdown()


# -- bucket index omap reads -------------------------------------------------------------------
#
# radosgw's bucket index keys are binary: a versioned instance entry is
# ``b"\x801000_" + name + b"\0i" + instance``. The binding cannot carry them: it passes keys as C
# strings (cut at the NUL) and decodes the keys it returns as UTF-8 (UnicodeDecodeError on 0x80),
# both checked with python3-rados 16.2.15. So these reads call librados' C API through ctypes,
# with the length-carrying variants (``rados_read_op_omap_get_vals_by_keys2``,
# ``rados_omap_get_next2``, in librados since Nautilus), on a client of their own.


def _load_librados() -> ctypes.CDLL:
    path = ctypes.util.find_library("rados") or "librados.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as ex:
        raise PermanentError(f"cannot load librados ({path}): {ex}") from ex
    vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    for name, args in {
        "rados_create2": [ctypes.POINTER(vp), cp, cp, ctypes.c_uint64],
        "rados_conf_read_file": [vp, cp],
        "rados_conf_set": [vp, cp, cp],
        "rados_connect": [vp],
        "rados_shutdown": [vp],
        "rados_ioctx_create": [vp, cp, ctypes.POINTER(vp)],
        "rados_ioctx_destroy": [vp],
        "rados_create_read_op": [],
        "rados_release_read_op": [vp],
        "rados_read_op_omap_get_vals_by_keys2": [
            vp, ctypes.POINTER(cp), sz, ctypes.POINTER(sz), ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_int),
        ],
        "rados_read_op_omap_get_vals2": [
            vp, cp, cp, ctypes.c_uint64, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_ubyte),
            ctypes.POINTER(ctypes.c_int),
        ],
        "rados_read_op_operate": [vp, vp, cp, ctypes.c_int],
        "rados_omap_get_next2": [
            vp, ctypes.POINTER(vp), ctypes.POINTER(vp), ctypes.POINTER(sz), ctypes.POINTER(sz),
        ],
        "rados_omap_get_end": [vp],
    }.items():
        fn = getattr(lib, name, None)
        if fn is None:
            raise PermanentError(f"librados ({path}) lacks {name} (Nautilus or later is needed)")
        fn.argtypes = args
        fn.restype = None if name in ("rados_shutdown", "rados_ioctx_destroy", "rados_release_read_op",
                                      "rados_omap_get_end") else (vp if name == "rados_create_read_op"
                                                                  else ctypes.c_int)
    return lib


def _fast_omap_get() -> Callable[..., tuple[int, int, dict[bytes, bytes] | None]] | None:
    """``_speedups.omap_get_keys``, or None where it is not built or RGW_CHANGELOG_PURE_PYTHON=1
    asks for the ctypes loop (tests/unit/test_omap_reader.py runs both)."""
    got: Callable[..., tuple[int, int, dict[bytes, bytes] | None]] | None = speedup("omap_get_keys")
    return got


class OmapReader:
    """Reads omap values by (binary) keys from objects of any pool of a cluster: the bucket
    index read of ``rgw_module.bucket_index``. Thread-safe (librados is; ctypes releases the GIL
    during each call). I/O contexts are opened per pool on first use and kept."""

    def __init__(
        self,
        *,
        conffile: str,
        keyring: str | None = None,
        client_name: str = "client.admin",
        connect_timeout: float = 10,
        op_timeout: float = 30,
    ) -> None:
        self._lib = _load_librados()
        self._where = f"Ceph ({conffile}, {client_name})"
        self._ioctxs: dict[str, ctypes.c_void_p] = {}
        self._lock = threading.Lock()
        conf = client_conf(connect_timeout, op_timeout, keyring)
        cluster = ctypes.c_void_p()
        name = client_name.encode()
        self._check(self._lib.rados_create2(ctypes.byref(cluster), b"ceph", name, 0), "create client")
        self._cluster = cluster
        try:
            self._check(self._lib.rados_conf_read_file(cluster, conffile.encode()), f"read {conffile}")
            for key, value in conf.items():
                self._check(self._lib.rados_conf_set(cluster, key.encode(), value.encode()), f"set {key}")
            self._check(self._lib.rados_connect(cluster), "connect", connecting=True)
        except BaseException:
            self._lib.rados_shutdown(cluster)
            raise
        self._closed = False
        # The read op in C (``_speedups.omap_get_keys``) through these librados functions: the
        # per-key ctypes calls of ``_read`` cost ~3 us a key, most of the follower's index read.
        self._fast = _fast_omap_get()
        self._functions = tuple(
            ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value or 0
            for name in (
                "rados_create_read_op", "rados_release_read_op", "rados_read_op_omap_get_vals_by_keys2",
                "rados_read_op_operate", "rados_omap_get_next2", "rados_omap_get_end",
            )
        )

    def __repr__(self) -> str:
        return f"OmapReader({self._where})"

    def _check(self, ret: int, what: str, *, connecting: bool = False) -> None:
        if ret >= 0:
            return
        code = -ret
        message = f"{what} on {self._where}: {os.strerror(code)}"
        if connecting and code in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL):
            raise PermanentError(f"cannot connect: {message}")
        raise _general(code, what, f"{self._where}: {os.strerror(code)}")

    def _ioctx(self, pool: str) -> ctypes.c_void_p:
        with self._lock:
            if self._closed:
                raise PermanentError(f"{self!r} is closed")
            io = self._ioctxs.get(pool)
            if io is None:
                io = ctypes.c_void_p()
                ret = self._lib.rados_ioctx_create(self._cluster, pool.encode(), ctypes.byref(io))
                if ret == -errno.ENOENT:
                    raise PermanentError(f"{self._where}: no such pool {pool!r}")
                self._check(ret, f"open pool {pool!r}")
                self._ioctxs[pool] = io
            return io

    def get(self, pool: str, oid: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values of those of ``keys`` that ``oid`` holds; {} if the object does not exist.
        One read op per BY_KEYS_CHUNK keys."""
        unique = list(dict.fromkeys(keys))
        out: dict[bytes, bytes] = {}
        io = self._ioctx(pool)
        fast = self._fast
        if fast is not None and all(k.__class__ is bytes for k in unique):
            name = oid.encode()
            for i in range(0, len(unique), BY_KEYS_CHUNK):
                ret, rval, page = fast(self._functions, io.value or 0, name, unique[i : i + BY_KEYS_CHUNK])
                if ret == -errno.ENOENT:
                    return {}
                self._check(ret, f"read {oid}")
                self._check(rval, f"read omap of {oid}")
                if page is None:  # the iteration failed: ret says how (checked above)
                    raise _general(None, f"read {oid}", f"{self._where}: the omap iteration failed")
                out.update(page)
            return out
        for i in range(0, len(unique), BY_KEYS_CHUNK):
            chunk = unique[i : i + BY_KEYS_CHUNK]
            arr = (ctypes.c_char_p * len(chunk))(*chunk)
            lens = (ctypes.c_size_t * len(chunk))(*(len(k) for k in chunk))

            def add(op: ctypes.c_void_p, it: ctypes.c_void_p, rval: ctypes.c_int,
                    arr: Array[ctypes.c_char_p] = arr, lens: Array[ctypes.c_size_t] = lens, n: int = len(chunk)) -> None:
                self._lib.rados_read_op_omap_get_vals_by_keys2(op, arr, n, lens, ctypes.byref(it), ctypes.byref(rval))

            page = self._read(io, oid, add)
            if page is None:
                return {}
            out.update(page)
        return out

    def page(self, pool: str, oid: str, start_after: bytes = b"", limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` keys and values after ``start_after`` (captures and tests); [] if the
        object does not exist. ``start_after`` cannot hold a NUL (a C string in librados)."""
        io = self._ioctx(pool)

        def add(op: ctypes.c_void_p, it: ctypes.c_void_p, rval: ctypes.c_int) -> None:
            more = ctypes.c_ubyte()
            self._lib.rados_read_op_omap_get_vals2(op, start_after, b"", limit, ctypes.byref(it),
                                                   ctypes.byref(more), ctypes.byref(rval))

        return list((self._read(io, oid, add) or {}).items())

    def _read(self, io: ctypes.c_void_p, oid: str, add: Callable[..., None]) -> dict[bytes, bytes] | None:
        lib = self._lib
        op = ctypes.c_void_p(lib.rados_create_read_op())
        it = ctypes.c_void_p()
        rval = ctypes.c_int(0)
        out: dict[bytes, bytes] = {}
        try:
            add(op, it, rval)
            ret = lib.rados_read_op_operate(op, io, oid.encode(), 0)
            if ret == -errno.ENOENT:
                return None
            self._check(ret, f"read {oid}")
            self._check(rval.value, f"read omap of {oid}")
            # The pointers, their references and the functions are made once, not per key: this
            # loop runs for every key the follower reads (one per write it records).
            key = ctypes.c_void_p()
            val = ctypes.c_void_p()
            klen, vlen = ctypes.c_size_t(), ctypes.c_size_t()
            refs = (ctypes.byref(key), ctypes.byref(val), ctypes.byref(klen), ctypes.byref(vlen))
            step, string_at = lib.rados_omap_get_next2, ctypes.string_at
            try:
                while True:
                    r = step(it, *refs)
                    if r < 0:
                        self._check(r, f"read {oid}")
                    if not key.value:
                        break
                    out[string_at(key.value, klen.value)] = string_at(val.value, vlen.value) if val.value else b""
            finally:
                if it:
                    lib.rados_omap_get_end(it)
        finally:
            lib.rados_release_read_op(op)
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for io in self._ioctxs.values():
                self._lib.rados_ioctx_destroy(io)
            self._ioctxs.clear()
        self._lib.rados_shutdown(self._cluster)


# -- whole small objects -------------------------------------------------------------------------


class SmallObjectReader:
    """Whole small objects of one pool, through a client of its own: a few reads made once
    (radosgw's zonegroup in ``.rgw.root``, ``rgw_module.zonegroup``). A context manager; the
    client is shut down on leaving it."""

    def __init__(
        self,
        *,
        conffile: str,
        pool: str,
        keyring: str | None = None,
        client_name: str = "client.admin",
        connect_timeout: float = 10,
        limit: int = 1 << 20,
    ) -> None:
        self._where = f"Ceph ({conffile}, {client_name}, pool {pool!r})"
        self._limit = limit
        try:
            self._cluster = rados.Rados(
                conffile=conffile, conf=client_conf(connect_timeout, connect_timeout, keyring), name=client_name
            )
            self._cluster.connect(timeout=max(1, math.ceil(connect_timeout)))
        except rados.Error as ex:
            raise _general(_errno(ex), "connect", f"{self._where}: {ex}") from ex
        try:
            self._ioctx = self._cluster.open_ioctx(pool)
        except rados.Error as ex:
            self._cluster.shutdown()
            if _errno(ex) == errno.ENOENT:
                raise PermanentError(f"{self._where}: no such pool") from ex
            raise _general(_errno(ex), "open pool", f"{self._where}: {ex}") from ex

    def read(self, oids: Iterable[str]) -> dict[str, bytes | None]:
        """The data of each of ``oids`` (None: no such object), up to ``limit`` bytes each."""
        out: dict[str, bytes | None] = {}
        for oid in oids:
            try:
                out[oid] = bytes(self._ioctx.read(oid, self._limit))
            except rados.ObjectNotFound:
                out[oid] = None
            except rados.Error as ex:
                raise _general(_errno(ex), f"read {oid}", f"{self._where}: {ex}") from ex
        return out

    def close(self) -> None:
        self._ioctx.close()
        self._cluster.shutdown()

    def __enter__(self) -> SmallObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
