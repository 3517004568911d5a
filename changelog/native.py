"""Where the C speedups (``changelog._speedups``) are looked up: one place for the rule every
caller follows. A function is used only when the module is built, has it (a module built from an
older source lacks the newer ones) and ``RGW_CHANGELOG_PURE_PYTHON=1`` does not ask for the
Python reference (tests and debugging); otherwise the caller's Python code serves."""

from __future__ import annotations

import os
from typing import Any


def speedup(name: str) -> Any:
    """``changelog._speedups.<name>``, or None where Python serves (see the module)."""
    if os.environ.get("RGW_CHANGELOG_PURE_PYTHON", "") == "1":
        return None
    try:
        from changelog import _speedups
    except ImportError:
        return None
    return getattr(_speedups, name, None)
