"""``rgw-changelog config check`` (the config, and with ``--connect`` the source radosgw, the
index store, the target and each replication site, each reached) and ``rgw-changelog record`` (the embedded write hook:
JSON Lines on stdin into the index, all or nothing per input; the input's checks are in
``record_input``)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from changelog.cli.base import cli, emit_json, json_option, state, stdin
from changelog.errors import (
    ChangelogError,
    ConfigError,
    InvalidMutation,
    PermanentError,
    TransientError,
    one_line,
)
from changelog.pipeline.index import RecordResult
from changelog.progress import Progress

if TYPE_CHECKING:
    from changelog.cli.record_input import Checked
    from changelog.config import Config, SiteConfig
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.targets import Target

logger = logging.getLogger("changelog.cli")

# `config check --connect` gives each service this long to answer: a check, not a workload.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------- config


@cli.group("config")
def config_group() -> None:
    """Check the configuration."""


@dataclasses.dataclass(frozen=True)
class Reached:
    """The outcome of reaching one service: ``source: ok (...)`` or ``source: unreachable: ...``."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: ok ({self.detail})" if self.ok else f"{self.name}: {self.detail}"


def _reach(name: str, probe: Callable[[], str]) -> Reached:
    """Run one probe; any failure becomes its one-line outcome (the traceback goes to the log)."""
    try:
        return Reached(name, True, probe())
    except Exception as ex:
        logger.debug("config check --connect: %s failed", name, exc_info=ex)
        how = "unreachable" if isinstance(ex, TransientError) else "failed"
        text = str(ex) if isinstance(ex, ChangelogError) else f"{type(ex).__name__}: {ex}"
        return Reached(name, False, f"{how}: {one_line(text)}")


@config_group.command("check")
@json_option
@click.option(
    "--connect",
    is_flag=True,
    help="Also reach the source radosgw's admin API (when [source] endpoint is set), the index store, "
    "the target and each [[replication.sites]] entry: one line each, exit 1 if any fails.",
)
def config_check(as_json: bool, connect: bool) -> None:
    """Validate the config and print the effective config, secrets masked."""
    st = state()
    cfg = st.config
    from changelog.config import check_index_files

    try:
        check_index_files(cfg)
    except ConfigError as ex:
        # Told, not refused: a config is also checked where it does not run (the package's
        # shipped config, on a machine without Ceph); every other command stops on it.
        click.echo(f"warning: {ex} (every command that opens the index stops on it)", err=True)
    where = cfg.path or "built-in defaults (no config file)"
    reached: list[Reached] = []
    if connect:
        if cfg.source.endpoint:
            reached.append(_reach("source", lambda: _probe_source(cfg)))
        reached.append(_reach("index", lambda: _probe_index(cfg)))
        # With the index on RADOS the Ceph client is configured: it must also read the zone's
        # bucket index (else the follower HEADs every write). On the embedded index a missing
        # client is expected, and the follower says so once when it falls back.
        if cfg.source.endpoint and cfg.source.object_info == "index" and cfg.index.backend == "rados":
            reached.append(_reach("bucket index", lambda: _probe_bucket_index(cfg)))
        reached.append(_reach("target", lambda: _probe_target(st.target(), cfg.target.url)))
        for site in cfg.replication.sites:
            # Each site on its own: one with wrong credentials is named, the others still probed.
            reached.append(_reach(f"site {site.name}", functools.partial(_probe_site, cfg, site)))
    if as_json:
        doc: dict[str, object] = {"path": cfg.path, "config": cfg.to_dict(masked=True)}
        if connect:
            doc["connect"] = {r.name: {"ok": r.ok, "detail": r.detail} for r in reached}
        emit_json(doc)
    else:
        click.echo(f"# effective config, from {where}")
        click.echo(cfg.to_toml().rstrip())
    for r in reached:
        click.echo(r.line(), err=True)
    failed = [r.name for r in reached if not r.ok]
    if failed:
        raise ChangelogError(
            f"config check --connect: cannot use {' and '.join(failed)} (config from {where})"
        )
    click.echo(f"config ok: {where}", err=True)


