"""The polydistill DAG, in two compiled variants.

::

    start-run ─┬─ per-game (ParallelFor over games) ───────────────────────────────┐
               │    train-teacher ─ export-buffer ─ train-autoencoder ─ encode-buffer │
               │          └─ evaluate (teacher on its game)                           │
               ├─ students (ParallelFor over the two sources) ──────────────────────  ├─ report
               │    distill (subset: every game's buffer;                             │
               │             latent: every game's latents) ─ evaluate (student)       │
               └─ evaluate (random policy) ────────────────────────────────────────────┘

``start-run`` resolves every stage config from the profile and the pipeline parameters
(:func:`polydistill.config.resolve_pipeline`) and opens the MLflow parent run; each loop is a sub-pipeline
that receives those values as parameters, because kfp's local runner replaces an upstream task's output used
inside a ``ParallelFor`` body by the loop item (``docs/ARCHITECTURE.md``).

What crosses a DAG boundary is judged by the Kubeflow backend, not by the local runner
(:mod:`polydistill_kfp.compat` checks the compiled YAML; ``tests/test_compat.py``):

- **No list of artifacts enters a sub-DAG.** The backend resolves a sub-DAG task's artifact inputs with
  ``GetInputArtifactsByExecutionID`` (``backend/src/v2/metadata/client.go``), which keeps only the last
  artifact per input name (kubeflow/pipelines#13900; fix #13901 unmerged), so a students' loop fed
  ``list[Model]`` would distill one teacher. The students instead receive one *game record* per game, a
  dict parameter returned by ``encode-buffer`` and collected by ``dsl.Collected`` (parameters cross DAG
  boundaries whole: ``resolveUpstreamParameters`` in ``backend/src/v2/driver/resolve.go``); it names each
  game's teacher checkpoint, buffer and latents by store URI, with the datasets' manifest digests.
- **No loop is named.** A named ``ParallelFor`` compiles to ``taskInfo.name: <name>`` under the task key
  ``for-loop-N``; backend 2.15.0 (Kubeflow 1.11) gives the loop's DAG driver no task name
  (``iterationItemTask`` in ``backend/src/v2/compiler/argocompiler/dag.go``), so ``driver/dag.go`` records
  the execution under ``taskInfo.name`` and ``resolveUpstreamParameters`` (``driver/resolve.go``) then fails
  to find ``for-loop-N`` ("subTaskName ... not in tasks") when a later task reads the loop's collected
  outputs (kubeflow/pipelines#13239; fixed by #12808 in 2.16.0). Unnamed, both are ``for-loop-N``.
- **Lists of artifacts are consumed only where they are collected**, as in the upstream sample
  ``test_data/sdk_compiled_pipelines/valid/collected_artifacts.py`` (cases 5 and 6: a sub-DAG returns
  ``dsl.Collected(...)``, a task of the parent DAG consumes it): the report takes the teachers' scores,
  buffers, latents, students and their scores that way.

The students are a loop (over :data:`STUDENTS`) so that kfp's local runner, which runs top-level tasks one
after another, trains them side by side as a cluster does.

Variants (same parameters, same DAG):

``polydistill``
    CPU only, ``profile`` defaults to ``cpu``: CPU/memory requests sized for that profile.
``polydistill-paper``
    ``profile`` defaults to ``paper``; train-teacher, train-autoencoder and distill request one
    ``nvidia.com/gpu`` each and run in the CUDA image; larger CPU/memory requests.

On a cluster, every task gets ``MINIO_ENDPOINT`` and ``MLFLOW_TRACKING_URI`` from the ConfigMap
``polydistill-config`` (optional; the ``minio_endpoint`` and ``tracking_uri`` parameters override them) and
the tasks that touch the object store get the S3 credentials from the Secret ``mlpipeline-minio-artifact``
(``accesskey``/``secretkey`` -> ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``). No credential is ever a
parameter or part of the compiled YAML.

Retries: the three training tasks are retried (3 times, backoff from 2 minutes); each keeps its working
directory under ``STORE/runs/<run id>/work/...`` (see :mod:`polydistill.mirror`), so a retry
resumes from the last checkpoint. Caching: on for every task but ``start-run``, which must open a new MLflow
parent run each time. Because every task receives its run's parent-run id and run-scoped store prefix, a new
pipeline run never silently reuses an older run's teachers, which is what a scheduled retraining wants.
"""


