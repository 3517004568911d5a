"""Where the follower's write records get their size, etag, mtime and storage class
(``[source] object_info``), on the in-memory radosgw (``fake_rgw``): "index" reads the bucket
index (here an in-memory index holding, per key, the entry of the last write the fake logged,
encoded as radosgw encodes it) and leaves a superseded write null; "head" asks radosgw; "none"
leaves them null; an index that cannot be read falls back to HEAD with one warning.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from changelog.config import SourceConfig
from changelog.errors import PermanentError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.mutation import Mutation, Op
from rgw_module.bucket_index import BucketIndexReader, decode_dir_entry, index_oid, plain_key
from rgw_module.follower import Follower
from rgw_module.mapping import parse_time_ns
from tests.unit.fake_rgw import FakeClock, FakeRadosgw

FAST: dict[str, object] = {"poll_interval": 0.01, "lease_ttl": 3600.0, "trim_interval": 0.0, "workers": 2}


def _s(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _struct(v: int, body: bytes) -> bytes:
    return struct.pack("<BBI", v, 3, len(body)) + body


def encode_dir_entry(name: str, pool: int, epoch: int, size: int, mtime_ns: int, etag: str, sc: str = "") -> bytes:
    """An ``rgw_bucket_dir_entry`` v8 with meta v7, as radosgw 16.2-20.2 write it."""
    sec, nsec = divmod(mtime_ns, 1_000_000_000)
    meta = _struct(7, bytes([1]) + struct.pack("<QII", size, sec, nsec) + _s(etag) + _s("o") + _s("o") + _s("")
                   + struct.pack("<Q", size) + _s("") + _s(sc) + b"\0")  # fmt: skip
    ver = _struct(1, bytes([0x81, pool]) + bytes([0x81, epoch]))
    body = (_s(name) + struct.pack("<Q", epoch) + b"\1" + meta + struct.pack("<I", 0) + _s("") + ver
            + bytes([1]) + _s("tag") + _s("") + struct.pack("<HQ", 0, 0))  # fmt: skip
    return _struct(8, body)


def test_the_test_encoder_is_what_the_decoder_reads() -> None:
    d = decode_dir_entry(encode_dir_entry("k", 6, 200, 5, 1_700_000_000_123_456_789, "e", "COLD"))
    assert (d.name, d.ver_pool, d.ver_epoch, d.size, d.mtime_ns, d.etag, d.storage_class) == (
        "k", 6, 200, 5, 1_700_000_000_123_456_789, "e", "COLD"
    )  # fmt: skip


class FakeIndex:
    """The fake zone's bucket index: per index object and key, the entry of the last logged write
    (sizes made up per write, so a record with the wrong write's size shows)."""

    def __init__(self, rgw: FakeRadosgw) -> None:
        self.rgw = rgw
        self.reads: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    def size_of(self, epoch: int) -> int:
        return 1000 + epoch

    def __call__(self, pool: str, oid: str, keys: Sequence[bytes]) -> Mapping[bytes, bytes]:
        self.reads.append((pool, oid))
        if self.fail is not None:
            raise self.fail
        out: dict[bytes, bytes] = {}
        for e in self.rgw.produced:
            if e.get("op") != "write" or e.get("instance"):
                continue
            key = plain_key(str(e["object"]))
            ver = e["ver"]
            out[key] = encode_dir_entry(str(e["object"]), int(ver["pool"]), int(ver["epoch"]),
                                        self.size_of(int(ver["epoch"])), parse_time_ns(str(e["timestamp"])), "etag")
        return {k: v for k, v in out.items() if k in keys}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[FakeRadosgw, ChangeIndex, list[Follower]]]:
    clock = FakeClock()
    index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2, clock=clock.time)
    rgw = FakeRadosgw(clock, release="reef")
    followers: list[Follower] = []
    yield rgw, index, followers
    for f in followers:
        f.close()
    index.store.close()


