"""Figure 6, ``journal``: the peer comparison of issue 12, radosgw's own bucket logging in
**Journal** mode (new in Tentacle, Ceph 20.2) beside ``rgw-changelog serve``, on the same
radosgw and the same mixed workload, in four configurations:

* **none**: buckets nobody follows and no serve process;
* **serve**: buckets followed by a running ``rgw-changelog serve`` (default timings, index on
  RADOS, logs to a bucket of the same radosgw), started and caught up before the round, stopped
  after it (as in ``rgw-put``);
* **journal**: buckets with bucket logging in Journal mode (``ObjectRollTime`` ``ROLL_SHORT``)
  into a log bucket of the same tenant (with the bucket policy that lets the logging service
  principal write there);
* **both**: buckets with Journal logging and followed by serve.

A round in one configuration: N 4 KiB PUTs from boto3 threads (timed: the throughput figure),
then the mixed part (untimed): overwrites, copies, multipart uploads, DELETEs, a multi-object
delete, a unicode key with a space, and in a versioned bucket two versions per key, a delete
marker, the deletion of a version, a multi-object delete of versions and of current objects
(delete markers), a multipart upload. It also sends requests that must leave no record: PUTs
with ``If-None-Match: *`` on an existing key (412), PUTs signed with a wrong secret (403), PUTs
to a bucket that does not exist (404), DELETEs of missing keys and a multi-object delete naming
missing keys (no-ops). The workload keeps the ground truth itself: a ledger of every
acknowledged mutation (bucket, key, write | delete | delete_marker, version id, ETag) and of
every request that must leave no record.

Configurations rotate so that each goes first in turn (``reps`` rounds each, 4 in the full run,
1 with --quick); the throughput figures are the medians, against **none**.

Counting: after the last round serve's watermark passes the end of its rounds, and each Journal
source bucket is flushed with ``radosgw-admin bucket logging flush`` (the tail of a count only,
never for the lag) and its pending commits are waited for. Every committed log line is then
matched to the ledger: **missing** (a mutation with no record), **phantom** (a record of no
mutation, by cause when a refused or no-op request explains it) and **duplicate** (a mutation
recorded more than once). Our lines are read raw from every committed object (no reader dedup).
A Journal record carries no version id for a delete marker: a record without one matches its
mutation all the same and is counted in ``version_id_absent``.

Lag, on buckets of their own with Journal logging and serve (default timings) at once: one PUT
every 1/rate s; a poller lists our committed log objects and the Journal's log objects every
``POLL`` s, so the lag (first seen - PUT returned) includes up to ``POLL`` of detection delay.
Bucket logging commits a log object lazily, when a record arrives after the roll time, so the
writer keeps the bucket busy after the measured window (tail PUTs, not measured) until every
measured record is visible; then it stops and says how many tail records are still invisible
``IDLE`` s later. At ``ROLL_SHORT`` in every run; at the default roll time (300 s, read back
from radosgw) over one whole roll period in the full run only (about 5.5 min).

The parts: the ledger and the match (``journal_ledger``), Journal mode itself
(``journal_logging``), the workload (``journal_workload``) and the lag phase (``journal_lag``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from changelog.pipeline.reader import list_logs, read_object
from tools.bench.common import (
    Bench,
    Figure,
    FigureSkipped,
    lab_down,
    lab_release,
    lab_up,
    median,
    percentile,
    say,
)
from tools.bench.journal_lag import IDLE, POLL, LagPoller, LagRun
from tools.bench.journal_ledger import Change, Ledger, compare, count_text, norm_etag, norm_version
from tools.bench.journal_logging import BucketLogging, allow_logging, journal_change, read_journal
from tools.bench.journal_workload import OBJECT_BYTES, Buckets, Workload, remove_all
from tools.bench.serve import ServeProcess, round_timings

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

GROUP = "journal"
RELEASE = "tentacle"
ROLL_SHORT = 5  # s: the short ObjectRollTime (radosgw accepts 0 and up)
CONFIGS = ("none", "serve", "journal", "both")
WITH_SERVE = ("serve", "both")
WITH_JOURNAL = ("journal", "both")


# --------------------------------------------------------------------------- the figure


def run(bench: Bench) -> list[Figure]:
    release, version = lab_release(bench.lab, bench.s3())
    if release == RELEASE:
        return _run(bench, version)
    why = (
        f"the lab ({bench.lab.rgw_endpoint}) runs Ceph {release or '(release unknown)'}{' ' + version if version else ''}; "
        "bucket logging in Journal mode needs Tentacle (20.2): `tools/run-bench journal` boots a tentacle lab, "
        "or pass --lab DIR of one"
    )
    if not bench.throwaway:
        raise FigureSkipped(why)
    # The run's own throwaway lab is of another release: boot a tentacle one for this figure.
    directory = bench.tmp / "lab-tentacle"
    try:
        lab = lab_up(directory, RELEASE)
    except SystemExit as ex:
        raise FigureSkipped(f"{why}; booting one failed: {str(ex).splitlines()[-1]}") from None
    sub = Bench(
        lab=lab,
        tag=bench.tag,
        tmp=bench.tmp,
        scale=bench.scale,
        quick=bench.quick,
        profile=bench.profile,
        threads=bench.threads,
        throwaway=True,
    )
    try:
        release, version = lab_release(lab, sub.s3())
        if release != RELEASE:
            raise FigureSkipped(f"tools/ceph-lab up --release {RELEASE} gave a {release} lab")
        return _run(sub, version)
    finally:
        sub.close()
        lab_down(directory)


# --------------------------------------------------------------------------- what the phases hand on


@dataclass(frozen=True)
class Layout:
    """The figure's buckets: a plain and a versioned one per configuration, the lag buckets (the
    default-roll one only in the full run) and the log bucket the Journal writes into."""

    buckets: dict[str, Buckets]
    lag_short: str
    lag_default: str
    log_bucket: str
    full: bool  # not --quick: the lag at the default roll time too

    @classmethod
    def named(cls, bench: Bench) -> Layout:
        return cls(
            buckets={c: Buckets(bench.name(f"j{c}"), bench.name(f"j{c}-v")) for c in CONFIGS},
            lag_short=bench.name(f"jlag{ROLL_SHORT}"),
            lag_default=bench.name("jlagdef"),
            log_bucket=bench.name("jlog"),
            full=not bench.quick,
        )

    def pairs(self, configs: tuple[str, ...]) -> list[str]:
        """Both buckets of each of ``configs``."""
        return [b for c in configs for b in (self.buckets[c].plain, self.buckets[c].versioned)]

    @property
    def lag_buckets(self) -> list[str]:
        return [self.lag_short, *([self.lag_default] if self.full else [])]

    @property
    def journal_sources(self) -> list[str]:
        return self.pairs(WITH_JOURNAL)

    @property
    def followed(self) -> list[str]:
        """The buckets serve follows in the rounds (the lag buckets come on top)."""
        return [self.buckets[c].plain for c in WITH_SERVE] + [self.buckets[c].versioned for c in WITH_SERVE]

    @property
    def versioned(self) -> set[str]:
        return {b.versioned for b in self.buckets.values()}

    @property
    def all(self) -> list[str]:
        return [*self.pairs(CONFIGS), *self.lag_buckets, self.log_bucket]


@dataclass
class Rounds:
    """The rounds' results: PUT/s by configuration, serve's catch-up before each of its rounds,
    the mixed requests of a round, and each configuration's ledger."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    waits: list[float] = field(default_factory=list)
    mixed_requests: int = 0
    ledgers: dict[str, Ledger] = field(default_factory=lambda: {c: Ledger() for c in CONFIGS})


