"""Play a latent student on raw frames and as it is evaluated, through the autoencoders it carries, side by
side (issue #30's Breakout latent cell).

A latent student is distilled from decoded codes. Since it carries its games' autoencoders
(:mod:`polydistill.latent_input`) it plays each state encoded, stored at the dataset's code precision and
decoded, as its training states were made; this benchmark plays the same student, under the same evaluation
settings and seed, once that way and once on the raw frames (``load_agent(..., raw_frames=True)``, what
every latent student did before), and prints both scores per game. With ``--teacher GAME=DIR`` it also plays
that teacher on frames through the same autoencoder: what the code leaves a policy to act on, the bound a
student distilled from it can reach.

    python benchmarks/latent_student_play.py --student DIR [--games Breakout] [--episodes 64] [--teacher GAME=DIR]
"""

from __future__ import annotations

import argparse
import os

from teacher_through_autoencoder import ThroughAutoencoder  # this directory's benchmark

from polydistill import config as C
from polydistill.agents import StudentAgent, load_agent
from polydistill.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="the latent student's distill run or checkpoint directory")
    ap.add_argument("--games", nargs="+", default=None, help="games to play (default: all the student's)")
    ap.add_argument("--episodes", type=int, default=None, help="episodes (default: the cpu profile's)")
    ap.add_argument("--teacher", action="append", default=[], help="GAME=DIR: also play this teacher through "
                    "the student's autoencoder for GAME (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    cfg = C.resolve("evaluate", "cpu", overrides={"episodes": args.episodes} if args.episodes else {})
    student = load_agent(args.student)
    if not isinstance(student, StudentAgent) or student.input_kind != "autoencoder":
        raise SystemExit(f"--student {args.student}: not a latent student carrying its autoencoders; "
                         "distill one with --source latent")
    games = args.games or student.games
    for name, agent in (("raw frames", load_agent(args.student, raw_frames=True)),
                        ("through its autoencoder", student)):
        for game, g in evaluate(agent, games, cfg)["games"].items():
            print(f"{game} latent student on {name}: {g['mean']:.2f} ± {g['std']:.2f} over {len(g['scores'])} "
                  f"episodes ({cfg.protocol}, epsilon {cfg.epsilon}, seed {cfg.seed})")
    for spec in args.teacher:
        game, _, where = spec.partition("=")
        teacher = load_agent(where)
        game = teacher.games[0] if teacher.games else game
        through = ThroughAutoencoder(teacher, student.inputs[game])
        g = next(iter(evaluate(through, [game], cfg)["games"].values()))
        print(f"{game} teacher through the student's autoencoder: {g['mean']:.2f} ± {g['std']:.2f} over "
              f"{len(g['scores'])} episodes ({cfg.protocol}, epsilon {cfg.epsilon}, seed {cfg.seed})")


if __name__ == "__main__":
    main()
