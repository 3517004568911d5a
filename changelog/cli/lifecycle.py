"""``rgw-changelog lifecycle [run|plan|status|failed|retry-failed]``: lifecycle (ILM.1) outside
``serve`` or beside it (``changelog.consumers.lifecycle``; docs/lifecycle-plan.md).

``run`` keeps the schedule from the committed logs and acts on what is due, in the foreground
(under the consumer's lease, as in ``serve``; ``--once`` up to the collector's watermark and
what is due then, then exits). ``plan``, ``status`` and ``failed`` read the schedule directly (no
lease, whether or not a ``serve`` runs). ``retry-failed`` puts the failed entries back, due now.
"""

from __future__ import annotations

import time

import click

from changelog.cli.base import TIME, cli, emit_json, json_option, record_bucket, state, table
from changelog.cli.usage import consumer_name_option, run_consumer
from changelog.consumers.lifecycle.model import DEFAULT_CONSUMER, Layout
from changelog.consumers.lifecycle.rules import RuleSet
from changelog.errors import PermanentError
from changelog.pipeline.store import ObjectStore
from changelog.times import fmt_time

consumer_option = consumer_name_option(DEFAULT_CONSUMER, "lifecycle schedule")


@click.group("lifecycle")
def lifecycle_group() -> None:
    """Lifecycle: expire, expire noncurrent versions and transition objects when due, from the
    change logs (no daily bucket listing: a bucket is listed once, when it gains its first rule).

    With [lifecycle] enabled = true and [[lifecycle.rules]], `serve` keeps the schedule and acts
    on it; `plan` and `status` work beside it.
    """


cli.add_command(lifecycle_group, "lifecycle")


def _check_rules() -> None:
    cfg = state().config
    if cfg.lifecycle.source == "config" and not cfg.lifecycle.rules:
        raise PermanentError(
            'no [[lifecycle.rules]] in the configuration (and [lifecycle] source is not "bucket"): '
            "nothing to schedule"
        )


@lifecycle_group.command("run")
@click.option("--once", is_flag=True, help="Apply the logs up to the watermark, act on what is due, then exit.")
@click.option("--dry-run", is_flag=True, help="Keep the schedule only: act on nothing.")
@consumer_option
def run_cmd(once: bool, dry_run: bool, consumer: str) -> None:
    """Keep the schedule and act on what is due until SIGTERM/SIGINT (standby while another
    process holds the lease), or with --once up to the collector's watermark."""
    from changelog.consumers.framework import ConsumerRunner
    from changelog.consumers.lifecycle.consumer import lifecycle_client, lifecycle_consumer
    from changelog.consumers.lifecycle.leftovers import leftover_reaper

    _check_rules()
    st = state()
    lc = st.config.lifecycle
    client = None if (dry_run or lc.dry_run) else lifecycle_client(lc)
    leftovers = leftover_reaper(st.config) if client is not None else None
    lifecycle = lifecycle_consumer(lc, st.index(), st.target(), client, name=consumer, leftovers=leftovers)
    runner = ConsumerRunner(st.index(), lifecycle, lease_ttl=lc.lease_ttl)
    cp = run_consumer(runner, once=once, what=f"lifecycle {consumer}")
    if cp is None:
        return
    done = lifecycle.executor.snapshot() if lifecycle.executor is not None else {}
    acted = ", ".join(f"{k} {v}" for k, v in done.items() if v) or "nothing acted on"
    click.echo(f"lifecycle {consumer}: caught up; checkpoint {cp.after or '-'}; {acted}", err=True)


