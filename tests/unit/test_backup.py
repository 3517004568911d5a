"""The backup tool end to end on moto: the source buckets in moto, the change logs written by hand
(docs/design.md §7) into a directory target, the backup destination a directory and a moto bucket.

Every restore is compared byte for byte (and metadata) with the source state read at the time of
the backup; blob writes are counted to show that each content is stored once, across rounds, keys
and a crash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from changelog.cli.backup import backup_group
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.cleanup import cleanup, live_runs, select_expired
from changelog.consumers.backup.lock import DestinationLock, read_lock, wait_for_unlocked
from changelog.consumers.backup.model import State
from changelog.consumers.backup.probes import plan as plan_probes
from changelog.consumers.backup.restore import restore
from changelog.consumers.backup.runner import BackupRunner
from changelog.consumers.backup.source import Source, make_client
from changelog.consumers.backup.store import BackupStore, blob_name
from changelog.consumers.backup.verify import verify
from changelog.errors import LeaseLost, LockBusy, TransientError
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.targets import DirectoryTarget, S3Target, make_target
from tests.unit.test_backup_support import CountingTarget, Zone, assert_stored_once, bucket_state, rfc3339

MiB = 1024 * 1024
DAY_US = 86_400 * 1_000_000
REPO = Path(__file__).resolve().parents[2]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def noop(_: float) -> None:
    pass


@pytest.fixture(params=["file", "s3"])
def dest(request: pytest.FixtureRequest, aws: Any, tmp_path: Path) -> CountingTarget:
    if request.param == "file":
        return CountingTarget(DirectoryTarget(tmp_path / "dest", fsync=False))
    aws.create_bucket(Bucket="backups")
    return CountingTarget(make_target("s3://backups/store/"))


@pytest.fixture
def fdest(tmp_path: Path) -> CountingTarget:
    return CountingTarget(DirectoryTarget(tmp_path / "dest", fsync=False))


def run(dest: Any, logs: Any, aws: Any, **kw: Any) -> Any:
    kw.setdefault("progress", False)
    return BackupRunner(BackupStore(dest), logs, Source(aws), exclude_buckets={"backups"}, **kw).run()


def restored_equals(store: BackupStore, aws: Any, backup_id: str, bucket: str, snap: dict[str, Any], to: str) -> None:
    res = restore(store, Source(aws), bucket=bucket, to_bucket=to, backup_id=backup_id, progress=False)
    assert not res.failed
    got = bucket_state(aws, to)
    assert got.keys() == snap.keys()
    for key in snap:
        assert got[key] == snap[key], key


# ------------------------------------------------------------------------------- end to end


def test_rounds_of_mutations_restore_byte_for_byte(dest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    """Baseline (records for one bucket, a listing for the versioned one), three rounds of mixed
    mutations with a backup after each; every backup restores to exactly its state; identical
    content is stored once; verify passes; a run with no new logs writes nothing."""
    zone.create_bucket("plain")
    zone.create_bucket("vers", versioned=True)
    big = os.urandom(9 * MiB)  # above the part size: multipart on the way in and out
    for i in range(20):
        zone.put("plain", f"docs/{i:03d}", f"doc {i} ".encode() * (i + 1), log=False)
    for k in ("dup/a", "dup/b", "dup/c"):
        zone.put("plain", k, b"identical bytes", log=False)
    zone.put("plain", "meta/typed", b"{}", metadata={"owner": "ops", "n": "1"}, content_type="application/json", log=False)
    zone.put("plain", "big", big, log=False)
    for i in range(6):
        zone.put("vers", f"v/{i}", f"first {i}".encode(), log=False)
        zone.put("vers", f"v/{i}", f"second {i}".encode(), log=False)
    zone.delete("vers", "v/5", log=False)  # a delete marker on top
    zone.baseline("plain")  # the follower's full sync wrote records for "plain" only
    zone.commit(compression="gzip")

    ids: list[str] = []
    snaps: list[dict[str, Any]] = []

    def backup() -> Any:
        r = run(dest, logs, aws)
        assert r.backup_id is not None
        ids.append(r.backup_id)
        snaps.append({b: bucket_state(aws, b) for b in ("plain", "vers")})
        return r

    r0 = backup()
    assert r0.records == 25 and r0.listed == 13  # 12 versions + 1 delete marker listed
    assert r0.copied == 25 + 5 and r0.uploaded == 20 + 1 + 1 + 1 + 5  # dup/* stored once
    assert r0.deduplicated == 2

    # round 1
    zone.put("plain", "docs/000", b"changed")  # overwrite
    zone.delete("plain", "docs/001")  # delete
    zone.put("plain", "dup/d", b"identical bytes")  # known content under new keys
    zone.put("plain", "new/e", b"identical bytes")
    zone.put("plain", "docs/002", b"v1")  # two writes in one round: only the last is read
    zone.put("plain", "docs/002", b"v2")
    zone.put("vers", "v/0", b"third 0")  # new version
    zone.delete("vers", "v/1")  # delete marker
    zone.delete_version("vers", "v/2", zone.versions("vers", "v/2")[1])  # a noncurrent version
    zone.delete_version("vers", "v/3", zone.versions("vers", "v/3")[0])  # the current one: "first 3" is back
    zone.delete_version("vers", "v/5", zone.markers("vers", "v/5")[0])  # undelete: "second 5" is back
    zone.commit(compression="zstd")
    r1 = backup()
    assert r1.uploaded == 5 and r1.deduplicated == 2 and r1.listed == 0
    assert sha(b"v1") not in {s for s, _ in BackupStore(dest).iter_blobs()}

    # round 2
    zone.put("plain", "uni/ключ\nline \x00", b"unicode key")
    zone.delete("plain", "dup/a")
    zone.put("vers", "v/1", b"back again")  # over a delete marker
    zone.delete_version("vers", "v/3", zone.versions("vers", "v/3")[0])  # the last version: key gone
    zone.put("plain", "big", big[::-1])
    zone.commit()
    r2 = backup()
    assert r2.lagging == 0 and r2.base == r1.backup_id

    assert run(dest, logs, aws).backup_id is None  # nothing new

    store = BackupStore(dest)
    assert [b.backup_id for b in mf.list_backups(store)] == ids
    for i, (bid, snap) in enumerate(zip(ids, snaps, strict=True)):
        for bucket in ("plain", "vers"):
            restored_equals(store, aws, bid, bucket, snap[bucket], f"restore-{i}-{bucket}")

    contents = {sha(c) for snap in snaps for b in snap.values() for c, _m, _t in b.values()}
    assert {s for s, _ in store.iter_blobs()} == contents
    puts = dest.blob_puts()
    assert set(puts) == {blob_name(s) for s in contents}
    assert set(puts.values()) == {1}, "a blob was uploaded twice"
    result = verify(store, progress=False)
    assert result.ok and result.checked == len(contents) and len(result.backups) == 3


def test_restore_at_time_and_prefix(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    zone.create_bucket("bkt")
    zone.put("bkt", "a/1", b"one")
    zone.put("bkt", "b/1", b"uno")
    t0 = int(time.time() * 1_000_000)
    zone.commit(complete_until_us=t0)
    r0 = run(fdest, logs, aws)
    zone.put("bkt", "a/1", b"two")
    zone.commit(complete_until_us=t0 + 10_000_000)
    r1 = run(fdest, logs, aws)
    store = BackupStore(fdest)
    res = restore(store, Source(aws), bucket="bkt", to_bucket="early", at_us=t0 + 5_000_000, prefix="a/", progress=False)
    assert res.backup_id == r0.backup_id and res.objects == 1
    assert bucket_state(aws, "early") == {"a/1": (b"one", {}, "binary/octet-stream")}
    res = restore(store, Source(aws), bucket="bkt", to_bucket="late", at_us=t0 + 10_000_000, progress=False)
    assert res.backup_id == r1.backup_id and bucket_state(aws, "late")["a/1"][0] == b"two"
    with pytest.raises(Exception, match="no backup is as of"):
        restore(store, Source(aws), bucket="bkt", to_bucket="x", at_us=t0 - 1, progress=False)
    with pytest.raises(Exception, match="has no bucket"):
        restore(store, Source(aws), bucket="nope", to_bucket="x", backup_id=r0.backup_id, progress=False)


def test_restore_and_verify_catch_corrupt_blobs(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any, tmp_path: Path) -> None:
    zone.create_bucket("bkt")
    big = os.urandom(9 * MiB)
    zone.put("bkt", "small", b"small content")
    zone.put("bkt", "big", big)
    zone.put("bkt", "fine", b"fine")
    zone.commit()
    r = run(fdest, logs, aws)
    for data in (b"small content", big):
        path = tmp_path / "dest" / blob_name(sha(data))
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    (tmp_path / "dest" / blob_name(sha(b"fine"))).unlink()
    store = BackupStore(fdest)
    res = restore(store, Source(aws), bucket="bkt", to_bucket="out", backup_id=r.backup_id, progress=False)
    assert sorted(f["key"] for f in res.failed) == ["big", "fine", "small"]
    assert bucket_state(aws, "out") == {}  # nothing corrupt became visible (the multipart was aborted)
    assert not aws.list_multipart_uploads(Bucket="out").get("Uploads")
    v = verify(store, progress=False)
    assert v.missing == [sha(b"fine")]
    assert sorted(c["sha256"] for c in v.corrupt) == sorted([sha(b"small content"), sha(big)])
    q = verify(store, quick=True, progress=False)
    assert q.missing == [sha(b"fine")] and not q.corrupt  # a listing cannot see flipped bits


# ------------------------------------------------------------------------------- the ETag race


def test_unversioned_record_overtaken_before_the_copy(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    """An object overwritten or deleted after its last record of the run (the later record is
    not in this run's logs yet): the record is skipped, the key keeps the previous backup's
    state and is listed as lagging; the next run applies the later record."""
    zone.create_bucket("race")
    zone.put("race", "stable", b"s")
    zone.put("race", "hot", b"h0")
    zone.put("race", "gone", b"g0")
    zone.commit()
    run(fdest, logs, aws)

    zone.put("race", "hot", b"h1")
    late_hot = zone.put("race", "hot", b"h2", log=False)  # happened before the backup, logged after it
    zone.put("race", "gone", b"g1")
    late_gone = zone.delete("race", "gone", log=False)
    zone.put("race", "fresh", b"f1")
    late_fresh = zone.put("race", "fresh", b"f2", log=False)
    zone.put("race", "twice", b"t1")
    zone.put("race", "twice", b"t2")  # a later record of the same run covers t1: read once, as t2
    zone.commit()
    store = BackupStore(fdest)
    r1 = run(fdest, logs, aws)
    m1 = mf.load(store, r1.backup_id)
    assert sorted((lag["key"], lag["reason"]) for lag in m1.lagging) == [
        ("fresh", "changed"),
        ("gone", "vanished"),
        ("hot", "changed"),
    ]
    objs = dict(m1.objects("race"))
    assert objs["hot"].sha256 == sha(b"h0") and objs["gone"].sha256 == sha(b"g0") and "fresh" not in objs
    assert objs["twice"].sha256 == sha(b"t2")
    stored = {s for s, _ in store.iter_blobs()}
    assert not stored & {sha(b"h1"), sha(b"h2"), sha(b"g1"), sha(b"f1"), sha(b"f2"), sha(b"t1")}

    zone.pending += [late_hot, late_gone, late_fresh]
    zone.commit()
    r2 = run(fdest, logs, aws)
    m2 = mf.load(store, r2.backup_id)
    assert not m2.lagging
    objs = dict(m2.objects("race"))
    assert objs["hot"].sha256 == sha(b"h2") and "gone" not in objs and objs["fresh"].sha256 == sha(b"f2")
    restored_equals(store, aws, r2.backup_id, "race", bucket_state(aws, "race"), "race-restored")


def test_records_without_etag_are_guarded_by_time(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    """A write record without size/ETag: the object is taken only if it was not written again
    after the record's time; otherwise the record is skipped like any overtaken one."""
    zone.create_bucket("noetag")
    zone.put("noetag", "busy", b"b0")
    zone.commit()
    run(fdest, logs, aws)
    zone.put("noetag", "quiet", b"q1", with_etag=False)
    zone.put("noetag", "busy", b"b1", with_etag=False)
    time.sleep(1.05 - time.time() % 1)  # moto's LastModified has whole seconds
    late = zone.put("noetag", "busy", b"b2", log=False)
    zone.commit()
    store = BackupStore(fdest)
    r1 = run(fdest, logs, aws)
    m1 = mf.load(store, r1.backup_id)
    assert [(lag["key"], lag["reason"]) for lag in m1.lagging] == [("busy", "changed")]
    objs = dict(m1.objects("noetag"))
    assert objs["quiet"].sha256 == sha(b"q1") and objs["quiet"].etag is not None
    assert objs["busy"].sha256 == sha(b"b0")
    zone.pending.append(late)
    zone.commit()
    m2 = mf.load(store, run(fdest, logs, aws).backup_id)
    assert not m2.lagging and dict(m2.objects("noetag"))["busy"].sha256 == sha(b"b2")


def test_versioned_record_whose_version_vanished(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    zone.create_bucket("vrb", versioned=True)
    zone.put("vrb", "k", b"a0")
    zone.commit()
    run(fdest, logs, aws)
    rec = zone.put("vrb", "k", b"a1")
    late = zone.delete_version("vrb", "k", rec["version_id"], log=False)
    zone.commit()
    store = BackupStore(fdest)
    r1 = run(fdest, logs, aws)
    m1 = mf.load(store, r1.backup_id)
    assert [(lag["key"], lag["reason"]) for lag in m1.lagging] == [("k", "vanished")]
    assert dict(m1.objects("vrb"))["k"].sha256 == sha(b"a0")
    zone.pending.append(late)
    zone.commit()
    r2 = run(fdest, logs, aws)
    m2 = mf.load(store, r2.backup_id)
    assert not m2.lagging and dict(m2.objects("vrb"))["k"].sha256 == sha(b"a0")


class CountingSource(Source):
    """A ``Source`` that counts its probes (one key), probe pages (range listings) and GETs."""

    def __init__(self, client: Any, **kw: Any) -> None:
        super().__init__(client, **kw)
        self.calls: Counter[str] = Counter()
        self._mu = threading.Lock()

    def _count(self, what: str) -> None:
        with self._mu:
            self.calls[what] += 1

    def probe(self, bucket: str, key: str) -> Any:
        self._count("probe")
        return super().probe(bucket, key)

    def probe_page(self, bucket: str, **kw: Any) -> Any:
        self._count("probe_page")
        return super().probe_page(bucket, **kw)

    def get(self, bucket: str, key: str, **kw: Any) -> Any:
        self._count("get")
        return super().get(bucket, key, **kw)


def test_probe_plan_groups_keys_by_estimated_pages() -> None:
    known = [f"d/{i:05d}" for i in range(5000)]
    dense = [f"d/{i:05d}" for i in range(1000, 4000, 100)]  # 30 keys over ~3,000 entries
    far = ["d/00000", "d/04999"]  # a page or more from any other key to probe
    ranges, singles = plan_probes("b", [*far, *dense], known)
    assert sorted(singles) == far
    (rng,) = ranges
    assert [k for _b, k in rng.keys] == dense
    # Starts after the first key's parent prefix (nearer than the known key before it), and
    # lists d/01000 .. d/03900: 2,901 entries, 3 pages; a page more before giving up.
    assert (rng.prefix, rng.start_after, rng.estimate, rng.budget) == ("d/0", "d/0100", 3, 4)
    # Two keys a page apart or more: two probes are cheaper than two pages.
    assert plan_probes("b", ["d/00000", "d/01000"], known) == ([], ["d/00000", "d/01000"])
    # A long run is listed by chains of 4 pages at once, each starting after the known key where
    # the previous one ends: as many pages as one listing (ceil(4,951 / 1000) = 5).
    many = [f"d/{i:05d}" for i in range(3, 5000, 50)]  # 100 keys
    ranges, singles = plan_probes("b", many, known)
    assert [(r.start_after, r.estimate, len(r.keys)) for r in ranges] == [("d/00002", 4, 80), ("d/04002", 1, 20)]
    assert not singles and [k for r in ranges for _b, k in r.keys] == many
    # A key alone in its chain is probed alone.
    ranges, singles = plan_probes("b", [f"d/{i:05d}" for i in range(0, 5000, 900)], known)
    assert [(r.start_after, r.estimate, len(r.keys)) for r in ranges] == [("d/0000", 4, 5)] and singles == ["d/04500"]
    # The known key right before the first one is nearer than its parent prefix.
    (rng,) = plan_probes("b", ["x/b10", "x/b11"], ["x/a", "x/b1", "x/b1-", "x/b10", "x/b11"])[0]
    assert rng.start_after == "x/b1-" and rng.prefix == "x/b1"


def test_probe_plan_orders_keys_as_utf8_bytes() -> None:
    """S3 lists keys in UTF-8 byte order: code point order, not UTF-16 order (U+FFFF sorts
    before U+10000); a key with a lone surrogate cannot be sent and is probed alone."""
    keys = ["u/\U00010000", "u/a", "u/\uffff", "u/\u00e9", "u/\ud800", "u/a\t"]
    ranges, singles = plan_probes("b", keys, [])
    assert singles == ["u/\ud800"]
    (rng,) = ranges
    assert [k for _b, k in rng.keys] == ["u/a", "u/a\t", "u/\u00e9", "u/\uffff", "u/\U00010000"]
    assert [b for b, _k in rng.keys] == sorted(b for b, _k in rng.keys)
    assert rng.start_after == "u/" and rng.prefix == "u/"


def test_probe_range_settles_keys_page_by_page() -> None:
    (rng,) = plan_probes("b", ["a", "c", "e", "g"], ["a", "b", "c", "d", "e", "f", "g"], page=3)[0]
    p = (None, 1, 0)
    assert rng.absorb([("a", p), ("b", p)], "t1") == [("a", p)]
    assert rng.absorb([("d", p), ("f", p)], "t2") == [("c", None), ("e", None)]  # gone since
    assert not rng.done and rng.token == "t2"
    assert rng.absorb([], None) == [("g", None)]  # the listing's end settles the rest
    assert rng.done and rng.pages == 3


def test_batched_probe_finds_changed_deleted_and_rechanged_keys(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    """Records without an ETag close together in a bucket: one range listing (pages of 10 keys
    here) probes them all. A key deleted after its record is missing from the listing (lagging,
    vanished); one written again after its record is newer than it (lagging, changed); the
    others are copied. The next run applies the later records."""
    zone.create_bucket("bprobe")
    for i in range(60):
        zone.put("bprobe", f"k/{i:03d}", f"v0 {i}".encode())
    zone.commit()
    run(fdest, logs, aws)
    changed = [f"k/{i:03d}" for i in range(0, 60, 4)]  # 15 keys
    for key in changed:
        zone.put("bprobe", key, f"v1 {key}".encode(), with_etag=False)
    zone.put("bprobe", "k/0101", b"new between", with_etag=False)
    zone.put("bprobe", "n/x", b"new after", with_etag=False)
    time.sleep(1.05 - time.time() % 1)  # moto's LastModified has whole seconds
    late = [zone.delete("bprobe", "k/008", log=False), zone.put("bprobe", "k/020", b"v2", log=False)]
    zone.commit()
    store = BackupStore(fdest)
    src = CountingSource(aws, probe_page_keys=10)
    r1 = BackupRunner(store, logs, src, exclude_buckets={"backups"}, progress=False).run()
    m1 = mf.load(store, r1.backup_id or "")
    assert sorted((lag["key"], lag["reason"]) for lag in m1.lagging) == [("k/008", "vanished"), ("k/020", "changed")]
    # 61 keys after "k/00" in the bucket: 7 pages instead of 17 probes; 15 GETs.
    assert src.calls == {"probe_page": 7, "get": 15}
    objs = dict(m1.objects("bprobe"))
    assert objs["k/008"].sha256 == sha(b"v0 8") and objs["k/020"].sha256 == sha(b"v0 20")
    assert objs["k/004"].sha256 == sha(b"v1 k/004") and objs["k/004"].etag is not None
    assert objs["k/0101"].sha256 == sha(b"new between") and objs["n/x"].sha256 == sha(b"new after")
    zone.pending += late
    zone.commit()
    r2 = run(fdest, logs, aws)
    m2 = mf.load(store, r2.backup_id)
    assert not m2.lagging and "k/008" not in dict(m2.objects("bprobe"))
    restored_equals(store, aws, r2.backup_id, "bprobe", bucket_state(aws, "bprobe"), "bprobe-restored")


def test_batched_probe_over_unfollowed_keys_stops_at_its_budget(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    """The manifest knows only the followed prefixes: a range listing that meets many keys it did
    not expect (here 100 unfollowed ones) stops after its estimated pages plus one and probes
    the keys it has not reached one by one."""
    zone.create_bucket("pfilter")
    for p in ("a", "c"):
        for i in range(5):
            zone.put("pfilter", f"{p}/{i}", f"{p} {i}".encode())
    for i in range(100):
        zone.put("pfilter", f"b/{i:03d}", b"not followed", log=False)
    zone.commit()

    def includes(bucket: str, key: str | None) -> bool:
        return key is None or not key.startswith("b/")

    run(fdest, logs, aws, includes=includes)
    for p in ("a", "c"):
        for i in range(5):
            zone.put("pfilter", f"{p}/{i}", f"{p} {i} again".encode(), with_etag=False)
    zone.commit()
    store = BackupStore(fdest)
    src = CountingSource(aws, probe_page_keys=10)
    r = BackupRunner(store, logs, src, exclude_buckets={"backups"}, includes=includes, progress=False).run()
    # Estimated 1 page (10 known keys), budget 2: a/* and b/000..b/014 listed, c/* probed.
    assert src.calls == {"probe_page": 2, "probe": 5, "get": 10}
    m = mf.load(store, r.backup_id or "")
    assert not m.lagging
    assert {k: v.sha256 for k, v in m.objects("pfilter")} == {
        f"{p}/{i}": sha(f"{p} {i} again".encode()) for p in ("a", "c") for i in range(5)
    }


def test_batched_probe_failing_listing_falls_back_to_probes(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    zone.create_bucket("pfail")
    zone.commit()
    run(fdest, logs, aws)
    for i in range(6):
        zone.put("pfail", f"k/{i}", f"v {i}".encode(), with_etag=False)
    zone.commit()

    class Failing(CountingSource):
        def probe_page(self, bucket: str, **kw: Any) -> Any:
            self._count("probe_page")
            raise TransientError("listing failed")

    src = Failing(aws)
    r = BackupRunner(BackupStore(fdest), logs, src, exclude_buckets={"backups"}, progress=False).run()
    assert src.calls == {"probe_page": 1, "probe": 6, "get": 6} and r.copied == 6 and not r.lagging


def test_model_rules() -> None:
    def rec(op: str, key: str = "k", vid: str | None = None, etag: str | None = None, baseline: bool = False) -> LogRecord:
        return LogRecord(
            id=os.urandom(16).hex(), time=rfc3339(int(time.time() * 1e6)), bucket="b", key=key, version_id=vid,
            op=op, size=1, etag=etag, seq="0", baseline=baseline, recorded=rfc3339(0),
        )

    s = State()
    s.apply(rec("write", vid="v1", etag="e1"))
    s.apply(rec("write", vid="v2", etag="e2"))
    s.apply(rec("delete_marker", vid="m1"))
    assert [v.version_id for v in s.get("b", "k")] == ["m1", "v2", "v1"]
    s.apply(rec("delete", vid="v1"))  # a noncurrent version
    s.apply(rec("delete", vid="m1"))  # undelete
    assert [v.version_id for v in s.get("b", "k")] == ["v2"]
    s.apply(rec("delete", vid="v2"))  # the last known version: ask the source
    assert s.get("b", "k") == () and ("b", "k") in s.resolve
    s.apply(rec("write", key="u", etag="x"))
    s.apply(rec("write", key="u", etag="y"))
    assert [v.etag for v in s.get("b", "u")] == ["y"]
    s.apply(rec("delete", key="u"))
    assert s.get("b", "u") == ()


def _rec(op: str, key: str | None = "k", vid: str | None = None, bucket: str = "b", tenant: str | None = None) -> LogRecord:
    return LogRecord(
        id=os.urandom(16).hex(), time=rfc3339(int(time.time() * 1e6)), bucket=bucket, key=key, version_id=vid,
        op=op, size=None if key is None else 1, etag=None if key is None else "e", seq="0", baseline=False,
        recorded=rfc3339(0), tenant=tenant,
    )


def test_model_null_version_sequence_of_the_issue() -> None:
    # write a (null), versioning Enabled, delete a ?versionId=null; Suspended, write b, delete b
    # (a null delete marker): every null version is one version, whatever the op.
    s = State()
    s.apply(_rec("write", "a"))
    s.apply(_rec("delete", "a"))
    assert s.get("b", "a") == ()
    s.apply(_rec("write", "b"))
    s.apply(_rec("delete_marker", "b"))
    (marker,) = s.get("b", "b")  # the null marker replaced the null object version
    assert marker.delete_marker and marker.version_id is None
    s.apply(_rec("write", "b", vid="v1"))
    s.apply(_rec("delete_marker", "b"))
    assert [(v.version_id, v.delete_marker) for v in s.get("b", "b")] == [(None, True), ("v1", False)]
    # "null" in an older log line is the same null version
    old = LogRecord.from_json(_rec("delete", "b").encode().replace(b'"version_id":null', b'"version_id":"null"'))
    assert old.version_id is None
    s.apply(old)
    assert [v.version_id for v in s.get("b", "b")] == ["v1"]


def test_model_bucket_records_and_tenants() -> None:
    s = State()
    s.apply(_rec("bucket_create", None))
    s.apply(_rec("write", "k", vid="v1"))
    s.apply(_rec("write", "k", tenant="t1"))  # another tenant's bucket of the same name
    s.apply(_rec("bucket_delete", None))  # its last object deletes died with the bucket
    snap = s.snapshot()
    assert "b" not in snap and [v.version_id for v in snap["t1/b"]["k"]] == [None]
    s.apply(_rec("bucket_create", None))
    assert s.snapshot()["b"] == {}
    with pytest.raises(ValueError, match="without a key"):
        s.apply(_rec("delete", None))


# ------------------------------------------------------------------------------- retention and cleanup


def test_cleanup_retention(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    zone.create_bucket("ret")
    now_us = int(time.time() * 1_000_000)
    snaps = []
    for i in range(6):  # states as of 10, 8, 6, 4, 2 and 0 days ago
        zone.put("ret", f"k{i}", f"content {i}".encode())
        zone.put("ret", "shared", f"rev {i}".encode())
        zone.commit(complete_until_us=now_us - (10 - 2 * i) * DAY_US)
        run(fdest, logs, aws)
        snaps.append(bucket_state(aws, "ret"))
    store = BackupStore(fdest)
    backups = mf.list_backups(store)
    ids = [b.backup_id for b in backups]
    expired = select_expired(backups, now=now_us / 1e6, keep_days=5, minimum_backups=2, maximum_backups=4)
    assert [b.backup_id for b in expired] == ids[:3][::-1]

    dry = cleanup(store, keep_days=5, minimum_backups=2, maximum_backups=4, dry_run=True, confirm_delay=0.01, sleep=noop)
    assert sorted(dry.deleted_backups) == ids[:3] and len(mf.list_backups(store)) == 6
    res = cleanup(store, keep_days=5, minimum_backups=2, maximum_backups=4, confirm_delay=0.01, sleep=noop)
    assert sorted(res.deleted_backups) == ids[:3] and res.kept == ids[3:]
    assert res.deleted_blobs == 3 and res.protected_blobs == 0  # "rev 0..2"
    stored = {s for s, _ in store.iter_blobs()}
    assert stored == {sha(f"content {i}".encode()) for i in range(6)} | {sha(f"rev {i}".encode()) for i in (3, 4, 5)}
    assert verify(store, progress=False).ok
    restored_equals(store, aws, ids[3], "ret", snaps[3], "ret-3")
    assert read_lock(store, "cleanup") is None  # released

    # count alone: maximum 1 (minimum 0 still keeps the newest, the next run's base)
    res = cleanup(store, keep_days=0, minimum_backups=0, maximum_backups=1, confirm_delay=0.01, sleep=noop)
    assert res.kept == ids[5:]


@pytest.mark.parametrize(
    ("ages", "keep_days", "minimum", "maximum", "expired"),
    [
        ([0, 1, 2, 3], 0, 1, 10, []),
        ([0, 1, 2, 3], 0, 1, 2, [2, 3]),
        ([0, 1, 2, 3], 1.5, 1, 10, [2, 3]),
        ([0, 1, 2, 3], 1.5, 3, 10, [3]),
        ([5, 6, 7], 1, 0, 10, [1, 2]),  # the newest always stays
        ([0, 1, 2, 3], 0.5, 1, 10, [1, 2, 3]),
    ],
)
def test_select_expired(ages: list[float], keep_days: float, minimum: int, maximum: int, expired: list[int]) -> None:
    now = 1_800_000_000.0
    backups = [
        mf.BackupInfo(mf.new_backup_id(now - age * 86400), int((now - age * 86400) * 1e6), 1, 1, 1, now) for age in ages
    ]
    got = select_expired(backups, now=now, keep_days=keep_days, minimum_backups=minimum, maximum_backups=maximum)
    assert sorted(b.backup_id for b in got) == sorted(backups[i].backup_id for i in expired)


def test_cleanup_during_a_run_loses_nothing(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any, tmp_path: Path) -> None:
    """A cleanup that runs in the middle of a run (after the run copied a blob that existed as an
    old orphan) deletes old orphans but nothing the run relies on."""
    zone.create_bucket("ccb")
    zone.put("ccb", "base", b"base content")
    zone.commit()
    r0 = run(fdest, logs, aws)
    store = BackupStore(fdest)
    old = time.time() - 3600
    for data in (b"orphan", b"junk"):  # left by some crashed run an hour ago
        fdest.inner.put(blob_name(sha(data)), data)
        os.utime(tmp_path / "dest" / blob_name(sha(data)), (old, old))
    zone.put("ccb", "a", b"orphan")  # the run finds this content stored already, but old
    zone.put("ccb", "b", b"new content")
    zone.commit()
    seen: dict[str, Any] = {}

    def hook(point: str) -> None:
        if point == "copied" and "cleanup" not in seen:
            seen["cleanup"] = cleanup(
                store, keep_days=0, minimum_backups=1, maximum_backups=1, confirm_delay=0.01, sleep=noop
            )

    r1 = run(fdest, logs, aws, hook=hook, workers=1)
    c = seen["cleanup"]
    assert c.live_runs == [r1.backup_id]
    assert c.deleted_backups == []  # r0 is the live run's base
    assert c.deleted_blobs == 1  # junk; the orphan was stored again by the run: too new to delete
    stored = {s for s, _ in store.iter_blobs()}
    assert sha(b"junk") not in stored and sha(b"orphan") in stored
    assert fdest.blob_puts()[blob_name(sha(b"orphan"))] == 1
    assert verify(store, progress=False).ok
    assert r0.backup_id in {b.backup_id for b in mf.list_backups(store)}
    # After the run, r0 is no longer needed.
    c2 = cleanup(store, keep_days=0, minimum_backups=1, maximum_backups=1, confirm_delay=0.01, sleep=noop)
    assert c2.deleted_backups == [r0.backup_id] and c2.deleted_blobs == 0  # "base" is still in r1
    assert verify(store, progress=False).ok


def test_live_run_marker_protects_recent_blobs(fdest: CountingTarget) -> None:
    store = BackupStore(fdest)
    now = time.time()
    fdest.put(blob_name(sha(b"new")), b"new")
    store.put_doc("runs/20990101T000000.000000Z-abcd.json", {"backup_id": "x", "owner": "backup:elsewhere:1:aa",
                                                             "started": now - 10, "expires": now + 100, "base": None})
    assert [r.backup_id for r in live_runs(store, now=now)] == ["x"]
    res = cleanup(store, keep_days=0, minimum_backups=1, maximum_backups=1, confirm_delay=0.01, sleep=noop)
    assert res.protected_blobs == 1 and res.deleted_blobs == 0
    res = cleanup(store, keep_days=0, minimum_backups=1, maximum_backups=1, confirm_delay=0.01, sleep=noop,
                  clock=lambda: now + 200)  # the marker expired
    assert res.deleted_blobs == 1


# ------------------------------------------------------------------------------- the lock


class FakeTime:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_lock_excludes_expires_and_detects_takeover(fdest: CountingTarget) -> None:
    store = BackupStore(fdest)
    ft = FakeTime()
    kw: dict[str, Any] = {"ttl": 30, "confirm_delay": 1, "clock": ft.clock, "monotonic": ft.clock, "sleep": ft.sleep}
    a = DestinationLock(store, owner="cleanup:hostA:1:aa", **kw)
    b = DestinationLock(store, owner="cleanup:hostB:2:bb", **kw)
    a.acquire()
    assert a.held
    with pytest.raises(LockBusy, match="hostA"):
        b.acquire()
    with pytest.raises(LockBusy):
        wait_for_unlocked(store, timeout=5, clock=ft.clock, sleep=ft.sleep)
    a.renew()
    ft.t += 31  # A stalls past its expiry: B takes over, A notices
    with pytest.raises(LeaseLost):
        a.check()
    b.acquire()
    with pytest.raises(LeaseLost):
        a.renew()
    b.release()
    assert read_lock(store, "cleanup") is None
    wait_for_unlocked(store, timeout=0, clock=ft.clock, sleep=ft.sleep)


def test_lock_contenders_writing_at_once(fdest: CountingTarget) -> None:
    """Both read "free" and write; the later write wins and the earlier writer backs off when it
    reads the lock back after the confirm delay."""
    store = BackupStore(fdest)
    ft = FakeTime()
    b = DestinationLock(store, owner="cleanup:hostB:2:bb", ttl=30, confirm_delay=1, clock=ft.clock, monotonic=ft.clock, sleep=ft.sleep)

    def sleep_and_let_b_write(s: float) -> None:
        ft.sleep(s)
        b._acquired_at = ft.clock()
        b._write()  # B's write lands during A's confirm delay

    a = DestinationLock(store, owner="cleanup:hostA:1:aa", ttl=30, confirm_delay=1, clock=ft.clock, monotonic=ft.clock, sleep=sleep_and_let_b_write)
    with pytest.raises(LockBusy, match="hostB"):
        a.acquire()
    assert read_lock(store, "cleanup").owner == b.owner  # type: ignore[union-attr]


def test_lock_of_a_dead_process_is_free(fdest: CountingTarget) -> None:
    store = BackupStore(fdest)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = f"cleanup:{os.uname().nodename}:{proc.stdout.strip()}:dead"
    store.put_doc("locks/cleanup.json", {"owner": dead, "expires": time.time() + 1000, "acquired": time.time()})
    lock = DestinationLock(store, confirm_delay=0.01, ttl=10)
    lock.acquire()
    lock.release()


def test_run_waits_for_a_cleanup_in_progress(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    zone.create_bucket("wbk")
    zone.put("wbk", "k", b"x")
    zone.commit()
    store = BackupStore(fdest)
    store.put_doc("locks/cleanup.json", {"owner": "cleanup:elsewhere:1:aa", "expires": time.time() + 1000, "acquired": 0})
    with pytest.raises(LockBusy, match="cleanup.json"):
        run(fdest, logs, aws, cleanup_wait=0)
    # The refused run released its marker: the next one proceeds as soon as the lock is gone.
    store.delete("locks/cleanup.json")
    r = run(fdest, logs, aws)
    assert r.resumed and r.copied == 1


# ------------------------------------------------------------------------------- crash and resume


class Crash(BaseException):
    pass


def test_resume_after_failure_uploads_nothing_twice(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    zone.create_bucket("rsb")
    for i in range(30):
        zone.put("rsb", f"k{i:02d}", f"content {i % 20}".encode())
    zone.commit()
    n = {"stored": 0}

    def hook(point: str) -> None:
        if point == "blob-stored":
            n["stored"] += 1
            if n["stored"] == 12:
                raise Crash()

    with pytest.raises(Crash):
        run(fdest, logs, aws, hook=hook, flush_items=5, workers=2)
    assert mf.list_backups(BackupStore(fdest)) == []
    r = run(fdest, logs, aws)
    assert r.resumed and r.copied == 30
    assert set(fdest.blob_puts().values()) == {1} and len(fdest.blob_puts()) == 20
    restored_equals(BackupStore(fdest), aws, r.backup_id, "rsb", bucket_state(aws, "rsb"), "rsb-restored")


def test_resume_after_marker_expired_rechecks_blobs(fdest: CountingTarget, zone: Zone, aws: Any, logs: Any) -> None:
    """A run dead past its marker's expiry: a cleanup may have deleted what it stored. The resumed
    run trusts none of its recorded progress: it copies again what is missing."""
    zone.create_bucket("exb")
    for i in range(10):
        zone.put("exb", f"k{i}", f"c{i}".encode())
    zone.commit()

    def hook(point: str) -> None:
        if point == "segment-written":
            raise Crash()

    with pytest.raises(Crash):
        run(fdest, logs, aws, hook=hook, flush_items=4, workers=1)
    store = BackupStore(fdest)
    (marker,) = [i.name for i in store.list("runs/") if i.name.count("/") == 1]
    doc = store.get_doc(marker)
    assert isinstance(doc, dict)
    doc["expires"] = time.time() - 1
    store.put_doc(marker, doc)
    cleanup(store, keep_days=0, minimum_backups=1, maximum_backups=1, confirm_delay=0.01, sleep=noop)
    assert not list(store.iter_blobs())  # the dead run's blobs were unreferenced: gone
    r = run(fdest, logs, aws)
    assert r.resumed and r.uploaded == 10
    assert verify(store, progress=False).ok


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from changelog.consumers.backup.runner import BackupRunner
    from changelog.consumers.backup.source import Source, make_client
    from changelog.consumers.backup.store import BackupStore
    from changelog.pipeline.targets import DirectoryTarget, S3Target

    endpoint, logs_dir, count_file, point, after = sys.argv[1:6]
    fd = os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def sent(params, model, context, **kw):
        context["counted"] = params["url_path"]
        os.write(fd, f"sent {params['url_path']}\\n".encode())

    def done(http_response, context, **kw):
        if "counted" in context and http_response.status_code < 300:
            os.write(fd, f"done {context['counted']}\\n".encode())

    def client():
        return make_client(endpoint=endpoint, access_key="testing", secret_key="testing", region="us-east-1")

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
        BackupStore(S3Target("backups", "store/", client=dest)), DirectoryTarget(logs_dir), Source(client()),
        exclude_buckets={"backups"}, flush_items=3, flush_seconds=1000, workers=2, hook=hook, progress=False,
    )
    print(json.dumps(runner.run().to_dict()))
    """
)


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's backends are process-wide: start from an empty zone, leave one behind.
    reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset).close()
    yield endpoint
    urllib.request.urlopen(reset).close()
    server.stop()


@pytest.mark.parametrize(
    ("point", "after"),
    [("blob-stored", 5), ("segment-written", 3), ("copied", 8), ("manifest-written", 1)],
)
def test_sigkill_mid_run_then_rerun(moto_server: str, tmp_path: Path, point: str, after: int) -> None:
    """`backup run` in a subprocess, SIGKILLed at a hook point; the rerun completes the backup
    and no blob is ever stored twice (writes counted on the wire, in both processes: the rerun
    sends again only a write that the kill cut off in flight)."""
    s3 = make_client(endpoint=moto_server, access_key="testing", secret_key="testing", region="us-east-1")
    logs_dir = tmp_path / "logs"
    zone = Zone(s3, DirectoryTarget(logs_dir, fsync=False))
    s3.create_bucket(Bucket="backups")
    zone.create_bucket("src")
    zone.create_bucket("srcv", versioned=True)
    for i in range(14):
        zone.put("src", f"obj/{i:02d}", f"payload {i % 10}".encode() * 50)
        zone.put("srcv", f"v{i:02d}", f"versioned {i % 7}".encode())
    zone.commit()
    def child(point: str, after: int) -> subprocess.CompletedProcess[str]:
        counts = tmp_path / f"writes-{point}.txt"
        return subprocess.run(
            [sys.executable, "-c", CHILD, moto_server, str(logs_dir), str(counts), point, str(after)],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )

    killed = child(point, after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = child("never", 0)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    store = BackupStore(S3Target("backups", "store/", client=s3))
    backups = mf.list_backups(store)
    assert len(backups) == 1
    if point == "manifest-written":
        assert result["backup_id"] is None  # the killed run had finished its manifest
    else:
        assert result["resumed"] and result["backup_id"] == backups[0].backup_id
    assert not list(store.list("runs/"))
    assert_stored_once(tmp_path / f"writes-{point}.txt", tmp_path / "writes-never.txt", blobs=10 + 7)
    assert verify(store, progress=False).ok
    for bucket in ("src", "srcv"):
        restored_equals(store, s3, backups[0].backup_id, bucket, bucket_state(s3, bucket), f"{bucket}-restored")


# ------------------------------------------------------------------------------- CLI


def test_cli_commands(aws: Any, zone: Zone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "rgw-changelog.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [target]
            url = "file://{tmp_path}/logs/"
            [backup]
            url = "file://{tmp_path}/cli-dest/"
            keep_days = 0
            minimum_backups = 1
            maximum_backups = 1
            """
        )
    )
    monkeypatch.setenv("RGW_CHANGELOG_CONFIG", str(cfg))
    zone.create_bucket("clib")
    zone.put("clib", "a", b"alpha", metadata={"k": "v"})
    zone.put("clib", "b", b"beta")
    zone.commit()
    cli = CliRunner()
    res = cli.invoke(backup_group, ["run", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    first = orjson.loads(res.stdout)
    assert first["copied"] == 2 and first["uploaded"] == 2
    zone.put("clib", "a", b"alpha 2")
    zone.commit()
    res = cli.invoke(backup_group, ["run"], catch_exceptions=False)
    assert res.exit_code == 0 and "copied 1 objects" in res.stdout
    res = cli.invoke(backup_group, ["list", "--json"], catch_exceptions=False)
    listed = orjson.loads(res.stdout)
    assert [b["objects"] for b in listed] == [2, 2] and listed[0]["backup_id"] == first["backup_id"]
    res = cli.invoke(backup_group, ["list"], catch_exceptions=False)
    assert res.stdout.splitlines()[0].split()[:2] == ["BACKUP", "AS"]
    res = cli.invoke(
        backup_group, ["restore", "--backup", first["backup_id"], "--bucket", "clib", "--to-bucket", "clib-old"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert bucket_state(aws, "clib-old")["a"][:2] == (b"alpha", {"k": "v"})
    res = cli.invoke(backup_group, ["restore", "--bucket", "clib", "--to-bucket", "x"], catch_exceptions=False)
    assert res.exit_code != 0  # neither --backup nor --at
    res = cli.invoke(
        backup_group, ["restore", "--backup", first["backup_id"], "--bucket", "clib", "--to-bucket", "Bad_Name!"]
    )
    assert res.exit_code == 2 and "'Bad_Name!' is not a bucket name" in res.output, res.output
    res = cli.invoke(backup_group, ["verify", "--json"], catch_exceptions=False)
    assert orjson.loads(res.stdout)["ok"] is True
    res = cli.invoke(backup_group, ["cleanup", "--dry-run", "--json"], catch_exceptions=False)
    assert orjson.loads(res.stdout)["deleted_backups"] == [first["backup_id"]]
    assert len(mf.list_backups(BackupStore(DirectoryTarget(tmp_path / "cli-dest")))) == 2


def test_store_layout(fdest: CountingTarget) -> None:
    store = BackupStore(fdest, part_bytes=5 * MiB)
    data = os.urandom(11 * MiB)
    store.put_blob(sha(data), io.BytesIO(data), len(data))
    assert store.hash_blob(sha(data)) == (sha(data), len(data))
    assert blob_name(sha(data)) == f"blobs/{sha(data)[:2]}/{sha(data)}"
    info = store.blob_info(sha(data))
    assert info is not None and info.size == len(data)
    assert store.blob_info(sha(b"nothing")) is None
    with pytest.raises(ValueError):
        blob_name("../etc/passwd")
