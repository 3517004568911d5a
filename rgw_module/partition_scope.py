"""What one partition of the follower owns (``[scale] partitioned``, docs/design.md §14): the
buckets whose qualified name hashes to it, with everything about them (their bucket-index
shards and log generations, full syncs, bucket records, requests), and the data-log shards
``n % count == index`` for trimming only (every partition reads the whole data log, keeping the
entries of its own buckets).

Why buckets and not data-log shards: a key's records must come from one follower at a time,
in ``seq`` order (H6), across reshards; a reshard moves a key to another bucket-index shard, so
another data-log shard, while its bucket stays. With buckets as the unit, a reshard, a log
generation, a full sync and a bucket's delete are each handled by one partition exactly as the
single follower does. The cost: every partition reads the data log (one entry per busy
bucket-index shard per ``rgw_data_log_window``, small beside the bucket-index logs), and one hot
bucket is one partition's work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionScope:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} of {self.count}")

    def owns_bucket(self, qualified: str) -> bool:
        """Whether ``qualified`` (``tenant/bucket`` for a tenant's) is this partition's."""
        return bucket_partition(qualified, self.count) == self.index

    def owns_datalog(self, n: int) -> bool:
        """Whether this partition trims data-log shard ``n`` (up to every partition's marker)."""
        return n % self.count == self.index


def bucket_partition(qualified: str, count: int) -> int:
    """The partition of ``count`` owning bucket ``qualified``: a stable hash of the name."""
    return int.from_bytes(hashlib.blake2b(qualified.encode(), digest_size=8).digest(), "big") % count
