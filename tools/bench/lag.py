"""Figure 4, ``lag``: from a PUT returning to its record being in a committed change-log object,
beside the peer's lag from a PUT returning to its notification arriving at the sink.

Two threads PUT at a steady rate (``RATE`` per second each, for a scaled duration): one into a
bucket followed by ``rgw-changelog serve`` (short timings: follower poll 0.2 s, collector
interval 0.5 s, settle 0.5 s), one into the peer's notified bucket. A poller lists the log
bucket with the reader every ``POLL`` seconds; a log object's *committed time* is when the
poller first sees it (so the figure includes up to ``POLL`` of detection delay), and each of its
records is matched to its PUT by key. The peer's time is the sink's arrival time. Lag =
that time - the time the PUT returned; p50 and p99 of each.

The peer is faster, but at-least-once and lossy (ceph-notes: drops when the endpoint is down,
stalls for good after a 20 s outage); the change log is exactly once and ordered per object.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from changelog.pipeline.reader import list_logs, read_object
from tools.bench.common import Bench, Figure, percentile, remove_bucket, say
from tools.bench.peer import get_peer
from tools.bench.serve import ServeProcess

GROUP = "lag"
RATE = 20.0  # PUT/s per bucket
POLL = 0.2  # seconds between listings of the log bucket
SERVE_TIMINGS = {"poll_interval": 0.2, "interval": 0.5, "settle": 0.5}


class LogPoller(threading.Thread):
    """Lists the log bucket every POLL s and hands each newly committed record to ``on_record``
    with the time it was first seen; by default the first time each record's key was seen."""

    def __init__(self, serve: ServeProcess, *, name: str = "lag-poller", every: float = POLL) -> None:
        super().__init__(name=name, daemon=True)
        self.serve = serve
        self.every = every
        self.seen: dict[str, float] = {}
        self.objects = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._after: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.every):
                self.poll()
        except BaseException as ex:  # noqa: BLE001 - reported by the figure
            self.error = ex

    def poll(self) -> None:
        target = self.serve.target
        for obj in list(list_logs(target, after=self._after)):
            t = time.time()
            self.objects += 1
            for rec in read_object(target, obj.name):
                self.on_record(rec, t)
            self._after = obj.name

    def on_record(self, rec: Any, t: float) -> None:
        self.seen.setdefault(rec.key, t)


def _steady(s3: Any, bucket: str, n: int, rate: float, prefix: str, out: dict[str, float]) -> None:
    """``n`` PUTs, one every 1/rate s (no catching up in bursts after a slow one)."""
    body = b"x" * 4096
    next_t = time.monotonic()
    for i in range(n):
        key = f"{prefix}/{i:06d}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        out[key] = time.time()
        next_t = max(next_t + 1 / rate, time.monotonic())
        time.sleep(max(0.0, next_t - time.monotonic()))


def run(bench: Bench) -> list[Figure]:
    s3 = bench.s3(pool=8)
    bucket = bench.name("lag")
    s3.create_bucket(Bucket=bucket)
    peer = get_peer(bench, s3)
    tm = SERVE_TIMINGS
    serve = ServeProcess(
        bench, s3, what="lag", buckets=[bucket],
        poll_interval=tm["poll_interval"], interval=tm["interval"], settle=tm["settle"],
    )  # fmt: skip
    seconds = bench.size(20, 8, minimum=3)
    n = int(seconds * RATE)
    ours_put: dict[str, float] = {}
    peer_put: dict[str, float] = {}
    prefix = f"lag-{bench.tag}"
    try:
        serve.start()
        peer.wait_live()
        serve.wait_watermark(time.time())
        poller = LogPoller(serve)
        poller.poll()  # skip what is there already
        poller.seen.clear()
        poller.start()
        say(f"lag: {n} PUTs at {RATE:g}/s into each bucket ({seconds}s)")
        threads = [
            threading.Thread(target=_steady, args=(s3, bucket, n, RATE, prefix, ours_put)),
            threading.Thread(target=_steady, args=(s3, peer.bucket, n, RATE, prefix, peer_put)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peer.sent += n
        deadline = time.monotonic() + 60
        while len(set(ours_put) & set(poller.seen)) < n and time.monotonic() < deadline:
            serve.check()
            if poller.error is not None:
                raise poller.error
            time.sleep(0.2)
        poller.stop.set()
        poller.join()
        arrived = peer.events(prefix)
        if len(arrived) < n:
            peer.wait_delivered(prefix, n, 30)
            arrived = peer.events(prefix)
        objects = poller.objects
    finally:
        serve.close()
        remove_bucket(s3, bucket)
    ours = [poller.seen[k] - t for k, t in ours_put.items() if k in poller.seen]
    theirs = [arrived[k] - t for k, t in peer_put.items() if k in arrived]
    missing_ours, missing_peer = n - len(ours), n - len(theirs)
    if not ours or not theirs:
        raise RuntimeError(f"lag: matched {len(ours)} of our records and {len(theirs)} notifications")
    say(f"lag: matched {len(ours)}/{n} records in {objects} log objects, {len(theirs)}/{n} notifications")
    params: dict[str, Any] = {
        "puts": n,
        "rate_per_s": RATE,
        "seconds": seconds,
        "serve": SERVE_TIMINGS,
        "poll_s": POLL,
        "log_objects": objects,
        "missing_ours": missing_ours,
        "missing_peer": missing_peer,
        "max_ours_s": round(max(ours), 3),
        "max_peer_s": round(max(theirs), 3),
    }
    return [
        Figure(
            GROUP,
            f"lag_p{p}",
            "s",
            percentile(ours, p),
            percentile(theirs, p),
            "notification arrival at the sink (peer)",
            higher_is_better=False,
            params=params,
        )
        for p in (50, 99)
    ]
