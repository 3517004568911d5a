"""The due-time schedule: what each record of the change logs does to it, applied exactly once per
log object and shard, and read back by the executor in due order (layout: ``model``).

**What a record does** (a key's versions are kept oldest first, in the records' per-key order;
the newest is current, every other one noncurrent since the record that superseded it):

* a ``write`` or ``delete_marker`` of a version the key already has with the same ETag and mtime
  is an update in place (tags or ACL: radosgw logs them as writes): the version keeps its place
  and its age, and its actions are computed again (its tags may now match another rule);
* any other ``write`` / ``delete_marker`` first removes the entry of the same version id, if any
  (an unversioned overwrite, a null version rewritten while versioning is suspended, a null
  delete marker), then becomes the newest: the one before it becomes noncurrent at this
  record's time, so its current-version actions (expire, transition) are cancelled and its
  noncurrent expiry is scheduled;
* a ``delete`` removes that version (the null version for an unversioned delete) and cancels its
  actions; if it was current, the one below becomes current again: its noncurrent expiry is
  cancelled and its current actions are scheduled (perhaps due at once, as S3 would find them);
* a ``bucket_delete`` drops every version recorded before it (as the usage consumer does);
* baseline records (a bucket's existing versions, oldest first) are applied the same way: an
  existing object is scheduled from its mtime, a version listed before the key's newer one is
  noncurrent since that one's mtime;
* so is a page of the consumer's own one-time listing of a bucket that gained rules
  (``ShardBatch.listed``, driven by ``baseline``): a key the page lists from its newest version
  takes the listed stack (the listing is newer than every record applied before it: the versions
  only the schedule had are gone), keeping the age of the versions it already knew; the rest of a
  key split over pages (it alone fills one) goes under what the previous pages listed, and the
  key is scheduled once its last page is applied; a listed copy of a transition takes the
  original's age from the key's note. The records
  applied after correct what the listing saw earlier; a record of a version listed (its mtime to
  the millisecond, or the second) is an update in place, not a new version.

Only buckets a rule names are kept (every key of them, so a changed rule can be applied again
from the schedule alone: ``reschedule``). A record's time is ``usage.apply.data_time_us`` (its
mutation time, at most an hour past its arrival): one radosgw host with a clock far ahead cannot
push ages into the future.

**Exactly once** (``Schedule.apply``), as the usage consumer: per shard, read ``a`` and ``g``;
skip the shard when ``a >= O``; else read the keys' states, compute, and write one op that sets
``a = O`` and a new ``g``, guarded by ``assert a == <read>`` and ``assert g == <read>``. The
executor's own writes (removing done entries, a transition's note) change ``g`` too, so neither
writer can overwrite what the other wrote after it read.
"""

from __future__ import annotations

import bisect
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from changelog.consumers.lifecycle.model import (
    APPLIED_KEY,
    BASELINE_PREFIX,
    DUE_PREFIX,
    FAILED_PREFIX,
    GEN_KEY,
    KEY_PREFIX,
    META_KEY,
    RULES_PREFIX,
    BaselineMark,
    DueEntry,
    KeyState,
    Layout,
    Note,
    Version,
    baseline_key,
    bucket_prefix,
    due_end,
    due_key,
    dumps,
    is_listed,
    key_hash,
    prefix_end,
    rules_key,
    state_key,
    version_hash,
)
from changelog.consumers.lifecycle.rules import RuleSet
from changelog.consumers.usage.apply import data_time_us
from changelog.errors import CompareFailed, LeaseLost, PermanentError
from changelog.pipeline.logformat import LogRecord, parse_rfc3339
from changelog.pipeline.store import Cmp, ObjectStore, WriteOp, omap_iter

# (key, raw value) pairs of a prefix, paged from the store.
PrefixReader = Callable[[str], Iterator[tuple[str, bytes]]]


def new_gen() -> str:
    return secrets.token_hex(8)


@dataclass
class Changes:
    """One shard's write: keys to set and to remove."""

    set: dict[str, bytes] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Rec:
    rec: LogRecord
    bid: str
    skey: str | None  # the key's state key; None for a bucket op
    t_us: int
    rec_us: int


