"""What the records of one log object do to one usage state shard: a pure computation over the
values read from the shard, giving the keys to set and remove (``ShardBatch``). The consumer
reads, runs this, and writes the result in one guarded op; replaying the same records on the
same values gives the same changes, which is what makes a rebuild from the logs equal.

Counting follows ``radosgw-admin bucket stats`` (``rgw.main``), as measured on Pacific, Reef
and Tentacle (docs/design.md §13): every live object version counts once with its size (the
null version too); a delete marker counts nothing; a write of a key version that exists
replaces it (an unversioned overwrite, a null version rewritten while versioning is suspended);
a null delete marker replaces the null version; deleting a version removes it; a completed
multipart upload and a copy are one write of the final size. Parts of uploads in progress, which
radosgw counts until the upload completes or is aborted, are not in the logs and not counted.

Intervals are by the record's mutation time (``data_time_us``: capped at its arrival time plus
``CLOCK_SKEW_US``, so one radosgw host with a clock far ahead can neither move every retention
horizon nor count its writes in a future interval). A write, delete or marker adds to the deltas of
its interval at each resolution; a baseline record (a bucket's objects before the follower
started) seeds the totals and the inventory only, so a baseline of an object already known
replaces it instead of counting it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from changelog.consumers.usage.model import (
    APPLIED_KEY,
    DELTA_FIELDS,
    MAXTIME_KEY,
    SERIES_PREFIX,
    Delta,
    Entry,
    Layout,
    Totals,
    horizon_key,
    inventory_key,
    inventory_prefix,
    prefix_end,
    series_key,
    series_prefix,
    totals_key,
)
from changelog.pipeline.logformat import LogRecord
from changelog.pipeline.store import ObjectStore, omap_iter

# (key, raw value) pairs of a prefix, paged from the store.
PrefixReader = Callable[[str], Iterator[tuple[str, bytes]]]
# (bucket id, totals) of every bucket a shard holds.
StoredTotals = Callable[[], Iterable[tuple[str, Totals]]]

OBJECT_OPS = ("write", "delete", "delete_marker")

# How far a record's ``time`` (radosgw's clock) may run ahead of its ``recorded`` time (the
# recorder's clock when it arrived) before the arrival time stands in for it. A mutation is
# recorded after it happens, so a later ``time`` is clock skew; an hour spares any skew NTP
# leaves, and costs retention at most an hour early (retentions are days). Both times are in the
# logs, so a replay computes the same.
CLOCK_SKEW_US = 3600 * 1_000_000


@dataclass
class Changes:
    """One shard's write: keys to set, keys to remove, ranges to remove."""

    set: dict[str, bytes] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    remove_ranges: list[tuple[str, str]] = field(default_factory=list)
    unknown_sizes: int = 0
    # Retention horizons moved by this write.
    horizons: dict[int, int] = field(default_factory=dict)


# Delta fields by position (``model.DELTA_FIELDS``).
OBJECTS_ADDED, BYTES_ADDED, OBJECTS_REMOVED, BYTES_REMOVED, WRITES, DELETES, MARKERS = range(
    len(DELTA_FIELDS)
)


@dataclass(frozen=True, slots=True)
class _Rec:
    """A record with the keys it needs: its bucket id, times, inventory key (None for a bucket
    op) and interval keys (one per resolution)."""

    rec: LogRecord
    bid: str
    t_us: int
    rec_us: int
    inv: str | None
    series: tuple[str, ...]


