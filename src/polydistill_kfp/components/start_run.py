"""Component ``start-run``: resolve every stage's config and open the MLflow parent run of a pipeline run.

Its parameters are spelled out in the source, unlike the pipeline's (generated from
``config.PIPELINE_PARAMETERS`` by ``pipeline.pipeline_signature``): in the container KFP runs this function's
source alone and binds the executor input by ``inspect.getfullargspec(func).annotations``
(kfp 2.17 ``kfp/dsl/executor.py``, ``Executor.execute``), so a generated ``__signature__`` would not reach it.
``tests/test_pipeline.py`` keeps the two lists equal.
"""

from typing import NamedTuple

from kfp import dsl

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_run(
    profile: str,
    games: list,
    store_uri: str,
    tracking_uri: str,
    experiment: str,
    kfp_run_id: str,
    teacher_steps: int,
    teacher_game_steps: dict,
    teacher_num_envs: int,
    record_steps: int,
    teacher_learning_rate: float,
    codec: str,
    latent_dim: int,
    autoencoder_epochs: int,
    autoencoder_loss: str,
    autoencoder_teacher_weight: float,
    code_dtype: str,
    distill_loss: str,
    tau: float,
    actions: str,
    student_width: float,
    student_init: str,
    subset_fraction: float,
    distill_steps: int,
    eval_protocol: str,
    eval_episodes: int,
    eval_cycles: int,
    eval_cycle_steps: int,
    warm_start: str,
    seeds: str,
    keep_runs: int,
    teachers: dict,
    # tracking.names.REGISTERED_MODEL: KFP runs this function's source alone, so its default is a literal
    # (tests/test_pipeline.py checks that they agree).
    registered_model: str = "polydistill-student",
) -> NamedTuple(  # type: ignore[valid-type]  # kfp reads outputs from this functional form
    "RunSetup",
    [
        ("games", list),
        ("teacher_config", dict),
        ("export_config", dict),
        ("autoencoder_config", dict),
        ("distill_config", dict),
        ("evaluate_config", dict),
        ("retraining_config", dict),
        ("warm_starts", dict),
        ("import_config", dict),
        ("run_root", str),
        ("tracking_uri", str),
        ("parent_run_id", str),
    ],
):
    """Resolve the stage configs from ``profile`` and the pipeline parameters, and start the parent run.

    Every hyperparameter argument is a pipeline parameter of ``polydistill.config.PIPELINE_PARAMETERS``; its
    sentinel (-1, -1.0 or "") means "the profile's value". ``games`` empty means the profile's games. The
    parent run is tagged with the Kubeflow run id (the local runner gives one too) and the profile; every
    later task opens its child run under ``parent_run_id``.

    Retraining (``retraining`` config): with ``seeds=run`` the training stages' seeds are derived from the
    run id (``config.derive_seeds``); with ``warm_start=champion`` the champion of ``registered_model``
    names each game's starting teacher (``warm_starts``, ``polydistill.warm_start.plan``); the run is added
    to the store's run index (``polydistill.retention``) for ``keep_runs``.

    ``teachers`` (game -> checkpoint URI) names the games whose teacher is imported, not trained
    (``import_config``, read by train-teacher); a game outside the run's games is refused here.
    """
    arguments = dict(locals())  # first statement: exactly the arguments
    import collections
    import logging

    from polydistill import config as C
    from polydistill import retention
    from polydistill import warm_start as warm_starts_of
    from polydistill.envs import canonical_game
    from polydistill.tracking import TrackingError, champion_tags, resolve_tracking_uri, start_pipeline_run
    from polydistill_kfp.components import runtime as rt

    rt.setup()
    params = {name: arguments[name] for name in C.PIPELINE_PARAMETERS}
    configs = C.derive_seeds(C.resolve_pipeline(profile, params), kfp_run_id)
    game_list = list(dict.fromkeys(canonical_game(g) for g in games)) or C.default_games(profile)
    configs["import"]["teachers"] = C.check_teacher_sources(configs["import"]["teachers"], game_list)
    store_uri = store_uri or rt.default_store_uri()
    root = rt.run_root(store_uri, kfp_run_id)
    uri = resolve_tracking_uri(tracking_uri or None, None)  # "" -> $MLFLOW_TRACKING_URI (cluster ConfigMap)
    explicit = {k: v for k, v in params.items()
                if v not in ("", {}) and not (isinstance(v, int | float) and v < 0)}
    log = logging.getLogger("polydistill.pipeline")
    starts: dict = {}
    if configs["retraining"]["warm_start"] == "champion":
        try:
            starts = warm_starts_of.plan(champion_tags(uri, registered_model), game_list)
        except TrackingError as e:
            log.warning("warm start off for this run: %s", e)
        log.info("warm start from the champion: %s", {g: s["uri"] for g, s in starts.items()} or
                 "no champion teacher for these games; every teacher starts from scratch")
    warm = ",".join(f"{g}<-v{s['model_version']}" for g, s in starts.items()) or "none"
    # The resolved stage configs as params give the dotted names `polydistill compare` reads (distill.loss).
    parent = start_pipeline_run(
        uri,
        experiment,
        run_name=f"polydistill-{profile}-{kfp_run_id}",
        tags={"kfp.run_id": kfp_run_id, "profile": profile, "games": game_list, "polydistill.run_root": root,
              "polydistill.warm_start": warm},
        params={"profile": profile, "games": ",".join(game_list), **configs,
                "pipeline": {k: str(v) for k, v in explicit.items()}},
    )
    retention.record_run(store_uri, kfp_run_id, root, game_list)
    log.info("profile %s, games %s, run root %s, MLflow parent run %s", profile, game_list, root, parent)
    for stage, cfg in configs.items():
        log.info("%s config: %s", stage, cfg)
    RunSetup = collections.namedtuple("RunSetup", [
        "games", "teacher_config", "export_config", "autoencoder_config", "distill_config", "evaluate_config",
        "retraining_config", "warm_starts", "import_config", "run_root", "tracking_uri", "parent_run_id",
    ])
    return RunSetup(game_list, configs["teacher"], configs["export"], configs["autoencoder"], configs["distill"],
                    configs["evaluate"], configs["retraining"], starts, configs["import"], root, uri, parent or "")
