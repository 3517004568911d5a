"""The lifecycle consumer (ILM.1): one leased consumer of the committed logs that keeps the due-time
schedule (``schedule``) and runs the executor (``executor``) on what is due.

Each step first applies the log objects after the checkpoint (up to ``per_step``), each one to
the schedule shards its records touch, exactly once per shard (``Schedule.apply``: the guard of
``a`` and ``g``), then commits the checkpoint past it (the framework, fenced by the lease). Then
it runs executor batches while entries are due (at most ``BATCHES_PER_STEP``, checking the
lease before each), so a large backlog of due entries does not keep the loop from the logs.

When the lease is taken, a shard whose due entries were computed under other rules (its
``meta`` has another fingerprint) is rescheduled from the versions it holds before anything else.

With ``source = "bucket"`` (``bucket_rules``) the rules change while the consumer runs: before a
log object is applied, the configuration of each bucket it mentions is fetched (unless fetched
within ``bucket_rules_interval``); every step also reads again the stale ones of the buckets it
tracks. A bucket whose rules' fingerprint differs from the one its entries were computed under
(its ``r.`` key) is rescheduled alone (``Schedule.reschedule_bucket``) before its records are
applied and before the executor's next batch.

A bucket that gains rules (named by ``[[lifecycle.rules]]`` when the lease is taken, or given its
first configuration with ``source = "bucket"``) and was never listed is listed once
(``baseline``): its existing versions are scheduled as their records would have been, a few pages
per step, after the step's log objects and before the executor's batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from changelog.consumers.framework import Cursor, LogObjectConsumer, ObjectBatch, RouteHandler
from changelog.consumers.lifecycle.baseline import Baseliner, baseline_doc
from changelog.consumers.lifecycle.bucket_rules import BucketRules
from changelog.consumers.lifecycle.executor import Executor
from changelog.consumers.lifecycle.leftovers import LeftoverReaper
from changelog.consumers.lifecycle.model import DEFAULT_CONSUMER, Layout, dumps, rules_key
from changelog.consumers.lifecycle.plan import plan, status
from changelog.consumers.lifecycle.rules import LifecycleConfig, RuleSet
from changelog.consumers.lifecycle.schedule import Schedule
from changelog.consumers.lifecycle.uploads_gc import UploadReaper, uploads_doc
from changelog.pacing import Pacer
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.reader import LogObject
from changelog.pipeline.targets import Target

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from changelog.pipeline.index import ChangeIndex

logger = logging.getLogger(__name__)

# The executor's S3 client: botocore's standard retries, then the step's own backoff.
CLIENT_ATTEMPTS = 4
CLIENT_CONNECT_TIMEOUT = 10.0
CLIENT_READ_TIMEOUT = 60.0

# Actions listed by GET /_/lifecycle/plan.
PLAN_LIMIT = 1000

# Executor batches per step before the loop looks at the logs, pause, stop and the lease again.
BATCHES_PER_STEP = 4


class LifecycleConsumer(LogObjectConsumer):
    """``lifecycle``: the schedule in ``schedule``'s shards, acted on by ``executor`` (None: the
    schedule is kept but nothing is acted on, e.g. a plan-only setup)."""

    def __init__(
        self,
        schedule: Schedule,
        executor: Executor | None,
        logs: Target,
        *,
        name: str = DEFAULT_CONSUMER,
        interval: float = 5.0,
        log_prefix: str = "",
        reaper: UploadReaper | None = None,
        bucket_rules: BucketRules | None = None,
        leftovers: LeftoverReaper | None = None,
        baseliner: Baseliner | None = None,
    ) -> None:
        super().__init__(logs, log_prefix=log_prefix)
        # Lists once each bucket that gains rules (its existing objects); None: never listed.
        self.baseliner = baseliner
        # Aborts incomplete multipart uploads (abort_incomplete_multipart_days); None: no rule does.
        self.reaper = reaper
        # source = "bucket": the buckets' own lifecycle configurations; None: [[lifecycle.rules]].
        self.bucket_rules = bucket_rules
        # Replication's abandoned multipart uploads at its sites (backup's: `backup cleanup`).
        self.leftovers = leftovers
        self._synced: dict[str, str] = {}  # bucket -> fingerprint its entries were computed under
        self.name = name
        self.interval = interval
        self.schedule = schedule
        self.executor = executor
        self._cursor: Cursor | None = None
        self.counts: dict[str, int] = defaultdict(int)

    def _open(self, cursor: Cursor) -> None:
        """A new lease: shards computed under other rules are rescheduled first (with ``source =
        "bucket"``: under the configurations of the buckets they hold, fetched now), and the
        buckets the schedule holds rules for are tracked for refreshes."""
        if cursor is self._cursor:
            return
        self._synced = {}
        for n in range(self.schedule.layout.shards):
            if not self.schedule.head(n).current_rules:
                cursor.lease.check()
                marks: dict[str, bytes] = {}
                if self.bucket_rules is not None:
                    held = self.schedule.buckets_held(n)
                    self.bucket_rules.refresh(held)
                    self._set_rules()
                    marks = self._marks(held)
                keys = self.schedule.reschedule(n, marks=marks)
                logger.info("lifecycle: shard %d rescheduled under the current rules (%d keys)", n, keys)
                self.counts["rescheduled_keys"] += keys
            if self.bucket_rules is not None:
                self._synced.update(self.schedule.bucket_marks(n))
        if self.bucket_rules is not None:
            self.bucket_rules.track(self._synced)
        if self.baseliner is not None:
            # Every bucket governed now that was never listed to its end (a new rule's bucket,
            # a listing a crash interrupted, a schedule older than the listing).
            queued = self.baseliner.want(sorted(self._governed()))
            if queued:
                logger.info("lifecycle: %d buckets to list once for their existing objects", queued)
        self._cursor = cursor

    def _marks(self, buckets: set[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for b in buckets:
            fp = self.schedule.rules.bucket_fingerprint(b)
            if fp:
                tenant, _, name = b.rpartition("/")
                out[rules_key(self.schedule.layout.shard(tenant, name)[1])] = dumps({"t": tenant, "b": name, "fp": fp})
        return out

    def _set_rules(self) -> None:
        assert self.bucket_rules is not None
        rules = self.bucket_rules.ruleset()
        self.schedule.rules = rules  # the executor reads the same schedule's rules
        if self.reaper is not None:
            self.reaper.rules = tuple(rules.abort_rules())

    def _sync_rules(self, cursor: Cursor, buckets: set[str] | list[str]) -> None:
        """``source = "bucket"``: fetch the stale configurations of ``buckets`` and reschedule
        those whose rules differ from what their entries were computed under."""
        assert self.bucket_rules is not None
        if self.bucket_rules.refresh(buckets):
            self._set_rules()
        for b in sorted(buckets):
            fp = self.schedule.rules.bucket_fingerprint(b)
            if fp == self._synced.get(b, ""):
                continue
            cursor.lease.check()
            tenant, _, name = b.rpartition("/")
            keys = self.schedule.reschedule_bucket(self.schedule.layout.shard(tenant, name)[0], tenant, name)
            logger.info("lifecycle: bucket %s rescheduled under its current rules (%d keys)", b, keys)
            self.counts["rescheduled_keys"] += keys
            self.counts["buckets_rescheduled"] += 1
            if fp:
                self._synced[b] = fp
            else:
                self._synced.pop(b, None)
            if self.baseliner is not None:
                if fp:
                    self.baseliner.want([b])  # its first configuration: list it unless done
                else:
                    self.baseliner.forget(b)

    def handle(self, cursor: Cursor, obj: LogObject, records: list[LogRecord]) -> ObjectBatch:
        self._open(cursor)
        buckets = {r.qualified_bucket for r in records}
        if self.bucket_rules is not None:
            self._sync_rules(cursor, buckets)
        if self.leftovers is not None:
            self.leftovers.saw(buckets)
        by_shard: dict[int, list[LogRecord]] = defaultdict(list)
        for r in records:
            if self.schedule.rules.governs(r.qualified_bucket):
                by_shard[self.schedule.layout.shard(r.tenant or "", r.bucket)[0]].append(r)
        for n, recs in sorted(by_shard.items()):
            # Not a fence (the schedule is not on the lease's object) but a cheap early stop; the
            # guard in each write keeps a stale writer out.
            cursor.lease.check()
            if self.schedule.apply(n, obj.name, recs):
                self.counts["shard_writes"] += 1
            else:
                self.counts["shards_skipped"] += 1
        return ObjectBatch()

    def step(self, cursor: Cursor, stop: threading.Event) -> None:
        self._open(cursor)
        super().step(cursor, stop)
        if self.bucket_rules is not None:
            self._sync_rules(cursor, self.bucket_rules.stale())
        if self.baseliner is not None and self.baseliner.pending:
            if self.baseliner.run(cursor.lease.check) and not stop.is_set():
                self.wake()  # more pages: the next step comes at once, after the logs
        if self.executor is None:
            return
        if self.reaper is not None:
            cursor.lease.check()
            self.reaper.run()
        if self.leftovers is not None:
            cursor.lease.check()
            self.leftovers.run()
        for _ in range(BATCHES_PER_STEP):
            if stop.is_set():
                return
            cursor.lease.check()
            if self.executor.run_batch() < self.executor.batch:
                return
            self.wake()  # more is due: the next step comes at once

    def stats(self) -> Mapping[str, object]:
        out: dict[str, object] = {**super().stats(), **self.counts}
        if self.executor is not None:
            out.update(self.executor.snapshot())
        for part in (self.reaper, self.bucket_rules, self.leftovers, self.baseliner):
            if part is not None:
                out.update(part.snapshot())
        return out

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        """``GET /_/lifecycle/plan`` (the first ``PLAN_LIMIT`` actions scheduled, earliest first)
        and ``GET /_/lifecycle/status`` (due now, later and failed, from the schedule; what this
        process did, ``done``)."""
        return {("GET", "plan"): self._plan_doc, ("GET", "status"): self._status_doc}

    def _plan_doc(self) -> Mapping[str, object]:
        return {"actions": plan(self.schedule.store, self.schedule.layout, limit=PLAN_LIMIT)}

    def _status_doc(self) -> Mapping[str, object]:
        doc = status(self.schedule.store, self.schedule.layout, now_us=int(time.time() * 1_000_000))
        done = self.executor.snapshot() if self.executor is not None else {}
        for part in (self.reaper, self.leftovers):
            if part is not None:
                done.update(part.snapshot())
        uploads = uploads_doc(self.reaper, int(time.time() * 1_000_000)) if self.reaper is not None else None
        return {
            **doc,
            "dry_run": self.executor is None,
            "done": done,
            "incomplete_uploads": uploads,
            "source": "config" if self.bucket_rules is None else "bucket",
            "bucket_rules": self.bucket_rules.doc() if self.bucket_rules is not None else None,
            "baseline": self._baseline_doc(),
        }

    def _baseline_doc(self) -> dict[str, object] | None:
        if self.baseliner is None:
            return None
        return {**self.baseliner.doc(), "buckets": baseline_doc(self.schedule, self._governed())}

    def _governed(self) -> list[str]:
        """The buckets with rules: with ``source = "bucket"`` those the schedule holds a
        configuration for (a copy: the API thread reads while the consumer's thread changes them)."""
        return list(self._synced) if self.bucket_rules is not None else self.schedule.rules.governed()


# The schedule's rules fingerprint with source = "bucket": each bucket's is in its r. key.
BUCKET_SOURCE = "bucket"


def layout_of(section: LifecycleConfig, index_prefix: str, *, name: str = DEFAULT_CONSUMER) -> Layout:
    """The schedule layout ``[lifecycle]`` gives for consumer ``name`` of the index ``index_prefix``."""
    rules = RuleSet.of(section)
    fingerprint = BUCKET_SOURCE if section.source == "bucket" else rules.fingerprint()
    return Layout.make(index_prefix, consumer=name, shards=section.shards, day_us=rules.day_us, rules=fingerprint)


def lifecycle_consumer(
    section: LifecycleConfig,
    index: ChangeIndex,
    logs: Target,
    client: S3Client | None,
    *,
    name: str = DEFAULT_CONSUMER,
    rules_client: S3Client | None = None,
    leftovers: LeftoverReaper | None = None,
) -> LifecycleConsumer:
    """The lifecycle consumer ``name`` of ``index``; ``client`` None: schedule only, no actions.
    With ``source = "bucket"`` the configurations are read through ``rules_client`` (default:
    ``client``, else a client of ``[lifecycle]``'s endpoint), and so are the buckets that gain
    rules listed (``baseline``)."""
    rules = RuleSet.of(section)
    schedule = Schedule(index.store, layout_of(section, index.prefix, name=name), rules)
    pacer = Pacer(section.max_actions_per_second)  # one budget for expiry, transition and aborts
    executor = (
        Executor(
            schedule, client, batch=section.batch, delete_batch=section.delete_batch, workers=section.workers,
            pacer=pacer,
        )  # fmt: skip
        if client is not None
        else None
    )
    reaper = UploadReaper(
        index.store, index.control_oid, rules.abort_rules(), client, day_us=rules.day_us,
        interval=section.uploads_interval, pacer=pacer,
    )  # fmt: skip
    bucket_rules = None
    reader = rules_client or client or lifecycle_client(section)
    if section.source == "bucket":
        bucket_rules = BucketRules(reader, section.day_seconds, interval=section.bucket_rules_interval)
    # Listing requests are not actions: not paced (one request per page of 1,000 versions).
    baseliner = Baseliner(schedule, reader)
    return LifecycleConsumer(
        schedule, executor, logs, name=name, interval=section.poll_interval, reaper=reaper,
        bucket_rules=bucket_rules, leftovers=leftovers, baseliner=baseliner,
    )  # fmt: skip


def lifecycle_client(section: LifecycleConfig) -> S3Client:
    """The executor's S3 client: ``[lifecycle]``'s endpoint and keys (the source's by default)."""
    from changelog.config_types import reveal
    from changelog.pipeline.s3client import make_s3_client

    return make_s3_client(
        section.endpoint,
        access_key=reveal(section.access_key),
        secret_key=reveal(section.secret_key),
        region=section.region,
        verify=section.tls_verify,
        max_attempts=CLIENT_ATTEMPTS,
        connect_timeout=CLIENT_CONNECT_TIMEOUT,
        read_timeout=CLIENT_READ_TIMEOUT,
    )
