"""MLflow tracking: a pipeline run's outcome, decided from what the run itself recorded in MLflow.

The KFP backend's final status cannot be trusted for it. On backend 2.15.0 (Kubeflow 1.11) a DAG's state is
updated only when a task directly under it finishes (``backend/src/v2/component/launcher_v2.go`` ->
``UpdateDAGExecutionsState`` in ``backend/src/v2/metadata/client.go``), so an ExitHandler around sub-DAGs
(the per-game and students loops) stays RUNNING after a success and after a failure alike
(kubeflow/pipelines#11979, #13321; fixed by #13322 in 2.17.0). A cancel sets the workflow's
``activeDeadlineSeconds`` to 0 (``TerminateWorkflow`` in ``backend/src/apiserver/resource/resource_manager.go``)
and marks no execution CANCELED (in MLMD, CANCELED means "not triggered": ``metadata/client.go``). So the
exit task (``end-run``) takes no ``PipelineTaskFinalStatus``; it reads instead:

- the parent run's :data:`TAG_SUCCEEDED`, which ``report`` sets as its last act (the report runs only after
  every other stage succeeded) -> FINISHED;
- a stage that recorded its failure (:data:`TAG_FAILED_TASK` on the parent, or a FAILED stage run) -> FAILED;
- a stage run left RUNNING or ended KILLED: its pod was stopped from outside while it worked (a cancelled
  run, or a pod killed: eviction, out of memory) -> KILLED;
- none of these: the run stopped between stages with no stage failing (e.g. the backend's driver failed
  a task before it started) -> FAILED.
"""

from __future__ import annotations

from dataclasses import dataclass

from .connection import _check_reachable, _client, _warn_failure
from .names import TAG_ERROR, TAG_FAILED_TASK, TAG_OUTCOME_REASON, TAG_PARENT, TAG_SUCCEEDED
from .pipeline_runs import _log_tags_batched, one_line_error


@dataclass(frozen=True)
class RunEvidence:
    """What a pipeline run's MLflow records say about how it ended.

    Attributes:
        succeeded: the report marked the parent run (:data:`TAG_SUCCEEDED`).
        failed: stages that recorded a failure (the parent's :data:`TAG_FAILED_TASK` first, then FAILED stage
            runs), by stage-run name (``train-teacher/Pong``).
        stopped: stage runs left RUNNING or ended KILLED (stopped from outside), by name.
    """

    succeeded: bool = False
    failed: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()


def decide_outcome(evidence: RunEvidence) -> tuple[str, str]:
    """The MLflow status (FINISHED, FAILED or KILLED) of a pipeline run and the reason, on one line, from
    ``evidence`` alone (see the module docstring for the order)."""
    if evidence.succeeded:
        return "FINISHED", "the report, the last stage, succeeded"
    if evidence.failed:
        return "FAILED", f"stage {evidence.failed[0]} failed"
    if evidence.stopped:
        return "KILLED", (f"stopped from outside while {', '.join(evidence.stopped)} ran (cancelled, or its pod "
                          "was killed)")
    return "FAILED", "stopped before the report with no stage running or failing (a backend error between stages?)"


def mark_pipeline_succeeded(tracking_uri: str, run_id: str) -> bool:
    """Tag the parent run ``run_id`` as succeeded (what ``report`` does last); False when tracking is off or
    MLflow refused (a warning says why; ``end-run`` then cannot close the run FINISHED)."""
    if not run_id:
        return False
    try:
        _check_reachable(tracking_uri)
        _client(tracking_uri).set_tag(run_id, TAG_SUCCEEDED, "true")
        return True
    except Exception as e:
        _warn_failure(tracking_uri, f"marking run {run_id} succeeded", e, "end-run will not close it FINISHED")
        return False


def run_evidence(tracking_uri: str, run_id: str) -> RunEvidence:
    """Read :class:`RunEvidence` of the parent run ``run_id`` and its stage runs from MLflow (raises on error)."""
    client = _client(tracking_uri)
    parent = client.get_run(run_id)
    tags = parent.data.tags
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{run_id}'",
                                  max_results=1000)
    failed = [tags[TAG_FAILED_TASK]] if TAG_FAILED_TASK in tags else []
    failed += sorted(r.info.run_name for r in children if r.info.status == "FAILED")
    stopped = sorted(r.info.run_name for r in children if r.info.status in ("RUNNING", "KILLED"))
    return RunEvidence(tags.get(TAG_SUCCEEDED) == "true", tuple(dict.fromkeys(failed)), tuple(stopped))


def close_pipeline_run(tracking_uri: str, run_id: str) -> tuple[str, str]:
    """Decide the outcome of parent run ``run_id`` (:func:`decide_outcome` of :func:`run_evidence`), tag the
    reason (and, for a failure no stage tagged, the failed stage), and end the run with it.

    Returns (status, reason); ("", reason) when there is no run or MLflow is unreachable (a warning says so).
    """
    if not run_id:
        return "", "no MLflow parent run"
    try:
        _check_reachable(tracking_uri)
        evidence = run_evidence(tracking_uri, run_id)
        status, reason = decide_outcome(evidence)
        client = _client(tracking_uri)
        tags = {TAG_OUTCOME_REASON: one_line_error(reason)}
        if status == "FAILED" and TAG_FAILED_TASK not in client.get_run(run_id).data.tags:
            tags[TAG_FAILED_TASK] = evidence.failed[0] if evidence.failed else "unknown"
            tags[TAG_ERROR] = one_line_error(reason)
        _log_tags_batched(client, run_id, tags)
        client.set_terminated(run_id, status=status)
        return status, reason
    except Exception as e:
        _warn_failure(tracking_uri, f"ending run {run_id}", e, "the run stays open in MLflow")
        return "", f"MLflow refused: {one_line_error(e)}"
