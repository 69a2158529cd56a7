"""Where and as whom to reach an S3 server: :class:`S3Settings` from the environment, and the minio
client built from them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio

from .credentials import ACCESS_KEY_VARS, SECRET_KEY_VARS, SESSION_TOKEN_VAR, _known_secrets, _secrets_lock
from .errors import StoreConfigError
from .retry import Timeouts

ENDPOINT_VARS = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL")
SECURE_VARS = ("MINIO_SECURE", "AWS_S3_SECURE")
REGION_VAR = "AWS_REGION"

_ENDPOINT_HINT = f"set {ENDPOINT_VARS[0]} (or {ENDPOINT_VARS[1]}) to http://host:port or https://host:port"


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
