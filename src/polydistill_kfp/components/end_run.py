"""Component ``end-run``: the pipeline's exit task; closes the MLflow parent run with the run's outcome."""

from kfp import dsl

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def end_run(tracking_uri: str, experiment: str, kfp_run_id: str):
    """Close the parent run of ``kfp_run_id``: FINISHED when the report marked it succeeded, FAILED after a
    stage failed (tagged with the stage and its error), KILLED when a stage was stopped from outside
    (a cancelled run), decided by ``polydistill.tracking.close_pipeline_run`` from the run's MLflow records.

    It takes no ``PipelineTaskFinalStatus``: on KFP backends before 2.17.0 the ExitHandler's state stays
    RUNNING whenever the group holds sub-DAGs, success or not (kubeflow/pipelines#11979, #13321; see
    ``polydistill.tracking.outcome``), and ``polydistill compile --check`` refuses that construct. An exit task
    may not consume other tasks' outputs, so the parent run is found by its ``kfp.run_id`` tag.
    """
    from polydistill.tracking import close_pipeline_run, resolve_tracking_uri
    from polydistill_kfp.components import runtime as rt

    rt.setup()
    uri = resolve_tracking_uri(tracking_uri or None, None)
    parent = rt.find_pipeline_run(uri, experiment, kfp_run_id)
    outcome, reason = close_pipeline_run(uri, parent)
    print(f"pipeline run {kfp_run_id}: MLflow parent run {parent or '(not found)'} {outcome or 'left open'}: "
          f"{reason}")
