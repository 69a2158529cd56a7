"""Shared fixtures: short real teacher runs (session-scoped so the suite trains each game once), and the
S3 server fixtures from conftest_store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polydistill import config as C

pytest_plugins = ["tests.conftest_store", "tests.conftest_mlflow"]

os.environ.setdefault("POLYDISTILL_PROGRESS", "log")
os.environ.setdefault("MPLBACKEND", "Agg")

# Tiny but real: 4 envs, learning starts at 200 steps, about 100 learner updates.
TINY_TEACHER = {
    "total_steps": 800,
    "num_envs": 4,
    "buffer_size": 1_000,
    "learning_starts": 200,
    "target_network_frequency": 200,
    "exploration_fraction": 0.5,
    "record_steps": 800,
    # No resume point inside the shared runs: each one ends the episodes (so that a resumed run is the unbroken
    # one, see teacher._cut), and four cuts in 2,000 steps would make these tiny teachers another experiment.
    # The resume tests set their own (200).
    "checkpoint_every": 10_000,
}
TEST_GAMES = ("Breakout", "Pong")


def tiny_teacher_config(**overrides):
    """The teacher config the test suite trains with (smoke profile, smaller)."""
    return C.resolve("teacher", "smoke", overrides={**TINY_TEACHER, **overrides})


@pytest.fixture(scope="session")
def teacher_runs(tmp_path_factory) -> dict[str, Path]:
    """{game: run directory} of finished tiny teacher runs for Breakout (4 actions) and Pong (6 actions)."""
    from polydistill.teacher import train_teacher

    root = tmp_path_factory.mktemp("teachers")
    runs = {}
    for game in TEST_GAMES:
        # Pong gets a few thousand steps (a real short training); Breakout enough for whole episodes.
        extra = {"total_steps": 2_000} if game == "Pong" else {"total_steps": 1_000}
        res = train_teacher(game, tiny_teacher_config(**extra), root / game)
        runs[game] = res.out_dir
    return runs
