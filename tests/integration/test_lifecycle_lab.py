"""Lifecycle (issue 20) end to end: `rgw-changelog serve` with follower, collector and
`[lifecycle]` on the lab's radosgw, days compressed to ``DAY`` seconds.

Buckets: an unversioned one (objects written before serve first starts, so scheduled from their
baseline, a prefix rule and a tag rule), a versioned one (expiry with delete markers, noncurrent
expiry counted from when a version became noncurrent), a versioned one of many objects due at once
(the crash bucket), and, when the lab can have a second storage class (``cold_class`` adds
``COLD`` to the default placement and restarts radosgw), an unversioned and a versioned bucket
with a transition rule. Checked:

* at quiescence every key's versions equal what S3 lifecycle would leave, computed from our own
  ledger of writes (``expected``): expired, marked, noncurrent-expired and transitioned exactly
  where S3 would (one version in ``COLD`` per transitioned key, in a versioned bucket too), a
  delete marker left alone under an expiry rule removed (so every key of the versioned bucket's
  ``v/`` is gone), and
  the schedule holds only what is not due yet, with nothing failed;
* keys overwritten or deleted after their entry was scheduled (while serve was down, so the
  executor meets the stale entry first): the newer version is never removed before its own due
  time (a watcher HEADs it all along); a noncurrent version is never removed before its
  superseding write plus the noncurrent days;
* serve SIGKILLed >= 2 times while the executor deletes the crash bucket's objects: every object
  ends with exactly one delete marker over its version (nothing forgotten, no second marker);
* the shapes of `lifecycle status --json`, `lifecycle plan --json`, `lifecycle failed --json`
  and GET /_/lifecycle/status and /_/lifecycle/plan.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab, add_storage_class

pytestmark = pytest.mark.ceph

REPO = Path(__file__).resolve().parents[2]
LOG_PREFIX = "logs"
DAY = 2.0  # seconds in a lifecycle "day" ([lifecycle] day_seconds)
COLD = "COLD"  # the second storage class the transition rules move to
FOLLOWER_USER = ("lc-follower", "LCFOLLOWKEY", "LCFOLLOWSECRET")
FOLLOWER_CAPS = "buckets=read;metadata=read;datalog=*;bilog=*"
# A rule this long is never due while the test runs (its entries stay scheduled).
HORIZON_DAYS = 500
CRASH_OBJECTS = 400
KILLS = 3
# Plenty of executor batches for the crash bucket, so kills land between them.
BATCH, DELETE_BATCH = 40, 10
# Parallel re-checks, but few, and the actions paced ([lifecycle] max_actions_per_second): the
# kills must land mid-bucket. Unpaced, the crash bucket's 400 objects were done within one or two
# kill windows (with 8 workers 1 run in 7 at load ~20: [0, 369, 400]; with 2, CI's Tentacle lane:
# [0, 296, 400]); at 40 a second they take 10 s, and a kill window is one listing of the bucket.
WORKERS = 2
MAX_RATE = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- lab setup


@pytest.fixture(scope="module")
def cold_class(ceph_lab: Lab) -> str | None:
    """Why transitions cannot be tested on this lab, or None once the default placement has a
    ``COLD`` storage class (``add_storage_class``: radosgw restarted)."""
    return add_storage_class(ceph_lab, COLD, data_pool="default.rgw.cold.data")


@pytest.fixture(scope="module")
def follower(ceph_lab: Lab) -> Lab:
    fid, fkey, fsecret = FOLLOWER_USER
    try:
        ceph_lab.radosgw_admin("user", "create", "--uid", fid, "--display-name", fid, "--access-key", fkey,
                               "--secret-key", fsecret, "--system")  # fmt: skip
    except RuntimeError as ex:
        if "exists" not in str(ex).lower():
            raise
    ceph_lab.radosgw_admin("caps", "add", "--uid", fid, f"--caps={FOLLOWER_CAPS}")
    return ceph_lab


# --------------------------------------------------------------------------- serve


@dataclass
class Serving:
    """`rgw-changelog serve` with `[lifecycle]` enabled, (re)started and killed by the test. The
    follower reads with its own user; the executor acts with the bucket owner's keys."""

    lab: Lab
    tmp: Path
    ns: str
    log_bucket: str
    buckets: list[str]
    rules: str
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
interval = 0.3
settle = 0.3
lease_ttl = 3.0
roll_seconds = 1

