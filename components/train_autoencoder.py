"""Component ``train-autoencoder``: a per-game autoencoder over a buffer's states
(:func:`polydistill.autoencoder.train_autoencoder`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_autoencoder(
    game: str,
    buffer: Input[Dataset],
    teacher: Input[Model],
    config: dict,
    run_root: str,
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    minio_endpoint: str,
    autoencoder: Output[Model],
    grid: Output[HTML],
    metrics: Output[Metrics],
):
    """Train on the dataset at ``buffer.metadata["uri"]``; outputs the checkpoint directory, a page with the
    reconstruction grid and the reconstruction metrics (MSE, PSNR, changed-pixel error, the teacher's
    agreement on reconstructions, ...). ``teacher`` gives that metric and the teacher-feature loss term."""
    from polydistill_kfp.components import runtime as rt

    from polydistill import config as C
    from polydistill import stages as S
    from polydistill.autoencoder import train_autoencoder as train
    from polydistill.tracking import StageRun

    rt.setup(minio_endpoint, in_loop=True)
    cfg = C.from_dict("autoencoder", config)
    with (
        rt.work_dir(rt.data_uri(run_root, "work/autoencoder", game)) as work,
        StageRun(tracking_uri, parent_run_id, S.TRAIN_AUTOENCODER, game, experiment=experiment) as run,
    ):
        run.log_config(cfg.model_dump(mode="json"))
        run.log_inputs([rt.dataset_ref("buffer", buffer.metadata["uri"], game)])
        res = train(
            buffer.metadata["uri"],
            cfg,
            work.path,
            on_metrics=rt.chain(run, work.maybe_sync),
            teacher=teacher.path,
        )
        rt.copy_dir(res.checkpoint_dir, autoencoder.path)
        rt.write_html(grid.path, f"{game}: originals and reconstructions", [res.grid_png, res.loss_png])
        run.log_artifact(res.grid_png)
        run.log_artifact(res.history_csv)
        run.log_artifact(res.loss_png)
        rt.log_checkpoint(run, res.checkpoint_dir, "autoencoder")
    rt.log_scalars(metrics, res.metrics)
    autoencoder.metadata.update({"game": game, **rt.finite(res.metrics)})
