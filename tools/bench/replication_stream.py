"""The streaming half of the ``replication`` figure group (``tools/bench/replication.py`` holds
the labs, the replicator's set-up and the request counts):

* ``replication_throughput``: M large objects (8 x 64 MiB at scale 1; 4 x 32 MiB with
  ``--quick``) replicated by a ``SiteReplicator`` from their write records, MB/s (10^6 bytes)
  from its first step to its checkpoint at the watermark, against a plain copy of the same
  objects with the same parallelism and part size: a thread pool of ``WORKERS`` taking one object
  each, a streaming GET handed to boto3's ``upload_fileobj`` (s3transfer, the same
  ``TransferConfig``). Interleaved repetitions (3, 1 with ``--quick``), each into a fresh site
  bucket, medians.
* ``replication_lag_p50`` / ``_p99``: a writer PUTs small objects at a steady rate while the RGW
  follower, the collector (lab timings of ``tests/integration/test_replication_lab.py``) and the
  site's ``ConsumerRunner`` run in threads; a poller lists the site bucket and the log bucket every
  ``POLL`` s. Lag = first seen at the site - PUT returned. **Baseline**: for the same PUTs, first
  seen in a committed log object - PUT returned: the part of the lag that is the change log's,
  not replication's (``ratio`` = that part's share).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from changelog.config import CollectorConfig
from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.replication.sites import site_client, transfer_config
from changelog.pipeline.collector import Collector
from changelog.pipeline.reader import list_logs, read_object, read_watermark
from changelog.pipeline.targets import S3Target
from tools.bench.backup_passes import ChangeLogs, list_all
from tools.bench.common import (
    Bench,
    Figure,
    Lab,
    gc_process,
    interleaved,
    median,
    percentile,
    radosgw_admin,
    say,
)
from tools.bench.replication import (
    GROUP,
    WORKERS,
    client_pool,
    drive,
    drop_bucket,
    last_object,
    make_replicator,
    replication_config,
    s3_of,
    site_config,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

MIB = 1024 * 1024
PLAIN_COPY = "plain GET + upload_fileobj, same workers and parts"
LAG_RATE = 10.0  # PUT/s
POLL = 0.2  # s between two listings of the site bucket (and of the log bucket)
# The lab timings of tests/integration/test_replication_lab.py ([collector], [replication]).
COLLECTOR_TIMINGS: dict[str, object] = {"interval": 0.5, "settle": 0.5, "roll_seconds": 2}
REPLICATION_INTERVAL = 0.2
LOG_COMMIT = "committed in a log object (the change log's part of the lag)"


# --------------------------------------------------------------------------- throughput


def throughput_figure(bench: Bench, site: Lab) -> Figure:
    from rgw_module.admin import AdminClient

    lab = bench.lab
    count = bench.size(8, 4, minimum=2)
    size = (32 if bench.quick else 64) * MIB
    reps = bench.reps(3, 1)
    src, log_bucket = bench.name("rt-src"), bench.name("rt-logs")
    setup, site_s3 = s3_of(lab, pool=client_pool(WORKERS)), s3_of(site, pool=client_pool(WORKERS))
    for b in (src, log_bucket):
        setup.create_bucket(Bucket=b)
    ns = bench.name("replication-tp")
    store = bench.store(ns)
    admin = AdminClient(lab.rgw_endpoint, lab.access_key, lab.secret_key)
    logs = ChangeLogs(store, admin, src, ceph_conf=lab.conf, keyring=lab.keyring or None)
    try:
        if not logs.start(log_bucket, setup):
            raise RuntimeError("replication: follower lease busy")
        logs.catch_up(timeout=600)
        say(f"replication: writing {count} x {size // MIB} MiB into the source")
        body = os.urandom(size)
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(lambda i: setup.put_object(Bucket=src, Key=f"big/{i:03d}", Body=body), range(count))
            )
        logs.catch_up(timeout=600)
        copy = _Copies(bench, site, logs, src, S3Target(log_bucket, "", client=setup), setup, site_s3)
        ours, plain = interleaved(reps, copy.ours, copy.plain)
    finally:
        logs.close()
        admin.close()
        store.close()
        wipe_namespace_quietly(bench, ns)
        if not bench.throwaway:
            drop_bucket(setup, src)
            drop_bucket(setup, log_bucket)
            gc_process(bench)
    say(f"replication: throughput ours {ours} MB/s, plain copy {plain} MB/s")
    return Figure(
        GROUP, "replication_throughput", "MB/s", median(ours), median(plain), PLAIN_COPY, goal=("ratio", ">=", 0.8),
        params={
            "objects": count, "object_mib": size // MIB, "workers": WORKERS, "part_mib": 8, "reps": reps,
            "ours_runs": [round(x, 1) for x in ours], "baseline_runs": [round(x, 1) for x in plain],
            "client_cpu_s_per_gb": {k: [round(x, 2) for x in v] for k, v in copy.cpu.items()},
        },
    )  # fmt: skip


def wipe_namespace_quietly(bench: Bench, ns: str) -> None:
    from tools.bench.common import wipe_namespace

    try:
        wipe_namespace(bench, ns)
    except Exception as ex:  # noqa: BLE001 - clean-up only
        say(f"WARNING: cannot wipe namespace {ns}: {ex}")


@dataclass
class _Copies:
    """One repetition of each side, each into a fresh site bucket removed afterwards (the
    site's memstore keeps every byte in RAM)."""

    bench: Bench
    site: Lab
    logs: ChangeLogs
    src: str
    log_target: S3Target
    setup: S3Client
    site_s3: S3Client
    want: dict[str, int] = field(default_factory=dict)
    # This process's CPU seconds (every thread) per GB copied, per repetition of each side.
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "plain": []})

    def __post_init__(self) -> None:
        self.want = {k: size for k, (_, size) in list_all(self.setup, self.src).items()}
        self.total = sum(self.want.values())

    def _fresh(self, what: str, i: int) -> str:
        bucket = self.bench.name(f"rt-{what}{i}")
        self.site_s3.create_bucket(Bucket=bucket)
        return bucket

    def _done(self, bucket: str, seconds: float) -> float:
        got = {k: size for k, (_, size) in list_all(self.site_s3, bucket).items()}
        drop_bucket(self.site_s3, bucket)
        try:
            radosgw_admin(self.site, "gc", "process", "--include-all", timeout=300)
        except (RuntimeError, OSError) as ex:
            say(f"WARNING: site gc: {ex}")
        if got != self.want:
            raise RuntimeError(f"replication: {bucket} holds {got}, not the source's {self.want}")
        return self.total / 1e6 / seconds

    def ours(self, i: int) -> float:
        bucket = self._fresh("ours", i)
        rc = replication_config()
        site = site_config(f"tp{i}", self.site, {self.src: bucket})
        pool = client_pool(rc.workers)
        source = s3_of(self.bench.lab, pool=pool)
        client = site_client(site, max_attempts=rc.max_attempts, pool=pool)
        rep = make_replicator(self.logs.index, self.log_target, site, rc, source=source, client=client)
        runner = ConsumerRunner(self.logs.index, rep, lease_ttl=60.0)
        if not runner.acquire():
            raise RuntimeError("replication: consumer lease busy")
        last = last_object(self.log_target)
        say(f"replication: throughput rep {i}: ours")
        try:
            t, cpu = time.monotonic(), time.process_time()
            drive(runner, last, timeout=1800)
            seconds = time.monotonic() - t
            self.cpu["ours"].append((time.process_time() - cpu) / (self.total / 1e9))
        finally:
            runner.step_down()
            source.close()
            client.close()
        mbps = self._done(bucket, seconds)  # the site bucket goes before the outcome is judged
        stats = rep.stats()
        # "completed" also counts the bucket's creation record (nothing to do at a site).
        if stats.get("failed") or stats.get("completed_bytes") != self.total:
            raise RuntimeError(f"replication: throughput rep {i}: {dict(stats)}")
        return mbps

    def plain(self, i: int) -> float:
        bucket = self._fresh("plain", i)
        pool = client_pool(WORKERS)
        source, site = s3_of(self.bench.lab, pool=pool), s3_of(self.site, pool=pool)
        config = transfer_config(replication_config().part_bytes)

        def one(key: str) -> None:
            got = source.get_object(Bucket=self.src, Key=key)
            site.upload_fileobj(got["Body"], bucket, key, Config=config)

        say(f"replication: throughput rep {i}: plain copy")
        try:
            t, cpu = time.monotonic(), time.process_time()
            with ThreadPoolExecutor(WORKERS) as pool_:
                list(pool_.map(one, sorted(self.want)))
            seconds = time.monotonic() - t
            self.cpu["plain"].append((time.process_time() - cpu) / (self.total / 1e9))
        finally:
            source.close()
            site.close()
        return self._done(bucket, seconds)


