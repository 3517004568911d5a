"""Turning one follower's state (``r.`` keys) into follower partitions (``rp.<p>.`` keys) and back
(``[scale] partitioned`` switched on or off; docs/design.md §14).

``rp.meta`` (``{"count": n}``) says the state is partitioned, and into how many: the count is
fixed while it exists (a bucket's partition is a hash of its name modulo the count).

**Split** (the first partitioned start), under the ``follower`` lease, so no unpartitioned
follower runs meanwhile: every ``r.`` key is copied to its bucket's partition (the data-log
markers and the bootstrap to every partition: each reads the whole data log), then ``rp.meta``
is written, then the ``r.`` keys are removed (requests ``r.rq.`` stay: the owner partition takes
them). A crash before ``rp.meta`` starts the split again from the intact ``r.`` keys; one after
it only finishes the removals (``prepare_partitions`` does both).

**Merge** (``partitioned = false`` again), refused while a partitioned ``serve`` is a live member,
under every partition's lease, in two phases marked in ``rp.meta``:

1. the merged state is computed from every partition and written under ``r.``, replacing any
   ``r.`` key left from before (a stale full sync must not run again): each data-log shard's
   marker is the *lowest* of every partition's (and of one already there: a re-run after a
   crash); a partition with no marker for a shard (it never ran) makes it ``""``, read from its
   start. ``caught_up_until`` is the lowest, and absent if one partition has none (it caps the
   collector's watermark: it must never be ahead). The bootstrap is the earliest, done only if
   every partition's was. Then ``rp.meta`` is marked ``merging``;
2. the ``rp.`` keys are removed, ``rp.meta`` last. A crash in phase 2 only finishes the
   removals; one in phase 1 computes the same state again from the intact partitions.

Every batch first renews the leases it works under (a long migration must not outlive them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import orjson

from changelog.errors import PermanentError, TransientError
from changelog.pipeline.control import (
    FOLLOWER_BOOT_KIND,
    FOLLOWER_BUCKET_KIND,
    FOLLOWER_CAUGHT_UP_KIND,
    FOLLOWER_DATALOG_KIND,
    FOLLOWER_FULL_KIND,
    FOLLOWER_LOCK,
    FOLLOWER_MARKER_KIND,
    FOLLOWER_PARTITION_META_KEY,
    FOLLOWER_PENDING_KIND,
    FOLLOWER_REQUEST_PREFIX,
    FOLLOWER_ROLE,
    FOLLOWER_SEALED_KIND,
    FOLLOWER_UPLOAD_KIND,
    partition_lock,
    partition_member_key,
)
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease
from changelog.pipeline.store import WriteOp, omap_iter
from rgw_module.follower_state import ZONE_KEYS, BootRecord, StateKeys
from rgw_module.mapping import BucketShard
from rgw_module.partition_scope import bucket_partition
from rgw_module.trim import marker_order

logger = logging.getLogger(__name__)

META_KEY = FOLLOWER_PARTITION_META_KEY
# Keys per write while splitting or merging.
MIGRATE_BATCH = 1000
MIGRATE_LEASE_TTL = 60.0


def read_meta_doc(index: ChangeIndex) -> dict[str, object] | None:
    raw = index.store.omap_get(index.control_oid, [META_KEY]).get(META_KEY)
    return None if raw is None else dict(orjson.loads(raw))


def read_meta(index: ChangeIndex) -> int | None:
    """The partition count the index's follower state is cut into, None if not partitioned."""
    doc = read_meta_doc(index)
    return None if doc is None else int(str(doc["count"]))


# ---------------------------------------------------------------------- split


def prepare_partitions(index: ChangeIndex, count: int) -> None:
    """Before a partitioned follower's rounds: check the count against ``rp.meta``, or split
    the ``r.`` state into ``count`` partitions (or finish a split a crash interrupted)."""
    doc = read_meta_doc(index)
    if doc is not None:
        have = int(str(doc["count"]))
        if have != count:
            raise PermanentError(
                f"scale.follower_partitions is {count}, but this index's follower state is cut into {have} "
                "partitions; set it back to that (the count is fixed for an index)"
            )
        if doc.get("merging"):
            raise TransientError("the follower partitions are being merged back into one follower's state")
        if not _zone_keys(index):
            return
    lease = Lease(index.store, index.control_oid, name=FOLLOWER_LOCK, ttl=MIGRATE_LEASE_TTL, description="split")
    if not lease.acquire():
        raise TransientError("an unpartitioned follower holds the follower lease: stop it before partitioning")
    try:
        _split(index, count, [lease])
    finally:
        lease.release()


def _zone_keys(index: ChangeIndex) -> list[tuple[str, bytes]]:
    """The ``r.`` state keys (requests apart)."""
    return [
        (k, v)
        for k, v in omap_iter(index.store, index.control_oid, prefix=ZONE_KEYS.prefix)
        if not k.startswith(FOLLOWER_REQUEST_PREFIX)
    ]


def _split(index: ChangeIndex, count: int, leases: Sequence[Lease]) -> None:
    state = _zone_keys(index)
    if read_meta(index) is None:
        sets: dict[str, bytes] = {}
        zone = ZONE_KEYS
        for k, v in state:
            rest = k[len(zone.prefix) :]
            if k in (zone.boot, zone.caught_up) or rest.startswith(FOLLOWER_DATALOG_KIND):
                targets: Iterable[int] = range(count)
            else:
                bucket = bucket_of(rest)
                if bucket is None:
                    logger.warning("follower state key %s not understood: dropped in the split", k)
                    continue
                targets = (bucket_partition(bucket, count),)
            for n in targets:
                sets[StateKeys.of(n).prefix + rest] = v
        _write(index, sets, leases)
        _write(index, {META_KEY: orjson.dumps({"count": count})}, leases)
        logger.info("follower state split into %d partitions: %d keys", count, len(state))
    _remove(index, [k for k, _ in state], leases)


