"""MLflow tracking: names, tags and limits shared by the tracking modules, and :class:`TrackingError`."""

from __future__ import annotations

import re
import threading

from polydistill.errors import PolydistillError

#: Experiment used when none is given.
DEFAULT_EXPERIMENT = "polydistill"
#: The students' name in the MLflow Model Registry (the pipeline's; ``start-run`` spells it as its default).
REGISTERED_MODEL = "polydistill-student"
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
#: Set on the parent run by ``report``, its last stage, once everything it does succeeded: what ``end-run``
#: reads to close the run FINISHED (:mod:`polydistill.tracking.outcome`), and why it gave the outcome.
TAG_SUCCEEDED = "polydistill.succeeded"
TAG_OUTCOME_REASON = "polydistill.outcome_reason"
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



# Model-version tags of the one yardstick and of lineage (tracking/champion.py, docs/RETRAINING.md).
VTAG_MEAN_HNS = "polydistill.mean_hns"
VTAG_MEDIAN_HNS = "polydistill.median_hns"
VTAG_EVALUATION = "polydistill.evaluation"  # the evaluation config (protocol, episodes, epsilon, seed) as JSON
VTAG_PIPELINE_RUN = "polydistill.pipeline_run_id"  # the MLflow parent run the student came from
VTAG_KFP_RUN = "polydistill.kfp_run_id"
VTAG_RUN_ROOT = "polydistill.run_root"  # that pipeline run's datasets and teachers in the store
VTAG_TEACHERS = "polydistill.teachers"  # JSON {GAME: {"uri": store URI, "sha256": metadata.json digest}}
VTAG_CHAMPION_REASON = "polydistill.champion_decision"
#: The experiment tag that picks the MLflow UI's experiment type; this value opens it on its runs table
#: rather than the GenAI traces overview (MLflow 3.x UI: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
#: Tags of a warm-started teacher's stage run.
TAG_WARM_SOURCE_RUN = "polydistill.warm_start.source_run_id"
TAG_WARM_CHECKPOINT = "polydistill.warm_start.checkpoint"
TAG_WARM_SHA256 = "polydistill.warm_start.sha256"
TAG_WARM_VERSION = "polydistill.warm_start.model_version"
#: On a train-teacher child run whose teacher was imported (SB3 / CleanRL), not trained: the checkpoint's URI.
TAG_IMPORTED_FROM = "polydistill.teacher.imported_from"