@dataclass(frozen=True, slots=True)
class ListedVersion:
    """One version (or delete marker) a bucket listing found: ``mtime_us`` is its LastModified
    (radosgw lists milliseconds; Tentacle whole seconds), ``seq`` its ``model.listed_seq``."""

    key: str
    ver: str | None
    marker: bool
    etag: str | None
    sc: str | None
    mtime_us: int
    seq: str


# A listing's LastModified is truncated (milliseconds, or seconds): within this of a record's
# mtime, the null version with the same ETag is the one the record wrote.
LISTED_MTIME_SLACK_US = 1_000_000


def same_version(old: Version, marker: bool, etag: str | None, mtime: int, *, loose: bool) -> bool:
    """Whether a write of (``marker``, ``etag``, ``mtime``) with ``old``'s version id is ``old``
    itself. ``loose``: one side comes from a listing, whose mtime is truncated: a version id
    names one version; the null version needs its mtime within ``LISTED_MTIME_SLACK_US``."""
    if old.marker != marker or (not marker and old.etag != etag):
        return False
    if old.mtime_us == mtime:
        return True
    return loose and (old.ver is not None or abs(old.mtime_us - mtime) < LISTED_MTIME_SLACK_US)


def _fresh(lv: ListedVersion, listed_us: int) -> Version:
    """A listed version the schedule did not know: its age counts from its mtime."""
    return Version(lv.seq, lv.ver, lv.marker, lv.etag, lv.sc, lv.mtime_us, lv.mtime_us, None, listed_us)


def _take_note(st: KeyState, v: Version) -> None:
    """``v`` is the copy the key's transition note announced (same ETag, the target class):
    its age counts from the original's, as a record of it would (``_write``); the note is used."""
    note = st.note
    if note is not None and not v.marker and v.etag == note.etag and (v.sc or "STANDARD") == note.sc:
        v.born_us = note.born_us
        st.note = None


def mtime_us(r: LogRecord, t_us: int) -> int:
    """The written object's mtime (the record's ``mtime``, else its time), at most its time:
    what its age counts from."""
    return min(parse_rfc3339(r.mtime), t_us) if r.mtime else t_us


