"""A latent student's input: each game's states seen through the autoencoder its training codes came from.

A student distilled from latents learns on decoded codes. Played on raw frames it meets inputs it never saw:
on Breakout it kept the teacher's action on 91.7 % of held-out reconstructions but 57.3 % of the same states'
frames (docs/EXPERIMENTS.md). So the distiller ships each game's autoencoder inside the student checkpoint
and the student plays through it, the way its training inputs were made: state -> ``encode`` -> the codes as
the latent dataset stores them (``code_dtype``'s quantiser) -> the distiller's decode path -> student.

Checkpoint layout (docs/CONTRACTS.md): ``autoencoders/<i>/{model.pt, metadata.json}`` per game (``i`` is the
game's position in the student's ``games``; a game's name never becomes a path) and, in the student's
``metadata.json``, ``input_autoencoders``: ``{GAME: {path, sha256, code_dtype, latent_dim, dataset}}``. The
autoencoders are written before the student's metadata, whose write completes the checkpoint, and are
refused on load unless their weights hash to what the student names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .codecs import LATENT_DTYPES as CODE_DTYPES
from .networks import ConvAutoencoder, subpixel_decoder

AUTOENCODERS_DIR = "autoencoders"
METADATA_KEY = "input_autoencoders"
_PATH = re.compile(rf"{AUTOENCODERS_DIR}/[0-9]+")


def stored_codes(z: torch.Tensor, code_dtype: str) -> torch.Tensor:
    """Codes (B, D) as a latent dataset stores and returns them, in torch so a traced graph can hold it: the
    same arithmetic as :func:`polydistill.autoencoder.roundtrip_codes` (the dataset's numpy quantiser; int8: a
    symmetric per-row max-abs scale, round half to even, clip to +-127), bit for bit."""
    z = z.float()
    if code_dtype == "float32":
        return z
    if code_dtype == "float16":
        return z.half().float()
    if code_dtype == "int8":
        scale = z.abs().amax(dim=1).clamp_min(1e-8) / 127.0
        return torch.round(z / scale[:, None]).clamp(-127, 127) * scale[:, None]
    raise ValueError(f"code_dtype {code_dtype!r} unknown; use {', '.join(CODE_DTYPES)}")


class AutoencoderInput(nn.Module):
    """uint8 states (B, frame_stack, 84, 84) -> float32 reconstructions in [0, 1] through codes at
    ``code_dtype``: what a latent student was trained on. Decodes with the sub-pixel rewrite the distiller's
    :class:`~polydistill.encode.LatentDecoder` uses, so play and training share one decode function. Build it
    on the device it runs on (the rewrite copies the weights there)."""

    def __init__(self, model: ConvAutoencoder, code_dtype: str) -> None:
        super().__init__()
        if code_dtype not in CODE_DTYPES:
            raise ValueError(f"code_dtype {code_dtype!r} unknown; use {', '.join(CODE_DTYPES)}")
        self.model = model.eval().requires_grad_(False)
        self.code_dtype = code_dtype
        self._decode = subpixel_decoder(model) or model.decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._decode(stored_codes(self.model.encode(x), self.code_dtype))


def save_input_autoencoders(
    checkpoint_dir: str | Path,
    autoencoders: Mapping[str, tuple[ConvAutoencoder, Mapping[str, Any], str, str]],
    games: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Write each game's autoencoder under ``checkpoint_dir/autoencoders/<i>/`` and return the student
    metadata's ``input_autoencoders`` entry.

    Args:
        checkpoint_dir: the student's checkpoint directory (its ``metadata.json`` is written after this).
        autoencoders: ``{game: (model, its metadata, code_dtype of the stored codes, latent dataset URI)}``.
        games: the student's games, in its order; ``i`` is a game's index there.
    """
    out: dict[str, dict[str, Any]] = {}
    for game, (model, meta, code_dtype, dataset) in autoencoders.items():
        rel = f"{AUTOENCODERS_DIR}/{list(games).index(game)}"
        keep = {k: v for k, v in meta.items() if k not in ("architecture", "sha256", "package_version")}
        written = save_checkpoint(Path(checkpoint_dir) / rel, model, keep)
        out[game] = {"path": rel, "sha256": written["sha256"], "code_dtype": code_dtype,
                     "latent_dim": int(model.latent_dim), "dataset": dataset}
    return out


def load_input_autoencoders(
    checkpoint_dir: str | Path, metadata: Mapping[str, Any], device: torch.device
) -> dict[str, AutoencoderInput]:
    """The student's per-game input autoencoders (``{}`` for a student trained on frames), each checked
    against the student's metadata: a path other than ``autoencoders/<i>``, a missing file, weights that do
    not hash to the recorded sha256, or a model that is not the recorded autoencoder is a
    :class:`~polydistill.checkpoint.CheckpointError` naming the student checkpoint."""
    entries = metadata.get(METADATA_KEY) or {}
    file = Path(checkpoint_dir) / "metadata.json"
    if not isinstance(entries, Mapping):
        raise CheckpointError(f"{file}: {METADATA_KEY} must map each game to its autoencoder; re-create the student")
    out: dict[str, AutoencoderInput] = {}
    for game, e in entries.items():
        if not isinstance(e, Mapping) or not isinstance(e.get("path"), str) or not _PATH.fullmatch(e["path"]):
            raise CheckpointError(
                f"{file}: {METADATA_KEY}[{game!r}] must name a path {AUTOENCODERS_DIR}/<index> inside the "
                f"checkpoint; re-create the student")
        d = Path(checkpoint_dir) / e["path"]
        model, meta = load_checkpoint(d, device)  # verifies model.pt against its own metadata
        if meta.get("sha256") != e.get("sha256"):
            raise CheckpointError(
                f"{d}: this autoencoder is not the one student {checkpoint_dir} was distilled through "
                f"(sha256 {str(meta.get('sha256'))[:12]}, the student names {str(e.get('sha256'))[:12]}); "
                f"re-create the student")
        if not isinstance(model, ConvAutoencoder) or model.latent_dim != e.get("latent_dim"):
            raise CheckpointError(f"{d} does not hold the {e.get('latent_dim')}-dimensional autoencoder "
                                  f"{file} names; re-create the student")
        try:
            out[str(game)] = AutoencoderInput(model, str(e.get("code_dtype")))
        except ValueError as err:
            raise CheckpointError(f"{file}: {METADATA_KEY}[{game!r}]: {err}") from None
    return out
