"""Experiment 7: (a) equal-epoch tie in reverse order (zzz first, then aaa); (b) what a system GET
returns (rgwx-stat / rgwx-prepend-metadata headers: mtime, epoch?); (c) full bilog entries of a
system-user write vs a normal write. Usage: python vexp7.py BUCKET"""

from __future__ import annotations

import json
import sys

from vexp import admin, req, versions


def main() -> None:
    b = sys.argv[1]
    admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
          "--access-key", "SYSKEY", "--secret", "SYSSECRET")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}", {"versioning": ""},
        b'<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>')
    k = "k7"
    req("tester", "PUT", f"/{b}/{k}", None, b"T1")
    print("== a: same epoch 10, 'zzz-tie' first then 'aaa-tie'")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "zzz-tie", "rgwx-versioned-epoch": "10",
                                     "rgwx-uid": "tester"}, b"Z")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "aaa-tie", "rgwx-versioned-epoch": "10",
                                     "rgwx-uid": "tester"}, b"A")
    print("== a2: same epoch 10, 'mmm-tie' (between) arrives last")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "mmm-tie", "rgwx-versioned-epoch": "10",
                                     "rgwx-uid": "tester"}, b"M")
    versions(b, k)
    print("== b: system GET headers")
    for params in ({"versionId": "zzz-tie"}, {"versionId": "zzz-tie", "rgwx-stat": "true"},
                   {"versionId": "zzz-tie", "rgwx-prepend-metadata": "true"}):
        r = req("sys", "GET", f"/{b}/{k}", params)
        hs = {h: v for h, v in r.headers.items() if h.lower().startswith(("rgwx", "x-rgw", "last-mod", "x-amz"))}
        print("   ", params, json.dumps(hs))
        print("    body:", r.data[:600])
    print("== c: bilog entries (full) for the key")
    for e in json.loads(admin("bilog", "list", "--bucket", b) or "[]"):
        print("   ", json.dumps(e))


if __name__ == "__main__":
    main()
