"""Experiment 4: system-user copy with rgwx-source-zone (the multisite fetch_remote_obj path) on a
lab without a second zone. Usage: python vexp4.py BUCKET"""

from __future__ import annotations

import sys

from vexp import admin, req


def main() -> None:
    b = sys.argv[1]
    admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
          "--access-key", "SYSKEY", "--secret", "SYSSECRET")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}/src", None, b"SRC")
    zid = admin("zone", "get").split('"id": "')[1].split('"')[0]
    for zone in ("no-such-zone", zid):
        req("sys", "PUT", f"/{b}/dst", {"rgwx-source-zone": zone, "rgwx-client-id": "c", "rgwx-op-id": "o",
                                         "rgwx-version-id": "rz-vid", "rgwx-versioned-epoch": "1"},
            headers={"x-amz-copy-source": f"/{b}/src"})


if __name__ == "__main__":
    main()
