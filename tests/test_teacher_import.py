"""Teachers from Stable-Baselines3 and CleanRL (``import-teacher``), and experience datasets out to Minari.

A real SB3 DQN is trained here for a few hundred steps on ALE through SB3's own Atari wrappers; the CleanRL
checkpoint is built as ``dqn_atari.py`` builds and saves its ``QNetwork`` (its layer names, its
``torch.save(q_network.state_dict())``). Each imported teacher must pick the source model's action on the
same 100 observations, every one of them.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from polydistill.agents import load_agent
from polydistill.buffer import ExperienceDataset
from polydistill.cli import main
from polydistill.config import resolve
from polydistill.envs import make_vector_env
from polydistill.export import export_buffer
from polydistill.networks import NatureQNetwork
from polydistill.teacher_import import TeacherImportError, import_teacher

sb3 = pytest.importorskip("stable_baselines3")
minari = pytest.importorskip("minari")


class CleanRLQNetwork(nn.Module):
    """CleanRL ``dqn_atari.py``'s ``QNetwork``, layer for layer."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(),
            nn.Linear(512, n),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / 255.0)


def _observations(game: str, n: int = 100, seed: int = 3) -> np.ndarray:
    """``n`` states of ``game`` from our environment under random play (uint8 (n, 4, 84, 84))."""
    envs = make_vector_env(game, 4)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    out = []
    while len(out) < 60 + n // 4 + 1:  # past the first 60 steps, where little moves yet
        obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, size=4))
        out.append(obs.copy())
    envs.close()
    return np.concatenate(out[60:])[:n]


@pytest.fixture(scope="session")
def sb3_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A DQN trained 300 steps by SB3 on Breakout with SB3's Atari wrappers and a 4-frame stack, saved."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)
    model = DQN("CnnPolicy", env, buffer_size=500, learning_starts=100, train_freq=4, batch_size=8, seed=0,
                device="cpu")
    model.learn(300)
    path = tmp_path_factory.mktemp("sb3") / "dqn-breakout.zip"
    model.save(path)
    env.close()
    return path, model


@pytest.fixture(scope="session")
def cleanrl_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CleanRLQNetwork]:
    """A CleanRL Q-network for Pong (6 actions), saved as dqn_atari.py saves it."""
    torch.manual_seed(7)
    net = CleanRLQNetwork(6)
    # An untrained network picks the same action in nearly every Pong state, which would not test the mapping:
    # the output layer is set along the main directions in which its features vary between states.
    obs = torch.as_tensor(_observations("Pong", seed=11)).float()
    with torch.no_grad():
        h = net.network[:9](obs / 255.0)
        mean = h.mean(0)
        _, _, v = torch.linalg.svd(h - mean, full_matrices=False)
        w = torch.cat([v[:3], -v[:3]]) / (h - mean).norm(dim=1).mean()
        net.network[9].weight.copy_(w)
        net.network[9].bias.copy_(-(w @ mean))
    path = tmp_path_factory.mktemp("cleanrl") / "dqn_atari.cleanrl_model"
    torch.save(net.state_dict(), path)
    return path, net


def _cfg(**overrides: Any) -> Any:
    return resolve("import", "smoke", overrides={"record_steps": 200, "num_envs": 2, "device": "cpu", **overrides})


def _agreement(teacher_dir: Path, game: str, obs: np.ndarray, source_q: torch.Tensor) -> int:
    agent = load_agent(teacher_dir, "cpu")
    q = agent.q_values(obs, game)
    torch.testing.assert_close(q, source_q.float(), rtol=1e-5, atol=1e-5)
    return int((agent.act(obs, game, epsilon=0.0) == source_q.argmax(1).numpy()).sum())


@pytest.mark.slow
def test_an_sb3_dqn_imports_and_agrees_with_its_source(sb3_model: tuple[Path, Any], tmp_path: Path) -> None:
    path, model = sb3_model
    res = import_teacher("sb3", path, "Breakout", _cfg(), tmp_path / "Breakout")
    meta = json.loads((res.checkpoint_dir / "metadata.json").read_text())
    assert meta["architecture"]["type"] == "nature_dqn" and meta["imported_from"]["library"] == "sb3"
    obs = _observations("Breakout")
    actions, _ = model.predict(obs, deterministic=True)
    with torch.no_grad():
        source_q = model.q_net(torch.as_tensor(obs))
    assert np.array_equal(actions, source_q.argmax(1).numpy())
    assert _agreement(res.checkpoint_dir, "Breakout", obs, source_q) == 100
    # The recording is a dataset export-buffer takes as it takes a trained teacher's.
    ds = ExperienceDataset(res.dataset_uri)
    assert ds.game == "Breakout" and len(ds) >= 200


