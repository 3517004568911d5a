"""``rgw_module.mapping.datalog_shard``: radosgw's choice of data-log shard, against values computed
with Ceph's own C code (``ceph_str_hash_linux`` as in src/common/ceph_hash.cc, compiled here)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from rgw_module.mapping import datalog_shard, str_hash_linux

C = r"""
#include <stdio.h>
#include <string.h>
unsigned ceph_str_hash_linux(const char *str, unsigned length)
{
	unsigned long hash = 0;
	while (length--) {
		unsigned char c = *str++;
		hash = (hash + (c << 4) + (c >> 4)) * 11;
	}
	return hash;
}
int main(void) {
	char line[4096];
	while (fgets(line, sizeof line, stdin)) {
		size_t n = strlen(line);
		if (n && line[n - 1] == '\n') line[--n] = 0;
		printf("%u\n", ceph_str_hash_linux(line, (unsigned)n));
	}
	return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_hash_equals_ceph_s_c_code(tmp_path: Path) -> None:
    src = tmp_path / "h.c"
    src.write_text(C)
    exe = tmp_path / "h"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    rng = random.Random(17)
    names = ["", "a", "bucket", "x" * 255, "caf\u00e9", "\u65e5\u672c", "my-bucket.with.dots"]
    names += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-.") for _ in range(rng.randint(1, 63))) for _ in range(2000)]
    out = subprocess.run([str(exe)], input="\n".join(names) + "\n", capture_output=True, text=True, check=True).stdout
    assert [int(v) for v in out.split()] == [str_hash_linux(n) for n in names]


def test_the_shard_adds_the_index_shard_and_ignores_the_tenant() -> None:
    h = str_hash_linux("b")
    assert datalog_shard("b", 5, 128) == (h + 5) % 128
    assert datalog_shard("b", -1, 128) == h % 128  # unsharded
    assert datalog_shard("t1/b", 5, 128) == (h + 5) % 128
