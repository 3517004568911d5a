"""``[lifecycle] source = "bucket"``: the rules read from each bucket's own S3 lifecycle
configuration (GetBucketLifecycleConfiguration) instead of ``[[lifecycle.rules]]``.

**Which buckets.** Those the change logs mention: the first record of a bucket fetches its
configuration, which is then trusted for ``bucket_rules_interval`` seconds and read again when a
record of the bucket arrives after that, or by the consumer's periodic refresh of every bucket
it tracks (those seen since it started, and those the schedule holds: ``Schedule.bucket_marks``).
A bucket without a configuration has no rules and is not kept in the schedule; a bucket with one
is, even when none of its rules is one we act on (a ``Disabled`` rule), so enabling a rule later
covers the objects written meanwhile.

**Mapping** (``from_s3``), per S3 rule with ``Status = Enabled``: ``Filter`` ``Prefix`` / ``Tag``
/ ``And {Prefix, Tags}`` (and the legacy rule-level ``Prefix``) → prefix and tags;
``Expiration.Days`` → ``expire_days``; ``NoncurrentVersionExpiration.NoncurrentDays`` →
``noncurrent_expire_days``; each ``Transitions[]`` ``Days`` + ``StorageClass`` → a transition
(the second and later ones as rules ``<id>#2``…, each scheduled on its own);
``AbortIncompleteMultipartUpload.DaysAfterInitiation`` → ``abort_incomplete_multipart_days``.
What we cannot honour is left out with a one-line warning (logged once per configuration, and
listed by ``lifecycle status``), never approximated in a way that would act on more than S3 would:

* ``Expiration.Date``, ``Expiration.ExpiredObjectDeleteMarker``, ``Transitions[].Date`` and
  ``NoncurrentVersionTransitions``: that action only is left out (we act on less, never more);
* ``NoncurrentVersionExpiration.NewerNoncurrentVersions`` (keep the N newest): the noncurrent
  expiry is left out (without the count it would delete versions S3 keeps);
* ``ObjectSizeGreaterThan`` / ``ObjectSizeLessThan``: the whole rule is left out (without the
  size it would act on objects the rule does not cover).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from changelog.consumers.lifecycle.rules import Rule, RuleSet, rules_fingerprint
from changelog.consumers.lifecycle.uploads_gc import s3_bucket
from changelog.errors import ChangelogError, PermanentError
from changelog.pipeline.s3client import refusal, s3_call, translate_error

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

# Configurations read again per consumer step at most (the rest wait for the next step), so a
# zone of thousands of buckets does not hold the loop away from the logs for one refresh.
REFRESH_PER_STEP = 200
# A bucket's configuration is absent: these answers mean "no rules", not a failure.
_NONE_CODES = frozenset({"NoSuchLifecycleConfiguration", "NoSuchBucket"})
COUNTERS = ("bucket_rules_fetches", "bucket_rules_changes")


class NoConfiguration(ChangelogError):
    """The bucket has no lifecycle configuration (or is gone)."""


def _translate(ex: Exception, what: str) -> ChangelogError:
    r = refusal(ex)
    if r is not None and (r.code in _NONE_CODES or r.status == 404):
        return NoConfiguration(f"{what}: {r}")
    return translate_error(ex, what)


def _days(v: object) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _match(doc: Mapping[str, object]) -> tuple[str, dict[str, str], str | None]:
    """(prefix, tags, why the rule cannot be honoured) of a rule's ``Filter`` (or legacy ``Prefix``)."""
    filt = doc.get("Filter")
    if not isinstance(filt, Mapping):
        return str(doc.get("Prefix") or ""), {}, None
    inner = filt.get("And")
    scope: Mapping[str, object] = inner if isinstance(inner, Mapping) else filt
    if "ObjectSizeGreaterThan" in scope or "ObjectSizeLessThan" in scope:
        return "", {}, "ObjectSizeGreaterThan/ObjectSizeLessThan filters are not supported: rule left out"
    tags: dict[str, str] = {}
    raw_tags = scope.get("Tags")
    for t in [*(raw_tags if isinstance(raw_tags, list) else []), scope.get("Tag")]:
        if isinstance(t, Mapping):
            tags[str(t.get("Key"))] = str(t.get("Value") or "")
    return str(scope.get("Prefix") or ""), tags, None


