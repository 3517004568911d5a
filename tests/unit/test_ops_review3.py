"""Review of the operator surface (R3): ``serve``'s HTTP API and the CLI verbs that talk to it
(``flush``, ``status``, ``pause``), as an operator meets them. ``serve`` runs as a real process
where its own wiring matters; the CLI always runs as a real process against a real ``ApiServer``
on a free port."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from changelog.api import ApiServer, Controls
from changelog.config import CollectorConfig, load_config, make_collector, open_index, open_target
from changelog.errors import TransientError
from changelog.pipeline.collector_streams import StreamedCollector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.loop import Clocks
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.targets import DirectoryTarget, Target
from changelog.status import pass_doc

# Longer than the 1 s the CLI gives a serve to show it is there (cli.base.API_TIMEOUT_S).
SLOW_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int, extra: str = "") -> Path:
    toml = tmp / "rgw-changelog.toml"
    toml.write_text(
        f'[index]\npath = "{tmp / "index.db"}"\nshards = 4\n'
        f'[target]\nurl = "file://{tmp}/logs/"\n'
        "[collector]\ninterval = 0.2\nsettle = 0\nlease_ttl = 5\n"
        f'[api]\nlisten = "127.0.0.1:{port}"\n' + extra
    )
    return toml


def cli(toml: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "changelog.cli", "-c", str(toml), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(
        f"cli {' '.join(args)}: rc {r.returncode} in {time.monotonic() - t0:.2f} s; stderr {r.stderr.strip()!r}"
    )
    return r


def record(index: ChangeIndex, n: int, *, start: int = 0) -> None:
    index.record_many(
        [
            Mutation(bucket="b", key=f"k/{i}", op=Op.WRITE, mtime_ns=time.time_ns(), source="r3",
                     position=f"{i:08d}", seq=f"{i:08d}", size=1, etag="e")
            for i in range(start, start + n)
        ]
    )  # fmt: skip


def request(port: int, method: str, path: str, *, timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        ctype = headers.get("content-type", "")
        return resp.status, headers, json.loads(body) if ctype == "application/json" else body.decode()
    finally:
        conn.close()


def api_server(port: int, **kw: Any) -> ApiServer:
    args: dict[str, Any] = {
        "status_provider": lambda: {"index": {}},
        "health_checks": {},
        "controls": Controls(("collector",)),
        "registry": CollectorRegistry(),
    }
    args.update(kw)
    allow = args.pop("allow_from", ["127.0.0.1"])
    return ApiServer(f"127.0.0.1:{port}", allow, **args)


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    """A real ``rgw-changelog serve`` on the embedded defaults (sqlite index, directory target)."""
    port = free_port()
    toml = write_config(tmp_path, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "changelog.cli", "-c", str(toml), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/_/healthcheck", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.1)
        yield toml, port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- the CLI's patience


def test_cli_flush_waits_for_a_pass_longer_than_the_presence_probe(tmp_path: Path) -> None:
    """`flush` with a running serve asks it for a pass and prints its result. A pass that takes
    longer than the CLI's 1 s presence probe (a backlog of a few hundred thousand entries takes
    seconds) was reported as "no rgw-changelog serve at ...: timed out", exit 1, although the
    serve ran it to its end."""
    port = free_port()
    toml = write_config(tmp_path, port)
    cfg = load_config(toml)
    index = open_index(cfg)
    record(index, 9)
    collector = make_collector(cfg, index, open_target(cfg))
    passes: list[float] = []

    def slow_flush() -> dict[str, object]:
        t0 = time.monotonic()
        time.sleep(SLOW_S)  # a pass over a big backlog
        doc = pass_doc(collector.flush())
        passes.append(time.monotonic() - t0)
        return doc

    try:
        with api_server(port, flush=slow_flush):
            r = cli(toml, "flush", "--json")
    finally:
        collector.step_down()
        index.store.close()
    print(f"flush pass took {passes}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["entries"] == 9
    assert len(passes) == 1  # the serve ran it, not the CLI
    assert "no rgw-changelog serve" not in r.stderr


def test_cli_status_keeps_a_slow_serves_answer(tmp_path: Path) -> None:
    """`status` "asks a running serve first". A serve whose status took over 1 s (it pages the
    index: about 1.3 s for 400,000 entries on sqlite) was taken for absent, and the CLI read the
    stores directly: no health, no live counters, no pause switches."""
    port = free_port()
    toml = write_config(tmp_path, port)
    open_index(load_config(toml)).store.close()

    def slow_status() -> dict[str, object]:
        time.sleep(SLOW_S)
        return {"index": {"entries": 0}, "health": {"ok": True, "reasons": []}, "marker": "from the serve"}

    with api_server(port, status_provider=slow_status):
        r = cli(toml, "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc.get("marker") == "from the serve", doc.get("from")


def test_cli_refused_by_allow_from_says_so_instead_of_no_serve(tmp_path: Path) -> None:
    """A serve whose `[api] allow_from` leaves out loopback answers the local CLI 403. `pause`
    said "no serve answers on [api] listen: nothing to pause" and `status` silently read the
    stores directly, as it does with no serve at all; a 401 is reported as an error, and so
    should a 403 be."""
    port = free_port()
    toml = write_config(tmp_path, port)
    open_index(load_config(toml)).store.close()
    with api_server(port, allow_from=["192.0.2.1"]):
        paused = cli(toml, "pause", "collector")
        status = cli(toml, "status", "--json")
    assert paused.returncode == 1
    assert "no serve answers" not in paused.stderr
    assert "403" in paused.stderr and "allow_from" in paused.stderr
    assert len(paused.stderr.strip().splitlines()) == 1
    assert status.returncode == 1, status.stdout[:300]
    assert "403" in status.stderr and "--direct" in status.stderr


# --------------------------------------------------------------------------- serve, for real


def test_flush_of_a_paused_collector_answers_at_once_and_serve_stops_cleanly(
    serve_proc: tuple[Path, int, subprocess.Popen[str]],
) -> None:
    """`POST /_/flush` while the collector is paused held the request for FLUSH_TIMEOUT (300 s)
    waiting for a pass that cannot come, and `rgw-changelog flush` said the serve was not there.
    It answers at once that the collector is paused; after `resume` a flush commits what is
    waiting, and SIGTERM ends the serve with exit 0 and an empty index."""
    toml, port, proc = serve_proc
    cfg = load_config(toml)
    index = open_index(cfg)
    try:
        assert cli(toml, "pause", "collector").returncode == 0
        record(index, 25)
        t0 = time.monotonic()
        try:
            status, _, doc = request(port, "POST", "/_/flush", timeout=30)
        except TimeoutError:
            pytest.fail("POST /_/flush on a paused collector did not answer within 30 s")
        print(f"paused flush answered {status} in {time.monotonic() - t0:.2f} s: {doc}")
        assert status in (409, 500) and "paused" in doc["error"], doc
        r = cli(toml, "flush")
        assert r.returncode == 1 and "paused" in r.stderr and "no rgw-changelog serve" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert cli(toml, "resume", "collector").returncode == 0
        r = cli(toml, "flush", "--json")
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert sum(index.stats(n).entries for n in range(index.shards)) == 0
        emitted = sum(len(p.read_text().splitlines()) for p in (toml.parent / "logs").rglob("*.jsonl"))
        assert emitted == 25
    finally:
        index.store.close()


# --------------------------------------------------------------------------- HTTP edges


def test_options_and_trace_are_a_json_405_or_404(tmp_path: Path) -> None:
    """README: "405 for a wrong method", errors as JSON. OPTIONS and TRACE, methods HTTP
    defines, came back as 501 "Unsupported method" (501 stays for a method HTTP does not define,
    as RFC 9110 says)."""
    port = free_port()
    with api_server(port):
        for method in ("OPTIONS", "TRACE"):
            status, headers, doc = request(port, method, "/_/status")
            assert status == 405, (method, status, doc)
            assert headers["content-type"] == "application/json" and doc["code"] == 405
            assert headers["allow"] == "GET, HEAD"
            status, _, doc = request(port, method, "/_/nope")
            assert status == 404 and doc["code"] == 404


# --------------------------------------------------------------------------- metrics


class _Refusing(DirectoryTarget):
    """A directory whose writes fail with a transient error while ``down`` (a full disk, an S3
    503): the collector's passes fail and count target errors."""

    down = True

    def put(self, name: str, data: bytes, *, metadata: Any = None) -> None:
        if self.down and not name.endswith("_watermark.json"):
            raise TransientError(f"PUT {name}: 503 SlowDown (injected)")
        super().put(name, data, metadata=metadata)


