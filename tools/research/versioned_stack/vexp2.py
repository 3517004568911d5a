"""Experiment 2: system-user copy and multipart with rgwx-version-id / rgwx-versioned-epoch, and
whether anything keeps or sets the mtime. Reuses vexp.py's helpers. Usage: python vexp2.py BUCKET"""

from __future__ import annotations

import re
import sys
import time

from vexp import admin, req, versions


def main() -> None:
    b = sys.argv[1]
    admin("user", "create", "--uid", "sys", "--display-name", "sys", "--system",
          "--access-key", "SYSKEY", "--secret", "SYSSECRET")
    req("tester", "PUT", f"/{b}")
    req("tester", "PUT", f"/{b}", {"versioning": ""},
        b'<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>')
    src = req("tester", "PUT", f"/{b}/src", None, b"SRC").headers["x-amz-version-id"]
    time.sleep(2)
    k = "k2"
    req("tester", "PUT", f"/{b}/{k}", None, b"T1")
    req("tester", "PUT", f"/{b}/{k}", None, b"T2")
    print("== P: sys COPY (x-amz-copy-source) with chosen vid + low epoch; does dest keep src mtime?")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "copy-low-vid", "rgwx-versioned-epoch": "1"},
        headers={"x-amz-copy-source": f"/{b}/src?versionId={src}"})
    print("== Q: same with rgwx-copy-if-newer=true and metadata-directive COPY")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "copy-ifnewer-vid", "rgwx-versioned-epoch": "1",
                                     "rgwx-copy-if-newer": "true"},
        headers={"x-amz-copy-source": f"/{b}/src?versionId={src}", "x-amz-metadata-directive": "COPY"})
    versions(b, k)
    versions(b, "src")
    print("== R: multipart: init/upload/complete by sys with rgwx params on every request")
    sp = {"rgwx-version-id": "mp-low-vid", "rgwx-versioned-epoch": "1"}
    r = req("sys", "POST", f"/{b}/{k}", {"uploads": "", **sp})
    up = re.search(rb"<UploadId>(.*?)</UploadId>", r.data).group(1).decode()
    et = req("sys", "PUT", f"/{b}/{k}", {"uploadId": up, "partNumber": "1", **sp}, b"MP").headers["ETag"]
    body = (f'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{et}</ETag></Part>'
            f'</CompleteMultipartUpload>').encode()
    req("sys", "POST", f"/{b}/{k}", {"uploadId": up, **sp}, body)
    versions(b, k)
    print("== S: version id 'null' via rgwx-version-id=null, low epoch")
    req("sys", "PUT", f"/{b}/{k}", {"rgwx-version-id": "null", "rgwx-versioned-epoch": "1"}, b"S")
    versions(b, k)
    print("== T: GET of each chosen version by versionId (tester)")
    for v in ("copy-low-vid", "copy-ifnewer-vid", "mp-low-vid", "null"):
        r = req("tester", "GET", f"/{b}/{k}", {"versionId": v})
        print(f"    body={r.data[:10]!r} last-modified={r.headers.get('Last-Modified')}")


if __name__ == "__main__":
    main()
