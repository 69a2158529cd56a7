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
``zstd-long``     frames  ``frames_zstd`` as ``zstd`` but long-distance matching over a window of
                          ``2**window_log`` bytes (the whole shard, at least 2**27); ``columns_zstd`` uint8 (bytes,):
                          every step column and the Q-values, byte-shuffled and zstd-compressed as one
``xz``            frames  ``frames_xz`` uint8 (bytes,): the frames array as one raw LZMA2 stream (preset 9
                          extreme, a dictionary of ``2**dict_log`` bytes over the shard); ``columns_xz``
                          as ``zstd-long``'s ``columns_zstd``, in LZMA2
``latent``        codes   ``latents`` float16/float32/int8 (n, D), with ``latent_scale`` float32 (n,) for int8
================  ======  =========================================================================

A codec with ``pack_columns`` also stores the step columns (actions, rewards, flags, Q-values) in its own form;
the reader unpacks them to exactly the arrays and dtypes the other codecs store plainly (:data:`STEP_COLUMNS`,
Q at the manifest's ``q_values.dtype``), so nothing downstream sees which codec wrote a shard.

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
#: ``(name -> (dtype, values per row))`` of the step columns a shard holds, in their stored order; 0 values per
#: row is a 1-D column (n,), ``A`` a 2-D one (n, A).
ColumnSpec = Mapping[str, tuple[str, int]]
PackColumns = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], dict[str, np.ndarray]]
UnpackColumns = Callable[[Mapping[str, np.ndarray], int, ColumnSpec, Mapping[str, Any]], dict[str, np.ndarray]]

#: The per-step columns every shard holds besides the state column and Q-values, with their stored dtypes.
STEP_COLUMNS: dict[str, str] = {
    "actions": "int16",
    "rewards": "float32",
    "terminated": "bool",
    "truncated": "bool",
    "first": "bool",
    "valid": "bool",
}


@dataclass(frozen=True)
class Codec:
    """One way to store a shard's states.

    ``encode(column, params)`` returns the arrays to save for the state column; ``decode(arrays, n,
    frame_shape, params)`` returns the column back (frames uint8 (n, *frame_shape) or codes float32 (n, D)).
    ``params(level=, dtype=, shard_bytes=)`` gives the manifest's ``codec_params`` from the writer's settings
    (``level`` 0: the codec's own default; ``shard_bytes``: a full shard's raw frame bytes).
    ``pack_columns(columns, params)`` / ``unpack_columns(arrays, n, spec, params)``, when set, store the step
    columns and Q-values in the codec's form and give them back exactly.
    """

    name: str
    stores: Literal["frames", "latents"]
    description: str
    encode: Encode
    decode: Decode
    params: Callable[..., dict[str, Any]]
    #: Shard arrays that hold the encoded column (dropped from a decoded shard once decoded).
    arrays: tuple[str, ...]
    pack_columns: PackColumns | None = None
    unpack_columns: UnpackColumns | None = None

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


#: ``zstd-long`` defaults: level 19 with long-distance matching over at least 128 MiB, so a 10,000-step shard's
#: 70.6 MB of frames is one window (docs/STORAGE.md has the measurements that chose them).
LONG_LEVEL = 19
LONG_WINDOW_LOG = 27
#: zstd's largest window (2 GiB): a shard larger than that still encodes, its oldest frames out of reach.
MAX_WINDOW_LOG = 31


def _covering_log(nbytes: int, low: int, high: int) -> int:
    """The smallest power of two (its log2) holding ``nbytes``, clamped to ``[low, high]``."""
    return min(high, max(low, (max(nbytes, 1) - 1).bit_length()))


def window_log(shard_bytes: int) -> int:
    """The ``zstd-long`` window (log2 bytes) for shards of ``shard_bytes`` raw frame bytes: the whole shard,
    at least :data:`LONG_WINDOW_LOG`, at most :data:`MAX_WINDOW_LOG`."""
    return _covering_log(shard_bytes, LONG_WINDOW_LOG, MAX_WINDOW_LOG)


