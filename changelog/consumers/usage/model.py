"""The stored layout of usage metrics: where each bucket's counts live and how they are encoded.
The only module that spells a usage state key.

State is kept in ``shards`` objects ``<index prefix>.<consumer>.<n:04d>`` beside the index (never
in the control object: the inventory may hold millions of keys, and every role reads the
control object). A bucket lives in shard ``blake2b-64(tenant \\0 bucket) mod shards``; its
omap keys in that shard:

| key | value | meaning |
|---|---|---|
| ``a`` | log object name | the last log object applied to this shard (the compare-and-set guard) |
| ``m`` | decimal µs | the latest record time seen by this shard (data time: drives retention; ``apply.data_time_us``) |
| ``meta`` | JSON | ``{"shards": S, "interval": I}``: a store made with another S or I is refused |
| ``p.<res:06d>`` | decimal s | retention horizon of resolution ``res``: series before it are pruned |
| ``t.<bid>`` | JSON | the bucket's current totals (``Totals``) |
| ``i.<bid>.<h:032x>`` | ``size,marker,rec`` | the inventory: one live object version or marker |
| ``s.<res:06d>.<bid>.<start:010d>`` | JSON list | the deltas of one interval (``Delta``) |

``bid`` is the bucket's 16-hex hash, ``h`` a hash of (key, version or null), ``start`` the
interval's start in epoch seconds, ``res`` its length in seconds (the fine ``interval``, 3600,
86400), ``rec`` the arrival time (µs) of the record that made the entry: a ``bucket_delete``
drops the entries recorded before it, not those of the bucket's next lifetime that the same log
object may already hold. Every key is ASCII and fixed width where order matters.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from changelog.errors import PermanentError

DEFAULT_CONSUMER = "usage"
HOUR = 3600
DAY = 86400

APPLIED_KEY = "a"
MAXTIME_KEY = "m"
META_KEY = "meta"
HORIZON_PREFIX = "p."
TOTALS_PREFIX = "t."
INVENTORY_PREFIX = "i."
SERIES_PREFIX = "s."
# The end of a prefix range: "." + 1.
_AFTER_DOT = "/"

# A consumer name is part of object names and of the checkpoint key ``k.<name>``: no ".", and not
# the index's own objects (``<prefix>.shard.<n>``, ``<prefix>.control``).
CONSUMER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RESERVED_NAMES = frozenset(("shard", "control"))

# Delta fields, in their stored order.
DELTA_FIELDS = (
    "objects_added",
    "bytes_added",
    "objects_removed",
    "bytes_removed",
    "writes",
    "deletes",
    "delete_markers",
)


# A record's bucket is hashed on every record; a zone's buckets are few next to its records.
@functools.lru_cache(maxsize=65536)
def bucket_id(tenant: str, bucket: str) -> str:
    return hashlib.blake2b(f"{tenant}\x00{bucket}".encode(), digest_size=8).hexdigest()


def shard_of(bid: str, shards: int) -> int:
    return int(bid, 16) % shards


def inventory_key(bid: str, key: str, version_id: str | None) -> str:
    # The null version is "" after a NUL: no version id is empty, so it cannot collide.
    ver = "" if version_id is None or version_id == "null" else "v" + version_id
    h = hashlib.blake2b(f"{key}\x00{ver}".encode(errors="surrogatepass"), digest_size=16).hexdigest()
    return f"{INVENTORY_PREFIX}{bid}.{h}"


def inventory_prefix(bid: str) -> str:
    return f"{INVENTORY_PREFIX}{bid}."


def totals_key(bid: str) -> str:
    return TOTALS_PREFIX + bid


def horizon_key(res: int) -> str:
    return f"{HORIZON_PREFIX}{res:06d}"


def series_prefix(res: int, bid: str) -> str:
    return f"{SERIES_PREFIX}{res:06d}.{bid}."


def series_key(res: int, bid: str, start_s: int) -> str:
    return f"{series_prefix(res, bid)}{start_s:010d}"


def series_start(key: str) -> int:
    return int(key.rsplit(".", 1)[1])


def prefix_end(prefix: str) -> str:
    """The first key after every key with ``prefix`` (which ends with ".")."""
    return prefix[:-1] + _AFTER_DOT


@dataclass(frozen=True, slots=True)
class Entry:
    """One live object version (or delete marker) in the inventory."""

    size: int
    marker: bool
    recorded_us: int

    def encode(self) -> bytes:
        return f"{self.size},{int(self.marker)},{self.recorded_us}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        size, marker, rec = raw.decode().split(",")
        return cls(int(size), marker == "1", int(rec))


@dataclass(slots=True)
class Totals:
    """A bucket's current totals; ``live`` False once deleted (kept until its series age out)."""

    tenant: str
    bucket: str
    objects: int = 0
    nbytes: int = 0
    markers: int = 0
    live: bool = True
    changed_us: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "tenant": self.tenant,
                "bucket": self.bucket,
                "objects": self.objects,
                "bytes": self.nbytes,
                "markers": self.markers,
                "live": self.live,
                "changed_us": self.changed_us,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Totals:
        d = orjson.loads(raw)
        return cls(
            str(d["tenant"]),
            str(d["bucket"]),
            int(d["objects"]),
            int(d["bytes"]),
            int(d.get("markers") or 0),
            bool(d.get("live", True)),
            int(d.get("changed_us") or 0),
        )

    def doc(self) -> dict[str, object]:
        return {"tenant": self.tenant, "bucket": self.bucket, "objects": self.objects, "bytes": self.nbytes}