def test_partitioned_target_errors_counter_survives_a_stream_step_down(tmp_path: Path) -> None:
    """``rgw_changelog_target_errors_total{kind}`` is a counter: with ``[scale] partitioned``,
    a stream dropped by this process (lost lease, another collector seen, stop) took its
    errors with it, and the counter went back down (Prometheus reads that as a reset)."""
    from changelog.pipeline.backends.sqlite import SqliteStore

    index = ChangeIndex(SqliteStore(str(tmp_path / "i.db")), shards=4, prefix="cl")
    target: Target = _Refusing(tmp_path / "logs")
    config = CollectorConfig.unchecked(settle=0.0, lease_ttl=30.0, interval=0.02, retries=0)
    sc = StreamedCollector(index, target, config, count=2, clocks=Clocks())
    record(index, 40)
    try:
        sc.step(threading.Event())
        before = dict(sc.stats()["target_errors"])  # type: ignore[call-overload]
        assert sum(before.values()) > 0, sc.stats()
        sc.step_down()
        after = dict(sc.stats()["target_errors"])  # type: ignore[call-overload]
        print(f"target_errors before step-down {before}, after {after}")
        assert all(after.get(kind, 0) >= n for kind, n in before.items())
    finally:
        sc.step_down()
        index.store.close()


