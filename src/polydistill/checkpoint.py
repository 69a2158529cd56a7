"""Model checkpoints: a ``torch.save``d state_dict plus JSON metadata, written atomically.

A checkpoint directory holds ``model.pt`` (tensors only) and ``metadata.json`` (game(s), action meanings,
architecture, observation spec, config, steps, package version, sha256 of model.pt). Loading uses
``torch.load(..., weights_only=True)`` so a file from the object store is never unpickled as code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polydistill.errors import PolydistillError

from . import __version__
from .networks import build_network

MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"


class CheckpointError(PolydistillError, RuntimeError):
    """A checkpoint is missing, unreadable or inconsistent; the message names the file."""


def checkpoint_digest(checkpoint: str | Path | bytes) -> str:
    """sha256 (hex) of a checkpoint's ``metadata.json`` (which holds the weights' sha256): what names one
    exact checkpoint. ``checkpoint`` is its directory or the file's bytes (read from a store)."""
    data = checkpoint if isinstance(checkpoint, bytes) else (Path(checkpoint) / METADATA_FILE).read_bytes()
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (indented, keys sorted for stable diffs)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RUN_RECORD = "run.json"


def read_run_record(out: Path, error: type[Exception], stage: str) -> dict[str, Any] | None:
    """The ``run.json`` a previous run left in ``out`` (None when there is none).

    Raises ``error`` when ``out`` is a file or the record is corrupt; each stage then applies its own rules
    for whether that run may be resumed or reused.
    """
    if out.exists() and not out.is_dir():
        raise error(f"--out {out} is a file; give a directory for the {stage} run")
    run_file = out / RUN_RECORD
    if not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{run_file} is corrupt ({e}); use a new --out directory") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """Save ``model``'s state_dict and metadata into ``directory``; returns the metadata written.

    ``metadata`` should carry what a reader needs without the config module (games, action meanings,
    observation spec, config, steps); the architecture, package version and weights hash are added here.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, directory / MODEL_FILE)
    meta = dict(metadata)
    architecture = getattr(model, "architecture", None)
    if callable(architecture):
        meta["architecture"] = architecture()
    meta["package_version"] = __version__
    meta["sha256"] = sha256_file(directory / MODEL_FILE)
    atomic_write_json(directory / METADATA_FILE, meta)
    return meta


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """Read a checkpoint's metadata.json, with a clear error when absent or invalid."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: {directory} is not a polydistill checkpoint directory "
            f"(expected {MODEL_FILE} and {METADATA_FILE})"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt, re-create it") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}, not an object of checkpoint fields; "
                              "the checkpoint is corrupt, re-create it")
    return meta


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a tensors-only file (tensors, possibly in nested dicts and lists) with ``weights_only=True``; errors
    name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or non-weights files
        raise CheckpointError(f"{path} could not be loaded as weights ({type(e).__name__}: {e})") from e


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", verify: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved in ``directory`` and return ``(model in eval mode, metadata)``.

    With ``verify`` the weights' sha256 must match the metadata (catches a partial copy or a swapped file).
    """
    directory = Path(directory)
    meta = read_metadata(directory)
    model_path = directory / MODEL_FILE
    if verify and "sha256" in meta and model_path.is_file() and sha256_file(model_path) != meta["sha256"]:
        raise CheckpointError(f"{model_path} does not match the sha256 in {METADATA_FILE}; re-create it")
    state = load_state_dict(model_path)
    if "architecture" not in meta:
        raise CheckpointError(f"{directory / METADATA_FILE} has no 'architecture'; re-create the checkpoint")
    model = build_network(meta["architecture"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{model_path} does not fit its architecture: {e}") from e
    model.to(device).eval()
    return model, meta