def bucket_of(rest: str) -> str | None:
    """The bucket a follower key (without its prefix) is about: ``k.``/``f.`` name it, ``u.``
    names it before ``:<upload id>``, ``p.``, ``m.`` and ``s.`` name a bucket-index shard."""
    head, dot, tail = rest.partition(".")
    kind = head + dot
    if kind in (FOLLOWER_BUCKET_KIND, FOLLOWER_FULL_KIND):
        return tail
    if kind == FOLLOWER_UPLOAD_KIND:
        return tail.rpartition(":")[0] or None
    if kind in (FOLLOWER_PENDING_KIND, FOLLOWER_MARKER_KIND, FOLLOWER_SEALED_KIND):
        bs = BucketShard.parse(tail)
        return None if bs is None else bs.bucket
    return None


# ---------------------------------------------------------------------- merge


def merge_partitions(index: ChangeIndex, *, now: float | None = None) -> int | None:
    """Turn a partitioned follower state back into one follower's (module docstring); the
    former count, or None when the state was not partitioned."""
    doc = read_meta_doc(index)
    if doc is None:
        return None
    count = int(str(doc["count"]))
    store, oid = index.store, index.control_oid
    live = _live_members(index, time.time() if now is None else now)
    if live:
        raise TransientError(
            f"partitioned serve(s) {', '.join(live)} still run on this index: stop them before "
            "turning [scale] partitioned off"
        )
    leases = [
        Lease(store, oid, name=partition_lock(FOLLOWER_ROLE, n), ttl=MIGRATE_LEASE_TTL, description="merge")
        for n in range(count)
    ]
    try:
        for lease in leases:
            if not lease.acquire():
                raise TransientError("follower partitions are held by a running serve: stop every partitioned serve first")
        if not doc.get("merging"):
            _merge_state(index, count, leases)
            _write(index, {META_KEY: orjson.dumps({"count": count, "merging": True})}, leases)
        prefixes = [StateKeys.of(n).prefix for n in range(count)]
        _remove(index, [k for p in prefixes for k, _ in omap_iter(store, oid, prefix=p)], leases)
        _remove(index, [META_KEY], leases)
        logger.info("follower state of %d partitions merged back into one follower's", count)
        return count
    finally:
        for lease in leases:
            lease.release()


def _live_members(index: ChangeIndex, now: float) -> list[str]:
    prefix = partition_member_key(FOLLOWER_ROLE, "")
    out = []
    for k, raw in omap_iter(index.store, index.control_oid, prefix=prefix):
        try:
            expires = float(orjson.loads(raw)["expires"])
        except (ValueError, KeyError, TypeError):
            continue
        if expires >= now:
            out.append(k[len(prefix) :])
    return out


def _merge_state(index: ChangeIndex, count: int, leases: Sequence[Lease]) -> None:
    """Phase 1 of the merge: the merged ``r.`` state written, stale ``r.`` keys removed."""
    store, oid = index.store, index.control_oid
    zone = ZONE_KEYS
    existing = dict(_zone_keys(index))
    sets: dict[str, bytes] = {}
    markers: dict[str, list[str]] = {}
    have: dict[str, int] = {}  # data-log key -> partitions with a marker for it
    cus: list[int] = []
    boots: list[BootRecord] = []
    for n in range(count):
        keys = StateKeys.of(n)
        for k, v in omap_iter(store, oid, prefix=keys.prefix):
            rest = k[len(keys.prefix) :]
            if rest.startswith(FOLLOWER_DATALOG_KIND):
                markers.setdefault(zone.prefix + rest, []).append(v.decode())
                have[zone.prefix + rest] = have.get(zone.prefix + rest, 0) + 1
            elif rest == FOLLOWER_CAUGHT_UP_KIND:
                cus.append(int(v))
            elif rest == FOLLOWER_BOOT_KIND:
                boots.append(BootRecord.decode(v))
            else:
                sets[zone.prefix + rest] = v
    for k, found in markers.items():
        if k in existing:
            found.append(existing[k].decode())  # a re-run: what the first run wrote counts
        sets[k] = b"" if have[k] < count else min(found, key=marker_order).encode()
    if len(cus) == count:
        if zone.caught_up in existing:
            cus.append(int(existing[zone.caught_up]))
        sets[zone.caught_up] = str(min(cus)).encode()
    if boots:
        sets[zone.boot] = BootRecord(min(b.time_ns for b in boots), done=len(boots) == count and all(b.done for b in boots)).encode()
    stale = [k for k in existing if k not in sets]
    _remove(index, stale, leases)
    _write(index, sets, leases)


# ---------------------------------------------------------------------- batches


def _renew(leases: Sequence[Lease]) -> None:
    for lease in leases:
        if not lease.acquire():  # extends a lease held
            raise TransientError(f"lost the lease {lease.ref.name} while moving the follower state: tried again later")


def _write(index: ChangeIndex, sets: dict[str, bytes], leases: Sequence[Lease]) -> None:
    items = sorted(sets.items())
    for i in range(0, len(items), MIGRATE_BATCH):
        _renew(leases)
        index.store.execute(index.control_oid, WriteOp(set=dict(items[i : i + MIGRATE_BATCH]), fence=leases[0].ref))


def _remove(index: ChangeIndex, keys: list[str], leases: Sequence[Lease]) -> None:
    for i in range(0, len(keys), MIGRATE_BATCH):
        _renew(leases)
        index.store.execute(index.control_oid, WriteOp(remove=keys[i : i + MIGRATE_BATCH], fence=leases[0].ref))
