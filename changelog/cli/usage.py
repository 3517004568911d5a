"""``rgw-changelog usage [run|show]``: usage metrics (UTAPI.3) outside ``serve`` or beside it.

``run`` applies the committed logs to the usage state in the foreground (under the consumer's
lease, as in ``serve``; ``--once`` up to the collector's watermark, then exits). ``show`` reads
the state directly (no lease, whether or not a ``serve`` runs): ``--json`` without a time range
prints a JSON list with one object per bucket (``tenant``, ``bucket``, ``objects``, ``bytes``),
with a range each object also has its ``interval`` and ``series``. ``--consumer NAME`` works on
another usage state of the same index (e.g. a rebuild from the logs, compared with the live one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from changelog.cli.base import TIME, cli, emit_json, json_option, state, table
from changelog.consumers.usage.model import DEFAULT_CONSUMER, check_consumer_name
from changelog.errors import ChangelogError, PermanentError, TransientError, one_line

if TYPE_CHECKING:
    from changelog.consumers.framework import Checkpoint, ConsumerRunner

logger = logging.getLogger("changelog.cli")
FC = TypeVar("FC", bound=Callable[..., object])

# `run --once`: a step failing on a transient error is tried this many times in a row.
ONCE_ATTEMPTS = 4
ONCE_BACKOFF_S = 2.0


def _consumer_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A name that makes object names of its own (``model.check_consumer_name``)."""
    try:
        check_consumer_name(value)
    except PermanentError as ex:
        raise click.BadParameter(str(ex), ctx, param) from None
    return value


def consumer_name_option(default: str, what: str) -> Callable[[FC], FC]:
    """``--consumer NAME``: which state of a consumer kept beside the index (usage, lifecycle)."""
    return click.option(
        "--consumer",
        "consumer",
        default=default,
        callback=_consumer_name,
        show_default=True,
        metavar="NAME",
        help=f"Which {what} of the index (another name: another checkpoint and state).",
    )


consumer_option = consumer_name_option(DEFAULT_CONSUMER, "usage state")


@click.group("usage")
def usage_group() -> None:
    """Usage metrics: per-bucket objects, bytes and operations over time, from the change logs.

    With [usage] enabled = true, `serve` keeps them up to date; `show` works beside it.
    """


cli.add_command(usage_group, "usage")


def drain(runner: ConsumerRunner, stop: threading.Event) -> str | None:
    """(A log-object consumer: usage, lifecycle.) Take the lease and step until the checkpoint reaches the watermark's last log object (as
    it was before the step); release the lease. None when caught up, else why not."""
    from changelog.consumers.framework import LogObjectConsumer
    from changelog.pipeline.reader import read_watermark

    consumer = runner.consumer
    assert isinstance(consumer, LogObjectConsumer)
    if not runner.acquire():
        return f"the {consumer.name} lease is held by another process (serve?)"
    failures = 0
    try:
        while not stop.is_set():
            wm = read_watermark(consumer.logs, prefix=consumer.log_prefix)
            target = wm.last_object if wm else None
            before = runner.checkpoint().after
            try:
                runner.step(stop)
            except TransientError as ex:
                failures += 1
                if failures >= ONCE_ATTEMPTS:
                    return f"{failures} attempts failed: {one_line(str(ex))}"
                stop.wait(ONCE_BACKOFF_S * 2 ** (failures - 1))
                continue
            failures = 0
            after = runner.checkpoint().after
            if target is None or (after is not None and after >= target):
                return None
            if after == before:
                return f"no progress past {before or 'the start'}"
        return "stopped"
    except ChangelogError as ex:
        return one_line(str(ex))
    finally:
        runner.step_down()


