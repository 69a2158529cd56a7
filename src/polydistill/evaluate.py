"""Scoring agents in the real game: the seed paper's ``cycles`` protocol and the common ``episodes`` protocol.

What is measured (both protocols): raw game score (no reward clipping), whole games (a lost life does not
end an episode), epsilon-greedy play with ``EvalConfig.epsilon`` over the agent's Q-values for the game
(a multi-task student answers with its head for that game), up to ``EnvConfig.noop_max`` no-op actions at
each episode start and the ``EvalConfig.max_episode_frames`` cap (default 108,000 frames = 30 minutes).

Protocols:

- ``cycles`` (seed paper: 10 cycles x 12,500 states): a cycle is ``cycle_steps`` agent steps of play in one
  environment that starts a fresh episode at the cycle's first step. Its score is the mean return of the
  episodes that finished within it; when none finished, the partial return of the episode still running at
  the cycle's end (:func:`cycle_score`). The result is the mean and standard deviation over cycles.
- ``episodes`` (Mnih et al. 2015 / Machado et al. 2018 style): ``episodes`` whole episodes; the result is
  the mean and standard deviation over episodes.

Determinism: every episode start is seeded explicitly (the environment's no-op count and game randomness)
and every episode or cycle has its own epsilon random stream, both derived from ``EvalConfig.seed`` and the
episode's or cycle's index (:func:`stream_seed`). Environments run in lockstep and finished episodes are
assigned the next episode index in environment order, so the same seed gives the same numbers on every run,
and -- up to floating-point effects of the inference batch size -- for any ``num_envs``.

Throughput: ``num_envs`` environments run in ale-py's threaded vector env and the agent scores all their
states in one batched forward pass per step. Environments are reset explicitly (``reset_mask``) the moment
their episode ends, so no step is spent on NEXT_STEP autoresets and every vector step is an agent step.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from polydistill.errors import PolydistillError

from . import __version__
from .checkpoint import atomic_write_json
from .config import ConfigError, EnvConfig, EvalConfig, from_dict
from .envs import canonical_game, make_vector_env, observation_spec
from .networks import pick_device
from .progress import progress

log = logging.getLogger(__name__)

SCORES_FILE = "scores.json"
RESULTS_SCHEMA = 1
# Labels the report knows how to place in the seed paper's table (docs/CONTRACTS.md).
KNOWN_LABELS = ("random", "teacher", "student_subset", "student_latent", "student_full")
# Stream ids keep the two protocols' random streams apart for the same seed and index.
_CYCLES_STREAM, _EPISODES_STREAM = 1, 2


class EvaluationError(PolydistillError, ValueError):
    """Bad input to an evaluation (unknown game, an agent that does not know a game, bad protocol numbers);
    raised before any play."""


@runtime_checkable
class AgentLike(Protocol):
    """What the evaluator needs from an agent (the :mod:`polydistill.agents` API)."""

    @property
    def games(self) -> Sequence[str]: ...
    @property
    def kind(self) -> str: ...
    @property
    def label(self) -> str: ...

    def num_actions(self, game: str) -> int: ...

    def q_values(self, states: torch.Tensor, game: str) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------------------
# Pure arithmetic (tested on scripted returns)


def cycle_score(finished_returns: Sequence[float], running_return: float) -> float:
    """Score of one cycle: the mean return of the episodes that finished within it, or, when none finished,
    the partial return of the episode still running at the cycle's end (seed paper protocol)."""
    if len(finished_returns):
        return float(np.mean(np.asarray(finished_returns, dtype=np.float64)))
    return float(running_return)


