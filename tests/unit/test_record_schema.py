"""The record schema (docs/record.schema.json) against the real encoders, the schema version rule
(a reader refuses a newer record, in one line through ``logs cat``), and ``logs cat --format
cloudevents`` against the CloudEvents 1.0 attributes."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft202012Validator

from changelog.cli import cli
from changelog.cli.logs import EVENT_TYPES, RECORD_SCHEMA_ID, cloud_event, event_source
from changelog.errors import PermanentError, one_line
from changelog.pipeline import reader
from changelog.pipeline.logformat import (
    SCHEMA_VERSION,
    LogRecord,
    NewerSchema,
    encode_object,
    encode_raw_many,
    log_name,
    record_of,
)
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.targets import DirectoryTarget
from tests.record_schema import InvalidRecord, Shapes, check_line, problems, schema, validator

T0 = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z


@dataclass(frozen=True)
class Entry:
    """What ``record_of`` takes of an index entry."""

    time_us: int
    mutation: Mutation


def mutation(i: int, op: Op, **kw: Any) -> Mutation:
    doc: dict[str, Any] = {
        "bucket": "photos",
        "key": "" if op.of_bucket else f"a/{i}.jpg",
        "op": op,
        "mtime_ns": T0 * 1000 - 5_000_789,
        "source": "rgw:photos:abc.1:0",
        "position": f"{i:020d}",
        "seq": f"{i:016x}",
    }
    if op is Op.WRITE:
        doc.update(size=1234, etag="d41d8cd98f00b204e9800998ecf8427e", obj_mtime_ns=T0 * 1000, storage_class="STANDARD")
    doc.update(kw)
    return Mutation(**doc)


def lines_of(mutations: list[Mutation], t_us: int = T0) -> list[bytes]:
    """The committed lines of ``mutations`` (the collector's encoder), checked to be exactly the
    lines of ``record_of(...).encode()`` (the consumer-side encoder)."""
    lines = encode_raw_many([(t_us + i, m.encode()) for i, m in enumerate(mutations)])
    assert lines == [record_of(Entry(t_us + i, m)).encode() for i, m in enumerate(mutations)]
    return lines


# --------------------------------------------------------------------------- every op and flag


def _variants() -> Iterator[tuple[str, Mutation]]:
    flags = itertools.product([False, True], ["", "t_1"], [{}, {"a": "ü", "z": "1"}], [None, "v1"])
    for i, (op, (baseline, tenant, metadata, version)) in enumerate(itertools.product(Op, flags)):
        if op.of_bucket and (metadata or version):
            continue  # a bucket op names no version (and a hook gives it no metadata)
        m = mutation(i, op, baseline=baseline, tenant=tenant, metadata=metadata, version_id=version)
        yield f"{op.value}-bl{int(baseline)}-tn{bool(tenant):d}-md{bool(metadata):d}-v{version}", m
    # A write superseded before its attributes could be read: size, etag, mtime, class unknown.
    yield "write-superseded", mutation(900, Op.WRITE, size=None, etag=None, obj_mtime_ns=None, storage_class=None)
    # radosgw's spelling of the null version becomes null.
    yield "write-null-string", mutation(901, Op.WRITE, version_id="null")
    yield "delete-null-string", mutation(902, Op.DELETE, version_id="null")
    # Keys as stored: any unicode, control characters, the longest S3 allows.
    yield "key-unicode", mutation(903, Op.WRITE, key="ключ\x00\n🙂/x")
    yield "key-1024", mutation(904, Op.WRITE, key="k" * 1024)
    yield "size-0-etag-empty", mutation(905, Op.WRITE, size=0, etag="")


VARIANTS = dict(_variants())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_op_and_flag_encodes_to_a_valid_record(name: str) -> None:
    m = VARIANTS[name]
    (line,) = lines_of([m])
    doc = check_line(line)
    assert doc["v"] == SCHEMA_VERSION == 1
    assert doc["op"] == m.op.value and doc["baseline"] is m.baseline
    assert doc["tenant"] == (m.tenant or None)
    assert doc["key"] == (None if m.op.of_bucket else m.key)
    assert doc["version_id"] == m.version_id and doc["version_id"] != "null"
    assert ("metadata" in doc) is bool(m.metadata)
    # What the reader makes of it encodes to the same bytes.
    assert LogRecord.from_json(line).encode() == line


def test_variants_cover_every_op_and_flag() -> None:
    docs = [orjson.loads(line) for line in lines_of(list(VARIANTS.values()))]
    assert {d["op"] for d in docs} == {o.value for o in Op}
    wanted: dict[str, set[object]] = {
        "baseline": {True, False},
        "tenant": {None, "t_1"},
        "version_id": {None, "v1"},
        "size": {None, 0, 1234},
    }
    for field_name, values in wanted.items():
        assert values <= {d[field_name] for d in docs}, field_name
    assert any("metadata" in d for d in docs) and any("metadata" not in d for d in docs)
    for d in docs:
        assert problems(d) == []


# --------------------------------------------------------------------------- what the schema refuses


def good() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(lines_of([mutation(1, Op.WRITE, version_id="v1")])[0])
    return doc


def _set(**changes: Any) -> dict[str, Any]:
    doc = good()
    doc.update(changes)
    return doc


def _without(name: str) -> dict[str, Any]:
    doc = good()
    del doc[name]
    return doc


BUCKET_OP = orjson.loads(lines_of([mutation(2, Op.BUCKET_CREATE)])[0])

REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "key null with op write": (_set(key=None), "key"),
    "empty key": (_set(key=""), "key"),
    "key on a bucket op": ({**BUCKET_OP, "key": "k"}, "key"),
    "version on a bucket op": ({**BUCKET_OP, "version_id": "v1"}, "version_id"),
    "size on a bucket op": ({**BUCKET_OP, "size": 3}, "size"),
    "the string null as a version": (_set(version_id="null"), "version_id"),
    "missing v": (_without("v"), "'v' is a required property"),
    "v 2": (_set(v=2), "v"),
    "v 0": (_set(v=0), "v"),
    "extra field": (_set(owner="alice"), "Additional properties"),
    "missing recorded": (_without("recorded"), "'recorded' is a required property"),
    "time without Z": (_set(time="2023-11-14T22:13:20.123456"), "time"),
    "time with an offset": (_set(time="2023-11-14T22:13:20.123456+00:00"), "time"),
    "time in milliseconds": (_set(time="2023-11-14T22:13:20.123Z"), "time"),
    "month 13": (_set(recorded="2023-13-14T22:13:20.123456Z"), "recorded"),
    "bad mtime": (_set(mtime="yesterday"), "mtime"),
    "short id": (_set(id="abc"), "id"),
    "uppercase id": (_set(id="D41D8CD98F00B204E9800998ECF8427E"), "id"),
    "unknown op": (_set(op="copy"), "op"),
    "negative size": (_set(size=-1), "size"),
    "size as a string": (_set(size="3"), "size"),
    "tenant with a dash": (_set(tenant="a-b"), "tenant"),
    "empty tenant": (_set(tenant=""), "tenant"),
    "bucket with a slash": (_set(bucket="a/b"), "bucket"),
    "empty metadata": (_set(metadata={}), "metadata"),
    "metadata not strings": (_set(metadata={"a": 1}), "metadata"),
    "baseline as a string": (_set(baseline="false"), "baseline"),
    "empty storage class": (_set(storage_class=""), "storage_class"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_schema_refuses(case: str) -> None:
    doc, where = REFUSED[case]
    found = problems(doc)
    assert found, f"{case}: accepted {doc}"
    assert any(where in p for p in found), found


def test_the_good_record_is_valid_and_the_cases_differ_from_it() -> None:
    assert problems(good()) == [] and problems(BUCKET_OP) == []
    assert all(doc != good() for doc, _ in REFUSED.values())


def test_schema_is_valid_draft_2020_12_and_describes_every_field() -> None:
    s = schema()
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] == RECORD_SCHEMA_ID and RECORD_SCHEMA_ID.endswith(f":{SCHEMA_VERSION}")
    assert s["additionalProperties"] is False
    fields = list(good())
    assert set(s["required"]) == set(fields) and set(s["properties"]) == {*fields, "metadata"}
    # The schema lists the fields in the order the encoder writes them.
    assert list(s["properties"])[: len(fields)] == fields
    for name, prop in s["properties"].items():
        assert len(prop.get("description", "")) > 40, name


def test_shape_cache_agrees_with_jsonschema() -> None:
    """The guard's cache decides as jsonschema does on every case here, each asked twice (the
    second answer comes from the cache)."""
    cache = Shapes(schema())
    docs = [orjson.loads(line) for line in lines_of(list(VARIANTS.values()))]
    docs += [doc for doc, _ in REFUSED.values()]
    docs += [_set(size=1.0), _set(size=1.5), _set(size=2**64), _set(size=2**64 - 1), _set(v=True), _set(v=1.0)]
    docs += [_set(time="2023-11-14T22:13:20.123456Z\n"), _set(key="k" * 1025), _set(bucket="b" * 256)]
    docs += [_set(metadata={"a": "1", "b": None}), _set(tenant="t" * 65), _set(id="0" * 31 + "g")]
    for doc in docs + docs:
        assert cache.is_valid(doc) == validator().is_valid(doc), doc
    assert len(cache.valid) < len(docs)  # shapes are shared: the cache saves work
    assert sum(cache.valid.values()) >= 2 and not all(cache.valid.values())


def test_shape_cache_refuses_a_schema_it_cannot_judge_exactly() -> None:
    s = copy.deepcopy(schema())
    s["properties"]["etag"]["multipleOf"] = 2
    with pytest.raises(ValueError, match="multipleOf"):
        Shapes(s)


def test_check_line_wants_one_line() -> None:
    line = lines_of([mutation(1, Op.WRITE)])[0]
    with pytest.raises(InvalidRecord, match="newline"):
        check_line(line[:-1])
    with pytest.raises(InvalidRecord, match="key"):
        check_line(orjson.dumps(_set(key=None)) + b"\n")


# --------------------------------------------------------------------------- newer schema versions


def newer_line(v: int = 2) -> bytes:
    doc = good()
    doc["v"] = v
    doc["owner"] = "a field v1 does not know"
    return orjson.dumps(doc)


def test_from_json_refuses_a_newer_version_naming_it() -> None:
    with pytest.raises(NewerSchema) as info:
        LogRecord.from_json(newer_line())
    assert isinstance(info.value, PermanentError)
    text = str(info.value)
    assert "version 2" in text and "upgrade" in text and one_line(text) == text


def test_from_json_reads_a_line_without_v_as_version_0() -> None:
    doc = good()
    del doc["v"]
    rec = LogRecord.from_json(orjson.dumps(doc))
    assert rec.v == 0 and rec.key == doc["key"] and rec.version_id == "v1"


@pytest.mark.parametrize("v", [-1, "1", 1.5, None])
def test_from_json_refuses_a_malformed_version(v: object) -> None:
    doc = good()
    doc["v"] = v
    with pytest.raises(PermanentError, match="schema version") as info:
        LogRecord.from_json(orjson.dumps(doc))
    assert not isinstance(info.value, NewerSchema)


def write_log(root: Path, lines: list[bytes], *, seq: int = 1, cutoff_us: int = T0 + 10_000_000) -> str:
    name = log_name("", cutoff_us, seq, "none")
    DirectoryTarget(root).put(name, encode_object(lines, "none"))
    return name


def test_reader_surfaces_a_newer_record_as_newer_schema(tmp_path: Path) -> None:
    target = DirectoryTarget(tmp_path / "logs")
    write_log(tmp_path / "logs", [*lines_of([mutation(1, Op.WRITE)]), newer_line() + b"\n"])
    records = reader.read_records(target)
    assert next(records).v == 1  # the lines before it are read
    with pytest.raises(NewerSchema, match="version 2"):
        next(records)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    conf = tmp_path / "rgw-changelog.toml"
    conf.write_text(
        f'[index]\nbackend = "sqlite"\npath = "{tmp_path / "index.db"}"\n\n'
        f'[target]\nurl = "file://{tmp_path / "logs"}/"\n'
    )
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["-c", str(conf), *args], catch_exceptions=False)

    yield invoke


def test_logs_cat_of_a_newer_record_is_one_line_and_exit_1(run: Any, tmp_path: Path) -> None:
    write_log(tmp_path / "logs", [newer_line(7) + b"\n"])
    r = run("logs", "cat")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: change-log record of schema version 7")
    assert "upgrade" in lines[0]
    assert r.stdout == ""


# --------------------------------------------------------------------------- logs cat --format cloudevents

# The CloudEvents 1.0 context attributes (spec "Context Attributes", and the JSON event format):
# the four required ones, the optional ones this command sets, with their types; extension
# attribute names are lowercase letters and digits. An event carries its JSON data as "data".
URI_REFERENCE = r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$|^[^\s:]*$"
CLOUDEVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"const": "1.0"},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1, "pattern": URI_REFERENCE},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string", "minLength": 1},
        "time": {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
        "datacontenttype": {"type": "string", "minLength": 1},
        "dataschema": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$"},
        "data": {},
        "data_base64": {"type": "string"},
    },
    "propertyNames": {"pattern": "^([a-z0-9]{1,20}|data_base64)$"},
    "not": {"required": ["data", "data_base64"]},
}
CLOUDEVENT = Draft202012Validator(CLOUDEVENT_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_cloudevent_schema_refuses_what_the_spec_does() -> None:
    event = cloud_event(LogRecord.from_json(good_line()), zone="z")
    assert CLOUDEVENT.is_valid(event)
    for broken in (
        {k: v for k, v in event.items() if k != "source"},
        {**event, "specversion": "0.3"},
        {**event, "id": ""},
        {**event, "Type": "x"},
        {**event, "time": "yesterday"},
        {**event, "data_base64": "AA=="},
    ):
        assert not CLOUDEVENT.is_valid(broken), broken


def good_line() -> bytes:
    return orjson.dumps(good())


def all_ops() -> list[Mutation]:
    return [
        mutation(1, Op.BUCKET_CREATE, tenant="t_1"),
        mutation(2, Op.WRITE, tenant="t_1", version_id="v1"),
        mutation(3, Op.WRITE, key="a b/ü?#", baseline=True),
        mutation(4, Op.DELETE_MARKER, version_id="v2"),
        mutation(5, Op.DELETE, version_id="v1"),
        mutation(6, Op.BUCKET_DELETE, bucket="old bucket"),
    ]


@pytest.mark.parametrize("m", all_ops(), ids=lambda m: m.op.value)
def test_cloud_event_of_each_op(m: Mutation) -> None:
    (line,) = lines_of([m])
    rec = LogRecord.from_json(line)
    event = cloud_event(rec, zone="us-east")
    errors = [e.message for e in CLOUDEVENT.iter_errors(event)]
    assert errors == []
    assert event["id"] == rec.id and event["time"] == rec.time
    assert event["type"] == EVENT_TYPES[m.op.value]
    kind = "bucket" if m.op.of_bucket else "object"
    assert str(event["type"]).startswith(f"com.rgw-changelog.{kind}.")
    assert ("subject" in event) is not m.op.of_bucket
    if not m.op.of_bucket:
        assert event["subject"] == m.key
    assert event["datacontenttype"] == "application/json"
    assert event["dataschema"] == RECORD_SCHEMA_ID
    assert event["data"] == orjson.loads(line)


def test_event_source_names_zone_tenant_and_bucket() -> None:
    def rec(**kw: Any) -> LogRecord:
        return LogRecord.from_json(lines_of([mutation(1, Op.WRITE, **kw)])[0])

    assert event_source("us-east", rec()) == "rgw-changelog://us-east/photos"
    assert event_source("us-east", rec(tenant="t_1")) == "rgw-changelog://us-east/t_1/photos"
    # A bucket name's characters that are not URI characters are percent-encoded.
    assert event_source("z", rec(bucket="a b%c")) == "rgw-changelog://z/a%20b%25c"
    assert event_source("z 1", rec()) == "rgw-changelog://z%201/photos"


def test_type_per_op_is_distinct_and_covers_every_op() -> None:
    assert set(EVENT_TYPES) == {o.value for o in Op}
    assert len(set(EVENT_TYPES.values())) == len(Op)


def test_logs_cat_cloudevents(run: Any, tmp_path: Path) -> None:
    lines = lines_of(all_ops())
    write_log(tmp_path / "logs", lines)
    r = run("logs", "cat", "--format", "cloudevents", "--zone", "us-east")
    assert r.exit_code == 0, r.output
    events = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert len(events) == len(lines)
    for event, line in zip(events, lines, strict=True):
        assert CLOUDEVENT.is_valid(event), event
        assert event["data"] == orjson.loads(line)
        assert problems(event["data"]) == []
    assert [e["source"] for e in events] == [
        "rgw-changelog://us-east/t_1/photos",
        "rgw-changelog://us-east/t_1/photos",
        "rgw-changelog://us-east/photos",
        "rgw-changelog://us-east/photos",
        "rgw-changelog://us-east/photos",
        "rgw-changelog://us-east/old%20bucket",
    ]
    assert [e.get("subject") for e in events] == [None, "a/2.jpg", "a b/ü?#", "a/4.jpg", "a/5.jpg", None]
    # Default zone: radosgw's.
    r = run("logs", "cat", "--format", "cloudevents")
    assert orjson.loads(r.stdout_bytes.splitlines()[0])["source"] == "rgw-changelog://default/t_1/photos"


def test_logs_cat_default_format_is_the_lines_as_written(run: Any, tmp_path: Path) -> None:
    lines = lines_of(all_ops())
    write_log(tmp_path / "logs", lines)
    r = run("logs", "cat")
    assert r.exit_code == 0, r.output
    assert r.stdout_bytes == b"".join(lines)
    assert run("logs", "cat", "--format", "jsonl").stdout_bytes == r.stdout_bytes


def test_logs_cat_refuses_an_unknown_format(run: Any) -> None:
    r = run("logs", "cat", "--format", "xml")
    assert r.exit_code == 2
    assert "xml" in r.stderr and len(r.stderr.strip().splitlines()) == 1

