"""A small progress line for long work (dump, drain, backup, restore): counts, bytes and rate,
drawn on stderr only when stderr is a terminal, and silent in pipes and logs so that machine
output on stdout and log files stay clean.

    with Progress("dump", total=n, unit="entries") as bar:
        for entry in entries:
            bar.update(1, nbytes=len(line))
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

# Redraw at most this often: fast enough to look alive, rare enough to cost nothing.
REDRAW_S = 0.1
BAR_WIDTH = 24


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: float) -> str:
    if n < 10_000:
        return f"{n:.0f}"
    for unit in ("k", "M", "G"):
        n /= 1000
        if n < 1000 or unit == "G":
            return f"{n:.1f}{unit}"
    raise AssertionError


def _duration(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def stderr_is_tty(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """One progress line. Thread-safe ``update``; a no-op unless enabled (default: stderr is a
    TTY). ``total`` (if known) is in the same unit as the counts."""

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.count = 0
        self.nbytes = 0
        self._stream = sys.stderr if stream is None else stream
        self.enabled = stderr_is_tty(self._stream) if enabled is None else enabled
        self._clock = clock
        self._start = clock()
        self._last_draw = -REDRAW_S
        self._width = 0
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, *, nbytes: int = 0) -> None:
        with self._lock:
            self.count += n
            self.nbytes += nbytes
            if self.enabled and not self._closed:
                now = self._clock()
                if now - self._last_draw >= REDRAW_S:
                    self._last_draw = now
                    self._draw(now)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total

    def line(self, now: float | None = None) -> str:
        """The text of the progress line (also useful for a final summary)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        parts = [self.label]
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            frac = min(1.0, self.count / self.total)
            filled = int(frac * BAR_WIDTH)
            parts.append("[" + "#" * filled + "-" * (BAR_WIDTH - filled) + f"] {frac * 100:5.1f}%")
            parts.append(f"{human_count(self.count)}/{human_count(self.total)}{unit}")
        else:
            parts.append(f"{human_count(self.count)}{unit}")
        if self.nbytes:
            parts.append(human_bytes(self.nbytes))
        rate = self.count / elapsed
        parts.append(f"{human_count(rate)}{unit}/s")
        if self.nbytes:
            parts.append(f"{human_bytes(self.nbytes / elapsed)}/s")
        if self.total and 0 < self.count < self.total and rate > 0:
            parts.append(f"eta {_duration((self.total - self.count) / rate)}")
        else:
            parts.append(_duration(elapsed))
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        try:
            self._stream.write("\r" + text + " " * pad)
            self._stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def close(self) -> None:
        """Erase the line (the caller prints its own summary if it wants one)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled and self._width:
                try:
                    self._stream.write("\r" + " " * self._width + "\r")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
