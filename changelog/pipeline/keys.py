"""Index key layout and the shard function.

Every shard is one object whose omap holds, by key prefix (see docs/design.md, "Key layout"):

* ``d.<t:016x>.<obj:016x>.<ver:08x>.<evt:016x>`` -> msgpack mutation. ``t`` is the arrival time
  in microseconds, strictly increasing per shard per recorder and never below the shard's
  floor, so keys sort by record time, then object, then version. Object, version and event are
  hashed so that keys stay short, fixed width and NUL-free whatever the object key holds.
* ``f`` -> ``<t:016x>``: the floor. The collector raises it (fenced) to its cutoff before it
  reads; a recorder write carries ``floor < t`` in the same atomic op, so no entry can appear
  below a range the collector has read.
* ``o.<obj:016x>.<ver:08x>`` -> data key (object mode only): the live entry of object+version.
* ``s.<source>`` -> position: the highest position recorded from that source stream into this
  shard (the idempotency high-water mark).
"""

from __future__ import annotations

import hashlib

DATA_PREFIX = "d."
FLOOR_KEY = "f"
OBJECT_PREFIX = "o."
STREAM_PREFIX = "s."
TIME_WIDTH = 16
# The largest data key: every real key sorts below it.
DATA_END = "d/"


def _h(data: bytes, size: int) -> str:
    return hashlib.blake2b(data, digest_size=size).hexdigest()


# Empty hashers with the digest sizes of the layout: ``copy()`` + ``update`` is cheaper than a new
# ``blake2b(data, digest_size=n)`` (keyword parsing), and the hot path of recording does it twice
# per record. Never updated, so sharing them between threads is safe.
OBJECT_HASHER = hashlib.blake2b(digest_size=8)
EVENT_HASHER = hashlib.blake2b(digest_size=16)


def _object_digest(bucket: str, key: str) -> bytes:
    """The one digest of an object: its shard and its hash in keys both come from it."""
    h = OBJECT_HASHER.copy()
    h.update(f"{bucket}\x00{key}".encode())
    return h.digest()


def object_hash(bucket: str, key: str) -> str:
    return _object_digest(bucket, key).hex()


def version_hash(version_id: str | None) -> str:
    # A null version and the literal version id "null" are the same object version in S3.
    if version_id is None or version_id == "null":
        return _h(b"\x00null", 4)
    return _h(version_id.encode(), 4)


def shard_of(bucket: str, key: str, shards: int) -> int:
    """Stable shard of an object: all records of one bucket/key land in one shard."""
    if shards < 1:
        raise ValueError("shard count must be >= 1")
    return locate(bucket, key, shards)[0]


def locate(bucket: str, key: str, shards: int) -> tuple[int, str]:
    """(shard, object hash) from one digest: the hot path of recording."""
    digest = _object_digest(bucket, key)
    return int.from_bytes(digest, "big") % shards, digest.hex()


NULL_VERSION_HASH = version_hash(None)


def time_hex(t_us: int) -> str:
    if not 0 <= t_us < 1 << 64:
        raise ValueError(f"time out of range: {t_us}")
    return f"{t_us:016x}"


def data_key(t_us: int, obj: str, ver: str, event_id: str) -> str:
    return f"{DATA_PREFIX}{time_hex(t_us)}.{obj}.{ver}.{event_id[:16]}"


def time_bound(t_us: int) -> str:
    """A key below every data key of time >= t_us and above every one of time < t_us."""
    return DATA_PREFIX + time_hex(t_us)


def time_of(data_key_: str) -> int:
    if not data_key_.startswith(DATA_PREFIX):
        raise ValueError(f"not a data key: {data_key_!r}")
    return int(data_key_[2 : 2 + TIME_WIDTH], 16)


def object_key(obj: str, ver: str) -> str:
    return f"{OBJECT_PREFIX}{obj}.{ver}"


def stream_key(source: str) -> str:
    return STREAM_PREFIX + source
