"""The HTTP API of a real ``rgw-changelog serve`` (follower + collector) on the lab: every route
and error code, pause then mutations then resume with nothing lost, and the healthcheck turning
500 while the target radosgw cannot be reached and 200 again after.

The target is reached through a TCP forwarder owned by the test, so "the target is down" is a
real refused connection that the test can end, without touching the logs already written.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab import Lab, s3_client

pytestmark = pytest.mark.ceph

API_HOST = "127.0.0.1"
# Another loopback address: a caller there is outside the default api.allow_from (127.0.0.1, ::1).
OUTSIDER = "127.0.0.2"
LOG_PREFIX = "logs"
REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 90.0
FLOW_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((API_HOST, 0))
        return int(s.getsockname()[1])


class Forwarder:
    """A TCP forwarder ``127.0.0.1:port`` → ``upstream`` that can be stopped (listener and every
    open connection closed: pooled client connections die too) and started again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((API_HOST, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="forwarder", daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    source_bucket: str
    target_bucket: str
    forwarder: Forwarder
    s3: Any

    def request(
        self, method: str, path: str, *, source: str | None = None, timeout: float = 30
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(
            API_HOST, self.port, timeout=timeout, source_address=(source, 0) if source else None
        )
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.request(method, path, **kw)
        assert headers.get("content-type") == "application/json", (status, headers, body[:500])
        return status, headers, json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = self.request("GET", "/_/metrics")
        assert status == 200, body[:500]
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), float("nan"))

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"serve exited with {code}; its log ends:\n{self.log_tail()}"

    def records(self) -> list[dict[str, Any]]:
        """Every record of every committed change-log object, in name order."""
        out: list[dict[str, Any]] = []
        names: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.target_bucket, Prefix=LOG_PREFIX + "/"):
            names.extend(o["Key"] for o in page.get("Contents", []))
        for name in sorted(n for n in names if ".jsonl" in n):
            body = self.s3.get_object(Bucket=self.target_bucket, Key=name)["Body"].read()
            out.extend(json.loads(line) for line in body.splitlines() if line.strip())
        return out

    def log_objects(self) -> list[str]:
        names: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.target_bucket, Prefix=LOG_PREFIX + "/"):
            names.extend(o["Key"] for o in page.get("Contents", []) if ".jsonl" in o["Key"])
        return sorted(names)


def wait_for(what: str, cond: Callable[[], Any], serve: Serve, timeout: float = FLOW_TIMEOUT_S, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        serve.alive()
        try:
            last = cond()
        except (OSError, http.client.HTTPException) as ex:
            last = ex
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r}); serve log:\n{serve.log_tail()}")


def write_config(path: Path, lab: Lab, *, api_port: int, source_bucket: str, target_bucket: str, target_port: int) -> None:
    keyring = f'keyring = "{lab.keyring}"\n' if lab.keyring else ""
    path.write_text(
        f"""
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}pool = "{lab.pool}"
namespace = "api-{uuid.uuid4().hex[:12]}"
shards = 4

[source]
endpoint = "{lab.rgw_endpoint}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "default"
buckets = ["{source_bucket}"]
poll_interval = 0.2

[target]
url = "s3://{target_bucket}/{LOG_PREFIX}/"
endpoint = "http://{API_HOST}:{target_port}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "default"
compression = "none"

[collector]
interval = 0.5
settle = 0.5
lease_ttl = 10

[api]
listen = "{API_HOST}:{api_port}"

[logging]
level = "INFO"
"""
    )


