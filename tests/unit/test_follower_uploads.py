"""Multipart uploads in progress, as the follower sees them in the bucket index logs
(``_multipart_<key>.<upload id>.meta`` written and removed) and keeps them for lifecycle's abort
of incomplete uploads (``changelog.pipeline.uploads``): begun, completed, aborted, the bucket
deleted, a replay after a crash, and the same with follower partitions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from changelog.pipeline.uploads import Upload, incomplete_uploads
from rgw_module.mapping import multipart_meta
from tests.unit import test_follower_unit as follower_unit
from tests.unit.fake_rgw import T0
from tests.unit.test_follower_partitions import Zone
from tests.unit.test_follower_unit import (
    Crash,
    World,
    caught_up,
    crash_at,
    fresh_bucket,
    history,
    start_follower,
)


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """``test_follower_unit``'s world of a fake radosgw, an index and followers."""
    yield from follower_unit.make_world.__wrapped__(tmp_path)  # type: ignore[attr-defined]


def uploads(index: object) -> dict[tuple[str, str], str]:
    store, oid = index.store, index.control_oid  # type: ignore[attr-defined]
    return {(u.bucket, u.upload_id): u.key for u in incomplete_uploads(store, oid)}


def test_the_meta_name_is_parsed() -> None:
    assert multipart_meta("_multipart_a/b.c.2~xYz_-1.meta") == ("a/b.c", "2~xYz_-1")
    assert multipart_meta("_multipart_k.2~u.3") is None  # a part
    assert multipart_meta("__multipart_k.2~u.meta") is None  # the key "_multipart_k.2~u.meta"
    assert multipart_meta("_multipart_.meta") is None


def test_uploads_begun_and_ended_are_tracked(make_world: Callable[..., World]) -> None:
    w = make_world("pacific")
    rgw = w.rgw
    f = start_follower(w)
    fresh_bucket(w, f, "mp", shards=3)
    done = rgw.initiate_upload("mp", "big")
    rgw.upload_part("mp", "big", done, 1)
    left = rgw.initiate_upload("mp", "dir/other.bin")
    aborted = rgw.initiate_upload("mp", "gone")
    caught_up(w, f)
    got = {u.upload_id: u for u in incomplete_uploads(w.index.store, w.index.control_oid)}
    assert set(got) == {done, left, aborted}
    assert got[left] == Upload("mp", "dir/other.bin", left, got[left].started_ns)
    assert T0 * 1e9 <= got[left].started_ns <= w.clock.time() * 1e9
    rgw.end_upload("mp", "big", done, 1, complete=True)
    rgw.end_upload("mp", "gone", aborted, 0, complete=False)
    caught_up(w, f)
    assert uploads(w.index) == {("mp", left): "dir/other.bin"}
    # The upload's parts and meta object are no mutation; the completed object is one write.
    assert history(w.index, "mp") == {"big": ["write"]}


def test_a_crash_before_the_markers_were_saved_replays_to_the_same_uploads(make_world: Callable[..., World]) -> None:
    w = make_world("pacific")
    rgw = w.rgw
    f = start_follower(w, fault_hook=crash_at("recorded"))
    fresh_bucket(w, f, "mp", shards=1)
    a = rgw.initiate_upload("mp", "a")
    b = rgw.initiate_upload("mp", "b")
    rgw.end_upload("mp", "a", a, 0, complete=False)
    w.clock.advance(1.0)
    with pytest.raises(Crash):
        f.sweep()
    f.close()
    assert uploads(w.index) == {}  # recorded, markers and uploads not saved
    g = start_follower(w)
    caught_up(w, g)
    assert uploads(w.index) == {("mp", b): "b"}


def test_a_deleted_bucket_drops_its_uploads(make_world: Callable[..., World]) -> None:
    w = make_world("reef")
    rgw = w.rgw
    f = start_follower(w, bucket_scan_interval=0.0)
    fresh_bucket(w, f, "tmp", shards=2)
    rgw.initiate_upload("tmp", "x")
    caught_up(w, f)
    assert len(uploads(w.index)) == 1
    rgw.delete_bucket("tmp")
    caught_up(w, f)
    assert uploads(w.index) == {}


def test_partitions_keep_their_buckets_uploads_and_the_split_moves_them(tmp_path: Path) -> None:
    from changelog.config import SourceConfig
    from rgw_module.follower import Follower

    z = Zone(tmp_path, release="pacific")
    try:
        rgw = z.rgw
        for name in ("b0", "b1", "b2", "b3"):
            rgw.create_bucket(name, shards=2)
        f = Follower(z.index, rgw, SourceConfig.unchecked(poll_interval=0.01, lease_ttl=30.0, workers=2), clocks=z.clock.clocks())
        z.plain.append(f)
        assert f.acquire()
        z.clock.advance(1.0)
        f.run_until_caught_up(timeout=60)
        before = {name: rgw.initiate_upload(name, f"k-{name}") for name in ("b0", "b1")}
        z.clock.advance(1.0)
        f.run_until_caught_up(timeout=60)
        f.release()
        a, b = z.instance("A"), z.instance("B")
        after = {name: rgw.initiate_upload(name, f"k-{name}") for name in ("b2", "b3")}
        rgw.end_upload("b0", "k-b0", before["b0"], 0, complete=True)
        z.until_caught_up(a, b)
        assert uploads(z.index) == {("b1", before["b1"]): "k-b1", ("b2", after["b2"]): "k-b2", ("b3", after["b3"]): "k-b3"}
    finally:
        z.close()
