"""Bucket-index-log generations (Reef and later reshard a bucket in place: same instance id, a new
log generation starting empty beside the old one). A bucket whose newer generation was seen is
*closing*: each shard of its current generation is read to its end once more, then the old
generation is trimmed up to what was recorded and the next one is followed from its first entry,
with our per-bucket ``gen`` bumped so per-key order holds across the switch (rgw_module/README.md,
"Log generations").

The finished generation's shards stay *sealed* for ``sealed_seconds``: each is read again from its
marker after ``sealed_poll_interval``, doubling while it stays empty (``BilogReader.read_sealed``),
because radosgw may still add an entry to a generation after its successor exists (a write that
completes across the reshard; Reef's and Squid's listing-time index repairs, upstream PR 59609).
Such *late* entries are recorded
under a per-bucket ``gen`` of their own (after everything recorded of the key before, and before
what follows), then the shard is trimmed again at the end of its time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from changelog.errors import TransientError
from rgw_module.admin import BilogInfo, NotFound
from rgw_module.follower_state import (
    BucketRecord,
    SealedShard,
    ShardCursor,
    pending_value,
)
from rgw_module.mapping import BucketShard
from rgw_module.sweep_context import SweepContext

logger = logging.getLogger(__name__)


def start_closing(ctx: SweepContext, b: BucketRecord, now: float, *, persist: bool) -> dict[str, bytes]:
    """A newer log generation of ``b`` exists: read each shard of the current one to its end
    once more (entries may have landed after its last read), then move on
    (``advance_generations``). Returns the control-object writes, or makes them (``persist``)."""
    b.closing = True
    shards = b.shard_list()
    ctx.state.closing[b.name] = set(shards)
    hot_until = now + ctx.config.hot_seconds
    sets: dict[str, bytes] = {ctx.keys.bucket(b.name): b.encode()}
    for bs in shards:
        sh = ctx.state.shards.get(bs)
        if sh is None:
            sh = ctx.state.shards[bs] = ShardCursor(bs, since=now)
        sh.at_end = False
        sh.since = min(sh.since, now) if sh.since else now
        sh.hot_until = max(sh.hot_until, hot_until)
        sh.persisted_hot = sh.hot_until
        sets[ctx.keys.pending(bs)] = pending_value(sh.hot_until)
    logger.info(
        "bucket %s: a newer bucket-index-log generation than %d exists (resharded): finishing %d shards",
        b.name, b.log_gen, len(shards),
    )  # fmt: skip
    if persist:
        ctx.write(sets)
        ctx.fault("closing")  # a newer generation seen and persisted, not yet read
        return {}
    return sets


def advance_generations(ctx: SweepContext, resolve: Callable[[str], None]) -> bool:
    """Move each bucket whose closing generation was read to its end to the next one: the old
    generation is trimmed up to what was recorded (all of it), the next is read from its first
    entry. True when a bucket moved on. ``resolve`` re-reads a bucket that answered 404."""
    moved = False
    closing = ctx.state.closing
    for name in sorted(closing):
        if closing[name]:
            continue  # shards left to read to their end
        ctx.check_running()
        b = ctx.state.buckets.get(name)
        if b is None or b.state != "incr" or not b.closing:
            if b is None or b.state == "gone":
                closing.pop(name, None)
            continue
        try:
            info = ctx.admin.bilog_info(name, b.bucket_id)
        except NotFound:
            closing.pop(name, None)
            resolve(name)
            continue
        except TransientError as ex:
            ctx.count_error("bilog")
            logger.warning("bucket %s: log generations unreadable: %s", name, ex)
            continue
        nxt = info.next_gen(b.log_gen)
        if nxt is None:
            # Nothing newer after all (the generation seen was this one's successor, since
            # removed?): keep following this one.
            b.closing = False
            closing.pop(name, None)
            ctx.write({ctx.keys.bucket(name): b.encode()})
            continue
        markers = _markers(ctx, b.shard_list())
        if ctx.trim_bilogs:
            _trim_generation(ctx, markers)
        ctx.fault("advance")  # old generation trimmed, the switch not yet written
        _switch(ctx, b, info, nxt, markers)
        moved = True
    return moved


def _markers(ctx: SweepContext, old: list[BucketShard]) -> dict[BucketShard, str]:
    """The persisted markers of a generation's shards ("": nothing recorded from it)."""
    got = ctx.store.omap_get(ctx.control_oid, [ctx.keys.marker(bs) for bs in old])
    return {bs: (got.get(ctx.keys.marker(bs)) or b"").decode() for bs in old}


def _trim_generation(ctx: SweepContext, markers: dict[BucketShard, str]) -> None:
    """Trim the shards of a finished generation up to their persisted markers: everything up to
    them is recorded (what radosgw adds after them is read as late entries while sealed)."""
    jobs = [(bs, m) for bs, m in markers.items() if m]
    results = ctx.parallel(lambda j: ctx.admin.bilog_trim(j[0], j[1]), jobs)
    for (bs, _m), r in zip(jobs, results, strict=True):
        if isinstance(r, BaseException) and not isinstance(r, NotFound):
            ctx.count_error("trim")
            logger.warning("trimming bucket index log %s: %s", bs.key, r)


def _switch(
    ctx: SweepContext, b: BucketRecord, info: BilogInfo, nxt: int, markers: dict[BucketShard, str]
) -> None:
    """Follow generation ``nxt`` of ``b`` from its first entry: one write swaps the bucket
    record, turns the old shards' markers into sealed shards (``sealed_seconds``; dropped when
    0) and makes every new shard pending."""
    name = b.name
    st = ctx.state
    nb = BucketRecord(
        name, b.bucket_id, b.marker, b.gen + 1, info.generations[nxt], "incr", nxt, info.latest_gen > nxt, b.announced
    )
    now = ctx.now()
    hot_until = now + ctx.config.hot_seconds
    old = b.shard_list()
    new_shards = nb.shard_list()
    sets: dict[str, bytes] = {ctx.keys.bucket(name): nb.encode()}
    sets.update((ctx.keys.pending(bs), pending_value(hot_until)) for bs in new_shards)
    sealed: dict[BucketShard, SealedShard] = {}
    if ctx.config.sealed_seconds > 0:
        until = now + ctx.config.sealed_seconds
        first = now + ctx.config.sealed_poll_interval  # each was just read to its end
        sealed = {bs: SealedShard(markers.get(bs, ""), until, next_poll=first) for bs in old}
        sets.update((ctx.keys.sealed(bs), s.encode()) for bs, s in sealed.items())
    ctx.write(sets, [k for bs in old for k in (ctx.keys.marker(bs), ctx.keys.pending(bs))])
    for bs in old:
        st.shards.pop(bs, None)
        st.to_trim.pop(bs, None)
    with ctx.lock:
        st.sealed.update(sealed)
    for bs in new_shards:
        st.shards[bs] = ShardCursor(bs, marker="", hot_until=hot_until, persisted_hot=hot_until, since=now)
    st.buckets[name] = nb
    st.closing.pop(name, None)
    if nb.closing:
        start_closing(ctx, nb, now, persist=True)
    logger.info(
        "bucket %s: log generation %d done, following generation %d (%d shards) from its start",
        name, b.log_gen, nxt, nb.shards,
    )  # fmt: skip
