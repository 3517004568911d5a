"""The pipeline core, in pipeline order: ``mutation`` (a record) → ``keys`` (index key layout and
shard function) → ``store`` (the object-store Protocol; ``backends/rados.py`` is the only
importer of rados, ``backends/sqlite.py`` its embedded twin) → ``index`` (recording, exactly
once) → ``control`` (the control object's key layout) → ``lease`` and ``loop`` (fenced leases,
one renewal policy, one leased service loop) → ``collector`` (with ``readahead``, ``upload`` and
``commit``: drain, write, commit, trim) → ``logformat`` → ``targets`` (``s3client`` is the only
importer of boto3) → ``reader``. Nothing here imports the consumers or the process edges."""
