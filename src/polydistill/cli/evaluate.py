"""``polydistill evaluate`` and ``polydistill report``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import main
from .games_option import GamesOption
from .options import config_options, fail

if TYPE_CHECKING:
    from ..config import EvalConfig


@main.command("evaluate")
@click.option(
    "--agent",
    required=True,
    help="Checkpoint directory (teacher or student, or a teacher run directory), or 'random'.",
)
@click.option(
    "--game",
    "games",
    cls=GamesOption,
    help="Games to play: --game Pong Breakout, Pong,Breakout or the flag repeated. Default: every game the "
    "agent was trained on.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Writes DIR/scores.json."
)
@click.option(
    "--label",
    default=None,
    help="Column in the report: teacher, student_subset, student_latent, student_full, random "
    "(default: from the checkpoint).",
)
@config_options("evaluate")
def evaluate_cmd(
    agent: str, games: tuple[str, ...], out_dir: str, label: str | None, cfg: EvalConfig, profile: str
) -> None:
    """Play an agent in the real games (raw score, whole games) and write its scores as JSON.

    --protocol cycles: --cycles C of --cycle-steps S agent steps each (seed paper: 10 x 12,500); a cycle
    scores the mean return of its finished episodes. --protocol episodes: --episodes N whole episodes with up
    to 30 no-op starts and epsilon --epsilon. The same --seed gives the same numbers.
    """
    from ..evaluate import evaluate

    chosen = list(games)
    if not chosen:
        if agent == "random":
            fail("--agent random plays any game: name the games with --game")
        from ..agents import load_agent

        try:
            loaded = load_agent(agent, "cpu")
        except OSError as e:  # an unreadable --agent path is the user's to fix, not a bug
            fail(f"--agent {agent}: {e}")
        chosen = list(loaded.games)
    results = evaluate(agent, chosen, cfg, out_dir, label=label)
    click.echo(f"{results['agent']['label']} ({results['agent']['kind']}), protocol {results['protocol']}:")
    for game, r in results["games"].items():
        click.echo(
            f"  {game:<14} {r['mean']:>10.2f} ± {r['std']:<8.2f} ({len(r['scores'])} scores, "
            f"{r['episodes']} episodes, {r['steps']} steps)"
        )
    click.echo(f"  scores     {Path(out_dir) / 'scores.json'}")


@main.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--title", default=None, help="Report title.")
@click.option("--runs", "runs", is_flag=True,
              help="RESULTS are whole runs (run directories or their report/report.json), one per game pair and "
                   "protocol: write the seed paper's Table 1 across them (table1.md, .json, .png).")
def report_cmd(results: tuple[str, ...], out_dir: str, title: str | None, runs: bool) -> None:
    """Build the results table (game | random | teacher | students, with % of teacher) from scores.json files.

    RESULTS are scores.json files written by `polydistill evaluate` (or directories holding one); results
    with the same label merge across files (one teacher per game). Writes report.md, report.html,
    report.json and chart.png into --out and prints the Markdown table. With --runs, RESULTS are runs of
    `polydistill run` and the table is the seed's Table 1: per pair, teacher and both students (mean ± std),
    the seed's figures beside ours, random play and normalised percentages.
    """
    if runs:
        from ..table1 import write_table1

        if title:
            raise click.UsageError("--title applies to a report of scores.json files, not to --runs")
        files = write_table1(list(results), out_dir)
    else:
        from ..report import DEFAULT_TITLE, write_report

        files = write_report(list(results), out_dir, title or DEFAULT_TITLE)
    click.echo(files["markdown"].read_text(), nl=False)
    click.echo(f"\nwritten: {', '.join(str(p) for p in files.values())}")
