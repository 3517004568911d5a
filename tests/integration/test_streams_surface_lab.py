"""The collector streams' operator surface on the lab (issue 17): two `rgw-changelog serve`
processes on one RADOS index with `[scale] partitioned = true` share four collector streams;
`rgw-changelog status` (through a serve's API and `--direct`) prints the streams table with each
stream's holder, seq, last object and pending commits and the readers' bound, and each
instance's `/_/metrics` has every stream's series, with `collector_stream_held` 1 on exactly
one instance per stream, the one the status names. And the stream count's first write is a
compare-and-set on RADOS: two first starts with different counts, forced to read together,
store one count and the other fails in one line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from changelog.errors import PermanentError
from changelog.pipeline.collector_streams import prepare_streams, read_count
from changelog.pipeline.control import COLLECTOR_STREAMS_META_KEY
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.logformat import parse_log_name
from tests.integration.serving import REPO, Fleet, cookie_identity
from tests.lab import Lab

# rgw-changelog's own behaviour: CI runs it on Pacific only (the radosgw facts it needs are
# covered on every release by the conformance and follower suites).
pytestmark = [pytest.mark.ceph, pytest.mark.release_neutral]

STREAMS = 4
KEYS = 80  # over 8 index shards: every stream gets some (a miss would fail the test, not skip)


def rados_store(lab: Lab, ns: str) -> Any:
    from changelog.pipeline.backends.rados import RadosStore

    return RadosStore(conffile=lab.conf, pool=lab.pool, namespace=ns, keyring=lab.keyring or None)


@pytest.fixture
def fleet(ceph_lab: Lab, s3_client: Any, tmp_path: Path) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:10]
    log_bucket = f"ss-logs-{tag}"
    s3_client.create_bucket(Bucket=log_bucket)
    f = Fleet(
        ceph_lab, tmp_path, f"test-streams-{tag}", log_bucket, [], size=2, partitions=4, streams=STREAMS
    )
    try:
        yield f
    finally:
        f.kill_all()
        store = rados_store(ceph_lab, f.ns)
        for oid in store.list_objects():
            store.remove_object(oid)
        store.close()


def cli(fleet: Fleet, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", "from changelog.cli import main; main()", "-c", str(fleet.slots[0].config), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def streams_table(text: str) -> list[list[str]]:
    """The rows of the status text's streams table (columns split on 2+ spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STREAM "))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def scrape(fleet: Fleet, n: int) -> dict[str, dict[str, float]]:
    """``/_/metrics`` of instance ``n``: {metric: {stream label ("" if none): value}} of the
    stream families."""
    with urllib.request.urlopen(f"http://127.0.0.1:{fleet.slots[n].port}/_/metrics", timeout=30) as resp:
        body = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if "stream" in s.name or s.name.endswith("readable_until_timestamp_seconds"):
                out.setdefault(s.name, {})[s.labels.get("stream", "")] = s.value
    return out


def wait_shared(fleet: Fleet, timeout: float) -> dict[str, Any]:
    """The collector's streams part of `/_/status` once each instance holds two streams."""
    deadline = time.monotonic() + timeout
    while True:
        fleet.check_running()
        streams = fleet.get(0, "/_/status")["collector"].get("streams", {})
        shares = sorted(len(v) for v in streams.get("holders", {}).values())
        if streams.get("unheld") == [] and shares == [2, 2]:
            return dict(streams)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"streams not shared 2/2 within {timeout:.0f}s: {streams}\n{fleet.log_tail()}"
            )
        time.sleep(0.3)


