"""Shard codecs: how one shard's states are stored, one entry per codec in :data:`CODECS`.

A codec turns a shard's per-step state column (``frames`` uint8 (n, 84, 84) for the frame codecs, ``latents``
float32 (n, D) for ``latent``) into the arrays saved in the shard's ``.npz`` and back. The dataset format
(:mod:`polydistill.buffer`), the export config's allowed values (:mod:`polydistill.config`) and the manifest's
``codec`` / ``codec_params`` all read this table, so a new codec is one :class:`Codec` entry here.

================  ======  =========================================================================
codec             stores  shard arrays
================  ======  =========================================================================
``raw``           frames  ``frames`` uint8 (n, 84, 84): the newest frame of each step's state
``zstd``          frames  ``frames_zstd`` uint8 (bytes,): the frames array, zstd-compressed whole
``latent``        codes   ``latents`` float16/float32/int8 (n, D), with ``latent_scale`` float32 (n,) for int8
================  ======  =========================================================================

Frame codecs store one frame per step and rebuild 4-frame states from the step's history (so their shards
carry ``frame_stack - 1`` context rows from the previous shard); a latent codec stores one code per state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import PolydistillError


class CodecError(PolydistillError, ValueError):
    """An unknown codec or code precision; the message lists the known ones."""


#: Stored precisions of latent codes.
LATENT_DTYPES = ("float32", "float16", "int8")

Encode = Callable[[np.ndarray, Mapping[str, Any]], dict[str, np.ndarray]]
Decode = Callable[[Mapping[str, np.ndarray], int, Sequence[int], Mapping[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Codec:
    """One way to store a shard's states.

    ``encode(column, params)`` returns the arrays to save for the state column; ``decode(arrays, n,
    frame_shape, params)`` returns the column back (frames uint8 (n, *frame_shape) or codes float32 (n, D)).
    ``params(level=, dtype=)`` gives the manifest's ``codec_params`` from the writer's settings.
    """

    name: str
    stores: Literal["frames", "latents"]
    description: str
    encode: Encode
    decode: Decode
    params: Callable[..., dict[str, Any]]
    #: Shard arrays that hold the encoded column (dropped from a decoded shard once decoded).
    arrays: tuple[str, ...]

    @property
    def frames(self) -> bool:
        """Whether the codec stores frames (and shards need history context rows)."""
        return self.stores == "frames"


def _zstd() -> Any:
    import zstandard

    return zstandard


def _raw_encode(frames: np.ndarray, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"frames": np.ascontiguousarray(frames, dtype=np.uint8)}


def _raw_decode(
    arrays: Mapping[str, np.ndarray], n: int, shape: Sequence[int], params: Mapping[str, Any]
) -> np.ndarray:
    return arrays["frames"]


def _zstd_encode(frames: np.ndarray, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    blob = _zstd().ZstdCompressor(level=int(params.get("level", 3))).compress(frames.tobytes())
    return {"frames_zstd": np.frombuffer(blob, dtype=np.uint8)}


def _zstd_decode(
    arrays: Mapping[str, np.ndarray], n: int, shape: Sequence[int], params: Mapping[str, Any]
) -> np.ndarray:
    blob = arrays["frames_zstd"].tobytes()
    raw = _zstd().ZstdDecompressor().decompress(blob, max_output_size=n * int(np.prod(shape)))
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, *shape)


def quantize_latents(z: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Store float codes as float32, float16, or int8 with a per-row scale (symmetric, max-abs)."""
    z = np.asarray(z, dtype=np.float32)
    if dtype in ("float32", "float16"):
        return {"latents": z.astype(dtype)}
    if dtype == "int8":
        scale = np.maximum(np.abs(z).max(axis=1), 1e-8) / 127.0
        q = np.clip(np.round(z / scale[:, None]), -127, 127).astype(np.int8)
        return {"latents": q, "latent_scale": scale.astype(np.float32)}
    raise CodecError(f"latent dtype {dtype!r} unknown; use {', '.join(LATENT_DTYPES)}")


def dequantize_latents(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 codes from a latent shard."""
    z = arrays["latents"]
    if z.dtype == np.int8:
        return z.astype(np.float32) * arrays["latent_scale"][:, None]
    return z.astype(np.float32)


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec(
            "zstd", "frames", "zstd-compressed frames", _zstd_encode, _zstd_decode,
            lambda level=3, **_: {"level": level}, ("frames_zstd",),
        ),
        Codec("raw", "frames", "uncompressed frames", _raw_encode, _raw_decode, lambda **_: {}, ("frames",)),
        Codec(
            "latent", "latents", "autoencoder codes of the 4-frame states",
            lambda z, params: quantize_latents(z, str(params.get("dtype", "float16"))),
            lambda arrays, n, shape, params: dequantize_latents(arrays),
            lambda dtype="float16", **_: {"dtype": dtype}, ("latents", "latent_scale"),
        ),
    )
}
#: Codecs that store frames (what ``export-buffer`` may write).
FRAME_CODECS = tuple(name for name, c in CODECS.items() if c.frames)


def get_codec(name: str) -> Codec:
    """The codec called ``name``."""
    try:
        return CODECS[name]
    except KeyError:
        raise CodecError(f"codec {name!r} unknown; choose one of {', '.join(CODECS)}") from None
