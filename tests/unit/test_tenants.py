"""Tenants' buckets outside the follower's state machine: the names (``tenant/bucket`` for the
follower, the filters and the admin API; ``tenant:bucket`` for S3), the data-log shard radosgw
hashes them to, the ``[source]`` checks, the bucket-op records, and the S3 client that must send
``tenant:bucket`` though botocore's own name check refuses it. The follower with tenants:
``test_follower_unit.py``; on the lab: ``tests/integration/test_tenants_lab.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.stub import Stubber

from changelog.config import SourceConfig
from changelog.errors import ConfigError, InvalidMutation
from changelog.pipeline.mutation import Mutation, Op
from rgw_module.admin import AdminClient
from rgw_module.mapping import (
    BucketFilter,
    BucketShard,
    bucket_mutation,
    datalog_shard,
    map_entry,
    qualified_name,
    s3_bucket_name,
    split_name,
)


def test_the_three_spellings_of_a_tenants_bucket() -> None:
    assert qualified_name("t1", "b") == "t1/b" and qualified_name("", "b") == "b"
    assert split_name("t1/b") == ("t1", "b") and split_name("b") == ("", "b")
    assert s3_bucket_name("t1/b") == "t1:b" and s3_bucket_name("b") == "b"


def test_a_tenants_data_log_shard_is_hashed_from_the_name_within_the_tenant() -> None:
    # Measured on the lab (Pacific, Reef, Tentacle; 128 data-log shards): t1/tb1's index shards
    # 3 and 5 were logged to data-log shards 111 and 113, as a bucket tb1 of no tenant would be.
    assert [datalog_shard("t1/tb1", n, 128) for n in (3, 5)] == [111, 113]
    assert datalog_shard("t1/tb1", 3, 128) == datalog_shard("tb1", 3, 128)


def test_a_data_log_key_of_a_tenants_bucket_parses_to_its_qualified_name() -> None:
    bs = BucketShard.parse("t1/tb1:zone.4122.3:3")
    assert bs == BucketShard("t1/tb1", "zone.4122.3", 3)
    assert bs.instance == "t1/tb1:zone.4122.3:3"  # the admin API's bucket-instance spelling


def test_a_tenants_bilog_entry_is_a_record_of_its_tenant() -> None:
    entry = {"op_id": "3#00000000001.9.6", "op": "write", "object": "k", "instance": "", "state": "complete",
             "timestamp": "2026-12-06T02:39:43.403990866Z", "versioned": False}  # fmt: skip
    m = map_entry(entry, BucketShard("t1/tb1", "zone.1", 3), generation=1, observed_ns=0)  # type: ignore[arg-type]
    assert m is not None
    assert (m.tenant, m.bucket, m.key, m.source) == ("t1", "tb1", "k", "rgw:t1/tb1:zone.1:3")


def test_bucket_ops_sort_around_the_records_of_their_generation() -> None:
    create = bucket_mutation(Op.BUCKET_CREATE, bucket="t1/b", marker="m1", generation=1, time_ns=5)
    delete = bucket_mutation(Op.BUCKET_DELETE, bucket="t1/b", marker="m1", generation=3, time_ns=9)
    again = bucket_mutation(Op.BUCKET_CREATE, bucket="t1/b", marker="m2", generation=4, time_ns=10)
    assert (create.tenant, create.bucket, create.key, create.version_id) == ("t1", "b", "", None)
    assert create.source == delete.source == "rgw-bucket:t1/b:m1" != again.source
    assert create.position < delete.position  # a replay records each once (the index's mark)
    assert create.seq < "000001.0.0" < "000001.1.0" < "000003.1.9" < delete.seq < again.seq
    with pytest.raises(ValueError, match="not a bucket op"):
        bucket_mutation(Op.WRITE, bucket="b", marker="m", generation=1, time_ns=0)
    with pytest.raises(InvalidMutation):
        Mutation(bucket="b", key="k", op=Op.BUCKET_CREATE, mtime_ns=0, source="s", position="0", seq="1")


def test_filters_name_a_tenants_bucket_tenant_slash_bucket() -> None:
    f = BucketFilter(["t1/b", "c"], {"t1/b": ["x/"]}, exclude=["t1/c"])
    assert f.follows("t1/b") and f.follows("c")
    assert not f.follows("b") and not f.follows("t1/c") and not f.follows("t2/b")
    assert f.wants("t1/b", "x/1") and not f.wants("t1/b", "y") and f.wants("b", "y")
    everything = BucketFilter(None, exclude=["logs"])
    assert everything.follows("t1/b") and everything.follows("t1/logs") and not everything.follows("logs")


def test_source_config_takes_tenant_slash_bucket_and_refuses_the_s3_spelling() -> None:
    cfg = SourceConfig.model_validate({"buckets": ["t1/b", "plain"], "exclude_buckets": ["t1/logs"], "prefixes": {"t1/b": ["x/"]}})
    assert cfg.includes("t1/b", "x/1") and cfg.includes("b", "x/1", tenant="t1")
    assert not cfg.includes("b", "x/1") and not cfg.includes("b", "y", tenant="t1")
    assert not cfg.includes("logs", tenant="t1") and cfg.includes("plain")
    for bad, says in [("t1:b", "tenant/bucket, not tenant:bucket"), ("t-1/b", "tenant/bucket"),
                      ("t1/", "tenant/bucket"), ("/b", "tenant/bucket"), ("t1/b/c", "tenant/bucket")]:
        with pytest.raises((ConfigError, ValueError), match=says):
            SourceConfig.model_validate({"buckets": [bad]})


def test_bucket_stats_name_a_tenants_bucket_by_its_qualified_name() -> None:
    class Answering(AdminClient):
        def _get_json(self, path: str, params: object) -> object:
            return {"bucket": "tb1", "tenant": "t1", "id": "z.2", "marker": "z.2", "num_shards": 11,
                    "creation_time": "2026-12-06T02:39:43.389091Z", "owner": "t1$u1", "max_marker": "0#,1#"}  # fmt: skip

    stats = Answering("http://rgw.invalid", "a", "s").bucket_stats("t1/tb1")
    assert (stats.name, stats.bucket_id, stats.shards()[0].instance) == ("t1/tb1", "z.2", "t1/tb1:z.2:0")
    assert stats.creation_ns == int(datetime(2026, 12, 6, 2, 39, 43, tzinfo=UTC).timestamp()) * 10**9 + 389091000


def test_the_s3_reads_send_tenant_colon_bucket() -> None:
    admin = AdminClient("http://rgw.invalid", "a", "s")
    client = admin._s3()
    with Stubber(client) as stub:
        stub.add_response("list_objects_v2", {"Contents": [], "IsTruncated": False},
                          {"Bucket": "t1:tb1", "Prefix": "", "MaxKeys": 1000})  # fmt: skip
        page = admin.list_objects("t1/tb1", versions=False)
        stub.assert_no_pending_responses()
    assert page.items == []
    admin.close()
