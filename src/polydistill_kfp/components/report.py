"""Component ``report``: the results table (teacher | student on part of the buffer | student on latents),
written as Markdown, HTML and JSON with a chart (:func:`polydistill.report.write_report`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    teacher_scores: Input[list[Artifact]],
    student_scores: Input[list[Artifact]],
    random_scores: Input[Artifact],
    students: Input[list[Model]],
    buffers: Input[list[Dataset]],
    latents: Input[list[Dataset]],
    tracking_uri: str,
    parent_run_id: str,
    registered_model: str,
    run_root: str,
    retraining_config: dict,
    report_md: Output[Markdown],
    report_html: Output[HTML],
    report_json: Output[Artifact],
):
    """Render the report from every evaluation's results, log its numbers and files to the MLflow parent
    run, and register both students as versions of ``registered_model`` (alias ``candidate``; ``champion``
    moves only to a student with a higher mean human-normalised score on the same games, evaluation protocol
    and seed: ``polydistill.tracking.champion``). Each version names its pipeline run, ``run_root`` and the
    teachers (for a later warm start). Then retention (``retraining_config["keep_runs"]``) deletes older
    runs' datasets, never the champion's (``polydistill.retention``). Last, it marks the parent run succeeded,
    which ``end-run`` reads (``polydistill.tracking.outcome``)."""
    import json
    import logging
    import tempfile
    from pathlib import Path

    from polydistill import retention
    from polydistill.report import write_report
    from polydistill.tracking import (
        TrackingError,
        champion_tags,
        log_report_to_parent,
        mark_pipeline_succeeded,
        register_student,
    )
    from polydistill.tracking import names as N
    from polydistill.tracking.notes import log_parent_record
    from polydistill_kfp.components import runtime as rt

    rt.setup()
    results = [a.path for a in teacher_scores]
    results += [a.path for a in student_scores] + [random_scores.path]  # each file names its label
    storage: dict = {}  # bytes per state: the lossless buffer, the latent buffer and the code alone
    for d in buffers:
        storage.setdefault(d.metadata["game"], {})["lossless_dataset"] = d.metadata["bytes_per_state"]
    for d in latents:
        row = storage.setdefault(d.metadata["game"], {})
        row["latent_dataset"] = d.metadata["bytes_per_state"]
        row["code"] = d.metadata["code_bytes_per_state"]  # encode-buffer writes both
    files = write_report(results, Path(tempfile.mkdtemp(prefix="polydistill-report-")), storage=storage)
    rt.copy_file(files["markdown"], report_md.path)
    rt.copy_file(files["html"], report_html.path)  # self-contained: the chart is inlined
    rt.copy_file(files["json"], report_json.path)
    table = json.loads(Path(files["json"]).read_text())
    bytes_per_state = {
        source: {d.metadata["game"]: d.metadata["bytes_per_state"] for d in datasets}
        for source, datasets in (("subset", buffers), ("latent", latents))
    }
    metrics = log_report_to_parent(tracking_uri, parent_run_id, table, bytes_per_state=bytes_per_state)
    log = logging.getLogger("polydistill.pipeline")
    for student in students:
        source = student.metadata["source"]
        # Registered when it has the champion's yardstick (mean HNS); % of teacher is kept for reading only
        # (a weak teacher, as in the smoke profile, has no %).
        mean_hns = metrics.get(f"mean_hns/{source}")
        run_id = student.metadata.get("mlflow_run_id")
        if mean_hns is None or not run_id:
            log.warning("student (%s) not registered: %s", source,
                        "no mean HNS (no game with a reference score)" if mean_hns is None
                        else "its MLflow run is missing")
            continue
        geo = metrics.get(f"geo_mean_pct/{source}", float("nan"))
        games = list(student.metadata["games"])
        lineage = {N.VTAG_PIPELINE_RUN: parent_run_id, N.VTAG_KFP_RUN: run_root.rstrip("/").rsplit("/", 1)[-1],
                   N.VTAG_RUN_ROOT: run_root, N.VTAG_TEACHERS: json.dumps(rt.teacher_lineage(run_root, games))}
        register_student(tracking_uri, run_id, registered_model, games, geo,
                         mean_hns=mean_hns, median_hns=metrics.get(f"median_hns/{source}"),
                         evaluation=table["evaluation"].get(f"student_{source}"), lineage=lineage)
    keep = int(retraining_config.get("keep_runs", 0))
    if keep:
        try:
            champion = champion_tags(tracking_uri, registered_model) or {}
        except TrackingError as e:  # without the champion's run root nothing is known safe to delete
            log.warning("retention skipped: %s", e)
        else:
            protected = {run_root, champion.get(N.VTAG_RUN_ROOT, "")} - {""}
            deleted = retention.apply(run_root.rstrip("/").rsplit("/runs/", 1)[0], keep, protected)
            log_parent_record(tracking_uri, parent_run_id, {
                "polydistill.retention.deleted": ",".join(d["run_id"] for d in deleted) or "none"},
                {"keep_runs": keep, "protected": sorted(protected), "deleted": deleted}, "retention.json")
    # Last: what end-run reads to close the parent run FINISHED (the backend's DAG state cannot say it).
    mark_pipeline_succeeded(tracking_uri, parent_run_id)
    print(Path(files["markdown"]).read_text())
