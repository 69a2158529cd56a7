"""The CLI's one error handler (issue #24): a PolydistillError is one line and status 2, anything else one line
naming the traceback's file and status 1, ``--debug`` the traceback itself; click's usage errors unchanged."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from polydistill.cli import handler, main
from polydistill.errors import PolydistillError


@pytest.fixture
def boom() -> Iterator[list[BaseException]]:
    """A ``boom`` subcommand raising what the test puts in the list (removed afterwards)."""
    raised: list[BaseException] = []

    @click.command("boom")
    def boom_cmd() -> None:
        raise raised[0]

    main.add_command(boom_cmd)
    yield raised
    main.commands.pop("boom")


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("polydistill: error:")]


def test_a_library_error_is_one_line_and_status_2(tmp_path: Path) -> None:
    # A real command and a real library error: no dataset at that path (DatasetError).
    res = CliRunner().invoke(main, ["buffer-info", str(tmp_path / "nothing-here")])
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert "nothing-here" in line
    assert "Traceback" not in res.output


def test_an_input_the_cli_refuses_is_one_line_and_status_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["evaluate", "--agent", "random", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert _error_lines(res.output) == ["polydistill: error: --agent random plays any game: name the games with --game"]


def test_a_multi_line_message_is_folded_and_redacted(boom, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    boom.append(PolydistillError("store s3://b refused key s3cr3t-value-123\nsecond line"))
    res = CliRunner().invoke(main, ["boom"])
    assert res.exit_code == 2
    assert _error_lines(res.output) == ["polydistill: error: store s3://b refused key *** second line"]


def test_usage_errors_keep_clicks_behaviour() -> None:
    res = CliRunner().invoke(main, ["run", "--profile", "nope"])
    assert res.exit_code == 2
    assert "Usage: " in res.output and "Invalid value for '--profile'" in res.output
    assert not _error_lines(res.output)


def test_an_unexpected_error_names_its_type_and_the_traceback_file(boom, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "polydistill.log"
    handler.set_error_log(log)
    try:
        boom.append(ZeroDivisionError("division by zero"))
        res = CliRunner().invoke(main, ["boom"])
    finally:
        handler._error_log = None
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert _error_lines(res.output) == [
        f"polydistill: error: unexpected ZeroDivisionError: division by zero (full traceback in {log})"]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "raise raised[0]" in text


def test_without_a_command_log_the_traceback_goes_to_a_temp_file(boom) -> None:
    boom.append(KeyError("k"))
    res = CliRunner().invoke(main, ["boom"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = _error_lines(res.output)
    path = Path(re.search(r"full traceback in (\S+)\)$", line)[1])  # type: ignore[index]
    assert "KeyError" in path.read_text()
    path.unlink()


def test_debug_shows_the_traceback(boom) -> None:
    boom.append(ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        CliRunner().invoke(main, ["--debug", "boom"], catch_exceptions=False)
    res = CliRunner().invoke(main, ["--debug", "boom"])
    assert isinstance(res.exception, ZeroDivisionError) and not _error_lines(res.output)


def test_run_writes_an_unexpected_errors_traceback_into_its_run_dir(tmp_path: Path, monkeypatch) -> None:
    import polydistill_kfp.local as local

    def broken(**kwargs):
        raise ValueError("a bug in the runner")

    monkeypatch.setattr(local, "run_local", broken)
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--profile", "smoke", "--run-dir", str(run_dir)])
    log = run_dir.resolve() / "logs" / "polydistill.log"
    handler._error_log = None
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert _error_lines(res.output) == [
        f"polydistill: error: unexpected ValueError: a bug in the runner (full traceback in {log})"]
    assert "a bug in the runner" in log.read_text()


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    # The real entry point in its own process: stderr holds the one line and nothing else.
    r = subprocess.run([sys.executable, "-m", "polydistill.cli", "buffer-info", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == _error_lines(r.stderr) and len(_error_lines(r.stderr)) == 1
