"""The RGW follower's state: the records it keeps in the index's control object (key names in
``changelog.pipeline.control``), their in-memory mirror (``FollowerState``, reloaded after every lease
takeover: another follower may have moved it), and ``follower_state(index)``, the persisted state
as ``rgw-changelog status`` shows it (no lease needed).

==================================  ===========================================================
``r.boot``                          ``BootRecord``: radosgw's clock at the first start
``r.dl.<nnnn>``                     data-log shard marker
``r.p.<bucket>:<id>:<shard>``       pending bucket-index shard: ``{"hot_until": unix time}``
``r.m.<bucket>:<id>:<shard>``       bucket-index-log marker (bare), last entry recorded
``r.k.<bucket>``                    ``BucketRecord``: instance, shards, log generation, state
``r.f.<bucket>``                    ``FullSyncProgress``
``r.rq.<bucket>``                   a full sync asked for (``Follower.request_full_sync``)
``r.cu``                            caught_up_until, microseconds
``r.u.<bucket>:<upload id>``        a multipart upload in progress (key, start)
``r.s.<bucket>:<id>:<shard>@<gen>`` a shard of a finished log generation, re-read now and then
                                    for entries radosgw still adds: ``{"marker", "until"}``
==================================  ===========================================================

``<bucket>`` is the qualified name: ``tenant/bucket`` for a tenant's bucket.

Every write happens under the follower lease (fenced), so one follower per index owns them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal, cast

import orjson

from changelog.pipeline.control import (
    FOLLOWER_BOOT_KIND,
    FOLLOWER_BUCKET_KIND,
    FOLLOWER_CAUGHT_UP_KIND,
    FOLLOWER_DATALOG_KIND,
    FOLLOWER_FULL_KIND,
    FOLLOWER_LOCK,
    FOLLOWER_MARKER_KIND,
    FOLLOWER_PARTITION_PREFIX,
    FOLLOWER_PENDING_KIND,
    FOLLOWER_PREFIX,
    FOLLOWER_SEALED_KIND,
    FOLLOWER_UPLOAD_KIND,
)
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.store import ObjectStore, omap_iter
from rgw_module.mapping import BucketShard

logger = logging.getLogger(__name__)

# A pending shard's ``hot_until`` moves forward on every round that reads entries from it: it
# is persisted only once it moved by more than this, or a busy shard would cost a write a round.
HOT_PERSIST_SLACK = 5.0

BucketState = Literal["full", "incr", "gone"]

# A sealed shard read empty waits ``sealed_poll_interval`` times 2, 4... up to this before its next
# read: late entries come soonest after the reshard, and a zone resharding many big buckets
# would otherwise list every shard of every finished generation each minute for an hour (with the
# defaults: 7 reads of a shard instead of 60).
SEALED_BACKOFF = 16


def dump_json(obj: object) -> bytes:
    return orjson.dumps(obj)


@dataclass(frozen=True, slots=True)
class StateKeys:
    """Where one follower keeps its state in the control object: under ``r.`` for a follower of
    the whole zone, under ``rp.<p>.`` for follower partition ``p`` (``[scale] partitioned``;
    each partition is a follower of its own buckets, docs/design.md §14). Requests for a full
    sync stay under ``r.rq.``: the partition owning the bucket takes them."""

    prefix: str = FOLLOWER_PREFIX
    partition: int | None = None

    @classmethod
    def of(cls, partition: int | None) -> StateKeys:
        if partition is None:
            return ZONE_KEYS
        return cls(f"{FOLLOWER_PARTITION_PREFIX}{partition}.", partition)

    @property
    def boot(self) -> str:
        return self.prefix + FOLLOWER_BOOT_KIND

    @property
    def caught_up(self) -> str:
        return self.prefix + FOLLOWER_CAUGHT_UP_KIND

    @property
    def datalog_prefix(self) -> str:
        return self.prefix + FOLLOWER_DATALOG_KIND

    @property
    def pending_prefix(self) -> str:
        return self.prefix + FOLLOWER_PENDING_KIND

    @property
    def marker_prefix(self) -> str:
        return self.prefix + FOLLOWER_MARKER_KIND

    @property
    def bucket_prefix(self) -> str:
        return self.prefix + FOLLOWER_BUCKET_KIND

    @property
    def full_prefix(self) -> str:
        return self.prefix + FOLLOWER_FULL_KIND

    @property
    def upload_prefix(self) -> str:
        return self.prefix + FOLLOWER_UPLOAD_KIND

    @property
    def sealed_prefix(self) -> str:
        return self.prefix + FOLLOWER_SEALED_KIND

    def datalog(self, n: int) -> str:
        return f"{self.datalog_prefix}{n:04d}"

    def pending(self, bs: BucketShard) -> str:
        return self.pending_prefix + bs.key

    def marker(self, bs: BucketShard) -> str:
        return self.marker_prefix + bs.key

    def sealed(self, bs: BucketShard) -> str:
        return self.sealed_prefix + bs.key

    def bucket(self, name: str) -> str:
        return self.bucket_prefix + name

    def full(self, name: str) -> str:
        return self.full_prefix + name

    def upload(self, name: str, upload_id: str) -> str:
        """A multipart upload in progress in bucket ``name`` (``changelog.pipeline.uploads``)."""
        return f"{self.upload_prefix}{name}:{upload_id}"


ZONE_KEYS = StateKeys()


def pending_value(hot_until: float) -> bytes:
    return dump_json({"hot_until": hot_until})


@dataclass(slots=True)
class BootRecord:
    """The follower's first start: radosgw's clock then (a bucket created later was born with a
    complete log); ``done`` once every bucket that existed then was resolved."""

    time_ns: int
    done: bool = False

    def encode(self) -> bytes:
        return dump_json({"time_ns": self.time_ns, "done": self.done})

    @classmethod
    def decode(cls, raw: bytes) -> BootRecord:
        d = orjson.loads(raw)
        return cls(int(d.get("time_ns", 0)), bool(d.get("done", False)))


@dataclass(slots=True)
class BucketRecord:
    """The bucket instance and bucket-index-log generation followed for one bucket
    (``r.k.<bucket>``), and whether it is in full sync, incremental, or gone (deleted)."""

    name: str
    bucket_id: str
    marker: str  # the id of the bucket's first instance: survives a reshard
    gen: int  # ours: bumped on every new instance, full sync or log generation (orders ``seq``)
    shards: int  # of the log generation being followed
    state: BucketState
    log_gen: int = 0  # radosgw's bucket-index-log generation being followed (Reef and later)
    closing: bool = False  # a newer log generation exists: finish this one, then move on
    # Its bucket_create is recorded. Records written before bucket records existed say nothing
    # (False): the follower announces those buckets once (``BucketTracker.announce``).
    announced: bool = True
    # A tombstone's (state "gone"): when its bucket_delete was recorded (unix µs; 0: unknown).
    deleted_us: int = 0

    def encode(self) -> bytes:
        d: dict[str, object] = {
            "id": self.bucket_id, "marker": self.marker, "gen": self.gen, "shards": self.shards, "state": self.state,
        }  # fmt: skip
        if self.log_gen or self.closing:
            d["log_gen"] = self.log_gen
            d["closing"] = self.closing
        if self.announced:
            d["an"] = True
        if self.deleted_us:
            d["deleted_us"] = self.deleted_us
        return dump_json(d)

    @classmethod
    def decode(cls, name: str, raw: bytes) -> BucketRecord:
        d = orjson.loads(raw)
        return cls(
            name,
            str(d["id"]),
            str(d.get("marker", "")),
            int(d["gen"]),
            int(d.get("shards", 0)),
            cast(BucketState, str(d["state"])),
            int(d.get("log_gen", 0)),
            bool(d.get("closing", False)),
            bool(d.get("an", False)),
            int(d.get("deleted_us", 0)),
        )

    def shard_list(self) -> list[BucketShard]:
        if self.shards <= 0:
            return [BucketShard(self.name, self.bucket_id, -1, self.log_gen)]
        return [BucketShard(self.name, self.bucket_id, n, self.log_gen) for n in range(self.shards)]

    def owns(self, bs: BucketShard) -> bool:
        """Whether ``bs`` is a shard of the instance and log generation being followed."""
        return self.state != "gone" and self.bucket_id == bs.bucket_id and self.log_gen == bs.log_gen

    def outgrown_by(self, bs: BucketShard) -> bool:
        """Whether ``bs`` is of a newer log generation of the same instance (resharded in place)."""
        return self.state != "gone" and self.bucket_id == bs.bucket_id and bs.log_gen > self.log_gen


@dataclass(slots=True)
class FullSyncProgress:
    """How far the baseline listing of one bucket got (``r.f.<bucket>``): which prefix, the
    listing markers within it, and how many objects were listed."""

    bucket_id: str
    gen: int
    versions: bool | None = None  # list object versions; None until the versioning was read
    prefix_idx: int = 0
    key_marker: str = ""
    version_marker: str = ""
    counter: int = 0
    started: float = 0.0

    def encode(self) -> bytes:
        return dump_json(dataclasses.asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> FullSyncProgress:
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class ShardCursor:
    """A pending bucket-index shard (``r.p.``): where its log was read to (``r.m.``), until when
    it stays hot (re-read every sweep), and what was trimmed of it."""

    bs: BucketShard
    marker: str | None = None  # None until loaded from the control object
    hot_until: float = 0.0
    persisted_hot: float = 0.0
    since: float = 0.0  # when it became pending and not yet read to its end (lag)
    at_end: bool = False
    trimmed: str = ""
    last_trim: float = float("-inf")

    def heat(self, until: float) -> bytes | None:
        """Keep the shard hot until ``until`` at least; the ``r.p.`` value to persist, if it is
        worth a write (``HOT_PERSIST_SLACK``)."""
        self.hot_until = max(self.hot_until, until)
        if self.hot_until - self.persisted_hot > HOT_PERSIST_SLACK:
            return pending_value(self.hot_until)
        return None


@dataclass(slots=True)
class SealedShard:
    """A shard of a finished log generation (``r.s.``): read to its end when the bucket moved on
    to the next generation, and read again every ``sealed_poll_interval`` until ``until``, for
    entries radosgw adds to it after that, the wait doubling after each empty read up to
    ``SEALED_BACKOFF`` times (rgw_module/README.md, "Sealed generations")."""

    marker: str
    until: float
    next_poll: float = 0.0  # not persisted: the first poll after a load is at once
    empty_polls: int = 0  # in a row (not persisted): the next poll waits longer (``SEALED_BACKOFF``)

    def encode(self) -> bytes:
        return dump_json({"marker": self.marker, "until": self.until})

    @classmethod
    def decode(cls, raw: bytes) -> SealedShard:
        d = orjson.loads(raw)
        return cls(str(d.get("marker", "")), float(d.get("until", 0.0)))


@dataclass
class FollowerState:
    """The in-memory mirror of the persisted state, plus what a sweep remembers between sweeps.
    ``load`` replaces the persisted part; the rest (trims owed, excluded shards seen) stays."""

    boot: BootRecord | None = None
    caught_up_us: int | None = None
    datalog: dict[int, str] = field(default_factory=dict)  # data-log shard -> marker read up to
    buckets: dict[str, BucketRecord] = field(default_factory=dict)
    full: dict[str, FullSyncProgress] = field(default_factory=dict)
    shards: dict[BucketShard, ShardCursor] = field(default_factory=dict)
    # bucket -> shards of its closing log generation not yet read to their end since the newer
    # generation was seen (rebuilt from ``BucketRecord.closing`` on load)
    closing: dict[str, set[BucketShard]] = field(default_factory=dict)
    sealed: dict[BucketShard, SealedShard] = field(default_factory=dict)  # finished generations' shards
    # Not persisted:
    datalog_trimmed: dict[int, tuple[str, float]] = field(default_factory=dict)  # marker, when
    to_trim: dict[BucketShard, str] = field(default_factory=dict)  # cooled shards' last markers
    excluded_seen: dict[BucketShard, float] = field(default_factory=dict)  # shards of excluded buckets
    generation_aware: bool | None = None  # radosgw has log generations (Reef+); None: not known yet

    def load(self, store: ObjectStore, oid: str, now: float, keys: StateKeys = ZONE_KEYS) -> None:
        got = store.omap_get(oid, [keys.boot, keys.caught_up])
        self.boot = BootRecord.decode(got[keys.boot]) if keys.boot in got else None
        self.caught_up_us = int(got[keys.caught_up]) if keys.caught_up in got else None
        self.datalog = {
            int(k[len(keys.datalog_prefix) :]): v.decode()
            for k, v in omap_iter(store, oid, prefix=keys.datalog_prefix)
        }
        self.datalog_trimmed = {}
        self.buckets = {
            name: BucketRecord.decode(name, v) for name, v in _by_name(store, oid, keys.bucket_prefix)
        }
        self.full = {
            name: FullSyncProgress.decode(v) for name, v in _by_name(store, oid, keys.full_prefix)
        }
        self.shards = {}
        for k, v in _by_name(store, oid, keys.pending_prefix):
            bs = BucketShard.parse(k)
            if bs is not None:
                hot = float(orjson.loads(v).get("hot_until", 0.0))
                self.shards[bs] = ShardCursor(bs, hot_until=hot, persisted_hot=hot, since=now)
        self.closing = {}
        self.sealed = {}
        for k, v in _by_name(store, oid, keys.sealed_prefix):
            bs = BucketShard.parse(k)
            if bs is not None:
                self.sealed[bs] = SealedShard.decode(v)

    def forget(self, name: str, *, keep: str | None = None) -> None:
        """Drop the pending shards of ``name`` (of every instance but ``keep``) and its full sync."""
        for bs in [bs for bs in self.shards if bs.bucket == name and bs.bucket_id != keep]:
            del self.shards[bs]
        self.full.pop(name, None)


def _by_name(store: ObjectStore, oid: str, prefix: str) -> list[tuple[str, bytes]]:
    return [(k[len(prefix) :], v) for k, v in omap_iter(store, oid, prefix=prefix)]


def follower_state(index: ChangeIndex, keys: StateKeys = ZONE_KEYS, lock_name: str = FOLLOWER_LOCK) -> dict[str, object]:
    """The persisted state of a follower (of the zone, or of one partition: ``keys`` and its
    lease ``lock_name``), read directly from the control object."""
    store, oid = index.store, index.control_oid
    got = store.omap_get(oid, [keys.boot, keys.caught_up])
    buckets = {name: orjson.loads(v) for name, v in _by_name(store, oid, keys.bucket_prefix)}
    full = {name: orjson.loads(v) for name, v in _by_name(store, oid, keys.full_prefix)}
    pending = sum(1 for _ in omap_iter(store, oid, prefix=keys.pending_prefix))
    markers = sum(1 for _ in omap_iter(store, oid, prefix=keys.marker_prefix))
    sealed = sum(1 for _ in omap_iter(store, oid, prefix=keys.sealed_prefix))
    cu = int(got[keys.caught_up]) / 1_000_000 if keys.caught_up in got else None
    lock = store.lock_info(oid, lock_name)
    boot = got.get(keys.boot)
    return {
        "bootstrapped": BootRecord.decode(boot).done if boot is not None else False,
        "caught_up_until": cu,
        "buckets": {
            name: {
                "bucket_id": d.get("id"),
                "generation": d.get("gen"),
                "log_generation": d.get("log_gen", 0),
                "shards": d.get("shards"),
                "state": d.get("state"),
                **({"closing": True} if d.get("closing") else {}),
                **({"full_sync_listed": full[name].get("counter", 0)} if name in full else {}),
            }
            for name, d in sorted(buckets.items())
        },
        "pending_shards": pending,
        "shard_markers": markers,
        "sealed_shards": sealed,
        "lease": None
        if lock is None
        else {"holder": lock.holder, "cookie": lock.cookie, "expires_at": lock.expires_at},
    }
