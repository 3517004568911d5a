"""The operator CLI on the embedded backend (sqlite index + directory target): the real commands
through click's runner and through the installed console script, the round trip
record -> status -> shards dump -> collect -> logs list -> logs cat, trims, and every bad-input
path giving one line on stderr and a non-zero exit."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from changelog import status as status_mod
from changelog.cli import cli, parse_time
from changelog.config import load_config, open_index
from changelog.pipeline.lease import Lease
from changelog.progress import Progress, human_bytes, human_count, stderr_is_tty

MUTATIONS: list[dict[str, Any]] = [
    {"bucket": "photos", "key": "2026/a.jpg", "size": 10, "etag": "e1"},
    {"bucket": "photos", "key": "2026/b.jpg", "size": 20, "etag": "e2"},
    {"bucket": "photos", "key": "raw/c.raw", "op": "delete"},
    {"bucket": "docs", "key": "héllo wörld\nline2", "size": 0, "etag": "e3", "version_id": "v1"},
    {"bucket": "docs", "key": "x", "op": "delete_marker", "version_id": "v2"},
]


def jsonl(docs: list[dict[str, Any]]) -> str:
    return "".join(orjson.dumps(d).decode() + "\n" for d in docs)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "rgw-changelog.toml"
    p.write_text(
        f"""
[index]
backend = "sqlite"
path = "{tmp_path / "index.db"}"
shards = 4

[target]
url = "file://{tmp_path / "logs"}/"

[collector]
settle = 0
lease_ttl = 5

