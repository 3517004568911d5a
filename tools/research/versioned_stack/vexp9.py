"""Experiment 9: system-user writes WITHOUT rgwx-uid (REP.2 build facts): who owns them (bucket
index entry, bilog entry, ListObjectVersions), can the bucket owner read them, do the index
entries' versioned_epoch match the epochs given, what deletes of missing / present versions log,
HEAD of a delete marker, and an idempotent re-PUT of an existing version.

Usage: CEPH_BIN=... RGW_ENDPOINT=... python vexp9.py BUCKET
"tester" (TESTKEY) owns the bucket (O); "sys" (SYSKEY, --system) is the replicator (S). After each
step it prints the bilog entries that step added (op, instance, ver, owner, owner_display_name)
and, where asked, the key's bucket index instance/olh entries (owner, versioned_epoch).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

from vexp import admin, req

ACL = {"x-amz-acl": "bucket-owner-full-control"}
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class Bilog:
    """Prints the bilog entries added since the last call. The bucket's whole log is re-read and
    diffed by (op_id, op_tag, op, object, instance): `bilog list` walks the shards one after
    another, so new entries are not appended at its end, and Tentacle's op_id has no `shard#`
    prefix, so op_ids of different shards collide."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.seen = {self.ident(e) for e in self.entries()}

    @staticmethod
    def ident(e: dict[str, object]) -> str:
        return json.dumps([e.get(f) for f in ("op_id", "op_tag", "op", "object", "instance")])

    def entries(self) -> list[dict[str, object]]:
        out = admin("bilog", "list", "--bucket", self.bucket, "--max-entries", "100000")
        return list(json.loads(out or "[]"))

    def new(self, label: str) -> list[dict[str, object]]:
        added = [e for e in self.entries() if self.ident(e) not in self.seen]
        self.seen |= {self.ident(e) for e in added}
        print(f"    BILOG after {label}: {len(added)} new")
        for e in added:
            print(
                f"      {e['op_id']!s:22s} {e['op']!s:14s} {e['object']} inst={e['instance']!r:22} ver={e['ver']}"
                f" state={e['state']} owner={e.get('owner')!r}"
                f" owner_display_name={e.get('owner_display_name')!r}"
            )
        return added


def index(bucket: str, key: str) -> None:
    """Bucket index instance and olh entries of KEY, with owner and versioned_epoch."""
    bi = json.loads(admin("bi", "list", "--bucket", bucket, "--object", key) or "[]")
    for e in bi:
        ent = e["entry"]
        if e["type"] == "instance":
            m = ent["meta"]
            print(
                f"    BI  instance {ent['instance'] or 'null':22s} versioned_epoch={ent['versioned_epoch']}"
                f" flags={ent['flags']} exists={ent['exists']} owner={m.get('owner')!r}"
                f" owner_display_name={m.get('owner_display_name')!r}"
            )
        elif e["type"] == "olh":
            print(
                f"    BI  olh -> {ent['key']['instance']} epoch={ent['epoch']}"
                f" dm={ent['delete_marker']} exists={ent['exists']}"
            )


def lov(bucket: str, key: str) -> None:
    """ListObjectVersions by the bucket owner: order, kind and Owner of each entry."""
    resp = req("tester", "GET", f"/{bucket}", {"versions": "", "prefix": key})
    for el in ET.fromstring(resp.data):
        tag = el.tag.replace(NS, "")
        if tag in ("Version", "DeleteMarker"):
            owner = el.find(f"{NS}Owner")
            oid = owner.findtext(f"{NS}ID") if owner is not None else None
            oname = owner.findtext(f"{NS}DisplayName") if owner is not None else None
            print(
                f"    LOV {tag:12s} {el.findtext(f'{NS}VersionId')!s:22s}"
                f" latest={el.findtext(f'{NS}IsLatest')} owner={oid!r}/{oname!r}"
            )


def head(user: str, bucket: str, key: str, vid: str, method: str = "HEAD") -> None:
    resp = req(user, method, f"/{bucket}/{key}", {"versionId": vid})
    hs = {
        h: v
        for h, v in resp.headers.items()
        if h.lower().startswith(("x-amz", "last-mod", "content-len", "etag"))
    }
    print(f"      headers: {json.dumps(hs)}")


def sysput(key_path: str, vid: str, epoch: int, body: bytes, acl: bool = True) -> None:
    req(
        "sys",
        "PUT",
        key_path,
        {"rgwx-version-id": vid, "rgwx-versioned-epoch": str(epoch)},
        body,
        headers=ACL if acl else None,
    )


