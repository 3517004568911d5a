"""The object store interface under the index: RADOS objects with omap, guarded atomic write
ops and cls_lock leases. ``backends/rados.py`` implements it on a real cluster and
``backends/sqlite.py`` on an embedded file; both pass ``tests/contract``.

Only the subset the project needs is modelled, with RADOS semantics (as measured on Pacific
16.2.15; ``tests/contract`` pins every point on both backends):

* a ``WriteOp`` is applied atomically to one object: all of it or nothing. Its guards are checked
  in this order, the first failure wins: ``must_exist`` (``ObjectMissing``), ``create_exclusive``
  (``CompareFailed``), ``fence`` (``LeaseLost``), ``asserts`` (``CompareFailed``). Then
  ``remove``, ``remove_ranges`` and ``set`` apply, in that order.
* ``asserts`` hold when ``stored <op> given``. **An asserted key that is absent compares as the
  empty value** (as on RADOS): "create only if absent" is ``(key, Cmp.EQ, "")``, and
  ``(key, Cmp.LT, x)`` holds on an absent key for any non-empty ``x``. Only ``EQ``, ``LT`` and
  ``GT`` exist on the OSD: ``NE``, ``GTE`` and ``LTE`` are refused with ``PermanentError``.
  Values are compared byte-wise as **signed** chars (Ceph's bufferlist order): plain string
  order for ASCII, but bytes >= 0x80 sort below ASCII, so keep compared values ASCII
  (``Cmp.holds`` agrees with the stores for ASCII only).
* ``fence`` asserts that the exclusive lock ``fence.name`` on the *same object* is held, not
  expired, by ``fence.cookie`` from this store; otherwise the op fails with ``LeaseLost``.
* omap keys are non-empty and NUL-free (RADOS cuts a key at NUL and cannot page to ``""``;
  other keys are refused with ``PermanentError``) and sort as unsigned bytes; values are any bytes.
* applying an op creates the object if needed (unless ``must_exist``); so does ``lock``.
* locks are held by (store instance, cookie): on RADOS the instance is the client (``client.N``),
  so another process, or a reconnected client, using the same cookie is another holder.
  ``lock`` takes the lock or, if this holder already has it, extends it to now + ``duration``
  (cls_lock MAY_RENEW; a plain re-lock would be EEXIST). ``renew=True`` only extends, and raises
  ``LeaseLost`` when the lock is not ours any more: expired (even if nobody took it), taken or
  released (MUST_RENEW). ``unlock`` of a lock not ours raises ``LeaseLost``. Expiry is exact
  (sub-second durations work) on the store's wall clock; ``duration=0`` never expires.
* ``break_lock`` removes another holder's lock (cls_lock ``break_lock``), but only the very
  holder and cookie a ``lock_info`` reported: if the lock expired, was released or changed hands
  since, nothing is removed (False). ``changelog.pipeline.lease`` uses it on a lock whose holder
  is a process of this host that no longer exists.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Cmp(enum.IntEnum):
    """How a stored value must compare with the given one: ``stored <op> given``."""

    EQ = 1
    NE = 2
    GT = 3
    GTE = 4
    LT = 5
    LTE = 6

    def holds(self, stored: str, given: str) -> bool:
        s, g = stored.encode(), given.encode()
        match self:
            case Cmp.EQ:
                return s == g
            case Cmp.NE:
                return s != g
            case Cmp.GT:
                return s > g
            case Cmp.GTE:
                return s >= g
            case Cmp.LT:
                return s < g
            case Cmp.LTE:
                return s <= g
        raise AssertionError(self)


@dataclass(frozen=True, slots=True)
class LockRef:
    """An exclusive cls_lock held under ``name`` by ``cookie`` (unique per holder)."""

    name: str
    cookie: str


@dataclass(frozen=True, slots=True)
class LockInfo:
    name: str
    cookie: str
    holder: str  # client identity (RADOS: "client.4123"; sqlite: host:pid)
    description: str
    expires_at: float | None  # wall-clock seconds; None = never


@dataclass(slots=True)
class WriteOp:
    asserts: list[tuple[str, Cmp, str]] = field(default_factory=list)
    fence: LockRef | None = None
    set: dict[str, bytes] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    # [begin, end): end excluded, applied before ``set``.
    remove_ranges: list[tuple[str, str]] = field(default_factory=list)
    must_exist: bool = False
    create_exclusive: bool = False

    def is_empty(self) -> bool:
        return not (self.set or self.remove or self.remove_ranges or self.create_exclusive)


class ObjectStore(Protocol):
    """RADOS-like objects with omap. Every method may raise ``TransientError`` on I/O trouble."""

    def execute(self, oid: str, op: WriteOp) -> None:
        """Apply ``op`` atomically. Raises ``CompareFailed`` (an assert failed, or
        ``create_exclusive`` on an existing object), ``LeaseLost`` (fence not held) or
        ``ObjectMissing`` (``must_exist`` on a missing object)."""
        ...

    def execute_many(self, ops: Iterable[tuple[str, WriteOp]]) -> list[BaseException | None]:
        """Apply several ops concurrently (RADOS: aio); one result per op, in order.

        ``ops`` may be a generator: each op is sent as soon as it is produced, so building the
        next one overlaps the store's work on the previous ones. An exception raised by the
        generator propagates after the ops already sent have completed."""
        ...

    def omap_page(
        self,
        oid: str,
        *,
        start_after: str = "",
        end_before: str | None = None,
        prefix: str = "",
        limit: int = 1000,
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` omap pairs in key order, keys > start_after, < end_before and with
        ``prefix``. A short (even empty) page does not by itself mean the end: callers page until
        an empty page. A missing object reads as empty."""
        ...

    def omap_get(self, oid: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those keys that exist."""
        ...

    def lock(
        self,
        oid: str,
        ref: LockRef,
        *,
        duration: float,
        description: str = "",
        renew: bool = False,
    ) -> None:
        """Take (or with ``renew``, extend to now+duration) an exclusive lock.
        Raises ``LockBusy`` if another cookie holds it, ``LeaseLost`` if ``renew`` and we no
        longer hold it."""
        ...

    def unlock(self, oid: str, ref: LockRef) -> None:
        """Release; ``LeaseLost`` if not held by ``ref``."""
        ...

    def lock_info(self, oid: str, name: str) -> LockInfo | None:
        ...

    def break_lock(self, oid: str, info: LockInfo) -> bool:
        """Remove the lock ``info.name`` if it is still held, unexpired, by ``info.holder`` with
        ``info.cookie`` (as ``lock_info`` reported it). True if removed; False if that holder no
        longer has it (expired, released, or taken by another since)."""
        ...

    def remove_object(self, oid: str) -> None:
        """Delete the object (missing is fine)."""
        ...

    def list_objects(self, prefix: str = "") -> list[str]:
        ...

    def close(self) -> None:
        ...


def omap_iter(
    store: ObjectStore,
    oid: str,
    *,
    start_after: str = "",
    end_before: str | None = None,
    prefix: str = "",
    page: int = 1000,
) -> Iterator[tuple[str, bytes]]:
    """Every pair in range, paged (never the whole omap in memory)."""
    after = start_after
    while True:
        batch = store.omap_page(oid, start_after=after, end_before=end_before, prefix=prefix, limit=page)
        if not batch:
            return
        yield from batch
        after = batch[-1][0]

