"""Fixtures of the contract suites: one ``store`` per backend, the same tests for each.

``store_factory`` opens a new store on the same data; it is picklable, so that a test can open
a second, independent store in another process (for RADOS: another client).
The RADOS variant needs the lab cluster (``ceph_lab``, from ``tests/conftest.py``); each test
gets a fresh RADOS namespace, so tests never see each other's objects.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from changelog.pipeline.store import ObjectStore


@pytest.fixture(params=["sqlite", pytest.param("rados", marks=pytest.mark.ceph)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ObjectStore]:
    if request.param == "sqlite":
        from changelog.pipeline.backends.sqlite import SqliteStore

        return functools.partial(SqliteStore, str(tmp_path / "store.db"))
    lab = request.getfixturevalue("ceph_lab")
    from changelog.pipeline.backends.rados import RadosStore

    return functools.partial(
        RadosStore,
        conffile=lab.conf,
        keyring=lab.keyring,
        pool=lab.pool,
        namespace=f"contract-{uuid.uuid4().hex[:12]}",
    )


@pytest.fixture
def backend(request: pytest.FixtureRequest, store_factory: Callable[[], ObjectStore]) -> str:
    name: str = request.node.callspec.params["store_factory"]
    return name


@pytest.fixture
def store(store_factory: Callable[[], ObjectStore]) -> Iterator[ObjectStore]:
    s = store_factory()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def other_store(store_factory: Callable[[], ObjectStore]) -> Iterator[ObjectStore]:
    """A second store on the same data, and another lock holder (RADOS: another client)."""
    s = store_factory()
    try:
        yield s
    finally:
        s.close()