@pytest.fixture(scope="module")
def serve(ceph_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    if not ceph_lab.rgw_endpoint:
        pytest.fail("the API lab tests need radosgw; this lab runs without it")
    s3 = s3_client(ceph_lab)
    tag = uuid.uuid4().hex[:8]
    source_bucket, target_bucket = f"api-src-{tag}", f"api-dst-{tag}"
    s3.create_bucket(Bucket=source_bucket)
    s3.create_bucket(Bucket=target_bucket)
    rgw = ceph_lab.rgw_endpoint.removeprefix("http://").split("/", 1)[0]
    host, _, port = rgw.rpartition(":")
    forwarder = Forwarder((host, int(port)))
    forwarder.start()
    folder = tmp_path_factory.mktemp("api-serve")
    config, log = folder / "rgw-changelog.toml", folder / "serve.log"
    api_port = free_port()
    write_config(config, ceph_lab, api_port=api_port, source_bucket=source_bucket, target_bucket=target_bucket,
                 target_port=forwarder.port)
    cli = Path(sys.executable).with_name("rgw-changelog")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(cli), "-c", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            cwd=folder,
        )
    s = Serve(proc, api_port, config, log, source_bucket, target_bucket, forwarder, s3)
    try:
        wait_for("serve's healthcheck to answer 200", lambda: s.request("GET", "/_/healthcheck")[0] == 200, s,
                 timeout=UP_TIMEOUT_S, every=0.5)
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        forwarder.stop()


