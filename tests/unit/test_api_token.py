"""The API's bearer tokens (``[api] token`` for every route but GET, ``read_token`` for GET) on a
real server bound to 127.0.0.1:0, through raw HTTP, through ``ApiClient`` and through the CLI's
``pause``, ``resume``, ``flush`` and ``status``; and the log line naming the address really bound.

The comparison is ``hmac.compare_digest`` on bytes (``api_access.BearerTokens``): constant time
is not something a unit test can measure reliably, so what is tested is the behaviour that
goes with it: every near miss (a prefix, an extension, same length one character off, another
scheme, an empty value) is refused, and the token never reaches the log."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry

from changelog.api import ApiClient, ApiServer, ApiUnauthorized, Controls, probe
from changelog.cli import cli
from changelog.errors import ConfigError

TOKEN = "w-Tok3n.for/POST_routes"
READ = "r-t0ken-for-GET"


class Flushes:
    """The flush route's provider: counts the calls, answers a pass document."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Mapping[str, object]:
        self.calls += 1
        return {"entries": 3, "objects": ["2026/one.jsonl"], "cutoff": "c", "watermark": "w"}


def make_server(
    *, token: str | None = TOKEN, read_token: str | None = None, listen: str = "127.0.0.1:0", flush: Flushes | None = None
) -> ApiServer:
    return ApiServer(
        listen,
        ("127.0.0.1", "::1"),
        status_provider=lambda: {"index": {"backend": "sqlite"}, "shards": []},
        health_checks={"index": probe(lambda: None)},
        controls=Controls(),
        registry=CollectorRegistry(),
        flush=flush or Flushes(),
        token=token,
        read_token=read_token,
    )


@pytest.fixture
def serve() -> Iterator[Callable[..., ApiServer]]:
    started: list[ApiServer] = []

    def start(**kw: object) -> ApiServer:
        server = make_server(**kw)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def call(server: ApiServer, method: str, path: str, auth: str | bytes | None = None) -> tuple[int, dict[str, str], object]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, path)
        if auth is not None:
            conn.putheader("Authorization", auth)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body) if body else None
    finally:
        conn.close()


def test_post_routes_need_the_token(serve: Callable[..., ApiServer]) -> None:
    api = serve()
    status, headers, doc = call(api, "POST", "/_/pause")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert isinstance(doc, dict) and doc["code"] == 401 and "api.token" in str(doc["error"])
    assert not api.controls.paused("collector")  # refused means not done

    status, _, doc = call(api, "POST", "/_/pause/collector", f"Bearer {TOKEN}")
    assert status == 200, doc
    assert api.controls.paused("collector") and not api.controls.paused("follower")
    # The scheme is case-insensitive (RFC 7235), the flush route is a POST route too.
    assert call(api, "POST", "/_/resume", f"bearer {TOKEN}")[0] == 200
    assert not api.controls.paused("collector")
    assert call(api, "POST", "/_/flush")[0] == 401
    assert call(api, "POST", "/_/flush", f"Bearer {TOKEN}")[0] == 200


@pytest.mark.parametrize(
    "auth",
    [
        "Bearer wrong",
        f"Bearer {TOKEN[:-1]}",  # a prefix
        f"Bearer {TOKEN}x",  # an extension
        f"Bearer {TOKEN[:-1]}X",  # same length, last character off
        f"Bearer X{TOKEN[1:]}",  # same length, first character off
        f"Basic {TOKEN}",  # another scheme
        TOKEN,  # no scheme
        "Bearer ",
        "Bearer",
        "",
    ],
)
def test_every_near_miss_is_401(serve: Callable[..., ApiServer], auth: str) -> None:
    api = serve()
    status, headers, _ = call(api, "POST", "/_/pause", auth)
    assert status == 401
    assert "bearer" in headers["www-authenticate"].lower()
    assert not api.controls.paused("follower")


def test_get_routes_are_open_without_a_read_token(serve: Callable[..., ApiServer]) -> None:
    api = serve()
    for path in ("/_/status", "/_/controls", "/_/healthcheck", "/_/metrics"):
        status, _, _ = call(api, "HEAD" if path == "/_/metrics" else "GET", path)
        assert status == 200, path


def test_get_routes_follow_the_read_token(serve: Callable[..., ApiServer]) -> None:
    api = serve(read_token=READ)
    assert call(api, "GET", "/_/status")[0] == 401
    assert call(api, "GET", "/_/status", "Bearer nope")[0] == 401
    assert call(api, "GET", "/_/status", f"Bearer {READ}")[0] == 200
    assert call(api, "GET", "/_/healthcheck", f"Bearer {TOKEN}")[0] == 200  # the write token reads too
    # The read token does not write.
    assert call(api, "POST", "/_/pause", f"Bearer {READ}")[0] == 401
    # A read token alone (no write token): POST routes are open, GET routes are not.
    ro = serve(token=None, read_token=READ)
    assert call(ro, "POST", "/_/pause")[0] == 200
    assert call(ro, "GET", "/_/controls")[0] == 401


def test_403_for_a_caller_outside_allow_from_comes_first(serve: Callable[..., ApiServer]) -> None:
    api = make_server()
    # Straight to the dispatcher: the peer address cannot be faked over a real socket.
    resp = api.handle("POST", "/_/pause", "192.0.2.7", lambda: True, authorization=f"Bearer {TOKEN}")
    assert resp.status == 403
    resp = api.handle("POST", "/_/pause", "192.0.2.7", lambda: True)
    assert resp.status == 403
    resp = api.handle("POST", "/_/pause", "127.0.0.1", lambda: True)
    assert resp.status == 401
    # Unknown routes and methods are not revealed to a caller without the token.
    assert api.handle("POST", "/_/nothing", "127.0.0.1", lambda: True).status == 401
    assert api.handle("POST", "/_/nothing", "127.0.0.1", lambda: True, authorization=f"Bearer {TOKEN}").status == 404


