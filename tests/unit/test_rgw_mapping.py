"""Bucket-index-log entries -> mutations, on entries captured from a real radosgw 16.2.15
(tests/unit/rgw_bilog_captured.json: one case per S3 operation, with the records it must give)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from changelog.pipeline.mutation import Op
from rgw_module.mapping import (
    BadEntry,
    BucketFilter,
    BucketShard,
    baseline_mutation,
    baseline_seq,
    bilog_marker,
    datalog_shard,
    incremental_seq,
    index_name_to_key,
    interpret,
    map_entry,
    parse_time_ns,
    position_of,
)

CAPTURED = json.loads((Path(__file__).parent / "rgw_bilog_captured.json").read_text())
CASES = CAPTURED["cases"]
# The same operations replayed by tools/capture-bilog on the newer releases.
LATER = {
    release: json.loads((Path(__file__).parent / f"rgw_bilog_captured_{release}.json").read_text())["cases"]
    for release in ("reef", "tentacle")
}
ALL_CASES = [("pacific", c) for c in CASES] + [(r, c) for r, cases in LATER.items() for c in cases]
OBSERVED_NS = 1_900_000_000_000_000_000


def _shard_of(entry: dict[str, object]) -> BucketShard:
    op_id = str(entry["op_id"])
    return BucketShard("b", "zone.4122.1", int(op_id.partition("#")[0]))


@pytest.mark.parametrize(("release", "case"), ALL_CASES, ids=[f"{r}: {c['operation']}" for r, c in ALL_CASES])
def test_captured_operation_gives_exactly_its_records(release: str, case: dict[str, object]) -> None:
    entries = case["entries"]
    assert isinstance(entries, list)
    got = []
    for e in entries:
        m = map_entry(e, _shard_of(e), generation=3, observed_ns=OBSERVED_NS)
        if m is not None:
            got.append({"op": m.op.value, "key": m.key, "version_id": m.version_id})
    assert got == case["expected"]


def test_fields_of_a_plain_write() -> None:
    (e,) = next(c for c in CASES if c["operation"] == "PUT a")["entries"]
    m = map_entry(e, BucketShard("b", "zone.4122.1", 1), generation=7, observed_ns=OBSERVED_NS)
    assert m is not None
    assert m.op is Op.WRITE and m.key == "a" and m.version_id is None
    assert m.mtime_ns == parse_time_ns(e["timestamp"]) == 1_795_299_862_997_149_240
    assert m.source == "rgw:b:zone.4122.1:1"
    assert m.position == "00000000000000000001.00000000000000000004.0000000006"
    assert m.seq == "000007.1." + m.position
    assert m.size is None and m.etag is None  # the bilog carries neither
    assert not m.baseline


def test_deletes_are_stamped_with_the_time_they_were_read() -> None:
    # A del entry carries the deleted object's mtime, not the time of the delete (H6).
    (e,) = next(c for c in CASES if c["operation"] == "DELETE b")["entries"]
    m = map_entry(e, _shard_of(e), generation=1, observed_ns=OBSERVED_NS)
    assert m is not None and m.op is Op.DELETE
    assert m.mtime_ns == OBSERVED_NS
    marker = next(c for c in CASES if c["operation"] == "delete (marker)")["entries"][0]
    dm = map_entry(marker, _shard_of(marker), generation=1, observed_ns=OBSERVED_NS)
    assert dm is not None and dm.mtime_ns == parse_time_ns(marker["timestamp"])


def test_every_captured_entry_has_no_size_or_etag() -> None:
    keys = {k for c in CASES for e in c["entries"] for k in e}
    assert not keys & {"size", "etag", "accounted_size"}


def test_positions_sort_in_log_order() -> None:
    ids = ["3#00000000009.99.6", "3#00000000010.7.6", "3#00000000010.100.12", "00000000002.36.6"]
    positions = [position_of(i) for i in ids]
    assert len({len(p) for p in positions}) == 1
    assert sorted(positions) == [positions[3], positions[0], positions[1], positions[2]]
    with pytest.raises(BadEntry):
        position_of("1#garbage")


def test_bilog_marker_strips_the_shard_prefix() -> None:
    assert bilog_marker("10#00000000002.10.6") == "00000000002.10.6"
    assert bilog_marker("00000000002.10.6") == "00000000002.10.6"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("plain", "plain"),
        ("__underscore", "_underscore"),
        ("__multipart_fake", "_multipart_fake"),
        ("_multipart_mp.2~sQLbbaogibqd1YoRQX94U_UTU15yMS1.meta", None),
        ("_shadow_x", None),
        ("", None),
    ],
)
def test_index_names(name: str, key: str | None) -> None:
    assert index_name_to_key(name) == key


def test_pending_and_non_object_ops_are_skipped() -> None:
    base = {"op_id": "0#00000000001.1.1", "object": "k", "instance": "", "timestamp": "2026-11-21T22:24:22Z"}
    assert interpret({**base, "op": "write", "state": "pending"}) is None
    for op in ("cancel", "syncstop", "resync", "unknown"):
        assert interpret({**base, "op": op, "state": "complete"}) is None
    assert interpret({**base, "op": "write", "state": "complete", "bilog_flags": 1}) is None


def test_times() -> None:
    assert parse_time_ns("2026-11-21T22:24:22.997149240Z") % 1_000_000_000 == 997_149_240
    assert parse_time_ns("2026-11-21T22:24:22.985431Z") % 1_000_000_000 == 985_431_000
    assert parse_time_ns("2026-11-21T22:24:22Z") % 1_000_000_000 == 0
    assert parse_time_ns("0.000000") == 0
    assert parse_time_ns("") == 0


def test_bucket_shard_keys() -> None:
    bs = BucketShard.parse("cap2:cb0a345e-0d61-4bfc-a91c-6226ef6d2cbc.4122.2:10")
    assert bs == BucketShard("cap2", "cb0a345e-0d61-4bfc-a91c-6226ef6d2cbc.4122.2", 10)
    assert bs.key == bs.instance == "cap2:cb0a345e-0d61-4bfc-a91c-6226ef6d2cbc.4122.2:10"
    unsharded = BucketShard.parse("old:zone.1")
    assert unsharded == BucketShard("old", "zone.1", -1) and unsharded.key == "old:zone.1"
    assert BucketShard.parse("nonsense") is None
    long = BucketShard("x" * 255, "zone.4122.2", 3)
    assert len(long.source) <= 200 and long.source.endswith(":zone.4122.2:3")


def test_seq_orders_baseline_before_incremental_and_generations() -> None:
    pos = position_of("1#00000000001.4.6")
    assert baseline_seq(2, 10**18, 0) < incremental_seq(2, pos) < baseline_seq(3, 0, 0)
    # A versioned listing gives the newest version first; the baseline must order oldest first.
    newest = baseline_seq(1, 2_000, counter=5)
    older = baseline_seq(1, 1_000, counter=6)
    assert older < newest
    same_time_listed_first = baseline_seq(1, 1_000, counter=1)
    same_time_listed_next = baseline_seq(1, 1_000, counter=2)
    assert same_time_listed_next < same_time_listed_first


def test_baseline_records() -> None:
    m = baseline_mutation(
        bucket="b", bucket_id="zone.1", generation=1, counter=42, key="k", version_id="v1",
        delete_marker=False, size=5, etag="abc", mtime_ns=10**18,
    )
    assert m.baseline and m.op is Op.WRITE and m.size == 5 and m.etag == "abc"
    assert m.source == "rgw-full:b:zone.1:1" and m.position == "0000000000000042"
    dm = baseline_mutation(
        bucket="b", bucket_id="zone.1", generation=1, counter=43, key="k", version_id="dm",
        delete_marker=True, size=None, etag=None, mtime_ns=10**18,
    )
    assert dm.op is Op.DELETE_MARKER and dm.size is None


def test_bucket_filter() -> None:
    everything = BucketFilter(None, None, ["logs"])
    assert everything.follows("any") and not everything.follows("logs") and everything.excluded("logs")
    star = BucketFilter(["*"])
    assert star.follows("x")
    assert star.follows("tenant/bucket")  # a tenant's bucket is followed like the others
    some = BucketFilter(["a", "b"], {"a": ["x/", "x/y/", "z"]})
    assert some.follows("a") and not some.follows("c")
    assert some.list_prefixes("a") == ("x/", "z")  # "x/y/" is inside "x/"
    assert some.list_prefixes("b") == ("",)
    assert some.wants("a", "x/1") and some.wants("a", "zz") and not some.wants("a", "y")
    assert some.wants("b", "anything")


def test_datalog_shard_matches_radosgw() -> None:
    # From the lab: bucket cap5's index shards 0, 2, 6, 8, 9 were logged to data-log shards
    # 24, 26, 30, 32, 33; cap2's shards 0 and 3 to 8 and 11.
    assert [datalog_shard("cap5", s, 128) for s in (0, 2, 6, 8, 9)] == [24, 26, 30, 32, 33]
    assert [datalog_shard("cap2", s, 128) for s in (0, 3)] == [8, 11]
    assert datalog_shard("cap2", -1, 128) == 8  # unsharded


@pytest.mark.parametrize("release", sorted(LATER))
def test_later_releases_give_the_records_pacific_gives(release: str) -> None:
    """Every operation yields the same records on reef and tentacle as on pacific (multipart
    internals are no longer logged there, but they never gave records)."""
    later = {c["operation"]: c for c in LATER[release]}
    assert set(later) == {c["operation"] for c in CASES}
    for case in CASES:
        def shape(records: list[dict[str, object]]) -> list[tuple[object, object, bool]]:
            return [(r["op"], r["key"], r["version_id"] is None) for r in records]

        assert shape(later[case["operation"]]["expected"]) == shape(case["expected"]), case["operation"]


def test_generation_is_part_of_the_stream_and_state_key() -> None:
    old = BucketShard("b", "zone.1", 3)
    new = BucketShard("b", "zone.1", 3, 1)
    assert old.key == "b:zone.1:3" and new.key == "b:zone.1:3@1"
    assert old.instance == new.instance == "b:zone.1:3"
    assert old.source != new.source and new.source.endswith("@1")
    assert BucketShard.parse(new.key) == new and BucketShard.parse(old.key) == old
    assert BucketShard.parse("b:zone.1@2") == BucketShard("b", "zone.1", -1, 2)
