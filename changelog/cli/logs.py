"""``rgw-changelog logs list|cat`` (read the committed change logs, as JSON Lines records or as
CloudEvents) and ``zone enable-log-data`` (the radosgw setting the follower needs)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

import click
import orjson

from changelog.cli.base import (
    TIME,
    cli,
    emit_json,
    json_option,
    out,
    record_bucket,
    state,
    table,
)
from changelog.progress import Progress
from changelog.times import fmt_time

if TYPE_CHECKING:
    from changelog.pipeline.logformat import LogRecord
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


# CloudEvents 1.0, structured mode, JSON event format (one event per line): the record is the
# event's data unchanged, so a consumer of either format sees the same fields.
CLOUDEVENTS_SPEC = "1.0"
# The event's ``source``: rgw-changelog://<zone>/[<tenant>/]<bucket>, the bucket percent-encoded
# (a bucket never holds "/", a tenant only letters, digits and _: one path segment means no
# tenant). Stable for a bucket whatever the endpoint it is reached by, so that source + id
# identifies an event across re-reads, as CloudEvents asks.
SOURCE_SCHEME = "rgw-changelog"
# radosgw's zone when none was configured.
DEFAULT_ZONE = "default"
# ``type``: reverse-DNS prefix, then what changed and how.
EVENT_TYPES = {
    "write": "com.rgw-changelog.object.write",
    "delete": "com.rgw-changelog.object.delete",
    "delete_marker": "com.rgw-changelog.object.delete_marker",
    "bucket_create": "com.rgw-changelog.bucket.create",
    "bucket_delete": "com.rgw-changelog.bucket.delete",
}
# ``dataschema``: the record schema's $id (docs/record.schema.json), one per schema version.
RECORD_SCHEMA_ID = "urn:rgw-changelog:schema:record:1"


def event_source(zone: str, rec: LogRecord) -> str:
    bucket = quote(rec.bucket, safe="")
    path = f"{rec.tenant}/{bucket}" if rec.tenant else bucket
    return f"{SOURCE_SCHEME}://{quote(zone, safe='')}/{path}"


def cloud_event(rec: LogRecord, *, zone: str) -> dict[str, object]:
    """The CloudEvents 1.0 event (structured-mode JSON) of one record. ``subject`` is the object
    key, absent for a bucket op (CloudEvents makes it optional); ``time`` is the mutation's."""
    event: dict[str, object] = {
        "specversion": CLOUDEVENTS_SPEC,
        "id": rec.id,
        "source": event_source(zone, rec),
        "type": EVENT_TYPES[rec.op],
    }
    if rec.key is not None:
        event["subject"] = rec.key
    event["time"] = rec.time
    event["datacontenttype"] = "application/json"
    event["dataschema"] = RECORD_SCHEMA_ID
    event["data"] = rec.to_dict()
    return event


@logs_group.command("cat")
@click.option("--since", type=TIME, help="Records recorded at or after this time.")
@click.option("--until", type=TIME, help="Records recorded before this time.")
@click.option("--bucket", callback=record_bucket, help="Only this bucket (tenant/bucket for a tenant's).")
@click.option("--prefix", help="Only keys with this prefix.")
@click.option("--after", metavar="NAME", help="Only log objects after this one (a consumer's checkpoint).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "cloudevents"]),
    default="jsonl",
    show_default=True,
    help="jsonl: the records as written (docs/record.schema.json); cloudevents: one CloudEvents 1.0 "
    "JSON event per line, the record as its data.",
)
@click.option(
    "--zone",
    default=DEFAULT_ZONE,
    show_default=True,
    help="The zone's name in each event's source (rgw-changelog://ZONE/[TENANT/]BUCKET); cloudevents only.",
)
def logs_cat(
    since: int | None,
    until: int | None,
    bucket: str | None,
    prefix: str | None,
    after: str | None,
    fmt: str,
    zone: str,
) -> None:
    """Print change-log records as JSON Lines on stdout, in log order, each id once.

    --since/--until select by the time a record reached the index ("recorded"), the order the
    logs are written in. --format cloudevents wraps each record in a CloudEvents 1.0 event
    (source rgw-changelog://ZONE/[TENANT/]BUCKET, type com.rgw-changelog.object.write etc.,
    subject the key).
    """
    from changelog.pipeline import reader

    target = state().target()
    sink = out()
    n = 0
    with Progress("read logs", unit="records") as bar:
        for rec in reader.read_records(
            target, since_us=since, until_us=until, after=after, bucket=bucket, key_prefix=prefix
        ):
            if fmt == "cloudevents":
                line = orjson.dumps(cloud_event(rec, zone=zone), option=orjson.OPT_APPEND_NEWLINE)
            else:
                line = rec.encode()
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
    from rgw_module.zone import RadosgwAdmin, enable_log_data, log_data_zones, require_zones

    cfg = state().config
    admin = RadosgwAdmin(
        binary=binary,
        conf=ceph_conf or cfg.index.ceph_conf,
        keyring=keyring or cfg.index.keyring,
        name=client_name,
    )
    if dry_run:
        zones_on = log_data_zones(admin.zonegroup(zonegroup))
        require_zones(zonegroup, zones_on, list(zones) or None)  # as without --dry-run
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

