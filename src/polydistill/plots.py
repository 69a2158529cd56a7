"""Pictures people would rather look at than read: learning curves, loss curves, image grids, score bars.

Uses matplotlib's Agg backend (no display needed); every function writes a PNG atomically and returns its
path.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (same length as ``values``)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(len(v)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def plot_learning_curve(
    steps: Sequence[int],
    returns: Sequence[float],
    path: str | Path,
    title: str,
    baseline: float | None = None,
) -> Path:
    """Episode return against agent steps, raw points and a moving average; an optional random baseline."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, returns, ".", alpha=0.35, label="episode return")
    if len(returns):
        ax.plot(steps, smooth(returns, max(1, len(returns) // 20)), "-", lw=2, label="moving average")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", label="random policy")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("return (unclipped)")
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_series(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Several named (x, y) curves on one axis (losses, agreement per game)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="best")
    return _save(fig, path)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]], path: str | Path, row_labels: Sequence[str] = ()
) -> Path:
    """A grid of grayscale images (uint8 or [0,1] floats); ``rows[i][j]`` is one (H, W) image."""
    plt = _figure()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(1.4 * nc, 1.5 * nr), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(nc):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(r):
                ax.imshow(r[j], cmap="gray", vmin=0, vmax=255 if r[j].dtype == np.uint8 else 1)
        if i < len(row_labels):
            axes[i][0].set_title(row_labels[i], fontsize=7, loc="left")
    return _save(fig, path)


def bar_chart(
    labels: Sequence[str],
    groups: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    ylabel: str,
    reference: float | None = None,
) -> Path:
    """Grouped bars: one group per label, one bar per series in ``groups``."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels) + 2), 4))
    n = max(1, len(groups))
    width = 0.8 / n
    x = np.arange(len(labels))
    for k, (name, vals) in enumerate(groups.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, vals, width, label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", lw=1)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_distill_curves(
    path: str | Path, games: list[str], rows: list[dict[str, float]], chance: dict[str, float]
) -> Path:
    """A distillation's held-out loss and action agreement per game against optimizer steps (two panels);
    ``rows`` are curves.csv's rows, ``chance`` each game's chance agreement (1 / number of actions)."""
    plt = _figure()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    for g in games:
        line = ax_l.plot(steps, [r[f"loss/{g}"] for r in rows], label=f"{g} held-out")[0]
        tl = [(r["step"], r[f"train_loss/{g}"]) for r in rows if np.isfinite(r.get(f"train_loss/{g}", np.nan))]
        if tl:
            ax_l.plot(*zip(*tl, strict=True), ls=":", marker=".", color=line.get_color(), label=f"{g} train")
        a = ax_a.plot(steps, [r[f"agreement/{g}"] for r in rows], label=g)[0]
        ax_a.axhline(chance[g], color=a.get_color(), ls="--", lw=0.8)
    ax_l.set_xlabel("optimizer steps")
    ax_l.set_ylabel("distillation loss")
    ax_l.set_title("loss per game")
    ax_a.set_xlabel("optimizer steps")
    ax_a.set_ylabel("agreement with teacher (argmax)")
    ax_a.set_title("action agreement (dashed: chance)")
    ax_a.set_ylim(0, 1.02)
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
