"""The multipart uploads in progress in the followed zone, as the RGW follower saw them begin in
the bucket index logs and not yet end (``r.u.<bucket>:<upload id>`` keys of the control object,
or ``rp.<p>.u.`` ones with follower partitions; written by ``rgw_module.bilog_reader`` with the
markers of the round that read them). Lifecycle's abort of incomplete uploads reads them here,
with no listing of the buckets. Uploads begun before the follower's first start are not known.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import orjson

from changelog.pipeline.control import (
    FOLLOWER_PARTITION_META_KEY,
    FOLLOWER_PARTITION_PREFIX,
    FOLLOWER_PREFIX,
    FOLLOWER_UPLOAD_KIND,
)
from changelog.pipeline.store import ObjectStore, omap_iter


class Upload(NamedTuple):
    bucket: str  # qualified: tenant/bucket for a tenant's
    key: str
    upload_id: str
    started_ns: int


def incomplete_uploads(store: ObjectStore, control_oid: str) -> Iterator[Upload]:
    """Every upload the follower knows to be in progress (unordered across partitions)."""
    raw = store.omap_get(control_oid, [FOLLOWER_PARTITION_META_KEY]).get(FOLLOWER_PARTITION_META_KEY)
    prefixes = [FOLLOWER_PREFIX]
    if raw is not None:
        prefixes = [f"{FOLLOWER_PARTITION_PREFIX}{n}." for n in range(int(orjson.loads(raw)["count"]))]
    for prefix in prefixes:
        start = prefix + FOLLOWER_UPLOAD_KIND
        for k, v in omap_iter(store, control_oid, prefix=start):
            bucket, _, upload_id = k[len(start) :].rpartition(":")
            try:
                doc = orjson.loads(v)
                yield Upload(bucket, str(doc["key"]), upload_id, int(doc["started_ns"]))
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge: a newer follower's format