import collections
import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Model

from polydistill import config as C
from polydistill import stages as S
from polydistill.tracking.names import DEFAULT_EXPERIMENT, REGISTERED_MODEL

from .components.distill import distill
from .components.encode_buffer import encode_buffer
from .components.end_run import end_run
from .components.evaluate import evaluate
from .components.export_buffer import export_buffer
from .components.image import IMAGE_CUDA
from .components.report import report
from .components.start_run import start_run
from .components.train_autoencoder import train_autoencoder
from .components.train_teacher import train_teacher

#: Parameters that are not stage hyperparameters, in signature order.
FIXED_PARAMETERS = ("games", "profile", "store_uri", "tracking_uri", "minio_endpoint", "experiment")
#: Empty: each run's start-run picks the cluster's store (run_layout.default_store_uri): the standalone
#: overlay's s3://polydistill, or on Kubeflow s3://mlpipeline/private/<namespace>/polydistill.
DEFAULT_STORE = ""
MINIO_SECRET = "mlpipeline-minio-artifact"
MINIO_SECRET_ENV = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
CONFIG_MAP = "polydistill-config"
CONFIG_MAP_ENV = {"MINIO_ENDPOINT": "MINIO_ENDPOINT", "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                  "POLYDISTILL_STORE_URI": "POLYDISTILL_STORE_URI"}
GPU = "nvidia.com/gpu"
#: Tasks that read or write the object store (and get the S3 credentials).
STORE_TASKS = S.STORE
#: The students' loop items: the distillation source and the results label of each student.
STUDENTS = [{"source": "subset", "label": "student_subset"}, {"source": "latent", "label": "student_latent"}]
#: Tasks that resume from a checkpoint when retried.
TRAINING_TASKS = S.TRAINING


@dataclass(frozen=True)
class Variant:
    """One compiled flavour of the pipeline: its name, default profile and resources per component."""

    name: str
    default_profile: str
    gpu_tasks: tuple[str, ...] = ()
    # component name -> (cpu request, memory request)
    resources: dict[str, tuple[str, str]] = field(default_factory=dict)
    description: str = ""
    # Retries of each training task. kfp's local runner honours them (with the backoff), so the local
    # variant sets 0: a failing task there should fail the run now, not in 15 minutes.
    retries: int = 3


VARIANTS: dict[str, Variant] = {
    "polydistill": Variant(
        name="polydistill",
        default_profile="cpu",
        resources={
            S.START_RUN: ("500m", "1Gi"),
            S.TRAIN_TEACHER: ("4", "8Gi"),
            S.EXPORT_BUFFER: ("2", "4Gi"),
            S.TRAIN_AUTOENCODER: ("4", "8Gi"),
            S.ENCODE_BUFFER: ("2", "4Gi"),
            S.DISTILL: ("4", "8Gi"),
            S.EVALUATE: ("4", "4Gi"),
            S.REPORT: ("500m", "1Gi"),
            S.END_RUN: ("250m", "512Mi"),
        },
        description="Multi-task policy distillation for Atari (CPU): teachers -> buffers -> autoencoders -> "
        "latents -> two students -> evaluation and report. Hyperparameters at -1 / empty use the profile's.",
    ),
    "polydistill-paper": Variant(
        name="polydistill-paper",
        default_profile="paper",
        gpu_tasks=TRAINING_TASKS,
        resources={
            S.START_RUN: ("500m", "1Gi"),
            # 1M-transition replay memory (frames stored once) plus its resume copy.
            S.TRAIN_TEACHER: ("8", "32Gi"),
            S.EXPORT_BUFFER: ("4", "16Gi"),
            S.TRAIN_AUTOENCODER: ("8", "16Gi"),
            S.ENCODE_BUFFER: ("4", "16Gi"),
            S.DISTILL: ("8", "32Gi"),
            S.EVALUATE: ("8", "8Gi"),
            S.REPORT: ("500m", "1Gi"),
            S.END_RUN: ("250m", "512Mi"),
        },
        description="Multi-task policy distillation for Atari, the seed paper's protocol on GPUs (one "
        "nvidia.com/gpu per training task). Hyperparameters at -1 / empty use the profile's.",
    ),
}


def parameter_sentinel(name: str) -> tuple[type, Any]:
    """The pipeline parameter type and "use the profile's value" default of a ``PIPELINE_PARAMETERS`` name,
    derived from the config field it sets: -1 for ints, -1.0 for floats, "" for strings and choices, {} for
    mappings (``teachers``: no imported teacher)."""
    stage, key = C.PIPELINE_PARAMETERS[name]
    ann = C.pipeline_field(name).annotation
    if ann is int:
        return int, -1
    if ann is float:
        return float, -1.0
    if ann is str or typing.get_origin(ann) is typing.Literal:
        return str, ""
    if typing.get_origin(ann) is dict:
        return dict, {}
    raise TypeError(f"pipeline parameter {name!r} maps to {stage}.{key} of type {ann!r}: give it a sentinel")


def pipeline_signature(default_profile: str) -> inspect.Signature:
    """The pipeline function's parameters: :data:`FIXED_PARAMETERS`, then one per
    ``config.PIPELINE_PARAMETERS`` name with its type and sentinel (:func:`parameter_sentinel`), generated
    from that one list rather than spelled out again."""
    fixed: dict[str, tuple[type, Any]] = {
        "games": (list, []),  # empty = the profile's games
        "profile": (str, default_profile),
        # Empty: each run's start-run picks the cluster's store (run_layout.default_store_uri).
        "store_uri": (str, DEFAULT_STORE),
        "tracking_uri": (str, ""),
        "minio_endpoint": (str, ""),
        "experiment": (str, DEFAULT_EXPERIMENT),
    }
    rows = [*((name, fixed[name]) for name in FIXED_PARAMETERS),
            *((name, parameter_sentinel(name)) for name in C.PIPELINE_PARAMETERS)]
    return inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                                annotation=kind) for name, (kind, default) in rows],
                             return_annotation=None)


