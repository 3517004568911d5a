"""``rgw-changelog replicate [run|status|failed|pause|resume|sites]``: replication of the zone's
buckets to the ``[[replication.sites]]`` (REP.1), outside ``serve`` or beside it.

``run`` replicates in the foreground (each site a ``ConsumerRunner`` under its own lease, as in
``serve``; ``--once`` drains every site to the collector's watermark and exits). The other
commands act on what the index's store keeps per site (``changelog.consumers.replication.state``),
so they work whether or not a ``serve`` runs, and a running one sees a pause or a retry request
at its next step. Their documents are those of ``/_/crr`` (``changelog.consumers.replication.api``).
An unknown site is a one-line error and exit 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import click

from changelog.cli.base import State, cli, emit_json, json_option, state, table
from changelog.consumers.replication.api import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_RESUME_HOURS,
    failed_page,
    known_site,
    qualified,
    stored_doc,
)
from changelog.consumers.replication.state import SiteState
from changelog.errors import ChangelogError, ConfigError, PermanentError, TransientError, one_line

if TYPE_CHECKING:
    from changelog.config import Config
    from changelog.consumers.framework import ConsumerRunner
    from changelog.consumers.replication.consumer import SiteReplicator
    from changelog.consumers.replication.sites import Replication

logger = logging.getLogger("changelog.cli")

# `run --once`: a step failing on a transient error is tried this many times in a row, with
# doubling pauses from ONCE_BACKOFF_S, before the site is reported as not caught up.
ONCE_ATTEMPTS = 4
ONCE_BACKOFF_S = 2.0


def _site_names(cfg: Config, wanted: Sequence[str] = ()) -> tuple[str, ...]:
    """``wanted`` (checked against the config) or every configured site."""
    names = tuple(site.name for site in cfg.replication.sites)
    if not names:
        raise ConfigError("no [[replication.sites]] in the config: nothing to replicate to")
    return tuple(known_site(names, w) for w in wanted) if wanted else names


@contextlib.contextmanager
def _replication(st: State) -> Iterator[Replication]:
    from changelog.consumers.replication.sites import Replication

    repl = Replication(st.config, st.index())
    try:
        yield repl
    finally:
        repl.close()


@click.group("replicate", invoke_without_command=True)
@click.pass_context
def replicate_group(ctx: click.Context) -> None:
    """Replicate the zone's buckets to the [[replication.sites]], driven by the change logs.

    Each site follows the committed logs from its own checkpoint. Without a subcommand: `run`.
    With sites configured, `serve` replicates too; `pause`, `resume`, `failed` and `status`
    work beside it.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(run_cmd)


cli.add_command(replicate_group, "replicate")

# --------------------------------------------------------------------------- run


@dataclass
class Drained:
    """What ``run --once`` did for one site."""

    site: str
    reached: bool
    checkpoint: str | None = None
    watermark: str | None = None
    error: str | None = None
    stats: Mapping[str, object] = field(default_factory=dict)


def drain_site(
    runner: ConsumerRunner,
    rep: SiteReplicator,
    *,
    stop: threading.Event,
    attempts: int = ONCE_ATTEMPTS,
    backoff: float = ONCE_BACKOFF_S,
) -> Drained:
    """Take the site's lease and step (once at least: retry requests are taken then) until its
    checkpoint reaches the watermark's last log object as it was when the step began; release
    the lease. Not reached: another process holds the lease, the site is paused, a transient
    error outlasted ``attempts``, a permanent one, or a step that moved nothing."""
    from changelog.pipeline.reader import read_watermark

    name = rep.site.name
    out = Drained(name, False)
    if not runner.acquire():
        holder = runner.index.store.lock_info(runner.index.control_oid, runner.lease.ref.name)
        out.error = f"lease held by {holder.description or holder.holder if holder else 'another process'}"
        return out
    try:
        failures = 0
        while not stop.is_set():
            if rep.state.paused():
                out.error = "paused (replicate resume)"
                break
            wm = read_watermark(rep.logs, prefix=rep.log_prefix)
            out.watermark = wm.last_object if wm else None
            before = runner.checkpoint().after
            try:
                runner.step(stop)
            except TransientError as ex:
                failures += 1
                if failures >= attempts:
                    out.error = f"{failures} attempts failed: {one_line(str(ex))}"
                    break
                stop.wait(backoff * 2 ** (failures - 1))
                continue
            failures = 0
            after = runner.checkpoint().after
            if out.watermark is None or (after is not None and after >= out.watermark):
                out.reached = True
                break
            if after == before and not stop.is_set() and not rep.state.paused():
                out.error = f"no progress past {before or 'the start'}"
                break
    except ChangelogError as ex:
        out.error = one_line(str(ex))
    finally:
        out.checkpoint = runner.checkpoint().after
        out.stats = rep.stats()
        runner.step_down()
    return out


