"""The operator CLI, ``rgw-changelog``: serve, collect, inspect and trim the index, read the logs.

One error boundary (``Cli.main``) turns every failure into one line on stderr and an exit code:
2 for usage and configuration errors, 1 for runtime errors (``ChangelogError`` and anything
unexpected). Tracebacks go to the log file (``[logging] file``) and to stderr only with
``--debug``. Listing commands take ``--json``; machine output goes to stdout, everything else to
stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, NoReturn

import click
import orjson

from changelog import __version__
from changelog.config import Config, load_config
from changelog.errors import ChangelogError, ConfigError, LockBusy
from changelog.progress import Progress

if TYPE_CHECKING:
    from changelog.index import ChangeIndex

logger = logging.getLogger(__name__)

PROG = "rgw-changelog"
EXIT_RUNTIME = 1
EXIT_USAGE = 2
# Name of the per-shard lease the collector takes while draining (docs/design.md §4-5); an
# operator's trim takes the same lease so the two never work on one shard at once.
DRAIN_LOCK = "drain"
# How long `status` waits for a running `serve` to answer on its API before reading directly.
API_TIMEOUT_S = 1.0

# --------------------------------------------------------------------------- times

_REL = re.compile(r"^-?((?:\d+(?:\.\d+)?[smhdw])+)$")
_REL_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = "RFC 3339 (2026-11-21T10:00:00Z), YYYY-MM-DD, epoch seconds, or relative (-1h, 30m, 2d: ago)"


def parse_time(text: str, *, now: float | None = None) -> int:
    """A time given by a user, as microseconds since the epoch (UTC).

    Accepts ``now``, RFC 3339 (a missing offset means UTC), ``YYYY-MM-DD`` (midnight UTC), epoch
    seconds (``1763700000`` or ``1763700000.5``) and relative times (``-1h``, ``30m``, ``1h30m``,
    ``2d``: that long ago). Raises ``ValueError`` otherwise.
    """
    t = text.strip()
    now = time.time() if now is None else now
    if t == "now":
        return int(now * 1_000_000)
    m = _REL.match(t)
    if m:
        ago = sum(float(n) * _UNIT_S[u] for n, u in _REL_PART.findall(m.group(1)))
        return int((now - ago) * 1_000_000)
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return int(float(t) * 1_000_000)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        d = datetime.strptime(t, "%Y-%m-%d").replace(tzinfo=UTC)
        return int(d.timestamp()) * 1_000_000
    try:
        d = datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time") from None
    if "T" not in t.upper() and " " not in t:
        raise ValueError(f"{text!r} is not a time")
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1_000_000)


def fmt_time(t_us: int | float | None) -> str | None:
    if t_us is None:
        return None
    return datetime.fromtimestamp(t_us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


class TimeType(click.ParamType):  # type: ignore[type-arg]
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a time: use {TIME_HELP}", param, ctx)


TIME = TimeType()

# --------------------------------------------------------------------------- logging


class _StderrFormatter(logging.Formatter):
    """One line per record on stderr; the traceback only when ``--debug``."""

    def __init__(self, fmt: str, *, tracebacks: bool) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks:
            return super().format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


_handlers: list[logging.Handler] = []


def teardown_logging() -> None:
    """Remove the handlers ``setup_logging`` added (the streams they hold may be closed next)."""
    root = logging.getLogger()
    for h in _handlers:
        root.removeHandler(h)
        with contextlib.suppress(Exception):
            h.close()
    _handlers.clear()


def setup_logging(
    *,
    debug: bool,
    verbose: int,
    console_level: str | None = None,
    file: str | None = None,
    file_level: str = "INFO",
) -> None:
    """stderr gets ``console_level`` (default WARNING; INFO with -v, DEBUG with -vv or --debug);
    the log file, if configured, gets ``file_level`` and full tracebacks."""
    root = logging.getLogger()
    teardown_logging()
    if debug or verbose >= 2:
        console = logging.DEBUG
    elif verbose == 1:
        console = logging.INFO
    else:
        console = logging.getLevelName(console_level or "WARNING")
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(console)
    if not debug:
        # The boundary prints its own one-line message; the traceback record is for the log file.
        err.addFilter(lambda record: not getattr(record, "boundary", False))
    err.setFormatter(_StderrFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", tracebacks=debug))
    _handlers.append(err)
    levels = [console]
    if file:
        try:
            fh = logging.FileHandler(file, encoding="utf-8")
        except OSError as ex:
            raise ConfigError(f"logging.file: cannot open {file}: {ex.strerror or ex}") from None
        fl = logging.DEBUG if debug else logging.getLevelName(file_level)
        fh.setLevel(fl)
        fh.setFormatter(logging.Formatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s"))
        _handlers.append(fh)
        levels.append(fl)
    for h in _handlers:
        root.addHandler(h)
    root.setLevel(min(levels))
    # boto and urllib3 are chatty at DEBUG: only with -vvv.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)


# --------------------------------------------------------------------------- state and boundary


@dataclasses.dataclass
class State:
    """What the global options carry to the commands; opens things lazily, closes them at exit."""

    config_path: str | None
    debug: bool
    verbose: int
    _config: Config | None = None
    _index: ChangeIndex | None = None
    _target: Any = None
    _closers: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
            lc = self._config.logging
            if lc.file:
                setup_logging(debug=self.debug, verbose=self.verbose, file=lc.file, file_level=lc.level)
        return self._config

    def index(self, *, create: bool = True) -> ChangeIndex:
        if self._index is None:
            from changelog.config import open_index

            self._index = open_index(self.config, create=create)
            self._closers.append(self._index.store.close)
        return self._index

    def target(self) -> Any:
        if self._target is None:
            from changelog.config import open_target

            self._target = open_target(self.config)
            close = getattr(self._target, "close", None)
            if callable(close):
                self._closers.append(close)
        return self._target

    def close(self) -> None:
        while self._closers:
            fn = self._closers.pop()
            try:
                fn()
            except Exception:  # closing must not mask the command's own outcome
                logger.debug("error while closing", exc_info=True)


def _log_failure(what: str, ex: BaseException) -> None:
    """The failure with its traceback, for the log file (and for stderr with --debug only:
    without it the console handler drops records marked ``boundary``)."""
    logger.error("%s: %s", what, _one_line(str(ex)), exc_info=ex, extra={"boundary": True})


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _say_error(prefix: str, text: str) -> None:
    click.echo(f"{prefix}: {_one_line(text)}", err=True)


class SuggestingGroup(click.Group):
    """A group that names the closest command on a typo."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise click.UsageError(f"no such command {name!r}{hint}", ctx)
        return super().resolve_command(ctx, args)


