"""Where change-log objects go: an S3 bucket or a local directory, behind one ``Target``
interface (docs/design.md §8).

The S3 client comes from ``changelog.pipeline.s3client`` (the one boto3 module), which translates
library errors by HTTP status: 5xx, throttling, timeouts and connection errors become
``TransientError``; access denied, a missing bucket, bad credentials and other client errors
become ``PermanentError``. A vanished multipart upload is ``UploadMissing`` here.

Object names are relative to the target's root (``s3://bucket/prefix/`` or ``file:///dir/``)
and use ``/`` as separator.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, TypedDict, TypeVar, Unpack
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from changelog.errors import ChangelogError, ConfigError, ObjectMissing, PermanentError, TransientError
from changelog.pipeline.s3client import (
    AddressingStyle,
    TranslatedBody,
    make_s3_client,
    refusal,
    s3_call,
    translate_error,
)
from changelog.pipeline.tmpfiles import pid_gone, tmp_owner, tmp_writer

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedMultipartUploadTypeDef,
        ListMultipartUploadsRequestTypeDef,
        ListObjectsV2RequestTypeDef,
    )

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
# S3 refuses parts below 5 MiB (all but the last); radosgw follows (rgw_multipart_min_part_size).
S3_MIN_PART = 5 * MiB
# ListObjectsV2 and ListMultipartUploads return at most 1000 per call.
LIST_PAGE = 1000
# An S3 target's client: a request that still fails after a few attempts fails the collector's
# pass, which is retried as a whole; log objects are read and written in parts of a few MiB.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
MAX_ATTEMPTS = 3

T = TypeVar("T")


class UploadMissing(ObjectMissing):
    """The multipart upload no longer exists (completed, aborted or collected)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int
    etag: str
    modified: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class UploadInfo:
    name: str
    upload_id: str
    initiated: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str
    size: int


class Target(Protocol):
    """A flat namespace of immutable-once-written objects with user metadata."""

    url: str
    # Smallest part a multipart upload accepts (all but the last part).
    min_part_bytes: int
    # The S3 bucket and the endpoint it is reached at (None: a local directory; endpoint None:
    # the SDK's default, AWS). ``serve`` uses them to leave its own log bucket unfollowed.
    bucket: str | None
    endpoint: str | None

    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        """Store ``data`` under ``name`` in one request (replaces an existing object)."""
        ...

    def create_multipart(self, name: str, *, metadata: Mapping[str, str] | None = None) -> str:
        """Start a multipart upload; its id. Register its abort right after."""
        ...

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        """Upload part ``number`` (1-based; retrying a number replaces that part)."""
        ...

    def complete_multipart(self, name: str, upload_id: str, parts: Sequence[Part]) -> None:
        """Make the object visible. ``UploadMissing`` if the upload is gone."""
        ...

    def abort_multipart(self, name: str, upload_id: str) -> None:
        """Drop an upload and its parts (a missing upload is fine)."""
        ...

    def list_uploads(self, prefix: str = "") -> Iterator[UploadInfo]:
        """Unfinished multipart uploads whose name starts with ``prefix``."""
        ...

    def head(self, name: str) -> dict[str, str] | None:
        """The object's user metadata, or None if it does not exist."""
        ...

    def open(self, name: str) -> IO[bytes]:
        """A streaming reader of the object (close it). ``ObjectMissing`` if absent."""
        ...

    def get(self, name: str) -> bytes:
        ...

    def list(self, prefix: str = "", *, start_after: str = "", page: int = LIST_PAGE) -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix`` and sorts after ``start_after``, in name
        order (UTF-8 byte order), fetched in pages."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object (missing is fine)."""
        ...

    def remove_stale(self, *, older_than: float, now: float | None = None) -> int:
        """Remove what interrupted writes left behind (a directory's temporary files) that no
        live writer can still be using, judged by the writer's process and ``older_than``
        seconds of age; how many. Only the active collector calls it (never a standby or a
        reader of the logs)."""
        ...

    def close(self) -> None:
        ...


