"""HTTPS to the real radosgw: the lab's radosgw behind a TLS-terminating proxy whose certificate
is signed by a private CA made here (``tests.tlsproxy``), used through ``ca_bundle`` only:
``SSL_CERT_FILE`` and ``AWS_CA_BUNDLE`` are removed from every child's environment.

* ``config check --connect`` reaches the source's admin API, the index and the S3 target (which
  takes the source's endpoint and TLS settings) through https; with another self-made CA it
  fails with one line per client naming the endpoint and ``ca_bundle``; ``verify = false``
  passes without a bundle.
* ``serve`` follows and commits through https (admin API, S3 reads and the S3 target all
  through the proxy), with ``[api] token`` set: the CLI's ``pause`` and ``flush`` send it and
  work, the same without the token are refused with 401 and one line, and neither the token
  nor a traceback reaches serve's log; the log names the port the API really bound.
"""

from __future__ import annotations

import json
import os
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

from tests.lab import Lab
from tests.tlsproxy import Ca, TlsProxy, make_ca, make_server_cert

pytestmark = pytest.mark.ceph

REPO = Path(__file__).resolve().parents[2]
TOKEN = "lab-Token-7f3a9c"
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@dataclass(frozen=True)
class Https:
    lab: Lab
    proxy: TlsProxy
    good: Ca
    other: Ca
    tmp: Path


@pytest.fixture(scope="module")
def https(ceph_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    d = tmp_path_factory.mktemp("tls-lab")
    good, other = make_ca(d, "good"), make_ca(d, "other")
    cert, key = make_server_cert(good, d)
    with TlsProxy(ceph_lab.rgw_endpoint, cert, key) as proxy:
        yield Https(ceph_lab, proxy, good, other, d)


@pytest.fixture
def bucket(s3_client: Any) -> Iterator[str]:
    name = f"tls-logs-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for o in s3_client.list_objects_v2(Bucket=name).get("Contents", []):
        s3_client.delete_object(Bucket=name, Key=o["Key"])
    s3_client.delete_bucket(Bucket=name)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CA_ENV}
    env["PYTHONPATH"] = str(REPO)
    return env


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from changelog.cli import main; main()", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(h: Https, path: Path, *, ns: str, log_bucket: str, tls: str, extra: str = "") -> Path:
    lab = h.lab
    keyring = f'keyring = "{lab.keyring}"' if lab.keyring else ""
    path.write_text(
        f"""
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}
pool = "{lab.pool}"
namespace = "{ns}"
shards = 4
connect_timeout = 5

[source]
endpoint = "{h.proxy.endpoint}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "default"
{tls}

[target]
url = "s3://{log_bucket}/logs/"
region = "default"

{extra}
"""
    )
    return path


def clean_namespace(lab: Lab, ns: str) -> None:
    from changelog.pipeline.backends.rados import RadosStore

    store = RadosStore(conffile=lab.conf, pool=lab.pool, namespace=ns, keyring=lab.keyring or None)
    try:
        for oid in store.list_objects():
            store.remove_object(oid)
    finally:
        store.close()


def test_config_check_connect_through_https(https: Https, bucket: str, tmp_path: Path) -> None:
    ns = f"tls-check-{uuid.uuid4().hex[:8]}"
    good = write_config(https, tmp_path / "good.toml", ns=ns, log_bucket=bucket, tls=f'ca_bundle = "{https.good.cert_path}"')
    before = https.proxy.handshakes
    p = cli("-c", str(good), "config", "check", "--connect")
    assert p.returncode == 0, p.stderr
    assert f"source: ok ({https.proxy.endpoint}" in p.stderr
    assert "index: ok" in p.stderr and "target: ok" in p.stderr
    assert https.proxy.handshakes >= before + 2  # the admin client and the S3 target, both through TLS

    wrong = write_config(https, tmp_path / "wrong.toml", ns=ns, log_bucket=bucket, tls=f'ca_bundle = "{https.other.cert_path}"')
    failed_before = https.proxy.failed_handshakes
    p = cli("-c", str(wrong), "config", "check", "--connect")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    untrusted = [line for line in p.stderr.splitlines() if "TLS certificate not trusted" in line]
    # One line per client: the source (admin API) and the target (which inherited the CA).
    assert [line.split(":", 1)[0] for line in untrusted] == ["source", "target"], p.stderr
    assert untrusted[0].startswith(f"source: failed: source {https.proxy.endpoint}: TLS certificate not trusted (")
    assert untrusted[0].endswith("set [source] ca_bundle to its CA's PEM file (or verify = false)")
    assert f"{https.proxy.endpoint}: TLS certificate not trusted" in untrusted[1] and "set ca_bundle" in untrusted[1]
    assert https.proxy.failed_handshakes > failed_before

    # Without a bundle the system's CAs are used: our private CA is not among them.
    system = write_config(https, tmp_path / "system.toml", ns=ns, log_bucket=bucket, tls="")
    p = cli("-c", str(system), "config", "check", "--connect")
    assert p.returncode != 0 and p.stderr.count("TLS certificate not trusted") == 2, p.stderr

    insecure = write_config(https, tmp_path / "insecure.toml", ns=ns, log_bucket=bucket, tls="verify = false")
    p = cli("-c", str(insecure), "config", "check", "--connect")
    assert p.returncode == 0, p.stderr
    assert "certificate is not checked" in p.stderr
    clean_namespace(https.lab, ns)


