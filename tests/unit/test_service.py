"""The serve plumbing without Ceph: component threads, stop and failure propagation, signals,
the embedded serve with its API (flush, pause, consumer routes), and the health checks."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from changelog.errors import PermanentError, TransientError
from changelog.service import ComponentThread, Pipeline, Service, health_checks, same_endpoint, serve


class Loop:
    """A component that works until asked to stop."""

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def run(self, stop: threading.Event) -> None:
        stop.wait()
        self.stopped.set()


class Dies:
    def __init__(self, error: BaseException, after: float = 0.0) -> None:
        self.error = error
        self.after = after

    def run(self, stop: threading.Event) -> None:
        time.sleep(self.after)
        raise self.error


def test_stop_ends_every_component() -> None:
    a, b = Loop(), Loop()
    svc = Service({"a": a, "b": b})
    svc.start()
    svc.stop()
    svc.join(5)
    assert a.stopped.is_set() and b.stopped.is_set()


def test_a_failing_component_stops_the_others_and_is_reraised() -> None:
    survivor = Loop()
    cleaned: list[str] = []
    svc = Service({"follower": Dies(PermanentError("source.endpoint refused"), 0.05), "collector": survivor})
    svc.add_cleanup(lambda: cleaned.append("closed"))
    svc.start()
    assert svc.stop_event.wait(5)
    with pytest.raises(PermanentError, match="refused"):
        svc.join(5)
    assert survivor.stopped.is_set()
    assert cleaned == ["closed"]


def test_the_first_failure_wins() -> None:
    svc = Service({"late": Dies(TransientError("second"), 0.3), "early": Dies(PermanentError("first"), 0.0)})
    svc.start()
    with pytest.raises(PermanentError, match="first"):
        svc.join(5)


def test_component_thread_reraises_on_join() -> None:
    stop = threading.Event()
    t = ComponentThread("x", Dies(ValueError("boom")), stop)
    t.start()
    with pytest.raises(ValueError, match="boom"):
        t.join_and_raise(5)
    assert stop.is_set()


def test_a_component_that_returns_unasked_stops_the_service() -> None:
    class Returns:
        def run(self, stop: threading.Event) -> None:
            return None

    other = Loop()
    svc = Service({"quitter": Returns(), "other": other})
    svc.start()
    assert svc.stop_event.wait(5)
    svc.join(5)
    assert other.stopped.is_set()


def test_stuck_component_is_reported() -> None:
    class Stuck:
        def run(self, stop: threading.Event) -> None:
            time.sleep(2)

    svc = Service({"stuck": Stuck()}, stop_timeout=0.1)
    svc.start()
    svc.stop()
    with pytest.raises(PermanentError, match="did not stop"):
        svc.join(0.1)


def test_sigterm_stops_run() -> None:
    comp = Loop()
    svc = Service({"loop": comp}, stop_timeout=5)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        svc.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert comp.stopped.is_set()


def test_nothing_to_run_is_refused() -> None:
    with pytest.raises(PermanentError):
        Service({})


def testsame_endpoint() -> None:
    assert same_endpoint("http://127.0.0.1:17480", "http://127.0.0.1:17480/")
    assert same_endpoint("https://rgw.example", "https://rgw.example:443")
    assert not same_endpoint("http://127.0.0.1:17480", "http://127.0.0.1:17481")


# --------------------------------------------------------------------------- serve's API wiring


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_config(tmp_path: Any, port: int) -> Any:
    from changelog.config import parse_config

    return parse_config(
        {
            "index": {"path": str(tmp_path / "index.db"), "shards": 4},
            "target": {"url": f"file://{tmp_path}/logs/"},
            "collector": {"interval": 0.05, "settle": 0.0, "lease_ttl": 5},
            "api": {"listen": f"127.0.0.1:{port}"},
        }
    )


def api_get(port: int, method: str, path: str) -> tuple[int, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, json.loads(body) if ctype == "application/json" else body.decode()
    finally:
        conn.close()


def test_serve_embedded_runs_the_collector_and_the_api_without_source_checks(tmp_path: Any) -> None:
    """``serve`` without [source] endpoint: the collector and the API; the health report leaves
    out the source radosgw and the follower, the leases check has the collector's lease."""
    from changelog import config as config_mod
    from changelog.pipeline.mutation import Mutation, Op

    port = free_port()
    cfg = embedded_config(tmp_path, port)
    index = config_mod.open_index(cfg)
    index.record_many(
        [
            Mutation(bucket="b", key=f"k/{i}", op=Op.WRITE, mtime_ns=time.time_ns(), source="t", position=f"{i:08d}",
                     seq=f"{i:08d}", size=1, etag="e")
            for i in range(20)
        ]
    )
    index.store.close()
    seen: dict[str, Any] = {}

    def drive() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    status, doc = api_get(port, "GET", "/_/healthcheck")
                except OSError:
                    time.sleep(0.05)
                    continue
                seen["health"] = (status, doc)
                status_doc = api_get(port, "GET", "/_/status")[1]
                # The counters move when a commit finishes, just after its trim empties the index.
                if (status == 200 and status_doc["index"]["entries"] == 0
                        and status_doc["collector"]["live"]["entries_emitted"] == 20):
                    break
                time.sleep(0.05)
            seen["status"] = api_get(port, "GET", "/_/status")[1]
            seen["metrics"] = api_get(port, "GET", "/_/metrics")[1]
            seen["pause"] = api_get(port, "POST", "/_/pause/collector")
            seen["no_follower"] = api_get(port, "POST", "/_/pause/follower")[0]
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    helper = threading.Thread(target=drive)
    helper.start()
    try:
        serve(cfg)
    finally:
        helper.join(30)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    status, doc = seen["health"]
    assert status == 200, doc
    assert set(doc["components"]) == {"index", "target", "collector", "leases"}
    assert doc["components"]["leases"]["detail"].startswith("1 held")
    st = seen["status"]
    assert st["from"] == "serve" and st["index"]["entries"] == 0
    assert st["collector"]["live"]["entries_emitted"] == 20
    assert set(st["controls"]) == {"collector"}
    assert "rgw_changelog_entries_emitted_total 20.0" in seen["metrics"]
    assert 'rgw_changelog_leases_held{lease="collector"} 1.0' in seen["metrics"]
    assert seen["pause"][0] == 200 and seen["pause"][1]["controls"]["collector"]["paused"] is True
    assert seen["no_follower"] == 404


