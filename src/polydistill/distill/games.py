"""Pairing each game's teacher checkpoint with its experience dataset, and checking them all (games,
action sets, codecs, frame stacks, the layout and ``init``) before anything heavy is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..agents import check_teacher_metadata
from ..buffer import DatasetError, ExperienceDataset, open_dataset
from ..checkpoint import CheckpointError, read_metadata
from ..config import DistillConfig
from ..envs import UnknownGameError, canonical_game
from ..networks import QNetwork
from ..sampling import StreamingSampler
from .errors import DistillError
from .layout import StudentLayout, _check_init, parse_init, plan_layout


@dataclass
class _Game:
    """Everything the loop needs for one game."""

    game: str
    teacher_dir: Path
    teacher_meta: dict[str, Any]
    dataset_uri: str
    dataset: ExperienceDataset
    teacher: QNetwork | None = None
    decoder: Any = None
    sampler: StreamingSampler | None = None
    val_inputs: list[Any] = field(default_factory=list)  # uint8 states tensors or latent arrays
    val_targets: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)


def teacher_checkpoint_dir(path: str | Path) -> Path:
    d = Path(path)
    return d / "checkpoint" if (d / "checkpoint").is_dir() and not (d / "metadata.json").is_file() else d


def _canonical_keys(mapping: Mapping[str, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        try:
            g = canonical_game(k)
        except UnknownGameError as e:
            raise DistillError(f"{what} for {k!r}: {e}") from None
        if g in out:
            raise DistillError(f"two {what}s for {g}; give one per game")
        out[g] = v
    return out


def _prepare_games(
    teachers: Mapping[str, str | Path], datasets: Mapping[str, str | Path], cfg: DistillConfig
) -> tuple[list[_Game], StudentLayout, str | None]:
    """Pair and check teachers and datasets (metadata and manifests only: nothing heavy is loaded)."""
    t = _canonical_keys(teachers, "teacher")
    d = _canonical_keys(datasets, "dataset")
    if set(t) != set(d):
        problems = [f"no dataset for {g}" for g in sorted(set(t) - set(d))]
        problems += [f"no teacher for {g}" for g in sorted(set(d) - set(t))]
        raise DistillError(
            f"teachers are for {', '.join(sorted(t)) or 'no game'} but datasets for "
            f"{', '.join(sorted(d)) or 'no game'}: {'; '.join(problems)}. "
            f"Give one teacher and one dataset per game"
        )
    games: list[_Game] = []
    for g in sorted(t):
        tdir = teacher_checkpoint_dir(t[g])
        try:
            meta = read_metadata(tdir)
        except CheckpointError as e:
            raise DistillError(f"teacher for {g}: {e}") from None
        if meta.get("kind") != "teacher":
            raise DistillError(f"teacher for {g}: {tdir} holds a {meta.get('kind')!r} checkpoint, not a teacher")
        try:
            t_game, t_meanings = check_teacher_metadata(meta, tdir)
        except CheckpointError as e:
            raise DistillError(f"teacher for {g}: {e}") from None
        if t_game != g:
            raise DistillError(f"the teacher given for {g} ({tdir}) was trained on {meta.get('game')}")
        uri = str(d[g])
        try:
            ds = open_dataset(uri, max_decoded=cfg.cache_shards)
        except DatasetError as e:
            raise DistillError(f"dataset for {g}: {e}") from None
        if canonical_game(ds.game) != g:
            raise DistillError(f"the dataset given for {g} ({ds.uri}) holds {ds.game} states")
        if cfg.source == "latent" and ds.codec != "latent":
            raise DistillError(
                f"source=latent needs latent datasets, but the {g} dataset {ds.uri} has codec {ds.codec!r}; "
                f"give the encode-buffer output, or use --source full/subset"
            )
        if cfg.source != "latent" and ds.codec == "latent":
            raise DistillError(
                f"source={cfg.source} needs frame datasets, but the {g} dataset {ds.uri} is a latent "
                f"dataset; "
                f"use --source latent or give the exported buffer"
            )
        if list(ds.manifest.action_meanings) != t_meanings:
            raise DistillError(
                f"{g}: the teacher's actions {t_meanings} differ from the dataset's {ds.manifest.action_meanings}"
            )
        q_teacher = ds.manifest.other_q_teacher(meta.get("sha256"))
        if ds.has_q and q_teacher:
            # Stored targets from another teacher would silently distill that one instead.
            raise DistillError(
                f"{g}: the dataset {ds.uri} stores Q-values of teacher {q_teacher[:12]}, but the teacher "
                f"given ({tdir}) is {meta['sha256'][:12]}; give the teacher the dataset was exported with"
            )
        t_stack = int(meta.get("observation", {}).get("frame_stack", 4))
        if ds.manifest.frame_stack != t_stack:
            raise DistillError(f"{g}: the teacher stacks {t_stack} frames, the dataset {ds.manifest.frame_stack}")
        games.append(_Game(g, tdir, meta, ds.uri, ds))
    layout = plan_layout(cfg.actions, {x.game: list(x.teacher_meta["action_meanings"][0]) for x in games})
    init_game = parse_init(cfg.init, layout.games)
    widths = {x.game: float(x.teacher_meta.get("architecture", {}).get("width", 1.0)) for x in games}
    _check_init(init_game, layout, cfg, widths)
    if len({x.dataset.manifest.frame_stack for x in games}) > 1:
        raise DistillError("the datasets stack different numbers of frames; one student needs one input shape")
    return games, layout, init_game
