"""Multi-task policy distillation: one student learns every game from its teacher, offline, from states.

The algorithm, top to bottom (Rusu et al. 2015, "Policy Distillation"; Parisotto et al. 2015, "Actor-Mimic";
the seed paper):

1. Pair each game's teacher checkpoint with its experience dataset (by canonical game name) and check
   everything (games, action sets, codecs, action layout, initialisation) before any training.
2. Build the student: the teacher's Dueling architecture scaled by ``width``, with heads laid out by
   ``actions``: ``shared`` (one head, all games have the same number of actions), ``per-game`` (one head per
   game, selected by task id) or ``union`` (one head over the 18 ALE actions; each game's illegal actions
   masked). Initialised at random or as a copy of one teacher (``init=teacher:GAME``, the seed paper).
3. Every optimizer step draw ``batch_size`` states per game from a
   :class:`~polydistill.sampling.StreamingSampler` (bounded memory: a pool of decoded shards; ``source``:
   ``full`` all of the dataset, ``subset`` its most recent ``subset_fraction``, ``latent`` autoencoder
   codes decoded on the training device). Teacher targets are the Q-values stored in the dataset when
   present, else the teacher's forward pass on the same states.
4. One loss per game (``kl`` / ``nll`` / ``mse`` / ``actor_mimic``, see :mod:`polydistill.losses`), then the
   gradient of their sum (``schedule=sum``, the seed) or of one game per step in turn (``round_robin``,
   Policy Distillation). Adam. Actor-Mimic trains a per-game feature regressor jointly.
5. Every ``eval_every`` steps: action agreement with the teacher (argmax match) and the loss on up to
   :data:`VALIDATION_STATES` held-out states per game (the sampler's held-out split of the trained range,
   spread over the dataset); logged through ``on_metrics`` and the progress bar.
6. Every ``checkpoint_every`` steps a resume point (student, optimizer, regressors, step, RNG, sampler seeds);
   a run killed and restarted with the same ``out_dir`` resumes there and ends at the same step count. The
   minibatch stream after a resume is seeded from the resume step: reproducible, not bit-identical to an
   unbroken run.
7. At the end: the student checkpoint (``OUT/checkpoint``, loadable with ``weights_only=True`` through
   :func:`polydistill.agents.load_agent`), ``curves.csv`` and ``curves.png`` (loss and agreement per game).
   A finished run in ``out_dir`` is reused, not retrained.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polydistill.errors import PolydistillError

from . import __version__
from . import losses as L
from .agents import check_teacher_metadata
from .buffer import DatasetError, ExperienceDataset, holdout_mask, open_dataset
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    load_state_dict,
    read_metadata,
    save_checkpoint,
)
from .config import DistillConfig
from .envs import FULL_ACTION_MEANINGS, UnknownGameError, canonical_game
from .networks import DuelingQNetwork, QNetwork, count_parameters, make_adam, pick_device, scheduled_lr, set_lr
from .progress import MetricsCallback, progress
from .rundir import RunDir
from .sampling import Batch, StreamingSampler, batch_from_rows

log = logging.getLogger(__name__)

CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"
REGRESSORS_FILE = "regressors.pt"
VALIDATION_STATES = 512  # held-out states per game scored at each validation pass
VALIDATION_BATCH = 256
VALIDATION_SHARDS = 16  # shards (evenly spaced) the held-out states are drawn from
# Settings that may change when a run is resumed; every other setting must match the interrupted run.


class DistillError(PolydistillError, ValueError):
    """Bad input to a distillation run (found before any training starts)."""


@dataclass
class DistillResult:
    """Where a finished distillation run put its outputs, and its final validation figures.

    ``agreement`` is the held-out fraction (0..1) of states where the student's greedy action equals the
    teacher's; ``final_loss`` the held-out distillation loss; ``samples_per_second`` training states per
    second (all games, validation and checkpoints excluded); ``parameters`` the student's parameter count.
    """

    out_dir: Path
    checkpoint_dir: Path
    curves_csv: Path
    curves_png: Path
    agreement: dict[str, float]
    final_loss: dict[str, float]
    samples_per_second: float
    parameters: int
    steps: int = 0


# ----------------------------------------------------------------------------------------------- layout


@dataclass
class StudentLayout:
    """How the student's heads map to games and actions.

    ``head_sizes`` are the heads' output counts; ``head_for_game`` picks a game's head; ``union_action_map``
    (``union`` only) lists, for each of a game's actions in its own order, its index among the 18 ALE actions.
    """

    games: list[str]
    actions: str
    head_sizes: list[int]
    head_for_game: dict[str, int]
    action_meanings: dict[str, list[str]]
    union_action_map: dict[str, list[int]] = field(default_factory=dict)

    def num_actions(self, game: str) -> int:
        return len(self.action_meanings[game])

    def mask(self, game: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Legal-action mask (18,) of ``game`` for ``union``, else None."""
        if self.actions != "union":
            return None
        m = torch.zeros(len(FULL_ACTION_MEANINGS), dtype=torch.bool, device=device)
        m[self.union_action_map[game]] = True
        return m

    def columns(self, game: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The game's columns of the union head, in its own action order (``union`` only)."""
        if self.actions != "union":
            return None
        return torch.as_tensor(self.union_action_map[game], dtype=torch.long, device=device)


def plan_layout(actions: str, meanings: Mapping[str, list[str]]) -> StudentLayout:
    """The head layout for ``actions`` over games with these action meanings (games sorted by name).

    ``shared`` refuses games with different action counts (the seed pairs games that way).
    """
    games = sorted(meanings)
    if not games:
        raise DistillError("no games to distill: give at least one teacher and dataset")
    counts = {g: len(meanings[g]) for g in games}
    if actions == "shared":
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{g} ({n} actions)" for g, n in counts.items())
            raise DistillError(
                f"actions=shared needs games with the same number of actions, got {listed}; pair games with "
                f"equal action counts, or use --actions per-game or --actions union"
            )
        return StudentLayout(
            games, actions, [counts[games[0]]], dict.fromkeys(games, 0), {g: list(meanings[g]) for g in games}
        )
    if actions == "per-game":
        return StudentLayout(
            games,
            actions,
            [counts[g] for g in games],
            {g: i for i, g in enumerate(games)},
            {g: list(meanings[g]) for g in games},
        )
    if actions == "union":
        amap: dict[str, list[int]] = {}
        for g in games:
            unknown = [m for m in meanings[g] if m not in FULL_ACTION_MEANINGS]
            if unknown:
                raise DistillError(f"{g}: actions {unknown} are not ALE actions; cannot place them in the union head")
            amap[g] = [FULL_ACTION_MEANINGS.index(m) for m in meanings[g]]
        return StudentLayout(
            games,
            actions,
            [len(FULL_ACTION_MEANINGS)],
            dict.fromkeys(games, 0),
            {g: list(meanings[g]) for g in games},
            amap,
        )
    raise DistillError(f"unknown actions={actions!r}; choose shared, per-game or union")


def parse_init(init: str, games: list[str]) -> str | None:
    """The teacher game of ``init=teacher:GAME`` (canonical), None for ``random``, and for plain ``teacher``
    the first of ``games`` (the student's games are in name order, so a profile can say "copy a teacher"
    without naming a game the user may replace)."""
    if init == "random":
        return None
    if init == "teacher":
        if not games:
            raise DistillError("init='teacher' needs at least one game")
        return games[0]
    kind, _, game = init.partition(":")
    if kind != "teacher" or not game:
        raise DistillError(f"init={init!r} is not understood; use 'random', 'teacher' or 'teacher:GAME'")
    try:
        g = canonical_game(game)
    except UnknownGameError as e:
        raise DistillError(f"init={init!r}: {e}") from None
    if g not in games:
        raise DistillError(f"init={init!r}: {g} is not one of the distilled games ({', '.join(games)})")
    return g


def _check_init(
    init_game: str | None, layout: StudentLayout, cfg: DistillConfig, teacher_widths: dict[str, float]
) -> None:
    if init_game is None:
        return
    if cfg.width != teacher_widths[init_game]:
        raise DistillError(
            f"init=teacher:{init_game} copies the teacher's weights, so the student needs the teacher's "
            f"width "
            f"({teacher_widths[init_game]}), got width={cfg.width}; use --init random for a resized student"
        )
    head = layout.head_sizes[layout.head_for_game[init_game]]
    n = layout.num_actions(init_game)
    if head != n:
        raise DistillError(
            f"init=teacher:{init_game}: the student's head for {init_game} has {head} outputs "
            f"(actions={layout.actions}) but the teacher has {n}; use --init random or "
            f"--actions per-game/shared"
        )


def build_student(
    layout: StudentLayout,
    cfg: DistillConfig,
    teachers: Mapping[str, QNetwork] | None = None,
    frame_stack: int = 4,
) -> DuelingQNetwork:
    """A student network for ``layout``, seeded by ``cfg.seed``.

    ``cfg.init=teacher:GAME`` copies that teacher's torso and head into the student (every head of the
    teacher's shape), so the student starts as the teacher.
    """
    init_game = parse_init(cfg.init, layout.games)
    torch.manual_seed(cfg.seed)
    student = DuelingQNetwork(layout.head_sizes, width=cfg.width, frame_stack=frame_stack)
    if init_game is not None:
        if not teachers or init_game not in teachers:
            raise DistillError(f"init=teacher:{init_game} needs that teacher's network")
        teacher = teachers[init_game]
        _check_init(init_game, layout, cfg, {init_game: teacher.width})
        student.torso.load_state_dict(teacher.torso.state_dict())
        copied = []
        for h, size in enumerate(layout.head_sizes):
            # An imported (Nature-DQN) teacher's head has another layout: only its torso is copied.
            if size == teacher.num_actions[0] and isinstance(teacher, DuelingQNetwork):
                student.heads[h].load_state_dict(teacher.heads[0].state_dict())
                copied.append(h)
        log.info("student initialised from the %s teacher (torso and heads %s)", init_game, copied)
    return student


# ----------------------------------------------------------------------------------------------- losses


def game_loss(
    cfg: DistillConfig,
    q_teacher: torch.Tensor,
    q_student: torch.Tensor,
    mask: torch.Tensor | None = None,
    student_features: torch.Tensor | None = None,
    teacher_features: torch.Tensor | None = None,
    regressor: nn.Module | None = None,
) -> torch.Tensor:
    """The configured loss of one game's minibatch (``q_teacher`` already in the student head's columns)."""
    terms = L.LossTerms(q_teacher, q_student, mask, cfg.tau, cfg.beta, student_features, teacher_features, regressor)
    try:
        return L.LOSSES[cfg.loss].fn(terms)
    except ValueError as e:
        raise DistillError(f"loss {cfg.loss}: {e}") from None


def to_head_columns(layout: StudentLayout, game: str, q_teacher: torch.Tensor) -> torch.Tensor:
    """Teacher Q-values in the student head's columns: unchanged, or scattered into the 18 union columns
    (illegal columns zero; the union mask removes them from the loss)."""
    if layout.actions != "union":
        return q_teacher
    out = q_teacher.new_zeros(len(q_teacher), len(FULL_ACTION_MEANINGS))
    out[:, layout.columns(game, q_teacher.device)] = q_teacher
    return out


def compute_losses(
    student: DuelingQNetwork,
    layout: StudentLayout,
    cfg: DistillConfig,
    inputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]],
    regressors: nn.ModuleDict | None = None,
) -> dict[str, torch.Tensor]:
    """Loss per game for one step. ``inputs[g]`` are states (uint8 or [0,1] floats), ``targets[g]`` the
    teacher's ``(q in the game's own order, features or None)``. All games go through the shared torso in one
    forward pass, then each through its head."""
    games = list(inputs)
    feats = student.torso(torch.cat([inputs[g] for g in games]) if len(games) > 1 else inputs[games[0]])
    out: dict[str, torch.Tensor] = {}
    for g, f in zip(games, feats.split([len(inputs[g]) for g in games]), strict=True):
        q_s = student.heads[layout.head_for_game[g]](f)
        q_t, f_t = targets[g]
        reg = regressors[g] if regressors is not None and g in regressors else None
        out[g] = game_loss(cfg, to_head_columns(layout, g, q_t), q_s, layout.mask(g, q_s.device), f, f_t, reg)
    return out


