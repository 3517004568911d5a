"""What every figure shares: the lab it runs on, sizing (``--scale``, ``--quick``), interleaved
repetitions, the ``Figure`` it reports, raw librados for the baselines, and cleanup.

The benchmark measures the project against baselines with the raw tools underneath it (librados,
sqlite3, boto3), so this package imports ``rados`` itself: the product keeps that import in
``changelog/pipeline/backends/rados.py`` only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changelog.pipeline.s3client import make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REPO = Path(__file__).resolve().parents[2]
CEPH_LAB = REPO / "tools" / "ceph-lab"
S3_REGION = "default"  # the zonegroup name radosgw signs with
# s: botocore's default connect and read timeouts, which the bench's S3 clients have always used.
S3_TIMEOUT = 60.0
# librados aio window of the baselines: the same as changelog.pipeline.backends.rados.AIO_WINDOW.
AIO_WINDOW = 64
# A page of omap reads: the same as the index and the collector (changelog.pipeline.index.OP_KEYS).
OMAP_PAGE = 1000

_t0 = time.monotonic()


def say(msg: str) -> None:
    """Progress on stderr (stdout is for the table or the JSON lines)."""
    print(f"bench [{time.monotonic() - _t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return float(s[k])


def interleaved(reps: int, a: Callable[[int], float], b: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` ``reps`` times each, interleaved A B, B A, A B, ... (the side that goes
    first alternates, so a slow drift of the machine does not favour either); their results."""
    ra: list[float] = []
    rb: list[float] = []
    for i in range(reps):
        if i % 2 == 0:
            ra.append(a(i))
            rb.append(b(i))
        else:
            rb.append(b(i))
            ra.append(a(i))
    return ra, rb


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured figure: the project's value beside its baseline, measured in the same run.

    ``ratio`` is oriented so that higher is better for the project: ``value / baseline`` when a
    higher value is better (throughput), ``baseline / value`` when lower is (time, requests,
    memory, latency). ``goal`` is ``(subject, op, threshold)`` with subject ``ratio`` or
    ``value``, e.g. ``("ratio", ">=", 0.9)``.
    """

    group: str
    name: str
    unit: str
    value: float
    baseline: float
    baseline_name: str
    higher_is_better: bool = True
    goal: tuple[str, str, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    summary: str | None = None  # one line printed under the table (what the numbers alone do not say)

    @property
    def ratio(self) -> float:
        a, b = float(self.value), float(self.baseline)
        num, den = (a, b) if self.higher_is_better else (b, a)
        if den == 0 or math.isnan(num) or math.isnan(den):
            return math.nan
        return num / den

    @property
    def goal_text(self) -> str | None:
        if self.goal is None:
            return None
        subject, op, threshold = self.goal
        return f"{subject} {op} {threshold:g}" + (f" {self.unit}" if subject == "value" else "")

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        subject, op, threshold = self.goal
        x = self.ratio if subject == "ratio" else float(self.value)
        if math.isnan(x):
            return False
        return {">=": x >= threshold, ">": x > threshold, "<": x < threshold, "<=": x <= threshold}[op]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "unit": self.unit,
            "value": _num(self.value),
            "baseline": _num(self.baseline),
            "baseline_name": self.baseline_name,
            "ratio": _num(self.ratio, 3),
            "goal": self.goal_text,
            "met": self.met,
            "params": self.params,
            **({"summary": self.summary} if self.summary else {}),
        }


class FigureSkipped(Exception):
    """A figure that cannot be measured on this lab (e.g. it needs another Ceph release): the
    run reports the reason in one line and goes on; the figure is not produced."""


def _num(x: float, digits: int = 4) -> float | None:
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return None
    if x == 0:
        return 0.0
    # Keep ~4 significant digits, whatever the magnitude.
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def table(figures: Sequence[Figure]) -> str:
    rows = [["figure", "unit", "ours", "baseline", "ratio", "goal", "baseline is"]]
    for f in figures:
        met = {True: " ok", False: " MISSED", None: ""}[f.met]
        rows.append(
            [f.name, f.unit, fmt(f.value), fmt(f.baseline), fmt(f.ratio), (f.goal_text or "-") + met, f.baseline_name]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4}
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.name}: {f.summary}" for f in figures if f.summary]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Lab:
    conf: str
    keyring: str
    pool: str
    rgw_endpoint: str
    access_key: str
    secret_key: str
    dir: str
    release: str = ""  # CEPH_RELEASE (pacific | reef | tentacle) when the lab says; see lab_release()
    bin: str = ""  # CEPH_BIN: the release's own ceph / rados / radosgw-admin, pointed at this lab

    def env(self) -> dict[str, str]:
        """The lab as the environment variables `tools/ceph-lab up` prints."""
        return {
            "CEPH_CONF": self.conf,
            "CEPH_KEYRING": self.keyring,
            "CEPH_POOL": self.pool,
            "CEPH_LAB_DIR": self.dir,
            "RGW_ENDPOINT": self.rgw_endpoint,
            "RGW_ACCESS_KEY": self.access_key,
            "RGW_SECRET_KEY": self.secret_key,
        }


def lab_from_env(env: dict[str, str] | os._Environ[str]) -> Lab | None:
    conf, endpoint = env.get("CEPH_CONF"), env.get("RGW_ENDPOINT")
    if not conf or not endpoint:
        return None
    return Lab(
        conf=conf,
        keyring=env.get("CEPH_KEYRING", ""),
        pool=env.get("CEPH_POOL") or "changelog",
        rgw_endpoint=endpoint.rstrip("/"),
        access_key=env.get("RGW_ACCESS_KEY", "TESTKEY"),
        secret_key=env.get("RGW_SECRET_KEY", "TESTSECRET"),
        dir=env.get("CEPH_LAB_DIR", str(Path(conf).parent)),
        release=env.get("CEPH_RELEASE", ""),
        bin=env.get("CEPH_BIN", ""),
    )


def lab_up(directory: Path, release: str | None = None) -> Lab:
    """`tools/ceph-lab up DIR [--release R]` (boots the lab, or completes a live one: a live lab
    keeps its release whatever ``release`` says)."""
    say(f"booting the Ceph lab in {directory}" + (f" (release {release})" if release else ""))
    proc = subprocess.run(
        [sys.executable, str(CEPH_LAB), "up", str(directory), *(["--release", release] if release else [])],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: tools/ceph-lab up {directory} failed:\n{proc.stderr.strip()[-3000:]}")
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    lab = lab_from_env(env)
    if lab is None:
        raise SystemExit(f"bench: tools/ceph-lab up printed no CEPH_CONF/RGW_ENDPOINT: {proc.stdout!r}")
    return lab


def lab_release(lab: Lab, s3: Any) -> tuple[str, str]:
    """(release, version) of the lab: the release radosgw names in its Server header ("Ceph
    Object Gateway (tentacle)"), else CEPH_RELEASE, else the ``release`` of DIR/lab.json (a
    `tools/ceph-lab` lab); the version from DIR/lab.json ("" when unknown)."""
    info: dict[str, Any] = {}
    try:
        info = json.loads((Path(lab.dir) / "lab.json").read_text())
    except (OSError, ValueError):
        pass
    release = ""
    try:
        server = s3.list_buckets()["ResponseMetadata"]["HTTPHeaders"].get("server", "")
        m = re.search(r"Ceph Object Gateway \((\w+)\)", server)
        release = m.group(1).lower() if m else ""
    except Exception as ex:  # noqa: BLE001 - the other sources still answer
        say(f"WARNING: could not read radosgw's Server header: {ex}")
    return release or lab.release or str(info.get("release", "")), str(info.get("version", ""))


def radosgw_admin(lab: Lab, *args: str, timeout: float = 120) -> str:
    """The lab release's own radosgw-admin (CEPH_BIN, else DIR/bin of a `tools/ceph-lab` lab,
    else the host's); its stdout. Raises RuntimeError with its last words on failure."""
    tool = Path(lab.bin or Path(lab.dir) / "bin") / "radosgw-admin"
    if tool.is_file():
        cmd = [str(tool)]
    else:
        cmd = ["radosgw-admin", "--conf", lab.conf, *(["--keyring", lab.keyring] if lab.keyring else [])]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"radosgw-admin {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def lab_down(directory: Path) -> None:
    say(f"stopping the Ceph lab in {directory}")
    proc = subprocess.run(
        [sys.executable, str(CEPH_LAB), "down", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        say(f"WARNING: tools/ceph-lab down {directory} failed: {proc.stderr.strip()[-1000:]}")


# --------------------------------------------------------------------------- the run


@dataclass
class Bench:
    """One benchmark run: the lab, the sizing and the things to clean up at the end."""

    lab: Lab
    tag: str
    tmp: Path
    scale: float = 1.0
    quick: bool = False
    profile: bool = False
    threads: int = 4
    throwaway: bool = False  # the lab was booted for this run and goes away with it
    shared: dict[str, Any] = field(default_factory=dict)  # resources figures share (the peer)
    _cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def size(self, full: float, quick: float, *, minimum: int = 1) -> int:
        """A workload size: ``full`` at the default, ``quick`` with --quick, times --scale."""
        return max(minimum, int(round((quick if self.quick else full) * self.scale)))

    def reps(self, full: int = 3, quick: int = 2) -> int:
        return quick if self.quick else full

    def name(self, what: str) -> str:
        """A bucket, namespace or prefix name unique to this run."""
        return f"bench-{what}-{self.tag}"

    def on_exit(self, what: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((what, fn))

    def close(self) -> None:
        while self._cleanups:
            what, fn = self._cleanups.pop()
            try:
                fn()
            except Exception as ex:  # noqa: BLE001 - one failed cleanup must not stop the others
                say(f"WARNING: cleanup {what} failed: {ex}")

    # -- clients ---------------------------------------------------------------------------

    def s3(self, *, pool: int = 32) -> S3Client:
        """boto3 S3 client to the lab's radosgw (path-style), from the project's one factory."""
        return make_s3_client(
            self.lab.rgw_endpoint,
            access_key=self.lab.access_key,
            secret_key=self.lab.secret_key,
            region=S3_REGION,
            max_attempts=5,
            connect_timeout=S3_TIMEOUT,
            read_timeout=S3_TIMEOUT,
            max_pool=pool,
        )

    def store(self, namespace: str) -> Any:
        """The project's RADOS store on the lab pool, in ``namespace``."""
        from changelog.pipeline.backends.rados import RadosStore

        return RadosStore(
            conffile=self.lab.conf, pool=self.lab.pool, namespace=namespace, keyring=self.lab.keyring or None
        )

    def raw(self, namespace: str) -> RawOmap:
        return RawOmap(self.lab, namespace)


def wipe_namespace(bench: Bench, namespace: str) -> None:
    """Remove every RADOS object of ``namespace`` (a figure's index)."""
    store = bench.store(namespace)
    try:
        oids = store.list_objects()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(store.remove_object, oids))
    finally:
        store.close()


def empty_bucket(s3: Any, bucket: str, *, workers: int = 8) -> int:
    """Delete every object of ``bucket`` one request each. Never DeleteObjects: radosgw 16.2
    aborts on a multi-object delete in a bucket with a notification."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda k: s3.delete_object(Bucket=bucket, Key=k), keys))
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for up in uploads:
        s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    return len(keys)


def remove_bucket(s3: Any, bucket: str) -> None:
    empty_bucket(s3, bucket)
    s3.delete_bucket(Bucket=bucket)


def gc_process(bench: Bench) -> None:
    """Let radosgw free the tails of deleted objects now (memstore keeps everything in RAM)."""
    cmd = ["radosgw-admin", "--conf", bench.lab.conf, "gc", "process", "--include-all"]
    if bench.lab.keyring:
        cmd[1:1] = ["--keyring", bench.lab.keyring]
    try:
        subprocess.run(cmd, capture_output=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as ex:
        say(f"WARNING: radosgw-admin gc process: {ex}")


# --------------------------------------------------------------------------- raw librados


class RawOmap:
    """Plain librados omap calls with no project code in between: the baselines' floor."""

    def __init__(self, lab: Lab, namespace: str) -> None:
        import rados

        self._rados = rados
        conf = {"keyring": lab.keyring} if lab.keyring else {}
        self.cluster = rados.Rados(conffile=lab.conf, conf=conf, name="client.admin")
        self.cluster.connect(timeout=10)
        self.ioctx = self.cluster.open_ioctx(lab.pool)
        self.ioctx.set_namespace(namespace)

    def close(self) -> None:
        self.ioctx.close()
        self.cluster.shutdown()

    def write_many(self, ops: Sequence[tuple[str, tuple[str, ...], tuple[bytes, ...]]], window: int = AIO_WINDOW) -> None:
        """One set_omap write op per (oid, keys, values), sent with aio, ``window`` in flight."""
        rados = self._rados
        inflight: deque[tuple[Any, Any, str]] = deque()

        def reap() -> None:
            wop, completion, oid = inflight.popleft()
            completion.wait_for_complete()
            code = completion.get_return_value()
            wop.release()
            if code < 0:
                raise RuntimeError(f"raw omap write to {oid} failed: errno {-code}")

        try:
            for oid, ks, vs in ops:
                wop = rados.WriteOp().create()
                self.ioctx.set_omap(wop, ks, vs)
                inflight.append((wop, self.ioctx.operate_aio_write_op(wop, oid), oid))
                if len(inflight) >= window:
                    reap()
        finally:
            while inflight:
                reap()

    def write_one(self, oid: str, key: str, value: bytes) -> None:
        """A synchronous single-key set_omap."""
        wop = self._rados.WriteOp().create()
        try:
            self.ioctx.set_omap(wop, (key,), (value,))
            self.ioctx.operate_write_op(wop, oid)
        finally:
            wop.release()

    def page(self, oid: str, start_after: str, prefix: str, limit: int = OMAP_PAGE) -> list[tuple[str, bytes]]:
        with self._rados.ReadOpCtx() as rop:
            pairs, _ = self.ioctx.get_omap_vals(rop, start_after, prefix, limit)
            self.ioctx.operate_read_op(rop, oid)
            return [(k, v or b"") for k, v in pairs]

    def scan(self, oid: str, prefix: str) -> Iterator[tuple[str, bytes]]:
        after = prefix
        while True:
            batch = self.page(oid, after, prefix)
            if not batch:
                return
            yield from batch
            after = batch[-1][0]


# --------------------------------------------------------------------------- S3 load


def put_round(
    s3: Any, bucket: str, n: int, *, threads: int, prefix: str, size: int = 4096
) -> tuple[float, dict[str, float]]:
    """``n`` PUTs of ``size`` random bytes on ``threads`` threads: (PUT/s, key -> time the PUT
    returned)."""
    body = os.urandom(size)
    done: dict[str, float] = {}
    mu = threading.Lock()

    def one(i: int) -> None:
        key = f"{prefix}/{i:07d}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        t = time.time()
        with mu:
            done[key] = t

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return n / (time.monotonic() - t0), done


class FastPut:
    """Bulk PUTs for setting up a workload (never for a measured figure): SigV4 signed by hand
    with an unsigned payload over one keep-alive connection per thread. boto3 spends ~2.5 ms
    of client CPU per request here, this ~0.3 ms; on 2 cores shared with radosgw and the OSD
    that halves the time of seeding a bucket."""

    def __init__(self, lab: Lab) -> None:
        parts = urllib.parse.urlsplit(lab.rgw_endpoint)
        self.host = parts.netloc
        self.hostname = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.access_key = lab.access_key
        self.secret_key = lab.secret_key
        self._local = threading.local()
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, date: str) -> bytes:
        key = self._keys.get(date)
        if key is None:
            k = ("AWS4" + self.secret_key).encode()
            for part in (date, S3_REGION, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            key = self._keys[date] = k
        return key

    def put(self, bucket: str, key: str, body: bytes) -> None:
        path = "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/-_.~")
        now = time.gmtime()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        date = amz_date[:8]
        canonical = (
            f"PUT\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{amz_date}\n\n"
            "host;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD"
        )
        scope = f"{date}/{S3_REGION}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "Host": self.host,
            "x-amz-date": amz_date,
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
            "Content-Length": str(len(body)),
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
        }
        for attempt in range(3):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.hostname, self.port, timeout=60)
            try:
                conn.request("PUT", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status == 200:
                return
            if resp.status < 500 or attempt == 2:
                raise RuntimeError(f"PUT {bucket}/{key}: HTTP {resp.status} {data[:300]!r}")

    def put_many(self, items: Sequence[tuple[str, str, bytes]], *, workers: int = 16) -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda it: self.put(*it), items))


