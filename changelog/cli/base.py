"""The operator CLI's frame: the ``rgw-changelog`` group and its global options, the one error
boundary (``Cli.main``), logging setup, and what every command shares (``State``, JSON output,
tables, the TIME parameter type). The commands live beside it, one module per area.

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
import sys
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, NoReturn

import click
import orjson

from changelog import __version__
from changelog.config import Config, load_config
from changelog.errors import ChangelogError, ConfigError, one_line
from changelog.times import TIME_HELP, parse_time

if TYPE_CHECKING:
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.targets import Target

logger = logging.getLogger("changelog.cli")

PROG = "rgw-changelog"
EXIT_RUNTIME = 1
EXIT_USAGE = 2
# How long `status` waits for a running `serve` to answer on its API before reading directly.
API_TIMEOUT_S = 1.0


class TimeType(click.ParamType):  # type: ignore[type-arg]
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a time: use {TIME_HELP}", param, ctx)


TIME = TimeType()


def record_bucket(_ctx: click.Context | None, _param: click.Parameter | None, value: str | None) -> str | None:
    """A ``--bucket`` as the records spell it: ``bucket``, or ``tenant/bucket`` for a tenant's
    (the names a record may hold, ``Mutation``). Anything else would match no record (an empty
    answer, as if the bucket had none): refused in one line. The S3 spelling ``tenant:bucket``
    is answered with the records' one."""
    from changelog.pipeline.mutation import MAX_BUCKET_BYTES, valid_tenant

    if value is None:
        return None
    if ":" in value and "/" not in value:
        raise click.BadParameter(f"a tenant's bucket is written tenant/bucket: {value.replace(':', '/', 1)}")
    tenant, slash, name = value.partition("/") if "/" in value else ("", "", value)
    bad_name = not name or "/" in name or "\x00" in name or len(name.encode()) > MAX_BUCKET_BYTES
    if bad_name or (slash and not valid_tenant(tenant)):
        raise click.BadParameter(f"{value!r} is not a bucket: bucket, or tenant/bucket for a tenant's")
    return value


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
    the log file, if configured, gets ``file_level`` and full tracebacks.

    A log file that cannot be opened raises ``ConfigError`` and leaves the handlers in place as
    they were (at start the plain stderr one, on a reload the running ones), so the boundary's
    one-line message is all the user sees."""
    if debug or verbose >= 2:
        console = logging.DEBUG
    elif verbose == 1:
        console = logging.INFO
    else:
        console = logging.getLevelName(console_level or "WARNING")
    handlers: list[logging.Handler] = []
    levels = [console]
    if file:
        try:
            fh = logging.FileHandler(file, encoding="utf-8")
        except (OSError, ValueError) as ex:  # ValueError: a NUL in the path
            why = ex.strerror if isinstance(ex, OSError) and ex.strerror else str(ex)
            raise ConfigError(f"logging.file: cannot open {file}: {why}") from None
        fl = logging.DEBUG if debug else logging.getLevelName(file_level)
        fh.setLevel(fl)
        fh.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
        )
        handlers.append(fh)
        levels.append(fl)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(console)
    if not debug:
        # The boundary prints its own one-line message; the traceback record is for the log file.
        err.addFilter(lambda record: not getattr(record, "boundary", False))
    err.setFormatter(_StderrFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", tracebacks=debug))
    handlers.insert(0, err)
    teardown_logging()
    _handlers.extend(handlers)
    root = logging.getLogger()
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
    _target: Target | None = None
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

    def target(self) -> Target:
        if self._target is None:
            from changelog.config import open_target

            self._target = open_target(self.config)
            self._closers.append(self._target.close)
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
    logger.error("%s: %s", what, one_line(str(ex)), exc_info=ex, extra={"boundary": True})


def say_error(prefix: str, text: str) -> None:
    click.echo(f"{prefix}: {one_line(text)}", err=True)


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
        **extra: object,
    ) -> NoReturn:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
        code = 0
        try:
            rv = super().main(
                argv, prog_name=prog_name or PROG, complete_var=complete_var, standalone_mode=False, **extra
            )
            if isinstance(rv, int):
                code = rv
        except click.exceptions.Exit as ex:
            code = ex.exit_code
        except click.exceptions.Abort:
            say_error("error", "aborted")
            code = EXIT_RUNTIME
        except click.UsageError as ex:
            hint = ""
            if ex.ctx is not None:
                hint = f" (see '{ex.ctx.command_path} --help')"
            say_error("usage error", ex.format_message() + hint)
            code = EXIT_USAGE
        except click.ClickException as ex:  # e.g. a file option that cannot be opened
            say_error("error", ex.format_message())
            code = EXIT_USAGE if isinstance(ex, click.BadParameter) else EXIT_RUNTIME
        except ConfigError as ex:
            _log_failure("config error", ex)
            say_error("config error", str(ex))
            code = EXIT_USAGE
        except ChangelogError as ex:
            _log_failure("error", ex)
            say_error("error", str(ex))
            code = EXIT_RUNTIME
        except KeyboardInterrupt:
            click.echo("", err=True)
            say_error("error", "interrupted")
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
            say_error("error", f"unexpected {type(ex).__name__}: {ex}{hint}")
            code = EXIT_RUNTIME
        finally:
            teardown_logging()
        sys.exit(code)


def state() -> State:
    return click.get_current_context().find_object(State)  # type: ignore[return-value]


def out() -> IO[bytes]:
    # sys.stdout at call time: click's test runner and pytest swap it.
    return sys.stdout.buffer


def stdin() -> IO[bytes]:
    return sys.stdin.buffer


def emit_json(doc: object) -> None:
    out_ = out()
    out_.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    out_.flush()


def emit_line(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def table(rows: list[list[str]], header: list[str]) -> None:
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
