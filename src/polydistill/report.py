"""The results report: the seed paper's Table 1 for the games of a run, as Markdown, HTML, JSON and a chart.

Rows are games; columns are the agents by label (docs/CONTRACTS.md): ``random``, ``teacher``,
``student_subset`` (student on part of the buffer), ``student_latent`` (student on latents),
``student_full``, then any other label. Each cell is ``mean ± std`` of the evaluation's scores (raw game
points); each student also gets its score as a percentage of its teacher's and a normalised percentage:

- % of teacher: ``100 * s / t`` -- defined only when the teacher's mean ``t`` is positive (with ``t <= 0``,
  as for a weak Pong teacher, the ratio has no meaning).
- normalised %: ``100 * (s - r) / (t - r)`` with ``r`` the random policy's mean -- defined only when a
  random baseline is present and the teacher beats it (``t > r``). 100% = the teacher, 0% = random play.

The last row is the geometric mean of each percentage over the games where it is defined (Rusu et al.
2015 report multi-task students this way). Percentages below :data:`GEOMEAN_FLOOR_PCT` (1%), including zero
and negative ones, are raised to it first: a logarithm needs positive numbers, and one failed game should
pull the mean down hard but not to exactly zero. The table's footnote states both rules.

Several results files may carry the same label (one teacher per game): their games merge; the same label
and game twice is an error.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polydistill.errors import PolydistillError

from .buffer import RAW_STACK_BYTES
from .checkpoint import atomic_write_bytes, atomic_write_json
from .evaluate import EvaluationError, load_results
from .hns import hns as human_normalised
from .hns import mean_median
from .hns import not_comparable as hns_not_comparable

REPORT_SCHEMA = 1
DEFAULT_TITLE = "polydistill: students against their teachers"
GEOMEAN_FLOOR_PCT = 1.0
# Column order and headings of the seed paper's Table 1, plus the random baseline and the full-buffer student.
HEADINGS: dict[str, str] = {
    "random": "Random",
    "teacher": "Teacher",
    "student_subset": "Student on part of the buffer",
    "student_latent": "Student on latents",
    "student_full": "Student on the full buffer",
}
BASELINE_LABELS = ("random", "teacher")
FILES = {"markdown": "report.md", "html": "report.html", "json": "report.json", "chart": "chart.png"}


class ReportError(PolydistillError, ValueError):
    """Results that cannot be put in one table (conflicting or malformed results); the message says which."""


# ---------------------------------------------------------------------------------------------------------
# Arithmetic


def percent_of_teacher(student: float, teacher: float) -> float | None:
    """``100 * student / teacher``; None when the teacher's mean is not positive (the ratio means nothing)."""
    if not (math.isfinite(student) and math.isfinite(teacher)) or teacher <= 0:
        return None
    return 100.0 * student / teacher


def normalised_percent(student: float, teacher: float, random: float | None) -> float | None:
    """``100 * (student - random) / (teacher - random)``; None without a random baseline or when the teacher
    does not beat it."""
    if random is None or not all(math.isfinite(x) for x in (student, teacher, random)) or teacher <= random:
        return None
    return 100.0 * (student - random) / (teacher - random)


