"""Session-wide fixtures: the real Ceph lab (`ceph_lab`), an S3 client to its radosgw (`s3_client`),
and the record schema guard (every change-log line a test produces is checked against
docs/record.schema.json; `tests/record_schema.py`).

Every test that uses `ceph_lab` (directly or through another fixture) is marked `ceph`. The terminal
summary says how many of those ran against real Ceph; with RGW_CHANGELOG_REQUIRE_CEPH=1 the session
fails when any of them was skipped, or none ran (CI sets it so a missing cluster cannot pass silently).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:  # `tests.lab` must import however pytest was started
    sys.path.insert(0, _REPO)

from tests.lab import (  # noqa: E402
    Lab,
    boot,
    boot_missing_reason,
    lab_from_env,
    rados_missing_reason,
    shut_down,
)
from tests.lab import s3_client as make_s3_client  # noqa: E402
from tests.record_schema import Guard  # noqa: E402

REQUIRE_ENV = "RGW_CHANGELOG_REQUIRE_CEPH"


@pytest.fixture(scope="session")
def ceph_lab() -> Iterator[Lab]:
    """The cluster named by the environment, or a throwaway one booted for this session."""
    reason = rados_missing_reason()
    if reason:
        pytest.skip(f"Ceph lab unavailable: {reason}")
    external = lab_from_env()
    if external is not None:
        yield external
        return
    reason = boot_missing_reason()
    if reason:
        pytest.skip(f"Ceph lab unavailable: {reason}")
    # Not under pytest's basetemp: concurrent pytest sessions delete all but the newest three of
    # those, which would pull the folder from under a live lab.
    directory = Path(tempfile.mkdtemp(prefix="ceph-lab-"))
    try:
        lab = boot(directory)
    except Exception as ex:
        try:
            shut_down(directory)
        finally:
            pytest.fail(str(ex), pytrace=False)
    try:
        yield lab
    finally:
        shut_down(directory)


@pytest.fixture(scope="session")
def s3_client(ceph_lab: Lab) -> Any:
    """boto3 S3 client to the lab's radosgw (path-style, region "default", checksums only when required)."""
    if not ceph_lab.rgw_endpoint:
        pytest.skip("Ceph lab unavailable: this lab runs without radosgw")
    return make_s3_client(ceph_lab)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "ceph_lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ceph)


# ---- counting what ran against real Ceph ----------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CephTally(), "rgw-changelog-ceph-tally")


@dataclass(eq=False)  # a registered plugin must stay hashable
class CephTally:
    """A pytest plugin: counts the `ceph` tests that ran and were skipped, and reports them."""

    ran: int = 0
    failed: int = 0
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)

    @staticmethod
    def required() -> bool:
        return os.environ.get(REQUIRE_ENV, "") not in ("", "0")

    def problem(self) -> str | None:
        """Why a session that requires Ceph must fail, or None."""
        if self.skipped:
            return f"{self.skipped} ceph tests were skipped ({'; '.join(self.skip_reasons[:3])})"
        if not self.ran:
            return "no ceph test ran"
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "ceph" not in report.keywords:
            return
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped += 1
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reason = reason.removeprefix("Skipped: ")
            if reason not in self.skip_reasons:
                self.skip_reasons.append(reason)
        elif report.when == "call":
            self.ran += 1
            self.failed += report.failed

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.required() and self.problem() is not None:
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.required() and self.ran + self.skipped == 0:
            return
        failed = f", {self.failed} failed" if self.failed else ""
        release = os.environ.get("CEPH_RELEASE") or "pacific"
        line = f"ceph lab: {self.ran} tests ran against real Ceph ({release}){failed}, {self.skipped} skipped"
        problem = self.problem()
        if problem and self.required():
            terminalreporter.write_line(line, red=True, bold=True)
            terminalreporter.write_line(
                f"ceph lab: {REQUIRE_ENV}=1 and {problem}: failing the session", red=True
            )
        else:
            terminalreporter.write_line(line, yellow=bool(self.skipped), green=not self.skipped)


# ---- every change-log line the suites emit is a valid record (docs/record.schema.json) --------

GUARD_KEY = pytest.StashKey[Guard]()
CALL_FAILED_KEY = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def record_schema_guard(request: pytest.FixtureRequest) -> Iterator[Guard]:
    """Validates every line ``encode_raw_many`` and ``encode_index_entries`` (the producers of
    committed lines) return in this process against docs/record.schema.json, for the whole
    session."""
    from changelog.pipeline import logformat

    guard = Guard(logformat.encode_raw_many, logformat.encode_index_entries)
    request.config.stash[GUARD_KEY] = guard
    guard.install()
    try:
        yield guard
    finally:
        guard.uninstall()


@pytest.fixture(autouse=True)
def _no_refused_records(request: pytest.FixtureRequest, record_schema_guard: Guard) -> Iterator[None]:
    """Fails a test that produced a refused line even if the code under test caught the raise (a
    collector retrying its pass). A test that already failed on it is not reported twice."""
    before = len(record_schema_guard.refused)
    yield
    refused = record_schema_guard.refused[before:]
    if refused and not request.node.stash.get(CALL_FAILED_KEY, False):
        pytest.fail(f"{len(refused)} change-log lines refused by the record schema; first: {refused[0]}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)  # the old-style wrapper: setup.cfg allows pytest 7
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call":
        item.stash[CALL_FAILED_KEY] = report.failed


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    guard = config.stash.get(GUARD_KEY, None)
    if guard is not None:
        terminalreporter.write_line(
            f"record schema: {guard.lines} change-log lines validated in {guard.seconds:.2f}s, "
            f"{len(guard.refused)} refused",
            red=bool(guard.refused),
        )
