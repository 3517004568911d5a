"""The real Ceph lab for tests: where it is (`Lab`), how to get one, and small clients for it.

A session either reuses a running cluster named by the environment (CEPH_CONF and RGW_ENDPOINT,
plus RGW_ACCESS_KEY, RGW_SECRET_KEY, CEPH_KEYRING, CEPH_POOL, CEPH_LAB_DIR), or boots a throwaway
one with `tools/ceph-lab up` and removes it at the end. The fixtures live in tests/conftest.py.
A test that needs another storage class in the lab's default placement adds it with
``add_storage_class`` (radosgw restarted once; a lab that has it is left alone).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from changelog.pipeline.s3client import make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REPO = Path(__file__).resolve().parent.parent
CEPH_LAB = REPO / "tools" / "ceph-lab"
REQUIRED_BINARIES = ("ceph-mon", "ceph-osd", "ceph-mgr", "radosgw", "radosgw-admin", "monmaptool")
S3_REGION = "default"  # the zonegroup name radosgw signs with
S3_TIMEOUT = 60.0  # s: botocore's default connect and read timeouts, which the lab's client always had


@dataclass(frozen=True)
class Lab:
    conf: str
    keyring: str
    rgw_endpoint: str
    access_key: str
    secret_key: str
    pool: str
    dir: str
    release: str = "pacific"  # CEPH_RELEASE: pacific | reef | tentacle
    bin: str = ""  # CEPH_BIN: the release's own ceph / rados / radosgw-admin, pointed at this lab

    @property
    def generations(self) -> bool:
        """Reef and later reshard in place (bucket-index-log generations)."""
        return self.release != "pacific"

    def ceph(self, *args: str, timeout: float = 60) -> str:
        """The lab release's `ceph` CLI (the host's when the lab names none)."""
        return self._run("ceph", *args, timeout=timeout)

    def radosgw_admin(self, *args: str, timeout: float = 120) -> str:
        """The lab release's radosgw-admin (the host's when the lab names none)."""
        return self._run("radosgw-admin", *args, timeout=timeout)

    def bucket_names(self) -> list[str]:
        """Every bucket the lab holds now (``tenant/name`` for a tenant's), as `[source]`
        names them: what a test's serve excludes to follow only the buckets made after it."""
        return [str(b) for b in json.loads(self.radosgw_admin("bucket", "list"))]

    def _run(self, tool: str, *args: str, timeout: float) -> str:
        if self.bin:
            cmd = [os.path.join(self.bin, tool)]
        else:
            cmd = [tool, "-c", self.conf, *(["-k", self.keyring] if self.keyring else [])]
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout


class LabUnavailable(Exception):
    """Ceph cannot be had on this machine: tests that need it are skipped with this reason."""


def lab_from_env(env: dict[str, str] | None = None) -> Lab | None:
    """The cluster the environment names (e.g. the KEY=VALUE lines of `tools/ceph-lab up`), if any."""
    env = dict(os.environ) if env is None else env
    conf, endpoint = env.get("CEPH_CONF"), env.get("RGW_ENDPOINT")
    if not conf or not endpoint:
        return None
    return Lab(
        conf=conf,
        keyring=env.get("CEPH_KEYRING", ""),
        rgw_endpoint=endpoint.rstrip("/"),
        access_key=env.get("RGW_ACCESS_KEY", "TESTKEY"),
        secret_key=env.get("RGW_SECRET_KEY", "TESTSECRET"),
        pool=env.get("CEPH_POOL", "changelog"),
        dir=env.get("CEPH_LAB_DIR", str(Path(conf).parent)),
        release=env.get("CEPH_RELEASE") or "pacific",
        bin=env.get("CEPH_BIN", ""),
    )


def is_ceph_lab_dir(lab: Lab) -> bool:
    """Whether `lab` was made by tools/ceph-lab (so `up`/`down` may be run on its folder)."""
    return (Path(lab.dir) / "lab.json").is_file()


def rados_missing_reason() -> str | None:
    try:
        importlib.import_module("rados")
    except ImportError as ex:
        return f"`import rados` fails in {sys.executable}: {ex} (run `tools/ceph-lab env-rados .venv`)"
    return None


def boot_missing_reason() -> str | None:
    """Why `tools/ceph-lab up` cannot work here, or None."""
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing and os.geteuid() != 0:
        return f"Ceph binaries missing ({', '.join(missing)}) and not root to install them"
    return None


def run_tool(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run tools/ceph-lab with this interpreter (it has the rados binding: the fast path)."""
    return subprocess.run(
        [sys.executable, str(CEPH_LAB), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def clean_tool_env() -> dict[str, str]:
    """The environment minus knobs that would change or point at another lab."""
    drop = (
        "CEPH_MON_PORT",
        "CEPH_RGW_PORT",
        "CEPH_WITH_MGR",
        "CEPH_WITH_RGW",
        "CEPH_AUTH",
        "CEPH_OBJECTSTORE",
    )
    return {k: v for k, v in os.environ.items() if k not in drop}


def parse_env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def boot(directory: Path) -> Lab:
    """`tools/ceph-lab up DIR`; raises RuntimeError with the tool's last words on failure."""
    proc = run_tool("up", str(directory), env=clean_tool_env())
    if proc.returncode != 0:
        raise RuntimeError(f"tools/ceph-lab up {directory} failed: {proc.stderr.strip()[-2000:]}")
    lab = lab_from_env(parse_env_lines(proc.stdout))
    if lab is None:
        raise RuntimeError(f"tools/ceph-lab up printed no CEPH_CONF/RGW_ENDPOINT: {proc.stdout!r}")
    return lab


def shut_down(directory: Path) -> None:
    proc = run_tool("down", str(directory))
    if proc.returncode != 0:
        raise RuntimeError(f"tools/ceph-lab down {directory} failed: {proc.stderr.strip()[-2000:]}")


@contextlib.contextmanager
def second_lab(release: str, *, prefix: str) -> Iterator[Lab]:
    """A lab of ``release`` beside the session's (another site or zone), in a new temporary
    directory named from ``prefix``, removed after the block; its ports are the first free ones
    from CEPH_LAB_PORT_OFFSET like every lab's. A failed boot fails the test in one line."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    saved = os.environ.get("CEPH_RELEASE")
    os.environ["CEPH_RELEASE"] = release
    try:
        lab = boot(directory)
    except Exception as ex:
        with contextlib.suppress(Exception):
            shut_down(directory)
        pytest.fail(f"second lab: {ex}", pytrace=False)
    finally:
        if saved is None:
            os.environ.pop("CEPH_RELEASE", None)
        else:
            os.environ["CEPH_RELEASE"] = saved
    try:
        yield lab
    finally:
        shut_down(directory)


def s3_client(lab: Lab) -> S3Client:
    """A boto3 S3 client for the lab's radosgw (path-style, region "default"), from the project's
    one factory (which keeps the checksums to what radosgw 16 accepts)."""
    return make_s3_client(
        lab.rgw_endpoint,
        access_key=lab.access_key,
        secret_key=lab.secret_key,
        region=S3_REGION,
        max_attempts=3,
        connect_timeout=S3_TIMEOUT,
        read_timeout=S3_TIMEOUT,
    )


def admin_get(lab: Lab, path: str, params: list[tuple[str, str | None]]) -> Any:
    """GET on radosgw's admin REST API (e.g. /admin/log, /admin/bucket), signed SigV4 as the lab user.

    Values are percent-encoded with nothing kept safe: a ':' left raw (as in bucket-instance=B:ID)
    makes the signature mismatch. A value of None sends a bare flag (`&info`)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    query = "&".join(
        urllib.parse.quote(k, safe="") + ("" if v is None else "=" + urllib.parse.quote(v, safe=""))
        for k, v in params
    )
    url = f"{lab.rgw_endpoint}{path}?{query}"
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(lab.access_key, lab.secret_key), "s3", S3_REGION).add_auth(request)
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=dict(request.headers)), timeout=30
    ) as resp:
        return json.loads(resp.read())


