"""``polydistill submit`` and ``schedule`` against a STAND-IN for the Kubeflow Pipelines API server.

No Kubernetes cluster or Kubeflow installation runs on the development machines, so these tests do not
talk to a real KFP. Instead a small HTTP server on 127.0.0.1 (:class:`StandInKfp`) implements the REST
endpoints of the v2beta1 API that ``kfp.Client`` 2.17 calls for these commands (paths and JSON field names
from ``kfp/client/client.py`` and the generated ``kfp_server_api`` package): healthz, pipelines (list by
name, upload, upload_version, list versions), experiments (list by name, create), runs and recurring runs.

It behaves like a real server where these commands meet it (kubeflow/pipelines at 2.15-2.17):

- ``healthz`` answers ``commit_sha``, ``tag_name`` (the version) and ``multi_user``
  (``backend/src/apiserver/main.go``, ``healthzResponse``);
- in **multi-user** mode (:meth:`StandInKfp.make_multi_user`: Kubeflow 1.11) it sits behind Kubeflow's
  gateway under ``/pipeline``, where ``ml-pipeline-ui`` answers healthz (``frontend/server/handlers/
  healthz.ts``: ``apiServerTagName``, ``apiServerMultiUser``, ``apiServerReady``, no ``tag_name``) and the
  API server's tag is "unknown" (``backend/Dockerfile``: ``ARG TAG_NAME=unknown``); an API request without a
  valid bearer token or session cookie gets 401, as oauth2-proxy answers ``/apis/`` (``unauthenticated``
  "redirect": the 302 to the login a browser path gets); a known identity may only use the namespaces of
  its profiles;
- its errors are the API server's: an experiment with no namespace in multi-user mode is rejected
  (``experiment_server.go``: "An experiment cannot have an empty namespace in multi-user mode", HTTP 400),
  a namespace the user may not use gives ``PermissionDenied`` (``resource_manager.go``: "User '...' is not
  authorized with reason: ...", HTTP 403), grpc-gateway's ``{"error", "code", "message"}`` JSON.

It records every request (with its auth headers), so the tests check what reached the server. What a real
server does beyond that (SubjectAccessReviews, compiling to Argo, scheduling) is out of reach here.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import yaml
from click.testing import CliRunner

from polydistill.cli import main
from polydistill_kfp.submit import KubeflowError, validate_cron

API = "/apis/v2beta1"


@dataclass
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = None  # parsed JSON, or {"fields": ..., "files": {name: bytes}} for uploads
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class StandInKfp:
    """State and request log of the stand-in KFP API server."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    recurring_runs: list[dict[str, Any]] = field(default_factory=list)
    # (method, path suffix) -> (HTTP status, message): answer that request with an error instead.
    reject: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    version: str = "2.15.0"
    multi_user: bool = False
    prefix: str = ""  # "/pipeline" behind Kubeflow's gateway
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token -> user
    sessions: dict[str, str] = field(default_factory=dict)  # oauth2_proxy_kubeflow cookie -> user
    access: dict[str, set[str]] = field(default_factory=dict)  # user -> namespaces of their profiles
    ui_healthz: bool = False  # healthz answered by ml-pipeline-ui (through Kubeflow's gateway)
    ui_version: str = ""  # the UI's frontendTagName
    unauthenticated: str = "401"  # how the gateway answers a request without a login: "401" or "redirect"

    def calls(self, method: str, suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == self.prefix + API + suffix]

    def make_multi_user(self) -> StandInKfp:
        """Kubeflow 1.11 with one profile: user alice@example.com (token ``tok-alice``, session ``sess-alice``)
        owns namespace ``alice``; namespace ``bob`` exists but is not hers. Healthz comes from the UI, with
        the stock API server's "unknown" tag."""
        self.multi_user, self.prefix = True, "/pipeline"
        self.ui_healthz, self.version = True, "unknown"
        self.tokens["tok-alice"] = self.sessions["sess-alice"] = "alice@example.com"
        self.access["alice@example.com"] = {"alice"}
        return self

    @property
    def host(self) -> str:
        return self.url + self.prefix


def _display_name_filter(query: dict[str, list[str]]) -> str | None:
    raw = query.get("filter", [None])[0]
    if not raw:
        return None
    for p in json.loads(raw).get("predicates", []):
        if p.get("key") in ("display_name", "name"):
            return p.get("string_value") or p.get("stringValue")
    return None


