"""The operator surface of the collector streams (``[scale] partitioned``, issue 17) on the
embedded store (SqliteStore) and a directory target: the stream count is recorded once by
compare-and-set when two instances start together with different counts; ``rgw-changelog
status`` prints the streams (holder, seq, last object, pending commits, the readers' bound) and
nothing more when unpartitioned; ``/_/metrics`` has one series per stream, read from the shared
state on every instance, and none when unpartitioned.

A "process" is an instance on its own store handle, as in ``test_collector_streams``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_collector import Crash, crash_at, dead

from changelog.cli import cli
from changelog.config import CollectorConfig
from changelog.errors import PermanentError
from changelog.metrics import ChangelogMetrics, make_registry
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.collector import Collector
from changelog.pipeline.collector_streams import StreamedCollector, prepare_streams, read_count, streams_state
from changelog.pipeline.control import COLLECTOR_STREAMS_META_KEY
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import parse_log_name
from changelog.pipeline.loop import Clocks
from changelog.pipeline.mutation import Mutation, Op
from changelog.pipeline.reader import read_watermark
from changelog.pipeline.targets import DirectoryTarget

SHARDS = 8
STREAMS = 4
PREFIX = "changelog"  # the index prefix of the CLI's config below


class ReadTogether(SqliteStore):
    """A sqlite store handle whose first read of the stream count waits for the other
    instance's first read: both see no count before either writes (the race of two instances
    starting at once, made certain)."""

    def __init__(self, path: str, barrier: threading.Barrier) -> None:
        super().__init__(path)
        self._barrier = barrier
        self._waited = False

    def omap_get(self, oid: str, keys: Sequence[str]) -> dict[str, bytes]:
        got = super().omap_get(oid, keys)
        if list(keys) == [COLLECTOR_STREAMS_META_KEY] and not self._waited:
            self._waited = True
            self._barrier.wait(timeout=30)
        return got


class Env:
    """An index in a sqlite file (the CLI's config points at the same file) and a directory
    target; instances of the streamed collector on handles of their own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path = str(tmp / "index.db")
        self.target = DirectoryTarget(tmp / "logs")
        self.index = self.open_index()
        self.n = 0

    def open_index(self) -> ChangeIndex:
        return ChangeIndex(SqliteStore(self.path), shards=SHARDS, prefix=PREFIX)

    def record(self, n: int) -> None:
        ms = [
            Mutation(bucket=f"b{i % 3}", key=f"k{i % 29}", op=Op.WRITE, mtime_ns=1_795_000_000_000_000_000 + i,
                     source="src", position=f"{i:010d}", seq=f"{i:010d}", size=i, etag="e")
            for i in range(self.n, self.n + n)
        ]  # fmt: skip
        self.index.record_many(ms)
        self.n += n

    def streamed(self, instance: str, **kw: Any) -> StreamedCollector:
        config = CollectorConfig.unchecked(
            settle=0.0, lease_ttl=30.0, interval=0.02, roll_entries=40, page=25
        )
        return StreamedCollector(self.open_index(), self.target, config, count=STREAMS, instance=instance,
                                 clocks=Clocks(), **kw)  # fmt: skip

    def conf(self) -> Path:
        p = self.tmp / "rgw-changelog.toml"
        p.write_text(
            f'[index]\nbackend = "sqlite"\npath = "{self.path}"\nshards = {SHARDS}\nprefix = "{PREFIX}"\n'
            f'[target]\nurl = "file://{self.tmp / "logs"}/"\n'
            '[api]\nlisten = "127.0.0.1:1"\n'  # nothing listens: status reads directly
        )
        return p


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def rounds(*instances: StreamedCollector, n: int = 3) -> None:
    for _ in range(n):
        for sc in instances:
            sc.step()


def shared(env: Env) -> tuple[StreamedCollector, StreamedCollector]:
    """Two instances holding two streams each, every stream with committed objects."""
    a, b = env.streamed("inst-a"), env.streamed("inst-b")
    env.record(400)
    rounds(a, b, n=4)
    assert len(a.partitions.held()) == len(b.partitions.held()) == 2
    return a, b


# --------------------------------------------------------------------------- the count, by CAS


@pytest.mark.parametrize("attempt", range(5))
def test_two_first_starts_with_different_counts_store_one_and_the_other_fails(tmp_path, attempt):
    path = str(tmp_path / "index.db")
    ChangeIndex(SqliteStore(path), shards=SHARDS, prefix="t")  # the index exists; no count yet
    barrier = threading.Barrier(2)
    counts = (4, 3)
    errors: dict[int, BaseException | None] = {}

    def start(count: int) -> None:
        index = ChangeIndex(ReadTogether(path, barrier), shards=SHARDS, prefix="t")
        try:
            prepare_streams(index, count)
            errors[count] = None
        except BaseException as ex:  # noqa: BLE001 - the test asserts which
            errors[count] = ex

    threads = [threading.Thread(target=start, args=(c,)) for c in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(errors) == set(counts)
    stored = read_count(ChangeIndex(SqliteStore(path), shards=SHARDS, prefix="t"))
    assert stored in counts
    loser = next(c for c in counts if c != stored)
    assert errors[stored] is None
    ex = errors[loser]
    assert isinstance(ex, PermanentError), ex
    message = str(ex)
    assert "\n" not in message
    assert f"collector_partitions = {loser}" in message and f"cut into {stored} streams" in message
    # And the winner's count stays: the loser's count fails for good, the winner's passes.
    again = ChangeIndex(SqliteStore(path), shards=SHARDS, prefix="t")
    prepare_streams(again, stored)
    with pytest.raises(PermanentError, match=f"cut into {stored} streams"):
        prepare_streams(again, loser)


def test_the_same_count_from_two_first_starts_is_no_error(tmp_path):
    path = str(tmp_path / "index.db")
    ChangeIndex(SqliteStore(path), shards=SHARDS, prefix="t")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            prepare_streams(ChangeIndex(ReadTogether(path, barrier), shards=SHARDS, prefix="t"), 4)
        except BaseException as ex:  # noqa: BLE001
            errors.append(ex)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert read_count(ChangeIndex(SqliteStore(path), shards=SHARDS, prefix="t")) == 4


# --------------------------------------------------------------------------- status text


def status_text(env: Env) -> str:
    result = CliRunner().invoke(cli, ["-c", str(env.conf()), "status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with ``header`` (split on 2+ spaces)."""
    import re

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_status_text_shows_each_stream_its_holder_seq_last_object_and_pending(env):
    a, b = env.streamed("inst-a"), env.streamed("inst-b", fault_hook=crash_at("complete"))
    env.record(200)
    rounds(a, b, n=3)  # shared: every stream committed objects (a's, while it held them all)
    assert len(b.partitions.held()) == 2
    env.record(200)
    with pytest.raises(Crash):
        b.step()  # b dies at its first commit: an object visible, its entries untrimmed
    for c in b._streams.values():
        dead(c)
    b.partitions._renewer.stop()
    a.close()  # a hands its streams back: nobody holds them now
    held_b = b.partitions.held()
    assert len(held_b) == 2

    text = status_text(env)
    print("\n" + text)
    doc = streams_state(env.index)
    assert "collector lease: - (partitioned: see the streams)" in text
    summary = next(line for line in text.splitlines() if line.startswith("collector streams:"))
    assert summary.startswith(f"collector streams: {STREAMS}, readable until {doc['readable_until']}")
    unheld = [n for n in range(STREAMS) if n not in held_b]
    assert summary.endswith(f"unheld: {unheld}")
    rows = table_rows(text, "STREAM")
    assert [r[0] for r in rows] == [str(n) for n in range(STREAMS)]
    pending_total = 0
    for n, holder, seq, last, pending, through in rows:
        s = int(n)
        assert holder == ("inst-b" if s in held_b else "unheld")
        parsed = parse_log_name(last)
        assert parsed is not None and parsed.stream == s, last  # every stream committed objects
        assert int(seq) >= parsed.seq  # the seq allocated, at or past the last committed one
        assert through.endswith("Z")
        pending_total += int(pending)
        if int(pending):
            assert s in held_b  # b's stream, left pending by its death
            assert int(seq) > parsed.seq  # the pending object's seq
    assert pending_total == 1
    # The shard table follows, as before.
    assert len(table_rows(text, "SHARD")) == SHARDS


def test_status_text_unpartitioned_has_no_streams(env):
    env.record(100)
    c = Collector(env.open_index(), env.target, CollectorConfig.unchecked(settle=0.0, lease_ttl=30.0))
    c.step(threading.Event())
    c.step_down()
    text = status_text(env)
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith(("collector streams", "STREAM"))]
    assert "see the streams" not in text
    assert text.splitlines()[1] == "collector lease: -"


# --------------------------------------------------------------------------- metrics


def scrape(collector: Any, index: ChangeIndex) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """One scrape of a process's metrics: {metric name: {labels: value}}."""
    body = generate_latest(make_registry(ChangelogMetrics(collector=collector, index=index), process=False))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def per_stream(got: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> dict[int, float]:
    return {int(dict(labels)["stream"]): v for labels, v in got.get("rgw_changelog_" + name, {}).items()}


def test_every_instance_exports_every_stream_and_which_it_holds(env):
    a, b = shared(env)
    # a's view of the shared state (read at the start of its round) is the newest: b is not
    # stepping and a's own passes find nothing new to commit.
    a.step()
    env.record(90)  # waiting in the index: each stream's backlog
    stored = streams_state(env.index)
    by_partition: dict[str, dict[str, Any]] = stored["by_partition"]  # type: ignore[assignment]
    ga, gb = scrape(a, a.index), scrape(b, b.index)
    for got, sc in ((ga, a), (gb, b)):
        assert got["rgw_changelog_collector_streams"][()] == STREAMS
        held = per_stream(got, "collector_stream_held")
        assert held == {n: 1.0 if n in sc.partitions.held() else 0.0 for n in range(STREAMS)}
    # Each stream held by exactly one of the two.
    assert all(per_stream(ga, "collector_stream_held")[n] + per_stream(gb, "collector_stream_held")[n] == 1
               for n in range(STREAMS))  # fmt: skip
    # a's figures are the stored ones (b's are one round older, never ahead).
    seqs = per_stream(ga, "collector_stream_seq")
    commits = per_stream(ga, "collector_stream_last_commit_timestamp_seconds")
    through = per_stream(ga, "collector_stream_committed_through_timestamp_seconds")
    for n in range(STREAMS):
        last = parse_log_name(by_partition[str(n)]["last_object"])
        assert last is not None and last.stream == n
        assert seqs[n] == last.seq
        assert commits[n] == pytest.approx(last.cutoff_us / 1e6)
        assert 0 < through[n] <= time.time()
        assert per_stream(gb, "collector_stream_seq")[n] <= seqs[n]
    assert per_stream(ga, "collector_stream_pending_commits") == dict.fromkeys(range(STREAMS), 0.0)
    # The backlog of a stream: the entries waiting in its shards (shard % count).
    backlog = per_stream(ga, "collector_stream_backlog_entries")
    want = [0] * STREAMS
    for s in range(SHARDS):
        want[s % STREAMS] += env.index.stats(s).entries
    assert backlog == {n: float(want[n]) for n in range(STREAMS)} and sum(want) == 90
    # The readers' bound: at most the stored streams' minimum; the publisher's is the one published.
    readable = {
        sc: got["rgw_changelog_readable_until_timestamp_seconds"][()] for got, sc in ((ga, a), (gb, b))
    }
    assert all(0 < v for v in readable.values())
    wm = read_watermark(env.target)
    assert wm is not None and wm.readable_until_us
    publisher = a if 0 in a.partitions.held() else b
    assert readable[publisher] == pytest.approx(wm.readable_until_us / 1e6)
    a.close()
    b.close()


def test_no_stream_series_when_unpartitioned(env):
    env.record(50)
    c = Collector(env.open_index(), env.target, CollectorConfig.unchecked(settle=0.0, lease_ttl=30.0))
    c.step(threading.Event())
    got = scrape(c, c.index)
    c.step_down()
    assert got["rgw_changelog_collector_passes_total"][()] == 1  # the collector's own series are there
    streamy = [name for name in got if "stream" in name or name.endswith("readable_until_timestamp_seconds")]
    assert streamy == []
