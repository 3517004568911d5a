"""The follower cut into partitions (``[scale] partitioned``, docs/design.md §14): every
``serve`` of the index with the setting runs a ``PartitionedFollower``, which takes its fair
share of ``follower_partitions`` partition leases (``changelog.pipeline.partitions``) and runs
one ``Follower`` per partition held, each over its own buckets (``partition_scope``), its state
under ``rp.<p>.`` and its writes fenced by the partition's lease. A dead instance's partitions
are free one lease TTL after its last renewal, and the others take them at their next refresh.

The partition count is fixed for an index (``rp.meta``): a bucket's partition is a hash of its
name modulo the count, so another count would hand buckets to partitions without their state.
An index followed unpartitioned (``r.`` keys) is split once, on the first partitioned start,
under the single follower's lease (so none runs meanwhile): every key is copied to its bucket's
partition (the data-log markers to every partition: each reads the whole data log), ``rp.meta``
is written last and the ``r.`` keys removed after it. A crash in between starts the split again
from the ``r.`` keys, which are still whole. ``merge_partitions`` is the way back.

``caught_up_until`` of the whole zone is the minimum over the partitions' persisted values
(the collector's watermark cap): a partition nobody has run yet holds it back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import orjson

from changelog.config import SourceConfig
from changelog.errors import LeaseLost, PermanentError, TransientError
from changelog.pipeline.control import (
    FOLLOWER_LOCK,
    FOLLOWER_PARTITION_META_KEY,
    FOLLOWER_PREFIX,
    FOLLOWER_ROLE,
    partition_lock,
)
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease, Renewer, make_cookie
from changelog.pipeline.loop import Clocks, Stopped
from changelog.pipeline.partitions import Partitions
from changelog.pipeline.store import WriteOp, omap_iter
from rgw_module.admin import AdminClient
from rgw_module.bucket_index import BucketIndexReader
from rgw_module.follower import Follower
from rgw_module.follower_state import ZONE_KEYS, StateKeys, follower_state
from rgw_module.mapping import BucketShard
from rgw_module.partition_scope import PartitionScope, bucket_partition
from rgw_module.trim import marker_order

logger = logging.getLogger(__name__)

META_KEY = FOLLOWER_PARTITION_META_KEY
# Keys per write while splitting or merging (the last write, rp.meta or the r. removal, commits).
MIGRATE_BATCH = 1000


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
        self._retired: list[Follower] = []  # of partitions lost and taken again: their counters
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
                except TransientError as ex:
                    self.errors["transient"] += 1
                    logger.warning("follower partitions: %s", ex)
                stop.wait(max(0.0, self.config.poll_interval - (self.clocks.monotonic() - t0)))
        finally:
            self.step_down()

    def step(self, stop: threading.Event | None = None) -> list[int]:
        """One round: refresh the share, sweep each partition held. The partitions held."""
        if not self._prepared:
            prepare_partitions(self.index, self.count)
            self._prepared = True
        held = self.partitions.refresh()
        for n in held:
            if n not in self._held and n in self._followers:
                # Taken again (a new lease): a fresh follower, which loads the state another
                # instance may have moved meanwhile.
                self._retired.append(self._followers.pop(n))
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
        return [self.partitions.lease(n) for n in self.partitions.held()]

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
        followers = [(n in held, f) for n, f in sorted(self._followers.items())]
        followers += [(False, f) for f in self._retired]
        out: dict[str, object] = {}
        for live, f in followers:
            for k, v in f.stats().items():
                if k in ("lag_seconds", "pending_shards", "full_syncs_running") and not live:
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


# ---------------------------------------------------------------------- split and merge


def read_meta(index: ChangeIndex) -> int | None:
    """The partition count the index's follower state is cut into, None if not partitioned."""
    raw = index.store.omap_get(index.control_oid, [META_KEY]).get(META_KEY)
    return None if raw is None else int(orjson.loads(raw)["count"])


def prepare_partitions(index: ChangeIndex, count: int) -> None:
    """Before the first partitioned sweep: check the count against ``rp.meta``, or write it,
    splitting an unpartitioned follower's state first (module docstring)."""
    have = read_meta(index)
    if have is not None:
        if have != count:
            raise PermanentError(
                f"scale.follower_partitions is {count}, but this index's follower state is cut into {have} "
                "partitions; set it back to that (the count is fixed for an index)"
            )
        return
    _with_zone_lease(index, lambda lease: _split(index, count, lease))