# ----------------------------------------------------------------------------------------------- games


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


# ----------------------------------------------------------------------------------------------- run dir


def _run_record(games: list[_Game], cfg: DistillConfig) -> dict[str, Any]:
    return {
        "games": [g.game for g in games],
        "teachers": {g.game: g.teacher_meta.get("sha256") for g in games},
        "datasets": {g.game: g.dataset_uri for g in games},
        "config": cfg.model_dump(mode="json"),
        "package_version": __version__,
    }


def _sampler_seed(seed: int, game_index: int, step: int) -> int:
    """Seed of a game's minibatch stream for a segment of training that starts at ``step``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, game_index, step]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------- curves


def _curve_columns(games: list[str]) -> list[str]:
    cols = ["step", "samples_per_second"]
    for g in games:
        cols += [f"loss/{g}", f"agreement/{g}", f"train_loss/{g}"]
    return cols


def _write_curves(
    out: Path, games: list[str], rows: list[dict[str, float]], chance: dict[str, float], plot: bool = True
) -> tuple[Path, Path]:
    cols = _curve_columns(games)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / CURVES_CSV, buf.getvalue().encode())
    if plot:
        _plot_curves(out / CURVES_PNG, games, rows, chance)
    return out / CURVES_CSV, out / CURVES_PNG


def _plot_curves(path: Path, games: list[str], rows: list[dict[str, float]], chance: dict[str, float]) -> None:
    """Held-out loss and action agreement per game against optimizer steps (two panels)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    for g in games:
        line = ax_l.plot(steps, [r[f"loss/{g}"] for r in rows], label=f"{g} held-out")[0]
        tl = [(r["step"], r[f"train_loss/{g}"]) for r in rows if np.isfinite(r.get(f"train_loss/{g}", np.nan))]
        if tl:
            ax_l.plot(*zip(*tl, strict=True), ls=":", marker=".", color=line.get_color(), label=f"{g} train")
        a = ax_a.plot(steps, [r[f"agreement/{g}"] for r in rows], label=g)[0]
        ax_a.axhline(chance[g], color=a.get_color(), ls="--", lw=0.8)
    ax_l.set_xlabel("optimizer steps")
    ax_l.set_ylabel("distillation loss")
    ax_l.set_title("loss per game")
    ax_a.set_xlabel("optimizer steps")
    ax_a.set_ylabel("agreement with teacher (argmax)")
    ax_a.set_title("action agreement (dashed: chance)")
    ax_a.set_ylim(0, 1.02)
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------- data


