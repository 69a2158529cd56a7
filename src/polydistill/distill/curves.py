"""A distillation's learning curves: ``curves.csv`` (one row per validation) and ``curves.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..plots import plot_distill_curves

CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"


def _curve_columns(games: list[str]) -> list[str]:
    cols = ["step", "samples_per_second"]
    for g in games:
        cols += [f"loss/{g}", f"agreement/{g}", f"train_loss/{g}"]
    return cols


def _write_curves(
    out: Path, games: list[str], rows: list[dict[str, float]], chance: dict[str, float], plot: bool = True
) -> tuple[Path, Path]:
    cols = _curve_columns(games)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / CURVES_CSV, buf.getvalue().encode())
    if plot:
        plot_distill_curves(out / CURVES_PNG, games, rows, chance)
    return out / CURVES_CSV, out / CURVES_PNG
