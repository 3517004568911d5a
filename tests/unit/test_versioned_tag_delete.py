"""DeleteObjectTagging without a VersionId on a versioned bucket gives no record (README, "Change-log
records"): radosgw 16.2.15, 18.2.7 and 20.2.4 apply it to the key's OLH object, not to the current
version (which keeps its tags), log a ``write`` of instance "" and add a null-instance index entry
(size 0, etag "", no FLAG_VER) of a null version the bucket does not have. The same log entry
stands for a real tag change of a null version (a versioning-suspended bucket's, an object's
written before versioning was enabled, current or not), which is a write; only the bucket index
entry tells them apart (``rgw_module.bucket_index``, module docstring).

Two tiers. ``CAPTURED``: one workload on each release's lab (below), its bucket index log (the
fields the follower reads) and the index entries the follower's read asks for, read through
``BucketIndexReader`` and ``ShardMapper`` (C and Python mapping). Then the follower itself on the
in-memory radosgw (``fake_rgw``), with a bucket index that keys and flags its entries as cls_rgw
does (``ClsIndex``). The same on the labs: tests/integration/test_core_review3_lab.py.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest

from changelog.config import SourceConfig
from changelog.pipeline.backends.sqlite import SqliteStore
from changelog.pipeline.index import ChangeIndex
from changelog.pipeline.mutation import Mutation, Op
from rgw_module import mapping
from rgw_module.bucket_index import (
    FLAG_VER,
    FLAG_VER_MARKER,
    NO_WRITE,
    BucketIndexReader,
    decode_dir_entry,
    instance_key,
    plain_key,
)
from rgw_module.follower import Follower
from rgw_module.mapping import BilogEntry, BucketShard, ShardMapper, is_versioned_op, position_of
from tests.unit.captured_index import captured_reader
from tests.unit.fake_rgw import RELEASES, FakeClock, FakeRadosgw, Release

# The workload captured on each lab (radosgw 16.2.15, 18.2.7, 20.2.4; 2026-12-07), one bucket of
# 11 index shards, in this order: kb, kd and ke are written while the bucket is unversioned.
WORKLOAD = (
    "PUT kb", "PutObjectTagging kb", "DeleteObjectTagging kb", "PUT kd", "PUT ke", "PutObjectTagging ke",
    "versioning Enabled", "DeleteObjectTagging kd", "PUT ke (v)", "DeleteObjectTagging ke",
    "PUT ka (v)", "PutObjectTagging ka", "DeleteObjectTagging ka", "DeleteObjectTagging ka",
    "PUT kc (v)", "versioning Suspended", "PUT kc (null)", "PutObjectTagging kc", "DeleteObjectTagging kc",
    "PutObjectTagging kc", "DeleteObjectTagging kc ?versionId=null",
)  # fmt: skip
# What S3 said afterwards, the same on the three: ka has one version (v), which kept its tag "t",
# and no null version (HEAD ?versionId=null: 404); ke's null version (non-current) lost its tags,
# its current one (v) had none; kc's null version lost its tags; kb and kd are null versions.
# Each key's records, in order ("v": the key's version id in ``version_ids``, None: the null one).
EXPECTED: dict[str, list[str | None]] = {
    "ka": ["v", "v"],  # PUT, PutObjectTagging (of the current version); no DeleteObjectTagging
    "kb": [None, None, None],
    "kc": ["v", None, None, None, None, None],  # PUT v, PUT null, then its four tag changes
    "kd": [None, None],  # PUT, DeleteObjectTagging (the plain entry of an object older than versioning)
    "ke": [None, None, "v", None],  # ..., DeleteObjectTagging: the non-current null version's tags
}
# Pages: (op_id, op, object, instance, timestamp, ver pool, ver epoch, versioned), every entry
# "complete" (``bilog_flags`` is 1 where ``versioned``). Omap: base64 key -> base64 value.
# fmt: off
CAPTURED: dict[str, dict[str, Any]] = {
    "pacific": {
        "version": "16.2.15", "bucket": "vtd-659f66", "bucket_id": "358ba39f-2758-4a31-963c-7a08e3a233b6.4122.1",
        "version_ids": {"ka": "WJCC9cKOaNeD-IY0E0ktOs3R0G4aMQ6", "kc": "5pswCqyOTcl4RqBTRx53ZN9DVANyg4o", "ke": "MMAxgpE.Hpe1VEXZPJdyi8WuRslnJEd"},
        "pages": {
            1: [
                ["1#00000000001.3.6", "write", "kd", "", "2026-12-07T12:24:16.993627391Z", 6, 1, False],
                ["1#00000000002.5.6", "write", "kd", "", "2026-12-07T12:24:17.045302643Z", 6, 2, False],
            ],
            3: [
                ["3#00000000001.2.6", "write", "kc", "5pswCqyOTcl4RqBTRx53ZN9DVANyg4o", "2026-12-07T12:24:17.095303655Z", 6, 1, True],
                ["3#00000000002.3.11", "link_olh", "kc", "5pswCqyOTcl4RqBTRx53ZN9DVANyg4o", "2026-12-07T12:24:17.095303655Z", -1, 2, True],
                ["3#00000000003.6.7", "write", "kc", "", "2026-12-07T12:24:17.109565255Z", 6, 9, True],
                ["3#00000000004.7.17", "link_olh", "kc", "", "2026-12-07T12:24:17.109565255Z", -1, 3, True],
                ["3#00000000005.10.7", "write", "kc", "", "2026-12-07T12:24:17.121168116Z", 6, 12, False],
                ["3#00000000006.12.7", "write", "kc", "", "2026-12-07T12:24:17.125523579Z", 6, 13, False],
                ["3#00000000007.14.7", "write", "kc", "", "2026-12-07T12:24:17.128993239Z", 6, 14, False],
                ["3#00000000008.16.7", "write", "kc", "", "2026-12-07T12:24:17.132515087Z", 6, 15, False],
            ],
            5: [
                ["5#00000000001.6.6", "write", "kb", "", "2026-12-07T12:24:16.872764070Z", 6, 1, False],
                ["5#00000000002.8.6", "write", "kb", "", "2026-12-07T12:24:16.979206636Z", 6, 2, False],
                ["5#00000000003.10.6", "write", "kb", "", "2026-12-07T12:24:16.989355853Z", 6, 3, False],
            ],
            7: [
                ["7#00000000001.12.6", "write", "ke", "", "2026-12-07T12:24:17.011278543Z", 6, 1, False],
                ["7#00000000002.14.6", "write", "ke", "", "2026-12-07T12:24:17.027136779Z", 6, 2, False],
                ["7#00000000003.16.6", "write", "ke", "MMAxgpE.Hpe1VEXZPJdyi8WuRslnJEd", "2026-12-07T12:24:17.053466199Z", 6, 1, True],
                ["7#00000000004.17.13", "link_olh", "ke", "MMAxgpE.Hpe1VEXZPJdyi8WuRslnJEd", "2026-12-07T12:24:17.053466199Z", -1, 2, True],
                ["7#00000000005.20.7", "write", "ke", "", "2026-12-07T12:24:17.062361117Z", 6, 5, False],
                ["7#00000000006.22.6", "write", "ka", "WJCC9cKOaNeD-IY0E0ktOs3R0G4aMQ6", "2026-12-07T12:24:17.073591576Z", 6, 4, True],
                ["7#00000000007.23.11", "link_olh", "ka", "WJCC9cKOaNeD-IY0E0ktOs3R0G4aMQ6", "2026-12-07T12:24:17.073591576Z", -1, 2, True],
                ["7#00000000008.26.6", "write", "ka", "WJCC9cKOaNeD-IY0E0ktOs3R0G4aMQ6", "2026-12-07T12:24:17.084076050Z", 6, 7, False],
                ["7#00000000009.28.7", "write", "ka", "", "2026-12-07T12:24:17.088306388Z", 6, 8, False],
                ["7#00000000010.30.7", "write", "ka", "", "2026-12-07T12:24:17.092317170Z", 6, 9, False],
            ],
        },
        "omap": {
            1: {
                "a2Q=": "CAOKAAAAAgAAAGtkAgAAAAAAAAABBwMyAAAAAQMAAAAAAAAAcaUWa3NDswIAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYCAiAAAABfd0U2XzNBd295S2JZY1hlWmVJVVVaNVB1Wkh2QV9XegAAAAAAAAAAAAAAAAAA",
            },
            3: {
                "a2M=": "CANyAAAAAgAAAGtjAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "gDEwMDBfa2MAaQ==": "CAOKAAAAAgAAAGtjDwAAAAAAAAABBwMyAAAAAQgAAAAAAAAAcaUWaw8F5gcAAAAAAAAAAAAAAAAAAAAACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYPCCAAAABfb3dTdUxmUzZtRl9OcGFWWGU0WXIyNm9LN01vdEZHLQAAAAABAAMAAAAAAAAA",
                "gDEwMDBfa2MAaTVwc3dDcXlPVGNsNFJxQlRSeDUzWk45RFZBTnlnNG8=": "CAPyAAAAAgAAAGtjAQAAAAAAAAABBwNeAAAAAQMAAAAAAAAAcaUWa+c3rgUgAAAAOWRmNjJlNjkzOTg4ZWI0ZTFlMTQ0NGVjZTA1Nzg1NzkGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABgEBPQAAADM1OGJhMzlmLTI3NTgtNGEzMS05NjNjLTdhMDhlM2EyMzNiNi40MTIwLjM1NzU4NzU2Mjg2Nzk2NTIxNTIfAAAANXBzd0NxeU9UY2w0UnFCVFJ4NTNaTjlEVkFOeWc0bwEAAgAAAAAAAAA=",
            },
            5: {
                "a2I=": "CAOKAAAAAgAAAGtiAwAAAAAAAAABBwMyAAAAAQMAAAAAAAAAcKUWa01f+DoAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYDAyAAAABfcHZFc0pkN1VURWt6LWc2MEhBZ0VXajlTeFpGb1lUbAAAAAAAAAAAAAAAAAAA",
            },
            7: {
                "a2E=": "CANyAAAAAgAAAGthAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "a2U=": "CANyAAAAAgAAAGtlAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "gDEwMDBfa2EAaQ==": "CAOKAAAAAgAAAGthCQAAAAAAAAABBwMyAAAAAQAAAAAAAAAAcaUWa/KlgAUAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYJCiAAAABfckx0S3dPREl5R2UwbEtVS3l0a1BMRlJNVFdFaGVERAAAAAAAAAAAAAAAAAAA",
                "gDEwMDBfa2EAaVdKQ0M5Y0tPYU5lRC1JWTBFMGt0T3MzUjBHNGFNUTY=": "CAPVAAAAAgAAAGthBwAAAAAAAAABBwNeAAAAAQMAAAAAAAAAcaUWaxLmAgUgAAAANDdiY2U1Yzc0ZjU4OWY0ODY3ZGJkNTdlOWNhOWY4MDgGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABgcIIAAAAF9ER1hXMHl6N3ZmT3BTeTRQTXk5LWRNRVdFSnNGT0M5HwAAAFdKQ0M5Y0tPYU5lRC1JWTBFMGt0T3MzUjBHNGFNUTYBAAIAAAAAAAAA",
                "gDEwMDBfa2UAaQ==": "CAOKAAAAAgAAAGtlBQAAAAAAAAABBwMyAAAAAQMAAAAAAAAAcaUWax2OtwMAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYFBSAAAABfTG03cEdRSm1lRUgyMHRkLVc0NFZ0djlwZHNiSFp2NAAAAAABAAEAAAAAAAAA",
                "gDEwMDBfa2UAaU1NQXhncEUuSHBlMVZFWFpQSmR5aThXdVJzbG5KRWQ=": "CAPzAAAAAgAAAGtlAQAAAAAAAAABBwNeAAAAAQQAAAAAAAAAcaUWa1fULwMgAAAANWRmNDM3NzhmYTg5ZjlkNGZkZWU5MWNiM2Y3ZjUxZTkGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABgEDPgAAADM1OGJhMzlmLTI3NTgtNGEzMS05NjNjLTdhMDhlM2EyMzNiNi40MTIwLjE2NDcyNzAxNzk3NzYzNjc0NDE5HwAAAE1NQXhncEUuSHBlMVZFWFpQSmR5aThXdVJzbG5KRWQDAAIAAAAAAAAA",
            },
        },
    },
    "reef": {
        "version": "18.2.7", "bucket": "vtd-f99b72", "bucket_id": "2e6fbb21-4a9d-4ef7-8c08-33709737b1ee.4128.1",
        "version_ids": {"ka": "lVAksGq8NVU6jMXgbB6NROJZnWjNNNZ", "kc": "5PzKY6iucCPxuBW2iWag2o6pyG.yfzU", "ke": "5fO5CZxO4EAsza-0rTYEU3y9NpBaixQ"},
        "pages": {
            1: [
                ["1#00000000001.10.6", "write", "kd", "", "2026-12-07T12:22:16.957731697Z", 6, 1, False],
                ["1#00000000002.12.6", "write", "kd", "", "0.000000", 6, 2, False],
            ],
            3: [
                ["3#00000000001.24.6", "write", "kc", "5PzKY6iucCPxuBW2iWag2o6pyG.yfzU", "2026-12-07T12:22:17.071104826Z", 6, 3, True],
                ["3#00000000002.25.11", "link_olh", "kc", "5PzKY6iucCPxuBW2iWag2o6pyG.yfzU", "2026-12-07T12:22:17.071104826Z", -1, 2, True],
                ["3#00000000003.28.7", "write", "kc", "", "2026-12-07T12:22:17.103190054Z", 6, 9, True],
                ["3#00000000004.29.17", "link_olh", "kc", "", "2026-12-07T12:22:17.103190054Z", -1, 3, True],
                ["3#00000000005.32.7", "write", "kc", "", "2026-12-07T12:22:17.103190055Z", 6, 12, False],
                ["3#00000000006.34.7", "write", "kc", "", "0.000000", 6, 13, False],
                ["3#00000000007.36.7", "write", "kc", "", "0.000000", 6, 14, False],
                ["3#00000000008.38.7", "write", "kc", "", "0.000000", 6, 15, False],
            ],
            5: [
                ["5#00000000001.4.6", "write", "kb", "", "2026-12-07T12:22:16.927713733Z", 6, 1, False],
                ["5#00000000002.6.6", "write", "kb", "", "2026-12-07T12:22:16.927713734Z", 6, 2, False],
                ["5#00000000003.8.6", "write", "kb", "", "0.000000", 6, 3, False],
            ],
            7: [
                ["7#00000000001.4.6", "write", "ke", "", "2026-12-07T12:22:16.972790759Z", 6, 1, False],
                ["7#00000000002.6.6", "write", "ke", "", "2026-12-07T12:22:16.972790760Z", 6, 2, False],
                ["7#00000000003.8.6", "write", "ke", "5fO5CZxO4EAsza-0rTYEU3y9NpBaixQ", "2026-12-07T12:22:17.007794841Z", 6, 1, True],
                ["7#00000000004.9.13", "link_olh", "ke", "5fO5CZxO4EAsza-0rTYEU3y9NpBaixQ", "2026-12-07T12:22:17.007794841Z", -1, 2, True],
                ["7#00000000005.12.7", "write", "ke", "", "0.000000", 6, 5, False],
                ["7#00000000006.14.6", "write", "ka", "lVAksGq8NVU6jMXgbB6NROJZnWjNNNZ", "2026-12-07T12:22:17.032267950Z", 6, 4, True],
                ["7#00000000007.15.11", "link_olh", "ka", "lVAksGq8NVU6jMXgbB6NROJZnWjNNNZ", "2026-12-07T12:22:17.032267950Z", -1, 2, True],
                ["7#00000000008.18.6", "write", "ka", "lVAksGq8NVU6jMXgbB6NROJZnWjNNNZ", "2026-12-07T12:22:17.032267951Z", 6, 5, False],
                ["7#00000000009.20.7", "write", "ka", "", "0.000000", 6, 3, False],
                ["7#00000000010.22.7", "write", "ka", "", "0.000000", 6, 4, False],
            ],
        },
        "omap": {
            1: {
                "a2Q=": "CAOKAAAAAgAAAGtkAgAAAAAAAAABBwMyAAAAAQMAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYCAiAAAABfRmtua2Fjd29Ub3JSSHkzRG1mN3U5V0JmbXRIanVCTwAAAAAAAAAAAAAAAAAA",
            },
            3: {
                "a2M=": "CANyAAAAAgAAAGtjAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "gDEwMDBfa2MAaQ==": "CAOKAAAAAgAAAGtjDwAAAAAAAAABBwMyAAAAAQgAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYPCCAAAABfVE5mUXlmQlZ6eHVva0tvNU1ZQlBiVmpfUUp1VzRXbAAAAAABAAMAAAAAAAAA",
                "gDEwMDBfa2MAaTVQektZNml1Y0NQeHVCVzJpV2FnMm82cHlHLnlmelU=": "CAPzAAAAAgAAAGtjAwAAAAAAAAABBwNeAAAAAQMAAAAAAAAA+aQWazr5PAQgAAAAOWRmNjJlNjkzOTg4ZWI0ZTFlMTQ0NGVjZTA1Nzg1NzkGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABgMBPgAAADJlNmZiYjIxLTRhOWQtNGVmNy04YzA4LTMzNzA5NzM3YjFlZS40MTI2LjE2MDI3MTA5MDI4MDg5MjQ0ODg4HwAAADVQektZNml1Y0NQeHVCVzJpV2FnMm82cHlHLnlmelUBAAIAAAAAAAAA",
            },
            5: {
                "a2I=": "CAOKAAAAAgAAAGtiAwAAAAAAAAABBwMyAAAAAQMAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYDAyAAAABfQXV4LVhmWl8wWm9HaDZFdk1EUllBUGdHcXJORVRueAAAAAAAAAAAAAAAAAAA",
            },
            7: {
                "a2E=": "CANyAAAAAgAAAGthAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "a2U=": "CANyAAAAAgAAAGtlAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "gDEwMDBfa2EAaQ==": "CAOKAAAAAgAAAGthBAAAAAAAAAABBwMyAAAAAQAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYECiAAAABfQ2xleGNud0kxbEVNRmxhRXl5VE5MenNQcEExNTRfcwAAAAAAAAAAAAAAAAAA",
                "gDEwMDBfa2EAaWxWQWtzR3E4TlZVNmpNWGdiQjZOUk9KWm5Xak5OTlo=": "CAPVAAAAAgAAAGthBQAAAAAAAAABBwNeAAAAAQMAAAAAAAAA+aQWa69e7AEgAAAANDdiY2U1Yzc0ZjU4OWY0ODY3ZGJkNTdlOWNhOWY4MDgGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABgUIIAAAAF81SFg0TWt3QnR2SUMwSVJ1Mmd0dDlkT0tyWEo3Q0ZZHwAAAGxWQWtzR3E4TlZVNmpNWGdiQjZOUk9KWm5Xak5OTloBAAIAAAAAAAAA",
                "gDEwMDBfa2UAaQ==": "CAOKAAAAAgAAAGtlBQAAAAAAAAABBwMyAAAAAQMAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAYFBSAAAABfZmtiWklKa2J6aDdCX3VMd0lZTVlLenVZWGdYTERmZwAAAAABAAEAAAAAAAAA",
                "gDEwMDBfa2UAaTVmTzVDWnhPNEVBc3phLTByVFlFVTN5OU5wQmFpeFE=": "CAPzAAAAAgAAAGtlAQAAAAAAAAABBwNeAAAAAQQAAAAAAAAA+aQWa5nwdgAgAAAANWRmNDM3NzhmYTg5ZjlkNGZkZWU5MWNiM2Y3ZjUxZTkGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABgEDPgAAADJlNmZiYjIxLTRhOWQtNGVmNy04YzA4LTMzNzA5NzM3YjFlZS40MTI2LjE0ODI3NDc1MjQ3NzA5MDI1NTg5HwAAADVmTzVDWnhPNEVBc3phLTByVFlFVTN5OU5wQmFpeFEDAAIAAAAAAAAA",
            },
        },
    },
    "tentacle": {
        "version": "20.2.4", "bucket": "vtd-977328", "bucket_id": "d6a671ea-be52-4157-80a6-c4d065c3f03c.4126.10",
        "version_ids": {"ka": "5rDxtaP7rqjWO-2VfNo5g73kw6xiL3G", "kc": "DfqIA4P.MqGI3S16mguEP4tYXG9iSmg", "ke": "C0hLd6YTC3xziE8vcdPfKzcbt0mXqQe"},
        "pages": {
            1: [
                ["1#00000000001.27.6", "write", "kd", "", "2026-12-07T12:19:32.233464679Z", 5, 14, False],
                ["1#00000000002.29.6", "write", "kd", "", "2026-12-07T12:19:32.233464680Z", 5, 15, False],
            ],
            3: [
                ["3#00000000001.38.6", "write", "kc", "DfqIA4P.MqGI3S16mguEP4tYXG9iSmg", "2026-12-07T12:19:32.296576761Z", 5, 20, True],
                ["3#00000000002.39.11", "link_olh", "kc", "DfqIA4P.MqGI3S16mguEP4tYXG9iSmg", "2026-12-07T12:19:32.296576761Z", -1, 2, True],
                ["3#00000000003.42.7", "write", "kc", "", "2026-12-07T12:19:32.311545869Z", 5, 11, True],
                ["3#00000000004.43.17", "link_olh", "kc", "", "2026-12-07T12:19:32.311545869Z", -1, 3, True],
                ["3#00000000005.46.7", "write", "kc", "", "2026-12-07T12:19:32.311545870Z", 5, 14, False],
                ["3#00000000006.48.7", "write", "kc", "", "2026-12-07T12:19:32.311545871Z", 5, 15, False],
                ["3#00000000007.50.7", "write", "kc", "", "2026-12-07T12:19:32.311545872Z", 5, 16, False],
                ["3#00000000008.52.7", "write", "kc", "", "2026-12-07T12:19:32.311545873Z", 5, 17, False],
            ],
            5: [
                ["5#00000000001.32.6", "write", "kb", "", "2026-12-07T12:19:32.213240900Z", 5, 8, False],
                ["5#00000000002.34.6", "write", "kb", "", "2026-12-07T12:19:32.213240901Z", 5, 9, False],
                ["5#00000000003.36.6", "write", "kb", "", "2026-12-07T12:19:32.213240902Z", 5, 10, False],
            ],
            7: [
                ["7#00000000001.7.6", "write", "ke", "", "2026-12-07T12:19:32.240496122Z", 5, 11, False],
                ["7#00000000002.9.6", "write", "ke", "", "2026-12-07T12:19:32.240496123Z", 5, 12, False],
                ["7#00000000003.11.6", "write", "ke", "C0hLd6YTC3xziE8vcdPfKzcbt0mXqQe", "2026-12-07T12:19:32.262320917Z", 5, 13, True],
                ["7#00000000004.12.13", "link_olh", "ke", "C0hLd6YTC3xziE8vcdPfKzcbt0mXqQe", "2026-12-07T12:19:32.262320917Z", -1, 2, True],
                ["7#00000000005.15.7", "write", "ke", "", "2026-12-07T12:19:32.262320918Z", 5, 16, False],
                ["7#00000000006.17.6", "write", "ka", "5rDxtaP7rqjWO-2VfNo5g73kw6xiL3G", "2026-12-07T12:19:32.273433181Z", 5, 17, True],
                ["7#00000000007.18.11", "link_olh", "ka", "5rDxtaP7rqjWO-2VfNo5g73kw6xiL3G", "2026-12-07T12:19:32.273433181Z", -1, 2, True],
                ["7#00000000008.21.6", "write", "ka", "5rDxtaP7rqjWO-2VfNo5g73kw6xiL3G", "2026-12-07T12:19:32.273433182Z", 5, 18, False],
                ["7#00000000009.23.7", "write", "ka", "", "2026-12-07T12:19:32.273433183Z", 5, 19, False],
                ["7#00000000010.25.7", "write", "ka", "", "2026-12-07T12:19:32.273433183Z", 5, 20, False],
            ],
        },
        "omap": {
            1: {
                "a2Q=": "CAO2AAAAAgAAAGtkDwAAAAAAAAABBwNeAAAAAQMAAAAAAAAAVKQWa2hj6g0gAAAANzc5NjNiN2E5MzEzNzdhZDRhYjVhZDZhOWNkNzE4YWEGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABQ8CIAAAAF82MnVJNXFYOUFxMmlfTEF4bldWYkpYTVhBbVdLaFRaAAAAAAAAAAAAAAAAAAA=",
            },
            3: {
                "a2M=": "CANyAAAAAgAAAGtjAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "gDEwMDBfa2MAaQ==": "CAO2AAAAAgAAAGtjEQAAAAAAAAABBwNeAAAAAQgAAAAAAAAAVKQWaxHQkRIgAAAAZjNhNzYwYjM3Njk4ZmUzOTRjMzQyMTkxODBhODAxYjgGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABREIIAAAAF9xRkN2cXRQenpXT18tdVlUNzItdjNSaDJUa3NWQlBoAAAAAAEAAwAAAAAAAAA=",
                "gDEwMDBfa2MAaURmcUlBNFAuTXFHSTNTMTZtZ3VFUDR0WVhHOWlTbWc=": "CAPzAAAAAgAAAGtjFAAAAAAAAAABBwNeAAAAAQMAAAAAAAAAVKQWa/lmrREgAAAAOWRmNjJlNjkzOTg4ZWI0ZTFlMTQ0NGVjZTA1Nzg1NzkGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABRQBPgAAAGQ2YTY3MWVhLWJlNTItNDE1Ny04MGE2LWM0ZDA2NWMzZjAzYy40MTI2LjEzNDk4MDYyMTgyMzM0ODE5ODk3HwAAAERmcUlBNFAuTXFHSTNTMTZtZ3VFUDR0WVhHOWlTbWcBAAIAAAAAAAAA",
            },
            5: {
                "a2I=": "CAO2AAAAAgAAAGtiCgAAAAAAAAABBwNeAAAAAQMAAAAAAAAAVKQWa0bMtQwgAAAAMDhmOGUwMjYwYzY0NDE4NTEwY2VmYjJiMDZlZWU1Y2QGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABQoDIAAAAF9BMXV3cFBWZ3VLRWlmanhtWGlrWHpNWXdacDFScXF1AAAAAAAAAAAAAAAAAAA=",
            },
            7: {
                "a2E=": "CANyAAAAAgAAAGthAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "a2U=": "CANyAAAAAgAAAGtlAAAAAAAAAAAABwMyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBCgAAAIj//////////wAAAAAAAAAAAAAIAAAAAAAAAAAA",
                "gDEwMDBfa2EAaQ==": "CAOKAAAAAgAAAGthFAAAAAAAAAABBwMyAAAAAQAAAAAAAAAAVKQWa19CTBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEBAgAAAAUUCiAAAABfZ0YwSU9qTUozYmNjWktQdnZBMnlvOFRuTHNrMUxYdAAAAAAAAAAAAAAAAAAA",
                "gDEwMDBfa2EAaTVyRHh0YVA3cnFqV08tMlZmTm81Zzcza3c2eGlMM0c=": "CAPVAAAAAgAAAGthEgAAAAAAAAABBwNeAAAAAQMAAAAAAAAAVKQWa15CTBAgAAAANDdiY2U1Yzc0ZjU4OWY0ODY3ZGJkNTdlOWNhOWY4MDgGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABRIIIAAAAF9pbTZnMGw2MWVmaFBqeHBOcDNtS010ZUtudFoxajVtHwAAADVyRHh0YVA3cnFqV08tMlZmTm81Zzcza3c2eGlMM0cBAAIAAAAAAAAA",
                "gDEwMDBfa2UAaQ==": "CAO2AAAAAgAAAGtlEAAAAAAAAAABBwNeAAAAAQMAAAAAAAAAVKQWaxazog8gAAAAZDJmMjI5N2Q2ZTgyOWNkMzQ5M2FhN2RlNDQxNmExOGYGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAADAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABRAFIAAAAF9DNWhWUDBJQzZlQnU0bjllcTJvMWdZYTlGV0lWU19xAAAAAAEAAQAAAAAAAAA=",
                "gDEwMDBfa2UAaUMwaExkNllUQzN4emlFOHZjZFBmS3pjYnQwbVhxUWU=": "CAPzAAAAAgAAAGtlDQAAAAAAAAABBwNeAAAAAQQAAAAAAAAAVKQWaxWzog8gAAAANWRmNDM3NzhmYTg5ZjlkNGZkZWU5MWNiM2Y3ZjUxZTkGAAAAdGVzdGVyBgAAAHRlc3RlcgAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQECAAAABQ0DPgAAAGQ2YTY3MWVhLWJlNTItNDE1Ny04MGE2LWM0ZDA2NWMzZjAzYy40MTI2LjE4MTE4NjgxNDM5NzE5NzMzMDY2HwAAAEMwaExkNllUQzN4emlFOHZjZFBmS3pjYnQwbVhxUWUDAAIAAAAAAAAA",
            },
        },
    },
}
# fmt: on

OBSERVED_NS = 1_796_622_000_000_000_000


def page_of(release: str, shard: int) -> list[BilogEntry]:
    return [
        cast(BilogEntry, {
            "op_id": op_id, "op": op, "object": obj, "instance": inst, "state": "complete", "timestamp": ts,
            "ver": {"pool": pool, "epoch": epoch}, "bilog_flags": int(versioned), "versioned": versioned,
        })
        for op_id, op, obj, inst, ts, pool, epoch, versioned in CAPTURED[release]["pages"][shard]
    ]  # fmt: skip


def omap_of(release: str, shard: int) -> dict[bytes, bytes]:
    return {base64.b64decode(k): base64.b64decode(v) for k, v in CAPTURED[release]["omap"][shard].items()}


def shard_of(release: str, key: str) -> int:
    (shard,) = {n for n, page in CAPTURED[release]["pages"].items() if any(e[2] == key for e in page)}
    return int(shard)


def bucket_shard(release: str, shard: int) -> BucketShard:
    return BucketShard(CAPTURED[release]["bucket"], CAPTURED[release]["bucket_id"], shard)


def reader(release: str, shard: int) -> BucketIndexReader:
    return captured_reader(bucket_shard(release, shard), omap_of(release, shard))


def mapped(release: str, shard: int, page: list[BilogEntry]) -> list[Mutation]:
    bs = bucket_shard(release, shard)
    facts = reader(release, shard).facts(bs, page)
    return [
        m for m in ShardMapper(bs, 1).map_page(page, observed_ns=OBSERVED_NS, facts=facts) if m is not None
    ]


@pytest.fixture(params=["native", "python"])
def mapper_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of ``ShardMapper.map_page``: in C (``_speedups``) and in Python."""
    if request.param == "python":
        monkeypatch.setattr(mapping, "_NATIVE_MAP", None)
    elif mapping._NATIVE_MAP is None:
        pytest.skip(
            "changelog._speedups is not built here (or RGW_CHANGELOG_PURE_PYTHON=1): the C mapping is absent"
        )
    return str(request.param)


