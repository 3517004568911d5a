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

from changelog.pipeline import keys
from changelog.pipeline.logformat import parse_log_name
from changelog.pipeline.reader import LogReader, read_records
from changelog.pipeline.targets import S3Target
from tests.integration.serving import LOG_PREFIX, Fleet, watermark_doc
from tests.lab import Lab

# rgw-changelog's own behaviour: CI runs it on Pacific only (the radosgw facts it needs are
# covered on every release by the conformance and follower suites).
pytestmark = [pytest.mark.ceph, pytest.mark.release_neutral]

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


def test_the_consumers_upper_end_covers_what_logs_cat_reads_under_load(
    ceph_lab: Lab, s3_client: Any, usage_fleet: UsageFleet
) -> None:
    """One partitioned `serve` (4 collector streams) with `[usage] enabled`; clients write new
    objects whose index shards are all in stream 1 (a few hot keys, or an index with fewer
    shards than streams). While the load goes on, the watermark is sampled with the log
    objects committed: `logs cat` reads every object whose cutoff is at or below its
    ``readable_until_us``; the consumers (usage here; replication, lifecycle, the backup's
    ``until``) read up to its ``last_object``. No object `logs cat` can read may lie above
    ``last_object``, or the consumers stand still while the load lasts."""
    fleet, s3 = usage_fleet, s3_client
    bucket = f"sr-busy-{fleet.ns[-10:]}"
    s3.create_bucket(Bucket=bucket)
    fleet.buckets = [bucket]
    fleet.write_configs()
    fleet.start(0)
    fleet.wait_api(0)
    names = keys_in_stream(bucket, 1, fleet.streams, 2400)
    stop = threading.Event()
    written: list[str] = []

    def load(mine: list[str]) -> None:
        for name in mine:
            if stop.is_set():
                return
            s3.put_object(Bucket=bucket, Key=name, Body=b"x" * 10)
            written.append(name)

    workers = [threading.Thread(target=load, args=(names[t::WRITERS],), daemon=True) for t in range(WRITERS)]
    t0 = time.monotonic()
    for worker in workers:
        worker.start()
    # (t, last_object, readable objects above it, usage count, readable objects)
    samples: list[tuple[float, str | None, list[str], int, int]] = []
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(0.5)
            fleet.check_running()
            wm = watermark_doc(s3, fleet.log_bucket)  # read first: what it bounds is listed after
            bound, last = wm.get("readable_until_us"), wm.get("last_object")
            if not bound:
                continue
            readable = [o["Key"][len(LOG_PREFIX) + 1 :] for o in list_all(s3, fleet.log_bucket)]
            readable = [n for n in readable if (p := parse_log_name(n)) is not None and p.cutoff_us <= bound]
            above = [n for n in readable if last is None or n > last]
            samples.append((time.monotonic() - t0, last, above, usage_objects(fleet, bucket), len(readable)))
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    bad = [s for s in samples if s[2]]
    print(f"\nbusy stream ({ceph_lab.release}): {len(written)} PUTs in {time.monotonic() - t0:.1f}s; "
          f"{len(samples)} samples, {len(bad)} with readable objects above last_object; (readable objects, "
          f"usage count): {[(s[4], s[3]) for s in samples]}")  # fmt: skip
    assert samples, f"the readers' bound never moved\n{fleet.log_tail()}"
    assert not bad, (
        f"{len(bad)} of {len(samples)} samples during the load: objects `logs cat` reads lie above the "
        f"watermark's last_object, where every consumer stops; first at {bad[0][0]:.1f}s: last_object "
        f"{bad[0][1]!r}, {len(bad[0][2])} readable objects above it (e.g. {bad[0][2][:2]}), usage "
        f"counted {bad[0][3]} objects of {len(written)} PUTs by the end"
    )


