"""The one base class of every error polydistill raises for a user to act on.

A :class:`PolydistillError` carries a one-line message that names the bad input and how to fix it; the CLI
prints that line and exits with status 2 (``polydistill.cli``). Anything that is not a
:class:`PolydistillError` is a bug or an outside failure and is reported with the log's path instead.
Subclasses keep their historical builtin base (``ValueError``, ``RuntimeError``, ``FileNotFoundError``) as a
second base so callers that catch those still work.
"""

from __future__ import annotations


class PolydistillError(Exception):
    """A user-facing error: its message is one line naming the input at fault and the fix."""