def _multipart(content_type: str, data: bytes) -> dict[str, Any]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data
    )
    files, fields = {}, {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename():
            files[name] = part.get_payload(decode=True)
        else:
            fields[name] = part.get_content()
    return {"fields": fields, "files": files}


class _StandInHandler(BaseHTTPRequestHandler):
    """The stand-in's HTTP handler; :func:`_handler` binds it to one server's self.state."""

    state: StandInKfp

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.state.tokens.get(auth.removeprefix("Bearer ").strip())
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "oauth2_proxy_kubeflow" and value in self.state.sessions:
                return self.state.sessions[value]
        return None

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        body: Any = None
        if raw and ctype.startswith("multipart/form-data"):
            body = _multipart(ctype, raw)
        elif raw:
            body = json.loads(raw)
        self.state.requests.append(Request(method, parts.path, query, body,
                                     {k.lower(): v for k, v in self.headers.items()}))
        user = self._user()
        if self.state.multi_user and user is None:
            if self.state.unauthenticated == "401":  # oauth2-proxy on an API path: no redirect
                data = b"Unauthorized"
                self.send_response(401)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            # Kubeflow's gateway (oauth2-proxy) sends a browser without a session to the login.
            self.send_response(302)
            self.send_header("Location", f"/oauth2/start?rd={quote(self.path)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not parts.path.startswith(self.state.prefix + API):
            return self._send(404, {"error": "Not Found", "code": 5, "message": "Not Found"})
        path = parts.path[len(self.state.prefix):]
        for (m, suffix), (status, message) in self.state.reject.items():
            if m == method and path == API + suffix:
                return self._send(status, {"error": message, "code": 3, "message": message})
        try:
            status, payload = self._route(method, path, query, body, user)
        except _ApiError as e:
            status, payload = e.status, {"error": e.message, "code": e.code, "message": e.message}
        except KeyError as e:
            status, payload = 404, {"error": f"not found: {e}", "code": 5, "message": f"not found: {e}"}
        self._send(status, payload)

    def _authorize(self, user: str | None, namespace: str | None, verb: str, resource: str) -> None:
        if not self.state.multi_user:
            return
        if not namespace:
            raise _ApiError(400, 3, f"Invalid input error: a {resource} needs a namespace in multi-user mode")
        if namespace not in self.state.access.get(user or "", set()):
            raise _ApiError(403, 7, f"User '{user}' is not authorized with reason: no RBAC policy matched "
                                    f"(request: &ResourceAttributes{{Namespace:{namespace},Verb:{verb},"
                                    f"Group:pipelines.kubeflow.org,Resource:{resource}}})")

    def _visible(self, pipeline: dict[str, Any], user: str | None) -> bool:
        ns = pipeline.get("namespace")
        return not self.state.multi_user or not ns or ns in self.state.access.get(user or "", set())

    def _route(self, method: str, path: str, query: dict, body: Any, user: str | None) -> tuple[int, Any]:
        ns = query.get("namespace", [None])[0] or None
        if method == "GET" and path == f"{API}/healthz" and self.state.ui_healthz:
            return 200, {"apiServerCommitHash": "0123abc", "apiServerTagName": self.state.version,
                         "apiServerMultiUser": self.state.multi_user, "multi_user": self.state.multi_user,
                         "apiServerReady": True, "buildDate": "", "frontendCommitHash": "0123abc",
                         "frontendTagName": self.state.ui_version, "pipelineStore": "database"}
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"commit_sha": "0123abc", "tag_name": self.state.version, "multi_user": self.state.multi_user,
                         "pipeline_store": "database"}
        if path.startswith(f"{API}/pipelines"):
            return self._pipelines(method, path, query, user, ns)
        if path == f"{API}/experiments":
            return self._experiments(method, query, body, user, ns)
        if method == "POST" and path in (f"{API}/runs", f"{API}/recurringruns"):
            return self._create_run(path, body, user)
        if path.startswith(f"{API}/recurringruns"):
            return self._recurring(method, path, query, user)
        raise KeyError(f"{method} {path}")

    def _pipelines(self, method: str, path: str, query: dict, user: str | None, ns: str | None) -> tuple[int, Any]:
        if method == "GET" and path == f"{API}/pipelines":
            if ns:
                self._authorize(user, ns, "list", "pipelines")
            name = _display_name_filter(query)
            found = [p for p in self.state.pipelines.values() if (name is None or p["display_name"] == name)
                     and p.get("namespace") in (None, ns)]
            return 200, {"pipelines": found, "total_size": len(found)}
        if method == "POST" and path == f"{API}/pipelines/upload":
            if ns:
                self._authorize(user, ns, "create", "pipelines")
            name = query["name"][0]
            pid = str(uuid.uuid4())
            self.state.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "name": name,
                                    **({"namespace": ns} if ns else {})}
            self.state.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()),
                                    "display_name": name, "name": name}]
            return 200, self.state.pipelines[pid]
        if method == "POST" and path == f"{API}/pipelines/upload_version":
            pid = query["pipelineid"][0]
            if pid not in self.state.pipelines or not self._visible(self.state.pipelines[pid], user):
                raise KeyError(pid)
            name = query["name"][0]
            v = {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                 "name": name}
            self.state.versions[pid].append(v)
            return 200, v
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pid = path[len(f"{API}/pipelines/"):-len("/versions")]
            if not self._visible(self.state.pipelines[pid], user):
                raise KeyError(pid)
            newest_first = list(reversed(self.state.versions[pid]))
            return 200, {"pipeline_versions": newest_first, "total_size": len(newest_first)}
        raise KeyError(f"{method} {path}")

    def _experiments(self, method: str, query: dict, body: Any, user: str | None, ns: str | None) -> tuple[int, Any]:
        if method == "GET":
            self._authorize(user, ns, "list", "experiments")
            name = _display_name_filter(query)
            found = [e for e in self.state.experiments.values() if (name is None or e["display_name"] == name)
                     and (not self.state.multi_user or e.get("namespace") == ns)]
            return 200, {"experiments": found, "total_size": len(found)}
        if method == "POST":
            if self.state.multi_user and not body.get("namespace"):
                raise _ApiError(400, 3, "Invalid input error: An experiment cannot have an empty namespace "
                                        "in multi-user mode")
            self._authorize(user, body.get("namespace"), "create", "experiments")
            eid = str(uuid.uuid4())
            self.state.experiments[eid] = {"experiment_id": eid, "display_name": body["display_name"],
                                      "namespace": body.get("namespace") or ""}
            return 200, self.state.experiments[eid]
        raise KeyError(f"{method} experiments")

    def _create_run(self, path: str, body: Any, user: str | None) -> tuple[int, Any]:
        exp = self.state.experiments.get(body.get("experiment_id") or "")
        if self.state.multi_user:
            if exp is None:
                raise _ApiError(400, 3, "Invalid input error: a run needs an experiment in multi-user mode")
            self._authorize(user, exp["namespace"], "create", path.rsplit("/", 1)[1])
        if path.endswith("/runs"):
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.state.runs.append(run)
            return 200, run
        job = {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED",
               "namespace": (exp or {}).get("namespace", "")}
        self.state.recurring_runs.append(job)
        return 200, job

    def _recurring(self, method: str, path: str, query: dict, user: str | None) -> tuple[int, Any]:
        # As backend/api/v2beta1/recurring_run.proto: List (GET, experiment_id/namespace/page_token/
        # page_size; the response's list field is `recurringRuns`), Get (GET /{id}), Delete (DELETE /{id}),
        # Disable (POST /{id}:disable). There is no update call.
        if method == "GET" and path == f"{API}/recurringruns":
            ns = query.get("namespace", [None])[0] or None
            exp = query.get("experiment_id", [None])[0] or None
            if exp is not None:  # the experiment's namespace (job_server.go listJobs); kfp sends no other
                ns = self.state.experiments[exp]["namespace"] or None
            if self.state.multi_user:
                self._authorize(user, ns, "list", "recurringruns")
            found = [j for j in self.state.recurring_runs if (exp is None or j.get("experiment_id") == exp)
                     and (not self.state.multi_user or j.get("namespace") == ns)]
            size = int(query.get("page_size", ["10"])[0])
            start = int(query.get("page_token", ["0"])[0] or 0)
            page = found[start:start + size]
            token = str(start + size) if start + size < len(found) else ""
            return 200, {"recurringRuns": page, "total_size": len(found), "next_page_token": token}
        rid = path[len(f"{API}/recurringruns/"):]
        action = ""
        if rid.endswith(":disable"):
            rid, action = rid[: -len(":disable")], "disable"
        job = next(j for j in self.state.recurring_runs if j["recurring_run_id"] == rid) if any(
            j["recurring_run_id"] == rid for j in self.state.recurring_runs) else None
        if job is None:
            raise _ApiError(404, 5, f"Not found: recurring run {rid}")
        if self.state.multi_user:
            self._authorize(user, job.get("namespace"), "delete" if method == "DELETE" else "get",
                            "recurringruns")
        if method == "GET" and not action:
            return 200, job
        if method == "DELETE":
            self.state.recurring_runs.remove(job)
            return 200, {}
        if method == "POST" and action == "disable":
            job["status"], job["mode"] = "DISABLED", "DISABLE"
            return 200, {}
        raise KeyError(f"{method} {path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def _handler(state: StandInKfp) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to ``state`` (one per stand-in server)."""
    return type("Handler", (_StandInHandler,), {"state": state})


@pytest.fixture
def kfp_api() -> Iterator[StandInKfp]:
    """A stand-in KFP API server on 127.0.0.1 (see the module docstring); yields its state."""
    state = StandInKfp()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _isolated_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads and may write ~/.config/kfp/context.json, and credentials come from the environment:
    keep both away from the real ones."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    import kfp.client.client as kc

    monkeypatch.setattr(kc.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "home" / "kfp-context.json"))


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _uploaded_yaml(req: Request) -> dict[str, Any]:
    data = req.body["files"]["uploadfile"]
    return next(yaml.safe_load_all(data))


