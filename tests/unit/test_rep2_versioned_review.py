"""Review of two-way replication of versioned buckets (REP.2), on moto, which like a radosgw user
without ``--system`` ignores the ``rgwx`` parameters: what an operator's mistake leaves behind.
The lab form of the same, and the scenarios that need radosgw's placement:
``tests/integration/test_rep2_versioned_review_lab.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from changelog.consumers.replication.apply import apply_record
from changelog.errors import TransientError
from tests.moto_env import two_versioned_zones
from tests.unit.test_replication_two_way_versioned import NoVersions, dest, rec, stack


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with two_versioned_zones(monkeypatch) as client:
        yield client


def test_a_marker_at_a_site_that_ignores_rgwx_fails_in_one_line_and_leaves_nothing(s3: Any) -> None:
    """A write at such a site fails in one line naming the fix and leaves no stray version
    (``test_a_site_that_ignores_rgwx_gets_no_stray_version_and_a_one_line_error``). A delete
    marker does not: the site makes a marker of its own id, then an empty "placeholder" version of
    its own id (which the DELETE ?versionId=<fixed placeholder id> cannot remove), another marker,
    and the apply raises ``TransientError``: the consumer retries it for ever, each retry adding
    the same garbage."""
    v = s3.put_object(Bucket="bbb", Key="k", Body=b"b1")["VersionId"]
    s3.put_object(Bucket="aaa", Key="k", Body=b"a1")
    m = s3.delete_object(Bucket="aaa", Key="k")["VersionId"]
    error = None
    out = None
    try:
        out = apply_record(rec("delete_marker", "aaa", "k", m), s3, dest(s3), NoVersions())
    except TransientError as ex:
        error = str(ex)
    print(f"out {out} error {error}; bbb's stack {stack(s3, 'bbb', 'k')}")
    assert stack(s3, "bbb", "k") == [v], "entries of the site's own ids stayed"
    assert error is None, error
    assert out is not None and out.status == "failed" and "system user" in (out.reason or "")
    assert "\n" not in (out.reason or "")