def _env(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Cluster settings of one task (ignored by the local runner, compiled into the YAML)."""
    component = task.component_spec.name
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, CONFIG_MAP_ENV, optional=True)
    if component in STORE_TASKS:
        kubernetes.use_secret_as_env(task, MINIO_SECRET, MINIO_SECRET_ENV)
    return task


def _make_pipeline(variant: Variant) -> Callable[..., Any]:
    """Build the pipeline function of ``variant`` (each variant needs its own task settings)."""

    def cuda(component: Any) -> Any:
        # The same function as a component running in the CUDA image.
        return dsl.component(base_image=IMAGE_CUDA, install_kfp_package=False)(component.python_func)

    comps = {c.component_spec.name: c for c in (
        train_teacher, export_buffer, train_autoencoder, encode_buffer, distill, evaluate, report, start_run,
        end_run)}
    for name in variant.gpu_tasks:
        comps[name] = cuda(comps[name])

    def configure(task: dsl.PipelineTask, display: str | None = None) -> dsl.PipelineTask:
        name = task.component_spec.name
        cpu, memory = variant.resources[name]
        task.set_cpu_request(cpu).set_memory_request(memory)
        if name in variant.gpu_tasks:
            task.set_accelerator_type(GPU).set_accelerator_limit(1)
        if name in TRAINING_TASKS and variant.retries:
            task.set_retry(num_retries=variant.retries, backoff_duration="120s", backoff_factor=2.0,
                           backoff_max_duration="3600s")
        if display:
            task.set_display_name(display)
        return _env(task, name)

    @dsl.pipeline(name="per-game", description="Teacher, buffer, autoencoder and latents for each game.")
    def per_game(
        games: list,
        teacher_config: dict,
        export_config: dict,
        autoencoder_config: dict,
        evaluate_config: dict,
        warm_starts: dict,
        import_config: dict,
        run_root: str,
        tracking_uri: str,
        parent_run_id: str,
        experiment: str,
        minio_endpoint: str,
    ) -> NamedTuple(  # type: ignore[valid-type]  # kfp reads outputs from this functional form
        "PerGame",
        [("game_records", list), ("buffers", list[Dataset]), ("latents", list[Dataset]),
         ("teacher_scores", list[Artifact])],
    ):
        common = {"tracking_uri": tracking_uri, "parent_run_id": parent_run_id, "experiment": experiment}
        store = {"run_root": run_root, "minio_endpoint": minio_endpoint, **common}
        with dsl.ParallelFor(games) as game:
            # An imported teacher (import_config["teachers"] names its game) is made by this same task, not by
            # a dsl.If branch or an importer: one task per game keeps every edge below unconditional.
            teacher = configure(comps[S.TRAIN_TEACHER](game=game, config=teacher_config, warm_starts=warm_starts,
                                                        import_config=import_config, **store))
            buffer = configure(comps[S.EXPORT_BUFFER](
                game=game, experience=teacher.outputs["experience"], teacher=teacher.outputs["teacher"],
                config=export_config, **store))
            autoencoder = configure(comps[S.TRAIN_AUTOENCODER](
                game=game, buffer=buffer.outputs["buffer"], teacher=teacher.outputs["teacher"],
                config=autoencoder_config, **store))
            latents = configure(comps[S.ENCODE_BUFFER](
                game=game, buffer=buffer.outputs["buffer"], autoencoder=autoencoder.outputs["autoencoder"],
                teacher=teacher.outputs["teacher"], autoencoder_config=autoencoder_config,
                export_config=export_config, **store))
            scored = configure(comps[S.EVALUATE](
                label="teacher", games=[game], config=evaluate_config, agent=teacher.outputs["teacher"],
                **common), "evaluate teacher")
        PerGame = collections.namedtuple("PerGame", ["game_records", "buffers", "latents", "teacher_scores"])
        return PerGame(
            dsl.Collected(latents.outputs["Output"]),
            dsl.Collected(buffer.outputs["buffer"]),
            dsl.Collected(latents.outputs["latents"]),
            dsl.Collected(scored.outputs["scores"]),
        )

    @dsl.pipeline(name="students", description="The two students, distilled and scored side by side.")
    def students_dag(
        students: list,
        games: list,
        game_records: list,
        distill_config: dict,
        evaluate_config: dict,
        run_root: str,
        tracking_uri: str,
        parent_run_id: str,
        experiment: str,
        minio_endpoint: str,
    ) -> NamedTuple("Students", [("students", list[Model]), ("scores", list[Artifact])]):  # type: ignore[valid-type]
        # A loop rather than two top-level branches: kfp's local runner runs a loop's iterations at once but
        # top-level tasks one after another, and both students fit side by side on one machine. Only
        # parameters enter this DAG (see the module docstring).
        common = {"tracking_uri": tracking_uri, "parent_run_id": parent_run_id, "experiment": experiment}
        with dsl.ParallelFor(students) as item:
            student = configure(comps[S.DISTILL](
                source=item.source, games=games, game_records=game_records, config=distill_config,
                run_root=run_root, minio_endpoint=minio_endpoint, **common), S.DISTILL)
            scored = configure(comps[S.EVALUATE](
                label=item.label, games=games, config=evaluate_config, agent=student.outputs["student"],
                **common), "evaluate student")
        Students = collections.namedtuple("Students", ["students", "scores"])
        return Students(dsl.Collected(student.outputs["student"]), dsl.Collected(scored.outputs["scores"]))

    def body(
        games: list,
        profile: str,
        store_uri: str,
        tracking_uri: str,
        minio_endpoint: str,
        experiment: str,
        **hyperparameters: Any,
    ) -> None:
        # Runs last, even after a failure, and closes the MLflow parent run FINISHED, FAILED or KILLED from the
        # run's own records: it takes no PipelineTaskFinalStatus, whose state stays RUNNING on backends before
        # 2.17.0 around these sub-DAGs (src/polydistill_kfp/components/end_run.py, polydistill.tracking.outcome).
        finish = configure(comps[S.END_RUN](
            tracking_uri=tracking_uri, experiment=experiment, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
        finish.set_caching_options(False)
        with dsl.ExitHandler(finish, name="stages"):
            setup = configure(comps[S.START_RUN](
                profile=profile, games=games, store_uri=store_uri, tracking_uri=tracking_uri,
                experiment=experiment, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                registered_model=REGISTERED_MODEL, **hyperparameters))
            setup.set_caching_options(False)  # a new MLflow parent run for every pipeline run
            out = setup.outputs
            common = {"tracking_uri": out["tracking_uri"], "parent_run_id": out["parent_run_id"],
                      "experiment": experiment}
            loop = per_game(
                games=out["games"], teacher_config=out["teacher_config"], export_config=out["export_config"],
                autoencoder_config=out["autoencoder_config"], evaluate_config=out["evaluate_config"],
                warm_starts=out["warm_starts"], import_config=out["import_config"], run_root=out["run_root"],
                minio_endpoint=minio_endpoint, **common)
            trained = students_dag(
                students=STUDENTS, games=out["games"], game_records=loop.outputs["game_records"],
                distill_config=out["distill_config"], evaluate_config=out["evaluate_config"],
                run_root=out["run_root"], minio_endpoint=minio_endpoint, **common)
            baseline = configure(comps[S.EVALUATE](
                label="random", games=out["games"], config=out["evaluate_config"], **common),
                "evaluate random")
            configure(comps[S.REPORT](
                teacher_scores=loop.outputs["teacher_scores"],
                student_scores=trained.outputs["scores"],
                random_scores=baseline.outputs["scores"],
                students=trained.outputs["students"],
                buffers=loop.outputs["buffers"],
                latents=loop.outputs["latents"],
                tracking_uri=out["tracking_uri"],
                parent_run_id=out["parent_run_id"],
                registered_model=REGISTERED_MODEL,
                run_root=out["run_root"],
                retraining_config=out["retraining_config"],
            ))

    signature = pipeline_signature(variant.default_profile)

    def polydistill(*args: Any, **kwargs: Any) -> None:
        """The whole DAG (see the module docstring)."""
        arguments = signature.bind(*args, **kwargs)  # kfp passes one channel per parameter, in signature order
        arguments.apply_defaults()
        body(**arguments.arguments)

    # KFP reads a pipeline's parameters from inspect.signature (kfp/dsl/component_factory.py
    # extract_component_interface, kfp/dsl/graph_component.py), which honours __signature__.
    polydistill.__signature__ = signature  # type: ignore[attr-defined]
    polydistill.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return dsl.pipeline(name=variant.name, description=variant.description)(polydistill)


def pipeline_parameters(pipeline: Any) -> dict[str, inspect.Parameter]:
    """The parameters of a compiled-or-not pipeline function, by name, in signature order."""
    return dict(inspect.signature(pipeline.pipeline_func).parameters)


#: The pipelines, by variant name. ``polydistill`` is the one the local runner and ``submit`` use by default.
PIPELINES: dict[str, Any] = {name: _make_pipeline(v) for name, v in VARIANTS.items()}
polydistill_pipeline = PIPELINES["polydistill"]
polydistill_paper_pipeline = PIPELINES["polydistill-paper"]

#: What ``polydistill run`` executes: the CPU variant without retries (never compiled).
LOCAL_VARIANT = dataclasses.replace(VARIANTS["polydistill"], retries=0)
local_pipeline = _make_pipeline(LOCAL_VARIANT)