class FakeAdmin2:
    endpoint = "http://rgw.invalid:7480"

    def __init__(self) -> None:
        self.up = True

    def server_time_ns(self) -> int:
        if not self.up:
            raise TransientError("GET /admin/...: connection refused")
        return time.time_ns()


class FakeFollower:
    def __init__(self, lease: Any) -> None:
        self.admin = FakeAdmin2()
        self.lease = lease

    def leases(self) -> list[Any]:
        return [self.lease]


def test_health_checks_with_a_follower(tmp_path: Any) -> None:
    from changelog import config as config_mod
    from changelog.api import Controls
    from changelog.pipeline.lease import Lease

    cfg = embedded_config(tmp_path, free_port())
    index = config_mod.open_index(cfg)
    target = config_mod.open_target(cfg)
    collector = config_mod.make_collector(cfg, index, target)
    follower = FakeFollower(Lease(index.store, index.control_oid, name="follower", ttl=5))
    try:
        pipeline = Pipeline(index, target, collector, Controls(), follower)  # type: ignore[arg-type]
        service = Service({"follower": Loop(), "collector": Loop()})
        checks = health_checks(pipeline, service)
        assert list(checks) == ["index", "source", "target", "follower", "collector", "leases"]
        assert checks["index"]() == (True, "control object readable")
        assert checks["source"]() == (True, "http://rgw.invalid:7480 answering")
        assert checks["target"]()[0] is True and checks["target"]()[1].endswith("listable")
        assert checks["follower"]() == (False, "not started")
        assert checks["leases"]()[0] is False  # nobody holds them yet
        service.start()
        assert follower.lease.acquire() and collector.try_takeover()
        assert checks["follower"]() == (True, "follower alive")
        assert checks["leases"]()[0] is True and checks["leases"]()[1].startswith("2 held")
        follower.admin.up = False
        with pytest.raises(TransientError):
            checks["source"]()  # the API turns this into "down" with the message
        service.stop()
        service.join(5)
        assert checks["collector"]() == (False, "collector has stopped")
    finally:
        collector.step_down()
        follower.lease.release()
        index.store.close()


