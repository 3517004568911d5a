"""``backup cleanup``: retention of backups, then deletion of the blobs no kept backup references,
all under the destination's cleanup lock (``lock``).

Retention, newest backup first: the newest ``max(minimum_backups, 1)`` are always kept (the
newest is the base of the next run: without it the next run would be a full baseline); any
other backup is deleted when it is past the ``maximum_backups``-th, or when its state is older
than ``keep_days`` (0: age alone never deletes). A backup that is the base of a live run is kept.

Order, and why (see ``lock`` for the protocol with runs): take the lock; list the run markers
(*before* the manifests: a run that finishes after this listing was live in it, and one that
finished before wrote its manifest before the manifest listing); delete the expired manifests;
read the kept manifests and the bases of live runs: their hashes are referenced; list the blobs
and delete those not referenced and written before ``cutoff`` = the oldest live run's start -
``skew`` (now, when no run is live: a run starting after our run-marker listing sees our lock
and waits). The lock is checked before every delete; losing it stops the cleanup at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.lock import CONFIRM_DELAY, LOCK_TTL, DestinationLock
from changelog.consumers.backup.runner import SKEW
from changelog.consumers.backup.store import RUNS, BackupStore
from changelog.pipeline.targets import gc_uploads
from changelog.progress import Progress

logger = logging.getLogger(__name__)

DAY = 86_400.0
# Multipart uploads of blobs older than this were abandoned by a crashed run.
STALE_UPLOAD_S = DAY


@dataclass(frozen=True, slots=True)
class LiveRun:
    backup_id: str
    owner: str
    started: float
    base: str | None


@dataclass
class CleanupResult:
    kept: list[str] = field(default_factory=list)
    deleted_backups: list[str] = field(default_factory=list)
    live_runs: list[str] = field(default_factory=list)
    referenced_blobs: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    protected_blobs: int = 0  # unreferenced but too new (a live run may use them)
    aborted_uploads: int = 0
    dry_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def select_expired(
    backups: Sequence[mf.BackupInfo],
    *,
    now: float,
    keep_days: float,
    minimum_backups: int,
    maximum_backups: int,
    protected: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[mf.BackupInfo]:
    """The backups retention deletes (``backups`` in any order)."""
    newest_first = sorted(backups, key=lambda b: b.backup_id, reverse=True)
    keep_n = max(minimum_backups, 1)
    expired = []
    for i, b in enumerate(newest_first):
        if i < keep_n or b.backup_id in protected:
            continue
        too_many = i >= maximum_backups
        too_old = keep_days > 0 and now - b.as_of_us / 1_000_000 > keep_days * DAY
        if too_many or too_old:
            expired.append(b)
    return expired


def live_runs(store: BackupStore, *, now: float) -> list[LiveRun]:
    out = []
    for info in store.list(RUNS):
        rest = info.name[len(RUNS) :]
        if "/" in rest or not rest.endswith(".json"):
            continue
        doc = store.get_doc(info.name)
        if not isinstance(doc, dict):
            continue
        owner = str(doc.get("owner", ""))
        # A run whose process died is still live until its marker expires: its successor may
        # resume it trusting what it stored (runner), so its blobs stay protected until then.
        if float(doc.get("expires", 0)) > now:
            out.append(LiveRun(str(doc.get("backup_id")), owner, float(doc.get("started", 0)), doc.get("base")))
    return out


def cleanup(
    store: BackupStore,
    *,
    keep_days: float,
    minimum_backups: int,
    maximum_backups: int,
    dry_run: bool = False,
    skew: float = SKEW,
    lock_ttl: float = LOCK_TTL,
    confirm_delay: float = CONFIRM_DELAY,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool | None = None,
) -> CleanupResult:
    t0 = monotonic()
    result = CleanupResult(dry_run=dry_run)
    lock = DestinationLock(
        store, "cleanup", ttl=lock_ttl, confirm_delay=confirm_delay, clock=clock, monotonic=monotonic, sleep=sleep
    )
    with lock:
        now = clock()
        runs = live_runs(store, now=now)
        result.live_runs = [r.backup_id for r in runs]
        bases = {r.base for r in runs if r.base}
        backups = mf.list_backups(store)
        expired = select_expired(
            backups,
            now=now,
            keep_days=keep_days,
            minimum_backups=minimum_backups,
            maximum_backups=maximum_backups,
            protected=bases,
        )
        gone = {b.backup_id for b in expired}
        result.kept = [b.backup_id for b in backups if b.backup_id not in gone]
        for b in expired:
            lock.check()
            logger.info("deleting backup %s (as of %s)", b.backup_id, b.as_of)
            if not dry_run:
                store.delete(mf.manifest_name(b.backup_id))
            result.deleted_backups.append(b.backup_id)

        referenced: set[str] = set()
        for backup_id in sorted(set(result.kept) | bases):
            referenced |= mf.load(store, backup_id).shas()
        result.referenced_blobs = len(referenced)
        cutoff = min((r.started for r in runs), default=now + skew) - skew

        with Progress("cleanup: blobs", unit="blobs", enabled=progress) as bar:
            for sha, info in store.iter_blobs():
                bar.update(1)
                if sha in referenced:
                    continue
                if info.modified >= cutoff:
                    result.protected_blobs += 1
                    continue
                lock.check()
                if not dry_run:
                    store.delete_blob(sha)
                result.deleted_blobs += 1
                result.deleted_bytes += info.size
        if not dry_run:
            lock.check()
            result.aborted_uploads = gc_uploads(store.target, "blobs/", older_than=STALE_UPLOAD_S, now=now)
    logger.info(
        "cleanup: %d backups deleted, %d kept; %d blobs (%d bytes) deleted, %d protected by live runs",
        len(result.deleted_backups), len(result.kept), result.deleted_blobs, result.deleted_bytes, result.protected_blobs,
    )
    result.seconds = monotonic() - t0
    return result
