"""Play a game's teacher on frames seen through each of several autoencoders, side by side: what each code
leaves a policy to act on (issue #30's Breakout latent cell).

A latent student plays through the autoencoder its codes came from (:mod:`polydistill.latent_input`), so it
can play no better than its teacher does on the same reconstructions unless it learnt to read them better
than the teacher. Agreement on held-out states (``benchmarks/autoencoder_teacher.py``) counts actions; this
plays whole episodes, under the evaluation settings of a profile and one seed, for the teacher on raw frames
and through every ``--autoencoder``, and prints one line each with the code's bytes per state.

    python benchmarks/teacher_through_autoencoder.py --teacher DIR --autoencoder NAME=DIR [...] [--episodes 64]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from polydistill import config as C
from polydistill.agents import Agent, load_agent
from polydistill.autoencoder import code_bytes, load_autoencoder
from polydistill.evaluate import evaluate
from polydistill.latent_input import AutoencoderInput


class ThroughAutoencoder(Agent):
    """``agent`` seeing every state through ``through``, as a latent student does."""

    def __init__(self, agent: Agent, through: AutoencoderInput) -> None:
        super().__init__(agent.games, agent.device, agent.path, agent.metadata)
        self.agent, self.through, self.kind, self.label = agent, through, agent.kind, agent.label

    def action_meanings(self, game: str) -> list[str]:
        return self.agent.action_meanings(game)

    def q_values(self, states: np.ndarray | torch.Tensor, game: str) -> torch.Tensor:
        with torch.no_grad():
            return self.agent.q_values(self.through(torch.as_tensor(states).to(self.device)), game)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="the game's teacher run or checkpoint directory")
    ap.add_argument("--autoencoder", action="append", required=True, help="NAME=DIR of a trained autoencoder "
                    "(repeatable); its codes are stored at the code_dtype it was trained for")
    ap.add_argument("--episodes", type=int, default=None, help="episodes (default: the profile's)")
    ap.add_argument("--profile", default="cpu", choices=C.PROFILES, help="evaluation settings (default cpu)")
    args = ap.parse_args()
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    cfg = C.resolve("evaluate", args.profile, overrides={"episodes": args.episodes} if args.episodes else {})
    teacher = load_agent(args.teacher)
    game = teacher.games[0]
    agents: list[tuple[str, str, Agent]] = [("raw frames", "-", teacher)]
    for spec in args.autoencoder:
        name, _, where = spec.partition("=")
        model, meta = load_autoencoder(where, "cpu")
        if meta.get("game") != game:
            raise SystemExit(f"--autoencoder {spec}: it is {meta.get('game')}'s, the teacher plays {game}")
        dtype = str(meta["code_dtype"])
        agents.append((name, f"{code_bytes(model.latent_dim, dtype):g}", ThroughAutoencoder(
            teacher, AutoencoderInput(model, dtype))))
    print(f"{game} teacher, {cfg.protocol} ({cfg.episodes} episodes), epsilon {cfg.epsilon}, seed {cfg.seed}")
    print("| input | B/state | mean | std |\n| --- | ---: | ---: | ---: |")
    for name, size, agent in agents:
        g = next(iter(evaluate(agent, [game], cfg)["games"].values()))
        print(f"| {name} | {size} | {g['mean']:.2f} | {g['std']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
