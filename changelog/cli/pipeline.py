"""The commands that run or ask the pipeline: ``collect``, ``flush``, ``serve``, ``pause``,
``resume`` and ``status``. Where a ``serve`` answers on ``[api] listen``, ``flush``, ``pause``,
``resume`` and ``status`` go through its API (the running collector holds the leases a direct
pass would need); otherwise they act on the stores directly."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import click

from changelog import status
from changelog.cli.base import API_TIMEOUT_S, State, cli, emit_json, json_option, setup_logging, state, table
from changelog.cli.shards import lease_text
from changelog.errors import ChangelogError, ConfigError, PermanentError
from changelog.progress import Progress
from changelog.times import fmt_age, fmt_time

if TYPE_CHECKING:
    from changelog.api import ApiClient, ControlStates
    from changelog.config import Config

logger = logging.getLogger("changelog.cli")


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (graceful); returns a function that restores the handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        stop.set()

    for s in saved:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in saved.items():
            signal.signal(s, h)

    return restore


class _PassProgress:
    """Progress of a collector pass, from the collector's step hooks: pages read, objects
    committed."""

    def __init__(self, bar: Progress, page: int) -> None:
        self.bar = bar
        self.page = page
        self.objects = 0

    def __call__(self, step: str) -> None:
        if step == "read":
            self.bar.update(self.page)
        elif step == "complete":
            self.objects += 1


def _pass_text(doc: status.Doc) -> str:
    objs = doc.get("objects") or []
    assert isinstance(objs, list | tuple)
    text = f"{doc.get('entries', 0)} entries in {len(objs)} log objects up to {doc.get('cutoff')}"
    if doc.get("recovered"):
        text += f", {doc['recovered']} pending commits recovered"
    if doc.get("skipped_shards"):
        text += f", shards {list(doc['skipped_shards'])} skipped (locked by another drainer)"  # type: ignore[call-overload]
    text += f"; watermark {doc.get('watermark') or 'unchanged'}"
    return text


def _print_pass(doc: status.Doc, *, as_json: bool, label: str) -> None:
    if as_json:
        emit_json(doc)
        return
    objs = doc.get("objects") or []
    assert isinstance(objs, list | tuple)
    for name in objs:
        click.echo(name)
    click.echo(f"{label}: {_pass_text(doc)}", err=True)


def _one_pass(st: State, *, settle: float | None) -> status.Doc:
    from changelog.config import make_collector
    from changelog.pipeline.index import OP_KEYS

    with Progress("collect" if settle is None else "flush", unit="entries") as bar:
        hook = _PassProgress(bar, OP_KEYS)
        collector = make_collector(st.config, st.index(), st.target(), fault_hook=hook)
        try:
            result = collector.run_pass(settle=settle)
        finally:
            collector.step_down()
    return status.pass_doc(result)


# Once a serve has shown it is there (``_serve_api``, within API_TIMEOUT_S), what it is asked may
# take longer: a status pages the index (over a second for a few hundred thousand entries), a
# flush waits for its pass (the serve gives up after collector.FLUSH_TIMEOUT, 300 s).
STATUS_TIMEOUT_S = 120.0
FLUSH_TIMEOUT_S = 330.0


def _api_client(cfg: Config, *, timeout: float = API_TIMEOUT_S) -> ApiClient:
    """A client of ``[api] listen`` that sends ``[api] token`` / ``read_token``."""
    from changelog.api import ApiClient
    from changelog.config import reveal

    return ApiClient(
        cfg.api.listen, timeout=timeout, token=reveal(cfg.api.token), read_token=reveal(cfg.api.read_token)
    )


def _serve_api(cfg: Config) -> tuple[ApiClient, ControlStates] | None:
    """A client of the running ``serve`` on ``[api] listen`` and its pause switches, if one
    answers (``GET /_/controls``: cheap, unlike the health checks). A serve that refuses our
    token (401), or this host (403, ``[api] allow_from``), is an error, not an absent serve:
    acting directly instead would race the running one."""
    from changelog.api import ApiUnauthorized

    client = _api_client(cfg)
    try:
        controls = client.controls()
    except ApiUnauthorized:
        raise
    except ChangelogError as ex:
        logger.debug("no serve API: %s", ex)
        return None
    return client, controls


@cli.command("collect")
@click.option("--once", is_flag=True, help="One full pass up to now - settle, then exit.")
@json_option
def collect_cmd(once: bool, as_json: bool) -> None:
    """Drain the index into change-log objects (the collector alone, without the follower).

    Without --once, runs until SIGTERM/SIGINT: standby while another collector holds the control
    lease, a pass every [collector] interval while active.
    """
    from changelog.config import make_collector

    st = state()
    if once:
        _print_pass(_one_pass(st, settle=None), as_json=as_json, label="collect")
        return
    collector = make_collector(st.config, st.index(), st.target())
    stop = threading.Event()
    restore = stop_on_signals(stop)
    logger.info("collector %s running (interval %.1fs)", collector.collector_id, st.config.collector.interval)
    try:
        collector.run(stop)
    finally:
        restore()


@cli.command("flush")
@click.option("--direct", is_flag=True, help="Run the pass in this process even if a serve answers on its API.")
@json_option
def flush_cmd(direct: bool, as_json: bool) -> None:
    """Commit everything recorded so far now: a pass with no settle window, whatever the roll
    timers say. With a running serve, asks it to run that pass (POST /_/flush) and prints its
    result; otherwise runs it here (and fails if another collector holds the control lease)."""
    st = state()
    found = None if direct else _serve_api(st.config)
    if found is not None:
        client = _api_client(st.config, timeout=FLUSH_TIMEOUT_S)
        doc = client.flush()
        _print_pass(doc, as_json=as_json, label=f"flush (by serve at {client.base})")
        return
    _print_pass(_one_pass(st, settle=0.0), as_json=as_json, label="flush")


def _controls_text(controls: object) -> str:
    if not isinstance(controls, dict):
        return str(controls)
    return ", ".join(
        f"{name} {'paused' if c.get('paused') else 'running'}{' (parked)' if c.get('parked') else ''}"
        for name, c in sorted(controls.items())
    )


def _control(action: str, component: str | None, as_json: bool) -> None:
    found = _serve_api(state().config)
    if found is None:
        raise PermanentError(f"no serve answers on [api] listen: nothing to {action} (pause and resume act on a running serve)")
    client, current = found
    if component is not None:
        known = sorted(current)
        if component not in known:
            raise PermanentError(f"serve at {client.base} has no component {component!r}; it runs: {', '.join(known)}")
    controls = client.pause(component) if action == "pause" else client.resume(component)
    if as_json:
        emit_json({"controls": controls})
    else:
        click.echo(_controls_text(controls))


@cli.command("pause")
@click.argument("component", required=False)
@json_option
def pause_cmd(component: str | None, as_json: bool) -> None:
    """Pause a running serve's COMPONENT (follower, collector, or a consumer such as backup), or
    all of them. A paused component finishes the unit of work in hand and takes no new work; its
    leases, markers and the index stay as they are. In memory only: a restart resumes."""
    _control("pause", component, as_json)


@cli.command("resume")
@click.argument("component", required=False)
@json_option
def resume_cmd(component: str | None, as_json: bool) -> None:
    """Resume a paused COMPONENT of a running serve, or all of them."""
    _control("resume", component, as_json)


@cli.command("serve")
def serve_cmd() -> None:
    """Run the follower, the collector, the configured consumers and the HTTP API until SIGTERM.

    SIGTERM/SIGINT stop gracefully (current work finished, leases released); SIGHUP re-reads the
    config's [logging] section. Without [source] endpoint (the embedded setup) only the collector
    and the API run: mutations then come from `rgw-changelog record`.
    """
    from changelog import service

    st = state()
    cfg = st.config
    _serve_logging(st, cfg)
    restore = _reload_on_sighup(st)
    try:
        service.serve(cfg)
    finally:
        restore()


def _serve_logging(st: State, cfg: Config) -> None:
    """A daemon logs at the config's level on stderr (the journal) and to the file, if any."""
    lc = cfg.logging
    setup_logging(debug=st.debug, verbose=st.verbose, console_level=lc.level, file=lc.file, file_level=lc.level)


