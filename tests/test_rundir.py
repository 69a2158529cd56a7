"""The run-directory lifecycle every training stage shares (polydistill.rundir), and its one rule for resuming:
every setting must match the run being resumed except the stage's resume-free ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from polydistill import config as C
from polydistill.autoencoder import AutoencoderError
from polydistill.distill import DistillError
from polydistill.errors import PolydistillError
from polydistill.rundir import RunDir
from polydistill.teacher import TeacherRunError, train_teacher

from .conftest import tiny_teacher_config


class _Err(PolydistillError, ValueError):
    pass


def _changed(value: Any) -> Any:
    """Another valid-looking value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.5
    if isinstance(value, dict):
        key = next(iter(value))
        return {**value, key: _changed(value[key])}
    return f"{value}-other"


def test_new_run_writes_its_record_only_when_begun(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run", "teacher", _Err)
    assert rd.open({"game": "Pong"}, {"lr": 1.0}, frozenset()) is None
    assert not (tmp_path / "run").exists()  # checking writes nothing
    rd.begin({"game": "Pong", "config": {"lr": 1.0}})
    assert json.loads(rd.record_path.read_text())["status"] == "running"
    rd.finish({"game": "Pong", "config": {"lr": 1.0}})
    again = RunDir(tmp_path / "run", "teacher", _Err)
    assert again.open({"game": "Pong"}, {"lr": 1.0}, frozenset()) is not None and again.finished


def test_refuses_a_file_a_foreign_directory_and_a_corrupt_record(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(_Err, match="is a file"):
        RunDir(tmp_path / "file", "teacher", _Err).open({}, {}, frozenset())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(_Err, match="not empty and holds no teacher run"):
        RunDir(tmp_path / "other", "teacher", _Err).open({}, {}, frozenset())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{")
    with pytest.raises(_Err, match="corrupt"):
        RunDir(tmp_path / "bad", "teacher", _Err).open({}, {}, frozenset())


def test_identity_mismatch_names_both_values(tmp_path: Path) -> None:
    rd = RunDir(tmp_path, "autoencoder", _Err)
    rd.begin({"dataset_sha256": "a" * 64, "config": {}})
    with pytest.raises(_Err, match=r"holds an autoencoder run with dataset_sha256='aaaaaaaaaaaa\.\.\.', not 'bbbb"):
        RunDir(tmp_path, "autoencoder", _Err).open({"dataset_sha256": "b" * 64}, {}, frozenset())


def test_resume_points_switch_atomically_and_keep_only_the_newest(tmp_path: Path) -> None:
    rd = RunDir(tmp_path, "distillation", _Err)
    assert rd.latest_resume() is None
    rd.save_resume(10, lambda d: (d / "state.pt").write_text("ten"))
    rd.save_resume(20, lambda d: (d / "state.pt").write_text("twenty"))
    point = rd.latest_resume(required=("state.pt",))
    assert point is not None and point.name == "step-000000000020" and (point / "state.pt").read_text() == "twenty"
    assert sorted(p.name for p in rd.resume_root.iterdir()) == ["LATEST", "step-000000000020"]

    def killed(d: Path) -> None:  # a kill while writing the next point
        (d / "state.pt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rd.save_resume(30, killed)
    assert rd.latest_resume(required=("state.pt",)) == point
    assert rd.latest_resume(required=("state.pt", "extra.json")) is None  # incomplete for a stage needing both
    rd.finish({"config": {}})
    assert not rd.resume_root.exists()


@pytest.mark.parametrize(
    ("stage", "error"),
    [("teacher", TeacherRunError), ("autoencoder", AutoencoderError), ("distill", DistillError)],
)
def test_one_rule_for_every_stage(tmp_path: Path, stage: str, error: type[PolydistillError]) -> None:
    # Each stage's real config (as a run records it: without the settings folded into others) and its
    # resume-free list: changing one of those resumes, changing any other setting is refused naming it.
    model = C.STAGES[stage]
    cfg = C.resolve(stage, "smoke").model_dump(mode="json", exclude=set(model.folded))
    assert model.resume_free and model.resume_free <= set(cfg), "resume-free settings must be settings"
    rd = RunDir(tmp_path, stage, error)
    rd.begin({"config": cfg})
    for key, value in cfg.items():
        new = {**cfg, key: _changed(value)}
        if key in model.resume_free:
            assert RunDir(tmp_path, stage, error).open({}, new, model.resume_free) is not None
        else:
            with pytest.raises(error, match=rf"other settings \({key}="):
                RunDir(tmp_path, stage, error).open({}, new, model.resume_free)


def test_a_teacher_resumed_with_another_learning_rate_is_refused(teacher_runs: dict[str, Path], tmp_path: Path) -> None:
    # Issue #24: the teacher checked four settings only, so this went through silently.
    out = tmp_path / "Breakout"
    shutil.copytree(teacher_runs["Breakout"], out)
    before = (out / "run.json").read_bytes()
    with pytest.raises(TeacherRunError, match=r"learning_rate=0\.0001 there vs 5e-05 now"):
        train_teacher("Breakout", tiny_teacher_config(total_steps=1_000, learning_rate=5e-5), out)
    assert (out / "run.json").read_bytes() == before
    # A resume-free setting (the checkpoint interval) reuses the finished run.
    res = train_teacher("Breakout", tiny_teacher_config(total_steps=1_000, checkpoint_every=500), out)
    assert res.out_dir == out and res.steps == 1_000
