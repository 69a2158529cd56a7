"""Which environment variables hold store credentials, and :func:`redact`, which keeps their values
out of messages, reprs and log lines."""

from __future__ import annotations

import os
import threading

from ..redaction import redact_uri

ACCESS_KEY_VARS = ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY")
SECRET_KEY_VARS = ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY")
SESSION_TOKEN_VAR = "AWS_SESSION_TOKEN"

# Values shorter than this are not redacted: replacing every "ab" in a message would garble it and a
# two-character secret protects nothing anyway.
_MIN_REDACT_LEN = 4
# Secrets handed to S3Settings directly rather than through the environment, so redact() knows them too.
_known_secrets: set[str] = set()
_secrets_lock = threading.Lock()


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
