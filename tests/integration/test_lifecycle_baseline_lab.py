"""Lifecycle rules apply to objects that existed before the rule (issue 20, ``baseline``), end to
end on the lab's radosgw: `rgw-changelog serve` follows an unversioned and a versioned bucket
while its lifecycle rules name neither (objects written before serve first starts come as the
follower's baseline records, the others as incremental ones: all consumed with no rule). serve
is then restarted with rules for both buckets: each is listed once (ListObjectVersions), its
existing versions are scheduled, and they expire as S3 lifecycle would (the exact set, from the
ledger of writes: ``test_lifecycle_lab.expected``), noncurrent versions and delete markers
included: a marker left as its key's only version is removed too, as radosgw's own lifecycle
does under an expiry rule, so nothing is left of the versioned bucket. A third bucket, named by
a rule from the start, is listed once by the first process and never again.

And the listing's paging on radosgw itself (``baseline.list_page`` with pages of 1 to 3
versions, so pages end on null versions, delete markers and keys that alone fill a page):
every version is scheduled once, the same as with one page (a page ends after its last whole
key; radosgw lists that key again after a bare key marker, and those versions are dropped; a
key split by a page resumes at ``NextVersionIdMarker``, ``null`` included)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from changelog.consumers.lifecycle.baseline import Baseliner
from changelog.consumers.lifecycle.consumer import layout_of
from changelog.consumers.lifecycle.plan import plan
from changelog.consumers.lifecycle.rules import RuleSet, parse_lifecycle
from changelog.consumers.lifecycle.schedule import Schedule, all_states
from changelog.pipeline.backends.sqlite import SqliteStore
from tests.integration import test_lifecycle_lab as lab
from tests.integration.test_lifecycle_lab import DAY, Ledger, RuleSpec, Serving, diff, wait_for
from tests.lab import Lab

follower = lab.follower  # the follower's system user
serving = lab.serving  # `serve` with [lifecycle], its namespace removed at the end

# Days of the current-version expiry: due well after the restart and the listing (DAY s each).
EXPIRE_DAYS = 12
NONCURRENT_DAYS = 1


def consumed(srv: Serving) -> int:
    return int(srv.lifecycle_stats().get("records_consumed") or 0)


def stable(srv: Serving, *, quiet_for: float = 3.0) -> int:
    """The lifecycle consumer's records consumed, once unchanged for ``quiet_for`` seconds."""
    seen, since = consumed(srv), time.monotonic()
    deadline = since + 60
    while time.monotonic() - since < quiet_for:
        assert time.monotonic() < deadline, f"records still coming\n{srv.log_tail()}"
        time.sleep(0.3)
        now = consumed(srv)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def test_rules_added_later_apply_to_the_objects_already_there(
    follower: Lab, s3_client: Any, serving: Any
) -> None:
    s3 = s3_client
    tag = uuid.uuid4().hex[:8]
    plain, vers, other = f"lcb-plain-{tag}", f"lcb-vers-{tag}", f"lcb-other-{tag}"
    ledger = Ledger(s3, {vers})
    mutations = 0
    for b in (plain, vers, other):
        s3.create_bucket(Bucket=b)
    s3.put_bucket_versioning(Bucket=vers, VersioningConfiguration={"Status": "Enabled"})
    # Before serve first starts: the follower's baseline records.
    first_write = time.time()  # the p objects fall due first: "not due yet" is judged by them
    for i in range(3):
        ledger.put(plain, f"tmp/p{i}", b"p" * (i + 1))
    ledger.put(vers, "v/a", b"a1")
    mutations += 4
    first = RuleSpec(other, expire=EXPIRE_DAYS)
    srv = serving([plain, vers, other], first.toml())
    started = time.monotonic()
    srv.start()
    # While serve follows, still with no rule for plain and vers: incremental records.
    for i in range(3):
        ledger.put(plain, f"tmp/q{i}", b"q" * (i + 1))
        ledger.put(plain, f"keep/{i}", b"k" * (i + 1))
    ledger.put(vers, "v/a", b"a2")  # a1 noncurrent from now
    ledger.put(vers, "v/b", b"b1")
    ledger.delete(vers, "v/b")  # a marker over b1
    ledger.put(vers, "v/c", b"c1")
    c2 = ledger.put(vers, "v/c", b"c2")
    ledger.delete(vers, "v/c", c2.vid)  # c1 current again
    ledger.put(vers, "v/d", b"d1")
    mutations += 6 + 7
    # Every record consumed by the lifecycle consumer while no rule names the two buckets.
    wait_for("records consumed", lambda: consumed(srv) >= mutations, srv, 60)
    settled = stable(srv)
    stats = srv.lifecycle_stats()
    assert stats.get("baseline_buckets_done") == 1 and stats.get("baseline_versions") == 0, stats
    assert srv.get("/_/lifecycle/plan")["actions"] == [], "nothing kept of buckets no rule names"
    print(f"first process: {settled} records consumed with no rule in {time.monotonic() - started:.1f}s")

    # The rules added (a restart with them): both buckets listed once, their objects scheduled.
    rules = [
        first,
        RuleSpec(plain, "tmp/", expire=EXPIRE_DAYS),
        RuleSpec(vers, "", expire=EXPIRE_DAYS, noncurrent=NONCURRENT_DAYS),
    ]
    srv.kill()
    srv.rules = "".join(r.toml() for r in rules)
    restarted = time.monotonic()
    srv.start()
    versions = 9 + 6  # plain's objects; vers: a1 a2, b1 and its marker, c1, d1
    wait_for("both buckets listed", lambda: srv.lifecycle_stats().get("baseline_buckets_done") == 2, srv, 60)
    listed = time.monotonic() - restarted
    stats = srv.lifecycle_stats()
    assert (stats["baseline_versions"], stats["baseline_pending"]) == (versions, 0), stats
    status = srv.get("/_/lifecycle/status")["baseline"]
    assert {b["bucket"]: (b["state"], b["versions"]) for b in status["buckets"]} == {
        plain: ("done", 9),
        vers: ("done", 6),
        other: ("done", 0),
    }, status
    cli = {b["bucket"]: b["state"] for b in srv.cli_json("lifecycle", "status", "--json")["baseline"]}
    assert cli == {plain: "done", vers: "done", other: "done"}, cli
    if time.time() < first_write + EXPIRE_DAYS * DAY - 1:
        # Not due yet: the current versions are all scheduled, none acted on.
        planned = {
            (a["bucket"], a["key"])
            for a in srv.get("/_/lifecycle/plan")["actions"]
            if a["action"] == "expire"
        }
        assert planned == {(plain, f"tmp/{p}{i}") for p in "pq" for i in range(3)} | {
            (vers, "v/a"),
            (vers, "v/c"),
            (vers, "v/d"),
        }, planned
    print(f"restart with the rules: listed in {listed:.1f}s; stats {stats}")

    # Quiet: every bucket as S3 lifecycle would leave it, nothing left scheduled or failed.
    def quiet() -> bool:
        doc = srv.get("/_/lifecycle/status")
        if doc["due_now"] or doc["scheduled_later"] or doc["failed"]:
            return False
        return all(diff(s3, ledger, rules, b) == {} for b in (plain, vers))

    # The markers the expiry wrote are removed EXPIRE_DAYS after they were written.
    wait_for("expired as S3 would", quiet, srv, 2 * EXPIRE_DAYS * DAY + NONCURRENT_DAYS * DAY + 60)
    for b in (plain, vers):
        assert diff(s3, ledger, rules, b) == {}, f"{b}: observed != S3 lifecycle's model"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=plain).get("Contents", []))
    assert keys == ["keep/0", "keep/1", "keep/2"]
    assert s3.list_object_versions(Bucket=vers).get("DeleteMarkers", []) == []
    stats = srv.lifecycle_stats()
    # tmp/*, v/a v/c v/d; a1 and b1, then a2 c1 d1 under the markers the expiry wrote; then
    # those three markers and the user's over b1, each left alone.
    assert (stats.get("expired"), stats.get("noncurrent_expired"), stats.get("markers_expired"),
            stats.get("failed")) == (9, 5, 4, 0), stats  # fmt: skip
    print(f"quiet {time.monotonic() - restarted:.1f}s after the restart; stats {stats}")


