"""Honest health and target errors by cause, on the embedded index (sqlite) and a directory
target on real filesystems: a tmpfs remounted read-only, a tiny tmpfs filled up, a directory a
non-root process may not write. The tmpfs tests need root (mount); they are skipped, saying so,
without it."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from changelog import config as config_mod
from changelog.config import HealthConfig, parse_config
from changelog.errors import ConfigError, TransientError
from changelog.health import CHECKS, Health, Reason, all_of, oldest_entry_us
from changelog.metrics import ChangelogMetrics, make_registry
from changelog.pipeline.lease import Lease
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.targets import DirectoryTarget
from changelog.service import Pipeline, Service, health_checks, make_health

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    """Remount read-only or read-write. A read-only remount fails ("mount point is busy") while a
    file on it is open for writing, e.g. a collector pass writing the watermark at that moment:
    tried again until the pass has closed it (up to 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        proc = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"mount -o remount,{mode} {path}: {proc.stderr.strip()}")
        time.sleep(0.05)


def muts(n: int, start: int = 0) -> list[Mutation]:
    return [
        Mutation(
            bucket="b",
            key=f"k{i}",
            op=Op.WRITE,
            mtime_ns=1_795_000_000_000_000_000 + i,
            source="src",
            position=f"{i:010d}",
            seq=f"{i:010d}",
            size=i,
            etag="e",
        )
        for i in range(start, start + n)
    ]


def cfg_for(tmp_path: Path, target_dir: Path, **health: float) -> Any:
    return parse_config(
        {
            "index": {"path": str(tmp_path / "index.db"), "shards": 2},
            "target": {"url": f"file://{target_dir}/"},
            "collector": {
                "interval": 0.05,
                "settle": 0.0,
                "lease_ttl": 5,
                "retries": 0,
                "backoff_base": 0.05,
                "backoff_max": 0.2,
            },
            "health": {"failed_passes": 3, "max_backlog_age": 300, "max_follow_lag": 300, **health},
        }
    )


def logged_keys(target: DirectoryTarget) -> list[str]:
    from changelog.pipeline.reader import read_records

    return [r.key for r in read_records(target)]


def wait_for(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- classification by cause, on real filesystems -------------------------------------------


@needs_root
def test_a_read_only_filesystem_is_transient_and_a_tree_on_it_still_opens(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        t = DirectoryTarget(mnt / "logs")
        t.put("a", b"1")
        remount(mnt, "ro")
        with pytest.raises(TransientError, match="Read-only file system") as got:
            t.put("b", b"2")
        assert isinstance(got.value.__cause__, OSError) and got.value.__cause__.errno == errno.EROFS
        with pytest.raises(TransientError, match="Read-only"):
            t.create_multipart("c")
        # A restart while it is read-only: the existing tree opens, reads work.
        again = DirectoryTarget(mnt / "logs")
        assert again.get("a") == b"1"
        # A tree that cannot be made at start is a configuration error (one line, exit 2).
        with pytest.raises(ConfigError, match="cannot be used"):
            DirectoryTarget(mnt / "new")
        remount(mnt, "rw")
        t.put("b", b"2")
        assert [o.name for o in t.list()] == ["a", "b"]


@needs_root
def test_a_full_filesystem_is_transient_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        t = DirectoryTarget(mnt / "logs", fsync=False)
        with pytest.raises(TransientError, match="No space left"):
            for i in range(100):
                t.put(f"o{i}", b"x" * 64 * 1024)
        uid = None
        with pytest.raises(TransientError, match="No space left"):
            uid = t.create_multipart("m")
            t.upload_part("m", uid, 1, b"x" * 2 * 1024 * 1024)
        assert list((mnt / "logs" / ".tmp").iterdir()) == []  # the failed writes removed theirs
        if uid is None:  # the upload itself could not be made: no half-made upload is left
            assert list((mnt / "logs" / ".uploads").iterdir()) == []


def test_permission_denied_is_transient(tmp_path: Path) -> None:
    """EACCES from the kernel, as a writer without the right gets it: the writer runs without
    capabilities (root's CAP_DAC_OVERRIDE ignores modes) in a process of its own."""
    import shutil

    root = tmp_path / "logs"
    DirectoryTarget(root)
    script = (
        "from changelog.pipeline.targets import DirectoryTarget\n"
        "from changelog.errors import TransientError\n"
        f"t = DirectoryTarget({str(root)!r})\n"
        "try:\n    t.put('x', b'1')\nexcept TransientError as ex:\n    print('transient', ex.__cause__.errno)\n"
    )
    argv = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop the capability that ignores modes")
        argv = [setpriv, "--inh-caps=-all", "--bounding-set=-all", *argv]
    dirs = [root, *root.iterdir()]
    for d in dirs:
        os.chmod(d, 0o555)
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2]
        )
    finally:
        for d in dirs:
            os.chmod(d, 0o755)
    assert out.stdout.split() == ["transient", str(errno.EACCES)], out.stderr
    assert not (root / "x").exists()


