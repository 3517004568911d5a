"""``rgw-changelog backup run|list|restore|verify|cleanup``: the click group ``backup_group`` of
the main CLI. The commands only parse options, open what the config names
(``changelog.consumers.backup.consumer.BackupResources``) and print; the work is in ``changelog.consumers.backup``.
Errors propagate to the main CLI's boundary (one line, exit 1; 2 for config errors).

Config ``[backup]``: ``url`` (``s3://bucket/prefix/`` or ``file:///dir/``), ``endpoint``,
``access_key``, ``secret_key`` (default: those of ``[source]``), ``region``, retention
(``keep_days``, ``minimum_backups``, ``maximum_backups``) and the schedule ``serve`` keeps
(``interval``, ``lease_ttl``). The change logs are read from ``[target]``, the objects from
``[source]`` (whose ``buckets``/``prefixes`` filters apply).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import click

from changelog.cli.base import TIME, cli, emit_json, json_option
from changelog.config import Config, load_config
from changelog.consumers.backup import manifest as mf
from changelog.consumers.backup.cleanup import cleanup
from changelog.consumers.backup.consumer import BackupResources
from changelog.consumers.backup.restore import restore
from changelog.consumers.backup.runner import WORKERS
from changelog.consumers.backup.verify import verify
from changelog.errors import PermanentError
from changelog.progress import human_bytes


@contextlib.contextmanager
def _env() -> Iterator[BackupResources]:
    ctx = click.get_current_context()
    # The main CLI's State carries the loaded config (``-c``); standalone, load the default.
    obj = ctx.find_root().obj
    config = getattr(obj, "config", None)
    env = BackupResources(config if isinstance(config, Config) else load_config(None))
    try:
        yield env
    finally:
        env.close()


@click.group("backup")
def backup_group() -> None:
    """Incremental, deduplicated backups of the followed buckets, driven by the change logs.

    Content is stored once per SHA-256 under [backup] url; each backup is a manifest of the full
    state of every bucket as of the change-log watermark it reached. With [backup] interval set,
    `serve` also runs them on that schedule (the backup consumer).
    """


cli.add_command(backup_group, "backup")


@backup_group.command("run")
@click.option(
    "--bucket",
    "buckets",
    multiple=True,
    metavar="NAME",
    help="Only these of the followed buckets (repeatable); the others catch up at their next run.",
)
@click.option("--workers", default=WORKERS, show_default=True, type=click.IntRange(1, 256), help="Parallel copies.")
@json_option
def run_cmd(buckets: tuple[str, ...], workers: int, as_json: bool) -> None:
    """Back up what changed since the last backup (the first run takes a baseline)."""
    with _env() as env:
        src = env.source() if buckets else None
        for name in buckets:
            if not env.config.source.includes(name):
                raise click.BadParameter(f"{name!r} is not a followed bucket ([source] buckets, exclude_buckets)")
            # A misspelt name would back up nothing and leave every bucket behind.
            if src is not None and not src.bucket_exists(name):
                raise click.BadParameter(f"the source has no bucket {name!r}")
        result = env.runner(only=buckets, workers=workers, progress=None).run()
    if as_json:
        emit_json(result.to_dict())
        return
    if result.backup_id is None:
        click.echo(f"nothing new since backup {result.base} (checkpoint {result.checkpoint})")
        return
    click.echo(
        f"backup {result.backup_id}{' (resumed)' if result.resumed else ''}: as of {result.to_dict()['as_of']}, "
        f"{result.objects} objects ({human_bytes(result.bytes)}); read {result.records} records from "
        f"{result.log_objects} log objects, listed {result.listed}; copied {result.copied} objects "
        f"({human_bytes(result.copied_bytes)}), uploaded {result.uploaded} new blobs "
        f"({human_bytes(result.uploaded_bytes)}), {result.deduplicated} already stored; "
        f"{result.lagging} lagging; {result.seconds:.1f} s"
    )


@backup_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """The finished backups, oldest first."""
    with _env() as env:
        backups = mf.list_backups(env.store())
    if as_json:
        emit_json([b.to_dict() for b in backups])
        return
    rows = [[b.backup_id, b.as_of, str(b.objects), human_bytes(b.bytes), human_bytes(b.manifest_bytes)] for b in backups]
    header = ["BACKUP", "AS OF", "OBJECTS", "SIZE", "MANIFEST"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _backup_id(_ctx: click.Context, _param: click.Parameter, value: str | tuple[str, ...] | None) -> object:
    """A backup id as `backup list` prints them, refused here in one line (a usage error)."""
    for text in (value,) if isinstance(value, str) else value or ():
        if not mf.is_backup_id(text):
            raise click.BadParameter(f"{text!r} is not a backup id (YYYYMMDDTHHMMSS.ffffffZ-xxxx, see `backup list`)")
    return value


def _s3_bucket(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A bucket name S3 clients and radosgw accept (letters, digits, ".", "-", "_"; 3 to 255),
    refused here in one line rather than by the client's request validation or the server."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{3,255}", value):
        raise click.BadParameter(f"{value!r} is not a bucket name (3 to 255 letters, digits, '.', '-', '_')")
    return value


@backup_group.command("restore")
@click.option(
    "--backup", "backup_id", metavar="ID", callback=_backup_id, help="The backup to restore (see `backup list`)."
)
@click.option("--at", "at_us", type=TIME, help="Restore the latest backup whose state is as of TIME or earlier.")
@click.option("--bucket", required=True, metavar="SRC", help="The backed-up bucket to restore.")
@click.option(
    "--to-bucket", required=True, metavar="DST", callback=_s3_bucket, help="Where to write it (created if missing)."
)
@click.option("--prefix", default="", metavar="P", help="Only keys starting with P.")
@click.option("--workers", default=WORKERS, show_default=True, type=click.IntRange(1, 256))
@json_option
def restore_cmd(
    backup_id: str | None, at_us: int | None, bucket: str, to_bucket: str, prefix: str, workers: int, as_json: bool
) -> None:
    """Write the state of one bucket as of a backup into another bucket (content checked)."""
    if (backup_id is None) == (at_us is None):
        raise click.UsageError("give exactly one of --backup ID and --at TIME")
    with _env() as env:
        result = restore(
            env.store(),
            env.source(workers=workers),
            bucket=bucket,
            to_bucket=to_bucket,
            backup_id=backup_id,
            at_us=at_us,
            prefix=prefix,
            workers=workers,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"restored {result.objects} objects ({human_bytes(result.bytes)}) of {bucket} as of {result.as_of} "
            f"(backup {result.backup_id}) into {to_bucket} in {result.seconds:.1f} s"
            + (f"; {result.lagging} keys were lagging in that backup" if result.lagging else "")
        )
    if result.failed:
        raise PermanentError(f"{len(result.failed)} objects could not be restored (first: {result.failed[0]['key']!r}: {result.failed[0]['error']})")


@backup_group.command("verify")
@click.option(
    "--backup", "backup_ids", multiple=True, metavar="ID", callback=_backup_id, help="Only these backups (default: all)."
)
@click.option("--quick", is_flag=True, help="Check existence and size only (a listing), not content.")
@click.option("--workers", default=WORKERS, show_default=True, type=click.IntRange(1, 256))
@json_option
def verify_cmd(backup_ids: tuple[str, ...], quick: bool, workers: int, as_json: bool) -> None:
    """Check that every blob referenced by a backup exists and hashes to its name."""
    with _env() as env:
        result = verify(env.store(), backup_ids=backup_ids or None, quick=quick, workers=workers)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"{len(result.backups)} backups, {result.referenced} blobs referenced: {result.checked} "
            f"{'present' if quick else 'verified'} ({human_bytes(result.bytes)}), {len(result.missing)} missing, "
            f"{len(result.corrupt)} corrupt; {result.seconds:.1f} s"
        )
    if not result.ok:
        raise PermanentError(f"verify failed: {len(result.missing)} blobs missing, {len(result.corrupt)} corrupt")


@backup_group.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--keep-days", type=click.FloatRange(min=0), help="Override [backup] keep_days.")
@click.option("--minimum-backups", type=click.IntRange(min=0), help="Override [backup] minimum_backups.")
@click.option("--maximum-backups", type=click.IntRange(min=1), help="Override [backup] maximum_backups.")
@json_option
def cleanup_cmd(
    dry_run: bool, keep_days: float | None, minimum_backups: int | None, maximum_backups: int | None, as_json: bool
) -> None:
    """Apply retention and delete the blobs no kept backup references (under the cleanup lock)."""
    with _env() as env:
        bc = env.config.backup
        result = cleanup(
            env.store(),
            keep_days=bc.keep_days if keep_days is None else keep_days,
            minimum_backups=bc.minimum_backups if minimum_backups is None else minimum_backups,
            maximum_backups=bc.maximum_backups if maximum_backups is None else maximum_backups,
            dry_run=dry_run,
        )
    if as_json:
        emit_json(result.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {len(result.deleted_backups)} backups (kept {len(result.kept)}) and {result.deleted_blobs} blobs "
        f"({human_bytes(result.deleted_bytes)}); {result.protected_blobs} unreferenced blobs kept for "
        f"{len(result.live_runs)} runs in progress; {result.seconds:.1f} s"
    )
