"""``rgw_module.bucket_index`` on bucket index entries captured from Pacific, Reef and Tentacle
labs (``tools/capture-bucket-index``, ``tests/unit/data/bucket_index_<release>.json``): the
decoder against radosgw's own decoding (``radosgw-admin bi list``) and the S3 HEAD answers; the
matching rule (a record never carries the facts of another write), with the overwrite race and
the suspended-versioning null version; bounded failure on garbage.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest

from changelog.pipeline.mutation import Op
from rgw_module.bucket_index import (
    BadIndexEntry,
    BucketIndexReader,
    careful_dir_entry,
    decode_dir_entry,
    index_oid,
    instance_key,
    lookups,
    olh_key,
    plain_key,
)
from rgw_module.mapping import (
    OLH_EPOCH,
    WRITER,
    BilogEntry,
    BucketShard,
    ShardMapper,
    index_name_to_key,
    map_entry,
    parse_time_ns,
    position_of,
)

DATA = Path(__file__).parent / "data"
RELEASES = ("pacific", "reef", "tentacle")
UNICODE_KEY = "dir/\u00fcn\u00ef c\u00f8d\u00e9 \u65e5\u672c x.txt"


def load(release: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"bucket_index_{release}.json").read_text())
    return doc


def is_dir_entry_key(key: bytes) -> bool:
    return not (key.startswith(b"\x800_") or key.startswith(b"\x801001_"))


def case_values(case: dict[str, Any]) -> list[tuple[str, bytes, bytes]]:
    """(oid, key, value) of the dir entries a case changed."""
    out = []
    for oid, kv in case["omap"].items():
        for k, v in kv.items():
            if k != "__removed__" and is_dir_entry_key(key := base64.b64decode(k)):
                out.append((oid, key, base64.b64decode(v)))
    return out


def states(doc: dict[str, Any]) -> list[dict[str, dict[bytes, bytes]]]:
    """The index objects' omap after each case (the capture records only what changed)."""
    now: dict[str, dict[bytes, bytes]] = defaultdict(dict)
    out = []
    for case in doc["cases"]:
        for oid, kv in case["omap"].items():
            for gone in filter(None, kv.get("__removed__", "").split(",")):
                now[oid].pop(base64.b64decode(gone), None)
            for k, v in kv.items():
                if k != "__removed__":
                    now[oid][base64.b64decode(k)] = base64.b64decode(v)
        out.append({oid: dict(kv) for oid, kv in now.items()})
    return out


# -- the decoder against radosgw's own decoding -----------------------------------------------


def as_text(*values: object) -> list[str]:
    return [str(v).lower() for v in values]


@pytest.mark.parametrize("release", RELEASES)
def test_every_captured_entry_decodes_as_radosgw_admin_bi_list_shows_it(release: str) -> None:
    doc = load(release)
    checked = 0
    owners: set[str] = set()
    for case in doc["cases"]:
        shown = {
            e["idx"]: e["entry"]
            for obj in case["bi_list"]
            for e in obj["entries"]
            if isinstance(obj["entries"], list) and e["type"] in ("plain", "instance")
        }
        for _, key, raw in case_values(case):
            want = shown.get(key.decode(errors="replace"))
            if want is None:
                continue  # an entry of an object the case did not log (bi list asked per logged name)
            d = decode_dir_entry(raw)
            meta = want["meta"]
            sc = meta.get("storage_class", "")
            # Pacific's radosgw-admin prints booleans and numbers as strings.
            assert as_text(d.name, d.instance, d.exists, d.flags, d.versioned_epoch) == as_text(
                want["name"], want["instance"], want["exists"], want["flags"], want["versioned_epoch"]
            )  # fmt: skip
            assert as_text(d.ver_pool, d.ver_epoch) == as_text(want["ver"]["pool"], want["ver"]["epoch"])
            assert as_text(d.size, d.etag, d.accounted_size) == as_text(meta["size"], meta["etag"], meta["accounted_size"])
            assert d.storage_class == (None if sc in ("", "STANDARD") else sc)
            # The content writer ([source] record_writer): the captures' writer is "tester".
            assert d.owner == meta["owner"]
            assert careful_dir_entry(raw).owner == d.owner
            owners.add(d.owner)
            if d.mtime_ns:
                assert d.mtime_ns // 1000 == parse_time_ns(meta["mtime"]) // 1000
            checked += 1
    assert checked >= 40
    assert "tester" in owners


