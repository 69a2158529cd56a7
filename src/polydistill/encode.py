"""Stage ``encode-buffer``: a frame dataset encoded to a latent dataset with the game's autoencoder, and
:class:`LatentDecoder`, which decodes such a dataset's codes back to states for distillation.

A latent dataset (:func:`encode_buffer`) has the same format as the source with codec ``latent``: one row per
source step (context rows of the source shards are not repeated), the same step columns, the code of the
step's 4-frame state in ``latents`` and the teacher's Q-values computed on the *original* frames in ``q``.
Rows that are not valid states in the source (stream starts without frame history) keep their step slot with
zero codes and zero Q-values and ``valid=False``, so step indices, the held-out split (a hash of the step
index) and recency fractions are identical to the source's: a student trained on latents and one trained on
frames see the same states. The prefix also holds the autoencoder (``autoencoder/model.pt`` and
``autoencoder/metadata.json``, written before the manifest), and ``manifest.source`` names it:

=============================== ==============================================================
key                             meaning
=============================== ==============================================================
autoencoder_path                ``autoencoder`` (the sub-prefix holding the checkpoint)
autoencoder_sha256              sha256 of ``autoencoder/model.pt``
autoencoder_metadata_sha256     sha256 of ``autoencoder/metadata.json``
latent_dim, code_dtype          code size and stored precision
code_bytes_per_state            code bytes per state (``latent_dim x itemsize`` + 4 for int8)
dataset, dataset_sha256         the source dataset URI (no credentials) and its manifest's sha256
source_codec                    the source's codec
source_bytes_per_state          the source's stored bytes per state (the lossless figure)
teacher_sha256                  sha256 of the teacher weights that computed ``q``
=============================== ==============================================================

:class:`LatentDecoder` loads that autoencoder back, refusing it unless both files hash to what the manifest
says, and decodes codes in batches on the distillation device.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .autoencoder import (
    AUTOENCODER_DIR,
    CODE_DTYPES,
    Q_DTYPES,
    AutoencoderError,
    checkpoint_dir_of,
    code_bytes,
    load_autoencoder,
    open_frames_dataset,
)
from .buffer import MANIFEST, DatasetError, DatasetWriter, ExperienceDataset, Manifest, manifest_digest
from .checkpoint import METADATA_FILE, MODEL_FILE, CheckpointError
from .config import EncodeConfig
from .networks import FRAME_SIZE, ConvAutoencoder, QNetwork, build_network, pick_device, subpixel_decoder
from .progress import progress
from .store import ObjectNotFoundError, open_store, redact

log = logging.getLogger(__name__)

__all__ = ["LatentDecoder", "encode_buffer"]


def encode_buffer(
    dataset: str,
    autoencoder_dir: str | Path,
    teacher_dir: str | Path,
    dest: str,
    cfg: EncodeConfig | None = None,
    create_bucket: bool = False,
    **settings: Any,
) -> Manifest:
    """Encode a frame dataset into a latent dataset at ``dest`` (see the module docstring for the layout).

    Args:
        dataset: source frame dataset URI.
        autoencoder_dir: a train-autoencoder run directory (or its ``checkpoint/``) for the same game.
        teacher_dir: the game's teacher (run or checkpoint directory); its Q-values on the original frames are
            stored as the distillation targets.
        dest: destination URI (``s3://bucket/prefix``, ``file:///path`` or a path); not the source.
        cfg: the settings (:class:`polydistill.config.EncodeConfig`: code and Q-value precision, shard size,
            batch size, device); default: its defaults.
        create_bucket: create the S3 bucket if it does not exist.
        settings: fields of ``cfg`` to replace (``device="cpu"``), checked here like the config's.

    Returns:
        The manifest written.

    Raises:
        AutoencoderError: bad arguments, or a teacher/autoencoder of another game or shape than the dataset.
        DatasetError: the source is missing, latent or empty. CheckpointError: a directory is no checkpoint.
    """
    cfg = _settings(cfg, settings)
    code_dtype, shard_steps, q_dtype, batch_size = cfg.code_dtype, cfg.shard_steps, cfg.q_dtype, cfg.batch_size
    src = open_frames_dataset(dataset, "encode it")
    m = src.manifest
    dev = pick_device(cfg.device)
    ae_dir = checkpoint_dir_of(autoencoder_dir)
    ae, ae_meta, teacher, t_meta = _load_models(src, ae_dir, teacher_dir, dev)
    code_dtype = code_dtype or ae_meta.get("code_dtype", "float16")
    if code_dtype not in CODE_DTYPES:
        raise AutoencoderError(f"autoencoder {ae_dir} names code dtype {code_dtype!r}; pass --code-dtype")
    store = open_store(dest, create_bucket=create_bucket)  # fails fast: endpoint, credentials, bucket
    if store.uri.rstrip("/") == src.uri.rstrip("/"):
        raise AutoencoderError(f"--to {dest} is the source dataset; give another destination")

    ae_files = {name: (ae_dir / name).read_bytes() for name in (MODEL_FILE, METADATA_FILE)}
    ae_sha = hashlib.sha256(ae_files[MODEL_FILE]).hexdigest()
    if ae_sha != ae_meta.get("sha256"):
        raise CheckpointError(f"{ae_dir / MODEL_FILE} changed while it was read; run encode-buffer again")
    manifest = Manifest(
        game=m.game,
        num_actions=m.num_actions,
        action_meanings=m.action_meanings,
        observation=m.observation,
        codec="latent",
        source={
            "autoencoder_path": AUTOENCODER_DIR,
            "autoencoder_sha256": ae_sha,
            "autoencoder_metadata_sha256": hashlib.sha256(ae_files[METADATA_FILE]).hexdigest(),
            "latent_dim": ae.latent_dim,
            "code_dtype": code_dtype,
            "code_bytes_per_state": code_bytes(ae.latent_dim, code_dtype),
            "dataset": redact(src.uri),
            "dataset_sha256": manifest_digest(src.store),
            "source_codec": m.codec,
            "source_bytes_per_state": round(m.bytes_per_state, 3),
            "teacher_sha256": t_meta.get("sha256"),
            "q_source": "teacher Q-values on the original frames, computed at encode time",
        },
    )
    writer = DatasetWriter(store, manifest, shard_steps=shard_steps, latent_dtype=code_dtype, q_dtype=q_dtype)
    bar = progress(m.num_valid_states, f"encode-buffer {m.game}", "state")
    try:
        for sh in src.iter_shards():
            c = sh.info.context  # context rows repeat the previous shard's tail: each step is written once
            n = len(sh.arrays["actions"]) - c
            rows = np.arange(c, c + n)
            valid = np.flatnonzero(sh.arrays["valid"][c:])
            latents = np.zeros((n, ae.latent_dim), dtype=np.float32)
            q = np.zeros((n, m.num_actions), dtype=np.float32)
            for s in range(0, len(valid), batch_size):
                part = valid[s : s + batch_size]
                x = torch.from_numpy(sh.states(rows[part])).to(dev, non_blocking=True)
                with torch.no_grad():
                    latents[part] = ae.encode(x).float().cpu().numpy()
                    q[part] = teacher(x).float().cpu().numpy()
                bar.update(len(part))
            writer.add(
                **{k: sh.arrays[k][c:] for k in ("actions", "rewards", "terminated", "truncated", "first", "valid")},
                latents=latents,
                q=q,
            )
        # A manifest naming another autoencoder must not describe the files about to replace it.
        old = _existing_manifest(store)
        if old is not None and old.source.get("autoencoder_sha256") != ae_sha:
            store.delete(MANIFEST)
        for (
            name,
            data,
        ) in ae_files.items():  # before the manifest: a reader never sees codes without their model
            store.put_bytes(f"{AUTOENCODER_DIR}/{name}", data)
        out = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    log.info(
        "encoded %s into %s: %d states, %.1f bytes/state (source %.1f)",
        src.uri,
        store.uri,
        out.num_valid_states,
        out.bytes_per_state,
        m.bytes_per_state,
    )
    return out


def _settings(cfg: EncodeConfig | None, settings: dict[str, Any]) -> EncodeConfig:
    """``cfg`` (default: the defaults) with ``settings`` replaced, refused with one line unless valid."""
    unknown = sorted(set(settings) - set(EncodeConfig.model_fields))
    if unknown:
        raise AutoencoderError(f"unknown encode setting(s) {unknown}; known: {sorted(EncodeConfig.model_fields)}")
    # model_copy does not validate: the checks below name the setting the way the CLI spells it.
    out = (cfg or EncodeConfig()).model_copy(update=settings)
    _check_settings(out.code_dtype, out.shard_steps, out.q_dtype, out.batch_size)
    return out


def _check_settings(code_dtype: str | None, shard_steps: int, q_dtype: str, batch_size: int) -> None:
    if q_dtype not in Q_DTYPES:
        raise AutoencoderError(f"q_dtype {q_dtype!r} unknown; choose one of {', '.join(Q_DTYPES)}")
    if shard_steps < 1 or batch_size < 1:
        raise AutoencoderError(f"shard_steps and batch_size must be >= 1, got {shard_steps} and {batch_size}")
    if code_dtype is not None and code_dtype not in CODE_DTYPES:
        raise AutoencoderError(f"code dtype {code_dtype!r} unknown; choose one of {', '.join(CODE_DTYPES)}")


def _load_models(
    src: ExperienceDataset, ae_dir: Path, teacher_dir: str | Path, dev: torch.device
) -> tuple[ConvAutoencoder, dict[str, Any], QNetwork, dict[str, Any]]:
    """The autoencoder and the teacher, refused unless both are for the dataset's game and shapes."""
    from .teacher import load_teacher

    m = src.manifest
    ae, ae_meta = load_autoencoder(ae_dir, dev)
    teacher, t_meta = load_teacher(teacher_dir, dev)
    for what, path, meta in (("autoencoder", ae_dir, ae_meta), ("teacher", teacher_dir, t_meta)):
        if meta.get("game") != m.game:
            raise AutoencoderError(
                f"{what} {path} is for {meta.get('game')}, but dataset {src.uri} is {m.game}; use the {m.game} {what}"
            )
    if ae.frame_stack != m.frame_stack:
        raise AutoencoderError(
            f"autoencoder {ae_dir} takes {ae.frame_stack}-frame states, dataset {src.uri} has {m.frame_stack}"
        )
    if teacher.num_actions[0] != m.num_actions:
        raise AutoencoderError(
            f"teacher {teacher_dir} has {teacher.num_actions[0]} actions, dataset {src.uri} has {m.num_actions}"
        )
    return ae, ae_meta, teacher, t_meta


def _existing_manifest(store: Any) -> Manifest | None:
    try:
        return Manifest.from_json(store.get_bytes(MANIFEST).decode(), store.uri)
    except (ObjectNotFoundError, DatasetError, UnicodeDecodeError):
        return None




class LatentDecoder:
    """Decodes a latent dataset's codes to states with the autoencoder stored in the dataset.

    Build it with :meth:`from_dataset`, which refuses an autoencoder whose files do not hash to what the
    dataset's manifest names. :meth:`decode` runs batched under ``torch.no_grad()`` on the decoder's device.
    """

    def __init__(
        self,
        model: ConvAutoencoder,
        metadata: dict[str, Any],
        device: torch.device,
        batch_size: int = 1024,
        source: str = "",
    ) -> None:
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.metadata = metadata
        self.device = device
        self.batch_size = batch_size
        self.source = source
        # The sub-pixel rewrite of the last layer halves CPU decode time (the seed found latents slow).
        self._fast = subpixel_decoder(self.model)

    @property
    def latent_dim(self) -> int:
        """Code size D."""
        return self.model.latent_dim

    @property
    def frame_stack(self) -> int:
        """Frames per decoded state."""
        return self.model.frame_stack

    @property
    def game(self) -> str:
        """The game the autoencoder was trained on."""
        return str(self.metadata.get("game"))

    @property
    def sha256(self) -> str:
        """sha256 of the autoencoder's weights file."""
        return str(self.metadata.get("sha256"))

    @classmethod
    def from_dataset(
        cls, ds: ExperienceDataset, device: str | torch.device = "cpu", batch_size: int = 1024
    ) -> LatentDecoder:
        """The decoder of latent dataset ``ds`` on ``device`` (``auto`` picks CUDA when available).

        Raises:
            DatasetError: ``ds`` is not latent, its autoencoder files are missing, or they do not match the
                hashes, code size or game its manifest names.
        """
        m = ds.manifest
        if m.codec != "latent":
            raise DatasetError(f"dataset {ds.uri} has codec {m.codec!r}, not 'latent': it holds frames, not codes")
        src = m.source
        prefix = src.get("autoencoder_path", AUTOENCODER_DIR)
        try:
            model_bytes = ds.store.get_bytes(f"{prefix}/{MODEL_FILE}")
            meta_bytes = ds.store.get_bytes(f"{prefix}/{METADATA_FILE}")
        except ObjectNotFoundError:
            raise DatasetError(
                f"latent dataset {ds.uri} lacks its autoencoder ({prefix}/{MODEL_FILE}, "
                f"{prefix}/{METADATA_FILE}); re-run encode-buffer"
            ) from None
        model_sha = hashlib.sha256(model_bytes).hexdigest()
        meta_sha = hashlib.sha256(meta_bytes).hexdigest()
        if model_sha != src.get("autoencoder_sha256") or meta_sha != src.get("autoencoder_metadata_sha256"):
            keys = ("autoencoder_sha256", "autoencoder_metadata_sha256")
            want = "/".join(str(src.get(k))[:12] for k in keys)
            raise DatasetError(
                f"latent dataset {ds.uri}: the autoencoder stored in {prefix}/ does not match the one its "
                f"manifest names (model/metadata sha256 {model_sha[:12]}/{meta_sha[:12]}, manifest {want}); "
                f"refusing to decode with another model. Re-run encode-buffer"
            )
        try:
            meta = json.loads(meta_bytes)
            state = torch.load(io.BytesIO(model_bytes), map_location="cpu", weights_only=True)
            model = build_network(meta["architecture"])
            model.load_state_dict(state)
        except Exception as e:  # json, torch and shape errors: all mean the stored autoencoder is unusable
            raise DatasetError(
                f"latent dataset {ds.uri}: cannot load its autoencoder ({type(e).__name__}: {e}); re-run encode-buffer"
            ) from e
        if not isinstance(model, ConvAutoencoder):
            raise DatasetError(f"latent dataset {ds.uri}: {prefix}/ holds a {type(model).__name__}, not an autoencoder")
        if model.latent_dim != src.get("latent_dim") or meta.get("game") != m.game:
            raise DatasetError(
                f"latent dataset {ds.uri}: its autoencoder ({meta.get('game')}, latent_dim "
                f"{model.latent_dim}) does not fit the dataset ({m.game}, latent_dim "
                f"{src.get('latent_dim')}); re-run encode-buffer"
            )
        dev = pick_device(device) if isinstance(device, str) else device
        return cls(model, meta, dev, batch_size=batch_size, source=ds.uri)

    def decode(self, latents: np.ndarray | torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
        """States float32 (B, frame_stack, 84, 84) in [0, 1] on the decoder's device, from codes (B, D).

        Runs in batches of ``batch_size`` under ``torch.no_grad()``, not ``inference_mode``: the result is an
        ordinary tensor a student can take as input in a graph that autograd differentiates.
        """
        z = torch.as_tensor(latents)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"latents must be (B, {self.latent_dim}) for {self.source or 'this decoder'}, "
                f"got shape {tuple(z.shape)}"
            )
        z = z.to(self.device, dtype=torch.float32, non_blocking=True)
        decode = self._fast or self.model.decode
        with torch.no_grad():
            if len(z) <= self.batch_size:
                return decode(z)
            out = torch.empty((len(z), self.frame_stack, FRAME_SIZE, FRAME_SIZE), device=self.device)
            for s in range(0, len(z), self.batch_size):
                out[s : s + self.batch_size] = decode(z[s : s + self.batch_size])
            return out


