"""Who may call ``serve``'s API and where it listens: ``[api] listen`` parsed into an address,
``[api] allow_from`` into networks matched against the caller's address (403 outside them), and
the bearer tokens (``BearerTokens``: 401 without the right one). ``changelog.api`` applies them
in that order: the address first, then the token.

Tokens: with ``api.token`` set, every route but GET and HEAD needs ``Authorization: Bearer
<token>``; with ``api.read_token`` set, GET and HEAD need it, or ``api.token``. They are
compared with ``hmac.compare_digest``, in constant time, and never logged or shown.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable, Sequence

from changelog.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:9480"
DEFAULT_ALLOW_FROM = ("127.0.0.1", "::1")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_listen(listen: str) -> tuple[str, int, socket.AddressFamily]:
    """``host:port``, ``[ipv6]:port`` (or ``ipv6:port``, as config accepts), ``:port`` (all IPv4
    interfaces) → (host, port, address family)."""
    host, sep, port_s = listen.strip().rpartition(":")
    if not sep:
        raise ConfigError(f"api.listen must be ADDRESS:PORT such as 127.0.0.1:9480, not {listen!r}")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    family = socket.AF_INET
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError as ex:
            raise ConfigError(f"api.listen: {host!r} is not an IPv6 address") from ex
        family = socket.AF_INET6
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"api.listen: port must be 0-65535, not {port_s!r}")
    return host or "0.0.0.0", port, family


def local_url(host: str, port: int) -> str:
    """The URL a client on this host uses for a server listening on ``host:port`` (the loopback
    address when it listens on every address)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def parse_allow_from(allow_from: Iterable[str]) -> tuple[Network, ...]:
    """Addresses and CIDRs (IPv4 or IPv6) → networks; an empty list allows nobody."""
    if isinstance(allow_from, str):
        raise ConfigError(f"api.allow_from must be a list of addresses / CIDRs, not the string {allow_from!r}")
    out = []
    for item in allow_from:
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError as ex:
            raise ConfigError(f"api.allow_from: {item!r} is not an address or CIDR: {ex}") from ex
    return tuple(out)


def address_allowed(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
    except ValueError:
        return False
    # A dual-stack IPv6 socket shows IPv4 callers as ::ffff:a.b.c.d: match them as IPv4 too.
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c in net for c in candidates for net in networks if c.version == net.version)


def _token_bytes(token: str | None) -> bytes | None:
    if token is None:
        return None
    if not token.strip():
        raise ConfigError("api.token / api.read_token must not be empty")
    # Bytes: compare_digest takes a str of ASCII only, and a token may be any UTF-8.
    return token.strip().encode("utf-8")


class BearerTokens:
    """The API's tokens (None: that kind of route is open). ``refusal`` says why a request is
    refused (the text of the 401), or None."""

    __slots__ = ("_read_token", "_token")

    def __init__(self, token: str | None = None, read_token: str | None = None) -> None:
        self._token = _token_bytes(token)
        self._read_token = _token_bytes(read_token)

    def __repr__(self) -> str:  # never the values
        return f"BearerTokens(token={'set' if self._token else None}, read_token={'set' if self._read_token else None})"

    @property
    def token(self) -> bool:
        """Whether the routes that act (POST) need a token."""
        return self._token is not None

    @property
    def read_token(self) -> bool:
        """Whether the GET routes need a token."""
        return self._read_token is not None

    def refusal(self, method: str, authorization: str | None) -> str | None:
        """Why a ``method`` request with this ``Authorization`` header is refused, None when it
        needs no token or carries a right one. GET and HEAD read: ``read_token`` or ``token``;
        any other method needs ``token``."""
        reading = method in ("GET", "HEAD")
        if reading and self._read_token is None or not reading and self._token is None:
            return None
        accepted = [t for t in ((self._read_token, self._token) if reading else (self._token,)) if t is not None]
        key = "api.read_token" if reading else "api.token"
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return f"a token is required ({key}): send Authorization: Bearer <token>"
        # The server reads header bytes as Latin-1: back to the bytes sent (UTF-8 by ApiClient).
        presented = given.strip().encode("latin-1", "replace")
        # Every accepted token is compared, whichever matches: the time taken says nothing.
        matches = [hmac.compare_digest(presented, t) for t in accepted]
        return None if any(matches) else f"wrong token ({key})"
