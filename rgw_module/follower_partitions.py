"""The follower cut into partitions (``[scale] partitioned``, docs/design.md §14): every
``serve`` of the index with the setting runs a ``PartitionedFollower``, which takes its fair
share of ``follower_partitions`` partition leases (``changelog.pipeline.partitions``) and runs
one ``Follower`` per partition held, each over its own buckets (``partition_scope``), its state
under ``rp.<p>.`` and its writes fenced by the partition's lease. A dead instance's partitions
are free one lease TTL after its last renewal, and the others take them at their next refresh.

The partition count is fixed for an index (``rp.meta``): a bucket's partition is a hash of its
name modulo the count, so another count would hand buckets to partitions without their state.
An index followed unpartitioned (``r.`` keys) is split on the first partitioned start, and
merged back when ``partitioned`` is turned off (``follower_migrate``). Every round first checks
``rp.meta``: a state merged away meanwhile is never restarted from nothing.

``caught_up_until`` of the whole zone is the minimum over the partitions' persisted values
(the collector's watermark cap): a partition nobody has run yet holds it back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from changelog.config import SourceConfig
from changelog.errors import LeaseLost, TransientError
from changelog.pipeline.control import (
    FOLLOWER_ROLE,
    partition_lock,
)
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease, Renewer, make_cookie
from changelog.pipeline.loop import Clocks, Stopped
from changelog.pipeline.partitions import Partitions
from rgw_module.admin import AdminClient
from rgw_module.bucket_index import BucketIndexReader
from rgw_module.follower import Follower
from rgw_module.follower_migrate import (
    META_KEY,
    merge_partitions,
    prepare_partitions,
    read_meta,
    read_meta_doc,
)
from rgw_module.follower_state import StateKeys, follower_state
from rgw_module.partition_scope import PartitionScope

logger = logging.getLogger(__name__)

# Stats that describe a follower now, not counters since the start (not kept once it is replaced).
LIVE_ONLY = frozenset({"lag_seconds", "pending_shards", "full_syncs_running", "caught_up_until", "lease_held"})

__all__ = ["META_KEY", "PartitionedFollower", "merge_partitions", "partitioned_state", "prepare_partitions", "read_meta"]


class PartitionedFollower:
    """This instance's share of the follower partitions (module docstring). The same face as
    ``Follower`` to the service: ``run``, ``stats``, ``status``, ``caught_up_until_us``,
    ``leases``, ``close``."""

    def __init__(
        self,
        index: ChangeIndex,
        admin: AdminClient,
        config: SourceConfig,
        *,
        count: int,
        instance: str | None = None,
        clocks: Clocks | None = None,
        paused: Callable[[], bool] | None = None,
        internal_buckets: Iterable[str] = (),
        bucket_index: BucketIndexReader | None = None,
        renewer: Renewer | None = None,
    ) -> None:
        self.name = "follower"
        self.index = index
        self.admin = admin
        self.config = config
        self.count = count
        self.instance = instance or make_cookie("follower")
        self.clocks = clocks if clocks is not None else Clocks()
        self._paused = paused
        self._internal = tuple(internal_buckets)
        self._bucket_index = bucket_index
        self.partitions = Partitions(
            index.store,
            index.control_oid,
            role=FOLLOWER_ROLE,
            count=count,
            instance=self.instance,
            ttl=config.lease_ttl,
            clock=self.clocks.clock,
            monotonic=self.clocks.monotonic,
            renewer=renewer,
        )
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rgw-follower")
        self._followers: dict[int, Follower] = {}
        # The counters of followers replaced (partitions lost and taken again).
        self._retired_stats: dict[str, object] = {}
        self._held: list[int] = []
        self._retry_at: dict[int, tuple[float, float]] = {}  # partition -> (when, backoff)
        self._prepared = False
        self.errors: dict[str, int] = {"transient": 0, "leases_lost": 0}

    def __repr__(self) -> str:
        return f"PartitionedFollower({self.instance!r}, {self.count} partitions, {self.admin.endpoint!r})"

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: refresh this instance's share, then a sweep of every partition held,
        every ``poll_interval``. A transient error backs off that partition only; a lost lease
        drops it (another instance has it); a permanent error is raised."""
        try:
            while not stop.is_set():
                if self._paused is not None and self._paused():
                    stop.wait(min(self.config.poll_interval, 0.5))
                    continue
                t0 = self.clocks.monotonic()
                try:
                    self.step(stop)
                except Stopped:
                    break
                except (TransientError, LeaseLost) as ex:
                    # LeaseLost: the split's lease, lost in a long split (it is resumed).
                    self.errors["transient"] += 1
                    logger.warning("follower partitions: %s", ex)
                stop.wait(max(0.0, self.config.poll_interval - (self.clocks.monotonic() - t0)))
        finally:
            self.step_down()

    def step(self, stop: threading.Event | None = None) -> list[int]:
        """One round: refresh the share, sweep each partition held. The partitions held."""
        # Every round: the state may have been merged back (``partitioned = false`` elsewhere,
        # with this instance holding nothing): then it is split again from the merged state,
        # never restarted from nothing (and not while an unpartitioned follower runs).
        doc = read_meta_doc(self.index)
        if doc is None or int(str(doc["count"])) != self.count or doc.get("merging") or not self._prepared:
            if doc is None or doc.get("merging"):
                self._drop_all()
            prepare_partitions(self.index, self.count)
            self._prepared = True
        held = self.partitions.refresh()
        for n in held:
            if n not in self._held and n in self._followers:
                # Taken again (a new lease): a fresh follower, which loads the state another
                # instance may have moved meanwhile.
                self._retire(self._followers.pop(n))
        self._held = held
        for n in held:
            if stop is not None and stop.is_set():
                raise Stopped()
            self._sweep(n, stop or threading.Event())
        return held

    def _sweep(self, n: int, stop: threading.Event) -> None:
        when, backoff = self._retry_at.get(n, (0.0, 0.0))
        if self.clocks.monotonic() < when:
            return
        f = self._followers.get(n)
        if f is None:
            f = self._followers[n] = self._follower(n)
        try:
            f.step(stop)
        except LeaseLost as ex:
            self.errors["leases_lost"] += 1
            logger.warning("follower partition %d lost its lease, stopped writing: %s", n, ex)
            self._held = [h for h in self._held if h != n]
        except TransientError as ex:
            self.errors["transient"] += 1
            backoff = min(max(backoff * 2, self.config.backoff_base), self.config.backoff_max)
            self._retry_at[n] = (self.clocks.monotonic() + backoff, backoff)
            logger.warning("follower partition %d: sweep failed, next in %.1fs: %s", n, backoff, ex)
        else:
            self._retry_at.pop(n, None)

    def _retire(self, f: Follower) -> None:
        """Keep a replaced follower's counters (not the follower: its state may be large)."""
        for k, v in f.stats().items():
            if k not in LIVE_ONLY:
                self._retired_stats[k] = _merge(self._retired_stats.get(k), v)

    def _drop_all(self) -> None:
        """The state was merged away under us: every partition's follower is stale."""
        for n in list(self._followers):
            self._retire(self._followers.pop(n))
        self._held = []

    def _follower(self, n: int) -> Follower:
        return Follower(
            self.index,
            self.admin,
            self.config,
            clocks=self.clocks,
            follower_id=self.instance,
            internal_buckets=self._internal,
            bucket_index=self._bucket_index,
            partition=PartitionScope(n, self.count),
            lease=self.partitions.lease(n),
            pool=self._pool,
        )

    def step_down(self) -> None:
        self.partitions.close()
        self._held = []

    def close(self) -> None:
        self.step_down()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._bucket_index is not None:
            self._bucket_index.close()

    # ------------------------------------------------------------------ what the service asks

    def leases(self) -> list[Lease]:
        return self.partitions.held_leases()

    def caught_up_until_us(self) -> int | None:
        """Every mutation radosgw completed before this time (unix µs) is in the index: the
        minimum over every partition (persisted, or live where this instance is ahead of it);
        None while one partition has none."""
        keys = [StateKeys.of(n).caught_up for n in range(self.count)]
        got = self.index.store.omap_get(self.index.control_oid, keys)
        out: int | None = None
        for n, k in enumerate(keys):
            values = [int(got[k])] if k in got else []
            f = self._followers.get(n)
            live = f.caught_up_until_us() if f is not None and n in self._held else None
            if live is not None:
                values.append(live)
            if not values:
                return None
            out = max(values) if out is None else min(out, max(values))
        return out

    def caught_up_until(self) -> float | None:
        us = self.caught_up_until_us()
        return None if us is None else us / 1_000_000

    def stats(self) -> dict[str, object]:
        """``Follower.stats`` summed over the partitions this process ran (counters since it
        started; lag and pending shards of those it holds), with ``partitions_held``."""
        held = set(self._held)
        # Snapshots: the follower thread changes these while a scrape or health check reads.
        followers = [(n in held, f) for n, f in sorted(list(self._followers.items()))]
        out: dict[str, object] = dict(self._retired_stats)
        for live, f in followers:
            for k, v in f.stats().items():
                if k in LIVE_ONLY and not live:
                    continue
                out[k] = _merge(out.get(k), v)
        out["caught_up_until"] = self.caught_up_until()
        out["lease_held"] = bool(held)
        errors = dict(out.get("source_errors") or {})  # type: ignore[call-overload]
        if self.errors["transient"]:
            errors["transient"] = errors.get("transient", 0) + self.errors["transient"]
        out["source_errors"] = errors
        out["partitions_held"] = sorted(held)
        out["partitions_count"] = self.count
        return out

    def status(self) -> dict[str, object]:
        """The persisted state of every partition, and who holds which (``partitioned_state``),
        with this instance's share."""
        return {**partitioned_state(self.index), "this": {"instance": self.instance, "partitions": self._held}}


