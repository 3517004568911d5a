"""Configuration: one TOML file (stdlib ``tomllib``) turned into frozen dataclasses, one per
section, and the factories that open the index store, the change index and the target from it.

Every key is checked: an unknown key, a wrong type or a value out of range is refused with one
line naming the key (``collector.settle must be a number (got "ten")``), with a "did you mean"
for typos. Where the file comes from: ``-c PATH`` > ``$RGW_CHANGELOG_CONFIG`` >
``/etc/rgw-changelog/rgw-changelog.toml`` > built-in defaults (the embedded setup: a sqlite index
file and a local directory target).

**Secrets** (``access_key``, ``secret_key`` of ``[source]``, ``[target]`` and ``[backup]``) are
held in ``Secret`` objects whose ``repr`` and ``str`` are masked; ``.reveal()`` gives the value to
the library that needs it. Any of them may instead be read from the environment:
``secret_key_env = "RGW_SECRET"`` reads ``$RGW_SECRET`` at load time (setting both ``secret_key``
and ``secret_key_env`` is an error, so is naming a variable that is not set).

Relative paths (``index.path``, ``file://`` URLs, ``logging.file``) are taken from the working
directory at load time and shown absolute in the effective config.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from changelog.errors import ConfigError, PermanentError

if TYPE_CHECKING:
    from changelog.index import ChangeIndex
    from changelog.store import ObjectStore

ENV_VAR = "RGW_CHANGELOG_CONFIG"
DEFAULT_PATH = Path("/etc/rgw-changelog/rgw-changelog.toml")
ENV_SUFFIX = "_env"
MASK = "****"
MiB = 1024 * 1024
# S3 refuses multipart parts below 5 MiB (all but the last one).
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * 1024 * MiB


class Secret:
    """A credential: masked in ``repr``/``str`` (so it never reaches a log line or a traceback
    by accident); ``reveal()`` returns the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "") -> None:
        self._value = value
        self.source = source  # where it came from, e.g. "$RGW_SECRET"; safe to show

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()


# --------------------------------------------------------------------------- field kinds
#
# Each dataclass field carries ``metadata={"kind": ...}`` plus options; ``_convert`` checks a TOML
# value against it. Keeping the schema on the dataclasses means one place to add a key.


def _f(kind: str, default: Any, **opts: Any) -> Any:
    meta = {"kind": kind, **opts}
    if isinstance(default, list | dict | tuple) or callable(default):
        factory = default if callable(default) else (lambda d=default: d)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class IndexConfig:
    backend: str = _f("choice", "sqlite", choices=("sqlite", "rados"))
    ceph_conf: str = _f("path", "/etc/ceph/ceph.conf")
    keyring: str | None = _f("path", None)
    client_name: str = _f("str", "client.admin", pattern=r"client\.[A-Za-z0-9_.-]+", pattern_text='"client." and a name')
    connect_timeout: float = _f("number", 10.0, min=1.0)
    pool: str = _f("str", "rgw-changelog", nonempty=True)
    namespace: str = _f("str", "")
    path: str = _f("path", "./rgw-changelog.db")
    shards: int = _f("int", 16, min=1, max=4096)
    mode: str = _f("choice", "write", choices=("write", "object"))
    prefix: str = _f("str", "changelog", pattern=r"[A-Za-z0-9_.:-]+", pattern_text="letters, digits and _.:-")


