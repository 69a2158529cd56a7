"""The KFP components, called through ``.python_func`` with artifact objects on temporary paths (no kfp
runner involved), and the runtime glue they share (working directories mirrored to S3 for retries)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kfp import dsl

from polydistill import config as C
from polydistill.buffer import manifest_digest
from polydistill_kfp.components import runtime as rt
from polydistill_kfp.components.distill import distill
from polydistill_kfp.components.encode_buffer import encode_buffer
from polydistill_kfp.components.end_run import end_run
from polydistill_kfp.components.evaluate import evaluate
from polydistill_kfp.components.export_buffer import export_buffer
from polydistill_kfp.components.report import report
from polydistill_kfp.components.start_run import start_run
from polydistill_kfp.components.train_autoencoder import train_autoencoder
from polydistill_kfp.components.train_teacher import train_teacher
from polydistill_kfp.pipeline import parameter_sentinel

GAME = "Breakout"
EXPERIMENT = "components-test"
# Smallest settings that still exercise every code path (teacher learns for a few hundred updates).
TINY = {"teacher_steps": 800, "record_steps": 600, "latent_dim": 16, "distill_steps": 20,
        "eval_cycle_steps": 100, "eval_cycles": 2}


def _art(cls: type, root: Path, name: str) -> Any:
    """An artifact object like the ones kfp hands a component: ``uri`` on the local disk."""
    return cls(name=name, uri=str(root / name), metadata={})


def _hyper(**overrides: Any) -> dict[str, Any]:
    """Every hyperparameter at its "use the profile" sentinel, except ``overrides``."""
    return {name: overrides.get(name, parameter_sentinel(name)[1]) for name in C.PIPELINE_PARAMETERS}


def _mlflow(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _child_runs(uri: str, parent_id: str) -> dict[str, Any]:
    client = _mlflow(uri)
    exp = client.get_experiment(client.get_run(parent_id).info.experiment_id)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


# ------------------------------------------------------------------------------------------ start-run


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``start-run`` for the smoke profile with tiny overrides: the configs and the MLflow parent run."""
    root = tmp_path_factory.mktemp("components")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    store = (root / "store").as_uri()
    out = start_run.python_func(profile="smoke", games=[GAME.lower()], store_uri=store, tracking_uri=tracking,
                                experiment=EXPERIMENT, kfp_run_id="4242", **_hyper(**TINY))
    return SimpleNamespace(root=root, out=out, tracking=tracking, store=store)


def test_start_run_resolves_configs_and_opens_the_parent_run(setup: SimpleNamespace) -> None:
    out = setup.out
    assert out.games == [GAME]  # canonical spelling
    expected = C.resolve_pipeline("smoke", TINY)
    assert out.teacher_config == expected["teacher"] and out.teacher_config["total_steps"] == 800
    assert out.distill_config == expected["distill"]
    assert out.evaluate_config["cycle_steps"] == 100
    assert out.export_config == C.resolve("export", "smoke").model_dump(mode="json")  # the profile's
    assert out.run_root == f"{setup.store}/runs/4242"
    assert out.tracking_uri == setup.tracking
    parent = _mlflow(setup.tracking).get_run(out.parent_run_id)
    assert parent.data.tags["kfp.run_id"] == "4242"
    assert parent.data.tags["polydistill.profile"] == "smoke"
    assert parent.data.tags["polydistill.games"] == GAME
    assert parent.data.params["distill.loss"] == "kl"
    assert parent.data.params["pipeline.teacher_steps"] == "800"


def test_start_run_uses_the_profile_games_when_none_are_given(tmp_path: Path) -> None:
    out = start_run.python_func(profile="cpu", games=[], store_uri=tmp_path.as_uri(),
                                tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="e", kfp_run_id="1",
                                **_hyper())
    assert out.games == C.default_games("cpu")
    assert out.teacher_config == C.resolve("teacher", "cpu").model_dump(mode="json")


