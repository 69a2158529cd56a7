"""Config resolution: profiles, files, overrides, validation, pipeline parameters."""

from __future__ import annotations

import pytest

from polydistill import config as C


def test_defaults_are_the_published_values() -> None:
    t = C.TeacherConfig()
    assert (t.learning_rate, t.gamma, t.batch_size, t.target_network_frequency) == (1e-4, 0.99, 32, 1000)
    assert (t.start_e, t.end_e, t.max_grad_norm, t.train_frequency) == (1.0, 0.01, 10.0, 4)
    assert C.DistillConfig().tau == 0.01


def test_precedence_profile_file_flags(tmp_path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("total_steps: 1234\nlearning_rate: 0.5\nenv:\n  sticky_actions: 0.25\n")
    cfg = C.resolve("teacher", "smoke", f, {"learning_rate": 0.001, "num_envs": None})
    assert cfg.total_steps == 1234  # file over profile
    assert cfg.learning_rate == 0.001  # flag over file
    assert cfg.num_envs == C.PROFILE_OVERRIDES["smoke"]["teacher"]["num_envs"]  # unset flag ignored
    assert cfg.env.sticky_actions == 0.25


def test_dotted_overrides_reach_nested_settings() -> None:
    assert C.resolve("teacher", "cpu", overrides={"env.noop_max": 7}).env.noop_max == 7


@pytest.mark.parametrize(
    ("stage", "overrides", "match"),
    [
        ("teacher", {"total_steps": 0}, "total_steps"),
        ("teacher", {"learnin_rate": 1.0}, "learnin_rate"),
        ("distill", {"loss": "hinge"}, "loss"),
        ("teacher", {"start_e": 0.1, "end_e": 0.5}, "end_e"),
        ("export", {"codec": "xz", "zstd_level": 19}, "no xz preset"),
    ],
)
def test_invalid_values_name_the_key(stage, overrides, match) -> None:
    with pytest.raises(C.ConfigError, match=match):
        C.resolve(stage, "smoke", overrides=overrides)


def test_unknown_profile_and_bad_file(tmp_path) -> None:
    with pytest.raises(C.ConfigError, match="Did you mean 'smoke'"):
        C.resolve("teacher", "smok")
    bad = tmp_path / "b.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(C.ConfigError, match="mapping"):
        C.resolve("teacher", "cpu", bad)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.resolve("teacher", "cpu", tmp_path / "missing.yaml")


def test_pipeline_parameters_resolve_with_sentinels() -> None:
    out = C.resolve_pipeline("smoke", {"teacher_steps": -1, "tau": 0.5, "distill_loss": ""})
    assert out["teacher"]["total_steps"] == C.PROFILE_OVERRIDES["smoke"]["teacher"]["total_steps"]
    assert out["distill"]["tau"] == 0.5 and out["distill"]["loss"] == "kl"
    assert set(out) == set(C.STAGES)
    with pytest.raises(C.ConfigError, match="unknown pipeline parameter"):
        C.resolve_pipeline("smoke", {"nope": 1})
    # Every pipeline parameter targets a real setting.
    for stage, key in C.PIPELINE_PARAMETERS.values():
        assert key in C.STAGES[stage].model_fields


def test_per_game_teacher_budgets() -> None:
    """``game_steps`` gives the named games their own ``total_steps`` (every spelling of the game); a
    ``total_steps`` that is set (flag, file, pipeline parameter) without it applies to every game."""
    cpu = C.resolve("teacher", "cpu")
    profile = C.PROFILE_OVERRIDES["cpu"]["teacher"]
    assert cpu.game_steps == profile["game_steps"] and "Breakout" in cpu.game_steps
    for spelling in ("Breakout", "ALE/Breakout-v5", "BreakoutNoFrameskip-v4", "breakout"):
        assert cpu.for_game(spelling).total_steps == profile["game_steps"]["Breakout"]
    pong = cpu.for_game("ALE/Pong-v5")
    assert pong.total_steps == profile["total_steps"] and pong.game_steps == {}
    assert C.resolve("teacher", "cpu", overrides={"total_steps": 1_000}).for_game("Breakout").total_steps == 1_000
    assert C.resolve_pipeline("cpu", {"teacher_steps": 3_000})["teacher"]["game_steps"] == {}
    kept = C.resolve_pipeline("cpu", {"teacher_steps": -1})["teacher"]  # the sentinel: the profile's budgets
    assert kept["game_steps"] == profile["game_steps"]
    given = C.resolve("teacher", "cpu", overrides={"game_steps": "Pong=400_000, Atlantis=1000"})
    assert given.game_steps == {"Pong": 400_000, "Atlantis": 1_000}  # replaces the profile's whole
    assert given.for_game("Breakout").total_steps == profile["total_steps"]


def test_game_steps_survive_kfps_parameter_transport() -> None:
    """A dict pipeline parameter reaches a component as a protobuf Struct, whose numbers are doubles: the cpu
    profile's budgets must read back as the ints they were (a run once died here at its first teacher)."""
    struct_pb2 = pytest.importorskip("google.protobuf.struct_pb2")
    from google.protobuf import json_format

    teacher = C.resolve_pipeline("cpu", {})["teacher"]
    carried = struct_pb2.Struct()
    carried.update(teacher)
    received = json_format.MessageToDict(carried)
    assert received["game_steps"]["Breakout"] == 200_000.0 and isinstance(received["game_steps"]["Breakout"], float)
    cfg = C.from_dict("teacher", received)
    assert cfg.game_steps == C.PROFILE_OVERRIDES["cpu"]["teacher"]["game_steps"]
    assert all(type(n) is int for n in cfg.game_steps.values())
    assert cfg.for_game("Atlantis").total_steps == 200_000 and type(cfg.for_game("Atlantis").total_steps) is int


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("Pong", "is not GAME=STEPS"),
        ("Pong=-5", "is not GAME=STEPS"),
        ({"../Pong": 10}, "not a game name"),
        ({"Pong": 0}, "at least 1"),
        ({"Pong": "many"}, "whole number"),
        ({"Pong": 1.5}, "whole number"),
    ],
)
def test_bad_game_steps_name_the_setting(value, match) -> None:
    with pytest.raises(C.ConfigError, match=f"game_steps: .*{match}"):
        C.resolve("teacher", "cpu", overrides={"game_steps": value})


def test_pipeline_encode_config_follows_the_export_and_autoencoder_configs() -> None:
    """The pipeline's encode-buffer shards like the buffer it encodes and stores the autoencoder's code
    precision; the command's own defaults are the export defaults (spelled once, in ExportConfig)."""
    configs = C.resolve_pipeline("cpu", {"code_dtype": "float16"})
    export = {**configs["export"], "shard_steps": 5_000}  # not the default, so following it shows
    enc = C.pipeline_encode_config(configs["autoencoder"], export)
    assert (enc.code_dtype, enc.shard_steps, enc.q_dtype) == ("float16", 5_000, "float16")
    assert enc.shard_steps != C.EncodeConfig().shard_steps == C.ExportConfig().shard_steps
    assert C.resolve("encode", "cpu").code_dtype is None  # unset: the autoencoder's own
