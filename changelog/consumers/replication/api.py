"""The operator surface of replication, shared by ``serve``'s API and ``rgw-changelog replicate``:
a site's status document, the failed list in Backbeat's shape, retry requests, pause and
resume, and the per-site metrics documents.

Routes (``CrrRoutes``, mounted by ``changelog.service`` when sites are configured)::

    GET  /_/crr/status                          every site's status
    GET  /_/crr/status/<site>                   one site's status (one path segment)
    GET  /_/crr/status/<bucket>/<key...>?versionId=   an object version's status per site
    GET  /_/crr/failed?site=&marker=&limit=     {"IsTruncated", "NextMarker", "Versions": [...]}
    POST /_/crr/failed                          [{"Bucket", "Key", "VersionId", "StorageClass": site}]
                                                (or no body / {}: every failed entry) -> {"requested": n}
    POST /_/crr/pause[/<site>]   POST /_/crr/resume[/<site>]   POST /_/crr/resume/<site>/schedule
    GET  /_/metrics/crr/<site>/{backlog,completions,failures,throughput,rpo,all}

Everything an operator asks is written to the index's store (``state.SiteState``), so it works
from any process, and a pause or a retry reaches whichever ``serve`` holds the site's lease at
its next step. A site name that is not configured answers 404.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote

from changelog.consumers.framework import load_checkpoint
from changelog.consumers.replication.sites import Replication, UnknownSite, object_status
from changelog.consumers.replication.state import (
    DEFAULT_RESUME_HOURS,
    FailedEntry,
    SiteState,
    consumer_name,
    entry_id,
)
from changelog.consumers.routes import Request, RouteError
from changelog.errors import ChangelogError, one_line
from changelog.pipeline.control import consumer_lock
from changelog.pipeline.index import ChangeIndex

if TYPE_CHECKING:
    from changelog.consumers.framework import ConsumerRunner
    from changelog.consumers.replication.consumer import Backlog, SiteReplicator

Doc = dict[str, object]

# Backbeat's page size for the failed list, and the most one request may ask for.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# A scheduled resume further away than this is a typo (a year).
MAX_RESUME_HOURS = 24 * 365.0

DESCRIPTIONS = {
    "backlog": "Records committed to the change logs and not yet applied at the site (count), and the "
    "bytes of their writes (size)",
    "completions": "Records applied at the site since this process started (count), and the bytes written (size)",
    "failures": "Records the site refused or kept failing since this process started (count), and their "
    "bytes (size)",
    "throughput": "Records applied per second (count) and bytes written per second (size), over the last minute",
    "rpo": "Age in seconds of the oldest record not yet applied at the site (0 when there is none)",
}
KINDS = (*DESCRIPTIONS, "all")


def stored_doc(index: ChangeIndex, site: str, *, now: float | None = None) -> Doc:
    """One site as the index's store has it (no client needed): pause (``paused``,
    ``paused_since``, ``resume_at``), its consumer's checkpoint and lease, and how many failed
    entries it keeps; or the one-line reason it cannot be read. ``rgw-changelog status`` shows it."""
    from changelog.status import lock_doc

    now = time.time() if now is None else now
    name = consumer_name(site)
    try:
        state = SiteState(index, site)
        return {
            **state.status_doc(now),
            "checkpoint": load_checkpoint(index, name).doc(),
            "lease": lock_doc(index.store.lock_info(index.control_oid, consumer_lock(name)), now),
            "failed_entries": state.count_failed(),
        }
    except ChangelogError as ex:
        return {"error": one_line(str(ex))}


def known_site(sites: Sequence[str], name: str) -> str:
    if name not in sites:
        raise UnknownSite(f"no replication site {name!r}; sites: {', '.join(sites) or 'none'}")
    return name


def qualified(bucket: str) -> str:
    """A bucket as the logs name it (``tenant/bucket``) from the API's ``tenant:bucket``."""
    return bucket.replace(":", "/")


# --------------------------------------------------------------------------- the failed list


