"""MLflow tracking: one parent run per pipeline run, one child run per task, models, the registry, comparing.

The pipeline and the CLI talk to MLflow only through this module. Every call takes the tracking URI
explicitly (resolved by :func:`resolve_tracking_uri`), so stages in different processes or pods land in the
same store, and tests can use several stores in one process.

Run layout
----------
- Parent run (:func:`start_pipeline_run`), one per pipeline run, tags:
  ``polydistill.kind=pipeline``, ``kfp.run_id`` (the Kubeflow or local-runner run id),
  ``polydistill.profile``, ``polydistill.games`` (comma-separated, in pipeline order).
- Child runs (:class:`StageRun`), one per task, named ``<stage>/<game>`` (``train-teacher/Pong``,
  ``distill/subset``) or ``<stage>`` (``evaluate``), tagged ``mlflow.parentRunId`` (what
  ``mlflow.start_run(parent_run_id=...)`` writes), ``polydistill.kind=stage``, ``polydistill.stage`` and
  ``polydistill.game`` (the second part of the name), and the parent's ``kfp.run_id`` / profile / games.

What :func:`compare_runs` reads (and :func:`log_report_to_parent` writes) on each parent run
-----------------------------------------------------------------------------------------------
``<source>`` is the student's data source: ``subset``, ``latent`` or ``full`` (the evaluation label without
its ``student_`` prefix); ``<GAME>`` is the game name as in the report (``Pong``).

============================================  ==========================================================
name on the parent run                        meaning
============================================  ==========================================================
tag ``polydistill.profile`` (param ``profile``)   profile (smoke, cpu, paper)
tag ``polydistill.games`` (param ``games``)       games, comma-separated
param ``distill.loss`` (or ``distill_loss``)      distillation loss
param ``distill.tau`` (or ``tau``)                teacher softmax temperature
param ``distill.actions`` (or ``actions``)        action-head layout (shared, per-game, union)
param ``distill.width`` (or ``student_width``)    student width multiplier against the teacher
metric ``pct_of_teacher/<source>/<GAME>``         student score as % of the teacher's score on GAME
metric ``geo_mean_pct/<source>``                  geometric mean over games of that %
metric ``bytes_per_state/<source>``               bytes stored per training state (mean over games)
metric ``score/<label>/<GAME>``                   mean evaluation score of agent ``label`` (not compared)
metric ``pct_normalised/<source>/<GAME>``         100 (s - random) / (t - random) (not compared)
metric ``geo_mean_pct_normalised/<source>``       its geometric mean (not compared)
============================================  ==========================================================

The percentages and geometric means are the report's (:mod:`polydistill.report`: % of teacher only where
the teacher's mean is > 0; geometric mean over the games where defined, values below 1% raised to 1%).
The ``bytes_per_state/<source>`` metrics come from the ``bytes_per_state`` argument of
:func:`log_report_to_parent` (the pipeline passes the datasets' figures); ``report.json``'s own ``storage``
table is not read for them.

Parameters are the flattened config with dotted keys (``{"distill": {"loss": "kl"}}`` -> ``distill.loss``),
so passing the resolved stage configs (:func:`polydistill.config.resolve_pipeline`) to
:func:`start_pipeline_run` writes exactly the names above.

Secrets never reach MLflow: keys that name a credential (secret, password, token, access key, ...) are
dropped, and values of credential environment variables (and of credentials the object store knows, see
:func:`polydistill.store.redact`) are replaced by ``***`` in params, tags, metadata and text artifacts.

Resilience: MLflow being down must not lose a training result. Every call of :class:`StageRun` and the
module-level helpers catches errors, logs one warning naming the (credential-free) tracking URI, and from
then on does nothing. HTTP retries are kept short (see :data:`HTTP_DEFAULTS`) and an HTTP server that does
not accept a TCP connection within :data:`CONNECT_TIMEOUT_S` is given up at once.

Models are logged with ``mlflow.pytorch.log_model(..., serialization_format="pt2")``: a traced graph that
loads back without unpickling code (MLflow 3.x refuses to load pickled models unless
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set) and without polydistill installed. A multi-head student is
exported with all heads concatenated (``heads`` in the model's metadata gives each game's slice).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import html
import io
import itertools
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from polydistill.errors import PolydistillError

from .progress import MetricsCallback
from .redaction import is_text_file, redact_uri

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_EXPERIMENT",
    "HTTP_DEFAULTS",
    "MetricsCallback",
    "StageRun",
    "TrackingError",
    "compare_rows",
    "compare_runs",
    "end_pipeline_run",
    "flatten_params",
    "log_report_to_parent",
    "redact_text",
    "register_student",
    "resolve_tracking_uri",
    "safe_tracking_uri",
    "start_pipeline_run",
]

logger = logging.getLogger(__name__)


#: Experiment used when none is given.
DEFAULT_EXPERIMENT = "polydistill"
#: Seconds to wait for a TCP connection to an HTTP tracking server before giving up on tracking.
CONNECT_TIMEOUT_S = 2.0
#: MLflow HTTP client settings applied with ``os.environ.setdefault`` (a value the user set wins).
#: MLflow's defaults (7 retries, 120 s timeout) could stall a stage for minutes when the server goes away;
#: these bound one failing request to about 95 s (3 tries of at most 30 s plus 1 + 2 s of backoff), after
#: which the stage run stops tracking.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

PIPELINE_KIND = "pipeline"
STAGE_KIND = "stage"
TAG_KIND = "polydistill.kind"
TAG_PROFILE = "polydistill.profile"
TAG_GAMES = "polydistill.games"
TAG_STAGE = "polydistill.stage"
TAG_GAME = "polydistill.game"
TAG_KFP_RUN_ID = "kfp.run_id"
TAG_PARENT = "mlflow.parentRunId"  # what mlflow.start_run(parent_run_id=...) sets
#: Set on the parent run by the first stage that fails, and by ``end-run`` when no stage said why.
TAG_FAILED_TASK = "polydistill.failed_task"
TAG_ERROR = "polydistill.error"
_ERROR_CHARS = 500  # MLflow tag values hold 8,000 characters; the cause fits in a line

#: Final states of a pipeline run as the runners report them (``PipelineTaskFinalStatus.state``). The KFP
#: backend reports the MLMD execution state of the exit handler's DAG: ``Execution_State`` names COMPLETE,
#: CACHED, FAILED, CANCELED (``backend/src/v2/driver/resolve.go``, ``GetLastKnownState().String()``; its own
#: MLflow plugin maps COMPLETE and CACHED to FINISHED, ``backend/src/v2/common/plugins/mlflow/config.go``);
#: kfp's local runner reports SUCCEEDED or FAILED (``kfp/local/orchestrator/orchestrator_utils.py``).
_SUCCEEDED_STATES = frozenset({"SUCCEEDED", "COMPLETE", "CACHED"})
_CANCELLED_STATES = frozenset({"CANCELED", "CANCELLED"})
# Parent tags copied onto each child so a child run can be found by pipeline run id or profile alone.
_INHERITED_TAGS = (TAG_KFP_RUN_ID, TAG_PROFILE, TAG_GAMES)

ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"
VTAG_GAMES = "polydistill.games"
VTAG_GEO = "polydistill.geo_mean_pct"

# MLflow limits (mlflow.utils.validation): values longer than these are rejected, so they are truncated.
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_KEY_LEN = 250
_BATCH = 100  # params/tags per log_batch call

# Words of a key name (split at non-alphanumerics and camelCase) that mark a credential. Whole words, so
# TOKENIZERS_PARALLELISM or max_tokens are not secrets; "key" only in its credential pairs (latent keys
# and dict keys are not secrets).
_SECRET_WORDS = frozenset({
    "secret", "secrets", "password", "passwd", "pwd", "token", "credential", "credentials", "authorization",
    "secretkey", "accesskey", "apikey", "privatekey", "sessiontoken",
})  # fmt: skip
_SECRET_PAIRS = frozenset({("access", "key"), ("secret", "key"), ("api", "key"), ("private", "key")})
# Values of secret-named env vars that are settings, not secrets (replacing every "true" would garble text).
_NOT_SECRET_VALUES = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off"})
_MIN_SECRET_LEN = 4  # shorter values are not treated as secrets (replacing "ab" everywhere protects nothing)
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /:]")

# mlflow.pytorch.log_model reads the global tracking URI; swapping it is serialised by this lock.
_GLOBAL_URI_LOCK = threading.RLock()


class TrackingError(PolydistillError, RuntimeError):
    """A read-only tracking query failed (no such experiment, store unreadable); the message says why."""


# --------------------------------------------------------------------------------------------------------
# URIs, secrets, flattening


def resolve_tracking_uri(uri: str | None, run_dir: str | Path | None) -> str:
    """Return the tracking URI to use: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else SQLite.

    The SQLite fallback is ``sqlite:///<run_dir>/mlflow.db`` (absolute), or ``./mlflow.db`` when
    ``run_dir`` is None too. A plain path given as ``uri`` is taken as a SQLite database file.
    """
    if uri:
        if "://" not in uri and not uri.startswith("sqlite:"):
            return f"sqlite:///{Path(uri).expanduser().resolve()}"
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(run_dir) if run_dir is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').expanduser().resolve()}"


def _secret_values() -> list[str]:
    """Credential values to hide: env vars whose name looks secret, and the store's known credentials."""
    values = {
        v
        for k, v in os.environ.items()
        if len(v) >= _MIN_SECRET_LEN and v.lower() not in _NOT_SECRET_VALUES and not v.isdigit()
        and is_secret_key(k)
    }
    with contextlib.suppress(ImportError, AttributeError):
        from . import store

        values |= {v for v in store._known_secrets if v and len(v) >= _MIN_SECRET_LEN}
        for name in (*store.ACCESS_KEY_VARS, *store.SECRET_KEY_VARS, store.SESSION_TOKEN_VAR):
            v = os.environ.get(name)
            if v and len(v) >= _MIN_SECRET_LEN:
                values.add(v)
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another goes whole


