"""Prometheus metrics of a ``serve`` process, read from the components at scrape time.

The collector, the follower and the leases keep plain counters; nothing in them imports
prometheus. ``ChangelogMetrics`` is a ``prometheus_client`` custom collector that asks each of
them for a ``stats()`` dict (keys below) when ``GET /_/metrics`` is scraped, and turns the answers
into metric families named ``rgw_changelog_*``. A provider that fails or is absent costs its own
metrics and one ``rgw_changelog_scrape_errors_total`` increment, never the whole scrape.

Stats keys read (every key optional; a missing key omits its metric):

collector ``stats()``
    ``passes`` (int, count of finished passes), ``entries_emitted`` (int, entries in committed log
    objects), ``objects_committed`` (int), ``bytes_committed`` (int, bytes of committed objects as
    stored), ``last_pass_entries`` (int) and ``last_pass_seconds`` (float): entries emitted by the
    last finished pass and its duration (their ratio is the drain throughput),
    ``last_pass_end`` (float, unix time the last pass finished), ``complete_until`` (float | None,
    unix time of the watermark's ``complete_until``), ``target_errors`` ({kind: int}, errors from
    the target by kind, one per failed attempt: ``transient`` (retried), ``permanent``,
    ``missing``: an object or upload that should be there is not), ``failed_passes`` (int,
    passes of the service loop failed in a row); with ``[scale] partitioned`` also
    ``partitions_count`` (int, the streams), ``readable_until`` (float | None, the readers'
    bound) and ``streams`` ({stream: {held, committed_seq, last_commit, through, watermark,
    pending_commits}}, ``collector_streams._view_stats``), ``bucket_delete_holds`` (int, passes
    that held a ``bucket_delete`` back) and ``bucket_delete_held`` (float | None, unix time).
follower ``stats()``
    ``mutations_recorded`` (int, records written to the index), ``mutations_duplicate`` (int,
    records dropped as already recorded), ``sweeps`` (int, finished sweeps over the data log),
    ``caught_up_until`` (float | None, unix time), ``lag_seconds`` ({bucket: {shard: float}}: per
    bucket-index shard, 0 when read to its end, else seconds since the oldest change not yet
    recorded), ``source_errors`` ({kind: int}, errors talking to the source radosgw by kind),
    ``skipped`` ({reason: int}, log entries skipped on purpose: ``filter``, ``internal``),
    ``not_followed`` ({bucket: reason}, buckets seen and not followed: ``internal``),
    ``bucket_ops`` ({op: int}, ``bucket_create`` / ``bucket_delete`` records made),
    ``object_facts`` ({source: int}, where write records' sizes came from).
leases
    any objects with ``ref.name``, ``held``, ``renewals`` and ``losses`` (``changelog.pipeline.lease.Lease``);
    they are summed per lease name, and the totals never go down when a lease object is dropped.
replication
    a callable returning ``{site: stats}`` (``changelog.consumers.replication.api.CrrRoutes.prometheus``):
    ``completed``, ``completed_bytes``, ``failed``, ``failed_bytes``, ``skipped`` (int, records
    applied, refused and skipped at the site since the process started; of the skipped, two-way's
    ``echoes`` and ``older``), ``backlog_records``,
    ``backlog_bytes`` (int, committed and not yet applied), ``rpo_seconds`` (float, age of the
    oldest of them), ``failed_entries`` (int, in the site's failed list), ``paused`` (bool).
health
    a callable returning the current ``changelog.health.Reason`` list: ``health_ok`` (1 when
    there is none) and ``health_failing`` per (component, check) of ``changelog.health.CHECKS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from changelog import __version__
from changelog.health import CHECKS, Reason, StatsProvider
from changelog.health import stat_number as _number
from changelog.pipeline.index import ShardStats
from changelog.pipeline.store import LockRef

logger = logging.getLogger(__name__)

PREFIX = "rgw_changelog_"
# ChangeIndex.stats pages through a whole shard: a few scrapes in a row (Prometheus HA pairs,
# an operator's curl) share one reading instead of each paging the backlog again.
SHARD_STATS_TTL_S = 5.0
# Shard readings run concurrently, each one a short series of omap reads.
SHARD_STATS_WORKERS = 4


class ShardStatsSource(Protocol):
    """What the metrics need of a ``ChangeIndex``."""

    @property
    def shards(self) -> int: ...

    def stats(self, shard: int) -> ShardStats: ...


class LeaseLike(Protocol):
    """What the metrics need of a ``Lease``."""

    @property
    def ref(self) -> LockRef: ...

    @property
    def held(self) -> bool: ...

    @property
    def renewals(self) -> int: ...

    @property
    def losses(self) -> int: ...


class PauseState(Protocol):
    """What the metrics need of ``changelog.api.Controls``."""

    @property
    def components(self) -> Sequence[str]: ...

    def paused(self, component: str) -> bool: ...


class ShardStatsCache:
    """``index.stats(shard)`` for every shard, read at most once per ``ttl`` seconds."""

    def __init__(
        self,
        index: ShardStatsSource,
        *,
        ttl: float = SHARD_STATS_TTL_S,
        workers: int = SHARD_STATS_WORKERS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.ttl = ttl
        self.workers = max(1, workers)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._value: list[ShardStats] | None = None
        self._at = 0.0

    def get(self) -> list[ShardStats]:
        # Refresh under the lock: concurrent scrapes wait for one reading rather than start more.
        with self._lock:
            now = self._monotonic()
            if self._value is not None and now - self._at < self.ttl:
                return self._value
            shards = range(self.index.shards)
            with ThreadPoolExecutor(min(self.workers, len(shards)), thread_name_prefix="shard-stats") as pool:
                value = list(pool.map(self.index.stats, shards))
            self._value, self._at = value, self._monotonic()
            return value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None


@dataclass
class LeaseCounts:
    """One scrape's lease counters per lease name (monotonic across lease objects)."""

    renewals: dict[str, int] = field(default_factory=dict)
    losses: dict[str, int] = field(default_factory=dict)
    breaks: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)


