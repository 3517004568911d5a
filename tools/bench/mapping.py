"""Figure ``follower_map_entry``: the follower's per-entry mapping of bilog entries to mutations
(``rgw_module.mapping``), against the code it had before issue 17 made it cheap.

A micro figure: no lab, no I/O. The entries are every captured bilog entry of the three releases
(``tests/unit/rgw_bilog_captured*.json``), repeated to ~50,000, with their times spread over
``ENTRIES_PER_SECOND`` (a backlog spans many seconds; the per-second time cache must not look
better than it is). Ours maps them as the bilog reader does, a ``ShardMapper`` per page of
``PAGE`` entries; the baseline is ``map_entry`` per entry of ``rgw_module/mapping.py`` and
``changelog/pipeline/mutation.py`` as of ``BEFORE`` (loaded from git), as the reader called it.
Both give the same records (checked here on one pass; tests/unit/test_mapping_speed.py checks it
in depth). Five interleaved rounds; medians. Also runs alone: ``python -m tools.bench.mapping``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from changelog.pipeline.mutation import Mutation, _printable_ascii
from rgw_module import mapping
from rgw_module.mapping import BilogEntry, BucketShard, ShardMapper
from tools.bench.common import REPO, Bench, Figure, FigureSkipped, interleaved, median, say, table

GROUP = "follower"
# The last commit before issue 17's mapping changes: the baseline's code.
BEFORE = "bf103a046cab5bf741efba82e6345f57c702dbba"
ENTRIES = 50_000
# A page of the bucket-index log, as radosgw returns it (changelog.config.RGW_PAGE).
PAGE = 1000
# The lab's backlog was written at a few thousand PUTs per second; 500 is on the slow side.
ENTRIES_PER_SECOND = 500
ROUNDS = 5
SHARD = ("b", "zone.4122.1", 3)
GENERATION = 1


def load_before() -> tuple[types.ModuleType, types.ModuleType]:
    """``rgw_module.mapping`` as of ``BEFORE``, and the ``changelog.pipeline.mutation`` of then
    that it runs over."""

    def source(path: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), "show", f"{BEFORE}:{path}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as ex:
            raise FigureSkipped(
                f"the code before issue 17 is not in this checkout ({BEFORE[:12]}): {ex}"
            ) from ex

    modules: dict[str, types.ModuleType] = {}
    for name, path, rewrite in (
        ("_before17_mutation", "changelog/pipeline/mutation.py", None),
        ("_before17_mapping", "rgw_module/mapping.py", ("changelog.pipeline.mutation", "_before17_mutation")),
    ):
        text = source(path)
        if rewrite is not None:
            text = text.replace(f"from {rewrite[0]} import", f"from {rewrite[1]} import")
        mod = types.ModuleType(name)
        # dataclasses look their module up by name while the class is made.
        sys.modules[name] = mod
        # Our own code, of a pinned commit: the only way to run it beside today's.
        exec(compile(text, f"{BEFORE[:12]}:{path}", "exec"), mod.__dict__)
        modules[name] = mod
    return modules["_before17_mapping"], modules["_before17_mutation"]


def workload(n: int) -> list[BilogEntry]:
    """The captured entries repeated to ``n``, their set times moved to ``ENTRIES_PER_SECOND``."""
    captured: list[BilogEntry] = []
    for suffix in ("", "_reef", "_tentacle"):
        doc = json.loads((REPO / "tests" / "unit" / f"rgw_bilog_captured{suffix}.json").read_text())
        captured += [e for case in doc["cases"] for e in case["entries"]]
    start = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    out: list[BilogEntry] = []
    for i in range(n):
        e = dict(captured[i % len(captured)])
        stamp = str(e.get("timestamp", ""))
        if len(stamp) > 19:  # keep the fraction radosgw wrote, and "0.000000" as it is
            second = datetime.fromtimestamp(start + i // ENTRIES_PER_SECOND, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
            e["timestamp"] = second + stamp[19:]
        out.append(e)  # type: ignore[arg-type]
    return out


def map_ours(entries: Sequence[BilogEntry]) -> list[Mutation | None]:
    bs = BucketShard(*SHARD)
    out: list[Mutation | None] = []
    for start in range(0, len(entries), PAGE):
        mapper = ShardMapper(bs, GENERATION)
        out += [mapper.map(e, observed_ns=0) for e in entries[start : start + PAGE]]
    return out


def map_before(before: types.ModuleType, entries: Sequence[BilogEntry]) -> list[Any]:
    bs = before.BucketShard(*SHARD)
    map_entry = before.map_entry
    return [map_entry(e, bs, generation=GENERATION, observed_ns=0) for e in entries]


def _us_per(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n * 1e6


def parts(
    before: types.ModuleType, before_mutation: types.ModuleType, entries: Sequence[BilogEntry]
) -> dict[str, dict[str, float]]:
    """µs per entry of the parts issue 17 named, before and now (one pass each)."""
    times = [str(e.get("timestamp", "")) for e in entries]
    old_bs, new_bs = before.BucketShard(*SHARD), BucketShard(*SHARD)
    position = "00000000000000000001.00000000000000000004.0000000006"
    n = len(entries)
    old_check, new_check = before_mutation._printable_ascii, _printable_ascii
    return {
        "parse_time_ns": {
            "before": _us_per(n, lambda: [before.parse_time_ns(t) for t in times]),
            "now": _us_per(n, lambda: [mapping.parse_time_ns(t) for t in times]),
        },
        "source": {
            "before": _us_per(n, lambda: [old_bs.source for _ in times]),
            "now": _us_per(n, lambda: [new_bs.source for _ in times]),  # once per page in the reader
        },
        "printable_checks_x2": {
            "before": _us_per(
                n, lambda: [old_check(new_bs.source, 200) and old_check(position, 100) for _ in times]
            ),
            "now": _us_per(
                n, lambda: [new_check(new_bs.source, 200) and new_check(position, 100) for _ in times]
            ),
        },
    }


def measure(n: int, rounds: int) -> Figure:
    before, before_mutation = load_before()
    entries = workload(n)
    ours, theirs = map_ours(entries), map_before(before, entries)
    same = [a.encode() if a else None for a in ours] == [b.encode() if b else None for b in theirs]
    if not same:
        raise AssertionError("the mapping gives other records than the code before issue 17")
    mapped = sum(m is not None for m in ours)
    say(f"follower_map_entry: {n} entries ({mapped} records), {rounds} interleaved rounds")
    now_us, before_us = interleaved(
        rounds,
        lambda _i: _us_per(n, lambda: map_ours(entries)),
        lambda _i: _us_per(n, lambda: map_before(before, entries)),
    )
    split = parts(before, before_mutation, entries)
    return Figure(
        group=GROUP,
        name="follower_map_entry",
        unit="µs/entry",
        value=median(now_us),
        baseline=median(before_us),
        baseline_name=f"map_entry before issue 17 ({BEFORE[:7]})",
        higher_is_better=False,
        params={
            "entries": n,
            "records": mapped,
            "page": PAGE,
            "entries_per_second": ENTRIES_PER_SECOND,
            "rounds": rounds,
            "ours_us": [round(x, 3) for x in now_us],
            "baseline_us": [round(x, 3) for x in before_us],
            "parts_us": {k: {w: round(x, 3) for w, x in v.items()} for k, v in split.items()},
        },
        summary="parts, µs/entry before -> now: "
        + ", ".join(f"{k} {v['before']:.2f} -> {v['now']:.2f}" for k, v in split.items()),
    )


def run(bench: Bench) -> list[Figure]:
    return [measure(bench.size(ENTRIES, ENTRIES // 5), ROUNDS)]


def main() -> int:
    fig = measure(ENTRIES, ROUNDS)
    print(table([fig]))
    print(json.dumps(fig.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
