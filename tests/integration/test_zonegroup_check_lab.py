"""`serve` checks the followed zone's zonegroup at its start (rgw_module.zonegroup), read from the
lab's ``.rgw.root`` pool with the index's Ceph client, and warns in its log and in `status`:

* on Reef and later, a followed bucket whose lifecycle configuration expires objects while no
  zone of the zonegroup has a tier type other than rgw, archive or "": radosgw logs none of those
  removals (tests/integration/test_expiry_lab.py shows it). With a `log` zone: no warning. On
  Pacific, which logs them: no warning.
* the local zone's log_data false: radosgw logs nothing at its next start.

radosgw is never restarted here: the zonegroup changes are read by the check from RADOS, and the
lab's zonegroup is put back as it was (log_data set again) before the test ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from changelog.errors import PermanentError
from tests.integration.test_newuser_review_lab import Serve, cli_env, running_serve
from tests.lab import Lab, log_data_again, log_zone, s3_client

pytestmark = [pytest.mark.ceph]

CHECK_TIMEOUT_S = 60.0
EXPIRING: Any = {
    "Rules": [{"ID": "expire-x", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 30}}]
}


def status(serve: Serve) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/_/status", timeout=60) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def checked(serve: Serve, *, warnings: int = 0) -> dict[str, Any]:
    """serve's status once its zonegroup check has run (and, with ``warnings``, has given that
    many): the check runs beside the follower, so it may finish after the first watermark."""
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while True:
        doc = status(serve)
        zg = doc.get("zonegroup") or {}
        if zg.get("checked") and len(doc.get("warnings") or []) >= warnings and (
            warnings or zg.get("reef_or_later") is not None or zg.get("logs_lifecycle_removals")
        ):
            return doc
        assert zg.get("not_checked") is None, f"zonegroup not checked: {zg}"
        assert time.monotonic() < deadline, f"no zonegroup check after {CHECK_TIMEOUT_S:.0f}s: {zg}\n{serve.log_tail()}"
        time.sleep(0.5)


@pytest.fixture
def lc_bucket(ceph_lab: Lab) -> Iterator[str]:
    """A bucket whose lifecycle configuration expires objects (removed after the test: radosgw's
    own lifecycle passes in other tests go through every bucket that has one)."""
    s3 = s3_client(ceph_lab)
    bucket = f"zgcheck-lc-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=EXPIRING)
    try:
        yield bucket
    finally:
        s3.delete_bucket_lifecycle(Bucket=bucket)


def serve_following(lab: Lab, folder: Path) -> Any:
    """A serve that follows every bucket of the lab: the check looks at the buckets followed when
    it starts (one made later is looked at on the next listing, every bucket_scan_interval)."""
    return running_serve(lab, folder)


def lc_warning(bucket: str) -> str:
    return (
        f"radosgw's lifecycle removals in bucket {bucket} are not logged on Reef and later unless the "
        "zonegroup has a zone of another tier type"
    )


def test_lifecycle_warning_on_reef_without_a_log_zone(ceph_lab: Lab, lc_bucket: str, tmp_path: Path) -> None:
    with serve_following(ceph_lab, tmp_path) as serve:
        doc = checked(serve, warnings=1 if ceph_lab.generations else 0)
        zg = doc["zonegroup"]
        print(f"{ceph_lab.release}: {json.dumps(zg)}")
        assert zg["read_with"] == "rados"
        assert zg["zones"] == {"default": {"tier_type": "", "log_data": True}}
        assert zg["logs_lifecycle_removals"] is False
        if not ceph_lab.generations:
            # Pacific logs radosgw's lifecycle removals whatever the zonegroup.
            assert zg["reef_or_later"] is False and doc["warnings"] == []
            return
        assert zg["reef_or_later"] is True
        assert zg["unlogged_lifecycle"][lc_bucket] == ["expire-x"]
        ours = [w for w in doc["warnings"] if lc_warning(lc_bucket) in w]
        assert len(ours) == 1 and "radosgw's own lifecycle and the Swift expirer" in ours[0]
        assert not [w for w in doc["warnings"] if "log_data" in w]
        assert ours[0] in serve.log_tail(200_000)
        # `rgw-changelog status` (through the serve's API) shows it too, as JSON and as text.
        cli = [str(Path(sys.executable).with_name("rgw-changelog")), "-c", str(serve.config), "status"]
        out = subprocess.run([*cli, "--json"], capture_output=True, text=True, env=cli_env(), timeout=120, check=True)
        assert ours[0] in json.loads(out.stdout)["warnings"]
        out = subprocess.run(cli, capture_output=True, text=True, env=cli_env(), timeout=120, check=True)
        assert f"warning: {ours[0]}" in out.stdout.splitlines()


def test_no_lifecycle_warning_with_a_log_zone(ceph_lab: Lab, lc_bucket: str, tmp_path: Path) -> None:
    with log_zone(ceph_lab), serve_following(ceph_lab, tmp_path) as serve:
        doc = checked(serve)
        zg = doc["zonegroup"]
        assert zg["logs_lifecycle_removals"] is True
        assert zg["zones"]["changelog-lc-log"] == {"tier_type": "log", "log_data": True}
        assert doc["warnings"] == []
        assert lc_warning(lc_bucket) not in serve.log_tail(200_000)


def test_log_data_false_warns(ceph_lab: Lab, tmp_path: Path) -> None:
    zg = json.loads(ceph_lab.radosgw_admin("zonegroup", "get", "--rgw-zonegroup=default"))
    for zone in zg["zones"]:
        zone["log_data"] = False if isinstance(zone.get("log_data"), bool) else "false"
    off = Path(ceph_lab.dir) / "zonegroup-zgcheck-off.json"
    off.write_text(json.dumps(zg))
    ceph_lab.radosgw_admin("zonegroup", "set", "--rgw-zonegroup=default", f"--infile={off}")
    try:
        # radosgw, not restarted, still logs: the serve starts as usual and warns.
        with running_serve(ceph_lab, tmp_path, only_new=True) as serve:
            doc = checked(serve, warnings=1)
            want = (
                "zone default of zonegroup default has log_data false: radosgw writes no bucket index log "
                "nor data log, the follower will see no mutation"
            )
            assert [w for w in doc["warnings"] if w.startswith(want)] == doc["warnings"][:1]
            assert doc["zonegroup"]["zones"]["default"]["log_data"] is False
    finally:
        log_data_again(ceph_lab, "zonegroup-zgcheck-on.json")
    assert all(z["log_data"] in (True, "true") for z in json.loads(ceph_lab.radosgw_admin("zonegroup", "get"))["zones"])


def test_read_from_rados_else_with_radosgw_admin(ceph_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same zonegroup either way; radosgw-admin when RADOS cannot give it (here: a root pool
    that does not exist)."""
    from changelog.config import Config
    from rgw_module import zonegroup

    cfg = Config.model_validate(
        {"index": {"backend": "rados", "ceph_conf": ceph_lab.conf, "keyring": ceph_lab.keyring or None, "pool": ceph_lab.pool}}
    )
    binary = f"{ceph_lab.bin}/radosgw-admin" if ceph_lab.bin else "radosgw-admin"
    read = zonegroup.zonegroup_reader(cfg.index, radosgw_admin=binary)
    from_rados = read()
    assert from_rados.source == "rados"
    monkeypatch.setattr(zonegroup, "ROOT_POOL", "zgcheck-no-such-pool")
    from_admin = read()
    assert from_admin.source == "radosgw-admin"
    assert (from_admin.id, from_admin.name, from_admin.zones) == (from_rados.id, from_rados.name, from_rados.zones)
    # Neither: one error naming both reasons (serve logs it as "zonegroup not checked: ...").
    read = zonegroup.zonegroup_reader(cfg.index, radosgw_admin="/nonexistent/radosgw-admin")
    with pytest.raises(PermanentError, match=r"RADOS: .*no such pool.*; /nonexistent/radosgw-admin not found"):
        read()
