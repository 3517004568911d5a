"""Print the JSON keys of a system GET with rgwx-prepend-metadata=true. Usage: python pm.py /bucket/key vid"""
import json
import sys
import urllib.parse

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from vexp import EP, USERS

path, vid = sys.argv[1], sys.argv[2]
url = f"{EP}{path}?" + urllib.parse.urlencode(sorted({"versionId": vid, "rgwx-prepend-metadata": "true"}.items()))
r = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
SigV4Auth(USERS["sys"], "s3", "default").add_auth(r)
resp = urllib3.PoolManager().request("GET", url, headers=dict(r.headers.items()), retries=False, timeout=5)
n = int(resp.headers["Rgwx-Embedded-Metadata-Len"])
meta = json.loads(resp.data[:n])
print({k: (v if k != "attrs" else [a["key"] for a in v]) for k, v in meta.items()})
