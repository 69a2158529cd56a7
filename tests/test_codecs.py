"""The ``zstd-long`` codec: an exact round trip of real frames of every seed game, datasets written before it
still read, ``--codec zstd`` writes the bytes it wrote before, and a corrupt blob is named."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from polydistill import config as C
from polydistill.buffer import DatasetError, DatasetWriter, ExperienceDataset, Manifest
from polydistill.codecs import CODECS, DEFAULT_FRAME_CODEC, get_codec, window_log
from polydistill.envs import action_meanings, make_vector_env, observation_spec
from polydistill.replay import FrameReplay, StepRecorder
from polydistill.store import open_store

from .compat_rows import compat_manifest, compat_rows

SEED_GAMES = ("Atlantis", "Breakout", "DemonAttack", "UpNDown", "Pong")
OLD = Path(__file__).parent / "data" / "zstd-v1"


def _play(game: str, steps: int = 150, n_envs: int = 2) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random play in the real game, recorded as the teacher records, with the env's own stacks per row."""
    envs = make_vector_env(game, n_envs)
    n_actions = int(envs.single_action_space.n)
    replay = FrameReplay(steps * n_envs, n_envs)
    obs, info = envs.reset(seed=5)
    rec = StepRecorder(replay, np.asarray(info["lives"]))
    expected: list[list[np.ndarray]] = [[] for _ in range(n_envs)]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        actions = rng.integers(0, n_actions, size=n_envs)
        nxt, rew, term, trunc, info = envs.step(actions.astype(np.int64))
        for e in np.flatnonzero(rec.record(obs, actions, rew, term, trunc, np.asarray(info["lives"]))):
            expected[e].append(obs[e].copy())
        obs = nxt
    envs.close()
    rows = replay.recent(len(replay))
    # Q-values with the spread of a teacher's (float16 is what export stores by default).
    rows["q"] = rng.normal(3.0, 2.0, size=(len(rows["actions"]), n_actions)).astype(np.float32)
    return rows, np.concatenate([np.stack(x) for x in expected])


def _write(where: Path, game: str, rows: dict, codec: str, q_dtype: str = "float16", shard_steps: int = 111
           ) -> Manifest:
    m = Manifest(game=game, num_actions=rows["q"].shape[1], action_meanings=action_meanings(game),
                 observation=observation_spec(C.EnvConfig()), codec=codec)  # fmt: skip
    w = DatasetWriter(open_store(str(where)), m, shard_steps=shard_steps, q_dtype=q_dtype)
    w.add(**rows)
    return w.close()


def test_zstd_long_is_the_default_and_a_table_entry() -> None:
    assert C.ExportConfig().codec == DEFAULT_FRAME_CODEC == "zstd-long"
    assert get_codec("zstd-long") is CODECS["zstd-long"] and CODECS["zstd-long"].frames


def test_the_zstd_long_window_covers_a_whole_shard() -> None:
    frame = 84 * 84
    assert [window_log(n * frame) for n in (1, 500, 10_000)] == [27, 27, 27]  # 10,000 steps: 70.6 MB < 2^27
    assert [window_log(n * frame) for n in (25_000, 50_000, 100_000)] == [28, 29, 30]
    assert window_log(10**12) == 31  # zstd's largest window
    for n in (10_000, 25_000, 100_000):
        assert n * frame <= 1 << window_log(n * frame)


def test_a_shard_larger_than_the_default_window_round_trips(tmp_path) -> None:
    """Shards of 25,000 steps get a 2^28-byte window, recorded in the manifest and used by the reader."""
    rows, stacks = _play("Breakout", steps=60)
    m = _write(tmp_path / "ds", "Breakout", rows, "zstd-long", shard_steps=25_000)
    assert m.codec_params["window_log"] == 28 and len(m.shards) == 1
    ds = ExperienceDataset(str(tmp_path / "ds"))
    got = np.concatenate([shard.states(r) for shard, r in ds.iter_batches(64)])
    np.testing.assert_array_equal(got, stacks[rows["valid"]])


PACKED_CODECS = {
    "zstd-long": {"level": 19, "window_log": 27, "columns": "byte-shuffle+zstd"},
    # 111-step shards: 783,216 bytes of frames, within a 2^20-byte dictionary (the smallest xz gets)
    "xz": {"preset": 9, "extreme": True, "dict_log": 20, "columns": "byte-shuffle+xz"},
}


