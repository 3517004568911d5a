"""Experiment 8: what a system-user GET exposes (Rgwx-* headers, rgwx-stat / rgwx-prepend-metadata
bodies), and the full bilog entries of system-user writes. Usage: python vexp8.py BUCKET"""

from __future__ import annotations

import json
import sys
import urllib.parse

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from vexp import EP, USERS, admin, req


def raw_get(path: str, params: dict[str, str]) -> None:
    qs = urllib.parse.urlencode(sorted(params.items()), quote_via=urllib.parse.quote)
    url = f"{EP}{path}?{qs}"
    r = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(USERS["sys"], "s3", "default").add_auth(r)
    resp = urllib3.PoolManager().request("GET", url, headers=dict(r.headers.items()), retries=False,
                                         timeout=5, preload_content=False)
    hs = {h: v for h, v in resp.headers.items() if h.lower().startswith(("rgwx", "x-rgw", "content-len"))}
    body = b""
    try:
        for chunk in resp.stream(1024):
            body += chunk
    except Exception as e:  # noqa: BLE001 - record what the server sent before the error
        body += f" <{type(e).__name__}>".encode()
    print(f"  GET {params} -> {resp.status} {json.dumps(hs)}\n    body: {body[:700]!r}")


def main() -> None:
    b = sys.argv[1]
    admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
          "--access-key", "SYSKEY", "--secret", "SYSSECRET")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}", {"versioning": ""},
        b'<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>')
    k = "k8"
    req("tester", "PUT", f"/{b}/{k}", None, b"T1")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "sys-top", "rgwx-versioned-epoch": "10",
                                     "rgwx-uid": "tester"}, b"S", headers={"x-amz-meta-origin": "site-a"})
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "sys-low", "rgwx-versioned-epoch": "1",
                                     "rgwx-uid": "tester"}, b"L")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "sys-dm", "rgwx-versioned-epoch": "11",
                                        "rgwx-uid": "tester"})
    for p in ({"versionId": "sys-top"}, {"versionId": "sys-top", "rgwx-stat": "true"},
              {"versionId": "sys-top", "rgwx-prepend-metadata": "true"}):
        raw_get(f"/{b}/{k}", p)
    print("== bilog entries (full)")
    for e in json.loads(admin("bilog", "list", "--bucket", b) or "[]"):
        print("   ", json.dumps(e))


if __name__ == "__main__":
    main()
