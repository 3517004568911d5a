"""The pacer (``changelog/pacing.py``) on a fake clock: what each take waits."""

from __future__ import annotations

import threading

from changelog.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.now += s


def test_takes_are_spread_to_the_rate_and_the_first_never_waits() -> None:
    c = Clock()
    p = Pacer(10, clock=lambda: c.now, sleep=c.sleep)
    p.take(5)  # books 0.5 s
    p.take(5)  # waits for it, books 0.5 s more
    p.take(2)
    assert c.slept == [0.5, 0.5]
    c.now += 10  # idle for long: no credit saved up beyond the next take
    p.take(1)
    p.take(1)
    assert c.slept == [0.5, 0.5, 0.1]
    assert round(p.waited, 6) == 1.1


def test_a_take_larger_than_the_rate_goes_at_once_and_the_next_waits_for_it() -> None:
    c = Clock()
    p = Pacer(100, clock=lambda: c.now, sleep=c.sleep)
    p.take(1000)
    assert c.slept == []
    p.take(1)
    assert c.slept == [10.0]


def test_rate_zero_never_waits() -> None:
    c = Clock()
    p = Pacer(0, clock=lambda: c.now, sleep=c.sleep)
    for _ in range(1000):
        p.take(1000)
    assert c.slept == [] and p.waited == 0


def test_threads_share_one_budget() -> None:
    lock = threading.Lock()
    c = Clock()

    def sleep(s: float) -> None:
        with lock:
            c.slept.append(round(s, 6))

    p = Pacer(50, clock=lambda: c.now, sleep=sleep)  # the clock stands still: every take books after the last
    threads = [threading.Thread(target=lambda: [p.take() for _ in range(10)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.slept) == [round(i / 50, 6) for i in range(1, 40)]
