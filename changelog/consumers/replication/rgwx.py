"""radosgw's system-user request parameters (``rgwx-*``), added to one boto3 call.

A system user (``radosgw-admin user create --system``) may choose the version id and the OLH
epoch of what it writes: ``PUT ?rgwx-version-id=V&rgwx-versioned-epoch=N`` (on a multipart
upload, on the completion) and ``DELETE ?rgwx-version-id=M&rgwx-versioned-epoch=N`` for a
delete marker (``rgw_op.cc`` ``get_system_versioning_params``; other users' ``rgwx-`` parameters
are ignored). Two-way replication of versioned buckets writes the peer's versions with their own
ids and epochs through them (measured in ``tools/research/versioned_stack/``).

boto3 has no argument for a query parameter it does not model, so they ride in a context
variable set around the call (``params``) and a ``before-sign`` handler, registered once per
client (``enable``), appends them to the URL before SigV4 signs it. A context variable, not an
attribute of the client: the client is shared by threads, and s3transfer makes its calls in
threads of its own (the caller sets the variable in the thread that makes the call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

VERSION_ID = "rgwx-version-id"
EPOCH = "rgwx-versioned-epoch"
# radosgw parses the epoch as a 32-bit int: 2^31 and above is a 400, a negative one is stored as
# 2^64 - |N| and hides the key's entries from listings, 0 means "none" (the OLH epoch + 1).
EPOCH_MAX = 2**31 - 1

_PARAMS: ContextVar[Mapping[str, str] | None] = ContextVar("rgwcl_rgwx", default=None)
_HANDLER_ID = "rgwcl-rgwx-params"


def clamp_epoch(epoch: int) -> int:
    """An OLH epoch radosgw accepts as given: 1 .. 2^31-1."""
    return min(max(epoch, 1), EPOCH_MAX)


def _add(request: Any, **_: object) -> None:
    params = _PARAMS.get()
    if not params:
        return
    url = str(request.url)
    if VERSION_ID + "=" in url:
        return  # a retry signs the same request again
    request.url = url + ("&" if "?" in url else "?") + urlencode(params)


def enable(client: Any) -> None:
    """Let ``params`` reach ``client``'s requests (idempotent)."""
    client.meta.events.register("before-sign.s3", _add, unique_id=_HANDLER_ID)


@contextlib.contextmanager
def params(values: Mapping[str, str]) -> Iterator[None]:
    """The ``rgwx-`` parameters of the calls made in this block, in this thread."""
    token = _PARAMS.set(dict(values))
    try:
        yield
    finally:
        _PARAMS.reset(token)


def version(version_id: str, epoch: int) -> dict[str, str]:
    """Place a version (or a delete marker) with this id at this OLH epoch."""
    return {VERSION_ID: version_id, EPOCH: str(clamp_epoch(epoch))}
