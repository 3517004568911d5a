"""One renewal policy for every lease: a RADOS ``Lease`` renewing itself, the collector's
``Renewer`` of many, the backup destination's ``DestinationLock`` and a backup run's marker all
renew ``renew_every`` after the last lock call (or write); the locks share one local deadline
(``TimedLease``). A leased role takes its lease with ``Lease.take``. Time is a test clock."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from changelog.consumers.backup.lock import DestinationLock, read_lock
from changelog.consumers.backup.runs import MarkerDoc, RunMarker, marker_name
from changelog.consumers.backup.store import BackupStore
from changelog.errors import LeaseLost, TransientError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.lease import (
    Lease,
    Renewer,
    TimedLease,
    dead_holder,
    make_cookie,
    process_namespace,
    renew_every,
)
from changelog.pipeline.targets import DirectoryTarget


class FakeTime:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def eventually(what: str, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_the_policy() -> None:
    assert renew_every(30, 3) == 10.0  # ttl/3
    assert renew_every(1, 0.5) == 0.25  # not ttl/3, which would leave 0.17 s before the deadline
    assert renew_every(120, 12) == 40.0  # the destination lock's defaults


def test_lease_renews_on_the_renew_every_schedule(tmp_path: Path) -> None:
    """``Lease.start_renewing`` renews ``renew_every`` after its last lock call (ttl 1 s: every
    0.25 s, where the old ttl/3 loop waited 0.33 s), read on the lease's own monotonic clock."""
    now = FakeTime(1000.0)
    store = SqliteStore(str(tmp_path / "s.db"))
    lease = Lease(store, "obj", name="n", ttl=1, monotonic=now)
    assert lease.acquire() and lease.renew_every == 0.25
    renewer = Renewer(lease.ttl, monotonic=now)
    renewer.add(lease)
    due, wake = renewer.due(now())  # the schedule, without a thread
    assert due == [] and wake == pytest.approx(1000.25)
    lease.start_renewing()
    try:
        time.sleep(0.4)  # longer than a real-time look at the lease: nothing is due yet
        assert lease.renewals == 0
        now.t = 1000.26
        eventually("the first renewal", lambda: lease.renewals == 1)
        assert lease.remaining() == pytest.approx(0.5)  # from the renewal's start: ttl - margin
        now.t = 1000.5  # 0.24 s after it: not due
        time.sleep(0.4)
        assert lease.renewals == 1
        now.t = 1000.52
        eventually("the second renewal", lambda: lease.renewals == 2)
        assert lease.held and lease.losses == 0
    finally:
        lease.release()
        store.close()


def test_lease_renewing_again_after_a_loss_and_retake(tmp_path: Path) -> None:
    """A lost lease leaves the renewal set; taken again, ``start_renewing`` puts it back."""
    store = SqliteStore(str(tmp_path / "s.db"))
    lease = Lease(store, "obj", name="n", ttl=1)
    try:
        assert lease.acquire()
        lease.start_renewing()
        store.unlock("obj", lease.ref)  # taken from under it: the next renewal is refused
        eventually("the loss", lambda: lease.losses == 1)
        assert lease.acquire()
        lease.start_renewing()
        renewals = lease.renewals
        eventually("renewals of the retaken lease", lambda: lease.renewals >= renewals + 2)
        assert lease.held
    finally:
        lease.release()
        store.close()


