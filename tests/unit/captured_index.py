"""Bucket index entries captured on the labs (`rados getomapval` of an index shard object),
replayed without radosgw: a ``BucketIndexReader`` over one shard's captured omap
(``captured_reader``), the bucket-index-log ``write`` such a capture stands beside
(``bilog_write``), and that write mapped as the follower maps it (``replay_write``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from changelog.pipeline.mutation import Mutation, Op
from rgw_module.bucket_index import BucketIndexReader, ObjectFacts, index_oid
from rgw_module.mapping import BilogEntry, BucketShard, ShardMapper, position_of

INDEX_POOL = "default.rgw.buckets.index"  # the labs' (the default placement's)


def captured_reader(bs: BucketShard, omap: Mapping[bytes, bytes]) -> BucketIndexReader:
    """A bucket index reader of the one shard object of ``bs``, whose omap is ``omap``: a read
    of another object fails the test (the reader must find its entries where radosgw keeps them)."""

    def read(pool: str, oid: str, keys: Sequence[bytes]) -> Mapping[bytes, bytes]:
        assert oid == index_oid(bs), f"read {oid}, the capture is of {index_oid(bs)}"
        return {k: omap[k] for k in keys if k in omap}

    return BucketIndexReader(read, INDEX_POOL)


def bilog_write(op_id: str, key: str, *, timestamp: str, ver: tuple[int, int]) -> dict[str, Any]:
    """A complete ``write`` of ``key``'s plain entry (unversioned), as radosgw's admin API lists
    it; ``index_ver`` is the one ``op_id`` carries (``<shard>#<index_ver>.<version>.<subop>``)."""
    return {
        "op_id": op_id,
        "op": "write",
        "object": key,
        "instance": "",
        "state": "complete",
        "index_ver": int(op_id.split("#", 1)[1].split(".", 1)[0]),
        "timestamp": timestamp,
        "ver": {"pool": ver[0], "epoch": ver[1]},
        "bilog_flags": 0,
        "versioned": False,
        "owner": "",
        "owner_display_name": "",
    }


def replay_write(
    bs: BucketShard, reader: BucketIndexReader, entry: dict[str, Any]
) -> tuple[ObjectFacts, Mutation]:
    """``entry``, a write, mapped with its writer as the follower maps a page of it alone: the
    facts ``reader`` read for it (there must be some) and its record (a write)."""
    page = [cast(BilogEntry, entry)]
    facts = reader.facts(bs, page)
    got = facts.get(position_of(entry["op_id"]))
    assert got is not None, f"the write of {entry['object']} went without facts"
    (m,) = ShardMapper(bs, 1, writer=True).map_page(page, observed_ns=0, facts=facts)
    assert m is not None and m.op is Op.WRITE
    return got, m
