"""rgw-changelog: record every object mutation of a Ceph RGW zone in a sharded omap index and
drain it, exactly once, into JSON Lines change-log objects.

Pipeline, one module per role: ``mutation`` (the record) -> ``keys`` (index key layout and shard
function) -> ``store`` (the object store interface; ``backends/`` implement it on RADOS and on an
embedded sqlite file) -> ``index`` (the sharded change index, the write hook's target) ->
``lease`` (cls_lock leases and fencing) -> ``collector`` (leased, fenced drain) -> ``logformat``
(JSON Lines schema) -> ``targets`` (S3 and local directory) -> ``reader`` (consumers).
"""

__version__ = "0.1.0"