[lifecycle]
enabled = true
endpoint = "{self.lab.rgw_endpoint}"
access_key = "{self.lab.access_key}"
secret_key = "{self.lab.secret_key}"
region = "default"
day_seconds = {DAY}
shards = 4
batch = {BATCH}
delete_batch = {DELETE_BATCH}
workers = {WORKERS}
max_actions_per_second = {MAX_RATE}
poll_interval = 0.3
uploads_interval = 0.5
lease_ttl = 3.0
{self.rules}
[api]
listen = "127.0.0.1:{self.port}"

[logging]
level = "INFO"
"""
        )
        return path

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(self.config()), *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return json.loads(res.stdout)

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
            time.sleep(0.1)
        pytest.fail(f"serve API did not come up\n{self.log_tail()}")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)

    def log_tail(self) -> str:
        logs = sorted(self.tmp.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:] for p in logs[-2:])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def lifecycle_stats(self) -> dict[str, Any]:
        consumers = self.get("/_/status").get("consumers") or {}
        return dict((consumers.get("lifecycle") or {}).get("live") or {})


@pytest.fixture
def serving(follower: Lab, s3_client: Any, tmp_path: Path) -> Iterator[Any]:
    from changelog.pipeline.backends.rados import RadosStore

    made: list[Serving] = []

    def make(buckets: list[str], rules: str) -> Serving:
        tag = uuid.uuid4().hex[:10]
        log_bucket = f"lc-logs-{tag}"
        s3_client.create_bucket(Bucket=log_bucket)
        s = Serving(follower, tmp_path, f"test-lifecycle-{tag}", log_bucket, buckets, rules)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.kill()
            store = RadosStore(conffile=follower.conf, pool=follower.pool, namespace=s.ns,
                               keyring=follower.keyring or None)  # fmt: skip
            for oid in store.list_objects():
                store.remove_object(oid)
            store.close()


# --------------------------------------------------------------------------- the ledger and the model


@dataclass(frozen=True)
class RuleSpec:
    bucket: str
    prefix: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    expire: int | None = None
    noncurrent: int | None = None
    transition: int | None = None

    def toml(self) -> str:
        lines = ["[[lifecycle.rules]]", f'bucket = "{self.bucket}"', f'prefix = "{self.prefix}"']
        if self.tags:
            lines.append("tags = { " + ", ".join(f'{k} = "{v}"' for k, v in self.tags) + " }")
        if self.expire is not None:
            lines.append(f"expire_days = {self.expire}")
        if self.noncurrent is not None:
            lines.append(f"noncurrent_expire_days = {self.noncurrent}")
        if self.transition is not None:
            lines += [f"transition_days = {self.transition}", f'storage_class = "{COLD}"']
        return "\n".join(lines) + "\n"

    def matches(self, key: str, tags: dict[str, str]) -> bool:
        return key.startswith(self.prefix) and all(tags.get(k) == v for k, v in self.tags)


@dataclass
class Version:
    """One entry of a key's stack as we wrote it: an object version or a delete marker."""

    vid: str | None
    etag: str | None  # None: a delete marker
    t: float  # wall time just before the request: a lower bound of its mtime
    tags: dict[str, str] = field(default_factory=dict)


