"""Figure group ``lifecycle`` (issue 20, ILM.1): what applying an expiration policy costs when
the change logs say what is due, against radosgw's own lifecycle listing the bucket.

A bucket of N objects (100,000 at scale 1; 2,000 with --quick) where 1% are due, in two shapes:

* ``prefix``: the rule names the prefix ``due/`` that holds the 1% (one bucket for both sides:
  ours first, then the due objects are written again for radosgw's);
* ``mtime``: the rule covers the whole bucket and the 1% are older than the rest (written
  ``GAP_S`` before them; the day length is picked when each side runs so that exactly the old
  ones are due). Two buckets of the same shape, one per side: a due object cannot be made old
  again.

**Ours**: the objects' write records (as the follower writes them: the ETag, the mtime) in log
objects of ``PER_OBJECT`` in a log bucket; the lifecycle consumer builds its schedule from them on
the lab's RADOS store (timed apart, ``schedule_build_s``: it is paid as writes arrive, not when the
policy runs); then its executor acts on what is due: a HEAD per due object and one DeleteObjects
per 1,000. Counted: its requests (the ``requests`` counter), wall time, and the CPU seconds of
radosgw, the OSD and this process while it runs.

**radosgw's**: a bucket lifecycle configuration with the same rule, then ``radosgw-admin lc
process --bucket`` with ``rgw_lc_debug_interval`` as the day. The work is done in the radosgw-admin
process (a librados client): its CPU is counted with radosgw's and the OSD's. radosgw's own LC
thread stays idle outside its work window (00:00-06:00 by default). Time to finish: until the due
objects are gone.

Both sides must leave exactly the 99% that are not due; the figure checks it.
"""

from __future__ import annotations

import hashlib
import resource
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.lifecycle.consumer import lifecycle_consumer
from changelog.consumers.lifecycle.executor import Executor
from changelog.consumers.lifecycle.rules import parse_lifecycle
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import encode_object, encode_watermark, log_name, rfc3339_us, watermark_name
from changelog.pipeline.targets import S3Target
from tools.bench.common import (
    Bench,
    FastPut,
    Figure,
    lab_pids,
    proc_cpu_s,
    remove_bucket,
    say,
    wipe_namespace,
)

GROUP = "lifecycle"
PER_OBJECT = 10_000  # records per log object, as in the usage figure
DUE_EVERY = 100  # 1% of the objects are due
PREFIX_DAY_S = 5  # the prefix shape's day: the due objects are older than one when the policy runs
# The mtime shape: the old 1% are written this long before the rest, so a day can be picked that
# makes them due and the rest not, for as long as a side takes to run.
GAP_S, GAP_QUICK_S = 60.0, 10.0
# Ours: the schedule is built before the day starts counting for the executor; this covers it.
BUILD_MARGIN_S = 20.0
BODY = b"x" * 100
SCHEDULE_SHARDS = 16


@dataclass
class Side:
    """What one side took to apply the policy."""

    wall_s: float
    cpu: dict[str, float]
    requests: int | None = None  # ours only: radosgw-admin's RADOS ops are not counted
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        """radosgw + OSD + the process that did the lifecycle work (ours: this one; radosgw's:
        radosgw-admin, a child)."""
        c = self.cpu
        return round(
            c.get("radosgw", 0.0) + c.get("osd", 0.0) + c.get("self", 0.0) + c.get("children", 0.0), 2
        )


class Cpu:
    """CPU seconds of radosgw, the OSD, this process and its children between ``start`` and ``stop``."""

    def __init__(self, bench: Bench) -> None:
        self.pids = lab_pids(bench.lab)
        self.t0: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {name: proc_cpu_s(pid) or 0.0 for name, pid in self.pids.items()}
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        out["self"] = me.ru_utime + me.ru_stime
        out["children"] = kids.ru_utime + kids.ru_stime
        return out

    def start(self) -> None:
        self.t0 = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        return {k: round(now[k] - self.t0.get(k, 0.0), 2) for k in now}


def seed(bench: Bench, bucket: str, names: list[str]) -> dict[str, int]:
    """PUT every key (FastPut, 16 connections); returns each key's time just before its PUT, in
    µs: a lower bound of its mtime, within a second of the whole second HEAD answers."""
    fast = FastPut(bench.lab)
    before: dict[str, int] = {}
    lock = threading.Lock()

    def one(key: str) -> None:
        t = int(time.time() * 1_000_000)
        fast.put(bucket, key, BODY)
        with lock:
            before[key] = t

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, names))
    return before


