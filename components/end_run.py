"""Component ``end-run``: the pipeline's exit task; closes the MLflow parent run with the run's outcome."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def end_run(tracking_uri: str, experiment: str, kfp_run_id: str, status: PipelineTaskFinalStatus):
    """Mark the parent run of ``kfp_run_id`` FINISHED when every task succeeded, FAILED otherwise.

    An exit task may not consume other tasks' outputs, so the parent run is found by its ``kfp.run_id`` tag.
    """
    from polydistill_kfp.components import runtime as rt

    from polydistill.tracking import end_pipeline_run, resolve_tracking_uri

    rt.setup()
    uri = resolve_tracking_uri(tracking_uri or None, None)
    outcome = "FINISHED" if status.state == "SUCCEEDED" else "FAILED"
    parent = rt.find_pipeline_run(uri, experiment, kfp_run_id)
    print(f"pipeline run {kfp_run_id}: {status.state}; MLflow parent run {parent or '(not found)'} {outcome}")
    end_pipeline_run(uri, parent, outcome)
