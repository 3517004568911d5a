"""The ``journal`` figure's workload (``tools/bench/journal.py``): per round, the timed PUTs and
the untimed mixed part (overwrites, copies, multipart uploads, DELETEs, multi-object deletes, a
unicode key, versions and delete markers, and requests that must leave no record: 412, 403, 404
and no-op deletes), each acknowledged mutation and each refused request written in a ``Ledger``."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from changelog.pipeline.s3client import make_s3_client
from tools.bench.common import S3_REGION, S3_TIMEOUT, Bench, say
from tools.bench.journal_ledger import Ledger

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

OBJECT_BYTES = 4096


@dataclass
class Buckets:
    """A configuration's pair of buckets."""

    plain: str
    versioned: str


class Workload:
    """One round of the mixed workload in a pair of buckets, its ground truth in a Ledger."""

    def __init__(self, bench: Bench, s3: S3Client, n: int) -> None:
        self.s3 = s3
        self.n = n
        self.m = max(4, n // 40)
        self.threads = bench.threads
        self.missing_bucket = bench.name("jmissing")  # never created
        lab = bench.lab
        # Signs with a wrong secret: its PUTs must be refused (403) and leave no record.
        self.denied = make_s3_client(
            lab.rgw_endpoint,
            access_key=lab.access_key,
            secret_key="wrong-" + lab.secret_key,
            region=S3_REGION,
            max_attempts=1,
            connect_timeout=S3_TIMEOUT,
            read_timeout=S3_TIMEOUT,
        )

    def puts(self, bucket: str, prefix: str, ledger: Ledger, n: int | None = None) -> float:
        """The timed part: ``n`` (default: the round's) PUTs of 4 KiB on ``threads`` threads; PUT/s."""
        n = self.n if n is None else n
        body = os.urandom(OBJECT_BYTES)
        s3 = self.s3

        def one(i: int) -> None:
            key = f"{prefix}/put/{i:07d}"
            r = s3.put_object(Bucket=bucket, Key=key, Body=body)
            ledger.add(bucket, key, "write", r.get("VersionId"), r["ETag"])

        t0 = time.monotonic()
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, range(n)))
        return n / (time.monotonic() - t0)

    def mixed(self, b: Buckets, p: str, ledger: Ledger) -> int:
        """The untimed part; how many requests it sent."""
        round_ = MixedRound(self, b, p, ledger)
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda f: f(), round_.tasks()))
        return sum(round_.sent.values())


