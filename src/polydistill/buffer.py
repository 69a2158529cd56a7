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
frames_zstd    uint8 (bytes,)              ``zstd`` / ``zstd-long`` codecs: the frames array, zstd-compressed whole
columns_zstd   uint8 (bytes,)              ``zstd-long`` codec: every column below (Q last), byte-shuffled and
                                           zstd-compressed as one; read back as those columns
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

Names in a manifest are data, never paths: every field is type-checked when the manifest is read, before
any shard is touched, and shard ``i`` must be named exactly ``<version>/shard-<i:06d>.npz`` (or
``shard-<i:06d>.npz`` in a manifest without a version), so a manifest cannot point outside its prefix or
its version, and the local shard cache only ever writes or deletes below its own directory.

Versions and atomic replacement: a writer puts its shards under a new version directory
``v-<16 hex digits>/`` (the digits are a sha256 of the manifest's content, so identical data gets the
same version and re-exporting it changes nothing), then switches ``manifest.json`` to it in one atomic
write, and only then deletes the version the replaced manifest named. Until the switch the previous
dataset stays whole and readable; a writer killed at any point leaves it so (plus, at worst, an
unreferenced version directory). Two concurrent writers each publish a manifest naming only their own
version's shards; the last manifest written wins.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polydistill.errors import PolydistillError

from .codecs import CODECS, STEP_COLUMNS, ColumnSpec
from .store import ObjectNotFoundError, ObjectStore, StoreAccessDeniedError, open_store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
RAW_STACK_BYTES = 4 * 84 * 84  # a naive uint8 4-frame stack: 28,224 bytes per state
Q_DTYPES = ("float16", "float32")  # stored precisions of teacher Q-values


class DatasetError(PolydistillError, RuntimeError):
    """A dataset is missing, incomplete, corrupt or of an unknown version; the message names it."""


_VERSION_RE = re.compile(r"v-[0-9a-f]{16}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def manifest_digest(dataset: str | ObjectStore) -> str:
    """sha256 (hex) of the manifest file of ``dataset`` (a URI or its opened store): what names one exact
    version of a dataset (its shards' names and digests are in it)."""
    store = open_store(dataset) if isinstance(dataset, str) else dataset
    return hashlib.sha256(store.get_bytes(MANIFEST)).hexdigest()


def shard_name(index: int, version: str = "") -> str:
    """Key of shard ``index`` (zero-padded so names sort in order), under its ``version`` directory."""
    base = f"shard-{index:06d}.npz"
    return f"{version}/{base}" if version else base


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
    version: str = ""

    @property
    def frame_stack(self) -> int:
        return int(self.observation.get("frame_stack", 4))

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """One frame's (height, width) in pixels."""
        return tuple(self.observation.get("frame_shape") or (84, 84))

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
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and validate a manifest; any problem is a one-line :class:`DatasetError` naming ``where``
        and the field. Runs before any shard is read, so a hostile manifest causes no I/O."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(
                    f"{where}/{MANIFEST} is not UTF-8 text (a binary file?); re-export the dataset"
                ) from None
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DatasetError(f"{where}/{MANIFEST} is not valid JSON ({e}); re-export the dataset") from None
        return _manifest_from_dict(d, where)


def _bad(where: str, field_name: str, problem: str) -> DatasetError:
    return DatasetError(f"{where}/{MANIFEST}: field {field_name!r} {problem}; re-export the dataset")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, prefix: str = "") -> Any:
    v = d[key]
    ok = _is_int(v) if kind is int else isinstance(v, kind)
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _bad(where, prefix + key, f"must be {names}, got {type(v).__name__} {_short(v)}")
    return v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_MANIFEST_REQUIRED = ("game", "num_actions", "action_meanings", "observation", "codec")
_SHARD_FIELDS = ("name", "start", "stop", "context", "bytes", "sha256", "valid_states")


def _manifest_from_dict(d: Any, where: str) -> Manifest:
    """The checks of :meth:`Manifest.from_json` on parsed JSON: the object and its version, every field's
    type and range, then every shard entry."""
    _check_header(d, where)
    _check_fields(d, where)
    ds_version = _need(d, "version", str, where) if "version" in d else ""
    if ds_version and not _VERSION_RE.fullmatch(ds_version):
        raise _bad(where, "version", f"must look like v-<16 hex digits>, got {_short(ds_version)}")
    raw_shards = _need(d, "shards", list, where) if "shards" in d else []
    shards: list[ShardInfo] = []
    step = 0
    for i, entry in enumerate(raw_shards):
        info = _shard_from_dict(entry, i, step, ds_version, where)
        step = info.stop
        shards.append(info)
    fields = {k: v for k, v in d.items() if k != "shards"}
    return Manifest(**fields, shards=shards)


