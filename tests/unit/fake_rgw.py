"""An in-memory radosgw for the follower's unit tier: the admin REST API the follower reads (data
log, bucket-index logs, bucket stats and metadata) and the two S3 reads it makes (listings for a
full sync, size/etag lookups), backed by dictionaries and driven by a fake clock.

``FakeRadosgw`` *is* an ``AdminClient``: it answers ``AdminClient.request`` with the JSON
documents radosgw sends (``rgw_module/README.md`` lists them), so the client's own parsing and
error translation run as they do against the lab; only the S3 reads, which go through boto3, are
answered at the method level. Every bucket-index-log entry is a captured entry
(``rgw_bilog_captured*.json``) with its position, names and times replaced, so the fake speaks
what the chosen release speaks. Release differences modelled (README, "What Reef and Tentacle
write differently"): Pacific reshards to a new instance whose old log answers 404 at once; Reef
and Tentacle reshard in place to a new log generation and keep the old one; their data-log
entries name the generation; Tentacle's data-log page marker is "" at the end of a shard; its
listings give whole seconds. The data log coalesces as radosgw's does (``rgw_data_log_window``).

A tenant's bucket is a bucket named ``tenant/name``, as radosgw's admin API lists, logs and
answers it (``/admin/bucket`` says ``"bucket": "name", "tenant": "tenant"``; the S3 spelling
``tenant:name`` answers 404 there and 400 as a ``bucket-instance``); its data-log shard is hashed
from the name within the tenant, as radosgw's. A deleted bucket's log answers 404 at once, as on
Pacific and Reef (measured a few milliseconds after the last DELETE). Not modelled:
versioning suspension, multipart internals, concurrent writes during a reshard. The data-log markers were not captured: they are opaque, sortable strings here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal, NoReturn

from changelog.errors import PermanentError
from changelog.pipeline.loop import Clocks
from rgw_module.admin import (
    MAX_ENTRIES,
    MAX_KEYS,
    AdminClient,
    BilogInfo,
    BucketStats,
    DataLogPage,
    ListedObject,
    NotFound,
    ObjectPage,
)
from rgw_module.mapping import BilogEntry, BucketShard, datalog_shard, split_name, str_hash_linux

Release = Literal["pacific", "reef", "tentacle"]
RELEASES: tuple[Release, ...] = ("pacific", "reef", "tentacle")
HERE = Path(__file__).parent
CAPTURED: dict[Release, Path] = {
    "pacific": HERE / "rgw_bilog_captured.json",
    "reef": HERE / "rgw_bilog_captured_reef.json",
    "tentacle": HERE / "rgw_bilog_captured_tentacle.json",
}
# The captured entry each generated one is made from: (case "operation", index of the entry).
TEMPLATES: dict[str, tuple[str, int]] = {
    "write": ("PUT a", 0),
    "del": ("DELETE b", 0),
    "write_versioned": ("versioned PUT v", 0),
    "link_olh": ("versioned PUT v", 1),
    "link_olh_del": ("delete (marker)", 0),
    "unlink_instance": ("delete specific version v1", 0),
    "del_versioned": ("delete specific version v1", 1),
}
# 2026-12-05, the day of the Reef and Tentacle captures.
T0 = 1_796_500_000.0
# radosgw's rgw_data_log_window: a changed shard is logged at most once per window; a shard
# changed again inside it is logged again by the renewal that runs every 3/4 of the window.
DATA_LOG_WINDOW = 30.0
# rgw_shards_mod's first prime (bucket index shard counts up to it).
RGW_SHARDS_PRIME_0 = 7877
RGW_SHARDS_PRIME_1 = 65521
ENDPOINT = "http://fake-radosgw.invalid"
OWNER = "tester"


class FakeClock:
    """Wall clock, monotonic clock and sleep of one fake world: only ``advance`` moves them."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def clocks(self) -> Clocks:
        return Clocks(clock=self.time, monotonic=self.monotonic, sleep=self.sleep)


def captured_entries(release: Release) -> list[dict[str, Any]]:
    """Every bucket-index-log entry captured on ``release``."""
    doc = json.loads(CAPTURED[release].read_text())
    return [e for case in doc["cases"] for e in case["entries"]]


def _templates(release: Release) -> dict[str, dict[str, Any]]:
    cases = {c["operation"]: c for c in json.loads(CAPTURED[release].read_text())["cases"]}
    return {name: cases[op]["entries"][i] for name, (op, i) in TEMPLATES.items()}


