"""``rgw-changelog serve``: the process. It wires the pipeline (the RGW follower when
``[source] endpoint`` is set, the collector) and the consumers of the logs (backup, when
``[backup] interval`` is set; usage metrics when ``[usage] enabled``; one replicator per
``[[replication.sites]]`` entry) to one index and one target, runs each in a thread, and serves the
operator API (health, metrics, status, pause/resume, flush, each consumer's routes, replication's
``/_/crr``, usage's ``/_/usage`` and its bounded per-bucket gauges).

Each component runs ``run(stop)`` in a ``ComponentThread``. The first one to die sets the shared
stop event, so the whole service stops and ``Service.run`` re-raises what it died of (the CLI
turns that into a one-line message and a non-zero exit). SIGTERM or SIGINT sets the stop event:
the follower finishes the round it is recording (record, then persist its markers), the
collector its pass, and both release their leases. A second signal exits at once (the leases
then expire on their own; nothing is left half-done that recovery does not finish).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from changelog.errors import PermanentError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from changelog.api import ApiServer, Controls, HealthCheck
    from changelog.config import Config, HealthConfig
    from changelog.consumers.framework import ConsumerRunner
    from changelog.consumers.replication.sites import Replication
    from changelog.consumers.usage.model import Layout
    from changelog.health import Health
    from changelog.pipeline.collector import Collector
    from changelog.pipeline.collector_streams import StreamedCollector
    from changelog.pipeline.index import ChangeIndex
    from changelog.pipeline.lease import Lease
    from changelog.pipeline.store import ObjectStore
    from changelog.pipeline.targets import Target
    from rgw_module.follower import Follower
    from rgw_module.follower_partitions import PartitionedFollower
    from rgw_module.zonegroup import ZonegroupCheck

    AnyFollower = Follower | PartitionedFollower
    AnyCollector = Collector | StreamedCollector

logger = logging.getLogger(__name__)

# How long a graceful stop may take before ``Service.run`` gives up waiting and raises.
STOP_TIMEOUT_S = 60.0


class Component(Protocol):
    def run(self, stop: threading.Event) -> None: ...


class ComponentThread(threading.Thread):
    """Runs ``component.run(stop)``; remembers what it died of and re-raises it on ``join``. A
    component that ends for any reason while ``stop`` is not set stops the others too."""

    def __init__(self, name: str, component: Component, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.component = component
        self.stop_event = stop
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        logger.info("%s started", self.name)
        try:
            self.component.run(self.stop_event)
        except BaseException as ex:  # noqa: BLE001 - kept and re-raised by join_and_raise
            self.error = ex
            logger.error("%s failed: %s", self.name, ex, exc_info=True)
        finally:
            self.finished_at = time.monotonic()
            if not self.stop_event.is_set():
                if self.error is None:
                    logger.warning("%s ended without being asked to: stopping the service", self.name)
                self.stop_event.set()
            logger.info("%s stopped", self.name)

    def join_and_raise(self, timeout: float | None = None) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error


class Service:
    """Runs components (follower, collector, ...) until a signal or a failure."""

    def __init__(
        self,
        components: Mapping[str, Component],
        *,
        on_stop: Sequence[Callable[[], None]] = (),
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        if not components:
            raise PermanentError("serve: nothing to run")
        self.components = dict(components)
        self.stop_event = threading.Event()
        self.stop_timeout = stop_timeout
        self._on_stop = list(on_stop)
        self.threads: list[ComponentThread] = []
        self._signals = 0

    def __repr__(self) -> str:
        return f"Service({sorted(self.components)})"

    def start(self) -> None:
        for name, component in self.components.items():
            t = ComponentThread(name, component, self.stop_event)
            self.threads.append(t)
            t.start()

    def stop(self) -> None:
        self.stop_event.set()

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after every component has stopped (in the order added)."""
        self._on_stop.append(fn)

    def thread(self, name: str) -> ComponentThread | None:
        return next((t for t in self.threads if t.name == name), None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for every component; re-raise the first failure (by time of death)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for fn in self._on_stop:
            try:
                fn()
            except Exception as ex:  # noqa: BLE001 - cleanup must not hide the real outcome
                logger.warning("cleanup after stop failed: %s", ex)
        alive = [t.name for t in self.threads if t.is_alive()]
        failed = sorted((t for t in self.threads if t.error is not None), key=lambda t: t.finished_at or 0.0)
        if failed:
            raise failed[0].error  # type: ignore[misc]
        if alive:
            raise PermanentError(f"serve: {', '.join(alive)} did not stop within {self.stop_timeout:.0f}s")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            logger.info("%s received: stopping (finishing the current work, releasing leases)", name)
            self.stop_event.set()
        else:
            logger.warning("%s received again: exiting now", name)
            os._exit(128 + signum)

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT stop the service (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def run(self, *, install_signals: bool = True) -> None:
        """Start, wait for a signal or a failure, stop, and re-raise a failure."""
        if install_signals:
            self.install_signal_handlers()
        self.start()
        logger.info("serving: %s", ", ".join(self.components))
        while not self.stop_event.wait(1.0):
            pass
        logger.info("stopping: %s", ", ".join(self.components))
        self.join(self.stop_timeout)
        logger.info("stopped")


# --------------------------------------------------------------------------- wiring


@dataclass
class Pipeline:
    """What one ``serve`` runs: the components, their pause switches, and what to close."""

    index: ChangeIndex
    target: Target
    collector: AnyCollector
    controls: Controls
    follower: AnyFollower | None = None
    consumers: list[ConsumerRunner] = field(default_factory=list)
    # The replication sites' shared clients (their runners are among ``consumers``).
    replication: Replication | None = None
    # The zonegroup check's findings (``rgw_module.zonegroup``), set by ``serve``.
    zonegroup: ZonegroupCheck | None = None

    def components(self) -> dict[str, Component]:
        out: dict[str, Component] = {}
        if self.follower is not None:
            out["follower"] = self.follower
        out["collector"] = self.collector
        for runner in self.consumers:
            out[runner.consumer.name] = runner
        return out

    def leases(self) -> list[Lease]:
        """Every lease this process takes (for the health check and the metrics)."""
        held = self.follower.leases() if self.follower is not None else []
        return [*held, *self.collector.leases(), *(r.lease for r in self.consumers)]

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()
        for runner in self.consumers:
            runner.step_down()
        if self.replication is not None:
            self.replication.close()
        self.index.store.close()

    def replication_runners(self) -> dict[str, ConsumerRunner]:
        """The replication sites' runners, by site name."""
        if self.replication is None:
            return {}
        names = {rep.name: site for site, rep in self.replication.sites.items()}
        return {names[r.consumer.name]: r for r in self.consumers if r.consumer.name in names}


def same_endpoint(a: str, b: str) -> bool:
    """Whether two URLs name the same server (scheme, host, port with its default)."""
    pa, pb = urlsplit(a), urlsplit(b)
    ports = {"http": 80, "https": 443}
    return (pa.scheme, pa.hostname, pa.port or ports.get(pa.scheme)) == (
        pb.scheme,
        pb.hostname,
        pb.port or ports.get(pb.scheme),
    )


def build_follower(cfg: Config, index: ChangeIndex, target: Target, controls: Controls) -> AnyFollower:
    """The follower of ``[source]``. The target's bucket is not followed when it lives on the
    followed zone: the change logs' own writes are not mutations to log."""
    from changelog.config import reveal
    from rgw_module.admin import AdminClient
    from rgw_module.follower import Follower

    src = cfg.source
    if not src.endpoint:
        raise PermanentError("source.endpoint is not set")
    if src.access_key is None or src.secret_key is None:
        raise PermanentError("source.access_key and source.secret_key must be set to follow a radosgw zone")
    exclude = set(src.exclude_buckets)
    internal: tuple[str, ...] = ()
    if target.bucket and (target.endpoint is None or same_endpoint(target.endpoint, src.endpoint)):
        exclude.add(target.bucket)
        internal = (target.bucket,)
    admin = AdminClient(
        src.endpoint,
        reveal(src.access_key) or "",
        reveal(src.secret_key) or "",
        region=src.region,
        verify=src.tls_verify,
    )
    bucket_index = None
    if src.object_info == "index":
        from rgw_module.bucket_index import BucketIndexReader, LazyOmap, OmapSource

        idx = cfg.index

        def open_omap() -> OmapSource:
            # Opened on first use: an unreachable cluster or no rados binding turns into one
            # warning and HEAD (rgw_module.bilog_reader), not a follower that cannot start.
            from changelog.pipeline.backends.rados import OmapReader

            return OmapReader(
                conffile=idx.ceph_conf, keyring=idx.keyring, client_name=idx.client_name,
                connect_timeout=idx.connect_timeout,
            )  # fmt: skip

        bucket_index = BucketIndexReader(LazyOmap(open_omap), src.index_pool)
    config = src.model_copy(update={"exclude_buckets": tuple(sorted(exclude))})
    if cfg.scale.partitioned:
        from rgw_module.follower_partitions import PartitionedFollower

        return PartitionedFollower(
            index,
            admin,
            config,
            count=cfg.scale.follower_partitions,
            internal_buckets=internal,
            paused=lambda: controls.checkpoint("follower"),
            bucket_index=bucket_index,
        )
    # Pausing parks the follower between sweeps; its lease and markers stay.
    return Follower(
        index,
        admin,
        config,
        internal_buckets=internal,
        paused=lambda: controls.checkpoint("follower"),
        bucket_index=bucket_index,
    )


def consumer_names(cfg: Config) -> list[str]:
    """The consumers ``build_consumers`` and ``build_replication`` make for ``cfg`` (their
    pause switches' names)."""
    from changelog.consumers.replication.state import consumer_name

    names = ["backup"] if cfg.backup.url is not None and cfg.backup.interval is not None else []
    names += ["usage"] if cfg.usage.enabled else []
    names += ["lifecycle"] if cfg.lifecycle.enabled else []
    return names + [consumer_name(site.name) for site in cfg.replication.sites]


def build_replication(
    cfg: Config, index: ChangeIndex, controls: Controls
) -> tuple[Replication | None, list[ConsumerRunner]]:
    """With ``[[replication.sites]]``: the sites' shared clients, and one runner per site, each
    under its own lease and pause switch (``replication-<site>``)."""
    if not cfg.replication.sites:
        return None, []
    from changelog.consumers.framework import ConsumerRunner
    from changelog.consumers.replication.sites import Replication

    repl = Replication(cfg, index)
    runners = [
        ConsumerRunner(
            index,
            rep,
            lease_ttl=cfg.replication.lease_ttl,
            paused=functools.partial(controls.checkpoint, rep.name),
        )
        for rep in repl.sites.values()
    ]
    return repl, runners


def build_consumers(
    cfg: Config, index: ChangeIndex, controls: Controls, target: Target | None = None
) -> list[ConsumerRunner]:
    """The consumers of the logs this config turns on inside ``serve``, but replication's
    (``build_replication``). ``target``: the change logs (opened from ``cfg`` when not given)."""
    from changelog.consumers.framework import ConsumerRunner

    runners = []
    if cfg.usage.enabled:
        from changelog.config import open_target
        from changelog.consumers.usage.consumer import usage_consumer

        usage = usage_consumer(cfg.usage, index, target if target is not None else open_target(cfg))
        runners.append(
            ConsumerRunner(
                index, usage, lease_ttl=cfg.usage.lease_ttl, paused=lambda: controls.checkpoint("usage")
            )
        )
    if cfg.lifecycle.enabled:
        from changelog.config import open_target
        from changelog.consumers.lifecycle.consumer import lifecycle_client, lifecycle_consumer
        from changelog.consumers.lifecycle.leftovers import leftover_reaper

        lc = cfg.lifecycle
        logs = target if target is not None else open_target(cfg)
        client = None if lc.dry_run else lifecycle_client(lc)
        reaper = leftover_reaper(cfg) if client is not None else None
        lifecycle = lifecycle_consumer(lc, index, logs, client, leftovers=reaper)
        runners.append(
            ConsumerRunner(index, lifecycle, lease_ttl=lc.lease_ttl, paused=lambda: controls.checkpoint("lifecycle"))
        )
    if cfg.backup.url is not None and cfg.backup.interval is not None:
        from changelog.consumers.backup.consumer import BackupConsumer

        backup = BackupConsumer(cfg, interval=cfg.backup.interval)
        runners.append(
            ConsumerRunner(
                index,
                backup,
                lease_ttl=cfg.backup.lease_ttl,
                paused=lambda: controls.checkpoint("backup"),
            )
        )
    return runners


def build_collector(
    cfg: Config, index: ChangeIndex, target: Target, controls: Controls, follower: AnyFollower | None
) -> AnyCollector:
    """The collector: one active instance, or with ``[scale] partitioned`` this process's share
    of the collector streams (``changelog.pipeline.collector_streams``). Its watermark is capped
    by the follower's caught-up time."""
    from changelog.config import make_collector

    cap = follower.caught_up_until_us if follower is not None else None
    if cfg.scale.partitioned:
        from changelog.pipeline.collector_streams import StreamedCollector

        return StreamedCollector(
            index,
            target,
            cfg.collector,
            count=cfg.scale.collector_partitions,
            compression=cfg.target.compression,
            watermark_cap=cap,
            paused=functools.partial(controls.checkpoint, "collector"),
        )
    paused = functools.partial(controls.checkpoint, "collector")
    return make_collector(cfg, index, target, watermark_cap=cap, paused=paused)


def build_pipeline(cfg: Config) -> Pipeline:
    """Open the index and the target and build every component ``cfg`` turns on. Without
    ``[source] endpoint`` (the embedded setup: mutations come from ``rgw-changelog record``)
    there is no follower."""
    from changelog.api import Controls
    from changelog.config import open_index, open_target

    src = cfg.source
    if src.endpoint and (src.access_key is None or src.secret_key is None):
        raise PermanentError("source.access_key and source.secret_key must be set to follow a radosgw zone")
    index = open_index(cfg)
    try:
        target = open_target(cfg)
        names = (["follower"] if cfg.source.endpoint else []) + ["collector"]
        controls = Controls((*names, *consumer_names(cfg)))
        follower = build_follower(cfg, index, target, controls) if cfg.source.endpoint else None
        collector = build_collector(cfg, index, target, controls, follower)
        consumers = build_consumers(cfg, index, controls, target)
        replication, replicators = build_replication(cfg, index, controls)
    except BaseException:
        index.store.close()
        raise
    return Pipeline(index, target, collector, controls, follower, [*consumers, *replicators], replication)


def serve(cfg: Config) -> None:
    """``rgw-changelog serve``: every component of ``cfg`` and the HTTP API until SIGTERM."""
    pipeline = build_pipeline(cfg)
    service = Service(pipeline.components())
    try:
        api = start_api(cfg, pipeline, service)
    except BaseException:
        pipeline.close()
        raise
    service.add_cleanup(api.stop)
    service.add_cleanup(pipeline.close)
    src = cfg.source
    if pipeline.follower is not None and src.check_zonegroup:
        from rgw_module.zonegroup import start_check

        pipeline.zonegroup = start_check(pipeline.follower, cfg.index, service.stop_event)
    if pipeline.follower is not None:
        logger.info(
            "serve: following %s (buckets %s) into index %s, logs to %s",
            src.endpoint,
            "all" if src.all_buckets else ", ".join(src.buckets),
            pipeline.index.prefix,
            pipeline.target.url,
        )
    else:
        logger.warning("no [source] endpoint: serving the collector only (record mutations with `rgw-changelog record`)")
        logger.info("serve: index %s -> %s", pipeline.index.prefix, pipeline.target.url)
    for runner in pipeline.consumers:
        logger.info("serve: consumer %s every %gs", runner.consumer.name, runner.consumer.interval)
    for name, site in (pipeline.replication.sites if pipeline.replication else {}).items():
        logger.info(
            "serve: replicating %s to site %s at %s (bucket map %s)",
            ", ".join(site.site.buckets) or "every followed bucket",
            name,
            site.site.endpoint or "AWS S3",
            dict(site.site.bucket_map) or "same names",
        )
    service.run()


def role_leases(pipeline: Pipeline) -> list[Lease]:
    """The control leases: one per role (shard leases come and go with each pass)."""
    follower = pipeline.follower
    held = follower.leases() if follower is not None else []
    return [*held, *pipeline.collector.role_leases(), *(r.lease for r in pipeline.consumers)]


def make_health(policy: HealthConfig, pipeline: Pipeline) -> Health:
    """The honest-health reasons of this process's components (``changelog.health``)."""
    from changelog.health import Health, oldest_entry_us

    return Health(
        policy,
        collector=pipeline.collector,
        oldest_us=lambda: oldest_entry_us(pipeline.index),
        follower=pipeline.follower,
        leases=lambda: role_leases(pipeline),
        consumers={r.consumer.name: r for r in pipeline.consumers},
    )


def health_checks(pipeline: Pipeline, service: Service, health: Health | None = None) -> dict[str, HealthCheck]:
    """The components ``GET /_/healthcheck`` reports: the index backend, the source radosgw, the
    target, each component's thread, and the leases (held by us, or by another live ``serve``
    while this one stands by). Without a follower (embedded setup) the source and follower
    checks are left out. With ``health`` (``make_health``; ``serve`` always passes it) a
    component whose thread is alive is still down for the reasons of ``changelog.health``:
    the collector for failed passes or an old backlog, the follower for its lag, the leases
    for failing renewals, a consumer for steps failing for ``max_consumer_failing``."""
    from changelog.api import leases_held, probe, thread_alive
    from changelog.health import all_of

    index, target, follower = pipeline.index, pipeline.target, pipeline.follower
    checks: dict[str, HealthCheck] = {
        "index": probe(lambda: index.store.omap_get(index.control_oid, ["meta"]), ok="control object readable"),
    }
    if follower is not None:
        checks["source"] = probe(follower.admin.server_time_ns, ok=f"{follower.admin.endpoint} answering")
    # A one-key listing: a bucket that was deleted or cannot be reached shows up here, before a
    # pass has anything to write (one that cannot be written shows up as failed passes).
    checks["target"] = probe(lambda: next(iter(target.list(page=1)), None), ok=f"{target.url} listable")
    for name in pipeline.components():
        checks[name] = thread_alive(lambda name=name: service.thread(name))  # type: ignore[misc]
    checks["leases"] = leases_held(lambda: role_leases(pipeline))
    if health is not None:
        for name in ("collector", "follower", "leases"):
            if name in checks:
                checks[name] = all_of(checks[name], health.check(name))
        for runner in pipeline.consumers:
            name = runner.consumer.name
            checks[name] = all_of(checks[name], health.consumer_check(name))
    return checks


def status_doc(cfg: Config, pipeline: Pipeline, health: Health | None = None) -> dict[str, object]:
    """``GET /_/status``: the direct status document plus this process's live counters and its
    ``health`` (``{"ok": bool, "reasons": [{component, check, detail}]}``)."""
    from changelog.status import collect_status

    doc = collect_status(cfg, pipeline.index, pipeline.target)
    doc["from"] = "serve"
    doc["health"] = (health or make_health(cfg.health, pipeline)).report()
    if pipeline.zonegroup is not None:
        # Settings under which radosgw logs what no follower can see: warnings, not ill health.
        zg = pipeline.zonegroup.doc()
        doc["zonegroup"] = zg
        doc["warnings"] = zg["warnings"]
    collector_doc = doc.get("collector")
    if isinstance(collector_doc, dict):
        collector_doc["live"] = pipeline.collector.stats()
    follower_doc = doc.get("follower")
    if pipeline.follower is not None and isinstance(follower_doc, dict):
        # The persisted state collect_status read just now, plus this process's counters.
        follower_doc["live"] = pipeline.follower.stats()
    consumers = doc.get("consumers")
    if isinstance(consumers, dict):
        for runner in pipeline.consumers:
            consumers[runner.consumer.name] = {**dict(consumers.get(runner.consumer.name) or {}), **runner.status()}
    sites = doc.get("replication")
    if pipeline.replication is not None and isinstance(sites, dict):
        from changelog.consumers.replication.api import CrrRoutes

        routes = CrrRoutes(pipeline.replication, pipeline.replication_runners())
        for name in routes.names:
            # The site's backlog (read from the pending logs) and this process's counters.
            sites[name] = routes.site_doc(name)
    return doc


def start_api(cfg: Config, pipeline: Pipeline, service: Service) -> ApiServer:
    """The operator HTTP API (health, metrics, status, pause, flush, consumer routes), started."""
    from changelog.api import ApiServer
    from changelog.config import reveal
    from changelog.metrics import ChangelogMetrics, make_registry

    health = make_health(cfg.health, pipeline)
    crr = None
    if pipeline.replication is not None:
        from changelog.consumers.replication.api import CrrRoutes

        crr = CrrRoutes(pipeline.replication, pipeline.replication_runners())
    metrics = ChangelogMetrics(
        health=health.reasons,
        collector=pipeline.collector,
        follower=pipeline.follower,
        index=pipeline.index,
        leases=pipeline.leases,
        controls=pipeline.controls,
        consumers={r.consumer.name: r for r in pipeline.consumers},
        replication=crr.prometheus if crr is not None else None,
    )
    api = ApiServer(
        cfg.api.listen,
        cfg.api.allow_from,
        status_provider=lambda: status_doc(cfg, pipeline, health),
        health_checks=health_checks(pipeline, service, health),
        controls=pipeline.controls,
        registry=usage_registry(cfg, pipeline, make_registry(metrics)),
        flush=lambda: flush_doc(pipeline),
        token=reveal(cfg.api.token),
        read_token=reveal(cfg.api.read_token),
    )
    for runner in pipeline.consumers:
        for (method, path), handler in runner.consumer.routes().items():
            api.mount(f"/_/{runner.consumer.name}/{path}", method, handler)
    mount_usage(cfg, pipeline, api)
    if crr is not None:
        api.mount_prefix("/_/crr", crr.crr)
        api.mount_prefix("/_/metrics/crr", crr.metrics)
    api.start()
    return api


def flush_doc(pipeline: Pipeline) -> dict[str, object]:
    """``POST /_/flush``: the result of a collector pass with no settle window. A paused
    collector runs no pass: say so at once rather than hold the request until the collector
    gives up waiting (``FLUSH_TIMEOUT``)."""
    from changelog.consumers.routes import RouteError
    from changelog.status import pass_doc

    if pipeline.controls.paused("collector"):
        raise RouteError(409, "the collector is paused: resume it first (rgw-changelog resume collector)")
    return pass_doc(pipeline.collector.request_flush())


def _usage_state(pipeline: Pipeline) -> tuple[ObjectStore, Layout, Callable[[], Mapping[str, int]]] | None:
    from changelog.consumers.usage.consumer import UsageConsumer

    for runner in pipeline.consumers:
        if isinstance(runner.consumer, UsageConsumer):
            state = runner.consumer.state
            return state.store, state.layout, state.snapshot
    return None


def usage_registry(cfg: Config, pipeline: Pipeline, registry: CollectorRegistry) -> CollectorRegistry:
    """``registry`` plus the usage gauges (bounded: ``[usage] metrics_top``, ``metrics_buckets``)
    when ``serve`` runs the usage consumer."""
    found = _usage_state(pipeline)
    if found is not None:
        from changelog.consumers.usage.prom import UsageMetrics

        store, layout, stats = found
        registry.register(
            UsageMetrics(store, layout, top=cfg.usage.metrics_top, buckets=cfg.usage.metrics_buckets, stats=stats)
        )
    return registry


def mount_usage(cfg: Config, pipeline: Pipeline, api: ApiServer) -> None:
    """``GET /_/usage`` when ``serve`` runs the usage consumer."""
    found = _usage_state(pipeline)
    if found is not None:
        from changelog.consumers.usage.query import UsageRoute

        api.mount_prefix("/_/usage", UsageRoute(found[0], found[1]))
