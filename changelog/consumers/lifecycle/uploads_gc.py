"""Lifecycle's garbage collection of incomplete multipart uploads (``abort_incomplete_multipart_days``):
the uploads in progress come from what the RGW follower saw in the bucket index logs (an upload's
meta object written and not yet removed: ``changelog.pipeline.uploads``; radosgw Pacific logs
it), and, because Reef and later write no bucket-index-log entry for it (measured on 20.2.4:
``bilog list`` stays empty through CreateMultipartUpload and UploadPart), from
``ListMultipartUploads`` of each bucket an abort rule names, with the rule's prefix: a read of
the bucket index's multipart namespace (the uploads in progress), never of the bucket's objects. An upload is due ``days × day_seconds`` after it began; the reaper
aborts it (``AbortMultipartUpload``). An upload completed or aborted meanwhile answers
``NoSuchUpload``, which is fine: aborting is idempotent, so a crash or a second reaper costs a
request, never a wrong action. The follower drops the upload from its table when it reads the
abort in the log; until then this process remembers what it aborted.

The table is small (uploads in progress), so it is read whole, at most every ``interval``.
Uploads begun before the follower's first start are not in it (documented limit).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from changelog.errors import ChangelogError, ObjectMissing, PermanentError
from changelog.pacing import Pacer
from changelog.pipeline.s3client import refusal, s3_call, translate_error
from changelog.pipeline.store import ObjectStore
from changelog.pipeline.uploads import Upload, incomplete_uploads
from changelog.times import fmt_time

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

# At most this many aborts per run (the rest wait for the next run).
ABORTS_PER_RUN = 1000
COUNTERS = ("uploads_aborted", "uploads_gone", "uploads_failed", "uploads_listings")


@dataclass(frozen=True, slots=True)
class AbortRule:
    """Uploads of ``bucket`` (qualified) whose key starts with ``prefix`` are aborted ``days``
    lifecycle days after they began."""

    rule: str
    bucket: str
    prefix: str
    days: int


def _translate(ex: Exception, what: str) -> ChangelogError:
    r = refusal(ex)
    if r is not None and (r.code == "NoSuchUpload" or r.status == 404):
        return ObjectMissing(f"{what}: {r}")
    return translate_error(ex, what)


def s3_bucket(qualified: str) -> str:
    """A qualified name (``tenant/bucket``) as an S3 request names it (``tenant:bucket``)."""
    tenant, slash, name = qualified.partition("/")
    return f"{tenant}:{name}" if slash else qualified


class UploadReaper:
    """Aborts the incomplete uploads due under ``rules`` (module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        control_oid: str,
        rules: Sequence[AbortRule],
        client: S3Client | None,
        *,
        day_us: int,
        interval: float = 60.0,
        pacer: Pacer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pacer = pacer or Pacer(0)
        self.control_oid = control_oid
        self.rules = tuple(rules)
        self.client = client
        self.day_us = day_us
        self.interval = interval
        self.clock = clock
        self.counts: dict[str, int] = defaultdict(int)
        self._done: set[tuple[str, str]] = set()  # (bucket, upload id) aborted or found gone
        self._last_listed: list[Upload] = []  # what the last ListMultipartUploads round found
        self._last = float("-inf")

    def snapshot(self) -> dict[str, int]:
        return {name: self.counts.get(name, 0) for name in COUNTERS}

    def rule_for(self, u: Upload) -> AbortRule | None:
        """The rule with the fewest days among those matching ``u`` (S3: the earliest applies)."""
        found = [r for r in self.rules if r.bucket == u.bucket and u.key.startswith(r.prefix)]
        return min(found, key=lambda r: r.days, default=None)

    def uploads(self) -> list[Upload]:
        """The uploads in progress: the follower's table (from the bucket index log), and, for
        the buckets an abort rule names, ``ListMultipartUploads`` with the rule's prefix (radosgw
        Reef and later log no bucket-index-log entry for an upload's meta object; the listing
        reads the bucket index's multipart namespace only, one request per 1,000 uploads)."""
        if self.client is not None:
            self._last_listed = [u for rule in self.rules for u in self._listed(rule)]
        return self.known()

    def known(self) -> list[Upload]:
        """``uploads`` without new requests: the table, and what the last listing found."""
        found = {(u.bucket, u.upload_id): u for u in incomplete_uploads(self.store, self.control_oid)}
        for u in self._last_listed:
            found.setdefault((u.bucket, u.upload_id), u)
        return list(found.values())

    def _listed(self, rule: AbortRule) -> list[Upload]:
        assert self.client is not None
        client = self.client
        out: list[Upload] = []
        key_marker = upload_marker = ""
        while True:
            kw: dict[str, str] = {"Bucket": s3_bucket(rule.bucket), "Prefix": rule.prefix}
            if key_marker:
                kw.update(KeyMarker=key_marker, UploadIdMarker=upload_marker)
            try:
                page = s3_call(f"list the uploads of {rule.bucket}", partial(client.list_multipart_uploads, **kw))  # type: ignore[arg-type]
            except ChangelogError as ex:
                if isinstance(ex, PermanentError):
                    logger.warning("lifecycle: %s", ex)  # a bucket gone or not ours: the table still counts
                    return out
                raise
            self.counts["uploads_listings"] += 1
            for u in page.get("Uploads", []):
                started = u.get("Initiated")
                ns = int(started.timestamp() * 1_000_000_000) if started is not None else 0
                out.append(Upload(rule.bucket, str(u["Key"]), str(u["UploadId"]), ns))
            if not page.get("IsTruncated"):
                return out
            key_marker, upload_marker = str(page.get("NextKeyMarker", "")), str(page.get("NextUploadIdMarker", ""))

    def due(self, now_us: int) -> list[tuple[Upload, AbortRule]]:
        """The uploads due at ``now_us``, oldest first, not yet aborted by this process."""
        out: list[tuple[Upload, AbortRule]] = []
        for u in self.uploads():
            rule = self.rule_for(u)
            if rule is None or (u.bucket, u.upload_id) in self._done:
                continue
            if u.started_ns // 1000 + rule.days * self.day_us <= now_us:
                out.append((u, rule))
        out.sort(key=lambda ur: ur[0].started_ns)
        return out

    def run(self, *, force: bool = False) -> int:
        """Abort what is due (at most every ``interval`` unless ``force``); how many were taken.
        A transient S3 error ends the run (``TransientError``; what was done stays counted)."""
        if not self.rules or self.client is None:
            return 0
        now = self.clock()
        if not force and now - self._last < self.interval:
            return 0
        self._last = now
        taken = self.due(int(now * 1_000_000))[:ABORTS_PER_RUN]
        for u, rule in taken:
            self._abort(u, rule)
        return len(taken)

    def _abort(self, u: Upload, rule: AbortRule) -> None:
        assert self.client is not None
        client = self.client
        what = f"abort upload {u.upload_id} of {u.bucket}/{u.key} (rule {rule.rule})"
        self.pacer.take()
        try:
            s3_call(
                what,
                lambda: client.abort_multipart_upload(Bucket=s3_bucket(u.bucket), Key=u.key, UploadId=u.upload_id),
                _translate,
            )
        except ObjectMissing:
            self.counts["uploads_gone"] += 1  # completed or aborted meanwhile
            self._done.add((u.bucket, u.upload_id))
            return
        except PermanentError as err:
            # Refused (access denied, the bucket gone): counted, not tried again by this process.
            self.counts["uploads_failed"] += 1
            self._done.add((u.bucket, u.upload_id))
            logger.warning("lifecycle: %s", err)
            return
        self.counts["uploads_aborted"] += 1
        self._done.add((u.bucket, u.upload_id))
        logger.info("lifecycle: %s", what)


def uploads_doc(reaper: UploadReaper, now_us: int) -> dict[str, object]:
    """For ``lifecycle status``: the uploads in progress under an abort rule (as the reaper last
    saw them: a status request sends no S3 request), how many are due now, and the next one."""
    tracked = due = 0
    next_due: int | None = None
    for u in reaper.known():
        rule = reaper.rule_for(u)
        if rule is None:
            continue
        tracked += 1
        at = u.started_ns // 1000 + rule.days * reaper.day_us
        if at <= now_us:
            due += 1
        else:
            next_due = at if next_due is None else min(next_due, at)
    return {"under_rules": tracked, "due_now": due, "next_due": fmt_time(next_due)}
