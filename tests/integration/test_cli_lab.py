"""The operator CLI against the real lab: the index on RADOS (dump and trim on real shards, under
real cls_lock leases), log objects in a radosgw bucket (`logs list`, `logs cat`), and the ways a
new user gets the cluster or the endpoint wrong: each one line on stderr and a non-zero exit.

Runs the installed console script (the product as an operator meets it), in a namespace of its
own in the lab's pool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.ceph

MUTATIONS: list[dict[str, Any]] = [{"bucket": "photos", "key": f"2026/{i:03d}.jpg", "size": i, "etag": f"e{i}"} for i in range(40)] + [
    {"bucket": "docs", "key": "ünïcode key with spaces", "op": "delete"},
    {"bucket": "docs", "key": "v", "version_id": "v-1", "op": "delete_marker"},
]


def console_script() -> str:
    here = Path(sys.executable).parent / "rgw-changelog"
    found = str(here) if here.exists() else shutil.which("rgw-changelog")
    if not found:
        pytest.fail("the rgw-changelog console script is not installed (pip install -e .)")
    return found


def sh(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def jsonl(docs: list[dict[str, Any]]) -> str:
    return "".join(orjson.dumps(d).decode() + "\n" for d in docs)


def toml_config(lab: Any, *, namespace: str, bucket: str, **overrides: str | None) -> str:
    values: dict[str, str | None] = {
        "ceph_conf": f'"{lab.conf}"',
        "keyring": f'"{lab.keyring}"' if lab.keyring else None,
        "pool": f'"{lab.pool}"',
        "namespace": f'"{namespace}"',
        "endpoint": f'"{lab.rgw_endpoint}"',
        "access_key": f'"{lab.access_key}"',
        "secret_key": f'"{lab.secret_key}"',
        "url": f'"s3://{bucket}/logs/"',
    }
    values.update(overrides)

    def line(key: str) -> str:
        v = values[key]
        return f"{key} = {v}" if v is not None else ""

    return f"""
[index]
backend = "rados"
{line("ceph_conf")}
{line("keyring")}
{line("pool")}
{line("namespace")}
connect_timeout = 3
shards = 4
prefix = "cli"

[source]
{line("endpoint")}
{line("access_key")}
{line("secret_key")}
region = "default"

[target]
{line("url")}
region = "default"
compression = "gzip"

[collector]
settle = 0
lease_ttl = 10

