"""Replication (REP.1): each configured S3 site follows the committed change logs from its own
checkpoint and replays every record onto its buckets. ``apply`` applies one record to one site
(content, metadata, tags, deletes, delete markers, the source-to-site version map)."""
