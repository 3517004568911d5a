"""Usage metrics (issue 18) on the sqlite twin: a real index store for the checkpoint and the
state shards, a directory target holding log objects written as the collector writes them (with
record times the tests choose), and the usage consumer under its runner.

The counting rules are checked against what radosgw's ``bucket stats`` said for the same
operations on the lab (Pacific 16.2.15, Reef 18.2.7, Tentacle: docs/design.md §13)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from changelog.consumers.framework import ConsumerRunner, load_checkpoint
from changelog.consumers.usage.consumer import UsageConsumer, UsageState
from changelog.consumers.usage.model import Layout, Totals
from changelog.consumers.usage.query import Query, bucket_totals, usage_doc
from changelog.errors import LeaseLost, PermanentError, TransientError
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.reader import read_object
from changelog.pipeline.store import ObjectStore, WriteOp
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import LogWriter, rfc3339

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a whole day


@dataclass
class Records:
    """Builds change-log lines with chosen mutation times (seconds from T0) and writes them as
    log objects."""

    writer: LogWriter
    n: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)
    last_recorded: int = 0

    def add(
        self,
        at: float,
        op: str,
        bucket: str,
        key: str | None = None,
        *,
        size: int | None = None,
        version: str | None = None,
        tenant: str | None = None,
        baseline: bool = False,
    ) -> None:
        self.n += 1
        t = int((T0 + at) * 1_000_000)
        # Arrival order is the order the lines are added in, and a mutation arrives after it
        # happened (recorded >= time), as the recorder stamps it.
        self.last_recorded = max(t, self.last_recorded + 1)
        self.pending.append(
            {
                "v": 1,
                "id": hashlib.blake2b(f"u{self.n}".encode(), digest_size=16).hexdigest(),
                "time": rfc3339(t),
                "op": op,
                "tenant": tenant,
                "bucket": bucket,
                "key": key,
                "version_id": version,
                "size": size if op == "write" else None,
                "etag": "e" if op == "write" else None,
                "seq": f"{self.n:016d}",
                "baseline": baseline,
                "recorded": rfc3339(self.last_recorded),
            }
        )

    def commit(self) -> str:
        name = self.writer.write(self.pending)
        self.pending = []
        self.writer.watermark()
        return name


@dataclass
class Env:
    index: ChangeIndex
    logs: DirectoryTarget
    recs: Records
    layout_args: dict[str, Any]

    @property
    def store(self) -> ObjectStore:
        return self.index.store

    def layout(self, name: str = "usage") -> Layout:
        return Layout.make(self.index.prefix, consumer=name, **self.layout_args)

    def consumer(self, name: str = "usage", store: ObjectStore | None = None) -> UsageConsumer:
        return UsageConsumer(UsageState(store or self.store, self.layout(name)), self.logs, name=name, interval=0.01)

    def drain(self, name: str = "usage", store: ObjectStore | None = None) -> UsageConsumer:
        consumer = self.consumer(name, store)
        runner = ConsumerRunner(self.index, consumer, lease_ttl=30)
        assert runner.acquire()
        try:
            for _ in range(100):
                runner.step(threading.Event())
                if runner.checkpoint().after == self.recs.writer.last_object:
                    return consumer
        finally:
            runner.step_down()
        raise AssertionError("usage did not catch up")

    def totals(self, name: str = "usage") -> dict[str, tuple[int, int]]:
        return {_q(t): (t.objects, t.nbytes) for t in bucket_totals(self.store, self.layout(name), Query())}

    def series(self, bucket: str, name: str = "usage", interval: int | None = None) -> list[dict[str, object]]:
        doc = usage_doc(self.store, self.layout(name), Query(bucket=bucket, since_us=0, interval=interval))
        assert len(doc) == 1
        out = doc[0]["series"]
        assert isinstance(out, list)
        return out


def _q(t: Totals) -> str:
    return f"{t.tenant}/{t.bucket}" if t.tenant else t.bucket


def make_env(tmp_path: Path) -> Env:
    """An index, a log directory and a record builder under ``tmp_path`` (close ``index.store``)."""
    index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2)
    logs = DirectoryTarget(tmp_path / "logs", fsync=False)
    return Env(index, logs, Records(LogWriter(logs)), {"shards": 4, "interval": 60})


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = make_env(tmp_path)
    yield made
    made.index.store.close()


# --------------------------------------------------------------------------- counting rules


def test_counts_equal_what_bucket_stats_said_on_the_lab(env: Env) -> None:
    """The operations of the lab measurement, one by one, give its final rgw.main numbers."""
    r = env.recs
    mib5 = 5 * 1024 * 1024
    # Plain bucket: put 100, overwrite 250, copy, multipart (5 MiB + 1000), copy of it, a
    # multipart aborted (no record), delete, delete of a missing key, empty object.
    r.add(0, "bucket_create", "plain")
    r.add(1, "write", "plain", "a", size=100)
    r.add(2, "write", "plain", "a", size=250)
    r.add(3, "write", "plain", "c", size=250)
    r.add(4, "write", "plain", "m", size=mib5 + 1000)
    r.add(5, "write", "plain", "m2", size=mib5 + 1000)
    r.add(6, "delete", "plain", "a")
    r.add(7, "delete", "plain", "zz")
    r.add(8, "write", "plain", "e", size=0)
    # Versioned bucket: a null version before versioning, two versions, a marker, a version
    # delete, the marker deleted, a marker on an absent key, multipart, copy; then suspended:
    # the null version rewritten twice, a null marker, a null version written and deleted.
    r.add(10, "bucket_create", "ver")
    r.add(11, "write", "ver", "k", size=100)
    r.add(12, "write", "ver", "k", size=200, version="v1")
    r.add(13, "write", "ver", "k", size=300, version="v2")
    r.add(14, "delete_marker", "ver", "k", version="dm1")
    r.add(15, "delete", "ver", "k", version="v1")
    r.add(16, "delete", "ver", "k", version="dm1")
    r.add(17, "delete_marker", "ver", "q", version="dm2")
    r.add(18, "write", "ver", "vm", size=mib5 + 10, version="v3")
    r.add(19, "write", "ver", "k2", size=300, version="v4")
    r.add(20, "write", "ver", "k", size=400)
    r.add(21, "write", "ver", "k", size=500)
    r.add(22, "delete_marker", "ver", "k")
    r.add(23, "write", "ver", "n", size=50)
    r.add(24, "delete", "ver", "n")
    r.commit()
    env.drain()
    # radosgw-admin bucket stats, rgw.main (num_objects, size), after the same operations.
    assert env.totals() == {"plain": (4, 10488010), "ver": (3, 5243490)}


def test_each_op_kind_in_the_interval_deltas(env: Env) -> None:
    r = env.recs
    r.add(0, "bucket_create", "b")
    r.add(5, "write", "b", "x", size=10)
    r.add(6, "write", "b", "x", size=30)  # overwrite: 10 removed, 30 added
    r.add(7, "write", "b", "y", size=5, version="v1")
    r.add(65, "delete_marker", "b", "y", version="m1")  # next minute
    r.add(66, "delete", "b", "y", version="v1")
    r.add(67, "delete", "b", "x")
    r.commit()
    env.drain()
    s = env.series("b")
    assert [i["start"] for i in s] == [rfc3339(T0 * 1_000_000), rfc3339((T0 + 60) * 1_000_000)]
    first, second = s
    assert (first["objects_added"], first["bytes_added"], first["objects_removed"], first["bytes_removed"]) == (3, 45, 1, 10)
    assert (first["writes"], first["deletes"], first["delete_markers"]) == (3, 0, 0)
    assert (first["objects"], first["bytes"]) == (2, 35)
    assert (second["objects_removed"], second["bytes_removed"], second["deletes"], second["delete_markers"]) == (2, 35, 2, 1)
    assert (second["objects"], second["bytes"]) == (0, 0)
    assert env.totals() == {"b": (0, 0)}


def test_bucket_delete_drops_the_bucket_and_keeps_its_next_lifetime(env: Env) -> None:
    r = env.recs
    r.add(0, "bucket_create", "b")
    r.add(1, "write", "b", "lost", size=7)  # its delete died with the bucket's index
    r.commit()
    env.drain()
    assert env.totals() == {"b": (1, 7)}
    r.add(2, "bucket_delete", "b")
    r.commit()
    env.drain()
    assert env.totals() == {}
    # Created again: in one log object, a write of the new lifetime may come before the old
    # lifetime's delete (other index shards drain first); it was recorded after the delete.
    r.add(3, "bucket_create", "c")
    r.add(4, "write", "c", "old", size=1)
    r.commit()
    r.add(5, "bucket_delete", "c")
    r.add(6, "bucket_create", "c")
    r.add(7, "write", "c", "new", size=2)
    lines = r.pending
    r.pending = [lines[2], lines[0], lines[1]]  # the write first, as the last shard drains last
    r.commit()
    env.drain()
    assert env.totals() == {"c": (1, 2)}


def test_tenant_buckets_are_apart(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "b", "k", size=1)
    r.add(0, "write", "b", "k", size=2, tenant="t1")
    r.commit()
    env.drain()
    assert env.totals() == {"b": (1, 1), "t1/b": (1, 2)}
    only = usage_doc(env.store, env.layout(), Query(tenant="t1"))
    assert only == [{"tenant": "t1", "bucket": "b", "objects": 1, "bytes": 2}]
    assert usage_doc(env.store, env.layout(), Query(bucket="t1:b")) == only


def test_baseline_seeds_totals_once_and_makes_no_deltas(env: Env) -> None:
    r = env.recs
    r.add(0, "bucket_create", "b", baseline=True)
    r.add(0, "write", "b", "k1", size=10, baseline=True)
    r.add(0, "write", "b", "k2", size=20, version="v", baseline=True)
    r.add(0, "delete_marker", "b", "k3", version="m", baseline=True)
    r.commit()
    # A second baseline of the same objects (a full sync asked for again), and an overwrite.
    r.add(0, "write", "b", "k1", size=10, baseline=True)
    r.add(0, "write", "b", "k2", size=20, version="v", baseline=True)
    r.add(120, "write", "b", "k1", size=15)
    r.commit()
    env.drain()
    assert env.totals() == {"b": (2, 35)}
    (only,) = env.series("b")
    assert (only["objects_added"], only["bytes_added"], only["objects_removed"], only["bytes_removed"]) == (1, 15, 1, 10)
    assert (only["objects"], only["bytes"]) == (2, 35)


def test_a_write_without_size_counts_zero_until_replaced(env: Env) -> None:
    r = env.recs
    r.add(0, "write", "b", "k", size=None)
    r.commit()
    consumer = env.drain()
    assert env.totals() == {"b": (1, 0)} and consumer.stats()["unknown_sizes"] == 1
    r.add(1, "write", "b", "k", size=9)
    r.commit()
    env.drain()
    assert env.totals() == {"b": (1, 9)}


# --------------------------------------------------------------------------- exactly once


class FailingStore:
    """The real sqlite store, with a fault: ``execute`` of usage state shards raises after
    ``allowed`` of them went through (a process dying between shard writes), or runs
    ``before`` first (another process writing in between)."""

    def __init__(self, inner: ObjectStore, *, allowed: int | None = None) -> None:
        self.inner = inner
        self.allowed = allowed
        self.before: Callable[[str], None] | None = None
        self.writes = 0
        self.mu = threading.Lock()

    def execute(self, oid: str, op: WriteOp) -> None:
        if ".usage." in oid:
            with self.mu:  # the consumer writes shards from several threads
                if self.before is not None:
                    hook, self.before = self.before, None
                    hook(oid)
                if self.allowed is not None and self.writes >= self.allowed:
                    raise TransientError("process died here")
                self.writes += 1
        self.inner.execute(oid, op)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _mixed(r: Records, *, at: float = 0, n: int = 12) -> None:
    for i in range(n):
        b = f"bkt{i % 6}"
        r.add(at + i, "write", b, f"k{i % 4}", size=100 + i)
        if i % 3 == 0:
            r.add(at + i, "delete", b, f"k{(i + 1) % 4}")
        if i % 5 == 0:
            r.add(at + i, "delete_marker", b, "vk", version=f"m{i}")


@pytest.mark.parametrize("allowed", [0, 1, 2, 3])
def test_a_crash_between_shard_writes_replays_exactly_once(env: Env, tmp_path: Path, allowed: int) -> None:
    _mixed(env.recs)
    name = env.recs.commit()
    failing = FailingStore(env.store, allowed=allowed)
    consumer = env.consumer(store=failing)
    runner = ConsumerRunner(env.index, consumer, lease_ttl=30)
    assert runner.acquire()
    with pytest.raises(TransientError):
        runner.step(threading.Event())
    runner.step_down()
    assert load_checkpoint(env.index, "usage").after is None
    # The next process replays the object: the shards written already skip it.
    again = env.drain()
    assert load_checkpoint(env.index, "usage").after == name
    # The same logs applied once, cleanly, into another state give the same numbers; the replay
    # wrote exactly the shards the crashed attempt had not (those with records it had written
    # skip the object; a shard only pruned is pruned already).
    clean = env.drain("usage-clean")
    assert again.state.snapshot()["shard_writes"] + allowed == clean.state.snapshot()["shard_writes"]
    assert again.state.snapshot()["shards_skipped"] <= allowed
    assert env.totals() == env.totals("usage-clean")
    for b in env.totals():
        assert env.series(b) == env.series(b, "usage-clean")


def test_a_stale_writer_fails_its_guard(env: Env) -> None:
    _mixed(env.recs)
    name = env.recs.commit()
    records = list(read_object(env.logs, name))
    layout = env.layout()
    by_shard: dict[int, list[Any]] = {}
    for rec in records:
        by_shard.setdefault(layout.shard(rec.tenant or "", rec.bucket)[0], []).append(rec)
    n = min(by_shard)
    stale_store = FailingStore(env.store)
    stale = UsageState(stale_store, layout)
    fresh = UsageState(env.store, layout)
    # The new holder applies the object to that shard after the stale one read it.
    def newer_holder(oid: str) -> None:
        fresh.apply(n, name, by_shard[n], data_us=0)

    stale_store.before = newer_holder
    with pytest.raises(LeaseLost, match="written by another process"):
        stale.apply(n, name, by_shard[n], data_us=0)
    assert stale.snapshot()["guard_failures"] == 1 and fresh.snapshot()["shard_writes"] == 1
    # Applied once: a third try skips it.
    fresh.apply(n, name, by_shard[n], data_us=0)
    assert fresh.snapshot() == {"shard_writes": 1, "shards_skipped": 1, "guard_failures": 0, "unknown_sizes": 0}


def test_replay_from_an_empty_store_gives_the_same_series(env: Env) -> None:
    for step in range(5):
        _mixed(env.recs, at=step * 1000.0, n=10)
        env.recs.commit()
        env.drain()
    env.drain("usage-replay")
    assert env.totals() == env.totals("usage-replay")
    for b in env.totals():
        for interval in (60, 120, 3600, 86400):
            assert env.series(b, interval=interval) == env.series(b, "usage-replay", interval=interval)


def test_other_shard_count_is_refused(env: Env) -> None:
    env.recs.add(0, "write", "b", "k", size=1)
    env.recs.commit()
    env.drain()
    env.recs.add(1, "write", "b", "k", size=2)
    env.recs.commit()
    env.layout_args["shards"] = 1
    with pytest.raises(PermanentError, match="keep \\[usage\\] shards"):
        env.drain()


# --------------------------------------------------------------------------- retention, roll-ups


def test_retention_prunes_by_data_time_and_rollups_stay(env: Env) -> None:
    env.layout_args.update(retention=300, retention_hourly=3 * 3600, retention_daily=400 * 86400)
    r = env.recs
    for minute in range(0, 4 * 60, 10):  # a write every 10 minutes for 4 hours
        r.add(minute * 60, "write", "b", f"k{minute}", size=1)
    r.commit()
    env.drain()
    fine = env.series("b", interval=60)
    last = T0 + 230 * 60
    # Fine intervals older than 5 minutes before the latest record time are gone.
    assert [i["start"] for i in fine] == [rfc3339(last * 1_000_000)]
    hourly = env.series("b", interval=3600)
    # Hours that ended more than 3 h before data time (3:50) are gone (none yet: the hour of
    # 0:50 is kept whole); each kept hour sums its writes.
    assert [(i["start"], i["writes"]) for i in hourly] == [
        (rfc3339((T0 + h * 3600) * 1_000_000), 6) for h in (0, 1, 2, 3)
    ]
    assert [i["objects"] for i in hourly] == [6, 12, 18, 24]
    (daily,) = env.series("b", interval=86400)
    assert (daily["writes"], daily["objects"]) == (24, 24)
    # Two hours summed from the hourly roll-up.
    two = env.series("b", interval=7200)
    assert [(i["writes"], i["objects"]) for i in two] == [(12, 12), (12, 24)]
    # At data time 5:00, the hours before 2:00 are gone.
    r.add(5 * 3600, "write", "b", "late", size=1)
    r.commit()
    env.drain()
    assert [i["start"] for i in env.series("b", interval=3600)][0] == rfc3339((T0 + 2 * 3600) * 1_000_000)
    assert env.totals() == {"b": (25, 25)}


def test_a_deleted_bucket_leaves_once_its_series_age_out(env: Env) -> None:
    env.layout_args.update(retention=120, retention_hourly=3600, retention_daily=86400)
    r = env.recs
    r.add(0, "write", "gone", "k", size=1)
    r.add(10, "delete", "gone", "k")
    r.add(11, "bucket_delete", "gone")
    r.commit()
    env.drain()
    state = UsageState(env.store, env.layout())
    assert any(t.bucket == "gone" and not t.live for n in range(4) for _, t in state.totals(n))
    r.add(3 * 86400, "write", "other", "k", size=1)
    r.commit()
    env.drain()
    assert all(t.bucket != "gone" for n in range(4) for _, t in state.totals(n))


def test_an_interval_must_fit_the_stored_ones(env: Env) -> None:
    env.recs.add(0, "write", "b", "k", size=1)
    env.recs.commit()
    env.drain()
    with pytest.raises(PermanentError, match="not a multiple"):
        env.series("b", interval=90)


# --------------------------------------------------------------------------- config, CLI, route, metrics


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"interval": 7}, "usage.interval must divide an hour"),
        ({"retention": "2x"}, 'usage.retention must be a duration in seconds, or a string such as "2d"'),
        ({"shards": 0}, "usage.shards"),
        ({"enabeld": True}, "enabeld"),
    ],
)
def test_config_errors_are_one_line(section: Mapping[str, object], expected: str) -> None:
    from changelog.config import parse_config
    from changelog.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"usage": dict(section)})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_config_durations() -> None:
    from changelog.config import parse_config

    cfg = parse_config({"usage": {"enabled": True, "retention": "36h", "retention_daily": 86400 * 10}})
    assert cfg.usage.enabled and cfg.usage.retention == 36 * 3600 and cfg.usage.retention_daily == 864000
    assert cfg.usage.interval == 300 and cfg.usage.shards == 16


@pytest.fixture
def cli_conf(tmp_path: Path, env: Env) -> Path:
    return write_cli_conf(tmp_path)


def write_cli_conf(tmp_path: Path) -> Path:
    """A configuration of ``make_env(tmp_path)``'s index and logs, [usage] as its layout."""
    p = tmp_path / "rgw-changelog.toml"
    p.write_text(
        f"""
[index]
backend = "sqlite"
path = "{tmp_path / "index.db"}"
shards = 2

[target]
url = "file://{tmp_path / "logs"}/"

[usage]
enabled = true
interval = 60
shards = 4
"""
    )
    return p