@pytest.mark.parametrize("release", RELEASES)
def test_struct_versions_are_the_same_on_every_release(release: str) -> None:
    """rgw_bucket_dir_entry v8 (compat 3) with rgw_bucket_dir_entry_meta v7 (compat 3)."""
    versions = set()
    for case in load(release)["cases"]:
        for _, _, raw in case_values(case):
            name_len = struct.unpack_from("<I", raw, 6)[0]
            meta_at = 6 + 4 + name_len + 8 + 1
            versions.add((raw[0], raw[1], raw[meta_at], raw[meta_at + 1]))
    assert versions == {(8, 3, 7, 3)}


# -- the facts against S3 HEAD, and the matching rule --------------------------------------------


def run_reader(release: str) -> list[tuple[str, str, str | None, Any, dict[str, Any] | None]]:
    """Each case's write records: (case, key, version, facts or None, HEAD of that key/version
    when the record is the case's last write of it)."""
    doc = load(release)
    out = []
    for case, omap in zip(doc["cases"], states(doc), strict=True):
        reads: list[str] = []

        def read(
            pool: str, oid: str, keys: Sequence[bytes], *,
            omap: Mapping[str, Mapping[bytes, bytes]] = omap, reads: list[str] = reads,
        ) -> dict[bytes, bytes]:
            reads.append(oid)
            return {k: omap[oid][k] for k in keys if k in omap.get(oid, {})}

        reader = BucketIndexReader(read, doc["pool"])
        pages: dict[BucketShard, list[BilogEntry]] = defaultdict(list)
        for e in case.get("mid_entries", []) + case["entries"]:
            pages[BucketShard(case["bucket"], e["bucket_id"], e["shard"], e.get("log_gen", 0))].append(e)
        records = []
        for bs, page in pages.items():
            found = reader.facts(bs, page)
            for e in page:
                m = map_entry(e, bs, generation=1, observed_ns=0)
                if m is not None and m.op.value == "write":
                    records.append((m.key, m.version_id, found.get(position_of(e["op_id"]))))
        assert len(reads) == len(set(reads)), "one omap read per index object"
        heads = {(h["key"], h["version_id"] or h.get("head_version_id")): h for h in case["heads"]}
        for i, (key, vid, facts) in enumerate(records):
            last = all((k, v) != (key, vid) for k, v, _ in records[i + 1 :])
            out.append((case["case"], key, vid, facts, heads.get((key, vid)) if last else None))
    return out


@pytest.mark.parametrize("release", RELEASES)
def test_facts_equal_the_head_answer_of_every_last_write(release: str) -> None:
    compared = 0
    for name, key, vid, facts, h in run_reader(release):
        if h is None:
            continue
        assert facts is not None, f"{name}: {key} {vid} unmatched"
        lm = int(datetime.fromisoformat(h["last_modified"]).timestamp())
        assert (facts.size, facts.etag, facts.storage_class, facts.mtime_ns // 1_000_000_000) == (
            h["size"], h["etag"].strip('"'), h["storage_class"], lm
        ), name  # fmt: skip
        compared += 1
    # plain, overwrite, copy, multipart, tagging, _ key, unicode key, race (8); 2 versions,
    # tagging of a version, versioned multipart and _ key (5); suspended: a version, null, null
    # again, new key, tagging of the null version (5); 4 after a reshard
    assert compared == 22


@pytest.mark.parametrize("release", RELEASES)
def test_only_superseded_writes_go_without_facts(release: str) -> None:
    unmatched = [(name, key) for name, key, _, facts, _ in run_reader(release) if facts is None]
    # The first of two quick overwrites, and the race: the first write's entry read before the
    # overwrite, the index after it.
    assert unmatched == [("overwrite twice quickly", "a"), ("overwrite race", "race")]


@pytest.mark.parametrize("release", RELEASES)
def test_the_race_case_has_its_first_write_read_before_the_overwrite(release: str) -> None:
    case = next(c for c in load(release)["cases"] if c["case"] == "overwrite race")
    (first,) = case["mid_entries"]
    (second,) = case["entries"]
    assert first["object"] == second["object"] == "race"
    assert first["ver"]["epoch"] != second["ver"]["epoch"]


def test_suspended_null_version_is_the_instance_entry_with_an_empty_instance() -> None:
    for release in RELEASES:
        case = next(c for c in load(release)["cases"] if c["case"] == "suspended overwrite null")
        keys = {key for _, key, _ in case_values(case)}
        assert instance_key("k", "") in keys
        d = decode_dir_entry(next(raw for _, key, raw in case_values(case) if key == instance_key("k", "")))
        assert (d.instance, d.size, d.ver_epoch) == ("", 16, case["entries"][0]["ver"]["epoch"])


