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

from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

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
from .local import LocalStore
from .retry import (
    CONNECT_TIMEOUT_S,
    CONNECT_TIMEOUT_VAR,
    DEADLINE_S,
    DEADLINE_VAR,
    READ_TIMEOUT_S,
    READ_TIMEOUT_VAR,
    RETRIES_VAR,
    RetryPolicy,
    Timeouts,
)
from .s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Store
from .s3_settings import ENDPOINT_VARS, REGION_VAR, SECURE_VARS, S3Settings
from .uri import check_store_uri, join_uri

__all__ = [
    "ACCESS_KEY_VARS",
    "CONNECT_TIMEOUT_S",
    "CONNECT_TIMEOUT_VAR",
    "DEADLINE_S",
    "DEADLINE_VAR",
    "DEFAULT_PART_SIZE",
    "ENDPOINT_VARS",
    "MIN_PART_SIZE",
    "READ_TIMEOUT_S",
    "READ_TIMEOUT_VAR",
    "REGION_VAR",
    "RETRIES_VAR",
    "SECRET_KEY_VARS",
    "SECURE_VARS",
    "SESSION_TOKEN_VAR",
    "BucketNotFoundError",
    "LocalStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "RetryPolicy",
    "S3Settings",
    "S3Store",
    "StoreAccessDeniedError",
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
