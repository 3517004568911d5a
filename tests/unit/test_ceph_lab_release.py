"""tools/ceph-lab's release choice: a release that cannot be had here is one line and a non-zero
exit, never a half-built lab. (Booting each release is the integration tier's job: .ci/run.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CEPH_LAB = Path(__file__).resolve().parents[2] / "tools" / "ceph-lab"


def run(*args: str, env: dict[str, str] | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(CEPH_LAB), *args]
    if user is not None:  # the tool is stdlib only: the system's python3, which any user may run
        cmd = ["runuser", "-u", user, "--", "/usr/bin/python3", str(CEPH_LAB), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_unknown_release_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run("up", str(tmp_path / "lab"), "--release", "quincy")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ceph-lab: unknown release 'quincy': pick one of pacific, reef, tentacle"]
    assert proc.stdout == ""
    assert not (tmp_path / "lab").exists()


def test_release_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    proc = run("status", str(tmp_path / "lab"), env={**os.environ, "CEPH_RELEASE": "squid"})
    assert proc.returncode == 2 and "unknown release 'squid'" in proc.stderr


def test_root_refuses_pacific(tmp_path: Path) -> None:
    proc = run("root", "pacific")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "ceph-lab: `root` builds reef or tentacle, not 'pacific' (pacific runs the host's packages)"
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root (to run the tool as another user) and /usr/bin/python3",
)
def test_an_unbuilt_root_without_root_rights_is_one_line() -> None:
    home = Path(tempfile.mkdtemp(prefix="ceph-lab-nobody-", dir="/tmp"))
    home.chmod(0o777)
    roots = home / "roots"
    roots.mkdir()
    roots.chmod(0o777)
    env = {"PATH": os.environ["PATH"], "CEPH_LAB_ROOTS": str(roots), "HOME": str(home)}
    try:
        proc = run("up", str(home / "lab"), "--release", "tentacle", env=env, user="nobody")
        left = list(roots.iterdir())
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ceph-lab: release tentacle runs from a Debian root")
    assert "needs root" in lines[0]
    assert proc.stdout == "" and left == []