class _LeaseTotals:
    """Per-name lease counters that stay monotonic when lease objects come and go."""

    COUNTERS = ("renewals", "losses", "breaks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id -> (the lease itself, so the id cannot be reused while we remember it; name; counts)
        self._last: dict[int, tuple[LeaseLike, str, tuple[int, ...]]] = {}
        self._retired: dict[str, dict[str, int]] = {c: defaultdict(int) for c in self.COUNTERS}

    def update(self, leases: Iterable[LeaseLike]) -> LeaseCounts:
        """Renewals, losses, breaks and held count per lease name."""
        with self._lock:
            current: dict[int, tuple[LeaseLike, str, tuple[int, ...]]] = {}
            held: dict[str, int] = defaultdict(int)
            for lease in leases:
                name = lease.ref.name
                current[id(lease)] = (lease, name, tuple(int(getattr(lease, c, 0)) for c in self.COUNTERS))
                held[name] += 1 if lease.held else 0
            for key, (_, name, counts) in self._last.items():
                if key not in current:
                    for c, n in zip(self.COUNTERS, counts, strict=True):
                        self._retired[c][name] += n
            self._last = current
            totals = {c: defaultdict(int, self._retired[c]) for c in self.COUNTERS}
            for _, name, counts in current.values():
                for c, n in zip(self.COUNTERS, counts, strict=True):
                    totals[c][name] += n
            for c in self.COUNTERS:
                for name in totals[c]:
                    held.setdefault(name, 0)
            return LeaseCounts(
                dict(totals["renewals"]), dict(totals["losses"]), dict(totals["breaks"]), dict(held)
            )


@dataclass
class _Reading:
    """One scrape's answers from the providers; a field stays empty when its provider failed."""

    collector: Mapping[str, object] = field(default_factory=dict)
    follower: Mapping[str, object] = field(default_factory=dict)
    shards: list[ShardStats] | None = None
    # renewals, losses and held count per lease name
    leases: LeaseCounts | None = None
    paused: dict[str, bool] | None = None
    consumers: dict[str, Mapping[str, object]] = field(default_factory=dict)
    replication: dict[str, Mapping[str, object]] = field(default_factory=dict)
    health: list[Reason] | None = None


def _by_kind(stats: Mapping[str, object], key: str) -> dict[str, float]:
    value = stats.get(key)
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}


