"""Smoke test of the benchmark suite: `python -m tools.bench all --quick --json` on the lab produces
every figure with a numeric value, baseline and ratio. It asserts no timing and no goal: a
benchmark on a shared CI machine reports, it does not judge (docs/benchmarks.md).

The `journal` figures (radosgw's bucket logging in Journal mode, new in Tentacle) come out only on
a tentacle lab (about 2 minutes with --quick); on an older one the run says in one line that they
were not produced, and still exits 0."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import Lab

# The bench smoke test runs on one release in CI (tentacle: its figures cover every other's).
pytestmark = [pytest.mark.ceph, pytest.mark.bench]

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
    "rgw_put_with_serve_head",
    "rgw_put_serve_vs_serve_head",
    "rgw_put_with_serve_none",
    "lag_p50",
    "lag_p99",
    "follower_catchup",
    "backup_incremental_requests",
    "backup_incremental_wall_time",
    "backup_incremental_requests_vs_etag_listing",
    "backup_detection_requests",
    "replication_requests",
    "replication_wall_time",
    "replication_requests_vs_rclone_checksum",
    "replication_throughput",
    "replication_lag_p50",
    "replication_lag_p99",
    "usage_records_per_s",
}
# On a tentacle lab only; --quick leaves out the lag at the default roll time (300 s).
JOURNAL_FIGURES = {
    "journal_put_with_serve",
    "journal_put_with_journal",
    "journal_put_with_both",
    "journal_put_serve_vs_journal",
    "journal_records_exact",
    "journal_records_exact_both",
    "journal_lag_p50_roll5",
    "journal_lag_p99_roll5",
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
        "CEPH_RELEASE": ceph_lab.release,
        "CEPH_BIN": ceph_lab.bin,
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
    # The bench asks radosgw its release (its Server header): trust it when it ran `journal`.
    journal = ceph_lab.release == "tentacle" or any(name in by_name for name in JOURNAL_FIGURES)
    expected = FIGURES | (JOURNAL_FIGURES if journal else set())
    assert set(by_name) >= expected, f"missing figures: {sorted(expected - set(by_name))}\n{proc.stderr[-3000:]}"
    if not journal:
        assert "journal: not produced:" in proc.stderr, proc.stderr[-3000:]
    for f in figures:
        for field in ("value", "baseline", "ratio"):
            assert _number(f[field]), f"{f['name']}: {field} is {f[field]!r}"
        assert f["unit"] and f["baseline_name"], f
        assert isinstance(f["params"], dict), f
    # The table went to stderr, one row per figure.
    for name in expected:
        assert name in proc.stderr
