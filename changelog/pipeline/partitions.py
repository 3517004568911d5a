"""Sharing a role's partitions among the instances that run it, by lease (issue 17's scale-out).

A role (the follower's data-log shards, the collector's index shards) is cut into ``count``
partitions. Partition ``n`` is a cls_lock ``part.<role>.<n>`` on the control object: whoever
holds it does that partition's work and fences that work's writes with it, so two instances
never work on one partition, and a dead instance's partitions are free one TTL after its last
renewal. Which partitions an instance *tries* to hold comes from a membership list kept in the
same object: each live instance renews ``pm.<role>.<instance>`` (its expiry time) and aims for
its fair share of the partitions, ``count // n`` or one more (the first ``count % n`` instances
in name order take the one more). An instance over its share releases the extra partitions
between two steps of its work, so that a newcomer gets its share within a refresh or two; one
under its share takes free partitions, each instance trying them in an order of its own (a hash
of its name and the partition), so instances starting together do not all race for partition 0.

Nothing here decides what a partition's work is or where it keeps its progress: the role does,
fenced by ``lease(n).ref``. ``refresh`` is called by the role between steps (never while it is
in the middle of a partition's work: that is what makes releasing safe).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from changelog.pipeline.control import partition_lock, partition_member_key
from changelog.pipeline.lease import Lease, Renewer
from changelog.pipeline.store import ObjectStore, WriteOp, omap_iter

logger = logging.getLogger(__name__)

# A member whose heartbeat expired this many TTLs ago is removed from the list by whoever sees it.
FORGET_AFTER_TTLS = 10


def fair_share(count: int, members: list[str], instance: str) -> int:
    """How many of ``count`` partitions ``instance`` should hold among the live ``members``
    (sorted): ``count // n``, plus one for the first ``count % n`` of them."""
    if instance not in members:
        members = sorted([*members, instance])
    base, extra = divmod(count, len(members))
    return base + (1 if members.index(instance) < extra else 0)


def preference(instance: str, count: int) -> list[int]:
    """The order in which ``instance`` tries free partitions: by a hash of (instance, partition)."""
    return sorted(range(count), key=lambda n: hashlib.blake2b(f"{instance}\0{n}".encode(), digest_size=8).digest())


@dataclass(frozen=True)
class Member:
    instance: str
    expires: float


class Partitions:
    """This instance's share of a role's partitions (module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        oid: str,
        *,
        role: str,
        count: int,
        instance: str,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        renewer: Renewer | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"partitions of {role}: count must be at least 1, not {count}")
        self.store = store
        self.oid = oid
        self.role = role
        self.count = count
        self.instance = instance
        self.ttl = ttl
        self._clock = clock
        self._monotonic = monotonic
        self._order = preference(instance, count)
        self._leases: dict[int, Lease] = {}
        self._own_renewer = renewer is None
        self._renewer = renewer or self._new_renewer()
        self._started = False
        self.taken = 0
        self.released = 0

    # -- what the role asks -------------------------------------------------------------------

    def held(self) -> list[int]:
        """The partitions held now (a lost lease drops out: its renewal was refused)."""
        return sorted(n for n, lease in self._leases.items() if lease.held)

    def held_leases(self) -> list[Lease]:
        """The leases of the partitions held now (a snapshot: safe from another thread)."""
        return [lease for _, lease in sorted(list(self._leases.items())) if lease.held]

    def lease(self, n: int) -> Lease:
        """Partition ``n``'s lease: its ``ref`` fences the partition's writes."""
        return self._leases[n]

    def refresh(self) -> list[int]:
        """Between two steps of the role: renew this instance's membership, forget lost
        partitions, release what is over the fair share, take free partitions up to it. The
        partitions held afterwards."""
        if not self._started and self._own_renewer:
            self._renewer.start()
        self._started = True
        now = self._clock()
        self._heartbeat(now)
        members = self._members(now)
        share = fair_share(self.count, [m.instance for m in members], self.instance)
        for n in [n for n, lease in self._leases.items() if not lease.held]:
            self._drop(n, release=False)
        held = self.held()
        for n in sorted(held, key=self._order.index, reverse=True)[: max(0, len(held) - share)]:
            self._drop(n, release=True)
        for n in self._order:
            if len(self._leases) >= share:
                break
            if n not in self._leases:
                self._take(n)
        return self.held()

    def close(self) -> None:
        """Release every partition and leave the membership list (a clean shutdown: the others
        take the partitions at their next refresh, without waiting for a TTL)."""
        for n in list(self._leases):
            self._drop(n, release=True)
        try:
            self.store.execute(self.oid, WriteOp(remove=[partition_member_key(self.role, self.instance)]))
        except Exception as ex:  # noqa: BLE001 - shutting down: the entry expires anyway
            logger.debug("partitions %s: leaving the member list: %s", self.role, ex)
        if self._own_renewer and self._started:
            self._renewer.stop()
            # A role that stands by (the streams while an unpartitioned collector holds its
            # lease) refreshes again later: it gets a renewer of its own again (a stopped
            # thread cannot be restarted; without one, the leases taken back were never renewed).
            self._renewer = self._new_renewer()
            self._started = False

    def _new_renewer(self) -> Renewer:
        return Renewer(self.ttl, name=f"partitions-{self.role}", monotonic=self._monotonic)

    def doc(self) -> dict[str, object]:
        """For ``status --json``: the live members, and which instance holds which partition."""
        now = self._clock()
        holders: dict[str, list[int]] = {}
        for n in range(self.count):
            info = self.store.lock_info(self.oid, partition_lock(self.role, n))
            if info is not None:
                holders.setdefault(info.cookie, []).append(n)
        return {
            "count": self.count,
            "members": {m.instance: {"expires_in": round(m.expires - now, 1)} for m in self._members(now)},
            "holders": holders,
            "this": {"instance": self.instance, "partitions": self.held()},
        }

    # -- the parts ------------------------------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        value = orjson.dumps({"expires": now + self.ttl})
        self.store.execute(self.oid, WriteOp(set={partition_member_key(self.role, self.instance): value}))

    def _members(self, now: float) -> list[Member]:
        """The live members, in name order; long-dead entries are removed on the way."""
        prefix = partition_member_key(self.role, "")
        live: list[Member] = []
        dead: list[str] = []
        for key, raw in omap_iter(self.store, self.oid, prefix=prefix):
            try:
                expires = float(orjson.loads(raw)["expires"])
            except (ValueError, KeyError, TypeError):
                expires = 0.0
            if expires >= now:
                live.append(Member(key[len(prefix) :], expires))
            elif expires < now - FORGET_AFTER_TTLS * self.ttl:
                dead.append(key)
        if dead:
            self.store.execute(self.oid, WriteOp(remove=dead))
        return sorted(live, key=lambda m: m.instance)

    def _take(self, n: int) -> bool:
        lease = Lease(
            self.store,
            self.oid,
            name=partition_lock(self.role, n),
            ttl=self.ttl,
            description=f"{self.role} partition {n} {self.instance}",
            cookie=self.instance,
            monotonic=self._monotonic,
        )
        if not lease.acquire():
            return False
        self._leases[n] = lease
        self._renewer.add(lease)
        self.taken += 1
        logger.info("%s partition %d taken by %s", self.role, n, self.instance)
        return True

    def _drop(self, n: int, *, release: bool) -> None:
        lease = self._leases.pop(n)
        self._renewer.discard(lease)
        if release:
            lease.release()
            self.released += 1
            logger.info("%s partition %d released by %s", self.role, n, self.instance)
        else:
            logger.warning("%s partition %d lost by %s", self.role, n, self.instance)
