"""A task's progress as a small JSON file, for ``polydistill run`` to draw one live line per running task.

A pipeline task runs in a subprocess or a container and cannot draw on the terminal of ``polydistill run``.
When :data:`PROGRESS_FILE_ENV` names a file (the local runner sets it per task), every progress reporter of
the task also rewrites that file, at most once per :data:`WRITE_INTERVAL` seconds, by an atomic rename::

    {"desc": "train-teacher Pong", "n": 12000, "total": 50000, "unit": "step",
     "rate": 310.5, "eta_s": 122.4, "done": false, "time": 1764650000.0}

``rate`` is units per second since the reporter started (this run's units, not resumed ones), ``eta_s`` the
seconds left at that rate (null without a total), ``time`` the Unix time of the write. A file that cannot be
written is skipped: progress is never worth failing a task for.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

#: Environment variable naming the task's status file.
PROGRESS_FILE_ENV = "POLYDISTILL_PROGRESS_FILE"
#: Seconds between two writes of the file.
WRITE_INTERVAL = 1.0


class StatusFile:
    """Wraps a progress reporter (tqdm or :class:`~polydistill.progress.LogProgress`) and mirrors it to a file."""

    def __init__(self, inner: Any, path: str | Path, total: int | None, desc: str, unit: str,
                 initial: int = 0) -> None:
        self.inner, self.path = inner, Path(path)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self._t0 = time.monotonic()
        self._last = float("-inf")
        self.write()

    def update(self, n: int = 1) -> None:
        self.inner.update(n)
        self.n += n
        if time.monotonic() - self._last >= WRITE_INTERVAL:
            self.write()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        self.inner.set_postfix(*args, **kwargs)

    def close(self) -> None:
        self.write(done=True)
        self.inner.close()

    def status(self, done: bool = False) -> dict[str, Any]:
        """What the file holds now (see the module docstring)."""
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if self.total and rate > 0 else None
        return {"desc": self.desc, "n": self.n, "total": self.total, "unit": self.unit, "rate": rate,
                "eta_s": left, "done": done, "time": time.time()}

    def write(self, done: bool = False) -> None:
        """Replace the file atomically (a reader never sees half a file)."""
        self._last = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.status(done)))
            os.replace(tmp, self.path)
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:  # the rest of tqdm's interface, unchanged
        return getattr(self.inner, name)

    def __enter__(self) -> StatusFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The status in ``path``; None when there is none yet or it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
