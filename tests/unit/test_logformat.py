"""The change-log format: record schema, names, deterministic compression, decoders."""

from __future__ import annotations

import gzip
import io
import random
from dataclasses import dataclass

import orjson
import pytest
import zstandard

from changelog.errors import InvalidMutation, PermanentError
from changelog.pipeline.logformat import (
    Compression,
    LogRecord,
    ObjectEncoder,
    compression_of,
    encode_entry,
    encode_object,
    encode_raw,
    encode_watermark,
    format_cutoff,
    iter_lines,
    iter_records,
    log_name,
    parse_log_name,
    parse_rfc3339,
    record_of,
    rfc3339_us,
    start_after_time,
    watermark_name,
)
from changelog.pipeline.mutation import Mutation, Op

T0 = 1_795_300_000_123_456  # 2026-11-21T22:26:40.123456Z


@dataclass(frozen=True)
class FakeEntry:
    time_us: int
    mutation: Mutation


def mutation(i: int = 1, **kw: object) -> Mutation:
    doc: dict[str, object] = dict(
        bucket="photos",
        key=f"a/{i}.jpg",
        op=Op.WRITE,
        mtime_ns=1_795_299_999_000_000_789,
        source="rgw:photos:abc.1:0",
        position=f"{i:020d}",
        seq=f"{i:016x}",
        size=1234,
        etag="d41d8cd98f00b204e9800998ecf8427e",
    )
    doc.update(kw)
    return Mutation(**doc)  # type: ignore[arg-type]


def test_record_fields_order_and_values():
    m = mutation(7, version_id="v7", metadata={"b": "2", "a": "1"}, baseline=True)
    line = encode_entry(FakeEntry(T0, m))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = orjson.loads(line)
    assert list(doc) == ["v", "id", "time", "op", "tenant", "bucket", "key", "version_id", "size", "etag", "mtime",
                         "storage_class", "seq", "baseline", "recorded", "metadata"]
    assert doc["v"] == 1 and doc["tenant"] is None and doc["mtime"] is None and doc["storage_class"] is None
    assert doc["id"] == m.event_id and len(doc["id"]) == 32
    assert doc["time"] == "2026-11-21T22:26:39.000000Z"  # ns truncated to µs
    assert doc["recorded"] == "2026-11-21T22:26:40.123456Z"
    assert doc["version_id"] == "v7" and doc["op"] == "write" and doc["size"] == 1234
    assert doc["baseline"] is True
    assert list(doc["metadata"]) == ["a", "b"]  # sorted: deterministic whatever the input order


def test_record_nulls_and_no_metadata():
    m = mutation(op=Op.DELETE, size=None, etag=None)
    doc = orjson.loads(encode_entry(FakeEntry(T0, m)))
    assert doc["version_id"] is None and doc["size"] is None and doc["etag"] is None
    assert doc["op"] == "delete" and doc["baseline"] is False
    assert "metadata" not in doc


@pytest.mark.parametrize("key", ["nul\x00key", "new\nline", "ключ/日本語/🙂", " spaces ", '"quoted"\\', "\u2028x"])
def test_awkward_keys_roundtrip(key):
    m = mutation(key=key)
    line = encode_entry(FakeEntry(T0, m))
    assert line.count(b"\n") == 1  # JSON escapes the newline: one record per line
    rec = LogRecord.from_json(line)
    assert rec.key == key
    assert rec == record_of(FakeEntry(T0, m))
    assert rec.encode() == line


def test_encoding_is_deterministic():
    m1 = mutation(3, metadata={"x": "1", "a": "2"})
    m2 = mutation(3, metadata={"a": "2", "x": "1"})
    assert encode_entry(FakeEntry(T0, m1)) == encode_entry(FakeEntry(T0, m2))
    assert encode_entry(FakeEntry(T0, Mutation.decode(m1.encode()))) == encode_entry(FakeEntry(T0, m1))


