"""Trimming radosgw's logs up to what the follower persisted as read, never beyond: everything at
or before a persisted marker is in the index. A single zone never trims its logs itself. Busy
logs are trimmed at most every ``trim_interval``; the bucket-index logs of excluded buckets (the
change-log target's own writes) are trimmed as they come, since nobody records them.
"""

from __future__ import annotations

import logging
import re

from rgw_module.admin import NotFound
from rgw_module.follower_state import ShardCursor, StateKeys
from rgw_module.mapping import BucketShard
from rgw_module.sweep_context import SweepContext

logger = logging.getLogger(__name__)

# A bucket-index shard to trim up to a marker; its cursor, if it is still pending.
_TrimJob = tuple[BucketShard, str, ShardCursor | None]


class Trimmer:
    """The trim step at the end of each sweep."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def trim(self) -> None:
        if not self.ctx.trim_bilogs:
            return
        now = self.ctx.clocks.monotonic()
        jobs, excluded = self._bilog_jobs(now)
        self._trim_bilogs(jobs, now)
        self._trim_excluded(excluded)
        if self.ctx.trim_datalog:
            self._trim_datalog(now)

    def _bilog_jobs(self, now: float) -> tuple[list[_TrimJob], list[BucketShard]]:
        """The pending shards due a trim and the cooled ones owed one; the excluded shards seen."""
        ctx, st = self.ctx, self.ctx.state
        interval = ctx.config.trim_interval
        with ctx.lock:
            jobs: list[_TrimJob] = [
                (sh.bs, sh.marker, sh)
                for sh in st.shards.values()
                if sh.marker
                and sh.marker != sh.trimmed
                and now - sh.last_trim >= interval
                and (b := st.buckets.get(sh.bs.bucket)) is not None
                and b.state == "incr"
            ]
            jobs += [(bs, m, None) for bs, m in st.to_trim.items()]
            st.to_trim = {}
            excluded = list(st.excluded_seen)
            st.excluded_seen.clear()
        return jobs, excluded

    def _trim_bilogs(self, jobs: list[_TrimJob], now: float) -> None:
        ctx, st = self.ctx, self.ctx.state

        def trim_shard(job: _TrimJob) -> None:
            try:
                ctx.admin.bilog_trim(job[0], job[1])
            except NotFound:
                pass  # resharded away or deleted: nothing left to trim

        for (bs, marker, sh), r in zip(jobs, ctx.parallel(trim_shard, jobs), strict=True):
            if isinstance(r, BaseException):
                ctx.count_error("trim")
                logger.warning("trimming bucket index log %s: %s", bs.key, r)
                if sh is None:
                    with ctx.lock:
                        st.to_trim.setdefault(bs, marker)  # owed: try again next sweep
                continue
            with ctx.lock:
                ctx.stats.bilog_trims += 1
                if sh is not None:
                    sh.trimmed = marker
                    sh.last_trim = now
            ctx.fault("trim")

    def _trim_excluded(self, excluded: list[BucketShard]) -> None:
        """The change-log target bucket's own writes: nobody records them, trim them as they come."""
        ctx = self.ctx

        def trim_excluded(bs: BucketShard) -> None:
            try:
                ctx.admin.bilog_trim(bs, ctx.admin.bilog_max_marker(bs))
            except NotFound:
                pass

        for bs, r in zip(excluded, ctx.parallel(trim_excluded, excluded), strict=True):
            if isinstance(r, BaseException):
                ctx.count_error("trim")
                logger.warning("trimming bucket index log %s: %s", bs.key, r)

    def _trim_datalog(self, now: float) -> None:
        ctx, st = self.ctx, self.ctx.state
        # Only shards not trimmed within ``trim_interval`` (a partition reads the other
        # partitions' markers for those alone).
        shards = [n for n in st.datalog if now - st.datalog_trimmed.get(n, ("", float("-inf")))[1] >= ctx.config.trim_interval]
        due: list[tuple[int, str]] = []
        for n, m in sorted(self._datalog_markers(shards).items()):
            if m and m != st.datalog_trimmed.get(n, ("", 0.0))[0]:
                due.append((n, m))
        for (n, m), r in zip(due, ctx.parallel(lambda item: ctx.admin.datalog_trim(*item), due), strict=True):
            if isinstance(r, BaseException):
                ctx.count_error("trim")
                logger.warning("trimming data log shard %d: %s", n, r)
                continue
            st.datalog_trimmed[n] = (m, now)
            with ctx.lock:
                ctx.stats.datalog_trims += 1

    def _datalog_markers(self, shards: list[int]) -> dict[int, str]:
        """How far data-log ``shards`` may be trimmed: this follower's markers; for a partition,
        those of the shards it trims (``owns_datalog``), each up to the *lowest* marker of every
        partition (all read the whole data log). A partition that never ran has no marker and
        holds its shards back: nothing is trimmed that one of them has not read."""
        ctx, st = self.ctx, self.ctx.state
        scope = ctx.scope
        if scope is None:
            return {n: st.datalog[n] for n in shards}
        mine = [n for n in shards if scope.owns_datalog(n)]
        others = [StateKeys.of(p) for p in range(scope.count) if p != scope.index]
        wanted = [k.datalog(n) for n in mine for k in others]
        got = ctx.store.omap_get(ctx.control_oid, wanted) if wanted else {}
        out: dict[int, str] = {}
        for n in mine:
            markers = [st.datalog[n], *(got[k.datalog(n)].decode() for k in others if k.datalog(n) in got)]
            if len(markers) == len(others) + 1:
                out[n] = min(markers, key=marker_order)
        return out


def marker_order(marker: str) -> tuple[int, ...]:
    """A data-log marker as a sortable tuple: its generation, then its numbers in order. FIFO
    markers (Pacific and later) are ``<part:020d>:<offset:020d>``, the old omap ones
    ``1_<sec>.<usec>_<n>.1``; a later data-log generation (after a change of the data log's
    backing) prefixes ``G<gen:020d>@`` (radosgw's ``gencursor``), generation 0 nothing. The empty
    marker (nothing read) sorts first."""
    gen = 0
    m = _GENERATION.match(marker)
    if m is not None:
        gen, marker = int(m[1]), marker[m.end() :]
    return (gen, *(int(x) for x in _DIGITS.findall(marker)))


_DIGITS = re.compile(r"\d+")
_GENERATION = re.compile(r"G(\d+)@")