def test_two_partitioned_serves_show_streams_and_holders_in_status_and_metrics(
    ceph_lab: Lab, s3_client: Any, fleet: Fleet
) -> None:
    s3, tag = s3_client, fleet.ns[-10:]
    buckets = [f"ss-b{i}-{tag}" for i in range(2)]
    for b in buckets:
        s3.create_bucket(Bucket=b)
    fleet.buckets = buckets
    fleet.write_configs()
    t0 = time.monotonic()
    for slot in fleet.slots:
        fleet.start(slot.n)
    for slot in fleet.slots:
        fleet.wait_api(slot.n)
    wait_shared(fleet, timeout=60)
    t_shared = time.monotonic() - t0
    for i in range(KEYS):
        s3.put_object(Bucket=buckets[i % 2], Key=f"k{i:03d}", Body=b"x" * i)
    # Recorded by the follower, then one flush commits every stream (two rounds of it: the
    # objects of the second come with the follower's catch-up).
    deadline = time.monotonic() + 120
    while True:
        fleet.post(0, "/_/flush")
        status = fleet.get(0, "/_/status")
        streams = status["collector"]["streams"]
        committed = {n: d for n, d in streams["by_partition"].items() if d.get("last_object")}
        if len(committed) == STREAMS and int(status["index"]["entries"]) == 0:
            break
        assert time.monotonic() < deadline, f"not every stream committed: {streams}\n{fleet.log_tail()}"
        time.sleep(1.0)
    streams = wait_shared(fleet, timeout=30)
    # Each instance's metrics come from its snapshot of the shared state, taken at the start of
    # its last collector round: once a round has passed on both, they agree with the status
    # (nothing is written meanwhile).
    want = {str(n): parse_log_name(d["last_object"]).seq for n, d in streams["by_partition"].items()}  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while any(
        scrape(fleet, slot.n).get("rgw_changelog_collector_stream_seq") != want for slot in fleet.slots
    ):
        assert time.monotonic() < deadline, f"metrics never showed the committed seqs {want}"
        time.sleep(0.5)

    via_api = cli(fleet, "status")
    direct = cli(fleet, "status", "--direct")
    print(f"\nstreams surface ({ceph_lab.release}): shared 2/2 after {t_shared:.1f}s\n{via_api}")
    live = {slot.identity: slot.n for slot in fleet.slots}
    holder_of = {int(n): d["holder"] for n, d in streams["by_partition"].items()}
    slot_of = {n: live.get(cookie_identity(h)) if h else None for n, h in holder_of.items()}
    assert sorted(slot_of.values(), key=str) == [0, 0, 1, 1], (slot_of, live)
    for text in (via_api, direct):
        summary = next(line for line in text.splitlines() if line.startswith("collector streams:"))
        assert summary.startswith(f"collector streams: {STREAMS}, readable until 20"), summary
        assert "unheld" not in summary
        rows = streams_table(text)
        assert [int(r[0]) for r in rows] == list(range(STREAMS))
        for stream, holder, seq, name, pending, through in rows:
            assert holder == holder_of[int(stream)]
            parsed = parse_log_name(name)
            assert parsed is not None and parsed.stream == int(stream), name
            assert int(seq) >= parsed.seq and int(pending) >= 0 and through.endswith("Z")

    # A late record (the follower's) may still commit an object after the snapshot above: the
    # scrapes are compared with the status read after them, again until they agree.
    deadline = time.monotonic() + 60
    while True:
        scrapes = [scrape(fleet, slot.n) for slot in fleet.slots]
        streams = fleet.get(0, "/_/status")["collector"]["streams"]
        lasts = {s: parse_log_name(streams["by_partition"][str(s)]["last_object"]) for s in range(STREAMS)}
        seqs = {str(s): float(p.seq) for s, p in lasts.items() if p is not None}
        if all(got.get("rgw_changelog_collector_stream_seq") == seqs for got in scrapes):
            break
        assert time.monotonic() < deadline, f"metrics never agreed with the status: {seqs}"
        time.sleep(0.5)
    for i, got in enumerate(scrapes):
        assert got["rgw_changelog_collector_streams"][""] == STREAMS
        assert got["rgw_changelog_readable_until_timestamp_seconds"][""] > 0
        held = got["rgw_changelog_collector_stream_held"]
        assert held == {str(s): 1.0 if slot_of[s] == i else 0.0 for s in range(STREAMS)}, (i, held, slot_of)
        for s in range(STREAMS):
            last = lasts[s]
            assert last is not None
            assert got["rgw_changelog_collector_stream_seq"][str(s)] == last.seq, (i, s)
            assert got["rgw_changelog_collector_stream_last_commit_timestamp_seconds"][
                str(s)
            ] == pytest.approx(last.cutoff_us / 1e6)
            assert got["rgw_changelog_collector_stream_backlog_entries"][str(s)] == 0
    print("  metrics of serve 0: " + ", ".join(
        f"{name.removeprefix('rgw_changelog_')}={dict(sorted(v.items()))}" for name, v in sorted(scrapes[0].items())
    ))  # fmt: skip
    codes = fleet.terminate_all()
    assert codes == {s.n: 0 for s in fleet.slots}, (codes, fleet.log_tail())


class ReadTogether:
    """A RADOS store whose first read of the stream count waits for the other instance's: both
    read no count before either writes (two first starts at once, made certain). Every other
    call goes to the real store."""

    def __init__(self, store: Any, barrier: threading.Barrier) -> None:
        self._store = store
        self._barrier = barrier
        self._waited = False

    def omap_get(self, oid: str, keys: Sequence[str]) -> dict[str, bytes]:
        got: dict[str, bytes] = self._store.omap_get(oid, keys)
        if list(keys) == [COLLECTOR_STREAMS_META_KEY] and not self._waited:
            self._waited = True
            self._barrier.wait(timeout=30)
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_two_first_starts_with_different_counts_on_rados_store_one(ceph_lab: Lab) -> None:
    ns = f"test-streams-cas-{uuid.uuid4().hex[:10]}"
    stores = [rados_store(ceph_lab, ns) for _ in range(3)]
    try:
        ChangeIndex(stores[0], shards=8, prefix="t")
        barrier = threading.Barrier(2)
        errors: dict[int, BaseException | None] = {}

        def start(count: int, store: Any) -> None:
            try:
                prepare_streams(ChangeIndex(ReadTogether(store, barrier), shards=8, prefix="t"), count)
                errors[count] = None
            except BaseException as ex:  # noqa: BLE001 - the test asserts which
                errors[count] = ex

        threads = [threading.Thread(target=start, args=(c, s)) for c, s in ((4, stores[1]), (3, stores[2]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stored = read_count(ChangeIndex(stores[0], shards=8, prefix="t"))
        assert stored in (3, 4), stored
        loser = 7 - stored
        assert errors[stored] is None
        ex = errors[loser]
        assert isinstance(ex, PermanentError), ex
        assert f"collector_partitions = {loser}" in str(ex) and f"cut into {stored} streams" in str(ex)
        print(f"\nstream count race on RADOS ({ceph_lab.release}): {stored} stored; the other: {ex}")
    finally:
        for oid in stores[0].list_objects():
            stores[0].remove_object(oid)
        for s in stores:
            s.close()
