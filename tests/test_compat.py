"""The compiled pipelines against what the Kubeflow Pipelines backend runs (:mod:`polydistill_kfp.compat`).

kfp's local runner is not the judge of the DAG: it resolves a list of artifacts entering a sub-DAG whole,
while the backend's driver passes on only the last one (kubeflow/pipelines#13900). These tests read the
committed ``src/polydistill_kfp/compiled/*.yaml`` and fail, naming the task and the upstream issue, on every construct
the supported backends mishandle. ``tests/data/polydistill-d2b17d4.yaml`` is the compiled pipeline as it was
before the students' loop took game records (commit d2b17d4): the checker must still find its breakage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polydistill_kfp import compat
from polydistill_kfp.compile import COMPILED_DIR
from polydistill_kfp.pipeline import VARIANTS

OLD_YAML = Path(__file__).parent / "data" / "polydistill-d2b17d4.yaml"
#: The compiled pipeline as it was at commit 4f9bac1 (issue #34): named loops and a PipelineTaskFinalStatus
#: exit task around the sub-DAGs; it fails at ``students`` on Kubeflow 1.11 and closes a success as FAILED.
TODAY_YAML = Path(__file__).parent / "data" / "polydistill-4f9bac1.yaml"
COMPILED = sorted(COMPILED_DIR.glob("*.yaml"))


def test_every_variant_is_compiled() -> None:
    assert {p.stem for p in COMPILED} == set(VARIANTS)


@pytest.mark.parametrize("path", COMPILED, ids=lambda p: p.name)
def test_compiled_pipeline_uses_only_what_the_supported_backends_run(path: Path) -> None:
    findings = compat.check_file(path)
    assert findings == [], "\n".join(str(f) for f in findings)


def test_the_pipeline_before_the_fix_fails_naming_task_and_issue() -> None:
    # Its named loops and final-status exit task are also found (rules of issue #34); here only #13900's.
    findings = [f for f in compat.check_file(OLD_YAML) if f.since is None]
    text = [str(f) for f in findings]
    assert {(f.dag, f.task) for f in findings} >= {("comp-for-loop-1-2", "distill"), ("comp-students", "for-loop-1")}
    distill = [t for t in text if "'distill'" in t]
    assert len(distill) == 3  # teachers, buffers, latents
    assert all("kubeflow/pipelines#13900" in t and "every backend release" in t for t in text)


def _mini_spec(list_input: bool, source: str) -> dict:
    """A pipeline whose sub-DAG ``comp-inner`` hands input ``models`` to a task."""
    return {
        "root": {"dag": {"tasks": {"inner": {"componentRef": {"name": "comp-inner"}}}}},
        "components": {
            "comp-inner": {
                "inputDefinitions": {"artifacts": {"models": {
                    "artifactType": {"schemaTitle": "system.Model"},
                    **({"isArtifactList": True} if list_input else {})}}},
                "dag": {"tasks": {"consume": {"inputs": {"artifacts": {"models": {source: "models"}}}}}},
            },
        },
    }


def test_a_single_artifact_entering_a_sub_dag_is_fine() -> None:
    assert compat.check_spec(_mini_spec(list_input=False, source="componentInputArtifact")) == []
    (finding,) = compat.check_spec(_mini_spec(list_input=True, source="componentInputArtifact"))
    assert (finding.dag, finding.task, finding.since) == ("comp-inner", "consume", None)


def test_artifact_iterator_is_flagged() -> None:
    spec = {"root": {"dag": {"tasks": {"loop": {"artifactIterator": {"items": {"inputArtifact": "x"}}}}}}}
    (finding,) = compat.check_spec(spec)
    assert "ParallelFor over artifacts" in finding.construct


def test_older_backends_would_reject_what_the_pipeline_needs() -> None:
    """Why Kubeflow 1.10 (KFP 2.5) is not supported: each construct its backend lacks, named."""
    path = COMPILED_DIR / "polydistill.yaml"
    old = compat.check_file(path, backend=compat.parse_version("2.5.0"))
    constructs = {f.construct for f in old}
    assert "dsl.Collected as a DAG output" in constructs
    assert "retries of a task in a nested DAG" in constructs
    assert any(c.startswith("optional ConfigMap as env") for c in constructs)
    just_before = compat.check_file(path, backend=(2, 14, 0))
    assert {f.construct for f in just_before} == {"optional ConfigMap as env (kfp-kubernetes 2.17)"}


def test_a_final_status_exit_task_needs_2_14() -> None:
    constructs = {f.construct for f in compat.check_file(TODAY_YAML, backend=(2, 5, 0))}
    assert "PipelineTaskFinalStatus input of an exit task" in constructs


def test_minimum_is_the_backend_kubeflow_1_11_ships() -> None:
    assert compat.MINIMUM_BACKEND == (2, 15, 0) and compat.MINIMUM_KUBEFLOW == "1.11"


@pytest.mark.parametrize(("text", "version"), [("2.15.0", (2, 15, 0)), ("v2.16", (2, 16, 0)),
                                               ("2.17.0-rc.1", (2, 17, 0)), ("3", (3, 0, 0))])
def test_parse_version(text: str, version: tuple[int, int, int]) -> None:
    assert compat.parse_version(text) == version


@pytest.mark.parametrize("text", ["unknown", "", "2.x", "1.2.3.4"])
def test_parse_version_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a version"):
        compat.parse_version(text)


def test_students_receive_game_records_not_artifact_lists() -> None:
    """The fix itself: the students' sub-DAG takes only parameters, and distill a list of game records."""
    spec, _ = compat.load_ir(COMPILED_DIR / "polydistill.yaml")
    students = spec["components"]["comp-students"]["inputDefinitions"]
    assert "artifacts" not in students
    assert students["parameters"]["game_records"]["parameterType"] == "LIST"
    distill = spec["components"]["comp-distill"]["inputDefinitions"]
    assert "artifacts" not in distill and distill["parameters"]["game_records"]["parameterType"] == "LIST"


