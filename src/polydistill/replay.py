"""Replay memory that stores each 84x84 frame once and rebuilds 4-frame stacks when sampling.

One circular stream per environment (capacity ``buffer_size // num_envs`` rows each), because stacks are
rebuilt from consecutive rows of the same environment. A row is the agent step ``t`` of one env: the newest
frame of its state, the action, the raw reward, and flags (episode start, game over, truncation, life
lost). Memory: 7,056 bytes of frame + 9 bytes of columns = 7,065 bytes per transition (a 1M replay in about
7.1 GB, where naive stacked (s, s') pairs take 56 GB).

Transition ``j`` is ``(s_j, a_j, r_j, done_j, s_{j+1})`` with ``s_{j+1}`` the stack ending at row ``j+1``.
``done`` for bootstrapping is game over or, when ``episodic_life`` is set, a lost life (Mnih et al. 2015).
Truncated rows (the 108k-frame cap) are never sampled because their successor state is not stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_json

_COLUMNS = {
    "actions": np.int16,
    "rewards": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "life_lost": np.bool_,
    "first": np.bool_,
}


def replay_bytes(capacity: int, num_envs: int = 1, frame_shape: tuple[int, int] = (84, 84)) -> int:
    """Bytes a :class:`FrameReplay` of ``capacity`` transitions allocates (frames once per step + columns),
    computed without allocating: what :func:`check_memory` compares with the machine's memory."""
    per_env = capacity // max(1, num_envs)
    row = int(np.prod(frame_shape)) + sum(np.dtype(t).itemsize for t in _COLUMNS.values())
    return num_envs * per_env * row


def available_memory() -> int | None:
    """Bytes of memory this machine can still give a process (``MemAvailable`` of /proc/meminfo, else
    free physical pages), or None when it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, fix: str) -> None:
    """Raise ``MemoryError`` (one line naming ``what`` and ``fix``) when ``needed`` bytes exceed the
    machine's available memory; called before allocating and before any file is written."""
    free = available_memory()
    if free is not None and needed > free:
        raise MemoryError(
            f"{what} needs {needed / 1e9:,.1f} GB but this machine has {free / 1e9:,.1f} GB available; {fix}"
        )


