"""Component ``distill``: one multi-task student from every game's teacher
(:func:`polydistill.distill.distill`)."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill(
    source: str,
    games: list,
    game_records: list,
    config: dict,
    run_root: str,
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    minio_endpoint: str,
    student: Output[Model],
    curves: Output[HTML],
    metrics: Output[Metrics],
):
    """Distill the teachers into one student trained on ``source`` states (``subset``/``full``: part or all of
    each game's buffer; ``latent``: the decoded latents).

    ``game_records`` holds one record per game of ``games`` (``run_layout.game_record``: the teacher, buffer
    and latents by store URI and the datasets' manifest digests); a missing, extra or incomplete record, or
    a dataset whose manifest changed since it was recorded, fails the task before any training."""
    from polydistill import stages as S
    from polydistill.distill import distill as run_distill
    from polydistill_kfp.components import runtime as rt

    # in_loop: the students' loop, two students share the machine. The config is logged with the datasets.
    with rt.stage_task(S.DISTILL, source, {**config, "source": source}, run_root=run_root, log_config=False,
                       tracking_uri=tracking_uri, parent_run_id=parent_run_id, experiment=experiment,
                       minio_endpoint=minio_endpoint) as task:
        run, cfg = task.run, task.cfg
        # Inside the stage run, so a refusal is recorded as this task's failure on the parent run.
        records = rt.check_game_records(list(games), list(game_records))
        kind = "latents" if cfg.source == "latent" else "buffer"
        dataset_uris = rt.check_recorded_datasets(records, kind)
        teacher_dirs = {game: str(rt.fetch_dir(r["teacher"])) for game, r in records.items()}
        run.log_inputs([rt.dataset_ref("latents" if kind == "latents" else "buffer", r[kind], game,
                                       r[f"{kind}_sha256"]) for game, r in records.items()])
        run.log_config({**cfg.model_dump(mode="json"), "datasets": dataset_uris,
                        "dataset_sha256": {g: r[f"{kind}_sha256"] for g, r in records.items()}})
        res = run_distill(teacher_dirs, dataset_uris, cfg, task.path, on_metrics=task.on_metrics)
        summary = {
            "samples_per_second": res.samples_per_second,
            "parameters": res.parameters,
            **{f"agreement/{g}": v for g, v in res.agreement.items()},
            **{f"final_loss/{g}": v for g, v in res.final_loss.items()},
        }
        run.log_metrics(summary, res.steps)
        task.keep_model(res.checkpoint_dir, student, "student", curves,
                        f"student ({source}): loss and agreement per game", [res.curves_png],
                        [res.curves_png, res.curves_csv])
    rt.log_scalars(metrics, {k.replace("/", "_"): v for k, v in summary.items()})
    # The report task registers the student from this run (register_student needs the run that logged it).
    student.metadata.update({"games": sorted(teacher_dirs), "source": source, "parameters": res.parameters,
                             "mlflow_run_id": run.run_id or ""})
