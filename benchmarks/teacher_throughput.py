"""Teacher throughput: environment steps/s, learner updates/s, replay bytes per transition, and the
end-to-end training rate, for a fixed config and step count. Prints which device each figure is from.

    python benchmarks/teacher_throughput.py [--game Breakout] [--env-steps 20000] [--updates 200] [--device auto]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch

from polydistill import config as C
from polydistill.envs import make_vector_env
from polydistill.networks import DuelingQNetwork, make_adam, pick_device
from polydistill.replay import FrameReplay, StepRecorder
from polydistill.teacher import _learn, _Learner, train_teacher


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


def learner_updates_per_second(updates: int, device: torch.device) -> float:
    """Double-DQN updates/s (batch 32, Adam, Huber, grad clip) sampling from a filled replay."""
    cfg = C.TeacherConfig(device=str(device))
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
    online, target = DuelingQNetwork(6).to(device), DuelingQNetwork(6).to(device)
    opt = make_adam(online.parameters(), device, lr=1e-4)  # as train_teacher builds it
    lr = _Learner(online, target, opt, replay, rng, device, curve=[])
    for _ in range(5):  # warm-up (allocator, kernels)
        _learn(cfg, lr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(updates):
        _learn(cfg, lr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--env-steps", type=int, default=20_000)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=4_000, help="end-to-end training run length")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
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
    ups = learner_updates_per_second(a.updates, device)
    print(f"learner updates/s (batch 32, Adam, on {device}): {ups:,.1f}  ({1000 / ups:.1f} ms/update)")
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
