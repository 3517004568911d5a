"""Smoke test of the benchmark suite: `python -m tools.bench all --quick --json` on the lab produces
every figure with a numeric value, baseline and ratio. It asserts no timing and no goal: a
benchmark on a shared CI machine reports, it does not judge (docs/benchmarks.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import Lab

pytestmark = pytest.mark.ceph

REPO = Path(__file__).resolve().parents[2]

FIGURES = {
    "record_many_rados_1000_per_op",
    "record_many_rados_100_per_op",
    "record_latency_p50",
    "record_latency_p99",
    "record_many_sqlite",
    "drain_throughput",
    "drain_peak_rss",
    "rgw_put_with_serve",
    "rgw_put_with_notification",
    "rgw_put_serve_vs_notification",
    "lag_p50",
    "lag_p99",
    "backup_incremental_requests",
    "backup_incremental_wall_time",
    "backup_incremental_requests_vs_etag_listing",
}


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def test_bench_quick_produces_every_figure(ceph_lab: Lab) -> None:
    if not ceph_lab.rgw_endpoint:
        pytest.skip("Ceph lab unavailable: this lab runs without radosgw")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CEPH_CONF": ceph_lab.conf,
        "CEPH_KEYRING": ceph_lab.keyring,
        "CEPH_POOL": ceph_lab.pool,
        "CEPH_LAB_DIR": ceph_lab.dir,
        "RGW_ENDPOINT": ceph_lab.rgw_endpoint,
        "RGW_ACCESS_KEY": ceph_lab.access_key,
        "RGW_SECRET_KEY": ceph_lab.secret_key,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench", "all", "--quick", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    figures = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_name = {f["name"]: f for f in figures}
    assert set(by_name) >= FIGURES, f"missing figures: {sorted(FIGURES - set(by_name))}\n{proc.stderr[-3000:]}"
    for f in figures:
        for field in ("value", "baseline", "ratio"):
            assert _number(f[field]), f"{f['name']}: {field} is {f[field]!r}"
        assert f["unit"] and f["baseline_name"], f
        assert isinstance(f["params"], dict), f
    # The table went to stderr, one row per figure.
    for name in FIGURES:
        assert name in proc.stderr
