"""What a consumer's API routes are made of, without the HTTP server: the ``Request`` a prefix
route gets (``ApiServer.mount_prefix`` in ``changelog.api``, which answers the document a route
returns as JSON) and the ``RouteError`` a route raises to answer an error status. Here, below
the API, so that a consumer's routes import nothing from the process edges."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from changelog.errors import PermanentError


class RouteError(PermanentError):
    """Raised by a route: answered as ``{"error": message, "code": status}`` with ``status`` (404
    for an unknown name, 400 for bad input, 405 for a wrong method)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """What a prefix route gets: ``path`` is the rest of the path after the prefix, still
    percent-encoded (a route splits it, then decodes each part: an object key may hold an
    encoded ``/``); ``query`` the last value of each query parameter; ``body`` the decoded JSON
    body (None when there was none)."""

    method: str
    path: str
    query: Mapping[str, str]
    body: object = None

    def segments(self) -> list[str]:
        """The rest of the path split on ``/`` (still encoded); [] when there is none."""
        return self.path.split("/") if self.path else []


# A prefix route: the request in, the JSON document to answer with 200 out.
PrefixRoute = Callable[[Request], Mapping[str, object]]
