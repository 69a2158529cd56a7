"""``polydistill run``, ``compile``, ``submit`` and ``schedule``: the whole pipeline, locally or on Kubeflow.

kfp and the pipeline package (``polydistill_kfp``) are imported inside the commands only, so the library
and the other commands work without them.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import config as C
from . import main
from .games_option import GamesOption
from .options import fail, writable_dir

_ERRORS_HINT = "install the pipeline extra: pip install 'polydistill[kfp]'"


def _param_type(name: str) -> tuple[Any, str]:
    """Click type and help text of a pipeline hyperparameter, from the config field it sets."""
    stage, key = C.PIPELINE_PARAMETERS[name]
    field = C.pipeline_field(name)
    ann = field.annotation
    if typing.get_origin(ann) is typing.Literal:
        kind: Any = click.Choice([str(a) for a in typing.get_args(ann)])
    elif ann in (int, float):
        kind = ann
    else:
        kind = str
    return kind, f"{field.description} [{stage}.{key}; default: the profile's]"


def pipeline_options(fn: Callable) -> Callable:
    """Options shared by run/submit/schedule: profile, games, store, tracking, and one flag per pipeline
    hyperparameter (``config.PIPELINE_PARAMETERS``); the command receives them as ``params``."""
    names = [n for n in C.PIPELINE_PARAMETERS if n != "teachers"]  # a mapping: --teacher GAME=PATH below
    fn = click.option("--teacher", "teacher_items", multiple=True, metavar="GAME=PATH",
                      help="Import GAME's teacher from an SB3 .zip, a CleanRL state_dict or a train-teacher "
                           "directory (a path, file:// or "
                           "s3:// URI; submit/schedule: a URI the cluster reads) instead of training it; "
                           "repeat per game [import.teachers].")(fn)
    for name in reversed(names):
        kind, help_text = _param_type(name)
        fn = click.option(f"--{name.replace('_', '-')}", f"hp__{name}", type=kind, default=None,
                          help=help_text)(fn)
    fn = click.option("--experiment", default=None,
                      help="MLflow experiment (submit/schedule: also KFP's) [polydistill].")(fn)
    fn = click.option("--tracking-uri", default=None,
                      help="MLflow tracking URI (local default: sqlite:///RUN_DIR/mlflow.db; cluster "
                           "default: $MLFLOW_TRACKING_URI of the pods).")(fn)
    fn = click.option("--store", "store_uri", default=None,
                      help="Object store for datasets: s3://bucket/prefix or file:///path (local default: "
                           "file://RUN_DIR/store; on Kubeflow: s3://mlpipeline/private/NAMESPACE/polydistill; "
                           "standalone overlay: s3://polydistill).")(fn)
    fn = click.option("--games", cls=GamesOption,
                      help="Games: --games Pong Breakout, --games Pong,Breakout or the flag repeated "
                           "[the profile's].")(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        params = {}
        for n in names:
            try:
                params[n] = C.pipeline_value(n, kwargs.pop(f"hp__{n}"))
            except C.ConfigError as e:
                fail(f"--{n.replace('_', '-')}{str(e).removeprefix(n)}")
        params["teachers"] = _teacher_sources(kwargs.pop("teacher_items")) or None
        kwargs["games"] = list(kwargs["games"])
        return fn(*args, params={k: v for k, v in params.items() if v is not None}, **kwargs)

    return wrapper


def _teacher_sources(items: tuple[str, ...]) -> dict[str, str]:
    """``--teacher GAME=PATH`` items as the ``teachers`` parameter; local paths made absolute (the tasks run
    elsewhere) and required to exist now, not when the task starts."""
    try:
        sources = C.parse_teacher_sources(items)
    except C.ConfigError as e:
        raise click.UsageError(str(e)) from None
    for game, where in sources.items():
        if "://" in where:
            continue
        path = Path(where).expanduser()
        if not path.exists():
            raise click.UsageError(f"--teacher {game}={where}: no such file or directory; pass an SB3 .zip, a "
                                   "CleanRL checkpoint or a train-teacher directory")
        sources[game] = str(path.resolve())
    return sources


def _check_games(games: list[str]) -> list[str]:
    from ..envs import canonical_game

    return [canonical_game(g) for g in games]


def _check_params(profile: str, params: dict[str, Any]) -> None:
    try:
        C.refuse_sentinels(params)
        C.resolve_pipeline(profile, params)
    except C.ConfigError as e:
        raise click.UsageError(str(e)) from None


def _import_kfp() -> None:
    try:
        import kfp
        import kfp.kubernetes  # noqa: F401

        import polydistill_kfp  # noqa: F401
    except ImportError as e:
        fail(f"the pipeline commands need kfp and polydistill_kfp ({e}); {_ERRORS_HINT}")


@main.command("run")
@click.option("--profile", type=click.Choice(C.PROFILES), default="cpu", show_default=True,
              help="Preset sizes: smoke (minutes), cpu (a laptop, about an hour), paper (the seed protocol).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Directory for everything this run writes [runs/<time>-<profile>].")
@click.option("--runner", type=click.Choice(["subprocess", "docker"]), default="subprocess", show_default=True,
              help="Where each task runs: a subprocess of this Python, or a container of the project image "
                   "(src/polydistill_kfp/components/IMAGE; its user, no network, the run's directories mounted "
                   "at their own paths).")
@click.option("--verbose", "stream_logs", is_flag=True, default=False,
              help="Also stream every task's raw output (kfp's executor logs), which otherwise only goes to "
                   "RUN_DIR/logs/<task>[-<game>].log.")
@pipeline_options
def run_cmd(profile: str, run_dir: str | None, runner: str, stream_logs: bool, games: list[str],
            store_uri: str | None, tracking_uri: str | None, experiment: str | None,
            params: dict[str, Any]) -> None:
    """Run the whole pipeline on this machine with kfp's local runner.

    Each task runs as a subprocess of this Python (or, --runner docker, in the project image); outputs, the
    object store (file://), MLflow (SQLite) and one log per task (logs/) go under --run-dir. A line is
    printed as each task starts and ends, with a live progress line per running task; at the end the
    results table, with the command that opens MLflow's UI. A failed task's last log lines are printed.
    """
    import sys

    from .handler import set_error_log

    games = _check_games(games)
    _check_params(profile, params)
    try:
        C.check_teacher_sources(params.get("teachers", {}), games or C.default_games(profile))
    except C.ConfigError as e:
        raise click.UsageError(str(e)) from None
    _import_kfp()
    from polydistill_kfp.local import default_run_dir, run_local

    from .run_display import RunDisplay, results_text

    run = writable_dir(Path(run_dir or default_run_dir(profile)).expanduser().resolve(), "--run-dir")
    set_error_log(run / "logs" / "polydistill.log")
    out = sys.stdout
    display = RunDisplay(out, live=out.isatty() and not stream_logs)
    click.echo(f"polydistill run: profile {profile}, run directory {run} (task logs in logs/)")
    try:
        result = run_local(profile=profile, games=games or None, store_uri=store_uri,
                           tracking_uri=tracking_uri, run_dir=run, params=params, experiment=experiment,
                           runner=runner, listener=display, echo=out if stream_logs else None)
    finally:
        display.close()
    click.echo("")
    click.echo(results_text(result.report_md.read_text()))
    click.echo(f"Finished in {result.seconds / 60:.1f} min. Everything is under {result.run_dir}: report/ "
               f"(report.md with the tables' notes, .html, .json), kfp/ (outputs), logs/, store {result.store_uri}")
    click.echo(result.mlflow_ui_line())


def image_options(fn: Callable) -> Callable:
    """--image, --image-cuda and --registry (compile, submit, schedule): the images written into every task;
    the command receives ``images`` (``polydistill_kfp.images.Images`` or None for the defaults), checked
    before anything is compiled or contacted."""
    fn = click.option("--registry", default=None, metavar="HOST[:PORT][/PATH]",
                      help="Registry the default images were pushed to under their own names and tags "
                           "(ghcr.io/polydistill/polydistill:0.1.0 -> REGISTRY/polydistill:0.1.0); "
                           "--image and --image-cuda win over it.")(fn)
    fn = click.option("--image-cuda", envvar="POLYDISTILL_IMAGE_CUDA", default=None,
                      help="Image of the GPU tasks (the paper variant's training tasks) "
                           "[$POLYDISTILL_IMAGE_CUDA; else src/polydistill_kfp/components/IMAGE_CUDA].")(fn)
    fn = click.option("--image", envvar="POLYDISTILL_IMAGE", default=None,
                      help="Image of every CPU task, e.g. REGISTRY/polydistill@sha256:DIGEST "
                           "[$POLYDISTILL_IMAGE, which scripts/push-image.sh records in images/pushed.env; "
                           "else src/polydistill_kfp/components/IMAGE].")(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        image, image_cuda, registry = kwargs.pop("image"), kwargs.pop("image_cuda"), kwargs.pop("registry")
        _import_kfp()
        from polydistill_kfp.images import Images

        chosen = Images.choose(image, image_cuda, registry) if image or image_cuda or registry else None
        return fn(*args, images=chosen, **kwargs)

    return wrapper


@main.command("compile")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the YAML files [in a source checkout src/polydistill_kfp/compiled/, "
                   "else ./compiled].")
@click.option("--check", "backend", default=None, metavar="VERSION",
              help="Then check each file against what a KFP backend of VERSION runs (e.g. 2.15.0, the minimum); "
                   "fail naming every construct it would break or reject.")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@image_options
def compile_cmd(out_dir: str | None, backend: str | None, files: tuple[str, ...], images: Any) -> None:
    """Compile the pipeline variants to KFP YAML: polydistill.yaml (CPU) and polydistill-paper.yaml (GPUs).

    With FILE...: compile nothing, check those compiled pipelines (any KFP YAML) with --check VERSION."""
    _import_kfp()
    from polydistill_kfp import compat
    from polydistill_kfp.compile import compile_all, default_out_dir

    if backend is not None:  # "" is a mistake, not "no check"
        try:
            target = compat.parse_version(backend)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--check") from None
    elif files:
        raise click.UsageError("checking FILE needs the backend version: --check VERSION (e.g. --check 2.15.0)")
    if files and out_dir:
        raise click.UsageError("--out compiles the pipeline, FILE checks compiled ones: give one of them")
    specs = {}
    for f in files:  # all read before any is reported
        try:
            specs[f] = compat.load_ir(f)
        except yaml_error():
            fail(f"{f} is not valid YAML; give a pipeline compiled by `polydistill compile` or kfp")
        except ValueError as e:  # not a pipeline spec (or not text)
            fail(f"{' '.join(str(e).split())[:300]}; give a pipeline compiled by `polydistill compile` or kfp")
    if files:
        paths = list(files)
    else:
        paths = [str(p) for p in compile_all(writable_dir(out_dir, "--out") if out_dir else default_out_dir(), images)]
    problems = 0
    for path in paths:
        click.echo(path)
        if backend is None:
            continue
        spec, platform = specs[path] if path in specs else compat.load_ir(path)
        for finding in compat.check_spec(spec, platform, target):
            problems += 1
            click.echo(f"  {finding}")
    if backend is not None:
        if problems:
            fail(f"{problems} construct(s) that KFP backend {backend} breaks or rejects (listed above)")
        click.echo(f"{'every file' if files else 'every variant'} runs on KFP backend {backend}")


def yaml_error() -> type[Exception]:
    """PyYAML's base error (imported late: the library's other commands need no YAML parser)."""
    import yaml

    return yaml.YAMLError


host_option = click.option(
    "--host", required=True, help="Kubeflow Pipelines API/UI URL, e.g. http://localhost:8080 (port-forward).")


def kubeflow_options(fn: Callable) -> Callable:
    """Options shared by submit and schedule (listed after the command's own, before the hyperparameters)."""
    fn = pipeline_options(fn)
    decorators = [
        click.option("--profile", type=click.Choice(C.PROFILES), default=None,
                     help="Profile [the variant's: cpu for polydistill, paper for polydistill-paper]."),
        click.option("--variant", type=click.Choice(["polydistill", "polydistill-paper"]), default=None,
                     help="Compiled variant: CPU only, or GPUs (and the CUDA image) for the training tasks "
                          "[polydistill-paper for --profile paper, else polydistill]."),
        click.option("--pipeline-name", default=None, help="Pipeline name in Kubeflow [the variant's name]."),
        click.option("--version", "version_name", default=None,
                     help="Name of the uploaded pipeline version [<package version>-<UTC time>]."),
        click.option("--minio-endpoint", default=None,
                     help="host:port of MinIO for the steps [$MINIO_ENDPOINT from polydistill-config]."),
        click.option("--service-account", default=None, help="Kubernetes ServiceAccount the run uses."),
        click.option("--namespace", default=None,
                     help="Kubeflow profile namespace for the experiment, pipeline and run (required on a "
                          "multi-user Kubeflow) [inside a pod: the pod's namespace]."),
        click.option("--token", default=None,
                     help="Bearer token for a multi-user Kubeflow [$KF_PIPELINES_TOKEN]; never printed."),
        click.option("--token-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the bearer token [inside a pod: $KF_PIPELINES_SA_TOKEN_PATH or "
                          "/var/run/secrets/kubeflow/pipelines/token]."),
        click.option("--cookies", default=None,
                     help="Session cookies of a logged-in browser, 'name=value; ...' [$KF_PIPELINES_COOKIES]."),
        click.option("--skip-version-check", is_flag=True, default=False,
                     help="Do not check the server's KFP version (by default an older one than 2.15.0 is "
                          "refused, and one the server does not report, as Kubeflow 1.11's does not, is warned "
                          "about)."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return image_options(fn)


def _arguments(profile: str | None, games: list[str], store_uri: str | None, tracking_uri: str | None,
               minio_endpoint: str | None, experiment: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """Pipeline arguments of what was given on the command line (the rest keep the pipeline's defaults)."""
    args: dict[str, Any] = {}
    if profile:
        args["profile"] = profile
    if games:
        args["games"] = games
    for key, value in (("store_uri", store_uri), ("tracking_uri", tracking_uri),
                       ("minio_endpoint", minio_endpoint), ("experiment", experiment)):
        if value:
            args[key] = value
    return {**args, **params}


def _profile_for(variant: str, profile: str | None) -> str:
    return profile or ("paper" if variant == "polydistill-paper" else "cpu")


def _variant_for(variant: str | None, profile: str | None) -> str:
    """The variant given, else the one the profile is sized for: the paper profile trains on GPUs."""
    return variant or ("polydistill-paper" if profile == "paper" else "polydistill")


def _target(host: str, namespace: str | None, token: str | None, token_file: str | None, cookies: str | None,
            skip_version_check: bool) -> Any:
    from polydistill_kfp.submit import Target, resolve_credentials

    from .handler import add_secret

    add_secret(token)
    add_secret(cookies)
    creds = resolve_credentials(token, token_file, cookies)
    add_secret(creds.token)
    add_secret(creds.cookies)
    return Target(host, namespace, creds, skip_version_check)


@main.command("submit")
@host_option
@click.option("--run-name", default=None, help="Name of the run [<pipeline> <version>].")
@kubeflow_options
def submit_cmd(host: str, profile: str | None, variant: str | None, pipeline_name: str | None,
               version_name: str | None, minio_endpoint: str | None, service_account: str | None,
               namespace: str | None, token: str | None, token_file: str | None, cookies: str | None,
               skip_version_check: bool, run_name: str | None, games: list[str], store_uri: str | None,
               tracking_uri: str | None, experiment: str | None, params: dict[str, Any], images: Any) -> None:
    """Upload the pipeline (or a new version of it) to Kubeflow and start a run.

    The host is checked first: its health, a login page in the way, its KFP version (2.15 or newer), and on a
    multi-user Kubeflow the namespace; then every call goes to that namespace."""
    variant = _variant_for(variant, profile)
    games = _check_games(games)
    _check_params(_profile_for(variant, profile), params)
    from polydistill_kfp.submit import submit

    target = _target(host, namespace, token, token_file, cookies, skip_version_check)
    args = _arguments(profile, games, store_uri, tracking_uri, minio_endpoint, experiment, params)
    sub = submit(target, args, experiment=experiment or "polydistill", variant=variant,
                 pipeline_name=pipeline_name, version_name=version_name, run_name=run_name,
                 service_account=service_account, images=images)
    up = sub.upload
    click.echo(f"{'uploaded pipeline' if up.created_pipeline else 'uploaded version'} "
               f"{up.pipeline_name!r} version {up.version_name!r}")
    click.echo(f"started run {sub.run_id}{f' in namespace {sub.namespace}' if sub.namespace else ''}: {sub.url()}")


@main.command("schedule")
@host_option
@click.option("--cron", default=None,
              help="Kubeflow cron expression, 6 fields with seconds first: '0 0 3 * * *' = 03:00 daily.")
@click.option("--job-name", default=None,
              help="Name of the recurring run; one of that name is replaced [<pipeline> retraining].")
@click.option("--max-concurrency", type=int, default=1, show_default=True,
              help="Runs of this schedule allowed at the same time.")
@click.option("--list", "list_only", is_flag=True, default=False,
              help="List the recurring runs (of --experiment when given) and exit.")
@click.option("--delete", "delete_name", default=None, metavar="NAME",
              help="Delete the recurring run NAME (or id) and exit.")
@kubeflow_options
def schedule_cmd(host: str, profile: str | None, variant: str | None, pipeline_name: str | None,
                 version_name: str | None, minio_endpoint: str | None, service_account: str | None,
                 namespace: str | None, token: str | None, token_file: str | None, cookies: str | None,
                 skip_version_check: bool, cron: str | None, job_name: str | None, max_concurrency: int,
                 list_only: bool, delete_name: str | None, games: list[str], store_uri: str | None,
                 tracking_uri: str | None, experiment: str | None, params: dict[str, Any], images: Any) -> None:
    """Upload the pipeline (or a new version of it) and create a recurring run on a cron schedule,
    replacing the recurring run of the same name; --list and --delete manage them.

    Unless given, a scheduled run warm-starts its teachers from the champion's (--warm-start champion) and
    derives its seeds from its run id (--seeds run), so each run improves on the last instead of repeating it.
    """
    _import_kfp()
    from polydistill_kfp.submit import KubeflowError, delete_schedule, list_schedules, schedule, validate_cron

    if list_only or delete_name:
        target = _target(host, namespace, token, token_file, cookies, skip_version_check)
        try:
            if delete_name:
                ids = delete_schedule(target, delete_name, experiment)
                click.echo(f"deleted recurring run {delete_name!r} ({', '.join(ids)})")
                return
            for sch in list_schedules(target, experiment):
                click.echo(f"{sch.recurring_run_id}  {sch.status:<9}  {sch.cron:<20}  {sch.name}")
        except KubeflowError as e:
            fail(str(e))
        return
    if not cron:
        raise click.UsageError("--cron is required to create a schedule (or pass --list / --delete NAME)")
    variant = _variant_for(variant, profile)
    games = _check_games(games)
    _check_params(_profile_for(variant, profile), params)
    try:
        validate_cron(cron)  # before compiling or contacting anything
    except KubeflowError as e:
        raise click.BadParameter(str(e), param_hint="--cron") from None
    target = _target(host, namespace, token, token_file, cookies, skip_version_check)
    args = _arguments(profile, games, store_uri, tracking_uri, minio_endpoint, experiment, params)
    sub = schedule(target, cron, args, experiment=experiment or "polydistill", variant=variant,
                   pipeline_name=pipeline_name, version_name=version_name, job_name=job_name,
                   max_concurrency=max_concurrency, service_account=service_account, images=images)
    up = sub.upload
    click.echo(f"{'uploaded pipeline' if up.created_pipeline else 'uploaded version'} "
               f"{up.pipeline_name!r} version {up.version_name!r}")
    click.echo(f"created recurring run {sub.recurring_run_id} ({cron}): {sub.url()}")
    if sub.replaced:
        click.echo(f"replaced recurring run(s) of the same name: {', '.join(sub.replaced)}")
