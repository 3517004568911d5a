"""``rgw_module.partition_scope``: the partitions of a follower split the data-log shards, the
bucket-index shards and the buckets exactly (each owned by one partition)."""

from __future__ import annotations

import pytest

from rgw_module.mapping import BucketShard
from rgw_module.partition_scope import PartitionScope


@pytest.mark.parametrize("count", [1, 3, 8])
def test_every_shard_and_bucket_has_exactly_one_owner(count: int) -> None:
    scopes = [PartitionScope(p, count, 128) for p in range(count)]
    assert sorted(n for s in scopes for n in s.datalog()) == list(range(128))
    for b in [f"bucket-{i}" for i in range(200)] + ["t1/b", "caf\u00e9"]:
        assert sum(s.owns_bucket(b) for s in scopes) == 1
        for shard in range(-1, 11):
            bs = BucketShard(b, "zone.1", shard)
            assert sum(s.owns_shard(bs) for s in scopes) == 1


def test_a_bucket_s_shards_spread_over_partitions() -> None:
    scopes = [PartitionScope(p, 4, 128) for p in range(4)]
    owners = {next(p for p, s in enumerate(scopes) if s.owns_shard(BucketShard("big", "z.1", n))) for n in range(64)}
    assert owners == {0, 1, 2, 3}


def test_bad_scopes_are_refused() -> None:
    for args in ((4, 4, 128), (-1, 4, 128), (0, 0, 128), (0, 4, 0)):
        with pytest.raises(ValueError):
            PartitionScope(*args)