def _probe_source(cfg: Config) -> str:
    """One signed admin request (the data log's info): fails on a wrong endpoint, TLS trust,
    credentials or missing admin caps."""
    from changelog.config import reveal
    from rgw_module.admin import AdminClient

    src = cfg.source
    endpoint = str(src.endpoint)
    if src.access_key is None or src.secret_key is None:
        raise PermanentError("source.access_key and source.secret_key must be set to follow a radosgw zone")
    admin = AdminClient(
        endpoint,
        reveal(src.access_key) or "",
        reveal(src.secret_key) or "",
        region=src.region,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_connections=1,
        verify=src.tls_verify,
    )
    try:
        shards = admin.datalog_shards()
    finally:
        admin.close()
    return f"{endpoint}, admin API answers: {shards} data log shards"


def _probe_index(cfg: Config) -> str:
    """Reach the index store; check the index there (if it exists yet) matches the config."""
    from changelog.config import open_index, open_store
    from changelog.pipeline.index import META_KEY

    store = open_store(cfg)
    try:
        if not store.omap_get(f"{cfg.index.prefix}.control", [META_KEY]):
            return f"store reached; no index {cfg.index.prefix!r} yet, created on first use"
        index = open_index(cfg, store=store, create=False)
        return f"{index.shards} shards, mode {index.mode}, prefix {index.prefix!r}"
    finally:
        store.close()


def _probe_bucket_index(cfg: Config) -> str:
    """``[source] object_info = "index"``: one omap read in the zone's bucket index pool, with the
    ``[index]`` section's Ceph client (what the follower reads write records' sizes with; without
    it the follower falls back to a HEAD per write)."""
    fallback = "the follower would HEAD every write instead"
    try:
        from changelog.pipeline.backends.rados import OmapReader
    except ImportError as ex:
        raise PermanentError(f"no Ceph client here ({ex}): {fallback}") from ex
    idx = cfg.index
    try:
        reader = OmapReader(conffile=idx.ceph_conf, keyring=idx.keyring, client_name=idx.client_name,
                            connect_timeout=idx.connect_timeout)
        try:
            reader.get(cfg.source.index_pool, ".dir.rgw-changelog-config-check", [b"probe"])
        finally:
            reader.close()
    except ChangelogError as ex:
        raise type(ex)(f"{ex} ({fallback})") from ex
    return f"pool {cfg.source.index_pool!r} readable by {idx.client_name}"


def _probe_site(cfg: Config, site: SiteConfig) -> str:
    """A replication site: ListBuckets with its credentials, then the versioning of each bucket
    it is mapped to (the configured ``buckets``; the rest are only known when followed)."""
    from changelog.consumers.replication.sites import site_client
    from changelog.pipeline.s3client import translate_error

    client = site_client(site, max_attempts=2, pool=1)
    try:
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        except Exception as ex:
            raise translate_error(ex, f"ListBuckets at {site.endpoint or 'AWS S3'}") from ex
        states = []
        for bucket in site.buckets:
            dest = site.site_bucket(bucket)
            try:
                status = client.get_bucket_versioning(Bucket=dest).get("Status") or "unversioned"
            except Exception as ex:
                raise translate_error(ex, f"bucket {dest} (for {bucket})") from ex
            states.append(f"{dest} {status.lower()}" + ("" if dest in names else " (not listed)"))
    finally:
        client.close()
    mapped = f"; {', '.join(states)}" if states else "; every followed bucket, same names unless mapped"
    return f"{site.endpoint or 'AWS S3'}, {len(names)} buckets listed{mapped}"


def _probe_target(target: Target, url: str) -> str:
    """One cheap request (the first page of a listing) that fails on a wrong endpoint, bucket or
    credentials."""
    next(iter(target.list(page=1)), None)
    return url


# --------------------------------------------------------------------------- record


