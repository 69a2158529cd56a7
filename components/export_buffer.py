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
    import json

    from polydistill_kfp.components import runtime as rt

    from polydistill import config as C
    from polydistill import stages as S
    from polydistill.export import export_buffer as export
    from polydistill.tracking import StageRun

    rt.setup(minio_endpoint, in_loop=True)
    cfg = C.from_dict("export", config)
    dest = rt.data_uri(run_root, "buffers", game)
    with StageRun(tracking_uri, parent_run_id, S.EXPORT_BUFFER, game, experiment=experiment) as run:
        run.log_config(cfg.model_dump(mode="json"))
        manifest = export(experience.path, dest, teacher.path, cfg, create_bucket=True)
        summary = {
            "steps": manifest.num_steps,
            "valid_states": manifest.num_valid_states,
            "total_bytes": manifest.total_bytes,
            "bytes_per_state": manifest.bytes_per_state,
        }
        run.log_metrics(summary, manifest.num_steps)
    rt.log_scalars(metrics, summary)
    rt.write_json(buffer.path, {"uri": dest, "manifest": json.loads(manifest.to_json())})
    buffer.metadata.update({"game": game, "uri": dest, "codec": manifest.codec, **rt.finite(summary)})

