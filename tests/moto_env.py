"""The environment of a test that talks to moto: fake credentials and region, and no profile, so
that no real AWS account is ever reachable from a test."""

from __future__ import annotations

import pytest

REGION = "us-east-1"


def offline_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's fake credentials and region for this test, and no ``AWS_PROFILE``."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
