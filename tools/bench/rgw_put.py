"""Figure 3, ``rgw-put``: what following a zone costs radosgw's write path, with the size and
ETag of every write in its record, against what the peer (a persistent bucket notification)
costs it.

Rounds of N 4 KiB PUTs from boto3 threads (``--threads``, default 4), in four configurations,
rotated so that each goes first in turn:

* **off**: a bucket nobody follows and no serve process (log_data is on in the lab zone, as the
  follower needs it; ceph-notes found it costs nothing measurable);
* **serve**: a bucket followed by a running ``rgw-changelog serve`` (follower + collector, the
  default ``[source]`` and ``[collector]`` timings, index on RADOS, logs to a bucket of the same
  radosgw), ``[source] object_info = "index"`` (the default: size, ETag, mtime and storage class
  from the bucket index entries, read over RADOS with the ``[index]`` section's ceph_conf and
  keyring; no request to radosgw);
* **serve-head**: the same serve with ``object_info = "head"`` (the former way: a HEAD or
  listing per write, sent to radosgw);
* **serve-none**: the same serve with ``object_info = "none"`` (records without size or ETag):
  what following costs without the facts, so serve - serve-none is the bucket index reads' cost;
* **notification**: a bucket with a persistent notification to a local HTTP sink.

The serve configurations follow the same bucket with the same index and log bucket, so the
follower resumes from its markers; each round's keys are named by configuration
(``r<rep>-<config>/``). serve is started before its round and caught up (watermark past its
start), and after the round caught up again (every PUT of the round in a committed log object,
so no record of it is written by the other configuration) and stopped (SIGTERM): its catch-up is
never inside a measured round. Each round also measures the CPU that radosgw, the OSD, serve and
the client (this process) spent per PUT (``/proc/PID/stat``; radosgw and the OSD from the lab's
pid files).

Figures: serve vs off (goal >= 0.95), serve-head vs off, serve vs serve-head, serve-none vs
off, notification vs off (the peer's cost: radosgw's 2-phase commit into its queue on every PUT), and serve vs
notification. Validity: the fraction of serve's write records of the round with a size must be
~1 (``SIZES_VALID``); the summary line says so when it is not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.mutation import Op
from changelog.pipeline.reader import read_records
from tools.bench.common import Bench, Figure, lab_pids, median, proc_cpu_s, put_round, remove_bucket, say
from tools.bench.peer import NotificationPeer, get_peer
from tools.bench.serve import ServeProcess, round_timings

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

GROUP = "rgw-put"
OBJECT_BYTES = 4096
CONFIGS = ("off", "serve", "serve-head", "serve-none", "notification")
# [source] object_info of each serve configuration.
OBJECT_INFO = {"serve": "index", "serve-head": "head", "serve-none": "none"}
# Below this fraction of write records with a size, a serve figure does not measure what it says.
SIZES_VALID = 0.99


@dataclass
class Rounds:
    """What the rounds measured: PUT/s of every round by configuration, CPU ms per PUT by
    configuration and process, serve's catch-up before each of its rounds, and the PUTs sent to
    the followed bucket (warm-up included)."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {c: {} for c in CONFIGS})
    waits: list[float] = field(default_factory=list)
    sent_on: int = 0


def round_config(key: str) -> str | None:
    """The configuration a measured round's key names (``r<rep>-<config>/<n>``), else None."""
    head = key.split("/", 1)[0]
    rep, sep, config = head.partition("-")
    return config if sep and rep[:1] == "r" and rep[1:].isdigit() else None


def size_counts(records: Iterable[LogRecord], bucket: str) -> dict[str, tuple[int, int]]:
    """Per configuration (by key, ``round_config``): (write records of ``bucket``, how many of
    them have a size)."""
    out: dict[str, tuple[int, int]] = {}
    for r in records:
        if r.bucket != bucket or r.op != Op.WRITE.value or r.key is None:
            continue
        config = round_config(r.key)
        if config is None:
            continue
        n, sized = out.get(config, (0, 0))
        out[config] = (n + 1, sized + (r.size is not None))
    return out


