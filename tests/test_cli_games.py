"""``--games A B``, ``--games A,B`` and ``--games A --games B`` mean the same on every command that takes
games (issue #24). The commands' real parsers are used (``make_context`` parses without running)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from polydistill.cli import main

SPELLINGS = [
    ["Pong", "Breakout"],
    ["Pong,Breakout"],
    ["Pong", "FLAG", "Breakout"],
    ["Pong,", "Breakout"],
]
#: Each command, the arguments it needs besides the games, and its games flag.
COMMANDS = {
    "run": ([], "--games"),
    "submit": (["--host", "http://127.0.0.1:1"], "--games"),
    "schedule": (["--host", "http://127.0.0.1:1", "--cron", "0 0 3 * * *"], "--games"),
    "compare": ([], "--games"),
    "evaluate": (["--agent", "random", "--out", "x"], "--game"),
}


def _games(command: str, spelling: list[str], after: list[str] | None = None) -> tuple[str, ...]:
    required, flag = COMMANDS[command]
    args = [flag] + [flag if s == "FLAG" else s for s in spelling]
    ctx = main.commands[command].make_context(command, [*required, *args, *(after or [])])
    return ctx.params["games"]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("spelling", SPELLINGS, ids=lambda s: " ".join(s))
def test_every_spelling_gives_the_same_games(command: str, spelling: list[str]) -> None:
    assert _games(command, spelling) == ("Pong", "Breakout")


def test_the_flag_stops_at_the_next_option() -> None:
    ctx = main.commands["run"].make_context(
        "run", ["--games", "Pong", "Breakout", "--teacher-steps", "5", "--games", "Seaquest", "--profile", "smoke"])
    assert ctx.params["games"] == ("Pong", "Breakout", "Seaquest")
    assert ctx.params["hp__teacher_steps"] == 5 and ctx.params["profile"] == "smoke"


def test_no_games_is_the_profiles() -> None:
    assert main.commands["run"].make_context("run", []).params["games"] == ()


def test_every_game_after_the_flag_is_checked() -> None:
    # The failure was click's "Got unexpected extra argument (Breakout)"; now the second game is
    # parsed, and checked like the first (one line, status 2, before any work).
    res = CliRunner().invoke(main, ["run", "--games", "Pong", "Breakot"])
    assert res.exit_code == 2, res.output
    assert "unexpected extra argument" not in res.output
    assert "polydistill: error:" in res.output and "Breakot" in res.output and "Breakout" in res.output


def test_per_game_teacher_budgets_on_the_command_line(tmp_path) -> None:
    """``--teacher-game-steps GAME=STEPS,...`` reaches the pipeline as the mapping its parameter holds; a bad
    item is one line naming the flag, before the run directory exists."""
    from polydistill import config as C
    from polydistill_kfp.local import pipeline_arguments

    value = C.pipeline_value("teacher_game_steps", "Pong=400_000,Breakout=200000")
    assert value == {"Pong": 400_000, "Breakout": 200_000}
    args = pipeline_arguments("cpu", ["Pong"], "file:///x", "sqlite:///x.db", {"teacher_game_steps": value})
    assert args["teacher_game_steps"] == value
    for bad, says in (("Pong", "is not GAME=STEPS"), ("../Pong=5", "not a game name"), ("Pong=0", "at least 1")):
        run_dir = tmp_path / "run"
        res = CliRunner().invoke(main, ["run", "--teacher-game-steps", bad, "--run-dir", str(run_dir)])
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()[-1]
        assert "polydistill: error: --teacher-game-steps" in line and says in line
        assert not run_dir.exists()