@pytest.mark.parametrize("release", RELEASES)
def test_the_captured_workload_records_every_tag_change_but_those_of_no_version(
    release: str, mapper_kind: str
) -> None:
    version_ids = CAPTURED[release]["version_ids"]
    got: dict[str, list[str | None]] = {}
    for shard in CAPTURED[release]["pages"]:
        for m in mapped(release, shard, page_of(release, shard)):
            assert m.op is Op.WRITE, m
            # A record's facts are a write's or null: never the phantom entry's size 0 and etag "".
            assert m.size is None or (m.size > 0 and m.etag), m
            v = m.version_id
            got.setdefault(m.key, []).append("v" if v is not None and v == version_ids.get(m.key) else v)
    assert got == EXPECTED


@pytest.mark.parametrize("release", RELEASES)
def test_only_the_entry_of_no_version_lacks_flag_ver(release: str) -> None:
    """The discriminator, in the captured entries: ka's null-instance entry (made by its
    DeleteObjectTagging) has no FLAG_VER, size 0, etag "" and no OLH epoch; kc's and ke's real
    null versions have FLAG_VER; the plain entries of the three are placeholders."""
    entries = {
        key: {k: decode_dir_entry(v) for k, v in omap_of(release, shard_of(release, key)).items()}
        for key in ("ka", "kc", "ke")
    }
    phantom = entries["ka"][instance_key("ka", "")]
    assert (phantom.instance, phantom.flags, phantom.size, phantom.etag, phantom.versioned_epoch) == (
        "",
        0,
        0,
        "",
        0,
    )
    assert phantom.exists
    for key in ("kc", "ke"):
        null = entries[key][instance_key(key, "")]
        assert null.flags & FLAG_VER and null.versioned_epoch > 0 and null.size > 0, (key, null)
    for key in ("ka", "kc", "ke"):
        assert entries[key][plain_key(key)].flags & FLAG_VER_MARKER, key


