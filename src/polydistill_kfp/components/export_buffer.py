"""Component ``export-buffer``: a teacher's recorded experience, with its Q-values, into the object store
(:func:`polydistill.export.export_buffer`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_buffer(
    game: str,
    experience: Input[Dataset],
    teacher: Input[Model],
    config: dict,
    run_root: str,
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    minio_endpoint: str,
    buffer: Output[Dataset],
    metrics: Output[Metrics],
):
    """Write ``experience`` to ``run_root/buffers/GAME`` in the configured codec with ``teacher``'s Q-values.

    ``buffer`` holds a copy of the manifest; its ``metadata["uri"]`` is the dataset's object-store URI.
    """
    from polydistill import stages as S
    from polydistill.export import export_buffer as export
    from polydistill_kfp.components import runtime as rt

    dest = rt.data_uri(run_root, "buffers", game)
    with rt.stage_task(S.EXPORT_BUFFER, game, config, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                       experiment=experiment, minio_endpoint=minio_endpoint) as task:
        manifest = export(experience.path, dest, teacher.path, task.cfg, create_bucket=True)
        task.keep_dataset(manifest, buffer, metrics, game, dest)

