"""The failed list's line for a site bucket that does not exist names the site and the bucket
once (a new user's review found ``site b: bucket nodst: bucket nodst at site b: 404 ...``)."""

from __future__ import annotations

from typing import Any

from changelog.consumers.replication.state import SiteState
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.targets import DirectoryTarget
from tests.unit.test_backup_support import Zone
from tests.unit.test_replication_consumer import aws, index, logs, replicator, run_once

__all__ = ["aws", "index", "logs"]  # the fixtures


def test_a_missing_site_bucket_is_named_once(aws: Any, logs: DirectoryTarget, index: ChangeIndex) -> None:
    zone = Zone(aws, logs)
    zone.create_bucket("src")
    zone.put("src", "k", b"x")
    zone.commit()
    run_once(replicator(index, logs, aws), index).step_down()
    (entry,) = SiteState(index, "east").failed()
    assert entry.error.startswith("bucket dst at site east: 404"), entry.error
    assert entry.error.count("dst") == 1 and entry.error.count("east") == 1


def test_a_refusal_names_its_code_once() -> None:
    from changelog.pipeline.s3client import Refusal

    assert str(Refusal(404, "NoSuchBucket", "")) == "404 NoSuchBucket"
    assert str(Refusal(403, "AccessDenied", "AccessDenied")) == "403 AccessDenied"
    assert str(Refusal(403, "AccessDenied", "Access Denied")) == "403 AccessDenied Access Denied"