@dataclass(frozen=True)
class SourceConfig:
    endpoint: str | None = _f("url", None, schemes=("http", "https"))
    access_key: Secret | None = _f("secret", None)
    secret_key: Secret | None = _f("secret", None)
    region: str = _f("str", "us-east-1", nonempty=True)
    buckets: tuple[str, ...] = _f("strlist", ("*",), nonempty_items=True)
    prefixes: Mapping[str, tuple[str, ...]] = _f("prefixes", lambda: MappingProxyType({}))
    exclude_buckets: tuple[str, ...] = _f("strlist", (), nonempty_items=True)
    poll_interval: float = _f("number", 1.0, min=0.05)
    # HEAD each written object for its size and etag when the bucket index log lacks them: one
    # more radosgw request per write, so off unless asked for.
    object_info: bool = _f("bool", False)
    # The follower's lease on the index (the collector has its own, collector.lease_ttl).
    lease_ttl: float = _f("number", 30.0, min=1.0)
    # Trim the bucket index logs and the data log up to what is recorded (a single zone never
    # trims them itself). Off: leave them to radosgw's own trimming (multisite) or an operator.
    trim_logs: bool = _f("bool", True)

    @property
    def all_buckets(self) -> bool:
        return self.buckets == ("*",)

    def includes(self, bucket: str, key: str | None = None) -> bool:
        """Whether a mutation of ``bucket``/``key`` is followed under these filters."""
        if bucket in self.exclude_buckets:
            return False
        if not self.all_buckets and bucket not in self.buckets:
            return False
        wanted = self.prefixes.get(bucket)
        if key is None or not wanted:
            return True
        return any(key.startswith(p) for p in wanted)


@dataclass(frozen=True)
class TargetConfig:
    url: str = _f("target_url", "file://./changelog-logs/")
    endpoint: str | None = _f("url", None, schemes=("http", "https"))
    access_key: Secret | None = _f("secret", None)
    secret_key: Secret | None = _f("secret", None)
    region: str = _f("str", "us-east-1", nonempty=True)
    addressing_style: str = _f("choice", "path", choices=("path", "virtual", "auto"))
    compression: str = _f("choice", "none", choices=("none", "gzip", "zstd"))

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


@dataclass(frozen=True)
class CollectorConfig:
    interval: float = _f("number", 5.0, min=0.01)
    settle: float = _f("number", 2.0, min=0.0)
    lease_ttl: float = _f("number", 30.0, min=1.0)
    roll_bytes: int = _f("size", 64 * MiB, min=1)
    roll_entries: int = _f("int", 100_000, min=1)
    roll_seconds: float = _f("number", 60.0, min=0.0)
    part_bytes: int = _f("size", 8 * MiB, min=1024, max=S3_MAX_PART)


@dataclass(frozen=True)
class ApiConfig:
    listen: str = _f("listen", "127.0.0.1:9480")
    allow_from: tuple[str, ...] = _f("networks", ("127.0.0.1", "::1"))

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True)
class BackupConfig:
    url: str | None = _f("target_url", None)
    endpoint: str | None = _f("url", None, schemes=("http", "https"))
    access_key: Secret | None = _f("secret", None)
    secret_key: Secret | None = _f("secret", None)
    region: str = _f("str", "us-east-1", nonempty=True)
    keep_days: float = _f("number", 30.0, min=0.0)
    minimum_backups: int = _f("int", 3, min=0)
    maximum_backups: int = _f("int", 60, min=1)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _f("level", "INFO")
    file: str | None = _f("path", None)


@dataclass(frozen=True)
class Config:
    index: IndexConfig = field(default_factory=IndexConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Where it was read from; None = built-in defaults. Not a TOML key.
    path: str | None = field(default=None, compare=False)

    def to_dict(self, *, masked: bool = True) -> dict[str, dict[str, Any]]:
        """The effective config as plain data; secrets masked unless ``masked=False``."""
        out: dict[str, dict[str, Any]] = {}
        for sec in SECTIONS:
            part = getattr(self, sec)
            d: dict[str, Any] = {}
            for f in dataclasses.fields(part):
                v = getattr(part, f.name)
                if isinstance(v, Secret):
                    v = (f"{MASK} (from {v.source})" if v.source else MASK) if masked else v.reveal()
                elif isinstance(v, tuple):
                    v = list(v)
                elif isinstance(v, Mapping):
                    v = {k: list(x) for k, x in v.items()}
                d[f.name] = v
            out[sec] = d
        return out

    def to_toml(self) -> str:
        """The effective config as TOML, secrets masked (for ``config check``)."""
        lines = []
        for sec, d in self.to_dict(masked=True).items():
            lines.append(f"[{sec}]")
            for k, v in d.items():
                if v is None:
                    lines.append(f"# {k} = (unset)")
                else:
                    lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)


