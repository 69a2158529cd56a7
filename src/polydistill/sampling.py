"""Streaming minibatch sampling from an experience dataset with bounded memory.

The sampler keeps a pool of ``pool_shards`` decoded shards, draws each minibatch uniformly from the states
of the pool, and after every ``rotate_every`` batches swaps the oldest pooled shard for the next one in a
seeded random shard order. Memory is therefore ``pool_shards`` decoded shards (a frame shard of ``S`` steps
is ``S x 7,056`` bytes of frames plus small columns; a latent shard ``S x D x 4`` bytes), whatever the size
of the dataset; the dataset's local shard cache means a shard is downloaded once over many epochs.

``fraction`` takes the most recent part of the dataset (the seed paper's "part of the buffer": the states
from the end of training, where the teacher plays best). ``split`` picks train or held-out states by a
fixed hash of the step index, so the two never overlap and do not depend on sharding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .buffer import DatasetError, ExperienceDataset, holdout_mask


@dataclass
class Batch:
    """A minibatch: ``states`` uint8 (B, 4, 84, 84) for frame datasets, or ``latents`` float32 (B, D) for
    latent datasets; ``actions`` int64 (B,); ``q`` float32 (B, A) when the dataset stores Q-values;
    ``steps`` the global step indices (B,)."""

    actions: np.ndarray
    steps: np.ndarray
    states: np.ndarray | None = None
    latents: np.ndarray | None = None
    q: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)


def _rows_for(ds: ExperienceDataset, shard_index: int, cutoff: int, split: str, holdout: float) -> np.ndarray:
    sh = ds.shard(shard_index)
    rows = sh.valid_index
    steps = sh.info.start - sh.info.context + rows
    keep = steps >= cutoff
    if split != "all":
        ho = holdout_mask(steps, holdout)
        keep &= ho if split == "holdout" else ~ho
    return rows[keep]


def batch_from_rows(ds: ExperienceDataset, shard_index: int, rows: np.ndarray) -> Batch:
    """Assemble a :class:`Batch` from rows of one decoded shard."""
    sh = ds.shard(shard_index)
    steps = sh.info.start - sh.info.context + rows
    q = sh.arrays["q"][rows].astype(np.float32) if "q" in sh.arrays else None
    acts = sh.arrays["actions"][rows].astype(np.int64)
    if sh.latents is not None:
        return Batch(actions=acts, steps=steps, latents=sh.latents[rows], q=q)
    return Batch(actions=acts, steps=steps, states=sh.states(rows), q=q)


def _concat(parts: list[Batch]) -> Batch:
    def cat(name: str) -> np.ndarray | None:
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else np.concatenate(vals)

    actions, steps = cat("actions"), cat("steps")
    assert actions is not None and steps is not None  # every batch has them
    return Batch(actions=actions, steps=steps, states=cat("states"), latents=cat("latents"), q=cat("q"))


class StreamingSampler:
    """Infinite iterator of random minibatches from one dataset, with bounded memory.

    Args:
        dataset: an opened :class:`ExperienceDataset`.
        batch_size: states per batch.
        fraction: the most recent fraction of the dataset's steps to use (1.0 = all).
        split: ``train``, ``holdout`` or ``all``.
        holdout_fraction: share of states held out (by step hash).
        pool_shards: decoded shards held at once (the memory bound).
        rotate_every: batches between swapping one pooled shard for the next.
        seed: makes the shard order and the draws reproducible.
    """

    def __init__(
        self,
        dataset: ExperienceDataset,
        batch_size: int,
        fraction: float = 1.0,
        split: str = "train",
        holdout_fraction: float = 0.05,
        pool_shards: int = 4,
        rotate_every: int = 50,
        seed: int = 0,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if split not in ("train", "holdout", "all"):
            raise ValueError(f"split must be train, holdout or all, got {split!r}")
        self.ds = dataset
        self.batch_size = batch_size
        self.split = split
        self.holdout = holdout_fraction
        self.rng = np.random.default_rng(seed)
        m = dataset.manifest
        self.cutoff = round(m.num_steps * (1.0 - fraction))
        self.shards = [i for i, s in enumerate(m.shards) if s.stop > self.cutoff and s.valid_states > 0]
        if not self.shards:
            raise DatasetError(f"dataset {dataset.uri} has no states in the requested fraction {fraction}")
        self.pool_size = max(1, min(pool_shards, len(self.shards)))
        dataset.max_decoded = max(dataset.max_decoded, self.pool_size)
        self.rotate_every = rotate_every
        self._order: deque[int] = deque()
        self._pool: dict[int, np.ndarray] = {}
        self._since_rotate = 0
        while len(self._pool) < self.pool_size:
            self._admit()

    def _next_shard(self) -> int:
        if not self._order:
            self._order.extend(int(i) for i in self.rng.permutation(self.shards))
        return self._order.popleft()

    def _admit(self) -> None:
        for _ in range(len(self.shards) + 1):
            i = self._next_shard()
            if i in self._pool:
                continue
            rows = _rows_for(self.ds, i, self.cutoff, self.split, self.holdout)
            if len(rows):
                self._pool[i] = rows
                return
            if len(self._pool) == 0 and not self._order:
                break
        if not self._pool:
            raise DatasetError(f"dataset {self.ds.uri}: no {self.split} states in the requested fraction")

    def _rotate(self) -> None:
        if len(self.shards) <= self.pool_size:
            return
        oldest = next(iter(self._pool))
        del self._pool[oldest]
        self._admit()

    def __iter__(self) -> StreamingSampler:
        return self

    def __next__(self) -> Batch:
        self._since_rotate += 1
        if self._since_rotate > self.rotate_every:
            self._since_rotate = 0
            self._rotate()
        ids = list(self._pool)
        sizes = np.array([len(self._pool[i]) for i in ids], dtype=np.float64)
        picks = self.rng.choice(len(ids), size=self.batch_size, p=sizes / sizes.sum())
        parts = []
        for j in np.unique(picks):
            rows = self._pool[ids[j]]
            n = int((picks == j).sum())
            parts.append(batch_from_rows(self.ds, ids[j], rows[self.rng.integers(0, len(rows), size=n)]))
        return parts[0] if len(parts) == 1 else _concat(parts)

    def count(self) -> int:
        """Number of states this sampler can draw from (reads every selected shard once)."""
        return sum(len(_rows_for(self.ds, i, self.cutoff, self.split, self.holdout)) for i in self.shards)


def iter_split(
    dataset: ExperienceDataset, split: str, holdout_fraction: float, batch_size: int, limit: int | None = None
) -> list[Batch]:
    """Deterministic batches of a split in step order (for validation passes), at most ``limit`` states."""
    out: list[Batch] = []
    seen = 0
    for i in range(len(dataset.manifest.shards)):
        rows = _rows_for(dataset, i, 0, split, holdout_fraction)
        for s in range(0, len(rows), batch_size):
            r = rows[s : s + batch_size]
            if limit is not None:
                r = r[: max(0, limit - seen)]
            if len(r):
                out.append(batch_from_rows(dataset, i, r))
                seen += len(r)
            if limit is not None and seen >= limit:
                return out
    return out
