"""Experiment 5: delete markers when the current version is already a delete marker: plain
DELETE, system DELETE below it, and a placeholder-version workaround for releases that refuse.
Usage: python vexp5.py BUCKET"""

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
    k = "k5"
    req("tester", "PUT", f"/{b}/{k}", None, b"V1")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-top-100", "rgwx-versioned-epoch": "100",
                                        "rgwx-uid": "tester"})
    print("== plain tester DELETE while current is a delete marker")
    req("tester", "DELETE", f"/{b}/{k}")
    print("== sys DELETE marker epoch 50 while current is a delete marker")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-direct-50", "rgwx-versioned-epoch": "50",
                                        "rgwx-uid": "tester"})
    versions(b, k)
    print("== workaround: placeholder version on top, marker below, drop placeholder")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "tmp-placeholder", "rgwx-versioned-epoch": "100000",
                                     "rgwx-uid": "tester"}, b"")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-via-ph-40", "rgwx-versioned-epoch": "40",
                                        "rgwx-uid": "tester"})
    req("sys", "DELETE", f"/{b}/{k}", {"versionId": "tmp-placeholder", "rgwx-uid": "tester"})
    versions(b, k)
    r = req("tester", "HEAD", f"/{b}/{k}")
    print("    HEAD current:", r.status, r.headers.get("x-amz-delete-marker"), r.headers.get("x-amz-version-id"))


if __name__ == "__main__":
    main()
