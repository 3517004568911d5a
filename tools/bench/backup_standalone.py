"""Benchmark: an incremental backup driven by the change logs vs a listing-based diff of the same
bucket, on the real lab (radosgw), with its own knobs (the suite's figure ``backup`` measures the
same at fixed sizes). It prints figures; it never asserts timings.

From the repository root:

    eval "$(tools/ceph-lab up /tmp/lab)"      # or export CEPH_CONF, RGW_ENDPOINT, ... by hand
    .venv/bin/python -m tools.bench.backup_standalone                  # quick: 2,000 objects
    .venv/bin/python -m tools.bench.backup_standalone --objects 20000  # the figure of issue 6
    .venv/bin/python -m tools.bench.backup_standalone --json           # one JSON object per figure

Setup (not measured): a bucket of ``--objects`` objects; the RGW follower (full sync) and the
collector write its change logs into a log bucket; a first ``backup run`` (ours) and a first full
mirror (the listing-based tool) copy everything. Then ``--changed`` of the objects change
(``--mix`` overwrites:new:deletes), the follower and collector catch up, and both tools do their
incremental pass, each with its S3 requests counted on the wire (a botocore ``before-send`` hook
on every client the tool uses) and its wall time measured (the two tools:
``tools/bench/backup_passes.py``).

``ratio`` is ``baseline / ours`` (higher is better for ours). A second request figure compares
with a HEAD-less diff (listings and ETags only), which a tool can do when it trusts ETags and
ignores metadata. The buckets stay in the lab afterwards (their names are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from changelog.consumers.backup.source import make_client
from changelog.pipeline.reader import last_log, read_watermark
from changelog.pipeline.targets import S3Target
from tools.bench.backup_passes import (
    REGION,
    BackupBuckets,
    ChangeLogs,
    Changes,
    Passes,
    Round,
    apply_changes,
    as_expected,
    backed_up,
    body,
    parallel,
    plan_changes,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

PROG = "backup_standalone"


def say(msg: str) -> None:
    print(f"bench [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Measured:
    """Both tools' full pass (everything copied) and incremental pass (after the change)."""

    changes: Changes
    full: Round
    incremental: Round


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m tools.bench.{PROG}",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--objects", type=int, default=2000, help="objects in the bucket (default 2000; the issue's figure: 20000)")
    ap.add_argument("--changed", type=float, default=0.01, help="fraction of objects changed (default 0.01)")
    ap.add_argument("--mix", default="3:1:1", help="overwrites:new objects:deletes among the changes (default 3:1:1)")
    ap.add_argument("--size", type=int, default=1024, help="object size in bytes (default 1024)")
    ap.add_argument("--workers", type=int, default=8, help="parallel requests, both tools (default 8)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON object per figure on stdout")
    return ap.parse_args(argv)


def lab_env() -> dict[str, str]:
    env = {k: os.environ.get(k, "") for k in ("CEPH_CONF", "CEPH_KEYRING", "CEPH_POOL", "RGW_ENDPOINT")}
    env["RGW_ACCESS_KEY"] = os.environ.get("RGW_ACCESS_KEY", "TESTKEY")
    env["RGW_SECRET_KEY"] = os.environ.get("RGW_SECRET_KEY", "TESTSECRET")
    env["CEPH_POOL"] = env["CEPH_POOL"] or "changelog"
    if not env["CEPH_CONF"] or not env["RGW_ENDPOINT"]:
        sys.exit(f'{PROG}: no lab: run `eval "$(tools/ceph-lab up DIR)"` first (CEPH_CONF and RGW_ENDPOINT unset)')
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = lab_env()
    from changelog.pipeline.backends.rados import RadosStore
    from rgw_module.admin import AdminClient

    tag = uuid.uuid4().hex[:8]
    buckets = BackupBuckets.named(lambda x: f"bench-{x}-{tag}")
    endpoint, key, secret = env["RGW_ENDPOINT"], env["RGW_ACCESS_KEY"], env["RGW_SECRET_KEY"]
    setup = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION, pool=2 * args.workers)
    for b in buckets.all:
        setup.create_bucket(Bucket=b)
    _seed(setup, buckets.src, args)

    store = RadosStore(
        conffile=env["CEPH_CONF"], pool=env["CEPH_POOL"], namespace=f"bench-{tag}", keyring=env["CEPH_KEYRING"] or None
    )
    admin = AdminClient(endpoint, key, secret)
    logs = ChangeLogs(store, admin, buckets.src, ceph_conf=env["CEPH_CONF"], keyring=env["CEPH_KEYRING"] or None)
    log_client = make_client(endpoint=endpoint, access_key=key, secret_key=secret, region=REGION)
    if not logs.start(buckets.logs, log_client):
        sys.exit(f"{PROG}: follower lease busy")
    passes = Passes(endpoint, key, secret, buckets, workers=args.workers, progress=None)
    try:
        measured = _measure(args, setup, logs, S3Target(buckets.logs, "", client=log_client), passes)
    finally:
        logs.close()
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()
        admin.close()
    _report(args, endpoint, buckets, measured)
    return 0


