"""Figure 5, ``backup``: an incremental backup driven by the change logs against a listing-based
diff of the same bucket, in S3 requests and wall time. The request counter, the listing-based
tool (list source and mirror, HEAD every source object to compare size, ETag and metadata, copy
what differs, delete what is gone: what rclone does by default) and the change logs come from
``tools/bench/backup_passes.py``, shared with the standalone ``python -m
tools.bench.backup_standalone``.

Setup (not measured; seeded with ``FastPut``): a bucket of N 1 KiB objects (20,000 at the default
scale), the same objects PUT into the mirror bucket (the listing tool's previous state), the RGW follower's full
sync and the collector write the baseline records, and a first ``BackupRunner.run()``. The seed
objects share one content, so that first backup stores one blob (the setup is ~3N requests
instead of ~5N); the measured incremental pass is unaffected, its changed objects all get
contents of their own. Then 1% of the objects change (3:1:1 overwritten : new : deleted), the
follower and collector catch up (their requests are not counted: they run anyway, for every
consumer of the change log), and both tools make their incremental pass.

Requests are deterministic, so one round is measured by default (each baseline pass costs N
HEAD requests); the two tools run back to back on the same state.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from changelog.pipeline.reader import read_records
from changelog.pipeline.targets import S3Target
from tools.bench.backup_passes import (
    BackupBuckets,
    ChangeLogs,
    Changes,
    Passes,
    Round,
    apply_changes,
    as_expected,
    backed_up,
    etag_counts,
    plan_changes,
    split_requests,
)
from tools.bench.common import Bench, FastPut, Figure, say, wipe_namespace

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

GROUP = "backup"
CHANGED = 0.01
MIX = (3, 1, 1)  # overwritten : new : deleted
OBJECT_BYTES = 1024
WORKERS = 8  # parallel requests of both tools
SEED_WORKERS = 16
SEED_BODY = b"seed " * (OBJECT_BYTES // 5) + b"." * (OBJECT_BYTES % 5)
LISTING_DIFF = "listing diff (list, HEAD every object, copy changed)"


@dataclass(frozen=True, slots=True)
class Measured:
    """What the figure's passes measured: the incremental round of both tools, and the set-up's
    timings (not measured figures, reported in ``params``)."""

    objects: int
    changes: Changes
    incremental: Round
    timings: dict[str, float]
    # Write records of the change (not the full sync's baseline), and how many carry an ETag.
    etags: tuple[int, int]
    buckets: BackupBuckets


def run(bench: Bench) -> list[Figure]:
    from rgw_module.admin import AdminClient

    lab = bench.lab
    n = bench.size(20_000, 500, minimum=100)
    buckets = BackupBuckets.named(lambda x: bench.name(f"bk-{x}"))
    setup = bench.s3(pool=SEED_WORKERS + 4)
    for b in buckets.all:
        setup.create_bucket(Bucket=b)
    ns = bench.name("backup")
    store = bench.store(ns)
    admin = AdminClient(lab.rgw_endpoint, lab.access_key, lab.secret_key)
    logs = ChangeLogs(store, admin, buckets.src, ceph_conf=lab.conf, keyring=lab.keyring or None)
    try:
        measured = _measure(bench, setup, logs, buckets, n)
    finally:
        logs.close()
        admin.close()
        store.close()
        wipe_namespace(bench, ns)
        if not bench.throwaway:
            _remove_buckets(setup, buckets)
    return _figures(measured)


def _measure(bench: Bench, setup: S3Client, logs: ChangeLogs, buckets: BackupBuckets, n: int) -> Measured:
    """Seed, sync, a first backup, change 1% of the objects, sync, then both incremental passes."""
    lab = bench.lab
    rnd = random.Random(1)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    say(f"backup: seeding {n:,} objects into the source and the mirror")
    FastPut(lab).put_many(
        [(b, f"data/{i:07d}", SEED_BODY) for i in range(n) for b in (buckets.src, buckets.mirror)],
        workers=SEED_WORKERS,
    )
    timings["seed_s"] = time.monotonic() - t0
    say(f"  {timings['seed_s']:.0f}s")
    if not logs.start(buckets.logs, setup):
        raise RuntimeError("backup: follower lease busy")
    timings["full_sync_s"] = _sync_logs(logs)
    passes = Passes(
        lab.rgw_endpoint, lab.access_key, lab.secret_key, buckets, workers=WORKERS, progress=False
    )
    say("backup: first backup (ours)")
    _, timings["first_backup_s"] = passes.backup()
    timings["first_backup_requests"] = passes.ours.total

    changes = plan_changes(n, CHANGED, MIX, rnd, minimum=len(MIX))
    say(f"backup: changing {changes.changed} objects ({changes.text()})")
    apply_changes(setup, buckets.src, changes, objects=n, size=OBJECT_BYTES, workers=WORKERS)
    timings["catch_up_s"] = _sync_logs(logs)

    inc = passes.both(say, "backup: incremental, ours", "backup: incremental, listing-based diff")
    got = backed_up(setup, buckets, inc.result.backup_id)
    if not as_expected(changes, n, got, inc.mirror):
        raise RuntimeError(
            f"backup: wrong outcome: the backup holds {got} objects (expected {changes.expected(n)}); "
            f"mirror {inc.mirror}"
        )
    etags = etag_counts(read_records(S3Target(buckets.logs, "", client=setup)), buckets.src)
    return Measured(n, changes, inc, timings, etags, buckets)


def _sync_logs(logs: ChangeLogs) -> float:
    """The change logs caught up with every write so far: seconds taken."""
    # Listings in whole seconds (Tentacle, AWS): the watermark must cover the second of the last
    # write for the backup to tell it from a later one (runner._written_since).
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    t = time.monotonic()
    logs.catch_up(timeout=1800)
    return time.monotonic() - t


def _remove_buckets(s3: S3Client, buckets: BackupBuckets) -> None:
    for b in buckets.all:
        try:
            _bulk_empty(s3, b)
        except Exception as ex:  # noqa: BLE001 - best effort; the next figures do not need them
            say(f"WARNING: cannot remove bucket {b}: {ex}")


def _bulk_empty(s3: S3Client, bucket: str) -> None:
    """Delete a bucket's objects 1000 per request. Only for buckets that never had a
    notification (radosgw 16.2 aborts on DeleteObjects in one that has)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objs: list[Any] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def detection(m: Measured) -> tuple[dict[str, int], dict[str, int], int, int]:
    """Detection requests by "operation role/prefix" (``split_requests``) of ours and of the
    listing diff trusting ETags (the listing diff's without its HEADs), and each one's copy
    requests."""
    inc = m.incremental
    ours_copy, ours = split_requests(inc.ours_calls, m.buckets)
    theirs_copy, theirs = split_requests(inc.theirs_calls, m.buckets)
    trusting = {k: v for k, v in theirs.items() if not k.startswith("HeadObject src/")}
    return ours, trusting, ours_copy, theirs_copy


