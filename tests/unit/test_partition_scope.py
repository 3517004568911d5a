"""``rgw_module.partition_scope``: the partitions of a follower split the buckets and the
data-log shards exactly (each owned by one partition), and stably."""

from __future__ import annotations

import pytest

from rgw_module.partition_scope import PartitionScope, bucket_partition


@pytest.mark.parametrize("count", [1, 3, 8])
def test_every_bucket_and_data_log_shard_has_exactly_one_owner(count: int) -> None:
    scopes = [PartitionScope(p, count) for p in range(count)]
    assert sorted(n for n in range(128) for s in scopes if s.owns_datalog(n)) == list(range(128))
    for b in [f"bucket-{i}" for i in range(500)] + ["t1/b", "caf\u00e9"]:
        assert sum(s.owns_bucket(b) for s in scopes) == 1


def test_buckets_spread_over_partitions_and_the_hash_is_stable() -> None:
    owners = [bucket_partition(f"b{i}", 4) for i in range(400)]
    assert all(60 < owners.count(p) < 140 for p in range(4)), [owners.count(p) for p in range(4)]
    # The owner is part of the persisted layout (rp.<p>. keys): it must not change between releases.
    assert [bucket_partition(n, 8) for n in ("a", "bucket", "t1/b")] == [7, 7, 5]


def test_bad_scopes_are_refused() -> None:
    for args in ((4, 4), (-1, 4), (0, 0)):
        with pytest.raises(ValueError):
            PartitionScope(*args)
