"""Two-way replication (REP.2, issue 19) between two lab radosgw zones, each with its own
``rgw-changelog serve`` replicating to the other, no faults: the replication lag in each
direction, and what echo prevention costs per echo record.

* **Lag**: both zones write ``--n`` objects each at once (fresh keys, paced at ``--rate`` per
  second per zone); a poller lists the peer's bucket every ``POLL`` seconds and notes when each
  key first appears there. Lag = first seen at the peer - the user's PUT answered. p50 / p99 per
  direction (the poll period is part of it: up to ``POLL`` too much).
* **Echo cost**: then one zone alone writes ``--echoes`` objects; the peer's replicator sees
  exactly that many echo records (the replica writes in its own log) and nothing else. Its
  ``requests`` counter (source and site, ``GET /_/crr/status/<site>`` ``live``) grown over its
  ``echoes`` counter = S3 requests per echo, both directions. Echoes are recognised by
  ``[source] record_writer = true`` (the record names the peer's replicator as its writer:
  dropped with no request); the config refuses two_way without it, so the GET fallback (the
  source object's replica metadata) is not measured here.

With ``--versioned`` the buckets are versioned (the replicators' users are system users), and
a third phase deletes ``--echoes`` versions by id in each zone: those records carry no writer,
so each costs the peer's replicator a HEAD and a listing (requests per echo).

``python -m tools.bench.two_way [--lab-a DIR] [--lab-b DIR] [--n 500] [--rate 10] [--echoes 200]
[--versioned] [--json]``: each lab is booted with `tools/ceph-lab up DIR` unless live, and stopped at the end
if this run booted it. Default dirs: the lab the environment names (else /tmp/labs/bench-2way-a)
and ``<that>-site``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changelog.pipeline.s3client import make_s3_client
from tools.bench.common import (
    REPO,
    S3_REGION,
    S3_TIMEOUT,
    Lab,
    lab_down,
    lab_from_env,
    lab_up,
    percentile,
    radosgw_admin,
    say,
)
from tools.bench.replication import lab_live
from tools.bench.serve import free_port

LOG_PREFIX = "logs"
POLL = 0.2  # seconds between listings of the peer's bucket (the lag's resolution)
WAIT = 300.0  # the most a phase waits for the replicators


def s3_of(lab: Lab, access: str | None = None, secret: str | None = None) -> Any:
    return make_s3_client(
        lab.rgw_endpoint, access_key=access or lab.access_key, secret_key=secret or lab.secret_key,
        region=S3_REGION, max_attempts=3, connect_timeout=S3_TIMEOUT, read_timeout=S3_TIMEOUT,
    )  # fmt: skip


# --------------------------------------------------------------------------- the zones


@dataclass
class ZoneServe:
    """One zone's ``serve``: its lab's buckets, replicated two-way to the peer zone."""

    lab: Lab
    zone: str
    peer: str
    tmp: Path
    buckets: list[str]
    peer_lab: Lab | None = None
    peer_keys: tuple[str, str] = ("", "")  # the replicator user's in the peer's lab
    replica_writers: list[str] = field(default_factory=list)
    record_writer: bool = True
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_bucket(self) -> str:
        return f"tw-bench-logs-{self.zone}-{self.tag}"

    def config(self) -> Path:
        assert self.peer_lab is not None
        keyring = f'keyring = "{self.lab.keyring}"\n' if self.lab.keyring else ""
        path = self.tmp / f"serve-{self.zone}-{self.tag}.toml"
        path.write_text(
            f"""
[index]
backend = "rados"
ceph_conf = "{self.lab.conf}"
{keyring}pool = "{self.lab.pool}"
namespace = "bench-2way-{self.zone}-{self.tag}"
shards = 8

[source]
endpoint = "{self.lab.rgw_endpoint}"
access_key = "{self.lab.access_key}"
secret_key = "{self.lab.secret_key}"
region = "{S3_REGION}"
buckets = {json.dumps(self.buckets)}
poll_interval = 0.2
record_writer = {"true" if self.record_writer else "false"}

