"""Figure ``scale_catchup``: a backlog caught up (followed and drained) by two partitioned
``serve`` processes against one (issue 17's scale figure).

Setup: ``BUCKETS`` buckets are created and followed once while empty by a plain follower, whose
state (every data-log and bilog marker at the start of the backlog) is copied aside; then the
backlog is written (small PUTs, ``FastPut``) while nothing follows.

Each run: a fresh index (its own ``[index] prefix`` in the figure's namespace) gets the copied
state, cut into ``PARTITIONS`` follower partitions beforehand (``prepare_partitions``, as the
first partitioned start would: not timed); then ``N`` ``rgw-changelog serve`` processes with
``[scale] partitioned = true`` start on it (each its own ``[api] listen``, a ``file://`` target
per run), and the run lasts from their start until the collector's watermark passes the end of
the backlog: every mutation followed, recorded, and committed to a log object. The followers
share the partitions; the collector stays one active instance (the other stands by).

**Ours**: two processes. **Baseline**: one. Interleaved repetitions, baseline first. The ratio is
the speed-up. For reference, each repetition also times one unpartitioned serve on the backlog
(``params``: ``*_unpartitioned``), the cost of partitioning itself. ``params`` has, per run, the CPU seconds of our processes (interpreter start
included: it is in both sides), radosgw and the OSD (``/proc/<pid>/stat``), which share the
machine's cores with us. Log trimming is off: the backlog stays for the next run. Also runs
alone: ``python -m tools.bench scale``.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from changelog.config import SourceConfig
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.reader import read_watermark
from changelog.pipeline.store import WriteOp
from changelog.pipeline.targets import DirectoryTarget
from rgw_module.admin import AdminClient
from rgw_module.follower import Follower
from rgw_module.follower_partitions import prepare_partitions
from rgw_module.follower_state import StateKeys
from tools.bench.common import (
    REPO,
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
from tools.bench.serve import free_port

GROUP = "scale"
# Enough buckets that a hash of their names spreads them over the partitions (and so over the
# processes) about evenly; the backlog is spread over them round robin.
BUCKETS = 16
PARTITIONS = 8
SHARDS = 16


@dataclass
class Run:
    seconds: float
    followed: float  # seconds until every partition's persisted caught_up_until passed the backlog
    cpu: dict[str, float]  # ours / radosgw / osd: CPU seconds during the run


class Backlog:
    """The figure's buckets, the follower state at the start of the backlog, and its end."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.namespace = bench.name("scale")
        self.buckets = tuple(bench.name(f"scale{i:02d}") for i in range(BUCKETS))
        self.store = bench.store(self.namespace)
        self.state: dict[str, bytes] = {}
        self.end_us = 0

    def setup(self, puts: int) -> None:
        bench = self.bench
        bench.on_exit("namespace", lambda: wipe_namespace(bench, self.namespace))
        bench.on_exit("store", self.store.close)
        self.state = seed_backlog(bench, self.store, self.buckets, self._seed_follower, puts, "scale")
        # radosgw stamps a mutation when it completes: every PUT acknowledged is before this.
        self.end_us = int(time.time() * 1_000_000) + 1

    def _seed_follower(self, seed: ChangeIndex) -> Follower:
        bench = self.bench
        source = SourceConfig.unchecked(
            endpoint=bench.lab.rgw_endpoint, access_key=bench.lab.access_key, secret_key=bench.lab.secret_key,
            buckets=self.buckets, trim_logs=False, trim_datalog=False, lease_ttl=120.0, poll_interval=0.05,
        )  # fmt: skip
        follower = Follower(
            seed, AdminClient(bench.lab.rgw_endpoint, bench.lab.access_key, bench.lab.secret_key), source
        )
        if not follower.acquire():
            raise RuntimeError("scale: the follower lease of a fresh index is taken")
        return follower

    def fresh_index(self, prefix: str, *, partitioned: bool) -> None:
        """An index at the start of the backlog, its follower state cut into partitions."""
        index = ChangeIndex(self.store, shards=SHARDS, prefix=prefix)
        self.store.execute(index.control_oid, WriteOp(set=dict(self.state)))
        if partitioned:
            prepare_partitions(index, PARTITIONS)


def _config(
    bench: Bench, backlog: Backlog, *, prefix: str, target: Path, port: int, partitioned: bool
) -> str:
    lab = bench.lab
    keyring = f'keyring = "{lab.keyring}"\n' if lab.keyring else ""
    buckets = ", ".join(f'"{b}"' for b in backlog.buckets)
    return f"""
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}pool = "{lab.pool}"
namespace = "{backlog.namespace}"
prefix = "{prefix}"
shards = {SHARDS}

[source]
endpoint = "{lab.rgw_endpoint}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "default"
buckets = [{buckets}]
poll_interval = 0.2
trim_logs = false

[target]
url = "file://{target}/"

[collector]
interval = 0.5
settle = 0.5

[scale]
partitioned = {str(partitioned).lower()}
follower_partitions = {PARTITIONS}

[api]
listen = "127.0.0.1:{port}"

[logging]
level = "WARNING"
"""


