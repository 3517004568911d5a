"""Replication's operator surface over HTTP (``/_/crr``, ``/_/metrics/crr``), its Prometheus
series and its wiring into ``serve``, on real components: a moto server is the source zone and
both sites (the sites' buckets are other buckets of it, through ``bucket_map``), the change logs
a directory written by the backup tests' ``Zone``, the index sqlite, the API a real server on
127.0.0.1:0 called with ``ApiClient``. Site ``west`` maps ``src`` to a bucket that does not exist
until a test creates it: its records land in the failed list."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import generate_latest

from changelog.api import MAX_BODY, ApiClient, ApiServer, Controls
from changelog.cli.replicate import drain_site
from changelog.config import Config, load_config, open_index
from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.replication.api import CrrRoutes
from changelog.consumers.replication.sites import Replication
from changelog.consumers.replication.state import SiteState, entry_id
from changelog.consumers.routes import Request, RouteError
from changelog.metrics import ChangelogMetrics, make_registry
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone

KEYS = ["a.txt", "dir/b c.txt", "ünï/cødé"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    # moto's backends are process-wide: every test starts from an empty zone.
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    yield boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")


def write_config(tmp_path: Path, moto_url: str, *, west_endpoint: str | None = None, extra: str = "") -> Path:
    p = tmp_path / "rgw-changelog.toml"
    p.write_text(
        f"""
[index]
backend = "sqlite"
path = "{tmp_path / "index.db"}"
shards = 2

[target]
url = "file://{tmp_path / "logs"}/"

[source]
endpoint = "{moto_url}"
access_key = "testing"
secret_key = "testing"

[api]
listen = "127.0.0.1:{free_port()}"

[replication]
interval = 0.05
workers = 2
lease_ttl = 5

[[replication.sites]]
name = "east"
endpoint = "{moto_url}"
access_key = "testing"
secret_key = "testing"
buckets = ["src"]
bucket_map = {{ src = "dst-east" }}