@pytest.mark.parametrize(
    ("games", "hyper", "error"),
    [
        (["Pongg"], {}, "Pongg"),
        ([], {"tau": 0.0}, "tau"),
        ([], {"autoencoder_loss": "l1"}, "loss"),
        ([], {"teachers": {"Atlantis": "s3://b/dqn.zip"}}, "teachers names Atlantis, not among this run's games"),
    ],
)
def test_start_run_rejects_bad_input_before_anything_runs(tmp_path: Path, games: list[str],
                                                         hyper: dict[str, Any], error: str) -> None:
    db = tmp_path / "m.db"
    with pytest.raises(ValueError, match=error):
        start_run.python_func(profile="smoke", games=games, store_uri=tmp_path.as_uri(),
                              tracking_uri=f"sqlite:///{db}", experiment="e", kfp_run_id="1",
                              **_hyper(**hyper))
    assert not db.exists()  # failed before the parent run was created


def test_start_run_requires_a_store_off_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rt.STORE_URI_ENV, raising=False)
    with pytest.raises(ValueError, match="store_uri is empty and this is no Kubeflow pod"):
        start_run.python_func(profile="smoke", games=[], store_uri="", tracking_uri=f"sqlite:///{tmp_path}/m.db",
                              experiment="e", kfp_run_id="1", **_hyper())


def test_default_store_on_a_cluster(tmp_path: Path) -> None:
    """Empty store_uri: the standalone overlay's ConfigMap value, else Kubeflow's bucket under the profile's
    private prefix (the only place its key may write, kubeflow/manifests v1.11 sync.py)."""
    ns = tmp_path / "namespace"
    ns.write_text("kubeflow-user-example-com\n")
    assert rt.default_store_uri(ns, {}) == "s3://mlpipeline/private/kubeflow-user-example-com/polydistill"
    assert rt.default_store_uri(ns, {rt.STORE_URI_ENV: "s3://polydistill"}) == "s3://polydistill"
    assert rt.default_store_uri(ns, {rt.STORE_URI_ENV: "  "}).startswith("s3://mlpipeline/private/")
    with pytest.raises(ValueError, match="no Kubeflow pod"):
        rt.default_store_uri(tmp_path / "absent", {})


# ------------------------------------------------------------------------- the stages, one game, in order


def _common(setup: SimpleNamespace) -> dict[str, Any]:
    return {"tracking_uri": setup.out.tracking_uri, "parent_run_id": setup.out.parent_run_id,
            "experiment": EXPERIMENT}


def _store_args(setup: SimpleNamespace) -> dict[str, Any]:
    return {"run_root": setup.out.run_root, "minio_endpoint": "", **_common(setup)}


@pytest.fixture(scope="module")
def teacher_out(setup: SimpleNamespace) -> SimpleNamespace:
    d = setup.root / "train-teacher"
    o = SimpleNamespace(teacher=_art(dsl.Model, d, "teacher"), experience=_art(dsl.Dataset, d, "experience"),
                        curve=_art(dsl.HTML, d, "curve"), metrics=_art(dsl.Metrics, d, "metrics"))
    train_teacher.python_func(game=GAME, config=setup.out.teacher_config, **_store_args(setup), **vars(o))
    return o


@pytest.mark.slow
def test_train_teacher(setup: SimpleNamespace, teacher_out: SimpleNamespace) -> None:
    meta = json.loads((Path(teacher_out.teacher.path) / "metadata.json").read_text())
    assert meta["kind"] == "teacher" and meta["game"] == GAME and meta["steps"] == 800
    assert (Path(teacher_out.teacher.path) / "model.pt").is_file()
    manifest = json.loads((Path(teacher_out.experience.path) / "manifest.json").read_text())
    assert manifest["game"] == GAME and manifest["num_steps"] == 600
    assert "data:image/png;base64," in Path(teacher_out.curve.path).read_text()
    assert teacher_out.metrics.metadata["steps"] == 800.0
    assert teacher_out.teacher.metadata["game"] == GAME
    # Published for the students, who read it by URI (no list of artifacts crosses into their sub-DAG).
    published = teacher_out.teacher.metadata["store_uri"]
    assert published == f"{setup.out.run_root}/teachers/{GAME}"
    model = (Path(teacher_out.teacher.path) / "model.pt").read_bytes()
    assert (rt.fetch_dir(published) / "model.pt").read_bytes() == model
    # A file store: the working directory is the stable location under the run root.
    work = Path(setup.root / "store" / "runs" / "4242" / "work" / "teacher" / GAME)
    assert (work / "run.json").is_file()
    child = _child_runs(setup.tracking, setup.out.parent_run_id)["train-teacher/Breakout"]
    assert child.data.params["total_steps"] == "800"
    assert "episode_return" in child.data.metrics or "steps_per_second" in child.data.metrics
    models = _mlflow(setup.tracking).search_logged_models([child.info.experiment_id])
    assert any(m.name == "teacher" and m.source_run_id == child.info.run_id for m in models)


