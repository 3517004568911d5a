"""Consumers of the committed change logs: each one a checkpoint kept in the index's store
(fenced by its own lease), a reader of the logs after it, and the leased service loop
(``changelog.consumers.framework``). Backup is the first; replication, usage metrics and
lifecycle follow the same shape, each in its own folder."""
