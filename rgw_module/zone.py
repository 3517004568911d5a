"""Turn on the zone's data and bucket index logs (``log_data``), which the follower reads.

A default single-zone radosgw has ``"log_data": "false"``: it then writes no bucket-index-log
and no data-log entries at all. The steps, as ``enable_log_data`` runs them::

    radosgw-admin zonegroup get --rgw-zonegroup=default > zg.json
    # set "log_data": "true" on the zone's entry in zg.json ("zones": [...])
    radosgw-admin zonegroup set --rgw-zonegroup=default --infile zg.json
    radosgw-admin period update --commit        # only when a realm exists
    # restart every radosgw of the zone

``zonegroup set`` prints "RGWPeriod::init failed ... realm" when there is no realm: harmless.
Nothing is logged for mutations made before the restart: the follower's full sync (baseline)
covers them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict, cast

from changelog.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class ZoneDoc(TypedDict, total=False):
    """A zone of ``zonegroup get`` (the fields read here; the others are kept as they are)."""

    name: str
    log_data: bool | str  # a JSON bool in newer releases, "true"/"false" in 16.x


class ZonegroupDoc(TypedDict, total=False):
    """``radosgw-admin zonegroup get`` (the fields read here)."""

    zones: list[ZoneDoc]


class RadosgwAdmin:
    """``radosgw-admin`` with the cluster options given once."""

    def __init__(
        self,
        *,
        binary: str = "radosgw-admin",
        conf: str | None = None,
        keyring: str | None = None,
        name: str | None = None,
        timeout: float = 60.0,
        run: Runner = subprocess.run,
    ) -> None:
        self.base = [binary]
        if conf:
            self.base += ["-c", conf]
        if keyring:
            self.base += ["-k", keyring]
        if name:
            self.base += ["-n", name]
        self.timeout = timeout
        self._run = run

    def __call__(self, *args: str) -> str:
        argv = self.base + list(args)
        try:
            proc = self._run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError as ex:
            raise PermanentError(f"{self.base[0]} not found: install radosgw (Debian: radosgw)") from ex
        except subprocess.TimeoutExpired as ex:
            raise TransientError(f"{' '.join(argv[:4])}... timed out after {self.timeout:.0f}s") from ex
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise PermanentError(f"{' '.join(argv)} failed ({proc.returncode}): {last[-1] if last else 'no output'}")
        return str(proc.stdout)

    def json(self, *args: str) -> dict[str, object]:
        """The command's output, a JSON object."""
        out = self(*args)
        try:
            doc: object = json.loads(out)
        except ValueError as ex:
            raise PermanentError(f"radosgw-admin {' '.join(args)}: output is not JSON") from ex
        if not isinstance(doc, dict):
            raise PermanentError(f"radosgw-admin {' '.join(args)}: output is not a JSON object")
        return doc

    def zonegroup(self, name: str) -> ZonegroupDoc:
        return cast(ZonegroupDoc, self.json("zonegroup", "get", f"--rgw-zonegroup={name}"))


def _is_on(value: object) -> bool:
    return value is True or str(value).lower() == "true"


def log_data_zones(zonegroup_doc: ZonegroupDoc) -> dict[str, bool]:
    """Zone name -> log_data, from ``zonegroup get`` output."""
    return {str(z.get("name")): _is_on(z.get("log_data")) for z in zonegroup_doc.get("zones", [])}


def require_zones(zonegroup: str, known: Mapping[str, bool], zones: Sequence[str] | None) -> None:
    """``PermanentError`` naming what ``zones`` asks for that the zonegroup does not have."""
    missing = sorted(set(zones or ()) - set(known))
    if missing:
        raise PermanentError(f"zonegroup {zonegroup} has no zone {', '.join(missing)} (it has {', '.join(known)})")


def enable_log_data(
    *,
    zonegroup: str = "default",
    zones: Sequence[str] | None = None,
    admin: RadosgwAdmin | None = None,
) -> list[str]:
    """Set ``log_data`` on the zonegroup's zones (``zones`` None: all of them). Returns the
    zones changed: radosgw must be restarted for them to take effect. Idempotent."""
    admin = admin or RadosgwAdmin()
    doc = admin.zonegroup(zonegroup)
    require_zones(zonegroup, log_data_zones(doc), zones)
    changed: list[str] = []
    for z in doc.get("zones", []):
        name = str(z.get("name"))
        if (zones is None or name in zones) and not _is_on(z.get("log_data")):
            # Keep the type radosgw printed (a JSON bool in newer releases, a string in 16.x).
            z["log_data"] = True if isinstance(z.get("log_data"), bool) else "true"
            changed.append(name)
    if not changed:
        logger.info("log_data is already on for zonegroup %s", zonegroup)
        return []
    fd, path = tempfile.mkstemp(prefix="zonegroup-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        admin("zonegroup", "set", f"--rgw-zonegroup={zonegroup}", f"--infile={path}")
    finally:
        os.unlink(path)
    realms = admin.json("realm", "list").get("realms")
    if realms:
        admin("period", "update", "--commit")
    logger.info("log_data turned on for zones %s of zonegroup %s: restart radosgw", ", ".join(changed), zonegroup)
    return changed
