"""The compiled pipelines against what the Kubeflow Pipelines backend runs (:mod:`polydistill_kfp.compat`).

kfp's local runner is not the judge of the DAG: it resolves a list of artifacts entering a sub-DAG whole,
while the backend's driver passes on only the last one (kubeflow/pipelines#13900). These tests read the
committed ``pipelines/compiled/*.yaml`` and fail, naming the task and the upstream issue, on every construct
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
COMPILED = sorted(COMPILED_DIR.glob("*.yaml"))


def test_every_variant_is_compiled() -> None:
    assert {p.stem for p in COMPILED} == set(VARIANTS)


@pytest.mark.parametrize("path", COMPILED, ids=lambda p: p.name)
def test_compiled_pipeline_uses_only_what_the_supported_backends_run(path: Path) -> None:
    findings = compat.check_file(path)
    assert findings == [], "\n".join(str(f) for f in findings)


def test_the_pipeline_before_the_fix_fails_naming_task_and_issue() -> None:
    findings = compat.check_file(OLD_YAML)
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
    assert "PipelineTaskFinalStatus input of an exit task" in constructs
    assert "dsl.Collected as a DAG output" in constructs
    assert "retries of a task in a nested DAG" in constructs
    assert any(c.startswith("optional ConfigMap as env") for c in constructs)
    just_before = compat.check_file(path, backend=(2, 14, 0))
    assert {f.construct for f in just_before} == {"optional ConfigMap as env (kfp-kubernetes 2.17)"}


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
    assert "PipelineTaskFinalStatus" in old.output and "KFP backend 2.5.0 breaks or rejects" in old.output
