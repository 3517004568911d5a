"""The operator's HTTP API of ``serve``: health, metrics, status, pause / resume, flush, and the
routes each consumer of the logs mounts under ``/_/<consumer>/``.

``ApiServer`` is a small threaded HTTP server (stdlib) with routes under ``/_/``::

    GET  /_/healthcheck   200, or 500 when a component is down; the body names every component
    GET  /_/metrics       Prometheus text format
    GET  /_/status        the same JSON as ``rgw-changelog status --json``
    GET  /_/controls      the pause switches, by component
    POST /_/pause[/<component>]    POST /_/resume[/<component>]   (follower, collector, consumers)
    POST /_/flush         a collector pass with no settle window now; answers its result
    GET  /_/backup/status, POST /_/backup/run    (when serve runs the backup consumer)
    /_/crr/..., /_/metrics/crr/...   (when serve replicates: ``changelog.consumers.replication.api``)
    GET  /_/usage?bucket=&tenant=&since=&until=&interval=   (with [usage] enabled: per-bucket totals
                          and interval series, ``changelog.consumers.usage.query``)

A consumer mounts either exact routes (``mount``: a handler with no arguments) or a path
prefix (``mount_prefix``: the handler gets a ``Request`` with the method, the rest of the path,
the query and the JSON body, and returns the document to answer or raises ``RouteError``;
both in ``changelog.consumers.routes``). Request
bodies up to ``MAX_BODY`` are read; a prefix route that gets one that is not JSON answers 400.

**Access** (``changelog.api_access``): a caller outside ``api.allow_from`` gets 403; then, with
``api.token`` / ``api.read_token`` set, a missing or wrong bearer token gets 401.

Errors carry ``{"error": message, "code": status}``: 403 and 401 as above, 400 for a body that
is not JSON, 404 for an unknown route (or an unknown name under a prefix route), 405 for a wrong method (with ``Allow``), what a handler's ``RouteError`` says (409 for a flush
of a paused collector), 500 when a handler fails (the traceback goes to the log, one line to the
caller).

``Controls`` holds the pause switches the collector and follower consult between units of
work. They live in memory only: a restart resumes everything.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypedDict, cast
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from changelog import __version__
from changelog.api_access import (
    DEFAULT_LISTEN,
    BearerTokens,
    address_allowed,
    local_url,
    parse_allow_from,
    parse_listen,
)
from changelog.api_health import CHECK_TIMEOUT_S as CHECK_TIMEOUT_S
from changelog.api_health import CheckReport as CheckReport
from changelog.api_health import HealthCheck as HealthCheck
from changelog.api_health import HealthChecks as HealthChecks
from changelog.api_health import error_line as _one_line
from changelog.api_health import leases_held as leases_held
from changelog.api_health import probe as probe
from changelog.api_health import thread_alive as thread_alive
from changelog.consumers.routes import PrefixRoute as PrefixRoute
from changelog.consumers.routes import Request as Request
from changelog.consumers.routes import RouteError as RouteError
from changelog.errors import ConfigError, PermanentError, TransientError

logger = logging.getLogger(__name__)

COMPONENTS = ("collector", "follower")
# Every connection is a thread; a kernel backlog this deep keeps a burst of scrapes and curls
# from being refused (the default of 5 drops connections under load).
REQUEST_QUEUE = 1024
# A client that stops sending mid-request frees its thread after this long.
SOCKET_TIMEOUT_S = 30.0
# The largest request body read: a failed-list retry of a whole page of the failed list (1,000
# entries, ~120 KB) fits many times over; the exact routes take none, and a small one sent to
# them is read and ignored so the connection closes cleanly.
MAX_BODY = 4 * 1024 * 1024

# A JSON document a route answers (or the client receives).
Doc = dict[str, object]


class ControlState(TypedDict):
    """One component's pause switch, as ``GET /_/controls`` shows it."""

    paused: bool
    since: str | None  # RFC 3339
    parked: bool  # paused, and it has stopped taking work


# By component.
ControlStates = dict[str, ControlState]


# ---------------------------------------------------------------------------------- controls


class UnknownComponent(PermanentError):
    """A pause / resume named a component that does not exist."""