def test_load_ir_refuses_what_is_not_a_pipeline(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap"}))
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        compat.load_ir(f)


def test_compile_check_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from polydistill.cli import main

    ok = CliRunner().invoke(main, ["compile", "--out", str(tmp_path), "--check", "2.15.0"])
    assert ok.exit_code == 0, ok.output
    assert "every variant runs on KFP backend 2.15.0" in ok.output
    old = CliRunner().invoke(main, ["compile", "--out", str(tmp_path), "--check", "2.5.0"])
    assert old.exit_code != 0
    assert "dsl.Collected" in old.output and "KFP backend 2.5.0 breaks or rejects" in old.output


# ------------------------------------------------------------------ Kubeflow 1.11 (backend 2.15.0), issue #34


@pytest.mark.parametrize("path", COMPILED, ids=lambda p: p.name)
def test_every_loop_is_named_by_its_task_key(path: Path) -> None:
    """Backend 2.15.0 finds a loop by its task key but records it under taskInfo.name (#13239)."""
    spec, _ = compat.load_ir(path)
    loops = [(key, t) for _, _, dag in compat._dags(spec) for key, t in dag.get("tasks", {}).items()
             if "parameterIterator" in t]
    assert len(loops) == 2
    assert all(t["taskInfo"]["name"] == key for key, t in loops), [(k, t["taskInfo"]) for k, t in loops]


@pytest.mark.parametrize("path", COMPILED, ids=lambda p: p.name)
def test_no_exit_task_reads_a_final_status(path: Path) -> None:
    """end-run decides from MLflow, not from the ExitHandler state 2.15.0 leaves RUNNING (#13321)."""
    spec, _ = compat.load_ir(path)
    readers = [key for _, _, dag in compat._dags(spec) for key, t in dag.get("tasks", {}).items()
               if any("taskFinalStatus" in p for p in t.get("inputs", {}).get("parameters", {}).values())]
    assert readers == []
    exit_task = spec["root"]["dag"]["tasks"]["end-run"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # still the exit task


def test_todays_pipeline_fails_on_kubeflow_1_11_naming_the_rules() -> None:
    findings = compat.check_file(TODAY_YAML, backend=(2, 15, 0))
    loops = [f for f in findings if f.since == compat.LOOP_NAME_FIXED]
    assert {(f.dag, f.task) for f in loops} == {("comp-per-game", "for-loop-1"), ("comp-students", "for-loop-1")}
    assert all("kubeflow/pipelines#13239" in str(f) for f in loops)
    assert {f.construct.split("'")[1] for f in loops} == {"games", "sources"}
    (exit_status,) = [f for f in findings if f.since == compat.EXIT_STATUS_FIXED]
    assert (exit_status.dag, exit_status.task) == ("root", "end-run")
    assert "per-game, students" in exit_status.construct and "#13321" in str(exit_status)
    assert len(findings) == 3
    # Each rule ends with the release that fixes it.
    assert {f.since for f in compat.check_file(TODAY_YAML, backend=(2, 16, 0))} == {compat.EXIT_STATUS_FIXED}
    assert compat.check_file(TODAY_YAML, backend=(2, 17, 0)) == []


def _executor_spec(kind: dict, condition: str = "") -> dict:
    """A root DAG with one task ``t`` whose component runs executor ``exec-t`` of ``kind``."""
    task: dict = {"componentRef": {"name": "comp-t"}, "taskInfo": {"name": "t"}}
    if condition:
        task["triggerPolicy"] = {"condition": condition}
    return {"root": {"dag": {"tasks": {"t": task}}}, "components": {"comp-t": {"executorLabel": "exec-t"}},
            "deploymentSpec": {"executors": {"exec-t": kind}}}


@pytest.mark.parametrize(("kind", "condition", "construct"), [
    ({"resolver": {"outputArtifactQueries": {}}}, "", "resolver executor"),
    ({"customJob": {"customJob": {}}}, "", "custom-job executor"),
    ({"importer": {"artifactUri": {"constant": "s3://b/x"}}}, "inputs.parameter_values['x'] == 'y'",
     "importer under a condition"),
])
def test_what_the_argo_compiler_rejects_is_flagged(kind: dict, condition: str, construct: str) -> None:
    (finding,) = compat.check_spec(_executor_spec(kind, condition), backend=(2, 17, 0))
    assert finding.construct.startswith(construct) and finding.since is None
    assert "argocompiler/dag.go task()" in str(finding) and "every backend release" in str(finding)


def test_an_importer_or_container_without_condition_is_fine() -> None:
    assert compat.check_spec(_executor_spec({"importer": {"artifactUri": {"constant": "s3://b/x"}}})) == []
    assert compat.check_spec(_executor_spec({"container": {"image": "x"}}), backend=(2, 15, 0)) == []


def _loop_spec(shown: str) -> dict:
    loop = {"componentRef": {"name": "comp-for-loop-1"}, "taskInfo": {"name": shown},
            "parameterIterator": {"itemInput": "item", "items": {"raw": "[1, 2]"}}}
    body = {"dag": {"tasks": {"t": {"componentRef": {"name": "comp-t"}, "taskInfo": {"name": "t"}}}}}
    return {"root": {"dag": {"tasks": {"for-loop-1": loop}}}, "components": {"comp-for-loop-1": body}}


def test_a_named_loop_breaks_before_2_16() -> None:
    assert compat.check_spec(_loop_spec("for-loop-1"), backend=(2, 15, 0)) == []
    (finding,) = compat.check_spec(_loop_spec("games"), backend=(2, 15, 0))
    assert (finding.dag, finding.task, finding.since) == ("root", "for-loop-1", (2, 16, 0))
    assert compat.check_spec(_loop_spec("games"), backend=(2, 16, 0)) == []


def _exit_spec(nested: bool) -> dict:
    inner = {"componentRef": {"name": "comp-sub" if nested else "comp-t"}, "taskInfo": {"name": "inner"}}
    return {
        "root": {"dag": {"tasks": {
            "exit-handler-1": {"componentRef": {"name": "comp-exit-handler-1"}, "taskInfo": {"name": "g"}},
            "notify": {"componentRef": {"name": "comp-t"}, "dependentTasks": ["exit-handler-1"],
                       "inputs": {"parameters": {"status": {"taskFinalStatus": {"producerTask": "exit-handler-1"}}}},
                       "triggerPolicy": {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}}}}},
        "components": {"comp-exit-handler-1": {"dag": {"tasks": {"inner": inner}}},
                       "comp-sub": {"dag": {"tasks": {"t": {"componentRef": {"name": "comp-t"}}}}},
                       "comp-t": {"executorLabel": "exec-t"}},
    }


def test_a_final_status_around_nested_dags_is_running_before_2_17() -> None:
    assert compat.check_spec(_exit_spec(nested=False), backend=(2, 15, 0)) == []
    (finding,) = compat.check_spec(_exit_spec(nested=True), backend=(2, 15, 0))
    assert (finding.dag, finding.task, finding.since) == ("root", "notify", (2, 17, 0))
    assert "(inner)" in finding.construct
    assert compat.check_spec(_exit_spec(nested=True), backend=(2, 17, 0)) == []


def test_compile_check_a_given_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from polydistill.cli import main

    ok = CliRunner().invoke(main, ["compile", "--check", "2.15.0", *map(str, COMPILED)])
    assert ok.exit_code == 0 and "every file runs on KFP backend 2.15.0" in ok.output, ok.output
    today = CliRunner().invoke(main, ["compile", "--check", "2.15.0", str(TODAY_YAML)])
    assert today.exit_code != 0 and "3 construct(s) that KFP backend 2.15.0 breaks" in today.output
    assert "taskInfo.name 'games' is not its task key" in today.output and "#13239" in today.output
    assert CliRunner().invoke(main, ["compile", "--check", "2.17.0", str(TODAY_YAML)]).exit_code == 0
    bad = tmp_path / "x.yaml"
    bad.write_text("a: [")
    res = CliRunner().invoke(main, ["compile", "--check", "2.15.0", str(bad)])
    assert res.exit_code == 2 and "x.yaml is not valid YAML" in res.output


@pytest.mark.parametrize("args", [["--check", ""], [str(TODAY_YAML)]], ids=["empty version", "file without check"])
def test_compile_check_refuses_what_would_skip_the_check(args: list[str], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from polydistill.cli import main

    res = CliRunner().invoke(main, ["compile", *args])
    assert res.exit_code == 2 and ("not a version: ''" in res.output or "needs the backend version" in res.output)
    assert "every" not in res.output