def _reload_on_sighup(st: State) -> Callable[[], None]:
    from changelog.config import load_config

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(_signum: int, _frame: FrameType | None) -> None:
        try:
            cfg = load_config(st.config_path)
        except ConfigError as ex:
            logger.error("SIGHUP: config error, keeping the running settings: %s", ex)
            return
        try:
            _serve_logging(st, cfg)
        except ConfigError as ex:
            logger.error("SIGHUP: %s; keeping the running logging", ex)
            return
        logger.info("SIGHUP: [logging] reloaded from %s; other changes take effect on restart", cfg.path or "defaults")

    saved = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, saved)

    return restore


# --------------------------------------------------------------------------- status


def _api_status(cfg: Config) -> status.Doc | None:
    """The running serve's own status, if one answers on ``[api] listen`` (a 401 or 403 is an
    error: fix the token or ``allow_from``, or use --direct). Its presence is probed quickly;
    the status itself may take longer (it pages the index)."""
    from changelog.api import ApiUnauthorized, ApiUnavailable

    try:
        if _serve_api(cfg) is None:
            return None
        client = _api_client(cfg, timeout=STATUS_TIMEOUT_S)
        doc: status.Doc = client.status()
    except (ApiUnauthorized, ApiUnavailable) as ex:
        # Refused, or there and not answering: reading the same stores from here would not be
        # quicker, nor would it show the serve's health and counters.
        raise PermanentError(f"{ex} (or use --direct)") from ex
    except ChangelogError as ex:
        logger.warning("the serve at [api] listen did not give its status, reading directly: %s", ex)
        return None
    doc["from"] = client.base + "/_/status"
    return doc