class MixedRound:
    """The untimed part of one round in buckets ``b`` under prefix ``p``: its requests as tasks
    (run on the workload's threads), each writing what it did in ``ledger``, each counted in
    ``sent``. ``m`` sizes it: the round's PUTs are ``{p}/put/N``; the first ``m`` are
    overwritten, the next ``m/2`` copied, ``2m..3m`` deleted one by one, ``3m..4m`` by a
    multi-object delete, and PUTs ``If-None-Match: *`` go to the ones after ``4m``."""

    def __init__(self, workload: Workload, b: Buckets, p: str, ledger: Ledger) -> None:
        self.s3 = workload.s3
        self.denied = workload.denied
        self.missing_bucket = workload.missing_bucket
        self.m = workload.m
        self.u, self.v = b.plain, b.versioned
        self.p = p
        self.ledger = ledger
        self.sent = Counter[str]()
        self.quarter = max(1, self.m // 4)

    def tasks(self) -> list[Callable[[], None]]:
        m, p, u, v, quarter = self.m, self.p, self.u, self.v, self.quarter
        tasks: list[Callable[[], None]] = []
        tasks += [partial(self.overwrite, i) for i in range(m)]
        tasks += [partial(self.copy, i) for i in range(m, m + m // 2)]
        tasks += [partial(self.multipart, u, f"{p}/mp/{j}") for j in range(2)]
        tasks += [partial(self.delete, i) for i in range(2 * m, 3 * m)]
        tasks += [partial(self.delete_missing, j) for j in range(quarter)]
        tasks += [self.multi_delete, self.unicode]
        tasks += [
            partial(self.refused_put, self.s3, u, self.k(i), 412, "412 If-None-Match PUT", IfNoneMatch="*")
            for i in range(4 * m, 4 * m + max(2, m // 2))
        ]
        tasks += [
            partial(self.refused_put, self.denied, u, f"{p}/denied/{j}", 403, "403 wrong secret")
            for j in range(quarter)
        ]
        tasks += [
            partial(self.refused_put, self.s3, self.missing_bucket, f"{p}/nobucket/{j}", 404, "404 no such bucket")
            for j in range(quarter)
        ]
        tasks += [partial(self.versions, j) for j in range(max(2, m // 2))]
        tasks += [partial(self.versioned_refused, j) for j in range(quarter)]
        tasks += [self.versioned_multi_delete, partial(self.multipart, v, f"{p}/vmp/0")]
        return tasks

    def k(self, i: int) -> str:
        """The key of the round's ``i``-th timed PUT."""
        return f"{self.p}/put/{i:07d}"

    def put(self, bucket: str, key: str, **kw: Any) -> Any:
        self.sent["put"] += 1
        return self.s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(OBJECT_BYTES), **kw)

    # -- the plain bucket ---------------------------------------------------------------------

    def overwrite(self, i: int) -> None:
        r = self.put(self.u, self.k(i))
        self.ledger.add(self.u, self.k(i), "write", r.get("VersionId"), r["ETag"])

    def copy(self, i: int) -> None:
        u, dst = self.u, f"{self.p}/copy/{i:07d}"
        self.sent["copy"] += 1
        r = self.s3.copy_object(Bucket=u, Key=dst, CopySource={"Bucket": u, "Key": self.k(i)})
        self.ledger.add(u, dst, "write", r.get("VersionId"), r["CopyObjectResult"]["ETag"])

    def multipart(self, bucket: str, key: str) -> None:
        s3 = self.s3
        self.sent["multipart"] += 3
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=1, Body=os.urandom(OBJECT_BYTES))
        r = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        )
        self.ledger.add(bucket, key, "write", r.get("VersionId"), r["ETag"])

    def delete(self, i: int) -> None:
        self.sent["delete"] += 1
        self.s3.delete_object(Bucket=self.u, Key=self.k(i))
        self.ledger.add(self.u, self.k(i), "delete")

    def delete_missing(self, j: int) -> None:
        key = f"{self.p}/missing/{j}"
        self.sent["delete"] += 1
        self.s3.delete_object(Bucket=self.u, Key=key)
        self.ledger.refuse(self.u, key, "DELETE of a missing key (no-op)")

    def multi_delete(self) -> None:
        m, u = self.m, self.u
        present = [self.k(i) for i in range(3 * m, 4 * m)]
        absent = [f"{self.p}/missing-multi/{j}" for j in range(self.quarter)]
        self.sent["multi_delete"] += 1
        r = self.s3.delete_objects(Bucket=u, Delete={"Objects": [{"Key": x} for x in present + absent]})
        if r.get("Errors"):
            raise RuntimeError(f"multi-object delete: {r['Errors'][:3]}")
        for d in r.get("Deleted", []):
            if d["Key"] in present:
                self.ledger.add(u, d["Key"], "delete")
            else:
                self.ledger.refuse(u, d["Key"], "multi-object delete of a missing key (no-op)")

    def refused_put(self, client: Any, bucket: str, key: str, status: int, cause: str, **kw: Any) -> None:
        """A PUT that must be refused with HTTP ``status`` (and so leave no record)."""
        self.sent["refused"] += 1
        try:
            r = client.put_object(Bucket=bucket, Key=key, Body=os.urandom(OBJECT_BYTES), **kw)
        except ClientError as ex:
            got = ex.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if got != status:
                raise
            self.ledger.refuse(bucket, key, cause)
            return
        # Accepted after all: a mutation like any other (the ledger says what happened).
        say(f"journal: expected HTTP {status} ({cause}) for {bucket}/{key}, the PUT succeeded")
        self.ledger.add(bucket, key, "write", r.get("VersionId"), r["ETag"])

    def unicode(self) -> None:
        u = self.u
        keys = [f"{self.p}/ünï côdé/{j}" for j in range(2)]
        for key in keys:
            r = self.put(u, key)
            self.ledger.add(u, key, "write", r.get("VersionId"), r["ETag"])
        self.sent["delete"] += 1
        self.s3.delete_object(Bucket=u, Key=keys[0])
        self.ledger.add(u, keys[0], "delete")

    # -- the versioned bucket -----------------------------------------------------------------

    def versions(self, j: int) -> None:
        """Two versions, a delete marker, then the deletion of the first version."""
        v, key, ledger = self.v, f"{self.p}/v/{j}", self.ledger
        r1, r2 = self.put(v, key), self.put(v, key)
        ledger.add(v, key, "write", r1["VersionId"], r1["ETag"])
        ledger.add(v, key, "write", r2["VersionId"], r2["ETag"])
        self.sent["delete"] += 2
        dm = self.s3.delete_object(Bucket=v, Key=key)
        ledger.add(v, key, "delete_marker", dm["VersionId"])
        self.s3.delete_object(Bucket=v, Key=key, VersionId=r1["VersionId"])
        ledger.add(v, key, "delete", r1["VersionId"])

    def versioned_refused(self, j: int) -> None:
        v, key = self.v, f"{self.p}/vk/{j}"
        r = self.put(v, key)
        self.ledger.add(v, key, "write", r["VersionId"], r["ETag"])
        self.refused_put(self.s3, v, key, 412, "412 If-None-Match PUT (versioned bucket)", IfNoneMatch="*")

    def versioned_multi_delete(self) -> None:
        """A multi-object delete naming versions (deleted) for half the keys and plain keys
        (delete markers) for the other half."""
        v, ledger = self.v, self.ledger
        keys = [f"{self.p}/vm/{j}" for j in range(self.m)]
        vids = {}
        for key in keys:
            r = self.put(v, key)
            vids[key] = r["VersionId"]
            ledger.add(v, key, "write", r["VersionId"], r["ETag"])
        half = len(keys) // 2
        objects: list[Any] = [{"Key": x, "VersionId": vids[x]} for x in keys[:half]]
        objects += [{"Key": x} for x in keys[half:]]
        self.sent["multi_delete"] += 1
        r = self.s3.delete_objects(Bucket=v, Delete={"Objects": objects})
        if r.get("Errors"):
            raise RuntimeError(f"versioned multi-object delete: {r['Errors'][:3]}")
        for d in r.get("Deleted", []):
            if d["Key"] in keys[:half]:
                ledger.add(v, d["Key"], "delete", d.get("VersionId"))
            else:
                ledger.add(v, d["Key"], "delete_marker", d.get("DeleteMarkerVersionId"))


def remove_all(s3: S3Client, bucket: str) -> None:
    """Delete every version, delete marker and upload of ``bucket``, then the bucket."""
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            objs: list[Any] = [
                {"Key": o["Key"], "VersionId": o["VersionId"]}
                for o in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for i in range(0, len(objs), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objs[i : i + 1000], "Quiet": True})
        for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        s3.delete_bucket(Bucket=bucket)
    except ClientError as ex:
        if ex.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
