"""`rgw-changelog serve` on the lab with a directory target on a tmpfs that faults under load:
remounted read-only for a minute, then filled up (ENOSPC). Through both, serve stays up, the
follower keeps recording, `/_/healthcheck` says 500 (naming the collector and why) while
nothing can be written and 200 once it can, and every mutation written through the lab's
radosgw is in the committed logs exactly once. Needs root (mount)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab

# The target's faults, not radosgw's: CI runs these on pacific only (release_neutral).
pytestmark = [pytest.mark.ceph, pytest.mark.release_neutral, pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]

REPO = Path(__file__).resolve().parents[2]
MAX_BACKLOG_AGE = 5.0
READ_ONLY_FOR = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def health(port: int) -> tuple[int, dict[str, Any]]:
    """The healthcheck's status and body; (0, {}) while serve's API is not listening yet (a
    start under load can take longer than the test's first look)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/healthcheck", timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/status", timeout=30) as resp:
        return dict(json.loads(resp.read()))


class Writer:
    """PUTs new keys into one bucket through the lab's radosgw until stopped; remembers each key
    radosgw acknowledged."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"k{n:06d}"
            with contextlib.suppress(Exception):
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"x" * 100)
                self.acked.append(key)
            n += 1
            time.sleep(0.02)


def committed_keys(root: Path, bucket: str) -> tuple[set[str], Counter[str]]:
    """The keys with any record in the committed logs, and how many write records each has.
    Full-sync (``baseline``) records are not mutations: when serve's first start is slower than
    the writer, the bucket gets a full sync, and an object written after its log markers were
    taken has both a baseline record and its write record (README, ``baseline``)."""
    from changelog.pipeline.reader import read_records
    from changelog.pipeline.targets import DirectoryTarget

    records = [r for r in read_records(DirectoryTarget(root, create=False)) if r.bucket == bucket and r.key]
    return {r.key for r in records if r.key}, Counter(r.key for r in records if r.key and not r.baseline)


def wait_health(port: int, want: int, proc: subprocess.Popen[bytes], timeout: float) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        code, doc = health(port)
        if code == want:
            return time.monotonic() - t0, doc
        assert time.monotonic() - t0 < timeout, f"healthcheck not {want} within {timeout:.0f}s: {code} {doc}"
        time.sleep(0.5)


def test_serve_survives_a_read_only_then_full_target(ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> None:
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:10]
    bucket, ns, port = f"tf-{tag}", f"test-tfaults-{tag}", free_port()
    s3_client.create_bucket(Bucket=bucket)
    keyring = f'keyring = "{ceph_lab.keyring}"\n' if ceph_lab.keyring else ""
    with tmpfs(tmp_path / "mnt", "64m") as mnt:
        root = mnt / "logs"
        config = tmp_path / "serve.toml"
        config.write_text(f"""
[index]
backend = "rados"
ceph_conf = "{ceph_lab.conf}"
{keyring}pool = "{ceph_lab.pool}"
namespace = "{ns}"
shards = 4

[source]
endpoint = "{ceph_lab.rgw_endpoint}"
access_key = "{ceph_lab.access_key}"
secret_key = "{ceph_lab.secret_key}"
region = "default"
buckets = ["{bucket}"]
poll_interval = 0.2

[target]
url = "file://{root}/"

[collector]
interval = 0.5
settle = 0.5
lease_ttl = 5
retries = 1
backoff_base = 0.2
backoff_max = 2

[health]
max_backlog_age = {MAX_BACKLOG_AGE}

[api]
listen = "127.0.0.1:{port}"
""")
        log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(config), "serve"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        writer = Writer(s3_client, bucket)
        try:
            time.sleep(2)
            writer.thread.start()
            wait_health(port, 200, proc, 60)

            # -- read-only for a minute under load
            remount(mnt, "ro")
            t_ro = time.monotonic()
            took, doc = wait_health(port, 500, proc, MAX_BACKLOG_AGE + 10)
            assert doc["components"]["collector"]["ok"] is False
            detail = doc["components"]["collector"]["detail"]
            assert "Read-only file system" in detail or "index entry waits" in detail, detail
            seen_during = []
            while time.monotonic() - t_ro < READ_ONLY_FOR:
                code, _ = health(port)
                seen_during.append(code)
                assert proc.poll() is None, "serve exited while the target was read-only"
                time.sleep(2)
            assert set(seen_during) == {500}
            reasons = status(port)["health"]
            assert reasons["ok"] is False and {r["check"] for r in reasons["reasons"]} >= {"backlog_age", "failed_passes"}
            remount(mnt, "rw")
            wait_health(port, 200, proc, 60)
            print(f"\n[read-only {READ_ONLY_FOR:.0f}s: 500 after {took:.1f}s; {len(writer.acked)} keys so far]")

            # -- full: fill the tmpfs; health must turn 500 within max_backlog_age
            filler = mnt / "filler"
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
            t_full = time.monotonic()
            took_full, doc = wait_health(port, 500, proc, MAX_BACKLOG_AGE + 10)
            assert took_full <= MAX_BACKLOG_AGE + 3, f"500 only after {took_full:.1f}s"
            time.sleep(5)
            assert proc.poll() is None
            filler.unlink()
            wait_health(port, 200, proc, 60)
            print(f"[ENOSPC: 500 after {took_full:.1f}s, full for {time.monotonic() - t_full:.0f}s]")

            writer.stop.set()
            writer.thread.join(30)
            deadline = time.monotonic() + 60
            while True:
                present, writes = committed_keys(root, bucket)
                if present >= set(writer.acked) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert set(writer.acked) <= present, f"missing: {sorted(set(writer.acked) - present)[:10]}"
            assert max(writes.values()) == 1, f"twice: {[k for k, n in writes.items() if n > 1][:10]}"
            assert list((root / ".tmp").iterdir()) == []
            print(f"[{len(writer.acked)} mutations, each once in the logs]")
        finally:
            writer.stop.set()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
            print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
            store = RadosStore(conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=ns,
                               keyring=ceph_lab.keyring or None)  # fmt: skip
            for oid in store.list_objects():
                store.remove_object(oid)
            store.close()
