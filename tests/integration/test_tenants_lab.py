"""Tenants' buckets and bucket records on the real lab (Pacific, Reef, Tentacle).

A tenant user's PUTs and DELETEs become records with ``tenant`` set; the source filters name a
tenant's bucket ``tenant/bucket``; a bucket gets a ``bucket_create`` before its first record and,
deleted right after its last DELETE (its bucket-index log gone before the follower reads it), a
``bucket_delete`` after its last record. A full sync of a tenant's bucket lists it over S3 as
``tenant:bucket``, which radosgw allows a system user only: the follower runs as one here (the
lab's own user is not), and the non-system user's refusal is checked to say so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from changelog.config import SourceConfig
from changelog.errors import PermanentError
from changelog.pipeline.index import ChangeIndex, Entry
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.s3client import make_s3_client
from rgw_module.admin import AdminClient
from rgw_module.follower import Follower
from tests.lab import S3_REGION, S3_TIMEOUT, Lab, tear_down

pytestmark = pytest.mark.ceph

TENANT = "t1"
TENANT_USER = ("u1", "T1KEY", "T1SECRET")
# The follower's own user: admin caps, and a system user (a full sync lists other users' and
# tenants' buckets over S3).
FOLLOWER_USER = ("changelog-follower", "FOLLOWKEY", "FOLLOWSECRET")
FOLLOWER_CAPS = "buckets=read;metadata=read;datalog=*;bilog=*"


def _ensure_user(lab: Lab, *args: str) -> None:
    try:
        lab.radosgw_admin("user", "create", *args)
    except RuntimeError as ex:
        if "exists" not in str(ex).lower():
            raise


@dataclass
class Env:
    lab: Lab
    index: ChangeIndex
    admin: AdminClient  # the follower's (system) user
    tenant_s3: Any  # the tenant user's S3 client
    s3: Any  # the lab user's S3 client (no tenant)
    followers: list[Follower]

    def follower(self, buckets: list[str], **settings: object) -> Follower:
        opts: dict[str, object] = {"poll_interval": 0.2, "trim_datalog": False, "lease_ttl": 10.0, "object_info": "none"}
        opts.update(settings)
        f = Follower(self.index, self.admin, SourceConfig.unchecked(buckets=buckets, **opts))
        assert f.acquire()
        self.followers.append(f)
        return f

    def tenant_bucket(self, *, after: Follower | None = None, name: str | None = None) -> str:
        """A new bucket of the tenant user (``name``, or a new one); returns its name within the
        tenant. ``after``: made clearly after that follower's first start (followed from its
        first entry, no baseline)."""
        if after is not None:
            # A follower of "*" starts with a full sync of every bucket the session's lab holds
            # by now (thousands of objects after the other lab tests): a bound, not a figure.
            after.run_until_caught_up(timeout=300)
            time.sleep(2.5)
        name = name or new_name()
        self.tenant_s3.create_bucket(Bucket=name)
        return name


def new_name() -> str:
    return f"tn-{uuid.uuid4().hex[:12]}"


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


@pytest.fixture
def env(users: Lab, s3_client: Any) -> Iterator[Env]:
    from changelog.pipeline.backends.rados import RadosStore

    lab = users
    ns = f"test-tenants-{uuid.uuid4().hex[:10]}"
    store = RadosStore(conffile=lab.conf, pool=lab.pool, namespace=ns, keyring=lab.keyring or None)
    index = ChangeIndex(store, shards=8)
    admin = AdminClient(lab.rgw_endpoint, FOLLOWER_USER[1], FOLLOWER_USER[2])
    tenant_s3 = make_s3_client(
        lab.rgw_endpoint, access_key=TENANT_USER[1], secret_key=TENANT_USER[2], region=S3_REGION, max_attempts=3,
        connect_timeout=S3_TIMEOUT, read_timeout=S3_TIMEOUT,
    )
    e = Env(lab, index, admin, tenant_s3, s3_client, [])
    try:
        yield e
    finally:
        tear_down(e.followers, store, admin)


def arrivals(index: ChangeIndex, tenant: str, bucket: str) -> list[Entry]:
    """The records of one bucket in arrival order (their index time)."""
    out = [
        e
        for n in range(index.shards)
        for e in index.scan(n)
        if e.mutation.tenant == tenant and e.mutation.bucket == bucket
    ]
    return sorted(out, key=lambda e: e.time_us)


def view(m: Mutation) -> tuple[str, str, bool]:
    return (m.op.value, m.key, m.baseline)


def test_a_tenant_users_puts_and_deletes_are_records_of_its_tenant(env: Env) -> None:
    # Named before it exists (a follower of "*" would full-sync the whole lab first: minutes in
    # CI; test_schema1_lab.py follows "*" with a tenant's buckets); found through the data log.
    b = new_name()
    f = env.follower([f"{TENANT}/{b}"])
    env.tenant_bucket(after=f, name=b)
    env.tenant_s3.put_object(Bucket=b, Key="k1", Body=b"one")
    env.tenant_s3.put_object(Bucket=b, Key="k2", Body=b"two")
    env.tenant_s3.delete_object(Bucket=b, Key="k1")
    f.run_until_caught_up(timeout=60)
    recs = [e.mutation for e in arrivals(env.index, TENANT, b)]
    assert [view(m) for m in recs if m.op.of_bucket] == [("bucket_create", "", False)]
    assert recs[0].op is Op.BUCKET_CREATE  # before every record of the bucket
    assert sorted(view(m) for m in recs if not m.op.of_bucket) == [
        ("delete", "k1", False), ("write", "k1", False), ("write", "k2", False)
    ]  # fmt: skip
    assert {(m.tenant, m.bucket) for m in recs} == {(TENANT, b)}
    assert all(m.source.startswith((f"rgw:{TENANT}/{b}:", f"rgw-bucket:{TENANT}/{b}:")) for m in recs)
    assert f"{TENANT}/{b}" in f.status()["buckets"]  # type: ignore[operator]
    assert f.stats()["not_followed"] == {}


def test_filters_name_a_tenants_bucket_tenant_slash_bucket(env: Env) -> None:
    b = env.tenant_bucket()
    env.s3.create_bucket(Bucket=b)  # the same name, no tenant: not followed
    f = env.follower([f"{TENANT}/{b}"], prefixes={f"{TENANT}/{b}": ["keep/"]})
    f.run_until_caught_up(timeout=60)
    env.tenant_s3.put_object(Bucket=b, Key="keep/1", Body=b"1")
    env.s3.put_object(Bucket=b, Key="keep/2", Body=b"2")
    f.run_until_caught_up(timeout=60)
    recs = [e.mutation for n in range(env.index.shards) for e in env.index.scan(n)]
    assert sorted((m.tenant, m.op.value, m.key) for m in recs) == [
        (TENANT, "bucket_create", ""), (TENANT, "write", "keep/1")
    ]  # fmt: skip


def test_an_existing_tenants_bucket_gets_a_baseline_over_s3(env: Env) -> None:
    b = env.tenant_bucket()
    for k in ("a", "b"):
        env.tenant_s3.put_object(Bucket=b, Key=k, Body=k.encode())
    f = env.follower([f"{TENANT}/{b}"])
    f.run_until_caught_up(timeout=60)
    recs = [e.mutation for e in arrivals(env.index, TENANT, b)]
    assert [view(m) for m in recs] == [("bucket_create", "", True), ("write", "a", True), ("write", "b", True)]
    assert [m.size for m in recs[1:]] == [1, 1]


def test_a_full_sync_of_a_tenants_bucket_needs_a_system_user(env: Env) -> None:
    b = env.tenant_bucket()
    env.tenant_s3.put_object(Bucket=b, Key="a", Body=b"a")
    plain = AdminClient(env.lab.rgw_endpoint, env.lab.access_key, env.lab.secret_key)  # not a system user
    try:
        with pytest.raises(PermanentError, match="system user"):
            plain.list_objects(f"{TENANT}/{b}", versions=False)
    finally:
        plain.close()


def test_a_bucket_deleted_right_after_its_last_delete_ends_with_bucket_delete(env: Env) -> None:
    # Named before it exists (a follower of "*" would full-sync the whole lab first: minutes in
    # CI); found through the data log once created.
    b = new_name()
    f = env.follower([f"{TENANT}/{b}"])
    env.tenant_bucket(after=f, name=b)
    keys = [f"k{i}" for i in range(8)]
    for k in keys:
        env.tenant_s3.put_object(Bucket=b, Key=k, Body=b"x")
    f.run_until_caught_up(timeout=60)
    for k in keys:
        env.tenant_s3.delete_object(Bucket=b, Key=k)
    env.tenant_s3.delete_bucket(Bucket=b)  # a few ms after the last DELETE: its log goes with it
    f.run_until_caught_up(timeout=60)
    recs = arrivals(env.index, TENANT, b)
    ops = [view(e.mutation) for e in recs if e.mutation.op.of_bucket]
    assert ops == [("bucket_create", "", False), ("bucket_delete", "", False)]
    last = recs[-1]
    assert last.mutation.op is Op.BUCKET_DELETE
    assert all(e.mutation.seq < last.mutation.seq for e in recs[:-1])
    assert all(e.time_us < last.time_us for e in recs[:-1])
    assert f.status()["buckets"][f"{TENANT}/{b}"]["state"] == "gone"  # type: ignore[index]
    assert f.stats()["instances_lost"] == 0
    # Created again: a new bucket lifetime, a new bucket_create before its records.
    env.tenant_s3.create_bucket(Bucket=b)
    env.tenant_s3.put_object(Bucket=b, Key="again", Body=b"y")
    f.run_until_caught_up(timeout=60)
    later = [e.mutation for e in arrivals(env.index, TENANT, b)][len(recs) :]
    assert [view(m) for m in later] == [("bucket_create", "", False), ("write", "again", False)]
    assert later[0].source != last.mutation.source
    env.tenant_s3.delete_object(Bucket=b, Key="again")
    env.tenant_s3.delete_bucket(Bucket=b)


def test_a_tenants_bucket_resharded_is_followed_across_the_reshard(env: Env) -> None:
    # Named before it exists (a follower of "*" would full-sync the whole lab first: minutes in
    # CI); found through the data log once created.
    b = new_name()
    f = env.follower([f"{TENANT}/{b}"])
    env.tenant_bucket(after=f, name=b)
    for i in range(6):
        env.tenant_s3.put_object(Bucket=b, Key=f"r{i}", Body=b"before")
    f.run_until_caught_up(timeout=60)
    old_id = env.admin.bucket_stats(f"{TENANT}/{b}").bucket_id
    env.lab.radosgw_admin("bucket", "reshard", f"--bucket={TENANT}/{b}", "--num-shards=7", "--yes-i-really-mean-it")
    env.tenant_s3.put_object(Bucket=b, Key="r0", Body=b"after")
    env.tenant_s3.delete_object(Bucket=b, Key="r1")
    f.run_until_caught_up(timeout=60)
    recs = [e.mutation for e in arrivals(env.index, TENANT, b)]
    # The same bucket: no bucket op but its create, whatever the reshard did to its instance.
    assert [m.op for m in recs if m.op.of_bucket] == [Op.BUCKET_CREATE]
    r0 = sorted((m for m in recs if m.key == "r0"), key=lambda m: m.seq)
    state = f.status()["buckets"][f"{TENANT}/{b}"]  # type: ignore[index]
    if env.lab.generations:  # in place: the old generation read to its end, then the new one
        assert env.admin.bucket_stats(f"{TENANT}/{b}").bucket_id == old_id
        assert [(m.seq[:9], m.baseline) for m in r0] == [("000001.1.", False), ("000002.1.", False)]
        assert [m.op for m in sorted((m for m in recs if m.key == "r1"), key=lambda m: m.seq)] == [Op.WRITE, Op.DELETE]
        assert (state["log_generation"], state["shards"]) == (1, 7)
    else:  # Pacific: a new instance, a baseline of it
        assert state["bucket_id"] != old_id
        assert [(m.seq[:9], m.baseline) for m in r0] == [("000001.1.", False), ("000002.0.", True)]
    assert all(m.tenant == TENANT for m in recs)