class Cli(SuggestingGroup):
    """The command group with the error boundary: every way out of a command ends here."""

    group_class = SuggestingGroup

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
        code = 0
        try:
            rv = super().main(argv, prog_name=prog_name or PROG, complete_var=complete_var, standalone_mode=False, **extra)
            if isinstance(rv, int):
                code = rv
        except click.exceptions.Exit as ex:
            code = ex.exit_code
        except click.exceptions.Abort:
            _say_error("error", "aborted")
            code = EXIT_RUNTIME
        except click.UsageError as ex:
            hint = ""
            if ex.ctx is not None:
                hint = f" (see '{ex.ctx.command_path} --help')"
            _say_error("usage error", ex.format_message() + hint)
            code = EXIT_USAGE
        except click.ClickException as ex:  # e.g. a file option that cannot be opened
            _say_error("error", ex.format_message())
            code = EXIT_USAGE if isinstance(ex, click.BadParameter) else EXIT_RUNTIME
        except ConfigError as ex:
            _log_failure("config error", ex)
            _say_error("config error", str(ex))
            code = EXIT_USAGE
        except ChangelogError as ex:
            _log_failure("error", ex)
            _say_error("error", str(ex))
            code = EXIT_RUNTIME
        except KeyboardInterrupt:
            click.echo("", err=True)
            _say_error("error", "interrupted")
            code = 130
        except BrokenPipeError:
            # The reader went away (`| head`): not an error of ours. Silence the interpreter's own
            # complaint when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            code = 141
        except Exception as ex:
            _log_failure(f"unexpected {type(ex).__name__}", ex)
            hint = "" if debug else " (run with --debug for the traceback)"
            _say_error("error", f"unexpected {type(ex).__name__}: {ex}{hint}")
            code = EXIT_RUNTIME
        finally:
            teardown_logging()
        sys.exit(code)


