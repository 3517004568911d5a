"""Read-ahead for the collector's pass: the pages of the shards to drain are read by threads of
their own while the pass encodes and uploads the ones before (docs/design.md §5). Safe because
the pass raised every shard's floor first: below the cutoff a shard's keys can only shrink."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

# One page of a shard: (key, stored value) pairs in key order.
Page = list[tuple[str, bytes]]
# read_page(shard, after, end): the page of ``shard`` after key ``after``, below ``end``.
ReadPage = Callable[[int, str, str], Page]


class ReadAhead:
    """Reads the data pages of shards below a bound from threads of their own (``workers``
    shards at a time, each at most ``depth`` pages ahead of the consumer) and hands them over in
    shard order, pages in key order: ``get()`` gives ``(shard, page)`` for every non-empty page,
    then None; a read error is raised by the ``get()`` that reaches it. Reads only: every write
    stays with the pass, which checks its leases as before.

    ``read_page(shard, after, end)`` reads one page of a shard's entries in ``(after, end)``."""

    def __init__(self, read_page: ReadPage, shards: Sequence[int], end: str, *, depth: int,
                 workers: int) -> None:
        self._read_page = read_page
        self._shards = list(shards)
        self._end = end
        self._workers = max(1, workers)
        self._queues: list[queue.Queue[Page | BaseException | None]] = [
            queue.Queue(maxsize=max(1, depth)) for _ in self._shards]
        self._cond = threading.Condition()
        self._next = 0  # the next shard (position in ``shards``) a worker takes
        self._pos = 0  # the shard the consumer is on: workers stay within ``workers`` of it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"collector-read-{i}", daemon=True)
                         for i in range(min(self._workers, len(self._shards)))]
        for t in self._threads:
            t.start()

    def _take(self) -> int | None:
        with self._cond:
            while not self._stop.is_set():
                if self._next >= len(self._shards):
                    return None
                if self._next < self._pos + self._workers:
                    self._next += 1
                    return self._next - 1
                self._cond.wait(0.1)
            return None

    def _run(self) -> None:
        while (i := self._take()) is not None:
            shard, q = self._shards[i], self._queues[i]
            try:
                after = ""
                while not self._stop.is_set():
                    batch = self._read_page(shard, after, self._end)
                    if not batch:
                        break
                    self._put(q, batch)
                    after = batch[-1][0]
                self._put(q, None)
            except BaseException as ex:  # noqa: BLE001 - handed to the consumer, raised there
                self._put(q, ex)
                return

    def _put(self, q: queue.Queue[Page | BaseException | None],
             item: Page | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> tuple[int, Page] | None:
        while self._pos < len(self._shards):
            q = self._queues[self._pos]
            item = q.get()
            if isinstance(item, BaseException):
                q.put(item)  # every later get() raises it too
                raise item
            if item is None:
                with self._cond:
                    self._pos += 1
                    self._cond.notify_all()
                continue
            return self._shards[self._pos], item
        return None

    def close(self) -> None:
        """Stop reading; returns once the threads are gone (reads in flight finish first)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            while t.is_alive():
                for q in self._queues:
                    try:
                        while True:
                            q.get_nowait()
                    except queue.Empty:
                        pass
                t.join(0.05)