def follow(world: tuple[FakeRadosgw, ChangeIndex, list[Follower]], reader: BucketIndexReader | None, **knobs: Any) -> Follower:
    """A follower of the bucket ``b`` (created empty), caught up: what follows is incremental."""
    rgw, index, followers = world
    rgw.create_bucket("b", shards=3)
    f = Follower(index, rgw, SourceConfig.unchecked(**{**FAST, **knobs}), clocks=rgw.clock.clocks(), bucket_index=reader)
    assert f.acquire()
    followers.append(f)
    f.run_until_caught_up(timeout=30)
    return f


def writes(index: ChangeIndex) -> list[Mutation]:
    out = [e.mutation for n in range(index.shards) for e in index.scan(n)]
    return sorted((m for m in out if m.op is Op.WRITE and not m.baseline), key=lambda m: (m.key, m.seq))


def workload(rgw: FakeRadosgw) -> None:
    rgw.put("b", "a", b"first")
    rgw.put("b", "a", b"second")  # supersedes the first
    rgw.put("b", "c", b"other key")


def test_index_facts_for_the_last_write_and_null_for_the_superseded(world: Any) -> None:
    rgw, index, _ = world
    fake = FakeIndex(rgw)
    f = follow(world, BucketIndexReader(fake, "idx-pool"))
    workload(rgw)
    f.run_until_caught_up(timeout=30)
    first, second, other = writes(index)
    assert (first.key, first.size, first.etag, first.obj_mtime_ns) == ("a", None, None, None)
    epochs = {str(e["object"]): int(e["ver"]["epoch"]) for e in rgw.produced if e.get("op") == "write"}
    assert (second.size, second.etag, second.obj_mtime_ns) == (fake.size_of(epochs["a"]), "etag", second.mtime_ns)
    assert other.size == fake.size_of(epochs["c"])
    # One read per index object that had writes (a and c may share a shard).
    assert len(fake.reads) == len(set(fake.reads)) and {p for p, _ in fake.reads} == {"idx-pool"}
    shards = {rgw.shard_of("b", k) for k in ("a", "c")}
    assert {oid for _, oid in fake.reads} == {index_oid(bs) for bs in shards}
    stats = f._ctx.stats.object_facts
    assert (stats["index"], stats["superseded"], stats["head_fallback"]) == (2, 1, 0)


def test_none_leaves_facts_null_and_reads_nothing(world: Any) -> None:
    rgw, index, _ = world
    fake = FakeIndex(rgw)
    f = follow(world, BucketIndexReader(fake, "p"), object_info="none")
    workload(rgw)
    f.run_until_caught_up(timeout=30)
    assert [m.size for m in writes(index)] == [None, None, None] and fake.reads == []


def test_head_asks_radosgw(world: Any) -> None:
    rgw, index, _ = world
    fake = FakeIndex(rgw)
    f = follow(world, BucketIndexReader(fake, "p"), object_info="head")
    workload(rgw)
    f.run_until_caught_up(timeout=30)
    assert [m.size for m in writes(index)][1:] == [len(b"second"), len(b"other key")]
    assert fake.reads == []


@pytest.mark.parametrize("how", ["no reader", "pool missing"])
def test_an_unreadable_index_falls_back_to_head_with_one_warning(world: Any, how: str, caplog: pytest.LogCaptureFixture) -> None:
    rgw, index, _ = world
    fake = FakeIndex(rgw)
    fake.fail = PermanentError("no such pool 'idx-pool'")
    f = follow(world, None if how == "no reader" else BucketIndexReader(fake, "idx-pool"))
    caplog.set_level(logging.WARNING, logger="rgw_module.bilog_reader")
    workload(rgw)
    f.run_until_caught_up(timeout=30)
    tried = len(fake.reads)
    rgw.put("b", "d", b"later")
    f.run_until_caught_up(timeout=30)
    assert len(fake.reads) == tried  # never tried again after the first failure
    assert [m.size for m in writes(index)][1:] == [len(b"second"), len(b"other key"), len(b"later")]
    warned = [r.getMessage() for r in caplog.records if "cannot read the bucket index" in r.getMessage()]
    assert len(warned) == 1
    assert ("no such pool" if how == "pool missing" else "no RADOS access") in warned[0]
    assert f._ctx.stats.object_facts["head_fallback"] == 4
