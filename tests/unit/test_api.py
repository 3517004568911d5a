"""The HTTP API and the metrics, on a real server bound to 127.0.0.1:0, with providers that are
small real objects: a change index and leases on the embedded sqlite store, counters in dicts."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from changelog.api import (
    ApiClient,
    ApiServer,
    ApiUnavailable,
    Controls,
    HealthChecks,
    UnknownComponent,
    address_allowed,
    leases_held,
    parse_allow_from,
    parse_listen,
    probe,
    thread_alive,
)
from changelog.errors import ConfigError
from changelog.metrics import ChangelogMetrics, make_registry
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.lease import Lease
from changelog.pipeline.mutation import Mutation, Op

# --------------------------------------------------------------------------- fakes


class Switch:
    """A health check that is up or down as the test says."""

    def __init__(self, up: bool = True, detail: str = "fine") -> None:
        self.up = up
        self.detail = detail
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.up, self.detail if self.up else "unreachable"


class Hang:
    """A health check that blocks until released, like an endpoint that never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        self.release.wait(30)
        return True, "answered late"


class CollectorStats:
    def __init__(self) -> None:
        self.counters: dict[str, Any] = {
            "passes": 0,
            "entries_emitted": 0,
            "objects_committed": 0,
            "bytes_committed": 0,
            "target_errors": {},
        }
        self.fail = False

    def stats(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("collector stats broke")
        return dict(self.counters)

    def drain(self, entries: int, nbytes: int, seconds: float) -> None:
        c = self.counters
        c["passes"] += 1
        c["entries_emitted"] += entries
        c["objects_committed"] += 1
        c["bytes_committed"] += nbytes
        c["last_pass_entries"], c["last_pass_seconds"] = entries, seconds
        c["last_pass_end"] = time.time()
        c["complete_until"] = time.time() - 2


class FollowerStats:
    def __init__(self) -> None:
        self.counters: dict[str, Any] = {"mutations_recorded": 0, "mutations_duplicate": 0, "lag_seconds": {}}

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)


