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

from ..progress import MetricsCallback
from .compare import (  # noqa: F401
    CompareFormat,
    compare_rows,
    compare_runs,
)
from .names import (  # noqa: F401
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    CONNECT_TIMEOUT_S,
    DEFAULT_EXPERIMENT,
    HTTP_DEFAULTS,
    PIPELINE_KIND,
    STAGE_KIND,
    TAG_ERROR,
    TAG_FAILED_TASK,
    TAG_GAME,
    TAG_GAMES,
    TAG_KFP_RUN_ID,
    TAG_KIND,
    TAG_OUTCOME_REASON,
    TAG_PARENT,
    TAG_PROFILE,
    TAG_STAGE,
    TAG_SUCCEEDED,
    VTAG_GAMES,
    VTAG_GEO,
    TrackingError,
)
from .outcome import (  # noqa: F401
    RunEvidence,
    close_pipeline_run,
    decide_outcome,
    mark_pipeline_succeeded,
    run_evidence,
)
from .params import (  # noqa: F401
    flatten_params,
    is_secret_key,
    redact_text,
    resolve_tracking_uri,
    safe_tracking_uri,
)
from .pipeline_runs import (  # noqa: F401
    end_pipeline_run,
    find_pipeline_run,
    one_line_error,
    run_outcome,
    start_pipeline_run,
)
from .registry import (  # noqa: F401
    champion_tags,
    register_student,
)
from .report_metrics import (  # noqa: F401
    log_report_to_parent,
    report_metrics,
)
from .stage_run import (
    StageRun,
)

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
    "find_pipeline_run",
    "flatten_params",
    "log_report_to_parent",
    "redact_text",
    "register_student",
    "resolve_tracking_uri",
    "safe_tracking_uri",
    "start_pipeline_run",
]
