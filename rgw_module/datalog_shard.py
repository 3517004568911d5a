"""Which data-log shard radosgw writes a bucket-index shard's changes to: the rule that lets the
follower's partitions (issue 17) split the zone by data-log shard, each owning exactly the
bucket-index shards its data-log shards point to.

radosgw (``RGWDataChangesLog::choose_oid``, src/rgw/driver/rados/rgw_datalog.cc, the same from
Pacific to Tentacle) takes the bucket's name (without its tenant), hashes it with
``ceph_str_hash_linux`` (src/common/ceph_hash.cc: the Linux dcache hash, 32 bits), adds the
index shard number (0 for an unsharded bucket) and takes the remainder by the number of data-log
shards (``rgw_data_log_num_shards``, 128 by default). The sum wraps at 32 bits as the C++ does.
"""

from __future__ import annotations

import functools

from rgw_module.mapping import BucketShard, split_name

_MASK = 0xFFFFFFFF


@functools.lru_cache(maxsize=65536)
def str_hash_linux(name: str) -> int:
    """``ceph_str_hash_linux`` of ``name``'s UTF-8 bytes (unsigned 32 bits)."""
    h = 0
    for c in name.encode():
        h = ((h + (c << 4) + (c >> 4)) * 11) & _MASK
    return h


def datalog_shard(bs: BucketShard, num_shards: int) -> int:
    """The data-log shard radosgw logs ``bs``'s changes to."""
    _, name = split_name(bs.bucket)
    return ((str_hash_linux(name) + max(bs.shard, 0)) & _MASK) % num_shards
