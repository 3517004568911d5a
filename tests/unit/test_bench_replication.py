"""The ``replication`` benchmark's pure parts: the request count read from rclone's
``--dump headers`` log (which the figure's 20x goal stands on), the S3 operation of a raw
request, the rclone command and config, and the lag arithmetic of the lag figures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tools.bench.common import Bench, FigureSkipped, Lab
from tools.bench.replication import (
    dumped_requests,
    parse_rclone_requests,
    rclone_args,
    rclone_config,
    run,
    s3_op,
)
from tools.bench.replication_stream import lag_summary, lags

ROLES = {"127.0.0.1:17481": "src", "127.0.0.1:17482": "site"}


def _dump(method: str, target: str, host: str, *extra: str, req: str = "0xc0001") -> list[str]:
    """One request as rclone 1.60 logs it with --dump headers: separate log lines for the
    separators and the id, then the request line with its headers as one multi-line entry."""
    d = "2026/12/06 06:06:52 DEBUG : "
    return [
        d + ">" * 60,
        d + f"HTTP REQUEST (req {req})",
        d + f"{method} {target} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: rclone/",
        *extra,
        "Authorization: XXXX",
        "",
        d + ">" * 60,
    ]


def test_every_dumped_request_is_counted_by_op_and_role() -> None:
    log = [
        "2026/12/06 06:06:52 NOTICE: Automatically setting -vv as --dump is enabled",
        *_dump("GET", "/b?delimiter=&max-keys=1000&prefix=", "127.0.0.1:17481"),
        *_dump("GET", "/b?delimiter=&max-keys=1000&prefix=", "127.0.0.1:17482"),
        *_dump("HEAD", "/b/data/0000001", "127.0.0.1:17481"),
        *_dump("HEAD", "/b/data/0000001", "127.0.0.1:17482"),
        *_dump("GET", "/b/new/0000000", "127.0.0.1:17481"),
        *_dump("PUT", "/b/new/0000000", "127.0.0.1:17482", "Content-Length: 1024"),
        *_dump("DELETE", "/b/data/0000002", "127.0.0.1:17482"),
        "2026/12/06 06:06:52 INFO  : data/0000002: Deleted",
    ]
    got = parse_rclone_requests("\n".join(log), ROLES)
    assert got == {
        "ListObjects src": 1,
        "ListObjects site": 1,
        "HeadObject src": 1,
        "HeadObject site": 1,
        "GetObject src": 1,
        "PutObject site": 1,
        "DeleteObject site": 1,
    }
    assert dumped_requests("\n".join(log)) == sum(got.values()) == 7


def test_interleaved_requests_keep_their_own_headers() -> None:
    # Two goroutines: the second's id line comes between the first's id line and request line.
    a = _dump("HEAD", "/b/k1", "127.0.0.1:17481", req="0xa")
    b = _dump("PUT", "/b/k2", "127.0.0.1:17482", "X-Amz-Copy-Source: b/k1", req="0xb")
    log = [*a[:2], *b[:2], *a[2:], *b[2:]]
    got = parse_rclone_requests("\n".join(log), ROLES)
    assert got == {"HeadObject src": 1, "CopyObject site": 1}
    assert dumped_requests("\n".join(log)) == 2


def test_a_host_without_a_role_is_named() -> None:
    got = parse_rclone_requests("\n".join(_dump("GET", "/b/k", "10.0.0.1:80")), ROLES)
    assert got == {"GetObject 10.0.0.1:80": 1}


@pytest.mark.parametrize(
    ("method", "target", "op"),
    [
        ("GET", "/b?list-type=2&prefix=", "ListObjectsV2"),
        ("GET", "/b?delimiter=&max-keys=1000&prefix=", "ListObjects"),
        ("HEAD", "/b", "HeadBucket"),
        ("PUT", "/b", "CreateBucket"),
        ("POST", "/b?delete=", "DeleteObjects"),
        ("POST", "/b/big?uploads=", "CreateMultipartUpload"),
        ("PUT", "/b/big?partNumber=2&uploadId=2~x", "UploadPart"),
        ("POST", "/b/big?uploadId=2~x", "CompleteMultipartUpload"),
        ("DELETE", "/b/big?uploadId=2~x", "AbortMultipartUpload"),
        ("GET", "/b/dir/k%20with%20space", "GetObject"),
        ("DELETE", "/b/k", "DeleteObject"),
    ],
)
def test_s3_op(method: str, target: str, op: str) -> None:
    assert s3_op(method, target) == op


def _lab(endpoint: str, key: str, secret: str) -> Lab:
    return Lab(
        conf="c", keyring="", pool="p", rgw_endpoint=endpoint, access_key=key, secret_key=secret, dir="d"
    )


def test_rclone_runs_with_our_parallelism_and_a_dump() -> None:
    conf = rclone_config(_lab("http://127.0.0.1:17481", "A", "S"), _lab("http://127.0.0.1:17482", "B", "T"))
    assert "[src]\ntype = s3\nprovider = Ceph\nendpoint = http://127.0.0.1:17481\naccess_key_id = A\n" in conf
    assert "[dst]\ntype = s3\nprovider = Ceph\nendpoint = http://127.0.0.1:17482\naccess_key_id = B\n" in conf
    args = rclone_args(Path("/c"), "s", "d", Path("/l"), extra=["--checksum"])
    assert args[:6] == ["rclone", "--config", "/c", "sync", "src:s", "dst:d"]
    joined = " ".join(args)
    for flag in ("--dump headers", "--transfers 8", "--checkers 8", "--s3-upload-cutoff 8M", "--retries 1"):
        assert flag in joined
    assert args[-1] == "--checksum"


def test_lags_and_the_keys_never_seen() -> None:
    done = {"a": 10.0, "b": 11.0, "c": 12.0}
    got, missing = lags(done, {"a": 11.5, "c": 12.25, "zz": 1.0})
    assert got == [1.5, 0.25]
    assert missing == 1


def test_lag_summary_is_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    s = lag_summary(xs)
    assert (s["p50"], s["p99"], s["max"]) == (50.0, 99.0, 100.0)
    empty = lag_summary([])
    assert math.isnan(empty["p50"]) and math.isnan(empty["max"])


def test_without_rclone_the_group_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no rclone on it
    bench = Bench(lab=_lab("http://127.0.0.1:1", "a", "s"), tag="t1", tmp=tmp_path)
    with pytest.raises(FigureSkipped, match="rclone is not installed"):
        run(bench)