def test_encode_raw_equals_encode_entry():
    rng = random.Random(9)
    for i in range(500):
        op = rng.choice(list(Op))
        m = mutation(
            i,
            key="" if op.of_bucket else rng.choice(["k", "ключ\x00\n", "🙂/x", "a" * 1000]),
            op=op,
            tenant=rng.choice(["", "t_1"]),
            obj_mtime_ns=None if op.of_bucket else rng.choice([None, rng.randrange(0, 2**62)]),
            storage_class=None if op.of_bucket else rng.choice([None, "STANDARD", "COLD"]),
            version_id=None if op.of_bucket else rng.choice([None, "null", f"v{i}"]),
            size=None if op.of_bucket else rng.choice([None, 0, i]),
            etag=None if op.of_bucket else rng.choice([None, "e"]),
            baseline=rng.random() < 0.3,
            metadata={} if op.of_bucket else rng.choice([{}, {"z": "1", "a": "ü"}]),
            mtime_ns=rng.randrange(0, 2**62),
        )
        t = rng.randrange(0, 2**55)  # up to year 3111: RFC 3339 has four-digit years
        assert encode_raw(t, m.encode()) == encode_entry(FakeEntry(t, m))
    with pytest.raises(InvalidMutation):
        encode_raw(T0, b"\xc1garbage")
    with pytest.raises(InvalidMutation):
        encode_raw(T0, b"\x80")  # an empty map: fields missing


def test_record_time_properties():
    rec = record_of(FakeEntry(T0, mutation()))
    assert rec.recorded_us == T0
    assert rec.time_us == 1_795_299_999_000_000


@pytest.mark.parametrize("t", [0, 1, 999_999, T0, 253_402_300_799_999_999])
def test_rfc3339_roundtrip(t):
    s = rfc3339_us(t)
    assert s.endswith("Z") and len(s) == 27
    assert parse_rfc3339(s) == t


def test_parse_rfc3339_offsets_and_errors():
    assert parse_rfc3339("2026-11-21T23:26:40.123456+01:00") == T0
    assert parse_rfc3339("2026-11-21T22:26:40.123456") == T0
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")


def test_malformed_line():
    with pytest.raises(PermanentError):
        LogRecord.from_json(b'{"id": "x"}')
    with pytest.raises(PermanentError):
        LogRecord.from_json(b"not json")


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "logs", "a/b/c", "/slashes/"])
@pytest.mark.parametrize("comp", list(Compression))
def test_name_roundtrip(prefix, comp):
    name = log_name(prefix, T0, 42, comp)
    p = prefix.strip("/")
    assert name == (p + "/" if p else "") + "2026/11/21/22/20261121T222640.123456Z-0000000042" + comp.extension
    parsed = parse_log_name(name)
    assert parsed is not None
    assert (parsed.cutoff_us, parsed.seq, parsed.compression, parsed.name) == (T0, 42, comp, name)
    assert compression_of(name) is comp


@pytest.mark.parametrize(
    "name",
    [
        "_watermark.json",
        "logs/_watermark.json",
        "2026/11/21/22/20261121T222640.123456Z-42.jsonl",
        "2026/11/21/21/20261121T222640.123456Z-0000000042.jsonl",  # hour dir disagrees
        "2026/11/21/22/20261121T222640.123456Z-0000000042.json",
        "2026/11/21/22/20261121T222640.123456Z-0000000042.jsonl.bz2",
        "2026/13/21/21/20261321T210640.123456Z-0000000042.jsonl",
    ],
)
def test_other_names_are_not_logs(name):
    assert parse_log_name(name) is None


def test_names_sort_by_cutoff_then_seq():
    rng = random.Random(5)
    pairs = sorted({(T0 + rng.randrange(0, 10**11), rng.randrange(0, 10**6)) for _ in range(500)})
    names = [log_name("p", c, s, "gzip") for c, s in pairs]
    assert sorted(names) == names
    # Across compressions too: the extension comes after the fixed-width part.
    assert log_name("p", T0, 1, "zstd") < log_name("p", T0, 2, "none")


