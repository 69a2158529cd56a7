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
