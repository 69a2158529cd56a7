"""Component ``end-run``: the pipeline's exit task; closes the MLflow parent run with the run's outcome."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def end_run(tracking_uri: str, experiment: str, kfp_run_id: str, status: PipelineTaskFinalStatus):
    """Mark the parent run of ``kfp_run_id`` FINISHED when every task succeeded, FAILED (tagged with the
    failing task and its error) or KILLED otherwise.

    ``status.state`` is the backend's MLMD execution state (COMPLETE, CACHED, FAILED, CANCELED) on Kubeflow
    and SUCCEEDED/FAILED on kfp's local runner; ``tracking.run_outcome`` maps both. Neither runner names the
    failing task (its status is the exit handler's group), so the failing stage tags the parent run itself.
    An exit task may not consume other tasks' outputs, so the parent run is found by its ``kfp.run_id`` tag.
    """
    from polydistill_kfp.components import runtime as rt

    from polydistill.tracking import end_pipeline_run, resolve_tracking_uri, run_outcome

    rt.setup()
    uri = resolve_tracking_uri(tracking_uri or None, None)
    outcome = run_outcome(status.state)
    parent = rt.find_pipeline_run(uri, experiment, kfp_run_id)
    error = status.error_message or ""
    failure = end_pipeline_run(uri, parent, outcome, failed_task=status.pipeline_task_name, error=error)
    print(f"pipeline run {kfp_run_id}: {status.state}; MLflow parent run {parent or '(not found)'} {outcome}"
          + "".join(f"; {k.split('.')[-1]}: {v}" for k, v in failure.items()))
