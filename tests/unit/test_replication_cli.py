"""``rgw-changelog replicate`` through click's runner, on the same real components as the API
tests (moto as the source and both sites, a directory of change logs, a sqlite index): run
--once, run in the foreground (a subprocess, stopped by SIGTERM), status, failed list / retry,
pause / resume, sites, the replication block of ``status``, and ``config check --connect``'s
probe per site. Site ``west`` maps ``src`` to a bucket that does not exist: its records fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from changelog.cli import cli
from changelog.consumers.framework import load_checkpoint
from changelog.consumers.replication.state import SiteState
from changelog.pipeline.control import consumer_lock
from changelog.status import replication_lines
from tests.unit.test_replication_api import KEYS, Env, write_config, write_objects
from tests.unit.test_replication_api import env as env  # noqa: F401 - fixtures
from tests.unit.test_replication_api import moto as moto  # noqa: F401
from tests.unit.test_replication_api import moto_url as moto_url  # noqa: F401

Run = Callable[..., Result]


@pytest.fixture
def run(env: Env) -> Run:
    runner = CliRunner()

    def invoke(*args: str, config: Path | None = None) -> Result:
        return runner.invoke(cli, ["-c", str(config or env.path), *args], catch_exceptions=False)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.stderr)
    return result


def fails(result: Result, code: int = 1) -> str:
    """The one-line error of a failed command."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1
    return lines[-1]


def test_run_once_drains_each_site_and_exits_1_when_one_is_not_caught_up(env: Env, run: Run) -> None:
    write_objects(env)
    result = run("replicate", "run", "--once", "--json")
    # west refuses every record for good: they go to its failed list, and it reaches the watermark.
    doc = orjson.loads(ok(result).stdout)["sites"]
    assert doc["east"]["reached"] is True and doc["east"]["stats"]["completed"] == len(KEYS)
    assert doc["west"]["reached"] is True and doc["west"]["stats"]["failed"] == len(KEYS)
    assert doc["east"]["checkpoint"] == doc["east"]["watermark"] is not None
    assert sorted(o["Key"] for o in env.s3.list_objects_v2(Bucket="dst-east")["Contents"]) == sorted(KEYS)
    write_objects(env, ["later"])
    ok(run("replicate", "pause", "west"))
    result = run("replicate", "run", "--once", "--site", "east", "--site", "west")
    assert fails(result) == "error: not caught up: west"
    assert "site east: caught up" in result.stderr and "site west: NOT caught up (paused" in result.stderr
    assert fails(run("replicate", "run", "--once", "--site", "north")).startswith("error: no replication site 'north'")


def test_status_prints_one_line_per_site(env: Env, run: Run) -> None:
    write_objects(env)
    ok(run("replicate", "run", "--once"))
    out = ok(run("replicate", "status", "src", "dir/b c.txt")).stdout.splitlines()
    assert out == ["src/dir/b c.txt version null: FAILED", "  east: COMPLETED", "  west: FAILED"]
    doc = orjson.loads(ok(run("replicate", "status", "src", "a.txt", "--json")).stdout)
    assert doc == {"bucket": "src", "key": "a.txt", "version_id": "null", "status": "FAILED",
                   "sites": {"east": "COMPLETED", "west": "FAILED"}, "at_source": True}  # fmt: skip
    # A key the source never had: nothing to replicate (COMPLETED), and said so.
    out = ok(run("replicate", "status", "src", "no-such-key")).stdout.splitlines()
    assert out[0] == "src/no-such-key: COMPLETED (no such object at the source: deleted, or never written)"


def test_failed_list_and_retry(env: Env, run: Run) -> None:
    write_objects(env)
    ok(run("replicate", "run", "--once"))
    page = orjson.loads(ok(run("replicate", "failed", "list", "--site", "west", "--limit", "2", "--json")).stdout)
    assert page["IsTruncated"] is True and len(page["Versions"]) == 2
    rest = orjson.loads(ok(run("replicate", "failed", "list", "--marker", page["NextMarker"], "--json")).stdout)
    assert rest["IsTruncated"] is False
    assert sorted(v["Key"] for v in page["Versions"] + rest["Versions"]) == sorted(KEYS)
    text = ok(run("replicate", "failed", "list")).stdout.splitlines()
    assert text[0].split() == ["SITE", "ENTRY", "BUCKET", "KEY", "VERSION", "OP", "TRIES", "LAST", "FAILED", "ERROR"]
    assert len(text) == 1 + len(KEYS) and all(line.startswith("west ") for line in text[1:])
    ids = [v["EntryId"] for v in page["Versions"]]
    result = ok(run("replicate", "failed", "retry", "--site", "west", *ids))
    assert "2 retries requested" in result.stderr
    west = SiteState(env.index, "west")
    assert sorted(west.retry_requests()) == sorted(ids)
    assert fails(run("replicate", "failed", "retry", ids[0], "feedface")) == "error: no failed entry feedface at east, west"
    assert "3 retries requested" in ok(run("replicate", "failed", "retry", "--site", "west")).stderr
    assert len(west.retry_requests()) == len(KEYS)
    env.s3.create_bucket(Bucket="dst-west")
    ok(run("replicate", "run", "--once", "--site", "west"))
    assert west.count_failed() == 0
    assert orjson.loads(ok(run("replicate", "failed", "list", "--json")).stdout)["Versions"] == []