def log_data_again(lab: Lab, file_name: str) -> None:
    """Every zone of the lab's zonegroup logs data again. Rewriting the zonegroup (a placement
    added, a zone added or removed) loses the zones' log_data: no bucket index log, no data log
    (at radosgw's next start, and at once for radosgw-admin), nothing to follow. Set as
    tools/ceph-lab does at boot; ``file_name``: the JSON handed to `zonegroup set`, in the lab."""
    zg = json.loads(lab.radosgw_admin("zonegroup", "get", "--rgw-zonegroup=default"))
    for zone in zg["zones"]:
        zone["log_data"] = True if isinstance(zone.get("log_data"), bool) else "true"
    zg_file = Path(lab.dir) / file_name
    zg_file.write_text(json.dumps(zg))
    lab.radosgw_admin("zonegroup", "set", "--rgw-zonegroup=default", f"--infile={zg_file}")


LOG_ZONE = "changelog-lc-log"  # a zone of tier type `log` (syncs nothing), for Reef and later


@contextlib.contextmanager
def log_zone(lab: Lab) -> Iterator[None]:
    """A zone of tier type `log` in the lab's zonegroup while inside (removed after: other tests
    need a zone without peers), so that Reef and later log radosgw's lifecycle removals
    (README, "radosgw's own lifecycle"). Every zone's log_data is set again both ways: changing
    the zonegroup's zones loses it. radosgw is not restarted: it does not need to be for
    radosgw-admin's lifecycle, nor for a check that reads the zonegroup from RADOS."""
    lab.radosgw_admin(
        "zone", "create", "--rgw-zonegroup=default", f"--rgw-zone={LOG_ZONE}", "--tier-type=log",
        "--sync-from-all=false",
    )  # fmt: skip
    try:
        log_data_again(lab, "zonegroup-lc-log.json")
        yield
    finally:
        lab.radosgw_admin("zonegroup", "remove", "--rgw-zonegroup=default", f"--rgw-zone={LOG_ZONE}")
        lab.radosgw_admin("zone", "delete", f"--rgw-zone={LOG_ZONE}")
        # Reef's `zone create` makes the new zone the default one, and `zone delete` leaves the
        # pointer on it: a radosgw started later would look for a zone that is gone. (Pacific's
        # does not move it, and its `zone default` refuses a zone outside a realm: EINVAL.)
        if lab.release != "pacific":
            lab.radosgw_admin("zone", "default", "--rgw-zone=default")
        log_data_again(lab, "zonegroup-lc-log.json")


