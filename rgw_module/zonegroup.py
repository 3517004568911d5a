"""The followed zone's zonegroup, checked once at ``serve``'s start (and each bucket when it is
first seen): two settings under which radosgw logs mutations the follower can then never see.

1. Reef (18.2) and later log no removal made by radosgw's own lifecycle (expiration, noncurrent
   expiration) when every zone of the zonegroup has tier type rgw, archive or "" (ceph PR 54759,
   rgw_lc.cc ``remove_expired_obj``: no ``FLAG_LOG_OP`` when ``zonegroup_lc_check`` holds). A
   followed bucket whose lifecycle configuration expires objects then loses those removals.
2. The local zone's ``log_data`` is false: radosgw writes no bucket index log and no data log
   (rewriting the zonegroup, e.g. removing a zone, resets every zone's to false).

Where the zonegroup comes from. radosgw's admin API does not show it without a realm
(``/admin/config?type=zonegroup-map`` answers 404 on 16.2 and 405 on 18.2). So it is read from
RADOS, where radosgw keeps it: the ``.rgw.root`` pool's ``zonegroup_info.<id>``, the id named by
``default.zonegroup.<realm id>`` (or ``zonegroups_names.default``), decoded here (only the fields
needed; the layout of ceph's ``RGWZoneGroup`` and ``RGWZone`` encoders, the same prefix in 16.2,
18.2 and 20.2, captured in tests/unit/data/zonegroup_*.json). That needs only the librados client
``serve`` already has for the index. Without one, ``radosgw-admin zonegroup get``, when the
binary is there. Neither: one info line, no warning; the check never stops ``serve``.

Which zone is local: the one whose endpoints name ``[source] endpoint``, else, among the zones
of tier type rgw, archive or "" (a log, cloud or search zone holds no bucket to follow), the
default zone object's (``default.zone.<realm id>``), the one named "default", or the only one.
The release (Reef or later?) comes from the admin API, as the follower tells it: a bucket's
bucket-index-log info names log generations from Reef on.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from changelog.errors import ChangelogError, PermanentError

if TYPE_CHECKING:
    from changelog.config import IndexConfig, SourceConfig
    from rgw_module.admin import AdminClient

logger = logging.getLogger(__name__)

ROOT_POOL = ".rgw.root"  # rgw_zonegroup_root_pool's default
# Tier types under which Reef and later skip logging lifecycle removals (rgw_lc.cc
# zonegroup_lc_check): every zone of one of these runs lifecycle itself.
LC_LOCAL_TIER_TYPES = frozenset({"rgw", "archive", ""})
README_LC = 'README, "radosgw\'s own lifecycle and the Swift expirer"'


class ZonegroupDecodeError(PermanentError):
    """Bytes that are not an encoded zonegroup (truncated, corrupt, an unknown layout)."""


@dataclass(frozen=True)
class Zone:
    id: str
    name: str
    endpoints: tuple[str, ...]
    log_data: bool
    tier_type: str


@dataclass(frozen=True)
class Zonegroup:
    name: str
    api_name: str
    master_zone: str
    zones: tuple[Zone, ...]
    id: str = ""
    # Where it was read: "rados" or "radosgw-admin".
    source: str = ""
    # The default zone object's zone id ("" when none): a hint for ``local_zone``.
    default_zone: str = ""

    def logs_lifecycle_removals(self) -> bool:
        """Whether Reef and later log radosgw's lifecycle removals in this zonegroup: some zone
        has a tier type that does not run lifecycle itself (log, cloud, elasticsearch, ...)."""
        return any(z.tier_type not in LC_LOCAL_TIER_TYPES for z in self.zones)


class _Reader:
    """Ceph's little-endian encoding, as much as the zonegroup needs."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ZonegroupDecodeError(
                f"{self.what}: truncated at byte {self.pos} (wants {size}, {len(self.data) - self.pos} left)"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def boolean(self) -> bool:
        return self.u8() != 0

    def string(self) -> str:
        raw = self.take(self.u32())
        try:
            return raw.decode()
        except UnicodeDecodeError as ex:
            raise ZonegroupDecodeError(f"{self.what}: a string at byte {self.pos - len(raw)} is not UTF-8") from ex

    def strings(self) -> tuple[str, ...]:
        count = self.u32()
        if count > len(self.data) - self.pos:  # each string takes 4 bytes at least
            raise ZonegroupDecodeError(f"{self.what}: a list of {count} strings cannot fit")
        return tuple(self.string() for _ in range(count))

    def start(self, known: int) -> tuple[int, int]:
        """ENCODE_START's header: (struct version, end position). A struct whose compat version
        is above ``known`` cannot be read by this decoder (nor by radosgw of that version)."""
        version, compat, length = self.u8(), self.u8(), self.u32()
        end = self.pos + length
        if compat > known or version < 1 or end > len(self.data):
            raise ZonegroupDecodeError(
                f"{self.what}: not an encoded struct here (version {version}, compat {compat}, "
                f"{length} bytes of {len(self.data) - self.pos}) at byte {self.pos - 6}"
            )
        return version, end


