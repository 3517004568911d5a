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
from typing import Any

from changelog.pipeline.reader import read_records
from tools.bench.common import Bench, Figure, median, put_round, remove_bucket, say
from tools.bench.peer import get_peer
from tools.bench.serve import ServeProcess

GROUP = "rgw-put"
OBJECT_BYTES = 4096


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
    rates: dict[str, list[float]] = {"off": [], "serve": [], "notification": []}
    sent_on = 0
    try:
        warm = max(20, n // 10)
        put_round(s3, off_bucket, warm, threads=threads, prefix="warmup")
        put_round(s3, on_bucket, warm, threads=threads, prefix="warmup")
        put_round(s3, peer.bucket, warm, threads=threads, prefix="warmup")
        peer.sent += warm
        sent_on += warm
        order = ["off", "serve", "notification"]
        waits: list[float] = []
        for rep in range(reps):
            for config in order[rep % 3 :] + order[: rep % 3]:
                prefix = f"r{rep}"
                if config == "off":
                    rate, _ = put_round(s3, off_bucket, n, threads=threads, prefix=prefix)
                elif config == "notification":
                    rate, _ = put_round(s3, peer.bucket, n, threads=threads, prefix=prefix)
                    peer.sent += n
                else:
                    serve.start()
                    waits.append(serve.wait_watermark(time.time()))
                    rate, done = put_round(s3, on_bucket, n, threads=threads, prefix=prefix)
                    sent_on += n
                    serve.check()
                    if rep == reps - 1:
                        # Proof that serve did its job: every PUT of the figure is in its logs.
                        serve.wait_watermark(max(done.values()) + 0.001, timeout=180)
                    serve.stop()
                rates[config].append(rate)
                say(f"rgw-put rep {rep + 1}/{reps} {config:12}: {rate:6.1f} PUT/s")
        logged = sum(1 for r in read_records(serve.target) if r.bucket == on_bucket)
        if logged != sent_on:
            raise RuntimeError(f"serve logged {logged} of the {sent_on} PUTs to {on_bucket}")
        peer_stats = peer.stats()
    finally:
        serve.close()
        for b in (off_bucket, on_bucket):
            remove_bucket(s3, b)
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
                "catch_up_s": [round(w, 1) for w in waits],
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
