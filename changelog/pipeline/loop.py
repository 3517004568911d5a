"""The one service loop of every leased role (follower, collector, each consumer of the logs):
stand by until the role's lease can be taken, then one step every ``interval``; a transient
failure backs off (capped, exponential), a lost lease steps down to standby, a permanent error
ends the loop and is raised to the service, which stops the process.

A role only says how to take its lease, how to do one step and how to step down; when to wait,
how long and what to log is decided here, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from changelog.errors import LeaseLost, TransientError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clocks:
    """The time sources a component reads, injected so tests can drive time: wall clock
    (record and log times), monotonic (deadlines, lease renewal) and sleep."""

    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


class Stopped(Exception):
    """Raised by a step that noticed the loop's stop event: the loop ends quietly."""


class LeasedRole(Protocol):
    """What the loop drives. ``acquire`` tries once to take the role's lease (True: active);
    ``step`` does one unit of work under it; ``step_down`` releases what it holds (it may be
    called when nothing is held)."""

    name: str

    def acquire(self) -> bool: ...

    def step(self, stop: threading.Event) -> None: ...

    def step_down(self) -> None: ...


@dataclass(frozen=True)
class LoopPolicy:
    """When the loop waits. ``interval``: from the start of one step to the start of the next
    (a step longer than that is followed at once). ``standby``: between two attempts to take
    a lease held by another. ``pause_poll``: how often a paused role asks again."""

    interval: float
    standby: float
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    pause_poll: float = 0.25

    @classmethod
    def for_lease(cls, interval: float, lease_ttl: float, **kw: float) -> LoopPolicy:
        # A standby retries at a quarter of the TTL (at most every 2 s): a dead holder's lease
        # expires after one TTL, so takeover follows within about 1.25 TTL.
        return cls(interval=interval, standby=min(2.0, lease_ttl / 4), **kw)


class Wake:
    """Ends a loop's wait for its next step early. An Event cannot wait on two events, so the
    waiter sleeps on a condition that both ``set`` and the stop event's poll reach."""

    # How often a waiting loop looks at its stop event: a stop is noticed within this.
    STOP_POLL = 0.1

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._set = False

    def set(self) -> None:
        with self._cond:
            self._set = True
            self._cond.notify_all()

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``set()`` or ``stop``; True if woken by ``set()`` (which is
        then cleared)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._set and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, self.STOP_POLL))
            woken, self._set = self._set, False
            return woken


@dataclass
class LoopCounts:
    steps: int = 0
    transient_errors: int = 0
    leases_lost: int = 0
    last_error: str | None = field(default=None)
    # The steps failed in a row since the last one that did not (0: the last one did), and
    # since when (``monotonic``; None: not failing).
    failed_in_row: int = 0
    failing_since: float | None = None


def run_leased(
    role: LeasedRole,
    stop: threading.Event,
    policy: LoopPolicy,
    *,
    paused: Callable[[], bool] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    counts: LoopCounts | None = None,
    wake: Wake | None = None,
) -> None:
    """Drive ``role`` until ``stop`` is set (module docstring). While ``paused()`` says so no
    step starts: the step in hand finishes and the lease stays held (renewed by its holder).
    ``wake.set()`` (an operator's "flush now" or "run now") ends the wait for the next step."""
    counts = counts if counts is not None else LoopCounts()
    delay = policy.backoff_base
    try:
        while not stop.is_set():
            if paused is not None and paused():
                stop.wait(policy.pause_poll)
                continue
            try:
                active = role.acquire()
            except (TransientError, LeaseLost) as ex:
                # LeaseLost: lost again while taking over (a stall past the TTL); stand by.
                logger.warning("%s: cannot take the lease: %s", role.name, ex)
                active = False
            if not active:
                stop.wait(policy.standby)
                continue
            t0 = monotonic()
            try:
                role.step(stop)
            except Stopped:
                break
            except LeaseLost as ex:
                counts.leases_lost += 1
                logger.warning("%s lost its lease, stopped writing, back to standby: %s", role.name, ex)
                role.step_down()
                continue
            except TransientError as ex:
                counts.transient_errors += 1
                counts.last_error = str(ex)
                counts.failed_in_row += 1
                if counts.failing_since is None:
                    counts.failing_since = monotonic()
                logger.warning("%s: step failed, next in %.1fs: %s", role.name, delay, ex)
                stop.wait(delay)
                delay = min(delay * 2, policy.backoff_max)
                continue
            counts.steps += 1
            counts.failed_in_row, counts.failing_since = 0, None
            delay = policy.backoff_base
            left = max(0.0, policy.interval - (monotonic() - t0))
            if wake is None:
                stop.wait(left)
            else:
                wake.wait(stop, left)
    finally:
        role.step_down()
        logger.info("%s stopped", role.name)