def test_stale_temporary_files_go_live_ones_stay(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path / "logs")
    tmp = tmp_path / "logs" / ".tmp"
    owner = t._tmp().name.split(".", 1)[1]  # <pid>.<ns>.<host> of this process
    here = owner.split(".", 1)[1]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f"{'a' * 32}.{dead}.{here}",  # a process of this host that is gone
            "live": f"{'b' * 32}.{live.pid}.{here}",  # a live writer of this host
            "mine": f"{'c' * 32}.{owner}",  # this process's own
            "other_host": f"{'d' * 32}.{dead}.{here}.elsewhere",  # another host: age only
            "old_format": "e" * 32,  # before writers were named: age only
            "old_other_host": f"{'f' * 32}.{live.pid}.1.far.away",
        }
        for n in names.values():
            (tmp / n).write_bytes(b"")
        old = time.time() - 7200
        os.utime(tmp / names["old_other_host"], (old, old))
        assert t.remove_stale(older_than=3600) == 2
        assert sorted(p.name for p in tmp.iterdir()) == sorted(
            names[k] for k in ("live", "mine", "other_host", "old_format")
        )
        assert t.remove_stale(older_than=0, now=time.time() + 1) == 4  # all of them are old now
    finally:
        live.kill()
        live.wait()


# --- the collector keeps going through target faults -------------------------------------------