def page(*entries: dict[str, Any]) -> list[BilogEntry]:
    base = {"state": "complete", "instance": "", "timestamp": "2026-12-06T02:31:37.318160447Z"}
    return [cast(BilogEntry, {**base, **e, "op_id": f"1#{n:011d}.1.1"}) for n, e in enumerate(entries, 1)]


def test_a_versioned_write_is_matched_by_its_companions_ver() -> None:
    (w,) = lookups(page(
        {"op": "write", "object": "k", "instance": "v1", "versioned": True, "ver": {"pool": 6, "epoch": 8}},
        {"op": "link_olh", "object": "k", "instance": "v1", "versioned": True, "ver": {"pool": -1, "epoch": 2}},
    ))  # fmt: skip
    assert (w.keys, w.pool, w.epoch, w.mtime_ns) == ((instance_key("k", "v1"),), 6, 8, None)
    assert w.position == position_of("1#00000000002.1.1")


def test_a_link_olh_whose_write_was_on_an_earlier_page_is_matched_by_mtime() -> None:
    (w,) = lookups(page({"op": "link_olh", "object": "k", "instance": "v1", "versioned": True, "ver": {"pool": -1, "epoch": 2}}))
    assert w.mtime_ns == parse_time_ns("2026-12-06T02:31:37.318160447Z")


def test_an_unversioned_write_looks_at_the_plain_key_then_the_null_instance() -> None:
    (w,) = lookups(page({"op": "write", "object": "__u", "ver": {"pool": 6, "epoch": 3}}))
    assert w.keys == (b"__u", b"\x801000___u\x00i")
    assert lookups(page({"op": "write", "object": "_multipart_x.2~a.1", "ver": {"pool": 6, "epoch": 3}})) == []
    assert lookups(page({"op": "del", "object": "a", "ver": {"pool": 6, "epoch": 3}})) == []


# -- names ---------------------------------------------------------------------------------------


def test_keys_of_underscore_and_unicode_names_are_the_captured_ones() -> None:
    for release in RELEASES:
        cases = {c["case"]: c for c in load(release)["cases"]}
        (e,) = cases["underscore key"]["entries"]
        assert index_name_to_key(e["object"]) == "_under"
        assert plain_key(e["object"]) in {k for _, k, _ in case_values(cases["underscore key"])}
        (e,) = cases["unicode key"]["entries"]
        assert plain_key(e["object"]) == UNICODE_KEY.encode()
        assert plain_key(e["object"]) in {k for _, k, _ in case_values(cases["unicode key"])}
        vu = cases["versioned underscore"]
        inst = next(x["instance"] for x in vu["entries"] if x["op"] == "link_olh")
        assert instance_key("__vu", inst) in {k for _, k, _ in case_values(vu)}
        assert olh_key("__vu") == b"\x801001___vu"


def test_index_object_names() -> None:
    assert index_oid(BucketShard("b", "id.1", 3)) == ".dir.id.1.3"
    assert index_oid(BucketShard("b", "id.1", -1)) == ".dir.id.1"
    assert index_oid(BucketShard("b", "id.1", 2, 1)) == ".dir.id.1.1.2"
    for release in RELEASES:
        case = next(c for c in load(release)["cases"] if c["case"] == "resharded bucket")
        for e in case["entries"]:
            oid = index_oid(BucketShard(case["bucket"], e["bucket_id"], e["shard"], e.get("log_gen", 0)))
            assert oid in case["omap"]
        if release == "pacific":  # a new instance: the id changes, the marker stays
            assert case["bucket_id"] != case["marker"]
        else:  # in place: a new index generation
            assert {e.get("log_gen") for e in case["entries"]} == {1}


# -- bad input -----------------------------------------------------------------------------------


def sample() -> bytes:
    case = load("pacific")["cases"][0]
    return next(raw for _, key, raw in case_values(case) if key == b"a")


def test_every_truncation_is_a_one_line_bad_index_entry() -> None:
    raw = sample()
    for n in range(len(raw)):
        with pytest.raises(BadIndexEntry) as ex:
            decode_dir_entry(raw[:n])
        assert "\n" not in str(ex.value) and str(ex.value)


