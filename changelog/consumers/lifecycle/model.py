"""The stored layout of the lifecycle schedule: the only module that spells a schedule key.

The schedule is kept in ``shards`` objects ``<index prefix>.<consumer>.<n:04d>`` beside the index
(never in the control object: it holds an entry per key of every bucket a rule names). A bucket
lives in shard ``blake2b-64(tenant \\0 bucket) mod shards`` (the usage consumer's function); its
omap keys there:

| key | value | meaning |
|---|---|---|
| ``a`` | log object name | the last log object applied to this shard (compare-and-set guard) |
| ``g`` | token | changed by every write (applier and executor): a writer that read an older one fails |
| ``meta`` | JSON | ``{"shards": S, "day_us": D, "rules": F}``: another S or D is refused; another F
  (the rules' fingerprint) means the due entries must be computed again (``reschedule``) |
| ``k.<bid>.<kh>`` | JSON ``KeyState`` | one key's versions, oldest first (by the records' ``seq``),
  each with its times and the due keys scheduled for it; a transition's ``note`` |
| ``d.<due:016x>.<bid>.<kh>.<vh>.<rule:04d>.<action>`` | JSON ``DueEntry`` | one action due at
  ``due`` (µs): sorted by due time, so "what is due now" is one page from ``d.`` |
| ``f.<same as d. without "d.">`` | JSON ``DueEntry`` + ``error`` | the failed list |
| ``r.<bid>`` | JSON ``{"t", "b", "fp"}`` | ``source = "bucket"``: the fingerprint of the bucket's
  rules its entries were computed under (absent: the bucket has no lifecycle configuration) |
| ``b.<bid>`` | JSON ``BaselineMark`` | the bucket's one-time listing (``baseline``): ``listing``
  with the position after the last page applied, or ``done``; absent: never listed (pending) |

A version the listing found has a ``seq`` of ``listed_seq`` (``-`` and a countdown): it sorts
before every record's ``seq`` (they start with a digit), and a key's listed versions sort oldest
first.

``bid`` is the bucket's 16-hex hash, ``kh`` a 32-hex hash of the key, ``vh`` a 16-hex hash of the
version id (the null version: of ""). Values are ASCII JSON (``ensure_ascii``): the executor's
guards compare them byte for byte with what it read.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from changelog.consumers.lifecycle.rules import Action
from changelog.consumers.usage.model import bucket_id, check_consumer_name, shard_of
from changelog.errors import PermanentError

DEFAULT_CONSUMER = "lifecycle"
APPLIED_KEY = "a"
GEN_KEY = "g"
META_KEY = "meta"
KEY_PREFIX = "k."
DUE_PREFIX = "d."
FAILED_PREFIX = "f."
RULES_PREFIX = "r."
BASELINE_PREFIX = "b."
# A listed version's seq: this prefix sorts before the digits every record's seq starts with.
LISTED_SEQ_PREFIX = "-"
_LISTED_MAX = 10**15 - 1
# The end of a prefix range: "." + 1.
_AFTER_DOT = "/"
# Width of a due time: µs in 16 hex digits sort as numbers until the year 2500 and beyond.
DUE_WIDTH = 16


def dumps(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), sort_keys=True).encode()


@functools.lru_cache(maxsize=65536)
def key_hash(key: str) -> str:
    return hashlib.blake2b(key.encode(errors="surrogatepass"), digest_size=16).hexdigest()


def version_hash(version_id: str | None) -> str:
    # The null version is "": no version id is empty, so it cannot collide.
    return hashlib.blake2b(("v" + version_id if version_id else "").encode(), digest_size=8).hexdigest()


def state_key(bid: str, kh: str) -> str:
    return f"{KEY_PREFIX}{bid}.{kh}"


def rules_key(bid: str) -> str:
    return f"{RULES_PREFIX}{bid}"


def baseline_key(bid: str) -> str:
    return f"{BASELINE_PREFIX}{bid}"


def listed_seq(pos: int) -> str:
    """The seq of the ``pos``-th version of a bucket's listing (key order, each key newest first):
    a key's later-listed (older) versions get smaller ones, and all sort before the records'."""
    return f"{LISTED_SEQ_PREFIX}{_LISTED_MAX - pos:015d}"


def is_listed(seq: str) -> bool:
    return seq.startswith(LISTED_SEQ_PREFIX)


def bucket_prefix(bid: str) -> str:
    return f"{KEY_PREFIX}{bid}."


def due_key(due_us: int, bid: str, kh: str, vh: str, rule_n: int, action: Action) -> str:
    return f"{DUE_PREFIX}{max(due_us, 0):0{DUE_WIDTH}x}.{bid}.{kh}.{vh}.{rule_n:04d}.{action.value}"


def due_end(now_us: int) -> str:
    """The first due key after every key due at or before ``now_us``."""
    return f"{DUE_PREFIX}{now_us + 1:0{DUE_WIDTH}x}"


def due_time(dkey: str) -> int:
    return int(dkey[len(DUE_PREFIX) : len(DUE_PREFIX) + DUE_WIDTH], 16)


def failed_key(dkey: str) -> str:
    return FAILED_PREFIX + dkey[len(DUE_PREFIX) :]


def prefix_end(prefix: str) -> str:
    """The first key after every key with ``prefix`` (which ends with ".")."""
    return prefix[:-1] + _AFTER_DOT


@dataclass(slots=True)
class Version:
    """One version (or delete marker) of a key, as the logs told it. ``mtime_us`` is the object's
    own mtime (what a HEAD's Last-Modified shows), ``born_us`` what its age counts from (the
    mtime, or the original mtime of an object the executor transitioned), ``nc_us`` when it
    became noncurrent (None: current), ``rec_us`` the arrival time of its last record (a
    ``bucket_delete`` drops what was recorded before it), ``due`` its scheduled due keys."""

    seq: str
    ver: str | None
    marker: bool
    etag: str | None
    sc: str | None
    mtime_us: int
    born_us: int
    nc_us: int | None
    rec_us: int
    due: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Note:
    """A transition in flight: the copy the executor makes will arrive as a write of ``etag`` in
    ``sc``; that write's age counts from ``born_us`` (the original's), as S3's transitions keep
    an object's age."""

    etag: str
    sc: str
    born_us: int


