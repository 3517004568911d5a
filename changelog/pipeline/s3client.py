"""The edge to boto3: the one factory of S3 clients (``make_s3_client``) and the one translation
of botocore errors into the project's errors. This is the only module that imports boto3; the
S3 users (``changelog.pipeline.targets``, ``changelog.consumers.backup.source``, the RGW follower's
``rgw_module.admin``) get their client here, each with its own timeouts, retries and pool. The
first two make their requests through ``s3_call``, which translates what they raise with
``translate_error`` or a refinement of it built on ``refusal`` (where an S3 answer means more
to them). ``rgw_module.admin`` still imports botocore itself: it signs admin REST requests with
botocore's SigV4, and reads its S3 errors with ``refusal`` into its own ``NotFound`` and
messages.

Translation is by HTTP status: 5xx, throttling, timeouts and connection errors become
``TransientError``; a missing key ``ObjectMissing``; access denied, a missing bucket, bad
credentials and other client errors ``PermanentError``. A server certificate that fails the check
(``verify`` / ``ca_bundle`` of the client's section) is a ``PermanentError`` of one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from changelog.errors import ChangelogError, ObjectMissing, PermanentError, TransientError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

AddressingStyle = Literal["auto", "path", "virtual"]
T = TypeVar("T")
# botocore's own default connection pool per client.
DEFAULT_POOL = 10


_insecure_lock = threading.Lock()
_insecure_said: set[str] = set()


def unverified(endpoint: str | None) -> None:
    """Say once per endpoint (WARNING) that its certificate is not checked (``verify = false``),
    in place of urllib3's warning on every request."""
    import urllib3

    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    key = endpoint or ""
    with _insecure_lock:
        if key in _insecure_said:
            return
        _insecure_said.add(key)
    if endpoint is None or endpoint.startswith("https://"):
        logger.warning("%s: verify = false: its TLS certificate is not checked", endpoint or "AWS S3")


class RequestExtras:
    """What boto3 does not model, added to the requests of the calls made in a block, in this
    thread: radosgw's ``rgwx-`` query parameters (``replication.rgwx``), its conditional-delete
    header (``lifecycle.executor``). ``given(values)`` sets them around the calls; a
    ``before-sign`` handler registered once per client (``enable``) applies them with ``apply``
    before SigV4 signs the request. A context variable, not an attribute of the client: the
    client is shared by threads, and s3transfer makes its calls in threads of its own (the
    caller sets the values in the thread that makes the call)."""

    def __init__(self, name: str, apply: Callable[[Any, Mapping[str, str]], None]) -> None:
        self._name = name
        self._apply = apply
        self._values: ContextVar[Mapping[str, str] | None] = ContextVar(name, default=None)

    def enable(self, client: Any) -> None:
        """Let ``given`` reach ``client``'s requests (idempotent)."""
        client.meta.events.register("before-sign.s3", self._before_sign, unique_id=self._name)

    def _before_sign(self, request: Any, **_: object) -> None:
        values = self._values.get()
        if values:
            self._apply(request, values)

    @contextlib.contextmanager
    def given(self, values: Mapping[str, str]) -> Iterator[None]:
        """``values`` on the requests of the calls made in this block, in this thread."""
        token = self._values.set(dict(values))
        try:
            yield
        finally:
            self._values.reset(token)


