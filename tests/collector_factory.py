"""Collectors for tests, built compactly: ``collector(index, target, page=3, settle=0, clock=clk)``.

Keys of ``[collector]`` go to ``CollectorConfig.unchecked`` (so values an operator may not set, a
10 ms interval, are fine here), ``clock``/``monotonic``/``sleep`` to ``Clocks``, the rest to the
``Collector`` itself (``compression``, ``log_prefix``, ``fault_hook``, ``watermark_cap`` ...).
Imported by the unit tests and by the fault harness's child processes.
"""

from __future__ import annotations

from typing import Any

from changelog.config import CollectorConfig
from changelog.pipeline.collector import Collector
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.loop import Clocks
from changelog.pipeline.targets import Target

CLOCK_KEYS = ("clock", "monotonic", "sleep")


def collector(index: ChangeIndex, target: Target, **kw: Any) -> Collector:
    config = {k: kw.pop(k) for k in list(kw) if k in CollectorConfig.model_fields}
    clocks = {k: kw.pop(k) for k in list(kw) if k in CLOCK_KEYS}
    return Collector(index, target, CollectorConfig.unchecked(**config), clocks=Clocks(**clocks), **kw)
