"""Autoencoder: training on real frames, latent datasets, decoding for distillation, and bad inputs.

One short autoencoder run on the tiny Breakout teacher's dataset (module fixture) and one encode of that
dataset are shared by most tests; everything runs on CPU in well under a minute besides the teacher fixture.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from polydistill import autoencoder as A
from polydistill import config as C
from polydistill.autoencoder import (
    AUTOENCODER_DIR,
    AutoencoderError,
    changed_mask,
    code_bytes,
    evaluate_reconstruction,
    grid_picks,
    load_autoencoder,
    reconstruct,
    reconstruction_loss,
    roundtrip_codes,
    teacher_feature_error,
    train_autoencoder,
)
from polydistill.buffer import DatasetError, DatasetWriter, Manifest, open_dataset
from polydistill.checkpoint import CheckpointError, load_state_dict, save_checkpoint
from polydistill.encode import LatentDecoder, encode_buffer
from polydistill.latent_input import stored_codes
from polydistill.networks import ConvAutoencoder, DuelingQNetwork, NatureTorso, scheduled_lr
from polydistill.rundir import RunDir
from polydistill.sampling import iter_split
from polydistill.teacher import load_teacher

# Smoke profile, smaller: 8 optimizer steps of 32 states per epoch, ~75 held-out states.
AE_OVERRIDES = {
    "epochs": 2,
    "max_train_states": 256,
    "batch_size": 32,
    "learning_rate": 2e-3,
    "holdout_fraction": 0.1,
    "device": "cpu",
}


def ae_config(**overrides):
    return C.resolve("autoencoder", "smoke", overrides={**AE_OVERRIDES, **overrides})


def _dataset(teacher_runs, game: str = "Breakout") -> str:
    return str(teacher_runs[game] / "dataset")


@pytest.fixture(scope="module")
def ae_run(teacher_runs, tmp_path_factory):
    calls: list[tuple[dict, int]] = []
    res = train_autoencoder(
        _dataset(teacher_runs),
        ae_config(),
        tmp_path_factory.mktemp("ae") / "run",
        on_metrics=lambda m, s: calls.append((m, s)),
    )
    return res, calls


@pytest.fixture(scope="module")
def latent(teacher_runs, ae_run, tmp_path_factory) -> str:
    dest = str(tmp_path_factory.mktemp("latent") / "breakout")
    encode_buffer(_dataset(teacher_runs), ae_run[0].out_dir, teacher_runs["Breakout"], dest, device="cpu")
    return dest


def _history(res) -> list[dict[str, float]]:
    with open(res.history_csv) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------------- units


def test_shapes_dtypes_and_code_sizes():
    torch.manual_seed(0)
    model = ConvAutoencoder(latent_dim=48)
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        z = model.encode(x)
        r = model.decode(z)
    assert z.shape == (3, 48) and z.dtype == torch.float32
    assert r.shape == (3, 4, 84, 84) and r.dtype == torch.float32
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
    assert reconstruct(model, x.numpy(), "int8").shape == (3, 4, 84, 84)
    assert changed_mask(x).dtype == torch.bool and changed_mask(x).shape == x.shape
    assert code_bytes(64, "float32") == 256  # the seed paper's 64 float32 codes
    assert code_bytes(64, "float16") == 128
    assert code_bytes(64, "int8") == 68  # 64 bytes + a float32 scale
    assert code_bytes(128, "float16") == 256
    with pytest.raises(AutoencoderError, match="bfloat16"):
        code_bytes(64, "bfloat16")


def test_changed_mask_marks_a_moving_ball_and_ignores_padding():
    x = torch.zeros(2, 4, 84, 84, dtype=torch.uint8)
    x[:, :, 70:72, 30:40] = 100  # a static paddle
    for k in range(4):
        x[:, k, 20 + k, 10 + k] = 200  # a ball moving one pixel diagonally per frame
    x[1, :2] = 0  # state 1 starts an episode: two padding frames
    mask = changed_mask(x)
    # State 0: in every frame, the ball's position and its neighbours' positions; never the paddle.
    assert not mask[0, :, 70:72, 30:40].any()
    for k in range(4):
        assert mask[0, k, 20 + k, 10 + k]
        if k > 0:
            assert mask[0, k, 20 + k - 1, 10 + k - 1]  # where it was in frame k-1
    assert int(mask[0].sum()) == 2 + 3 + 3 + 2
    # State 1: the jump from padding to the first real frame is not change; frames 2-3 still are.
    assert not mask[1, :2].any()
    assert mask[1, 2, 22, 12] and mask[1, 3, 23, 13] and int(mask[1].sum()) == 4


def test_bce_keeps_the_gradient_where_the_sigmoid_saturates():
    # A sprite pixel (target 1) on a decoder output saturated at black (logit -10): the reason for loss="bce".
    target = torch.zeros(1, 4, 84, 84)
    target[0, 3, 40, 40] = 1.0
    grads = {}
    for kind in ("mse", "bce"):
        logits = torch.full_like(target, -10.0, requires_grad=True)
        out = logits if kind == "bce" else torch.sigmoid(logits)
        reconstruction_loss(out, target, None, kind=kind).backward()
        grads[kind] = float(-logits.grad[0, 3, 40, 40]) * target.numel()  # per-pixel pull towards 1
    assert grads["bce"] == pytest.approx(1.0, abs=1e-3)
    assert grads["mse"] < 1e-3 * grads["bce"]


def test_bce_loss_matches_torch_and_is_weighted_like_mse():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 84, 84, generator=g)
    target = torch.rand(2, 4, 84, 84, generator=g)
    changed = torch.rand(2, 4, 84, 84, generator=g) < 0.05
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert float(reconstruction_loss(logits, target, None, kind="bce")) == pytest.approx(float(ref.mean()), rel=1e-5)
    w = 1.0 + 19.0 * changed.float()
    got = reconstruction_loss(logits, target, changed, 20.0, kind="bce")
    assert float(got) == pytest.approx(float((w * ref).sum() / w.sum()), rel=1e-5)
    with pytest.raises(ValueError, match="'l1' unknown"):
        reconstruction_loss(logits, target, None, kind="l1")


def test_decode_is_the_sigmoid_of_decode_logits():
    model = ConvAutoencoder(8)
    z = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(model.decode(z), torch.sigmoid(model.decode_logits(z)), atol=1e-6)


def test_grid_picks_span_still_to_busiest():
    counts = np.array([50, 0, 24848, 700, 300, 24848, 900, 10])
    pick = grid_picks(counts, 4)
    # The stillest and the busiest are both shown, in order of motion, and no state twice.
    assert counts[pick[0]] == 0 and counts[pick[-1]] == 24848
    assert list(counts[pick]) == sorted(counts[pick]) and len(set(pick)) == len(pick) == 4
    assert list(grid_picks(np.array([5, 1]), 6)) == [1, 0]  # fewer states than rows: each once


def test_teacher_feature_error_is_relative_and_trains_only_the_reconstruction():
    torch.manual_seed(0)
    teacher = DuelingQNetwork(6).requires_grad_(False)
    target = torch.rand(4, 4, 84, 84)
    assert float(teacher_feature_error(teacher, target.clone(), target)) == pytest.approx(0.0, abs=1e-7)
    # Relative to the original's feature energy, so a noisy copy scores a small number, not a raw magnitude.
    recon = (target + 0.3 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    err = teacher_feature_error(teacher, recon, target)
    assert 0 < float(err.detach()) < 10
    err.backward()
    assert recon.grad is not None and float(recon.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_metrics_and_the_teacher_term(teacher_runs, tmp_path, monkeypatch):
    """With the teacher, the metrics say how often the teacher acts the same on reconstructions, and
    ``teacher_weight > 0`` puts the teacher's feature error into every training step's loss.

    Whether the term helps is a question of scale, not of wiring: on the suite's barely trained teachers and
    16 steps it does not reliably lower the feature error (it passed here only by luck before the teachers'
    weights were seeded); on the cpu profile's teachers it raised their agreement from 42 % to 76 %."""
    data, teacher = _dataset(teacher_runs), teacher_runs["Breakout"]
    terms: list[float] = []
    real = A.teacher_feature_error

    def spy(net, recon, target):
        out = real(net, recon, target)
        if out.requires_grad:  # a training step's term, not a held-out metric
            terms.append(float(out.detach()))
        return out

    monkeypatch.setattr(A, "teacher_feature_error", spy)
    plain = train_autoencoder(data, ae_config(), tmp_path / "plain", teacher=teacher)
    assert terms == []  # teacher_weight 0: the teacher only measures
    guided = train_autoencoder(data, ae_config(teacher_weight=5.0), tmp_path / "guided", teacher=teacher)
    assert len(terms) == guided.steps > 0 and all(t > 0 for t in terms)
    for res in (plain, guided):
        assert 0.0 <= res.metrics["teacher_agreement"] <= 1.0
        assert res.metrics["teacher_feature_error"] > 0
        hist = _history(res)
        assert "teacher_agreement" in hist[0] and "teacher_feature_error" in hist[-1]
    assert guided.metrics["psnr"] != plain.metrics["psnr"]  # the term changed what was learned
    assert load_autoencoder(guided.out_dir)[1]["config"]["teacher_weight"] == 5.0
    # The teacher trains the guided run: continuing it with another teacher is refused, with the same reused.
    net, meta = load_teacher(teacher)
    with torch.no_grad():
        next(net.parameters()).add_(0.01)
    other = tmp_path / "other-teacher"
    save_checkpoint(other, net, {k: v for k, v in meta.items() if k not in ("sha256", "architecture")})
    with pytest.raises(AutoencoderError, match="trained with another teacher"):
        train_autoencoder(data, ae_config(teacher_weight=5.0, epochs=3), guided.out_dir, teacher=other)
    again = train_autoencoder(data, ae_config(teacher_weight=5.0), guided.out_dir, teacher=teacher)
    assert again.metrics["teacher_feature_error"] == pytest.approx(guided.metrics["teacher_feature_error"])


