"""What one partition of the follower owns (docs/partitions-plan.md): its data-log shards
(``n % count == index``), the bucket-index shards radosgw logs to them (``datalog_shard``), and
the buckets whose bucket-level work is its own (a hash of the qualified name). Pure functions of
the partition, the partition count and the zone's data-log shard count."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rgw_module.mapping import BucketShard, datalog_shard


@dataclass(frozen=True)
class PartitionScope:
    index: int
    count: int
    datalog_shards: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count or self.datalog_shards < 1:
            raise ValueError(f"partition {self.index} of {self.count} over {self.datalog_shards} data-log shards")

    def owns_datalog(self, n: int) -> bool:
        return n % self.count == self.index

    def owns_shard(self, bs: BucketShard) -> bool:
        """The partition reading ``bs``'s log: the owner of the data-log shard it is logged to."""
        return self.owns_datalog(datalog_shard(bs.bucket, bs.shard, self.datalog_shards))

    def owns_bucket(self, qualified: str) -> bool:
        """The partition doing ``qualified``'s bucket-level work (scan, full sync, reshards)."""
        h = int.from_bytes(hashlib.blake2b(qualified.encode(), digest_size=8).digest(), "big")
        return h % self.count == self.index

    def datalog(self) -> list[int]:
        return [n for n in range(self.datalog_shards) if self.owns_datalog(n)]