# (stats key, metric name without PREFIX, help text) of one unlabelled family.
Scalar = tuple[str, str, str]


def _scalars(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily], stats: Mapping[str, object], table: Iterable[Scalar]
) -> Iterator[Metric]:
    """One family per row of ``table``, with the value of its key in ``stats`` (empty when the
    key is absent or not a number)."""
    for key, name, doc in table:
        metric = family(PREFIX + name, doc)
        if (v := _number(stats, key)) is not None:
            metric.add_metric([], v)
        yield metric


def _kinds(stats: Mapping[str, object], key: str, name: str, doc: str) -> CounterMetricFamily:
    """A counter labelled ``kind`` from the ``{kind: count}`` at ``key`` (errors by kind)."""
    counter = CounterMetricFamily(PREFIX + name, doc, labels=["kind"])
    for kind, n in sorted(_by_kind(stats, key).items()):
        counter.add_metric([kind], n)
    return counter


class ChangelogMetrics:
    """The custom collector for one ``serve`` process. Register it with
    ``registry.register(metrics)`` (or use ``make_registry``); every argument is optional so a
    process that runs only part of the pipeline still exports what it has."""

    def __init__(
        self,
        *,
        collector: StatsProvider | None = None,
        follower: StatsProvider | None = None,
        index: ShardStatsSource | None = None,
        leases: Callable[[], Iterable[LeaseLike]] | None = None,
        controls: PauseState | None = None,
        consumers: Mapping[str, StatsProvider] | None = None,
        replication: Callable[[], Mapping[str, Mapping[str, object]]] | None = None,
        health: Callable[[], Sequence[Reason]] | None = None,
        shard_stats_ttl: float = SHARD_STATS_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.collector = collector
        self.follower = follower
        self.shard_stats = ShardStatsCache(index, ttl=shard_stats_ttl) if index is not None else None
        self.leases = leases
        self.controls = controls
        self.consumers = dict(consumers or {})
        self.replication = replication
        self.health = health
        self._clock = clock
        self._lease_totals = _LeaseTotals()
        self._errors_lock = threading.Lock()
        self._scrape_errors: dict[str, int] = defaultdict(int)

    # prometheus_client calls describe() once at register time to detect clashing names; it must
    # not touch the providers, so it yields the families empty.
    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._read())

    def _failed(self, source: str, ex: BaseException) -> None:
        with self._errors_lock:
            self._scrape_errors[source] += 1
        logger.warning("metrics: reading %s failed: %s: %s", source, type(ex).__name__, ex)

    def _read(self) -> _Reading:
        got = _Reading()
        if self.collector is not None:
            try:
                got.collector = dict(self.collector.stats())
            except Exception as ex:
                self._failed("collector", ex)
        if self.follower is not None:
            try:
                got.follower = dict(self.follower.stats())
            except Exception as ex:
                self._failed("follower", ex)
        if self.shard_stats is not None:
            try:
                got.shards = self.shard_stats.get()
            except Exception as ex:
                self._failed("index", ex)
        if self.leases is not None:
            try:
                got.leases = self._lease_totals.update(list(self.leases()))
            except Exception as ex:
                self._failed("leases", ex)
        for name, consumer in self.consumers.items():
            try:
                got.consumers[name] = dict(consumer.stats())
            except Exception as ex:
                self._failed(f"consumer {name}", ex)
        if self.replication is not None:
            try:
                got.replication = {str(k): dict(v) for k, v in self.replication().items()}
            except Exception as ex:
                self._failed("replication", ex)
        if self.controls is not None:
            try:
                got.paused = {c: self.controls.paused(c) for c in self.controls.components}
            except Exception as ex:
                self._failed("controls", ex)
        if self.health is not None:
            try:
                got.health = list(self.health())
            except Exception as ex:
                self._failed("health", ex)
        return got

    def _families(self, got: _Reading | None) -> Iterator[Metric]:
        """Every family this collector exports; with ``got`` None, all of them empty."""
        data = got or _Reading()
        info = InfoMetricFamily(PREFIX + "build", "rgw-changelog version", labels=["version"])
        if got is not None:
            info.add_metric([__version__], {})
        yield info
        yield from _follower_families(data.follower)
        yield from _index_families(data.shards, self._clock())
        yield from _collector_families(data.collector)
        yield from _stream_families(data.collector, data.shards)
        yield from _consumer_families(data.consumers)
        yield from _lifecycle_families(data.consumers)
        yield from _replication_families(data.replication)
        yield from _lease_families(data.leases)
        yield from _health_families(data.health)
        yield from self._control_families(data, got is not None)

    def _control_families(self, data: _Reading, scraped: bool) -> Iterator[Metric]:
        # ---- controls
        paused = GaugeMetricFamily(PREFIX + "paused", "1 while a component is paused through the API", labels=["component"])
        if data.paused is not None:
            for component, on in sorted(data.paused.items()):
                paused.add_metric([component], 1.0 if on else 0.0)
        yield paused

        errors = CounterMetricFamily(
            PREFIX + "scrape_errors", "Failures reading a component's stats during a scrape", labels=["source"]
        )
        if scraped:
            with self._errors_lock:
                counts = dict(self._scrape_errors)
            for source, n in sorted(counts.items()):
                errors.add_metric([source], n)
        yield errors


