"""The status document (``rgw-changelog status --json``, ``GET /_/status``): the index per shard,
the leases, the collector's persisted state, the follower's markers, the target's newest log
object and watermark, each consumer's checkpoint, and each replication site's state (paused,
checkpoint, lease, failed entries). Read directly from the stores, without a lease; a running
``serve`` adds its live counters on top (``changelog.service``), and each site's backlog.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, TypedDict

from changelog.errors import ChangelogError, PermanentError, one_line
from changelog.pipeline.control import COLLECTOR_LOCK, SHARD_LOCK
from changelog.progress import Progress
from changelog.times import fmt_time

if TYPE_CHECKING:
    from changelog.config import Config
    from changelog.pipeline.collector import PassResult
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.store import LockInfo
    from changelog.pipeline.targets import Target

# A JSON document as the status routes and `--json` print it.
Doc = dict[str, object]

# `status` answers while the target hangs (a frozen radosgw: the S3 client's read timeout and
# retries add up to about 4 minutes there): the target's part gets this long, then shows an error.
TARGET_STATUS_TIMEOUT_S = 10.0


class ShardDoc(TypedDict):
    """One shard in `status` and `shards list`."""

    shard: int
    oid: str
    entries: int
    oldest: str | None
    oldest_age_s: float | None
    floor: str | None
    lease: Doc | None


def lock_doc(info: LockInfo | None, now: float) -> Doc | None:
    """A lock as status shows it: holder, cookie, description, expiry (RFC 3339 and seconds)."""
    if info is None:
        return None
    expires = info.expires_at
    return {
        "holder": info.holder,
        "cookie": info.cookie,
        "description": info.description,
        "expires": fmt_time(expires * 1_000_000) if expires else None,
        "expires_in": None if expires is None else round(expires - now, 3),
    }


def shard_docs(index: ChangeIndex, *, now: float | None = None) -> list[ShardDoc]:
    """Per-shard facts for `status` and `shards list`: entries, oldest entry and its age, floor,
    drain lease."""
    now = time.time() if now is None else now
    out: list[ShardDoc] = []
    with Progress("scan shards", total=index.shards, unit="shards") as bar:
        for n in range(index.shards):
            st = index.stats(n)
            oid = index.shard_oid(n)
            out.append(
                {
                    "shard": n,
                    "oid": oid,
                    "entries": st.entries,
                    "oldest": fmt_time(st.oldest_us),
                    "oldest_age_s": None if st.oldest_us is None else round(now - st.oldest_us / 1e6, 3),
                    "floor": fmt_time(st.floor_us) if st.floor_us else None,
                    "lease": lock_doc(index.store.lock_info(oid, SHARD_LOCK), now),
                }
            )
            bar.update()
    return out


def collector_doc(index: ChangeIndex) -> Doc:
    """The collector's persisted state and its pending commits (``Collector.read_state``);
    with ``[scale] partitioned`` also ``streams``: who holds which stream, each one's state
    (``collector_streams.streams_state``)."""
    from changelog.pipeline.collector import Collector
    from changelog.pipeline.collector_streams import streams_state

    state, pending = Collector.read_state(index)
    doc: Doc = {
        "generation": state.generation,
        "last_cutoff": fmt_time(state.last_cutoff_us) if state.last_cutoff_us else None,
        "last_object": state.last_object,
        "watermark": fmt_time(state.watermark_us) if state.watermark_us else None,
        "pending_commits": [p.name for p in pending],
    }
    streams = streams_state(index)
    if streams["partitioned"]:
        doc["streams"] = streams
    return doc


def follower_doc(index: ChangeIndex) -> Doc | None:
    """The RGW follower's persisted state, or the one-line reason it cannot be read."""
    from rgw_module.follower import follower_state
    from rgw_module.follower_partitions import partitioned_state

    try:
        parts = partitioned_state(index)
        return parts if parts["partitioned"] else follower_state(index)
    except ChangelogError as ex:
        return {"error": one_line(str(ex))}
    except Exception as ex:  # noqa: BLE001 - status must answer with a message, not a traceback
        return {"error": one_line(str(PermanentError(f"cannot read the follower state: {ex}")))}


def target_doc(target: Target, *, timeout: float | None = None) -> Doc:
    """The target's newest log object and watermark, or the one-line reason they cannot be read.
    The read gets ``timeout`` (``TARGET_STATUS_TIMEOUT_S``): past it the status says so instead
    of waiting out the S3 client's own timeouts and retries."""
    from changelog.pipeline.reader import target_status

    got: list[Doc | BaseException] = []

    def read() -> None:
        try:
            got.append(dict(target_status(target)))
        except ChangelogError as ex:
            got.append({"error": one_line(str(ex))})
        except BaseException as ex:  # noqa: BLE001 - raised again in the caller's thread
            got.append(ex)

    limit = TARGET_STATUS_TIMEOUT_S if timeout is None else timeout
    reader = threading.Thread(target=read, name="status-target", daemon=True)
    reader.start()
    reader.join(limit)
    if not got:
        # The thread is left to finish on its own: a read cannot be cancelled.
        return {"error": f"no answer within {limit:g} s (the target is hung or unreachable)"}
    if isinstance(got[0], BaseException):
        raise got[0]
    return got[0]


def replication_doc(cfg: Config, index: ChangeIndex, *, now: float | None = None) -> dict[str, Doc]:
    """Every configured replication site as the index's store has it (paused, checkpoint, lease,
    failed entries: ``changelog.consumers.replication.api.stored_doc``), by name."""
    from changelog.consumers.replication.api import stored_doc

    return {site.name: stored_doc(index, site.name, now=now) for site in cfg.replication.sites}


