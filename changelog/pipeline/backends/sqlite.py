"""The embedded object store: RADOS objects, omap and cls_lock leases in one sqlite file.

It is the default store when there is no cluster, and the store of the unit tests. Several
processes may open the same file: the file is in WAL mode, every write runs in a
``BEGIN IMMEDIATE`` transaction (one writer at a time, readers never block) and waits up to
``busy_timeout`` for the write lock. Lock expiry uses the wall clock (``clock``), which all
processes of one host share.

Durability: ``synchronous=NORMAL`` by default. In WAL mode that means a committed transaction
survives a crash of the process but may be lost (never half-applied) on a power loss or OS crash,
because the WAL is fsynced at checkpoints, not at each commit. That buys ~220-290k omap keys/s
for ops of 1000 keys on the project box (and keeps the index's tiny ops cheap); pass
``synchronous="FULL"`` to fsync every commit.

Semantics are those of the RADOS backend, checked by ``tests/contract``, including the order in
which a write op's guards are evaluated (``must_exist``, ``create_exclusive``, ``fence``,
``asserts``), the value order of comparisons (signed bytes) and the restrictions RADOS imposes
(EQ/LT/GT comparisons only, keys non-empty and NUL-free); see ``changelog.pipeline.store``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

from changelog.errors import (
    ChangelogError,
    CompareFailed,
    LeaseLost,
    LockBusy,
    ObjectMissing,
    PermanentError,
    TransientError,
)
from changelog.pipeline.backends import check_op
from changelog.pipeline.store import Cmp, LockInfo, LockRef, WriteOp

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    oid TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS omap (
    obj INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (obj, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locks (
    oid TEXT NOT NULL,
    name TEXT NOT NULL,
    cookie TEXT NOT NULL,
    holder TEXT NOT NULL,
    description TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (oid, name)
) WITHOUT ROWID;
"""
# Omap rows name their object by a small integer, not by its name: shorter rows and cheaper key
# comparisons make bulk inserts ~20% faster. 8 KiB pages hold ~30 index entries of ~270 bytes
# (fewer splits than 4 KiB) without making small commits write much more WAL.
_PAGE_SIZE = 8192
# SQLite's default limit on host parameters is 32766 since 3.32; stay far below it.
_IN_CHUNK = 500
_MAX_CHAR = chr(0x10FFFF)
# Omap sets: one statement of _SET_ROWS rows (parameters ?1 = object, then key, value pairs).
_SET_ROWS = 64
_SET_ONE = "INSERT OR REPLACE INTO omap (obj, key, value) VALUES (?, ?, ?)"
_SET_MANY = "INSERT OR REPLACE INTO omap (obj, key, value) VALUES " + ", ".join(
    f"(?1, ?{2 * j + 2}, ?{2 * j + 3})" for j in range(_SET_ROWS)
)


# The OSD compares omap values as strings of *signed* chars (bufferlist's operator<): bytes
# 0x80-0xff sort below 0x00-0x7f. Flipping the top bit turns that order into plain byte order.
_SIGNED_ORDER = bytes(b ^ 0x80 for b in range(256))


def _holds(cmp: Cmp, stored: bytes, given: bytes) -> bool:
    """``stored <cmp> given`` as RADOS omap_cmp decides it."""
    if cmp is Cmp.EQ:
        return stored == given
    s, g = stored.translate(_SIGNED_ORDER), given.translate(_SIGNED_ORDER)
    if cmp is Cmp.LT:
        return s < g
    if cmp is Cmp.GT:
        return s > g
    raise PermanentError(f"unsupported comparison {cmp!r}")