def from_s3(
    qualified_bucket: str, rules: Sequence[Mapping[str, object]], *, first_n: int = 0
) -> tuple[list[Rule], list[str]]:
    """The rules we act on from a bucket's S3 lifecycle rules, and a one-line warning for each
    thing left out (module docstring)."""
    out: list[Rule] = []
    warnings: list[str] = []
    for i, doc in enumerate(rules):
        rid = str(doc.get("ID") or f"rule-{i}")
        where = f"{qualified_bucket}: lifecycle rule {rid!r}"
        if doc.get("Status") != "Enabled":
            continue
        prefix, tags, refused = _match(doc)
        if refused is not None:
            warnings.append(f"{where}: {refused}")
            continue
        exp = doc.get("Expiration") if isinstance(doc.get("Expiration"), Mapping) else {}
        assert isinstance(exp, Mapping)
        expire = _days(exp.get("Days"))
        if "Date" in exp:
            warnings.append(f"{where}: Expiration.Date is not supported: left out")
        if exp.get("ExpiredObjectDeleteMarker"):
            warnings.append(f"{where}: Expiration.ExpiredObjectDeleteMarker is not supported: left out")
        nce = doc.get("NoncurrentVersionExpiration")
        noncurrent = _days(nce.get("NoncurrentDays")) if isinstance(nce, Mapping) else None
        if isinstance(nce, Mapping) and nce.get("NewerNoncurrentVersions") is not None:
            warnings.append(f"{where}: NewerNoncurrentVersions is not supported: noncurrent expiry left out")
            noncurrent = None
        if doc.get("NoncurrentVersionTransitions"):
            warnings.append(f"{where}: NoncurrentVersionTransitions are not supported: left out")
        transitions: list[tuple[int, str]] = []
        raw_tr = doc.get("Transitions")
        for t in raw_tr if isinstance(raw_tr, list) else []:
            days = _days(t.get("Days")) if isinstance(t, Mapping) else None
            if days is None or not t.get("StorageClass"):
                warnings.append(f"{where}: a transition by Date is not supported: left out")
            else:
                transitions.append((days, str(t["StorageClass"])))
        transitions.sort()
        amu = doc.get("AbortIncompleteMultipartUpload")
        abort = _days(amu.get("DaysAfterInitiation")) if isinstance(amu, Mapping) else None
        frozen_tags = MappingProxyType(tags)
        tr_days, tr_class = (transitions[0][0], transitions[0][1]) if transitions else (None, None)
        if expire is not None or noncurrent is not None or abort is not None or transitions:
            n = first_n + len(out)
            out.append(
                Rule(
                    n,
                    rid,
                    qualified_bucket,
                    prefix,
                    frozen_tags,
                    expire,
                    noncurrent,
                    tr_days,
                    tr_class,
                    abort,
                )
            )
        for j, (days, sc) in enumerate(transitions[1:], start=2):
            n = first_n + len(out)
            out.append(Rule(n, f"{rid}#{j}", qualified_bucket, prefix, frozen_tags, None, None, days, sc))
    return out, warnings


@dataclass
class _Cached:
    fetched: float
    rules: tuple[Rule, ...]
    configured: bool  # the bucket has a configuration (even one without a rule we act on)
    warnings: tuple[str, ...] = ()


