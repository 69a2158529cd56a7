"""Per-game state autoencoder: train it on a game's experience dataset (stage ``train-autoencoder``).

The seed paper compresses each 4x84x84 state to 64 float32 codes with a convolutional autoencoder trained per
game, stores the codes, and decodes them for distillation. Its reconstructions were blurred and Breakout's
ball vanished, so the student trained on decoded states failed. This module measures that failure honestly
and offers the remedies compared in ``benchmarks/autoencoder.py``:

- ``loss="bce"``: binary cross-entropy on the decoder's logits instead of squared error after its sigmoid.
  On games with black backgrounds (DemonAttack) the sigmoid saturates towards 0 over most of the screen and
  squared error's gradient there, ``2 (y - t) y (1 - y)``, vanishes: the network settles on the mean frame and
  drops every sprite, the player's cannon included. Cross-entropy's gradient on the logits is ``y - t``, which
  does not vanish, and the same training budget then reconstructs where the objects are;
- ``loss="weighted"`` / ``"weighted_bce"``: the error with ``changed_weight`` times the weight on *changed
  pixels*, pixels that differ from the same pixel in an adjacent frame of the stack (where small moving
  objects live; stack padding at episode starts does not count as change);
- ``teacher_weight``: a term that asks the reconstruction to look the same *to the game's teacher*, the
  relative squared error between the teacher's convolutional features of the reconstruction and of the
  original (:func:`teacher_feature_error`). Pixel losses spend the code on what is large on screen; a policy
  depends on small things (shots, the player's cannon); docs/EXPERIMENTS.md has what the term did on the ``cpu``
  profile's games (the held-out ``teacher_agreement`` metric, measured whenever the teacher is given);
- ``teacher_policy_weight``: a term on the teacher's *action*: the KL from its policy on the original to its
  policy on the reconstruction, ``softmax(Q / 0.01)`` each (:func:`teacher_policy_kl`). Features can stay
  close while the greedy action flips where the teacher's Q-values are close (the ball a few pixels from
  the paddle); this term weighs those states as sharply as the distiller's targets do;
- a larger ``latent_dim``;
- codes stored as float32, float16 or int8 (per-state max-abs scale) to trade bytes for fidelity.

Metrics (held-out states, decoded from codes at the stored precision, pixels in [0, 1]): ``mse``, ``psnr``
(dB, ``10 log10(1 / mse)``), ``changed_mse`` (MSE over changed pixels only, the error a ball cannot hide in),
``changed_fraction`` (share of pixels that are changed) and ``bytes_per_state`` (code bytes per state).

Training (:func:`train_autoencoder`) writes into its run directory::

    run.json            dataset, its manifest's sha256, config, status
    resume/             the last epoch's resume point (resume.pt: model, optimizer, epoch, history), kept to extend
    checkpoint/         model.pt + metadata.json (kind "autoencoder"; see docs/CONTRACTS.md)
    history.csv         one row per epoch (epoch 0 = the untrained network)
    loss.png            training loss and held-out errors against training states seen
    reconstructions.png originals next to reconstructions, for the held-out states with the most change

The trained autoencoder encodes a buffer into a latent dataset in :mod:`polydistill.encode`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import numpy as np
import torch
from torch import nn

from polydistill.errors import PolydistillError

from . import __version__
from .buffer import (
    MANIFEST,
    RAW_STACK_BYTES,
    DatasetError,
    ExperienceDataset,
    manifest_digest,
    open_dataset,
)
from .checkpoint import (
    MODEL_FILE,
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from .codecs import LATENT_DTYPES, dequantize_latents, quantize_latents
from .config import AutoencoderConfig
from .networks import (
    ConvAutoencoder,
    QNetwork,
    make_adam,
    pick_device,
    scheduled_lr,
    set_lr,
)
from .progress import MetricsCallback, progress
from .rundir import RunDir
from .sampling import Batch, StreamingSampler, iter_split
from .store import redact

log = logging.getLogger(__name__)


RESUME_FILE = "resume.pt"
HISTORY_CSV = "history.csv"
LOSS_PNG = "loss.png"
GRID_PNG = "reconstructions.png"
CHECKPOINT_DIR = "checkpoint"
AUTOENCODER_DIR = "autoencoder"  # sub-prefix of a latent dataset holding its autoencoder
CODE_DTYPES = LATENT_DTYPES
Q_DTYPES = ("float16", "float32")
VALIDATION_STATES = 2048  # held-out states evaluated per epoch (bounded: ~58 MB of uint8 stacks)
GRID_STATES = 6
# Settings that may change between a run and its continuation: more epochs extends it, a device is a place.
_HISTORY_FIELDS = (
    "epoch",
    "steps",
    "states_seen",
    "train_loss",
    "mse",
    "psnr",
    "changed_mse",
    "changed_fraction",
    "teacher_agreement",
    "teacher_feature_error",
    "seconds",
)


class AutoencoderError(PolydistillError, ValueError):
    """Bad input to an autoencoder stage (found before any expensive work); the message says how to fix it."""


@dataclass
class AutoencoderResult:
    """Where a finished autoencoder run put its outputs, and its final held-out metrics."""

    out_dir: Path
    checkpoint_dir: Path
    metrics: dict[str, float]
    grid_png: Path
    history_csv: Path
    loss_png: Path
    epochs: int
    steps: int


# ----------------------------------------------------------------------------------------------- measures


def code_bytes(latent_dim: int, code_dtype: str) -> int:
    """Bytes one state's code takes in a shard: ``latent_dim x itemsize``, plus a float32 scale for int8."""
    if code_dtype not in CODE_DTYPES:
        raise AutoencoderError(f"code dtype {code_dtype!r} unknown; choose one of {', '.join(CODE_DTYPES)}")
    return latent_dim * np.dtype(code_dtype).itemsize + (4 if code_dtype == "int8" else 0)