def test_submit_uploads_pipeline_and_starts_run_with_parameters(kfp_api: StandInKfp) -> None:
    res = _invoke("submit", "--host", kfp_api.url, "--experiment", "exp-a", "--profile", "smoke",
                  "--games", "Pong,Breakout", "--store", "s3://bucket/prefix", "--teacher-steps", "1234",
                  "--tau", "0.05", "--distill-loss", "nll", "--run-name", "nightly")
    assert res.exit_code == 0, res.output
    assert "uploaded pipeline 'polydistill'" in res.output

    uploads = kfp_api.calls("POST", "/pipelines/upload")
    assert len(uploads) == 1
    assert uploads[0].query["name"] == ["polydistill"]
    spec = _uploaded_yaml(uploads[0])
    assert spec["pipelineInfo"]["name"] == "polydistill"
    assert "teacher_steps" in spec["root"]["inputDefinitions"]["parameters"]
    assert kfp_api.calls("POST", "/pipelines/upload_version") == []  # the first upload made the version

    assert [e["display_name"] for e in kfp_api.experiments.values()] == ["exp-a"]
    (run,) = kfp_api.runs
    pid = next(iter(kfp_api.pipelines))
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == next(iter(kfp_api.experiments))
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pid, "pipeline_version_id": kfp_api.versions[pid][0]["pipeline_version_id"]}
    assert run["runtime_config"]["parameters"] == {
        "profile": "smoke", "games": ["Pong", "Breakout"], "store_uri": "s3://bucket/prefix",
        "experiment": "exp-a", "teacher_steps": 1234, "tau": 0.05, "distill_loss": "nll",
    }
    assert run["run_id"] in res.output