def _check_header(d: Any, where: str) -> None:
    """A JSON object of this schema version with only known fields and every required one."""
    if not isinstance(d, dict):
        raise DatasetError(
            f"{where}/{MANIFEST} must hold a JSON object, got {type(d).__name__} {_short(d)}; re-export the dataset"
        )
    version = d.get("schema_version")
    if version != SCHEMA_VERSION or not _is_int(version):
        raise DatasetError(
            f"{where}/{MANIFEST} has schema_version {_short(version)}; this polydistill reads version "
            f"{SCHEMA_VERSION}. Upgrade polydistill or re-export the dataset."
        )
    known = set(Manifest.__dataclass_fields__)
    extra = sorted(set(d) - known)
    if extra:
        raise _bad(where, str(extra[0])[:60], f"is unknown (fields: {', '.join(sorted(known))})")
    missing = [k for k in _MANIFEST_REQUIRED if k not in d]
    if missing:
        raise _bad(where, missing[0], "is missing")


def _check_observation(obs: dict[str, Any], where: str) -> None:
    if "frame_stack" in obs and not (_is_int(obs["frame_stack"]) and 1 <= obs["frame_stack"] <= 64):
        raise _bad(where, "observation.frame_stack", f"must be an int in [1, 64], got {_short(obs['frame_stack'])}")
    if "frame_shape" in obs:
        fs = obs["frame_shape"]
        if not (isinstance(fs, list) and len(fs) == 2 and all(_is_int(x) and 1 <= x <= 4096 for x in fs)):
            raise _bad(where, "observation.frame_shape", f"must be [height, width], got {_short(fs)}")


def _check_fields(d: dict[str, Any], where: str) -> None:
    """Every manifest field but the shards and the version: its type and range."""
    game = _need(d, "game", str, where)
    if not game or len(game) > 100:
        raise _bad(where, "game", f"must be a game name, got {_short(game)}")
    n_act = _need(d, "num_actions", int, where)
    if not 1 <= n_act <= 1024:
        raise _bad(where, "num_actions", f"must be in [1, 1024], got {n_act}")
    meanings = _need(d, "action_meanings", list, where)
    if len(meanings) != n_act or not all(isinstance(m, str) for m in meanings):
        raise _bad(where, "action_meanings", f"must be {n_act} strings, got {_short(meanings)}")
    _check_observation(_need(d, "observation", dict, where), where)
    codec = _need(d, "codec", str, where)
    if codec not in CODECS:
        raise _bad(where, "codec", f"must be one of {', '.join(CODECS)}, got {_short(codec)}")
    for key in ("num_steps", "num_episodes", "num_valid_states"):
        if key in d and (_need(d, key, int, where) < 0):
            raise _bad(where, key, f"must be >= 0, got {d[key]}")
    for key in ("codec_params", "source"):
        if key in d:
            _need(d, key, dict, where)
    if d.get("q_values") is not None:
        _need(d, "q_values", dict, where)
    if "kind" in d:
        _need(d, "kind", str, where)