def _state() -> State:
    return click.get_current_context().find_object(State)  # type: ignore[return-value]


def _out() -> IO[bytes]:
    # sys.stdout at call time: click's test runner and pytest swap it.
    return sys.stdout.buffer


def _in() -> IO[bytes]:
    return sys.stdin.buffer


def _emit_json(doc: Any) -> None:
    out = _out()
    out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    out.flush()


def _emit_line(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (default: $RGW_CHANGELOG_CONFIG, then /etc/rgw-changelog/rgw-changelog.toml, "
    "then built-in defaults: a sqlite index and ./changelog-logs/).",
)
@click.option("--debug", is_flag=True, help="Debug logging and full tracebacks on stderr.")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.version_option(__version__, "-V", "--version", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, verbose: int) -> None:
    """rgw-changelog: record every object mutation of a Ceph RGW zone and write it, exactly once,
    to JSON Lines change-log objects.

    Times (--since, --until, --before) accept RFC 3339, YYYY-MM-DD, epoch seconds or a relative
    time such as -1h or 30m (that long ago).
    """
    setup_logging(debug=debug, verbose=verbose)
    ctx.obj = State(config_path=config_path, debug=debug, verbose=verbose)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    cli.main()


# --------------------------------------------------------------------------- config


@cli.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@json_option
@click.option("--connect", is_flag=True, help="Also open the index store and the target.")
def config_check(as_json: bool, connect: bool) -> None:
    """Validate the config and print the effective config, secrets masked."""
    st = _state()
    cfg = st.config
    where = cfg.path or "built-in defaults (no config file)"
    if as_json:
        _emit_json({"path": cfg.path, "config": cfg.to_dict(masked=True)})
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
    from changelog.index import META_KEY

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


def _probe_target(target: Any) -> None:
    """One cheap request (the first page of a listing) that fails on a wrong endpoint, bucket or
    credentials."""
    next(iter(target.list(page=1)), None)


# --------------------------------------------------------------------------- record


def _mutation_from_json(doc: Any, *, stream: Any, lineno: int) -> Any:
    from changelog.errors import InvalidMutation
    from changelog.mutation import Mutation

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
    from changelog.index import HookStream, RecordResult

    index = _state().index()
    stream = HookStream("cli")
    if source:
        stream.source = source
    total = RecordResult(0, 0)
    pending: list[Any] = []
    stdin = _in()
    with Progress("record", unit="records") as bar:
        for lineno, line in enumerate(stdin, 1):
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
        _emit_json({"recorded": total.written, "duplicates": total.duplicates})
    else:
        click.echo(f"recorded {total.written} mutations ({total.duplicates} duplicates skipped)", err=True)


# --------------------------------------------------------------------------- shards


def _check_shard(index: ChangeIndex, shard: int) -> None:
    if not 0 <= shard < index.shards:
        raise click.BadParameter(
            f"no shard {shard}: this index has shards 0..{index.shards - 1}", param_hint="'SHARD'"
        )


def _lock_doc(info: Any, now: float) -> dict[str, Any] | None:
    if info is None:
        return None
    expires = getattr(info, "expires_at", None)
    return {
        "holder": info.holder,
        "cookie": info.cookie,
        "description": info.description,
        "expires": fmt_time(expires * 1_000_000) if expires else None,
        "expires_in": None if expires is None else round(expires - now, 3),
    }


def shard_docs(index: ChangeIndex, *, now: float | None = None) -> list[dict[str, Any]]:
    """Per-shard facts for `status` and `shards list`: entries, oldest entry and its age, floor,
    drain lease."""
    now = time.time() if now is None else now
    out = []
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
                    "lease": _lock_doc(index.store.lock_info(oid, DRAIN_LOCK), now),
                }
            )
            bar.update()
    return out