def _figures(m: Measured) -> list[Figure]:
    inc, changes, n = m.incremental, m.changes, m.objects
    ours_total, theirs_total = inc.ours_requests, inc.theirs_requests
    no_head = theirs_total - inc.theirs_ops.get("HeadObject", 0)
    ours_detect, trusting_detect, ours_copy, theirs_copy = detection(m)
    writes, with_etag = m.etags
    detect_text = (
        f"ours {sum(ours_detect.values())} ({', '.join(f'{k} {v}' for k, v in ours_detect.items())}) + {ours_copy} copy; "
        f"listing diff {sum(trusting_detect.values())} ({', '.join(f'{k} {v}' for k, v in trusting_detect.items())}) "
        f"+ {theirs_copy} copy; write records with an ETag {with_etag}/{writes}"
    )
    if with_etag < writes:
        detect_text = f"records without an ETag, probed: {detect_text}"
    say(f"backup: detection requests: {detect_text}")
    params: dict[str, Any] = {
        "objects": n,
        "changed": changes.changed,
        "overwritten": len(changes.overwritten),
        "new": changes.new,
        "deleted": len(changes.deleted),
        "object_bytes": OBJECT_BYTES,
        "workers": WORKERS,
        "rounds": 1,
        "ours_requests_by_op": inc.ours_ops,
        "baseline_requests_by_op": inc.theirs_ops,
        "records": inc.result.records,
        "log_objects": inc.result.log_objects,
        **{k_: round(v, 1) for k_, v in m.timings.items()},
    }
    detect_params: dict[str, Any] = {
        "objects": n,
        "changed": changes.changed,
        "ours_detection": ours_detect,
        "baseline_detection": trusting_detect,
        "ours_copy_requests": ours_copy,
        "baseline_copy_requests": theirs_copy,
        "write_records": writes,
        "write_records_with_etag": with_etag,
        "records_from": 'RGW follower, object_info "index" (bucket index entries over RADOS)',
    }
    say(f"backup: ours {ours_total} requests in {inc.ours_s:.1f}s; listing diff {theirs_total} in {inc.theirs_s:.1f}s")
    return [
        Figure(
            GROUP, "backup_incremental_requests", "requests", ours_total, theirs_total, LISTING_DIFF,
            higher_is_better=False, goal=("ratio", ">=", 50), params=params,
        ),
        Figure(
            GROUP, "backup_incremental_wall_time", "s", inc.ours_s, inc.theirs_s, LISTING_DIFF,
            higher_is_better=False, params={"objects": n, "changed": changes.changed, "workers": WORKERS},
        ),
        Figure(
            GROUP, "backup_incremental_requests_vs_etag_listing", "requests", ours_total, no_head,
            "listing diff trusting ETags (no HEAD; ignores metadata)",
            higher_is_better=False, params={"objects": n, "changed": changes.changed},
        ),
        Figure(
            GROUP, "backup_detection_requests", "requests", sum(ours_detect.values()), sum(trusting_detect.values()),
            "listing diff trusting ETags: its listings (copies apart)",
            higher_is_better=False, goal=("ratio", ">=", 10), params=detect_params, summary=detect_text,
        ),
    ]  # fmt: skip
