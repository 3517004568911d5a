"""Two-way (active/active) replication (REP.2, issue 19) end to end on two lab radosgw zones,
"a" (the session lab) and "b" (a second lab of the same release), each with its own
`rgw-changelog serve` (follower, collector, replicator) replicating to the other through a TCP
proxy the test can cut (the link between the sites):

* both zones' users write at once: 1,000 mutations per zone (PUTs of varied sizes, a few
  multipart uploads over the 8 MiB part size, overwrites, deletes), 100 of them on keys written
  in both zones within a second of each other, while each serve is SIGKILLed 3 times and the
  link is down for 60 s; the zones end with the same keys and bytes (the time it took after
  the load is printed), and nothing is lost: a key only one zone wrote holds that zone's last
  state on both sides;
* one replica per mutation, no echo: radosgw's access log at each zone counts the requests the
  peer's replicator wrote there (by its own user): per key, never more than the peer's users'
  mutations of it (a replica that echoed back would write again, and again);
* last writer wins: a key written in both zones within a second holds the write with the later
  (Last-Modified in whole seconds, zone name) on both sides, as read by a HEAD at the writing
  zone just after each PUT; a key whose last mutation is a write made well after every other
  mutation of it (either zone) holds that write; each object is its zone's users' write or a
  replica of the peer's, never a replica of its own zone's write come back;
* a write and a delete that cross leave the write: zone Y deletes the replica of zone X's
  write v1 while X writes v2 (long after v1, or the very second v1's replica reached Y); what
  Y's delete deleted is read from Y's records (its own replica of v2, if that came first, is
  deleted with it).

Known limits (README "Two-way replication") are kept out of the workload: every write has
bytes of its own (no same-bytes rewrite), no tag-only change, multipart uploads only on keys
one zone writes. One cannot be: a replica deleted before the zone's follower read its index
entry leaves a record with no writer, not remembered as an echo; such keys are listed, not
asserted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_replication_lab import Proxy, free_port
from tests.integration.test_rgw_serve import committed
from tests.lab import Lab, second_lab
from tests.lab import s3_client as lab_client

REPO = Path(__file__).resolve().parents[2]
LOG_PREFIX = "logs"
MIB = 1024 * 1024
ZONES = ("a", "b")

# The load: per zone, over about LOAD_SECONDS.
MUTATIONS = 1000
CONFLICTS = 100  # of them: keys written in both zones within a second
# Keys where a write and a delete cross (the write stays): each zone writes half of them twice
# (before and during the crossing) and deletes the other half once.
CROSSINGS = 20
CROSS_AFTER = 50  # the crossing comes this many conflict keys (about 50 s) after the first write
# Keys where a write crosses the delete of the replica of the zone's previous write just as that
# replica arrived (the write and the replica's arrival mostly in the same second): each zone
# writes half of them twice and deletes the other half once.
ARRIVALS = 10
ARRIVAL_WAIT = 20.0  # seconds a replica is waited for (the link may be down meanwhile)
# Half of those deletes come this long after the write: the deleting zone's follower has
# mostly read the replica's index entry (one deleted before is a known limit, see below), and the
# write's own replica has mostly not arrived yet.
ARRIVAL_DELETE_AFTER = 0.6
MULTIPARTS = 3  # of them: 9 MiB objects uploaded in two parts (above the replicator's 8 MiB parts)
OWN_KEYS = 150  # keys only one zone writes ("a/..." or "b/...")
SHARED_KEYS = 50  # keys both zones write at random moments ("s/...")
LOAD_SECONDS = 100.0
KILLS = 3  # SIGKILLs of each zone's serve during the load
OUTAGE = 60.0  # seconds the link between the zones is down
CONVERGE_BOUND = 180.0  # generous: the measured time is printed
# A write this much later than every other mutation of its key (either zone) is the key's last
# writer by any clock: the state it must leave is known without the order's tie-breaks.
CLEAR_MARGIN = 3.0

# radosgw's access log line (beast, debug_rgw >= 1): the requester and the request.
ACCESS = re.compile(r' beast: \S+ \S+ - (\S+) \[[^\]]*\] "(\w+) (\S+) HTTP/[\d.]+" (\d+) ')


# --------------------------------------------------------------------------- the second zone


@pytest.fixture(scope="module")
def peer_lab(ceph_lab: Lab) -> Iterator[Lab]:
    """A second lab radosgw of the same release (zone b); its ports follow the first free ones
    from CEPH_LAB_PORT_OFFSET like every lab's."""
    with second_lab(ceph_lab.release, prefix="ceph-lab-zone-b-") as lab:
        yield lab