SECTIONS: dict[str, type[Any]] = {
    "index": IndexConfig,
    "source": SourceConfig,
    "target": TargetConfig,
    "collector": CollectorConfig,
    "api": ApiConfig,
    "backup": BackupConfig,
    "logging": LoggingConfig,
}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


# --------------------------------------------------------------------------- checking values


def _shown(v: Any) -> str:
    """A value as the user wrote it, for an error message (shortened)."""
    if isinstance(v, str):
        text = json.dumps(v, ensure_ascii=False)
    elif isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, dict):
        text = "a table"
    elif isinstance(v, int | float):
        text = repr(v)
    elif isinstance(v, list):
        text = "a list"
    else:
        text = type(v).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(name: str, v: Any, what: str = "a number") -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"{name} must be {what} (got {_shown(v)})")
    return float(v)


def _bounds(name: str, v: float, meta: Mapping[str, Any], unit: str = "") -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and v < lo:
        raise ConfigError(f"{name} must be at least {lo:g}{unit} (got {v:g})")
    if hi is not None and v > hi:
        raise ConfigError(f"{name} must be at most {hi:g}{unit} (got {v:g})")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int | None:
    """``"64MiB"``, ``"8 MB"``, ``"1048576"`` -> bytes (binary units); None if not a size."""
    m = _SIZE.match(text)
    if not m:
        return None
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    if unit not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[unit])


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(listen)
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


def _file_url(name: str, v: str) -> str:
    raw = v[len("file://") :]
    if not raw:
        raise ConfigError(f'{name} must name a directory: "file:///dir/" (got {_shown(v)})')
    return "file://" + str(Path(raw).expanduser().absolute()) + "/"


