"""The base of every configuration section (``changelog.config`` holds the file's sections;
a consumer may declare its own section beside its code, e.g. ``[lifecycle]``): frozen pydantic
models that refuse unknown keys, read ``*_env`` secrets from the environment, and, for sections
with S3 credentials, check both keys and the CA bundle. ``unchecked`` builds one for tests."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Self, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from changelog.config_types import ENV_SUFFIX, Flag, PathStr, Secret, invalid, known_keys, shown


class _Model(BaseModel):
    # Sections built in code raise pydantic's ValidationError; keep the inputs out of its text
    # (and so out of tracebacks in the log): they may be secrets.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    @classmethod
    def unchecked(cls, **values: object) -> Self:
        """For tests only: build without any check, so that values an operator may not set (a
        0.5 s lease, a 10 ms interval) can be used. Unknown names are still refused; lists
        become tuples, tables read-only mappings, integers floats where a float is declared;
        keys not given take their defaults."""
        out: dict[str, object] = {}
        for key, v in values.items():
            if key not in cls.model_fields:
                raise TypeError(f"{cls.__name__} has no key {key!r}")
            out[key] = _plain(v, cls.model_fields[key].annotation)
        return cls.model_construct(None, **out)


def _plain(v: object, annotation: object) -> object:
    if isinstance(annotation, type) and issubclass(annotation, _Model) and isinstance(v, Mapping):
        return annotation.unchecked(**v)
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, Mapping):
        return MappingProxyType({k: tuple(x) if isinstance(x, list | tuple) else (x,) for k, x in v.items()})
    if isinstance(v, int) and not isinstance(v, bool) and (annotation is float or float in get_args(annotation)):
        return float(v)
    if isinstance(v, str) and Secret in get_args(annotation):
        return Secret(v)
    return v


class Section(_Model):
    """A section of the file (``section`` is its name there). Keys ending in ``_env`` name the
    environment variable a secret is read from (the environment is the validation context's
    ``env``, else ``os.environ``)."""

    section: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_env(cls, data: object, info: ValidationInfo) -> object:
        if not isinstance(data, dict):
            return data
        ctx = info.context
        env: Mapping[str, str] = ctx["env"] if isinstance(ctx, dict) and "env" in ctx else os.environ
        secrets = {k[: -len(ENV_SUFFIX)] for k in known_keys(cls) if k.endswith(ENV_SUFFIX)}
        out = dict(data)
        for key, v in data.items():
            base = key[: -len(ENV_SUFFIX)] if isinstance(key, str) and key.endswith(ENV_SUFFIX) else None
            if base not in secrets:
                continue
            name = f"{cls.section}.{key}"
            if base in data:
                raise invalid(f"set {cls.section}.{base} or {name}, not both", line=True)
            if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
                raise invalid(f"{name} must name an environment variable (got {shown(v)})", line=True)
            if v not in env:
                raise invalid(f"{name} names ${v}, which is not set in the environment", line=True)
            del out[key]
            out[base] = Secret(env[v], source="$" + v)
        return out


class S3Section(Section):
    """A section with S3 credentials (both keys or neither) and TLS settings: ``verify`` (check
    the server's certificate, default true) and ``ca_bundle`` (a PEM file of the CAs to trust,
    e.g. a private CA; default: the system's)."""

    verify: Flag = True
    ca_bundle: PathStr | None = None

    @property
    def tls_verify(self) -> bool | str:
        """What an HTTP client takes as ``verify``: False, the CA bundle's path, or True."""
        if not self.verify:
            return False
        return self.ca_bundle if self.ca_bundle is not None else True

    @field_validator("ca_bundle")
    @classmethod
    def _readable_bundle(cls, v: str | None) -> str | None:
        # Checked here, so that a wrong path is one line at start-up rather than a TLS error on
        # the first request (where botocore and urllib3 word it differently).
        if v is not None:
            problem = _ca_bundle_problem(v)
            if problem:
                raise invalid(f"{cls.section}.ca_bundle: {v} {problem}", line=True)
        return v

    @model_validator(mode="after")
    def _both_keys(self) -> Self:
        access, secret = getattr(self, "access_key", None), getattr(self, "secret_key", None)
        if (access is None) != (secret is None):
            have, missing = ("access_key", "secret_key") if secret is None else ("secret_key", "access_key")
            sec = self.section
            raise invalid(f"{sec}.{have} is set but {sec}.{missing} is not: set both (or neither)", line=True)
        return self


def _ca_bundle_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as a CA bundle (None: it loads, with at least one CA)."""
    try:
        ctx = ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return "not found"
    except IsADirectoryError:
        return "is a directory, not a PEM file"
    except PermissionError:
        return "cannot be read (permission denied)"
    except (ssl.SSLError, ValueError, OSError) as ex:
        return f"is not a PEM file of CA certificates ({getattr(ex, 'reason', None) or ex})"
    # Any certificate counts: OpenSSL also trusts a self-signed server certificate given here.
    if not ctx.cert_store_stats()["x509"]:
        return "holds no certificate"
    return None
