"""The benchmark's pure parts, which the lab runs cannot check on every release: the ``journal``
figure's record matching, its Journal-record parser and bucket layout (Journal mode needs a
Tentacle lab), and the backup benchmarks' change plan."""

from __future__ import annotations

import random
from pathlib import Path

from tools.bench.backup_passes import as_expected, plan_changes
from tools.bench.common import Bench, Lab
from tools.bench.journal import Layout
from tools.bench.journal_ledger import Change, Ledger, compare, count_text
from tools.bench.journal_logging import journal_change, parse_journal


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
