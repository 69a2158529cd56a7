"""MLflow tracking: report metrics on the parent run."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from .connection import (
    _check_reachable,
    _client,
    _warn_failure,
)
from .params import (
    _clean_name,
    _sanitize_json,
    _secret_values,
    flatten_params,
)
from .pipeline_runs import (
    _log_params_batched,
)


def _source_of(label: str) -> str | None:
    return label[len("student_") :] if label.startswith("student_") else None


def _geo_mean(values: Sequence[float | None]) -> float | None:
    """Geometric mean of percentages by the report's rule (:func:`polydistill.report.geometric_mean_pct`:
    undefined values skipped, values below 1% raised to 1%); None when no value is defined."""
    from ..report import geometric_mean_pct

    return geometric_mean_pct(list(values))


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _game_metrics(report_json: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, list[float | None]]]]:
    """Per game: ``score/<label>/<GAME>`` and the students' percentages as metrics, and the percentages per
    kind and source (None where undefined) for the geometric means."""
    out: dict[str, float] = {}
    pcts: dict[str, dict[str, list[float | None]]] = {"pct_of_teacher": {}, "pct_normalised": {}}
    for game, agents in (report_json.get("games") or {}).items():
        if not isinstance(agents, Mapping):
            continue
        for label, entry in agents.items():
            if not isinstance(entry, Mapping):
                continue
            if _finite(entry.get("mean")):
                out[_clean_name(f"score/{label}/{game}")] = float(entry["mean"])
            source = _source_of(str(label))
            for kind, per_source in pcts.items():
                if not source or kind not in entry:
                    continue
                value = entry[kind]
                per_source.setdefault(source, []).append(float(value) if _finite(value) else None)
                if _finite(value):
                    out[_clean_name(f"{kind}/{source}/{game}")] = float(value)
    return out, pcts


def report_metrics(
    report_json: Mapping[str, Any], bytes_per_state: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """The parent-run metrics (names in the module docstring) in a report JSON.

    Reads ``report.json`` as written by :func:`polydistill.report.build_table`::

        {"games": {GAME: {LABEL: {"mean", "std", "pct_of_teacher": float|None,
                                  "pct_normalised": float|None, ...}}},
         "geo_mean_pct": {STUDENT_LABEL: float|None},
         "geo_mean_pct_normalised": {STUDENT_LABEL: float|None},
         "bytes_per_state": {LABEL_or_SOURCE: float | {GAME: float}}}    # optional, not written by report

    LABEL is ``random``, ``teacher`` or ``student_<source>``; only student labels give % metrics. A
    geometric mean the report gives (also None: undefined) is used as is; one it lacks is computed by the
    report's rule. Undefined (None) percentages are not logged. Metrics: ``score/<label>/<GAME>``,
    ``pct_of_teacher/<source>/<GAME>``, ``pct_normalised/<source>/<GAME>``, ``geo_mean_pct/<source>``,
    ``geo_mean_pct_normalised/<source>``, ``bytes_per_state/<source>``.
    """
    out, pcts = _game_metrics(report_json)
    for kind, geo_key in (("pct_of_teacher", "geo_mean_pct"), ("pct_normalised", "geo_mean_pct_normalised")):
        given = report_json.get(geo_key) or {}
        for source, values in pcts[kind].items():
            key = next((k for k in (f"student_{source}", source) if k in given), None)
            value = given[key] if key is not None else _geo_mean(values)
            if value is not None and _finite(value):
                out[_clean_name(f"{geo_key}/{source}")] = float(value)
    out.update(_hns_metrics(report_json))
    bps = {**(report_json.get("bytes_per_state") or {}), **(bytes_per_state or {})}
    for key, value in bps.items():
        source = _source_of(str(key)) or str(key)
        if isinstance(value, Mapping):
            vals = [float(v) for v in value.values() if _finite(v)]
            value = sum(vals) / len(vals) if vals else None
        if _finite(value):
            out[_clean_name(f"bytes_per_state/{source}")] = float(value)
    return out


def _hns_metrics(report_json: Mapping[str, Any]) -> dict[str, float]:
    """``hns/<source>/<GAME>``, ``mean_hns/<source>`` and ``median_hns/<source>`` from the report's HNS
    tables; ``<source>`` is the student's source, or the label itself for ``teacher`` and ``random``."""
    out: dict[str, float] = {}
    for label, per_game in (report_json.get("hns") or {}).items():
        source = _source_of(str(label)) or str(label)
        for game, value in (per_game or {}).items():
            if _finite(value):
                out[_clean_name(f"hns/{source}/{game}")] = float(value)
        for key in ("mean_hns", "median_hns"):
            value = (report_json.get(key) or {}).get(label)
            if value is not None and _finite(value):
                out[_clean_name(f"{key}/{source}")] = float(value)
    return out


def log_report_to_parent(
    tracking_uri: str,
    parent_run_id: str,
    report_json: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    *,
    bytes_per_state: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Log the report's scores as parent-run metrics (see :func:`report_metrics`), ``params`` as
    parent-run params (those not logged yet), and the report as artifact ``report/report.json``.

    Returns the metrics logged ({} when tracking is off or failed; a warning says why).
    """
    if not parent_run_id:
        return {}
    metrics = report_metrics(report_json, bytes_per_state)
    secrets = _secret_values()
    try:
        _check_reachable(tracking_uri)
        from mlflow.entities import Metric

        client = _client(tracking_uri)
        existing = client.get_run(parent_run_id).data.params
        flat = {k: v for k, v in flatten_params(params or {}).items() if k not in existing}
        _log_params_batched(client, parent_run_id, flat)
        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            client.log_batch(parent_run_id, metrics=items[i : i + 1000])
        client.log_dict(parent_run_id, _sanitize_json(report_json, secrets), "report/report.json")
        return metrics
    except Exception as e:
        _warn_failure(
            tracking_uri, "logging the report to the pipeline run", e, "the report is not in MLflow"
        )
        return {}


