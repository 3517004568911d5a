"""rgw_module.zonegroup: the decoder on radosgw's own bytes (captured from the labs of 16.2, 18.2
and 20.2 by tools/capture-zonegroup, each checked against ``radosgw-admin zonegroup get`` of the
same state), bad bytes, and the check's warnings."""

from __future__ import annotations

import base64
import json
import logging
import random
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from changelog.errors import PermanentError, TransientError
from rgw_module.zonegroup import (
    Zone,
    Zonegroup,
    ZonegroupCheck,
    ZonegroupDecodeError,
    decode_default_id,
    decode_zonegroup,
    expiring_rules,
    from_json,
    local_zone,
    read_from_rados,
)

DATA = Path(__file__).parent / "data"
RELEASES = sorted(p.stem.removeprefix("zonegroup_") for p in DATA.glob("zonegroup_*.json"))
STATES = ("plain", "log_zone", "log_data_off")


def capture(release: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"zonegroup_{release}.json").read_text())
    return doc


def objects(release: str, state: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in capture(release)["states"][state]["objects"].items()}


def reader(objs: Mapping[str, bytes]) -> Any:
    def read(oids: Iterable[str]) -> dict[str, bytes | None]:
        return {o: objs.get(o) for o in oids}

    return read


def info_bytes(release: str, state: str = "plain") -> bytes:
    return next(v for k, v in objects(release, state).items() if k.startswith("zonegroup_info."))


def test_every_release_is_captured() -> None:
    assert set(RELEASES) == {"pacific", "reef", "tentacle"}, RELEASES


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("release", RELEASES)
def test_decoded_as_radosgw_admin_prints_it(release: str, state: str) -> None:
    zg = read_from_rados(reader(objects(release, state)))
    want = from_json(capture(release)["states"][state]["zonegroup_get"])
    assert zg.source == "rados" and want.source == "radosgw-admin"
    assert (zg.id, zg.name, zg.api_name, zg.master_zone) == (want.id, want.name, want.api_name, want.master_zone)
    assert sorted(zg.zones, key=lambda z: z.id) == sorted(want.zones, key=lambda z: z.id)
    names = {z.name: z for z in zg.zones}
    assert names["default"].tier_type == ""
    if state == "log_zone":
        (log,) = [z for z in zg.zones if z.name != "default"]
        assert log.tier_type == "log" and log.endpoints == ("http://127.0.0.1:1",)
        assert zg.logs_lifecycle_removals()
    else:
        assert len(zg.zones) == 1 and not zg.logs_lifecycle_removals()
    # The boot turns log_data on; removing a zone from the zonegroup turns every zone's off.
    assert names["default"].log_data is (state != "log_data_off")


@pytest.mark.parametrize("release", RELEASES)
def test_the_local_zone_is_the_data_zone_not_the_log_zone(release: str) -> None:
    zg = read_from_rados(reader(objects(release, "log_zone")))
    zone = local_zone(zg, "http://127.0.0.1:19830")
    assert zone is not None and zone.name == "default"
    # Unless the followed endpoint is the one the log zone lists.
    zone = local_zone(zg, "http://127.0.0.1:1/")
    assert zone is not None and zone.tier_type == "log"


def test_local_zone_cannot_be_told_among_several_data_zones() -> None:
    zones = tuple(Zone(id=n, name=n, endpoints=(), log_data=True, tier_type="") for n in ("a", "b"))
    assert local_zone(Zonegroup(name="zg", api_name="zg", master_zone="a", zones=zones), "http://x:1") is None
    zg = Zonegroup(name="zg", api_name="zg", master_zone="a", zones=zones, default_zone="b")
    assert local_zone(zg, "http://x:1") == zones[1]


@pytest.mark.parametrize("release", RELEASES)
def test_every_truncation_is_a_clear_error(release: str) -> None:
    data = info_bytes(release, "log_zone")
    decode_zonegroup(data)
    for n in range(len(data)):
        with pytest.raises(ZonegroupDecodeError, match=r"^zonegroup_info: "):
            decode_zonegroup(data[:n])