class Controls:
    """Pause switches, one per component. Thread-safe.

    A component checks them between units of work (the collector between log objects or
    passes, the follower between sweeps), either by blocking in ``wait_while_paused`` or by
    polling ``checkpoint``. While paused it takes no new work, and its markers, leases and the
    index stay as they are. Either call also tells the operator the pause has taken effect:
    ``state()`` shows the component ``parked`` from then until it is resumed.
    """

    def __init__(self, components: Iterable[str] = COMPONENTS, *, clock: Callable[[], float] = time.time) -> None:
        self._components = tuple(components)
        if not self._components:
            raise ValueError("Controls needs at least one component")
        self._clock = clock
        self._cond = threading.Condition()
        self._since: dict[str, float | None] = dict.fromkeys(self._components)
        self._parked: dict[str, bool] = dict.fromkeys(self._components, False)

    @property
    def components(self) -> tuple[str, ...]:
        return self._components

    def _select(self, component: str | None) -> tuple[str, ...]:
        if component is None:
            return self._components
        if component not in self._since:
            raise UnknownComponent(f"no component {component!r}; components: {', '.join(self._components)}")
        return (component,)

    def paused(self, component: str) -> bool:
        """Whether ``component`` is paused (for observers; components use ``checkpoint``)."""
        (name,) = self._select(component)
        with self._cond:
            return self._since[name] is not None

    def pause(self, component: str | None = None) -> ControlStates:
        """Pause one component (or all); returns the new state. Pausing twice is harmless."""
        names = self._select(component)
        with self._cond:
            for name in names:
                if self._since[name] is None:
                    self._since[name] = self._clock()
                    logger.info("%s paused", name)
            self._cond.notify_all()
            return self._state_locked()

    def resume(self, component: str | None = None) -> ControlStates:
        """Resume one component (or all); returns the new state."""
        names = self._select(component)
        with self._cond:
            for name in names:
                if self._since[name] is not None:
                    self._since[name] = None
                    self._parked[name] = False
                    logger.info("%s resumed", name)
            self._cond.notify_all()
            return self._state_locked()

    def state(self) -> ControlStates:
        """``{component: {"paused": bool, "since": RFC 3339 or None, "parked": bool}}``;
        ``parked`` is true once a paused component has reached a checkpoint (so has stopped
        taking work) and until it is resumed."""
        with self._cond:
            return self._state_locked()

    def _state_locked(self) -> ControlStates:
        return {
            name: {
                "paused": since is not None,
                "since": _rfc3339(since) if since is not None else None,
                "parked": self._parked[name],
            }
            for name, since in self._since.items()
        }

    def checkpoint(self, component: str) -> bool:
        """For a component's loop, between units of work: True while paused (take no new work
        now, check again soon), False to go on."""
        (name,) = self._select(component)
        with self._cond:
            if self._since[name] is None:
                return False
            if not self._parked[name]:
                self._parked[name] = True
                logger.info("%s parked until resumed", name)
            return True

    def wait_while_paused(self, component: str, stop: threading.Event, *, poll: float = 0.25) -> bool:
        """Block while ``component`` is paused. True when it may go on, False when ``stop`` was
        set (checked every ``poll`` seconds: an Event cannot wake a Condition)."""
        (name,) = self._select(component)
        with self._cond:
            if self._since[name] is not None and not self._parked[name]:
                self._parked[name] = True
                logger.info("%s parked until resumed", name)
            while self._since[name] is not None and not stop.is_set():
                self._cond.wait(poll)
        return not stop.is_set()


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json_default(obj: object) -> object:
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def json_response(status: int, doc: object, *, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = orjson.dumps(doc, default=_json_default, option=orjson.OPT_NON_STR_KEYS) + b"\n"
    return Response(status, body, headers=headers)


def error_response(status: int, message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": message, "code": status}, headers=headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = REQUEST_QUEUE
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, api: ApiServer) -> None:
        self.address_family = family
        self.api = api
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "[::]" then serves IPv4 callers too (as ::ffff:a.b.c.d); allow_from handles both.
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        # Not HTTPServer.server_bind: its getfqdn() is a reverse DNS lookup that can stall start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    # One request per connection: no keep-alive state to get wrong, and scrapes are infrequent.
    protocol_version = "HTTP/1.0"
    server_version = f"rgw-changelog/{__version__}"
    timeout = SOCKET_TIMEOUT_S

    @property
    def api(self) -> ApiServer:
        server = self.server
        assert isinstance(server, _Server)
        return server.api

    def do_GET(self) -> None:
        self._dispatch()

    # Every method HTTP defines is routed (a wrong one gets the JSON 405 with ``Allow``); the
    # stdlib answers any other (BREW) with 501, as RFC 9110 has it for an unknown method.
    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_GET

    def _dispatch(self) -> None:
        resp = self.api.handle(
            self.command,
            self.path,
            self.client_address[0],
            self._read_body,
            authorization=self.headers.get("Authorization"),
        )
        self._send(resp)

    def _read_body(self) -> bytes | bool:
        """The request body (b"" when there is none); False when it is over ``MAX_BODY``."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return False
        if length > MAX_BODY:
            return False
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in resp.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib answers malformed requests and unknown methods with HTML; answer with JSON.
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._send(error_response(code, message or phrase))

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("api %s: " + format, self.address_string(), *args)

    def log_error(self, format: str, *args: object) -> None:
        logger.info("api %s: " + format, self.address_string(), *args)


Route = Callable[[], Response]


class ApiServer:
    """The HTTP API, on its own daemon threads; ``start()`` binds, ``stop()`` closes.

    ``listen`` is ``host:port`` (port 0 picks a free one; read it back from ``port``),
    ``allow_from`` the addresses / CIDRs that may call it. ``status_provider`` returns the
    ``status --json`` document; ``health_checks`` maps a component name to a check returning
    ``(up, detail)``; ``controls`` are the pause switches; ``registry`` is scraped for metrics.
    ``token`` (every route but GET) and ``read_token`` (GET routes), when set, are the bearer
    tokens a caller must send.
    """

    def __init__(
        self,
        listen: str,
        allow_from: Iterable[str],
        *,
        status_provider: Callable[[], Mapping[str, object]],
        health_checks: Mapping[str, HealthCheck],
        controls: Controls,
        registry: CollectorRegistry,
        check_timeout: float = CHECK_TIMEOUT_S,
        flush: Callable[[], Mapping[str, object]] | None = None,
        token: str | None = None,
        read_token: str | None = None,
    ) -> None:
        self.host, self._port, self.family = parse_listen(listen)
        self.tokens = BearerTokens(token, read_token)
        self.listen = listen
        self.allow_from = parse_allow_from(allow_from)
        self.status_provider = status_provider
        self.health = HealthChecks(health_checks, timeout=check_timeout)
        self.controls = controls
        self.registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.prefixes: dict[str, PrefixRoute] = {}
        self.routes: dict[str, dict[str, Route]] = {
            "/_/healthcheck": {"GET": self._healthcheck},
            "/_/metrics": {"GET": self._metrics},
            "/_/status": {"GET": self._status},
            "/_/controls": {"GET": lambda: json_response(200, {"controls": self.controls.state()})},
            "/_/pause": {"POST": lambda: self._control(self.controls.pause, None)},
            "/_/resume": {"POST": lambda: self._control(self.controls.resume, None)},
        }
        for component in controls.components:
            self.routes[f"/_/pause/{component}"] = {"POST": self._bind(self.controls.pause, component)}
            self.routes[f"/_/resume/{component}"] = {"POST": self._bind(self.controls.resume, component)}
        if flush is not None:
            self.mount("/_/flush", "POST", flush)

    def mount(self, path: str, method: str, handler: Callable[[], Mapping[str, object]]) -> None:
        """Add a route answering ``handler()``'s document as JSON (a consumer's routes are
        mounted under ``/_/<consumer>/``)."""
        if not path.startswith("/_/"):
            raise ValueError(f"API routes live under /_/, not {path!r}")
        self.routes.setdefault(path.rstrip("/"), {})[method] = lambda: json_response(200, dict(handler()))

    def mount_prefix(self, prefix: str, handler: PrefixRoute) -> None:
        """Send every request under ``prefix`` (``prefix`` itself and ``prefix/...``) that no
        exact route answers to ``handler``, whatever its method."""
        if not prefix.startswith("/_/"):
            raise ValueError(f"API routes live under /_/, not {prefix!r}")
        self.prefixes[prefix.rstrip("/")] = handler

    def _prefix_route(self, path: str) -> tuple[PrefixRoute, str] | None:
        """The handler of the longest mounted prefix of ``path``, and the rest of the path."""
        for prefix in sorted(self.prefixes, key=len, reverse=True):
            if path == prefix or path.startswith(prefix + "/"):
                return self.prefixes[prefix], path[len(prefix) + 1 :]
        return None

    def _bind(self, action: Callable[[str | None], ControlStates], component: str) -> Route:
        return lambda: self._control(action, component)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            self._server = _Server((self.host, self._port), self.family, self)
        except OSError as ex:
            raise ConfigError(f"api.listen {self.listen}: cannot listen: {ex.strerror or ex}") from ex
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="api", daemon=True
        )
        self._thread.start()
        logger.info(
            "api listening on %s; allowed: %s; POST routes: %s; GET routes: %s",
            self.bound,
            ", ".join(map(str, self.allow_from)) or "nobody",
            "token required" if self.tokens.token else "open",
            "read token required" if self.tokens.read_token else "open",
        )

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        logger.info("api stopped")

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the configured one until ``start()``)."""
        return self._server.server_port if self._server is not None else self._port

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def bound(self) -> str:
        """The address actually listened on (after ``start()``: the real port when 0 was asked
        for), saying so when it is every address of the host."""
        host = str(self._server.server_address[0]) if self._server is not None else self.host
        where = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        if host in ("", "0.0.0.0"):
            return f"{where} (every IPv4 address)"
        if host == "::":
            return f"{where} (every IPv6 and IPv4 address)"
        return where

    @property
    def url(self) -> str:
        return local_url(self.host, self.port)

    # ------------------------------------------------------------------ dispatch

    def handle(
        self,
        method: str,
        target: str,
        peer: str,
        read_body: Callable[[], bytes | bool],
        *,
        authorization: str | None = None,
    ) -> Response:
        """Answer one request (the HTTP handler calls this; so can tests). ``read_body`` returns
        the request body, or False when it is too large (True: no body to give);
        ``authorization`` is the request's ``Authorization`` header."""
        if not address_allowed(peer, self.allow_from):
            logger.info("api: %s %s from %s refused (not in api.allow_from)", method, target, peer)
            return error_response(403, f"{peer} is not allowed to use this API (api.allow_from)")
        refused = self.tokens.refusal(method, authorization)
        if refused is not None:
            logger.info("api: %s %s from %s refused (%s)", method, urlsplit(target).path, peer, refused)
            return error_response(401, refused, headers=(("WWW-Authenticate", 'Bearer realm="rgw-changelog"'),))
        body = read_body()
        if body is False:
            return error_response(413, f"request body over {MAX_BODY} bytes")
        url = urlsplit(target)
        path = url.path.rstrip("/") if len(url.path) > 1 else url.path
        methods = self.routes.get(path)
        if methods is None:
            found = self._prefix_route(url.path)
            if found is None:
                return error_response(404, f"no route {path}")
            return self._call_prefix(found, method, url.query, body if isinstance(body, bytes) else b"")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allowed = sorted(methods) + (["HEAD"] if "GET" in methods else [])
            return error_response(
                405, f"{method} not allowed on {path}; use {', '.join(allowed)}", headers=(("Allow", ", ".join(allowed)),)
            )
        try:
            return handler()
        except RouteError as ex:
            return error_response(ex.status, str(ex))
        except Exception as ex:
            logger.exception("api: %s %s failed", method, path)
            return error_response(500, _one_line(ex))

    def _call_prefix(self, found: tuple[PrefixRoute, str], method: str, query: str, body: bytes) -> Response:
        handler, rest = found
        doc: object = None
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as ex:
                return error_response(400, f"the request body is not JSON: {_one_line(ex)}")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            return json_response(200, dict(handler(Request("GET" if method == "HEAD" else method, rest, params, doc))))
        except RouteError as ex:
            return error_response(ex.status, str(ex))
        except Exception as ex:
            logger.exception("api: %s %s failed", method, rest)
            return error_response(500, _one_line(ex))

    # ------------------------------------------------------------------ routes

    def _healthcheck(self) -> Response:
        ok, report = self.health.run()
        if not ok:
            down = sorted(name for name, r in report.items() if not r["ok"])
            logger.warning("healthcheck: down: %s", ", ".join(f"{n} ({report[n]['detail']})" for n in down))
        return json_response(200 if ok else 500, {"ok": ok, "components": report})

    def _metrics(self) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def _status(self) -> Response:
        doc = dict(self.status_provider())
        doc.setdefault("controls", self.controls.state())
        return json_response(200, doc)

    def _control(self, action: Callable[[str | None], ControlStates], component: str | None) -> Response:
        return json_response(200, {"controls": action(component)})


