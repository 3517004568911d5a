"""The health checks behind ``GET /_/healthcheck``: each named check runs on its own thread,
bounded by a timeout (``HealthChecks``), and the generic checks ``serve`` builds its components'
from (``probe``, ``thread_alive``, ``leases_held``). ``changelog.api`` serves them;
``changelog.health`` adds the reasons a live component is still unhealthy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

from changelog.pipeline.store import LockInfo, LockRef

logger = logging.getLogger(__name__)

# Each health check gets this long; they run concurrently, so the route answers within it.
CHECK_TIMEOUT_S = 5.0

HealthCheck = Callable[[], tuple[bool, str]]


class CheckReport(TypedDict):
    """One health check's answer, as ``GET /_/healthcheck`` shows it."""

    ok: bool
    detail: str
    seconds: float


def error_line(ex: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(ex).strip().splitlines()
    return f"{type(ex).__name__}: {text[0]}" if text else type(ex).__name__


@dataclass
class _Run:
    """One execution of one health check, on its own daemon thread."""

    name: str
    check: HealthCheck
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0

    def __call__(self) -> None:
        try:
            ok, detail = self.check()
            self.ok, self.detail = bool(ok), str(detail)
        except Exception as ex:
            logger.debug("health check %s failed", self.name, exc_info=True)
            self.ok, self.detail = False, error_line(ex)
        finally:
            self.seconds = time.monotonic() - self.started
            self.done.set()


class HealthChecks:
    """Runs the named checks concurrently, each bounded by ``timeout``.

    A check that hangs keeps its thread (Python cannot kill one) but not the route: it is
    reported down, and until it returns, later requests report it down again instead of
    starting another copy, so a hung endpoint costs one thread, not one per request.
    """

    def __init__(self, checks: Mapping[str, HealthCheck], *, timeout: float = CHECK_TIMEOUT_S) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}

    def run(self) -> tuple[bool, dict[str, CheckReport]]:
        now = time.monotonic()
        deadline = now + self.timeout
        runs: dict[str, _Run] = {}
        with self._lock:
            for name, check in self.checks.items():
                run = self._runs.get(name)
                if run is None or run.done.is_set():
                    run = _Run(name, check, now)
                    self._runs[name] = run
                    threading.Thread(target=run, name=f"health-{name}", daemon=True).start()
                runs[name] = run
        for run in runs.values():
            run.done.wait(max(0.0, deadline - time.monotonic()))
        report: dict[str, CheckReport] = {}
        for name, run in runs.items():
            if run.done.is_set():
                report[name] = {"ok": run.ok, "detail": run.detail, "seconds": round(run.seconds, 3)}
            else:
                waited = time.monotonic() - run.started
                report[name] = {
                    "ok": False,
                    "detail": f"no answer after {waited:.1f} s (limit {self.timeout:g} s)",
                    "seconds": round(waited, 3),
                }
        return all(r["ok"] for r in report.values()), report


def probe(fn: Callable[[], object], *, ok: str = "reachable") -> HealthCheck:
    """A check that is up when ``fn()`` returns and down with its error when it raises."""

    def check() -> tuple[bool, str]:
        fn()
        return True, ok

    return check


class _Thread(Protocol):
    @property
    def name(self) -> str: ...

    def is_alive(self) -> bool: ...


def thread_alive(get: Callable[[], _Thread | None]) -> HealthCheck:
    """Up while the thread ``get()`` returns (it may be replaced over time) is alive."""

    def check() -> tuple[bool, str]:
        thread = get()
        if thread is None:
            return False, "not started"
        return (True, f"{thread.name} alive") if thread.is_alive() else (False, f"{thread.name} has stopped")

    return check


class _LockReader(Protocol):
    def lock_info(self, oid: str, name: str) -> LockInfo | None: ...


class _Lease(Protocol):
    @property
    def oid(self) -> str: ...

    @property
    def ref(self) -> LockRef: ...

    @property
    def store(self) -> _LockReader: ...

    @property
    def held(self) -> bool: ...

    def remaining(self) -> float: ...


def _lease_name(lease: _Lease) -> str:
    return f"{lease.ref.name} on {lease.oid}"


def leases_held(get: Callable[[], Iterable[_Lease]]) -> HealthCheck:
    """Up when ``get()`` yields at least one lease and each of them is either held by this
    process or, live, by another one: then this process is a standby (another ``serve`` does
    the work and this one takes over when its lease expires), which is healthy. Down when a
    lease is held by nobody, or still carries our cookie in the store although we no longer
    trust it (lost): then no one is doing that component's work."""

    def check() -> tuple[bool, str]:
        leases = list(get())
        if not leases:
            return False, "no lease held"
        held: list[_Lease] = []
        standby: list[tuple[_Lease, LockInfo]] = []
        lost: list[str] = []
        for lease in leases:
            if lease.held:
                held.append(lease)
                continue
            try:
                info = lease.store.lock_info(lease.oid, lease.ref.name)
            except Exception as ex:
                lost.append(f"{_lease_name(lease)} (holder unknown: {error_line(ex)})")
                continue
            if info is not None and info.cookie != lease.ref.cookie:
                standby.append((lease, info))
            else:
                lost.append(_lease_name(lease))
        if lost:
            more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
            return False, f"{len(lost)}/{len(leases)} not held: {', '.join(lost[:3])}{more}"
        parts = []
        if held:
            least = min(lease.remaining() for lease in held)
            parts.append(f"{len(held)} held, next expiry in {least:.1f} s")
        if standby:
            others = ", ".join(
                f"{lease.ref.name} held by {info.description or info.cookie} ({info.holder})" for lease, info in standby
            )
            parts.append(f"standby: {others}")
        return True, "; ".join(parts)

    return check
