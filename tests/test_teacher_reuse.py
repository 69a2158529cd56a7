"""A polydistill teacher trained elsewhere (across sittings with the exact resume, on another machine, by an
earlier pipeline run) brought into a run as ``--teacher GAME=DIR``: ``import-teacher --from polydistill``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from polydistill.agents import load_agent
from polydistill.buffer import ExperienceDataset
from polydistill.cli import main
from polydistill.config import resolve
from polydistill.mirror import fetch_source, publish_dir
from polydistill.teacher import load_teacher
from polydistill.teacher_import import TeacherImportError, detect_source, import_teacher


def _cfg(**overrides: object) -> object:
    return resolve("import", "smoke", overrides={"record_steps": 200, "num_envs": 2, "device": "cpu", **overrides})


def test_a_trained_teacher_imports_as_itself_and_records(teacher_runs: dict[str, Path], tmp_path: Path) -> None:
    src = teacher_runs["Pong"]
    assert detect_source(src) == detect_source(src / "checkpoint") == "polydistill"
    res = import_teacher("auto", src, "ALE/Pong-v5", _cfg(), tmp_path / "Pong")
    meta = json.loads((res.checkpoint_dir / "metadata.json").read_text())
    assert meta["architecture"]["type"] == "dueling_dqn" and meta["imported_from"]["library"] == "polydistill"
    assert meta["imported_from"]["num_timesteps"] == json.loads((src / "run.json").read_text())["config"][
        "total_steps"]
    # The same network: the same Q-values, so the same actions, on states of the game.
    states = ExperienceDataset(res.dataset_uri)
    shard, rows = next(iter(states.iter_batches(64)))
    obs = np.ascontiguousarray(shard.states(rows))
    theirs, _ = load_teacher(src)
    with torch.no_grad():
        q_src = theirs(torch.from_numpy(obs))
    q_new = load_agent(res.checkpoint_dir, "cpu").q_values(obs, "Pong")
    torch.testing.assert_close(q_new, q_src.float())
    assert states.game == "Pong" and len(states) >= 200


def _bad_sources(teacher_runs: dict[str, Path], tmp: Path) -> list[tuple[list[str], str]]:
    empty = tmp / "empty"
    empty.mkdir()
    damaged = tmp / "damaged"
    shutil.copytree(teacher_runs["Pong"] / "checkpoint", damaged)
    (damaged / "model.pt").write_bytes(b"not weights")
    unfinished = tmp / "unfinished"
    unfinished.mkdir()
    shutil.copy(teacher_runs["Pong"] / "run.json", unfinished / "run.json")
    pong = str(teacher_runs["Pong"])
    return [
        (["--from", "polydistill", str(unfinished), "--game", "Pong"], "has not finished"),
        (["--from", "polydistill", pong, "--game", "Breakout"], "a teacher of Pong, not of Breakout"),
        (["--from", "polydistill", pong, "--game", "Pong", "--frame-skip", "3"], "frame skip 4 (ours 3)"),
        (["--from", "polydistill", str(empty), "--game", "Pong"], "not a polydistill teacher"),
        (["--from", "polydistill", str(damaged), "--game", "Pong"], "not a polydistill teacher"),
        (["--from", "polydistill", str(tmp / "absent"), "--game", "Pong"], "not found"),
    ]


def test_a_wrong_or_damaged_teacher_directory_is_one_line_and_writes_nothing(
    teacher_runs: dict[str, Path], tmp_path: Path
) -> None:
    for args, expected in _bad_sources(teacher_runs, tmp_path):
        out = tmp_path / "out" / "teacher"
        res = CliRunner().invoke(main, ["import-teacher", *args, "--profile", "smoke", "--out", str(out)])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2, (args, res.output)
        assert len(lines) == 1 and lines[0].startswith("polydistill: error: "), (args, res.output)
        assert expected in lines[0], (args, lines[0])
        assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), args
    with pytest.raises(TeacherImportError, match="action"):  # Pong's 6 actions are not Breakout's 4
        import_teacher("polydistill", teacher_runs["Pong"], "Breakout", _cfg(), tmp_path / "b")


def test_a_published_teacher_is_fetched_whole_from_s3(teacher_runs: dict[str, Path], s3_env: str) -> None:
    """What the pipeline's train-teacher does with ``--teacher Pong=s3://...``: a prefix holding a published
    directory (an earlier run's ``teachers/Pong``) comes down whole; a single object as one file."""
    uri = publish_dir(teacher_runs["Pong"] / "checkpoint", f"{s3_env}/teachers/Pong")
    local = fetch_source(uri)
    assert local.is_dir() and detect_source(local) == "polydistill"
    assert (local / "model.pt").read_bytes() == (teacher_runs["Pong"] / "checkpoint" / "model.pt").read_bytes()
    one = fetch_source(f"{uri}/metadata.json")
    assert one.is_file() and json.loads(one.read_text())["game"] == "Pong"
    assert fetch_source(str(teacher_runs["Pong"])) == teacher_runs["Pong"]  # a path is used in place
