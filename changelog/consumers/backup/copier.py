"""Phase 2 of a backup run, the copy: every changed key whose current version has no content yet
is fetched (``fetch``) by a pool of worker threads, and every version held whose tags may have
changed has its tags read again. Items whose record has neither version id
nor ETag need a probe; those close together in a bucket wait for a range listing that probes
them all (``probes``) when that costs fewer requests than one probe each.

What becomes of each item goes to the run's segments (``runs``) every ``flush_items`` /
``flush_seconds``, after the blobs it names are stored, so a rerun replays those outcomes and
copies only the rest. An item that vanished or changed again after its record leaves its key
*lagging* (``runner``: the ETag race): an unversioned key keeps its previous state, a versioned
one drops the version and copies the next older one in turn.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from changelog.consumers.backup.blobs import Blobs
from changelog.consumers.backup.fetch import UNPROBED, Fetcher, Ident, Item, Outcome, OutcomeRow, Prefetched
from changelog.consumers.backup.manifest import Lagging
from changelog.consumers.backup.model import State, Version, current
from changelog.consumers.backup.probes import ProbeRange
from changelog.consumers.backup.probes import plan as plan_probes
from changelog.consumers.backup.runs import Hook, RunMarker, Segments, no_hook
from changelog.consumers.backup.source import Probe, Source
from changelog.errors import ChangelogError
from changelog.progress import Progress

logger = logging.getLogger(__name__)

# What ``Source.probe_page`` returns: (key, probe) entries and the continuation token.
ProbePage = tuple[list[tuple[str, Probe]], str | None]
# An outcome as recorded in a segment (``Outcome.to_doc``), by its item's ident.
Recorded = Mapping[Ident, OutcomeRow]
# A task of the copy's pool: a copy gives its outcome, a range listing its range and the page
# it read (or why it could not).
Done = Outcome | tuple[ProbeRange, ProbePage | ChangelogError]


@dataclass(frozen=True, kw_only=True)
class CopyPolicy:
    """How a run copies: ``workers`` in parallel, its progress made durable (a segment) every
    ``flush_items`` outcomes or ``flush_seconds``; ``hook`` and ``progress`` as the run's."""

    workers: int
    flush_items: int
    flush_seconds: float
    monotonic: Callable[[], float]
    hook: Hook = no_hook
    progress: bool | None = None


@dataclass
class CopyTotals:
    copied: int = 0
    copied_bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    deduplicated: int = 0
    retagged: int = 0  # versions held whose tags were read again (no content read)


def resolve_deleted(state: State, source: Source) -> None:
    """Keys of versioned buckets whose last known version was deleted: ask the source which
    versions are left (the newest one may be older than anything the logs showed)."""
    for bucket, key in sorted(state.resolve):
        versions = source.key_versions(bucket, key)
        known = {v.version_id: v for v in state.base(bucket, key) if not v.delete_marker}
        merged = tuple(
            known[v.version_id] if v.version_id in known and known[v.version_id].etag == v.etag else v
            for v in versions
        )
        state.set(bucket, key, merged)
    state.resolve.clear()


