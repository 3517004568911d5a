"""Integration tests run against the real Ceph lab (`ceph_lab` in tests/conftest.py).

Every test in this folder is marked `ceph`, so it is counted in the "ceph lab: N tests ran against
real Ceph" summary and, with RGW_CHANGELOG_REQUIRE_CEPH=1, may not be skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.ceph)