# --------------------------------------------------------------------------- lag


def lags(done: Mapping[str, float], seen: Mapping[str, float]) -> tuple[list[float], int]:
    """(seen - done for every key seen, in key order; how many keys of ``done`` were never seen)."""
    out = [seen[k] - done[k] for k in sorted(done) if k in seen]
    return out, len(done) - len(out)


def lag_summary(xs: list[float]) -> dict[str, float]:
    return {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "max": max(xs) if xs else math.nan}


class Poller(threading.Thread):
    """Every ``POLL`` s: lists the site bucket (a key's first listing is when it is seen at the
    site) and the committed log objects (a written key's first record is its commit). One
    listing per poll instead of a HEAD per pending key: the same resolution, a fraction of the
    site's load."""

    def __init__(self, site: S3Client, bucket: str, logs: S3Target, *, src_bucket: str) -> None:
        super().__init__(name="replication-lag-poller", daemon=True)
        self.site, self.bucket, self.logs, self.src_bucket = site, bucket, logs, src_bucket
        self.at_site: dict[str, float] = {}
        self.committed: dict[str, float] = {}
        self.mu = threading.Lock()  # the writer's thread asks what was seen
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._after: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(POLL):
                self.poll()
        except BaseException as ex:  # noqa: BLE001 - reported by the figure
            self.error = ex

    def poll(self) -> None:
        t = time.time()
        for page in self.site.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            with self.mu:
                for o in page.get("Contents", []):
                    self.at_site.setdefault(o["Key"], t)
        wm = read_watermark(self.logs)
        for obj in list(list_logs(self.logs, after=self._after)):
            if wm is None or wm.last_object is None or obj.name > wm.last_object:
                break
            t = time.time()
            keys = [
                r.key
                for r in read_object(self.logs, obj.name)
                if r.bucket == self.src_bucket and r.op == "write"
            ]
            with self.mu:
                for key in keys:
                    if key:
                        self.committed.setdefault(key, t)
            self._after = obj.name

    def seen_all(self, keys: set[str]) -> bool:
        """Whether every key of ``keys`` was seen both at the site and in a committed log object."""
        with self.mu:
            return keys <= self.at_site.keys() and keys <= self.committed.keys()


