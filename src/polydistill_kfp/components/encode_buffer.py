"""Component ``encode-buffer``: a buffer encoded to a latent dataset with its game's autoencoder
(:func:`polydistill.encode.encode_buffer`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def encode_buffer(
    game: str,
    buffer: Input[Dataset],
    autoencoder: Input[Model],
    teacher: Input[Model],
    autoencoder_config: dict,
    export_config: dict,
    run_root: str,
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    minio_endpoint: str,
    latents: Output[Dataset],
    metrics: Output[Metrics],
) -> dict:
    """Write the latent dataset to ``run_root/latents/GAME`` (code precision from the autoencoder config,
    shard size and Q precision from the export config); ``latents.metadata["uri"]`` is its URI.

    Returns the game's record for the students (``run_layout.game_record``: teacher, buffer and latents by
    store URI, with the datasets' manifest digests), a parameter because parameters cross DAG boundaries
    whole where list-typed artifacts do not (kubeflow/pipelines#13900)."""
    from polydistill import config as C
    from polydistill import stages as S
    from polydistill.encode import encode_buffer as encode
    from polydistill_kfp.components import runtime as rt

    cfg = C.pipeline_encode_config(autoencoder_config, export_config)
    dest = rt.data_uri(run_root, "latents", game)
    settings = cfg.model_dump(include={"code_dtype", "shard_steps", "q_dtype"})
    with rt.stage_task(S.ENCODE_BUFFER, game, None, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                       experiment=experiment, minio_endpoint=minio_endpoint) as task:
        task.run.log_config({"source": buffer.metadata["uri"], "dest": dest, **settings})
        manifest = encode(buffer.metadata["uri"], autoencoder.path, teacher.path, dest, cfg, create_bucket=True)
        task.keep_dataset(manifest, latents, metrics, game, dest,
                          code_bytes_per_state=manifest.source["code_bytes_per_state"])
    return rt.game_record(game, teacher.metadata["store_uri"], buffer.metadata["uri"], dest)