def _drained_text(d: Drained) -> str:
    s = d.stats
    counts = f"{s.get('completed', 0)} completed, {s.get('skipped', 0)} skipped, {s.get('failed', 0)} failed"
    if s.get("echoes") or s.get("older"):
        counts += f" (two-way: {s.get('echoes', 0)} echoes dropped, {s.get('older', 0)} older than the peer's)"
    where = f"checkpoint {d.checkpoint or '-'}, watermark {d.watermark or '-'}"
    if d.reached:
        return f"site {d.site}: caught up; {counts}; {where}"
    return f"site {d.site}: NOT caught up ({d.error}); {counts}; {where}"


def _runners(repl: Replication, names: Sequence[str], lease_ttl: float) -> dict[str, ConsumerRunner]:
    from changelog.consumers.framework import ConsumerRunner

    return {name: ConsumerRunner(repl.index, repl.site(name), lease_ttl=lease_ttl) for name in names}


@replicate_group.command("run")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only these sites (repeatable).")
@click.option("--once", is_flag=True, help="Bring each site up to the watermark, then exit (1 if one is not).")
@json_option
def run_cmd(sites: tuple[str, ...] = (), once: bool = False, as_json: bool = False) -> None:
    """Replicate until SIGTERM/SIGINT (each site under its own lease: standby while another
    process replicates it), or with --once up to the collector's watermark."""
    st = state()
    cfg = st.config
    names = _site_names(cfg, sites)
    with _replication(st) as repl:
        runners = _runners(repl, names, cfg.replication.lease_ttl)
        if not once:
            from changelog.service import Service

            logger.info("replicating to %s", ", ".join(names))
            Service({r.consumer.name: r for r in runners.values()}).run()
            return
        results = _run_once(repl, runners)
    if as_json:
        emit_json({"sites": {d.site: asdict(d) for d in results}})
    else:
        for d in results:
            click.echo(_drained_text(d), err=True)
    behind = [d.site for d in results if not d.reached]
    if behind:
        raise PermanentError(f"not caught up: {', '.join(behind)}")


def _run_once(repl: Replication, runners: Mapping[str, ConsumerRunner]) -> list[Drained]:
    """Every site drained at once, each on its own thread (a slow site holds up no other)."""
    from changelog.cli.pipeline import stop_on_signals

    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        with ThreadPoolExecutor(max(1, len(runners)), thread_name_prefix="replicate") as pool:
            futures = [pool.submit(drain_site, r, repl.site(n), stop=stop) for n, r in runners.items()]
            return [f.result() for f in futures]
    finally:
        restore()


# --------------------------------------------------------------------------- status


@replicate_group.command("status")
@click.argument("bucket")
@click.argument("key")
@click.option("--version-id", metavar="V", help="That version (default: the current one).")
@json_option
def status_cmd(bucket: str, key: str, version_id: str | None, as_json: bool) -> None:
    """An object version's replication status per site: PENDING, PROCESSING, COMPLETED or
    FAILED, and overall (FAILED if any site failed). BUCKET may be tenant:bucket."""
    from changelog.consumers.replication.sites import object_status

    st = state()
    _site_names(st.config)
    with _replication(st) as repl:
        doc = object_status(repl, qualified(bucket), key, version_id)
    if as_json:
        emit_json(doc)
        return
    absent = "" if doc.get("at_source") else " (no such object at the source: deleted, or never written)"
    version = f" version {doc['version_id']}" if doc.get("version_id") else ""
    click.echo(f"{doc['bucket']}/{doc['key']}{version}: {doc['status']}{absent}")
    sites = doc.get("sites")
    for name, status in sorted(sites.items() if isinstance(sites, dict) else []):
        click.echo(f"  {name}: {status}")


# --------------------------------------------------------------------------- failed


@replicate_group.group("failed")
def failed_group() -> None:
    """The records a site refused for good or kept failing, kept [replication] failed_retention."""


