"""Distillation losses: the student's Q-values (or policy) against the teacher's, one minibatch at a time.

All losses are pure functions of tensors and return a scalar: the mean over the batch of a per-state loss.
Notation: ``q_T`` teacher Q-values (B, A), ``q_S`` student outputs (B, A), ``tau`` the teacher temperature.

Masking (``union`` action handling, Actor-Mimic): the student has one head over the 18 ALE actions, but game
``g`` only has some of them (its ``union_action_map``). ``mask`` (A,) or (B, A), True for the game's legal
actions, removes the others from both softmaxes, from the teacher's argmax and from the squared error: a
masked loss equals the unmasked loss on the legal columns alone. The teacher's values in masked columns
are ignored (they may hold anything, e.g. zeros where the teacher has no such action).

References: Rusu et al. 2015, "Policy Distillation" (NLL, MSE, KL with a temperature, student logits at
temperature 1); Parisotto et al. 2015, "Actor-Mimic" (cross-entropy to the Boltzmann policy plus
``beta`` times feature regression through a per-game regressor ``f_i``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _check(
    q_teacher: torch.Tensor, q_student: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor | None:
    if q_teacher.shape != q_student.shape or q_teacher.dim() != 2:
        raise ValueError(
            f"teacher and student Q-values must both be (batch, actions); got {tuple(q_teacher.shape)} and "
            f"{tuple(q_student.shape)}"
        )
    if mask is None:
        return None
    mask = mask.to(device=q_student.device, dtype=torch.bool)
    if mask.shape not in (q_student.shape[1:], q_student.shape):
        raise ValueError(f"mask must be (actions,) or (batch, actions); got {tuple(mask.shape)}")
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("mask leaves a state with no legal action")
    return mask.expand_as(q_student)


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax over the legal actions; illegal entries get a huge negative (finite) logit, so their
    probability is exactly 0 and no inf/NaN reaches the gradient."""
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return F.log_softmax(logits, dim=1)


