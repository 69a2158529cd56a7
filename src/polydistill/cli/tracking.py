"""``polydistill compare``: pipeline runs recorded in MLflow, side by side."""

from __future__ import annotations

from pathlib import Path

import click

from . import main
from .games_option import GamesOption


@main.command("compare")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (http://host:port, sqlite:///path/mlflow.db). Default: $MLFLOW_TRACKING_URI, "
    "else <run-dir>/mlflow.db.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory of a local run; its mlflow.db is read when no tracking URI is given. Default: the "
    "current directory.",
)
@click.option("--experiment", default="polydistill", show_default=True, help="MLflow experiment name.")
@click.option(
    "--games",
    cls=GamesOption,
    help="Only runs over exactly these games (any order): --games Pong Breakout, Pong,Breakout or repeated.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "html"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout."
)
def compare_cmd(
    tracking_uri: str | None, run_dir: str | None, experiment: str, games: tuple[str, ...], fmt: str,
    out: str | None,
) -> None:
    """Compare pipeline runs: one row per run and student data source, best first.

    Columns: profile, games, distillation loss, tau, action heads, student width, data source, bytes per
    stored state, student score as % of teacher per game (pct/GAME) and the geometric mean over games
    (geo_mean_pct), by which rows are sorted.
    """
    from ..tracking import compare_runs, resolve_tracking_uri

    game_list = [g.strip() for item in games for g in item.split(",") if g.strip()] or None
    uri = resolve_tracking_uri(tracking_uri, Path(run_dir) if run_dir else None)
    text = compare_runs(uri, experiment, game_list, fmt)  # type: ignore[arg-type]
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)