def _lease_text(doc: dict[str, Any] | None) -> str:
    if doc is None:
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
    index = _state().index()
    docs = shard_docs(index)
    if as_json:
        _emit_json(docs)
        return
    _table(
        [
            [str(d["shard"]), d["oid"], str(d["entries"]), d["oldest"] or "-", fmt_age(d["oldest_age_s"]),
             _lease_text(d["lease"])]
            for d in docs
        ],
        ["SHARD", "OBJECT", "ENTRIES", "OLDEST", "AGE", "DRAIN LEASE"],
    )  # fmt: skip


def _dump_doc(entry: Any) -> dict[str, Any]:
    from changelog.logformat import record_of

    doc = record_of(entry).to_dict()
    doc["shard"] = entry.shard
    doc["index_key"] = entry.key
    return doc


@shards_group.command("dump")
@click.argument("shard", type=int)
@click.option("--since", type=TIME, help="Entries recorded at or after this time.")
@click.option("--until", type=TIME, help="Entries recorded before this time.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
def shards_dump(shard: int, since: int | None, until: int | None, limit: int | None) -> None:
    """Print a shard's entries as JSON Lines, in key order (recording time).

    Each line is a change-log record plus "shard" and "index_key" (usable with `shards trim --upto`).
    """
    index = _state().index()
    _check_shard(index, shard)
    out = _out()
    n = 0
    with Progress(f"dump shard {shard}", unit="entries") as bar:
        for entry in index.scan(shard, since_us=since, until_us=until):
            line = _emit_line(_dump_doc(entry))
            out.write(line)
            n += 1
            bar.update(1, nbytes=len(line))
            if limit is not None and n >= limit:
                break
    out.flush()
    logger.info("dumped %d entries of shard %d", n, shard)


def _trim_candidates(index: ChangeIndex, shard: int, before: int | None, upto: str | None) -> Iterator[Any]:
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
    from changelog import keys
    from changelog.lease import Lease, make_cookie

    if (before is None) == (upto is None):
        raise click.UsageError("give exactly one of --before TIME or --upto KEY")
    if upto is not None:
        try:
            keys.time_of(upto)
        except ValueError:
            raise click.BadParameter(f"{upto!r} is not an index key (d.<time>.<obj>.<ver>.<event>)", param_hint="'--upto'") from None
    st = _state()
    index = st.index()
    _check_shard(index, shard)
    oid = index.shard_oid(shard)
    lease = Lease(
        index.store,
        oid,
        name=DRAIN_LOCK,
        ttl=max(st.config.collector.lease_ttl, 10.0),
        description="rgw-changelog shards trim",
        cookie=make_cookie("trim"),
    )
    if not lease.acquire():
        info = index.store.lock_info(oid, DRAIN_LOCK)
        who = _lease_text(_lock_doc(info, time.time())) if info else "another process"
        raise LockBusy(f"shard {shard} is being drained by {who}: stop the collector or try again later")
    lease.start_renewing()
    try:
        count = 0
        first = last = None
        with Progress(f"count shard {shard}", unit="entries") as bar:
            for entry in _trim_candidates(index, shard, before, upto):
                count += 1
                first = first or entry
                last = entry
                bar.update()
        if count == 0:
            click.echo(f"shard {shard}: nothing to trim", err=True)
            return
        assert first is not None and last is not None
        what = (
            f"shard {shard}: {count} entries recorded from {fmt_time(first.time_us)} to {fmt_time(last.time_us)} "
            f"(keys {first.key} .. {last.key})"
        )
        click.echo(what, err=True)
        if not yes:
            try:
                ok = click.confirm(f"Trim these {count} entries? They will not reach the change log", err=True)
            except click.exceptions.Abort:
                raise click.UsageError("no confirmation (stdin closed): nothing trimmed; pass --yes to trim") from None
            if not ok:
                click.echo("nothing trimmed", err=True)
                return
        removed = 0
        page: list[str] = []
        with Progress(f"trim shard {shard}", total=count, unit="entries") as bar:
            for entry in _trim_candidates(index, shard, before, upto):
                if entry.key > last.key:  # never beyond what was counted and confirmed
                    break
                page.append(entry.key)
                if len(page) >= 1000:
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
        click.echo(f"shard {shard}: trimmed {removed} entries", err=True)
    finally:
        lease.release()


# --------------------------------------------------------------------------- collector


def _collector(st: State, **extra: Any) -> Any:
    from changelog.config import make_collector

    return make_collector(st.config, st.index(), st.target(), **extra)


def _result_doc(result: Any) -> Any:
    if result is None:
        return None
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if isinstance(result, dict | list | int | float | str):
        return result
    return str(result)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (graceful); returns a function that restores the handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: Any) -> None:
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