def test_pause_resume_in_hours_and_sites(env: Env, run: Run) -> None:
    east = SiteState(env.index, "east")
    assert ok(run("replicate", "pause", "east")).stdout.startswith("site east: paused since ")
    assert east.paused()
    out = ok(run("replicate", "resume", "east", "--in", "1.5")).stdout
    assert "resumes at" in out
    pause = east.pause_doc()
    assert pause is not None and pause["resume_at"] is not None and east.paused()
    doc = orjson.loads(ok(run("replicate", "resume", "east", "--json")).stdout)
    assert doc["site"] == "east" and doc["paused"] is False and not east.paused()
    write_objects(env)
    ok(run("replicate", "pause", "west"))
    sites = orjson.loads(ok(run("replicate", "sites", "--json")).stdout)["sites"]
    assert sites["west"]["paused"] is True and sites["east"]["paused"] is False
    assert sites["east"]["backlog"]["records"] == len(KEYS) and sites["east"]["failed_entries"] == 0
    assert sites["east"]["lease"] is None and sites["east"]["checkpoint"]["after"] is None
    lines = ok(run("replicate", "sites")).stdout.splitlines()
    assert lines[0].split() == ["SITE", "STATE", "CHECKPOINT", "LEASE", "FAILED", "BACKLOG"]
    assert lines[1].startswith("east ") and "3 records" in lines[1]
    assert lines[2].startswith("west ") and "paused since" in lines[2]
    assert fails(run("replicate", "pause", "north")).startswith("error: no replication site 'north'; sites: east, west")
    assert fails(run("replicate", "resume", "east", "--in", "0"), 2).startswith("usage error")


def test_config_check_connect_names_a_bad_site_and_probes_the_others(
    env: Env, run: Run, tmp_path: Path, moto_url: str
) -> None:
    env.s3.put_bucket_versioning(Bucket="dst-east", VersioningConfiguration={"Status": "Enabled"})
    (tmp_path / "bad").mkdir()
    bad = write_config(tmp_path / "bad", moto_url, west_endpoint="http://127.0.0.1:1")
    result = run("config", "check", "--connect", config=bad)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    east = next(line for line in lines if line.startswith("site east:"))
    west = next(line for line in lines if line.startswith("site west:"))
    assert east.startswith(f"site east: ok ({moto_url}, ") and "dst-east enabled" in east
    assert west.startswith("site west: unreachable: ") and "127.0.0.1:1" in west
    assert "site west" in lines[-1]
    # The good config: west's bucket does not exist, and the probe says which.
    result = run("config", "check", "--connect", "--json")
    doc: dict[str, Any] = orjson.loads(result.stdout)["connect"]
    assert doc["site east"]["ok"] is True
    assert doc["site west"]["ok"] is False and "dst-west" in doc["site west"]["detail"]


def test_status_has_a_replication_block_per_site(env: Env, run: Run) -> None:
    write_objects(env)
    ok(run("replicate", "run", "--once"))
    ok(run("replicate", "resume", "west", "--in", "2"))
    doc = orjson.loads(ok(run("status", "--json", "--direct")).stdout)
    sites = doc["replication"]
    assert set(sites) == {"east", "west"}
    assert sites["east"]["paused"] is False and sites["east"]["failed_entries"] == 0
    assert sites["west"]["paused"] is True and sites["west"]["resume_at"] and sites["west"]["failed_entries"] == len(KEYS)
    assert sites["east"]["checkpoint"]["after"] is not None and sites["east"]["lease"] is None
    lines = replication_lines(doc)
    assert lines[0].startswith("replication east: running, checkpoint ")
    assert "0 failed entries, backlog unknown (no serve answered)" in lines[0]
    assert lines[1].startswith(f"replication west: paused until {sites['west']['resume_at']}, ")
    assert f"{len(KEYS)} failed entries" in lines[1]


def test_run_replicates_in_the_foreground_until_sigterm(env: Env) -> None:
    write_objects(env)
    # Bare `replicate` is `replicate run`: every site, until SIGTERM.
    proc = subprocess.Popen(
        [sys.executable, "-m", "changelog.cli", "-c", str(env.path), "replicate"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if load_checkpoint(env.index, "replication-east").after is not None:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert "Contents" in env.s3.list_objects_v2(Bucket="dst-east")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert env.index.store.lock_info(env.index.control_oid, consumer_lock("replication-east")) is None
