"""Glue shared by the component bodies, imported inside them at run time (never imports kfp).

A KFP lightweight component runs only its function's source, so helpers must be importable in the step's
environment: the project image installs ``polydistill_kfp`` together with the library, and the local runner
uses the editable install. Everything here is plumbing between KFP and the library: the step's process
(:func:`setup`), the skeleton every stage task shares (:func:`stage_task`: its MLflow child run, its
working directory, its config logged) and copying outputs into artifacts. The store protocol (mirrored
working directories, published checkpoints, their index: :mod:`polydistill.mirror`) and a pipeline run's
layout and game records (:mod:`polydistill.run_layout`) are the library's; the names below re-export them
for the component bodies.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# fetch_file, fetch_source: re-exported for train-teacher (rt.fetch_file in pipelines compiled before fetch_source)
from polydistill.mirror import (
    INDEX_KEY,
    SYNC_SECONDS_ENV,
    WorkDir,
    fetch_dir,
    publish_dir,
    work_dir,
)
from polydistill.mirror import fetch_file as fetch_file
from polydistill.mirror import fetch_source as fetch_source
from polydistill.progress import MetricsCallback
from polydistill.run_layout import (
    GAME_RECORD_FIELDS,
    KUBEFLOW_BUCKET,
    STORE_URI_ENV,
    check_game_records,
    check_recorded_datasets,
    data_uri,
    dataset_ref,
    default_store_uri,
    game_record,
    run_root,
    teacher_lineage,
)

__all__ = [
    "GAME_RECORD_FIELDS", "INDEX_KEY", "KUBEFLOW_BUCKET", "LOOP_THREADS_ENV", "STORE_URI_ENV", "SYNC_SECONDS_ENV",
    "StageTask", "WorkDir", "chain", "check_game_records", "check_recorded_datasets", "copy_dir", "copy_file",
    "data_uri", "dataset_ref", "default_store_uri", "fetch_dir", "find_pipeline_run", "finite", "game_record",
    "log_checkpoint", "log_scalars", "publish_dir", "run_root", "setup", "stage_task", "teacher_lineage",
    "work_dir", "write_html", "write_json",
]

log = logging.getLogger("polydistill.pipeline")

#: torch threads for a task inside the per-game loop. Set by the local runner, whose loop iterations run at once
#: on one machine while its top-level tasks run one at a time; unset on a cluster (each pod has its CPU request).
LOOP_THREADS_ENV = "POLYDISTILL_LOOP_THREADS"


def setup(minio_endpoint: str = "", in_loop: bool = False) -> None:
    """Prepare a step's process: log lines to stdout (KFP shows them), the S3 endpoint from the parameter, and
    for a task of the per-game loop (``in_loop``) its share of the cores when ``POLYDISTILL_LOOP_THREADS`` says.

    An empty ``minio_endpoint`` keeps ``MINIO_ENDPOINT`` from the environment (on a cluster: the
    ``polydistill-config`` ConfigMap).
    """
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("POLYDISTILL_PROGRESS", "log")
    if minio_endpoint:
        os.environ["MINIO_ENDPOINT"] = minio_endpoint
    threads = os.environ.get(LOOP_THREADS_ENV, "").strip() if in_loop else ""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        log.info("torch threads: %s (this machine's share for one game's task)", threads)


def chain(*callbacks: MetricsCallback | None) -> MetricsCallback:
    """One ``on_metrics(metrics, step)`` callback calling each of ``callbacks`` in turn."""
    live = [c for c in callbacks if c is not None]

    def call(metrics: dict[str, float], step: int) -> None:
        for c in live:
            c(metrics, step)

    return call


class StageTask:
    """One stage's task inside a component (built by :func:`stage_task`): its resolved config ``cfg``, its
    MLflow child run ``run`` (a ``polydistill.tracking.StageRun``) and, for a training stage, its working
    directory ``work``, mirrored to the store while it trains."""

    def __init__(self, cfg: Any, run: Any, work: WorkDir | None) -> None:
        self.cfg, self.run, self.work = cfg, run, work

    @property
    def path(self) -> Path:
        """The working directory the stage's library function trains in (a training stage only)."""
        if self.work is None:
            raise RuntimeError("this stage task has no working directory (not a training stage)")
        return self.work.path

    @property
    def on_metrics(self) -> MetricsCallback:
        """The training function's ``on_metrics``: metrics to the child run, and the working directory mirrored
        when its interval has passed."""
        return chain(self.run, self.work.maybe_sync if self.work is not None else None)

    def keep_model(self, checkpoint_dir: str | Path, model: Any, name: str, page: Any, title: str,
                   images: Sequence[str | Path], artifacts: Sequence[str | Path]) -> None:
        """A trained network's outputs: the checkpoint into the ``Output[Model]`` ``model``, a page of
        ``images`` into the ``Output[HTML]`` ``page``, ``artifacts`` and the network (as MLflow model ``name``)
        on the child run."""
        copy_dir(checkpoint_dir, model.path)
        write_html(page.path, title, images)
        for path in artifacts:
            self.run.log_artifact(path)
        log_checkpoint(self.run, checkpoint_dir, name)

    def keep_dataset(self, manifest: Any, dataset: Any, metrics: Any, game: str, uri: str,
                     **extra: float) -> dict[str, float]:
        """A written dataset's outputs: its figures (and ``extra``) on the child run and the ``Output[Metrics]``
        ``metrics``, a copy of its ``manifest`` and its ``uri`` in the ``Output[Dataset]`` ``dataset`` (its
        metadata names the game, URI and codec). Returns the figures."""
        summary = {"steps": manifest.num_steps, "valid_states": manifest.num_valid_states,
                   "total_bytes": manifest.total_bytes, "bytes_per_state": manifest.bytes_per_state, **extra}
        self.run.log_metrics(summary, manifest.num_steps)
        log_scalars(metrics, summary)
        write_json(dataset.path, {"uri": uri, "manifest": json.loads(manifest.to_json())})
        dataset.metadata.update({"game": game, "uri": uri, "codec": manifest.codec, **finite(summary)})
        return summary