def partitioned_state(index: ChangeIndex) -> dict[str, object]:
    """``status`` of a partitioned follower (no lease needed): the count, the zone's
    caught_up_until (the lowest of the partitions'), which instance holds which partition, and
    each partition's persisted state."""
    count = read_meta(index)
    if count is None:
        return {"partitioned": False}
    store, oid = index.store, index.control_oid
    by_partition = {
        str(n): follower_state(index, StateKeys.of(n), partition_lock(FOLLOWER_ROLE, n)) for n in range(count)
    }
    holders: dict[str, list[int]] = {}
    for n in range(count):
        info = store.lock_info(oid, partition_lock(FOLLOWER_ROLE, n))
        if info is not None:
            holders.setdefault(info.cookie, []).append(n)
    cus = [doc.get("caught_up_until") for doc in by_partition.values()]
    return {
        "partitioned": True,
        "count": count,
        "caught_up_until": None if any(c is None for c in cus) else min(float(str(c)) for c in cus),
        "holders": holders,
        "unheld": [n for n in range(count) if not any(n in v for v in holders.values())],
        "by_partition": by_partition,
    }


def _merge(a: object, b: object) -> object:
    """Counters add up, dicts merge (adding what both have), the rest: the latest."""
    if a is None:
        return b
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) or bool(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out.get(k), v)
        return out
    return b
