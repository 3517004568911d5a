"""Figure 5, ``backup``: an incremental backup driven by the change logs against a listing-based
diff of the same bucket, in S3 requests and wall time. Reuses ``tools/bench_backup.py`` (the
backup engineer's benchmark): its request counter (``Counted``: a botocore ``before-send`` hook
on every client a tool uses) and its listing-based tool (``mirror_sync``: list source and
mirror, HEAD every source object to compare size, ETag and metadata, copy what differs, delete
what is gone: what rclone does by default).

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
from typing import Any

from tools import bench_backup as bb
from tools.bench.common import Bench, FastPut, Figure, say, wipe_namespace

GROUP = "backup"
CHANGED = 0.01
MIX = (3, 1, 1)  # overwritten : new : deleted
OBJECT_BYTES = 1024
WORKERS = 8  # parallel requests of both tools
SEED_WORKERS = 16
SEED_BODY = b"seed " * (OBJECT_BYTES // 5) + b"." * (OBJECT_BYTES % 5)


def _bulk_empty(s3: Any, bucket: str) -> None:
    """Delete a bucket's objects 1000 per request. Only for buckets that never had a
    notification (radosgw 16.2 aborts on DeleteObjects in one that has)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def run(bench: Bench) -> list[Figure]:
    from changelog.config import CollectorConfig, SourceConfig
    from changelog.consumers.backup import manifest as mf
    from changelog.consumers.backup.runner import BackupRunner
    from changelog.consumers.backup.source import Source
    from changelog.consumers.backup.store import BackupStore
    from changelog.pipeline.collector import Collector
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.targets import S3Target
    from rgw_module.admin import AdminClient
    from rgw_module.follower import Follower

    lab = bench.lab
    n = bench.size(20_000, 500, minimum=100)
    rnd = random.Random(1)
    src_b, logs_b, store_b, mirror_b = (bench.name(f"bk-{x}") for x in ("src", "logs", "store", "mirror"))
    setup = bench.s3(pool=SEED_WORKERS + 4)
    for b in (src_b, logs_b, store_b, mirror_b):
        setup.create_bucket(Bucket=b)
    ns = bench.name("backup")
    store = bench.store(ns)
    admin = AdminClient(lab.rgw_endpoint, lab.access_key, lab.secret_key)
    index = ChangeIndex(store, shards=8)
    source = SourceConfig(buckets=(src_b,), poll_interval=0.2, trim_datalog=False, lease_ttl=30.0)
    follower = Follower(index, admin, source)
    collector: Collector | None = None
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        say(f"backup: seeding {n:,} objects into the source and the mirror")

        FastPut(lab).put_many(
            [(b, f"data/{i:07d}", SEED_BODY) for i in range(n) for b in (src_b, mirror_b)], workers=SEED_WORKERS
        )
        timings["seed_s"] = time.monotonic() - t0
        say(f"  {timings['seed_s']:.0f}s")
        if not follower.acquire():
            raise RuntimeError("backup: follower lease busy")
        collector = Collector(
            index,
            S3Target(logs_b, "", client=setup),
            CollectorConfig(settle=0.0, lease_ttl=30.0),
            watermark_cap=follower.caught_up_until_us,
        )

        def sync_logs() -> float:
            # Listings in whole seconds (Tentacle, AWS): the watermark must cover the second of
            # the last write for the backup to tell it from a later one (runner._written_since).
            time.sleep(1.0 - time.time() % 1.0 + 0.01)
            t = time.monotonic()
            follower.run_until_caught_up(timeout=1800)
            assert collector is not None
            collector.flush()
            return time.monotonic() - t

        timings["full_sync_s"] = sync_logs()
        ours = bb.Counted(lab.rgw_endpoint, lab.access_key, lab.secret_key, pool=2 * WORKERS)
        theirs = bb.Counted(lab.rgw_endpoint, lab.access_key, lab.secret_key, pool=2 * WORKERS)

        def backup() -> tuple[Any, float]:
            ours.reset()
            t = time.monotonic()
            result = BackupRunner(
                BackupStore(S3Target(store_b, "", client=ours.client)),
                S3Target(logs_b, "", client=ours.client),
                Source(ours.client),
                buckets=[src_b],
                workers=WORKERS,
                progress=False,
            ).run()
            return result, time.monotonic() - t

        def mirror() -> tuple[dict[str, int], float]:
            theirs.reset()
            t = time.monotonic()
            stats = bb.mirror_sync(theirs.client, src_b, mirror_b, workers=WORKERS)
            return stats, time.monotonic() - t

        say("backup: first backup (ours)")
        _, timings["first_backup_s"] = backup()
        timings["first_backup_requests"] = ours.total

        weights = MIX
        k = max(len(weights), round(n * CHANGED))
        n_over = round(k * weights[0] / sum(weights))
        n_new = round(k * weights[1] / sum(weights))
        n_del = k - n_over - n_new
        picked = rnd.sample(range(n), n_over + n_del)
        over, dels = picked[:n_over], picked[n_over:]
        say(f"backup: changing {k} objects ({n_over} overwritten, {n_new} new, {n_del} deleted)")
        bb.parallel(
            lambda i: setup.put_object(Bucket=src_b, Key=f"data/{i:07d}", Body=bb.body(i, 1, OBJECT_BYTES)),
            over,
            WORKERS,
        )
        bb.parallel(
            lambda i: setup.put_object(Bucket=src_b, Key=f"new/{i:07d}", Body=bb.body(n + i, 1, OBJECT_BYTES)),
            range(n_new),
            WORKERS,
        )
        bb.parallel(lambda i: setup.delete_object(Bucket=src_b, Key=f"data/{i:07d}"), dels, WORKERS)
        timings["catch_up_s"] = sync_logs()

        say("backup: incremental, ours")
        r_inc, t_ours = backup()
        ours_ops = dict(ours.ops)
        say("backup: incremental, listing-based diff")
        m_inc, t_theirs = mirror()
        theirs_ops = dict(theirs.ops)

        expected = n + n_new - n_del
        latest = mf.load(BackupStore(S3Target(store_b, "", client=setup)), r_inc.backup_id or "")
        got = sum(1 for _ in latest.objects(src_b))
        if got != expected or m_inc["copied"] != n_over + n_new or m_inc["deleted"] != n_del:
            raise RuntimeError(
                f"backup: wrong outcome: the backup holds {got} objects (expected {expected}); mirror {m_inc}"
            )
    finally:
        if collector is not None:
            collector.close()
        follower.close()
        admin.close()
        store.close()
        wipe_namespace(bench, ns)
        for b in (src_b, logs_b, store_b, mirror_b) if not bench.throwaway else ():
            try:
                _bulk_empty(setup, b)
            except Exception as ex:  # noqa: BLE001 - best effort; the next figures do not need them
                say(f"WARNING: cannot remove bucket {b}: {ex}")

    ours_total, theirs_total = sum(ours_ops.values()), sum(theirs_ops.values())
    no_head = theirs_total - theirs_ops.get("HeadObject", 0)
    params: dict[str, Any] = {
        "objects": n,
        "changed": k,
        "overwritten": n_over,
        "new": n_new,
        "deleted": n_del,
        "object_bytes": OBJECT_BYTES,
        "workers": WORKERS,
        "rounds": 1,
        "ours_requests_by_op": ours_ops,
        "baseline_requests_by_op": theirs_ops,
        "records": r_inc.records,
        "log_objects": r_inc.log_objects,
        **{k_: round(v, 1) for k_, v in timings.items()},
    }
    say(f"backup: ours {ours_total} requests in {t_ours:.1f}s; listing diff {theirs_total} in {t_theirs:.1f}s")
    return [
        Figure(
            GROUP,
            "backup_incremental_requests",
            "requests",
            ours_total,
            theirs_total,
            "listing diff (list, HEAD every object, copy changed)",
            higher_is_better=False,
            goal=("ratio", ">=", 50),
            params=params,
        ),
        Figure(
            GROUP,
            "backup_incremental_wall_time",
            "s",
            t_ours,
            t_theirs,
            "listing diff (list, HEAD every object, copy changed)",
            higher_is_better=False,
            params={"objects": n, "changed": k, "workers": WORKERS},
        ),
        Figure(
            GROUP,
            "backup_incremental_requests_vs_etag_listing",
            "requests",
            ours_total,
            no_head,
            "listing diff trusting ETags (no HEAD; ignores metadata)",
            higher_is_better=False,
            params={"objects": n, "changed": k},
        ),
    ]