@dataclass(frozen=True)
class Counts:
    """Each log's records matched to its ledger (``compare``), with the log objects read and the
    seconds each Journal flush took."""

    counts: dict[str, dict[str, Any]]
    ours_objects: int
    journal_objects: int
    flush_s: dict[str, float]


@dataclass(frozen=True)
class Lag:
    runs: list[LagRun]
    poller: LagPoller


# --------------------------------------------------------------------------- the phases


def _run(bench: Bench, version: str) -> list[Figure]:
    s3 = bench.s3(pool=2 * bench.threads + 8)
    n = bench.size(800, 150, minimum=50)
    reps = bench.reps(4, 1)
    layout = Layout.named(bench)
    logging = BucketLogging(bench)
    serve: ServeProcess | None = None
    created: list[str] = []
    timings = round_timings(bench)
    try:
        roll_default = _set_up(s3, logging, layout, created)
        serve = ServeProcess(
            bench, s3, what="journal", buckets=[*layout.followed, *layout.lag_buckets],
            poll_interval=timings.poll_interval, interval=timings.interval, settle=timings.settle,
        )  # fmt: skip
        rounds = _rounds(Workload(bench, s3, n), serve, layout, reps)
        counts = _count(s3, serve, logging, layout, rounds.ledgers)
        lag = _lag(bench, s3, serve, layout, roll_default)
    finally:
        _clean_up(s3, serve, logging, layout, created)
    common: dict[str, Any] = {
        "ceph": version,
        "puts_per_round": n,
        "object_bytes": OBJECT_BYTES,
        "mixed_requests_per_round": rounds.mixed_requests,
        "threads": bench.threads,
        "reps": reps,
        "journal_roll_s": ROLL_SHORT,
        "serve": timings.text,
    }
    return [
        *_throughput_figures(rounds, common),
        *_count_figures(counts, common),
        *_lag_figures(lag, layout, common),
    ]


