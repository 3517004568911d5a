"""Figure group ``replication`` (issue 16, REP.1): the replication consumer against the tools an
operator would use instead, between two lab radosgw instances standing for two sites: the
bench's lab is the source zone, a second lab booted beside it (``<lab dir>-site``, same Ceph
release) is the site.

* ``replication_requests`` / ``replication_wall_time``: a 1% change of a bucket of N 1 KiB
  objects (20,000 at scale 1) replicated by a ``SiteReplicator`` from the change logs, every S3
  request it makes counted on the wire (log bucket, source, site), against ``rclone sync`` of
  the same buckets in rclone's default comparison (size and modification time), its requests
  counted from ``--dump headers``. ``replication_requests_vs_rclone_checksum``: the same change
  against ``rclone sync --checksum`` (size and the listing's MD5: no HEAD per object).
* ``replication_throughput``, ``replication_lag_p50`` and ``_p99``: ``tools/bench/replication_stream.py``.

Set-up (not measured): the source bucket and each site bucket are seeded with the same N objects
(``FastPut``), as after an initial replication; the RGW follower and the collector write the
change logs in-process (``backup_passes.ChangeLogs``) and catch up; the replicator's checkpoint
is committed at the watermark **without** replicating the full sync's baseline records (a
``Cursor`` commit under the consumer's lease), then one warm-up object is replicated uncounted,
so that the measured pass is a running replicator's (the first log object after taking the lease
is applied carefully, with a HEAD per record). Then 1% of the objects change (3:1:1 overwritten :
new : deleted, ``backup_passes.plan_changes``), the logs catch up (not counted: they run for
every consumer), and the replicator steps until its checkpoint reaches the watermark.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changelog.config import ReplicationConfig, SiteConfig
from changelog.consumers.framework import ConsumerRunner, Cursor
from changelog.consumers.replication.consumer import SiteReplicator
from changelog.consumers.replication.sites import transfer_config
from changelog.errors import TransientError
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.reader import read_watermark
from changelog.pipeline.s3client import make_s3_client
from changelog.pipeline.targets import S3Target, Target
from tools.bench.backup_passes import ChangeLogs, Changes, Counted, apply_changes, list_all, plan_changes
from tools.bench.common import (
    CEPH_LAB,
    S3_REGION,
    S3_TIMEOUT,
    Bench,
    FastPut,
    Figure,
    FigureSkipped,
    Lab,
    lab_down,
    lab_from_env,
    lab_release,
    lab_up,
    say,
    wipe_namespace,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

GROUP = "replication"
CHANGED = 0.01
MIX = (3, 1, 1)  # overwritten : new : deleted, as in the backup figure
OBJECT_BYTES = 1024
WORKERS = 8  # ours: [replication] workers; rclone: --transfers and --checkers
PART_BYTES = 8 * 1024 * 1024  # ours: [replication] part_bytes; rclone: upload cutoff and chunk size
PART_CONCURRENCY = 2  # sites.PART_CONCURRENCY: parts of one object in flight
SEED_WORKERS = 16
SEED_BODY = b"seed " * (OBJECT_BYTES // 5) + b"." * (OBJECT_BYTES % 5)
WARM_KEY = "warm/0000000"
ZONE = "bench-source"
RCLONE_DEFAULT = "rclone sync (size + modtime: HEAD per object)"
RCLONE_CHECKSUM = "rclone sync --checksum (size + listing MD5)"


# --------------------------------------------------------------------------- the two labs


def s3_of(lab: Lab, *, pool: int = 32) -> S3Client:
    """A set-up client (not counted) of ``lab``'s radosgw, from the project's one factory."""
    return make_s3_client(
        lab.rgw_endpoint,
        access_key=lab.access_key,
        secret_key=lab.secret_key,
        region=S3_REGION,
        max_attempts=5,
        connect_timeout=S3_TIMEOUT,
        read_timeout=S3_TIMEOUT,
        max_pool=pool,
    )


def site_lab(bench: Bench) -> Lab:
    """The site: a second lab of the source lab's release in ``<lab dir>-site``, booted (or
    completed) once per run. Left running beside a lab the run was given with ``--lab`` (as
    ``--lab`` leaves its lab), or when it was running already; stopped at the end when this run
    booted it beside a throwaway lab or beside the environment's lab (a test's, which would
    otherwise leave it running)."""
    got = bench.shared.get("replication_site")
    if isinstance(got, Lab):
        return got
    release, _ = lab_release(bench.lab, bench.s3())
    directory = (Path(bench.lab.dir + "-site") if bench.lab.dir else bench.tmp / "lab-site").absolute()
    env_lab = lab_from_env(os.environ)
    from_env = env_lab is not None and env_lab.rgw_endpoint == bench.lab.rgw_endpoint
    keep = not bench.throwaway and bool(bench.lab.dir) and (not from_env or lab_live(directory))
    lab = lab_up(directory, release or None)
    if not keep:
        bench.on_exit(f"site lab {directory}", lambda: lab_down(directory))
    bench.shared["replication_site"] = lab
    return lab


def lab_live(directory: Path) -> bool:
    """Whether a `tools/ceph-lab` lab is up in ``directory``."""
    if not directory.is_dir():
        return False
    proc = subprocess.run(
        [sys.executable, str(CEPH_LAB), "status", str(directory)],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return proc.returncode == 0


def site_config(name: str, lab: Lab, bucket_map: Mapping[str, str]) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "name": name,
            "endpoint": lab.rgw_endpoint,
            "access_key": lab.access_key,
            "secret_key": lab.secret_key,
            "region": S3_REGION,
            "bucket_map": dict(bucket_map),
        }
    )


def replication_config(**kw: object) -> ReplicationConfig:
    return ReplicationConfig.model_validate({"workers": WORKERS, "part_bytes": PART_BYTES, **kw})


def client_pool(workers: int) -> int:
    """Connections per client, as ``sites.Replication`` sizes them: each worker's GET, and its
    upload's parts."""
    return 2 * workers * (1 + PART_CONCURRENCY) + 4


