"""Figure group ``usage`` (issue 18, UTAPI.3): how fast the usage consumer turns committed change
logs into per-bucket totals and interval series, against the reader alone.

* ``usage_records_per_s``: N records (200,000 at scale 1; 20,000 with --quick) in log objects of
  10,000 records (zstd, as the collector writes them) in a bucket of the lab's radosgw: writes
  (overwrites among them), deletes, delete markers and version deletes over 200 buckets of 500
  keys, record times spread over two hours. Ours: a ``UsageConsumer`` under its
  ``ConsumerRunner`` on the lab's RADOS store (16 state shards, 5-minute intervals, a fresh
  namespace each repetition: every object read, every shard read, computed and written with its
  guard, the checkpoint committed). The baseline: ``read_object`` of the same log objects, every
  record parsed, nothing else (the floor any consumer pays). Repetitions interleaved.
"""

from __future__ import annotations

import random
import threading
import time

import orjson

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.usage.consumer import UsageConsumer, UsageState
from changelog.consumers.usage.model import Layout
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import encode_object, encode_watermark, log_name, rfc3339_us, watermark_name
from changelog.pipeline.reader import read_object
from changelog.pipeline.targets import S3Target
from tools.bench.common import Bench, Figure, interleaved, median, remove_bucket, say, wipe_namespace

GROUP = "usage"
PER_OBJECT = 10_000
BUCKETS = 200
KEYS = 500
SPAN_S = 2 * 3600
STATE_SHARDS = 16
INTERVAL_S = 300


def records(n: int, *, seed: int, t0_us: int) -> list[dict[str, object]]:
    """``n`` change-log lines: 70% writes, 15% deletes, 10% delete markers, 5% version deletes,
    in mutation-time order over ``SPAN_S``."""
    rnd = random.Random(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        t = t0_us + i * SPAN_S * 1_000_000 // n
        b = rnd.randrange(BUCKETS)
        key = f"k/{rnd.randrange(KEYS):04d}"
        versioned = b % 4 == 0
        r = rnd.random()
        op = "write" if r < 0.7 else "delete" if r < 0.85 else "delete_marker" if versioned else "delete"
        version = f"v{rnd.randrange(3)}" if versioned and op != "delete_marker" else None
        out.append({
            "v": 1, "id": f"{i:032x}", "time": rfc3339_us(t), "op": op, "tenant": None, "bucket": f"b{b:03d}",
            "key": key, "version_id": version if op != "delete_marker" else f"m{i}",
            "size": rnd.randrange(1, 1 << 20) if op == "write" else None, "etag": "e" if op == "write" else None,
            "seq": f"{i:016d}", "baseline": False, "recorded": rfc3339_us(t),
        })  # fmt: skip
    return out


def write_logs(target: S3Target, lines: list[dict[str, object]], *, t0_us: int) -> list[str]:
    """The lines as log objects of ``PER_OBJECT`` and the watermark after the last one."""
    names = []
    for seq, start in enumerate(range(0, len(lines), PER_OBJECT), 1):
        name = log_name("", t0_us + seq, seq, "zstd")
        body = encode_object([orjson.dumps(x) + b"\n" for x in lines[start : start + PER_OBJECT]], "zstd")
        target.put(name, body)
        names.append(name)
    now = int(time.time() * 1_000_000)
    target.put(watermark_name(""), encode_watermark(complete_until_us=now, last_object=names[-1], updated_us=now))
    return names


def run(bench: Bench) -> list[Figure]:
    n = bench.size(200_000, 20_000, minimum=PER_OBJECT)
    reps = bench.reps(3, 2)
    bucket = bench.name("usage-logs")
    s3 = bench.s3()
    s3.create_bucket(Bucket=bucket)
    bench.on_exit(f"bucket {bucket}", lambda: remove_bucket(s3, bucket))
    target = S3Target(bucket, client=s3)
    t0_us = int((time.time() - SPAN_S) * 1_000_000)
    names = write_logs(target, records(n, seed=18, t0_us=t0_us), t0_us=t0_us)
    say(f"usage: {n} records in {len(names)} log objects")

    def ours(i: int) -> float:
        ns = bench.name(f"usage-{i}")
        bench.on_exit(f"namespace {ns}", lambda: wipe_namespace(bench, ns))
        store = bench.store(ns)
        try:
            index = ChangeIndex(store, shards=1)
            layout = Layout.make(index.prefix, shards=STATE_SHARDS, interval=INTERVAL_S)
            consumer = UsageConsumer(UsageState(store, layout), target, interval=0.01)
            runner = ConsumerRunner(index, consumer, lease_ttl=60)
            assert runner.acquire()
            t = time.perf_counter()
            while runner.checkpoint().after != names[-1]:
                runner.step(threading.Event())
            elapsed = time.perf_counter() - t
            runner.step_down()
        finally:
            store.close()
        say(f"usage rep {i}: ours {n / elapsed:,.0f} records/s")
        return n / elapsed

    def reader(i: int) -> float:
        t = time.perf_counter()
        got = sum(len(list(read_object(target, name))) for name in names)
        elapsed = time.perf_counter() - t
        assert got == n
        say(f"usage rep {i}: reader {n / elapsed:,.0f} records/s")
        return n / elapsed

    mine, base = interleaved(reps, ours, reader)
    return [
        Figure(
            group=GROUP,
            name="usage_records_per_s",
            unit="records/s",
            value=median(mine),
            baseline=median(base),
            baseline_name="read_object of the same log objects (the reader alone)",
            params={"records": n, "objects": len(names), "buckets": BUCKETS, "state_shards": STATE_SHARDS,
                    "interval_s": INTERVAL_S, "reps": reps},  # fmt: skip
            summary=f"usage: {n} records over {BUCKETS} buckets into {STATE_SHARDS} state shards; "
            f"ours {median(mine):,.0f} records/s, the reader alone {median(base):,.0f}",
        )
    ]
