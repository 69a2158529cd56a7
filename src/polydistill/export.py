"""Export a teacher's recorded experience to the object store, and describe datasets.

``export_buffer`` re-shards a dataset (typically the teacher run's local ``dataset/``) into the configured
codec and shard size, adds the teacher's Q-values computed on the original frames, and writes it to any
store URI (``s3://bucket/prefix`` or ``file:///path``): shards in parallel first, manifest last. Exporting
the same data again produces the same bytes and leaves the store as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .buffer import RAW_STACK_BYTES, DatasetError, DatasetWriter, ExperienceDataset, Manifest
from .checkpoint import CheckpointError, sha256_file
from .config import ExportConfig
from .networks import pick_device
from .progress import progress
from .store import open_store, redact

log = logging.getLogger(__name__)


def resolve_source(source: str | Path) -> str:
    """A dataset URI from a dataset URI/path or a teacher run directory (its ``dataset/``)."""
    s = str(source)
    p = Path(s[len("file://") :] if s.startswith("file://") else s)
    if "://" not in s or s.startswith("file://"):
        if (p / "dataset" / "manifest.json").is_file():
            return str((p / "dataset").resolve())
        if not (p / "manifest.json").is_file():
            raise DatasetError(
                f"{source} is neither a dataset (no manifest.json) nor a teacher run directory (no "
                f"dataset/manifest.json); pass --teacher-dir of a finished train-teacher run"
            )
    return s


def teacher_q_values(model: torch.nn.Module, states: np.ndarray, device: torch.device) -> np.ndarray:
    """Q-values (B, A) float32 of uint8 states (B, 4, 84, 84)."""
    with torch.inference_mode():
        return model(torch.from_numpy(states).to(device)).float().cpu().numpy()


def export_buffer(
    source: str | Path,
    dest: str,
    teacher_dir: str | Path | None,
    cfg: ExportConfig,
    create_bucket: bool = False,
    batch_size: int = 256,
    device: str = "auto",
) -> Manifest:
    """Copy the dataset at ``source`` to ``dest`` in ``cfg.codec`` shards, with teacher Q-values.

    Args:
        source: dataset URI/path, or a teacher run directory.
        dest: destination URI (``s3://bucket/prefix``, ``file:///path`` or a path).
        teacher_dir: teacher run or checkpoint directory; required unless ``cfg.q_dtype == "none"``.
        cfg: codec, zstd level, shard size, Q precision, upload parallelism.
        create_bucket: create the S3 bucket if it does not exist.
    Returns:
        The manifest written.
    """
    from .teacher import load_teacher

    src_uri = resolve_source(source)
    src = ExperienceDataset(src_uri, max_decoded=2)
    if src.codec == "latent":
        raise DatasetError(f"{src_uri} is a latent dataset; export-buffer takes frame datasets")
    want_q = cfg.q_dtype != "none"
    model = None
    dev = pick_device(device)
    teacher_sha = None
    if want_q:
        if teacher_dir is None:
            raise DatasetError("export with Q-values needs --teacher DIR (or set q_dtype: none)")
        model, meta = load_teacher(teacher_dir, dev)
        if meta["game"] != src.game:
            raise CheckpointError(
                f"teacher {teacher_dir} plays {meta['game']}, but dataset {src_uri} is {src.game}; "
                f"pair each dataset with its own teacher"
            )
        teacher_sha = meta.get("sha256")
    store = open_store(dest, create_bucket=create_bucket)  # fails fast: bad endpoint, credentials, bucket
    m = src.manifest
    manifest = Manifest(
        game=m.game,
        num_actions=m.num_actions,
        action_meanings=m.action_meanings,
        observation=m.observation,
        codec=cfg.codec,
        source={**m.source, "exported_from": redact(src_uri), "teacher_sha256": teacher_sha},
    )
    bar = progress(None, f"export-buffer {m.game}", "B")
    writer = DatasetWriter(
        store,
        manifest,
        shard_steps=cfg.shard_steps,
        level=cfg.zstd_level,
        q_dtype=cfg.q_dtype if want_q else None,
        workers=cfg.upload_workers,
        progress=bar.update,
    )
    try:
        for shard in src.iter_shards():
            c = shard.info.context  # context rows repeat the previous shard's tail: skip them
            rows = np.arange(c, len(shard.arrays["actions"]))
            cols: dict[str, Any] = {
                k: shard.arrays[k][c:]
                for k in ("actions", "rewards", "terminated", "truncated", "first", "valid")
            }
            assert shard.frames is not None  # open_frames_dataset refused latent datasets
            cols["frames"] = shard.frames[c:]
            if model is not None:
                q = np.zeros((len(rows), m.num_actions), dtype=np.float32)
                valid = np.flatnonzero(shard.arrays["valid"][c:])
                for s in range(0, len(valid), batch_size):
                    part = valid[s : s + batch_size]
                    q[part] = teacher_q_values(model, shard.states(rows[part]), dev)
                cols["q"] = q
            writer.add(**cols)
        out = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return out


def buffer_info(uri: str, verify: bool = False) -> dict[str, Any]:
    """Facts about a dataset: steps, episodes, shards, codec, bytes per state, compression ratios, and (with
    ``verify``) whether every shard's checksum verifies."""
    ds = ExperienceDataset(uri, max_decoded=1)
    m = ds.manifest
    bps = m.bytes_per_state
    info: dict[str, Any] = {
        "uri": ds.uri,
        "game": m.game,
        "codec": m.codec,
        "codec_params": m.codec_params,
        "schema_version": m.schema_version,
        "steps": m.num_steps,
        "valid_states": m.num_valid_states,
        "episodes": m.num_episodes,
        "shards": len(m.shards),
        "total_bytes": m.total_bytes,
        "bytes_per_state": round(bps, 2),
        "ratio_vs_raw_stacks": round(RAW_STACK_BYTES / bps, 1) if bps else None,
        "q_values": m.q_values,
        "num_actions": m.num_actions,
        "action_meanings": m.action_meanings,
    }
    lossless = m.source.get("source_bytes_per_state")
    if m.codec == "latent" and lossless:
        info["lossless_bytes_per_state"] = lossless
        info["ratio_vs_lossless"] = round(float(lossless) / bps, 2) if bps else None
    if verify:
        problems = ds.verify_all()
        info["checksums_ok"] = not problems
        info["problems"] = problems
    return info


def checkpoint_sha(directory: str | Path) -> str:
    """sha256 of a checkpoint's weights file (for manifests naming the model that produced them)."""
    return sha256_file(Path(directory) / "model.pt")