class Fleet:
    """``n`` partitioned serve processes on one fresh index, started and stopped."""

    def __init__(self, bench: Bench, backlog: Backlog, n: int, rep: int, *, partitioned: bool = True) -> None:
        self.bench = bench
        self.prefix = f"s{n}{'p' if partitioned else 'u'}r{rep}"
        self.target = bench.tmp / f"scale-target-{self.prefix}"
        self.target.mkdir(parents=True)
        backlog.fresh_index(self.prefix, partitioned=partitioned)
        self.configs: list[Path] = []
        for i in range(n):
            path = bench.tmp / f"scale-{self.prefix}-{i}.toml"
            config = _config(
                bench,
                backlog,
                prefix=self.prefix,
                target=self.target,
                port=free_port(),
                partitioned=partitioned,
            )
            path.write_text(config)
            self.configs.append(path)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._store = backlog.store
        self._control = ChangeIndex(backlog.store, shards=SHARDS, prefix=self.prefix).control_oid
        self._cu_keys = (
            [StateKeys.of(p).caught_up for p in range(PARTITIONS)]
            if partitioned
            else [StateKeys.of(None).caught_up]
        )

    def start(self) -> None:
        for i, config in enumerate(self.configs):
            log = open(self.bench.tmp / f"scale-{self.prefix}-{i}.log", "wb")  # noqa: SIM115 - closed in stop
            self._logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from changelog.cli import main; main()",
                        "-c",
                        str(config),
                        "serve",
                    ],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )  # fmt: skip
            )

    def watermark_us(self) -> int:
        wm = read_watermark(DirectoryTarget(self.target, create=False))
        return 0 if wm is None else wm.complete_until_us

    def followed_us(self) -> int:
        """The zone's caught_up_until as the partitions persisted it (the lowest), 0 if one has none."""
        got = self._store.omap_get(self._control, self._cu_keys)
        return min((int(got[k]) if k in got else 0) for k in self._cu_keys)

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p.pid) or 0.0 for p in self.procs)

    def check(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                log = (self.bench.tmp / f"scale-{self.prefix}-{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"scale: serve {i} exited with {p.returncode}\n{log}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)
        for log in self._logs:
            log.close()


def catch_up(
    bench: Bench, backlog: Backlog, n: int, rep: int, *, partitioned: bool = True, timeout: float = 1800
) -> Run:
    """One run: ``n`` processes from their start until the watermark passes the backlog."""
    fleet = Fleet(bench, backlog, n, rep, partitioned=partitioned)
    pids = lab_pids(bench.lab)
    before = {k: proc_cpu_s(pid) or 0.0 for k, pid in pids.items()}
    t0 = time.perf_counter()
    fleet.start()
    followed: float | None = None
    try:
        while fleet.watermark_us() < backlog.end_us:
            if followed is None and fleet.followed_us() >= backlog.end_us:
                followed = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"scale: {n} processes did not catch up within {timeout:.0f}s")
            fleet.check()
            time.sleep(0.1)
        took = time.perf_counter() - t0
        cpu = {"ours": fleet.cpu_s()}
    finally:
        fleet.stop()
    for k, pid in pids.items():
        cpu[k] = (proc_cpu_s(pid) or 0.0) - before[k]
    followed = took if followed is None else followed
    say(
        f"scale: {n} {'partitioned' if partitioned else 'unpartitioned'} process(es), run {rep}: followed in {followed:.1f}s, drained in {took:.1f}s; CPU s "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
    )
    return Run(took, followed, cpu)


def run(bench: Bench) -> list[Figure]:
    puts = bench.size(60_000, 4_000)
    backlog = Backlog(bench)
    backlog.setup(puts)
    runs: dict[int, list[Run]] = {1: [], 2: [], 0: []}

    def side(n: int, rep: int) -> float:
        r = catch_up(bench, backlog, n, rep)
        runs[n].append(r)
        if n == 1:
            # For reference (not in the ratio): one unpartitioned serve on the same backlog.
            runs[0].append(catch_up(bench, backlog, 1, rep, partitioned=False))
        return puts / r.seconds

    one, two = interleaved(bench.reps(3, 2), functools.partial(side, 1), functools.partial(side, 2))
    params: dict[str, Any] = {
        "puts": puts,
        "buckets": BUCKETS,
        "partitions": PARTITIONS,
        "seconds_1": [round(r.seconds, 2) for r in runs[1]],
        "seconds_2": [round(r.seconds, 2) for r in runs[2]],
        "followed_s_1": [round(r.followed, 2) for r in runs[1]],
        "followed_s_2": [round(r.followed, 2) for r in runs[2]],
        "cpu_s_1": [{k: round(v, 2) for k, v in r.cpu.items()} for r in runs[1]],
        "cpu_s_2": [{k: round(v, 2) for k, v in r.cpu.items()} for r in runs[2]],
        "seconds_unpartitioned": [round(r.seconds, 2) for r in runs[0]],
        "followed_s_unpartitioned": [round(r.followed, 2) for r in runs[0]],
        "cpu_s_unpartitioned": [{k: round(v, 2) for k, v in r.cpu.items()} for r in runs[0]],
        "cpus": os.cpu_count(),
    }
    speedups = sorted(a.seconds / b.seconds for a, b in zip(runs[1], runs[2], strict=True))
    return [
        Figure(
            group=GROUP,
            name="scale_catchup",
            unit="mutations/s",
            value=median(two),
            baseline=median(one),
            baseline_name="one partitioned serve, same backlog",
            params=params,
            summary=f"speed-up of 2 serves over 1 per repetition {', '.join(f'{s:.2f}' for s in speedups)}",
        )
    ]