[api]
# nothing listens here: `status` reads directly
listen = "127.0.0.1:1"
"""
    )
    return p


@pytest.fixture
def run(conf: Path) -> Iterator[Any]:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, config: Path | None = conf) -> Result:
        argv = (["-c", str(config)] if config is not None else []) + list(args)
        return runner.invoke(cli, argv, input=input, catch_exceptions=False)

    yield invoke


def one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- the round trip


def test_round_trip(run: Any) -> None:
    r = run("record", "--json", input=jsonl(MUTATIONS))
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout) == {"recorded": 5, "duplicates": 0}

    r = run("status", "--json")
    assert r.exit_code == 0, r.output
    st = orjson.loads(r.stdout)
    assert st["from"] == "direct"
    assert st["index"]["entries"] == 5 and st["index"]["shards"] == 4
    assert sum(s["entries"] for s in st["shards"]) == 5
    assert st["index"]["oldest_age_s"] is not None
    assert st["collector_lease"] is None
    assert st["target"]["last_object"] is None

    r = run("shards", "list", "--json")
    shards = orjson.loads(r.stdout)
    assert [s["shard"] for s in shards] == [0, 1, 2, 3]

    dumped = []
    for s in shards:
        r = run("shards", "dump", str(s["shard"]))
        assert r.exit_code == 0
        lines = [orjson.loads(x) for x in r.stdout.splitlines()]
        assert len(lines) == s["entries"]
        assert [x["index_key"] for x in lines] == sorted(x["index_key"] for x in lines)
        dumped += lines
    assert {(d["bucket"], d["key"], d["op"]) for d in dumped} == {
        (m["bucket"], m["key"], m.get("op", "write")) for m in MUTATIONS
    }

    r = run("collect", "--once", "--json")
    assert r.exit_code == 0, r.output
    passed = orjson.loads(r.stdout)
    assert passed["entries"] == 5 and len(passed["objects"]) == 1

    r = run("status", "--json")
    st = orjson.loads(r.stdout)
    assert st["index"]["entries"] == 0
    assert st["target"]["last_object"] == passed["objects"][0]
    assert st["collector"]["last_object"] == passed["objects"][0]
    assert st["target"]["watermark"]["complete_until"] == passed["watermark"]

    r = run("logs", "list", "--json")
    objs = orjson.loads(r.stdout)
    assert [o["name"] for o in objs] == passed["objects"]

    r = run("logs", "cat")
    assert r.exit_code == 0
    records = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert sorted(x["id"] for x in records) == sorted(d["id"] for d in dumped)
    by_key = {(x["bucket"], x["key"]): x for x in records}
    assert by_key[("docs", "héllo wörld\nline2")]["version_id"] == "v1"
    assert by_key[("photos", "2026/a.jpg")]["size"] == 10

    r = run("logs", "cat", "--bucket", "photos", "--prefix", "2026/")
    assert sorted(orjson.loads(x)["key"] for x in r.stdout.splitlines()) == ["2026/a.jpg", "2026/b.jpg"]
    r = run("logs", "cat", "--since", "now")
    assert r.stdout == ""
    r = run("logs", "list", "--since", "now")
    assert orjson.loads(run("logs", "list", "--since", "now", "--json").stdout) == []
    assert r.exit_code == 0


def test_human_output(run: Any) -> None:
    run("record", input=jsonl(MUTATIONS))
    r = run("status")
    assert r.exit_code == 0
    assert "index: sqlite prefix 'changelog', 4 shards, mode write; 5 entries" in r.stdout
    assert "SHARD" in r.stdout
    r = run("shards", "list")
    assert "changelog.shard.0000" in r.stdout
    r = run("collect", "--once")
    assert r.exit_code == 0 and r.stdout.strip().endswith(".jsonl")
    assert "collect: 5 entries in 1 log objects" in r.stderr
    r = run("logs", "list")
    assert ".jsonl" in r.stdout and "1 log objects" in r.stderr
    r = run("flush")
    assert r.exit_code == 0 and "flush: 0 entries in 0 log objects" in r.stderr


def test_record_is_idempotent_per_source_position(run: Any) -> None:
    docs = [dict(m, source="test:stream", position=f"{i:08d}") for i, m in enumerate(MUTATIONS)]
    assert orjson.loads(run("record", "--json", input=jsonl(docs)).stdout) == {"recorded": 5, "duplicates": 0}
    assert orjson.loads(run("record", "--json", input=jsonl(docs)).stdout) == {"recorded": 0, "duplicates": 5}


def test_flush_ignores_settle(run: Any, tmp_path: Path, conf: Path) -> None:
    slow = tmp_path / "slow.toml"
    slow.write_text(conf.read_text().replace("settle = 0", "settle = 3600"))
    run("record", input=jsonl(MUTATIONS), config=slow)
    passed = orjson.loads(run("collect", "--once", "--json", config=slow).stdout)
    assert passed["entries"] == 0
    passed = orjson.loads(run("flush", "--json", config=slow).stdout)
    assert passed["entries"] == 5


def test_dump_windows_and_limit(run: Any) -> None:
    docs = [{"bucket": "b", "key": "same-key", "size": i} for i in range(20)]
    run("record", input=jsonl(docs))
    shard = next(s["shard"] for s in orjson.loads(run("shards", "list", "--json").stdout) if s["entries"])
    all_ = [orjson.loads(x) for x in run("shards", "dump", str(shard)).stdout.splitlines()]
    assert [d["size"] for d in all_] == list(range(20))
    assert len(run("shards", "dump", str(shard), "--limit", "3").stdout.splitlines()) == 3
    assert run("shards", "dump", str(shard), "--since", "now").stdout == ""
    assert run("shards", "dump", str(shard), "--until", "2000-01-01").stdout == ""
    assert len(run("shards", "dump", str(shard), "--since", "-1h", "--until", "now").stdout.splitlines()) == 20


# --------------------------------------------------------------------------- trim


def _one_shard(run: Any, n: int = 10) -> tuple[int, list[dict[str, Any]]]:
    run("record", input=jsonl([{"bucket": "b", "key": "k", "size": i} for i in range(n)]))
    shard = next(s["shard"] for s in orjson.loads(run("shards", "list", "--json").stdout) if s["entries"])
    return shard, [orjson.loads(x) for x in run("shards", "dump", str(shard)).stdout.splitlines()]


def test_trim_upto_exact_key(run: Any) -> None:
    shard, entries = _one_shard(run)
    r = run("shards", "trim", str(shard), "--upto", entries[3]["index_key"], "--yes")
    assert r.exit_code == 0, r.output
    assert f"shard {shard}: 4 entries" in r.stderr and "trimmed 4 entries" in r.stderr
    left = [orjson.loads(x) for x in run("shards", "dump", str(shard)).stdout.splitlines()]
    assert left == entries[4:]


def test_trim_before_time(run: Any) -> None:
    shard, entries = _one_shard(run)
    r = run("shards", "trim", str(shard), "--before", "now", "--yes")
    assert r.exit_code == 0 and "trimmed 10 entries" in r.stderr
    assert run("shards", "dump", str(shard)).stdout == ""
    r = run("shards", "trim", str(shard), "--before", "now", "--yes")
    assert r.exit_code == 0 and "nothing to trim" in r.stderr


def test_trim_asks_for_confirmation(run: Any) -> None:
    shard, entries = _one_shard(run)
    r = run("shards", "trim", str(shard), "--before", "now", input="n\n")
    assert r.exit_code == 0 and "Trim these 10 entries?" in r.stderr and "nothing trimmed" in r.stderr
    assert len(run("shards", "dump", str(shard)).stdout.splitlines()) == 10
    r = run("shards", "trim", str(shard), "--before", "now", input="")
    assert r.exit_code == 2 and "no confirmation" in r.stderr
    assert len(run("shards", "dump", str(shard)).stdout.splitlines()) == 10
    r = run("shards", "trim", str(shard), "--before", "now", input="y\n")
    assert r.exit_code == 0 and "trimmed 10 entries" in r.stderr
    assert run("shards", "dump", str(shard)).stdout == ""


def test_trim_refused_while_a_collector_drains(run: Any, conf: Path) -> None:
    shard, _ = _one_shard(run)
    index = open_index(load_config(conf, env={}))
    lease = Lease(index.store, index.shard_oid(shard), name="drain", ttl=30, description="another drainer")
    assert lease.acquire()
    try:
        err = one_line_error(run("shards", "trim", str(shard), "--before", "now", "--yes"), 1)
        assert f"shard {shard} is being drained by" in err
    finally:
        lease.release()
        index.store.close()
    assert len(run("shards", "dump", str(shard)).stdout.splitlines()) == 10


def test_collect_refused_while_another_collector_is_active(run: Any, conf: Path) -> None:
    index = open_index(load_config(conf, env={}))
    lease = Lease(index.store, index.control_oid, name="collector", ttl=30, description="the other one")
    assert lease.acquire()
    try:
        r = run("status", "--json")
        assert orjson.loads(r.stdout)["collector_lease"]["description"] == "the other one"
        err = one_line_error(run("collect", "--once"), 1)
        assert err.startswith("error: the control lease is held by")
    finally:
        lease.release()
        index.store.close()


# --------------------------------------------------------------------------- config check


def test_config_check_defaults(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RGW_CHANGELOG_CONFIG", raising=False)
    monkeypatch.setattr("changelog.config.DEFAULT_PATH", tmp_path / "absent.toml")
    r = run("config", "check", config=None)
    assert r.exit_code == 0
    assert 'backend = "sqlite"' in r.stdout and "config ok: built-in defaults" in r.stderr
    r = run("config", "check", "--json", config=None)
    doc = orjson.loads(r.stdout)
    assert doc["path"] is None and doc["config"]["target"]["url"] == f"file://{tmp_path}/changelog-logs/"


def test_config_check_masks_secrets(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        '[source]\nendpoint = "http://127.0.0.1:1"\naccess_key = "AKIA-VISIBLE-NOT"\nsecret_key_env = "T_SK"\n'
        '[target]\nurl = "s3://bucket/p/"\n[backup]\nurl = "s3://bk/"\nsecret_key = "BK-SECRET"\naccess_key = "BK-AK"\n'
    )
    monkeypatch.setenv("T_SK", "ENV-SECRET-VALUE")
    for args in (("config", "check"), ("config", "check", "--json"), ("--debug", "config", "check")):
        r = run(*args, config=p)
        assert r.exit_code == 0, r.output
        for secret in ("AKIA-VISIBLE-NOT", "ENV-SECRET-VALUE", "BK-SECRET", "BK-AK"):
            assert secret not in r.output
    assert "**** (from $T_SK)" in run("config", "check", config=p).stdout


def test_config_check_connect_embedded(run: Any) -> None:
    r = run("config", "check", "--connect")
    assert r.exit_code == 0 and "index: ok (store reached; no index 'changelog' yet, created on first use)" in r.stderr
    assert "target: ok" in r.stderr and "source:" not in r.stderr  # no [source] endpoint: not reached
    run("record", input=jsonl(MUTATIONS[:1]))
    r = run("config", "check", "--connect")
    assert r.exit_code == 0 and "index: ok (4 shards, mode write" in r.stderr


def test_config_check_connect_unreachable_target(run: Any, tmp_path: Path, conf: Path) -> None:
    p = write(tmp_path, conf.read_text().replace(
        f'url = "file://{tmp_path / "logs"}/"',
        'url = "s3://logs/x/"\nendpoint = "http://127.0.0.1:1"\naccess_key = "a"\nsecret_key = "b"',
    ))  # fmt: skip
    r = run("config", "check", "--connect", config=p)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    *_, index, target, last = r.stderr.strip().splitlines()
    assert index.startswith("index: ok (")
    assert target.startswith("target: unreachable: list s3://logs/x/") and "127.0.0.1:1" in target
    assert last.startswith("error: config check --connect: cannot use target (config from ")


def test_log_file_that_cannot_be_opened(run: Any, tmp_path: Path, conf: Path) -> None:
    p = write(tmp_path, conf.read_text() + '\n[logging]\nfile = "/nonexistent/dir/x.log"\n')
    err = one_line_error(run("status", config=p), 2)
    assert err.startswith("config error: logging.file: cannot open /nonexistent/dir/x.log")


# --------------------------------------------------------------------------- bad input


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "code", "expected"),
    [
        ('[collector]\nsettle = "ten"\n', 2, 'config error: collector.settle must be a number (got "ten")'),
        ("[collector]\nsettel = 1\n", 2, "config error: unknown key collector.settel (did you mean 'settle'?)"),
        ("[colector]\n", 2, "config error: unknown section [colector] (did you mean 'collector'?)"),
        ("[index\n", 2, "is not valid TOML"),
        ('[index]\nbackend = "rados"\nceph_conf = "/nonexistent/ceph.conf"\n', 2,
         "config error: index.ceph_conf: /nonexistent/ceph.conf not found"),
        ('[index]\npath = "/nonexistent/dir/x.db"\n', 2, "config error: index.path: directory /nonexistent/dir does not exist"),
    ],
)  # fmt: skip
def test_bad_config_one_line(run: Any, tmp_path: Path, text: str, code: int, expected: str) -> None:
    err = one_line_error(run("status", config=write(tmp_path, text)), code)
    assert expected in err


def test_missing_config(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = one_line_error(run("status", config=tmp_path / "nope.toml"), 2)
    assert err == f"config error: config file {tmp_path / 'nope.toml'} not found"
    monkeypatch.setenv("RGW_CHANGELOG_CONFIG", str(tmp_path / "env.toml"))
    err = one_line_error(run("status", config=None), 2)
    assert err.endswith("env.toml not found (from $RGW_CHANGELOG_CONFIG)")


def test_index_created_with_other_shard_count(run: Any, tmp_path: Path, conf: Path) -> None:
    run("record", input=jsonl(MUTATIONS[:1]))
    other = write(tmp_path, conf.read_text().replace("shards = 4", "shards = 8"))
    err = one_line_error(run("status", config=other), 2)
    assert "created with shards=4" in err


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("stauts",), 2, "usage error: no such command 'stauts' (did you mean 'status'?)"),
        (("shards", "dupm", "1"), 2, "(did you mean 'dump'?)"),
        (("--bogus", "status"), 2, "usage error: No such option"),
        (("shards", "dump", "99"), 2, "no shard 99: this index has shards 0..3"),
        (("shards", "dump", "-1"), 2, "No such option '-1'"),
        (("shards", "dump", "one"), 2, "'one' is not a valid integer"),
        (("shards", "dump"), 2, "Missing argument 'SHARD'"),
        (("shards", "dump", "1", "--since", "yesterday"), 2, "'yesterday' is not a time"),
        (("shards", "dump", "1", "--limit", "0"), 2, "--limit"),
        (("shards", "trim", "1"), 2, "give exactly one of --before TIME or --upto KEY"),
        (("shards", "trim", "1", "--before", "now", "--upto", "d.0"), 2, "give exactly one of"),
        (("shards", "trim", "1", "--upto", "nope", "--yes"), 2, "'nope' is not an index key"),
        (("shards", "trim", "7", "--before", "now", "--yes"), 2, "no shard 7"),
        (("logs", "cat", "--until", "2026-13-45"), 2, "is not a time"),
        (("logs", "list", "--since", ""), 2, "is not a time"),
    ],
)
def test_bad_arguments_one_line(run: Any, args: tuple[str, ...], code: int, expected: str) -> None:
    err = one_line_error(run(*args), code)
    assert expected in err


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ("not json\n", "error: line 1: not JSON"),
        ('{"bucket": "b", "key": "k"}\n[1]\n', "error: line 2: expected a JSON object"),
        ('{"bucket": "", "key": "k"}\n', "error: line 1: bucket: is empty; 1 bad line of 1, nothing recorded"),
        ('{"bucket": "b", "key": ""}\n', "error: line 1: key: is empty"),
        ('{"bucket": "b", "key": "k", "op": "put"}\n', "error: line 1: op: must be one of"),
        ('{"bucket": "b", "key": "k", "colour": "red"}\n', "error: line 1: colour: unknown field"),
        ('{"bucket": "b", "key": "k", "mtime": "soon"}\n', "error: line 1: mtime: 'soon' is not a time"),
        ('{"bucket": "b", "key": "' + "k" * 1025 + '"}\n', "error: line 1: key: longer than 1024 bytes"),
        ('{"bucket": "b", "key": "k", "size": -1}\n', "error: line 1: size: must be a non-negative int"),
    ],
)
def test_bad_record_input_one_line(run: Any, stdin: str, expected: str) -> None:
    err = one_line_error(run("record", input=stdin), 1)
    assert err.startswith(expected), err


def test_unreachable_s3_target(run: Any, tmp_path: Path, conf: Path) -> None:
    p = write(
        tmp_path,
        conf.read_text().replace(
            f'url = "file://{tmp_path / "logs"}/"',
            'url = "s3://logs/x/"\nendpoint = "http://127.0.0.1:1"\naccess_key = "a"\nsecret_key = "b"',
        ),
    )
    t0 = time.monotonic()
    err = one_line_error(run("logs", "list", config=p), 1)
    assert err.startswith("error: ") and "127.0.0.1:1" in err
    assert time.monotonic() - t0 < 60
    err = one_line_error(run("logs", "cat", config=p), 1)
    assert "127.0.0.1:1" in err


def test_unexpected_error_is_one_line_unless_debug(run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   conf: Path) -> None:  # fmt: skip
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(status_mod, "shard_docs", boom)
    err = one_line_error(run("shards", "list"), 1)
    assert err == "error: unexpected RuntimeError: kaboom (run with --debug for the traceback)"
    r = run("--debug", "shards", "list")
    assert r.exit_code == 1 and "Traceback" in r.stderr and "kaboom" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: unexpected RuntimeError: kaboom"
    # With a log file, the traceback goes there (and stderr still gets one line).
    log = tmp_path / "cli.log"
    logged = write(tmp_path, conf.read_text() + f'\n[logging]\nfile = "{log}"\n')
    err = one_line_error(run("shards", "list", config=logged), 1)
    assert "kaboom" in err
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: kaboom" in text


def test_help_and_version(run: Any) -> None:
    r = run("--help", config=None)
    assert r.exit_code == 0
    for command in ("serve", "collect", "flush", "status", "shards", "logs", "config", "record"):
        assert command in r.stdout
    r = run("--version", config=None)
    assert r.exit_code == 0 and "0.1" in r.stdout
    assert run("shards", "trim", "--help", config=None).exit_code == 0


# --------------------------------------------------------------------------- times


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected_s"),
    [
        ("now", NOW),
        ("-1h", NOW - 3600),
        ("30m", NOW - 1800),
        ("1h30m", NOW - 5400),
        ("2d", NOW - 2 * 86400),
        ("1w", NOW - 7 * 86400),
        ("90s", NOW - 90),
        ("1763700000", 1763700000),
        ("1763700000.5", 1763700000.5),
        ("2026-01-02", 1767312000),
        ("2026-01-02T03:04:05Z", 1767323045),
        ("2026-01-02T03:04:05.250Z", 1767323045.25),
        ("2026-01-02T04:04:05+01:00", 1767323045),
        ("2026-01-02 03:04:05", 1767323045),
        ("2026-01-02t03:04:05z", 1767323045),
    ],
)
def test_parse_time(text: str, expected_s: float) -> None:
    assert parse_time(text, now=NOW) == int(expected_s * 1_000_000)


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "1h-", "-", "12:00", "2026", "--1h"])
def test_parse_time_rejects(text: str) -> None:
    if text == "2026":  # all digits: epoch seconds, by the documented rule
        assert parse_time(text, now=NOW) == 2026_000_000
        return
    with pytest.raises(ValueError):
        parse_time(text, now=NOW)


# --------------------------------------------------------------------------- progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_silent_when_not_a_tty() -> None:
    out = io.StringIO()
    with Progress("x", stream=out) as bar:
        for _ in range(100):
            bar.update(1, nbytes=10)
    assert out.getvalue() == "" and bar.count == 100 and bar.nbytes == 1000
    assert not stderr_is_tty(out)


def test_progress_draws_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    out = FakeTTY()
    t = [0.0]
    with Progress("dump", total=200, unit="entries", stream=out, clock=lambda: t[0]) as bar:
        assert bar.enabled
        for _ in range(100):
            t[0] += 0.01
            bar.update(1, nbytes=1024)
        line = bar.line()
    text = out.getvalue()
    assert text.startswith("\rdump  [") and "entries/s" in text
    assert "50.0%" in line and "100/200 entries" in line and "100.0 KiB" in line and "eta" in line
    assert text.endswith("\r")  # the line is erased at the end


def test_progress_dumb_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    assert not Progress("x", stream=FakeTTY()).enabled


def test_human_units() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(3 << 30) == "3.0 GiB"
    assert human_count(999) == "999" and human_count(12_345) == "12.3k" and human_count(2_500_000) == "2.5M"


# --------------------------------------------------------------------------- the installed console script


def console_script() -> str:
    here = Path(sys.executable).parent / "rgw-changelog"
    found = str(here) if here.exists() else shutil.which("rgw-changelog")
    if not found:
        pytest.skip("the rgw-changelog console script is not installed (pip install -e .)")
    return found


def sh(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_console_script_round_trip(conf: Path) -> None:
    c = ["-c", str(conf)]
    p = sh(*c, "record", stdin=jsonl(MUTATIONS))
    assert p.returncode == 0 and "recorded 5 mutations" in p.stderr, p.stderr
    st = orjson.loads(sh(*c, "status", "--json").stdout)
    assert st["index"]["entries"] == 5
    dumped = [orjson.loads(x) for s in range(4) for x in sh(*c, "shards", "dump", str(s)).stdout.splitlines()]
    assert len(dumped) == 5
    p = sh(*c, "collect", "--once")
    assert p.returncode == 0 and "5 entries in 1 log objects" in p.stderr, p.stderr
    objs = orjson.loads(sh(*c, "logs", "list", "--json").stdout)
    assert len(objs) == 1
    records = [orjson.loads(x) for x in sh(*c, "logs", "cat").stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted(d["id"] for d in dumped)
    assert orjson.loads(sh(*c, "status", "--json").stdout)["index"]["entries"] == 0


def test_console_script_config_from_environment(conf: Path) -> None:
    p = sh("config", "check", "--json", env={"RGW_CHANGELOG_CONFIG": str(conf)})
    assert p.returncode == 0 and orjson.loads(p.stdout)["path"] == str(conf)


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("-c", "/nonexistent/rgw-changelog.toml", "status"), 2, "config error: config file /nonexistent/rgw-changelog.toml not found"),
        (("shards", "dump", "42"), 2, "no shard 42"),
        (("stauts",), 2, "did you mean 'status'?"),
        (("shards", "dump", "0", "--since", "someday"), 2, "'someday' is not a time"),
    ],
)  # fmt: skip
def test_console_script_errors(conf: Path, args: tuple[str, ...], code: int, expected: str) -> None:
    argv = args if args[0] == "-c" else ("-c", str(conf), *args)
    p = sh(*argv)
    assert p.returncode == code, p.stderr
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], p.stderr


def test_console_script_typo_and_wrong_type(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[collector]\nsettle = "ten"\n')
    p = sh("-c", str(bad), "collect", "--once")
    assert p.returncode == 2 and p.stderr == 'config error: collector.settle must be a number (got "ten")\n'
    bad.write_text("[target]\nurll = 'file:///tmp/x'\n")
    p = sh("-c", str(bad), "config", "check")
    assert p.returncode == 2 and p.stderr == "config error: unknown key target.urll (did you mean 'url'?)\n"


def test_console_script_broken_pipe(conf: Path) -> None:
    c = ["-c", str(conf)]
    sh(*c, "record", stdin=jsonl([{"bucket": "b", "key": f"k{i}"} for i in range(3000)]))
    shard = next(s["shard"] for s in orjson.loads(sh(*c, "shards", "list", "--json").stdout) if s["entries"])
    proc = subprocess.run(
        f"'{console_script()}' -c '{conf}' shards dump {shard} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- serve


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_needs_source_credentials(run: Any, tmp_path: Path, conf: Path) -> None:
    p = write(tmp_path, conf.read_text() + '\n[source]\nendpoint = "http://127.0.0.1:1"\n')
    err = one_line_error(run("serve", config=p), 1)
    assert "source.access_key and source.secret_key must be set" in err


def test_serve_embedded_collects_reloads_and_stops(tmp_path: Path, conf: Path) -> None:
    import signal

    port = free_port()
    p = tmp_path / "serve.toml"
    p.write_text(
        conf.read_text().replace('listen = "127.0.0.1:1"', f'listen = "127.0.0.1:{port}"')
        + "\n[logging]\nlevel = \"WARNING\"\n"
    )
    p.write_text(p.read_text().replace("lease_ttl = 5", "lease_ttl = 5\ninterval = 0.2"))
    c = ["-c", str(p)]
    proc = subprocess.Popen([console_script(), *c, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sh(*c, "record", stdin=jsonl(MUTATIONS)).returncode == 0
        deadline = time.monotonic() + 30
        records: list[str] = []
        while time.monotonic() < deadline and len(records) < len(MUTATIONS):
            records = sh(*c, "logs", "cat").stdout.splitlines()
            time.sleep(0.2)
        assert len(records) == len(MUTATIONS)
        st = orjson.loads(sh(*c, "status", "--json").stdout)
        assert st["from"] == f"http://127.0.0.1:{port}/_/status"
        assert st["collector_lease"] is not None
        proc.send_signal(signal.SIGHUP)  # reload, not death
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    st = orjson.loads(sh(*c, "status", "--json").stdout)
    assert st["from"] == "direct" and st["collector_lease"] is None  # released on SIGTERM


# --------------------------------------------------------------------------- zone enable-log-data

FAKE_RADOSGW_ADMIN = """#!{python}
# A stand-in for radosgw-admin: the zonegroup lives in a JSON file next to this script.
import json, pathlib, sys
state = pathlib.Path(__file__).with_name("zonegroup.json")
calls = pathlib.Path(__file__).with_name("calls.log")
args = [a for a in sys.argv[1:]]
with calls.open("a") as f:
    f.write(" ".join(args) + "\\n")
