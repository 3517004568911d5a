"""Review of incremental backup and restore as a backup engineer uses it (review 3): the source
in moto, change logs written by hand (``test_backup_support``), the destination a directory.

Each test is a bug found in review: it failed before its fix.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from changelog.cli import cli
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.restore import restore
from changelog.consumers.backup.runner import BackupRunner
from changelog.consumers.backup.source import Source
from changelog.consumers.backup.store import BackupStore
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone, bucket_state


@pytest.fixture
def store(tmp_path: Path) -> BackupStore:
    return BackupStore(DirectoryTarget(tmp_path / "dest", fsync=False))


def run(store: BackupStore, logs: DirectoryTarget, aws: Any, **kw: Any) -> Any:
    return BackupRunner(store, logs, Source(aws), progress=False, **kw).run()


def restored(store: BackupStore, aws: Any, backup_id: str, bucket: str, to: str) -> dict[str, Any]:
    res = restore(store, Source(aws), bucket=bucket, to_bucket=to, backup_id=backup_id, progress=False)
    assert not res.failed
    return bucket_state(aws, to)


def test_same_bytes_rewritten_with_new_metadata_keeps_the_new_metadata(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """A CopyObject in place with MetadataDirective REPLACE (the usual way to fix a
    Content-Type) keeps the ETag and size; its record says nothing else. The backup must still
    hold the new Content-Type and user metadata: a restore gave the old ones."""
    zone.create_bucket("site")
    zone.put("site", "index.html", b"<html></html>", metadata={"rev": "1"}, content_type="text/plain")
    zone.commit()
    run(store, logs, aws)
    aws.copy_object(
        Bucket="site",
        Key="index.html",
        CopySource={"Bucket": "site", "Key": "index.html"},
        MetadataDirective="REPLACE",
        ContentType="text/html",
        Metadata={"rev": "2"},
    )
    head = aws.head_object(Bucket="site", Key="index.html")
    zone.pending.append(
        zone.record("site", "index.html", "write", size=head["ContentLength"], etag=head["ETag"].strip('"'))
    )
    zone.commit()
    r = run(store, logs, aws)
    assert r.backup_id is not None
    got = restored(store, aws, r.backup_id, "site", "site-restored")
    assert got == bucket_state(aws, "site")
    assert got["index.html"] == (b"<html></html>", {"rev": "2"}, "text/html")


def test_bucket_subset_run_loses_no_change_of_the_other_buckets(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """`backup run --bucket A` moved the one checkpoint past the records of every other bucket,
    which it skipped: their changes in that range were never backed up by any later run."""
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    zone.put("aaa", "k", b"a1")
    zone.put("bbb", "k", b"b1")
    zone.put("bbb", "gone", b"soon deleted")
    zone.commit()
    run(store, logs, aws)
    zone.put("aaa", "k", b"a2")
    zone.put("bbb", "k", b"b2")
    zone.delete("bbb", "gone")
    zone.put("bbb", "new", b"b-new")
    zone.commit()
    partial = run(store, logs, aws, only=["aaa"])
    assert partial.backup_id is not None
    assert restored(store, aws, partial.backup_id, "aaa", "aaa-partial") == bucket_state(aws, "aaa")
    zone.put("aaa", "k3", b"a3")
    zone.commit()
    full = run(store, logs, aws)
    assert full.backup_id is not None
    for bucket in ("aaa", "bbb"):
        assert restored(store, aws, full.backup_id, bucket, f"{bucket}-full") == bucket_state(aws, bucket), (
            bucket
        )


def test_bucket_subset_first_run_then_full_run_lists_the_others(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """A first run restricted to one bucket; the next full run must baseline the other buckets
    (by listing them: their objects predate the logs), not only apply their later records."""
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    zone.put("aaa", "k", b"a1", log=False)
    zone.put("bbb", "old", b"before the logs", log=False)
    zone.put("aaa", "k2", b"a2")
    zone.commit()
    first = run(store, logs, aws, only=["aaa"])
    assert first.backup_id is not None
    zone.put("bbb", "k", b"b1")
    zone.commit()
    full = run(store, logs, aws)
    assert full.backup_id is not None
    for bucket in ("aaa", "bbb"):
        assert restored(store, aws, full.backup_id, bucket, f"{bucket}-full") == bucket_state(aws, bucket), (
            bucket
        )


def test_restore_of_a_bucket_a_subset_run_left_out_names_its_true_time(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """A restore from a `--bucket` backup of a bucket that run did not back up gives that
    bucket's state as of the earlier backup it carries, and says so (its ``as_of``)."""
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    zone.put("aaa", "k", b"a1")
    zone.put("bbb", "k", b"b1")
    zone.commit()
    first = run(store, logs, aws)
    zone.put("aaa", "k", b"a2")
    zone.put("bbb", "k", b"b2")
    zone.commit()
    partial = run(store, logs, aws, only=["aaa"])
    assert partial.backup_id is not None and partial.as_of_us > first.as_of_us
    res = restore(
        store, Source(aws), bucket="bbb", to_bucket="bbb-r", backup_id=partial.backup_id, progress=False
    )
    assert bucket_state(aws, "bbb-r")["k"][0] == b"b1"
    assert res.as_of == mf.load(store, first.backup_id).doc["as_of"]


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [target]
            url = "file://{tmp_path}/logs/"
            [backup]
            url = "file://{tmp_path}/dest/"
            """
        )
    )
    return cfg


@pytest.mark.parametrize(
    "args",
    [
        ["backup", "restore", "--backup", "latest", "--bucket", "aaa", "--to-bucket", "aaa-r"],
        ["backup", "verify", "--backup", "20261207"],
    ],
)
def test_cli_malformed_backup_id_is_a_usage_error(
    args: list[str], tmp_path: Path, zone: Zone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup id that cannot be one (not YYYYMMDDTHHMMSS.ffffffZ-xxxx) is bad input: one line,
    exit 2 (it exited 1, as a runtime error, and only after opening the store)."""
    zone.create_bucket("aaa")
    zone.put("aaa", "k", b"a1")
    zone.commit()
    res = CliRunner().invoke(cli, ["-c", str(_config(tmp_path)), *args])
    assert res.exit_code == 2, res.output
    out = res.output.strip().splitlines()
    assert len(out) == 1 and "backup id" in out[0], res.output