def test_the_token_never_reaches_the_log(serve: Callable[..., ApiServer], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        api = serve(read_token=READ)
        call(api, "POST", "/_/pause", f"Bearer {TOKEN}")
        call(api, "POST", "/_/pause", f"Bearer {TOKEN}-wrong")
        call(api, "GET", "/_/status", f"Bearer {READ}x")
        call(api, "GET", "/_/status", f"Bearer {READ}")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused (wrong token (api.token))" in text and "refused (wrong token (api.read_token))" in text
    assert TOKEN not in text and READ not in text
    assert repr(ApiClient("127.0.0.1:1", token=TOKEN, read_token=READ)).count("Tok") == 0


def test_a_utf8_token(serve: Callable[..., ApiServer]) -> None:
    api = serve(token="jéton-ünïcode")
    client = ApiClient(f"127.0.0.1:{api.port}", token="jéton-ünïcode")
    assert client.pause("follower")["follower"]["paused"]
    with pytest.raises(ApiUnauthorized):
        ApiClient(f"127.0.0.1:{api.port}", token="jeton-unicode").pause()


def test_an_empty_token_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        make_server(token=" ")


def test_api_client_sends_the_tokens(serve: Callable[..., ApiServer]) -> None:
    api = serve(read_token=READ)
    listen = f"127.0.0.1:{api.port}"
    client = ApiClient(listen, token=TOKEN, read_token=READ)
    assert client.pause("collector")["collector"]["paused"]
    assert client.status()["index"] == {"backend": "sqlite"}
    assert client.flush()["entries"] == 3
    with pytest.raises(ApiUnauthorized, match=r"refused POST /_/pause: 401 a token is required \(api.token\)"):
        ApiClient(listen, read_token=READ).pause()
    with pytest.raises(ApiUnauthorized, match=r"refused GET /_/status: 401 wrong token \(api.read_token\)"):
        ApiClient(listen, token="other", read_token="other").status()
    # Without a read token, the write token serves the GET routes too.
    assert ApiClient(listen, token=TOKEN).controls()["collector"]["paused"]


# --------------------------------------------------------------------------- the CLI


def _conf(tmp_path: Path, port: int, api_keys: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(
        f"""
[index]
path = "{tmp_path / "index.db"}"
[target]
url = "file://{tmp_path / "logs"}/"
[api]
listen = "127.0.0.1:{port}"
{api_keys}
"""
    )
    return p


def _run(conf: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-c", str(conf), *args])


def test_the_cli_sends_the_token_to_a_running_serve(
    serve: Callable[..., ApiServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = Flushes()
    api = serve(read_token=READ, flush=flushes)
    monkeypatch.setenv("API_TOKEN", TOKEN)
    conf = _conf(tmp_path, api.port, f'token_env = "API_TOKEN"\nread_token = "{READ}"')
    r = _run(conf, "pause", "collector")
    assert r.exit_code == 0, r.output
    assert api.controls.paused("collector")
    r = _run(conf, "resume")
    assert r.exit_code == 0, r.output
    assert not api.controls.paused("collector")
    r = _run(conf, "flush")
    assert r.exit_code == 0, r.output
    assert flushes.calls == 1 and "by serve at" in r.stderr
    r = _run(conf, "status", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["from"].endswith("/_/status")


def test_the_cli_without_the_token_fails_with_one_line(serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    flushes = Flushes()
    api = serve(read_token=READ, flush=flushes)
    wrong = _conf(tmp_path, api.port, f'token = "not-it"\nread_token = "{READ}"')
    for args in (("pause",), ("flush",)):
        r = _run(wrong, *args)
        assert r.exit_code != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "401 wrong token (api.token)" in lines[0], r.stderr
        assert "not-it" not in r.output
    # flush did not fall back to a pass of its own: the serve is there, it refused.
    assert flushes.calls == 0 and not api.controls.paused("collector")
    no_read = _conf(tmp_path, api.port, "")
    r = _run(no_read, "status")
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "401 a token is required (api.read_token)" in lines[0] and "--direct" in lines[0]


# --------------------------------------------------------------------------- the bound address


def _listening_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("api listening on")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_log_names_the_address_and_port_really_bound(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="changelog.api"), make_server(listen="0.0.0.0:0") as api:
        port = api.port
        line = _listening_line(caplog)
    assert port != 0
    assert line.startswith(f"api listening on 0.0.0.0:{port} (every IPv4 address); allowed: 127.0.0.1/32, ::1/128;")
    assert line.endswith("POST routes: token required; GET routes: open")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="changelog.api"), make_server(listen="127.0.0.1:0", token=None) as api:
        port = api.port
        line = _listening_line(caplog)
    assert line.startswith(f"api listening on 127.0.0.1:{port}; allowed: ")
    assert line.endswith("POST routes: open; GET routes: open")


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
def test_the_log_says_when_it_listens_on_every_ipv6_and_ipv4_address(caplog: pytest.LogCaptureFixture) -> None:
    try:
        with caplog.at_level(logging.INFO, logger="changelog.api"), make_server(listen="[::]:0", read_token=READ) as api:
            port = api.port
            line = _listening_line(caplog)
    except ConfigError as ex:
        pytest.skip(f"cannot bind [::]: {ex}")
    assert line.startswith(f"api listening on [::]:{port} (every IPv6 and IPv4 address);")
    assert line.endswith("GET routes: read token required")
