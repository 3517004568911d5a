"""`rgw-changelog serve` end to end on the lab: radosgw with log_data=true, the index on RADOS,
the change logs written to a bucket of the same radosgw.

* every S3 mutation kind ends up in the committed logs exactly once, with the right fields, and
  the per-key order of the records yields each bucket's final state;
* SIGTERM stops serve cleanly (exit 0, leases released);
* crash test: a workload of >= 2000 mutations while serve is SIGKILLed at random moments at least
  5 times and restarted; afterwards every mutation is in the logs exactly once;
* the same with a `file://` target on a tmpfs that also faults under load: SIGKILL, the target
  read-only, then full (ENOSPC), SIGKILL again; serve stays up through the faults (healthcheck
  500 while nothing can be written, 200 after) and every mutation is in the logs exactly once.
"""

from __future__ import annotations

import contextlib
import io
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
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from changelog.pipeline.logformat import LogRecord, compression_of, iter_records, parse_log_name
from tests.integration.test_target_faults_lab import health, remount, tmpfs
from tests.lab import Lab

pytestmark = pytest.mark.ceph

REPO = Path(__file__).resolve().parents[2]
LOG_PREFIX = "logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Serve:
    """One `rgw-changelog serve` configuration and its (re)started processes."""

    lab: Lab
    tmp: Path
    ns: str
    log_bucket: str
    buckets: list[str]
    # `[source] exclude_buckets`: a follower of "*" in a lab other tests filled excludes what was
    # there before it (else its first start is a full sync of every bucket: minutes in CI).
    exclude_buckets: list[str] = field(default_factory=list)
    lease_ttl: float = 3.0
    poll_interval: float = 0.2
    interval: float = 0.5
    settle: float = 0.5
    trim_logs: bool = True
    object_info: str = "index"
    sealed_poll_interval: float = 60.0
    # A `file://` target in this directory instead of the log bucket; when it faults, the
    # collector should fail its passes fast (one retry) so that health says so quickly.
    target_root: Path | None = None
    max_backlog_age: float | None = None
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        path = self.tmp / "serve.toml"
        if not path.exists():
            keyring = f'keyring = "{self.lab.keyring}"\n' if self.lab.keyring else ""
            target = f'url = "s3://{self.log_bucket}/{LOG_PREFIX}/"\nregion = "default"'
            collector = ""
            if self.target_root is not None:
                target = f'url = "file://{self.target_root}/"'
                collector = "retries = 1\nbackoff_base = 0.2\nbackoff_max = 2\n"
            health_section = ""
            if self.max_backlog_age is not None:
                health_section = f"[health]\nmax_backlog_age = {self.max_backlog_age}\n"
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
access_key = "{self.lab.access_key}"
secret_key = "{self.lab.secret_key}"
region = "default"
buckets = {json.dumps(self.buckets)}
exclude_buckets = {json.dumps(self.exclude_buckets)}
poll_interval = {self.poll_interval}
trim_logs = {str(self.trim_logs).lower()}
object_info = "{self.object_info}"
sealed_poll_interval = {self.sealed_poll_interval}

[target]
{target}

[collector]
interval = {self.interval}
settle = {self.settle}
lease_ttl = {self.lease_ttl}
roll_seconds = 5
{collector}
{health_section}
[api]
listen = "127.0.0.1:{self.port}"

