"""radosgw's bucket logging in **Journal** mode (new in Tentacle, Ceph 20.2), the peer of the
``journal`` figure (``tools/bench/journal.py``): turning it on for a bucket (boto3's model knows
neither ``LoggingType`` nor ``ObjectRollTime``, so Ceph's XML is swapped in before signing), the
log bucket's policy that lets the logging service write, flushing, and reading the Journal's
records back as the ledger's ``Change``."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tools.bench.common import Bench, radosgw_admin
from tools.bench.journal_ledger import Change, norm_etag, norm_version

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

LOGGING_PRINCIPAL = "logging.s3.amazonaws.com"
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
JOURNAL_WRITE_OPS = {"REST.PUT.OBJECT", "REST.POST.UPLOAD"}
JOURNAL_DELETE_OPS = {"REST.DELETE.OBJECT", "REST.POST.DELETE_MULTI_OBJECT"}


def journal_xml(target: str, prefix: str, roll: int | None) -> bytes:
    """A PutBucketLogging body with Ceph's extensions (LoggingType, ObjectRollTime: boto3's
    model does not know them)."""
    roll_xml = f"<ObjectRollTime>{roll}</ObjectRollTime>" if roll is not None else ""
    return (
        f'<BucketLoggingStatus xmlns="{S3_XMLNS}"><LoggingEnabled>'
        f"<TargetBucket>{target}</TargetBucket><TargetPrefix>{prefix}</TargetPrefix>"
        f"<LoggingType>Journal</LoggingType>{roll_xml}"
        "<TargetObjectKeyFormat><SimplePrefix/></TargetObjectKeyFormat>"
        "</LoggingEnabled></BucketLoggingStatus>"
    ).encode()


class BucketLogging:
    """Configures bucket logging: boto3's PutBucketLogging with its body swapped for Ceph's XML
    just before signing (so the request is signed over what is sent)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.s3 = bench.s3()
        self._body: bytes | None = None
        self.s3.meta.events.register("before-sign.s3.PutBucketLogging", self._swap)

    def _swap(self, request: Any, **_: Any) -> None:
        body = self._body
        if body is None:
            return
        request.data = body
        for name in list(request.headers.keys()):
            if name.lower().startswith("x-amz-checksum-") or name.lower() in (
                "x-amz-sdk-checksum-algorithm",
                "content-md5",
                "content-length",
            ):
                del request.headers[name]
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        request.headers["Content-Length"] = str(len(body))

    def journal(self, src: str, target: str, roll: int | None) -> dict[str, Any]:
        """Journal-mode logging of ``src`` into ``target`` under ``<src>/`` (``roll`` None: the
        default ObjectRollTime); the configuration radosgw reports back."""
        self._body = journal_xml(target, f"{src}/", roll)
        try:
            self.s3.put_bucket_logging(
                Bucket=src, BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": target, "TargetPrefix": f"{src}/"}}
            )
        finally:
            self._body = None
        info = json.loads(radosgw_admin(self.bench.lab, "bucket", "logging", "info", "--bucket", src))
        conf = info.get("bucketLoggingStatus", {}).get("loggingEnabled", {})
        if conf.get("loggingType") != "Journal":
            raise RuntimeError(f"bucket logging of {src} is not in Journal mode after PutBucketLogging: {info}")
        return dict(conf)

    def disable(self, src: str) -> None:
        self.s3.put_bucket_logging(Bucket=src, BucketLoggingStatus={})

    def flush(self, src: str, timeout: float = 90.0) -> float:
        """``radosgw-admin bucket logging flush`` (commit the pending log object now), then until
        no log object of ``src`` waits for its commit: seconds taken."""
        t0 = time.monotonic()
        radosgw_admin(self.bench.lab, "bucket", "logging", "flush", "--bucket", src)
        while True:
            out = radosgw_admin(self.bench.lab, "bucket", "logging", "list", "--bucket", src).strip()
            try:
                pending = json.loads(out) if out else []
            except ValueError:
                pending = [out]
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"bucket logging of {src}: still pending after {timeout:.0f}s: {pending}")
            time.sleep(0.5)


@dataclass(frozen=True, slots=True)
class JournalLine:
    bucket: str
    key: str
    op: str
    version: str | None
    etag: str | None


def parse_journal(text: str) -> list[JournalLine]:
    """Journal records: ``owner bucket [dd/Mon/yyyy:hh:mm:ss +zzzz] op key size version etag``,
    space separated, the key unquoted (it may hold spaces: it is what lies between the op and
    the last three fields); a dash for an empty field."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        t = line.split(" ")
        if len(t) < 9 or not t[2].startswith("[") or not t[3].endswith("]"):
            raise ValueError(f"not a Journal record: {line!r}")
        out.append(JournalLine(t[1], " ".join(t[5:-3]), t[4], norm_version(t[-2]), norm_etag(t[-1])))
    return out


def journal_change(line: JournalLine, versioned: set[str]) -> Change:
    if line.op in JOURNAL_WRITE_OPS:
        kind = "write"
    elif line.op in JOURNAL_DELETE_OPS:
        # A versioned bucket's DELETE without a version id creates a delete marker.
        kind = "delete" if line.version is not None or line.bucket not in versioned else "delete_marker"
    else:
        kind = line.op  # an op the workload never sends: a phantom
    return Change(line.bucket, line.key, kind, line.version, line.etag)


def read_journal(s3: S3Client, log_bucket: str, prefix: str, seen: set[str] | None = None) -> list[tuple[str, JournalLine]]:
    """The records of the Journal's committed log objects under ``prefix`` (those not in
    ``seen``, which is updated): (object name, line)."""
    out: list[tuple[str, JournalLine]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=log_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"]
            if seen is not None:
                if name in seen:
                    continue
                seen.add(name)
            text = s3.get_object(Bucket=log_bucket, Key=name)["Body"].read().decode("utf-8", "replace")
            out.extend((name, line) for line in parse_journal(text))
    return out


def allow_logging(s3: S3Client, log_bucket: str) -> None:
    """The log bucket's policy that lets the logging service principal PUT its log objects."""
    s3.put_bucket_policy(
        Bucket=log_bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "BenchJournal",
                        "Effect": "Allow",
                        "Principal": {"Service": LOGGING_PRINCIPAL},
                        "Action": "s3:PutObject",
                        "Resource": f"arn:aws:s3:::{log_bucket}/*",
                    }
                ],
            }
        ),
    )