def storage_class_ready(lab: Lab, name: str, *, compression: str | None = None) -> bool:
    """Whether the lab's default placement has storage class ``name`` (its data compressed with
    ``compression``, where given) and every zone still logs data (rewriting the zonegroup, as
    ``add_storage_class`` does, loses that)."""
    zg = json.loads(lab.radosgw_admin("zonegroup", "get", "--rgw-zonegroup=default"))
    if any(str(z.get("log_data")).lower() != "true" for z in zg["zones"]):
        return False  # an earlier attempt lost log_data: add the class again, which sets it
    targets = [t for t in zg.get("placement_targets", []) if t.get("name") == "default-placement"]
    if not any(name in (t.get("storage_classes") or []) for t in targets):
        return False
    if compression is None:
        return True
    zone = json.loads(lab.radosgw_admin("zone", "get", "--rgw-zone=default"))
    for placement in zone["placement_pools"]:
        if placement["key"] == "default-placement":
            cls = placement["val"].get("storage_classes", {}).get(name, {})
            return bool(cls.get("compression_type") == compression)
    return False


def add_storage_class(lab: Lab, name: str, *, data_pool: str, compression: str | None = None) -> str | None:
    """Storage class ``name`` in the lab's default placement, its data in ``data_pool`` (made
    here if it is new) and compressed with ``compression`` where given: why it cannot be added,
    or None once it is there (at once on a lab that has it). radosgw without a realm reads its
    zonegroup only at start, so adding the class means restarting it (by its PID file, then
    `ceph-lab up`, which completes the lab)."""
    if storage_class_ready(lab, name, compression=compression):
        return None
    if not is_ceph_lab_dir(lab):
        return "the lab was not made by tools/ceph-lab: radosgw cannot be restarted to add a storage class"
    lab.radosgw_admin("zonegroup", "placement", "add", "--rgw-zonegroup=default",
                      "--placement-id=default-placement", f"--storage-class={name}")  # fmt: skip
    lab.radosgw_admin("zone", "placement", "add", "--rgw-zone=default", "--placement-id=default-placement",
                      f"--storage-class={name}", f"--data-pool={data_pool}",
                      *([f"--compression={compression}"] if compression else []))  # fmt: skip
    log_data_again(lab, f"zonegroup-{name.lower()}.json")
    # Made now rather than by radosgw at its first write there (a stall of seconds on Tentacle);
    # for a pool that is there (the default data pool) both commands change nothing.
    with contextlib.suppress(RuntimeError):
        lab.ceph("osd", "pool", "create", data_pool, "8")
    lab.ceph("osd", "pool", "application", "enable", data_pool, "rgw")
    pid_file = Path(lab.dir) / "run" / "client.rgw.gw.pid"
    if not pid_file.is_file():
        return f"no radosgw PID file at {pid_file}: radosgw cannot be restarted to add a storage class"
    pid = int(pid_file.read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:  # a slow shutdown (a loaded machine): the lab can take it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    res = run_tool("up", lab.dir, timeout=180)
    assert res.returncode == 0, f"ceph-lab up (radosgw restart) failed: {res.stderr[-2000:]}"
    assert storage_class_ready(lab, name, compression=compression), f"no class {name} after the restart"
    return None


class _Closable(Protocol):
    def close(self) -> None: ...


class _Store(Protocol):
    def list_objects(self) -> Iterable[str]: ...

    def remove_object(self, oid: str) -> None: ...

    def close(self) -> None: ...


def tear_down(closables: Iterable[_Closable], store: _Store, admin: _Closable) -> None:
    """The end of a follower test's environment: close its followers (and readers), empty and
    close its index store (a namespace of its own), close its admin client."""
    for c in closables:
        c.close()
    for oid in store.list_objects():
        store.remove_object(oid)
    store.close()
    admin.close()
