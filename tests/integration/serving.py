"""Several `rgw-changelog serve` processes on one index, for the scale-out lab test
(tests/integration/test_scale_lab.py): each instance has its own config file (only `[api] listen`
differs) and log file, is started as a subprocess, SIGKILLed and restarted by the test; who holds
which follower partition and which collector stream is read straight from the partition leases
on the control object.

With ``isolated`` (root and util-linux `unshare`), each process runs with a host name and a pid
namespace of its own, as if on a host of its own: a lease's holder cookie then names a host that
nobody else is on, so a dead instance's partitions are not broken by pid
(``changelog.pipeline.lease.dead_holder``) but wait for their lease to expire, the path a fleet
of several hosts takes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changelog.pipeline.control import COLLECTOR_ROLE, FOLLOWER_ROLE, partition_lock
from changelog.pipeline.lease import lock_held
from changelog.pipeline.logformat import LogRecord, compression_of, iter_records, parse_log_name
from tests.lab import Lab

REPO = Path(__file__).resolve().parents[2]
LOG_PREFIX = "logs"
# The index's control object ([index] prefix "changelog"): the partition leases are on it.
CONTROL_OID = "changelog.control"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A process as a lease cookie names it: its host name and its pid there (``make_cookie``:
# ``tag:host:pid.start.ns:uuid``). An isolated process has a host name of its own.
Identity = tuple[str, int]


def cookie_identity(cookie: str) -> Identity | None:
    parts = cookie.split(":")
    if len(parts) < 4:
        return None
    pid = parts[-2].split(".", 1)[0]
    return (parts[-3], int(pid)) if pid.isdigit() else None


def ns_pid(pid: int) -> int | None:
    """Process ``pid``'s pid in its own pid namespace."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line.split()[-1] for line in f if line.startswith("NSpid:")))
    except (OSError, StopIteration, ValueError):
        return None


def can_isolate() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@dataclass
class Slot:
    """One instance's place: its API port and config; ``proc`` is its current process."""

    n: int
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    # The serve process itself (with ``isolated``, ``proc`` is `unshare`, its parent).
    pid: int | None = None
    identity: Identity | None = None
    starts: int = 0
    killed: bool = False  # by the test: its exit is expected

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Fleet:
    """``size`` partitioned `serve` instances of one index, following ``buckets``."""

    lab: Lab
    tmp: Path
    ns: str
    log_bucket: str
    buckets: list[str]
    size: int = 3
    partitions: int = 8
    streams: int = 4  # collector partitions
    lease_ttl: float = 6.0
    poll_interval: float = 0.3
    trim_interval: float = 1.0
    isolated: bool = False
    slots: list[Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slots = [Slot(n, free_port(), self.tmp / f"serve-{n}.toml") for n in range(self.size)]

    def write_configs(self) -> None:
        for slot in self.slots:
            slot.config.write_text(self._config(slot.port))

    def _config(self, port: int) -> str:
        keyring = f'keyring = "{self.lab.keyring}"\n' if self.lab.keyring else ""
        return f"""
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
poll_interval = {self.poll_interval}
lease_ttl = {self.lease_ttl}
trim_interval = {self.trim_interval}
# A data-log shard is trimmed to the lowest marker of every partition, and a partition reads the
# shards none of its buckets log to only on a full pass (default every 60 s): often, for the test.
datalog_full_interval = 3
workers = 4

[target]
url = "s3://{self.log_bucket}/{LOG_PREFIX}/"
region = "default"

[collector]
interval = 0.5
settle = 0.5
lease_ttl = {self.lease_ttl}
roll_seconds = 5

[scale]
partitioned = true
follower_partitions = {self.partitions}
collector_partitions = {self.streams}

[api]
listen = "127.0.0.1:{port}"

[logging]
level = "INFO"
"""

    # -- processes ---------------------------------------------------------------------------

    def start(self, n: int) -> None:
        slot = self.slots[n]
        name = f"serve-{n}.{slot.starts}"
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        slot.starts += 1
        slot.killed = False
        cmd = [
            sys.executable,
            "-c",
            "from changelog.cli import main; main()",
            "-c",
            str(slot.config),
            "serve",
        ]
        host = socket.gethostname()
        if self.isolated:
            host = name.replace(".", "-")
            run = f"hostname {host} && exec {shlex.join(cmd)}"
            cmd = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c", run]
        slot.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        slot.pid = self._serve_pid(slot.proc)
        pid = ns_pid(slot.pid)
        assert pid is not None, f"serve {n} (pid {slot.pid}) is gone already\n{self.log_tail()}"
        slot.identity = (host, pid)

    def _serve_pid(self, proc: subprocess.Popen[bytes]) -> int:
        if not self.isolated:
            return proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = f.read().split()
                if children:
                    return int(children[0])
            time.sleep(0.01)
        raise AssertionError(f"unshare (pid {proc.pid}) started no serve")

    def _signal(self, n: int, sig: signal.Signals) -> None:
        slot = self.slots[n]
        if slot.alive and slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, sig)

    def kill(self, n: int) -> None:
        slot = self.slots[n]
        if slot.proc is not None and slot.alive:
            slot.killed = True
            self._signal(n, signal.SIGKILL)
            slot.proc.wait(30)

    def kill_all(self) -> None:
        for slot in self.slots:
            self.kill(slot.n)

    def terminate_all(self, timeout: float = 60) -> dict[int, int | None]:
        """SIGTERM every live instance at once; their exit codes."""
        live = [s for s in self.slots if s.alive]
        for s in live:
            self._signal(s.n, signal.SIGTERM)
        out: dict[int, int | None] = {}
        for s in live:
            assert s.proc is not None
            try:
                out[s.n] = s.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                out[s.n] = None
        return out

    def live(self) -> set[Identity]:
        return {s.identity for s in self.slots if s.identity is not None and s.alive}

    def check_running(self) -> None:
        """Fail if an instance the test did not kill has exited."""
        for s in self.slots:
            if s.proc is not None and not s.killed and s.proc.poll() is not None:
                raise AssertionError(f"serve {s.n} exited with {s.proc.returncode}\n{self.log_tail()}")

    def get(self, n: int, path: str) -> Any:
        url = f"http://127.0.0.1:{self.slots[n].port}{path}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, n: int, path: str, timeout: float = 320) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.slots[n].port}{path}", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def wait_api(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                self.get(n, "/_/controls")
                return
            slot = self.slots[n]
            if slot.proc is not None and slot.proc.poll() is not None:
                raise AssertionError(f"serve {n} exited with {slot.proc.returncode}\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(f"serve {n}: API did not come up\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted(self.tmp.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-chars:] for p in logs[-3:])

    def logs_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("serve-*.log")))

    # -- the partition leases ----------------------------------------------------------------

    def holders(self, store: Any, role: str = FOLLOWER_ROLE) -> dict[int, Identity | None]:
        """Partition of ``role`` -> the process holding its lease now (None: free or expired)."""
        now = time.time()
        out: dict[int, Identity | None] = {}
        for p in range(self.partitions if role == FOLLOWER_ROLE else self.streams):
            info = store.lock_info(CONTROL_OID, partition_lock(role, p))
            out[p] = cookie_identity(info.cookie) if lock_held(info, now) else None
        return out

    def unheld(self, store: Any, role: str = FOLLOWER_ROLE) -> list[int]:
        """The partitions of ``role`` no live instance holds (free, expired, or held by a dead
        process)."""
        live = self.live()
        return [p for p, who in self.holders(store, role).items() if who not in live]

    def unheld_any(self, store: Any) -> list[str]:
        """Every role's unheld partitions: ``f<p>`` for the follower's, ``c<p>`` for the
        collector's streams."""
        return [f"f{p}" for p in self.unheld(store)] + [f"c{p}" for p in self.unheld(store, COLLECTOR_ROLE)]


