"""Leases: an exclusive cls_lock on one object, renewed in the background, that knows when it
can no longer be trusted. Writes that must happen only under a lease pass ``lease.ref`` as the
``fence`` of their ``WriteOp``, so the OSD itself refuses them once the lock is gone
(docs/design.md §4).

Also the one renewal policy of every lease in the project (``renew_every``), the one local
deadline bookkeeping (``TimedLease``, shared with ``backup.lock.DestinationLock``), the one
renewal thread (``Renewer``), which renews one lease, the thousands of a collector pass or a
backup run's marker (``backup.runs.RunMarker``), and the one way a leased role takes its lease
(``Lease.take``).

**Dead holders of this host.** A cookie names the process that made it (``make_cookie``:
``host:pid.start.ns:rand``, where ``start`` is the process's start time in clock ticks since
boot and ``ns`` a digest of the boot id and the pid namespace). A lease found held by a cookie
of this host, boot and pid namespace whose process no longer exists (no such pid, or that pid
now belongs to a process started at another time) is broken at once (``ObjectStore.break_lock``)
instead of being waited out for a TTL: that is what a ``serve`` restarted after a SIGKILL finds.
A live holder, or one of another host, boot or container, is never broken; nor is a cookie
without that stamp (older versions, or no ``/proc``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeGuard

from changelog.errors import LeaseLost, LockBusy, TransientError
from changelog.pipeline.store import LockInfo, LockRef, ObjectStore

logger = logging.getLogger(__name__)

# host:pid.start.ns:rand, anywhere in a cookie (tags before it, another cookie after it).
_STAMP = re.compile(r"(?:^|:)(?P<host>[^:]+):(?P<pid>\d+)\.(?P<start>\d+)\.(?P<ns>[0-9a-f]{8}):[0-9a-f]{8}(?=:|$)")


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/<pid>/stat field 22);
    None if it cannot be read (no such process, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) may hold spaces and parentheses: count from the last ")".
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_namespace() -> str | None:
    """A digest of this boot and this pid namespace: pids and start times compare only within
    one (two containers of one host may share a hostname and a pid)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha1(f"{boot}/{pidns}".encode()).hexdigest()[:8]


def _stamp() -> str:
    """``pid.start.ns`` of this process, or just ``pid`` when /proc cannot say."""
    pid = os.getpid()
    start, ns = _start_ticks(pid), process_namespace()
    return f"{pid}.{start}.{ns}" if start is not None and ns is not None else str(pid)


def make_cookie(tag: str = "") -> str:
    base = f"{socket.gethostname()}:{_stamp()}:{uuid.uuid4().hex[:8]}"
    return f"{tag}:{base}" if tag else base


def dead_holder(cookie: str) -> str | None:
    """Why the process that made ``cookie`` certainly no longer exists ("pid 4242 is gone"), or
    None when it may be alive or cannot be told: another host, boot or pid namespace, no stamp.
    The last stamp of the cookie counts: it was made by the process that uses the cookie (the
    collector's cookies embed its id, which may come from elsewhere)."""
    stamps = list(_STAMP.finditer(cookie))
    if not stamps:
        return None
    stamp = stamps[-1]
    ns = process_namespace()
    if stamp["host"] != socket.gethostname() or ns is None or stamp["ns"] != ns:
        return None
    pid, start = int(stamp["pid"]), int(stamp["start"])
    if pid == os.getpid():
        # This very pid: the holder was an earlier process of it (a container's pid 1 gets the
        # same pid at each restart) unless it started when this one did: then it is this one.
        return None if _start_ticks(pid) == start else f"pid {pid} is this process, started later"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is gone"
    except OSError:
        return None  # EPERM: it exists (another user's), so maybe it is the holder
    now = _start_ticks(pid)
    if now is None:
        return None if os.path.exists(f"/proc/{pid}") else f"pid {pid} is gone"
    return None if now == start else f"pid {pid} is another process now (started later)"


def lock_held(info: LockInfo | None, now: float) -> TypeGuard[LockInfo]:
    """Whether a lock read with ``ObjectStore.lock_info`` is held at ``now`` (wall-clock
    seconds): there, and not expired (a lock expired at ``now`` is nobody's: its holder stopped
    renewing it)."""
    return info is not None and (info.expires_at is None or info.expires_at > now)


