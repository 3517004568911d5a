"""``rgw-changelog serve``: the follower and the collector in one long-running process.

Each component runs ``run(stop)`` in a ``ComponentThread``. The first one to die sets the shared
stop event, so the whole service stops and ``Service.run`` re-raises what it died of (the CLI
turns that into a one-line message and a non-zero exit). SIGTERM or SIGINT sets the stop event:
the follower finishes the round it is recording (record, then persist its markers), the
collector its pass, and both release their leases. A second signal exits at once (the leases
then expire on their own; nothing is left half-done that recovery does not finish).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from changelog.errors import ChangelogError, PermanentError
from changelog.index import ChangeIndex
from rgw_module.admin import DEFAULT_REGION, AdminClient
from rgw_module.follower import Follower, follower_state

if TYPE_CHECKING:
    from changelog.api import ApiServer, Controls, HealthCheck
    from changelog.collector import Collector
    from changelog.lease import Lease

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


def make_follower(
    index: ChangeIndex,
    *,
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str = DEFAULT_REGION,
    buckets: Iterable[str] | None = None,
    prefixes: Mapping[str, Sequence[str]] | None = None,
    exclude_buckets: Iterable[str] = (),
    poll_interval: float = 1.0,
    lease_ttl: float = 30.0,
    **options: Any,
) -> Follower:
    """A follower of the radosgw zone at ``endpoint`` from plain values (``options``: any other
    keyword of ``Follower``). ``buckets`` None or ``["*"]`` means every bucket."""
    admin = AdminClient(endpoint, access_key, secret_key, region=region)
    return Follower(
        index,
        admin,
        buckets=buckets,
        prefixes=prefixes,
        exclude_buckets=exclude_buckets,
        poll_interval=poll_interval,
        lease_ttl=lease_ttl,
        **options,
    )


def build_service(
    index: ChangeIndex,
    target: Any,
    *,
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str = DEFAULT_REGION,
    buckets: Iterable[str] | None = None,
    prefixes: Mapping[str, Sequence[str]] | None = None,
    exclude_buckets: Iterable[str] = (),
    poll_interval: float = 1.0,
    follower_options: Mapping[str, Any] | None = None,
    collector_options: Mapping[str, Any] | None = None,
) -> tuple[Service, Follower, Any]:
    """Follower + collector wired together: the collector's watermark is capped by the
    follower's ``caught_up_until``, and the target bucket is excluded from following when it
    lives on the followed zone (its own writes are not mutations to log). Returns the service
    and its two components."""
    from changelog.collector import Collector

    exclude = set(exclude_buckets)
    target_bucket = getattr(target, "bucket", None)
    if isinstance(target_bucket, str) and target_bucket:
        target_endpoint = getattr(target, "_endpoint", None)
        if target_endpoint is None or _same_endpoint(str(target_endpoint), endpoint):
            exclude.add(target_bucket)
    follower = make_follower(
        index,
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        buckets=buckets,
        prefixes=prefixes,
        exclude_buckets=sorted(exclude),
        poll_interval=poll_interval,
        **dict(follower_options or {}),
    )
    collector = Collector(index, target, watermark_cap=follower.caught_up_until_us, **dict(collector_options or {}))
    service = Service({"follower": follower, "collector": collector}, on_stop=[follower.close])
    return service, follower, collector


def _same_endpoint(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    ports = {"http": 80, "https": 443}
    return (pa.scheme, pa.hostname, pa.port or ports.get(pa.scheme)) == (
        pb.scheme,
        pb.hostname,
        pb.port or ports.get(pb.scheme),
    )


def serve(cfg: Any) -> None:
    """``rgw-changelog serve`` for a ``changelog.config.Config``: follower, collector and the
    HTTP API until SIGTERM. Without ``[source] endpoint`` (the embedded setup: mutations come
    from ``rgw-changelog record``) the collector and the API only."""
    from changelog import config as config_mod
    from changelog.api import Controls
    from changelog.collector import Collector

    src = cfg.source
    if src.endpoint and (src.access_key is None or src.secret_key is None):
        raise PermanentError("source.access_key and source.secret_key must be set to follow a radosgw zone")
    index = config_mod.open_index(cfg)
    try:
        target = config_mod.open_target(cfg)
    except BaseException:
        index.store.close()
        raise
    follower: Follower | None
    if src.endpoint:
        controls = Controls()
        service, follower, collector = build_service(
            index,
            target,
            endpoint=src.endpoint,
            access_key=config_mod.reveal(src.access_key) or "",
            secret_key=config_mod.reveal(src.secret_key) or "",
            region=src.region,
            buckets=None if src.all_buckets else src.buckets,
            prefixes=src.prefixes,
            exclude_buckets=src.exclude_buckets,
            poll_interval=src.poll_interval,
            follower_options={
                # Pausing parks the follower between sweeps; its lease and markers stay.
                "paused": lambda: controls.checkpoint("follower"),
                "lease_ttl": src.lease_ttl,
                # size/etag lookups cost one radosgw request per write: off unless asked for.
                "object_info": src.object_info,
                "trim": src.trim_logs,
                "trim_datalog": src.trim_logs,
            },
            collector_options={
                **config_mod.collector_options(cfg),
                "paused": lambda: controls.checkpoint("collector"),
            },
        )
    else:
        controls = Controls(("collector",))
        follower = None
        collector = Collector(
            index,
            target,
            **config_mod.collector_options(cfg),
            paused=lambda: controls.checkpoint("collector"),
        )
        service = Service({"collector": collector})
    try:
        api = _start_api(cfg, index, target, service, follower, collector, controls)
    except BaseException:
        if follower is not None:
            follower.close()
        index.store.close()
        raise
    service.add_cleanup(api.stop)
    service.add_cleanup(index.store.close)
    if follower is not None:
        logger.info(
            "serve: following %s (buckets %s) into index %s, logs to %s",
            src.endpoint,
            "all" if src.all_buckets else ", ".join(src.buckets),
            index.prefix,
            getattr(target, "url", target),
        )
    else:
        logger.warning("no [source] endpoint: serving the collector only (record mutations with `rgw-changelog record`)")
        logger.info("serve: index %s -> %s", index.prefix, getattr(target, "url", target))
    service.run()


def health_checks(
    index: ChangeIndex, target: Any, service: Service, follower: Follower | None, collector: Collector
) -> dict[str, HealthCheck]:
    """The components ``GET /_/healthcheck`` reports: the index backend, the source radosgw, the
    target, the follower and collector threads, and the leases (held by us, or by another live
    ``serve`` while this one stands by). Without a follower (embedded setup) the source and
    follower checks are left out."""
    from changelog.api import leases_held, probe, thread_alive

    url = getattr(target, "url", str(target))
    checks: dict[str, HealthCheck] = {
        "index": probe(lambda: index.store.omap_get(index.control_oid, ["meta"]), ok="control object readable"),
    }
    if follower is not None:
        checks["source"] = probe(follower.admin.server_time_ns, ok=f"{follower.admin.endpoint} answering")
    # A one-key listing: a bucket that was deleted or cannot be reached shows up here, before a
    # pass has anything to write.
    checks["target"] = probe(lambda: next(iter(target.list(page=1)), None), ok=f"{url} listable")
    if follower is not None:
        checks["follower"] = thread_alive(lambda: service.thread("follower"))
    checks["collector"] = thread_alive(lambda: service.thread("collector"))

    def leases() -> list[Lease]:
        return ([follower.lease] if follower is not None else []) + [collector.control_lease]

    checks["leases"] = leases_held(leases)
    return checks


def _start_api(
    cfg: Any,
    index: ChangeIndex,
    target: Any,
    service: Service,
    follower: Follower | None,
    collector: Collector,
    controls: Controls,
) -> ApiServer:
    """The operator HTTP API (health, metrics, status, pause), started."""
    from changelog.api import ApiServer
    from changelog.metrics import ChangelogMetrics, make_registry

    def status() -> Mapping[str, Any]:
        from changelog.cli import collect_status

        doc = collect_status(cfg, index, target)
        doc["from"] = "serve"
        if isinstance(doc.get("collector"), dict):
            doc["collector"]["live"] = collector.stats()
        if follower is not None:
            doc["follower"] = {**follower_state(index), "live": follower.stats()}
        return doc

    def leases() -> list[Lease]:
        return ([follower.lease] if follower is not None else []) + collector.leases()

    metrics = ChangelogMetrics(
        collector=collector,
        follower=follower,
        index=index,
        leases=leases,
        controls=controls,
    )
    api = ApiServer(
        cfg.api.listen,
        cfg.api.allow_from,
        status_provider=status,
        health_checks=health_checks(index, target, service, follower, collector),
        controls=controls,
        registry=make_registry(metrics),
    )
    api.start()
    return api


def follower_status(cfg: Any, index: ChangeIndex) -> dict[str, Any]:
    """The follower's persisted state, for ``rgw-changelog status`` (no lease needed)."""
    try:
        return follower_state(index)
    except ChangelogError:
        raise
    except Exception as ex:  # noqa: BLE001 - status must answer with a message, not a traceback
        raise PermanentError(f"cannot read the follower state: {ex}") from ex