def test_second_submit_uploads_a_new_version_and_runs_it(kfp_api: StandInKfp) -> None:
    assert _invoke("submit", "--host", kfp_api.url).exit_code == 0
    res = _invoke("submit", "--host", kfp_api.url, "--version", "v2-test", "--variant", "polydistill-paper",
                  "--pipeline-name", "polydistill")
    assert res.exit_code == 0, res.output
    assert len(kfp_api.calls("POST", "/pipelines/upload")) == 1
    (new_version,) = kfp_api.calls("POST", "/pipelines/upload_version")
    pid = next(iter(kfp_api.pipelines))
    assert new_version.query["name"] == ["v2-test"]
    assert new_version.query["pipelineid"] == [pid]
    assert _uploaded_yaml(new_version)["pipelineInfo"]["name"] == "polydistill-paper"
    second = kfp_api.runs[1]
    assert second["pipeline_version_reference"]["pipeline_version_id"] == kfp_api.versions[pid][1][
        "pipeline_version_id"]
    assert second["runtime_config"].get("parameters") in (None, {})  # nothing set: the pipeline's defaults
    assert len(kfp_api.experiments) == 1  # the existing experiment is reused


def _gpu_tasks(spec: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Executor label -> (image, accelerator) of an uploaded pipeline spec."""
    return {label: (ex["container"]["image"], ex["container"].get("resources", {}).get("accelerator"))
            for label, ex in spec["deploymentSpec"]["executors"].items()}


def test_submit_profile_paper_uploads_the_gpu_variant_in_the_images_given(kfp_api: StandInKfp) -> None:
    """Issue #31: --profile paper picks the GPU variant; --image/--image-cuda reach every task."""
    cpu = "127.0.0.1:5000/polydistill@sha256:" + "1" * 64
    cuda = "127.0.0.1:5000/polydistill@sha256:" + "2" * 64
    res = _invoke("submit", "--host", kfp_api.url, "--profile", "paper", "--image", cpu, "--image-cuda", cuda)
    assert res.exit_code == 0, res.output
    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    spec = _uploaded_yaml(upload)
    assert spec["pipelineInfo"]["name"] == "polydistill-paper"
    tasks = _gpu_tasks(spec)
    gpu = {label for label, (_, acc) in tasks.items() if acc}
    assert {label.removeprefix("exec-") for label in gpu} == {"train-teacher", "train-autoencoder", "distill"}
    assert all(image == (cuda if label in gpu else cpu) for label, (image, _) in tasks.items()), tasks
    assert kfp_api.runs[0]["runtime_config"]["parameters"] == {"profile": "paper"}


def test_submit_profile_cpu_stays_on_the_cpu_variant(kfp_api: StandInKfp) -> None:
    res = _invoke("submit", "--host", kfp_api.url, "--profile", "smoke", "--registry", "127.0.0.1:5000/team")
    assert res.exit_code == 0, res.output
    spec = _uploaded_yaml(kfp_api.calls("POST", "/pipelines/upload")[0])
    assert spec["pipelineInfo"]["name"] == "polydistill"
    tasks = _gpu_tasks(spec)
    assert {image for image, _ in tasks.values()} == {"127.0.0.1:5000/team/polydistill:0.1.0"}
    assert not any(acc for _, acc in tasks.values())


def test_a_bad_image_fails_before_anything_reaches_the_server(kfp_api: StandInKfp) -> None:
    res = CliRunner().invoke(main, ["submit", "--host", kfp_api.url, "--image", "Not An/Image"])
    assert res.exit_code == 2, res.output
    assert "--image 'Not An/Image' is not an image reference" in res.output
    assert kfp_api.requests == []


def test_schedule_sends_cron_and_parameters(kfp_api: StandInKfp) -> None:
    res = _invoke("schedule", "--host", kfp_api.url, "--cron", "0 30 2 * * MON-FRI", "--profile", "cpu",
                  "--latent-dim", "128", "--job-name", "weekday retrain", "--max-concurrency", "2")
    assert res.exit_code == 0, res.output
    (job,) = kfp_api.recurring_runs
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * MON-FRI"
    assert job["display_name"] == "weekday retrain"
    assert job["max_concurrency"] == "2" or job["max_concurrency"] == 2
    assert job["mode"] == "ENABLE"
    assert job["no_catchup"] is True
    # schedule's defaults: warm start from the champion, seeds from each run's id (config.SCHEDULE_DEFAULTS)
    assert job["runtime_config"]["parameters"] == {"profile": "cpu", "latent_dim": 128,
                                                   "warm_start": "champion", "seeds": "run"}
    pid = next(iter(kfp_api.pipelines))
    assert job["pipeline_version_reference"]["pipeline_id"] == pid
    assert job["recurring_run_id"] in res.output


def test_schedule_rejects_five_field_cron_before_sending(kfp_api: StandInKfp) -> None:
    res = CliRunner().invoke(main, ["schedule", "--host", kfp_api.url, "--cron", "0 3 * * *"])
    assert res.exit_code != 0
    assert "has 5 fields; Kubeflow wants 6" in res.output
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 61 * * * *", "minutes value 61 is outside 0-59"),
        ("* * * * * * *", "has 7 fields"),
        ("0 0 3 ? * *", None),
        ("0 0 3 * * ?", None),
        ("0 0 ? * * *", "'?' is only allowed"),
        ("0 */15 9-17 * JAN-MAR,SEP MON-FRI", None),
        ("0 0 12 1 1/0 *", "step '0' must be a positive number"),
        ("0 0 10-2 * * *", "runs backwards"),
        ("0 0 3 * * FUNDAY", "not a number"),
        ("@daily", None),
        ("@every 1h30m", None),
        ("@sometimes", "unknown descriptor"),
        ("", "empty cron"),
    ],
)
def test_validate_cron(expr: str, message: str | None) -> None:
    if message is None:
        assert validate_cron(expr) == expr
    else:
        with pytest.raises(KubeflowError, match=message.replace("?", r"\?").replace("*", r"\*")):
            validate_cron(expr)


