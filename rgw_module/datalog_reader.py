"""Reading radosgw's data log: each entry names a bucket-index shard that changed, which becomes
*pending* (``ShardCursor``) and stays *hot* (re-read every sweep) for ``hot_seconds``, because
radosgw logs a busy shard at most once per ``rgw_data_log_window`` (H5). With an explicit bucket
list only the data-log shards those buckets log to are read (H9), after checking that none was
resharded; every shard is still read each ``datalog_full_interval``.
"""

from __future__ import annotations

import logging

from changelog.errors import LeaseLost, PermanentError
from changelog.pipeline.loop import Stopped
from rgw_module.admin import DataLogEntry, NotFound
from rgw_module.bucket_tracker import BucketTracker
from rgw_module.follower_state import ShardCursor
from rgw_module.generations import start_closing
from rgw_module.mapping import datalog_shard
from rgw_module.sweep_context import PARTITION, SweepContext

logger = logging.getLogger(__name__)

# radosgw's default number of index shards for a new bucket (bucket_index_max_shards): the
# data-log shards of a bucket not seen yet are predicted with at least this many.
DEFAULT_INDEX_SHARDS = 11


class DataLogReader:
    """Reads the data log from the persisted markers to its end, marking shards pending."""

    def __init__(self, ctx: SweepContext, tracker: BucketTracker) -> None:
        self.ctx = ctx
        self.tracker = tracker
        self.last_full_read = float("-inf")

    def read(self) -> bool:
        """Read the shards of this sweep (``targets``) to their end; False if one failed."""
        shards = self.targets()
        results = self.ctx.parallel(self._read_shard, shards)
        complete = True
        for n, r in zip(shards, results, strict=True):
            if isinstance(r, Stopped | LeaseLost | PermanentError):
                raise r
            if isinstance(r, BaseException):
                self.ctx.count_error("datalog")
                logger.warning("data log shard %d: %s", n, r)
                complete = False
        return complete

    def targets(self) -> list[int]:
        """The data-log shards to read this sweep: all of them when every bucket is followed (or
        now and then), else only those the followed and excluded buckets log to (H9: 11 requests
        per bucket per sweep instead of 128)."""
        ctx = self.ctx
        every = sorted(ctx.state.datalog)
        now = ctx.clocks.monotonic()
        if ctx.filter.all or not every or now - self.last_full_read >= ctx.config.datalog_full_interval:
            self.last_full_read = now
            return every
        n = max(every) + 1
        # A partition's own buckets only (``[scale] partitioned``; every partition still reads
        # every shard now and then, so all its markers move and the data log can be trimmed).
        names = sorted(name for name in ctx.filter.buckets | ctx.filter.exclude if ctx.owns(name))
        if len(names) * (DEFAULT_INDEX_SHARDS + 1) >= n:
            return every
        newest = self._check_followed_buckets()
        targets: set[int] = set()
        for name in names:
            b = ctx.state.buckets.get(name)
            shards = max(b.shards if b is not None else 0, newest.get(name, 0), DEFAULT_INDEX_SHARDS)
            targets.update(datalog_shard(name, s, n) for s in range(shards))
        return sorted(t for t in targets if t in ctx.state.datalog)

    def _check_followed_buckets(self) -> dict[str, int]:
        """A reshard changes the shard count, and so where the new shards are logged: check each
        followed bucket's instance first (started before this sweep, so caught_up_until holds),
        and on Reef and later its newest log generation (a reshard in place keeps the id).
        Returns the shard count of the newest generation of each bucket that has a newer one."""
        ctx, st = self.ctx, self.ctx.state
        newest: dict[str, int] = {}
        for name in sorted(ctx.filter.buckets):
            if not ctx.filter.follows(name) or not ctx.owns(name):
                continue
            b = st.buckets.get(name)
            try:
                current: str | None = ctx.admin.bucket_instance_id(name)
            except NotFound:
                current = None
            known = None if b is None or b.state == "gone" else b.bucket_id
            if known != current:
                self.tracker.resolve(name)
            b = st.buckets.get(name)
            if b is None or b.state == "gone" or st.generation_aware is False:
                continue
            try:
                info = ctx.admin.bilog_info(name, b.bucket_id)
            except NotFound:
                continue  # the next sweep resolves it
            st.generation_aware = info.generation_aware
            if info.latest_gen > b.log_gen:
                newest[name] = max(n for g, n in info.generations.items() if g >= b.log_gen)
                if not b.closing:
                    start_closing(ctx, b, ctx.now(), persist=True)
        return newest

    def _read_shard(self, n: int) -> None:
        """Read data-log shard ``n`` to its end, a page at a time; each page's pending shards and
        its marker are persisted together (runs on the worker pool)."""
        ctx = self.ctx
        while True:
            ctx.check_running()
            marker = ctx.state.datalog.get(n, "")
            page = ctx.admin.datalog_list(n, marker)
            sets = self._mark_pending(page.entries, ctx.now())
            if page.marker and page.marker != marker:
                sets[ctx.keys.datalog(n)] = page.marker.encode()
            if sets:
                ctx.write(sets)
                ctx.fault("datalog")
                if any(k.startswith(ctx.keys.bucket_prefix) for k in sets):
                    ctx.fault("closing")  # a newer generation seen and persisted, not yet read
            ctx.state.datalog[n] = page.marker or marker
            if not page.truncated or not page.entries:
                return

    def _mark_pending(self, entries: list[DataLogEntry], now: float) -> dict[str, bytes]:
        """Make the shards ``entries`` name pending and hot; the control-object writes that says
        so. An entry of a newer log generation of a followed instance starts its closing."""
        ctx, st = self.ctx, self.ctx.state
        sets: dict[str, bytes] = {}
        for e in entries:
            bs = e.shard
            reason = ctx.skip_reason(bs.bucket)
            if reason == PARTITION:
                continue
            if reason is not None:
                ctx.skipped(reason, bucket=bs.bucket)
            if ctx.filter.excluded(bs.bucket):
                with ctx.lock:
                    st.excluded_seen.setdefault(bs, now)
                continue
            if reason is not None:
                continue
            with ctx.lock:
                b = st.buckets.get(bs.bucket)
                if e.has_gen and b is not None and b.state != "gone" and b.bucket_id == bs.bucket_id:
                    if b.outgrown_by(bs) and not b.closing:
                        # Resharded in place: finish this generation first (every shard read to
                        # its end from now on), then follow the next one from its start.
                        sets.update(start_closing(ctx, b, now, persist=False))
                    if bs.log_gen != b.log_gen:
                        continue
                sh = st.shards.get(bs)
                if sh is None:
                    sh = st.shards[bs] = ShardCursor(bs, since=now)
                elif sh.at_end:
                    sh.at_end = False
                    sh.since = now
                value = sh.heat(now + ctx.config.hot_seconds)
                if value is not None:
                    sets[ctx.keys.pending(bs)] = value
                    sh.persisted_hot = sh.hot_until
        return sets