def decode_default_id(data: bytes, what: str = "default object") -> str:
    """The id a ``default.zonegroup.<realm>``, ``default.zone.<realm>``, ``default.realm`` or
    ``zonegroups_names.<name>`` object holds (RGWDefaultSystemMetaObjInfo / RGWNameToId: one
    versioned string)."""
    r = _Reader(data, what)
    _, end = r.start(1)
    value = r.string()
    if r.pos > end:
        raise ZonegroupDecodeError(f"{what}: the id overruns its struct")
    return value


def _decode_zone(r: _Reader) -> Zone:
    # RGWZone::decode (ceph src/rgw/rgw_zone_types.h; rgw_zone.h in 16.2): name, endpoints,
    # log_meta, log_data (v2), bucket_index_max_shards (v3), id, read_only (v4), tier_type (v5),
    # then sync_from_all, sync_from, redirect_zone, supported_features: skipped to the end.
    version, end = r.start(8)
    name = r.string()
    endpoints = r.strings()
    log_data = False
    if version >= 2:
        r.boolean()  # log_meta
        log_data = r.boolean()
    if version >= 3:
        r.u32()  # bucket_index_max_shards
    zone_id = name
    if version >= 4:
        zone_id = r.string()
        r.boolean()  # read_only
    tier_type = r.string() if version >= 5 else ""
    if r.pos > end:
        raise ZonegroupDecodeError(f"{r.what}: zone {name!r} overruns its struct")
    r.pos = end
    return Zone(id=zone_id, name=name, endpoints=endpoints, log_data=log_data, tier_type=tier_type)


def decode_zonegroup(data: bytes, what: str = "zonegroup_info") -> Zonegroup:
    """The fields of an encoded RGWZoneGroup (a ``zonegroup_info.<id>`` object) that the check
    needs. Its encoder (versions 4 to 6 in 16.2 to 20.2) starts with name, api_name, is_master,
    endpoints, master_zone and the zones map (zone id -> RGWZone); what follows (placement
    targets, hostnames, realm, sync policy, features) is not read. ``ZonegroupDecodeError``
    on anything else."""
    r = _Reader(data, what)
    _, end = r.start(6)
    name = r.string()
    api_name = r.string()
    r.boolean()  # is_master
    r.strings()  # endpoints
    master_zone = r.string()  # rgw_zone_id: a bare string
    count = r.u32()
    if count > len(data) - r.pos:
        raise ZonegroupDecodeError(f"{what}: {count} zones cannot fit")
    zones = []
    for _ in range(count):
        key = r.string()
        zone = _decode_zone(r)
        if zone.id != key:
            raise ZonegroupDecodeError(f"{what}: zone {zone.name!r} is filed under id {key!r}, not {zone.id!r}")
        zones.append(zone)
    if r.pos > end:
        raise ZonegroupDecodeError(f"{what}: the zones overrun the zonegroup's struct")
    return Zonegroup(name=name, api_name=api_name, master_zone=master_zone, zones=tuple(zones))


