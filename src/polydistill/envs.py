"""Atari environments with the standard DQN preprocessing, through ale-py's threaded vector env.

Preprocessing (Mnih et al. 2015; Machado et al. 2018) is done in C++ by ``ale_py.vector_env.AtariVectorEnv``:
84x84 grayscale, frame skip 4 with max-pooling over the last two frames, 4-frame stacks (zero-padded at an
episode's start: the reset state is ``[0, 0, 0, f0]``), up to 30 no-op starts, FIRE on reset where the game
needs it, sticky actions as an option, the 108,000-frame episode cap.

Reward clipping and life loss as episode end are training-time concerns and are applied by the learner, not
the environment: the environment always returns raw rewards and real episode boundaries, so the same env
serves training, recording and evaluation, and recorded episodes are whole games.

Autoreset is gymnasium's NEXT_STEP mode: after a step that ends an episode, the next ``step`` call resets
that sub-environment (its action is ignored) and returns the new episode's first state with reward 0.
"""

from __future__ import annotations

import difflib
import functools
import re

import numpy as np

from polydistill.errors import PolydistillError

from .config import EnvConfig

FRAME_SHAPE = (84, 84)
# Where the vector env fills the stack at an episode's start; recorded in dataset manifests.
STACK_PADDING = "zero"


class UnknownGameError(PolydistillError, ValueError):
    """The game name matches no ALE ROM; the message lists the closest valid names."""


def _camel(rom_id: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in rom_id.split("_"))


@functools.cache
def _rom_ids() -> tuple[str, ...]:
    from ale_py import roms

    return tuple(sorted(roms.get_all_rom_ids()))


@functools.cache
def _lookup() -> dict[str, str]:
    """Normalised spelling -> ALE ROM id (snake_case)."""
    return {re.sub(r"[^a-z0-9]", "", rid.lower()): rid for rid in _rom_ids()}


def all_games() -> list[str]:
    """Every game ale-py ships, as CamelCase names (``Pong``, ``UpNDown``)."""
    return [_camel(r) for r in _rom_ids()]


def _stem(name: str) -> str:
    """``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ``PongDeterministic-v4`` -> ``Pong``."""
    stem = name.strip().split("/")[-1]
    stem = re.sub(r"(NoFrameskip)?-v\d+$", "", stem)
    return re.sub(r"Deterministic$", "", stem)


def game_key(name: str) -> str:
    """A game name with its spelling taken out (``ALE/UpNDown-v5``, ``up_n_down`` -> ``upndown``): two names
    of one game have the same key. Needs no ROM (config compares ``game_steps`` keys with it)."""
    return re.sub(r"[^a-z0-9]", "", _stem(name).lower())


def rom_id(name: str) -> str:
    """The ALE ROM id (snake_case, e.g. ``up_n_down``) for a game given as ``Pong``, ``ALE/Pong-v5`` or
    ``pong``; unknown names raise :class:`UnknownGameError` with the closest valid names."""
    stem, key = _stem(name), game_key(name)
    table = _lookup()
    if key in table:
        return table[key]
    names = all_games()
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.6) or difflib.get_close_matches(
        key, list(table), n=3, cutoff=0.6
    )
    close = [_camel(table[c]) if c in table else c for c in close]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownGameError(
        f"unknown Atari game {name!r}.{hint} Names are accepted as 'Pong', 'ALE/Pong-v5' or 'pong'; "
        f"`python -c 'import polydistill.envs as e; print(e.all_games())'` lists all {len(names)}."
    )


def canonical_game(name: str) -> str:
    """The CamelCase name used everywhere in polydistill (``pong`` -> ``Pong``)."""
    return _camel(rom_id(name))


def action_meanings(game: str, full_action_space: bool = False) -> list[str]:
    """Names of the game's actions in the env's order (``NOOP``, ``FIRE``, ...)."""
    import ale_py
    from ale_py import roms

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    path = roms.get_rom_path(rom_id(game))
    if path is None:  # canonical_game found the game, so its ROM ships with ale-py
        raise UnknownGameError(f"ale-py has no ROM for {game}; reinstall ale-py")
    ale.loadROM(path)
    actions = ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet()
    return [a.name for a in actions]


FULL_ACTION_MEANINGS: list[str] = [
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
]  # fmt: skip


def observation_spec(cfg: EnvConfig) -> dict[str, object]:
    """What a state is, for checkpoints and dataset manifests."""
    return {
        "frame_shape": list(FRAME_SHAPE),
        "dtype": "uint8",
        "frame_stack": cfg.frame_stack,
        "stack_padding": STACK_PADDING,
        "frame_skip": cfg.frame_skip,
        "noop_max": cfg.noop_max,
        "sticky_actions": cfg.sticky_actions,
        "full_action_space": cfg.full_action_space,
        "max_episode_frames": cfg.max_episode_frames,
        "grayscale": True,
        "maxpool": True,
    }


def make_vector_env(game: str, num_envs: int, cfg: EnvConfig | None = None, num_threads: int = 0):
    """A NEXT_STEP-autoreset ``AtariVectorEnv`` returning uint8 states (num_envs, frame_stack, 84, 84).

    Rewards are raw and episodes end only at game over or the frame cap (see module docstring).
    ``num_threads=0`` lets ale-py pick (one per env, bounded by the cores).
    """
    from ale_py.vector_env import AtariVectorEnv

    cfg = cfg or EnvConfig()
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return AtariVectorEnv(
        rom_id(game),
        num_envs,
        num_threads=num_threads,
        max_num_frames_per_episode=cfg.max_episode_frames,
        repeat_action_probability=cfg.sticky_actions,
        full_action_space=cfg.full_action_space,
        stack_num=cfg.frame_stack,
        frameskip=cfg.frame_skip,
        noop_max=cfg.noop_max,
        episodic_life=False,
        reward_clipping=False,
        use_fire_reset=True,
        autoreset_mode="NextStep",
    )


class EpisodeStats:
    """Tracks per-env running returns and lengths under NEXT_STEP autoreset.

    Call :meth:`update` after every ``step``; it returns the (return, length) of episodes that ended on it.
    Lengths are agent steps.
    """

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.resetting = np.zeros(num_envs, dtype=bool)

    def update(
        self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
    ) -> list[tuple[int, float, int]]:
        """Account one vector step; returns ``(env_index, return, length)`` for each finished episode."""
        active = ~self.resetting
        self.returns[active] += rewards[active]
        self.lengths[active] += 1
        done = (terminated | truncated) & active
        finished = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(done)]
        # An env whose episode just ended spends its next step resetting; that step is not part of an episode.
        self.returns[self.resetting] = 0.0
        self.lengths[self.resetting] = 0
        self.resetting = done
        return finished
