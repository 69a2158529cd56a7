"""Distillation losses against values worked out by hand on tiny examples (nats; batch means)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polydistill import losses as L
from polydistill.envs import FULL_ACTION_MEANINGS

T = torch.tensor


def close(x: torch.Tensor, expected: float, tol: float = 1e-5) -> None:
    assert float(x.detach()) == pytest.approx(expected, rel=tol, abs=tol)


# --------------------------------------------------------------------------------------------- KL


def test_kl_against_hand_values():
    # p_T = softmax([1,2,3]) = [0.0900306, 0.2447285, 0.6652410]; p_S = uniform (1/3 each):
    # KL = sum p_T ln(3 p_T) = 0.0900306 ln 0.2700917 + 0.2447285 ln 0.7341854 + 0.6652410 ln 1.9957229
    close(L.kl_loss(T([[1.0, 2.0, 3.0]]), T([[0.0, 0.0, 0.0]]), tau=1.0), 0.2662167)
    # identical policies: zero
    close(L.kl_loss(T([[1.0, 2.0, 3.0]]), T([[1.0, 2.0, 3.0]]), tau=1.0), 0.0)


def test_kl_temperature_divides_teacher_only():
    # tau = 0.5: p_T = softmax([2,4,6]) = [0.0158762, 0.1173104, 0.8668133]; the student stays at
    # temperature 1, p_S = softmax([1,2,3]).
    # ln p_T - ln p_S = [1,2,3] - (lse([2,4,6]) - lse([1,2,3])) = [1,2,3] - 2.7353296,
    # so KL = (0.0158762 + 2*0.1173104 + 3*0.8668133) - 2.7353296 = 0.1156114.
    close(L.kl_loss(T([[1.0, 2.0, 3.0]]), T([[1.0, 2.0, 3.0]]), tau=0.5), 0.1156114)
    # Scaling the student's logits is not undone: the loss is not symmetric in tau.
    assert float(L.kl_loss(T([[1.0, 2.0, 3.0]]), T([[2.0, 4.0, 6.0]]), tau=0.5)) == pytest.approx(
        0.0, abs=1e-6
    )


def test_kl_batch_mean_and_low_temperature():
    qt = T([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    qs = T([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    close(L.kl_loss(qt, qs, tau=1.0), (0.2662167 + 0.0) / 2)
    # tau -> 0 makes the teacher one-hot: KL -> -ln p_S(best) = NLL (PD's low-temperature limit)
    close(L.kl_loss(qt, qs, tau=1e-3), float(L.nll_loss(qt, qs)), tol=1e-4)


# --------------------------------------------------------------------------------------------- NLL, MSE


def test_nll_against_hand_values():
    # teacher's best action is 1; p_S = [1,2,3]/6 so -ln p_S(1) = ln 3
    qt, qs = T([[1.0, 3.0, 2.0]]), T([[0.0, math.log(2), math.log(3)]])
    close(L.nll_loss(qt, qs), math.log(3))
    # action 1 masked out: the best legal action is 2, p_S over {0, 2} = [1, 3]/4, -ln(3/4) = 0.2876821
    close(L.nll_loss(qt, qs, mask=T([True, False, True])), 0.2876821)


def test_mse_against_hand_values():
    qt = T([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    qs = T([[0.0, 2.0, 5.0], [1.0, 1.0, 1.0]])
    close(L.mse_loss(qt, qs), (1 + 0 + 4 + 3) / 2)  # per-state sums 5 and 3
    close(L.mse_loss(qt, qs, mask=T([True, True, False])), (1 + 2) / 2)


# --------------------------------------------------------------------------------------------- Actor-Mimic


def _regressor() -> nn.Linear:
    # f(h) = [h0, h1, h0 + h1 - 1]
    f = nn.Linear(2, 3)
    with torch.no_grad():
        f.weight.copy_(T([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        f.bias.copy_(T([0.0, 0.0, -1.0]))
    return f


def test_actor_mimic_against_hand_values():
    qt = T([[0.0, math.log(3)]])  # Boltzmann policy at tau=1: [1/4, 3/4]
    qs = T([[0.0, math.log(3)]])  # student policy [1/4, 3/4]
    hs, ht = T([[1.0, 2.0]]), T([[1.0, 0.0, 4.0]])  # f(h_S) = [1, 2, 2]; ||f(h_S) - h_T||^2 = 0 + 4 + 4 = 8
    f = _regressor()
    ce_tau1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623351 (the entropy: policies equal)
    close(L.actor_mimic_loss(qt, qs, 1.0, hs, ht, f, beta=0.0), ce_tau1)
    close(L.actor_mimic_loss(qt, qs, 1.0, hs, ht, f, beta=0.1), ce_tau1 + 0.8)
    # tau = 0.5: pi_T = softmax([0, 2 ln 3]) = [1/10, 9/10]; H = -(0.1 ln 0.25 + 0.9 ln 0.75) = 0.3975433
    close(L.actor_mimic_loss(qt, qs, 0.5, hs, ht, f, beta=0.1), 0.3975433 + 0.8)
    close(L.feature_regression_loss(hs, ht, f), 8.0)


def test_actor_mimic_gradients_reach_regressor_and_student_features():
    f = _regressor()
    hs = T([[1.0, 2.0]], requires_grad=True)
    loss = L.actor_mimic_loss(T([[0.0, 1.0]]), T([[0.0, 0.0]]), 1.0, hs, T([[1.0, 0.0, 4.0]]), f, beta=1.0)
    loss.backward()
    assert hs.grad is not None and hs.grad.abs().sum() > 0
    assert f.weight.grad is not None and f.weight.grad.abs().sum() > 0


def test_policy_cross_entropy_is_kl_plus_teacher_entropy():
    g = torch.Generator().manual_seed(0)
    qt, qs = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    pt = L.teacher_policy(qt, 0.3)
    entropy = -(pt * pt.log()).sum(1).mean()
    close(L.policy_cross_entropy(qt, qs, 0.3), float(L.kl_loss(qt, qs, 0.3) + entropy))


# --------------------------------------------------------------------------------------------- union masking


BREAKOUT_IN_UNION = [FULL_ACTION_MEANINGS.index(a) for a in ("NOOP", "FIRE", "RIGHT", "LEFT")]  # [0, 1, 3, 4]


def _union_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    qt = torch.randn(3, 18, generator=g)
    qs = torch.randn(3, 18, generator=g)
    # Illegal columns hold absurd values: they must not matter at all.
    illegal = [i for i in range(18) if i not in BREAKOUT_IN_UNION]
    qt[:, illegal] = 1e4
    qs[:, illegal] = 1e4
    mask = torch.zeros(18, dtype=torch.bool)
    mask[BREAKOUT_IN_UNION] = True
    return qt, qs, mask


@pytest.mark.parametrize("name", ["kl", "nll", "mse", "ce"])
def test_union_mask_equals_loss_on_legal_columns(name):
    qt, qs, mask = _union_example()
    cols = BREAKOUT_IN_UNION
    fn = {
        "kl": lambda a, b, m=None: L.kl_loss(a, b, 0.1, m),
        "nll": lambda a, b, m=None: L.nll_loss(a, b, m),
        "mse": lambda a, b, m=None: L.mse_loss(a, b, m),
        "ce": lambda a, b, m=None: L.policy_cross_entropy(a, b, 0.1, m),
    }[name]
    qs = qs.clone().requires_grad_(True)
    masked = fn(qt, qs, mask)
    close(masked, float(fn(qt[:, cols], qs.detach()[:, cols])))
    assert torch.isfinite(masked)
    masked.backward()
    illegal = [i for i in range(18) if i not in cols]
    assert torch.all(qs.grad[:, illegal] == 0)  # invalid actions get exactly no gradient
    assert qs.grad[:, cols].abs().sum() > 0


def test_union_mask_hand_values_and_per_row_masks():
    # 4 union columns, game uses {0, 2}: p_T over legal = softmax([0, ln 3]) = [1/4, 3/4] at tau=1,
    # p_S over legal uniform -> KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308121
    qt = T([[0.0, 50.0, math.log(3), -50.0]])
    qs = T([[0.0, -9.0, 0.0, 9.0]])
    mask = T([True, False, True, False])
    close(L.kl_loss(qt, qs, 1.0, mask), 0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    # a (B, A) mask works like broadcasting a (A,) one
    close(L.kl_loss(qt, qs, 1.0, mask[None, :]), float(L.kl_loss(qt, qs, 1.0, mask)))
    # legal argmax: teacher 2 (ln 3 > 0), student 0 (tie between 0 and 2 goes to the first) -> disagree
    close(L.action_agreement(qt, qs, mask), 0.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no legal action"):
        L.kl_loss(T([[1.0, 2.0]]), T([[1.0, 2.0]]), 1.0, mask=T([False, False]))
    with pytest.raises(ValueError, match="batch, actions"):
        L.mse_loss(T([[1.0, 2.0]]), T([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="tau"):
        L.kl_loss(T([[1.0, 2.0]]), T([[1.0, 2.0]]), 0.0)


def test_action_agreement():
    qt = T([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    qs = T([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [0.0, 5.0, 0.0]])
    close(L.action_agreement(qt, qs), 0.5)
    # with action 1 masked, state 3's student choice becomes action 0 (legal max) -> agrees; state 1's teacher
    # choice becomes 0 or 2 (tie at 0 -> first index, 0) while the student picks 2 -> disagrees
    close(L.action_agreement(qt, qs, T([True, False, True])), 0.75)
