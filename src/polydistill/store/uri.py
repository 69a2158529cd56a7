"""Store URI and key rules: what ``s3://``, ``file://`` and plain-path URIs and relative keys may be,
checked without touching the network or the disk."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from .credentials import ACCESS_KEY_VARS, SECRET_KEY_VARS, redact
from .errors import StoreConfigError

_ACCEPTED_FORMS = "s3://bucket/prefix, file:///absolute/path or a plain local path"
# Keys: NUL and other control characters are refused (they are never meant, and some servers and file
# systems treat them differently); S3 caps keys at 1,024 bytes, file systems a name at 255, and a local
# write's temporary name adds about 30 characters to the last segment.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 200


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


def _safe_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` part replaced by ``***@``, for messages."""
    scheme, sep, rest = uri.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return redact(f"{scheme}{sep}{netloc}{slash}{path}")[:300]