def read_from_rados(read: Callable[[Iterable[str]], Mapping[str, bytes | None]], name: str = "default") -> Zonegroup:
    """The default zonegroup (or the one named ``name`` when no default is set) as radosgw
    keeps it in its root pool; ``read`` gives the data of objects of that pool (None: absent)."""
    got = read(["default.realm"])
    realm_raw = got.get("default.realm")
    realm = decode_default_id(realm_raw, "default.realm") if realm_raw else ""
    default_zg, default_zone, by_name = (
        f"default.zonegroup.{realm}", f"default.zone.{realm}", f"zonegroups_names.{name}",
    )  # fmt: skip
    got = read([default_zg, default_zone, by_name])
    raw = got.get(default_zg) or got.get(by_name)
    if not raw:
        raise PermanentError(f"{ROOT_POOL} holds no {default_zg} nor {by_name}")
    zg_id = decode_default_id(raw, default_zg if got.get(default_zg) else by_name)
    info = f"zonegroup_info.{zg_id}"
    data = read([info]).get(info)
    if not data:
        raise PermanentError(f"{ROOT_POOL} holds no {info}")
    zg = decode_zonegroup(data, info)
    zone_raw = got.get(default_zone)
    zone_id = decode_default_id(zone_raw, default_zone) if zone_raw else ""
    return Zonegroup(
        name=zg.name, api_name=zg.api_name, master_zone=zg.master_zone, zones=zg.zones, id=zg_id,
        source="rados", default_zone=zone_id,
    )  # fmt: skip


def _is_on(value: object) -> bool:
    return value is True or str(value).lower() == "true"


def from_json(doc: Mapping[str, Any], source: str = "radosgw-admin") -> Zonegroup:
    """``radosgw-admin zonegroup get``'s output (log_data a JSON bool from 17 on, a string in 16)."""
    try:
        zones = tuple(
            Zone(
                id=str(z["id"]), name=str(z["name"]), endpoints=tuple(str(e) for e in z.get("endpoints") or ()),
                log_data=_is_on(z.get("log_data")), tier_type=str(z.get("tier_type") or ""),
            )  # fmt: skip
            for z in doc["zones"]
        )
        return Zonegroup(
            name=str(doc["name"]), api_name=str(doc.get("api_name") or ""),
            master_zone=str(doc.get("master_zone") or ""), zones=zones, id=str(doc.get("id") or ""), source=source,
        )  # fmt: skip
    except (KeyError, TypeError) as ex:
        raise ZonegroupDecodeError(f"zonegroup get: unexpected output: {type(ex).__name__}: {ex}") from ex


def _same_endpoint(a: str, b: str) -> bool:
    from urllib.parse import urlsplit

    pa, pb = urlsplit(a if "//" in a else f"http://{a}"), urlsplit(b if "//" in b else f"http://{b}")
    ports = {"http": 80, "https": 443}
    try:
        return (pa.hostname, pa.port or ports.get(pa.scheme)) == (pb.hostname, pb.port or ports.get(pb.scheme))
    except ValueError:  # a port that is not a number
        return False


def local_zone(zg: Zonegroup, endpoint: str) -> Zone | None:
    """The zone ``endpoint`` serves (see the module's docstring), None when it cannot be told."""
    for z in zg.zones:
        if any(_same_endpoint(e, endpoint) for e in z.endpoints):
            return z
    # A zone that holds the buckets followed: not a log, cloud or search zone (which syncs
    # from it). radosgw-admin zone create (Reef) makes a new zone the default one.
    data = [z for z in zg.zones if z.tier_type in LC_LOCAL_TIER_TYPES]
    for z in data:
        if zg.default_zone and z.id == zg.default_zone:
            return z
    for z in data:
        if z.name == "default":
            return z
    return data[0] if len(data) == 1 else None


def expiring_rules(config: Mapping[str, Any] | None) -> list[str]:
    """The ids (or positions) of a lifecycle configuration's enabled rules that remove objects
    (Expiration, NoncurrentVersionExpiration): what Reef and later then do not log."""
    out = []
    for i, rule in enumerate((config or {}).get("Rules") or []):
        if str(rule.get("Status", "")).lower() != "enabled":
            continue
        if rule.get("Expiration") or rule.get("NoncurrentVersionExpiration"):
            out.append(str(rule.get("ID") or f"#{i + 1}"))
    return out


