"""The value types of the configuration (``changelog.config``): ``Secret``, the annotated pydantic
types every key is declared with, and the one translation of a pydantic ``ValidationError``
into the one-line ``ConfigError`` an operator reads (``collector.settle must be a number (got
"ten")``, with a "did you mean" for typos).

Type errors and ranges are pydantic's own (strict types, ``Field(ge=...)``); they are worded
here, once, from the error's type and location. Checks pydantic has no word for (URLs, listen
addresses, sizes, ...) raise ``invalid(...)``, whose text is used as it stands.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from changelog.errors import ConfigError

MASK = "****"
ENV_SUFFIX = "_env"
# Pydantic error types of our own: "config" is worded after the key's name, "config_line" is a
# whole message that already names its keys (checks across keys and sections).
KEY_ERROR = "config"
LINE_ERROR = "config_line"


class Secret:
    """A credential: masked in ``repr``/``str`` (so it never reaches a log line or a traceback
    by accident); ``reveal()`` returns the value. A config key typed ``Secret`` accepts a string
    (or a ``Secret``)."""

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

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(_to_secret)


def _to_secret(v: object) -> Secret:
    if isinstance(v, Secret):
        return v
    if isinstance(v, str):
        return Secret(v)
    raise invalid(f"must be a string (got {shown(v)})")


def reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()


# --------------------------------------------------------------------------- wording


def invalid(text: str, *, line: bool = False) -> PydanticCustomError:
    """An error for a validator to raise: ``text`` follows the key's name, or (``line``) is the
    whole message."""
    # The text goes through the context, not the template, so braces a user typed stay as typed.
    return PydanticCustomError(LINE_ERROR if line else KEY_ERROR, "{text}", {"text": text})


def shown(v: object) -> str:
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


def suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _num(v: object) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:g}" if isinstance(v, float) else str(v)
    return shown(v)


# What a pydantic error type means for a TOML value ("{got}" is the value as written).
_WORDING = {
    "float_type": "must be a number (got {got})",
    "float_parsing": "must be a number (got {got})",
    "finite_number": "must be a number (got {got})",
    "int_type": "must be an integer (got {got})",
    "int_from_float": "must be an integer (got {got})",
    "int_parsing": "must be an integer (got {got})",
    "bool_type": "must be true or false (got {got})",
    "bool_parsing": "must be true or false (got {got})",
    "string_type": "must be a string (got {got})",
    "tuple_type": "must be a list of strings (got {got})",
    "list_type": "must be a list of strings (got {got})",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least"),
    "less_than_equal": ("le", "must be at most"),
    "greater_than": ("gt", "must be greater than"),
    "less_than": ("lt", "must be less than"),
}


class Unit:
    """Annotation marker: the unit named after a bound (``must be at least 1024 bytes``)."""

    def __init__(self, name: str) -> None:
        self.name = name


def _key_name(loc: Sequence[int | str]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _field_info(models: Mapping[str, type[BaseModel]], loc: Sequence[int | str]) -> tuple[type[BaseModel] | None, str]:
    """The section model and the key an error location points into (``("collector", "settle")``)."""
    model = models.get(str(loc[0])) if loc else None
    return model, (str(loc[1]) if len(loc) > 1 else "")


def _table_at(models: Mapping[str, type[BaseModel]], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model of the table at ``loc``: a section (``("collector",)``), or one nested in it,
    through list items (``("replication", "sites", 0)``); None where that is no model."""
    model = models.get(str(loc[0])) if loc else None
    for part in loc[1:]:
        if model is None:
            return None
        if isinstance(part, int):
            continue  # an item of the list the previous key held: its model was taken there
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return model


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside a list, tuple or Optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def known_keys(model: type[BaseModel]) -> list[str]:
    """The keys a section accepts: its fields, then ``<secret>_env`` for each secret."""
    secrets = [n for n, f in model.model_fields.items() if _is_secret(f.annotation)]
    return list(model.model_fields) + [n + ENV_SUFFIX for n in secrets]


def _is_secret(annotation: object) -> bool:
    return annotation is Secret or Secret in get_args(annotation)


def _choices(model: type[BaseModel] | None, key: str) -> tuple[str, ...]:
    if model is None or key not in model.model_fields:
        return ()
    annotation = model.model_fields[key].annotation
    return tuple(str(a) for a in get_args(annotation)) if get_origin(annotation) is Literal else ()