class Copier:
    """One run's copy phase (used once): ``run`` copies what ``state`` needs and updates it;
    ``totals`` and ``lagging`` tell what happened."""

    def __init__(
        self,
        state: State,
        source: Source,
        fetcher: Fetcher,
        *,
        marker: RunMarker,
        segments: Segments,
        policy: CopyPolicy,
    ) -> None:
        self.state = state
        self.source = source
        self.fetcher = fetcher
        self.blobs: Blobs = fetcher.blobs
        self.marker = marker
        self.segments = segments
        self.policy = policy
        self.workers = policy.workers
        self.monotonic = policy.monotonic
        self.totals = CopyTotals()
        self.lagging: list[Lagging] = []
        # Items whose turn came during the copy (the next older version of a dropped one).
        self._queue: deque[Item] = deque()
        # Items to fetch, each with what a range listing told of it.
        self._ready: deque[tuple[Item, Prefetched]] = deque()
        # Range listings to go on with, and the items they are to probe, by bucket and key.
        self._ranges: deque[ProbeRange] = deque()
        self._probing: dict[tuple[str, str], Item] = {}
        self._pending: list[OutcomeRow] = []  # outcomes not yet in a segment
        self._last_flush = policy.monotonic()

    def run(self, done: Recorded) -> None:
        """Copy every item; ``done``: the outcomes recorded by a crashed attempt of this run."""
        initial = [Item(b, k, v) for b, k, v in sorted(self.state.needing_content(), key=lambda x: x[:2])]
        self._last_flush = self.monotonic()
        # Exists checks: one per copied object, or one listing page per 1000 stored blobs
        # (estimated from the base): whichever costs fewer requests.
        if len(initial) > 2 * (len(self.blobs.base) // 1000 + 1):
            self.blobs.preload()
        with Progress("backup: copying", total=len(initial), unit="objects", enabled=self.policy.progress) as bar:
            self._replay(initial, done, bar)
            self._plan_probes()
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="backup-copy") as pool:
                self._pump(pool, bar)
        # No last segment: the manifest, written next, holds every outcome. A crash before it
        # costs the outcomes since the last flush (at most ``flush_items`` / ``flush_seconds``,
        # as anywhere in the run); their blobs are found stored, not uploaded again.

    def _replay(self, initial: list[Item], done: Recorded, bar: Progress) -> None:
        """Apply the outcomes a crashed attempt recorded; the other items are ready to fetch."""
        for item in initial:
            row = done.get(item.ident)
            if row is None:
                self._ready.append((item, UNPROBED))
                continue
            kind, vdoc = row[4], row[5]
            version = Version.from_dict(vdoc) if vdoc else None
            if version is not None and version.sha256:
                self.blobs.present.add(version.sha256)
            self._apply(Outcome(item, kind, version))
            bar.update(1, nbytes=(version.size or 0) if version else 0)

    def _pump(self, pool: ThreadPoolExecutor, bar: Progress) -> None:
        """Keep the pool busy until every item and range listing is done. On a failure, what
        was copied so far is recorded before the error goes up."""
        running: set[Future[Done]] = set()
        listing: set[Future[Done]] = set()
        while self._ready or self._queue or running or self._ranges:
            self._submit(pool, running, listing)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                running.discard(fut)
                listing.discard(fut)
                try:
                    out = fut.result()
                    if isinstance(out, tuple):
                        self._ranges.extend(self._settle(*out))
                        continue
                except BaseException:
                    for other in running:
                        other.cancel()
                    with contextlib.suppress(ChangelogError):
                        self._flush()
                    raise
                self._apply(out)
                self._pending.append(out.to_doc())
                bar.update(1, nbytes=(out.version.size or 0) if out.version else 0)
                self.policy.hook("copied")
            due = self.monotonic() - self._last_flush >= self.policy.flush_seconds
            if due or len(self._pending) >= self.policy.flush_items:
                self._flush()
                self.marker.check_lapse()

    def _submit(
        self,
        pool: ThreadPoolExecutor,
        running: set[Future[Done]],
        listing: set[Future[Done]],
    ) -> None:
        # Range listings first (each a chain of pages whose keys feed the copies), on at most
        # half of the slots so that copies go on meanwhile.
        while self._ranges and len(listing) < max(1, self.workers // 2) and len(running) < 2 * self.workers:
            page = pool.submit(self._list, self._ranges.popleft())
            listing.add(page)
            running.add(page)
        while self._queue:
            self._ready.append((self._queue.popleft(), UNPROBED))
        while self._ready and len(running) < 2 * self.workers:
            running.add(pool.submit(self._fetch, *self._ready.popleft()))

    def _fetch(self, item: Item, pre: Prefetched) -> Done:
        return self.fetcher.fetch(item, pre)

    def _list(self, rng: ProbeRange) -> Done:
        """One page of a range listing (in a worker)."""
        try:
            return rng, self.source.probe_page(rng.bucket, prefix=rng.prefix, start_after=rng.start_after, token=rng.token)
        except ChangelogError as ex:
            return rng, ex

    def _flush(self) -> None:
        if self._pending:
            self.segments.write({"kind": "fetch", "outcomes": list(self._pending)})
            self._pending.clear()
        self._last_flush = self.monotonic()

    def _apply(self, out: Outcome) -> None:
        """Bring an outcome into the state (and the totals, or the lagging keys)."""
        item = out.item
        retag = not item.version.needs_content  # only its tags were to be read
        if out.kind == "copied":
            assert out.version is not None
            if not self.state.update_version(item.bucket, item.key, out.version):
                logger.debug("version of %s/%s left the plan meanwhile", item.bucket, item.key)
            if retag:
                self.totals.retagged += 1
                return
            self.totals.copied += 1
            self.totals.copied_bytes += out.version.size or 0
            if out.uploaded:
                self.totals.uploaded += 1
                self.totals.uploaded_bytes += out.nbytes
            else:
                self.totals.deduplicated += 1
            return
        self.lagging.append(
            {
                "bucket": item.bucket,
                "key": item.key,
                "version_id": item.version.version_id,
                "etag": item.version.etag,
                "reason": out.kind,
            }
        )
        if retag:
            # A version held whose tags could not be read again (deleted since: its delete
            # record comes later): it stays as it was, with the tags read before.
            return
        if item.version.version_id is None:
            # Unversioned and overwritten or deleted since: keep the previous backup's state.
            self.state.revert(item.bucket, item.key)
            return
        self.state.drop_version(item.bucket, item.key, item.version.version_id)
        if self.state.resolve:
            resolve_deleted(self.state, self.source)
        cur = current(self.state.get(item.bucket, item.key))
        if cur is not None and cur.needs_content:
            self._queue.append(Item(item.bucket, item.key, cur))

    def _plan_probes(self) -> None:
        """Batched probes (``probes``): per bucket, the ready items whose record has neither
        version id nor ETag (each needs a probe) that are worth a range listing leave the ready
        queue and wait in ``_ranges`` (their items in ``_probing``) until a page settles them."""
        need: dict[str, dict[str, Item]] = {}
        for item, _pre in self._ready:
            if item.version.version_id is None and item.version.etag is None:
                need.setdefault(item.bucket, {})[item.key] = item
        batched: set[tuple[str, str]] = set()
        for bucket, items in sorted(need.items()):
            if len(items) < 2:
                continue
            known = (k for k in self.state.keys(bucket) if current(self.state.get(bucket, k)) is not None)
            planned, _singles = plan_probes(bucket, items, known, page=self.source.probe_page_keys)
            for rng in planned:
                self._ranges.append(rng)
                batched.update((bucket, k) for _b, k in rng.keys)
                logger.debug(
                    "probing %d keys of %s by listing %r after %r (~%d pages)",
                    len(rng.keys), bucket, rng.prefix, rng.start_after, rng.estimate,
                )
        if batched:
            kept = [(item, pre) for item, pre in self._ready if (item.bucket, item.key) not in batched]
            self._ready.clear()
            self._ready.extend(kept)
        self._probing = {(rng.bucket, k): need[rng.bucket][k] for rng in self._ranges for _b, k in rng.keys}

    def _settle(self, rng: ProbeRange, page: ProbePage | ChangelogError) -> list[ProbeRange]:
        """A page of a range listing came back: its settled keys go to the copy with their
        listing entry; the range goes on (returned) unless finished or over its budget, when
        what is left (all of it, if the listing failed) is probed key by key."""
        if isinstance(page, ChangelogError):
            logger.warning("listing %s/%s to probe %d keys failed (%s): probing them one by one",
                           rng.bucket, rng.prefix, len(rng.unsettled()), page)
        else:
            entries, token = page
            for key, probe in rng.absorb(entries, token):
                self._ready.append((self._probing.pop((rng.bucket, key)), probe))
            if not rng.done and not rng.exhausted:
                return [rng]
            if rng.exhausted:
                logger.info("listing %s/%s: %d pages were not enough; probing %d keys one by one",
                            rng.bucket, rng.prefix, rng.pages, len(rng.unsettled()))
        for key in rng.unsettled():
            self._ready.append((self._probing.pop((rng.bucket, key)), UNPROBED))
        return []
