"""A new user's review against the real lab: `rgw-changelog serve` follows the lab's radosgw (the
index on RADOS, the logs in a directory) while real S3 clients (the AWS CLI, rclone, boto3) drive
the operations the README lists; the committed change log must then hold exactly one record per
successful mutation, none for a failed request, each valid under docs/record.schema.json and with
the values the README's record table documents (size, etag, storage class, writer).

Completeness is read from the log's own promise: once `_watermark.json` says `complete_until` is
past the end of a scenario, every mutation of it is in a committed object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.serving import free_port
from tests.lab import Lab, s3_client
from tests.record_schema import problems

# rgw-changelog's own behaviour: CI runs it on Pacific only (the radosgw facts it needs are
# covered on every release by the conformance and follower suites).
pytestmark = [pytest.mark.ceph, pytest.mark.release_neutral]

REPO = Path(__file__).resolve().parents[2]
# A new index follows every bucket of the lab (hundreds, after the other tests): its first
# watermark waits for their full syncs, 40 s under CI load.
UP_TIMEOUT_S = 240.0
FLOW_TIMEOUT_S = 120.0
MIB = 1024 * 1024


@dataclass
class Serve:
    """One `serve` process of this module, its API port and its directory of logs."""

    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    logs_dir: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def post(self, path: str) -> int:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return int(resp.status)
        except OSError:
            return 0

    def complete_until_us(self) -> int:
        try:
            doc = json.loads((self.logs_dir / "_watermark.json").read_text())
        except (OSError, ValueError):
            return 0
        return int(doc.get("complete_until_us") or 0)

    def wait_complete(self, since_us: int) -> None:
        """Until the watermark says every mutation before ``since_us`` is in a committed object."""
        started = time.monotonic()
        while self.complete_until_us() <= since_us:
            assert self.proc.poll() is None, f"serve exited; its log ends:\n{self.log_tail()}"
            assert time.monotonic() - started < FLOW_TIMEOUT_S, (
                f"watermark never passed the scenario's end; serve log:\n{self.log_tail()}"
            )
            self.post("/_/flush")
            time.sleep(0.3)
        print(f"watermark past the scenario after {time.monotonic() - started:.1f} s")

    def records(self, *buckets: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in sorted(self.logs_dir.rglob("*.jsonl")):
            if ".tmp" in path.parts:
                continue
            for line in path.read_bytes().splitlines():
                if line.strip():
                    doc = json.loads(line)
                    if doc["bucket"] in buckets:
                        out.append(doc)
        return out


def now_us() -> int:
    return time.time_ns() // 1000


def cli_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
    }


@contextlib.contextmanager
def running_serve(lab: Lab, folder: Path, extra: str = "", *, only_new: bool = False) -> Iterator[Serve]:
    """A `serve` of a new index (its own namespace) following the lab, logs in ``folder``/logs;
    yielded once its first watermark is written. ``extra``: more TOML, appended. ``only_new``:
    the buckets the lab holds now are excluded (`[source] exclude_buckets`), for tests that make
    their own: the first watermark then needs no full sync of what other tests left (a minute
    and more late in a CI run)."""
    if not lab.rgw_endpoint:
        pytest.fail("this test needs radosgw; the lab runs without it")
    logs_dir = folder / "logs"
    port = free_port()
    keyring = f'keyring = "{lab.keyring}"\n' if lab.keyring else ""
    exclude = lab.bucket_names() if only_new else []
    config = folder / "rgw-changelog.toml"
    config.write_text(
        f"""
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}pool = "{lab.pool}"
namespace = "newuser-{uuid.uuid4().hex[:12]}"
shards = 4

[source]
endpoint = "{lab.rgw_endpoint}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "default"
poll_interval = 0.2
record_writer = true
exclude_buckets = {json.dumps(exclude)}

[target]
url = "file://{logs_dir}/"
compression = "none"

[collector]
interval = 0.5
settle = 0.3