def _parse_marker(marker: str | None, sites: Sequence[str]) -> tuple[str, str] | None:
    """``<site>:<id>`` (as ``NextMarker`` gives it), or a bare id when one site is listed."""
    if not marker:
        return None
    site, sep, entry = marker.rpartition(":")
    if not sep:
        if len(sites) != 1:
            raise RouteError(400, f"marker {marker!r}: give the site too (<site>:<id>, as NextMarker has it)")
        return sites[0], entry
    if site not in sites:
        raise RouteError(400, f"marker {marker!r} names no site listed here ({', '.join(sites)})")
    return site, entry


def _entries(index: ChangeIndex, sites: Sequence[str], marker: tuple[str, str] | None) -> Iterator[tuple[str, FailedEntry]]:
    """Every failed entry of ``sites`` in (site order, id order), after ``marker``."""
    start = sites.index(marker[0]) if marker else 0
    for n, site in enumerate(sites[start:]):
        after = marker[1] if marker and n == 0 else None
        for entry in SiteState(index, site).failed(marker=after):
            yield site, entry


def failed_page(
    index: ChangeIndex, sites: Sequence[str], *, marker: str | None = None, limit: int = DEFAULT_LIMIT
) -> Doc:
    """One page of the failed entries of ``sites``, Backbeat's shape: ``{"IsTruncated",
    "NextMarker", "Versions": [{"Bucket", "Key", "VersionId", "StorageClass": site, "Size",
    "LastModified", ...}]}``; each version also carries its ``EntryId`` (for a retry by id)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise RouteError(400, f"limit {limit}: give 1 to {MAX_LIMIT}")
    versions: list[Doc] = []
    last: str | None = None
    for site, entry in _entries(index, sites, _parse_marker(marker, sites)):
        if len(versions) == limit:
            return {"IsTruncated": True, "NextMarker": last, "Versions": versions}
        versions.append({**entry.backbeat(site), "EntryId": entry.id})
        last = f"{site}:{entry.id}"
    return {"IsTruncated": False, "NextMarker": None, "Versions": versions}


def _retry_item(item: object, sites: Sequence[str]) -> tuple[str, str]:
    """(site, entry id) of one ``POST /_/crr/failed`` item."""
    if not isinstance(item, dict):
        raise RouteError(400, f"each item is an object with Bucket, Key, VersionId, StorageClass; got {item!r}")
    site, bucket, key = item.get("StorageClass"), item.get("Bucket"), item.get("Key")
    if not isinstance(site, str) or not isinstance(bucket, str) or not isinstance(key, str | None):
        raise RouteError(400, f"an item needs StorageClass (the site), Bucket and Key strings: {item!r}")
    version = item.get("VersionId")
    if version is not None and not isinstance(version, str):
        raise RouteError(400, f"VersionId must be a string: {item!r}")
    return known_site(sites, site), entry_id(qualified(bucket), key, None if version == "null" else version)


def request_retries(index: ChangeIndex, sites: Sequence[str], body: object) -> int:
    """Ask for retries as ``POST /_/crr/failed`` does: ``body`` a list of Backbeat items, or
    None / {} / [] for every failed entry of ``sites``. Returns how many entries were asked for
    (items without a failed entry are not counted)."""
    if body is None or body == {} or body == []:
        return sum(SiteState(index, site).request_retry(None) for site in sites)
    if not isinstance(body, list):
        raise RouteError(400, "the body is a JSON list of {Bucket, Key, VersionId, StorageClass}, or {} for all")
    by_site: dict[str, list[str]] = {}
    for item in body:
        site, eid = _retry_item(item, sites)
        by_site.setdefault(site, []).append(eid)
    return sum(SiteState(index, site).request_retry(ids) for site, ids in by_site.items())


# --------------------------------------------------------------------------- metrics


def _results(kind: str, stats: Mapping[str, object], backlog: Backlog, now: float) -> Doc:
    def num(key: str) -> float:
        v = stats.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0

    if kind == "backlog":
        return {"count": backlog.records, "size": backlog.bytes}
    if kind == "completions":
        return {"count": int(num("completed")), "size": int(num("completed_bytes"))}
    if kind == "failures":
        return {"count": int(num("failed")), "size": int(num("failed_bytes"))}
    if kind == "throughput":
        return {"count": num("throughput_ops"), "size": num("throughput_bytes")}
    return {"seconds": rpo_seconds(backlog, now)}


def rpo_seconds(backlog: Backlog, now: float) -> float:
    """The age of the oldest record not yet applied (0 when none waits)."""
    return 0.0 if backlog.oldest_us is None else round(max(0.0, now - backlog.oldest_us / 1e6), 3)


def metrics_doc(kind: str, stats: Mapping[str, object], backlog: Backlog, *, now: float) -> Doc:
    """``/_/metrics/crr/<site>/<kind>``'s answer: ``{kind: {"description", "results"}}``, or
    every kind for ``all``."""
    kinds = tuple(DESCRIPTIONS) if kind == "all" else (kind,)
    return {k: {"description": DESCRIPTIONS[k], "results": _results(k, stats, backlog, now)} for k in kinds}


def backlog_doc(backlog: Backlog, now: float) -> Doc:
    return {
        "records": backlog.records,
        "bytes": backlog.bytes,
        "objects": backlog.objects,
        "rpo_seconds": rpo_seconds(backlog, now),
    }


# --------------------------------------------------------------------------- the routes


class CrrRoutes:
    """The ``/_/crr`` and ``/_/metrics/crr`` prefix routes of one ``serve`` (``ApiServer.mount_prefix``).
    ``runners`` are the sites' ``ConsumerRunner``s in this process (for their checkpoint and live
    counters; a standalone tool may give none)."""

    def __init__(
        self,
        repl: Replication,
        runners: Mapping[str, ConsumerRunner] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repl = repl
        self.index = repl.index
        self.runners = dict(runners or {})
        self.names = tuple(repl.sites)
        self.clock = clock

    # -- what the routes and the CLI share

    def _site(self, name: str) -> SiteReplicator:
        try:
            return self.repl.site(name)
        except UnknownSite as ex:
            raise RouteError(404, str(ex)) from None

    def _stats(self, name: str) -> Mapping[str, object]:
        runner = self.runners.get(name)
        return runner.stats() if runner is not None else self._site(name).stats()

    def _backlog(self, name: str) -> Backlog:
        runner = self.runners.get(name)
        rep = self._site(name)
        after = runner.checkpoint().after if runner is not None else self._checkpoint_after(name)
        return rep.backlog(after)

    def _checkpoint_after(self, name: str) -> str | None:
        return load_checkpoint(self.index, self._site(name).name).after

    def site_doc(self, name: str) -> Doc:
        """A site's status: what the store holds (``stored_doc``), its backlog and this process's
        counters."""
        rep = self._site(name)
        now = self.clock()
        doc: Doc = {"site": name, "endpoint": rep.site.endpoint, **stored_doc(self.index, name, now=now)}
        doc["state"] = "disabled" if doc.get("paused") else "enabled"  # Backbeat's words
        doc["backlog"] = backlog_doc(self._backlog(name), now)
        doc["live"] = dict(self._stats(name))
        return doc

    def site_metrics(self, name: str, kind: str = "all") -> Doc:
        if kind not in KINDS:
            raise RouteError(404, f"no metric {kind!r}; metrics: {', '.join(KINDS)}")
        return metrics_doc(kind, self._stats(name), self._backlog(name), now=self.clock())

    def prometheus(self) -> dict[str, Mapping[str, object]]:
        """Per site, what ``changelog.metrics`` exports as ``rgw_changelog_replication_*``."""
        out: dict[str, Mapping[str, object]] = {}
        now = self.clock()
        for name in self.names:
            stats = self._stats(name)
            backlog = self._backlog(name)
            state = SiteState(self.index, name)
            out[name] = {
                **stats,
                "backlog_records": backlog.records,
                "backlog_bytes": backlog.bytes,
                "rpo_seconds": rpo_seconds(backlog, now),
                "failed_entries": state.count_failed(),
                "paused": state.paused(now),
            }
        return out

    def _wake(self, names: Sequence[str]) -> None:
        """A runner in this process looks again now (after a resume or a retry request)."""
        for name in names:
            if name in self.runners:
                self.runners[name].consumer.wake()

    # -- /_/crr

    def crr(self, req: Request) -> Doc:
        parts = req.segments()
        head = parts[0] if parts else ""
        if head == "status" and req.method == "GET":
            return self._status(parts[1:], req.query)
        if head == "failed" and len(parts) == 1:
            return self._failed(req)
        if head in ("pause", "resume") and req.method == "POST":
            return self._control(head, parts[1:], req.body)
        if head in ("status", "failed", "pause", "resume"):
            raise RouteError(405, f"{req.method} not allowed on /_/crr/{req.path}")
        raise RouteError(404, f"no route /_/crr/{req.path}")

    def _status(self, parts: list[str], query: Mapping[str, str]) -> Doc:
        if parts in ([], [""]):  # /_/crr/status or /_/crr/status/
            return {"sites": {name: self.site_doc(name) for name in self.names}}
        if len(parts) == 1:
            return self.site_doc(unquote(parts[0]))
        bucket, key = qualified(unquote(parts[0])), unquote("/".join(parts[1:]))
        return object_status(self.repl, bucket, key, query.get("versionId") or None)

    def _failed(self, req: Request) -> Doc:
        site = req.query.get("site")
        sites = (self._site(site).site.name,) if site else self.names
        if req.method == "GET":
            try:
                limit = int(req.query.get("limit") or DEFAULT_LIMIT)
            except ValueError:
                raise RouteError(400, f"limit {req.query.get('limit')!r} is not a number") from None
            return failed_page(self.index, sites, marker=req.query.get("marker"), limit=limit)
        if req.method == "POST":
            try:
                n = request_retries(self.index, sites, req.body)
            except UnknownSite as ex:
                raise RouteError(404, str(ex)) from None
            self._wake(sites)
            return {"requested": n}
        raise RouteError(405, f"{req.method} not allowed on /_/crr/failed; use GET, POST")

    def _control(self, action: str, parts: list[str], body: object) -> Doc:
        if len(parts) > 2 or (len(parts) == 2 and (action, parts[1]) != ("resume", "schedule")):
            raise RouteError(404, f"no route /_/crr/{action}/{'/'.join(parts)}")
        names = (self._site(unquote(parts[0])).site.name,) if parts else self.names
        now = self.clock()
        for name in names:
            state = SiteState(self.index, name)
            if action == "pause":
                state.pause(now=now)
            elif len(parts) == 2:
                state.schedule_resume(_hours(body), now=now)
            else:
                state.resume()
        self._wake(names)
        return {"sites": {name: dict(SiteState(self.index, name).status_doc(now)) for name in names}}

    # -- /_/metrics/crr

    def metrics(self, req: Request) -> Doc:
        parts = req.segments()
        if req.method != "GET":
            raise RouteError(405, f"{req.method} not allowed on /_/metrics/crr/{req.path}; use GET")
        if len(parts) not in (1, 2):
            raise RouteError(404, "use /_/metrics/crr/<site>/{" + ",".join(KINDS) + "}")
        name = self._site(unquote(parts[0])).site.name
        return self.site_metrics(name, parts[1] if len(parts) == 2 else "all")


def _hours(body: object) -> float:
    """``{"hours": N}`` of a scheduled resume (default ``DEFAULT_RESUME_HOURS``)."""
    if body is None or body == {}:
        return DEFAULT_RESUME_HOURS
    hours = body.get("hours") if isinstance(body, dict) else None
    if not isinstance(hours, int | float) or isinstance(hours, bool) or not 0 < hours <= MAX_RESUME_HOURS:
        raise RouteError(400, f'the body is {{"hours": N}} with 0 < N <= {MAX_RESUME_HOURS:.0f}; got {body!r}')
    return float(hours)
