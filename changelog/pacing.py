"""A pacer: at most ``rate`` actions per second, for engines that act on a cluster an operator
shares with users (the lifecycle executor's deletes, copies and aborts).

Pacing, not a token bucket with a burst: each ``take(n)`` waits until the previous take's share
of time has passed, then books ``n / rate`` seconds. The first take never waits; a take larger
than the rate (one DeleteObjects of 1,000 keys at 100/s) goes at once and makes the next wait
ten seconds. Hand-written: the well-kept limiters (``limits``, ``pyrate-limiter``) count fixed
windows or buckets and bring storage back ends; this is eight lines with an injectable clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    """``rate`` actions per second; 0 or less: no limit. Thread-safe."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting, for status

    def take(self, n: int = 1) -> None:
        if self.rate <= 0 or n <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + n / self.rate
        if start > now:
            self.waited += start - now
            self._sleep(start - now)
