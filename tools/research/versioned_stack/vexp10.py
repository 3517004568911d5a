"""Experiment 10: the repair of a peer's entry that lands on top of a key's list but not current
(REP.2's current-entry divergence), and what a version delete's bilog entry carries.

Usage: CEPH_BIN=... CEPH_CONF=... RGW_ENDPOINT=... python vexp10.py BUCKET
"tester" (TESTKEY) owns the bucket; "sys10" (--system) places entries with rgwx parameters.
Steps: two versions c0, c1 (c1 current, the key's OLH epoch O = 3); tester deletes c0 by id
(O = 4: a version delete without an epoch is O + 1; its bilog ``unlink_instance`` entry carries
ver.epoch = 4); the system user places w at epoch O with an id sorting after c1's (a tie: cls_rgw
promotes only if the current id sorts first, so w is listed on top but not current: the REP.2
current-entry divergence); the repair tried: a placeholder P (id sorting first) at epoch O
(current), deleted at epoch O (the index's head moves to w, at O, unchanged); then y at O with
the smallest id (a tie, promoted in the index); then a plain PutObject (O + 1).
Measured on 16.2.15 (2026-12-07): the index is repaired (w current at O, OLH epoch O), but the
head object in the data pool still names P (``user.rgw.olh.info``; ``olh.ver`` O): GET answers
404 NoSuchKey, and y, current in the index, also reads as 404; only the PutObject at O + 1
brings GET back in line. So deleting the current entry at the key's own OLH epoch never reaches
radosgw's head object: the placeholder dance of ``apply.mirror_marker`` leaves GET on the
placeholder (a 404, as for the marker it places) until the key's epoch next rises.
Prints each step's current id and the index's versioned_epoch of every instance and the OLH's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from changelog.consumers.replication import rgwx  # noqa: E402

BIN, CONF, EP = os.environ["CEPH_BIN"], os.environ["CEPH_CONF"], os.environ["RGW_ENDPOINT"]


def admin(*args: str) -> str:
    return subprocess.run(
        [f"{BIN}/radosgw-admin", "-c", CONF, *args], check=False, capture_output=True, text=True, errors="replace"
    ).stdout


def client(access: str, secret: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3", endpoint_url=EP, aws_access_key_id=access, aws_secret_access_key=secret, region_name="default",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )  # fmt: skip


def index(bucket: str, key: str) -> str:
    bi = json.loads(admin("bi", "list", "--bucket", bucket, "--object", key) or "[]")
    out = []
    for e in bi:
        ent = e["entry"]
        if e["type"] == "plain" and ent.get("instance"):  # the list entries, in list order
            out.append(f"{ent['instance'][:12]}@{ent['versioned_epoch']}{'*' if ent['flags'] & 2 else ''}")
        elif e["type"] == "olh":
            out.append(f"OLH epoch={ent['epoch']} head={ent['key']['instance'][:12]}")
    return " ".join(out)


def main(bucket: str) -> None:
    admin("user", "create", "--uid", "sys10", "--display-name", "sys10", "--system",
          "--access-key", "SYS10KEY", "--secret", "SYS10SECRET")  # fmt: skip
    u, s = client("TESTKEY", "TESTSECRET"), client("SYS10KEY", "SYS10SECRET")
    rgwx.enable(s)
    u.create_bucket(Bucket=bucket)
    u.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    k = "k"

    def current() -> str:
        try:
            return str(u.head_object(Bucket=bucket, Key=k)["VersionId"])[:12]
        except Exception as ex:  # noqa: BLE001
            return f"({type(ex).__name__})"

    def get() -> str:
        try:
            r = u.get_object(Bucket=bucket, Key=k)
            return f"{r['Body'].read()!r} (version {str(r.get('VersionId'))[:12]})"
        except Exception as ex:  # noqa: BLE001
            return f"({type(ex).__name__})"

    def show(label: str) -> None:
        print(f"{label:48s} current={current():14s} {index(bucket, k)}")

    c0 = u.put_object(Bucket=bucket, Key=k, Body=b"c0")["VersionId"]
    c1 = u.put_object(Bucket=bucket, Key=k, Body=b"c1")["VersionId"]
    show("c0, c1")
    before = {e["op_id"] for e in json.loads(admin("bilog", "list", "--bucket", bucket) or "[]")}
    u.delete_object(Bucket=bucket, Key=k, VersionId=c0)
    show("tester deletes c0 by id")
    for e in json.loads(admin("bilog", "list", "--bucket", bucket) or "[]"):
        if e["op_id"] not in before:
            print(f"    bilog {e['op']:16s} inst={e['instance'][:12]:12s} ver={e['ver']}")
    olh = json.loads(admin("bi", "list", "--bucket", bucket, "--object", k) or "[]")
    o = next(int(e["entry"]["epoch"]) for e in olh if e["type"] == "olh")
    w = "zzzz" + c1[4:]
    with rgwx.params(rgwx.version(w, o)):
        s.put_object(Bucket=bucket, Key=k, Body=b"w", ACL="bucket-owner-full-control")
    show(f"sys places w (id after c1's) at epoch O={o}")
    listing = u.list_object_versions(Bucket=bucket, Prefix=k)
    print("    listing:", [(v["VersionId"][:12], v["IsLatest"]) for v in listing.get("Versions", [])])
    p = "--rgwcl-placeholder-x"
    with rgwx.params(rgwx.version(p, o)):
        s.put_object(Bucket=bucket, Key=k, Body=b"", ACL="bucket-owner-full-control")
    show(f"sys places P at epoch {o}")
    with rgwx.params({rgwx.EPOCH: str(o)}):
        s.delete_object(Bucket=bucket, Key=k, VersionId=p)
    show(f"sys deletes P at epoch {o}")
    print("    GET:", get())
    y = "0000" + "y" * 28  # sorts before every id here
    with rgwx.params(rgwx.version(y, o)):
        s.put_object(Bucket=bucket, Key=k, Body=b"y", ACL="bucket-owner-full-control")
    show(f"sys places y (smallest id) at epoch {o}")
    print("    GET:", get())
    x = u.put_object(Bucket=bucket, Key=k, Body=b"x")["VersionId"]
    show(f"tester puts x ({x[:12]})")
    print("    GET:", get())

if __name__ == "__main__":
    main(sys.argv[1])