def ka_page(release: str) -> tuple[int, list[BilogEntry], str, str]:
    """ka's shard, its page, and the positions of ka's two DeleteObjectTagging entries."""
    shard = shard_of(release, "ka")
    page = page_of(release, shard)
    first, second = [position_of(str(e["op_id"])) for e in page if e["object"] == "ka" and not e["instance"]]
    return shard, page, first, second


@pytest.mark.parametrize("release", RELEASES)
def test_the_first_of_two_is_known_by_the_second(release: str) -> None:
    """The second DeleteObjectTagging of ka rewrote the entry: the first's ``ver`` is no longer
    there (it alone would be a superseded write), and it is dropped because the second is one of
    no version with nothing of ka's null version between them."""
    shard, page, first, second = ka_page(release)
    facts = reader(release, shard).facts(bucket_shard(release, shard), page)
    assert facts[first] is NO_WRITE and facts[second] is NO_WRITE
    alone = [e for e in page if position_of(str(e["op_id"])) != second]
    facts = reader(release, shard).facts(bucket_shard(release, shard), alone)
    assert first not in facts  # its entry was rewritten: a superseded write, recorded without facts


def entry_like(e: BilogEntry, op_id: str, **changes: Any) -> BilogEntry:
    return cast(BilogEntry, {**e, "op_id": op_id, **changes})


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(
    "between, dropped",
    [
        ("a rewrite of the current version", True),
        ("a prepared op", True),
        ("a link_olh of the null version", False),
        ("an unlink_instance of the null version", False),
        ("a versioned write companion", False),
    ],
)
def test_what_may_come_between_the_two(release: str, between: str, dropped: bool) -> None:
    """Between the two, an entry of ka's current version, or a prepared op, changes nothing of
    its null-instance entry; an op of the null version could have made (or removed) a real null
    version there: the first is then recorded (a write without facts)."""
    shard, page, first, second = ka_page(release)
    at = next(i for i, e in enumerate(page) if position_of(str(e["op_id"])) == second)
    tagging_v = next(e for e in page if e["object"] == "ka" and e["instance"] and not is_versioned_op(e))
    null = {"instance": ""}
    inserted = {
        "a rewrite of the current version": entry_like(tagging_v, "7#00000000090.1.6"),
        "a prepared op": entry_like(page[at], "7#00000000090.1.6", state="pending", op="del"),
        "a link_olh of the null version": entry_like(tagging_v, "7#00000000090.1.6", op="link_olh", versioned=True, **null),
        "an unlink_instance of the null version": entry_like(tagging_v, "7#00000000090.1.6", op="unlink_instance", instance="null"),
        "a versioned write companion": entry_like(tagging_v, "7#00000000090.1.6", versioned=True, **null),
    }[between]  # fmt: skip
    page = [*page[:at], inserted, *page[at:]]
    facts = reader(release, shard).facts(bucket_shard(release, shard), page)
    assert facts[second] is NO_WRITE
    assert (facts.get(first) is NO_WRITE) is dropped
    records = [m for m in mapped(release, shard, page) if m.key == "ka" and m.position == first]
    assert len(records) == (0 if dropped else 1)