def gc_uploads(target: Target, prefix: str, *, older_than: float, now: float | None = None) -> int:
    """Abort the multipart uploads under ``prefix`` started more than ``older_than`` seconds ago:
    the collector's own abandoned uploads (a crash or a lost lease between create and complete).
    Returns how many were aborted."""
    limit = (time.time() if now is None else now) - older_than
    aborted = 0
    for up in list(target.list_uploads(prefix)):
        if up.initiated < limit:
            logger.info("aborting abandoned multipart upload %s of %s", up.upload_id, up.name)
            target.abort_multipart(up.name, up.upload_id)
            aborted += 1
    return aborted


# --- S3 ---------------------------------------------------------------------------------------

def _s3_error(ex: Exception, what: str) -> ChangelogError:
    """Translate a botocore error (raise the result ``from ex``); a vanished upload is
    ``UploadMissing``."""
    r = refusal(ex)
    if r is not None and r.code == "NoSuchUpload":
        return UploadMissing(f"{what}: {r}")
    return translate_error(ex, what)


class S3Target:
    """An S3 (or radosgw) bucket, optionally under a key prefix, through ``client`` (made by
    ``make_target`` from the options, or the caller's). ``endpoint`` only names where the bucket
    is (``Target.endpoint``)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client,
        endpoint: str | None = None,
        min_part_bytes: int = S3_MIN_PART,
    ) -> None:
        if not bucket:
            raise ConfigError("target: S3 bucket name is empty")
        self.bucket: str | None = bucket
        self._bucket = bucket  # the same, never None
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.min_part_bytes = min_part_bytes
        self.endpoint = endpoint
        self._s3 = client

    def __repr__(self) -> str:  # no credentials, ever
        return f"S3Target({self.url!r}, endpoint={self.endpoint!r})"

    def _key(self, name: str) -> str:
        if not name or name.startswith("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.prefix + name

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return s3_call(f"{what} {self.url}", fn, _s3_error)

    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        key, meta = self._key(name), dict(metadata or {})
        self._call(f"PUT {name}", lambda: self._s3.put_object(Bucket=self._bucket, Key=key, Body=data, Metadata=meta))

    def create_multipart(self, name: str, *, metadata: Mapping[str, str] | None = None) -> str:
        key, meta = self._key(name), dict(metadata or {})
        resp = self._call(
            f"create multipart {name}",
            lambda: self._s3.create_multipart_upload(Bucket=self._bucket, Key=key, Metadata=meta),
        )
        return resp["UploadId"]

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        key = self._key(name)
        resp = self._call(
            f"upload part {number} of {name}",
            lambda: self._s3.upload_part(Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data),
        )
        return Part(number, resp["ETag"], len(data))

    def complete_multipart(self, name: str, upload_id: str, parts: Sequence[Part]) -> None:
        key = self._key(name)
        done: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]}
        # The response's ETag is not used: radosgw 16.2.15 returns an empty one here.
        self._call(
            f"complete multipart {name}",
            lambda: self._s3.complete_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload=done),
        )

    def abort_multipart(self, name: str, upload_id: str) -> None:
        key = self._key(name)
        try:
            self._call(
                f"abort multipart {name}",
                lambda: self._s3.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id),
            )
        except UploadMissing:
            pass

    def list_uploads(self, prefix: str = "") -> Iterator[UploadInfo]:
        key_marker = upload_marker = ""
        while True:
            req: ListMultipartUploadsRequestTypeDef = {
                "Bucket": self._bucket, "Prefix": self.prefix + prefix, "MaxUploads": LIST_PAGE
            }
            if key_marker:
                req["KeyMarker"] = key_marker
                req["UploadIdMarker"] = upload_marker
            resp = self._call(f"list uploads {prefix}", partial(self._s3.list_multipart_uploads, **req))
            for up in resp.get("Uploads", []):
                yield UploadInfo(up["Key"][len(self.prefix) :], up["UploadId"], up["Initiated"].timestamp())
            if not resp.get("IsTruncated"):
                return
            key_marker = resp.get("NextKeyMarker", "")
            upload_marker = resp.get("NextUploadIdMarker", "")
            if not key_marker:
                return

    def head(self, name: str) -> dict[str, str] | None:
        key = self._key(name)
        try:
            resp = self._call(f"HEAD {name}", lambda: self._s3.head_object(Bucket=self._bucket, Key=key))
        except ObjectMissing:
            return None
        return dict(resp.get("Metadata", {}))

    def open(self, name: str) -> IO[bytes]:
        key = self._key(name)
        resp = self._call(f"GET {name}", lambda: self._s3.get_object(Bucket=self._bucket, Key=key))
        return io.BufferedReader(TranslatedBody(resp["Body"], f"GET {name}", _s3_error), buffer_size=256 * 1024)

    def get(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def list(self, prefix: str = "", *, start_after: str = "", page: int = LIST_PAGE) -> Iterator[ObjectInfo]:
        token = ""
        while True:
            req: ListObjectsV2RequestTypeDef = {"Bucket": self._bucket, "Prefix": self.prefix + prefix, "MaxKeys": page}
            if token:
                req["ContinuationToken"] = token
            elif start_after:
                req["StartAfter"] = self.prefix + start_after
            resp = self._call(f"list {prefix}", partial(self._s3.list_objects_v2, **req))
            for obj in resp.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][len(self.prefix) :],
                    int(obj.get("Size", 0)),
                    str(obj.get("ETag", "")).strip('"'),
                    obj["LastModified"].timestamp(),
                )
            token = resp.get("NextContinuationToken", "")
            if not resp.get("IsTruncated") or not token:
                return

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._call(f"DELETE {name}", lambda: self._s3.delete_object(Bucket=self._bucket, Key=key))

    def remove_stale(self, *, older_than: float, now: float | None = None) -> int:
        # An S3 write leaves nothing half-made but multipart uploads, which ``gc_uploads`` aborts.
        return 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._s3.close()


# --- local directory ----------------------------------------------------------------------------

# Bookkeeping lives in dot-directories under the root, never listed as objects.
_META_DIR = ".meta"
_TMP_DIR = ".tmp"
_UPLOADS_DIR = ".uploads"
_COPY_CHUNK = MiB


class _UploadDoc(TypedDict):
    """A directory target's multipart upload, ``.uploads/<id>/info.json``."""

    name: str
    initiated: float  # epoch seconds
    metadata: dict[str, str]


