"""The one place where the ``polydistill`` command turns exceptions into what a person reads.

- a :class:`~polydistill.errors.PolydistillError` (bad input, something the user can fix): one line
  ``polydistill: error: MESSAGE`` on stderr, exit status 2;
- click's own usage errors: click's behaviour (usage, ``Error: ...``, status 2);
- anything else (a bug, an outside failure): one line naming the exception's type and the file the full
  traceback was written to, exit status 1.

``polydistill --debug ...`` re-raises instead, traceback and all. Every message is redacted (URI passwords,
credential values) and folded onto one line.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any

import click

from ..errors import PolydistillError

#: Exit status of a user-facing error (the same as click's usage errors).
USER_ERROR_STATUS = 2
#: Exit status of anything unexpected.
UNEXPECTED_STATUS = 1
#: Set to 1 to get tracebacks without ``--debug`` (e.g. in CI).
DEBUG_ENV = "POLYDISTILL_DEBUG"

_error_log: Path | None = None


def set_error_log(path: Path) -> None:
    """Make ``path`` the file an unexpected error's traceback goes to (``run``: ``RUN_DIR/logs/polydistill.log``)."""
    global _error_log
    _error_log = path


def error_log() -> Path:
    """Where an unexpected error's traceback goes: the command's own log, else a fresh file in the temp dir."""
    if _error_log is not None:
        return _error_log
    state = Path(tempfile.gettempdir()) / "polydistill"
    return state / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Hide ``value`` (a token or cookie given on the command line or read from a file) in every message and
    traceback file from now on."""
    if value and value.strip():
        _secrets.update({value, value.strip()})


def redact(text: str) -> str:
    """``text`` without URI passwords, the credential variables' values and :func:`add_secret`'s values."""
    from ..redaction import redact_uri
    from ..store import redact as redact_store

    return redact_store(redact_uri(text, _secrets))


def one_line(message: str) -> str:
    """``message`` redacted and folded onto one line."""
    return " ".join(redact(str(message)).split())


class InputError(PolydistillError):
    """A bad command-line input that the CLI itself found (two checkpoints for one game, ...)."""


class UserError(click.ClickException):
    """A PolydistillError on its way out: ``polydistill: error: MESSAGE``, status 2."""

    exit_code = USER_ERROR_STATUS

    def format_message(self) -> str:
        return self.message

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"polydistill: error: {self.message}", err=True, file=file)


class UnexpectedError(UserError):
    """Any other exception on its way out: its type and the traceback's file, status 1."""

    exit_code = UNEXPECTED_STATUS


def _write_traceback(exc: BaseException) -> Path | None:
    """Append ``exc``'s traceback to :func:`error_log`; None when that file cannot be written."""
    path = error_log()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} unexpected error\n")
            f.write(redact("".join(traceback.format_exception(exc))))  # values in frames and messages too
    except OSError:
        return None
    return path


def convert(exc: Exception) -> click.ClickException:
    """The click exception that reports ``exc`` in one line (click's own exceptions pass unchanged)."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, PolydistillError):
        return UserError(one_line(str(exc)))
    where = _write_traceback(exc)
    told = f"full traceback in {where}" if where else "rerun with --debug for the traceback"
    text = one_line(str(exc))
    return UnexpectedError(f"unexpected {type(exc).__name__}{f': {text}' if text else ''} ({told})")


class PolydistillGroup(click.Group):
    """The ``polydistill`` group: every subcommand's exceptions are reported by :func:`convert`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:
            if ctx.params.get("debug") or os.environ.get(DEBUG_ENV) == "1":
                raise
            raise convert(e) from e
