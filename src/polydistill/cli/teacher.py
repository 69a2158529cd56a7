"""``polydistill train-teacher``."""

from __future__ import annotations

import click

from ..config import TeacherConfig
from . import main
from .options import config_options


@main.command("train-teacher")
@click.option("--game", required=True, help="Atari game: Pong, ALE/Pong-v5 or pong.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@config_options("teacher", aliases={"total_steps": "steps"})
def train_teacher_cmd(game: str, out_dir: str, cfg: TeacherConfig, profile: str) -> None:
    """Train a Dueling Double DQN teacher and record its experience.

    Writes checkpoint/, dataset/ (the last --record-steps states), curve.csv and curve.png into --out.
    Re-running with the same --out resumes an interrupted run.
    """
    from ..envs import canonical_game
    from ..teacher import train_teacher

    canonical_game(game)  # an unknown game fails before any file is written
    res = train_teacher(game, cfg, out_dir)
    click.echo(
        f"{res.out_dir}: {res.steps} steps, {res.episodes} episodes, recent mean return "
        f"{res.final_return_mean:.1f}\n  checkpoint {res.checkpoint_dir}\n  dataset    {res.dataset_uri}\n"
        f"  curve      {res.curve_png}"
    )
