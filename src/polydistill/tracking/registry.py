"""MLflow tracking: registry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .connection import (
    _check_reachable,
    _client,
    _global_tracking_uri,
    _warn_failure,
)
from .names import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    VTAG_GAMES,
    VTAG_GEO,
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
) -> int | None:
    """Register the student logged in run ``run_id`` as a new version of ``model_name``.

    The version gets tags ``polydistill.games`` (sorted, comma-separated) and ``polydistill.geo_mean_pct``
    (geometric mean over games of student % of teacher) and alias ``candidate``. Alias ``champion`` moves
    to it when there is no champion yet, or when the champion was registered for the same game set and
    has a lower geometric-mean %; a champion for other games is never replaced automatically.

    Returns the new version number, or None when MLflow failed (a warning says why).
    """
    key = _games_key(games)
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
                tags={VTAG_GAMES: key, VTAG_GEO: repr(float(geo_mean_pct))},
                await_creation_for=30,
            )
        client.set_registered_model_alias(model_name, ALIAS_CANDIDATE, mv.version)
        try:
            champ = client.get_model_version_by_alias(model_name, ALIAS_CHAMPION)
        except MlflowException:
            champ = None  # no champion yet
        promote = False
        if champ is None:
            promote = True
        elif champ.tags.get(VTAG_GAMES) == key:
            try:
                promote = float(geo_mean_pct) > float(champ.tags.get(VTAG_GEO, "nan"))
            except ValueError:
                promote = False
        if promote:
            client.set_registered_model_alias(model_name, ALIAS_CHAMPION, mv.version)
        logger.info(
            "registered %s version %s (geo-mean %.1f%% of teacher on %s)%s",
            model_name, mv.version, geo_mean_pct, key, "; now champion" if promote else "",
        )
        return int(mv.version)
    except TrackingError as e:
        logger.warning("not registering %s: %s", model_name, e)
        return None
    except Exception as e:
        _warn_failure(tracking_uri, f"registering {model_name}", e, "the model is not registered")
        return None