@dataclass(slots=True)
class Delta:
    """What changed in one bucket during one interval."""

    values: list[int] = field(default_factory=lambda: [0] * len(DELTA_FIELDS))

    def merge(self, other: Delta) -> None:
        self.values = [a + b for a, b in zip(self.values, other.values, strict=True)]

    @property
    def net_objects(self) -> int:
        return self.values[0] - self.values[2]

    @property
    def net_bytes(self) -> int:
        return self.values[1] - self.values[3]

    def encode(self) -> bytes:
        return orjson.dumps(self.values)

    @classmethod
    def decode(cls, raw: bytes) -> Delta:
        values = [int(v) for v in orjson.loads(raw)]
        if len(values) != len(DELTA_FIELDS):
            raise PermanentError(
                f"usage: a stored interval has {len(values)} fields, not {len(DELTA_FIELDS)}"
            )
        return cls(values)

    def doc(self) -> dict[str, int]:
        return dict(zip(DELTA_FIELDS, self.values, strict=True))


@dataclass(frozen=True)
class Layout:
    """Where one usage consumer keeps its state, and its resolutions with their retention
    (seconds): the fine ``interval``, and hourly and daily roll-ups."""

    index_prefix: str
    consumer: str
    shards: int
    interval: int
    retention: Mapping[int, int]

    @classmethod
    def make(
        cls,
        index_prefix: str,
        *,
        consumer: str = DEFAULT_CONSUMER,
        shards: int = 16,
        interval: int = 300,
        retention: int = 2 * DAY,
        retention_hourly: int = 60 * DAY,
        retention_daily: int = 800 * DAY,
    ) -> Layout:
        check_consumer_name(consumer)
        if interval < 1 or HOUR % interval:
            raise PermanentError(f"usage interval {interval}s must divide an hour")
        keep: dict[int, int] = {}
        for res, ret in ((interval, retention), (HOUR, retention_hourly), (DAY, retention_daily)):
            keep[res] = max(keep.get(res, 0), ret)
        return cls(index_prefix, consumer, shards, interval, keep)

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(sorted(self.retention))

    def oid(self, n: int) -> str:
        return f"{self.index_prefix}.{self.consumer}.{n:04d}"

    def shard(self, tenant: str, bucket: str) -> tuple[int, str]:
        bid = bucket_id(tenant, bucket)
        return shard_of(bid, self.shards), bid

    def horizon(self, data_us: int, res: int) -> int:
        """The start (s) of the oldest interval of ``res`` kept at data time ``data_us``."""
        return (data_us // 1_000_000 - self.retention[res]) // res * res

    def prunes(self, data_us: int, horizons: Mapping[int, int]) -> bool:
        """Whether data time ``data_us`` moves a retention horizon past ``horizons``."""
        return any(self.horizon(data_us, res) > horizons.get(res, 0) for res in self.resolutions)

    def resolution_for(self, interval: int) -> int:
        """The coarsest stored resolution that ``interval`` is a multiple of."""
        fits = [res for res in self.resolutions if interval % res == 0]
        if interval < 1 or not fits:
            raise PermanentError(
                f"interval {interval}s is not a multiple of a stored one ({', '.join(f'{r}s' for r in self.resolutions)})"
            )
        return max(fits)

    def meta(self) -> bytes:
        """The ``meta`` value a state of this layout holds."""
        return b'{"shards":%d,"interval":%d}' % (self.shards, self.interval)

    def check_meta(self, raw: bytes | None) -> None:
        """Refuse a state made with another shard count or interval (an absent ``meta``: a shard
        never written; a ``meta`` without ``interval``: made before it was stored, matches)."""
        if raw is None or raw == self.meta():
            return
        try:
            doc = orjson.loads(raw)
            shards, interval = int(doc["shards"]), doc.get("interval")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise PermanentError(f"usage state {self.oid(0)}...: unreadable meta {raw[:80]!r}") from None
        made = raw.decode(errors="replace")
        if shards != self.shards:
            raise PermanentError(
                f"usage state {self.oid(0)}... was made with {made}, not shards {self.shards}: "
                "keep [usage] shards as it was"
            )
        if interval is not None and int(interval) != self.interval:
            raise PermanentError(
                f"usage state {self.oid(0)}... was made with {made}, not interval {self.interval}: "
                "keep [usage] interval as it was (or use another --consumer)"
            )


def check_consumer_name(name: str) -> None:
    """A usage consumer name: ``^[a-z0-9][a-z0-9_-]*$``, not ``shard`` or ``control``."""
    if not CONSUMER_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise PermanentError(
            f"usage consumer name {name!r}: use lower-case letters, digits, '-' and '_' "
            f"(not starting with '-' or '_'), and not {' or '.join(sorted(RESERVED_NAMES))}"
        )
