"""Honest health: why a ``serve`` whose threads are all alive is still not doing its job. Each
reason names the component and the check that failed, as ``GET /_/healthcheck`` (500),
``GET /_/status`` (``health``) and the ``rgw_changelog_health_*`` metrics report it:

* ``collector`` / ``failed_passes``: the last ``[health] failed_passes`` passes failed (a target
  that cannot be written: read-only, full, refusing);
* ``collector`` / ``backlog_age``: the oldest entry waiting in the index is older than
  ``[health] max_backlog_age`` (nothing drains it, whichever process should);
* ``follower`` / ``follow_lag``: the follower this process runs last caught up with the source
  more than ``[health] max_follow_lag`` ago;
* ``leases`` / ``lease_renewal``: a lease this process holds went a whole renewal period without
  a renewal (renewals are failing; the lease is about to be lost);
* ``consumers`` / ``failing_steps``: every step of a consumer this process runs failed for more
  than ``[health] max_consumer_failing`` (a replication site or backup target down for good:
  the consumer retries with backoff and its checkpoint stands still).

Whether a component's thread is alive and a lease is held by someone are the API's own checks
(``changelog.api.thread_alive``, ``leases_held``); ``changelog.service`` combines them with these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from changelog.config import HealthConfig
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.store import LockRef

# Every (component, check) a reason can name: the metrics export each, failing or not.
CHECKS = (
    ("collector", "failed_passes"),
    ("collector", "backlog_age"),
    ("follower", "follow_lag"),
    ("leases", "lease_renewal"),
    ("consumers", "failing_steps"),
)

# A check as the API runs it: (ok, detail).
Verdict = tuple[bool, str]


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason ``serve`` is unhealthy."""

    component: str
    check: str
    detail: str

    def doc(self) -> dict[str, str]:
        return {"component": self.component, "check": self.check, "detail": self.detail}


class StatsProvider(Protocol):
    """A component that reports its counters as a dict (keys in ``changelog.metrics``)."""

    def stats(self) -> Mapping[str, object]: ...


class RenewedLease(Protocol):
    """What the renewal check needs of a ``changelog.pipeline.lease.Lease``."""

    @property
    def oid(self) -> str: ...

    @property
    def ref(self) -> LockRef: ...

    @property
    def held(self) -> bool: ...

    @property
    def renew_every(self) -> float: ...

    def remaining(self) -> float: ...


def stat_number(stats: Mapping[str, object], key: str) -> float | None:
    """A numeric stat (bools and non-numbers are absent), for health checks and metrics."""
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def collector_reasons(stats: Mapping[str, object], policy: HealthConfig) -> list[Reason]:
    """``failed_passes`` from the collector's ``stats()``."""
    failed = int(stat_number(stats, "failed_passes") or 0)
    if failed < policy.failed_passes:
        return []
    last = stats.get("last_error") or "unknown error"
    return [
        Reason(
            "collector",
            "failed_passes",
            f"the last {failed} passes failed (limit {policy.failed_passes}); last: {last}",
        )
    ]


def backlog_reasons(oldest_us: int | None, now: float, policy: HealthConfig) -> list[Reason]:
    """``backlog_age`` from the arrival time of the oldest entry waiting in the index."""
    if oldest_us is None:
        return []
    age = now - oldest_us / 1e6
    if age <= policy.max_backlog_age:
        return []
    return [
        Reason(
            "collector",
            "backlog_age",
            f"the oldest index entry waits for {age:.0f} s "
            f"(limit {policy.max_backlog_age:g} s): nothing drains the index",
        )
    ]


def follower_reasons(stats: Mapping[str, object], now: float, policy: HealthConfig) -> list[Reason]:
    """``follow_lag`` from the follower's ``stats()``: judged only while it holds its lease (a
    standby's caught-up time is another process's)."""
    if stats.get("lease_held") is not True:
        return []
    caught_up = stat_number(stats, "caught_up_until")
    if caught_up is None:
        return []  # never caught up yet: a first sweep is running, the backlog check stands
    lag = now - caught_up
    if lag <= policy.max_follow_lag:
        return []
    return [
        Reason(
            "follower",
            "follow_lag",
            f"last caught up with the source {lag:.0f} s ago (limit {policy.max_follow_lag:g} s)",
        )
    ]