def run(bench: Bench) -> list[Figure]:
    threads = bench.threads
    s3 = bench.s3(pool=2 * threads + 4)
    off_bucket, on_bucket = bench.name("put-off"), bench.name("put-on")
    for b in (off_bucket, on_bucket):
        s3.create_bucket(Bucket=b)
    peer = get_peer(bench, s3)
    timings = round_timings(bench)
    serve = ServeProcess(
        bench, s3, what="put", buckets=[on_bucket],
        poll_interval=timings.poll_interval, interval=timings.interval, settle=timings.settle,
    )  # fmt: skip
    n = bench.size(800, 150, minimum=50)
    reps = bench.reps(len(CONFIGS), 1)
    try:
        rounds = _rounds(bench, s3, serve, peer, off_bucket, on_bucket, n=n, reps=reps)
        # Write records only: the log also holds the bucket's creation (bucket_create).
        records = [r for r in read_records(serve.target) if r.bucket == on_bucket and r.op == Op.WRITE.value]
        logged = len(records)
        if logged != rounds.sent_on:
            raise RuntimeError(f"serve logged {logged} of the {rounds.sent_on} PUTs to {on_bucket}")
        sizes = size_counts(records, on_bucket)
        peer_stats = peer.stats()
    finally:
        serve.close()
        for b in (off_bucket, on_bucket):
            remove_bucket(s3, b)
    return _figures(
        rounds, n=n, threads=threads, reps=reps, logged=logged, sizes=sizes, peer_stats=peer_stats,
        timings=timings.text,
    )  # fmt: skip


