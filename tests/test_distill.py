"""Distillation on real datasets from two short teacher runs (Breakout: 4 actions, Pong: 6 actions).

The tiny teachers are nearly constant policies on their early-game states, so agreement alone is a weak
signal; the tests also require the held-out loss to fall several-fold and, with stored Q-values that
reverse the teacher's preferences, that the student follows the stored targets rather than the network.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from polydistill import config as C
from polydistill.agents import AgentError, load_agent
from polydistill.buffer import DatasetWriter, Manifest, holdout_mask, open_dataset
from polydistill.checkpoint import build_network, load_checkpoint, read_metadata, save_checkpoint
from polydistill.distill import (
    DistillError,
    build_student,
    compute_losses,
    distill,
    parse_init,
    plan_layout,
    validation_batches,
)
from polydistill.envs import FULL_ACTION_MEANINGS
from polydistill.networks import scheduled_lr
from polydistill.sampling import iter_split
from polydistill.store import open_store


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The suite shares 2 cores with other work; torch's 2-thread OpenMP pool spin-waits badly when the cores
    are oversubscribed (about 10x slower here), one thread does not."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dcfg(**kw) -> C.DistillConfig:
    base = {
        "steps": 60,
        "batch_size": 16,
        "eval_every": 20,
        "checkpoint_every": 20,
        "source": "full",
        "width": 0.5,
        "learning_rate": 1e-3,
        "holdout_fraction": 0.1,
        "device": "cpu",
    }
    return C.resolve("distill", "smoke", overrides={**base, **kw})


@pytest.fixture(scope="module")
def pairs(teacher_runs) -> tuple[dict[str, str], dict[str, str]]:
    teachers = {g: str(d) for g, d in teacher_runs.items()}
    datasets = {g: (Path(d) / "dataset").resolve().as_uri() for g, d in teacher_runs.items()}
    return teachers, datasets


def holdout_states(uri: str, holdout: float = 0.1) -> torch.Tensor:
    batches = iter_split(open_dataset(uri), "holdout", holdout, 512, limit=512)
    return torch.from_numpy(np.concatenate([b.states for b in batches]))


def read_curve(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# --------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def per_game_run(pairs, tmp_path_factory):
    teachers, datasets = pairs
    seen: list[tuple[int, dict[str, float]]] = []
    out = tmp_path_factory.mktemp("distill") / "per-game"
    res = distill(
        teachers,
        datasets,
        dcfg(steps=150, eval_every=75, checkpoint_every=75),
        out,
        on_metrics=lambda m, s: seen.append((s, m)),
    )
    return res, seen


def test_agreement_rises_well_above_chance(per_game_run):
    res, seen = per_game_run
    curve = read_curve(res.curves_csv)
    assert [r["step"] for r in curve] == [0, 75, 150]
    for game, n_actions in (("Breakout", 4), ("Pong", 6)):
        chance = 1 / n_actions
        assert res.agreement[game] >= max(0.9, chance + 0.5), (game, res.agreement)
        # the held-out loss falls several-fold from the untrained student's
        assert curve[-1][f"loss/{game}"] < curve[0][f"loss/{game}"] / 4, [r[f"loss/{game}"] for r in curve]
        assert res.final_loss[game] == pytest.approx(curve[-1][f"loss/{game}"])
    assert res.samples_per_second > 0 and res.parameters > 0 and res.steps == 150
    assert res.curves_png.is_file() and res.curves_png.stat().st_size > 1000
    # metrics reached the callback with the documented keys
    steps, last = seen[-1]
    assert steps == 150 and {"agreement/Pong", "loss/Breakout", "samples_per_second"} <= set(last)


def test_student_checkpoint_metadata_and_weights_only_reload(per_game_run, pairs):
    res, _ = per_game_run
    teachers, _ = pairs
    meta = read_metadata(res.checkpoint_dir)
    assert meta["kind"] == "student" and meta["games"] == ["Breakout", "Pong"]
    assert meta["actions"] == "per-game" and meta["head_for_game"] == {"Breakout": 0, "Pong": 1}
    assert meta["source"] == "full" and meta["width"] == 0.5 and meta["loss"] == "kl"
    assert meta["teachers"]["Pong"] == read_metadata(Path(teachers["Pong"]) / "checkpoint")["sha256"]
    assert meta["action_meanings"]["Breakout"] == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    # plain torch.load(weights_only=True) + the architecture rebuild the same network the agent uses
    state = torch.load(res.checkpoint_dir / "model.pt", weights_only=True)
    net = build_network(meta["architecture"])
    net.load_state_dict(state)
    agent = load_agent(res.out_dir, "cpu")
    assert agent.kind == "student" and agent.label == "student_full" and agent.games == ["Breakout", "Pong"]
    x = holdout_states(pairs[1]["Pong"])
    with torch.no_grad():
        assert torch.equal(agent.q_values(x, "Pong"), net(x, head=1))
        assert torch.equal(agent.q_values(x, "breakout"), net(x, head=0))
    assert agent.q_values(x, "Pong").shape == (len(x), 6)


def test_per_game_heads_route_by_game(per_game_run, pairs):
    res, _ = per_game_run
    agent = load_agent(res.checkpoint_dir, "cpu")
    x = holdout_states(pairs[1]["Breakout"])[:16]
    before_b, before_p = agent.q_values(x, "Breakout").clone(), agent.q_values(x, "Pong").clone()
    with torch.no_grad():
        for p in agent.model.heads[1].parameters():  # Pong's head
            p.add_(torch.randn_like(p))
    assert torch.equal(agent.q_values(x, "Breakout"), before_b)  # Breakout never reads head 1
    assert not torch.allclose(agent.q_values(x, "Pong"), before_p)


def test_agents_refuse_other_games_and_act(per_game_run, pairs):
    res, _ = per_game_run
    teachers, datasets = pairs
    x = holdout_states(datasets["Pong"])[:32]
    student = load_agent(res.checkpoint_dir)
    with pytest.raises(AgentError, match="not trained on Qbert"):
        student.q_values(x, "Qbert")
    teacher = load_agent(teachers["Pong"])
    assert teacher.kind == "teacher" and teacher.games == ["Pong"] and teacher.num_actions("Pong") == 6
    with pytest.raises(AgentError, match="Pong only; it was not trained on Breakout"):
        teacher.q_values(x, "Breakout")
    rng = np.random.default_rng(0)
    greedy = teacher.act(x, "Pong", 0.0, rng)
    assert np.array_equal(greedy, teacher.q_values(x, "Pong").argmax(1).numpy())
    assert set(teacher.act(np.repeat(x[:1].numpy(), 600, 0), "Pong", 1.0, rng)) == set(range(6))
    rnd = load_agent("random")
    assert rnd.kind == "random" and rnd.num_actions("Breakout") == 4
    acts = rnd.act(np.zeros((400, 4, 84, 84), np.uint8), "Breakout", 0.0, rng)
    assert acts.dtype == np.int64 and set(acts) == {0, 1, 2, 3}


def test_finished_run_is_reused(per_game_run, pairs):
    res, _ = per_game_run
    teachers, datasets = pairs
    called = []
    again = distill(
        teachers,
        datasets,
        dcfg(steps=150, eval_every=75, checkpoint_every=75),
        res.out_dir,
        on_metrics=lambda m, s: called.append(s),
    )
    assert called == [] and again.agreement == res.agreement and again.steps == 150


# --------------------------------------------------------------------------------------------- errors


def test_shared_refuses_mismatched_action_counts(pairs, tmp_path):
    teachers, datasets = pairs
    out = tmp_path / "shared"
    with pytest.raises(DistillError, match=r"Breakout \(4 actions\), Pong \(6 actions\)"):
        distill(teachers, datasets, dcfg(actions="shared"), out)
    assert not out.exists()  # refused before any work


def test_pairing_and_source_errors_name_the_games(pairs, tmp_path):
    teachers, datasets = pairs
    with pytest.raises(DistillError, match="no dataset for Pong"):
        distill(teachers, {"Breakout": datasets["Breakout"]}, dcfg(), tmp_path / "a")
    with pytest.raises(DistillError, match=r"dataset given for Breakout .* holds Pong"):
        distill(teachers, {"Breakout": datasets["Pong"], "Pong": datasets["Breakout"]}, dcfg(), tmp_path / "b")
    with pytest.raises(DistillError, match=r"teacher given for Pong .* trained on Breakout"):
        distill({"Pong": teachers["Breakout"]}, {"Pong": datasets["Pong"]}, dcfg(), tmp_path / "c")
    with pytest.raises(DistillError, match="source=latent needs latent datasets"):
        distill(teachers, datasets, dcfg(source="latent"), tmp_path / "d")
    with pytest.raises(DistillError, match="width"):
        distill(teachers, datasets, dcfg(init="teacher:Pong", width=0.5), tmp_path / "e")
    with pytest.raises(DistillError, match="union"):
        distill(teachers, datasets, dcfg(init="teacher:Pong", width=1.0, actions="union"), tmp_path / "f")
    with pytest.raises(DistillError, match="Qbert is not one of"):
        distill(teachers, datasets, dcfg(init="teacher:Qbert", width=1.0), tmp_path / "g")
    assert not any((tmp_path / n).exists() for n in "abcdefg")


# --------------------------------------------------------------------------------------------- union


def test_union_masks_invalid_actions(pairs, tmp_path):
    teachers, datasets = pairs
    res = distill(
        teachers, datasets, dcfg(actions="union", loss="actor_mimic", steps=40, eval_every=40), tmp_path / "u"
    )
    meta = read_metadata(res.checkpoint_dir)
    full = FULL_ACTION_MEANINGS
    assert meta["union_action_map"]["Pong"] == [full.index(a) for a in meta["action_meanings"]["Pong"]]
    assert meta["architecture"]["num_actions"] == [18]
    assert (res.out_dir / "regressors.pt").is_file()  # Actor-Mimic's per-game regressors
    for game in ("Breakout", "Pong"):
        assert math.isfinite(res.final_loss[game]) and res.agreement[game] > 1 / len(meta["action_meanings"][game])
    agent = load_agent(res.checkpoint_dir)
    x = holdout_states(datasets["Breakout"])[:8]
    q18 = agent.model(x)
    assert torch.equal(agent.q_values(x, "Breakout"), q18[:, meta["union_action_map"]["Breakout"]])

    # One training step's gradient never pushes an action no game has: with a masked softmax loss the
    # illegal rows of the advantage output layer get (numerically) zero gradient.
    layout = plan_layout("union", meta["action_meanings"])
    cfg = dcfg(actions="union", loss="kl", width=0.25)
    student = build_student(layout, cfg)
    g = torch.Generator().manual_seed(0)
    inputs = {gm: torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8, generator=g) for gm in layout.games}
    targets = {gm: (torch.randn(4, layout.num_actions(gm), generator=g), None) for gm in layout.games}
    sum(compute_losses(student, layout, cfg, inputs, targets).values()).backward()
    grad = student.heads[0].advantage[2].weight.grad
    legal = sorted({i for cols in layout.union_action_map.values() for i in cols})
    illegal = [i for i in range(18) if i not in legal]
    assert grad[illegal].abs().max() < 1e-6 * grad[legal].abs().max()


# --------------------------------------------------------------------------------------------- resume


def test_resume_after_kill_ends_at_the_same_step(pairs, tmp_path):
    teachers, datasets = pairs
    cfg = dcfg(steps=40, eval_every=10, checkpoint_every=10, schedule="round_robin", width=0.25)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        distill(teachers, datasets, cfg, out, stop_after=25)
    assert (out / "resume" / "LATEST").read_text() == "step-000000000020"
    assert not (out / "checkpoint").exists()
    evaluated: list[int] = []
    resumed = distill(teachers, datasets, cfg, out, on_metrics=lambda m, s: evaluated.append(s))
    assert evaluated == [30, 40]  # it went on from step 20, not from scratch
    unbroken = distill(teachers, datasets, cfg, tmp_path / "unbroken")
    assert resumed.steps == unbroken.steps == 40
    steps = [r["step"] for r in read_curve(resumed.curves_csv)]
    assert steps == [r["step"] for r in read_curve(unbroken.curves_csv)] == [0, 10, 20, 30, 40]
    assert read_metadata(resumed.checkpoint_dir)["steps"] == 40
    assert not (out / "resume").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    # a different setting is refused rather than silently mixed into the run
    with pytest.raises(DistillError, match="learning_rate"):
        distill(teachers, datasets, cfg.model_copy(update={"learning_rate": 1e-2}), out)


def test_cosine_schedule_sets_each_steps_rate(pairs, tmp_path):
    teachers, datasets = pairs
    cfg = dcfg(steps=40, eval_every=20, checkpoint_every=20, width=0.25, lr_schedule="cosine")
    out = tmp_path / "cosine"
    with pytest.raises(KeyboardInterrupt):
        distill(teachers, datasets, cfg, out, stop_after=20)
    state = torch.load(out / "resume" / "step-000000000020" / "state.pt", weights_only=False)
    lr = state["optimizer"]["param_groups"][0]["lr"]  # the rate of step 19 (0-based) of 40, not the base rate
    assert lr == pytest.approx(scheduled_lr(cfg.learning_rate, "cosine", 19, 40)) and lr < cfg.learning_rate
    resumed = distill(teachers, datasets, cfg, out)
    assert resumed.steps == 40
    constant = distill(teachers, datasets, cfg.model_copy(update={"lr_schedule": "constant"}), tmp_path / "c")
    a = load_checkpoint(resumed.checkpoint_dir)[0].state_dict()
    b = load_checkpoint(constant.checkpoint_dir)[0].state_dict()
    assert any(not torch.allclose(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- init


def test_init_from_teacher_reproduces_its_q_values(pairs):
    teachers, datasets = pairs
    tmodels = {g: load_checkpoint(Path(teachers[g]) / "checkpoint")[0] for g in teachers}
    meanings = {g: read_metadata(Path(teachers[g]) / "checkpoint")["action_meanings"][0] for g in teachers}
    layout = plan_layout("per-game", meanings)
    student = build_student(layout, dcfg(init="teacher:Pong", width=1.0), tmodels).eval()
    x = holdout_states(datasets["Pong"])
    with torch.no_grad():
        assert torch.equal(student(x, head=layout.head_for_game["Pong"]), tmodels["Pong"](x))
        # Breakout's 4-action head cannot hold the 6-action teacher head: it stays freshly initialised
        assert not torch.allclose(student(x, head=0), tmodels["Breakout"](x))
    random_student = build_student(layout, dcfg(width=1.0), tmodels)
    with torch.no_grad():
        assert not torch.allclose(random_student(x, head=1), tmodels["Pong"](x))
    # Plain "teacher" copies the first game in name order (Breakout): its torso, and no 6-action head.
    assert parse_init("teacher", layout.games) == "Breakout" == layout.games[0]
    first = build_student(layout, dcfg(init="teacher", width=1.0), tmodels).eval()
    with torch.no_grad():
        assert torch.equal(first(x, head=layout.head_for_game["Breakout"]), tmodels["Breakout"](x))
    with pytest.raises(DistillError, match="'random', 'teacher' or 'teacher:GAME'"):
        parse_init("teachr:Pong", layout.games)


# --------------------------------------------------------------------------------------------- stored Q


def _copy_with_q(src_uri: str, dst: Path, q_fn, shard_steps: int = 10_000) -> str:
    """A copy of a frame dataset that stores ``q_fn(states)`` as its teacher Q-values."""
    src = open_dataset(src_uri)
    m = src.manifest
    manifest = Manifest(
        game=m.game,
        num_actions=m.num_actions,
        action_meanings=m.action_meanings,
        observation=m.observation,
        codec="zstd",
        source={"test": "stored q"},
    )
    writer = DatasetWriter(open_store(str(dst)), manifest, shard_steps=shard_steps, q_dtype="float32")
    for sh in src.iter_shards():
        c = sh.info.context
        rows = np.arange(c, len(sh.arrays["actions"]))
        cols = {k: sh.arrays[k][c:] for k in ("actions", "rewards", "terminated", "truncated", "first", "valid")}
        writer.add(frames=sh.frames[c:], q=q_fn(sh.states(rows)), **cols)
    writer.close()
    return dst.resolve().as_uri()


def test_stored_q_values_are_the_targets(pairs, tmp_path):
    teachers, datasets = pairs
    teacher, _ = load_checkpoint(Path(teachers["Breakout"]) / "checkpoint")
    with torch.no_grad():
        teacher_best = teacher(holdout_states(datasets["Breakout"])).argmax(1)
    # Stored targets prefer the action the teacher itself picks least, with a clear margin: a student that
    # followed the teacher's forward pass instead of the stored Q-values would rarely pick it.
    target = int(torch.bincount(teacher_best, minlength=4).argmin())

    def stored_q(states: np.ndarray) -> np.ndarray:
        q = np.zeros((len(states), 4), dtype=np.float32)
        q[:, target] = 1.0
        return q

    stored_uri = _copy_with_q(datasets["Breakout"], tmp_path / "stored", stored_q)
    res = distill(
        {"Breakout": teachers["Breakout"]},
        {"Breakout": stored_uri},
        dcfg(steps=150, eval_every=75),
        tmp_path / "q",
    )
    assert res.agreement["Breakout"] >= 0.9  # agreement with the stored targets
    agent = load_agent(res.checkpoint_dir)
    with torch.no_grad():
        student_best = agent.q_values(holdout_states(stored_uri), "Breakout").argmax(1)
    assert (student_best == target).float().mean() >= 0.9  # it learned the stored preferences
    assert (teacher_best == target).float().mean() <= 0.25  # which the teacher's own forward pass does not give


# --------------------------------------------------------------------------------------------- CLI


def test_cli_pairs_by_game_not_order(pairs, tmp_path):
    from polydistill.cli import main

    teachers, datasets = pairs
    args = [
        "distill",
        "--teacher",
        teachers["Pong"],
        "--teacher",
        teachers["Breakout"],
        "--dataset",
        datasets["Breakout"],
        "--dataset",
        datasets["Pong"],
        "--profile",
        "smoke",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--width",
        "0.25",
        "--holdout-fraction",
        "0.1",
        "--source",
        "subset",
        "--subset-fraction",
        "0.5",
        "--out",
        str(tmp_path / "cli"),
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "Breakout: agreement" in r.output and "Pong: agreement" in r.output
    meta = read_metadata(tmp_path / "cli" / "checkpoint")
    assert meta["source"] == "subset" and meta["subset_fraction"] == 0.5 and meta["steps"] == 4
    bad = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "cli2"), "--actions", "shared"])
    assert bad.exit_code != 0 and "Pong (6 actions)" in bad.output
    assert "--source [full|subset|latent]" in CliRunner().invoke(main, ["distill", "--help"]).output


# --------------------------------------------------------------------------------------------- latent


@pytest.fixture(scope="module")
def breakout_latent(pairs, tmp_path_factory) -> str:
    """A Breakout latent dataset (autoencoder codes + the teacher's Q-values on the original frames) from a
    barely trained autoencoder: the student's input is blurry, its targets are exact."""
    from polydistill.autoencoder import train_autoencoder
    from polydistill.encode import encode_buffer

    teachers, datasets = pairs
    overrides = {
        "epochs": 1,
        "max_train_states": 128,
        "batch_size": 32,
        "holdout_fraction": 0.1,
        "device": "cpu",
    }
    root = tmp_path_factory.mktemp("latent")
    ae = train_autoencoder(
        datasets["Breakout"],
        C.resolve("autoencoder", "smoke", overrides=overrides),
        root / "ae",
        max_val_states=32,
    )
    dest = str(root / "latent-Breakout")
    encode_buffer(datasets["Breakout"], ae.out_dir, teachers["Breakout"], dest, device="cpu")
    return dest


def test_latent_source_decodes_codes_and_uses_stored_targets(pairs, breakout_latent, tmp_path):
    teachers, datasets = pairs
    res = distill(
        {"Breakout": teachers["Breakout"]},
        {"Breakout": breakout_latent},
        dcfg(source="latent", steps=150, eval_every=75),
        tmp_path / "lat",
    )
    meta = read_metadata(res.checkpoint_dir)
    assert meta["source"] == "latent" and meta["datasets"]["Breakout"].endswith("latent-Breakout")
    assert res.agreement["Breakout"] >= 0.9, res.agreement
    curve = read_curve(res.curves_csv)
    assert curve[-1]["loss/Breakout"] < curve[0]["loss/Breakout"] / 2
    agent = load_agent(res.checkpoint_dir)
    assert agent.label == "student_latent"
    # trained on decoded states, it plays from real frames
    assert agent.q_values(holdout_states(datasets["Breakout"])[:4], "Breakout").shape == (4, 4)


def test_latent_and_frame_datasets_are_not_mixed_up(pairs, breakout_latent, tmp_path):
    teachers, datasets = pairs
    mixed = {"Breakout": breakout_latent, "Pong": datasets["Pong"]}
    with pytest.raises(DistillError, match=r"Breakout dataset .* is a latent dataset"):
        distill(teachers, mixed, dcfg(source="subset"), tmp_path / "a")
    with pytest.raises(DistillError, match="source=latent needs latent datasets, but the Pong dataset"):
        distill(teachers, mixed, dcfg(source="latent"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # stored Q-values from one teacher are not distilled under another teacher's name
    model, meta = load_checkpoint(Path(teachers["Breakout"]) / "checkpoint")
    with torch.no_grad():
        model.heads[0].advantage[2].bias.add_(1.0)
    save_checkpoint(tmp_path / "other-teacher", model, {k: v for k, v in meta.items() if k != "sha256"})
    with pytest.raises(DistillError, match="stores Q-values of teacher"):
        distill(
            {"Breakout": tmp_path / "other-teacher"},
            {"Breakout": breakout_latent},
            dcfg(source="latent"),
            tmp_path / "c",
        )


def test_validation_states_are_held_out_and_spread_over_the_trained_range(pairs, tmp_path):
    _, datasets = pairs
    uri = _copy_with_q(datasets["Pong"], tmp_path / "sharded", lambda st: np.zeros((len(st), 6)), shard_steps=100)
    ds = open_dataset(uri)
    assert len(ds.manifest.shards) >= 8
    for fraction in (1.0, 0.5):
        steps = np.concatenate([b.steps for b in validation_batches(ds, fraction, 0.1, limit=40)])
        assert 20 <= len(steps) <= 48 and holdout_mask(steps, 0.1).all()  # never a training state
        first = round(ds.manifest.num_steps * (1 - fraction))
        span = ds.manifest.num_steps - first
        assert steps.min() >= first and steps.max() - steps.min() > span / 2, (fraction, steps)


@pytest.fixture(scope="module")
def latent_student(pairs, breakout_latent, tmp_path_factory) -> Path:
    teachers, _ = pairs
    res = distill({"Breakout": teachers["Breakout"]}, {"Breakout": breakout_latent},
                  dcfg(source="latent", steps=40, eval_every=20), tmp_path_factory.mktemp("latent-student") / "d")
    return res.checkpoint_dir


def _aligned_holdout(frames_uri: str, latent_uri: str) -> tuple[torch.Tensor, np.ndarray]:
    """Held-out frames and the latent dataset's stored codes of the same steps (the split is a hash of the step)."""
    frames = {int(s): st for b in iter_split(open_dataset(frames_uri), "holdout", 0.1, 256, limit=64)
              for s, st in zip(b.steps, b.states, strict=True)}
    codes = {int(s): z for b in iter_split(open_dataset(latent_uri), "holdout", 0.1, 256, limit=256)
             for s, z in zip(b.steps, b.latents, strict=True)}
    common = sorted(set(frames) & set(codes))[:16]
    assert len(common) >= 8, "the two datasets' held-out steps should coincide"
    return torch.from_numpy(np.stack([frames[s] for s in common])), np.stack([codes[s] for s in common])


def test_latent_student_plays_through_the_autoencoder_its_codes_came_from(pairs, breakout_latent, latent_student):
    """Issue #30's Breakout cell: the latent student learnt on decoded codes, so at play it must see frames the
    same way (frames -> encoder -> stored precision -> the distiller's decoder), not raw frames."""
    from polydistill.encode import LatentDecoder

    _, datasets = pairs
    meta = read_metadata(latent_student)
    entry = meta["input_autoencoders"]["Breakout"]
    latent_manifest = open_dataset(breakout_latent).manifest
    assert entry["path"] == "autoencoders/0" and entry["code_dtype"] == latent_manifest.source["code_dtype"]
    assert read_metadata(latent_student / entry["path"])["sha256"] == entry["sha256"]

    states, codes = _aligned_holdout(datasets["Breakout"], breakout_latent)
    agent = load_agent(latent_student)
    assert agent.input_kind == "autoencoder"
    trained_on = LatentDecoder.from_dataset(open_dataset(breakout_latent)).decode(codes)
    model, _ = load_checkpoint(latent_student)
    with torch.no_grad():
        want = model(trained_on)
    got = agent.q_values(states, "Breakout")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    raw = load_agent(latent_student, raw_frames=True)
    assert raw.input_kind == "frames"
    with torch.no_grad():
        torch.testing.assert_close(raw.q_values(states, "Breakout"), model(states))
    assert not torch.allclose(raw.q_values(states, "Breakout"), got, atol=1e-3)  # the input path matters

    # The registry's module plays the same: one block of columns per game.
    module, columns = agent.export_module()
    assert columns == {"Breakout": [0, 4]}
    with torch.no_grad():
        torch.testing.assert_close(module(states)[:, 0:4], got)


def test_a_latent_students_autoencoder_is_refused_unless_it_is_the_one_it_names(latent_student, tmp_path):
    import shutil

    from polydistill.checkpoint import CheckpointError

    d = tmp_path / "student"
    shutil.copytree(latent_student, d)
    meta = json.loads((d / "metadata.json").read_text())
    for path in ("../../escape", "/etc", "autoencoders/0/../1"):
        bad = {**meta, "input_autoencoders": {"Breakout": {**meta["input_autoencoders"]["Breakout"], "path": path}}}
        (d / "metadata.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=r"autoencoders/<index> inside the checkpoint"):
            load_agent(d)
    other = {**meta, "input_autoencoders": {"Breakout": {**meta["input_autoencoders"]["Breakout"], "sha256": "0" * 64}}}
    (d / "metadata.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=r"not the one student .* was distilled through"):
        load_agent(d)
    (d / "metadata.json").write_text(json.dumps(meta))
    load_agent(d)  # restored: loads again
    ae_weights = d / "autoencoders" / "0" / "model.pt"
    ae_weights.write_bytes(ae_weights.read_bytes()[:-7] + b"garbage")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_agent(d)
