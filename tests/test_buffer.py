"""The experience dataset format: round trips through file:// and s3:// (moto on 127.0.0.1), integrity
errors naming the dataset and shard, idempotent export, bounded streaming reads."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from polydistill import config as C
from polydistill.buffer import (
    MANIFEST,
    DatasetError,
    DatasetWriter,
    ExperienceDataset,
    Manifest,
    stack_frames,
)
from polydistill.envs import action_meanings, make_vector_env, observation_spec
from polydistill.export import buffer_info, export_buffer
from polydistill.replay import FrameReplay, StepRecorder
from polydistill.sampling import StreamingSampler
from polydistill.store import StoreUnreachableError, open_store


def test_stack_frames_pads_at_episode_starts() -> None:
    frames = np.arange(1, 8, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    first = np.array([1, 0, 0, 0, 0, 1, 0], dtype=bool)
    s = stack_frames(frames, first, np.array([0, 2, 4, 5, 6]), frame_stack=4)
    newest = s[:, :, 0, 0]
    assert newest.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [2, 3, 4, 5], [0, 0, 0, 6], [0, 0, 6, 7]]


@pytest.fixture(scope="module")
def played() -> dict:
    """Random play in real Breakout (short episodes, so episode starts are crossed), recorded exactly as the
    teacher records, with the stacks the environment itself produced for every stored row."""
    n, steps = 2, 420
    envs = make_vector_env("Breakout", n)
    replay = FrameReplay(4_000, n)
    obs, info = envs.reset(seed=3)
    rec = StepRecorder(replay, np.asarray(info["lives"]))
    expected: list[list[np.ndarray]] = [[] for _ in range(n)]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        actions = rng.integers(0, 4, size=n)
        nxt, rew, term, trunc, info = envs.step(actions.astype(np.int64))
        stored = rec.record(obs, actions, rew, term, trunc, np.asarray(info["lives"]))
        for e in np.flatnonzero(stored):
            expected[e].append(obs[e].copy())
        obs = nxt
    envs.close()
    rows = replay.recent(len(replay))
    stacks = np.concatenate([np.stack(x) for x in expected])
    assert rows["first"].sum() >= 3, "the fixture must cross episode boundaries"
    rows["q"] = np.random.default_rng(1).normal(size=(len(rows["actions"]), 4)).astype(np.float32)
    return {"rows": rows, "stacks": stacks}


def _manifest(codec: str = "zstd") -> Manifest:
    return Manifest(
        game="Breakout",
        num_actions=4,
        action_meanings=action_meanings("Breakout"),
        observation=observation_spec(C.EnvConfig()),
        codec=codec,
    )


def _write(uri_or_store, rows: dict, codec: str = "zstd", shard_steps: int = 97) -> Manifest:
    store = open_store(uri_or_store) if isinstance(uri_or_store, str) else uri_or_store
    w = DatasetWriter(store, _manifest(codec), shard_steps=shard_steps, q_dtype="float32")
    w.add(**rows)
    return w.close()


@pytest.mark.parametrize("codec", ["zstd-long", "zstd", "raw"])
@pytest.mark.parametrize("where", ["file", "s3"])
def test_round_trip_equals_env_stacks(played, where, codec, tmp_path, request) -> None:
    uri = request.getfixturevalue("s3_env") if where == "s3" else (tmp_path / "ds").as_uri()
    rows = played["rows"]
    m = _write(uri, rows, codec)
    assert len(m.shards) > 5  # small shards: stacks must survive shard boundaries (context rows)
    ds = ExperienceDataset(uri, cache_dir=tmp_path / "cache")
    got_states, got_q, got_actions = [], [], []
    for shard, r in ds.iter_batches(64):
        got_states.append(shard.states(r))
        got_q.append(shard.arrays["q"][r])
        got_actions.append(shard.arrays["actions"][r])
    valid = rows["valid"]
    np.testing.assert_array_equal(np.concatenate(got_states), played["stacks"][valid])
    np.testing.assert_array_equal(np.concatenate(got_q), rows["q"][valid])
    np.testing.assert_array_equal(np.concatenate(got_actions), rows["actions"][valid])
    assert ds.manifest.num_steps == len(rows["actions"])
    assert ds.manifest.num_valid_states == int(valid.sum())


def test_corrupted_shard_is_named(played, tmp_path) -> None:
    root = tmp_path / "ds"
    m = _write(str(root), played["rows"])
    bad = m.shards[2].name
    data = bytearray((root / bad).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / bad).write_bytes(bytes(data))
    ds = ExperienceDataset(str(root))
    ds.shard(0)  # other shards still read
    with pytest.raises(DatasetError, match=bad) as e:
        ds.shard(2)
    assert str(root) in str(e.value)
    assert any(bad in p for p in ds.verify_all())


def test_deleted_shard_is_named_on_s3(played, s3_env, tmp_path) -> None:
    m = _write(s3_env, played["rows"])
    open_store(s3_env).delete(m.shards[1].name)
    ds = ExperienceDataset(s3_env, cache_dir=tmp_path)
    with pytest.raises(DatasetError, match=m.shards[1].name):
        ds.shard(1)


def test_export_killed_before_manifest_leaves_nothing_readable(played, s3_env, monkeypatch) -> None:
    store = open_store(s3_env)
    real_put_bytes = type(store).put_bytes

    def dying_put_bytes(self, key, data):
        if key == MANIFEST:
            raise KeyboardInterrupt("killed before the manifest")
        return real_put_bytes(self, key, data)

    monkeypatch.setattr(type(store), "put_bytes", dying_put_bytes)
    with pytest.raises(KeyboardInterrupt):
        _write(store, played["rows"])
    monkeypatch.setattr(type(store), "put_bytes", real_put_bytes)
    assert store.list()  # shards were uploaded...
    with pytest.raises(DatasetError, match=r"manifest\.json is missing"):
        ExperienceDataset(s3_env)  # ...but the dataset does not exist for readers


def test_unknown_schema_version(played, tmp_path) -> None:
    root = tmp_path / "ds"
    _write(str(root), played["rows"])
    doc = json.loads((root / MANIFEST).read_text())
    doc["schema_version"] = 99
    (root / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="schema_version 99"):
        ExperienceDataset(str(root))


def test_unreachable_endpoint(played, s3_env, monkeypatch, tmp_path) -> None:
    # Wrong credentials against moto with auth switched on are covered in test_store.py.
    _write(s3_env, played["rows"])
    monkeypatch.setenv("MINIO_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("POLYDISTILL_STORE_RETRIES", "1")
    with pytest.raises(StoreUnreachableError):
        ExperienceDataset(s3_env, cache_dir=tmp_path)


def test_rewriting_the_same_dataset_is_idempotent(played, s3_env) -> None:
    m1 = _write(s3_env, played["rows"])
    store = open_store(s3_env)
    before = {k: store.get_bytes(k) for k in store.list()}
    m2 = _write(s3_env, played["rows"])
    after = {k: store.get_bytes(k) for k in store.list()}
    assert m1.to_json() == m2.to_json()
    assert before == after


def test_streaming_memory_is_bounded_and_shards_download_once(played, s3_env, tmp_path) -> None:
    # A dataset many times larger than the sampler's pool: the recorded rows repeated 6 times.
    rows = {k: np.concatenate([v] * 6) for k, v in played["rows"].items()}
    _write(s3_env, rows, shard_steps=60)
    ds = ExperienceDataset(s3_env, cache_dir=tmp_path, max_decoded=2)
    n_shards = len(ds.manifest.shards)
    sampler = StreamingSampler(ds, batch_size=16, pool_shards=2, rotate_every=2, seed=0)
    one_shard = ds.shard(next(iter(sampler._pool))).nbytes
    decoded_dataset = one_shard * n_shards
    tracemalloc.start()
    for _ in range(2 * n_shards):  # one pass over every shard
        next(sampler)
    _, peak_first = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in range(6 * n_shards):  # three more passes
        b = next(sampler)
    _, peak_later = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert b.states.shape == (16, 4, 84, 84)
    assert len(ds._decoded) <= 2
    assert peak_first < decoded_dataset / 2, (peak_first, decoded_dataset)
    assert peak_later < peak_first * 1.5  # no growth with the number of epochs
    assert ds.downloads == n_shards  # every shard fetched once, re-reads hit the local cache


def test_fraction_takes_the_most_recent_states(played, tmp_path) -> None:
    _write(str(tmp_path / "ds"), played["rows"], shard_steps=50)
    ds = ExperienceDataset(str(tmp_path / "ds"))
    half = StreamingSampler(ds, 32, fraction=0.5, split="all", seed=0)
    steps = np.concatenate([next(half).steps for _ in range(20)])
    assert steps.min() >= ds.manifest.num_steps // 2 - 1
    full = StreamingSampler(ds, 32, fraction=1.0, split="all", seed=0)
    assert half.count() < full.count()


def test_train_and_holdout_do_not_overlap(played, tmp_path) -> None:
    _write(str(tmp_path / "ds"), played["rows"])
    ds = ExperienceDataset(str(tmp_path / "ds"))
    tr = StreamingSampler(ds, 64, split="train", holdout_fraction=0.1, seed=0)
    ho = StreamingSampler(ds, 64, split="holdout", holdout_fraction=0.1, seed=0)
    tr_steps = set(np.concatenate([next(tr).steps for _ in range(20)]).tolist())
    ho_steps = set(np.concatenate([next(ho).steps for _ in range(5)]).tolist())
    assert ho_steps and not tr_steps & ho_steps


def test_export_buffer_adds_teacher_q(teacher_runs, s3_env, tmp_path) -> None:
    import torch

    from polydistill.teacher import load_teacher

    run = teacher_runs["Breakout"]
    cfg = C.resolve("export", "smoke", overrides={"shard_steps": 200, "q_dtype": "float32"})
    m = export_buffer(run, s3_env, run, cfg)
    assert m.codec == "zstd-long" and m.codec_params["level"] == 19  # the default, its parameters recorded
    ds = ExperienceDataset(s3_env, cache_dir=tmp_path)
    model, _ = load_teacher(run)
    shard, r = next(ds.iter_batches(64))
    with torch.no_grad():
        q = model(torch.from_numpy(shard.states(r))).numpy()
    np.testing.assert_allclose(shard.arrays["q"][r], q, rtol=1e-5, atol=1e-5)
    info = buffer_info(s3_env, verify=True)
    assert info["checksums_ok"] and info["shards"] == len(m.shards)
    assert info["ratio_vs_raw_stacks"] > 10
    with pytest.raises(Exception, match="plays Pong"):
        export_buffer(run, str(tmp_path / "x"), teacher_runs["Pong"], cfg)
