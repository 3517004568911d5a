"""Helpers for the backup tests (no tests here): change-log objects written by hand in the exact
format of docs/design.md §7 (so the tests do not depend on the collector), a driver that mutates
a source S3 and records what it did, and a target that counts its writes."""

from __future__ import annotations

import gzip
import hashlib
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from changelog.pipeline.targets import ObjectInfo, Part, Target, UploadInfo


def rfc3339(t_us: int) -> str:
    sec, us = divmod(t_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{us:06d}Z"


class LogWriter:
    """Writes change-log objects ``YYYY/MM/DD/HH/<cutoff>-<seq>.jsonl[.gz|.zst]`` and the
    watermark ``_watermark.json`` into a target, as the collector would."""

    def __init__(self, target: Target, *, prefix: str = "") -> None:
        self.target = target
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.seq = 0
        self.last_cutoff = 0
        self.last_object: str | None = None

    def write(self, lines: Sequence[Mapping[str, Any]], *, compression: str = "none") -> str:
        cutoff = max(int(time.time() * 1_000_000), self.last_cutoff + 1)
        self.last_cutoff = cutoff
        self.seq += 1
        sec, us = divmod(cutoff, 1_000_000)
        ext = {"none": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}[compression]
        name = (
            self.prefix
            + time.strftime("%Y/%m/%d/%H/", time.gmtime(sec))
            + time.strftime("%Y%m%dT%H%M%S", time.gmtime(sec))
            + f".{us:06d}Z-{self.seq:010d}{ext}"
        )
        body = b"".join(orjson.dumps(dict(line)) + b"\n" for line in lines)
        if compression == "gzip":
            body = gzip.compress(body, mtime=0)
        elif compression == "zstd":
            body = zstandard.ZstdCompressor().compress(body)
        times = [line["recorded"] for line in lines] or [rfc3339(cutoff)]
        meta = {"cutoff": rfc3339(cutoff), "entries": str(len(lines)), "first-time": min(times), "last-time": max(times)}
        self.target.put(name, body, metadata=meta)
        self.last_object = name
        return name

    def watermark(self, complete_until_us: int | None = None) -> None:
        until = self.last_cutoff if complete_until_us is None else complete_until_us
        now = int(time.time() * 1_000_000)
        doc = {
            "complete_until": rfc3339(until),
            "complete_until_us": until,
            "last_object": self.last_object,
            "updated": rfc3339(now),
        }
        self.target.put(f"{self.prefix}_watermark.json", orjson.dumps(doc) + b"\n")


class Zone:
    """Mutates buckets through an S3 client and keeps the change-log records of what it did;
    ``commit`` writes them as one log object and moves the watermark."""

    def __init__(self, s3: Any, logs: Target, *, prefix: str = "") -> None:
        self.s3 = s3
        self.writer = LogWriter(logs, prefix=prefix)
        self.pending: list[dict[str, Any]] = []
        self.n = 0

    def record(
        self,
        bucket: str,
        key: str,
        op: str,
        *,
        version_id: str | None = None,
        size: int | None = None,
        etag: str | None = None,
        baseline: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.n += 1
        t = int(time.time() * 1_000_000)
        rec: dict[str, Any] = {
            "id": hashlib.blake2b(f"test\n{self.n:012d}".encode(), digest_size=16).hexdigest(),
            "time": rfc3339(t),
            "bucket": bucket,
            "key": key,
            "version_id": version_id,
            "op": op,
            "size": size,
            "etag": etag,
            "seq": f"{self.n:016d}",
            "baseline": baseline,
            "recorded": rfc3339(t),
        }
        if metadata:
            rec["metadata"] = dict(sorted(metadata.items()))
        return rec

    def create_bucket(self, name: str, *, versioned: bool = False) -> None:
        self.s3.create_bucket(Bucket=name)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        log: bool = True,
        with_etag: bool = True,
    ) -> dict[str, Any]:
        """``with_etag=False``: the record carries neither size nor ETag (as the RGW follower
        writes it when it could not look them up)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "Metadata": dict(metadata or {})}
        if content_type:
            kwargs["ContentType"] = content_type
        resp = self.s3.put_object(**kwargs)
        rec = self.record(
            bucket,
            key,
            "write",
            version_id=resp.get("VersionId"),
            size=len(body) if with_etag else None,
            etag=resp["ETag"].strip('"') if with_etag else None,
        )
        if log:
            self.pending.append(rec)
        return rec

    def delete(self, bucket: str, key: str, *, log: bool = True) -> dict[str, Any]:
        resp = self.s3.delete_object(Bucket=bucket, Key=key)
        if resp.get("DeleteMarker"):
            rec = self.record(bucket, key, "delete_marker", version_id=resp.get("VersionId"))
        else:
            rec = self.record(bucket, key, "delete")
        if log:
            self.pending.append(rec)
        return rec

    def delete_version(self, bucket: str, key: str, version_id: str, *, log: bool = True) -> dict[str, Any]:
        self.s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
        rec = self.record(bucket, key, "delete", version_id=version_id)
        if log:
            self.pending.append(rec)
        return rec

    def baseline(self, bucket: str) -> None:
        """Full-sync records of the bucket's current objects (what the RGW follower writes)."""
        for key, vid, size, etag in current_objects(self.s3, bucket):
            self.pending.append(self.record(bucket, key, "write", version_id=vid, size=size, etag=etag, baseline=True))

    def commit(self, *, compression: str = "none", complete_until_us: int | None = None) -> str:
        # moto lists LastModified in whole seconds (as AWS and Tentacle do): a record is told
        # from a later write of its second only once the watermark covers that second, as on the
        # lab after the collector's next pass.
        if complete_until_us is None and self.pending:
            time.sleep(1.0 - time.time() % 1.0 + 0.01)
        name = self.writer.write(self.pending, compression=compression)
        self.pending = []
        self.writer.watermark(complete_until_us)
        return name

    def versions(self, bucket: str, key: str) -> list[str]:
        """Version ids of ``key``, newest first (objects only)."""
        resp = self.s3.list_object_versions(Bucket=bucket, Prefix=key)
        rows = [v for v in resp.get("Versions", []) if v["Key"] == key]
        rows.sort(key=lambda v: (not v["IsLatest"], -v["LastModified"].timestamp()))
        return [v["VersionId"] for v in rows]

    def markers(self, bucket: str, key: str) -> list[str]:
        resp = self.s3.list_object_versions(Bucket=bucket, Prefix=key)
        return [m["VersionId"] for m in resp.get("DeleteMarkers", []) if m["Key"] == key]


def current_objects(s3: Any, bucket: str) -> Iterator[tuple[str, str | None, int, str]]:
    versioned = s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            vid = None
            if versioned:
                vid = s3.head_object(Bucket=bucket, Key=o["Key"]).get("VersionId")
            yield o["Key"], vid, int(o["Size"]), o["ETag"].strip('"')


def bucket_state(s3: Any, bucket: str) -> dict[str, tuple[bytes, dict[str, str], str | None]]:
    """key -> (content, user metadata, content type) of every current object."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            resp = s3.get_object(Bucket=bucket, Key=o["Key"])
            out[o["Key"]] = (resp["Body"].read(), dict(resp.get("Metadata", {})), resp.get("ContentType"))
    return out


class CountingTarget:
    """A ``Target`` that counts the writes of each object name (PUTs and multipart creates)."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.url = inner.url
        self.min_part_bytes = inner.min_part_bytes
        self.puts: Counter[str] = Counter()

    def blob_puts(self) -> Counter[str]:
        return Counter({k: v for k, v in self.puts.items() if k.startswith("blobs/")})

    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        self.puts[name] += 1
        self.inner.put(name, data, metadata=metadata)

    def create_multipart(self, name: str, *, metadata: Mapping[str, str] | None = None) -> str:
        self.puts[name] += 1
        return self.inner.create_multipart(name, metadata=metadata)

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        return self.inner.upload_part(name, upload_id, number, data)

    def complete_multipart(self, name: str, upload_id: str, parts: Sequence[Part]) -> None:
        self.inner.complete_multipart(name, upload_id, parts)

    def abort_multipart(self, name: str, upload_id: str) -> None:
        self.inner.abort_multipart(name, upload_id)

    def list_uploads(self, prefix: str = "") -> Iterator[UploadInfo]:
        return self.inner.list_uploads(prefix)

    def head(self, name: str) -> dict[str, str] | None:
        return self.inner.head(name)

    def open(self, name: str) -> IO[bytes]:
        return self.inner.open(name)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def list(self, prefix: str = "", *, start_after: str = "", page: int = 1000) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after=start_after, page=page)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()


def blob_writes(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(sent, completed) blob writes per name, from a count file of ``sent NAME`` / ``done NAME``
    lines written on the wire by a backup process."""
    sent: Counter[str] = Counter()
    done: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            what, name = line.split(" ", 1)
            if "/blobs/" in name:
                (sent if what == "sent" else done)[name] += 1
    return sent, done


def assert_stored_once(killed: Path, rerun: Path, *, blobs: int) -> None:
    """Across a killed backup process and its rerun, every blob was written, none twice: the
    rerun re-sends only a blob whose write was still in flight when the first one was killed."""
    k_sent, k_done = blob_writes(killed)
    r_sent, r_done = blob_writes(rerun)
    assert set(k_sent.values()) <= {1} and set(r_sent.values()) <= {1}, "a process wrote a blob twice"
    assert not set(k_done) & set(r_sent), "the rerun wrote again a blob the killed run had stored"
    assert set(k_sent) & set(r_sent) <= set(k_sent) - set(k_done)
    assert set((k_done + r_done).values()) <= {1}
    assert len(set(k_sent) | set(r_sent)) == blobs
