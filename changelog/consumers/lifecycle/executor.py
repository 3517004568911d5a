"""The lifecycle executor: takes the schedule's due entries in batches, re-checks each object just
before acting, acts, and removes the entry.

**Re-check** (one HEAD, two for a noncurrent version, plus GetObjectTagging when the rule names
tags; the re-checks of one batch's expirations run on ``workers`` threads, the actions after
them in the batch's order on one thread; a transition is checked just before its copy): an entry whose rule is gone from the rules (or no longer gives that
action: a bucket's configuration changed, ``source = "bucket"``) is dropped; an action on the current version (expire, transition) needs the key's current version to
be the entry's (same version id; for the null version, same ETag and an mtime within a second),
an action on a noncurrent version needs that version to exist with the entry's ETag and not to
be current again. Anything else is a version that changed: the entry is dropped, never acted on
(the record that changed it has scheduled, or will schedule, what is due now).

**Acting:** a current version's expiry is one DeleteObject without a version id (S3 then writes
a delete marker in a versioned bucket and a null marker in a suspended one, as its own lifecycle
does), conditional on the object being the one re-checked (``_expire``: a user's write after
the re-check is never deleted); noncurrent versions go out as DeleteObjects by version id, up to
``delete_batch`` keys per request per bucket. A transition is a CopyObject of the object onto itself with the rule's storage
class (``CopySourceIfMatch`` on the ETag; the version's ACL read first and given as
``x-amz-grant-*``, else the copy would get the default ACL), preceded by a note in the key's schedule state so the
copy's write record keeps the original's age; when the copy made a new version (a versioned
bucket), the original version is deleted after it (same content, so nothing is lost).

**Crashes:** the entry is removed after the action, guarded by its value as read. A crash
between the two leaves the entry; the next batch re-checks it and finds the version gone, a
delete marker current, or the copy already in the target class (then only the original version
left by a half-done versioned transition is deleted): nothing is done twice. Our own deletes and
copies flow back through the change logs as ordinary records and update the schedule.

Errors: an S3 refusal (403, a missing bucket, other 4xx) moves the entry to the failed list
(``f.``); a transient one (5xx, throttling, network) ends the batch, keeps the entry, and is
raised after what was done is recorded, for the leased loop to back off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from changelog.consumers.lifecycle.model import DueEntry, Note
from changelog.consumers.lifecycle.rules import S3_DELETE_MAX, Action
from changelog.consumers.lifecycle.schedule import Pending, Schedule
from changelog.errors import ChangelogError, ObjectMissing, PermanentError, TransientError, one_line
from changelog.pacing import Pacer
from changelog.pipeline.s3client import RequestExtras, refusal, s3_call, translate_error

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

logger = logging.getLogger(__name__)

NULL = "null"
# S3 error codes of DeleteObjects' per-key errors that may pass: the entry stays for later.
_TRANSIENT_CODES = frozenset(
    {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "OperationAborted"}
)
# The key is gone: the expiration is moot.
_GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
COUNTERS = (
    "expired", "noncurrent_expired", "markers_expired", "transitioned", "skipped", "failed", "requests",
)  # fmt: skip
# An ACL's permissions as CopyObject's grant arguments (WRITE means nothing on an object).
_GRANT_ARGS = {
    "FULL_CONTROL": "GrantFullControl",
    "READ": "GrantRead",
    "READ_ACP": "GrantReadACP",
    "WRITE_ACP": "GrantWriteACP",
}
# An object's Last-Modified has whole seconds; the record's mtime more.
MTIME_SLACK_US = 1_000_000
# radosgw's conditional delete (RGWDeleteObj_ObjStore_S3::get_params; an ISO 8601 time): 412
# when the object was modified after it. boto3 does not model it: it rides on ``RequestExtras``
# (as ``replication.rgwx``'s parameters).
UNMODIFIED_SINCE = "x-amz-delete-if-unmodified-since"


def _set_headers(request: Any, values: Mapping[str, str]) -> None:
    for k, v in values.items():
        request.headers[k] = v


_HEADERS = RequestExtras("rgwcl-lifecycle-headers", _set_headers)
# Let ``headers`` reach a client's requests (idempotent).
enable_headers = _HEADERS.enable
# Extra headers of the calls made in this block, in this thread.
headers = _HEADERS.given


class Changed(ChangelogError):
    """A conditional request found another object than the entry's (412)."""