[api]
listen = "127.0.0.1:{port}"
{extra}
"""
    )
    log = folder / "serve.log"
    cli = Path(sys.executable).with_name("rgw-changelog")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(cli), "-c", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            cwd=folder,
        )
    s = Serve(proc, port, config, log, logs_dir)
    try:
        started = time.monotonic()
        while s.complete_until_us() == 0:
            assert proc.poll() is None, f"serve exited with {proc.returncode}; its log ends:\n{s.log_tail()}"
            assert time.monotonic() - started < UP_TIMEOUT_S, f"no watermark; serve log:\n{s.log_tail()}"
            s.post("/_/flush")
            time.sleep(0.5)
        print(f"serve up, first watermark after {time.monotonic() - started:.1f} s")
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def serve(ceph_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with running_serve(ceph_lab, tmp_path_factory.mktemp("newuser-serve"), only_new=True) as s:
        yield s


def aws(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("aws")
    if exe is None:
        pytest.fail("the AWS CLI is not installed (apt-get install awscli)")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": lab.access_key,
        "AWS_SECRET_ACCESS_KEY": lab.secret_key,
        "AWS_DEFAULT_REGION": "default",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    proc = subprocess.run(
        [exe, "--endpoint-url", lab.rgw_endpoint, *args], capture_output=True, text=True, timeout=120, env=env
    )
    if check:
        assert proc.returncode == 0, (args, proc.stderr)
    return proc


def rclone(lab: Lab, *args: str) -> None:
    exe = shutil.which("rclone")
    if exe is None:
        pytest.fail("rclone is not installed (apt-get install rclone)")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone refuses it on plain http
    env.update(
        {
            "RCLONE_CONFIG_LAB_TYPE": "s3",
            "RCLONE_CONFIG_LAB_PROVIDER": "Ceph",
            "RCLONE_CONFIG_LAB_ENDPOINT": lab.rgw_endpoint,
            "RCLONE_CONFIG_LAB_ACCESS_KEY_ID": lab.access_key,
            "RCLONE_CONFIG_LAB_SECRET_ACCESS_KEY": lab.secret_key,
        }
    )
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, (args, proc.stderr)


def by_object(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(records, key=lambda r: (r["key"] or "", r["seq"])):
        if rec["key"] is not None:
            out.setdefault(rec["key"], []).append(rec)
    return out


def check_schema(records: list[dict[str, Any]]) -> None:
    bad = [(r, p) for r in records if (p := problems(r))]
    assert not bad, bad[:3]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an id repeats in the committed logs"


def test_aws_cli_and_rclone_unversioned_one_record_per_mutation(
    serve: Serve, ceph_lab: Lab, tmp_path: Path
) -> None:
    s3 = s3_client(ceph_lab)
    bucket = f"nu-plain-{uuid.uuid4().hex[:8]}"
    aws(ceph_lab, "s3", "mb", f"s3://{bucket}")
    small = tmp_path / "small"
    small.write_bytes(b"hello new user\n")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(9 * MIB))  # above the AWS CLI's 8 MiB multipart threshold
    uni = "dir one/ünïcødé 😀 key.txt"
    aws(ceph_lab, "s3", "cp", str(small), f"s3://{bucket}/{uni}")
    aws(ceph_lab, "s3", "cp", str(big), f"s3://{bucket}/big.bin")
    aws(ceph_lab, "s3", "cp", f"s3://{bucket}/{uni}", f"s3://{bucket}/copy.txt")
    aws(
        ceph_lab,
        "s3api",
        "put-object-tagging",
        "--bucket",
        bucket,
        "--key",
        uni,
        "--tagging",
        "TagSet=[{Key=a,Value=b}]",
    )
    aws(ceph_lab, "s3api", "put-object-acl", "--bucket", bucket, "--key", "copy.txt", "--acl", "public-read")
    aws(ceph_lab, "s3", "rm", f"s3://{bucket}/copy.txt")
    for k in ("batch/1", "batch/2", "batch/3"):
        aws(ceph_lab, "s3api", "put-object", "--bucket", bucket, "--key", k, "--body", str(small))
    aws(
        ceph_lab,
        "s3api",
        "delete-objects",
        "--bucket",
        bucket,
        "--delete",
        json.dumps(
            {"Objects": [{"Key": "batch/1"}, {"Key": "batch/2"}, {"Key": "batch/3"}, {"Key": "never-was"}]}
        ),
    )
    rclone(ceph_lab, "copyto", str(small), f"lab:{bucket}/rclone/x y.txt")
    rclone(ceph_lab, "deletefile", f"lab:{bucket}/rclone/x y.txt")
    # Failed requests: none may leave a record.
    assert (
        aws(
            ceph_lab, "s3", "cp", f"s3://{bucket}/no-such-source", f"s3://{bucket}/c2", check=False
        ).returncode
        != 0
    )
    assert (
        aws(
            ceph_lab,
            "s3api",
            "put-object",
            "--bucket",
            bucket,
            "--key",
            "bad-md5",
            "--body",
            str(small),
            "--content-md5",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            check=False,
        ).returncode
        != 0
    )
    aws(ceph_lab, "s3", "rm", f"s3://{bucket}/never-was-either")  # success, but nothing deleted
    facts = {k: s3.head_object(Bucket=bucket, Key=k) for k in (uni, "big.bin")}
    end = now_us()
    serve.wait_complete(end)

    records = serve.records(bucket)
    check_schema(records)
    objects = by_object(records)
    ops = {k: [r["op"] for r in v] for k, v in objects.items()}
    assert ops == {
        uni: ["write", "write"],  # the PUT, then the tagging change
        "big.bin": ["write"],
        "copy.txt": ["write", "write", "delete"],  # copy, ACL change, rm
        "batch/1": ["write", "delete"],
        "batch/2": ["write", "delete"],
        "batch/3": ["write", "delete"],
        "rclone/x y.txt": ["write", "delete"],
    }, ops
    assert [r["op"] for r in records if r["key"] is None] == ["bucket_create"]
    for key, head in facts.items():
        last = objects[key][-1]
        assert last["size"] == head["ContentLength"], (key, last)
        assert last["etag"] == head["ETag"].strip('"'), (key, last)
        assert last["storage_class"] == "STANDARD", last
        assert last["version_id"] is None and last["tenant"] is None and last["baseline"] is False
        assert last["metadata"]["writer"] == "tester", last
    assert objects["big.bin"][0]["etag"].endswith("-2"), objects["big.bin"]  # the CLI's multipart upload
    assert objects[uni][0]["etag"] == hashlib.md5(small.read_bytes()).hexdigest()
    for rec in records:
        if rec["op"] == "delete":
            assert rec["size"] is None and rec["etag"] is None and "writer" not in rec.get("metadata", {}), (
                rec
            )
            assert "deleted_mtime" in rec["metadata"], rec


def test_multipart_reuploaded_and_aborted_parts(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    bucket = f"nu-mpu-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    first, again, last = b"a" * (5 * MIB), b"b" * (5 * MIB + 7), b"tail"
    up = s3.create_multipart_upload(Bucket=bucket, Key="m/ünï part.bin")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="m/ünï part.bin", UploadId=up, PartNumber=1, Body=first)
    e1 = s3.upload_part(Bucket=bucket, Key="m/ünï part.bin", UploadId=up, PartNumber=1, Body=again)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="m/ünï part.bin", UploadId=up, PartNumber=2, Body=last)["ETag"]
    # A completion naming a wrong part ETag fails: no record.
    with pytest.raises(ClientError):
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="m/ünï part.bin",
            UploadId=up,
            MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}, {"PartNumber": 2, "ETag": e2}]
            },
        )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="m/ünï part.bin",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    dropped = s3.create_multipart_upload(Bucket=bucket, Key="m/aborted")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="m/aborted", UploadId=dropped, PartNumber=1, Body=b"x" * 1024)
    s3.abort_multipart_upload(Bucket=bucket, Key="m/aborted", UploadId=dropped)
    head = s3.head_object(Bucket=bucket, Key="m/ünï part.bin")
    end = now_us()
    serve.wait_complete(end)

    records = serve.records(bucket)
    check_schema(records)
    objects = by_object(records)
    assert {k: [r["op"] for r in v] for k, v in objects.items()} == {"m/ünï part.bin": ["write"]}, objects
    rec = objects["m/ünï part.bin"][0]
    assert rec["size"] == len(again) + len(last) == head["ContentLength"], rec
    assert rec["etag"] == head["ETag"].strip('"'), rec


def test_versioned_bucket_markers_and_version_deletes(serve: Serve, ceph_lab: Lab, tmp_path: Path) -> None:
    s3 = s3_client(ceph_lab)
    bucket = f"nu-ver-{uuid.uuid4().hex[:8]}"
    aws(ceph_lab, "s3", "mb", f"s3://{bucket}")
    aws(
        ceph_lab,
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        bucket,
        "--versioning-configuration",
        "Status=Enabled",
    )
    body = tmp_path / "v"
    body.write_bytes(b"v")
    v1 = json.loads(
        aws(ceph_lab, "s3api", "put-object", "--bucket", bucket, "--key", "k", "--body", str(body)).stdout
    )
    v2 = json.loads(
        aws(ceph_lab, "s3api", "put-object", "--bucket", bucket, "--key", "k", "--body", str(body)).stdout
    )
    marker = json.loads(aws(ceph_lab, "s3api", "delete-object", "--bucket", bucket, "--key", "k").stdout)
    aws(ceph_lab, "s3api", "delete-object", "--bucket", bucket, "--key", "k")  # a marker on a marker: nothing
    aws(ceph_lab, "s3api", "delete-object", "--bucket", bucket, "--key", "k", f"--version-id={v1['VersionId']}")
    aws(
        ceph_lab,
        "s3api",
        "delete-object",
        "--bucket",
        bucket,
        "--key",
        "k",
        # radosgw's version ids may start with "-": one argument, or awscli takes it for an option
        f"--version-id={marker['VersionId']}",
    )
    # A batch delete by version id, and one of a version that does not exist (success, nothing).
    v3 = s3.put_object(Bucket=bucket, Key="j k", Body=b"j")["VersionId"]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "j k", "VersionId": v3}]})
    end = now_us()
    serve.wait_complete(end)

    records = serve.records(bucket)
    check_schema(records)
    objects = by_object(records)
    got = {k: [(r["op"], r["version_id"]) for r in v] for k, v in objects.items()}
    assert got == {
        "k": [
            ("write", v1["VersionId"]),
            ("write", v2["VersionId"]),
            ("delete_marker", marker["VersionId"]),
            ("delete", v1["VersionId"]),
            ("delete", marker["VersionId"]),
        ],
        "j k": [("write", v3), ("delete", v3)],
    }, got
    for rec in records:
        if rec["op"] in ("write", "delete_marker"):
            assert "olh_epoch" in rec["metadata"], rec
        # A version deleted before the follower read its index entry is a superseded write: no
        # facts and no writer (README's record table); every other one names its writer.
        if rec["op"] == "delete_marker" or (rec["op"] == "write" and rec["size"] is not None):
            assert rec["metadata"].get("writer") == "tester", rec
        if rec["op"] == "write" and rec["size"] is None:
            assert rec["etag"] is None and "writer" not in rec["metadata"], rec


def test_serve_with_a_backup_interval_on_a_new_index_stays_up(ceph_lab: Lab, tmp_path: Path) -> None:
    """README: `[backup] interval` makes `serve` run the backup consumer. On a new index the
    backup consumer's first step comes before the collector's first watermark (which waits for
    the follower's first catch-up), raises PermanentError "no change-log watermark ... the
    collector has not completed a pass yet", and `serve` stops: it never comes up."""
    extra = f"""
[backup]
url = "file://{tmp_path}/backups/"
interval = 3600
"""
    with running_serve(ceph_lab, tmp_path, extra, only_new=True) as s:
        assert s.proc.poll() is None
        assert s.post("/_/backup/run") == 200


def tenant_user(lab: Lab, tenant: str, uid: str) -> tuple[str, str]:
    key, secret = f"{tenant.upper()}KEY", f"{tenant}secret"
    try:
        lab.radosgw_admin(
            "user", "create", "--tenant", tenant, "--uid", uid, "--display-name", uid,
            "--access-key", key, "--secret", secret,
        )  # fmt: skip
    except RuntimeError as ex:
        if "exists" not in str(ex):
            raise
    return key, secret


def test_tenant_bucket_suspended_versioning_and_bucket_delete(
    serve: Serve, ceph_lab: Lab, tmp_path: Path
) -> None:
    tenant = "nuh4"
    key, secret = tenant_user(ceph_lab, tenant, "owner")
    tlab = Lab(**{**ceph_lab.__dict__, "access_key": key, "secret_key": secret})
    tb = f"nu-ten-{uuid.uuid4().hex[:8]}"
    body = tmp_path / "b"
    body.write_bytes(b"tenant body")
    aws(tlab, "s3", "mb", f"s3://{tb}")
    aws(tlab, "s3", "cp", str(body), f"s3://{tb}/ünï key")
    aws(tlab, "s3", "rm", f"s3://{tb}/ünï key")
    aws(tlab, "s3", "rb", f"s3://{tb}")
    # Suspended versioning (README "The null version"): a PUT writes the null version, a DELETE
    # makes a null delete marker; a record never says "null".
    sb = f"nu-sus-{uuid.uuid4().hex[:8]}"
    aws(ceph_lab, "s3", "mb", f"s3://{sb}")
    aws(
        ceph_lab,
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        sb,
        "--versioning-configuration",
        "Status=Enabled",
    )
    v1 = json.loads(
        aws(ceph_lab, "s3api", "put-object", "--bucket", sb, "--key", "k", "--body", str(body)).stdout
    )
    aws(
        ceph_lab,
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        sb,
        "--versioning-configuration",
        "Status=Suspended",
    )
    aws(ceph_lab, "s3api", "put-object", "--bucket", sb, "--key", "k", "--body", str(body))
    aws(ceph_lab, "s3api", "delete-object", "--bucket", sb, "--key", "k")
    end = now_us()
    serve.wait_complete(end)

    records = serve.records(tb, sb)
    check_schema(records)
    ten = [(r["op"], r["key"]) for r in sorted(records, key=lambda r: r["seq"]) if r["bucket"] == tb]
    assert all(r["tenant"] == tenant for r in records if r["bucket"] == tb), records
    assert ten == [
        ("bucket_create", None),
        ("write", "ünï key"),
        ("delete", "ünï key"),
        ("bucket_delete", None),
    ], ten
    sus = [
        (r["op"], r["version_id"])
        for r in sorted(records, key=lambda r: r["seq"])
        if r["bucket"] == sb and r["key"]
    ]
    assert sus == [("write", v1["VersionId"]), ("write", None), ("delete_marker", None)], sus
    # `logs cat --bucket tenant/bucket` as README spells it.
    out = subprocess.run(
        [str(Path(sys.executable).with_name("rgw-changelog")), "-c", str(serve.config), "logs", "cat", "--bucket",
         f"{tenant}/{tb}"],
        capture_output=True, text=True, timeout=60, env=cli_env(), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4, out.stdout


ODD_KEYS = [
    "_multipart_looks.internal.meta",
    "__two_underscores",
    "_shadow_x",
    "line\nbreak",
    "tab\tkey",
    "%41 percent",
    "+plus+ & amp=eq?q#h",
    "  leading and trailing spaces  ",
    "dir//double/slash/",
    "😀/" + "é" * 400,
    "x" * 1024,
]


def test_odd_keys_each_one_write_and_one_delete(serve: Serve, ceph_lab: Lab) -> None:
    s3 = s3_client(ceph_lab)
    bucket = f"nu-keys-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    sizes = {}
    for n, key in enumerate(ODD_KEYS):
        body = b"y" * (n + 1)
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        sizes[key] = len(body)
    s3.copy_object(
        Bucket=bucket, Key="__two_underscores", CopySource={"Bucket": bucket, "Key": "__two_underscores"},
        Metadata={"m": "1"}, MetadataDirective="REPLACE",
    )  # fmt: skip
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ODD_KEYS]})
    end = now_us()
    serve.wait_complete(end)

    records = serve.records(bucket)
    check_schema(records)
    got = {k: [r["op"] for r in v] for k, v in by_object(records).items()}
    want = {k: ["write", "delete"] for k in ODD_KEYS}
    want["__two_underscores"] = ["write", "write", "delete"]
    assert got == want, {
        k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)
    }


