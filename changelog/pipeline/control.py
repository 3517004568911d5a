"""The layout of the index's control object (``<prefix>.control``): every omap key and lock name
kept there, in one place, with the module that writes it. Other modules import these names;
none spells a control key itself.

| key / lock | written by | holds |
|---|---|---|
| ``meta`` | ``index`` | shards, mode, format version of the index |
| ``c.state`` | ``collector`` | watermark, last log object, passes |
| ``c.seq`` | ``collector`` | the last log-object sequence number allocated |
| ``c.pending.<name>`` | ``collector`` | a log object written but not yet trimmed (a pending commit; every stream's) |
| ``c.streams`` | ``collector_streams`` | ``{"count": n}``: the collector is cut into n streams (``[scale]``) |
| ``c.stream.<nnn>.state`` | collector stream ``n`` | its ``c.state``: cutoff, watermark, committed-through |
| ``c.stream.<nnn>.seq`` | collector stream ``n`` | its ``c.seq`` |
| ``c.stream.<nnn>.drained`` | collector stream ``n`` | ``{"drained_us", "held_us"}``: every record it has recorded before ``drained_us`` is committed; the ``bucket_delete`` it holds back (``commit.Drained``) |
| ``r.boot`` | RGW follower | first start: radosgw time, zone |
| ``r.dl.<n>`` | RGW follower | data-log shard ``n``: marker read up to |
| ``r.p.<bucket-shard>`` | RGW follower | a bucket-index shard with entries to read |
| ``r.m.<bucket-shard>`` | RGW follower | bucket-index shard marker read up to |
| ``r.k.<bucket>`` | RGW follower | a followed bucket: instance, shards, log generation |
| ``r.f.<bucket>`` | RGW follower | a bucket's full sync (baseline) in progress |
| ``r.rq.<bucket>`` | any process | a request for a new baseline of a bucket |
| ``r.cu`` | RGW follower | caught_up_until, persisted |
| ``r.u.<bucket>:<upload id>`` | RGW follower | a multipart upload in progress: key, start (``changelog.pipeline.uploads``) |
| ``rp.<p>.<...>`` | RGW follower partition ``p`` | the ``r.`` keys of one partition's buckets (``[scale]``) |
| ``k.<consumer>`` | each consumer of the logs | its checkpoint (``changelog.consumers``) |
| ``pm.<role>.<instance>`` | ``partitions`` | a live instance of a partitioned role: its expiry |
| lock ``collector`` | collector | the control lease (one active collector, unpartitioned) |
| lock ``follower`` | RGW follower | the follower lease (one active follower) |
| lock ``consumer.<name>`` | a consumer | that consumer's lease |
| lock ``part.<role>.<n>`` | ``partitions`` | partition ``n`` of a partitioned role |

Shard objects carry one lock, ``drain``, taken by the active collector for the length of a pass.
"""

from __future__ import annotations

META_KEY = "meta"

# The collector's keys.
COLLECTOR_PREFIX = "c."
COLLECTOR_STATE_KEY = "c.state"
COLLECTOR_SEQ_KEY = "c.seq"
COLLECTOR_PENDING_PREFIX = "c.pending."
COLLECTOR_LOCK = "collector"
SHARD_LOCK = "drain"
# Collector streams (``[scale] partitioned``): partition ``n`` of the role ``collector`` writes
# stream ``n``, its state and seq under ``c.stream.<nnn>.`` (pending commits stay under
# ``c.pending.``: a stream's names are unique, they say their stream).
COLLECTOR_ROLE = "collector"
COLLECTOR_STREAMS_META_KEY = "c.streams"
COLLECTOR_STREAM_PREFIX = "c.stream."


def collector_state_key(stream: int | None) -> str:
    return COLLECTOR_STATE_KEY if stream is None else f"{COLLECTOR_STREAM_PREFIX}{stream:03d}.state"


def collector_seq_key(stream: int | None) -> str:
    return COLLECTOR_SEQ_KEY if stream is None else f"{COLLECTOR_STREAM_PREFIX}{stream:03d}.seq"


# The RGW follower's keys: its prefix (``r.``, or ``rp.<p>.`` for a partition), then a kind
# (rgw_module.follower_state.StateKeys builds them).
FOLLOWER_PREFIX = "r."
FOLLOWER_BOOT_KIND = "boot"
FOLLOWER_CAUGHT_UP_KIND = "cu"
FOLLOWER_DATALOG_KIND = "dl."
FOLLOWER_PENDING_KIND = "p."
FOLLOWER_MARKER_KIND = "m."
FOLLOWER_BUCKET_KIND = "k."
FOLLOWER_FULL_KIND = "f."
FOLLOWER_UPLOAD_KIND = "u."
FOLLOWER_SEALED_KIND = "s."  # a finished log generation's shard, still re-read now and then
FOLLOWER_REQUEST_PREFIX = "r.rq."  # shared by the partitions: the bucket's owner takes it
# A follower partition's keys: the ``r.`` keys above under ``rp.<p>.`` (rgw_module.follower_state.StateKeys).
FOLLOWER_PARTITION_PREFIX = "rp."
FOLLOWER_ROLE = "follower"  # its partitions' role name (changelog.pipeline.partitions)
FOLLOWER_PARTITION_META_KEY = "rp.meta"  # {"count": n}: the follower state is cut into n partitions
FOLLOWER_LOCK = "follower"

# Consumers of the committed logs: one checkpoint key and one lock each.
CONSUMER_PREFIX = "k."


def consumer_key(name: str) -> str:
    return CONSUMER_PREFIX + name


def consumer_lock(name: str) -> str:
    return "consumer." + name


# Partitioned roles (``changelog.pipeline.partitions``): members and one lock per partition.
PARTITION_MEMBER_PREFIX = "pm."


def partition_member_key(role: str, instance: str) -> str:
    return f"{PARTITION_MEMBER_PREFIX}{role}.{instance}"


def partition_lock(role: str, n: int) -> str:
    return f"part.{role}.{n:04d}"
