"""Figure ``follower_catchup``: the RGW follower catching up on a bucket-index-log backlog,
against a raw reader of the same admin-API pages (issue 17).

Setup: ``BUCKETS`` buckets (radosgw's default index shards each) are created and followed once
while empty, so the follower's state holds every data-log and bilog marker at the start. The
follower's state keys are copied aside; then the backlog is written (small PUTs, ``FastPut``).

**Ours**, each repetition: a fresh index (its own prefix in the figure's namespace) gets the
copied follower state, and a ``Follower`` with serve's defaults (``object_info = "index"``: each
write's size and etag from the bucket index, one omap read per index shard object) runs until
its first complete sweep: it reads the data-log shards from their markers, then every pending
bilog shard to its end, maps each entry, reads the facts, records the mutations and persists the
markers. Log trimming is off (the backlog must stay for the next repetition).

**Baseline**, each repetition: the same pages through the same ``AdminClient`` (the same SigV4
signing, HTTP pool and JSON decoding), with the same number of threads (``[source] workers``):
every data-log shard from the same markers, then every bilog shard from the same markers to its
end. No mapping, facts, recording or persisting. Both read from radosgw at rest (no writes while
measured), the repetitions interleaved, baseline first.

Besides entries/s, ``params`` has our process's CPU per 1,000 entries and radosgw's and the OSD's
(``/proc``), each side's. Also runs alone: ``python -m tools.bench catchup``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from changelog.config import SourceConfig
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.store import WriteOp
from rgw_module.admin import AdminClient
from rgw_module.bucket_index import BucketIndexReader, LazyOmap, OmapSource
from rgw_module.follower import Follower
from rgw_module.follower_state import ZONE_KEYS
from rgw_module.mapping import BucketShard, bilog_marker
from tools.bench.common import (
    Bench,
    Figure,
    interleaved,
    lab_pids,
    median,
    proc_cpu_s,
    say,
    seed_backlog,
    wipe_namespace,
)

GROUP = "follower"
BUCKETS = 4
SHARDS = 16


def _source(bench: Bench, buckets: tuple[str, ...]) -> SourceConfig:
    return SourceConfig.unchecked(
        endpoint=bench.lab.rgw_endpoint,
        access_key=bench.lab.access_key,
        secret_key=bench.lab.secret_key,
        buckets=buckets,
        trim_logs=False,
        trim_datalog=False,
        lease_ttl=120.0,
        poll_interval=0.05,
    )


def _admin(bench: Bench) -> AdminClient:
    return AdminClient(bench.lab.rgw_endpoint, bench.lab.access_key, bench.lab.secret_key)


def _bucket_index(bench: Bench) -> BucketIndexReader:
    from changelog.pipeline.backends.rados import OmapReader

    def open_omap() -> OmapSource:
        return OmapReader(conffile=bench.lab.conf, keyring=bench.lab.keyring or None)

    return BucketIndexReader(LazyOmap(open_omap), SourceConfig().index_pool)


class Catchup:
    """The figure's buckets, the follower state at the start of the backlog, and both sides."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.namespace = bench.name("catchup")
        self.buckets = tuple(bench.name(f"catchup{i}") for i in range(BUCKETS))
        self.store = bench.store(self.namespace)
        self.state: dict[str, bytes] = {}
        self.entries = 0

    def setup(self, puts: int) -> None:
        bench = self.bench
        bench.on_exit("namespace", lambda: wipe_namespace(bench, self.namespace))
        # Followed while empty: every marker at the start of the backlog.
        self.state = seed_backlog(bench, self.store, self.buckets, self._follower, puts, "catchup")

    def _follower(self, index: ChangeIndex) -> Follower:
        f = Follower(index, _admin(self.bench), _source(self.bench, self.buckets), bucket_index=_bucket_index(self.bench))
        if not f.acquire():
            raise RuntimeError("catchup: the follower lease of a fresh index is taken")
        return f

    def ours(self, rep: int) -> tuple[float, int]:
        """(seconds, entries) of one follower catch-up from the copied state."""
        index = ChangeIndex(self.store, shards=SHARDS, prefix=f"r{rep}")
        self.store.execute(index.control_oid, WriteOp(set=dict(self.state)))
        follower = self._follower(index)
        try:
            t0 = time.perf_counter()
            follower.run_until_caught_up(timeout=1800, since=time.time() - 1)
            took = time.perf_counter() - t0
            entries = follower.stats()["entries_read"]
        finally:
            follower.close()
        return took, int(entries)

    def raw(self) -> tuple[float, int]:
        """(seconds, entries) of the raw reader over the same pages."""
        admin = _admin(self.bench)
        workers = SourceConfig().workers
        page = SourceConfig().page_entries
        datalog = {k: v.decode() for k, v in self.state.items() if k.startswith(ZONE_KEYS.datalog_prefix)}
        shards: list[tuple[BucketShard, str]] = []
        for key, raw in self.state.items():
            if key.startswith(ZONE_KEYS.marker_prefix):
                bs = BucketShard.parse(key[len(ZONE_KEYS.marker_prefix) :])
                if bs is not None:
                    shards.append((bs, raw.decode()))
        count = 0

        def read_datalog(item: tuple[str, str]) -> int:
            n, marker = int(item[0].rsplit(".", 1)[1]), item[1]
            got = 0
            while True:
                p = admin.datalog_list(n, marker, max_entries=page)
                got += len(p.entries)
                if not p.truncated or not p.entries:
                    return got
                marker = p.marker

        def read_bilog(item: tuple[BucketShard, str]) -> int:
            bs, marker = item
            got = 0
            while True:
                entries = admin.bilog_list(bs, marker, max_entries=page)
                got += len(entries)
                if len(entries) < page:
                    return got
                marker = bilog_marker(str(entries[-1].get("op_id", "")))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(read_datalog, sorted(datalog.items())))
            count = sum(pool.map(read_bilog, shards))
        took = time.perf_counter() - t0
        admin.close()
        return took, count