# -- the follower on the in-memory radosgw --------------------------------------------------------

FAST: dict[str, object] = {"poll_interval": 0.01, "lease_ttl": 3600.0, "trim_interval": 0.0, "workers": 2}


class TaggingRgw(FakeRadosgw):
    """The in-memory radosgw, plus versioning enabled on a bucket that had none and the tagging
    requests as radosgw logs them: a ``write`` of the version they change (PutObjectTagging
    without a VersionId: of the current version), and DeleteObjectTagging without a VersionId a
    ``write`` of instance "" whatever the bucket (module docstring). Remembers what each PUT
    wrote and which entries are tag rewrites, for ``ClsIndex``."""

    def __init__(self, clock: FakeClock, *, release: Release) -> None:
        super().__init__(clock, release=release)
        self.content: dict[int, tuple[int, str]] = {}  # ver epoch of a PUT's entries -> (size, etag)

    def put(self, bucket: str, key: str, data: bytes = b"x") -> str | None:
        with self._lock:
            before = len(self.produced)
            vid = super().put(bucket, key, data)
            for e in self.produced[before:]:
                self.content[int(e["ver"]["epoch"])] = (len(data), hashlib.md5(data).hexdigest())
            return vid

    def enable_versioning(self, bucket: str) -> None:
        with self._lock:
            self._bucket(bucket).versioned = True

    def put_tags(self, bucket: str, key: str, version_id: str | None = None) -> None:
        with self._lock:
            b = self._bucket(bucket)
            current = b.objects[key][0].version_id or ""
            self._log(b, "write", key, version_id or current, self._now_ns())

    def delete_tags(self, bucket: str, key: str) -> None:
        with self._lock:
            self._log(self._bucket(bucket), "write", key, "", self._now_ns())


