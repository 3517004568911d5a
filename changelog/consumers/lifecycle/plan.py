"""Reading the schedule back: ``lifecycle plan`` (a dry run: what would be done, when, to which
object version, under which rule) and ``lifecycle status`` (what is due, scheduled and failed).
Read straight from the schedule shards, without the lease: a reader may see a log object applied
to some shards and not yet to others.

The plan lists what the schedule holds, before the executor's re-check: an entry whose object
changed after its record (the change not yet in the logs the consumer has applied) is in the plan
and is dropped, not acted on, when due.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator

from changelog.consumers.lifecycle.model import (
    DUE_PREFIX,
    FAILED_PREFIX,
    DueEntry,
    Layout,
    due_end,
    due_time,
)
from changelog.pipeline.store import ObjectStore, omap_iter
from changelog.times import fmt_time


def _entries(
    store: ObjectStore, layout: Layout, n: int, until_us: int | None
) -> Iterator[tuple[str, DueEntry]]:
    end = due_end(until_us) if until_us is not None else None
    for k, raw in omap_iter(store, layout.oid(n), end_before=end, prefix=DUE_PREFIX):
        yield k, DueEntry.decode(raw)


def plan(
    store: ObjectStore,
    layout: Layout,
    *,
    bucket: str | None = None,
    until_us: int | None = None,
    limit: int = 1000,
) -> list[dict[str, object]]:
    """Up to ``limit`` scheduled actions, earliest first: of ``bucket`` (``tenant/bucket`` for a
    tenant's; None: every bucket), due up to ``until_us`` (None: any time)."""
    streams: list[Iterator[tuple[str, DueEntry]]]
    if bucket is not None:
        tenant, _, name = bucket.rpartition("/")
        n, bid = layout.shard(tenant, name)
        streams = [((k, e) for k, e in _entries(store, layout, n, until_us) if k.split(".")[2] == bid)]
    else:
        streams = [_entries(store, layout, n, until_us) for n in range(layout.shards)]
    out: list[dict[str, object]] = []
    for k, e in heapq.merge(*streams, key=lambda ke: ke[0]):
        if len(out) >= limit:
            break
        out.append(
            {
                "due": fmt_time(due_time(k)),
                "action": e.action.value,
                "tenant": e.tenant or None,
                "bucket": e.bucket,
                "key": e.key,
                "version_id": e.ver,
                "rule": e.rule,
                "storage_class": e.storage_class,
            }
        )
    return out


def status(store: ObjectStore, layout: Layout, *, now_us: int) -> dict[str, object]:
    """What is due now, scheduled later and failed, by action; the next due time. Pages every
    shard's due and failed entries (its cost grows with the schedule)."""
    due_now: Counter[str] = Counter()
    later: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    next_due: int | None = None
    for n in range(layout.shards):
        oid = layout.oid(n)
        for k, e in _entries(store, layout, n, None):
            t = due_time(k)
            if t <= now_us:
                due_now[e.action.value] += 1
            else:
                later[e.action.value] += 1
                next_due = t if next_due is None else min(next_due, t)
        for k, _ in omap_iter(store, oid, prefix=FAILED_PREFIX):
            failed[k.rsplit(".", 1)[1]] += 1
    return {
        "due_now": sum(due_now.values()),
        "scheduled_later": sum(later.values()),
        "failed": sum(failed.values()),
        "by_action": {
            a: {"due_now": due_now[a], "later": later[a], "failed": failed[a]}
            for a in sorted(set(due_now) | set(later) | set(failed))
        },
        "next_due": fmt_time(next_due),
    }
