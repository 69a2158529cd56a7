"""Progress reporting: a tqdm bar with its rate on a terminal, periodic log lines elsewhere (pipeline pods).

``POLYDISTILL_PROGRESS=bar|log|off`` forces a mode; ``POLYDISTILL_PROGRESS_FILE`` (:mod:`.progress_file`)
adds a JSON status file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("polydistill.progress")

#: ``on_metrics(metrics, step)``: every training function reports scalars through one of these (MLflow in
#: the pipeline, nothing by default); ``step`` is the stage's own counter (agent steps, epochs, updates).
MetricsCallback = Callable[[dict[str, float], int], None]


class LogProgress:
    """A tqdm-like object logging ``desc: n/total (pct) rate unit/s postfix`` at most every ``interval`` s."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float = 15.0, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = initial
        self._start_n = initial
        self._t0 = self._last = time.monotonic()
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self._postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def _emit(self, now: float) -> None:
        rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if self.unit == "B":  # byte counts read better in MB
            log.info("%s: %.2f MB%s %.2f MB/s %s", self.desc, self.n / 1e6, pct, rate / 1e6, self._postfix)
            return
        log.info(
            "%s: %d/%s%s %.1f %s/s %s",
            self.desc,
            self.n,
            self.total or "?",
            pct,
            rate,
            self.unit,
            self._postfix,
        )

    def close(self) -> None:
        self._emit(time.monotonic())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Off(LogProgress):
    def _emit(self, now: float) -> None:
        pass


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0) -> Any:
    """A progress reporter with ``update(n)``, ``set_postfix(**kw)`` and ``close()``; with
    ``POLYDISTILL_PROGRESS_FILE`` set (a pipeline task) it also mirrors itself to that JSON file."""
    from .progress_file import PROGRESS_FILE_ENV, StatusFile

    reporter = _reporter(total, desc, unit, initial)
    path = os.environ.get(PROGRESS_FILE_ENV)
    return StatusFile(reporter, path, total, desc, unit, initial) if path else reporter


def _reporter(total: int | None, desc: str, unit: str, initial: int) -> Any:
    mode = os.environ.get("POLYDISTILL_PROGRESS") or ("bar" if sys.stderr.isatty() else "log")
    if mode == "bar":
        from tqdm import tqdm

        scaled = unit == "B"  # shows kB/s, MB/s
        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, smoothing=0.1, unit_scale=scaled
        )
    if mode == "off":
        return _Off(total, desc, unit, initial=initial)
    return LogProgress(total, desc, unit, initial=initial)