[logging]
level = "INFO"
"""
            )
        return path

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = open(self.tmp / f"serve-{n}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(self.config), "serve"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.procs.append(proc)
        return proc

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)

    def log_tail(self) -> str:
        logs = sorted(self.tmp.glob("serve-*.log"))
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs[-2:])


def watermark_us(s3: Any, serve: Serve) -> int:
    if serve.target_root is not None:
        from changelog.pipeline.reader import read_watermark
        from changelog.pipeline.targets import DirectoryTarget

        wm = read_watermark(DirectoryTarget(serve.target_root, create=False))
        return 0 if wm is None else wm.complete_until_us
    bucket = serve.log_bucket
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{LOG_PREFIX}/_watermark.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return 0
    return int(json.loads(body)["complete_until_us"])


def wait_for_watermark(s3: Any, serve: Serve, t: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while watermark_us(s3, serve) < int(t * 1_000_000):
        if time.monotonic() > deadline:
            pytest.fail(f"watermark did not pass {t} within {timeout:.0f}s\n{serve.log_tail()}")
        if serve.procs and serve.procs[-1].poll() is not None:
            pytest.fail(f"serve exited with {serve.procs[-1].returncode}\n{serve.log_tail()}")
        time.sleep(0.5)


def committed(s3: Any, bucket: str, *, bucket_ops: bool = False) -> list[LogRecord]:
    """Every committed record in the log bucket, in committed order; bucket_create and
    bucket_delete only with ``bucket_ops`` (these tests count object mutations)."""
    out: list[LogRecord] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{LOG_PREFIX}/"):
        for o in page.get("Contents", []):
            name = o["Key"]
            if parse_log_name(name) is None:
                continue
            body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            out.extend(iter_records(io.BytesIO(body), compression_of(name)))
    return out if bucket_ops else [r for r in out if not r.is_bucket_op]


def committed_in(root: Path, *, bucket_ops: bool = False) -> list[LogRecord]:
    """Every record of every committed log object under a directory target's ``root``, read
    object by object (not through the reader, which would drop a repeated id); bucket ops only
    with ``bucket_ops``."""
    from changelog.pipeline.targets import DirectoryTarget

    target = DirectoryTarget(root, create=False)
    out: list[LogRecord] = []
    for o in target.list():
        if parse_log_name(o.name) is not None:
            out.extend(iter_records(io.BytesIO(target.get(o.name)), compression_of(o.name)))
    return out if bucket_ops else [r for r in out if not r.is_bucket_op]


def view(r: LogRecord) -> tuple[str, str, str, str | None]:
    return (r.bucket, r.key or "", r.op, None if r.version_id in (None, "null") else r.version_id)


def final_state_from(records: list[LogRecord], bucket: str) -> dict[str, list[str]]:
    """key -> live versions in order (the last one current) replayed from the records."""
    state: dict[str, dict[str | None, str]] = {}
    for r in sorted((r for r in records if r.bucket == bucket and r.key is not None), key=lambda r: (r.key or "", r.seq)):
        versions = state.setdefault(r.key or "", {})
        vid = None if r.version_id in (None, "null") else r.version_id
        versions.pop(vid, None)
        if r.op == "write":
            versions[vid] = "obj"
        elif r.op == "delete_marker":
            versions[vid] = "dm"
    return {k: [f"{vid}:{kind}" for vid, kind in v.items()] for k, v in state.items() if v}


def final_state_of(s3: Any, bucket: str) -> dict[str, list[str]]:
    items: list[tuple[str, int, str | None, str, bool]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for kind, xs in (("obj", page.get("Versions", [])), ("dm", page.get("DeleteMarkers", []))):
            for o in xs:
                vid = None if o["VersionId"] in (None, "null") else o["VersionId"]
                items.append((o["Key"], 0 if o["IsLatest"] else 1, vid, kind, o["IsLatest"]))
    state: dict[str, list[str]] = {}
    for key in {i[0] for i in items}:
        mine = [i for i in items if i[0] == key]
        latest = [f"{i[2]}:{i[3]}" for i in mine if i[4]]
        rest = sorted(f"{i[2]}:{i[3]}" for i in mine if not i[4])
        state[key] = rest + latest
    return state


def assert_same_state(records: list[LogRecord], s3: Any, bucket: str) -> None:
    got = final_state_from(records, bucket)
    want = final_state_of(s3, bucket)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
    assert {k: v[-1] for k, v in got.items()} == {k: v[-1] for k, v in want.items()}, "current version differs"


@pytest.fixture
def serve(ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> Iterator[Serve]:
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:10]
    log_bucket = f"sv-logs-{tag}"
    s3_client.create_bucket(Bucket=log_bucket)
    sv = Serve(ceph_lab, tmp_path, f"test-serve-{tag}", log_bucket, [])
    try:
        yield sv
    finally:
        sv.kill()
        store = RadosStore(conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=sv.ns, keyring=ceph_lab.keyring or None)
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()


def leases_released(serve: Serve) -> dict[str, Any]:
    from changelog.pipeline.backends.rados import RadosStore

    store = RadosStore(conffile=serve.lab.conf, pool=serve.lab.pool, namespace=serve.ns, keyring=serve.lab.keyring or None)
    try:
        return {n: store.lock_info("changelog.control", n) for n in ("follower", "collector")}
    finally:
        store.close()


def test_serve_logs_every_mutation_kind_once(serve: Serve, s3_client: Any) -> None:
    s3 = s3_client
    tag = serve.ns[-10:]
    plain, versioned = f"sv-p-{tag}", f"sv-v-{tag}"
    s3.create_bucket(Bucket=plain)
    s3.create_bucket(Bucket=versioned)
    s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    serve.buckets = [plain, versioned]
    # Sizes and etags are looked up (one radosgw request per write): each write must get its own.
    serve.object_info = "head"
    proc = serve.start()
    wait_for_watermark(s3, serve, time.time())
    expected: list[tuple[str, str, str, str | None]] = []
    # (bucket, key, version) -> the size of each write of it, in order
    sizes: dict[tuple[str, str, str | None], list[int]] = defaultdict(list)

    def put(bucket: str, key: str, body: bytes) -> str | None:
        vid: str | None = s3.put_object(Bucket=bucket, Key=key, Body=body).get("VersionId")
        expected.append((bucket, key, "write", vid))
        sizes[(bucket, key, vid)].append(len(body))
        return vid

    # Every write first, then the follower catches up (so each one is looked up before it is
    # overwritten or deleted: a lookup after that gives null, by design), then the rest.
    put(plain, "a", b"hello")
    s3.copy_object(Bucket=plain, Key="b", CopySource={"Bucket": plain, "Key": "a"})
    expected.append((plain, "b", "write", None))
    sizes[(plain, "b", None)].append(len(b"hello"))
    up = s3.create_multipart_upload(Bucket=plain, Key="mp")["UploadId"]
    p1 = s3.upload_part(Bucket=plain, Key="mp", UploadId=up, PartNumber=1, Body=b"x" * 5 * 1024 * 1024)
    p2 = s3.upload_part(Bucket=plain, Key="mp", UploadId=up, PartNumber=2, Body=b"y")
    s3.complete_multipart_upload(
        Bucket=plain, Key="mp", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]},
    )
    expected.append((plain, "mp", "write", None))
    sizes[(plain, "mp", None)].append(5 * 1024 * 1024 + 1)
    put(plain, "m1", b"1")
    put(plain, "m2", b"2")
    for key in ["dir/ünï cødé 日本 x.txt", "with space", "k" * 1024, "_underscore"]:
        put(plain, key, b"u")
    put(plain, "zero", b"")
    v1 = put(versioned, "v", b"one")
    put(versioned, "v", b"two!")
    put(versioned, "z", b"")
    wait_for_watermark(s3, serve, time.time())

    put(plain, "a", b"hello, again")  # overwrite
    s3.delete_object(Bucket=plain, Key="b")
    expected.append((plain, "b", "delete", None))
    s3.delete_object(Bucket=plain, Key="never-there")  # nothing to log
    s3.delete_objects(Bucket=plain, Delete={"Objects": [{"Key": "m1"}, {"Key": "m2"}, {"Key": "m3"}]})
    expected += [(plain, "m1", "delete", None), (plain, "m2", "delete", None)]
    dm = s3.delete_object(Bucket=versioned, Key="v")["VersionId"]
    expected.append((versioned, "v", "delete_marker", dm))
    s3.delete_object(Bucket=versioned, Key="v", VersionId=v1)
    expected.append((versioned, "v", "delete", v1))
    s3.delete_object(Bucket=versioned, Key="v", VersionId=dm)  # delete the delete marker
    expected.append((versioned, "v", "delete", dm))
    done = time.time()

    wait_for_watermark(s3, serve, done)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, serve.log_tail()
    assert leases_released(serve) == {"follower": None, "collector": None}

    records = committed(s3, serve.log_bucket)
    assert len({r.id for r in records}) == len(records), "a record was committed twice"
    assert not any(r.baseline for r in records)
    assert sorted(view(r) for r in records) == sorted(expected)
    # The bucket index log has no size or etag; with [source] object_info = "head" serve looks
    # them up, and every write was looked up before it was overwritten or deleted: each one
    # has its own size, none is left null.
    got_sizes: dict[tuple[str, str, str | None], list[int | None]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.seq):
        if r.op == "write":
            assert r.size is not None and r.etag is not None, r
            bucket, key, _, vid = view(r)
            got_sizes[(bucket, key, vid)].append(r.size)
        else:
            assert r.size is None and r.etag is None, r
    assert got_sizes == sizes
    assert_same_state(records, s3, plain)
    assert_same_state(records, s3, versioned)
    # Both buckets existed when serve first started: each is announced once, as a baseline.
    ops = [(r.op, r.bucket, r.baseline, r.key) for r in committed(s3, serve.log_bucket, bucket_ops=True) if r.is_bucket_op]
    assert sorted(ops) == [("bucket_create", plain, True, None), ("bucket_create", versioned, True, None)]
    log = serve.log_tail()
    assert "SIGTERM received" in log and "follower" in log


# --------------------------------------------------------------------------- crash test


class _Writers:
    """Writer threads, one per ``threads``, each running ``_run(t)``."""

    threads: int

    def _run(self, t: int) -> None:
        raise NotImplementedError

    def start(self) -> list[threading.Thread]:
        ts = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(self.threads)]
        for t in ts:
            t.start()
        return ts


class Workload(_Writers):
    """Sequential mutations on disjoint key sets (one per thread), with the records each one must
    produce, derived from radosgw's own answers."""

    def __init__(self, s3: Any, plain: str, versioned: str, *, threads: int, per_thread: int, seed: int) -> None:
        self.s3 = s3
        self.plain = plain
        self.versioned = versioned
        self.threads = threads
        self.per_thread = per_thread
        self.seed = seed
        self.expected: Counter[tuple[str, str, str, str | None]] = Counter()
        self.mutations = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()  # set: each writer stops after its current mutation
        self._lock = threading.Lock()

    def _expect(self, *rec: Any) -> None:
        with self._lock:
            self.expected[rec] += 1
            self.mutations += 1

    def _run(self, t: int) -> None:
        s3, rnd = self.s3, random.Random(self.seed * 100 + t)
        keys = [f"t{t}/{i:02d}" for i in range(20)]
        live: set[str] = set()
        versions: dict[str, list[str]] = {k: [] for k in keys}
        latest_is_marker: dict[str, bool] = dict.fromkeys(keys, False)
        try:
            for _ in range(self.per_thread):
                if self.stop.is_set():
                    break
                k = rnd.choice(keys)
                x = rnd.random()
                if x < 0.35:
                    s3.put_object(Bucket=self.plain, Key=k, Body=b"p" * rnd.randrange(64))
                    live.add(k)
                    self._expect(self.plain, k, "write", None)
                elif x < 0.45:
                    s3.delete_object(Bucket=self.plain, Key=k)
                    if k in live:
                        live.discard(k)
                        self._expect(self.plain, k, "delete", None)
                elif x < 0.5 and live - {k}:
                    src = rnd.choice(sorted(live - {k}))
                    s3.copy_object(Bucket=self.plain, Key=k, CopySource={"Bucket": self.plain, "Key": src})
                    live.add(k)
                    self._expect(self.plain, k, "write", None)
                elif x < 0.55:
                    batch = rnd.sample(keys, 3)
                    s3.delete_objects(Bucket=self.plain, Delete={"Objects": [{"Key": b} for b in batch]})
                    for b in batch:
                        if b in live:
                            live.discard(b)
                            self._expect(self.plain, b, "delete", None)
                elif x < 0.85:
                    vid = s3.put_object(Bucket=self.versioned, Key=k, Body=b"v")["VersionId"]
                    versions[k].append(vid)
                    latest_is_marker[k] = False
                    self._expect(self.versioned, k, "write", vid)
                elif x < 0.93:
                    resp = s3.delete_object(Bucket=self.versioned, Key=k)
                    if resp.get("VersionId"):  # no new marker when the latest already is one
                        latest_is_marker[k] = True
                        self._expect(self.versioned, k, "delete_marker", resp["VersionId"])
                elif versions[k]:
                    vid = versions[k].pop(rnd.randrange(len(versions[k])))
                    s3.delete_object(Bucket=self.versioned, Key=k, VersionId=vid)
                    self._expect(self.versioned, k, "delete", vid)
        except BaseException as ex:  # noqa: BLE001 - reported by the test
            self.errors.append(ex)