def _convert(name: str, v: Any, meta: Mapping[str, Any]) -> Any:
    kind = meta["kind"]
    if kind in ("str", "path", "choice", "url", "target_url", "listen", "level", "secret"):
        if not isinstance(v, str):
            raise ConfigError(f"{name} must be a string (got {_shown(v)})")
    if kind == "str":
        if meta.get("nonempty") and not v:
            raise ConfigError(f"{name} must not be empty")
        pat = meta.get("pattern")
        if pat and not re.fullmatch(pat, v):
            raise ConfigError(f"{name} may hold only {meta['pattern_text']} (got {_shown(v)})")
        return v
    if kind == "path":
        if not v:
            raise ConfigError(f"{name} must not be empty")
        return str(Path(v).expanduser().absolute())
    if kind == "choice":
        choices = meta["choices"]
        if v not in choices:
            raise ConfigError(
                f"{name} must be one of {', '.join(choices)} (got {_shown(v)}){_suggest(v, list(choices))}"
            )
        return v
    if kind == "level":
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"{name} must be one of DEBUG, INFO, WARNING, ERROR (got {_shown(v)})")
        return v.upper()
    if kind == "url":
        m = re.match(r"^([a-z][a-z0-9+.-]*)://([^/\s]+)", v)
        if not m or m.group(1) not in meta["schemes"]:
            raise ConfigError(f'{name} must be an http:// or https:// URL such as "http://127.0.0.1:7480" (got {_shown(v)})')
        return v.rstrip("/")
    if kind == "target_url":
        if v.startswith("s3://"):
            bucket = v[5:].split("/", 1)[0]
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", bucket):
                raise ConfigError(f'{name} must be "s3://bucket/prefix/" with a valid bucket name (got {_shown(v)})')
            return v
        if v.startswith("file://"):
            return _file_url(name, v)
        raise ConfigError(f'{name} must start with s3:// or file:// (got {_shown(v)})')
    if kind == "listen":
        try:
            host, _port = split_listen(v)
            if host not in ("0.0.0.0", "localhost", "::"):
                ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f'{name} must be "ADDRESS:PORT" such as "127.0.0.1:9480" (got {_shown(v)})') from None
        return v
    if kind == "secret":
        return Secret(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false (got {_shown(v)})")
        return v
    if kind == "number":
        n = _number(name, v)
        _bounds(name, n, meta)
        return n
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be an integer (got {_shown(v)})")
        _bounds(name, v, meta)
        return v
    if kind == "size":
        if isinstance(v, str):
            size = parse_size(v)
            if size is None:
                raise ConfigError(f'{name} must be a size in bytes, or a string such as "64MiB" (got {_shown(v)})')
        elif isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f'{name} must be a size in bytes, or a string such as "64MiB" (got {_shown(v)})')
        else:
            size = v
        _bounds(name, size, meta, " bytes")
        return size
    if kind in ("strlist", "networks"):
        if not isinstance(v, list):
            raise ConfigError(f"{name} must be a list of strings (got {_shown(v)})")
        for i, x in enumerate(v):
            if not isinstance(x, str) or (meta.get("nonempty_items") and not x):
                raise ConfigError(f"{name}[{i}] must be a non-empty string (got {_shown(x)})")
            if kind == "networks":
                try:
                    ipaddress.ip_network(x, strict=False)
                except ValueError:
                    raise ConfigError(
                        f'{name}[{i}] must be an address or network such as "10.0.0.0/8" (got {_shown(x)})'
                    ) from None
        return tuple(v)
    if kind == "prefixes":
        if not isinstance(v, dict):
            raise ConfigError(f'{name} must be a table of bucket = ["prefix", ...] (got {_shown(v)})')
        out: dict[str, tuple[str, ...]] = {}
        for bucket, plist in v.items():
            if isinstance(plist, str):
                plist = [plist]
            if not isinstance(plist, list) or not all(isinstance(p, str) for p in plist):
                raise ConfigError(f"{name}.{bucket} must be a list of key prefixes (got {_shown(plist)})")
            out[bucket] = tuple(plist)
        return MappingProxyType(out)
    raise AssertionError(kind)


