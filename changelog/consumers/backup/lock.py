"""Leases that live in the backup destination itself, so that ``backup cleanup`` and ``backup run``
(possibly on different hosts, with nothing else in common) can keep out of each other's way.

Why not a RADOS lock or a conditional PUT: the destination may be a plain directory or any S3,
and radosgw 16 has no ``If-None-Match`` on PUT. What both offer is a read that sees the last
completed write of an object (S3 and radosgw are read-after-write consistent for one object; a
directory target renames files into place). On that we build:

**The cleanup lock** ``locks/cleanup.json = {"owner", "expires", "acquired"}``:

1. read the lock; if it holds an unexpired lease of another owner, refuse (``LockBusy``);
2. write ``{owner: me, expires: now + ttl}``;
3. wait ``confirm_delay``, read it again: the lock is ours only if it still names us. Two
   contenders that both passed step 1 both write; the later write wins and the earlier writer
   sees the other's name at step 3 and backs off;
4. renew on the one policy of every lease (``lease.renew_every``: ttl/3 at these TTLs): read,
   check it is still ours, write a new expiry. ``check()`` fails once ``monotonic() taken
   before the last write + ttl - margin`` has passed (``lease.TimedLease``), or when a
   renewal finds another owner: the holder stops deleting at once;
5. release: read, and delete if it is still ours.

**Run markers** ``runs/<id>.json`` (``runs.RunMarker``): a run writes its marker (its start
time and an expiry it renews) *before* it looks at the blob store, then waits until no cleanup
lock is held. Cleanup takes its lock *before* it lists the run markers. So for any run and any
cleanup, either the cleanup sees the run's marker, or the run sees the cleanup's lock and
waits for it to end (both do "write mine, then read theirs"). A cleanup that sees live runs
deletes no blob newer than the oldest live run's start (minus ``skew``), nor any blob of a
live run's base manifest; a run trusts an existing blob only if it is in its base manifest or
was written after its own start (minus ``skew``), and uploads it again otherwise.

**Limits** (what a conditional write would fix, and why they are acceptable here):

* Steps 1-2 are not atomic. If a contender stalls between its read (step 1) and its write
  (step 2) for longer than ``confirm_delay`` (a GC pause, SIGSTOP, a very slow PUT), two
  holders can both confirm. ``acquire`` measures that gap and retries when it exceeds half the
  confirm delay, which narrows the window to the PUT itself.
* Expiries are wall-clock times written by one host and compared by another: clocks must agree
  to within the margin (``ttl/10``, at least 1 s); the blob rule above allows ``skew``.
* A run paused past its marker's expiry loses the cleanup's protection; the runner notices (its
  marker was not renewed in time) and re-checks every blob it relies on before writing its
  manifest.
* On the same host, a holder whose process is gone is treated as expired at once (``kill -9``
  of a cleanup does not block the next one for a whole ttl).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from changelog.consumers.backup.store import LOCKS, BackupStore, owner_id, owner_is_dead
from changelog.errors import LeaseLost, LockBusy, TransientError
from changelog.pipeline.lease import TimedLease

logger = logging.getLogger(__name__)

# Long enough that a cleanup of a large store renews it many times between deletes, short
# enough that a holder that died on another host frees the store within minutes.
LOCK_TTL = 120.0
# The pause between writing the lock and reading it back (step 3). It must exceed the time
# between a contender's read and its write: one request, normally milliseconds.
CONFIRM_DELAY = 2.0


@dataclass(frozen=True, slots=True)
class LockDoc:
    owner: str
    expires: float  # wall-clock seconds
    acquired: float

    def live(self, now: float) -> bool:
        return self.expires > now and not owner_is_dead(self.owner)

    @classmethod
    def parse(cls, doc: object) -> LockDoc | None:
        if not isinstance(doc, dict):
            return None
        try:
            return cls(str(doc["owner"]), float(doc["expires"]), float(doc.get("acquired", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None


def lock_name(name: str) -> str:
    return f"{LOCKS}{name}.json"


def read_lock(store: BackupStore, name: str) -> LockDoc | None:
    return LockDoc.parse(store.get_doc(lock_name(name)))


class DestinationLock(TimedLease):
    """An exclusive lease stored as one object in the backup destination (see module doc). Its
    local deadline and its renewals are ``TimedLease``'s, the same as a RADOS lease's."""

    def __init__(
        self,
        store: BackupStore,
        name: str = "cleanup",
        *,
        owner: str | None = None,
        ttl: float = LOCK_TTL,
        confirm_delay: float = CONFIRM_DELAY,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if ttl < 3 * confirm_delay:
            raise ValueError(f"lock ttl {ttl} must be at least 3x the confirm delay {confirm_delay}")
        # Margin: the expiry is a wall-clock time compared by another host (module doc).
        super().__init__(ttl=ttl, margin=max(1.0, ttl / 10), monotonic=monotonic, thread_name=f"lock-{name}")
        self.store = store
        self.name = lock_name(name)
        self.lock_id = name
        self.owner = owner or owner_id(name)
        self.confirm_delay = confirm_delay
        self._clock = clock
        self._sleep = sleep
        self._acquired_at = 0.0

    def __repr__(self) -> str:
        return f"DestinationLock({self.store.url}{self.name}, owner={self.owner!r})"

    def read(self) -> LockDoc | None:
        return LockDoc.parse(self.store.get_doc(self.name))

    def _write(self) -> float:
        t0 = self._monotonic()
        now = self._clock()
        doc = {"owner": self.owner, "expires": now + self.ttl, "acquired": self._acquired_at or now}
        self.store.put_doc(self.name, doc)
        return t0

    def acquire(self, *, attempts: int = 3) -> None:
        """Take the lock or raise ``LockBusy`` naming the holder."""
        for _ in range(attempts):
            t_read = self._monotonic()
            held = self.read()
            now = self._clock()
            if held is not None and held.owner != self.owner and held.live(now):
                raise LockBusy(
                    f"{self.store.url}{self.name} is held by {held.owner} for another "
                    f"{held.expires - now:.0f} s"
                )
            self._acquired_at = now
            t0 = self._write()
            if t0 - t_read > self.confirm_delay / 2:
                # We stalled between the read and the write: what we read may be stale.
                logger.warning("slow lock write (%.1f s); retrying %s", t0 - t_read, self.name)
                continue
            self._sleep(self.confirm_delay)
            back = self.read()
            if back is None or back.owner != self.owner:
                who = back.owner if back else "nobody (deleted)"
                raise LockBusy(f"{self.store.url}{self.name} was taken by {who} at the same time")
            self._taken(t0)
            logger.info("lock %s taken by %s", self.name, self.owner)
            return
        raise LockBusy(f"could not take {self.store.url}{self.name}: writes kept stalling")

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lock is certainly still ours."""
        if not self.held:
            raise LeaseLost(f"lock {self.store.url}{self.name} is no longer held by {self.owner}")

    def renew(self) -> None:
        if not self.held:
            self._mark_lost("deadline passed")
            raise LeaseLost(f"lock {self.name} expired before it was renewed")
        held = self.read()
        if held is None or held.owner != self.owner:
            self._mark_lost(f"now held by {held.owner if held else 'nobody'}")
            raise LeaseLost(f"lock {self.name} was taken over")
        self._renewed(self._write())

    def _mark_lost(self, why: str) -> None:
        self._lose()
        logger.warning("lock %s lost (%s)", self.name, why)

    def release(self) -> None:
        self.stop_renewing()
        if not self._forget():
            return
        try:
            held = self.read()
            if held is not None and held.owner == self.owner:
                self.store.delete(self.name)
                logger.info("lock %s released", self.name)
        except TransientError as ex:
            logger.warning("lock %s release failed (it expires by itself): %s", self.name, ex)

    def __enter__(self) -> DestinationLock:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def wait_for_unlocked(
    store: BackupStore,
    name: str = "cleanup",
    *,
    timeout: float,
    poll: float = 2.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait until no live holder has lock ``name`` (``LockBusy`` after ``timeout`` seconds)."""
    deadline = clock() + timeout
    while True:
        held = read_lock(store, name)
        now = clock()
        if held is None or not held.live(now):
            return
        if now >= deadline:
            raise LockBusy(f"{store.url}{lock_name(name)} is held by {held.owner}; try again later")
        logger.info("waiting for %s held by %s", lock_name(name), held.owner)
        sleep(min(poll, max(0.0, held.expires - now), max(0.0, deadline - now)) or poll)
