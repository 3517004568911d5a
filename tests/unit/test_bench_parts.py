"""The benchmark's pure parts, which the lab runs cannot check on every release: the ``journal``
figure's record matching, its Journal-record parser and bucket layout (Journal mode needs a
Tentacle lab), the backup benchmarks' change plan, request split (copy or detection) and ETag
count, the ``rgw-put`` figure's size check, and the CPU read from ``/proc/PID/stat``."""

from __future__ import annotations

import os
import random
from pathlib import Path

from changelog.pipeline.logformat import LogRecord, rfc3339_us
from tools.bench.backup_passes import (
    BackupBuckets,
    as_expected,
    etag_counts,
    plan_changes,
    request_call,
    split_requests,
)
from tools.bench.common import Bench, Lab, proc_cpu_s, stat_cpu_s
from tools.bench.journal import Layout
from tools.bench.journal_ledger import Change, Ledger, compare, count_text
from tools.bench.journal_logging import journal_change, parse_journal
from tools.bench.rgw_put import round_config, size_counts, sizes_text


def _bench(quick: bool) -> Bench:
    lab = Lab(conf="c", keyring="", pool="p", rgw_endpoint="http://127.0.0.1:1", access_key="a", secret_key="s", dir="d")
    return Bench(lab=lab, tag="t1", tmp=Path("/nonexistent"), quick=quick)


def test_parse_journal_keeps_spaces_in_keys_and_reads_dashes_as_none() -> None:
    text = (
        'owner b1 [05/Dec/2026:23:54:07 +0000] REST.PUT.OBJECT r0/ünï côdé/1 4096 - "0123abcd"\n'
        "\n"
        "owner b1 [05/Dec/2026:23:54:08 +0000] REST.DELETE.OBJECT r0/put/0000001 - null -\n"
    )
    lines = parse_journal(text)
    assert [(x.bucket, x.key, x.op, x.version, x.etag) for x in lines] == [
        ("b1", "r0/ünï côdé/1", "REST.PUT.OBJECT", None, "0123abcd"),
        ("b1", "r0/put/0000001", "REST.DELETE.OBJECT", None, None),
    ]


def test_journal_change_tells_a_delete_marker_from_a_delete() -> None:
    (put, delete) = parse_journal(
        "o v [05/Dec/2026:23:54:07 +0000] REST.PUT.OBJECT k 1 v1 e\n"
        "o v [05/Dec/2026:23:54:07 +0000] REST.DELETE.OBJECT k - - -\n"
    )
    assert journal_change(put, {"v"}).kind == "write"
    assert journal_change(delete, {"v"}).kind == "delete_marker"
    assert journal_change(delete, set()).kind == "delete"


def test_compare_counts_matched_missing_phantom_and_duplicate() -> None:
    ledger = Ledger()
    ledger.add("b", "k1", "write", None, '"e1"')
    ledger.add("b", "k2", "write", None, "e2")  # never recorded: missing
    ledger.add("v", "k3", "delete_marker", "dm1")
    ledger.refuse("b", "k4", "412 If-None-Match PUT")
    records = [
        Change("b", "k1", "write", None, "e1"),
        Change("b", "k1", "write", None, "e1"),  # twice: a duplicate
        Change("v", "k3", "delete_marker", None),  # no version id: matched all the same
        Change("b", "k4", "write", None, "e4"),  # the refused PUT: a phantom with its cause
        Change("b", "k5", "delete", None),  # nothing explains it
    ]
    c = compare(ledger, records)
    assert (c["mutations"], c["records"], c["matched"], c["missing"], c["phantom"], c["duplicate"]) == (3, 5, 2, 1, 2, 1)
    assert c["version_id_absent"] == 1
    assert c["phantom_by_cause"] == {"412 If-None-Match PUT": 1, "no such mutation": 1}
    assert c["exact"] == 2 / (3 + 2 + 1)
    assert count_text(c) == (
        "3 mutations, 1 missing, 2 phantom, 1 duplicate (412 If-None-Match PUT: 1, no such mutation: 1), "
        "1 without their version id"
    )


def test_journal_layout_names_and_groups_the_buckets() -> None:
    full, quick = Layout.named(_bench(quick=False)), Layout.named(_bench(quick=True))
    assert full.followed == ["bench-jserve-t1", "bench-jboth-t1", "bench-jserve-v-t1", "bench-jboth-v-t1"]
    assert full.journal_sources == ["bench-jjournal-t1", "bench-jjournal-v-t1", "bench-jboth-t1", "bench-jboth-v-t1"]
    assert full.lag_buckets == ["bench-jlag5-t1", "bench-jlagdef-t1"]
    assert quick.lag_buckets == ["bench-jlag5-t1"]
    assert full.all[:2] == ["bench-jnone-t1", "bench-jnone-v-t1"] and full.all[-1] == "bench-jlog-t1"
    assert len(full.all) == 11 and len(quick.all) == 10
    assert full.versioned == {f"bench-j{c}-v-t1" for c in ("none", "serve", "journal", "both")}


