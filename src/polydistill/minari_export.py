"""``export-minari``: an experience dataset (:mod:`polydistill.buffer`) as a Minari dataset, for offline-RL tools.

Each episode fragment of the dataset (rows from an episode start, or a stream's first full stack, to the row
that terminates or truncates it, or the stream's last row) becomes one Minari episode of T steps:

- ``actions``, ``rewards``, ``terminations``, ``truncations``: the rows' columns, as recorded (raw rewards);
- ``observations``: T + 1 uint8 stacks (4, 84, 84), the rows' states and then the state after the last row.
  A polydistill dataset records the state each action was taken from, not the one after an episode's last
  step, so that last observation repeats the last state (``infos["repeated"]`` says where);
- ``infos["q_values"]``: the teacher's Q-values of each observation (float32, T + 1 rows), when the dataset
  has them; ``infos["step"]``: the observation's row in the dataset (the last repeated).

Observations are stored losslessly (``jpeg_encoding=False``, Minari's arrow format). The Minari dataset is
built under a hidden temporary root inside ``DIR`` and renamed to ``DIR/<dataset id>`` when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polydistill.errors import PolydistillError

from .buffer import ExperienceDataset, Shard
from .store import redact

#: Episodes handed to Minari at a time (each holds its stacks in memory: ~28 KB per step).
EPISODES_PER_BATCH = 16


class MinariExportError(PolydistillError, ValueError):
    """A dataset that cannot be exported to Minari, or a destination that is taken; nothing was written."""


@dataclass
class Fragment:
    """One episode fragment: its rows' columns and T + 1 states."""

    rows: np.ndarray  # dataset row index of each step (T,)
    states: np.ndarray  # (T + 1, frame_stack, 84, 84) uint8, the last repeated
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    q: np.ndarray | None  # (T + 1, A) float32


def _shard_fragments(shard: Shard, offset: int) -> Iterator[tuple[bool, bool, dict[str, np.ndarray]]]:
    """``(starts_new, ends, columns)`` per maximal run of valid, episode-contiguous rows of ``shard`` (context
    rows skipped); ``offset`` is the dataset row of the shard's first non-context row."""
    a = shard.arrays
    c = shard.info.context
    n = len(a["actions"])
    valid, first = a["valid"].astype(bool), a["first"].astype(bool)
    ended = a["terminated"].astype(bool) | a["truncated"].astype(bool)
    start = None
    for i in range(c, n + 1):
        boundary = i == n or not valid[i] or first[i] or (i > c and ended[i - 1])
        if start is not None and boundary:
            rows = np.arange(start, i)
            cols = {k: a[k][rows] for k in ("actions", "rewards", "terminated", "truncated")}
            cols["states"] = shard.states(rows)
            cols["rows"] = rows - c + offset
            if "q" in a:
                cols["q"] = a["q"][rows].astype(np.float32)
            # A run that opens the shard continues the previous shard's unless it starts an episode or follows
            # context rows; one that closes the shard may go on in the next.
            opens = start > c or bool(first[start])
            yield opens, bool(ended[i - 1]) or i < n, cols
            start = None
        if i < n and valid[i] and start is None:
            start = i


def fragments(ds: ExperienceDataset) -> Iterator[Fragment]:
    """The dataset's episode fragments, in row order, joined across shard boundaries."""
    pending: dict[str, list[np.ndarray]] | None = None
    offset = 0

    def close(p: dict[str, list[np.ndarray]]) -> Fragment:
        states = np.concatenate(p["states"])
        q = np.concatenate(p["q"]) if p.get("q") else None
        return Fragment(
            rows=np.concatenate(p["rows"]), states=np.concatenate([states, states[-1:]]),
            actions=np.concatenate(p["actions"]), rewards=np.concatenate(p["rewards"]),
            terminated=np.concatenate(p["terminated"]), truncated=np.concatenate(p["truncated"]),
            q=None if q is None else np.concatenate([q, q[-1:]]),
        )

    for shard in ds.iter_shards():
        for opens, ends, cols in _shard_fragments(shard, offset):
            if pending is not None and opens:
                yield close(pending)
                pending = None
            if pending is None:
                pending = {k: [] for k in cols}
            for k, v in cols.items():
                pending[k].append(v)
            if ends:
                yield close(pending)
                pending = None
        offset += len(shard.arrays["actions"]) - shard.info.context
    if pending is not None:
        yield close(pending)


