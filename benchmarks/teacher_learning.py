"""Does a faster learner still learn the same? Trains the teacher with the ``--before`` settings and the
``--after`` settings for each seed, and compares the learning curves (episode return against agent steps).

    python benchmarks/teacher_learning.py [--game Breakout] [--steps 100000] [--seeds 1,2]
        [--before="--precision fp32"] [--after="--precision auto"] [--parallel 2] [--last 20]
        [--png docs/results/teacher_learning.png]

Each run is ``polydistill train-teacher`` in its own process with one torch thread, at most ``--parallel`` at
once; the other settings are the side-by-side benchmark's (1 env, learning from step 1,000, batch 32 every 4
steps, target copy every 1,000, replay 10,000, 1-step targets; ``--extra`` adds flags to both). It prints, per
seed and arm, the mean (training) return over the last ``--last`` episodes and the run's wall time, the
difference between the arms against the difference between the seeds (seed noise), and draws both arms'
curves (a rolling mean over 20 episodes) into ``--png``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cmd(a: argparse.Namespace, out: Path, seed: int, arm: str) -> list[str]:
    return [sys.executable, "-m", "polydistill.cli", "train-teacher", "--game", a.game, "--out", str(out),
            "--profile", "paper", "--steps", str(a.steps), "--num-envs", "1", "--buffer-size", "10000",
            "--learning-starts", "1000", "--batch-size", "32", "--train-frequency", "4",
            "--target-network-frequency", "1000", "--n-step", "1", "--exploration-fraction", "0.1",
            "--record-steps", "1000", "--checkpoint-every", str(10**9), "--seed", str(seed), "--device", "cpu",
            *shlex.split(a.extra), *shlex.split(arm)]  # fmt: skip


def _curve(out: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(out / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["step"]) for r in rows]), np.array([float(r["episode_return"]) for r in rows])


def _run_all(a: argparse.Namespace, work: Path) -> dict[tuple[str, int], tuple[float, Path]]:
    """Run every (arm, seed), ``--parallel`` at a time; returns each one's wall time (s) and run directory."""
    jobs = [(name, seed) for seed in a.seeds for name in ("before", "after")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    done: dict[tuple[str, int], tuple[float, Path]] = {}
    running: list[tuple[tuple[str, int], subprocess.Popen[bytes], float, Path]] = []
    while jobs or running:
        while jobs and len(running) < a.parallel:
            key = jobs.pop(0)
            out = work / f"{key[0]}-seed{key[1]}"
            log = open(work / f"{key[0]}-seed{key[1]}.log", "wb")  # noqa: SIM115 - the child owns it
            arm = a.before if key[0] == "before" else a.after
            proc = subprocess.Popen(_cmd(a, out, key[1], arm), env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((key, proc, time.perf_counter(), out))
        time.sleep(0.5)  # polling, so each run's wall time ends when it does (to 0.5 s)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            key, proc, t0, out = item
            if proc.returncode != 0:
                tail = (work / f"{key[0]}-seed{key[1]}.log").read_text(errors="replace").splitlines()[-8:]
                sys.exit(f"{key[0]} seed {key[1]} failed (exit {proc.returncode}):\n" + "\n".join(tail))
            done[key] = (time.perf_counter() - t0, out)
    return done


def _plot(curves: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (arm, seed), (steps, rets) in sorted(curves.items()):
        cum = np.concatenate([[0.0], np.cumsum(rets)])
        lo = np.maximum(np.arange(1, len(rets) + 1) - 20, 0)
        smooth = (cum[1:] - cum[lo]) / (np.arange(1, len(rets) + 1) - lo)  # mean of the last <= 20 episodes
        label = f"{arm} ({a.before if arm == 'before' else a.after or 'defaults'}), seed {seed}"
        ax.plot(steps, smooth, color="tab:blue" if arm == "before" else "tab:orange",
                linestyle="-" if seed == a.seeds[0] else "--", label=label)  # fmt: skip
    ax.set_xlabel("agent steps")
    ax.set_ylabel("training episode return (mean of 20)")
    ax.set_title(f"{a.game}: teacher learning curve, before vs after")
    ax.legend(fontsize=8)
    Path(a.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.png, dpi=100, bbox_inches="tight")
    print(f"curves drawn into {a.png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--before", default="--precision fp32", help="train-teacher flags of the reference arm")
    ap.add_argument("--after", default="--precision auto", help="train-teacher flags of the faster arm")
    ap.add_argument("--extra", default="", help="train-teacher flags for both arms")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (one torch thread each)")
    ap.add_argument("--last", type=int, default=20, help="episodes averaged at the end of each curve")
    ap.add_argument("--png", default="docs/results/teacher_learning.png")
    a = ap.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    print(f"{a.game}, {a.steps:,} agent steps, seeds {a.seeds}; before: {a.before!r}; after: {a.after!r}")
    with tempfile.TemporaryDirectory() as d:
        done = _run_all(a, Path(d))
        curves = {key: _curve(out) for key, (_, out) in done.items()}
    means: dict[tuple[str, int], float] = {}
    for (arm, seed), (wall, _) in sorted(done.items()):
        rets = curves[(arm, seed)][1]
        means[(arm, seed)] = float(np.mean(rets[-a.last :])) if len(rets) else float("nan")
        print(f"  {arm:6s} seed {seed}: {len(rets):4d} episodes, mean return of the last {a.last}: "
              f"{means[(arm, seed)]:7.2f}   wall {wall:7.1f} s")  # fmt: skip
    arm_gap = [means[("after", s)] - means[("before", s)] for s in a.seeds]
    seed_gap = [abs(means[(arm, a.seeds[0])] - means[(arm, s)]) for arm in ("before", "after") for s in a.seeds[1:]]
    print(f"  after - before, per seed: {', '.join(f'{g:+.2f}' for g in arm_gap)}; "
          f"seed-to-seed difference within an arm: {', '.join(f'{g:.2f}' for g in seed_gap)}")  # fmt: skip
    walls = {arm: sum(done[(arm, s)][0] for s in a.seeds) for arm in ("before", "after")}
    print(f"  wall time after / before: {walls['after'] / walls['before']:.2f}")
    _plot(curves, a)


if __name__ == "__main__":
    main()
