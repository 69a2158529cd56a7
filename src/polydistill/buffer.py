"""The experience dataset format: a versioned, checksummed, sharded record of the states a teacher met.

A dataset is a prefix (in an :class:`~polydistill.store.ObjectStore`) holding numbered shards and a
``manifest.json``. Shards are written first and the manifest last, so a reader never sees half a dataset:
a prefix without a manifest is not a dataset.

Each shard is an uncompressed ``.npz`` (readable with ``numpy.load(..., allow_pickle=False)``) with one row
per agent step:

=============  ==========================  =====================================================
array          dtype / shape               meaning
=============  ==========================  =====================================================
frames         uint8 (n, 84, 84)           ``raw`` codec: the newest frame of the step's state
frames_zstd    uint8 (bytes,)              ``zstd`` codec: the frames array, zstd-compressed whole
latents        float16/float32/int8 (n,D)  ``latent`` codec: autoencoder code of the 4-frame state
latent_scale   float32 (n,)                ``latent`` codec with int8 codes: per-row dequant scale
actions        int16 (n,)                  action taken in the state
rewards        float32 (n,)                raw (unclipped) reward received after the action
terminated     bool (n,)                   the episode ended (game over) after the action
truncated      bool (n,)                   the episode was cut (frame cap) after the action
first          bool (n,)                   a new episode starts at this step (stack padding begins)
valid          bool (n,)                   the state at this step may be sampled; False for context
                                           rows that only supply history to later stacks
q              float16/float32 (n, A)      optional teacher Q-values of the state (original frames)
=============  ==========================  =====================================================

Frames are stored once per step, never as stacks. The state at step ``t`` is the stack of the frames at
``t-3..t`` of the same episode, zero-padded before the episode's first step (exactly what ale-py's vector
env produces). Every shard is self-contained: it starts with up to ``frame_stack - 1`` context rows
(``valid=False``) repeated from the previous shard, so any shard can be read and stacked alone.

Readers verify each shard's sha256 and byte size against the manifest and refuse unknown schema versions;
errors name the dataset URI and the shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .store import ObjectNotFoundError, ObjectStore, open_store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CODECS = ("zstd", "raw", "latent")
RAW_STACK_BYTES = 4 * 84 * 84  # a naive uint8 4-frame stack: 28,224 bytes per state


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete, corrupt or of an unknown version; the message names it."""


def shard_name(index: int) -> str:
    """File name of shard ``index`` (zero-padded so names sort in order)."""
    return f"shard-{index:06d}.npz"


# ----------------------------------------------------------------------------------------------- stacking


def stack_frames(
    frames: np.ndarray, first: np.ndarray, index: np.ndarray, frame_stack: int = 4
) -> np.ndarray:
    """Rebuild uint8 states (len(index), frame_stack, H, W) from frames stored once per step.

    ``first[t]`` marks the first step of an episode: frames before it are zeros in the stack, matching the
    vector env's reset state ``[0, 0, 0, f0]``. ``index`` must have at least ``frame_stack - 1`` rows of
    history in ``frames`` unless the history reaches an episode start.
    """
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    out = np.zeros((n, frame_stack, *frames.shape[1:]), dtype=np.uint8)
    out[:, -1] = frames[index]
    alive = np.ones(n, dtype=bool)
    for k in range(1, frame_stack):
        # The frame k steps back belongs to this state only if no episode started in (t-k, t].
        alive &= ~first[index - k + 1]
        src = index - k
        ok = alive & (src >= 0)
        out[ok, frame_stack - 1 - k] = frames[src[ok]]
    return out


# ----------------------------------------------------------------------------------------------- codecs


def _zstd():
    import zstandard

    return zstandard


def encode_frames(frames: np.ndarray, codec: str, level: int = 3) -> dict[str, np.ndarray]:
    """Arrays to put in a shard for these frames under ``codec`` ('raw' or 'zstd')."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if codec == "raw":
        return {"frames": frames}
    if codec == "zstd":
        blob = _zstd().ZstdCompressor(level=level).compress(frames.tobytes())
        return {"frames_zstd": np.frombuffer(blob, dtype=np.uint8)}
    raise DatasetError(f"codec {codec!r} has no frames; codecs are {CODECS}")


def decode_frames(arrays: dict[str, np.ndarray], n: int, frame_shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_frames`."""
    if "frames" in arrays:
        return arrays["frames"]
    blob = arrays["frames_zstd"].tobytes()
    raw = _zstd().ZstdDecompressor().decompress(blob, max_output_size=n * int(np.prod(frame_shape)))
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, *frame_shape)


