"""Play a latent student on real frames and through its game's autoencoder, side by side (issue #30's
Breakout latent cell).

A latent student is distilled from decoded codes and, in the pipeline's evaluation, plays on real frames. When
it agrees with its teacher on reconstructions but not on originals (``benchmarks/autoencoder_teacher.py
--student``), the gap is the domain it learnt in, not what the code kept. This plays the same student, under
the same evaluation settings and seed, once as evaluated (real frames) and once seeing each state encoded and
decoded by the autoencoder it was distilled through (the reconstruction rounded to uint8 pixels, as stored
frames are), and prints both scores.

    python benchmarks/latent_student_play.py --student DIR --autoencoder Breakout=DIR [--episodes 64]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from polydistill import config as C
from polydistill.agents import Agent, load_agent
from polydistill.autoencoder import load_autoencoder, reconstruct
from polydistill.evaluate import evaluate
from polydistill.networks import ConvAutoencoder


class ThroughAutoencoder(Agent):
    """``student`` seeing every state as ``autoencoder`` reconstructs it from codes at ``code_dtype``."""

    def __init__(self, student: Agent, autoencoder: ConvAutoencoder, code_dtype: str) -> None:
        self.student, self.autoencoder, self.code_dtype = student, autoencoder, code_dtype
        self.kind, self.label, self.games, self.path = student.kind, student.label, student.games, student.path

    def action_meanings(self, game: str) -> list[str]:
        return self.student.action_meanings(game)

    def q_values(self, states: np.ndarray | torch.Tensor, game: str) -> torch.Tensor:
        recon = reconstruct(self.autoencoder, states, self.code_dtype)
        return self.student.q_values(recon.mul(255.0).round().to(torch.uint8), game)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="the latent student's distill run or checkpoint directory")
    ap.add_argument("--autoencoder", required=True, help="GAME=DIR: the autoencoder it was distilled through")
    ap.add_argument("--episodes", type=int, default=None, help="episodes (default: the cpu profile's)")
    args = ap.parse_args()
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    game, _, where = args.autoencoder.partition("=")
    cfg = C.resolve("evaluate", "cpu", overrides={"episodes": args.episodes} if args.episodes else {})
    student = load_agent(args.student)
    ae, meta = load_autoencoder(where, "cpu")
    for name, agent in (("real frames", student), ("through the autoencoder", ThroughAutoencoder(
            student, ae, meta["code_dtype"]))):
        g = next(iter(evaluate(agent, [game], cfg)["games"].values()))
        print(f"{game} latent student on {name}: {g['mean']:.2f} ± {g['std']:.2f} over {len(g['scores'])} "
              f"episodes ({cfg.protocol}, epsilon {cfg.epsilon}, seed {cfg.seed})")


if __name__ == "__main__":
    main()