def _seed(s3: S3Client, bucket: str, args: argparse.Namespace) -> None:
    n = args.objects
    say(f"writing {n} objects of {args.size} bytes into {bucket}")
    t0 = time.monotonic()
    parallel(
        lambda i: s3.put_object(Bucket=bucket, Key=f"data/{i:07d}", Body=body(i, 0, args.size)),
        range(n),
        2 * args.workers,
    )
    say(f"  {time.monotonic() - t0:.1f} s")


def _sync_logs(logs: ChangeLogs, logs_view: S3Target) -> None:
    """Until the watermark covers the last log object (it is capped by the follower's
    caught_up_until, so this can take a second sweep)."""
    t = time.monotonic()
    for _ in range(20):
        logs.catch_up(timeout=3600)
        wm, last = read_watermark(logs_view), last_log(logs_view)
        if wm is not None and (last is None or wm.last_object == last.name):
            break
    say(f"  change logs caught up in {time.monotonic() - t:.1f} s")


def _measure(
    args: argparse.Namespace, setup: S3Client, logs: ChangeLogs, logs_view: S3Target, passes: Passes
) -> Measured:
    """Full pass of both tools, the change, incremental pass of both tools."""
    n, src = args.objects, passes.buckets.src
    say("follower full sync and collector (baseline records)")
    _sync_logs(logs, logs_view)
    full = passes.both(say, "first backup (ours) and first mirror (baseline): copy everything", None)
    say(
        f"  ours {full.ours_requests} requests {full.ours_s:.1f} s; "
        f"mirror {full.theirs_requests} requests {full.theirs_s:.1f} s"
    )

    weights = [int(x) for x in args.mix.split(":")]
    changes = plan_changes(n, args.changed, weights, random.Random(args.seed), minimum=1)
    say(f"changing {changes.changed} objects: {changes.text()}")
    apply_changes(setup, src, changes, objects=n, size=args.size, workers=args.workers)
    _sync_logs(logs, logs_view)

    inc = passes.both(say, "incremental: ours", "incremental: baseline (list, HEAD/compare, copy changed)")
    got = backed_up(setup, passes.buckets, inc.result.backup_id)
    if not as_expected(changes, n, got, inc.mirror):
        say(
            f"WARNING: unexpected outcome: backup has {got} objects (expected {changes.expected(n)}); "
            f"mirror {inc.mirror}"
        )
    return Measured(changes, full, inc)


def _figures(args: argparse.Namespace, endpoint: str, m: Measured) -> list[dict[str, Any]]:
    c, full, inc = m.changes, m.full, m.incremental
    params = {
        "objects": args.objects,
        "changed": c.changed,
        "overwritten": len(c.overwritten),
        "new": c.new,
        "deleted": len(c.deleted),
        "size": args.size,
        "workers": args.workers,
        "endpoint": endpoint,
    }
    no_head = inc.theirs_requests - inc.theirs_ops.get("HeadObject", 0)

    def fig(name: str, unit: str, a: float, b: float) -> dict[str, Any]:
        return {
            "name": name,
            "unit": unit,
            "ours": round(a, 3),
            "baseline": round(b, 3),
            "ratio": round(b / a, 2) if a else None,
            "params": params,
        }

    return [
        fig("incremental_s3_requests", "requests", inc.ours_requests, inc.theirs_requests),
        fig("incremental_wall_time", "s", inc.ours_s, inc.theirs_s),
        fig("incremental_s3_requests_vs_etag_listing_diff", "requests", inc.ours_requests, no_head),
        fig("full_copy_s3_requests", "requests", full.ours_requests, full.theirs_requests),
        fig("full_copy_wall_time", "s", full.ours_s, full.theirs_s),
    ]


def _report(args: argparse.Namespace, endpoint: str, buckets: BackupBuckets, m: Measured) -> None:
    figures = _figures(args, endpoint, m)
    if args.json:
        for f in figures:
            print(json.dumps(f))
        return
    c, inc, r = m.changes, m.incremental, m.incremental.result
    print(f"\n{args.objects} objects x {args.size} B in {buckets.src}; {c.changed} changed ({c.text()})")
    print(f"{'figure':48} {'unit':9} {'ours':>10} {'baseline':>10} {'ratio':>8}")
    for f in figures:
        print(f"{f['name']:48} {f['unit']:9} {f['ours']:>10} {f['baseline']:>10} {f['ratio']!s:>8}")
    print("\nrequests by operation, incremental pass:")
    for op in sorted(set(inc.ours_ops) | set(inc.theirs_ops)):
        print(f"  {op:28} ours {inc.ours_ops.get(op, 0):>7}   baseline {inc.theirs_ops.get(op, 0):>7}")
    print(
        f"\nours: {r.records} records from {r.log_objects} log objects, copied {r.copied}, "
        f"uploaded {r.uploaded} blobs; manifest {r.manifest_bytes} bytes"
    )
    print(f"buckets left in the lab: {' '.join(buckets.all)}")


if __name__ == "__main__":
    sys.exit(main())
