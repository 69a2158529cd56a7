"""Credentials out of every message: one function for URIs and free text, and a text/binary sniffer.

Used by the object store's errors, the tracking layer (params, tags, artifacts) and the CLI, so that a
URI such as ``http://user:TOKEN@host/path?token=...`` never reaches a log line, an error or MLflow as
it was typed. Stdlib only, so every layer can import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["SNIFF_BYTES", "is_text_file", "looks_like_text", "redact_uri"]

# userinfo of any scheme://userinfo@host: "user:password@" keeps the user, a lone "TOKEN@" goes whole
# (a token passed as the user name is the common way to put a credential in a URL).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@?#]*)(?::[^@/\s?#]*)?@")
# Query parameters whose value is a credential (presigned URLs, token-in-URL APIs).
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:token|secret|password|passwd|pwd|signature|sig|credential|"
    r"api[_-]?key|access[_-]?key|auth)[A-Za-z0-9_.-]*)=)[^&#\s\"']*",
    re.IGNORECASE,
)
#: Bytes read from the start of a file to decide whether it is text.
SNIFF_BYTES = 8192


def redact_uri(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (a URI, or any text holding URIs) with credentials replaced by ``***``.

    Removes the password of ``scheme://user:password@`` (the user stays), a user-only ``scheme://TOKEN@``
    whole, credential-named query values (``?token=``, ``X-Amz-Signature=``, ``api_key=``, ...), and
    every literal value in ``secrets`` (longest first, so a secret containing another goes whole).
    """

    def userinfo(m: re.Match[str]) -> str:
        has_password = ":" in m.group(0)[len(m.group("scheme")) :]
        return f"{m.group('scheme')}{m.group('user')}:***@" if has_password else f"{m.group('scheme')}***@"

    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _USERINFO.sub(userinfo, text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


def looks_like_text(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) is text: no NUL byte and valid UTF-8 (a multi-byte
    character cut at the end of ``head`` is allowed). Decides by content, never by file suffix."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # Only an incomplete character in the last 3 bytes is forgiven (the sniff window cut it).
        return e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


def is_text_file(path: str, sniff: int = SNIFF_BYTES) -> bool:
    """Whether the file at ``path`` is text, judged from its first ``sniff`` bytes."""
    with open(path, "rb") as f:
        return looks_like_text(f.read(sniff))