class ShardBatch:
    """The records of one log object that fall in one schedule shard, applied to what the shard
    holds: ``keys()`` to read, ``load``, ``apply``, then ``changes``. Pure: the same records on the
    same values give the same changes."""

    def __init__(self, rules: RuleSet, layout: Layout, records: Sequence[LogRecord]) -> None:
        self.rules = rules
        self.layout = layout
        self._states: dict[str, KeyState | None] = {}
        self._dirty: set[str] = set()
        # Due keys set (value) or removed (None) by this batch; the last word wins.
        self._dues: dict[str, bytes | None] = {}
        self._prepared = [p for p in map(self._prepare, records) if p is not None]

    def _prepare(self, r: LogRecord) -> _Rec | None:
        if not self.rules.governs(r.qualified_bucket):
            return None
        bid = self.layout.shard(r.tenant or "", r.bucket)[1]
        skey = state_key(bid, key_hash(r.key)) if r.key is not None and not r.is_bucket_op else None
        return _Rec(r, bid, skey, data_time_us(r), r.recorded_us)

    def keys(self) -> list[str]:
        return sorted({p.skey for p in self._prepared if p.skey is not None})

    def load(self, values: Mapping[str, bytes], keys: Sequence[str] | None = None) -> None:
        for k in self.keys() if keys is None else keys:
            raw = values.get(k)
            self._states[k] = KeyState.decode(raw) if raw is not None else None

    def apply(self, read_prefix: PrefixReader) -> None:
        for p in self._prepared:
            r = p.rec
            if r.op == "bucket_delete":
                self._drop_bucket(p, read_prefix)
            elif p.skey is not None and r.key is not None:
                st = self._states.get(p.skey) or KeyState(r.tenant or "", r.bucket, r.key)
                self._states[p.skey] = st
                self._dirty.add(p.skey)
                if r.op == "delete":
                    self._delete(p, st)
                elif r.op in ("write", "delete_marker"):
                    self._write(p, st)

    # ------------------------------------------------------------------ records

    def _write(self, p: _Rec, st: KeyState) -> None:
        r = p.rec
        marker = r.op == "delete_marker"
        mtime = mtime_us(r, p.t_us)
        same = st.find(r.version_id)
        if same is not None:
            old = st.versions[same]
            if same_version(old, marker, r.etag, mtime, loose=is_listed(old.seq)):
                # Tags or ACL changed (or a re-baseline listed it again, or this is the record
                # of a version our listing found first): same place, same age.
                if old.mtime_us != mtime:  # listed: the record's mtime is the precise one
                    if old.born_us == old.mtime_us:
                        old.born_us = mtime
                    old.mtime_us = mtime
                old.sc = r.storage_class or old.sc
                old.rec_us = p.rec_us
                _take_note(st, old)  # the record of a transition's copy our listing found first
                self._schedule(p.bid, p.rec.qualified_bucket, st, old)
                return
            self._cancel(old)
            del st.versions[same]
        born = mtime
        note, st.note = st.note, None  # a note is for the key's next write only
        if (
            note is not None
            and not marker
            and note.etag == r.etag
            and note.sc == (r.storage_class or "STANDARD")
        ):
            born = note.born_us
        new = Version(
            r.seq,
            r.version_id,
            marker,
            None if marker else r.etag,
            r.storage_class,
            mtime,
            born,
            None,
            p.rec_us,
        )
        bisect.insort(st.versions, new, key=lambda v: v.seq)
        self._settle(p, st, new)

    def _delete(self, p: _Rec, st: KeyState) -> None:
        at = st.find(p.rec.version_id)
        if at is None:
            return  # a version written before the bucket was governed, or deleted already
        self._cancel(st.versions.pop(at))
        self._settle(p, st)

    def _settle(self, p: _Rec, st: KeyState, fresh: Version | None = None) -> None:
        """The newest version is current, every other one noncurrent (since this record when it
        just became so); ``fresh`` and the versions whose state changed are scheduled again."""
        for i, v in enumerate(st.versions):
            current = i == len(st.versions) - 1
            if current and v.nc_us is not None:
                v.nc_us = None
            elif not current and v.nc_us is None:
                v.nc_us = p.t_us
            elif v is not fresh and not (v.marker and len(st.versions) == 1):
                continue  # (a marker left alone by this record is due for removal)
            self._schedule(p.bid, p.rec.qualified_bucket, st, v)

    def _schedule(self, bid: str, qualified: str, st: KeyState, v: Version) -> None:
        self._cancel(v)
        if v.marker and v.nc_us is None:
            if len(st.versions) != 1:
                return  # a marker over versions: S3 and radosgw leave it
            # An expired object delete marker: its key's only version.
            dues = self.rules.marker(qualified, st.key, born_us=v.mtime_us)
        elif v.nc_us is None:
            dues = self.rules.current(qualified, st.key, born_us=v.born_us, storage_class=v.sc)
        else:
            # A noncurrent delete marker too: radosgw's noncurrent expiry removes every entry
            # that is not current (rgw_lc.cc ``LCOpAction_NonCurrentExpiration``).
            dues = self.rules.noncurrent(qualified, st.key, since_us=v.nc_us)
        kh, vh = key_hash(st.key), version_hash(v.ver)
        for d in dues:
            dkey = due_key(d.due_us, bid, kh, vh, d.rule.n, d.action)
            entry = DueEntry(
                st.tenant, st.bucket, st.key, v.ver, v.etag, v.mtime_us, v.born_us, d.action, d.rule.id,
                d.rule.storage_class, dict(d.rule.tags), v.marker,
            )  # fmt: skip
            self._dues[dkey] = entry.encode()
            v.due.append(dkey)

    def listed(
        self,
        tenant: str,
        bucket: str,
        versions: Sequence[ListedVersion],
        *,
        continued: bool,
        complete: bool = True,
        listed_us: int,
    ) -> None:
        """A listing page's versions of one key (newest first, as listed; at ``listed_us``).
        Not ``continued`` (the page lists the key from its newest version): the key takes the
        listed stack, each version noncurrent since the mtime of the one above it; a version the
        schedule already had (same id, ETag, mtime to the listing's precision) keeps its mtime,
        age and arrival; the others the schedule had are gone and their entries cancelled, but
        when the key may go on in the next page (not ``complete``), the versions an earlier
        listing found below these stay under them (the next page lists them). ``continued``
        (the key's older versions, after a page boundary): those the schedule lacks go under
        what it holds. Each version is scheduled by ``_schedule``, as a record's, once the key
        is ``complete`` (or ``finished``): a key split over pages (it alone fills one) gets no
        due entry before, so the executor never expires the version the next page starts
        after (gone, radosgw would start after the whole key: ``baseline.list_page``)."""
        if not versions:
            return
        qualified = f"{tenant}/{bucket}" if tenant else bucket
        if not self.rules.governs(qualified):
            return
        key = versions[0].key
        bid = self.layout.shard(tenant, bucket)[1]
        skey = state_key(bid, key_hash(key))
        old = self._states.get(skey)
        self._dirty.add(skey)
        if continued and old is not None:
            self._continued(bid, qualified, old, versions, complete=complete, listed_us=listed_us)
            return
        prev: dict[str | None, Version] = {}
        kept: list[Version] = []
        if old is not None:
            ids = {lv.ver for lv in versions}
            floor = versions[-1].seq
            for v in old.versions:
                if not complete and is_listed(v.seq) and v.seq < floor and v.ver not in ids:
                    kept.append(v)  # listed after these before: the next page's
                    continue
                self._cancel(v)
                prev[v.ver] = v
        st = KeyState(tenant, bucket, key, kept, note=old.note if old is not None else None)
        for lv in reversed(versions):
            keep = prev.get(lv.ver)
            if keep is not None and same_version(keep, lv.marker, lv.etag, lv.mtime_us, loose=True):
                v = Version(lv.seq, lv.ver, lv.marker, keep.etag, lv.sc or keep.sc, keep.mtime_us, keep.born_us,
                            None, keep.rec_us)  # fmt: skip
            else:
                v = _fresh(lv, listed_us)
                _take_note(st, v)
            st.versions.append(v)
        for below, above in zip(st.versions, st.versions[1:], strict=False):
            below.nc_us = above.mtime_us
        self._states[skey] = st
        if complete:
            for v in st.versions:
                self._schedule(bid, qualified, st, v)

    def _continued(
        self,
        bid: str,
        qualified: str,
        st: KeyState,
        versions: Sequence[ListedVersion],
        *,
        complete: bool,
        listed_us: int,
    ) -> None:
        """A continued page's versions of a split key: every one is older than what the previous
        pages listed (the page starts after their last). Those the schedule lacks go under them
        (their listed seqs are the smallest); one a record put in the key meanwhile (the
        follower lagging: a record's seq sorts on top) takes its listed seq and goes there too.
        A version whose neighbour above changed is noncurrent since that one's mtime."""
        above = {
            id(v): (st.versions[i + 1] if i + 1 < len(st.versions) else None)
            for i, v in enumerate(st.versions)
        }
        held = {v.ver: v for v in st.versions}
        for lv in versions:
            v = held.get(lv.ver)
            if v is None:
                st.versions.append(v := _fresh(lv, listed_us))
                _take_note(st, v)
            elif not is_listed(v.seq) and same_version(v, lv.marker, lv.etag, lv.mtime_us, loose=True):
                v.seq = lv.seq
        st.versions.sort(key=lambda v: v.seq)
        for i, v in enumerate(st.versions):
            up = st.versions[i + 1] if i + 1 < len(st.versions) else None
            if id(v) in above and above[id(v)] is up:
                continue
            v.nc_us = None if up is None else up.mtime_us
            if not complete:
                self._cancel(v)  # scheduled with the key's last page
        if complete:
            for v in st.versions:
                self._schedule(bid, qualified, st, v)

    def finished(self, tenant: str, bucket: str, key: str) -> None:
        """A key split over pages whose last listed versions ended a page (the next page starts
        past it): schedule its versions now, as a ``complete`` page of it would."""
        qualified = f"{tenant}/{bucket}" if tenant else bucket
        if not self.rules.governs(qualified):
            return
        bid = self.layout.shard(tenant, bucket)[1]
        skey = state_key(bid, key_hash(key))
        st = self._states.get(skey)
        if st is None:
            return
        self._dirty.add(skey)
        for v in st.versions:
            self._schedule(bid, qualified, st, v)

    def recompute(self, skey: str, st: KeyState) -> None:
        """Schedule every version of a stored key again under the current rules (``reschedule``):
        a key of a bucket no rule names any more is dropped."""
        bid = skey[len(KEY_PREFIX) :].split(".", 1)[0]
        qualified = f"{st.tenant}/{st.bucket}" if st.tenant else st.bucket
        self._states[skey] = st
        self._dirty.add(skey)
        governed = self.rules.governs(qualified)
        for v in st.versions:
            if governed:
                self._schedule(bid, qualified, st, v)
            else:
                self._cancel(v)
        if not governed:
            st.versions, st.note = [], None

    def _cancel(self, v: Version) -> None:
        for dkey in v.due:
            self._dues[dkey] = None
        v.due = []

    def _drop_bucket(self, p: _Rec, read_prefix: PrefixReader) -> None:
        """A deleted bucket holds nothing: drop every version recorded before the delete (one
        recorded after it belongs to the bucket's next lifetime)."""
        prefix = bucket_prefix(p.bid)
        for k, raw in read_prefix(prefix):
            if k not in self._states:
                self._states[k] = KeyState.decode(raw)
        for k, st in sorted(self._states.items()):
            if st is None or not k.startswith(prefix):
                continue
            keep = [v for v in st.versions if v.rec_us > p.rec_us]
            for v in st.versions:
                if v.rec_us <= p.rec_us:
                    self._cancel(v)
            st.versions, st.note = keep, None
            self._dirty.add(k)

    # ------------------------------------------------------------------ the write

    def changes(self, applied: str | None) -> Changes:
        """The shard's write: every state and due key this batch changed, and (unless None)
        the log object applied."""
        out = Changes()
        for k in sorted(self._dirty):
            st = self._states.get(k)
            if st is None or (not st.versions and st.note is None):
                out.remove.append(k)
            else:
                out.set[k] = st.encode()
        for dkey, raw in sorted(self._dues.items()):
            if raw is None:
                out.remove.append(dkey)
            else:
                out.set[dkey] = raw
        if applied is not None:
            out.set[APPLIED_KEY] = applied.encode()
        return out


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Head:
    """A shard's own keys: the last log object applied, the write token, whether its meta is
    this layout's (False: absent or another rules fingerprint)."""

    applied: str
    gen: str
    has_meta: bool
    current_rules: bool


