"""``polydistill run --runner docker``: the smoke DAG in the real project image, on a real Docker engine.

The containerised run must give the report the subprocess runner gives for the same profile and seeds: the
same scores (mean, std, count per agent and game) and the same bytes per state. That holds only if the image
carries the same code and the same numerics (torch 2.13.0's CPU build, the same numpy and ale-py), which is
what this checks; it fails on a missing subpackage, a component that needs the network, a directory the image's
user cannot write, or a path that differs between host and container.

Where the containerised run comes from: CI (``.ci/run``) builds the image, runs the smoke DAG in it and passes
its run directory in ``POLYDISTILL_DOCKER_SMOKE_RUN``; without that variable the test runs it itself when an
engine and the image are there. On CI (``CI=true``) a missing engine, image or report fails the test instead of
skipping it: CI has to run it. The fast tests at the end need no engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polydistill_kfp import docker_runner
from polydistill_kfp.components.image import IMAGE

ROOT = Path(__file__).resolve().parents[1]
ON_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
RUN_ENV = "POLYDISTILL_DOCKER_SMOKE_RUN"
PROFILE = "smoke"


def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: CI must build the image and run the smoke DAG in it)")
    pytest.skip(reason)


def _engine_and_image() -> None:
    """Skip (fail on CI) unless an engine answers and holds the project image."""
    try:
        import docker
    except ImportError:
        _unavailable("the Docker SDK is not installed (pip install 'polydistill[docker]')")
    host = docker_runner.engine_host()
    try:
        client = docker.from_env()
        try:
            client.ping()
            client.images.get(IMAGE)
        finally:
            client.close()
    except docker.errors.ImageNotFound:
        _unavailable(f"image {IMAGE} is not built (bash scripts/build-image.sh --offline)")
    except docker.errors.DockerException as e:
        _unavailable(f"no Docker engine at {host}: {type(e).__name__}")


def _run(run_dir: Path, runner: str) -> subprocess.CompletedProcess:
    """``polydistill run --profile smoke`` in a fresh process (its own environment, as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "polydistill.cli", "run", "--profile", PROFILE, "--runner", runner,
         "--run-dir", str(run_dir)],
        cwd=run_dir.parent, capture_output=True, text=True, timeout=1800)


def _comparable(report: dict) -> dict:
    """What two runs with the same seeds must agree on: every score and the storage table (paths and the
    seconds each evaluation took differ)."""
    games = {game: {agent: {k: v for k, v in cell.items() if k not in ("agent_path", "seconds")}
                    for agent, cell in row.items()}
             for game, row in report["games"].items()}
    return {"games": games, "storage": report["storage"], "columns": report["columns"]}


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory) -> Path:
    """The run directory of a containerised smoke run: CI's, or one made here."""
    given = os.environ.get(RUN_ENV)
    if given:
        run_dir = Path(given)
        if not (run_dir / "report" / "report.json").is_file():
            pytest.fail(f"{RUN_ENV}={given} holds no report/report.json")
        return run_dir
    _engine_and_image()
    run_dir = tmp_path_factory.mktemp("docker-smoke") / "run"
    out = _run(run_dir, "docker")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def subprocess_run(docker_run, tmp_path_factory) -> Path:
    """The same smoke run with the default runner (made only once the containerised one exists)."""
    run_dir = tmp_path_factory.mktemp("subprocess-smoke") / "run"
    out = _run(run_dir, "subprocess")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return run_dir


