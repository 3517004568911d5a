"""Review of two-way replication (REP.2), brief RV2: the randomized two-zone model of
``test_replication_two_way`` extended with what it did not cover: replicator restarts (each
zone's ``KeyMemory`` rebuilt from its applied records as ``SiteReplicator._recall`` does: echoes
by their writer), careful replays of a record already applied (a crash before its outcome was
saved), rewrites of the same bytes, and delete records stamped as the follower stamps them (the
time it read the delete) or as the design says (the deleted object's mtime). Both zones must end
with the same keys and bytes, and no echo is ever sent back. (Equal states cannot show a
mutation lost on both sides: finding 1 of ``test_rep2_review_deletes`` ends with the key gone
from both zones, so the read-time variant passes; a reference model of last writer wins would
be needed to see it.)"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from moto import mock_aws

from changelog.consumers.replication.apply import ECHO, WRITER, Applied, apply_record
from changelog.consumers.replication.two_way import KeyMemory
from changelog.pipeline.logformat import LogRecord
from tests.unit.test_rep2_review_deletes import NoVersions, Zones, rec


@pytest.fixture
def zones(monkeypatch: pytest.MonkeyPatch) -> Iterator[Zones]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield Zones()


class Model:
    """Both zones, their pending records (what each follower recorded and its replicator has
    not applied yet) and the records each replicator applied (what ``_recall`` reads again)."""

    def __init__(self, zones: Zones, rnd: random.Random, *, read_time: bool, same_bytes: float,
                 restarts: float, replays: float) -> None:
        self.z = zones
        self.rnd = rnd
        self.read_time = read_time
        self.same_bytes = same_bytes
        self.restarts = restarts
        self.replays = replays
        self.pending: dict[str, list[LogRecord]] = {"aaa": [], "bbb": []}
        self.applied: dict[str, list[LogRecord]] = {"aaa": [], "bbb": []}
        self.echoes_sent = 0
        self.keys = [f"k{i}" for i in range(3)]

    def head(self, bucket: str, key: str) -> tuple[str, datetime, str] | None:
        """ETag, Last-Modified and metadata: a rewrite of the same bytes in the same second
        differs from what it replaced only by its metadata (a replica's ``rgwcl-*``)."""
        try:
            h = self.z.s3.head_object(Bucket=bucket, Key=key)
        except Exception:  # noqa: BLE001 - absent
            return None
        return str(h["ETag"]), h["LastModified"], repr(sorted(h.get("Metadata", {}).items()))

    def mutate(self, bucket: str) -> None:
        key = self.rnd.choice(self.keys)
        if self.rnd.random() < 0.3:
            got = self.head(bucket, key)
            if got is None:
                return
            self.z.s3.delete_object(Bucket=bucket, Key=key)
            t = datetime.now(UTC) + timedelta(seconds=1) if self.read_time else got[1]
            self.pending[bucket].append(rec("delete", bucket, key, time=t))
            return
        body = b"same" if self.rnd.random() < self.same_bytes else f"{bucket}-{self.rnd.random()}".encode()
        self.pending[bucket].append(self.z.put(bucket, key, body))

    def restart(self, bucket: str) -> None:
        """A new lease holder: the memory rebuilt from the applied records (``_recall``)."""
        memory = self.z.memory[bucket] = KeyMemory()
        for r in self.applied[bucket]:
            echo = r.metadata.get(WRITER) == f"rep-{bucket}"
            memory.note(r, Applied("skipped", reason=ECHO) if echo else Applied("completed"))

    def apply(self, r: LogRecord, *, careful: bool) -> Applied:
        memory = self.z.memory[r.bucket]
        out = apply_record(r, self.z.s3, self.z.dest(self.z.other(r.bucket)), NoVersions(),
                           careful=careful, before=memory.before(r))
        memory.note(r, out)
        return out

    def step(self, bucket: str) -> None:
        r = self.pending[bucket].pop(0)
        to, key = self.z.other(bucket), r.key or ""
        if self.rnd.random() < self.restarts:
            self.restart(bucket)
        before = self.head(to, key)
        out = self.apply(r, careful=False)
        if self.rnd.random() < self.replays:
            # Died before the outcome was saved: the successor's memory lacks it, and it
            # applies the record again, carefully.
            self.restart(bucket)
            out = self.apply(r, careful=True)
        self.applied[bucket].append(r)
        after = self.head(to, key)
        if r.metadata.get(WRITER) == f"rep-{bucket}":
            self.echoes_sent += out.status != "skipped"
        if after != before:  # the replicator wrote at ``to``: its follower records it
            if after is None:
                assert before is not None
                t = datetime.now(UTC) + timedelta(seconds=1) if self.read_time else before[1]
                self.pending[to].append(rec("delete", to, key, time=t))
            else:
                self.pending[to].append(self.z.echo(to, key))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.rnd.random() < 0.4:
                self.mutate(self.rnd.choice(["aaa", "bbb"]))
            else:
                sides = [b for b in ("aaa", "bbb") if self.pending[b]]
                if sides:
                    self.step(self.rnd.choice(sides))
        while self.pending["aaa"] or self.pending["bbb"]:
            self.step(self.rnd.choice([b for b in ("aaa", "bbb") if self.pending[b]]))


def _run(zones: Zones, seed: int, **kw: float | bool) -> Model:
    m = Model(zones, random.Random(seed), **kw)  # type: ignore[arg-type]
    m.run(60)
    return m


@pytest.mark.parametrize("seed", range(20))
def test_restarts_and_careful_replays_converge(zones: Zones, seed: int) -> None:
    """Deletes stamped with the deleted object's mtime (the design's model), fresh bytes."""
    m = _run(zones, seed, read_time=False, same_bytes=0.0, restarts=0.2, replays=0.2)
    assert m.echoes_sent == 0
    assert zones.state("aaa") == zones.state("bbb")


@pytest.mark.parametrize("seed", range(20))
def test_rewrites_of_the_same_bytes_converge(zones: Zones, seed: int) -> None:
    m = _run(zones, seed, read_time=False, same_bytes=0.5, restarts=0.0, replays=0.0)
    assert m.echoes_sent == 0
    assert zones.state("aaa") == zones.state("bbb")


@pytest.mark.parametrize("seed", range(20))
def test_deletes_stamped_as_the_follower_stamps_them_converge(zones: Zones, seed: int) -> None:
    m = _run(zones, seed, read_time=True, same_bytes=0.0, restarts=0.0, replays=0.0)
    assert m.echoes_sent == 0
    assert zones.state("aaa") == zones.state("bbb")