def _follower_families(fstats: Mapping[str, object]) -> Iterator[Metric]:
    """The follower's counters, caught-up time and per-shard lag."""
    # ---- follower
    yield from _scalars(CounterMetricFamily, fstats, (
        ("mutations_recorded", "mutations_recorded", "Mutations recorded into the change index"),
        ("mutations_duplicate", "mutations_duplicate", "Mutations dropped as already recorded"),
        ("sweeps", "follower_sweeps", "Finished follower sweeps over the source data log"),
        ("instances_lost", "follower_instances_lost",
         "Source bucket instances (or log generations) gone before their log was read to its end"),
        ("entries_lost", "follower_entries_lost",
         "Estimated bucket-index-log entries lost with them (where an estimate was possible)"),
        ("late_entries", "follower_late_entries",
         "Bucket-index-log entries radosgw added to a finished log generation after it was read to its end "
         "(recorded late)"),
    ))  # fmt: skip
    skipped = CounterMetricFamily(
        PREFIX + "follower_skipped", "Source log entries skipped on purpose, by reason (filter, internal)",
        labels=["reason"],
    )
    for reason, n in sorted(_by_kind(fstats, "skipped").items()):
        skipped.add_metric([reason], n)
    yield skipped
    bucket_ops = CounterMetricFamily(
        PREFIX + "follower_bucket_ops", "bucket_create and bucket_delete records made, by op", labels=["op"]
    )
    for op, n in sorted(_by_kind(fstats, "bucket_ops").items()):
        bucket_ops.add_metric([op], n)
    yield bucket_ops
    facts = CounterMetricFamily(
        PREFIX + "follower_object_facts",
        "Write records by where their size and etag came from (index: the bucket index; superseded: "
        "null, the write was already overwritten; head_fallback: HEAD, the index pool could not be read)",
        labels=["source"],
    )
    for source, n in sorted(_by_kind(fstats, "object_facts").items()):
        facts.add_metric([source], n)
    yield facts
    yield _not_followed(fstats)
    yield from _scalars(GaugeMetricFamily, fstats, (
        ("caught_up_until", "follower_caught_up_timestamp_seconds",
         "Unix time the follower last read every pending source shard to its end"),
    ))  # fmt: skip
    lag = GaugeMetricFamily(
        PREFIX + "follower_lag_seconds",
        "How far the follower is behind on a source bucket-index shard",
        labels=["bucket", "shard"],
    )
    lags = fstats.get("lag_seconds")
    if isinstance(lags, Mapping):
        for bucket, shards in sorted(lags.items(), key=lambda kv: str(kv[0])):
            if isinstance(shards, Mapping):
                for shard, seconds in sorted(shards.items(), key=lambda kv: str(kv[0])):
                    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                        lag.add_metric([str(bucket), str(shard)], float(seconds))
    yield lag
    yield _kinds(fstats, "source_errors", "source_errors", "Errors talking to the source radosgw, by kind")
    held = fstats.get("partitions_held")
    if isinstance(held, list):
        gauge = GaugeMetricFamily(
            PREFIX + "follower_partitions_held", "Follower partitions this process holds ([scale] partitioned)"
        )
        gauge.add_metric([], float(len(held)))
        yield gauge


