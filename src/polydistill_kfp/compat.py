"""Check a compiled pipeline (KFP IR YAML) against what the Kubeflow Pipelines backend really runs.

kfp's local runner resolves every construct in Python and accepts DAGs that the backend's Go driver breaks or
rejects, so the compiled YAML is judged here against the backend's own source (kubeflow/pipelines, read at
the tags named below). Two kinds of finding:

- **broken**: the backend mishandles the construct on every release this project supports; the pipeline must
  not use it. A list-typed artifact input that a task inside a sub-DAG takes from that DAG's inputs
  receives only the last artifact: ``GetInputArtifactsByExecutionID`` (``backend/src/v2/metadata/
  client.go``) assigns ``inputs[name] = {Artifacts: [one]}`` per INPUT event, and ``resolveInputs``
  (``backend/src/v2/driver/resolve.go``) reads a DAG's input artifacts through it (kubeflow/pipelines#13900;
  fix #13901 unmerged as of 2.17.0). An artifact iterator (``ParallelFor`` over artifacts) fails with
  "artifact iterator not implemented yet" (resolve.go). The Argo compiler's ``task()``
  (``backend/src/v2/compiler/argocompiler/dag.go``, 2.15.0 to 2.17.0) refuses the whole run for a resolver
  executor ("resolver executors not implemented"), a custom-job executor ("Google Cloud only") and an
  importer with a ``triggerPolicy.condition`` ("not supported": its one container is driver and importer).
- **too new**: a construct the backend supports only from some version on; a finding when the target backend
  is older. ``PipelineTaskFinalStatus`` is "not implemented yet" in 2.5.0's ``driver.go`` and resolved in
  2.14.0's ``resolve.go``; ``dsl.Collected`` fan-in (``CollectInputs``) first appears in 2.14.0's
  ``resolve.go``; retries of tasks in nested DAGs are read per task (``task.GetRetryPolicy()``) from 2.14.0's
  ``argocompiler/container.go`` (2.5.0 looks them up by name in the root DAG); the ``optional`` flag that
  kfp-kubernetes 2.17 writes for a ConfigMap as env is honoured from 2.15.0's ``driver/k8s.go``.
  A ``ParallelFor`` whose ``taskInfo.name`` differs from its task key (``ParallelFor(..., name=...)``) breaks
  before 2.16.0: 2.15.0's ``iterationItemTask`` (argocompiler/dag.go) gives the loop's DAG driver no task
  name, ``driver/dag.go`` records the loop under ``taskInfo.name``, and ``resolveUpstreamParameters`` /
  ``GetProducerTask`` (``driver/resolve.go``) cannot find the task key (kubeflow/pipelines#13239; fix #12808,
  first in 2.16.0). A ``PipelineTaskFinalStatus`` exit handler around nested DAGs (a loop or sub-pipeline
  inside the ExitHandler) reads a state that stays RUNNING before 2.17.0: a DAG's state is updated only when a
  task directly under it finishes (``component/launcher_v2.go`` -> ``UpdateDAGExecutionsState`` in
  ``metadata/client.go``), never by a finished sub-DAG (kubeflow/pipelines#11979, #13321; fix #13322, first
  in 2.17.0).

Kubeflow 1.10 ships KFP 2.5.0, Kubeflow 1.11 ships 2.15.0 (kubeflow/manifests README at v1.10.2 and
v1.11.0), so :data:`MINIMUM_BACKEND` is 2.15.0.

Use: ``polydistill compile --check VERSION`` (``check_file`` on every compiled variant), ``polydistill compile
--check VERSION FILE...`` (any compiled YAML) or :func:`check_file`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: The oldest KFP backend the compiled pipelines run on, and the Kubeflow release that ships it.
MINIMUM_BACKEND = (2, 15, 0)
MINIMUM_KUBEFLOW = "1.11"
LIST_ARTIFACT_ISSUE = "kubeflow/pipelines#13900"
#: The loop-name rule's and the exit-status rule's references, and the releases that fix them.
LOOP_NAME_REFERENCE = ("backend 2.15.0 argocompiler/dag.go iterationItemTask, driver/resolve.go GetProducerTask; "
                       "kubeflow/pipelines#13239, fix #12808")
LOOP_NAME_FIXED = (2, 16, 0)
EXIT_STATUS_REFERENCE = ("backend 2.15.0 component/launcher_v2.go, metadata/client.go UpdateDAGExecutionsState; "
                         "kubeflow/pipelines#11979, #13321, fix #13322")
EXIT_STATUS_FIXED = (2, 17, 0)
#: What 2.15.0-2.17.0's ``task()`` (backend/src/v2/compiler/argocompiler/dag.go) refuses, by executor kind.
REJECTED_EXECUTORS = {"resolver": "resolver executor (\"resolver executors not implemented\")",
                      "customJob": "custom-job executor (\"Google Cloud only\")"}
TASK_REFERENCE = "backend 2.15.0 argocompiler/dag.go task()"


@dataclass(frozen=True)
class Finding:
    """One construct the target backend mishandles: where it is, what it is, and the upstream reference."""

    dag: str  # the DAG component holding the task ("root" for the pipeline's own DAG)
    task: str
    construct: str
    reference: str  # the upstream issue or source file that says so
    since: tuple[int, int, int] | None = None  # None: broken on every supported release

    def __str__(self) -> str:
        when = "every backend release" if self.since is None else f"backends before {version_text(self.since)}"
        return f"task {self.task!r} in {self.dag}: {self.construct} ({when}; {self.reference})"


def version_text(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"2.15.0"``, ``"v2.15"`` or ``"2.15.0-rc.1"`` -> ``(2, 15, 0)``; ValueError otherwise."""
    core = text.strip().lstrip("vV").split("-", 1)[0].split("+", 1)[0]
    parts = core.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {text!r} (expected e.g. 2.15.0)")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def load_ir(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline spec and the platform spec (``{}`` if none) of a compiled YAML file."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a compiled KFP pipeline (not a text file)") from None
    docs = [d for d in yaml.safe_load_all(text) if d]
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ValueError(f"{path} is not a compiled KFP pipeline (no pipelineSpec root)")
    platform: dict[str, Any] = next((d for d in docs[1:] if "platforms" in d), {})
    return docs[0], platform


