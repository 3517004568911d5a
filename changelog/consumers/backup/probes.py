"""Batched probes: what ``Source.probe`` (a one-key listing) tells of each key, for many keys of a
bucket at once, from one listing of the key range they span.

A record without an ETag is guarded by the object's LastModified (``runner``): one listing
request per key. Keys to probe that lie close together in the bucket are cheaper to list as one
range: the previous backup's manifest (plus this run's changes) tells how many keys the bucket
holds between any two keys, so the pages a range costs (``LIST_PAGE`` keys each) can be
estimated and compared with one request per key.

**Plan.** The keys to probe, in UTF-8 byte order (the listing order of S3 and radosgw; the same
as Python's code point order except for surrogates, which are compared by their ``surrogatepass``
bytes here and never batched), are cut where two neighbours are a page or more apart in the
estimated key set: extending a range over such a gap costs at least a page, no less than the
probe it saves. A run of two or more keys is cut into ranges of ``CHAIN_PAGES`` estimated
pages (listed in parallel; cut where a page ends, they cost the pages one listing of the whole
run would); a range of two or more keys is listed when its estimated pages are fewer than its
keys; every other key is probed alone.

**Listing a range.** ``prefix`` is the common prefix of its first and last key (every key
between them shares it); the listing starts after the nearest known key before the first one (or
the first key's parent prefix, ``first[:-1]``, if that is nearer) and goes page by page until it
is past the last key. A key of the range is settled by the first page whose last key is at or
after it (or by the listing's end): present with the listed ETag, size and LastModified, or
absent (deleted since, exactly as a probe that finds nothing). The estimate may be low (keys the
followed prefixes leave out, keys written after the watermark): a range that has spent its
estimated pages plus one stops, and its unsettled keys are probed alone.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

from changelog.consumers.backup.source import LIST_PAGE, Probe

__all__ = ["CHAIN_PAGES", "ProbeRange", "plan", "utf8"]

# Pages (estimated) one listing chain covers; a longer run of keys is listed by several
# chains at once, each starting after the known key where the previous one's pages end.
CHAIN_PAGES = 4


def utf8(key: str) -> bytes:
    """A key's bytes in listing order (surrogates kept by ``surrogatepass``: never sent)."""
    return key.encode("utf-8", "surrogatepass")


def _sendable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(key)


@dataclass
class ProbeRange:
    """One range listing in progress: the keys it must settle, sorted by their bytes."""

    bucket: str
    keys: list[tuple[bytes, str]]
    prefix: str
    start_after: str | None
    budget: int  # pages it may spend before its unsettled keys are probed alone
    estimate: int = 0  # estimated pages
    pages: int = 0
    token: str | None = None
    _next: int = field(default=0, repr=False)  # keys[:_next] are settled

    @property
    def done(self) -> bool:
        return self._next >= len(self.keys)

    @property
    def exhausted(self) -> bool:
        return not self.done and self.pages >= self.budget

    def unsettled(self) -> list[str]:
        return [k for _b, k in self.keys[self._next :]]

    def absorb(self, entries: list[tuple[str, Probe]], token: str | None) -> list[tuple[str, Probe | None]]:
        """Take one page (in listing order) and the token of the next one (None: the end):
        the keys it settles, each with its listing entry or None (absent)."""
        self.pages += 1
        self.token = token
        listed = dict(entries)
        last = utf8(entries[-1][0]) if entries else None
        out: list[tuple[str, Probe | None]] = []
        while self._next < len(self.keys):
            kb, key = self.keys[self._next]
            if token is not None and (last is None or kb > last):
                break
            out.append((key, listed.get(key)))
            self._next += 1
        return out


def plan(
    bucket: str, keys: Iterable[str], known: Iterable[str], *, page: int = LIST_PAGE, chain: int = CHAIN_PAGES
) -> tuple[list[ProbeRange], list[str]]:
    """Split ``keys`` (to probe) into range listings and single probes, by the estimate that the
    bucket holds ``known`` (and ``keys``). Returns (ranges, keys to probe alone)."""
    wanted = set(keys)
    singles = sorted(k for k in wanted if not _sendable(k))
    todo = sorted((utf8(k), k) for k in wanted if _sendable(k))
    if len(todo) < 2:
        return [], singles + [k for _b, k in todo]
    est = sorted({utf8(k) for k in known} | {kb for kb, _k in todo})
    pos = [bisect_left(est, kb) for kb, _k in todo]
    runs: list[tuple[int, int]] = []  # [i, j) into todo
    start = 0
    for i in range(1, len(todo) + 1):
        if i == len(todo) or pos[i] - pos[i - 1] >= page:
            runs.append((start, i))
            start = i
    # A run is cut into chains of ``chain`` pages (estimated), listed in parallel: as many
    # pages as one listing of the run when the estimate is right.
    span = max(1, chain) * page
    ranges: list[ProbeRange] = []
    for i, j in runs:
        if j - i < 2:
            singles.extend(k for _b, k in todo[i:j])
            continue
        after = todo[i][1][:-1]
        if pos[i] > 0 and est[pos[i] - 1] > utf8(after):
            before = est[pos[i] - 1].decode("utf-8", "surrogatepass")
            after = before if _sendable(before) else after
        origin = bisect_right(est, utf8(after))  # est[origin] is the first entry listed
        chunks: dict[int, list[int]] = {}
        for m in range(i, j):
            chunks.setdefault((pos[m] - origin) // span, []).append(m)
        for c, idx in sorted(chunks.items()):
            members = [todo[m] for m in idx]
            start = origin + c * span
            chunk_after = after
            if c > 0:
                before = est[start - 1].decode("utf-8", "surrogatepass")
                chunk_after = before if _sendable(before) else members[0][1][:-1]
                start = bisect_right(est, utf8(chunk_after))
            pages = max(1, math.ceil((pos[idx[-1]] + 1 - start) / page))
            if pages >= len(members):
                singles.extend(k for _b, k in members)
                continue
            prefix = os.path.commonprefix([members[0][1], members[-1][1]])
            ranges.append(ProbeRange(bucket, members, prefix, chunk_after or None, budget=pages + 1, estimate=pages))
    return ranges, singles