def redact_text(text: str, secrets: Sequence[str] | None = None) -> str:
    """``text`` with credential values, URI passwords/tokens and credential query values replaced by
    ``***`` (:func:`polydistill.redaction.redact_uri`)."""
    return redact_uri(text, _secret_values() if secrets is None else secrets)


def safe_tracking_uri(uri: str) -> str:
    """The tracking URI for messages: no password, no query string (which may carry tokens)."""
    return redact_text(uri.split("?", 1)[0])


def is_secret_key(name: str) -> bool:
    """Whether a parameter/tag/metadata key or an env var name names a credential (``secret_key``,
    ``AWS_SECRET_ACCESS_KEY``, ``accesskey``, ``password``, ``MLFLOW_TRACKING_TOKEN``, ``apiKey``)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    pairs = set(itertools.pairwise(words))
    return bool(_SECRET_WORDS.intersection(words) or _SECRET_PAIRS.intersection(pairs))


def _to_plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # pydantic configs
        return obj.model_dump(mode="json")
    return obj


def flatten_params(obj: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Flatten a (nested) config into ``{dotted.key: str}`` for MLflow params, without secrets.

    Nested mappings (and pydantic models) become dotted keys; lists become JSON. Keys naming a credential
    are dropped; values containing a credential are redacted. Values are cut to MLflow's 6,000 characters.
    """
    secrets = _secret_values()
    out: dict[str, str] = {}

    def walk(node: Any, pre: str) -> None:
        node = _to_plain(node)
        if isinstance(node, Mapping):
            for k, v in node.items():
                key = f"{pre}{k}"
                if is_secret_key(str(k)):
                    continue
                walk(v, f"{key}.")
            return
        key = pre[:-1]
        if isinstance(node, list | tuple | set):
            text = json.dumps(list(node), default=str)
        elif isinstance(node, float) and not math.isfinite(node):
            text = str(node)
        else:
            text = str(node)
        out[_clean_name(key)] = redact_text(text, secrets)[:_MAX_PARAM_LEN]

    walk(obj, prefix)
    return out