def cycle_scores_from_steps(
    rewards: Sequence[float], episode_ends: Sequence[bool], cycle_steps: int
) -> list[float]:
    """Cycle scores for one environment's step stream cut into cycles of ``cycle_steps`` agent steps.

    ``rewards[t]`` is the raw reward of agent step ``t`` and ``episode_ends[t]`` whether an episode ended on
    it. Every cycle starts a fresh episode, as the evaluator does: an episode still running at a cycle's
    end is cut there (it counts only when nothing else finished in that cycle). A trailing partial cycle
    is ignored.
    """
    if cycle_steps < 1:
        raise ValueError(f"cycle_steps must be >= 1, got {cycle_steps}")
    if len(rewards) != len(episode_ends):
        raise ValueError(f"rewards ({len(rewards)}) and episode_ends ({len(episode_ends)}) differ in length")
    scores: list[float] = []
    for start in range(0, len(rewards) - cycle_steps + 1, cycle_steps):
        finished: list[float] = []
        running = 0.0
        for t in range(start, start + cycle_steps):
            running += float(rewards[t])
            if episode_ends[t]:
                finished.append(running)
                running = 0.0
        scores.append(cycle_score(finished, running))
    return scores


def mean_std(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0, so a single score has std 0, not NaN)."""
    a = np.asarray(scores, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no scores to summarise")
    return float(a.mean()), float(a.std())


def stream_seed(seed: int, stream: int, index: int, sub: int = 0) -> int:
    """A 31-bit seed for episode or cycle ``index`` (and its ``sub``-th episode) of a protocol ``stream``,
    derived from the evaluation seed with :class:`numpy.random.SeedSequence` so nearby seeds and indices
    give unrelated streams."""
    ss = np.random.SeedSequence(entropy=seed % 2**64, spawn_key=(stream, index, sub))
    return int(ss.generate_state(1, dtype=np.uint32)[0] % (2**31 - 1))


def _eps_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    # The epsilon stream of one episode/cycle; ``sub`` 2**20 keeps it apart from the env seeds.
    ss = np.random.SeedSequence(entropy=seed % 2**64, spawn_key=(stream, index, 2**20))
    return np.random.default_rng(ss)


def protocol_envs(num_units: int, num_envs: int) -> int:
    """Environments to run for ``num_units`` equal-length cycles given at most ``num_envs``: as many as
    keep the fewest lockstep waves fully busy (10 cycles on 8 envs -> 2 waves of 5, not 8 + 2)."""
    waves = math.ceil(num_units / max(1, num_envs))
    return math.ceil(num_units / waves)


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclass
class GameResult:
    """Scores of one agent on one game. Returns are raw game points; steps are agent steps.

    ``scores`` are what mean and std are taken over: per-cycle scores (``cycles``) or episode returns in
    episode-index order (``episodes``). ``episode_returns``/``episode_lengths`` list every finished episode
    (cut episodes at a cycle's end are not included); ``truncated`` counts those ended by the frame cap;
    ``seconds`` is the wall time of play from the end of the environments' first reset.
    """

    scores: list[float]
    episode_returns: list[float]
    episode_lengths: list[int]
    truncated: int
    steps: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        mean, std = mean_std(self.scores)
        return {
            "mean": mean,
            "std": std,
            "scores": [float(s) for s in self.scores],
            "episodes": len(self.episode_returns),
            "steps": int(self.steps),
            "episode_returns": [float(r) for r in self.episode_returns],
            "episode_lengths": [int(n) for n in self.episode_lengths],
            "truncated_episodes": int(self.truncated),
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps / self.seconds, 1) if self.seconds > 0 else None,
            **self.extra,
        }


# ---------------------------------------------------------------------------------------------------------
# Acting


class _Policy:
    """Epsilon-greedy actions for a batch of environments, each with its own epsilon stream."""

    def __init__(self, agent: AgentLike, game: str, epsilon: float, device: torch.device) -> None:
        self.agent, self.game, self.epsilon, self.device = agent, game, epsilon, device
        self.n = int(agent.num_actions(game))
        self.random = agent.kind == "random"

    def __call__(self, obs: np.ndarray, rngs: Sequence[np.random.Generator | None]) -> np.ndarray:
        greedy = None
        if not self.random:
            with torch.inference_mode():
                q = self.agent.q_values(torch.from_numpy(obs).to(self.device), self.game)
            if q.shape != (len(obs), self.n):
                raise EvaluationError(
                    f"agent {self.agent.label!r} returned Q-values of shape {tuple(q.shape)} for "
                    f"{self.game}, expected {(len(obs), self.n)}"
                )
            greedy = q.argmax(dim=1).cpu().numpy()
        actions = np.zeros(len(obs), dtype=np.int64)  # idle environments press NOOP
        for i, rng in enumerate(rngs):
            if rng is None:
                continue
            if greedy is None or rng.random() < self.epsilon:
                actions[i] = rng.integers(self.n)
            else:
                actions[i] = greedy[i]
        return actions


def _play_cycles(
    policy: _Policy, game: str, cfg: EvalConfig, env_cfg: EnvConfig, num_threads: int
) -> GameResult:
    n_envs = protocol_envs(cfg.cycles, cfg.num_envs)
    waves = math.ceil(cfg.cycles / n_envs)
    envs = make_vector_env(game, n_envs, env_cfg, num_threads=num_threads)
    scores: list[float] = [math.nan] * cfg.cycles
    per_cycle_eps: list[int] = [0] * cfg.cycles
    ep_returns: list[float] = []
    ep_lengths: list[int] = []
    truncated = steps = 0
    bar = progress(cfg.cycles * cfg.cycle_steps, f"evaluate {game} ({cfg.cycles} cycles)", "step")
    t0 = time.monotonic()
    try:
        for w in range(waves):
            cycles = [w * n_envs + i for i in range(n_envs)]
            live = np.array([k < cfg.cycles for k in cycles])
            n_live = int(live.sum())
            rngs = [_eps_rng(cfg.seed, _CYCLES_STREAM, k) if k < cfg.cycles else None for k in cycles]
            ep_index = np.zeros(n_envs, dtype=np.int64)  # episodes started so far in each env's cycle
            obs, _ = envs.reset(seed=np.array([stream_seed(cfg.seed, _CYCLES_STREAM, k) for k in cycles]))
            if w == 0:  # play time starts once the environments are up
                t0 = time.monotonic()
            running = np.zeros(n_envs, dtype=np.float64)
            length = np.zeros(n_envs, dtype=np.int64)
            finished: list[list[float]] = [[] for _ in range(n_envs)]
            for t in range(cfg.cycle_steps):
                obs, rewards, term, trunc, _ = envs.step(policy(obs, rngs))
                running += rewards
                length += 1
                ended = (term | trunc) & live
                if ended.any():
                    idx = np.flatnonzero(ended)
                    for i in idx:
                        finished[i].append(float(running[i]))
                        ep_returns.append(float(running[i]))
                        ep_lengths.append(int(length[i]))
                        truncated += int(trunc[i])
                        running[i], length[i] = 0.0, 0
                        ep_index[i] += 1
                    if t < cfg.cycle_steps - 1:  # the cycle goes on with a new, seeded episode
                        seeds = np.array(
                            [stream_seed(cfg.seed, _CYCLES_STREAM, cycles[i], int(ep_index[i])) for i in idx]
                        )
                        obs, _ = envs.reset(seed=seeds, options={"reset_mask": ended})
                steps += n_live
                bar.update(n_live)
            for i in np.flatnonzero(live):
                scores[cycles[i]] = cycle_score(finished[i], running[i])
                per_cycle_eps[cycles[i]] = len(finished[i])
            done = [s for s in scores if not math.isnan(s)]
            bar.set_postfix(score=f"{np.mean(done):.1f}")
    finally:
        bar.close()
        envs.close()
    return GameResult(
        scores,
        ep_returns,
        ep_lengths,
        truncated,
        steps,
        time.monotonic() - t0,
        extra={"episodes_per_cycle": per_cycle_eps, "num_envs": n_envs},
    )


def _play_episodes(
    policy: _Policy, game: str, cfg: EvalConfig, env_cfg: EnvConfig, num_threads: int
) -> GameResult:
    n = cfg.episodes
    n_envs = min(cfg.num_envs, n)
    envs = make_vector_env(game, n_envs, env_cfg, num_threads=num_threads)
    returns: list[float] = [math.nan] * n
    lengths: list[int] = [0] * n
    trunc_flags: list[bool] = [False] * n
    slot = np.arange(n_envs)  # the episode index each env is playing; -1 when idle
    rngs: list[np.random.Generator | None] = [_eps_rng(cfg.seed, _EPISODES_STREAM, j) for j in range(n_envs)]
    next_episode, done, steps = n_envs, 0, 0
    running = np.zeros(n_envs, dtype=np.float64)
    length = np.zeros(n_envs, dtype=np.int64)
    bar = progress(n, f"evaluate {game} ({n} episodes)", "episode")
    try:
        first_seeds = [stream_seed(cfg.seed, _EPISODES_STREAM, j) for j in range(n_envs)]
        obs, _ = envs.reset(seed=np.array(first_seeds))
        t0 = time.monotonic()  # play time starts once the environments are up
        while done < n:
            obs, rewards, term, trunc, _ = envs.step(policy(obs, rngs))
            live = slot >= 0
            running[live] += rewards[live]
            length[live] += 1
            steps += int(live.sum())
            ended = (term | trunc) & live
            if not ended.any():
                continue
            reset_mask = np.zeros(n_envs, dtype=bool)
            seeds: list[int] = []
            # Environments in index order take the next episode indices: deterministic, timing-free.
            for i in np.flatnonzero(ended):
                j = int(slot[i])
                returns[j], lengths[j], trunc_flags[j] = float(running[i]), int(length[i]), bool(trunc[i])
                running[i], length[i] = 0.0, 0
                done += 1
                if next_episode < n:
                    slot[i], rngs[i] = next_episode, _eps_rng(cfg.seed, _EPISODES_STREAM, next_episode)
                    seeds.append(stream_seed(cfg.seed, _EPISODES_STREAM, next_episode))
                    reset_mask[i] = True
                    next_episode += 1
                else:
                    slot[i], rngs[i] = -1, None
            if reset_mask.any():
                obs, _ = envs.reset(seed=np.array(seeds), options={"reset_mask": reset_mask})
            bar.update(int(ended.sum()))
            bar.set_postfix(ret=f"{np.nanmean(returns):.1f}", steps=steps)
    finally:
        bar.close()
        envs.close()
    return GameResult(
        list(returns),
        list(returns),
        lengths,
        sum(trunc_flags),
        steps,
        time.monotonic() - t0,
        extra={"num_envs": n_envs},
    )


# ---------------------------------------------------------------------------------------------------------
# Entry points


def _load_agent(agent: str | Path | AgentLike, device: torch.device) -> AgentLike:
    """An Agent object for a checkpoint directory, ``"random"``, or an already loaded Agent."""
    if isinstance(agent, str | Path):
        from .agents import AgentError, load_agent
        from .checkpoint import CheckpointError

        if str(agent) != "random" and not Path(agent).is_dir():
            raise EvaluationError(
                f"agent {str(agent)!r} is neither 'random' nor a directory; pass a teacher or student "
                f"checkpoint directory (or the run directory holding checkpoint/)"
            )
        try:
            return load_agent(agent, device)
        except (AgentError, CheckpointError) as e:
            raise EvaluationError(str(e)) from e
    if not isinstance(agent, AgentLike):
        raise EvaluationError(
            f"agent must be a checkpoint directory, 'random' or an Agent (polydistill.agents), "
            f"got {type(agent).__name__}"
        )
    return agent


def _agent_games(agent: AgentLike) -> list[str] | None:
    """The canonical games an agent can play; None when it plays any game (the random policy)."""
    if agent.kind == "random" or not agent.games:
        return None
    return sorted({canonical_game(g) for g in agent.games})


def _check_games(games: Sequence[str], agent: AgentLike) -> list[str]:
    if isinstance(games, str):
        games = [games]
    if not games:
        raise EvaluationError("no games to evaluate; name at least one game")
    from .envs import UnknownGameError

    canon: list[str] = []
    for g in games:
        try:
            c = canonical_game(g)
        except UnknownGameError as e:
            raise EvaluationError(str(e)) from None
        if c not in canon:
            canon.append(c)
    known = _agent_games(agent)
    if known is not None:
        missing = [g for g in canon if g not in known]
        if missing:
            where = getattr(agent, "path", None) or agent.label
            raise EvaluationError(
                f"agent {where} ({agent.kind}) does not play {', '.join(missing)}; "
                f"it plays {', '.join(known)}"
            )
    return canon


def _check_config(cfg: EvalConfig | Mapping[str, Any]) -> EvalConfig:
    if isinstance(cfg, Mapping):
        try:
            return from_dict("evaluate", cfg)
        except ConfigError as e:
            raise EvaluationError(str(e)) from None
    if not isinstance(cfg, EvalConfig):
        raise EvaluationError(
            f"cfg must be an EvalConfig or a dict of its settings, got {type(cfg).__name__}"
        )
    # Re-validate: a model built with model_construct (or mutated without validation) skips the bounds.
    try:
        cfg = EvalConfig.model_validate(cfg.model_dump())
    except Exception as e:
        raise EvaluationError(f"invalid evaluation config: {e}") from None
    return cfg


def _check_label(label: str, agent: AgentLike) -> None:
    """Refuse a label that is no report column, or the column of another kind of agent (a teacher's scores
    under ``student_subset`` would be a student's in the report)."""
    from .agents import LABELS, label_kind

    if label not in LABELS:
        raise EvaluationError(f"--label {label!r} is no report column; use one of {', '.join(LABELS)}")
    kind = getattr(agent, "kind", "")
    if kind in ("teacher", "student", "random") and label_kind(label) != kind:
        raise EvaluationError(f"--label {label!r} is for {label_kind(label)} agents, but the agent is a {kind}; "
                              f"leave --label out for the agent's own ({_default_label(agent)!r})")


def _default_label(agent: AgentLike) -> str:
    label = getattr(agent, "label", None)
    if label:
        return str(label)
    if agent.kind == "student":
        source = _agent_source(agent)
        return f"student_{source}" if source else "student"
    return agent.kind


def _agent_source(agent: AgentLike) -> str | None:
    """A student's training states (``full``, ``subset``, ``latent``) from its checkpoint metadata."""
    meta = getattr(agent, "metadata", None) or {}
    return meta.get("source") if agent.kind == "student" else None


def evaluate(
    agent: str | Path | AgentLike,
    games: Sequence[str],
    cfg: EvalConfig | Mapping[str, Any],
    out_dir: str | Path | None = None,
    label: str | None = None,
    env: EnvConfig | None = None,
    num_threads: int = 0,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """Play ``agent`` on each of ``games`` under ``cfg``'s protocol and return the results JSON.

    Args:
        agent: a checkpoint directory (teacher run, teacher or student checkpoint), ``"random"`` for the
            uniform random policy, or an already loaded Agent (:mod:`polydistill.agents`).
        games: Atari games (any spelling :func:`~polydistill.envs.canonical_game` accepts); duplicates are
            played once.
        cfg: the evaluation settings (protocol, its numbers, epsilon, num_envs, seed, device).
        out_dir: when given, the results are also written atomically to ``out_dir/scores.json``.
        label: the agent's column in the report (``teacher``, ``student_subset``, ...); default: the agent's.
        env: environment settings; default :class:`~polydistill.config.EnvConfig` (no sticky actions, up to
            30 no-op starts). The episode cap is ``cfg.max_episode_frames`` whatever ``env`` says. Reward
            clipping and life-loss ends never apply here.
        num_threads: ale-py worker threads (0: one per environment, bounded by the cores).
        torch_threads: CPU threads for inference while playing (restored afterwards); default half the
            cores, at least 1. Environments and inference take turns, but OpenMP workers that spin after
            each forward pass starve the emulator threads (``benchmarks/evaluation_throughput.py``).

    Returns:
        ``{"agent": {path, kind, label, source, input, games}, "protocol", "config", "env", "package_version",
        "games": {GAME: {mean, std, scores, episodes, steps, ...}}}`` (docs/CONTRACTS.md). ``scores`` are the
        per-cycle scores (``cycles``) or per-episode returns (``episodes``), in raw game points.

    Raises:
        EvaluationError: unknown game, a game the agent does not play, bad protocol numbers -- all checked
            before any play.
    """
    cfg = _check_config(cfg)
    # The episode cap is an evaluation setting (EvalConfig), so every agent of one report plays under it.
    env_cfg = (env or EnvConfig()).model_copy(update={"max_episode_frames": cfg.max_episode_frames})
    if label is not None and not str(label).strip():
        raise EvaluationError("label must be a non-empty string such as 'teacher' or 'student_subset'")
    device = pick_device(cfg.device)
    loaded = _load_agent(agent, device)
    game_list = _check_games(games, loaded)
    for g in game_list:
        n = loaded.num_actions(g)
        if n < 1:
            raise EvaluationError(f"agent {loaded.label!r} reports {n} actions for {g}")
    if label is not None:
        _check_label(label, loaded)
    label = label or _default_label(loaded)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise EvaluationError(f"--out {out} is a file; give a directory for scores.json")

    per_game: dict[str, Any] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads or max(1, (os.cpu_count() or 2) // 2))
    try:
        for g in game_list:
            policy = _Policy(loaded, g, cfg.epsilon, device)
            play = _play_cycles if cfg.protocol == "cycles" else _play_episodes
            res = play(policy, g, cfg, env_cfg, num_threads)
            per_game[g] = res.to_json()
            log.info(
                "%s on %s: %.2f +- %.2f (%s)", label, g, per_game[g]["mean"], per_game[g]["std"], cfg.protocol
            )
    finally:
        torch.set_num_threads(previous_threads)

    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "agent": {
            "path": str(Path(p).resolve()) if (p := getattr(loaded, "path", None)) else None,
            "kind": loaded.kind,
            "label": label,
            "source": _agent_source(loaded),
            # frames, or autoencoder: a latent student plays through the autoencoders it carries
            "input": getattr(loaded, "input_kind", "frames"),
            "games": _agent_games(loaded),
        },
        "protocol": cfg.protocol,
        "config": cfg.model_dump(mode="json"),
        "env": observation_spec(env_cfg),
        "package_version": __version__,
        "games": per_game,
    }
    if out is not None:
        atomic_write_json(out / SCORES_FILE, results)
    return results


def random_baseline(
    game: str, cfg: EvalConfig | Mapping[str, Any], env: EnvConfig | None = None
) -> dict[str, Any]:
    """The uniform random policy's score on ``game`` under ``cfg``: the per-game entry of the results
    (``{mean, std, scores, episodes, steps, ...}``, raw game points)."""
    return evaluate("random", [game], cfg, env=env)["games"][canonical_game(game)]


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results JSON written by :func:`evaluate` (a ``scores.json`` file or a directory holding one)."""
    import json

    p = Path(path)
    if p.is_dir():
        p = p / SCORES_FILE
    if not p.is_file():
        raise EvaluationError(f"{p} not found; pass a scores.json written by `polydistill evaluate`")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{p} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or "games" not in data or "agent" not in data:
        raise EvaluationError(f"{p} is not an evaluation results file (no 'agent' and 'games')")
    return data
