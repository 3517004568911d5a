"""TLS options (``verify``, ``ca_bundle``) on every client, against a local https endpoint: a
private CA made here, a TLS-terminating proxy (``tests.tlsproxy``) in front of a moto S3 server
for the S3 target, the backup store and source and the follower's S3 reads, and in front of a
tiny http server answering the one admin call used here. No ``SSL_CERT_FILE`` or
``AWS_CA_BUNDLE``: they are removed from the environment for every test.

What must hold: with the right ``ca_bundle`` the clients work; with another CA (or the system's
CAs) they fail with one line naming the endpoint and saying to set ``ca_bundle``, a
``PermanentError`` (no retry helps); ``verify = false`` works without a bundle; the target and
the backup store take the source's TLS settings when they take its endpoint."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from changelog.cli import cli
from changelog.config import Config, open_backup_target, open_target, parse_config
from changelog.consumers.backup.consumer import BackupResources
from changelog.errors import ConfigError, PermanentError
from changelog.pipeline.s3client import make_s3_client
from rgw_module.admin import AdminClient
from tests.tlsproxy import Ca, TlsProxy, make_ca, make_server_cert

KEY, SECRET = "testing", "testing"


@dataclass(frozen=True)
class Tls:
    good: Ca
    other: Ca
    s3: TlsProxy  # https in front of moto
    admin: TlsProxy  # https in front of a small admin server
    plain_s3: str  # moto's own http endpoint


class _Admin(BaseHTTPRequestHandler):
    """``GET /admin/log?type=data`` as radosgw answers it (``num_objects``); nothing else."""

    def do_GET(self) -> None:
        body = json.dumps({"num_objects": 128}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Date", formatdate(usegmt=True))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    d = tmp_path_factory.mktemp("tls")
    good, other = make_ca(d, "good"), make_ca(d, "other")
    cert, key = make_server_cert(good, d)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    admin = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    plain = f"http://{host}:{port}"
    with TlsProxy(plain, cert, key) as s3, TlsProxy(f"http://127.0.0.1:{admin.server_address[1]}", cert, key) as ap:
        make_s3_client(
            plain, access_key=KEY, secret_key=SECRET, region="us-east-1", max_attempts=1, connect_timeout=5, read_timeout=5
        ).create_bucket(Bucket="logs")
        yield Tls(good, other, s3, ap, plain)
    admin.shutdown()
    moto.stop()


@pytest.fixture(autouse=True)
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def _cfg(tls: Tls, **tls_keys: object) -> Config:
    """Source and target on the https endpoint; ``tls_keys`` go in ``[source]`` (the target
    inherits them with the endpoint)."""
    return parse_config(
        {
            "source": {"endpoint": tls.s3.endpoint, "access_key": KEY, "secret_key": SECRET, **tls_keys},
            "target": {"url": "s3://logs/changes/"},
            "backup": {"url": "s3://logs/backups/"},
        }
    )


def one_line(ex: BaseException) -> str:
    text = str(ex)
    assert "\n" not in text, text
    assert "Traceback" not in text
    return text


# --------------------------------------------------------------------------- config


def test_the_target_and_backup_inherit_the_source_tls_settings_with_its_endpoint(tls: Tls) -> None:
    cfg = _cfg(tls, ca_bundle=str(tls.good.cert_path))
    assert cfg.source.tls_verify == str(tls.good.cert_path)
    assert cfg.target.tls_verify == str(tls.good.cert_path)
    assert cfg.backup.tls_verify == str(tls.good.cert_path)
    off = _cfg(tls, verify=False)
    assert (off.source.tls_verify, off.target.tls_verify, off.backup.tls_verify) == (False, False, False)
    # A section's own settings win; a section with its own endpoint inherits none.
    own = parse_config(
        {
            "source": {"endpoint": tls.s3.endpoint, "access_key": KEY, "secret_key": SECRET, "verify": False},
            "target": {"url": "s3://logs/x/", "ca_bundle": str(tls.other.cert_path)},
            "backup": {"url": "s3://logs/y/", "endpoint": "https://elsewhere:443", "access_key": "k", "secret_key": "s"},
        }
    )
    assert own.target.tls_verify is False  # verify inherited, and false wins over the bundle
    assert own.target.ca_bundle == str(tls.other.cert_path)
    assert own.backup.tls_verify is True


def test_a_bad_ca_bundle_is_one_line_at_load_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^source.ca_bundle: .*/nope.pem not found$"):
        parse_config({"source": {"ca_bundle": str(tmp_path / "nope.pem")}})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^target.ca_bundle: .*junk.pem is not a PEM file of CA certificates"):
        parse_config({"target": {"ca_bundle": str(junk)}})
    with pytest.raises(ConfigError, match=r"^backup.ca_bundle: .* is a directory"):
        parse_config({"backup": {"ca_bundle": str(tmp_path)}})


# --------------------------------------------------------------------------- S3 target and backup


def test_s3_target_through_https_with_the_ca_bundle(tls: Tls) -> None:
    target = open_target(_cfg(tls, ca_bundle=str(tls.good.cert_path)))
    before = tls.s3.handshakes
    target.put("tls/one.jsonl", b"{}\n")
    assert [o.name for o in target.list("tls/")] == ["tls/one.jsonl"]
    assert tls.s3.handshakes > before  # it really went through the proxy


def test_a_wrong_ca_fails_with_one_clear_line(tls: Tls) -> None:
    for cfg in (_cfg(tls, ca_bundle=str(tls.other.cert_path)), _cfg(tls)):  # another CA; the system's
        target = open_target(cfg)
        with pytest.raises(PermanentError) as err:
            target.put("tls/two.jsonl", b"{}\n")
        text = one_line(err.value)
        assert f"{tls.s3.endpoint}: TLS certificate not trusted (" in text
        assert text.endswith("set ca_bundle to its CA's PEM file")


def test_verify_false_needs_no_bundle(tls: Tls, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="changelog.pipeline.s3client"):
        target = open_target(_cfg(tls, verify=False))
        target.put("tls/three.jsonl", b"{}\n")
    assert [o.name for o in target.list("tls/three")] == ["tls/three.jsonl"]
    assert any("certificate is not checked" in r.getMessage() for r in caplog.records)


def test_backup_store_and_source_use_the_tls_settings(tls: Tls) -> None:
    res = BackupResources(_cfg(tls, ca_bundle=str(tls.good.cert_path)))
    try:
        res.store().target.put("probe", b"x")
        assert [o.name for o in open_backup_target(res.config).list("probe")] == ["probe"]
        keys = [k for k, _ in res.source().list_page("logs", versioned=False).entries]
        assert "backups/probe" in keys
    finally:
        res.close()
    bad = BackupResources(_cfg(tls, ca_bundle=str(tls.other.cert_path)))
    try:
        with pytest.raises(PermanentError, match="TLS certificate not trusted"):
            bad.source().list_page("logs", versioned=False)
        with pytest.raises(PermanentError, match="TLS certificate not trusted"):
            bad.store().target.put("probe", b"x")
    finally:
        bad.close()


# --------------------------------------------------------------------------- admin client


def test_admin_client_requests_and_s3_reads_through_https(tls: Tls) -> None:
    admin = AdminClient(tls.admin.endpoint, KEY, SECRET, verify=str(tls.good.cert_path))
    assert admin.datalog_shards() == 128
    reads = AdminClient(tls.s3.endpoint, KEY, SECRET, verify=str(tls.good.cert_path))
    assert "tls/one.jsonl" in [o.key.removeprefix("changes/") for o in reads.list_objects("logs", versions=False).items]
    insecure = AdminClient(tls.admin.endpoint, KEY, SECRET, verify=False)
    assert insecure.datalog_shards() == 128
    for a in (admin, reads, insecure):
        a.close()


@pytest.mark.parametrize("verify", ["other", True])
def test_admin_client_with_a_wrong_ca_fails_with_one_line(tls: Tls, verify: str | bool) -> None:
    v = str(tls.other.cert_path) if verify == "other" else True
    for proxy, call in ((tls.admin, lambda a: a.datalog_shards()), (tls.s3, lambda a: a.list_objects("logs", versions=False))):
        admin = AdminClient(proxy.endpoint, KEY, SECRET, verify=v)
        with pytest.raises(PermanentError) as err:
            call(admin)
        text = one_line(err.value)
        assert text.startswith(f"source {proxy.endpoint}: TLS certificate not trusted (")
        assert "set [source] ca_bundle" in text
        admin.close()


def test_an_http_endpoint_ignores_the_tls_settings(tls: Tls) -> None:
    admin = AdminClient(tls.plain_s3, KEY, SECRET, verify=str(tls.other.cert_path))
    assert admin.list_objects("logs", versions=False).items
    admin.close()


# --------------------------------------------------------------------------- the CLI


def test_config_check_connect_through_https(tls: Tls, tmp_path: Path) -> None:
    """The source's admin API and the target, each behind https with its own ``ca_bundle``."""

    def conf(source_ca: Path, target_ca: Path) -> Path:
        p = tmp_path / "c.toml"
        p.write_text(
            f"""
[index]
path = "{tmp_path / "index.db"}"
[source]
endpoint = "{tls.admin.endpoint}"
access_key = "{KEY}"
secret_key = "{SECRET}"
ca_bundle = "{source_ca}"
[target]
url = "s3://logs/changes/"
endpoint = "{tls.s3.endpoint}"
access_key = "{KEY}"
secret_key = "{SECRET}"
ca_bundle = "{target_ca}"
"""
        )
        return p

    runner = CliRunner()
    good, other = tls.good.cert_path, tls.other.cert_path
    ok = runner.invoke(cli, ["-c", str(conf(good, good)), "config", "check", "--connect"])
    assert ok.exit_code == 0, ok.output
    assert "source: ok" in ok.stderr and "target: ok" in ok.stderr
    for source_ca, target_ca, failing in ((other, good, "source"), (good, other, "target")):
        bad = runner.invoke(cli, ["-c", str(conf(source_ca, target_ca)), "config", "check", "--connect"])
        assert bad.exit_code != 0
        assert "Traceback" not in bad.output
        lines = [line for line in bad.stderr.splitlines() if "TLS certificate not trusted" in line]
        assert len(lines) == 1 and lines[0].startswith(f"{failing}: failed: ") and "ca_bundle" in lines[0], bad.stderr