def geometric_mean_pct(values: Sequence[float | None], floor: float = GEOMEAN_FLOOR_PCT) -> float | None:
    """Geometric mean of the defined percentages, each raised to at least ``floor`` first; None if none."""
    vals = [max(float(v), floor) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


# ---------------------------------------------------------------------------------------------------------
# Building the table


def _load(item: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    if isinstance(item, Mapping):
        data, where = dict(item), "<results dict>"
    else:
        try:
            data = load_results(item)
        except EvaluationError as e:
            raise ReportError(str(e)) from None
        where = str(item)
    agent = data.get("agent")
    games = data.get("games")
    if not isinstance(agent, Mapping) or not isinstance(games, Mapping) or not agent.get("label"):
        raise ReportError(f"{where} is not an evaluation result (needs agent.label and games)")
    for game, entry in games.items():
        if not isinstance(entry, Mapping) or not all(
            isinstance(entry.get(k), int | float) for k in ("mean", "std")
        ):
            raise ReportError(f"{where}: games.{game} lacks numeric mean and std")
    return data, where


def _ordered_labels(labels: Sequence[str]) -> list[str]:
    known = [lab for lab in HEADINGS if lab in labels]
    return known + sorted(lab for lab in labels if lab not in HEADINGS)


def heading(label: str) -> str:
    """The column heading of a label (``student_subset`` -> ``Student on part of the buffer``)."""
    return HEADINGS.get(label, label.replace("_", " ").capitalize())


def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else "?"


def _protocol_text(data: Mapping[str, Any]) -> str:
    cfg = data.get("config") or {}
    proto = data.get("protocol", "?")
    if proto == "cycles":
        return f"{_n(cfg.get('cycles'))} cycles of {_n(cfg.get('cycle_steps'))} agent steps"
    if proto == "episodes":
        return f"{_n(cfg.get('episodes'))} episodes, epsilon {cfg.get('epsilon', '?')}"
    return str(proto)


def _collect(
    results: Sequence[Mapping[str, Any] | str | Path],
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, str]], dict[str, list[str]], list[str],
           dict[str, dict[str, Any]]]:
    """Every result's cells by label and game, where each came from, each label's protocols, the games in
    first-seen order and each label's evaluation settings; two results for one label and game are refused."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    sources: dict[str, dict[str, str]] = {}
    protocols: dict[str, list[str]] = {}
    game_order: list[str] = []
    evaluation: dict[str, dict[str, Any]] = {}
    for item in results:
        data, where = _load(item)
        label = str(data["agent"]["label"])
        proto = _protocol_text(data)
        # What makes two scores comparable (protocol, episodes, epsilon, seed...): not the device.
        evaluation.setdefault(label, {k: v for k, v in (data.get("config") or {}).items() if k != "device"})
        if proto not in protocols.setdefault(label, []):
            protocols[label].append(proto)
        for game, entry in data["games"].items():
            if game in cells.setdefault(label, {}):
                raise ReportError(
                    f"two results for {label} on {game}: {sources[label][game]} and {where}; "
                    f"pass one result per label and game"
                )
            cells[label][game] = {
                "mean": float(entry["mean"]),
                "std": float(entry["std"]),
                "n": len(entry.get("scores") or []),
                "protocol": proto,
            }
            # What the score cost (agent steps, seconds of play): the Table 1 report compares protocols on it.
            for key in ("steps", "seconds"):
                if isinstance(entry.get(key), int | float) and not isinstance(entry.get(key), bool):
                    cells[label][game][key] = entry[key]
            sources.setdefault(label, {})[game] = where
            if data["agent"].get("path"):
                cells[label][game]["agent_path"] = str(data["agent"]["path"])
            if game not in game_order:
                game_order.append(game)
    return cells, sources, protocols, game_order, evaluation


def build_table(
    results: Sequence[Mapping[str, Any] | str | Path],
    title: str = DEFAULT_TITLE,
    storage: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Merge evaluation results and compute the table's numbers (the contents of ``report.json``).

    ``storage`` (optional) gives bytes per stored training state per game, see :func:`storage_table`; it
    becomes the report's second table.

    Returns ``{"title", "game_order", "columns", "students", "games": {GAME: {LABEL: {mean, std, n,
    protocol, pct_of_teacher?, pct_normalised?}}}, "geo_mean_pct": {STUDENT: float|None},
    "geo_mean_pct_normalised": {...}, "geo_mean_games": {STUDENT: {"pct_of_teacher": [...],
    "normalised": [...]}}, "protocols": {LABEL: [...]}, "sources": {LABEL: {GAME: where}}, "rules",
    "warnings"}``.
    """
    if not results:
        raise ReportError("no results to report; pass at least one scores.json")
    cells, sources, protocols, game_order, evaluation = _collect(results)

    columns = _ordered_labels(list(cells))
    students = [lab for lab in columns if lab not in BASELINE_LABELS]
    games: dict[str, dict[str, Any]] = {g: {} for g in game_order}
    for label in columns:
        for game, cell in cells[label].items():
            games[game][label] = dict(cell)
    pcts: dict[str, list[tuple[str, float | None, float | None]]] = {s: [] for s in students}
    for game in game_order:
        row = games[game]
        teacher = row.get("teacher", {}).get("mean")
        rand = row.get("random", {}).get("mean")
        for s in students:
            if s not in row or teacher is None:
                continue
            p = percent_of_teacher(row[s]["mean"], teacher)
            q = normalised_percent(row[s]["mean"], teacher, rand)
            row[s]["pct_of_teacher"], row[s]["pct_normalised"] = p, q
            pcts[s].append((game, p, q))

    hns_by_label = _hns_cells(games, columns)
    hns_caveats = {lab: hns_not_comparable(evaluation.get(lab)) for lab in hns_by_label}
    warnings: list[str] = []
    cut = sorted({why for why in hns_caveats.values() if why})
    if cut:
        warnings.append(f"human-normalised scores not comparable with published ones: {'; '.join(cut)}")
    mixed = {p for ps in protocols.values() for p in ps}
    if len(mixed) > 1:
        warnings.append(f"results use different protocols ({'; '.join(sorted(mixed))}); compare with care")
    for s in students:
        lacking = [g for g in game_order if g in games and s in games[g] and "teacher" not in games[g]]
        if lacking:
            warnings.append(f"no teacher result for {', '.join(lacking)}: no % for {heading(s)} there")
    return {
        "schema": REPORT_SCHEMA,
        "title": title,
        "game_order": game_order,
        "columns": columns,
        "headings": {lab: heading(lab) for lab in columns},
        "students": students,
        "games": games,
        "geo_mean_pct": {s: geometric_mean_pct([p for _, p, _ in pcts[s]]) for s in students},
        "geo_mean_pct_normalised": {s: geometric_mean_pct([q for _, _, q in pcts[s]]) for s in students},
        "geo_mean_games": {
            s: {
                "pct_of_teacher": [g for g, p, _ in pcts[s] if p is not None],
                "normalised": [g for g, _, q in pcts[s] if q is not None],
            }
            for s in students
        },
        "hns": hns_by_label,
        "mean_hns": {lab: mean_median(v)[0] for lab, v in hns_by_label.items()},
        "median_hns": {lab: mean_median(v)[1] for lab, v in hns_by_label.items()},
        "hns_not_comparable": hns_caveats,
        "protocols": protocols,
        "evaluation": evaluation,
        "sources": sources,
        "rules": {
            "pct_of_teacher": "100 * student / teacher; only where the teacher's mean is > 0",
            "normalised": "100 * (student - random) / (teacher - random); only where teacher > random",
            "geometric_mean": f"over games where defined; values below {GEOMEAN_FLOOR_PCT:g}% "
            f"(zero and negative included) are raised to {GEOMEAN_FLOOR_PCT:g}% first",
            "floor_pct": GEOMEAN_FLOOR_PCT,
            "std": "population standard deviation (ddof=0) over cycles or episodes",
            "hns": "(score - random) / (human - random) with the published per-game human and random scores "
            "(polydistill.hns); mean and median over the games that have them",
        },
        "warnings": warnings,
        "storage": storage_table(storage) if storage else {},
    }