def cli_env() -> dict[str, str]:
    """The working tree's code, whatever the venv's install of the package knows about."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def put(serve: Serve, key: str, body: bytes = b"x") -> None:
    serve.s3.put_object(Bucket=serve.source_bucket, Key=key, Body=body)


# --------------------------------------------------------------------------- routes and codes


def test_every_route(serve: Serve) -> None:
    status, _, doc = serve.json("GET", "/_/healthcheck")
    assert status == 200 and doc["ok"] is True
    assert {"index", "source", "target", "follower", "collector", "leases"} <= set(doc["components"]), doc
    assert all(c["ok"] for c in doc["components"].values()), doc

    status, _, doc = serve.json("GET", "/_/status")
    assert status == 200
    assert set(doc["controls"]) == {"collector", "follower"}
    assert doc["index"]["shards"] == 4
    # `rgw-changelog status --json` reads the same document from the running serve.
    cli = Path(sys.executable).with_name("rgw-changelog")
    out = subprocess.run([str(cli), "-c", str(serve.config), "status", "--json"], capture_output=True, timeout=60,
                         check=True, env=cli_env())
    from_cli = json.loads(out.stdout)
    assert set(from_cli) - {"from"} == set(doc) - {"from"}, (sorted(from_cli), sorted(doc))
    assert from_cli["index"]["shards"] == doc["index"]["shards"]

    status, headers, body = serve.request("GET", "/_/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    for name in ("rgw_changelog_mutations_recorded", "rgw_changelog_index_entries", "rgw_changelog_backlog_entries",
                 "rgw_changelog_log_objects_committed", "rgw_changelog_log_bytes_committed",
                 "rgw_changelog_entries_emitted", "rgw_changelog_lease_renewals", "rgw_changelog_lease_losses",
                 "rgw_changelog_paused", "rgw_changelog_target_errors", "rgw_changelog_follower_lag_seconds",
                 "rgw_changelog_drain_entries_per_second"):
        assert name in names, name

    for path, component in (("/_/pause/collector", "collector"), ("/_/pause/follower", "follower")):
        status, _, doc = serve.json("POST", path)
        assert status == 200 and doc["controls"][component]["paused"] is True
    status, _, doc = serve.json("POST", "/_/resume/collector")
    assert status == 200 and doc["controls"]["collector"]["paused"] is False
    assert doc["controls"]["follower"]["paused"] is True
    status, _, doc = serve.json("POST", "/_/resume/follower")
    assert status == 200 and not any(c["paused"] for c in doc["controls"].values())
    status, _, doc = serve.json("POST", "/_/pause")
    assert status == 200 and all(c["paused"] for c in doc["controls"].values())
    status, _, doc = serve.json("POST", "/_/resume")
    assert status == 200 and not any(c["paused"] for c in doc["controls"].values())


def test_error_codes(serve: Serve) -> None:
    status, _, doc = serve.json("GET", "/_/nothing-here")
    assert status == 404 and doc["code"] == 404 and doc["error"]
    status, headers, doc = serve.json("GET", "/_/pause")
    assert status == 405 and headers["allow"] == "POST" and doc["code"] == 405
    status, headers, doc = serve.json("POST", "/_/metrics")
    assert status == 405 and headers["allow"] == "GET, HEAD" and doc["code"] == 405
    status, _, doc = serve.json("DELETE", "/_/status")
    assert status == 405 and doc["code"] == 405
    # From another address than the default allow_from (loopback only): refused, and no effect.
    status, _, doc = serve.json("POST", "/_/pause", source=OUTSIDER)
    assert status == 403 and doc == {"error": f"{OUTSIDER} is not allowed to use this API (api.allow_from)", "code": 403}
    status, _, doc = serve.json("GET", "/_/metrics", source=OUTSIDER)
    assert status == 403
    _, _, doc = serve.json("GET", "/_/status")
    assert not any(c["paused"] for c in doc["controls"].values())


def test_a_second_serve_on_the_same_index_is_a_healthy_standby(serve: Serve, tmp_path: Path) -> None:
    """Another instance on the same index and zone holds no lease while the first one runs: its
    healthcheck is 200 with the leases component saying "standby", not 500."""
    port = free_port()
    text = serve.config.read_text().replace(f'listen = "{API_HOST}:{serve.port}"', f'listen = "{API_HOST}:{port}"')
    assert f":{port}" in text
    config, log = tmp_path / "standby.toml", tmp_path / "standby.log"
    config.write_text(text)
    cli = Path(sys.executable).with_name("rgw-changelog")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(cli), "-c", str(config), "serve"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=cli_env(), cwd=tmp_path)
    standby = Serve(proc, port, config, log, serve.source_bucket, serve.target_bucket, serve.forwarder, serve.s3)
    try:
        doc = wait_for("the standby's healthcheck to answer 200",
                       lambda: (lambda r: r[2] if r[0] == 200 else None)(standby.json("GET", "/_/healthcheck")),
                       standby, timeout=UP_TIMEOUT_S, every=0.5)
        leases = doc["components"]["leases"]
        assert leases["ok"] is True and leases["detail"].startswith("standby: "), leases
        assert "follower held by" in leases["detail"] and "collector held by" in leases["detail"], leases
        assert all(c["ok"] for c in doc["components"].values()), doc
        # The active one is unaffected.
        assert serve.json("GET", "/_/healthcheck")[0] == 200
        assert standby.metric("rgw_changelog_leases_held", lease="collector") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, standby.log_tail()
    serve.alive()


# --------------------------------------------------------------------------- pause / resume


def keys_logged(serve: Serve, keys: set[str], op: str = "write") -> bool:
    got = {r["key"] for r in serve.records() if r["bucket"] == serve.source_bucket and r["op"] == op}
    return keys <= got


def test_pause_then_mutations_then_resume_loses_nothing(serve: Serve) -> None:
    # Flowing: mutations reach the log and the metrics move.
    before = serve.metrics()
    warm = {f"warm/{i}" for i in range(5)}
    for k in sorted(warm):
        put(serve, k)
    wait_for("the warm-up writes in the change log", lambda: keys_logged(serve, warm), serve)
    # The counters move when a commit finishes (after its trim), a moment after the object is
    # visible in the target.
    expected = {"rgw_changelog_mutations_recorded_total": 5, "rgw_changelog_entries_emitted_total": 5,
                "rgw_changelog_log_objects_committed_total": 1, "rgw_changelog_log_bytes_committed_total": 1}

    def lagging() -> list[str]:
        moved = serve.metrics()
        return [name for name, n in expected.items() if moved[(name, ())] < before.get((name, ()), 0) + n]

    wait_for("the counters to count the warm-up writes", lambda: not lagging(), serve, timeout=10)

    # Pause both and wait until both have parked (finished the unit of work in hand).
    status, _, doc = serve.json("POST", "/_/pause")
    assert status == 200
    wait_for("both components parked", lambda: all(c["parked"] for c in serve.json("GET", "/_/status")[2]["controls"].values()), serve)
    assert serve.metric("rgw_changelog_paused", component="collector") == 1
    assert serve.metric("rgw_changelog_paused", component="follower") == 1
    recorded = serve.metric("rgw_changelog_mutations_recorded_total")
    emitted = serve.metric("rgw_changelog_entries_emitted_total")
    objects = serve.log_objects()

    paused = {f"paused/{i:03d}" for i in range(30)}
    for k in sorted(paused):
        put(serve, k)
    serve.s3.delete_object(Bucket=serve.source_bucket, Key="warm/0")
    time.sleep(4)  # many follower polls and collector intervals
    assert serve.metric("rgw_changelog_mutations_recorded_total") == recorded
    assert serve.metric("rgw_changelog_entries_emitted_total") == emitted
    assert serve.log_objects() == objects

    # The follower alone: the index takes the mutations, the collector leaves them there.
    serve.json("POST", "/_/resume/follower")
    wait_for("the follower to record the 31 mutations",
             lambda: serve.metric("rgw_changelog_mutations_recorded_total") >= recorded + 31, serve)
    wait_for("the backlog to show them", lambda: serve.metric("rgw_changelog_backlog_entries") >= 31, serve)
    assert serve.metric("rgw_changelog_entries_emitted_total") == emitted
    assert serve.log_objects() == objects

    # The collector too: everything reaches the log, once.
    serve.json("POST", "/_/resume/collector")
    wait_for("the paused writes in the change log", lambda: keys_logged(serve, paused), serve)
    wait_for("the delete in the change log", lambda: keys_logged(serve, {"warm/0"}, op="delete"), serve)
    wait_for("the backlog to drain", lambda: serve.metric("rgw_changelog_backlog_entries") == 0, serve)
    wait_for("the emitted counter to count them",
             lambda: serve.metric("rgw_changelog_entries_emitted_total") >= emitted + 31, serve, timeout=10)
    records = [r for r in serve.records() if r["bucket"] == serve.source_bucket]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a record was emitted twice"
    assert {r["key"] for r in records if r["op"] == "write"} >= warm | paused


# --------------------------------------------------------------------------- health


def target_errors(serve: Serve) -> float:
    """All target errors so far, whatever their kind."""
    return sum(v for k, v in serve.metrics().items() if k[0] == "rgw_changelog_target_errors_total")


def test_healthcheck_turns_500_while_the_target_is_unreachable_and_200_after(serve: Serve) -> None:
    assert serve.request("GET", "/_/healthcheck")[0] == 200
    errors_before = target_errors(serve)
    serve.forwarder.stop()
    try:
        t0 = time.monotonic()
        doc = wait_for(
            "the healthcheck to report the target down",
            lambda: (lambda r: r[2] if r[0] == 500 else None)(serve.json("GET", "/_/healthcheck", timeout=30)),
            serve,
        )
        assert doc["ok"] is False
        assert doc["components"]["target"]["ok"] is False, doc
        assert doc["components"]["source"]["ok"] is True, doc
        assert doc["components"]["index"]["ok"] is True, doc
        # A dead endpoint cannot hold the route past the per-check limit (5 s; the client waits
        # 30). How long the answers took is printed, never asserted.
        t1 = time.monotonic()
        status, _, _ = serve.json("GET", "/_/healthcheck", timeout=30)
        assert status == 500
        print(f"\n[target down: noticed after {t1 - t0:.1f}s; a healthcheck then took {time.monotonic() - t1:.2f}s]")
        # A write during the outage: the collector tries to ship it, and the failures show in
        # the target errors by kind.
        put(serve, "during-outage")
        wait_for("the outage in rgw_changelog_target_errors_total", lambda: target_errors(serve) > errors_before, serve)
    finally:
        serve.forwarder.start()
    wait_for("the healthcheck to be 200 again", lambda: serve.request("GET", "/_/healthcheck")[0] == 200, serve)
    # And the pipeline recovered: the write made during the outage reaches the log.
    wait_for("the outage write in the change log", lambda: keys_logged(serve, {"during-outage"}), serve)
