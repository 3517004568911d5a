"""The upload pipeline (``changelog.pipeline.upload``) on its own, on a real directory target: the writer
owns its multipart upload, whose abort is armed the moment the upload exists (as s3transfer
registers it right after CreateMultipartUpload), so any failure after that leaves no upload
behind; a completed object is never aborted."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from changelog.errors import LeaseLost, PermanentError
from changelog.pipeline import keys
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import Compression
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.targets import DirectoryTarget, Part
from changelog.pipeline.upload import LogWriter, TargetRetry, Uploads

NAME = "logs/2026/01/01/00/20260101T000000.000000Z-0000000001.jsonl"


class CallLog(DirectoryTarget):
    """A directory target that notes every multipart call it serves, in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def create_multipart(self, name: str, *, metadata: Mapping[str, str] | None = None) -> str:
        upload_id = super().create_multipart(name, metadata=metadata)
        self.calls.append("create")
        return upload_id

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        self.calls.append(f"part {number}")
        return super().upload_part(name, upload_id, number, data)

    def complete_multipart(self, name: str, upload_id: str, parts: Sequence[Part]) -> None:
        self.calls.append("complete")
        super().complete_multipart(name, upload_id, parts)

    def abort_multipart(self, name: str, upload_id: str) -> None:
        self.calls.append("abort")
        super().abort_multipart(name, upload_id)


def entries(tmp_path: Path, n: int) -> list[tuple[str, bytes]]:
    """``n`` real index entries (key, stored value) of shard 0, as a pass reads them."""
    store = SqliteStore(str(tmp_path / "index.db"))
    index = ChangeIndex(store, shards=1, prefix="u")
    index.record_many([
        Mutation(bucket="b", key=f"k/{i}", op=Op.WRITE, mtime_ns=1_795_000_000_000_000_000 + i, source="s",
                 position=f"{i:010d}", seq=f"{i:010d}", size=i, etag="e")
        for i in range(n)
    ])
    page = store.omap_page(index.shard_oid(0), start_after=keys.DATA_PREFIX, end_before=keys.DATA_END,
                           prefix=keys.DATA_PREFIX, limit=n)
    store.close()
    return page


def uploads(target: DirectoryTarget, guard: Callable[[], None], *, part_bytes: int) -> Uploads:
    retry = TargetRetry(guard=guard, retries=0, backoff_base=0.01, backoff_max=0.01, sleep=time.sleep,
                        on_error=lambda ex: None)
    return Uploads(target=target, retry=retry, guard=guard, fault=lambda step: None, monotonic=time.monotonic,
                   part_bytes=part_bytes, roll_entries=10**6, roll_bytes=1 << 30, roll_seconds=3600.0)


def writer(up: Uploads) -> LogWriter:
    return LogWriter(up, NAME, seq=1, cutoff_us=1_795_000_001_000_000, generation=1, compression=Compression.NONE)


def test_a_failure_right_after_create_aborts_the_upload(tmp_path: Path) -> None:
    target = CallLog(tmp_path / "target")
    checks: list[int] = []

    def guard() -> None:
        checks.append(1)
        if len(checks) == 2:  # 1: before the create; 2: before the first part
            raise LeaseLost("injected: the lease is lost right after the create")

    page = entries(tmp_path, 200)
    with pytest.raises(LeaseLost, match="injected"), writer(uploads(target, guard, part_bytes=1024)) as w:
        w.add_many(0, page)  # a full part: the upload thread creates the upload, then fails
        try:
            w.wait_parts()
        finally:
            assert len(list(target.list_uploads(""))) == 1  # it exists until the writer is left
    assert target.calls == ["create", "abort"]
    assert list(target.list_uploads("")) == []
    assert target.head(NAME) is None


def test_a_failed_part_aborts_the_upload(tmp_path: Path) -> None:
    class Refusing(CallLog):
        def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
            if number == 2:
                self.calls.append("part 2 refused")
                raise PermanentError("injected: 403 on part 2")
            return super().upload_part(name, upload_id, number, data)

    target = Refusing(tmp_path / "target")
    with pytest.raises(PermanentError, match="injected"), writer(uploads(target, lambda: None, part_bytes=1024)) as w:
        w.add_many(0, entries(tmp_path, 400))
        w.complete({})
    assert target.calls == ["create", "part 1", "part 2 refused", "abort"]
    assert list(target.list_uploads("")) == []


def test_a_completed_object_is_not_aborted(tmp_path: Path) -> None:
    target = CallLog(tmp_path / "target")
    page = entries(tmp_path, 400)
    with writer(uploads(target, lambda: None, part_bytes=1024)) as w:
        w.add_many(0, page)
        w.complete(w.pending().metadata())
    assert target.calls[0] == "create" and target.calls[-1] == "complete" and "abort" not in target.calls
    assert list(target.list_uploads("")) == []
    info = target.head(NAME)
    assert info is not None and info["seq"] == "1"  # a streamed object's metadata is fixed at create
    assert target.get(NAME).count(b"\n") == 400
