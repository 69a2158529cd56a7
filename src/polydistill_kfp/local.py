"""Run the whole pipeline on one machine with kfp's local runner (``polydistill run``).

Everything lands under one run directory::

    RUN_DIR/kfp/        kfp's pipeline root: every task's output artifacts (checkpoints, datasets, pages)
    RUN_DIR/store/      the object store (``file://``) unless ``--store`` names another
    RUN_DIR/mlflow.db   MLflow's SQLite store unless ``--tracking-uri`` names another
    RUN_DIR/report/     the results report (Markdown, HTML, JSON), copied from the report task
    RUN_DIR/logs/       one raw log per task (<task>[-<game>].log), kfp's own lines (pipeline.log), the
                        tasks' progress files (progress/) and an unexpected error's traceback (polydistill.log)

With ``runner="subprocess"`` (the default) each task runs as a subprocess of this Python
(``SubprocessRunner(use_venv=False)``), so the package must be installed in it, as it is for the ``polydistill``
command. With ``runner="docker"`` each task runs in the project image instead, as its user, with no network and
the run's directories mounted at their own paths (:mod:`.docker_runner`): how an image is tried before it is
pushed to a cluster. ``kfp.local.init`` deletes its workspace after a run, so nothing of value is kept there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from polydistill.errors import PolydistillError

from .components.runtime import LOOP_THREADS_ENV

DEFAULT_RUNS_DIR = Path("runs")
#: Loop iterations kfp's local runner runs at once (its ParallelExecutor's cap).
LOCAL_LOOP_PARALLELISM = 2
#: Where the tasks run: subprocesses of this Python, or containers of the project image.
RUNNERS = ("subprocess", "docker")


class TaskFailedError(PolydistillError, RuntimeError):
    """A task of a local run failed: the message names it and its log file."""


@dataclass
class LocalRun:
    """Where a local pipeline run put its outputs."""

    run_dir: Path
    store_uri: str
    tracking_uri: str
    report_dir: Path
    report_md: Path
    seconds: float

    def mlflow_ui_command(self) -> str | None:
        """The command that opens the MLflow UI on this run's tracking store; None for a tracking server,
        which serves its own UI (:meth:`mlflow_ui_line`)."""
        if _is_server(self.tracking_uri):
            return None
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    def mlflow_ui_line(self) -> str:
        """The last line of ``polydistill run``: where to look at the run in MLflow's UI. A tracking server
        (``http(s)://``) is its own UI at its own address; a local store (SQLite, files) needs ``mlflow ui``,
        which serves on MLflow's default port."""
        command = self.mlflow_ui_command()
        if command is None:
            return f"MLflow UI: open {self.tracking_uri.rstrip('/')} (the run's tracking server)"
        return f"MLflow UI: {command}   (then open http://127.0.0.1:{MLFLOW_UI_PORT})"


#: The port ``mlflow ui`` serves on when none is given.
MLFLOW_UI_PORT = 5000


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.split("://", 1)[0].lower() in ("http", "https")


def default_run_dir(profile: str) -> Path:
    """``runs/YYYYmmdd-HHMMSS-PROFILE`` under the current directory."""
    return DEFAULT_RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{profile}"


def pipeline_arguments(
    profile: str,
    games: Sequence[str] | None,
    store_uri: str,
    tracking_uri: str,
    params: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    minio_endpoint: str = "",
) -> dict[str, Any]:
    """The pipeline's arguments: the fixed ones plus the hyperparameters that were set (others keep their
    "use the profile's value" defaults). Unknown hyperparameter names raise ``ConfigError``."""
    from polydistill import config as C

    params = {k: v for k, v in (params or {}).items() if v is not None}
    C.resolve_pipeline(profile, params)  # validate before any task starts: names, types, ranges
    args: dict[str, Any] = {
        "profile": profile,
        "games": list(games or []),
        "store_uri": store_uri,
        "tracking_uri": tracking_uri,
        "minio_endpoint": minio_endpoint,
        **params,
    }
    if experiment:
        args["experiment"] = experiment
    return args


def task_threads(concurrent_tasks: int, cores: int | None = None) -> int:
    """torch threads per task when ``concurrent_tasks`` run at once on ``cores`` (default: this machine's)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, min(concurrent_tasks, cores)))


def run_local(
    profile: str = "cpu",
    games: Sequence[str] | None = None,
    store_uri: str | None = None,
    tracking_uri: str | None = None,
    run_dir: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    runner: str = "subprocess",
    listener: Any = None,
    echo: IO[str] | None = None,
) -> LocalRun:
    """Run the whole DAG on kfp's local runner and return where the results are.

    Args:
        profile: smoke, cpu or paper.
        games: games to run; default the profile's.
        store_uri: object store for datasets; default ``file://RUN_DIR/store``.
        tracking_uri: MLflow tracking URI; default ``sqlite:///RUN_DIR/mlflow.db``.
        run_dir: where everything goes; default ``runs/<timestamp>-<profile>``.
        params: pipeline hyperparameters (names of ``config.PIPELINE_PARAMETERS``); unset: the profile's.
        experiment: MLflow experiment name; default the pipeline's (``polydistill``).
        runner: ``subprocess`` (tasks run in this Python) or ``docker`` (in the image the components name).
        listener: told when each task starts and ends (``task_watch.TaskListener``); None: nobody.
        echo: where to copy the tasks' raw output too (it always goes to ``RUN_DIR/logs/<task>.log``).
    Raises:
        TaskFailedError: (a RuntimeError) a task failed; the message names it and its log.
        DockerRunError: (a RuntimeError) the docker runner cannot start: engine, image, URIs or permissions.
    """
    from kfp import local

    from polydistill import config as C

    from .pipeline import STUDENTS, local_pipeline
    from .task_watch import watch_tasks

    run = Path(run_dir) if run_dir is not None else default_run_dir(profile)
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    run = run.expanduser().resolve()
    run.mkdir(parents=True, exist_ok=True)
    # Before the docker runner hands the run directory to the image's user, who writes the progress files.
    (run / "logs" / "progress").mkdir(parents=True, exist_ok=True)
    store = store_uri or (run / "store").as_uri()
    # A password in the tracking URI goes to MLflow's credential variables, which the tasks inherit: as part of
    # a pipeline parameter it would be in every task's executor input, log and output.
    from polydistill.tracking.store_check import check_tracking_store, split_credentials

    tracking, tracking_env = split_credentials(tracking_uri or f"sqlite:///{run / 'mlflow.db'}")
    # The store and the tracking store must open here, before any task: a wrong path, endpoint or credentials
    # is one line now, not a traceback in the first task that writes (every task creates the bucket too, so
    # this one may), and a damaged MLflow database is no run that "succeeds" with nothing tracked.
    from polydistill.store import open_store

    open_store(store, create_bucket=True)
    check_tracking_store(tracking)
    args = pipeline_arguments(profile, games, store, tracking, params, experiment,
                              minio_endpoint=os.environ.get("MINIO_ENDPOINT", ""))
    # The runner runs a loop's iterations at once (at most LOCAL_LOOP_PARALLELISM: kfp caps its loop threads at
    # 2) and top-level tasks one after another. So a loop task's torch (teachers, autoencoders, the two
    # students) gets its share of the cores: OpenMP workers of two multi-threaded tasks spin against each other's
    # emulator threads (docs/EXPERIMENTS.md, "Both teachers train at once").
    n_games = len(args["games"] or C.default_games(profile))
    concurrent = min(max(n_games, len(STUDENTS)), LOCAL_LOOP_PARALLELISM)
    os.environ.setdefault(LOOP_THREADS_ENV, str(task_threads(concurrent)))
    if runner == "docker":
        from . import docker_runner
        from .components.image import IMAGE

        # Created here, before the run directory goes to the image's user: kfp would create it as us.
        (run / "kfp").mkdir(exist_ok=True)
        # The tasks' status files only say how far they are: any user may write them (a non-root caller's
        # run directory is not handed over).
        (run / "logs" / "progress").chmod(0o777)
        dirs = [run, docker_runner.local_dir(store, "store"), docker_runner.local_dir(tracking, "tracking URI")]
        task_runner = docker_runner.make_runner(IMAGE, dirs, {LOOP_THREADS_ENV: os.environ[LOOP_THREADS_ENV]},
                                                owned=[run])
    else:
        task_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=task_runner, pipeline_root=str(run / "kfp"), raise_on_error=True)
    t0 = time.monotonic()
    with _environment(tracking_env), warnings.catch_warnings(), \
            watch_tasks(run / "logs", listener, echo) as failed:
        # The runner warns that the project image's name lacks "python": it runs this Python instead.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # ... and that CPU/memory/GPU requests mean nothing on this machine.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            local_pipeline(**args)
        except RuntimeError as e:
            if not failed:
                raise
            names = "; ".join(f"{t.title} (log: {t.log_path})" for t in failed)
            raise TaskFailedError(f"the pipeline failed: {names}") from e
    seconds = time.monotonic() - t0
    report_dir = collect_report(run / "kfp", run / "report")
    return LocalRun(run_dir=run, store_uri=store, tracking_uri=tracking, report_dir=report_dir,
                    report_md=report_dir / "report.md", seconds=seconds)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` (which the tasks inherit) while active, the old ones restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def collect_report(pipeline_root: Path, dest: Path) -> Path:
    """Copy the newest report task's outputs (Markdown, HTML, JSON) from kfp's pipeline root into ``dest``.

    (An exit handler wraps the DAG, and kfp allows no pipeline outputs from inside one, so the report is
    found on disk: ``PIPELINE_ROOT/<pipeline>-<time>/.../report/report_md``.)
    """
    found = sorted(pipeline_root.rglob("report/report_md"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"the pipeline finished but no report was found under {pipeline_root}")
    task_dir = found[-1].parent
    dest.mkdir(parents=True, exist_ok=True)
    for artifact, name in (("report_md", "report.md"), ("report_html", "report.html"),
                           ("report_json", "report.json")):
        src = task_dir / artifact
        if src.is_file():
            shutil.copyfile(src, dest / name)
    return dest