def test_unreachable_host_gives_one_line_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(main, ["submit", "--host", f"http://127.0.0.1:{port}"])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("polydistill: error: cannot reach Kubeflow Pipelines at "
                                                       f"http://127.0.0.1:{port}")
    assert "Traceback" not in res.output


def test_rejected_request_gives_status_and_server_message(kfp_api: StandInKfp) -> None:
    kfp_api.reject[("POST", "/runs")] = (400, "Invalid input error: parameter games must be a list")
    res = CliRunner().invoke(main, ["submit", "--host", kfp_api.url])
    assert res.exit_code != 0
    assert "rejected starting run" in res.output
    assert "(HTTP 400): Invalid input error: parameter games must be a list" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("polydistill: error:")]) == 1
    assert "Traceback" not in res.output


def test_host_without_kfp_api_is_named(kfp_api: StandInKfp) -> None:
    res = CliRunner().invoke(main, ["submit", "--host", kfp_api.url + "/not-kfp"])
    assert res.exit_code != 0
    assert "no Kubeflow Pipelines API" in res.output


def test_bad_hyperparameter_fails_before_contacting_the_host(kfp_api: StandInKfp) -> None:
    res = CliRunner().invoke(main, ["submit", "--host", kfp_api.url, "--subset-fraction", "3"])
    assert res.exit_code != 0
    assert "subset_fraction" in res.output
    assert kfp_api.requests == []


