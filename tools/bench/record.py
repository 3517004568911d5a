"""Figure 1, ``record``: the write hook (``ChangeIndex.record_many`` / ``record``) against raw omap
writes of the same batches, and the embedded sqlite backend against raw sqlite ``executemany``.

* **record_many throughput (RADOS)**: batches of mutations recorded into a 16-shard index. The
  baseline sends, for the same mutations, one plain ``set_omap`` op per shard with the same keys
  per op, same key and value sizes, to the same shard objects, with the same aio window: what
  librados can do with no project code in between. Ours pays on top: hashing and encoding each
  mutation, the guarded op (floor and stream asserts, the stream high-water mark).
* **record latency (RADOS)**: one ``record(m)`` at a time vs one synchronous single-key
  ``set_omap``; p50 and p99.
* **sqlite record_many throughput**: the same batches into the embedded store vs raw sqlite:
  the same rows (object id, key, value) into a table of the same shape, one ``BEGIN IMMEDIATE``
  ... ``executemany`` ... ``COMMIT`` per shard op, as the store does it.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from hashlib import blake2b, md5
from typing import Any

from changelog.pipeline import keys
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.mutation import Mutation, Op
from tools.bench.common import Bench, Figure, RawOmap, interleaved, median, percentile, say, wipe_namespace

GROUP = "record"
SHARDS = 16
# One bucket's worth of source streams: radosgw's default bucket index has 11 shards, each a
# stream of its own (rgw:<bucket>:<id>:<shard>), so a batch touches 11 stream marks per shard op.
SOURCES = 11
# 16 shards x 1000 records = one op of 1000 keys per shard (the sweet spot in ceph-notes),
# and 16 x 100 for ops of 100 keys.
BATCHES = (16_000, 1_600)

RawOp = tuple[str, tuple[str, ...], tuple[bytes, ...]]


class Workload:
    """Mutations as the RGW follower makes them: one bucket, 11 source streams, positions
    increasing across batches, ~40-byte keys, writes with size and etag."""

    def __init__(self, tag: str) -> None:
        self.bucket = f"bench-{tag}"
        self.tag = tag
        self.n = 0
        self.etag = md5(tag.encode()).hexdigest()
        self.mtime_ns = time.time_ns()

    def batch(self, n: int) -> list[Mutation]:
        out = []
        for i in range(self.n, self.n + n):
            pos = f"{i:020d}"
            out.append(
                Mutation(
                    bucket=self.bucket,
                    key=f"data/2026/11/21/object-{i:012d}.bin",
                    op=Op.WRITE,
                    mtime_ns=self.mtime_ns + i,
                    source=f"rgw:{self.bucket}:{self.tag}.1:{i % SOURCES}",
                    position=pos,
                    seq=pos,
                    size=4096,
                    etag=self.etag,
                )
            )
        self.n += n
        return out


class RawBatches:
    """The baseline's ops for a batch: the keys ``record_many`` would write (same layout and
    length, prefix ``x.`` so they never mix with the index's ``d.`` entries), the same encoded
    values, grouped by the same shard function: one op per shard."""

    def __init__(self, index: ChangeIndex) -> None:
        self.index = index
        self.t = int(time.time() * 1_000_000)

    def ops(self, ms: Sequence[Mutation]) -> list[RawOp]:
        by_shard: dict[int, tuple[list[str], list[bytes]]] = defaultdict(lambda: ([], []))
        ver = keys.NULL_VERSION_HASH
        for m in ms:
            shard, obj = keys.locate(m.bucket, m.key, self.index.shards)
            evt = blake2b(f"{m.source}\n{m.position}".encode(), digest_size=16).hexdigest()[:16]
            self.t += 1
            ks, vs = by_shard[shard]
            ks.append(f"x.{self.t:016x}.{obj}.{ver}.{evt}")
            vs.append(m.encode())
        return [(self.index.shard_oid(s), tuple(ks), tuple(vs)) for s, (ks, vs) in sorted(by_shard.items())]


def _rate(prepared: Sequence[Any], write: Any, per_item: int, cpu: list[float] | None = None) -> float:
    """Records/s of ``write`` over ``prepared`` batches; preparing them is outside the clock.
    ``cpu`` gets this thread's CPU per record in us (``time.thread_time``: steadier than the rate
    on a shared machine; librados' own threads are not in it, for either side)."""
    t0 = time.perf_counter()
    c0 = time.thread_time()
    for item in prepared:
        write(item)
    if cpu is not None:
        cpu.append((time.thread_time() - c0) / (len(prepared) * per_item) * 1e6)
    return len(prepared) * per_item / (time.perf_counter() - t0)