def _inputs(g: _Game, batch: Batch | np.ndarray, device: torch.device) -> torch.Tensor:
    """Student/teacher input for a batch: uint8 states on the device, or decoded latents in [0, 1]."""
    if g.decoder is not None:
        latents = batch.latents if isinstance(batch, Batch) else batch
        x = g.decoder.decode(latents)
        # A decoder running under inference_mode returns inference tensors, which autograd cannot save.
        return x.clone() if x.is_inference() else x
    states = batch.states if isinstance(batch, Batch) else batch
    return torch.from_numpy(states).to(device, non_blocking=True)


def _targets(
    g: _Game, q_stored: np.ndarray | None, x: torch.Tensor, need_features: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher Q-values (stored in the dataset when present, else computed) and, for Actor-Mimic, features."""
    n = len(g.teacher_meta["action_meanings"][0])
    q = f = None
    if q_stored is not None:
        if q_stored.shape[1] != n:
            raise DistillError(
                f"{g.dataset_uri}: stored Q-values have {q_stored.shape[1]} columns, the game {n} actions"
            )
        q = torch.from_numpy(q_stored).to(device, non_blocking=True)
    if q is None or need_features:
        assert g.teacher is not None
        with torch.inference_mode():
            q_t, f_t = g.teacher.forward_with_features(x)
        # Clone outside inference mode: the loss saves these tensors for the student's backward pass.
        q = q_t.clone() if q is None else q
        f = f_t.clone() if need_features else None
    return q, f


def _attach_decoders(games: list[_Game], device: torch.device) -> None:
    """Each latent dataset's own autoencoder decoder (checked against the manifest's hashes) on ``device``."""
    from .encode import LatentDecoder

    for g in games:
        try:
            g.decoder = LatentDecoder.from_dataset(g.dataset, device)
        except DatasetError as e:
            raise DistillError(f"latent dataset for {g.game}: {e}") from None
        if g.decoder.frame_stack != g.dataset.manifest.frame_stack:
            raise DistillError(
                f"{g.game}: the autoencoder decodes {g.decoder.frame_stack}-frame states, the dataset "
                f"stacks {g.dataset.manifest.frame_stack}"
            )


# ----------------------------------------------------------------------------------------------- validation


def _validate(
    student: DuelingQNetwork,
    layout: StudentLayout,
    cfg: DistillConfig,
    games: list[_Game],
    regressors: nn.ModuleDict,
    device: torch.device,
) -> dict[str, tuple[float, float]]:
    """``{game: (held-out loss, agreement)}`` over each game's validation states."""
    out: dict[str, tuple[float, float]] = {}
    with torch.inference_mode():
        for g in games:
            loss_sum = agree_sum = 0.0
            count = 0
            for inp, (q_t, f_t) in zip(g.val_inputs, g.val_targets, strict=True):
                x = _inputs(g, inp, device)
                q_s, f_s = student.forward_with_features(x, layout.head_for_game[g.game])
                mask = layout.mask(g.game, device)
                q_th = to_head_columns(layout, g.game, q_t)
                reg = regressors[g.game] if len(regressors) else None  # Actor-Mimic: one per game
                loss = game_loss(cfg, q_th, q_s, mask, f_s, f_t, reg)
                agree = L.action_agreement(q_th, q_s, mask)
                b = len(q_t)
                loss_sum += float(loss) * b
                agree_sum += float(agree) * b
                count += b
            out[g.game] = (loss_sum / count, agree_sum / count)
    return out