class Ledger:
    """Every write and delete the test made, per key, in S3's stack order (oldest first)."""

    def __init__(self, s3: Any, versioned: set[str]) -> None:
        self.s3 = s3
        self.versioned = versioned
        self.stack: dict[tuple[str, str], list[Version]] = {}

    def put(self, bucket: str, key: str, body: bytes, tags: dict[str, str] | None = None) -> Version:
        t = time.time()
        kw: dict[str, Any] = {"Tagging": "&".join(f"{k}={v}" for k, v in tags.items())} if tags else {}
        r = self.s3.put_object(Bucket=bucket, Key=key, Body=body, **kw)
        v = Version(r.get("VersionId"), r["ETag"].strip('"'), t, dict(tags or {}))
        if bucket in self.versioned:
            self.stack.setdefault((bucket, key), []).append(v)
        else:
            self.stack[(bucket, key)] = [v]
        return v

    def delete(self, bucket: str, key: str, vid: str | None = None) -> float:
        t = time.time()
        r = self.s3.delete_object(Bucket=bucket, Key=key, **({"VersionId": vid} if vid else {}))
        st = self.stack.setdefault((bucket, key), [])
        if vid is not None:
            st[:] = [v for v in st if v.vid != vid]
        elif bucket in self.versioned:
            st.append(Version(r.get("VersionId"), None, t))
        else:
            st.clear()
        return t


# A key's versions as compared: the current one, then the others as a sorted list (listings give
# whole seconds, so their order within a second is unknown). ("v", etag, class) or ("m",).
Shape = tuple[tuple[str, ...] | None, list[tuple[str, ...]]]


def expected(ledger: Ledger, rules: list[RuleSpec], bucket: str, key: str) -> Shape:
    """What S3 lifecycle leaves of the key once everything due has been acted on (the rules here
    converge: expiry, then the noncurrent expiry of what expiry made noncurrent (delete markers
    included, as radosgw's ``LCOpAction_NonCurrentExpiration`` removes them), then the removal
    of a delete marker left as the key's only version, an expired object delete marker, under an
    expiry rule; a rule of ``HORIZON_DAYS`` is never due). radosgw's own lifecycle leaves the
    same (rgw_lc.cc: ``LCOpAction_CurrentExpiration`` removes a current delete marker whose key
    has no other version, whatever the rule's tags: ``LCOpFilter_Tags`` passes markers)."""
    versioned = bucket in ledger.versioned
    mine = [r for r in rules if r.bucket == bucket]
    stack = ledger.stack.get((bucket, key), [])
    items: list[tuple[str, ...]] = [("v", v.etag, "STANDARD") if v.etag else ("m",) for v in stack]
    cur = stack[-1] if stack else None
    if cur is not None and cur.etag is not None:
        if any(r.expire is not None and r.expire < HORIZON_DAYS and r.matches(key, cur.tags) for r in mine):
            items = [*items, ("m",)] if versioned else []
        elif any(r.transition is not None and r.matches(key, cur.tags) for r in mine):
            items[-1] = ("v", cur.etag, COLD)
    if versioned and any(r.noncurrent is not None and r.matches(key, {}) for r in mine):
        items = items[-1:]  # noncurrent delete markers too (``LCOpAction_NonCurrentExpiration``)
    if items == [("m",)] and any(
        r.expire is not None and r.expire < HORIZON_DAYS and key.startswith(r.prefix) for r in mine
    ):
        items = []  # an expired object delete marker
    if not items:
        return None, []
    return items[-1], sorted(items[:-1])


