#!/usr/bin/env python3
"""Benchmark: an incremental backup driven by the change logs vs a listing-based diff of the same
bucket, on the real lab (radosgw). It prints figures; it never asserts timings.

    eval "$(tools/ceph-lab up /tmp/lab)"      # or export CEPH_CONF, RGW_ENDPOINT, ... by hand
    .venv/bin/python tools/bench_backup.py                  # quick: 2,000 objects
    .venv/bin/python tools/bench_backup.py --objects 20000  # the figure of issue 6
    .venv/bin/python tools/bench_backup.py --json           # one JSON object per figure

Setup (not measured): a bucket of ``--objects`` objects; the RGW follower (full sync) and the
collector write its change logs into a log bucket; a first ``backup run`` (ours) and a first full
mirror (the listing-based tool) copy everything. Then ``--changed`` of the objects change
(``--mix`` overwrites:new:deletes), the follower and collector catch up, and both tools do their
incremental pass, each with its S3 requests counted on the wire (a botocore ``before-send`` hook
on every client the tool uses) and its wall time measured:

* **ours**: ``BackupRunner.run()``: reads the log objects after the previous checkpoint, copies
  the changed objects into the content-addressed store, writes a manifest.
* **baseline**: what a listing-based sync does (rclone's default way): list the source and the
  mirror, HEAD every source object to compare it (size, ETag, metadata: a listing has no user
  metadata), GET+PUT what differs, DELETE what is gone.

The follower's and the collector's own requests are not counted: they run anyway, for every
consumer of the change log. ``ratio`` is ``baseline / ours`` (higher is better for ours). A
second request figure compares with a HEAD-less diff (listings and ETags only), which a tool can
do when it trusts ETags and ignores metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from changelog.consumers.backup import manifest as mf  # noqa: E402
from changelog.consumers.backup.runner import BackupRunner, RunResult  # noqa: E402
from changelog.consumers.backup.source import Source, make_client  # noqa: E402
from changelog.consumers.backup.store import BackupStore  # noqa: E402
from changelog.pipeline.reader import last_log, read_watermark  # noqa: E402
from changelog.pipeline.targets import S3Target  # noqa: E402

REGION = "default"


def say(msg: str) -> None:
    print(f"bench [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Counted:
    """An S3 client whose HTTP requests are counted by operation."""

    def __init__(self, endpoint: str, key: str, secret: str, *, pool: int = 32) -> None:
        self.client = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION, pool=pool)
        self.ops: Counter[str] = Counter()
        self._mu = threading.Lock()
        self.client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", **kw: Any) -> None:
        with self._mu:
            self.ops[event_name.rsplit(".", 1)[-1]] += 1

    def reset(self) -> None:
        with self._mu:
            self.ops.clear()

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def body(i: int, gen: int, size: int) -> bytes:
    head = f"object {i} generation {gen} ".encode()
    return (head * (size // len(head) + 1))[:size]


# --------------------------------------------------------------------------- the listing-based tool


def list_all(s3: Any, bucket: str) -> dict[str, tuple[str, int]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["ETag"].strip('"'), int(o["Size"]))
    return out


def mirror_sync(s3: Any, src: str, dst: str, *, workers: int, head: bool = True) -> dict[str, int]:
    """List both sides, HEAD every source object to compare, copy what differs, delete what is
    gone. The mirror keeps the source's ETag and metadata in its own metadata."""
    source = list_all(s3, src)
    mirror = list_all(s3, dst)
    stats = {"copied": 0, "deleted": 0, "checked": 0}
    mu = threading.Lock()

    def check(key: str) -> None:
        etag, size = source[key]
        meta: dict[str, str] = {}
        if head:
            h = s3.head_object(Bucket=src, Key=key)
            etag, size, meta = h["ETag"].strip('"'), int(h["ContentLength"]), dict(h.get("Metadata", {}))
        have = mirror.get(key)
        if have is not None and have == (etag, size):
            with mu:
                stats["checked"] += 1
            return
        got = s3.get_object(Bucket=src, Key=key)
        s3.put_object(Bucket=dst, Key=key, Body=got["Body"].read(), Metadata=meta)
        with mu:
            stats["copied"] += 1
            stats["checked"] += 1

    parallel(check, sorted(source), workers)
    gone = sorted(set(mirror) - set(source))
    parallel(lambda k: s3.delete_object(Bucket=dst, Key=k), gone, workers)
    stats["deleted"] = len(gone)
    return stats


# --------------------------------------------------------------------------- main