def changed_mask(states: torch.Tensor) -> torch.Tensor:
    """Bool (B, F, H, W): pixels that differ from the same pixel in an adjacent frame of the stack.

    A pixel of frame ``k`` is changed when it differs from frame ``k-1`` or ``k+1``, so a moving object is
    marked where it is and where it was in every frame. All-zero frames are stack padding before an episode's
    first frame: a difference against them is not change.
    """
    if states.dim() != 4:
        raise ValueError(f"states must be (B, frames, H, W), got shape {tuple(states.shape)}")
    mask = torch.zeros(states.shape, dtype=torch.bool, device=states.device)
    if states.shape[1] < 2:
        return mask
    real = states.flatten(2).amax(dim=2) > 0  # (B, F): False for padding frames
    diff = (states[:, 1:] != states[:, :-1]) & (real[:, 1:] & real[:, :-1])[:, :, None, None]
    mask[:, 1:] |= diff
    mask[:, :-1] |= diff
    return mask


def reconstruction_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    changed: torch.Tensor | None,
    changed_weight: float = 1.0,
    kind: str = "mse",
) -> torch.Tensor:
    """Mean per-pixel error, or with ``changed`` the weighted mean with weight ``changed_weight`` on changed
    pixels and 1 elsewhere (normalised by the total weight, so it stays on the scale of the unweighted loss).

    ``kind="mse"``: ``recon`` are pixels in [0, 1] and the error is squared. ``kind="bce"``: ``recon`` are the
    decoder's logits and the error is binary cross-entropy against the [0, 1] target pixels.
    """
    if kind == "bce":
        err = nn.functional.binary_cross_entropy_with_logits(recon, target, reduction="none")
    elif kind == "mse":
        err = (recon - target).square()
    else:
        raise ValueError(f"reconstruction loss kind {kind!r} unknown; use 'mse' or 'bce'")
    if changed is None or changed_weight == 1.0:
        return err.mean()
    w = 1.0 + (changed_weight - 1.0) * changed.to(err.dtype)
    return (w * err).sum() / w.sum()


def roundtrip_codes(z: torch.Tensor, code_dtype: str) -> torch.Tensor:
    """Codes as a reader gets them back after storage at ``code_dtype`` (the dataset's own quantiser)."""
    if code_dtype == "float32":
        return z.float()
    stored = quantize_latents(z.detach().float().cpu().numpy(), code_dtype)
    return torch.from_numpy(dequantize_latents(stored)).to(z.device)


def reconstruct(model: ConvAutoencoder, states: np.ndarray | torch.Tensor, code_dtype: str = "float32") -> torch.Tensor:
    """Reconstructions in [0, 1] of uint8 states, through codes stored at ``code_dtype`` (no gradients)."""
    device = next(model.parameters()).device
    x = torch.as_tensor(states).to(device)
    with torch.no_grad():
        return model.decode(roundtrip_codes(model.encode(x), code_dtype))


