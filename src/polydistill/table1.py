"""The seed paper's Table 1 across runs: one block of rows per run (a game pair, or the five-game student).

A run's report (``RUN_DIR/report/report.json``, written by :func:`polydistill.report.write_report`) holds one
pair's random play, teachers and students under one evaluation protocol. Table 1 puts several such runs one
under another in the seed's layout -- teacher, student on part of the buffer, student on latents, each as
``mean ± std`` -- with the seed's published figures beside ours, random play, and each student's normalised
percentage ``100·(student − random)/(teacher − random)`` (0 = random play, 100 = its teacher).

The seed's figures (``SEED_TABLE1``, from ``shared/seeds/README.md``) are single means; their normalised
percentage uses the published random scores (:mod:`polydistill.hns`), since the seed reports no random play.
The same pair evaluated under two protocols (``episodes`` and the seed's ``cycles``) gives two blocks, each
with what its evaluation cost (agent steps and minutes of play over all agents of the block).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes, atomic_write_json
from .hns import reference
from .report import FILES, ReportError, format_pct, format_score, markdown_table, normalised_percent

TABLE1_SCHEMA = 1
TITLE = "The seed paper's Table 1, reproduced"
#: Students of Table 1, in the seed's column order: report label -> heading.
STUDENTS: dict[str, str] = {"student_subset": "Student on part of the buffer", "student_latent": "Student on latents"}
#: The seed paper's Table 1 (mean score): pair -> game -> (teacher, student on part of the buffer, on latents).
SEED_TABLE1: dict[tuple[str, ...], dict[str, tuple[float, float, float]]] = {
    ("Atlantis", "Breakout"): {"Atlantis": (2.7e5, 2.3e5, 1.8e5), "Breakout": (212.0, 200.0, 8.4)},
    ("DemonAttack", "UpNDown"): {"DemonAttack": (9251.0, 6169.0, 9284.0), "UpNDown": (6607.0, 4526.0, 4893.0)},
    ("Pong", "UpNDown"): {"Pong": (15.9, 15.54, 15.43), "UpNDown": (6608.0, 6336.0, 6397.0)},
}
#: The bar a student cell is held to (issue #30): this normalised percentage of its teacher.
BAR_PCT = 80.0


class Table1Error(ReportError):
    """Run reports that cannot make Table 1 (not a run's report, or one game pair twice under one protocol)."""


def report_path(item: str | Path) -> Path:
    """The report.json of a run directory, a report directory or the file itself."""
    p = Path(item)
    for candidate in (p / "report" / FILES["json"], p / FILES["json"], p):
        if candidate.is_file():
            return candidate
    raise Table1Error(f"{item}: no {FILES['json']} here or under report/; pass a run directory or its report.json")


def load_run_report(item: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A run's report (as :func:`polydistill.report.build_table` returns it) and where it came from."""
    if isinstance(item, Mapping):
        data, where = dict(item), "<report dict>"
    else:
        path = report_path(item)
        where = str(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise Table1Error(f"{where} is not a readable report.json ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("games"), dict) or "game_order" not in data:
        raise Table1Error(f"{where} is not a run's report.json (needs game_order and games); "
                          "pass RUN_DIR or RUN_DIR/report/report.json")
    return data, where


def seed_figures(games: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """The seed's figures for exactly this pair of games ({} for any other set, e.g. all five games)."""
    return SEED_TABLE1.get(tuple(sorted(games)), {})


def _seed_pct(game: str, student: float, teacher: float) -> float | None:
    ref = reference(game)
    return normalised_percent(student, teacher, ref[0] if ref else None)


def _protocol(report: Mapping[str, Any]) -> str:
    protos = sorted({p for ps in (report.get("protocols") or {}).values() for p in ps})
    return "; ".join(protos) if protos else "?"


def _cost(report: Mapping[str, Any]) -> dict[str, float]:
    """Agent steps and seconds of play of every evaluation in the run's report (0 where not recorded)."""
    steps = seconds = 0.0
    for row in report["games"].values():
        for cell in row.values():
            steps += float(cell.get("steps") or 0)
            seconds += float(cell.get("seconds") or 0)
    return {"steps": steps, "seconds": seconds}


def _block(report: Mapping[str, Any], where: str) -> dict[str, Any]:
    games = list(report["game_order"])
    seed = seed_figures(games)
    rows = []
    for game in games:
        row = report["games"][game]
        rand = row.get("random", {}).get("mean")
        teacher = row.get("teacher", {}).get("mean")
        entry: dict[str, Any] = {"game": game, "random": row.get("random"), "teacher": row.get("teacher")}
        ours_seed = seed.get(game)
        entry["seed_teacher"] = ours_seed[0] if ours_seed else None
        for k, label in enumerate(STUDENTS, start=1):
            cell = row.get(label)
            pct = None
            if cell is not None and teacher is not None:
                pct = normalised_percent(cell["mean"], teacher, rand)
            entry[label] = cell
            entry[f"{label}_pct"] = pct
            entry[f"seed_{label}"] = ours_seed[k] if ours_seed else None
            entry[f"seed_{label}_pct"] = _seed_pct(game, ours_seed[k], ours_seed[0]) if ours_seed else None
        rows.append(entry)
    return {"games": games, "pair": " + ".join(games), "protocol": _protocol(report), "source": where,
            "cost": _cost(report), "rows": rows}


def why_undefined(row: Mapping[str, Any]) -> str:
    """Why a Table 1 row's normalised percentages are undefined: the cases in which
    :func:`~polydistill.report.normalised_percent` gives None."""
    rand, teacher = ((row.get(k) or {}).get("mean") for k in ("random", "teacher"))
    if teacher is None:
        return "the run has no teacher score"
    if rand is None:
        return "the run has no random play"
    if math.isfinite(teacher) and math.isfinite(rand) and teacher <= rand:
        return "its teacher does not beat random play"
    return "a score is not a finite number"


def build_table1(reports: Sequence[str | Path | Mapping[str, Any]]) -> dict[str, Any]:
    """Table 1 from run reports, one block per run in the order given; every number in the result."""
    if not reports:
        raise Table1Error("no run reports; pass one run directory (or report.json) per game pair")
    blocks: list[dict[str, Any]] = []
    seen: dict[tuple[tuple[str, ...], str], str] = {}
    for item in reports:
        report, where = load_run_report(item)
        block = _block(report, where)
        key = (tuple(sorted(block["games"])), block["protocol"])
        if key in seen:
            raise Table1Error(f"{block['pair']} under {block['protocol']} twice: {seen[key]} and {where}; "
                              "pass one run per pair and protocol")
        seen[key] = where
        blocks.append(block)
    # A pair may appear under two protocols, so a missed cell names its block's protocol too.
    cells = [(f"{b['pair']} ({b['protocol']})", r, lab, r[f"{lab}_pct"]) for b in blocks
             for r in b["rows"] for lab in STUDENTS if r.get(lab) is not None]
    missed = [f"{block}: {r['game']} {STUDENTS[lab].lower()} "
              f"{f'n/a ({why_undefined(r)})' if p is None else f'{p:.1f}%'}"
              for block, r, lab, p in cells if p is None or p < BAR_PCT]
    return {"schema": TABLE1_SCHEMA, "title": TITLE, "bar_pct": BAR_PCT, "blocks": blocks,
            "below_bar": missed}


def _score(cell: Mapping[str, Any] | None) -> str:
    return format_score(cell["mean"], cell["std"]) if cell else "—"


def _seed(value: float | None, pct: float | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"
    return text if pct is None else f"{text} ({pct:.1f}%)"


HEADER = ["Pair (protocol)", "Game", "Random", "Teacher", "Seed's teacher",
          *(h for lab in STUDENTS for h in (STUDENTS[lab], "normalised %", "Seed's"))]


def table1_rows(table: Mapping[str, Any]) -> list[list[str]]:
    """The body rows of Table 1 as plain strings (one row per game of each block)."""
    body = []
    for block in table["blocks"]:
        for k, r in enumerate(block["rows"]):
            first = f"{block['pair']} ({block['protocol']})" if k == 0 else ""
            row = [first, r["game"], _score(r["random"]), _score(r["teacher"]), _seed(r["seed_teacher"])]
            for lab in STUDENTS:
                row += [_score(r[lab]), format_pct(r[f"{lab}_pct"]), _seed(r[f"seed_{lab}"], r[f"seed_{lab}_pct"])]
            body.append(row)
    return body


def table1_notes(table: Mapping[str, Any]) -> list[str]:
    """What Table 1's numbers are, each block's source and evaluation cost, and the cells below the bar."""
    notes = [
        "Ours: raw game points, mean ± standard deviation (ddof=0) over the protocol's episodes or cycles; "
        "normalised % = 100·(student − random)/(teacher − random) with the run's own random play.",
        "Seed's: the seed paper's Table 1 means (10 cycles of 12,500 states, its own teachers); in brackets "
        "the same percentage with the published random scores (Mnih et al. 2015), as the seed reports no "
        "random play.",
    ]
    for b in table["blocks"]:
        cost = b["cost"]
        notes.append(f"{b['pair']} ({b['protocol']}): {b['source']}; evaluation cost {cost['steps']:,.0f} agent "
                     f"steps, {cost['seconds'] / 60:.1f} minutes of play (all agents of the block).")
    if table["below_bar"]:
        notes.append(f"Below the {table['bar_pct']:g}% bar: {'; '.join(table['below_bar'])}.")
    else:
        notes.append(f"Every student cell is at or above the {table['bar_pct']:g}% bar.")
    return notes


def render_table1_markdown(table: Mapping[str, Any]) -> str:
    """Table 1 as Markdown: the table, then its numbered notes."""
    out = [f"# {table['title']}", "", *markdown_table(HEADER, table1_rows(table), table1_notes(table), left=2)]
    return "\n".join(out) + "\n"


def _chart(table: Mapping[str, Any], path: Path) -> Path:
    """Every student cell's normalised % of its teacher, one group per block and game; the bar dashed."""
    from .plots import bar_chart

    labels: list[str] = []
    groups: dict[str, list[float]] = {STUDENTS[lab]: [] for lab in STUDENTS}
    for b in table["blocks"]:
        kind = "cycles" if "cycles" in b["protocol"] else "episodes"
        for r in b["rows"]:
            undefined = all(r[f"{lab}_pct"] is None for lab in STUDENTS)
            labels.append(f"{r['game']}\n{kind}" + ("\n" + textwrap.fill(f"n/a: {why_undefined(r)}", 16)
                                                    if undefined else ""))
            for lab in STUDENTS:
                p = r[f"{lab}_pct"]
                groups[STUDENTS[lab]].append(float("nan") if p is None else p)
    return bar_chart(labels, groups, path, f"Students against their teachers (dashed: the {table['bar_pct']:g}% bar)",
                     "% of teacher, normalised by random play", table["bar_pct"])


def write_table1(reports: Sequence[str | Path | Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``table1.md``, ``table1.json`` and ``table1.png`` into ``out_dir`` (atomically); their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Table1Error(f"--out {out} is a file; give a directory for the report")
    table = build_table1(reports)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "table1.md", "json": out / "table1.json", "chart": out / "table1.png"}
    _chart(table, paths["chart"])
    atomic_write_json(paths["json"], table)
    atomic_write_bytes(paths["markdown"], render_table1_markdown(table).encode())
    return paths
