"""The object store's errors: each message names the URI and says how to fix the problem."""

from __future__ import annotations

from polydistill.errors import PolydistillError


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