def test_versioned_multipart_copy_of_a_version_and_a_retried_completion(serve: Serve, ceph_lab: Lab) -> None:
    """A client that retries CompleteMultipartUpload (its first answer lost) gets success again
    from radosgw; the object was made once: one record. A copy of an older version, a tagging
    change of a version and a batch delete that makes markers, each one record."""
    s3 = s3_client(ceph_lab)
    bucket = f"nu-vmp-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=b"p" * (5 * MIB))["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=2, Body=b"q")["ETag"]
    parts: Any = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
    v_mp = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload=parts)[
        "VersionId"
    ]
    retried: str | None
    try:
        retried = s3.complete_multipart_upload(
            Bucket=bucket, Key="mp", UploadId=up, MultipartUpload=parts
        ).get("VersionId")
    except ClientError as ex:
        retried = f"refused: {ex.response['Error']['Code']}"
    print(f"retried completion: {retried} (first {v_mp})")
    v_a = s3.put_object(Bucket=bucket, Key="a", Body=b"old")["VersionId"]
    s3.put_object(Bucket=bucket, Key="a", Body=b"newer")
    # radosgw's CopyObject answer names no version (README, Lifecycle): read it.
    s3.copy_object(Bucket=bucket, Key="b", CopySource={"Bucket": bucket, "Key": "a", "VersionId": v_a})
    v_copy = s3.head_object(Bucket=bucket, Key="b")["VersionId"]
    s3.put_object_tagging(
        Bucket=bucket, Key="a", VersionId=v_a, Tagging={"TagSet": [{"Key": "t", "Value": "1"}]}
    )
    gone = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "mp"}]})
    markers = {d["Key"]: d["DeleteMarkerVersionId"] for d in gone["Deleted"]}
    versions = s3.list_object_versions(Bucket=bucket)
    live = {(v["Key"], v["VersionId"]) for v in versions.get("Versions", [])}
    end = now_us()
    serve.wait_complete(end)

    records = serve.records(bucket)
    check_schema(records)
    got = {k: [(r["op"], r["version_id"]) for r in v] for k, v in by_object(records).items()}
    assert got["mp"] == [("write", v_mp), ("delete_marker", markers["mp"])], (got["mp"], live)
    assert got["b"] == [("write", v_copy), ("delete_marker", markers["b"])], got["b"]
    assert [op for op, _ in got["a"]] == ["write", "write", "write", "delete_marker"], got["a"]
    assert got["a"][2] == ("write", v_a), got["a"]  # the tagging change of the older version
    writes = {(r["key"], r["version_id"]) for r in records if r["op"] == "write"}
    assert writes == live, (writes, live)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("rgw-changelog")
    return subprocess.run(
        [str(exe), "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )


def test_zone_enable_log_data_dry_run_names_an_unknown_zone(ceph_lab: Lab, tmp_path: Path) -> None:
    """`zone enable-log-data --zone NAME` refuses a zone the zonegroup does not have (one line,
    exit 1), but with `--dry-run` the same unknown zone is filtered away silently: no output,
    exit 0, as if there were nothing to report. A dry run should say what the real run would."""
    if not ceph_lab.bin:
        pytest.fail("this test needs the lab's own radosgw-admin (CEPH_BIN)")
    keyring = f'keyring = "{ceph_lab.keyring}"\n' if ceph_lab.keyring else ""
    config = tmp_path / "zone.toml"
    config.write_text(f'[index]\nbackend = "rados"\nceph_conf = "{ceph_lab.conf}"\n{keyring}')
    admin = ("--radosgw-admin", f"{ceph_lab.bin}/radosgw-admin")
    ok = cli(config, "zone", "enable-log-data", "--dry-run", *admin)
    assert ok.returncode == 0 and ok.stdout.strip() == "zone default: log_data on", (ok.stdout, ok.stderr)
    real = cli(config, "zone", "enable-log-data", "--zone", "nosuch", *admin)
    assert real.returncode == 1 and real.stderr.strip().endswith("has no zone nosuch (it has default)"), (
        real.stderr
    )
    dry = cli(config, "zone", "enable-log-data", "--dry-run", "--zone", "nosuch", *admin)
    assert (dry.returncode, dry.stderr.strip()) == (1, real.stderr.strip()), (
        dry.returncode,
        dry.stdout,
        dry.stderr,
    )


def test_bucket_removed_with_its_objects_by_radosgw_admin(serve: Serve, ceph_lab: Lab) -> None:
    """`radosgw-admin bucket rm --purge-objects`: README (Buckets) promises one `bucket_delete`
    after the bucket's last record, in committed order, even when its last object entries died
    with it."""
    s3 = s3_client(ceph_lab)
    bucket = f"nu-purge-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for k in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"z")
    # The writes are recorded before the bucket goes (else they may die with it, as documented).
    serve.wait_complete(now_us())
    ceph_lab.radosgw_admin("bucket", "rm", f"--bucket={bucket}", "--purge-objects")
    started = time.monotonic()
    while not any(r["op"] == "bucket_delete" for r in serve.records(bucket)):
        assert time.monotonic() - started < FLOW_TIMEOUT_S, (
            f"no bucket_delete; serve log:\n{serve.log_tail()}"
        )
        serve.post("/_/flush")
        time.sleep(0.5)
    print(f"bucket_delete committed after {time.monotonic() - started:.1f} s")
    records = serve.records(bucket)
    check_schema(records)
    ops = [(r["op"], r["key"]) for r in records]
    assert ops[0] == ("bucket_create", None) and ops[-1] == ("bucket_delete", None), ops
    assert sorted(k for op, k in ops if op == "write") == ["a", "b", "c"], ops
    assert [op for op, _ in ops].count("bucket_delete") == 1, ops


def test_rapid_overwrites_never_carry_another_writes_size(serve: Serve, ceph_lab: Lab) -> None:
    """README's record table: a write superseded before the follower read it has null facts; a
    record never carries another write's size. Twenty overwrites of one key, each of its own
    size, as fast as the client goes."""
    s3 = s3_client(ceph_lab)
    bucket = f"nu-over-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    etags = [s3.put_object(Bucket=bucket, Key="hot", Body=b"h" * n)["ETag"].strip('"') for n in range(1, 21)]
    serve.wait_complete(now_us())
    records = serve.records(bucket)
    check_schema(records)
    writes = [r for r in sorted(records, key=lambda r: r["seq"]) if r["op"] == "write"]
    assert len(writes) == 20, [(r["size"], r["etag"]) for r in writes]
    for n, (rec, etag) in enumerate(zip(writes, etags, strict=True), start=1):
        assert (rec["size"], rec["etag"]) in ((n, etag), (None, None)), (n, rec)
    assert (writes[-1]["size"], writes[-1]["etag"]) == (20, etags[-1]), writes[-1]
    print(f"{sum(r['size'] is None for r in writes)} of 20 writes superseded before they were read")
