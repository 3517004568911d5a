"""The README's first command: run the main job end to end and show where the change logs are.

With Ceph (root, or the packages installed): boot the lab (tools/ceph-lab), start
`rgw-changelog serve` (follower of the lab's radosgw, index in RADOS, logs in a radosgw bucket),
drive a mixed S3 workload through radosgw, wait until every mutation is in a committed log
object, and print a summary. Without Ceph (or with --embedded): the embedded defaults, a sqlite
index and a directory of logs, fed straight through the write hook (`rgw-changelog record`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "changelog.cli"]
LOG_BUCKET = "changelog-logs"


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def cli(cfg: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [*CLI, "-c", str(cfg), *args], input=stdin, capture_output=True, text=True, cwd=REPO, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: `rgw-changelog {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def summarize(records: list[dict[str, Any]], where: str, objects: list[str]) -> None:
    by_op = collections.Counter(r["op"] for r in records if not r.get("baseline"))
    print(f"\nchange logs: {where}")
    print(f"log objects: {len(objects)}")
    for name in objects[:10]:
        print(f"  {name}")
    print(f"records: {len(records)} ({', '.join(f'{op} {n}' for op, n in sorted(by_op.items()))})")
    print("first records:")
    for r in records[:5]:
        print("  " + json.dumps({k: r[k] for k in ("time", "bucket", "key", "version_id", "op", "size")}))
    ids = [r["id"] for r in records]
    print(f"each mutation once: {len(ids) == len(set(ids))}")


# ---------------------------------------------------------------- embedded


def embedded(work: Path) -> int:
    cfg = work / "rgw-changelog.toml"
    cfg.write_text(
        f'[index]\nbackend = "sqlite"\npath = "{work / "index.db"}"\nshards = 8\n\n'
        f'[target]\nurl = "file://{work / "logs"}/"\n\n[collector]\nsettle = 0.5\n'
    )
    rows = []
    for i in range(200):
        rows.append({"bucket": "photos", "key": f"2026/11/img-{i:04d}.jpg", "op": "write", "size": 4096 + i,
                     "etag": f"{i:032x}"})
    rows += [{"bucket": "photos", "key": f"2026/11/img-{i:04d}.jpg", "op": "delete"} for i in range(0, 200, 10)]
    rows += [
        {"bucket": "docs", "key": "report.pdf", "op": "write", "version_id": "v1", "size": 10, "etag": "a" * 32},
        {"bucket": "docs", "key": "report.pdf", "op": "write", "version_id": "v2", "size": 12, "etag": "b" * 32},
        {"bucket": "docs", "key": "report.pdf", "op": "delete_marker", "version_id": "m1"},
        {"bucket": "docs", "key": "名前 with spaces\nand newline", "op": "write", "size": 0, "etag": "c" * 32},
    ]
    say(f"recording {len(rows)} mutations through the write hook (sqlite index {work / 'index.db'})")
    cli(cfg, "record", stdin="".join(json.dumps(r) + "\n" for r in rows))
    say("draining the index into change-log objects (rgw-changelog flush)")
    cli(cfg, "flush")
    objects = [o["name"] for o in json.loads(cli(cfg, "logs", "list", "--json"))]
    records = [json.loads(line) for line in cli(cfg, "logs", "cat").splitlines() if line.strip()]
    summarize(records, f"{work / 'logs'}/", objects)
    next_steps(cfg)
    return 0 if len(records) == len(rows) else 1


# ---------------------------------------------------------------- real lab


def lab_env(work: Path, release: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "ceph-lab"), "up", str(work / "lab"), "--release", release],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"demo: tools/ceph-lab up failed: {last}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def s3_client(env: dict[str, str]) -> S3Client:
    """The lab's radosgw, from the project's one boto3 factory, with botocore's defaults (what
    this client had before): 2 retries in standard mode (3 calls in all), 60 s timeouts."""
    # Imported here: the embedded mode needs only the CLI, run as a child with the repo as cwd.
    from changelog.pipeline.s3client import make_s3_client

    return make_s3_client(
        env["RGW_ENDPOINT"],
        access_key=env["RGW_ACCESS_KEY"],
        secret_key=env["RGW_SECRET_KEY"],
        region="default",
        max_attempts=2,
        connect_timeout=60.0,
        read_timeout=60.0,
    )


def workload(s3: Any) -> list[tuple[str, str | None, str]]:
    """Mixed mutations; returns the (bucket, key, op) each one must produce."""
    want: list[tuple[str, str | None, str]] = []
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="docs")
    want += [("photos", None, "bucket_create"), ("docs", None, "bucket_create")]
    s3.put_bucket_versioning(Bucket="docs", VersioningConfiguration={"Status": "Enabled"})
    for i in range(20):
        s3.put_object(Bucket="photos", Key=f"2026/img-{i:03d}.jpg", Body=os.urandom(4096))
        want.append(("photos", f"2026/img-{i:03d}.jpg", "write"))
    s3.put_object(Bucket="photos", Key="2026/img-000.jpg", Body=b"overwritten")
    want.append(("photos", "2026/img-000.jpg", "write"))
    s3.copy_object(Bucket="photos", Key="copy of img-001.jpg", CopySource={"Bucket": "photos", "Key": "2026/img-001.jpg"})
    want.append(("photos", "copy of img-001.jpg", "write"))
    mp = s3.create_multipart_upload(Bucket="photos", Key="big/video.mp4")
    parts = []
    for n in (1, 2):
        r = s3.upload_part(Bucket="photos", Key="big/video.mp4", UploadId=mp["UploadId"], PartNumber=n,
                           Body=os.urandom(5 * 1024 * 1024))
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket="photos", Key="big/video.mp4", UploadId=mp["UploadId"],
                                 MultipartUpload={"Parts": parts})
    want.append(("photos", "big/video.mp4", "write"))
    s3.delete_object(Bucket="photos", Key="2026/img-002.jpg")
    want.append(("photos", "2026/img-002.jpg", "delete"))
    s3.delete_objects(Bucket="photos", Delete={"Objects": [{"Key": f"2026/img-{i:03d}.jpg"} for i in (3, 4, 5)]})
    want += [("photos", f"2026/img-{i:03d}.jpg", "delete") for i in (3, 4, 5)]
    s3.put_object(Bucket="photos", Key="ünïcødé key with spaces", Body=b"")
    want.append(("photos", "ünïcødé key with spaces", "write"))
    v1 = s3.put_object(Bucket="docs", Key="report.pdf", Body=b"v1")["VersionId"]
    s3.put_object(Bucket="docs", Key="report.pdf", Body=b"v2")
    want += [("docs", "report.pdf", "write")] * 2
    s3.delete_object(Bucket="docs", Key="report.pdf")
    want.append(("docs", "report.pdf", "delete_marker"))
    s3.delete_object(Bucket="docs", Key="report.pdf", VersionId=v1)
    want.append(("docs", "report.pdf", "delete"))
    return want


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(serve: subprocess.Popen[bytes], port: int, work: Path) -> None:
    """Until serve's status says the follower has bootstrapped: buckets created from now on are
    followed from their first log entry."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SystemExit(f"demo: serve exited with {serve.returncode}; see {work / 'serve.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/status", timeout=5) as r:
                if (json.loads(r.read()).get("follower") or {}).get("bootstrapped"):
                    # The follower's first start is known to the second: buckets created more
                    # than a second later are followed from their first log entry.
                    time.sleep(1.2)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: serve did not become healthy in 60 s; see {work / 'serve.log'}")


def next_steps(cfg: Path) -> None:
    """Commands to explore the result, each runnable as printed from any shell."""
    exe = REPO / ".venv" / "bin" / "rgw-changelog"
    print("\nnext (each works as printed):")
    for args in ("status", "logs cat", "shards list"):
        print(f"  {exe} -c {cfg} {args}")


def on_lab(work: Path, keep: bool, release: str) -> int:
    say(f"booting the Ceph lab (tools/ceph-lab up --release {release})")
    env = lab_env(work, release)
    say(f"Ceph {env.get('CEPH_RELEASE', release)} {env.get('CEPH_VERSION', '')}, radosgw at {env['RGW_ENDPOINT']}")
    s3 = s3_client(env)
    s3.create_bucket(Bucket=LOG_BUCKET)
    cfg = work / "rgw-changelog.toml"
    port = free_port()
    cfg.write_text(
        f'[index]\nbackend = "rados"\nceph_conf = "{env["CEPH_CONF"]}"\nkeyring = "{env["CEPH_KEYRING"]}"\n'
        f'pool = "{env["CEPH_POOL"]}"\nnamespace = "demo-{int(time.time())}"\nshards = 8\n\n'
        f'[source]\nendpoint = "{env["RGW_ENDPOINT"]}"\naccess_key = "{env["RGW_ACCESS_KEY"]}"\n'
        f'secret_key = "{env["RGW_SECRET_KEY"]}"\nregion = "default"\nexclude_buckets = ["{LOG_BUCKET}"]\n'
        f'poll_interval = 0.5\n\n'
        f'[target]\nurl = "s3://{LOG_BUCKET}/logs/"\ncompression = "gzip"\n\n'
        f'[collector]\ninterval = 1\nsettle = 1\nroll_seconds = 5\n\n[api]\nlisten = "127.0.0.1:{port}"\n'
    )
    say(f"starting rgw-changelog serve (log: {work / 'serve.log'})")
    log = open(work / "serve.log", "w")
    serve = subprocess.Popen([*CLI, "-c", str(cfg), "-v", "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready(serve, port, work)
        say("driving a mixed S3 workload through radosgw")
        t0 = time.monotonic()
        want = workload(s3)
        say(f"{len(want)} mutations done; waiting for them in committed change-log objects")
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if serve.poll() is not None:
                raise SystemExit(f"demo: serve exited with {serve.returncode}; see {work / 'serve.log'}")
            records = [json.loads(x) for x in cli(cfg, "logs", "cat").splitlines() if x.strip()]
            got = collections.Counter((r["bucket"], r["key"], r["op"]) for r in records if not r.get("baseline"))
            if got == collections.Counter(want):
                break
            time.sleep(1)
        lag = time.monotonic() - t0
        objects = [o["name"] for o in json.loads(cli(cfg, "logs", "list", "--json"))]
        summarize(records, f"{env['RGW_ENDPOINT']}/{LOG_BUCKET}/logs/", objects)
        got = collections.Counter((r["bucket"], r["key"], r["op"]) for r in records if not r.get("baseline"))
        ok = got == collections.Counter(want)
        print(f"all {len(want)} mutations committed: {ok} (workload start to last commit: {lag:.1f} s)")
        if not ok:
            print(f"missing: {sorted((collections.Counter(want) - got).elements())}")
            print(f"unexpected: {sorted((got - collections.Counter(want)).elements())}")
        if keep:
            next_steps(cfg)
        else:
            print("\nthe lab is stopped now; `tools/demo --keep` leaves it up to explore the logs")
        return 0 if ok else 1
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
        if keep:
            print(f"lab left running: tools/ceph-lab down {work / 'lab'}")
        else:
            subprocess.run([sys.executable, str(REPO / "tools" / "ceph-lab"), "down", str(work / "lab")],
                           capture_output=True, check=False)


def ceph_available() -> str | None:
    if os.geteuid() == 0:
        return None
    missing = [b for b in ("ceph-mon", "ceph-osd", "radosgw") if shutil.which(b) is None]
    return f"Ceph packages missing ({', '.join(missing)}) and not root" if missing else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedded", action="store_true", help="use the embedded defaults even if Ceph is available")
    ap.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    ap.add_argument("--dir", default=str(REPO / "demo"), help="working folder (default: ./demo)")
    ap.add_argument(
        "--release",
        choices=("pacific", "reef", "tentacle"),
        default=os.environ.get("CEPH_RELEASE") or "pacific",
        help="Ceph release of the lab (default: $CEPH_RELEASE, else pacific, the host's packages)",
    )
    args = ap.parse_args()
    work = Path(args.dir).resolve()
    if (work / "lab").exists():  # a lab kept by an earlier --keep: start clean
        subprocess.run([sys.executable, str(REPO / "tools" / "ceph-lab"), "down", str(work / "lab")],
                       capture_output=True, check=False)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    why = ceph_available()
    if args.embedded or why:
        if why:
            say(f"no Ceph here ({why}): running on the embedded defaults")
        return embedded(work)
    try:
        import rados  # noqa: F401
    except ImportError:
        say("python3-rados not importable: running on the embedded defaults")
        return embedded(work)
    return on_lab(work, args.keep, args.release)


if __name__ == "__main__":
    sys.exit(main())