def main() -> None:
    b = sys.argv[1]
    admin(
        "user",
        "create",
        "--uid",
        "sys",
        "--display-name",
        "sys",
        "--system",
        "--access-key",
        "SYSKEY",
        "--secret",
        "SYSSECRET",
    )
    req("tester", "PUT", f"/{b}")
    req(
        "tester",
        "PUT",
        f"/{b}",
        {"versioning": ""},
        b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
    )
    log = Bilog(b)

    print("== Q1a/b/Q3: sys PUT k1 (no rgwx-uid, x-amz-acl bucket-owner-full-control) epoch 10 (top)")
    sysput(f"/{b}/k1", "s-top-10", 10, b"TOP")
    log.new("sys PUT top")
    print("== sys PUT k1 epoch 5 (below top)")
    sysput(f"/{b}/k1", "s-low-5", 5, b"LOW")
    log.new("sys PUT below")
    print("== sys PUT k1 epoch 3 (below top) WITHOUT x-amz-acl")
    sysput(f"/{b}/k1", "s-low-3-noacl", 3, b"LOW3", acl=False)
    log.new("sys PUT below no acl")
    print("== tester (O) reads")
    for v in ("s-top-10", "s-low-5", "s-low-3-noacl"):
        head("tester", b, "k1", v)
        req("tester", "GET", f"/{b}/k1", {"versionId": v})
    req("tester", "GET", f"/{b}/k1")
    req("tester", "GET", f"/{b}/k1", {"versionId": "s-top-10", "acl": ""})
    print("      acl body:", req("tester", "GET", f"/{b}/k1", {"versionId": "s-low-5", "acl": ""}).data[:600])
    index(b, "k1")
    lov(b, "k1")

    print("== Q3: tester normal PUT k1 (epoch OLH+1) -> versioned_epoch vs link_olh ver.epoch")
    req("tester", "PUT", f"/{b}/k1", None, b"O1")
    log.new("tester PUT")
    index(b, "k1")

    print("== Q1c: sys multipart k2: initiate (x-amz-acl), part, complete with rgwx params epoch 7")
    r = req("sys", "POST", f"/{b}/k2", {"uploads": ""}, headers=ACL)
    upload = ET.fromstring(r.data).findtext(f"{NS}UploadId") or ""
    p = req("sys", "PUT", f"/{b}/k2", {"partNumber": "1", "uploadId": upload}, b"P" * 1000)
    etag = p.headers["ETag"]
    done = (
        f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>"
        "</CompleteMultipartUpload>"
    ).encode()
    req(
        "sys",
        "POST",
        f"/{b}/k2",
        {"uploadId": upload, "rgwx-version-id": "s-mp-7", "rgwx-versioned-epoch": "7"},
        done,
    )
    log.new("sys multipart complete")
    head("tester", b, "k2", "s-mp-7")
    req("tester", "GET", f"/{b}/k2", {"versionId": "s-mp-7"})
    index(b, "k2")
    lov(b, "k2")
    print("== Q1c': sys multipart k2 initiate WITHOUT x-amz-acl, complete epoch 8")
    r = req("sys", "POST", f"/{b}/k2", {"uploads": ""})
    upload = ET.fromstring(r.data).findtext(f"{NS}UploadId") or ""
    p = req("sys", "PUT", f"/{b}/k2", {"partNumber": "1", "uploadId": upload}, b"Q" * 1000)
    done = (
        f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{p.headers['ETag']}</ETag>"
        "</Part></CompleteMultipartUpload>"
    ).encode()
    req(
        "sys",
        "POST",
        f"/{b}/k2",
        {"uploadId": upload, "rgwx-version-id": "s-mp-8-noacl", "rgwx-versioned-epoch": "8"},
        done,
    )
    log.new("sys multipart complete no acl")
    head("tester", b, "k2", "s-mp-8-noacl")
    index(b, "k2")

    print("== Q2: sys delete marker k1 top (epoch 20), no rgwx-uid")
    req("sys", "DELETE", f"/{b}/k1", {"rgwx-version-id": "s-dm-20", "rgwx-versioned-epoch": "20"})
    log.new("sys DM top")
    print("== Q2: sys delete marker k3 below top (tester PUT first, then DM at epoch 1)")
    req("tester", "PUT", f"/{b}/k3", None, b"K3")
    req("tester", "PUT", f"/{b}/k3", None, b"K3b")
    log.new("tester PUT k3 x2")
    req("sys", "DELETE", f"/{b}/k3", {"rgwx-version-id": "s-dm-low-1", "rgwx-versioned-epoch": "1"})
    log.new("sys DM below")
    index(b, "k1")
    lov(b, "k1")
    index(b, "k3")
    lov(b, "k3")

    print("== Q5: HEAD / GET ?versionId of a delete marker (by O and by S)")
    for u in ("tester", "sys"):
        head(u, b, "k1", "s-dm-20")
        head(u, b, "k1", "s-dm-20", method="GET")
        head(u, b, "k3", "s-dm-low-1")
    print("   plain HEAD k1 (current is a DM):")
    r = req("tester", "HEAD", f"/{b}/k1")
    print("      headers:", json.dumps({h: v for h, v in r.headers.items() if h.lower().startswith("x-amz")}))

    print("== Q4: DELETE ?versionId=<missing> by O and by S")
    req("tester", "DELETE", f"/{b}/k1", {"versionId": "no-such-version"})
    log.new("O DELETE missing vid (existing key)")
    req("sys", "DELETE", f"/{b}/k1", {"versionId": "no-such-version-2"})
    log.new("S DELETE missing vid (existing key)")
    req("tester", "DELETE", f"/{b}/nokey", {"versionId": "no-such-version-3"})
    log.new("O DELETE missing vid (missing key)")
    req("sys", "DELETE", f"/{b}/nokey", {"versionId": "no-such-version-4"})
    log.new("S DELETE missing vid (missing key)")
    index(b, "k1")
    index(b, "nokey")
    print(
        "== Q4: DELETE ?versionId=<existing>: O deletes below-top s-low-5, S deletes below-top s-low-3-noacl"
    )
    req("tester", "DELETE", f"/{b}/k1", {"versionId": "s-low-5"})
    log.new("O DELETE existing below-top version")
    req("sys", "DELETE", f"/{b}/k1", {"versionId": "s-low-3-noacl"})
    log.new("S DELETE existing below-top version")
    print("== Q4: S deletes the top delete marker s-dm-20, O deletes the (now top) tester version")
    req("sys", "DELETE", f"/{b}/k1", {"versionId": "s-dm-20"})
    log.new("S DELETE top DM")
    index(b, "k1")
    lov(b, "k1")
    top = [
        e
        for e in json.loads(admin("bi", "list", "--bucket", b, "--object", "k1") or "[]")
        if e["type"] == "olh"
    ][0]["entry"]["key"]["instance"]
    req("tester", "DELETE", f"/{b}/k1", {"versionId": top})
    log.new("O DELETE top version")
    print("== Q4: S deletes the below-top delete marker s-dm-low-1 on k3")
    req("sys", "DELETE", f"/{b}/k3", {"versionId": "s-dm-low-1"})
    log.new("S DELETE below-top DM")
    print("== Q4: S deletes missing vid again, now repeated delete of s-low-5 (already gone)")
    req("sys", "DELETE", f"/{b}/k1", {"versionId": "s-low-5"})
    log.new("S DELETE already-deleted version")
    index(b, "k1")
    lov(b, "k1")

    print("== Q6: re-PUT an existing version with same id, epoch, body (top s-top-10 on k1 and a below-top)")
    index(b, "k1")
    sysput(f"/{b}/k1", "s-top-10", 10, b"TOP")
    log.new("S re-PUT s-top-10 same epoch/body")
    index(b, "k1")
    lov(b, "k1")
    print("   after it: plain HEAD k1, ListObjectsV2 k1")
    req("tester", "HEAD", f"/{b}/k1")
    print("     ", req("tester", "GET", f"/{b}", {"list-type": "2", "prefix": "k1"}).data[-400:])
    print("== Q6': k4: sys PUT s4-a epoch 5, s4-b epoch 9 (top); re-PUT s4-a epoch 5 same body (below top)")
    sysput(f"/{b}/k4", "s4-a", 5, b"A")
    sysput(f"/{b}/k4", "s4-b", 9, b"B")
    log.new("k4 setup")
    index(b, "k4")
    sysput(f"/{b}/k4", "s4-a", 5, b"A")
    log.new("S re-PUT below-top same")
    index(b, "k4")
    sysput(f"/{b}/k4", "s4-b", 9, b"B")
    log.new("S re-PUT top same")
    index(b, "k4")
    lov(b, "k4")
    print("== Q6'': re-create the same delete marker: sys DM s4-dm epoch 12 twice")
    req("sys", "DELETE", f"/{b}/k4", {"rgwx-version-id": "s4-dm", "rgwx-versioned-epoch": "12"})
    log.new("S DM s4-dm")
    req("sys", "DELETE", f"/{b}/k4", {"rgwx-version-id": "s4-dm", "rgwx-versioned-epoch": "12"})
    log.new("S DM s4-dm again")
    index(b, "k4")
    lov(b, "k4")
    print("== Q6 repair: k1's current s-top-10 lost its current flag above; S re-PUTs it at the OLH epoch")
    olh_epoch = [
        e
        for e in json.loads(admin("bi", "list", "--bucket", b, "--object", "k1") or "[]")
        if e["type"] == "olh"
    ][0]["entry"]["epoch"]
    sysput(f"/{b}/k1", "s-top-10", olh_epoch, b"TOP")
    log.new(f"S re-PUT s-top-10 at OLH epoch {olh_epoch}")
    index(b, "k1")
    lov(b, "k1")
    print("== Q2': O's plain DELETE on k3 (a client delete marker): bilog owner")
    req("tester", "DELETE", f"/{b}/k3")
    log.new("O plain DELETE")
    index(b, "k3")
    print("== full bilog entry sample (last 3)")
    for e in log.entries()[-3:]:
        print("   ", json.dumps(e))


if __name__ == "__main__":
    main()