@pytest.fixture(scope="module")
def buffer_out(setup: SimpleNamespace, teacher_out: SimpleNamespace) -> SimpleNamespace:
    d = setup.root / "export-buffer"
    o = SimpleNamespace(buffer=_art(dsl.Dataset, d, "buffer"), metrics=_art(dsl.Metrics, d, "metrics"))
    export_buffer.python_func(game=GAME, experience=teacher_out.experience, teacher=teacher_out.teacher,
                              config=setup.out.export_config, **_store_args(setup), **vars(o))
    return o


@pytest.mark.slow
def test_export_buffer(setup: SimpleNamespace, buffer_out: SimpleNamespace) -> None:
    from polydistill.buffer import ExperienceDataset

    uri = buffer_out.buffer.metadata["uri"]
    assert uri == f"{setup.out.run_root}/buffers/{GAME}"
    ds = ExperienceDataset(uri)
    assert ds.game == GAME and ds.has_q and ds.manifest.num_steps == 600
    assert json.loads(Path(buffer_out.buffer.path).read_text())["uri"] == uri
    assert buffer_out.metrics.metadata["bytes_per_state"] > 0
    assert buffer_out.buffer.metadata["game"] == GAME


@pytest.fixture(scope="module")
def autoencoder_out(
    setup: SimpleNamespace, teacher_out: SimpleNamespace, buffer_out: SimpleNamespace
) -> SimpleNamespace:
    d = setup.root / "train-autoencoder"
    o = SimpleNamespace(autoencoder=_art(dsl.Model, d, "autoencoder"), grid=_art(dsl.HTML, d, "grid"),
                        metrics=_art(dsl.Metrics, d, "metrics"))
    train_autoencoder.python_func(game=GAME, buffer=buffer_out.buffer, teacher=teacher_out.teacher,
                                  config=setup.out.autoencoder_config, **_store_args(setup), **vars(o))
    return o


@pytest.mark.slow
def test_train_autoencoder(setup: SimpleNamespace, autoencoder_out: SimpleNamespace) -> None:
    meta = json.loads((Path(autoencoder_out.autoencoder.path) / "metadata.json").read_text())
    assert meta["kind"] == "autoencoder" and meta["latent_dim"] == 16
    assert "data:image/png;base64," in Path(autoencoder_out.grid.path).read_text()
    assert "psnr" in autoencoder_out.metrics.metadata
    # The teacher input gives the teacher's agreement on reconstructions (a share of states).
    assert 0.0 <= autoencoder_out.metrics.metadata["teacher_agreement"] <= 1.0
    assert "train-autoencoder/Breakout" in _child_runs(setup.tracking, setup.out.parent_run_id)


@pytest.fixture(scope="module")
def latents_out(setup: SimpleNamespace, teacher_out: SimpleNamespace, buffer_out: SimpleNamespace,
                autoencoder_out: SimpleNamespace) -> SimpleNamespace:
    d = setup.root / "encode-buffer"
    o = SimpleNamespace(latents=_art(dsl.Dataset, d, "latents"), metrics=_art(dsl.Metrics, d, "metrics"))
    record = encode_buffer.python_func(
        game=GAME, buffer=buffer_out.buffer, autoencoder=autoencoder_out.autoencoder, teacher=teacher_out.teacher,
        autoencoder_config=setup.out.autoencoder_config, export_config=setup.out.export_config,
        **_store_args(setup), **vars(o))
    return SimpleNamespace(**vars(o), record=record)


