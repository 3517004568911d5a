"""Prometheus gauges of the usage totals, bounded: the top ``metrics_top`` buckets by bytes plus
the opt-in ``metrics_buckets``, so a zone with a million buckets does not make a million series.
Also this process's usage counters (state shard writes, shards skipped as applied before, guard
failures, writes of unknown size). A ``prometheus_client`` custom collector read at scrape time;
the totals are read from the state shards at most every ``ttl`` seconds (every shard's ``t.``
keys: a scrape must not page them again and again)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from changelog.consumers.usage.model import Layout, Totals
from changelog.consumers.usage.query import Query, bucket_totals
from changelog.pipeline.store import ObjectStore

PREFIX = "rgw_changelog_usage_"
# Seconds a reading of every bucket's totals is reused across scrapes.
TOTALS_TTL_S = 30.0
COUNTERS = (
    ("shard_writes", "state_writes", "Usage state shard writes (one per log object and shard it touches)"),
    ("shards_skipped", "state_skips", "Usage state shards skipped because they had the log object already"),
    (
        "guard_failures",
        "guard_failures",
        "Usage state writes refused because another process wrote the shard",
    ),
    ("unknown_sizes", "unknown_sizes", "Write records without a size (counted as 0 bytes until replaced)"),
)


def qualified(t: Totals) -> str:
    return f"{t.tenant}/{t.bucket}" if t.tenant else t.bucket


def chosen(totals: Sequence[Totals], top: int, wanted: Sequence[str]) -> list[Totals]:
    """The ``top`` buckets by bytes (then name), plus those named in ``wanted``."""
    ranked = sorted(totals, key=lambda t: (-t.nbytes, t.tenant, t.bucket))
    keep = {qualified(t) for t in ranked[:top]} | set(wanted)
    return [t for t in ranked if qualified(t) in keep]


class UsageMetrics:
    """The collector: ``rgw_changelog_usage_bucket_{objects,bytes}{tenant,bucket}`` and the
    consumer's counters (``stats``: ``changelog.consumers.usage.consumer.UsageState.snapshot``)."""

    def __init__(
        self,
        store: ObjectStore,
        layout: Layout,
        *,
        top: int,
        buckets: Sequence[str] = (),
        stats: Callable[[], Mapping[str, int]] | None = None,
        ttl: float = TOTALS_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.layout = layout
        self.top = top
        self.buckets = tuple(buckets)
        self.stats = stats
        self.ttl = ttl
        self._monotonic = monotonic
        self._mu = threading.Lock()
        self._cached: tuple[float, list[Totals]] | None = None

    def _totals(self) -> list[Totals]:
        with self._mu:
            now = self._monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl:
                self._cached = (now, bucket_totals(self.store, self.layout, Query()))
            return self._cached[1]

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None, {})

    def collect(self) -> Iterator[Metric]:
        yield from self._families(
            chosen(self._totals(), self.top, self.buckets), dict(self.stats() if self.stats else {})
        )

    def _families(self, totals: list[Totals] | None, counts: Mapping[str, int]) -> Iterator[Metric]:
        objects = GaugeMetricFamily(PREFIX + "bucket_objects", "Objects stored in a bucket (as bucket stats counts them)",
                                    labels=["tenant", "bucket"])  # fmt: skip
        nbytes = GaugeMetricFamily(PREFIX + "bucket_bytes", "Bytes stored in a bucket (bucket stats' size)",
                                   labels=["tenant", "bucket"])  # fmt: skip
        for t in totals or []:
            objects.add_metric([t.tenant, t.bucket], t.objects)
            nbytes.add_metric([t.tenant, t.bucket], t.nbytes)
        yield objects
        yield nbytes
        for key, name, doc in COUNTERS:
            counter = CounterMetricFamily(PREFIX + name, doc)
            if totals is not None:
                counter.add_metric([], counts.get(key, 0))
            yield counter