@pytest.mark.parametrize("release", RELEASES)
def test_corrupt_bytes_decode_or_fail_clearly(release: str) -> None:
    data = info_bytes(release, "log_zone")
    rng = random.Random(1)
    failed = 0
    for _ in range(2000):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            decode_zonegroup(bytes(bad))
        except ZonegroupDecodeError as ex:
            failed += 1
            assert "\n" not in str(ex)
    assert failed > 100  # the corruption was seen often, and never as anything but that error


def test_a_newer_incompatible_layout_is_refused() -> None:
    data = bytearray(info_bytes("reef"))
    data[1] = 7  # compat version 7: a decoder of version 6 may not read it
    with pytest.raises(ZonegroupDecodeError, match="compat 7"):
        decode_zonegroup(bytes(data))


def test_not_a_zonegroup_at_all() -> None:
    with pytest.raises(ZonegroupDecodeError):
        decode_zonegroup(b"")
    with pytest.raises(ZonegroupDecodeError):
        decode_zonegroup(json.dumps({"zones": []}).encode())
    with pytest.raises(ZonegroupDecodeError, match="not UTF-8"):
        decode_default_id(b"\x01\x01" + struct.pack("<II", 6, 2) + b"\xff\xfe")


def test_missing_objects_say_which() -> None:
    with pytest.raises(PermanentError, match=r"no default\.zonegroup\. nor zonegroups_names\.default"):
        read_from_rados(reader({}))
    objs = dict(objects("reef", "plain"))
    for k in [k for k in objs if k.startswith("zonegroup_info.")]:
        del objs[k]
    with pytest.raises(PermanentError, match=r"no zonegroup_info\."):
        read_from_rados(reader(objs))