def _not_followed(fstats: Mapping[str, object]) -> GaugeMetricFamily:
    """Buckets the follower saw and does not follow, by reason (the filter's are not counted)."""
    gauge = GaugeMetricFamily(
        PREFIX + "follower_not_followed_buckets",
        "Source buckets seen and not followed, by reason (internal: the change-log target's own; access_denied: the source user may not list it)",
        labels=["reason"],
    )
    buckets = fstats.get("not_followed")
    if isinstance(buckets, Mapping):
        counts: dict[str, int] = defaultdict(int)
        for reason in buckets.values():
            counts[str(reason)] += 1
        for reason, n in sorted(counts.items()):
            gauge.add_metric([reason], n)
    return gauge


def _index_families(shards: list[ShardStats] | None, now: float) -> Iterator[Metric]:
    """Entries waiting per shard and in total, and the age of the oldest."""
    # ---- index
    shard_entries = GaugeMetricFamily(
        PREFIX + "index_entries", "Entries waiting in a change-index shard", labels=["shard"]
    )
    shard_age = GaugeMetricFamily(
        PREFIX + "index_oldest_entry_age_seconds",
        "Age of the oldest entry of a change-index shard (0 when empty)",
        labels=["shard"],
    )
    backlog = GaugeMetricFamily(PREFIX + "backlog_entries", "Entries waiting in the whole change index")
    backlog_age = GaugeMetricFamily(
        PREFIX + "backlog_oldest_entry_age_seconds", "Age of the oldest entry in the change index (0 when empty)"
    )
    if shards is not None:
        total, oldest = 0, 0.0
        for s in shards:
            age = max(0.0, now - s.oldest_us / 1e6) if s.oldest_us is not None else 0.0
            shard_entries.add_metric([str(s.shard)], s.entries)
            shard_age.add_metric([str(s.shard)], age)
            total += s.entries
            oldest = max(oldest, age)
        backlog.add_metric([], total)
        backlog_age.add_metric([], oldest)
    yield from (shard_entries, shard_age, backlog, backlog_age)


def _collector_families(cstats: Mapping[str, object]) -> Iterator[Metric]:
    """The collector's passes, output, throughput, watermark and target errors."""
    # ---- collector
    yield from _scalars(CounterMetricFamily, cstats, (
        ("passes", "collector_passes", "Finished collector passes"),
        ("entries_emitted", "entries_emitted", "Entries written into committed change-log objects"),
        ("objects_committed", "log_objects_committed", "Change-log objects committed to the target"),
        ("bytes_committed", "log_bytes_committed", "Bytes of change-log objects committed to the target"),
        ("bucket_delete_holds", "collector_bucket_delete_holds",
         "Collector stream passes that held a bucket_delete back until the other streams committed what came before it"),
    ))  # fmt: skip
    rate = GaugeMetricFamily(
        PREFIX + "drain_entries_per_second", "Drain throughput of the last finished collector pass"
    )
    duration = GaugeMetricFamily(PREFIX + "collector_last_pass_seconds", "Duration of the last finished pass")
    entries, seconds = _number(cstats, "last_pass_entries"), _number(cstats, "last_pass_seconds")
    if entries is not None and seconds is not None:
        rate.add_metric([], entries / seconds if seconds > 0 else 0.0)
    if seconds is not None:
        duration.add_metric([], seconds)
    yield from (rate, duration)
    yield from _scalars(GaugeMetricFamily, cstats, (
        ("failed_passes", "collector_failed_passes", "Collector passes failed in a row (0 after a good one)"),
        ("last_pass_end", "collector_last_pass_timestamp_seconds", "Unix time the last pass finished"),
        ("complete_until", "watermark_timestamp_seconds", "The watermark: every change before it is in the log"),
        ("bucket_delete_held", "collector_bucket_delete_held_timestamp_seconds",
         "Recorded time of the oldest bucket_delete a collector stream holds back now (absent: none)"),
    ))  # fmt: skip
    yield _kinds(cstats, "target_errors", "target_errors", "Errors writing change logs to the target, by kind")


