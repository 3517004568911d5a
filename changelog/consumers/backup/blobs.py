"""The write side of the content-addressed blob store during a run: each content (by SHA-256)
stored once, whatever the number of objects that share it, and a blob a concurrent cleanup may
be deleting never trusted (``runner``: resuming explains which blobs a run trusts).
"""

from __future__ import annotations

import logging
import threading
from typing import IO

from changelog.consumers.backup.runs import Hook, no_hook
from changelog.consumers.backup.store import BackupStore

logger = logging.getLogger(__name__)


class Blobs:
    """Stores each content once: in-memory knowledge, then an exists check, then an upload;
    concurrent copies of the same content wait for the first one.

    ``base``: the blobs of the base manifest (trusted: a cleanup keeps them). ``not_before``:
    a stored blob written earlier than this (the run's start, less the clock skew) may be in
    the middle of a cleanup's deletion, so it is uploaded again."""

    def __init__(self, store: BackupStore, *, base: set[str], not_before: float, hook: Hook = no_hook) -> None:
        self.store = store
        self.base = base
        self.not_before = not_before
        self.present: set[str] = set()
        self.uploaded: set[str] = set()
        # sha -> (size, modified) of every stored blob, when listed up front (``preload``).
        self.listing: dict[str, tuple[int, float]] | None = None
        self._inflight: dict[str, threading.Event] = {}
        self._mu = threading.Lock()
        self._hook = hook

    def preload(self) -> None:
        """The exists check for every blob at once: one listing of ``blobs/`` (a page per 1000
        blobs) instead of one request per copied object. Taken after the run's marker is
        written, so a blob missing here was not stored by an earlier attempt of this run."""
        self.listing = {sha: (info.size, info.modified) for sha, info in self.store.iter_blobs()}

    def ensure(self, sha: str, data: IO[bytes], size: int) -> bool:
        """Make sure blob ``sha`` is stored; True if this call uploaded it."""
        while True:
            with self._mu:
                if sha in self.present or sha in self.base:
                    return False
                ev = self._inflight.get(sha)
                if ev is None:
                    ev = self._inflight[sha] = threading.Event()
                    break
            ev.wait()
        try:
            uploaded = self._store_unless_trusted(sha, data, size)
            with self._mu:
                self.present.add(sha)
            return uploaded
        finally:
            with self._mu:
                del self._inflight[sha]
            ev.set()

    def _store_unless_trusted(self, sha: str, data: IO[bytes], size: int) -> bool:
        if self.listing is not None:
            found = self.listing.get(sha)
        else:
            info = self.store.blob_info(sha)
            found = (info.size, info.modified) if info is not None else None
        if found is not None and found[0] == size and found[1] >= self.not_before:
            return False
        if found is not None:
            logger.info("blob %s predates this run: storing it again", sha)
        data.seek(0)
        self.store.put_blob(sha, data, size)
        with self._mu:
            self.uploaded.add(sha)
        self._hook("blob-stored")
        return True
