"""`tools/demo --embedded` (the README's first command where Ceph cannot run): the embedded
defaults end to end, every mutation committed once, and the commands it prints work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_embedded_demo_commits_every_mutation_once(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--embedded", "--dir", str(work)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "each mutation once: True" in out
    printed = [line.split() for line in out.splitlines() if line.strip().endswith(("status", "logs cat"))]
    assert len(printed) == 2, out[-2000:]
    for cmd in printed:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0 and run.stdout.strip(), (cmd, run.stderr[-1000:])