def make_user(lab: Lab, uid: str) -> tuple[str, str]:
    doc = json.loads(lab.radosgw_admin("user", "create", f"--uid={uid}", f"--display-name={uid}"))
    return doc["keys"][0]["access_key"], doc["keys"][0]["secret_key"]


def make_bucket(s3: Any, bucket: str, replicator: str) -> None:
    """The zone's bucket, unversioned, with the peer's replicator (and the owner) allowed
    everything in it."""
    s3.create_bucket(Bucket=bucket)
    owner = s3.list_buckets()["Owner"]["ID"]
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam:::user/{replicator}", f"arn:aws:iam:::user/{owner}"]},
        "Action": ["s3:*"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
    }
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )


def rgw_log(lab: Lab) -> Path:
    return Path(lab.dir) / "log" / "client.rgw.gw.log"


# --------------------------------------------------------------------------- a zone's serve


@dataclass
class Zone:
    """One zone: its lab, bucket and `serve`, which replicates two-way to ``peer`` through
    ``link`` (a proxy to the peer's radosgw) as the user ``peer_into`` of the peer."""

    name: str
    lab: Lab
    tmp: Path
    bucket: str
    tag: str
    into: str  # the user the peer's replicator writes here as
    into_keys: tuple[str, str]
    peer: Zone | None = None
    link: Proxy | None = None
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The replicator's counters of each process, read just before it was killed (and at the end).
    counters: list[dict[str, Any]] = field(default_factory=list)
    log_offset: int = 0  # radosgw's log size when the test began

    @property
    def log_bucket(self) -> str:
        return f"tw-logs-{self.name}-{self.tag}"

    @functools.cached_property
    def s3(self) -> Any:
        return lab_client(self.lab)

    def write_config(self) -> Path:
        assert self.peer is not None and self.link is not None
        keyring = f'keyring = "{self.lab.keyring}"\n' if self.lab.keyring else ""
        path = self.tmp / f"serve-{self.name}.toml"
        path.write_text(
            f"""
[index]
backend = "rados"
ceph_conf = "{self.lab.conf}"
{keyring}pool = "{self.lab.pool}"
namespace = "test-2way-{self.name}-{self.tag}"
shards = 8

[source]
endpoint = "{self.lab.rgw_endpoint}"
access_key = "{self.lab.access_key}"
secret_key = "{self.lab.secret_key}"
region = "default"
buckets = ["{self.bucket}"]
poll_interval = 0.2
record_writer = true

[target]
url = "s3://{self.log_bucket}/{LOG_PREFIX}/"
region = "default"

[collector]
interval = 0.5
settle = 0.5
lease_ttl = 3.0
roll_seconds = 2

[replication]
workers = 8
interval = 0.2
lease_ttl = 3.0
max_attempts = 2
part_bytes = "8MiB"
zone = "{self.name}"

[[replication.sites]]
name = "{self.peer.name}"
endpoint = "{self.link.endpoint}"
access_key = "{self.peer.into_keys[0]}"
secret_key = "{self.peer.into_keys[1]}"
region = "default"
two_way = true
replica_writers = ["{self.into}"]

[api]
listen = "127.0.0.1:{self.port}"

[logging]
level = "INFO"
"""
        )
        return path

    def start(self) -> None:
        config = self.write_config()
        log = open(self.tmp / f"serve-{self.name}-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(config), "serve"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                self.get("/_/controls")
                return
            self.check_running()
            time.sleep(0.2)
        pytest.fail(f"zone {self.name}: serve's API did not come up\n{self.log_tail()}")

    def check_running(self) -> None:
        if self.procs and self.procs[-1].poll() is not None:
            pytest.fail(f"zone {self.name}: serve exited with {self.procs[-1].returncode}\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the live serve, its replicator's counters read first (best effort)."""
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            self.counters.append(self.live())
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def live(self) -> dict[str, Any]:
        assert self.peer is not None
        return dict(self.get(f"/_/crr/status/{self.peer.name}")["live"])

    def caught_up(self, t: float) -> bool:
        """The logs cover time ``t`` and the replicator consumed them all, backlog 0."""
        assert self.peer is not None
        try:
            body = self.s3.get_object(Bucket=self.log_bucket, Key=f"{LOG_PREFIX}/_watermark.json")[
                "Body"
            ].read()
            wm = json.loads(body)
            if wm["complete_until_us"] < int(t * 1_000_000):
                return False
            consumer = (self.get("/_/status").get("consumers") or {}).get(
                f"replication-{self.peer.name}"
            ) or {}
            backlog = self.get(f"/_/metrics/crr/{self.peer.name}/backlog")["backlog"]["results"]["count"]
            return bool(consumer.get("after") == wm["last_object"] and int(backlog) == 0)
        except (OSError, urllib.error.URLError, ValueError, KeyError, self.s3.exceptions.NoSuchKey):
            return False

    def log_tail(self) -> str:
        logs = sorted(self.tmp.glob(f"serve-{self.name}-*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:] for p in logs[-2:])

    def replica_requests(self) -> tuple[Counter[str], Counter[str]]:
        """From radosgw's access log since the test began: per key, the writes the peer's
        replicator made here (a PUT, a multipart completion, a DELETE, answered 2xx), and its
        refused conditional writes (412)."""
        writes: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        prefix = f"/{self.bucket}/"
        with open(rgw_log(self.lab), "rb") as f:
            f.seek(self.log_offset)
            for raw in f:
                m = ACCESS.search(raw.decode(errors="replace"))
                if m is None or m.group(1) != self.into or not m.group(3).startswith(prefix):
                    continue
                method, target, status = m.group(2), m.group(3), int(m.group(4))
                path, _, query = target.partition("?")
                params = urllib.parse.parse_qs(query, keep_blank_values=True)
                key = urllib.parse.unquote(path[len(prefix) :])
                write = (
                    (method == "PUT" and "partNumber" not in params and "uploadId" not in params)
                    or (method == "POST" and "uploadId" in params)
                    or (method == "DELETE" and "uploadId" not in params)
                )
                if write and 200 <= status < 300:
                    writes[key] += 1
                elif write and status == 412:
                    refused[key] += 1
        return writes, refused


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Mutation:
    """One user mutation as the test made it: ``md5`` of the bytes written (None: a delete);
    for a write, its Last-Modified in whole seconds and ETag from a HEAD at the zone just after
    (``mtime`` None when the HEAD found something else already)."""

    zone: str
    key: str
    start: float  # when the request was sent (time.time())
    t: float  # when it was answered
    md5: str | None
    mtime: int | None = None


@dataclass
class Ledger:
    """Every user mutation of both zones, per key."""

    by_key: dict[str, list[Mutation]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)  # per zone
    errors: list[str] = field(default_factory=list)
    _mu: threading.Lock = field(default_factory=threading.Lock)

    def add(self, m: Mutation) -> None:
        with self._mu:
            self.by_key[m.key].append(m)
            self.counts[m.zone] += 1

    def per_key(self, zone: str) -> Counter[str]:
        return Counter({k: sum(m.zone == zone for m in ms) for k, ms in self.by_key.items()})


def body_of(zone: str, n: int, size: int) -> bytes:
    """Bytes no other write has (a same-bytes rewrite is a known limit)."""
    head = f"{zone}:{n}:{uuid.uuid4().hex}:".encode()
    return head + os.urandom(max(0, size - len(head)))


def put(
    s3: Any, bucket: str, zone: str, key: str, data: bytes, ledger: Ledger, *, head: bool = False
) -> None:
    start = time.time()
    resp = s3.put_object(Bucket=bucket, Key=key, Body=data)
    t = time.time()
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - an identity, not security
    mtime = None
    if head:
        h = s3.head_object(Bucket=bucket, Key=key)
        if h["ETag"] == resp["ETag"]:
            mtime = int(h["LastModified"].timestamp())
    ledger.add(Mutation(zone, key, start, t, md5, mtime))


def multipart(s3: Any, bucket: str, zone: str, key: str, n: int, ledger: Ledger) -> None:
    """A 9 MiB object in two parts (5 + 4 MiB): its replica is copied in 8 MiB parts."""
    data = body_of(zone, n, 9 * MIB)
    start = time.time()
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for i, chunk in enumerate((data[: 5 * MIB], data[5 * MIB :])):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=i + 1, Body=chunk)
        parts.append({"PartNumber": i + 1, "ETag": r["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    ledger.add(Mutation(zone, key, start, time.time(), hashlib.md5(data).hexdigest()))  # noqa: S324


def zone_load(zone: Zone, ledger: Ledger, *, total: int, seconds: float, seed: int) -> None:
    """``total`` mutations of one zone's users: writes of varied sizes, overwrites and deletes
    of its own keys and of keys both zones write, and ``MULTIPARTS`` multipart uploads."""
    s3, rnd = zone.s3, random.Random(seed)
    mpu_at = {int(total * (i + 1) / (MULTIPARTS + 1)) for i in range(MULTIPARTS)}
    t0 = time.monotonic()
    for n in range(total):
        try:
            if n in mpu_at:
                multipart(s3, zone.bucket, zone.name, f"m/{zone.name}/{n}", n, ledger)
            else:
                shared = rnd.random() < 0.3
                key = (
                    f"s/{rnd.randrange(SHARED_KEYS):03d}"
                    if shared
                    else f"{zone.name}/{rnd.randrange(OWN_KEYS):03d}"
                )
                if rnd.random() < 0.7:
                    sizes = [100, 1000, 4096, 65_536, 300_000] + ([] if shared else [0])
                    size = rnd.choice(sizes)
                    data = b"" if size == 0 else body_of(zone.name, n, size)
                    put(s3, zone.bucket, zone.name, key, data, ledger)
                else:
                    start = time.time()
                    s3.delete_object(Bucket=zone.bucket, Key=key)
                    ledger.add(Mutation(zone.name, key, start, time.time(), None))
        except Exception as ex:  # noqa: BLE001 - counted; the test fails on any
            ledger.errors.append(f"zone {zone.name} #{n}: {type(ex).__name__}: {ex}")
        ahead = t0 + seconds * (n + 1) / total - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def conflict_load(
    zones: dict[str, Zone], ledger: Ledger, crossed: dict[str, bool], *, total: int, seconds: float, seed: int
) -> None:
    """``total`` keys each written in both zones within a second: one zone first (at random),
    the other 0 to 0.8 s later; each write HEADed at its zone just after.

    Beside them, ``CROSSINGS`` keys where a write and a delete cross: zone X writes the key
    early on; about 50 s later zone Y deletes it and X writes it again, within a second (either
    first). ``crossed``: whether Y held X's first write when it deleted (else the delete found
    nothing, or only an older state)."""
    rnd = random.Random(seed)
    clients = {z: zones[z].s3 for z in ZONES}
    first: dict[str, str] = {}  # crossing key -> the ETag of X's first write
    t0 = time.monotonic()
    for i in range(total):
        key = f"c/{i:03d}"
        order = list(ZONES) if rnd.random() < 0.5 else list(reversed(ZONES))
        try:
            for j, z in enumerate(order):
                if j:
                    time.sleep(rnd.uniform(0.0, 0.8))
                put(clients[z], zones[z].bucket, z, key, body_of(z, 10_000 + i, 2000), ledger, head=True)
            if i < CROSSINGS:
                x = ZONES[i % 2]
                data = body_of(x, 20_000 + i, 3000)
                put(clients[x], zones[x].bucket, x, f"d/{i:03d}", data, ledger)
                first[f"d/{i:03d}"] = hashlib.md5(data).hexdigest()  # noqa: S324
            if CROSS_AFTER <= i < CROSS_AFTER + CROSSINGS:
                n = i - CROSS_AFTER
                x, y = ZONES[n % 2], ZONES[(n + 1) % 2]
                dkey = f"d/{n:03d}"
                with contextlib.suppress(Exception):
                    held = clients[y].head_object(Bucket=zones[y].bucket, Key=dkey)["ETag"].strip('"')
                    crossed[dkey] = held == first.get(dkey)
                crossed.setdefault(dkey, False)
                steps = ["delete", "write"] if rnd.random() < 0.5 else ["write", "delete"]
                for j, step in enumerate(steps):
                    if j:
                        time.sleep(rnd.uniform(0.0, 0.8))
                    if step == "write":
                        put(clients[x], zones[x].bucket, x, dkey, body_of(x, 30_000 + n, 3000), ledger)
                    else:
                        start = time.time()
                        clients[y].delete_object(Bucket=zones[y].bucket, Key=dkey)
                        ledger.add(Mutation(y, dkey, start, time.time(), None))
        except Exception as ex:  # noqa: BLE001 - counted; the test fails on any
            ledger.errors.append(f"conflict {key}: {type(ex).__name__}: {ex}")
        ahead = t0 + seconds * (i + 1) / total - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def arrival_load(
    zones: dict[str, Zone], ledger: Ledger, arrived: dict[str, float | None], *, total: int
) -> None:
    """``total`` keys (``e/...``): zone X writes v1; as soon as its replica is at zone Y (a
    HEAD every 0.1 s), X writes v2 and Y deletes the replica of v1. v2 crosses the delete: it
    stays on both sides (README: "a write and a delete that cross leave the write"), although
    its mtime is mostly the second of the deleted replica's. ``arrived``: key -> seconds from
    the replica seen at Y to v2's request (None: not seen within ``ARRIVAL_WAIT``). Keys start
    only while the link is up."""
    clients = {z: zones[z].s3 for z in ZONES}
    for n in range(total):
        x, y = ZONES[n % 2], ZONES[(n + 1) % 2]
        key = f"e/{n:03d}"
        while not all(z.link is None or z.link.up.is_set() for z in zones.values()):
            time.sleep(0.2)
        try:
            data = body_of(x, 40_000 + n, 1500)
            put(clients[x], zones[x].bucket, x, key, data, ledger)
            etag = hashlib.md5(data).hexdigest()  # noqa: S324
            seen = None
            deadline = time.monotonic() + ARRIVAL_WAIT
            while seen is None and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    if clients[y].head_object(Bucket=zones[y].bucket, Key=key)["ETag"].strip('"') == etag:
                        seen = time.time()
                if seen is None:
                    time.sleep(0.1)
            arrived[key] = None if seen is None else time.time() - seen
            put(clients[x], zones[x].bucket, x, key, body_of(x, 50_000 + n, 1500), ledger)
            time.sleep(ARRIVAL_DELETE_AFTER if (n // 2) % 2 else 0.0)
            start = time.time()
            clients[y].delete_object(Bucket=zones[y].bucket, Key=key)
            ledger.add(Mutation(y, key, start, time.time(), None))
        except Exception as ex:  # noqa: BLE001 - counted; the test fails on any
            ledger.errors.append(f"arrival {key}: {type(ex).__name__}: {ex}")
        time.sleep(2.0)


# --------------------------------------------------------------------------- the state


def listing(zone: Zone) -> dict[str, tuple[int, str]]:
    """key -> (size, ETag) of the zone's bucket."""
    out: dict[str, tuple[int, str]] = {}
    for page in zone.s3.get_paginator("list_objects_v2").paginate(Bucket=zone.bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = (int(o["Size"]), str(o["ETag"]).strip('"'))
    return out


def identity(zone: Zone, key: str, etag: str) -> str:
    """A multipart object's ETag differs between the original and its replica (other parts):
    the replica names its source's (``rgwcl-src-etag``)."""
    if "-" not in etag:
        return etag
    with contextlib.suppress(Exception):
        meta = zone.s3.head_object(Bucket=zone.bucket, Key=key).get("Metadata") or {}
        return str(meta.get("rgwcl-src-etag") or etag)
    return etag


def differences(a: Zone, b: Zone) -> list[str]:
    """What differs between the two zones' buckets (keys, sizes, content ETags)."""
    la, lb = listing(a), listing(b)
    out = [f"{k}: only at a" for k in la.keys() - lb.keys()]
    out += [f"{k}: only at b" for k in lb.keys() - la.keys()]
    for k in la.keys() & lb.keys():
        (sa, ea), (sb, eb) = la[k], lb[k]
        if sa != sb or (ea != eb and identity(a, k, ea) != identity(b, k, eb)):
            out.append(f"{k}: a {sa} {ea}, b {sb} {eb}")
    return sorted(out)


def contents(zone: Zone) -> dict[str, str]:
    """key -> md5 of the bytes, read back."""
    out = {}
    for k in listing(zone):
        body = zone.s3.get_object(Bucket=zone.bucket, Key=k)["Body"].read()
        out[k] = hashlib.md5(body).hexdigest()  # noqa: S324
    return out


def provenance(zone: Zone, state: dict[str, str], ledger: Ledger) -> tuple[Counter[str], list[str]]:
    """Where each object of ``zone`` comes from: written here by a user (no replica
    metadata), or a replica of the peer's (``rgwcl-src-zone`` the peer); and whether its bytes
    are bytes that zone's users wrote to that key. A replica of this zone's own write (an
    echo come back) or bytes nobody wrote there are named."""
    assert zone.peer is not None
    kinds: Counter[str] = Counter()
    bad = []
    for key, md5 in state.items():
        meta = zone.s3.head_object(Bucket=zone.bucket, Key=key).get("Metadata") or {}
        replica = meta.get("rgwcl-replica") == "true"
        origin = str(meta.get("rgwcl-src-zone")) if replica else zone.name
        kinds["replica" if replica else "original"] += 1
        if replica and origin != zone.peer.name:
            bad.append(f"{zone.name}/{key}: a replica from zone {origin}")
        elif md5 not in {m.md5 for m in ledger.by_key.get(key, []) if m.zone == origin}:
            bad.append(f"{zone.name}/{key}: bytes zone {origin}'s users never wrote there ({md5})")
    return kinds, bad


def winner(ms: list[Mutation]) -> Mutation | None:
    """Of a key's conflicting writes, the one last writer wins keeps: the later (Last-Modified
    in whole seconds, zone name); None when a HEAD did not see its own write."""
    if any(m.mtime is None for m in ms):
        return None
    return max(ms, key=lambda m: (m.mtime or 0, m.zone))


def clear_last_write(ms: list[Mutation]) -> Mutation | None:
    """A key's last mutation when it is a write made ``CLEAR_MARGIN`` after every mutation of
    the other zone (and last in its own): it must survive by any clock."""
    last = max(ms, key=lambda m: m.t)
    if last.md5 is None:
        return None
    if any(m.t > last.start - CLEAR_MARGIN for m in ms if m.zone != last.zone):
        return None
    return last


# --------------------------------------------------------------------------- the test


def load_with_faults(
    zones: dict[str, Zone], loads: list[threading.Thread], *, seed: int, jitter: float
) -> tuple[Counter[str], dict[str, float]]:
    """Start the load threads and, while they run, SIGKILL (and restart) each zone's serve
    ``KILLS`` times, alternating, spread over the load (``jitter`` seconds either way), and cut the
    link between the zones from 25 s for ``OUTAGE`` seconds. Returns the kills per zone and the
    outage's ``cut``/``restored`` times (monotonic, from the start)."""
    a, b = zones["a"], zones["b"]
    for t in loads:
        t.start()
    rnd = random.Random(seed)
    t0 = time.monotonic()
    plan = sorted(
        (LOAD_SECONDS * (i + 0.5) / (2 * KILLS) + rnd.uniform(-jitter, jitter), ZONES[i % 2])
        for i in range(2 * KILLS)
    )
    kills: Counter[str] = Counter()
    outage: dict[str, float] = {}
    while any(t.is_alive() for t in loads) or plan or "restored" not in outage:
        now = time.monotonic() - t0
        if "cut" not in outage and now >= 25:
            a.link.cut()
            b.link.cut()
            outage["cut"] = now
        if "cut" in outage and "restored" not in outage and now - outage["cut"] >= OUTAGE:
            a.link.restore()
            b.link.restore()
            outage["restored"] = now
        # A kill that the load outlived is made right after it.
        if plan and (now >= plan[0][0] or not any(t.is_alive() for t in loads)):
            _, z = plan.pop(0)
            zones[z].kill()
            zones[z].start()
            kills[z] += 1
        for z in (a, b):
            z.check_running()
        time.sleep(0.5)
    return kills, outage


@pytest.mark.two_sites
def test_two_way_converges_through_crashes_and_an_outage(
    ceph_lab: Lab, peer_lab: Lab, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    bucket = f"tw-{tag}"
    labs = {"a": ceph_lab, "b": peer_lab}
    zones: dict[str, Zone] = {}
    for z, lab in labs.items():
        into = f"rep-into-{z}-{tag}"
        zones[z] = Zone(z, lab, tmp_path, bucket, tag, into, make_user(lab, into))
        make_bucket(zones[z].s3, bucket, into)
        zones[z].s3.create_bucket(Bucket=zones[z].log_bucket)
        zones[z].log_offset = rgw_log(lab).stat().st_size
    a, b = zones["a"], zones["b"]
    a.peer, b.peer = b, a
    a.link, b.link = Proxy(b.lab.rgw_endpoint), Proxy(a.lab.rgw_endpoint)
    # Each replicator's identity works at its peer: fail here rather than time out later.
    for z in (a, b):
        assert z.peer is not None
        lab_client_as(z.peer.lab, *z.peer.into_keys).head_bucket(Bucket=bucket)
    ledger = Ledger()
    crossed: dict[str, bool] = {}
    arrived: dict[str, float | None] = {}
    try:
        a.start()
        b.start()
        loads = [
            threading.Thread(
                target=zone_load,
                args=(z, ledger),
                kwargs={
                    "total": MUTATIONS - CONFLICTS - 3 * CROSSINGS // 2 - 3 * ARRIVALS // 2,
                    "seconds": LOAD_SECONDS,
                    "seed": 11 + n,
                },
                daemon=True,
            )
            for n, z in enumerate((a, b))
        ]
        loads.append(
            threading.Thread(
                target=conflict_load,
                args=(zones, ledger, crossed),
                kwargs={"total": CONFLICTS, "seconds": LOAD_SECONDS, "seed": 5},
                daemon=True,
            )
        )
        loads.append(
            threading.Thread(
                target=arrival_load, args=(zones, ledger, arrived), kwargs={"total": ARRIVALS}, daemon=True
            )
        )
        t0 = time.monotonic()
        kills, outage = load_with_faults(zones, loads, seed=17, jitter=3.0)
        for t in loads:
            t.join()
        load_end = time.monotonic()
        load_end_wall = time.time()
        assert not ledger.errors, ledger.errors[:5]
        assert ledger.counts == {"a": MUTATIONS, "b": MUTATIONS}, ledger.counts

        # 1. The zones converge: the same keys and contents, both replicators caught up.
        deadline = load_end + CONVERGE_BOUND
        diff: list[str] = []
        converged: float | None = None
        while True:
            for z in (a, b):
                z.check_running()
            if a.caught_up(load_end_wall) and b.caught_up(load_end_wall):
                diff = differences(a, b)
                if not diff:
                    converged = time.monotonic() - load_end
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(2.0)
        if converged is None:
            up = {z.name: z.caught_up(load_end_wall) for z in (a, b)}
            pytest.fail(
                f"the zones did not converge within {CONVERGE_BOUND:.0f}s after the load (caught up: {up}); "
                f"{len(diff)} differences, first: {diff[:10]}\n{a.log_tail()}\n{b.log_tail()}"
            )
        # What the replicas' own records bring (echoes at each zone) changes nothing: caught up
        # again later, the zones still agree, byte for byte.
        settle = time.time()
        while not (a.caught_up(settle) and b.caught_up(settle)):
            assert time.monotonic() < deadline + 60, f"{a.log_tail()}\n{b.log_tail()}"
            time.sleep(1.0)
        state_a, state_b = contents(a), contents(b)
        assert state_a == state_b, sorted(
            f"{k}: a {state_a.get(k)} b {state_b.get(k)}"
            for k in state_a.keys() | state_b.keys()
            if state_a.get(k) != state_b.get(k)
        )[:10]
        for z in (a, b):
            assert z.peer is not None
            assert z.get(f"/_/crr/failed?site={z.peer.name}")["Versions"] == []

        # Each object is its zone's users' write or a replica of the peer's, never a replica
        # of the zone's own write come back.
        kinds = {}
        for z, state in ((a, state_a), (b, state_b)):
            kinds[z.name], bad = provenance(z, state, ledger)
            assert not bad, bad[:10]

        # Nothing lost: a key only one zone wrote holds that zone's last state.
        lost = []
        for key, ms in ledger.by_key.items():
            if key.startswith(("a/", "b/", "m/")):
                want = max(ms, key=lambda m: m.t).md5
                if state_a.get(key) != want:
                    lost.append(f"{key}: {state_a.get(key)} != last written {want}")
        assert not lost, lost[:10]

        # Each zone's committed records of the bucket: what its replicator read.
        records = {}
        of_key: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for z in (a, b):
            recs = [r for r in committed(z.s3, z.log_bucket) if r.bucket == bucket]
            records[z.name] = Counter(
                "echo"
                if r.metadata.get("writer") == z.into
                else ("user" if r.metadata.get("writer") else "none")
                for r in recs
            )
            for r in recs:
                if r.key is not None:
                    of_key[(z.name, r.key)].append(r)

        # 4. Last writer wins: the conflicting writes, and clearly last writes of shared keys.
        decided = wrong = clear = 0
        unremembered: list[str] = []
        deleted_after = 0
        mismatches = []
        for key, ms in sorted(ledger.by_key.items()):
            if key.startswith("c/"):
                w = winner(ms)
                if w is None:
                    continue
                decided += 1
                if state_a.get(key) != w.md5:
                    wrong += 1
                    mismatches.append(f"{key}: " + ", ".join(f"{m.zone}@{m.mtime} {m.t:.3f}" for m in ms))
            elif key.startswith(("d/", "e/")):
                # A write and a delete that cross leave the write; a delete of the write's own
                # replica (it arrived first) deletes it. Which one the delete deleted, the
                # deleting zone's records say: the last write before it. Known limit (README):
                # where that zone's follower read the replica's index entry only after the
                # delete, its record has no writer and the replica is not remembered as an echo:
                # the order alone decides, and a write of the replica's second loses.
                y = next(m.zone for m in ms if m.md5 is None)
                w = max((m for m in ms if m.md5 is not None), key=lambda m: m.t)
                recs_y = of_key[(y, key)]
                deletes = [i for i, r in enumerate(recs_y) if r.op == "delete"]
                prior = [r for r in recs_y[: deletes[0]] if r.op == "write"] if deletes else []
                want: str | None = w.md5
                if prior and prior[-1].metadata.get("writer") != zones[y].into:
                    unremembered.append(key)
                    continue
                if prior and prior[-1].etag == w.md5:
                    want = None  # the delete came after the write's replica
                    deleted_after += 1
                if state_a.get(key) != want:
                    mismatches.append(
                        f"{key}: holds {state_a.get(key)}, not {want} (the write; held before: {crossed.get(key)}, "
                        f"replica seen {arrived.get(key)} s before the write)"
                    )
            elif key.startswith("s/"):
                last = clear_last_write(ms)
                if last is not None:
                    clear += 1
                    if state_a.get(key) != last.md5:
                        mismatches.append(f"{key}: lost its last write ({last.zone} at {last.t:.3f})")
        ties = sum(len({m.mtime for m in ms}) == 1 for k, ms in ledger.by_key.items() if k.startswith("c/"))

        # 2. One replica per mutation, no echo: the writes each replicator made at its peer.
        counts = {}
        echo_bound = []
        echoed_own = Counter[str]()
        for z in (a, b):
            assert z.peer is not None
            writes, refused = z.replica_requests()
            users = ledger.per_key(z.peer.name)
            counts[z.name] = (sum(writes.values()), sum(refused.values()), ledger.counts[z.peer.name])
            # The known limit above also sends the replicator's delete of a write back to its
            # own zone as a user's (a plain delete has no writer): not counted there.
            echo_bound += [
                f"{z.name}/{k}: {n} replica writes for {users.get(k, 0)} mutations at {z.peer.name}"
                for k, n in writes.items()
                if n > users.get(k, 0) and k not in unremembered
            ]
            # Keys only this zone's users write: the peer's replicator has nothing to write here.
            echoed_own[z.name] = sum(
                n for k, n in writes.items() if k.startswith((f"{z.name}/", f"m/{z.name}/"))
            )
        for z in (a, b):
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                z.counters.append(z.live())
        print(
            f"\ntwo-way: {MUTATIONS} mutations per zone ({CONFLICTS} keys written in both within a second, "
            f"{ties} of them in the same second), {dict(kills)} SIGKILLs, link down "
            f"{outage['restored'] - outage['cut']:.0f}s; converged {converged:.1f}s after the load "
            f"(load {load_end - t0:.0f}s), {load_end - t0 + converged - outage['restored']:.1f}s after the link "
            f"came back"
        )
        for z in (a, b):
            assert z.peer is not None
            w, r, users = counts[z.name]
            summed = Counter()
            for c in z.counters:
                summed.update(
                    {k: int(v) for k, v in c.items() if k in ("completed", "skipped", "echoes", "older")}
                )
            print(
                f"  into {z.name}: {w} replica writes by {z.into} (+{r} refused with 412) for {users} user "
                f"mutations at {z.peer.name} ({users - w} not written: superseded, older, no record), "
                f"{echoed_own[z.name]} on keys only {z.name} writes; final objects {dict(kinds[z.name])}; "
                f"{z.name}'s records: {dict(records[z.name])}; "
                f"{z.name}'s replicator (summed over its processes, up to each kill): {dict(summed)}"
            )
        print(
            f"  last writer wins: {decided} conflicting keys decided by the order, {wrong} wrong; "
            f"{clear} shared keys with a clear last write; {len(crossed)} writes crossing a delete "
            f"({sum(crossed.values())} of a key the deleting zone held); {len(arrived)} writes crossing the "
            f"delete of a replica just arrived ({sum(v is not None and v < 1 for v in arrived.values())} "
            f"written within 1 s of its arrival); {deleted_after} of them deleted after the write's replica "
            f"arrived; not checked (the deleted replica's record had no writer, "
            f"a known limit): {unremembered}"
        )
        assert converged is not None and converged < CONVERGE_BOUND
        assert kills["a"] >= KILLS and kills["b"] >= KILLS
        assert outage["restored"] - outage["cut"] >= OUTAGE
        # A write lost to a delete it crossed shows as an echo too (the echo of the replicator's
        # delete removes the write's replica): both are said at once.
        assert not (echo_bound or mismatches), {"echo": echo_bound[:10], "state": mismatches[:10]}
        assert echoed_own == {"a": 0, "b": 0}, echoed_own
        # Each zone's replicator wrote at its peer: the writes that were not superseded.
        for z in (a, b):
            assert counts[z.name][0] > 0
        assert decided >= CONFLICTS // 2, f"only {decided} conflicting writes were seen by their HEAD"
        assert not mismatches, mismatches[:10]
    finally:
        for z in (a, b):
            z.kill()
            if z.link is not None:
                z.link.close()
        _drop_indexes(zones)


def lab_client_as(lab: Lab, access: str, secret: str) -> Any:
    from changelog.pipeline.s3client import make_s3_client

    return make_s3_client(
        lab.rgw_endpoint, access_key=access, secret_key=secret, region="default",
        max_attempts=3, connect_timeout=30, read_timeout=60,
    )  # fmt: skip


def _drop_indexes(zones: dict[str, Zone]) -> None:
    """Each zone's index namespace, emptied."""
    from changelog.pipeline.backends.rados import RadosStore

    for z in zones.values():
        with contextlib.suppress(Exception):
            store = RadosStore(
                conffile=z.lab.conf, pool=z.lab.pool, namespace=f"test-2way-{z.name}-{z.tag}",
                keyring=z.lab.keyring or None,
            )  # fmt: skip
            for oid in store.list_objects():
                store.remove_object(oid)
            store.close()
