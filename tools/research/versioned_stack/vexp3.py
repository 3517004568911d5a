"""Experiment 3: ownership of system-user writes (rgwx-uid impersonation), and which multipart
request must carry rgwx-version-id / rgwx-versioned-epoch. Usage: python vexp3.py BUCKET"""

from __future__ import annotations

import re
import sys

from vexp import admin, req, versions


def mp(b: str, k: str, init: dict[str, str], part: dict[str, str], done: dict[str, str]) -> None:
    r = req("sys", "POST", f"/{b}/{k}", {"uploads": "", **init})
    up = re.search(rb"<UploadId>(.*?)</UploadId>", r.data).group(1).decode()
    et = req("sys", "PUT", f"/{b}/{k}", {"uploadId": up, "partNumber": "1", **part}, b"MP").headers["ETag"]
    body = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{et}</ETag></Part>"
            f"</CompleteMultipartUpload>").encode()
    req("sys", "POST", f"/{b}/{k}", {"uploadId": up, **done}, body)


def main() -> None:
    b = sys.argv[1]
    admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
          "--access-key", "SYSKEY", "--secret", "SYSSECRET")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}", {"versioning": ""},
        b'<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>')
    k = "k3"
    req("tester", "PUT", f"/{b}/{k}", None, b"T1")
    req("tester", "PUT", f"/{b}/{k}", None, b"T2")
    print("== U: sys PUT low epoch with rgwx-uid=tester (act as bucket owner)")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "uid-low-vid", "rgwx-versioned-epoch": "1",
                                     "rgwx-uid": "tester"}, b"U")
    print("== V: sys PUT low epoch without rgwx-uid")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "nouid-low-vid", "rgwx-versioned-epoch": "1"}, b"V")
    print("== V2: sys DELETE marker low epoch with rgwx-uid=tester")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-uid-vid", "rgwx-versioned-epoch": "1",
                                        "rgwx-uid": "tester"})
    for v in ("uid-low-vid", "nouid-low-vid"):
        r = req("tester", "GET", f"/{b}/{k}", {"versionId": v})
        r = req("sys", "GET", f"/{b}/{k}", {"versionId": v, "acl": ""})
        print("    owner:", re.findall(rb"<ID>(.*?)</ID>", r.data)[:1])
    print("== W: multipart, params only on complete")
    sp = {"rgwx-version-id": "mp-complete-only", "rgwx-versioned-epoch": "1", "rgwx-uid": "tester"}
    mp(b, k, {"rgwx-uid": "tester"}, {"rgwx-uid": "tester"}, sp)
    print("== X: multipart, params only on init")
    sp = {"rgwx-version-id": "mp-init-only", "rgwx-versioned-epoch": "1", "rgwx-uid": "tester"}
    mp(b, k, sp, {"rgwx-uid": "tester"}, {"rgwx-uid": "tester"})
    versions(b, k)


if __name__ == "__main__":
    main()