def _hns_cells(games: Mapping[str, dict[str, Any]], columns: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Each agent's human-normalised score per game (None where the game has no reference score); also
    written into each cell as ``hns``."""
    out: dict[str, dict[str, float | None]] = {lab: {} for lab in columns}
    for game, row in games.items():
        for lab, cell in row.items():
            cell["hns"] = out[lab][game] = human_normalised(game, cell["mean"])
    return out


#: Marks an agent's HNS column whose scores do not come from the published scores' protocol.
NOT_COMPARABLE_MARK = " (not comparable)"


def hns_rows(table: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the human-normalised score table (games, then the mean and median rows); an agent
    scored under another protocol than the published scores' is headed "(not comparable)"."""
    labels = [lab for lab in table["columns"] if lab in table.get("hns", {})]
    caveats = table.get("hns_not_comparable") or {}
    header = ["Game", *(heading(lab) + (NOT_COMPARABLE_MARK if caveats.get(lab) else "") for lab in labels)]

    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    body = [[g, *(cell(table["hns"][lab].get(g)) if g in table["hns"][lab] else "—" for lab in labels)]
            for g in table["game_order"]]
    body.append(["Mean HNS", *(cell(table["mean_hns"][lab]) for lab in labels)])
    body.append(["Median HNS", *(cell(table["median_hns"][lab]) for lab in labels)])
    return header, body


def hns_notes(table: Mapping[str, Any] | None = None) -> list[str]:
    """What the HNS table's numbers are, and why a column marked "(not comparable)" is."""
    notes = ["Human-normalised score = (score − random) / (human − random), with the published per-game human "
             "and random reference scores (Mnih et al. 2015; Badia et al. 2020, Agent57 Appendix H); 0 = random "
             "play, 1 = a human tester. n/a: the game has no reference score. Mean and median over the games "
             "that have one."]
    caveats = (table or {}).get("hns_not_comparable") or {}
    reasons = sorted({why for why in caveats.values() if why})
    if reasons:
        notes.append("Not comparable with the published scores, which are whole episodes of at least 18,000 "
                     f"frames: {'; '.join(reasons)}. These numbers rank agents scored the same way against each "
                     "other only.")
    return notes


#: Keys of one game's storage entry: (key, column heading), in column order.
STORAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("lossless_dataset", "Lossless buffer (frames + Q + columns)"),
    ("latent_dataset", "Latent buffer (codes + Q + columns)"),
    ("code", "Autoencoder code alone"),
)
SEED_CODE_BYTES = 256  # the seed paper's autoencoder code: 64 float32 values


