"""MLflow tracking: tags and a JSON record on the parent run for what a run did to the store (retention)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .connection import _check_reachable, _client, _warn_failure
from .params import _clean_tags, _sanitize_json, _secret_values
from .pipeline_runs import _log_tags_batched


def log_parent_record(tracking_uri: str, parent_run_id: str, tags: Mapping[str, Any], obj: Any,
                      artifact_file: str) -> None:
    """Set ``tags`` on the parent run and log ``obj`` as its JSON artifact ``artifact_file``; a failure is
    a warning (a note must never fail the run)."""
    if not parent_run_id:
        return
    secrets = _secret_values()
    try:
        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        _log_tags_batched(client, parent_run_id, _clean_tags(tags, secrets))
        client.log_dict(parent_run_id, _sanitize_json(obj, secrets), artifact_file)
    except Exception as e:
        _warn_failure(tracking_uri, f"logging {artifact_file}", e, "it is only in the task's log")