# ----------------------------------------------------------------------------------- multi-user Kubeflow


def _one_error_line(res: Any) -> str:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    # click's usage errors ("Error: ...") or a PolydistillError ("polydistill: error: ...")
    errors = [line for line in res.output.splitlines() if line.startswith(("Error:", "polydistill: error:"))]
    assert len(errors) == 1, res.output
    return errors[0]


def test_multi_user_login_with_token_uses_the_namespace_everywhere(kfp_api: StandInKfp) -> None:
    kfp_api.make_multi_user()
    res = _invoke("submit", "--host", kfp_api.host, "--namespace", "alice", "--token", "tok-alice",
                  "--profile", "smoke")
    assert res.exit_code == 0, res.output
    assert "tok-alice" not in res.output
    assert all(r.headers.get("authorization") == "Bearer tok-alice" for r in kfp_api.requests)
    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    assert upload.query["namespace"] == ["alice"]
    assert [e["namespace"] for e in kfp_api.experiments.values()] == ["alice"]
    (run,) = kfp_api.runs
    assert kfp_api.experiments[run["experiment_id"]]["namespace"] == "alice"
    assert "in namespace alice" in res.output


def test_multi_user_schedule_with_session_cookie_from_the_environment(kfp_api: StandInKfp, monkeypatch) -> None:
    kfp_api.make_multi_user()
    monkeypatch.setenv("KF_PIPELINES_COOKIES", "oauth2_proxy_kubeflow=sess-alice")
    res = _invoke("schedule", "--host", kfp_api.host, "--namespace", "alice", "--cron", "0 0 3 * * *")
    assert res.exit_code == 0, res.output
    (job,) = kfp_api.recurring_runs
    assert kfp_api.experiments[job["experiment_id"]]["namespace"] == "alice"
    assert "sess-alice" not in res.output


