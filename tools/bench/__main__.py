"""``python -m tools.bench FIGURE``: run figures on the Ceph lab and print them beside their baselines.

The lab: ``--lab DIR`` (booted or completed with `tools/ceph-lab up DIR`, left running), else the
cluster the environment names (CEPH_CONF, RGW_ENDPOINT, ... as `tools/ceph-lab up` prints them),
else a throwaway lab booted in a temporary folder and stopped at the end.

Output: the table on stdout; with ``--json`` one JSON object per figure on stdout instead (the
table then goes to stderr). Progress goes to stderr. Exit status 0 when every figure was
produced, whether or not it meets its goal (a benchmark reports; it does not judge).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import Bench, Figure, FigureSkipped, Lab, lab_down, lab_from_env, lab_up, say, table

# Figure name -> module, in the order `all` runs them.
FIGURES = {
    "record": "tools.bench.record",
    "drain": "tools.bench.drain",
    "rgw-put": "tools.bench.rgw_put",
    "lag": "tools.bench.lag",
    "catchup": "tools.bench.catchup",
    "backup": "tools.bench.backup",
    "journal": "tools.bench.journal",
    "replication": "tools.bench.replication",
    "usage": "tools.bench.usage",
    "lifecycle": "tools.bench.lifecycle",
    "scale": "tools.bench.scale",
}
# Figures `all` leaves out (minutes even with --quick, or several processes of their own): asked
# for by name only.
BY_NAME_ONLY = {"lifecycle", "scale"}
# Figures that need a given Ceph release: a lab the run boots for them alone is of that release
# (`journal`: radosgw's bucket logging in Journal mode is new in Tentacle). On a lab of another
# release the figure says so in one line and is not produced.
RELEASES = {"journal": "tentacle"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="rgw-changelog benchmarks: each figure beside its baseline, measured in the same run.",
    )
    ap.add_argument("figure", choices=[*FIGURES, "all"], help="which figure (all: every one in order, but lifecycle and scale)")
    ap.add_argument("--json", action="store_true", help="one JSON object per figure on stdout (table on stderr)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload size (default 1)")
    ap.add_argument("--quick", action="store_true", help="small workloads (~1.5 min for all, ~3.5 with journal; the CI smoke test)")
    ap.add_argument("--lab", metavar="DIR", help="use (boot if needed) the lab in DIR and leave it running")
    ap.add_argument("--threads", type=int, default=4, help="S3 client threads of the PUT workloads (default 4)")
    ap.add_argument("--profile", action="store_true", help="record: print a cProfile of record_many")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be positive")
    return args


def machine() -> dict[str, object]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "mem_mib": mem, "python": platform.python_version(), "kernel": platform.release()}


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


@dataclass
class Outcome:
    """What a run produced: its figures, the figures that failed or were not produced (with why),
    and each produced group's wall time."""

    figures: list[Figure] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def open_lab(args: argparse.Namespace, tmp: Path) -> tuple[Lab, Path | None]:
    """The lab to run on (``--lab DIR``, else the environment's, else a throwaway one booted in
    ``tmp``), and the folder of the throwaway one (None when the run did not boot it)."""
    release = RELEASES.get(args.figure)  # None for `all`: its figures boot what they need
    if args.lab:
        return lab_up(Path(args.lab).absolute(), release), None
    env_lab = lab_from_env(os.environ)
    if env_lab is not None:
        return env_lab, None
    booted = tmp / "lab"
    return lab_up(booted, release), booted


def run_figures(bench: Bench, names: list[str], args: argparse.Namespace) -> Outcome:
    """Each figure group in turn; one that fails or cannot be produced does not stop the others.
    With ``--json`` each figure is printed as soon as its group is done."""
    out = Outcome()
    for name in names:
        t0 = time.monotonic()
        say(f"=== {name}")
        try:
            mod = importlib.import_module(FIGURES[name])
            got = mod.run(bench)
        except KeyboardInterrupt:
            raise
        except FigureSkipped as ex:
            out.skipped[name] = str(ex)
            say(f"{name}: not produced: {ex}")
            continue
        except Exception as ex:  # noqa: BLE001 - one broken figure must not hide the others
            out.failed.append(name)
            say(f"{name} FAILED: {type(ex).__name__}: {ex}\n{traceback.format_exc()}")
            continue
        out.timings[name] = time.monotonic() - t0
        for f in got:
            f.params.setdefault("scale", args.scale)
            f.params.setdefault("quick", args.quick)
        out.figures.extend(got)
        say(f"{name}: {len(got)} figures in {out.timings[name]:.0f}s")
        if args.json:
            for f in got:
                print(json.dumps(f.to_json()), flush=True)
    return out


def report(args: argparse.Namespace, outcome: Outcome, *, total: float, load_start: str) -> int:
    """The header line, the table and what was not produced (on stderr with ``--json``); the
    exit status."""
    out = sys.stderr if args.json else sys.stdout
    info = machine()
    timings = outcome.timings
    print(
        f"\nrgw-changelog benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}; {info['cpus']} CPUs, "
        f"{info['mem_mib']} MiB, Python {info['python']}; scale {args.scale}{', quick' if args.quick else ''}; "
        f"{total:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}); "
        f"load average {load_start} at the start, {loadavg()} at the end\n",
        file=out,
    )
    print(table(outcome.figures), file=out, flush=True)
    for name, why in outcome.skipped.items():
        print(f"\n{name}: not produced: {why}", file=out, flush=True)
    if outcome.failed:
        print(f"\nFAILED figures: {', '.join(outcome.failed)}", file=out)
        return 1
    # A figure asked for by name and not produced fails the run; within `all` it does not.
    return 1 if outcome.skipped and args.figure != "all" else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in FIGURES if n not in BY_NAME_ONLY] if args.figure == "all" else [args.figure]
    tmp = Path(tempfile.mkdtemp(prefix="rgw-changelog-bench-"))
    lab, booted = open_lab(args, tmp)
    bench = Bench(
        lab=lab,
        tag=uuid.uuid4().hex[:8],
        tmp=tmp,
        scale=args.scale,
        quick=args.quick,
        profile=args.profile,
        threads=args.threads,
        throwaway=booted is not None,
    )
    say(f"lab: {lab.rgw_endpoint}, {lab.conf}, pool {lab.pool}; scale {args.scale}{', quick' if args.quick else ''}")
    started = time.monotonic()
    load_start = loadavg()
    try:
        outcome = run_figures(bench, names, args)
    finally:
        bench.close()
        if booted is not None:
            lab_down(booted)
        shutil.rmtree(tmp, ignore_errors=True)
    return report(args, outcome, total=time.monotonic() - started, load_start=load_start)

if __name__ == "__main__":
    sys.exit(main())
