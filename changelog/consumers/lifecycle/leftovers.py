"""Garbage collection of the product's own leftovers on its destinations: the multipart uploads a
replication run left behind at a site when it crashed (or lost its lease) between
CreateMultipartUpload and CompleteMultipartUpload. s3transfer aborts on an error it sees; a
SIGKILL or a lost host leaves the upload, its parts billed at the site, forever.

(The collector's abandoned log-object uploads are aborted by the collector itself, and a backup
run's abandoned blob uploads under ``blobs/`` by ``backup cleanup``: neither is done again here.)

**Which uploads are ours.** A replica is written under the source's key in the site bucket of a
source bucket the site replicates (``site_bucket``, the site's ``prefixes``), with the site's
credentials: an upload there is taken only when its ``Owner`` or ``Initiator`` is the user of
those credentials (``ListBuckets``' owner id, read once per site). Give replication credentials
of its own at a site that other writers share.

**Never one in flight.** An upload is abandoned when it has been idle for ``idle_s``: started
that long ago, and its newest part (``ListParts``) too. A live upload adds a part at least every
part's request timeout (replication's read timeout is 120 s), and ``idle_s`` is at least 600 s
(``[lifecycle] leftovers_days``, real days, 1 by default), so a slow upload of a huge object is
never taken for a dead one. An upload completed or aborted meanwhile answers ``NoSuchUpload``:
counted as gone. Runs every ``interval`` at most, in the lifecycle consumer's step.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from changelog.consumers.lifecycle.uploads_gc import s3_bucket
from changelog.errors import ChangelogError, ObjectMissing, PermanentError
from changelog.pipeline.s3client import refusal, s3_call, translate_error

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from changelog.config import Config

logger = logging.getLogger(__name__)

COUNTERS = (
    "leftovers_aborted",
    "leftovers_gone",
    "leftovers_active",
    "leftovers_failed",
    "leftovers_listings",
)
# At most this many aborts per run (the rest wait for the next run).
ABORTS_PER_RUN = 1000


def _translate(ex: Exception, what: str) -> ChangelogError:
    r = refusal(ex)
    if r is not None and (r.code in ("NoSuchUpload", "NoSuchBucket") or r.status == 404):
        return ObjectMissing(f"{what}: {r}")
    return translate_error(ex, what)


@dataclass(frozen=True)
class Site:
    """One destination: its client, and which source buckets (qualified) it replicates where."""

    name: str
    client: S3Client
    buckets: frozenset[str]  # empty: every bucket
    bucket_map: Mapping[str, str]
    prefixes: tuple[str, ...]  # empty: every key

    def site_bucket(self, bucket: str) -> str:
        return self.bucket_map.get(bucket, s3_bucket(bucket))

    def replicates(self, bucket: str) -> bool:
        return not self.buckets or bucket in self.buckets


@dataclass(frozen=True, slots=True)
class Leftover:
    site: str
    bucket: str  # as the site names it
    key: str
    upload_id: str
    started: float


@dataclass
class LeftoverReaper:
    """Aborts the uploads idle for ``idle_s`` that our replication left at its sites (module
    docstring). ``saw`` adds the source buckets the change logs mention (their site buckets are
    looked at)."""

    sites: Sequence[Site]
    idle_s: float
    interval: float = 600.0
    clock: Callable[[], float] = time.time
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _buckets: set[str] = field(default_factory=set)
    _owner: dict[str, str | None] = field(default_factory=dict)
    _last: float = float("-inf")

    def saw(self, buckets: Iterable[str]) -> None:
        self._buckets.update(buckets)

    def snapshot(self) -> dict[str, int]:
        return {name: self.counts.get(name, 0) for name in COUNTERS}

    def _owner_id(self, site: Site) -> str | None:
        """The id of the site credentials' user (cached; None: unknown, the site is skipped)."""
        if site.name not in self._owner:
            try:
                resp = s3_call(f"list the buckets of site {site.name}", site.client.list_buckets)
                self._owner[site.name] = str(resp.get("Owner", {}).get("ID") or "") or None
            except PermanentError as ex:
                logger.warning("lifecycle leftovers: site %s skipped: %s", site.name, ex)
                self._owner[site.name] = None
        return self._owner[site.name]

    def candidates(self, site: Site, now: float) -> Iterator[Leftover]:
        """The uploads of ``site`` started more than ``idle_s`` ago by its credentials' user."""
        owner = self._owner_id(site)
        if owner is None:
            return
        targets = {site.site_bucket(b) for b in self._buckets if site.replicates(b)}
        for bucket in sorted(targets):
            for prefix in site.prefixes or ("",):
                for u in self._uploads(site, bucket, prefix):
                    ids = {
                        str(who.get("ID") or "")
                        for w in ("Owner", "Initiator")
                        if isinstance(who := u.get(w), Mapping)
                    }
                    started = u.get("Initiated")
                    at = started.timestamp() if isinstance(started, datetime) else now
                    if owner in ids and now - at >= self.idle_s:
                        yield Leftover(site.name, bucket, str(u["Key"]), str(u["UploadId"]), at)

    def _uploads(self, site: Site, bucket: str, prefix: str) -> Iterator[Mapping[str, object]]:
        key_marker = upload_marker = ""
        while True:
            kw: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
            if key_marker:
                kw.update(KeyMarker=key_marker, UploadIdMarker=upload_marker)
            try:
                page = s3_call(
                    f"list the uploads of {site.name}:{bucket}",
                    partial(site.client.list_multipart_uploads, **kw),  # type: ignore[arg-type]
                    _translate,
                )
            except (ObjectMissing, PermanentError) as ex:
                logger.debug("lifecycle leftovers: %s", ex)  # no such bucket at the site, or not ours
                return
            self.counts["leftovers_listings"] += 1
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            key_marker = str(page.get("NextKeyMarker", ""))
            upload_marker = str(page.get("NextUploadIdMarker", ""))

    def last_activity(self, site: Site, u: Leftover) -> float:
        """When ``u`` last moved: its newest part, else its start."""
        newest = u.started
        marker = 0
        while True:
            page = s3_call(
                f"list the parts of upload {u.upload_id} of {site.name}:{u.bucket}/{u.key}",
                partial(
                    site.client.list_parts, Bucket=u.bucket, Key=u.key, UploadId=u.upload_id,
                    PartNumberMarker=marker,
                ),
                _translate,
            )  # fmt: skip
            for part in page.get("Parts", []):
                lm = part.get("LastModified")
                if isinstance(lm, datetime):
                    newest = max(newest, lm.timestamp())
            if not page.get("IsTruncated"):
                return newest
            marker = int(page.get("NextPartNumberMarker") or 0)

    def run(self, *, force: bool = False) -> int:
        """Abort the idle uploads (at most every ``interval`` unless ``force``); how many were
        aborted. A transient S3 error ends the run (``TransientError``)."""
        now = self.clock()
        if not self.sites or (not force and now - self._last < self.interval):
            return 0
        self._last = now
        aborted = 0
        for site in self.sites:
            for u in self.candidates(site, now):
                if aborted >= ABORTS_PER_RUN:
                    return aborted
                aborted += self._collect(site, u, now)
        return aborted

    def _collect(self, site: Site, u: Leftover, now: float) -> int:
        what = f"abort upload {u.upload_id} of {site.name}:{u.bucket}/{u.key}"
        try:
            if now - self.last_activity(site, u) < self.idle_s:
                self.counts["leftovers_active"] += 1  # a part came recently: in flight
                return 0
            s3_call(
                what,
                partial(site.client.abort_multipart_upload, Bucket=u.bucket, Key=u.key, UploadId=u.upload_id),
                _translate,
            )
        except ObjectMissing:
            self.counts["leftovers_gone"] += 1  # completed or aborted meanwhile
            return 0
        except PermanentError as ex:
            self.counts["leftovers_failed"] += 1
            logger.warning("lifecycle leftovers: %s", ex)
            return 0
        self.counts["leftovers_aborted"] += 1
        logger.info(
            "lifecycle leftovers: %s (idle since %s)", what, time.strftime("%FT%TZ", time.gmtime(u.started))
        )
        return 1


def leftover_reaper(config: Config, *, interval: float = 600.0) -> LeftoverReaper | None:
    """The reaper of ``config``'s replication sites (None: no site, or ``leftovers_days = 0``)."""
    from changelog.consumers.replication.sites import site_client
    from changelog.pipeline.s3client import DEFAULT_POOL

    days = config.lifecycle.leftovers_days
    if days <= 0 or not config.replication.sites:
        return None
    sites = [
        Site(
            s.name,
            site_client(s, max_attempts=config.replication.max_attempts, pool=DEFAULT_POOL),
            frozenset(s.buckets),
            {b: s.site_bucket(b) for b in s.bucket_map},
            tuple(s.prefixes),
        )  # fmt: skip
        for s in config.replication.sites
    ]
    return LeftoverReaper(sites, days * 86_400.0, interval=interval)


__all__ = ["COUNTERS", "Leftover", "LeftoverReaper", "Site", "leftover_reaper"]
