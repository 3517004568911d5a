"""Reading the pending bucket-index shards' logs (bilogs) into the change index: each shard from
its persisted marker to its end, in pages, ``shards_per_round`` shards a round. A round's entries
are mapped to mutations (``mapping``), recorded with one ``ChangeIndex.record_many``, and *then*
the shards' markers are persisted: a crash in between replays entries the index drops by their
(source, position) high-water mark (H1). A shard that went quiet for ``hot_seconds`` stops being
pending; its log is trimmed up to its marker (``trim``).

Before recording, a round's write records get the size, etag, mtime and storage class of what
they wrote (``[source] object_info``): from the bucket index entries of the round's shards
("index", ``bucket_index``: one omap read per index object; a write already superseded there
stays null), from radosgw ("head": HEAD or listing per write), or not at all ("none"). An index
that cannot be read (no RADOS access, EPERM, no such pool) is said once, and HEAD used instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from changelog.errors import LeaseLost, PermanentError, TransientError
from changelog.native import speedup
from changelog.pipeline.loop import Stopped
from changelog.pipeline.mutation import Mutation, Op
from rgw_module.admin import NotFound
from rgw_module.bucket_index import ObjectFacts
from rgw_module.bucket_tracker import BucketTracker
from rgw_module.follower_state import SEALED_BACKOFF, SealedShard, ShardCursor, dump_json
from rgw_module.generations import start_closing
from rgw_module.mapping import (
    BadEntry,
    BilogEntry,
    BucketShard,
    ShardMapper,
    bilog_marker,
    index_name_to_key,
    multipart_meta,
    parse_time_ns,
    qualified_name,
)
from rgw_module.sweep_context import Started, SweepContext

logger = logging.getLogger(__name__)

# Persisted markers are read for this many shards per control-object read.
MARKER_READ_BATCH = 1000
# Rounds whose pages are being fetched (with their facts) while one round is recorded.
PREFETCH_ROUNDS = 2
# ``_speedups.untrack_plain`` (None: not built, or RGW_CHANGELOG_PURE_PYTHON=1): a round's pages
# and records out of the cyclic GC's lists. They cannot be part of a cycle (JSON values; frozen
# records of such values), and ~16,000 of each alive per round, with two more rounds' pages,
# set off a full collection over every live object about once a round: 4-7 us an entry of GC in
# a catch-up of ~25 (docs/benchmarks.md, `follower_catchup`, 2026-12-07 evening).
_UNTRACK = speedup("untrack_plain")


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """What one round read from one shard: the marker it reached, whether the page had entries
    (the shard stays hot) and whether more follow (the shard is read again this sweep)."""

    cursor: ShardCursor
    marker: str
    had_entries: bool
    more: bool


@dataclass(frozen=True, slots=True)
class _Fetched:
    """What a worker fetched for one shard: its page (or why not), and the facts of the page's
    writes from the bucket index (None: not read; an exception: why not)."""

    page: list[BilogEntry] | BaseException
    facts: dict[str, ObjectFacts] | BaseException | None = None


def _page_end(page: Sequence[BilogEntry], marker: str) -> str:
    """The marker after ``page`` (``marker`` itself when the page is empty)."""
    return bilog_marker(str(page[-1].get("op_id", ""))) if page else marker


class BilogReader:
    """Reads every pending shard to its end (module docstring)."""

    def __init__(self, ctx: SweepContext, tracker: BucketTracker) -> None:
        self.ctx = ctx
        self.tracker = tracker
        self._warned_info: set[str] = set()
        # Why the bucket index cannot be read ("index" method), once found: HEAD from then on.
        self._index_unreadable: str | None = None

    def drain(self) -> bool:
        """Read every pending shard to its end, in rounds; False if a shard could not be read.

        The next round's pages (and their facts) are fetched by the worker pool while the
        current round is mapped, recorded and persisted: each shard's next page starts where its
        fetched page ended, and nothing of a round is persisted before it is recorded, so a
        crash or an error drops at most pages that were never recorded (read again)."""
        queue = deque(self._candidates())
        # Where each shard's next page starts: the end of its last fetched page.
        read_to: dict[BucketShard, str] = {}
        inflight: deque[tuple[list[ShardCursor], Started[_Fetched]]] = deque()

        def fill() -> None:
            while queue and len(inflight) < PREFETCH_ROUNDS:
                batch = self._take(queue)
                inflight.append((batch, self._start(batch, read_to)))

        complete = True
        try:
            fill()
            while inflight:
                self.ctx.check_running()
                batch, fetching = inflight.popleft()
                fetched = fetching.results()
                for sh, got in zip(batch, fetched, strict=True):
                    if isinstance(got, _Fetched) and not isinstance(got.page, BaseException) and self._current(sh):
                        read_to[sh.bs] = _page_end(got.page, read_to.get(sh.bs, sh.marker or ""))
                        if len(got.page) >= self.ctx.config.page_entries:
                            queue.append(sh)
                fill()
                complete = self._round(batch, fetched) and complete
        finally:
            for _, fetching in inflight:  # the drain ended early: nobody will read these
                fetching.cancel()
        return complete

    def _current(self, sh: ShardCursor) -> bool:
        """Whether ``sh`` is still a shard to read: an earlier round may have found its bucket
        gone, replaced or in a new full sync after its page was fetched (the tracker then forgot
        the shard), and such a page must not be recorded, nor its marker written back."""
        st = self.ctx.state
        b = st.buckets.get(sh.bs.bucket)
        return st.shards.get(sh.bs) is sh and b is not None and b.state == "incr" and b.owns(sh.bs)

    def _take(self, queue: deque[ShardCursor]) -> list[ShardCursor]:
        return [queue.popleft() for _ in range(min(len(queue), self.ctx.config.shards_per_round))]

    def _start(self, batch: list[ShardCursor], read_to: dict[BucketShard, str]) -> Started[_Fetched]:
        """Start fetching one page of each shard of ``batch`` (with its facts) on the pool."""
        items = [(sh, read_to.get(sh.bs, sh.marker or "")) for sh in batch]
        return self.ctx.start(self._fetch, items)

    def _fetch(self, item: tuple[ShardCursor, str]) -> _Fetched:
        """One page of one shard from ``marker``, and (``object_info = "index"``) the facts of
        its writes from the bucket index: both on a worker thread."""
        sh, marker = item
        try:
            page = self.ctx.admin.bilog_list(sh.bs, marker, max_entries=self.ctx.config.page_entries)
        except Exception as ex:  # noqa: BLE001 - the round decides (gone, failed, fatal)
            return _Fetched(ex)
        if _UNTRACK is not None:
            _UNTRACK(page, Mutation, Op)
        reader = self.ctx.bucket_index
        if self.ctx.config.object_info != "index" or reader is None or self._index_unreadable is not None:
            return _Fetched(page)
        try:
            return _Fetched(page, reader.facts(sh.bs, page))
        except Exception as ex:  # noqa: BLE001 - _with_index_facts decides
            return _Fetched(page, ex)

    def _candidates(self) -> list[ShardCursor]:
        """Pending shards ready to read: of a known, incremental bucket instance. Resolves
        unknown buckets and new instances on the way; drops shards of old instances."""
        ctx, st = self.ctx, self.ctx.state
        to_resolve = sorted(
            {
                bs.bucket
                for bs in st.shards
                if (b := st.buckets.get(bs.bucket)) is None
                or b.state == "gone"
                or b.bucket_id != bs.bucket_id
            }
        )
        now = ctx.now()
        for name in to_resolve:
            ctx.check_running()
            self.tracker.resolve(name)
        stale: list[BucketShard] = []
        out: list[ShardCursor] = []
        for bs, sh in sorted(st.shards.items()):
            b = st.buckets.get(bs.bucket)
            if b is None or not b.owns(bs):
                stale.append(bs)
                if b is not None and b.outgrown_by(bs) and not b.closing:
                    start_closing(ctx, b, now, persist=True)
            elif b.state == "incr":
                out.append(sh)
        if stale:
            ctx.write(remove=[ctx.keys.pending(bs) for bs in stale])
            for bs in stale:
                st.shards.pop(bs, None)
        self._load_markers([sh for sh in out if sh.marker is None])
        return out

    def _load_markers(self, cursors: list[ShardCursor]) -> None:
        ctx = self.ctx
        for i in range(0, len(cursors), MARKER_READ_BATCH):
            chunk = cursors[i : i + MARKER_READ_BATCH]
            got = ctx.store.omap_get(ctx.control_oid, [ctx.keys.marker(sh.bs) for sh in chunk])
            for sh in chunk:
                raw = got.get(ctx.keys.marker(sh.bs))
                sh.marker = raw.decode() if raw is not None else ""

    def _round(self, batch: list[ShardCursor], fetched: list[_Fetched | BaseException]) -> bool:
        """One fetched page of each shard of ``batch``: recorded, then the markers persisted."""
        ctx = self.ctx
        page_entries = ctx.config.page_entries
        now = ctx.now()
        observed_ns = int(now * 1_000_000_000)
        mutations: list[Mutation] = []
        # Sources whose writes get their facts from radosgw (HEAD), and the writes found in the index.
        head: set[str] = set()
        found = 0
        advanced: list[ShardProgress] = []
        gone: list[ShardCursor] = []
        failed: list[ShardCursor] = []
        # Multipart uploads begun (their state key -> value) or ended (-> None) in this round,
        # persisted with its markers (``_persist``): exactly what was read, replays included.
        uploads: dict[str, bytes | None] = {}
        complete = True
        for sh, got in zip(batch, fetched, strict=True):
            if not self._current(sh):
                continue  # stale: dropped by an earlier round (``_current``)
            page = got.page if isinstance(got, _Fetched) else got
            if isinstance(page, NotFound):
                gone.append(sh)
                continue
            if isinstance(page, LeaseLost | PermanentError | Stopped):
                raise page
            if isinstance(page, BaseException):
                complete = False
                ctx.count_error("bilog")
                logger.warning("bucket index log %s: %s", sh.bs.key, page)
                failed.append(sh)
                continue
            assert isinstance(got, _Fetched)
            facts = self._page_facts(sh.bs, page, got)
            mapped = self._mutations(sh.bs, page, observed_ns, facts, uploads)
            if facts is None:
                head.add(sh.bs.source)
            elif facts:
                found += sum(m.obj_mtime_ns is not None for m in mapped if m.op is Op.WRITE)
            mutations += mapped
            marker = _page_end(page, sh.marker or "")
            more = len(page) >= page_entries
            advanced.append(ShardProgress(sh, marker, bool(page), more))
        writes = sum(m.op is Op.WRITE for m in mutations if m.source not in head)
        if ctx.config.object_info == "index":
            ctx.count_facts("index", found)
            ctx.count_facts("superseded", writes - found)
        if head and ctx.config.object_info != "none":
            mutations = self._with_heads(mutations, head)
        ctx.record(mutations)
        ctx.fault("recorded")
        self._persist(advanced, now, uploads)
        for sh in gone:
            self._instance_gone(sh)
        self._check_failed(failed)
        return complete

    def read_sealed(self) -> int:
        """Read the sealed shards of finished log generations that are due (``generations``
        module docstring) from their markers; record what radosgw added to them since, as late
        entries; forget a shard whose time is up (trimmed to its marker), whose generation is
        gone, or whose bucket instance is. Returns the late entries recorded."""
        ctx, st = self.ctx, self.ctx.state
        now = ctx.now()
        due: list[tuple[BucketShard, SealedShard]] = []
        drop: list[BucketShard] = []
        for bs, s in sorted(st.sealed.items()):
            b = st.buckets.get(bs.bucket)
            if b is None or b.state == "gone" or b.bucket_id != bs.bucket_id:
                drop.append(bs)  # deleted or replaced: its delete or new instance is recorded
            elif b.state == "incr" and now >= s.next_poll:
                due.append((bs, s))  # (in full sync: after it, the baseline says what exists)
        self._forget_sealed(drop)
        if not due:
            return 0
        ctx.check_running()
        page_entries = ctx.config.page_entries
        pages = ctx.parallel(lambda j: ctx.admin.bilog_list(j[0], j[1].marker, max_entries=page_entries), due)
        late = 0
        for (bs, s), page in zip(due, pages, strict=True):
            if isinstance(page, NotFound):
                drop.append(bs)  # the generation was removed (``bilog autotrim``)
                continue
            if isinstance(page, LeaseLost | PermanentError | Stopped):
                raise page
            if isinstance(page, BaseException):
                ctx.count_error("bilog")
                logger.warning("sealed bucket index log %s: %s", bs.key, page)
                continue
            if page:
                late += self._record_late(bs, s, page, now)
            more = len(page) >= page_entries
            s.empty_polls = 0 if page else s.empty_polls + 1
            backoff = min(2**s.empty_polls, SEALED_BACKOFF) if s.empty_polls else 1
            later = now + ctx.config.sealed_poll_interval * backoff
            s.next_poll = now if more else (min(later, s.until) if now < s.until else later)  # last read at until
            if not page and now >= s.until:
                if ctx.trim_bilogs and s.marker:
                    try:
                        ctx.admin.bilog_trim(bs, s.marker)
                    except NotFound:
                        pass
                    except TransientError as ex:
                        ctx.count_error("trim")
                        logger.warning("trimming sealed bucket index log %s: %s", bs.key, ex)
                        continue
                drop.append(bs)
        self._forget_sealed([bs for bs in drop if bs in st.sealed])
        return late

    def _record_late(self, bs: BucketShard, s: SealedShard, page: list[BilogEntry], now: float) -> int:
        """Record one page of late entries of a sealed shard: under a ``gen`` of their own (the
        bucket's, plus one), ordered after everything recorded of their keys so far; the bucket
        record moves on to the ``gen`` after it first (a crash in between only skips a number),
        then the sealed marker moves with the page's multipart uploads."""
        ctx, st = self.ctx, self.ctx.state
        b = st.buckets[bs.bucket]
        late_gen = b.gen + 1
        nb = dataclasses.replace(b, gen=b.gen + 2)
        ctx.write({ctx.keys.bucket(b.name): nb.encode()})
        st.buckets[b.name] = nb
        uploads: dict[str, bytes | None] = {}
        mutations = self._mutations(bs, page, int(now * 1_000_000_000), None, uploads, generation=late_gen)
        if mutations and ctx.config.object_info != "none":
            mutations = self._with_heads(mutations, {bs.source})
        ctx.record(mutations)
        ctx.fault("late.recorded")
        s.marker = _page_end(page, s.marker)
        sets: dict[str, bytes] = {k: v for k, v in uploads.items() if v is not None}
        sets[ctx.keys.sealed(bs)] = s.encode()
        ctx.write(sets, [k for k, v in uploads.items() if v is None])
        with ctx.lock:
            ctx.stats.late_entries += len(page)
        logger.warning(
            "bucket %s: %d entries (%d records) appeared in finished log generation %d (shard %d) after "
            "it was read to its end; recorded now, ordered after what was recorded before",
            bs.bucket, len(page), len(mutations), bs.log_gen, bs.shard,
        )  # fmt: skip
        return len(page)

    def _forget_sealed(self, shards: Sequence[BucketShard]) -> None:
        if shards:
            self.ctx.write(remove=[self.ctx.keys.sealed(bs) for bs in shards])
            with self.ctx.lock:
                for bs in shards:
                    self.ctx.state.sealed.pop(bs, None)

    def _check_failed(self, failed: Sequence[ShardCursor]) -> None:
        """Shards whose log read failed: is their bucket instance still there? Pacific answers
        a deleted bucket's log with an empty 200 (not a 404) for a while, which would otherwise be
        retried as a transient error, holding the watermark back, until it turns into a 404."""
        st = self.ctx.state
        for name in sorted({sh.bs.bucket for sh in failed}):
            self.ctx.check_running()
            try:
                self.tracker.resolve(name)
            except TransientError as ex:
                logger.debug("bucket %s: %s", name, ex)
                continue
            for sh in failed:
                b = st.buckets.get(name)
                if sh.bs.bucket == name and (b is None or b.state == "gone" or not b.owns(sh.bs)):
                    logger.info("bucket index log %s: its bucket instance is gone", sh.bs.key)
                    self.ctx.write(remove=[self.ctx.keys.pending(sh.bs), self.ctx.keys.marker(sh.bs)])
                    st.shards.pop(sh.bs, None)

    def _mutations(
        self,
        bs: BucketShard,
        page: list[BilogEntry],
        observed_ns: int,
        facts: dict[str, ObjectFacts] | None,
        uploads: dict[str, bytes | None],
        generation: int | None = None,
    ) -> list[Mutation]:
        ctx = self.ctx
        gen = ctx.state.buckets[bs.bucket].gen if generation is None else generation
        # The shard's stream name and seq prefix, computed once for the page (not per entry).
        mapper = ShardMapper(bs, gen, writer=ctx.config.record_writer)
        out: list[Mutation] = []
        internal = unwanted = 0
        # No key prefixes for the bucket: every key is wanted (``BucketFilter.wants``), asked once.
        every_key = ctx.filter.wants_every_key(bs.bucket)
        try:
            mapped: list[Mutation | None] | None = mapper.map_page(page, observed_ns=observed_ns, facts=facts)
        except Exception:  # noqa: BLE001 - raised again below, in the order of the page's entries
            # One entry cannot be mapped: mapped again one by one, each with its skip work, so
            # that an earlier entry's error (a multipart upload's) is the one raised, as before.
            mapped = None
            mapper = ShardMapper(bs, mapper.generation, writer=mapper.writer)
        for k, entry in enumerate(page):
            m = mapped[k] if mapped is not None else mapper.map(entry, observed_ns=observed_ns, facts=facts)
            if m is None:
                # Companions and pending entries stand for no mutation of their own; complete
                # entries of the internal namespace (multipart parts, ...) are skipped, but a
                # multipart upload's meta object says an upload began or ended.
                if entry.get("state", "complete") == "complete" and entry.get("object") \
                        and index_name_to_key(str(entry["object"])) is None:
                    internal += 1
                    self._upload_change(bs, entry, uploads)
            elif every_key or ctx.filter.wants(bs.bucket, m.key):
                out.append(m)
            else:
                unwanted += 1
        if _UNTRACK is not None:
            _UNTRACK(out, Mutation, Op)
        with ctx.lock:
            ctx.stats.entries_read += len(page)
            ctx.stats.entries_skipped += len(page) - len(out)
        if internal:
            ctx.skipped("internal", internal)
        if unwanted:
            ctx.skipped("filter", unwanted)
        return out

    def _persist(self, advanced: Sequence[ShardProgress], now: float, uploads: dict[str, bytes | None]) -> None:
        """Persist the markers of a recorded round, with the multipart uploads it saw begin or
        end; drop shards that went quiet."""
        ctx, st = self.ctx, self.ctx.state
        sets: dict[str, bytes] = {k: v for k, v in uploads.items() if v is not None}
        removes: list[str] = [k for k, v in uploads.items() if v is None]
        cooled: list[ShardCursor] = []
        for p in advanced:
            sh = p.cursor
            if p.marker != (sh.marker or ""):
                sets[ctx.keys.marker(sh.bs)] = p.marker.encode()
            if p.had_entries:
                value = sh.heat(now + ctx.config.hot_seconds)
                if value is not None:
                    sets[ctx.keys.pending(sh.bs)] = value
            elif not p.more and now >= sh.hot_until:
                removes.append(ctx.keys.pending(sh.bs))
                cooled.append(sh)
        ctx.write(sets, removes)
        with ctx.lock:
            for p in advanced:
                self._advance(p, persisted_hot=ctx.keys.pending(p.cursor.bs) in sets, now=now)
            for sh in cooled:
                st.shards.pop(sh.bs, None)
                if ctx.trim_bilogs and sh.marker and sh.marker != sh.trimmed:
                    st.to_trim[sh.bs] = sh.marker

    def _upload_change(self, bs: BucketShard, entry: BilogEntry, uploads: dict[str, bytes | None]) -> None:
        """A multipart upload's meta object written (the upload began: its key and start time
        kept, for lifecycle's abort of incomplete uploads) or removed (completed or aborted)."""
        found = multipart_meta(str(entry.get("object", "")))
        if found is None or not self.ctx.filter.wants(bs.bucket, found[0]):
            return
        key, upload_id = found
        state_key = self.ctx.keys.upload(bs.bucket, upload_id)
        op = entry.get("op")
        if op == "write":
            # 0 for a time radosgw left unset: then the time it was read, an upper bound.
            started = parse_time_ns(str(entry.get("timestamp", ""))) or int(self.ctx.now() * 1_000_000_000)
            uploads[state_key] = dump_json({"key": key, "started_ns": started, "bucket_id": bs.bucket_id})
        elif op == "del":
            uploads[state_key] = None

    def _advance(self, p: ShardProgress, *, persisted_hot: bool, now: float) -> None:
        """The in-memory side of a persisted round (under the lock)."""
        sh = p.cursor
        sh.marker = p.marker
        if not p.more and (waiting := self.ctx.state.closing.get(sh.bs.bucket)) is not None:
            waiting.discard(sh.bs)
        if persisted_hot:
            sh.persisted_hot = sh.hot_until
        if not p.more and not sh.at_end:
            sh.at_end = True
        elif p.more and sh.at_end:
            sh.at_end = False
            sh.since = now

    def _instance_gone(self, sh: ShardCursor) -> None:
        """The shard's bucket instance answered 404: resharded away or deleted."""
        ctx, st = self.ctx, self.ctx.state
        name = sh.bs.bucket
        logger.info("bucket index log %s is gone; checking bucket %s", sh.bs.key, name)
        self.tracker.resolve(name)
        b = st.buckets.get(name)
        if b is not None and b.owns(sh.bs) and b.state == "incr":
            # Same instance, same generation, and its log is gone: someone else removed the
            # generation (`radosgw-admin bilog autotrim`) before it was read to its end. What it
            # held is unknown: a new baseline says what exists now.
            try:
                stats = ctx.admin.bucket_stats(name)
            except NotFound:
                return  # deleted meanwhile: the next sweep drops it
            if stats.bucket_id == b.bucket_id:
                ctx.lost(name, f"{b.bucket_id} (log generation {b.log_gen})", None,
                         "had its log generation removed (full sync follows)")
                self.tracker.start_full_sync(stats, b.gen + 1)
            b = st.buckets.get(name)
        if b is None or not b.owns(sh.bs):
            ctx.write(remove=[ctx.keys.pending(sh.bs), ctx.keys.marker(sh.bs)])
            st.shards.pop(sh.bs, None)

    def _page_facts(self, bs: BucketShard, page: list[BilogEntry], got: _Fetched) -> dict[str, ObjectFacts] | None:
        """The facts of the page's writes from the bucket index, by position, as ``_fetch`` read
        them (``object_info = "index"``; a write superseded there is absent). None: from radosgw
        instead (HEAD: ``object_info = "head"``, or the index cannot be read) or not at all."""
        if self.ctx.config.object_info != "index":
            return None
        reader = self.ctx.bucket_index
        facts = got.facts
        if facts is None and reader is not None and self._index_unreadable is None:
            try:  # not read with the page (it was then thought unreadable): read it now
                facts = reader.facts(bs, page)
            except Exception as ex:  # noqa: BLE001 - sorted below
                facts = ex
        if facts is None:
            if reader is None:
                self._index_fallback("no RADOS access to the bucket index pool (see the [index] section)")
            return None
        if isinstance(facts, LeaseLost | TransientError | Stopped | BadEntry):
            raise facts  # BadEntry: the page is bad (its mapping says so too), not the index
        if isinstance(facts, PermanentError):  # EPERM, no such pool, no librados...
            self._index_fallback(str(facts))
            return None
        if isinstance(facts, BaseException):
            raise facts
        return facts

    def _index_fallback(self, cause: str) -> None:
        """The bucket index cannot be read: HEAD instead, said once."""
        if self._index_unreadable is None:
            self._index_unreadable = cause
            logger.warning("object facts: cannot read the bucket index (%s); asking radosgw (HEAD) instead", cause)

    def _with_heads(self, mutations: list[Mutation], sources: set[str]) -> list[Mutation]:
        """The writes of ``sources`` with their facts from radosgw (HEAD or listing)."""
        subset = [m for m in mutations if m.source in sources]
        if self.ctx.config.object_info == "index":
            self.ctx.count_facts("head_fallback", sum(m.op is Op.WRITE for m in subset))
        if not any(m.op is Op.WRITE for m in subset):
            return mutations
        by_id = {(m.source, m.position): m for m in self._with_object_info(subset)}
        return [by_id.get((m.source, m.position), m) for m in mutations]

    def _with_object_info(self, mutations: list[Mutation]) -> list[Mutation]:
        """Size and etag of written versions: the bucket index log does not carry them."""
        idx = _needing_object_info(mutations)
        if not idx:
            return mutations

        def look(i: int) -> tuple[int, str | None] | None:
            m = mutations[i]
            return self.ctx.admin.object_info(qualified_name(m.tenant, m.bucket), m.key, m.version_id, m.mtime_ns)

        out = list(mutations)
        for i, info in zip(idx, self.ctx.parallel(look, idx), strict=True):
            if isinstance(info, TransientError):
                raise info
            if isinstance(info, BaseException):
                m = mutations[i]
                if m.bucket not in self._warned_info:
                    self._warned_info.add(m.bucket)
                    logger.warning("size/etag of objects in bucket %s unavailable: %s", m.bucket, info)
                continue
            if info is not None:
                # The entry's timestamp is the object's mtime (H6); HEAD does not tell the class.
                out[i] = dataclasses.replace(out[i], size=info[0], etag=info[1], obj_mtime_ns=out[i].mtime_ns)
        return out


def _needing_object_info(mutations: Sequence[Mutation]) -> list[int]:
    """The writes whose size and etag to look up. A later change of the same unversioned key
    within the same second would make a second-resolution listing (Tentacle) describe it
    instead: only the last one of such a second is looked up."""
    last: dict[tuple[str, str, str], int] = {}
    for i, m in enumerate(mutations):
        if m.version_id is None:
            last[(m.tenant, m.bucket, m.key)] = i
    return [
        i
        for i, m in enumerate(mutations)
        if m.op is Op.WRITE
        and m.size is None
        and (
            m.version_id is not None
            or last[(m.tenant, m.bucket, m.key)] == i
            or mutations[last[(m.tenant, m.bucket, m.key)]].mtime_ns // 1_000_000_000 != m.mtime_ns // 1_000_000_000
        )
    ]
