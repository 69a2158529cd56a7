"""The results report: percentages, geometric mean, merging, and the table rendered from known numbers."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from polydistill.checkpoint import atomic_write_json
from polydistill.report import (
    ReportError,
    build_table,
    format_score,
    geometric_mean_pct,
    normalised_percent,
    percent_of_teacher,
    render_markdown,
    write_report,
)


def result(label: str, games: dict[str, tuple[float, float]], protocol: str = "cycles") -> dict:
    """A results dict as evaluate() writes it, with given (mean, std) per game."""
    return {
        "agent": {"label": label, "kind": label.split("_")[0], "path": None, "source": None},
        "protocol": protocol,
        "config": {"protocol": protocol, "cycles": 10, "cycle_steps": 12_500, "episodes": 30,
                   "epsilon": 0.05},
        "games": {g: {"mean": m, "std": s, "scores": [m] * 10, "episodes": 10, "steps": 125_000}
                  for g, (m, s) in games.items()},
    }  # fmt: skip


# Known numbers. Random play is 0 on Breakout and DemonAttack, -20 on Pong; the Pong teacher is weak (-5).
#   subset: Breakout 50/200 = 25%; Pong n/a (normalised (-8+20)/(-5+20) = 80%); DemonAttack 4000/1000 = 400%
#   latent: Breakout -4/200 = -2%; Pong n/a (normalised 0%);                    DemonAttack 100%
RESULTS = [
    result("student_latent", {"Breakout": (-4, 1), "Pong": (-20, 1), "DemonAttack": (1000, 50)}),
    result("teacher", {"Breakout": (200, 10)}),
    result("student_subset", {"Breakout": (50, 5), "Pong": (-8, 1), "DemonAttack": (4000, 300)}),
    result("random", {"Breakout": (0, 0), "Pong": (-20, 0.5), "DemonAttack": (0, 0)}),
    result("teacher", {"Pong": (-5, 2), "DemonAttack": (1000, 100)}),
]


def test_percentages():
    assert percent_of_teacher(50, 200) == pytest.approx(25.0)
    assert percent_of_teacher(5, 0) is None and percent_of_teacher(-8, -5) is None
    assert normalised_percent(-8, -5, -20) == pytest.approx(80.0)
    assert normalised_percent(5, 10, None) is None
    assert normalised_percent(5, 10, 12) is None  # the teacher does not beat random play


def test_geometric_mean_clips_small_zero_and_negative_percentages_at_one_percent():
    assert geometric_mean_pct([25, 400]) == pytest.approx(100.0)
    assert geometric_mean_pct([None, 25, 400]) == pytest.approx(100.0)  # undefined games are left out
    assert geometric_mean_pct([-2, 100]) == pytest.approx(10.0)  # -2% counts as 1%
    assert geometric_mean_pct([0.0]) == pytest.approx(1.0)
    assert geometric_mean_pct([]) is None and geometric_mean_pct([None]) is None


def test_table_numbers_from_known_results():
    t = build_table(RESULTS)
    assert t["game_order"] == ["Breakout", "Pong", "DemonAttack"]
    assert t["columns"] == ["random", "teacher", "student_subset", "student_latent"]
    assert t["students"] == ["student_subset", "student_latent"]
    g = t["games"]
    assert g["Breakout"]["student_subset"]["pct_of_teacher"] == pytest.approx(25.0)
    assert g["Breakout"]["student_latent"]["pct_normalised"] == pytest.approx(-2.0)
    assert g["Pong"]["student_subset"]["pct_of_teacher"] is None
    assert g["Pong"]["student_subset"]["pct_normalised"] == pytest.approx(80.0)
    assert g["DemonAttack"]["student_subset"]["pct_of_teacher"] == pytest.approx(400.0)
    assert t["geo_mean_pct"]["student_subset"] == pytest.approx(100.0)  # sqrt(25 * 400)
    assert t["geo_mean_pct_normalised"]["student_subset"] == pytest.approx((25 * 80 * 400) ** (1 / 3))
    assert t["geo_mean_pct"]["student_latent"] == pytest.approx(10.0)  # sqrt(1 * 100)
    assert t["geo_mean_pct_normalised"]["student_latent"] == pytest.approx((1 * 1 * 100) ** (1 / 3))
    assert t["geo_mean_games"]["student_subset"]["pct_of_teacher"] == ["Breakout", "DemonAttack"]
    # The only warning: these results use the cycles protocol, whose HNS is not the published scores' (#30).
    assert t["warnings"] == ["human-normalised scores not comparable with published ones: the cycles protocol "
                             "scores episodes cut at each cycle's end, not whole episodes"]


def test_markdown_table_from_known_results():
    md = render_markdown(build_table(RESULTS, title="Known numbers"))
    lines = md.splitlines()
    assert lines[0] == "# Known numbers"
    assert lines[2] == (
        "| Game | Random | Teacher | Student on part of the buffer | % of teacher (normalised) "
        "| Student on latents | % of teacher (normalised) |"
    )
    assert lines[4:8] == [
        "| Breakout | 0.00 ± 0.00 | 200 ± 10 | 50.0 ± 5.0 | 25.0% (25.0%) | -4.00 ± 1.00 | -2.0% (-2.0%) |",
        "| Pong | -20.0 ± 0.5 | -5.00 ± 2.00 | -8.00 ± 1.00 | n/a (80.0%) | -20.0 ± 1.0 | n/a (0.0%) |",
        "| DemonAttack | 0.00 ± 0.00 | 1,000 ± 100 | 4,000 ± 300 | 400.0% (400.0%) | 1,000 ± 50 "
        "| 100.0% (100.0%) |",
        "| Geometric mean |  |  |  | 100.0% (92.8%) |  | 10.0% (4.6%) |",
    ]
    assert re.search(r"below 1% \(zero and negative included\) are raised to 1%", md)
    assert "10 cycles of 12,500 agent steps" in md


def test_format_score_decimals_follow_the_size_of_the_mean():
    assert format_score(270_000, 12_345.6) == "270,000 ± 12,346"
    assert format_score(15.54, 0.86) == "15.5 ± 0.9"
    assert format_score(1.7, 0.25) == "1.70 ± 0.25"


def test_write_report_from_files_merges_teachers_and_writes_every_format(tmp_path):
    paths = []
    for i, r in enumerate(RESULTS):
        atomic_write_json(tmp_path / f"r{i}" / "scores.json", r)
        # Directories and scores.json files are both accepted.
        paths.append(tmp_path / f"r{i}" if i % 2 else tmp_path / f"r{i}" / "scores.json")
    files = write_report(paths, tmp_path / "report")
    assert set(files) == {"markdown", "html", "json", "chart"}
    assert all(Path(p).is_file() for p in files.values())
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(files["json"].read_text())
    assert data["games"]["Pong"]["teacher"]["mean"] == -5
    assert data["geo_mean_pct"]["student_subset"] == pytest.approx(100.0)
    assert data["sources"]["teacher"]["Pong"].endswith("r4/scores.json")
    assert data["sources"]["student_subset"]["Pong"].endswith("r2/scores.json")
    page = files["html"].read_text()
    assert "<table>" in page and "Student on latents" in page and "92.8%" in page
    # Self-contained: the chart is inlined and no other file or URL is referenced.
    b64 = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page).group(1)
    assert base64.b64decode(b64) == files["chart"].read_bytes()
    assert "http" not in page and "src='/" not in page
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def test_report_json_feeds_the_tracking_metrics(tmp_path):
    from polydistill.tracking import report_metrics

    files = write_report(RESULTS, tmp_path)
    metrics = report_metrics(json.loads(files["json"].read_text()))
    assert metrics["pct_of_teacher/subset/Breakout"] == pytest.approx(25.0)
    assert metrics["geo_mean_pct/subset"] == pytest.approx(100.0)
    assert metrics["score/teacher/Pong"] == -5


def test_report_without_students_or_teacher(tmp_path):
    files = write_report([result("random", {"Breakout": (1.5, 1.0)})], tmp_path)
    md = files["markdown"].read_text()
    assert "| Breakout | 1.50 ± 1.00 |" in md and "| Geometric mean" not in md and "% of teacher" not in md
    assert files["chart"].is_file()
    t = build_table([result("random", {"Pong": (-20, 1)}), result("student_full", {"Pong": (-19, 1)})])
    assert t["geo_mean_pct"]["student_full"] is None
    assert any("no teacher result for Pong" in w for w in t["warnings"])


def test_mixed_protocols_are_flagged():
    t = build_table(
        [result("teacher", {"Pong": (10, 1)}), result("student_subset", {"Pong": (9, 1)}, "episodes")]
    )
    assert any("different protocols" in w for w in t["warnings"])
    assert "Warning: results use different protocols" in render_markdown(t)


def test_bad_inputs(tmp_path):
    with pytest.raises(ReportError, match="no results"):
        build_table([])
    with pytest.raises(ReportError, match=r"two results for teacher on Pong"):
        build_table([result("teacher", {"Pong": (10, 1)}), result("teacher", {"Pong": (11, 1)})])
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ReportError, match="not an evaluation results file"):
        build_table([tmp_path / "other.json"])
    with pytest.raises(ReportError, match="not found"):
        build_table([tmp_path / "missing.json"])
    broken = result("teacher", {"Pong": (10, 1)})
    broken["games"]["Pong"]["mean"] = "high"
    with pytest.raises(ReportError, match="numeric mean"):
        build_table([broken])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        write_report(RESULTS, tmp_path / "file")
    assert not math.isnan(build_table(RESULTS)["geo_mean_pct"]["student_subset"])


def test_storage_table_gives_code_and_lossless_bytes_side_by_side(tmp_path):
    storage = {
        "DemonAttack": {"lossless_dataset": 41.25, "latent_dataset": 150.5, "code": 128},
        "UpNDown": {"lossless_dataset": 60.0, "code": 68},
    }
    files = write_report(RESULTS, tmp_path / "report", storage=storage)
    md = files["markdown"].read_text()
    assert "## Storage per training state" in md
    assert "| DemonAttack | 41.2 B | 150.5 B | 128.0 B | 0.27x | 0.50x |" in md  # lossless / latent, code / seed
    assert "| UpNDown | 60.0 B | — | 68.0 B | — | 0.27x |" in md
    data = json.loads(files["json"].read_text())
    assert data["storage"]["DemonAttack"]["code"] == 128.0
    assert "Storage per training state" in files["html"].read_text()
    # Without storage figures the section is absent.
    plain = write_report(RESULTS, tmp_path / "plain")["markdown"].read_text()
    assert "Storage" not in plain


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"Pong": {"zip": 3.0}}, "unknown keys"),
        ({"Pong": {"code": -1}}, "positive number"),
        ({"Pong": {"code": float("nan")}}, "positive number"),
        ({"Pong": 12}, "must map"),
    ],
)
def test_bad_storage_figures_are_named(storage, message):
    with pytest.raises(ReportError, match=message):
        build_table(RESULTS, storage=storage)
