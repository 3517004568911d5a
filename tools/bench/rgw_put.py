"""Figure 3, ``rgw-put``: what following a zone costs radosgw's write path, against what the peer
(a persistent bucket notification) costs it.

Rounds of N 4 KiB PUTs from boto3 threads (``--threads``, default 4), in three configurations,
rotated so that each goes first in turn:

* **off**: a bucket nobody follows and no serve process (log_data is on in the lab zone, as the
  follower needs it; ceph-notes found it costs nothing measurable);
* **serve**: a bucket followed by a running ``rgw-changelog serve`` (follower + collector, the
  default ``[source]`` and ``[collector]`` timings, index on RADOS, logs to a bucket of the same
  radosgw). serve is started before the round and caught up (watermark past its start), and
  stopped (SIGTERM) after it, so its catch-up is never inside another round;
* **notification**: a bucket with a persistent notification to a local HTTP sink.

Figures: serve vs off (goal >= 0.9), notification vs off (the peer's cost: radosgw's 2-phase
commit into its queue on every PUT), and serve vs notification.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from changelog.pipeline.reader import read_records
from tools.bench.common import Bench, Figure, median, put_round, remove_bucket, say
from tools.bench.peer import NotificationPeer, get_peer
from tools.bench.serve import ServeProcess

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

GROUP = "rgw-put"
OBJECT_BYTES = 4096
CONFIGS = ("off", "serve", "notification")


@dataclass
class Rounds:
    """What the rounds measured: PUT/s of every round by configuration, serve's catch-up before
    each of its rounds, and the PUTs sent to the followed bucket (warm-up included)."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    waits: list[float] = field(default_factory=list)
    sent_on: int = 0


def run(bench: Bench) -> list[Figure]:
    threads = bench.threads
    s3 = bench.s3(pool=2 * threads + 4)
    off_bucket, on_bucket = bench.name("put-off"), bench.name("put-on")
    for b in (off_bucket, on_bucket):
        s3.create_bucket(Bucket=b)
    peer = get_peer(bench, s3)
    serve = ServeProcess(bench, s3, what="put", buckets=[on_bucket])
    n = bench.size(800, 150, minimum=50)
    reps = bench.reps(3, 1)
    try:
        rounds = _rounds(bench, s3, serve, peer, off_bucket, on_bucket, n=n, reps=reps)
        logged = sum(1 for r in read_records(serve.target) if r.bucket == on_bucket)
        if logged != rounds.sent_on:
            raise RuntimeError(f"serve logged {logged} of the {rounds.sent_on} PUTs to {on_bucket}")
        peer_stats = peer.stats()
    finally:
        serve.close()
        for b in (off_bucket, on_bucket):
            remove_bucket(s3, b)
    return _figures(rounds, n=n, threads=threads, reps=reps, logged=logged, peer_stats=peer_stats)


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
    for rep in range(reps):
        for config in CONFIGS[rep % 3 :] + CONFIGS[: rep % 3]:
            prefix = f"r{rep}"
            if config == "off":
                rate, _ = put_round(s3, off_bucket, n, threads=threads, prefix=prefix)
            elif config == "notification":
                rate, _ = put_round(s3, peer.bucket, n, threads=threads, prefix=prefix)
                peer.sent += n
            else:
                serve.start()
                out.waits.append(serve.wait_watermark(time.time()))
                rate, done = put_round(s3, on_bucket, n, threads=threads, prefix=prefix)
                out.sent_on += n
                serve.check()
                if rep == reps - 1:
                    # Proof that serve did its job: every PUT of the figure is in its logs.
                    serve.wait_watermark(max(done.values()) + 0.001, timeout=180)
                serve.stop()
            out.rates[config].append(rate)
            say(f"rgw-put rep {rep + 1}/{reps} {config:12}: {rate:6.1f} PUT/s")
    return out


def _figures(
    rounds: Rounds, *, n: int, threads: int, reps: int, logged: int, peer_stats: dict[str, int]
) -> list[Figure]:
    rates = rounds.rates
    common: dict[str, Any] = {
        "puts_per_round": n,
        "object_bytes": OBJECT_BYTES,
        "threads": threads,
        "reps": reps,
        "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }
    off, on, notif = median(rates["off"]), median(rates["serve"]), median(rates["notification"])
    return [
        Figure(
            GROUP,
            "rgw_put_with_serve",
            "PUT/s",
            on,
            off,
            "no follower (serve not running)",
            goal=("ratio", ">=", 0.9),
            params={
                **common,
                "serve": "default [source]/[collector] timings (poll 1 s, interval 5 s, settle 2 s)",
                "logged": logged,
                "catch_up_s": [round(w, 1) for w in rounds.waits],
            },
        ),
        Figure(
            GROUP,
            "rgw_put_with_notification",
            "PUT/s",
            notif,
            off,
            "no notification (peer's own cost)",
            params={**common, "topic": "persistent, HTTP push to a local sink", "sink": peer_stats},
        ),
        Figure(
            GROUP,
            "rgw_put_serve_vs_notification",
            "PUT/s",
            on,
            notif,
            "persistent bucket notification (peer)",
            params=common,
        ),
    ]
