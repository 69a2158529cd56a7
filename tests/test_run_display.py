"""What ``polydistill run`` draws (``polydistill.cli.run_display``): task lines, progress lines on a terminal
and on a pipe, a failed task's tail; and the status files the tasks write (``polydistill.progress_file``)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from polydistill.cli.run_display import RunDisplay, duration, progress_text, results_text, tail
from polydistill.progress import progress
from polydistill.progress_file import PROGRESS_FILE_ENV, read_status


@dataclass
class FakeTask:
    title: str
    log_path: Path
    progress_path: Path
    started: float = field(default_factory=time.monotonic)


def _task(tmp_path: Path, title: str) -> FakeTask:
    slug = title.replace(" ", "-")
    return FakeTask(title, tmp_path / f"{slug}.log", tmp_path / "progress" / f"{slug}.json")


def test_a_stage_progress_writes_its_status_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "progress" / "t.json"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(path))
    monkeypatch.setenv("POLYDISTILL_PROGRESS", "off")
    bar = progress(100, "train-teacher Pong", "step", initial=20)
    assert read_status(path)["n"] == 20  # written at once: the display has something from the start
    bar.update(30)
    bar.set_postfix(loss=1.0)
    bar.close()
    status = json.loads(path.read_text())
    assert (status["desc"], status["n"], status["total"], status["unit"], status["done"]) == \
        ("train-teacher Pong", 50, 100, "step", True)
    assert status["rate"] > 0 and status["eta_s"] is not None
    assert not list(path.parent.glob(".*.tmp"))  # replaced by rename, nothing half-written left


def test_no_status_file_without_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)
    monkeypatch.setenv("POLYDISTILL_PROGRESS", "off")
    monkeypatch.chdir(tmp_path)
    bar = progress(10, "x", "step")
    bar.update(10)
    bar.close()
    assert list(tmp_path.iterdir()) == []


def test_progress_text() -> None:
    assert progress_text({"n": 12000, "total": 50000, "unit": "step", "rate": 310.4, "eta_s": 122.4}) == \
        "12,000/50,000 step (24%), 310 step/s, ETA 2m02s"
    assert progress_text({"n": 3_500_000, "total": None, "unit": "B", "rate": 1e6, "eta_s": None}) == \
        "3.5 MB, 1.0 MB/s"
    assert [duration(s) for s in (4.4, 187, 3720)] == ["4s", "3m07s", "1h02m"]


def test_pipe_prints_task_lines_and_only_progress_that_moved(tmp_path: Path) -> None:
    out = io.StringIO()
    display = RunDisplay(out, live=False)
    a, b = _task(tmp_path, "train-teacher Pong"), _task(tmp_path, "train-teacher Breakout")
    display.task_started(a)
    display.task_started(b)
    a.progress_path.parent.mkdir()
    a.progress_path.write_text(json.dumps({"desc": a.title, "n": 10, "total": 100, "unit": "step", "rate": 5.0,
                                           "eta_s": 18.0}))
    display._print_progress()
    display._print_progress()  # nothing moved: no second line
    b.progress_path.write_text(json.dumps({"desc": b.title, "n": 100, "total": 100, "unit": "step", "rate": 5.0,
                                           "eta_s": 0.0}))
    display._print_progress()  # b moved, but to 100%: its end line says more
    display.task_finished(a, True, 61.0)
    display.task_finished(b, True, 62.0)
    display.close()
    lines = out.getvalue().splitlines()
    assert [line[9:] for line in lines] == [
        "start  train-teacher Pong",
        "start  train-teacher Breakout",
        "...    train-teacher Pong 10/100 step (10%), 5.0 step/s, ETA 18s",
        "done   train-teacher Pong in 1m01s",
        "done   train-teacher Breakout in 1m02s",
    ]
    assert "\x1b" not in out.getvalue()


def test_terminal_rewrites_one_live_line_per_running_task(tmp_path: Path) -> None:
    out = io.StringIO()
    display = RunDisplay(out, live=True)
    a, b = _task(tmp_path, "distill subset"), _task(tmp_path, "distill latent")
    display.task_started(a)
    display.task_started(b)
    b.progress_path.parent.mkdir()
    b.progress_path.write_text(json.dumps({"desc": "distill", "n": 3, "total": 30, "unit": "step", "rate": 1.5,
                                           "eta_s": 18.0}))
    display.task_finished(a, True, 5.0)
    display.close()
    text = out.getvalue()
    # after a's end line the live block is redrawn: b alone, with its progress; then erased at close
    after = text.split("done   distill subset in 5s\n", 1)[1]
    assert after.startswith("  ... distill latent [") and "distill: 3/30 step (10%), 1.5 step/s" in after
    assert text.endswith("\x1b[1F\x1b[J")


def test_a_failed_task_shows_the_end_of_its_own_output(tmp_path: Path) -> None:
    task = _task(tmp_path, "export-buffer Pong")
    task.log_path.write_text(
        "03:31:32.100 - INFO - Executing task 'export-buffer'\n"
        + "".join(f"        step {i}\n" for i in range(30))
        + "        ValueError: no space left\n\n"
        "    03:31:41.850 - ERROR - Task 'export-buffer' finished with status FAILURE\n" + "-" * 80 + "\n")
    assert tail(task.log_path) == [f"step {i}" for i in range(11, 30)] + ["ValueError: no space left"]
    out = io.StringIO()
    display = RunDisplay(out, live=False)
    display.task_started(task)
    display.task_finished(task, False, 9.0)
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[1][9:] == f"FAILED export-buffer Pong after 9s; last lines of {task.log_path}:"
    assert lines[-1] == "    ValueError: no space left" and len(lines) == 22


def test_results_text_keeps_the_tables_and_drops_the_notes() -> None:
    md = "# T\n\n| a |\n| --- |\n| 1 |\n\n1. a note\n2. another\n\n## S\n\n| b |\n\n1. note\n"
    assert results_text(md) == "# T\n| a |\n| 1 |\n## S\n| b |"


def _local_run(tmp_path: Path, tracking_uri: str):
    from polydistill_kfp.local import LocalRun

    return LocalRun(run_dir=tmp_path, store_uri=f"file://{tmp_path}/store", tracking_uri=tracking_uri,
                    report_dir=tmp_path / "report", report_md=tmp_path / "report" / "report.md", seconds=1.0)


def test_the_last_line_names_a_tracking_servers_own_address(tmp_path: Path) -> None:
    """Issue #31: with --tracking-uri http://127.0.0.1:5055 the run ends by naming that server, not
    `mlflow ui --backend-store-uri http://...` on port 5000 (a server is its own UI)."""
    for uri in ("http://127.0.0.1:5055", "http://127.0.0.1:5055/", "HTTPS://mlflow.example:8443"):
        run = _local_run(tmp_path, uri)
        line = run.mlflow_ui_line()
        assert run.mlflow_ui_command() is None
        assert line == f"MLflow UI: open {uri.rstrip('/')} (the run's tracking server)", line
        assert "5000" not in line and "mlflow ui" not in line


def test_the_last_line_opens_a_local_store_with_mlflow_ui(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    line = _local_run(tmp_path, uri).mlflow_ui_line()
    assert line == f"MLflow UI: mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