[api]
listen = "127.0.0.1:1"
"""


@pytest.fixture
def bucket(s3_client: Any) -> Iterator[str]:
    name = f"cli-logs-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    objs = s3_client.list_objects_v2(Bucket=name).get("Contents", [])
    for o in objs:
        s3_client.delete_object(Bucket=name, Key=o["Key"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def conf(ceph_lab: Any, bucket: str, tmp_path: Path) -> Path:
    p = tmp_path / "lab.toml"
    p.write_text(toml_config(ceph_lab, namespace=f"cli-{uuid.uuid4().hex[:8]}", bucket=bucket))
    return p


def shard_with_entries(c: list[str]) -> tuple[int, list[dict[str, Any]]]:
    shards = orjson.loads(sh(*c, "shards", "list", "--json").stdout)
    best = max(shards, key=lambda s: s["entries"])
    lines = [orjson.loads(x) for x in sh(*c, "shards", "dump", str(best["shard"])).stdout.splitlines()]
    assert len(lines) == best["entries"] > 2
    return best["shard"], lines


def test_dump_trim_collect_and_cat_on_rados_and_radosgw(conf: Path, bucket: str, s3_client: Any) -> None:
    c = ["-c", str(conf)]
    p = sh(*c, "record", stdin=jsonl(MUTATIONS))
    assert p.returncode == 0, p.stderr
    assert "recorded 42 mutations" in p.stderr

    st = orjson.loads(sh(*c, "status", "--json").stdout)
    assert st["index"]["backend"] == "rados" and st["index"]["entries"] == 42
    shard, entries = shard_with_entries(c)
    all_ids = {
        d["id"] for s in range(4) for d in map(orjson.loads, sh(*c, "shards", "dump", str(s)).stdout.splitlines())
    }
    assert len(all_ids) == 42

    # --limit and windows on a real shard
    assert len(sh(*c, "shards", "dump", str(shard), "--limit", "2").stdout.splitlines()) == 2
    assert sh(*c, "shards", "dump", str(shard), "--since", "now").stdout == ""

    # Trim the first two entries of that shard, exactly, under its drain lease.
    upto = entries[1]["index_key"]
    p = sh(*c, "shards", "trim", str(shard), "--upto", upto, "--yes")
    assert p.returncode == 0, p.stderr
    assert f"shard {shard}: trimmed 2 entries" in p.stderr
    left = [orjson.loads(x) for x in sh(*c, "shards", "dump", str(shard)).stdout.splitlines()]
    assert left == entries[2:]
    trimmed = {entries[0]["id"], entries[1]["id"]}

    # No confirmation from a closed stdin: nothing happens.
    p = sh(*c, "shards", "trim", str(shard), "--before", "now", stdin="")
    assert p.returncode == 2 and "no confirmation" in p.stderr
    assert len(sh(*c, "shards", "dump", str(shard)).stdout.splitlines()) == len(entries) - 2

    # Drain into the radosgw bucket, then read the real log objects back.
    p = sh(*c, "collect", "--once", "--json")
    assert p.returncode == 0, p.stderr
    passed = orjson.loads(p.stdout)
    assert passed["entries"] == 40 and len(passed["objects"]) == 1
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="logs/").get("Contents", [])]
    assert f"logs/{passed['objects'][0]}" in keys and passed["objects"][0].endswith(".jsonl.gz")

    listed = orjson.loads(sh(*c, "logs", "list", "--json").stdout)
    assert [o["name"] for o in listed] == passed["objects"] and listed[0]["compression"] == "gzip"
    records = [orjson.loads(x) for x in sh(*c, "logs", "cat").stdout.splitlines()]
    assert {r["id"] for r in records} == all_ids - trimmed
    assert len(records) == 40
    docs = [orjson.loads(x) for x in sh(*c, "logs", "cat", "--bucket", "docs").stdout.splitlines()]
    assert {d["key"] for d in docs} <= {"ünïcode key with spaces", "v"}
    photos = [orjson.loads(x) for x in sh(*c, "logs", "cat", "--prefix", "2026/00").stdout.splitlines()]
    assert all(p["key"].startswith("2026/00") for p in photos)

    st = orjson.loads(sh(*c, "status", "--json").stdout)
    assert st["index"]["entries"] == 0
    assert st["target"]["last_object"] == passed["objects"][0]
    assert st["target"]["watermark"]["complete_until"] == passed["watermark"]


def test_trim_refused_while_a_collector_holds_the_shard(conf: Path) -> None:
    from changelog.config import load_config, open_index
    from changelog.pipeline.lease import Lease

    c = ["-c", str(conf)]
    sh(*c, "record", stdin=jsonl(MUTATIONS))
    shard, entries = shard_with_entries(c)
    index = open_index(load_config(conf, env={}))
    lease = Lease(index.store, index.shard_oid(shard), name="drain", ttl=30, description="drained by a test")
    assert lease.acquire()
    try:
        p = sh(*c, "shards", "trim", str(shard), "--before", "now", "--yes")
        assert p.returncode == 1
        assert p.stderr.count("\n") == 1 and f"shard {shard} is being drained by client." in p.stderr
        p = sh(*c, "collect", "--once", "--json")
        assert p.returncode == 0 and shard in orjson.loads(p.stdout)["skipped_shards"]
    finally:
        lease.release()
        index.store.close()
    assert len(sh(*c, "shards", "dump", str(shard)).stdout.splitlines()) == len(entries)


def one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def write(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / f"bad-{uuid.uuid4().hex[:6]}.toml"
    p.write_text(text)
    return ["-c", str(p)]


def test_unreachable_ceph(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    dead = tmp_path / "dead.conf"
    dead.write_text("[global]\nmon host = [v2:127.0.0.1:9]\nauth cluster required = none\n"
                    "auth service required = none\nauth client required = none\n")  # fmt: skip
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, ceph_conf=f'"{dead}"', keyring=None))
    t0 = time.monotonic()
    err = one_line(sh(*c, "status"), 1)
    assert err.startswith("error: cannot connect to Ceph") and str(dead) in err
    assert time.monotonic() - t0 < 30


def test_wrong_ceph_key(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    keyring = tmp_path / "wrong.keyring"
    keyring.write_text("[client.admin]\n\tkey = AQBzSiBnAAAAABAAm5fUX5D7mA0rZ8gS0vyQ5A==\n")
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, keyring=f'"{keyring}"'))
    err = one_line(sh(*c, "shards", "list"), 1)
    assert err.startswith("error: cannot connect to Ceph")


def test_missing_pool(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, pool='"no-such-pool"'))
    err = one_line(sh(*c, "status"), 1)
    assert "no such pool" in err


def test_unknown_shard_on_rados(conf: Path) -> None:
    err = one_line(sh("-c", str(conf), "shards", "dump", "4"), 2)
    assert "no shard 4: this index has shards 0..3" in err


def test_unreachable_s3_endpoint(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, endpoint='"http://127.0.0.1:1"'))
    err = one_line(sh(*c, "logs", "list"), 1)
    assert err.startswith("error: ") and "127.0.0.1:1" in err


def test_wrong_s3_credentials(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, secret_key='"not-the-secret"'))
    err = one_line(sh(*c, "logs", "cat"), 1)
    assert err.startswith("error: ")
    assert any(word in err for word in ("SignatureDoesNotMatch", "403", "AccessDenied", "denied"))
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, access_key='"NOSUCHKEY"'))
    err = one_line(sh(*c, "logs", "list"), 1)
    assert any(word in err for word in ("InvalidAccessKeyId", "403", "AccessDenied", "denied"))


def test_missing_bucket(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    c = write(tmp_path, toml_config(ceph_lab, namespace="x", bucket=bucket, url='"s3://no-such-bucket-cli/logs/"'))
    err = one_line(sh(*c, "logs", "list"), 1)
    assert "no-such-bucket-cli" in err or "NoSuchBucket" in err


def test_zone_log_data_is_on_in_the_lab(conf: Path) -> None:
    # The lab turns log_data on at boot: the command sees that and changes nothing (turning it
    # off and on again would need a radosgw restart under the other tests' feet).
    p = sh("-c", str(conf), "zone", "enable-log-data", "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    assert orjson.loads(p.stdout)["log_data"] == {"default": True}
    p = sh("-c", str(conf), "zone", "enable-log-data", "--json")
    assert p.returncode == 0, p.stderr
    assert orjson.loads(p.stdout)["changed"] == []
