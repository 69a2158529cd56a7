"""MLflow tracking: connection handling."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .names import (
    _GLOBAL_URI_LOCK,
    CONNECT_TIMEOUT_S,
    EXPERIMENT_KIND_TRAINING,
    HTTP_DEFAULTS,
    TAG_EXPERIMENT_KIND,
)
from .params import (
    _secret_values,
    redact_text,
    safe_tracking_uri,
)

logger = logging.getLogger(__package__)

def _apply_http_defaults() -> None:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


def _check_reachable(uri: str) -> None:
    """Fail fast (``ConnectionError``) when an HTTP tracking server does not accept a TCP connection;
    create the directory of a SQLite database (SQLite will not)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as e:
            raise ConnectionError(
                f"cannot connect to {parts.hostname}:{port} within {CONNECT_TIMEOUT_S:g} s ({e})"
            ) from None
    elif parts.scheme.startswith("sqlite") and uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if str(db) not in ("", ":memory:"):
            db.parent.mkdir(parents=True, exist_ok=True)


def _client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri`` for tracking and the registry."""
    _apply_http_defaults()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite database (MLflow would use ./mlruns of the
    current directory); for a server, None (the server decides, e.g. its proxied artifact store)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        slug = re.sub(r"[^\w.-]", "_", experiment) or "default"
        return (db.parent / "mlartifacts" / slug).resolve().as_uri()
    return None


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """Id of experiment ``name``, created (or restored from the trash) if needed; safe against a race
    with another task creating it at the same time."""
    kind = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}  # the UI opens on the runs, not GenAI traces
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_root(uri, name), tags=kind)
        except Exception:
            exp = client.get_experiment_by_name(name)  # another pod created it first
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if TAG_EXPERIMENT_KIND not in (exp.tags or {}):  # created before polydistill set it
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    return exp.experiment_id


def _describe(exc: BaseException, secrets: Sequence[str]) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 300:
        msg = msg[:300] + "..."
    return f"{type(exc).__name__}: {redact_text(msg, secrets)}"


def _warn_failure(uri: str, what: str, exc: BaseException, consequence: str) -> None:
    secrets = _secret_values()
    logger.warning(
        "MLflow tracking at %s failed while %s (%s); %s",
        safe_tracking_uri(uri),
        what,
        _describe(exc, secrets),
        consequence,
    )


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for APIs that only read the global (log_model), then
    restore it and ``$MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri`` overwrites) exactly."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _GLOBAL_URI_LOCK:
        old_global = tracking_utils._tracking_uri
        old_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(old_global)  # type: ignore[arg-type]  # None restores MLflow's default
            if old_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old_env


