"""Full syncs: the baseline of a bucket whose log is not known to be complete (existing objects,
a reshard on Pacific, a baseline asked for), listed through S3 and recorded as baseline records,
a budget of pages per sweep so a huge bucket does not starve incremental work. The log markers
were taken before the listing (``BucketTracker.start_full_sync``): once it is done every shard is
read once from them, and the bucket turns incremental.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from changelog.pipeline.mutation import Mutation
from rgw_module.admin import AccessDenied, NotFound, ObjectPage
from rgw_module.follower_state import (
    FullSyncProgress,
    ShardCursor,
    pending_value,
)
from rgw_module.mapping import baseline_mutation
from rgw_module.sweep_context import SweepContext

logger = logging.getLogger(__name__)


class FullSyncRunner:
    """Lists the buckets in full sync, ``full_sync_pages`` listing pages per sweep.
    ``resolve`` re-reads a bucket that answered 404 in the middle of its listing."""

    def __init__(self, ctx: SweepContext, resolve: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.resolve = resolve

    def run(self) -> bool:
        """One sweep's budget of listing pages; True when no full sync is left but those of
        buckets the source user may not list (``_denied``)."""
        ctx, full = self.ctx, self.ctx.state.full
        budget = ctx.config.full_sync_pages
        now = ctx.now()
        for name in sorted(full):
            if ctx.denied.get(name, 0.0) > now:
                continue
            while budget > 0 and name in full:
                ctx.check_running()
                budget -= 1
                try:
                    self._page(name)
                except NotFound:
                    self.resolve(name)
                    break
                except AccessDenied as ex:
                    self._denied(name, ex, now)
                    break
                if ctx.denied.pop(name, None) is not None:
                    ctx.followed_again(name)
        return all(ctx.denied.get(name, 0.0) > now for name in full)

    def _denied(self, name: str, ex: AccessDenied, now: float) -> None:
        """The source user may not list ``name`` (another user's or a tenant's bucket, without a
        system user). The bucket waits in full sync, its log markers kept, so nothing is lost
        once it may be read; meanwhile it is named as not followed, asked again every
        ``bucket_scan_interval``, and does not hold the watermark back."""
        ctx = self.ctx
        if name not in ctx.denied:
            logger.warning("bucket %s cannot be listed: %s", name, ex)
        ctx.denied[name] = now + max(60.0, ctx.config.bucket_scan_interval)
        ctx.skipped("access_denied", 0, bucket=name)

    def _page(self, name: str) -> None:
        """List and record one page of ``name``, then persist how far the listing got."""
        ctx = self.ctx
        fs = ctx.state.full[name]
        if fs.versions is None:
            fs.versions = ctx.admin.bucket_versioning(name, fs.bucket_id) != "off"
        prefixes = ctx.filter.list_prefixes(name)
        if fs.prefix_idx < len(prefixes):
            page = ctx.admin.list_objects(
                name,
                prefix=prefixes[fs.prefix_idx],
                key_marker=fs.key_marker,
                version_marker=fs.version_marker,
                versions=fs.versions,
            )
            result = ctx.record(self._baseline(name, fs, page))
            with ctx.lock:
                ctx.stats.baseline_recorded += result.written
            ctx.fault("full.recorded")
            fs.counter += len(page.items)
            if page.truncated:
                fs.key_marker, fs.version_marker = page.key_marker, page.version_marker
            else:
                fs.prefix_idx += 1
                fs.key_marker = fs.version_marker = ""
        if fs.prefix_idx < len(prefixes):
            ctx.write({ctx.keys.full(name): fs.encode()})
        else:
            self._done(name, fs)

    def _baseline(self, name: str, fs: FullSyncProgress, page: ObjectPage) -> list[Mutation]:
        return [
            baseline_mutation(
                bucket=name,
                bucket_id=fs.bucket_id,
                generation=fs.gen,
                counter=fs.counter + i,
                key=o.key,
                version_id=o.version_id,
                delete_marker=o.delete_marker,
                size=o.size,
                etag=o.etag,
                mtime_ns=o.mtime_ns,
                storage_class=o.storage_class,
            )
            for i, o in enumerate(page.items)
            if self.ctx.filter.wants(name, o.key)
        ]

    def _done(self, name: str, fs: FullSyncProgress) -> None:
        """The bucket turns incremental, and every shard is read once from the markers taken
        before the listing (a change during the listing may sit in any of them)."""
        ctx, st = self.ctx, self.ctx.state
        b = st.buckets[name]
        b.state = "incr"
        now = ctx.now()
        sets = {ctx.keys.bucket(name): b.encode()}
        for bs in b.shard_list():
            with ctx.lock:
                sh = st.shards.get(bs) or ShardCursor(bs, since=now)
                sh.hot_until = max(sh.hot_until, now + ctx.config.hot_seconds)
                sh.persisted_hot = sh.hot_until
                sh.at_end = False
                st.shards[bs] = sh
            sets[ctx.keys.pending(bs)] = pending_value(sh.hot_until)
        ctx.write(sets, [ctx.keys.full(name)])
        del st.full[name]
        with ctx.lock:
            ctx.stats.full_syncs_done += 1
        logger.info(
            "full sync of bucket %s done: %d objects listed in %.1fs", name, fs.counter, now - fs.started
        )
