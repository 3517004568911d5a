"""The backup destination: a content-addressed blob store plus the small documents that describe
backups, on any ``changelog.pipeline.targets.Target`` (an S3 bucket/prefix or a local directory).

Layout under the destination URL::

    blobs/<sha256[:2]>/<sha256>           object content, stored once, named by its SHA-256
    manifests/<backup_id>.json.zst        one per finished backup (``manifest``)
    runs/<backup_id>.json                 a run in progress: its marker and checkpoint (``runs``)
    runs/<backup_id>/<n:06d>.json.zst     that run's progress segments (``runs``)
    locks/<name>.json                     lease objects (``lock``)

A blob's name is the hash of its bytes, so uploading it twice would store the same thing twice
at the same place; the runner still never does (an exists check first), and ``verify`` re-hashes
what is stored. Blobs are stored raw (not compressed): the name is then also the checksum of
what a restore streams back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

import orjson
import zstandard

from changelog.errors import ObjectMissing, PermanentError
from changelog.pipeline.targets import DirectoryTarget, ObjectInfo, Part, Target

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
# Blobs up to this size go up in one PUT; larger ones in parts of this size. 8 MiB is the
# collector's part size too: above S3's 5 MiB minimum, small enough to hold one in memory.
PART_BYTES = 8 * MiB
# S3 allows at most 10,000 parts per upload; bigger blobs get bigger parts.
MAX_PARTS = 10_000
COPY_CHUNK = 256 * 1024
ZSTD_LEVEL = 3

BLOBS = "blobs/"
MANIFESTS = "manifests/"
RUNS = "runs/"
LOCKS = "locks/"
MANIFEST_SUFFIX = ".json.zst"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def blob_name(sha: str) -> str:
    if not _SHA_RE.match(sha):
        raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
    return f"{BLOBS}{sha[:2]}/{sha}"


def sha_of_blob_name(name: str) -> str | None:
    if not name.startswith(BLOBS):
        return None
    sha = name.rsplit("/", 1)[-1]
    return sha if _SHA_RE.match(sha) and name == blob_name(sha) else None


def dumps(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def decompress(data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as ex:
        raise PermanentError(f"corrupt zstd document ({len(data)} bytes): {ex}") from ex


class BackupStore:
    """Typed access to the destination layout. Thread-safe as far as its target is (both
    targets are: boto3 clients and plain files)."""

    def __init__(self, target: Target, *, part_bytes: int = PART_BYTES) -> None:
        self.target = target
        self.part_bytes = max(part_bytes, target.min_part_bytes)

    @property
    def url(self) -> str:
        return self.target.url

    def __repr__(self) -> str:
        return f"BackupStore({self.target!r})"

    # -- blobs

    def stat(self, name: str) -> ObjectInfo | None:
        """Size and modification time of one object, or None if it does not exist.

        ``Target.head`` gives metadata only; the runner needs the time (a blob written before
        its run started must be re-checked, see ``lock``), so this is a listing of exactly that
        name on S3 (one request, like a HEAD) and a ``stat`` on a directory."""
        if isinstance(self.target, DirectoryTarget):
            path = Path(self.target.root, *name.split("/"))
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            return ObjectInfo(name, st.st_size, "", st.st_mtime)
        for info in self.target.list(name, page=1):
            return info if info.name == name else None
        return None

    def blob_info(self, sha: str) -> ObjectInfo | None:
        return self.stat(blob_name(sha))

    def put_blob(self, sha: str, data: IO[bytes], size: int) -> None:
        """Upload ``size`` bytes read from ``data`` as the blob ``sha`` (one PUT, or multipart
        with the abort registered right after the create)."""
        name = blob_name(sha)
        if size <= self.part_bytes:
            self.target.put(name, data.read())
            return
        part_size = max(self.part_bytes, -(-size // MAX_PARTS))
        upload_id = self.target.create_multipart(name)
        try:
            parts: list[Part] = []
            number = 1
            while chunk := data.read(part_size):
                parts.append(self.target.upload_part(name, upload_id, number, chunk))
                number += 1
            self.target.complete_multipart(name, upload_id, parts)
        except BaseException:
            with contextlib.suppress(Exception):
                self.target.abort_multipart(name, upload_id)
            raise

    def open_blob(self, sha: str) -> IO[bytes]:
        return self.target.open(blob_name(sha))

    def hash_blob(self, sha: str, *, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
        """SHA-256 and size of what is stored as ``sha`` (``ObjectMissing`` if absent)."""
        h = hashlib.sha256()
        n = 0
        with self.open_blob(sha) as f:
            while chunk := f.read(COPY_CHUNK):
                h.update(chunk)
                n += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return h.hexdigest(), n

    def iter_blobs(self) -> Iterator[tuple[str, ObjectInfo]]:
        """(sha, info) of every stored blob, in name order (foreign names skipped)."""
        for info in self.target.list(BLOBS):
            sha = sha_of_blob_name(info.name)
            if sha is None:
                logger.debug("ignoring foreign object %s in the blob store", info.name)
                continue
            yield sha, info

    def delete_blob(self, sha: str) -> None:
        self.target.delete(blob_name(sha))

    # -- documents

    def put_doc(
        self, name: str, doc: object, *, zstd: bool = False, metadata: Mapping[str, str] | None = None
    ) -> int:
        data = dumps(doc)
        if zstd:
            data = compress(data)
        self.target.put(name, data, metadata=metadata)
        return len(data)

    def get_doc(self, name: str, *, zstd: bool = False) -> object | None:
        """The document (any JSON value: the caller checks its shape), or None if it does not
        exist."""
        try:
            data = self.target.get(name)
        except ObjectMissing:
            return None
        if zstd:
            data = decompress(data)
        try:
            doc: object = orjson.loads(data)
        except orjson.JSONDecodeError as ex:
            raise PermanentError(f"{self.url}{name} is not valid JSON: {ex}") from ex
        return doc

    def head(self, name: str) -> dict[str, str] | None:
        return self.target.head(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.target.list(prefix)

    def delete(self, name: str) -> None:
        self.target.delete(name)

    def close(self) -> None:
        self.target.close()


def owner_id(tag: str) -> str:
    """A holder identity for leases and run markers: ``tag:host:pid:random``."""
    import socket
    import uuid

    return f"{tag}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` was a process on this host that no longer exists (its lease can
    be taken over at once instead of waiting for the expiry). Unknown owners are alive."""
    import socket

    parts = owner.split(":")
    if len(parts) < 4:
        return False
    host, pid_text = parts[-3], parts[-2]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
