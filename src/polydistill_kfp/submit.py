"""Submit and schedule the pipeline on a Kubeflow Pipelines host (``polydistill submit`` / ``schedule``).

Both upload the freshly compiled pipeline -- as a new pipeline the first time, as a new version of it after
that -- then start a run (``submit``) or a recurring run (``schedule``) of exactly that version, in a KFP
experiment. Every failure becomes a :class:`KubeflowError` with a one-line message: an unreachable host, a
rejected request (HTTP status and the server's message), or a bad cron expression (checked before anything
is sent).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polydistill.errors import PolydistillError
from polydistill.redaction import redact_uri

from .compat import MINIMUM_BACKEND, MINIMUM_KUBEFLOW, parse_version, version_text
from .compile import compile_pipeline, compiled_name
from .images import Images

#: Seconds to wait for the host's health endpoint before calling it unreachable.
CONNECT_TIMEOUT_S = 10.0
HEALTHZ_PATH = "/apis/v2beta1/healthz"


class KubeflowError(PolydistillError, RuntimeError):
    """Submitting to Kubeflow Pipelines failed; the message says why in one line."""


# ------------------------------------------------------------------------------------------------ cron

# Kubeflow's scheduler uses robfig/cron with a seconds field: "SEC MIN HOUR DOM MONTH DOW".
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
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

#: kfp's own names for the in-cluster service-account token (``kfp.client.KF_PIPELINES_SA_TOKEN_*``).
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
#: An existing bearer token (e.g. ``kubectl create token default-editor -n NS --audience pipelines.kubeflow.org``).
TOKEN_ENV = "KF_PIPELINES_TOKEN"
#: Session cookies copied from a logged-in browser (``oauth2_proxy_kubeflow=...``).
COOKIES_ENV = "KF_PIPELINES_COOKIES"
#: The pod's own namespace, which kfp.Client also reads inside a cluster.
POD_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


#: What a bearer token or a cookie header may hold: printable ASCII (RFC 9110 field-value, no obs-text).
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
#: The most bytes read of a token file: a bearer token is a few KiB (a JWT); /dev/zero is no token file.
MAX_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    """How requests to the KFP API authenticate: a bearer token or session cookies (or nothing, e.g. through
    ``kubectl port-forward``). ``source`` says where they came from, for messages; values never appear."""

    token: str | None = None
    cookies: str | None = None
    source: str = "none"

    def __post_init__(self) -> None:
        # An HTTP header value cannot hold control characters: "tok\r\nX-Evil: 1" would add a header (or fail
        # inside http.client with the value in its message). Refused here, naming the source, never the value.
        for what, value in (("token", self.token), ("cookies", self.cookies)):
            if value and not _HEADER_VALUE.fullmatch(value):
                raise KubeflowError(f"the {what} from {self.source} holds control or non-ASCII characters "
                                    f"(a header value is printable ASCII): copy it again without them")

    def headers(self) -> dict[str, str]:
        h = {}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if self.cookies:
            h["Cookie"] = self.cookies
        return h

    def __repr__(self) -> str:  # never the values
        return f"Credentials(source={self.source!r})"


def resolve_credentials(token: str | None = None, token_file: str | None = None, cookies: str | None = None,
                        environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials to use, first found: ``--token``, ``--token-file``, ``--cookies``, then ``$KF_PIPELINES_TOKEN``,
    ``$KF_PIPELINES_COOKIES``, the service-account token file (``$KF_PIPELINES_SA_TOKEN_PATH`` or kfp's default
    path, present inside a Kubeflow pod); none of them: unauthenticated."""
    env = os.environ if environ is None else environ
    if token:
        return Credentials(token=token.strip(), source="--token")
    if token_file:
        return Credentials(token=_read_token(token_file, "--token-file"), source=f"--token-file {token_file}")
    if cookies:
        return Credentials(cookies=cookies.strip(), source="--cookies")
    if env.get(TOKEN_ENV, "").strip():
        return Credentials(token=env[TOKEN_ENV].strip(), source=f"${TOKEN_ENV}")
    if env.get(COOKIES_ENV, "").strip():
        return Credentials(cookies=env[COOKIES_ENV].strip(), source=f"${COOKIES_ENV}")
    path = env.get(SA_TOKEN_ENV) or SA_TOKEN_PATH
    if Path(path).is_file():
        return Credentials(token=_read_token(path, "the service-account token"), source=f"token file {path}")
    return Credentials()