def renew_every(ttl: float, margin: float) -> float:
    """How long after its last renewal a lease is renewed again: ttl/3 as usual, but never
    leaving less slack before the local deadline (ttl - margin) than that same interval, so a
    late or failed renewal gets a second chance (ttl 3 s: every 1 s, 1.5 s to spare; ttl 1 s:
    every 0.25 s)."""
    return min(ttl / 3, (ttl - margin) / 2)


class Renewable(Protocol):
    """What the ``Renewer`` renews: a lease that knows its TTL, its margin and how long it can
    still be trusted, and that renews itself (``LeaseLost`` when refused)."""

    @property
    def ttl(self) -> float: ...

    @property
    def margin(self) -> float: ...

    def remaining(self) -> float: ...

    def renew(self) -> None: ...


class Renewer(threading.Thread):
    """Renews a changing set of leases from one thread (one thread per shard would not scale to
    thousands of shards). Each lease is renewed ``renew_every`` after its last renewal (not after
    the end of a round over all of them), the most urgent first, several at a time when many
    are due, so one slow RPC does not delay the others. A refused renewal (``LeaseLost``) drops
    that lease from the set (the lease marked itself lost); any other failure is retried soon.

    ``discard`` waits for an in-flight renewal of that lease to finish: once it returns, the
    renewer no longer touches the lease, so a renewal never overlaps its release or its
    re-acquisition by the next pass. (Without that, a renewal that was already on its way when
    a pass released its shards came back refused, marked the lease lost and dropped it from the
    set, *after* the next pass had taken it again: that lease then went unrenewed and the pass
    died of "lease drain ... not held" one TTL later.)
    """

    def __init__(self, ttl: float, *, name: str = "leases", monotonic: Callable[[], float] = time.monotonic,
                 workers: int = 1) -> None:
        super().__init__(name=name, daemon=True)
        self.ttl = float(ttl)
        self.interval = self.ttl / 3  # the longest wait between two looks at the set
        self._monotonic = monotonic
        self._workers = max(1, workers)
        # Keyed by the lease object itself: a lease released and taken again is the same entry.
        self._leases: dict[Renewable, None] = {}
        self._busy: set[Renewable] = set()
        self._retry_at: dict[Renewable, float] = {}
        self._cond = threading.Condition()
        self._stop_event = threading.Event()

    def add(self, lease: Renewable) -> None:
        with self._cond:
            self._leases[lease] = None
            self._retry_at.pop(lease, None)
            self._cond.notify_all()

    def discard(self, lease: Renewable) -> None:
        """Stop renewing ``lease``; returns once no renewal of it is in flight (or after a TTL, if
        the store does not answer: the lease cannot be trusted by then anyway)."""
        with self._cond:
            deadline = time.monotonic() + self.ttl
            while lease in self._busy and self.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("renewal of %s still in flight after %.0fs; dropping it anyway", lease, self.ttl)
                    break
                self._cond.wait(left)
            self._leases.pop(lease, None)
            self._retry_at.pop(lease, None)

    def stop(self, *, wait: bool = True) -> None:
        """Stop renewing; with ``wait``, return once renewals in flight are over (so a release that
        follows does not race one)."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(self.ttl)

    def due(self, now: float) -> tuple[list[Renewable], float]:
        """The leases to renew at ``now``, most urgent first, and when to look again."""
        with self._cond:
            return self._due(now)

    def _due(self, now: float) -> tuple[list[Renewable], float]:
        due: list[tuple[float, Renewable]] = []
        wake = now + self.interval
        for lease in self._leases:
            if lease in self._busy:
                continue
            remaining = lease.remaining()
            # Renewed ``every`` after its last lock call, when its local deadline is
            # ttl - margin - every away.
            at = now + remaining - (lease.ttl - lease.margin - renew_every(lease.ttl, lease.margin))
            at = max(at, self._retry_at.get(lease, at))
            if at <= now:
                due.append((remaining, lease))
            else:
                wake = min(wake, at)
        due.sort(key=lambda item: item[0])
        return [lease for _, lease in due], wake

    def run(self) -> None:
        pool: ThreadPoolExecutor | None = None
        try:
            while not self._stop_event.is_set():
                with self._cond:
                    now = self._monotonic()
                    due, wake = self._due(now)
                    if not due:
                        # Real-time wait, bounded: the clock may be a test's.
                        self._cond.wait(min(self.interval, max(0.005, wake - now)))
                        continue
                    self._busy.update(due)
                if len(due) == 1 or self._workers == 1:
                    for lease in due:
                        self._renew(lease)
                else:
                    if pool is None:
                        pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"{self.name}-renew")
                    list(pool.map(self._renew, due))
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            with self._cond:
                self._busy.clear()
                self._cond.notify_all()

    def _renew(self, lease: Renewable) -> None:
        outcome = "renewed"
        try:
            if self._stop_event.is_set():
                outcome = "stopped"
            else:
                lease.renew()
        except LeaseLost:
            outcome = "lost"
        except Exception as ex:  # noqa: BLE001 - TransientError, or anything else: retry soon
            outcome = "failed"
            logger.warning("renewing %s failed, retrying soon: %s", lease, ex)
        finally:
            with self._cond:
                self._busy.discard(lease)
                if outcome == "lost" and lease.remaining() <= 0:
                    # Lost, and not taken again (by a holder that re-added it) meanwhile.
                    self._leases.pop(lease, None)
                if outcome == "failed":
                    every = renew_every(lease.ttl, lease.margin)
                    self._retry_at[lease] = self._monotonic() + min(1.0, every / 2)
                else:
                    self._retry_at.pop(lease, None)
                self._cond.notify_all()


class Renewal:
    """One ``Renewable`` renewed by a ``Renewer`` of its own (a lease, a backup run's marker):
    ``start`` (again after a loss: it is added back), ``stop``."""

    def __init__(self, lease: Renewable, *, name: str, monotonic: Callable[[], float]) -> None:
        self._lease = lease
        self._name = name
        self._monotonic = monotonic
        self._renewer: Renewer | None = None

    def start(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            self._renewer.add(self._lease)  # again, if it was dropped when lost: taken again since
            return
        self._renewer = Renewer(self._lease.ttl, name=self._name, monotonic=self._monotonic)
        self._renewer.add(self._lease)
        self._renewer.start()

    def stop(self) -> None:
        """Returns once a renewal in flight is over (unless called from the renewal itself)."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.stop()


class TimedLease:
    """The local side of any lease: trusted until ``monotonic() taken before the last successful
    lock call + ttl - margin`` (the holder of the lock started its own clock no earlier than
    that), and renewed in the background by a ``Renewer`` on the ``renew_every`` policy.
    Subclasses do the lock calls (``acquire``, ``renew``, ``release``) and report them here."""

    def __init__(self, *, ttl: float, margin: float, monotonic: Callable[[], float], thread_name: str) -> None:
        self.ttl = float(ttl)
        self.margin = float(margin)
        self._monotonic = monotonic
        self._mu = threading.Lock()
        self._until: float | None = None
        self._lost = False
        self._renewal = Renewal(self, name=thread_name, monotonic=monotonic)

    @property
    def renew_every(self) -> float:
        return renew_every(self.ttl, self.margin)

    @property
    def held(self) -> bool:
        with self._mu:
            return not self._lost and self._until is not None and self._monotonic() < self._until

    def remaining(self) -> float:
        with self._mu:
            if self._lost or self._until is None:
                return 0.0
            return max(0.0, self._until - self._monotonic())

    def _taken(self, t0: float) -> None:
        """A lock call started at ``t0`` took the lease (again)."""
        with self._mu:
            self._until = t0 + self.ttl - self.margin
            self._lost = False

    def _renewed(self, t0: float) -> bool:
        """A renewal started at ``t0`` succeeded: False if the lease was marked lost meanwhile
        (then it stays lost)."""
        with self._mu:
            if self._lost:
                return False
            self._until = t0 + self.ttl - self.margin
            return True

    def _lose(self) -> bool:
        """Mark the lease lost; True if it was not already."""
        with self._mu:
            if self._lost:
                return False
            self._lost = True
            self._until = None
            return True

    def _lapsed(self) -> bool:
        """Its deadline passed without a renewal, and nobody noticed yet."""
        with self._mu:
            return not self._lost and self._until is not None and self._monotonic() >= self._until

    def _forget(self) -> bool:
        """Released: no deadline any more. True if it had one and was not lost."""
        with self._mu:
            was = self._until is not None and not self._lost
            self._until = None
            return was

    def renew(self) -> None:
        raise NotImplementedError

    def start_renewing(self) -> None:
        self._renewal.start()

    def stop_renewing(self) -> None:
        """Returns once a renewal in flight is over (unless called from the renewal itself)."""
        self._renewal.stop()


class Lease(TimedLease):
    """An exclusive lease on ``oid``: a cls_lock whose local deadline is ``TimedLease``'s."""

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
        # Margin for RPC latency and the OSD's whole-second rounding.
        super().__init__(ttl=ttl, margin=max(0.5, ttl / 10), monotonic=monotonic, thread_name=f"lease-{name}")
        self.store = store
        self.oid = oid
        self.description = description
        self.ref = LockRef(name, cookie or make_cookie())
        self._on_lost = on_lost
        self.renewals = 0
        self.losses = 0
        self.breaks = 0  # locks of dead holders of this host broken to take this lease

    def __repr__(self) -> str:
        return f"Lease({self.oid!r}, name={self.ref.name!r}, cookie={self.ref.cookie!r}, held={self.held})"

    def acquire(self) -> bool:
        """Try once to take the lease (or extend it if we hold it). True if held now."""
        t0 = self._monotonic()
        holding = self.held
        try:
            try:
                self.store.lock(self.oid, self.ref, duration=self.ttl, description=self.description, renew=holding)
            except LockBusy:
                if not self._break_dead_holder():
                    return False
                t0 = self._monotonic()
                self.store.lock(self.oid, self.ref, duration=self.ttl, description=self.description)
        except LockBusy:
            return False
        except LeaseLost:
            self._mark_lost("lost while re-acquiring")
            return False
        self._taken(t0)
        if not holding:
            logger.debug("lease %s on %s taken by %s", self.ref.name, self.oid, self.ref.cookie)
        return True

    def _break_dead_holder(self) -> bool:
        """The lock is busy: if its holder is a process of this host that no longer exists,
        break its lock. True if the lock may be free now (broken, or gone meanwhile)."""
        info: LockInfo | None = self.store.lock_info(self.oid, self.ref.name)
        if info is None:
            return True
        why = dead_holder(info.cookie)
        if why is None:
            return False
        if not self.store.break_lock(self.oid, info):
            return True  # expired or released since: try to take it; taken by another: busy
        self.breaks += 1
        logger.warning("lease %s on %s broken: its holder %s (%s) was on this host and %s",
                       self.ref.name, self.oid, info.cookie, info.holder, why)
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
        if not self._renewed(t0):
            raise LeaseLost(f"lease {self.ref.name} on {self.oid} was lost")
        self.renewals += 1

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is certainly still ours."""
        if not self.held:
            if self._lapsed():
                self._mark_lost("deadline passed without a renewal")
            raise LeaseLost(f"lease {self.ref.name} on {self.oid} is not held")

    def _mark_lost(self, why: str) -> None:
        if not self._lose():
            return
        self.losses += 1
        logger.warning("lease %s on %s lost (%s)", self.ref.name, self.oid, why)
        if self._on_lost is not None:
            self._on_lost(self)

    def release(self) -> None:
        self.stop_renewing()
        was_held = self.held
        self._forget()
        if not was_held:
            return
        try:
            self.store.unlock(self.oid, self.ref)
            logger.debug("lease %s on %s released", self.ref.name, self.oid)
        except (LeaseLost, TransientError) as ex:
            logger.debug("lease %s on %s release: %s", self.ref.name, self.oid, ex)

    def take(self, on_taken: Callable[[], None] | None = None) -> bool:
        """A leased role's ``acquire``: True while the lease is held, already or taken now (and
        then renewed in the background from here on); False while another holds it. ``on_taken``
        runs when it was just taken, to set up what the lease guards; if it fails, the lease is
        released again, so that a later ``take`` starts over rather than find it held and the
        setup missing."""
        if self.held:
            return True
        if not self.acquire():
            return False
        self.start_renewing()
        if on_taken is not None:
            try:
                on_taken()
            except BaseException:
                self.release()
                raise
        return True

    def __enter__(self) -> Lease:
        if not self.take():
            raise LockBusy(f"lease {self.ref.name} on {self.oid} is held by another")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
