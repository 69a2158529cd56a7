"""The learner's arithmetic settings (speed.py and their use in teacher._learn): bf16 chosen only where the
hardware has it, the fp32 path bit-identical to plain calls, and the other formats and layouts computing the
same update up to rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polydistill import config as C
from polydistill.networks import DuelingQNetwork, make_adam
from polydistill.replay import FrameReplay
from polydistill.speed import (
    PrecisionError,
    autocast,
    autocast_dtype,
    bf16_native,
    describe,
    forward_fn,
    prepare_network,
)
from polydistill.teacher import TeacherRunError, _learn, _Learner, train_teacher

CPU = torch.device("cpu")


def test_auto_is_bf16_exactly_where_the_cpu_multiplies_it_natively() -> None:
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert bf16_native(CPU) is native
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native else None)
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert ("no native bf16" in describe(CPU, None, False, False)) is not native


def test_bf16_is_refused_on_a_device_without_autocast_and_bad_spellings_by_name() -> None:
    with pytest.raises(PrecisionError, match="--precision bf16 is not supported on mps"):
        autocast_dtype("bf16", torch.device("mps"))
    with pytest.raises(PrecisionError, match="'fp16'"):
        autocast_dtype("fp16", CPU)
    with pytest.raises(C.ConfigError, match="precision"):
        C.resolve("teacher", "smoke", overrides={"precision": "fp16"})


def test_the_fp32_context_is_a_no_op_and_bf16_runs_matmuls_in_bf16() -> None:
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, None):
        assert (x @ w).dtype == torch.float32
    with autocast(CPU, torch.bfloat16):
        assert (x @ w).dtype == torch.bfloat16


def test_channels_last_keeps_the_weights_and_the_function() -> None:
    torch.manual_seed(0)
    net = DuelingQNetwork(4, width=0.25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    q = net(x)
    prepare_network(net, channels_last=True)
    assert net.torso.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x), q, rtol=1e-4, atol=1e-5)
    assert forward_fn(net, compile_it=False) is net


def _learner(amp: torch.dtype | None, channels_last: bool = False) -> tuple[C.TeacherConfig, _Learner]:
    cfg = C.TeacherConfig(device="cpu", batch_size=8)
    replay = FrameReplay(200, 1)
    frames = np.random.default_rng(0).integers(0, 255, (200, 84, 84), dtype=np.uint8)
    for t in range(200):
        replay.add(0, frames[t], actions=t % 4, rewards=float(t % 3 == 0), terminated=t % 50 == 49,
                   truncated=False, life_lost=False, first=t % 50 == 0)  # fmt: skip
    torch.manual_seed(0)
    online = prepare_network(DuelingQNetwork(4, width=0.25), channels_last)
    target = prepare_network(DuelingQNetwork(4, width=0.25), channels_last)
    target.load_state_dict(online.state_dict())
    opt = make_adam(online.parameters(), CPU, lr=1e-3)
    return cfg, _Learner(online, target, opt, replay, np.random.default_rng(1), CPU, curve=[], amp=amp)


def _two_updates(amp: torch.dtype | None, channels_last: bool = False) -> tuple[list[float], dict[str, torch.Tensor]]:
    cfg, lr = _learner(amp, channels_last)
    losses = [_learn(cfg, lr) for _ in range(2)]
    return losses, lr.online.state_dict()


def test_learner_in_each_format_and_layout_makes_the_same_update_up_to_rounding() -> None:
    ref_losses, ref = _two_updates(None)
    again_losses, again = _two_updates(None)
    assert again_losses == ref_losses and all(torch.equal(ref[k], again[k]) for k in ref)  # fp32: bit-identical
    for amp, cl, tol in ((None, True, 1e-4), (torch.bfloat16, False, 3e-2)):
        losses, sd = _two_updates(amp, cl)
        assert all(np.isfinite(losses))
        np.testing.assert_allclose(losses, ref_losses, rtol=tol * 5, atol=tol)
        # Adam moves each weight by about lr per step whatever the gradient's scale; rounding may flip the
        # sign of near-zero gradients, so compare the update as a whole, not weight by weight.
        for k in ref:
            if ref[k].is_floating_point() and ref[k].numel() > 1:
                init = _learner(None)[1].online.state_dict()[k]
                d_ref, d = (ref[k] - init).flatten(), (sd[k] - init).flatten()
                cos = torch.nn.functional.cosine_similarity(d_ref, d, dim=0)
                assert cos > (0.999 if amp is None else 0.8), (k, float(cos))


def test_a_teacher_run_refuses_a_bad_precision_before_writing_anything(tmp_path) -> None:
    cfg = C.resolve("teacher", "smoke").model_copy()
    object.__setattr__(cfg, "precision", "fp16")  # past the config's own check, as a hand-built dict could be
    with pytest.raises(TeacherRunError, match="fp16"):
        train_teacher("Pong", cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


class _NoTruth:
    """Calls through to a module but, like a ``torch.compile`` wrapper, has no truth value."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.calls = net, 0

    def __len__(self) -> int:
        raise TypeError("no len()")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_the_learner_calls_the_forward_functions_it_is_given() -> None:
    cfg, lr = _learner(None)
    lr.online_fn, lr.target_fn = _NoTruth(lr.online), _NoTruth(lr.target)
    assert np.isfinite(_learn(cfg, lr))
    assert (lr.online_fn.calls, lr.target_fn.calls) == (2, 1)  # s' and s; s'
