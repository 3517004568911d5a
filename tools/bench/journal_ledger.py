"""The ``journal`` figure's ground truth (``tools/bench/journal.py``): a ledger of every
acknowledged mutation and of every request that must leave no record, and the match of a log's
records against it (matched, missing, phantom by cause, duplicate)."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def norm_version(v: str | None) -> str | None:
    """A version id, None for none (both logs spell "none" in their own way)."""
    return None if v in (None, "", "null", "-") else v


def norm_etag(e: str | None) -> str | None:
    """An ETag without its quotes, None for none."""
    e = (e or "").strip('"')
    return None if e in ("", "-") else e


@dataclass(frozen=True, slots=True)
class Change:
    """One mutation, as the ledger knows it or as a log says it."""

    bucket: str
    key: str
    kind: str  # write | delete | delete_marker
    version: str | None
    etag: str | None = None


class Ledger:
    """What the workload knows happened: every acknowledged mutation, and every request that
    must leave no record (with why)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.refused: list[tuple[str, str, str]] = []  # bucket, key, cause
        self._mu = threading.Lock()

    def add(self, bucket: str, key: str, kind: str, version: str | None = None, etag: str | None = None) -> None:
        with self._mu:
            self.changes.append(Change(bucket, key, kind, norm_version(version), norm_etag(etag)))

    def refuse(self, bucket: str, key: str, cause: str) -> None:
        with self._mu:
            self.refused.append((bucket, key, cause))


def compare(ledger: Ledger, records: Iterable[Change]) -> dict[str, Any]:
    """Match a log's records to the ledger: matched, missing, phantom (by cause), duplicate.

    A record matches a mutation of the same bucket, key, kind and version id; for writes whose
    record has an ETag, the ETag too (a refused PUT's record carries the refused body's ETag).
    A record with no version id matches a mutation that has one (e.g. a delete marker in the
    Journal) and is counted in ``version_id_absent``. A record left over is a phantom when a
    refused or no-op request on its key explains it, or when no mutation has its identity; else
    a duplicate."""
    pool: dict[tuple[str, str, str, str | None], list[str | None]] = defaultdict(list)
    by_key: dict[tuple[str, str, str], list[tuple[str, str, str, str | None]]] = defaultdict(list)
    for c in ledger.changes:
        ident = (c.bucket, c.key, c.kind, c.version)
        if ident not in pool:
            by_key[(c.bucket, c.key, c.kind)].append(ident)
        pool[ident].append(c.etag)
    known = set(pool)
    refused = Counter((b, k) for b, k, _ in ledger.refused)
    cause = {(b, k): why for b, k, why in ledger.refused}

    def take(ident: tuple[str, str, str, str | None], etag: str | None) -> bool:
        etags = pool.get(ident)
        if not etags:
            return False
        if etag is not None and any(e is not None for e in etags):
            if etag in etags:
                etags.remove(etag)
                return True
            if None in etags:
                etags.remove(None)
                return True
            return False
        etags.pop()
        return True

    n_records = matched = version_absent = 0
    left: list[Change] = []
    for r in records:
        n_records += 1
        if take((r.bucket, r.key, r.kind, r.version), r.etag if r.kind == "write" else None):
            matched += 1
        else:
            left.append(r)
    phantom: Counter[str] = Counter()
    duplicate = 0
    for r in left:
        if r.version is None and any(
            ident[3] is not None and take(ident, r.etag if r.kind == "write" else None)
            for ident in by_key.get((r.bucket, r.key, r.kind), ())
        ):
            matched += 1
            version_absent += 1
        elif refused[(r.bucket, r.key)] > 0:
            refused[(r.bucket, r.key)] -= 1
            phantom[cause[(r.bucket, r.key)]] += 1
        elif (r.bucket, r.key, r.kind, r.version) in known:
            duplicate += 1
        else:
            phantom["no such mutation"] += 1
    missing: Counter[str] = Counter()
    for (_, _, kind, _), etags in pool.items():
        if etags:
            missing[kind] += len(etags)
    n_phantom = sum(phantom.values())
    n_missing = sum(missing.values())
    mutations = len(ledger.changes)
    return {
        "mutations": mutations,
        "refused_requests": len(ledger.refused),
        "records": n_records,
        "matched": matched,
        "missing": n_missing,
        "phantom": n_phantom,
        "duplicate": duplicate,
        "exact": matched / max(1, mutations + n_phantom + duplicate),
        "missing_by_kind": dict(missing),
        "phantom_by_cause": dict(phantom),
        "version_id_absent": version_absent,
    }


def count_text(c: dict[str, Any]) -> str:
    text = f"{c['mutations']} mutations, {c['missing']} missing, {c['phantom']} phantom, {c['duplicate']} duplicate"
    if c["phantom_by_cause"]:
        text += " (" + ", ".join(f"{why}: {k}" for why, k in sorted(c["phantom_by_cause"].items())) + ")"
    if c["version_id_absent"]:
        text += f", {c['version_id_absent']} without their version id"
    return text
