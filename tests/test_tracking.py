"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1 and against SQLite (conftest_mlflow.py).

Covered: parent and child runs, metrics with steps, pt2 models that load back with the same outputs, registry
aliases, ``compare`` ranking in three formats (library and CLI), no credential in any param, tag or
artifact, and an unreachable or failing tracking store that warns once and never stops a stage.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
import secrets
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from polydistill import tracking as T
from polydistill.networks import DuelingQNetwork
from polydistill.tracking.connection import _global_tracking_uri

pytest_plugins = ["tests.conftest_mlflow"]

SENTINEL = f"sentinel-secret-{secrets.token_hex(8)}"
GAMES = ["Breakout", "Pong"]


@pytest.fixture(autouse=True, scope="module")
def _no_store_in_cwd() -> Iterator[None]:
    """Nothing may fall back to MLflow's default store (./mlflow.db, ./mlruns) in the current directory."""
    before = {p: p.exists() for p in (Path.cwd() / "mlflow.db", Path.cwd() / "mlruns")}
    yield
    created = [str(p) for p, existed in before.items() if not existed and p.exists()]
    assert not created, f"a tracking call used MLflow's default store: {created}"


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _global_uri(uri: str):
    """mlflow.pytorch.load_model resolves models:/ through the global tracking URI."""
    with _global_tracking_uri(uri):
        yield


def _states(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 84, 84), dtype=np.uint8)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "polydistill.tracking" and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------------------
# Pure helpers (no MLflow store)


def test_resolve_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert T.resolve_tracking_uri(None, tmp_path) == "http://mlflow.example:5000"
    assert T.resolve_tracking_uri("http://other:1", tmp_path) == "http://other:1"


def test_secret_key_names() -> None:
    for name in (
        "secret_key",
        "AWS_SECRET_ACCESS_KEY",
        "accesskey",
        "MLFLOW_TRACKING_TOKEN",
        "apiKey",
        "password",
    ):
        assert T.is_secret_key(name), name
    for name in ("TOKENIZERS_PARALLELISM", "max_tokens", "latent_dim", "key", "sticky_actions"):
        assert not T.is_secret_key(name), name


def test_flatten_params_drops_and_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "false")  # a setting-like value is not treated as a secret
    flat = T.flatten_params(
        {
            "distill": {"loss": "kl", "tau": 0.01, "games": ["Pong", "Breakout"]},
            "store": {"secret_key": "literal-value", "endpoint": f"http://user:pw-{SENTINEL}@minio:9000"},
            "note": f"prefix {SENTINEL} suffix",
            "env": {"episodic_life": "false"},
            "MLFLOW_TRACKING_TOKEN": "abcdef",
        }
    )
    assert flat["distill.loss"] == "kl" and flat["distill.tau"] == "0.01"
    assert json.loads(flat["distill.games"]) == ["Pong", "Breakout"]
    assert "store.secret_key" not in flat and "MLFLOW_TRACKING_TOKEN" not in flat
    assert flat["store.endpoint"] == "http://user:***@minio:9000"
    assert flat["note"] == "prefix *** suffix" and flat["env.episodic_life"] == "false"
    assert T.safe_tracking_uri(f"https://bob:{SENTINEL}@mlflow:443/?token=x") == "https://bob:***@mlflow:443/"


def _result(label: str, means: dict[str, float]) -> dict:
    """An evaluation results dict (docs/CONTRACTS.md) with the given mean score per game."""
    return {
        "agent": {"path": f"/runs/{label}", "kind": label, "label": label, "source": label},
        "protocol": "episodes",
        "config": {"protocol": "episodes", "episodes": 1, "epsilon": 0.05},
        "games": {
            g: {"mean": m, "std": 0.0, "scores": [m], "episodes": 1, "steps": 10} for g, m in means.items()
        },
    }