[target]
url = "s3://{self.log_bucket}/{LOG_PREFIX}/"
region = "{S3_REGION}"

[collector]
interval = 0.5
settle = 0.5
roll_seconds = 2

[replication]
workers = 8
interval = 0.2
zone = "{self.zone}"

[[replication.sites]]
name = "{self.peer}"
endpoint = "{self.peer_lab.rgw_endpoint}"
access_key = "{self.peer_keys[0]}"
secret_key = "{self.peer_keys[1]}"
region = "{S3_REGION}"
two_way = true
replica_writers = {json.dumps(self.replica_writers)}

[api]
listen = "127.0.0.1:{self.port}"
"""
        )
        return path

    def start(self) -> None:
        s3_of(self.lab).create_bucket(Bucket=self.log_bucket)
        log = open(self.tmp / f"serve-{self.zone}-{self.tag}.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(self.config()), "serve"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/_/controls")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"bench: serve {self.zone} exited with {self.proc.returncode}") from None
                time.sleep(0.2)
        raise SystemExit(f"bench: serve {self.zone}'s API did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def live(self) -> dict[str, Any]:
        """The replicator's counters in this process (``echoes``, ``requests``, ...)."""
        return dict(self.get(f"/_/crr/status/{self.peer}")["live"])

    def caught_up(self, t: float) -> bool:
        """The logs cover time ``t`` and the replicator consumed them all, backlog 0."""
        try:
            body = s3_of(self.lab).get_object(Bucket=self.log_bucket, Key=f"{LOG_PREFIX}/_watermark.json")
            wm = json.loads(body["Body"].read())
            if wm["complete_until_us"] < int(t * 1_000_000):
                return False
            consumer = (self.get("/_/status").get("consumers") or {}).get(f"replication-{self.peer}") or {}
            backlog = self.get(f"/_/metrics/crr/{self.peer}/backlog")["backlog"]["results"]["count"]
            return bool(consumer.get("after") == wm["last_object"] and int(backlog) == 0)
        except Exception:  # noqa: BLE001 - not yet (no watermark, API restarting)
            return False


def replicator_user(lab: Lab, uid: str, *, system: bool = False) -> tuple[str, str]:
    """A replicator's user; ``system`` for versioned buckets (it places versions by id)."""
    flags = ["--system"] if system else []
    doc = json.loads(radosgw_admin(lab, "user", "create", f"--uid={uid}", f"--display-name={uid}", *flags))
    return doc["keys"][0]["access_key"], doc["keys"][0]["secret_key"]


def make_bucket(s3: Any, bucket: str, replicator: str) -> None:
    """The bucket, with the peer's replicator and the bucket owner allowed everything in it
    (radosgw makes the writer an object's owner: without the owner named, it gets 403 on the
    replicas)."""
    s3.create_bucket(Bucket=bucket)
    owner = s3.list_buckets()["Owner"]["ID"]
    principals = [f"arn:aws:iam:::user/{replicator}", f"arn:aws:iam:::user/{owner}"]
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": principals},
        "Action": ["s3:*"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
    }
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )


def two_zones(
    a: Lab, b: Lab, tmp: Path, *, record_writer: bool, versioned: bool = False
) -> tuple[ZoneServe, ZoneServe]:
    tag = uuid.uuid4().hex[:8]
    bucket = f"tw-bench-{tag}"
    into_a, into_b = f"bench-into-a-{tag}", f"bench-into-b-{tag}"
    keys_a, keys_b = (
        replicator_user(a, into_a, system=versioned),
        replicator_user(b, into_b, system=versioned),
    )
    for lab, into in ((a, into_a), (b, into_b)):
        make_bucket(s3_of(lab), bucket, into)
        if versioned:
            s3_of(lab).put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # Each replicator's identity works at its peer (a lab booted beside another run may not be
    # the one its endpoint answers for): fail here rather than time out later.
    s3_of(b, *keys_b).head_bucket(Bucket=bucket)
    s3_of(a, *keys_a).head_bucket(Bucket=bucket)
    za = ZoneServe(a, "a", "b", tmp, [bucket], b, keys_b, [into_a], record_writer)
    zb = ZoneServe(b, "b", "a", tmp, [bucket], a, keys_a, [into_b], record_writer)
    return za, zb


