"""Submit and schedule the pipeline on a Kubeflow Pipelines host (``polydistill submit`` / ``schedule``).

Both upload the freshly compiled pipeline -- as a new pipeline the first time, as a new version of it after
that -- then start a run (``submit``) or a recurring run (``schedule``) of exactly that version, in a KFP
experiment. Every failure becomes a :class:`KubeflowError` with a one-line message: an unreachable host, a
rejected request (HTTP status and the server's message), or a bad cron expression (checked before anything
is sent).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compile import compile_pipeline, compiled_name

#: Seconds to wait for the host's health endpoint before calling it unreachable.
CONNECT_TIMEOUT_S = 10.0
HEALTHZ_PATH = "/apis/v2beta1/healthz"


class KubeflowError(RuntimeError):
    """Submitting to Kubeflow Pipelines failed; the message says why in one line."""


# ------------------------------------------------------------------------------------------------ cron

# Kubeflow's scheduler uses robfig/cron with a seconds field: "SEC MIN HOUR DOM MONTH DOW".
_CRON_FIELDS = (
    ("seconds", 0, 59, {}),
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}),
    ("day of week", 0, 6, {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}),
)
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EVERY = re.compile(r"^@every\s+(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_CRON_EXAMPLE = "e.g. '0 0 3 * * *' for 03:00 daily (seconds minutes hours day-of-month month day-of-week)"


def _cron_value(token: str, lo: int, hi: int, names: Mapping[str, int], field: str, expr: str) -> int:
    value = names.get(token.upper()) if token.isalpha() else None
    if value is None:
        if not token.isdigit():
            raise KubeflowError(
                f"cron expression {expr!r}: {field} has {token!r}, not a number; {_CRON_EXAMPLE}")
        value = int(token)
    if not lo <= value <= hi:
        raise KubeflowError(f"cron expression {expr!r}: {field} value {value} is outside {lo}-{hi}")
    return value


def validate_cron(expr: str) -> str:
    """Check a Kubeflow cron expression (6 fields, seconds first, or ``@daily``-style); return it stripped.

    Raises:
        KubeflowError: naming the problem, e.g. a 5-field (Unix) expression.
    """
    expr = " ".join(str(expr).split())
    if not expr:
        raise KubeflowError(f"empty cron expression; {_CRON_EXAMPLE}")
    if expr.startswith("@"):
        if expr in _DESCRIPTORS or _EVERY.match(expr):
            return expr
        raise KubeflowError(f"cron expression {expr!r}: unknown descriptor; use one of "
                            f"{', '.join(_DESCRIPTORS)} or '@every 1h30m'")
    fields = expr.split(" ")
    if len(fields) != 6:
        hint = " (a Unix cron has 5: put a seconds field in front, e.g. '0 ')" if len(fields) == 5 else ""
        raise KubeflowError(f"cron expression {expr!r} has {len(fields)} fields; Kubeflow wants 6{hint}; "
                            f"{_CRON_EXAMPLE}")
    for text, (field, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise KubeflowError(
                    f"cron expression {expr!r}: {field} step {step!r} must be a positive number")
            if base in ("*", "?"):
                if base == "?" and field not in ("day of month", "day of week"):
                    raise KubeflowError(
                        f"cron expression {expr!r}: '?' is only allowed for day of month/week")
                continue
            start, dash, end = base.partition("-")
            a = _cron_value(start, lo, hi, names, field, expr)
            if dash:
                b = _cron_value(end, lo, hi, names, field, expr)
                if b < a:
                    raise KubeflowError(f"cron expression {expr!r}: {field} range {base!r} runs backwards")
    return expr


# ---------------------------------------------------------------------------------------------- client


def check_host(host: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Normalise ``host`` and check that a KFP API answers there; returns the normalised URL."""
    host = host.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise KubeflowError(f"--host {host!r} must be an http:// or https:// URL, e.g. http://localhost:8080")
    try:
        with urllib.request.urlopen(host + HEALTHZ_PATH, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise KubeflowError(f"Kubeflow Pipelines at {host} refused access (HTTP {e.code}): authenticate "
                                "first, e.g. via `kubectl port-forward svc/ml-pipeline-ui 8080:80`") from None
        if e.code == 404:
            raise KubeflowError(f"{host} answers but has no Kubeflow Pipelines API ({HEALTHZ_PATH}: "
                                "HTTP 404); point --host at the KFP API or UI endpoint") from None
        raise KubeflowError(
            f"Kubeflow Pipelines at {host} is unhealthy: HTTP {e.code} on {HEALTHZ_PATH}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    return host


def _api_error(what: str, host: str, exc: BaseException) -> KubeflowError:
    """A one-line error from a kfp client exception (``ApiException`` carries status and body)."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            data = json.loads(body)
            message = data.get("message") or data.get("error") or ""
        except (ValueError, AttributeError):
            message = str(body)
    if status:
        detail = message or getattr(exc, "reason", "") or "no details"
        return KubeflowError(f"Kubeflow Pipelines at {host} rejected {what} (HTTP {status}): "
                             f"{' '.join(str(detail).split())}")
    return KubeflowError(f"{what} on Kubeflow Pipelines at {host} failed: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}")


def _client(host: str) -> Any:
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 ..."
        return kfp.Client(host=host)


@dataclass
class Upload:
    """The pipeline and version a submission uses."""

    pipeline_id: str
    version_id: str
    pipeline_name: str
    version_name: str
    created_pipeline: bool


def default_version_name() -> str:
    """``<package version>-<UTC timestamp>``, unique per upload."""
    from polydistill import __version__

    return f"{__version__}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def upload(client: Any, host: str, variant: str, pipeline_name: str | None = None,
           version_name: str | None = None) -> Upload:
    """Compile ``variant`` and upload it as pipeline ``pipeline_name`` (default: the variant's name), or as
    a new version ``version_name`` of it when it exists."""
    name = pipeline_name or variant
    version = version_name or default_version_name()
    with tempfile.TemporaryDirectory(prefix="polydistill-submit-") as tmp:
        package = compile_pipeline(variant, Path(tmp) / compiled_name(variant))
        try:
            pipeline_id = client.get_pipeline_id(name)
        except Exception as e:
            raise _api_error(f"looking up pipeline {name!r}", host, e) from None
        if pipeline_id is None:
            try:
                created = client.upload_pipeline(str(package), pipeline_name=name,
                                                 description=f"polydistill ({variant})")
            except Exception as e:
                raise _api_error(f"uploading pipeline {name!r}", host, e) from None
            pipeline_id = created.pipeline_id
            # Uploading a pipeline also creates its first version (named like the pipeline): run that one.
            try:
                versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            except Exception as e:
                raise _api_error(f"listing versions of pipeline {name!r}", host, e) from None
            if not versions.pipeline_versions:
                raise KubeflowError(
                    f"Kubeflow Pipelines at {host} created pipeline {name!r} without a version")
            first = versions.pipeline_versions[0]
            return Upload(pipeline_id, first.pipeline_version_id, name, first.display_name or name, True)
        try:
            created_version = client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id)
        except Exception as e:
            raise _api_error(f"uploading version {version!r} of pipeline {name!r}", host, e) from None
        return Upload(pipeline_id, created_version.pipeline_version_id, name, version, False)


def _experiment_id(client: Any, host: str, experiment: str) -> str:
    try:
        return client.create_experiment(experiment).experiment_id  # returns the existing one if any
    except Exception as e:
        raise _api_error(f"creating experiment {experiment!r}", host, e) from None


@dataclass
class Submission:
    """What ``submit`` or ``schedule`` created."""

    host: str
    upload: Upload
    experiment_id: str
    run_id: str | None = None
    recurring_run_id: str | None = None

    def url(self) -> str:
        """The Kubeflow UI page of the run or recurring run."""
        if self.run_id:
            return f"{self.host}/#/runs/details/{self.run_id}"
        return f"{self.host}/#/recurringrun/details/{self.recurring_run_id}"


def submit(
    host: str,
    arguments: Mapping[str, Any],
    experiment: str = "polydistill",
    variant: str = "polydistill",
    pipeline_name: str | None = None,
    version_name: str | None = None,
    run_name: str | None = None,
    service_account: str | None = None,
) -> Submission:
    """Upload the pipeline (or a new version) and start one run with ``arguments`` (pipeline parameters)."""
    host = check_host(host)
    client = _client(host)
    up = upload(client, host, variant, pipeline_name, version_name)
    exp_id = _experiment_id(client, host, experiment)
    name = run_name or f"{up.pipeline_name} {up.version_name}"
    try:
        run = client.run_pipeline(experiment_id=exp_id, job_name=name, params=dict(arguments),
                                  pipeline_id=up.pipeline_id, version_id=up.version_id,
                                  service_account=service_account)
    except Exception as e:
        raise _api_error(f"starting run {name!r}", host, e) from None
    return Submission(host, up, exp_id, run_id=run.run_id)


def schedule(
    host: str,
    cron: str,
    arguments: Mapping[str, Any],
    experiment: str = "polydistill",
    variant: str = "polydistill",
    pipeline_name: str | None = None,
    version_name: str | None = None,
    job_name: str | None = None,
    max_concurrency: int = 1,
    service_account: str | None = None,
) -> Submission:
    """Upload the pipeline (or a new version) and create a recurring run on ``cron`` (validated first)."""
    cron = validate_cron(cron)  # before anything reaches the server
    if max_concurrency < 1:
        raise KubeflowError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    host = check_host(host)
    client = _client(host)
    up = upload(client, host, variant, pipeline_name, version_name)
    exp_id = _experiment_id(client, host, experiment)
    name = job_name or f"{up.pipeline_name} on {cron}"
    try:
        job = client.create_recurring_run(
            experiment_id=exp_id, job_name=name, cron_expression=cron, params=dict(arguments),
            pipeline_id=up.pipeline_id, version_id=up.version_id, max_concurrency=max_concurrency,
            no_catchup=True, service_account=service_account,
        )
    except Exception as e:
        raise _api_error(f"creating recurring run {name!r}", host, e) from None
    return Submission(host, up, exp_id, recurring_run_id=job.recurring_run_id)