def interval_start(t_us: int, res: int) -> int:
    return (t_us // 1_000_000) // res * res


def data_time_us(r: LogRecord) -> int:
    """The time a record counts at (its interval, and the data time that drives retention):
    its mutation time, but no later than its arrival + ``CLOCK_SKEW_US``."""
    return min(r.time_us, r.recorded_us + CLOCK_SKEW_US)


class ShardBatch:
    """The records of one log object that fall in one state shard, applied to what the shard
    holds: ``keys()`` to read, ``load`` their values, ``apply``, then ``changes``."""

    def __init__(self, layout: Layout, records: Sequence[LogRecord]) -> None:
        self.layout = layout
        self.max_us = 0
        self._inv: dict[str, Entry | None] = {}
        self._totals: dict[str, Totals | None] = {}
        self._deltas: dict[str, Delta] = {}
        self._dirty: set[str] = set()
        self._unknown_sizes = 0
        self._prepared = [self._prepare(r) for r in records]

    def _prepare(self, r: LogRecord) -> _Rec:
        # Every key a record needs, computed once (time parsing and hashing are the hot path).
        bid = self.layout.shard(r.tenant or "", r.bucket)[1]
        t_us = data_time_us(r)
        inv = inventory_key(bid, r.key, r.version_id) if r.op in OBJECT_OPS and r.key is not None else None
        series = tuple(series_key(res, bid, interval_start(t_us, res)) for res in self.layout.resolutions)
        return _Rec(r, bid, t_us, r.recorded_us, inv, series)

    def keys(self) -> list[str]:
        """Every key the records need read (inventory entries, totals, the intervals they touch)."""
        out: set[str] = set()
        for p in self._prepared:
            out.add(totals_key(p.bid))
            if p.inv is not None:
                out.add(p.inv)
            out.update(p.series)
        return sorted(out)

    def load(self, values: Mapping[str, bytes], keys: Iterable[str], *, max_us: int) -> None:
        """The stored values of ``keys`` (absent ones are not in ``values``)."""
        self.max_us = max_us
        for k in keys:
            raw = values.get(k)
            if k.startswith(SERIES_PREFIX):
                self._deltas[k] = Delta.decode(raw) if raw is not None else Delta()
            elif k.startswith("t."):
                self._totals[k] = Totals.decode(raw) if raw is not None else None
            else:
                self._inv[k] = Entry.decode(raw) if raw is not None else None

    # ------------------------------------------------------------------ applying

    def apply(self, read_prefix: PrefixReader) -> None:
        for p in self._prepared:
            self._apply_one(p, read_prefix)

    def _apply_one(self, p: _Rec, read_prefix: PrefixReader) -> None:
        r = p.rec
        self.max_us = max(self.max_us, p.t_us)
        tot = self._totals_of(p)
        tot.changed_us = max(tot.changed_us, p.t_us)
        if r.op == "bucket_create":
            tot.live = True
            return
        if r.op == "bucket_delete":
            self._drop_bucket(p, tot, read_prefix)
            return
        if p.inv is None:
            return
        tot.live = True
        old = self._inv.get(p.inv)
        if r.op == "write":
            if r.size is None:
                self._unknown_sizes += 1
            self._replace(p, tot, p.inv, old, Entry(r.size or 0, False, p.rec_us))
            self._count(p, WRITES)
        elif r.op == "delete":
            self._replace(p, tot, p.inv, old, None)
            self._count(p, DELETES)
        else:
            self._replace(p, tot, p.inv, old, Entry(0, True, p.rec_us))
            self._count(p, MARKERS)

    def _totals_of(self, p: _Rec) -> Totals:
        key = totals_key(p.bid)
        tot = self._totals.get(key)
        if tot is None:
            tot = Totals(p.rec.tenant or "", p.rec.bucket)
            self._totals[key] = tot
        self._dirty.add(key)
        return tot

    def _replace(self, p: _Rec, tot: Totals, k: str, old: Entry | None, new: Entry | None) -> None:
        """``k`` goes from ``old`` to ``new``: the totals follow, and (but for a baseline) the
        interval's objects and bytes added and removed."""
        if old is not None:
            if old.marker:
                tot.markers -= 1
            else:
                tot.objects -= 1
                tot.nbytes -= old.size
                self._count(p, OBJECTS_REMOVED)
                self._count(p, BYTES_REMOVED, old.size)
        if new is not None:
            if new.marker:
                tot.markers += 1
            else:
                tot.objects += 1
                tot.nbytes += new.size
                self._count(p, OBJECTS_ADDED)
                self._count(p, BYTES_ADDED, new.size)
        self._inv[k] = new
        self._dirty.add(k)

    def _count(self, p: _Rec, field_no: int, n: int = 1) -> None:
        if p.rec.baseline or n == 0:
            return
        for key in p.series:
            delta = self._deltas.get(key)
            if delta is None:
                delta = self._deltas[key] = Delta()
            delta.values[field_no] += n
            self._dirty.add(key)

    def _drop_bucket(self, p: _Rec, tot: Totals, read_prefix: PrefixReader) -> None:
        """A deleted bucket holds nothing: drop every entry recorded before the delete (S3 deletes
        only empty buckets, so these are entries whose deletes died with the bucket's index). An
        entry recorded after it belongs to the bucket's next lifetime and stays."""
        prefix = inventory_prefix(p.bid)
        entries: dict[str, Entry | None] = {k: Entry.decode(v) for k, v in read_prefix(prefix)}
        entries.update({k: e for k, e in self._inv.items() if k.startswith(prefix)})
        for k, e in sorted(entries.items()):
            if e is not None and e.recorded_us <= p.rec_us:
                self._replace(p, tot, k, e, None)
        tot.live = tot.objects > 0 or tot.markers > 0

    # ------------------------------------------------------------------ the write

    def changes(self, applied: str, *, horizons: Mapping[int, int], stored: StoredTotals) -> Changes:
        """The shard's write for log object ``applied``: every dirty key, the new data time, and
        pruning of intervals past their retention (``horizons``: what is pruned already;
        ``stored``: every bucket in the shard, read only when a horizon moves)."""
        out = Changes(unknown_sizes=self._unknown_sizes)
        for key in sorted(self._dirty):
            if key.startswith(SERIES_PREFIX):
                out.set[key] = self._deltas[key].encode()
            elif key.startswith("t."):
                tot = self._totals[key]
                if tot is not None:
                    out.set[key] = tot.encode()
            else:
                entry = self._inv[key]
                if entry is None:
                    out.remove.append(key)
                else:
                    out.set[key] = entry.encode()
        out.set[APPLIED_KEY] = applied.encode()
        out.set[MAXTIME_KEY] = str(self.max_us).encode()
        self._prune(out, horizons, stored)
        return out

    def _prune(self, out: Changes, horizons: Mapping[int, int], stored: StoredTotals) -> None:
        moved = {
            res: cut
            for res in self.layout.resolutions
            if (cut := self.layout.horizon(self.max_us, res)) > horizons.get(res, 0)
        }
        if not moved:
            return
        out.horizons.update(moved)
        buckets: dict[str, Totals | None] = dict(stored())
        buckets.update((k[2:], t) for k, t in self._totals.items())
        for bid, tot in sorted(buckets.items()):
            for res, cut in moved.items():
                out.remove_ranges.append((series_prefix(res, bid), series_key(res, bid, cut)))
            if tot is not None and not tot.live and self._aged_out(tot):
                # A deleted bucket leaves with its last interval at every resolution (after its
                # totals go, nothing would prune what is left of its series).
                out.set.pop(totals_key(bid), None)
                out.remove.append(totals_key(bid))
                for res in self.layout.resolutions:
                    prefix = series_prefix(res, bid)
                    out.remove_ranges.append((prefix, prefix_end(prefix)))
                    # Ranges go before ``set`` in an op: a late record's interval goes too.
                    for key in [k for k in out.set if k.startswith(prefix)]:
                        del out.set[key]
        for res, cut in moved.items():
            out.set[horizon_key(res)] = str(cut).encode()
            # Ranges go before ``set`` in an op: an interval set now but past the horizon is dropped.
            for key in [k for k in out.set if k.startswith(SERIES_PREFIX) and k.startswith(f"s.{res:06d}.")]:
                if int(key.rsplit(".", 1)[1]) < cut:
                    del out.set[key]

    def _aged_out(self, tot: Totals) -> bool:
        """Whether a bucket's last interval is past the horizon at every resolution."""
        return all(
            interval_start(tot.changed_us, res) < self.layout.horizon(self.max_us, res)
            for res in self.layout.resolutions
        )


def prefix_reader(store: ObjectStore, oid: str) -> PrefixReader:
    """The keys of ``oid`` with a prefix, paged."""

    def read(prefix: str) -> Iterator[tuple[str, bytes]]:
        return omap_iter(store, oid, end_before=prefix_end(prefix), prefix=prefix)

    return read


def stored_totals(read_prefix: PrefixReader) -> Iterator[tuple[str, Totals]]:
    """(bucket id, totals) of every bucket a shard holds."""
    for k, v in read_prefix("t."):
        yield k[2:], Totals.decode(v)


__all__ = [
    "Changes",
    "PrefixReader",
    "ShardBatch",
    "StoredTotals",
    "data_time_us",
    "interval_start",
    "prefix_reader",
    "stored_totals",
]