def make_replicator(
    index: ChangeIndex,
    logs: Target,
    site: SiteConfig,
    rc: ReplicationConfig,
    *,
    source: S3Client,
    client: S3Client,
) -> SiteReplicator:
    return SiteReplicator(
        index,
        logs,
        site,
        rc,
        source=source,
        site_client=client,
        transfer=transfer_config(rc.part_bytes),
        zone=ZONE,
    )


def drive(runner: ConsumerRunner, last: str, *, timeout: float) -> int:
    """Step ``runner`` (lease taken) until its checkpoint reaches log object ``last``; the steps
    taken. A transient failure is retried after a second, as the leased loop would."""
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    steps = 0
    while (runner.checkpoint().after or "") < last:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"replication: checkpoint {runner.checkpoint().after} short of {last} after {timeout:.0f}s"
            )
        steps += 1
        try:
            runner.step(stop)
        except TransientError as ex:
            say(f"replication: transient failure, stepping again: {ex}")
            time.sleep(1.0)
    return steps


def last_object(logs: Target) -> str:
    wm = read_watermark(logs)
    if wm is None or wm.last_object is None:
        raise RuntimeError("replication: the collector wrote no watermark")
    return wm.last_object


def drop_bucket(s3: Any, bucket: str) -> None:
    """Delete a bucket and its objects, 1000 per request (none of the bench's buckets has a
    notification, with which radosgw 16.2 aborts on DeleteObjects)."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except Exception as ex:  # noqa: BLE001 - best effort; the next figures do not need it
        say(f"WARNING: cannot remove bucket {bucket}: {ex}")


# --------------------------------------------------------------------------- rclone


def rclone_config(source: Lab, site: Lab) -> str:
    """rclone's config: remote ``src`` (the source lab) and ``dst`` (the site lab)."""
    out = []
    for name, lab in (("src", source), ("dst", site)):
        out.append(
            f"[{name}]\ntype = s3\nprovider = Ceph\nendpoint = {lab.rgw_endpoint}\n"
            f"access_key_id = {lab.access_key}\nsecret_access_key = {lab.secret_key}\nregion = {S3_REGION}\n"
        )
    return "\n".join(out)


def rclone_args(config: Path, src: str, dst: str, log: Path, *, extra: Sequence[str] = ()) -> list[str]:
    """``rclone sync`` with our parallelism and part size, every request dumped into ``log``;
    one attempt (a retried sync would count its requests twice); ``--fast-list``: one recursive
    listing instead of one per "directory", rclone's cheapest way to list S3."""
    mib = PART_BYTES // (1024 * 1024)
    return [
        "rclone", "--config", str(config), "sync", f"src:{src}", f"dst:{dst}",
        "--dump", "headers", "--log-file", str(log), "--retries", "1", "--fast-list",
        "--transfers", str(WORKERS), "--checkers", str(WORKERS),
        "--s3-upload-cutoff", f"{mib}M", "--s3-chunk-size", f"{mib}M",
        "--s3-upload-concurrency", str(PART_CONCURRENCY), *extra,
    ]  # fmt: skip


