"""Minibatches into tensors: the student's inputs (states, or latents decoded on the device), the
teacher's targets (stored or computed), and the held-out states scored at each validation."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import losses as L
from ..buffer import DatasetError, ExperienceDataset, holdout_mask
from ..config import DistillConfig
from ..networks import DuelingQNetwork
from ..sampling import Batch, batch_from_rows
from .errors import DistillError
from .games import _Game
from .layout import StudentLayout
from .objective import game_loss, to_head_columns

VALIDATION_STATES = 512  # held-out states per game scored at each validation pass
VALIDATION_BATCH = 256
VALIDATION_SHARDS = 16  # shards (evenly spaced) the held-out states are drawn from


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
    from ..encode import LatentDecoder

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