def lc_warning(bucket: str) -> str:
    return (
        f"radosgw's lifecycle removals in bucket {bucket} are not logged on Reef and later unless the "
        f"zonegroup has a zone of another tier type (e.g. radosgw-admin zone create --tier-type=log "
        f"--sync-from-all=false): the follower never sees them ({README_LC})"
    )


def log_data_warning(zone: str, zonegroup: str) -> str:
    return (
        f"zone {zone} of zonegroup {zonegroup} has log_data false: radosgw writes no bucket index log "
        f"nor data log, the follower will see no mutation (rgw-changelog zone enable-log-data, then restart "
        f"radosgw)"
    )


@dataclass
class ZonegroupCheck:
    """The check's state: run once at start (``start``), then ``see`` for each bucket first seen
    later (its lifecycle configuration fetched once, cached). Thread-safe; ``doc`` is its part
    of the status document."""

    read_zonegroup: Callable[[], Zonegroup]
    endpoint: str
    # A bucket's S3 lifecycle configuration (None: it has none).
    lifecycle: Callable[[str], Mapping[str, Any] | None]
    # Whether radosgw is Reef or later, told from one of its buckets (None: could not tell).
    reef_or_later: Callable[[str], bool | None]
    zonegroup: Zonegroup | None = None
    not_checked: str = ""
    release_reef: bool | None = None
    warnings: list[str] = field(default_factory=list)
    lc_buckets: dict[str, list[str]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, buckets: Iterable[str]) -> None:
        """Read the zonegroup, warn about the local zone's log_data, and look at ``buckets``."""
        try:
            zg = self.read_zonegroup()
        except (ChangelogError, OSError) as ex:
            self.not_checked = str(ex)
            logger.info("zonegroup not checked: %s", ex)
            return
        self.zonegroup = zg
        zone = local_zone(zg, self.endpoint)
        zones = ", ".join(f"{z.name} (tier type {z.tier_type!r}, log_data {str(z.log_data).lower()})" for z in zg.zones)
        logger.info(
            "zonegroup %s (read with %s): zones %s; local zone %s",
            zg.name, zg.source, zones, zone.name if zone else "unknown",
        )  # fmt: skip
        if zone is not None and not zone.log_data:
            self._warn(log_data_warning(zone.name, zg.name))
        self.see(buckets)

    def see(self, buckets: Iterable[str]) -> None:
        """Look at the lifecycle configuration of each of ``buckets`` not seen before. Nothing
        when the zonegroup logs lifecycle removals anyway, was not read, or radosgw is older
        than Reef (told from the first bucket: its log info, two requests, once)."""
        zg = self.zonegroup
        if zg is None or zg.logs_lifecycle_removals() or self.release_reef is False:
            return
        with self._lock:
            new = [b for b in buckets if b not in self._seen]
            self._seen.update(new)
        for bucket in new:
            if self.release_reef is None and not self._tell_release(bucket):
                with self._lock:
                    self._seen.discard(bucket)  # looked at when next seen
                continue
            if not self.release_reef:
                with self._lock:
                    self._seen.clear()  # older than Reef: nothing to remember
                return
            try:
                rules = expiring_rules(self.lifecycle(bucket))
            except ChangelogError as ex:
                logger.info("zonegroup check: the lifecycle configuration of %s unreadable: %s", bucket, ex)
                with self._lock:
                    self._seen.discard(bucket)  # asked again when next seen
                continue
            if rules:
                with self._lock:
                    self.lc_buckets[bucket] = rules
                self._warn(lc_warning(bucket))

    def _tell_release(self, bucket: str) -> bool:
        try:
            self.release_reef = self.reef_or_later(bucket)
        except ChangelogError as ex:
            logger.info("zonegroup check: radosgw's release not told from bucket %s: %s", bucket, ex)
        return self.release_reef is not None

    def _warn(self, text: str) -> None:
        with self._lock:
            if text in self.warnings:
                return
            self.warnings.append(text)
        logger.warning("%s", text)

    def doc(self) -> dict[str, object]:
        zg = self.zonegroup
        with self._lock:
            warnings, unlogged = list(self.warnings), dict(self.lc_buckets)
        out: dict[str, object] = {"checked": zg is not None, "warnings": warnings}
        if zg is None:
            out["not_checked"] = self.not_checked
            return out
        out.update(
            zonegroup=zg.name,
            read_with=zg.source,
            zones={z.name: {"tier_type": z.tier_type, "log_data": z.log_data} for z in zg.zones},
            logs_lifecycle_removals=zg.logs_lifecycle_removals(),
            reef_or_later=self.release_reef,
            # bucket -> the rules whose removals radosgw does not log
            unlogged_lifecycle=unlogged,
        )
        return out


