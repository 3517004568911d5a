"""Times as operators type and read them: ``parse_time`` (RFC 3339, dates, epoch seconds, relative
times such as ``-1h``) to microseconds since the epoch, and ``fmt_time`` / ``fmt_age`` back to text.
Shared by the CLI, the status document and the consumers' commands."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_REL = re.compile(r"^-?((?:\d+(?:\.\d+)?[smhdw])+)$")
_REL_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = "RFC 3339 (2026-11-21T10:00:00Z), YYYY-MM-DD, epoch seconds, or relative (-1h, 30m, 2d: ago)"


def parse_time(text: str, *, now: float | None = None) -> int:
    """A time given by a user, as microseconds since the epoch (UTC).

    Accepts ``now``, RFC 3339 (a missing offset means UTC), ``YYYY-MM-DD`` (midnight UTC), epoch
    seconds (``1763700000`` or ``1763700000.5``) and relative times (``-1h``, ``30m``, ``1h30m``,
    ``2d``: that long ago). Raises ``ValueError`` otherwise.
    """
    t = text.strip()
    now = time.time() if now is None else now
    if t == "now":
        return int(now * 1_000_000)
    m = _REL.match(t)
    if m:
        ago = sum(float(n) * _UNIT_S[u] for n, u in _REL_PART.findall(m.group(1)))
        return int((now - ago) * 1_000_000)
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return int(float(t) * 1_000_000)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        d = datetime.strptime(t, "%Y-%m-%d").replace(tzinfo=UTC)
        return int(d.timestamp()) * 1_000_000
    try:
        d = datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time") from None
    if "T" not in t.upper() and " " not in t:
        raise ValueError(f"{text!r} is not a time")
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1_000_000)


def fmt_time(t_us: int | float | None) -> str | None:
    if t_us is None:
        return None
    return datetime.fromtimestamp(t_us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"