class Dir(NamedTuple):
    instance: str
    flags: int
    size: int
    etag: str
    pool: int
    epoch: int
    mtime_ns: int
    exists: bool = True


def _s(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _struct(v: int, body: bytes) -> bytes:
    return struct.pack("<BBI", v, 3, len(body)) + body


def encode(name: str, d: Dir) -> bytes:
    """An ``rgw_bucket_dir_entry`` v8 (meta v7) as radosgw 16.2-20.2 write it."""
    sec, nsec = divmod(d.mtime_ns, 1_000_000_000)
    owner = "tester" if d.etag else ""
    meta = _struct(7, bytes([1]) + struct.pack("<QII", d.size, sec, nsec) + _s(d.etag) + _s(owner) + _s(owner)
                   + _s("") + struct.pack("<Q", d.size) + _s("") + _s("") + b"\0")  # fmt: skip
    ver = _struct(1, struct.pack("<Bq", 0x88, d.pool) + struct.pack("<BQ", 0x88, d.epoch))
    body = (_s(name) + struct.pack("<Q", d.epoch) + bytes([d.exists]) + meta + struct.pack("<I", 0) + _s("")
            + ver + bytes([1]) + _s("tag") + _s(d.instance) + struct.pack("<HQ", d.flags, 0))  # fmt: skip
    return _struct(8, body)


class ClsIndex:
    """The fake zone's bucket index, kept as cls_rgw keeps it (measured on the three labs): a
    version's entry under its instance key with FLAG_VER; once a key has an OLH (``link_olh``),
    a placeholder (FLAG_VER_MARKER) under its plain key, its plain object, if any, moved to the
    null instance key with FLAG_VER; an instance-less ``write`` (``rgw_bucket_complete_op``)
    rewrites the plain entry, or the null-instance one behind a placeholder: an existing entry
    keeps its size and FLAG_VER, a new one has the OLH object's size 0, etag "" and no flags."""

    def __init__(self, rgw: TaggingRgw) -> None:
        self.rgw = rgw

    def state(self) -> dict[bytes, tuple[str, Dir]]:
        out: dict[bytes, tuple[str, Dir]] = {}
        for e in self.rgw.produced:
            obj, inst, op = str(e["object"]), str(e["instance"]), e["op"]
            pool, epoch = int(e["ver"]["pool"]), int(e["ver"]["epoch"])
            mtime = mapping.parse_time_ns(str(e["timestamp"]))
            written = self.rgw.content.get(epoch)
            if op == "link_olh":
                plain = out.get(plain_key(obj))
                if plain is not None and not plain[1].flags & FLAG_VER_MARKER:
                    out[instance_key(obj, "")] = (obj, plain[1]._replace(flags=FLAG_VER))
                out[plain_key(obj)] = (obj, Dir("", FLAG_VER_MARKER, 0, "", -1, 0, 0, exists=False))
            elif op == "write" and is_versioned_op(cast(BilogEntry, e)):
                size, etag = written or (0, "")
                out[instance_key(obj, inst)] = (obj, Dir(inst, FLAG_VER, size, etag, pool, epoch, mtime))
            elif op == "write":
                key = instance_key(obj, inst) if inst else plain_key(obj)
                old = out.get(key)
                if not inst and old is not None and old[1].flags & FLAG_VER_MARKER:
                    key = instance_key(obj, "")
                    old = out.get(key)
                size, etag = written or ((old[1].size, old[1].etag) if old else (0, ""))
                flags = old[1].flags & FLAG_VER if old else 0
                out[key] = (obj, Dir(inst, flags, size, etag, pool, epoch, mtime))
        return out

    def __call__(self, pool: str, oid: str, keys: Sequence[bytes]) -> Mapping[bytes, bytes]:
        state = self.state()  # (the tests use distinct keys in every bucket: the oid is not needed)
        return {k: encode(state[k][0], state[k][1]) for k in keys if k in state}


@pytest.fixture
def world(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[TaggingRgw, ChangeIndex, Follower]]:
    """The in-memory radosgw (of the test's ``release``), a change index and a caught-up
    follower reading object facts from ``ClsIndex``."""
    release = request.node.callspec.params["release"]
    clock = FakeClock()
    index = ChangeIndex(SqliteStore(str(tmp_path / "index.db")), shards=2, clock=clock.time)
    rgw = TaggingRgw(clock, release=release)
    f = Follower(
        index, rgw, SourceConfig.unchecked(**FAST), clocks=clock.clocks(),
        bucket_index=BucketIndexReader(ClsIndex(rgw), "idx-pool"),
    )  # fmt: skip
    assert f.acquire()
    f.run_until_caught_up(timeout=30)
    yield rgw, index, f
    f.close()
    index.store.close()


def key_records(index: ChangeIndex, bucket: str) -> dict[str, list[tuple[str, str | None, int | None]]]:
    """(op, version, size) of each key's records of ``bucket``, in order."""
    out: dict[str, list[tuple[str, str | None, int | None]]] = {}
    ms = [e.mutation for n in range(index.shards) for e in index.scan(n)]
    for m in sorted((m for m in ms if m.bucket == bucket and not m.op.of_bucket), key=lambda m: m.seq):
        assert not m.baseline, m  # every record is of a log entry
        out.setdefault(m.key, []).append((m.op.value, m.version_id, m.size))
    return out


@pytest.mark.parametrize("release", RELEASES)
def test_the_follower_records_no_write_of_a_version_the_bucket_lacks(
    world: tuple[TaggingRgw, ChangeIndex, Follower], release: str
) -> None:
    rgw, index, f = world
    rgw.clock.advance(2.0)  # created after the follower started: followed from their first entry
    rgw.create_bucket("u", shards=3)
    rgw.create_bucket("v", shards=3, versioned=True)
    rgw.create_bucket("o", shards=3)
    rgw.clock.advance(1.0)
    rgw.put("u", "ku", b"plain")
    rgw.put_tags("u", "ku")
    rgw.delete_tags("u", "ku")  # the plain object's: a write
    v = rgw.put("v", "kv", b"versioned")
    rgw.put_tags("v", "kv")  # of the current version v
    rgw.delete_tags("v", "kv")  # of no version: nothing
    rgw.delete_tags("v", "kv")  # again, read in the same page: nothing
    rgw.put("o", "ko", b"older than versioning")
    rgw.enable_versioning("o")
    rgw.delete_tags("o", "ko")  # the plain object's (the current null version): a write
    vo = rgw.put("o", "ko", b"newer")
    rgw.delete_tags("o", "ko")  # the non-current null version's (radosgw's doing): a write
    rgw.clock.advance(1.0)
    f.run_until_caught_up(timeout=30)
    # (op, version, size): a write superseded before the follower read the index has no size.
    assert key_records(index, "u") == {
        "ku": [("write", None, None), ("write", None, None), ("write", None, 5)]
    }
    assert key_records(index, "v") == {"kv": [("write", v, None), ("write", v, 9)]}
    assert key_records(index, "o") == {
        "ko": [("write", None, None), ("write", None, None), ("write", vo, 5), ("write", None, 21)]
    }
