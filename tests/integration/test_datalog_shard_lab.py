"""``rgw_module.mapping.datalog_shard`` on the lab: every data-log entry radosgw writes for a sharded
bucket is in the shard the rule predicts (the ground truth for the follower's partitions)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from rgw_module.admin import AdminClient
from rgw_module.mapping import datalog_shard
from tests.lab import Lab

pytestmark = pytest.mark.ceph


def test_every_data_log_entry_is_in_the_predicted_shard(ceph_lab: Lab, s3_client: Any) -> None:
    admin = AdminClient(ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key)
    names = [f"dls-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for name in names:
        s3_client.create_bucket(Bucket=name)
        for i in range(60):
            s3_client.put_object(Bucket=name, Key=f"k{i}", Body=b"x")
    num = admin.datalog_shards()
    seen: dict[tuple[str, int], int] = {}
    for n in range(num):
        marker = ""
        while True:
            page = admin.datalog_list(n, marker)
            for e in page.entries:
                if e.shard.bucket in names:
                    assert datalog_shard(e.shard.bucket, e.shard.shard, num) == n, (e.shard, n)
                    seen[(e.shard.bucket, e.shard.shard)] = n
            if not page.truncated or not page.entries:
                break
            marker = page.marker
    # Every index shard of every bucket was seen (60 keys over the default 11 shards).
    shards = {bs for bs in seen}
    assert len({b for b, _ in shards}) == len(names) and len(shards) >= 3 * 5, sorted(shards)
