"""Evaluation throughput: agent steps/s of the vectorised evaluator (``polydistill.evaluate``) against a plain
one-environment loop (gymnasium ``ALE/<Game>-v5`` + ``AtariPreprocessing`` + ``FrameStackObservation``, one
forward pass per step), both playing the same agent epsilon-greedily (a teacher network; random init is
enough for a throughput figure). Both use the same number of torch threads.

    python benchmarks/evaluation_throughput.py [--game Breakout] [--steps 4000] [--num-envs 1,4,8]
        [--torch-threads 1] [--device cpu]

"agent steps" are actions chosen by the agent (4 emulator frames each); the evaluator's figure is measured
inside its play loop (the same span the plain loop times), and the ratio is evaluator / plain loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from polydistill.agents import Agent, load_agent
from polydistill.checkpoint import save_checkpoint
from polydistill.config import EvalConfig
from polydistill.envs import action_meanings, canonical_game
from polydistill.evaluate import evaluate
from polydistill.networks import DuelingQNetwork, pick_device


def make_teacher(game: str, directory: Path) -> Path:
    """Save a seeded, untrained teacher checkpoint for ``game`` and return its directory."""
    torch.manual_seed(0)
    meanings = action_meanings(game)
    save_checkpoint(
        directory,
        DuelingQNetwork(len(meanings)),
        {"kind": "teacher", "game": game, "games": [game], "action_meanings": [meanings], "steps": 0},
    )
    return directory


def plain_loop(agent: Agent, game: str, steps: int, epsilon: float, seed: int) -> float:
    """Agent steps/s of one gymnasium env with the standard wrappers and one forward pass per step."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    try:
        import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
    except ImportError:
        raise SystemExit("the plain loop needs OpenCV: pip install opencv-python-headless") from None

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0)
    env = FrameStackObservation(AtariPreprocessing(env, noop_max=30, frame_skip=4), stack_size=4)
    rng = np.random.default_rng(seed)
    n = agent.num_actions(game)
    obs, _ = env.reset(seed=seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        if rng.random() < epsilon:
            action = int(rng.integers(n))
        else:
            action = int(agent.q_values(torch.from_numpy(np.asarray(obs)[None]), game).argmax(1).item())
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def evaluator_rate(
    agent: Agent,
    game: str,
    steps: int,
    num_envs: int,
    epsilon: float,
    seed: int,
    torch_threads: int,
    device: str,
) -> float:
    """Agent steps/s of ``evaluate`` (cycles protocol: ``num_envs`` cycles of ``steps / num_envs`` steps,
    so every environment is busy for the whole run)."""
    cfg = EvalConfig(
        protocol="cycles",
        cycles=num_envs,
        cycle_steps=max(1, steps // num_envs),
        num_envs=num_envs,
        epsilon=epsilon,
        seed=seed,
        device=device,
    )
    res = evaluate(agent, [game], cfg, torch_threads=torch_threads)["games"][game]
    return float(res["steps"]) / float(res["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default="Breakout")
    p.add_argument("--steps", type=int, default=4_000, help="Agent steps per measurement.")
    p.add_argument("--num-envs", default="1,4,8", help="Comma-separated env counts for the evaluator.")
    p.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads for both loops.")
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto.")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device on this machine; run with --device cpu (GPU figures: docs/PERFORMANCE.md)")

    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    game = canonical_game(args.game)
    device = pick_device(args.device)
    torch.set_num_threads(args.torch_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device: {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {load:.1f}); torch threads {args.torch_threads}; game {game}; {args.steps} agent steps each; "
        f"epsilon {args.epsilon}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        agent = load_agent(make_teacher(game, Path(tmp) / "teacher"), device)
        plain = plain_loop(agent, game, args.steps, args.epsilon, seed=0)
        rows = [("plain loop (gymnasium, 1 env)", 1, plain)]
        for n in (int(x) for x in args.num_envs.split(",")):
            rate = evaluator_rate(
                agent, game, args.steps, n, args.epsilon, 0, args.torch_threads, str(device)
            )
            rows.append(("polydistill evaluate", n, rate))
    print(f"{'loop':<32}{'envs':>6}{'steps/s':>12}{'x plain':>10}")
    for name, n, rate in rows:
        print(f"{name:<32}{n:>6}{rate:>12.1f}{rate / plain:>10.2f}")


if __name__ == "__main__":
    main()
