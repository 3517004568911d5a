"""Lifecycle rules (ILM.1): the ``[lifecycle]`` section and its ``[[lifecycle.rules]]``, checked into
frozen pydantic models with one-line errors, and compiled into ``RuleSet``: which rules a record's
(bucket, key) falls under and when each of its actions is due.

A version is due for an action at ``born + days × day_seconds`` (µs, no rounding to midnight as
S3 does; ``day_seconds`` compresses days like radosgw's ``rgw_lc_debug_interval``): ``born`` is
the object's mtime for expiry and transition of the current version, the time it became
noncurrent for noncurrent expiry. The schedule (``schedule``) stores those due times; the rules
are kept in ``RuleSet.fingerprint`` so a schedule made under other rules is noticed.

The two models are ``Section`` subclasses so that ``changelog.config`` can hold them as the
``lifecycle`` section (docs/lifecycle-plan.md, "Wiring").
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from changelog.config_base import S3Section, Section
from changelog.config_types import (
    Flag,
    HttpUrl,
    Integer,
    NonEmpty,
    Number,
    Secret,
    Text,
    invalid,
    shown,
)
from changelog.consumers.lifecycle.uploads_gc import AbortRule

# S3 caps one DeleteObjects request at 1000 keys.
S3_DELETE_MAX = 1000
# The shortest idle time before a destination's multipart upload counts as abandoned: five
# times replication's 120 s read timeout of one part's request, so a live upload never is.
LEFTOVERS_MIN_S = 600.0


def _bucket_name(v: str) -> str:
    # As everywhere in the config: a tenant's bucket is tenant/bucket (radosgw's admin spelling).
    if ":" in v:
        raise invalid(f"names a tenant's bucket as tenant/bucket, not tenant:bucket (got {shown(v)})")
    tenant, slash, bucket = v.partition("/")
    if slash and (not tenant or not bucket or "/" in bucket):
        raise invalid(f"must be a bucket name or tenant/bucket (got {shown(v)})")
    return v


Days = Annotated[int, Field(strict=True, ge=1, le=100 * 366)]


class RuleConfig(Section):
    """One ``[[lifecycle.rules]]`` entry: which objects (bucket, key prefix, tags) and what is done
    to them after how many days."""

    section: ClassVar[str] = "lifecycle.rules"

    # Names the rule in the plan, the status and the failed list; "": its position (rule-<n>).
    id: Text = ""
    bucket: Annotated[NonEmpty, AfterValidator(_bucket_name)]
    prefix: Text = ""
    # Every one of these tags must be on the object (read only for objects that are due).
    tags: Annotated[Mapping[str, Text], AfterValidator(lambda v: MappingProxyType(dict(v)))] = Field(
        default_factory=lambda: MappingProxyType({})
    )
    # The current version is deleted (a delete marker in a versioned bucket, as S3 does).
    expire_days: Days | None = None
    # A noncurrent version is deleted this long after it became noncurrent.
    noncurrent_expire_days: Days | None = None
    # The current version is copied in place to ``storage_class`` (a placement's storage class).
    transition_days: Annotated[int, Field(strict=True, ge=0, le=100 * 366)] | None = None
    storage_class: NonEmpty | None = None
    abort_incomplete_multipart_days: Days | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        where = f"lifecycle.rules (bucket {self.bucket!r}{f', id {self.id!r}' if self.id else ''})"
        if (self.transition_days is None) != (self.storage_class is None):
            raise invalid(f"{where}: transition_days and storage_class go together", line=True)
        actions = (self.expire_days, self.noncurrent_expire_days, self.transition_days, self.abort_incomplete_multipart_days)
        if all(a is None for a in actions):
            raise invalid(
                f"{where}: give at least one of expire_days, noncurrent_expire_days, transition_days, "
                "abort_incomplete_multipart_days",
                line=True,
            )
        if (
            self.transition_days is not None
            and self.expire_days is not None
            and self.transition_days >= self.expire_days
        ):
            # S3 refuses it too: the object would be gone before it moves.
            raise invalid(f"{where}: transition_days must be less than expire_days", line=True)
        if self.tags and self.abort_incomplete_multipart_days is not None:
            # An upload in progress shows no tags: the aborts would ignore them (S3 refuses it).
            raise invalid(
                f"{where}: abort_incomplete_multipart_days cannot go with tags (uploads in progress "
                "have none to match): give it a rule without tags",
                line=True,
            )
        return self


class LifecycleConfig(S3Section):
    """``[lifecycle]``: the lifecycle consumer (ILM.1), its schedule (``shards`` objects beside the
    index) and its executor. The executor acts through ``endpoint`` with ``access_key`` /
    ``secret_key`` (default: the source's); they must be allowed to delete and copy objects in
    every bucket a rule names (the bucket owners', or a system user's)."""

    section: ClassVar[str] = "lifecycle"

    enabled: Flag = False
    endpoint: HttpUrl | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    region: NonEmpty = "us-east-1"
    # Only keep the schedule (plan, status); act on nothing.
    dry_run: Flag = False
    # Seconds in a lifecycle "day" (86400; a test or lab compresses days, like radosgw's
    # rgw_lc_debug_interval). Fixed once the schedule exists: stored due times depend on it.
    day_seconds: Number = Field(default=86400.0, gt=0)
    # Schedule objects; fixed once the schedule exists.
    shards: Integer = Field(default=16, ge=1, le=1024)
    # Due entries taken per executor batch (over all shards).
    batch: Integer = Field(default=1000, ge=1, le=100_000)
    # Keys per DeleteObjects request (S3's cap is 1000).
    delete_batch: Integer = Field(default=S3_DELETE_MAX, ge=1, le=S3_DELETE_MAX)
    # Seconds between two looks at the logs and the schedule when nothing is due.
    poll_interval: Number = Field(default=5.0, gt=0)
    # Seconds between two looks at the multipart uploads in progress (abort_incomplete_multipart_days).
    uploads_interval: Number = Field(default=60.0, gt=0)
    lease_ttl: Number = Field(default=30.0, ge=1.0)
    # Where the rules come from: "config" ([[lifecycle.rules]]) or "bucket" (each bucket's own S3
    # lifecycle configuration, ``bucket_rules``; turn radosgw's own LC off for those buckets).
    source: Literal["config", "bucket"] = "config"
    # Seconds a bucket's fetched lifecycle configuration is trusted before it is read again.
    bucket_rules_interval: Number = Field(default=300.0, gt=0)
    # Parallel re-check requests (HEAD, GetObjectTagging) of one executor batch.
    workers: Integer = Field(default=8, ge=1, le=64)
    # Objects acted on (expired, transitioned, uploads aborted) per second at most; 0: no limit.
    # Spreads a day's due actions so that users of the cluster do not feel them (radosgw's own
    # lifecycle has only its worker counts for this).
    max_actions_per_second: Number = Field(default=0.0, ge=0)
    # Multipart uploads that backup and replication left on their destinations are aborted once
    # idle this many (real, 86,400 s) days; 0: never. Not compressed by day_seconds: the margin
    # is against real part timeouts, and at least LEFTOVERS_MIN_S.
    leftovers_days: Number = Field(default=1.0, ge=0)
    rules: tuple[RuleConfig, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        if self.source == "bucket" and self.rules:
            raise invalid(
                'lifecycle.source = "bucket" reads the rules from the buckets: remove [[lifecycle.rules]]',
                line=True,
            )
        if self.enabled and self.source == "config" and not self.rules:
            raise invalid("lifecycle.enabled is true but no [[lifecycle.rules]] are given", line=True)
        if 0 < self.leftovers_days * 86400 < LEFTOVERS_MIN_S:
            raise invalid(
                f"lifecycle.leftovers_days must be 0 (off) or at least {LEFTOVERS_MIN_S / 86400:.4f} "
                f"({LEFTOVERS_MIN_S:g} s: well above any part's timeout)",
                line=True,
            )
        seen: set[str] = set()
        for n, rule in enumerate(self.rules):
            rid = rule.id or f"rule-{n}"
            if rid in seen:
                raise invalid(f"lifecycle.rules: two rules are named {rid!r}", line=True)
            seen.add(rid)
        return self


def parse_lifecycle(data: Mapping[str, object]) -> LifecycleConfig:
    """The ``[lifecycle]`` section from its TOML table, or ``ConfigError`` (one line), checked as
    ``config check`` checks it (``lifecycle.rules[0].expire_days must be ...``)."""
    from changelog.config import parse_config  # changelog.config imports this module

    return parse_config({"lifecycle": dict(data)}).lifecycle


# --------------------------------------------------------------------------- compiled rules


class Action(enum.StrEnum):
    EXPIRE = "expire"  # the current version: DeleteObject without a version id
    NONCURRENT = "noncurrent"  # a noncurrent version: DeleteObject of that version
    TRANSITION = "transition"  # the current version: CopyObject in place to a storage class
    # An expired object delete marker (a key's only version, a marker): DeleteObject of that
    # marker, under an expiration rule, as S3 and radosgw's own lifecycle do.
    MARKER = "expire_marker"


@dataclass(frozen=True, slots=True)
class Rule:
    """A checked rule, numbered by its position in the config."""

    n: int
    id: str
    bucket: str  # qualified: tenant/bucket or bucket
    prefix: str
    tags: Mapping[str, str]
    expire_days: int | None
    noncurrent_expire_days: int | None
    transition_days: int | None
    storage_class: str | None
    abort_days: int | None = None  # abort_incomplete_multipart_days (``uploads_gc``)

    def matches(self, key: str) -> bool:
        return key.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Due:
    """One action due for a version at ``due_us`` under ``rule``."""

    due_us: int
    action: Action
    rule: Rule


class RuleSet:
    """The rules of ``[lifecycle]`` by bucket, with the length of a day in µs."""

    def __init__(
        self, rules: tuple[Rule, ...], *, day_seconds: float, governed: frozenset[str] = frozenset()
    ) -> None:
        self.rules = rules
        self.day_us = round(day_seconds * 1_000_000)
        self._by_bucket: dict[str, tuple[Rule, ...]] = {b: () for b in governed}
        for r in rules:
            self._by_bucket[r.bucket] = (*self._by_bucket.get(r.bucket, ()), r)

    @classmethod
    def of(cls, section: LifecycleConfig) -> RuleSet:
        rules = tuple(
            Rule(
                n,
                r.id or f"rule-{n}",
                r.bucket,
                r.prefix,
                MappingProxyType(dict(r.tags)),
                r.expire_days,
                r.noncurrent_expire_days,
                r.transition_days,
                r.storage_class,
                r.abort_incomplete_multipart_days,
            )
            for n, r in enumerate(section.rules)
        )
        return cls(rules, day_seconds=section.day_seconds)

    def abort_rules(self) -> list[AbortRule]:
        """The rules that abort incomplete multipart uploads (``uploads_gc``)."""
        return [AbortRule(r.id, r.bucket, r.prefix, r.abort_days) for r in self.rules if r.abort_days is not None]

    def governs(self, qualified_bucket: str) -> bool:
        """Whether any rule names the bucket (or, with ``source = "bucket"``, it has a lifecycle
        configuration, even one without a rule we act on): the schedule keeps the versions of
        such buckets only (all their keys, so a rule's prefix or days may change later:
        ``reschedule``)."""
        return qualified_bucket in self._by_bucket

    def governed(self) -> list[str]:
        """Every bucket ``governs`` is true of, sorted (the buckets the baseline listing covers)."""
        return sorted(self._by_bucket)

    def has(self, qualified_bucket: str, rule_id: str, action: Action) -> bool:
        """Whether ``rule_id`` still gives ``action`` in the bucket: an entry of a rule removed or
        changed since it was scheduled is not acted on (``executor``)."""
        for r in self._by_bucket.get(qualified_bucket, ()):
            if r.id == rule_id:
                days = {
                    Action.EXPIRE: r.expire_days,
                    Action.NONCURRENT: r.noncurrent_expire_days,
                    Action.TRANSITION: r.transition_days,
                    Action.MARKER: r.expire_days,
                }[action]
                if days is not None:
                    return True
        return False

    def for_key(self, qualified_bucket: str, key: str) -> tuple[Rule, ...]:
        return tuple(r for r in self._by_bucket.get(qualified_bucket, ()) if r.matches(key))

    def current(
        self, qualified_bucket: str, key: str, *, born_us: int, storage_class: str | None
    ) -> list[Due]:
        """The actions due for a current version born at ``born_us`` (its mtime).

        The transitions of the rules matching the key are one waterfall, in order of days (as
        S3's): a version already in the class of one of them is due only for the later ones
        (else the copy into a later class would make an earlier one due again, at once, and
        the object would go back and forth)."""
        rules = self.for_key(qualified_bucket, key)
        sc = storage_class or "STANDARD"
        reached = max(
            ((r.transition_days, r.n) for r in rules if r.transition_days is not None and r.storage_class == sc),
            default=None,
        )
        out: list[Due] = []
        for r in rules:
            if r.expire_days is not None:
                out.append(Due(born_us + r.expire_days * self.day_us, Action.EXPIRE, r))
            if r.transition_days is not None and (reached is None or (r.transition_days, r.n) > reached):
                out.append(Due(born_us + r.transition_days * self.day_us, Action.TRANSITION, r))
        return out

    def marker(self, qualified_bucket: str, key: str, *, born_us: int) -> list[Due]:
        """The actions due for a delete marker born at ``born_us`` that is its key's only version
        (an expired object delete marker), under each expiration rule (``Days``) matching the
        key: due once the marker is that old, as S3 removes it and radosgw since ceph PR 65664
        (tracker 73240, "delete markers ... removed prematurely").
        (Reef's and Pacific's own lifecycle removes it at its first pass after it is alone,
        whatever its age: rgw_lc.cc, ``LCOpAction_CurrentExpiration::check``, "dm-check DELE".)
        A rule's tags do not keep it: radosgw's tag filter lets every delete marker through
        (``LCOpFilter_Tags``), and a marker has no tags to compare."""
        return [
            Due(born_us + r.expire_days * self.day_us, Action.MARKER, r)
            for r in self.for_key(qualified_bucket, key)
            if r.expire_days is not None
        ]

    def noncurrent(self, qualified_bucket: str, key: str, *, since_us: int) -> list[Due]:
        """The actions due for a version noncurrent since ``since_us``."""
        return [
            Due(since_us + r.noncurrent_expire_days * self.day_us, Action.NONCURRENT, r)
            for r in self.for_key(qualified_bucket, key)
            if r.noncurrent_expire_days is not None
        ]

    def fingerprint(self) -> str:
        """A short hash of the rules and the day length: a schedule computed under others is stale."""
        return rules_fingerprint(self.rules, self.day_us)

    def bucket_fingerprint(self, qualified_bucket: str) -> str:
        """The hash of one bucket's rules ("" when the bucket is not governed): with
        ``source = "bucket"`` a bucket whose hash changed is rescheduled alone."""
        if qualified_bucket not in self._by_bucket:
            return ""
        return rules_fingerprint(self._by_bucket[qualified_bucket], self.day_us)


# What the rules schedule, beyond the rules themselves: a schedule computed by an older meaning
# is computed again at the next start (``Layout.check_meta``). 2: expired object delete markers,
# and noncurrent delete markers' noncurrent expiry.
SCHEDULE_SEMANTICS = 2


def rules_fingerprint(rules: tuple[Rule, ...], day_us: int) -> str:
    doc = [
        [r.id, r.bucket, r.prefix, sorted(r.tags.items()), r.expire_days, r.noncurrent_expire_days,
         r.transition_days, r.storage_class]
        for r in rules
    ]  # fmt: skip
    raw = json.dumps([day_us, doc, SCHEDULE_SEMANTICS], sort_keys=True).encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


__all__ = [
    "LEFTOVERS_MIN_S",
    "S3_DELETE_MAX",
    "Action",
    "Due",
    "LifecycleConfig",
    "Rule",
    "RuleConfig",
    "RuleSet",
    "parse_lifecycle",
]
