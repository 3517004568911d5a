"""Usage metrics (issue 18) end to end: `rgw-changelog serve` with `[usage] enabled` follows the
lab's radosgw, and its usage totals are compared with `radosgw-admin bucket stats`.

* a versioned bucket created and filled before serve first starts (its baseline seeds the
  totals), then a mixed workload on it, a plain bucket, a versioned bucket and a tenant's bucket
  (overwrites, multipart uploads, copies, delete markers, version deletes, deletes) while serve is
  SIGKILLed >= 5 times; at quiescence every bucket's usage totals equal bucket stats' rgw.main
  (num_objects, size), and the writes and deletes counted over all intervals equal the operations
  made (nothing double-counted);
* the same logs replayed into an empty usage state (`usage run --once --consumer usage-replay`)
  give exactly the same interval series at every resolution.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from changelog.pipeline.s3client import make_s3_client
from tests.lab import S3_REGION, S3_TIMEOUT, Lab

pytestmark = pytest.mark.ceph

REPO = Path(__file__).resolve().parents[2]
LOG_PREFIX = "logs"
MIB = 1024 * 1024
TENANT = "ut1"
TENANT_USER = ("uu1", "UT1KEY", "UT1SECRET")
# The follower's user: admin caps and system (a full sync lists other users' buckets over S3).
FOLLOWER_USER = ("usage-follower", "UFOLLOWKEY", "UFOLLOWSECRET")
FOLLOWER_CAPS = "buckets=read;metadata=read;datalog=*;bilog=*"
KILLS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user(lab: Lab, *args: str) -> None:
    try:
        lab.radosgw_admin("user", "create", *args)
    except RuntimeError as ex:
        if "exists" not in str(ex).lower():
            raise


@pytest.fixture(scope="module")
def users(ceph_lab: Lab) -> Lab:
    uid, key, secret = TENANT_USER
    _ensure_user(ceph_lab, "--tenant", TENANT, "--uid", uid, "--display-name", uid, "--access-key", key,
                 "--secret-key", secret)  # fmt: skip
    fid, fkey, fsecret = FOLLOWER_USER
    _ensure_user(ceph_lab, "--uid", fid, "--display-name", fid, "--access-key", fkey, "--secret-key", fsecret,
                 "--system")  # fmt: skip
    ceph_lab.radosgw_admin("caps", "add", "--uid", fid, f"--caps={FOLLOWER_CAPS}")
    return ceph_lab


@dataclass
class Serving:
    """`rgw-changelog serve` with `[usage] enabled`, (re)started and killed by the test."""

    lab: Lab
    tmp: Path
    ns: str
    log_bucket: str
    buckets: list[str]
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def config(self) -> Path:
        keyring = f'keyring = "{self.lab.keyring}"\n' if self.lab.keyring else ""
        path = self.tmp / "serve.toml"
        path.write_text(
            f"""
[index]
backend = "rados"
ceph_conf = "{self.lab.conf}"
{keyring}pool = "{self.lab.pool}"
namespace = "{self.ns}"
shards = 8

[source]
endpoint = "{self.lab.rgw_endpoint}"
access_key = "{FOLLOWER_USER[1]}"
secret_key = "{FOLLOWER_USER[2]}"
region = "default"
buckets = {json.dumps(self.buckets)}
poll_interval = 0.2

[target]
url = "s3://{self.log_bucket}/{LOG_PREFIX}/"
access_key = "{self.lab.access_key}"
secret_key = "{self.lab.secret_key}"
region = "default"

[collector]
interval = 0.5
settle = 0.5
lease_ttl = 3.0
roll_seconds = 2

[usage]
enabled = true
interval = 60
shards = 8
poll_interval = 0.2
lease_ttl = 3.0
metrics_top = 10

[api]
listen = "127.0.0.1:{self.port}"