def storage_table(storage: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Validate per-game storage figures: ``{GAME: {"lossless_dataset", "latent_dataset", "code": bytes per
    state}}`` (any subset of the keys; bytes per valid state, all columns of the dataset included)."""
    known = {k for k, _ in STORAGE_COLUMNS}
    out: dict[str, dict[str, float]] = {}
    for game, entry in storage.items():
        if not isinstance(entry, Mapping):
            raise ReportError(f"storage.{game} must map {sorted(known)} to bytes per state")
        unknown = set(entry) - known
        if unknown:
            raise ReportError(f"storage.{game} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        row: dict[str, float] = {}
        for k, v in entry.items():
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ReportError(f"storage.{game}.{k} must be a positive number of bytes, got {v!r}")
            row[k] = float(v)
        out[str(game)] = row
    return out


def storage_rows(table: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the storage table (bytes per state, and the code against the seed's 256 bytes)."""
    header = ["Game", *(h for _, h in STORAGE_COLUMNS), "Lossless vs latent", "Code vs seed (256 B)"]
    body = []
    for game, row in table.get("storage", {}).items():
        cells = [game]
        for k, _ in STORAGE_COLUMNS:
            cells.append(f"{row[k]:,.1f} B" if k in row else "—")
        both = "lossless_dataset" in row and "latent_dataset" in row
        cells.append(f"{row['lossless_dataset'] / row['latent_dataset']:.2f}x" if both else "—")
        code = row.get("code")
        cells.append(f"{code / SEED_CODE_BYTES:.2f}x" if code else "—")
        body.append(cells)
    return header, body


def storage_notes() -> list[str]:
    """What the storage table's numbers are."""
    return [
        f"Bytes per stored state; an uncompressed uint8 4-frame state is {RAW_STACK_BYTES:,} B and the seed "
        f"paper's autoencoder code {SEED_CODE_BYTES} B (64 float32).",
        "Both buffers carry the same per-step columns (teacher Q-values, action, reward, flags), so the two "
        "buffer columns compare codecs (the lossless one in the export's codec, zstd-long by default; "
        "\"Lossless vs latent\" is their ratio); the code column is the autoencoder's output alone.",
    ]


# ---------------------------------------------------------------------------------------------------------
# Rendering


def format_score(mean: float, std: float) -> str:
    """``mean ± std`` with decimals fitting the mean's size (2.7e5 -> ``270,000``; 15.9 -> ``15.9``)."""
    size = abs(mean)
    decimals = 0 if size >= 100 else 1 if size >= 10 else 2
    return f"{mean:,.{decimals}f} ± {std:,.{decimals}f}"


def format_pct(p: float | None) -> str:
    """A percentage with one decimal, or ``n/a`` when undefined."""
    return "n/a" if p is None else f"{p:.1f}%"


def _pct_pair(p: float | None, q: float | None) -> str:
    return f"{format_pct(p)} ({format_pct(q)})"


def table_rows(table: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and body rows (plain strings) of the table, the geometric-mean row last."""
    header = ["Game"]
    for lab in table["columns"]:
        header.append(heading(lab))
        if lab in table["students"]:
            header.append("% of teacher (normalised)")
    body: list[list[str]] = []
    for game in table["game_order"]:
        row = [game]
        for lab in table["columns"]:
            cell = table["games"][game].get(lab)
            row.append(format_score(cell["mean"], cell["std"]) if cell else "—")
            if lab in table["students"]:
                row.append(_pct_pair(cell.get("pct_of_teacher"), cell.get("pct_normalised")) if cell else "—")
        body.append(row)
    if table["students"]:
        geo = ["Geometric mean"]
        for lab in table["columns"]:
            geo.append("")
            if lab in table["students"]:
                geo.append(_pct_pair(table["geo_mean_pct"][lab], table["geo_mean_pct_normalised"][lab]))
        body.append(geo)
    return header, body


def footnotes(table: Mapping[str, Any]) -> list[str]:
    """The table's notes: what the numbers are and the rules behind the percentages."""
    by_protocol: dict[str, list[str]] = {}
    for lab, ps in table["protocols"].items():
        for p in ps:
            by_protocol.setdefault(p, []).append(heading(lab))
    if len(by_protocol) == 1:
        protos = next(iter(by_protocol))
    else:
        protos = "; ".join(f"{p} ({', '.join(labs)})" for p, labs in by_protocol.items())
    notes = [
        f"Scores are raw game points, mean ± standard deviation (ddof=0) over cycles or episodes ({protos})."
    ]
    if table["students"]:
        notes += _pct_notes()
    return notes + [f"Warning: {w}." for w in table["warnings"]]


def _pct_notes() -> list[str]:
    return [
        "% of teacher = 100·student/teacher, shown only where the teacher's mean is positive; in brackets "
        "the normalised % = 100·(student − random)/(teacher − random), shown only where the teacher beats "
        "random.",
        f"Geometric mean over the games where a percentage is defined; percentages below "
        f"{GEOMEAN_FLOOR_PCT:g}% (zero and negative included) are raised to {GEOMEAN_FLOOR_PCT:g}% first.",
    ]


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], notes: Sequence[str],
                   left: int = 1) -> list[str]:
    """Lines of a Markdown table (the first ``left`` columns left-aligned, the rest right-aligned) and its
    numbered notes."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * left + ["---:"] * (len(header) - left)
    return [line(header), line(align), *(line(r) for r in body), "", *(f"{i}. {n}" for i, n in enumerate(notes, 1))]


def render_markdown(table: Mapping[str, Any]) -> str:
    """The report as Markdown (a title, the table, its footnotes; then the storage table when given)."""
    out = [f"# {table['title']}", "", *markdown_table(*table_rows(table), footnotes(table))]
    if table.get("hns"):
        out += ["", "## Human-normalised score", "", *markdown_table(*hns_rows(table), hns_notes(table))]
    if table.get("storage"):
        out += ["", "## Storage per training state", "", *markdown_table(*storage_rows(table), storage_notes())]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.35rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
tr.geo td{font-weight:600;background:#fafafa}
ol{font-size:.9rem;color:#444}
img{max-width:100%}
"""


