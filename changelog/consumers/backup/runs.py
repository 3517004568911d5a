"""A backup run's own records on the destination, which make a run resumable: its marker
``runs/<id>.json`` (the base, the log range ``after`` .. ``until``, the start time and an expiry
renewed in the background; ``lock`` explains how cleanup respects it) and its progress segments
``runs/<id>/<n>.json.zst`` (listing pages of a first run, outcomes of copied objects). Both are
removed when the run's manifest is written (``changelog.consumers.backup.runner``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict, cast

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.model import VersionDoc
from changelog.consumers.backup.store import RUNS, BackupStore, owner_is_dead
from changelog.errors import LockBusy
from changelog.pipeline.lease import Renewal

if TYPE_CHECKING:  # fetch imports blobs, which imports this module
    from changelog.consumers.backup.fetch import OutcomeRow

logger = logging.getLogger(__name__)

# Marker expiry, renewed on the one policy of every lease (``lease.renew_every``: a third of it).
# A run that dies frees the store for a cleanup within this time (at once on the same host); a
# paused run past it must re-check its blobs.
MARKER_TTL = 300.0

# A named point of a run reached ("registered", "planned", "copied", "blob-stored",
# "segment-written", "manifest-written"): tests stop or kill a run there.
Hook = Callable[[str], None]



class MarkerDoc(TypedDict):
    """A run's marker ``runs/<id>.json``."""

    format: int
    backup_id: str
    owner: str
    started: float  # wall-clock seconds
    base: str | None  # the previous backup
    after: str | None  # the log range: after the base's checkpoint ...
    until: str | None  # ... up to the watermark's last object
    as_of_us: int
    untrusted_blobs: bool  # the run lapsed: blobs it recorded must be checked again
    expires: NotRequired[float]  # wall-clock seconds, renewed
    released: NotRequired[bool]  # failed (not crashed): the next run may resume at once


class ListSegment(TypedDict):
    """A page of a first run's listing of a bucket without baseline records."""

    kind: Literal["list"]
    bucket: str
    versioned: bool
    entries: list[tuple[str, VersionDoc]]  # (key, version)
    key_marker: str | None
    version_marker: str | None
    done: bool


class FetchSegment(TypedDict):
    """Outcomes of copied objects (``fetch.Outcome.to_doc``)."""

    kind: Literal["fetch"]
    outcomes: list[OutcomeRow]


SegmentDoc = ListSegment | FetchSegment


def no_hook(point: str) -> None:
    pass


def marker_name(run_id: str) -> str:
    return f"{RUNS}{run_id}.json"


@dataclass(eq=False, repr=False)  # hashed by identity: the ``Renewer`` keeps it in a set
class RunMarker:
    """The run's marker document, renewed in the background by a ``lease.Renewer`` (a
    ``lease.Renewable``: the same renewal policy and thread as every lease). ``lapsed``: it went
    unrenewed longer than its ttl (the process was paused), so a cleanup may have run meanwhile
    and the blobs this run relies on must be checked again."""

    store: BackupStore
    doc: MarkerDoc
    ttl: float
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    lapsed: bool = False
    _last_write: float | None = None
    _mu: threading.Lock = field(default_factory=threading.Lock)
    _renewal: Renewal = field(init=False)

    @property
    def run_id(self) -> str:
        return str(self.doc["backup_id"])

    @property
    def name(self) -> str:
        return marker_name(self.run_id)

    def __post_init__(self) -> None:
        self._renewal = Renewal(self, name="backup-marker", monotonic=self.monotonic)

    def __repr__(self) -> str:  # what the renewer's log lines name
        return f"RunMarker({self.name!r})"

    @property
    def margin(self) -> float:
        # The expiry is a wall-clock time compared by another host: the cleanup lock's margin.
        return max(1.0, self.ttl / 10)

    def remaining(self) -> float:
        """How long until the renewal policy's deadline (``Renewable``). Read without ``_mu``
        (one attribute read): the renewer asks while a ``write`` may hold it through a PUT."""
        last = self._last_write
        if last is None:
            return 0.0
        return max(0.0, last + self.ttl - self.margin - self.monotonic())

    def renew(self) -> None:
        self.write()

    def write(self, *, released: bool | None = None, untrusted_blobs: bool | None = None) -> None:
        """Write the marker with a new expiry (and the changes given)."""
        with self._mu:
            t0 = self.monotonic()
            if self._last_write is not None and t0 > self._last_write + self.ttl:
                # Nobody saw a live marker for a while: a cleanup may have run meanwhile.
                self.lapsed = True
                self.doc["untrusted_blobs"] = True
                logger.warning("run marker %s lapsed (%.0f s since last renewal)", self.name, t0 - self._last_write)
            if released is not None:
                self.doc["released"] = released
            if untrusted_blobs is not None:
                self.doc["untrusted_blobs"] = untrusted_blobs
            self.doc["expires"] = self.clock() + self.ttl
            self.store.put_doc(self.name, self.doc)
            self._last_write = t0

    def start(self) -> None:
        """Renew in the background (a failed renewal is logged and retried soon)."""
        self._renewal.start()

    def stop(self) -> None:
        """Returns once a renewal in flight is over, so a last ``write`` does not race it."""
        self._renewal.stop()

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

    def write(self, seg: SegmentDoc) -> None:
        self._store.put_doc(segment_name(self._run_id, self.next), seg, zstd=True)
        self.next += 1
        self._hook("segment-written")


def find_unfinished(
    store: BackupStore, base_id: str | None, *, now: float
) -> tuple[MarkerDoc | None, list[SegmentDoc]]:
    """A run to resume (its marker and segments), after refusing (``LockBusy``) when one is
    alive and dropping those that cannot be resumed any more: finished ones, and those of
    another base than ``base_id`` (the latest backup)."""
    found: MarkerDoc | None = None
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
            found = cast(MarkerDoc, doc)  # our own document, written by ``RunMarker``
    if found is None:
        return None, []
    if float(found.get("expires", 0)) <= now:
        # Dead long enough that a cleanup may have run: recorded blobs must be re-checked.
        found["untrusted_blobs"] = True
    segments = []
    for info in store.list(f"{RUNS}{found['backup_id']}/"):
        seg = store.get_doc(info.name, zstd=True)
        if isinstance(seg, dict):
            segments.append(cast(SegmentDoc, seg))  # our own documents, written by ``Segments``
    logger.info("resuming backup run %s (%d segments)", found["backup_id"], len(segments))
    return found, segments


def segment_name(run_id: str, n: int) -> str:
    return f"{RUNS}{run_id}/{n:06d}.json.zst"


def drop_run(store: BackupStore, run_id: str, *, segments: int | None = None) -> None:
    """Remove a run's segments, then its marker. ``segments``: how many the run wrote, all its
    attempts together (they are numbered on, ``Segments``), when the caller knows it: then no
    listing is needed, and a run that wrote none costs one DELETE."""
    if segments is None:
        names = [info.name for info in store.list(f"{RUNS}{run_id}/")]
    else:
        names = [segment_name(run_id, n) for n in range(segments)]
    for name in names:
        store.delete(name)
    store.delete(marker_name(run_id))