def _watermark_us(s3: Any, bucket: str) -> int:
    try:
        body = s3.get_object(Bucket=bucket, Key="logs/_watermark.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return 0
    return int(json.loads(body)["complete_until_us"])


def test_serve_through_https_with_an_api_token(https: Https, bucket: str, s3_client: Any, tmp_path: Path) -> None:
    ns = f"tls-serve-{uuid.uuid4().hex[:8]}"
    data = f"tls-data-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=data)
    port = free_port()
    extra = f"""
[collector]
interval = 0.5
settle = 0.5
lease_ttl = 5
roll_seconds = 2

[api]
listen = "127.0.0.1:{port}"
token_env = "TLS_LAB_TOKEN"

[logging]
level = "INFO"
"""
    tls = f'ca_bundle = "{https.good.cert_path}"\nbuckets = ["{data}"]\npoll_interval = 0.2\nlease_ttl = 5'
    conf = write_config(https, tmp_path / "serve.toml", ns=ns, log_bucket=bucket, tls=tls, extra=extra)
    no_token = write_config(https, tmp_path / "no-token.toml", ns=ns, log_bucket=bucket, tls=tls,
                            extra=extra.replace('token_env = "TLS_LAB_TOKEN"', ""))
    log_path = tmp_path / "serve.log"
    env = {**child_env(), "TLS_LAB_TOKEN": TOKEN}
    before = https.proxy.handshakes
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(conf), "serve"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        keys = [f"k{i:02d}" for i in range(20)]
        t0 = time.time()
        for k in keys:
            s3_client.put_object(Bucket=data, Key=k, Body=k.encode())
        deadline = time.monotonic() + 120
        while _watermark_us(s3_client, bucket) < int(t0 * 1_000_000) + 1:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "not committed within 120 s\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)

        def token_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(cfg), *args],
                cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
            )  # fmt: skip

        refused = token_cli(no_token, "pause", "follower")
        assert refused.returncode != 0
        assert refused.stderr.strip().count("\n") == 0 and "401 a token is required (api.token)" in refused.stderr
        paused = token_cli(conf, "pause", "follower")
        assert paused.returncode == 0, paused.stderr
        assert "follower paused" in paused.stdout
        assert token_cli(conf, "resume").returncode == 0
        flushed = token_cli(conf, "flush")
        assert flushed.returncode == 0, flushed.stderr
        assert "by serve at" in flushed.stderr

        got = token_cli(conf, "logs", "cat", "--bucket", data)
        assert got.returncode == 0, got.stderr
        lines = [json.loads(line) for line in got.stdout.splitlines()]
        # The bucket's own record (key null) and one per object.
        assert [d["op"] for d in lines if d["key"] is None] == ["bucket_create"]
        assert {d["key"] for d in lines if d["key"] is not None} == set(keys)
        assert https.proxy.handshakes > before
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        for o in s3_client.list_objects_v2(Bucket=data).get("Contents", []):
            s3_client.delete_object(Bucket=data, Key=o["Key"])
        s3_client.delete_bucket(Bucket=data)
        clean_namespace(https.lab, ns)
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    assert f"api listening on 127.0.0.1:{port};" in text
    assert "POST routes: token required" in text
    assert TOKEN not in text and "Traceback" not in text
