"""Figure 2, ``drain``: the collector (index -> JSON Lines -> radosgw bucket -> fenced trim) against
the physical limit on the same data, and its peak memory while draining a large backlog.

* **drain throughput**: a backlog of N entries in a 16-shard RADOS index. The baseline reads the
  same entries with plain ``get_omap_vals`` pages (same page size, shard after shard), encodes
  each with orjson (the stored msgpack map dumped as one JSON line: short field names, no id,
  no RFC 3339 times, so ~25% fewer bytes than our lines) and uploads all the bytes in one PUT:
  no lease, no floor, no commit record, no trim. Ours is one ``Collector.flush()`` pass
  with the default ``[collector]`` settings (8 MiB multipart parts, objects rolled every 100k
  entries), trim included. The baseline goes first in each repetition (ours consumes the
  backlog); repetitions alternate with a fresh backlog.
* **drain peak RSS**: a backlog of >= 1M entries (filled with batched ``record_many``) drained
  by a child process; its VmHWM is the figure. The baseline is the same physical-limit pipeline
  in a child process of its own, on the same backlog: it must hold the whole object in memory
  to send it in one PUT.

Run as ``python -m tools.bench.drain child {drain,baseline} SPEC`` it is that child.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import msgpack
import orjson

from changelog.config import CollectorConfig
from changelog.pipeline import keys, logformat
from changelog.pipeline.collector import Collector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.targets import S3Target
from tools.bench.common import (
    REPO,
    Bench,
    Figure,
    RawOmap,
    empty_bucket,
    gc_process,
    median,
    remove_bucket,
    say,
    wipe_namespace,
)
from tools.bench.record import SHARDS, Workload

GROUP = "drain"
FILL_BATCH = 16_000
LOG_PREFIX = "logs"


def fill(index: ChangeIndex, work: Workload, n: int) -> float:
    """Record ``n`` entries in batches; records/s."""
    t0 = time.perf_counter()
    left = n
    while left > 0:
        k = min(FILL_BATCH, left)
        index.record_many(work.batch(k))
        left -= k
    return n / (time.perf_counter() - t0)


def physical_limit(raw: RawOmap, shards: int, s3: Any, bucket: str, name: str) -> tuple[int, int]:
    """Read every data entry of every shard, encode it, PUT all the bytes at once: (entries, bytes)."""
    body = bytearray()
    n = 0
    dumps, unpackb, newline = orjson.dumps, msgpack.unpackb, orjson.OPT_APPEND_NEWLINE
    for shard in range(shards):
        for _, value in raw.scan(f"bench.shard.{shard:04d}", keys.DATA_PREFIX):
            body += dumps(unpackb(value, raw=False), option=newline)
            n += 1
    s3.put_object(Bucket=bucket, Key=name, Body=body)
    return n, len(body)


def _collector(index: ChangeIndex, s3: Any, bucket: str) -> Collector:
    # Default [collector] settings but no settle window (flush) and a TTL that outlives any pass.
    return Collector(index, S3Target(bucket, LOG_PREFIX, client=s3), CollectorConfig(lease_ttl=60.0))


def _throughput(bench: Bench, s3: Any, bucket: str) -> Figure:
    ns = bench.name("drain")
    store = bench.store(ns)
    raw = bench.raw(ns)
    n = bench.size(100_000, 20_000, minimum=1000)
    reps = bench.reps()
    try:
        index = ChangeIndex(store, shards=SHARDS, prefix="bench")
        work = Workload(bench.tag)
        collector = _collector(index, s3, bucket)
        collector.flush()  # takes the control lease, runs GC of old uploads once
        ours: list[float] = []
        theirs: list[float] = []
        sizes: dict[str, int] = {}

        def rep(i: int) -> None:
            rate = fill(index, work, n)
            say(f"drain rep {i + 1}/{reps}: backlog of {n} entries filled at {rate:,.0f}/s")
            t0 = time.perf_counter()
            got, size = physical_limit(raw, SHARDS, s3, bucket, f"baseline-{i}.jsonl")
            theirs.append(n / (time.perf_counter() - t0))
            sizes["baseline_bytes"] = size
            if got != n:
                raise RuntimeError(f"baseline read {got} entries, expected {n}")
            t0 = time.perf_counter()
            result = collector.flush()
            ours.append(n / (time.perf_counter() - t0))
            if result.entries != n:
                raise RuntimeError(f"collector drained {result.entries} entries, expected {n}")
            sizes["log_objects"] = len(result.objects)
            sizes["ours_bytes"] = sum(
                o["Size"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=LOG_PREFIX + "/").get("Contents", [])
                if o["Key"].endswith(".jsonl")
            )
            say(f"  baseline {theirs[-1]:,.0f}/s, ours {ours[-1]:,.0f}/s")
            empty_bucket(s3, bucket)

        # Each repetition measures both on a fresh backlog, the baseline first (ours consumes it).
        for i in range(reps):
            rep(i)
        collector.close()
    finally:
        raw.close()
        store.close()
        wipe_namespace(bench, ns)
    return Figure(
        GROUP,
        "drain_throughput",
        "entries/s",
        median(ours),
        median(theirs),
        "raw omap read + orjson + one PUT",
        goal=("ratio", ">=", 0.7),
        params={
            "backlog": n,
            "shards": SHARDS,
            "encoder": logformat.ENCODER,
            "reps": reps,
            "page": 1000,
            "roll_entries": 100_000,
            "part_bytes": 8 << 20,
            **sizes,
            "ours_runs": [round(x) for x in ours],
            "baseline_runs": [round(x) for x in theirs],
        },
    )


def _child(bench: Bench, mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.drain", "child", mode, json.dumps(spec)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"drain child {mode} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _rss(bench: Bench, s3: Any, bucket: str) -> Figure:
    ns = bench.name("drain-rss")
    store = bench.store(ns)
    n = bench.size(1_000_000, 100_000, minimum=1000)
    try:
        index = ChangeIndex(store, shards=SHARDS, prefix="bench")
        say(f"drain rss: filling a backlog of {n:,} entries")
        rate = fill(index, Workload(bench.tag), n)
        say(f"  filled at {rate:,.0f} records/s")
        spec = {**bench.lab.env(), "namespace": ns, "bucket": bucket, "entries": n}
        say("drain rss: baseline child (read all + encode + one PUT)")
        base = _child(bench, "baseline", spec)
        empty_bucket(s3, bucket)
        say("drain rss: collector child")
        ours = _child(bench, "drain", spec)
        empty_bucket(s3, bucket)
    finally:
        store.close()
        wipe_namespace(bench, ns)
    params: dict[str, Any] = {
        "backlog": n,
        "shards": SHARDS,
        "encoder": logformat.ENCODER,
        "ours_startup_mb": round(ours["startup_kb"] / 1024, 1),
        "ours_seconds": round(ours["seconds"], 2),
        "ours_entries_per_s": round(n / ours["seconds"]),
        "ours_log_objects": ours.get("objects"),
        "baseline_seconds": round(base["seconds"], 2),
        "baseline_entries_per_s": round(n / base["seconds"]),
        "baseline_bytes": base.get("bytes"),
        "fill_records_per_s": round(rate),
    }
    if n < 1_000_000:
        params["note"] = f"backlog of {n:,} entries, below the 1M of the goal (--quick or --scale < 1)"
    return Figure(
        GROUP,
        "drain_peak_rss",
        "MB",
        ours["hwm_kb"] / 1024,
        base["hwm_kb"] / 1024,
        "raw read + encode + one PUT, same backlog",
        higher_is_better=False,
        goal=("value", "<", 200),
        params=params,
    )


def run(bench: Bench) -> list[Figure]:
    s3 = bench.s3()
    bucket = bench.name("drain")
    s3.create_bucket(Bucket=bucket)
    try:
        figs = [_throughput(bench, s3, bucket)]
        figs.append(_rss(bench, s3, bucket))
    finally:
        remove_bucket(s3, bucket)
        gc_process(bench)
    return figs


# --------------------------------------------------------------------------- the child


def _child_main(mode: str, spec: dict[str, Any]) -> None:
    from changelog.pipeline.backends.rados import RadosStore
    from tools.bench.common import Lab, hwm_kb, lab_from_env, rss_now_kb

    lab: Lab | None = lab_from_env(spec)
    assert lab is not None
    bench = Bench(lab=lab, tag="child", tmp=REPO)
    s3 = bench.s3()
    startup = rss_now_kb()
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if mode == "baseline":
        raw = RawOmap(lab, spec["namespace"])
        got, size = physical_limit(raw, SHARDS, s3, spec["bucket"], "baseline-rss.jsonl")
        raw.close()
        out = {"entries": got, "bytes": size}
    else:
        store = RadosStore(conffile=lab.conf, pool=lab.pool, namespace=spec["namespace"], keyring=lab.keyring or None)
        index = ChangeIndex(store, shards=SHARDS, prefix="bench", create=False)
        collector = _collector(index, s3, spec["bucket"])
        result = collector.flush()
        collector.close()
        store.close()
        out = {"entries": result.entries, "objects": len(result.objects)}
    seconds = time.perf_counter() - t0
    if out["entries"] != spec["entries"]:
        raise SystemExit(f"{mode}: {out['entries']} entries, expected {spec['entries']}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {**out, "seconds": seconds, "startup_kb": startup, "hwm_kb": hwm_kb(), "maxrss_kb": usage.ru_maxrss}
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "child" or sys.argv[2] not in ("drain", "baseline"):
        raise SystemExit("usage: python -m tools.bench.drain child {drain,baseline} SPEC")
    _child_main(sys.argv[2], json.loads(sys.argv[3]))