def observed(s3: Any, bucket: str) -> dict[str, Shape]:
    out: dict[str, tuple[tuple[str, ...] | None, list[tuple[str, ...]]]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            item = ("v", v["ETag"].strip('"'), v.get("StorageClass") or "STANDARD")
            _place(out, v["Key"], item, bool(v.get("IsLatest")))
        for m in page.get("DeleteMarkers", []):
            _place(out, m["Key"], ("m",), bool(m.get("IsLatest")))
    return {k: (cur, sorted(rest)) for k, (cur, rest) in out.items()}


def _place(out: dict[str, Any], key: str, item: tuple[str, ...], latest: bool) -> None:
    cur, rest = out.setdefault(key, (None, []))
    if latest:
        out[key] = (item, rest)
    else:
        rest.append(item)


# --------------------------------------------------------------------------- the watcher


@dataclass(frozen=True)
class Watch:
    """``bucket/key`` must show ``etag`` as its current version (``vid`` None), or version ``vid``
    must exist, at least until ``until`` (a lower bound of its due time)."""

    bucket: str
    key: str
    etag: str
    until: float
    vid: str | None = None


class Watcher:
    """HEADs every watched version in a loop and records each one seen gone before its time."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.watches: list[Watch] = []
        self.violations: list[str] = []
        self.looks = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, w: Watch) -> None:
        self.watches = [*self.watches, w]

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for w in self.watches:
                if time.time() < w.until:
                    self._look(w)

    def _look(self, w: Watch) -> None:
        kw: dict[str, Any] = {"VersionId": w.vid} if w.vid else {}
        try:
            etag = self.s3.head_object(Bucket=w.bucket, Key=w.key, **kw)["ETag"].strip('"')
        except Exception as ex:  # noqa: BLE001 - a 404 is what is looked for; any error is reported
            etag = f"<{type(ex).__name__}: {ex}>"
        seen = time.time()
        self.looks += 1
        if etag != w.etag and seen < w.until:
            self.violations.append(
                f"{w.bucket}/{w.key} {w.vid or 'current'}: {etag} at {w.until - seen:.1f}s before its due time"
            )


# --------------------------------------------------------------------------- helpers


def wait_for(what: str, cond: Any, srv: Serving, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if srv.procs and srv.procs[-1].poll() is not None:
            pytest.fail(f"serve exited with {srv.procs[-1].returncode}\n{srv.log_tail()}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:.0f}s; lifecycle {srv.lifecycle_stats()}\n{srv.log_tail()}")


def check_shapes(srv: Serving, bucket: str) -> None:
    """`lifecycle status --json`, `plan --json`, `failed --json` and the API's status and plan."""
    counts = {"due_now", "scheduled_later", "failed", "by_action", "next_due"}
    api = srv.get("/_/lifecycle/status")
    assert counts | {"dry_run", "done"} <= set(api), api
    assert api["dry_run"] is False
    assert {
        "expired", "noncurrent_expired", "markers_expired", "transitioned", "skipped", "failed", "requests"
    } <= set(api["done"])  # fmt: skip
    cli = srv.cli_json("lifecycle", "status", "--json")
    assert counts <= set(cli), cli
    for doc in (api, cli):
        assert all(isinstance(doc[k], int) for k in ("due_now", "scheduled_later", "failed"))
        for per in doc["by_action"].values():
            assert set(per) == {"due_now", "later", "failed"}
    actions = srv.cli_json("lifecycle", "plan", "--json", "--bucket", bucket)
    assert actions, f"no action scheduled in {bucket}"
    fields = {"due", "action", "tenant", "bucket", "key", "version_id", "rule", "storage_class"}
    assert all(set(a) == fields and a["bucket"] == bucket for a in actions), actions[:3]
    assert [a["due"] for a in actions] == sorted(a["due"] for a in actions), "plan not earliest first"
    assert {a["action"] for a in actions} <= {"expire", "noncurrent", "transition", "expire_marker"}
    assert srv.cli_json("lifecycle", "plan", "--json", "--until", "1970-01-02T00:00:00Z") == []
    assert all(set(a) == fields for a in srv.get("/_/lifecycle/plan")["actions"])


def wait_quiet(srv: Serving, s3: Any, ledger: Ledger, rules: list[RuleSpec], buckets: list[str]) -> None:
    """Until every bucket looks as the model says and nothing is left in the schedule."""

    def done() -> bool:
        doc = srv.get("/_/lifecycle/status")
        if doc["due_now"] or doc["scheduled_later"] != 1 or doc["failed"]:
            return False
        return all(diff(s3, ledger, rules, b) == {} for b in buckets)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not done():
        assert srv.procs[-1].poll() is None, srv.log_tail()
        time.sleep(0.5)
    for b in buckets:
        assert diff(s3, ledger, rules, b) == {}, f"{b}: observed != S3 lifecycle's model\n{srv.log_tail()}"
    doc = srv.get("/_/lifecycle/status")
    # late/0's expiry only, due long after the test
    assert (doc["due_now"], doc["scheduled_later"], doc["failed"]) == (0, 1, 0), doc


def diff(s3: Any, ledger: Ledger, rules: list[RuleSpec], bucket: str) -> dict[str, tuple[Shape, Shape]]:
    seen = observed(s3, bucket)
    keys = {k for b, k in ledger.stack if b == bucket} | set(seen)
    out = {}
    for k in sorted(keys):
        want, got = expected(ledger, rules, bucket, k), seen.get(k, (None, []))
        if want != got:
            out[k] = (want, got)
    return out


# --------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class Buckets:
    """The test's buckets; ``cold`` and ``coldv`` only when the lab has the ``COLD`` class."""

    plain: str
    vers: str
    crash: str
    cold: str
    coldv: str
    transitions: bool

    @property
    def all(self) -> list[str]:
        return [self.plain, self.vers, self.crash, *([self.cold, self.coldv] if self.transitions else [])]

    def rules(self) -> list[RuleSpec]:
        rules = [
            RuleSpec(self.plain, "tmp/", expire=4),
            RuleSpec(self.plain, "tag/", tags=(("class", "scratch"),), expire=3),
            RuleSpec(self.plain, "late/", expire=HORIZON_DAYS),
            RuleSpec(self.vers, "v/", expire=3, noncurrent=1),
            RuleSpec(self.crash, "", expire=1),
        ]
        if self.transitions:
            rules += [RuleSpec(self.cold, "cold/", transition=1), RuleSpec(self.coldv, "cold/", transition=1)]
        return rules


def workload(ledger: Ledger, bk: Buckets) -> None:
    """Writes made while serve follows (tmp/r0, tag/s1, tag/s2 and v/n are raced later)."""
    plain, vers = bk.plain, bk.vers
    # The unversioned bucket: the prefix rule, the tag rule, keys no rule names.
    ledger.put(plain, "tmp/r0", b"r0-1")
    ledger.put(plain, "late/0", b"late")
    for name, tags in (("s0", {"class": "scratch"}), ("s1", {"class": "scratch"}), ("s2", {"class": "scratch"}),
                       ("o0", {"class": "other"}), ("n0", {})):  # fmt: skip
        ledger.put(plain, f"tag/{name}", name.encode(), tags)
    # The versioned bucket: an overwrite, a user's delete marker, a version deleted by id (the
    # one below is current again), a key no rule names.
    for body in (b"a1", b"a2"):
        ledger.put(vers, "v/a", body)
    ledger.put(vers, "v/b", b"b1")
    ledger.delete(vers, "v/b")
    ledger.put(vers, "v/c", b"c1")
    c2 = ledger.put(vers, "v/c", b"c2")
    ledger.delete(vers, "v/c", c2.vid)
    ledger.put(vers, "v/n", b"n1")
    for body in (b"x1", b"x2"):
        ledger.put(vers, "other/x", body)
    if bk.transitions:
        for b in (bk.cold, bk.coldv):
            for i in range(3):
                ledger.put(b, f"cold/{i}", f"{b}-{i}".encode() * 50)
            ledger.put(b, "warm/0", b"warm")


def race_while_down(srv: Serving, ledger: Ledger, watcher: Watcher, bk: Buckets) -> None:
    """Overwrite or delete keys after their entries were scheduled, while serve is down, and
    restart it once those entries are due: its first batch meets the stale entries before the
    records that supersede them, and must drop them."""
    plain, vers = bk.plain, bk.vers
    seen: set[tuple[str, str]] = set()
    racing = {(plain, "tmp/r0"), (plain, "tag/s1"), (plain, "tag/s2"), (vers, "v/n")}

    def scheduled() -> bool:
        seen.update((a["bucket"], a["key"]) for a in srv.get("/_/lifecycle/plan")["actions"])
        return racing <= seen

    wait_for("entries scheduled", scheduled, srv, 30)
    srv.kill()
    r0_first, n1 = ledger.stack[(plain, "tmp/r0")][-1], ledger.stack[(vers, "v/n")][-1]
    r0 = ledger.put(plain, "tmp/r0", b"r0-2")
    watcher.add(Watch(plain, "tmp/r0", str(r0.etag), r0.t + 4 * DAY))
    s1 = ledger.put(plain, "tag/s1", b"s1-2 untagged")
    ledger.delete(plain, "tag/s2")
    s2 = ledger.put(plain, "tag/s2", b"s2-2 untagged")
    n2 = ledger.put(vers, "v/n", b"n2")  # v/n's first version noncurrent from now
    watcher.add(Watch(vers, "v/n", str(n1.etag), n2.t + 1 * DAY, vid=n1.vid))
    watcher.add(Watch(vers, "v/n", str(n2.etag), n2.t + 3 * DAY))
    forever = time.time() + 3600
    for v, key in ((s1, "tag/s1"), (s2, "tag/s2")):
        watcher.add(Watch(plain, key, str(v.etag), forever))
    watcher.thread.start()
    time.sleep(max(0.0, r0_first.t + 4 * DAY - time.time()) + 0.5)
    srv.start()
    # Its first batch met the stale entries of tmp/r0, tag/s1 and tag/s2 and dropped them.
    wait_for("stale entries skipped", lambda: int(srv.lifecycle_stats().get("skipped") or 0) >= 3, srv, 20)


def test_lifecycle_acts_as_s3_would_through_races_and_crashes(
    follower: Lab, cold_class: str | None, s3_client: Any, serving: Any
) -> None:
    s3 = s3_client
    tag = uuid.uuid4().hex[:8]
    bk = Buckets(f"lc-plain-{tag}", f"lc-vers-{tag}", f"lc-crash-{tag}", f"lc-cold-{tag}", f"lc-coldv-{tag}",
                 transitions=cold_class is None)  # fmt: skip
    if cold_class is not None:
        print(f"transitions not tested: {cold_class}")
    rules = bk.rules()
    ledger = Ledger(s3, {bk.vers, bk.crash, bk.coldv})
    watcher = Watcher(s3)

    # Before serve first starts: scheduled from the follower's baseline, by their mtime.
    s3.create_bucket(Bucket=bk.plain)
    for i in range(5):
        ledger.put(bk.plain, f"tmp/p{i}", b"p" * (i + 1))
    for i in range(3):
        ledger.put(bk.plain, f"keep/{i}", b"k" * (i + 1))

    srv = serving(bk.all, "".join(r.toml() for r in rules))
    srv.start()
    wait_for("follower caught up", lambda: ((srv.get("/_/status").get("follower") or {}).get("live") or {})
             .get("caught_up_until"), srv, 60)  # fmt: skip
    for b in bk.all[1:]:
        s3.create_bucket(Bucket=b)
        if b in ledger.versioned:
            s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    workload(ledger, bk)
    race_while_down(srv, ledger, watcher, bk)

    # The crash bucket: every object due at once; serve killed while the executor deletes them.
    with_marker = crash_phase(srv, s3, ledger, bk.crash)

    wait_quiet(srv, s3, ledger, rules, bk.all)
    check_shapes(srv, bk.plain)
    watcher.stop.set()
    watcher.thread.join(10)
    assert not watcher.violations, watcher.violations
    assert watcher.looks > 0
    assert srv.cli_json("lifecycle", "failed", "--json") == []
    if bk.transitions:
        # The copy in place kept the content (the ETag, compared by the model, and the bytes).
        assert s3.get_object(Bucket=bk.cold, Key="cold/0")["Body"].read() == f"{bk.cold}-0".encode() * 50
    print(f"crash kills: objects with a marker after each: {with_marker}; stats {srv.lifecycle_stats()}")


def crash_phase(srv: Serving, s3: Any, ledger: Ledger, crash: str) -> list[int]:
    """Write ``CRASH_OBJECTS`` objects due one day later, then SIGKILL serve each time its
    executor has expired some of them (and not all), ``KILLS`` times; returns how many carried a
    delete marker after each kill. At least two kills must land with the bucket half done."""
    for i in range(CRASH_OBJECTS):
        ledger.put(crash, f"k/{i:04d}", f"c{i}".encode())
    marked: list[int] = [0]
    half_done = 0
    for _ in range(KILLS):
        # Killed as soon as this process has added markers (the executor is in its batches).
        deadline = time.monotonic() + 40
        while markers(s3, crash) <= marked[-1]:
            assert time.monotonic() < deadline, f"the executor did not act on {crash}\n{srv.log_tail()}"
            assert srv.procs[-1].poll() is None, srv.log_tail()
        srv.kill()
        n = markers(s3, crash)
        marked.append(n)
        half_done += 0 < n < CRASH_OBJECTS
        srv.start()
        if n == CRASH_OBJECTS:
            break
    assert half_done >= 2, f"only {half_done} kills landed while the executor was deleting: {marked}"
    return marked[1:]


def markers(s3: Any, bucket: str) -> int:
    return sum(
        len(page.get("DeleteMarkers", []))
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    )


def test_incomplete_multipart_uploads_are_aborted_from_the_bucket_index_log(
    follower: Lab, s3_client: Any, serving: Any
) -> None:
    """``abort_incomplete_multipart_days``: the uploads in progress are known from the bucket
    index log where radosgw logs the upload's meta object (Pacific), else from listing the
    multipart uploads under the rule's prefix (Reef, Tentacle). An upload under the rule is
    aborted once due; one completed, one outside the rule's prefix and one begun later are left
    alone."""
    s3 = s3_client
    bucket = f"lc-mpu-{uuid.uuid4().hex[:8]}"
    rules = f'''[[lifecycle.rules]]
bucket = "{bucket}"
prefix = "tmp/"
abort_incomplete_multipart_days = 2
'''
    srv = serving([bucket], rules)
    s3.create_bucket(Bucket=bucket)
    srv.start()
    wait_for("follower caught up", lambda: ((srv.get("/_/status").get("follower") or {}).get("live") or {})
             .get("caught_up_until"), srv, 60)  # fmt: skip
    part = b"p" * (5 << 20)

    def begin(key: str) -> str:
        uid = str(s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
        s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=part)
        return uid

    old = begin("tmp/old")
    kept = begin("keep/old")
    done = begin("tmp/done")
    etag = s3.list_parts(Bucket=bucket, Key="tmp/done", UploadId=done)["Parts"][0]["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="tmp/done", UploadId=done,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})  # fmt: skip
    started = time.monotonic()

    def open_uploads() -> set[str]:
        return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}

    # Known from the log, and reported, before they are due.
    status = wait_for("uploads tracked", lambda: (d := srv.get("/_/lifecycle/status").get("incomplete_uploads"))
                      and d["under_rules"] == 1 and d, srv, 30)  # fmt: skip
    assert status["due_now"] in (0, 1)
    young = None
    gone = wait_for("the old upload aborted", lambda: old not in open_uploads(), srv, 4 * DAY * 2 + 30)
    assert gone
    waited = time.monotonic() - started
    assert waited >= 2 * DAY - 1.0, f"aborted after {waited:.1f}s, before its {2 * DAY:.0f}s"
    young = begin("tmp/young")  # begun after: not due yet
    assert open_uploads() >= {kept, young}
    assert s3.get_object(Bucket=bucket, Key="tmp/done")["ContentLength"] == len(part)
    stats = srv.lifecycle_stats()
    assert stats.get("uploads_aborted", 0) >= 1 and stats.get("uploads_failed", 0) == 0, stats
    # The abort is read back from the log: the upload leaves the table.
    wait_for("the aborted upload forgotten", lambda: srv.get("/_/lifecycle/status")["incomplete_uploads"]["under_rules"] == 1,
             srv, 30)  # fmt: skip
    s3.abort_multipart_upload(Bucket=bucket, Key="tmp/young", UploadId=young)
    s3.abort_multipart_upload(Bucket=bucket, Key="keep/old", UploadId=kept)
    print(f"upload aborted {waited:.1f}s after it began (due after {2 * DAY:.0f}s); stats {stats}")


def test_source_bucket_follows_each_buckets_own_lifecycle_configuration(
    follower: Lab, s3_client: Any, serving: Any
) -> None:
    """``[lifecycle] source = "bucket"``: a bucket's S3 lifecycle configuration (set with
    PutBucketLifecycleConfiguration on radosgw) is the rule; a bucket without one is left alone;
    a configuration widened while serve runs reschedules the objects already kept, which are
    then expired from their own mtime. radosgw's own LC does not run here (its work window is
    00:00-06:00 and the lab sets no rgw_lc_debug_interval): the stats show our executor acted."""
    s3 = s3_client
    tag = uuid.uuid4().hex[:8]
    cfg, bare = f"lc-src-{tag}", f"lc-bare-{tag}"
    srv = serving([cfg, bare], 'source = "bucket"\nbucket_rules_interval = 1.0\n')
    for b in (cfg, bare):
        s3.create_bucket(Bucket=b)

    def rule(prefix: str) -> None:
        s3.put_bucket_lifecycle_configuration(Bucket=cfg, LifecycleConfiguration={"Rules": [
            {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": prefix}, "Expiration": {"Days": 2}},
            {"ID": "dated", "Status": "Enabled", "Filter": {"Prefix": "never/"},
             "Expiration": {"Date": "2099-01-01T00:00:00Z"}},
        ]})  # fmt: skip

    rule("tmp/")
    for k in ("tmp/a", "tmp/b", "keep/c"):
        s3.put_object(Bucket=cfg, Key=k, Body=b"x")
    s3.put_object(Bucket=bare, Key="tmp/a", Body=b"x")
    started = time.monotonic()
    srv.start()

    def keys(bucket: str) -> list[str]:
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    wait_for("tmp/ expired", lambda: keys(cfg) == ["keep/c"], srv, 2 * DAY + 40)
    assert time.monotonic() - started >= 2 * DAY - 1.0
    status = srv.get("/_/lifecycle/status")
    assert status["source"] == "bucket", status
    br = status["bucket_rules"]
    assert br["buckets_with_configuration"] == 1 and br["rules"] == 1, br
    assert br["left_out"] == [f"{cfg}: lifecycle rule 'dated': Expiration.Date is not supported: left out"], (
        br
    )
    rule("")  # widened: keep/c (written long ago) is due at once after the refresh
    wait_for("keep/c expired under the widened rule", lambda: keys(cfg) == [], srv, 30)
    time.sleep(2 * DAY)
    assert keys(bare) == ["tmp/a"]
    stats = srv.lifecycle_stats()
    assert stats.get("expired", 0) == 3 and stats.get("buckets_rescheduled", 0) >= 2, stats
    cli = srv.cli_json("lifecycle", "status", "--json")
    assert cli["source"] == "bucket" and cli["bucket_rules"]["buckets_with_configuration"] == 1, cli
