"""Usage metrics: the defects the review of issue 18 found, each pinned by a test that failed
before its fix (a head read failing transiently, a deleted bucket's history, its orphaned last
interval, a clock far ahead, a state of another layout, consumer names, ``--until`` alone).
Same sqlite twin and log builder as ``test_usage``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from changelog.consumers.framework import ConsumerRunner
from changelog.consumers.usage.consumer import UsageState
from changelog.consumers.usage.model import META_KEY, Layout
from changelog.consumers.usage.query import Query, usage_doc
from changelog.errors import PermanentError, TransientError
from changelog.pipeline.store import ObjectStore, WriteOp, omap_iter
from tests.unit.test_backup_support import rfc3339
from tests.unit.test_usage import T0, Env, _mixed, make_env, run_cli, write_cli_conf


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = make_env(tmp_path)
    yield made
    made.index.store.close()


def _series_keys(env: Env, bucket: str) -> list[str]:
    layout = env.layout()
    n, bid = layout.shard("", bucket)
    return [k for k, _ in omap_iter(env.store, layout.oid(n), prefix="s.") if f".{bid}." in k]


# --------------------------------------------------------------------------- 1. a head read fails


class HeadReadFailsOnce:
    """The real store, but reading shard 2's head raises ``TransientError`` once (an OSD timeout)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.armed = True

    def omap_get(self, oid: str, keys: list[str]) -> dict[str, bytes]:
        if self.armed and oid.endswith(".usage.0002") and "a" in keys:
            self.armed = False
            raise TransientError("OSD timeout reading a shard head")
        return dict(self.inner.omap_get(oid, keys))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_head_read_failing_transiently_is_read_again_in_the_next_step(env: Env) -> None:
    _mixed(env.recs)
    env.recs.commit()
    consumer = env.consumer(store=HeadReadFailsOnce(env.store))  # type: ignore[arg-type]
    runner = ConsumerRunner(env.index, consumer, lease_ttl=30)
    assert runner.acquire()
    try:
        with pytest.raises(TransientError):
            runner.step(threading.Event())
        # The leased loop backs off and steps again with the same cursor: the heads are read
        # again (before the fix, a KeyError on the empty head cache).
        runner.step(threading.Event())
    finally:
        runner.step_down()
    env.drain("clean")
    assert env.totals() == env.totals("clean") and env.totals()


# --------------------------------------------------------------------------- 2. deleted history


def test_a_deleted_bucket_is_in_a_range_query_marked_deleted(env: Env, tmp_path: Path) -> None:
    r = env.recs
    r.add(0, "bucket_create", "gone")
    r.add(10, "write", "gone", "k", size=1000)
    r.add(70, "delete", "gone", "k")
    r.add(71, "bucket_delete", "gone")
    r.add(80, "write", "other", "k", size=1)
    r.commit()
    env.drain()
    hour = Query(since_us=T0 * 1_000_000, until_us=(T0 + 3600) * 1_000_000)
    doc = usage_doc(env.store, env.layout(), hour)
    assert [(d["bucket"], d.get("deleted")) for d in doc] == [("gone", True), ("other", None)]
    gone = doc[0]["series"]
    assert isinstance(gone, list)
    assert [(i["start"], i["bytes_added"], i["bytes_removed"], i["bytes"]) for i in gone] == [
        (rfc3339(T0 * 1_000_000), 1000, 0, 1000),
        (rfc3339((T0 + 60) * 1_000_000), 0, 1000, 0),
    ]
    # Asked by name too; a range after its life lists it no more; no range: the live buckets,
    # in the list shape of old.
    gone_hour = Query(bucket="gone", since_us=hour.since_us, until_us=hour.until_us)
    by_name = usage_doc(env.store, env.layout(), gone_hour)
    assert by_name == doc[:1]
    later = usage_doc(env.store, env.layout(), Query(since_us=(T0 + 120) * 1_000_000))
    assert [(d["bucket"], d["series"]) for d in later] == [("other", [])]
    res = run_cli(write_cli_conf(tmp_path), "usage", "show", "--since", str(T0))
    assert res.exit_code == 0 and "gone (deleted)" in res.stdout, res.output
    live = usage_doc(env.store, env.layout(), Query())
    assert live == [{"tenant": "", "bucket": "other", "objects": 1, "bytes": 1}]


# --------------------------------------------------------------------------- 3. orphaned interval


def test_a_deleted_bucket_leaves_no_interval_behind_its_totals(env: Env) -> None:
    """Data time moving in 5-minute steps: the deleted bucket's totals go only with its last
    interval at every resolution, so nothing of it is left that no one prunes."""
    env.layout_args.update(retention=600, retention_hourly=2 * 3600, retention_daily=86400)
    r = env.recs
    r.add(100, "write", "gone", "k", size=1)
    r.add(110, "delete", "gone", "k")
    r.add(120, "bucket_delete", "gone")
    r.commit()
    env.drain()
    for i in range(1, 12 * 30):  # 30 hours, one record every 5 minutes
        r.add(120 + i * 300, "write", "other", f"k{i % 5}", size=1)
        if i % 12 == 0:
            r.commit()
    r.commit()
    env.drain()
    layout = env.layout()
    n, bid = layout.shard("", "gone")
    has_totals = any(b == bid for b, _ in UsageState(env.store, layout).totals(n))
    # The day of its life is kept 1 day after its end (data time: 30 h): totals and interval stay.
    assert has_totals and _series_keys(env, "gone") == [f"s.086400.{bid}.{T0:010d}"]
    r.add(4 * 86400, "write", "other", "z", size=1)
    r.commit()
    env.drain()
    assert not any(b == bid for b, _ in UsageState(env.store, layout).totals(n))
    assert _series_keys(env, "gone") == []


