"""Experiment 6: list order for versioned epochs >= 2**32 (cls_rgw decreasing_str uses
"4%020lld" of -num there). Usage: python vexp6.py BUCKET"""

from __future__ import annotations

import sys

from vexp import admin, req, versions


def main() -> None:
    b = sys.argv[1]
    admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
          "--access-key", "SYSKEY", "--secret", "SYSSECRET")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}", {"versioning": ""},
        b'<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>')
    k = "k6"
    for vid, ep in (("e-2p32-plus10", 2**32 + 10), ("e-2p32-plus20", 2**32 + 20),
                    ("e-1p7e15", 1_700_000_000_000_000), ("e-1p8e15", 1_800_000_000_000_000),
                    ("e-4000000000", 4_000_000_000), ("e-int-max", 2**31 - 1), ("e-int-max-plus1", 2**31),
                    ("e-neg", -5), ("e-zero", 0)):
        req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": vid, "rgwx-versioned-epoch": str(ep),
                                         "rgwx-uid": "tester"}, vid.encode())
    versions(b, k)
    req("tester", "PUT", f"/{b}/{k}", None, b"plain")
    versions(b, k)
    r = req("tester", "GET", f"/{b}/{k}")
    print("    GET current body:", r.data)


if __name__ == "__main__":
    main()