def test_plan_changes_splits_by_the_mix_and_checks_the_outcome() -> None:
    changes = plan_changes(500, 0.01, (3, 1, 1), random.Random(1), minimum=3)
    assert (changes.changed, len(changes.overwritten), changes.new, len(changes.deleted)) == (5, 3, 1, 1)
    assert not set(changes.overwritten) & set(changes.deleted)
    assert changes.text() == "3 overwritten, 1 new, 1 deleted"
    assert changes.expected(500) == 500
    assert as_expected(changes, 500, 500, {"copied": 4, "deleted": 1, "checked": 500})
    assert not as_expected(changes, 500, 499, {"copied": 4, "deleted": 1, "checked": 500})
    one = plan_changes(10, 0.01, (3, 1, 1), random.Random(1), minimum=1)
    assert (one.changed, len(one.overwritten), one.new, one.deleted) == (1, 1, 0, [])


def _rec(bucket: str, key: str | None, op: str = "write", *, size: int | None = 1, etag: str | None = "e",
         baseline: bool = False) -> LogRecord:  # fmt: skip
    return LogRecord(
        id=f"{bucket}/{key}/{op}", time=rfc3339_us(0), bucket=bucket, key=key, version_id=None, op=op,
        size=size, etag=etag, seq="0", baseline=baseline, recorded=rfc3339_us(0),
    )  # fmt: skip


def test_stat_cpu_s_reads_utime_and_stime_after_a_command_name_with_spaces_and_parens() -> None:
    line = "1234 (radosgw (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 40 0 100 0 0\n"
    assert stat_cpu_s(line, 100) == 3.0
    own = proc_cpu_s(os.getpid())
    assert own is not None and own > 0
    assert proc_cpu_s(2**22 + 7) is None  # above pid_max's default: no such process


def test_size_counts_split_the_followed_buckets_writes_by_round_configuration() -> None:
    assert round_config("r3-serve-head/0000001") == "serve-head"
    assert round_config("r0-serve/0000001") == "serve"
    assert round_config("warmup/0000001") is None and round_config("rx-serve/1") is None
    records = [
        _rec("on", "r0-serve/1"),
        _rec("on", "r1-serve/1", size=None),
        _rec("on", "r0-serve-head/1"),
        _rec("on", "warmup/1", size=None),  # not a measured round
        _rec("on", None, "bucket_create", size=None),  # the bucket's own record
        _rec("off", "r0-serve/2", size=None),  # another bucket
        _rec("on", "r0-serve/3", "delete", size=None),  # not a write
    ]
    sizes = size_counts(records, "on")
    assert sizes == {"serve": (2, 1), "serve-head": (1, 1)}
    text, valid = sizes_text(sizes)
    assert not valid and text.startswith("NOT VALID: ") and "serve (object_info index) 0.500 (1/2)" in text
    text, valid = sizes_text({"serve": (800, 800), "serve-head": (800, 800)})
    assert valid and text == (
        "write records with a size: serve (object_info index) 1.000 (800/800); "
        "serve-head (object_info head) 1.000 (800/800)"
    )


def test_split_requests_tells_copies_from_detection() -> None:
    b = BackupBuckets("src", "logs", "store", "mirror")
    assert request_call("GetObject", "http://h:1/src/data/0000001") == ("GetObject", "src", "data/")
    assert request_call("ListObjectsV2", "http://h:1/src?list-type=2&prefix=x") == ("ListObjectsV2", "src", "x")
    assert request_call("ListObjectsV2", "http://h:1/st?list-type=2&prefix=blobs%2Fab") == ("ListObjectsV2", "st", "blobs/")
    assert request_call("ListObjectsV2", "http://h:1/src?list-type=2") == ("ListObjectsV2", "src", "")
    assert request_call("GetObject", "http://h:1/logs/2026%2F12") == ("GetObject", "logs", "2026/")
    assert request_call("GetObject", "http://h:1/logs/watermark.json") == ("GetObject", "logs", "(root)")
    calls = {
        ("GetObject", "src", "data/"): 120,  # copy: the changed objects read
        ("PutObject", "store", "blobs/"): 160,  # copy: their content stored
        ("HeadObject", "store", "blobs/"): 3,  # copy: a blob's exists check
        ("ListObjectsV2", "src", ""): 2,  # probes: detection
        ("HeadObject", "src", "data/"): 5,  # probes: detection
        ("GetObject", "logs", "2026/"): 2,
        ("PutObject", "store", "manifests/"): 1,
        ("ListObjectsV2", "store", ""): 1,  # the blobs/ listing: every exists check at once
        ("PutObject", "mirror", "data/"): 7,  # copy
        ("DeleteObject", "mirror", "data/"): 4,  # copy (applying a deletion)
        ("ListObjectsV2", "mirror", ""): 21,
    }
    copy, detect = split_requests(calls, b)
    assert copy == 120 + 160 + 3 + 7 + 4
    assert detect == {
        "GetObject logs/2026/": 2,
        "HeadObject src/data/": 5,
        "ListObjectsV2 mirror/": 21,
        "ListObjectsV2 src/": 2,
        "ListObjectsV2 store/": 1,
        "PutObject store/manifests/": 1,
    }


def test_etag_counts_counts_the_writes_of_the_bucket_since_the_baseline() -> None:
    records = [
        _rec("src", "data/1"),
        _rec("src", "data/2", etag=None),
        _rec("src", "data/3", baseline=True, etag=None),
        _rec("src", "data/4", "delete", etag=None),
        _rec("other", "data/5", etag=None),
    ]
    assert etag_counts(records, "src") == (2, 1)
    assert etag_counts(records, "src", since_baseline=False) == (3, 1)