def _backlog_text(b: object) -> str:
    if not isinstance(b, dict):
        return "backlog unknown (no serve answered)"
    rpo = b.get("rpo_seconds")
    return f"backlog {b.get('records')} records ({b.get('bytes')} bytes)" + (f", rpo {rpo:.0f}s" if rpo else "")


def replication_lines(doc: Doc) -> list[str]:
    """``rgw-changelog status``'s text for the ``replication`` block: one line per site."""
    sites = doc.get("replication")
    if not isinstance(sites, dict):
        return []
    out = []
    for name, d in sorted(sites.items()):
        if not isinstance(d, dict):
            continue
        if d.get("error"):
            out.append(f"replication {name}: unreadable: {d['error']}")
            continue
        cp = d.get("checkpoint") if isinstance(d.get("checkpoint"), dict) else {}
        assert isinstance(cp, dict)
        lease = d.get("lease")
        paused = "paused" + (f" until {d['resume_at']}" if d.get("resume_at") else "") if d.get("paused") else "running"
        out.append(
            f"replication {name}: {paused}, checkpoint {cp.get('after') or '-'}, "
            f"lease {lease.get('holder') if isinstance(lease, dict) else 'none'}, "
            f"{d.get('failed_entries', 0)} failed entries, {_backlog_text(d.get('backlog'))}"
        )
    return out


def streams_lines(doc: Doc) -> tuple[str, list[list[str]]] | None:
    """``rgw-changelog status``'s text for a partitioned collector (``collector.streams``): a
    summary line (the count, the readers' bound ``readable_until``, the combined watermark, the
    streams nobody holds) and a table's rows, one per stream: its number, its holder (the
    instance, or ``unheld``), its seq, its last committed object, its pending commits and the
    time it committed through. None when unpartitioned."""
    coll = doc.get("collector")
    streams = coll.get("streams") if isinstance(coll, dict) else None
    if not isinstance(streams, dict) or not streams.get("partitioned"):
        return None
    unheld = streams.get("unheld")
    line = (
        f"collector streams: {streams.get('count')}, readable until {streams.get('readable_until') or '-'}, "
        f"watermark {streams.get('watermark') or '-'}" + (f", unheld: {unheld}" if unheld else "")
    )
    rows = []
    by_partition = streams.get("by_partition")
    items = by_partition.items() if isinstance(by_partition, dict) else []
    for n, d in sorted(items, key=lambda kv: int(kv[0])):
        if isinstance(d, dict):
            rows.append(
                [
                    str(n),
                    str(d.get("holder") or "unheld"),
                    str(d.get("seq", "-")),
                    str(d.get("last_object") or "-"),
                    str(len(d.get("pending") or [])),
                    str(d.get("through") or "-"),
                ]
            )
    return line, rows


STREAMS_HEADER = ["STREAM", "HOLDER", "SEQ", "LAST OBJECT", "PENDING", "COMMITTED THROUGH"]


def collect_status(cfg: Config, index: ChangeIndex, target: Target | None) -> Doc:
    """What `status --json` prints, read directly from the index and the target."""
    from changelog.consumers.framework import consumers_doc

    now = time.time()
    shards = shard_docs(index, now=now)
    entries = sum(d["entries"] for d in shards)
    ages = [d["oldest_age_s"] for d in shards if d["oldest_age_s"] is not None]
    target_info: Doc = {"url": cfg.target.url}
    if target is not None:
        target_info.update(target_doc(target))
    doc: Doc = {
        "from": "direct",
        "index": {
            "backend": cfg.index.backend,
            "prefix": index.prefix,
            "shards": index.shards,
            "mode": index.mode,
            "entries": entries,
            "oldest_age_s": max(ages) if ages else None,
        },
        "collector_lease": lock_doc(index.store.lock_info(index.control_oid, COLLECTOR_LOCK), now),
        "collector": collector_doc(index),
        "shards": shards,
        "follower": follower_doc(index),
        "consumers": consumers_doc(index, now=now),
        "target": target_info,
    }
    if cfg.replication.sites:
        doc["replication"] = replication_doc(cfg, index, now=now)
    if cfg.usage.enabled:
        doc["usage"] = usage_doc(cfg, index)
    return doc


def usage_doc(cfg: Config, index: ChangeIndex) -> Doc:
    """With ``[usage] enabled``: the live buckets the usage state counts and their sums (the
    checkpoint is among the consumers)."""
    from changelog.consumers.usage.consumer import layout_of
    from changelog.consumers.usage.query import Query, bucket_totals

    try:
        totals = bucket_totals(index.store, layout_of(cfg.usage, index.prefix), Query())
    except ChangelogError as ex:
        return {"error": one_line(str(ex))}
    return {"buckets": len(totals), "objects": sum(t.objects for t in totals), "bytes": sum(t.nbytes for t in totals)}


def pass_doc(result: PassResult) -> Doc:
    """A collector pass's result as `collect --once --json`, `flush --json` and ``POST /_/flush``
    print it: the dataclass's fields, with the ``*_us`` times also in RFC 3339."""
    import dataclasses

    doc: Doc = dataclasses.asdict(result)
    for k in ("cutoff_us", "watermark_us"):
        if k in doc:
            v = doc[k]
            doc[k[:-3]] = fmt_time(v) if isinstance(v, int | float) else None
    return doc