def _pass_doc(result: Any) -> dict[str, Any]:
    doc = _result_doc(result)
    if not isinstance(doc, dict):
        return {"result": doc}
    for k in ("cutoff_us", "watermark_us"):
        if k in doc:
            doc[k[:-3]] = fmt_time(doc[k])
    return doc


def _pass_text(doc: dict[str, Any]) -> str:
    objs = doc.get("objects") or []
    text = f"{doc.get('entries', 0)} entries in {len(objs)} log objects up to {doc.get('cutoff')}"
    if doc.get("recovered"):
        text += f", {doc['recovered']} pending commits recovered"
    if doc.get("skipped_shards"):
        text += f", shards {list(doc['skipped_shards'])} skipped (locked by another drainer)"
    text += f"; watermark {doc.get('watermark') or 'unchanged'}"
    return text


def _one_pass(st: State, *, settle: float | None, as_json: bool, label: str) -> None:
    from changelog.index import OP_KEYS

    with Progress(label, unit="entries") as bar:
        hook = _PassProgress(bar, OP_KEYS)
        collector = _collector(st, fault_hook=hook)
        try:
            result = collector.run_pass(settle=settle)
        finally:
            collector.step_down()
    doc = _pass_doc(result)
    if as_json:
        _emit_json(doc)
    else:
        for name in doc.get("objects") or []:
            click.echo(name)
        click.echo(f"{label}: {_pass_text(doc)}", err=True)


@cli.command("collect")
@click.option("--once", is_flag=True, help="One full pass up to now - settle, then exit.")
@json_option
def collect_cmd(once: bool, as_json: bool) -> None:
    """Drain the index into change-log objects (the collector alone, without the follower).

    Without --once, runs until SIGTERM/SIGINT: standby while another collector holds the control
    lease, a pass every [collector] interval while active.
    """
    st = _state()
    if once:
        _one_pass(st, settle=None, as_json=as_json, label="collect")
        return
    collector = _collector(st)
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    logger.info("collector %s running (interval %.1fs)", collector.collector_id, st.config.collector.interval)
    try:
        collector.run(stop)
    finally:
        restore()


@cli.command("flush")
@json_option
def flush_cmd(as_json: bool) -> None:
    """Commit everything recorded so far now: a pass with no settle window, whatever the roll
    timers say. Fails if a running collector holds the control lease."""
    _one_pass(_state(), settle=0.0, as_json=as_json, label="flush")


@cli.command("serve")
def serve_cmd() -> None:
    """Run the follower, the collector and the HTTP API until SIGTERM.

    SIGTERM/SIGINT stop gracefully (current work finished, leases released); SIGHUP re-reads the
    config's [logging] section. Without [source] endpoint (the embedded setup) only the collector
    and the API run: mutations then come from `rgw-changelog record`.
    """
    st = _state()
    cfg = st.config
    _serve_logging(st, cfg)
    restore = _reload_on_sighup(st)
    try:
        from rgw_module import service

        # Without a [source] endpoint this serves the collector and the API only (embedded).
        service.serve(cfg)
    finally:
        restore()


def _serve_logging(st: State, cfg: Config) -> None:
    """A daemon logs at the config's level on stderr (the journal) and to the file, if any."""
    lc = cfg.logging
    setup_logging(debug=st.debug, verbose=st.verbose, console_level=lc.level, file=lc.file, file_level=lc.level)


