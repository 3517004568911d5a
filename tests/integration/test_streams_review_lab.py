"""Review of scale-out mode (``[scale] partitioned``) on the lab, as an operator runs it: real
`rgw-changelog serve` processes (``tests.integration.serving.Fleet``) following the lab's
radosgw, with the consumers an operator turns on. Failing tests are bugs the review found
(docs/design.md §14, §16).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from changelog.consumers.framework import committed_objects
from changelog.pipeline import keys
from changelog.pipeline.reader import read_records
from changelog.pipeline.targets import S3Target
from tests.integration.serving import LOG_PREFIX, Fleet, watermark_doc
from tests.lab import Lab

pytestmark = pytest.mark.ceph

INDEX_SHARDS = 8  # Fleet's [index] shards
WRITERS = 6


class UsageFleet(Fleet):
    """A ``Fleet`` whose instances also run the usage consumer."""

    def _config(self, port: int) -> str:
        return super()._config(port) + "\n[usage]\nenabled = true\npoll_interval = 0.5\nlease_ttl = 6\n"


@pytest.fixture
def usage_fleet(ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> Iterator[UsageFleet]:
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:10]
    log_bucket = f"sr-logs-{tag}"
    s3_client.create_bucket(Bucket=log_bucket)
    f = UsageFleet(ceph_lab, tmp_path, f"test-sreview-{tag}", log_bucket, [], size=1)
    try:
        yield f
    finally:
        f.kill_all()
        store = RadosStore(
            conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=f.ns, keyring=ceph_lab.keyring or None
        )
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()


def keys_in_stream(bucket: str, stream: int, streams: int, n: int) -> list[str]:
    """``n`` object names whose index shard belongs to collector stream ``stream``."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        key = f"obj-{i:06d}"
        if keys.shard_of(bucket, key, INDEX_SHARDS) % streams == stream:
            out.append(key)
        i += 1
    return out


def usage_objects(fleet: Fleet, bucket: str) -> int:
    doc = fleet.get(0, "/_/usage?" + urllib.parse.urlencode({"bucket": bucket}))
    return sum(int(b["objects"]) for b in doc["buckets"] if b["bucket"] == bucket)


def test_usage_counts_a_busy_stream_while_the_load_goes_on(
    ceph_lab: Lab, s3_client: Any, usage_fleet: UsageFleet
) -> None:
    """One partitioned `serve` (4 collector streams) with `[usage] enabled`; a client writes new
    objects whose index shards are all in stream 1 (a few hot keys, or an index with fewer
    shards than streams). While the load goes on, `logs cat` reads the records (the readers'
    bound moves); the usage consumer, which reads up to the watermark's ``last_object``, must
    count them too, not only once the load stops."""
    fleet, s3 = usage_fleet, s3_client
    bucket = f"sr-busy-{fleet.ns[-10:]}"
    s3.create_bucket(Bucket=bucket)
    fleet.buckets = [bucket]
    fleet.write_configs()
    fleet.start(0)
    fleet.wait_api(0)
    names = keys_in_stream(bucket, 1, fleet.streams, 3000)
    stop = threading.Event()
    written: list[str] = []

    def load(mine: list[str]) -> None:
        for name in mine:
            if stop.is_set():
                return
            s3.put_object(Bucket=bucket, Key=name, Body=b"x" * 10)
            written.append(name)

    # Enough writers that every pass of stream 1 has records.
    workers = [threading.Thread(target=load, args=(names[t::WRITERS],), daemon=True) for t in range(WRITERS)]
    t0 = time.monotonic()
    for worker in workers:
        worker.start()
    logs = S3Target(fleet.log_bucket, f"{LOG_PREFIX}/", client=s3)
    read_by_logs_cat = counted = reachable = 0
    try:
        # Until `logs cat` has read 600 of the load's records (many collector rounds and usage
        # polls at this pace), or the usage consumer counts some.
        while any(w.is_alive() for w in workers) and read_by_logs_cat < 600 and counted == 0:
            time.sleep(0.5)
            fleet.check_running()
            read_by_logs_cat = sum(1 for r in read_records(logs) if r.bucket == bucket and not r.is_bucket_op)
            reachable = sum(1 for _ in committed_objects(logs, None))
            counted = usage_objects(fleet, bucket)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    wm = watermark_doc(s3, fleet.log_bucket)
    consumer = fleet.get(0, "/_/status").get("consumers", {}).get("usage")
    print(f"\nbusy stream ({ceph_lab.release}): {len(written)} PUTs in {time.monotonic() - t0:.1f}s; "
          f"`logs cat` read {read_by_logs_cat} records, the consumers could reach {reachable} objects, "
          f"usage counted {counted} objects; watermark {wm}; usage consumer {consumer}")  # fmt: skip
    assert read_by_logs_cat > 0, f"the readers' bound never moved\n{fleet.log_tail()}"
    assert counted > 0, (
        f"`logs cat` read {read_by_logs_cat} records of the load, but the usage consumer counted none "
        f"while the load went on: the watermark's last_object {wm.get('last_object')!r} (the consumers' "
        f"upper end) stays below every stream 1 object (readable_until_us {wm.get('readable_until_us')}); usage consumer: {consumer}\n{fleet.log_tail()}"
    )
