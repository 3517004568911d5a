"""What replication opens from the config: the source client, one client per site, the change
logs, and a ``SiteReplicator`` per site (``Replication``); and an object's replication status
across the sites (Backbeat's rule), shared by ``replicate status`` and ``GET /_/crr/status``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from changelog.config import Config, SiteConfig, open_target, reveal
from changelog.consumers.replication.apply import SRC_ETAG, SRC_VERSION, SRC_ZONE, is_replica
from changelog.consumers.replication.consumer import SiteReplicator
from changelog.consumers.replication.state import SiteState, entry_id
from changelog.errors import ChangelogError, ConfigError, ObjectMissing, PermanentError
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.loop import Clocks
from changelog.pipeline.s3client import make_s3_client, translate_error
from changelog.pipeline.targets import Target

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

Status = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED"]
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
# Concurrent part uploads of one large object (per worker): memory is bounded by
# workers x this x part_bytes.
PART_CONCURRENCY = 2


def tenant_names(client: S3Client) -> S3Client:
    """``client``, taking a tenant's bucket as radosgw names it in S3 (``tenant:bucket``), which
    botocore's name check refuses before sending: the server is the judge of its bucket names
    (AWS refuses such a name itself, in one line)."""
    from botocore.handlers import validate_bucket_name

    client.meta.events.unregister("before-parameter-build.s3", validate_bucket_name)
    return client


def site_client(site: SiteConfig, *, max_attempts: int, pool: int) -> S3Client:
    return tenant_names(
        make_s3_client(
            site.endpoint,
            access_key=reveal(site.access_key),
            secret_key=reveal(site.secret_key),
            region=site.region,
            addressing_style=site.addressing_style,
            verify=site.tls_verify,
            max_attempts=max_attempts,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool=pool,
        )
    )


def transfer_config(part_bytes: int) -> TransferConfig:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=part_bytes,
        multipart_chunksize=part_bytes,
        max_concurrency=PART_CONCURRENCY,
        use_threads=True,
    )


def zone_name(cfg: Config) -> str:
    """The source zone's name in replica metadata: ``[replication] zone``, else the source
    endpoint's host:port."""
    if cfg.replication.zone:
        return cfg.replication.zone
    return urlsplit(cfg.source.endpoint).netloc if cfg.source.endpoint else "source"


@dataclass
class Replication:
    """Every site's replicator for a config, with the clients they share; ``close()`` closes
    them."""

    config: Config
    index: ChangeIndex
    clocks: Clocks = field(default_factory=Clocks)
    sites: dict[str, SiteReplicator] = field(default_factory=dict)
    source: S3Client | None = None
    logs: Target | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        rc = cfg.replication
        if not rc.sites:
            raise ConfigError("no [[replication.sites]] in the config: nothing to replicate to")
        if cfg.source.endpoint is None:
            raise ConfigError("replication reads the source zone: set [source] endpoint")
        pool = 2 * rc.workers * (1 + 2) + 4
        self.source = tenant_names(
            make_s3_client(
                cfg.source.endpoint,
                access_key=reveal(cfg.source.access_key),
                secret_key=reveal(cfg.source.secret_key),
                region=cfg.source.region,
                addressing_style="path",
                verify=cfg.source.tls_verify,
                max_attempts=rc.max_attempts,
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                max_pool=pool * max(1, len(rc.sites)),
            )
        )
        self._closers.append(self.source.close)
        self.logs = open_target(cfg)
        self._closers.append(self.logs.close)
        transfer = transfer_config(rc.part_bytes)
        zone = zone_name(cfg)
        for site in rc.sites:
            client = site_client(site, max_attempts=rc.max_attempts, pool=pool)
            self._closers.append(client.close)
            self.sites[site.name] = SiteReplicator(
                self.index,
                self.logs,
                site,
                rc,
                source=self.source,
                site_client=client,
                transfer=transfer,
                zone=zone,
                clocks=self.clocks,
            )

    def site(self, name: str) -> SiteReplicator:
        try:
            return self.sites[name]
        except KeyError:
            raise UnknownSite(f"no replication site {name!r}; sites: {', '.join(self.sites)}") from None

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()


class UnknownSite(ChangelogError):
    """A site name that is not in ``[[replication.sites]]`` (the API answers 404)."""