def _html_table(
    header: Sequence[str], body: Sequence[Sequence[str]], notes: Sequence[str], last_row_class: str = ""
) -> list[str]:
    """A table (escaped; ``last_row_class`` on the last row when given) and its notes as an ordered list."""
    e = html.escape
    rows = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(body):
        cls = f" class='{last_row_class}'" if last_row_class and i == len(body) - 1 else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
    return ["<table>" + "".join(rows) + "</table>", "<ol>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ol>"]


def render_html(table: Mapping[str, Any], chart_png: bytes | None = None) -> str:
    """A self-contained HTML page: the table, its footnotes and the chart inlined as base64 (the Kubeflow UI
    shows an ``Output[HTML]`` without fetching other files)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(table['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h2>{e(table['title'])}</h2>",
        *_html_table(*table_rows(table), footnotes(table), "geo" if table["students"] else ""),
    ]
    if table.get("hns"):
        parts += ["<h3>Human-normalised score</h3>", *_html_table(*hns_rows(table), hns_notes(table))]
    if table.get("storage"):
        parts += ["<h3>Storage per training state</h3>", *_html_table(*storage_rows(table), storage_notes())]
    if chart_png:
        data = base64.b64encode(chart_png).decode("ascii")
        parts.append(f"<p><img alt='scores as % of teacher' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _chart(table: Mapping[str, Any], path: Path) -> Path:
    """Bars of each student's % of teacher per game and their geometric mean, 100% dashed; with no student
    to compare yet, the raw mean scores per agent instead."""
    from .plots import bar_chart

    nan = float("nan")
    games = list(table["game_order"])
    if not table["students"]:
        groups = {
            heading(lab): [table["games"][g].get(lab, {}).get("mean", nan) for g in games]
            for lab in table["columns"]
        }
        return bar_chart(games, groups, path, table["title"], "mean score (raw points)")
    groups = {}
    for s in table["students"]:
        vals = [table["games"][g].get(s, {}).get("pct_of_teacher") for g in games]
        vals.append(table["geo_mean_pct"][s])
        groups[heading(s)] = [nan if v is None else v for v in vals]
    return bar_chart([*games, "geo. mean"], groups, path, table["title"], "score as % of teacher", 100.0)


def write_report(
    results: Sequence[Mapping[str, Any] | str | Path],
    out_dir: str | Path,
    title: str = DEFAULT_TITLE,
    storage: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write the results table for ``results`` (results dicts, ``scores.json`` files or directories holding
    one) into ``out_dir``: ``report.md``, ``report.html`` (self-contained), ``report.json`` (every number)
    and ``chart.png`` (each student's score as % of its teacher per game). Files are written atomically.
    ``storage`` adds the bytes-per-state table (:func:`storage_table`).

    Returns ``{"markdown", "html", "json", "chart"}`` -> path.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a directory for the report")
    table = build_table(results, title, storage)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in FILES.items()}
    _chart(table, paths["chart"])
    atomic_write_json(paths["json"], table)
    atomic_write_bytes(paths["markdown"], render_markdown(table).encode())
    atomic_write_bytes(paths["html"], render_html(table, paths["chart"].read_bytes()).encode())
    return paths
