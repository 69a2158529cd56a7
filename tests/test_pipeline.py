"""The pipeline: parameters derived from the config, the compiled YAML (structure, cluster settings, no
credentials, up to date), and the whole smoke DAG on kfp's local runner."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from polydistill import config as C
from polydistill_kfp.compile import COMPILED_DIR, compile_all, compiled_name
from polydistill_kfp.pipeline import (
    FIXED_PARAMETERS,
    GPU,
    MINIO_SECRET,
    PIPELINES,
    STORE_TASKS,
    STUDENTS,
    TRAINING_TASKS,
    VARIANTS,
    local_pipeline,
    parameter_sentinel,
    pipeline_parameters,
)

# ------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", [*PIPELINES, "local"])
def test_pipeline_parameters_are_the_config_pipeline_parameters(name: str) -> None:
    pipeline = local_pipeline if name == "local" else PIPELINES[name]
    params = pipeline_parameters(pipeline)
    assert list(params) == [*FIXED_PARAMETERS, *C.PIPELINE_PARAMETERS]
    for hp in C.PIPELINE_PARAMETERS:
        kind, sentinel = parameter_sentinel(hp)
        assert params[hp].annotation is kind, hp
        assert params[hp].default == sentinel, hp
        assert type(params[hp].default) is kind, hp


def test_every_hyperparameter_sentinel_means_the_profile_value() -> None:
    sentinels = {hp: parameter_sentinel(hp)[1] for hp in C.PIPELINE_PARAMETERS}
    for profile in C.PROFILES:
        assert C.resolve_pipeline(profile, sentinels) == C.resolve_pipeline(profile)


def test_start_run_takes_every_hyperparameter() -> None:
    from polydistill_kfp.components.start_run import start_run

    args = inspect.signature(start_run.python_func).parameters
    for hp in C.PIPELINE_PARAMETERS:
        assert args[hp].annotation is parameter_sentinel(hp)[0], hp


def test_start_run_default_model_name_is_the_library_one() -> None:
    """The registered model is named once (tracking.names); start-run's literal default must agree."""
    from polydistill.tracking.names import REGISTERED_MODEL
    from polydistill_kfp.components.start_run import start_run

    assert inspect.signature(start_run.python_func).parameters["registered_model"].default == REGISTERED_MODEL


def test_variant_defaults() -> None:
    assert pipeline_parameters(PIPELINES["polydistill"])["profile"].default == "cpu"
    assert pipeline_parameters(PIPELINES["polydistill-paper"])["profile"].default == "paper"
    for p in PIPELINES.values():
        assert pipeline_parameters(p)["games"].default == []


# ----------------------------------------------------------------------------------- compiled YAML


def _load(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all((COMPILED_DIR / compiled_name(variant)).read_text()))
    return docs[0], docs[1]


