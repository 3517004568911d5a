"""``backup verify``: every content hash referenced by a manifest exists in the blob store and (unless
``quick``) the stored bytes hash to it and have the recorded size. Each blob is read once, however
many keys and manifests reference it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.store import BackupStore
from changelog.errors import ObjectMissing
from changelog.progress import Progress

logger = logging.getLogger(__name__)

WORKERS = 8


class Corrupt(TypedDict):
    """A blob whose size or hash is not the one its name and the manifests say."""

    sha256: str
    size: int
    expected_size: int | None
    actual_sha256: NotRequired[str]  # set when the content was hashed


@dataclass
class VerifyResult:
    backups: list[str] = field(default_factory=list)
    referenced: int = 0
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[Corrupt] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = dict(self.__dict__)
        d["ok"] = self.ok
        return d


def verify(
    store: BackupStore,
    *,
    backup_ids: Iterable[str] | None = None,
    quick: bool = False,
    workers: int = WORKERS,
    progress: bool | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> VerifyResult:
    t0 = monotonic()
    result = VerifyResult()
    ids = list(backup_ids) if backup_ids is not None else [b.backup_id for b in mf.list_backups(store)]
    sizes: dict[str, int | None] = {}
    for backup_id in ids:
        m = mf.load(store, backup_id)
        result.backups.append(backup_id)
        for sha, size in m.references():
            if sizes.get(sha) is None:
                sizes[sha] = size
    result.referenced = len(sizes)

    if quick:
        stored = {sha: info.size for sha, info in store.iter_blobs()}
        for sha, size in sorted(sizes.items()):
            if sha not in stored:
                result.missing.append(sha)
            elif size is not None and stored[sha] != size:
                result.corrupt.append({"sha256": sha, "size": stored[sha], "expected_size": size})
            else:
                result.checked += 1
                result.bytes += stored[sha]
        result.seconds = monotonic() - t0
        return result

    def check(item: tuple[str, int | None]) -> tuple[str, int | None, str | None, int]:
        sha, size = item
        try:
            got, n = store.hash_blob(sha)
        except ObjectMissing:
            return sha, size, None, 0
        return sha, size, got, n

    with Progress("verify", total=len(sizes), unit="blobs", enabled=progress) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
            for sha, size, got, n in pool.map(check, sorted(sizes.items())):
                if got is None:
                    result.missing.append(sha)
                    logger.error("blob %s is missing", sha)
                elif got != sha or (size is not None and n != size):
                    result.corrupt.append({"sha256": sha, "actual_sha256": got, "size": n, "expected_size": size})
                    logger.error("blob %s is corrupt (hashes to %s, %d bytes)", sha, got, n)
                else:
                    result.checked += 1
                    result.bytes += n
                bar.update(1, nbytes=n)
    result.seconds = monotonic() - t0
    return result
