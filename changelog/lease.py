"""Leases: an exclusive cls_lock on one object, renewed in the background, that knows when it
can no longer be trusted. Writes that must happen only under a lease pass ``lease.ref`` as the
``fence`` of their ``WriteOp``, so the OSD itself refuses them once the lock is gone
(docs/design.md §4)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from changelog.errors import LeaseLost, LockBusy, TransientError
from changelog.store import LockRef, ObjectStore

logger = logging.getLogger(__name__)


def make_cookie(tag: str = "") -> str:
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{tag}:{base}" if tag else base


class Lease:
    """An exclusive lease on ``oid``.

    The local deadline is ``monotonic() taken before the last successful lock call + ttl -
    margin``: the OSD's clock started no earlier than that, so while ``check()`` passes the
    lock is still ours. A background thread renews every ttl/3.
    """

    def __init__(
        self,
        store: ObjectStore,
        oid: str,
        *,
        name: str,
        ttl: float,
        description: str = "",
        cookie: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        if ttl < 1:
            raise ValueError(f"lease ttl must be at least 1 s, not {ttl}")
        self.store = store
        self.oid = oid
        self.ttl = float(ttl)
        self.description = description
        self.ref = LockRef(name, cookie or make_cookie())
        self._monotonic = monotonic
        self._on_lost = on_lost
        # Margin for RPC latency and the OSD's whole-second rounding.
        self.margin = max(0.5, self.ttl / 10)
        self._deadline: float | None = None
        self._lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.losses = 0

    def __repr__(self) -> str:
        return f"Lease({self.oid!r}, name={self.ref.name!r}, cookie={self.ref.cookie!r}, held={self.held})"

    @property
    def held(self) -> bool:
        with self._lock:
            return not self._lost and self._deadline is not None and self._monotonic() < self._deadline

    def remaining(self) -> float:
        with self._lock:
            if self._lost or self._deadline is None:
                return 0.0
            return max(0.0, self._deadline - self._monotonic())

    def acquire(self) -> bool:
        """Try once to take the lease (or extend it if we hold it). True if held now."""
        t0 = self._monotonic()
        holding = self.held
        try:
            self.store.lock(self.oid, self.ref, duration=self.ttl, description=self.description, renew=holding)
        except LockBusy:
            return False
        except LeaseLost:
            self._mark_lost("lost while re-acquiring")
            return False
        with self._lock:
            self._deadline = t0 + self.ttl - self.margin
            self._lost = False
        if not holding:
            logger.debug("lease %s on %s taken by %s", self.ref.name, self.oid, self.ref.cookie)
        return True

    def renew(self) -> None:
        if self._lost:
            raise LeaseLost(f"lease {self.ref.name} on {self.oid} was lost")
        t0 = self._monotonic()
        try:
            self.store.lock(self.oid, self.ref, duration=self.ttl, description=self.description, renew=True)
        except (LeaseLost, LockBusy) as ex:
            self._mark_lost(f"renew refused: {ex}")
            raise LeaseLost(f"lease {self.ref.name} on {self.oid} lost: {ex}") from ex
        except TransientError:
            if not self.held:
                self._mark_lost("renew failed past the deadline")
            raise
        with self._lock:
            if self._lost:
                raise LeaseLost(f"lease {self.ref.name} on {self.oid} was lost")
            self._deadline = t0 + self.ttl - self.margin
        self.renewals += 1

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is certainly still ours."""
        if not self.held:
            if not self._lost and self._deadline is not None:
                self._mark_lost("deadline passed without a renewal")
            raise LeaseLost(f"lease {self.ref.name} on {self.oid} is not held")

    def _mark_lost(self, why: str) -> None:
        with self._lock:
            if self._lost:
                return
            self._lost = True
            self._deadline = None
        self.losses += 1
        logger.warning("lease %s on %s lost (%s)", self.ref.name, self.oid, why)
        if self._on_lost is not None:
            self._on_lost(self)

    def start_renewing(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.ref.name}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        interval = self.ttl / 3
        wait = interval
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = interval
            except LeaseLost:
                return
            except TransientError as ex:
                logger.warning("lease %s renew failed, retrying: %s", self.ref.name, ex)
                wait = min(interval, 1.0)

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.ttl)
        self._thread = None

    def release(self) -> None:
        self.stop_renewing()
        was_held = self.held
        with self._lock:
            self._deadline = None
        if not was_held:
            return
        try:
            self.store.unlock(self.oid, self.ref)
            logger.debug("lease %s on %s released", self.ref.name, self.oid)
        except (LeaseLost, TransientError) as ex:
            logger.debug("lease %s on %s release: %s", self.ref.name, self.oid, ex)

    def __enter__(self) -> Lease:
        if not self.acquire():
            raise LockBusy(f"lease {self.ref.name} on {self.oid} is held by another")
        self.start_renewing()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