def _cpu_params(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    return {
        "ours_cpu_us_per_record": round(median(ours), 3),
        "baseline_cpu_us_per_record": round(median(theirs), 3),
        "ours_cpu_runs": [round(x, 3) for x in ours],
        "baseline_cpu_runs": [round(x, 3) for x in theirs],
    }


def _rados_throughput(bench: Bench, index: ChangeIndex, raw: RawOmap, work: Workload, batch: int) -> Figure:
    total = bench.size(128_000 if batch >= 10_000 else 64_000, 16_000, minimum=batch)
    nb = max(1, total // batch)
    reps = bench.reps()
    # Warm up both paths (first contact with each shard reads its floor and stream marks).
    index.record_many(work.batch(batch))
    maker = RawBatches(index)
    raw.write_many(maker.ops(work.batch(batch)))

    cpu_ours: list[float] = []
    cpu_theirs: list[float] = []

    def ours(_rep: int) -> float:
        return _rate([work.batch(batch) for _ in range(nb)], index.record_many, batch, cpu_ours)

    def theirs(_rep: int) -> float:
        return _rate([maker.ops(work.batch(batch)) for _ in range(nb)], raw.write_many, batch, cpu_theirs)

    a, b = interleaved(reps, ours, theirs)
    keys_per_op = batch // SHARDS
    say(f"record_many {keys_per_op} keys/op: ours {[round(x) for x in a]}, raw {[round(x) for x in b]} records/s")
    say(f"  CPU us/record: ours {[round(x, 2) for x in cpu_ours]}, raw {[round(x, 2) for x in cpu_theirs]}")
    if bench.profile:
        _profile(index, work, batch, nb)
    return Figure(
        GROUP,
        f"record_many_rados_{keys_per_op}_per_op",
        "records/s",
        median(a),
        median(b),
        "raw aio set_omap, same batches",
        goal=("ratio", ">=", 0.9),
        params={
            "shards": SHARDS,
            "batch": batch,
            "keys_per_op": keys_per_op,
            "sources": SOURCES,
            "records_per_rep": nb * batch,
            "reps": reps,
            "value_bytes": len(work.batch(1)[0].encode()),
            "ours_runs": [round(x) for x in a],
            "baseline_runs": [round(x) for x in b],
            **_cpu_params(cpu_ours, cpu_theirs),
        },
    )


def _profile(index: ChangeIndex, work: Workload, batch: int, nb: int) -> None:
    batches = [work.batch(batch) for _ in range(nb)]
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        index.record_many(b)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    say(f"profile of record_many, {batch} records per call:\n{out.getvalue()}")


def _rados_latency(bench: Bench, index: ChangeIndex, raw: RawOmap, work: Workload) -> list[Figure]:
    n = bench.size(1000, 100, minimum=50)
    block = 50
    ours: list[float] = []
    theirs: list[float] = []
    maker = RawBatches(index)

    def run_ours(_i: int) -> float:
        for m in work.batch(block):
            t0 = time.perf_counter()
            index.record(m)
            ours.append(time.perf_counter() - t0)
        return 0.0

    def run_raw(_i: int) -> float:
        ops = maker.ops(work.batch(block))
        singles = [(oid, k, v) for oid, ks, vs in ops for k, v in zip(ks, vs, strict=True)]
        for oid, k, v in singles:
            t0 = time.perf_counter()
            raw.write_one(oid, k, v)
            theirs.append(time.perf_counter() - t0)
        return 0.0

    run_ours(-1)  # warm-up, not counted
    run_raw(-1)
    ours.clear()
    theirs.clear()
    interleaved(max(1, n // block), run_ours, run_raw)
    params = {"samples": len(ours), "block": block, "shards": SHARDS}
    figs = []
    for p in (50, 99):
        figs.append(
            Figure(
                GROUP,
                f"record_latency_p{p}",
                "ms",
                percentile(ours, p) * 1000,
                percentile(theirs, p) * 1000,
                "raw sync single-key set_omap",
                higher_is_better=False,
                params=params,
            )
        )
    return figs


def _sqlite_throughput(bench: Bench, work: Workload) -> Figure:
    from changelog.pipeline.backends.sqlite import SqliteStore

    path = bench.tmp / "record-bench.db"
    store = SqliteStore(str(path))
    index = ChangeIndex(store, shards=SHARDS, prefix="bench")
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS raw_omap (obj INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
        " PRIMARY KEY (obj, key)) WITHOUT ROWID"
    )
    batch = BATCHES[0]
    total = bench.size(160_000, 32_000, minimum=batch)
    nb = max(1, total // batch)
    reps = bench.reps()
    maker = RawBatches(index)
    index.record_many(work.batch(batch))

    def raw_write(ops: list[RawOp]) -> None:
        for oid, ks, vs in ops:
            obj = int(oid.rsplit(".", 1)[1])
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO raw_omap (obj, key, value) VALUES (?, ?, ?)",
                zip([obj] * len(ks), ks, vs, strict=True),
            )
            conn.execute("COMMIT")

    raw_write(maker.ops(work.batch(batch)))

    cpu_ours: list[float] = []
    cpu_theirs: list[float] = []

    def ours(_rep: int) -> float:
        return _rate([work.batch(batch) for _ in range(nb)], index.record_many, batch, cpu_ours)

    def theirs(_rep: int) -> float:
        return _rate([maker.ops(work.batch(batch)) for _ in range(nb)], raw_write, batch, cpu_theirs)

    try:
        a, b = interleaved(reps, ours, theirs)
    finally:
        conn.close()
        store.close()
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
    say(f"sqlite record_many: ours {[round(x) for x in a]}, raw {[round(x) for x in b]} records/s")
    say(f"  CPU us/record: ours {[round(x, 2) for x in cpu_ours]}, raw {[round(x, 2) for x in cpu_theirs]}")
    return Figure(
        GROUP,
        "record_many_sqlite",
        "records/s",
        median(a),
        median(b),
        "raw sqlite executemany, same rows",
        goal=("value", ">=", 200_000),
        params={
            "shards": SHARDS,
            "batch": batch,
            "records_per_rep": nb * batch,
            "reps": reps,
            "synchronous": "NORMAL",
            "ours_runs": [round(x) for x in a],
            "baseline_runs": [round(x) for x in b],
            **_cpu_params(cpu_ours, cpu_theirs),
        },
    )


def run(bench: Bench) -> list[Figure]:
    ns = bench.name("record")
    store: Any = bench.store(ns)
    raw = bench.raw(ns)
    figs: list[Figure] = []
    try:
        index = ChangeIndex(store, shards=SHARDS, prefix="bench")
        work = Workload(bench.tag)
        for batch in BATCHES:
            say(f"record: record_many vs raw omap, {batch // SHARDS} keys per op")
            figs.append(_rados_throughput(bench, index, raw, work, batch))
        say("record: single-record latency")
        figs.extend(_rados_latency(bench, index, raw, work))
    finally:
        raw.close()
        store.close()
        wipe_namespace(bench, ns)
    say("record: embedded sqlite backend")
    figs.append(_sqlite_throughput(bench, Workload(bench.tag)))
    return figs
