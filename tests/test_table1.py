"""The seed's Table 1 across runs (#30): one block per run, the seed's figures beside ours, normalised %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from polydistill.cli import main
from polydistill.report import build_table, write_report
from polydistill.table1 import SEED_TABLE1, Table1Error, build_table1, render_table1_markdown, write_table1


def _result(label: str, games: dict[str, float], protocol: str = "episodes") -> dict:
    config = {"protocol": protocol, "episodes": 4, "cycles": 2, "cycle_steps": 100, "max_episode_frames": 18_000}
    return {"agent": {"label": label}, "protocol": protocol, "config": config,
            "games": {g: {"mean": m, "std": 1.0, "scores": [m] * 4, "steps": 1000, "seconds": 30.0}
                      for g, m in games.items()}}


def _run(games: dict[str, tuple[float, float, float, float]], protocol: str = "episodes") -> dict:
    """A run's report: per game (random, teacher, subset student, latent student) means."""
    labels = ("random", "teacher", "student_subset", "student_latent")
    return build_table([_result(lab, {g: v[k] for g, v in games.items()}, protocol) for k, lab in enumerate(labels)])


def test_blocks_per_pair_with_the_seed_beside_ours_and_normalised_percentages() -> None:
    ab = _run({"Atlantis": (10_000, 50_000, 50_000, 42_000), "Breakout": (2, 22, 20, 4)})
    du = _run({"DemonAttack": (200, 2_000, 1_820, 1_100), "UpNDown": (400, 1_600, 1_700, 1_360)})
    table = build_table1([ab, du])
    assert [b["pair"] for b in table["blocks"]] == ["Atlantis + Breakout", "DemonAttack + UpNDown"]
    breakout = table["blocks"][0]["rows"][1]
    assert breakout["student_subset_pct"] == pytest.approx(90.0)  # (20-2)/(22-2)
    assert breakout["student_latent_pct"] == pytest.approx(10.0)
    assert breakout["seed_student_latent"] == 8.4
    assert breakout["seed_student_latent_pct"] == pytest.approx(100 * (8.4 - 1.7) / (212 - 1.7))  # published random
    assert table["blocks"][1]["rows"][0]["seed_teacher"] == SEED_TABLE1[("DemonAttack", "UpNDown")]["DemonAttack"][0]
    # Cells under the 80% bar are named, others not.
    assert table["below_bar"] == ["Atlantis + Breakout (4 episodes, epsilon ?): Breakout student on latents 10.0%",
                                  "DemonAttack + UpNDown (4 episodes, epsilon ?): DemonAttack student on latents 50.0%"]
    # A teacher that does not beat random play leaves its students' percentages undefined, and says why.
    weak = build_table1([_run({"Atlantis": (10_000, 9_000, 9_000, 8_000), "Breakout": (2, 22, 20, 18)})])
    assert weak["blocks"][0]["rows"][0]["student_subset_pct"] is None
    assert weak["below_bar"][0] == ("Atlantis + Breakout (4 episodes, epsilon ?): Atlantis student on part of the "
                                    "buffer n/a (its teacher does not beat random play)")
    # A run without random play has no percentages either, for that reason.
    no_random = build_table([_result(lab, {"Pong": m, "UpNDown": m}) for lab, m in
                             (("teacher", 10.0), ("student_subset", 9.0), ("student_latent", 8.0))])
    assert build_table1([no_random])["below_bar"][0].endswith("Pong student on part of the buffer n/a (the run "
                                                              "has no random play)")
    assert table["blocks"][0]["cost"] == {"steps": 8000.0, "seconds": 240.0}
    md = render_table1_markdown(table)
    assert "Seed's teacher" in md and "8.4 (3.2%)" in md and "90.0%" in md and "Below the 80% bar" in md


def test_five_game_student_has_no_seed_figures_and_two_protocols_make_two_blocks() -> None:
    five = _run({g: (0, 10, 9, 8) for g in ("Atlantis", "Breakout", "DemonAttack", "Pong", "UpNDown")})
    cyc = _run({"Pong": (-21, -10, -11, -12), "UpNDown": (400, 1_600, 1_500, 1_400)}, protocol="cycles")
    eps = _run({"Pong": (-21, -10, -11, -12), "UpNDown": (400, 1_600, 1_500, 1_400)})
    table = build_table1([five, eps, cyc])
    assert all(r["seed_teacher"] is None for r in table["blocks"][0]["rows"])
    assert {b["protocol"].split(" ")[0] for b in table["blocks"][1:]} == {"4", "2"}  # episodes, cycles
    with pytest.raises(Table1Error, match="twice"):
        build_table1([eps, eps])


def test_cli_report_runs_reads_run_directories(tmp_path: Path) -> None:
    run = tmp_path / "run-ab"
    results = [_result(lab, {"Atlantis": m, "Breakout": m / 1000}) for lab, m in
               (("random", 10_000.0), ("teacher", 50_000.0), ("student_subset", 45_000.0),
                ("student_latent", 46_000.0))]
    write_report(results, run / "report")
    out = tmp_path / "t1"
    res = CliRunner().invoke(main, ["report", "--runs", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Atlantis + Breakout" in res.output and (out / "table1.png").stat().st_size > 1000
    assert json.loads((out / "table1.json").read_text())["blocks"][0]["rows"][0]["student_subset_pct"] == 87.5
    bad = CliRunner().invoke(main, ["report", "--runs", str(tmp_path / "t1" / "table1.png"), "--out", str(out)])
    assert bad.exit_code == 2 and "not a readable report.json" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    with pytest.raises(Table1Error, match=r"no report\.json"):
        write_table1([tmp_path / "nowhere"], out)