@lifecycle_group.command("plan")
@click.option("--bucket", metavar="B", callback=record_bucket, help="Only this bucket (tenant/bucket for a tenant's).")
@click.option("--until", "until_us", type=TIME, help="Only what is due up to this time.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
@consumer_option
@json_option
def plan_cmd(bucket: str | None, until_us: int | None, limit: int, consumer: str, as_json: bool) -> None:
    """What will be done when: the scheduled actions, earliest first (a dry run: nothing is
    acted on, whether or not a serve runs)."""
    from changelog.consumers.lifecycle.consumer import layout_of
    from changelog.consumers.lifecycle.plan import plan

    st = state()
    index = st.index(create=False)
    layout = layout_of(st.config.lifecycle, index.prefix, name=consumer)
    actions = plan(index.store, layout, bucket=bucket, until_us=until_us, limit=limit)
    if as_json:
        emit_json(actions)
        return
    rows = [
        [str(a["due"]), str(a["action"]), str(a["bucket"]), str(a["key"]), str(a["version_id"] or "-"), str(a["rule"])]
        for a in actions
    ]
    table(rows, ["DUE", "ACTION", "BUCKET", "KEY", "VERSION", "RULE"])


@lifecycle_group.command("status")
@consumer_option
@json_option
def status_cmd(consumer: str, as_json: bool) -> None:
    """How many actions are due now, scheduled later and failed, by action, and the next one.
    With [lifecycle] source = "bucket": the buckets whose configurations the schedule follows,
    and the parts of their rules left out (read from the buckets now)."""
    from changelog.consumers.lifecycle.consumer import layout_of
    from changelog.consumers.lifecycle.plan import status

    st = state()
    index = st.index(create=False)
    lc = st.config.lifecycle
    layout = layout_of(lc, index.prefix, name=consumer)
    doc = status(index.store, layout, now_us=int(time.time() * 1_000_000))
    doc["source"] = lc.source
    if lc.source == "bucket":
        doc["bucket_rules"] = _bucket_rules_doc(index.store, layout)
    doc["baseline"] = _baseline_doc(index.store, layout)
    if as_json:
        emit_json(doc)
        return
    by_action = doc["by_action"]
    assert isinstance(by_action, dict)
    rows = [[a, str(d["due_now"]), str(d["later"]), str(d["failed"])] for a, d in by_action.items()]
    rows.append(["all", str(doc["due_now"]), str(doc["scheduled_later"]), str(doc["failed"])])
    table(rows, ["ACTION", "DUE NOW", "LATER", "FAILED"])
    click.echo(f"next due: {doc['next_due'] or '-'}")
    br = doc.get("bucket_rules")
    if isinstance(br, dict):
        click.echo(f"rules: from {br['buckets_with_configuration']} buckets' lifecycle configurations ({br['rules']} rules)")
        for line in br["left_out"]:
            click.echo(f"left out: {line}")
    bl = doc["baseline"]
    assert isinstance(bl, list)
    if bl:
        click.echo("existing objects of the buckets with rules (listed once):")
        rows = [[str(b["bucket"]), str(b["state"]), str(b["versions"])] for b in bl]
        table(rows, ["BUCKET", "LISTING", "VERSIONS"])


def _bucket_rules_doc(store: ObjectStore, layout: Layout) -> dict[str, object]:
    """The configurations of the buckets the schedule follows (``source = "bucket"``), read now."""
    from changelog.consumers.lifecycle.bucket_rules import BucketRules
    from changelog.consumers.lifecycle.consumer import lifecycle_client
    from changelog.consumers.lifecycle.schedule import Schedule

    lc = state().config.lifecycle
    schedule = Schedule(store, layout, RuleSet((), day_seconds=lc.day_seconds))
    rules = BucketRules(lifecycle_client(lc), lc.day_seconds)
    rules.refresh(b for n in range(layout.shards) for b, _ in schedule.bucket_marks(n))
    return rules.doc()


def _baseline_doc(store: ObjectStore, layout: Layout) -> list[dict[str, object]]:
    """Per bucket with rules, its one-time listing: ``pending``, ``listing`` or ``done``, with
    the versions listed (``baseline``)."""
    from changelog.consumers.lifecycle.baseline import baseline_doc
    from changelog.consumers.lifecycle.schedule import Schedule

    lc = state().config.lifecycle
    rules = RuleSet.of(lc)
    schedule = Schedule(store, layout, rules)
    if lc.source == "bucket":
        governed = [b for n in range(layout.shards) for b, _ in schedule.bucket_marks(n)]
    else:
        governed = rules.governed()
    return baseline_doc(schedule, governed)


@lifecycle_group.command("failed")
@consumer_option
@json_option
def failed_cmd(consumer: str, as_json: bool) -> None:
    """The actions that failed (refused by S3, e.g. object lock), with the error."""
    from changelog.consumers.lifecycle.consumer import layout_of
    from changelog.consumers.lifecycle.schedule import Schedule

    st = state()
    index = st.index(create=False)
    lc = st.config.lifecycle
    schedule = Schedule(index.store, layout_of(lc, index.prefix, name=consumer), RuleSet.of(lc))
    docs = [doc for n in range(schedule.layout.shards) for _, doc in schedule.failed(n)]
    if as_json:
        emit_json(docs)
        return
    rows = [
        [str(fmt_time(int(str(d.get("failed_us", 0))))), str(d.get("action")), str(d.get("bucket")), str(d.get("key")),
         str(d.get("error"))]
        for d in docs
    ]  # fmt: skip
    table(rows, ["FAILED AT", "ACTION", "BUCKET", "KEY", "ERROR"])


@lifecycle_group.command("retry-failed")
@consumer_option
def retry_cmd(consumer: str) -> None:
    """Put every failed action back in the schedule, due now (re-checked before acting)."""
    from changelog.consumers.lifecycle.consumer import layout_of
    from changelog.consumers.lifecycle.schedule import Schedule

    st = state()
    index = st.index(create=False)
    lc = st.config.lifecycle
    schedule = Schedule(index.store, layout_of(lc, index.prefix, name=consumer), RuleSet.of(lc))
    n = sum(schedule.retry_failed(s) for s in range(schedule.layout.shards))
    click.echo(f"lifecycle {consumer}: {n} failed actions scheduled again")