def validation_batches(
    ds: ExperienceDataset, fraction: float, holdout_fraction: float, limit: int = VALIDATION_STATES
) -> list[Batch]:
    """Up to ``limit`` held-out states (the sampler's step-hash split, never trained on) from the most recent
    ``fraction`` of ``ds``, spread evenly over its shards so they span the whole range, not its first
    episodes. Reads at most :data:`VALIDATION_SHARDS` shards, once."""
    m = ds.manifest
    cutoff = round(m.num_steps * (1.0 - fraction))  # as StreamingSampler's fraction
    shards = [i for i, s in enumerate(m.shards) if s.stop > cutoff and s.valid_states > 0]
    if len(shards) > VALIDATION_SHARDS:  # bounds the startup cost on long datasets
        shards = [shards[j] for j in np.linspace(0, len(shards) - 1, VALIDATION_SHARDS).round().astype(int)]
    per_shard = math.ceil(limit / max(1, len(shards)))
    out: list[Batch] = []
    for i in shards:
        sh = ds.shard(i)
        rows = sh.valid_index
        steps = sh.info.start - sh.info.context + rows
        rows = rows[(steps >= cutoff) & holdout_mask(steps, holdout_fraction)]
        if len(rows) > per_shard:
            rows = rows[np.linspace(0, len(rows) - 1, per_shard).round().astype(np.int64)]
        out += [batch_from_rows(ds, i, rows[s : s + VALIDATION_BATCH]) for s in range(0, len(rows), VALIDATION_BATCH)]
    return out


