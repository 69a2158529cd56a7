"""Teacher training speed side by side with the peers: polydistill ``train-teacher`` against Stable-Baselines3's
``DQN`` and (when given) CleanRL's ``dqn_atari.py``, at equal hyperparameters, in one invocation.

    python benchmarks/teacher_vs_peers.py [--game Breakout] [--steps 9000] [--learning-starts 1000]
        [--buffer-size 10000] [--threads 1] [--sb3-python PATH] [--cleanrl PATH/TO/cleanrl/dqn_atari.py]
        [--mode pairs|alternate] [--precision fp32] [--channels-last] [--compile] [--device cpu]

Every run is its own process with ``--threads`` torch threads (``OMP_NUM_THREADS`` and
``torch.set_num_threads``), one env, and the same game, agent steps, learning start, batch, update and
target-copy frequencies, replay size, learning rate and exploration schedule. The figure is the wall time of
the whole process (imports, env start, training, polydistill's dataset and curve writing) and agent steps/s
from it. ``--mode pairs`` (default) runs polydistill at the same time as each peer in turn, so both see the
same machine (use it on >= 2 cores); ``alternate`` runs them one after another.

Peers: SB3 from PyPI (``pip install stable-baselines3==2.9.2 opencv-python-headless``, in its own virtualenv if
its pins differ: pass its python as ``--sb3-python``; default this python). CleanRL is never vendored: fetch
the repository yourself (``git clone https://github.com/vwxyzjn/cleanrl``), install ``tyro tensorboard
stable-baselines3 opencv-python-headless`` into the peer python, and pass ``--cleanrl cleanrl/cleanrl/dqn_atari.py``.
Its file targets gymnasium 0.29; a small shim (printed with the results) maps the two renamed wrappers so it
runs unchanged under gymnasium 1.x.

On a CUDA machine ``--device cuda`` runs all three on the GPU unchanged (peers with their own CUDA selection).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from polydistill.speed import autocast_dtype, describe

# The peers' differences from polydistill that are theirs by design, not settings of this benchmark.
DIFFERENCES = """\
differences (by design, not settings):
  polydistill: Dueling Double DQN (3 forward passes + 1 backward per update; 21.9 MFLOP/forward), Huber, grad clip 10,
               ALE's C++ preprocessing (AtariVectorEnv), writes the last --record-steps states as a dataset and a curve
  SB3 DQN:     plain DQN (2 forwards + 1 backward; 18.7 MFLOP/forward), Huber, grad clip 10, AtariWrapper (cv2)
  CleanRL:     plain DQN, MSE loss, no grad clip, gymnasium wrappers in Python (SyncVectorEnv of 1)"""

SB3_RUNNER = """\
import sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
import gymnasium as gym, ale_py
gym.register_envs(ale_py)
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack
game, steps, starts, buf, batch, freq, target, lr, seed, device = sys.argv[2:12]
env = VecFrameStack(make_atari_env(f"{game}NoFrameskip-v4", n_envs=1, seed=int(seed)), n_stack=4)
model = DQN("CnnPolicy", env, buffer_size=int(buf), learning_starts=int(starts), batch_size=int(batch),
            train_freq=int(freq), gradient_steps=1, target_update_interval=int(target), learning_rate=float(lr),
            exploration_fraction=0.1, exploration_final_eps=0.01, max_grad_norm=10, seed=int(seed),
            device=device, verbose=0)
t = time.perf_counter()
model.learn(int(steps))
print(f"sb3 learn() {time.perf_counter() - t:.1f} s", flush=True)
"""

# CleanRL's dqn_atari.py imports gymnasium 0.29 names; gymnasium 1.x renamed them. Nothing else is changed.
CLEANRL_SHIM = """\
import runpy, sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[1]))
import gymnasium as gym, ale_py
gym.register_envs(ale_py)
for old, new in (("GrayScaleObservation", "GrayscaleObservation"), ("FrameStack", "FrameStackObservation")):
    if not hasattr(gym.wrappers, old):
        setattr(gym.wrappers, old, getattr(gym.wrappers, new))