@needs_root
def test_collector_survives_a_read_only_target_and_health_says_so(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        cfg = cfg_for(tmp_path, mnt / "logs", failed_passes=2)
        index = config_mod.open_index(cfg)
        target = config_mod.open_target(cfg)
        assert isinstance(target, DirectoryTarget)
        collector = config_mod.make_collector(cfg, index, target)
        pipeline = Pipeline(index, target, collector, controls=None)  # type: ignore[arg-type]
        health = make_health(cfg.health, pipeline)
        service = Service({"collector": collector})
        checks = health_checks(pipeline, service, health)
        service.start()
        try:
            index.record_many(muts(10))
            wait_for(lambda: len(logged_keys(target)) == 10)
            assert checks["collector"]() == (True, "collector alive")
            remount(mnt, "ro")
            index.record_many(muts(10, start=10))
            wait_for(lambda: int(collector.stats()["failed_passes"]) >= 2)  # type: ignore[call-overload]
            ok, detail = checks["collector"]()
            assert not ok and "passes failed" in detail and "Read-only file system" in detail
            assert [(r.component, r.check) for r in health.reasons()] == [("collector", "failed_passes")]
            assert service.thread("collector").is_alive()  # type: ignore[union-attr]
            errors: Any = collector.stats()["target_errors"]
            assert errors.get("transient", 0) >= 2
            remount(mnt, "rw")
            wait_for(lambda: len(logged_keys(target)) == 20)
            wait_for(lambda: collector.stats()["failed_passes"] == 0)
            assert sorted(logged_keys(target)) == sorted(f"k{i}" for i in range(20))  # each once
            assert checks["collector"]() == (True, "collector alive")
            assert health.report() == {"ok": True, "reasons": []}
            assert list((mnt / "logs" / ".tmp").iterdir()) == []
        finally:
            service.stop()
            service.join(10)
            collector.step_down()
            index.store.close()


# --- each reason -------------------------------------------------------------------------------


class Stats:
    """A component's ``stats()`` as its owner reports it (a real follower needs a radosgw)."""

    def __init__(self, **stats: object) -> None:
        self.doc = dict(stats)

    def stats(self) -> dict[str, object]:
        return dict(self.doc)


POLICY = HealthConfig(failed_passes=3, max_backlog_age=5, max_follow_lag=60)


def test_failed_passes_reason_counts_in_a_row() -> None:
    collector = Stats(
        failed_passes=2, last_error="TransientError: write x: [Errno 28] No space left on device"
    )
    h = Health(POLICY, collector=collector, oldest_us=lambda: None)
    assert h.reasons() == []
    collector.doc["failed_passes"] = 3
    (r,) = h.reasons()
    assert (r.component, r.check) == ("collector", "failed_passes")
    assert "the last 3 passes failed" in r.detail and "No space left" in r.detail
    assert h.check("collector")() == (False, r.detail)


def test_backlog_reason_from_the_real_index(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, tmp_path / "logs")
    index = config_mod.open_index(cfg)
    try:
        assert oldest_entry_us(index) is None
        t0 = time.time()
        index.record_many(muts(5))
        oldest = oldest_entry_us(index)
        assert oldest is not None and abs(oldest / 1e6 - t0) < 5
        now = [t0 + 1]
        h = Health(
            POLICY,
            collector=Stats(failed_passes=0),
            oldest_us=lambda: oldest_entry_us(index),
            clock=lambda: now[0],
        )
        assert h.reasons() == []
        now[0] = t0 + 10
        (r,) = h.reasons()
        assert (r.component, r.check) == ("collector", "backlog_age") and "limit 5 s" in r.detail
    finally:
        index.store.close()


def test_follow_lag_reason_only_while_following() -> None:
    follower = Stats(lease_held=True, caught_up_until=1000.0)
    h = Health(POLICY, collector=Stats(), oldest_us=lambda: None, follower=follower, clock=lambda: 1059.0)
    assert h.reasons() == []
    h = Health(POLICY, collector=Stats(), oldest_us=lambda: None, follower=follower, clock=lambda: 1061.0)
    assert [(r.component, r.check) for r in h.reasons()] == [("follower", "follow_lag")]
    follower.doc["lease_held"] = False  # a standby: another process follows
    assert h.reasons() == []


def test_lease_renewal_reason_from_a_real_lease(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, tmp_path / "logs")
    index = config_mod.open_index(cfg)
    mono = [100.0]
    lease = Lease(index.store, index.control_oid, name="follower", ttl=30, monotonic=lambda: mono[0])
    try:
        assert lease.acquire()  # no renewals started: as if every renewal failed
        h = Health(POLICY, collector=Stats(), oldest_us=lambda: None, leases=lambda: [lease])
        assert h.reasons() == []
        mono[0] += 30 - 3 - lease.renew_every + 0.5  # one renewal period past the first renewal
        (r,) = h.reasons()
        assert (r.component, r.check) == ("leases", "lease_renewal") and "follower on" in r.detail
        mono[0] += 30  # expired: not held any more (the API's leases_held reports that)
        assert h.reasons() == []
    finally:
        lease.release()
        index.store.close()


def test_an_unreadable_part_is_a_reason_and_all_of_names_the_failing_ones() -> None:
    class Broken:
        def stats(self) -> dict[str, object]:
            raise TransientError("index unreachable")

    h = Health(POLICY, collector=Broken(), oldest_us=lambda: None)
    (r,) = h.reasons()
    assert (r.component, r.check) == ("collector", "read") and "index unreachable" in r.detail
    check = all_of(lambda: (True, "collector alive"), lambda: (False, "3 passes failed"))
    assert check() == (False, "3 passes failed")
    assert all_of(lambda: (True, "collector alive"), lambda: (True, "ok"))() == (True, "collector alive")


def test_metrics_export_each_check_and_the_failed_passes_gauge() -> None:
    reasons = [Reason("collector", "backlog_age", "old")]
    metrics = ChangelogMetrics(collector=Stats(failed_passes=4), health=lambda: reasons)
    text = _scrape(metrics)
    assert "rgw_changelog_health_ok 0.0" in text
    assert 'rgw_changelog_health_failing{check="backlog_age",component="collector"} 1.0' in text
    for component, check in CHECKS:
        assert f'rgw_changelog_health_failing{{check="{check}",component="{component}"}}' in text
    assert 'rgw_changelog_health_failing{check="failed_passes",component="collector"} 0.0' in text
    assert "rgw_changelog_collector_failed_passes 4.0" in text
    reasons.clear()
    assert "rgw_changelog_health_ok 1.0" in _scrape(metrics)


def _scrape(metrics: ChangelogMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(make_registry(metrics, process=False)).decode()


def test_status_lists_the_reasons(tmp_path: Path) -> None:
    from changelog.service import status_doc

    cfg = cfg_for(tmp_path, tmp_path / "logs", max_backlog_age=0.001)
    index = config_mod.open_index(cfg)
    target = config_mod.open_target(cfg)
    collector = config_mod.make_collector(cfg, index, target)
    try:
        index.record_many(muts(3))
        time.sleep(0.01)
        pipeline = Pipeline(index, target, collector, controls=None)  # type: ignore[arg-type]
        got: Any = status_doc(cfg, pipeline)["health"]
        assert got["ok"] is False and [(r["component"], r["check"]) for r in got["reasons"]] == [
            ("collector", "backlog_age")
        ]
        assert "limit 0.001 s" in got["reasons"][0]["detail"]
        collector.run_pass()
        assert status_doc(cfg, pipeline)["health"] == {"ok": True, "reasons": []}
    finally:
        collector.step_down()
        index.store.close()


def test_a_failing_pass_is_counted_and_a_good_one_resets(tmp_path: Path) -> None:
    """The service loop's step on a target that refuses (a name collision: permanent at the
    edge) fails the pass transiently: the loop goes on."""
    cfg = cfg_for(tmp_path, tmp_path / "logs")
    index = config_mod.open_index(cfg)
    target = config_mod.open_target(cfg)
    collector = config_mod.make_collector(cfg, index, target)
    year = tmp_path / "logs" / time.strftime("%Y", time.gmtime())
    year.write_bytes(b"")  # a file where the year's directory of log objects must be
    stop = threading.Event()
    try:
        index.record_many(muts(3))
        assert collector.acquire()
        for n in (1, 2):
            with pytest.raises(TransientError, match="pass failed"):
                collector.step(stop)
            assert collector.stats()["failed_passes"] == n
        assert collector.stats()["target_errors"] == {"permanent": 2}
        year.unlink()
        collector.step(stop)
        assert collector.stats()["failed_passes"] == 0 and len(logged_keys(target)) == 3  # type: ignore[arg-type]
    finally:
        collector.step_down()
        index.store.close()


class Flaky:
    """A consumer whose steps fail (transiently) while ``failing`` is set."""

    name = "flaky"
    interval = 0.01

    def __init__(self) -> None:
        self.wake: Any = lambda: None
        self.failing = True

    def step(self, cursor: Any, stop: threading.Event) -> None:
        if self.failing:
            raise TransientError("replication site s3.example: connection refused")

    def stats(self) -> dict[str, object]:
        return {"records_consumed": 0}

    def routes(self) -> dict[Any, Any]:
        return {}


def test_a_consumer_failing_for_good_makes_serve_unhealthy_until_a_step_succeeds(tmp_path: Path) -> None:
    """A consumer whose every step fails (its site or target down for good) was healthy forever:
    only ``consumer_errors_total`` told. Failing longer than ``max_consumer_failing`` is now a
    reason, named by consumer, with the last error; one good step clears it."""
    from changelog.consumers.framework import ConsumerRunner
    from changelog.pipeline.loop import run_leased

    cfg = cfg_for(tmp_path, tmp_path / "logs", max_consumer_failing=0.3)
    index = config_mod.open_index(cfg)
    consumer = Flaky()
    runner = ConsumerRunner(index, consumer, lease_ttl=5)  # type: ignore[arg-type]
    runner.policy = dataclasses.replace(runner.policy, backoff_base=0.05, backoff_max=0.1)
    h = Health(cfg.health, collector=Stats(), oldest_us=lambda: None, consumers={"flaky": runner})
    stop = threading.Event()
    t = threading.Thread(target=run_leased, args=(runner, stop, runner.policy), kwargs={"counts": runner.counts})
    t.start()
    try:
        wait_for(lambda: runner.counts.failed_in_row >= 2)
        assert h.reasons() == []  # failing, not yet for 0.3 s
        wait_for(lambda: h.reasons() != [])
        (r,) = h.reasons()
        assert (r.component, r.check) == ("consumers", "failing_steps")
        assert r.detail.startswith("consumer flaky: every step failed for") and "connection refused" in r.detail
        assert h.consumer_check("flaky")()[0] is False
        consumer.failing = False
        wait_for(lambda: runner.counts.failed_in_row == 0)
        assert h.reasons() == [] and h.consumer_check("flaky")() == (True, "ok")
        assert runner.stats()["failing_seconds"] == 0.0 and runner.stats()["transient_errors"] >= 2
    finally:
        stop.set()
        t.join(10)
        index.store.close()