def _dags(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(name, component spec, dag) of the root and of every DAG component."""
    yield "root", spec["root"], spec["root"].get("dag", {})
    for name, comp in spec.get("components", {}).items():
        if "dag" in comp:
            yield name, comp, comp["dag"]


def _loop_tasks(dag: Mapping[str, Any]) -> set[str]:
    return {n for n, t in dag.get("tasks", {}).items() if "parameterIterator" in t or "artifactIterator" in t}


def _task_findings(dag_name: str, task_name: str, task: Mapping[str, Any], list_inputs: set[str], loops: set[str],
                   backend: tuple[int, int, int]) -> list[Finding]:
    """What breaks in one task of DAG ``dag_name`` (whose list-typed artifact inputs are ``list_inputs`` and
    ParallelFor tasks ``loops``) on ``backend``."""
    found: list[Finding] = []
    inputs = task.get("inputs", {})
    for arg, art in inputs.get("artifacts", {}).items():
        src = art.get("componentInputArtifact")
        if dag_name != "root" and src in list_inputs:
            found.append(Finding(
                dag_name, task_name,
                f"list-typed artifact input {arg!r} taken from the DAG's input {src!r} (the backend "
                "passes on only its last artifact)", LIST_ARTIFACT_ISSUE))
    if "artifactIterator" in task:
        found.append(Finding(dag_name, task_name, "ParallelFor over artifacts",
                             "backend/src/v2/driver/resolve.go: artifact iterator not implemented"))
    if backend >= (2, 14, 0):
        return found
    if any("taskFinalStatus" in p for p in inputs.get("parameters", {}).values()):
        found.append(Finding(dag_name, task_name, "PipelineTaskFinalStatus input of an exit task",
                             "backend 2.5.0 driver.go: TaskFinalStatus not implemented", (2, 14, 0)))
    producers = [v.get("taskOutputArtifact", {}).get("producerTask") for v in inputs.get("artifacts", {}).values()]
    producers += [v.get("taskOutputParameter", {}).get("producerTask") for v in inputs.get("parameters", {}).values()]
    if any(p in loops for p in producers):
        found.append(Finding(dag_name, task_name, "dsl.Collected fan-in from a ParallelFor",
                             "backend 2.14.0 resolve.go: CollectInputs", (2, 14, 0)))
    if dag_name != "root" and "retryPolicy" in task:
        found.append(Finding(dag_name, task_name, "retries of a task in a nested DAG",
                             "backend 2.14.0 argocompiler/container.go", (2, 14, 0)))
    return found


def _output_findings(dag_name: str, dag: Mapping[str, Any], loops: set[str]) -> list[Finding]:
    """A DAG output collected from a ParallelFor (backends before 2.14.0 cannot)."""
    outputs = dag.get("outputs", {})
    selectors = [s for o in outputs.get("artifacts", {}).values() for s in o.get("artifactSelectors", [])]
    selectors += [o.get("valueFromParameter", {}) for o in outputs.get("parameters", {}).values()]
    return [Finding(dag_name, s["producerSubtask"], "dsl.Collected as a DAG output",
                    "backend 2.14.0 resolve.go: CollectInputs", (2, 14, 0))
            for s in selectors if s.get("producerSubtask") in loops]


def _platform_findings(platform: Mapping[str, Any] | None) -> list[Finding]:
    """Optional ConfigMaps as env (backends before 2.15.0 fail the pod)."""
    executors = (platform or {}).get("platforms", {}).get("kubernetes", {}).get(
        "deploymentSpec", {}).get("executors", {})
    return [Finding("platform spec", executor, "optional ConfigMap as env (kfp-kubernetes 2.17)",
                    "backend 2.15.0 driver/k8s.go: configMapAsEnv.Optional", (2, 15, 0))
            for executor, cfg in executors.items() if any("optional" in c for c in cfg.get("configMapAsEnv", []))]


def _component(spec: Mapping[str, Any], task: Mapping[str, Any]) -> Mapping[str, Any]:
    return spec.get("components", {}).get(task.get("componentRef", {}).get("name", ""), {})


def _executor_kind(spec: Mapping[str, Any], task: Mapping[str, Any]) -> str | None:
    """``container``, ``importer``, ``resolver`` or ``customJob``: how the task's component runs (None: a DAG)."""
    label = _component(spec, task).get("executorLabel")
    executor = spec.get("deploymentSpec", {}).get("executors", {}).get(label, {}) if label else {}
    return next((k for k in ("container", "importer", "resolver", "customJob") if k in executor), None)


def _rejected_findings(spec: Mapping[str, Any], dag_name: str, task_name: str,
                       task: Mapping[str, Any]) -> list[Finding]:
    """Tasks the Argo compiler's ``task()`` refuses (every release to 2.17.0): the run never starts."""
    kind = _executor_kind(spec, task)
    if kind in REJECTED_EXECUTORS:
        return [Finding(dag_name, task_name, REJECTED_EXECUTORS[kind], TASK_REFERENCE)]
    if kind == "importer" and task.get("triggerPolicy", {}).get("condition"):
        return [Finding(dag_name, task_name, "importer under a condition (triggerPolicy.condition)",
                        TASK_REFERENCE)]
    return []


def _loop_name_findings(dag_name: str, dag: Mapping[str, Any], loops: set[str]) -> list[Finding]:
    """Loops whose ``taskInfo.name`` is not their task key (backends before 2.16.0 lose them)."""
    found = []
    for key in sorted(loops):
        shown = dag["tasks"][key].get("taskInfo", {}).get("name", key)
        if shown != key:
            found.append(Finding(dag_name, key, f"ParallelFor whose taskInfo.name {shown!r} is not its task key "
                                 "(a named loop: drop ParallelFor's name=)", LOOP_NAME_REFERENCE, LOOP_NAME_FIXED))
    return found


def _exit_status_findings(spec: Mapping[str, Any], dag_name: str, dag: Mapping[str, Any]) -> list[Finding]:
    """Exit tasks reading the final status of a group that holds sub-DAGs (stays RUNNING before 2.17.0)."""
    found = []
    tasks = dag.get("tasks", {})
    for task_name, task in tasks.items():
        for param in task.get("inputs", {}).get("parameters", {}).values():
            group = param.get("taskFinalStatus", {}).get("producerTask")
            if group not in tasks:
                continue
            inner = _component(spec, tasks[group]).get("dag", {}).get("tasks", {})
            nested = sorted(n for n, t in inner.items() if "dag" in _component(spec, t))
            if nested:
                found.append(Finding(
                    dag_name, task_name, f"PipelineTaskFinalStatus of {group!r}, which holds nested DAGs "
                    f"({', '.join(nested)}): its state stays RUNNING", EXIT_STATUS_REFERENCE, EXIT_STATUS_FIXED))
    return found


def check_spec(spec: Mapping[str, Any], platform: Mapping[str, Any] | None = None,
               backend: tuple[int, int, int] = MINIMUM_BACKEND) -> list[Finding]:
    """Every construct in ``spec`` that a KFP backend of version ``backend`` breaks or rejects."""
    found: list[Finding] = []
    for dag_name, comp, dag in _dags(spec):
        list_inputs = {n for n, a in comp.get("inputDefinitions", {}).get("artifacts", {}).items()
                       if a.get("isArtifactList")}
        loops = _loop_tasks(dag)
        for task_name, task in dag.get("tasks", {}).items():
            found += _task_findings(dag_name, task_name, task, list_inputs, loops, backend)
            found += _rejected_findings(spec, dag_name, task_name, task)
        if backend < LOOP_NAME_FIXED:
            found += _loop_name_findings(dag_name, dag, loops)
        if backend < EXIT_STATUS_FIXED:
            found += _exit_status_findings(spec, dag_name, dag)
        if backend < (2, 14, 0):
            found += _output_findings(dag_name, dag, loops)
    if backend < (2, 15, 0):
        found += _platform_findings(platform)
    return found


def check_file(path: str | Path, backend: tuple[int, int, int] = MINIMUM_BACKEND) -> list[Finding]:
    """:func:`check_spec` of a compiled YAML file."""
    spec, platform = load_ir(path)
    return check_spec(spec, platform, backend)