def test_expiring_rules() -> None:
    cfg = {
        "Rules": [
            {"ID": "exp", "Status": "Enabled", "Expiration": {"Days": 3}},
            {"ID": "off", "Status": "Disabled", "Expiration": {"Days": 1}},
            {"ID": "move", "Status": "Enabled", "Transitions": [{"Days": 1, "StorageClass": "COLD"}]},
            {"Status": "Enabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 2}},
            {"ID": "mpu", "Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
        ]
    }
    assert expiring_rules(cfg) == ["exp", "#4"]
    assert expiring_rules(None) == [] and expiring_rules({"Rules": []}) == []


# --------------------------------------------------------------------------- the check


class Radosgw:
    """The parts of a radosgw the check asks: buckets' lifecycle configurations and its release."""

    def __init__(self, lifecycles: dict[str, Any], *, reef: bool | None) -> None:
        self.lifecycles = lifecycles
        self.reef = reef
        self.asked: list[str] = []
        self.told: list[str] = []
        self.fail: set[str] = set()

    def lifecycle(self, bucket: str) -> Any:
        self.asked.append(bucket)
        if bucket in self.fail:
            raise TransientError(f"S3 lifecycle of {bucket}: HTTP 503")
        return self.lifecycles.get(bucket)

    def reef_or_later(self, bucket: str) -> bool | None:
        self.told.append(bucket)
        if bucket in self.fail:
            raise TransientError(f"radosgw: bucket index log info of {bucket}: HTTP 503")
        return self.reef


EXPIRING = {"Rules": [{"ID": "x", "Status": "Enabled", "Expiration": {"Days": 1}}]}


def make_check(release: str, state: str, gw: Radosgw) -> ZonegroupCheck:
    zg = read_from_rados(reader(objects(release, state)))
    return ZonegroupCheck(
        read_zonegroup=lambda: zg, endpoint="http://127.0.0.1:7480", lifecycle=gw.lifecycle,
        reef_or_later=gw.reef_or_later,
    )  # fmt: skip


def test_reef_without_a_log_zone_warns_per_expiring_bucket(caplog: pytest.LogCaptureFixture) -> None:
    gw = Radosgw({"lc": EXPIRING, "other": {"Rules": []}}, reef=True)
    check = make_check("reef", "plain", gw)
    with caplog.at_level(logging.WARNING, "rgw_module.zonegroup"):
        check.start(["lc", "other", "none"])
    assert check.warnings == [
        "radosgw's lifecycle removals in bucket lc are not logged on Reef and later unless the zonegroup has a "
        "zone of another tier type (e.g. radosgw-admin zone create --tier-type=log --sync-from-all=false): the "
        "follower never sees them (README, \"radosgw's own lifecycle and the Swift expirer\")"
    ]
    assert [r.getMessage() for r in caplog.records] == check.warnings
    # A bucket first seen later: its configuration read once; those seen before not again.
    gw.lifecycles["new"] = EXPIRING
    check.see(["lc", "other", "none", "new"])
    check.see(["lc", "other", "none", "new"])
    assert gw.asked == ["lc", "other", "none", "new"]
    assert len(check.warnings) == 2 and "bucket new " in check.warnings[1]
    doc = check.doc()
    assert doc["checked"] is True and doc["reef_or_later"] is True and doc["warnings"] == check.warnings
    assert doc["zones"] == {"default": {"tier_type": "", "log_data": True}}
    assert doc["unlogged_lifecycle"] == {"lc": ["x"], "new": ["x"]}


def test_no_lifecycle_warning_with_a_log_zone_or_on_pacific() -> None:
    gw = Radosgw({"lc": EXPIRING}, reef=True)
    check = make_check("reef", "log_zone", gw)
    check.start(["lc"])
    assert check.warnings == [] and gw.asked == []  # no configuration read at all
    gw = Radosgw({"lc": EXPIRING}, reef=False)
    check = make_check("pacific", "plain", gw)
    check.start(["lc"])
    check.see(["lc", "new"])
    # Pacific, told from the first bucket: no lifecycle configuration read at all.
    assert check.warnings == [] and gw.asked == [] and gw.told == ["lc"]


def test_log_data_off_warns(caplog: pytest.LogCaptureFixture) -> None:
    for release in RELEASES:
        check = make_check(release, "log_data_off", Radosgw({}, reef=release != "pacific"))
        check.start([])
        assert check.warnings == [
            "zone default of zonegroup default has log_data false: radosgw writes no bucket index log nor data "
            "log, the follower will see no mutation (rgw-changelog zone enable-log-data, then restart radosgw)"
        ]


def test_an_unreadable_configuration_or_release_is_asked_again() -> None:
    gw = Radosgw({"lc": EXPIRING, "lc2": EXPIRING}, reef=None)
    check = make_check("reef", "plain", gw)
    check.start(["lc", "lc2"])  # the release cannot be told: nothing read, both asked again
    assert check.warnings == [] and check.release_reef is None and gw.asked == []
    gw.reef = True
    gw.fail.add("lc")
    check.see(["lc", "lc2"])  # lc's log info fails: the release told from lc2, lc left for later
    assert check.release_reef is True and gw.told == ["lc", "lc2", "lc", "lc2"]
    assert gw.asked == ["lc2"] and len(check.warnings) == 1 and "bucket lc2 " in check.warnings[0]
    check.see(["lc", "lc2"])  # lc's configuration fails now
    assert gw.asked == ["lc2", "lc"] and len(check.warnings) == 1
    gw.fail.clear()
    check.see(["lc", "lc2"])
    assert gw.asked == ["lc2", "lc", "lc"] and len(check.warnings) == 2 and "bucket lc " in check.warnings[1]
    assert gw.told == ["lc", "lc2", "lc", "lc2"]  # the release asked no more once told


def test_an_unreadable_zonegroup_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Zonegroup:
        raise ZonegroupDecodeError("zonegroup_info: truncated at byte 3 (wants 4, 1 left)")

    gw = Radosgw({"lc": EXPIRING}, reef=True)
    check = ZonegroupCheck(read_zonegroup=broken, endpoint="http://x:1", lifecycle=gw.lifecycle, reef_or_later=gw.reef_or_later)
    with caplog.at_level(logging.INFO, "rgw_module.zonegroup"):
        check.start(["lc"])
        check.see(["lc"])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "zonegroup not checked: zonegroup_info: truncated at byte 3 (wants 4, 1 left)")
    ]
    assert check.warnings == [] and gw.asked == []
    assert check.doc() == {
        "checked": False, "warnings": [], "not_checked": "zonegroup_info: truncated at byte 3 (wants 4, 1 left)",
    }  # fmt: skip


def test_concurrent_sees_read_each_bucket_once() -> None:
    gw = Radosgw({f"b{i}": EXPIRING for i in range(50)}, reef=True)
    check = make_check("reef", "plain", gw)
    check.start([])
    names = [f"b{i}" for i in range(50)]
    threads = [threading.Thread(target=check.see, args=(names,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(gw.asked) == sorted(names) and len(check.warnings) == 50