def list_all(s3: Any, bucket: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{LOG_PREFIX}/"):
        out += page.get("Contents", [])
    return out


class SwitchFleet(UsageFleet):
    """A ``UsageFleet`` whose ``[scale] partitioned`` the test switches between restarts."""

    partitioned = True
    lab_s3: Any = None

    def _config(self, port: int) -> str:
        conf = super()._config(port)
        return conf if self.partitioned else conf.replace("partitioned = true", "partitioned = false")


def test_switching_modes_with_the_load_going_on_every_write_read_once(
    ceph_lab: Lab, s3_client: Any, tmp_path: Path
) -> None:
    """An operator switches an index from unpartitioned to partitioned (two `serve`s) and back
    while clients write, the unpartitioned `serve` SIGKILLed at the switch (whatever it was
    committing is left pending). A checkpointed reader (one name, as every consumer) reads on
    all along, and the usage consumer counts. At the end every write is read once by it, the
    logs hold it once, and usage counts every object."""
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:10]
    s3 = s3_client
    log_bucket, bucket = f"sr-logs-{tag}", f"sr-sw-{tag}"
    s3.create_bucket(Bucket=log_bucket)
    s3.create_bucket(Bucket=bucket)
    fleet = SwitchFleet(ceph_lab, tmp_path, f"test-sswitch-{tag}", log_bucket, [bucket], size=2)
    fleet.lab_s3 = s3
    logs = S3Target(log_bucket, f"{LOG_PREFIX}/", client=s3)
    reader = LogReader(logs)
    read: list[str] = []
    stop = threading.Event()
    written: list[str] = []

    def load(t: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{t}-{i:06d}"  # new keys only: one record each
            s3.put_object(Bucket=bucket, Key=key, Body=b"y" * 7)
            written.append(key)
            i += 1

    def read_on(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            read.extend(r.key or "" for _, r in reader.records() if mine(r, bucket))
            time.sleep(0.3)

    workers = [threading.Thread(target=load, args=(t,), daemon=True) for t in range(3)]
    try:
        fleet.partitioned = False
        fleet.write_configs()
        fleet.start(0)
        fleet.wait_api(0)
        wait_complete_until(fleet, time.time())  # the follower's first listing is done
        for w in workers:
            w.start()
        read_on(8.0)
        fleet.kill(0)  # mid-work: a commit may be left pending
        fleet.partitioned = True
        fleet.write_configs()
        fleet.start(0)
        fleet.start(1)
        read_on(15.0)
        fleet.terminate_all()
        fleet.partitioned = False
        fleet.write_configs()
        fleet.start(0)
        fleet.wait_api(0)
        read_on(8.0)
        stop.set()
        for w in workers:
            w.join(60)
        t_end = time.time()
        deadline = time.monotonic() + 120
        while int(watermark_doc(s3, log_bucket).get("complete_until_us", 0)) < int((t_end + 1) * 1e6):
            assert time.monotonic() < deadline, (
                f"the watermark did not pass the load's end\n{fleet.log_tail()}"
            )
            time.sleep(0.5)
        fleet.post(0, "/_/flush")
        read_on(3.0)
        counted = usage_objects(fleet, bucket)
        in_logs = [r.key for r in read_records_all(logs) if mine(r, bucket)]
    finally:
        stop.set()
        fleet.kill_all()
        store = RadosStore(
            conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=fleet.ns, keyring=ceph_lab.keyring or None
        )
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()
    print(f"\nswitch ({ceph_lab.release}): {len(written)} PUTs; the checkpointed reader read {len(read)}, "
          f"the logs hold {len(in_logs)} records, usage counts {counted}")  # fmt: skip
    assert sorted(in_logs) == sorted(written), "the logs do not hold every write exactly once"
    missed = sorted(set(written) - set(read))
    assert not missed and len(read) == len(set(read)), (
        f"the checkpointed reader missed {len(missed)} writes (e.g. {missed[:3]}) or read one twice "
        f"({len(read) - len(set(read))})"
    )
    assert counted == len(set(written)), f"usage counts {counted} objects, {len(set(written))} written"


def wait_complete_until(fleet: SwitchFleet, t: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while int(watermark_doc(fleet.lab_s3, fleet.log_bucket).get("complete_until_us", 0)) < int(t * 1e6):
        assert time.monotonic() < deadline, f"the watermark did not pass {t}\n{fleet.log_tail()}"
        time.sleep(0.5)


def mine(r: Any, bucket: str) -> bool:
    """A write of the load (the follower's first listing of the new bucket may also carry
    baseline records of the keys written meanwhile: state, not mutations)."""
    return bool(r.bucket == bucket and not r.is_bucket_op and not r.baseline)


def read_records_all(logs: S3Target) -> list[Any]:
    return list(read_records(logs))


def test_the_consumers_upper_end_under_a_steady_write_hook_feed(
    ceph_lab: Lab, s3_client: Any, usage_fleet: UsageFleet
) -> None:
    """As above, with the records fed steadily by the write hook (``ChangeIndex.record_many``
    on the lab's RADOS index, as an embedded hook or `rgw-changelog record` does) beside the
    follower, so that every pass of stream 1 has records (the follower alone records in bursts
    seconds apart on this lab: passes in between are empty and let ``last_object`` catch up).
    No object `logs cat` can read may lie above the watermark's ``last_object``."""
    from changelog.pipeline.backends.rados import RadosStore
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.mutation import Mutation, Op

    fleet, s3 = usage_fleet, s3_client
    bucket = f"sr-hook-{fleet.ns[-10:]}"
    s3.create_bucket(Bucket=bucket)
    fleet.buckets = [bucket]
    fleet.write_configs()
    fleet.start(0)
    fleet.wait_api(0)
    store = RadosStore(
        conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=fleet.ns, keyring=ceph_lab.keyring or None
    )
    index = ChangeIndex(store, shards=INDEX_SHARDS, create=False)
    names = keys_in_stream(bucket, 1, fleet.streams, 4000)
    stop = threading.Event()
    fed: list[str] = []

    def feed() -> None:
        i = 0
        while not stop.is_set() and i < len(names):
            batch = names[i : i + 20]
            index.record_many([
                Mutation(bucket=bucket, key=k, op=Op.WRITE, mtime_ns=time.time_ns(), source="review-hook",
                         position=f"{i + j:020d}", seq=f"{i + j:020d}", size=5, etag="e")
                for j, k in enumerate(batch)
            ])  # fmt: skip
            fed.extend(batch)
            i += len(batch)
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    t0 = time.monotonic()
    feeder.start()
    samples: list[tuple[float, str | None, list[str], int, int]] = []
    try:
        while feeder.is_alive() and time.monotonic() - t0 < 20:
            time.sleep(0.5)
            fleet.check_running()
            wm = watermark_doc(s3, fleet.log_bucket)
            bound, last = wm.get("readable_until_us"), wm.get("last_object")
            if not bound:
                continue
            readable = [o["Key"][len(LOG_PREFIX) + 1 :] for o in list_all(s3, fleet.log_bucket)]
            readable = [n for n in readable if (p := parse_log_name(n)) is not None and p.cutoff_us <= bound]
            above = [n for n in readable if last is None or n > last]
            samples.append((time.monotonic() - t0, last, above, usage_objects(fleet, bucket), len(readable)))
    finally:
        stop.set()
        feeder.join(60)
        store.close()
    bad = [s for s in samples if s[2]]
    print(f"\nwrite hook feed ({ceph_lab.release}): {len(fed)} records in {time.monotonic() - t0:.1f}s; "
          f"{len(samples)} samples, {len(bad)} with readable objects above last_object; (readable objects, "
          f"above last_object, usage count): {[(s[4], len(s[2]), s[3]) for s in samples]}")  # fmt: skip
    assert samples, f"the readers' bound never moved\n{fleet.log_tail()}"
    assert not bad, (
        f"{len(bad)} of {len(samples)} samples during the feed: objects `logs cat` reads lie above the "
        f"watermark's last_object, where every consumer stops; e.g. at {bad[-1][0]:.1f}s: last_object "
        f"{bad[-1][1]!r}, {len(bad[-1][2])} of {bad[-1][4]} readable objects above it, usage counted "
        f"{bad[-1][3]} of {len(fed)} records fed"
    )
