"""``rgw-changelog logs list|cat`` (read the committed change logs) and ``zone enable-log-data``
(the radosgw setting the follower needs)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import click

from changelog.cli.base import (
    TIME,
    cli,
    emit_json,
    json_option,
    out,
    state,
    table,
)
from changelog.progress import Progress
from changelog.times import fmt_time

if TYPE_CHECKING:
    from changelog.pipeline.reader import LogObject
    from changelog.pipeline.targets import Target

logger = logging.getLogger("changelog.cli")

# --------------------------------------------------------------------------- logs


@cli.group("logs")
def logs_group() -> None:
    """List and read the committed change-log objects."""


@logs_group.command("list")
@click.option("--since", type=TIME, help="Log objects whose cutoff is after this time.")
@json_option
def logs_list(since: int | None, as_json: bool) -> None:
    """The committed log objects, oldest first."""
    from changelog.pipeline import reader

    target = state().target()
    objs = [_log_doc(o) for o in reader.list_logs(target, since_us=since)]
    if as_json:
        emit_json(objs)
        return
    table(
        [[str(o["name"]), str(o.get("size", "-")), str(o.get("cutoff") or "-"), str(o.get("seq", "-"))] for o in objs],
        ["NAME", "SIZE", "CUTOFF", "SEQ"],
    )
    click.echo(f"{len(objs)} log objects in {st_url(target)}", err=True)


def st_url(target: Target) -> str:
    return target.url


def _log_doc(obj: LogObject) -> dict[str, object]:
    d: dict[str, object] = dataclasses.asdict(obj)
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
    from changelog.pipeline import reader

    target = state().target()
    sink = out()
    n = 0
    with Progress("read logs", unit="records") as bar:
        for rec in reader.read_records(
            target, since_us=since, until_us=until, after=after, bucket=bucket, key_prefix=prefix
        ):
            line = rec.encode()
            if not line.endswith(b"\n"):
                line += b"\n"
            sink.write(line)
            n += 1
            bar.update(1, nbytes=len(line))
    sink.flush()
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

    cfg = state().config
    admin = RadosgwAdmin(
        binary=binary,
        conf=ceph_conf or cfg.index.ceph_conf,
        keyring=keyring or cfg.index.keyring,
        name=client_name,
    )
    if dry_run:
        zones_on = log_data_zones(admin.zonegroup(zonegroup))
        if zones:
            zones_on = {z: on for z, on in zones_on.items() if z in zones}
        if as_json:
            emit_json({"zonegroup": zonegroup, "log_data": zones_on})
        else:
            for z, on in zones_on.items():
                click.echo(f"zone {z}: log_data {'on' if on else 'off'}")
        return
    changed = enable_log_data(zonegroup=zonegroup, zones=list(zones) or None, admin=admin)
    if as_json:
        emit_json({"zonegroup": zonegroup, "changed": changed, "restart_radosgw": bool(changed)})
    elif changed:
        click.echo(f"log_data turned on for zone(s) {', '.join(changed)} of zonegroup {zonegroup}: restart radosgw now")
    else:
        click.echo(f"log_data is already on for zonegroup {zonegroup}: nothing to do")