def _translate(ex: Exception, what: str) -> ChangelogError:
    """``translate_error``, refined: a missing version, a delete marker addressed by version
    (405) and radosgw's 400 for an unknown version id are ``ObjectMissing``; 412 is ``Changed``."""
    r = refusal(ex)
    if r is not None:
        if r.status == 412 or r.code == "PreconditionFailed":
            return Changed(f"{what}: {r}")
        if r.code in _GONE_CODES or (r.status in (404, 405) and r.code != "NoSuchBucket"):
            return ObjectMissing(f"{what}: {r}")
        if r.status == 400 and r.code == "InvalidArgument" and "version" in r.message.lower():
            return ObjectMissing(f"{what}: {r}")
    return translate_error(ex, what)


def _vid(v: object) -> str | None:
    """A version id from a response; None for none or the null version."""
    return None if v in (None, "", NULL) else str(v)


@dataclass(frozen=True)
class ObjectHead:
    """What a HEAD says: the version, its ETag, storage class and mtime; ``marker`` when the
    current version is a delete marker."""

    version: str | None
    etag: str | None = None
    storage_class: str = "STANDARD"
    mtime_us: int | None = None
    marker: bool = False


Verdict = Literal["act", "done", "skip"]


@dataclass
class BatchResult:
    """What one batch did, per shard: entries to remove, entries that failed."""

    taken: int = 0
    done: dict[int, list[Pending]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[int, dict[str, tuple[Pending, str]]] = field(default_factory=lambda: defaultdict(dict))
    transient: TransientError | None = None

    def finish(self, p: Pending) -> None:
        self.done[p.shard].append(p)

    def fail(self, p: Pending, reason: str) -> None:
        self.failed[p.shard][p.dkey] = (p, one_line(reason))


def _await_checks(checks: Sequence[Future[tuple[Verdict, str]] | None]) -> None:
    """Wait for every check before the first action (no check request overlaps an action), or
    until one fails transiently: then the checks not started are cancelled (S3 is unreachable or
    throttling: the batch ends there, its entries stay)."""
    pending = {f for f in checks if f is not None}
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        if any(isinstance(f.exception(), TransientError) for f in done):
            for f in pending:
                f.cancel()
            return


class Executor:
    """Acts on what is due in one ``Schedule`` through one S3 client (credentials that may delete
    and copy in every bucket a rule names)."""

    def __init__(
        self,
        schedule: Schedule,
        client: S3Client,
        *,
        batch: int = 1000,
        delete_batch: int = S3_DELETE_MAX,
        workers: int = 8,
        pacer: Pacer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedule = schedule
        self.client = client
        self.batch = batch
        self.delete_batch = delete_batch
        self.workers = workers
        self.pacer = pacer or Pacer(0)
        self.clock = clock
        self.counts: dict[str, int] = defaultdict(int)
        self._counts_lock = threading.Lock()  # re-checks count their requests from worker threads

    @property
    def client(self) -> S3Client:
        return self._client

    @client.setter
    def client(self, client: S3Client) -> None:
        """Every client the executor is given carries ``_expire``'s conditional-delete header
        (registered on the client, not per request; a client swapped in later gets it too)."""
        if hasattr(client, "meta"):
            enable_headers(client)
        self._client = client

    def snapshot(self) -> dict[str, int]:
        return {name: self.counts.get(name, 0) for name in COUNTERS}

    def run_batch(self, now_us: int | None = None) -> int:
        """Act on up to ``batch`` due entries. Returns how many were taken (0: nothing is due).
        Raises ``TransientError`` after recording what was done when S3 failed transiently."""
        now = int(self.clock() * 1_000_000) if now_us is None else now_us
        pending = self.schedule.due(now, self.batch)
        res = BatchResult(taken=len(pending))
        deletes: dict[str, list[Pending]] = defaultdict(list)  # noncurrent versions, by bucket
        # Current versions to expire, by (bucket, key): one conditional delete per key, however
        # many rules made it due (a second delete would write a second marker).
        expires: dict[tuple[str, str], list[Pending]] = defaultdict(list)
        expiring = {
            (p.entry.s3_bucket, p.entry.key, p.entry.ver) for p in pending if p.entry.action is Action.EXPIRE
        }
        # Of several transitions of one version due together (a waterfall whose steps all passed),
        # only the last: S3 goes straight to it; the others find the version changed (dropped).
        last_move: dict[tuple[str, str, str | None], str] = {}
        for p in pending:
            if p.entry.action is Action.TRANSITION:
                v = (p.entry.s3_bucket, p.entry.key, p.entry.ver)
                last_move[v] = max(last_move.get(v, ""), p.dkey)
        # A transition of a version expiring now is left for the next batch, which finds the
        # version expired (or, if the expiry's rule did not apply after all, moves it): no copy
        # of what is deleted now.
        todo = [
            p for p in pending
            if p.entry.action is not Action.TRANSITION
            or ((v := (p.entry.s3_bucket, p.entry.key, p.entry.ver)) not in expiring and last_move[v] == p.dkey)
        ]  # fmt: skip
        moved: set[tuple[str, str]] = set()  # keys a transition copied in this batch
        # A pool per batch (threads start as checks come, ~0.1 ms each, against ~5 ms per HEAD):
        # no thread outlives its batch.
        with ThreadPoolExecutor(
            max(1, min(self.workers, len(todo))), thread_name_prefix="lifecycle-check"
        ) as pool:
            checks = self._checks(todo, pool)
            _await_checks(checks)
            for p, checked in zip(todo, checks, strict=True):
                if res.transient is not None or (checked is not None and checked.cancelled()):
                    break
                e = p.entry
                if e.action is Action.TRANSITION and (e.s3_bucket, e.key) in moved:
                    continue  # a second transition of one key waits for the first one's record
                if e.action is Action.TRANSITION:
                    # Its pace before its re-check: a version written during a wait between them
                    # would end under the copy of the older one (the copy names the version).
                    self.pacer.take()
                self._guarded(res, p, partial(self._prepare, res, p, checked, deletes, expires))
                if e.action is Action.TRANSITION:
                    moved.add((e.s3_bucket, e.key))
        # Paced as DeleteObjects requests of ``delete_batch`` keys would be.
        keys = list(expires.items())
        for i in range(0, len(keys), self.delete_batch):
            if res.transient is None:
                self.pacer.take(len(keys[i : i + self.delete_batch]))
            for (bucket, key), group in keys[i : i + self.delete_batch]:
                if res.transient is None:
                    self._expire(res, bucket, key, group)
        for bucket, group in deletes.items():
            for i in range(0, len(group), self.delete_batch):
                if res.transient is None:
                    self._delete(res, bucket, group[i : i + self.delete_batch])
        for n in sorted(set(res.done) | set(res.failed)):
            self.schedule.finish(n, res.done.get(n, []), res.failed.get(n, {}), now_us=now)
        if res.transient is not None:
            raise res.transient
        return res.taken

    def _checks(
        self, todo: Sequence[Pending], pool: ThreadPoolExecutor
    ) -> list[Future[tuple[Verdict, str]] | None]:
        """The re-checks of ``todo``'s expirations, on ``pool``'s threads (they only read: the
        actions that follow run in order on the caller's thread, so an entry is still removed
        only after its action). Each future holds the verdict or the error the check raised.
        A transition's check (None here) is made just before its copy, as before: the copy names
        the version, and a version written between an early check and a late copy would be hidden
        under the copy of the older one."""
        if self.workers <= 1:
            return [None] * len(todo)
        return [
            None if p.entry.action is Action.TRANSITION else pool.submit(self.check, p.entry) for p in todo
        ]

    def _guarded(self, res: BatchResult, p: Pending, fn: Callable[[], None]) -> None:
        try:
            fn()
        except TransientError as ex:
            res.transient = ex
        except PermanentError as ex:
            self.counts["failed"] += 1
            logger.warning("lifecycle %s %s/%s: %s", p.entry.action.value, p.entry.s3_bucket, p.entry.key, ex)
            res.fail(p, str(ex))

    def _skip(self, res: BatchResult, p: Pending, why: str) -> None:
        self.counts["skipped"] += 1
        logger.debug(
            "lifecycle %s %s/%s skipped: %s", p.entry.action.value, p.entry.s3_bucket, p.entry.key, why
        )
        res.finish(p)

    def _prepare(
        self,
        res: BatchResult,
        p: Pending,
        checked: Future[tuple[Verdict, str]] | None,
        deletes: dict[str, list[Pending]],
        expires: dict[tuple[str, str], list[Pending]],
    ) -> None:
        """Act on one entry's re-check (made now when ``checked`` is None; its error, if it
        failed, is raised here): a noncurrent expiration that passes joins its bucket's deletes,
        a current one its key's conditional delete, a transition is made now."""
        e = p.entry
        verdict, why = checked.result() if checked is not None else self.check(e)
        if verdict == "skip":
            self._skip(res, p, why)
        elif verdict == "done":
            res.finish(p)
        elif e.action is Action.TRANSITION:
            self._transition(res, p)
        elif e.action is Action.EXPIRE:
            expires[(e.s3_bucket, e.key)].append(p)
        else:
            deletes[e.s3_bucket].append(p)

    # ------------------------------------------------------------------ re-check

    def _call(self, what: str, fn: Callable[[], object]) -> object:
        with self._counts_lock:
            self.counts["requests"] += 1
        return s3_call(what, fn, _translate)

    def head(
        self, bucket: str, key: str, version: str | None = None, *, null: bool = False
    ) -> ObjectHead | None:
        """The current version of ``key`` (or ``version``; ``null``: the null version), None when
        there is none."""
        kw: dict[str, str] = {"Bucket": bucket, "Key": key}
        if version is not None or null:
            kw["VersionId"] = version or NULL
        try:
            resp = self._call(f"HEAD {bucket}/{key}", lambda: self.client.head_object(**kw))  # type: ignore[arg-type]
        except ObjectMissing as ex:
            cause = getattr(ex.__cause__, "response", None)
            headers = (
                cause.get("ResponseMetadata", {}).get("HTTPHeaders", {}) if isinstance(cause, dict) else {}
            )
            if headers.get("x-amz-delete-marker") == "true":
                return ObjectHead(_vid(headers.get("x-amz-version-id")), marker=True)
            return None
        assert isinstance(resp, Mapping)
        lm = resp.get("LastModified")
        return ObjectHead(
            _vid(resp.get("VersionId")),
            str(resp.get("ETag") or "").strip('"') or None,
            str(resp.get("StorageClass") or "STANDARD"),
            int(lm.timestamp() * 1_000_000) if lm is not None else None,
        )

    def check(self, e: DueEntry) -> tuple[Verdict, str]:
        """Whether to act on ``e`` now: ("act", ""), ("done", why) when an earlier attempt did it,
        or ("skip", why) when the object is not the entry's any more or its rule is gone."""
        if not self.schedule.rules.has(e.qualified_bucket, e.rule, e.action):
            return "skip", f"its rule {e.rule!r} is gone (the rules changed)"
        if e.action is Action.NONCURRENT and e.marker:
            verdict, why = self._check_noncurrent_marker(e)
        elif e.action is Action.NONCURRENT:
            verdict, why = self._check_noncurrent(e)
        elif e.action is Action.MARKER:
            verdict, why = self._check_marker(e)
        else:
            verdict, why = self._check_current(e)
        # A marker has no tags: radosgw's tag filter lets delete markers through.
        if (
            verdict == "act"
            and e.tags
            and not e.marker
            and e.action is not Action.MARKER
            and not self._tags_match(e)
        ):
            return "skip", "its tags do not match the rule's"
        return verdict, why

    def _check_current(self, e: DueEntry) -> tuple[Verdict, str]:
        h = self.head(e.s3_bucket, e.key)
        if h is None or h.marker:
            return "skip", "no current version (deleted)"
        if e.action is Action.TRANSITION and h.storage_class == e.storage_class and h.etag == e.etag:
            if h.version != e.ver:
                self._drop_original(e)  # a copy made before a crash: only the original is left
            return "done", f"already in {e.storage_class}"
        if h.version != e.ver:
            return "skip", f"the current version is {h.version or NULL}, not {e.ver or NULL}"
        if e.etag is not None and h.etag != e.etag:
            return "skip", "its ETag changed"
        if e.ver is None and h.mtime_us is not None and abs(h.mtime_us - e.mtime_us) > MTIME_SLACK_US:
            return "skip", "it was written again"
        return "act", ""

    def _check_noncurrent(self, e: DueEntry) -> tuple[Verdict, str]:
        h = self.head(e.s3_bucket, e.key, e.ver, null=e.ver is None)
        if h is None:
            return "skip", "the version is gone"
        if e.etag is not None and h.etag is not None and h.etag != e.etag:
            return "skip", "its ETag changed"
        cur = self.head(e.s3_bucket, e.key)
        if cur is not None and not cur.marker and cur.version == e.ver:
            return "skip", "it is current again"
        return "act", ""

    def _check_marker(self, e: DueEntry) -> tuple[Verdict, str]:
        """The entry's delete marker must still be its key's only version: the key's entries
        come first in a listing of versions under the key as prefix, so two entries say."""
        resp = self._call(
            f"ListObjectVersions {e.s3_bucket}/{e.key}",
            lambda: self.client.list_object_versions(Bucket=e.s3_bucket, Prefix=e.key, MaxKeys=2),
        )
        assert isinstance(resp, Mapping)
        mine = [(False, v) for v in resp.get("Versions", []) if v.get("Key") == e.key]
        mine += [(True, m) for m in resp.get("DeleteMarkers", []) if m.get("Key") == e.key]
        if len(mine) != 1 or not mine[0][0] or _vid(mine[0][1].get("VersionId")) != e.ver:
            return "skip", "the delete marker is not the key's only version"
        return "act", ""

    def _check_noncurrent_marker(self, e: DueEntry) -> tuple[Verdict, str]:
        """The entry's delete marker must still be there and not current (a HEAD of a marker's
        version is a bare 404 on radosgw): the key's versions, listed with the key as prefix,
        page by page until the marker or another key."""
        kw: dict[str, object] = {"Bucket": e.s3_bucket, "Prefix": e.key}
        while True:
            resp = self._call(
                f"ListObjectVersions {e.s3_bucket}/{e.key}",
                lambda: self.client.list_object_versions(**kw),  # type: ignore[arg-type]
            )
            assert isinstance(resp, Mapping)
            for m in resp.get("DeleteMarkers", []):
                if m.get("Key") == e.key and _vid(m.get("VersionId")) == e.ver:
                    return ("skip", "it is current again") if m.get("IsLatest") else ("act", "")
            rows = [*resp.get("Versions", []), *resp.get("DeleteMarkers", [])]
            if not resp.get("IsTruncated") or any(r.get("Key") != e.key for r in rows):
                return "skip", "the delete marker is gone"
            kw["KeyMarker"] = resp.get("NextKeyMarker")
            kw["VersionIdMarker"] = resp.get("NextVersionIdMarker")

    def _tags_match(self, e: DueEntry) -> bool:
        kw: dict[str, str] = {"Bucket": e.s3_bucket, "Key": e.key}
        if e.ver is not None or e.action is Action.NONCURRENT:
            kw["VersionId"] = e.ver or NULL
        resp = self._call(f"GET tagging {e.s3_bucket}/{e.key}", lambda: self.client.get_object_tagging(**kw))  # type: ignore[arg-type]
        assert isinstance(resp, Mapping)
        have = {str(t["Key"]): str(t["Value"]) for t in resp.get("TagSet", [])}
        return all(have.get(k) == v for k, v in e.tags.items())

    # ------------------------------------------------------------------ acting

    def _expire(self, res: BatchResult, bucket: str, key: str, group: Sequence[Pending]) -> None:
        """Expire the current version of ``key`` (the entries of ``group``, re-checked): one
        DeleteObject without a version id (a delete marker in a versioned bucket), conditional
        on the object being the one re-checked, as radosgw's own lifecycle deletes
        (``unmod_since = mtime``): a user's write after the re-check (the batch's other checks,
        the pacer's wait) must not be deleted. ``x-amz-delete-if-unmodified-since`` (radosgw,
        every release; honoured for an unversioned bucket's object, 412 otherwise) at the
        version's mtime plus ``MTIME_SLACK_US`` (a record's mtime may be a HEAD's whole second;
        a user's write comes days after the version's), and ``If-Match`` on its ETag (S3, and
        radosgw once it has conditional deletes; Reef and older ignore it, so a write into a
        versioned bucket in that window still gets the marker over it). A 412 is a changed
        object: skipped, as a re-check that saw it would have."""
        e = group[0].entry
        kw: dict[str, str] = {"Bucket": bucket, "Key": key}
        if e.etag:
            kw["IfMatch"] = f'"{e.etag}"'
        since = datetime.fromtimestamp((e.mtime_us + MTIME_SLACK_US) // 1_000_000, tz=UTC)
        try:
            with headers({UNMODIFIED_SINCE: since.strftime("%Y-%m-%dT%H:%M:%S.000Z")}):
                self._call(f"DELETE {bucket}/{key}", lambda: self.client.delete_object(**kw))  # type: ignore[arg-type]
        except (Changed, ObjectMissing) as ex:
            for p in group:
                self._skip(res, p, str(ex))
            return
        except TransientError as ex:
            res.transient = ex
            return
        except PermanentError as ex:
            for p in group:
                self.counts["failed"] += 1
                res.fail(p, str(ex))
            return
        for p in group:
            self.counts["expired"] += 1
            res.finish(p)

    def _delete(self, res: BatchResult, bucket: str, group: Sequence[Pending]) -> None:
        """One DeleteObjects for ``group`` (one bucket's noncurrent versions, each named by its
        version id: what it deletes cannot have changed since the re-check, but for a suspended
        bucket's null version) and expired delete markers; entries of one version go as one key."""
        ident: dict[tuple[str, str | None], list[Pending]] = defaultdict(list)
        for p in group:
            ident[(p.entry.key, p.entry.ver or NULL)].append(p)
        objects: list[ObjectIdentifierTypeDef] = [
            {"Key": k, "VersionId": v} if v is not None else {"Key": k} for k, v in ident
        ]
        self.pacer.take(len(objects))
        try:
            resp = self._call(
                f"DeleteObjects {bucket} ({len(objects)} keys)",
                lambda: self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": objects, "Quiet": False}
                ),
            )
        except TransientError as ex:
            res.transient = ex
            return
        except PermanentError as ex:
            for p in group:
                self.counts["failed"] += 1
                res.fail(p, str(ex))
            return
        assert isinstance(resp, Mapping)
        # An error names the version it failed on; some servers leave it out (moto): then the key.
        errors: dict[tuple[str, str | None], Mapping[str, object]] = {}
        for x in resp.get("Errors", []):
            errors[(str(x.get("Key")), str(x["VersionId"]) if x.get("VersionId") else "*")] = x
        for (key, ver), ps in ident.items():
            err = errors.get((key, ver)) or errors.get((key, "*"))
            code = str(err.get("Code", "")) if err else ""
            for p in ps:
                if err is None or code in _GONE_CODES:
                    self.counts[
                        "markers_expired" if p.entry.action is Action.MARKER else "noncurrent_expired"
                    ] += 1
                    res.finish(p)
                elif code in _TRANSIENT_CODES:
                    res.transient = res.transient or TransientError(f"DeleteObjects {bucket}/{key}: {code}")
                else:
                    self.counts["failed"] += 1
                    res.fail(p, f"DeleteObjects {bucket}/{key}: {code} {err.get('Message', '')}")

    def _transition(self, res: BatchResult, p: Pending) -> None:
        """Copy the version onto itself in the rule's storage class; the note first, so the copy's
        record keeps the original's age (a crash after the note and before the copy leaves a note
        the key's next write consumes, matching only a write of the same ETag and class)."""
        e = p.entry
        assert e.storage_class is not None
        try:
            grants = self._grants(e)
        except ObjectMissing as ex:
            self._skip(res, p, str(ex))
            return
        if not self.schedule.set_note(p, Note(e.etag or "", e.storage_class, e.born_us)):
            return  # the key changed in the schedule since the entry was read: taken again later
        source: dict[str, str] = {"Bucket": e.s3_bucket, "Key": e.key}
        if e.ver is not None:
            source["VersionId"] = e.ver
        extra: dict[str, str] = {"CopySourceIfMatch": f'"{e.etag}"'} if e.etag else {}
        extra.update(grants)
        try:
            resp = self._call(
                f"CopyObject {e.s3_bucket}/{e.key} to {e.storage_class}",
                lambda: self.client.copy_object(
                    Bucket=e.s3_bucket, Key=e.key, CopySource=source,  # type: ignore[arg-type]
                    StorageClass=e.storage_class, MetadataDirective="COPY", **extra,  # type: ignore[arg-type]
                ),
            )  # fmt: skip
        except (Changed, ObjectMissing) as ex:
            self.schedule.set_note(p, None)
            self._skip(res, p, str(ex))
            return
        except PermanentError:
            self.schedule.set_note(p, None)  # no copy will come: the note must not outlive it
            raise
        assert isinstance(resp, Mapping)
        if "VersionId" in resp:
            copy_vid = _vid(resp.get("VersionId"))
        else:
            # radosgw (16.2 to 20.2) answers CopyObject without x-amz-version-id even when the
            # copy is a new version (a versioned or suspended bucket): the key's current version
            # says. Without this the original version stayed behind as a noncurrent duplicate.
            h = self.head(e.s3_bucket, e.key)
            copy_vid = h.version if h is not None and not h.marker else e.ver
        if copy_vid != e.ver:
            self._drop_original(e)
        self.counts["transitioned"] += 1
        res.finish(p)

    def _grants(self, e: DueEntry) -> dict[str, str]:
        """The version's ACL as CopyObject's ``x-amz-grant-*`` arguments: a copy otherwise gets
        the default ACL (private, owned by the executor's user), losing the object's grants. The
        grants go in the copy request itself, so the copy is never visible with the wrong ACL."""
        kw: dict[str, str] = {"Bucket": e.s3_bucket, "Key": e.key}
        if e.ver is not None:
            kw["VersionId"] = e.ver
        resp = self._call(f"GET acl {e.s3_bucket}/{e.key}", lambda: self.client.get_object_acl(**kw))  # type: ignore[arg-type]
        assert isinstance(resp, Mapping)
        out: dict[str, list[str]] = defaultdict(list)
        for g in resp.get("Grants", []):
            who = g.get("Grantee") or {}
            kind = who.get("Type")
            if kind == "CanonicalUser" and who.get("ID"):
                name = f'id="{who["ID"]}"'
            elif kind == "Group" and who.get("URI"):
                name = f'uri="{who["URI"]}"'
            elif kind == "AmazonCustomerByEmail" and who.get("EmailAddress"):
                name = f'emailAddress="{who["EmailAddress"]}"'
            else:
                continue
            arg = _GRANT_ARGS.get(str(g.get("Permission")))
            if arg is not None and name not in out[arg]:
                out[arg].append(name)
        return {arg: ", ".join(names) for arg, names in sorted(out.items())}

    def _drop_original(self, e: DueEntry) -> None:
        """Delete the version a transition copied from, when the copy is another version."""
        try:
            self._call(
                f"DELETE {e.s3_bucket}/{e.key}?versionId={e.ver or NULL}",
                lambda: self.client.delete_object(Bucket=e.s3_bucket, Key=e.key, VersionId=e.ver or NULL),
            )
        except ObjectMissing:
            pass


__all__ = ["COUNTERS", "BatchResult", "Changed", "Executor", "ObjectHead"]