def _shard_from_dict(entry: Any, i: int, step: int, ds_version: str, where: str) -> ShardInfo:
    """Shard entry ``i``, which must start at ``step`` and be named as shard ``i`` of ``ds_version``."""
    at = f"shards[{i}]"
    if not isinstance(entry, dict):
        raise _bad(where, at, f"must be an object, got {type(entry).__name__} {_short(entry)}")
    extra = sorted(set(entry) - set(_SHARD_FIELDS))
    if extra:
        raise _bad(where, f"{at}.{str(extra[0])[:60]}", f"is unknown (shard fields: {', '.join(_SHARD_FIELDS)})")
    missing = [k for k in _SHARD_FIELDS if k not in entry]
    if missing:
        raise _bad(where, f"{at}.{missing[0]}", "is missing")
    name = _need(entry, "name", str, where, f"{at}.")
    expected = shard_name(i, ds_version)
    if name != expected:
        raise _bad(where, f"{at}.name", f"is {_short(name)}: shard names are data, not paths; expected {expected!r}")
    for key in ("start", "stop", "context", "bytes", "valid_states"):
        if _need(entry, key, int, where, f"{at}.") < 0:
            raise _bad(where, f"{at}.{key}", f"must be >= 0, got {entry[key]}")
    if not _SHA256_RE.fullmatch(_need(entry, "sha256", str, where, f"{at}.")):
        raise _bad(where, f"{at}.sha256", f"must be 64 lowercase hex digits, got {_short(entry['sha256'])}")
    if entry["start"] != step or entry["stop"] < entry["start"]:
        raise _bad(where, f"{at}.start", f"must continue at step {step} (got [{entry['start']}, {entry['stop']}))")
    return ShardInfo(**entry)


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
        level: int = 0,
        latent_dtype: str = "float16",
        q_dtype: str | None = None,
        workers: int = 4,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        if manifest.codec not in CODECS:
            raise DatasetError(f"codec {manifest.codec!r} unknown; choose one of {', '.join(CODECS)}")
        self.codec = CODECS[manifest.codec]
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
        manifest.codec_params = self.codec.params(
            level=level, dtype=latent_dtype, shard_bytes=shard_steps * int(np.prod(manifest.frame_shape))
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
        column = frames if self.codec.frames else latents
        if column is None:
            raise DatasetError(f"a {self.manifest.codec} dataset needs {self.codec.stores}= rows")
        cols[self.codec.stores] = np.asarray(column, dtype=np.uint8 if self.codec.frames else np.float32)
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
        if self._context is not None and self.codec.frames:
            # Self-contained shards: prepend history rows from the previous shard as context.
            ctx = {k: v for k, v in self._context.items()}
            ctx["valid"] = np.zeros(len(ctx["valid"]), dtype=bool)
            ctx_rows = len(ctx["valid"])
            cols = {k: np.concatenate([ctx[k], cols[k]]) for k in cols}
        keep = m.frame_stack - 1
        if self.codec.frames and keep > 0:
            self._context = {k: v[-keep:].copy() for k, v in cols.items()}
        arrays: dict[str, np.ndarray] = {k: cols[k] for k in STEP_COLUMNS}
        q = {"q": cols["q"].astype(self.q_dtype)} if "q" in cols else {}
        if self.codec.pack_columns is not None:
            arrays, q = self.codec.pack_columns({**arrays, **q}, m.codec_params), {}
        # Columns, state column, Q last: the member order of every shard written before zstd-long (same bytes).
        arrays.update(self.codec.encode(cols[self.codec.stores], m.codec_params))
        arrays.update(q)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub mistakes **arrays for allow_pickle
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

    def _seal(self) -> bytes:
        """Name the version after the content (sha256 of the manifest with bare shard names) and put every
        shard under it; returns the manifest's bytes."""
        m = self.manifest
        m.version = ""
        for i, info in enumerate(m.shards):
            info.name = shard_name(i)
        m.version = "v-" + hashlib.sha256(m.to_json().encode()).hexdigest()[:16]
        for i, info in enumerate(m.shards):
            info.name = shard_name(i, m.version)
        return m.to_json().encode()

    def _previous(self) -> Manifest | None:
        """The manifest this write replaces (validated), or None when there is none or it is unreadable
        (then nothing it names is deleted)."""
        try:
            return Manifest.from_json(self.store.get_bytes(MANIFEST), self.store.uri)
        except ObjectNotFoundError:
            return None
        except DatasetError as e:
            log.warning("not cleaning up after the manifest being replaced: %s", e)
            return None

    def close(self) -> Manifest:
        """Write remaining rows, upload all shards (in parallel) under a new version, then switch the
        manifest to it, then delete the replaced version. Returns the manifest."""
        if self._closed:
            return self.manifest
        try:
            if self._pending_rows:
                self._flush(self._pending_rows)
            if not self.manifest.shards:
                raise DatasetError("refusing to write an empty dataset (no rows were added)")
            new_manifest = self._seal()
            if self._already_there(new_manifest):
                log.info("dataset %s already holds these exact shards; nothing to upload", self.store.uri)
                return self.manifest
            previous = self._previous()
            # The old manifest stays in place, describing its own (untouched) version, until the switch.
            keys = [(info.name, path) for info, (_, path) in zip(self.manifest.shards, self._staged, strict=True)]
            self.store.put_files(keys, workers=self.workers, progress=self.progress)
            self.store.put_bytes(MANIFEST, new_manifest)
            if previous is not None and previous.version != self.manifest.version:
                kept = 0
                for info in previous.shards:  # names validated: all inside this prefix and that version
                    try:
                        self.store.delete(info.name)
                    except StoreAccessDeniedError:  # Kubeflow's per-profile keys may not delete
                        kept += 1
                if kept:
                    log.warning("%d shards of the replaced version %s stay in %s: this key may not delete",
                                kept, previous.version, self.store.uri)
            log.info(
                "wrote dataset %s (%s): %d steps, %d shards, %.1f bytes/state",
                self.store.uri,
                self.manifest.version,
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
        # A reader never creates a local directory: a wrong path must not leave one behind.
        self.store = open_store(source, create=False) if isinstance(source, str) else source
        self.uri = self.store.uri
        try:
            text = self.store.get_bytes(MANIFEST)
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
            self._cache = (Path(base) / digest).resolve()
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

    def column_spec(self) -> ColumnSpec:
        """The step columns of every shard with their stored dtypes (Q-values last, when stored)."""
        spec: dict[str, tuple[str, int]] = {k: (v, 0) for k, v in STEP_COLUMNS.items()}
        if self.manifest.q_values is not None:
            dtype = self.manifest.q_values.get("dtype", "float32")
            if dtype not in Q_DTYPES:
                raise _bad(self.uri, "q_values.dtype", f"must be one of {', '.join(Q_DTYPES)}, got {_short(dtype)}")
            spec["q"] = (dtype, self.manifest.num_actions)
        return spec

    # -- shard access
    def _path(self, info: ShardInfo) -> Path:
        """Where shard ``info`` lives locally: below the dataset's directory or the cache, never outside
        (names were validated when the manifest was read; this also stops a symlink planted in the cache)."""
        path = self._local.joinpath(*info.name.split("/"))
        resolved = path.resolve()
        if self._local.resolve() not in resolved.parents:
            raise DatasetError(
                f"dataset {self.uri}: shard {info.name!r} resolves to {resolved}, outside {self._local}; "
                "remove that link or use another cache directory"
            )
        return path

    def _fetch(self, info: ShardInfo) -> Path:
        path = self._path(info)
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

    def _read(self, info: ShardInfo) -> bytes:
        """The shard's bytes; a shard that vanishes between the check and the read (a newer export replaced
        this dataset's version meanwhile) is a DatasetError like any missing shard."""
        path = self._fetch(info)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(
                f"dataset {self.uri}: shard {info.name} is missing (replaced by a newer export while reading? "
                "reopen the dataset); else re-export it"
            ) from None

    def _verify(self, info: ShardInfo, data: bytes) -> None:
        if len(data) != info.bytes or hashlib.sha256(data).hexdigest() != info.sha256:
            if self._cache is not None:
                self._path(info).unlink(missing_ok=True)  # a bad cached copy must not stick (cache only)
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
        data = self._read(info)
        if self.verify:
            self._verify(info, data)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise DatasetError(f"dataset {self.uri}: shard {info.name} cannot be read ({e})") from e
        codec = CODECS[self.codec]
        n = info.stop - info.start + info.context  # rows in the shard, context rows included
        shape = self.manifest.frame_shape
        spec = self.column_spec() if codec.unpack_columns is not None else {}
        try:
            if codec.unpack_columns is not None:
                arrays.update(codec.unpack_columns(arrays, n, spec, self.manifest.codec_params))
            column = codec.decode(arrays, n, shape, self.manifest.codec_params)
        except Exception as e:  # a blob of the wrong size, or one zstd cannot read: corrupt, whatever the cause
            raise DatasetError(f"dataset {self.uri}: shard {info.name} cannot be decoded ({e}); re-export it") from e
        if any(len(arrays.get(k, ())) != n for k in STEP_COLUMNS) or len(column) != n:
            raise DatasetError(
                f"dataset {self.uri}: shard {info.name} does not hold the {n} rows its manifest entry gives; "
                "re-export the dataset"
            )
        frames, latents = (column, None) if codec.frames else (None, column)
        if codec.frames:
            for k in codec.arrays:  # the decoded frames and columns replace their encoded form
                if k != "frames":
                    arrays.pop(k, None)
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
                self._verify(info, self._read(info))
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
