"""Core review (3): a write's facts read from the bucket index after a *cancelled* racer rewrote
its entry.

radosgw prepares an index entry before it writes an object's head and, when the head write fails
(a racing overwrite's guard: -ECANCELED, answered 200; a conditional PUT's -EEXIST: 412), it
completes the entry with ``CLS_RGW_OP_CANCEL``. cls_rgw's ``rgw_bucket_complete_op`` sets
``entry.ver = op.ver`` before it looks at the op, and a cancel's ``ver`` is ``{pool: -1,
epoch: 0}`` (``cls_obj_complete_cancel``): the entry keeps the live object's meta (size, etag,
mtime) but loses the ``ver`` of the write that made it. The follower matched facts by ``ver``
only, so the record of the live object went out with null size and etag although no later write
superseded it (README's record table: "null only for a write superseded before the follower
read it").

The entry below was captured on the Tentacle 20.2.4 lab (``rados getomapval`` of the index shard
object) after six concurrent ``If-None-Match: *`` PUTs of ``r4``: one won (its bilog ``write``
below), the others were cancelled after it.
"""

from __future__ import annotations

import base64
from typing import Any, cast

from changelog.pipeline.mutation import Op
from rgw_module.bucket_index import BucketIndexReader, decode_dir_entry
from rgw_module.mapping import BilogEntry, BucketShard, ShardMapper, position_of
from tests.unit.captured_index import bilog_write, captured_reader, replay_write

CANCELLED_ENTRY = base64.b64decode(
    "CAPbAAAAAgAAAHI0AAAAAAAAAAABBwNeAAAAAcDGLQAAAAAAMkcWa6IkeA4gAAAANjkyODE1MTM1MGVlZTU0MWM4Zjc3"
    "YzI5MzM4ZTIwODcGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAADAxi0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQEKAAAAiP//"
    "////////AAY9AAAAOGEyMTcxYWYtZDcxMy00M2YyLTg3YTYtZjM2OTc1NGM2NzlmLjQxMjYuMTI1NDM3MjM1MzU5Mjc5"
    "NDU1NAAAAAAAAAAAAAAAAAAA"
)
WINNER = bilog_write("6#00000000003.4301.6", "r4", timestamp="2026-12-07T05:42:10.242754722Z", ver=(6, 1694))
SIZE = 3_000_000
ETAG = "6928151350eee541c8f77c29338e2087"
BS = BucketShard("r1-probe-4c4241", "8a2171af-d713-43f2-87a6-f369754c679f.4126.23", 6)


def reader() -> BucketIndexReader:
    return captured_reader(BS, {b"r4": CANCELLED_ENTRY})


def test_the_captured_entry_is_a_cancelled_one_describing_the_winner() -> None:
    d = decode_dir_entry(CANCELLED_ENTRY)
    assert (d.ver_pool, d.ver_epoch) == (-1, 0)
    assert (d.exists, d.size, d.etag) == (True, SIZE, ETAG)
    assert d.mtime_ns == 1796622130242754722  # the winner's bilog timestamp, to the nanosecond


def test_the_live_write_keeps_its_facts_after_a_cancelled_racer() -> None:
    got, m = replay_write(BS, reader(), WINNER)  # the live object's record has facts
    assert (got.size, got.etag, got.mtime_ns, got.owner) == (SIZE, ETAG, 1796622130242754722, "tester")
    assert (m.size, m.etag, m.metadata) == (SIZE, ETAG, {"writer": "tester"})


def test_an_earlier_write_gets_no_facts_from_a_cancelled_entry() -> None:
    """The cancelled entry describes the *last* write: an earlier write of the key (another
    mtime, another ``ver``) must stay without facts (a record never carries another write's)."""
    earlier = {
        **WINNER,
        "op_id": "6#00000000002.4300.6",
        "timestamp": "2026-12-07T05:42:10.201000000Z",
        "ver": {"pool": 6, "epoch": 1690},
    }
    page = [cast(BilogEntry, earlier), cast(BilogEntry, WINNER)]
    facts = reader().facts(BS, page)
    assert position_of(earlier["op_id"]) not in facts
    assert position_of(WINNER["op_id"]) in facts


def test_a_cancelled_entry_of_another_mtime_gives_no_facts() -> None:
    """Same ``ver`` shape, the write's mtime one nanosecond off: not its entry."""
    off = {**WINNER, "timestamp": "2026-12-07T05:42:10.242754723Z"}
    assert reader().facts(BS, [cast(BilogEntry, off)]) == {}


# -- Reef 18.2.7's DeleteObjectTagging ----------------------------------------------------------
#
# Captured on the Reef lab: PUT k (5 bytes), PutObjectTagging, DeleteObjectTagging of an
# unversioned bucket. radosgw logs the DeleteObjectTagging as a ``write`` stamped "0.000000" and
# rewrites the index entry with an empty meta but the size: etag "", owner "", mtime 1 ns (HEAD then
# answers the right etag but Last-Modified 1970). The record said time and mtime 1970-01-01 and
# etag "".

REEF_DELETED_TAGS_ENTRY = base64.b64decode(
    "CAOJAAAAAQAAAGsLAAAAAAAAAAEHAzIAAAABBQAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAFAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAQECAAAABwsDIAAAAF9VaVNPZVAtbmlLcFFwZzVXRXRMdGlaMjNuVThvakFxAAAAAAAAAAAAAAAAAAA="
)
REEF_DELETED_TAGS = bilog_write("6#00000000003.30.6", "k", timestamp="0.000000", ver=(7, 11))
REEF_BS = BucketShard("r1-dt-bf49d8", "dd8622c7-e829-4d8c-9304-4fcc3ebe9490.4128.13", 6)
OBSERVED_NS = 1_796_622_000_000_000_000


def test_the_reef_entry_is_the_size_with_an_empty_meta() -> None:
    d = decode_dir_entry(REEF_DELETED_TAGS_ENTRY)
    assert (d.ver_pool, d.ver_epoch) == (7, 11)
    assert (d.exists, d.size, d.etag, d.mtime_ns, d.owner) == (True, 5, "", 1, "")


def reef_page_and_facts() -> tuple[list[BilogEntry], dict[str, Any]]:
    page = [cast(BilogEntry, REEF_DELETED_TAGS)]
    return page, dict(captured_reader(REEF_BS, {b"k": REEF_DELETED_TAGS_ENTRY}).facts(REEF_BS, page))


def test_an_entry_of_an_empty_meta_gives_no_facts() -> None:
    page, facts = reef_page_and_facts()
    assert facts == {}
    for writer in (False, True):
        (m,) = ShardMapper(REEF_BS, 1, writer=writer).map_page(page, observed_ns=OBSERVED_NS, facts=facts)
        assert m is not None and m.op is Op.WRITE and m.key == "k"
        assert (m.size, m.etag, m.obj_mtime_ns) == (None, None, None), (m.size, m.etag, m.obj_mtime_ns)


def test_a_write_without_a_time_is_stamped_when_seen() -> None:
    page, facts = reef_page_and_facts()
    (m,) = ShardMapper(REEF_BS, 1).map_page(page, observed_ns=OBSERVED_NS, facts=facts)
    assert m is not None and m.mtime_ns == OBSERVED_NS, "a write with no time in its entry is stamped 1970"
