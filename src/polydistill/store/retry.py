"""Retries and bounded waits of S3 requests: :class:`RetryPolicy` and :class:`Timeouts`, each read from
the environment in one place (see :mod:`polydistill.store`)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import StoreConfigError

RETRIES_VAR = "POLYDISTILL_STORE_RETRIES"
CONNECT_TIMEOUT_VAR = "POLYDISTILL_STORE_CONNECT_TIMEOUT"
READ_TIMEOUT_VAR = "POLYDISTILL_STORE_READ_TIMEOUT"
DEADLINE_VAR = "POLYDISTILL_STORE_DEADLINE"

#: Default seconds to wait for a TCP connection; short so a wrong endpoint fails fast.
CONNECT_TIMEOUT_S = 5.0
#: Default seconds to wait for any byte of a response (MinIO answers a shard PUT or a multipart completion
#: well within this; a server that says nothing for this long is treated as gone).
READ_TIMEOUT_S = 20.0
#: Default total seconds per store operation, retries included (the issue's bar: an error within 60 s).
DEADLINE_S = 55.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    ``attempts`` counts tries (1 means no retry); the wait before retry ``n`` (1-based) is
    ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds times a random factor in [0.5, 1].
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise StoreConfigError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise StoreConfigError("retry delays must be >= 0 seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The default policy, with ``attempts`` from ``POLYDISTILL_STORE_RETRIES`` when set."""
        environ = os.environ if environ is None else environ
        raw = environ.get(RETRIES_VAR, "").strip()
        if not raw:
            return cls()
        try:
            attempts = int(raw)
        except ValueError:
            attempts = 0
        if attempts < 1:
            raise StoreConfigError(f"{RETRIES_VAR}={raw!r} is invalid: set it to an integer >= 1 (default 5)")
        return cls(attempts=attempts)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


def _env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise StoreConfigError(f"{name}={raw!r} is invalid: set it to a number of seconds > 0 (default {default:g})")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Bounded waits of every S3 request, in seconds (see the module docstring).

    ``connect``: TCP connect; ``read``: longest silence while waiting for response bytes; ``deadline``:
    total per store operation with its retries (an attempt only starts if ``connect + read`` fit in what
    is left of it).
    """

    connect: float = CONNECT_TIMEOUT_S
    read: float = READ_TIMEOUT_S
    deadline: float = DEADLINE_S

    def __post_init__(self) -> None:
        if not (self.connect > 0 and self.read > 0 and self.deadline > 0):
            raise StoreConfigError(f"store timeouts must be > 0 seconds, got {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timeouts:
        """The defaults, overridden by ``POLYDISTILL_STORE_CONNECT_TIMEOUT`` / ``_READ_TIMEOUT`` /
        ``_DEADLINE`` when set."""
        environ = os.environ if environ is None else environ
        return cls(
            connect=_env_seconds(environ, CONNECT_TIMEOUT_VAR, CONNECT_TIMEOUT_S),
            read=_env_seconds(environ, READ_TIMEOUT_VAR, READ_TIMEOUT_S),
            deadline=_env_seconds(environ, DEADLINE_VAR, DEADLINE_S),
        )
