"""``rgw-changelog serve`` as the RGW figures run it: a config file (index on RADOS in a namespace
of its own, the lab's radosgw as source, change logs to ``s3://<log bucket>/logs/``) and the
process, started and stopped (SIGTERM) around the rounds that need it.

``[source] object_info`` is the product's default ("index": the follower reads the bucket index
entries over RADOS with the ``[index]`` section's ceph_conf and keyring, which the lab's client.admin
allows) unless a figure sets it; ``configure`` changes it between runs of the same process state
(same index namespace, same log bucket), so the follower resumes from its markers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any, NamedTuple

from changelog.pipeline.reader import read_watermark
from changelog.pipeline.targets import S3Target
from tools.bench.common import REPO, S3_REGION, Bench, remove_bucket, say, wipe_namespace

LOG_PREFIX = "logs"


class Timings(NamedTuple):
    """serve's ``[source] poll_interval`` and ``[collector]`` timings (None: the product's
    default), and how ``params`` describes them."""

    poll_interval: float | None
    interval: float | None
    settle: float | None
    text: str


def round_timings(bench: Bench) -> Timings:
    """serve's timings in the figures that start it around rounds of PUTs (rgw-put, journal): the
    product's defaults; with --quick (the CI smoke test) shorter ones, so that each round's
    catch-up takes seconds instead of tens (the figures are then a smoke test's, not the
    defaults')."""
    if not bench.quick:
        return Timings(None, None, None, "default [source]/[collector] timings (poll 1 s, interval 5 s, settle 2 s)")
    return Timings(0.5, 1.0, 0.5, "--quick timings (poll 0.5 s, interval 1 s, settle 0.5 s), not the defaults")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(
        self,
        bench: Bench,
        s3: Any,
        *,
        what: str,
        buckets: list[str],
        poll_interval: float | None = None,
        interval: float | None = None,
        settle: float | None = None,
        object_info: str | None = None,
    ) -> None:
        self.bench = bench
        self.s3 = s3
        self.namespace = bench.name(what)
        self.log_bucket = bench.name(f"{what}-logs")
        self.buckets = buckets
        self.settings = {"poll_interval": poll_interval, "interval": interval, "settle": settle}
        self.object_info = object_info
        self.config = bench.tmp / f"serve-{what}.toml"
        self.log = bench.tmp / f"serve-{what}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        s3.create_bucket(Bucket=self.log_bucket)
        self.target = S3Target(self.log_bucket, LOG_PREFIX, client=s3)
        self._write_config()

    def configure(self, *, object_info: str | None) -> None:
        """``[source] object_info`` of the next start (None: the product's default). Only
        between runs: a running serve read its config when it started."""
        assert not self.alive, "stop serve before changing its config"
        self.object_info = object_info
        self._write_config()

    @property
    def pid(self) -> int | None:
        """The running serve's process id (None when stopped)."""
        return self._proc.pid if self.alive and self._proc is not None else None

    def _write_config(self) -> None:
        lab = self.bench.lab
        keyring = f'keyring = "{lab.keyring}"\n' if lab.keyring else ""
        poll = self.settings["poll_interval"]
        collector = "".join(
            f"{k} = {v}\n" for k, v in (("interval", self.settings["interval"]), ("settle", self.settings["settle"]))
            if v is not None
        )
        info = f'object_info = "{self.object_info}"' if self.object_info is not None else ""
        self.config.write_text(
            f"""# written by tools/bench
[index]
backend = "rados"
ceph_conf = "{lab.conf}"
{keyring}pool = "{lab.pool}"
namespace = "{self.namespace}"

[source]
endpoint = "{lab.rgw_endpoint}"
access_key = "{lab.access_key}"
secret_key = "{lab.secret_key}"
region = "{S3_REGION}"
buckets = [{", ".join(f'"{b}"' for b in self.buckets)}]
{f"poll_interval = {poll}" if poll is not None else ""}
{info}

[target]
url = "s3://{self.log_bucket}/{LOG_PREFIX}/"
region = "{S3_REGION}"

[collector]
{collector}
[api]
listen = "127.0.0.1:{free_port()}"

[logging]
level = "INFO"
"""
        )

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        assert not self.alive
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "changelog.cli", "-c", str(self.config), "serve"],
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def stop(self, timeout: float = 60.0) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None
        if proc.returncode != 0:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{self.log_tail()}")

    def check(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"serve died with {self._proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def watermark_us(self) -> int:
        wm = read_watermark(self.target)
        return wm.complete_until_us if wm is not None else 0

    def wait_watermark(self, t: float, timeout: float = 120.0) -> float:
        """Until the watermark passes ``t`` (every mutation before it is in a committed log
        object): seconds waited."""
        t0 = time.monotonic()
        while self.watermark_us() < int(t * 1_000_000):
            self.check()
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"serve: watermark did not pass {t:.1f} within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.25)
        return time.monotonic() - t0

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError as ex:
            say(f"WARNING: {ex}")
        wipe_namespace(self.bench, self.namespace)
        remove_bucket(self.s3, self.log_bucket)
