"""MLflow tracking: registry."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .champion import decide, evaluation_tag
from .connection import (
    _check_reachable,
    _client,
    _global_tracking_uri,
    _warn_failure,
)
from .names import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    VTAG_CHAMPION_REASON,
    VTAG_EVALUATION,
    VTAG_GAMES,
    VTAG_GEO,
    VTAG_MEAN_HNS,
    VTAG_MEDIAN_HNS,
    TrackingError,
)

logger = logging.getLogger(__package__)

def _games_key(games: Sequence[str]) -> str:
    return ",".join(sorted(str(g) for g in games))


def _find_logged_model(client: Any, run_id: str, name: str) -> Any:
    run = client.get_run(run_id)
    ids = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
    models = [client.get_logged_model(i) for i in ids]
    if not models:  # older servers may not return run outputs
        models = list(
            client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        )
    models = [m for m in models if m.name == name]
    if not models:
        raise TrackingError(
            f"run {run_id} has no logged model named {name!r}; log it with StageRun.log_model"
        )
    return max(models, key=lambda m: m.creation_timestamp or 0)


def register_student(
    tracking_uri: str,
    run_id: str,
    model_name: str,
    games: Sequence[str],
    geo_mean_pct: float,
    *,
    artifact_name: str = "student",
    mean_hns: float | None = None,
    median_hns: float | None = None,
    evaluation: Mapping[str, Any] | None = None,
    lineage: Mapping[str, str] | None = None,
) -> int | None:
    """Register the student logged in run ``run_id`` as a new version of ``model_name``.

    The version gets tags ``polydistill.games`` (sorted, comma-separated), ``polydistill.geo_mean_pct``
    (geometric mean of % of teacher, informative only), ``polydistill.mean_hns``/``median_hns`` (the
    yardstick), ``polydistill.evaluation`` (the evaluation config the scores come from), the ``lineage``
    tags (pipeline run, run root, teachers: what a warm start and retention read) and alias ``candidate``.
    Alias ``champion`` moves to it by :func:`polydistill.tracking.champion.decide` (mean HNS on the same
    games, protocol and seed); the decision is logged and tagged ``polydistill.champion_decision``.

    Returns the new version number, or None when MLflow failed (a warning says why).
    """
    key = _games_key(games)
    tags = {VTAG_GAMES: key, VTAG_GEO: repr(float(geo_mean_pct)), VTAG_EVALUATION: evaluation_tag(evaluation),
            **{k: str(v) for k, v in (lineage or {}).items()}}
    for tag, value in ((VTAG_MEAN_HNS, mean_hns), (VTAG_MEDIAN_HNS, median_hns)):
        if value is not None:
            tags[tag] = repr(float(value))
    try:
        _check_reachable(tracking_uri)
        from mlflow.exceptions import MlflowException

        client = _client(tracking_uri)
        logged = _find_logged_model(client, run_id, artifact_name)
        try:
            client.create_registered_model(model_name)
        except MlflowException as e:
            if "ALREADY_EXISTS" not in str(getattr(e, "error_code", "")):
                raise
        # A SQLite registry resolves the models:/ source through the global tracking URI.
        with _global_tracking_uri(tracking_uri):
            mv = client.create_model_version(
                model_name,
                source=f"models:/{logged.model_id}",
                run_id=run_id,
                model_id=logged.model_id,
                tags=tags,
                await_creation_for=30,
            )
        client.set_registered_model_alias(model_name, ALIAS_CANDIDATE, mv.version)
        champ = _champion(client, model_name)
        decision = decide(tags, None if champ is None else dict(champ.tags))
        client.set_model_version_tag(model_name, mv.version, VTAG_CHAMPION_REASON,
                                     ("promoted: " if decision.promote else "kept champion: ") + decision.reason)
        if decision.promote:
            client.set_registered_model_alias(model_name, ALIAS_CHAMPION, mv.version)
        logger.info(
            "registered %s version %s (mean HNS %s on %s); %s: %s",
            model_name, mv.version, "n/a" if mean_hns is None else f"{mean_hns:.4f}", key,
            "now champion" if decision.promote else f"champion stays version {champ.version if champ else '?'}",
            decision.reason,
        )
        return int(mv.version)
    except TrackingError as e:
        logger.warning("not registering %s: %s", model_name, e)
        return None
    except Exception as e:
        _warn_failure(tracking_uri, f"registering {model_name}", e, "the model is not registered")
        return None


def _champion(client: Any, model_name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, ALIAS_CHAMPION)
    except MlflowException:
        return None  # no champion (or no such model) yet


def champion_tags(tracking_uri: str, model_name: str) -> dict[str, str] | None:
    """The champion version's tags plus ``version`` (None when there is no champion or MLflow is down:
    a warm start then trains from scratch and retention protects nothing it cannot name, so it deletes
    nothing; see :mod:`polydistill.retention`)."""
    try:
        _check_reachable(tracking_uri)
        champ = _champion(_client(tracking_uri), model_name)
    except Exception as e:
        raise TrackingError(f"cannot read the champion of {model_name}: {e}") from None
    if champ is None:
        return None
    return {**dict(champ.tags), "version": str(champ.version)}