# --------------------------------------------------------------------------- status of a hung target


class _Hung(DirectoryTarget):
    """A target that does not answer (a SIGSTOPped radosgw: the S3 client's read timeouts and
    retries took 240 s on the Pacific lab) until ``release`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def get(self, name: str) -> bytes:
        self.release.wait(60)
        return super().get(name)

    def list(self, *args: Any, **kw: Any) -> Any:
        self.release.wait(60)
        return super().list(*args, **kw)


def test_status_answers_while_the_target_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`status` (and `GET /_/status`) waited for the target as long as the S3 client did: with
    radosgw frozen, 240 s on the Pacific lab, when the operator needs it most. The target's part
    is bounded and says why it is missing; the rest is there."""
    from changelog import status as status_mod

    monkeypatch.setattr(status_mod, "TARGET_STATUS_TIMEOUT_S", 1.0)
    toml = write_config(tmp_path, free_port())
    cfg = load_config(toml)
    index = open_index(cfg)
    record(index, 3)
    target = _Hung(tmp_path / "logs")
    t0 = time.monotonic()
    try:
        doc = status_mod.collect_status(cfg, index, target)
    finally:
        target.release.set()
        index.store.close()
    print(f"status with a hung target took {time.monotonic() - t0:.2f} s: {doc['target']}")
    assert doc["index"]["entries"] == 3  # type: ignore[index]
    assert "no answer within 1 s" in str(doc["target"]["error"])  # type: ignore[index]


# --------------------------------------------------------------------------- request bodies


def test_a_page_of_failed_entries_can_be_posted_back_for_retry(tmp_path: Path) -> None:
    """`GET /_/crr/failed` answers 1000 entries a page (``limit`` up to 10,000), and
    `POST /_/crr/failed` takes those items back to retry them, Backbeat's way. The API read
    bodies up to 64 KiB only: one default page of bare items with 40-character keys is about
    120 KB, and the retry was refused with 413."""
    from changelog.consumers.routes import Request

    got: list[int] = []

    def crr(req: Request) -> dict[str, object]:
        assert isinstance(req.body, list)
        got.append(len(req.body))
        return {"requested": len(req.body)}

    items = [
        {
            "Bucket": "photos",
            "Key": f"2026/12/07/camera-{n:06d}/IMG_{n:08d}.jpg",
            "VersionId": "null",
            "StorageClass": "east",
        }
        for n in range(1000)
    ]
    body = json.dumps(items).encode()
    print(f"a page of 1000 bare items: {len(body)} bytes")
    port = free_port()
    server = api_server(port)
    server.mount_prefix("/_/crr", crr)
    with server:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/_/crr/failed", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, answer = resp.status, json.loads(resp.read())
        finally:
            conn.close()
    assert (status, answer) == (200, {"requested": 1000}), answer
    assert got == [1000]
