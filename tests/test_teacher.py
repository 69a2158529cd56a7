"""Teacher training: schedule, Double-DQN targets, a real short run, kill-and-resume, bad inputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from polydistill import config as C
from polydistill.buffer import ExperienceDataset
from polydistill.teacher import (
    TeacherRunError,
    double_dqn_targets,
    linear_schedule,
    load_teacher,
    train_teacher,
)
from tests.conftest import TINY_TEACHER, tiny_teacher_config


def test_linear_epsilon_schedule() -> None:
    assert linear_schedule(1.0, 0.01, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.01, 100, 50) == pytest.approx(0.505)
    assert linear_schedule(1.0, 0.01, 100, 100) == pytest.approx(0.01)
    assert linear_schedule(1.0, 0.01, 100, 10_000) == pytest.approx(0.01)


class _Fixed(torch.nn.Module):
    def __init__(self, q: list[list[float]]) -> None:
        super().__init__()
        self.q = torch.tensor(q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q[: len(x)]


def test_double_dqn_target_by_hand() -> None:
    online = _Fixed([[1.0, 5.0, 2.0], [9.0, 0.0, 3.0]])  # argmax: action 1, action 0
    target = _Fixed([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    y = double_dqn_targets(
        online, target, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]), gamma=0.5
    )
    # Row 0: 1 + 0.5 * target[0, argmax online = 1] = 1 + 10; row 1 is terminal: -1.
    assert y.tolist() == [11.0, -1.0]


def test_short_real_run_outputs(teacher_runs) -> None:
    run = teacher_runs["Pong"]
    model, meta = load_teacher(run)
    assert meta["game"] == "Pong" and meta["action_meanings"][0][0] == "NOOP"
    assert meta["steps"] == 2_000 and meta["observation"]["frame_stack"] == 4
    assert model(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).shape == (1, 6)
    ds = ExperienceDataset(str(run / "dataset"))
    assert ds.game == "Pong" and ds.manifest.num_steps == TINY_TEACHER["record_steps"]
    assert ds.verify_all() == []
    with open(run / "curve.csv") as f:
        header = next(csv.reader(f))
    assert header == ["step", "episode_return", "episode_length", "epsilon"]
    assert (run / "curve.png").stat().st_size > 5_000


def test_learning_curve_records_whole_episodes(tmp_path) -> None:
    # Random play (learning never starts) finishes Breakout episodes quickly; a barely trained greedy
    # policy may never press FIRE and stall, which is real Breakout behaviour, not a recording problem.
    res = train_teacher("Breakout", tiny_teacher_config(total_steps=1_600, learning_starts=1_600), tmp_path / "r")
    with open(res.curve_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2 and res.episodes == len(rows)
    # Whole games (all 5 lives, raw rewards): long episodes with non-negative, unclipped returns.
    assert all(int(r["episode_length"]) > 50 and float(r["episode_return"]) >= 0 for r in rows)
    assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "polydistill.cli", *args]


def test_the_seed_fixes_the_whole_run(tmp_path) -> None:
    # The seed covers the networks' initial weights too, not only the environments and the sampling:
    # two runs with one seed end with the same weights to the bit, and another seed gives another teacher.
    cfg = tiny_teacher_config(total_steps=400, record_steps=400)
    runs = [
        train_teacher("Breakout", cfg, tmp_path / "a"),
        train_teacher("Breakout", cfg, tmp_path / "b"),
        train_teacher("Breakout", tiny_teacher_config(total_steps=400, record_steps=400, seed=2), tmp_path / "c"),
    ]
    a, b, c = (load_teacher(r.out_dir)[0].state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_no_td_loss_is_reported_before_learning_starts(tmp_path) -> None:
    seen: list[tuple[int, dict]] = []
    cfg = tiny_teacher_config(total_steps=2_100, learning_starts=1_500, record_steps=400)
    train_teacher("Breakout", cfg, tmp_path / "r", on_metrics=lambda m, step: seen.append((step, dict(m))))
    periodic = [(step, m) for step, m in seen if "steps_per_second" in m]
    assert [step // 1_000 for step, _ in periodic] == [1, 2]  # logged as each 1,000th step is crossed
    assert "td_loss" not in periodic[0][1] and periodic[0][1]["updates"] == 0
    assert np.isfinite(periodic[1][1]["td_loss"]) and periodic[1][1]["updates"] > 0


def test_killed_run_resumes_to_the_same_result(teacher_runs, tmp_path) -> None:
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY_TEACHER, "checkpoint_every": 200}))
    out = tmp_path / "run"
    args = _cli(
        "train-teacher",
        "--game",
        "Breakout",
        "--out",
        str(out),
        "--profile",
        "smoke",
        "--config",
        str(cfg_file),
    )
    env = {**os.environ, "POLYDISTILL_PROGRESS": "off"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = out / "resume" / "LATEST"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for a condition (the first resume point), not for time
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists(), proc.stdout.read().decode()[-2000:]
    assert json.loads((out / "run.json").read_text()).get("status") != "finished"

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming Breakout teacher from step" in done.stderr
    _, meta = load_teacher(out)
    unbroken = ExperienceDataset(str(teacher_runs["Breakout"] / "dataset"))
    resumed = ExperienceDataset(str(out / "dataset"))
    assert meta["steps"] == TINY_TEACHER["total_steps"]
    assert resumed.manifest.num_steps == unbroken.manifest.num_steps == TINY_TEACHER["record_steps"]
    assert not (out / "resume").exists()


def test_bad_inputs_fail_before_training(teacher_runs, tmp_path) -> None:
    r = subprocess.run(
        _cli("train-teacher", "--game", "Pongg", "--out", str(tmp_path / "a")), capture_output=True, text=True
    )
    assert r.returncode != 0 and "Did you mean 'Pong'" in r.stderr
    assert not (tmp_path / "a").exists()
    r = subprocess.run(
        _cli("train-teacher", "--game", "Pong", "--steps", "0", "--out", str(tmp_path / "b")),
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "total_steps" in r.stderr
    with pytest.raises(TeacherRunError, match="holds a teacher run for 'Pong'"):
        train_teacher("Breakout", tiny_teacher_config(), teacher_runs["Pong"])
    with pytest.raises(TeacherRunError, match="record_steps"):
        train_teacher("Pong", tiny_teacher_config(record_steps=5_000), tmp_path / "c")


def test_a_game_budget_is_the_run_it_trains(teacher_runs, tmp_path) -> None:
    """A run trained with ``--steps N`` is the run that ``game_steps: {GAME: N}`` asks for (reused, not
    retrained or refused): the identity holds the budget the game trains, not how it was spelt."""
    out = tmp_path / "Pong"
    shutil.copytree(teacher_runs["Pong"], out)
    trained = json.loads((out / "run.json").read_text())["config"]
    steps = trained["total_steps"]
    def budget(game_steps: dict[str, int]) -> C.TeacherConfig:
        return C.from_dict("teacher", {**trained, "total_steps": 100, "game_steps": game_steps})

    res = train_teacher("Pong", budget({"Pong": steps}), out)
    assert res.steps == steps
    assert json.loads((out / "run.json").read_text())["config"]["total_steps"] == steps
    with pytest.raises(TeacherRunError, match="total_steps"):  # another game's budget is not this one's
        train_teacher("Pong", budget({"Breakout": steps}), out)


def test_unreadable_resume_checkpoint(tmp_path) -> None:
    out = tmp_path / "run"
    cfg = tiny_teacher_config(checkpoint_every=200)
    with pytest.raises(KeyboardInterrupt):
        train_teacher("Breakout", cfg, out, stop_after=250)
    latest = out / "resume" / (out / "resume" / "LATEST").read_text().strip()
    (latest / "state.pt").write_bytes(b"garbage")
    with pytest.raises(TeacherRunError, match="cannot resume"):
        train_teacher("Breakout", cfg, out)


def test_teacher_loads_with_weights_only(teacher_runs) -> None:
    state = torch.load(Path(teacher_runs["Breakout"]) / "checkpoint" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert np.isfinite(np.concatenate([v.numpy().ravel() for v in state.values()])).all()