def _legal_sum(terms: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sum per state over legal actions (B,)."""
    if mask is not None:
        terms = torch.where(mask, terms, torch.zeros_like(terms))
    return terms.sum(dim=1)


def teacher_policy(q_teacher: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's Boltzmann policy ``softmax(q_T / tau)`` over legal actions (B, A)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return _masked_log_softmax(q_teacher.float() / tau, mask).exp()


def kl_loss(
    q_teacher: torch.Tensor, q_student: torch.Tensor, tau: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Policy Distillation's KL loss (Rusu et al. 2015, eq. 3), mean over the batch.

    ``KL(p_T || p_S) = sum_a p_T(a) * (log p_T(a) - log p_S(a))`` with ``p_T = softmax(q_T / tau)`` and
    ``p_S = softmax(q_S)`` (student logits at temperature 1). Sums run over legal actions only. In nats.
    """
    mask = _check(q_teacher, q_student, mask)
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    log_pt = _masked_log_softmax(q_teacher.float() / tau, mask)
    log_ps = _masked_log_softmax(q_student.float(), mask)
    return _legal_sum(log_pt.exp() * (log_pt - log_ps), mask).mean()


def nll_loss(
    q_teacher: torch.Tensor, q_student: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Policy Distillation's NLL loss, mean over the batch: ``-log softmax(q_S)[argmax_a q_T(a)]``.

    The teacher's best action and the student's softmax are taken over legal actions only. In nats.
    """
    mask = _check(q_teacher, q_student, mask)
    qt = q_teacher.float()
    if mask is not None:
        qt = qt.masked_fill(~mask, float("-inf"))
    best = qt.argmax(dim=1, keepdim=True)
    return -_masked_log_softmax(q_student.float(), mask).gather(1, best).squeeze(1).mean()


def mse_loss(
    q_teacher: torch.Tensor, q_student: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Policy Distillation's MSE loss: mean over the batch of ``sum_a (q_T(a) - q_S(a))^2``, legal actions.

    In squared Q-value units (the teacher's clipped-reward return scale).
    """
    mask = _check(q_teacher, q_student, mask)
    return _legal_sum((q_teacher.float() - q_student.float()) ** 2, mask).mean()


def policy_cross_entropy(
    q_teacher: torch.Tensor, q_student: torch.Tensor, tau: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Actor-Mimic policy regression (Parisotto et al. 2015, eq. 4), mean over the batch:
    ``H(pi_T, pi_S) = -sum_a softmax(q_T / tau)(a) * log softmax(q_S)(a)`` over legal actions. In nats.

    Equals :func:`kl_loss` plus the teacher policy's entropy (constant in the student's parameters).
    """
    mask = _check(q_teacher, q_student, mask)
    pt = teacher_policy(q_teacher, tau, mask)
    return -_legal_sum(pt * _masked_log_softmax(q_student.float(), mask), mask).mean()


def feature_regression_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    regressor: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Actor-Mimic feature regression (eq. 5), mean over the batch of ``||f(h_S) - h_T||_2^2``.

    ``h_S`` (B, D_S) are the student's hidden features, ``h_T`` (B, D_T) the teacher's, ``f`` a per-game
    regressor mapping D_S -> D_T trained jointly with the student.
    """
    pred = regressor(student_features)
    if pred.shape != teacher_features.shape:
        raise ValueError(
            f"regressor output {tuple(pred.shape)} does not match teacher features "
            f"{tuple(teacher_features.shape)}"
        )
    return ((pred.float() - teacher_features.float()) ** 2).sum(dim=1).mean()


def actor_mimic_loss(
    q_teacher: torch.Tensor,
    q_student: torch.Tensor,
    tau: float,
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    regressor: Callable[[torch.Tensor], torch.Tensor],
    beta: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Actor-Mimic objective (eq. 6), mean over the batch:
    ``H(softmax(q_T / tau), softmax(q_S)) + beta * ||f(h_S) - h_T||_2^2``.

    With ``beta == 0`` the feature term is skipped (no regressor call).
    """
    loss = policy_cross_entropy(q_teacher, q_student, tau, mask)
    if beta:
        loss = loss + beta * feature_regression_loss(student_features, teacher_features, regressor)
    return loss


def action_agreement(
    q_teacher: torch.Tensor, q_student: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of states (0..1) where the student's greedy action equals the teacher's (legal actions)."""
    mask = _check(q_teacher, q_student, mask)
    qt, qs = q_teacher.float(), q_student.float()
    if mask is not None:
        qt = qt.masked_fill(~mask, float("-inf"))
        qs = qs.masked_fill(~mask, float("-inf"))
    return (qt.argmax(dim=1) == qs.argmax(dim=1)).float().mean()


# ----------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossTerms:
    """Everything a distillation loss may read for one game's minibatch.

    ``q_teacher`` (B, A) is already in the student head's columns; ``mask`` the legal actions (union layout)
    or None; ``tau`` the teacher temperature and ``beta`` the feature-regression weight (from the config);
    the features (B, D_S) / (B, D_T) and the per-game ``regressor`` are given only to a loss that
    ``needs_features``.
    """

    q_teacher: torch.Tensor
    q_student: torch.Tensor
    mask: torch.Tensor | None
    tau: float
    beta: float
    student_features: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    regressor: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class LossSpec:
    """One distillation loss: its config name, implementation (scalar loss from :class:`LossTerms`) and needs.

    ``needs_features``: the loss regresses the teacher's hidden features, so the teacher network is loaded, its
    features computed for every batch, and a per-game regressor trained with the student.
    """

    name: str
    fn: Callable[[LossTerms], torch.Tensor]
    description: str
    needs_features: bool = False


def _actor_mimic(t: LossTerms) -> torch.Tensor:
    if t.student_features is None or t.teacher_features is None or t.regressor is None:
        raise ValueError("actor_mimic needs student features, teacher features and a regressor")
    return actor_mimic_loss(
        t.q_teacher, t.q_student, t.tau, t.student_features, t.teacher_features, t.regressor, t.beta, t.mask
    )


#: The distillation losses by config name (``distill.loss``); the config's allowed values come from here.
LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("kl", lambda t: kl_loss(t.q_teacher, t.q_student, t.tau, t.mask),
                 "KL(softmax(q_T / tau) || softmax(q_S)) (Rusu et al. 2015)"),
        LossSpec("nll", lambda t: nll_loss(t.q_teacher, t.q_student, t.mask),
                 "-log softmax(q_S)[argmax q_T] (Rusu et al. 2015)"),
        LossSpec("mse", lambda t: mse_loss(t.q_teacher, t.q_student, t.mask),
                 "squared error on the Q-values (Rusu et al. 2015)"),
        LossSpec("actor_mimic", _actor_mimic,
                 "policy cross-entropy + beta x feature regression (Parisotto et al. 2015)", needs_features=True),
    )
}