def test_a_cleanrl_qnetwork_imports_and_agrees_with_its_source(
    cleanrl_model: tuple[Path, CleanRLQNetwork], tmp_path: Path
) -> None:
    path, net = cleanrl_model
    res = import_teacher("cleanrl", path, "Pong", _cfg(), tmp_path / "Pong")
    obs = _observations("Pong")
    with torch.no_grad():
        source_q = net(torch.as_tensor(obs).float())
    assert len(set(source_q.argmax(1).tolist())) > 1, "a constant policy would not test the mapping"
    assert _agreement(res.checkpoint_dir, "Pong", obs, source_q) == 100
    # The same import again reuses the directory; another one into it is refused.
    assert import_teacher("cleanrl", path, "Pong", _cfg(), tmp_path / "Pong").out_dir == res.out_dir
    with pytest.raises(TeacherImportError, match="already exists and is not this import"):
        import_teacher("cleanrl", path, "Pong", _cfg(epsilon=0.2), tmp_path / "Pong")


def _bad_checkpoints(tmp: Path, cleanrl: Path) -> list[tuple[list[str], str]]:
    """(CLI arguments, expected message part) for checkpoints that must not import."""
    text = tmp / "notes.zip"
    text.write_text("not a model")
    other_zip = tmp / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "hi")
    state = torch.load(cleanrl, weights_only=True)
    missing = tmp / "missing.cleanrl_model"
    torch.save({k: v for k, v in state.items() if not k.startswith("network.9")}, missing)
    rgb = tmp / "rgb.cleanrl_model"
    torch.save({**state, "network.0.weight": torch.zeros(32, 3, 8, 8)}, rgb)
    garbage = tmp / "garbage.cleanrl_model"
    garbage.write_bytes(b"\x00\x01 definitely not torch")
    base = ["--game", "Pong", "--profile", "smoke"]
    return [
        (["--from", "sb3", str(text), *base], "not a zip archive"),
        (["--from", "sb3", str(other_zip), *base], "no data/policy.pth member"),
        (["--from", "cleanrl", str(missing), *base], "missing network.9.bias, network.9.weight"),
        (["--from", "cleanrl", str(rgb), *base], "3 input channels: RGB frames?"),
        (["--from", "cleanrl", str(garbage), *base], "could not be loaded as weights"),
        (["--from", "cleanrl", str(cleanrl), "--game", "Breakout", "--profile", "smoke"],
         "6 actions (Breakout's minimal action set has 4)"),
        (["--from", "cleanrl", str(cleanrl), *base, "--frame-skip", "3", "--noop-max", "0"],
         "frame skip 4 (ours 3); no-op starts 30 (ours 0)"),
        (["--from", "cleanrl", str(tmp / "absent.pt"), *base], "not found"),
    ]


def test_a_malformed_or_mismatched_checkpoint_is_one_line_and_writes_nothing(
    cleanrl_model: tuple[Path, CleanRLQNetwork], tmp_path: Path
) -> None:
    for args, expected in _bad_checkpoints(tmp_path, cleanrl_model[0]):
        out = tmp_path / "out" / "teacher"
        res = CliRunner().invoke(main, ["import-teacher", *args, "--out", str(out)])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2, (args, res.output)
        assert len(lines) == 1 and lines[0].startswith("polydistill: error: "), (args, res.output)
        assert expected in lines[0], (args, lines[0])
        assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), args


def test_an_sb3_archive_of_another_algorithm_is_refused(sb3_model: tuple[Path, Any], tmp_path: Path) -> None:
    # The same archive with the policy of another algorithm (SB3-contrib's QR-DQN) and with extra Q layers.
    src, _ = sb3_model
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    data = json.loads(members["data"])
    data["policy_class"]["__module__"] = "sb3_contrib.qrdqn.policies"
    qr = tmp_path / "qrdqn.zip"
    with zipfile.ZipFile(qr, "w") as z:
        for n, b in members.items():
            z.writestr(n, json.dumps(data) if n == "data" else b)
    refused = re.escape("a sb3_contrib.qrdqn.policies policy; only Stable-Baselines3 DQN")
    with pytest.raises(TeacherImportError, match=refused):
        import_teacher("sb3", qr, "Breakout", _cfg(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_nature_network_maps_cleanrl_layers_one_to_one(cleanrl_model: tuple[Path, CleanRLQNetwork]) -> None:
    # Same parameter count and shapes as dqn_atari.py's network: nothing added, nothing dropped.
    _, net = cleanrl_model
    ours = NatureQNetwork(6)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in net.parameters()]


def test_a_student_initialised_from_an_imported_teacher_copies_its_torso_only() -> None:
    # The Nature-DQN head does not fit the student's Dueling head; the torso does, and is copied exactly.
    from polydistill.config import DistillConfig
    from polydistill.distill import build_student, plan_layout

    torch.manual_seed(0)
    teacher = NatureQNetwork(6)
    layout = plan_layout("per-game", {"Pong": ["a"] * 6})
    student = build_student(layout, DistillConfig(init="teacher:Pong", width=1.0), {"Pong": teacher})
    assert all(torch.equal(a, b) for a, b in zip(student.torso.state_dict().values(),
                                                   teacher.torso.state_dict().values(), strict=True))


def _dataset_rows(uri: str) -> dict[str, np.ndarray]:
    """Every non-context row of a dataset in row order, with its state."""
    ds = ExperienceDataset(uri)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("actions", "rewards", "terminated", "truncated", "q",
                                                          "valid", "states")}
    for shard in ds.iter_shards():
        rows = np.arange(shard.info.context, len(shard.arrays["actions"]))
        for k in cols:
            if k == "states":
                cols[k].append(shard.states(rows))
            else:
                cols[k].append(shard.arrays[k][rows])
    return {k: np.concatenate(v) for k, v in cols.items()}