def _read_token(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as e:
        raise KubeflowError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise KubeflowError(f"{what} {path} is larger than {MAX_TOKEN_BYTES // 1024} KiB: give a file holding "
                            "one bearer token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KubeflowError(f"{what} {path} is not a text file (binary or non-ASCII bytes): give a file "
                            "holding one bearer token") from None
    if not token:
        raise KubeflowError(f"{what} {path} is empty: give a file holding one bearer token")
    return token


def _clean_host(host: str) -> str:
    host = host.strip().rstrip("/")
    parts = urllib.parse.urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KubeflowError(f"--host {redact_uri(host)!r} must be an http:// or https:// URL, "
                            "e.g. http://localhost:8080")
    if parts.username or parts.password:
        raise KubeflowError(f"--host {redact_uri(host)!r} carries credentials: drop the user:password@ part "
                            f"and pass the token with --token or ${TOKEN_ENV}")
    return host


@dataclass(frozen=True)
class Server:
    """What the health endpoint says about the server. Two answer it: the API server itself
    (``commit_sha``, ``tag_name``, ``multi_user``; ``backend/src/apiserver/main.go``), and, through Kubeflow's
    gateway at ``/pipeline``, the UI (``ml-pipeline-ui``: ``apiServerTagName``, ``apiServerMultiUser``,
    ``apiServerReady``, ``frontendTagName``; ``frontend/server/handlers/healthz.ts``). The API server reports
    its ``TAG_NAME`` setting, which Kubeflow 1.11's release images and manifests leave "unknown"."""

    host: str
    version: str  # "unknown" when the server does not say
    multi_user: bool
    ui_version: str = ""  # the UI's own release (frontendTagName), when the UI answered


def _server(host: str, data: Mapping[str, Any]) -> Server:
    """A :class:`Server` from either health answer (see :class:`Server`)."""
    if data.get("apiServerReady") is False:  # the UI answered, its API server did not
        raise KubeflowError(f"Kubeflow Pipelines at {host} is unhealthy: its UI answers {HEALTHZ_PATH} but "
                            "reports the API server not ready (apiServerReady false)")
    version = str(data.get("tag_name") or data.get("apiServerTagName") or "unknown")
    multi = data.get("multi_user", data.get("apiServerMultiUser"))
    return Server(host, version, bool(multi), str(data.get("frontendTagName") or ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer (the login page), not something to follow


def check_host(host: str, credentials: Credentials | None = None, timeout: float = CONNECT_TIMEOUT_S) -> Server:
    """Normalise ``host`` and ask its KFP API for health and version, with ``credentials``.

    Raises:
        KubeflowError: unreachable; a login page (a redirect, or HTML where JSON belongs: a multi-user
            Kubeflow's gateway without valid credentials); refused (401/403); no KFP API (404); unhealthy.
    """
    host = _clean_host(host)
    creds = credentials or Credentials()
    # A Kubernetes-issued token passes only the m2m-dex-and-kind/-eks overlays; m2m-dex-only (the `example`
    # install) rejects it with 401 (kubeflow/manifests v1.11.0; docs/KUBEFLOW.md).
    login_hint = (f"log in with --token (or ${TOKEN_ENV}: `kubectl create token default-editor -n NAMESPACE "
                  f"--audience pipelines.kubeflow.org` works with the m2m-dex-and-kind/-eks overlays only, see "
                  f"docs/KUBEFLOW.md) or --cookies from a logged-in browser")
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(host + HEALTHZ_PATH, headers=creds.headers())
    try:
        with opener.open(request, timeout=timeout) as resp:
            body = resp.read()
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        if e.code in (301, 302, 303, 307, 308):
            where = urllib.parse.urlsplit(e.headers.get("Location", "")).path or "another page"
            raise KubeflowError(f"Kubeflow at {host} redirects to a login page ({where}) with "
                                f"{'no credentials' if creds.source == 'none' else creds.source}: "
                                f"{login_hint}") from None
        if e.code == 401 and creds.source == "none":  # oauth2-proxy's answer to an API call without a login
            raise KubeflowError(f"Kubeflow Pipelines at {host} needs a login (HTTP 401 with no credentials): "
                                f"{login_hint}") from None
        if e.code in (401, 403):
            raise KubeflowError(f"Kubeflow Pipelines at {host} refused the credentials from {creds.source} "
                                f"(HTTP {e.code}): {login_hint}") from None
        if e.code == 404:
            raise KubeflowError(f"{host} answers but has no Kubeflow Pipelines API ({HEALTHZ_PATH}: "
                                "HTTP 404); point --host at the KFP API or UI endpoint") from None
        raise KubeflowError(
            f"Kubeflow Pipelines at {host} is unhealthy: HTTP {e.code} on {HEALTHZ_PATH}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError
    except ValueError:
        looks_html = "html" in ctype.lower() or body.lstrip()[:1] == b"<"
        if looks_html:
            raise KubeflowError(f"Kubeflow at {host} answered {HEALTHZ_PATH} with a web page (a login page?), "
                                f"not the KFP API: {login_hint}") from None
        raise KubeflowError(f"{host}{HEALTHZ_PATH} did not answer JSON: is --host the KFP API?") from None
    return _server(host, data)


def check_version(server: Server, allow_unknown: bool = False) -> str:
    """Refuse a KFP backend that reports a version older than the pipeline's minimum
    (:data:`compat.MINIMUM_BACKEND`); ``allow_unknown`` (``--skip-version-check``) skips the check.

    A server that does not report its version (stock Kubeflow 1.11: "unknown", see :class:`Server`) is never
    refused: nothing in the API tells the backend's features apart, so this returns a one-line warning (also
    logged) and the run goes ahead; "" otherwise.
    """
    need = version_text(MINIMUM_BACKEND)
    if allow_unknown:
        return ""
    try:
        have = parse_version(server.version)
    except ValueError:
        ui = f", its UI is {server.ui_version}" if server.ui_version and server.ui_version != "unknown" else ""
        warning = (f"Kubeflow Pipelines at {server.host} does not report its version ({server.version!r}{ui}); "
                   f"submitting anyway: the pipeline needs KFP {need}+ (Kubeflow {MINIMUM_KUBEFLOW}+), "
                   "check with `polydistill compile --check VERSION` (--skip-version-check silences this)")
        logging.getLogger("polydistill.submit").warning("%s", warning)
        return warning
    if have < MINIMUM_BACKEND:
        raise KubeflowError(f"Kubeflow Pipelines at {server.host} is {server.version}; the pipeline needs {need} or "
                            f"newer (Kubeflow {MINIMUM_KUBEFLOW}+): older backends reject or mishandle its DAG "
                            "(see polydistill_kfp.compat)")
    return ""


def resolve_namespace(server: Server, namespace: str | None) -> str | None:
    """The profile namespace to use: ``--namespace``, else the pod's own inside a cluster; required on a
    multi-user server, where every experiment, pipeline and run lives in one."""
    ns = (namespace or "").strip()
    if not ns and Path(POD_NAMESPACE_PATH).is_file():
        ns = Path(POD_NAMESPACE_PATH).read_text().strip()
    if ns and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", ns):
        raise KubeflowError(f"--namespace {ns!r} is not a Kubernetes namespace name (lower-case letters, digits, '-')")
    if server.multi_user and not ns:
        raise KubeflowError(f"Kubeflow Pipelines at {server.host} is multi-user: pass --namespace YOUR_PROFILE "
                            "(the namespace of your Kubeflow profile)")
    return ns or None


@dataclass(frozen=True)
class Connection:
    """A checked connection: the server, the namespace every call uses, and the kfp client."""

    server: Server
    namespace: str | None
    client: Any

    @property
    def host(self) -> str:
        return self.server.host


def connect(host: str, namespace: str | None = None, credentials: Credentials | None = None,
            skip_version_check: bool = False) -> Connection:
    """Check ``host`` (health, login, version, namespace) and open a kfp client on it."""
    creds = credentials or Credentials()
    server = check_host(host, creds)
    check_version(server, allow_unknown=skip_version_check)
    ns = resolve_namespace(server, namespace)
    return Connection(server, ns, _client(server.host, creds, ns))


def _client(host: str, credentials: Credentials, namespace: str | None) -> Any:
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 ..."
        # A namespace other than kfp's "kubeflow" default keeps the client from probing and from writing
        # ~/.config/kfp/context.json.
        return kfp.Client(host=host, existing_token=credentials.token, cookies=credentials.cookies,
                          namespace=namespace or "kubeflow")


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
                             f"{' '.join(str(detail).split())[:300]}")
    return KubeflowError(f"{what} on Kubeflow Pipelines at {host} failed: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}")


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Refuse, before anything is sent, pipeline parameters that would publish a secret (parameters are shown
    to everyone who can read the run, so credentials come from the Secret and ConfigMap on the cluster) and a
    store URI that ``run`` would refuse (the same check, :func:`polydistill.store.check_store_uri`)."""
    from polydistill.store import StoreConfigError, check_store_uri

    for name, value in arguments.items():
        if isinstance(value, str) and "://" in value and urllib.parse.urlsplit(value).username:
            raise KubeflowError(
                f"parameter {name} ({redact_uri(value)!r}) carries credentials; pipeline parameters are visible "
                "in the Kubeflow UI: drop them from the URI and give them to the pods "
                "(MLFLOW_TRACKING_USERNAME/PASSWORD or the mlpipeline-minio-artifact Secret)")
    if arguments.get("store_uri"):
        try:
            check_store_uri(str(arguments["store_uri"]))
        except StoreConfigError as e:
            raise KubeflowError(f"--store: {e}") from None


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


def _named(display_name: str) -> str:
    """The API's list filter for objects named ``display_name`` exactly."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": display_name}]})


def _pipeline_id(conn: Connection, name: str) -> str | None:
    """The id of the pipeline named ``name`` visible in the connection's namespace (its own or shared)."""
    flt = _named(name)
    try:
        found = conn.client.list_pipelines(filter=flt, page_size=2, namespace=conn.namespace).pipelines or []
    except Exception as e:
        raise _api_error(f"looking up pipeline {name!r}", conn.host, e) from None
    if len(found) > 1:
        raise KubeflowError(f"Kubeflow Pipelines at {conn.host} has {len(found)} pipelines named {name!r}; "
                            "pass --pipeline-name to choose another name")
    return found[0].pipeline_id if found else None


def upload(conn: Connection, variant: str, pipeline_name: str | None = None,
           version_name: str | None = None, images: Images | None = None) -> Upload:
    """Compile ``variant`` (its tasks in ``images``, default the tags in
    ``src/polydistill_kfp/components/IMAGE[_CUDA]``) and upload it as pipeline ``pipeline_name`` (default: the
    variant's name) in the connection's namespace, or as a new version ``version_name`` of it when it exists."""
    name = pipeline_name or variant
    version = version_name or default_version_name()
    host = conn.host
    with tempfile.TemporaryDirectory(prefix="polydistill-submit-") as tmp:
        package = compile_pipeline(variant, Path(tmp) / compiled_name(variant), images)
        pipeline_id = _pipeline_id(conn, name)
        if pipeline_id is None:
            try:
                created = conn.client.upload_pipeline(str(package), pipeline_name=name,
                                                      description=f"polydistill ({variant})",
                                                      namespace=conn.namespace)
            except Exception as e:
                raise _api_error(f"uploading pipeline {name!r}", host, e) from None
            pipeline_id = created.pipeline_id
            # Uploading a pipeline also creates its first version (named like the pipeline): run that one.
            try:
                versions = conn.client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            except Exception as e:
                raise _api_error(f"listing versions of pipeline {name!r}", host, e) from None
            if not versions.pipeline_versions:
                raise KubeflowError(
                    f"Kubeflow Pipelines at {host} created pipeline {name!r} without a version")
            first = versions.pipeline_versions[0]
            return Upload(pipeline_id, first.pipeline_version_id, name, first.display_name or name, True)
        try:
            created_version = conn.client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id)
        except Exception as e:
            raise _api_error(f"uploading version {version!r} of pipeline {name!r}", host, e) from None
        return Upload(pipeline_id, created_version.pipeline_version_id, name, version, False)


def _experiment_id(conn: Connection, experiment: str) -> str:
    try:
        # Returns the existing one if any (looked up in the same namespace).
        return conn.client.create_experiment(experiment, namespace=conn.namespace).experiment_id
    except Exception as e:
        raise _api_error(f"creating experiment {experiment!r}", conn.host, e) from None


@dataclass
class Submission:
    """What ``submit`` or ``schedule`` created."""

    host: str
    upload: Upload
    experiment_id: str
    run_id: str | None = None
    recurring_run_id: str | None = None
    namespace: str | None = None
    replaced: list[str] = dataclasses.field(default_factory=list)  # recurring runs of the same name this one replaced

    def url(self) -> str:
        """The Kubeflow UI page of the run or recurring run."""
        if self.run_id:
            return f"{self.host}/#/runs/details/{self.run_id}"
        return f"{self.host}/#/recurringrun/details/{self.recurring_run_id}"


@dataclass(frozen=True)
class Target:
    """Where and as whom to submit: the host, the profile namespace and the credentials."""

    host: str
    namespace: str | None = None
    credentials: Credentials = Credentials()
    skip_version_check: bool = False

    def connect(self) -> Connection:
        return connect(self.host, self.namespace, self.credentials, self.skip_version_check)


def submit(
    target: Target,
    arguments: Mapping[str, Any],
    experiment: str = "polydistill",
    variant: str = "polydistill",
    pipeline_name: str | None = None,
    version_name: str | None = None,
    run_name: str | None = None,
    service_account: str | None = None,
    images: Images | None = None,
) -> Submission:
    """Upload the pipeline (or a new version) and start one run with ``arguments`` (pipeline parameters),
    after checking the arguments, the host, its version and the namespace."""
    check_arguments(arguments)
    conn = target.connect()
    up = upload(conn, variant, pipeline_name, version_name, images)
    exp_id = _experiment_id(conn, experiment)
    name = run_name or f"{up.pipeline_name} {up.version_name}"
    try:
        run = conn.client.run_pipeline(experiment_id=exp_id, job_name=name, params=dict(arguments),
                                       pipeline_id=up.pipeline_id, version_id=up.version_id,
                                       service_account=service_account)
    except Exception as e:
        raise _api_error(f"starting run {name!r}", conn.host, e) from None
    return Submission(conn.host, up, exp_id, run_id=run.run_id, namespace=conn.namespace)


def schedule(
    target: Target,
    cron: str,
    arguments: Mapping[str, Any],
    experiment: str = "polydistill",
    variant: str = "polydistill",
    pipeline_name: str | None = None,
    version_name: str | None = None,
    job_name: str | None = None,
    max_concurrency: int = 1,
    service_account: str | None = None,
    images: Images | None = None,
) -> Submission:
    """Upload the pipeline (or a new version) and create the recurring run ``job_name`` on ``cron``
    (validated first), replacing any recurring run of that name in the experiment.

    ``arguments`` get :data:`polydistill.config.SCHEDULE_DEFAULTS` (warm start from the champion, seeds
    derived from each run's id) unless they set those parameters. KFP's v2beta1 API has no update of a
    recurring run (``backend/api/v2beta1/recurring_run.proto``: Create, Get, List, Enable, Disable, Delete),
    so "replace" is: create the new one, then delete the old ones; if the create fails the old one stays,
    so there is never no schedule. An old one that cannot be deleted is disabled instead."""
    from polydistill.config import SCHEDULE_DEFAULTS

    cron = validate_cron(cron)  # before anything reaches the server
    if max_concurrency < 1:
        raise KubeflowError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    arguments = {**SCHEDULE_DEFAULTS, **arguments}
    check_arguments(arguments)
    conn = target.connect()
    up = upload(conn, variant, pipeline_name, version_name, images)
    exp_id = _experiment_id(conn, experiment)
    name = job_name or f"{up.pipeline_name} retraining"
    old = [j for j in _recurring_runs(conn, exp_id) if j.display_name == name]
    try:
        job = conn.client.create_recurring_run(
            experiment_id=exp_id, job_name=name, cron_expression=cron, params=dict(arguments),
            pipeline_id=up.pipeline_id, version_id=up.version_id, max_concurrency=max_concurrency,
            no_catchup=True, service_account=service_account,
        )
    except Exception as e:
        raise _api_error(f"creating recurring run {name!r}", conn.host, e) from None
    replaced = [_remove_recurring_run(conn, j.recurring_run_id, name) for j in old]
    return Submission(conn.host, up, exp_id, recurring_run_id=job.recurring_run_id, namespace=conn.namespace,
                      replaced=replaced)


def _recurring_runs(conn: Connection, experiment_id: str | None = None) -> list[Any]:
    """Every recurring run visible in the connection's namespace (of one experiment when given), all pages."""
    out: list[Any] = []
    token = ""
    try:
        while True:
            page = conn.client.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment_id,
                                                   namespace=conn.namespace)
            out.extend(page.recurring_runs or [])
            token = page.next_page_token or ""
            if not token:
                return out
    except Exception as e:
        raise _api_error("listing recurring runs", conn.host, e) from None


def _remove_recurring_run(conn: Connection, recurring_run_id: str, name: str) -> str:
    """Delete a recurring run (disable it when the delete is refused); returns its id."""
    try:
        conn.client.delete_recurring_run(recurring_run_id)
        return recurring_run_id
    except Exception as e:
        try:
            conn.client.disable_recurring_run(recurring_run_id)
        except Exception:
            raise _api_error(f"deleting or disabling recurring run {name!r} ({recurring_run_id})", conn.host,
                             e) from None
        return recurring_run_id


@dataclass
class Schedule:
    """One recurring run as ``schedule --list`` shows it."""

    recurring_run_id: str
    name: str
    cron: str
    status: str
    experiment_id: str


def list_schedules(target: Target, experiment: str | None = None) -> list[Schedule]:
    """The recurring runs in the target's namespace (of ``experiment`` when given), by name."""
    conn = target.connect()
    exp_id = _find_experiment(conn, experiment) if experiment else None
    if experiment and exp_id is None:
        return []
    jobs = _recurring_runs(conn, exp_id)
    return sorted((Schedule(j.recurring_run_id, j.display_name or "", _cron_of(j), str(j.status or ""),
                            j.experiment_id or "") for j in jobs), key=lambda s: (s.name, s.recurring_run_id))


def delete_schedule(target: Target, name_or_id: str, experiment: str | None = None) -> list[str]:
    """Delete the recurring runs named (or with id) ``name_or_id``; returns their ids.

    Raises:
        KubeflowError: none matches (the message lists the names there are).
    """
    conn = target.connect()
    exp_id = _find_experiment(conn, experiment) if experiment else None
    jobs = _recurring_runs(conn, exp_id)
    hits = [j for j in jobs if name_or_id in (j.display_name, j.recurring_run_id)]
    if not hits:
        names = sorted({j.display_name for j in jobs if j.display_name})
        raise KubeflowError(f"no recurring run named {name_or_id!r} at {conn.host}; there are: "
                            f"{', '.join(names) or 'none'} (schedule --list shows them)")
    for j in hits:
        try:
            conn.client.delete_recurring_run(j.recurring_run_id)
        except Exception as e:
            raise _api_error(f"deleting recurring run {name_or_id!r}", conn.host, e) from None
    return [j.recurring_run_id for j in hits]


def _find_experiment(conn: Connection, experiment: str) -> str | None:
    flt = _named(experiment)
    try:
        found = conn.client.list_experiments(filter=flt, page_size=2, namespace=conn.namespace).experiments or []
    except Exception as e:
        raise _api_error(f"looking up experiment {experiment!r}", conn.host, e) from None
    return found[0].experiment_id if found else None


def _cron_of(job: Any) -> str:
    trigger = getattr(job, "trigger", None)
    cron = getattr(trigger, "cron_schedule", None) if trigger else None
    return str(getattr(cron, "cron", "") or "")