def _load_validation(g: _Game, cfg: DistillConfig, device: torch.device) -> None:
    """Held-out states of one game, with the teacher's targets computed once."""
    fraction = cfg.subset_fraction if cfg.source == "subset" else 1.0
    batches = validation_batches(g.dataset, fraction, cfg.holdout_fraction)
    if not batches:
        raise DistillError(
            f"dataset {g.dataset_uri} has no held-out {g.game} states at "
            f"holdout_fraction={cfg.holdout_fraction}; "
            f"raise --holdout-fraction or record more steps"
        )
    for b in batches:
        inp = b.latents if g.decoder is not None else b.states
        assert inp is not None  # a latent dataset's batches carry codes, a frame dataset's states
        x = _inputs(g, inp, device)
        g.val_inputs.append(inp)
        g.val_targets.append(_targets(g, b.q, x, L.LOSSES[cfg.loss].needs_features, device))


# ----------------------------------------------------------------------------------------------- main


def distill(
    teachers: Mapping[str, str | Path],
    datasets: Mapping[str, str | Path],
    cfg: DistillConfig,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    stop_after: int | None = None,
) -> DistillResult:
    """Distill every game's teacher into one student; see the module docstring.

    Args:
        teachers: ``{game: teacher run or checkpoint directory}``.
        datasets: ``{game: dataset URI}`` (frame datasets for ``full``/``subset``, latent ones for
            ``latent``).
        cfg: the resolved distillation config.
        out_dir: run directory; an interrupted run there is resumed, a finished one reused.
        on_metrics: called with ``(metrics, step)`` at each validation: ``agreement/GAME``, ``loss/GAME``,
            ``train_loss/GAME``, ``samples_per_second``.
        stop_after: stop (as if killed, raising ``KeyboardInterrupt``) after this many optimizer steps of
            this call; for tests of resume.
    """
    games, layout, init_game = _prepare_games(teachers, datasets, cfg)
    record = _run_record(games, cfg)
    rd = RunDir(out_dir, "distillation", DistillError)
    rd.open({"games": record["games"], "teachers": record["teachers"]}, record["config"], cfg.resume_free,
            describe={"games": "of {old}, not {new}", "teachers": "distilled from other teacher checkpoints"})
    if rd.finished and (rd.out / "checkpoint" / "metadata.json").is_file():
        log.info("distillation in %s is already finished; reusing it", rd.out)
        return _result_from_disk(rd.out)
    device = pick_device(cfg.device)
    if cfg.source == "latent":
        _attach_decoders(games, device)  # a bad latent dataset fails here, before the run directory exists
    if rd.previous is None:
        rd.begin(record)
    trainer = _Trainer(games, layout, init_game, cfg, rd, device, on_metrics)
    trainer.train(stop_after)
    return _finish(rd, games, layout, cfg, trainer.student, trainer.regressors, trainer.curve, trainer.chance,
                   trainer.samples, trainer.train_seconds)