def merge_partitions(index: ChangeIndex) -> int | None:
    """Turn a partitioned follower state back into one follower's (``[scale] partitioned =
    false`` after it was true), under every partition's lease; the former count, or None when
    the state was not partitioned. Data-log markers: each shard's lowest (re-reads, no loss);
    caught_up_until: the lowest."""
    count = read_meta(index)
    if count is None:
        return None
    store, oid = index.store, index.control_oid
    leases = [
        Lease(store, oid, name=partition_lock(FOLLOWER_ROLE, n), ttl=30.0, description="merge")
        for n in range(count)
    ]
    try:
        for lease in leases:
            if not lease.acquire():
                raise TransientError(
                    "follower partitions are held by a running serve: stop it (or every partitioned serve) first"
                )
        sets: dict[str, bytes] = {}
        removes: list[str] = []
        datalog: dict[str, list[str]] = {}
        cu: list[int] = []
        boot: bytes | None = None
        for n in range(count):
            keys = StateKeys.of(n)
            for k, v in omap_iter(store, oid, prefix=keys.prefix):
                removes.append(k)
                rest = k[len(keys.prefix) :]
                if rest.startswith("dl."):
                    datalog.setdefault(FOLLOWER_PREFIX + rest, []).append(v.decode())
                elif rest == "cu":
                    cu.append(int(v))
                elif rest == "boot":
                    boot = boot or v
                else:
                    sets[FOLLOWER_PREFIX + rest] = v
        for k, markers in datalog.items():
            sets[k] = min(markers, key=marker_order).encode()
        if cu and len(cu) == count:
            sets[ZONE_KEYS.caught_up] = str(min(cu)).encode()
        if boot is not None:
            sets[ZONE_KEYS.boot] = boot
        _write_batches(index, sets, leases[0])
        _remove_batches(index, [k for k in removes], leases[0], last=[META_KEY])
        return count
    finally:
        for lease in leases:
            lease.release()


def _with_zone_lease(index: ChangeIndex, work: Callable[[Lease], None]) -> None:
    lease = Lease(index.store, index.control_oid, name=FOLLOWER_LOCK, ttl=60.0, description="partition split")
    if not lease.acquire():
        raise TransientError(
            "an unpartitioned follower holds the follower lease: stop it before partitioning"
        )
    try:
        if read_meta(index) is None:
            work(lease)
    finally:
        lease.release()


def _split(index: ChangeIndex, count: int, lease: Lease) -> None:
    store, oid = index.store, index.control_oid
    sets: dict[str, bytes] = {}
    removes: list[str] = []
    zone = ZONE_KEYS
    everyone = (zone.boot, zone.caught_up)
    for k, v in omap_iter(store, oid, prefix=zone.prefix):
        rest = k[len(zone.prefix) :]
        if rest.startswith("rq."):
            continue  # requests stay: the owner partition takes them
        removes.append(k)
        if k in everyone or rest.startswith("dl."):
            targets: Iterable[int] = range(count)
        else:
            bucket = _bucket_of(rest)
            if bucket is None:
                logger.warning("follower state key %s not understood: dropped in the split", k)
                continue
            targets = (bucket_partition(bucket, count),)
        for n in targets:
            sets[StateKeys.of(n).prefix + rest] = v
    _write_batches(index, sets, lease)
    _write_batches(index, {META_KEY: orjson.dumps({"count": count})}, lease)
    _remove_batches(index, removes, lease, last=[])
    if removes:
        logger.info("follower state split into %d partitions: %d keys", count, len(removes))


def _bucket_of(rest: str) -> str | None:
    """The bucket a follower key (without its prefix) is about: ``k.``/``f.`` name it, ``u.``
    names it before ``:<upload id>``, ``p.`` and ``m.`` name a bucket-index shard."""
    kind, _, tail = rest.partition(".")
    if kind in ("k", "f"):
        return tail
    if kind == "u":
        return tail.rpartition(":")[0] or None
    if kind in ("p", "m"):
        bs = BucketShard.parse(tail)
        return None if bs is None else bs.bucket
    return None


def _write_batches(index: ChangeIndex, sets: dict[str, bytes], lease: Lease) -> None:
    items = sorted(sets.items())
    for i in range(0, len(items), MIGRATE_BATCH):
        index.store.execute(
            index.control_oid, WriteOp(set=dict(items[i : i + MIGRATE_BATCH]), fence=lease.ref)
        )


def _remove_batches(index: ChangeIndex, removes: list[str], lease: Lease, *, last: list[str]) -> None:
    for i in range(0, len(removes), MIGRATE_BATCH):
        index.store.execute(
            index.control_oid, WriteOp(remove=removes[i : i + MIGRATE_BATCH], fence=lease.ref)
        )
    if last:
        index.store.execute(index.control_oid, WriteOp(remove=last, fence=lease.ref))