def write_records(target: S3Target, bucket: str, mtimes: dict[str, int]) -> list[str]:
    """One write record per object, as the follower writes them, in log objects and a watermark."""
    etag = hashlib.md5(BODY).hexdigest()  # noqa: S324 - S3's ETag of a single-part object
    lines = []
    for i, (key, t) in enumerate(sorted(mtimes.items(), key=lambda kv: kv[1])):
        lines.append({
            "v": 1, "id": f"{i:032x}", "time": rfc3339_us(t), "op": "write", "tenant": None, "bucket": bucket,
            "key": key, "version_id": None, "size": len(BODY), "etag": etag, "mtime": rfc3339_us(t),
            "storage_class": "STANDARD", "seq": f"{i:016d}", "baseline": False, "recorded": rfc3339_us(t),
        })  # fmt: skip
    names = []
    t0 = min(mtimes.values())
    for seq, start in enumerate(range(0, len(lines), PER_OBJECT), 1):
        name = log_name("", t0 + seq, seq, "zstd")
        target.put(
            name, encode_object([orjson.dumps(x) + b"\n" for x in lines[start : start + PER_OBJECT]], "zstd")
        )
        names.append(name)
    now = int(time.time() * 1_000_000)
    target.put(
        watermark_name(""), encode_watermark(complete_until_us=now, last_object=names[-1], updated_us=now)
    )
    return names


def count(s3: Any, bucket: str, prefix: str = "") -> int:
    return sum(
        len(page.get("Contents", []))
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )


def ours(
    bench: Bench, bucket: str, mtimes: dict[str, int], *, prefix: str, day_s: float, due_at: float
) -> Side:
    """Build the schedule from the records, wait until ``due_at`` (epoch s), run the executor."""
    s3 = bench.s3()
    logs = bench.name(f"lc-logs-{prefix.strip('/') or 'all'}")
    s3.create_bucket(Bucket=logs)
    bench.on_exit(f"bucket {logs}", lambda: remove_bucket(s3, logs))
    target = S3Target(logs, client=s3)
    names = write_records(target, bucket, mtimes)
    section = parse_lifecycle({"day_seconds": day_s, "shards": SCHEDULE_SHARDS, "batch": 1000,
                               "rules": [{"bucket": bucket, "prefix": prefix, "expire_days": 1}]})  # fmt: skip
    ns = bench.name(f"lifecycle-{prefix.strip('/') or 'all'}")
    bench.on_exit(f"namespace {ns}", lambda: wipe_namespace(bench, ns))
    store = bench.store(ns)
    try:
        index = ChangeIndex(store, shards=1)
        consumer = lifecycle_consumer(section, index, target, None)  # the schedule alone first
        runner = ConsumerRunner(index, consumer, lease_ttl=600)
        assert runner.acquire()
        t = time.perf_counter()
        while runner.checkpoint().after != names[-1]:
            runner.step(threading.Event())
        build_s = time.perf_counter() - t
        runner.step_down()
        say(f"lifecycle: schedule of {len(mtimes)} objects built in {build_s:.1f}s")
        time.sleep(max(0.0, due_at - time.time()))
        executor = Executor(consumer.schedule, bench.s3(), batch=1000)
        cpu = Cpu(bench)
        cpu.start()
        t = time.perf_counter()
        while executor.run_batch() > 0:
            pass
        wall = time.perf_counter() - t
        used = cpu.stop()
    finally:
        store.close()
    counts = executor.snapshot()
    say(f"lifecycle: ours {counts['requests']} requests in {wall:.2f}s, CPU {used}")
    return Side(
        wall, used, counts["requests"], {"schedule_build_s": round(build_s, 2), "expired": counts["expired"]}
    )


def radosgw(bench: Bench, bucket: str, *, prefix: str, day_s: float, done: Any) -> Side:
    """The same rule as a bucket lifecycle configuration, ``radosgw-admin lc process --bucket``
    with ``rgw_lc_debug_interval = day_s``, until ``done()``."""
    s3: Any = bench.s3()  # the rule as a plain dict
    rule: dict[str, Any] = {
        "ID": "bench",
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "Expiration": {"Days": 1},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
    tool = Path(bench.lab.bin or Path(bench.lab.dir) / "bin") / "radosgw-admin"
    cmd = [str(tool)] if tool.is_file() else ["radosgw-admin", "--conf", bench.lab.conf]
    # A whole number of seconds: the option is an integer.
    cmd += ["lc", "process", f"--bucket={bucket}", f"--rgw_lc_debug_interval={int(day_s)}"]
    cpu = Cpu(bench)
    cpu.start()
    t = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL, check=False
    )
    process_s = time.perf_counter() - t
    used = cpu.stop()
    used.pop("self")  # this process only waited; radosgw-admin (a child) did the work
    if proc.returncode != 0:
        raise RuntimeError(f"radosgw-admin lc process failed: {proc.stderr.strip()[-500:]}")
    # Finished when the due objects are gone: lc process deletes them before it returns, so the
    # first check normally passes; a listing of the bucket is not counted in the time.
    first = True
    while True:
        checked = time.perf_counter()
        if done():
            wall = process_s if first else checked - t
            break
        assert checked - t < 600, f"radosgw's LC left due objects in {bucket}"
        first = False
        time.sleep(0.5)
    say(f"lifecycle: radosgw's LC done in {wall:.2f}s (lc process {process_s:.2f}s), CPU {used}")
    return Side(wall, used, None, {"lc_process_s": round(process_s, 2)})