def _reload_on_sighup(st: State) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(_signum: int, _frame: Any) -> None:
        try:
            cfg = load_config(st.config_path)
        except ConfigError as ex:
            logger.error("SIGHUP: config error, keeping the running settings: %s", ex)
            return
        _serve_logging(st, cfg)
        logger.info("SIGHUP: [logging] reloaded from %s; other changes take effect on restart", cfg.path or "defaults")

    saved = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, saved)

    return restore


# --------------------------------------------------------------------------- status


def _api_status(cfg: Config) -> dict[str, Any] | None:
    """The running serve's own status, if one answers on ``[api] listen``."""
    from changelog.api import ApiClient

    client = ApiClient(cfg.api.listen, timeout=API_TIMEOUT_S)
    try:
        doc = client.status()
    except ChangelogError as ex:
        logger.debug("no serve API: %s", ex)
        return None
    doc["from"] = client.base + "/_/status"
    return doc


def collect_status(cfg: Config, index: ChangeIndex, target: Any | None) -> dict[str, Any]:
    """What `status --json` prints, read directly from the index and the target."""
    now = time.time()
    shards = shard_docs(index, now=now)
    entries = sum(d["entries"] for d in shards)
    ages = [d["oldest_age_s"] for d in shards if d["oldest_age_s"] is not None]
    control = _lock_doc(_control_lock(index), now)
    doc: dict[str, Any] = {
        "from": "direct",
        "index": {
            "backend": cfg.index.backend,
            "prefix": index.prefix,
            "shards": index.shards,
            "mode": index.mode,
            "entries": entries,
            "oldest_age_s": max(ages) if ages else None,
        },
        "collector_lease": control,
        "collector": _collector_state(index),
        "shards": shards,
        "follower": _follower_status(cfg, index),
        "target": {"url": cfg.target.url},
    }
    if target is not None:
        doc["target"].update(_target_status(target))
    return doc


def _control_lock(index: ChangeIndex) -> Any:
    from changelog.collector import CONTROL_LOCK

    return index.store.lock_info(index.control_oid, CONTROL_LOCK)


def _collector_state(index: ChangeIndex) -> dict[str, Any]:
    """The collector's persisted state and its pending commits, from the control object."""
    from changelog.collector import PENDING_PREFIX, STATE_KEY, CollectorState, PendingCommit
    from changelog.store import omap_iter

    state = CollectorState.decode(index.store.omap_get(index.control_oid, [STATE_KEY]).get(STATE_KEY))
    pending = [
        PendingCommit.decode(v).name for _, v in omap_iter(index.store, index.control_oid, prefix=PENDING_PREFIX)
    ]
    return {
        "generation": state.generation,
        "last_cutoff": fmt_time(state.last_cutoff_us) if state.last_cutoff_us else None,
        "last_object": state.last_object,
        "watermark": fmt_time(state.watermark_us) if state.watermark_us else None,
        "pending_commits": pending,
    }


def _follower_status(cfg: Config, index: ChangeIndex) -> Any:
    try:
        from rgw_module import service
    except ImportError:
        return None
    fn = getattr(service, "follower_status", None)
    if not callable(fn):
        return None
    try:
        return fn(cfg, index)
    except ChangelogError as ex:
        return {"error": _one_line(str(ex))}


def _follower_text(f: Any) -> str:
    if not isinstance(f, dict):
        return "-" if f is None else str(f)
    if "error" in f:
        return f"unreadable: {f['error']}"
    lease = f.get("lease")
    cu = f.get("caught_up_until")
    parts = [
        f"lease {lease['holder']}" if isinstance(lease, dict) else "not running (no lease)",
        f"caught up until {fmt_time(cu * 1_000_000)} (lag {fmt_age(time.time() - cu)})" if cu else "not caught up yet",
        f"{len(f.get('buckets') or {})} buckets",
        f"{f.get('pending_shards', 0)} pending bucket-index shards",
        f"{f.get('shard_markers', 0)} shard markers",
    ]
    return ", ".join(parts)


def _target_status(target: Any) -> dict[str, Any]:
    from changelog.reader import target_status

    try:
        return target_status(target)
    except ChangelogError as ex:
        return {"error": _one_line(str(ex))}