def _set_up(s3: S3Client, logging: BucketLogging, layout: Layout, created: list[str]) -> int | None:
    """Create the buckets (each one in ``created`` as soon as it exists) and turn Journal logging
    on; the default ObjectRollTime radosgw reports (None with --quick: not measured)."""
    for b in layout.all:
        s3.create_bucket(Bucket=b)
        created.append(b)
    for c in CONFIGS:
        s3.put_bucket_versioning(Bucket=layout.buckets[c].versioned, VersioningConfiguration={"Status": "Enabled"})
    allow_logging(s3, layout.log_bucket)
    log_bucket, full = layout.log_bucket, layout.full
    confs = {src: logging.journal(src, log_bucket, ROLL_SHORT) for src in [*layout.journal_sources, layout.lag_short]}
    if full:
        confs[layout.lag_default] = logging.journal(layout.lag_default, log_bucket, None)
    roll_default = int(confs[layout.lag_default]["objectRollTime"]) if full else None
    say(
        f"journal: Journal logging on {len(confs)} buckets into {log_bucket} "
        f"(ObjectRollTime {ROLL_SHORT} s{f', and the default {roll_default} s' if full else ''})"
    )
    return roll_default


def _rounds(workload: Workload, serve: ServeProcess, layout: Layout, reps: int) -> Rounds:
    """A warm-up, then ``reps`` rounds of every configuration, the one that goes first rotating.
    serve runs (started and caught up first, caught up and stopped after) in its configurations only."""
    # Warm-up: a prefix of its own, left out of every count.
    for c in CONFIGS:
        workload.puts(layout.buckets[c].plain, "warmup", Ledger(), max(20, workload.n // 10))
    out = Rounds()
    for rep in range(reps):
        order = CONFIGS[rep % len(CONFIGS) :] + CONFIGS[: rep % len(CONFIGS)]
        for c in order:
            prefix = f"r{rep}"
            with_serve = c in WITH_SERVE
            if with_serve:
                serve.start()
                out.waits.append(serve.wait_watermark(time.time()))
            rate = workload.puts(layout.buckets[c].plain, prefix, out.ledgers[c])
            t_mixed = time.monotonic()
            out.mixed_requests = workload.mixed(layout.buckets[c], prefix, out.ledgers[c])
            t_mixed = time.monotonic() - t_mixed
            if with_serve:
                serve.check()
                serve.wait_watermark(time.time() + 0.001, timeout=240)
                serve.stop()
            out.rates[c].append(rate)
            say(
                f"journal rep {rep + 1}/{reps} {c:8}: {rate:6.1f} PUT/s "
                f"(then {out.mixed_requests} mixed requests in {t_mixed:.1f}s)"
            )
    return out


def _count(
    s3: S3Client, serve: ServeProcess, logging: BucketLogging, layout: Layout, ledgers: dict[str, Ledger]
) -> Counts:
    """Flush the Journal (the tail of the count only), read both logs, match each to its ledger."""
    flush_s = {src: round(logging.flush(src), 2) for src in layout.journal_sources}
    say(f"journal: flushed the Journal of {len(flush_s)} buckets (the tail of the count only)")
    ours_records, ours_objects = _our_records(serve, layout)
    journal_records, journal_objects = _journal_records(s3, layout)
    counts = {
        "ours_serve": compare(ledgers["serve"], ours_records["serve"]),
        "ours_both": compare(ledgers["both"], ours_records["both"]),
        "journal_journal": compare(ledgers["journal"], journal_records["journal"]),
        "journal_both": compare(ledgers["both"], journal_records["both"]),
    }
    for which, count in counts.items():
        say(f"journal: {which}: {count_text(count)}")
    return Counts(counts, ours_objects, journal_objects, flush_s)


def _our_records(serve: ServeProcess, layout: Layout) -> tuple[dict[str, list[Change]], int]:
    """Every line of every committed log object of serve (raw: no reader dedup), by the
    configuration of its bucket, warm-up left out; and how many log objects were read."""
    records: dict[str, list[Change]] = {c: [] for c in WITH_SERVE}
    owner = {b: c for c in WITH_SERVE for b in (layout.buckets[c].plain, layout.buckets[c].versioned)}
    objects = 0
    for obj in list(list_logs(serve.target)):
        objects += 1
        for rec in read_object(serve.target, obj.name):
            cfg = owner.get(rec.bucket)
            # A bucket's own record (no key) is no object mutation of the ledger.
            if cfg is not None and rec.key is not None and not rec.key.startswith("warmup/"):
                change = Change(rec.bucket, rec.key, rec.op, norm_version(rec.version_id), norm_etag(rec.etag))
                records[cfg].append(change)
    return records, objects


def _journal_records(s3: S3Client, layout: Layout) -> tuple[dict[str, list[Change]], int]:
    """Every Journal record of the Journal configurations' buckets, warm-up left out; and how
    many log objects they came from."""
    records: dict[str, list[Change]] = {c: [] for c in WITH_JOURNAL}
    versioned = layout.versioned
    objects = 0
    for c in WITH_JOURNAL:
        for src in (layout.buckets[c].plain, layout.buckets[c].versioned):
            lines = read_journal(s3, layout.log_bucket, f"{src}/")
            objects += len({obj_name for obj_name, _ in lines})
            records[c] += [journal_change(line, versioned) for _, line in lines if not line.key.startswith("warmup/")]
    return records, objects


def _lag(bench: Bench, s3: S3Client, serve: ServeProcess, layout: Layout, roll_default: int | None) -> Lag:
    """serve on, a writer per lag bucket, the poller noting when each PUT shows in either log."""
    serve.start()
    serve.wait_watermark(time.time())
    poller = LagPoller(serve, s3, layout.log_bucket, layout.lag_buckets)
    poller.poll()  # skip what is there already
    poller.ours.clear()
    poller.journal.clear()
    poller.start()
    runs = [LagRun(layout.lag_short, ROLL_SHORT, 5.0, bench.size(60, 20, minimum=10), ROLL_SHORT + 60)]
    if layout.full:
        assert roll_default is not None
        # One whole roll period, less 2 s: the log object is named after the second of its
        # first record, so a record in the last second of the period could land in the next
        # object and wait a second roll period.
        runs.append(LagRun(layout.lag_default, roll_default, 2.0, roll_default - 2.0, roll_default + 60))
    say(
        "journal lag: "
        + "; ".join(f"{r.bucket}: roll {r.roll} s, {r.rate:g} PUT/s for {r.window:g} s, then tail PUTs" for r in runs)
    )
    writers = [threading.Thread(target=r.write, args=(s3, poller), name=f"lag-{r.roll}") for r in runs]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    for r in runs:
        if r.error is not None:
            raise r.error
    deadline = time.monotonic() + 120
    while any(len(r.lags(poller.ours)) < len(r.put_at) for r in runs) and time.monotonic() < deadline:
        serve.check()
        time.sleep(0.5)
    poller.stop.set()
    poller.join()
    if poller.error is not None:
        raise poller.error
    serve.stop()
    return Lag(runs, poller)


def _clean_up(
    s3: S3Client, serve: ServeProcess | None, logging: BucketLogging, layout: Layout, created: list[str]
) -> None:
    """Stop serve, turn logging off and remove every bucket the figure created (best effort)."""
    if serve is not None:
        serve.close()
    for src in [*layout.journal_sources, *layout.lag_buckets]:
        if src in created:
            try:
                logging.disable(src)
            except ClientError as ex:
                say(f"WARNING: disabling bucket logging of {src}: {ex}")
    for b in reversed(created):
        try:
            remove_all(s3, b)
        except ClientError as ex:
            say(f"WARNING: removing bucket {b}: {ex}")


# --------------------------------------------------------------------------- the figures


def _throughput_figures(rounds: Rounds, common: dict[str, Any]) -> list[Figure]:
    rates = rounds.rates
    runs_params = {c: [round(x, 1) for x in v] for c, v in rates.items()}
    base = median(rates["none"])
    figures = [
        Figure(
            GROUP,
            f"journal_put_with_{name}",
            "PUT/s",
            median(rates[c]),
            base,
            "nothing (no serve, no bucket logging)",
            params={**common, "runs": runs_params, "catch_up_s": [round(w, 1) for w in rounds.waits]},
        )
        for name, c in (("serve", "serve"), ("journal", "journal"), ("both", "both"))
    ]
    figures.append(
        Figure(
            GROUP,
            "journal_put_serve_vs_journal",
            "PUT/s",
            median(rates["serve"]),
            median(rates["journal"]),
            "bucket logging in Journal mode (peer)",
            params={**common, "runs": runs_params},
        )
    )
    return figures


def _count_figures(c: Counts, common: dict[str, Any]) -> list[Figure]:
    count_params = {
        **common,
        "counts": c.counts,
        "log_objects": {"ours": c.ours_objects, "journal": c.journal_objects},
        "journal_flush_s": c.flush_s,
    }
    figures = []
    for name, ours_key, theirs_key, what in (
        ("journal_records_exact", "ours_serve", "journal_journal", "Journal-mode bucket logging, own buckets (c)"),
        ("journal_records_exact_both", "ours_both", "journal_both", "Journal-mode bucket logging, same buckets (d)"),
    ):
        ours_count, theirs_count = c.counts[ours_key], c.counts[theirs_key]
        figures.append(
            Figure(
                GROUP,
                name,
                "fraction",
                ours_count["exact"],
                theirs_count["exact"],
                what,
                params=count_params,
                summary=f"ours: {count_text(ours_count)} | Journal: {count_text(theirs_count)}",
            )
        )
    return figures


def _lag_figures(lag: Lag, layout: Layout, common: dict[str, Any]) -> list[Figure]:
    full = layout.full
    figures = []
    for r in lag.runs:
        ours, theirs = r.lags(lag.poller.ours), r.lags(lag.poller.journal)
        if not ours or not theirs:
            raise RuntimeError(f"journal lag at roll {r.roll} s: matched {len(ours)} of our records, {len(theirs)} Journal")
        params = _lag_params(r, ours, theirs, common, full=full)
        label = "default" if full and r.bucket == layout.lag_default else f"roll{r.roll}"
        for p in (50, 99):
            figures.append(
                Figure(
                    GROUP,
                    f"journal_lag_p{p}_{label}",
                    "s",
                    percentile(ours, p),
                    percentile(theirs, p),
                    f"Journal log object visible, ObjectRollTime {r.roll} s",
                    higher_is_better=False,
                    params=params,
                    summary=_lag_summary(r, full=full) if p == 99 else None,
                )
            )
    if not full:
        say("journal: lag at the default roll time (300 s) skipped with --quick (needs over 5 minutes)")
    return figures


def _lag_params(
    r: LagRun, ours: list[float], theirs: list[float], common: dict[str, Any], *, full: bool
) -> dict[str, Any]:
    params = {
        **common,
        "roll_s": r.roll,
        "rate_per_s": r.rate,
        "window_s": r.window,
        "puts_measured": len(r.put_at),
        "puts_tail": len(r.tail_at),
        "poll_s": POLL,
        "invisible_ours": len(r.put_at) - len(ours),
        "invisible_journal": len(r.put_at) - len(theirs),
        "journal_gave_up": r.gave_up,
        "max_ours_s": round(max(ours), 2),
        "max_journal_s": round(max(theirs), 2),
        "idle_s": IDLE,
        "tail_invisible_after_idle": {"ours": r.tail_invisible_ours, "journal": r.tail_invisible_journal},
    }
    if r.roll == ROLL_SHORT and not full:
        params["note"] = "default roll time (300 s) not measured with --quick: it needs over 5 minutes"
    return params


def _lag_summary(r: LagRun, *, full: bool) -> str:
    return (
        f"{r.tail_invisible_journal}/{len(r.tail_at)} Journal records and {r.tail_invisible_ours} of ours "
        f"still invisible {IDLE:g} s after the last write (lazy roll)"
        + ("; the default roll time (300 s) is not measured with --quick" if not full else "")
    )