@dataclass
class BucketRules:
    """The buckets' lifecycle rules, fetched and cached (module docstring). ``ruleset()`` is the
    ``RuleSet`` of every bucket cached; ``refresh`` says which buckets' rules changed."""

    client: S3Client
    day_seconds: float
    interval: float = 300.0
    clock: Callable[[], float] = time.time
    counts: dict[str, int] = field(default_factory=dict)
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _tracked: set[str] = field(default_factory=set)

    def track(self, buckets: Iterable[str]) -> None:
        """Buckets to keep refreshing though no record mentions them (those the schedule holds)."""
        self._tracked.update(buckets)

    def stale(self, limit: int = REFRESH_PER_STEP) -> list[str]:
        """Up to ``limit`` tracked buckets whose configuration is older than ``interval``, oldest first."""
        now = self.clock()
        old = [
            b for b in self._tracked if b not in self._cache or now - self._cache[b].fetched >= self.interval
        ]
        old.sort(key=lambda b: self._cache[b].fetched if b in self._cache else float("-inf"))
        return old[:limit]

    def refresh(self, buckets: Iterable[str]) -> set[str]:
        """Fetch the configuration of each of ``buckets`` not fetched in the last ``interval``;
        the buckets whose rules (or whether they have a configuration) changed. A transient S3
        error is raised (the step backs off); a refusal (403) counts as no configuration, warned."""
        changed: set[str] = set()
        now = self.clock()
        for b in sorted(set(buckets)):
            self._tracked.add(b)
            old = self._cache.get(b)
            if old is not None and now - old.fetched < self.interval:
                continue
            new = self._fetch(b, now)
            self._cache[b] = new
            if old is None or (old.rules, old.configured) != (new.rules, new.configured):
                if new.configured or old is not None:
                    changed.add(b)
                for w in new.warnings:
                    if old is None or w not in old.warnings:
                        logger.warning("lifecycle: %s", w)
        if changed:
            self.counts["bucket_rules_changes"] = self.counts.get("bucket_rules_changes", 0) + len(changed)
        return changed

    def _fetch(self, bucket: str, now: float) -> _Cached:
        self.counts["bucket_rules_fetches"] = self.counts.get("bucket_rules_fetches", 0) + 1
        client = self.client
        try:
            resp = s3_call(
                f"GET lifecycle of {bucket}",
                lambda: client.get_bucket_lifecycle_configuration(Bucket=s3_bucket(bucket)),
                _translate,
            )
        except NoConfiguration:
            return _Cached(now, (), False)
        except PermanentError as ex:
            return _Cached(now, (), False, (f"{bucket}: lifecycle configuration unreadable, no rules: {ex}",))
        assert isinstance(resp, Mapping)
        raw = resp.get("Rules")
        docs = [d for d in raw if isinstance(d, Mapping)] if isinstance(raw, list) else []
        rules, warnings = from_s3(bucket, docs)
        return _Cached(now, tuple(rules), True, tuple(warnings))

    def ruleset(self) -> RuleSet:
        rules = tuple(r for b in sorted(self._cache) for r in self._cache[b].rules)
        governed = frozenset(b for b, c in self._cache.items() if c.configured)
        return RuleSet(rules, day_seconds=self.day_seconds, governed=governed)

    def fingerprint(self, bucket: str) -> str:
        """As ``RuleSet.bucket_fingerprint``: "" for a bucket without a configuration."""
        c = self._cache.get(bucket)
        if c is None or not c.configured:
            return ""
        return rules_fingerprint(c.rules, round(self.day_seconds * 1_000_000))

    def doc(self) -> dict[str, object]:
        """For ``lifecycle status``: the buckets with a configuration, the rules we act on, and
        what was left out."""
        configured = [c for c in self._cache.values() if c.configured]
        return {
            "buckets_tracked": len(self._tracked),
            "buckets_with_configuration": len(configured),
            "rules": sum(len(c.rules) for c in configured),
            "left_out": sorted(w for c in self._cache.values() for w in c.warnings),
        }

    def snapshot(self) -> dict[str, int]:
        return {name: self.counts.get(name, 0) for name in COUNTERS}


__all__ = ["COUNTERS", "REFRESH_PER_STEP", "BucketRules", "NoConfiguration", "from_s3"]