def test_report_metrics_from_a_real_report_json() -> None:
    from polydistill.report import build_table

    table = build_table(
        [
            _result("random", {"Pong": 0.0, "Breakout": 2.0}),
            _result("teacher", {"Pong": 10.0, "Breakout": 20.0}),
            _result("student_subset", {"Pong": 4.0, "Breakout": 18.0}),  # 40 % and 90 % of teacher
            _result("student_latent", {"Pong": 12.0, "Breakout": -1.0}),  # 120 % and -5 % (floored to 1 %)
        ]
    )
    report = json.loads(json.dumps(table))  # exactly what report.json holds
    m = T.report_metrics(
        report, bytes_per_state={"subset": 37.0, "student_latent": {"Pong": 128, "Breakout": 130}}
    )
    assert m["pct_of_teacher/subset/Pong"] == pytest.approx(40.0)
    assert m["pct_of_teacher/subset/Breakout"] == pytest.approx(90.0)
    assert m["geo_mean_pct/subset"] == pytest.approx(60.0)  # sqrt(40 * 90)
    assert m["pct_of_teacher/latent/Breakout"] == pytest.approx(-5.0)
    assert m["geo_mean_pct/latent"] == pytest.approx((120.0 * 1.0) ** 0.5)
    assert m["pct_normalised/subset/Breakout"] == pytest.approx(100 * 16 / 18)
    assert m["score/teacher/Pong"] == 10.0 and m["score/random/Breakout"] == 2.0
    assert m["bytes_per_state/subset"] == 37.0 and m["bytes_per_state/latent"] == 129.0
    # A teacher that never scores above 0 leaves % of teacher undefined: nothing is logged for it.
    weak = json.loads(
        json.dumps(
            build_table([_result("teacher", {"Pong": -5.0}), _result("student_subset", {"Pong": -3.0})])
        )
    )
    assert not any(k.startswith(("pct_of_teacher/", "geo_mean_pct/")) for k in T.report_metrics(weak))


def test_compare_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(T.TrackingError, match="no MLflow database"):
        T.compare_runs(f"sqlite:///{tmp_path}/absent.db", "polydistill")
    assert not (tmp_path / "absent.db").exists()  # reading must not create an empty store


# ------------------------------------------------------------------------------------------------------
# Against both backends


def test_parent_and_child_runs(mlflow_tracking_uri: str, mlflow_experiment: str) -> None:
    uri = mlflow_tracking_uri
    parent = T.start_pipeline_run(
        uri,
        mlflow_experiment,
        "pipeline-a",
        {"kfp.run_id": "kfp-123", "profile": "smoke", "games": GAMES},
        {"distill": {"loss": "kl"}},
    )
    assert parent
    with T.StageRun(uri, parent, "train-teacher", "Pong", mlflow_experiment) as teacher:
        teacher.log_metrics({"episode_return": 1.0}, 1)
    with T.StageRun(uri, parent, "distill", "subset", mlflow_experiment):
        pass
    with (
        pytest.raises(ValueError, match="boom"),
        T.StageRun(uri, parent, "evaluate", None, mlflow_experiment),
    ):
        raise ValueError("boom")  # a failing stage: the run ends FAILED and the error propagates
    T.end_pipeline_run(uri, parent)

    client = _client(uri)
    p = client.get_run(parent)
    assert p.info.status == "FINISHED"
    assert p.data.tags[T.TAG_KFP_RUN_ID] == "kfp-123" and p.data.tags[T.TAG_PROFILE] == "smoke"
    assert p.data.tags[T.TAG_GAMES] == "Breakout,Pong" and p.data.params["distill.loss"] == "kl"
    exp_id = client.get_experiment_by_name(mlflow_experiment).experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")
    by_name = {c.data.tags["mlflow.runName"]: c for c in children}
    assert set(by_name) == {"train-teacher/Pong", "distill/subset", "evaluate"}
    assert by_name["train-teacher/Pong"].data.tags[T.TAG_STAGE] == "train-teacher"
    assert by_name["train-teacher/Pong"].data.tags[T.TAG_GAME] == "Pong"
    assert by_name["train-teacher/Pong"].data.tags[T.TAG_KFP_RUN_ID] == "kfp-123"  # inherited from the parent
    assert by_name["train-teacher/Pong"].info.status == "FINISHED"
    assert by_name["evaluate"].info.status == "FAILED"
    # Only the parent is a pipeline run.
    pipelines = client.search_runs([exp_id], "tags.polydistill.kind = 'pipeline'")
    assert [r.info.run_id for r in pipelines] == [parent]


