"""Game-name resolution and the preprocessed vector environment."""

from __future__ import annotations

import numpy as np
import pytest

from polydistill.config import EnvConfig
from polydistill.envs import (
    EpisodeStats,
    UnknownGameError,
    action_meanings,
    canonical_game,
    make_vector_env,
    rom_id,
)


@pytest.mark.parametrize("name", ["Pong", "ALE/Pong-v5", "pong", "PongNoFrameskip-v4", " PONG "])
def test_game_name_forms(name: str) -> None:
    assert rom_id(name) == "pong"
    assert canonical_game(name) == "Pong"


def test_camel_case_round_trip() -> None:
    assert rom_id("UpNDown") == "up_n_down" and canonical_game("up_n_down") == "UpNDown"
    assert canonical_game("ALE/DemonAttack-v5") == "DemonAttack"


def test_unknown_game_suggests_closest() -> None:
    with pytest.raises(UnknownGameError, match="Did you mean 'Pong'"):
        rom_id("Pongg")
    with pytest.raises(UnknownGameError, match="unknown Atari game 'Xyzzy'"):
        rom_id("Xyzzy")


def test_action_sets() -> None:
    assert action_meanings("Breakout") == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert len(action_meanings("Breakout", full_action_space=True)) == 18
    assert len(action_meanings("DemonAttack")) == len(action_meanings("UpNDown")) == 6


def test_vector_env_preprocessing_and_raw_rewards() -> None:
    env = make_vector_env("Breakout", 2, EnvConfig())
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, :3] == 0).all() and obs[:, 3].any()  # zero-padded reset stack
    stats = EpisodeStats(2)
    finished = []
    rng = np.random.default_rng(0)
    for _ in range(2000):
        obs, r, term, trunc, _info = env.step(rng.integers(0, 4, 2).astype(np.int64))
        finished += stats.update(r, term, trunc)
        if len(finished) >= 2:
            break
    env.close()
    assert len(finished) >= 2
    # Real episodes (all 5 lives), raw rewards: returns are sums of unclipped points, lengths > 1 life.
    assert all(length > 20 for _, _, length in finished)


def test_sticky_and_full_action_space_options() -> None:
    env = make_vector_env("Pong", 1, EnvConfig(sticky_actions=0.25, full_action_space=True))
    assert env.single_action_space.n == 18
    env.close()