_REQUEST_LINE = re.compile(r" DEBUG : (GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]$")
_LOG_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


def s3_op(method: str, target: str, *, copy: bool = False) -> str:
    """The S3 operation of a path-style request (``METHOD /bucket[/key][?query]``)."""
    parts = urllib.parse.urlsplit(target)
    _, _, key = urllib.parse.unquote(parts.path).lstrip("/").partition("/")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if not key:
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        bucket_ops = {"GET": "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"}
        bucket_ops.update({"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"})
        return bucket_ops.get(method, f"{method} bucket")
    if "uploadId" in query:
        ops = {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}
        return ops.get(method, "ListParts")
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "PUT":
        return "CopyObject" if copy else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, f"{method} object"
    )


def parse_rclone_requests(log: str, roles: Mapping[str, str]) -> Counter[str]:
    """HTTP requests in an rclone ``--dump headers`` log, by ``"<S3 op> <role>"``; ``roles``
    maps an endpoint's ``host:port`` (its ``Host`` header) to a role. rclone logs a request as
    separate lines (``HTTP REQUEST (req ID)``, then the request line with its headers up to the
    next log line), and concurrent requests interleave them: each request line is counted with
    the headers under it."""
    out: Counter[str] = Counter()
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        m = _REQUEST_LINE.search(lines[i]) if " DEBUG : " in lines[i] else None
        i += 1
        if m is None:
            continue
        host, copy = "", False
        while i < len(lines) and not _LOG_LINE.match(lines[i]):
            name, _, value = lines[i].partition(":")
            if name.lower() == "host":
                host = value.strip()
            copy = copy or name.lower() == "x-amz-copy-source"
            i += 1
        out[f"{s3_op(m.group(1), m.group(2), copy=copy)} {roles.get(host, host or '?')}"] += 1
    return out


def dumped_requests(log: str) -> int:
    """The ``HTTP REQUEST`` lines of an rclone dump: one per request sent."""
    return sum(1 for line in log.splitlines() if " DEBUG : HTTP REQUEST " in line)


