"""The local run's per-task logs, events and progress files (``polydistill_kfp.task_watch``), on kfp's real
local runner with a tiny pipeline: two loop iterations at once (threads), a progress bar, a failing task.

These fail if kfp stops calling ``task_dispatcher.run_single_task_implementation`` once per task in the
task's thread, or stops passing a task's container env to it: what the module relies on.
"""

# No ``from __future__ import annotations``: kfp reads the components' annotations as types.
import io
import json
from pathlib import Path

import pytest

kfp = pytest.importorskip("kfp")
from kfp import dsl, local  # noqa: E402

from polydistill.cli.run_display import RunDisplay  # noqa: E402
from polydistill_kfp.task_watch import TaskInfo, watch_tasks  # noqa: E402


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def chatty(label: str, games: list) -> str:
    import os

    from polydistill.progress import progress

    game = games[0]
    for i in range(40):
        print(f"line {i} from {game} {games}", flush=True)
    bar = progress(10, f"chatty {game}", "step")
    for _ in range(10):
        bar.update(1)
    bar.close()
    return os.environ.get("POLYDISTILL_PROGRESS_FILE", "")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def broken(game: str):
    for i in range(30):
        print(f"working {game} {i}", flush=True)
    raise ValueError(f"cannot go on with {game}")


@dsl.pipeline(name="watched")
def watched(games: list = ["Pong", "Breakout"]):  # noqa: B006 (kfp's pipeline default)
    with dsl.ParallelFor(games, parallelism=2) as game:
        # the loop item inside a list constant: the task's title must name the game all the same
        chatty(label="teacher", games=[game])


@dsl.pipeline(name="failing")
def failing():
    broken(game="Pong")


class Events:
    def __init__(self) -> None:
        self.started: list[TaskInfo] = []
        self.finished: list[tuple[TaskInfo, bool, float]] = []

    def task_started(self, task: TaskInfo) -> None:
        self.started.append(task)

    def task_finished(self, task: TaskInfo, ok: bool, seconds: float) -> None:
        self.finished.append((task, ok, seconds))


@pytest.fixture
def local_runner(tmp_path: Path) -> Path:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    return tmp_path


def test_each_loop_iteration_logs_to_its_own_file(local_runner: Path, capsys) -> None:
    events, logs = Events(), local_runner / "logs"
    with watch_tasks(logs, events) as failed:
        watched()
    assert failed == []
    assert sorted(t.title for t in events.started) == ["chatty teacher Breakout", "chatty teacher Pong"]
    assert [ok for _, ok, _ in events.finished] == [True, True]
    for game, other in (("Pong", "Breakout"), ("Breakout", "Pong")):
        text = (logs / f"chatty-teacher_{game}.log").read_text()
        assert all(f"line {i} from {game} ['{game}']" in text for i in range(40)), text
        assert f"from {other}" not in text  # the two threads' output is not mixed
        assert "Executing task" in text  # kfp's own lines about the task go with it
        status = json.loads((logs / "progress" / f"chatty-teacher_{game}.json").read_text())
        assert (status["desc"], status["n"], status["total"], status["done"]) == (f"chatty {game}", 10, 10, True)
    assert "Running pipeline" in (logs / "pipeline.log").read_text()
    out = capsys.readouterr()
    assert "line 0 from" not in out.out + out.err  # nothing raw on the terminal without echo


def test_echo_streams_the_raw_output_too(local_runner: Path) -> None:
    echo = io.StringIO()
    with watch_tasks(local_runner / "logs", None, echo=echo):
        watched(games=["Pong"])
    assert "line 39 from Pong" in echo.getvalue()


def test_a_failed_task_is_reported_with_its_log_tail(local_runner: Path) -> None:
    screen = io.StringIO()
    display = RunDisplay(screen, live=False)
    logs = local_runner / "logs"
    with pytest.raises(RuntimeError), watch_tasks(logs, display) as failed:
        failing()
    display.close()
    (task,) = failed
    assert (task.title, task.log_path) == ("broken Pong", logs / "broken-Pong.log")
    lines = screen.getvalue().splitlines()
    assert lines[0].endswith("start  broken Pong")
    assert "FAILED broken Pong after " in lines[1] and lines[1].endswith(f"last lines of {task.log_path}:")
    tail = lines[2:]
    assert len(tail) == 20 and all(line.startswith("    ") for line in tail)
    assert any("ValueError: cannot go on with Pong" in line for line in tail)