class _Trainer:
    """One distillation run: the student, its optimizer, and the state a resume point holds.

    :meth:`train` reads top to bottom like CleanRL's loops: draw the step's batch (one step ahead on a worker
    thread), compute the per-game losses, update, and every ``eval_every`` steps validate, every
    ``checkpoint_every`` steps write a resume point.
    """

    def __init__(
        self,
        games: list[_Game],
        layout: StudentLayout,
        init_game: str | None,
        cfg: DistillConfig,
        rd: RunDir,
        device: torch.device,
        on_metrics: MetricsCallback | None,
    ) -> None:
        self.games, self.layout, self.cfg, self.rd, self.device = games, layout, cfg, rd, device
        self.on_metrics = on_metrics
        self.names = [g.game for g in games]
        self.chance = {g: 1.0 / layout.num_actions(g) for g in self.names}
        self.need_features = L.LOSSES[cfg.loss].needs_features
        for g in games:
            # The teacher network is needed for targets the dataset lacks, for features, or to copy its weights.
            if self.need_features or not g.dataset.has_q or g.game == init_game:
                net, _ = load_checkpoint(g.teacher_dir, device)
                assert isinstance(net, QNetwork)  # _prepare_games checked the kind
                g.teacher = net.requires_grad_(False)
            _load_validation(g, cfg, device)
        frame_stack = games[0].dataset.manifest.frame_stack
        teacher_nets = {g.game: g.teacher for g in games if g.teacher is not None}
        self.student = build_student(layout, cfg, teacher_nets, frame_stack).to(device)
        self.regressors = nn.ModuleDict()
        if self.need_features:
            for g in games:
                assert g.teacher is not None
                self.regressors[g.game] = nn.Linear(self.student.feature_dim, g.teacher.feature_dim)
            self.regressors.to(device)
        params = [*self.student.parameters(), *self.regressors.parameters()]
        self.opt = make_adam(params, device, lr=cfg.learning_rate)
        self.step, self.train_seconds, self.samples = 0, 0.0, 0
        self.curve: list[dict[str, float]] = []
        self._reset_train_means()
        if rd.previous is not None:
            self._restore()
        self._make_samplers()

    # ------------------------------------------------------------------------------------------ the loop

    def train(self, stop_after: int | None) -> None:
        """Train from the current step to ``cfg.steps`` (or stop as if killed after ``stop_after`` steps)."""
        cfg = self.cfg
        if self.step == 0 and not self.curve:
            self._validate(0)  # the untrained student's agreement: where the curve starts
        start_step = self.step
        bar = progress(cfg.steps, "distill", "step", initial=self.step)
        try:
            # One worker, one batch in flight: the samplers are drawn in step order, so runs stay reproducible.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-batches") as worker:
                pending = worker.submit(self._batch, self.step) if self.step < cfg.steps else None
                while pending is not None:
                    t0 = time.perf_counter()
                    inputs, targets = pending.result()
                    pending = worker.submit(self._batch, self.step + 1) if self.step + 1 < cfg.steps else None
                    self._update(inputs, targets)
                    self.train_seconds += time.perf_counter() - t0
                    self.samples += sum(len(x) for x in inputs.values())
                    self.step += 1
                    bar.update(1)
                    if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                        bar.set_postfix(self._validate(self.step))
                    if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self._snapshot()
                    if stop_after is not None and self.step - start_step >= stop_after and self.step < cfg.steps:
                        raise KeyboardInterrupt(f"stop_after={stop_after} reached at step {self.step}")
        finally:
            bar.close()
        if not self.curve or self.curve[-1]["step"] != cfg.steps:
            self._validate(cfg.steps)  # resumed exactly at the end, or steps == 0 after a resume

    def _batch(self, at: int) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
        """Step ``at``'s inputs and teacher targets: sampling, decoding, stored or computed targets. None of
        it depends on the student, so it runs one step ahead on a worker thread (like a one-worker
        DataLoader): decoding latents or the teacher's forward pass overlaps the student's update."""
        games = self.games if self.cfg.schedule == "sum" else [self.games[at % len(self.games)]]
        inputs, targets = {}, {}
        for g in games:
            assert g.sampler is not None
            batch = next(g.sampler)
            x = _inputs(g, batch, self.device)
            inputs[g.game] = x
            targets[g.game] = _targets(g, batch.q, x, self.need_features, self.device)
        return inputs, targets

    def _update(
        self, inputs: dict[str, torch.Tensor], targets: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """One optimizer step on the sum of the games' losses."""
        cfg = self.cfg
        per_game = compute_losses(self.student, self.layout, cfg, inputs, targets, self.regressors)
        total = torch.stack(list(per_game.values())).sum()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        set_lr(self.opt, scheduled_lr(cfg.learning_rate, cfg.lr_schedule, self.step, cfg.steps))
        self.opt.step()
        for g, v in per_game.items():
            self.train_sum[g] += float(v.detach())
            self.train_count[g] += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------------------------ measuring

    def _reset_train_means(self) -> None:
        self.train_sum = dict.fromkeys(self.names, 0.0)
        self.train_count = dict.fromkeys(self.names, 0)

    def _validate(self, at: int) -> dict[str, str]:
        """Held-out loss and agreement per game at step ``at``: a curve row, the metrics callback, and the
        progress bar's postfix (returned). Resets the running training-loss means."""
        val = _validate(self.student, self.layout, self.cfg, self.games, self.regressors, self.device)
        sps = self.samples / self.train_seconds if self.train_seconds > 0 else float("nan")
        row: dict[str, float] = {"step": at, "samples_per_second": sps}
        for g, (loss, agree) in val.items():
            row[f"loss/{g}"], row[f"agreement/{g}"] = loss, agree
            n = self.train_count[g]
            row[f"train_loss/{g}"] = self.train_sum[g] / n if n else float("nan")
        self.curve.append(row)
        _write_curves(self.rd.out, self.names, self.curve, self.chance, plot=False)
        if self.on_metrics:  # NaN (no training yet at step 0) is left out rather than logged
            self.on_metrics({k: float(v) for k, v in row.items() if k != "step" and math.isfinite(v)}, at)
        self._reset_train_means()
        post = {"sps": f"{self.samples / max(self.train_seconds, 1e-9):.0f}"}
        post.update({f"agree_{g}": f"{a:.2f}" for g, (_, a) in val.items()})
        return post

    # ------------------------------------------------------------------------------------------ resuming

    def _make_samplers(self) -> None:
        """Each game's minibatch stream, seeded by the step it starts at (a resumed run draws what an
        unbroken run would)."""
        cfg = self.cfg
        fraction = cfg.subset_fraction if cfg.source == "subset" else 1.0
        for i, g in enumerate(self.games):
            g.sampler = StreamingSampler(
                g.dataset,
                cfg.batch_size,
                fraction=fraction,
                split="train",
                holdout_fraction=cfg.holdout_fraction,
                pool_shards=cfg.cache_shards,
                seed=_sampler_seed(cfg.seed, i, self.step),
            )

    def _snapshot(self) -> None:
        at = self.step
        state = {
            "student": self.student.state_dict(),
            "regressors": self.regressors.state_dict(),
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": torch.tensor(at),
        }
        extra = {
            "curve": self.curve,
            "train_seconds": self.train_seconds,
            "samples": self.samples,
            "sampler_seeds": {g: _sampler_seed(self.cfg.seed, i, at) for i, g in enumerate(self.names)},
        }

        def write(d: Path) -> None:
            atomic_torch_save(state, d / "state.pt")
            atomic_write_json(d / "extra.json", extra)

        self.rd.save_resume(at, write)

    def _restore(self) -> None:
        point = self.rd.latest_resume(required=("state.pt", "extra.json"))
        if point is None:
            return
        try:
            state = load_state_dict(point / "state.pt")
            extra = json.loads((point / "extra.json").read_text())
        except (CheckpointError, json.JSONDecodeError) as e:
            raise DistillError(f"cannot resume from {point}: {e}. Delete {self.rd.resume_root} to start over") from e
        self.student.load_state_dict(state["student"])
        self.regressors.load_state_dict(state["regressors"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.curve = extra["curve"]
        self.train_seconds, self.samples = float(extra["train_seconds"]), int(extra["samples"])
        log.info("resuming distillation from step %d (%s)", self.step, point)


def _finish(
    rd: RunDir,
    games: list[_Game],
    layout: StudentLayout,
    cfg: DistillConfig,
    student: DuelingQNetwork,
    regressors: nn.ModuleDict,
    curve: list[dict[str, float]],
    chance: dict[str, float],
    samples: int,
    train_seconds: float,
) -> DistillResult:
    out = rd.out
    names = [g.game for g in games]
    last = curve[-1]
    agreement = {g: float(last[f"agreement/{g}"]) for g in names}
    final_loss = {g: float(last[f"loss/{g}"]) for g in names}
    sps = samples / train_seconds if train_seconds > 0 else 0.0
    meta: dict[str, Any] = {
        "kind": "student",
        "games": names,
        "actions": layout.actions,
        "head_for_game": layout.head_for_game,
        "action_meanings": layout.action_meanings,
        "teachers": {g.game: g.teacher_meta.get("sha256") for g in games},
        "teacher_paths": {g.game: str(g.teacher_dir) for g in games},
        "datasets": {g.game: g.dataset_uri for g in games},
        "source": cfg.source,
        "subset_fraction": cfg.subset_fraction if cfg.source == "subset" else 1.0,
        "width": cfg.width,
        "loss": cfg.loss,
        "tau": cfg.tau,
        "observation": games[0].teacher_meta.get("observation", {}),
        "config": cfg.model_dump(mode="json"),
        "steps": cfg.steps,
        "metrics": {"agreement": agreement, "loss": final_loss, "samples_per_second": sps},
        "parameters": count_parameters(student),
    }
    if layout.actions == "union":
        meta["union_action_map"] = layout.union_action_map
    save_checkpoint(out / "checkpoint", student, meta)
    if len(regressors):
        atomic_torch_save({k: v.detach().cpu() for k, v in regressors.state_dict().items()}, out / REGRESSORS_FILE)
    csv_path, png = _write_curves(out, names, curve, chance)
    rd.finish(_run_record(games, cfg))
    log.info(
        "distilled %s into %s: agreement %s, %.0f samples/s",
        ", ".join(names),
        out / "checkpoint",
        {g: round(a, 3) for g, a in agreement.items()},
        sps,
    )
    return DistillResult(
        out,
        out / "checkpoint",
        csv_path,
        png,
        agreement,
        final_loss,
        sps,
        count_parameters(student),
        cfg.steps,
    )


def _result_from_disk(out: Path) -> DistillResult:
    meta = read_metadata(out / "checkpoint")
    m = meta.get("metrics", {})
    return DistillResult(
        out_dir=out,
        checkpoint_dir=out / "checkpoint",
        curves_csv=out / CURVES_CSV,
        curves_png=out / CURVES_PNG,
        agreement={g: float(v) for g, v in m.get("agreement", {}).items()},
        final_loss={g: float(v) for g, v in m.get("loss", {}).items()},
        samples_per_second=float(m.get("samples_per_second", 0.0)),
        parameters=int(meta.get("parameters", 0)),
        steps=int(meta.get("steps", 0)),
    )