def test_cli_run_bucket_option_keeps_the_other_buckets(
    tmp_path: Path, zone: Zone, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backup run --bucket A` then `backup run`: B's change made between them is in the last
    backup (the CLI's --bucket is the runner's ``only``)."""
    cfg = str(_config(tmp_path))
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    zone.put("aaa", "k", b"a1")
    zone.put("bbb", "k", b"b1")
    zone.commit()
    runner = CliRunner()
    assert runner.invoke(cli, ["-c", cfg, "backup", "run"]).exit_code == 0
    zone.put("bbb", "k", b"b2")
    zone.commit()
    res = runner.invoke(cli, ["-c", cfg, "backup", "run", "--bucket", "aaa"])
    assert res.exit_code == 0, res.output
    zone.put("aaa", "k", b"a3")
    zone.commit()
    res = runner.invoke(cli, ["-c", cfg, "backup", "run", "--json"])
    assert res.exit_code == 0, res.output
    store = BackupStore(DirectoryTarget(tmp_path / "dest", fsync=False))
    last = mf.list_backups(store)[-1].backup_id
    m = mf.load(store, last)
    assert m.keys("bbb")["k"]["sha256"] == hashlib.sha256(b"b2").hexdigest()


class Crash(Exception):
    pass


def test_full_run_resuming_a_crashed_subset_run_reads_the_buckets_behind(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """A `--bucket` run fails after its plan; the next (full) run resumes it. It must read the
    logs from where the bucket left behind stopped, not from where the crashed run started."""
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    zone.put("aaa", "k", b"a1")
    zone.put("bbb", "k", b"b1")
    zone.commit()
    run(store, logs, aws)
    zone.put("bbb", "k", b"b2")
    zone.commit()
    run(store, logs, aws, only=["aaa"])  # bbb's b2 left behind
    zone.put("aaa", "k", b"a3")
    zone.commit()

    def crash(point: str) -> None:
        if point == "planned":
            raise Crash()

    with pytest.raises(Crash):
        run(store, logs, aws, only=["aaa"], hook=crash)
    full = run(store, logs, aws)
    assert full.resumed and full.backup_id is not None
    for bucket in ("aaa", "bbb"):
        assert restored(store, aws, full.backup_id, bucket, f"{bucket}-full") == bucket_state(aws, bucket), (
            bucket
        )


HEADERS = {
    "ContentEncoding": "gzip",
    "CacheControl": "max-age=60",
    "ContentDisposition": 'attachment; filename="a.txt"',
    "ContentLanguage": "de",
}


def test_restore_keeps_the_content_headers(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """Content-Encoding, Cache-Control, Content-Disposition and Content-Language come back with
    a restore (as replication copies them): a gzip-encoded object restored without its
    Content-Encoding is served as garbage. Small and multipart-sized objects both."""
    import gzip

    zone.create_bucket("web")
    small = gzip.compress(b"hello " * 100)
    big = gzip.compress(b"x" * 100) + b"\0" * (6 * 1024 * 1024)
    for key, body in (("small.txt", small), ("big.bin", big)):
        aws.put_object(Bucket="web", Key=key, Body=body, ContentType="text/plain", **HEADERS)
        head = aws.head_object(Bucket="web", Key=key)
        zone.pending.append(zone.record("web", key, "write", size=len(body), etag=head["ETag"].strip('"')))
    zone.commit()
    r = run(store, logs, aws)
    assert r.backup_id is not None
    res = restore(
        store, Source(aws), bucket="web", to_bucket="web-r", backup_id=r.backup_id, part_bytes=5 * 1024 * 1024
    )
    assert not res.failed
    for key in ("small.txt", "big.bin"):
        got = aws.head_object(Bucket="web-r", Key=key)
        assert {h: got.get(h) for h in HEADERS} == HEADERS, key


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["backup", "run", "--bucket", "nosuch"], "no bucket 'nosuch'"),
        (
            ["backup", "restore", "--at", "-1s", "--bucket", "aaa", "--to-bucket", "ab"],
            "is not a bucket name",
        ),
    ],
)
def test_cli_bucket_names_checked_up_front(
    args: list[str], said: str, tmp_path: Path, zone: Zone, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backup run --bucket` of a bucket the source does not have wrote a backup of nothing
    (exit 0) and left every real bucket behind; a two-letter --to-bucket failed at the server
    (exit 1). Both are bad input: one line, exit 2, nothing written."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(_config(tmp_path).read_text() + "[source]\nendpoint = 'https://s3.amazonaws.com'\n")
    monkeypatch.setattr("changelog.consumers.backup.consumer.make_client", lambda **_kw: aws)
    zone.create_bucket("aaa")
    zone.put("aaa", "k", b"a1")
    zone.commit()
    res = CliRunner().invoke(cli, ["-c", str(cfg), *args])
    assert res.exit_code == 2, res.output
    out = res.output.strip().splitlines()
    assert len(out) == 1 and said in out[0], res.output
    assert not list((tmp_path / "dest").rglob("*.json.zst"))


def test_bucket_left_behind_then_deleted_does_not_fail_later_runs(
    store: BackupStore, zone: Zone, aws: Any, logs: DirectoryTarget
) -> None:
    """A bucket a first `--bucket` run left behind (never backed up) and deleted since: the next
    full run must not fail listing it (every later run would fail the same way)."""
    zone.create_bucket("aaa")
    zone.create_bucket("bbb")
    zone.put("aaa", "k", b"a1")
    zone.commit()
    run(store, logs, aws, only=["aaa"])
    aws.delete_bucket(Bucket="bbb")
    zone.put("aaa", "k", b"a2")
    zone.commit()
    full = run(store, logs, aws)
    assert full.backup_id is not None
    m = mf.load(store, full.backup_id)
    assert m.bucket_names() == ["aaa"] and not m.behind
