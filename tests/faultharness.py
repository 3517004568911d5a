"""Fault-injection harness for the collector: run it in a child process, SIGKILL (or SIGSTOP) it
at a named step of a pass or at a random time, restart it, and check the outcome.

The store and the target are described by ``Factory`` objects (an importable callable plus
JSON-able keyword arguments) so that each child process can open its own: the same harness
runs on the embedded sqlite store with a directory target, with S3 (moto server), and on RADOS +
radosgw (integration tests pass factories for those).

What every campaign proves, after a final clean drain (``verify``):

* the union of the records of every committed log object == the set of recorded mutations;
* no event id appears twice, in one object or across objects;
* every shard of the index is empty and no pending commit record is left.

Run as a script, this file is the child: ``python faultharness.py child '<json spec>'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from collector_factory import collector  # noqa: E402

from changelog.errors import LeaseLost, LockBusy, TransientError  # noqa: E402
from changelog.pipeline.collector import Collector  # noqa: E402
from changelog.pipeline.control import COLLECTOR_PENDING_PREFIX as PENDING_PREFIX  # noqa: E402
from changelog.pipeline.index import ChangeIndex  # noqa: E402
from changelog.pipeline.logformat import LogRecord, iter_records, parse_log_name  # noqa: E402
from changelog.pipeline.mutation import Mutation, Op  # noqa: E402
from changelog.pipeline.reader import list_logs  # noqa: E402
from changelog.pipeline.store import omap_iter  # noqa: E402

logger = logging.getLogger("faultharness")

# Exit codes of a child.
EXIT_DONE = 0
EXIT_LEASE_LOST = 3
EXIT_GAVE_UP = 4


@dataclass(frozen=True)
class Factory:
    """``module:callable`` and keyword arguments, rebuilt in each child process."""

    func: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        module, _, name = self.func.partition(":")
        fn: Any = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
        return fn(**dict(self.kwargs))

    def to_json(self) -> dict[str, Any]:
        return {"func": self.func, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Factory:
        return cls(doc["func"], doc.get("kwargs", {}))


@dataclass(frozen=True)
class Setup:
    """Everything a child needs to open the same index and target and run a collector."""

    store: Factory
    target: Factory
    shards: int = 4
    index_prefix: str = "fault"
    log_prefix: str = "logs"
    compression: str = "none"
    lease_ttl: float = 1.0
    part_bytes: int = 8192
    roll_entries: int = 400
    roll_bytes: int = 256 * 1024
    page: int = 40
    trim_batch: int = 25
    settle: float = 0.0
    interval: float = 0.05

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["store"] = self.store.to_json()
        doc["target"] = self.target.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Setup:
        d = dict(doc)
        d["store"] = Factory.from_json(d["store"])
        d["target"] = Factory.from_json(d["target"])
        return cls(**d)

    def open_index(self) -> ChangeIndex:
        return ChangeIndex(self.store.build(), shards=self.shards, prefix=self.index_prefix)

    def collector(self, index: ChangeIndex, target: Any, **extra: Any) -> Collector:
        opts: dict[str, Any] = dict(
            settle=self.settle,
            lease_ttl=self.lease_ttl,
            roll_entries=self.roll_entries,
            roll_bytes=self.roll_bytes,
            part_bytes=self.part_bytes,
            compression=self.compression,
            log_prefix=self.log_prefix,
            interval=self.interval,
            page=self.page,
            trim_batch=self.trim_batch,
            standby_retry=0.05,
            backoff_base=0.05,
            backoff_max=0.5,
            gc_age=600.0,
        )
        opts.update(extra)
        return collector(index, target, **opts)


# --------------------------------------------------------------------------- the child


class _RecordingTarget:
    """Wraps a target; appends (name, sha256) of every completed upload to a file."""

    def __init__(self, inner: Any, path: str) -> None:
        self._inner = inner
        self._path = path
        self._parts: dict[str, list[bytes]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _note(self, name: str, digest: str) -> None:
        with open(self._path, "a") as f:
            f.write(json.dumps({"name": name, "sha256": digest, "pid": os.getpid()}) + "\n")

    def put(self, name: str, data: bytes, *, metadata: Any = None) -> None:
        self._inner.put(name, data, metadata=metadata)
        self._note(name, hashlib.sha256(data).hexdigest())

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Any:
        part = self._inner.upload_part(name, upload_id, number, data)
        self._parts.setdefault(upload_id, []).append(data)
        return part

    def complete_multipart(self, name: str, upload_id: str, parts: Any) -> None:
        self._inner.complete_multipart(name, upload_id, parts)
        self._note(name, hashlib.sha256(b"".join(self._parts.pop(upload_id, []))).hexdigest())


def _fault_hook(step: str | None, at: int, action: str) -> Callable[[str], None] | None:
    if not step:
        return None
    seen: Counter[str] = Counter()

    def hook(name: str) -> None:
        seen[name] += 1
        if name == step and seen[name] == at:
            print(f"FAULT {action} at {name}#{at}", flush=True)
            if action == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def child_main(spec: Mapping[str, Any]) -> int:
    """Open the index and target, then ``drain`` (passes until the index is empty and no
    commit is pending) or ``serve`` (``Collector.run`` until SIGTERM)."""
    logging.basicConfig(
        level=os.environ.get("FAULT_LOG", "WARNING"),
        format=f"%(asctime)s child[{os.getpid()}] %(name)s %(levelname)s %(message)s",
    )
    setup = Setup.from_json(spec["setup"])
    index = setup.open_index()
    target = setup.target.build()
    if spec.get("record_uploads"):
        target = _RecordingTarget(target, spec["record_uploads"])
    hook = _fault_hook(os.environ.get("FAULT_STEP"), int(os.environ.get("FAULT_AT", "1")),
                       os.environ.get("FAULT_ACTION", "kill"))
    collector = setup.collector(index, target, fault_hook=hook,
                                collector_id=spec.get("collector_id") or f"child-{os.getpid()}")
    if spec.get("mode") == "serve":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        collector.run(stop)
        return EXIT_DONE
    deadline = time.monotonic() + float(spec.get("timeout", 60.0))
    announced = False
    while time.monotonic() < deadline:
        try:
            if not collector.try_takeover():
                time.sleep(0.05)
                continue
            if not announced:
                print("ACTIVE", flush=True)
                announced = True
            collector.run_pass()
            if _drained(index):
                collector.close()
                return EXIT_DONE
        except LeaseLost as ex:
            # Expected after a SIGSTOP; otherwise a renewal came too late (a loaded machine and
            # a 1 s lease): like the service loop, stop writing and start over as a standby.
            print(f"LEASE LOST {ex}", flush=True)
            if spec.get("exit_on_lease_lost"):
                return EXIT_LEASE_LOST
            collector.step_down()
        except (LockBusy, TransientError) as ex:
            logger.info("retrying: %s", ex)
            time.sleep(0.05)
    return EXIT_GAVE_UP


def _drained(index: ChangeIndex) -> bool:
    if any(True for _ in omap_iter(index.store, index.control_oid, prefix=PENDING_PREFIX)):
        return False
    return all(not index.page(s, limit=1) for s in range(index.shards))


# --------------------------------------------------------------------------- the parent


def mutations(start: int, count: int, *, rng: random.Random, source: str = "fault") -> list[Mutation]:
    """``count`` mutations with positions ``start..`` of one source stream: varied buckets,
    awkward keys (unicode, NUL, newline), versions, deletes and metadata."""
    out = []
    for i in range(start, start + count):
        bucket = f"bucket-{i % 3}"
        key = rng.choice([f"obj/{i}", f"ключ-{i}", f"nul\x00{i}", f"line\n{i}", f"sp ace {i}", f"{i}"])
        op = rng.choice([Op.WRITE, Op.WRITE, Op.WRITE, Op.DELETE, Op.DELETE_MARKER])
        out.append(
            Mutation(
                bucket=bucket,
                key=key,
                op=op,
                mtime_ns=time.time_ns(),
                source=source,
                position=f"{i:012d}",
                seq=f"{i:012d}",
                version_id=rng.choice([None, f"v{i}"]),
                size=i if op is Op.WRITE else None,
                etag=f"{i:032x}" if op is Op.WRITE else None,
                metadata={"n": str(i)} if i % 7 == 0 else {},
            )
        )
    return out


@dataclass
class ChildResult:
    step: str | None
    at: int
    returncode: int
    killed: bool
    seconds: float
    output: str


class Harness:
    """Drives children against one index + target and tracks what was recorded."""

    def __init__(self, setup: Setup, workdir: Path, *, seed: int = 0, child_timeout: float = 60.0) -> None:
        self.setup = setup
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.child_timeout = child_timeout
        self.index = setup.open_index()
        self.recorded: dict[str, Mutation] = {}
        self._next = 0
        self.results: list[ChildResult] = []

    @property
    def kills(self) -> int:
        return sum(1 for r in self.results if r.killed)

    def record(self, count: int) -> None:
        ms = mutations(self._next, count, rng=self.rng)
        self._next += count
        self.index.record_many(ms)
        for m in ms:
            self.recorded[m.event_id] = m

    def spawn(
        self,
        *,
        step: str | None = None,
        at: int = 1,
        action: str = "kill",
        mode: str = "drain",
        record_uploads: str | None = None,
        collector_id: str | None = None,
        exit_on_lease_lost: bool = False,
    ) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.pop("FAULT_STEP", None)
        if step:
            env.update(FAULT_STEP=step, FAULT_AT=str(at), FAULT_ACTION=action)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        spec = {"setup": self.setup.to_json(), "mode": mode, "timeout": self.child_timeout,
                "record_uploads": record_uploads, "collector_id": collector_id,
                "exit_on_lease_lost": exit_on_lease_lost}
        return subprocess.Popen(
            [sys.executable, __file__, "child", json.dumps(spec)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run_child(self, *, step: str | None = None, at: int = 1, record_while: int = 0,
                  kill_after: float | None = None) -> ChildResult:
        """One child to its end: killed at ``step``'s ``at``-th occurrence, killed by us
        ``kill_after`` seconds after it became active, or drained to the end. ``record_while``
        more mutations are recorded while it runs."""
        t0 = time.monotonic()
        proc = self.spawn(step=step, at=at)
        out: list[str] = []
        if kill_after is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            out.append(line)
            if line.startswith("ACTIVE"):
                time.sleep(kill_after)
                proc.send_signal(signal.SIGKILL)
        if record_while:
            self.record(record_while)
        try:
            text, _ = proc.communicate(timeout=self.child_timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
            raise AssertionError(f"child hung (step {step}#{at}): {''.join(out) + text}") from None
        result = ChildResult(step if kill_after is None else "random", at, proc.returncode,
                             proc.returncode == -signal.SIGKILL, time.monotonic() - t0, "".join(out) + text)
        self.results.append(result)
        if not result.killed and result.returncode != EXIT_DONE:
            raise AssertionError(f"child failed with {result.returncode} (step {step}#{at}):\n{result.output}")
        return result

    def campaign(self, plan: Iterable[tuple[str, int]], *, random_kills: int = 0, batch: int = 300,
                 max_random_delay: float = 0.3) -> None:
        """Kill a child at each (step, n) of ``plan``, then ``random_kills`` at random times.
        Before each child a backlog of about ``batch`` mutations is recorded, and more while it
        runs (late arrivals racing the floor)."""
        for step, at in plan:
            self.record(self.rng.randint(batch // 2, batch * 2))
            self.run_child(step=step, at=at, record_while=self.rng.randint(0, batch // 4))
        for _ in range(random_kills):
            # A child may finish its work before the timer fires (a fast pass): then it is tried
            # again on a new backlog with a shorter delay, so the kills asked for do land.
            delay = max_random_delay
            for _attempt in range(6):
                self.record(self.rng.randint(batch // 2, batch * 2))
                if self.run_child(kill_after=self.rng.uniform(0.0, delay),
                                  record_while=self.rng.randint(0, batch // 4)).killed:
                    break
                delay /= 2

    def finish(self) -> Report:
        """A clean child drains everything; then check the outcome."""
        self.run_child()
        report = verify(self.setup, self.recorded, self.index)
        report.kills = self.kills
        return report


@dataclass
class Report:
    objects: int
    records: int
    recorded: int
    kills: int = 0


def committed_records(setup: Setup, target: Any | None = None) -> tuple[int, list[LogRecord]]:
    """Every record of every committed log object, duplicates kept."""
    target = target if target is not None else setup.target.build()
    records: list[LogRecord] = []
    objects = 0
    for obj in list_logs(target, prefix=setup.log_prefix):
        objects += 1
        parsed = parse_log_name(obj.name)
        assert parsed is not None
        with target.open(obj.name) as stream:
            records.extend(iter_records(stream, parsed.compression))
    return objects, records


def verify(setup: Setup, recorded: Mapping[str, Mutation], index: ChangeIndex | None = None) -> Report:
    index = index if index is not None else setup.open_index()
    objects, records = committed_records(setup)
    ids = Counter(r.id for r in records)
    twice = {i: n for i, n in ids.items() if n > 1}
    assert not twice, f"{len(twice)} ids in more than one record, e.g. {list(twice.items())[:3]}"
    missing = set(recorded) - set(ids)
    extra = set(ids) - set(recorded)
    assert not missing, f"{len(missing)} recorded mutations in no log object, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} log records of no recorded mutation, e.g. {sorted(extra)[:3]}"
    for r in records:
        m = recorded[r.id]
        assert (r.bucket, r.key, r.seq, r.op, r.version_id) == (m.bucket, m.key, m.seq, m.op.value, m.version_id)
    for s in range(index.shards):
        left = index.stats(s).entries
        assert left == 0, f"shard {s} still holds {left} entries"
    pending = [k for k, _ in omap_iter(index.store, index.control_oid, prefix=PENDING_PREFIX)]
    assert not pending, f"pending commit records left: {pending}"
    return Report(objects, len(records), len(recorded))


# Steps of a pass, in the order a pass reaches them, with how many times each is typically
# reached per child (a kill picks 1..n). The recovery steps only fire when the child before
# left a pending record, so the plan puts them right after "pending"/"commit"/"complete".
PASS_STEPS: dict[str, int] = {
    "pass": 1,
    "floor": 4,
    "seq": 2,
    "read": 6,
    "part": 4,
    "pending": 2,
    "commit": 2,
    "complete": 2,
    "trim": 5,
    "drop": 2,
    "watermark": 1,
}


def plan(kills_per_step: int, *, rng: random.Random, steps: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """A kill plan: each step ``kills_per_step`` times at a random occurrence; a kill that
    leaves a pending commit is followed by kills inside its recovery."""
    out: list[tuple[str, int]] = []
    for step in steps if steps is not None else PASS_STEPS:
        for i in range(kills_per_step):
            out.append((step, rng.randint(1, PASS_STEPS.get(step, 1))))
            if step in ("pending", "commit", "complete", "trim") and i % 2 == 0:
                out.append(("recover.upload" if step in ("pending", "commit") else "recover.trim",
                            1 if step != "trim" else rng.randint(1, 3)))
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        sys.exit(child_main(json.loads(sys.argv[2])))
    print(f"usage: {sys.argv[0]} child '<json spec>'", file=sys.stderr)
    sys.exit(2)