path = Path(sys.argv[2]).resolve()
sys.path.insert(0, str(path.parent.parent))  # the repository root holds cleanrl_utils
sys.argv = [str(path), *sys.argv[3:]]
runpy.run_path(str(path), run_name="__main__")
"""


@dataclass
class Run:
    """One training process and its measured wall time (seconds, whole process)."""

    name: str
    cmd: list[str]
    cwd: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    t0: float = 0.0
    wall: float = float("nan")
    rc: int | None = None
    log: str = ""

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.logf = open(Path(self.cwd) / f"{self.name}.log", "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self.logf, stderr=subprocess.STDOUT)

    def poll(self) -> bool:
        """True once the process has ended; its wall time is taken at the first poll that sees it end."""
        assert self.proc is not None
        if self.rc is None and self.proc.poll() is not None:
            self.rc = self.proc.returncode
            self.wall = time.perf_counter() - self.t0
            self.logf.close()
            self.log = (Path(self.cwd) / f"{self.name}.log").read_text(errors="replace")
        return self.rc is not None

    def wait(self) -> None:
        while not self.poll():
            time.sleep(0.2)  # polling, so each wall time ends when its process does (to 0.2 s)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    return env


def polydistill_run(a: argparse.Namespace, work: Path) -> Run:
    out = work / "polydistill-out"
    cmd = [sys.executable, "-m", "polydistill.cli", "train-teacher", "--game", a.game, "--out", str(out),
           "--profile", "paper", "--steps", str(a.steps), "--num-envs", "1", "--buffer-size", str(a.buffer_size),
           "--learning-starts", str(a.learning_starts), "--batch-size", str(a.batch_size),
           "--train-frequency", str(a.train_frequency), "--target-network-frequency", str(a.target_every),
           "--n-step", "1", "--learning-rate", str(a.learning_rate), "--exploration-fraction", "0.1",
           "--record-steps", str(min(a.record_steps, a.buffer_size)), "--checkpoint-every", str(10**9),
           "--seed", str(a.seed), "--device", a.device, "--precision", a.precision,
           "--channels-last" if a.channels_last else "--no-channels-last",
           "--compile" if a.compile else "--no-compile"]  # fmt: skip
    (work / "pd").mkdir(exist_ok=True)
    return Run("polydistill", cmd, str(work / "pd"), _env(a.threads))


def sb3_run(a: argparse.Namespace, work: Path) -> Run:
    runner = work / "sb3_runner.py"
    runner.write_text(SB3_RUNNER)
    cmd = [a.sb3_python, str(runner), str(a.threads), a.game, str(a.steps), str(a.learning_starts),
           str(a.buffer_size), str(a.batch_size), str(a.train_frequency), str(a.target_every),
           str(a.learning_rate), str(a.seed), a.device]  # fmt: skip
    (work / "sb3").mkdir(exist_ok=True)
    return Run("sb3", cmd, str(work / "sb3"), _env(a.threads))


def cleanrl_run(a: argparse.Namespace, work: Path) -> Run:
    shim = work / "cleanrl_shim.py"
    shim.write_text(CLEANRL_SHIM)
    cmd = [a.sb3_python, str(shim), str(a.threads), a.cleanrl, "--env-id", f"{a.game}NoFrameskip-v4",
           "--total-timesteps", str(a.steps), "--learning-starts", str(a.learning_starts),
           "--buffer-size", str(a.buffer_size), "--batch-size", str(a.batch_size),
           "--train-frequency", str(a.train_frequency), "--target-network-frequency", str(a.target_every),
           "--learning-rate", str(a.learning_rate), "--seed", str(a.seed),
           "--cuda" if a.device.startswith("cuda") else "--no-cuda"]  # fmt: skip
    (work / "cleanrl").mkdir(exist_ok=True)
    return Run("cleanrl", cmd, str(work / "cleanrl"), _env(a.threads))


def _report(r: Run, steps: int) -> str:
    if r.rc != 0:
        tail = "\n    ".join(r.log.strip().splitlines()[-6:])
        return f"  {r.name:12s} FAILED (exit {r.rc}) after {r.wall:.1f} s:\n    {tail}"
    return f"  {r.name:12s} {r.wall:7.1f} s  {steps / r.wall:7.1f} agent steps/s"


def _side_by_side(ours: Run, peer: Run, steps: int) -> None:
    ours.start()
    peer.start()
    while not (ours.poll() & peer.poll()):  # & polls both each time
        time.sleep(0.2)
    print(f"side by side: polydistill and {peer.name}, started together", flush=True)
    print(_report(ours, steps))
    print(_report(peer, steps))
    if ours.rc == 0 and peer.rc == 0:
        print(f"  polydistill agent steps/s / {peer.name}'s = {peer.wall / ours.wall:.2f}x", flush=True)


def _alternate(runs: list[Run], steps: int) -> None:
    print("alternate: one after another")
    for r in runs:
        r.start()
        r.wait()
        print(_report(r, steps), flush=True)
    ours = runs[0]
    for peer in runs[1:]:
        if ours.rc == 0 and peer.rc == 0:
            print(f"  polydistill agent steps/s / {peer.name}'s = {peer.wall / ours.wall:.2f}x")


def _header(a: argparse.Namespace) -> None:
    device = torch.device("cuda" if a.device.startswith("cuda") else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device on this machine; run with --device cpu")
    arith = describe(device, autocast_dtype(a.precision, device), a.channels_last, a.compile)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"polydistill learner: {arith}; peers: fp32")
    print(
        f"settings (all runs): {a.game}, {a.steps:,} agent steps, 1 env, {a.threads} torch thread(s), learning from "
        f"step {a.learning_starts:,}, batch {a.batch_size} every {a.train_frequency} steps, target copy every "
        f"{a.target_every:,}, replay {a.buffer_size:,}, lr {a.learning_rate}, epsilon 1 -> 0.01 over 10%, "
        f"1-step targets, seed {a.seed}; polydistill records the last {min(a.record_steps, a.buffer_size):,} states"
    )
    print(DIFFERENCES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--steps", type=int, default=9_000)
    ap.add_argument("--learning-starts", type=int, default=1_000)
    ap.add_argument("--buffer-size", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-frequency", type=int, default=4)
    ap.add_argument("--target-every", type=int, default=1_000)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--record-steps", type=int, default=1_000, help="polydistill's recorded dataset (its output)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--sb3-python", default=sys.executable, help="a python with stable-baselines3 2.9.2")
    ap.add_argument("--cleanrl", default=None, help="path to CleanRL's cleanrl/dqn_atari.py (fetched by you)")
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument("--mode", choices=["pairs", "alternate"], default="pairs")
    a = ap.parse_args()
    if a.cleanrl and not Path(a.cleanrl).is_file():
        sys.exit(f"--cleanrl {a.cleanrl}: no such file; pass the path of CleanRL's cleanrl/dqn_atari.py")
    _header(a)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        peers: list[Run] = [] if a.skip_sb3 else [sb3_run(a, work)]
        if a.cleanrl:
            peers.append(cleanrl_run(a, work))
        if a.mode == "alternate":
            _alternate([polydistill_run(a, work), *peers], a.steps)
            return
        for i, peer in enumerate(peers):
            round_dir = work / f"round{i}"
            round_dir.mkdir()
            _side_by_side(polydistill_run(a, round_dir), peer, a.steps)


if __name__ == "__main__":
    main()