@usage_group.command("run")
@click.option("--once", is_flag=True, help="Apply the logs up to the collector's watermark, then exit.")
@consumer_option
def run_cmd(once: bool, consumer: str) -> None:
    """Keep the usage metrics up to date until SIGTERM/SIGINT (standby while another process
    holds the lease), or with --once up to the collector's watermark."""
    from changelog.consumers.framework import ConsumerRunner
    from changelog.consumers.usage.consumer import usage_consumer

    st = state()
    cfg = st.config
    runner = ConsumerRunner(
        st.index(),
        usage_consumer(cfg.usage, st.index(), st.target(), name=consumer),
        lease_ttl=cfg.usage.lease_ttl,
    )
    cp = run_consumer(runner, once=once, what=f"usage {consumer}")
    if cp is not None:
        click.echo(
            f"usage {consumer}: caught up; checkpoint {cp.after or '-'}, {cp.records} records in all", err=True
        )


def run_consumer(runner: ConsumerRunner, *, once: bool, what: str) -> Checkpoint | None:
    """``<consumer> run``: without ``once`` the leased loop until SIGTERM/SIGINT (None); with it
    ``drain`` under a stop that the signals set, then the checkpoint, or one line saying why
    it is not caught up (``what``: the consumer, for that line)."""
    if not once:
        from changelog.service import Service

        Service({runner.consumer.name: runner}).run()
        return None
    from changelog.cli.pipeline import stop_on_signals

    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        why = drain(runner, stop)
    finally:
        restore()
    cp = runner.checkpoint()
    if why is not None:
        raise PermanentError(f"{what}: not caught up: {why} (checkpoint {cp.after or '-'})")
    return cp


@usage_group.command("show")
@click.option(
    "--bucket", metavar="B", help="Only this bucket (tenant/bucket or tenant:bucket for a tenant's)."
)
@click.option("--tenant", metavar="T", help="Only this tenant's buckets.")
@click.option("--since", type=TIME, help="A series of the intervals from this time.")
@click.option("--until", type=TIME, help="... up to this time (default: now).")
@click.option(
    "--interval", metavar="I", help="Series interval: 300, 5m, 1h, 1d (a multiple of [usage] interval)."
)
@consumer_option
@json_option
def show_cmd(
    bucket: str | None,
    tenant: str | None,
    since: int | None,
    until: int | None,
    interval: str | None,
    consumer: str,
    as_json: bool,
) -> None:
    """Each bucket's objects and bytes now and, with --since/--until, per interval: objects and
    bytes at its end, added and removed, writes, deletes and delete markers."""
    from changelog.consumers.usage.consumer import layout_of
    from changelog.consumers.usage.query import Query, parse_interval, usage_doc

    st = state()
    try:
        seconds = parse_interval(interval) if interval else None
    except ValueError as ex:
        raise click.BadParameter(str(ex), param_hint="--interval") from ex
    if seconds is not None and since is None and until is None:
        since = 0
    index = st.index(create=False)
    layout = layout_of(st.config.usage, index.prefix, name=consumer)
    if seconds is not None:
        try:
            layout.resolution_for(seconds)
        except PermanentError as ex:  # a bad option, as GET /_/usage?interval= answers 400
            raise click.BadParameter(str(ex), param_hint="--interval") from ex
    doc = usage_doc(index.store, layout, Query(tenant, bucket, since, until, seconds))
    if as_json:
        emit_json(doc)
        return
    rows: list[list[str]] = []
    for b in doc:
        name = f"{b['bucket']} (deleted)" if b.get("deleted") else str(b["bucket"])
        rows.append([str(b["tenant"] or "-"), name, "", str(b["objects"]), str(b["bytes"])])
        for i in b.get("series") or []:  # type: ignore[attr-defined]
            rows.append(["", "", str(i["start"]), str(i["objects"]), str(i["bytes"]),
                         f"+{i['objects_added']}/-{i['objects_removed']}", f"+{i['bytes_added']}/-{i['bytes_removed']}",
                         str(i["writes"]), str(i["deletes"]), str(i["delete_markers"])])  # fmt: skip
    width = max((len(r) for r in rows), default=5)
    header = [
        "TENANT",
        "BUCKET",
        "INTERVAL",
        "OBJECTS",
        "BYTES",
        "OBJ +/-",
        "BYTES +/-",
        "WRITES",
        "DELETES",
        "MARKERS",
    ]
    table([r + [""] * (width - len(r)) for r in rows], header[:width])