def _cpu_meter(bench: Bench) -> Callable[[], dict[str, float]]:
    pids = lab_pids(bench.lab)

    def now() -> dict[str, float]:
        out = {"ours": time.process_time()}
        for name, pid in pids.items():
            out[name] = proc_cpu_s(pid) or 0.0
        return out

    return now


def run(bench: Bench) -> list[Figure]:
    puts = bench.size(40_000, 2_000)
    c = Catchup(bench)
    c.setup(puts)
    cpu = _cpu_meter(bench)
    costs: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    counts: dict[str, list[int]] = {"ours": [], "raw": []}

    def measured(side: str, fn: Callable[[], tuple[float, int]]) -> float:
        before = cpu()
        took, n = fn()
        after = cpu()
        counts[side].append(n)
        costs[side].append({k: (after[k] - before[k]) * 1e6 / max(n, 1) for k in after})
        say(f"catchup {side}: {n} entries in {took:.2f}s ({n / took:,.0f}/s)")
        return n / took

    raw_rates, our_rates = interleaved(
        bench.reps(3, 2),
        lambda _i: measured("raw", c.raw),
        lambda i: measured("ours", lambda: c.ours(i)),
    )

    def cpu_ms(side: str) -> dict[str, float]:
        keys = costs[side][0].keys()
        return {k: round(median([c[k] for c in costs[side]]), 2) for k in keys}

    params: dict[str, Any] = {
        "puts": puts,
        "buckets": BUCKETS,
        "entries_ours": counts["ours"],
        "entries_raw": counts["raw"],
        "rates_ours": [round(r) for r in our_rates],
        "rates_raw": [round(r) for r in raw_rates],
        "cpu_ms_per_1000_ours": cpu_ms("ours"),
        "cpu_ms_per_1000_raw": cpu_ms("raw"),
    }
    return [
        Figure(
            group=GROUP,
            name="follower_catchup",
            unit="entries/s",
            value=median(our_rates),
            baseline=median(raw_rates),
            baseline_name="raw admin-API reader, same pages and threads",
            goal=("ratio", ">=", 0.5),
            params=params,
        )
    ]
