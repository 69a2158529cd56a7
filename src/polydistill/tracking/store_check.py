"""The tracking store, checked before a pipeline run's first task, and its credentials kept out of the run.

A run whose MLflow store is broken used to go on without tracking and end with exit status 0 and the MLflow
UI command, the warnings only in task logs. :func:`check_tracking_store` makes that one line before any task:
a SQLite file that is not a database or fails SQLite's own consistency check (corrupt, half-truncated), an
HTTP server that does not accept a connection.

A password in the tracking URI (``http://user:PASSWORD@host``) would travel as a pipeline parameter into every
task's executor input, log and output: :func:`split_credentials` moves it to MLflow's own environment
variables (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, which the tasks inherit) and leaves a URI
without it.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from .connection import _check_reachable
from .names import TrackingError
from .params import safe_tracking_uri

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
_SQLITE_HEADER = b"SQLite format 3\x00"


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``uri`` without its ``user:password@`` part, and the environment that gives MLflow the same
    credentials (empty when the URI has none or is not HTTP)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, {}
    host = parts.netloc.rsplit("@", 1)[1]
    env = {USERNAME_ENV: urllib.parse.unquote(parts.username or "")}
    if parts.password is not None:
        env[PASSWORD_ENV] = urllib.parse.unquote(parts.password)
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), env


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if db in ("", ":memory:") else Path(db)


def _check_sqlite(db: Path, uri: str) -> None:
    if not db.exists():
        return  # MLflow creates it
    fix = f"move {db} away (MLflow starts a new one) or pass another --tracking-uri"
    if not db.is_file():
        raise TrackingError(f"tracking store {uri}: {db} is not a file; {fix}")
    try:
        with db.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as e:
        raise TrackingError(f"tracking store {uri}: cannot read {db} ({e.strerror or e}); {fix}") from None
    if head and head != _SQLITE_HEADER:
        raise TrackingError(f"tracking store {uri}: {db} is not an SQLite database; {fix}")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise TrackingError(f"tracking store {uri}: {db} is damaged ({e}); {fix}") from None
    if rows != [("ok",)]:
        first = " ".join(str(rows[0][0]).split()) if rows else "no answer"
        raise TrackingError(f"tracking store {uri}: {db} fails SQLite's consistency check ({first}); {fix}")


def check_tracking_store(uri: str) -> None:
    """Raise :class:`TrackingError` (one line, the URI without credentials) when the tracking store at ``uri``
    cannot be used: a damaged SQLite file, an HTTP server that does not accept a connection."""
    db = _sqlite_path(uri)
    if db is not None:
        _check_sqlite(db, safe_tracking_uri(uri))
        return
    try:
        _check_reachable(uri)
    except ConnectionError as e:
        raise TrackingError(f"tracking server {safe_tracking_uri(uri)}: {e}; start it, or pass another "
                            "--tracking-uri (default: SQLite in the run directory)") from None
