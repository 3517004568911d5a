"""The log_data helper of ``rgw-changelog zone enable-log-data``, against a recorded
radosgw-admin."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from changelog.errors import PermanentError
from rgw_module.zone import RadosgwAdmin, enable_log_data, log_data_zones

# --------------------------------------------------------------------------- log_data helper


class FakeAdmin:
    """Answers radosgw-admin like a single zone without a realm; records the calls."""

    def __init__(self, log_data: Any = "false", realms: list[str] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.doc = {"name": "default", "zones": [{"name": "default", "log_data": log_data}], "master_zone": "x"}
        self.realms = realms or []
        self.written: dict[str, Any] | None = None

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        start = next(i for i, a in enumerate(argv) if a in ("zonegroup", "realm", "period"))
        args = argv[start:]
        out = ""
        if args[:2] == ["zonegroup", "get"]:
            out = json.dumps(self.doc)
        elif args[:2] == ["zonegroup", "set"]:
            infile = next(a for a in args if a.startswith("--infile="))[len("--infile="):]
            with open(infile) as fh:
                self.written = json.load(fh)
        elif args[:2] == ["realm", "list"]:
            out = json.dumps({"default_info": "", "realms": self.realms})
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_enable_log_data_sets_the_flag_once() -> None:
    fake = FakeAdmin()
    admin = RadosgwAdmin(conf="/etc/ceph/ceph.conf", run=fake)
    assert enable_log_data(admin=admin) == ["default"]
    assert fake.written is not None and fake.written["zones"][0]["log_data"] == "true"
    assert fake.calls[0][:3] == ["radosgw-admin", "-c", "/etc/ceph/ceph.conf"]
    assert not any("period" in c for c in fake.calls)  # no realm: no period commit
    fake.doc = fake.written
    assert enable_log_data(admin=admin) == []
    assert log_data_zones(fake.doc) == {"default": True}


def test_enable_log_data_keeps_a_json_bool_and_commits_a_period() -> None:
    fake = FakeAdmin(log_data=False, realms=["gold"])
    assert enable_log_data(admin=RadosgwAdmin(run=fake)) == ["default"]
    assert fake.written is not None and fake.written["zones"][0]["log_data"] is True
    assert ["radosgw-admin", "period", "update", "--commit"] in fake.calls


def test_enable_log_data_unknown_zone_and_failures() -> None:
    with pytest.raises(PermanentError, match="no zone nope"):
        enable_log_data(zones=["nope"], admin=RadosgwAdmin(run=FakeAdmin()))

    def failing(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 22, "", "couldn't init storage provider\n")

    with pytest.raises(PermanentError, match="couldn't init storage provider"):
        enable_log_data(admin=RadosgwAdmin(run=failing))
    with pytest.raises(PermanentError, match="not found"):
        RadosgwAdmin(binary="/nonexistent/radosgw-admin")("zonegroup", "get")