def test_the_teacher_policy_term(teacher_runs, tmp_path, monkeypatch):
    """``teacher_policy_weight > 0`` adds the KL between the teacher's policies on original and reconstruction
    to every training step; it is zero on the original itself, positive elsewhere, and its gradient reaches
    the reconstruction, not the frozen teacher."""
    data, teacher_dir = _dataset(teacher_runs), teacher_runs["Breakout"]
    teacher, _ = load_teacher(teacher_dir)
    states = iter_split(open_dataset(data), "holdout", 0.1, 16)[0].states
    target = torch.from_numpy(states).float().div(255.0)
    assert float(A.teacher_policy_kl(teacher, target, target)) == pytest.approx(0.0, abs=1e-6)
    recon = (target * 0.5).requires_grad_(True)
    kl = A.teacher_policy_kl(teacher, recon, target)
    kl.backward()
    assert float(kl) > 0 and recon.grad is not None and float(recon.grad.abs().sum()) > 0
    terms: list[float] = []
    real = A.teacher_policy_kl

    def spy(net, recon, target):
        out = real(net, recon, target)
        terms.append(float(out.detach()))
        return out

    monkeypatch.setattr(A, "teacher_policy_kl", spy)
    res = train_autoencoder(data, ae_config(teacher_policy_weight=2.0), tmp_path / "policy", teacher=teacher_dir)
    assert len(terms) == res.steps > 0
    assert load_autoencoder(res.out_dir)[1]["config"]["teacher_policy_weight"] == 2.0
    with pytest.raises(AutoencoderError, match=r"teacher_policy_weight=1\.0 needs the game.s teacher"):
        train_autoencoder(data, ae_config(teacher_policy_weight=1.0), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_the_teacher_term_refuses_a_missing_or_wrong_teacher(teacher_runs, tmp_path):
    data = _dataset(teacher_runs)
    with pytest.raises(AutoencoderError, match=r"teacher_weight=1\.0 needs the game.s teacher"):
        train_autoencoder(data, ae_config(teacher_weight=1.0), tmp_path / "a")
    with pytest.raises(AutoencoderError, match=r"plays Pong, but dataset .* is Breakout"):
        train_autoencoder(data, ae_config(teacher_weight=1.0), tmp_path / "b", teacher=teacher_runs["Pong"])
    # A dataset exported with another teacher's Q-values names that teacher's sha256.
    other = tmp_path / "other"
    shutil.copytree(teacher_runs["Breakout"] / "dataset", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["teacher_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AutoencoderError, match="is not the teacher whose Q-values"):
        train_autoencoder(str(other), ae_config(), tmp_path / "c", teacher=teacher_runs["Breakout"])
    for p in ("a", "b", "c"):
        assert not (tmp_path / p).exists()  # refused before anything was written


def test_weighted_loss_weights_changed_pixels():
    target = torch.zeros(1, 4, 84, 84)
    recon = target.clone()
    changed = torch.zeros_like(target, dtype=torch.bool)
    changed[0, 3, 10, 10] = True
    recon[0, 3, 10, 10] = 1.0  # the whole error sits on the one changed pixel
    plain = reconstruction_loss(recon, target, None)
    weighted = reconstruction_loss(recon, target, changed, changed_weight=20.0)
    n = target.numel()
    assert float(plain) == pytest.approx(1.0 / n)
    assert float(weighted) == pytest.approx(20.0 / (n - 1 + 20.0))
    # An error on a static pixel costs less under the weighted loss than under plain MSE.
    recon2 = target.clone()
    recon2[0, 0, 0, 0] = 1.0
    assert float(reconstruction_loss(recon2, target, changed, 20.0)) < float(
        reconstruction_loss(recon2, target, None)
    )


# ----------------------------------------------------------------------------------------------- training


def test_short_training_lowers_the_loss_on_real_frames(ae_run, teacher_runs):
    res, calls = ae_run
    hist = _history(res)
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[-1]["mse"] < 0.5 * hist[0]["mse"], hist
    assert hist[-1]["psnr"] > hist[0]["psnr"] + 3.0
    assert hist[-1]["changed_mse"] < hist[0]["changed_mse"]
    assert hist[2]["train_loss"] < hist[1]["train_loss"]
    m = res.metrics
    assert m["mse"] == pytest.approx(hist[-1]["mse"])
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / m["mse"]))
    assert m["bytes_per_state"] == 128.0 and 0 < m["changed_fraction"] < 0.2
    # on_metrics: once per epoch (at the optimizer step) and once at the end.
    assert [s for _, s in calls] == [8, 16, 16]
    assert calls[-1][0]["psnr"] == pytest.approx(m["psnr"])
    for p in (res.grid_png, res.loss_png, res.history_csv):
        assert p.is_file() and p.stat().st_size > 0
    assert res.grid_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_metadata_follows_the_contract(ae_run, teacher_runs):
    res, _ = ae_run
    model, meta = load_autoencoder(res.out_dir, "cpu")
    assert isinstance(model, ConvAutoencoder) and not model.training
    assert meta["kind"] == "autoencoder" and meta["game"] == "Breakout"
    assert meta["latent_dim"] == 64 and meta["code_dtype"] == "float16"
    assert meta["observation"]["frame_stack"] == 4
    assert set(meta["metrics"]) >= {"mse", "psnr", "changed_mse", "bytes_per_state"}
    manifest_bytes = (teacher_runs["Breakout"] / "dataset" / "manifest.json").read_bytes()
    assert meta["dataset_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert meta["dataset"].endswith("/dataset")
    assert meta["config"]["max_train_states"] == 256 and meta["steps"] == 16
    assert load_autoencoder(res.checkpoint_dir)[1]["sha256"] == meta["sha256"]


def _resume_point(out: Path) -> Path:
    """The newest resume point of an autoencoder run directory (polydistill.rundir's layout)."""
    point = RunDir(out, "autoencoder", AutoencoderError).latest_resume(required=("resume.pt",))
    assert point is not None, f"no resume point in {out}"
    return point


def test_resume_after_a_kill_matches_an_unbroken_run_and_extends(teacher_runs, tmp_path):
    cfg = ae_config(max_train_states=32, batch_size=16)  # 2 steps per epoch
    ds = _dataset(teacher_runs)
    whole = train_autoencoder(ds, cfg, tmp_path / "whole", max_val_states=32)
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(ds, cfg, tmp_path / "broken", max_val_states=32, stop_after_epochs=1)
    assert not (tmp_path / "broken" / "checkpoint").exists()
    state = load_state_dict(_resume_point(tmp_path / "broken") / "resume.pt")
    assert int(state["epoch"]) == 1
    assert state["optimizer"]["param_groups"][0]["lr"] == cfg.learning_rate  # constant schedule
    resumed = train_autoencoder(ds, cfg, tmp_path / "broken", max_val_states=32)
    a = load_state_dict(whole.checkpoint_dir / "model.pt")
    b = load_state_dict(resumed.checkpoint_dir / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert resumed.steps == whole.steps == 4
    assert [h["epoch"] for h in _history(resumed)] == [0, 1, 2]

    # A finished run is reused as is ...
    mtime = (whole.checkpoint_dir / "model.pt").stat().st_mtime_ns
    again = train_autoencoder(ds, cfg, tmp_path / "whole", max_val_states=32)
    assert again.metrics == whole.metrics and (whole.checkpoint_dir / "model.pt").stat().st_mtime_ns == mtime
    # ... and extended when more epochs are asked for.
    before = _history(whole)
    longer = train_autoencoder(
        ds, ae_config(max_train_states=32, batch_size=16, epochs=3), tmp_path / "whole", max_val_states=32
    )
    hist = _history(longer)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3] and longer.steps == 6
    keys = ("epoch", "steps", "train_loss", "mse", "changed_mse")  # the earlier epochs are kept, not redone
    assert [[h[k] for k in keys] for h in hist[1:3]] == [[h[k] for k in keys] for h in before[1:3]]
    assert hist[3]["mse"] != before[2]["mse"]


def test_cosine_schedule_decays_the_rate_and_resumes_like_an_unbroken_run(teacher_runs, tmp_path):
    cfg = ae_config(max_train_states=32, batch_size=16, epochs=2, lr_schedule="cosine")  # 4 steps in all
    ds = _dataset(teacher_runs)
    whole = train_autoencoder(ds, cfg, tmp_path / "whole", max_val_states=32)
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(ds, cfg, tmp_path / "broken", max_val_states=32, stop_after_epochs=1)
    # The rate of the last step taken (step 1 of 4), not the base rate
    lr = load_state_dict(_resume_point(tmp_path / "broken") / "resume.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(scheduled_lr(cfg.learning_rate, "cosine", 1, 4)) and lr < cfg.learning_rate
    resumed = train_autoencoder(ds, cfg, tmp_path / "broken", max_val_states=32)
    a = load_state_dict(whole.checkpoint_dir / "model.pt")
    b = load_state_dict(resumed.checkpoint_dir / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    constant = train_autoencoder(ds, cfg.model_copy(update={"lr_schedule": "constant"}), tmp_path / "const",
                                 max_val_states=32)
    c = load_state_dict(constant.checkpoint_dir / "model.pt")
    assert any(not torch.allclose(a[k], c[k]) for k in a)  # the schedule changed the training


# ----------------------------------------------------------------------------------------------- latents


def test_latent_manifest_and_checksums(latent, teacher_runs, ae_run, tmp_path):
    src = open_dataset(_dataset(teacher_runs))
    ds = open_dataset(latent)
    m = ds.manifest
    assert m.codec == "latent" and m.codec_params == {"dtype": "float16"}
    assert m.q_values == {"dtype": "float16"}
    # One row per source step: step indices, valid states and episodes line up with the source.
    assert (m.num_steps, m.num_valid_states, m.num_episodes) == (
        src.manifest.num_steps,
        src.manifest.num_valid_states,
        src.manifest.num_episodes,
    )
    assert m.game == "Breakout" and m.action_meanings == src.manifest.action_meanings
    _, ae_meta = load_autoencoder(ae_run[0].out_dir)
    _, t_meta = load_teacher(teacher_runs["Breakout"])
    s = m.source
    assert s["autoencoder_sha256"] == ae_meta["sha256"]
    assert s["latent_dim"] == 64 and s["code_dtype"] == "float16" and s["code_bytes_per_state"] == 128
    assert s["teacher_sha256"] == t_meta["sha256"]
    assert s["source_bytes_per_state"] == pytest.approx(src.manifest.bytes_per_state, rel=1e-3)
    assert s["dataset"] == src.uri
    root = Path(latent)
    assert (
        hashlib.sha256((root / AUTOENCODER_DIR / "model.pt").read_bytes()).hexdigest()
        == s["autoencoder_sha256"]
    )
    assert ds.verify_all() == []
    # A corrupted shard is named by the verification.
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    shard = bad / m.shards[0].name
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = open_dataset(str(bad)).verify_all()
    assert len(problems) == 1 and m.shards[0].name in problems[0]


def _aligned(teacher_runs, latent):
    """(source batches, latent batches) of all states, in step order."""
    src = iter_split(open_dataset(_dataset(teacher_runs)), "all", 0.1, 256)
    lat = iter_split(open_dataset(latent), "all", 0.1, 256)
    np.testing.assert_array_equal(
        np.concatenate([b.steps for b in src]), np.concatenate([b.steps for b in lat])
    )
    return src, lat


def test_encode_decode_round_trip(latent, teacher_runs, ae_run):
    res, _ = ae_run
    model, _ = load_autoencoder(res.out_dir)
    decoder = LatentDecoder.from_dataset(open_dataset(latent), "cpu")
    assert decoder.game == "Breakout" and decoder.latent_dim == 64
    src, lat = _aligned(teacher_runs, latent)
    se, n = 0.0, 0
    for s, z in zip(src[:1], lat[:1], strict=True):  # 256 states are plenty
        with torch.no_grad():
            codes = model.encode(torch.from_numpy(s.states))
        # Stored codes are the model's codes, up to float16 rounding.
        torch.testing.assert_close(torch.from_numpy(z.latents), codes, rtol=2e-3, atol=2e-3)
        out = decoder.decode(z.latents)
        assert out.dtype == torch.float32 and out.shape == s.states.shape and out.device.type == "cpu"
        # Decoding the stored codes gives the reconstruction the model itself makes through float16 codes.
        torch.testing.assert_close(out, reconstruct(model, s.states, "float16"), atol=1e-5, rtol=0)
        se += float((out - torch.from_numpy(s.states).float() / 255).square().sum())
        n += out.numel()
    hist = _history(res)
    mse = se / n
    assert mse < 0.5 * hist[0]["mse"]  # close to the original: far below the untrained network's error
    assert mse == pytest.approx(hist[-1]["mse"], rel=0.3)  # and in line with the held-out figure


def test_decode_is_batched_and_usable_by_autograd(latent):
    decoder = LatentDecoder.from_dataset(open_dataset(latent), "cpu", batch_size=7)
    sh = open_dataset(latent).shard(0)
    z = sh.latents[sh.valid_index[:20]]
    whole = LatentDecoder.from_dataset(open_dataset(latent), "cpu").decode(torch.from_numpy(z))
    batched = decoder.decode(z.astype(np.float16))
    torch.testing.assert_close(batched, whole, atol=2e-3, rtol=0)
    assert not batched.requires_grad and not batched.is_inference()
    student = NatureTorso()
    student(batched).sum().backward()  # a student can train on decoded states as they come
    assert student.net[0].weight.grad is not None
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        decoder.decode(np.zeros((3, 32), dtype=np.float32))


def test_stored_q_values_equal_the_teacher_on_original_frames(latent, teacher_runs):
    teacher, _ = load_teacher(teacher_runs["Breakout"])
    src, lat = _aligned(teacher_runs, latent)
    for s, z in zip(src, lat, strict=True):
        with torch.no_grad():
            q = teacher(torch.from_numpy(s.states)).numpy()
        assert z.q is not None and z.q.shape == q.shape
        np.testing.assert_allclose(z.q, q, rtol=1e-3, atol=1e-4)  # float16 storage


def test_quantisation_error_is_bounded(ae_run, teacher_runs):
    model, _ = load_autoencoder(ae_run[0].out_dir)
    states = iter_split(open_dataset(_dataset(teacher_runs)), "holdout", 0.1, 128)[0].states
    with torch.no_grad():
        z = model.encode(torch.from_numpy(states))
    assert torch.equal(roundtrip_codes(z, "float32"), z)
    half = roundtrip_codes(z, "float16")
    assert bool(((half - z).abs() <= z.abs() * 2.0**-11 + 1e-7).all())
    q8 = roundtrip_codes(z, "int8")
    step = z.abs().amax(dim=1, keepdim=True) / 127.0
    assert bool(((q8 - z).abs() <= step / 2 + 1e-6).all())
    assert float((q8 - z).abs().max()) > 0  # int8 really rounds
    for dtype in ("float32", "float16", "int8"):  # a latent student's play-time quantiser is the dataset's
        assert torch.equal(stored_codes(z, dtype), roundtrip_codes(z, dtype)), dtype
    full = evaluate_reconstruction(model, [states], "float32")
    for dtype, max_loss_db in (("float16", 0.05), ("int8", 1.0)):
        got = evaluate_reconstruction(model, [states], dtype)
        assert got["psnr"] > full["psnr"] - max_loss_db, (dtype, got, full)


def test_refuses_a_latent_dataset_whose_autoencoder_does_not_match(latent, tmp_path):
    def copy(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(latent, d)
        return d

    # Tampered weights.
    d = copy("weights")
    model_file = d / AUTOENCODER_DIR / "model.pt"
    state = load_state_dict(model_file)
    state["to_latent.bias"] = state["to_latent.bias"] + 0.5
    torch.save(state, model_file)
    with pytest.raises(DatasetError, match=r"does not match.*refusing") as e:
        LatentDecoder.from_dataset(open_dataset(str(d)), "cpu")
    assert str(d) in str(e.value)
    # Tampered metadata (weights intact).
    d = copy("metadata")
    meta_file = d / AUTOENCODER_DIR / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["game"] = "Pong"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="does not match"):
        LatentDecoder.from_dataset(open_dataset(str(d)), "cpu")
    # Another, self-consistent autoencoder swapped in.
    d = copy("swapped")
    save_checkpoint(d / AUTOENCODER_DIR, ConvAutoencoder(64), {**meta, "game": "Breakout"})
    with pytest.raises(DatasetError, match="does not match"):
        LatentDecoder.from_dataset(open_dataset(str(d)), "cpu")
    # Missing autoencoder.
    d = copy("missing")
    shutil.rmtree(d / AUTOENCODER_DIR)
    with pytest.raises(DatasetError, match="lacks its autoencoder"):
        LatentDecoder.from_dataset(open_dataset(str(d)), "cpu")


# ----------------------------------------------------------------------------------------------- bad inputs


def _empty_dataset(teacher_runs, path: Path) -> str:
    """A well-formed dataset with rows but no valid state."""
    src = open_dataset(_dataset(teacher_runs)).manifest
    man = Manifest(
        game=src.game,
        num_actions=src.num_actions,
        action_meanings=src.action_meanings,
        observation=src.observation,
        codec="zstd",
    )
    w = DatasetWriter(str(path), man, shard_steps=10)
    n = 3
    w.add(
        actions=np.zeros(n),
        rewards=np.zeros(n),
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
        first=np.zeros(n, bool),
        valid=np.zeros(n, bool),
        frames=np.zeros((n, 84, 84), np.uint8),
    )
    w.close()
    return str(path)


def test_training_refuses_bad_inputs(teacher_runs, ae_run, latent, tmp_path):
    cfg = ae_config()
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="no dataset at") as e:
        train_autoencoder(str(missing), cfg, tmp_path / "o1")
    assert str(missing) in str(e.value) and not missing.exists()
    with pytest.raises(DatasetError, match="no dataset at"):
        train_autoencoder(missing.as_uri(), cfg, tmp_path / "o1")
    with pytest.raises(DatasetError, match="latent dataset") as e:
        train_autoencoder(latent, cfg, tmp_path / "o2")
    assert latent in str(e.value)
    empty = _empty_dataset(teacher_runs, tmp_path / "empty")
    with pytest.raises(DatasetError, match="empty") as e:
        train_autoencoder(empty, cfg, tmp_path / "o3")
    assert "empty" in str(e.value)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AutoencoderError, match="is a file"):
        train_autoencoder(_dataset(teacher_runs), cfg, tmp_path / "afile")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(AutoencoderError, match="not empty"):
        train_autoencoder(_dataset(teacher_runs), cfg, tmp_path / "full")
    with pytest.raises(AutoencoderError, match="latent_dim=64 there vs 32 now"):
        train_autoencoder(_dataset(teacher_runs), ae_config(latent_dim=32), ae_run[0].out_dir)
    with pytest.raises(AutoencoderError, match="another dataset"):
        train_autoencoder(_dataset(teacher_runs, "Pong"), cfg, ae_run[0].out_dir)
    for p in ("o1", "o2", "o3"):
        assert not (tmp_path / p).exists()  # refused before anything was written


def test_encoding_refuses_bad_inputs(teacher_runs, ae_run, latent, tmp_path):
    ae = ae_run[0].out_dir
    breakout, pong = _dataset(teacher_runs), _dataset(teacher_runs, "Pong")
    dest = str(tmp_path / "out")
    with pytest.raises(AutoencoderError, match=r"teacher .* is for Pong.* is Breakout"):
        encode_buffer(breakout, ae, teacher_runs["Pong"], dest, device="cpu")
    with pytest.raises(AutoencoderError, match=r"autoencoder .* is for Breakout.* is Pong"):
        encode_buffer(pong, ae, teacher_runs["Pong"], dest, device="cpu")
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        encode_buffer(breakout, teacher_runs["Breakout"], teacher_runs["Breakout"], dest, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        encode_buffer(breakout, tmp_path / "no-ae", teacher_runs["Breakout"], dest, device="cpu")
    with pytest.raises(DatasetError, match="latent dataset"):
        encode_buffer(latent, ae, teacher_runs["Breakout"], dest, device="cpu")
    with pytest.raises(AutoencoderError, match="is the source dataset"):
        encode_buffer(breakout, ae, teacher_runs["Breakout"], breakout, device="cpu")
    with pytest.raises(AutoencoderError, match="q_dtype"):
        encode_buffer(breakout, ae, teacher_runs["Breakout"], dest, q_dtype="int8", device="cpu")
    with pytest.raises(AutoencoderError, match="code dtype"):
        encode_buffer(breakout, ae, teacher_runs["Breakout"], dest, code_dtype="int4", device="cpu")
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(DatasetError, match="not 'latent'"):
        LatentDecoder.from_dataset(open_dataset(breakout), "cpu")


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_encode_int8_and_reuse_a_finished_run(teacher_runs, ae_run, tmp_path):
    from polydistill.cli import main

    runner = CliRunner()
    dest = str(tmp_path / "lat8")
    args = [
        "encode-buffer",
        "--dataset",
        _dataset(teacher_runs),
        "--autoencoder",
        str(ae_run[0].out_dir),
        "--teacher",
        str(teacher_runs["Breakout"]),
        "--to",
        dest,
        "--code-dtype",
        "int8",
        "--device",
        "cpu",
        "--shard-steps",
        "300",
    ]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "int8 codes" in r.output
    ds = open_dataset(dest)
    assert (
        ds.codec == "latent"
        and ds.manifest.codec_params == {"dtype": "int8"}
        and len(ds.manifest.shards) == 3
    )
    assert "latent_scale" in ds.shard(1).arrays and ds.shard(1).arrays["latents"].dtype == np.int8
    assert LatentDecoder.from_dataset(ds, "cpu").decode(ds.shard(2).latents[:4]).shape == (4, 4, 84, 84)

    bad = runner.invoke(main, [*args[:6], str(teacher_runs["Pong"]), *args[7:]])
    assert bad.exit_code != 0 and "is for Pong" in bad.output and "Traceback" not in bad.output

    flags = [
        "--profile",
        "smoke",
        "--epochs",
        "2",
        "--max-train-states",
        "256",
        "--batch-size",
        "32",
        "--learning-rate",
        "0.002",
        "--holdout-fraction",
        "0.1",
        "--device",
        "cpu",
    ]
    r = runner.invoke(
        main,
        ["train-autoencoder", "--dataset", _dataset(teacher_runs), "--out", str(ae_run[0].out_dir), *flags],
    )
    assert r.exit_code == 0, r.output
    assert "2 epochs, 16 steps" in r.output
    r = runner.invoke(
        main, ["train-autoencoder", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), *flags]
    )
    assert r.exit_code != 0 and "no dataset at" in r.output and "Traceback" not in r.output


def test_cli_trains_with_the_teacher_term_and_refuses_it_without_a_teacher(teacher_runs, tmp_path):
    from polydistill.cli import main

    runner = CliRunner()
    base = ["train-autoencoder", "--dataset", _dataset(teacher_runs), "--profile", "smoke", "--device", "cpu"]
    base += ["--max-train-states", "64", "--batch-size", "32", "--teacher-weight", "2"]
    r = runner.invoke(main, [*base, "--out", str(tmp_path / "none")])
    assert r.exit_code != 0 and "needs the game's teacher: pass --teacher DIR" in r.output
    assert not (tmp_path / "none").exists()
    r = runner.invoke(main, [*base, "--out", str(tmp_path / "ok"), "--teacher", str(teacher_runs["Breakout"])])
    assert r.exit_code == 0, r.output
    assert "teacher agreement" in r.output
    _, meta = load_autoencoder(tmp_path / "ok")
    assert meta["config"]["teacher_weight"] == 2.0 and 0 <= meta["metrics"]["teacher_agreement"] <= 1


def test_cli_encode_takes_a_profile_and_a_config_file(tmp_path):
    """encode-buffer has a config model like every stage: --profile and --config, and a bad setting in the
    file is one line before anything is read or written."""
    from polydistill.cli import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["encode-buffer", "--help"]).output
    assert "--profile" in help_text and "--config" in help_text and "--shard-steps" in help_text
    cfg = tmp_path / "encode.yaml"
    cfg.write_text("shard_steps: 0\n")
    dest = tmp_path / "lat"
    r = runner.invoke(main, ["encode-buffer", "--dataset", str(tmp_path / "nope"), "--autoencoder", str(tmp_path),
                             "--teacher", str(tmp_path), "--to", str(dest), "--config", str(cfg)])
    assert r.exit_code == 2 and "shard_steps" in r.output and "Traceback" not in r.output
    assert not dest.exists()