# --------------------------------------------------------------------------- 4. clock skew


def test_one_record_from_a_clock_a_year_ahead_keeps_the_history(env: Env) -> None:
    r = env.recs
    for h in range(48):
        r.add(h * 3600, "write", "b", f"k{h}", size=1)
    r.commit()
    env.drain()
    assert len(env.series("b", interval=3600)) == 48
    r.add(48 * 3600, "write", "skewed", "k", size=1)
    r.pending[-1]["time"] = r.pending[-1]["time"].replace("2026-", "2027-")  # `recorded` is right
    r.commit()
    env.drain()
    assert len(env.series("b", interval=3600)) == 48
    # It counts an hour past its arrival at most, and a rebuild from the logs agrees.
    (only,) = env.series("skewed")
    assert only["start"] == rfc3339((T0 + 49 * 3600) * 1_000_000)
    env.drain("rebuild")
    assert env.series("b", "rebuild", interval=3600) == env.series("b", interval=3600)


# --------------------------------------------------------------------------- 5. layout drift, names


@pytest.mark.parametrize("shards", [1, 16])
def test_show_with_another_shard_count_is_refused(env: Env, shards: int) -> None:
    for i in range(8):
        env.recs.add(0, "write", f"b{i}", "k", size=1)
    env.recs.commit()
    env.drain()  # made with shards=4
    other = Layout.make(env.index.prefix, shards=shards, interval=60)
    for q in [Query(), *(Query(bucket=f"b{i}") for i in range(8))]:
        with pytest.raises(PermanentError, match=r"keep \[usage\] shards as it was") as err:
            usage_doc(env.store, other, q)
        assert "\n" not in str(err.value)


def test_a_changed_interval_is_refused_and_an_old_meta_matches(env: Env) -> None:
    env.layout_args.update(interval=300)
    env.recs.add(0, "write", "b", "k", size=1)
    env.recs.commit()
    env.drain()
    layout = env.layout()
    # A state made before the interval was stored: its meta without it is accepted, and the next
    # write stores the interval.
    for n in range(layout.shards):
        env.store.execute(layout.oid(n), WriteOp(set={META_KEY: b'{"shards":4}'}))
    env.recs.add(1, "write", "b", "k2", size=1)
    env.recs.commit()
    env.drain()
    assert usage_doc(env.store, layout, Query()) == [{"tenant": "", "bucket": "b", "objects": 2, "bytes": 2}]
    n, _ = layout.shard("", "b")
    assert env.store.omap_get(layout.oid(n), [META_KEY]) == {META_KEY: b'{"shards":4,"interval":300}'}
    env.layout_args.update(interval=60)  # [usage] interval changed
    env.recs.add(2, "write", "b", "k3", size=1)
    env.recs.commit()
    with pytest.raises(PermanentError, match=r"keep \[usage\] interval as it was"):
        env.drain()
    with pytest.raises(PermanentError, match=r"keep \[usage\] interval as it was"):
        usage_doc(env.store, env.layout(), Query(bucket="b"))


@pytest.mark.parametrize("name", ["shard", "control", "a.b", "-x", "_x", "Usage", "", "x\n"])
def test_a_consumer_name_that_is_no_object_name_of_its_own_is_refused(env: Env, name: str) -> None:
    with pytest.raises(PermanentError, match="usage consumer name"):
        env.layout(name)


def test_the_cli_refuses_a_bad_consumer_name_in_one_line(env: Env, tmp_path: Path) -> None:
    conf = write_cli_conf(tmp_path)
    before = list(omap_iter(env.store, env.index.shard_oid(0)))
    for cmd in ("run", "show"):
        res = run_cli(conf, "usage", cmd, *(["--once"] if cmd == "run" else []), "--consumer", "shard")
        assert res.exit_code == 2 and "usage consumer name 'shard'" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert list(omap_iter(env.store, env.index.shard_oid(0))) == before


# --------------------------------------------------------------------------- 6. --until alone


def test_until_without_since_starts_at_the_oldest_kept_interval(env: Env, tmp_path: Path) -> None:
    from changelog.consumers.routes import Request
    from changelog.consumers.usage.query import UsageRoute

    conf = write_cli_conf(tmp_path)
    env.recs.add(0, "write", "b", "k", size=3)
    env.recs.add(3 * 86400, "write", "b", "k2", size=4)  # a Sunday: 2026-01-01 is a Thursday
    env.recs.commit()
    env.drain()
    res = run_cli(conf, "usage", "show", "--json", "--until", str(T0 + 4 * 86400))
    assert res.exit_code == 0, res.stderr
    (doc,) = orjson.loads(res.stdout)
    # The fine intervals of the first day are past the 2-day retention.
    assert [i["start"] for i in doc["series"]] == [rfc3339((T0 + 3 * 86400) * 1_000_000)]
    route = UsageRoute(env.store, env.layout())
    got = route(Request("GET", "", {"until": str(T0 + 4 * 86400)}))
    assert got == {"buckets": [doc]}
    # A start before the oldest kept interval starts there too, and weeks start on Thursdays.
    res = run_cli(conf, "usage", "show", "--json", "--since", "2020-01-01", "--interval", "1m")
    assert res.exit_code == 0, res.stderr
    res = run_cli(conf, "usage", "show", "--json", "--since", str(T0), "--interval", "1w")
    (weekly,) = orjson.loads(res.stdout)
    assert [(i["start"], i["writes"]) for i in weekly["series"]] == [(rfc3339(T0 * 1_000_000), 2)]
