"""The lifecycle consumer (ILM.1): one leased consumer of the committed logs that keeps the due-time
schedule (``schedule``) and runs the executor (``executor``) on what is due.

Each step first applies the log objects after the checkpoint (up to ``per_step``), each one to
the schedule shards its records touch, exactly once per shard (``Schedule.apply``: the guard of
``a`` and ``g``), then commits the checkpoint past it (the framework, fenced by the lease). Then
it runs executor batches while entries are due (at most ``BATCHES_PER_STEP``, checking the
lease before each), so a large backlog of due entries does not keep the loop from the logs.

When the lease is taken, a shard whose due entries were computed under other rules (its
``meta`` has another fingerprint) is rescheduled from the versions it holds before anything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from changelog.consumers.framework import Cursor, LogObjectConsumer, ObjectBatch, RouteHandler
from changelog.consumers.lifecycle.executor import Executor
from changelog.consumers.lifecycle.model import DEFAULT_CONSUMER, Layout
from changelog.consumers.lifecycle.plan import plan, status
from changelog.consumers.lifecycle.rules import LifecycleConfig, RuleSet
from changelog.consumers.lifecycle.schedule import Schedule
from changelog.consumers.lifecycle.uploads_gc import UploadReaper, uploads_doc
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
    ) -> None:
        super().__init__(logs, log_prefix=log_prefix)
        # Aborts incomplete multipart uploads (abort_incomplete_multipart_days); None: no rule does.
        self.reaper = reaper
        self.name = name
        self.interval = interval
        self.schedule = schedule
        self.executor = executor
        self._cursor: Cursor | None = None
        self.counts: dict[str, int] = defaultdict(int)

    def _open(self, cursor: Cursor) -> None:
        """A new lease: shards computed under other rules are rescheduled first."""
        if cursor is self._cursor:
            return
        for n in range(self.schedule.layout.shards):
            if not self.schedule.head(n).current_rules:
                cursor.lease.check()
                keys = self.schedule.reschedule(n)
                logger.info("lifecycle: shard %d rescheduled under the current rules (%d keys)", n, keys)
                self.counts["rescheduled_keys"] += keys
        self._cursor = cursor

    def handle(self, cursor: Cursor, obj: LogObject, records: list[LogRecord]) -> ObjectBatch:
        self._open(cursor)
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
        if self.executor is None:
            return
        if self.reaper is not None:
            cursor.lease.check()
            self.reaper.run()
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
        if self.reaper is not None:
            out.update(self.reaper.snapshot())
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
        if self.reaper is not None:
            done.update(self.reaper.snapshot())
        uploads = uploads_doc(self.reaper, int(time.time() * 1_000_000)) if self.reaper is not None else None
        return {**doc, "dry_run": self.executor is None, "done": done, "incomplete_uploads": uploads}


def layout_of(section: LifecycleConfig, index_prefix: str, *, name: str = DEFAULT_CONSUMER) -> Layout:
    """The schedule layout ``[lifecycle]`` gives for consumer ``name`` of the index ``index_prefix``."""
    rules = RuleSet.of(section)
    return Layout.make(
        index_prefix, consumer=name, shards=section.shards, day_us=rules.day_us, rules=rules.fingerprint()
    )


def lifecycle_consumer(
    section: LifecycleConfig,
    index: ChangeIndex,
    logs: Target,
    client: S3Client | None,
    *,
    name: str = DEFAULT_CONSUMER,
) -> LifecycleConsumer:
    """The lifecycle consumer ``name`` of ``index``; ``client`` None: schedule only, no actions."""
    rules = RuleSet.of(section)
    schedule = Schedule(index.store, layout_of(section, index.prefix, name=name), rules)
    executor = (
        Executor(schedule, client, batch=section.batch, delete_batch=section.delete_batch)
        if client is not None
        else None
    )
    reaper = UploadReaper(
        index.store, index.control_oid, rules.abort_rules(), client, day_us=rules.day_us,
        interval=section.uploads_interval,
    )  # fmt: skip
    return LifecycleConsumer(schedule, executor, logs, name=name, interval=section.poll_interval, reaper=reaper)


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
