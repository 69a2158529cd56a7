"""What ``polydistill run`` shows while the pipeline runs: a line per task as it starts and ends, one live
progress line per running task, the last lines of a failed task's log.

The tasks' raw output goes to ``RUN_DIR/logs/`` (``polydistill_kfp.task_watch``); this module only reads the
per-task progress files (:mod:`polydistill.progress_file`) and writes to the terminal. On a terminal the
progress lines stay under the task lines and are rewritten in place; elsewhere (a pipe, CI) one line with the
progress of every running task that moved is printed at most every :data:`PIPE_INTERVAL` seconds, so a log
stays short.
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Protocol

from ..progress_file import read_status
from ..store import redact

#: Seconds between progress lines when the output is not a terminal.
PIPE_INTERVAL = 60.0
#: Seconds between redraws of the live lines on a terminal.
TTY_INTERVAL = 0.5
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
_NOTE = re.compile(r"^\d+\. ")
#: kfp's own lines in a task's log: ``HH:MM:SS.mmm - LEVEL - ...`` and its horizontal rules.
_KFP_LINE = re.compile(r"^\s*(\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - |-{20,}$)")
#: Lines of a failed task's log that are printed.
TAIL_LINES = 20


class Task(Protocol):
    """A running task as ``polydistill_kfp.task_watch.TaskInfo`` describes it."""

    title: str
    log_path: Path
    progress_path: Path
    started: float


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h02m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_text(status: dict[str, Any]) -> str:
    """``12,000/50,000 step (24%), 310 step/s, ETA 2m03s`` from a task's status file."""
    n, total, unit = status.get("n") or 0, status.get("total"), status.get("unit") or "it"
    rate, eta = status.get("rate") or 0.0, status.get("eta_s")
    if unit == "B":
        done = f"{n / 1e6:.1f} MB" + (f"/{total / 1e6:.1f} MB" if total else "")
        speed = f"{rate / 1e6:.1f} MB/s"
    else:
        done = f"{n:,}" + (f"/{total:,}" if total else "") + f" {unit}"
        speed = f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.1f} {unit}/s"
    pct = f" ({100 * n / total:.0f}%)" if total else ""
    left = f", ETA {duration(eta)}" if eta is not None else ""
    return f"{done}{pct}, {speed}{left}"


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-blank lines the task itself wrote to its log (kfp's own lines about the task
    left out, the indentation kfp adds removed); none if the file cannot be read."""
    try:
        with path.open(errors="replace") as f:
            last = deque((line.rstrip() for line in f if line.strip() and not _KFP_LINE.match(line)), maxlen=lines)
    except OSError:
        return []
    return textwrap.dedent("\n".join(last)).splitlines()


class RunDisplay:
    """Receives task events (any thread) and draws them on ``stream``; :meth:`close` stops its poller.

    Args:
        stream: the terminal (or pipe) to write to: ``sys.stdout`` from before the run's output is routed.
        live: rewrite the progress lines in place (a terminal, and no raw output streamed to it).
    """

    def __init__(self, stream: IO[str], live: bool) -> None:
        self.stream, self.live = stream, live
        self.running: dict[int, Task] = {}
        self.failed: list[Task] = []
        self._last_printed: dict[int, Any] = {}  # per task: its progress count when last printed (a pipe)
        self._live_lines = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="polydistill-run-display", daemon=True)
        self._poller.start()

    # ----------------------------------------------------------------------------------------- events
    def task_started(self, task: Task) -> None:
        with self._lock:
            self.running[id(task)] = task
            self._print([f"{_clock()} start  {task.title}"])

    def task_finished(self, task: Task, ok: bool, seconds: float) -> None:
        with self._lock:
            self.running.pop(id(task), None)
            if ok:
                self._print([f"{_clock()} done   {task.title} in {duration(seconds)}"])
                return
            self.failed.append(task)
            lines = [f"{_clock()} FAILED {task.title} after {duration(seconds)}; last lines of {task.log_path}:"]
            self._print(lines + [f"    {redact(line)}" for line in tail(task.log_path)])

    def close(self) -> None:
        """Stop drawing and remove the live lines."""
        self._stop.set()
        self._poller.join(timeout=5)
        with self._lock:
            self._clear_live()

    # ---------------------------------------------------------------------------------------- drawing
    def _print(self, lines: list[str]) -> None:
        self._clear_live()
        self.stream.write("".join(f"{line}\n" for line in lines))
        self._draw_live()

    def _clear_live(self) -> None:
        if self._live_lines:
            # up to the first live line, then erase to the end of the screen
            self.stream.write(f"\x1b[{self._live_lines}F\x1b[J")
            self._live_lines = 0
        self.stream.flush()

    def _draw_live(self) -> None:
        if not self.live:
            return
        lines = [self._progress_line(t) for t in self.running.values()]
        self.stream.write("".join(f"{line}\n" for line in lines))
        self._live_lines = len(lines)
        self.stream.flush()

    def _progress_line(self, task: Task) -> str:
        status = read_status(task.progress_path)
        elapsed = duration(time.monotonic() - task.started)
        if status is None:
            what = "starting"
        elif status.get("desc") in (None, "", task.title):
            what = progress_text(status)
        else:  # a task with several stages of progress (evaluate: one per game) names the current one
            what = f"{status['desc']}: {progress_text(status)}"
        return f"  ... {task.title} [{elapsed}] {what}"

    def _poll(self) -> None:
        while not self._stop.wait(TTY_INTERVAL if self.live else PIPE_INTERVAL):
            with self._lock:
                if self.live:
                    self._clear_live()
                    self._draw_live()
                else:
                    self._print_progress()

    def _print_progress(self) -> None:
        """One line for all running tasks that made progress since the last one (a pipe's output stays short:
        loop iterations run side by side, and a task with nothing new or at 100% adds nothing)."""
        parts = []
        for key, task in self.running.items():
            status = read_status(task.progress_path)
            finished = status is not None and bool(status.get("total")) and status.get("n", 0) >= status["total"]
            if status is None or finished or self._last_printed.get(key) == status.get("n"):
                continue  # nothing yet, all done (its end line follows), or nothing new
            self._last_printed[key] = status.get("n")
            parts.append(f"{task.title} {progress_text(status)}")
        if parts:
            self._print([f"{_clock()} ...    " + " | ".join(parts)])


def results_text(report_md: str) -> str:
    """The report's headings and tables, compact, without their numbered notes, blank lines or Markdown
    separator rows (report.md keeps them all): what the terminal shows at the end of a run."""
    keep = [line for line in report_md.rstrip().splitlines()
            if line.strip() and not _NOTE.match(line) and not _SEPARATOR.match(line)]
    return "\n".join(keep)


def _clock() -> str:
    return time.strftime("%H:%M:%S")
