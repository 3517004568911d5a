"""Who writes the directory target's temporary files (``.tmp/<uuid>.<pid>.<pid namespace>.<host>``),
so that a cleaner on the same host can tell a dead writer's leftovers from a live one's."""

from __future__ import annotations

import os
import re
import socket


def tmp_owner() -> str:
    """Who writes a temporary file, as its name records it: ``<pid>.<pid namespace>`` and the
    host (last, it may hold dots), so that a cleaner on the same host can tell a dead writer's
    files from a live one's. The pid namespace tells apart containers that share a hostname."""
    try:
        ns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        ns = "0"
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "_"
    return f"{os.getpid()}.{ns}.{host}"


def tmp_writer(name: str) -> tuple[int, str] | None:
    """The (pid, ``<pid namespace>.<host>``) a temporary file's name records; None for a name
    of another form (an older version's: only its age tells it is stale)."""
    parts = name.split(".", 3)  # <uuid>.<pid>.<ns>.<host>
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return int(parts[1]), f"{parts[2]}.{parts[3]}"


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, owned by someone else
        return False
    return False