@failed_group.command("list")
@click.option("--site", metavar="NAME", help="Only this site.")
@click.option("--marker", metavar="M", help="Start after M (the NextMarker of the previous page).")
@click.option("--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(1, MAX_LIMIT))
@json_option
def failed_list_cmd(site: str | None, marker: str | None, limit: int, as_json: bool) -> None:
    """One page of failed entries (--json: Backbeat's {IsTruncated, NextMarker, Versions})."""
    st = state()
    names = _site_names(st.config, (site,) if site else ())
    page = failed_page(st.index(), names, marker=marker, limit=limit)
    if as_json:
        emit_json(page)
        return
    versions = page["Versions"]
    assert isinstance(versions, list)
    table(
        [
            [str(v.get(k) if v.get(k) is not None else "-") for k in ("StorageClass", "EntryId", "Bucket", "Key",
                                                                       "VersionId", "Op", "Attempts", "LastFailed")]
            + [one_line(str(v.get("Error", "")))[:120]]
            for v in versions
        ],
        ["SITE", "ENTRY", "BUCKET", "KEY", "VERSION", "OP", "TRIES", "LAST FAILED", "ERROR"],
    )  # fmt: skip
    if page["IsTruncated"]:
        click.echo(f"more: --marker {page['NextMarker']}", err=True)


@failed_group.command("retry")
@click.option("--site", metavar="NAME", help="Only this site's entries.")
@click.argument("entries", nargs=-1, metavar="[ENTRY_ID]...")
def failed_retry_cmd(site: str | None, entries: tuple[str, ...]) -> None:
    """Ask the site's replicator to apply these failed entries again (ids from `failed list`;
    none: every failed entry). It does so at its next step, in serve or `replicate run`."""
    st = state()
    names = _site_names(st.config, (site,) if site else ())
    index = st.index()
    found: set[str] = set()
    requested = 0
    for name in names:
        s = SiteState(index, name)
        if entries:
            ids = [e for e in entries if s.failed_entry(e) is not None]
            found.update(ids)
            requested += s.request_retry(ids) if ids else 0
        else:
            requested += s.request_retry(None)
    click.echo(f"{requested} retries requested ({', '.join(names)})", err=True)
    missing = [e for e in entries if e not in found]
    if missing:
        raise PermanentError(f"no failed entry {', '.join(missing)} at {', '.join(names)}")


# --------------------------------------------------------------------------- pause, resume, sites


def _pause_text(name: str, doc: Mapping[str, object]) -> str:
    if not doc.get("paused"):
        return f"site {name}: running"
    until = f", resumes at {doc['resume_at']}" if doc.get("resume_at") else ""
    return f"site {name}: paused since {doc.get('paused_since')}{until}"


def _finite_hours(hours: float | None) -> float | None:
    """``--in``: a number of hours (click's range lets "nan" through: every comparison is false)."""
    if hours is not None and not math.isfinite(hours):
        raise click.BadParameter(f"{hours} is not a number of hours", param_hint="'--in'")
    return hours


def _set_pause(site: str, as_json: bool, action: Callable[[SiteState], object]) -> None:
    st = state()
    (name,) = _site_names(st.config, (site,))
    s = SiteState(st.index(), name)
    action(s)
    doc = s.status_doc()
    if as_json:
        emit_json({"site": name, **doc})
    else:
        click.echo(_pause_text(name, doc))


@replicate_group.command("pause")
@click.argument("site")
@json_option
def pause_cmd(site: str, as_json: bool) -> None:
    """Pause replication to SITE: its replicator finishes the log object in hand and stops
    there. Kept in the index's store: holds across restarts, for every serve."""
    _set_pause(site, as_json, lambda s: s.pause())


@replicate_group.command("resume")
@click.argument("site")
@click.option("--in", "hours", type=click.FloatRange(min=0, min_open=True, max=MAX_RESUME_HOURS), metavar="HOURS",
              callback=lambda _c, _p, v: _finite_hours(v),
              help="Resume in HOURS (pausing now if it is not; at most a year).")  # fmt: skip
@json_option
def resume_cmd(site: str, hours: float | None, as_json: bool) -> None:
    """Resume replication to SITE, now or --in HOURS."""
    _set_pause(site, as_json, lambda s: s.resume() if hours is None else s.schedule_resume(hours))


def _sites_docs(st: State, names: Sequence[str]) -> dict[str, dict[str, object]]:
    """Each site's status; with its backlog when the source and the logs can be opened."""
    from changelog.consumers.replication.api import CrrRoutes

    try:
        with _replication(st) as repl:
            routes = CrrRoutes(repl)
            return {name: routes.site_doc(name) for name in names}
    except ConfigError as ex:
        logger.warning("no backlog: %s", ex)
    now = time.time()
    return {name: {"site": name, **stored_doc(st.index(), name, now=now)} for name in names}


@replicate_group.command("sites")
@json_option
def sites_cmd(as_json: bool) -> None:
    """Each site: paused or running, checkpoint, lease holder, failed entries, backlog."""
    st = state()
    docs = _sites_docs(st, _site_names(st.config))
    if as_json:
        emit_json({"sites": docs})
        return
    rows = []
    for name, d in docs.items():
        cp, lease, backlog = d.get("checkpoint"), d.get("lease"), d.get("backlog")
        rows.append([
            name,
            _pause_text(name, d).split(": ", 1)[1],
            str(cp.get("after") or "-") if isinstance(cp, dict) else "-",
            str(lease.get("holder")) if isinstance(lease, dict) else "-",
            str(d.get("failed_entries", "-")),
            f"{backlog.get('records')} records, rpo {backlog.get('rpo_seconds')}s" if isinstance(backlog, dict) else "-",
        ])  # fmt: skip
    table(rows, ["SITE", "STATE", "CHECKPOINT", "LEASE", "FAILED", "BACKLOG"])