def _rounds(
    bench: Bench,
    s3: S3Client,
    serve: ServeProcess,
    peer: NotificationPeer,
    off_bucket: str,
    on_bucket: str,
    *,
    n: int,
    reps: int,
) -> Rounds:
    """A warm-up in each bucket, then ``reps`` rounds of ``n`` PUTs per configuration, the
    configuration that goes first rotating."""
    threads = bench.threads
    out = Rounds()
    warm = max(20, n // 10)
    put_round(s3, off_bucket, warm, threads=threads, prefix="warmup")
    put_round(s3, on_bucket, warm, threads=threads, prefix="warmup")
    put_round(s3, peer.bucket, warm, threads=threads, prefix="warmup")
    peer.sent += warm
    out.sent_on += warm
    pids = lab_pids(bench.lab)
    k = len(CONFIGS)
    for rep in range(reps):
        for config in CONFIGS[rep % k :] + CONFIGS[: rep % k]:
            prefix = f"r{rep}-{config}"
            if config == "off":
                rate, cpu = _measured(s3, off_bucket, n, threads, prefix, pids)
            elif config == "notification":
                rate, cpu = _measured(s3, peer.bucket, n, threads, prefix, pids)
                peer.sent += n
            else:
                serve.configure(object_info=OBJECT_INFO[config])
                serve.start()
                out.waits.append(serve.wait_watermark(time.time()))
                serve_pid = serve.pid
                rate, cpu = _measured(
                    s3, on_bucket, n, threads, prefix, {**pids, **({"serve": serve_pid} if serve_pid else {})}
                )
                out.sent_on += n
                serve.check()
                # Every PUT of the round in the logs before serve stops: none of its records is
                # then written by the next configuration's serve.
                serve.wait_watermark(time.time() + 0.001, timeout=180)
                serve.stop()
            out.rates[config].append(rate)
            for proc, ms in cpu.items():
                out.cpu[config].setdefault(proc, []).append(ms)
            cpu_text = ", ".join(f"{p} {ms:.2f}" for p, ms in cpu.items())
            say(f"rgw-put rep {rep + 1}/{reps} {config:12}: {rate:6.1f} PUT/s; CPU ms/PUT {cpu_text}")
    return out


def _measured(
    s3: S3Client, bucket: str, n: int, threads: int, prefix: str, pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """One round of ``n`` PUTs: PUT/s, and the CPU ms per PUT of each process in ``pids`` and of
    this one (``client``: boto3's signing and parsing)."""
    procs = {**pids, "client": os.getpid()}
    before = {p: proc_cpu_s(pid) for p, pid in procs.items()}
    rate, _ = put_round(s3, bucket, n, threads=threads, prefix=prefix)
    cpu: dict[str, float] = {}
    for p, pid in procs.items():
        a, b = before[p], proc_cpu_s(pid)
        if a is not None and b is not None:
            cpu[p] = (b - a) * 1000 / n
    return rate, cpu


def sizes_text(sizes: dict[str, tuple[int, int]]) -> tuple[str, bool]:
    """The size check of the serve rounds in one line, and whether the serve figure is valid."""
    parts, valid = [], True
    for config, info in OBJECT_INFO.items():
        if info == "none":
            continue
        n, sized = sizes.get(config, (0, 0))
        frac = sized / n if n else 0.0
        parts.append(f"{config} (object_info {info}) {frac:.3f} ({sized}/{n})")
        if config == "serve" and frac < SIZES_VALID:
            valid = False
    text = "write records with a size: " + "; ".join(parts)
    return (text if valid else f"NOT VALID: {text}, below {SIZES_VALID}"), valid


def _cpu_text(cpu: dict[str, dict[str, list[float]]]) -> str:
    """Median CPU ms per PUT by configuration and process, in one line."""
    return "; ".join(
        f"{c}: " + ", ".join(f"{p} {median(v):.2f}" for p, v in procs.items()) for c, procs in cpu.items() if procs
    )


def _figures(
    rounds: Rounds,
    *,
    n: int,
    threads: int,
    reps: int,
    logged: int,
    sizes: dict[str, tuple[int, int]],
    peer_stats: dict[str, int],
    timings: str,
) -> list[Figure]:
    rates = rounds.rates
    common: dict[str, Any] = {
        "puts_per_round": n,
        "object_bytes": OBJECT_BYTES,
        "threads": threads,
        "reps": reps,
        "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }
    off, on, head, none, notif = (median(rates[c]) for c in CONFIGS)
    sizes_line, _ = sizes_text(sizes)
    cpu = {c: {p: [round(x, 3) for x in v] for p, v in procs.items()} for c, procs in rounds.cpu.items()}
    say(f"rgw-put: {sizes_line}")
    say(f"rgw-put: CPU ms/PUT (median) {_cpu_text(rounds.cpu)}")
    serve_params = {
        **common,
        "serve": timings,
        "logged": logged,
        "write_records_with_size": {c: list(v) for c, v in sizes.items()},
        "cpu_ms_per_put": cpu,
        "catch_up_s": [round(w, 1) for w in rounds.waits],
    }
    return [
        Figure(
            GROUP, "rgw_put_with_serve", "PUT/s", on, off, "no follower (serve not running)",
            goal=("ratio", ">=", 0.95),
            params={**serve_params, "object_info": "index"},
            summary=sizes_line,
        ),
        Figure(
            GROUP, "rgw_put_with_serve_head", "PUT/s", head, off, "no follower (serve not running)",
            params={**common, "object_info": "head"},
            summary=f"CPU ms/PUT (median) {_cpu_text(rounds.cpu)}",
        ),
        Figure(
            GROUP, "rgw_put_serve_vs_serve_head", "PUT/s", on, head, 'serve with object_info "head" (HEAD per write)',
            params=common,
        ),
        Figure(
            GROUP, "rgw_put_with_serve_none", "PUT/s", none, off, "no follower (serve not running)",
            params={**common, "object_info": "none"},
        ),
        Figure(
            GROUP, "rgw_put_with_notification", "PUT/s", notif, off, "no notification (peer's own cost)",
            params={**common, "topic": "persistent, HTTP push to a local sink", "sink": peer_stats},
        ),
        Figure(
            GROUP, "rgw_put_serve_vs_notification", "PUT/s", on, notif, "persistent bucket notification (peer)",
            params=common,
        ),
    ]  # fmt: skip
