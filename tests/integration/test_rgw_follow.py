"""The RGW follower on the real lab: radosgw with log_data=true, the change index on RADOS.

Each S3 mutation kind must end up as exactly one index entry with the right fields; a follower
restarted from stale markers (a crash between recording and saving its markers) records
nothing twice; a full sync records existing objects as baseline records before the incremental
ones; a reshard starts a new generation; a deleted bucket is dropped without a crash.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from changelog.config import SourceConfig
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.mutation import Mutation, Op
from rgw_module.admin import AdminClient
from rgw_module.follower import Follower
from tests.lab import Lab, tear_down

pytestmark = pytest.mark.ceph


@dataclass
class Env:
    lab: Lab
    s3: Any
    index: ChangeIndex
    admin: AdminClient
    followers: list[Follower]

    def follower(
        self, buckets: list[str], *, fault_hook: Callable[[str], None] | None = None, **settings: object
    ) -> Follower:
        """A follower of ``buckets`` holding its lease; ``settings``: ``[source]`` keys, checked
        by nothing (tests poll faster than an operator may)."""
        opts: dict[str, object] = {"poll_interval": 0.2, "trim_datalog": False, "lease_ttl": 10.0, "object_info": "head"}
        opts.update(settings)
        config = SourceConfig.unchecked(buckets=buckets, **opts)
        f = Follower(self.index, self.admin, config, fault_hook=fault_hook)
        assert f.acquire()
        self.followers.append(f)
        return f

    def bucket(self, *, versioned: bool = False) -> str:
        name = f"fl-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name


@pytest.fixture
def env(ceph_lab: Lab, s3_client: Any) -> Iterator[Env]:
    from changelog.pipeline.backends.rados import RadosStore

    ns = f"test-rgw-{uuid.uuid4().hex[:10]}"
    store = RadosStore(conffile=ceph_lab.conf, pool=ceph_lab.pool, namespace=ns, keyring=ceph_lab.keyring or None)
    index = ChangeIndex(store, shards=8)
    admin = AdminClient(ceph_lab.rgw_endpoint, ceph_lab.access_key, ceph_lab.secret_key)
    e = Env(ceph_lab, s3_client, index, admin, [])
    try:
        yield e
    finally:
        tear_down(e.followers, store, admin)


def entries(index: ChangeIndex) -> list[Mutation]:
    """The object records in the index (bucket_create/bucket_delete: ``bucket_ops``)."""
    out: list[Mutation] = []
    for n in range(index.shards):
        out.extend(e.mutation for e in index.scan(n) if not e.mutation.op.of_bucket)
    return out


def bucket_ops(index: ChangeIndex) -> list[Mutation]:
    return [e.mutation for n in range(index.shards) for e in index.scan(n) if e.mutation.op.of_bucket]


def view(m: Mutation) -> tuple[str, str, str | None]:
    return (m.op.value, m.key, m.version_id)


def etag(resp: dict[str, Any]) -> str:
    return str(resp["ETag"]).strip('"')


class Step:
    """Runs one S3 operation, then the follower until caught up, and returns the new records."""

    def __init__(self, env: Env, follower: Follower) -> None:
        self.env = env
        self.f = follower
        self.seen: set[str] = {m.event_id for m in entries(env.index)}

    def __call__(self, fn: Any) -> list[Mutation]:
        fn()
        self.f.run_until_caught_up(timeout=30)
        new = [m for m in entries(self.env.index) if m.event_id not in self.seen]
        self.seen.update(m.event_id for m in new)
        return sorted(new, key=lambda m: (m.key, m.seq))


def test_each_mutation_kind_is_one_record_with_the_right_fields(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b])
    f.run_until_caught_up(timeout=60)
    step = Step(env, f)
    t0 = time.time_ns()

    r = step(lambda: s3.put_object(Bucket=b, Key="a", Body=b"hello"))
    assert [view(m) for m in r] == [("write", "a", None)]
    (m,) = r
    assert (m.size, m.etag, m.bucket, m.baseline) == (5, "5d41402abc4b2a76b9719d911017c592", b, False)
    assert t0 - 2_000_000_000 < m.mtime_ns < time.time_ns() + 2_000_000_000
    assert m.source.startswith(f"rgw:{b}:") and m.seq.startswith("000001.1.")

    r = step(lambda: s3.put_object(Bucket=b, Key="a", Body=b"hello, again"))
    assert [(view(m), m.size) for m in r] == [(("write", "a", None), 12)]

    copied: dict[str, Any] = {}
    r = step(lambda: copied.update(s3.copy_object(Bucket=b, Key="b", CopySource={"Bucket": b, "Key": "a"})))
    assert [(view(m), m.size, m.etag) for m in r] == [(("write", "b", None), 12, etag(copied["CopyObjectResult"]))]

    def multipart() -> None:
        up = s3.create_multipart_upload(Bucket=b, Key="mp")["UploadId"]
        p1 = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=b"x" * 5 * 1024 * 1024)
        p2 = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=2, Body=b"y" * 10)
        parts = [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]
        s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up, MultipartUpload={"Parts": parts})

    r = step(multipart)
    head = s3.head_object(Bucket=b, Key="mp")
    assert [(view(m), m.size, m.etag) for m in r] == [(("write", "mp", None), 5 * 1024 * 1024 + 10, etag(head))]
    assert etag(head).endswith("-2")

    def aborted() -> None:
        up = s3.create_multipart_upload(Bucket=b, Key="never")["UploadId"]
        s3.upload_part(Bucket=b, Key="never", UploadId=up, PartNumber=1, Body=b"z")
        s3.abort_multipart_upload(Bucket=b, Key="never", UploadId=up)

    assert step(aborted) == []

    r = step(lambda: s3.delete_object(Bucket=b, Key="b"))
    assert [(view(m), m.size, m.etag) for m in r] == [(("delete", "b", None), None, None)]
    assert r[0].mtime_ns >= t0  # stamped when read, not with the deleted object's mtime

    assert step(lambda: s3.delete_object(Bucket=b, Key="no-such-key")) == []

    step(lambda: [s3.put_object(Bucket=b, Key=k, Body=b"1") for k in ("m1", "m2")])
    objs = [{"Key": "m1"}, {"Key": "m2"}, {"Key": "gone"}]
    r = step(lambda: s3.delete_objects(Bucket=b, Delete={"Objects": objs}))
    assert [view(m) for m in r] == [("delete", "m1", None), ("delete", "m2", None)]

    r = step(lambda: s3.put_object_tagging(Bucket=b, Key="a", Tagging={"TagSet": [{"Key": "t", "Value": "v"}]}))
    assert [(view(m), m.size) for m in r] == [(("write", "a", None), 12)]

    r = step(lambda: s3.put_object(Bucket=b, Key="zero", Body=b""))
    assert [(view(m), m.size, m.etag) for m in r] == [(("write", "zero", None), 0, "d41d8cd98f00b204e9800998ecf8427e")]

    odd = ["dir/ünï cødé 日本 x.txt", "with space", "k" * 1024, "_underscore", "line\nbreak", "ü" * 512]
    r = step(lambda: [s3.put_object(Bucket=b, Key=k, Body=b"u") for k in odd])
    assert sorted(m.key for m in r) == sorted(odd)
    assert all(m.op is Op.WRITE and m.size == 1 for m in r)


def test_versioned_bucket_records(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b])
    r0 = s3.put_object(Bucket=b, Key="pre", Body=b"plain")
    f.run_until_caught_up(timeout=60)
    step = Step(env, f)

    assert step(lambda: s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})) == []
    v: dict[str, str] = {}

    r = step(lambda: v.update(v1=s3.put_object(Bucket=b, Key="v", Body=b"one")["VersionId"]))
    assert [(view(m), m.size) for m in r] == [(("write", "v", v["v1"]), 3)]
    r = step(lambda: v.update(v2=s3.put_object(Bucket=b, Key="v", Body=b"two!")["VersionId"]))
    assert [(view(m), m.size) for m in r] == [(("write", "v", v["v2"]), 4)]

    r = step(lambda: v.update(dm=s3.delete_object(Bucket=b, Key="v")["VersionId"]))
    assert [view(m) for m in r] == [("delete_marker", "v", v["dm"])]
    assert r[0].size is None

    r = step(lambda: s3.delete_object(Bucket=b, Key="v", VersionId=v["v1"]))
    assert [view(m) for m in r] == [("delete", "v", v["v1"])]
    r = step(lambda: s3.delete_object(Bucket=b, Key="v", VersionId=v["dm"]))
    assert [view(m) for m in r] == [("delete", "v", v["dm"])]

    r = step(lambda: v.update(vn=s3.delete_object(Bucket=b, Key="never-existed")["VersionId"]))
    assert [view(m) for m in r] == [("delete_marker", "never-existed", v["vn"])]

    r = step(lambda: v.update(p2=s3.put_object(Bucket=b, Key="pre", Body=b"versioned")["VersionId"]))
    assert [(view(m), m.size) for m in r] == [(("write", "pre", v["p2"]), 9)]
    r = step(lambda: s3.delete_object(Bucket=b, Key="pre", VersionId="null"))
    assert [view(m) for m in r] == [("delete", "pre", None)]  # one spelling of the null version

    def copy() -> None:
        s3.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "v"})
        v["c"] = s3.head_object(Bucket=b, Key="c")["VersionId"]  # radosgw 16 does not return it on copy

    r = step(copy)
    assert [(view(m), m.size) for m in r] == [(("write", "c", v["c"]), 4)]

    def multipart() -> None:
        up = s3.create_multipart_upload(Bucket=b, Key="mp")["UploadId"]
        p = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=b"q" * 100)
        v["mp"] = s3.complete_multipart_upload(
            Bucket=b, Key="mp", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]}
        )["VersionId"]

    r = step(multipart)
    assert [(view(m), m.size) for m in r] == [(("write", "mp", v["mp"]), 100)]

    tags = {"TagSet": [{"Key": "t", "Value": "v"}]}
    r = step(lambda: s3.put_object_tagging(Bucket=b, Key="c", VersionId=v["c"], Tagging=tags))
    assert [view(m) for m in r] == [("write", "c", v["c"])]

    def multi_delete() -> None:
        resp = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "c"}, {"Key": "mp", "VersionId": v["mp"]}]})
        for d in resp["Deleted"]:
            if d["Key"] == "c":
                v["cdm"] = d["DeleteMarkerVersionId"]

    r = step(multi_delete)
    assert [view(m) for m in r] == [("delete_marker", "c", v["cdm"]), ("delete", "mp", v["mp"])]

    assert step(lambda: s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})) == []
    # A key new to a suspended bucket is written as a plain entry: version None, the null
    # version; later ops on it (radosgw says "null" there) are recorded with None too.
    r = step(lambda: s3.put_object(Bucket=b, Key="s", Body=b"suspended"))
    assert [(view(m), m.size) for m in r] == [(("write", "s", None), 9)]
    r = step(lambda: s3.delete_object(Bucket=b, Key="s"))
    assert [view(m) for m in r] == [("delete_marker", "s", None)]
    r = step(lambda: s3.put_object(Bucket=b, Key="s", Body=b"again"))
    assert [(view(m), m.size) for m in r] == [(("write", "s", None), 5)]

    assert r0["ETag"]
    assert_consistent_with_bucket(env, b, entries(env.index))


def generation(m: Mutation) -> int:
    return int(m.seq.split(".", 1)[0])


def replay(records: list[Mutation]) -> dict[tuple[str, str], dict[str | None, str]]:
    """Final state per (bucket, key) from records in seq order: version -> "obj" | "dm".

    A bucket's newest baseline generation is a snapshot of the bucket: it supersedes every
    record of earlier generations of that bucket (an object absent from it was deleted)."""
    newest: dict[str, int] = defaultdict(int)
    for m in records:
        if m.baseline:
            newest[m.bucket] = max(newest[m.bucket], generation(m))
    state: dict[tuple[str, str], dict[str | None, str]] = defaultdict(dict)
    kept = [m for m in records if generation(m) >= newest[m.bucket]]
    for m in sorted(kept, key=lambda m: (m.bucket, m.key, m.seq)):
        versions = state[(m.bucket, m.key)]
        vid = None if m.version_id in (None, "null") else m.version_id
        if m.op is Op.WRITE:
            versions.pop(vid, None)
            versions[vid] = "obj"
        elif m.op is Op.DELETE_MARKER:
            versions.pop(vid, None)
            versions[vid] = "dm"
        else:
            versions.pop(vid, None)
    return state


def bucket_state(s3: Any, bucket: str) -> dict[tuple[str, str], dict[str | None, str]]:
    state: dict[tuple[str, str], dict[str | None, str]] = defaultdict(dict)
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    for page in pages:
        for kind, items in (("obj", page.get("Versions", [])), ("dm", page.get("DeleteMarkers", []))):
            for o in items:
                vid = None if o["VersionId"] in (None, "null") else o["VersionId"]
                state[(bucket, o["Key"])][vid] = kind
    return state


def assert_consistent_with_bucket(env: Env, bucket: str, records: list[Mutation]) -> None:
    """Per-key order of the records yields the bucket's final state (set of versions, and for
    each key the current version = the last one written)."""
    got = {k: v for k, v in replay([m for m in records if m.bucket == bucket]).items() if v}
    want = bucket_state(env.s3, bucket)
    assert {k: set(v.items()) for k, v in got.items()} == {k: set(v.items()) for k, v in want.items()}
    pages = env.s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    for page in pages:
        for o in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if o["IsLatest"]:
                vid = None if o["VersionId"] in (None, "null") else o["VersionId"]
                assert list(got[(bucket, o["Key"])])[-1] == vid, o["Key"]


def workload(s3: Any, bucket: str, n: int, *, seed: int) -> None:
    """A mixed workload on a few hot keys: writes, overwrites, deletes, copies."""
    import random

    rnd = random.Random(seed)
    keys = [f"w/{i:03d}" for i in range(25)]
    for _ in range(n):
        k = rnd.choice(keys)
        x = rnd.random()
        if x < 0.6:
            s3.put_object(Bucket=bucket, Key=k, Body=b"x" * rnd.randrange(0, 64))
        elif x < 0.85:
            s3.delete_object(Bucket=bucket, Key=k)
        else:
            try:
                s3.copy_object(Bucket=bucket, Key=k, CopySource={"Bucket": bucket, "Key": rnd.choice(keys)})
            except s3.exceptions.ClientError:
                pass  # copy from a deleted key


def test_crash_between_record_and_marker_save_yields_no_duplicate(env: Env) -> None:
    s3 = env.s3
    plain = env.bucket()
    versioned = env.bucket(versioned=True)
    f = env.follower([plain, versioned])
    f.run_until_caught_up(timeout=60)
    workload(s3, plain, 150, seed=1)
    workload(s3, versioned, 150, seed=2)

    class Crash(Exception):
        pass

    crashes = 0
    f.close()

    def crash_after_recording(step: str) -> None:
        nonlocal crashes
        if step == "recorded" and crashes < 3:
            crashes += 1
            raise Crash(step)

    # Small pages: the workload spans many rounds, and each "crash" leaves recorded entries whose
    # markers were never saved. Each restart is a new follower from the persisted state.
    for _attempt in range(10):
        g = env.follower([plain, versioned], page_entries=7, fault_hook=crash_after_recording)
        try:
            g.run_until_caught_up(timeout=60)
            break
        except Crash:
            g.close()
            continue
    else:
        pytest.fail("the follower never caught up")
    assert crashes == 3
    recs = entries(env.index)
    ids = [m.event_id for m in recs]
    assert len(ids) == len(set(ids)), "an event was recorded twice"
    assert sum(g.stats()["mutations_duplicate"] for g in env.followers) > 0  # the replays happened
    # every bilog entry of a mutation is there exactly once: positions per source are unique
    per_source: dict[str, list[str]] = defaultdict(list)
    for m in recs:
        per_source[m.source].append(m.position)
    assert all(len(p) == len(set(p)) for p in per_source.values())
    assert_consistent_with_bucket(env, plain, recs)
    assert_consistent_with_bucket(env, versioned, recs)


def test_restart_from_persisted_markers_resumes_without_duplicates(env: Env) -> None:
    b = env.bucket()
    f = env.follower([b])
    f.run_until_caught_up(timeout=60)
    workload(env.s3, b, 60, seed=3)
    f.run_until_caught_up(timeout=30)
    f.close()
    before = len(entries(env.index))
    workload(env.s3, b, 40, seed=4)
    g = env.follower([b])
    g.run_until_caught_up(timeout=30)
    recs = entries(env.index)
    assert len({m.event_id for m in recs}) == len(recs) > before
    assert g.stats()["mutations_duplicate"] == 0
    assert_consistent_with_bucket(env, b, recs)


def test_full_sync_records_existing_objects_as_baseline_first(env: Env) -> None:
    s3 = env.s3
    plain = env.bucket()
    versioned = env.bucket(versioned=True)
    for i in range(30):
        s3.put_object(Bucket=plain, Key=f"p{i:02d}", Body=b"p" * i)
    v1 = s3.put_object(Bucket=versioned, Key="v", Body=b"1")["VersionId"]
    v2 = s3.put_object(Bucket=versioned, Key="v", Body=b"22")["VersionId"]
    dm = s3.delete_object(Bucket=versioned, Key="gone")["VersionId"]
    s3.put_object(Bucket=versioned, Key="x", Body=b"x")
    s3.delete_object(Bucket=versioned, Key="x")  # a marker on top of a version
    f = env.follower([plain, versioned])
    f.run_until_caught_up(timeout=60)
    recs = entries(env.index)
    assert all(m.baseline for m in recs)
    assert sorted((m.key, m.size) for m in recs if m.bucket == plain) == [(f"p{i:02d}", i) for i in range(30)]
    vrecs = sorted((m for m in recs if m.bucket == versioned), key=lambda m: (m.key, m.seq))
    assert [view(m) for m in vrecs if m.key in ("v", "gone")] == [
        ("delete_marker", "gone", dm),
        ("write", "v", v1),
        ("write", "v", v2),
    ]
    assert [m.op for m in vrecs if m.key == "x"] == [Op.WRITE, Op.DELETE_MARKER]
    # then incremental, ordered after the baseline of the same key
    s3.put_object(Bucket=plain, Key="p00", Body=b"after")
    f.run_until_caught_up(timeout=30)
    p00 = sorted((m for m in entries(env.index) if m.key == "p00"), key=lambda m: m.seq)
    assert [(m.baseline, m.size) for m in p00] == [(True, 0), (False, 5)]
    assert_consistent_with_bucket(env, plain, entries(env.index))
    assert_consistent_with_bucket(env, versioned, entries(env.index))


def test_full_sync_resumes_after_a_crash(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    for i in range(25):
        s3.put_object(Bucket=b, Key=f"k{i:02d}", Body=b"k")
    crashed: list[str] = []

    def crash(step: str) -> None:
        if step == "full.recorded" and len(crashed) < 2:
            crashed.append(step)
            raise RuntimeError("crash during full sync")

    import rgw_module.admin as admin_mod

    real = admin_mod.AdminClient.list_objects

    def small_pages(self: AdminClient, bucket: str, **kw: Any) -> Any:
        kw["max_keys"] = 4
        return real(self, bucket, **kw)

    admin_mod.AdminClient.list_objects = small_pages  # type: ignore[method-assign]
    try:
        for _ in range(5):
            g = env.follower([b], fault_hook=crash)
            try:
                g.run_until_caught_up(timeout=60)
                break
            except RuntimeError:
                g.close()
    finally:
        admin_mod.AdminClient.list_objects = real  # type: ignore[method-assign]
    recs = entries(env.index)
    assert len(crashed) == 2
    assert sorted(m.key for m in recs) == [f"k{i:02d}" for i in range(25)]
    assert all(m.baseline for m in recs)


def test_new_bucket_is_followed_exactly_from_its_first_entry(env: Env) -> None:
    anchor = env.bucket()
    b = f"fl-{uuid.uuid4().hex[:12]}"  # not there yet: learnt from the data log once written
    f = env.follower([anchor, b])
    f.run_until_caught_up(timeout=60)
    time.sleep(2.5)  # creation time must be clearly after the follower's first start
    env.s3.create_bucket(Bucket=b)
    for i in range(5):
        env.s3.put_object(Bucket=b, Key=f"n{i}", Body=b"n")
    env.s3.delete_object(Bucket=b, Key="n0")
    f.run_until_caught_up(timeout=60)
    recs = [m for m in entries(env.index) if m.bucket == b]
    assert sorted(view(m) for m in recs) == sorted(
        [("write", f"n{i}", None) for i in range(5)] + [("delete", "n0", None)]
    )
    assert not any(m.baseline for m in recs)
    assert f.status()["buckets"][b]["state"] == "incr"


def test_reshard_starts_a_new_generation(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b])
    f.run_until_caught_up(timeout=60)
    for i in range(10):
        s3.put_object(Bucket=b, Key=f"r{i}", Body=b"before")
    f.run_until_caught_up(timeout=30)
    old_id = env.admin.bucket_stats(b).bucket_id
    env.lab.radosgw_admin("bucket", "reshard", f"--bucket={b}", "--num-shards=17", "--yes-i-really-mean-it")
    new_id = env.admin.bucket_stats(b).bucket_id
    s3.put_object(Bucket=b, Key="r0", Body=b"after reshard")
    s3.delete_object(Bucket=b, Key="r1")
    f.run_until_caught_up(timeout=60)
    recs = entries(env.index)
    r0 = sorted((m for m in recs if m.key == "r0"), key=lambda m: m.seq)
    if env.lab.generations:
        # Reef and later reshard in place: same instance, a new log generation that starts empty
        # beside the old one. The old one is read to its end, then the new one from its start:
        # exact, no baseline, and the per-key order holds across the two.
        assert new_id == old_id
        assert [(m.seq[:9], m.baseline, m.size) for m in r0] == [("000001.1.", False, 6), ("000002.1.", False, 13)]
        assert [(m.op, m.seq[:9]) for m in recs if m.key == "r1"] == [(Op.WRITE, "000001.1."), (Op.DELETE, "000002.1.")]
        assert not [m for m in recs if m.baseline]
        st = f.status()["buckets"][b]
        assert (st["generation"], st["log_generation"], st["shards"]) == (2, 1, 17)
        assert len(recs) == 12 and len({m.event_id for m in recs}) == 12
    else:
        # Pacific: a new instance id; the old instance's log is gone with the reshard, so the
        # new generation starts with a baseline (a snapshot of the bucket), listed after the
        # markers of the new instance.
        assert new_id != old_id
        assert [(m.seq[:9], m.baseline, m.size) for m in r0] == [("000001.1.", False, 6), ("000002.0.", True, 13)]
        assert [m.seq[:9] for m in recs if m.key == "r1"] == ["000001.1."]  # deleted: absent from the snapshot
        assert sorted(m.key for m in recs if m.baseline) == [f"r{i}" for i in range(10) if i != 1]
        assert f.status()["buckets"][b]["generation"] == 2
    assert_consistent_with_bucket(env, b, recs)


def test_deleted_bucket_is_dropped_without_a_crash(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    keep = env.bucket()
    f = env.follower([b, keep], bucket_scan_interval=0.0)
    f.run_until_caught_up(timeout=60)
    s3.put_object(Bucket=b, Key="d", Body=b"d")
    f.run_until_caught_up(timeout=30)
    s3.delete_object(Bucket=b, Key="d")
    s3.delete_bucket(Bucket=b)
    s3.put_object(Bucket=keep, Key="k", Body=b"k")
    f.run_until_caught_up(timeout=30)
    assert f.status()["buckets"][b]["state"] == "gone"
    assert ("write", "k", None) in [view(m) for m in entries(env.index) if m.bucket == keep]


def test_prefixes_and_excluded_bucket(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    target = env.bucket()
    f = env.follower([b, target], prefixes={b: ["keep/"]}, exclude_buckets=[target])
    f.run_until_caught_up(timeout=60)
    for k in ("keep/1", "drop/1", "keepnot"):
        s3.put_object(Bucket=b, Key=k, Body=b"1")
    s3.put_object(Bucket=target, Key="log-object", Body=b"1")
    f.run_until_caught_up(timeout=30)
    recs = entries(env.index)
    assert [view(m) for m in recs if m.bucket in (b, target)] == [("write", "keep/1", None)]


def test_logs_are_trimmed_up_to_what_is_recorded(env: Env) -> None:
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b], trim_interval=0.0)
    f.run_until_caught_up(timeout=60)
    for i in range(20):
        s3.put_object(Bucket=b, Key=f"t{i}", Body=b"t")
    f.run_until_caught_up(timeout=30)
    f.sweep()  # the trim runs after the markers of the round were saved
    stats = env.admin.bucket_stats(b)
    left = [e for bs in stats.shards() for e in env.admin.bilog_list(bs)]
    assert left == []
    assert len([m for m in entries(env.index) if m.bucket == b]) == 20
    # a trim never goes past what is recorded: new entries stay until they are
    f.trim = False
    s3.put_object(Bucket=b, Key="late", Body=b"l")
    f.run_until_caught_up(timeout=30)
    f.trim = True
    assert [e["object"] for bs in stats.shards() for e in env.admin.bilog_list(bs)] == ["late"]


def test_caught_up_until_is_a_sweep_start(env: Env) -> None:
    b = env.bucket()
    f = env.follower([b])
    assert f.caught_up_until_us() is None
    before = time.time()
    r = f.run_until_caught_up(timeout=60)
    cu = f.caught_up_until()
    assert f.caught_up_until_us() == int(r.started * 1_000_000)
    assert cu is not None and before - 1 <= cu <= time.time()


def test_data_log_shard_prediction(env: Env) -> None:
    """With a bucket list the follower reads only the data-log shards radosgw logs those buckets
    to (mapping.datalog_shard); this is where radosgw put them."""
    from rgw_module.mapping import datalog_shard

    b = env.bucket()
    n = env.admin.datalog_shards()
    start = {i: env.admin.datalog_info(i) for i in range(n)}
    for i in range(40):
        env.s3.put_object(Bucket=b, Key=f"spread/{i}", Body=b"s")
    stats = env.admin.bucket_stats(b)
    seen: dict[int, int] = {}
    for i in range(n):
        page = env.admin.datalog_list(i, start[i])
        for e in page.entries:
            if e.shard.bucket == b:
                seen[e.shard.shard] = i
    assert len(seen) >= 5
    assert seen == {s: datalog_shard(b, s, n) for s in seen}
    assert stats.num_shards == 11


def test_crash_at_the_generation_switch_loses_nothing(env: Env) -> None:
    """A follower that dies right after it saw a newer log generation, or right after it
    trimmed the old one and before it wrote the switch, resumes from its persisted state: every
    mutation once, in per-key order. (Pacific reshards to a new instance: no switch, a baseline.)"""
    s3 = env.s3
    b = env.bucket()
    f = env.follower([b])
    f.run_until_caught_up(timeout=60)
    workload(s3, b, 80, seed=5)
    f.run_until_caught_up(timeout=60)
    env.lab.radosgw_admin("bucket", "reshard", f"--bucket={b}", "--num-shards=13", "--yes-i-really-mean-it")
    workload(s3, b, 80, seed=6)
    f.close()

    # A BaseException, as a real crash: an Exception raised in the data-log reader's worker
    # pool would be handed back as that shard's error and the sweep would carry on.
    class Crash(BaseException):
        pass

    fired: list[str] = []

    def crash_once(step: str) -> None:
        if step in ("closing", "advance") and step not in fired:
            fired.append(step)
            raise Crash(step)

    for _attempt in range(5):
        g = env.follower([b], fault_hook=crash_once)
        try:
            g.run_until_caught_up(timeout=60)
            break
        except Crash:
            g.close()
    else:
        pytest.fail("the follower never caught up")
    recs = entries(env.index)
    assert len({m.event_id for m in recs}) == len(recs), "an event was recorded twice"
    if env.lab.generations:
        assert fired == ["closing", "advance"]
        assert not [m for m in recs if m.baseline]
        assert {m.seq[:9] for m in recs} == {"000001.1.", "000002.1."}
        st = g.status()["buckets"][b]
        assert (st["generation"], st["log_generation"], st["shards"]) == (2, 1, 13)
    else:
        assert fired == []
    assert_consistent_with_bucket(env, b, recs)
