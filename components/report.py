"""Component ``report``: the results table (teacher | student on part of the buffer | student on latents),
written as Markdown, HTML and JSON with a chart (:func:`polydistill.report.write_report`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    teacher_scores: Input[list[Artifact]],
    student_subset_scores: Input[Artifact],
    student_latent_scores: Input[Artifact],
    random_scores: Input[Artifact],
    student_subset: Input[Model],
    student_latent: Input[Model],
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    report_md: Output[Markdown],
    report_html: Output[HTML],
    report_json: Output[Artifact],
):
    """Render the report from every evaluation's results, attach it to the MLflow parent run and register
    the students in the Model Registry (alias ``candidate``; ``champion`` only when better)."""
    import shutil
    import tempfile
    from pathlib import Path

    from polydistill.report import write_report
    from polydistill.tracking import log_report_to_parent, register_student
    from polydistill_kfp.components import runtime as rt

    rt.setup()
    results = [a.path for a in teacher_scores]
    results += [student_subset_scores.path, student_latent_scores.path, random_scores.path]
    out = Path(tempfile.mkdtemp(prefix="polydistill-report-"))
    files = write_report(results, out)
    shutil.copyfile(files["markdown"], report_md.path)
    shutil.copyfile(files["json"], report_json.path)
    # The chart goes inline so the Kubeflow UI's HTML viewer needs no second file.
    rt.write_html(report_html.path, "polydistill results", [files["chart"]],
                  body=Path(files["html"]).read_text())
    log_report_to_parent(tracking_uri, parent_run_id, files)
    for student in (student_subset, student_latent):
        register_student(tracking_uri, parent_run_id, student.path, files["json"], experiment=experiment)