def stop_when_committed(serve: Serve, s3: Any) -> None:
    """Wait until everything done so far is committed (the watermark says so), then SIGTERM
    `serve`, which must exit 0."""
    wait_for_watermark(s3, serve, time.time(), timeout=300)
    proc = serve.procs[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, serve.log_tail()


def start_on_two_buckets(serve: Serve, s3: Any, kind: str) -> tuple[str, str]:
    """A plain and a versioned bucket, followed by a started `serve` that has caught up."""
    tag = serve.ns[-10:]
    plain, versioned = f"sv-{kind}p-{tag}", f"sv-{kind}v-{tag}"
    s3.create_bucket(Bucket=plain)
    s3.create_bucket(Bucket=versioned)
    s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    serve.buckets = [plain, versioned]
    serve.start()
    wait_for_watermark(s3, serve, time.time())
    return plain, versioned


@pytest.mark.slow
def test_serve_crash_test_every_mutation_exactly_once(serve: Serve, s3_client: Any) -> None:
    s3 = s3_client
    plain, versioned = start_on_two_buckets(serve, s3, "c")

    work = Workload(s3, plain, versioned, threads=4, per_thread=600, seed=7)
    threads = work.start()
    rnd = random.Random(11)
    kills = 0
    while any(t.is_alive() for t in threads) or kills < 5:
        time.sleep(rnd.uniform(1.0, 4.0))
        proc = serve.procs[-1]
        assert proc.poll() is None, serve.log_tail()
        proc.kill()  # SIGKILL at a random moment
        proc.wait(30)
        kills += 1
        serve.start()
    for t in threads:
        t.join()
    assert not work.errors, work.errors[:3]
    done = time.time()
    assert work.mutations >= 2000, work.mutations

    wait_for_watermark(s3, serve, done, timeout=300)
    proc = serve.procs[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, serve.log_tail()
    assert kills >= 5

    records = committed(s3, serve.log_bucket)
    print(f"crash test: {work.mutations} mutations, {kills} SIGKILLs, {len(records)} committed records")
    assert_each_once(records, work, s3)


def assert_each_once(records: list[LogRecord], work: Workload, s3: Any) -> None:
    """Every mutation radosgw acknowledged is in ``records`` exactly once, and nothing else
    (no record for a request that failed or was never made); replayed, they give each bucket's
    final state."""
    ids = Counter(r.id for r in records)
    assert not [i for i, n in ids.items() if n > 1], "records committed twice"
    got = Counter(view(r) for r in records)
    missing = work.expected - got
    extra = got - work.expected
    assert not missing and not extra, (list(missing.items())[:5], list(extra.items())[:5])
    assert sum(got.values()) == work.mutations
    assert_same_state(records, s3, work.plain)
    assert_same_state(records, s3, work.versioned)


# ------------------------------------------------- crash test with a faulting directory target

FAULT_FOR = 15.0  # seconds the target stays read-only, then full
MAX_BACKLOG_AGE = 5.0


def health_code(serve: Serve) -> int | None:
    """The healthcheck's status, None while nothing listens (serve (re)starting)."""
    try:
        return health(serve.port)[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_health(serve: Serve, want: int, timeout: float) -> float:
    """Seconds until the healthcheck says ``want``; serve must stay up meanwhile."""
    t0 = time.monotonic()
    while (code := health_code(serve)) != want:
        proc = serve.procs[-1]
        assert proc.poll() is None, f"serve exited with {proc.returncode}\n{serve.log_tail()}"
        waited = time.monotonic() - t0
        assert waited < timeout, f"healthcheck {code}, not {want}, after {waited:.0f}s\n{serve.log_tail()}"
        time.sleep(0.5)
    return time.monotonic() - t0


def hold_unhealthy(serve: Serve, since: float) -> int:
    """Keep a fault until ``FAULT_FOR`` seconds after ``since``: serve must stay up and the
    healthcheck say 500 throughout (once it has said so). Returns how many checks were made."""
    checks = 0
    while time.monotonic() - since < FAULT_FOR:
        assert serve.procs[-1].poll() is None, f"serve exited during the fault\n{serve.log_tail()}"
        code = health_code(serve)
        assert code == 500, f"healthcheck {code} while nothing can be written"
        checks += 1
        time.sleep(1.0)
    return checks


def remount_ro(path: Path) -> None:
    """Remount read-only; the kernel refuses (EBUSY) while a file there is open for writing,
    which the collector does for a moment at each log object: try again."""
    for _ in range(50):
        try:
            remount(path, "ro")
            return
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    remount(path, "ro")


def fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` to the last page (ENOSPC from then on). Unbuffered, so
    that closing the file has nothing left to write (and fail)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
    return filler


def kill_and_restart(serve: Serve) -> None:
    proc = serve.procs[-1]
    assert proc.poll() is None, serve.log_tail()
    proc.kill()
    proc.wait(30)
    serve.start()


@pytest.mark.release_neutral  # the SIGKILL part runs on every release in the test above
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_serve_crash_test_through_target_faults(serve: Serve, s3_client: Any, tmp_path: Path) -> None:
    """Under a steady workload, with a `file://` target on a tmpfs: SIGKILL and restart; the
    target read-only for FAULT_FOR seconds; writable; full (ENOSPC) for FAULT_FOR seconds;
    space freed; SIGKILL and restart; drain. Every acknowledged mutation is in the committed
    logs exactly once."""
    s3 = s3_client
    # serve is killed before the tmpfs goes (ExitStack exits first), whatever happens
    with tmpfs(tmp_path / "mnt", "64m") as mnt, contextlib.ExitStack() as stack:
        stack.callback(serve.kill)
        root = serve.target_root = mnt / "logs"
        root.mkdir()  # serve would make it, but the test reads the watermark there first
        serve.max_backlog_age = MAX_BACKLOG_AGE
        plain, versioned = start_on_two_buckets(serve, s3, "f")
        work = Workload(s3, plain, versioned, threads=3, per_thread=1_000_000, seed=13)
        threads = work.start()
        try:
            time.sleep(4)
            kill_and_restart(serve)
            restarted = wait_health(serve, 200, 60)

            remount_ro(mnt)
            t_ro = time.monotonic()
            ro_500 = wait_health(serve, 500, MAX_BACKLOG_AGE + 10)
            ro_checks = hold_unhealthy(serve, t_ro)
            remount(mnt, "rw")
            ro_200 = wait_health(serve, 200, 60)

            filler = fill(mnt)
            t_full = time.monotonic()
            full_500 = wait_health(serve, 500, MAX_BACKLOG_AGE + 10)
            full_checks = hold_unhealthy(serve, t_full)
            filler.unlink()
            full_200 = wait_health(serve, 200, 60)

            time.sleep(2)
            kill_and_restart(serve)
            time.sleep(3)
        finally:
            work.stop.set()
            for t in threads:
                t.join(60)
        assert not work.errors, work.errors[:3]
        done = time.time()
        wait_for_watermark(s3, serve, done, timeout=120)
        proc = serve.procs[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, serve.log_tail()

        records = committed_in(root)
        print(
            f"\ncrash test through target faults: {work.mutations} mutations, {len(records)} records; "
            f"200 {restarted:.1f}s after the 1st SIGKILL; read-only: 500 after {ro_500:.1f}s, "
            f"{ro_checks} checks, 200 {ro_200:.1f}s after rw; full: 500 after {full_500:.1f}s, "
            f"{full_checks} checks, 200 {full_200:.1f}s after freeing"
        )
        assert work.mutations >= 500, work.mutations
        assert_each_once(records, work, s3)
        assert list((root / ".tmp").iterdir()) == [], "temporary files left behind"


# --------------------------------------------------------------------------- reshards under load


def test_serve_through_reshards_under_load(serve: Serve, s3_client: Any) -> None:
    """Writes and deletes in two buckets while each is resharded 3 times under `serve`.

    Reef and later reshard in place and keep the old log generation: every mutation must be
    committed exactly once, in per-key order. Pacific makes a new bucket instance whose old log
    is gone with the reshard (the documented limit): there the records must still hold no
    duplicate, and the entries lost in the window are counted."""
    s3 = s3_client
    lab = serve.lab
    serve.trim_logs = False  # what radosgw logged stays readable afterwards
    plain, versioned = start_on_two_buckets(serve, s3, "r")

    work = Workload(s3, plain, versioned, threads=3, per_thread=350, seed=23)
    threads = work.start()
    reshards = 0
    for n in (7, 17, 5):
        time.sleep(1.5)
        for b in (plain, versioned):
            lab.radosgw_admin("bucket", "reshard", f"--bucket={b}", f"--num-shards={n}", "--yes-i-really-mean-it")
            reshards += 1
    for t in threads:
        t.join()
    # Pacific's radosgw can fail a write that races a reshard (NoSuchKey on PutObject: seen
    # here); that writer stops, and its unanswered request is left out of the ledger.
    assert not work.errors or not lab.generations, work.errors[:3]
    stop_when_committed(serve, s3)

    records = [r for r in committed(s3, serve.log_bucket) if r.bucket in (plain, versioned)]
    ids = Counter(r.id for r in records)
    assert not [i for i, n in ids.items() if n > 1], "records committed twice"
    incremental = Counter(view(r) for r in records if not r.baseline)
    missing = work.expected - incremental
    print(
        f"reshards under load ({lab.release}): {work.mutations} mutations, {reshards} reshards, "
        f"{len(records)} records, {sum(missing.values())} missing, {len(work.errors)} failed writes"
    )
    if lab.generations:
        gens = [json.loads(lab.radosgw_admin("bucket", "stats", f"--bucket={b}")).get("num_shards") for b in (plain, versioned)]
        assert gens == [5, 5]
        assert not [r for r in records if r.baseline], "an in-place reshard needs no baseline"
        # Exactly what radosgw logged over every generation; an acknowledged mutation missing
        # from the records must be one radosgw never logged (see the queued-reshard test).
        logged = logged_by_radosgw(lab, plain) + logged_by_radosgw(lab, versioned)
        unlogged = work.expected - logged
        print(f"  never logged by radosgw: {sum(unlogged.values())} {sorted(unlogged)[:3]}")
        assert incremental == logged, (list((logged - incremental).items())[:5], list((incremental - logged).items())[:5])
        assert not incremental - work.expected, "a record for a mutation that was not made"
        assert missing == unlogged
        if not unlogged:
            assert_same_state(records, s3, plain)
            assert_same_state(records, s3, versioned)
    else:
        # each reshard starts a baseline generation that says what exists afterwards
        assert {r.bucket for r in records if r.baseline} == {plain, versioned}


class GrowingWorkload(_Writers):
    """Writers that mostly add keys (so radosgw's dynamic resharding fires again and again), and
    overwrite and delete some, until told to stop; the records each answer must produce."""

    def __init__(self, s3: Any, bucket: str, *, threads: int, seed: int) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.threads = threads
        self.seed = seed
        self.stop = threading.Event()
        self.expected: Counter[tuple[str, str, str, str | None]] = Counter()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def _run(self, t: int) -> None:
        rnd = random.Random(self.seed * 100 + t)
        live: list[str] = []
        n = 0
        try:
            while not self.stop.is_set():
                x = rnd.random()
                if x < 0.7 or not live:
                    key = f"t{t}/{n:06d}"
                    n += 1
                    self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"g")
                    live.append(key)
                    rec = (self.bucket, key, "write", None)
                elif x < 0.85:
                    key = rnd.choice(live)
                    self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"again")
                    rec = (self.bucket, key, "write", None)
                else:
                    key = live.pop(rnd.randrange(len(live)))
                    self.s3.delete_object(Bucket=self.bucket, Key=key)
                    rec = (self.bucket, key, "delete", None)
                with self._lock:
                    self.expected[rec] += 1
        except BaseException as ex:  # noqa: BLE001 - reported by the test
            self.errors.append(ex)


def logged_by_radosgw(
    lab: Lab, bucket: str, where: dict[str, list[str]] | None = None
) -> Counter[tuple[str, str, str, str | None]]:
    """The mutations radosgw's own bucket index logs hold for ``bucket``, every generation;
    ``where`` gets, per key, where each of its entries was (generation, shard, op id, op, time)."""
    from rgw_module.admin import AdminClient
    from rgw_module.mapping import BucketShard, bilog_marker, map_entry

    admin = AdminClient(lab.rgw_endpoint, lab.access_key, lab.secret_key)
    try:
        st = admin.bucket_stats(bucket)
        info = admin.bilog_info(bucket, st.bucket_id)
        out: Counter[tuple[str, str, str, str | None]] = Counter()
        for gen, n in info.generations.items():
            for shard in range(n) if n > 0 else [-1]:
                bs = BucketShard(bucket, st.bucket_id, shard, gen)
                marker = ""
                while page := admin.bilog_list(bs, marker):
                    for e in page:
                        m = map_entry(e, bs, generation=1, observed_ns=0)
                        if m is not None:
                            vid = None if m.version_id in (None, "null") else m.version_id
                            out[(bucket, m.key, m.op.value, vid)] += 1
                            if where is not None:
                                where.setdefault(m.key, []).append(
                                    f"gen {gen} shard {shard} {e.get('op_id')} {e.get('op')} {e.get('timestamp')}"
                                )
                    marker = bilog_marker(str(page[-1]["op_id"]))
        return out
    finally:
        admin.close()


def test_serve_through_queued_reshards(serve: Serve, s3_client: Any) -> None:
    """Reshards done by radosgw's own reshard thread (the dynamic-resharding path, at its
    default), queued with `radosgw-admin reshard add` under `serve`: one bucket goes through 3
    reshards (11 -> 13 -> 17 -> 23 shards) while keys are written, overwritten and deleted.

    `serve` leaves the logs untrimmed here (`trim_logs = false`), so what radosgw logged can be
    read afterwards: the committed records must be exactly the mutations radosgw's bucket index
    logs hold, over all generations, and every acknowledged mutation not among them must be
    one radosgw never logged. Tentacle 20.2.4 sometimes logs no entry at all for a write that
    completes while its own reshard thread reshards the bucket (the next `del` of the key
    carries that write's mtime: the version existed); that is counted, not blamed on us."""
    s3 = s3_client
    lab = serve.lab
    bucket = f"sv-dyn-{serve.ns[-10:]}"
    s3.create_bucket(Bucket=bucket)
    serve.buckets = [bucket]
    serve.trim_logs = False
    serve.sealed_poll_interval = 2.0  # finished generations read again soon (default 60 s)
    serve.start()
    wait_for_watermark(s3, serve, time.time())

    def shards() -> tuple[str, int]:
        st = json.loads(lab.radosgw_admin("bucket", "stats", f"--bucket={bucket}"))
        return str(st["id"]), int(st["num_shards"])

    # radosgw's reshard thread (every 10 s in the lab) processes queued reshards inside radosgw
    # while it serves the writes: the dynamic path, with the target counts chosen by the test
    # (radosgw's own choice jumps to large counts, or not at all, at these object counts).
    work = GrowingWorkload(s3, bucket, threads=3, seed=31)
    threads = work.start()
    seen = [shards()]
    try:
        for target in (13, 17, 23):
            time.sleep(2.0)
            lab.radosgw_admin("reshard", "add", f"--bucket={bucket}", f"--num-shards={target}", "--yes-i-really-mean-it")
            # A bound on radosgw's own reshard thread, not a figure: under CI's load on 2 cores a
            # queued reshard was seen to wait more than 90 s (the test's precondition, not ours).
            # Pacific may refuse a PUT racing its reshard (NoSuchKey, seen in CI: that writer
            # thread stops); the reshards still come. On Reef and later an error is the test's end.
            deadline = time.monotonic() + 240
            while seen[-1][1] != target and time.monotonic() < deadline and not (work.errors and lab.generations):
                time.sleep(0.5)
                now = shards()
                if now != seen[-1]:
                    seen.append(now)
    finally:
        work.stop.set()
        for t in threads:
            t.join()
    reshards = len(seen) - 1
    assert reshards >= 3, f"only {reshards} reshards: {seen}"
    assert not work.errors or not lab.generations, work.errors[:3]
    time.sleep(3 * serve.sealed_poll_interval)  # a poll of each sealed generation after the last write
    stop_when_committed(serve, s3)
    late = sum(
        p.read_text(errors="replace").count("appeared in finished log generation") for p in serve.tmp.glob("serve-*.log")
    )

    records = [r for r in committed(s3, serve.log_bucket) if r.bucket == bucket]
    ids = Counter(r.id for r in records)
    assert not [i for i, n in ids.items() if n > 1], "records committed twice"
    incremental = Counter(view(r) for r in records if not r.baseline)
    missing = work.expected - incremental
    mutations = sum(work.expected.values())
    if not lab.generations:
        # Pacific: a new instance per reshard, the old one's log gone; a baseline follows each.
        print(f"queued reshards (pacific): {mutations} mutations, {sum(missing.values())} missing")
        assert {r.bucket for r in records if r.baseline} == {bucket}
        return
    where: dict[str, list[str]] = {}
    logged = logged_by_radosgw(lab, bucket, where)
    unlogged = work.expected - logged
    print(
        f"queued reshards ({lab.release}): {mutations} mutations, shards {[n for _, n in seen]}, "
        f"{len(records)} records, {sum(logged.values())} logged by radosgw, "
        f"{sum(unlogged.values())} acknowledged but never logged by radosgw: {sorted(unlogged)[:3]}; "
        f"{late} pages of late entries in finished generations"
    )
    assert len({i for i, _ in seen}) == 1, "a reshard in place keeps the instance id"
    assert not [r for r in records if r.baseline]
    if incremental != logged:
        # What radosgw logged for the keys that differ, and what was committed for them (seen
        # once in CI on Tentacle, 2026-12-07: a write of a key logged twice, committed once).
        keys = sorted({k[1] for k in (logged - incremental) + (incremental - logged)})[:5]
        ours = {k: [f"{r.seq} {r.op} {r.time} {r.id}" for r in records if r.key == k] for k in keys}
        theirs = {k: where.get(k, []) for k in keys}
        raise AssertionError(
            f"committed records differ from radosgw's logs: logged, not committed "
            f"{list((logged - incremental).items())[:5]}; committed, not logged "
            f"{list((incremental - logged).items())[:5]}; radosgw's entries {theirs}; ours {ours}"
        )
    assert not incremental - work.expected, "a record for a mutation that was not made"
    assert missing == unlogged