def index_shard(key: str, num_shards: int) -> int:
    """The bucket-index shard radosgw puts ``key`` in (``rgw_bucket_shard_index``; checked
    against the captures: "a" in shard 1 of 11, "b" in 10, "v" in 0)."""
    if num_shards <= 0:
        return -1
    sid = str_hash_linux(key)
    sid ^= (sid & 0xFF) << 24
    return sid % (RGW_SHARDS_PRIME_0 if num_shards <= RGW_SHARDS_PRIME_0 else RGW_SHARDS_PRIME_1) % num_shards


def index_name(key: str) -> str:
    """The bucket-index name of an S3 key: a leading ``_`` is escaped (``__key``)."""
    return "_" + key if key.startswith("_") else key


def rfc3339_ns(t_ns: int) -> str:
    sec, ns = divmod(t_ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def _digest_id(seed: str, length: int = 32) -> str:
    """A radosgw-looking id (letters, digits, ``.``, ``-``), stable for a seed."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"
    raw = hashlib.blake2b(seed.encode(), digest_size=length).digest()
    return "".join(alphabet[b % len(alphabet)] for b in raw)


@dataclass
class _Version:
    version_id: str | None  # None: the object of an unversioned bucket
    size: int | None
    etag: str | None
    mtime_ns: int
    delete_marker: bool = False


@dataclass
class _Shard:
    entries: list[dict[str, Any]] = field(default_factory=list)
    index_ver: int = 0
    objver: int = 4


@dataclass
class _Generation:
    num_shards: int
    shards: dict[int, _Shard]


@dataclass
class _Bucket:
    name: str
    bucket_id: str
    marker: str
    creation_ns: int
    versioned: bool
    generations: dict[int, _Generation]
    latest_gen: int = 0
    objects: dict[str, list[_Version]] = field(default_factory=dict)  # newest version first

    @property
    def num_shards(self) -> int:
        return self.generations[self.latest_gen].num_shards


def _new_generation(num_shards: int) -> _Generation:
    return _Generation(num_shards, {n: _Shard() for n in (range(num_shards) if num_shards > 0 else (-1,))})


@dataclass
class _Failure:
    method: str
    exc: BaseException
    match: str | None
    times: int


@dataclass(frozen=True)
class Call:
    """One ``AdminClient`` method called: its first argument and, for reads that resume, the
    marker it resumed from."""

    method: str
    arg: str
    marker: str = ""


class FakeRadosgw(AdminClient):
    """One zone of an in-memory radosgw (module docstring). Thread-safe: the follower calls it
    from its worker pool."""

    def __init__(self, clock: FakeClock, *, release: Release = "reef", datalog_shards: int = 16) -> None:
        super().__init__(ENDPOINT, "fake-access", "fake-secret")
        self.clock = clock
        self.release: Release = release
        self.generation_aware = release != "pacific"  # Reef and later: log generations
        self.list_page = MAX_KEYS  # S3 listing page size: lower it to make full syncs page
        self.window = DATA_LOG_WINDOW
        self.calls: list[Call] = []
        # bucket -> the log generation its next entries go to (default: the newest): radosgw
        # adding an entry to a finished generation (a write completing across a reshard).
        self.log_generation: dict[str, int] = {}
        self.produced: list[dict[str, Any]] = []  # every bilog entry ever written
        self._templates = _templates(release)
        self._zone = self._templates["write"]["op_tag"].split(".")[0]
        self._lock = threading.RLock()
        self._failures: list[_Failure] = []
        self._buckets: dict[str, _Bucket] = {}
        self._retired: dict[str, _Bucket] = {}  # "name:id" -> an old instance kept readable
        self._instances = 0
        self._counter = 0
        self._dl: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(datalog_shards)]
        self._dl_last: list[str] = [""] * datalog_shards
        self._dl_seq = 0
        self._dl_expire: dict[BucketShard, float] = {}
        self._dl_renew: set[BucketShard] = set()
        self._dl_next_renew = clock.time() + self.window * 3 / 4

    # ------------------------------------------------------------------ driving it from tests

    def create_bucket(self, name: str, *, shards: int = 3, versioned: bool = False) -> str:
        with self._lock:
            if name in self._buckets:
                raise PermanentError(f"fake radosgw: bucket {name} exists")
            if ":" in name or name.count("/") > 1:
                raise PermanentError(f"fake radosgw: {name!r} is not a bucket name (tenant/name)")
            bucket_id = self._new_instance_id()
            self._buckets[name] = _Bucket(
                name, bucket_id, bucket_id, self._now_ns(), versioned, {0: _new_generation(shards)}
            )
            return bucket_id

    def put(self, bucket: str, key: str, data: bytes = b"x") -> str | None:
        """A PUT: returns the new version id (None in an unversioned bucket)."""
        with self._lock:
            b = self._bucket(bucket)
            etag = hashlib.md5(data).hexdigest()
            now = self._now_ns()
            if not b.versioned:
                b.objects[key] = [_Version(None, len(data), etag, now)]
                self._log(b, "write", key, "", now)
                return None
            vid = self._new_version_id()
            b.objects.setdefault(key, []).insert(0, _Version(vid, len(data), etag, now))
            self._log(b, "write_versioned", key, vid, now)
            self._log(b, "link_olh", key, vid, now)
            return vid

    def delete(self, bucket: str, key: str) -> str | None:
        """A DELETE without a version id: returns the delete marker's id in a versioned bucket.
        As radosgw: a missing key leaves no entry, nor does a second delete marker."""
        with self._lock:
            b = self._bucket(bucket)
            now = self._now_ns()
            versions = b.objects.get(key)
            if not b.versioned:
                if versions:
                    del b.objects[key]
                    self._log(b, "del", key, "", versions[0].mtime_ns)
                return None
            if versions and versions[0].delete_marker:
                return None
            vid = self._new_version_id()
            b.objects.setdefault(key, []).insert(0, _Version(vid, None, None, now, delete_marker=True))
            self._log(b, "link_olh_del", key, vid, now)
            return vid

    def initiate_upload(self, bucket: str, key: str) -> str:
        """CreateMultipartUpload: the upload's meta object is written in the multipart namespace
        (``_multipart_<key>.<upload id>.meta``, in the key's index shard), as Pacific logs it."""
        with self._lock:
            b = self._bucket(bucket)
            self._counter += 1
            upload_id = "2~" + _digest_id(f"upload{self._counter}", 32).replace(".", "_")
            self._log(b, "write", key, "", self._now_ns(), name=f"_multipart_{key}.{upload_id}.meta")
            return upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, part: int) -> None:
        with self._lock:
            self._log(self._bucket(bucket), "write", key, "", self._now_ns(), name=f"_multipart_{key}.{upload_id}.{part}")

    def end_upload(self, bucket: str, key: str, upload_id: str, parts: int, *, complete: bool) -> None:
        """CompleteMultipartUpload (the object written) or AbortMultipartUpload: the parts and
        the meta object are removed from the index, each removal logged."""
        with self._lock:
            b = self._bucket(bucket)
            now = self._now_ns()
            for part in range(1, parts + 1):
                self._log(b, "del", key, "", now, name=f"_multipart_{key}.{upload_id}.{part}")
            self._log(b, "del", key, "", now, name=f"_multipart_{key}.{upload_id}.meta")
        if complete:
            self.put(bucket, key, b"multipart")

    def delete_version(self, bucket: str, key: str, version_id: str) -> None:
        with self._lock:
            b = self._bucket(bucket)
            versions = b.objects.get(key, [])
            gone = next((v for v in versions if v.version_id == version_id), None)
            if gone is None:
                return
            versions.remove(gone)
            if not versions:
                del b.objects[key]
            self._log(b, "unlink_instance", key, version_id, gone.mtime_ns)
            if not gone.delete_marker:
                self._log(b, "del_versioned", key, version_id, gone.mtime_ns)

    def delete_bucket(self, bucket: str) -> None:
        """DeleteBucket: refused while it holds objects; its logs answer 404 from now on."""
        with self._lock:
            if self._bucket(bucket).objects:
                raise PermanentError(f"fake radosgw: bucket {bucket} is not empty (BucketNotEmpty)")
            del self._buckets[bucket]

    def reshard(self, bucket: str, num_shards: int, *, keep_old_log: bool = False) -> None:
        """``radosgw-admin bucket reshard``: Pacific makes a new instance (the old one's log is
        gone at once, the new one starts empty; with ``keep_old_log``, as when radosgw failed to
        clean the old index up, the old instance's log stays readable); Reef and later keep the
        instance and start a new, empty log generation beside the old one, which stays readable
        until trimmed."""
        with self._lock:
            b = self._bucket(bucket)
            if self.generation_aware:
                b.latest_gen += 1
                b.generations[b.latest_gen] = _new_generation(num_shards)
            else:
                if keep_old_log:
                    self._retired[f"{bucket}:{b.bucket_id}"] = copy.deepcopy(b)
                b.bucket_id = self._new_instance_id()
                b.generations = {0: _new_generation(num_shards)}

    def remove_generation(self, bucket: str, gen: int) -> None:
        """What ``radosgw-admin bilog autotrim`` does to an old generation: its log is gone."""
        with self._lock:
            b = self._bucket(bucket)
            if gen == b.latest_gen:
                raise PermanentError("fake radosgw: the newest generation cannot be removed")
            del b.generations[gen]

    def fail_next(
        self,
        method: str,
        exc: BaseException | type[BaseException],
        *,
        match: str | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls of ``method`` (an ``AdminClient`` method name) whose argument
        (a shard key, bucket name or data-log shard number) equals ``match`` raise ``exc``."""
        if not hasattr(AdminClient, method):
            raise AttributeError(f"AdminClient has no method {method}")
        error = exc(f"fake radosgw: {method} failed (injected)") if isinstance(exc, type) else exc
        with self._lock:
            self._failures.append(_Failure(method, error, match, times))

    def count(self, method: str, arg: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.method == method and (arg is None or c.arg == arg))

    def bucket_id(self, bucket: str) -> str:
        return self._bucket(bucket).bucket_id

    def shard_of(self, bucket: str, key: str) -> BucketShard:
        """The log stream a change of ``key`` goes to now."""
        b = self._bucket(bucket)
        return BucketShard(bucket, b.bucket_id, index_shard(key, b.num_shards), b.latest_gen)

    def datalog_shard_of(self, bucket: str, shard: int) -> int:
        """The data-log shard a bucket-index shard is logged to (``RGWDataChangesLog::choose_oid``)."""
        return datalog_shard(bucket, shard, len(self._dl))

    def bilog(self, bucket: str, *, gen: int | None = None) -> dict[int, list[dict[str, Any]]]:
        """The entries still in each shard's log of generation ``gen`` (default: the newest)."""
        with self._lock:
            b = self._bucket(bucket)
            g = b.generations[b.latest_gen if gen is None else gen]
            return {n: list(s.entries) for n, s in g.shards.items()}

    def datalog(self) -> list[dict[str, Any]]:
        """The data-log entries still held, over every shard."""
        with self._lock:
            return [e for shard in self._dl for _, e in shard]

    # ------------------------------------------------------------------ the fake's world

    def _bucket(self, name: str) -> _Bucket:
        b = self._buckets.get(name)
        if b is None:
            raise NotFound(f"fake radosgw: no bucket {name} (HTTP 404 NoSuchBucket)")
        return b

    def _now_ns(self) -> int:
        return int(round(self.clock.time() * 1_000_000)) * 1000

    def _new_instance_id(self) -> str:
        self._instances += 1
        return f"{self._zone}.4126.{self._instances}"

    def _new_version_id(self) -> str:
        self._counter += 1
        return _digest_id(f"version-{self._counter}")

    def _log(self, b: _Bucket, template: str, key: str, instance: str, ts_ns: int, *, name: str | None = None) -> None:
        """Append one entry, made from the captured ``template``, to the shard ``key`` is in;
        tell the data log. ``name``: the index name, when not the key's (the multipart namespace)."""
        gen_no = self.log_generation.get(b.name, b.latest_gen)
        gen = b.generations[gen_no]
        n = index_shard(key, gen.num_shards)
        shard = gen.shards[n]
        shard.index_ver += 1
        shard.objver += 2
        self._counter += 1
        tpl = self._templates[template]
        e = copy.deepcopy(tpl)
        subop = str(tpl["op_id"]).rsplit(".", 1)[1]
        bare = f"{shard.index_ver:011d}.{shard.objver}.{subop}"
        e["op_id"] = f"{n}#{bare}" if n >= 0 else bare
        tag = str(tpl["op_tag"])
        e["op_tag"] = tag[: max(0, len(tag) - 8)] + f"{self._counter:08x}"
        e["object"] = index_name(key) if name is None else name
        e["instance"] = instance
        e["index_ver"] = shard.index_ver
        e["timestamp"] = rfc3339_ns(ts_ns)
        e["ver"] = {"pool": tpl["ver"]["pool"], "epoch": self._counter}
        shard.entries.append(e)
        self.produced.append(e)
        self._datalog_change(BucketShard(b.name, b.bucket_id, n, gen_no))

    def _datalog_change(self, bs: BucketShard) -> None:
        """``RGWDataChangesLog::add_entry``: log the shard unless it was logged within the window;
        then it is logged by the next renewal."""
        now = self.clock.time()
        self._renew_datalog()
        if now < self._dl_expire.get(bs, float("-inf")):
            self._dl_renew.add(bs)
            return
        self._datalog_append(bs, now)

    def _renew_datalog(self) -> None:
        now = self.clock.time()
        if now < self._dl_next_renew:
            return
        for bs in sorted(self._dl_renew):
            self._datalog_append(bs, now)
        self._dl_renew.clear()
        self._dl_next_renew = now + self.window * 3 / 4

    def _datalog_append(self, bs: BucketShard, now: float) -> None:
        n = self.datalog_shard_of(bs.bucket, bs.shard)
        self._dl_seq += 1
        marker = (
            f"{0:020d}:{self._dl_seq:020d}"
            if self.generation_aware
            else f"1_{int(now):010d}.{self._dl_seq:06d}_1.1"
        )
        entry: dict[str, Any] = {
            "entity_type": "bucket",
            "key": f"{bs.bucket}:{bs.bucket_id}" + (f":{bs.shard}" if bs.shard >= 0 else ""),
            "timestamp": rfc3339_ns(int(now * 1e9)),
        }
        if self.generation_aware:
            entry["gen"] = bs.log_gen
        self._dl[n].append((marker, entry))
        self._dl_last[n] = marker
        self._dl_expire[bs] = now + self.window

    # ------------------------------------------------------------------ AdminClient methods

    def _gate(self, method: str, arg: object, marker: str = "") -> None:
        """Log the call; raise an injected failure if one matches."""
        with self._lock:
            self.calls.append(Call(method, str(arg), marker))
            for f in self._failures:
                if f.method == method and (f.match is None or f.match == str(arg)):
                    f.times -= 1
                    if f.times <= 0:
                        self._failures.remove(f)
                    raise f.exc

    def server_time_ns(self) -> int:
        self._gate("server_time_ns", "")
        return super().server_time_ns()

    def datalog_shards(self) -> int:
        self._gate("datalog_shards", "")
        return super().datalog_shards()

    def datalog_list(self, shard: int, marker: str = "", *, max_entries: int = MAX_ENTRIES) -> DataLogPage:
        self._gate("datalog_list", shard, marker)
        return super().datalog_list(shard, marker, max_entries=max_entries)

    def datalog_info(self, shard: int) -> str:
        self._gate("datalog_info", shard)
        return super().datalog_info(shard)

    def datalog_trim(self, shard: int, marker: str) -> None:
        self._gate("datalog_trim", shard)
        super().datalog_trim(shard, marker)

    def list_buckets(self) -> list[str]:
        self._gate("list_buckets", "")
        return super().list_buckets()

    def bucket_stats(self, bucket: str) -> BucketStats:
        self._gate("bucket_stats", bucket)
        return super().bucket_stats(bucket)

    def bucket_instance_id(self, bucket: str) -> str:
        self._gate("bucket_instance_id", bucket)
        return super().bucket_instance_id(bucket)

    def bucket_versioning(self, bucket: str, bucket_id: str) -> str:
        self._gate("bucket_versioning", bucket)
        return super().bucket_versioning(bucket, bucket_id)

    def bilog_list(
        self, bs: BucketShard, marker: str = "", *, max_entries: int = MAX_ENTRIES
    ) -> list[BilogEntry]:
        self._gate("bilog_list", bs.key, marker)
        return super().bilog_list(bs, marker, max_entries=max_entries)

    def bilog_info(self, bucket: str, bucket_id: str) -> BilogInfo:
        self._gate("bilog_info", bucket)
        return super().bilog_info(bucket, bucket_id)

    def bilog_max_marker(self, bs: BucketShard) -> str:
        self._gate("bilog_max_marker", bs.key)
        return super().bilog_max_marker(bs)

    def bilog_trim(self, bs: BucketShard, end_marker: str) -> None:
        self._gate("bilog_trim", bs.key)
        super().bilog_trim(bs, end_marker)

    # ------------------------------------------------------------------ S3 reads (method level)

    def _s3(self) -> NoReturn:
        raise AssertionError("the fake radosgw has no S3 client: every S3 read is answered in memory")

    def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        key_marker: str = "",
        version_marker: str = "",
        versions: bool,
        max_keys: int = MAX_KEYS,
    ) -> ObjectPage:
        self._gate("list_objects", bucket, key_marker)
        with self._lock:
            b = self._bucket(bucket)
            listed = [
                (key, v)
                for key in sorted(b.objects, key=str.encode)
                if key.startswith(prefix)
                for v in b.objects[key]
                if versions or (v is b.objects[key][0] and not v.delete_marker)
            ]
            start = self._listing_start(listed, key_marker, version_marker if versions else "")
            limit = min(max_keys, self.list_page)
            page = listed[start : start + limit]
            items = [self._listed(key, v, versions) for key, v in page]
            truncated = start + limit < len(listed) and bool(items)
            last = items[-1] if items else None
            return ObjectPage(
                items,
                last.key if last else key_marker,
                (last.version_id or "") if last and versions else "",
                truncated,
            )

    @staticmethod
    def _listing_start(listed: Sequence[tuple[str, _Version]], key_marker: str, version_marker: str) -> int:
        """Where a listing resumes: after the version ``version_marker`` of ``key_marker``, or
        after every version of ``key_marker`` (S3 compares keys as UTF-8 bytes)."""
        if not key_marker:
            return 0
        if version_marker:
            for i, (key, v) in enumerate(listed):
                if key == key_marker and (v.version_id or "null") == version_marker:
                    return i + 1
        marker = key_marker.encode()
        return next((i for i, (key, _) in enumerate(listed) if key.encode() > marker), len(listed))

    def _listed(self, key: str, v: _Version, versions: bool) -> ListedObject:
        # radosgw lists milliseconds; Tentacle whole seconds.
        unit = 1_000_000_000 if self.release == "tentacle" else 1_000_000
        return ListedObject(
            key=key,
            version_id=(v.version_id or "null") if versions else None,
            delete_marker=v.delete_marker,
            size=None if v.delete_marker else v.size,
            etag=None if v.delete_marker else v.etag,
            mtime_ns=v.mtime_ns // unit * unit,
        )

    def object_info(
        self, bucket: str, key: str, version_id: str | None, mtime_ns: int
    ) -> tuple[int, str | None] | None:
        """The version the entry describes, None when it is gone or was overwritten since."""
        self._gate("object_info", bucket)
        with self._lock:
            b = self._buckets.get(bucket)
            versions = b.objects.get(key, []) if b is not None else []
            if version_id is not None:
                v = next((v for v in versions if (v.version_id or "null") == version_id), None)
            else:
                v = versions[0] if versions and versions[0].mtime_ns == mtime_ns else None
            if v is None or v.delete_marker or v.size is None:
                return None
            return v.size, v.etag

    # ------------------------------------------------------------------ admin REST, in memory

    def request(
        self, method: str, path: str, params: Sequence[tuple[str, str | int | None]]
    ) -> tuple[int, dict[str, str], bytes]:
        q = {k: None if v is None else str(v) for k, v in params}
        with self._lock:
            self._renew_datalog()
            doc = self._route(method, path, q)(q)
        body = b"" if doc is None else json.dumps(doc).encode()
        return 200, {"date": formatdate(self.clock.time(), usegmt=True)}, body

    def _route(
        self, method: str, path: str, q: dict[str, str | None]
    ) -> Callable[[dict[str, str | None]], Any]:
        kind = q.get("type")
        routes: dict[tuple[str, str, str | None], Callable[[dict[str, str | None]], Any]] = {
            ("GET", "/admin/log", "data"): self._get_datalog,
            ("DELETE", "/admin/log", "data"): self._trim_datalog,
            ("GET", "/admin/log", "bucket-index"): self._get_bilog,
            ("DELETE", "/admin/log", "bucket-index"): self._trim_bilog,
            ("GET", "/admin/metadata/bucket", None): self._get_bucket_metadata,
            ("GET", "/admin/metadata/bucket.instance", None): self._get_instance_metadata,
            ("GET", "/admin/bucket", None): self._get_bucket_stats,
        }
        handler = routes.get((method, path, kind))
        if handler is None:
            raise PermanentError(f"fake radosgw {method} {path} {q}: HTTP 400 InvalidArgument")
        return handler

    def _missing(self, what: str, code: str = "NoSuchKey") -> NotFound:
        return NotFound(f"fake radosgw: {what}: HTTP 404 {code}")

    def _get_datalog(self, q: dict[str, str | None]) -> Any:
        if "id" not in q:
            return {"num_objects": len(self._dl)}
        n = int(q["id"] or 0)
        if not 0 <= n < len(self._dl):
            raise PermanentError(f"fake radosgw: no data log shard {n}: HTTP 400 InvalidArgument")
        if "info" in q:
            return {"marker": self._dl_last[n], "last_update": rfc3339_ns(self._now_ns())}
        marker = q.get("marker") or ""
        limit = int(q.get("max-entries") or MAX_ENTRIES)
        after = [(m, e) for m, e in self._dl[n] if m > marker]
        page = after[:limit]
        truncated = len(after) > limit
        extra = q.get("extra-info") == "true"
        entries = [
            {"log_id": m, "log_timestamp": e["timestamp"], "entry": e} if extra else e for m, e in page
        ]
        if self.release == "tentacle" and not truncated:
            out_marker = ""  # FIFO: the end of the shard has no marker
        else:
            out_marker = page[-1][0] if page else marker
        return {"marker": out_marker, "truncated": truncated, "entries": copy.deepcopy(entries)}

    def _trim_datalog(self, q: dict[str, str | None]) -> None:
        if "end-marker" in q or not q.get("marker"):
            raise PermanentError("fake radosgw: data log trim takes marker=: HTTP 400 InvalidArgument")
        n = int(q["id"] or 0)
        end = q["marker"] or ""
        self._dl[n] = [(m, e) for m, e in self._dl[n] if m > end]

    def _instance(self, q: dict[str, str | None]) -> tuple[_Bucket, int | None]:
        raw = q.get("bucket-instance")
        if not raw:
            raise PermanentError(
                "fake radosgw: bucket-index log wants bucket-instance=: HTTP 400 InvalidArgument"
            )
        parts = raw.split(":")
        if len(parts) > 2 and not parts[2].lstrip("-").isdigit():
            # "t1:b:<id>", the S3 spelling of a tenant's bucket: radosgw cannot parse it.
            raise PermanentError(f"fake radosgw: bucket-instance {raw}: HTTP 400 InvalidArgument")
        b = self._buckets.get(parts[0])
        if (b is None or b.bucket_id != parts[1]) and len(parts) >= 2:
            b = self._retired.get(f"{parts[0]}:{parts[1]}")
        if b is None or len(parts) < 2 or b.bucket_id != parts[1]:
            raise self._missing(f"bucket instance {raw}")
        return b, int(parts[2]) if len(parts) > 2 else None

    def _generation(self, b: _Bucket, q: dict[str, str | None], *, default: int) -> _Generation:
        # Pacific has one generation and ignores the parameter.
        gen = (
            int(q["generation"] or 0)
            if self.generation_aware and q.get("generation") is not None
            else default
        )
        g = b.generations.get(gen if self.generation_aware else 0)
        if g is None:
            raise self._missing(f"log generation {gen} of {b.name}")
        return g

    def _get_bilog(self, q: dict[str, str | None]) -> Any:
        b, shard = self._instance(q)
        if "info" in q:
            return self._bilog_info_doc(b, shard)
        g = self._generation(b, q, default=b.latest_gen)  # without generation=: the newest
        n = -1 if g.num_shards <= 0 else shard
        if n is None or n not in g.shards:
            raise PermanentError(f"fake radosgw: no shard {shard} in {b.name}: HTTP 400 InvalidArgument")
        marker = (q.get("marker") or "").rpartition("#")[2]
        limit = min(int(q.get("max-entries") or MAX_ENTRIES), MAX_ENTRIES)
        after = [e for e in g.shards[n].entries if str(e["op_id"]).rpartition("#")[2] > marker]
        return copy.deepcopy(after[:limit])

    def _max_markers(self, g: _Generation) -> dict[int, str]:
        return {
            n: str(s.entries[-1]["op_id"]).rpartition("#")[2] if s.entries else ""
            for n, s in g.shards.items()
        }

    def _joined(self, markers: dict[int, str]) -> str:
        if -1 in markers:
            return markers[-1]
        return ",".join(f"{n}#{m}" for n, m in sorted(markers.items()))

    def _bilog_info_doc(self, b: _Bucket, shard: int | None) -> dict[str, Any]:
        markers = self._max_markers(b.generations[b.latest_gen])
        max_marker = markers.get(shard, "") if shard is not None else self._joined(markers)
        doc: dict[str, Any] = {"bucket_ver": "", "master_ver": "", "max_marker": max_marker}
        if not self.generation_aware:
            doc["syncstopped"] = "false"
            return doc
        doc["syncstopped"] = False
        doc["oldest_gen"] = min(b.generations)
        doc["latest_gen"] = b.latest_gen
        doc["generations"] = [
            {"gen": g, "num_shards": x.num_shards} for g, x in sorted(b.generations.items())
        ]
        return doc

    def _trim_bilog(self, q: dict[str, str | None]) -> None:
        b, shard = self._instance(q)
        # Reef and later trim generation 0 when none is named (the client always names it).
        g = self._generation(b, q, default=0)
        n = -1 if g.num_shards <= 0 else shard
        if n is None or n not in g.shards:
            raise PermanentError(f"fake radosgw: no shard {shard} in {b.name}: HTTP 400 InvalidArgument")
        end = (q.get("end-marker") or "").rpartition("#")[2]
        if not end:
            raise PermanentError("fake radosgw: bilog trim without end-marker: HTTP 400 InvalidArgument")
        s = g.shards[n]
        s.entries = [e for e in s.entries if str(e["op_id"]).rpartition("#")[2] > end]

    def _get_bucket_metadata(self, q: dict[str, str | None]) -> Any:
        key = q.get("key")
        if key is not None:
            b = self._buckets.get(key)
            if b is None:
                raise self._missing(f"bucket entrypoint {key}")
            return {
                "key": f"bucket:{key}",
                "data": {
                    "bucket": {"name": key, "marker": b.marker, "bucket_id": b.bucket_id},
                    "owner": OWNER,
                },
            }
        names = sorted(self._buckets)
        marker = q.get("marker") or ""
        limit = int(q.get("max-entries") or MAX_KEYS)
        after = [n for n in names if n > marker]
        page = after[:limit]
        return {"keys": page, "truncated": len(after) > limit, "marker": page[-1] if page else ""}

    def _get_instance_metadata(self, q: dict[str, str | None]) -> Any:
        name, _, bucket_id = (q.get("key") or "").partition(":")
        b = self._buckets.get(name)
        if b is None or b.bucket_id != bucket_id:
            raise self._missing(f"bucket instance {name}:{bucket_id}")
        # RGWBucketInfo flags: BUCKET_VERSIONED = 2.
        return {
            "key": f"bucket.instance:{name}:{bucket_id}",
            "data": {"bucket_info": {"flags": 2 if b.versioned else 0}},
        }

    def _get_bucket_stats(self, q: dict[str, str | None]) -> Any:
        name = q.get("bucket") or ""
        b = self._buckets.get(name)
        if b is None:
            raise self._missing(f"bucket {name}", "NoSuchBucket")
        tenant, bare = split_name(name)
        return {
            "bucket": bare,
            "num_shards": b.num_shards,
            "tenant": tenant,
            "id": b.bucket_id,
            "marker": b.marker,
            "index_type": "Normal",
            "owner": OWNER,
            "creation_time": rfc3339_ns(b.creation_ns)[:-4] + "Z",  # radosgw prints microseconds
            "max_marker": self._joined(self._max_markers(b.generations[b.latest_gen])),
        }


def assert_same_keys_as_captured(produced: Sequence[dict[str, Any]], release: Release) -> None:
    """Every produced entry has the key set, and the value types, of a captured entry."""
    shapes = {tuple(sorted((k, type(v).__name__) for k, v in e.items())) for e in captured_entries(release)}
    for e in produced:
        shape = tuple(sorted((k, type(v).__name__) for k, v in e.items()))
        assert shape in shapes, f"an entry no radosgw {release} wrote: {e}"
