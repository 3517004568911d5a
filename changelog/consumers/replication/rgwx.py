"""radosgw's system-user request parameters (``rgwx-*``), added to one boto3 call.

A system user (``radosgw-admin user create --system``) may choose the version id and the OLH
epoch of what it writes: ``PUT ?rgwx-version-id=V&rgwx-versioned-epoch=N`` (on a multipart
upload, on the completion) and ``DELETE ?rgwx-version-id=M&rgwx-versioned-epoch=N`` for a
delete marker (``rgw_op.cc`` ``get_system_versioning_params``; other users' ``rgwx-`` parameters
are ignored). Two-way replication of versioned buckets writes the peer's versions with their own
ids and epochs through them (measured in ``tools/research/versioned_stack/``).

boto3 has no argument for a query parameter it does not model: they ride on
``changelog.pipeline.s3client.RequestExtras`` (``params`` around the call, ``enable`` once per
client), appended to the URL before SigV4 signs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from changelog.pipeline.s3client import RequestExtras

VERSION_ID = "rgwx-version-id"
EPOCH = "rgwx-versioned-epoch"
# radosgw parses the epoch as a 32-bit int: 2^31 and above is a 400, a negative one is stored as
# 2^64 - |N| and hides the key's entries from listings, 0 means "none" (the OLH epoch + 1).
EPOCH_MAX = 2**31 - 1


def clamp_epoch(epoch: int) -> int:
    """An OLH epoch radosgw accepts as given: 1 .. 2^31-1."""
    return min(max(epoch, 1), EPOCH_MAX)


def _append(request: Any, values: Mapping[str, str]) -> None:
    url = str(request.url)
    if VERSION_ID + "=" in url:
        return  # a retry signs the same request again
    request.url = url + ("&" if "?" in url else "?") + urlencode(values)


_PARAMS = RequestExtras("rgwcl-rgwx-params", _append)
# Let ``params`` reach a client's requests (idempotent).
enable = _PARAMS.enable
# The ``rgwx-`` parameters of the calls made in this block, in this thread.
params = _PARAMS.given


def version(version_id: str, epoch: int) -> dict[str, str]:
    """Place a version (or a delete marker) with this id at this OLH epoch."""
    return {VERSION_ID: version_id, EPOCH: str(clamp_epoch(epoch))}