@dataclass(frozen=True, slots=True)
class Pending:
    """A due entry as read: its shard, key and raw value (the guard of its removal)."""

    shard: int
    dkey: str
    raw: bytes
    entry: DueEntry


class Schedule:
    """The schedule shards of one ``Layout`` in a store: the guarded apply of a log object, the
    due entries, and the executor's guarded writes."""

    def __init__(self, store: ObjectStore, layout: Layout, rules: RuleSet) -> None:
        self.store = store
        self.layout = layout
        self.rules = rules
        self._next_shard = 0

    def read_prefix(self, n: int) -> PrefixReader:
        oid = self.layout.oid(n)

        def read(prefix: str) -> Iterator[tuple[str, bytes]]:
            return omap_iter(self.store, oid, end_before=prefix_end(prefix), prefix=prefix)

        return read

    def head(self, n: int) -> Head:
        got = self.store.omap_get(self.layout.oid(n), [APPLIED_KEY, GEN_KEY, META_KEY])
        raw = got.get(META_KEY)
        same_rules = self.layout.check_meta(raw)
        return Head(
            got.get(APPLIED_KEY, b"").decode(),
            got.get(GEN_KEY, b"").decode(),
            raw == self.layout.meta(),
            same_rules,
        )

    def apply(self, n: int, obj: str, records: Sequence[LogRecord], *, head: Head | None = None) -> bool:
        """Apply ``records`` (of log object ``obj``) to shard ``n`` unless it has them already.
        True when written. ``LeaseLost`` when another process wrote the shard meanwhile."""
        oid = self.layout.oid(n)
        head = head or self.head(n)
        if head.applied >= obj:
            return False
        if not head.current_rules:
            raise PermanentError(
                f"lifecycle schedule {oid} was computed under other rules: reschedule it first"
            )
        batch = ShardBatch(self.rules, self.layout, records)
        batch.load(self.store.omap_get(oid, batch.keys()))
        batch.apply(self.read_prefix(n))
        changes = batch.changes(obj)
        op = WriteOp(
            asserts=[(APPLIED_KEY, Cmp.EQ, head.applied), (GEN_KEY, Cmp.EQ, head.gen)],
            set=changes.set,
            remove=changes.remove,
        )
        op.set[GEN_KEY] = new_gen().encode()
        if not head.has_meta:
            op.set[META_KEY] = self.layout.meta()
        self._execute(oid, op, f"applying {obj}")
        return True

    def _execute(self, oid: str, op: WriteOp, what: str) -> None:
        try:
            self.store.execute(oid, op)
        except CompareFailed as ex:
            raise LeaseLost(f"lifecycle schedule {oid} was written by another process while {what}") from ex

    def reschedule(self, n: int, *, page: int = 200, marks: Mapping[str, bytes] | None = None) -> int:
        """Compute shard ``n``'s due entries again under the current rules, from the versions it
        holds (no bucket is listed), then mark it with their fingerprint (and set ``marks``, the
        buckets' ``r.`` keys, with ``source = "bucket"``). Pages of ``page`` keys, each one op
        guarded by ``g``; interrupted, it starts again from the first key (each page is complete
        in itself). Returns the keys rescheduled."""
        last: dict[str, bytes | None] = {META_KEY: self.layout.meta(), **(marks or {})}
        for mark in self.baseline_marks(n):
            if not self.rules.governs(mark.qualified_bucket):
                # No rule names it any more: should one again, it is listed again.
                last[baseline_key(self.layout.shard(mark.tenant, mark.bucket)[1])] = None
        return self._recompute(n, KEY_PREFIX, last, page=page)

    def reschedule_bucket(self, n: int, tenant: str, bucket: str, *, page: int = 200) -> int:
        """``reschedule`` for one bucket of shard ``n`` (``source = "bucket"``: its rules changed),
        its ``r.`` key set to its rules' fingerprint last (removed when it has no configuration:
        its keys are dropped). Returns the keys rescheduled."""
        bid = self.layout.shard(tenant, bucket)[1]
        qualified = f"{tenant}/{bucket}" if tenant else bucket
        fp = self.rules.bucket_fingerprint(qualified)
        mark = dumps({"t": tenant, "b": bucket, "fp": fp}) if fp else None
        last: dict[str, bytes | None] = {rules_key(bid): mark}
        if not fp:
            last[baseline_key(bid)] = None  # a configuration put back later lists it again
        return self._recompute(n, bucket_prefix(bid), last, page=page)

    def _recompute(self, n: int, prefix: str, last: Mapping[str, bytes | None], *, page: int) -> int:
        oid = self.layout.oid(n)
        gen, count, after = self.head(n).gen, 0, prefix
        while True:
            rows = self.store.omap_page(
                oid, start_after=after, end_before=prefix_end(prefix), prefix=prefix, limit=page
            )
            batch = ShardBatch(self.rules, self.layout, [])
            for k, raw in rows:
                batch.recompute(k, KeyState.decode(raw))
            changes = batch.changes(None)
            op = WriteOp(asserts=[(GEN_KEY, Cmp.EQ, gen)], set=changes.set, remove=changes.remove)
            gen = new_gen()
            op.set[GEN_KEY] = gen.encode()
            if not rows:
                for k, v in last.items():
                    if v is None:
                        op.remove.append(k)
                    else:
                        op.set[k] = v
            self._execute(oid, op, "rescheduling")
            if not rows:
                return count
            count += len(rows)
            after = rows[-1][0]

    # ------------------------------------------------------------------ the baseline listing

    def baseline_mark(self, tenant: str, bucket: str) -> BaselineMark | None:
        """The bucket's listing state (None: never listed since it gained rules)."""
        n, bid = self.layout.shard(tenant, bucket)
        raw = self.store.omap_get(self.layout.oid(n), [baseline_key(bid)]).get(baseline_key(bid))
        return BaselineMark.decode(raw) if raw is not None else None

    def baseline_marks(self, n: int) -> Iterator[BaselineMark]:
        for _, raw in omap_iter(self.store, self.layout.oid(n), prefix=BASELINE_PREFIX):
            yield BaselineMark.decode(raw)

    def apply_listing(
        self,
        head: Head,
        mark: BaselineMark,
        keys: Sequence[tuple[Sequence[ListedVersion], bool, bool]],
        *,
        listed_us: int,
        ended: str | None = None,
    ) -> None:
        """Apply one listing page of ``mark``'s bucket (per key: its versions newest first,
        whether they continue the previous page's last key, and whether the key ends in this
        page: ``ShardBatch.listed``; ``ended``: a split key the previous page ended exactly,
        ``ShardBatch.finished``) and write ``mark`` (the position
        after this page), in one op guarded by ``head``'s ``g``: ``head`` must be read before
        the page was listed, so a write to the shard since (a record applied by a stale
        process) fails this one (``LeaseLost``) rather than be replaced by an older listing."""
        n, bid = self.layout.shard(mark.tenant, mark.bucket)
        oid = self.layout.oid(n)
        if not head.current_rules:
            raise PermanentError(
                f"lifecycle schedule {oid} was computed under other rules: reschedule it first"
            )
        batch = ShardBatch(self.rules, self.layout, [])
        names = {vs[0].key for vs, _, _ in keys if vs} | ({ended} if ended is not None else set())
        skeys = sorted(state_key(bid, key_hash(k)) for k in names)
        batch.load(self.store.omap_get(oid, skeys), skeys)
        if ended is not None:
            batch.finished(mark.tenant, mark.bucket, ended)
        for versions, continued, complete in keys:
            batch.listed(
                mark.tenant,
                mark.bucket,
                versions,
                continued=continued,
                complete=complete,
                listed_us=listed_us,
            )
        changes = batch.changes(None)
        op = WriteOp(asserts=[(GEN_KEY, Cmp.EQ, head.gen)], set=changes.set, remove=changes.remove)
        op.set[GEN_KEY] = new_gen().encode()
        op.set[baseline_key(bid)] = mark.encode()
        if not head.has_meta:
            op.set[META_KEY] = self.layout.meta()
        self._execute(oid, op, f"applying a listing page of {mark.qualified_bucket}")

    def bucket_marks(self, n: int) -> Iterator[tuple[str, str]]:
        """(qualified bucket, rules fingerprint) of every bucket shard ``n`` holds rules for
        (``source = "bucket"``)."""
        for _, raw in omap_iter(self.store, self.layout.oid(n), prefix=RULES_PREFIX):
            doc = json.loads(raw)
            t, b = str(doc["t"]), str(doc["b"])
            yield (f"{t}/{b}" if t else b), str(doc["fp"])

    def buckets_held(self, n: int) -> set[str]:
        """Every bucket shard ``n`` keeps keys of (a page of every key state: used once, when the
        rules' source changed)."""
        out: set[str] = set()
        for _, raw in omap_iter(self.store, self.layout.oid(n), prefix=KEY_PREFIX):
            doc = json.loads(raw)
            out.add(f"{doc['t']}/{doc['b']}" if doc["t"] else str(doc["b"]))
        return out

    # ------------------------------------------------------------------ the executor's side

    def due(self, now_us: int, limit: int) -> list[Pending]:
        """Up to ``limit`` entries due at or before ``now_us``, earliest first within each shard.
        The shards are read in turn from one that moves on with every call, each up to what is
        left of ``limit``: a shard's backlog neither starves the others nor waits for them."""
        out: list[Pending] = []
        first, self._next_shard = self._next_shard, (self._next_shard + 1) % self.layout.shards
        for i in range(self.layout.shards):
            n = (first + i) % self.layout.shards
            after = DUE_PREFIX
            while len(out) < limit:
                page = self.store.omap_page(
                    self.layout.oid(n), start_after=after, end_before=due_end(now_us), prefix=DUE_PREFIX,
                    limit=min(limit - len(out), 1000),
                )  # fmt: skip
                if not page:
                    break
                out.extend(Pending(n, k, raw, DueEntry.decode(raw)) for k, raw in page)
                after = page[-1][0]
        return out

    def finish(
        self, n: int, done: Sequence[Pending], failed: Mapping[str, tuple[Pending, str]], *, now_us: int
    ) -> int:
        """Remove the entries acted on (or found moot) and move the failed ones to the failed
        list, in one op guarded by each entry's value: an entry another writer changed or removed
        since it was read stays as it is (it is taken again, and re-checked, when due). Returns
        how many were removed; 0 when the guard failed."""
        op = WriteOp()
        for p in done:
            op.asserts.append((p.dkey, Cmp.EQ, p.raw.decode()))
            op.remove.append(p.dkey)
        for p, reason in failed.values():
            op.asserts.append((p.dkey, Cmp.EQ, p.raw.decode()))
            op.remove.append(p.dkey)
            doc = {**json.loads(p.raw), "error": reason, "failed_us": now_us, "due_key": p.dkey}
            op.set[FAILED_PREFIX + p.dkey[len(DUE_PREFIX) :]] = json.dumps(doc, ensure_ascii=True).encode()
        if op.is_empty():
            return 0
        op.set[GEN_KEY] = new_gen().encode()
        try:
            self.store.execute(self.layout.oid(n), op)
        except CompareFailed:
            return 0
        return len(op.remove)

    def set_note(self, p: Pending, note: Note | None) -> bool:
        """Record (or clear) a transition in flight on the entry's key, guarded by the key's state
        as read. False when the key is gone from the schedule or changed meanwhile."""
        n, bid = self.layout.shard(p.entry.tenant, p.entry.bucket)
        oid, skey = self.layout.oid(n), state_key(bid, key_hash(p.entry.key))
        raw = self.store.omap_get(oid, [skey]).get(skey)
        if raw is None:
            return False
        st = KeyState.decode(raw)
        st.note = note
        op = WriteOp(
            asserts=[(skey, Cmp.EQ, raw.decode())], set={skey: st.encode(), GEN_KEY: new_gen().encode()}
        )
        try:
            self.store.execute(oid, op)
        except CompareFailed:
            return False
        return True

    def failed(self, n: int) -> Iterator[tuple[str, dict[str, object]]]:
        for k, raw in omap_iter(self.store, self.layout.oid(n), prefix=FAILED_PREFIX):
            yield k, json.loads(raw)

    def retry_failed(self, n: int) -> int:
        """Put shard ``n``'s failed entries back in the schedule, due now (re-checked as ever)."""
        op = WriteOp()
        for k, doc in self.failed(n):
            due = str(doc.pop("due_key"))
            doc.pop("error", None)
            doc.pop("failed_us", None)
            op.remove.append(k)
            op.set[due] = DueEntry.decode(json.dumps(doc).encode()).encode()
        if op.is_empty():
            return 0
        op.set[GEN_KEY] = new_gen().encode()
        self.store.execute(self.layout.oid(n), op)
        return len(op.remove)


def all_states(store: ObjectStore, layout: Layout, n: int) -> Iterator[tuple[str, KeyState]]:
    """Every key state of shard ``n``, paged."""
    for k, raw in omap_iter(store, layout.oid(n), prefix=KEY_PREFIX):
        yield k, KeyState.decode(raw)


__all__ = [
    "Changes", "Head", "ListedVersion", "Pending", "Schedule", "ShardBatch", "all_states", "mtime_us",
    "same_version",
]  # fmt: skip
