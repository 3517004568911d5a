"""Which instance and log generation of each bucket the RGW follower reads, kept in step with
radosgw: the first start (every existing bucket resolved), buckets created, resharded, deleted,
or deleted and created again, and baselines asked for. A bucket whose log is not known to be
complete gets a *full sync* (a baseline of its objects, ``full_sync``) before it is followed.

Buckets are named ``tenant/bucket`` for a tenant's (``mapping.qualified_name``). Each bucket
*lifetime* (its marker: a reshard keeps it, deleting and creating the bucket again makes a new
one) gets one ``bucket_create`` record when the follower first learns of it, before any other
record of it (at the first start too, then ``baseline``), and one ``bucket_delete`` when it
finds it gone, after every record read from it: the tracker is the only place that drops a
bucket's state, and it records the delete first (a crash in between records it again, which
the index drops as already seen).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

from changelog.errors import TransientError
from changelog.pipeline.control import (
    FOLLOWER_REQUEST_PREFIX,
)
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.store import omap_iter
from rgw_module.admin import BilogInfo, BucketStats, NotFound
from rgw_module.follower_state import (
    BootRecord,
    BucketRecord,
    FullSyncProgress,
    ShardCursor,
    pending_value,
)
from rgw_module.generations import start_closing
from rgw_module.mapping import BucketShard, bilog_marker, bucket_mutation
from rgw_module.sweep_context import SweepContext

logger = logging.getLogger(__name__)

# A bucket created after the follower's first start (both times from radosgw's clock) was born
# with its bucket-index log complete (log_data was on): it is followed from its first entry, no
# baseline. The first start is read from radosgw's Date header, truncated to whole seconds, so a
# bucket counts as created after it only when it is one full second past it.
FRESH_MARGIN_NS = 1_000_000_000


def _index_ver(marker: str) -> int:
    """The index version a bilog marker starts with (``00000000012.34.5``, maybe ``3#``-prefixed);
    0 for "" (nothing read) or a marker of another form."""
    head = bilog_marker(marker).partition(".")[0]
    return int(head) if head.isdigit() else 0


class BucketTracker:
    """Resolves buckets against radosgw and starts their full syncs (module docstring)."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx
        self.last_scan = float("-inf")

    def bootstrap(self) -> None:
        """First start: the data-log markers as they are now (what came before is covered by
        baselines), then every followed bucket resolved. Resumes if it was interrupted."""
        ctx, st = self.ctx, self.ctx.state
        if st.boot is None:
            boot_ns = ctx.admin.server_time_ns()
            n = ctx.admin.datalog_shards()
            markers = ctx.parallel(ctx.admin.datalog_info, list(range(n)))
            for m in markers:
                if isinstance(m, BaseException):
                    raise m
            st.datalog = {i: str(m) for i, m in enumerate(markers)}
            st.boot = BootRecord(boot_ns)
            ctx.write(
                {
                    ctx.keys.boot: st.boot.encode(),
                    **{ctx.keys.datalog(i): m.encode() for i, m in st.datalog.items()},
                }
            )
            logger.info("follower bootstrap: %d data-log shards, radosgw time %d", n, boot_ns)
        names = self._followed(ctx.admin.list_buckets())
        for name in names:
            ctx.check_running()
            if name not in st.buckets or st.buckets[name].state == "gone":
                self.resolve(name)
        st.boot = BootRecord(st.boot.time_ns, done=True)
        ctx.write({ctx.keys.boot: st.boot.encode()})
        self.last_scan = ctx.clocks.monotonic()
        logger.info("follower bootstrap done: %d buckets, %d to full-sync", len(names), len(st.full))

    def scan_now_and_then(self) -> None:
        """Every ``bucket_scan_interval``, list the zone's buckets: finds deleted ones (to drop
        their state) and new empty ones (the data log names a bucket only once it has a change)."""
        ctx = self.ctx
        if ctx.clocks.monotonic() - self.last_scan < ctx.config.bucket_scan_interval:
            return
        self.last_scan = ctx.clocks.monotonic()
        names = set(ctx.admin.list_buckets())
        for name in self._followed(names):
            b = ctx.state.buckets.get(name)
            if b is None or b.state == "gone":
                self.resolve(name)
        for name, b in sorted(ctx.state.buckets.items()):
            if b.state != "gone" and name not in names:
                self.resolve(name)

    def _followed(self, names: Iterable[str]) -> list[str]:
        """The followed ones of ``names``, sorted; a tenant's or an internal bucket among the
        others is named once (``SweepContext.skipped``)."""
        out = []
        for name in sorted(names):
            reason = self.ctx.skip_reason(name)
            if reason is None:
                out.append(name)
            elif reason != "filter":
                self.ctx.skipped(reason, 0, bucket=name)
        return out

    def take_requests(self) -> None:
        """Start the full syncs asked for with ``Follower.request_full_sync``."""
        ctx = self.ctx
        for k, _ in list(omap_iter(ctx.store, ctx.control_oid, prefix=FOLLOWER_REQUEST_PREFIX)):
            name = k[len(FOLLOWER_REQUEST_PREFIX) :]
            if not ctx.owns(name):
                continue  # another partition's
            if not ctx.filter.follows(name):
                logger.warning("full sync of %s asked for, but the source filter does not follow it", name)
                ctx.write(remove=[k])
                continue
            try:
                stats = ctx.admin.bucket_stats(name)
            except NotFound:
                logger.warning("full sync of %s asked for, but there is no such bucket", name)
                ctx.write(remove=[k])
                continue
            known = ctx.state.buckets.get(name)
            gen = known.gen + 1 if known is not None else 1
            logger.info("full sync of bucket %s requested: generation %d", name, gen)
            self._lifetime(known, stats, gen)
            self.start_full_sync(stats, gen, extra_remove=[k])

    def resolve(self, name: str) -> None:
        """Bring the bucket record of ``name`` up to date with radosgw: new bucket, reshard,
        deleted, or deleted and created again."""
        ctx = self.ctx
        if not ctx.filter.follows(name) or not ctx.owns(name):
            return
        try:
            stats: BucketStats | None = ctx.admin.bucket_stats(name)
        except NotFound:
            stats = None
        known = ctx.state.buckets.get(name)
        if stats is None:
            ctx.recreating.pop(name, None)
            self._gone(name, known)
            return
        if known is not None and known.state != "gone" and known.bucket_id == stats.bucket_id:
            return
        recreated = known is not None and known.state != "gone" and not _same_lifetime(known, stats)
        if recreated and known is not None and ctx.config.recreated_bucket_wait > 0:
            # Deleted and created again: the old lifetime ends first (its bucket_delete)...
            logger.info("bucket %s deleted and created again: instance %s -> %s", name, known.bucket_id, stats.bucket_id)
            self._gone(name, known, keep=stats.bucket_id)
            known = ctx.state.buckets.get(name)
        if known is not None and known.state == "gone" and self._old_life_uncommitted(known):
            return  # ...and the new one starts once no collector pass can commit it before that
        gen = known.gen + 1 if known is not None else 1
        if known is not None and known.state != "gone":
            why = "resharded" if _same_lifetime(known, stats) else "deleted and created again"
            if why == "resharded":
                # A deleted instance's unread entries are not a loss: bucket_delete says it is
                # empty and gone. A reshard (Pacific) leaves the bucket with entries unread.
                self._report_loss(known, f"was replaced ({why})")
            logger.info(
                "bucket %s %s: instance %s -> %s, generation %d",
                name,
                why,
                known.bucket_id,
                stats.bucket_id,
                gen,
            )
        self._lifetime(known, stats, gen)
        if not self._follow_from_first_entry(stats, gen):
            self.start_full_sync(stats, gen)
        elif known is not None and known.state == "gone":
            # A lifetime after a tombstone: the data log's news of its shards may have come
            # while it waited, in this process or in one that died or lost the lease meanwhile
            # (the news is then read and its shards dropped with the tombstone's): every shard
            # is read from its first entry.
            self._all_pending(ctx.state.buckets[name])

    def _old_life_uncommitted(self, tomb: BucketRecord) -> bool:
        """Whether the new lifetime of ``tomb``'s bucket must wait: its ``bucket_delete`` (recorded
        at ``deleted_us``, in the index's last shard) is not committed yet (``_recorded_by``), so
        a pass could still commit it after a ``bucket_create`` recorded now (first shard): a
        replayer would end with the bucket deleted. Waits while a collector holds its lease, or cut off
        within ``recreated_bucket_wait`` (its holder died and another takes it over at its next
        round: the lease is free in between); not when none ran for that long (nobody else
        could help); at most ``recreated_bucket_wait``."""
        from changelog.pipeline.collector_streams import draining

        ctx = self.ctx
        name = tomb.name
        wait = ctx.config.recreated_bucket_wait
        if wait <= 0 or tomb.deleted_us <= 0:
            ctx.recreating.pop(name, None)
            return False
        now = ctx.now()
        held, cutoff = draining(ctx.index, ctx.index.shards - 1, now)
        recent = cutoff > (now - wait) * 1_000_000
        if not (held or recent) or not self._recorded_by(tomb.deleted_us):
            ctx.recreating.pop(name, None)
            return False
        deadline = ctx.recreating.setdefault(name, max(now, tomb.deleted_us / 1_000_000) + wait)
        if now < deadline:
            return True
        ctx.recreating.pop(name, None)
        logger.warning(
            "bucket %s was created again, and no collector committed its bucket_delete within %g s: "
            "following its new lifetime now (a pass may commit its bucket_create before that delete)",
            name, wait,
        )  # fmt: skip
        return False

    def _recorded_by(self, deleted_us: int) -> bool:
        """Whether the index's last shard (where a ``bucket_delete`` goes) still holds an entry
        recorded at or before ``deleted_us``: the delete is not committed yet. A collector trims
        what it emitted only after committing it, so this is a commit, not a cutoff (a pass that
        persisted its cutoff and died committed nothing). One one-key read."""
        index = self.ctx.index
        first = index.first_entry_us(index.shards - 1)
        return first is not None and first <= deleted_us

    def _lifetime(self, known: BucketRecord | None, stats: BucketStats, gen: int) -> None:
        """Record the bucket ops of moving from ``known`` to the instance of ``stats`` (before the
        state says so): a ``bucket_create`` for a bucket not known (or gone) or never announced,
        a ``bucket_delete`` then a ``bucket_create`` for one deleted and created again; nothing
        for a reshard of an announced bucket."""
        ctx = self.ctx
        live = known is not None and known.state != "gone"
        ops: list[Mutation] = []
        if live and known is not None and _same_lifetime(known, stats):
            if known.announced:
                return
        elif live and known is not None:
            ops.append(self._delete_op(known))
        boot_ns = ctx.state.boot.time_ns if ctx.state.boot is not None else 0
        created = stats.creation_ns if stats.creation_ns > 0 else int(ctx.now() * 1_000_000_000)
        ops.append(
            bucket_mutation(
                Op.BUCKET_CREATE,
                bucket=stats.name,
                marker=stats.marker or stats.bucket_id,
                generation=gen,
                time_ns=created,
                # Not clearly created after the follower's first start: part of the baseline
                # (as its objects are: it gets a full sync).
                baseline=boot_ns <= 0 or stats.creation_ns <= boot_ns + FRESH_MARGIN_NS,
            )
        )
        self._record(ops)

    def announce(self) -> None:
        """Record the ``bucket_create`` of each bucket followed since before bucket records
        existed (its state says it was never announced), once, as part of the baseline; a bucket
        found replaced or gone meanwhile is resolved instead."""
        ctx = self.ctx
        for name, b in sorted(ctx.state.buckets.items()):
            if b.announced or b.state == "gone":
                continue
            ctx.check_running()
            try:
                stats = ctx.admin.bucket_stats(name)
            except NotFound:
                self.resolve(name)
                continue
            if not _same_lifetime(b, stats):
                self.resolve(name)
                continue
            self._lifetime(b, stats, b.gen)
            b.announced = True
            ctx.write({ctx.keys.bucket(name): b.encode()})

    def _record(self, ops: list[Mutation]) -> None:
        """Record bucket ops *before* the state that says they happened is written: a crash in
        between records them again, which the index drops by their (source, position)."""
        ctx = self.ctx
        ctx.record(ops)
        with ctx.lock:
            for m in ops:
                ctx.stats.bucket_ops[m.op.value] += 1
        ctx.fault("bucket.recorded")

    def _delete_op(self, known: BucketRecord) -> Mutation:
        """The ``bucket_delete`` of ``known``'s lifetime: stamped with the time it was found gone
        (an upper bound), its ``seq`` after every record of its last generation."""
        return bucket_mutation(
            Op.BUCKET_DELETE,
            bucket=known.name,
            marker=known.marker or known.bucket_id,
            generation=known.gen,
            time_ns=int(self.ctx.now() * 1_000_000_000),
        )

    def _gone(self, name: str, known: BucketRecord | None, *, keep: str | None = None) -> None:
        """``name`` answered 404: keep a tombstone (its ``gen`` orders a bucket of the same name
        created later), drop the rest of its state (but the shards of instance ``keep``: the
        bucket's next lifetime, when it was created again)."""
        ctx = self.ctx
        if known is not None and known.state != "gone":
            # Every record read from it is in the index (the bilog reader resolves a bucket
            # after recording its round): the delete comes after them. What its log still held
            # unread (Pacific and Reef drop the log with the bucket) is not a loss of final
            # state: the delete tells a replayer the bucket is empty and gone.
            self._record([self._delete_op(known)])
            logger.info("bucket %s is gone (deleted): recorded bucket_delete, dropping its follower state", name)
            # A gone bucket has no log generation left to finish: a closing generation kept here
            # would hold every later sweep incomplete (and the watermark with it).
            tomb = dataclasses.replace(
                known, state="gone", closing=False, deleted_us=int(ctx.now() * 1_000_000)
            )
            # Its uploads in progress went with it.
            uploads = [k for k, _ in omap_iter(ctx.store, ctx.control_oid, prefix=ctx.keys.upload(name, ""))]
            ctx.write(
                {ctx.keys.bucket(name): tomb.encode()},
                self.bucket_keys(name, keep=keep) + [ctx.keys.full(name), *uploads],
            )
            ctx.state.forget(name, keep=keep)
            ctx.state.buckets[name] = tomb
        else:
            ctx.state.forget(name, keep=keep)
        ctx.state.closing.pop(name, None)

    def _report_loss(self, known: BucketRecord, why: str) -> None:
        """The instance of ``known`` is replaced by a reshard (the bucket lives on): what of its
        log was not read is lost (an accepted loss, docs/design.md §10). The estimate, per shard: the index version of the
        shard's newest marker minus that of the marker read to (radosgw numbers a shard's log
        entries ``<index_ver>.<...>``, one version per entry, pending and complete ones alike,
        so it counts entries, about two per mutation on Pacific). Unknown when the instance's
        log cannot be read any more (Pacific removes it with the reshard or the deletion). An
        instance still readable and read to its end lost nothing and is not reported."""
        ctx = self.ctx
        shards = known.shard_list()
        got = ctx.store.omap_get(ctx.control_oid, [ctx.keys.marker(bs) for bs in shards])
        estimate: int | None = 0
        for bs in shards:
            try:
                head = ctx.admin.bilog_max_marker(bs)
            except (NotFound, TransientError):
                estimate = None
                break
            read = got.get(ctx.keys.marker(bs), b"").decode()
            estimate = (estimate or 0) + max(0, _index_ver(head) - _index_ver(read))
        if estimate != 0:
            ctx.lost(known.name, known.bucket_id, estimate, why)

    def _follow_from_first_entry(self, stats: BucketStats, gen: int) -> bool:
        """Follow a bucket born after the follower's first start without a baseline, if its log
        is complete from its first entry: never resharded, or resharded in place with every log
        generation kept (then followed from generation 0). False: it needs a full sync."""
        ctx, st = self.ctx, self.ctx.state
        boot_ns = st.boot.time_ns if st.boot is not None else 0
        fresh = (
            boot_ns > 0 and stats.creation_ns > boot_ns + FRESH_MARGIN_NS and stats.bucket_id == stats.marker
        )
        if not fresh:
            return False
        info = self.bilog_info(stats)
        if info.oldest_gen != 0:
            return False
        name = stats.name
        b = BucketRecord(
            name, stats.bucket_id, stats.marker, gen, info.generations.get(0, stats.num_shards), "incr", 0,
            info.latest_gen > 0,
        )  # fmt: skip
        ctx.write({ctx.keys.bucket(name): b.encode()}, self.bucket_keys(name, keep=stats.bucket_id))
        st.forget(name, keep=stats.bucket_id)
        st.closing.pop(name, None)
        st.buckets[name] = b
        if b.closing:
            start_closing(ctx, b, ctx.now(), persist=True)
        logger.info("following new bucket %s (%s) from its first log entry", name, stats.bucket_id)
        return True

    def _all_pending(self, b: BucketRecord) -> None:
        ctx, st = self.ctx, self.ctx.state
        now = ctx.now()
        hot_until = now + ctx.config.hot_seconds
        shards = [bs for bs in b.shard_list() if bs not in st.shards]
        ctx.write({ctx.keys.pending(bs): pending_value(hot_until) for bs in shards})
        for bs in shards:
            st.shards[bs] = ShardCursor(bs, hot_until=hot_until, persisted_hot=hot_until, since=now)

    def bucket_keys(self, name: str, *, keep: str | None = None) -> list[str]:
        """The marker and pending keys of ``name`` (of every instance but ``keep``)."""
        ctx = self.ctx
        out: list[str] = []
        for prefix in (ctx.keys.marker_prefix, ctx.keys.pending_prefix):
            for k, _ in omap_iter(ctx.store, ctx.control_oid, prefix=f"{prefix}{name}:"):
                bs = BucketShard.parse(k[len(prefix) :])
                if bs is not None and bs.bucket == name and bs.bucket_id != keep:
                    out.append(k)
        return out

    def start_full_sync(self, stats: BucketStats, gen: int, *, extra_remove: Sequence[str] = ()) -> None:
        """Baseline, then incremental: the log markers are taken *before* the listing, so every
        change is either in the listing or after the markers (or both)."""
        ctx, st = self.ctx, self.ctx.state
        name = stats.name
        # The markers and the log generation they belong to come from one response.
        info = self.bilog_info(stats)
        b = BucketRecord(
            name,
            stats.bucket_id,
            stats.marker,
            gen,
            info.generations[info.latest_gen],
            "full",
            info.latest_gen,
        )
        fs = FullSyncProgress(stats.bucket_id, gen, started=ctx.now())
        sets: dict[str, bytes] = {ctx.keys.bucket(name): b.encode(), ctx.keys.full(name): fs.encode()}
        for bs in b.shard_list():
            sets[ctx.keys.marker(bs)] = info.max_markers.get(bs.shard, "").encode()
        removes = [k for k in self.bucket_keys(name) if k not in sets] + list(extra_remove)
        ctx.write(sets, removes)
        st.forget(name)
        st.closing.pop(name, None)
        st.buckets[name] = b
        st.full[name] = fs
        with ctx.lock:
            ctx.stats.full_syncs_started += 1
        logger.info(
            "full sync of bucket %s (%s, %d shards, generation %d) started",
            name,
            stats.bucket_id,
            stats.num_shards,
            gen,
        )

    def bilog_info(self, stats: BucketStats) -> BilogInfo:
        """Log generations of the bucket's current instance (Pacific: generation 0 with the
        shards of ``stats``). A bucket gone between two calls is retried by the next sweep."""
        try:
            info = self.ctx.admin.bilog_info(stats.name, stats.bucket_id)
        except NotFound as ex:
            raise TransientError(f"bucket {stats.name} changed while it was being resolved") from ex
        self.ctx.state.generation_aware = info.generation_aware
        if not info.generation_aware:
            return BilogInfo(0, 0, {0: stats.num_shards}, stats.max_markers, False)
        return info


def _same_lifetime(known: BucketRecord, stats: BucketStats) -> bool:
    """Whether ``stats`` is the bucket of ``known`` (resharded, maybe) rather than a bucket of the
    same name created after it was deleted: the marker, the first instance's id, tells."""
    if known.marker and stats.marker:
        return known.marker == stats.marker
    return known.bucket_id == stats.bucket_id
