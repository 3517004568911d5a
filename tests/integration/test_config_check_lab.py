"""`config check --connect` against the real lab: the source radosgw's admin API (a signed
request that wrong keys fail), the index on RADOS and the target bucket on radosgw, each named on
its own line; and `record`'s all-or-nothing input with a rerun under `--source` recorded once on
the RADOS index.

Runs the installed console script, in a namespace of its own in the lab's pool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.ceph


def console_script() -> str:
    here = Path(sys.executable).parent / "rgw-changelog"
    found = str(here) if here.exists() else shutil.which("rgw-changelog")
    if not found:
        pytest.fail("the rgw-changelog console script is not installed (pip install -e .)")
    return found


def sh(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


@pytest.fixture
def bucket(s3_client: Any) -> Iterator[str]:
    name = f"cfg-check-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for o in s3_client.list_objects_v2(Bucket=name).get("Contents", []):
        s3_client.delete_object(Bucket=name, Key=o["Key"])
    s3_client.delete_bucket(Bucket=name)


def lab_config(lab: Any, bucket: str, *, secret_key: str | None = None, index_pool: str | None = None) -> str:
    keyring = f'keyring = "{lab.keyring}"' if lab.keyring else ""
    return f"""
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}
pool = "{lab.pool}"
namespace = "cfg-{uuid.uuid4().hex[:8]}"
connect_timeout = 3
shards = 4

[source]
endpoint = "{lab.rgw_endpoint}"
access_key = "{lab.access_key}"
secret_key = "{secret_key or lab.secret_key}"
region = "default"
{f'index_pool = "{index_pool}"' if index_pool else ""}

[target]
url = "s3://{bucket}/logs/"
region = "default"
# The target's own keys (else it inherits [source]'s): a wrong source secret then fails the source only.
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"

[api]
listen = "127.0.0.1:1"
"""


def test_config_check_connect_reaches_source_index_and_target(
    ceph_lab: Any, bucket: str, tmp_path: Path
) -> None:
    conf = tmp_path / "lab.toml"
    conf.write_text(lab_config(ceph_lab, bucket))
    p = sh("-c", str(conf), "config", "check", "--connect")
    assert p.returncode == 0, p.stderr
    source, index, bucket_index, target, last = p.stderr.strip().splitlines()
    assert (
        source.startswith(f"source: ok ({ceph_lab.rgw_endpoint}, admin API answers: ")
        and "data log shards" in source
    )
    assert index.startswith("index: ok (") and target == f"target: ok (s3://{bucket}/logs/)"
    assert bucket_index == "bucket index: ok (pool 'default.rgw.buckets.index' readable by client.admin)"
    assert last == f"config ok: {conf}"
    doc = orjson.loads(sh("-c", str(conf), "config", "check", "--connect", "--json").stdout)
    assert {name: r["ok"] for name, r in doc["connect"].items()} == {
        "source": True,
        "index": True,
        "bucket index": True,
        "target": True,
    }


def test_config_check_connect_names_an_unreadable_bucket_index_pool(
    ceph_lab: Any, bucket: str, tmp_path: Path
) -> None:
    conf = tmp_path / "lab.toml"
    conf.write_text(lab_config(ceph_lab, bucket, index_pool="no-such-index-pool"))
    p = sh("-c", str(conf), "config", "check", "--connect")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    (line,) = [x for x in lines if x.startswith("bucket index: ")]
    assert "failed:" in line and "no such pool 'no-such-index-pool'" in line and "HEAD every write" in line
    assert lines[-1] == f"error: config check --connect: cannot use bucket index (config from {conf})"


def test_config_check_connect_names_wrong_source_keys(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    conf = tmp_path / "lab.toml"
    conf.write_text(lab_config(ceph_lab, bucket, secret_key="not-the-secret"))
    p = sh("-c", str(conf), "config", "check", "--connect")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    source, index, _bucket_index, target, last = p.stderr.strip().splitlines()
    assert source.startswith("source: failed: radosgw GET /admin/log?type=data at ") and "HTTP 403" in source
    assert index.startswith("index: ok (") and target.startswith("target: ok (")
    assert last == f"error: config check --connect: cannot use source (config from {conf})"


def test_record_all_or_nothing_and_rerun_on_rados(ceph_lab: Any, bucket: str, tmp_path: Path) -> None:
    conf = tmp_path / "lab.toml"
    conf.write_text(lab_config(ceph_lab, bucket))
    c = ["-c", str(conf)]
    lines = [orjson.dumps({"bucket": "b", "key": f"a{i}"}).decode() for i in range(1, 6)]
    bad = "\n".join(lines[:3] + ["{bad"] + lines[4:]) + "\n"
    fixed = "\n".join(lines) + "\n"

    def entries() -> int:
        return int(orjson.loads(sh(*c, "status", "--json", "--direct").stdout)["index"]["entries"])

    p = sh(*c, "record", "--batch", "2", "--source", "lab-import", stdin=bad)
    assert (
        p.returncode == 1
        and p.stderr.startswith("error: line 4: not JSON")
        and "nothing recorded" in p.stderr
    )
    assert entries() == 0
    p = sh(*c, "record", "--batch", "2", "--source", "lab-import", stdin=fixed)
    assert (p.returncode, p.stderr) == (0, "recorded 5 mutations (0 duplicates skipped)\n")
    p = sh(*c, "record", "--batch", "2", "--source", "lab-import", stdin=fixed)
    assert (p.returncode, p.stderr) == (0, "recorded 0 mutations (5 duplicates skipped)\n")
    assert entries() == 5
    p = sh(*c, "record", "--batch", "2", "--partial", stdin=bad)
    assert p.returncode == 1 and "recorded 4 mutations (0 duplicates skipped)" in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "error: 1 bad line of 5 not recorded: line 4"
    assert entries() == 9
