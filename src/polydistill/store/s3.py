"""Stores on MinIO/S3 through the ``minio`` client: :class:`S3Store`, with its retry loop and the
translation of every client error into one :class:`~polydistill.store.errors.StoreError`."""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

import urllib3
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from .base import ObjectStore
from .credentials import ACCESS_KEY_VARS, SECRET_KEY_VARS, SESSION_TOKEN_VAR, redact
from .errors import (
    BucketNotFoundError,
    ObjectNotFoundError,
    StoreAccessDeniedError,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnreachableError,
)
from .local import _atomic_write
from .retry import DEADLINE_VAR, READ_TIMEOUT_VAR, RETRIES_VAR, RetryPolicy, Timeouts
from .s3_settings import ENDPOINT_VARS, SECURE_VARS, S3Settings, _make_client
from .uri import _clean_key, _parse_s3_uri, join_uri

logger = logging.getLogger(__package__)  # one logger for the package, named as before the split

T = TypeVar("T")

#: Smallest part minio (and S3) accepts for a multipart upload, in bytes.
MIN_PART_SIZE = 5 * 1024 * 1024
#: Default multipart part size in bytes; objects up to this size go up in one PUT.
DEFAULT_PART_SIZE = 64 * 1024 * 1024

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
_AUTH_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AccountProblem",
    }
)
# What the minio client and urllib3 raise; anything else (a bug, a local disk error) propagates as is.
_CLIENT_ERRORS = (
    MinioException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ValueError,
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "XMinioServerNotInitialized"}
)