def seed_backlog(
    bench: Bench, store: Any, buckets: Sequence[str], make_follower: Callable[[Any], Any], puts: int, what: str
) -> dict[str, bytes]:
    """A follower backlog for the catch-up figures: ``buckets`` created (removed at exit) and
    followed while empty by ``make_follower(seed index)`` (a leased ``Follower``) into a seed
    index in ``store``, then ``puts`` small PUTs spread over them round robin. Returns the
    follower's state (``r.`` keys) as it was before the backlog: copied into a fresh index, it
    starts a follower at the backlog's first entry."""
    from changelog.pipeline.control import FOLLOWER_PREFIX
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.store import omap_iter

    s3 = bench.s3()
    for b in buckets:
        s3.create_bucket(Bucket=b)
        bench.on_exit(f"bucket {b}", functools.partial(remove_bucket, s3, b))
    seed = ChangeIndex(store, shards=16, prefix="seed")
    follower = make_follower(seed)
    try:
        follower.run_until_caught_up(timeout=120)
    finally:
        follower.close()
    state = dict(omap_iter(store, seed.control_oid, prefix=FOLLOWER_PREFIX))
    say(f"{what}: writing {puts} PUTs into {len(buckets)} buckets")
    t0 = time.monotonic()
    FastPut(bench.lab).put_many([(buckets[i % len(buckets)], f"obj/{i:08d}", b"x" * 64) for i in range(puts)], workers=16)
    say(f"{what}: backlog written in {time.monotonic() - t0:.0f}s")
    return state


def stat_cpu_s(stat: str, hz: int) -> float:
    """User + system CPU seconds (all threads) of a ``/proc/PID/stat`` line: fields 14 and 15,
    counted after the command name, which may hold spaces and parentheses."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / hz


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds process ``pid`` has used so far; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return stat_cpu_s(f.read(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None


def lab_pids(lab: Lab) -> dict[str, int]:
    """radosgw's and the OSD's process ids, from a `tools/ceph-lab` lab's pid files (empty for a
    lab that has none: the CPU split is then not measured)."""
    out: dict[str, int] = {}
    for name, pattern in (("radosgw", "client.rgw.*.pid"), ("osd", "osd.*.pid")):
        for pf in sorted((Path(lab.dir) / "run").glob(pattern)):
            try:
                out[name] = int(pf.read_text().strip())
            except (OSError, ValueError):
                continue
            break
    return out


def rss_now_kb() -> int:
    """This process's resident set (VmRSS), KiB."""
    return _proc_status_kb("VmRSS")


def hwm_kb() -> int:
    """This process's peak resident set (VmHWM), KiB."""
    return _proc_status_kb("VmHWM")


def _proc_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0