@cli.command("status")
@json_option
@click.option("--direct", is_flag=True, help="Read the index and target directly, even if a serve answers on its API.")
def status_cmd(as_json: bool, direct: bool) -> None:
    """Entries and oldest entry per shard, leases, follower markers and lag, last log object,
    watermark."""
    st = _state()
    cfg = st.config
    doc = None if direct else _api_status(cfg)
    if doc is None:
        target = None
        try:
            target = st.target()
        except ChangelogError as ex:
            logger.warning("target unavailable: %s", ex)
        doc = collect_status(cfg, st.index(), target)
    if as_json:
        _emit_json(doc)
        return
    idx = doc.get("index", {})
    click.echo(
        f"index: {idx.get('backend')} prefix {idx.get('prefix')!r}, {idx.get('shards')} shards, mode {idx.get('mode')}; "
        f"{idx.get('entries')} entries, oldest entry age {fmt_age(idx.get('oldest_age_s'))}"
    )
    click.echo(f"collector lease: {_lease_text(doc.get('collector_lease'))}")
    coll = doc.get("collector") or {}
    if coll:
        click.echo(
            f"  generation {coll.get('generation')}, last cutoff {coll.get('last_cutoff') or '-'}, "
            f"pending commits {len(coll.get('pending_commits') or [])}"
        )
    tgt = doc.get("target") or {}
    click.echo(f"target: {tgt.get('url')}")
    if tgt.get("error"):
        click.echo(f"  unreachable: {tgt['error']}")
    click.echo(f"  last log object: {tgt.get('last_object') or '-'}")
    wm = tgt.get("watermark")
    click.echo(f"  watermark: {(wm or {}).get('complete_until', '-') if isinstance(wm, dict) else wm or '-'}")
    click.echo(f"follower: {_follower_text(doc.get('follower'))}")
    click.echo("")
    _table(
        [
            [str(d["shard"]), str(d["entries"]), fmt_age(d["oldest_age_s"]), _lease_text(d.get("lease"))]
            for d in doc.get("shards", [])
        ],
        ["SHARD", "ENTRIES", "OLDEST AGE", "DRAIN LEASE"],
    )


# --------------------------------------------------------------------------- logs


@cli.group("logs")
def logs_group() -> None:
    """List and read the committed change-log objects."""


@logs_group.command("list")
@click.option("--since", type=TIME, help="Log objects whose cutoff is after this time.")
@json_option
def logs_list(since: int | None, as_json: bool) -> None:
    """The committed log objects, oldest first."""
    from changelog import reader

    target = _state().target()
    objs = [_log_doc(o) for o in reader.list_logs(target, since_us=since)]
    if as_json:
        _emit_json(objs)
        return
    _table(
        [[o["name"], str(o.get("size", "-")), o.get("cutoff") or "-", str(o.get("seq", "-"))] for o in objs],
        ["NAME", "SIZE", "CUTOFF", "SEQ"],
    )
    click.echo(f"{len(objs)} log objects in {st_url(target)}", err=True)


def st_url(target: Any) -> str:
    return str(getattr(target, "url", target))


