"""tools/ceph-lab keeps its contract: `up` on a live lab is a fast no-op; `down` leaves nothing behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.lab import (
    Lab,
    boot_missing_reason,
    clean_tool_env,
    is_ceph_lab_dir,
    lab_from_env,
    parse_env_lines,
    run_tool,
)


def pids(directory: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in sorted((directory / "run").glob("*.pid"))}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def require_own_lab(lab: Lab) -> None:
    if not is_ceph_lab_dir(lab):
        pytest.skip(f"the session uses an external cluster ({lab.conf}), not one made by tools/ceph-lab")


def test_up_on_a_live_lab_is_a_fast_noop(ceph_lab: Lab) -> None:
    require_own_lab(ceph_lab)
    directory = Path(ceph_lab.dir)
    before = pids(directory)
    outputs = []
    for _ in range(2):
        started = time.monotonic()
        proc = run_tool("up", str(directory), env=clean_tool_env())
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert elapsed < 1.5, f"`up` on a live lab took {elapsed:.2f} s"
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    assert lab_from_env(parse_env_lines(outputs[1])) == ceph_lab
    assert pids(directory) == before, "no daemon may be restarted"
    assert all(alive(p) for p in before.values())
    assert run_tool("status", str(directory)).returncode == 0


def test_down_stops_every_daemon_and_removes_the_folder(ceph_lab: Lab, tmp_path: Path) -> None:
    require_own_lab(ceph_lab)
    reason = boot_missing_reason()
    if reason:
        pytest.skip(f"Ceph lab unavailable: {reason}")
    directory = tmp_path / "second-lab"
    env = {**clean_tool_env(), "CEPH_WITH_MGR": "0", "CEPH_WITH_RGW": "0"}
    up = run_tool("up", str(directory), env=env)
    assert up.returncode == 0, up.stderr
    second = parse_env_lines(up.stdout)
    assert second["CEPH_LAB_DIR"] == str(directory)
    assert second["RGW_ENDPOINT"] == ""
    assert second["CEPH_CONF"] != ceph_lab.conf  # side by side with the session's lab, own ports
    started = pids(directory)
    assert sorted(started) == ["mon.a", "osd.0"]
    assert all(alive(p) for p in started.values())
    assert run_tool("status", str(directory)).returncode == 0

    down = run_tool("down", str(directory))
    assert down.returncode == 0, down.stderr
    assert not directory.exists()
    assert [name for name, pid in started.items() if alive(pid)] == []
    conf = second["CEPH_CONF"]
    leftovers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if conf.encode() in argv and alive(int(entry)):
                leftovers.append(entry)
    assert leftovers == []
    assert run_tool("status", str(directory)).returncode == 1
    assert Path(ceph_lab.conf).exists(), "the session's lab must be untouched"