def test_service_account_token_file_is_used_inside_a_pod(kfp_api: StandInKfp, tmp_path, monkeypatch) -> None:
    kfp_api.make_multi_user()
    token = tmp_path / "sa-token"
    token.write_text("tok-alice\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    res = _invoke("submit", "--host", kfp_api.host, "--namespace", "alice")
    assert res.exit_code == 0, res.output
    assert kfp_api.calls("POST", "/runs")[0].headers["authorization"] == "Bearer tok-alice"


def test_missing_token_gets_oauth2_proxys_401_as_one_line(kfp_api: StandInKfp) -> None:
    kfp_api.make_multi_user()
    line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", kfp_api.host, "--namespace", "alice"]))
    assert "needs a login (HTTP 401 with no credentials)" in line
    assert "--token" in line and "m2m-dex-and-kind" in line  # which overlay a Kubernetes token needs
    assert [r.path for r in kfp_api.requests] == ["/pipeline/apis/v2beta1/healthz"]  # nothing else was sent


def test_missing_token_stops_at_a_login_redirect(kfp_api: StandInKfp) -> None:
    kfp_api.make_multi_user().unauthenticated = "redirect"
    line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", kfp_api.host, "--namespace", "alice"]))
    assert "redirects to a login page (/oauth2/start) with no credentials" in line
    assert [r.path for r in kfp_api.requests] == ["/pipeline/apis/v2beta1/healthz"]


def test_wrong_token_is_refused_and_never_printed(kfp_api: StandInKfp) -> None:
    """What m2m-dex-only's require-jwt policy does to a Kubernetes-issued token: 401."""
    kfp_api.make_multi_user()
    line = _one_error_line(CliRunner().invoke(
        main, ["submit", "--host", kfp_api.host, "--namespace", "alice", "--token", "tok-stolen-9f2"]))
    assert "refused the credentials from --token (HTTP 401)" in line
    assert "tok-stolen-9f2" not in line
    assert len(kfp_api.requests) == 1


def test_login_page_answered_in_place_of_json_is_named(kfp_api: StandInKfp) -> None:
    kfp_api.reject.clear()
    html_server = ThreadingHTTPServer(("127.0.0.1", 0), _login_page_handler())
    threading.Thread(target=html_server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{html_server.server_address[1]}"
        line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", host]))
    finally:
        html_server.shutdown()
        html_server.server_close()
    assert "with a web page (a login page?)" in line


def _login_page_handler() -> type[BaseHTTPRequestHandler]:
    class LoginPage(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            data = b"<!DOCTYPE html><html><body><form action='/dex/auth'>Log in</form></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return LoginPage


def test_wrong_namespace_is_refused_by_the_server(kfp_api: StandInKfp) -> None:
    kfp_api.make_multi_user()
    line = _one_error_line(CliRunner().invoke(
        main, ["submit", "--host", kfp_api.host, "--namespace", "bob", "--token", "tok-alice"]))
    assert "(HTTP 403)" in line
    assert "User 'alice@example.com' is not authorized" in line
    assert kfp_api.runs == [] and kfp_api.pipelines == {}


def test_multi_user_without_namespace_fails_before_any_call(kfp_api: StandInKfp) -> None:
    kfp_api.make_multi_user()
    line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", kfp_api.host, "--token", "tok-alice"]))
    assert "is multi-user: pass --namespace" in line
    assert [r.path for r in kfp_api.requests] == ["/pipeline/apis/v2beta1/healthz"]


def test_kubeflow_1_11_ui_healthz_with_a_valid_token_goes_through(kfp_api: StandInKfp, caplog) -> None:
    """Kubeflow 1.11: the UI answers healthz (no tag_name), the API server's tag is "unknown", oauth2-proxy
    401s an API call without a login. With a valid token the run starts, with one warning line."""
    kfp_api.make_multi_user()
    assert kfp_api.ui_healthz and kfp_api.version == "unknown"
    with caplog.at_level("WARNING", logger="polydistill.submit"):
        res = _invoke("submit", "--host", kfp_api.host, "--namespace", "alice", "--token", "tok-alice")
    assert res.exit_code == 0, res.output
    (run,) = kfp_api.runs
    assert run["run_id"] in res.output
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "polydistill.submit"]
    assert "does not report its version ('unknown')" in warning and "submitting anyway" in warning
    assert "\n" not in warning


def test_the_uis_healthz_is_read_for_version_and_mode(kfp_api: StandInKfp) -> None:
    from polydistill_kfp.submit import Credentials, check_host, check_version

    kfp_api.make_multi_user()
    kfp_api.version, kfp_api.ui_version = "2.14.0", "2.14.0"
    server = check_host(kfp_api.host, Credentials(token="tok-alice"))
    assert (server.version, server.multi_user, server.ui_version) == ("2.14.0", True, "2.14.0")
    with pytest.raises(KubeflowError, match=r"is 2\.14\.0; the pipeline needs 2\.15\.0"):
        check_version(server)  # a reported old version is still refused
    kfp_api.version = "unknown"
    assert "its UI is 2.14.0" in check_version(check_host(kfp_api.host, Credentials(token="tok-alice")))


@pytest.mark.parametrize("version", ["2.5.0", "2.14.0"])
def test_old_server_version_is_refused_naming_both(kfp_api: StandInKfp, version: str) -> None:
    kfp_api.version = version
    line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", kfp_api.host]))
    assert version in line and "needs 2.15.0 or newer (Kubeflow 1.11+)" in line
    assert [r.path for r in kfp_api.requests] == [API + "/healthz"]


def test_newer_server_version_is_accepted(kfp_api: StandInKfp) -> None:
    kfp_api.version = "2.17.0"
    assert _invoke("submit", "--host", kfp_api.host).exit_code == 0


def test_unknown_version_is_warned_about_not_refused(kfp_api: StandInKfp, caplog) -> None:
    kfp_api.version = "unknown"
    with caplog.at_level("WARNING", logger="polydistill.submit"):
        assert _invoke("submit", "--host", kfp_api.host).exit_code == 0
    assert any("does not report its version" in r.getMessage() for r in caplog.records)


def test_skip_version_check_skips_it(kfp_api: StandInKfp, caplog) -> None:
    kfp_api.version = "2.5.0"
    with caplog.at_level("WARNING", logger="polydistill.submit"):
        assert _invoke("submit", "--host", kfp_api.host, "--skip-version-check").exit_code == 0
    assert not [r for r in caplog.records if r.name == "polydistill.submit"]


def test_credentials_in_the_host_url_are_refused_and_never_printed(kfp_api: StandInKfp) -> None:
    host = kfp_api.url.replace("http://", "http://user:TOKEN-d1e2@")
    line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", host]))
    assert "carries credentials" in line and "TOKEN-d1e2" not in line
    assert kfp_api.requests == []


def test_tracking_uri_with_a_password_is_not_sent_as_a_parameter(kfp_api: StandInKfp) -> None:
    line = _one_error_line(CliRunner().invoke(
        main, ["submit", "--host", kfp_api.url, "--tracking-uri", "http://mlf:PASS-77@mlflow:5000"]))
    assert "tracking_uri" in line and "PASS-77" not in line
    assert kfp_api.requests == []


@pytest.mark.parametrize(("flags", "named"), [
    (["--teacher-steps", "-5"], "teacher_steps"),  # issue #23.6: any negative used to mean "the profile's"
    (["--store", "s3://b/../x"], "--store"),
    (["--store", "file:///a/./b"], "--store"),
])
def test_bad_parameters_are_refused_before_anything_is_sent(kfp_api: StandInKfp, flags: list[str],
                                                            named: str) -> None:
    line = _one_error_line(CliRunner().invoke(main, ["submit", "--host", kfp_api.url, *flags]))
    assert named in line
    assert kfp_api.requests == []


def test_store_with_credentials_is_not_sent_as_a_parameter(kfp_api: StandInKfp) -> None:
    line = _one_error_line(CliRunner().invoke(
        main, ["submit", "--host", kfp_api.url, "--store", "file:///tmp/x", "--tracking-uri",
               "https://TOKEN-abc@mlflow.example.com"]))
    assert "carries credentials" in line and "TOKEN-abc" not in line
    assert kfp_api.requests == []


def test_schedule_twice_replaces_the_recurring_run_of_the_same_name(kfp_api: StandInKfp) -> None:
    first = _invoke("schedule", "--host", kfp_api.url, "--cron", "0 0 3 * * *")
    assert first.exit_code == 0, first.output
    (old,) = kfp_api.recurring_runs
    assert old["display_name"] == "polydistill retraining"
    other = _invoke("schedule", "--host", kfp_api.url, "--cron", "0 0 4 * * *", "--job-name", "other")
    assert other.exit_code == 0, other.output
    res = _invoke("schedule", "--host", kfp_api.url, "--cron", "0 30 5 * * *", "--warm-start", "none")
    assert res.exit_code == 0, res.output
    names = sorted(j["display_name"] for j in kfp_api.recurring_runs)
    assert names == ["other", "polydistill retraining"]  # replaced, not added
    new = next(j for j in kfp_api.recurring_runs if j["display_name"] == "polydistill retraining")
    assert new["recurring_run_id"] != old["recurring_run_id"]
    assert new["trigger"]["cron_schedule"]["cron"] == "0 30 5 * * *"
    assert new["runtime_config"]["parameters"]["warm_start"] == "none"  # the user's choice wins
    assert old["recurring_run_id"] in res.output and "replaced" in res.output
    # created before the old one was deleted: never a moment without a schedule
    order = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kfp_api.requests if "recurringruns" in r.path]
    assert order.index(("POST", "recurringruns"), 3) < order.index(("DELETE", old["recurring_run_id"]))


def test_schedule_keeps_the_old_recurring_run_when_creating_the_new_one_fails(kfp_api: StandInKfp) -> None:
    assert _invoke("schedule", "--host", kfp_api.url, "--cron", "0 0 3 * * *").exit_code == 0
    (old,) = kfp_api.recurring_runs
    kfp_api.reject[("POST", "/recurringruns")] = (500, "database is locked")
    res = CliRunner().invoke(main, ["schedule", "--host", kfp_api.url, "--cron", "0 0 4 * * *"])
    assert res.exit_code != 0
    assert "database is locked" in res.output
    assert kfp_api.recurring_runs == [old]
    assert kfp_api.calls("DELETE", f"/recurringruns/{old['recurring_run_id']}") == []


def test_schedule_disables_an_old_recurring_run_it_may_not_delete(kfp_api: StandInKfp) -> None:
    assert _invoke("schedule", "--host", kfp_api.url, "--cron", "0 0 3 * * *").exit_code == 0
    (old,) = kfp_api.recurring_runs
    kfp_api.reject[("DELETE", f"/recurringruns/{old['recurring_run_id']}")] = (403, "no RBAC policy matched")
    res = _invoke("schedule", "--host", kfp_api.url, "--cron", "0 0 4 * * *")
    assert res.exit_code == 0, res.output
    assert old["status"] == "DISABLED"
    assert sum(j["status"] == "ENABLED" for j in kfp_api.recurring_runs) == 1


def test_schedule_list_and_delete(kfp_api: StandInKfp) -> None:
    for name, cron in (("nightly", "0 0 3 * * *"), ("weekly", "0 0 4 * * SUN")):
        assert _invoke("schedule", "--host", kfp_api.url, "--cron", cron, "--job-name", name).exit_code == 0
    listed = _invoke("schedule", "--host", kfp_api.url, "--list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert [ln.split()[-1] for ln in lines] == ["nightly", "weekly"]
    assert "0 0 4 * * SUN" in lines[1] and "ENABLED" in lines[1]
    deleted = _invoke("schedule", "--host", kfp_api.url, "--delete", "nightly")
    assert deleted.exit_code == 0, deleted.output
    assert [j["display_name"] for j in kfp_api.recurring_runs] == ["weekly"]
    missing = CliRunner().invoke(main, ["schedule", "--host", kfp_api.url, "--delete", "nightly"])
    assert missing.exit_code != 0
    assert "no recurring run named 'nightly'" in missing.output and "weekly" in missing.output
    assert CliRunner().invoke(main, ["schedule", "--host", kfp_api.url]).exit_code != 0  # no --cron