# A name that collides with a directory ("a" beside "a/b", which S3 allows) or is too long:
# retrying the same name will not help.
_NAME_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


def _os_error(ex: OSError, what: str) -> ChangelogError:
    """A filesystem error by cause. Everything an operator fixes on the filesystem while the
    process runs is transient: a read-only remount (EROFS), permissions (EACCES, EPERM), a full
    disk or quota (ENOSPC, EDQUOT), a failing device (EIO), a stale NFS handle. Only a name
    that cannot exist in a directory tree is permanent."""
    if ex.errno in _NAME_ERRNOS:
        return PermanentError(f"{what}: {ex}")
    return TransientError(f"{what}: {ex}")


class DirectoryTarget:
    """Objects as files under a root directory. A file appears whole or not at all: written to
    a temporary file, fsynced, renamed into place, and the directory fsynced. Metadata lives in
    ``.meta/<name>.json`` written before the data file, so a visible object has its metadata.
    Multipart parts are separate files (a retried part replaces its file); complete
    concatenates them into a temporary file and renames it."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri() + "/"
        self.min_part_bytes = 1
        self.bucket: str | None = None
        self.endpoint: str | None = None
        self._fsync = fsync
        self._owner = tmp_owner()
        # Our own temporary files a failed write could not remove (the filesystem was read-only).
        self._leftovers: set[Path] = set()
        self._leftovers_lock = threading.Lock()
        # Found at start-up, this is a configuration error: the process stops and says why. An
        # existing tree on a filesystem turned read-only passes (mkdir of an existing directory
        # is fine): writes then fail transiently until it is writable again.
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            elif not self.root.is_dir():
                raise ConfigError(f"target directory {self.root} does not exist")
            for d in (_META_DIR, _TMP_DIR, _UPLOADS_DIR):
                (self.root / d).mkdir(exist_ok=True)
        except OSError as ex:
            raise ConfigError(f"target directory {self.root} cannot be used: {ex}") from ex

    def __repr__(self) -> str:
        return f"DirectoryTarget({str(self.root)!r})"

    # -- helpers

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts) or parts[0].startswith("."):
            raise ValueError(f"bad object name {name!r}")
        return self.root.joinpath(*parts)

    def _meta_path(self, name: str) -> Path:
        return self.root / _META_DIR / (name + ".json")

    def _tmp(self) -> Path:
        if self._leftovers:
            self._retry_leftovers()
        return self.root / _TMP_DIR / f"{uuid.uuid4().hex}.{self._owner}"

    def _discard(self, tmp: Path) -> None:
        """Remove a temporary file a failed write leaves (a full disk leaves an empty one). On a
        read-only filesystem that fails too: the next write, once one can start, removes it."""
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            with self._leftovers_lock:
                self._leftovers.add(tmp)

    def _retry_leftovers(self) -> None:
        with self._leftovers_lock:
            for tmp in list(self._leftovers):
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    continue
                self._leftovers.discard(tmp)

    def _sync_dir(self, d: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_file(self, data_chunks: Iterator[bytes] | Sequence[bytes]) -> Path:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                for chunk in data_chunks:
                    f.write(chunk)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
        except BaseException:
            self._discard(tmp)
            raise
        return tmp

    def _place(self, tmp: Path, dest: Path, *, part: bool = False) -> None:
        """Rename ``tmp`` to ``dest`` (the temporary file is removed if that fails). A ``part``
        goes into its upload's directory as it is (an aborted upload's is not made again) and
        is not synced: ``complete`` syncs what it builds from the parts."""
        try:
            if not part:
                dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        except BaseException:
            self._discard(tmp)
            raise
        if not part:
            self._sync_dir(dest.parent)

    def _commit(self, name: str, tmp: Path, metadata: Mapping[str, str] | None) -> None:
        try:
            meta_tmp = self._write_file([orjson.dumps(dict(metadata or {}))])
            self._place(meta_tmp, self._meta_path(name))
        except BaseException:
            self._discard(tmp)
            raise
        self._place(tmp, self._path(name))

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ChangelogError:
            raise
        except FileNotFoundError as ex:
            raise ObjectMissing(f"{what}: {ex}") from ex
        except OSError as ex:
            raise _os_error(ex, what) from ex

    # -- objects

    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        self._path(name)

        def run() -> None:
            tmp = self._write_file([data])
            self._commit(name, tmp, metadata)

        self._guard(f"write {name}", run)

    def head(self, name: str) -> dict[str, str] | None:
        path = self._path(name)

        def run() -> dict[str, str] | None:
            if not path.is_file():
                return None
            try:
                meta: dict[str, str] = orjson.loads(self._meta_path(name).read_bytes())
            except FileNotFoundError:
                meta = {}
            return meta

        return self._guard(f"stat {name}", run)

    def open(self, name: str) -> IO[bytes]:
        path = self._path(name)
        return self._guard(f"read {name}", lambda: open(path, "rb"))

    def get(self, name: str) -> bytes:
        path = self._path(name)
        return self._guard(f"read {name}", path.read_bytes)

    def delete(self, name: str) -> None:
        path = self._path(name)

        def run() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(name).unlink()

        self._guard(f"delete {name}", run)

    def list(self, prefix: str = "", *, start_after: str = "", page: int = LIST_PAGE) -> Iterator[ObjectInfo]:
        """Walks the tree in name order, pruning directories wholly before ``start_after`` or
        outside ``prefix``; never holds more than one directory listing per level."""

        def walk(d: Path, rel: str) -> Iterator[ObjectInfo]:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                return
            # A directory "a" holds names "a/...": sort it as "a/" so that "a-b" < "a/x" as in S3.
            keyed = []
            for e in entries:
                if not rel and e.name.startswith("."):
                    continue
                is_dir = e.is_dir(follow_symlinks=False)
                keyed.append(((rel + e.name + ("/" if is_dir else "")).encode(), e, is_dir))
            keyed.sort(key=lambda x: x[0])
            for key_b, e, is_dir in keyed:
                key = key_b.decode()
                if is_dir:
                    # Skip a subtree that cannot hold a name > start_after or with the prefix.
                    if start_after and key < start_after and not start_after.startswith(key):
                        continue
                    if not (key.startswith(prefix) or prefix.startswith(key)):
                        continue
                    yield from walk(Path(e.path), key)
                else:
                    if not key.startswith(prefix) or key <= start_after:
                        continue
                    st = e.stat(follow_symlinks=False)
                    yield ObjectInfo(key, st.st_size, "", st.st_mtime)

        it = walk(self.root, "")
        while True:
            try:
                info = self._guard(f"list {prefix}", lambda: next(it, None))
            except ChangelogError:
                raise
            if info is None:
                return
            yield info

    # -- multipart

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id or "/" in upload_id or upload_id.startswith("."):
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.root / _UPLOADS_DIR / upload_id

    def _upload_info(self, name: str, upload_id: str) -> _UploadDoc:
        try:
            info: _UploadDoc = orjson.loads((self._upload_dir(upload_id) / "info.json").read_bytes())
        except FileNotFoundError as ex:
            raise UploadMissing(f"no upload {upload_id} of {name}") from ex
        if info.get("name") != name:
            raise UploadMissing(f"upload {upload_id} is not an upload of {name}")
        return info

    def create_multipart(self, name: str, *, metadata: Mapping[str, str] | None = None) -> str:
        self._path(name)
        upload_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"

        def run() -> str:
            d = self._upload_dir(upload_id)
            d.mkdir()
            doc: _UploadDoc = {"name": name, "initiated": time.time(), "metadata": dict(metadata or {})}
            try:
                self._place(self._write_file([orjson.dumps(doc)]), d / "info.json")
            except BaseException:
                # Without its info.json, no listing would ever show (and GC remove) this upload.
                shutil.rmtree(d, ignore_errors=True)
                raise
            return upload_id

        return self._guard(f"create upload {name}", run)

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        if not 1 <= number <= 10000:
            raise PermanentError(f"part number {number} out of range 1..10000")

        def run() -> Part:
            self._upload_info(name, upload_id)
            tmp = self._write_file([data])
            self._place(tmp, self._upload_dir(upload_id) / f"part.{number:05d}", part=True)
            return Part(number, hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data))

        return self._guard(f"upload part {number} of {name}", run)

    def complete_multipart(self, name: str, upload_id: str, parts: Sequence[Part]) -> None:
        def chunks(paths: list[Path]) -> Iterator[bytes]:
            for p in paths:
                with open(p, "rb") as f:
                    while chunk := f.read(_COPY_CHUNK):
                        yield chunk

        def run() -> None:
            info = self._upload_info(name, upload_id)
            d = self._upload_dir(upload_id)
            numbers = [p.number for p in parts]
            if numbers != sorted(set(numbers)):
                raise PermanentError(f"complete {name}: parts must be in ascending order without repeats")
            paths = [d / f"part.{n:05d}" for n in numbers]
            for p, part in zip(paths, parts, strict=True):
                if not p.is_file() or p.stat().st_size != part.size:
                    raise PermanentError(f"complete {name}: part {part.number} missing or of another size")
            tmp = self._write_file(chunks(paths))
            self._commit(name, tmp, info.get("metadata"))
            shutil.rmtree(d, ignore_errors=True)

        self._guard(f"complete upload {name}", run)

    def remove_stale(self, *, older_than: float, now: float | None = None) -> int:
        """Remove the temporary files interrupted writes left in ``.tmp``: those of a process
        of this host that no longer exists, and any file untouched for ``older_than`` seconds
        (a live writer touches its file as it writes, then renames it at once). Never a live
        writer's file younger than that, whoever wrote it. Returns how many were removed."""
        limit = (time.time() if now is None else now) - older_than
        here = self._owner.split(".", 1)[1]
        removed = 0

        def run() -> None:
            nonlocal removed
            for e in os.scandir(self.root / _TMP_DIR):
                writer = tmp_writer(e.name)
                dead = writer is not None and writer[1] == here and writer[0] != os.getpid() and pid_gone(writer[0])
                try:
                    if dead or e.stat(follow_symlinks=False).st_mtime < limit:
                        os.unlink(e.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # renamed into place meanwhile

        self._guard("remove stale temporary files", run)
        if removed:
            logger.info("%s: removed %d stale temporary files", self.url, removed)
        return removed

    def abort_multipart(self, name: str, upload_id: str) -> None:
        def run() -> None:
            try:
                self._upload_info(name, upload_id)
            except UploadMissing:
                return
            shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

        self._guard(f"abort upload {name}", run)

    def list_uploads(self, prefix: str = "") -> Iterator[UploadInfo]:
        def run() -> list[UploadInfo]:
            out = []
            for e in sorted(os.scandir(self.root / _UPLOADS_DIR), key=lambda e: e.name):
                try:
                    info = orjson.loads(Path(e.path, "info.json").read_bytes())
                except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
                    continue
                if str(info.get("name", "")).startswith(prefix):
                    out.append(UploadInfo(info["name"], e.name, float(info["initiated"])))
            return sorted(out, key=lambda u: (u.name, u.initiated))

        yield from self._guard(f"list uploads {prefix}", run)

    def close(self) -> None:
        pass


# --- factory ----------------------------------------------------------------------------------


class TargetOptions(TypedDict, total=False):
    """``make_target``'s options; None (or absent) leaves the library default. ``fsync`` and
    ``create`` are a directory's, the rest an S3 bucket's; ``compression`` is the collector's
    and ignored here."""

    client: S3Client | None
    endpoint: str | None
    region: str | None
    addressing_style: AddressingStyle | None
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    verify: bool | str | None
    connect_timeout: float | None
    read_timeout: float | None
    max_attempts: int | None
    min_part_bytes: int | None
    fsync: bool | None
    create: bool | None
    compression: str | None


# The S3 options a target URL's query string may carry (not the secrets).
_S3_QUERY = ("endpoint", "region", "addressing_style", "connect_timeout", "read_timeout", "max_attempts",
             "min_part_bytes", "verify")
_STYLES: dict[str, AddressingStyle] = {"auto": "auto", "path": "path", "virtual": "virtual"}

V = TypeVar("V")


def _given(value: V | None, text: str | None, parse: Callable[[str], V], default: V) -> V:
    """An option: the keyword's value, else the URL query's (parsed), else the default."""
    if value is not None:
        return value
    return default if text is None else parse(text)


def _style(text: str) -> AddressingStyle:
    if text not in _STYLES:
        raise ConfigError(f"target.addressing_style must be auto, path or virtual, not {text!r}")
    return _STYLES[text]


def _s3_target(url: str, opts: TargetOptions) -> S3Target:
    """``make_target`` of an ``s3://`` URL: keyword options win over the URL's query string."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ConfigError(f"target URL {url!r} has no bucket: s3://bucket/prefix/")
    q = dict(parse_qsl(parts.query))
    for k in q:
        if k not in _S3_QUERY:
            raise ConfigError(f"target URL option {k!r} is not one of {sorted(_S3_QUERY)}")
    endpoint = _given(opts.get("endpoint"), q.get("endpoint"), str, None)
    style = _style(opts.get("addressing_style") or q.get("addressing_style") or "auto")
    client = opts.get("client") or make_s3_client(
        endpoint,
        access_key=opts.get("access_key"),
        secret_key=opts.get("secret_key"),
        session_token=opts.get("session_token"),
        region=_given(opts.get("region"), q.get("region"), str, None),
        addressing_style=style,
        verify=_given(opts.get("verify"), q.get("verify"), str, None),
        max_attempts=_given(opts.get("max_attempts"), q.get("max_attempts"), int, MAX_ATTEMPTS),
        connect_timeout=_given(opts.get("connect_timeout"), q.get("connect_timeout"), float, CONNECT_TIMEOUT),
        read_timeout=_given(opts.get("read_timeout"), q.get("read_timeout"), float, READ_TIMEOUT),
    )
    min_part = _given(opts.get("min_part_bytes"), q.get("min_part_bytes"), int, S3_MIN_PART)
    return S3Target(parts.netloc, unquote(parts.path), client=client, endpoint=endpoint, min_part_bytes=min_part)


def make_target(url: str, **opts: Unpack[TargetOptions]) -> Target:
    """A target from a URL: ``s3://bucket/prefix/`` or ``file:///dir/``.

    S3 options (``TargetOptions``) come as keywords, or in the URL's query string for the
    non-secret ones (``_S3_QUERY``); ``None`` values are dropped (library defaults apply).
    """
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return _s3_target(url, opts)
    if scheme == "file":
        # "file:///abs/dir/", "file://localhost/abs/dir/", or relative "file://./dir/".
        path = unquote(url[len("file://") :].split("?", 1)[0])
        if path.startswith("localhost/"):
            path = path[len("localhost") :]
        if not path:
            raise ConfigError(f"target URL {url!r} names no directory")
        fsync, create = opts.get("fsync"), opts.get("create")
        return DirectoryTarget(path, fsync=True if fsync is None else fsync, create=True if create is None else create)
    raise ConfigError(f"target URL must start with s3:// or file://, not {url!r}")