def lease_reasons(leases: Iterable[RenewedLease]) -> list[Reason]:
    """``lease_renewal``: a held lease renews every ``renew_every`` and then has at least
    ``ttl - margin - renew_every`` (>= ``renew_every``) left; less than ``renew_every`` left
    means a whole renewal period of failed renewals."""
    out = []
    for lease in leases:
        if not lease.held:
            continue  # held by another (standby) or by nobody: the API's leases_held says which
        left = lease.remaining()
        if left < lease.renew_every:
            out.append(
                Reason(
                    "leases",
                    "lease_renewal",
                    f"{lease.ref.name} on {lease.oid} not renewed for a renewal "
                    f"period ({lease.renew_every:.1f} s), expires in {left:.1f} s",
                )
            )
    return out


def consumer_reasons(name: str, stats: Mapping[str, object], policy: HealthConfig) -> list[Reason]:
    """``failing_steps`` from a consumer runner's ``stats()``."""
    failing = stat_number(stats, "failing_seconds") or 0.0
    if failing <= policy.max_consumer_failing:
        return []
    n = int(stat_number(stats, "failed_in_row") or 0)
    last = " ".join(str(stats.get("last_step_error") or "unknown error").split())
    return [
        Reason(
            "consumers",
            "failing_steps",
            f"consumer {name}: every step failed for {failing:.0f} s ({n} in a row; limit "
            f"{policy.max_consumer_failing:g} s); last: {last}",
        )
    ]


def oldest_entry_us(index: ChangeIndex) -> int | None:
    """The arrival time of the oldest entry waiting in the index: one one-key read per shard
    (``ChangeIndex.stats`` would page through the whole backlog)."""
    firsts = [t for n in range(index.shards) if (t := index.first_entry_us(n)) is not None]
    return min(firsts, default=None)


class Health:
    """The reasons of one ``serve`` process, read from its components when asked. Each
    component's part (``collector``, ``follower``, ``leases``) can be asked alone: the
    healthcheck runs them within the checks of those components, concurrently."""

    def __init__(
        self,
        policy: HealthConfig,
        *,
        collector: StatsProvider,
        oldest_us: Callable[[], int | None],
        follower: StatsProvider | None = None,
        leases: Callable[[], Iterable[RenewedLease]] = tuple,
        consumers: Mapping[str, StatsProvider] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._collector = collector
        self._oldest_us = oldest_us
        self._follower = follower
        self._leases = leases
        self._consumers = dict(consumers or {})
        self._clock = clock

    def part(self, component: str) -> list[Reason]:
        """The reasons of one component (``CHECKS``'s first column)."""
        if component == "collector":
            found = collector_reasons(self._collector.stats(), self.policy)
            return found + backlog_reasons(self._oldest_us(), self._clock(), self.policy)
        if component == "follower":
            return (
                []
                if self._follower is None
                else follower_reasons(self._follower.stats(), self._clock(), self.policy)
            )
        if component == "leases":
            return lease_reasons(self._leases())
        if component == "consumers":
            return [r for name in self._consumers for r in self.consumer(name)]
        raise ValueError(f"no health component {component!r}")

    def consumer(self, name: str) -> list[Reason]:
        """The reasons of one consumer this process runs."""
        return consumer_reasons(name, self._consumers[name].stats(), self.policy)

    def consumer_check(self, name: str) -> Callable[[], Verdict]:
        """The API check of one consumer, as ``check``."""

        def run() -> Verdict:
            found = self.consumer(name)
            return (True, "ok") if not found else (False, "; ".join(r.detail for r in found))

        return run

    def reasons(self) -> list[Reason]:
        """Every reason; a part that cannot be read is a reason itself."""
        out: list[Reason] = []
        for component in dict.fromkeys(c for c, _ in CHECKS):
            try:
                out.extend(self.part(component))
            except Exception as ex:  # noqa: BLE001 - reported as the reason, never raised
                out.append(
                    Reason(component, "read", " ".join(f"cannot tell: {type(ex).__name__}: {ex}".split()))
                )
        return out

    def check(self, component: str, ok: str = "ok") -> Callable[[], Verdict]:
        """The API check of one part: up with ``ok`` when it has no reason, else down with them."""

        def run() -> Verdict:
            found = self.part(component)
            return (True, ok) if not found else (False, "; ".join(r.detail for r in found))

        return run

    def report(self) -> dict[str, object]:
        """The ``health`` of ``GET /_/status``."""
        found = self.reasons()
        return {"ok": not found, "reasons": [r.doc() for r in found]}


def all_of(*checks: Callable[[], Verdict]) -> Callable[[], Verdict]:
    """One API check made of several: up when all are, with the first one's detail (the
    others only add reasons to be down); down with every failing one's detail."""

    def run() -> Verdict:
        verdicts: Sequence[Verdict] = [c() for c in checks]
        bad = [detail for ok, detail in verdicts if not ok]
        return (False, "; ".join(bad)) if bad else (True, verdicts[0][1])

    return run