def test_destination_lock_shares_the_deadline_and_the_policy(tmp_path: Path) -> None:
    store = BackupStore(DirectoryTarget(tmp_path / "dest"))
    ft = FakeTime()
    lock = DestinationLock(store, owner="cleanup:hostA:1:aa", ttl=30, confirm_delay=1, clock=ft, monotonic=ft,
                           sleep=ft.sleep)
    assert isinstance(lock, TimedLease) and lock.margin == 3.0 and lock.renew_every == renew_every(30, 3)
    t0 = ft()
    lock.acquire()  # writes at t0, confirms one second later
    assert lock.held and lock.remaining() == pytest.approx(30 - 3 - 1)
    renewer = Renewer(lock.ttl, monotonic=ft)
    renewer.add(lock)
    due, wake = renewer.due(ft())
    assert due == [] and wake == pytest.approx(t0 + 10)
    ft.t = t0 + 10
    assert renewer.due(ft())[0] == [lock]
    lock.renew()
    assert lock.remaining() == pytest.approx(27)
    written = read_lock(store, "cleanup")
    assert written is not None and written.expires == pytest.approx(ft() + 30)
    ft.t += 27  # past the local deadline: no longer trusted, and a renewal is refused
    with pytest.raises(LeaseLost):
        lock.check()
    with pytest.raises(LeaseLost):
        lock.renew()
    assert not lock.held and lock.remaining() == 0.0
    lock.release()  # lost: the document is left to expire (it may be another's by now)
    assert read_lock(store, "cleanup") is not None


def test_destination_lock_renews_in_the_background(tmp_path: Path) -> None:
    store = BackupStore(DirectoryTarget(tmp_path / "dest"))
    ft = FakeTime()
    lock = DestinationLock(store, owner="cleanup:hostA:1:aa", ttl=3, confirm_delay=1, clock=ft, monotonic=ft,
                           sleep=ft.sleep)
    with lock:
        first = read_lock(store, "cleanup")
        assert first is not None
        # acquire's confirmation wait (1 s of fake time) used up one renew interval (1 s: margin
        # 1 s, so ttl/3 and (ttl - margin)/2 agree): a renewal is due now. (Moving the clock on
        # first would reach the local deadline, 2 s, before the renewer had run: lost, a race.)
        eventually("a renewal", lambda: (doc := read_lock(store, "cleanup")) is not None
                   and doc.expires > first.expires)
        ft.t += lock.renew_every / 2
        assert lock.held
    assert read_lock(store, "cleanup") is None  # released: deleted


def test_take_starts_renewing_once_and_sets_up_only_when_newly_taken(tmp_path: Path) -> None:
    """``Lease.take``, every leased role's ``acquire``: True while held, ``on_taken`` only when
    it was just taken; False while another holds it."""
    store = SqliteStore(str(tmp_path / "s.db"))
    mine = Lease(store, "obj", name="n", ttl=1)
    other = Lease(store, "obj", name="n", ttl=1)
    taken: list[int] = []
    try:
        assert mine.take(on_taken=lambda: taken.append(1)) and taken == [1]
        assert mine.take(on_taken=lambda: taken.append(2)) and taken == [1]  # held: nothing new
        assert not other.take(on_taken=lambda: taken.append(3)) and taken == [1]
        renewals = mine.renewals
        eventually("renewals in the background", lambda: mine.renewals >= renewals + 2)
    finally:
        mine.release()
        store.close()


def test_take_releases_when_the_setup_fails(tmp_path: Path) -> None:
    """A setup that fails (a transient read of the role's state) leaves the lease free, so that
    the next ``take`` sets up again instead of finding it held and the setup missing."""
    store = SqliteStore(str(tmp_path / "s.db"))
    lease = Lease(store, "obj", name="n", ttl=1)

    def fail() -> None:
        raise TransientError("state unreadable")

    try:
        with pytest.raises(TransientError):
            lease.take(on_taken=fail)
        assert not lease.held and store.lock_info("obj", "n") is None
        done: list[bool] = []
        assert lease.take(on_taken=lambda: done.append(True)) and done == [True]
    finally:
        lease.release()
        store.close()


