"""A new user's review of the README on the embedded default (sqlite index, directory target): the
CLI verbs and options it documents, fed good and bad input, through click's runner and through the
installed console script. Each bad input must give one line and an exit code, and lose nothing;
every committed line must be one docs/record.schema.json accepts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from changelog.cli import cli
from changelog.config import parse_config
from changelog.consumers.backup.consumer import BackupConsumer
from changelog.consumers.framework import ConsumerRunner
from changelog.errors import PermanentError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from tests.record_schema import problems

REPO = Path(__file__).resolve().parents[2]


def jsonl(docs: list[dict[str, Any]]) -> str:
    return "".join(orjson.dumps(d).decode() + "\n" for d in docs)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "rgw-changelog.toml"
    p.write_text(
        f"""
[index]
path = "{tmp_path / "index.db"}"
shards = 4

[target]
url = "file://{tmp_path / "logs"}/"

[collector]
settle = 0

[api]
# nothing listens here: every command acts directly
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


def console(
    conf: Path, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed console script with this worktree's code, as an operator runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    exe = Path(sys.executable).with_name("rgw-changelog")
    return subprocess.run(
        [str(exe), "-c", str(conf), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def committed(run: Any) -> list[dict[str, Any]]:
    r = run("logs", "cat")
    assert r.exit_code == 0, r.output
    return [orjson.loads(line) for line in r.stdout.splitlines() if line.strip()]


TENANT_AND_PLAIN: list[dict[str, Any]] = [
    {"bucket": "b", "key": "a/1", "size": 1, "etag": "e1"},
    {"bucket": "b", "tenant": "tn", "key": "a/2", "size": 2, "etag": "e2"},
    {"bucket": "b", "key": None, "op": "bucket_create"},
    {"bucket": "b", "key": "z/3", "op": "delete"},
]


# --------------------------------------------------------------------------- bugs


def test_logs_cat_refuses_the_s3_tenant_spelling_with_a_hint(run: Any) -> None:
    """README (Tenants): in `logs cat --bucket` a tenant's bucket is written `tenant/bucket`;
    `tenant:bucket`, the S3 spelling, "is refused with a hint". It is not: the filter matches no
    record, and the user gets an empty answer and exit 0, as if the bucket had no changes."""
    assert run("record", input=jsonl(TENANT_AND_PLAIN)).exit_code == 0
    assert run("flush", "--direct").exit_code == 0
    good = run("logs", "cat", "--bucket", "tn/b")
    assert good.exit_code == 0 and [orjson.loads(x)["key"] for x in good.stdout.splitlines()] == ["a/2"]
    line = one_line_error(run("logs", "cat", "--bucket", "tn:b"), 2)
    assert "tn/b" in line, line


@pytest.mark.parametrize("verb", [("logs", "cat"), ("lifecycle", "plan")])
@pytest.mark.parametrize("bad", ["x/y/z", "/b", "tn!/b", "tn/", ""])
def test_a_bucket_no_record_can_name_is_refused_in_one_line(run: Any, verb: tuple[str, ...], bad: str) -> None:
    """`--bucket x/y/z` (or an empty name, a bad tenant) matched no record: an empty answer, as
    if the bucket had no changes or nothing was planned. Refused in one line, exit 2."""
    line = one_line_error(run(*verb, "--bucket", bad), 2)
    assert "is not a bucket" in line, line


def test_record_never_commits_an_empty_version_id(conf: Path) -> None:
    """`record` validates every line first (README: all or nothing). A line with
    `"version_id": ""` (radosgw's bucket-index spelling of the null version) passes and is
    committed as `"version_id": ""`, which docs/record.schema.json refuses (minLength 1): a reader
    validating the logs rejects the line. It must be refused (`line 1: version_id: ...`) or read as
    the null version (null), never written. (The console script, so that the suite's own schema
    guard does not stop the in-process collector first.)"""
    r = console(conf, "record", stdin=jsonl([{"bucket": "b", "key": "k", "version_id": ""}]))
    if r.returncode == 0:
        assert console(conf, "flush", "--direct").returncode == 0
        out = console(conf, "logs", "cat")
        recs = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
        assert len(recs) == 1
        assert problems(recs[0]) == [], recs[0]
        assert recs[0]["version_id"] is None, recs[0]
    else:
        assert r.returncode == 1 and "version_id" in r.stderr, r.stderr


def test_backup_consumer_before_the_first_watermark_does_not_stop_serve(tmp_path: Path) -> None:
    """With `[backup] interval`, `serve` runs the backup consumer from its first second. On a
    new index the collector has not written `_watermark.json` yet (with a follower it waits for the
    follower's first catch-up), and the backup step raises PermanentError "no change-log
    watermark ... the collector has not completed a pass yet": the consumer loop ends and takes
    the whole `serve` down (seen on the Reef lab, test_newuser_review_lab.py). A collector that has
    not finished its first pass is a wait, not a fault."""
    cfg = parse_config(
        {
            "index": {"path": str(tmp_path / "index.db")},
            "target": {"url": f"file://{tmp_path}/logs/"},
            "source": {"endpoint": "http://127.0.0.1:1", "access_key": "a", "secret_key": "b"},
            "backup": {"url": f"file://{tmp_path}/dest/", "interval": 3600.0},
        }
    )
    index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
    try:
        runner = ConsumerRunner(index, BackupConsumer(cfg, interval=3600.0), lease_ttl=5)
        assert runner.acquire()
        stopped_by: PermanentError | None = None
        try:
            runner.step(threading.Event())
        except PermanentError as ex:
            stopped_by = ex
        except Exception as ex:  # a transient error is retried by the loop: fine
            print(f"step raised {type(ex).__name__}: {ex}")
        finally:
            runner.step_down()
        assert stopped_by is None, (
            f"a backup step before the collector's first pass stops serve: {stopped_by}"
        )
    finally:
        index.store.close()


def test_serve_refuses_backup_interval_without_a_source_at_start(tmp_path: Path, conf: Path) -> None:
    """README: "Only what start-up finds stops the process", and config errors exit 2 in one
    line; `[[replication.sites]]` without `[source] endpoint` is such a config error. `[backup]
    interval` without a source is not checked: `serve` starts, and half a second later the
    backup consumer's first run fails ("list buckets: Unable to locate credentials": it asked
    AWS) and stops the whole process with exit 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf.write_text(
        conf.read_text().replace('listen = "127.0.0.1:1"', f'listen = "127.0.0.1:{port}"')
        + f'\n[backup]\nurl = "file://{tmp_path}/dest/"\ninterval = 3600\n'
    )
    proc = console(conf, "serve", timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    print(proc.stderr[-2000:])
    assert proc.returncode == 2 and last.startswith("config error:") and "source" in last, (
        proc.returncode,
        last,
    )


def test_config_check_refuses_what_every_other_command_refuses(run: Any, tmp_path: Path) -> None:
    """README: `config check` validates. A RADOS index whose `ceph_conf` does not exist passes it
    ("config ok", exit 0), while `status`, `collect`, `serve` and the rest stop on the same file
    with `config error: index.ceph_conf: ... not found` (exit 2): the check is made in
    `open_store` only, which `config check` without --connect never calls."""
    bad = tmp_path / "rados.toml"
    bad.write_text('[index]\nbackend = "rados"\nceph_conf = "/nonexistent/ceph.conf"\n')
    line = one_line_error(run("status", config=bad), 2)
    assert line == "config error: index.ceph_conf: /nonexistent/ceph.conf not found", line
    # config check validates (exit 0: the package checks its shipped config on machines without
    # Ceph) and names the missing file in a warning.
    r = run("config", "check", config=bad)
    assert r.exit_code == 0 and "warning: index.ceph_conf: /nonexistent/ceph.conf not found" in r.stderr, (
        r.exit_code,
        r.stderr,
    )


def test_a_missing_keyring_is_named_in_one_line(run: Any, tmp_path: Path) -> None:
    """A RADOS index whose `keyring` file does not exist: the user is told `cannot connect to
    Ceph (...): [errno 2] RADOS object not found (error connecting to the cluster)` on the lab (exit 1,
    after librados's own stray stderr line), which names neither the keyring nor the fix.
    `ceph_conf` is checked when the store opens (config error, exit 2); `keyring` is not."""
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = 127.0.0.1:1\n")
    bad = tmp_path / "rados.toml"
    bad.write_text(
        f'[index]\nbackend = "rados"\nceph_conf = "{conf}"\nkeyring = "{tmp_path}/no.keyring"\n'
        "connect_timeout = 1\n"
    )
    line = one_line_error(run("status", config=bad), 2)
    assert "index.keyring" in line and "no.keyring" in line, line


def test_usage_show_a_bad_interval_is_a_usage_error(run: Any) -> None:
    """README: usage errors exit 2, and `GET /_/usage?interval=7` answers 400 (a bad parameter).
    `usage show --interval 7` says `error: interval 7s is not a multiple of a stored one (...)`
    and exits 1, as a runtime failure: the check is made in the usage model (a PermanentError),
    after the option's own parsing (`click.BadParameter` only for a value that is not an
    interval at all)."""
    assert run("record", input=jsonl(TENANT_AND_PLAIN)).exit_code == 0
    assert run("flush", "--direct").exit_code == 0
    assert run("usage", "run", "--once").exit_code == 0
    syntax = one_line_error(run("usage", "show", "--interval", "xyz"), 2)
    assert syntax.startswith("usage error:"), syntax
    line = one_line_error(run("usage", "show", "--interval", "7"), 2)
    assert line.startswith("usage error:") and "not a multiple" in line, line


# --------------------------------------------------------------------------- what held up


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[bogus]\nx = 1\n", "unknown section [bogus]"),
        ('[index]\nshards = "x"\n', "index.shards must be an integer"),
        ("[index]\nshards = 0\n", "index.shards must be at least 1"),
        ("[index\n", "is not valid TOML"),
        ('[target]\nurl = "ftp://x/"\n', "target.url must start with s3:// or file://"),
        ('[target]\nurl = "s3://Bad_Bucket!/x/"\n', "valid bucket name"),
        ('[source]\nbuckets = ["a:b"]\n', "tenant/bucket, not tenant:bucket"),
        ("[index]\nnope = 1\n", "index.nope"),
        ('[logging]\nfile = "/proc/nope/x.log"\n', "logging.file"),
    ],
)
def test_bad_config_is_one_line_exit_2(run: Any, tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    line = one_line_error(run("status", config=bad), 2)
    assert line.startswith("config error:") and expected in line, line


def test_logs_cat_filters_and_cloudevents(run: Any) -> None:
    assert run("record", input=jsonl(TENANT_AND_PLAIN)).exit_code == 0
    assert run("flush", "--direct").exit_code == 0
    recs = committed(run)
    assert len(recs) == 4 and all(problems(r) == [] for r in recs)
    # --prefix keeps the bucket's bucket records (README).
    r = run("logs", "cat", "--bucket", "b", "--prefix", "a/")
    assert sorted((d["op"], d["key"]) for d in map(orjson.loads, r.stdout.splitlines())) == [
        ("bucket_create", None),
        ("write", "a/1"),
    ]
    r = run("logs", "cat", "--format", "cloudevents", "--zone", "us-east", "--bucket", "tn/b")
    (event,) = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert event["source"] == "rgw-changelog://us-east/tn/b" and event["subject"] == "a/2"
    assert event["type"] == "com.rgw-changelog.object.write" and event["data"]["tenant"] == "tn"
    assert run("logs", "cat", "--since", "2099-01-01").stdout == ""
    assert "is not a time" in one_line_error(run("logs", "cat", "--since", "garbage"), 2)
    assert "'xml' is not one of" in one_line_error(run("logs", "cat", "--format", "xml"), 2)


def test_bad_record_input_lists_every_bad_line_and_records_nothing(run: Any) -> None:
    lines: list[dict[str, Any]] = [
        {"bucket": "b", "key": "ok"},
        {"bucket": "b", "tenant": "t-n", "key": "x"},
        {"bucket": "b", "key": "x", "size": -5},
        {"bucket": "", "key": "x"},
        {"bucket": "b", "key": "x", "op": "bogus"},
    ]
    r = run("record", input=jsonl(lines))
    assert r.exit_code == 1
    for n, field in ((2, "tenant"), (3, "size"), (4, "bucket"), (5, "op")):
        assert f"line {n}: {field}:" in r.stderr, r.stderr
    assert run("flush", "--direct").exit_code == 0
    assert committed(run) == []


def test_a_target_that_cannot_be_created_is_one_line(run: Any, tmp_path: Path, conf: Path) -> None:
    (tmp_path / "afile").write_text("x")
    conf.write_text(conf.read_text().replace(f"file://{tmp_path / 'logs'}/", f"file://{tmp_path}/afile/sub/"))
    line = one_line_error(run("flush", "--direct"), 2)
    assert "cannot be used" in line, line
    r = run("config", "check", "--connect")
    assert r.exit_code == 1 and "target: failed:" in r.output


def test_backup_on_the_embedded_default_without_a_source_is_one_line(
    run: Any, tmp_path: Path, conf: Path
) -> None:
    r = run("backup", "run")
    assert "backup.url is not set" in one_line_error(r, 2)
    conf.write_text(conf.read_text() + f'\n[backup]\nurl = "file://{tmp_path}/dest/"\n')
    assert run("backup", "list").exit_code == 0
    r = run("backup", "verify")
    assert r.exit_code == 0 and "0 missing, 0 corrupt" in r.stdout
