"""MLflow tracking: comparing pipeline runs."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .connection import (
    _check_reachable,
    _client,
    _describe,
)
from .names import (
    DEFAULT_EXPERIMENT,
    PIPELINE_KIND,
    TAG_GAMES,
    TAG_KIND,
    TAG_PROFILE,
    TrackingError,
)
from .params import (
    _secret_values,
    safe_tracking_uri,
)
from .report_metrics import (
    _geo_mean,
)

CompareFormat = Literal["table", "csv", "html"]
_BASE_COLUMNS = ("run", "run_id", "status", "profile", "games", "loss", "tau", "actions", "width", "source",
                 "bytes_per_state")


def _first(d: Mapping[str, str], *keys: str) -> str:
    for k in keys:
        if d.get(k) not in (None, ""):
            return str(d[k])
    return ""


def _split_games(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def _pipeline_runs(tracking_uri: str, experiment: str) -> list[Any]:
    """Every pipeline (parent) run of ``experiment``; :class:`TrackingError` names what cannot be read."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.is_file():
            raise TrackingError(
                f"no MLflow database at {db}; pass --tracking-uri (or set MLFLOW_TRACKING_URI) or --run-dir"
            )
    try:
        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise TrackingError(
                f"no experiment {experiment!r} at {safe_tracking_uri(tracking_uri)}; experiments there: "
                f"{', '.join(names) or 'none'}"
            )
        runs = []
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id], filter_string=f"tags.{TAG_KIND} = '{PIPELINE_KIND}'", max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(
            f"cannot read runs from {safe_tracking_uri(tracking_uri)}: {_describe(e, _secret_values())}"
        ) from None

    return runs


def compare_rows(
    tracking_uri: str, experiment: str, games: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows for :func:`compare_runs`: one per (pipeline run, student data source), best first.

    Each row has the keys in ``_BASE_COLUMNS``, ``pct/<GAME>`` per game and ``geo_mean_pct`` (floats or
    None). With ``games``, only runs over exactly that set of games (in any order) are kept.
    """
    runs = _pipeline_runs(tracking_uri, experiment)
    wanted = {g.casefold() for g in games} if games else None
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        run_games = _split_games(_first(tags, TAG_GAMES) or _first(params, "games"))
        pct: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "pct_of_teacher":
                pct.setdefault(parts[1], {})[parts[2]] = value
        sources = sorted({*pct, *(k.split("/", 1)[1] for k in metrics if k.startswith("geo_mean_pct/"))})
        if not run_games:
            run_games = sorted({g for per in pct.values() for g in per})
        if wanted is not None and {g.casefold() for g in run_games} != wanted:
            continue
        base = {
            "run": tags.get("mlflow.runName", ""),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "profile": _first(tags, TAG_PROFILE) or _first(params, "profile"),
            "games": ",".join(run_games),
            "loss": _first(params, "distill.loss", "distill_loss"),
            "tau": _first(params, "distill.tau", "tau"),
            "actions": _first(params, "distill.actions", "actions"),
            "width": _first(params, "distill.width", "student_width"),
            "_start": run.info.start_time or 0,
        }
        for source in sources or [""]:
            per_game = pct.get(source, {})
            geo = metrics.get(f"geo_mean_pct/{source}") if source else None
            if geo is None:
                geo = _geo_mean([per_game[g] for g in run_games if g in per_game]) if per_game else None
            row = {
                **base,
                "source": source,
                "bytes_per_state": metrics.get(f"bytes_per_state/{source}") if source else None,
                "geo_mean_pct": geo,
            }
            row.update({f"pct/{g}": v for g, v in per_game.items()})
            row.update(_hns_columns(metrics, source))
            rows.append(row)
    # Best geometric mean first; runs without scores last; ties: newest first.
    rows.sort(key=lambda r: (r["geo_mean_pct"] is None, -(r["geo_mean_pct"] or 0.0), -r["_start"]))
    for r in rows:
        r.pop("_start")
    return rows


def _hns_columns(metrics: Mapping[str, float], source: str) -> dict[str, float | None]:
    """``hns/<GAME>``, ``mean_hns`` and ``median_hns`` of one student source (the champion's yardstick)."""
    out: dict[str, float | None] = {
        "mean_hns": metrics.get(f"mean_hns/{source}") if source else None,
        "median_hns": metrics.get(f"median_hns/{source}") if source else None,
    }
    prefix = f"hns/{source}/"
    out.update({f"hns/{k[len(prefix):]}": v for k, v in metrics.items() if source and k.startswith(prefix)})
    return out


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if key == "bytes_per_state":
            return f"{value:.0f}"
        if "hns" in key:
            return f"{value:.3f}"
        return f"{value:.1f}"
    return str(value)


def compare_runs(
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    games: Sequence[str] | None = None,
    fmt: CompareFormat = "table",
) -> str:
    """Pipeline runs side by side as a text table, CSV or an HTML table, best geometric mean first.

    One row per pipeline run and student data source: profile, games, loss, tau, action heads, student
    width, data source, bytes per state, student % of teacher per game (``pct/<GAME>``) and their
    geometric mean (``geo_mean_pct``), then the human-normalised score per game (``hns/<GAME>``) and its
    mean and median over games (``mean_hns``, ``median_hns``: what the champion is chosen on).
    Raises :class:`TrackingError` when the store cannot be read.
    """
    if fmt not in ("table", "csv", "html"):
        raise ValueError(f"fmt must be table, csv or html, got {fmt!r}")
    rows = compare_rows(tracking_uri, experiment, games)
    game_cols: list[str] = []
    for r in rows:
        for g in _split_games(r["games"]):
            if f"pct/{g}" not in game_cols:
                game_cols.append(f"pct/{g}")
        game_cols.extend(k for k in r if k.startswith("pct/") and k not in game_cols)
    hns_cols = [f"hns/{c[4:]}" for c in game_cols]
    hns_cols += sorted({k for r in rows for k in r if k.startswith("hns/") and k not in hns_cols})
    columns = [*_BASE_COLUMNS, *game_cols, "geo_mean_pct", *hns_cols, "mean_hns", "median_hns"]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        return buf.getvalue()
    cells = [[_fmt(r.get(c), c) for c in columns] for r in rows]
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells
        )
        return (
            '<table class="polydistill-compare">\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        )
    cells = [[v[:8] if c == "run_id" else v for c, v in zip(columns, row, strict=True)] for row in cells]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    if not rows:
        lines.append("(no pipeline runs" + (f" over games {', '.join(games)}" if games else "") + ")")
    return "\n".join(lines) + "\n"