def run_cli(conf: Path, *args: str) -> Any:
    from click.testing import CliRunner

    from changelog.cli import cli

    return CliRunner().invoke(cli, ["-c", str(conf), *args], catch_exceptions=False)


def test_cli_run_once_and_show_shapes(env: Env, cli_conf: Path) -> None:
    import orjson

    r = env.recs
    r.add(0, "write", "b", "k", size=3)
    r.add(61, "write", "b", "k2", size=4, tenant="t")
    r.commit()
    res = run_cli(cli_conf, "usage", "run", "--once")
    assert res.exit_code == 0, res.output
    assert "caught up" in res.stderr
    res = run_cli(cli_conf, "usage", "show", "--json")
    assert orjson.loads(res.stdout) == [
        {"tenant": "", "bucket": "b", "objects": 1, "bytes": 3},
        {"tenant": "t", "bucket": "b", "objects": 1, "bytes": 4},
    ]
    res = run_cli(cli_conf, "usage", "show", "--json", "--bucket", "b", "--since", str(T0), "--interval", "1h")
    (doc,) = orjson.loads(res.stdout)
    assert doc["interval"] == 3600 and [i["start"] for i in doc["series"]] == [rfc3339(T0 * 1_000_000)]
    assert doc["series"][0]["objects_added"] == 1 and doc["series"][0]["bytes"] == 3
    status = orjson.loads(run_cli(cli_conf, "status", "--json", "--direct").stdout)
    assert status["usage"] == {"buckets": 2, "objects": 2, "bytes": 7}
    assert status["consumers"]["usage"]["after"] == env.recs.writer.last_object
    res = run_cli(cli_conf, "usage", "show", "--tenant", "t")
    assert res.exit_code == 0 and "t " in res.stdout and res.stdout.count("\n") == 2
    res = run_cli(cli_conf, "usage", "show", "--interval", "90s", "--bucket", "b")
    assert res.exit_code == 2 and "not a multiple" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_route_shapes_and_errors(env: Env) -> None:
    from changelog.consumers.routes import Request, RouteError
    from changelog.consumers.usage.query import UsageRoute

    env.recs.add(0, "write", "b", "k", size=3)
    env.recs.commit()
    env.drain()
    route = UsageRoute(env.store, env.layout())
    assert route(Request("GET", "", {})) == {"buckets": [{"tenant": "", "bucket": "b", "objects": 1, "bytes": 3}]}
    doc = route(Request("GET", "", {"bucket": "b", "since": str(T0), "until": str(T0 + 60), "interval": "60"}))
    buckets = doc["buckets"]
    assert isinstance(buckets, list) and buckets[0]["series"][0]["writes"] == 1
    for query, status in (({"since": "yesterday-ish"}, 400), ({"bukket": "b"}, 400), ({"interval": "90"}, 400)):
        with pytest.raises(RouteError) as err:
            route(Request("GET", "", query))
        assert err.value.status == status
    with pytest.raises(RouteError) as err:
        route(Request("POST", "", {}))
    assert err.value.status == 405


def test_prometheus_gauges_are_bounded(env: Env) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from changelog.consumers.usage.prom import UsageMetrics

    for i in range(5):
        env.recs.add(0, "write", f"b{i}", "k", size=10 * (i + 1))
    env.recs.commit()
    consumer = env.drain()
    reg = CollectorRegistry()
    reg.register(UsageMetrics(env.store, env.layout(), top=2, buckets=["b0"], stats=consumer.state.snapshot))
    text = generate_latest(reg).decode()
    got = sorted(line.split("{")[1].split("}")[0] for line in text.splitlines() if line.startswith("rgw_changelog_usage_bucket_bytes{"))
    assert got == ['bucket="b0",tenant=""', 'bucket="b3",tenant=""', 'bucket="b4",tenant=""']
    assert 'rgw_changelog_usage_bucket_bytes{bucket="b4",tenant=""} 50.0' in text
    assert "rgw_changelog_usage_state_writes_total" in text
