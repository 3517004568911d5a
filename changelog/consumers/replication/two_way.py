"""Two-way replication's memory of each key's recent records (REP.2): which of the peer's
replicas this zone's users overwrote, and what a delete deleted.

Last writer wins orders versions by their origin's mtime in whole seconds, then by a fixed
order of the two zones (``apply.origin_order``): both sites can compute it for any version from
a HEAD. Two things it cannot see, and this zone's log can:

* **A user here overwrote (or deleted) a replica of the peer's write.** That write is newer
  than the replica's content whatever their mtimes (the same second, clock skew): the log
  shows the replica's write as an echo before it. Until the next echo of the key, every
  record of this zone's users of it is newer than that echo's content (``overwrote``).
* **What a delete deleted.** A delete record names the deleted object's mtime, not what it
  was: the last write record of the key before it does. A delete of the peer's content (an
  echo) removes only that content at the peer, not a later write there.

Kept in memory, bounded: after a restart, or for a multipart source (whose replica's ETag
differs), the order alone decides.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from changelog.consumers.replication.apply import ECHO, Applied
from changelog.pipeline.logformat import LogRecord

# Keys remembered, the least recently recorded forgotten first.
KEYS_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Before:
    """What this zone's log said of a key before a record."""

    # The ETag of the key's last echo: this zone's later records are newer than that content;
    # and when the replica was written here (whole seconds): a peer write made later is not it.
    overwrote: str | None = None
    overwrote_at: int = 0
    # The key's last write record, if no delete followed it: its ETag, and whether it was an
    # echo (the peer's content).
    written: str | None = None
    written_echo: bool = False


_NOTHING = Before()


class KeyMemory:
    """Per (qualified bucket, key) of this zone's log: its last echo and last write."""

    def __init__(self, kept: int = KEYS_KEPT) -> None:
        self.kept = kept
        self._seen: OrderedDict[tuple[str, str], Before] = OrderedDict()
        self._mu = threading.Lock()  # workers apply different keys at once

    def before(self, rec: LogRecord) -> Before:
        """What the log said of ``rec``'s key before it (nothing known: all None)."""
        with self._mu:
            return self._seen.get((rec.qualified_bucket, rec.key or "")) or _NOTHING

    def note(self, rec: LogRecord, applied: Applied) -> None:
        """After ``rec`` (a record of this zone, read in log order) was applied."""
        if rec.key is None:
            return
        key = (rec.qualified_bucket, rec.key)
        echo = applied.status == "skipped" and (applied.reason or "").startswith(ECHO)
        with self._mu:
            old = self._seen.get(key) or _NOTHING
            if rec.op == "write" and echo:
                new = Before(rec.etag, rec.time_us // 1_000_000, rec.etag, True)
            elif rec.op == "write":
                new = Before(old.overwrote, old.overwrote_at, rec.etag, False)
            else:
                new = Before(old.overwrote, old.overwrote_at)
            self._seen[key] = new
            self._seen.move_to_end(key)
            while len(self._seen) > self.kept:
                self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