def _follower_text(f: object) -> str:
    if not isinstance(f, dict):
        return "-" if f is None else str(f)
    if "error" in f:
        return f"unreadable: {f['error']}"
    if f.get("partitioned"):
        return _partitions_text(f)
    lease = f.get("lease")
    cu = f.get("caught_up_until")
    parts = [
        f"lease {lease['holder']}" if isinstance(lease, dict) else "not running (no lease)",
        f"caught up until {fmt_time(cu * 1_000_000)} (lag {fmt_age(time.time() - cu)})" if cu else "not caught up yet",
        f"{len(f.get('buckets') or {})} buckets",
        f"{f.get('pending_shards', 0)} pending bucket-index shards",
        f"{f.get('shard_markers', 0)} shard markers",
    ]
    not_followed = f.get("not_followed")
    if isinstance(not_followed, dict) and not_followed:
        # Named, never skipped silently: the target's own bucket, or one the user may not list.
        parts.append("not followed: " + ", ".join(f"{b} ({why})" for b, why in sorted(not_followed.items())))
    sealed = f.get("sealed_shards")
    if isinstance(sealed, int) and sealed:
        parts.append(f"{sealed} shards of finished log generations still read")
    recreating = f.get("recreating")
    if isinstance(recreating, dict) and recreating:
        # Deleted and created again: the new lifetime waits for the collector's next cutoff.
        parts.append("waiting for the collector to pass their bucket_delete: " + ", ".join(sorted(recreating)))
    return ", ".join(parts)


def _partitions_text(f: dict[str, object]) -> str:
    """A partitioned follower ([scale] partitioned): who holds which partition, the zone's
    caught-up time (the slowest partition's), and the buckets over all partitions."""
    cu = f.get("caught_up_until")
    holders = f.get("holders") or {}
    by_partition = f.get("by_partition") or {}
    assert isinstance(holders, dict) and isinstance(by_partition, dict)
    buckets = sum(len(d.get("buckets") or {}) for d in by_partition.values() if isinstance(d, dict))
    pending = sum(int(d.get("pending_shards") or 0) for d in by_partition.values() if isinstance(d, dict))
    parts = [
        f"{f.get('count')} partitions",
        "held by " + "; ".join(f"{who}: {sorted(ns)}" for who, ns in sorted(holders.items())) if holders else "held by nobody",
        f"caught up until {fmt_time(float(str(cu)) * 1_000_000)} (lag {fmt_age(time.time() - float(str(cu)))})"
        if isinstance(cu, int | float)
        else "not caught up yet",
        f"{buckets} buckets",
        f"{pending} pending bucket-index shards",
    ]
    unheld = f.get("unheld")
    if unheld:
        parts.append(f"unheld partitions: {unheld}")
    return ", ".join(parts)


