"""The peer the RGW figures compare with: a persistent bucket notification (radosgw's own change
feed) pushing to a local HTTP sink, set up the way ceph-notes found it to work.

The sink runs in a child process (``python -m tools.bench.peer sink``), so that its request
handling does not compete for the GIL with the benchmark's S3 client threads. It is a
``ThreadingHTTPServer`` with a listen backlog of 1024: with Python's default of 5, radosgw sees
refused connections and redelivers whole batches (thousands of duplicates). It remembers the
first arrival time of every object key and answers ``GET /events?prefix=P`` with them.

Gotchas honoured here (ceph-notes): never ``DeleteObjects`` in a notified bucket (radosgw
aborts), and never leave the topic's queue without its endpoint (radosgw retries in a hot loop):
at the end the notification is removed and the topic deleted before the sink stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tools.bench.common import REPO, S3_REGION, Bench, empty_bucket, say

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

SINK_BACKLOG = 1024


class NotificationPeer:
    """A bucket with a persistent notification (all create and remove events) to the sink."""

    def __init__(self, bench: Bench, s3: S3Client) -> None:
        import boto3

        self.bench = bench
        self.s3 = s3
        self.bucket = bench.name("notif")
        self.topic_name = bench.name("topic")
        self.sent = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.peer", "sink"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline().strip())
        # radosgw's topic API speaks SNS, not S3: the project's factory (make_s3_client) makes S3
        # clients only, and no product code needs this one. SNS requests carry no checksums.
        self.sns = boto3.session.Session().client(
            "sns",
            endpoint_url=bench.lab.rgw_endpoint,
            aws_access_key_id=bench.lab.access_key,
            aws_secret_access_key=bench.lab.secret_key,
            region_name=S3_REGION,
        )
        self.topic_arn = self.sns.create_topic(
            Name=self.topic_name,
            Attributes={"push-endpoint": f"http://127.0.0.1:{self.port}", "persistent": "true"},
        )["TopicArn"]
        s3.create_bucket(Bucket=self.bucket)
        s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "TopicConfigurations": [
                    {
                        "Id": "bench",
                        "TopicArn": self.topic_arn,
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    }
                ]
            },
        )
        self._live = False
        say(f"peer: bucket {self.bucket} notifies topic {self.topic_name} -> http://127.0.0.1:{self.port}")

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def events(self, prefix: str) -> dict[str, float]:
        """First arrival time at the sink of each object key under ``prefix``."""
        got: dict[str, float] = self._get("/events?prefix=" + urllib.parse.quote(prefix))
        return got

    def stats(self) -> dict[str, int]:
        got: dict[str, int] = self._get("/stats")
        return got

    def wait_live(self, timeout: float = 90.0) -> float:
        """Until radosgw delivers to the sink: a new persistent topic's queue is picked up only
        after 14-30 s here. Seconds waited."""
        if self._live:
            return 0.0
        t0 = time.monotonic()
        key = f"probe/{time.time_ns()}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"probe")
        self.sent += 1
        while key not in self.events("probe/"):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"peer: no notification delivered within {timeout:.0f}s")
            time.sleep(0.25)
        self._live = True
        waited = time.monotonic() - t0
        say(f"peer: notifications flowing after {waited:.1f}s")
        return waited

    def wait_delivered(self, prefix: str, keys: int, timeout: float) -> int:
        """Until ``keys`` distinct keys under ``prefix`` arrived (or timeout): how many did."""
        deadline = time.monotonic() + timeout
        while True:
            n = len(self.events(prefix))
            if n >= keys or time.monotonic() > deadline:
                return n
            time.sleep(0.5)

    def _delete_notifications(self) -> None:
        """``DELETE /bucket?notification`` (radosgw's extension; an empty configuration PUT is
        refused as MalformedXML), signed like any S3 request."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        lab = self.bench.lab
        url = f"{lab.rgw_endpoint}/{self.bucket}?notification"
        request = AWSRequest(method="DELETE", url=url)
        S3SigV4Auth(Credentials(lab.access_key, lab.secret_key), "s3", S3_REGION).add_auth(request)
        req = urllib.request.Request(url, method="DELETE", headers=dict(request.headers))
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def close(self) -> None:
        try:
            # Let the queue drain before its topic goes (a queue without an endpoint spins).
            deadline = time.monotonic() + (15 if self.bench.quick else 60)
            while self.stats()["unique"] < self.sent and time.monotonic() < deadline:
                time.sleep(0.5)
            self._delete_notifications()
            self.sns.delete_topic(TopicArn=self.topic_arn)
            empty_bucket(self.s3, self.bucket)
            self.s3.delete_bucket(Bucket=self.bucket)
            time.sleep(1.0)
        finally:
            self._proc.terminate()
            self._proc.wait(10)


def get_peer(bench: Bench, s3: S3Client) -> NotificationPeer:
    """The run's peer, set up on first use (figures share it: its queue's start-up delay is paid
    once) and removed at the end of the run."""
    peer = bench.shared.get("peer")
    if peer is None:
        peer = NotificationPeer(bench, s3)
        bench.shared["peer"] = peer
        bench.on_exit("notification peer", peer.close)
    assert isinstance(peer, NotificationPeer)
    return peer


# --------------------------------------------------------------------------- the sink process


class _Sink(ThreadingHTTPServer):
    request_queue_size = SINK_BACKLOG
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.first: dict[str, float] = {}
        self.deliveries = 0
        self.mu = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Sink

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        t = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            records = json.loads(body).get("Records", [])
        except ValueError:
            records = []
        with self.server.mu:
            for rec in records:
                key = rec.get("s3", {}).get("object", {}).get("key")
                self.server.deliveries += 1
                if key is not None and key not in self.server.first:
                    self.server.first[key] = t
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        with self.server.mu:
            if url.path == "/stats":
                doc: Any = {"deliveries": self.server.deliveries, "unique": len(self.server.first)}
            else:
                prefix = urllib.parse.parse_qs(url.query).get("prefix", [""])[0]
                doc = {k: t for k, t in self.server.first.items() if k.startswith(prefix)}
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _sink_main() -> None:
    server = _Sink()
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:] != ["sink"]:
        raise SystemExit("usage: python -m tools.bench.peer sink")
    _sink_main()