# Each collector stream's figures ([scale] partitioned), labelled ``stream``: (key in the
# stream's stats, metric name without PREFIX, help text).
STREAM_GAUGES = (
    ("held", "collector_stream_held", "1 while this process holds the collector stream (its partition lease), else 0"),
    ("committed_seq", "collector_stream_seq", "Seq of the collector stream's newest committed log object"),
    ("last_commit", "collector_stream_last_commit_timestamp_seconds",
     "Cutoff (unix time) of the collector stream's newest committed log object"),
    ("through", "collector_stream_committed_through_timestamp_seconds",
     "Unix time through which every log object of the collector stream is committed"),
    ("watermark", "collector_stream_watermark_timestamp_seconds", "The collector stream's own watermark"),
    ("pending_commits", "collector_stream_pending_commits",
     "Log objects of the collector stream written and not yet committed (their entries not yet trimmed)"),
)  # fmt: skip


def _stream_families(cstats: Mapping[str, object], shards: list[ShardStats] | None) -> Iterator[Metric]:
    """With ``[scale] partitioned``: the stream count, the readers' watermark, and each stream's
    ``STREAM_GAUGES`` and index backlog (the entries of its shards, ``shard % count``). Every
    instance exports every stream from the control object as it read it at its last round
    (``collector_streams.StreamedCollector.stats``), not only the streams it holds: a stream
    whose holder died still has series (``held`` 0 on every instance), and one scrape of any
    instance shows them all. Aggregate across instances with ``max by (stream)``; ``held``
    summed by stream is 1 while the stream is held. No series when unpartitioned."""
    count_g = GaugeMetricFamily(
        PREFIX + "collector_streams", "Collector streams the index is cut into ([scale] partitioned)"
    )
    readable = GaugeMetricFamily(
        PREFIX + "readable_until_timestamp_seconds",
        "The readers' bound over the collector streams: every stream committed through it",
    )
    gauges = [
        (key, GaugeMetricFamily(PREFIX + name, doc, labels=["stream"])) for key, name, doc in STREAM_GAUGES
    ]
    backlog = GaugeMetricFamily(
        PREFIX + "collector_stream_backlog_entries",
        "Entries waiting in the change-index shards of a collector stream",
        labels=["stream"],
    )
    streams = cstats.get("streams")
    count = _number(cstats, "partitions_count")
    if isinstance(streams, Mapping) and count:
        count_g.add_metric([], count)
        if (v := _number(cstats, "readable_until")) is not None:
            readable.add_metric([], v)
        for n, st in sorted(streams.items(), key=lambda kv: int(kv[0])):
            if not isinstance(st, Mapping):
                continue
            for key, family in gauges:
                value = st.get(key)
                if isinstance(value, bool):
                    family.add_metric([str(n)], 1.0 if value else 0.0)
                elif (v := _number(st, key)) is not None:
                    family.add_metric([str(n)], v)
        if shards is not None:
            waiting = [0] * int(count)
            for s in shards:
                waiting[s.shard % int(count)] += s.entries
            for n, entries in enumerate(waiting):
                backlog.add_metric([str(n)], entries)
    yield from (count_g, readable)
    for _, family in gauges:
        yield family
    yield backlog


def _lease_families(leases: LeaseCounts | None) -> Iterator[Metric]:
    """Renewals, losses, breaks and holdings per lease name."""
    renewals = CounterMetricFamily(PREFIX + "lease_renewals", "Successful lease renewals", labels=["lease"])
    losses = CounterMetricFamily(PREFIX + "lease_losses", "Leases lost while held", labels=["lease"])
    breaks = CounterMetricFamily(
        PREFIX + "lease_breaks", "Locks of a dead holder on this host broken to take the lease", labels=["lease"]
    )
    held = GaugeMetricFamily(PREFIX + "leases_held", "Leases of this name held now", labels=["lease"])
    if leases is not None:
        for name in sorted(leases.held):
            renewals.add_metric([name], leases.renewals.get(name, 0))
            losses.add_metric([name], leases.losses.get(name, 0))
            breaks.add_metric([name], leases.breaks.get(name, 0))
            held.add_metric([name], leases.held[name])
    yield from (renewals, losses, breaks, held)