def test_a_minari_round_trip_returns_identical_arrays(
    cleanrl_model: tuple[Path, CleanRLQNetwork], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = import_teacher("cleanrl", cleanrl_model[0], "Pong", _cfg(record_steps=600), tmp_path / "Pong")
    buffer = (tmp_path / "buffers" / "Pong").as_uri()
    export_buffer(res.out_dir, buffer, res.out_dir, resolve("export", "smoke", overrides={"shard_steps": 128}),
                  device="cpu")
    out = CliRunner().invoke(main, ["export-minari", buffer, "--to", str(tmp_path / "minari")])
    assert out.exit_code == 0, out.output
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    mds = minari.load_dataset("polydistill/pong-v0")
    ours = _dataset_rows(buffer)
    seen = np.zeros(len(ours["actions"]), dtype=bool)
    for ep in mds.iterate_episodes():
        rows = ep.infos["step"][:-1]
        assert np.array_equal(ep.observations[:-1], ours["states"][rows])
        assert np.array_equal(ep.observations[-1], ep.observations[-2]) and ep.infos["repeated"][-1]
        assert np.array_equal(ep.actions, ours["actions"][rows])
        assert np.array_equal(ep.rewards, ours["rewards"][rows])
        assert np.array_equal(ep.terminations, ours["terminated"][rows])
        assert np.array_equal(ep.truncations, ours["truncated"][rows])
        assert np.array_equal(ep.infos["q_values"][:-1], ours["q"][rows].astype(np.float32))
        assert not seen[rows].any()
        seen[rows] = True
    # Every valid row went out exactly once, episodes end where the dataset's do (shards of 128 rows cut them).
    assert np.array_equal(seen, ours["valid"].astype(bool)) and mds.total_steps == int(seen.sum())
    assert int(ours["terminated"].sum() + ours["truncated"].sum()) <= mds.total_episodes
    again = CliRunner().invoke(main, ["export-minari", buffer, "--to", str(tmp_path / "minari")])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.slow
def test_a_smoke_dag_with_one_imported_and_one_trained_teacher(
    cleanrl_model: tuple[Path, CleanRLQNetwork], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from polydistill.tracking import names as N
    from tests.test_pipeline import SMOKE_PARAMS

    run_dir = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMOKE_PARAMS.items()]
    res = CliRunner().invoke(main, ["run", "--profile", "smoke", "--games", "Pong", "Breakout", "--teacher",
                                    f"Pong={cleanrl_model[0]}", "--run-dir", str(run_dir), *flags],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output[-3000:]
    md = (run_dir / "report" / "report.md").read_text()
    for game in ("Pong", "Breakout"):
        assert any(line.startswith(f"| {game} ") for line in md.splitlines()), md
    # Pong's teacher is the imported Nature-DQN network, Breakout's a trained Dueling one; both were published
    # for the students and distilled from.
    published = {p.parent.name: json.loads(p.read_text())["architecture"]["type"]
                 for p in (run_dir / "store").glob("runs/*/teachers/*/metadata.json")}
    assert published == {"Pong": "nature_dqn", "Breakout": "dueling_dqn"}
    client = MlflowClient(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("polydistill")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["train-teacher/Pong"].data.tags[N.TAG_IMPORTED_FROM] == str(cleanrl_model[0])
    assert N.TAG_IMPORTED_FROM not in runs["train-teacher/Breakout"].data.tags
    assert runs["train-teacher/Pong"].data.params["epsilon"] == str(resolve("teacher", "smoke").end_e)