class Sampler:
    """Samples which partitions (the follower's and the collector's) no live instance holds,
    every ``every`` seconds, in a thread of its own, to tell how long each partition stayed
    unheld at a stretch (after a kill, or between one instance releasing it and another taking
    it)."""

    def __init__(self, fleet: Fleet, store: Any, every: float = 0.1) -> None:
        self.fleet = fleet
        self.store = store
        self.every = every
        self.samples: list[tuple[float, list[str]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.fleet.unheld_any(self.store)))
            except BaseException as ex:  # noqa: BLE001 - reported by the test
                self.errors.append(ex)
            self._stop.wait(self.every)

    def longest_unheld(self) -> dict[str, float]:
        """Partition (``f<p>``, ``c<p>``) -> its longest stretch unheld (first to last sample,
        plus one interval)."""
        since: dict[str, float] = {}
        longest: dict[str, float] = {}
        for t, unheld in self.samples:
            for p in unheld:
                since.setdefault(p, t)
                longest[p] = max(longest.get(p, 0.0), t - since[p] + self.every)
            for p in [p for p in since if p not in unheld]:
                del since[p]
        return longest


def watermark_doc(s3: Any, log_bucket: str) -> dict[str, Any]:
    try:
        body = s3.get_object(Bucket=log_bucket, Key=f"{LOG_PREFIX}/_watermark.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return {}
    doc: dict[str, Any] = json.loads(body)
    return doc


def watermark_us(s3: Any, log_bucket: str) -> int:
    return int(watermark_doc(s3, log_bucket).get("complete_until_us", 0))


def committed(s3: Any, bucket: str) -> list[LogRecord]:
    """Every record of every committed log object in ``bucket``, object by object in name order
    (the order a reader merges the collector streams in; not through the reader, which would
    drop a repeated id)."""
    return [r for _, r in committed_by_object(s3, bucket)]


def committed_by_object(s3: Any, bucket: str) -> list[tuple[str, LogRecord]]:
    """(object name, record) of every committed log object in ``bucket``, in name order."""
    out: list[tuple[str, LogRecord]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{LOG_PREFIX}/"):
        for o in page.get("Contents", []):
            name = o["Key"]
            if parse_log_name(name) is None:
                continue
            body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            out.extend((name, r) for r in iter_records(io.BytesIO(body), compression_of(name)))
    return out