def test_cli_flush_pause_and_resume_go_through_a_running_serve(tmp_path: Any) -> None:
    """With a long settle window nothing recorded just now would be emitted before the next
    interval; `rgw-changelog flush` asks the running serve for a pass without one, and prints
    that pass's result. `pause` / `resume` act on the serve's switches."""
    import subprocess
    import sys

    from changelog import config as config_mod
    from changelog.pipeline.mutation import Mutation, Op

    port = free_port()
    toml = tmp_path / "serve.toml"
    toml.write_text(
        f'[index]\npath = "{tmp_path / "index.db"}"\nshards = 4\n'
        f'[target]\nurl = "file://{tmp_path}/logs/"\n'
        "[collector]\ninterval = 30\nsettle = 30\nlease_ttl = 5\n"
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
    )
    cfg = config_mod.load_config(toml)
    index = config_mod.open_index(cfg)
    index.record_many(
        [
            Mutation(bucket="b", key=f"k/{i}", op=Op.WRITE, mtime_ns=time.time_ns(), source="t", position=f"{i:08d}",
                     seq=f"{i:08d}", size=1, etag="e")
            for i in range(7)
        ]
    )
    index.store.close()
    seen: dict[str, Any] = {}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "changelog.cli", "-c", str(toml), *args], capture_output=True, text=True, timeout=60
        )

    def drive() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if api_get(port, "GET", "/_/healthcheck")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            seen["before"] = api_get(port, "GET", "/_/status")[1]["index"]["entries"]
            seen["flush"] = cli("flush", "--json")
            seen["after"] = api_get(port, "GET", "/_/status")[1]["index"]["entries"]
            seen["pause"] = cli("pause", "collector")
            seen["paused"] = api_get(port, "GET", "/_/status")[1]["controls"]["collector"]["paused"]
            seen["resume"] = cli("resume", "--json")
            seen["unknown"] = cli("pause", "replicator")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    helper = threading.Thread(target=drive)
    helper.start()
    try:
        serve(cfg)
    finally:
        helper.join(60)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert seen["before"] == 7  # the settle window kept them in the index
    flush = seen["flush"]
    assert flush.returncode == 0, flush.stderr
    doc = json.loads(flush.stdout)
    assert doc["entries"] == 7 and len(doc["objects"]) == 1 and doc["cutoff"].endswith("Z")
    assert "by serve at http://127.0.0.1" in flush.stderr or flush.stderr == ""
    assert seen["after"] == 0
    assert seen["pause"].returncode == 0 and "collector paused" in seen["pause"].stdout
    assert seen["paused"] is True
    assert json.loads(seen["resume"].stdout)["controls"]["collector"]["paused"] is False
    assert seen["unknown"].returncode == 1 and "no component 'replicator'" in seen["unknown"].stderr
    assert len(seen["unknown"].stderr.strip().splitlines()) == 1


def test_pause_without_a_serve_says_so(tmp_path: Any) -> None:
    import subprocess
    import sys

    toml = tmp_path / "c.toml"
    toml.write_text(f'[index]\npath = "{tmp_path / "i.db"}"\n[api]\nlisten = "127.0.0.1:{free_port()}"\n')
    r = subprocess.run([sys.executable, "-m", "changelog.cli", "-c", str(toml), "pause"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip() == "error: no serve answers on [api] listen: nothing to pause (pause and resume act on a running serve)"