@pytest.mark.slow
def test_encode_buffer(setup: SimpleNamespace, buffer_out: SimpleNamespace,
                       latents_out: SimpleNamespace) -> None:
    from polydistill.buffer import ExperienceDataset

    uri = latents_out.latents.metadata["uri"]
    assert uri == f"{setup.out.run_root}/latents/{GAME}"
    ds = ExperienceDataset(uri)
    assert ds.codec == "latent" and ds.has_q
    # (Latents are not always smaller: zstd packs a few hundred early-training frames to ~40 bytes each.)
    assert latents_out.metrics.metadata["bytes_per_state"] > 0
    assert latents_out.latents.metadata["codec"] == "latent" != buffer_out.buffer.metadata["codec"]
    # The game's record for the students: everything by URI, the datasets pinned by manifest digest.
    record = latents_out.record
    assert set(record) == set(rt.GAME_RECORD_FIELDS)
    assert record["buffer"] == buffer_out.buffer.metadata["uri"] and record["latents"] == uri
    assert record["buffer_sha256"] == manifest_digest(record["buffer"]) != record["latents_sha256"]


@pytest.fixture(scope="module")
def students(setup: SimpleNamespace, teacher_out: SimpleNamespace, buffer_out: SimpleNamespace,
             latents_out: SimpleNamespace) -> dict[str, SimpleNamespace]:
    out = {}
    for source in ("subset", "latent"):  # both get both dataset lists; the source picks one
        d = setup.root / f"distill-{source}"
        o = SimpleNamespace(student=_art(dsl.Model, d, "student"), curves=_art(dsl.HTML, d, "curves"),
                            metrics=_art(dsl.Metrics, d, "metrics"))
        distill.python_func(source=source, games=setup.out.games, game_records=[latents_out.record],
                            config=setup.out.distill_config, **_store_args(setup), **vars(o))
        out[source] = o
    return out


@pytest.mark.slow
def test_distill_both_sources(setup: SimpleNamespace, students: dict[str, SimpleNamespace],
                              buffer_out: SimpleNamespace, latents_out: SimpleNamespace) -> None:
    runs = _child_runs(setup.tracking, setup.out.parent_run_id)
    for source, o in students.items():
        meta = json.loads((Path(o.student.path) / "metadata.json").read_text())
        assert meta["kind"] == "student" and meta["source"] == source and meta["games"] == [GAME]
        dataset = latents_out.latents if source == "latent" else buffer_out.buffer
        assert meta["datasets"] == {GAME: dataset.metadata["uri"]}
        assert o.student.metadata["mlflow_run_id"] == runs[f"distill/{source}"].info.run_id
        assert f"agreement_{GAME}" in o.metrics.metadata
        assert "data:image/png;base64," in Path(o.curves.path).read_text()


@pytest.fixture(scope="module")
def scores(setup: SimpleNamespace, teacher_out: SimpleNamespace,
           students: dict[str, SimpleNamespace]) -> dict[str, Any]:
    out = {}
    agents = {"teacher": teacher_out.teacher, "student_subset": students["subset"].student,
              "student_latent": students["latent"].student, "random": None}
    for label, agent in agents.items():
        d = setup.root / f"evaluate-{label}"
        o = {"scores": _art(dsl.Artifact, d, "scores"), "metrics": _art(dsl.Metrics, d, "metrics")}
        kwargs = {"agent": agent} if agent is not None else {}  # the random policy: no agent input
        evaluate.python_func(label=label, games=[GAME], config=setup.out.evaluate_config, **_common(setup),
                             **o, **kwargs)
        out[label] = o["scores"]
    return out


@pytest.mark.slow
def test_evaluate_every_agent(setup: SimpleNamespace, scores: dict[str, Any]) -> None:
    for label, artifact in scores.items():
        results = json.loads(Path(artifact.path).read_text())
        assert results["agent"]["label"] == label
        # the pipeline's latent student plays through the autoencoders it was distilled through
        assert results["agent"]["input"] == ("autoencoder" if label == "student_latent" else "frames"), label
        assert results["protocol"] == "cycles" and len(results["games"][GAME]["scores"]) == 2
    assert json.loads(Path(scores["random"].path).read_text())["agent"]["kind"] == "random"
    runs = _child_runs(setup.tracking, setup.out.parent_run_id)
    assert {"evaluate/teacher-Breakout", "evaluate/student_subset", "evaluate/student_latent",
            "evaluate/random"} <= set(runs)