def _successor(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(_MAX_CHAR)
    if not stripped:
        return None
    code = ord(stripped[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be encoded; UTF-8 order skips them too
        code = 0xE000
    return stripped[:-1] + chr(code)


def _lock_duration(duration: float) -> float | None:
    """As cls_lock: a duration of 0 means "never expires"."""
    if duration < 0:
        raise PermanentError(f"negative lock duration {duration}")
    return duration if duration > 0 else None


def _translate(ex: sqlite3.Error, what: str) -> ChangelogError:
    text = str(ex)
    if isinstance(ex, sqlite3.OperationalError) and any(
        word in text for word in ("locked", "busy", "disk I/O", "interrupted")
    ):
        return TransientError(f"sqlite {what}: {text}")
    return PermanentError(f"sqlite {what}: {text}")


class SqliteStore:
    """``ObjectStore`` on a sqlite file; one connection per thread (and per process after fork).

    A lock belongs to the store instance that took it and its cookie, as a cls_lock belongs to a
    RADOS client instance and its cookie: ``holder`` is ``host:pid:instance``, so a second
    ``SqliteStore`` (or a forked child) is another holder, like a second RADOS connection.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self._path = path
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._local = threading.local()
        self._conns: dict[int, sqlite3.Connection] = {}  # by thread ident, for close()
        self._pid = os.getpid()
        self._conns_lock = threading.Lock()
        self._closed = False
        self._host = socket.gethostname()
        self._instance = uuid.uuid4().hex[:8]
        conn = self._conn()
        with self._guard("open"):
            # Changing the journal mode needs the file to itself: do it only when needed. The page
            # size only takes effect on a new file, before WAL mode is set.
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
                conn.execute("PRAGMA journal_mode=WAL")
            with self._transaction(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, _SCHEMA_VERSION):
                    raise PermanentError(
                        f"{path}: store schema version {version}, expected {_SCHEMA_VERSION}"
                    )
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

    # The index hands this store its record ops' records (``index.RecordOp``), not a dict of
    # keys: ``_apply`` binds them as the flat rows ``RecordOp.data_rows`` makes (in C where built).
    sends_record_keys = True

    @property
    def holder(self) -> str:
        return f"{self._host}:{os.getpid()}:{self._instance}"

    # -- plumbing --------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise PermanentError(f"{self!r} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except sqlite3.Error as ex:
            raise _translate(ex, f"open {self._path}") from ex
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._conns_lock:
            if self._pid != os.getpid():
                # Forked: the parent's connections are not ours to use or close.
                self._pid, self._conns = os.getpid(), {}
            # Close the connections of threads that have ended, so short-lived threads do not
            # pile up open files.
            alive = {t.ident for t in threading.enumerate()}
            for ident in [i for i in self._conns if i not in alive]:
                with contextlib.suppress(sqlite3.Error):
                    self._conns.pop(ident).close()
            self._conns[threading.get_ident()] = conn
        return conn

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as ex:
            raise _translate(ex, what) from ex

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A write transaction: takes the file's write lock up front, so it never deadlocks
        upgrading a read lock and never sees data change under its checks."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # some errors (e.g. SQLITE_FULL) already rolled it back
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self, what: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        conn = self._conn()

        @contextlib.contextmanager
        def scope() -> Iterator[sqlite3.Connection]:
            with self._guard(what), self._transaction(conn):
                yield conn

        return scope()

    def _object_id(self, conn: sqlite3.Connection, oid: str) -> int | None:
        row = conn.execute("SELECT id FROM objects WHERE oid = ?", (oid,)).fetchone()
        return None if row is None else int(row[0])

    def _live_lock(
        self, conn: sqlite3.Connection, oid: str, name: str, now: float
    ) -> tuple[str, str, str, float | None] | None:
        row = conn.execute(
            "SELECT cookie, holder, description, expires_at FROM locks WHERE oid = ? AND name = ?",
            (oid, name),
        ).fetchone()
        if row is None or (row[3] is not None and row[3] < now):
            return None
        return row[0], row[1], row[2], row[3]

    def _held(self, conn: sqlite3.Connection, oid: str, ref: LockRef, now: float) -> bool:
        live = self._live_lock(conn, oid, ref.name, now)
        return live is not None and live[0] == ref.cookie and live[1] == self.holder

    # -- writes ----------------------------------------------------------------------------

    def execute(self, oid: str, op: WriteOp) -> None:
        check_op(op)
        with self._write(f"write {oid}") as conn:
            self._apply(conn, oid, op)

    def _apply(self, conn: sqlite3.Connection, oid: str, op: WriteOp) -> None:
        obj = self._object_id(conn, oid)
        if op.must_exist and obj is None:
            raise ObjectMissing(f"{oid}: no such object")
        if op.create_exclusive and obj is not None:
            raise CompareFailed(f"{oid}: object exists")
        if op.fence is not None and not self._held(conn, oid, op.fence, self._clock()):
            raise LeaseLost(f"{oid}: lock {op.fence.name!r} not held by {op.fence.cookie!r}")
        if op.asserts:
            stored = {} if obj is None else self._get(conn, obj, [key for key, _, _ in op.asserts])
            for key, cmp, given in op.asserts:
                # An absent key compares as the empty value, as on RADOS.
                if not _holds(cmp, stored.get(key, b""), given.encode()):
                    raise CompareFailed(f"{oid}: assert {key!r} {cmp.name} {given!r} failed")
        if obj is None:
            obj = self._create(conn, oid)
        if op.remove:
            conn.executemany(
                "DELETE FROM omap WHERE obj = ? AND key = ?", zip(itertools.repeat(obj), op.remove)
            )
        for begin, end in op.remove_ranges:
            conn.execute("DELETE FROM omap WHERE obj = ? AND key >= ? AND key < ?", (obj, begin, end))
        data_rows = getattr(op, "data_rows", None)  # index.RecordOp: its data keys, made here
        if op.set or data_rows is not None:
            flat: list[str | bytes] = list(itertools.chain.from_iterable(op.set.items()))
            if data_rows is not None:
                flat += data_rows()
            self._set(conn, obj, flat)

    @staticmethod
    def _set(conn: sqlite3.Connection, obj: int, flat: list[str | bytes]) -> None:
        """``INSERT OR REPLACE`` of every pair of ``flat`` ([key, value, key, value, ...]):
        ``_SET_ROWS`` rows per statement while there are that many (an index op sets ~1000
        keys; one statement per row costs ~15% more CPU), then one row per statement. Rows go
        in order, so a later pair wins, as before."""
        n = len(flat) // 2
        full = n - n % _SET_ROWS
        step = 2 * _SET_ROWS
        for i in range(0, 2 * full, step):
            conn.execute(_SET_MANY, [obj, *flat[i : i + step]])
        if full < n:
            rest = flat[2 * full :]
            conn.executemany(_SET_ONE, [(obj, rest[i], rest[i + 1]) for i in range(0, len(rest), 2)])

    def _create(self, conn: sqlite3.Connection, oid: str) -> int:
        cursor = conn.execute("INSERT INTO objects (oid) VALUES (?)", (oid,))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def execute_many(self, ops: Iterable[tuple[str, WriteOp]]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for oid, op in ops:
            try:
                self.execute(oid, op)
            except ChangelogError as ex:
                results.append(ex)
            else:
                results.append(None)
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
        # Keyset pagination on the (obj, key) primary key: a range scan, never the whole object.
        sql = "SELECT key, value FROM omap WHERE obj = (SELECT id FROM objects WHERE oid = ?)"
        params: list[str | int] = [oid]
        if prefix > start_after:
            sql += " AND key >= ?"
            params.append(prefix)
        else:
            sql += " AND key > ?"
            params.append(start_after)
        bounds = [b for b in (end_before, _successor(prefix) if prefix else None) if b is not None]
        if bounds:
            sql += " AND key < ?"
            params.append(min(bounds))
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        conn = self._conn()
        with self._guard(f"read {oid}"):
            return [(key, bytes(value)) for key, value in conn.execute(sql, params)]

    def omap_get(self, oid: str, keys: Sequence[str]) -> dict[str, bytes]:
        conn = self._conn()
        with self._guard(f"read {oid}"):
            obj = self._object_id(conn, oid)
            return {} if obj is None else self._get(conn, obj, keys)

    def _get(self, conn: sqlite3.Connection, obj: int, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _IN_CHUNK):
            chunk = unique[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT key, value FROM omap WHERE obj = ? AND key IN ({marks})", [obj, *chunk]
            )
            out.update((key, bytes(value)) for key, value in rows)
        return out

    def list_objects(self, prefix: str = "") -> list[str]:
        sql, params = "SELECT oid FROM objects WHERE oid >= ?", [prefix]
        upper = _successor(prefix) if prefix else None
        if upper is not None:
            sql += " AND oid < ?"
            params.append(upper)
        conn = self._conn()
        with self._guard("list objects"):
            return [oid for (oid,) in conn.execute(sql + " ORDER BY oid", params)]

    def remove_object(self, oid: str) -> None:
        with self._write(f"remove {oid}") as conn:
            obj = self._object_id(conn, oid)
            if obj is not None:
                conn.execute("DELETE FROM omap WHERE obj = ?", (obj,))
                conn.execute("DELETE FROM objects WHERE id = ?", (obj,))
            conn.execute("DELETE FROM locks WHERE oid = ?", (oid,))

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
        seconds = _lock_duration(duration)
        with self._write(f"lock {oid}") as conn:
            now = self._clock()
            live = self._live_lock(conn, oid, ref.name, now)
            mine = live is not None and live[0] == ref.cookie and live[1] == self.holder
            if renew and not mine:
                raise LeaseLost(f"{oid}: lock {ref.name!r} is no longer held by {ref.cookie!r}")
            if live is not None and not mine:
                raise LockBusy(f"{oid}: lock {ref.name!r} is held by {live[1]} ({live[0]!r})")
            conn.execute(
                "INSERT OR REPLACE INTO locks (oid, name, cookie, holder, description, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    oid,
                    ref.name,
                    ref.cookie,
                    self.holder,
                    description,
                    None if seconds is None else now + seconds,
                ),
            )
            if self._object_id(conn, oid) is None:  # cls_lock creates the object, too
                self._create(conn, oid)

    def unlock(self, oid: str, ref: LockRef) -> None:
        with self._write(f"unlock {oid}") as conn:
            if not self._held(conn, oid, ref, self._clock()):
                raise LeaseLost(f"{oid}: lock {ref.name!r} is not held by {ref.cookie!r}")
            conn.execute("DELETE FROM locks WHERE oid = ? AND name = ?", (oid, ref.name))

    def lock_info(self, oid: str, name: str) -> LockInfo | None:
        conn = self._conn()
        with self._guard(f"lock info {oid}"):
            live = self._live_lock(conn, oid, name, self._clock())
        if live is None:
            return None
        cookie, holder, description, expires_at = live
        return LockInfo(
            name=name, cookie=cookie, holder=holder, description=description, expires_at=expires_at
        )

    def break_lock(self, oid: str, info: LockInfo) -> bool:
        with self._write(f"break lock {oid}") as conn:
            live = self._live_lock(conn, oid, info.name, self._clock())
            if live is None or live[0] != info.cookie or live[1] != info.holder:
                return False
            conn.execute("DELETE FROM locks WHERE oid = ? AND name = ?", (oid, info.name))
            return True

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns = list(self._conns.values()) if self._pid == os.getpid() else []
            self._conns = {}
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