def test_start_after_time_selects_later_cutoffs():
    names = sorted(log_name("p", c, s, "none") for c in (T0 - 1, T0, T0 + 1, T0 + 3_600_000_000) for s in (1, 9))
    marker = start_after_time("p", T0)
    after = [n for n in names if n > marker]
    parsed = [parse_log_name(n) for n in after]
    assert [x.cutoff_us for x in parsed if x] == [T0 + 1, T0 + 1, T0 + 3_600_000_000, T0 + 3_600_000_000]


def test_format_cutoff():
    assert format_cutoff(T0) == "20261121T222640.123456Z"


def test_watermark_document():
    assert watermark_name("") == "_watermark.json"
    assert watermark_name("/logs/") == "logs/_watermark.json"
    doc = orjson.loads(encode_watermark(complete_until_us=T0, last_object="x", updated_us=T0 + 1))
    assert doc == {"complete_until": rfc3339_us(T0), "complete_until_us": T0, "last_object": "x",
                   "updated": rfc3339_us(T0 + 1)}


# --- compression ----------------------------------------------------------------------------


def lines(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [encode_entry(FakeEntry(T0 + i, mutation(i, key=f"k/{rng.random()}/{i}"))) for i in range(n)]


def encode_taking(ls: list[bytes], comp: Compression, take_every: int, take: int) -> bytes:
    enc = ObjectEncoder(comp)
    out = bytearray()
    for i, line in enumerate(ls):
        enc.add(line)
        if i % take_every == 0:
            out += enc.take(min(take, enc.available))
    out += enc.finish()
    return bytes(out)


@pytest.mark.parametrize("comp", list(Compression))
def test_object_bytes_do_not_depend_on_how_output_is_taken(comp):
    ls = lines(3000)
    a = encode_object(ls, comp)
    assert a == encode_object(iter(ls), comp)
    assert encode_taking(ls, comp, 1, 1000) == a
    assert encode_taking(ls, comp, 97, 1 << 20) == a


@pytest.mark.parametrize("comp", list(Compression))
def test_roundtrip_through_decoders(comp):
    ls = lines(2500)
    data = encode_object(ls, comp)
    assert list(iter_lines(io.BytesIO(data), comp)) == [x[:-1] for x in ls]
    recs = list(iter_records(io.BytesIO(data), comp))
    assert [r.encode() for r in recs] == ls


def test_gzip_header_is_fixed_and_standard():
    data = encode_object(lines(10), Compression.GZIP)
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, OS unknown
    assert gzip.decompress(data) == b"".join(lines(10))


def test_zstd_frame_is_standard():
    data = encode_object(lines(10), Compression.ZSTD)
    params = zstandard.get_frame_parameters(data)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN and params.has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == b"".join(lines(10))


@pytest.mark.parametrize("comp", list(Compression))
def test_empty_object(comp):
    data = encode_object([], comp)
    assert list(iter_lines(io.BytesIO(data), comp)) == []


def test_torn_and_corrupt_objects_are_reported():
    with pytest.raises(PermanentError, match="incomplete line"):
        list(iter_lines(io.BytesIO(b'{"a":1}\n{"b"'), "none"))
    data = encode_object(lines(50), "gzip")
    with pytest.raises(PermanentError):
        list(iter_lines(io.BytesIO(data[: len(data) // 2]), "gzip"))
    with pytest.raises(PermanentError):
        list(iter_lines(io.BytesIO(b"garbage" * 10), "zstd"))


def test_encoder_guards():
    enc = ObjectEncoder("gzip")
    enc.add(b"{}\n")
    with pytest.raises(ValueError):
        enc.take(enc.available + 1)
    enc.finish()
    with pytest.raises(ValueError):
        enc.add(b"{}\n")
    with pytest.raises(PermanentError):
        Compression.parse("bz2")
    assert enc.entries == 1 and enc.raw_bytes == 3