def _section(sec: str, cls: type[Any], raw: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{sec}] must be a table (got {_shown(raw)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    secrets = [n for n, f in fields.items() if f.metadata["kind"] == "secret"]
    known = list(fields) + [n + ENV_SUFFIX for n in secrets]
    values: dict[str, Any] = {}
    for key, v in raw.items():
        name = f"{sec}.{key}"
        if key.endswith(ENV_SUFFIX) and key[: -len(ENV_SUFFIX)] in secrets:
            base = key[: -len(ENV_SUFFIX)]
            if base in raw:
                raise ConfigError(f"set {sec}.{base} or {name}, not both")
            if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
                raise ConfigError(f"{name} must name an environment variable (got {_shown(v)})")
            if v not in env:
                raise ConfigError(f"{name} names ${v}, which is not set in the environment")
            values[base] = Secret(env[v], source="$" + v)
            continue
        if key not in fields:
            raise ConfigError(f"unknown key {name}{_suggest(key, known)}")
        values[key] = _convert(name, v, fields[key].metadata)
    for fname, f in fields.items():
        # Defaults that are relative paths become absolute like the ones from the file.
        if fname not in values and f.metadata["kind"] in ("path", "target_url") and isinstance(f.default, str):
            values[fname] = _convert(f"{sec}.{fname}", f.default, f.metadata)
    return cls(**values)


def _cross_checks(cfg: Config) -> Config:
    """Rules that involve more than one key; also fills credentials that default to the source's."""
    src = cfg.source
    if "*" in src.buckets and len(src.buckets) > 1:
        raise ConfigError('source.buckets: "*" means every bucket and must stand alone')
    if cfg.index.backend == "rados" and not cfg.index.pool:
        raise ConfigError("index.pool must be set when index.backend is rados")
    for sec in ("source", "target", "backup"):
        part = getattr(cfg, sec)
        if (part.access_key is None) != (part.secret_key is None):
            have, missing = ("access_key", "secret_key") if part.secret_key is None else ("secret_key", "access_key")
            raise ConfigError(f"{sec}.{have} is set but {sec}.{missing} is not: set both (or neither)")
    # The target and the backup store usually live on the source radosgw: default to its endpoint
    # and credentials.
    target = cfg.target
    if target.is_s3:
        target = dataclasses.replace(
            target,
            endpoint=target.endpoint or src.endpoint,
            access_key=target.access_key or src.access_key,
            secret_key=target.secret_key or src.secret_key,
        )
        if cfg.collector.part_bytes < S3_MIN_PART:
            raise ConfigError(
                f"collector.part_bytes must be at least {S3_MIN_PART} bytes (5 MiB) with an s3:// target "
                f"(got {cfg.collector.part_bytes})"
            )
    backup = cfg.backup
    if backup.url is not None and backup.url.startswith("s3://"):
        backup = dataclasses.replace(
            backup,
            endpoint=backup.endpoint or src.endpoint,
            access_key=backup.access_key or src.access_key,
            secret_key=backup.secret_key or src.secret_key,
        )
    if backup.minimum_backups > backup.maximum_backups:
        raise ConfigError(
            f"backup.minimum_backups ({backup.minimum_backups}) must not exceed "
            f"backup.maximum_backups ({backup.maximum_backups})"
        )
    return dataclasses.replace(cfg, target=target, backup=backup)


def parse_config(data: Mapping[str, Any], *, path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Check a parsed TOML document and build the ``Config``."""
    env = os.environ if env is None else env
    parts: dict[str, Any] = {}
    for sec in data:
        if sec not in SECTIONS:
            raw = data[sec]
            if isinstance(raw, dict):
                raise ConfigError(f"unknown section [{sec}]{_suggest(sec, list(SECTIONS))}")
            close = difflib.get_close_matches(sec, [f.name for c in SECTIONS.values() for f in dataclasses.fields(c)], 1)
            hint = ""
            if close:
                owner = next(s for s, c in SECTIONS.items() if close[0] in {f.name for f in dataclasses.fields(c)})
                hint = f" (keys go in a section: did you mean [{owner}] {close[0]}?)"
            raise ConfigError(f"unknown top-level key {sec}{hint}")
    for sec, cls in SECTIONS.items():
        parts[sec] = _section(sec, cls, data.get(sec, {}), env)
    return _cross_checks(Config(**parts, path=path))


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load the config: ``path`` (``-c``) > ``$RGW_CHANGELOG_CONFIG`` > the system file > defaults."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_VAR):
        path, why = env[ENV_VAR], f" (from ${ENV_VAR})"
    elif path is not None:
        why = ""
    elif DEFAULT_PATH.exists():
        path, why = DEFAULT_PATH, ""
    else:
        return parse_config({}, env=env)
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found{why}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory{why}") from None
    except OSError as ex:
        raise ConfigError(f"cannot read config file {p}{why}: {ex.strerror or ex}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as ex:
        raise ConfigError(f"{p} is not UTF-8 text (byte {ex.start})") from None
    except tomllib.TOMLDecodeError as ex:
        raise ConfigError(f"{p} is not valid TOML: {ex}") from None
    return parse_config(data, path=str(p), env=env)


# --------------------------------------------------------------------------- factories


def open_store(cfg: Config) -> ObjectStore:
    """The index's object store: the embedded sqlite file, or a RADOS pool."""
    ic = cfg.index
    if ic.backend == "sqlite":
        from changelog.backends.sqlite import SqliteStore

        parent = Path(ic.path).parent
        if not parent.is_dir():
            raise ConfigError(f"index.path: directory {parent} does not exist")
        return SqliteStore(ic.path)
    if not Path(ic.ceph_conf).is_file():
        raise ConfigError(f"index.ceph_conf: {ic.ceph_conf} not found")
    try:
        from changelog.backends.rados import RadosStore
    except ImportError as ex:
        raise PermanentError(
            f"index.backend is rados but the rados Python binding cannot be loaded ({ex}): "
            "install Debian's python3-rados"
        ) from ex

    store: ObjectStore = RadosStore(
        conffile=ic.ceph_conf,
        pool=ic.pool,
        namespace=ic.namespace,
        keyring=ic.keyring,
        client_name=ic.client_name,
        connect_timeout=ic.connect_timeout,
    )
    return store


def open_index(cfg: Config, *, create: bool = True, store: ObjectStore | None = None) -> ChangeIndex:
    """The change index described by ``[index]`` (created on first use unless ``create=False``)."""
    from changelog.index import ChangeIndex

    store = open_store(cfg) if store is None else store
    try:
        return ChangeIndex(store, shards=cfg.index.shards, prefix=cfg.index.prefix, mode=cfg.index.mode, create=create)
    except BaseException:
        store.close()
        raise


def target_options(tc: TargetConfig | BackupConfig) -> dict[str, Any]:
    """Keyword options for ``targets.make_target`` (credentials revealed: never log this)."""
    opts: dict[str, Any] = {
        "endpoint": tc.endpoint,
        "access_key": reveal(tc.access_key),
        "secret_key": reveal(tc.secret_key),
        "region": tc.region,
    }
    if isinstance(tc, TargetConfig):
        opts["addressing_style"] = tc.addressing_style
    return opts


def _make_target(url: str, opts: dict[str, Any]) -> Any:
    import inspect

    from changelog.targets import make_target

    params = inspect.signature(make_target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # Pass only what this version of make_target understands.
        opts = {k: v for k, v in opts.items() if k in params}
    return make_target(url, **opts)


def open_target(cfg: Config) -> Any:
    """The change-log target described by ``[target]`` (S3 bucket or local directory)."""
    tc = cfg.target
    if tc.url.startswith("file://"):
        Path(tc.url[len("file://") :]).mkdir(parents=True, exist_ok=True)
    return _make_target(tc.url, target_options(tc))


def open_backup_target(cfg: Config) -> Any:
    """The backup store described by ``[backup]``."""
    bc = cfg.backup
    if bc.url is None:
        raise ConfigError("backup.url is not set")
    if bc.url.startswith("file://"):
        Path(bc.url[len("file://") :]).mkdir(parents=True, exist_ok=True)
    return _make_target(bc.url, target_options(bc))


def collector_options(cfg: Config) -> dict[str, Any]:
    """Keyword options for ``collector.Collector`` from ``[collector]``."""
    c = cfg.collector
    return {
        "settle": c.settle,
        "lease_ttl": c.lease_ttl,
        "roll_bytes": c.roll_bytes,
        "roll_entries": c.roll_entries,
        "roll_seconds": c.roll_seconds,
        "part_bytes": c.part_bytes,
        "interval": c.interval,
        "compression": cfg.target.compression,
    }


def make_collector(cfg: Config, index: ChangeIndex, target: Any, **extra: Any) -> Any:
    """A ``collector.Collector`` for this config."""
    from changelog.collector import Collector

    return Collector(index, target, **{**collector_options(cfg), **extra})


__all__ = [
    "ApiConfig",
    "BackupConfig",
    "CollectorConfig",
    "Config",
    "IndexConfig",
    "LoggingConfig",
    "Secret",
    "SourceConfig",
    "TargetConfig",
    "load_config",
    "make_collector",
    "open_backup_target",
    "open_index",
    "open_store",
    "open_target",
    "parse_config",
    "reveal",
]
