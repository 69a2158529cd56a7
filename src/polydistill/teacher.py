"""Dueling Double DQN teacher training that records the states it meets.

The algorithm, top to bottom (CleanRL ``dqn_atari.py`` structure):

1. Act epsilon-greedily in ``num_envs`` vectorised games; epsilon anneals linearly from ``start_e`` to
   ``end_e`` over ``exploration_fraction * total_steps`` agent steps.
2. Store each step once in a :class:`~polydistill.replay.FrameReplay` (raw reward; life loss flagged).
3. Every ``train_frequency`` agent steps after ``learning_starts``: sample ``batch_size`` transitions, clip
   rewards to their sign, build the Double-DQN target ``r + gamma * Q_target(s', argmax_a Q_online(s', a))``
   (van Hasselt et al. 2016), Huber loss, Adam, gradient norm clipped at 10 (Wang et al. 2016). With
   ``n_step`` > 1, ``r`` is the discounted sum of the next n clipped rewards and ``s'`` the state n steps on,
   discounted by ``gamma^n`` (multi-step returns, Hessel et al. 2018; 1 = the published Double DQN).
4. Every ``target_network_frequency`` agent steps copy the online network into the target network.
5. Every ``checkpoint_every`` steps write a resumable checkpoint (nets, optimizer, replay, RNGs, counters).
6. At the end: the final teacher checkpoint, the last ``record_steps`` steps as an experience dataset
   (``OUT/dataset``), and the learning curve (``curve.csv``, ``curve.png``).

A run killed at any point and started again with the same output directory resumes from its last
checkpoint and ends with the same dataset (byte for byte), curve and weights as an unbroken run of the same
seed on the same machine. ALE's emulator state is not part of a resume point, so every run, killed or not,
ends its episodes at each resume point and restarts them from ``reset(seed + step)`` (:func:`_cut`); all
other state (networks, optimizer, replay, torch and NumPy RNGs, counters, curve) is saved.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from polydistill.errors import PolydistillError

from . import __version__
from .buffer import DatasetWriter, Manifest
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_json,
    load_state_dict,
    save_checkpoint,
)
from .config import TeacherConfig
from .envs import EpisodeStats, action_meanings, canonical_game, make_vector_env, observation_spec
from .networks import DeviceError, DuelingQNetwork, QNetwork, make_adam, pick_device
from .progress import MetricsCallback, progress
from .replay import FrameReplay, StepRecorder, check_memory, replay_bytes
from .rundir import RunDir
from .speed import PrecisionError, autocast, autocast_dtype, describe, forward_fn, prepare_network
from .store import open_store

log = logging.getLogger(__name__)

CURVE_CSV = "curve.csv"
CURVE_PNG = "curve.png"


class TeacherRunError(PolydistillError, ValueError):
    """Bad input to a teacher run (found before any training starts)."""


@dataclass
class TeacherResult:
    """Where a finished teacher run put its outputs."""

    out_dir: Path
    checkpoint_dir: Path
    dataset_uri: str
    curve_csv: Path
    curve_png: Path
    steps: int
    episodes: int
    final_return_mean: float


@dataclass
class _Learner:
    """Everything a resume point must restore, in one place."""

    online: DuelingQNetwork
    target: DuelingQNetwork
    opt: torch.optim.Optimizer
    replay: FrameReplay
    rng: np.random.Generator
    device: torch.device
    curve: list[tuple[int, float, int, float]]
    step: int = 0
    updates: int = 0
    # How the passes run (speed.py); defaults are plain fp32 calls of the modules above.
    amp: torch.dtype | None = None
    online_fn: Callable[..., torch.Tensor] | None = None
    target_fn: Callable[..., torch.Tensor] | None = None


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """Value at step ``t`` of a linear anneal from ``start`` to ``end`` over ``duration`` steps, then ``end``."""
    slope = (end - start) / max(1, duration)
    return max(slope * t + start, end) if end <= start else min(slope * t + start, end)


def double_dqn_targets(
    online: Callable[[torch.Tensor], torch.Tensor],
    target: Callable[[torch.Tensor], torch.Tensor],
    next_states: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    gamma: float | torch.Tensor,
) -> torch.Tensor:
    """``r + gamma * (1 - done) * Q_target(s', argmax_a Q_online(s', a))`` (van Hasselt et al. 2016).

    ``gamma`` is a float, or per-sample discounts ``gamma^m`` for m-step returns (``s'`` m steps ahead).
    """
    with torch.no_grad():
        best = online(next_states).argmax(dim=1, keepdim=True)
        next_q = target(next_states).gather(1, best).squeeze(1)
        return rewards + gamma * (1.0 - dones) * next_q


def _open_run_dir(out: Path, game: str, cfg: TeacherConfig) -> RunDir:
    """The run directory, checked for this run (:mod:`polydistill.rundir`: same game, same settings but the
    resume-free ones)."""
    rd = RunDir(out, "teacher", TeacherRunError)
    rd.open({"game": game}, _identity(cfg), cfg.resume_free, describe={"game": "for {old}, not {new}"})
    return rd


def _identity(cfg: TeacherConfig) -> dict[str, Any]:
    """The settings a run is recorded and resumed by: ``game_steps`` is already folded into ``total_steps``
    (:meth:`TeacherConfig.for_game`), and runs recorded before it existed keep resuming."""
    return cfg.model_dump(mode="json", exclude=set(cfg.folded))


def _run_record(game: str, cfg: TeacherConfig) -> dict[str, Any]:
    return {"game": game, "config": _identity(cfg), "package_version": __version__}


def _save_resume(rd: RunDir, lr: _Learner) -> None:
    """Write a complete resume point (networks, optimizer, RNGs, replay, curve) and switch to it atomically."""

    def write(d: Path) -> None:
        atomic_torch_save(
            {
                "online": lr.online.state_dict(),
                "target": lr.target.state_dict(),
                "optimizer": lr.opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": torch.tensor(lr.step),
                "updates": torch.tensor(lr.updates),
            },
            d / "state.pt",
        )
        lr.replay.save(d / "replay")
        atomic_write_json(d / "extra.json", {"numpy_rng": lr.rng.bit_generator.state, "curve": lr.curve})

    rd.save_resume(lr.step, write)


def _write_curve(out: Path, curve: list[tuple[int, float, int, float]], game: str) -> tuple[Path, Path]:
    from .plots import plot_learning_curve

    tmp = out / f".{CURVE_CSV}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "episode_return", "episode_length", "epsilon"])
        w.writerows(curve)
    tmp.replace(out / CURVE_CSV)
    png = plot_learning_curve(
        [c[0] for c in curve], [c[1] for c in curve], out / CURVE_PNG, f"{game}: Dueling Double DQN teacher"
    )
    return out / CURVE_CSV, png


def train_teacher(
    game: str,
    cfg: TeacherConfig,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    stop_after: int | None = None,
    init_from: str | Path | None = None,
) -> TeacherResult:
    """Train a Dueling Double DQN teacher on ``game`` and record its experience; see the module docstring.

    Args:
        game: any accepted spelling (``Pong``, ``ALE/Pong-v5``, ``pong``).
        cfg: the resolved teacher config (its ``game_steps`` entry for ``game``, if any, is the budget).
        out_dir: run directory; an existing run of the same game there is resumed.
        on_metrics: called with ``(metrics, step)`` for episode returns, losses and throughput.
        stop_after: stop (as if killed) after this many agent steps of this call; for tests of resume.
        init_from: a teacher checkpoint directory of the same game whose weights the networks start from
            (a warm start, :mod:`polydistill.warm_start`); ignored once this run has a resume point.
    """
    game = canonical_game(game)  # fails fast on unknown names
    cfg = cfg.for_game(game)
    out = Path(out_dir)
    if cfg.record_steps > cfg.buffer_size:
        raise TeacherRunError(
            f"record_steps={cfg.record_steps} exceeds buffer_size={cfg.buffer_size}: the recorded states "
            f"come from the replay memory; raise buffer_size or lower record_steps"
        )
    # Everything that can be refused is refused before run.json exists: a refused run must not leave a
    # record that then blocks the corrected command.
    try:
        pick_device(cfg.device)
        autocast_dtype(cfg.precision, pick_device(cfg.device))
    except (DeviceError, PrecisionError) as e:
        raise TeacherRunError(str(e)) from None
    try:
        check_memory(
            replay_bytes(cfg.buffer_size, cfg.num_envs),
            f"--buffer-size {cfg.buffer_size} (replay memory, {cfg.num_envs} envs)",
            "lower --buffer-size (about 7,066 bytes per transition)",
        )
    except MemoryError as e:
        raise TeacherRunError(str(e)) from None
    rd = _open_run_dir(out, game, cfg)
    resuming = rd.previous is not None
    if rd.finished:
        log.info("%s teacher run in %s is already finished; reusing it", game, out)
        return _result_from_disk(out, game, cfg)
    if not resuming:
        rd.begin(_run_record(game, cfg))

    device = pick_device(cfg.device)
    meanings = action_meanings(game, cfg.env.full_action_space)
    n_actions = len(meanings)
    envs = make_vector_env(game, cfg.num_envs, cfg.env)
    torch.manual_seed(cfg.seed)  # before the networks exist: their initial weights are part of the run
    online = prepare_network(DuelingQNetwork(n_actions, frame_stack=cfg.env.frame_stack).to(device), cfg.channels_last)
    target = prepare_network(DuelingQNetwork(n_actions, frame_stack=cfg.env.frame_stack).to(device), cfg.channels_last)
    target.load_state_dict(online.state_dict())
    lr = _Learner(
        online=online,
        target=target,
        opt=make_adam(online.parameters(), device, lr=cfg.learning_rate, eps=cfg.adam_eps),
        replay=FrameReplay(cfg.buffer_size, cfg.num_envs, cfg.env.frame_stack),
        rng=np.random.default_rng(cfg.seed),
        device=device,
        curve=[],
        amp=autocast_dtype(cfg.precision, device),
        online_fn=forward_fn(online, cfg.compile),
        target_fn=forward_fn(target, cfg.compile),
    )
    log.info("%s teacher learner: %s", game, describe(device, lr.amp, cfg.channels_last, cfg.compile))

    point = rd.latest_resume() if resuming else None
    if point is not None:
        _load_resume(point, lr, out)
        log.info("resuming %s teacher from step %d (%s)", game, lr.step, point)
    elif init_from is not None:
        from .warm_start import load_initial_weights

        load_initial_weights(lr.online, lr.target, init_from, game)

    if lr.step < cfg.total_steps:
        _train_loop(game, cfg, rd, envs, lr, on_metrics, stop_after)
    envs.close()
    return _finish(game, cfg, rd, lr.online, lr.replay, meanings, lr.curve)


def _load_resume(point: Path, lr: _Learner, out: Path) -> None:
    """Restore a resume point written by :func:`_save_resume` into ``lr``."""
    try:
        state = load_state_dict(point / "state.pt")
    except CheckpointError as e:
        raise TeacherRunError(f"cannot resume from {point}: {e}. Delete {out / 'resume'} to start over") from e
    lr.online.load_state_dict(state["online"])
    lr.target.load_state_dict(state["target"])
    lr.opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    lr.step, lr.updates = int(state["step"]), int(state["updates"])
    lr.replay.load(point / "replay")
    lr.replay.mark_cut()  # the envs restart from reset: the interrupted episodes end here
    extra = json.loads((point / "extra.json").read_text())
    lr.rng.bit_generator.state = extra["numpy_rng"]
    lr.curve[:] = [tuple(c) for c in extra["curve"]]


def _train_loop(
    game: str,
    cfg: TeacherConfig,
    rd: RunDir,
    envs: Any,
    lr: _Learner,
    on_metrics: MetricsCallback | None,
    stop_after: int | None,
) -> None:
    """Act, record, learn and checkpoint until ``cfg.total_steps`` agent steps (see the module docstring)."""
    n = cfg.num_envs
    n_actions = lr.online.num_actions[0]
    obs, info = envs.reset(seed=cfg.seed + lr.step)  # a resumed run starts fresh episodes, as _cut does
    recorder = StepRecorder(lr.replay, np.asarray(info["lives"]))
    stats = EpisodeStats(n)
    recent: deque[float] = deque(maxlen=20)
    anneal = int(cfg.exploration_fraction * cfg.total_steps)
    start_step = last_ckpt = steps0 = lr.step
    t0 = time.monotonic()
    bar = progress(cfg.total_steps, f"train-teacher {game}", "step", initial=lr.step)
    loss_val = float("nan")
    while lr.step < cfg.total_steps:
        eps = linear_schedule(cfg.start_e, cfg.end_e, anneal, lr.step)
        if lr.step < cfg.learning_starts:
            actions = lr.rng.integers(0, n_actions, size=n)
        else:
            with torch.no_grad(), autocast(lr.device, lr.amp):
                greedy = lr.online(torch.from_numpy(obs).to(lr.device)).argmax(1).cpu().numpy()
            explore = lr.rng.random(n) < eps
            actions = np.where(explore, lr.rng.integers(0, n_actions, size=n), greedy)
        next_obs, rewards, terminated, truncated, info = envs.step(actions.astype(np.int64))
        ended = stats.update(rewards, terminated, truncated)
        stored = recorder.record(obs, actions, rewards, terminated, truncated, np.asarray(info["lives"]))
        obs = next_obs
        # Only envs that acted took an agent step: a NEXT_STEP reset ignores its action. Counting this way
        # makes the replay hold exactly `step` rows, whatever the episode boundaries (and across resumes).
        k = int(stored.sum())
        lr.step += k
        bar.update(k)
        for _, ret, length in ended:
            lr.curve.append((lr.step, ret, length, eps))
            recent.append(ret)
            if on_metrics:
                on_metrics({"episode_return": ret, "episode_length": float(length), "epsilon": eps}, lr.step)

        if lr.step >= cfg.learning_starts and len(lr.replay) > cfg.batch_size:
            for _ in range(_crossings(lr.step, k, cfg.train_frequency)):
                loss_val = _learn(cfg, lr)
                lr.updates += 1
            if _crossings(lr.step, k, cfg.target_network_frequency):
                lr.target.load_state_dict(lr.online.state_dict())

        if lr.step - last_ckpt >= cfg.checkpoint_every and lr.step < cfg.total_steps:
            _save_resume(rd, lr)
            last_ckpt = lr.step
            # Cut here exactly as a resume from this point does (fresh episodes from a seed derived from
            # the step, the interrupted ones ended in the replay): ALE's emulator state is not saved, so
            # this is what makes a killed-and-resumed run the same run as an unbroken one.
            obs, recorder, stats = _cut(cfg, envs, lr)
        if _crossings(lr.step, k, 1000):
            sps = (lr.step - steps0) / max(time.monotonic() - t0, 1e-9)
            mean_ret = float(np.mean(recent)) if recent else float("nan")
            bar.set_postfix(eps=f"{eps:.3f}", ret=f"{mean_ret:.1f}", loss=f"{loss_val:.4f}")
            if on_metrics:
                metrics = {"steps_per_second": sps, "epsilon": eps, "updates": lr.updates}
                if lr.updates:  # no TD loss before learning starts (it would be NaN)
                    metrics["td_loss"] = loss_val
                on_metrics(metrics, lr.step)
        if stop_after is not None and lr.step - start_step >= stop_after:
            bar.close()
            raise KeyboardInterrupt(f"stop_after={stop_after} reached at step {lr.step}")
    bar.close()


def _cut(cfg: TeacherConfig, envs: Any, lr: _Learner) -> tuple[np.ndarray, StepRecorder, EpisodeStats]:
    """End every episode at a resume point: what an unbroken run does right after saving one, and what a
    resumed run does right after loading it (``_load_resume`` marks the cut, ``_train_loop`` resets)."""
    lr.replay.mark_cut()
    obs, info = envs.reset(seed=cfg.seed + lr.step)
    return obs, StepRecorder(lr.replay, np.asarray(info["lives"])), EpisodeStats(cfg.num_envs)


def _crossings(step: int, n: int, every: int) -> int:
    """How many multiples of ``every`` the step counter passed in its last increment of ``n``."""
    return step // every - (step - n) // every


def _learn(cfg: TeacherConfig, lr: _Learner) -> float:
    """One Double-DQN update on a sampled minibatch; returns the Huber loss."""
    online, target, opt, device = lr.online, lr.target, lr.opt, lr.device
    b = lr.replay.sample(
        cfg.batch_size,
        lr.rng,
        episodic_life=cfg.env.episodic_life,
        n_step=cfg.n_step,
        gamma=cfg.gamma,
        clip_rewards=cfg.env.clip_rewards,  # clipped per step, before the n-step sum
    )
    states = torch.from_numpy(b["states"]).to(device)
    next_states = torch.from_numpy(b["next_states"]).to(device)
    rewards = torch.from_numpy(b["rewards"]).to(device)
    dones = torch.from_numpy(b["dones"]).to(device)
    discounts = torch.from_numpy(b["discounts"]).to(device)
    actions = torch.from_numpy(b["actions"]).to(device)
    # `is None`, not `or`: a torch.compile wrapper has no truth value (it forwards len() to the module).
    online_fwd = online if lr.online_fn is None else lr.online_fn
    target_fwd = target if lr.target_fn is None else lr.target_fn
    with autocast(device, lr.amp):  # the loss below is fp32 either way
        td_target = double_dqn_targets(online_fwd, target_fwd, next_states, rewards, dones, discounts)
        q = online_fwd(states).gather(1, actions.unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q.float(), td_target.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm)
    opt.step()
    return float(loss.detach())


def _finish(
    game: str,
    cfg: TeacherConfig,
    rd: RunDir,
    online: DuelingQNetwork,
    replay: FrameReplay,
    meanings: list[str],
    curve: list[tuple[int, float, int, float]],
) -> TeacherResult:
    out = rd.out
    ckpt = out / "checkpoint"
    save_checkpoint(
        ckpt,
        online,
        {
            "kind": "teacher",
            "game": game,
            "games": [game],
            "action_meanings": [meanings],
            "observation": observation_spec(cfg.env),
            "config": cfg.model_dump(mode="json"),
            "steps": cfg.total_steps,
        },
    )
    rows = replay.recent(cfg.record_steps)
    manifest = Manifest(
        game=game,
        num_actions=len(meanings),
        action_meanings=meanings,
        observation=observation_spec(cfg.env),
        codec="zstd",
        source={"teacher_steps": cfg.total_steps, "recorded_steps": len(rows["actions"]), "seed": cfg.seed},
    )
    ds_dir = out / "dataset"
    writer = DatasetWriter(open_store(str(ds_dir.resolve())), manifest, shard_steps=10_000)
    writer.add(**rows)
    writer.close()
    csv_path, png = _write_curve(out, curve, game)
    last = [c[1] for c in curve[-20:]]
    rd.finish(_run_record(game, cfg))
    return TeacherResult(
        out_dir=out,
        checkpoint_dir=ckpt,
        dataset_uri=ds_dir.resolve().as_uri(),
        curve_csv=csv_path,
        curve_png=png,
        steps=cfg.total_steps,
        episodes=len(curve),
        final_return_mean=float(np.mean(last)) if last else float("nan"),
    )


def _result_from_disk(out: Path, game: str, cfg: TeacherConfig) -> TeacherResult:
    curve = []
    with open(out / CURVE_CSV) as f:
        for row in csv.DictReader(f):
            curve.append(float(row["episode_return"]))
    last = curve[-20:]
    return TeacherResult(
        out_dir=out,
        checkpoint_dir=out / "checkpoint",
        dataset_uri=(out / "dataset").resolve().as_uri(),
        curve_csv=out / CURVE_CSV,
        curve_png=out / CURVE_PNG,
        steps=cfg.total_steps,
        episodes=len(curve),
        final_return_mean=float(np.mean(last)) if last else float("nan"),
    )


def load_teacher(directory: str | Path, device: str | torch.device = "cpu") -> tuple[QNetwork, dict[str, Any]]:
    """Load a teacher checkpoint (a run directory or its ``checkpoint/`` subdirectory): a trained teacher's
    Dueling network, or an imported teacher's Nature-DQN network (:mod:`polydistill.teacher_import`)."""
    from .checkpoint import load_checkpoint

    d = Path(directory)
    if (d / "checkpoint").is_dir():
        d = d / "checkpoint"
    model, meta = load_checkpoint(d, device)
    if meta.get("kind") != "teacher":
        raise CheckpointError(f"{d} holds a {meta.get('kind')!r} checkpoint, not a teacher")
    from .agents import check_teacher_metadata

    check_teacher_metadata(meta, d)
    return model, meta  # type: ignore[return-value]