def _log_doc(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    for k, v in list(d.items()):
        if k.endswith("_us") and isinstance(v, int):
            d[k[:-3]] = fmt_time(v)
            del d[k]
    return d


@logs_group.command("cat")
@click.option("--since", type=TIME, help="Records recorded at or after this time.")
@click.option("--until", type=TIME, help="Records recorded before this time.")
@click.option("--bucket", help="Only this bucket.")
@click.option("--prefix", help="Only keys with this prefix.")
@click.option("--after", metavar="NAME", help="Only log objects after this one (a consumer's checkpoint).")
def logs_cat(since: int | None, until: int | None, bucket: str | None, prefix: str | None, after: str | None) -> None:
    """Print change-log records as JSON Lines on stdout, in log order, each id once.

    --since/--until select by the time a record reached the index ("recorded"), the order the
    logs are written in.
    """
    from changelog import reader

    target = _state().target()
    out = _out()
    n = 0
    with Progress("read logs", unit="records") as bar:
        for rec in reader.read_records(
            target, since_us=since, until_us=until, after=after, bucket=bucket, key_prefix=prefix
        ):
            line = rec.encode()
            if not line.endswith(b"\n"):
                line += b"\n"
            out.write(line)
            n += 1
            bar.update(1, nbytes=len(line))
    out.flush()
    logger.info("%d records", n)


# --------------------------------------------------------------------------- zone


@cli.group("zone")
def zone_group() -> None:
    """radosgw zone settings the follower needs."""


@zone_group.command("enable-log-data")
@click.option("--zonegroup", default="default", show_default=True, help="The zonegroup whose zones to change.")
@click.option("--zone", "zones", multiple=True, metavar="NAME", help="Only this zone (repeatable; default: all).")
@click.option("--ceph-conf", metavar="PATH", help="ceph.conf for radosgw-admin (default: [index] ceph_conf).")
@click.option("--keyring", metavar="PATH", help="Keyring for radosgw-admin (default: [index] keyring).")
@click.option("--name", "client_name", metavar="CLIENT", help="Ceph client for radosgw-admin (default: client.admin).")
@click.option("--radosgw-admin", "binary", default="radosgw-admin", show_default=True, metavar="PATH")
@click.option("--dry-run", is_flag=True, help="Show each zone's log_data; change nothing.")
@json_option
def zone_enable_log_data(
    zonegroup: str,
    zones: tuple[str, ...],
    ceph_conf: str | None,
    keyring: str | None,
    client_name: str | None,
    binary: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Turn on the zone's data log and bucket index logs (log_data), which the follower reads.

    Runs radosgw-admin zonegroup get/set (and period update --commit when a realm exists).
    radosgw must be restarted afterwards; mutations made before that are covered by the
    follower's full sync.
    """
    from rgw_module.zone import RadosgwAdmin, enable_log_data, log_data_zones

    cfg = _state().config
    admin = RadosgwAdmin(
        binary=binary,
        conf=ceph_conf or cfg.index.ceph_conf,
        keyring=keyring or cfg.index.keyring,
        name=client_name,
    )
    if dry_run:
        state = log_data_zones(admin.json("zonegroup", "get", f"--rgw-zonegroup={zonegroup}"))
        if zones:
            state = {z: on for z, on in state.items() if z in zones}
        if as_json:
            _emit_json({"zonegroup": zonegroup, "log_data": state})
        else:
            for z, on in state.items():
                click.echo(f"zone {z}: log_data {'on' if on else 'off'}")
        return
    changed = enable_log_data(zonegroup=zonegroup, zones=list(zones) or None, admin=admin)
    if as_json:
        _emit_json({"zonegroup": zonegroup, "changed": changed, "restart_radosgw": bool(changed)})
    elif changed:
        click.echo(f"log_data turned on for zone(s) {', '.join(changed)} of zonegroup {zonegroup}: restart radosgw now")
    else:
        click.echo(f"log_data is already on for zonegroup {zonegroup}: nothing to do")


# --------------------------------------------------------------------------- plug-ins

# Command groups that live with their subsystem: (module, command name, attributes to look for).
# A missing module is fine (that subsystem is not there); one that fails to import shows up as a
# command that explains why, so the other commands keep working.
PLUGINS = (("changelog.backup.cli", "backup", ("backup_group", "backup")),)


def _load_plugins() -> None:
    import importlib

    for modname, name, attrs in PLUGINS:
        if name in cli.commands:
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as ex:
            if ex.name is not None and modname.startswith(ex.name):
                continue
            _broken_plugin(name, ex)
            continue
        except Exception as ex:  # a broken subsystem must not take the other commands down
            _broken_plugin(name, ex)
            continue
        for attr in attrs:
            cmd = getattr(mod, attr, None)
            if isinstance(cmd, click.Command):
                cli.add_command(cmd, name)
                break


def _broken_plugin(name: str, error: BaseException) -> None:
    message = f"the {name} commands cannot be loaded: {type(error).__name__}: {error}"

    @cli.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def broken() -> None:
        raise ChangelogError(message)

    broken.help = f"(unavailable: {error})"


_load_plugins()


if __name__ == "__main__":
    main()