class Status:
    def __init__(self) -> None:
        self.fail = False

    def __call__(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("status broke\nsecond line that must not reach the caller")
        return {"from": "serve", "index": {"shards": 4, "entries": 0}}


def mutation(i: int) -> Mutation:
    return Mutation(
        bucket="photos",
        key=f"k/{i}",
        op=Op.WRITE,
        mtime_ns=time.time_ns(),
        source="test:photos",
        position=f"{i:016x}",
        seq=f"{i:016x}",
        size=i,
        etag="e",
    )


class Env:
    def __init__(self, tmp: Any) -> None:
        self.store = SqliteStore(path=str(tmp / "index.db"))
        self.index = ChangeIndex(self.store, shards=4, prefix="t")
        self.leases = [Lease(self.store, self.index.control_oid, name="collector", ttl=30)]
        self.collector = CollectorStats()
        self.follower = FollowerStats()
        self.controls = Controls()
        self.status = Status()
        self.checks: dict[str, Any] = {
            "index": probe(lambda: self.store.omap_get(self.index.control_oid, ["meta"])),
            "source": Switch(),
            "target": Switch(),
            "collector": Switch(),
            "follower": Switch(),
            "leases": leases_held(lambda: self.leases),
        }
        self.metrics = ChangelogMetrics(
            collector=self.collector,
            follower=self.follower,
            index=self.index,
            leases=lambda: self.leases,
            controls=self.controls,
            shard_stats_ttl=0,
        )
        self.registry = make_registry(self.metrics)

    def server(self, *, allow_from: tuple[str, ...] = ("127.0.0.1",), check_timeout: float = 5.0) -> ApiServer:
        return ApiServer(
            "127.0.0.1:0",
            allow_from,
            status_provider=self.status,
            health_checks=self.checks,
            controls=self.controls,
            registry=self.registry,
            check_timeout=check_timeout,
        )


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    e = Env(tmp_path)
    assert e.leases[0].acquire()
    yield e
    for lease in e.leases:
        lease.release()
    e.store.close()


@pytest.fixture
def api(env: Env) -> Iterator[ApiServer]:
    with env.server() as server:
        yield server


def call(server: ApiServer, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def call_json(server: ApiServer, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    status, headers, body = call(server, method, path)
    assert headers["content-type"] == "application/json", (status, body)
    return status, headers, json.loads(body)


def scrape(server: ApiServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = call(server, "GET", "/_/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --------------------------------------------------------------------------- routes


def test_healthcheck_names_every_component_and_turns_500_and_back(env: Env, api: ApiServer) -> None:
    status, _, doc = call_json(api, "GET", "/_/healthcheck")
    assert status == 200
    assert doc["ok"] is True
    assert set(doc["components"]) == {"index", "source", "target", "collector", "follower", "leases"}
    assert all(c["ok"] for c in doc["components"].values())
    assert doc["components"]["leases"]["detail"].startswith("1 held")

    env.checks["target"].up = False
    status, _, doc = call_json(api, "GET", "/_/healthcheck")
    assert status == 500
    assert doc["ok"] is False
    assert doc["components"]["target"] == {"ok": False, "detail": "unreachable", "seconds": doc["components"]["target"]["seconds"]}
    assert doc["components"]["source"]["ok"] is True

    env.checks["target"].up = True
    status, _, doc = call_json(api, "GET", "/_/healthcheck")
    assert status == 200 and doc["ok"] is True


def test_healthcheck_reports_a_lost_lease_and_a_failing_probe(env: Env, api: ApiServer) -> None:
    env.leases[0].release()
    env.store.close()  # the index backend is gone
    status, _, doc = call_json(api, "GET", "/_/healthcheck")
    assert status == 500
    assert doc["components"]["leases"]["ok"] is False
    assert "not held" in doc["components"]["leases"]["detail"]
    assert doc["components"]["index"]["ok"] is False
    assert "\n" not in doc["components"]["index"]["detail"]


def test_healthcheck_with_a_hanging_check_answers_in_time_and_reuses_the_hung_run(env: Env) -> None:
    hang = Hang()
    env.checks["target"] = hang
    with env.server(check_timeout=0.5) as server:
        t0 = time.monotonic()
        # The check hangs for 30 s; the client gives up after 10 s: an answer at all means the
        # route did not wait for it. (How fast is printed, never asserted.)
        status, _, doc = call_json(server, "GET", "/_/healthcheck")
        print(f"[healthcheck with a hung check answered in {time.monotonic() - t0:.2f}s, limit 0.5s]")
        assert status == 500
        assert doc["components"]["target"]["ok"] is False
        assert "no answer" in doc["components"]["target"]["detail"]
        assert doc["components"]["source"]["ok"] is True
        # Still hung: reported down again, without a second copy of the check piling up.
        status, _, doc = call_json(server, "GET", "/_/healthcheck")
        assert status == 500 and hang.calls == 1
        hang.release.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, _, doc = call_json(server, "GET", "/_/healthcheck")
            if status == 200:
                break
        assert status == 200
        calls = hang.calls  # 1 if a request got the hung run's late answer, else 2
        assert calls in (1, 2)
        assert call_json(server, "GET", "/_/healthcheck")[0] == 200
        assert hang.calls == calls + 1  # once it has answered, each request runs it afresh


def test_health_checks_run_concurrently() -> None:
    gate = threading.Barrier(3, timeout=5)

    def meet() -> tuple[bool, str]:
        gate.wait()  # only passes when all three run at once
        return True, "met"

    ok, report = HealthChecks({"a": meet, "b": meet, "c": meet}, timeout=5).run()
    assert ok, report


def test_status_is_the_provider_document_plus_the_controls(env: Env, api: ApiServer) -> None:
    status, _, doc = call_json(api, "GET", "/_/status")
    assert status == 200
    assert doc["from"] == "serve"
    assert doc["index"] == {"shards": 4, "entries": 0}
    assert doc["controls"]["collector"] == {"paused": False, "since": None, "parked": False}
    env.controls.pause("follower")
    _, _, doc = call_json(api, "GET", "/_/status")
    assert doc["controls"]["follower"]["paused"] is True
    assert doc["controls"]["follower"]["since"].endswith("Z")


def test_pause_and_resume_routes(env: Env, api: ApiServer) -> None:
    status, _, doc = call_json(api, "POST", "/_/pause/collector")
    assert status == 200
    assert doc["controls"]["collector"]["paused"] is True
    assert doc["controls"]["follower"]["paused"] is False
    assert env.controls.paused("collector") and not env.controls.paused("follower")

    _, _, doc = call_json(api, "POST", "/_/pause")
    assert {c: s["paused"] for c, s in doc["controls"].items()} == {"collector": True, "follower": True}
    _, _, doc = call_json(api, "POST", "/_/resume/follower")
    assert {c: s["paused"] for c, s in doc["controls"].items()} == {"collector": True, "follower": False}
    _, _, doc = call_json(api, "POST", "/_/pause/follower")
    assert doc["controls"]["follower"]["paused"] is True
    _, _, doc = call_json(api, "POST", "/_/resume/collector")
    assert {c: s["paused"] for c, s in doc["controls"].items()} == {"collector": False, "follower": True}
    status, _, doc = call_json(api, "POST", "/_/resume")
    assert status == 200
    assert not any(s["paused"] for s in doc["controls"].values())
    # A body is allowed and ignored; a trailing slash too.
    status, _, doc = call_json(api, "POST", "/_/pause/")
    assert status == 200 and doc["controls"]["collector"]["paused"] is True
    status, _, _ = call(api, "POST", "/_/resume", body=b'{"ignored": true}')
    assert status == 200 and not env.controls.paused("collector")


def test_metrics_parse_and_move(env: Env, api: ApiServer) -> None:
    m = scrape(api)
    assert m[("rgw_changelog_build_info", (("version", "0.1.0"),))] == 1
    assert m[("rgw_changelog_backlog_entries", ())] == 0
    assert m[("rgw_changelog_index_entries", (("shard", "0"),))] == 0
    assert m[("rgw_changelog_mutations_recorded_total", ())] == 0
    assert m[("rgw_changelog_entries_emitted_total", ())] == 0
    assert m[("rgw_changelog_paused", (("component", "collector"),))] == 0
    assert m[("rgw_changelog_leases_held", (("lease", "collector"),))] == 1
    assert ("rgw_changelog_drain_entries_per_second", ()) not in m  # no pass finished yet
    assert any(name == "process_cpu_seconds_total" for name, _ in m)

    # The follower records 50 mutations; the index has them, per shard.
    result = env.index.record_many(mutation(i) for i in range(50))
    env.follower.counters["mutations_recorded"] += result.written
    env.follower.counters["lag_seconds"] = {"photos": {0: 0.0, "3": 2.5}}
    env.follower.counters["source_errors"] = {"timeout": 2}
    m = scrape(api)
    assert m[("rgw_changelog_mutations_recorded_total", ())] == 50
    assert m[("rgw_changelog_backlog_entries", ())] == 50
    per_shard = [m[("rgw_changelog_index_entries", (("shard", str(s)),))] for s in range(4)]
    assert sum(per_shard) == 50 and max(per_shard) < 50
    assert m[("rgw_changelog_backlog_oldest_entry_age_seconds", ())] >= 0
    assert m[("rgw_changelog_follower_lag_seconds", (("bucket", "photos"), ("shard", "3")))] == 2.5
    assert m[("rgw_changelog_follower_lag_seconds", (("bucket", "photos"), ("shard", "0")))] == 0
    assert m[("rgw_changelog_source_errors_total", (("kind", "timeout"),))] == 2

    # The collector drains them; the lease renews.
    for s in range(4):
        env.index.remove(s, [e.key for e in env.index.scan(s)])
    env.collector.drain(50, 4096, 0.5)
    env.collector.counters["target_errors"] = {"transient": 3}
    env.leases[0].renew()
    env.controls.pause("collector")
    m = scrape(api)
    assert m[("rgw_changelog_backlog_entries", ())] == 0
    assert m[("rgw_changelog_entries_emitted_total", ())] == 50
    assert m[("rgw_changelog_log_objects_committed_total", ())] == 1
    assert m[("rgw_changelog_log_bytes_committed_total", ())] == 4096
    assert m[("rgw_changelog_collector_passes_total", ())] == 1
    assert m[("rgw_changelog_drain_entries_per_second", ())] == 100
    assert m[("rgw_changelog_target_errors_total", (("kind", "transient"),))] == 3
    assert m[("rgw_changelog_lease_renewals_total", (("lease", "collector"),))] == 1
    assert m[("rgw_changelog_paused", (("component", "collector"),))] == 1
    assert m[("rgw_changelog_paused", (("component", "follower"),))] == 0
    assert time.time() - m[("rgw_changelog_watermark_timestamp_seconds", ())] < 60


def test_lease_counters_stay_monotonic_when_a_lease_object_is_dropped(env: Env, api: ApiServer) -> None:
    lease = env.leases[0]
    lease.renew()
    lease.renew()
    m = scrape(api)
    assert m[("rgw_changelog_lease_renewals_total", (("lease", "collector"),))] == 2
    # The holder loses it (another process broke the lock) and throws the object away.
    env.store.unlock(lease.oid, lease.ref)
    with pytest.raises(Exception, match="lost"):
        lease.renew()
    assert lease.losses == 1
    m = scrape(api)
    assert m[("rgw_changelog_lease_losses_total", (("lease", "collector"),))] == 1
    assert m[("rgw_changelog_leases_held", (("lease", "collector"),))] == 0
    env.leases = [Lease(env.store, env.index.control_oid, name="collector", ttl=30)]
    assert env.leases[0].acquire()
    env.leases[0].breaks = 1  # as if it had broken a dead holder's lock to get there
    m = scrape(api)
    assert m[("rgw_changelog_lease_renewals_total", (("lease", "collector"),))] == 2
    assert m[("rgw_changelog_lease_losses_total", (("lease", "collector"),))] == 1
    assert m[("rgw_changelog_lease_breaks_total", (("lease", "collector"),))] == 1
    assert m[("rgw_changelog_leases_held", (("lease", "collector"),))] == 1
    env.leases = []
    m = scrape(api)  # dropped: its counts stay in the totals
    assert m[("rgw_changelog_lease_breaks_total", (("lease", "collector"),))] == 1


def test_a_failing_provider_costs_its_metrics_not_the_scrape(env: Env, api: ApiServer) -> None:
    env.collector.fail = True
    m = scrape(api)
    assert ("rgw_changelog_entries_emitted_total", ()) not in m
    assert m[("rgw_changelog_scrape_errors_total", (("source", "collector"),))] == 1
    assert m[("rgw_changelog_backlog_entries", ())] == 0
    env.collector.fail = False
    m = scrape(api)
    assert m[("rgw_changelog_entries_emitted_total", ())] == 0


def test_shard_stats_are_cached(env: Env) -> None:
    metrics = ChangelogMetrics(index=env.index, shard_stats_ttl=3600)
    registry = make_registry(metrics, process=False)
    with ApiServer(
        "127.0.0.1:0",
        ["127.0.0.1"],
        status_provider=dict,
        health_checks={},
        controls=env.controls,
        registry=registry,
    ) as server:
        assert scrape(server)[("rgw_changelog_backlog_entries", ())] == 0
        env.index.record(mutation(1))
        assert scrape(server)[("rgw_changelog_backlog_entries", ())] == 0
        assert metrics.shard_stats is not None
        metrics.shard_stats.invalidate()
        assert scrape(server)[("rgw_changelog_backlog_entries", ())] == 1


def test_lease_check_standby_while_another_serve_holds_the_lease(env: Env, tmp_path: Any) -> None:
    """Another instance holding the lease is a healthy standby; a lease nobody holds is down."""
    ours = env.leases[0]
    ours.release()
    elsewhere = SqliteStore(path=str(tmp_path / "index.db"))  # another process, as far as locks go
    try:
        other = Lease(elsewhere, env.index.control_oid, name="collector", ttl=30, description="collector on host-b")
        assert other.acquire()
        ok, detail = leases_held(lambda: env.leases)()
        assert ok is True and detail.startswith("standby: collector held by collector on host-b"), detail
        # One held here, one standing by: both said.
        mine = Lease(env.store, env.index.control_oid, name="follower", ttl=30)
        assert mine.acquire()
        ok, detail = leases_held(lambda: [mine, ours])()
        assert ok is True and detail.startswith("1 held, next expiry in") and "; standby: collector held by" in detail
        mine.release()
        with env.server() as server:
            status, _, doc = call_json(server, "GET", "/_/healthcheck")
            assert status == 200 and doc["components"]["leases"]["detail"].startswith("standby"), doc
            # The other one goes away: nobody holds the lease now, and that is down.
            other.release()
            status, _, doc = call_json(server, "GET", "/_/healthcheck")
            assert status == 500 and doc["components"]["leases"]["ok"] is False
            assert doc["components"]["leases"]["detail"] == f"1/1 not held: collector on {env.index.control_oid}"
    finally:
        elsewhere.close()


def test_lease_check_down_when_we_lost_a_lease_the_store_still_shows_as_ours(env: Env) -> None:
    lease = env.leases[0]
    lease._mark_lost("test: a renewal came too late")  # the store still shows our cookie
    ok, detail = leases_held(lambda: env.leases)()
    assert ok is False and "not held" in detail


# --------------------------------------------------------------------------- error codes


def test_403_for_a_caller_outside_allow_from(env: Env) -> None:
    with env.server(allow_from=("10.0.0.0/8", "192.0.2.7", "2001:db8::/32")) as server:
        for method, path in [("GET", "/_/healthcheck"), ("GET", "/_/metrics"), ("POST", "/_/pause"), ("GET", "/nope")]:
            status, _, doc = call_json(server, method, path)
            assert status == 403
            assert doc == {"error": "127.0.0.1 is not allowed to use this API (api.allow_from)", "code": 403}
        assert not env.controls.paused("collector")


def test_an_empty_allow_from_allows_nobody(env: Env) -> None:
    with env.server(allow_from=()) as server:
        assert call_json(server, "GET", "/_/status")[0] == 403


def test_404_for_an_unknown_route(api: ApiServer) -> None:
    for method, path in [("GET", "/"), ("GET", "/_/"), ("GET", "/_/nope"), ("POST", "/_/pause/reader"), ("GET", "/metrics")]:
        status, _, doc = call_json(api, method, path)
        assert status == 404, path
        assert doc["code"] == 404 and doc["error"].startswith("no route")


def test_405_for_a_wrong_method_with_an_allow_header(env: Env, api: ApiServer) -> None:
    cases = [
        ("GET", "/_/pause", "POST"),
        ("GET", "/_/resume/collector", "POST"),
        ("POST", "/_/metrics", "GET, HEAD"),
        ("DELETE", "/_/status", "GET, HEAD"),
        ("PUT", "/_/healthcheck", "GET, HEAD"),
        ("PATCH", "/_/pause/follower", "POST"),
    ]
    for method, path, allow in cases:
        status, headers, doc = call_json(api, method, path)
        assert status == 405, (method, path)
        assert headers["allow"] == allow
        assert doc["code"] == 405 and method in doc["error"]
    assert not env.controls.paused("collector") and not env.controls.paused("follower")


def test_500_when_a_handler_fails(env: Env, api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    env.status.fail = True
    with caplog.at_level(logging.ERROR, logger="changelog.api"):
        status, _, doc = call_json(api, "GET", "/_/status")
    assert status == 500
    assert doc == {"error": "RuntimeError: status broke", "code": 500}
    assert any(r.exc_info for r in caplog.records), "the traceback goes to the log"


def test_head_and_malformed_requests(api: ApiServer) -> None:
    status, headers, body = call(api, "HEAD", "/_/status")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    # Methods the stdlib does not know and garbage request lines get JSON too.
    status, _, doc = call_json(api, "BREW", "/_/status")
    assert status == 501 and doc["code"] == 501
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
    # A one-word request line is HTTP/0.9 to the stdlib: the answer is a bare body, in JSON.
    assert json.loads(raw) == {"error": "Bad request syntax ('NONSENSE')", "code": 400}
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(b"GET /_/status HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n")
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 431")
    assert json.loads(body)["code"] == 431


def test_a_large_request_body_is_refused(api: ApiServer) -> None:
    # Announced, never sent: the server answers from the headers alone.
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(b"POST /_/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 413")
    assert json.loads(body)["code"] == 413
    assert not api.controls.paused("collector")


def test_many_concurrent_requests(env: Env, api: ApiServer) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for path in ("/_/status", "/_/metrics", "/_/healthcheck"):
            status, _, _ = call(api, "GET", path)
            with lock:
                results.append(status)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 120


def test_start_stop_and_port(env: Env) -> None:
    server = env.server()
    assert server.port == 0
    server.start()
    port = server.port
    assert port > 0 and server.url == f"http://127.0.0.1:{port}"
    assert server.thread is not None and server.thread.is_alive()
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # The port is free again, and a busy port is a clear error.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = ApiServer(
            f"127.0.0.1:{busy.getsockname()[1]}",
            ["127.0.0.1"],
            status_provider=dict,
            health_checks={},
            controls=env.controls,
            registry=env.registry,
        )
        with pytest.raises(ConfigError, match="api.listen"):
            taken.start()


def test_ipv6_loopback(env: Env) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with ApiServer(
        "[::1]:0",
        ["::1"],
        status_provider=dict,
        health_checks={},
        controls=env.controls,
        registry=env.registry,
    ) as server:
        assert server.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", server.port, timeout=5)
        conn.request("GET", "/_/status")
        assert conn.getresponse().status == 200
        conn.close()
        assert ApiClient(f"[::1]:{server.port}").status()["controls"]["collector"]["paused"] is False


# --------------------------------------------------------------------------- client


def test_client(env: Env, api: ApiServer) -> None:
    client = ApiClient(f"127.0.0.1:{api.port}")
    assert client.status()["from"] == "serve"
    assert client.pause("collector")["collector"]["paused"] is True
    assert client.resume()["collector"]["paused"] is False
    ok, doc = client.health()
    assert ok and set(doc["components"]) >= {"index", "target"}
    env.checks["source"].up = False
    ok, doc = client.health()
    assert not ok and doc["components"]["source"]["ok"] is False
    assert "rgw_changelog_backlog_entries" in client.metrics()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ApiUnavailable):
        ApiClient(f"127.0.0.1:{free}", timeout=2).status()


# --------------------------------------------------------------------------- pieces


def test_controls_wait_while_paused() -> None:
    controls = Controls()
    stop = threading.Event()
    assert controls.wait_while_paused("collector", stop) is True  # not paused: no wait

    controls.pause("collector")
    went_on = threading.Event()
    outcome: list[bool] = []

    def component() -> None:
        outcome.append(controls.wait_while_paused("collector", stop, poll=0.05))
        went_on.set()

    t = threading.Thread(target=component)
    t.start()
    deadline = time.monotonic() + 5
    while not controls.state()["collector"]["parked"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert controls.state()["collector"]["parked"] is True
    assert not went_on.wait(0.2)
    assert controls.wait_while_paused("follower", stop) is True  # the other one is not paused
    controls.resume("collector")
    assert went_on.wait(5) and outcome == [True]
    t.join(5)
    assert controls.state()["collector"]["parked"] is False  # resumed: no longer parked

    # A stop while paused releases the component with False.
    controls.pause()
    went_on.clear()
    outcome.clear()
    t = threading.Thread(target=component)
    t.start()
    stop.set()
    assert went_on.wait(5) and outcome == [False]
    t.join(5)
    assert controls.paused("collector")

    with pytest.raises(UnknownComponent, match="no component 'reader'"):
        controls.pause("reader")


def test_controls_checkpoint_for_polling_components() -> None:
    controls = Controls()
    assert controls.checkpoint("follower") is False
    controls.pause("follower")
    # Paused, but the follower has not reached a checkpoint yet: the pause has not taken effect.
    assert controls.state()["follower"] == {"paused": True, "since": controls.state()["follower"]["since"], "parked": False}
    assert controls.checkpoint("follower") is True
    assert controls.state()["follower"]["parked"] is True
    assert controls.checkpoint("collector") is False and controls.state()["collector"]["parked"] is False
    controls.resume()
    assert controls.state()["follower"]["parked"] is False
    assert controls.checkpoint("follower") is False


def test_allow_from_matching() -> None:
    nets = parse_allow_from(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32", "::1"])
    assert address_allowed("127.0.0.1", nets)
    assert not address_allowed("127.0.0.2", nets)
    assert address_allowed("10.200.3.4", nets)
    assert not address_allowed("11.0.0.1", nets)
    assert address_allowed("2001:db8::42", nets)
    assert address_allowed("::1", nets)
    assert not address_allowed("2001:db9::1", nets)
    assert address_allowed("::ffff:10.1.2.3", nets)  # IPv4 caller on a dual-stack socket
    assert address_allowed("fe80::1%eth0", parse_allow_from(["fe80::/10"]))
    assert not address_allowed("not-an-address", nets)
    with pytest.raises(ConfigError, match="api.allow_from"):
        parse_allow_from(["10.0.0.0/33"])
    with pytest.raises(ConfigError, match="list"):
        parse_allow_from("127.0.0.1")


def test_listen_parsing() -> None:
    assert parse_listen("127.0.0.1:9480") == ("127.0.0.1", 9480, socket.AF_INET)
    assert parse_listen("[::1]:0")[:2] == ("::1", 0)
    assert parse_listen("[::1]:0")[2] == socket.AF_INET6
    assert parse_listen("::1:9480")[:2] == ("::1", 9480)
    assert parse_listen(":9480")[:2] == ("0.0.0.0", 9480)
    for bad in ("9480", "127.0.0.1:http", "127.0.0.1:70000", "[nope::x]:1"):
        with pytest.raises(ConfigError, match="api.listen"):
            parse_listen(bad)


def test_thread_and_lease_checks(env: Env) -> None:
    done = threading.Event()
    t = threading.Thread(target=done.wait, name="collector")
    assert thread_alive(lambda: None)() == (False, "not started")
    t.start()
    assert thread_alive(lambda: t)() == (True, "collector alive")
    done.set()
    t.join()
    assert thread_alive(lambda: t)() == (False, "collector has stopped")
    assert leases_held(list)() == (False, "no lease held")
    assert leases_held(lambda: env.leases)()[0] is True