[[replication.sites]]
name = "west"
endpoint = "{west_endpoint or moto_url}"
access_key = "testing"
secret_key = "testing"
buckets = ["src"]
bucket_map = {{ src = "dst-west" }}
{extra}
"""
    )
    return p


@dataclass
class Env:
    cfg: Config
    index: ChangeIndex
    zone: Zone
    s3: Any
    path: Path


@pytest.fixture
def env(tmp_path: Path, moto: Any, moto_url: str) -> Iterator[Env]:
    path = write_config(tmp_path, moto_url)
    cfg = load_config(str(path))
    index = open_index(cfg)
    zone = Zone(moto, DirectoryTarget(tmp_path / "logs", fsync=False))
    zone.create_bucket("src")
    moto.create_bucket(Bucket="dst-east")  # dst-west is missing: west fails for good
    yield Env(cfg, index, zone, moto, path)
    index.store.close()


def write_objects(env: Env, keys: list[str] = KEYS) -> int:
    """PUT ``keys`` into src and commit their records; returns their bytes."""
    for n, key in enumerate(keys):
        env.zone.put("src", key, b"x" * (10 + n))
    env.zone.commit()
    return sum(10 + n for n in range(len(keys)))


@pytest.fixture
def repl(env: Env) -> Iterator[Replication]:
    r = Replication(env.cfg, env.index)
    yield r
    r.close()


def drain(repl: Replication, *sites: str) -> None:
    for name in sites or tuple(repl.sites):
        runner = ConsumerRunner(repl.index, repl.site(name), lease_ttl=5)
        result = drain_site(runner, repl.site(name), stop=threading.Event())
        assert result.reached, result


@pytest.fixture
def api(repl: Replication) -> Iterator[tuple[ApiServer, ApiClient, CrrRoutes]]:
    routes = CrrRoutes(repl)
    server = ApiServer(
        "127.0.0.1:0",
        ["127.0.0.1"],
        status_provider=dict,
        health_checks={},
        controls=Controls(),
        registry=make_registry(ChangelogMetrics(replication=routes.prometheus), process=False),
    )
    server.mount_prefix("/_/crr", routes.crr)
    server.mount_prefix("/_/metrics/crr", routes.metrics)
    with server:
        yield server, ApiClient(f"127.0.0.1:{server.port}"), routes


def raw(server: ApiServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


# --------------------------------------------------------------------------- the generic prefix route


def test_a_prefix_route_gets_the_rest_of_the_path_the_query_and_the_json_body() -> None:
    seen: list[Request] = []

    def handler(req: Request) -> dict[str, object]:
        seen.append(req)
        if req.path == "missing":
            raise RouteError(404, "no such thing")
        return {"path": req.path, "method": req.method}

    server = ApiServer("127.0.0.1:0", ["127.0.0.1"], status_provider=dict, health_checks={}, controls=Controls(),
                       registry=make_registry(ChangelogMetrics(), process=False))  # fmt: skip
    server.mount_prefix("/_/things", handler)
    with server:
        client = ApiClient(f"127.0.0.1:{server.port}")
        status, doc = client.request("POST", "/_/things/a%2Fb/c/?x=1&y=&x=2", body={"hours": 3})
        assert status == 200 and doc == {"path": "a%2Fb/c/", "method": "POST"}
        assert seen[-1].query == {"x": "2", "y": ""} and seen[-1].body == {"hours": 3}
        assert seen[-1].segments() == ["a%2Fb", "c", ""]
        assert client.request("GET", "/_/things")[1] == {"path": "", "method": "GET"}
        assert raw(server, "HEAD", "/_/things/x")[0] == 200 and seen[-1].method == "GET"
        assert client.request("GET", "/_/things/missing") == (404, {"error": "no such thing", "code": 404})
        # Not under the prefix (a longer name): the ordinary 404; exact routes still win.
        assert client.request("GET", "/_/thingsx")[0] == 404
        assert client.request("GET", "/_/controls")[0] == 200
        status, body = raw(server, "POST", "/_/things/x", b"{not json", {"Content-Type": "application/json"})
        assert status == 400 and b"not JSON" in body
        assert len([r for r in seen if r.path == "x" and r.method == "POST"]) == 0, "a bad body never reaches the handler"
        # Over MAX_BODY by its Content-Length: refused before a byte of it is read.
        status, _ = raw(server, "POST", "/_/things/x", b"[1]", {"Content-Length": str(MAX_BODY + 1)})
        assert status == 413


# --------------------------------------------------------------------------- /_/crr


def test_site_status_object_status_and_unknown_sites(env: Env, repl: Replication, api: Any) -> None:
    _, client, _ = api
    nbytes = write_objects(env)
    status, doc = client.request("GET", "/_/crr/status/east")
    assert status == 200
    assert doc["site"] == "east" and doc["state"] == "enabled" and doc["paused"] is False
    assert doc["backlog"]["records"] == len(KEYS) and doc["backlog"]["bytes"] == nbytes
    assert doc["checkpoint"]["after"] is None and doc["failed_entries"] == 0
    assert (client.request("GET", "/_/crr/status/src/a.txt"))[1]["sites"] == {"east": "PENDING", "west": "PENDING"}
    drain(repl)
    status, doc = client.request("GET", "/_/crr/status/src/dir/b%20c.txt")
    assert status == 200
    assert doc["bucket"] == "src" and doc["key"] == "dir/b c.txt"
    assert doc["sites"] == {"east": "COMPLETED", "west": "FAILED"} and doc["status"] == "FAILED"
    doc = client.request("GET", "/_/crr/status/src/" + urllib.parse.quote("ünï/cødé"))[1]
    assert doc["key"] == "ünï/cødé" and doc["sites"]["east"] == "COMPLETED"
    assert client.request("GET", "/_/crr/status/east")[1]["backlog"]["records"] == 0
    assert set(client.request("GET", "/_/crr/status")[1]["sites"]) == {"east", "west"}
    for path in ("/_/crr/status/north", "/_/metrics/crr/north/backlog", "/_/crr/failed?site=north"):
        status, doc = client.request("GET", path)
        assert status == 404 and doc["code"] == 404 and "north" in doc["error"], path
    assert client.request("POST", "/_/crr/pause/north")[0] == 404
    assert client.request("GET", "/_/crr/nothing")[0] == 404
    assert client.request("DELETE", "/_/crr/failed")[0] == 405


def test_pause_resume_and_a_scheduled_resume_go_through_the_store(env: Env, api: Any) -> None:
    _, client, _ = api
    east, west = SiteState(env.index, "east"), SiteState(env.index, "west")
    status, doc = client.request("POST", "/_/crr/pause/east")
    assert status == 200 and doc["sites"]["east"]["paused"] is True
    assert east.paused() and not west.paused()
    assert client.request("GET", "/_/crr/status/east")[1]["state"] == "disabled"
    t0 = time.time()
    doc = client.request("POST", "/_/crr/resume/east/schedule", body={"hours": 2})[1]
    assert doc["sites"]["east"]["resume_at"] is not None
    pause = east.pause_doc()
    assert pause is not None and pause["resume_at"] is not None
    assert t0 + 2 * 3600 - 5 < pause["resume_at"] < time.time() + 2 * 3600 + 5
    assert east.paused() and not east.paused(now=t0 + 2 * 3600 + 10)
    # No body: Backbeat's default of 6 h.
    client.request("POST", "/_/crr/resume/east/schedule")
    pause = east.pause_doc()
    assert pause is not None and pause["resume_at"] is not None and pause["resume_at"] > time.time() + 5.9 * 3600
    assert client.request("POST", "/_/crr/resume/east/schedule", body={"hours": -1})[0] == 400
    assert client.request("POST", "/_/crr/resume/east")[1]["sites"]["east"]["paused"] is False
    assert not east.paused()
    doc = client.request("POST", "/_/crr/pause")[1]
    assert set(doc["sites"]) == {"east", "west"} and east.paused() and west.paused()
    client.request("POST", "/_/crr/resume")
    assert not east.paused() and not west.paused()
    assert client.request("GET", "/_/crr/pause/east")[0] == 405
    assert client.request("POST", "/_/crr/pause/east/later")[0] == 404


def test_failed_list_pages_with_a_marker_and_post_retries_what_was_asked(env: Env, repl: Replication, api: Any) -> None:
    _, client, _ = api
    keys = [f"k{n}" for n in range(5)]
    write_objects(env, keys)
    drain(repl)
    pages, marker = [], None
    while True:
        q = "/_/crr/failed?site=west&limit=2" + (f"&marker={marker}" if marker else "")
        status, page = client.request("GET", q)
        assert status == 200
        pages.append(page)
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
    assert [len(p["Versions"]) for p in pages] == [2, 2, 1]
    versions = [v for p in pages for v in p["Versions"]]
    assert sorted(v["Key"] for v in versions) == keys
    v = versions[0]
    assert v["Bucket"] == "src" and v["StorageClass"] == "west" and v["VersionId"] == "null"
    assert v["Size"] in (10, 11, 12, 13, 14) and v["LastModified"] and "dst-west" in v["Error"]
    # Every site (east has none), and the same marker format.
    assert client.request("GET", "/_/crr/failed")[1]["Versions"] == versions
    assert client.request("GET", "/_/crr/failed?limit=0")[0] == 400
    assert client.request("GET", "/_/crr/failed?marker=nosite:abc")[0] == 400

    items = [{"Bucket": x["Bucket"], "Key": x["Key"], "VersionId": x["VersionId"], "StorageClass": "west"} for x in versions[:2]]
    status, doc = client.request("POST", "/_/crr/failed", body=items)
    assert (status, doc) == (200, {"requested": 2})
    west = SiteState(env.index, "west")
    assert sorted(west.retry_requests()) == sorted(entry_id("src", x["Key"], None) for x in versions[:2])
    assert client.request("POST", "/_/crr/failed", body=[{**items[0], "StorageClass": "north"}])[0] == 404
    assert client.request("POST", "/_/crr/failed", body=[{"Key": "k"}])[0] == 400
    assert client.request("POST", "/_/crr/failed", body="everything")[0] == 400
    assert client.request("POST", "/_/crr/failed", body={})[1] == {"requested": 5}
    # The site is fixed; its replicator takes the requests at its next step and they complete.
    env.s3.create_bucket(Bucket="dst-west")
    drain(repl, "west")
    runner = ConsumerRunner(env.index, repl.site("west"), lease_ttl=5)
    assert runner.acquire()
    runner.step(threading.Event())
    runner.step_down()
    assert west.count_failed() == 0 and west.retry_requests() == []
    assert client.request("GET", "/_/crr/status/src/k3")[1]["sites"]["west"] == "COMPLETED"


# --------------------------------------------------------------------------- metrics


def test_metrics_routes_and_prometheus_series_per_site(env: Env, repl: Replication, api: Any) -> None:
    server, client, _ = api
    nbytes = write_objects(env)
    doc = client.request("GET", "/_/metrics/crr/east/backlog")[1]
    assert doc["backlog"]["results"] == {"count": len(KEYS), "size": nbytes} and doc["backlog"]["description"]
    rpo = client.request("GET", "/_/metrics/crr/east/all")[1]["rpo"]["results"]["seconds"]
    assert rpo > 0
    drain(repl)
    doc = client.request("GET", "/_/metrics/crr/east/all")[1]
    assert set(doc) == {"backlog", "completions", "failures", "throughput", "rpo"}
    assert doc["backlog"]["results"] == {"count": 0, "size": 0} and doc["rpo"]["results"] == {"seconds": 0.0}
    # This API's routes read each site's own counters; the drains above used their own runners.
    assert doc["completions"]["results"] == {"count": len(KEYS), "size": nbytes}
    assert doc["throughput"]["results"]["count"] == pytest.approx(len(KEYS) / 60.0)
    west = client.request("GET", "/_/metrics/crr/west/failures")[1]
    assert west == {"failures": {"description": west["failures"]["description"], "results": {"count": len(KEYS), "size": nbytes}}}
    assert client.request("GET", "/_/metrics/crr/east/latency")[0] == 404
    SiteState(env.index, "west").pause()
    text = generate_latest(server.registry).decode()
    for line in (
        'rgw_changelog_replication_backlog_records{site="east"} 0.0',
        'rgw_changelog_replication_backlog_bytes{site="west"} 0.0',
        'rgw_changelog_replication_rpo_seconds{site="east"} 0.0',
        f'rgw_changelog_replication_completed_total{{site="east"}} {float(len(KEYS))}',
        f'rgw_changelog_replication_completed_bytes_total{{site="east"}} {float(nbytes)}',
        f'rgw_changelog_replication_failed_total{{site="west"}} {float(len(KEYS))}',
        f'rgw_changelog_replication_failed_bytes_total{{site="west"}} {float(nbytes)}',
        'rgw_changelog_replication_skipped_total{site="east"} 0.0',
        f'rgw_changelog_replication_failed_entries{{site="west"}} {float(len(KEYS))}',
        'rgw_changelog_replication_paused{site="west"} 1.0',
        'rgw_changelog_replication_paused{site="east"} 0.0',
    ):
        assert line in text, line


# --------------------------------------------------------------------------- serve


def test_serve_runs_a_replicator_per_site_and_mounts_the_routes(env: Env) -> None:
    from changelog.service import Service, build_pipeline, start_api, status_doc

    write_objects(env)
    pipeline = build_pipeline(env.cfg)
    try:
        assert pipeline.replication is not None
        runners = pipeline.replication_runners()
        assert sorted(runners) == ["east", "west"]
        assert runners["east"].lease.ttl == 5
        assert {"replication-east", "replication-west"} <= set(pipeline.controls.components)
        assert {"replication-east", "replication-west"} <= set(pipeline.components())
        # The generic pause switch of serve parks a site's runner too.
        pipeline.controls.pause("replication-east")
        assert runners["east"].paused is not None and runners["east"].paused()
        pipeline.controls.resume("replication-east")
        service = Service(pipeline.components())
        api = start_api(env.cfg, pipeline, service)
        try:
            client = ApiClient(f"127.0.0.1:{api.port}")
            doc: Any = client.get("/_/crr/status/east")
            assert doc["backlog"]["records"] == len(KEYS)
            assert client.request("POST", "/_/crr/pause/west")[0] == 200
            assert SiteState(env.index, "west").paused()
            assert 'rgw_changelog_replication_backlog_records{site="east"} 3.0' in client.metrics()
        finally:
            api.stop()
        sites = status_doc(env.cfg, pipeline)["replication"]
        assert isinstance(sites, dict) and sites["west"]["paused"] is True
        assert sites["east"]["backlog"]["records"] == len(KEYS) and "live" in sites["east"]
    finally:
        pipeline.close()


def test_serve_without_sites_mounts_no_crr_routes(tmp_path: Path) -> None:
    from changelog.service import Service, build_pipeline, start_api

    p = tmp_path / "c.toml"
    p.write_text(f'[index]\nbackend = "sqlite"\npath = "{tmp_path / "i.db"}"\n[target]\nurl = "file://{tmp_path}/logs/"\n'
                 f'[api]\nlisten = "127.0.0.1:{free_port()}"\n')  # fmt: skip
    cfg = load_config(str(p))
    pipeline = build_pipeline(cfg)
    try:
        assert pipeline.replication is None and pipeline.replication_runners() == {}
        api = start_api(cfg, pipeline, Service(pipeline.components()))
        try:
            assert ApiClient(f"127.0.0.1:{api.port}").request("GET", "/_/crr/status/east")[0] == 404
        finally:
            api.stop()
    finally:
        pipeline.close()