def _unit(model: type[BaseModel] | None, key: str) -> str:
    if model is None or key not in model.model_fields:
        return ""
    marks = [m for m in model.model_fields[key].metadata if isinstance(m, Unit)]
    return f" {marks[0].name}" if marks else ""


def describe(err: ErrorDetails, models: Mapping[str, type[BaseModel]]) -> str:
    """One line for one pydantic error of a whole-config validation (locations start with the
    section)."""
    loc, kind, got, ctx = err["loc"], err["type"], err["input"], err.get("ctx") or {}
    name = _key_name(loc)
    model, key = _field_info(models, loc)
    if kind == LINE_ERROR:
        return str(ctx["text"])
    if kind == KEY_ERROR:
        return f"{name} {ctx['text']}"
    if len(loc) == 1 and kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"[{name}] must be a table (got {shown(got)})"
    if kind == "extra_forbidden":
        table = _table_at(models, loc[:-1])
        return f"unknown key {name}{suggest(str(loc[-1]), known_keys(table)) if table else ''}"
    if kind == "literal_error":
        choices = _choices(model, key)
        if not isinstance(got, str):
            return f"{name} must be a string (got {shown(got)})"
        return f"{name} must be one of {', '.join(choices)} (got {shown(got)}){suggest(got, choices)}"
    if kind in _BOUNDS:
        bound, words = _BOUNDS[kind]
        unit = _unit(model, key)
        return f"{name} {words} {_num(ctx[bound])}{unit} (got {_num(got)})"
    if kind in _WORDING:
        return f"{name} {_WORDING[kind].format(got=shown(got))}"
    return f"{name}: {err['msg']}"


def config_error(ex: ValidationError, models: Mapping[str, type[BaseModel]]) -> ConfigError:
    """The ``ConfigError`` for the first thing wrong in a whole config (one line)."""
    return ConfigError(describe(ex.errors()[0], models))


# --------------------------------------------------------------------------- value helpers

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
    """``"127.0.0.1:9480"``, ``"[::1]:9480"``, ``":9480"`` -> (host, port); ValueError if not."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(listen)
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


# --------------------------------------------------------------------------- validators


def _nonempty(v: str) -> str:
    if not v:
        raise invalid("must not be empty")
    return v


def _pattern(regex: str, text: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if not re.fullmatch(regex, v):
            raise invalid(f"may hold only {text} (got {shown(v)})")
        return v

    return check


def _abs_path(v: str) -> str:
    return str(Path(_nonempty(v)).expanduser().absolute())


def _http_url(v: str) -> str:
    m = re.match(r"^([a-z][a-z0-9+.-]*)://([^/\s]+)", v)
    if not m or m.group(1) not in ("http", "https"):
        raise invalid(f'must be an http:// or https:// URL such as "http://127.0.0.1:7480" (got {shown(v)})')
    return v.rstrip("/")


def _target_url(v: str) -> str:
    if v.startswith("s3://"):
        bucket = v[5:].split("/", 1)[0]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", bucket):
            raise invalid(f'must be "s3://bucket/prefix/" with a valid bucket name (got {shown(v)})')
        return v
    if v.startswith("file://"):
        raw = v[len("file://") :]
        if not raw:
            raise invalid(f'must name a directory: "file:///dir/" (got {shown(v)})')
        return "file://" + str(Path(raw).expanduser().absolute()) + "/"
    raise invalid(f"must start with s3:// or file:// (got {shown(v)})")


def _listen(v: str) -> str:
    try:
        host, _port = split_listen(v)
        if host not in ("0.0.0.0", "localhost", "::"):
            ipaddress.ip_address(host)
    except ValueError:
        raise invalid(f'must be "ADDRESS:PORT" such as "127.0.0.1:9480" (got {shown(v)})') from None
    return v


def _level(v: str) -> str:
    if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise invalid(f"must be one of DEBUG, INFO, WARNING, ERROR (got {shown(v)})")
    return v.upper()


def _size(v: object) -> object:
    if isinstance(v, str):
        size = parse_size(v)
        if size is not None:
            return size
    elif isinstance(v, int) and not isinstance(v, bool):
        return v
    raise invalid(f'must be a size in bytes, or a string such as "64MiB" (got {shown(v)})')


def _duration(v: object) -> object:
    """Seconds: a number, or a string such as "2d", "12h", "90m", "1w"."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", v)):
        return float(m.group(1)) * units[m.group(2) or "s"]
    raise invalid(f'must be a duration in seconds, or a string such as "2d", "12h", "30m" (got {shown(v)})')


