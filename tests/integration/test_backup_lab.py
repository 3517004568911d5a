"""The backup tool end to end on the real lab, through the whole pipeline: S3 mutations on radosgw
-> the RGW follower (bucket index logs, full sync for existing objects) -> the change index on
RADOS -> the collector's log objects in a radosgw bucket -> ``backup run`` into a backup bucket
on the same radosgw -> restores into new buckets, compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from changelog.config import CollectorConfig, SourceConfig
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.cleanup import cleanup
from changelog.consumers.backup.restore import restore
from changelog.consumers.backup.runner import BackupRunner, RunResult
from changelog.consumers.backup.source import Source, make_client
from changelog.consumers.backup.store import BackupStore, blob_name
from changelog.consumers.backup.verify import verify
from changelog.pipeline.collector import Collector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.reader import last_log, read_watermark
from changelog.pipeline.targets import S3Target
from rgw_module.admin import AdminClient
from rgw_module.follower import Follower
from tests.lab import Lab
from tests.unit.test_backup_support import CountingTarget, assert_stored_once, bucket_state

pytestmark = pytest.mark.ceph

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Pipe:
    lab: Lab
    s3: Any
    index: ChangeIndex
    follower: Follower
    collector: Collector
    logs: S3Target
    dest: CountingTarget
    buckets: list[str]
    tag: str
    snaps: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def store(self) -> BackupStore:
        return BackupStore(self.dest)

    def sync(self) -> None:
        """Everything done so far is in the logs, and the watermark says so (the collector caps
        the watermark with the follower's caught_up_until: it can take a second sweep).
        Listings in whole seconds (Tentacle, as AWS) tell a record's write from a later one in
        the same second only once the watermark covers that second: wait it out, as an operator's
        next scheduled run would."""
        time.sleep(1.0 - time.time() % 1.0 + 0.05)
        for _ in range(20):
            self.follower.run_until_caught_up(timeout=120)
            self.collector.flush()
            wm = read_watermark(self.logs)
            last = last_log(self.logs)
            if wm is not None and (last is None or wm.last_object == last.name):
                return
        raise AssertionError("the watermark does not catch up with the last log object")

    def backup(self, *, snapshot: bool = True, **kw: Any) -> RunResult:
        kw.setdefault("progress", False)
        r = BackupRunner(self.store, self.logs, Source(self.s3), buckets=self.buckets, **kw).run()
        if snapshot:
            assert r.backup_id is not None
            self.ids.append(r.backup_id)
            self.snaps.append({b: bucket_state(self.s3, b) for b in self.buckets})
        return r

    def restored_equals(self, backup_id: str, bucket: str, snap: dict[str, Any]) -> None:
        to = f"rs-{uuid.uuid4().hex[:12]}"
        res = restore(self.store, Source(self.s3), bucket=bucket, to_bucket=to, backup_id=backup_id, progress=False)
        assert not res.failed, res.failed
        got = bucket_state(self.s3, to)
        assert sorted(got) == sorted(snap)
        for key in snap:
            assert got[key][0] == snap[key][0], f"{bucket}/{key} content differs"
            assert got[key][1] == snap[key][1], f"{bucket}/{key} metadata differs"


@pytest.fixture
def pipe(ceph_lab: Lab, s3_client: Any) -> Iterator[Pipe]:
    from changelog.pipeline.backends.rados import RadosStore

    tag = uuid.uuid4().hex[:8]
    ns = f"test-backup-{tag}"
    store = RadosStore(conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=ns, keyring=ceph_lab.keyring or None)
    index = ChangeIndex(store, shards=8)
    admin = AdminClient(ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key)
    plain, vers, listed = f"bk-plain-{tag}", f"bk-vers-{tag}", f"bk-listed-{tag}"
    logs_b, dest_b = f"bk-logs-{tag}", f"bk-store-{tag}"
    for b in (plain, vers, listed, logs_b, dest_b):
        s3_client.create_bucket(Bucket=b)
    for b in (vers, listed):
        s3_client.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    # The follower follows two of the three backed-up buckets: "listed" gets no baseline
    # records, so the first backup lists it.
    # object_info "none": records without ETags, as a write superseded before the follower read
    # it has, so that the probes (what the backup does without an ETag) are what is tested.
    follower = Follower(index, admin, SourceConfig(buckets=(plain, vers), poll_interval=0.2, trim_datalog=False,
                                                   lease_ttl=10.0, object_info="none"))
    assert follower.acquire()
    logs = S3Target(logs_b, "changes/", client=s3_client)
    collector = Collector(index, logs, CollectorConfig(settle=0.0, lease_ttl=10.0),
                          watermark_cap=follower.caught_up_until_us)
    dest = CountingTarget(S3Target(dest_b, "store/", client=s3_client))
    p = Pipe(ceph_lab, s3_client, index, follower, collector, logs, dest, [plain, vers, listed], tag)
    try:
        yield p
    finally:
        collector.close()
        follower.close()
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()
        admin.close()


def test_backup_rounds_on_the_lab(pipe: Pipe) -> None:
    s3 = pipe.s3
    plain, vers, listed = pipe.buckets
    big = os.urandom(12 * MiB)

    # Existing objects before the follower starts: its full sync records them as baseline.
    for i in range(40):
        s3.put_object(Bucket=plain, Key=f"docs/{i:03d}", Body=f"document {i} ".encode() * (i + 1))
    for k in ("dup/a", "dup/b", "dup/c"):
        s3.put_object(Bucket=plain, Key=k, Body=b"identical content")
    s3.put_object(Bucket=plain, Key="meta/typed", Body=b"{}", ContentType="application/json", Metadata={"owner": "ops"})
    s3.put_object(Bucket=plain, Key="big", Body=big)
    for i in range(8):
        s3.put_object(Bucket=vers, Key=f"v/{i}", Body=f"first {i}".encode())
        s3.put_object(Bucket=vers, Key=f"v/{i}", Body=f"second {i}".encode())
    s3.delete_object(Bucket=vers, Key="v/7")
    for i in range(5):
        s3.put_object(Bucket=listed, Key=f"l/{i}", Body=f"listed {i}".encode())
        s3.put_object(Bucket=listed, Key=f"l/{i}", Body=f"listed {i} again".encode())
    s3.put_object(Bucket=listed, Key="l/dup", Body=b"identical content")
    pipe.sync()
    r0 = pipe.backup()
    assert r0.records >= 45 + 8 and r0.listed >= 11 and r0.lagging == 0
    assert r0.deduplicated >= 3  # dup/b, dup/c and l/dup

    def versions(bucket: str, key: str) -> list[str]:
        resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
        rows = [v for v in resp.get("Versions", []) if v["Key"] == key]
        rows.sort(key=lambda v: (not v["IsLatest"], -v["LastModified"].timestamp()))
        return [v["VersionId"] for v in rows]

    # round 1: writes, overwrites, deletes, versions, delete markers, known content under new keys
    s3.put_object(Bucket=plain, Key="docs/000", Body=b"changed")
    s3.delete_object(Bucket=plain, Key="docs/001")
    s3.put_object(Bucket=plain, Key="dup/d", Body=b"identical content")
    s3.put_object(Bucket=plain, Key="new/e", Body=b"identical content")
    s3.put_object(Bucket=plain, Key="docs/002", Body=b"v1")
    s3.put_object(Bucket=plain, Key="docs/002", Body=b"v2")
    s3.put_object(Bucket=vers, Key="v/0", Body=b"third 0")
    s3.delete_object(Bucket=vers, Key="v/1")
    s3.delete_object(Bucket=vers, Key="v/2", VersionId=versions(vers, "v/2")[1])
    s3.delete_object(Bucket=vers, Key="v/3", VersionId=versions(vers, "v/3")[0])
    s3.put_object(Bucket=plain, Key="hot", Body=b"h0")
    pipe.sync()
    r1 = pipe.backup()
    assert r1.records >= 10 and r1.listed == 0 and r1.lagging == 0
    assert r1.uploaded == 5  # changed, v2, third 0, first 3 (back on top), h0; v1 never read
    assert r1.deduplicated == 2

    # round 2: the ETag race on the real pipeline: the log has "h1", the object is "h2" already
    s3.put_object(Bucket=plain, Key="hot", Body=b"h1")
    s3.put_object(Bucket=plain, Key="uni/ключ ✓\tx", Body=b"unicode key")
    s3.put_object(Bucket=vers, Key="v/1", Body=b"back again")
    s3.put_object(Bucket=plain, Key="big", Body=big[::-1])
    pipe.sync()
    s3.put_object(Bucket=plain, Key="hot", Body=b"h2")  # not in the logs yet
    r2 = pipe.backup(snapshot=False)
    m2 = mf.load(pipe.store, r2.backup_id or "")
    assert [(lag["key"], lag["reason"]) for lag in m2.lagging] == [("hot", "changed")]
    assert dict(m2.objects(plain))["hot"].sha256 == sha(b"h0")  # the previous state, never h1's bytes
    assert sha(b"h1") not in {s for s, _ in pipe.store.iter_blobs()}
    pipe.sync()
    r3 = pipe.backup()
    m3 = mf.load(pipe.store, r3.backup_id or "")
    assert not m3.lagging and dict(m3.objects(plain))["hot"].sha256 == sha(b"h2")

    # round 3: more deletes
    s3.delete_object(Bucket=plain, Key="dup/a")
    s3.delete_object(Bucket=vers, Key="v/3", VersionId=versions(vers, "v/3")[0])  # its last version
    for i in range(10, 20):
        s3.delete_object(Bucket=plain, Key=f"docs/{i:03d}")
    pipe.sync()
    pipe.backup()
    assert pipe.backup(snapshot=False).backup_id is None  # nothing new

    store = pipe.store
    for bid, snap in zip(pipe.ids, pipe.snaps, strict=True):
        for bucket in pipe.buckets:
            pipe.restored_equals(bid, bucket, snap[bucket])
    contents = {sha(c) for snap in pipe.snaps for b in snap.values() for c, _m, _t in b.values()}
    assert {s for s, _ in store.iter_blobs()} == contents
    puts = pipe.dest.blob_puts()
    assert set(puts) == {blob_name(s) for s in contents} and set(puts.values()) == {1}
    assert verify(store, progress=False).ok

    # retention: keep two; what they reference survives, the rest goes
    res = cleanup(store, keep_days=0, minimum_backups=1, maximum_backups=2)
    assert res.kept == [b.backup_id for b in mf.list_backups(store)] and len(res.kept) == 2
    assert res.deleted_blobs > 0
    assert verify(store, progress=False).ok
    for bid, snap in zip(pipe.ids, pipe.snaps, strict=True):
        if bid in res.kept:
            pipe.restored_equals(bid, plain, snap[plain])


def test_batched_probe_on_the_lab(pipe: Pipe) -> None:
    """Records without an ETag (object_info "none" here) need a probe for each copied key (its LastModified
    from a listing). Changed keys close together are probed by one range listing (pages of 50
    keys here), in radosgw's key order (UTF-8 bytes: U+E000 before U+1F600, unlike UTF-16): a
    key deleted after its record is missing from it (vanished), one written again is newer
    than its record (changed); both wait for the next run. Requests on the source counted."""
    s3 = pipe.s3
    plain = pipe.buckets[0]
    for i in range(300):
        s3.put_object(Bucket=plain, Key=f"k/{i:03d}", Body=f"first {i}".encode())
    pipe.sync()
    pipe.backup()

    for i in range(0, 300, 10):
        s3.put_object(Bucket=plain, Key=f"k/{i:03d}", Body=f"second {i}".encode())
    new = [f"n/{i:03d}" for i in range(10)] + ["u/ключ ✓", "u/\ue000", "u/\U0001f600"]
    for key in new:
        s3.put_object(Bucket=plain, Key=key, Body=f"new {key}".encode())
    s3.delete_object(Bucket=plain, Key="k/005")
    pipe.sync()
    s3.delete_object(Bucket=plain, Key="k/050")  # not in the logs yet
    s3.put_object(Bucket=plain, Key="k/100", Body=b"third 100")  # not in the logs yet

    lab = pipe.lab
    client = make_client(endpoint=lab.rgw_endpoint, access_key=lab.access_key, secret_key=lab.secret_key, region="default")
    ops: Counter[str] = Counter()
    lock = threading.Lock()

    def count(event_name: str = "", **kw: Any) -> None:
        with lock:
            ops[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.s3", count)
    r1 = BackupRunner(pipe.store, pipe.logs, Source(client, probe_page_keys=50), buckets=pipe.buckets, progress=False).run()
    m1 = mf.load(pipe.store, r1.backup_id or "")
    assert sorted((lag["key"], lag["reason"]) for lag in m1.lagging) == [("k/050", "vanished"), ("k/100", "changed")]
    # 43 keys to probe, 311 keys after "k/00" in the bucket: 7 pages of 50 instead of 43
    # one-key listings; 41 GETs (not k/050 nor k/100).
    assert dict(ops) == {"ListObjectsV2": 7, "GetObject": 41}
    objs = dict(m1.objects(plain))
    assert objs["k/050"].sha256 == sha(b"first 50") and objs["k/100"].sha256 == sha(b"first 100")
    assert objs["k/010"].sha256 == sha(b"second 10") and "k/005" not in objs
    assert all(objs[key].sha256 == sha(f"new {key}".encode()) for key in new)

    pipe.sync()
    r2 = pipe.backup()
    m2 = mf.load(pipe.store, r2.backup_id or "")
    assert not m2.lagging
    objs = dict(m2.objects(plain))
    assert "k/050" not in objs and objs["k/100"].sha256 == sha(b"third 100")
    pipe.restored_equals(pipe.ids[-1], plain, pipe.snaps[-1][plain])


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from changelog.consumers.backup.runner import BackupRunner
    from changelog.consumers.backup.source import Source, make_client
    from changelog.consumers.backup.store import BackupStore
    from changelog.pipeline.targets import S3Target

    endpoint, key, secret, logs_b, dest_b, buckets, count_file, point, after = sys.argv[1:10]
    fd = os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def sent(params, model, context, **kw):
        context["counted"] = params["url_path"]
        os.write(fd, f"sent {params['url_path']}\\n".encode())

    def done(http_response, context, **kw):
        if "counted" in context and http_response.status_code < 300:
            os.write(fd, f"done {context['counted']}\\n".encode())

    def client():
        return make_client(endpoint=endpoint, access_key=key, secret_key=secret, region="default")

    dest = client()
    for op in ("PutObject", "CompleteMultipartUpload"):
        dest.meta.events.register(f"before-call.s3.{op}", sent)
        dest.meta.events.register(f"after-call.s3.{op}", done)
    seen = [0]

    def hook(p):
        if p == point:
            seen[0] += 1
            if seen[0] >= int(after):
                os.kill(os.getpid(), signal.SIGKILL)

    runner = BackupRunner(
        BackupStore(S3Target(dest_b, "store/", client=dest)), S3Target(logs_b, "changes/", client=client()),
        Source(client()), buckets=buckets.split(","), flush_items=10, flush_seconds=1000, workers=4, hook=hook,
        progress=False,
    )
    print(json.dumps(runner.run().to_dict()))
    """
)


