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
    from polydistill import stages as S
    from polydistill.autoencoder import train_autoencoder as train
    from polydistill_kfp.components import runtime as rt

    with rt.stage_task(S.TRAIN_AUTOENCODER, game, config, run_root=run_root, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, experiment=experiment, minio_endpoint=minio_endpoint) as task:
        task.run.log_inputs([rt.dataset_ref("buffer", buffer.metadata["uri"], game)])
        res = train(buffer.metadata["uri"], task.cfg, task.path, on_metrics=task.on_metrics, teacher=teacher.path)
        task.keep_model(res.checkpoint_dir, autoencoder, "autoencoder", grid, f"{game}: originals and reconstructions",
                        [res.grid_png, res.loss_png], [res.grid_png, res.history_csv, res.loss_png])
    rt.log_scalars(metrics, res.metrics)
    autoencoder.metadata.update({"game": game, **rt.finite(res.metrics)})