def _datasets(run_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """(kind, game) -> shard files of every dataset the run wrote (``STORE/runs/<id>/<kind>/<game>/``)."""
    found = {}
    for manifest in sorted((run_dir / "store" / "runs").glob("*/*/*/manifest.json")):
        shards = json.loads(manifest.read_text())["shards"]
        found[(manifest.parent.parent.name, manifest.parent.name)] = [manifest.parent / s["name"] for s in shards]
    return found


@pytest.mark.slow
def test_docker_smoke_run_gives_the_subprocess_runs_report(docker_run, subprocess_run):
    docker_report = json.loads((docker_run / "report" / "report.json").read_text())
    sub_report = json.loads((subprocess_run / "report" / "report.json").read_text())
    assert set(docker_report["games"]) == set(sub_report["games"]) and docker_report["games"]
    assert _comparable(docker_report) == _comparable(sub_report)


@pytest.mark.slow
def test_docker_smoke_run_writes_the_same_datasets(docker_run, subprocess_run):
    """Every array of every shard (teacher experience and Q-values, latent codes) is the same: the teachers and
    autoencoders trained identically in the image. (The shards' bytes differ: .npz members carry their time.)"""
    import numpy as np

    docker_sets, sub_sets = _datasets(docker_run), _datasets(subprocess_run)
    assert set(docker_sets) == set(sub_sets) and {kind for kind, _ in sub_sets} == {"buffers", "latents"}
    for key, shards in sub_sets.items():
        assert len(docker_sets[key]) == len(shards), key
        for ours, theirs in zip(docker_sets[key], shards, strict=True):
            with np.load(ours, allow_pickle=False) as a, np.load(theirs, allow_pickle=False) as b:
                assert a.files == b.files, (key, ours.name)
                for name in a.files:
                    assert np.array_equal(a[name], b[name]), f"{key} {ours.name}: {name} differs"


@pytest.mark.slow
def test_docker_smoke_run_ran_in_the_image(docker_run):
    """The tasks wrote as the image's user (not as this process) and at the host's own paths."""
    report = json.loads((docker_run / "report" / "report.json").read_text())
    for row in report["games"].values():
        for cell in row.values():
            if "agent_path" in cell:
                assert Path(cell["agent_path"]).is_dir(), cell["agent_path"]  # the container's path is the host's
    import docker

    client = docker.from_env()
    try:
        uid, _ = docker_runner.parse_user(client.images.get(IMAGE).attrs["Config"]["User"], IMAGE)
    finally:
        client.close()
    outputs = [p for p in (docker_run / "kfp").rglob("executor_output.json")]
    assert outputs, "no task wrote its executor output"
    assert {p.stat().st_uid for p in outputs} == {uid}, "the tasks did not run as the image's user"
    assert (docker_run / "mlflow.db").stat().st_uid == uid


# ---------------------------------------------------------------------------------------- no engine needed


@pytest.mark.parametrize(("uri", "what"), [("s3://bucket/prefix", "store"), ("http://127.0.0.1:5000", "tracking URI"),
                                           ("relative/store", "store"), ("sqlite://relative.db", "tracking URI")])
def test_uris_the_containers_cannot_use_are_refused(uri, what):
    with pytest.raises(docker_runner.DockerRunError, match=what):
        docker_runner.local_dir(uri, what)


def test_local_uris_map_to_their_directories(tmp_path):
    assert docker_runner.local_dir(tmp_path.as_uri(), "store") == tmp_path
    assert docker_runner.local_dir(str(tmp_path), "store") == tmp_path
    assert docker_runner.local_dir(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking URI") == tmp_path


@pytest.mark.parametrize(("user", "expected"), [("1000:1000", (1000, 1000)), ("1234", (1234, 1234)),
                                                ("0:0", None), ("polydistill", None), ("", None)])
def test_image_user_must_be_numeric_and_not_root(user, expected):
    if expected is None:
        with pytest.raises(docker_runner.DockerRunError):
            docker_runner.parse_user(user, "img")
    else:
        assert docker_runner.parse_user(user, "img") == expected


def test_directory_the_image_user_cannot_write_is_refused(tmp_path):
    d = tmp_path / "store"
    d.mkdir(mode=0o755)
    uid = os.geteuid() + 4242  # not us, so the mode bits decide
    with pytest.raises(docker_runner.DockerRunError, match="not writable"):
        docker_runner.hand_over([d], uid, uid)


def test_run_without_an_engine_is_a_one_line_error(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'no-such.sock'}"}
    out = subprocess.run([sys.executable, "-m", "polydistill.cli", "run", "--profile", PROFILE, "--runner",
                          "docker", "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    err = out.stderr.strip()
    assert err.startswith("polydistill: error: no Docker engine answers at unix://"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_unknown_runner_is_refused():
    out = subprocess.run([sys.executable, "-m", "polydistill.cli", "run", "--runner", "kubernetes"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "'kubernetes' is not one of" in out.stderr