@cli.command("record")
@click.option(
    "--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Records per write."
)
@click.option(
    "--source",
    metavar="NAME",
    help="A stable stream name: each line's position is its `position` field or else its line "
    "number, so a rerun of the same input records nothing twice (default: a new stream per run).",
)
@click.option(
    "--partial", is_flag=True, help="Record the good lines even when some are bad (then exit 1 all the same)."
)
@json_option
def record_cmd(batch: int, source: str | None, partial: bool, as_json: bool) -> None:
    """Record mutations given as JSON Lines on stdin through the write hook.

    One object per line: bucket, key, op (write | delete | delete_marker | bucket_create |
    bucket_delete, whose key is null; default write), and optionally tenant, version_id, size,
    etag, storage_class, mtime (a time or epoch seconds; default now) or mtime_ns, seq, source
    and position (the event's identity: a repeated source+position is recorded once), baseline,
    metadata. A change-log line (with "v") is accepted as it is: its time is the mutation time
    and its mtime the object's.

    The whole input is checked first: if any line is bad, every bad line is listed (line,
    field, why) and nothing is recorded, unless --partial.
    """
    from changelog.cli.record_input import check_input, check_source

    if source is not None:
        why = check_source(source)
        if why:
            raise click.BadParameter(why, param_hint="--source")
    index = state().index()
    checked = check_input(stdin(), source=source)
    try:
        total = RecordResult(0, 0)
        if partial or not checked.bad:
            total = _record_checked(index, checked, batch=batch, source=source)
    finally:
        checked.close()
    _report_record(checked, total, as_json=as_json, partial=partial, source=source)


def _record_checked(index: ChangeIndex, checked: Checked, *, batch: int, source: str | None) -> RecordResult:
    """Record the good lines, ``batch`` at a time; on a failure, say how far it got."""
    total = RecordResult(0, 0)
    with Progress("record", total=checked.good, unit="records") as bar:
        try:
            for ms in checked.batches(batch):
                total = total + index.record_many(ms)
                bar.update(len(ms))
        except ChangelogError as ex:
            done = total.written + total.duplicates
            rerun = (
                f"recording the input again with --source {source} records the rest only"
                if source
                else "recording the input again records those again: use --source to make reruns safe"
            )
            kind = TransientError if isinstance(ex, TransientError) else ChangelogError
            raise kind(f"{ex} ({done} of {checked.good} good lines recorded before this; {rerun})") from ex
    return total


def _report_record(
    checked: Checked, total: RecordResult, *, as_json: bool, partial: bool, source: str | None
) -> None:
    """What was recorded; the bad lines, one per line on stderr, and exit 1 if there were any."""
    if as_json:
        doc: dict[str, object] = {"recorded": total.written, "duplicates": total.duplicates}
        if checked.bad:
            doc.update(bad_lines=checked.bad, bad=[b.doc() for b in checked.shown])
        emit_json(doc)
    if not checked.bad:
        if not as_json:
            click.echo(
                f"recorded {total.written} mutations ({total.duplicates} duplicates skipped)", err=True
            )
        return
    if checked.bad > 1 or partial:
        for line in checked.shown:
            click.echo(str(line), err=True)
        if checked.bad > len(checked.shown):
            click.echo(f"... and {checked.bad - len(checked.shown)} more bad lines", err=True)
    summary = f"{checked.bad} bad line{'s' if checked.bad > 1 else ''} of {checked.lines}"
    if not partial:
        first = f"{checked.shown[0]}; " if checked.bad == 1 else ""
        raise InvalidMutation(f"{first}{summary}, nothing recorded (--partial records the good lines)")
    if not as_json:
        click.echo(f"recorded {total.written} mutations ({total.duplicates} duplicates skipped)", err=True)
    if source is not None and checked.shown[0].lineno < checked.last_good:
        # The index keeps one high-water mark per shard and source: a corrected line whose shard
        # already holds a later line of this source would be taken for a duplicate.
        click.echo(
            f"note: record the corrected lines alone, under another --source than {source!r}: "
            "rerunning the whole input skips a line that comes before one already recorded",
            err=True,
        )
    raise InvalidMutation(
        f"{summary} not recorded: line{'s' if checked.bad > 1 else ''} {checked.bad_lines_text()}"
    )