def _health_families(reasons: list[Reason] | None) -> Iterator[Metric]:
    """Whether the process is healthy, and which check fails (``changelog.health``)."""
    # ---- health
    ok = GaugeMetricFamily(PREFIX + "health_ok", "1 when no health check of changelog.health fails (see /_/status)")
    failing = GaugeMetricFamily(
        PREFIX + "health_failing", "1 while this health check fails, else 0", labels=["component", "check"]
    )
    if reasons is not None:
        ok.add_metric([], 0.0 if reasons else 1.0)
        bad = {(r.component, r.check) for r in reasons}
        for pair in sorted(set(CHECKS) | bad):
            failing.add_metric(list(pair), 1.0 if pair in bad else 0.0)
    yield from (ok, failing)


# Consumer stats keys exported as counters / gauges, labelled by consumer.
CONSUMER_COUNTERS = (
    ("records_consumed", "consumer_records", "Change-log records a consumer has handled"),
    ("objects_consumed", "consumer_log_objects", "Change-log objects a consumer has handled"),
    ("steps", "consumer_steps", "Finished steps of a consumer's loop"),
    ("transient_errors", "consumer_errors", "Failed steps of a consumer (retried with backoff)"),
    ("runs", "consumer_runs", "Finished runs of a consumer that works in runs (backup)"),
    ("failures", "consumer_run_failures", "Failed runs of a consumer that works in runs (backup)"),
)
CONSUMER_GAUGES = (
    ("active", "consumer_active", "1 while this process holds the consumer's lease"),
    ("checkpoint_updated", "consumer_checkpoint_timestamp_seconds", "Unix time a consumer last moved its checkpoint"),
    ("last_success", "consumer_last_success_timestamp_seconds", "Unix time of a consumer's last successful run"),
)


def _consumer_families(consumers: Mapping[str, Mapping[str, object]]) -> Iterator[Metric]:
    """Each consumer's progress, errors and lease, labelled ``consumer``."""
    for key, name, doc in CONSUMER_COUNTERS:
        counter = CounterMetricFamily(PREFIX + name, doc, labels=["consumer"])
        for consumer, stats in sorted(consumers.items()):
            if (v := _number(stats, key)) is not None:
                counter.add_metric([consumer], v)
        yield counter
    for key, name, doc in CONSUMER_GAUGES:
        gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["consumer"])
        for consumer, stats in sorted(consumers.items()):
            value = stats.get(key)
            if isinstance(value, bool):
                gauge.add_metric([consumer], 1.0 if value else 0.0)
            elif (v := _number(stats, key)) is not None:
                gauge.add_metric([consumer], v)
        yield gauge


# Lifecycle (a consumer whose stats have these keys): what its executor did, by action.
LIFECYCLE_ACTIONS = (
    "expired", "noncurrent_expired", "markers_expired", "transitioned", "skipped", "failed",
    "uploads_aborted", "uploads_gone", "uploads_failed",
    "leftovers_aborted", "leftovers_gone", "leftovers_active", "leftovers_failed",
)  # fmt: skip


# The one-time listing of a bucket that gained lifecycle rules: (stats key, name, help).
LIFECYCLE_BASELINE = (
    ("baseline_versions", "lifecycle_baseline_versions",
     "Versions the lifecycle consumer listed in buckets that gained rules, and scheduled"),
    ("baseline_pages", "lifecycle_baseline_pages", "ListObjectVersions pages of the lifecycle baseline listing"),
    ("baseline_buckets_done", "lifecycle_baseline_buckets", "Buckets the lifecycle consumer listed to their end"),
)  # fmt: skip