class FrameReplay:
    """Frame-once replay memory for ``num_envs`` parallel environments.

    Args:
        capacity: total transitions held (split evenly across envs).
        num_envs: number of parallel streams.
        frame_stack: frames per state.
        frame_shape: (H, W) of one frame.
    """

    def __init__(
        self, capacity: int, num_envs: int = 1, frame_stack: int = 4, frame_shape: tuple[int, int] = (84, 84)
    ) -> None:
        if capacity < num_envs * (frame_stack + 2):
            raise ValueError(f"replay capacity {capacity} too small for {num_envs} envs")
        self.num_envs = num_envs
        self.per_env = capacity // num_envs
        self.frame_stack = frame_stack
        self.frames = np.zeros((num_envs, self.per_env, *frame_shape), dtype=np.uint8)
        self.cols: dict[str, np.ndarray] = {k: np.zeros((num_envs, self.per_env), dtype=t) for k, t in _COLUMNS.items()}
        self.pos = np.zeros(num_envs, dtype=np.int64)  # next row to write, per stream
        self.size = np.zeros(num_envs, dtype=np.int64)  # rows held, per stream

    @property
    def capacity(self) -> int:
        return self.per_env * self.num_envs

    def __len__(self) -> int:
        return int(self.size.sum())

    @property
    def nbytes(self) -> int:
        """Bytes held by the replay arrays."""
        return self.frames.nbytes + sum(c.nbytes for c in self.cols.values())

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.capacity

    def add(self, env: int, frame: np.ndarray, **row: Any) -> None:
        """Append one row to stream ``env``; ``row`` holds the columns of :data:`_COLUMNS`."""
        p = self.pos[env]
        self.frames[env, p] = frame
        for k in _COLUMNS:
            self.cols[k][env, p] = row[k]
        self.pos[env] = (p + 1) % self.per_env
        self.size[env] = min(self.size[env] + 1, self.per_env)

    def add_batch(self, envs: np.ndarray, frames: np.ndarray, **rows: np.ndarray) -> None:
        """Append one row to each stream in ``envs`` (vectorised :meth:`add`)."""
        p = self.pos[envs]
        self.frames[envs, p] = frames
        for k in _COLUMNS:
            self.cols[k][envs, p] = rows[k]
        self.pos[envs] = (p + 1) % self.per_env
        self.size[envs] = np.minimum(self.size[envs] + 1, self.per_env)

    def mark_cut(self) -> None:
        """End every stream's current episode fragment (after a resume the envs restart from reset)."""
        for e in range(self.num_envs):
            if self.size[e]:
                last = (self.pos[e] - 1) % self.per_env
                self.cols["truncated"][e, last] = True

    # --------------------------------------------------------------------------------------------- sampling
    def _stack(self, env: np.ndarray, idx: np.ndarray) -> np.ndarray:
        fs, c = self.frame_stack, self.per_env
        out = np.zeros((len(idx), fs, *self.frames.shape[2:]), dtype=np.uint8)
        out[:, -1] = self.frames[env, idx]
        alive = np.ones(len(idx), dtype=bool)
        first = self.cols["first"]
        for k in range(1, fs):
            alive &= ~first[env, (idx - k + 1) % c]
            src = (idx - k) % c
            out[alive, fs - 1 - k] = self.frames[env[alive], src[alive]]
        return out

    def _valid(self, env: np.ndarray, idx: np.ndarray) -> np.ndarray:
        c = self.per_env
        size, pos = self.size[env], self.pos[env]
        oldest = np.where(size < c, 0, pos)
        age = (idx - oldest) % c  # 0 = oldest row held
        in_range = age < size
        newest = age == size - 1
        done = self.cols["terminated"][env, idx] | self.cols["life_lost"][env, idx]
        truncated = self.cols["truncated"][env, idx]
        # History: the stack's earlier frames must still be held unless the episode starts within it.
        has_history = age >= self.frame_stack - 1
        if not has_history.all():
            first = self.cols["first"]
            for k in range(0, self.frame_stack - 1):
                has_history |= (age >= k) & first[env, (idx - k) % c]
        # A successor row is needed unless the episode ended; truncated rows have no stored successor.
        return in_range & has_history & ~truncated & (done | ~newest)

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator,
        episodic_life: bool = True,
        n_step: int = 1,
        gamma: float = 0.99,
        clip_rewards: bool = False,
    ) -> dict[str, np.ndarray]:
        """A uniform minibatch of ``n_step`` transitions.

        Returns states/next_states uint8 (B, 4, 84, 84), actions int64, rewards float32, dones float32 and
        discounts float32. With ``n_step`` 1 the reward is the raw (or sign-clipped) ``r_t`` and the discount
        ``gamma``. With ``n_step`` n the reward is ``sum_k gamma^k r_{t+k}`` over up to n steps that stop early
        at a game over or lost life (``done``), at a truncation, or at the newest row; ``next_states`` is the
        state after the last step summed and ``discounts`` is ``gamma^m`` for the m steps summed, so the
        target is ``rewards + discounts * (1 - dones) * Q(next_states)`` (Sutton 1988; Hessel et al. 2018).
        """
        if len(self) < self.frame_stack + 2:
            raise RuntimeError("replay holds too few transitions to sample")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        weights = self.size / self.size.sum()
        env = rng.choice(self.num_envs, size=batch_size, p=weights)
        idx = (rng.random(batch_size) * self.size[env]).astype(np.int64)
        for _ in range(100):  # rejection sampling: invalid rows are rare (edges, truncations)
            bad = ~self._valid(env, idx)
            if not bad.any():
                break
            env[bad] = rng.choice(self.num_envs, size=int(bad.sum()), p=weights)
            idx[bad] = (rng.random(int(bad.sum())) * self.size[env[bad]]).astype(np.int64)
        c = self.per_env
        ret = np.zeros(batch_size, dtype=np.float64)
        done = np.zeros(batch_size, dtype=bool)
        steps = np.zeros(batch_size, dtype=np.int64)  # m: rows summed into the return
        going = np.ones(batch_size, dtype=bool)
        for k in range(n_step):
            j = (idx + k) % c
            if k > 0:
                # Row j continues the transition only when it is a valid transition itself. The previous row
                # was valid and not done, so it was not the newest row: j is its true successor.
                going &= self._valid(env, j)
                if not going.any():
                    break
            r = self.cols["rewards"][env, j].astype(np.float64)
            if clip_rewards:
                r = np.sign(r)
            ret[going] += gamma**k * r[going]
            steps[going] += 1
            ended = self.cols["terminated"][env, j] | (episodic_life & self.cols["life_lost"][env, j])
            done |= going & ended
            going &= ~ended
        nxt = (idx + steps) % c
        return {
            "states": self._stack(env, idx),
            "next_states": self._stack(env, nxt),
            "actions": self.cols["actions"][env, idx].astype(np.int64),
            "rewards": ret.astype(np.float32),
            "dones": done.astype(np.float32),
            "discounts": (gamma**steps).astype(np.float32),
        }

    # --------------------------------------------------------------------------------------------- export
    def recent(self, steps: int) -> dict[str, np.ndarray]:
        """The last ``steps`` rows (split evenly over streams), each stream in time order, concatenated.

        Returns dataset columns (frames, actions, rewards, terminated, truncated, first, valid). The first
        rows of each stream that lack stack history are context rows (``valid=False``).
        """
        take = self._allocate(min(steps, len(self)))
        parts: dict[str, list[np.ndarray]] = {}
        for e in range(self.num_envs):
            n = int(take[e])
            if n == 0:
                continue
            idx = (self.pos[e] - n + np.arange(n)) % self.per_env
            first = self.cols["first"][e, idx].copy()
            valid = (np.arange(n) >= self.frame_stack - 1) | (np.cumsum(first) > 0)
            # The teacher's last state of each stream has no recorded outcome: keep it, it is a real state.
            cols = {
                "frames": self.frames[e, idx],
                "actions": self.cols["actions"][e, idx],
                "rewards": self.cols["rewards"][e, idx],
                "terminated": self.cols["terminated"][e, idx],
                "truncated": self.cols["truncated"][e, idx],
                "first": first,
                "valid": valid,
            }
            # Streams are concatenated: the next stream's rows must not take history from this one.
            for k, v in cols.items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _allocate(self, total: int) -> np.ndarray:
        """Rows to take from each stream: as even as the streams' sizes allow, summing to ``total``."""
        take = np.zeros(self.num_envs, dtype=np.int64)
        left = total
        while left > 0:
            room = self.size - take
            open_ = np.flatnonzero(room > 0)
            if len(open_) == 0:
                break
            share = max(1, left // len(open_))
            for e in open_:
                add = int(min(share, room[e], left))
                take[e] += add
                left -= add
                if left == 0:
                    break
        return take

    # --------------------------------------------------------------------------------------------- resume
    def save(self, directory: Path) -> None:
        """Write the filled part of the replay (np.save, no pickles) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "frames.npy", self.frames)
        for k, v in self.cols.items():
            np.save(directory / f"{k}.npy", v)
        atomic_write_json(
            directory / "replay.json",
            {
                "pos": self.pos.tolist(),
                "size": self.size.tolist(),
                "per_env": self.per_env,
                "num_envs": self.num_envs,
            },
        )

    def load(self, directory: Path) -> None:
        """Restore what :meth:`save` wrote; the shapes must match this replay's."""
        import json

        meta = json.loads((directory / "replay.json").read_text())
        if meta["per_env"] != self.per_env or meta["num_envs"] != self.num_envs:
            raise ValueError(
                f"replay in {directory} has {meta['num_envs']} envs x {meta['per_env']} rows; this run has "
                f"{self.num_envs} x {self.per_env}. Resume with the same buffer_size and num_envs."
            )
        self.frames[...] = np.load(directory / "frames.npy", allow_pickle=False)
        for k in self.cols:
            self.cols[k][...] = np.load(directory / f"{k}.npy", allow_pickle=False)
        self.pos[...] = meta["pos"]
        self.size[...] = meta["size"]


class StepRecorder:
    """Turns vector-env steps (NEXT_STEP autoreset) into replay rows, one per env that acted.

    Tracks which envs are resetting (their step shows a new episode's first state and stores nothing), the
    episode-start flag of each env's next row, and lives for life-loss flags.
    """

    def __init__(self, replay: FrameReplay, lives: np.ndarray) -> None:
        self.replay = replay
        n = replay.num_envs
        self.first = np.ones(n, dtype=bool)
        self.resetting = np.zeros(n, dtype=bool)
        self.lives = np.asarray(lives).copy()

    def record(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        new_lives: np.ndarray,
    ) -> np.ndarray:
        """Store the step taken from states ``obs``; returns the mask of envs whose row was stored."""
        storing = ~self.resetting
        if storing.any():
            e = np.flatnonzero(storing)
            self.replay.add_batch(
                e,
                obs[e, -1],
                actions=actions[e],
                rewards=rewards[e],
                terminated=terminated[e],
                truncated=truncated[e],
                life_lost=(new_lives[e] < self.lives[e]) & ~terminated[e],
                first=self.first[e],
            )
        # An env that just acted continues its episode; one that was resetting now shows a first state.
        self.first = ~storing
        self.resetting = storing & (terminated | truncated)
        self.lives = np.asarray(new_lives).copy()
        return storing