# --------------------------------------------------------------------------- the phases


@dataclass
class Direction:
    """Writes in one zone, seen at the other."""

    src: ZoneServe
    dst: ZoneServe
    prefix: str
    done: dict[str, float] = field(default_factory=dict)  # key -> the PUT answered
    seen: dict[str, float] = field(default_factory=dict)  # key -> first listed at the peer

    def write(self, n: int, rate: float) -> None:
        s3 = s3_of(self.src.lab)
        t0 = time.time()
        for i in range(n):
            ahead = t0 + i / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
            key = f"{self.prefix}{i:06d}"
            s3.put_object(Bucket=self.src.buckets[0], Key=key, Body=os.urandom(1024))
            self.done[key] = time.time()

    def poll(self, n: int, stop: threading.Event) -> None:
        s3 = s3_of(self.dst.lab)
        while len(self.seen) < n and not stop.is_set():
            now = time.time()
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.dst.buckets[0], Prefix=self.prefix
            ):
                for o in page.get("Contents", []):
                    self.seen.setdefault(o["Key"], now)
            time.sleep(POLL)

    def lags(self) -> list[float]:
        return sorted(self.seen[k] - t for k, t in self.done.items() if k in self.seen)


def lag_phase(za: ZoneServe, zb: ZoneServe, n: int, rate: float) -> dict[str, dict[str, float]]:
    dirs = [Direction(za, zb, "lag/a/"), Direction(zb, za, "lag/b/")]
    stop = threading.Event()
    threads = [threading.Thread(target=d.write, args=(n, rate)) for d in dirs]
    threads += [threading.Thread(target=d.poll, args=(n, stop), daemon=True) for d in dirs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + n / rate + WAIT
    while any(len(d.seen) < n for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    out = {}
    for d in dirs:
        xs = d.lags()
        out[f"{d.src.zone}->{d.dst.zone}"] = {
            "n": len(xs),
            "missing": n - len(xs),
            "p50_s": round(percentile(xs, 50), 3) if xs else float("nan"),
            "p99_s": round(percentile(xs, 99), 3) if xs else float("nan"),
        }
    return out


def settle(zones: list[ZoneServe]) -> None:
    """Until every zone's replicator has consumed its logs up to now."""
    t = time.time()
    deadline = time.monotonic() + WAIT
    while not all(z.caught_up(t) for z in zones):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the replicators did not catch up")
        time.sleep(0.5)


def echo_phase(src: ZoneServe, dst: ZoneServe, n: int) -> dict[str, float]:
    """``src`` alone writes ``n`` objects: ``dst``'s replicator sees ``n`` echoes and nothing
    else; its requests over its echoes."""
    settle([src, dst])
    before = dst.live()
    s3 = s3_of(src.lab)
    for i in range(n):
        s3.put_object(Bucket=src.buckets[0], Key=f"echo/{src.zone}/{i:06d}", Body=os.urandom(1024))
    settle([src, dst])
    settle([src, dst])  # the replicas' records at dst are written after src caught up
    after = dst.live()
    echoes = int(after["echoes"]) - int(before["echoes"])
    requests = int(after["requests"]) - int(before["requests"])
    return {
        "echo_records": echoes,
        "requests": requests,
        "requests_per_echo": round(requests / echoes, 3) if echoes else float("nan"),
        "completed": int(after["completed"]) - int(before["completed"]),
    }


def version_delete_phase(src: ZoneServe, dst: ZoneServe, n: int) -> dict[str, float]:
    """Versioned buckets: ``src``'s users delete ``n`` versions by id. The deletes reach ``dst``;
    their records there carry no writer (radosgw logs none for a version delete), so ``dst``'s
    replicator finds each version gone at ``src``: its requests over those records."""
    s3 = s3_of(src.lab)
    made = [
        (
            f"vdel/{src.zone}/{i:06d}",
            s3.put_object(Bucket=src.buckets[0], Key=f"vdel/{src.zone}/{i:06d}", Body=os.urandom(1024))[
                "VersionId"
            ],
        )
        for i in range(n)
    ]
    settle([src, dst])
    settle([src, dst])
    before = dst.live()
    for key, vid in made:
        s3.delete_object(Bucket=src.buckets[0], Key=key, VersionId=vid)
    settle([src, dst])
    settle([src, dst])
    after = dst.live()
    requests = int(after["requests"]) - int(before["requests"])
    return {
        "version_deletes": n,
        "requests": requests,
        "requests_per_echo": round(requests / n, 3) if n else 0.0,
    }


def run_one(a: Lab, b: Lab, tmp: Path, args: argparse.Namespace, *, record_writer: bool) -> dict[str, Any]:
    za, zb = two_zones(a, b, tmp, record_writer=record_writer, versioned=args.versioned)
    say(f"two-way, record_writer={record_writer}, versioned={args.versioned}: serves up")
    try:
        za.start()
        zb.start()
        lag = lag_phase(za, zb, args.n, args.rate)
        say(f"  lag: {lag}")
        echo = {
            "a->b (echoes at b)": echo_phase(za, zb, args.echoes),
            "b->a (echoes at a)": echo_phase(zb, za, args.echoes),
        }
        if args.versioned:
            echo["a->b (version deletes: echoes at b)"] = version_delete_phase(za, zb, args.echoes)
            echo["b->a (version deletes: echoes at a)"] = version_delete_phase(zb, za, args.echoes)
        say(f"  echo cost: {echo}")
        return {"record_writer": record_writer, "versioned": args.versioned, "lag": lag, "echo": echo}
    finally:
        za.stop()
        zb.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.two_way", description=__doc__.split("\n\n")[0])
    env_lab = lab_from_env(os.environ)
    default_a = Path(env_lab.dir) if env_lab else Path("/tmp/labs/bench-2way-a")
    ap.add_argument("--lab-a", type=Path, default=default_a)
    ap.add_argument("--lab-b", type=Path, default=None, help="default: <lab-a>-site")
    ap.add_argument("--release", default=None, help="for labs this run boots (pacific, reef, tentacle)")
    ap.add_argument("--n", type=int, default=500, help="objects each zone writes in the lag phase")
    ap.add_argument("--rate", type=float, default=10.0, help="writes per second per zone in the lag phase")
    ap.add_argument("--echoes", type=int, default=200, help="objects one zone writes in an echo phase")
    ap.add_argument(
        "--versioned",
        action="store_true",
        help="versioned buckets (system-user replicators; adds the version-delete echo cost)",
    )
    ap.add_argument("--json", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dirs = [args.lab_a, args.lab_b or Path(f"{args.lab_a}-site")]
    booted = [d for d in dirs if not lab_live(d)]
    labs = [lab_up(d, args.release) for d in dirs]
    tmp = Path(f"/tmp/bench-2way-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    try:
        # record_writer = false (echoes recognised from a GET of the source object) is refused
        # with two_way by the config since 2026-12-06: only the writer path remains.
        results = [run_one(labs[0], labs[1], tmp, args, record_writer=True)]
    finally:
        for d in booted:
            lab_down(d)
    doc = {
        "figure": "two_way",
        "n": args.n,
        "rate": args.rate,
        "echoes": args.echoes,
        "versioned": args.versioned,
        "runs": results,
        "logs": str(tmp),
    }
    print(json.dumps(doc, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