def lab_env() -> dict[str, str]:
    env = {k: os.environ.get(k, "") for k in ("CEPH_CONF", "CEPH_KEYRING", "CEPH_POOL", "RGW_ENDPOINT")}
    env["RGW_ACCESS_KEY"] = os.environ.get("RGW_ACCESS_KEY", "TESTKEY")
    env["RGW_SECRET_KEY"] = os.environ.get("RGW_SECRET_KEY", "TESTSECRET")
    env["CEPH_POOL"] = env["CEPH_POOL"] or "changelog"
    if not env["CEPH_CONF"] or not env["RGW_ENDPOINT"]:
        sys.exit('bench_backup: no lab: run `eval "$(tools/ceph-lab up DIR)"` first (CEPH_CONF and RGW_ENDPOINT unset)')
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=2000, help="objects in the bucket (default 2000; the issue's figure: 20000)")
    ap.add_argument("--changed", type=float, default=0.01, help="fraction of objects changed (default 0.01)")
    ap.add_argument("--mix", default="3:1:1", help="overwrites:new objects:deletes among the changes (default 3:1:1)")
    ap.add_argument("--size", type=int, default=1024, help="object size in bytes (default 1024)")
    ap.add_argument("--workers", type=int, default=8, help="parallel requests, both tools (default 8)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON object per figure on stdout")
    args = ap.parse_args(argv)

    env = lab_env()
    from changelog.config import CollectorConfig, SourceConfig
    from changelog.pipeline.backends.rados import RadosStore
    from changelog.pipeline.collector import Collector
    from changelog.pipeline.index import ChangeIndex
    from rgw_module.admin import AdminClient
    from rgw_module.follower import Follower

    rnd = random.Random(args.seed)
    tag = uuid.uuid4().hex[:8]
    src_b, logs_b, store_b, mirror_b = (f"bench-{x}-{tag}" for x in ("src", "logs", "store", "mirror"))
    endpoint, key, secret = env["RGW_ENDPOINT"], env["RGW_ACCESS_KEY"], env["RGW_SECRET_KEY"]
    setup = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION, pool=2 * args.workers)
    for b in (src_b, logs_b, store_b, mirror_b):
        setup.create_bucket(Bucket=b)

    n = args.objects
    say(f"writing {n} objects of {args.size} bytes into {src_b}")
    t0 = time.monotonic()
    parallel(lambda i: setup.put_object(Bucket=src_b, Key=f"data/{i:07d}", Body=body(i, 0, args.size)), range(n), 2 * args.workers)
    say(f"  {time.monotonic() - t0:.1f} s")

    store = RadosStore(conffile=env["CEPH_CONF"], pool=env["CEPH_POOL"], namespace=f"bench-{tag}", keyring=env["CEPH_KEYRING"] or None)
    index = ChangeIndex(store, shards=8)
    admin = AdminClient(endpoint, key, secret)
    follower = Follower(index, admin, SourceConfig(buckets=(src_b,), poll_interval=0.2, trim_datalog=False, lease_ttl=30.0))
    if not follower.acquire():
        sys.exit("bench_backup: follower lease busy")
    log_client = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION)
    collector = Collector(index, S3Target(logs_b, "", client=log_client), CollectorConfig(settle=0.0, lease_ttl=30.0),
                          watermark_cap=follower.caught_up_until_us)

    logs_view = S3Target(logs_b, "", client=log_client)

    def sync_logs() -> None:
        """Until the watermark covers the last log object (it is capped by the follower's
        caught_up_until, so this can take a second sweep)."""
        t = time.monotonic()
        for _ in range(20):
            follower.run_until_caught_up(timeout=3600)
            collector.flush()
            wm, last = read_watermark(logs_view), last_log(logs_view)
            if wm is not None and (last is None or wm.last_object == last.name):
                break
        say(f"  change logs caught up in {time.monotonic() - t:.1f} s")

    ours = Counted(endpoint, key, secret, pool=2 * args.workers)
    theirs = Counted(endpoint, key, secret, pool=2 * args.workers)

    def backup() -> tuple[RunResult, float]:
        ours.reset()
        t = time.monotonic()
        r = BackupRunner(
            BackupStore(S3Target(store_b, "", client=ours.client)),
            S3Target(logs_b, "", client=ours.client),
            Source(ours.client),
            buckets=[src_b],
            workers=args.workers,
            progress=None,
        ).run()
        return r, time.monotonic() - t

    def mirror() -> tuple[dict[str, int], float]:
        theirs.reset()
        t = time.monotonic()
        stats = mirror_sync(theirs.client, src_b, mirror_b, workers=args.workers)
        return stats, time.monotonic() - t

    try:
        say("follower full sync and collector (baseline records)")
        sync_logs()
        say("first backup (ours) and first mirror (baseline): copy everything")
        r_full, t_full = backup()
        full_ops = dict(ours.ops)
        m_full, tm_full = mirror()
        mirror_full_ops = dict(theirs.ops)
        say(f"  ours {ours.total} requests {t_full:.1f} s; mirror {theirs.total} requests {tm_full:.1f} s")

        weights = [int(x) for x in args.mix.split(":")]
        k = max(1, round(n * args.changed))
        n_over = round(k * weights[0] / sum(weights))
        n_new = round(k * weights[1] / sum(weights))
        n_del = k - n_over - n_new
        picked = rnd.sample(range(n), n_over + n_del)
        over, dels = picked[:n_over], picked[n_over:]
        say(f"changing {k} objects: {n_over} overwritten, {n_new} new, {n_del} deleted")
        parallel(lambda i: setup.put_object(Bucket=src_b, Key=f"data/{i:07d}", Body=body(i, 1, args.size)), over, args.workers)
        parallel(lambda i: setup.put_object(Bucket=src_b, Key=f"new/{i:07d}", Body=body(n + i, 1, args.size)), range(n_new), args.workers)
        parallel(lambda i: setup.delete_object(Bucket=src_b, Key=f"data/{i:07d}"), dels, args.workers)
        sync_logs()

        say("incremental: ours")
        r_inc, t_inc = backup()
        inc_ops = dict(ours.ops)
        say("incremental: baseline (list, HEAD/compare, copy changed)")
        m_inc, tm_inc = mirror()
        mirror_inc_ops = dict(theirs.ops)

        expected = n + n_new - n_del
        latest = mf.load(BackupStore(S3Target(store_b, "", client=setup)), r_inc.backup_id or "")
        got = sum(1 for _ in latest.objects(src_b))
        if got != expected or m_inc["copied"] != n_over + n_new or m_inc["deleted"] != n_del:
            say(f"WARNING: unexpected outcome: backup has {got} objects (expected {expected}); mirror {m_inc}")
    finally:
        collector.close()
        follower.close()
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()
        admin.close()

    params = {
        "objects": n,
        "changed": k,
        "overwritten": n_over,
        "new": n_new,
        "deleted": n_del,
        "size": args.size,
        "workers": args.workers,
        "endpoint": endpoint,
    }
    inc_total, mirror_total = sum(inc_ops.values()), sum(mirror_inc_ops.values())
    no_head = mirror_total - mirror_inc_ops.get("HeadObject", 0)

    def fig(name: str, unit: str, a: float, b: float) -> dict[str, Any]:
        return {"name": name, "unit": unit, "ours": round(a, 3), "baseline": round(b, 3),
                "ratio": round(b / a, 2) if a else None, "params": params}

    figures = [
        fig("incremental_s3_requests", "requests", inc_total, mirror_total),
        fig("incremental_wall_time", "s", t_inc, tm_inc),
        fig("incremental_s3_requests_vs_etag_listing_diff", "requests", inc_total, no_head),
        fig("full_copy_s3_requests", "requests", sum(full_ops.values()), sum(mirror_full_ops.values())),
        fig("full_copy_wall_time", "s", t_full, tm_full),
    ]
    if args.json:
        for f in figures:
            print(json.dumps(f))
        return 0
    print(f"\n{n} objects x {args.size} B in {src_b}; {k} changed ({n_over} overwritten, {n_new} new, {n_del} deleted)")
    print(f"{'figure':48} {'unit':9} {'ours':>10} {'baseline':>10} {'ratio':>8}")
    for f in figures:
        print(f"{f['name']:48} {f['unit']:9} {f['ours']:>10} {f['baseline']:>10} {f['ratio']!s:>8}")
    print("\nrequests by operation, incremental pass:")
    for op in sorted(set(inc_ops) | set(mirror_inc_ops)):
        print(f"  {op:28} ours {inc_ops.get(op, 0):>7}   baseline {mirror_inc_ops.get(op, 0):>7}")
    print(
        f"\nours: {r_inc.records} records from {r_inc.log_objects} log objects, copied {r_inc.copied}, "
        f"uploaded {r_inc.uploaded} blobs; manifest {r_inc.manifest_bytes} bytes"
    )
    print(f"buckets left in the lab: {src_b} {logs_b} {store_b} {mirror_b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
