"""Backups driven by the change logs: incremental (each run reads only the log objects after the
previous backup's checkpoint), deduplicated (content stored once per SHA-256) and restorable
(a manifest of the full state of every bucket per backup).

Modules, in the order a backup flows through them: ``model`` (per-key versions and how a log
record changes them) -> ``source`` (the source S3: GET by version, conditional GET, listings,
through a ``changelog.pipeline.s3client`` client) -> ``store`` (the content-addressed destination on a
``Target``) -> ``lock`` (leases kept in the destination itself) -> ``runner`` (``backup run``:
plan, copy, manifest; ``runs``: its resumable marker and segments; ``copier``: the copy phase's
worker pool; ``fetch``: one object read, hashed and stored; ``blobs``: each content stored
once; ``probes``: the LastModified guard of many keys from one range listing) -> ``manifest``
-> ``restore`` / ``verify`` / ``cleanup``; ``consumer`` runs backups inside ``serve``, and
``changelog.cli.backup`` holds the ``backup`` commands.
"""

from changelog.consumers.backup.cleanup import CleanupResult, cleanup, select_expired
from changelog.consumers.backup.manifest import BackupInfo, Manifest, list_backups
from changelog.consumers.backup.restore import RestoreResult, restore
from changelog.consumers.backup.runner import BackupRunner, RunResult
from changelog.consumers.backup.source import Source, make_client
from changelog.consumers.backup.store import BackupStore
from changelog.consumers.backup.verify import VerifyResult, verify

__all__ = [
    "BackupInfo",
    "BackupRunner",
    "BackupStore",
    "CleanupResult",
    "Manifest",
    "RestoreResult",
    "RunResult",
    "Source",
    "VerifyResult",
    "cleanup",
    "list_backups",
    "make_client",
    "restore",
    "select_expired",
    "verify",
]