def test_metrics_with_steps(
    mlflow_tracking_uri: str, mlflow_experiment: str, caplog: pytest.LogCaptureFixture
) -> None:
    def fake_training(on_metrics: T.MetricsCallback) -> None:
        for step in range(0, 100, 10):
            loss = float("nan") if step == 30 else 1.0 / (step + 1)
            on_metrics({"td_loss": loss, "epsilon": 1.0 - step / 100, "steps_per_second": 500.0 + step}, step)

    with (
        caplog.at_level(logging.WARNING),
        T.StageRun(mlflow_tracking_uri, None, "train-teacher", "Pong", mlflow_experiment) as run,
    ):
        fake_training(run.log_metrics)
        run_id = run.run_id
    client = _client(mlflow_tracking_uri)
    loss = sorted(client.get_metric_history(run_id, "td_loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == [s for s in range(0, 100, 10) if s != 30]  # the NaN is skipped
    assert [m.value for m in loss] == pytest.approx([1.0 / (m.step + 1) for m in loss])
    eps = sorted(client.get_metric_history(run_id, "epsilon"), key=lambda m: m.step)
    assert [m.value for m in eps] == pytest.approx([1.0 - s / 100 for s in range(0, 100, 10)])
    nan_warnings = [r for r in _warnings(caplog) if "td_loss" in r.getMessage()]
    assert len(nan_warnings) == 1
    assert client.get_run(run_id).data.tags["mlflow.runName"] == "train-teacher/Pong"


@pytest.fixture(scope="module")
def logged_student(mlflow_tracking_uri: str) -> SimpleNamespace:
    """A pipeline run whose distill/subset child logged a two-head student (4 and 6 actions), with the
    sentinel credential in the environment and in every config, tag and metadata it logged."""
    uri = mlflow_tracking_uri
    experiment = f"models-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(0)
    net = DuelingQNetwork([4, 6], width=0.25).eval()
    config = {
        "distill": {"loss": "kl", "tau": 0.01},
        "store": {
            "uri": "s3://bucket/run",
            "secret_key": SENTINEL,
            "endpoint": f"http://ak:{SENTINEL}@minio",
        },
        "aws_secret_access_key": SENTINEL,
        "note": f"copied {SENTINEL} by mistake",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL)
        parent = T.start_pipeline_run(
            uri, experiment, "models", {"kfp.run_id": "local-1", "games": GAMES, "leak": SENTINEL}, config
        )
        with T.StageRun(uri, parent, "distill", "subset", experiment) as run:
            run.log_config(config)
            run.set_tags({"note": f"x{SENTINEL}x", "password": "hunter22"})
            run.log_dict({"config": config}, "config/resolved.json")
            with contextlib.ExitStack() as stack:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                (tmp / "notes.md").write_text(f"endpoint secret: {SENTINEL}\n")
                run.log_artifact(tmp / "notes.md", "report")
            started = time.monotonic()
            model_uri = run.log_model(
                net,
                "student",
                {"kind": "student", "games": GAMES, "config": config, "secret_key": SENTINEL},
                _states(2, seed=1),
            )
            seconds = time.monotonic() - started
        T.log_report_to_parent(
            uri, parent, {"games": {"Pong": {"note": SENTINEL, "student_subset": {"mean": 1.0}}}}, config
        )
        T.end_pipeline_run(uri, parent)
    assert model_uri, "log_model failed; see the warning above"
    return SimpleNamespace(
        uri=uri,
        experiment=experiment,
        parent=parent,
        run_id=run.run_id,
        model_uri=model_uri,
        net=net,
        log_model_seconds=seconds,
    )


def test_logged_model_loads_back_with_same_outputs(logged_student: SimpleNamespace) -> None:
    with _global_uri(logged_student.uri):
        loaded = mlflow.pytorch.load_model(logged_student.model_uri)
    x = torch.from_numpy(_states(3, seed=2))  # a batch size other than the example's: the batch is dynamic
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (3, 10)
        torch.testing.assert_close(out[:, :4], logged_student.net(x, head=0), rtol=0, atol=0)
        torch.testing.assert_close(out[:, 4:], logged_student.net(x, head=1), rtol=0, atol=0)
    client = _client(logged_student.uri)
    model_id = logged_student.model_uri.split("/")[-1]
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == logged_student.run_id and logged.name == "student"
    with _global_uri(logged_student.uri):
        local = Path(mlflow.artifacts.download_artifacts(logged_student.model_uri))
    assert (local / "data" / "model.pt2").is_file()  # the safe graph format, not a pickle
    meta = json.loads((local / "metadata.json").read_text())
    assert meta["heads"] == [[0, 4], [4, 10]] and meta["games"] == GAMES


def test_teacher_model_single_head_roundtrip(mlflow_sqlite_uri: str, mlflow_experiment: str) -> None:
    torch.manual_seed(1)
    teacher = DuelingQNetwork(6, width=0.25).eval()
    with T.StageRun(mlflow_sqlite_uri, None, "train-teacher", "Pong", mlflow_experiment) as run:
        uri = run.log_model(teacher, "teacher", {"kind": "teacher", "game": "Pong"}, _states(1, seed=3))
    assert uri
    with _global_uri(mlflow_sqlite_uri):
        loaded = mlflow.pytorch.load_model(uri)
    x = torch.from_numpy(_states(5, seed=4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), teacher(x), rtol=0, atol=0)


def test_latent_student_is_logged_as_it_plays_through_its_autoencoders(
    mlflow_sqlite_uri: str, mlflow_experiment: str, tmp_path: Path
) -> None:
    """The registry's latent student takes frames, as the evaluated one does: each game's block of columns is
    computed through that game's autoencoder (agents.StudentAgent.export_module), not on raw frames."""
    from polydistill.agents import load_agent
    from polydistill.checkpoint import save_checkpoint
    from polydistill.envs import action_meanings
    from polydistill.latent_input import save_input_autoencoders
    from polydistill.networks import ConvAutoencoder
    from polydistill_kfp.components.runtime import log_checkpoint

    torch.manual_seed(2)
    games = ["Breakout", "Pong"]
    ckpt = tmp_path / "checkpoint"
    aes = {g: (ConvAutoencoder(16, width=0.25).eval(), {"kind": "autoencoder", "game": g}, dtype, f"file:///{g}")
           for g, dtype in zip(games, ("int8", "float16"), strict=True)}
    meta = {"kind": "student", "games": games, "actions": "per-game", "head_for_game": {"Breakout": 0, "Pong": 1},
            "action_meanings": {g: action_meanings(g) for g in games}, "source": "latent",
            "observation": {"frame_stack": 4, "frame_shape": [84, 84]},
            "input_autoencoders": save_input_autoencoders(ckpt, aes, games)}
    save_checkpoint(ckpt, DuelingQNetwork([4, 6], width=0.25).eval(), meta)
    agent = load_agent(ckpt)
    with T.StageRun(mlflow_sqlite_uri, None, "distill", "latent", mlflow_experiment) as run:
        uri = log_checkpoint(run, ckpt, "student")
    assert uri
    with _global_uri(mlflow_sqlite_uri):
        loaded = mlflow.pytorch.load_model(uri)
        local = Path(mlflow.artifacts.download_artifacts(uri))
    assert json.loads((local / "metadata.json").read_text())["game_columns"] == {"Breakout": [0, 4], "Pong": [4, 10]}
    x = torch.from_numpy(_states(3, seed=5))
    with torch.no_grad():
        out = loaded(x)
        torch.testing.assert_close(out[:, 0:4], agent.q_values(x, "Breakout"), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 4:10], agent.q_values(x, "Pong"), rtol=1e-5, atol=1e-5)
        raw = load_agent(ckpt, raw_frames=True)
        assert not torch.allclose(out[:, 0:4], raw.q_values(x, "Breakout"), atol=1e-4)


def test_registry_aliases(logged_student: SimpleNamespace) -> None:
    uri, run_id = logged_student.uri, logged_student.run_id
    name = f"student-{uuid.uuid4().hex[:8]}"
    client = _client(uri)

    def aliases() -> tuple[int, int]:
        cand = client.get_model_version_by_alias(name, "candidate").version
        champ = client.get_model_version_by_alias(name, "champion").version
        return int(cand), int(champ)

    ev = {"protocol": "cycles", "cycles": 2, "seed": 12345}

    def register(games: list[str], geo: float, mean_hns: float | None, evaluation: dict = ev) -> int | None:
        return T.register_student(uri, run_id, name, games, geo, mean_hns=mean_hns, evaluation=evaluation)

    assert register(["Pong", "Breakout"], 50.0, 0.5) == 1
    assert aliases() == (1, 1)  # the first version is the first champion
    # A student of a weaker teacher: a higher % of its own teacher, a lower HNS -- the champion stays.
    assert register(["Pong", "Breakout"], 90.0, 0.3) == 2
    assert aliases() == (2, 1)
    assert register(["Breakout", "Pong"], 20.0, 0.6) == 3
    assert aliases() == (3, 3)  # a higher mean HNS on the same games (listed in another order) moves it
    assert register(["Pong", "Seaquest"], 99.0, 9.0) == 4
    assert aliases() == (4, 3)  # other games: never replaces the champion
    assert register(["Pong", "Breakout"], 99.0, 9.0, {**ev, "seed": 1}) == 5
    assert aliases() == (5, 3)  # another evaluation seed: not compared, the champion stays
    assert "another evaluation protocol or seed" in client.get_model_version(name, "5").tags[
        "polydistill.champion_decision"]
    assert register(["Pong", "Breakout"], 99.0, 0.6) == 6
    assert aliases() == (6, 3)  # a tie does not move it
    v3 = client.get_model_version(name, "3")
    assert v3.tags[T.VTAG_GAMES] == "Breakout,Pong" and float(v3.tags[T.VTAG_GEO]) == 20.0
    assert float(v3.tags["polydistill.mean_hns"]) == 0.6
    assert v3.run_id == run_id
    with _global_uri(uri):
        loaded = mlflow.pytorch.load_model(f"models:/{name}@champion")
    x = torch.from_numpy(_states(2, seed=5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[:, :4], logged_student.net(x, head=0), rtol=0, atol=0)


def _leaks_in_artifacts(uri: str, artifact_uri_or_run: dict[str, str], tmp: Path) -> list[str]:
    with _global_uri(uri):  # models:/ URIs resolve through the global tracking URI
        local = Path(
            mlflow.artifacts.download_artifacts(**artifact_uri_or_run, dst_path=str(tmp), tracking_uri=uri)
        )
    files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
    assert files
    return [str(p) for p in files if SENTINEL.encode() in p.read_bytes()]


def test_no_secret_in_params_tags_or_artifacts(logged_student: SimpleNamespace, tmp_path: Path) -> None:
    client = _client(logged_student.uri)
    runs = [client.get_run(logged_student.parent), client.get_run(logged_student.run_id)]
    for run in runs:
        for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
            for key, value in values.items():
                assert SENTINEL not in key and SENTINEL not in value, f"{kind} {key} of {run.info.run_name}"
    child = runs[1].data
    assert child.params["distill.loss"] == "kl"  # the harmless config is there
    assert "store.secret_key" not in child.params and "aws_secret_access_key" not in child.params
    assert child.params["note"] == "copied *** by mistake" and "password" not in child.tags
    leaks = []
    for i, run in enumerate(runs):
        leaks += _leaks_in_artifacts(logged_student.uri, {"run_id": run.info.run_id}, tmp_path / f"run{i}")
    leaks += _leaks_in_artifacts(
        logged_student.uri, {"artifact_uri": logged_student.model_uri}, tmp_path / "m"
    )
    assert leaks == []
    model_id = logged_student.model_uri.split("/")[-1]
    logged = client.get_logged_model(model_id)
    assert all(SENTINEL not in str(v) for v in (*logged.params.values(), *logged.tags.values()))


def _report(pcts: dict[str, dict[str, float]], geo: dict[str, float] | None = None) -> dict:
    games: dict[str, dict] = {}
    for source, per_game in pcts.items():
        for game, pct in per_game.items():
            games.setdefault(game, {"teacher": {"mean": 100.0, "std": 0.0}})
            games[game][f"student_{source}"] = {"mean": pct, "std": 0.0, "pct_of_teacher": pct}
    return {"games": games, **({"geo_mean_pct": geo} if geo else {})}


def _pipeline(
    uri: str,
    experiment: str,
    name: str,
    games: list[str],
    distill: dict,
    report: dict,
    bytes_per_state: dict[str, float],
) -> str:
    parent = T.start_pipeline_run(
        uri, experiment, name, {"kfp.run_id": name, "profile": "cpu", "games": games}, {"distill": distill}
    )
    T.log_report_to_parent(uri, parent, report, {}, bytes_per_state=bytes_per_state)
    T.end_pipeline_run(uri, parent)
    return parent


def test_compare_ranks_runs_in_all_formats(mlflow_tracking_uri: str, mlflow_experiment: str) -> None:
    uri, exp = mlflow_tracking_uri, mlflow_experiment
    # Run A: subset 90/10 (arithmetic mean 50, geometric 30) and latent 60/60; run B: subset 45/45.
    # Ranked by geometric mean: A/latent 60, B/subset 45, A/subset 30 (an arithmetic ranking would differ).
    _pipeline(
        uri,
        exp,
        "run-A",
        ["Pong", "Breakout"],
        {"loss": "kl", "tau": 0.01, "width": 1.0, "actions": "per-game"},
        _report({"subset": {"Pong": 90.0, "Breakout": 10.0}, "latent": {"Pong": 60.0, "Breakout": 60.0}}),
        {"subset": 37.0, "latent": 128.0},
    )
    _pipeline(
        uri,
        exp,
        "run-B",
        ["Breakout", "Pong"],
        {"loss": "mse", "tau": 0.05, "width": 0.5, "actions": "shared"},
        _report({"subset": {"Pong": 45.0, "Breakout": 45.0}}, geo={"student_subset": 45.0}),
        {"subset": 41.0},
    )
    _pipeline(
        uri,
        exp,
        "run-C",
        ["Pong", "Seaquest"],
        {"loss": "kl", "tau": 0.01, "width": 1.0, "actions": "union"},
        _report({"subset": {"Pong": 99.0, "Seaquest": 99.0}}),
        {"subset": 30.0},
    )

    expected = [("run-A", "latent", 60.0), ("run-B", "subset", 45.0), ("run-A", "subset", 30.0)]
    text = T.compare_runs(uri, exp, ["Pong", "Breakout"], "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["run"], r["source"], round(float(r["geo_mean_pct"]), 6)) for r in rows] == expected
    b = rows[1]
    assert (b["profile"], b["loss"], b["tau"], b["actions"], b["width"]) == (
        "cpu",
        "mse",
        "0.05",
        "shared",
        "0.5",
    )
    assert (
        float(b["bytes_per_state"]) == 41.0
        and float(b["pct/Pong"]) == 45.0
        and float(b["pct/Breakout"]) == 45.0
    )
    assert float(rows[2]["pct/Pong"]) == 90.0 and float(rows[2]["pct/Breakout"]) == 10.0

    table = T.compare_runs(uri, exp, ["Pong", "Breakout"], "table").splitlines()
    assert table[0].split()[:3] == ["run", "run_id", "status"] and "geo_mean_pct" in table[0]
    body = [line.split() for line in table[2:]]
    assert [(r[0], r[9]) for r in body] == [(n, s) for n, s, _ in expected]
    # geo_mean_pct, then the HNS columns (empty here: the reports carry no HNS)
    assert all(f"{g:.1f}" in r[10:] for r, (_, _, g) in zip(body, expected, strict=True))

    page = T.compare_runs(uri, exp, ["Pong", "Breakout"], "html")
    html_rows = re.findall(r"<tr>(.*?)</tr>", page)
    geo_at = re.findall(r"<th>(.*?)</th>", html_rows[0]).index("geo_mean_pct")
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in html_rows[1:]]
    assert [(c[0], c[9], c[geo_at]) for c in cells] == [(n, s, f"{g:.1f}") for n, s, g in expected]

    everything = list(csv.DictReader(io.StringIO(T.compare_runs(uri, exp, None, "csv"))))
    assert everything[0]["run"] == "run-C"  # 99 % over other games, shown without a filter
    assert len(everything) == 4

    from polydistill.cli import main

    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--tracking-uri",
            uri,
            "--experiment",
            exp,
            "--games",
            "Pong,Breakout",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output == text


# ------------------------------------------------------------------------------------------------------
# Failures never stop a stage


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


def test_unreachable_server_warns_once_and_no_ops(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    uri = f"http://user:{SENTINEL}@127.0.0.1:{port}"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        parent = T.start_pipeline_run(uri, "e", "p", {"kfp.run_id": "x"}, {"a": 1})
        with T.StageRun(uri, parent, "train-teacher", "Pong") as run:
            run.log_config({"a": 1})
            for step in range(3):
                run.log_metrics({"loss": 1.0}, step)
            assert run.log_model(torch.nn.Linear(2, 2), "m", {}, np.zeros((2, 2), np.float32)) is None
            run.log_dict({"a": 1}, "a.json")
        assert T.log_report_to_parent(uri, "some-run", {"games": {}}, {}) == {}
        T.end_pipeline_run(uri, "some-run")
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"giving up on an unreachable server took {elapsed:.1f} s"
    assert parent == "" and run.run_id is None and not run.active
    stage_warnings = [r for r in _warnings(caplog) if "train-teacher/Pong" in r.getMessage()]
    assert len(stage_warnings) == 1  # once per stage run, not once per call
    for record in _warnings(caplog):
        message = record.getMessage()
        assert f"127.0.0.1:{port}" in message and SENTINEL not in message


def test_failure_mid_run_warns_once_and_stage_finishes(
    mlflow_sqlite_uri: str,
    mlflow_experiment: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise ConnectionError("connection reset by peer")

    with (
        caplog.at_level(logging.WARNING),
        T.StageRun(mlflow_sqlite_uri, None, "distill", "latent", mlflow_experiment) as run,
    ):
        run.log_metrics({"loss": 1.0}, 0)
        monkeypatch.setattr(run._client, "log_batch", broken)
        monkeypatch.setattr(run._client, "set_terminated", broken)
        for step in range(1, 5):
            run.log_metrics({"loss": 1.0 / step}, step)  # must not raise
        run.log_config({"a": 1})
        result = "trained"
    assert result == "trained" and calls == [1]  # one failing call, then no-ops
    assert len(_warnings(caplog)) == 1 and "distill/latent" in _warnings(caplog)[0].getMessage()
    hist = _client(mlflow_sqlite_uri).get_metric_history(run.run_id, "loss")
    assert [m.step for m in hist] == [0]


def test_failed_run_without_a_failing_stage_names_the_open_ones(mlflow_sqlite_uri: str, mlflow_experiment: str) -> None:
    """A pod killed from outside leaves its stage run RUNNING and tags nothing: end-run names that stage."""
    uri = mlflow_sqlite_uri
    parent = T.start_pipeline_run(uri, mlflow_experiment, run_name="killed", tags={"kfp.run_id": "k1"}, params={})
    done = T.StageRun(uri, parent, "train-teacher", "Pong")
    with done:
        pass
    T.StageRun(uri, parent, "train-teacher", "Breakout").start()  # never ended: its pod died
    tags = T.end_pipeline_run(uri, parent, "FAILED", failed_task="stages", error="Task stages failed.")
    assert tags == {T.TAG_FAILED_TASK: "train-teacher/Breakout", T.TAG_ERROR: "Task stages failed."}
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags[T.TAG_FAILED_TASK] == "train-teacher/Breakout"


def test_failing_stage_tags_the_parent_once(mlflow_sqlite_uri: str, mlflow_experiment: str) -> None:
    uri = mlflow_sqlite_uri
    parent = T.start_pipeline_run(uri, mlflow_experiment, run_name="failing", tags={"kfp.run_id": "f1"}, params={})
    for game in ("Pong", "Breakout"):
        with pytest.raises(RuntimeError), T.StageRun(uri, parent, "export-buffer", game):
            raise RuntimeError(f"store refused {game}\nsecond line")
    from mlflow import MlflowClient

    tags = MlflowClient(uri).get_run(parent).data.tags
    assert tags[T.TAG_FAILED_TASK] == "export-buffer/Pong"  # the first failure, not overwritten
    assert tags[T.TAG_ERROR] == "RuntimeError: store refused Pong second line"
    assert T.end_pipeline_run(uri, parent, "FINISHED") == {}


# ------------------------------------------------- the run's outcome on a 2.15.0-like backend (issue #34)


@pytest.mark.parametrize(("evidence", "status"), [
    (T.RunEvidence(succeeded=True, failed=("train-teacher/Pong",)), "FINISHED"),  # a retry then succeeded
    (T.RunEvidence(failed=("distill/subset",), stopped=("evaluate/random",)), "FAILED"),
    (T.RunEvidence(stopped=("train-teacher/Pong",)), "KILLED"),
    (T.RunEvidence(), "FAILED"),
])
def test_decide_outcome(evidence: T.RunEvidence, status: str) -> None:
    assert T.decide_outcome(evidence)[0] == status


def _run_215(uri: str, experiment: str, kfp_run_id: str, how: str) -> str:
    """A pipeline run's MLflow records as the stages write them on backend 2.15.0, whose ExitHandler state
    stays RUNNING whatever happens (kubeflow/pipelines#13321): ``success`` (the report marks it), ``failure``
    (a stage raises), ``cancel`` (activeDeadlineSeconds 0 kills a pod mid-stage: its run never ends) or
    ``interrupt`` (a stage stopped with KeyboardInterrupt). Returns the parent run id."""
    parent = T.start_pipeline_run(uri, experiment, run_name=how, tags={"kfp.run_id": kfp_run_id}, params={})
    with T.StageRun(uri, parent, "train-teacher", "Pong"):
        pass
    if how == "success":
        with T.StageRun(uri, parent, "distill", "subset"):
            pass
        assert T.mark_pipeline_succeeded(uri, parent)
    elif how == "failure":
        with pytest.raises(ValueError), T.StageRun(uri, parent, "distill", "subset"):
            raise ValueError("2 games but 1 teachers")
    elif how == "cancel":
        T.StageRun(uri, parent, "distill", "subset").start()
    elif how == "interrupt":
        with pytest.raises(KeyboardInterrupt), T.StageRun(uri, parent, "distill", "subset"):
            raise KeyboardInterrupt
    return parent


@pytest.mark.parametrize(("how", "status"), [
    ("success", "FINISHED"), ("failure", "FAILED"), ("cancel", "KILLED"), ("interrupt", "KILLED")])
def test_end_run_gives_the_outcome_while_the_backend_says_running(
        how: str, status: str, mlflow_sqlite_uri: str, mlflow_experiment: str) -> None:
    """The exit task takes no final status (2.15.0's would say RUNNING, which the old end-run turned into
    FAILED for every run): it reads the run's own records."""
    import inspect

    from polydistill_kfp.components.end_run import end_run

    assert "status" not in inspect.signature(end_run.python_func).parameters
    assert T.run_outcome("RUNNING") == "FAILED"  # what the backend's state alone would have given
    kfp_run_id = f"run-{how}-{uuid.uuid4().hex[:6]}"
    parent = _run_215(mlflow_sqlite_uri, mlflow_experiment, kfp_run_id, how)
    end_run.python_func(tracking_uri=mlflow_sqlite_uri, experiment=mlflow_experiment, kfp_run_id=kfp_run_id)
    run = MlflowClient(mlflow_sqlite_uri).get_run(parent)
    assert run.info.status == status, run.data.tags
    tags = run.data.tags
    if status == "FAILED":
        assert tags[T.TAG_FAILED_TASK] == "distill/subset" and tags[T.TAG_ERROR].startswith("ValueError: 2 games")
    else:
        assert T.TAG_FAILED_TASK not in tags
    if status == "KILLED":
        assert "distill/subset" in tags[T.TAG_OUTCOME_REASON]


def test_a_run_stopped_between_stages_is_failed_naming_why(mlflow_sqlite_uri: str, mlflow_experiment: str) -> None:
    """No stage running, failing or succeeding the report (e.g. a driver failed the next task): FAILED."""
    parent = _run_215(mlflow_sqlite_uri, mlflow_experiment, "between", "none")
    assert T.close_pipeline_run(mlflow_sqlite_uri, parent)[0] == "FAILED"
    tags = MlflowClient(mlflow_sqlite_uri).get_run(parent).data.tags
    assert tags[T.TAG_FAILED_TASK] == "unknown" and "no stage running or failing" in tags[T.TAG_ERROR]


def test_closing_without_mlflow_leaves_the_run_open(caplog: pytest.LogCaptureFixture) -> None:
    assert T.close_pipeline_run("http://127.0.0.1:9", "abc")[0] == ""
    assert not T.mark_pipeline_succeeded("http://127.0.0.1:9", "abc")
    assert T.close_pipeline_run("http://127.0.0.1:9", "") == ("", "no MLflow parent run")


def test_store_credentials_given_directly_are_redacted() -> None:
    # tracking.params reads the store's known credentials through an import it guards against errors: if the
    # store package moved them, redaction would silently stop hiding credentials handed to S3Settings.
    from polydistill.store import S3Settings
    from polydistill.tracking.params import redact_text

    key, secret = f"AKIA{secrets.token_hex(8)}", secrets.token_hex(16)
    S3Settings(endpoint="127.0.0.1:9", access_key=key, secret_key=secret)
    out = redact_text(f"key={key} secret={secret}")
    assert key not in out and secret not in out and out.count("***") == 2