# ---------------------------------------------------------------------------------- client


class ApiUnavailable(TransientError):
    """No ``serve`` answers at the configured address."""


class ApiUnauthorized(PermanentError):
    """A ``serve`` answered 401 (the token sent, if any, is not the one it wants) or 403 (this
    host is outside its ``[api] allow_from``): it is there and refuses us."""


class ApiClient:
    """A client for a running ``serve``'s API, e.g. for ``rgw-changelog status`` to prefer the
    live process's view when there is one. ``token`` is sent with every request but GET ones,
    ``read_token`` (else ``token``) with GET ones (``[api] token`` and ``read_token``)."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        *,
        timeout: float = CHECK_TIMEOUT_S + 5,
        token: str | None = None,
        read_token: str | None = None,
    ) -> None:
        host, port, _ = parse_listen(listen)
        self.base = local_url(host, port)
        self.timeout = timeout
        self._token = token
        self._read_token = read_token

    def __repr__(self) -> str:  # no tokens
        return f"ApiClient({self.base!r})"

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        """(status, decoded JSON body or text); ``body`` (not None) is sent as JSON. Raises
        ``ApiUnavailable`` when nothing answers, ``ApiUnauthorized`` on 401."""
        data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.base + path, method=method, data=data)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        token = (self._read_token or self._token) if method in ("GET", "HEAD") else self._token
        if token:
            # http.client sends a header as Latin-1: this str goes out as the token's UTF-8 bytes.
            req.add_header("Authorization", ("Bearer " + token).encode("utf-8").decode("latin-1"))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as ex:
            status, ctype, raw = ex.code, ex.headers.get("Content-Type", ""), ex.read()
        except TimeoutError as ex:
            # Connected, then no answer in time: a serve is there, busy (a long flush pass).
            raise ApiUnavailable(
                f"serve at {self.base} did not answer {method} {path} within {self.timeout:g} s"
            ) from ex
        except (urllib.error.URLError, OSError) as ex:
            reason = getattr(ex, "reason", ex)
            raise ApiUnavailable(f"no rgw-changelog serve at {self.base}: {reason}") from ex
        doc: object = json.loads(raw) if ctype.startswith("application/json") else raw.decode("utf-8", "replace")
        if status in (401, 403):
            why = doc.get("error") if isinstance(doc, dict) else doc
            raise ApiUnauthorized(f"serve at {self.base} refused {method} {path}: {status} {why}")
        return status, doc

    def _answer(self, method: str, path: str, body: object = None) -> object:
        status, doc = self.request(method, path, body)
        if status != 200:
            message = doc.get("error") if isinstance(doc, dict) else doc
            raise PermanentError(f"{method} {path}: {status} {message}")
        return doc

    def _doc(self, method: str, path: str, body: object = None) -> Doc:
        doc = self._answer(method, path, body)
        if not isinstance(doc, dict):
            raise PermanentError(f"{method} {path}: not a JSON object: {str(doc)[:200]}")
        return doc

    def _controls(self, method: str, path: str) -> ControlStates:
        state = self._doc(method, path).get("controls")
        if not isinstance(state, dict):
            raise PermanentError(f"{method} {path}: no controls in the answer")
        return cast(ControlStates, state)  # the server's ``Controls.state()``

    def status(self) -> Doc:
        return self._doc("GET", "/_/status")

    def health(self) -> tuple[bool, Doc]:
        status, doc = self.request("GET", "/_/healthcheck")
        if status not in (200, 500) or not isinstance(doc, dict):
            raise PermanentError(f"GET /_/healthcheck: {status} {doc}")
        return status == 200, doc

    def metrics(self) -> str:
        return str(self._answer("GET", "/_/metrics"))

    def pause(self, component: str | None = None) -> ControlStates:
        return self._controls("POST", "/_/pause" + (f"/{component}" if component else ""))

    def resume(self, component: str | None = None) -> ControlStates:
        return self._controls("POST", "/_/resume" + (f"/{component}" if component else ""))

    def controls(self) -> ControlStates:
        """The running ``serve``'s pause switches, by component."""
        return self._controls("GET", "/_/controls")

    def flush(self) -> Doc:
        """Ask the running ``serve`` for a flush pass now; its result once it is done."""
        return self._doc("POST", "/_/flush")

    def post(self, path: str, body: object = None) -> Doc:
        return self._doc("POST", path, body)

    def get(self, path: str) -> Doc:
        return self._doc("GET", path)