def test_sigkill_mid_backup_on_the_lab(pipe: Pipe, tmp_path: Path) -> None:
    """`backup run` SIGKILLed in the middle of copying; the rerun resumes, completes, and no blob
    is stored twice (writes counted on the wire in both processes)."""
    s3 = pipe.s3
    plain, vers, _listed = pipe.buckets
    for i in range(60):
        s3.put_object(Bucket=plain, Key=f"k/{i:03d}", Body=f"content {i % 40}".encode() * 100)
    for i in range(20):
        s3.put_object(Bucket=vers, Key=f"v/{i:02d}", Body=f"version content {i}".encode())
    pipe.sync()
    def child(point: str, after: int) -> subprocess.CompletedProcess[str]:
        counts = tmp_path / f"writes-{point}.txt"
        lab = pipe.lab
        args = [lab.rgw_endpoint, lab.access_key, lab.secret_key, pipe.logs.bucket, pipe.dest.inner.bucket,  # type: ignore[attr-defined]
                f"{plain},{vers}", str(counts), point, str(after)]
        return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=REPO, timeout=300)

    killed = child("blob-stored", 25)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not mf.list_backups(pipe.store)
    rerun = child("never", 0)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads(rerun.stdout)
    assert result["resumed"] and result["copied"] == 80 and result["uploaded"] < 60
    assert_stored_once(tmp_path / "writes-blob-stored.txt", tmp_path / "writes-never.txt", blobs=40 + 20)
    store = pipe.store
    assert verify(store, progress=False).ok
    (only,) = mf.list_backups(store)
    for bucket in (plain, vers):
        pipe.restored_equals(only.backup_id, bucket, bucket_state(s3, bucket))
