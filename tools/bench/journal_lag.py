"""The ``journal`` figure's lag phase (``tools/bench/journal.py``): writers that PUT at a steady
rate into buckets both serve and the Journal log, and a poller that notes when each PUT's record
first shows in our committed log objects and in the Journal's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tools.bench.journal_logging import parse_journal
from tools.bench.journal_workload import OBJECT_BYTES
from tools.bench.lag import LogPoller
from tools.bench.serve import ServeProcess

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

POLL = 0.5  # s between listings of the log buckets in the lag phase
IDLE = 20.0  # s after the last write of a lag bucket before counting what is still invisible


class LagPoller(LogPoller):
    """Every POLL s: our new committed log objects and the Journal's new log objects; the first
    time each (bucket, key) was seen in each."""

    def __init__(self, serve: ServeProcess, s3: S3Client, log_bucket: str, buckets: list[str]) -> None:
        super().__init__(serve, name="journal-lag-poller", every=POLL)
        self.s3 = s3
        self.log_bucket = log_bucket
        self.buckets = set(buckets)
        self.ours: dict[tuple[str, str], float] = {}
        self.journal: dict[tuple[str, str], float] = {}
        self._names: set[str] = set()

    def on_record(self, rec: Any, t: float) -> None:
        if rec.bucket in self.buckets:
            self.ours.setdefault((rec.bucket, rec.key), t)

    def poll(self) -> None:
        super().poll()
        for bucket in self.buckets:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.log_bucket, Prefix=f"{bucket}/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    if name in self._names:
                        continue
                    t = time.time()
                    body = self.s3.get_object(Bucket=self.log_bucket, Key=name)["Body"].read()
                    for line in parse_journal(body.decode("utf-8", "replace")):
                        self.journal.setdefault((line.bucket, line.key), t)
                    self._names.add(name)


@dataclass
class LagRun:
    """One lag bucket: PUTs at ``rate`` for ``window`` s (measured), then tail PUTs until every
    measured record is visible in the Journal (or ``extra`` s more), then ``IDLE`` s of quiet."""

    bucket: str
    roll: int
    rate: float
    window: float
    extra: float
    put_at: dict[str, float] = field(default_factory=dict)
    tail_at: dict[str, float] = field(default_factory=dict)
    gave_up: bool = False
    tail_invisible_journal: int = 0
    tail_invisible_ours: int = 0
    error: BaseException | None = None

    def write(self, s3: S3Client, poller: LagPoller) -> None:
        try:
            self._write(s3, poller)
        except BaseException as ex:  # noqa: BLE001 - reported by the figure
            self.error = ex

    def _write(self, s3: S3Client, poller: LagPoller) -> None:
        body = b"x" * OBJECT_BYTES
        t0 = next_t = time.monotonic()
        i = 0
        while True:
            elapsed = time.monotonic() - t0
            measuring = elapsed < self.window
            if not measuring:
                if all((self.bucket, k) in poller.journal for k in self.put_at):
                    break
                if elapsed > self.window + self.extra:
                    self.gave_up = True
                    break
            key = f"{'m' if measuring else 't'}/{i:06d}"
            s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            (self.put_at if measuring else self.tail_at)[key] = time.time()
            i += 1
            next_t = max(next_t + 1 / self.rate, time.monotonic())
            time.sleep(max(0.0, next_t - time.monotonic()))
        time.sleep(IDLE)
        self.tail_invisible_journal = sum(1 for k in self.tail_at if (self.bucket, k) not in poller.journal)
        self.tail_invisible_ours = sum(1 for k in self.tail_at if (self.bucket, k) not in poller.ours)

    def lags(self, seen: dict[tuple[str, str], float]) -> list[float]:
        return [seen[(self.bucket, k)] - t for k, t in self.put_at.items() if (self.bucket, k) in seen]
