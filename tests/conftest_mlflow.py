"""Pytest fixtures for MLflow tracking: a real ``mlflow server`` on 127.0.0.1, and a SQLite store.

``tests/conftest.py`` loads them with ``pytest_plugins = ["tests.conftest_mlflow"]``.

- ``mlflow_server`` (session): starts ``mlflow server`` on a free port (SQLite backend and proxied
  artifacts in a temporary directory, ``--allowed-hosts`` set, job execution off), waits until
  ``/health`` answers (bounded poll), yields ``MlflowServer`` and stops the server's process group.
  The process is started by ``mlflow_server_started`` so a test session can let it boot while
  SQLite-backed tests run.
- ``mlflow_sqlite_uri`` (session): ``sqlite:///<tmp>/mlflow.db`` (one database per session: creating
  MLflow's tables takes several seconds).
- ``mlflow_tracking_uri`` (session, parametrized ``sqlite`` / ``server``): the URI of each backend in turn;
  pytest runs all SQLite-backed tests first, while the server boots.
- ``mlflow_experiment`` (function): a fresh experiment name, so tests never see each other's runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Seconds to wait for the server to answer /health. Cold starts on a loaded 2-core machine took ~70 s.
SERVER_START_TIMEOUT_S = 240.0


@dataclass
class MlflowServer:
    """A running ``mlflow server``: its URI, backing database, artifact directory and log file."""

    uri: str
    port: int
    backend_db: Path
    artifacts: Path
    log: Path
    process: subprocess.Popen


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (uvicorn runs them as children in the same process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An ``mlflow server`` process, started but not necessarily answering yet; stopped at session end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    db, artifacts, log = root / "backend.db", root / "artifacts", root / "server.log"
    env = dict(os.environ)
    # The job runner spawns a handful of worker processes the tests never use; it only slows startup.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{db}",
        "--serve-artifacts",
        "--artifacts-destination", str(artifacts),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", port, db, artifacts, log, proc)
    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_started: MlflowServer) -> MlflowServer:
    """The ``mlflow server``, answering ``/health``."""
    server = mlflow_server_started
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"mlflow server exited with status {server.process.returncode}:\n{_log_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError) as e:
            last_error = str(e)
        time.sleep(0.5)
    pytest.fail(
        f"mlflow server at {server.uri} did not answer /health within {SERVER_START_TIMEOUT_S:.0f} s "
        f"({last_error}):\n{_log_tail(server.log)}"
    )


@pytest.fixture(scope="session")
def mlflow_sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite tracking URI in a temporary directory (artifacts go beside it, see polydistill.tracking)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-sqlite') / 'mlflow.db'}"


# Session scope makes pytest run every SQLite-backed test before the server-backed ones.
@pytest.fixture(scope="session", params=["sqlite", "server"])
def mlflow_tracking_uri(request: pytest.FixtureRequest, mlflow_sqlite_uri: str) -> str:
    """The tracking URI of each backend in turn: a SQLite file, then a real ``mlflow server``."""
    # Start the server now (without waiting) so it boots while the SQLite-backed tests run.
    request.getfixturevalue("mlflow_server_started")
    if request.param == "sqlite":
        return mlflow_sqlite_uri
    return request.getfixturevalue("mlflow_server").uri


@pytest.fixture
def mlflow_experiment() -> str:
    """A fresh experiment name."""
    return f"test-{uuid.uuid4().hex[:12]}"
