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

    ``game_records`` holds one record per game of ``games`` (``runtime.game_record``: the teacher, buffer
    and latents by store URI and the datasets' manifest digests); a missing, extra or incomplete record, or
    a dataset whose manifest changed since it was recorded, fails the task before any training."""
    from polydistill_kfp.components import runtime as rt

    from polydistill import config as C
    from polydistill import stages as S
    from polydistill.distill import distill as run_distill
    from polydistill.tracking import StageRun

    rt.setup(minio_endpoint, in_loop=True)  # the students' loop: two students share the machine
    cfg = C.from_dict("distill", {**config, "source": source})
    with (
        rt.work_dir(rt.data_uri(run_root, "work/distill", source)) as work,
        StageRun(tracking_uri, parent_run_id, S.DISTILL, source, experiment=experiment) as run,
    ):
        # Inside the stage run, so a refusal is recorded as this task's failure on the parent run.
        records = rt.check_game_records(list(games), list(game_records))
        kind = "latents" if cfg.source == "latent" else "buffer"
        for game, r in records.items():
            if rt.manifest_digest(r[kind]) != r[f"{kind}_sha256"]:
                raise ValueError(f"the {kind} dataset of {game} at {r[kind]} changed after it was recorded "
                                 f"(manifest sha256 differs); rerun the pipeline")
        dataset_uris = {game: r[kind] for game, r in records.items()}
        teacher_dirs = {game: str(rt.fetch_dir(r["teacher"])) for game, r in records.items()}
        run.log_inputs([rt.dataset_ref("latents" if kind == "latents" else "buffer", r[kind], game,
                                       r[f"{kind}_sha256"]) for game, r in records.items()])
        run.log_config({**cfg.model_dump(mode="json"), "datasets": dataset_uris,
                        "dataset_sha256": {g: r[f"{kind}_sha256"] for g, r in records.items()}})
        res = run_distill(teacher_dirs, dataset_uris, cfg, work.path,
                          on_metrics=rt.chain(run, work.maybe_sync))
        rt.copy_dir(res.checkpoint_dir, student.path)
        rt.write_html(curves.path, f"student ({source}): loss and agreement per game", [res.curves_png])
        summary = {
            "samples_per_second": res.samples_per_second,
            "parameters": res.parameters,
            **{f"agreement/{g}": v for g, v in res.agreement.items()},
            **{f"final_loss/{g}": v for g, v in res.final_loss.items()},
        }
        run.log_metrics(summary, res.steps)
        run.log_artifact(res.curves_png)
        run.log_artifact(res.curves_csv)
        rt.log_checkpoint(run, res.checkpoint_dir, "student")
    rt.log_scalars(metrics, {k.replace("/", "_"): v for k, v in summary.items()})
    # The report task registers the student from this run (register_student needs the run that logged it).
    student.metadata.update({"games": sorted(teacher_dirs), "source": source, "parameters": res.parameters,
                             "mlflow_run_id": run.run_id or ""})
