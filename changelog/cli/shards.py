"""``rgw-changelog shards list|dump|trim``: inspect the index shards and trim them by hand, under
the same drain lease the collector takes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import click

from changelog import status
from changelog.cli.base import (
    TIME,
    cli,
    emit_json,
    emit_line,
    json_option,
    out,
    state,
    table,
)
from changelog.errors import LockBusy
from changelog.pipeline.control import SHARD_LOCK
from changelog.pipeline.index import OP_KEYS, ChangeIndex, Entry
from changelog.pipeline.lease import Lease, make_cookie
from changelog.progress import Progress
from changelog.times import fmt_age, fmt_time

logger = logging.getLogger("changelog.cli")

# --------------------------------------------------------------------------- shards


def _check_shard(index: ChangeIndex, shard: int) -> None:
    if not 0 <= shard < index.shards:
        raise click.BadParameter(
            f"no shard {shard}: this index has shards 0..{index.shards - 1}", param_hint="'SHARD'"
        )


def lease_text(doc: object) -> str:
    if not isinstance(doc, dict):
        return "-"
    left = doc.get("expires_in")
    return f"{doc['holder']} ({'no expiry' if left is None else f'{left:.0f}s left'})"


@cli.group("shards")
def shards_group() -> None:
    """Inspect, dump and trim the index shards (like `radosgw-admin bilog list/trim`)."""


@shards_group.command("list")
@json_option
def shards_list(as_json: bool) -> None:
    """Each shard's entry count, oldest entry, floor and drain lease."""
    index = state().index()
    docs = status.shard_docs(index)
    if as_json:
        emit_json(docs)
        return
    table(
        [
            [str(d["shard"]), d["oid"], str(d["entries"]), d["oldest"] or "-", fmt_age(d["oldest_age_s"]),
             lease_text(d["lease"])]
            for d in docs
        ],
        ["SHARD", "OBJECT", "ENTRIES", "OLDEST", "AGE", "DRAIN LEASE"],
    )  # fmt: skip


def _dump_doc(entry: Entry) -> dict[str, object]:
    from changelog.pipeline.logformat import record_of

    return {**record_of(entry).to_dict(), "shard": entry.shard, "index_key": entry.key}


@shards_group.command("dump")
@click.argument("shard", type=int)
@click.option("--since", type=TIME, help="Entries recorded at or after this time.")
@click.option("--until", type=TIME, help="Entries recorded before this time.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
def shards_dump(shard: int, since: int | None, until: int | None, limit: int | None) -> None:
    """Print a shard's entries as JSON Lines, in key order (recording time).

    Each line is a change-log record plus "shard" and "index_key" (usable with `shards trim --upto`).
    """
    index = state().index()
    _check_shard(index, shard)
    sink = out()
    n = 0
    with Progress(f"dump shard {shard}", unit="entries") as bar:
        for entry in index.scan(shard, since_us=since, until_us=until):
            line = emit_line(_dump_doc(entry))
            sink.write(line)
            n += 1
            bar.update(1, nbytes=len(line))
            if limit is not None and n >= limit:
                break
    sink.flush()
    logger.info("dumped %d entries of shard %d", n, shard)


def _trim_candidates(index: ChangeIndex, shard: int, before: int | None, upto: str | None) -> Iterator[Entry]:
    if before is not None:
        yield from index.scan(shard, until_us=before)
        return
    assert upto is not None
    for entry in index.scan(shard):
        if entry.key > upto:
            return
        yield entry


@shards_group.command("trim")
@click.argument("shard", type=int)
@click.option("--before", type=TIME, help="Trim entries recorded before this time.")
@click.option("--upto", metavar="KEY", help="Trim entries up to and including this index key (from `shards dump`).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def shards_trim(shard: int, before: int | None, upto: str | None, yes: bool) -> None:
    """Remove entries from a shard, without writing them to the change log.

    Runs under the shard's drain lease (so never while a collector drains that shard), removes
    exactly the keys it counted, each removal fenced by the lease.
    """
    from changelog.pipeline import keys

    if (before is None) == (upto is None):
        raise click.UsageError("give exactly one of --before TIME or --upto KEY")
    if upto is not None:
        try:
            keys.time_of(upto)
        except ValueError:
            raise click.BadParameter(f"{upto!r} is not an index key (d.<time>.<obj>.<ver>.<event>)", param_hint="'--upto'") from None
    st = state()
    index = st.index()
    _check_shard(index, shard)
    lease = _drain_lease(index, shard, ttl=max(st.config.collector.lease_ttl, 10.0))
    try:
        counted = _count(index, shard, before, upto)
        if counted is None:
            click.echo(f"shard {shard}: nothing to trim", err=True)
            return
        count, first, last = counted
        click.echo(
            f"shard {shard}: {count} entries recorded from {fmt_time(first.time_us)} to {fmt_time(last.time_us)} "
            f"(keys {first.key} .. {last.key})",
            err=True,
        )
        if not yes and not _confirm(count):
            click.echo("nothing trimmed", err=True)
            return
        removed = _remove(index, shard, lease, _trim_candidates(index, shard, before, upto), last.key, count)
        click.echo(f"shard {shard}: trimmed {removed} entries", err=True)
    finally:
        lease.release()


def _drain_lease(index: ChangeIndex, shard: int, *, ttl: float) -> Lease:
    """The shard's drain lease, taken and renewing (``LockBusy`` while a collector drains it)."""
    oid = index.shard_oid(shard)
    lease = Lease(index.store, oid, name=SHARD_LOCK, ttl=ttl, description="rgw-changelog shards trim", cookie=make_cookie("trim"))
    if not lease.take():
        info = index.store.lock_info(oid, SHARD_LOCK)
        who = lease_text(status.lock_doc(info, time.time())) if info else "another process"
        raise LockBusy(f"shard {shard} is being drained by {who}: stop the collector or try again later")
    return lease


def _count(index: ChangeIndex, shard: int, before: int | None, upto: str | None) -> tuple[int, Entry, Entry] | None:
    """How many entries a trim would remove, and the first and last of them."""
    count = 0
    first = last = None
    with Progress(f"count shard {shard}", unit="entries") as bar:
        for entry in _trim_candidates(index, shard, before, upto):
            count += 1
            first = first or entry
            last = entry
            bar.update()
    if first is None or last is None:
        return None
    return count, first, last


def _confirm(count: int) -> bool:
    try:
        return click.confirm(f"Trim these {count} entries? They will not reach the change log", err=True)
    except click.exceptions.Abort:
        raise click.UsageError("no confirmation (stdin closed): nothing trimmed; pass --yes to trim") from None


def _remove(index: ChangeIndex, shard: int, lease: Lease, entries: Iterator[Entry], last_key: str, count: int) -> int:
    """Remove ``entries`` up to ``last_key`` (never beyond what was counted and confirmed), a
    page at a time, each removal fenced by the lease."""
    removed = 0
    page: list[str] = []
    with Progress(f"trim shard {shard}", total=count, unit="entries") as bar:
        for entry in entries:
            if entry.key > last_key:
                break
            page.append(entry.key)
            if len(page) >= OP_KEYS:
                lease.check()
                index.remove(shard, page, fence=lease.ref)
                removed += len(page)
                bar.update(len(page))
                page = []
        if page:
            lease.check()
            index.remove(shard, page, fence=lease.ref)
            removed += len(page)
            bar.update(len(page))
    return removed