def _consumers_text(consumers: object) -> list[str]:
    if not isinstance(consumers, dict):
        return []
    return [
        f"consumer {name}: checkpoint {c.get('after') or '-'} ({c.get('updated') or 'never'}), "
        f"lease {lease_text(c.get('lease'))}"
        for name, c in sorted(consumers.items())
        if isinstance(c, dict)
    ]


def _print_status(doc: status.Doc) -> None:
    idx = doc.get("index") or {}
    assert isinstance(idx, dict)
    click.echo(
        f"index: {idx.get('backend')} prefix {idx.get('prefix')!r}, {idx.get('shards')} shards, mode {idx.get('mode')}; "
        f"{idx.get('entries')} entries, oldest entry age {fmt_age(idx.get('oldest_age_s'))}"
    )
    streams = status.streams_lines(doc)
    lease = lease_text(doc.get("collector_lease"))
    # Partitioned, the control lease is normally free: the streams' leases are below.
    note = " (partitioned: see the streams)" if streams and lease == "-" else ""
    click.echo(f"collector lease: {lease}{note}")
    coll = doc.get("collector") or {}
    if isinstance(coll, dict) and coll:
        click.echo(
            f"  generation {coll.get('generation')}, last cutoff {coll.get('last_cutoff') or '-'}, "
            f"pending commits {len(coll.get('pending_commits') or [])}"
        )
    if streams is not None:
        click.echo(streams[0])
    tgt = doc.get("target") or {}
    assert isinstance(tgt, dict)
    click.echo(f"target: {tgt.get('url')}")
    if tgt.get("error"):
        click.echo(f"  unreachable: {tgt['error']}")
    click.echo(f"  last log object: {tgt.get('last_object') or '-'}")
    wm = tgt.get("watermark")
    click.echo(f"  watermark: {(wm or {}).get('complete_until', '-') if isinstance(wm, dict) else wm or '-'}")
    click.echo(f"follower: {_follower_text(doc.get('follower'))}")
    for line in _consumers_text(doc.get("consumers")):
        click.echo(line)
    for line in status.replication_lines(doc):
        click.echo(line)
    if doc.get("controls"):
        click.echo(f"controls: {_controls_text(doc.get('controls'))}")
    warnings = doc.get("warnings")  # a serve's: its zonegroup check (rgw_module.zonegroup)
    for warning in warnings if isinstance(warnings, list) else []:
        click.echo(f"warning: {warning}")
    click.echo("")
    if streams is not None:
        table(streams[1], status.STREAMS_HEADER)
        click.echo("")
    shards = doc.get("shards") or []
    assert isinstance(shards, list)
    table(
        [[str(d["shard"]), str(d["entries"]), fmt_age(d["oldest_age_s"]), lease_text(d.get("lease"))] for d in shards],
        ["SHARD", "ENTRIES", "OLDEST AGE", "DRAIN LEASE"],
    )


@cli.command("status")
@json_option
@click.option("--direct", is_flag=True, help="Read the index and target directly, even if a serve answers on its API.")
def status_cmd(as_json: bool, direct: bool) -> None:
    """Entries and oldest entry per shard, leases, follower markers and lag, last log object,
    watermark, consumers' checkpoints."""
    st = state()
    cfg = st.config
    doc = None if direct else _api_status(cfg)
    if doc is None:
        target = None
        try:
            target = st.target()
        except ChangelogError as ex:
            logger.warning("target unavailable: %s", ex)
        doc = status.collect_status(cfg, st.index(), target)
    if as_json:
        emit_json(doc)
    else:
        _print_status(doc)
