"""The RGW sync module: follows one radosgw zone's data log and bucket index logs from outside
radosgw and records every object mutation into the change index.

``admin`` is the edge to radosgw (admin REST API and the few S3 reads), ``mapping`` turns bucket
index log entries into mutations, ``follower`` is the loop that does it durably, ``service`` runs
the follower and the collector together (``rgw-changelog serve``), ``zone`` turns on the zone's
``log_data``.
"""