def _dags(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every DAG of the spec by component name ("root" for the pipeline itself)."""
    dags = {"root": spec["root"]["dag"]}
    dags.update({name: c["dag"] for name, c in spec["components"].items() if "dag" in c})
    return dags


def _edges(dag: dict[str, Any]) -> dict[str, set[str]]:
    """{display name: display names of its upstream tasks} of one DAG."""
    display = {t: s["taskInfo"]["name"] for t, s in dag["tasks"].items()}
    return {display[t]: {display[d] for d in s.get("dependentTasks", [])} for t, s in dag["tasks"].items()}


def _task_executors(spec: dict[str, Any]) -> dict[str, set[str]]:
    """{component name (train-teacher...): executor labels} (components used twice have several)."""
    out: dict[str, set[str]] = {}
    for cname, comp in spec["components"].items():
        if "executorLabel" in comp:
            base = re.sub(r"(-\d+)+$", "", cname.removeprefix("comp-"))
            out.setdefault(base, set()).add(comp["executorLabel"])
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_yaml_is_up_to_date(variant: str, tmp_path: Path) -> None:
    compile_all(tmp_path)
    fresh = (tmp_path / compiled_name(variant)).read_text()
    committed = COMPILED_DIR / compiled_name(variant)
    assert committed.is_file(), f"{committed} is missing: run `polydistill compile`"
    old = committed.read_text()
    if old != fresh:
        a, b = old.splitlines(), fresh.splitlines()
        line = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        pytest.fail(f"{committed} is out of date with the code (first difference at line {line + 1}): "
                    "run `polydistill compile`")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fan_out_over_games(variant: str) -> None:
    spec, _ = _load(variant)
    loops = [(name, t) for name, dag in _dags(spec).items() for t in dag["tasks"].values()
             if "parameterIterator" in t]
    assert sorted(name for name, _ in loops) == ["comp-per-game", "comp-students"]  # games; the two students
    loop = dict(loops)["comp-per-game"]
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--games"}
    # The loop's games come from start-run (resolved: the profile's games when none are given).
    stages = _dags(spec)["comp-exit-handler-1"]["tasks"]
    assert stages["per-game"]["inputs"]["parameters"]["games"]["taskOutputParameter"] == {
        "outputParameterKey": "games", "producerTask": "start-run"}
    assert set(_dags(spec)[loop["componentRef"]["name"]]["tasks"]) == {
        "train-teacher", "export-buffer", "train-autoencoder", "encode-buffer", "evaluate"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_dag_edge(variant: str) -> None:
    spec, _ = _load(variant)
    dags = _dags(spec)
    assert _edges(dags["root"]) == {"stages": set(), "end-run": {"stages"}}
    assert dags["root"]["tasks"]["end-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert _edges(dags["comp-exit-handler-1"]) == {
        "start-run": set(),
        "per-game": {"start-run"},
        "students": {"per-game", "start-run"},
        "evaluate random": {"start-run"},
        "report": {"per-game", "start-run", "students", "evaluate random"},
    }
    assert _edges(dags["comp-for-loop-1"]) == {
        "train-teacher": set(),
        "export-buffer": {"train-teacher"},
        "train-autoencoder": {"export-buffer", "train-teacher"},
        "encode-buffer": {"export-buffer", "train-autoencoder", "train-teacher"},
        "evaluate teacher": {"train-teacher"},
    }
    # The students' loop: one iteration per source, each a distillation and its evaluation, side by side.
    (students_loop,) = dags["comp-students"]["tasks"].values()
    assert students_loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--students"}
    assert _edges(dags[students_loop["componentRef"]["name"]]) == {
        "distill": set(), "evaluate student": {"distill"}}
    stages = dags["comp-exit-handler-1"]["tasks"]
    inputs = stages["students"]["inputs"]
    assert inputs["parameters"]["students"]["runtimeValue"]["constant"] == STUDENTS
    assert [s["source"] for s in STUDENTS] == ["subset", "latent"]
    assert [s["label"] for s in STUDENTS] == ["student_subset", "student_latent"]
    # Both students get every game's record (teacher, buffer, latents by URI) collected from the per-game
    # loop as a parameter; no artifact enters their sub-DAG (kubeflow/pipelines#13900); the source picks.
    assert "artifacts" not in inputs
    assert inputs["parameters"]["game_records"]["taskOutputParameter"] == {
        "outputParameterKey": "game_records", "producerTask": "per-game"}
    per_game = spec["components"]["comp-per-game"]["dag"]["outputs"]
    assert per_game["parameters"]["game_records"]["valueFromParameter"] == {
        "outputParameterKey": "pipelinechannel--encode-buffer-Output", "producerSubtask": "for-loop-1"}
    assert per_game["artifacts"]["latents"]["artifactSelectors"] == [
        {"outputArtifactKey": "pipelinechannel--encode-buffer-latents", "producerSubtask": "for-loop-1"}]
    # The report consumes the lists where they are collected: outputs of the sub-DAGs, in the parent DAG.
    report = stages["report"]["inputs"]["artifacts"]
    assert report["students"]["taskOutputArtifact"] == {"outputArtifactKey": "students", "producerTask": "students"}
    assert report["buffers"]["taskOutputArtifact"] == {"outputArtifactKey": "buffers", "producerTask": "per-game"}


def test_gpus_only_in_the_paper_variant() -> None:
    """The paper variant's teacher, autoencoder and distill tasks run in the CUDA image with one GPU each;
    evaluation, export, encoding and the report stay on CPU, and the CPU variant asks for none.

    The backend reads the accelerator as the driver does (``backend/src/v2/driver/driver.go`` at 2.15.0,
    ``initPodSpecPatch``): ``resourceType``/``resourceCount`` when set, else ``type``/``count``, and puts
    ``limits[<type>] = <count>`` into the pod spec patch, which is where the pod's image and resources come
    from (``backend/src/v2/compiler/argocompiler/container.go``: "PodSpecPatch input param is where actual
    image, command and args come from"). kfp 2.17 writes both forms."""
    from polydistill_kfp.components.image import IMAGE, IMAGE_CUDA

    assert set(TRAINING_TASKS) == {"train-teacher", "train-autoencoder", "distill"}
    seen_gpu = set()
    for variant, want_gpu in (("polydistill", False), ("polydistill-paper", True)):
        spec, _ = _load(variant)
        executors = spec["deploymentSpec"]["executors"]
        by_component = _task_executors(spec)
        for component, labels in by_component.items():
            for label in labels:
                container = executors[label]["container"]
                accelerator = container.get("resources", {}).get("accelerator")
                if want_gpu and component in TRAINING_TASKS:
                    want = {"count": "1", "resourceCount": "1", "resourceType": GPU, "type": GPU}
                    assert accelerator == want, (variant, component, accelerator)
                    assert container["image"] == IMAGE_CUDA, (variant, component)
                    seen_gpu.add(component)
                else:
                    assert accelerator is None, (variant, component)
                    assert container["image"] == IMAGE, (variant, component)
                assert container["resources"]["resourceCpuRequest"], (variant, component)
                assert container["resources"]["resourceMemoryRequest"], (variant, component)
    assert seen_gpu == set(TRAINING_TASKS)


def test_the_report_task_outputs_a_markdown_table_the_run_page_renders() -> None:
    """The results table is a ``system.Markdown`` output of the report task (and the page a ``system.HTML``
    one): the KFP UI's run page renders both kinds in its visualization panel
    (``frontend/src/components/viewers/MetricsVisualizations.tsx`` at 2.15.0 filters linked artifacts by
    ``system.HTML`` and ``system.Markdown``)."""
    for variant in VARIANTS:
        spec, _ = _load(variant)
        tasks = {t: s for dag in _dags(spec).values() for t, s in dag["tasks"].items()}
        component = spec["components"][tasks["report"]["componentRef"]["name"]]
        outputs = component["outputDefinitions"]["artifacts"]
        assert outputs["report_md"]["artifactType"] == {"schemaTitle": "system.Markdown", "schemaVersion": "0.0.1"}
        assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        assert "rt.copy_file(files[\"markdown\"], report_md.path)" in "".join(executor["container"]["command"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_retries_and_caching(variant: str) -> None:
    spec, _ = _load(variant)
    tasks = {t: s for dag in _dags(spec).values() for t, s in dag["tasks"].items()}
    for name in TRAINING_TASKS:
        retried = [s for t, s in tasks.items() if re.sub(r"-\d+$", "", t) == name]
        assert retried and all(s["retryPolicy"]["maxRetryCount"] == 3 for s in retried), name
    assert "retryPolicy" not in tasks["export-buffer"]
    assert tasks["start-run"]["cachingOptions"] == {}  # off: every run needs its own MLflow parent run
    assert tasks["end-run"]["cachingOptions"] == {}
    assert tasks["train-teacher"]["cachingOptions"] == {"enableCache": True}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_store_tasks_get_minio_credentials_from_the_secret(variant: str) -> None:
    spec, platform = _load(variant)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    by_component = _task_executors(spec)
    for component, labels in by_component.items():
        for label in labels:
            cfg = k8s[label]
            secrets = cfg.get("secretAsEnv", [])
            if component in STORE_TASKS:
                assert secrets == [{
                    "secretName": MINIO_SECRET,
                    "secretNameParameter": {"runtimeValue": {"constant": MINIO_SECRET}},
                    "keyToEnv": [{"secretKey": "accesskey", "envVar": "AWS_ACCESS_KEY_ID"},
                                 {"secretKey": "secretkey", "envVar": "AWS_SECRET_ACCESS_KEY"}],
                    "optional": False,
                }], (component, secrets)
            else:
                assert secrets == [], component
            (cm,) = cfg["configMapAsEnv"]
            assert cm["configMapName"] == "polydistill-config" and cm["optional"] is True
            assert {e["envVar"] for e in cm["keyToEnv"]} == {"MINIO_ENDPOINT", "MLFLOW_TRACKING_URI",
                                                             "POLYDISTILL_STORE_URI"}


_CREDENTIAL_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}|minioadmin|minio123|REPLACE_ME|-----BEGIN|aws_secret_access_key\s*=|"
    r"://[^/\s:@'\"]+:[^/\s@'\"]+@"  # user:password@host in a URI
)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_credentials_in_the_yaml(variant: str) -> None:
    text = (COMPILED_DIR / compiled_name(variant)).read_text()
    assert not _CREDENTIAL_VALUE.search(text)
    spec, _ = _load(variant)
    # Credentials reach the pods only through secretAsEnv: no container sets a literal env value, and no
    # pipeline parameter is a credential.
    for label, ex in spec["deploymentSpec"]["executors"].items():
        assert "env" not in ex["container"], label
    for name in spec["root"]["inputDefinitions"]["parameters"]:
        assert not re.search(r"secret|password|token|access_key|credential", name, re.I), name
    # The credential variables' names appear only as secretAsEnv targets.
    for match in re.finditer(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID)", text):
        line = text[text.rfind("\n", 0, match.start()) + 1:text.find("\n", match.end())]
        assert "envVar:" in line, line


def test_compiled_yaml_uses_the_image_from_images() -> None:
    from polydistill_kfp.components.image import IMAGE, IMAGE_CUDA

    images = {ex["container"]["image"] for variant in VARIANTS
              for ex in _load(variant)[0]["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE, IMAGE_CUDA}
    text = (COMPILED_DIR / compiled_name("polydistill")).read_text()
    assert "pip install" not in text  # install_kfp_package=False: the image already has everything


# ------------------------------------------------------------------------------ the DAG, end to end

# The smoke profile, trimmed further: the point is the plumbing of every task, not learning.
SMOKE_PARAMS = {"teacher_steps": 1000, "record_steps": 800, "distill_steps": 30, "eval_cycle_steps": 100}


@pytest.mark.slow
def test_a_failed_task_prints_its_log_tail_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from polydistill.cli import main

    # A store nobody can create is refused before any task starts ...
    bad = CliRunner().invoke(main, ["run", "--profile", "smoke", "--games", "Pong", "--run-dir",
                                    str(tmp_path / "refused"), "--store", "file:///proc/polydistill-store"])
    assert bad.exit_code == 2 and "store file:///proc/polydistill-store cannot be created" in bad.output
    assert "start-run" not in bad.output
    # ... so a task is made to fail inside its process: the loop tasks' torch thread share is not a number
    # (start-run runs outside the loop; the teacher is the first loop task).
    monkeypatch.setenv("POLYDISTILL_LOOP_THREADS", "not-a-number")
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--profile", "smoke", "--games", "Pong", "--run-dir", str(run_dir)])
    assert res.exit_code == 2, res.output[-3000:]
    log = run_dir.resolve() / "logs" / "train-teacher-Pong.log"
    lines = res.output.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "FAILED train-teacher Pong" in line]
    assert lines[at].endswith(f"last lines of {log}:")
    tail = lines[at + 1:at + 21]
    assert all(line.startswith("    ") for line in tail) and "not-a-number" in tail[-1], res.output
    assert lines[-1] == f"polydistill: error: the pipeline failed: train-teacher Pong (log: {log})"
    assert "Traceback (most recent call last)" in log.read_text()


@pytest.mark.slow
def test_smoke_dag_end_to_end_on_the_local_runner(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from polydistill.cli import main

    games = ["Pong", "Breakout"]
    run_dir = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMOKE_PARAMS.items()]
    res = CliRunner().invoke(main, ["run", "--profile", "smoke", "--games", *games, "--run-dir",  # issue #24
                                    str(run_dir), *flags], catch_exceptions=False)
    assert res.exit_code == 0, res.output[-3000:]
    tracking_uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {tracking_uri}" in res.output

    # What a person watches (issue #24): a line as each task starts and ends, at most one progress line per
    # minute, the results, the MLflow command last; kfp's raw output only in one log file per task.
    lines = res.output.splitlines()
    assert lines[-1].startswith("MLflow UI: mlflow ui --backend-store-uri")
    progress_lines = [line for line in lines if line[9:16] == "...    "]
    assert len(lines) - len(progress_lines) <= 55, res.output
    minutes = float(re.search(r"Finished in ([0-9.]+) min", res.output)[1])  # type: ignore[index]
    assert len(progress_lines) <= minutes + 1, res.output
    starts = [line[16:] for line in lines if line[9:16] == "start  "]
    ends = [line[16:].rsplit(" in ", 1)[0] for line in lines if line[9:16] == "done   "]
    assert sorted(starts) == sorted(ends) and len(starts) == 18, res.output
    assert {"train-teacher Pong", "train-teacher Breakout", "evaluate teacher Pong", "distill latent"} <= set(ends)
    assert "Executing task" not in res.output and "KFP Executor" not in res.output
    logs = run_dir / "logs"
    assert {f"{s}.log" for s in ("start-run", "train-teacher-Pong", "train-teacher-Breakout", "distill-subset",
                                 "evaluate-teacher_Pong", "report", "end-run")} <= {p.name for p in logs.iterdir()}
    assert "Looking for component `train_teacher`" in (logs / "train-teacher-Pong.log").read_text()

    # The report: one row per game in the scores table and in the storage table (bytes per state from the
    # buffers and latents), printed at the end and kept under the run directory.
    md = (run_dir / "report" / "report.md").read_text()
    scores_md, rest = md.split("## Human-normalised score")
    hns_md, storage_md = rest.split("## Storage per training state")
    for part in (scores_md, hns_md, storage_md):
        rows = [line for line in part.splitlines() if line.startswith("|")]
        for game in games:
            assert sum(1 for r in rows if r.startswith(f"| {game} ")) == 1, md
    for game in games:
        assert any(line.startswith(f"| {game} ") for line in res.output.splitlines())
    storage = json.loads((run_dir / "report" / "report.json").read_text())["storage"]
    for game in games:
        assert set(storage[game]) == {"lossless_dataset", "latent_dataset", "code"}, storage
        assert storage[game]["code"] == 128  # 64 float16 codes
    for name in ("report.html", "report.json"):
        assert (run_dir / "report" / name).is_file()

    # The store: a teacher checkpoint (what the students load), a buffer and a latent dataset per game.
    store = run_dir / "store" / "runs"
    (run_root,) = [p for p in store.iterdir() if p.is_dir()]
    assert [r["run_id"] for r in json.loads((store / "polydistill-runs.json").read_text())["runs"]] == [run_root.name]
    for kind in ("buffers", "latents"):
        for game in games:
            assert (run_root / kind / game / "manifest.json").is_file(), (kind, game)
    for game in games:
        assert (run_root / "teachers" / game / "metadata.json").is_file(), game

    # MLflow: one parent run (ended) and a child run per task under it.
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("polydistill")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`polydistill.kind` = 'pipeline'")
    assert parent.data.tags["kfp.run_id"] == run_root.name
    assert parent.data.tags["polydistill.profile"] == "smoke"
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    expected = sorted([f"{stage}/{g}" for stage in ("train-teacher", "export-buffer", "train-autoencoder",
                                                      "encode-buffer") for g in games]
                      + [f"evaluate/teacher-{g}" for g in games]
                      + ["distill/subset", "distill/latent", "evaluate/student_subset",
                         "evaluate/student_latent", "evaluate/random"])
    assert names == expected
    assert all(r.info.status == "FINISHED" for r in children)
    # Both students from every game's teacher, side by side (the students' loop runs its iterations at once).
    students = {r.info.run_name: r for r in children if r.info.run_name.startswith("distill/")}
    for run in students.values():
        assert {k.split(".", 1)[1] for k in run.data.params if k.startswith("datasets.")} == set(games), run.data.params
    subset, latent = students["distill/subset"].info, students["distill/latent"].info
    assert subset.start_time < latent.end_time and latent.start_time < subset.end_time
    teacher_run = next(r for r in children if r.info.run_name == "train-teacher/Pong")
    assert teacher_run.data.params["total_steps"] == "1000"
    assert any(k.startswith("geo_mean_pct/") or k.startswith("score/") for k in parent.data.metrics)
    # The one yardstick on the parent run, lineage on the students' runs, the experiment opens on its runs.
    assert {f"hns/teacher/{g}" for g in games} <= set(parent.data.metrics)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in students.values():
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert sorted(json.loads(d.dataset.profile)["game"] for d in inputs) == sorted(games)


def test_stage_constants_are_the_component_names() -> None:
    # polydistill.stages names every stage once; the DAG, the components and MLflow's child runs use them.
    from polydistill import stages as S
    from polydistill_kfp import pipeline as P

    names = {c.component_spec.name for c in (
        P.train_teacher, P.export_buffer, P.train_autoencoder, P.encode_buffer, P.distill, P.evaluate, P.report,
        P.start_run, P.end_run)}
    assert names == set(S.ALL)
    assert set(TRAINING_TASKS) == set(S.TRAINING) and set(STORE_TASKS) == set(S.STORE)
