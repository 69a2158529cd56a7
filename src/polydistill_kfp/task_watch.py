"""Each task of a local run: its own log file, its own progress file, and start/end events.

kfp's local runner (2.17) has no hook for this: it picks the task handler by the runner's exact type
(``task_dispatcher.run_single_task_implementation``: ``task_handler_map[type(runner)]``), prints each task's
output with ``print()`` (``subprocess_task_handler.run_local_subprocess``, ``docker_task_handler.
run_docker_container``) and logs its own lines to a ``logging.StreamHandler(sys.stdout)`` created per task
(``logging_utils.local_logger_context``). So this module, the only one that patches kfp, does two things
while :func:`watch_tasks` is active:

- it wraps ``task_dispatcher.run_single_task_implementation``, which ``orchestrator/task_executor.py`` calls
  through the module attribute once per task attempt in the thread that runs it (kfp's ParallelExecutor runs
  loop iterations in threads), to know which task the current thread runs, to time it, to read its outcome
  (the returned ``Status``), and to add ``POLYDISTILL_PROGRESS_FILE`` to the task's container environment
  (which both runners pass on to the task);
- it replaces ``sys.stdout``/``sys.stderr`` with a router that writes each thread's text to the log of the
  task that thread runs (``RUN_DIR/logs/<task>[-<detail>].log``), and the rest to ``logs/pipeline.log``;
  with ``echo`` set it is also copied to the terminal. Every line is redacted first (URI passwords, the
  values of credential environment variables).

``tests/test_task_watch.py`` fails if kfp stops calling the wrapped function this way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from polydistill.progress_file import PROGRESS_FILE_ENV
from polydistill.redaction import redact_uri

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


@dataclass
class TaskInfo:
    """One attempt of one task: what the display shows and where its files are."""

    name: str  #: the component's task name (train-teacher, evaluate, ...)
    detail: str  #: which one: the game, the student's source, an evaluation's label and game; "" if none
    log_path: Path
    progress_path: Path
    started: float = field(default_factory=time.monotonic)  #: time.monotonic() at its start

    @property
    def title(self) -> str:
        """``name detail`` as the display writes it."""
        return f"{self.name} {self.detail}".strip()


class TaskListener(Protocol):
    """What :func:`watch_tasks` tells about each task attempt (called in the thread that runs it)."""

    def task_started(self, task: TaskInfo) -> None: ...

    def task_finished(self, task: TaskInfo, ok: bool, seconds: float) -> None: ...


def _resolve(value: Any, arguments: dict[str, Any]) -> Any:
    """``value`` with kfp's ``{{$.inputs.parameters['NAME']}}`` placeholders replaced from ``arguments``: a loop
    item inside a list constant (``games=[game]``) reaches the task as such a placeholder plus an extra
    ``pipelinechannel--...`` argument, and kfp resolves it only later, in the executor input."""
    if isinstance(value, list):
        return [_resolve(v, arguments) for v in value]
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: str(arguments.get(m[1], m[0])), value)
    return value


def task_detail(arguments: dict[str, Any]) -> str:
    """Which of a task's iterations this is, from its arguments: the game, the student's data source, or an
    evaluation's label (and its game when it plays one)."""
    arguments = {k: _resolve(v, arguments) for k, v in arguments.items()}
    if isinstance(arguments.get("game"), str):
        return arguments["game"]
    if isinstance(arguments.get("source"), str):
        return arguments["source"]
    label = arguments.get("label")
    if isinstance(label, str):
        games = arguments.get("games")
        return f"{label} {games[0]}" if isinstance(games, list) and len(games) == 1 else label
    return ""


def task_name(component_name: str) -> str:
    """``comp-train-teacher-2`` -> ``train-teacher`` (kfp numbers a component's second use)."""
    return re.sub(r"-\d+$", "", component_name.removeprefix("comp-"))


class _Router(io.TextIOBase):
    """A text stream that sends each thread's writes to the file of the task the thread runs."""

    def __init__(self, fallback: IO[str], echo: IO[str] | None, secrets: Sequence[str] = ()) -> None:
        self.fallback, self.echo = fallback, echo
        self.secrets = list(secrets)
        self.local = threading.local()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        target: IO[str] | None = getattr(self.local, "file", None)
        # kfp prints each task's executor input (every parameter) and output line by line: a URI's password or a
        # credential's value in them is redacted here, before any log file or terminal sees it.
        s = redact_uri(s, self.secrets)
        clean = _ANSI.sub("", s)
        if target is not None:
            target.write(clean)
            target.flush()
        else:
            with self.lock:
                self.fallback.write(clean)
                self.fallback.flush()
        if self.echo is not None:
            with self.lock:
                self.echo.write(s)
                self.echo.flush()
        return len(s)

    def flush(self) -> None:
        pass


def _with_env(executor_spec: Any, name: str, value: str) -> Any:
    """A copy of ``executor_spec`` (a PipelineContainerSpec's parent proto) with one more env variable."""
    spec = type(executor_spec)()
    spec.CopyFrom(executor_spec)
    spec.container.env.add(name=name, value=value)
    return spec


@contextlib.contextmanager
def watch_tasks(log_dir: Path, listener: TaskListener | None = None,
                echo: IO[str] | None = None) -> Iterator[list[TaskInfo]]:
    """While active, every task of kfp's local runner logs to ``log_dir`` and reports to ``listener``.

    Args:
        log_dir: ``RUN_DIR/logs``; progress files go to ``log_dir/progress``.
        listener: told of each task attempt's start and end (None: nobody).
        echo: also copy all raw output there (``polydistill run --verbose``); None: files only.
    Yields:
        The task attempts that failed so far (filled in as they fail).
    """
    from kfp.local import status, task_dispatcher

    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "progress").mkdir(exist_ok=True)
    original = task_dispatcher.run_single_task_implementation
    pipeline_log = (log_dir / "pipeline.log").open("a")
    from polydistill.tracking.params import _secret_values

    router = _Router(pipeline_log, echo, _secret_values())  # the credential variables as the tasks get them
    failed: list[TaskInfo] = []

    def run_task(*args: Any, **kwargs: Any) -> Any:
        name = task_name(kwargs["component_name"])
        detail = task_detail(dict(kwargs.get("arguments") or {}))
        slug = _SLUG.sub("_", f"{name}-{detail}" if detail else name)
        task = TaskInfo(name, detail, log_dir / f"{slug}.log", log_dir / "progress" / f"{slug}.json")
        kwargs["executor_spec"] = _with_env(kwargs["executor_spec"], PROGRESS_FILE_ENV, str(task.progress_path))
        if listener is not None:
            listener.task_started(task)
        ok = False
        with task.log_path.open("a") as f:
            router.local.file = f
            try:
                outputs, task_status = original(*args, **kwargs)
                ok = task_status == status.Status.SUCCESS
                return outputs, task_status
            finally:
                router.local.file = None
                if not ok:
                    failed.append(task)
                if listener is not None:
                    listener.task_finished(task, ok, time.monotonic() - task.started)

    root = logging.getLogger()
    saved = (sys.stdout, sys.stderr, root.handlers[:])
    handler = logging.StreamHandler(router)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    task_dispatcher.run_single_task_implementation = run_task
    sys.stdout = sys.stderr = router
    root.handlers[:] = [handler]
    try:
        yield failed
    finally:
        task_dispatcher.run_single_task_implementation = original
        sys.stdout, sys.stderr, root.handlers[:] = saved[0], saved[1], saved[2]
        pipeline_log.close()