class _Runner(threading.Thread):
    """A role's ``run(stop)`` in a thread; what it died of, kept for the figure."""

    def __init__(self, name: str, fn: Callable[[threading.Event], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.fn, self.stop_event = fn, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.fn(self.stop_event)
        except BaseException as ex:  # noqa: BLE001 - reported by the figure
            self.error = ex


def lag_figures(bench: Bench, site: Lab) -> list[Figure]:
    from rgw_module.admin import AdminClient

    lab = bench.lab
    seconds = bench.size(60, 20, minimum=5)
    src, log_bucket, dst = bench.name("rl-src"), bench.name("rl-logs"), bench.name("rl-dst")
    setup, site_s3 = s3_of(lab), s3_of(site)
    for b in (src, log_bucket):
        setup.create_bucket(Bucket=b)
    site_s3.create_bucket(Bucket=dst)
    ns = bench.name("replication-lag")
    store = bench.store(ns)
    admin = AdminClient(lab.rgw_endpoint, lab.access_key, lab.secret_key)
    logs = ChangeLogs(store, admin, src, ceph_conf=lab.conf, keyring=lab.keyring or None)
    try:
        done, poller = _lag_run(bench, site, logs, src, log_bucket, dst, seconds)
    finally:
        logs.close()
        admin.close()
        store.close()
        wipe_namespace_quietly(bench, ns)
        if not bench.throwaway:
            drop_bucket(setup, src)
            drop_bucket(setup, log_bucket)
            drop_bucket(site_s3, dst)
    ours, missing = lags(done, poller.at_site)
    base, base_missing = lags(done, poller.committed)
    o, c = lag_summary(ours), lag_summary(base)
    say(
        f"replication: lag p50 {o['p50']:.2f} s, p99 {o['p99']:.2f} s; log commit p50 {c['p50']:.2f} s, p99 {c['p99']:.2f} s"
    )
    params: dict[str, Any] = {
        "puts": len(done), "rate_per_s": LAG_RATE, "seconds": seconds, "poll_s": POLL,
        "never_seen_at_site": missing, "never_seen_committed": base_missing, "max_s": round(o["max"], 3),
        "collector": COLLECTOR_TIMINGS, "follower_poll_s": 0.2, "replication_interval_s": REPLICATION_INTERVAL,
        "workers": WORKERS,
    }  # fmt: skip
    return [
        Figure(
            GROUP, f"replication_lag_{p}", "s", o[p], c[p], LOG_COMMIT, higher_is_better=False, params=params
        )
        for p in ("p50", "p99")
    ]


def _lag_run(
    bench: Bench, site: Lab, logs: ChangeLogs, src: str, log_bucket: str, dst: str, seconds: int
) -> tuple[dict[str, float], Poller]:
    """Follower, collector and replicator in threads; the writer; the poller until every PUT is
    seen at the site (or 120 s after the last one)."""
    writer, site_reader = s3_of(bench.lab), s3_of(site)
    log_target = S3Target(log_bucket, "", client=s3_of(bench.lab))
    collector = Collector(
        logs.index,
        S3Target(log_bucket, "", client=writer),
        CollectorConfig.model_validate({**COLLECTOR_TIMINGS, "lease_ttl": 30.0}),
        watermark_cap=logs.follower.caught_up_until_us,
    )
    logs.collector = collector  # closed with the logs
    rc = replication_config(interval=REPLICATION_INTERVAL)
    site_cfg = site_config("lag", site, {src: dst})
    pool = client_pool(rc.workers)
    rep = make_replicator(
        logs.index, log_target, site_cfg, rc, source=s3_of(bench.lab, pool=pool),
        client=site_client(site_cfg, max_attempts=rc.max_attempts, pool=pool),
    )  # fmt: skip
    stop = threading.Event()
    roles = [
        _Runner("follower", logs.follower.run, stop),
        _Runner("collector", collector.run, stop),
        _Runner("replicator", ConsumerRunner(logs.index, rep, lease_ttl=30.0).run, stop),
    ]
    for r in roles:
        r.start()
    poller = Poller(site_reader, dst, log_target, src_bucket=src)
    done: dict[str, float] = {}
    try:
        _wait(
            lambda: logs.follower.caught_up_until() is not None and read_watermark(log_target) is not None,
            120,
            roles,
        )
        poller.start()
        n = int(seconds * LAG_RATE)
        say(f"replication: lag: {n} PUTs at {LAG_RATE:g}/s")
        t0 = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / LAG_RATE - time.monotonic()))
            key = f"lag/{i:06d}"
            writer.put_object(Bucket=src, Key=key, Body=b"lag %d" % i)
            done[key] = time.time()
        _wait(lambda: poller.seen_all(set(done)), 120, roles)
    finally:
        poller.stop.set()
        stop.set()
        for r in roles:
            r.join(60)
        if poller.is_alive():
            poller.join(10)
    for r in roles:
        if r.error is not None:
            raise RuntimeError(f"replication: lag: the {r.name} died: {r.error!r}") from r.error
    if poller.error is not None:
        raise RuntimeError(f"replication: lag: the poller died: {poller.error!r}") from poller.error
    return done, poller


def _wait(cond: Callable[[], bool], timeout: float, roles: list[_Runner]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        dead = [r for r in roles if not r.is_alive()]
        if dead:
            raise RuntimeError(f"replication: lag: the {dead[0].name} stopped: {dead[0].error!r}")
        if time.monotonic() > deadline:
            say(f"WARNING: replication: lag: still waiting after {timeout:.0f}s; going on")
            return
        time.sleep(POLL)