@pytest.mark.slow
def test_report_and_end_run(setup: SimpleNamespace, scores: dict[str, Any],
                            students: dict[str, SimpleNamespace], buffer_out: SimpleNamespace,
                            latents_out: SimpleNamespace) -> None:
    d = setup.root / "report"
    o = SimpleNamespace(report_md=_art(dsl.Markdown, d, "report_md"),
                        report_html=_art(dsl.HTML, d, "report_html"),
                        report_json=_art(dsl.Artifact, d, "report_json"))
    report.python_func(
        teacher_scores=[scores["teacher"]], student_scores=[scores["student_subset"], scores["student_latent"]],
        random_scores=scores["random"], students=[students["subset"].student, students["latent"].student],
        buffers=[buffer_out.buffer], latents=[latents_out.latents],
        tracking_uri=setup.out.tracking_uri, parent_run_id=setup.out.parent_run_id,
        registered_model="test-student", run_root=setup.out.run_root,
        retraining_config=setup.out.retraining_config, **vars(o))
    md = Path(o.report_md.path).read_text()
    scores_md, storage_md = md.split("## Storage per training state")
    scores_md = scores_md.split("## Human-normalised score")[0]  # the storage table comes from the datasets
    assert sum(1 for line in scores_md.splitlines() if line.startswith(f"| {GAME} ")) == 1, md
    assert sum(1 for line in storage_md.splitlines() if line.startswith(f"| {GAME} ")) == 1, md
    assert "<html" in Path(o.report_html.path).read_text().lower()
    assert GAME in json.loads(Path(o.report_json.path).read_text())["games"]
    client = _mlflow(setup.tracking)
    parent = client.get_run(setup.out.parent_run_id)
    assert f"score/teacher/{GAME}" in parent.data.metrics
    assert "bytes_per_state/latent" in parent.data.metrics
    # Students with a mean HNS (the champion's yardstick) are registered, the newest as "candidate".
    registered = [s for s in ("subset", "latent") if f"mean_hns/{s}" in parent.data.metrics]
    assert registered == ["subset", "latent"]  # Breakout has a reference score
    versions = client.search_model_versions("name='test-student'")
    assert len(versions) == len(registered)
    if registered:
        newest = max(int(v.version) for v in versions)
        assert int(client.get_model_version_by_alias("test-student", "candidate").version) == newest
        # Each version names its pipeline run and the teachers a later warm start starts from.
        v = client.get_model_version("test-student", str(newest))
        teachers = json.loads(v.tags["polydistill.teachers"])
        assert teachers[GAME]["uri"] == f"{setup.out.run_root}/teachers/{GAME}"
        assert v.tags["polydistill.pipeline_run_id"] == setup.out.parent_run_id
        assert json.loads(v.tags["polydistill.evaluation"])["seed"] == setup.out.evaluate_config["seed"]
    assert f"hns/teacher/{GAME}" in parent.data.metrics and "mean_hns/teacher" in parent.data.metrics

    # The report marked the parent run succeeded; the exit task, finding it by its kfp run id, closes it so.
    assert parent.data.tags["polydistill.succeeded"] == "true"
    end_run.python_func(tracking_uri=setup.tracking, experiment=EXPERIMENT, kfp_run_id="4242")
    parent = client.get_run(setup.out.parent_run_id)
    assert parent.info.status == "FINISHED" and "polydistill.failed_task" not in parent.data.tags