def _string_list(v: object) -> object:
    if not isinstance(v, list | tuple):
        raise invalid(f"must be a list of strings (got {shown(v)})")
    return v


def _name_item(v: object) -> object:
    # A bucket name: a tenant's bucket is "tenant/bucket" (radosgw's admin spelling; a bare name
    # is the bucket of no tenant). The S3 spelling "tenant:bucket" would match nothing.
    if not isinstance(v, str) or not v:
        raise invalid(f"must be a non-empty string (got {shown(v)})")
    if ":" in v:
        raise invalid(f"names a tenant's bucket as tenant/bucket, not tenant:bucket (got {shown(v)})")
    tenant, slash, bucket = v.partition("/")
    if slash and (not bucket or "/" in bucket or not _TENANT.fullmatch(tenant)):
        raise invalid(f"must be a bucket name or tenant/bucket (got {shown(v)})")
    return v


# radosgw's tenant names: letters, digits and underscore.
_TENANT = re.compile(r"[A-Za-z0-9_]+")


def _string_item(v: object) -> object:
    if not isinstance(v, str):
        raise invalid(f"must be a non-empty string (got {shown(v)})")
    return v


def _network(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise invalid(f'must be an address or network such as "10.0.0.0/8" (got {shown(v)})') from None
    return v


def _prefix_table(v: object) -> object:
    if not isinstance(v, Mapping):
        raise invalid(f'must be a table of bucket = ["prefix", ...] (got {shown(v)})')
    return dict(v)


def _prefix_list(v: object) -> object:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not all(isinstance(p, str) for p in v):
        raise invalid(f"must be a list of key prefixes (got {shown(v)})")
    return tuple(v)


def _frozen_table(v: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(dict(v))


# --------------------------------------------------------------------------- annotated types
#
# Strict: TOML has real booleans, integers and floats, so ``"16"``, ``16.0`` for an integer and
# ``1`` for a boolean are mistakes to report, not values to coerce. An integer is a number.

def _object_info(v: object) -> object:
    # The former boolean flag: true asked for HEADs, false for nothing.
    if v is True:
        return "head"
    if v is False:
        return "none"
    return v


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Integer = Annotated[int, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True)]
NonEmpty = Annotated[str, Field(strict=True), AfterValidator(_nonempty)]
# A file or directory; relative paths are taken from the working directory when loaded.
PathStr = Annotated[str, Field(strict=True), AfterValidator(_abs_path)]
HttpUrl = Annotated[str, Field(strict=True), AfterValidator(_http_url)]
# s3://bucket/prefix/ or file:///dir/ (made absolute, with a trailing slash).
TargetUrl = Annotated[str, Field(strict=True), AfterValidator(_target_url)]
Listen = Annotated[str, Field(strict=True), AfterValidator(_listen)]
Level = Annotated[str, Field(strict=True), AfterValidator(_level)]
# Bytes: an integer or a string such as "64MiB"; bounds are reported in bytes.
Size = Annotated[int, BeforeValidator(_size), Field(strict=True), Unit("bytes")]
Duration = Annotated[float, BeforeValidator(_duration), Field(strict=True, allow_inf_nan=False)]
_Name = Annotated[str, BeforeValidator(_name_item)]
Names = Annotated[tuple[_Name, ...], BeforeValidator(_string_list)]
# radosgw user ids as a bucket index records a writer ("user", "tenant$user", an account id).
_UserId = Annotated[str, BeforeValidator(_string_item), AfterValidator(_nonempty)]
UserIds = Annotated[tuple[_UserId, ...], BeforeValidator(_string_list)]
_Network = Annotated[str, BeforeValidator(_string_item), AfterValidator(_network)]
Networks = Annotated[tuple[_Network, ...], BeforeValidator(_string_list)]
_Prefixes = Annotated[tuple[str, ...], BeforeValidator(_prefix_list)]
# bucket -> key prefixes, read-only (a bare string is a list of one).
Prefixes = Annotated[Mapping[str, _Prefixes], BeforeValidator(_prefix_table), AfterValidator(_frozen_table)]


def pattern(regex: str, text: str) -> AfterValidator:
    """A validator for a ``Text`` key that may hold only ``text`` (``regex``)."""
    return AfterValidator(_pattern(regex, text))
# How a write record gets its size and etag (``SourceConfig.object_info``).
ObjectInfo = Annotated[Literal["index", "head", "none"], BeforeValidator(_object_info)]
