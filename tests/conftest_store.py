"""Pytest fixtures for a real S3 server on 127.0.0.1 (moto's ``ThreadedMotoServer``).

``tests/conftest.py`` loads them with ``pytest_plugins = ["tests.conftest_store"]``.

``s3_server`` (session) starts one moto server and creates one bucket; ``s3_env`` (function) points the
store's environment variables at it and returns a fresh ``s3://bucket/<unique-prefix>`` URI.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Iterator

import pytest
from minio import Minio
from moto.server import ThreadedMotoServer

#: Every variable polydistill.store reads; s3_env clears them so the host's settings cannot leak in.
STORE_ENV_VARS = (
    "MINIO_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "MINIO_SECURE",
    "AWS_S3_SECURE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "POLYDISTILL_STORE_RETRIES",
)

# One server per process even if the fixtures are registered more than once (imported into a test module
# as well as loaded as a plugin): the first user starts it, the last one stops it.
_lock = threading.Lock()
_server: ThreadedMotoServer | None = None
_info: dict[str, str] = {}
_users = 0


def _acquire() -> dict[str, str]:
    global _server, _users
    with _lock:
        if _server is None:
            # werkzeug logs every request at INFO; that drowns the logs the tests look at.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            info = {
                "endpoint": f"http://{host}:{port}",
                # Distinctive values, so a leak is easy to find and redact() has something to replace.
                "access_key": "polydistill-test-access",
                "secret_key": f"polydistill-test-secret-{secrets.token_hex(8)}",
                "bucket": "polydistill-test",
            }
            client = Minio(
                f"{host}:{port}", access_key=info["access_key"], secret_key=info["secret_key"], secure=False
            )
            client.make_bucket(info["bucket"])
            _server = server
            _info.clear()
            _info.update(info)
        _users += 1
        return dict(_info)


def _release() -> None:
    global _server, _users
    with _lock:
        _users -= 1
        if _users == 0 and _server is not None:
            _server.stop()
            _server = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket.

    Yields ``{"endpoint": "http://127.0.0.1:PORT", "access_key": ..., "secret_key": ..., "bucket": ...}``.
    moto accepts any credentials unless its auth checks are switched on (see tests/test_store.py).
    """
    info = _acquire()
    try:
        yield info
    finally:
        _release()


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``MINIO_ENDPOINT`` and ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` at ``s3_server``.

    All other store variables are unset. Returns a fresh ``s3://bucket/<unique-prefix>`` URI, so tests
    never see each other's objects.
    """
    for name in STORE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MINIO_ENDPOINT", s3_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret_key"])
    return f"s3://{s3_server['bucket']}/t-{uuid.uuid4().hex[:12]}"