# --------------------------------------------------------------------------- serve's wiring

# Followed buckets are listed again this often at least (seconds) for the ones first seen since.
MIN_RESCAN_S = 30.0


class _Source(Protocol):
    """What the check takes of the follower: its radosgw client and its bucket filters."""

    @property
    def admin(self) -> AdminClient: ...

    @property
    def config(self) -> SourceConfig: ...


def zonegroup_reader(ic: IndexConfig, *, radosgw_admin: str = "radosgw-admin") -> Callable[[], Zonegroup]:
    """Read the zonegroup from RADOS with the ``[index]`` section's Ceph client, else with
    ``radosgw-admin zonegroup get`` (the binary ``radosgw_admin``); a ``PermanentError`` saying
    why neither worked."""
    from pathlib import Path

    from rgw_module.zone import RadosgwAdmin

    conf = ic.ceph_conf if Path(ic.ceph_conf).is_file() else None

    def read() -> Zonegroup:
        why = []
        if conf is not None:
            try:
                from changelog.pipeline.backends.rados import SmallObjectReader
            except ImportError as ex:
                why.append(f"no rados binding ({ex})")
            else:
                try:
                    with SmallObjectReader(
                        conffile=conf, pool=ROOT_POOL, keyring=ic.keyring, client_name=ic.client_name,
                        connect_timeout=ic.connect_timeout,
                    ) as objects:  # fmt: skip
                        return read_from_rados(objects.read)
                except ChangelogError as ex:
                    why.append(f"RADOS: {ex}")
        else:
            why.append(f"RADOS: index.ceph_conf {ic.ceph_conf} not found")
        try:
            if conf is None:  # radosgw-admin's own defaults (/etc/ceph/ceph.conf, client.admin)
                admin = RadosgwAdmin(binary=radosgw_admin)
            else:
                admin = RadosgwAdmin(binary=radosgw_admin, conf=conf, keyring=ic.keyring, name=ic.client_name)
            return from_json(admin.json("zonegroup", "get"))
        except ChangelogError as ex:
            why.append(str(ex))
        raise PermanentError("; ".join(why))

    return read


def followed_buckets(source: _Source) -> list[str]:
    return [b for b in source.admin.list_buckets() if source.config.includes(b)]


def start_check(source: _Source, index: IndexConfig, stop: threading.Event) -> ZonegroupCheck:
    """The check, run on a daemon thread: at once, then for buckets first seen every
    ``[source] bucket_scan_interval`` (at least MIN_RESCAN_S) until ``stop``; the zonegroup read
    with the ``[index]`` section's Ceph client. It never raises."""
    admin = source.admin

    def reef_or_later(bucket: str) -> bool | None:
        return admin.bilog_info(bucket, admin.bucket_instance_id(bucket)).generation_aware

    check = ZonegroupCheck(
        read_zonegroup=zonegroup_reader(index),
        endpoint=admin.endpoint,
        lifecycle=admin.bucket_lifecycle,
        reef_or_later=reef_or_later,
    )
    interval = max(source.config.bucket_scan_interval, MIN_RESCAN_S)

    def run() -> None:
        first = True
        while True:
            try:
                buckets = followed_buckets(source)
                if first:
                    check.start(buckets)
                    first = False
                else:
                    check.see(buckets)
            except ChangelogError as ex:
                logger.info("zonegroup check: followed buckets not listed: %s", ex)
            except Exception:  # noqa: BLE001 - a check, never a reason for serve to fail
                logger.exception("zonegroup check failed")
            if stop.wait(interval) or (check.zonegroup is None and not first):
                return

    threading.Thread(target=run, name="zonegroup-check", daemon=True).start()
    return check