words, skip = [], False
for a in args:
    if skip:
        skip = False
    elif a in ("-c", "-k", "-n"):
        skip = True
    elif not a.startswith("-"):
        words.append(a)
if words[:2] == ["zonegroup", "get"]:
    print(state.read_text())
elif words[:2] == ["zonegroup", "set"]:
    infile = next(a.split("=", 1)[1] for a in args if a.startswith("--infile="))
    state.write_text(pathlib.Path(infile).read_text())
    print("RGWPeriod::init failed to init realm  id  : (2) No such file or directory", file=sys.stderr)
elif words[:2] == ["realm", "list"]:
    print(json.dumps({{"default_info": "", "realms": []}}))
else:
    print("unknown command", file=sys.stderr)
    sys.exit(22)
"""


@pytest.fixture
def fake_admin(tmp_path: Path) -> Path:
    d = tmp_path / "fake"
    d.mkdir()
    script = d / "radosgw-admin"
    script.write_text(FAKE_RADOSGW_ADMIN.format(python=sys.executable))
    script.chmod(0o755)
    (d / "zonegroup.json").write_text(
        orjson.dumps({"name": "default", "zones": [{"name": "a", "log_data": "false"}, {"name": "b", "log_data": "true"}]}).decode()
    )
    return script


def test_zone_enable_log_data(run: Any, fake_admin: Path) -> None:
    zone = ("zone", "enable-log-data", "--radosgw-admin", str(fake_admin))
    r = run(*zone, "--dry-run", "--json")
    assert r.exit_code == 0 and orjson.loads(r.stdout)["log_data"] == {"a": False, "b": True}
    r = run(*zone)
    assert r.exit_code == 0, r.output
    assert "log_data turned on for zone(s) a of zonegroup default: restart radosgw now" in r.stdout
    zg = orjson.loads((fake_admin.parent / "zonegroup.json").read_text())
    assert [z["log_data"] for z in zg["zones"]] == ["true", "true"]
    calls = (fake_admin.parent / "calls.log").read_text()
    assert "zonegroup set --rgw-zonegroup=default --infile=" in calls and "period" not in calls
    r = run(*zone, "--json")
    assert orjson.loads(r.stdout) == {"zonegroup": "default", "changed": [], "restart_radosgw": False}


def test_zone_enable_log_data_errors(run: Any, fake_admin: Path, tmp_path: Path) -> None:
    err = one_line_error(run("zone", "enable-log-data", "--radosgw-admin", str(fake_admin), "--zone", "c"), 1)
    assert err == "error: zonegroup default has no zone c (it has a, b)"
    err = one_line_error(run("zone", "enable-log-data", "--radosgw-admin", str(tmp_path / "none")), 1)
    assert "not found: install radosgw" in err


def test_status_names_the_buckets_not_followed() -> None:
    from changelog.cli.pipeline import _follower_text

    text = _follower_text({"buckets": {"a": {}}, "pending_shards": 0, "shard_markers": 2,
                           "not_followed": {"t1/locked": "access_denied", "logs": "internal"}})
    assert text.endswith("not followed: logs (internal), t1/locked (access_denied)")
    assert "not followed" not in _follower_text({"buckets": {}, "not_followed": {}})
    text = _follower_text({"buckets": {}, "sealed_shards": 3, "recreating": {"b2": 1.0, "b1": 2.0}})
    assert "3 shards of finished log generations still read" in text
    assert text.endswith("waiting for the collector to pass their bucket_delete: b1, b2")