def make_s3_client(
    endpoint: str | None,
    *,
    access_key: str | None,
    secret_key: str | None,
    region: str | None,
    session_token: str | None = None,
    addressing_style: AddressingStyle = "path",
    verify: bool | str | None = None,
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    max_pool: int = DEFAULT_POOL,
) -> S3Client:
    """A boto3 S3 client for radosgw or AWS S3, in a session of its own (boto3's default
    session is not thread-safe to create clients from). ``endpoint`` None: AWS. Retries are
    botocore's "standard" mode (capped exponential backoff, ``max_attempts`` in all)."""
    import boto3
    from botocore.config import Config

    if verify is False:
        unverified(endpoint)
    config = Config(
        s3={"addressing_style": addressing_style},
        # Checksums only when an operation requires them: radosgw 16.x rejects the CRC trailers
        # that newer botocore (1.36 on) adds to every upload by default. The workaround lives
        # here only: every client of the project is made by this function.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        region_name=region,
        verify=verify,
        config=config,
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    """What an S3 error response says: HTTP status, error code and message."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        """``403 AccessDenied Access Denied``; the code once when radosgw sends no message (or
        the code as its message), which it often does."""
        message = "" if self.message == self.code else self.message
        return " ".join(part for part in (str(self.status), self.code, message) if part)


def refusal(ex: BaseException) -> Refusal | None:
    """The S3 error response behind ``ex``, None when it is not one (a transport error, or not
    from botocore at all)."""
    from botocore.exceptions import ClientError

    if not isinstance(ex, ClientError):
        return None
    err = ex.response.get("Error", {})
    status = int(ex.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return Refusal(status, str(err.get("Code", "")), str(err.get("Message", "") or ""))


_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


def untrusted_certificate(ex: BaseException) -> str | None:
    """A one-line "TLS certificate not trusted (why)" when ``ex`` is, or wraps (botocore wraps
    urllib3, which wraps ``ssl``), a failed check of the server's certificate; else None."""
    seen: set[int] = set()
    todo: list[BaseException] = [ex]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            why = e.verify_message or e.reason or str(e)
            return f"TLS certificate not trusted ({why})"
        kwargs = getattr(e, "kwargs", None)  # botocore keeps the wrapped error there
        nested = [*e.args, *(kwargs.values() if isinstance(kwargs, dict) else ()), e.__cause__, e.__context__]
        todo.extend(x for x in nested if isinstance(x, BaseException))
    return None


def tls_endpoint(ex: BaseException) -> str | None:
    """``scheme://host:port`` of the request behind a botocore ``SSLError``, if it says."""
    kwargs = getattr(ex, "kwargs", None)
    url = kwargs.get("endpoint_url") if isinstance(kwargs, dict) else None
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else None


def translate_error(ex: Exception, what: str) -> ChangelogError:
    """The project's error for a boto3/botocore failure of ``what`` (raise it ``from ex``)."""
    from botocore import exceptions as bex

    r = refusal(ex)
    if r is not None:
        text = f"{what}: {r}"
        if r.code in ("NoSuchKey", "NotFound") or (r.status == 404 and r.code == "404"):
            return ObjectMissing(text)
        if r.status >= 500 or r.status == 429 or r.code in _TRANSIENT_CODES:
            return TransientError(text)
        # 400, 403 (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch), 404 NoSuchBucket, ...
        return PermanentError(text)
    if isinstance(ex, bex.NoCredentialsError | bex.PartialCredentialsError | bex.ParamValidationError):
        return PermanentError(f"{what}: {ex}")
    untrusted = untrusted_certificate(ex)
    if untrusted is not None:
        # Retrying cannot help: the CA the client trusts is a matter of configuration.
        where = tls_endpoint(ex)
        return PermanentError(f"{what}: {where + ': ' if where else ''}{untrusted}: set ca_bundle to its CA's PEM file")
    if isinstance(ex, bex.BotoCoreError | OSError):
        # Connection errors, timeouts, truncated reads and the rest of what the library raises
        # below the HTTP layer: retrying may help; a persistent one shows up in the log.
        return TransientError(f"{what}: {ex}")
    return PermanentError(f"{what}: {ex}")


def s3_call(
    what: str, fn: Callable[[], T], translate: Callable[[Exception, str], ChangelogError] = translate_error
) -> T:
    """``fn()`` (one S3 request), with what the library raises translated by ``translate`` (the
    project's own errors pass through): every S3 user's one call wrapper."""
    try:
        return fn()
    except ChangelogError:
        raise
    except Exception as ex:
        raise translate(ex, what) from ex


class TranslatedBody(io.RawIOBase):
    """A GET response body whose read errors come out translated by ``translate`` (a
    connection dropped mid-body is a botocore error, raised from ``read``, not from the GET)."""

    def __init__(
        self,
        body: StreamingBody,
        what: str,
        translate: Callable[[Exception, str], ChangelogError] = translate_error,
    ) -> None:
        self._body = body
        self._what = what
        self._translate = translate

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data: bytes = self._body.read(len(view))
        except Exception as ex:
            raise self._translate(ex, self._what) from ex
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()
