"""Teacher throughput: environment steps/s, learner updates/s, replay bytes per transition, and the
end-to-end training rate, for a fixed config and step count. Prints which device each figure is from.

    python benchmarks/teacher_throughput.py [--game Breakout] [--env-steps 20000] [--updates 200] [--device auto]
        [--formats fp32,fp32-one-pass,channels-last,compile,bf16] [--batch-sizes 32]

The learner is timed once per ``--formats`` entry (fp32; the online network's passes over s and s' as one
batch; channels-last convolutions; torch.compile; bf16 autocast, emulated and timed on a few updates only
where the device has no native bf16), with the FLOPs of one update counted by torch's FlopCounterMode and set
against this device's matrix-multiply peak in that number format (a 2048 x 2048 GEMM). On CUDA,
``--batch-sizes 32,256,1024`` shows the batch that fills the GPU.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from polydistill import config as C
from polydistill.envs import make_vector_env
from polydistill.networks import DuelingQNetwork, make_adam, pick_device
from polydistill.replay import FrameReplay, StepRecorder
from polydistill.speed import autocast_dtype, bf16_native, forward_fn, prepare_network
from polydistill.teacher import _learn, _Learner, train_teacher

#: --formats entries: (precision, channels_last, compile)
FORMATS = {
    "fp32": ("fp32", False, False),
    "channels-last": ("fp32", True, False),
    "compile": ("fp32", False, True),
    "bf16": ("bf16", False, False),
    "bf16+channels-last": ("bf16", True, False),
    "fp32-one-pass": ("fp32", False, False),  # the online net's s and s' in one batch (_learn_one_pass)
}


def _learn_one_pass(cfg: C.TeacherConfig, lr: _Learner) -> float:
    """The candidate "one batched pass for s and s'": the online network runs once on cat(s, s') with
    gradients, its s' half (detached) picks the Double-DQN action. Same loss as ``_learn``; timed only."""
    b = lr.replay.sample(cfg.batch_size, lr.rng, episodic_life=True, n_step=1, gamma=cfg.gamma, clip_rewards=True)
    t = {k: torch.from_numpy(v).to(lr.device) for k, v in b.items()}
    both = lr.online(torch.cat([t["states"], t["next_states"]]))
    q_all, q_next = both[: cfg.batch_size], both[cfg.batch_size :].detach()
    with torch.no_grad():
        best = q_next.argmax(1, keepdim=True)
        next_q = lr.target(t["next_states"]).gather(1, best).squeeze(1)
        target = t["rewards"] + t["discounts"] * (1 - t["dones"]) * next_q
    q = q_all.gather(1, t["actions"].unsqueeze(1)).squeeze(1)
    loss = torch.nn.functional.smooth_l1_loss(q, target)
    lr.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lr.online.parameters(), cfg.max_grad_norm)
    lr.opt.step()
    return float(loss.detach())


