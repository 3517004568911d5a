"""Configuration: one TOML file (stdlib ``tomllib``) checked into frozen pydantic models, one per
section, handed whole to the component that reads it; and the factories that open the index
store, the change index, the target and the collector from it.

Every key is checked: an unknown key, a wrong type or a value out of range is refused with one
line naming the key (``collector.settle must be a number (got "ten")``), with a "did you mean"
for typos (the wording lives in ``changelog.config_types``). Where the file comes from:
``-c PATH`` > ``$RGW_CHANGELOG_CONFIG`` > ``/etc/rgw-changelog/rgw-changelog.toml`` > built-in
defaults (the embedded setup: a sqlite index file and a local directory target).

**Secrets** (``access_key``, ``secret_key`` of ``[source]``, ``[target]`` and ``[backup]``) are
held in ``Secret`` objects whose ``repr`` and ``str`` are masked; ``.reveal()`` gives the value to
the library that needs it. Any of them may instead be read from the environment:
``secret_key_env = "RGW_SECRET"`` reads ``$RGW_SECRET`` at load time (setting both ``secret_key``
and ``secret_key_env`` is an error, so is naming a variable that is not set).

**TLS**: ``[source]``, ``[target]`` and ``[backup]`` each have ``verify`` (default true) and
``ca_bundle`` (a PEM file of the CAs to trust, checked at load time); ``tls_verify`` is what
their clients are given.

Relative paths (``index.path``, ``ca_bundle``, ``file://`` URLs, ``logging.file``) are taken from the working
directory at load time and shown absolute in the effective config.

Sections built in code (``CollectorConfig(page=3, settle=0)``) are checked like the file's keys.
Tests that need values an operator may not set (a 0.5 s lease) use ``CollectorConfig.unchecked(
lease_ttl=0.5)``: no checks, defaults filled.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from changelog.config_base import S3Section, Section, _Model
from changelog.config_types import (
    MASK,
    Duration,
    Flag,
    HttpUrl,
    Integer,
    Level,
    Listen,
    Names,
    Networks,
    NonEmpty,
    Number,
    ObjectInfo,
    PathStr,
    Prefixes,
    Secret,
    Size,
    TargetUrl,
    Text,
    UserIds,
    config_error,
    invalid,
    parse_size,
    pattern,
    reveal,
    split_listen,
    suggest,
)
from changelog.consumers.lifecycle.rules import LifecycleConfig
from changelog.errors import ConfigError, PermanentError
from changelog.pipeline.loop import Clocks

if TYPE_CHECKING:
    from changelog.pipeline.collector import Collector
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.store import ObjectStore
    from changelog.pipeline.targets import Target

ENV_VAR = "RGW_CHANGELOG_CONFIG"
DEFAULT_PATH = Path("/etc/rgw-changelog/rgw-changelog.toml")
MiB = 1024 * 1024
# S3 refuses multipart parts below 5 MiB (all but the last one).
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * 1024 * MiB
# Keys per omap operation: changelog.pipeline.index.OP_KEYS (1000 keys/op measured as the sweet spot; the
# OSD caps a page of omap reads at about that size too). Not imported: config loads no index.
OMAP_PAGE = 1000
# radosgw returns at most 1000 entries per bucket index log / data log page (its own cap).
RGW_PAGE = 1000

# What ``to_dict`` gives: TOML-shaped plain data.
ConfigValue: TypeAlias = "str | int | float | bool | None | list[ConfigValue] | dict[str, ConfigValue]"


class IndexConfig(Section):
    section: ClassVar[str] = "index"

    backend: Literal["sqlite", "rados"] = "sqlite"
    ceph_conf: PathStr = Field(default="/etc/ceph/ceph.conf", validate_default=True)
    keyring: PathStr | None = None
    client_name: Annotated[Text, pattern(r"client\.[A-Za-z0-9_.-]+", '"client." and a name')] = "client.admin"
    connect_timeout: Number = Field(default=10.0, ge=1.0)
    pool: NonEmpty = "rgw-changelog"
    namespace: Text = ""
    path: PathStr = Field(default="./rgw-changelog.db", validate_default=True)
    shards: Integer = Field(default=16, ge=1, le=4096)
    mode: Literal["write", "object"] = "write"
    prefix: Annotated[Text, pattern(r"[A-Za-z0-9_.:-]+", "letters, digits and _.:-")] = "changelog"

    @model_validator(mode="after")
    def _pool_for_rados(self) -> Self:
        if self.backend == "rados" and not self.pool:
            raise invalid("index.pool must be set when index.backend is rados", line=True)
        return self


class SourceConfig(S3Section):
    """The radosgw zone followed, and the follower's tuning."""

    section: ClassVar[str] = "source"

    endpoint: HttpUrl | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    region: NonEmpty = "us-east-1"
    buckets: Names = ("*",)
    prefixes: Prefixes = Field(default_factory=lambda: MappingProxyType({}))
    exclude_buckets: Names = ()
    poll_interval: Number = Field(default=1.0, ge=0.05)
    # Where a write record's size, etag, mtime and storage class come from (the bucket index
    # log does not carry them): "index" reads the changed keys' bucket index entries (one omap
    # read per index shard object and round, nothing on the S3 write path); "head" asks
    # radosgw (a HEAD or listing per write: about doubles radosgw's CPU per PUT); "none" leaves
    # them null. ``true``/``false`` (the former flag) mean "head"/"none".
    object_info: ObjectInfo = "index"
    # Put who wrote each change into its record (``metadata.writer``): the content writer of a
    # write (its bucket index entry's owner: the requester of a PutObject or CopyObject, the
    # initiator of a multipart upload) and the requester of a delete marker; plain deletes and
    # full-sync records carry none. Read with the facts ("index" method), at no request. Two-way
    # replication recognises its peer's replica writes by it (``replica_writers``).
    record_writer: Flag = False
    # The zone's bucket index pool ("index" method): its placement's index_pool.
    index_pool: NonEmpty = "default.rgw.buckets.index"
    # The follower's lease on the index (the collector has its own, collector.lease_ttl).
    lease_ttl: Number = Field(default=30.0, ge=1.0)
    # Trim the bucket index logs and the data log up to what is recorded (a single zone never
    # trims them itself). Off: leave them to radosgw's own trimming (multisite) or an operator.
    trim_logs: Flag = True
    # At start, and for each bucket first seen, warn (log and status) about zonegroup settings
    # under which radosgw logs nothing the follower could see (rgw_module.zonegroup).
    check_zonegroup: Flag = True

    # --- advanced tuning (defaults are the follower's former constants)
    # A bucket written to within this many seconds is read every poll; others on data log news.
    hot_seconds: Number = Field(default=60.0, gt=0)
    # Entries per bucket index log / data log listing (radosgw's maximum).
    page_entries: Integer = Field(default=RGW_PAGE, ge=1, le=RGW_PAGE)
    # Trim the data log too (only with trim_logs); off when another consumer reads it.
    trim_datalog: Flag = True
    # Seconds between trims of one log: trimming after every page costs a request per page.
    trim_interval: Number = Field(default=10.0, ge=0)
    # Seconds between listings of all buckets (new buckets, buckets missed by the data log).
    bucket_scan_interval: Number = Field(default=300.0, ge=0)
    # Listing pages a full sync of one bucket reads per round, so one big bucket cannot starve
    # the incremental work of the others.
    full_sync_pages: Integer = Field(default=8, ge=1)
    # Seconds between full passes over every data log shard (catching what a hot-only round
    # skipped).
    datalog_full_interval: Number = Field(default=60.0, ge=0)
    # Data log shards read per round.
    shards_per_round: Integer = Field(default=16, ge=1)
    # A finished bucket-index-log generation (Reef and later reshard in place) is read again after
    # sealed_poll_interval seconds (doubling while empty) for this long after the bucket moved on:
    # radosgw may still add an entry to it (a write completing across the reshard). 0: never.
    sealed_seconds: Number = Field(default=3600.0, ge=0)
    sealed_poll_interval: Number = Field(default=60.0, gt=0)
    # A bucket deleted and created again: its new lifetime is followed once the collector has
    # committed the old lifetime's bucket_delete (so that no pass commits the new bucket_create
    # before that delete), or after this many seconds whatever the collector does. 0: at once.
    recreated_bucket_wait: Number = Field(default=120.0, ge=0)
    # Threads reading bucket index logs at once (each one radosgw request at a time).
    workers: Integer = Field(default=8, ge=1, le=64)
    # Backoff after a transient radosgw error: doubles from base up to max seconds.
    backoff_base: Number = Field(default=0.5, gt=0)
    backoff_max: Number = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _writer_from_the_index(self) -> Self:
        if self.record_writer and self.object_info != "index":
            raise invalid(
                f'source.record_writer needs object_info = "index" (the writer is read from the bucket index), '
                f"not {self.object_info!r}",
                line=True,
            )
        return self

    @field_validator("buckets")
    @classmethod
    def _star_alone(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in v and len(v) > 1:
            raise invalid('source.buckets: "*" means every bucket and must stand alone', line=True)
        return v

    @property
    def all_buckets(self) -> bool:
        return self.buckets == ("*",)

    def includes(self, bucket: str, key: str | None = None, *, tenant: str = "") -> bool:
        """Whether a mutation of ``bucket``/``key`` is followed under these filters. A tenant's
        bucket is named ``tenant/bucket`` in the filters: pass ``tenant``, or the qualified name
        as ``bucket``; a bare name is the bucket of no tenant."""
        if tenant:
            bucket = f"{tenant}/{bucket}"
        if bucket in self.exclude_buckets:
            return False
        if not self.all_buckets and bucket not in self.buckets:
            return False
        wanted = self.prefixes.get(bucket)
        if key is None or not wanted:
            return True
        return any(key.startswith(p) for p in wanted)


class TargetConfig(S3Section):
    section: ClassVar[str] = "target"

    url: TargetUrl = Field(default="file://./changelog-logs/", validate_default=True)
    endpoint: HttpUrl | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    region: NonEmpty = "us-east-1"
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    compression: Literal["none", "gzip", "zstd"] = "none"

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


class CollectorConfig(Section):
    """The collector's pass and log objects, and its tuning."""

    section: ClassVar[str] = "collector"

    interval: Number = Field(default=5.0, ge=0.01)
    settle: Number = Field(default=2.0, ge=0.0)
    lease_ttl: Number = Field(default=30.0, ge=1.0)
    roll_bytes: Size = Field(default=64 * MiB, ge=1)
    roll_entries: Integer = Field(default=100_000, ge=1)
    roll_seconds: Number = Field(default=60.0, ge=0.0)
    part_bytes: Size = Field(default=8 * MiB, ge=1024, le=S3_MAX_PART)

    # --- advanced tuning (defaults are the collector's former constants)
    # Attempts at a transient index or target error within one pass, with capped backoff.
    retries: Integer = Field(default=5, ge=0)
    backoff_base: Number = Field(default=0.5, gt=0)
    backoff_max: Number = Field(default=30.0, gt=0)
    # Seconds between attempts of a standby to take the lease; unset: min(2, lease_ttl / 4),
    # so that a dead holder is replaced within about 1.25 TTL.
    standby_retry: Number | None = Field(default=None, gt=0)
    # Abandoned multipart uploads older than gc_age seconds are aborted, every gc_interval.
    gc_age: Number = Field(default=3600.0, ge=0)
    gc_interval: Number = Field(default=600.0, ge=0)
    # Index keys read / removed per omap operation.
    page: Integer = Field(default=OMAP_PAGE, ge=1, le=OMAP_PAGE)
    trim_batch: Integer = Field(default=OMAP_PAGE, ge=1, le=OMAP_PAGE)
    # Seconds between two looks at the pause flag while paused.
    pause_poll: Number = Field(default=0.25, gt=0)


class ApiConfig(Section):
    section: ClassVar[str] = "api"

    listen: Listen = "127.0.0.1:9480"
    allow_from: Networks = ("127.0.0.1", "::1")
    # A bearer token every POST route requires when set (``token_env`` reads it from the
    # environment); ``read_token`` the same for the GET routes.
    token: Secret | None = None
    read_token: Secret | None = None

    @field_validator("token", "read_token")
    @classmethod
    def _token_text(cls, v: Secret | None, info: ValidationInfo) -> Secret | None:
        # It travels in an HTTP header: no spaces or control characters (and the value is
        # never shown, not even in this message).
        if v is not None and (not v.reveal() or any(c.isspace() or not c.isprintable() for c in v.reveal())):
            raise invalid(f"api.{info.field_name} must be a non-empty string without spaces", line=True)
        return v

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class BackupConfig(S3Section):
    section: ClassVar[str] = "backup"

    url: TargetUrl | None = None
    endpoint: HttpUrl | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    region: NonEmpty = "us-east-1"
    keep_days: Number = Field(default=30.0, ge=0.0)
    minimum_backups: Integer = Field(default=3, ge=0)
    maximum_backups: Integer = Field(default=60, ge=1)
    # Seconds between two backups run by ``serve`` (as a consumer of the logs); unset: ``serve``
    # runs none, backups are started by ``rgw-changelog backup run`` (cron, timer).
    interval: Number | None = Field(default=None, gt=0)
    # The backup consumer's lease, so that one ``serve`` of several runs it.
    lease_ttl: Number = Field(default=30.0, ge=1.0)

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.minimum_backups > self.maximum_backups:
            raise invalid(
                f"backup.minimum_backups ({self.minimum_backups}) must not exceed "
                f"backup.maximum_backups ({self.maximum_backups})",
                line=True,
            )
        return self


class SiteConfig(S3Section):
    """One ``[[replication.sites]]`` entry: an S3 site the zone's buckets are replicated to
    (another radosgw, AWS or any S3 service)."""

    section: ClassVar[str] = "replication.sites"

    # Names the site in the API, the CLI, metrics and the failed list: letters, digits, - and _.
    name: Annotated[Text, pattern(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", "letters, digits, - and _ (up to 63)")]
    # None: AWS S3 (the region's endpoint).
    endpoint: HttpUrl | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    region: NonEmpty = "us-east-1"
    # "path" suits radosgw and most S3 services; AWS wants "virtual" (or "auto").
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    # Source buckets replicated to this site (tenant/bucket for a tenant's); empty: every
    # followed bucket.
    buckets: Names = ()
    # Source bucket -> bucket at the site; a bucket not in the map keeps its name.
    bucket_map: Annotated[Mapping[str, Text], AfterValidator(lambda v: MappingProxyType(dict(v)))] = Field(
        default_factory=lambda: MappingProxyType({})
    )
    # Only keys under these prefixes; empty: every key.
    prefixes: Annotated[tuple[Text, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = ()
    # The storage class of every replica written; unset: the site's default.
    storage_class: NonEmpty | None = None
    # Two-way replication (REP.2): the site is another zone that replicates to this one too.
    # Its replicas are never sent back (no echo) and both directions follow last writer wins
    # (README "Two-way replication"). Unversioned buckets only, for now.
    two_way: Flag = False
    # The peer's ``[replication] zone`` (what its replicas here name as their source);
    # "": the site's ``name``.
    peer_zone: Text = ""
    # The identities the peer's replicator writes into this zone as (radosgw user ids, as the
    # bucket index records a writer): records carrying one (``[source] record_writer``) are
    # echoes, dropped with no request. Without it an echo costs a GET's headers.
    replica_writers: UserIds = ()

    @property
    def peer(self) -> str:
        return self.peer_zone or self.name

    def site_bucket(self, bucket: str) -> str:
        """The bucket at the site for source bucket ``bucket`` (``tenant/bucket`` for a tenant's)."""
        return self.bucket_map.get(bucket, bucket.replace("/", ":"))

    def wants(self, bucket: str, key: str | None) -> bool:
        if self.buckets and bucket not in self.buckets:
            return False
        return key is None or not self.prefixes or any(key.startswith(p) for p in self.prefixes)


class ReplicationConfig(Section):
    """``[replication]``: the replication consumer (REP.1), run by ``serve`` when sites are set
    and by ``rgw-changelog replicate``. Each site reads the committed logs from a checkpoint of
    its own (consumer ``replication-<site>``), under a lease of its own."""

    section: ClassVar[str] = "replication"

    sites: tuple[SiteConfig, ...] = ()
    # Parallel requests per site; keys are hashed to workers, so each key keeps its order.
    workers: Integer = Field(default=8, ge=1, le=256)
    # Seconds between two looks at the logs when a site has caught up.
    interval: Number = Field(default=1.0, gt=0)
    lease_ttl: Number = Field(default=30.0, ge=1.0)
    # Attempts of one request on a transient error (botocore's capped backoff with jitter).
    max_attempts: Integer = Field(default=5, ge=1, le=20)
    # Failed entries are kept this long (seconds) unless retried first (default 7 days).
    failed_retention: Number = Field(default=7 * 86400.0, gt=0)
    # Objects above this size are streamed as a multipart upload of parts this size.
    part_bytes: Size = Field(default=8 * MiB, ge=S3_MIN_PART, le=S3_MAX_PART)
    # The source zone's name written into each replica's metadata; "": the source endpoint.
    zone: Text = ""

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for site in self.sites:
            if site.name in seen:
                raise invalid(f"replication.sites: two sites are named {site.name!r}", line=True)
            seen.add(site.name)
            if site.two_way and not self.zone:
                raise invalid(
                    f"replication.sites: site {site.name!r} is two_way: set replication.zone to this zone's name "
                    "(the peer's peer_zone)",
                    line=True,
                )
            if site.two_way and site.peer == self.zone:
                raise invalid(
                    f"replication.sites: site {site.name!r} is two_way: its peer_zone {site.peer!r} is this zone's "
                    "own name (replication.zone); the two zones need different names",
                    line=True,
                )
        if sum(site.two_way for site in self.sites) > 1:
            raise invalid("replication.sites: only one site may be two_way (two zones replicating to each other)", line=True)
        return self

    def site(self, name: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.name == name), None)


class UsageConfig(Section):
    """``[usage]``: usage metrics (UTAPI.3), a consumer of the logs run by ``serve`` when
    ``enabled`` and by ``rgw-changelog usage run``; its state is in ``shards`` objects beside
    the index (``changelog.consumers.usage``)."""

    section: ClassVar[str] = "usage"

    enabled: Flag = False
    # Seconds of one interval of the series; it must divide an hour (hourly and daily roll-ups).
    interval: Integer = Field(default=300, ge=1, le=3600)
    # State objects; fixed once the state exists (a store made with another count is refused).
    shards: Integer = Field(default=16, ge=1, le=1024)
    # How long intervals are kept: the fine ones, the hourly and the daily roll-ups (by data
    # time: the latest record time seen, so a rebuild from the logs keeps the same ones).
    retention: Duration = Field(default=2 * 86400.0, gt=0)
    retention_hourly: Duration = Field(default=60 * 86400.0, gt=0)
    retention_daily: Duration = Field(default=800 * 86400.0, gt=0)
    # Prometheus gauges of the current totals: the top N buckets by bytes, plus these buckets
    # (tenant/bucket for a tenant's) whatever their rank.
    metrics_top: Integer = Field(default=20, ge=0, le=10_000)
    metrics_buckets: Names = ()
    # Seconds between two looks at the logs when caught up.
    poll_interval: Number = Field(default=5.0, gt=0)
    lease_ttl: Number = Field(default=30.0, ge=1.0)

    @field_validator("interval")
    @classmethod
    def _divides_an_hour(cls, v: int) -> int:
        if 3600 % v:
            raise invalid(f"must divide an hour (3600 s), e.g. 60, 300, 600, 900 (got {v})")
        return v


class ScaleConfig(Section):
    """``[scale]``: scale-out. With ``partitioned``, every ``serve`` of the index with this
    setting takes its fair share of the follower's ``follower_partitions`` partitions and of the
    collector's ``collector_partitions`` streams (by lease; ``rgw_module.follower_partitions``,
    ``changelog.pipeline.collector_streams``)."""

    section: ClassVar[str] = "scale"

    partitioned: Flag = False
    # Fixed for an index once its follower state is partitioned (a bucket's partition is a hash
    # of its name modulo this): another count is refused in one line.
    follower_partitions: Integer = Field(default=8, ge=1, le=256)
    # Collector streams: stream n drains the index shards s % n. Fixed for an index once used
    # (a key's stream must not change while its records are in flight). More streams than
    # index shards leave some empty.
    collector_partitions: Integer = Field(default=4, ge=1, le=256)


class HealthConfig(Section):
    """When ``GET /_/healthcheck`` says 500 although every thread is alive."""

    section: ClassVar[str] = "health"

    # This many collector passes failed in a row.
    failed_passes: Integer = Field(default=3, ge=1)
    # The oldest entry waiting in the index is older than this (seconds).
    max_backlog_age: Number = Field(default=300.0, gt=0)
    # The follower is this far behind the source (seconds since it was last caught up).
    max_follow_lag: Number = Field(default=300.0, gt=0)
    # Every step of a consumer (backup, replication, lifecycle...) failed for this long (seconds).
    max_consumer_failing: Number = Field(default=300.0, gt=0)


class LoggingConfig(Section):
    section: ClassVar[str] = "logging"

    level: Level = "INFO"
    file: PathStr | None = None


SECTIONS: dict[str, type[Section]] = {
    "index": IndexConfig,
    "source": SourceConfig,
    "target": TargetConfig,
    "collector": CollectorConfig,
    "api": ApiConfig,
    "backup": BackupConfig,
    "replication": ReplicationConfig,
    "usage": UsageConfig,
    "lifecycle": LifecycleConfig,
    "scale": ScaleConfig,
    "health": HealthConfig,
    "logging": LoggingConfig,
}


class Config(_Model):
    """The whole configuration. ``parse_config`` also gives the target and the backup store the
    source's endpoint, credentials and TLS settings when they have none; a ``Config`` built in
    code does not."""

    index: IndexConfig = Field(default_factory=IndexConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    collector: CollectorConfig = Field(default_factory=CollectorConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    replication: ReplicationConfig = Field(default_factory=ReplicationConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # Where it was read from; None = built-in defaults. Not a TOML key, not compared.
    path: str | None = None

    @model_validator(mode="after")
    def _part_size_for_s3(self) -> Self:
        if self.target.is_s3 and self.collector.part_bytes < S3_MIN_PART:
            raise invalid(
                f"collector.part_bytes must be at least {S3_MIN_PART} bytes (5 MiB) with an s3:// target "
                f"(got {self.collector.part_bytes})",
                line=True,
            )
        return self

    @model_validator(mode="after")
    def _two_way_needs_writers(self) -> Self:
        for site in self.replication.sites:
            if site.two_way and not self.source.record_writer:
                raise invalid(
                    f"replication.sites: site {site.name!r} is two_way: set [source] record_writer = true "
                    "(echoes are recognised by their writer)",
                    line=True,
                )
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return all(getattr(self, sec) == getattr(other, sec) for sec in SECTIONS)

    __hash__ = None  # type: ignore[assignment]  # sections hold a mapping: not hashable

    def to_dict(self, *, masked: bool = True) -> dict[str, dict[str, ConfigValue]]:
        """The effective config as plain data; secrets masked unless ``masked=False``."""
        return {sec: _section_dict(getattr(self, sec), masked) for sec in SECTIONS}

    def to_toml(self) -> str:
        """The effective config as TOML, secrets masked (for ``config check``)."""
        lines = []
        for sec, d in self.to_dict(masked=True).items():
            lines.append(f"[{sec}]")
            tables: list[tuple[str, dict[str, ConfigValue]]] = []
            for k, v in d.items():
                if isinstance(v, list) and v and isinstance(v[0], dict):
                    tables.extend((k, t) for t in v if isinstance(t, dict))
                elif v is None:
                    lines.append(f"# {k} = (unset)")
                else:
                    lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
            for k, t in tables:
                lines.append(f"[[{sec}.{k}]]")
                lines.extend(f"{tk} = {_toml_value(tv)}" for tk, tv in t.items() if tv is not None)
                lines.append("")
        return "\n".join(lines)


def _section_dict(part: Section, masked: bool) -> dict[str, ConfigValue]:
    d: dict[str, ConfigValue] = {}
    for name in type(part).model_fields:
        v = getattr(part, name)
        if isinstance(v, Secret):
            d[name] = (f"{MASK} (from {v.source})" if v.source else MASK) if masked else v.reveal()
        elif isinstance(v, tuple) and v and isinstance(v[0], Section):
            d[name] = [_section_dict(x, masked) for x in v]  # an array of tables
        elif isinstance(v, tuple):
            d[name] = list(v)
        elif isinstance(v, Mapping):
            d[name] = {k: list(x) if isinstance(x, tuple) else x for k, x in v.items()}
        else:
            d[name] = v
    return d


def _toml_value(v: ConfigValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


# --------------------------------------------------------------------------- loading


def _check_top_level(data: Mapping[str, object]) -> None:
    """Unknown sections and keys outside any section, with a hint where the key belongs."""
    for sec, raw in data.items():
        if sec in SECTIONS:
            continue
        if isinstance(raw, dict):
            raise ConfigError(f"unknown section [{sec}]{suggest(sec, list(SECTIONS))}")
        keys = [k for cls in SECTIONS.values() for k in cls.model_fields]
        match = difflib.get_close_matches(sec, keys, 1)
        hint = ""
        if match:
            owner = next(s for s, cls in SECTIONS.items() if match[0] in cls.model_fields)
            hint = f" (keys go in a section: did you mean [{owner}] {match[0]}?)"
        raise ConfigError(f"unknown top-level key {sec}{hint}")


def _inherit_source(cfg: Config) -> Config:
    """The target and the backup store usually live on the source radosgw: they default to its
    endpoint and credentials (a section's own keys are both set or both unset, checked). A
    section that takes the source's endpoint takes its TLS settings too (``verify``,
    ``ca_bundle``), unless it sets them itself."""
    src = cfg.source

    def inherit(part: TargetConfig | BackupConfig | LifecycleConfig) -> dict[str, object]:
        update: dict[str, object] = {
            "endpoint": part.endpoint or src.endpoint,
            "access_key": part.access_key or src.access_key,
            "secret_key": part.secret_key or src.secret_key,
        }
        if part.endpoint is None and src.endpoint is not None:
            own = part.model_fields_set
            update["verify"] = part.verify if "verify" in own else src.verify
            update["ca_bundle"] = part.ca_bundle if "ca_bundle" in own else src.ca_bundle
        return update

    update: dict[str, object] = {}
    if cfg.target.is_s3:
        update["target"] = cfg.target.model_copy(update=inherit(cfg.target))
    if cfg.backup.url is not None and cfg.backup.url.startswith("s3://"):
        update["backup"] = cfg.backup.model_copy(update=inherit(cfg.backup))
    if cfg.lifecycle.enabled:
        update["lifecycle"] = cfg.lifecycle.model_copy(update=inherit(cfg.lifecycle))
    return cfg.model_copy(update=update) if update else cfg


def parse_config(
    data: Mapping[str, object], *, path: str | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Check a parsed TOML document and build the ``Config``."""
    env = os.environ if env is None else env
    _check_top_level(data)
    try:
        cfg = Config.model_validate({**data, "path": path}, context={"env": env})
    except ValidationError as ex:
        # One line for the operator; the ValidationError adds nothing a traceback reader needs.
        raise config_error(ex, SECTIONS) from None
    return _inherit_source(cfg)


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load the config: ``path`` (``-c``) > ``$RGW_CHANGELOG_CONFIG`` > the system file > defaults."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_VAR):
        path, why = env[ENV_VAR], f" (from ${ENV_VAR})"
    elif path is not None:
        why = ""
    elif DEFAULT_PATH.exists():
        path, why = DEFAULT_PATH, ""
    else:
        return parse_config({}, env=env)
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found{why}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory{why}") from None
    except OSError as ex:
        raise ConfigError(f"cannot read config file {p}{why}: {ex.strerror or ex}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as ex:
        raise ConfigError(f"{p} is not UTF-8 text (byte {ex.start})") from None
    except tomllib.TOMLDecodeError as ex:
        raise ConfigError(f"{p} is not valid TOML: {ex}") from None
    return parse_config(data, path=str(p), env=env)


# --------------------------------------------------------------------------- factories


def check_index_files(cfg: Config) -> None:
    """The files ``[index]`` names exist (``ConfigError`` naming the key): checked where the
    store opens and by ``config check``, not by the config's own validation (a config may be
    read on a machine that does not run it)."""
    ic = cfg.index
    if ic.backend == "sqlite":
        parent = Path(ic.path).parent
        if not parent.is_dir():
            raise ConfigError(f"index.path: directory {parent} does not exist")
        return
    if not Path(ic.ceph_conf).is_file():
        raise ConfigError(f"index.ceph_conf: {ic.ceph_conf} not found")
    if ic.keyring is not None and not Path(ic.keyring).is_file():
        # librados would say "RADOS object not found (error connecting to the cluster)".
        raise ConfigError(f"index.keyring: {ic.keyring} not found")


def open_store(cfg: Config) -> ObjectStore:
    """The index's object store: the embedded sqlite file, or a RADOS pool."""
    ic = cfg.index
    check_index_files(cfg)
    if ic.backend == "sqlite":
        from changelog.pipeline.backends.sqlite import SqliteStore

        return SqliteStore(ic.path)
    try:
        from changelog.pipeline.backends.rados import RadosStore
    except ImportError as ex:
        raise PermanentError(
            f"index.backend is rados but the rados Python binding cannot be loaded ({ex}): "
            "install Debian's python3-rados"
        ) from ex

    store: ObjectStore = RadosStore(
        conffile=ic.ceph_conf,
        pool=ic.pool,
        namespace=ic.namespace,
        keyring=ic.keyring,
        client_name=ic.client_name,
        connect_timeout=ic.connect_timeout,
    )
    return store


def open_index(cfg: Config, *, create: bool = True, store: ObjectStore | None = None) -> ChangeIndex:
    """The change index described by ``[index]`` (created on first use unless ``create=False``)."""
    from changelog.pipeline.index import ChangeIndex

    store = open_store(cfg) if store is None else store
    try:
        return ChangeIndex(store, shards=cfg.index.shards, prefix=cfg.index.prefix, mode=cfg.index.mode, create=create)
    except BaseException:
        store.close()
        raise


def _open_target(url: str, part: TargetConfig | BackupConfig) -> Target:
    from changelog.pipeline.targets import make_target

    # A file:// target creates its directory itself (a one-line ConfigError when it cannot).
    return make_target(
        url,
        endpoint=part.endpoint,
        access_key=reveal(part.access_key),
        secret_key=reveal(part.secret_key),
        region=part.region,
        # None: the target's default (the backup section has no such key).
        addressing_style=part.addressing_style if isinstance(part, TargetConfig) else None,
        verify=part.tls_verify,
    )


def open_target(cfg: Config) -> Target:
    """The change-log target described by ``[target]`` (S3 bucket or local directory)."""
    return _open_target(cfg.target.url, cfg.target)


def open_backup_target(cfg: Config) -> Target:
    """The backup store described by ``[backup]``."""
    if cfg.backup.url is None:
        raise ConfigError("backup.url is not set")
    return _open_target(cfg.backup.url, cfg.backup)


def make_collector(
    cfg: Config,
    index: ChangeIndex,
    target: Target,
    *,
    clocks: Clocks | None = None,
    watermark_cap: Callable[[], int | None] | None = None,
    paused: Callable[[], bool] | None = None,
    fault_hook: Callable[[str], None] | None = None,
    collector_id: str | None = None,
) -> Collector:
    """The collector for this config: ``[collector]`` whole, the target's compression."""
    # Imported here: the collector imports the index and targets, which this module must not
    # load just to read a config.
    from changelog.pipeline.collector import Collector

    return Collector(
        index,
        target,
        cfg.collector,
        compression=cfg.target.compression,
        clocks=clocks if clocks is not None else Clocks(),
        watermark_cap=watermark_cap,
        paused=paused,
        fault_hook=fault_hook,
        collector_id=collector_id,
    )


__all__ = [
    "ApiConfig",
    "BackupConfig",
    "CollectorConfig",
    "HealthConfig",
    "Config",
    "ConfigValue",
    "IndexConfig",
    "LoggingConfig",
    "Secret",
    "Section",
    "SourceConfig",
    "TargetConfig",
    "load_config",
    "make_collector",
    "open_backup_target",
    "open_index",
    "open_store",
    "open_target",
    "parse_config",
    "parse_size",
    "reveal",
    "split_listen",
]
