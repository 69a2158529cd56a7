"""Component ``train-teacher``: a Dueling Double DQN teacher for one game
(:func:`polydistill.teacher.train_teacher`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_teacher(
    game: str,
    config: dict,
    run_root: str,
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    minio_endpoint: str,
    teacher: Output[Model],
    experience: Output[Dataset],
    curve: Output[HTML],
    metrics: Output[Metrics],
    warm_starts: dict = {},  # noqa: B006 - KFP reads the default from the signature; {} = no warm start
    import_config: dict = {},  # noqa: B006 - the resolved import config; {} or no entry for game = train
):
    """Train a teacher on ``game`` with the resolved teacher ``config`` (its ``game_steps`` entry for ``game``,
    if any, as ``total_steps``: what the stage run logs).

    Outputs: ``teacher`` (checkpoint directory, also published to ``run_root/teachers/GAME`` for the students:
    ``metadata["store_uri"]``), ``experience`` (the recorded dataset directory, exported to
    the object store by ``export-buffer``), ``curve`` (learning curve page) and ``metrics``. The working
    directory lives under ``run_root/work/teacher/GAME`` so a retried task resumes from its last checkpoint.

    ``warm_starts`` maps a game to the teacher checkpoint it starts from (``polydistill.warm_start.plan``:
    the champion's pipeline run's teacher, by store URI and digest); a game it lacks starts from scratch.
    The source is verified and tagged on the stage run (``polydistill.warm_start.*``).

    A game named in ``import_config["teachers"]`` (game -> checkpoint path or store URI) is not trained: its
    SB3 or CleanRL checkpoint, or polydistill teacher directory, is imported and records its states with this
    task's teacher config (``polydistill.teacher_import``, ``ImportConfig.recording_for``); the outputs are the
    same.
    """
    from polydistill import config as C
    from polydistill import stages as S
    from polydistill.teacher import train_teacher as train
    from polydistill.teacher_import import import_teacher
    from polydistill.tracking import names as N
    from polydistill.warm_start import verify
    from polydistill_kfp.components import runtime as rt

    imported = ((import_config or {}).get("teachers") or {}).get(game)
    config = C.from_dict("teacher", config).for_game(game).model_dump(mode="json")  # the game's own budget
    with rt.stage_task(S.TRAIN_TEACHER, game, config, run_root=run_root, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, experiment=experiment, minio_endpoint=minio_endpoint,
                       log_config=not imported) as task:
        source = None if imported else (warm_starts or {}).get(game)
        if imported:
            # An imported teacher records its states with this task's teacher config (ImportConfig.recording_for).
            icfg = C.from_dict("import", import_config).recording_for(task.cfg)
            task.run.log_config(icfg.model_dump(mode="json"))
            task.run.set_tags({N.TAG_IMPORTED_FROM: imported})
            res = import_teacher("auto", rt.fetch_source(imported), game, icfg, task.path / "imported")
        else:
            init = verify(source, rt.fetch_dir(source["uri"])) if source else None
            if source:
                task.run.set_tags({N.TAG_WARM_SOURCE_RUN: source["source_run_id"], N.TAG_WARM_SHA256: source["sha256"],
                                   N.TAG_WARM_CHECKPOINT: source["uri"], N.TAG_WARM_VERSION: source["model_version"]})
            res = train(game, task.cfg, task.path, on_metrics=task.on_metrics, init_from=init)
        store_uri = rt.publish_dir(res.checkpoint_dir, rt.data_uri(run_root, "teachers", game))
        rt.copy_dir(res.out_dir / "dataset", experience.path)
        summary = {"steps": res.steps, "episodes": res.episodes, "final_return_mean": res.final_return_mean}
        rt.log_scalars(metrics, summary)
        task.run.log_metrics({"final_return_mean": res.final_return_mean}, res.steps)
        task.keep_model(res.checkpoint_dir, teacher, "teacher", curve, f"{game}: teacher learning curve",
                        [res.curve_png], [res.curve_png, res.curve_csv])
    teacher.metadata.update({"game": game, "store_uri": store_uri, **rt.finite(summary),
                             "warm_start": source["uri"] if source else ""})
    experience.metadata.update({"game": game, "uri": experience.uri, "steps": task.cfg.record_steps})
    teacher.metadata["imported_from"] = imported or ""