def env_steps_per_second(game: str, num_envs: int, steps: int) -> float:
    """Agent steps/s of the vector env with random actions, recording into the replay as training does."""
    env = make_vector_env(game, num_envs)
    replay = FrameReplay(max(steps, 1_000), num_envs)
    obs, info = env.reset(seed=0)
    rec = StepRecorder(replay, np.asarray(info["lives"]))
    rng = np.random.default_rng(0)
    n_act = env.single_action_space.n
    t0 = time.perf_counter()
    for _ in range(steps // num_envs):
        a = rng.integers(0, n_act, num_envs)
        nxt, r, te, tr, info = env.step(a.astype(np.int64))
        rec.record(obs, a, r, te, tr, np.asarray(info["lives"]))
        obs = nxt
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def peak_gflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of a 2048 x 2048 matrix multiply in ``dtype`` on ``device`` (this device's practical peak)."""
    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def update_flops(lr: _Learner, cfg: C.TeacherConfig, learn: Callable[[C.TeacherConfig, _Learner], float]) -> float:
    """FLOPs of one learner update (forward passes, backward, as counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        learn(cfg, lr)
    return float(counter.get_total_flops())


def learner_updates_per_second(
    updates: int, device: torch.device, fmt: str = "fp32", batch_size: int = 32
) -> tuple[float, float]:
    """Double-DQN updates/s (Adam, Huber, grad clip) sampling from a filled replay, in ``--formats`` entry
    ``fmt``; returns (updates/s, FLOPs per update)."""
    precision, channels_last, compiled = FORMATS[fmt]
    cfg = C.TeacherConfig(device=str(device), batch_size=batch_size)
    replay = FrameReplay(20_000, 1)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (20_000, 84, 84), dtype=np.uint8)
    for t in range(20_000):
        replay.add(
            0,
            frames[t],
            actions=t % 6,
            rewards=1.0,
            terminated=t % 500 == 499,
            truncated=False,
            life_lost=False,
            first=t % 500 == 0,
        )
    online = prepare_network(DuelingQNetwork(6).to(device), channels_last)
    target = prepare_network(DuelingQNetwork(6).to(device), channels_last)
    opt = make_adam(online.parameters(), device, lr=1e-4)  # as train_teacher builds it
    amp = autocast_dtype(precision, device)
    lr = _Learner(online, target, opt, replay, rng, device, curve=[], amp=amp)
    learn = _learn_one_pass if fmt == "fp32-one-pass" else _learn
    flops = update_flops(lr, cfg, learn)  # counted on the plain modules: compiling does not change them
    lr.online_fn, lr.target_fn = forward_fn(online, compiled), forward_fn(target, compiled)
    if amp is not None and not bf16_native(device):
        updates = min(updates, 3)  # emulated bf16: a figure, not a wait
    for _ in range(5 if compiled else 2):  # warm-up (allocator, kernels, compilation)
        learn(cfg, lr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(updates):
        learn(cfg, lr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - t0), flops


def arithmetic_report(updates: int, device: torch.device, formats: list[str], batch_sizes: list[int]) -> float:
    """Print the learner's rate and GFLOP/s per format against the device's peak; returns fp32 updates/s at
    the first batch size."""
    peaks: dict[torch.dtype, float] = {}
    first = float("nan")
    for fmt in formats:
        dtype = autocast_dtype(FORMATS[fmt][0], device) or torch.float32
        if dtype not in peaks:
            peaks[dtype] = peak_gflops(device, dtype)
            print(f"matrix-multiply peak on {device}, {str(dtype).removeprefix('torch.')}: {peaks[dtype]:,.1f} GFLOP/s")
        for bs in batch_sizes:
            ups, flops = learner_updates_per_second(updates, device, fmt, bs)
            if fmt == formats[0] and bs == batch_sizes[0]:
                first = ups
            gf = ups * flops / 1e9
            print(
                f"  learner {fmt:<18} batch {bs:5d}: {ups:8.2f} updates/s ({1000 / ups:7.1f} ms), "
                f"{flops / 1e9:5.2f} GFLOP/update, {gf:7.1f} GFLOP/s = {gf / peaks[dtype]:4.0%} of peak, "
                f"{ups * bs:8.0f} samples/s"
            )
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--env-steps", type=int, default=20_000)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=4_000, help="end-to-end training run length")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--formats", default="fp32,fp32-one-pass,channels-last,compile,bf16", help=", ".join(FORMATS))
    ap.add_argument("--batch-sizes", default="32", help="learner batch sizes (comma-separated)")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device on this machine; run with --device cpu (GPU figures: docs/PERFORMANCE.md)")
    device = pick_device(a.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(f"device: {device} - {where}")
    r = FrameReplay(1_000_000 // 100, 1)
    print(
        f"replay bytes/transition: {r.bytes_per_transition:,.0f}  "
        f"(1M transitions: {r.bytes_per_transition * 1e6 / 1e9:.2f} GB; "
        f"naive (s, s') stacks: {2 * 4 * 84 * 84 * 1e6 / 1e9:.1f} GB)"
    )
    sps = env_steps_per_second(a.game, a.num_envs, a.env_steps)
    print(f"env steps/s ({a.game}, {a.num_envs} envs, random actions, recorded): {sps:,.0f}")
    ups = arithmetic_report(a.updates, device, a.formats.split(","), [int(b) for b in a.batch_sizes.split(",")])
    cfg = C.resolve(
        "teacher",
        "smoke",
        overrides={
            "total_steps": a.train_steps,
            "num_envs": a.num_envs,
            "buffer_size": a.train_steps,
            "record_steps": a.train_steps // 2,
            "learning_starts": 500,
            "checkpoint_every": 10**9,
            "device": str(device),
        },
    )
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train_teacher(a.game, cfg, d)
        dt = time.perf_counter() - t0
    print(
        f"end-to-end training: {a.train_steps} agent steps in {dt:.1f} s = {a.train_steps / dt:,.0f} steps/s "
        f"(train_frequency 4, learning from step 500, checkpoint/dataset/curve writing included)"
    )
    prof = C.resolve("teacher", "cpu")
    n_updates = prof.total_steps // prof.train_frequency
    print(
        f"cpu profile: {prof.total_steps:,} steps/game at one update per {prof.train_frequency} steps = "
        f"{n_updates:,} updates of batch {prof.batch_size} (this line's rate is for batch 32: "
        f"{n_updates / ups / 60:.0f} min at that rate)"
    )


if __name__ == "__main__":
    main()