@pytest.mark.parametrize("codec", list(PACKED_CODECS))
@pytest.mark.parametrize("game", SEED_GAMES)
def test_packed_codecs_round_trip_exactly_on_real_frames(game, codec, tmp_path) -> None:
    rows, stacks = _play(game)
    m = _write(tmp_path / "ds", game, rows, codec)
    assert m.codec == codec and m.codec_params == PACKED_CODECS[codec]
    assert len(m.shards) >= 2  # context rows cross a shard boundary
    ds = ExperienceDataset(str(tmp_path / "ds"))
    got: dict[str, list[np.ndarray]] = {"states": [], "q": [], "actions": [], "rewards": [], "first": []}
    for shard, r in ds.iter_batches(64):
        got["states"].append(shard.states(r))
        for k in ("q", "actions", "rewards", "first"):
            got[k].append(shard.arrays[k][r])
    valid = rows["valid"]
    np.testing.assert_array_equal(np.concatenate(got["states"]), stacks[valid])
    q = np.concatenate(got["q"])
    assert q.dtype == np.float16  # the stored precision, unchanged by the codec
    np.testing.assert_array_equal(q, rows["q"][valid].astype(np.float16))
    for k in ("actions", "rewards", "first"):
        np.testing.assert_array_equal(np.concatenate(got[k]), rows[k][valid].astype(got[k][0].dtype))
    # Fewer bytes than today's zstd on the same real frames.
    old = _write(tmp_path / "old", game, rows, "zstd")
    assert m.total_bytes < old.total_bytes


def test_float32_q_round_trips_bit_exactly(tmp_path) -> None:
    rows = compat_rows()
    _write(tmp_path / "ds", "Pong", rows, "zstd-long", q_dtype="float32", shard_steps=25)
    ds = ExperienceDataset(str(tmp_path / "ds"))
    q = np.concatenate([sh.arrays["q"][sh.info.context :] for sh in ds.iter_shards()])
    assert q.dtype == np.float32 and q.tobytes() == rows["q"].tobytes()


def _old_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "old"
    shutil.copytree(OLD, dest)
    return dest


def test_a_dataset_written_before_zstd_long_still_reads(tmp_path) -> None:
    ds = ExperienceDataset(str(_old_copy(tmp_path)))
    assert ds.codec == "zstd" and ds.manifest.codec_params == {"level": 3}
    assert not ds.verify_all()
    rows = compat_rows()
    frames = np.concatenate([sh.frames[sh.info.context :] for sh in ds.iter_shards()])
    np.testing.assert_array_equal(frames, rows["frames"])
    q = np.concatenate([sh.arrays["q"][sh.info.context :] for sh in ds.iter_shards()])
    np.testing.assert_array_equal(q, rows["q"].astype(np.float16))


def test_codec_zstd_writes_the_bytes_it_wrote_before(tmp_path) -> None:
    """``--codec zstd`` is today's behaviour: the same rows give the same shards, byte for byte."""
    before = json.loads((OLD / "manifest.json").read_text())
    w = DatasetWriter(open_store(str(tmp_path / "new")), Manifest(**compat_manifest()), shard_steps=25,
                      q_dtype="float16")  # fmt: skip
    w.add(**compat_rows())
    m = w.close()
    assert m.codec_params == before["codec_params"] == {"level": 3}
    assert [s.sha256 for s in m.shards] == [s["sha256"] for s in before["shards"]]
    assert m.version == before["version"]


@pytest.mark.parametrize(("codec", "blob"), [("zstd-long", "columns_zstd"), ("xz", "columns_xz"), ("xz", "frames_xz")])
def test_a_corrupt_blob_is_named(codec, blob, tmp_path) -> None:
    import io

    rows = compat_rows()
    _write(tmp_path / "ds", "Pong", rows, codec, shard_steps=25)
    ds = ExperienceDataset(str(tmp_path / "ds"), verify=False)  # past the checksum: the decoder must refuse
    info = ds.manifest.shards[1]
    path = tmp_path / "ds" / info.name
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[blob] = arrays[blob][:-7]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match=r"shard-000001\.npz cannot be decoded"):
        ds.shard(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() != info.sha256
    with pytest.raises(DatasetError, match="corrupt"):
        ExperienceDataset(str(tmp_path / "ds")).shard(1)