def teacher_feature_error(teacher: QNetwork, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The teacher's convolutional features of ``recon`` against those of ``target`` (both [0, 1] floats):
    ``mean((f(recon) - f(target))^2) / mean(f(target)^2)``, a relative squared error (0 = the teacher sees
    the same thing; 1 = as far off as all-zero features). Differentiable in ``recon``; ``target``'s features
    carry no gradient. This is what a reconstruction must keep for a policy: what the teacher looks at, not
    every pixel."""
    with torch.no_grad():
        f_t = teacher.torso(target)
    f_r = teacher.torso(recon)
    return (f_r - f_t).square().mean() / f_t.square().mean().clamp_min(1e-8)


#: The teacher's softmax temperature in the policy term: the distiller's default ``tau`` (Policy Distillation's).
POLICY_TAU = 0.01


def teacher_policy_kl(teacher: QNetwork, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(pi(target) || pi(recon)) in nats, mean over the batch, with pi = softmax(Q_teacher / POLICY_TAU): how
    far the teacher's policy on the reconstruction is from its policy on the original. Differentiable in
    ``recon``. Features can be close while the greedy action flips where the Q-values are close; this term
    weighs the action itself, as sharply as the distiller's targets do."""
    from .losses import kl_loss

    with torch.no_grad():
        q_t = teacher(target)
    return kl_loss(q_t, teacher(recon).float() / POLICY_TAU, POLICY_TAU)


def evaluate_reconstruction(
    model: ConvAutoencoder,
    batches: Iterable[np.ndarray],
    code_dtype: str = "float32",
    teacher: QNetwork | None = None,
) -> dict[str, float]:
    """Held-out reconstruction metrics over uint8 state batches (B, F, 84, 84), pooled over all pixels.

    Returns ``mse``, ``psnr`` (dB on [0, 1] pixels), ``changed_mse`` (NaN when no pixel changed),
    ``changed_fraction`` and ``states``. With ``teacher``, also ``teacher_agreement`` (share of states where
    the teacher's greedy action on the reconstruction equals its action on the original: whether the code
    kept what the policy needs) and ``teacher_feature_error`` (:func:`teacher_feature_error`, pooled).
    """
    device = next(model.parameters()).device
    se_sum = changed_se = 0.0
    pixels = changed_px = states = agree = 0
    feat_se = feat_sq = 0.0
    was_training = model.training
    model.eval()
    for b in batches:
        x = torch.as_tensor(b).to(device)
        recon = reconstruct(model, x, code_dtype)
        target = x.float().div(255.0)
        se = (recon - target).square()
        mask = changed_mask(x)
        se_sum += float(se.sum())
        changed_se += float(se[mask].sum())
        pixels += se.numel()
        changed_px += int(mask.sum())
        states += len(x)
        if teacher is not None:
            with torch.no_grad():
                f_t, f_r = teacher.torso(target), teacher.torso(recon)
                feat_se += float((f_r - f_t).square().sum())
                feat_sq += float(f_t.square().sum())
                agree += int((teacher.heads[0](f_r).argmax(1) == teacher.heads[0](f_t).argmax(1)).sum())
    model.train(was_training)
    if states == 0:
        raise ValueError("evaluate_reconstruction needs at least one state")
    mse = se_sum / pixels
    out = {
        "mse": mse,
        "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-12)),
        "changed_mse": changed_se / changed_px if changed_px else float("nan"),
        "changed_fraction": changed_px / pixels,
        "states": float(states),
    }
    if teacher is not None:
        out["teacher_agreement"] = agree / states
        out["teacher_feature_error"] = feat_se / max(feat_sq, 1e-12)
    return out


# ----------------------------------------------------------------------------------------------- inputs


def _local_path(uri: str) -> Path | None:
    """The directory a ``file://`` URI or plain path names; None for remote URIs."""
    if "://" not in uri:
        return Path(uri).expanduser()
    if uri.lower().startswith("file://"):
        return Path(url2pathname(unquote(urlsplit(uri).path)))
    return None


def open_frames_dataset(uri: str, purpose: str) -> ExperienceDataset:
    """Open a frame dataset, refusing a missing, latent or empty one (before any expensive work)."""
    if not isinstance(uri, str) or not uri.strip():
        raise DatasetError(f"no dataset given to {purpose}: pass a dataset URI (s3://bucket/prefix or a path)")
    local = _local_path(uri)
    # Checked here because opening a local store creates its directory: a typo must not leave one behind.
    if local is not None and not (local / MANIFEST).is_file():
        raise DatasetError(
            f"no dataset at {uri}: {local / MANIFEST} does not exist. Pass the dataset/ of a "
            f"train-teacher run or an export-buffer destination"
        )
    ds = open_dataset(uri)
    if ds.codec == "latent":
        raise DatasetError(
            f"dataset {ds.uri} is a latent dataset (codec 'latent'); to {purpose}, pass the frame dataset it "
            f"was encoded from ({ds.manifest.source.get('dataset', 'see its manifest source')})"
        )
    if ds.manifest.num_valid_states == 0 or not ds.manifest.shards:
        raise DatasetError(f"dataset {ds.uri} is empty (no valid states); record or export more steps")
    return ds


def checkpoint_dir_of(directory: str | Path) -> Path:
    """The checkpoint directory of a run directory ``directory`` (its ``checkpoint/``), or ``directory`` itself."""
    d = Path(directory)
    return d / CHECKPOINT_DIR if (d / CHECKPOINT_DIR).is_dir() else d


def load_autoencoder(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Load an autoencoder checkpoint (a train-autoencoder run directory or its ``checkpoint/``).

    Returns ``(model in eval mode on device, metadata)``; the weights' sha256 is checked against the metadata.
    """
    d = checkpoint_dir_of(directory)
    model, meta = load_checkpoint(d, device)
    if meta.get("kind") != "autoencoder" or not isinstance(model, ConvAutoencoder):
        raise CheckpointError(
            f"{d} holds a {meta.get('kind')!r} checkpoint, not an autoencoder; pass the --out directory of "
            f"a train-autoencoder run"
        )
    return model, meta


# ----------------------------------------------------------------------------------------------- training


def _open_run_dir(
    out: Path, ds: ExperienceDataset, manifest_sha: str, cfg: AutoencoderConfig, teacher_sha: str | None = None
) -> RunDir:
    """The run directory, checked for this run (:mod:`polydistill.rundir`): the same dataset version, the same
    settings but the resume-free ones, and, when the teacher term trains it, the same teacher."""
    identity: dict[str, Any] = {"dataset_sha256": manifest_sha}
    if cfg.teacher_weight > 0 or cfg.teacher_policy_weight > 0:
        identity["teacher_sha256"] = teacher_sha
    rd = RunDir(out, "autoencoder", AutoencoderError)
    rd.open(identity, cfg.model_dump(mode="json"), cfg.resume_free, describe={
        "dataset_sha256": "on another dataset (manifest sha256 {old}), not this one ({new})",
        "teacher_sha256": "trained with another teacher (sha256 {old}, now {new}); pass the same --teacher",
    })
    return rd


def _holdout_batches(ds: ExperienceDataset, cfg: AutoencoderConfig, limit: int) -> list[Batch]:
    batches = iter_split(ds, "holdout", cfg.holdout_fraction, batch_size=256, limit=limit)
    if not batches:
        raise DatasetError(
            f"dataset {ds.uri} has no held-out states at holdout_fraction={cfg.holdout_fraction}; raise "
            f"--holdout-fraction or record more steps"
        )
    return batches


def _states(batches: list[Batch]) -> Iterator[np.ndarray]:
    """The uint8 states of frame-dataset batches (which always carry them)."""
    for b in batches:
        assert b.states is not None
        yield b.states


def _write_history(out: Path, history: list[dict[str, float]]) -> Path:
    buf = io.StringIO()
    # The teacher columns only when the run had a teacher to measure them with.
    fields = [f for f in _HISTORY_FIELDS if f in history[-1]]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_bytes(out / HISTORY_CSV, buf.getvalue().encode())
    return out / HISTORY_CSV


def _write_loss_png(out: Path, history: list[dict[str, float]], loss_curve: list[list[float]], cfg) -> Path:
    from .plots import plot_series

    x = [h["states_seen"] for h in history]
    series = {
        f"training loss ({cfg.loss})": ([c[0] for c in loss_curve], [c[1] for c in loss_curve]),
        "held-out MSE": (x, [h["mse"] for h in history]),
        "held-out changed-pixel MSE": (x, [h["changed_mse"] for h in history]),
    }
    ylabel = "squared error ([0, 1] pixels)"
    if "teacher_agreement" in history[-1]:
        # What the policy loses: the share of states whose teacher action the reconstruction changes.
        series["held-out teacher disagreement"] = (x, [1.0 - h["teacher_agreement"] for h in history])
        series["held-out teacher feature error"] = (x, [h["teacher_feature_error"] for h in history])
        ylabel = "squared error ([0, 1] pixels); share of states; relative error"
    return plot_series(series, out / LOSS_PNG, "autoencoder reconstruction error", "training states seen", ylabel)


def grid_picks(changed_counts: np.ndarray, n: int = GRID_STATES) -> np.ndarray:
    """Indices of up to ``n`` states at evenly spaced quantiles of their changed-pixel counts, from the stillest
    to the busiest (the busiest alone can all be whole-screen flashes, which hide what the grid should show)."""
    order = np.argsort(changed_counts, kind="stable")
    return order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]


def _write_grid(out: Path, model: ConvAutoencoder, val: list[Batch], code_dtype: str, game: str) -> Path:
    """Originals next to reconstructions for held-out states spread over the range of motion (:func:`grid_picks`).

    One row per state: its frames, their reconstructions through ``code_dtype`` codes, and the newest frame's
    absolute error x4. Drawn as one mosaic on one axis (dozens of matplotlib axes take seconds to render).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    counts = np.concatenate([changed_mask(torch.from_numpy(b.states)).flatten(1).sum(1).numpy() for b in val])
    states = np.concatenate([b.states for b in val])
    steps = np.concatenate([b.steps for b in val])
    pick = grid_picks(counts)
    recon = reconstruct(model, states[pick], code_dtype).cpu().numpy()
    f, size, gap = states.shape[1], states.shape[-1], 4
    cols = 2 * f + 1
    cell = size + gap
    mosaic = np.ones((len(pick) * cell, cols * cell), dtype=np.float32)  # white gaps between tiles
    for r, i in enumerate(pick):
        orig = states[i].astype(np.float32) / 255.0
        tiles = [*orig, *recon[r], np.clip(np.abs(orig[-1] - recon[r][-1]) * 4.0, 0.0, 1.0)]
        for c, tile in enumerate(tiles):
            mosaic[r * cell : r * cell + size, c * cell : c * cell + size] = tile
    fig, ax = plt.subplots(figsize=(cols * 0.95, len(pick) * 1.0 + 0.6))
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([c * cell + size / 2 for c in range(cols)])
    ax.set_xticklabels(
        [f"orig t-{f - 1 - k}" if k < f - 1 else "orig t" for k in range(f)]
        + [f"recon t-{f - 1 - k}" if k < f - 1 else "recon t" for k in range(f)]
        + ["|err| x4 (t)"],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.set_yticks([r * cell + size / 2 for r in range(len(pick))])
    ax.set_yticklabels([f"step {int(steps[i])}\n{int(counts[i])} changed px" for i in pick], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{game}: held-out states from still to busiest, reconstructed from {code_dtype} codes", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out / GRID_PNG, buf.getvalue())
    return out / GRID_PNG


def _save_resume(
    rd: RunDir,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
    loss_curve: list[list[float]],
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": history,
        "loss_curve": loss_curve,
    }
    rd.save_resume(step, lambda d: atomic_torch_save(state, d / RESUME_FILE))


def _run_record(
    ds: ExperienceDataset, manifest_sha: str, cfg: AutoencoderConfig, teacher_sha: str | None, **state: Any
) -> dict[str, Any]:
    """run.json: what the run trains on and with (compared on resume by :func:`_open_run_dir`), plus ``state``."""
    return {
        "dataset": redact(ds.uri),
        "dataset_sha256": manifest_sha,
        "teacher_sha256": teacher_sha,
        "game": ds.game,
        "config": cfg.model_dump(mode="json"),
        "package_version": __version__,
        **state,
    }


def _load_matching_teacher(
    teacher: str | Path | None, ds: ExperienceDataset, cfg: AutoencoderConfig
) -> tuple[QNetwork | None, str | None]:
    """The frozen teacher for the teacher-feature term and metrics and its sha256, checked against the dataset
    first."""
    if teacher is None:
        for name in ("teacher_weight", "teacher_policy_weight"):
            if getattr(cfg, name) > 0:
                raise AutoencoderError(
                    f"{name}={getattr(cfg, name)} needs the game's teacher: pass --teacher DIR (the teacher "
                    f"run that computed {ds.game}'s Q-values) or set {name} to 0"
                )
        return None, None
    from .teacher import load_teacher

    try:
        net, meta = load_teacher(teacher, "cpu")
    except (CheckpointError, FileNotFoundError) as e:
        raise AutoencoderError(f"--teacher {teacher}: {e}") from e
    if meta.get("game") != ds.game:
        raise AutoencoderError(
            f"--teacher {teacher} plays {meta.get('game')}, but dataset {redact(ds.uri)} is {ds.game}; "
            f"pass that game's teacher"
        )
    expected = ds.manifest.other_q_teacher(meta.get("sha256"))
    if expected:
        raise AutoencoderError(
            f"--teacher {teacher} (sha256 {meta['sha256'][:12]}) is not the teacher whose Q-values dataset "
            f"{redact(ds.uri)} holds (sha256 {expected[:12]}); pass the teacher it was exported with"
        )
    net.eval()
    net.requires_grad_(False)
    return net, meta.get("sha256")


def train_autoencoder(
    dataset: str,
    cfg: AutoencoderConfig,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    *,
    teacher: str | Path | None = None,
    max_val_states: int = VALIDATION_STATES,
    stop_after_epochs: int | None = None,
) -> AutoencoderResult:
    """Train a convolutional autoencoder on the states of one game's frame dataset.

    Each epoch draws ``min(training states, cfg.max_train_states or all)`` states (uniformly, streamed with
    bounded memory by :class:`~polydistill.sampling.StreamingSampler` from the ``train`` split) in batches of
    ``cfg.batch_size``, then evaluates up to ``max_val_states`` held-out states with codes at
    ``cfg.code_dtype``. The number of training states is estimated from the manifest as
    ``valid states x (1 - holdout_fraction)`` (the split is a uniform hash), so no shard is read to count it.

    Args:
        dataset: frame dataset URI (``s3://bucket/prefix``, ``file:///path`` or a path).
        cfg: the resolved autoencoder config.
        out_dir: run directory. A run there with the same dataset and settings is resumed after its last
            finished epoch, extended when ``cfg.epochs`` grew, and reused as is when finished.
        on_metrics: called with ``(metrics, optimizer step)`` after every epoch and once at the end.
        teacher: the game's teacher (run or checkpoint directory). With it the held-out metrics add
            ``teacher_agreement`` and ``teacher_feature_error``; ``cfg.teacher_weight > 0`` needs it and adds
            ``teacher_weight x teacher_feature_error`` to the training loss.
        max_val_states: held-out states evaluated per epoch.
        stop_after_epochs: stop (as if killed) after this many epochs of this call; for tests of resume.

    Returns:
        An :class:`AutoencoderResult` whose ``metrics`` hold the final ``mse``, ``psnr``, ``changed_mse``,
        ``changed_fraction``, ``bytes_per_state`` and ``compression_vs_raw``.

    Raises:
        DatasetError: the dataset is missing, latent, empty, or has no held-out states.
        AutoencoderError: ``out_dir`` is a file, not empty, or holds a run of other data or settings; or
            ``teacher_weight > 0`` without a teacher, or a teacher of another game or other Q-values.
    """
    out = Path(out_dir)
    ds = open_frames_dataset(dataset, "train an autoencoder")
    manifest_sha = manifest_digest(ds.store)
    teacher_net, teacher_sha = _load_matching_teacher(teacher, ds, cfg)
    rd = _open_run_dir(out, ds, manifest_sha, cfg, teacher_sha)
    prev = rd.previous
    if prev is not None and rd.finished and prev.get("epochs", 0) >= cfg.epochs:
        log.info("autoencoder run in %s is finished (%s epochs); reusing it", out, prev.get("epochs"))
        return _result_from_disk(out, prev)
    device = pick_device(cfg.device)
    if teacher_net is not None:
        teacher_net = teacher_net.to(device)
    val = _holdout_batches(ds, cfg, max_val_states)
    est_train = round(ds.manifest.num_valid_states * (1.0 - cfg.holdout_fraction))
    if est_train < 1:
        raise DatasetError(f"dataset {ds.uri} has no training states at holdout_fraction={cfg.holdout_fraction}")
    per_epoch = min(est_train, cfg.max_train_states or est_train)
    steps_per_epoch = max(1, math.ceil(per_epoch / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch

    rd.begin(_run_record(ds, manifest_sha, cfg, teacher_sha))
    torch.manual_seed(cfg.seed)
    frame_stack = ds.manifest.frame_stack
    model = ConvAutoencoder(cfg.latent_dim, frame_stack).to(device)
    opt = make_adam(model.parameters(), device, lr=cfg.learning_rate)
    epoch, step = 0, 0
    history: list[dict[str, float]] = []
    loss_curve: list[list[float]] = []  # [states seen, mean training loss over a window]
    point = rd.latest_resume(required=(RESUME_FILE,)) if prev is not None else None
    if point is not None:
        try:
            state = load_state_dict(point / RESUME_FILE)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (CheckpointError, KeyError, RuntimeError) as e:
            raise AutoencoderError(
                f"cannot resume from {point / RESUME_FILE}: {e}. Delete {rd.resume_root} to start over"
            ) from e
        epoch, step = int(state["epoch"]), int(state["step"])
        history, loss_curve = list(state["history"]), list(state["loss_curve"])
        log.info("resuming %s autoencoder after epoch %d (%s)", ds.game, epoch, out)
    else:
        # Epoch 0: the untrained network, so the history shows how far training moved the error.
        m0 = evaluate_reconstruction(model, _states(val), cfg.code_dtype, teacher_net)
        history.append({"epoch": 0, "steps": 0, "states_seen": 0, "train_loss": float("nan"), **m0, "seconds": 0.0})

    weighted = cfg.loss.startswith("weighted")
    kind = "bce" if cfg.loss.endswith("bce") else "mse"
    window = max(1, steps_per_epoch // 20)
    bar = progress(
        cfg.epochs * steps_per_epoch * cfg.batch_size,
        f"train-autoencoder {ds.game}",
        "state",
        initial=epoch * steps_per_epoch * cfg.batch_size,
    )
    epochs_this_call = 0
    try:
        while epoch < cfg.epochs:
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                raise KeyboardInterrupt(f"stop_after_epochs={stop_after_epochs} reached after epoch {epoch}")
            t0 = time.monotonic()
            # One sampler per epoch, seeded by the epoch: a resumed run draws what an unbroken run would.
            sampler = StreamingSampler(
                ds,
                cfg.batch_size,
                split="train",
                holdout_fraction=cfg.holdout_fraction,
                seed=cfg.seed * 100_003 + epoch,
            )
            model.train()
            epoch_loss, win_loss, win_n = 0.0, 0.0, 0
            for _ in range(steps_per_epoch):
                x = torch.from_numpy(next(sampler).states).to(device, non_blocking=True)
                target = x.float().div_(255.0)
                z = model.encode(target)
                recon = model.decode_logits(z) if kind == "bce" else model.decode(z)
                loss = reconstruction_loss(
                    recon, target, changed_mask(x) if weighted else None, cfg.changed_weight, kind
                )
                if cfg.teacher_weight > 0 or cfg.teacher_policy_weight > 0:
                    assert teacher_net is not None  # _load_matching_teacher requires one for these terms
                    image = torch.sigmoid(recon) if kind == "bce" else recon
                    if cfg.teacher_weight > 0:
                        loss = loss + cfg.teacher_weight * teacher_feature_error(teacher_net, image, target)
                    if cfg.teacher_policy_weight > 0:
                        loss = loss + cfg.teacher_policy_weight * teacher_policy_kl(teacher_net, image, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                set_lr(opt, scheduled_lr(cfg.learning_rate, cfg.lr_schedule, step, total_steps))
                opt.step()
                step += 1
                lv = float(loss.detach())
                epoch_loss += lv
                win_loss += lv
                win_n += 1
                bar.update(len(x))
                if win_n == window:
                    loss_curve.append([float(step * cfg.batch_size), win_loss / win_n])
                    bar.set_postfix(epoch=epoch + 1, loss=f"{win_loss / win_n:.5f}")
                    win_loss, win_n = 0.0, 0
            epoch += 1
            epochs_this_call += 1
            m = evaluate_reconstruction(model, _states(val), cfg.code_dtype, teacher_net)
            row = {
                "epoch": epoch,
                "steps": step,
                "states_seen": step * cfg.batch_size,
                "train_loss": epoch_loss / steps_per_epoch,
                **m,
                "seconds": time.monotonic() - t0,
            }
            history.append(row)
            bar.set_postfix(epoch=epoch, psnr=f"{m['psnr']:.2f}", changed_mse=f"{m['changed_mse']:.4f}")
            log.info(
                "%s autoencoder epoch %d/%d: loss %.5f, held-out mse %.5f, psnr %.2f dB, changed mse %.5f",
                ds.game,
                epoch,
                cfg.epochs,
                row["train_loss"],
                m["mse"],
                m["psnr"],
                m["changed_mse"],
            )
            if on_metrics:
                on_metrics({k: float(v) for k, v in row.items() if k not in ("steps", "states_seen")}, step)
            _save_resume(rd, model, opt, epoch, step, history, loss_curve)
    finally:
        bar.close()
    return _finish(rd, ds, manifest_sha, cfg, model, val, history, loss_curve, epoch, step, on_metrics, teacher_sha)


def _finish(
    rd: RunDir,
    ds: ExperienceDataset,
    manifest_sha: str,
    cfg: AutoencoderConfig,
    model: ConvAutoencoder,
    val: list[Batch],
    history: list[dict[str, float]],
    loss_curve: list[list[float]],
    epoch: int,
    step: int,
    on_metrics: MetricsCallback | None,
    teacher_sha: str | None = None,
) -> AutoencoderResult:
    out = rd.out
    last = history[-1]
    metrics: dict[str, float] = {
        k: float(last[k])
        for k in ("mse", "psnr", "changed_mse", "changed_fraction", "teacher_agreement", "teacher_feature_error")
        if k in last
    }
    metrics["train_loss"] = float(last["train_loss"])
    metrics["bytes_per_state"] = float(code_bytes(cfg.latent_dim, cfg.code_dtype))
    metrics["compression_vs_raw"] = RAW_STACK_BYTES / metrics["bytes_per_state"]
    ckpt = out / CHECKPOINT_DIR
    save_checkpoint(
        ckpt,
        model,
        {
            "kind": "autoencoder",
            "game": ds.game,
            "latent_dim": cfg.latent_dim,
            "code_dtype": cfg.code_dtype,
            "loss": cfg.loss,
            "observation": ds.manifest.observation,
            "metrics": metrics,
            "dataset": redact(ds.uri),
            "dataset_sha256": manifest_sha,
            "config": cfg.model_dump(mode="json"),
            "steps": step,
            "epochs": epoch,
        },
    )
    grid = _write_grid(out, model, val, cfg.code_dtype, ds.game)
    hist = _write_history(out, history)
    loss_png = _write_loss_png(out, history, loss_curve, cfg)
    # The resume point stays: a later call with more epochs extends this run from it.
    rd.finish(_run_record(ds, manifest_sha, cfg, teacher_sha, epochs=epoch, steps=step, metrics=metrics),
              keep_resume=True)
    if on_metrics:
        on_metrics(metrics, step)
    return AutoencoderResult(
        out_dir=out,
        checkpoint_dir=ckpt,
        metrics=metrics,
        grid_png=grid,
        history_csv=hist,
        loss_png=loss_png,
        epochs=epoch,
        steps=step,
    )


def _result_from_disk(out: Path, run: dict[str, Any]) -> AutoencoderResult:
    ckpt = out / CHECKPOINT_DIR
    if not (ckpt / MODEL_FILE).is_file():
        raise AutoencoderError(f"{out} says finished but {ckpt / MODEL_FILE} is missing; use a new --out directory")
    return AutoencoderResult(
        out_dir=out,
        checkpoint_dir=ckpt,
        metrics=dict(run.get("metrics", {})),
        grid_png=out / GRID_PNG,
        history_csv=out / HISTORY_CSV,
        loss_png=out / LOSS_PNG,
        epochs=int(run.get("epochs", 0)),
        steps=int(run.get("steps", 0)),
    )


__all__ = [
    "AUTOENCODER_DIR",
    "AutoencoderError",
    "AutoencoderResult",
    "changed_mask",
    "code_bytes",
    "evaluate_reconstruction",
    "grid_picks",
    "load_autoencoder",
    "reconstruct",
    "reconstruction_loss",
    "roundtrip_codes",
    "train_autoencoder",
]