def quantize_latents(z: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Store float codes as float32, float16, or int8 with a per-row scale (symmetric, max-abs)."""
    z = np.asarray(z, dtype=np.float32)
    if dtype in ("float32", "float16"):
        return {"latents": z.astype(dtype)}
    if dtype == "int8":
        scale = np.maximum(np.abs(z).max(axis=1), 1e-8) / 127.0
        q = np.clip(np.round(z / scale[:, None]), -127, 127).astype(np.int8)
        return {"latents": q, "latent_scale": scale.astype(np.float32)}
    raise DatasetError(f"latent dtype {dtype!r} unknown; use float32, float16 or int8")


def dequantize_latents(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """float32 codes from a latent shard."""
    z = arrays["latents"]
    if "latent_scale" in arrays:
        return z.astype(np.float32) * arrays["latent_scale"][:, None]
    return z.astype(np.float32)


# ----------------------------------------------------------------------------------------------- manifest


@dataclass
class ShardInfo:
    """One shard's entry in the manifest: rows [start, stop) of the dataset's step index (context rows
    excluded), its file name, size in bytes and sha256."""

    name: str
    start: int
    stop: int
    context: int
    bytes: int
    sha256: str
    valid_states: int


@dataclass
class Manifest:
    """What a reader needs to know about a dataset before touching a shard."""

    game: str
    num_actions: int
    action_meanings: list[str]
    observation: dict[str, Any]
    codec: str
    num_steps: int = 0
    num_episodes: int = 0
    num_valid_states: int = 0
    codec_params: dict[str, Any] = field(default_factory=dict)
    q_values: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    kind: str = "experience"

    @property
    def frame_stack(self) -> int:
        return int(self.observation.get("frame_stack", 4))

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def other_q_teacher(self, teacher_sha: str | None) -> str | None:
        """The sha256 of the teacher this dataset was exported with (whose Q-values it stores), when both that
        and ``teacher_sha`` are known and differ; else None. Used wherever a teacher is paired with a
        dataset: stored targets from another teacher would silently stand in for the one given."""
        stored = self.source.get("teacher_sha256")
        return stored if stored and teacher_sha and stored != teacher_sha else None

    @property
    def bytes_per_state(self) -> float:
        """Stored bytes per sampleable state (all arrays of all shards, Q-values included)."""
        return self.total_bytes / max(1, self.num_valid_states)

    def to_json(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "shards"}
        d["shards"] = [s.__dict__ for s in self.shards]
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}/{MANIFEST} is not valid JSON ({e}); re-export the dataset") from e
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DatasetError(
                f"{where}/{MANIFEST} has schema_version {version!r}; this polydistill reads version "
                f"{SCHEMA_VERSION}. Upgrade polydistill or re-export the dataset."
            )
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        try:
            return cls(**d)
        except TypeError as e:
            raise DatasetError(f"{where}/{MANIFEST} is malformed: {e}") from e


# ----------------------------------------------------------------------------------------------- writer


class DatasetWriter:
    """Writes a dataset shard by shard; :meth:`close` uploads shards, then the manifest.

    Rows are added with :meth:`add` in step order. Shards are staged in a local temporary directory and
    uploaded in parallel at close (or as they fill, with ``stream=True``). Nothing is readable until the
    manifest is written; an exception before then leaves no manifest. Writing the same rows again
    produces byte-identical shards, so re-exporting is idempotent.
    """

    def __init__(
        self,
        dest: ObjectStore | str,
        manifest: Manifest,
        shard_steps: int = 10_000,
        level: int = 3,
        latent_dtype: str = "float16",
        q_dtype: str | None = None,
        workers: int = 4,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        if manifest.codec not in CODECS:
            raise DatasetError(f"codec {manifest.codec!r} unknown; choose one of {CODECS}")
        if shard_steps < 1:
            raise DatasetError(f"shard_steps must be >= 1, got {shard_steps}")
        self.store = open_store(dest) if isinstance(dest, str) else dest
        self.manifest = manifest
        self.shard_steps = shard_steps
        self.level = level
        self.latent_dtype = latent_dtype
        self.q_dtype = q_dtype
        self.workers = workers
        self.progress = progress
        manifest.codec_params = (
            {"level": level}
            if manifest.codec == "zstd"
            else ({"dtype": latent_dtype} if manifest.codec == "latent" else {})
        )
        manifest.q_values = {"dtype": q_dtype} if q_dtype else None
        manifest.shards, manifest.num_steps, manifest.num_episodes, manifest.num_valid_states = [], 0, 0, 0
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_rows = 0
        self._context: dict[str, np.ndarray] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="polydistill-shards-"))
        self._staged: list[tuple[str, Path]] = []
        self._closed = False

    def add(
        self,
        *,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        first: np.ndarray,
        valid: np.ndarray,
        frames: np.ndarray | None = None,
        latents: np.ndarray | None = None,
        q: np.ndarray | None = None,
    ) -> None:
        """Append rows (one per agent step). ``frames`` for raw/zstd codecs, ``latents`` for latent."""
        cols: dict[str, np.ndarray] = {
            "actions": np.asarray(actions, dtype=np.int16),
            "rewards": np.asarray(rewards, dtype=np.float32),
            "terminated": np.asarray(terminated, dtype=bool),
            "truncated": np.asarray(truncated, dtype=bool),
            "first": np.asarray(first, dtype=bool),
            "valid": np.asarray(valid, dtype=bool),
        }
        if self.manifest.codec == "latent":
            if latents is None:
                raise DatasetError("a latent dataset needs latents= rows")
            cols["latents"] = np.asarray(latents, dtype=np.float32)
        else:
            if frames is None:
                raise DatasetError(f"a {self.manifest.codec} dataset needs frames= rows")
            cols["frames"] = np.asarray(frames, dtype=np.uint8)
        if self.q_dtype:
            if q is None:
                raise DatasetError("this dataset stores Q-values (q_dtype set) but add() got q=None")
            cols["q"] = np.asarray(q, dtype=np.float32)
        n = len(cols["actions"])
        if any(len(v) != n for v in cols.values()):
            raise DatasetError(f"add(): columns have different lengths {[len(v) for v in cols.values()]}")
        for k, v in cols.items():
            self._pending.setdefault(k, []).append(v)
        self._pending_rows += n
        while self._pending_rows >= self.shard_steps:
            self._flush(self.shard_steps)

    def _take(self, rows: int) -> dict[str, np.ndarray]:
        cat = {k: np.concatenate(v) for k, v in self._pending.items()}
        head = {k: v[:rows] for k, v in cat.items()}
        self._pending = {k: [v[rows:]] for k, v in cat.items()}
        self._pending_rows -= rows
        return head

    def _flush(self, rows: int) -> None:
        cols = self._take(rows)
        m = self.manifest
        ctx_rows = 0
        if self._context is not None and m.codec != "latent":
            # Self-contained shards: prepend history rows from the previous shard as context.
            ctx = {k: v for k, v in self._context.items()}
            ctx["valid"] = np.zeros(len(ctx["valid"]), dtype=bool)
            ctx_rows = len(ctx["valid"])
            cols = {k: np.concatenate([ctx[k], cols[k]]) for k in cols}
        keep = m.frame_stack - 1
        if m.codec != "latent" and keep > 0:
            self._context = {k: v[-keep:].copy() for k, v in cols.items()}
        arrays: dict[str, np.ndarray] = {k: v for k, v in cols.items() if k not in ("frames", "latents", "q")}
        if m.codec == "latent":
            arrays.update(quantize_latents(cols["latents"], self.latent_dtype))
        else:
            arrays.update(encode_frames(cols["frames"], m.codec, self.level))
        if "q" in cols:
            arrays["q"] = cols["q"].astype(self.q_dtype)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        index = len(m.shards)
        name = shard_name(index)
        path = self._tmp / name
        path.write_bytes(data)
        self._staged.append((name, path))
        n_new = len(cols["actions"]) - ctx_rows
        valid = int(cols["valid"][ctx_rows:].sum())
        m.shards.append(
            ShardInfo(
                name=name,
                start=m.num_steps,
                stop=m.num_steps + n_new,
                context=ctx_rows,
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                valid_states=valid,
            )
        )
        m.num_steps += n_new
        m.num_valid_states += valid
        m.num_episodes += int(cols["first"][ctx_rows:].sum())

    def close(self) -> Manifest:
        """Write remaining rows, upload all shards (in parallel), then the manifest. Returns the manifest."""
        if self._closed:
            return self.manifest
        try:
            if self._pending_rows:
                self._flush(self._pending_rows)
            if not self.manifest.shards:
                raise DatasetError("refusing to write an empty dataset (no rows were added)")
            new_manifest = self.manifest.to_json().encode()
            if self._already_there(new_manifest):
                log.info("dataset %s already holds these exact shards; nothing to upload", self.store.uri)
                return self.manifest
            # An older manifest must not describe new shards during the upload: remove it first.
            self.store.delete(MANIFEST)
            self.store.put_files(self._staged, workers=self.workers, progress=self.progress)
            self.store.put_bytes(MANIFEST, new_manifest)
            log.info(
                "wrote dataset %s: %d steps, %d shards, %.1f bytes/state",
                self.store.uri,
                self.manifest.num_steps,
                len(self.manifest.shards),
                self.manifest.bytes_per_state,
            )
        finally:
            self._closed = True
            for _, p in self._staged:
                p.unlink(missing_ok=True)
            os.rmdir(self._tmp) if self._tmp.exists() and not any(self._tmp.iterdir()) else None
        return self.manifest

    def _already_there(self, manifest_bytes: bytes) -> bool:
        """True when the store holds this manifest and every shard with its size (idempotent re-export)."""
        try:
            if not self.store.exists(MANIFEST) or self.store.get_bytes(MANIFEST) != manifest_bytes:
                return False
            return all(
                self.store.exists(s.name) and self.store.size(s.name) == s.bytes for s in self.manifest.shards
            )
        except ObjectNotFoundError:
            return False

    def abort(self) -> None:
        """Discard staged shards without writing a manifest."""
        self._closed = True
        for _, p in self._staged:
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- reader


@dataclass
class Shard:
    """A decoded shard. ``frames`` (or ``latents``) and all step columns include the context rows; use
    ``valid`` to pick sampleable states and :meth:`states` to stack them."""

    info: ShardInfo
    arrays: dict[str, np.ndarray]
    frames: np.ndarray | None
    latents: np.ndarray | None
    frame_stack: int

    @property
    def valid_index(self) -> np.ndarray:
        """Row indices (within this shard) of sampleable states."""
        return np.flatnonzero(self.arrays["valid"])

    def states(self, rows: np.ndarray) -> np.ndarray:
        """uint8 stacks (len(rows), frame_stack, 84, 84) for frame codecs."""
        if self.frames is None:
            raise DatasetError("a latent shard has no frames; decode its latents with the autoencoder")
        return stack_frames(self.frames, self.arrays["first"], rows, self.frame_stack)

    def column(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def nbytes(self) -> int:
        """Memory held by this decoded shard, in bytes."""
        extra = 0 if self.frames is None or "frames" in self.arrays else self.frames.nbytes
        return sum(a.nbytes for a in self.arrays.values()) + extra


class ExperienceDataset:
    """Reads a dataset: manifest, verified shards, stacked states.

    Shards are fetched through a local cache directory (``cache_dir``; defaults to a temporary directory,
    or ``POLYDISTILL_CACHE``) so a multi-epoch run downloads each shard once; ``file://`` datasets are read
    in place. Decoded shards are held in an LRU of ``max_decoded`` entries: memory is bounded by
    ``max_decoded x`` one decoded shard (about ``shard_steps x 7 KB`` for frame codecs).
    """

    def __init__(
        self,
        source: ObjectStore | str,
        cache_dir: str | Path | None = None,
        max_decoded: int = 4,
        verify: bool = True,
    ) -> None:
        self.store = open_store(source) if isinstance(source, str) else source
        self.uri = self.store.uri
        try:
            text = self.store.get_bytes(MANIFEST).decode()
        except ObjectNotFoundError:
            raise DatasetError(
                f"no dataset at {self.uri}: {MANIFEST} is missing (the export never finished, or the URI is "
                f"wrong). Re-run export-buffer, or check the URI with `polydistill buffer-info`."
            ) from None
        self.manifest = Manifest.from_json(text, self.uri)
        self.verify = verify
        local = self.store.local_path()
        if local is not None:
            self._cache = None
            self._local = local
        else:
            base = (
                cache_dir
                or os.environ.get("POLYDISTILL_CACHE")
                or tempfile.mkdtemp(prefix="polydistill-cache-")
            )
            digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
            self._cache = Path(base) / digest
            self._cache.mkdir(parents=True, exist_ok=True)
            self._local = self._cache
        self.max_decoded = max(1, max_decoded)
        self._decoded: OrderedDict[int, Shard] = OrderedDict()
        self.downloads = 0  # shards fetched from the store (for tests and benchmarks)

    # -- facts
    @property
    def game(self) -> str:
        return self.manifest.game

    @property
    def num_actions(self) -> int:
        return self.manifest.num_actions

    @property
    def codec(self) -> str:
        return self.manifest.codec

    def __len__(self) -> int:
        return self.manifest.num_valid_states

    @property
    def has_q(self) -> bool:
        return self.manifest.q_values is not None

    # -- shard access
    def _fetch(self, info: ShardInfo) -> Path:
        path = self._local / info.name
        if self._cache is not None and not (path.is_file() and path.stat().st_size == info.bytes):
            try:
                self.store.get_file(info.name, path)
            except ObjectNotFoundError:
                raise DatasetError(
                    f"dataset {self.uri}: shard {info.name} is missing from the store; re-export the dataset"
                ) from None
            self.downloads += 1
        if not path.is_file():
            raise DatasetError(f"dataset {self.uri}: shard {info.name} is missing; re-export the dataset")
        return path

    def _verify(self, info: ShardInfo, data: bytes) -> None:
        if len(data) != info.bytes or hashlib.sha256(data).hexdigest() != info.sha256:
            if self._cache is not None:
                (self._local / info.name).unlink(missing_ok=True)  # a bad cached copy must not stick
            raise DatasetError(
                f"dataset {self.uri}: shard {info.name} is corrupt (size {len(data)} vs {info.bytes} bytes, "
                f"or "
                f"sha256 mismatch); re-export the dataset"
            )

    def shard(self, i: int) -> Shard:
        """Decoded shard ``i`` (verified), from the LRU when recently used."""
        if i in self._decoded:
            self._decoded.move_to_end(i)
            return self._decoded[i]
        info = self.manifest.shards[i]
        data = self._fetch(info).read_bytes()
        if self.verify:
            self._verify(info, data)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise DatasetError(f"dataset {self.uri}: shard {info.name} cannot be read ({e})") from e
        n = len(arrays["actions"])
        frames = latents = None
        if self.codec == "latent":
            latents = dequantize_latents(arrays)
        else:
            frames = decode_frames(arrays, n, self.manifest.observation.get("frame_shape", (84, 84)))
            arrays.pop("frames_zstd", None)
        sh = Shard(info, arrays, frames, latents, self.manifest.frame_stack)
        self._decoded[i] = sh
        while len(self._decoded) > self.max_decoded:
            self._decoded.popitem(last=False)
        return sh

    def verify_all(self) -> list[str]:
        """Check every shard's presence, size and sha256; returns problems (empty when all verify)."""
        problems = []
        for info in self.manifest.shards:
            try:
                self._verify(info, self._fetch(info).read_bytes())
            except DatasetError as e:
                problems.append(str(e))
        return problems

    def iter_shards(self) -> Iterator[Shard]:
        """Every shard in order (decoded one at a time)."""
        for i in range(len(self.manifest.shards)):
            yield self.shard(i)

    def iter_batches(self, batch_size: int = 256) -> Iterator[tuple[Shard, np.ndarray]]:
        """Every valid state in step order, as ``(shard, rows)`` batches of at most ``batch_size``."""
        for sh in self.iter_shards():
            rows = sh.valid_index
            for s in range(0, len(rows), batch_size):
                yield sh, rows[s : s + batch_size]


def open_dataset(uri: str, **kwargs: Any) -> ExperienceDataset:
    """Open a dataset by URI (``s3://bucket/prefix``, ``file:///path`` or a local path)."""
    return ExperienceDataset(uri, **kwargs)


def holdout_mask(steps: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic held-out selection by step index (a fixed hash), independent of shard layout."""
    h = (np.asarray(steps, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(1_000_003)
    return h < np.uint64(int(fraction * 1_000_003))