def _clean_name(name: str) -> str:
    """A param/metric/tag key MLflow accepts (no odd characters, no '..' segments, <= 250 chars)."""
    name = _BAD_NAME_CHARS.sub("_", name).strip("/") or "_"
    name = "/".join(p if p not in (".", "..") else "_" for p in name.split("/"))
    return name[:_MAX_KEY_LEN]


def _sanitize_json(obj: Any, secrets: Sequence[str]) -> Any:
    """A JSON-able copy of ``obj`` with credential keys dropped and credential values redacted."""
    obj = _to_plain(obj)
    if isinstance(obj, Mapping):
        return {str(k): _sanitize_json(v, secrets) for k, v in obj.items() if not is_secret_key(str(k))}
    if isinstance(obj, list | tuple | set):
        return [_sanitize_json(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, bool | int | type(None)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, np.generic):
        return _sanitize_json(obj.item(), secrets)
    return redact_text(str(obj), secrets)


def _clean_tags(tags: Mapping[str, Any], secrets: Sequence[str]) -> dict[str, str]:
    return {
        _clean_name(str(k)): redact_text(str(v), secrets)[:_MAX_TAG_LEN]
        for k, v in tags.items()
        if not is_secret_key(str(k)) and v is not None
    }


# --------------------------------------------------------------------------------------------------------
# Connection handling


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
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_root(uri, name))
        except Exception:
            exp = client.get_experiment_by_name(name)  # another pod created it first
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
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
            mlflow.set_tracking_uri(old_global)
            if old_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old_env