def test_the_listing_pages_through_radosgw_versions_exactly_once(s3_client: Any, tmp_path: Path) -> None:
    s3 = s3_client
    bucket = f"lcb-pages-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/null-then-versions", Body=b"0")  # a null version, below
    s3.put_object(Bucket=bucket, Key="b/null-only", Body=b"0")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"1", b"2"):
        s3.put_object(Bucket=bucket, Key="a/null-then-versions", Body=body)
    for i in range(3):
        for n in range(1 + i):
            s3.put_object(Bucket=bucket, Key=f"c/{i}", Body=b"%d" % n)
    s3.delete_object(Bucket=bucket, Key="c/1")  # a marker over its versions
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=bucket, Key="c/2", Body=b"null over versions")
    s3.delete_object(Bucket=bucket, Key="d/marker-only")  # a null marker, nothing below
    truth = sorted(
        (v["Key"], v["VersionId"], kind)
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for kind in ("Versions", "DeleteMarkers")
        for v in page.get(kind, [])
    )
    section = parse_lifecycle(
        {
            "day_seconds": 1,
            "shards": 2,
            "rules": [{"bucket": bucket, "expire_days": 30, "noncurrent_expire_days": 30}],
        }
    )

    def scheduled(page_keys: int) -> tuple[list[Any], list[Any], int]:
        store = SqliteStore(str(tmp_path / f"schedule-{page_keys}.db"))
        schedule = Schedule(store, layout_of(section, "idx"), RuleSet.of(section))
        lister = Baseliner(schedule, s3, page_keys=page_keys, pages_per_step=1)
        assert lister.want([bucket]) == 1
        while lister.run(lambda: None):
            pass
        mark = schedule.baseline_mark("", bucket)
        assert mark is not None and mark.done and mark.versions == len(truth), (page_keys, mark, truth)
        actions = [(a["action"], a["key"], a["version_id"], a["due"]) for a in plan(store, schedule.layout)]
        stacks = sorted(
            (st.key, [(v.ver, v.marker, v.etag, v.nc_us) for v in st.versions])
            for n in range(2)
            for _, st in all_states(store, schedule.layout, n)
        )
        return actions, stacks, mark.pages

    whole, whole_stacks, pages = scheduled(1000)
    assert pages == 1
    assert sum(len(vs) for _, vs in whole_stacks) == len(truth)
    # Current: a/'s newest, b/, c/0, c/2's null; d/'s marker, alone; noncurrent: a/'s two
    # below, c/1's 2, c/2's 3.
    assert sorted(a for a, *_ in whole) == ["expire"] * 4 + ["expire_marker"] + ["noncurrent"] * 7, whole
    for page_keys in (1, 2, 3):
        actions, stacks, pages = scheduled(page_keys)
        assert (actions, stacks) == (whole, whole_stacks), f"pages of {page_keys}"
        print(f"pages of {page_keys}: {pages} pages, {len(truth)} versions, each once")