@dataclass(frozen=True)
class RcloneRun:
    seconds: float
    requests: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def run_rclone(bench: Bench, site: Lab, src: str, dst: str, *, extra: Sequence[str] = ()) -> RcloneRun:
    """One ``rclone sync`` of ``src`` (source lab) into ``dst`` (site lab): wall time and requests."""
    config = bench.tmp / "rclone.conf"
    config.write_text(rclone_config(bench.lab, site))
    log = bench.tmp / f"rclone-{dst}.log"
    log.unlink(missing_ok=True)
    # rclone's AWS SDK fails to start with --dump when AWS_CA_BUNDLE is set ("unable to load
    # custom CA bundle, HTTPClient's transport unsupported type"); the labs speak plain HTTP.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    t = time.monotonic()
    proc = subprocess.run(
        rclone_args(config, src, dst, log, extra=extra),
        env=env, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - t
    text = log.read_text(errors="replace") if log.exists() else ""
    if proc.returncode != 0:
        errors = [ln for ln in text.splitlines() if "ERROR" in ln][-5:]
        raise RuntimeError(f"rclone sync failed ({proc.returncode}): {proc.stderr.strip()[-500:]} {errors}")
    roles = {
        urllib.parse.urlsplit(lab.rgw_endpoint).netloc: role
        for lab, role in ((bench.lab, "src"), (site, "site"))
    }
    requests = parse_rclone_requests(text, roles)
    if sum(requests.values()) != dumped_requests(text):
        raise RuntimeError(
            f"rclone log: {dumped_requests(text)} HTTP REQUEST lines, {sum(requests.values())} parsed"
        )
    log.unlink(missing_ok=True)  # tens of MB at scale 1
    return RcloneRun(seconds, dict(sorted(requests.items())))


# --------------------------------------------------------------------------- requests figure


@dataclass(frozen=True)
class RequestBuckets:
    """The source bucket and its change logs (source lab); ours', rclone's and rclone
    --checksum's copies of it (site lab)."""

    src: str
    logs: str
    ours: str
    rclone: str
    checksum: str

    @property
    def sites(self) -> tuple[str, str, str]:
        return (self.ours, self.rclone, self.checksum)


@dataclass(frozen=True)
class RequestsMeasured:
    objects: int
    changes: Changes
    ours_s: float
    ours_requests: dict[str, int]
    ours_stats: Mapping[str, object]
    steps: int
    rclone: RcloneRun
    checksum: RcloneRun
    timings: dict[str, float]

    @property
    def ours_total(self) -> int:
        return sum(self.ours_requests.values())


def requests_figures(bench: Bench, site: Lab) -> list[Figure]:
    from rgw_module.admin import AdminClient

    lab = bench.lab
    n = bench.size(20_000, 500, minimum=100)
    b = RequestBuckets(*(bench.name(f"rp-{x}") for x in ("src", "logs", "ours", "rclone", "sum")))
    src_s3, site_s3 = s3_of(lab, pool=SEED_WORKERS + 4), s3_of(site, pool=SEED_WORKERS + 4)
    for bucket in (b.src, b.logs):
        src_s3.create_bucket(Bucket=bucket)
    for bucket in b.sites:
        site_s3.create_bucket(Bucket=bucket)
    ns = bench.name("replication")
    store = bench.store(ns)
    admin = AdminClient(lab.rgw_endpoint, lab.access_key, lab.secret_key)
    logs = ChangeLogs(store, admin, b.src, ceph_conf=lab.conf, keyring=lab.keyring or None)
    try:
        m = _measure_requests(bench, site, logs, b, n, src_s3, site_s3)
    finally:
        logs.close()
        admin.close()
        store.close()
        wipe_namespace(bench, ns)
        if not bench.throwaway:
            # In parallel: 100,000 deletes at scale 1, on two radosgw processes.
            drops = [(src_s3, b.src), (src_s3, b.logs), *((site_s3, bucket) for bucket in b.sites)]
            with ThreadPoolExecutor(len(drops)) as pool:
                list(pool.map(lambda d: drop_bucket(*d), drops))
    return _requests_figures(m)


def _measure_requests(
    bench: Bench, site: Lab, logs: ChangeLogs, b: RequestBuckets, n: int, src_s3: S3Client, site_s3: S3Client
) -> RequestsMeasured:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    say(f"replication: seeding {n:,} objects into the source and 3 site buckets")
    FastPut(bench.lab).put_many([(b.src, f"data/{i:07d}", SEED_BODY) for i in range(n)], workers=SEED_WORKERS)
    FastPut(site).put_many(
        [(bucket, f"data/{i:07d}", SEED_BODY) for i in range(n) for bucket in b.sites], workers=SEED_WORKERS
    )
    timings["seed_s"] = time.monotonic() - t0
    if not logs.start(b.logs, src_s3):
        raise RuntimeError("replication: follower lease busy")
    timings["full_sync_s"] = _catch_up(logs)

    rc = replication_config()
    site_cfg = site_config("bench", site, {b.src: b.ours})
    ours = [Counted(endpoint, lab.access_key, lab.secret_key, pool=client_pool(WORKERS))
            for endpoint, lab in ((bench.lab.rgw_endpoint, bench.lab), (site.rgw_endpoint, site), (bench.lab.rgw_endpoint, bench.lab))]  # fmt: skip
    source, site_c, log_c = ours
    log_target = S3Target(b.logs, "", client=log_c.client)
    rep = make_replicator(logs.index, log_target, site_cfg, rc, source=source.client, client=site_c.client)
    runner = ConsumerRunner(logs.index, rep, lease_ttl=60.0)
    if not runner.acquire():
        raise RuntimeError("replication: consumer lease busy")
    try:
        # The site holds the seeded objects already: the checkpoint skips the baseline records.
        setup_logs = S3Target(b.logs, "", client=src_s3)
        Cursor(logs.index, rep.name, runner.lease, time.time).commit(last_object(setup_logs))
        runner.step_down()
        if not runner.acquire():
            raise RuntimeError("replication: consumer lease busy")
        # Warm-up (uncounted): one object, so the measured pass is not the careful first one.
        FastPut(bench.lab).put(b.src, WARM_KEY, SEED_BODY)
        FastPut(site).put_many([(bucket, WARM_KEY, SEED_BODY) for bucket in (b.rclone, b.checksum)])
        timings["warm_up_logs_s"] = _catch_up(logs)
        drive(runner, last_object(setup_logs), timeout=600)

        changes = plan_changes(n, CHANGED, MIX, random.Random(1), minimum=len(MIX))
        say(f"replication: changing {changes.changed} objects ({changes.text()})")
        apply_changes(src_s3, b.src, changes, objects=n, size=OBJECT_BYTES, workers=WORKERS)
        timings["catch_up_s"] = _catch_up(logs)
        last = last_object(setup_logs)
        for c in ours:
            c.reset()
        say("replication: ours (SiteReplicator) to the watermark")
        t = time.monotonic()
        steps = drive(runner, last, timeout=1800)
        ours_s = time.monotonic() - t
    finally:
        runner.step_down()
    requests = Counter({f"{op} {role}": k for c, role in zip(ours, ("src", "site", "logs"), strict=True)
                        for op, k in c.ops.items()})  # fmt: skip
    say(f"replication: ours {sum(requests.values())} requests in {ours_s:.1f}s")
    say("replication: rclone sync (default comparison)")
    rclone = run_rclone(bench, site, b.src, b.rclone, extra=["--no-update-modtime"])
    say(f"replication: rclone {rclone.total} requests in {rclone.seconds:.1f}s; rclone sync --checksum")
    checksum = run_rclone(bench, site, b.src, b.checksum, extra=["--checksum"])
    say(f"replication: rclone --checksum {checksum.total} requests in {checksum.seconds:.1f}s")
    _verify(src_s3, site_s3, b)
    return RequestsMeasured(
        n, changes, ours_s, dict(sorted(requests.items())), rep.stats(), steps, rclone, checksum, timings
    )


def _catch_up(logs: ChangeLogs) -> float:
    """The change logs caught up with every write so far: seconds taken."""
    t = time.monotonic()
    logs.catch_up(timeout=1800)
    return time.monotonic() - t


def _verify(src_s3: S3Client, site_s3: S3Client, b: RequestBuckets) -> None:
    """Every site bucket holds the source's keys, sizes and ETags (single-PUT objects: the
    ETag is the content's MD5 on both sides)."""
    want = list_all(src_s3, b.src)
    for bucket in b.sites:
        got = list_all(site_s3, bucket)
        if got != want:
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise RuntimeError(
                f"replication: site bucket {bucket} differs from the source: {len(missing)} missing "
                f"{missing[:3]}, {len(extra)} extra {extra[:3]}, {len(differ)} differ {differ[:3]}"
            )


def _requests_figures(m: RequestsMeasured) -> list[Figure]:
    changes = m.changes
    common: dict[str, Any] = {
        "objects": m.objects,
        "changed": changes.changed,
        "overwritten": len(changes.overwritten),
        "new": changes.new,
        "deleted": len(changes.deleted),
        "object_bytes": OBJECT_BYTES,
        "workers": WORKERS,
    }
    stats = {k: m.ours_stats.get(k) for k in ("completed", "skipped", "failed", "requests")}
    params: dict[str, Any] = {
        **common,
        "ours_requests_by_op": m.ours_requests,
        "baseline_requests_by_op": m.rclone.requests,
        "ours_replicator_stats": stats,
        "ours_steps": m.steps,
        "checkpoint": "committed at the watermark past the baseline (Cursor), then a warm-up object uncounted",
        **{k: round(v, 1) for k, v in m.timings.items()},
    }
    summary = (
        f"ours {m.ours_total} ({', '.join(f'{k} {v}' for k, v in m.ours_requests.items())}); "
        f"rclone {m.rclone.total} ({', '.join(f'{k} {v}' for k, v in m.rclone.requests.items())})"
    )
    checksum_summary = f"rclone --checksum {m.checksum.total} ({', '.join(f'{k} {v}' for k, v in m.checksum.requests.items())})"
    return [
        Figure(
            GROUP, "replication_requests", "requests", m.ours_total, m.rclone.total, RCLONE_DEFAULT,
            higher_is_better=False, goal=("ratio", ">=", 20), params=params, summary=summary,
        ),
        Figure(
            GROUP, "replication_wall_time", "s", m.ours_s, m.rclone.seconds, RCLONE_DEFAULT,
            higher_is_better=False, params={**common, "rclone_checksum_s": round(m.checksum.seconds, 2)},
        ),
        Figure(
            GROUP, "replication_requests_vs_rclone_checksum", "requests", m.ours_total, m.checksum.total,
            RCLONE_CHECKSUM, higher_is_better=False,
            params={**common, "baseline_requests_by_op": m.checksum.requests, "baseline_s": round(m.checksum.seconds, 2)},
            summary=checksum_summary,
        ),
    ]  # fmt: skip


def run(bench: Bench) -> list[Figure]:
    from tools.bench.replication_stream import lag_figures, throughput_figure

    if shutil.which("rclone") is None:
        raise FigureSkipped(
            "rclone is not installed (Debian package rclone): no baseline for the request count"
        )
    site = site_lab(bench)
    say(f"replication: site lab {site.rgw_endpoint} ({site.dir})")
    figures = requests_figures(bench, site)
    figures.append(throughput_figure(bench, site))
    figures.extend(lag_figures(bench, site))
    return figures
