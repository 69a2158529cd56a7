"""The rows of ``tests/data/zstd-v1``: a dataset written by polydistill before the ``zstd-long`` codec (main at
4f9bac1, ``DatasetWriter(shard_steps=25, q_dtype="float16")``, codec ``zstd`` level 3), regenerated here so a
test can compare what today's reader decodes with what was written."""

from __future__ import annotations

from typing import Any

import numpy as np


def compat_rows() -> dict[str, np.ndarray]:
    """60 steps of blocky frames (two episodes) with every column, deterministic."""
    rng = np.random.default_rng(32)
    n = 60
    frames = np.repeat(np.repeat(rng.integers(0, 4, (n, 12, 12)), 7, axis=1), 7, axis=2).astype(np.uint8) * 60
    first = np.zeros(n, bool)
    first[[0, 37]] = True
    return {
        "frames": frames,
        "actions": rng.integers(0, 6, n),
        "rewards": np.where(rng.random(n) < 0.1, 1.0, 0.0),
        "terminated": np.roll(first, -1) & (np.arange(n) < n - 1),
        "truncated": np.zeros(n, bool),
        "first": first,
        "valid": np.ones(n, bool),
        "q": rng.normal(size=(n, 6)).astype(np.float32),
    }


def compat_manifest() -> dict[str, Any]:
    return {
        "game": "Pong",
        "num_actions": 6,
        "action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"],
        "observation": {"frame_stack": 4, "frame_shape": [84, 84]},
        "codec": "zstd",
    }