def overall(statuses: Mapping[str, Status]) -> Status:
    """Backbeat's rule: FAILED if any site failed, COMPLETED when all are, PENDING when none has
    started, else PROCESSING."""
    values = set(statuses.values())
    if "FAILED" in values:
        return "FAILED"
    if not values or values == {"COMPLETED"}:
        return "COMPLETED"
    if values == {"PENDING"}:
        return "PENDING"
    return "PROCESSING"


def _head(client: S3Client, bucket: str, key: str, version_id: str | None) -> dict[str, object] | None:
    """HEAD of an object (version), or None when there is no such object or version."""
    kw: dict[str, str] = {"Bucket": bucket, "Key": key}
    if version_id:
        kw["VersionId"] = version_id
    try:
        return dict(client.head_object(**kw))  # type: ignore[arg-type]
    except Exception as ex:  # noqa: BLE001 - classified below
        err = translate_error(ex, f"HEAD {bucket}/{key}")
        if isinstance(err, ObjectMissing):
            return None
        code = getattr(ex, "response", {}).get("Error", {}).get("Code") if hasattr(ex, "response") else None
        if code in ("404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed"):
            return None  # a delete marker answers 404/405
        raise err from ex


def object_status(repl: Replication, bucket: str, key: str, version_id: str | None = None) -> dict[str, object]:
    """``{"bucket", "key", "version_id", "status", "sites": {site: status}, "at_source"}`` for one object
    version (the current one when ``version_id`` is None), looked up at the source and each
    site: FAILED when the site's failed list holds it, PROCESSING while the site's replicator
    in this process is applying it, COMPLETED when the site holds a replica of exactly that
    version (its replica metadata) or, for an object deleted at the source, nothing, else
    PENDING. ``at_source`` False: the source has no such object (version): deleted, or never
    written, which the source cannot tell apart for an unversioned key (COMPLETED where no site
    holds it either)."""
    assert repl.source is not None
    src_bucket = bucket.replace("/", ":")
    src = _head(repl.source, src_bucket, key, version_id)
    src_version = version_id or (str(src.get("VersionId")) if src and src.get("VersionId") else None)
    if src_version == "null":
        src_version = None
    src_etag = str(src.get("ETag", "")).strip('"') if src else None
    sites: dict[str, Status] = {}
    for name, rep in repl.sites.items():
        if not rep.site.wants(bucket, key):
            continue
        state = SiteState(repl.index, name)
        if state.failed_entry(entry_id(bucket, key, src_version)) is not None:
            sites[name] = "FAILED"
            continue
        if rep.processing(bucket, key):
            sites[name] = "PROCESSING"
            continue
        sites[name] = _site_status(rep, bucket, key, src, src_version, src_etag)
    return {
        "bucket": bucket,
        "key": key,
        "version_id": src_version or ("null" if src else version_id),
        "status": overall(sites),
        "sites": sites,
        "at_source": src is not None,
    }


def _site_status(
    rep: SiteReplicator, bucket: str, key: str, src: dict[str, object] | None, src_version: str | None, etag: str | None
) -> Status:
    dest = rep.site.site_bucket(bucket)
    site_version = rep.state.site_version(dest, key, src_version) if src_version else None
    try:
        got = _head(rep.client, dest, key, site_version)
    except PermanentError:
        return "PENDING"
    if src is None:  # gone at the source: done when gone at the site too
        return "COMPLETED" if got is None else "PENDING"
    if got is None:
        return "PENDING"
    meta = got.get("Metadata") or {}
    assert isinstance(meta, dict)
    if site_version is not None:
        return "COMPLETED"
    src_meta = src.get("Metadata") or {}
    assert isinstance(src_meta, dict)
    if rep.site.two_way and is_replica(src_meta, key, dest) and src_meta.get(SRC_ZONE) == rep.site.peer:
        # Two-way: the source's object is the peer's replica of a write its user made there;
        # done when the peer still holds that write (the original, by its ETag).
        original = str(got.get("ETag", "")).strip('"')
        return "COMPLETED" if not is_replica(meta, key, bucket) and original == src_meta.get(SRC_ETAG) else "PENDING"
    if meta.get(SRC_VERSION) == (src_version or "null") and (etag is None or meta.get(SRC_ETAG) == etag):
        return "COMPLETED"
    return "PENDING"


__all__ = [
    "Replication",
    "Status",
    "UnknownSite",
    "object_status",
    "overall",
    "site_client",
    "transfer_config",
    "zone_name",
]
