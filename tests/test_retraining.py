"""Recurring retraining: the HNS yardstick, warm-started teachers, the run-derived seeds and retention.

Warm start at library level: a tiny teacher trained, then a second one warm-started from its checkpoint
against one file:// store (``publish_dir`` / ``fetch_dir``, digests checked as train-teacher does); the
champion's lineage tags come from a real MLflow registry (tests/test_tracking.py covers the promotion rules).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polydistill import config as C
from polydistill import hns, retention, warm_start
from polydistill.checkpoint import load_state_dict
from polydistill.report import build_table, render_markdown
from polydistill.teacher import train_teacher
from polydistill.tracking import report_metrics
from polydistill.tracking.champion import decide
from polydistill_kfp.components import runtime as rt
from tests.conftest import tiny_teacher_config

# ------------------------------------------------------------------------------------------------ HNS


def test_hns_has_a_reference_for_every_profile_game_and_none_for_unknown_games() -> None:
    for games in C.PROFILE_GAMES.values():
        for game in games:
            assert hns.reference(game) is not None, game
    assert len(hns.REFERENCE_SCORES) == 57
    assert hns.hns("Pong", -20.7) == 0.0 and hns.hns("Pong", 14.6) == pytest.approx(1.0)
    assert hns.hns("up_n_down", 533.4) == 0.0 and hns.hns("ALE/UpNDown-v5", 11693.2) == pytest.approx(1.0)
    assert hns.hns("NoSuchGame", 100.0) is None  # missing, never invented
    assert hns.mean_median({"a": 0.2, "b": 1.0, "c": None, "d": 0.3}) == (pytest.approx(0.5), 0.3)
    assert hns.mean_median({"a": None}) == (None, None)


def _result(label: str, games: dict[str, float], seed: int = 12345) -> dict:
    return {"agent": {"label": label}, "protocol": "cycles",
            "config": {"protocol": "cycles", "cycles": 2, "cycle_steps": 100, "seed": seed, "device": "cpu"},
            "games": {g: {"mean": m, "std": 0.0, "scores": [m]} for g, m in games.items()}}


def test_report_gives_hns_per_game_mean_and_median_and_parent_metrics() -> None:
    table = build_table([
        _result("random", {"Pong": -20.7, "Breakout": 1.7, "Tetris": 0.0}),
        _result("teacher", {"Pong": -3.05, "Breakout": 30.5, "Tetris": 5.0}),
        _result("student_subset", {"Pong": -20.7, "Breakout": 16.1, "Tetris": 4.0}),
    ])
    assert table["hns"]["teacher"]["Pong"] == pytest.approx(0.5)
    assert table["hns"]["student_subset"]["Breakout"] == pytest.approx(0.5)
    assert table["hns"]["student_subset"]["Tetris"] is None  # no reference score: missing
    assert table["mean_hns"]["student_subset"] == pytest.approx(0.25)
    assert table["median_hns"]["teacher"] == pytest.approx(0.75)
    assert table["evaluation"]["student_subset"] == {"protocol": "cycles", "cycles": 2, "cycle_steps": 100,
                                                     "seed": 12345}
    md = render_markdown(table)
    assert "## Human-normalised score" in md and "| Mean HNS |" in md and "n/a" in md.split("## Human")[1]
    m = report_metrics(table)
    assert m["hns/subset/Breakout"] == pytest.approx(0.5) and "hns/subset/Tetris" not in m
    assert m["mean_hns/subset"] == pytest.approx(0.25) and m["median_hns/teacher"] == pytest.approx(0.75)


def test_champion_decision_rules() -> None:
    ev = json.dumps({"protocol": "cycles", "seed": 1})
    champ = {"polydistill.games": "Breakout,Pong", "polydistill.mean_hns": "0.5", "polydistill.evaluation": ev}

    def cand(hns_value: str, **kw: str) -> dict[str, str]:
        return {**champ, "polydistill.mean_hns": hns_value, **kw}

    assert decide(cand("0.4"), None).promote
    assert decide(cand("0.6"), champ).promote
    assert not decide(cand("0.5"), champ).promote  # a tie keeps the champion
    assert not decide(cand("0.4", **{"polydistill.geo_mean_pct": "500.0"}), champ).promote  # % never decides
    other_seed = decide(cand("0.9", **{"polydistill.evaluation": json.dumps({"protocol": "cycles", "seed": 2})}),
                        champ)
    assert not other_seed.promote and "another evaluation protocol or seed" in other_seed.reason
    assert not decide(cand("0.9", **{"polydistill.games": "Pong"}), champ).promote
    assert not decide({k: v for k, v in champ.items() if k != "polydistill.mean_hns"}, champ).promote
    assert decide(cand("0.1"), {k: v for k, v in champ.items() if k != "polydistill.mean_hns"}).promote


def test_hns_of_cut_episodes_is_marked_not_comparable() -> None:
    """#30: HNS is defined on whole episodes of at least 5 minutes (the published scores'); the smoke profile's
    200-step cycles cut them (Pong's random play read HNS 0.47 there), so such columns say so."""
    assert hns.not_comparable({"protocol": "episodes", "max_episode_frames": 18_000}) is None
    assert hns.not_comparable({"protocol": "episodes", "max_episode_frames": 108_000}) is None
    assert "cut at 4,000 frames" in (hns.not_comparable({"protocol": "episodes", "max_episode_frames": 4000}) or "")
    assert "cycles protocol" in (hns.not_comparable({"protocol": "cycles", "cycle_steps": 200}) or "")
    assert hns.not_comparable(None) and hns.not_comparable({"protocol": "episodes"})  # nothing recorded: not
    cut = build_table([_result("random", {"Pong": -20.7}), _result("teacher", {"Pong": -3.05})])
    assert cut["hns_not_comparable"]["teacher"] and any("not comparable" in w for w in cut["warnings"])
    md = render_markdown(cut).split("## Human-normalised score")[1]
    assert "Teacher (not comparable)" in md and "cycles protocol scores episodes cut" in md
    whole = {"protocol": "episodes", "episodes": 64, "max_episode_frames": 18_000, "seed": 1}
    ok = build_table([{**_result("teacher", {"Pong": -3.05}), "protocol": "episodes", "config": whole}])
    assert ok["hns_not_comparable"] == {"teacher": None} and "not comparable" not in render_markdown(ok)


def test_champion_decision_says_when_it_compared_cut_episodes() -> None:
    def tags(value: str, evaluation: dict) -> dict[str, str]:
        return {"polydistill.games": "Pong", "polydistill.mean_hns": value,
                "polydistill.evaluation": json.dumps(evaluation)}

    smoke = {"protocol": "cycles", "cycles": 2, "cycle_steps": 200, "seed": 1}
    decision = decide(tags("0.6", smoke), tags("0.5", smoke))
    assert decision.promote and "not comparable with published scores" in decision.reason
    whole = {"protocol": "episodes", "episodes": 64, "max_episode_frames": 18_000, "seed": 1}
    decision = decide(tags("0.4", whole), tags("0.5", whole))
    assert not decision.promote and "not comparable" not in decision.reason


# ------------------------------------------------------------------------------------------- seeds


def test_seeds_derived_from_the_run_id_unless_fixed() -> None:
    fixed = C.resolve_pipeline("smoke", {})
    assert C.derive_seeds(fixed, "run-a") == fixed  # the profiles' seeds, as before
    derived = C.resolve_pipeline("smoke", {"seeds": "run"})
    a, a2, b = (C.derive_seeds(derived, r) for r in ("run-a", "run-a", "run-b"))
    assert a == a2  # a retried or resumed run keeps its seeds
    for stage in C.DERIVED_SEED_STAGES:
        assert a[stage]["seed"] != b[stage]["seed"] and a[stage]["seed"] >= 0
    assert a["evaluate"]["seed"] == b["evaluate"]["seed"] == fixed["evaluate"]["seed"]  # same yardstick


# -------------------------------------------------------------------------------------- warm start

WARM = {"total_steps": 400, "learning_starts": 1_000, "record_steps": 400}  # no learner update: weights stay


def _weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(checkpoint_dir / "model.pt")


def test_warm_started_teacher_starts_from_the_champion_runs_checkpoint(tmp_path: Path,
                                                                       teacher_runs: dict[str, Path]) -> None:
    # Run 1's teacher, published to its run root in the store as train-teacher does.
    store = (tmp_path / "store").as_uri()
    root1 = rt.run_root(store, "run-1")
    uri = rt.publish_dir(teacher_runs["Pong"] / "checkpoint", rt.data_uri(root1, "teachers", "Pong"))
    lineage = rt.teacher_lineage(root1, ["Pong"])
    champion = {"polydistill.teachers": json.dumps(lineage), "polydistill.pipeline_run_id": "parent-1",
                "polydistill.kfp_run_id": "run-1", "version": "3"}
    plan = warm_start.plan(champion, ["Pong", "Breakout"])
    assert set(plan) == {"Pong"}  # Breakout: no champion teacher, from scratch
    assert plan["Pong"]["uri"] == uri and plan["Pong"]["source_run_id"] == "parent-1"
    src = warm_start.verify(plan["Pong"], rt.fetch_dir(plan["Pong"]["uri"]))

    # Run 2, warm-started: no learner update in 400 steps, so its final weights are its initial ones.
    warm = train_teacher("Pong", tiny_teacher_config(**WARM), tmp_path / "run2", init_from=src)
    first = _weights(teacher_runs["Pong"] / "checkpoint")
    second = _weights(warm.checkpoint_dir)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    cold = _weights(train_teacher("Pong", tiny_teacher_config(**WARM), tmp_path / "cold").checkpoint_dir)
    assert not all(torch.equal(first[k], cold[k]) for k in first)  # the check can fail
    assert json.loads((warm.out_dir / "dataset" / "manifest.json").read_text())["num_steps"] == 400


def test_warm_start_refuses_a_changed_source_and_another_game(tmp_path: Path,
                                                             teacher_runs: dict[str, Path]) -> None:
    ckpt = teacher_runs["Pong"] / "checkpoint"
    good = {"uri": "file:///x", "sha256": warm_start.checkpoint_digest(ckpt)}
    assert warm_start.verify(good, ckpt) == ckpt
    with pytest.raises(warm_start.WarmStartError, match="changed since the champion recorded it"):
        warm_start.verify({**good, "sha256": "0" * 64}, ckpt)
    with pytest.raises(warm_start.WarmStartError, match="not a Breakout teacher"):
        train_teacher("Breakout", tiny_teacher_config(**WARM), tmp_path / "b", init_from=ckpt)


def test_killed_warm_started_teacher_resumes_to_the_same_bytes(tmp_path: Path,
                                                              teacher_runs: dict[str, Path]) -> None:
    cfg = tiny_teacher_config(total_steps=600, learning_starts=200, record_steps=600, checkpoint_every=200)
    src = teacher_runs["Pong"] / "checkpoint"
    whole = train_teacher("Pong", cfg, tmp_path / "whole", init_from=src)
    with pytest.raises(KeyboardInterrupt):
        train_teacher("Pong", cfg, tmp_path / "broken", init_from=src, stop_after=300)
    resumed = train_teacher("Pong", cfg, tmp_path / "broken", init_from=src)

    for name in ("dataset/manifest.json", "curve.csv"):  # shard sha256s and the curve, as test_hostile checks
        assert (whole.out_dir / name).read_bytes() == (resumed.out_dir / name).read_bytes(), name


# --------------------------------------------------------------------------------------- retention


def test_retention_keeps_the_last_runs_and_the_champions(tmp_path: Path, teacher_runs: dict[str, Path]) -> None:
    store = (tmp_path / "store").as_uri()
    roots = {}
    for i in range(4):
        run_id = f"r{i}"
        roots[run_id] = rt.run_root(store, run_id)
        rt.publish_dir(teacher_runs["Pong"] / "checkpoint", rt.data_uri(roots[run_id], "teachers", "Pong"))
        retention.record_run(store, run_id, roots[run_id], ["Pong"], started=float(i))
    assert retention.apply(store, 0, set()) == []  # 0 = keep all
    deleted = retention.apply(store, 2, {roots["r0"]})  # r0 is the champion's
    assert [d["run_id"] for d in deleted] == ["r1"]
    local = tmp_path / "store" / "runs"
    assert (local / "r0" / "teachers" / "Pong" / "metadata.json").is_file()
    assert not (local / "r1").exists()
    assert all((local / r / "teachers" / "Pong" / "metadata.json").is_file() for r in ("r2", "r3"))
    assert retention.apply(store, 2, {roots["r0"]}) == []  # nothing more to do, deleted runs not retried
    assert [r.get("deleted", False) for r in retention.read_index(store)] == [False, True, False, False]