@dataclass(slots=True)
class KeyState:
    """Everything the schedule knows of one key."""

    tenant: str
    bucket: str
    key: str
    versions: list[Version] = field(default_factory=list)
    note: Note | None = None

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "t": self.tenant,
            "b": self.bucket,
            "k": self.key,
            "vs": [asdict(v) for v in self.versions],
        }
        if self.note is not None:
            doc["note"] = asdict(self.note)
        return dumps(doc)

    @classmethod
    def decode(cls, raw: bytes) -> KeyState:
        doc = json.loads(raw)
        note = doc.get("note")
        return cls(
            str(doc["t"]),
            str(doc["b"]),
            str(doc["k"]),
            [Version(**v) for v in doc["vs"]],
            Note(**note) if note else None,
        )

    def find(self, ver: str | None) -> int | None:
        return next((i for i, v in enumerate(self.versions) if v.ver == ver), None)


@dataclass(frozen=True, slots=True)
class DueEntry:
    """One action due: what the executor needs to re-check the object and act on it."""

    tenant: str
    bucket: str
    key: str
    ver: str | None
    etag: str | None
    mtime_us: int
    born_us: int
    action: Action
    rule: str
    storage_class: str | None = None  # a transition's target
    tags: Mapping[str, str] = field(default_factory=dict)
    marker: bool = False  # the version is a delete marker (a noncurrent one's expiry)

    @property
    def s3_bucket(self) -> str:
        """The bucket's name in an S3 request: ``tenant:bucket`` for a tenant's bucket."""
        return f"{self.tenant}:{self.bucket}" if self.tenant else self.bucket

    @property
    def qualified_bucket(self) -> str:
        return f"{self.tenant}/{self.bucket}" if self.tenant else self.bucket

    def doc(self) -> dict[str, object]:
        return {
            "t": self.tenant,
            "b": self.bucket,
            "k": self.key,
            "v": self.ver,
            "e": self.etag,
            "mt": self.mtime_us,
            "born": self.born_us,
            "a": self.action.value,
            "r": self.rule,
            "sc": self.storage_class,
            "tags": dict(sorted(self.tags.items())),
            **({"m": True} if self.marker else {}),
        }

    def encode(self) -> bytes:
        return dumps(self.doc())

    @classmethod
    def decode(cls, raw: bytes) -> DueEntry:
        d = json.loads(raw)
        return cls(
            str(d["t"]),
            str(d["b"]),
            str(d["k"]),
            d["v"],
            d["e"],
            int(d["mt"]),
            int(d["born"]),
            Action(d["a"]),
            str(d["r"]),
            d.get("sc"),
            dict(d.get("tags") or {}),
            bool(d.get("m", False)),
        )