def prefix_shape(bench: Bench, n: int) -> tuple[Side, Side]:
    s3 = bench.s3()
    bucket = bench.name("lc-prefix")
    s3.create_bucket(Bucket=bucket)
    bench.on_exit(f"bucket {bucket}", lambda: remove_bucket(s3, bucket))
    names = [f"due/{i:07d}" if i % DUE_EVERY == 0 else f"keep/{i:07d}" for i in range(n)]
    due = [k for k in names if k.startswith("due/")]
    mtimes = seed(bench, bucket, names)
    newest = max(mtimes.values()) / 1e6
    mine = ours(bench, bucket, mtimes, prefix="due/", day_s=PREFIX_DAY_S, due_at=newest + PREFIX_DAY_S + 1)
    assert mine.extra["expired"] == len(due), mine
    assert count(s3, bucket, "due/") == 0 and count(s3, bucket, "keep/") == n - len(due)
    again = seed(bench, bucket, due)
    time.sleep(max(0.0, max(again.values()) / 1e6 + PREFIX_DAY_S + 1 - time.time()))
    theirs = radosgw(
        bench, bucket, prefix="due/", day_s=PREFIX_DAY_S, done=lambda: count(s3, bucket, "due/") == 0
    )
    assert count(s3, bucket, "keep/") == n - len(due)
    return mine, theirs


def mtime_shape(bench: Bench, n: int) -> tuple[Side, Side]:
    s3 = bench.s3()
    buckets = [bench.name("lc-mtime-ours"), bench.name("lc-mtime-rgw")]
    old = [f"k/{i:07d}" for i in range(0, n, DUE_EVERY)]
    new = [f"k/{i:07d}" for i in range(n) if i % DUE_EVERY]
    olds: list[dict[str, int]] = []
    for b in buckets:
        s3.create_bucket(Bucket=b)
        bench.on_exit(f"bucket {b}", lambda b=b: remove_bucket(s3, b))  # type: ignore[misc]
        olds.append(seed(bench, b, old))
    time.sleep(GAP_QUICK_S if bench.quick else GAP_S)
    news = [seed(bench, b, new) for b in buckets]
    # Ours: the day fixed before the schedule is built, so the old ones are due BUILD_MARGIN_S
    # from now; the new ones are at least the gap later.
    old_end = max(olds[0].values()) / 1e6
    assert min(news[0].values()) / 1e6 - old_end >= (GAP_QUICK_S if bench.quick else GAP_S)
    day = time.time() + BUILD_MARGIN_S - old_end
    mine = ours(bench, buckets[0], {**olds[0], **news[0]}, prefix="", day_s=day, due_at=old_end + day + 0.5)
    assert mine.extra["expired"] == len(old), mine
    assert count(s3, buckets[0]) == len(new)
    # radosgw's: the day ends now for the old ones (whole seconds).
    day_r = int(time.time() - max(olds[1].values()) / 1e6) + 1
    theirs = radosgw(
        bench, buckets[1], prefix="", day_s=day_r, done=lambda: count(s3, buckets[1]) == len(new)
    )
    assert count(s3, buckets[1]) == len(new)
    return mine, theirs


def figures(shape: str, n: int, mine: Side, theirs: Side) -> list[Figure]:
    params: dict[str, Any] = {"shape": shape, "objects": n, "due": n // DUE_EVERY, "requests": mine.requests,
                              "cpu_ours": mine.cpu, "cpu_radosgw_lc": theirs.cpu, **mine.extra, **theirs.extra,
                              "schedule_shards": SCHEDULE_SHARDS}  # fmt: skip
    return [
        Figure(
            group=GROUP, name=f"lifecycle_{shape}_apply_s", unit="s", value=mine.wall_s, baseline=theirs.wall_s,
            baseline_name=f"radosgw-admin lc process, the same {shape} rule", higher_is_better=False, params=params,
            summary=f"lifecycle ({shape}): {n // DUE_EVERY} of {n} objects due; ours {mine.requests} requests in "
            f"{mine.wall_s:.2f}s, radosgw's LC {theirs.wall_s:.2f}s",
        ),
        Figure(
            group=GROUP, name=f"lifecycle_{shape}_apply_cpu_s", unit="CPU s", value=mine.cpu_total,
            baseline=theirs.cpu_total, baseline_name="radosgw + OSD + radosgw-admin CPU of radosgw's LC",
            higher_is_better=False, params=params,
            summary=f"lifecycle ({shape}) CPU: ours radosgw+OSD+executor {mine.cpu_total:.2f}s, "
            f"radosgw's LC radosgw+OSD+radosgw-admin {theirs.cpu_total:.2f}s",
        ),
    ]  # fmt: skip


def run(bench: Bench) -> list[Figure]:
    n = bench.size(100_000, 2_000, minimum=DUE_EVERY)
    out: list[Figure] = []
    for shape, fn in (("prefix", prefix_shape), ("mtime", mtime_shape)):
        t = time.perf_counter()
        mine, theirs = fn(bench, n)
        say(f"lifecycle: {shape} shape done in {time.perf_counter() - t:.0f}s")
        out += figures(shape, n, mine, theirs)
    return out