class S3Store(ObjectStore):
    """A prefix in a bucket on MinIO/S3, through the ``minio`` client.

    ``part_size`` (bytes, >= 5 MiB) is both the multipart threshold and the part size: an object up to
    ``part_size`` goes up in one PUT, a larger one in parts of ``part_size``. ``settings`` default to
    :meth:`S3Settings.from_env`, ``retry`` to :meth:`RetryPolicy.from_env`. Opening checks that the
    bucket exists (creating it when ``create_bucket``), so a wrong endpoint, credentials or bucket are
    reported at once.
    """

    def __init__(
        self,
        uri: str,
        *,
        create_bucket: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        settings: S3Settings | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise StoreConfigError(f"part_size must be >= {MIN_PART_SIZE} bytes (5 MiB), got {part_size}")
        self.bucket, self.prefix = _parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.part_size = part_size
        settings = settings if settings is not None else S3Settings.from_env()
        self.endpoint_url = settings.endpoint_url
        self._region = settings.region
        self._retry = retry if retry is not None else RetryPolicy.from_env()
        self._timeouts = timeouts if timeouts is not None else Timeouts.from_env()
        self._client = _make_client(settings, self._timeouts)
        self._ensure_bucket(create_bucket)

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint_url!r})"

    def _ensure_bucket(self, create: bool) -> None:
        try:
            if self._call("check bucket", "", lambda: self._client.bucket_exists(self.bucket)):
                return
        except StoreAccessDeniedError:
            if not self.prefix:
                raise
            # A key scoped to a prefix may not look at the bucket itself (HeadBucket needs s3:ListBucket on
            # the bucket), as Kubeflow's per-profile keys. A HEAD's 403 has no body, so ask for an object under
            # the prefix: "no such key" means the key may use it; wrong or refused credentials raise here.
            probe = self._object_name(".polydistill-probe")
            with contextlib.suppress(ObjectNotFoundError):
                self._call("check prefix", ".polydistill-probe",
                           lambda: self._client.get_object(self.bucket, probe).close())
            logger.debug("not allowed to check bucket %s; prefix %s is usable", self.bucket, self.prefix)
            return
        if not create:
            raise BucketNotFoundError(
                f"bucket {self.bucket!r} does not exist at {self.endpoint_url} (opening {self.uri}): "
                "create it with --create-bucket (open_store(..., create_bucket=True)), or check the bucket "
                f"name and that {ENDPOINT_VARS[0]} points at the right server"
            )
        logger.info("creating bucket %s at %s", self.bucket, self.endpoint_url)
        try:
            self._call("create bucket", "", lambda: self._client.make_bucket(self.bucket, self._region))
        except StoreError:
            # Another process may have created it in between; that is success.
            if not self._call("check bucket", "", lambda: self._client.bucket_exists(self.bucket)):
                raise

    def _object_name(self, key: str, *, prefix: bool = False) -> str:
        key = _clean_key(key, self.uri, what="prefix" if prefix else "key", prefix=prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    def child(self, *parts: str) -> S3Store:
        """A store rooted at ``uri/parts...``, sharing this store's client (no new bucket check)."""
        new = object.__new__(S3Store)
        new.__dict__.update(self.__dict__)
        new.uri = join_uri(self.uri, *parts)
        new.prefix = new.uri[len(f"s3://{self.bucket}") :].strip("/")
        return new

    # -- operations ---------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        """Upload ``data`` to ``key``; S3 PUTs are atomic."""
        name = self._object_name(key)
        self._call(
            "put",
            key,
            lambda: self._client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), part_size=self.part_size
            ),
        )
        logger.debug("put %s (%d bytes)", self._describe(key), len(data))

    def put_file(self, key: str, path: str | Path) -> None:
        """Upload the local file ``path``; multipart in parts of ``part_size`` when it is larger."""
        name = self._object_name(key)
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cannot upload {path} to {self._describe(key)}: no such file")
        self._call(
            "put",
            key,
            lambda: self._client.fput_object(self.bucket, name, path, part_size=self.part_size),
        )
        logger.debug("uploaded %s to %s", path, self._describe(key))

    def get_bytes(self, key: str) -> bytes:
        """Download the object at ``key``."""
        name = self._object_name(key)

        def fetch() -> bytes:
            response = self._client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("get", key, fetch)

    def get_file(self, key: str, path: str | Path) -> None:
        """Download ``key`` to ``path`` through a temp file in the same directory, then rename."""
        name = self._object_name(key)
        dest = Path(path)

        def fetch() -> None:
            response = self._client.get_object(self.bucket, name)
            try:
                _atomic_write(dest, lambda f: _copy_stream(response.stream(1024 * 1024), f))
            finally:
                response.close()
                response.release_conn()

        self._call("get", key, fetch)

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        name = self._object_name(key)
        try:
            self._call("stat", key, lambda: self._client.stat_object(self.bucket, name))
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` below this store's root, recursive and sorted."""
        full = self._object_name(prefix, prefix=True)  # "root/" + prefix, or just prefix at bucket level
        strip = len(self.prefix) + 1 if self.prefix else 0

        def fetch() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=full or None, recursive=True)
            # Directory markers ("dir/") that some tools create are not objects.
            return [obj.object_name[strip:] for obj in objects if not obj.object_name.endswith("/")]

        return sorted(self._call("list", prefix, fetch))

    def size(self, key: str) -> int:
        """Size of ``key`` in bytes."""
        name = self._object_name(key)
        stat = self._call("stat", key, lambda: self._client.stat_object(self.bucket, name))
        return int(stat.size or 0)

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if missing."""
        name = self._object_name(key)
        with contextlib.suppress(ObjectNotFoundError):
            self._call("delete", key, lambda: self._client.remove_object(self.bucket, name))

    # -- retries and error translation --------------------------------------------------------------

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying transient failures within the deadline, and turn every client error into a
        StoreError."""
        policy = self._retry
        limits = self._timeouts
        deadline = time.monotonic() + limits.deadline
        for attempt in range(1, policy.attempts + 1):
            try:
                return fn()
            except _CLIENT_ERRORS as exc:
                transient, error = self._translate(op, key, exc, attempt)
                delay = policy.delay(attempt)
                # The next attempt may wait connect + read seconds: only start it if that fits.
                out_of_time = time.monotonic() + delay + limits.connect + limits.read > deadline
                if not transient or attempt == policy.attempts or out_of_time:
                    if transient and out_of_time and attempt < policy.attempts:
                        error = type(error)(
                            f"{error} (gave up within the {limits.deadline:g} s deadline per operation, "
                            f"{DEADLINE_VAR}; read timeout {limits.read:g} s, {READ_TIMEOUT_VAR})"
                        )
                    # Not chained: the client's exception text may quote request headers.
                    raise error from None
                logger.warning(
                    "%s %s failed (%s); retry %d of %d in %.2f s",
                    op,
                    self._describe(key),
                    redact(_summary(exc)),
                    attempt,
                    policy.attempts - 1,
                    delay,
                )
                policy.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _translate(self, op: str, key: str, exc: BaseException, attempt: int) -> tuple[bool, StoreError]:
        """(whether to retry, the StoreError to raise if not) for a client exception."""
        where = self._describe(key)
        endpoint = self.endpoint_url
        if isinstance(exc, S3Error):
            code = exc.code or ""
            detail = redact(f"{code}: {exc.message}" if exc.message else code)
            if code in _NOT_FOUND_CODES:
                return False, ObjectNotFoundError(
                    f"no object at {where}: check the key, or that the stage that writes it has run"
                )
            if code == "NoSuchBucket":
                return False, BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist at {endpoint} ({op} {where}): create it with "
                    "--create-bucket (open_store(..., create_bucket=True))"
                )
            if code == "SignatureDoesNotMatch":
                fix = f"the secret key is wrong: check {SECRET_KEY_VARS[0]} (or {SECRET_KEY_VARS[1]})"
            elif code == "InvalidAccessKeyId":
                fix = (
                    "the server does not know the access key: "
                    f"check {ACCESS_KEY_VARS[0]} (or {ACCESS_KEY_VARS[1]})"
                )
            elif code in ("InvalidToken", "ExpiredToken"):
                fix = f"the session token is invalid or expired: refresh or unset {SESSION_TOKEN_VAR}"
            elif code in _AUTH_CODES:
                prefix = f"{self.prefix}/" if self.prefix else ""
                return False, StoreAccessDeniedError(
                    f"{op} {where} at {endpoint} was refused ({detail}): access denied to bucket "
                    f"{self.bucket!r}, prefix {prefix!r}: check {ACCESS_KEY_VARS[0]}/{SECRET_KEY_VARS[0]} and that "
                    "this key may read and write there. On Kubeflow 1.11 a profile's key (Secret "
                    "mlpipeline-minio-artifact) may only use mlpipeline/private/<namespace>/, mlpipeline/shared/ "
                    "and the artifact prefixes, and create no bucket: use "
                    "s3://mlpipeline/private/NAMESPACE/polydistill (the pipeline's default on Kubeflow)"
                )
            else:
                fix = ""
            if fix:
                return False, StoreAuthError(f"{op} {where} at {endpoint} was refused ({detail}): {fix}")
            if code == "InvalidBucketName":
                return False, StoreConfigError(f"{self.bucket!r} is not a valid bucket name ({where})")
            status = exc.response.status if exc.response is not None else 0
            transient = code in _TRANSIENT_CODES or status >= 500 or status == 429
            return transient, StoreError(f"{op} {where} at {endpoint} failed ({detail}, HTTP {status})")
        if isinstance(exc, ServerError):
            status = exc.status_code
            transient = status >= 500 or status == 429
            return transient, StoreError(
                f"{op} {where} at {endpoint} failed with HTTP {status} after {attempt} attempt(s)"
            )
        if isinstance(exc, InvalidResponseError):
            return False, StoreError(
                f"{op} {where}: {endpoint} did not answer like an S3 server ({redact(str(exc))[:300]}): "
                f"check that {ENDPOINT_VARS[0]} points at the MinIO/S3 API port"
            )
        if isinstance(exc, ValueError):
            return False, StoreConfigError(f"{op} {where}: {redact(str(exc))}")
        reason: BaseException = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
        if isinstance(reason, SSLError):
            return False, StoreConfigError(
                f"TLS handshake with {endpoint} failed for {where} ({_summary(reason)}): if the server "
                f"speaks plain HTTP use an http:// endpoint or {SECURE_VARS[0]}=false; if it uses a private "
                "CA set SSL_CERT_FILE"
            )
        connect_failed = isinstance(reason, (NewConnectionError, ConnectTimeoutError))
        transient_io = isinstance(
            reason,
            (ProtocolError, ReadTimeoutError, ConnectionError, TimeoutError, http.client.HTTPException),
        )
        if connect_failed or transient_io or isinstance(exc, MaxRetryError):
            what = "cannot reach" if connect_failed else "lost the connection to"
            return True, StoreUnreachableError(
                f"{op} {where}: {what} {endpoint} after {attempt} attempt(s) ({redact(_summary(reason))}): "
                f"check {ENDPOINT_VARS[0]}/{ENDPOINT_VARS[1]} and that the server is running and reachable "
                "from here (on a laptop: kubectl port-forward -n kubeflow svc/minio-service 9000:9000); "
                f"{RETRIES_VAR} sets the number of attempts"
            )
        return False, StoreError(f"{op} {where} at {endpoint} failed: {redact(_summary(exc))}")


def _summary(exc: BaseException) -> str:
    """A one-line description of an exception, innermost useful cause first."""
    inner = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
    # NewConnectionError wraps the socket error; name it ("Connection refused") rather than the pool.
    text = str(inner)
    if isinstance(inner, NewConnectionError) and ": " in text:
        text = text.rsplit(": ", 1)[-1]
    return f"{type(inner).__name__}: {text}"


def _copy_stream(chunks: Iterator[bytes], out: BinaryIO) -> None:
    for chunk in chunks:
        out.write(chunk)