def _long_params(level: int = 0, shard_bytes: int = 0, **_: Any) -> dict[str, Any]:
    return {"level": level or LONG_LEVEL, "window_log": window_log(shard_bytes), "columns": "byte-shuffle+zstd"}


def _zstd_long(data: bytes, params: Mapping[str, Any]) -> bytes:
    zstandard = _zstd()
    cp = zstandard.ZstdCompressionParameters.from_level(
        int(params["level"]), window_log=int(params["window_log"]), enable_ldm=True
    )
    return bytes(zstandard.ZstdCompressor(compression_params=cp).compress(data))


def _unzstd_long(blob: np.ndarray, size: int, params: Mapping[str, Any]) -> bytes:
    """Exactly ``size`` bytes from a ``zstd-long`` blob (a blob that decodes to another size is corrupt)."""
    d = _zstd().ZstdDecompressor(max_window_size=1 << int(params["window_log"]))
    raw = d.decompress(blob.tobytes(), max_output_size=size)
    if len(raw) != size:
        raise ValueError(f"decodes to {len(raw)} bytes, expected {size}")
    return bytes(raw)


Squeeze = Callable[[bytes, Mapping[str, Any]], bytes]
Unsqueeze = Callable[[np.ndarray, int, Mapping[str, Any]], bytes]


