"""Object store layer: one small interface over MinIO/S3 buckets and local directories.

Every stage reads and writes its datasets and checkpoints through an :class:`ObjectStore` opened with
:func:`open_store`. Two kinds of URI are accepted:

``s3://bucket/prefix``
    A bucket on MinIO (or any S3-compatible server), reached through the ``minio`` client.
``file:///absolute/path`` or a plain local path
    A directory on the local disk (created if missing); the embedded default for laptop runs.

Keys are relative, ``/``-separated paths (``buffers/pong/manifest.json``); they may not contain ``.``,
``..`` or empty segments, nor start with ``/``, so a key can never escape its store's root.

Environment for ``s3://`` URIs
------------------------------
``MINIO_ENDPOINT`` or ``AWS_ENDPOINT_URL`` (required; ``MINIO_ENDPOINT`` wins when both are set)
    The server, as ``http://host:port``, ``https://host:port`` or ``host:port``. A scheme decides TLS.
``MINIO_SECURE`` or ``AWS_S3_SECURE`` (optional, ``true``/``false``, default ``false``)
    Whether to use TLS when the endpoint is a plain ``host:port``.
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ACCESS_KEY`` and ``MINIO_SECRET_KEY``)
    The credentials; the ``AWS_*`` names win when both are set. ``AWS_SESSION_TOKEN`` is passed on if set.
    Without any, requests are sent unsigned (anonymous).
``AWS_REGION`` (optional)
    The bucket's region. When unset, the region is asked from the server once per bucket.
``POLYDISTILL_STORE_RETRIES`` (optional, integer >= 1, default 5)
    Attempts per operation. Transient failures (connection refused or reset, timeouts, HTTP 5xx,
    ``SlowDown``) are retried with exponential backoff: 0.2 s, 0.4 s, 0.8 s ... capped at 5 s, each
    multiplied by a random factor in [0.5, 1]. With the default, an unreachable endpoint is reported
    after at most about 3 s of waiting.
``POLYDISTILL_STORE_CONNECT_TIMEOUT`` (seconds, default 5), ``POLYDISTILL_STORE_READ_TIMEOUT`` (seconds,
default 20), ``POLYDISTILL_STORE_DEADLINE`` (seconds, default 55)
    Bounded waits, all read by :meth:`Timeouts.from_env` (the one place they are set): the TCP connect
    timeout, the longest wait for any byte of a response, and the total time one store operation may
    take with its retries. No attempt starts unless its connect + read timeouts fit before the deadline,
    so a server that stops answering (a frozen process, a dead link) is reported as one
    :class:`StoreUnreachableError` within the deadline.

On Kubeflow, the credentials come from the Secret ``mlpipeline-minio-artifact`` (keys ``accesskey`` and
``secretkey``) mapped to ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, and the endpoint is
``http://minio-service.kubeflow:9000``.

Errors are :class:`StoreError` subclasses whose messages name the URI and say how to fix the problem.
Credentials never appear in messages, reprs, log lines or ``uri`` (see :func:`redact`).
"""

from __future__ import annotations

import abc
import contextlib
import http.client
import io
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from polydistill.errors import PolydistillError

from .redaction import redact_uri

