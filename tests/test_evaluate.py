"""Evaluation: the cycle arithmetic, determinism, the random baseline, student head selection, bad inputs,
and the ``evaluate``/``report`` commands. Each play is a few hundred agent steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from polydistill import evaluate as ev
from polydistill.checkpoint import save_checkpoint
from polydistill.config import EvalConfig
from polydistill.envs import action_meanings
from polydistill.evaluate import (
    EvaluationError,
    cycle_score,
    cycle_scores_from_steps,
    evaluate,
    mean_std,
    protocol_envs,
    random_baseline,
)
from polydistill.networks import DuelingQNetwork


def cfg(**kw) -> EvalConfig:
    return EvalConfig(**{"device": "cpu", "num_envs": 2, **kw})


class _RecordingEnv:
    """Wraps a real vector env and records the actions it is stepped with."""

    def __init__(self, inner) -> None:
        self.inner, self.actions = inner, []

    def reset(self, **kw):
        return self.inner.reset(**kw)

    def step(self, actions):
        self.actions.append(np.asarray(actions).copy())
        return self.inner.step(actions)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def recorded(monkeypatch) -> list[_RecordingEnv]:
    """Every vector env the evaluator makes from now on, wrapped to record the actions it plays."""
    envs: list[_RecordingEnv] = []
    real = ev.make_vector_env

    def recording(*a, **kw):
        envs.append(_RecordingEnv(real(*a, **kw)))
        return envs[-1]

    monkeypatch.setattr(ev, "make_vector_env", recording)
    return envs


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A Breakout teacher run directory (``checkpoint/`` inside) holding a seeded, untrained network: the
    evaluator only needs its Q-values, and this costs no training time."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("teacher") / "Breakout"
    save_checkpoint(
        run / "checkpoint",
        DuelingQNetwork(4),
        {"kind": "teacher", "game": "Breakout", "games": ["Breakout"],
         "action_meanings": [action_meanings("Breakout")], "steps": 0},
    )  # fmt: skip
    return run


# ---------------------------------------------------------------------------------------------------------
# Cycle arithmetic (pure)


def test_cycle_score_is_the_mean_of_finished_episodes_and_ignores_the_running_one():
    assert cycle_score([3.0, 5.0, 10.0], running_return=100.0) == pytest.approx(6.0)


def test_cycle_score_without_finished_episodes_is_the_partial_return():
    assert cycle_score([], running_return=7.5) == 7.5
    assert cycle_score([], running_return=-3.0) == -3.0


def test_cycle_scores_from_scripted_steps():
    # Cycle 1 (steps 0-4): episodes of return 2 (ends step 1) and 3 (ends step 4) -> 2.5.
    # Cycle 2 (steps 5-9): one episode of 1 (ends step 6); the next (4 points) is cut at the end -> 1.0.
    # Cycle 3 (steps 10-14): nothing finishes -> the partial return 6.
    # Steps 15-16 are an incomplete cycle and are ignored.
    rewards = [1, 1, 0, 3, 0, 0, 1, 4, 0, 0, 2, 0, 0, 4, 0, 9, 9]
    ends = [0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    scores = cycle_scores_from_steps(rewards, [bool(e) for e in ends], cycle_steps=5)
    assert scores == pytest.approx([2.5, 1.0, 6.0])
    mean, std = mean_std(scores)
    assert mean == pytest.approx(9.5 / 3)
    # Population std by hand: deviations from 19/6 are -2/3, -13/6, 17/6.
    assert std == pytest.approx(math.sqrt(((2 / 3) ** 2 + (13 / 6) ** 2 + (17 / 6) ** 2) / 3))


def test_cycle_arithmetic_rejects_bad_input():
    with pytest.raises(ValueError, match="cycle_steps"):
        cycle_scores_from_steps([1.0], [True], cycle_steps=0)
    with pytest.raises(ValueError, match="differ in length"):
        cycle_scores_from_steps([1.0, 2.0], [True], cycle_steps=1)
    with pytest.raises(ValueError, match="no scores"):
        mean_std([])
    assert mean_std([4.0]) == (4.0, 0.0)


@pytest.mark.parametrize(
    ("units", "envs", "expected"), [(10, 8, 5), (3, 8, 3), (16, 8, 8), (7, 4, 4), (1, 8, 1)]
)
def test_protocol_envs_fills_the_fewest_waves(units, envs, expected):
    assert protocol_envs(units, envs) == expected


# ---------------------------------------------------------------------------------------------------------
# Playing


def test_random_policy_scores_near_the_known_breakout_baseline():
    # Published random play on Breakout: ~1.7 per episode. Generous bounds for 6 episodes.
    r = random_baseline("breakout", cfg(protocol="episodes", episodes=6, num_envs=3))
    assert r["episodes"] == 6 and len(r["scores"]) == 6
    assert 0.0 <= r["mean"] <= 10.0
    assert all(s >= 0 and s == int(s) for s in r["scores"])  # raw, unclipped points
    assert r["truncated_episodes"] == 0
    assert 50 <= r["steps"] / 6 <= 1000  # whole games, not lives: a random life lasts ~40 agent steps


def test_episode_scores_are_the_same_twice_and_independent_of_num_envs():
    # Episode j is seeded from (seed, j) whichever environment plays it, so 3 envs and 2 envs must agree.
    c = cfg(protocol="episodes", episodes=3, num_envs=3, seed=7)
    a = evaluate("random", ["Breakout"], c)["games"]["Breakout"]
    b = evaluate("random", ["Breakout"], c.model_copy(update={"num_envs": 2}))["games"]["Breakout"]
    other_seed = evaluate("random", ["Breakout"], c.model_copy(update={"seed": 8}))["games"]["Breakout"]
    key = ("scores", "episode_lengths", "steps")
    assert [a[k] for k in key] == [b[k] for k in key]
    assert a["episode_lengths"] != other_seed["episode_lengths"]


def test_teacher_scores_and_actions_are_deterministic_for_a_fixed_seed(teacher_dir, tmp_path, recorded):
    c = cfg(protocol="cycles", cycles=2, cycle_steps=100, num_envs=2, epsilon=0.3, seed=3)
    first = evaluate(teacher_dir, ["Breakout"], c, out_dir=tmp_path / "a")
    second = evaluate(teacher_dir, ["Breakout"], c)
    evaluate(teacher_dir, ["Breakout"], c.model_copy(update={"seed": 4}))
    g1, g2 = first["games"]["Breakout"], second["games"]["Breakout"]
    for k in ("scores", "episode_returns", "episode_lengths", "episodes_per_cycle", "steps", "mean", "std"):
        assert g1[k] == g2[k], k
    # Every action of both plays agrees (states and epsilon draws alike); another seed plays differently.
    acts = [np.stack(e.actions) for e in recorded]
    assert acts[0].shape == (100, 2)
    np.testing.assert_array_equal(acts[0], acts[1])
    assert not np.array_equal(acts[0], acts[2])
    assert g1["steps"] == 2 * 100 and len(g1["scores"]) == 2
    assert first["agent"]["label"] == "teacher" and first["agent"]["kind"] == "teacher"
    assert first["agent"]["path"] == str((teacher_dir / "checkpoint").resolve())
    assert first["protocol"] == "cycles" and first["config"]["cycles"] == 2
    written = json.loads((tmp_path / "a" / "scores.json").read_text())
    assert written["games"]["Breakout"]["scores"] == g1["scores"]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != "scores.json"]  # no temporary files


def _forced_head(head, action: int) -> None:
    """Make a dueling head's Q-values prefer ``action`` whatever the state."""
    last = head.advantage[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[action] = 10.0


def test_student_plays_each_game_with_its_own_head(tmp_path, recorded):
    # Heads in the non-obvious order: head 0 is Pong's (6 actions), head 1 Breakout's (4 actions).
    net = DuelingQNetwork([6, 4])
    _forced_head(net.heads[0], 5)  # Pong: always action 5
    _forced_head(net.heads[1], 2)  # Breakout: always action 2
    games = ["Breakout", "Pong"]
    save_checkpoint(
        tmp_path / "student",
        net,
        {
            "kind": "student",
            "games": games,
            "actions": "per-game",
            "head_for_game": {"Breakout": 1, "Pong": 0},
            "action_meanings": {g: action_meanings(g) for g in games},
            "source": "subset",
        },
    )
    res = evaluate(tmp_path / "student", games, cfg(protocol="cycles", cycles=1, cycle_steps=40, epsilon=0.0))
    assert res["agent"]["label"] == "student_subset" and res["agent"]["source"] == "subset"
    assert res["agent"]["input"] == "frames"
    assert res["agent"]["games"] == ["Breakout", "Pong"]
    breakout, pong = (np.concatenate(e.actions) for e in recorded)
    assert len(breakout) == 40 and set(breakout.tolist()) == {2}
    assert len(pong) == 40 and set(pong.tolist()) == {5}


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: all refused before any environment is made


@pytest.fixture
def no_play(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("an environment was made before the inputs were checked")

    monkeypatch.setattr(ev, "make_vector_env", refuse)


def test_unknown_game_is_refused_with_a_suggestion(no_play):
    with pytest.raises(EvaluationError, match="Did you mean 'Breakout'"):
        evaluate("random", ["Breakout", "Breakoutt"], cfg())


def test_agent_that_does_not_know_the_game_is_refused(teacher_dir, no_play):
    with pytest.raises(EvaluationError, match="does not play Pong"):
        evaluate(teacher_dir, ["Breakout", "Pong"], cfg())


@pytest.mark.parametrize(
    "bad",
    [
        {"protocol": "cycles", "cycles": 0},
        {"protocol": "cycles", "cycle_steps": -5},
        {"protocol": "episodes", "episodes": 0},
        {"protocol": "tournament"},
        {"epsilon": 1.5},
        {"num_envs": 0},
        {"unknown_setting": 1},
    ],
)
def test_bad_protocol_numbers_are_refused(bad, no_play):
    with pytest.raises(EvaluationError):
        evaluate("random", ["Breakout"], {"device": "cpu", **bad})


def test_bad_agent_games_label_and_out_are_refused(tmp_path, no_play):
    with pytest.raises(EvaluationError, match="neither 'random' nor a directory"):
        evaluate(tmp_path / "missing", ["Breakout"], cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="not a polydistill checkpoint"):
        evaluate(tmp_path / "empty", ["Breakout"], cfg())
    with pytest.raises(EvaluationError, match="no games"):
        evaluate("random", [], cfg())
    with pytest.raises(EvaluationError, match="label"):
        evaluate("random", ["Breakout"], cfg(), label=" ")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvaluationError, match="is a file"):
        evaluate("random", ["Breakout"], cfg(), out_dir=tmp_path / "file")
    with pytest.raises(EvaluationError, match="Agent"):
        evaluate(object(), ["Breakout"], cfg())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Commands


def test_evaluate_and_report_commands(tmp_path):
    from polydistill.cli import main

    runner = CliRunner()
    out = tmp_path / "random"
    r = runner.invoke(
        main,
        ["evaluate", "--agent", "random", "--game", "Breakout", "--protocol", "episodes", "--episodes", "2",
         "--num-envs", "2", "--seed", "5", "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Breakout" in r.output and (out / "scores.json").is_file()
    data = json.loads((out / "scores.json").read_text())
    assert data["agent"]["label"] == "random" and data["config"]["seed"] == 5 and data["games"]["Breakout"]

    rep = runner.invoke(main, ["report", str(out), "--out", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    assert "| Game | Random |" in rep.output and "| Breakout |" in rep.output
    assert (tmp_path / "report" / "report.html").is_file()

    x = str(tmp_path / "x")
    bad = runner.invoke(main, ["evaluate", "--agent", "random", "--game", "Pongg", "--out", x])
    assert bad.exit_code != 0 and "Did you mean 'Pong'" in bad.output and "Traceback" not in bad.output
    no_game = runner.invoke(main, ["evaluate", "--agent", "random", "--out", x])
    assert no_game.exit_code != 0 and "--game" in no_game.output
    assert not Path(x).exists()
