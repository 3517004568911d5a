"""A backup run's own records on the destination, which make a run resumable: its marker
``runs/<id>.json`` (the base, the log range ``after`` .. ``until``, the start time and an expiry
renewed in the background; ``lock`` explains how cleanup respects it) and its progress segments
``runs/<id>/<n>.json.zst`` (listing pages of a first run, outcomes of copied objects). Both are
removed when the run's manifest is written (``runner``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.store import RUNS, BackupStore, owner_is_dead
from changelog.errors import ChangelogError, LockBusy

logger = logging.getLogger(__name__)

# Marker expiry: renewed every third of it. A run that dies frees the store for a cleanup
# within this time (at once on the same host); a paused run past it must re-check its blobs.
MARKER_TTL = 300.0

# A named point of a run reached ("registered", "planned", "copied", "blob-stored",
# "segment-written", "manifest-written"): tests stop or kill a run there.
Hook = Callable[[str], None]

# The marker and the segments are JSON objects.
Doc = dict[str, Any]


def no_hook(point: str) -> None:
    pass


def marker_name(run_id: str) -> str:
    return f"{RUNS}{run_id}.json"


@dataclass
class RunMarker:
    """The run's marker document, renewed by a background thread. ``lapsed``: it went unrenewed
    longer than its ttl (the process was paused), so a cleanup may have run meanwhile and the
    blobs this run relies on must be checked again."""

    store: BackupStore
    doc: Doc
    ttl: float
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    lapsed: bool = False
    _last_write: float | None = None
    _mu: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def run_id(self) -> str:
        return str(self.doc["backup_id"])

    @property
    def name(self) -> str:
        return marker_name(self.run_id)

    def write(self, **changes: Any) -> None:
        with self._mu:
            t0 = self.monotonic()
            if self._last_write is not None and t0 > self._last_write + self.ttl:
                # Nobody saw a live marker for a while: a cleanup may have run meanwhile.
                self.lapsed = True
                self.doc["untrusted_blobs"] = True
                logger.warning("run marker %s lapsed (%.0f s since last renewal)", self.name, t0 - self._last_write)
            self.doc.update(changes)
            self.doc["expires"] = self.clock() + self.ttl
            self.store.put_doc(self.name, self.doc)
            self._last_write = t0

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.write()
            except ChangelogError as ex:
                logger.warning("renewing run marker %s failed: %s", self.name, ex)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="backup-marker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def check_lapse(self) -> None:
        with self._mu:
            if self._last_write is not None and self.monotonic() > self._last_write + self.ttl:
                self.lapsed = True


class Segments:
    """Writes the run's progress segments, numbered on from those of a crashed attempt."""

    def __init__(self, store: BackupStore, run_id: str, *, first: int, hook: Hook = no_hook) -> None:
        self._store = store
        self._run_id = run_id
        self._hook = hook
        self.next = first

    def write(self, seg: Doc) -> None:
        self._store.put_doc(f"{RUNS}{self._run_id}/{self.next:06d}.json.zst", seg, zstd=True)
        self.next += 1
        self._hook("segment-written")


def find_unfinished(store: BackupStore, base_id: str | None, *, now: float) -> tuple[Doc | None, list[Doc]]:
    """A run to resume (its marker and segments), after refusing (``LockBusy``) when one is
    alive and dropping those that cannot be resumed any more: finished ones, and those of
    another base than ``base_id`` (the latest backup)."""
    found: Doc | None = None
    for info in list(store.list(RUNS)):
        rest = info.name[len(RUNS) :]
        if "/" in rest or not rest.endswith(".json"):
            continue
        doc = store.get_doc(info.name)
        if not isinstance(doc, dict) or "backup_id" not in doc:
            continue
        run_id = str(doc["backup_id"])
        taken_over = doc.get("released") or owner_is_dead(str(doc.get("owner", "")))
        if float(doc.get("expires", 0)) > now and not taken_over:
            raise LockBusy(
                f"backup run {run_id} is in progress ({doc.get('owner')}, marker valid for "
                f"{float(doc['expires']) - now:.0f} s)"
            )
        if mf.exists(store, run_id):
            logger.info("run %s finished but was not cleaned up; removing its marker", run_id)
            drop_run(store, run_id)
        elif doc.get("base") != base_id or found is not None:
            logger.warning("abandoning unfinished run %s (its base %s is not the latest)", run_id, doc.get("base"))
            drop_run(store, run_id)
        else:
            found = doc
    if found is None:
        return None, []
    if float(found.get("expires", 0)) <= now:
        # Dead long enough that a cleanup may have run: recorded blobs must be re-checked.
        found["untrusted_blobs"] = True
    segments = []
    for info in store.list(f"{RUNS}{found['backup_id']}/"):
        seg = store.get_doc(info.name, zstd=True)
        if isinstance(seg, dict):
            segments.append(seg)
    logger.info("resuming backup run %s (%d segments)", found["backup_id"], len(segments))
    return found, segments


def drop_run(store: BackupStore, run_id: str) -> None:
    """Remove a run's segments, then its marker."""
    for info in list(store.list(f"{RUNS}{run_id}/")):
        store.delete(info.name)
    store.delete(marker_name(run_id))
