"""MLflow tracking: parent (pipeline) runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..redaction import redact_uri
from .connection import (
    _check_reachable,
    _client,
    _experiment_id,
    _warn_failure,
    logger,
)
from .names import (
    _BATCH,
    _CANCELLED_STATES,
    _ERROR_CHARS,
    _SUCCEEDED_STATES,
    DEFAULT_EXPERIMENT,
    PIPELINE_KIND,
    TAG_ERROR,
    TAG_FAILED_TASK,
    TAG_GAMES,
    TAG_KFP_RUN_ID,
    TAG_KIND,
    TAG_PARENT,
    TAG_PROFILE,
)
from .params import (
    _clean_tags,
    _secret_values,
    flatten_params,
    redact_text,
)


def _normalise_pipeline_tags(tags: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(tags)
    if "profile" in out and TAG_PROFILE not in out:
        out[TAG_PROFILE] = out["profile"]
    if "games" in out and TAG_GAMES not in out:
        out[TAG_GAMES] = out["games"]
    for key in (TAG_GAMES, "games"):
        if isinstance(out.get(key), list | tuple):
            out[key] = ",".join(str(g) for g in out[key])
    out[TAG_KIND] = PIPELINE_KIND
    return out


def start_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
) -> str:
    """Create the parent run of one pipeline run and return its id ("" if MLflow is unreachable).

    Args:
        tracking_uri: from :func:`resolve_tracking_uri`.
        experiment: experiment name (created if missing).
        run_name: shown in the MLflow UI, e.g. ``polydistill-smoke-<run id>``.
        tags: should hold ``kfp.run_id``, ``profile`` and ``games`` (a list or comma-separated string;
            ``profile``/``games`` are also written as ``polydistill.profile``/``polydistill.games``).
        params: parameters of the whole run, flattened with dotted keys (pass the resolved stage configs
            ``{"distill": {...}, ...}`` so :func:`compare_runs` finds ``distill.loss`` and friends).
    """
    secrets = _secret_values()
    try:
        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        exp_id = _experiment_id(client, tracking_uri, experiment or DEFAULT_EXPERIMENT)
        run = client.create_run(
            exp_id, run_name=run_name, tags=_clean_tags(_normalise_pipeline_tags(tags), secrets)
        )
        _log_params_batched(client, run.info.run_id, flatten_params(params))
        return run.info.run_id
    except Exception as e:
        _warn_failure(
            tracking_uri, "starting the pipeline run", e, "the pipeline continues without MLflow tracking"
        )
        return ""


def run_outcome(state: str) -> str:
    """The MLflow status of a pipeline run from its final state as either runner reports it: FINISHED for
    the backend's COMPLETE/CACHED and the local runner's SUCCEEDED, KILLED for CANCELED, FAILED otherwise."""
    state = str(state).strip().upper()
    if state in _SUCCEEDED_STATES:
        return "FINISHED"
    if state in _CANCELLED_STATES:
        return "KILLED"
    return "FAILED"


def one_line_error(exc: BaseException | str) -> str:
    """``Type: message`` on one line, secrets redacted, at most a few hundred characters."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(redact_text(str(text), _secret_values()).split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def find_pipeline_run(tracking_uri: str, experiment: str, kfp_run_id: str) -> str:
    """The id of the MLflow parent run tagged ``kfp.run_id=kfp_run_id`` ("" when none or MLflow is down).

    Through the tracking layer's client, whose HTTP retries are bounded (``HTTP_DEFAULTS``: MLflow's own
    defaults retried a killed server for minutes), after a connection check that fails at once. Never raises:
    the exit task that calls it must not fail on tracking."""
    try:
        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return ""
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_KFP_RUN_ID}` = '{kfp_run_id}' and tags.`{TAG_KIND}` = '{PIPELINE_KIND}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else ""
    except Exception as e:  # tracking must never fail a pipeline step
        logger.warning("could not look up the MLflow parent run of %s (%s); its end, outcome and failure tags are "
                       "lost: it stays RUNNING in MLflow", kfp_run_id, redact_uri(" ".join(str(e).split())[:300]))
        return ""


def end_pipeline_run(tracking_uri: str, run_id: str, status: str = "FINISHED", failed_task: str = "",
                     error: str = "") -> dict[str, str]:
    """Mark a parent run ended with ``status`` (FINISHED, FAILED or KILLED); no-op for an empty id.

    A run ending FAILED carries :data:`TAG_FAILED_TASK` and :data:`TAG_ERROR`: the first failing stage sets
    them (:class:`StageRun`); when none did (a pod killed from outside), the stage runs still open or failed
    are named, and else ``failed_task``/``error`` (what the runner's final status says). Returns the failure
    tags the run ends with (empty unless FAILED)."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    if not run_id:
        return {}
    try:
        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        tags: dict[str, str] = {}
        if status == "FAILED":
            parent = client.get_run(run_id)
            tags = {k: parent.data.tags[k] for k in (TAG_FAILED_TASK, TAG_ERROR) if k in parent.data.tags}
            if TAG_FAILED_TASK not in tags:
                stuck = [r.info.run_name for r in client.search_runs(
                    [parent.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{run_id}'",
                    max_results=200) if r.info.status in ("FAILED", "RUNNING", "KILLED")]
                tags = {TAG_FAILED_TASK: ", ".join(sorted(stuck)) or failed_task or "unknown",
                        TAG_ERROR: one_line_error(error or "no stage recorded an error (killed from outside?)")}
                _log_tags_batched(client, run_id, tags)
        client.set_terminated(run_id, status=status)
        return tags
    except Exception as e:
        _warn_failure(tracking_uri, f"ending run {run_id}", e, "the run stays open in MLflow")
        return {}


def _log_params_batched(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])


def _log_tags_batched(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, tags=items[i : i + _BATCH])