@pytest.mark.slow
def test_distill_refuses_missing_game_records_and_names_the_task(
        setup: SimpleNamespace, latents_out: SimpleNamespace, tmp_path: Path) -> None:
    """What a backend that drops list items would hand the students: one record for two games. The task
    fails before training, the parent run records it, and end-run closes the run FAILED with it."""
    start = start_run.python_func(profile="smoke", games=[GAME, "Pong"], store_uri=setup.store,
                                  tracking_uri=setup.tracking, experiment=EXPERIMENT, kfp_run_id="4343",
                                  **_hyper(**TINY))
    o = SimpleNamespace(student=_art(dsl.Model, tmp_path, "student"), curves=_art(dsl.HTML, tmp_path, "curves"),
                        metrics=_art(dsl.Metrics, tmp_path, "metrics"))
    with pytest.raises(ValueError, match=r"2 games \(Breakout, Pong\) but 1 teachers.*kubeflow/pipelines#13900"):
        distill.python_func(source="subset", games=start.games, game_records=[latents_out.record],
                            config=start.distill_config, run_root=start.run_root, minio_endpoint="",
                            tracking_uri=start.tracking_uri, parent_run_id=start.parent_run_id,
                            experiment=EXPERIMENT, **vars(o))
    assert not Path(o.student.path).exists()
    client = _mlflow(setup.tracking)
    tags = client.get_run(start.parent_run_id).data.tags
    assert tags["polydistill.failed_task"] == "distill/subset"
    assert tags["polydistill.error"].startswith("ValueError: 2 games")
    end_run.python_func(tracking_uri=setup.tracking, experiment=EXPERIMENT, kfp_run_id="4343")
    parent = client.get_run(start.parent_run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["polydistill.failed_task"] == "distill/subset"  # the stage's, not the group's


# ------------------------------------------------------------------------------------------ runtime


def _record(game: str, **over: str) -> dict[str, str]:
    return {"game": game, "teacher": f"s3://b/t/{game}", "buffer": f"s3://b/b/{game}", "buffer_sha256": "1" * 64,
            "latents": f"s3://b/l/{game}", "latents_sha256": "2" * 64, **over}


def test_check_game_records_pairs_by_game() -> None:
    records = rt.check_game_records(["Pong", "Breakout"], [_record("Breakout"), _record("Pong")])
    assert sorted(records) == ["Breakout", "Pong"] and records["Pong"]["teacher"] == "s3://b/t/Pong"


@pytest.mark.parametrize(("games", "records", "error"), [
    (["Pong", "Breakout"], [_record("Pong")], r"2 games \(Pong, Breakout\) but 1 teachers.*#13900"),
    (["Pong"], [_record("Pong"), _record("Breakout")], "1 games"),
    (["Pong"], [_record("Breakout")], r"1 games \(Pong\) but 1 .*\(Breakout\)"),
    (["Pong"], [_record("Pong"), _record("Pong")], "two game records for Pong"),
    (["Pong"], [_record("Pong", teacher="")], "lacks teacher"),
    (["Pong"], "not a list", "must be a list of dicts"),
])
def test_check_game_records_refuses_what_does_not_match(games: list[str], records: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        rt.check_game_records(games, records)


@pytest.mark.parametrize(("state", "outcome"), [
    ("COMPLETE", "FINISHED"), ("CACHED", "FINISHED"), ("SUCCEEDED", "FINISHED"),  # backend, backend, local
    ("FAILED", "FAILED"), ("CANCELED", "KILLED"), ("CANCELLED", "KILLED"), ("RUNNING", "FAILED"), ("", "FAILED"),
])
def test_run_outcome_reads_both_runners_states(state: str, outcome: str) -> None:
    from polydistill.tracking import run_outcome

    assert run_outcome(state) == outcome


def test_local_work_dir_is_the_store_path(tmp_path: Path) -> None:
    uri = rt.data_uri((tmp_path / "s").as_uri(), "work/teacher", "Pong")
    with rt.work_dir(uri) as wd:
        assert not wd.remote
        assert wd.path == tmp_path / "s" / "work" / "teacher" / "Pong"
        (wd.path / "x").write_text("kept")
    assert (tmp_path / "s" / "work" / "teacher" / "Pong" / "x").read_text() == "kept"


def test_run_root_rejects_bad_ids() -> None:
    assert rt.run_root("s3://b/p", "abc-123") == "s3://b/p/runs/abc-123"
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            rt.run_root("s3://b/p", bad)


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_s3_work_dir_mirrors_and_restores(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{s3_env}/work/teacher/Pong"
    wd = rt.WorkDir(uri, sync_seconds=0)
    assert wd.remote
    (wd.path / "resume" / "step-1").mkdir(parents=True)
    (wd.path / "resume" / "step-1" / "state.pt").write_text("one")
    (wd.path / "resume" / "LATEST").write_text("step-1")
    (wd.path / "run.json").write_text("{}")
    (wd.path / "resume" / ".step-2.tmp").mkdir()
    (wd.path / "resume" / ".step-2.tmp" / "half").write_text("in progress")
    uploaded: list[str] = []
    store = wd._open()
    real_put = store.put_file
    monkeypatch.setattr(store, "put_file", lambda key, path: (uploaded.append(key), real_put(key, path)))
    wd.sync()
    assert uploaded == ["resume/step-1/state.pt", "resume/LATEST", "run.json"]  # pointers last
    assert store.list() == ["polydistill-index.json", "resume/LATEST", "resume/step-1/state.pt", "run.json"]

    # A new resume point replaces the old one; only the changes travel.
    uploaded.clear()
    (wd.path / "resume" / "step-2").mkdir()
    (wd.path / "resume" / "step-2" / "state.pt").write_text("two")
    (wd.path / "resume" / "LATEST").write_text("step-2")
    for p in (wd.path / "resume" / "step-1").iterdir():
        p.unlink()
    wd.maybe_sync({"loss": 1.0}, 10)
    assert uploaded == ["resume/step-2/state.pt", "resume/LATEST"]
    assert store.list() == ["polydistill-index.json", "resume/LATEST", "resume/step-2/state.pt", "run.json"]

    # A retry in a fresh pod: an empty local directory restored from the mirror.
    again = rt.WorkDir(uri)
    assert again.path != wd.path
    assert again.restore() == 3
    assert _files(again.path) == {"resume/LATEST": "step-2", "resume/step-2/state.pt": "two",
                                  "run.json": "{}"}
    again.discard()
    assert store.list() == []


def test_publish_and_fetch_a_checkpoint_through_s3(s3_env: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """How the students get a teacher on a cluster: published under the run root, fetched by URI."""
    src = tmp_path / "checkpoint"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "sub" / "extra.json").write_text("{}")
    (src / "metadata.json").write_text('{"kind": "teacher"}')
    uri = f"{s3_env}/runs/7/teachers/Pong"
    order: list[str] = []
    from polydistill import store as S

    real = S.S3Store.put_file
    monkeypatch.setattr(S.S3Store, "put_file", lambda self, key, path: (order.append(key), real(self, key, path)))
    assert rt.publish_dir(src, uri) == uri
    assert order[-1] == "metadata.json"  # last: a reader that finds it finds the whole checkpoint
    got = rt.fetch_dir(uri)
    assert got != src
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "metadata.json", "model.pt", "sub/extra.json"]
    assert (got / "model.pt").read_bytes() == b"weights"


def test_fetch_file_gets_an_imported_teachers_checkpoint_by_uri(s3_env: str, tmp_path: Path) -> None:
    """How train-teacher gets an SB3/CleanRL checkpoint named by ``teachers`` on a cluster: one object."""
    from polydistill.store import open_store

    open_store(f"{s3_env}/zoo", create_bucket=True).put_bytes("dqn.zip", b"zip bytes")
    got = rt.fetch_file(f"{s3_env}/zoo/dqn.zip")
    assert got.name == "dqn.zip" and got.read_bytes() == b"zip bytes"
    local = tmp_path / "model.cleanrl_model"
    local.write_bytes(b"x")
    assert rt.fetch_file(str(local)) == local and rt.fetch_file(local.as_uri()) == local


def test_work_dir_context_syncs_on_failure_and_cleans_up_on_success(s3_env: str) -> None:
    uri = f"{s3_env}/work/distill/subset"
    with pytest.raises(RuntimeError, match="boom"), rt.work_dir(uri, sync_seconds=3600) as wd:
        (wd.path / "run.json").write_text("{}")
        raise RuntimeError("boom")
    from polydistill.store import open_store

    assert open_store(uri).list() == ["polydistill-index.json", "run.json"]  # left for the retry
    with rt.work_dir(uri) as wd:
        assert (wd.path / "run.json").read_text() == "{}"
    assert open_store(uri).list() == []  # success: the mirror is removed


def test_maybe_sync_survives_a_store_failure(s3_env: str, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    wd = rt.WorkDir(f"{s3_env}/w", sync_seconds=0)
    (wd.path / "f").write_text("x")
    monkeypatch.setattr(wd, "sync", lambda: (_ for _ in ()).throw(ConnectionError("store down")))
    with caplog.at_level(logging.WARNING, logger="polydistill.pipeline"):
        wd.maybe_sync({}, 1)  # does not raise: training goes on
    assert "store down" in caplog.text


@pytest.mark.slow
def test_teacher_retry_resumes_from_the_s3_mirror(s3_env: str, caplog: pytest.LogCaptureFixture) -> None:
    """What a Kubeflow retry does: the first attempt dies after a checkpoint, the second starts in an empty
    directory, restores the mirror and resumes instead of starting over."""
    from polydistill.teacher import train_teacher as train
    from tests.conftest import tiny_teacher_config

    cfg = tiny_teacher_config(checkpoint_every=400)  # a resume point at 400 of 800 steps
    uri = f"{s3_env}/runs/1/work/teacher/{GAME}"
    with pytest.raises(KeyboardInterrupt), rt.work_dir(uri, sync_seconds=3600) as wd:
        train(GAME, cfg, wd.path, on_metrics=rt.chain(wd.maybe_sync), stop_after=500)
    with caplog.at_level(logging.INFO), rt.work_dir(uri) as wd:
        res = train(GAME, cfg, wd.path, on_metrics=rt.chain(wd.maybe_sync))
        assert res.steps == 800
    assert "resuming Breakout teacher from step 400" in caplog.text


def test_chain_and_scalars(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, float], int]] = []
    rt.chain(None, lambda m, s: seen.append((m, s)), lambda m, s: seen.append((m, -s)))({"a": 1.0}, 3)
    assert seen == [({"a": 1.0}, 3), ({"a": 1.0}, -3)]
    m = dsl.Metrics(uri=str(tmp_path / "m"))
    rt.log_scalars(m, {"ok": 2, "nan": float("nan"), "text": "x", "flag": True, "inf": float("inf")})
    assert m.metadata == {"ok": 2.0}


def test_write_html_inlines_images(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG fake")
    rt.write_html(tmp_path / "page.html", "T <1>", [png, tmp_path / "missing.png"])
    text = (tmp_path / "page.html").read_text()
    assert "T &lt;1&gt;" in text and text.count("data:image/png;base64,") == 1


@pytest.mark.parametrize("in_loop", [True, False])
def test_setup_gives_a_loop_task_its_share_of_the_cores(in_loop: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv(rt.LOOP_THREADS_ENV, "1")
    try:
        torch.set_num_threads(2)
        rt.setup(in_loop=in_loop)
        # The local runner's loop iterations share the machine; a top-level task keeps every core.
        assert torch.get_num_threads() == (1 if in_loop else 2)
    finally:
        torch.set_num_threads(before)


def test_fetch_dir_refuses_a_prefix_with_nothing_published_or_a_bad_index(s3_env: str) -> None:
    """The store protocol's errors are one line naming the prefix (polydistill.mirror); "nothing published"
    is still a FileNotFoundError, as before the protocol moved into the library."""
    from polydistill import mirror
    from polydistill.errors import PolydistillError
    from polydistill.store import open_store

    with pytest.raises(mirror.NotPublishedError, match=r"nothing published at .*/empty") as info:
        mirror.fetch_dir(f"{s3_env}/empty")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, PolydistillError)
    open_store(f"{s3_env}/bad", create_bucket=True).put_bytes(mirror.INDEX_KEY, b"[1]")
    with pytest.raises(mirror.MirrorError, match="is not an index of keys"):
        mirror.fetch_dir(f"{s3_env}/bad")