# --------------------------------------------------------------------------------------------------------
# Parent (pipeline) runs


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


# --------------------------------------------------------------------------------------------------------
# Child (stage) runs


def _all_heads(model: Any) -> Any:
    """A module exporting every head of a multi-head Q-network, concatenated along dim 1: pt2 traces one
    call signature, and ``forward(x, head=0)`` would otherwise export head 0 only."""
    import torch
    from torch import nn

    class AllHeadsQ(nn.Module):
        def __init__(self, net: nn.Module) -> None:
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
            _log_params_batched(self._client, self._run_id, new)
            if conflicts:
                _log_tags_batched(self._client, self._run_id, conflicts)
            self._params.update(new)

        self._call("logging the config", do)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (credential keys dropped, values redacted)."""
        clean = _clean_tags(tags, _secret_values())
        self._call("setting tags", lambda: _log_tags_batched(self._client, self._run_id, clean))

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


# --------------------------------------------------------------------------------------------------------
# Report metrics on the parent run


def _source_of(label: str) -> str | None:
    return label[len("student_") :] if label.startswith("student_") else None


def _geo_mean(values: Sequence[float | None]) -> float | None:
    """Geometric mean of percentages by the report's rule (:func:`polydistill.report.geometric_mean_pct`:
    undefined values skipped, values below 1% raised to 1%); None when no value is defined."""
    from .report import geometric_mean_pct

    return geometric_mean_pct(list(values))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
            if not source:
                continue
            for kind, per_source in pcts.items():
                if kind not in entry:
                    continue
                value = entry[kind]
                per_source.setdefault(source, []).append(float(value) if _finite(value) else None)
                if _finite(value):
                    out[_clean_name(f"{kind}/{source}/{game}")] = float(value)
    for kind, geo_key in (("pct_of_teacher", "geo_mean_pct"), ("pct_normalised", "geo_mean_pct_normalised")):
        given = report_json.get(geo_key) or {}
        for source, values in pcts[kind].items():
            key = next((k for k in (f"student_{source}", source) if k in given), None)
            value = given[key] if key is not None else _geo_mean(values)
            if _finite(value):
                out[_clean_name(f"{geo_key}/{source}")] = float(value)
    bps = {**(report_json.get("bytes_per_state") or {}), **(bytes_per_state or {})}
    for key, value in bps.items():
        source = _source_of(str(key)) or str(key)
        if isinstance(value, Mapping):
            vals = [float(v) for v in value.values() if _finite(v)]
            value = sum(vals) / len(vals) if vals else None
        if _finite(value):
            out[_clean_name(f"bytes_per_state/{source}")] = float(value)
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


# --------------------------------------------------------------------------------------------------------
# Registry


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


# --------------------------------------------------------------------------------------------------------
# Comparing pipeline runs

CompareFormat = Literal["table", "csv", "html"]
_BASE_COLUMNS = ("run", "run_id", "status", "profile", "games", "loss", "tau", "actions", "width", "source",
                 "bytes_per_state")


def _first(d: Mapping[str, str], *keys: str) -> str:
    for k in keys:
        if d.get(k) not in (None, ""):
            return str(d[k])
    return ""


def _split_games(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def compare_rows(
    tracking_uri: str, experiment: str, games: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows for :func:`compare_runs`: one per (pipeline run, student data source), best first.

    Each row has the keys in ``_BASE_COLUMNS``, ``pct/<GAME>`` per game and ``geo_mean_pct`` (floats or
    None). With ``games``, only runs over exactly that set of games (in any order) are kept.
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.is_file():
            raise TrackingError(
                f"no MLflow database at {db}; pass --tracking-uri (or set MLFLOW_TRACKING_URI) or --run-dir"
            )
    try:
        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise TrackingError(
                f"no experiment {experiment!r} at {safe_tracking_uri(tracking_uri)}; experiments there: "
                f"{', '.join(names) or 'none'}"
            )
        runs = []
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id], filter_string=f"tags.{TAG_KIND} = '{PIPELINE_KIND}'", max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(
            f"cannot read runs from {safe_tracking_uri(tracking_uri)}: {_describe(e, _secret_values())}"
        ) from None

    wanted = {g.casefold() for g in games} if games else None
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        run_games = _split_games(_first(tags, TAG_GAMES) or _first(params, "games"))
        pct: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "pct_of_teacher":
                pct.setdefault(parts[1], {})[parts[2]] = value
        sources = sorted({*pct, *(k.split("/", 1)[1] for k in metrics if k.startswith("geo_mean_pct/"))})
        if not run_games:
            run_games = sorted({g for per in pct.values() for g in per})
        if wanted is not None and {g.casefold() for g in run_games} != wanted:
            continue
        base = {
            "run": tags.get("mlflow.runName", ""),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "profile": _first(tags, TAG_PROFILE) or _first(params, "profile"),
            "games": ",".join(run_games),
            "loss": _first(params, "distill.loss", "distill_loss"),
            "tau": _first(params, "distill.tau", "tau"),
            "actions": _first(params, "distill.actions", "actions"),
            "width": _first(params, "distill.width", "student_width"),
            "_start": run.info.start_time or 0,
        }
        for source in sources or [""]:
            per_game = pct.get(source, {})
            geo = metrics.get(f"geo_mean_pct/{source}") if source else None
            if geo is None:
                geo = _geo_mean([per_game[g] for g in run_games if g in per_game]) if per_game else None
            row = {
                **base,
                "source": source,
                "bytes_per_state": metrics.get(f"bytes_per_state/{source}") if source else None,
                "geo_mean_pct": geo,
            }
            row.update({f"pct/{g}": v for g, v in per_game.items()})
            rows.append(row)
    # Best geometric mean first; runs without scores last; ties: newest first.
    rows.sort(key=lambda r: (r["geo_mean_pct"] is None, -(r["geo_mean_pct"] or 0.0), -r["_start"]))
    for r in rows:
        r.pop("_start")
    return rows


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if key == "bytes_per_state":
            return f"{value:.0f}"
        return f"{value:.1f}"
    return str(value)


def compare_runs(
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    games: Sequence[str] | None = None,
    fmt: CompareFormat = "table",
) -> str:
    """Pipeline runs side by side as a text table, CSV or an HTML table, best geometric mean first.

    One row per pipeline run and student data source: profile, games, loss, tau, action heads, student
    width, data source, bytes per state, student % of teacher per game (``pct/<GAME>``) and their
    geometric mean (``geo_mean_pct``). Raises :class:`TrackingError` when the store cannot be read.
    """
    if fmt not in ("table", "csv", "html"):
        raise ValueError(f"fmt must be table, csv or html, got {fmt!r}")
    rows = compare_rows(tracking_uri, experiment, games)
    game_cols: list[str] = []
    for r in rows:
        for g in _split_games(r["games"]):
            if f"pct/{g}" not in game_cols:
                game_cols.append(f"pct/{g}")
        game_cols.extend(k for k in r if k.startswith("pct/") and k not in game_cols)
    columns = [*_BASE_COLUMNS, *game_cols, "geo_mean_pct"]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        return buf.getvalue()
    cells = [[_fmt(r.get(c), c) for c in columns] for r in rows]
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells
        )
        return (
            '<table class="polydistill-compare">\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        )
    cells = [[v[:8] if c == "run_id" else v for c, v in zip(columns, row, strict=True)] for row in cells]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    if not rows:
        lines.append("(no pipeline runs" + (f" over games {', '.join(games)}" if games else "") + ")")
    return "\n".join(lines) + "\n"