def _frame_blob(key: str, squeeze: Squeeze, unsqueeze: Unsqueeze) -> tuple[Encode, Decode]:
    """``encode`` / ``decode`` storing a shard's frames as one blob ``key`` compressed by ``squeeze`` (and read
    back, exactly the frames' size, by ``unsqueeze(blob, size, params)``)."""

    def encode(frames: np.ndarray, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        blob = squeeze(np.ascontiguousarray(frames, dtype=np.uint8).tobytes(), params)
        return {key: np.frombuffer(blob, dtype=np.uint8)}

    def decode(arrays: Mapping[str, np.ndarray], n: int, shape: Sequence[int], params: Mapping[str, Any]
               ) -> np.ndarray:
        raw = unsqueeze(arrays[key], n * int(np.prod(shape)), params)
        return np.frombuffer(raw, dtype=np.uint8).reshape(n, *shape)

    return encode, decode


_zstd_long_encode, _zstd_long_decode = _frame_blob("frames_zstd", _zstd_long, _unzstd_long)


def _shuffle(a: np.ndarray) -> bytes:
    """A column's bytes grouped by byte position: every value's first byte, then every second byte, ...;
    a (n, A) column is taken action by action, so each byte stream is one slowly varying series."""
    a = np.ascontiguousarray(a.T if a.ndim == 2 else a)
    return np.ascontiguousarray(a.reshape(-1).view(np.uint8).reshape(-1, a.dtype.itemsize).T).tobytes()


def _unshuffle(raw: bytes, dtype: str, n: int, width: int) -> np.ndarray:
    dt = np.dtype(dtype)
    b = np.frombuffer(raw, dtype=np.uint8).reshape(dt.itemsize, -1).T
    a = np.ascontiguousarray(b).view(dt).reshape(-1)
    return np.ascontiguousarray(a.reshape(width, n).T) if width else a.copy()


def _column_packer(key: str, squeeze: Squeeze, unsqueeze: Unsqueeze) -> tuple[PackColumns, UnpackColumns]:
    """``pack_columns`` / ``unpack_columns`` storing every step column and Q, each byte-shuffled, as one blob
    ``key`` compressed by ``squeeze`` (and read back by ``unsqueeze(blob, size, params)``)."""

    def pack(columns: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        blob = squeeze(b"".join(_shuffle(columns[k]) for k in columns), params)
        return {key: np.frombuffer(blob, dtype=np.uint8)}

    def unpack(arrays: Mapping[str, np.ndarray], n: int, spec: ColumnSpec, params: Mapping[str, Any]
               ) -> dict[str, np.ndarray]:
        sizes = [n * max(1, width) * np.dtype(dtype).itemsize for dtype, width in spec.values()]
        raw = unsqueeze(arrays[key], sum(sizes), params)
        out, at = {}, 0
        for (name, (dtype, width)), size in zip(spec.items(), sizes, strict=True):
            out[name] = _unshuffle(raw[at : at + size], dtype, n, width)
            at += size
        return out

    return pack, unpack


_pack_columns, _unpack_columns = _column_packer("columns_zstd", _zstd_long, _unzstd_long)

#: ``xz`` defaults: LZMA2 preset 9 extreme, a dictionary covering a whole shard (2^27 bytes holds a 10,000-step
#: shard), from 2^20 up to 2^28: the encoder needs about 11x its dictionary in memory, whatever the data's size.
XZ_PRESET = 9
XZ_MIN_DICT_LOG, XZ_MAX_DICT_LOG = 20, 28


def _xz_params(level: int = 0, shard_bytes: int = 0, **_: Any) -> dict[str, Any]:
    if level > 9:
        raise CodecError(f"codec xz: level {level} is no xz preset; give --zstd-level 0-9 (0: the codec's own, 9)")
    dict_log = _covering_log(shard_bytes, XZ_MIN_DICT_LOG, XZ_MAX_DICT_LOG)
    return {"preset": level or XZ_PRESET, "extreme": True, "dict_log": dict_log, "columns": "byte-shuffle+xz"}


def _xz_filters(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    import lzma

    preset = int(params["preset"]) | (lzma.PRESET_EXTREME if params.get("extreme") else 0)
    return [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": 1 << int(params["dict_log"])}]


def _xz(data: bytes, params: Mapping[str, Any]) -> bytes:
    import lzma

    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_xz_filters(params))


def _unxz(blob: np.ndarray, size: int, params: Mapping[str, Any]) -> bytes:
    """Exactly ``size`` bytes from an ``xz`` blob (a blob that decodes to another size is corrupt)."""
    import lzma

    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_xz_filters(params))
    raw = d.decompress(blob.tobytes(), max_length=size + 1)  # one byte more tells "too long" from exact
    if len(raw) != size:
        raise ValueError(f"decodes to {len(raw)}{'+' if len(raw) > size else ''} bytes, expected {size}")
    return bytes(raw)


_xz_encode, _xz_decode = _frame_blob("frames_xz", _xz, _unxz)
_pack_xz_columns, _unpack_xz_columns = _column_packer("columns_xz", _xz, _unxz)


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
            lambda level=0, **_: {"level": level or 3}, ("frames_zstd",),
        ),
        Codec(
            "zstd-long", "frames", "zstd frames with long-distance matching over the shard, packed step columns",
            _zstd_long_encode, _zstd_long_decode, _long_params, ("frames_zstd", "columns_zstd"),
            _pack_columns, _unpack_columns,
        ),
        Codec(
            "xz", "frames", "LZMA2 (xz -9e) frames with a dictionary over the shard, packed step columns",
            _xz_encode, _xz_decode, _xz_params, ("frames_xz", "columns_xz"), _pack_xz_columns, _unpack_xz_columns,
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
#: The codec ``export-buffer`` writes unless told otherwise (``--codec zstd`` is the one before it).
DEFAULT_FRAME_CODEC = "zstd-long"
#: Codecs that store frames (what ``export-buffer`` may write).
FRAME_CODECS = tuple(name for name, c in CODECS.items() if c.frames)


def get_codec(name: str) -> Codec:
    """The codec called ``name``."""
    try:
        return CODECS[name]
    except KeyError:
        raise CodecError(f"codec {name!r} unknown; choose one of {', '.join(CODECS)}") from None