BASELINE_LISTING = "listing"
BASELINE_DONE = "done"


@dataclass(frozen=True, slots=True)
class BaselineMark:
    """A bucket's one-time listing (``b.<bid>``): ``state`` ``listing`` (``key_marker`` and
    ``version_marker``: where the next page starts; ``key_done``: the key at ``key_marker`` is
    listed to its end, its versions the next page lists again are dropped; else a version
    marker is inside a key that alone filled a page) or ``done``; ``versions`` and ``pages``
    applied so far (``versions`` also numbers the next listed version's ``seq``)."""

    tenant: str
    bucket: str
    state: str = BASELINE_LISTING
    key_marker: str = ""
    version_marker: str = ""
    versions: int = 0
    pages: int = 0
    started_us: int = 0
    done_us: int | None = None
    key_done: bool = False

    @property
    def qualified_bucket(self) -> str:
        return f"{self.tenant}/{self.bucket}" if self.tenant else self.bucket

    @property
    def done(self) -> bool:
        return self.state == BASELINE_DONE

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "t": self.tenant,
            "b": self.bucket,
            "state": self.state,
            "km": self.key_marker,
            "vm": self.version_marker,
            "n": self.versions,
            "pages": self.pages,
            "started_us": self.started_us,
            "done_us": self.done_us,
        }
        if self.key_done:
            doc["kd"] = True
        return dumps(doc)

    @classmethod
    def decode(cls, raw: bytes) -> BaselineMark:
        d = json.loads(raw)
        return cls(
            str(d["t"]),
            str(d["b"]),
            str(d["state"]),
            str(d.get("km") or ""),
            str(d.get("vm") or ""),
            int(d.get("n") or 0),
            int(d.get("pages") or 0),
            int(d.get("started_us") or 0),
            None if d.get("done_us") is None else int(d["done_us"]),
            bool(d.get("kd")),
        )


@dataclass(frozen=True)
class Layout:
    """Where one lifecycle consumer keeps its schedule, the day length its due times use, and
    the fingerprint of the rules they were computed under."""

    index_prefix: str
    consumer: str
    shards: int
    day_us: int
    rules: str = ""

    @classmethod
    def make(
        cls, index_prefix: str, *, consumer: str = DEFAULT_CONSUMER, shards: int, day_us: int, rules: str
    ) -> Layout:
        check_consumer_name(consumer)
        if shards < 1 or day_us < 1:
            raise PermanentError(f"lifecycle schedule: shards {shards} and day {day_us} µs must be >= 1")
        return cls(index_prefix, consumer, shards, day_us, rules)

    def oid(self, n: int) -> str:
        return f"{self.index_prefix}.{self.consumer}.{n:04d}"

    def shard(self, tenant: str, bucket: str) -> tuple[int, str]:
        bid = bucket_id(tenant, bucket)
        return shard_of(bid, self.shards), bid

    def meta(self) -> bytes:
        return dumps({"shards": self.shards, "day_us": self.day_us, "rules": self.rules})

    def check_meta(self, raw: bytes | None) -> bool:
        """Refuse a schedule made with another shard count or day length; False when it was made
        under other rules (its due entries must be computed again), True when it matches or is new."""
        if raw is None or raw == self.meta():
            return True
        try:
            doc = json.loads(raw)
            shards, day_us, rules = int(doc["shards"]), int(doc["day_us"]), str(doc["rules"])
        except (ValueError, KeyError, TypeError):
            raise PermanentError(
                f"lifecycle schedule {self.oid(0)}...: unreadable meta {raw[:80]!r}"
            ) from None
        if shards != self.shards:
            raise PermanentError(
                f"lifecycle schedule {self.oid(0)}... was made with shards {shards}, not {self.shards}: "
                "keep [lifecycle] shards as it was"
            )
        if day_us != self.day_us:
            raise PermanentError(
                f"lifecycle schedule {self.oid(0)}... was made with day_seconds {day_us / 1e6:g}, not "
                f"{self.day_us / 1e6:g}: keep [lifecycle] day_seconds as it was (or use another consumer name)"
            )
        return rules == self.rules
