"""Backup as a consumer of the change logs (``changelog.consumers.framework``): what a backup
run opens from the config (``BackupResources``, shared with the ``backup`` commands), and the
``BackupConsumer`` that ``serve`` runs every ``[backup] interval`` under the lease
``consumer.backup``.

A backup's own checkpoint is its manifest in the backup store (a restore needs nothing else).
After each run the consumer commits the same position (the last log object the backup covered)
as its checkpoint in the index's store, fenced by its lease, so ``status``, the metrics and the
lag are read like every other consumer's. Two ``serve`` processes never run backups at once:
only the lease holder does, and the destination lock (``backup.lock``) still guards against a
manual ``backup run``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from changelog.config import Config, open_target, reveal
from changelog.consumers.backup.runner import WORKERS, BackupRunner, RunResult
from changelog.consumers.backup.source import Source, make_client
from changelog.consumers.backup.store import BackupStore
from changelog.consumers.framework import Cursor, RouteHandler
from changelog.errors import ChangelogError, ConfigError
from changelog.pipeline.loop import Clocks
from changelog.pipeline.targets import Target, make_target

logger = logging.getLogger(__name__)


def _s3_bucket(url: str) -> str | None:
    return url[len("s3://") :].split("/", 1)[0] if url.startswith("s3://") else None


@dataclass
class BackupResources:
    """What a backup opens from the config: the backup store, the change logs and the source;
    each closed by ``close()``."""

    config: Config
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def store(self) -> BackupStore:
        bc, sc = self.config.backup, self.config.source
        if bc.url is None:
            raise ConfigError("backup.url is not set: where should backups go? (s3://bucket/prefix/ or file:///dir/)")
        endpoint = bc.endpoint or sc.endpoint
        target = make_target(
            bc.url,
            endpoint=endpoint,
            access_key=reveal(bc.access_key) or reveal(sc.access_key),
            secret_key=reveal(bc.secret_key) or reveal(sc.secret_key),
            region=bc.region,
            addressing_style="path" if endpoint else None,
            # On the source's endpoint, the source's TLS settings (as ``parse_config`` gives them).
            verify=bc.tls_verify if bc.endpoint or not sc.endpoint else sc.tls_verify,
        )
        self._closers.append(target.close)
        return BackupStore(target)

    def logs(self) -> Target:
        target: Target = open_target(self.config)
        self._closers.append(target.close)
        return target

    def source(self, *, workers: int = WORKERS) -> Source:
        sc = self.config.source
        src = Source(
            make_client(
                endpoint=sc.endpoint,
                access_key=reveal(sc.access_key),
                secret_key=reveal(sc.secret_key),
                region=sc.region,
                pool=max(10, 2 * workers),
                verify=sc.tls_verify,
            )
        )
        self._closers.append(src.close)
        return src

    def runner(
        self,
        *,
        only: tuple[str, ...] = (),
        workers: int = WORKERS,
        clocks: Clocks | None = None,
        progress: bool | None = False,
    ) -> BackupRunner:
        """A ``BackupRunner`` for this config: the source's bucket filters apply, the backup
        store's and the change logs' own buckets are never backed up. ``only``: back up just
        these of the followed buckets (the others are left ``behind``, ``runner``)."""
        cfg = self.config
        exclude = {b for b in (_s3_bucket(cfg.backup.url or ""), _s3_bucket(cfg.target.url)) if b}
        src_buckets = None if cfg.source.all_buckets else list(cfg.source.buckets)
        clocks = clocks or Clocks()
        return BackupRunner(
            self.store(),
            self.logs(),
            self.source(workers=workers),
            includes=cfg.source.includes,
            buckets=src_buckets,
            only=only or None,
            exclude_buckets=exclude,
            workers=workers,
            clock=clocks.clock,
            monotonic=clocks.monotonic,
            sleep=clocks.sleep,
            progress=progress,
        )

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()


class BackupConsumer:
    """Runs ``backup run`` every ``interval`` seconds (and at once on ``POST /_/backup/run``),
    committing the run's position as the consumer checkpoint."""

    name = "backup"

    def __init__(self, config: Config, *, interval: float, workers: int = WORKERS, clocks: Clocks | None = None) -> None:
        if config.source.endpoint is None:
            # Found at start (exit 2), not by the first run half a second later.
            raise ConfigError("backup copies the source zone's objects: set [source] endpoint")
        self.config = config
        self.interval = float(interval)
        self.workers = workers
        self.clocks = clocks or Clocks()
        self.requested = threading.Event()
        self.wake: Callable[[], None] = lambda: None  # set by the service: ends the loop's wait
        self.runs = 0
        self.failures = 0
        self.last_result: RunResult | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None

    def step(self, cursor: Cursor, stop: threading.Event) -> None:
        self.requested.clear()
        resources = BackupResources(self.config)
        try:
            result = resources.runner(workers=self.workers, clocks=self.clocks).run()
        except ChangelogError as ex:
            self.failures += 1
            self.last_error = str(ex)
            raise
        finally:
            resources.close()
        self.runs += 1
        self.last_result = result
        self.last_success = self.clocks.clock()
        self.last_error = None
        if result.checkpoint != cursor.checkpoint.after or result.backup_id is not None:
            info = {"backup_id": result.backup_id or result.base or "", "as_of_us": str(result.as_of_us or "")}
            cursor.commit(result.checkpoint, records=result.records, objects=result.log_objects, info=info)
        if result.backup_id is not None:
            logger.info(
                "backup %s: %d objects, %d copied, %d records from %d log objects",
                result.backup_id,
                result.objects,
                result.copied,
                result.records,
                result.log_objects,
            )

    def stats(self) -> Mapping[str, object]:
        last = self.last_result
        return {
            "runs": self.runs,
            "failures": self.failures,
            "last_success": self.last_success,
            "last_backup": (last.backup_id or last.base) if last else None,
            "last_copied": last.copied if last else None,
            "last_error": self.last_error,
        }

    def _run_now(self) -> Mapping[str, object]:
        self.requested.set()
        self.wake()
        return {"requested": True, "last": self.last_result.to_dict() if self.last_result else None}

    def _status(self) -> Mapping[str, object]:
        return {"stats": dict(self.stats()), "last": self.last_result.to_dict() if self.last_result else None}

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        return {("POST", "run"): self._run_now, ("GET", "status"): self._status}