__all__ = [
    "BucketNotFoundError",
    "LocalStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "RetryPolicy",
    "S3Settings",
    "S3Store",
    "StoreAuthError",
    "StoreConfigError",
    "StoreError",
    "StoreUnreachableError",
    "Timeouts",
    "check_store_uri",
    "join_uri",
    "open_store",
    "redact",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT_VARS = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL")
SECURE_VARS = ("MINIO_SECURE", "AWS_S3_SECURE")
ACCESS_KEY_VARS = ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY")
SECRET_KEY_VARS = ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY")
SESSION_TOKEN_VAR = "AWS_SESSION_TOKEN"
REGION_VAR = "AWS_REGION"
RETRIES_VAR = "POLYDISTILL_STORE_RETRIES"
CONNECT_TIMEOUT_VAR = "POLYDISTILL_STORE_CONNECT_TIMEOUT"
READ_TIMEOUT_VAR = "POLYDISTILL_STORE_READ_TIMEOUT"
DEADLINE_VAR = "POLYDISTILL_STORE_DEADLINE"

#: Smallest part minio (and S3) accepts for a multipart upload, in bytes.
MIN_PART_SIZE = 5 * 1024 * 1024
#: Default multipart part size in bytes; objects up to this size go up in one PUT.
DEFAULT_PART_SIZE = 64 * 1024 * 1024
#: Default seconds to wait for a TCP connection; short so a wrong endpoint fails fast.
CONNECT_TIMEOUT_S = 5.0
#: Default seconds to wait for any byte of a response (MinIO answers a shard PUT or a multipart completion
#: well within this; a server that says nothing for this long is treated as gone).
READ_TIMEOUT_S = 20.0
#: Default total seconds per store operation, retries included (the issue's bar: an error within 60 s).
DEADLINE_S = 55.0

_ACCEPTED_FORMS = "s3://bucket/prefix, file:///absolute/path or a plain local path"
_ENDPOINT_HINT = f"set {ENDPOINT_VARS[0]} (or {ENDPOINT_VARS[1]}) to http://host:port or https://host:port"
# Keys: NUL and other control characters are refused (they are never meant, and some servers and file
# systems treat them differently); S3 caps keys at 1,024 bytes, file systems a name at 255, and a local
# write's temporary name adds about 30 characters to the last segment.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 200
# Suffix of LocalStore's temporary files; list() hides them.
_TMP_SUFFIX = ".polydistill-tmp"
# Values shorter than this are not redacted: replacing every "ab" in a message would garble it and a
# two-character secret protects nothing anyway.
_MIN_REDACT_LEN = 4
# Secrets handed to S3Settings directly rather than through the environment, so redact() knows them too.
_known_secrets: set[str] = set()
_secrets_lock = threading.Lock()


class StoreError(PolydistillError, RuntimeError):
    """Base class of every object-store error; the message names the URI and says how to fix it."""


class StoreConfigError(StoreError):
    """A bad URI, key or environment variable (missing endpoint, unparsable value)."""


class StoreAuthError(StoreError):
    """The server rejected the credentials (wrong access key or secret key, or no permission)."""


class StoreAccessDeniedError(StoreAuthError):
    """Valid credentials that may not do this here (S3 ``AccessDenied``), e.g. a key scoped to a prefix."""


class StoreUnreachableError(StoreError):
    """The server could not be reached (connection refused, DNS failure, timeout) after all retries."""


class BucketNotFoundError(StoreError):
    """The bucket does not exist; open the store with ``create_bucket=True`` (``--create-bucket``)."""


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """The object does not exist; also a :class:`FileNotFoundError` so callers can catch either."""


def redact(text: str) -> str:
    """Return ``text`` with every credential value replaced by ``***``.

    The values are those of the credential environment variables (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``MINIO_ACCESS_KEY``, ``MINIO_SECRET_KEY``, ``AWS_SESSION_TOKEN``) and
    any credentials passed to :class:`S3Settings` directly. Values shorter than 4 characters are left
    alone.
    """
    with _secrets_lock:
        secrets = set(_known_secrets)
    for name in (*ACCESS_KEY_VARS, *SECRET_KEY_VARS, SESSION_TOKEN_VAR):
        value = os.environ.get(name)
        if value:
            secrets.add(value)
    return redact_uri(text, (s for s in secrets if len(s) >= _MIN_REDACT_LEN))


def _clean_key(key: str, uri: str, *, what: str = "key", prefix: bool = False) -> str:
    """Validate a relative '/'-separated key and return it; ``prefix`` allows '' and a trailing '/'."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, got {type(key).__name__}")
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return key
    segments = body.split("/")
    bad = (
        key.startswith("/")
        or "\\" in key
        or _CONTROL_CHARS.search(key) is not None
        or any(segment in ("", ".", "..") for segment in segments)
    )
    shown = repr(key) if len(key) <= 80 else repr(key[:77]) + "..."
    if bad:
        raise StoreConfigError(
            f"invalid {what} {shown} for {uri}: use a relative '/'-separated path without '.', '..' or "
            "empty segments, backslashes or control characters, not starting with '/' (keys may not escape "
            "the store's root)"
        )
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES or any(
        len(seg.encode("utf-8", "surrogatepass")) > _MAX_SEGMENT_BYTES for seg in segments
    ):
        raise StoreConfigError(
            f"invalid {what} {shown} for {uri}: keys are at most {_MAX_KEY_BYTES} bytes and each segment at "
            f"most {_MAX_SEGMENT_BYTES} (within S3's and local file systems' limits)"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreConfigError(f"invalid {what} {shown} for {uri}: not valid Unicode (a lone surrogate)") from None
    return key


def _check_local_path(path: str, shown: str) -> str:
    """``path`` if it is a local store path with no '.' or '..' segment (which would be collapsed and could
    leave the directory the user named), else a one-line :class:`StoreConfigError`."""
    if "\x00" in path:
        raise StoreConfigError(f"{shown!r} contains a NUL byte: give a plain directory path")
    segments = path.replace(os.sep, "/").split("/")
    if any(seg in (".", "..") for seg in segments[1:]) or (segments and segments[0] == ".."):
        raise StoreConfigError(
            f"{shown!r} has a '.' or '..' segment: give the directory without them (an absolute path, "
            "e.g. file:///data/store), so the store cannot resolve outside the path you named"
        )
    return path


def check_store_uri(uri: str) -> str:
    """Validate a store URI without touching the network or the disk; returns it stripped.

    Refuses, with a one-line :class:`StoreConfigError` that names the (credential-free) URI: an empty URI,
    an unknown scheme, credentials in the URI, a bad bucket name, and any '.', '..' or empty segment (or
    backslash, NUL) in the prefix or path, for ``s3://`` and ``file://`` and plain paths alike. Used by
    :func:`open_store` and by ``submit`` before anything is sent.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StoreConfigError(f"empty store URI: use {_ACCEPTED_FORMS}")
    uri = uri.strip()
    if "://" not in uri:
        _check_local_path(uri, _safe_uri(uri))
        return uri
    scheme = uri.split("://", 1)[0].lower()
    shown = _safe_uri(uri)
    if scheme == "s3":
        _parse_s3_uri(uri)
        return uri
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError(f"{shown!r} names a host: file URIs are local, write file:///absolute/path")
        if parts.query or parts.fragment:
            raise StoreConfigError(f"{shown!r} has a query or fragment: write file:///absolute/path")
        path = url2pathname(unquote(parts.path))
        if not os.path.isabs(path):
            raise StoreConfigError(f"{shown!r} is not absolute: write file:///absolute/path")
        _check_local_path(path, shown)
        return uri
    raise StoreConfigError(f"unsupported store URI {shown!r}: use {_ACCEPTED_FORMS}")


def join_uri(uri: str, *parts: str) -> str:
    """Join ``parts`` onto ``uri`` with single '/' separators, e.g. ``join_uri("s3://b/p", "x/y")``.

    Empty parts are skipped; a part with a '.' or '..' segment or a leading '/' raises
    :class:`StoreConfigError`.
    """
    result = uri
    while result.endswith("/") and not result.endswith("://"):  # keep the "//" of "file:///"
        result = result[:-1]
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        _clean_key(part, uri, what="path part")
        result = f"{result}/{part}"
    return result


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise StoreConfigError(f"{name}={value!r} is not a boolean: set it to 'true' or 'false'")


def _first_env(names: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The first of ``names`` that is set to a non-empty value, as (name, value)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None, None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    ``attempts`` counts tries (1 means no retry); the wait before retry ``n`` (1-based) is
    ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds times a random factor in [0.5, 1].
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise StoreConfigError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise StoreConfigError("retry delays must be >= 0 seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The default policy, with ``attempts`` from ``POLYDISTILL_STORE_RETRIES`` when set."""
        environ = os.environ if environ is None else environ
        raw = environ.get(RETRIES_VAR, "").strip()
        if not raw:
            return cls()
        try:
            attempts = int(raw)
        except ValueError:
            attempts = 0
        if attempts < 1:
            raise StoreConfigError(f"{RETRIES_VAR}={raw!r} is invalid: set it to an integer >= 1 (default 5)")
        return cls(attempts=attempts)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


def _env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise StoreConfigError(f"{name}={raw!r} is invalid: set it to a number of seconds > 0 (default {default:g})")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Bounded waits of every S3 request, in seconds (see the module docstring).

    ``connect``: TCP connect; ``read``: longest silence while waiting for response bytes; ``deadline``:
    total per store operation with its retries (an attempt only starts if ``connect + read`` fit in what
    is left of it).
    """

    connect: float = CONNECT_TIMEOUT_S
    read: float = READ_TIMEOUT_S
    deadline: float = DEADLINE_S

    def __post_init__(self) -> None:
        if not (self.connect > 0 and self.read > 0 and self.deadline > 0):
            raise StoreConfigError(f"store timeouts must be > 0 seconds, got {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timeouts:
        """The defaults, overridden by ``POLYDISTILL_STORE_CONNECT_TIMEOUT`` / ``_READ_TIMEOUT`` /
        ``_DEADLINE`` when set."""
        environ = os.environ if environ is None else environ
        return cls(
            connect=_env_seconds(environ, CONNECT_TIMEOUT_VAR, CONNECT_TIMEOUT_S),
            read=_env_seconds(environ, READ_TIMEOUT_VAR, READ_TIMEOUT_S),
            deadline=_env_seconds(environ, DEADLINE_VAR, DEADLINE_S),
        )


# ---------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------


class ObjectStore(abc.ABC):
    """A flat namespace of byte objects under a root URI; keys are relative '/'-separated paths."""

    uri: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def _describe(self, key: str = "") -> str:
        return join_uri(self.uri, key) if key else self.uri

    @abc.abstractmethod
    def child(self, *parts: str) -> ObjectStore:
        """A store rooted at ``uri/parts...`` (parts joined with '/'), sharing this store's connection."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically: readers see the whole object or none of it."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload the local file ``path`` to ``key`` atomically (multipart on S3 for large files)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object at ``key``; :class:`ObjectNotFoundError` when missing."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download ``key`` to the local ``path`` atomically (temp file in the same dir, then rename)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (a string prefix), recursive, relative to the root, sorted."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size of the object at ``key`` in bytes; :class:`ObjectNotFoundError` when missing."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key``; no error if it does not exist."""

    def local_path(self) -> Path | None:
        """The root directory for local stores, ``None`` for remote ones."""
        return None

    def put_files(
        self,
        items: Sequence[tuple[str, str | Path]],
        workers: int = 4,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload many ``(key, local path)`` pairs with ``workers`` threads.

        ``progress(nbytes)`` is called in the calling thread after each file, with that file's size in
        bytes. The first failure cancels the uploads not yet started and is raised.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        sizes = [os.path.getsize(path) for _, path in items]  # fails early on a missing file
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-put") as pool:
            pending = {
                pool.submit(self.put_file, key, path): nbytes
                for (key, path), nbytes in zip(items, sizes, strict=True)
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    nbytes = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        future.result()  # raises
                    if progress is not None:
                        progress(nbytes)


# ---------------------------------------------------------------------------------------------------
# Local directories
# ---------------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened, so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(dest: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``dest`` through a temp file in the same directory, fsync it, then ``os.replace`` it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(dest.parent)


class LocalStore(ObjectStore):
    """An object store in a local directory; ``put_*`` are atomic renames, readers never see halves."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        """Open the directory ``root``; ``create`` makes it (and its parents) when missing. Readers pass
        ``create=False`` so that looking at a wrong path leaves no directory behind."""
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()
        if self.root.exists() and not self.root.is_dir():
            raise StoreConfigError(f"{self.uri} is a file, not a directory: choose another store path")
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreConfigError(
                    f"store {self.uri} cannot be created ({e.strerror or e}): choose a directory you can write"
                ) from None

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*_clean_key(key, self.uri).split("/"))
        # A symlink inside the store could still point outside it: the resolved path must stay under root.
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StoreConfigError(
                f"key {key!r} of {self.uri} resolves to {resolved}, outside the store (a symlink?): "
                "keys may not escape the store's root"
            )
        return path

    def child(self, *parts: str) -> LocalStore:
        """A store rooted at the subdirectory ``parts`` (created; must stay inside this store)."""
        path = self.root
        for part in parts:
            part = part.strip("/")
            if part:
                path = path.joinpath(*_clean_key(part, self.uri, what="path part").split("/"))
        try:
            child = LocalStore(path, create=False)
        except StoreConfigError:
            raise StoreConfigError(f"{path} is an object of {self.uri}, not a directory: choose another name") from None
        if child.root != self.root and self.root not in child.root.parents:
            raise StoreConfigError(f"{path} resolves outside {self.uri}: keys may not escape the store's root")
        try:
            child.root.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            raise StoreConfigError(f"{path} runs through an object of {self.uri}: choose another name") from None
        return child

    def _write(self, key: str, write: Callable[[BinaryIO], None]) -> None:
        """Atomic write of ``key``; a key that collides with a directory (or runs through a file) is a
        one-line StoreConfigError, as S3 would hold both but a directory tree cannot."""
        dest = self._path(key)
        try:
            _atomic_write(dest, write)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as e:
            raise StoreConfigError(
                f"cannot write {self._describe(key)}: {e.strerror} (a key and a directory of keys share that "
                "name in this local store); choose another key"
            ) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically."""

        def write(f: BinaryIO) -> None:
            f.write(data)

        self._write(key, write)
        logger.debug("wrote %s (%d bytes)", self._describe(key), len(data))

    def put_file(self, key: str, path: str | Path) -> None:
        """Copy the local file ``path`` to ``key`` atomically."""
        with open(path, "rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, 1024 * 1024))
        logger.debug("copied %s to %s", path, self._describe(key))

    def get_bytes(self, key: str) -> bytes:
        """The contents of ``key``."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None

    def get_file(self, key: str, path: str | Path) -> None:
        """Copy ``key`` to the local ``path`` atomically."""
        try:
            src = open(self._path(key), "rb")  # noqa: SIM115 - closed below, after the existence check
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None
        with src:
            _atomic_write(Path(path), lambda f: shutil.copyfileobj(src, f, 1024 * 1024))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored object (a file, not a directory)."""
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Keys under the root starting with ``prefix``, sorted; temp files of writes in flight are hidden."""
        _clean_key(prefix, self.uri, what="prefix", prefix=True)
        # Walk only the deepest directory the prefix names, not the whole tree.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_rel.split("/")) if base_rel else self.root
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):  # does not follow symlinked directories
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def size(self, key: str) -> int:
        """Size of ``key`` in bytes."""
        path = self._path(key)
        if not path.is_file():
            raise self._not_found(key)
        return path.stat().st_size

    def delete(self, key: str) -> None:
        """Remove ``key`` and the directories it leaves empty; no error if missing."""
        path = self._path(key)
        if not path.is_file():
            return
        path.unlink(missing_ok=True)
        # Drop emptied directories so a deleted prefix disappears as it does on S3.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def local_path(self) -> Path:
        """The root directory."""
        return self.root

    def _not_found(self, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(
            f"no object at {self._describe(key)}: check the key, or that the stage that writes it has run"
        )


# ---------------------------------------------------------------------------------------------------
# S3 / MinIO
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to connect: an endpoint ``host:port``, TLS, credentials, optional region."""

    endpoint: str
    secure: bool = False
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None

    def __post_init__(self) -> None:
        with _secrets_lock:
            _known_secrets.update(v for v in (self.access_key, self.secret_key, self.session_token) if v)

    @property
    def endpoint_url(self) -> str:
        """The endpoint as a URL, for messages."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read the settings from the environment variables listed in the module docstring."""
        environ = os.environ if environ is None else environ
        name, raw = _first_env(ENDPOINT_VARS, environ)
        if raw is None or name is None:
            raise StoreConfigError(
                f"no S3 endpoint configured: {_ENDPOINT_HINT}, e.g. "
                f"{ENDPOINT_VARS[0]}=http://minio-service.kubeflow:9000, or use a file:// store"
            )
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https"):
                raise StoreConfigError(f"{name} has scheme {parts.scheme!r}: {_ENDPOINT_HINT}")
            if parts.username or parts.password:
                # Never echo the value: it holds credentials.
                raise StoreConfigError(
                    f"{name} must not contain credentials: set {ACCESS_KEY_VARS[0]} and "
                    f"{SECRET_KEY_VARS[0]} instead, and {_ENDPOINT_HINT}"
                )
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise StoreConfigError(f"{name}={raw!r} has a path: {_ENDPOINT_HINT} without a path")
            endpoint, secure = parts.netloc, parts.scheme == "https"
        else:
            if "@" in raw or "/" in raw:
                raise StoreConfigError(f"{name} is not a host:port: {_ENDPOINT_HINT}")
            endpoint = raw
            secure_name, secure_raw = _first_env(SECURE_VARS, environ)
            secure = _parse_bool(secure_name, secure_raw) if secure_name and secure_raw else False
        if not endpoint:
            raise StoreConfigError(f"{name} names no host: {_ENDPOINT_HINT}")

        access_name, access_key = _first_env(ACCESS_KEY_VARS, environ)
        secret_name, secret_key = _first_env(SECRET_KEY_VARS, environ)
        if bool(access_key) != bool(secret_key):
            missing = SECRET_KEY_VARS if access_key else ACCESS_KEY_VARS
            present = access_name or secret_name
            raise StoreConfigError(
                f"{present} is set but {missing[0]} (or {missing[1]}) is not: set both credentials "
                "(on Kubeflow from the Secret mlpipeline-minio-artifact, keys accesskey/secretkey)"
            )
        _, token = _first_env((SESSION_TOKEN_VAR,), environ)
        _, region = _first_env((REGION_VAR,), environ)
        return cls(
            endpoint=endpoint,
            secure=secure,
            access_key=access_key,
            secret_key=secret_key,
            session_token=token,
            region=region,
        )


def _make_client(settings: S3Settings, timeouts: Timeouts) -> Minio:
    # retries=0: our own loop owns retrying (with backoff and clear errors); a short connect timeout makes
    # a wrong endpoint fail fast. redirect=False hands 301/307 to minio, which turns them into S3Errors.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeouts.connect, read=timeouts.read),
        maxsize=32,  # put_files workers x minio's parallel part uploads share one pool per host
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=0, redirect=False, raise_on_status=False),
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        session_token=settings.session_token,
        secure=settings.secure,
        region=settings.region or _default_region(settings.endpoint),
        http_client=http,
    )


def _default_region(endpoint: str) -> str | None:
    """The region to sign with when none is set: None on AWS (minio asks the bucket), else ``us-east-1``, the
    region MinIO and SeaweedFS use by default. Asking costs a GetBucketLocation, which a key scoped to a
    prefix may not make (Kubeflow's per-profile keys): every request of such a key would be refused."""
    host = endpoint.rsplit("@", 1)[-1].split(":", 1)[0].lower()
    return None if host == "amazonaws.com" or host.endswith(".amazonaws.com") else "us-east-1"


# S3/MinIO bucket naming rules (what MinIO enforces); checked here so a typo is not reported as "missing".
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into (bucket, prefix without surrounding '/')."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise StoreConfigError(f"not an s3:// URI: {uri!r}; accepted forms: {_ACCEPTED_FORMS}")
    if "@" in parts.netloc:
        # Do not echo the URI: whatever precedes '@' is meant to be a credential.
        raise StoreConfigError(
            f"s3:// URIs must not contain credentials (s3://{parts.hostname}/...): set "
            f"{ACCESS_KEY_VARS[0]} and {SECRET_KEY_VARS[0]} instead"
        )
    if not parts.netloc:
        raise StoreConfigError(f"{uri!r} names no bucket: write s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise StoreConfigError(f"{uri!r} has a query or fragment: write s3://bucket/prefix")
    if not _BUCKET_RE.fullmatch(parts.netloc) or ".." in parts.netloc:
        raise StoreConfigError(
            f"{parts.netloc!r} in {uri!r} is not a valid bucket name: use 3 to 63 lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit"
        )
    prefix = parts.path.strip("/")
    if prefix:
        _clean_key(prefix, uri, what="prefix")
    return parts.netloc, prefix


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


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------


def open_store(uri: str, *, create_bucket: bool = False, create: bool = True) -> ObjectStore:
    """Open the store named by ``uri`` (validated first by :func:`check_store_uri`).

    ``file:///abs/path`` or a plain local path gives a :class:`LocalStore` (the directory is created
    unless ``create`` is False, as readers pass); ``s3://bucket/prefix`` gives an :class:`S3Store`
    configured from the environment (see the module docstring), after checking that the bucket exists;
    ``create_bucket`` creates a missing bucket instead of raising :class:`BucketNotFoundError`.
    """
    uri = check_store_uri(uri)
    if "://" not in uri:
        return LocalStore(uri, create=create)
    if uri.split("://", 1)[0].lower() == "s3":
        return S3Store(uri, create_bucket=create_bucket)
    return LocalStore(url2pathname(unquote(urlsplit(uri).path)), create=create)


def _safe_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` part replaced by ``***@``, for messages."""
    scheme, sep, rest = uri.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return redact(f"{scheme}{sep}{netloc}{slash}{path}")[:300]