@contextlib.contextmanager
def _datasets_root(path: Path) -> Iterator[None]:
    """``MINARI_DATASETS_PATH`` set to ``path`` for Minari's own functions, restored after."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def default_dataset_id(game: str) -> str:
    """``polydistill/<game>-v0``: the Minari namespace ``polydistill``, one dataset per game."""
    return f"polydistill/{game.lower()}-v0"


def _buffer(i: int, f: Fragment) -> Any:
    from minari.data_collector import EpisodeBuffer

    # Per-step scalars as lists: Minari 0.5.4's arrow reader cannot reshape 1-D numpy infos (empty shape).
    infos: dict[str, Any] = {
        "step": [int(r) for r in f.rows] + [int(f.rows[-1])],
        "repeated": [False] * len(f.rows) + [True],
    }
    if f.q is not None:
        infos["q_values"] = f.q
    return EpisodeBuffer(
        id=i, observations=f.states, actions=f.actions.astype(np.int64), rewards=f.rewards.astype(np.float64),
        terminations=f.terminated.astype(bool), truncations=f.truncated.astype(bool), infos=infos,
    )


def export_minari(dataset: str, to: str | Path, dataset_id: str | None = None) -> Path:
    """Write the experience dataset at ``dataset`` as a Minari dataset under ``to`` (``MINARI_DATASETS_PATH``
    for :func:`minari.load_dataset`); returns the Minari dataset's directory. See the module docstring."""
    try:
        import gymnasium as gym
        import minari
        from minari.dataset.minari_dataset import parse_dataset_id
    except ImportError as e:
        raise MinariExportError(f"export-minari needs minari ({e}); pip install 'polydistill[import]'") from None
    ds = ExperienceDataset(dataset, max_decoded=2)
    if ds.codec == "latent":
        raise MinariExportError(f"{redact(ds.uri)} is a latent dataset; export its frame dataset (the buffer)")
    m = ds.manifest
    name = dataset_id or default_dataset_id(m.game)
    try:
        parse_dataset_id(name)
    except ValueError:
        raise MinariExportError(f"--id {name!r} is not a Minari id: use (namespace/)name-vN, e.g. polydistill/pong-v0"
                                ) from None
    root = Path(to).expanduser().resolve()
    final = root / name
    if final.exists():
        raise MinariExportError(f"{final} already exists; remove it or pass another --id")
    tmp = root / f".minari-export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    obs_space = gym.spaces.Box(0, 255, (m.frame_stack, 84, 84), np.uint8)
    act_space = gym.spaces.Discrete(m.num_actions)
    try:
        with _datasets_root(tmp):
            made: Any = None
            batch: list[Any] = []
            for i, frag in enumerate(fragments(ds)):
                batch.append(_buffer(i, frag))
                if len(batch) == EPISODES_PER_BATCH:
                    made = _flush(minari, made, name, batch, obs_space, act_space, m)
                    batch = []
            if batch or made is None:
                made = _flush(minari, made, name, batch, obs_space, act_space, m)
        final.parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).rename(final)
        for extra in sorted(tmp.iterdir()):  # namespace metadata Minari wrote beside the dataset
            target = root / extra.name
            if not target.exists():
                extra.rename(target)
            elif extra.is_dir():
                for f in extra.iterdir():
                    if not (target / f.name).exists():
                        f.rename(target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _flush(minari: Any, made: Any, name: str, batch: list[Any], obs_space: Any, act_space: Any, m: Any) -> Any:
    if made is None:
        return minari.create_dataset_from_buffers(
            dataset_id=name, buffer=batch, observation_space=obs_space, action_space=act_space,
            algorithm_name="polydistill teacher", data_format="arrow", jpeg_encoding=False,
            description=(f"{m.game} states recorded by a polydistill teacher (actions as played, raw rewards, "
                         f"the teacher's Q-values in infos['q_values'])."),
        )
    made.update_dataset_from_buffer(batch)
    return made