[logging]
level = "INFO"
"""
        )
        return path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(self.config()), *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def start(self) -> None:
        config = self.config()
        log = open(self.tmp / f"serve-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(config), "serve"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.get("/_/controls")
                return
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}\n{self.log_tail()}")
            time.sleep(0.2)
        pytest.fail(f"serve API did not come up\n{self.log_tail()}")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(60)

    def log_tail(self) -> str:
        logs = sorted(self.tmp.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:] for p in logs[-2:])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            body = resp.read()
            return json.loads(body) if path != "/_/metrics" else body.decode()


@pytest.fixture
def serving(users: Lab, s3_client: Any, tmp_path: Path) -> Iterator[Any]:
    from changelog.pipeline.backends.rados import RadosStore

    made: list[Serving] = []

    def make(buckets: list[str]) -> Serving:
        tag = uuid.uuid4().hex[:10]
        log_bucket = f"us-logs-{tag}"
        s3_client.create_bucket(Bucket=log_bucket)
        s = Serving(users, tmp_path, f"test-usage-{tag}", log_bucket, buckets)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.kill()
            store = RadosStore(conffile=users.conf, pool=users.pool, namespace=s.ns, keyring=users.keyring or None)
            for oid in store.list_objects():
                store.remove_object(oid)
            store.close()


# --------------------------------------------------------------------------- the workload


class Workload:
    """Mixed mutations on plain and versioned buckets, each delete aimed at something that exists
    (so every operation is one record), counting writes, deletes and markers per bucket."""

    def __init__(self, clients: dict[str, Any], versioned: set[str], *, total: int, seed: int) -> None:
        self.clients = clients  # bucket (tenant/bucket for a tenant's) -> S3 client of its owner
        self.versioned = versioned
        self.total = total
        self.rnd = random.Random(seed)
        # (bucket, key) -> its versions and markers, oldest first (a marker is None; an unversioned
        # bucket keeps one entry): the key is live when the newest is an object version.
        self.stack: dict[tuple[str, str], list[str | None]] = {}
        self.ops: Counter[tuple[str, str]] = Counter()  # (bucket, op) -> count
        self.errors: list[str] = []
        self.done = threading.Event()

    def _s3(self, bucket: str) -> tuple[Any, str]:
        return self.clients[bucket], bucket.split("/", 1)[-1]

    def put(self, bucket: str, key: str, body: bytes) -> None:
        s3, name = self._s3(bucket)
        r = s3.put_object(Bucket=name, Key=key, Body=body)
        self._wrote(bucket, key, r.get("VersionId"))

    def _wrote(self, bucket: str, key: str, vid: str | None) -> None:
        if bucket in self.versioned:
            self.stack.setdefault((bucket, key), []).append(vid or "null")
        else:
            self.stack[(bucket, key)] = ["null"]
        self.ops[(bucket, "write")] += 1

    def live(self, bucket: str) -> list[str]:
        return sorted(k for (b, k), st in self.stack.items() if b == bucket and st and st[-1] is not None)

    def deleted(self, bucket: str, key: str) -> None:
        """A DELETE without a version: a marker on top in a versioned bucket, else gone."""
        if bucket in self.versioned:
            self.stack.setdefault((bucket, key), []).append(None)
        else:
            self.stack.pop((bucket, key), None)

    def multipart(self, bucket: str, key: str) -> None:
        s3, name = self._s3(bucket)
        up = s3.create_multipart_upload(Bucket=name, Key=key)
        parts = []
        for i, size in enumerate((5 * MIB, 1000), 1):
            r = s3.upload_part(Bucket=name, Key=key, UploadId=up["UploadId"], PartNumber=i, Body=os.urandom(size))
            parts.append({"PartNumber": i, "ETag": r["ETag"]})
        r = s3.complete_multipart_upload(Bucket=name, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
        self._wrote(bucket, key, r.get("VersionId"))

    def one(self, n: int) -> None:
        rnd = self.rnd
        bucket = rnd.choice(sorted(self.clients))
        s3, name = self._s3(bucket)
        key = f"k/{rnd.randrange(40):02d}"
        live = self.live(bucket)
        r = rnd.random()
        if r < 0.45 or not live:
            self.put(bucket, key, os.urandom(rnd.choice([0, 1, 100, 5000, 70_000])))
        elif r < 0.55 and [k for k in live if k != key]:
            src = rnd.choice([k for k in live if k != key])  # a copy onto itself is refused
            source = bucket.replace("/", ":")  # a tenant's bucket is tenant:bucket in a copy source
            s3.copy_object(Bucket=name, Key=key, CopySource={"Bucket": source, "Key": src})
            # radosgw's CopyObject answers no x-amz-version-id (16.2 to 20.2): the new current one.
            vid = s3.head_object(Bucket=name, Key=key).get("VersionId") if bucket in self.versioned else None
            self._wrote(bucket, key, vid)
        elif r < 0.8:
            victim = rnd.choice(live)
            s3.delete_object(Bucket=name, Key=victim)  # a delete marker in a versioned bucket
            self.deleted(bucket, victim)
            self.ops[(bucket, "delete_marker" if bucket in self.versioned else "delete")] += 1
        elif bucket in self.versioned and [v for v in self.stack.get((bucket, key), []) if v is not None]:
            st = self.stack[(bucket, key)]
            vid = rnd.choice([v for v in st if v is not None])
            st.remove(vid)  # the newest left (object or marker) becomes current
            s3.delete_object(Bucket=name, Key=key, VersionId=vid)
            self.ops[(bucket, "delete")] += 1
        else:
            self.put(bucket, key, os.urandom(rnd.randrange(1, 3000)))

    def run(self, seconds: float) -> None:
        t0 = time.monotonic()
        try:
            for n in range(self.total):
                if n % (self.total // 3) == 10:
                    self.multipart(sorted(self.clients)[n % len(self.clients)], f"big/{n}.bin")
                try:
                    self.one(n)
                except Exception as ex:  # noqa: BLE001 - counted; the test fails on any
                    self.errors.append(f"op {n}: {type(ex).__name__}: {ex}")
                ahead = t0 + seconds * (n + 1) / self.total - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            self.done.set()


def bucket_stats(lab: Lab, bucket: str) -> tuple[int, int]:
    doc = json.loads(lab.radosgw_admin("bucket", "stats", "--bucket", bucket))
    main = doc.get("usage", {}).get("rgw.main", {})
    return int(main.get("num_objects", 0)), int(main.get("size", 0))


def watermark(s3: Any, log_bucket: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(s3.get_object(Bucket=log_bucket, Key=f"{LOG_PREFIX}/_watermark.json")["Body"].read())
        return doc
    except s3.exceptions.NoSuchKey:
        return {"complete_until_us": 0, "last_object": None}


def wait_usage_caught_up(srv: Serving, s3: Any, t: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wm = watermark(s3, srv.log_bucket)
        if wm["complete_until_us"] >= int(t * 1_000_000) and wm["last_object"]:
            consumers = srv.get("/_/status").get("consumers") or {}
            if (consumers.get("usage") or {}).get("after") == wm["last_object"]:
                return
        if srv.procs[-1].poll() is not None:
            pytest.fail(f"serve exited with {srv.procs[-1].returncode}\n{srv.log_tail()}")
        time.sleep(0.5)
    pytest.fail(f"usage did not catch up within {timeout:.0f}s\n{srv.log_tail()}")


def series_of(srv: Serving, consumer: str, interval: str) -> Any:
    res = srv.cli("usage", "show", "--json", "--since", "0", "--interval", interval, "--consumer", consumer)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# --------------------------------------------------------------------------- the test


def suspended_and_recreated(s3: Any, susp: str, again: str) -> None:
    """Two buckets the mixed workload does not cover: versioning suspended over versions and a
    null version (a null write replaces the null version, a null delete marker removes it), and a
    bucket deleted and created again (only its second life counts)."""
    s3.create_bucket(Bucket=susp)
    s3.put_bucket_versioning(Bucket=susp, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=susp, Key="a", Body=b"1" * 100)
    s3.put_object(Bucket=susp, Key="a", Body=b"2" * 200)
    s3.put_bucket_versioning(Bucket=susp, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=susp, Key="a", Body=b"3" * 300)  # the null version
    s3.put_object(Bucket=susp, Key="a", Body=b"4" * 400)  # replaces it
    s3.put_object(Bucket=susp, Key="b", Body=b"5" * 500)
    s3.delete_object(Bucket=susp, Key="b")  # a null marker: b's null version goes
    s3.put_object(Bucket=susp, Key="c", Body=b"6" * 600)
    s3.create_bucket(Bucket=again)
    for i in range(3):
        s3.put_object(Bucket=again, Key=f"k{i}", Body=b"x" * (10 + i))
    for i in range(3):
        s3.delete_object(Bucket=again, Key=f"k{i}")
    s3.delete_bucket(Bucket=again)
    s3.create_bucket(Bucket=again)
    s3.put_object(Bucket=again, Key="k0", Body=b"y" * 70)
    s3.put_object(Bucket=again, Key="n", Body=b"z" * 80)


def test_usage_equals_bucket_stats_through_crashes_and_replays_the_same(
    users: Lab, s3_client: Any, serving: Any
) -> None:
    lab = users
    tag = uuid.uuid4().hex[:8]
    pre, plain, vers, tenant_bucket = f"us-pre-{tag}", f"us-plain-{tag}", f"us-vers-{tag}", f"us-ten-{tag}"
    tenant_s3 = make_s3_client(
        lab.rgw_endpoint, access_key=TENANT_USER[1], secret_key=TENANT_USER[2], region=S3_REGION, max_attempts=3,
        connect_timeout=S3_TIMEOUT, read_timeout=S3_TIMEOUT,
    )  # fmt: skip
    qualified_tenant = f"{TENANT}/{tenant_bucket}"
    clients = {pre: s3_client, plain: s3_client, vers: s3_client, qualified_tenant: tenant_s3}
    work = Workload(clients, {pre, vers}, total=500, seed=int(tag, 16))
    # Before serve first starts: a versioned bucket with versions, a marker, a multipart object.
    s3_client.create_bucket(Bucket=pre)
    s3_client.put_bucket_versioning(Bucket=pre, VersioningConfiguration={"Status": "Enabled"})
    for i in range(20):
        work.put(pre, f"k/{i % 12:02d}", os.urandom(100 * i))
    s3_client.delete_object(Bucket=pre, Key="k/00")
    work.deleted(pre, "k/00")
    work.multipart(pre, "big/pre.bin")
    work.ops.clear()  # the baseline: not counted as operations in the series

    susp, again = f"us-susp-{tag}", f"us-again-{tag}"
    srv = serving([pre, plain, vers, qualified_tenant, susp, again])
    srv.start()
    # The other buckets are created clearly after the follower's first start (followed from
    # their first entry: every operation on them is an incremental record).
    deadline = time.monotonic() + 60
    while not ((srv.get("/_/status").get("follower") or {}).get("live") or {}).get("caught_up_until"):
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.3)
    time.sleep(1.5)
    s3_client.create_bucket(Bucket=plain)
    s3_client.create_bucket(Bucket=vers)
    s3_client.put_bucket_versioning(Bucket=vers, VersioningConfiguration={"Status": "Enabled"})
    tenant_s3.create_bucket(Bucket=tenant_bucket)
    suspended_and_recreated(s3_client, susp, again)

    runner = threading.Thread(target=work.run, args=(40.0,), daemon=True)
    runner.start()
    kills = 0
    rnd = random.Random(tag)
    while not work.done.is_set() or kills < KILLS:
        time.sleep(rnd.uniform(4.0, 9.0))
        srv.kill()
        kills += 1
        srv.start()
    runner.join(120)
    assert not work.errors, work.errors[:5]
    t_end = time.time()

    wait_usage_caught_up(srv, s3_client, t_end + 1.0)
    got = {(b["tenant"], b["bucket"]): (b["objects"], b["bytes"]) for b in srv.get("/_/usage")["buckets"]}
    for bucket in clients:
        tenant, name = bucket.split("/", 1) if "/" in bucket else ("", bucket)
        assert got.get((tenant, name), (0, 0)) == bucket_stats(lab, bucket), f"{bucket}: usage != bucket stats"
    for bucket in (susp, again):
        assert got.get(("", bucket), (0, 0)) == bucket_stats(lab, bucket), f"{bucket}: usage != bucket stats"
    # Every operation counted once over the intervals (the baseline in none).
    series = {(b["tenant"], b["bucket"]): b["series"] for b in series_of(srv, "usage", "60")}
    for bucket in clients:
        tenant, name = bucket.split("/", 1) if "/" in bucket else ("", bucket)
        for op, key in (("write", "writes"), ("delete", "deletes"), ("delete_marker", "delete_markers")):
            counted = sum(i[key] for i in series[(tenant, name)])
            assert counted == work.ops[(bucket, op)], f"{bucket}: {key} counted {counted}, made {work.ops[(bucket, op)]}"
    metrics = srv.get("/_/metrics")
    assert f'rgw_changelog_usage_bucket_bytes{{bucket="{pre}",tenant=""}}' in metrics
    srv.stop()
    assert kills >= KILLS

    # History: the same logs into an empty usage state give the same series.
    res = srv.cli("usage", "run", "--once", "--consumer", "usage-replay", timeout=180)
    assert res.returncode == 0, res.stderr
    for interval in ("60", "1h", "1d"):
        assert series_of(srv, "usage-replay", interval) == series_of(srv, "usage", interval), interval
