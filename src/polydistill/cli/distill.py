"""``polydistill distill``."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DistillConfig
from . import main
from .options import config_options, fail


def _pair_by_game(
    teacher_dirs: tuple[str, ...], dataset_uris: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, str]]:
    """``({game: teacher dir}, {game: dataset URI})`` from each checkpoint's and manifest's own game."""
    from ..buffer import DatasetError, open_dataset
    from ..checkpoint import CheckpointError, read_metadata
    from ..distill import teacher_checkpoint_dir
    from ..envs import canonical_game
    from ..store import StoreError, redact

    teachers: dict[str, str] = {}
    for t in teacher_dirs:
        try:
            meta = read_metadata(teacher_checkpoint_dir(t))
        except CheckpointError as e:
            fail(f"--teacher {t}: {e}")
        if meta.get("kind") != "teacher" or "game" not in meta:
            fail(f"--teacher {t} holds a {meta.get('kind')!r} checkpoint, not a teacher")
        game = canonical_game(meta["game"])
        if game in teachers:
            fail(f"two --teacher checkpoints for {game}: {teachers[game]} and {t}; give one per game")
        teachers[game] = t
    datasets: dict[str, str] = {}
    for d in dataset_uris:
        try:
            game = canonical_game(open_dataset(d).game)
        except (DatasetError, StoreError) as e:
            fail(f"--dataset {redact(d)}: {e}")
        if game in datasets:
            fail(f"two --dataset URIs for {game}: {datasets[game]} and {d}; give one per game")
        datasets[game] = d
    return teachers, datasets


@main.command("distill")
@click.option(
    "--teacher",
    "teacher_dirs",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="Teacher run or checkpoint directory; repeat once per game.",
)
@click.option(
    "--dataset",
    "dataset_uris",
    multiple=True,
    required=True,
    help="Experience dataset URI (s3://..., file:///..., or a path); repeat once per game. Paired with "
    "teachers by the game in each manifest, not by order. Latent datasets for --source latent.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run directory (an interrupted run there is resumed; a finished one is reused).",
)
@config_options("distill")
def distill_cmd(
    teacher_dirs: tuple[str, ...],
    dataset_uris: tuple[str, ...],
    out_dir: str,
    cfg: DistillConfig,
    profile: str,
) -> None:
    """Distill one multi-task student from per-game teachers and their recorded states.

    Writes checkpoint/ (the student), curves.csv and curves.png (held-out loss and agreement per game)
    into --out. The progress bar shows samples/s and the agreement with each teacher.
    """
    from ..distill import distill

    teachers, datasets = _pair_by_game(teacher_dirs, dataset_uris)
    res = distill(teachers, datasets, cfg, Path(out_dir))
    lines = [
        f"{res.out_dir}: {res.steps} steps, {res.parameters:,} parameters, "
        f"{res.samples_per_second:.0f} samples/s"
    ]
    for g in sorted(res.agreement):
        lines.append(f"  {g}: agreement {res.agreement[g]:.3f}, held-out loss {res.final_loss[g]:.4f}")
    lines += [f"  checkpoint {res.checkpoint_dir}", f"  curves     {res.curves_png}"]
    click.echo("\n".join(lines))
