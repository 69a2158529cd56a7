"""``polydistill import-teacher`` (SB3 / CleanRL / polydistill teachers in) and ``export-minari`` (Minari out)."""

from __future__ import annotations

import click

from ..config import TEACHER_SOURCES, ImportConfig
from . import main
from .options import config_options


@main.command("import-teacher")
@click.argument("checkpoint", type=click.Path())
@click.option("--from", "source", type=click.Choice([*TEACHER_SOURCES, "auto"]), required=True,
              help="What trained it: sb3 (model.save()'s .zip), cleanrl (dqn_atari.py's state_dict) or "
                   "polydistill (a train-teacher directory); auto tells them apart by content.")
@click.option("--game", required=True, help="The Atari game it plays: Pong, ALE/Pong-v5 or pong.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Teacher directory.")
@config_options("import", skip=("teachers",))
def import_teacher_cmd(checkpoint: str, source: str, game: str, out_dir: str, cfg: ImportConfig, profile: str) -> None:
    """Import a Stable-Baselines3 or CleanRL DQN, or a polydistill teacher trained elsewhere (across
    sittings, on another machine), as a teacher, then record its states by playing.

    The checkpoint's format and preprocessing are checked against ours first (one line naming every
    difference); --out then gets what train-teacher writes (checkpoint/, dataset/, curve.csv, curve.png), so
    export-buffer and the later stages take it unchanged. Nothing is written if the import fails.
    """
    from ..envs import canonical_game
    from ..teacher_import import import_teacher

    canonical_game(game)
    res = import_teacher(source, checkpoint, game, cfg, out_dir)
    click.echo(
        f"{res.out_dir}: imported, {res.steps} steps recorded, {res.episodes} episodes, mean return "
        f"{res.final_return_mean:.1f}\n  checkpoint {res.checkpoint_dir}\n  dataset    {res.dataset_uri}"
    )


@main.command("export-minari")
@click.argument("dataset")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False),
              help="Minari datasets root (set MINARI_DATASETS_PATH to it, then minari.load_dataset(ID)).")
@click.option("--id", "dataset_id", default=None, help="Minari dataset id [polydistill/<game>-v0].")
def export_minari_cmd(dataset: str, dest: str, dataset_id: str | None) -> None:
    """Write an experience dataset (a buffer: s3://..., file://... or a path) as a Minari dataset.

    Observations (uint8 stacks, lossless), actions, rewards, terminations, truncations, and the teacher's
    Q-values as infos["q_values"].
    """
    from pathlib import Path

    from ..minari_export import export_minari

    path = export_minari(dataset, dest, dataset_id)
    root = Path(dest).expanduser().resolve()
    click.echo(f"{path}\n  read it: MINARI_DATASETS_PATH={root} python -c \"import minari; "
               f"print(minari.load_dataset('{path.relative_to(root).as_posix()}'))\"")
