"""``rgw-changelog config check`` and ``rgw-changelog record`` (the embedded write hook: JSON
Lines on stdin into the index)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import click
import orjson

from changelog.cli.base import (
    State,
    cli,
    emit_json,
    json_option,
    state,
    stdin,
)
from changelog.progress import Progress
from changelog.times import parse_time

if TYPE_CHECKING:
    from changelog.pipeline.index import HookStream
    from changelog.pipeline.mutation import Mutation
    from changelog.pipeline.targets import Target

logger = logging.getLogger("changelog.cli")

# --------------------------------------------------------------------------- config


@cli.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@json_option
@click.option("--connect", is_flag=True, help="Also open the index store and the target.")
def config_check(as_json: bool, connect: bool) -> None:
    """Validate the config and print the effective config, secrets masked."""
    st = state()
    cfg = st.config
    where = cfg.path or "built-in defaults (no config file)"
    if as_json:
        emit_json({"path": cfg.path, "config": cfg.to_dict(masked=True)})
    else:
        click.echo(f"# effective config, from {where}")
        click.echo(cfg.to_toml().rstrip())
    if connect:
        _check_index(st)
        target = st.target()
        _probe_target(target)
        click.echo(f"target: ok ({cfg.target.url})", err=True)
    click.echo(f"config ok: {where}", err=True)


def _check_index(st: State) -> None:
    """Reach the index store; check the index there (if it exists yet) matches the config."""
    from changelog.config import open_index, open_store
    from changelog.pipeline.index import META_KEY

    cfg = st.config
    store = open_store(cfg)
    try:
        if not store.omap_get(f"{cfg.index.prefix}.control", [META_KEY]):
            click.echo(f"index: store ok; no index {cfg.index.prefix!r} yet (created on first use)", err=True)
            return
        index = open_index(cfg, store=store, create=False)
        click.echo(f"index: ok ({index.shards} shards, mode {index.mode}, prefix {index.prefix!r})", err=True)
    finally:
        store.close()


def _probe_target(target: Target) -> None:
    """One cheap request (the first page of a listing) that fails on a wrong endpoint, bucket or
    credentials."""
    next(iter(target.list(page=1)), None)


# --------------------------------------------------------------------------- record


def _mutation_from_json(doc: object, *, stream: HookStream, lineno: int) -> Mutation:
    from changelog.errors import InvalidMutation
    from changelog.pipeline.mutation import Mutation

    if not isinstance(doc, dict):
        raise InvalidMutation(f"line {lineno}: expected a JSON object")
    known = {
        "bucket", "key", "op", "version_id", "size", "etag", "mtime", "mtime_ns", "time",
        "seq", "source", "position", "baseline", "metadata",
    }  # fmt: skip
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InvalidMutation(f"line {lineno}: unknown field {unknown[0]!r}")
    try:
        if "mtime_ns" in doc:
            mtime_ns = doc["mtime_ns"]
        elif "mtime" in doc or "time" in doc:
            raw = doc.get("mtime", doc.get("time"))
            mtime_ns = int(raw * 1e9) if isinstance(raw, int | float) else parse_time(str(raw)) * 1000
        else:
            mtime_ns = time.time_ns()
        position = doc.get("position") or stream.next_position()
        m = Mutation(
            bucket=doc.get("bucket", ""),
            key=doc.get("key", ""),
            op=doc.get("op", "write"),
            mtime_ns=mtime_ns,
            source=doc.get("source") or stream.source,
            position=str(position),
            seq=str(doc.get("seq") or f"{mtime_ns:020d}.{position}"),
            version_id=doc.get("version_id"),
            size=doc.get("size"),
            etag=doc.get("etag"),
            baseline=bool(doc.get("baseline", False)),
            metadata=doc.get("metadata") or {},
        )
    except InvalidMutation as ex:
        raise InvalidMutation(f"line {lineno}: {ex}") from ex
    except (TypeError, ValueError) as ex:
        raise InvalidMutation(f"line {lineno}: {ex}") from ex
    return m


@cli.command("record")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Records per write.")
@click.option("--source", help="Source stream name (default: one per run); with --source, positions must be given.")
@json_option
def record_cmd(batch: int, source: str | None, as_json: bool) -> None:
    """Record mutations given as JSON Lines on stdin through the write hook.

    One object per line: bucket, key, op (write | delete | delete_marker; default write), and
    optionally version_id, size, etag, mtime (a time or epoch seconds; default now), seq,
    source and position (the event's identity: a repeated source+position is recorded once),
    baseline, metadata.
    """
    from changelog.errors import InvalidMutation
    from changelog.pipeline.index import HookStream, RecordResult

    index = state().index()
    stream = HookStream("cli")
    if source:
        stream.source = source
    total = RecordResult(0, 0)
    pending: list[Mutation] = []
    lines = stdin()
    with Progress("record", unit="records") as bar:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as ex:
                raise InvalidMutation(f"line {lineno}: not JSON ({ex})") from None
            pending.append(_mutation_from_json(doc, stream=stream, lineno=lineno))
            if len(pending) >= batch:
                total = total + index.record_many(pending)
                bar.update(len(pending))
                pending = []
        if pending:
            total = total + index.record_many(pending)
            bar.update(len(pending))
    if as_json:
        emit_json({"recorded": total.written, "duplicates": total.duplicates})
    else:
        click.echo(f"recorded {total.written} mutations ({total.duplicates} duplicates skipped)", err=True)