def test_garbage_is_a_bad_index_entry_or_a_decoded_entry_never_another_error() -> None:
    rng = random.Random(14)
    raw = sample()
    for _ in range(3000):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode_dir_entry(bytes(data))
        except BadIndexEntry as ex:
            assert "\n" not in str(ex)
    for _ in range(1000):
        with pytest.raises(BadIndexEntry):
            decode_dir_entry(bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
    with pytest.raises(BadIndexEntry, match="older"):
        decode_dir_entry(bytes([2, 2]) + raw[2:])


def test_a_newer_struct_is_read_up_to_what_is_known() -> None:
    raw = sample()
    extra = b"future fields"
    body = raw[6:] + extra
    newer = bytes([9, 3]) + struct.pack("<I", len(body)) + body
    old, new = decode_dir_entry(raw), decode_dir_entry(newer)
    assert new.struct_v == 9
    assert (new.name, new.size, new.etag, new.ver_epoch, new.mtime_ns) == (old.name, old.size, old.etag, old.ver_epoch, old.mtime_ns)


# -- the fast decoder against the careful one (issue 17) -----------------------------------------


def _same(data: bytes) -> None:
    """``decode_dir_entry`` (fast pass, careful fallback) and ``careful_dir_entry`` agree: the
    same entry, or the same BadIndexEntry message."""
    try:
        want: object = careful_dir_entry(data)
    except BadIndexEntry as ex:
        want = str(ex)
    try:
        got: object = decode_dir_entry(data)
    except BadIndexEntry as ex:
        got = str(ex)
    assert got == want, data


@pytest.mark.parametrize("release", RELEASES)
def test_the_fast_decoder_reads_every_captured_entry_as_the_careful_one(release: str) -> None:
    n = 0
    for case in load(release)["cases"]:
        for _, _, raw in case_values(case):
            assert decode_dir_entry(raw) == careful_dir_entry(raw)
            n += 1
    assert n >= 20


def test_the_fast_decoder_agrees_on_every_truncation_and_corruption() -> None:
    rng = random.Random(17)
    raws = [raw for release in RELEASES for case in load(release)["cases"] for _, _, raw in case_values(case)]
    for raw in raws[:40]:
        for n in range(len(raw)):
            _same(raw[:n])
    for _ in range(20_000):
        data = bytearray(rng.choice(raws))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        _same(bytes(data))
    for _ in range(2_000):
        _same(bytes(rng.randrange(256) for _ in range(rng.randint(0, 60))))


# -- the writer ([source] record_writer) ---------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_records_carry_their_writer_only_when_asked(release: str) -> None:
    """With ``writer=True`` every write found in the index and every delete marker names who
    wrote it (the captures' requester: "tester"); plain deletes, unmatched writes and a mapper
    without the setting carry no metadata at all (the logs stay as they were)."""
    doc = load(release)
    seen: dict[str, int] = defaultdict(int)
    for case, omap in zip(doc["cases"], states(doc), strict=True):

        def read(pool: str, oid: str, keys: Sequence[bytes], *, omap: Any = omap) -> dict[bytes, bytes]:
            return {k: omap[oid][k] for k in keys if k in omap.get(oid, {})}

        reader = BucketIndexReader(read, doc["pool"])
        pages: dict[BucketShard, list[BilogEntry]] = defaultdict(list)
        for e in case.get("mid_entries", []) + case["entries"]:
            pages[BucketShard(case["bucket"], e["bucket_id"], e["shard"], e.get("log_gen", 0))].append(e)
        for bs, page in pages.items():
            found = reader.facts(bs, page)
            marking, plain = ShardMapper(bs, 1, writer=True), ShardMapper(bs, 1)
            for e in page:
                m, p = marking.map(e, observed_ns=0, facts=found), plain.map(e, observed_ns=0, facts=found)
                if m is None or p is None:
                    assert m is p is None
                    continue
                assert p.metadata == {}
                matched = m.op is Op.WRITE and position_of(e["op_id"]) in found
                # A version or marker also carries its OLH epoch, from its log entry.
                epoch = {OLH_EPOCH: str(e["ver"]["epoch"])} if e["op"] in ("link_olh", "link_olh_del") else {}
                seen["epoch"] += bool(epoch)
                if matched or m.op is Op.DELETE_MARKER:
                    assert m.metadata == {WRITER: "tester", **epoch}, (case["case"], e)
                    seen[m.op.value] += 1
                else:
                    assert m.metadata == epoch, (case["case"], e)
                    seen["none"] += 1
                assert m.encode() != p.encode() if m.metadata else m.encode() == p.encode()
    assert seen["write"] >= 20 and seen["delete_marker"] >= 1 and seen["none"] >= 2 and seen["epoch"] >= 3, dict(seen)
