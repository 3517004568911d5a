"""Reading usage back: the current totals of each bucket, and a bucket's interval series, as
``rgw-changelog usage show`` and ``GET /_/usage`` give them. Read straight from the state shards
(no lease needed; a reader may see a log object applied to some shards and not yet to others).

A series lists the intervals in ``[since, until)`` (no ``since``: from the oldest kept) in which something happened (empty intervals
are left out), each with its deltas and the bucket's ``objects`` and ``bytes`` at its end. End
totals are not stored: they are the current totals minus the deltas of every later interval,
exact even when a bucket's records arrive out of time order. An ``interval`` that is a multiple
of a stored resolution (the fine ``interval``, 1h, 1d) is summed from the coarsest one it fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from changelog.consumers.routes import Request, RouteError
from changelog.consumers.usage.apply import prefix_reader, stored_totals
from changelog.consumers.usage.model import (
    META_KEY,
    Delta,
    Layout,
    Totals,
    horizon_key,
    prefix_end,
    series_key,
    series_prefix,
    totals_key,
)
from changelog.errors import PermanentError
from changelog.pipeline.store import ObjectStore, omap_iter
from changelog.times import fmt_time, parse_time

# Longest series one request may ask for, in intervals (a year of 5-minute intervals).
MAX_INTERVALS = 366 * 288


@dataclass(frozen=True)
class Query:
    """What ``usage show`` and ``GET /_/usage`` ask: buckets (None: all) and, with ``since``, a
    series of ``interval`` seconds from ``since`` to ``until`` (µs; None: now)."""

    tenant: str | None = None
    bucket: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    interval: int | None = None


def split_bucket(name: str, tenant: str | None) -> tuple[str | None, str]:
    """``tenant/bucket`` or ``tenant:bucket`` (radosgw's two spellings) or a bare name."""
    for sep in ("/", ":"):
        if sep in name:
            t, b = name.split(sep, 1)
            return t, b
    return tenant, name


def _check_meta(store: ObjectStore, layout: Layout, raw: bytes | None) -> None:
    """Refuse a state made with another shard count or interval: a shard without ``meta`` is
    one never written, or one a larger shard count than the state's names; shard 0 tells."""
    layout.check_meta(raw)
    if raw is None:
        layout.check_meta(store.omap_get(layout.oid(0), [META_KEY]).get(META_KEY))


def stored_buckets(store: ObjectStore, layout: Layout, q: Query) -> list[Totals]:
    """The totals of every bucket ``q`` selects, live or deleted (kept until its series age
    out), by tenant and name."""
    if q.bucket is not None:
        tenant, bucket = split_bucket(q.bucket, q.tenant)
        n, bid = layout.shard(tenant or "", bucket)
        got = store.omap_get(layout.oid(n), [totals_key(bid), META_KEY])
        _check_meta(store, layout, got.get(META_KEY))
        raw = got.get(totals_key(bid))
        found = [Totals.decode(raw)] if raw is not None else []
    else:
        found = []
        for n in range(layout.shards):
            oid = layout.oid(n)
            _check_meta(store, layout, store.omap_get(oid, [META_KEY]).get(META_KEY))
            found.extend(t for _, t in stored_totals(prefix_reader(store, oid)))
    out = [t for t in found if q.tenant is None or t.tenant == q.tenant]
    return sorted(out, key=lambda t: (t.tenant, t.bucket))


def bucket_totals(store: ObjectStore, layout: Layout, q: Query) -> list[Totals]:
    """The current totals of every live bucket ``q`` selects, by tenant and name."""
    return [t for t in stored_buckets(store, layout, q) if t.live]


def series(store: ObjectStore, layout: Layout, totals: Totals, q: Query) -> list[dict[str, object]]:
    """``totals``' bucket's intervals in ``[q.since_us, q.until_us)`` (see the module doc)."""
    interval = q.interval or layout.interval
    res = layout.resolution_for(interval)
    n, bid = layout.shard(totals.tenant, totals.bucket)
    until_s = None if q.until_us is None else q.until_us // 1_000_000
    since_s = None if q.since_us is None else q.since_us // 1_000_000 // interval * interval
    if since_s is None or (until_s is not None and (until_s - since_s) // interval > MAX_INTERVALS):
        # No earlier interval is kept than the retention horizon: a range from before it (or
        # with no start) starts there.
        raw = store.omap_get(layout.oid(n), [horizon_key(res)]).get(horizon_key(res))
        oldest = int(raw or b"0") // interval * interval
        since_s = oldest if since_s is None else max(since_s, oldest)
    if until_s is not None and (until_s - since_s) // interval > MAX_INTERVALS:
        raise PermanentError(
            f"usage: more than {MAX_INTERVALS} intervals asked for; use a coarser --interval"
        )
    prefix = series_prefix(res, bid)
    groups: dict[int, Delta] = {}
    # Every interval from ``since`` on: the later ones are needed for the end totals.
    for k, raw in omap_iter(
        store,
        layout.oid(n),
        start_after=series_key(res, bid, since_s)[:-1],
        end_before=prefix_end(prefix),
        prefix=prefix,
    ):
        start = int(k.rsplit(".", 1)[1]) // interval * interval
        if start < since_s:
            continue
        groups.setdefault(start, Delta()).merge(Delta.decode(raw))
    objects, nbytes = totals.objects, totals.nbytes
    out: list[dict[str, object]] = []
    for start in sorted(groups, reverse=True):
        d = groups[start]
        if until_s is None or start < until_s:
            out.append({"start": fmt_time(start * 1_000_000), "objects": objects, "bytes": nbytes, **d.doc()})
        objects -= d.net_objects
        nbytes -= d.net_bytes
    out.reverse()
    return out


def usage_doc(store: ObjectStore, layout: Layout, q: Query) -> list[dict[str, object]]:
    """One entry per bucket: ``tenant``, ``bucket``, ``objects``, ``bytes`` (current totals),
    and with a time range ``interval`` (seconds) and ``series``. Without a range, the live
    buckets; with one, also each deleted bucket with intervals in it (``"deleted": true``: its
    history is still billed)."""
    ranged = q.since_us is not None or q.until_us is not None
    out: list[dict[str, object]] = []
    for t in stored_buckets(store, layout, q) if ranged else bucket_totals(store, layout, q):
        doc: dict[str, object] = t.doc()
        if ranged:
            found = series(store, layout, t, q)
            if not t.live:
                if not found:
                    continue
                doc["deleted"] = True
            doc["interval"] = q.interval or layout.interval
            doc["series"] = found
        out.append(doc)
    return out


def parse_interval(text: str) -> int:
    """``300``, ``300s``, ``5m``, ``1h``, ``1d``, ``1w`` -> seconds. Intervals are aligned on the
    epoch, so a week starts on a Thursday 00:00 UTC (1970-01-01 was one)."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not an interval (e.g. 300, 5m, 1h, 1d)") from None
    if value < 1 or value != int(value):
        raise ValueError(f"{text!r} is not a whole number of seconds >= 1")
    return int(value)


def query_of(params: Mapping[str, str], *, now: float | None = None) -> Query:
    """A ``Query`` from ``GET /_/usage``'s parameters (``bucket``, ``tenant``, ``since``,
    ``until``, ``interval``); bad values are ``RouteError(400)``."""
    unknown = sorted(set(params) - {"bucket", "tenant", "since", "until", "interval"})
    if unknown:
        raise RouteError(400, f"unknown parameter {unknown[0]!r} (bucket, tenant, since, until, interval)")
    try:
        since = parse_time(params["since"], now=now) if params.get("since") else None
        until = parse_time(params["until"], now=now) if params.get("until") else None
        interval = parse_interval(params["interval"]) if params.get("interval") else None
    except ValueError as ex:
        raise RouteError(400, str(ex)) from ex
    if interval is not None and since is None and until is None:
        since = 0
    return Query(params.get("tenant") or None, params.get("bucket") or None, since, until, interval)


class UsageRoute:
    """``GET /_/usage?bucket=&tenant=&since=&until=&interval=``: ``{"buckets": [...]}``, the
    list ``usage show --json`` prints."""

    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self.store = store
        self.layout = layout

    def __call__(self, req: Request) -> Mapping[str, object]:
        if req.method != "GET":
            raise RouteError(405, f"{req.method} not allowed on /_/usage; use GET")
        if req.path:
            raise RouteError(404, f"no route /_/usage/{req.path}")
        q = query_of(req.query)
        try:
            buckets = usage_doc(self.store, self.layout, q)
        except PermanentError as ex:
            raise RouteError(400, str(ex)) from ex
        return {"buckets": buckets}