def test_run_marker_renews_on_the_policy(tmp_path: Path) -> None:
    """A backup run's marker renews ``renew_every`` after its last write (its default ttl 300 s,
    margin 30 s: every 100 s), on the marker's own monotonic clock, through a ``Renewer``."""
    store = BackupStore(DirectoryTarget(tmp_path / "dest"))
    now = FakeTime(1000.0)
    doc: MarkerDoc = {"format": 1, "backup_id": "20250101T000000.000000Z-abcd", "owner": "me", "started": 0.0,
                      "base": None, "after": None, "until": None, "as_of_us": 0, "untrusted_blobs": False}
    assert renew_every(300.0, RunMarker(store, doc, 300.0, now, now).margin) == 100.0
    marker = RunMarker(store, doc, 3.0, now, now)  # margin 1 s: every second
    marker.write()
    renewer = Renewer(marker.ttl, monotonic=now)  # the schedule, without a thread
    renewer.add(marker)
    due, wake = renewer.due(now())
    assert due == [] and wake == pytest.approx(1001.0)
    marker.start()
    try:
        first = store.get_doc(marker_name(marker.run_id))
        time.sleep(0.3)  # nothing due yet
        assert store.get_doc(marker_name(marker.run_id)) == first
        now.t = 1001.0
        eventually("a renewal", lambda: store.get_doc(marker_name(marker.run_id)) != first)
        assert not marker.lapsed
    finally:
        marker.stop()


# -- dead holders of this host -----------------------------------------------------------------

_HOLDER = """
import sys, time
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.lease import Lease, make_cookie
cookie = sys.argv[2] or make_cookie("follower")
lease = Lease(SqliteStore(sys.argv[1]), "control", name="follower", ttl=30, cookie=cookie)
assert lease.acquire()
print(lease.ref.cookie, flush=True)
time.sleep(120)
"""


def _holder(db: Path, cookie: str = "") -> tuple[subprocess.Popen[str], str]:
    """Another process holding the lease ``follower`` on ``control`` for 30 s (and its cookie)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), cookie], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _killed(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(30)


def test_a_dead_holder_of_this_host_is_broken_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "s.db"
    proc, cookie = _holder(db)
    mine = Lease(SqliteStore(str(db)), "control", name="follower", ttl=30)
    try:
        assert dead_holder(cookie) is None
        assert not mine.take() and mine.breaks == 0  # alive: never broken
    finally:
        _killed(proc)
    assert dead_holder(cookie) == f"pid {proc.pid} is gone"
    with caplog.at_level(logging.WARNING, logger="changelog.pipeline.lease"):
        assert mine.take()  # at once, not 30 s later
    try:
        assert mine.breaks == 1
        info = mine.store.lock_info("control", "follower")
        assert info is not None and info.cookie == mine.ref.cookie
        assert any(f"lease follower on control broken: its holder {cookie}" in r.getMessage() for r in caplog.records)
    finally:
        mine.release()


@pytest.mark.parametrize("where", ["another host", "another namespace", "no stamp"])
def test_a_holder_elsewhere_is_never_broken(tmp_path: Path, where: str) -> None:
    host = socket.gethostname()
    stamp = f"{os.getpid()}.1.{process_namespace()}"
    forged = {
        "another host": f"follower:{host}-elsewhere:{stamp}:0123abcd",
        "another namespace": f"follower:{host}:{os.getpid()}.1.ffffffff:0123abcd",
        "no stamp": f"follower:{host}:999999999:0123abcd",
    }[where]
    db = tmp_path / "s.db"
    proc, cookie = _holder(db, forged)
    _killed(proc)
    assert cookie == forged and dead_holder(cookie) is None
    mine = Lease(SqliteStore(str(db)), "control", name="follower", ttl=30)
    assert not mine.take() and mine.breaks == 0


def test_dead_holder_reads_the_cookies_stamp() -> None:
    own = make_cookie("collector")
    host, ns = socket.gethostname(), process_namespace()
    assert re.fullmatch(rf"collector:{re.escape(host)}:{os.getpid()}\.\d+\.[0-9a-f]{{8}}:[0-9a-f]{{8}}", own)
    assert dead_holder(own) is None
    # The collector's shard cookies embed its id: the last stamp is the process's own.
    assert dead_holder(f"{own}:{make_cookie()}") is None
    # This very pid with another start time: an earlier process with the same pid (a container's
    # pid 1 restarted), gone.
    assert dead_holder(f"{host}:{os.getpid()}.1.{ns}:0123abcd") == f"pid {os.getpid()} is this process, started later"
    # A pid that exists, started at another time: reused by another process since.
    assert dead_holder(f"{host}:1.999999999999.{ns}:0123abcd") == "pid 1 is another process now (started later)"
