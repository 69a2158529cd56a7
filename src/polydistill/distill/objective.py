"""The glue between the student and :mod:`polydistill.losses`: one game's loss, and every game's loss of
one step through the shared torso."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import losses as L
from ..config import DistillConfig
from ..envs import FULL_ACTION_MEANINGS
from ..networks import DuelingQNetwork
from .errors import DistillError
from .layout import StudentLayout


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
