"""`rgw-changelog record` all or nothing per input, `--partial`, `--source` reruns recorded once,
every bad line named with its field; `config check --connect` naming the service that fails; a
bad `[logging] file` as one line and exit 2 from every command.

On the embedded backend (sqlite index, directory target), through click's runner and, where the
process's own stderr matters (tracebacks), the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from changelog.cli import cli
from changelog.cli.record_input import MAX_SHOWN, check_input
from changelog.config import load_config, open_index
from changelog.errors import TransientError
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.mutation import InvalidField, Mutation

# The reproduction: a bad line 4 between good lines, recorded two at a time.
REPRO = (
    '{"bucket": "b", "key": "a1"}\n'
    '{"bucket": "b", "key": "a2"}\n'
    '{"bucket": "b", "key": "a3"}\n'
    "{bad\n"
    '{"bucket": "b", "key": "a5"}\n'
)
FIXED = REPRO.replace("{bad", '{"bucket": "b", "key": "a4"}')


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "rgw-changelog.toml"
    p.write_text(
        f"""
[index]
backend = "sqlite"
path = "{tmp_path / "index.db"}"
shards = 4

[target]
url = "file://{tmp_path / "logs"}/"

[api]
listen = "127.0.0.1:1"
"""
    )
    return p


@pytest.fixture
def run(conf: Path) -> Iterator[Any]:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, config: Path = conf) -> Result:
        return runner.invoke(cli, ["-c", str(config), *args], input=input, catch_exceptions=False)

    yield invoke


def keys_in_index(conf: Path) -> list[str]:
    """Every recorded key, with repeats (the index itself, not what the CLI says)."""
    index = open_index(load_config(conf))
    try:
        return sorted(e.mutation.key for shard in range(index.shards) for e in index.scan(shard))
    finally:
        index.store.close()


# --------------------------------------------------------------------------- the reproduction


def test_bad_line_records_nothing_and_names_it(run: Any, conf: Path) -> None:
    r = run("record", "--batch", "2", input=REPRO)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "error: line 4: not JSON (unexpected character, expected a string key: line 1 column 2 (char 1)); "
        "1 bad line of 5, nothing recorded (--partial records the good lines)"
    ]
    assert keys_in_index(conf) == []


def test_partial_records_the_good_lines_and_says_how_many(run: Any, conf: Path) -> None:
    r = run("record", "--batch", "2", "--partial", input=REPRO)
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith("line 4: not JSON")
    assert lines[1] == "recorded 4 mutations (0 duplicates skipped)"
    assert lines[-1] == "error: 1 bad line of 5 not recorded: line 4"
    assert keys_in_index(conf) == ["a1", "a2", "a3", "a5"]
    r = run("record", "--batch", "2", "--partial", "--json", input=REPRO)
    assert orjson.loads(r.stdout) == {
        "recorded": 4,
        "duplicates": 0,
        "bad_lines": 1,
        "bad": [{"line": 4, "field": None, "error": "not JSON (unexpected character, expected a string key: "
                 "line 1 column 2 (char 1))"}],
    }  # fmt: skip


def test_rerun_with_source_records_nothing_twice(run: Any, conf: Path) -> None:
    r = run("record", "--batch", "2", "--source", "import-1", input=REPRO)
    assert r.exit_code == 1 and keys_in_index(conf) == []
    r = run("record", "--batch", "2", "--source", "import-1", input=FIXED)
    assert r.exit_code == 0 and r.stderr == "recorded 5 mutations (0 duplicates skipped)\n"
    r = run("record", "--batch", "2", "--source", "import-1", input=FIXED)
    assert r.exit_code == 0 and r.stderr == "recorded 0 mutations (5 duplicates skipped)\n"
    # An input that grew: only the new line goes in.
    grown = FIXED + '{"bucket": "b", "key": "a6"}\n'
    r = run("record", "--batch", "2", "--source", "import-1", "--json", input=grown)
    assert orjson.loads(r.stdout) == {"recorded": 1, "duplicates": 5}
    assert keys_in_index(conf) == ["a1", "a2", "a3", "a4", "a5", "a6"]
    # Without --source each run is a stream of its own: the same input is recorded again.
    run("record", input=FIXED)
    assert len(keys_in_index(conf)) == 11


def test_partial_rerun_with_source_and_the_corrected_line(run: Any, conf: Path) -> None:
    r = run("record", "--partial", "--source", "s", input=REPRO)
    assert r.exit_code == 1 and "note: record the corrected lines alone, under another --source" in r.stderr
    r = run("record", "--source", "s", input=FIXED)
    assert r.exit_code == 0
    keys = keys_in_index(conf)
    # Nothing twice; a4 only if no later line of its shard was recorded (hence the note).
    assert keys.count("a1") == keys.count("a5") == 1 and keys.count("a4") <= 1
    run("record", "--source", "s-fix", input='{"bucket": "b", "key": "a4"}\n')
    assert "a4" in keys_in_index(conf)


def test_positions_from_a_field_and_lines_as_positions(run: Any, conf: Path) -> None:
    docs = [{"bucket": "b", "key": f"k{i}", "position": i} for i in (1, 2, 9, 10, 11)]
    text = "".join(orjson.dumps(d).decode() + "\n" for d in docs)
    assert (
        orjson.loads(run("record", "--batch", "1", "--source", "p", "--json", input=text).stdout)["recorded"]
        == 5
    )
    # Integer positions are zero-padded, so 10 comes after 9 and a rerun is all duplicates.
    assert orjson.loads(run("record", "--batch", "1", "--source", "p", "--json", input=text).stdout) == {
        "recorded": 0,
        "duplicates": 5,
    }
    index = open_index(load_config(conf))
    positions = sorted(e.mutation.position for s in range(index.shards) for e in index.scan(s))
    index.store.close()
    assert positions == [f"{i:020d}" for i in (1, 2, 9, 10, 11)]


def test_positions_going_back_are_refused(run: Any, conf: Path) -> None:
    text = '{"bucket": "b", "key": "x", "position": "b"}\n{"bucket": "b", "key": "y", "position": "a"}\n'
    r = run("record", "--source", "p", input=text)
    assert r.exit_code == 1
    assert r.stderr.startswith(
        "error: line 2: position: 'a' comes before 'b' (line 1) in string order; "
        "the positions of source 'p' must not go back"
    )
    assert keys_in_index(conf) == []


def test_a_failure_midway_says_how_far_it_got(run: Any, conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A store failure on the second write (injected around the real index), then a rerun.
    real = ChangeIndex.record_many
    calls = []

    def second_fails(self: ChangeIndex, ms: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise TransientError("store unavailable")
        return real(self, ms)

    monkeypatch.setattr(ChangeIndex, "record_many", second_fails)
    r = run("record", "--batch", "2", "--source", "s", input=FIXED)
    assert r.exit_code == 1
    assert r.stderr == (
        "error: store unavailable (2 of 5 good lines recorded before this; recording the input again with "
        "--source s records the rest only)\n"
    )
    monkeypatch.setattr(ChangeIndex, "record_many", real)
    r = run("record", "--batch", "2", "--source", "s", input=FIXED)
    assert r.stderr == "recorded 3 mutations (2 duplicates skipped)\n"
    assert keys_in_index(conf) == ["a1", "a2", "a3", "a4", "a5"]


def test_bad_source_name_is_a_usage_error(run: Any) -> None:
    r = run("record", "--source", "has space", input=FIXED)
    assert r.exit_code == 2 and "Invalid value for --source: must be 1..200 printable ASCII chars" in r.stderr


# --------------------------------------------------------------------------- every error names its field


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"bucket": "b", "key": "k", "mtime": 1e30}',
         "line 1: mtime: 1e+30 is out of range: epoch seconds from 0 to 18446744073 (2554-07-21)"),
        ('{"bucket": "b", "key": "k", "metadata": [1]}', "line 1: metadata: must be an object of strings, not list [1]"),
        ('{"bucket": 5, "key": "k"}', "line 1: bucket: must be a string, not int 5"),
        ('{"key": "k"}', "line 1: bucket: missing"),
        ('{"bucket": "b"}', "line 1: key: missing"),
        ('{"bucket": "b", "key": ["k"]}', "line 1: key: must be a string, not list ['k']"),
        ('{"bucket": "b", "key": "k", "time": -5}', "line 1: time: -5 is out of range: epoch seconds from 0 to "
         "18446744073 (2554-07-21)"),
        ('{"bucket": "b", "key": "k", "mtime": "1960-01-01"}', "line 1: mtime: '1960-01-01' is out of range: "
         "from 1970 to 2554-07-21"),
        ('{"bucket": "b", "key": "k", "mtime_ns": 1.5}', "line 1: mtime_ns: must be an integer from 0 to "
         "18446744073709551615, not float 1.5"),
        ('{"bucket": "b", "key": "k", "mtime": 1, "time": 2}', "line 1: mtime: give one of mtime_ns, mtime, time, "
         "not mtime and time"),
        ('{"bucket": "b", "key": "k", "size": 18446744073709551616}', "line 1: size: must be a non-negative int "
         "below 2**64, not 1.8446744073709552e+19"),
        ('{"bucket": "b", "key": "k", "metadata": {"a": 1}}', "line 1: metadata: keys and values must be strings, "
         "not 'a': int 1"),
        ('{"bucket": "b", "key": "k", "baseline": "yes"}', 'line 1: baseline: must be true or false, not str "yes"'),
        ('{"bucket": "b", "key": "k", "seq": 1.5}', "line 1: seq: must be a string or a non-negative integer, "
         "not float 1.5"),
        ('{"bucket": "b", "key": "k", "etag": 7}', "line 1: etag: must be a string, not int 7"),
        ('{"bucket": "b", "key": "k", "version_id": 7}', "line 1: version_id: must be a string or null, not int 7"),
        ('{"bucket": "b", "key": "k", "source": "a b"}', "line 1: source: must be 1..200 printable ASCII chars: "
         "'a b'"),
        ('{"bucket": "b", "key": "k", "source": "s", "position": "1", "seq": "1", "mtime_ns": 0, '
         '"metadata": {"m": "' + "v" * 600_000 + '"}}',
         "line 1: metadata: too large: the record encodes to 600044 bytes (limit 524288)"),
        ('{"bucket": "b", "key": "k", "colour": "red"}', "line 1: colour: unknown field (known: baseline, bucket, "
         "etag, id, key, metadata, mtime, mtime_ns, op, position, recorded, seq, size, source, storage_class, tenant, "
         "time, v, version_id)"),
        ('{"v": 2, "bucket": "b", "key": "k"}', "line 1: v: schema version 2 is not 1"),
        ("[1]", "line 1: expected a JSON object, not list [1]"),
    ],
)  # fmt: skip
def test_each_error_is_one_line_naming_line_and_field(run: Any, conf: Path, line: str, message: str) -> None:
    r = run("record", input=line + "\n")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.splitlines() == [
        f"error: {message}; 1 bad line of 1, nothing recorded (--partial records the good lines)"
    ]
    assert keys_in_index(conf) == []


def test_many_bad_lines_are_listed_up_to_a_limit(run: Any, conf: Path) -> None:
    n_bad = MAX_SHOWN + 5
    text = '{"bucket": "b", "key": "good"}\n' + "".join('{"bucket": 5, "key": "k"}\n' for _ in range(n_bad))
    r = run("record", input=text)
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[:MAX_SHOWN] == [
        f"line {n}: bucket: must be a string, not int 5" for n in range(2, MAX_SHOWN + 2)
    ]
    assert lines[MAX_SHOWN] == "... and 5 more bad lines"
    assert (
        lines[-1]
        == f"error: {n_bad} bad lines of {n_bad + 1}, nothing recorded (--partial records the good lines)"
    )
    assert keys_in_index(conf) == []
    r = run("record", "--partial", "--json", input=text)
    doc = orjson.loads(r.stdout)
    assert doc["recorded"] == 1 and doc["bad_lines"] == n_bad and len(doc["bad"]) == MAX_SHOWN
    assert r.stderr.splitlines()[-1] == (
        f"error: {n_bad} bad lines of {n_bad + 1} not recorded: lines "
        + ", ".join(str(n) for n in range(2, MAX_SHOWN + 2))
        + " and 5 more"
    )


def test_blank_lines_count_in_line_numbers_only(run: Any, conf: Path) -> None:
    r = run("record", input='\n{"bucket": "b", "key": "k"}\n\n{"bucket": ""}\n')
    assert r.stderr.startswith("error: line 4: bucket: is empty; 1 bad line of 2,")


def test_check_input_spools_the_good_mutations_in_order() -> None:
    lines = [orjson.dumps({"bucket": "b", "key": f"k{i}"}) + b"\n" for i in range(25)]
    checked = check_input(lines, source="s")
    try:
        got = [m for batch in checked.batches(10) for m in batch]
        assert [len(b) for b in checked.batches(10)] == [10, 10, 5]
    finally:
        checked.close()
    assert [m.key for m in got] == [f"k{i}" for i in range(25)]
    assert [m.position for m in got] == [f"{i:020d}" for i in range(1, 26)]
    assert {m.source for m in got} == {"s"}


def test_mutation_names_the_field_for_other_callers() -> None:
    with pytest.raises(InvalidField) as info:
        Mutation(bucket="b", key="k", op="write", mtime_ns=2**64, source="s", position="1", seq="1")  # type: ignore[arg-type]
    assert info.value.field == "mtime_ns" and str(info.value).startswith(
        "mtime_ns must be a non-negative int"
    )
    with pytest.raises(InvalidField, match="bucket name is empty") as info:
        Mutation(bucket="", key="k", op="write", mtime_ns=0, source="s", position="1", seq="1")  # type: ignore[arg-type]
    assert (info.value.field, info.value.why) == ("bucket", "is empty")


# --------------------------------------------------------------------------- config check --connect


def test_config_check_connect_names_an_unreachable_source(run: Any, tmp_path: Path, conf: Path) -> None:
    p = tmp_path / "src.toml"
    p.write_text(
        conf.read_text() + '\n[source]\nendpoint = "http://127.0.0.1:1"\naccess_key = "a"\nsecret_key = "b"\n'
    )
    r = run("config", "check", "--connect", config=p)
    assert r.exit_code == 1 and "Traceback" not in r.output
    source, index, target, last = r.stderr.strip().splitlines()
    assert source.startswith("source: unreachable: radosgw GET /admin/log?type=data at http://127.0.0.1:1: ")
    assert "Connection refused" in source or "NewConnectionError" in source
    assert index.startswith("index: ok (") and target.startswith("target: ok (file://")
    assert last == f"error: config check --connect: cannot use source (config from {p})"
    doc = orjson.loads(run("config", "check", "--connect", "--json", config=p).stdout)
    assert doc["connect"]["source"]["ok"] is False and doc["connect"]["target"]["ok"] is True


def test_config_check_connect_source_without_keys(run: Any, tmp_path: Path, conf: Path) -> None:
    p = tmp_path / "src.toml"
    p.write_text(conf.read_text() + '\n[source]\nendpoint = "http://127.0.0.1:1"\n')
    r = run("config", "check", "--connect", config=p)
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        "source: failed: source.access_key and source.secret_key must be set to follow a radosgw zone"
    )


def test_config_check_connect_names_a_broken_index(run: Any, tmp_path: Path, conf: Path) -> None:
    index_dir = tmp_path / "not-a-db"
    index_dir.mkdir()
    p = tmp_path / "idx.toml"
    p.write_text(conf.read_text().replace(str(tmp_path / "index.db"), str(index_dir)))
    r = run("config", "check", "--connect", config=p)
    assert r.exit_code == 1
    index, target, last = r.stderr.strip().splitlines()
    assert index.startswith("index: ") and not index.startswith("index: ok")
    assert target.startswith("target: ok") and last.endswith(f"cannot use index (config from {p})")


# --------------------------------------------------------------------------- a bad [logging] file


def console_script() -> str:
    here = Path(sys.executable).parent / "rgw-changelog"
    found = str(here) if here.exists() else shutil.which("rgw-changelog")
    if not found:
        pytest.skip("the rgw-changelog console script is not installed (pip install -e .)")
    return found


@pytest.mark.parametrize("where", ["missing-dir/x.log", "a-directory"])
@pytest.mark.parametrize(
    "command",
    [("config", "check"), ("config", "check", "--connect"), ("serve",), ("record",), ("status",), ("logs", "list"),
     ("collect", "--once"), ("shards", "list"), ("backup", "list")],
)  # fmt: skip
def test_bad_log_file_is_one_line_and_exit_2(
    tmp_path: Path, conf: Path, where: str, command: tuple[str, ...]
) -> None:
    (tmp_path / "a-directory").mkdir()
    path = tmp_path / where
    p = tmp_path / "log.toml"
    p.write_text(conf.read_text() + f'\n[logging]\nfile = "{path}"\n')
    proc = subprocess.run(
        [console_script(), "-c", str(p), *command],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    why = "No such file or directory" if where.startswith("missing") else "Is a directory"
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2,
        "",
        f"config error: logging.file: cannot open {path}: {why}\n",
    )


# --------------------------------------------------------------------------- schema 1 lines


def test_a_change_log_line_records_as_it_was(run: Any, conf: Path) -> None:
    """A schema 1 line fed back to `record` keeps its tenant, bucket op, null version and object
    mtime (its ``time`` is the mutation time, its ``mtime`` the object's), and flushes to the
    same fields."""
    lines = [
        {"v": 1, "time": "2026-12-01T10:00:00.000001Z", "op": "bucket_create", "tenant": "t1", "bucket": "b",
         "key": None},
        {"v": 1, "time": "2026-12-01T10:00:01.000000Z", "op": "write", "tenant": "t1", "bucket": "b", "key": "k",
         "version_id": "null", "size": 5, "etag": "e", "mtime": "2026-12-01T10:00:00.500000Z",
         "storage_class": "STANDARD"},
        {"v": 1, "time": "2026-12-01T10:00:02.000000Z", "op": "bucket_delete", "tenant": None, "bucket": "c",
         "key": None},
    ]
    got = run("record", input="".join(orjson.dumps(d).decode() + "\n" for d in lines))
    assert got.exit_code == 0, got.output
    index = open_index(load_config(conf))
    try:
        ms = sorted((e.mutation for s in range(index.shards) for e in index.scan(s)), key=lambda m: m.mtime_ns)
    finally:
        index.store.close()
    assert [(m.op.value, m.tenant, m.bucket, m.key, m.version_id) for m in ms] == [
        ("bucket_create", "t1", "b", "", None), ("write", "t1", "b", "k", None), ("bucket_delete", "", "c", "", None)
    ]
    assert ms[1].obj_mtime_ns == 1_796_119_200_500_000_000 and ms[1].mtime_ns == 1_796_119_201_000_000_000
    assert ms[1].storage_class == "STANDARD" and ms[1].size == 5
    bad = run("record", input='{"bucket": "b", "key": null, "op": "write"}\n')
    assert bad.exit_code != 0 and "line 1" in bad.output and "key" in bad.output


def test_mutation_rules_of_schema_1() -> None:
    def m(**kw: Any) -> Mutation:
        doc: dict[str, Any] = {"bucket": "b", "key": "k", "op": "write", "mtime_ns": 1, "source": "s",
                               "position": "1", "seq": "1"}
        doc.update(kw)
        return Mutation(**doc)

    assert m(version_id="null").version_id is None  # one spelling of the null version
    assert m(op="bucket_delete", key="").key == ""
    for kw, field in [
        ({"op": "bucket_create"}, "key"),  # a bucket op has no key
        ({"op": "bucket_delete", "key": "", "size": 1}, "op"),
        ({"op": "bucket_delete", "key": "", "version_id": "v"}, "version_id"),
        ({"tenant": "a/b"}, "tenant"),
        ({"tenant": 3}, "tenant"),
        ({"storage_class": ""}, "storage_class"),
        ({"obj_mtime_ns": -1}, "mtime"),
        ({"key": ""}, "key"),
    ]:
        with pytest.raises(InvalidField) as ex:
            m(**kw)
        assert ex.value.field == field, kw
    encoded = m(tenant="t_1", obj_mtime_ns=7, storage_class="COLD", version_id="v1")
    assert Mutation.decode(encoded.encode()) == encoded
