"""``backup restore``: write the state of one bucket as of a backup into another bucket, every
object's content checked against its SHA-256 while it streams from the blob store, with its
user metadata, Content-Type, content headers (``model.CONTENT_HEADERS``) and tags; not its ACL.
A small object's tags go with its PUT (``x-amz-tagging``), so it never shows without them; a
large one's by a PutObjectTagging right after its upload completes (radosgw keeps no tags given
to CreateMultipartUpload). A manifest from before tags were kept restores objects untagged.

Small objects are read whole, checked, then PUT; large ones go up in parts and the hash is
compared before the upload is completed, so a corrupt blob never becomes a visible object (the
upload is aborted). Failures are collected per key: the rest of the bucket is still restored
and the result names what failed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.model import Version
from changelog.consumers.backup.source import Source
from changelog.consumers.backup.store import PART_BYTES, BackupStore
from changelog.errors import ChangelogError, PermanentError
from changelog.pipeline.logformat import rfc3339_us
from changelog.progress import Progress

logger = logging.getLogger(__name__)

WORKERS = 8


class ContentMismatch(PermanentError):
    """A stored blob does not hash to its name."""


@dataclass
class RestoreResult:
    backup_id: str
    as_of: str
    bucket: str
    to_bucket: str
    prefix: str
    objects: int = 0
    bytes: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    lagging: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _restore_one(store: BackupStore, dest: Source, bucket: str, key: str, v: Version, part_bytes: int) -> int:
    assert v.sha256 is not None
    h = hashlib.sha256()
    meta = dict(v.metadata)
    with store.open_blob(v.sha256) as f:
        first = f.read(part_bytes)
        h.update(first)
        rest = f.read(1) if len(first) == part_bytes else b""
        if not rest:
            if h.hexdigest() != v.sha256:
                raise ContentMismatch(f"blob {v.sha256} of {key!r} hashes to {h.hexdigest()}")
            dest.put(bucket, key, first, metadata=meta, content_type=v.content_type, headers=v.headers, tags=v.tags)
            return len(first)
        upload_id = dest.create_multipart(
            bucket, key, metadata=meta, content_type=v.content_type, headers=v.headers
        )
        try:
            etags = [dest.upload_part(bucket, key, upload_id, 1, first)]
            n = len(first)
            chunk = rest + f.read(part_bytes - 1)
            while chunk:
                h.update(chunk)
                etags.append(dest.upload_part(bucket, key, upload_id, len(etags) + 1, chunk))
                n += len(chunk)
                chunk = f.read(part_bytes)
            if h.hexdigest() != v.sha256:
                raise ContentMismatch(f"blob {v.sha256} of {key!r} hashes to {h.hexdigest()}")
            dest.complete_multipart(bucket, key, upload_id, etags)
        except BaseException:
            dest.abort_multipart(bucket, key, upload_id)
            raise
    # Outside the blob's ``with`` and the abort: the object is complete, only its tags are missing.
    if v.tags:
        dest.put_tags(bucket, key, v.tags)
    return n


def restore(
    store: BackupStore,
    dest: Source,
    *,
    bucket: str,
    to_bucket: str,
    backup_id: str | None = None,
    at_us: int | None = None,
    prefix: str = "",
    workers: int = WORKERS,
    part_bytes: int = PART_BYTES,
    progress: bool | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> RestoreResult:
    t0 = monotonic()
    info = mf.select(mf.list_backups(store), backup_id=backup_id, at_us=at_us)
    m = mf.load(store, info.backup_id)
    if bucket not in m.bucket_names():
        raise PermanentError(
            f"backup {info.backup_id} has no bucket {bucket!r} (it has: {', '.join(m.bucket_names()) or 'none'})"
        )
    as_of = info.as_of
    left = m.behind.get(bucket)
    if left is not None and left["as_of_us"] is not None:
        # Left out by that run (``backup run --bucket``): its state is an earlier backup's.
        as_of = rfc3339_us(left["as_of_us"])
        logger.warning("backup %s did not back up %s: restoring its state as of %s", info.backup_id, bucket, as_of)
    result = RestoreResult(info.backup_id, as_of, bucket, to_bucket, prefix)
    result.lagging = sum(1 for lag in m.lagging if lag.get("bucket") == bucket)
    objects = list(m.objects(bucket, prefix))
    dest.ensure_bucket(to_bucket)
    total = sum(v.size or 0 for _, v in objects)
    logger.info("restoring %d objects (%d bytes) of %s from backup %s into %s", len(objects), total, bucket, info.backup_id, to_bucket)

    def one(kv: tuple[str, Version]) -> tuple[str, int, str | None]:
        key, v = kv
        try:
            return key, _restore_one(store, dest, to_bucket, key, v, part_bytes), None
        except ChangelogError as ex:
            logger.error("restore of %r failed: %s", key, ex)
            return key, 0, str(ex)

    with Progress(f"restore {bucket} -> {to_bucket}", total=len(objects), unit="objects", enabled=progress) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore") as pool:
            for key, n, err in pool.map(one, objects):
                if err is None:
                    result.objects += 1
                    result.bytes += n
                else:
                    result.failed.append({"key": key, "error": err})
                bar.update(1, nbytes=n)
    result.seconds = monotonic() - t0
    return result
