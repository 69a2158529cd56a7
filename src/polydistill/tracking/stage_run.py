"""MLflow tracking: child (stage) runs."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import tempfile
import time
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..redaction import is_text_file
from .connection import (
    _check_reachable,
    _client,
    _experiment_id,
    _global_tracking_uri,
    _warn_failure,
)
from .names import (
    _INHERITED_TAGS,
    _MAX_KEY_LEN,
    DEFAULT_EXPERIMENT,
    STAGE_KIND,
    TAG_ERROR,
    TAG_FAILED_TASK,
    TAG_GAME,
    TAG_KIND,
    TAG_PARENT,
    TAG_STAGE,
)
from .params import (
    _clean_name,
    _clean_tags,
    _sanitize_json,
    _secret_values,
    flatten_params,
    redact_text,
)
from .pipeline_runs import (
    _log_params_batched,
    _log_tags_batched,
    one_line_error,
)

logger = logging.getLogger(__package__)

def _all_heads(model: Any) -> Any:
    """A module exporting every head of a multi-head Q-network, concatenated along dim 1: pt2 traces one
    call signature, and ``forward(x, head=0)`` would otherwise export head 0 only."""
    import torch
    from torch import nn

    class AllHeadsQ(nn.Module):
        def __init__(self, net: Any) -> None:  # a teacher QNetwork
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.net.torso(x)
            return torch.cat([head(features) for head in self.net.heads], dim=1)

    return AllHeadsQ(model)


class StageRun:
    """One task of the pipeline as an MLflow child run; a no-op after the first MLflow failure.

    Use as a context manager; the run ends FINISHED, or FAILED when the block raises (the exception is not
    swallowed)::

        with StageRun(uri, parent_id, "train-teacher", "Pong", experiment="polydistill") as run:
            run.log_config(cfg)
            train_teacher(..., on_metrics=run.log_metrics)
            run.log_model(model, "teacher", metadata, input_example=states[:2])

    Args:
        tracking_uri: from :func:`resolve_tracking_uri`.
        parent_run_id: the pipeline's parent run (:func:`start_pipeline_run`); None or "" starts a
            top-level run (a stage run from the CLI).
        stage: stage name as in the CLI and the DAG (``train-teacher``, ``distill``, ``evaluate``).
        game: the game, or for stages over all games a qualifier such as the data source (``subset``);
            the run is named ``stage/game``, or ``stage`` when None.
        experiment: experiment name, used only without a parent (a child lives in its parent's experiment).
        tags: extra run tags.
    """

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str | None,
        stage: str,
        game: str | None = None,
        experiment: str | None = DEFAULT_EXPERIMENT,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id or None
        self.stage = stage
        self.game = game
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.run_name = f"{stage}/{game}" if game else stage
        self._extra_tags = dict(tags or {})
        self._client: Any = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._disabled = False
        self._warned = False
        self._params: dict[str, str] = {}
        self._warned_metrics: set[str] = set()

    # -- lifecycle

    @property
    def run_id(self) -> str | None:
        """The child run's id, or None before :meth:`start` or when tracking is off."""
        return self._run_id

    @property
    def _rid(self) -> str:
        """The run id, for calls made only while the run is active."""
        assert self._run_id is not None
        return self._run_id

    @property
    def active(self) -> bool:
        """Whether calls still reach MLflow (False after a failure)."""
        return self._run_id is not None and not self._disabled

    def start(self) -> StageRun:
        """Create the run (idempotent)."""
        if self._run_id is not None or self._disabled:
            return self
        self._guard("starting the stage run", self._start)
        return self

    def _start(self) -> None:
        _check_reachable(self.tracking_uri)
        client = _client(self.tracking_uri)
        secrets = _secret_values()
        tags: dict[str, Any] = {TAG_KIND: STAGE_KIND, TAG_STAGE: self.stage}
        if self.game:
            tags[TAG_GAME] = self.game
        if self.parent_run_id:
            parent = client.get_run(self.parent_run_id)
            exp_id = parent.info.experiment_id
            tags.update({k: parent.data.tags[k] for k in _INHERITED_TAGS if k in parent.data.tags})
            tags[TAG_PARENT] = self.parent_run_id
        else:
            exp_id = _experiment_id(client, self.tracking_uri, self.experiment)
        tags.update(self._extra_tags)
        run = client.create_run(exp_id, run_name=self.run_name, tags=_clean_tags(tags, secrets))
        self._client, self._experiment_id, self._run_id = client, exp_id, run.info.run_id

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED)."""
        self._call("ending the stage run", lambda: self._client.set_terminated(self._run_id, status=status))

    def __enter__(self) -> StageRun:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
            if exc is not None:
                self.record_failure(exc)
        self.end(status)

    def record_failure(self, exc: BaseException) -> None:
        """Tag this run, and its parent unless an earlier stage already did, with this stage's name and the
        error on one line: what ``end-run`` reports for a failed pipeline run."""
        error = one_line_error(exc)

        def tag() -> None:
            self._client.set_tag(self._run_id, TAG_ERROR, error)
            if self.parent_run_id:
                parent = self._client.get_run(self.parent_run_id)
                if TAG_FAILED_TASK not in parent.data.tags:
                    _log_tags_batched(self._client, self.parent_run_id,
                                      {TAG_FAILED_TASK: self.run_name, TAG_ERROR: error})

        self._call("recording the stage's failure", tag)

    # -- error handling

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; on any error warn once (naming the tracking URI), then disable tracking."""
        if self._disabled:
            return None
        try:
            return fn()
        except Exception as e:
            self._disabled = True
            if not self._warned:
                self._warned = True
                _warn_failure(
                    self.tracking_uri,
                    f"{what} ({self.run_name})",
                    e,
                    "MLflow tracking is off for the rest of this stage; the stage goes on and its outputs "
                    "still land in the object store",
                )
            return None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if self._run_id is None:
            self.start()
        if not self.active:
            return None
        return self._guard(what, fn)

    # -- logging

    def log_config(self, cfg: Mapping[str, Any] | Any, prefix: str = "") -> None:
        """Log a (nested) config as params with dotted keys; credentials are dropped or redacted.

        A key already logged with the same value is skipped; one logged with a different value (MLflow
        params are immutable) is kept and the new value logged as tag ``param_conflict.<key>``.
        """
        flat = flatten_params(cfg, prefix)
        new = {k: v for k, v in flat.items() if k not in self._params}
        conflicts = {
            f"param_conflict.{k}"[:_MAX_KEY_LEN]: v
            for k, v in flat.items()
            if k in self._params and self._params[k] != v
        }

        def do() -> None:
            _log_params_batched(self._client, self._rid, new)
            if conflicts:
                _log_tags_batched(self._client, self._rid, conflicts)
            self._params.update(new)

        self._call("logging the config", do)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (credential keys dropped, values redacted)."""
        clean = _clean_tags(tags, _secret_values())
        self._call("setting tags", lambda: _log_tags_batched(self._client, self._rid, clean))

    def log_inputs(self, datasets: Sequence[Any]) -> None:
        """Log the datasets this task trained on (:class:`polydistill.tracking.lineage.DatasetRef`) as MLflow
        dataset inputs: the UI's Dataset column and the model's lineage name the exact buffers."""
        from .lineage import dataset_inputs

        self._call("logging dataset inputs",
                   lambda: self._client.log_inputs(self._run_id, datasets=dataset_inputs(datasets)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at ``step`` (the ``on_metrics(metrics, step)`` callback shape).

        Non-numeric and non-finite values (NaN, inf) are skipped with one warning per key, so a diverging
        loss never breaks logging; keys MLflow would reject are cleaned (odd characters become ``_``).
        """
        if self._disabled:  # cheap exit: a training loop calls this thousands of times
            return
        ts = int(time.time() * 1000)
        items: list[tuple[str, float]] = []
        for key, value in metrics.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            name = _clean_name(str(key))
            if not math.isfinite(v):
                if name not in self._warned_metrics:
                    self._warned_metrics.add(name)
                    logger.warning(
                        "metric %s of %s is %s at step %d; non-finite values are not sent to MLflow",
                        name, self.run_name, v, step,
                    )
                continue
            items.append((name, v))
        if not items:
            return

        def do() -> None:
            from mlflow.entities import Metric

            batch = [Metric(k, v, ts, int(step)) for k, v in items]
            for i in range(0, len(batch), 1000):
                self._client.log_batch(self._run_id, metrics=batch[i : i + 1000])

        self._call("logging metrics", do)

    __call__ = log_metrics  # a StageRun is itself an on_metrics callback

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory into the run's artifacts (under ``artifact_path``).

        Text files (json, yaml, md, html, csv, txt, ...) containing a credential value are uploaded as a
        redacted copy.
        """
        path = Path(path)

        def do() -> None:
            with tempfile.TemporaryDirectory(prefix="polydistill-mlflow-") as tmp:
                src = _redacted_copy(path, Path(tmp))
                if src.is_dir():
                    self._client.log_artifacts(self._run_id, str(src), artifact_path)
                else:
                    self._client.log_artifact(self._run_id, str(src), artifact_path)

        if not path.exists():
            logger.warning("artifact %s does not exist; not logged to MLflow", path)
            return
        self._call(f"uploading {path.name}", do)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """Log a JSON/YAML-able dict as an artifact file (credentials dropped or redacted)."""
        clean = _sanitize_json(obj, _secret_values())
        self._call(
            f"logging {artifact_file}", lambda: self._client.log_dict(self._run_id, clean, artifact_file)
        )

    def log_model(
        self,
        model: Any,
        name: str,
        metadata: Mapping[str, Any] | None,
        input_example: Any,
    ) -> str | None:
        """Log a torch model with ``mlflow.pytorch.log_model`` in the pt2 format; returns its model URI.

        Args:
            model: the network (any device; a CPU copy in eval mode is exported). A network with several
                heads (a multi-task student) is exported with all heads' Q-values concatenated along dim 1;
                ``metadata["heads"]`` then lists ``[start, end)`` per head.
            name: the model's name in the run (``teacher``, ``autoencoder``, ``student``).
            metadata: checkpoint metadata (see docs/CONTRACTS.md); stored in the MLmodel file, as
                ``metadata.json`` beside the model, and in the run's artifacts at ``<name>/metadata.json``.
            input_example: a uint8 array of states, shape (B, frame_stack, 84, 84). Required by pt2 (it
                traces the graph with it); a batch of 1 is repeated to 2 so the exported batch dimension
                stays dynamic.

        Returns:
            ``models:/<model_id>`` or None when tracking is off or logging failed.
        """
        return self._call(
            f"logging model {name!r}", lambda: self._log_model(model, name, metadata, input_example)
        )

    def _log_model(
        self, model: Any, name: str, metadata: Mapping[str, Any] | None, input_example: Any
    ) -> str:
        import mlflow
        import torch

        secrets = _secret_values()
        meta = _sanitize_json(dict(metadata or {}), secrets)
        if isinstance(input_example, torch.Tensor):
            input_example = input_example.detach().cpu().numpy()
        example = np.asarray(input_example)
        if example.ndim >= 1 and example.shape[0] == 1:
            example = np.concatenate([example, example], axis=0)
        net = copy.deepcopy(model).cpu().eval()
        heads = getattr(net, "heads", None)
        if isinstance(heads, torch.nn.ModuleList) and len(heads) > 1 and hasattr(net, "num_actions"):
            sizes = [int(a) for a in net.num_actions]
            bounds = np.cumsum([0, *sizes]).tolist()
            meta["heads"] = [[bounds[i], bounds[i + 1]] for i in range(len(sizes))]
            meta["output"] = "Q-values of all heads concatenated along dim 1; heads[i] = [start, end)"
            net = _all_heads(net).eval()
        client = self._client
        logged = client.create_logged_model(self._experiment_id, name=name, source_run_id=self._run_id)
        torch_version = torch.__version__.split("+", 1)[0]  # MLflow strips local labels (+cpu) anyway
        with _global_tracking_uri(self.tracking_uri), torch.no_grad():
            info = mlflow.pytorch.log_model(
                net,
                name=name,
                input_example=example,
                serialization_format="pt2",
                metadata=meta,
                # Explicit requirements: skips MLflow's requirement inference (loads the model in a
                # subprocess, tens of seconds) and the pt2 graph needs torch only.
                pip_requirements=[f"torch=={torch_version}", f"numpy=={np.__version__}"],
                run_id=self._run_id,
                model_id=logged.model_id,
            )
        with tempfile.TemporaryDirectory(prefix="polydistill-mlflow-") as tmp:
            meta_file = Path(tmp) / "metadata.json"
            meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            client.log_model_artifact(logged.model_id, str(meta_file))
            client.log_artifact(self._run_id, str(meta_file), name)
        return info.model_uri


def _redact_stream(src: Path, dst: Path | None, secrets: Sequence[str]) -> bool:
    """Redact ``src`` line by line (bytes kept as they are, via surrogateescape) into ``dst``, or only scan
    it when ``dst`` is None; returns whether any line changed. Streams, so file size does not matter."""
    changed = False
    with contextlib.ExitStack() as stack:
        fin = stack.enter_context(open(src, encoding="utf-8", errors="surrogateescape", newline=""))
        fout = (
            stack.enter_context(open(dst, "w", encoding="utf-8", errors="surrogateescape", newline=""))
            if dst is not None
            else None
        )
        for line in fin:
            clean = redact_text(line, secrets)
            changed = changed or clean != line
            if fout is not None:
                fout.write(clean)
            elif changed:
                return True
    return changed


def _redacted_copy(path: Path, tmp: Path) -> Path:
    """``path`` itself, or a copy under ``tmp`` with credential values in its text files redacted.

    Every file is sniffed for text by content (no NUL byte, valid UTF-8 in its first 8 KiB), whatever its
    name (``stderr.txt.1``, ``run.log.gz``-named text, no suffix at all); text files of any size are
    scanned. Binary files (weights, images) are uploaded as they are.
    """
    secrets = _secret_values()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    dirty = [p for p in files if is_text_file(str(p)) and _redact_stream(p, None, secrets)]
    if not dirty:
        return path
    out = tmp / path.name
    if path.is_file():
        _redact_stream(path, out, secrets)
        return out
    import shutil

    shutil.copytree(path, out, symlinks=True)
    for p in dirty:
        _redact_stream(p, out / p.relative_to(path), secrets)
    return out