@contextlib.contextmanager
def stage_task(stage: str, name: str, config: Mapping[str, Any] | None, *, tracking_uri: str, parent_run_id: str,
               experiment: str, run_root: str = "", minio_endpoint: str = "", in_loop: bool = True,
               log_config: bool | Mapping[str, Any] = True) -> Iterator[StageTask]:
    """The skeleton every stage's component shares: prepare the process (:func:`setup`), validate ``config``
    as the stage's config model (``stages.CONFIG``; before anything is opened), open a training stage's
    working directory ``RUN_ROOT/work/<config>/NAME`` (restored from an earlier attempt, mirrored on failure:
    :func:`polydistill.mirror.work_dir`), then its MLflow child run ``STAGE/NAME`` under ``parent_run_id``
    (inside it, so a failure is recorded as this task's), and log the config there (``log_config``: True, or
    extra entries to log with it; False: the body logs its own).
    """
    from polydistill import config as C
    from polydistill import stages as S
    from polydistill.tracking import StageRun

    setup(minio_endpoint, in_loop=in_loop)
    key = S.CONFIG.get(stage, "")
    cfg = C.from_dict(key, config) if config is not None else None
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(work_dir(data_uri(run_root, f"work/{key}", name))) if stage in S.TRAINING else None
        run = stack.enter_context(StageRun(tracking_uri, parent_run_id, stage, name, experiment=experiment))
        if log_config is not False and cfg is not None:
            run.log_config({**cfg.model_dump(mode="json"), **(log_config if isinstance(log_config, Mapping) else {})})
        yield StageTask(cfg, run, work)


def copy_dir(src: str | Path, dest: str | Path) -> Path:
    """Copy the directory ``src`` to ``dest`` (an output artifact's path), creating it."""
    dest = Path(dest)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def copy_file(src: str | Path, dest: str | Path) -> Path:
    """Copy the file ``src`` to ``dest`` (an output artifact's path), creating its directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def write_html(path: str | Path, title: str, images: Sequence[str | Path] = (), body: str = "") -> None:
    """A self-contained HTML page (PNG images inlined) for an ``Output[HTML]``: the Kubeflow UI shows it."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>",
             f"<body><h2>{html.escape(title)}</h2>", body]
    for img in images:
        p = Path(img)
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{html.escape(p.name)}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts))


def finite(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values``: artifact metadata is a protobuf Struct, which rejects NaN and inf
    (a teacher that finished no episode has a NaN mean return)."""
    import math

    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def log_scalars(metrics_artifact: Any, values: dict[str, Any]) -> None:
    """Record the finite numbers of ``values`` on an ``Output[Metrics]`` (shown in the Kubeflow UI)."""
    for name, value in finite(values).items():
        metrics_artifact.log_metric(name, value)


def log_checkpoint(run: Any, checkpoint_dir: str | Path, name: str) -> str | None:
    """Log the network saved in ``checkpoint_dir`` to the MLflow stage ``run`` as model ``name``.

    MLflow's pt2 format traces the network, so it gets an input example: two blank uint8 states. A latent
    student is logged as it plays, through the autoencoders it carries (``StudentAgent.export_module``):
    one block of Q-values per game, whose columns ``metadata["game_columns"]`` gives.
    """
    if not run.active:  # tracking is off (MLflow unreachable): do not load the network for nothing
        return None
    import numpy as np

    from polydistill.checkpoint import load_checkpoint, read_metadata
    from polydistill.latent_input import METADATA_KEY

    if read_metadata(checkpoint_dir).get(METADATA_KEY):
        from polydistill.agents import StudentAgent, load_agent

        agent = load_agent(checkpoint_dir)  # loads the student once, with the autoencoders it carries
        assert isinstance(agent, StudentAgent)
        model, columns = agent.export_module()
        meta = {**agent.metadata, "game_columns": columns,
                "output": "each game's Q-values (on its autoencoder's reconstruction) concatenated along dim 1; "
                          "game_columns[GAME] = [start, end)"}
    else:
        model, meta = load_checkpoint(checkpoint_dir)
    obs = meta.get("observation") or {}
    shape = (2, int(obs.get("frame_stack", 4)), *[int(x) for x in obs.get("frame_shape", (84, 84))])
    return run.log_model(model, name, meta, np.zeros(shape, dtype=np.uint8))


def find_pipeline_run(tracking_uri: str, experiment: str, kfp_run_id: str) -> str:
    """The MLflow parent run of ``kfp_run_id`` ("" when none or MLflow is down): the end-run component's call into
    :func:`polydistill.tracking.find_pipeline_run`, imported here lazily as MLflow is."""
    from polydistill.tracking import find_pipeline_run as find

    return find(tracking_uri, experiment, kfp_run_id)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to an artifact path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))
