"""Experiment: can a radosgw system user place object versions / delete markers with a chosen
version id and versioned epoch (rgwx-version-id / rgwx-versioned-epoch) via plain S3 requests?

Usage: CEPH_BIN=... RGW_ENDPOINT=... python vexp.py BUCKET
Prints every request, its status and x-amz-version-id, and after each step the ListObjectVersions
order (newest first, as RGW returns it) plus the bucket-index instance entries (versioned_epoch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

EP = os.environ["RGW_ENDPOINT"]
BIN = os.environ["CEPH_BIN"]
HTTP = urllib3.PoolManager()
USERS = {
    "tester": Credentials("TESTKEY", "TESTSECRET"),
    "sys": Credentials("SYSKEY", "SYSSECRET"),
}


def admin(*args: str) -> str:
    return subprocess.run(
        [f"{BIN}/radosgw-admin", *args], check=False, capture_output=True, text=True, errors="replace"
    ).stdout


def req(user: str, method: str, path: str, params: dict[str, str] | None = None,
        body: bytes = b"", headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
    qs = urllib.parse.urlencode(sorted((params or {}).items()), quote_via=urllib.parse.quote)
    url = f"{EP}{urllib.parse.quote(path)}" + (f"?{qs}" if qs else "")
    r = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    r.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    SigV4Auth(USERS[user], "s3", "default").add_auth(r)
    resp = HTTP.request(method, url, body=body or None, headers=dict(r.headers.items()))
    vid = resp.headers.get("x-amz-version-id")
    dm = resp.headers.get("x-amz-delete-marker")
    err = resp.data[:200].decode(errors="replace") if resp.status >= 300 else ""
    print(f"  {user:6s} {method:6s} {path} {params or ''} {headers or ''} -> {resp.status}"
          f" vid={vid} dm={dm} {err}")
    return resp


def versions(bucket: str, key: str) -> None:
    resp = req("tester", "GET", f"/{bucket}", {"versions": "", "prefix": key})
    import xml.etree.ElementTree as ET

    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    root = ET.fromstring(resp.data)
    for el in root:
        tag = el.tag.replace(ns, "")
        if tag in ("Version", "DeleteMarker"):
            vid = el.find(f"{ns}VersionId").text
            latest = el.find(f"{ns}IsLatest").text
            mtime = el.find(f"{ns}LastModified").text
            print(f"    LOV {tag:12s} {vid:34s} latest={latest} mtime={mtime}")
    bi = json.loads(admin("bi", "list", "--bucket", bucket, "--object", key) or "[]")
    for e in bi:
        if e["type"] == "instance":
            ent = e["entry"]
            print(f"    BI  instance {ent['instance'] or 'null':34s} epoch={ent['versioned_epoch']}"
                  f" flags={ent['flags']} exists={ent['exists']} mtime={ent['meta']['mtime']}")
        elif e["type"] == "olh":
            ent = e["entry"]
            print(f"    BI  olh -> {ent['key']['instance']} epoch={ent['epoch']} dm={ent['delete_marker']}")


def main() -> None:
    b = sys.argv[1]
    print(admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
                "--access-key", "SYSKEY", "--secret", "SYSSECRET")[:0], end="")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}", {"versioning": ""},
        b'<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>')

    k = "k1"
    print("== A: tester (non-system) PUT with rgwx params -> expect ignored")
    req("tester", "PUT", f"/{b}/{k}", {"rgwx-version-id": "tester-chosen-vid", "rgwx-versioned-epoch": "50"}, b"A")
    print("== B: two normal PUTs by tester")
    req("tester", "PUT", f"/{b}/{k}", None, b"B1")
    req("tester", "PUT", f"/{b}/{k}", None, b"B2")
    versions(b, k)
    print("== C: sys PUT chosen vid, epoch=1 (below current)")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "low-epoch1-vid", "rgwx-versioned-epoch": "1"}, b"C")
    versions(b, k)
    print("== D: sys PUT chosen vid, epoch=1000 (above)")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "top-epoch1000-vid", "rgwx-versioned-epoch": "1000"}, b"D")
    print("== E: sys PUT chosen vid, epoch=500 (between)")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "mid-epoch500-vid", "rgwx-versioned-epoch": "500"}, b"E")
    print("== F: sys PUT chosen vid, no epoch")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "noepoch-vid"}, b"F")
    versions(b, k)
    print("== G: sys DELETE (no versionId) chosen marker vid, epoch=700 (below top)")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-epoch700-vid", "rgwx-versioned-epoch": "700"})
    versions(b, k)
    print("== H: sys DELETE chosen marker vid, epoch=5000 (top)")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-epoch5000-vid", "rgwx-versioned-epoch": "5000"})
    print("== I: sys DELETE chosen marker vid, epoch=3000 while top is a delete marker")
    req("sys", "DELETE", f"/{b}/{k}", {"rgwx-version-id": "dm-epoch3000-vid", "rgwx-versioned-epoch": "3000"})
    print("== J: tester normal PUT after")
    req("tester", "PUT", f"/{b}/{k}", None, b"J")
    versions(b, k)
    print("== K: sys PUT same vid again with another epoch (re-put of existing version)")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "low-epoch1-vid", "rgwx-versioned-epoch": "2"}, b"K")
    bi = json.loads(admin("bi", "list", "--bucket", b, "--object", k) or "[]")
    top = max(e["entry"]["epoch"] for e in bi if e["type"] == "olh")
    print(f"== L: sys PUT epoch equal to olh epoch {top}, vids 'aaa-tie' then 'zzz-tie'")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "aaa-tie", "rgwx-versioned-epoch": str(top + 1)}, b"L1")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "zzz-tie", "rgwx-versioned-epoch": str(top + 1)}, b"L2")
    versions(b, k)
    print("== M: mtime attempts on sys PUT: header x-amz-date irrelevant; try rgwx-mtime param, "
          "If-Unmodified-Since")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "mtime-try-vid", "rgwx-versioned-epoch": "10",
                                     "rgwx-mtime": "1500000000"}, b"M")
    versions(b, k)
    print("== N: sys DELETE specific version (versionId) with epoch")
    req("sys", "DELETE", f"/{b}/{k}", {"versionId": "mid-epoch500-vid", "rgwx-versioned-epoch": "6000"})
    versions(b, k)
    print("== bilog")
    for e in json.loads(admin("bilog", "list", "--bucket", b) or "[]"):
        print(f"    BILOG {e['op']:14s} {e['object']} inst={e['instance']!r:24} ver={e['ver']}"
              f" state={e['state']} ts={e['timestamp']}")


if __name__ == "__main__":
    main()