def _lifecycle_families(consumers: Mapping[str, Mapping[str, object]]) -> Iterator[Metric]:
    """``rgw_changelog_lifecycle_actions_total{consumer,action}`` (expired, noncurrent_expired,
    transitioned, skipped after a re-check, failed, and incomplete uploads aborted, found gone,
    failed), ``rgw_changelog_lifecycle_requests_total{consumer}`` (S3 requests of the executor),
    and the one-time listing of the buckets that gained rules:
    ``rgw_changelog_lifecycle_baseline_versions_total{consumer}`` (versions listed and scheduled),
    ``_baseline_pages_total``, ``_baseline_buckets_total`` (listed to their end) and the gauge
    ``rgw_changelog_lifecycle_baseline_pending_buckets{consumer}`` (queued, not listed yet)."""
    actions = CounterMetricFamily(
        PREFIX + "lifecycle_actions", "Lifecycle actions taken by this process, by action", labels=["consumer", "action"]
    )
    requests = CounterMetricFamily(
        PREFIX + "lifecycle_requests", "S3 requests of the lifecycle executor", labels=["consumer"]
    )
    baseline = [
        (key, CounterMetricFamily(PREFIX + name, text, labels=["consumer"]))
        for key, name, text in LIFECYCLE_BASELINE
    ]
    pending = GaugeMetricFamily(
        PREFIX + "lifecycle_baseline_pending_buckets",
        "Buckets that gained lifecycle rules and wait for their one-time listing",
        labels=["consumer"],
    )
    for consumer, stats in sorted(consumers.items()):
        if "expired" not in stats and "baseline_versions" not in stats:
            continue
        for action in LIFECYCLE_ACTIONS:
            if (v := _number(stats, action)) is not None:
                actions.add_metric([consumer, action], v)
        if (v := _number(stats, "requests")) is not None:
            requests.add_metric([consumer], v)
        for key, family in baseline:
            if (v := _number(stats, key)) is not None:
                family.add_metric([consumer], v)
        if (v := _number(stats, "baseline_pending")) is not None:
            pending.add_metric([consumer], v)
    yield actions
    yield requests
    for _, family in baseline:
        yield family
    yield pending


# Replication stats keys exported per site: (key, name without PREFIX, help text).
REPLICATION_COUNTERS = (
    ("completed", "replication_completed", "Records applied at a replication site (since the process started)"),
    ("completed_bytes", "replication_completed_bytes", "Bytes written to a replication site (since the process started)"),
    ("failed", "replication_failed", "Records a replication site refused or kept failing (they go to its failed list)"),
    ("failed_bytes", "replication_failed_bytes", "Bytes of the records a replication site refused or kept failing"),
    ("skipped", "replication_skipped",
     "Records not applied at a replication site on purpose (superseded at the source since, echoes, older)"),
    ("echoes", "replication_echoes",
     "Two-way: records not sent back to the peer because the peer's replicator wrote them (echoes)"),
    ("older", "replication_older",
     "Two-way: records not applied because the peer holds a newer write (last writer wins)"),
)  # fmt: skip
REPLICATION_GAUGES = (
    ("backlog_records", "replication_backlog_records", "Records in committed change logs not yet applied at a site"),
    ("backlog_bytes", "replication_backlog_bytes", "Bytes of the writes not yet applied at a site"),
    ("rpo_seconds", "replication_rpo_seconds", "Age of the oldest record not yet applied at a site (0 when none)"),
    ("failed_entries", "replication_failed_entries", "Entries in a replication site's failed list"),
    ("paused", "replication_paused", "1 while a replication site is paused (replicate pause, POST /_/crr/pause)"),
)


def _replication_families(sites: Mapping[str, Mapping[str, object]]) -> Iterator[Metric]:
    """Each replication site's completions, failures, backlog, RPO and pause, labelled ``site``."""
    for table, family in ((REPLICATION_COUNTERS, CounterMetricFamily), (REPLICATION_GAUGES, GaugeMetricFamily)):
        for key, name, doc in table:
            metric = family(PREFIX + name, doc, labels=["site"])
            for site, stats in sorted(sites.items()):
                value = stats.get(key)
                if isinstance(value, bool):
                    metric.add_metric([site], 1.0 if value else 0.0)
                elif (v := _number(stats, key)) is not None:
                    metric.add_metric([site], v)
            yield metric


def make_registry(metrics: ChangelogMetrics, *, process: bool = True) -> CollectorRegistry:
    """A fresh registry holding ``metrics`` (and the standard ``process_*`` metrics)."""
    registry = CollectorRegistry()
    registry.register(metrics)
    if process:
        ProcessCollector(registry=registry)
    return registry
