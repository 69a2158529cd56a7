"""``polydistill submit`` and ``schedule`` against a STAND-IN for the Kubeflow Pipelines API server.

No Kubernetes cluster or Kubeflow installation runs on the development machines, so these tests do not
talk to a real KFP. Instead a small HTTP server on 127.0.0.1 (:class:`StandInKfp`) implements the handful
of REST endpoints of the v2beta1 API that ``kfp.Client`` 2.17 calls for these commands (paths and JSON
field names taken from ``kfp/client/client.py`` and the generated ``kfp_server_api`` package): healthz,
pipelines (list by name, upload, upload_version, list versions), experiments (list by name, create), runs
(create) and recurring runs (create). It records every request, so the tests check what reached the
server: the pipeline name and uploaded YAML, the version, the run's parameters and the cron schedule. What
a real server does beyond that (compiling to Argo, scheduling) is out of reach here.
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
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner
from polydistill_kfp.submit import KubeflowError, validate_cron

from polydistill.cli import main

API = "/apis/v2beta1"


@dataclass
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = None  # parsed JSON, or {"fields": ..., "files": {name: bytes}} for uploads


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

    def calls(self, method: str, suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == API + suffix]


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


def _handler(state: StandInKfp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
            state.requests.append(Request(method, parts.path, query, body))
            path = parts.path
            for (m, suffix), (status, message) in state.reject.items():
                if m == method and path == API + suffix:
                    return self._send(status, {"error": message, "code": 3, "message": message})
            try:
                status, payload = self._route(method, path, query, body)
            except KeyError as e:
                status, payload = 404, {"error": f"not found: {e}", "code": 5, "message": f"not found: {e}"}
            self._send(status, payload)

        def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
            if method == "GET" and path == f"{API}/healthz":
                return 200, {"multi_user": False, "pipeline_store": "database"}
            if method == "GET" and path == f"{API}/pipelines":
                name = _display_name_filter(query)
                found = [p for p in state.pipelines.values() if name is None or p["display_name"] == name]
                return 200, {"pipelines": found, "total_size": len(found)}
            if method == "POST" and path == f"{API}/pipelines/upload":
                name = query["name"][0]
                pid = str(uuid.uuid4())
                state.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "name": name}
                state.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()),
                                        "display_name": name, "name": name}]
                return 200, state.pipelines[pid]
            if method == "POST" and path == f"{API}/pipelines/upload_version":
                pid = query["pipelineid"][0]
                if pid not in state.pipelines:
                    raise KeyError(pid)
                name = query["name"][0]
                v = {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                     "name": name}
                state.versions[pid].append(v)
                return 200, v
            if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
                pid = path[len(f"{API}/pipelines/"):-len("/versions")]
                newest_first = list(reversed(state.versions[pid]))
                return 200, {"pipeline_versions": newest_first, "total_size": len(newest_first)}
            if method == "GET" and path == f"{API}/experiments":
                name = _display_name_filter(query)
                found = [e for e in state.experiments.values() if name is None or e["display_name"] == name]
                return 200, {"experiments": found, "total_size": len(found)}
            if method == "POST" and path == f"{API}/experiments":
                eid = str(uuid.uuid4())
                state.experiments[eid] = {"experiment_id": eid, "display_name": body["display_name"]}
                return 200, state.experiments[eid]
            if method == "POST" and path == f"{API}/runs":
                run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                state.runs.append(run)
                return 200, run
            if method == "POST" and path == f"{API}/recurringruns":
                job = {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
                state.recurring_runs.append(job)
                return 200, job
            raise KeyError(f"{method} {path}")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


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
    """kfp.Client reads and may write ~/.config/kfp/context.json: keep it away from the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
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
    assert job["runtime_config"]["parameters"] == {"profile": "cpu", "latent_dim": 128}
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
    assert lines == [lines[0]] and lines[0].startswith("Error: cannot reach Kubeflow Pipelines at "
                                                       f"http://127.0.0.1:{port}")
    assert "Traceback" not in res.output


def test_rejected_request_gives_status_and_server_message(kfp_api: StandInKfp) -> None:
    kfp_api.reject[("POST", "/runs")] = (400, "Invalid input error: parameter games must be a list")
    res = CliRunner().invoke(main, ["submit", "--host", kfp_api.url])
    assert res.exit_code != 0
    assert "rejected starting run" in res.output
    assert "(HTTP 400): Invalid input error: parameter games must be a list" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("Error:")]) == 1
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
