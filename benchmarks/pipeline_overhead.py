"""Wall time of the smoke DAG on kfp's local runner against the same stages called directly from Python.

Three ways to do the same work (same profile, games and parameters):

``local-runner``  ``polydistill run``'s code path: every task a subprocess started by kfp's local runner
                  (Python start-up and imports per task, artifact copies, MLflow child runs and models).
``components``    the component functions called in this process in DAG order (``.python_func``): the same
                  artifacts and MLflow logging, without kfp's runner and subprocesses.
``library``       the library functions alone (train_teacher, export_buffer, ... write_report): no
                  artifacts, no MLflow.

The ratios local-runner / library (all pipeline overhead) and local-runner / components (the runner's own
share) are printed. The local runner plays the games' branches, then the two students, two at a time; the
other two modes run them one after the other, which favours the runner on a machine with spare cores.

Usage: ``python benchmarks/pipeline_overhead.py [--games Pong Breakout] [--modes library components
local-runner] [--keep DIR]``. Takes a few minutes per mode on 2 free cores (much longer on a busy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
os.environ.setdefault("MPLBACKEND", "Agg")

PROFILE = "smoke"
# The smoke profile, trimmed like the end-to-end test in tests/test_pipeline.py.
PARAMS = {"teacher_steps": 1000, "record_steps": 800, "distill_steps": 30, "eval_cycle_steps": 100}


def run_library(games: list[str], root: Path) -> None:
    """Every stage through its library function, sequentially."""
    from polydistill import config as C
    from polydistill.autoencoder import train_autoencoder
    from polydistill.distill import distill
    from polydistill.encode import encode_buffer
    from polydistill.evaluate import evaluate
    from polydistill.export import export_buffer
    from polydistill.report import write_report
    from polydistill.teacher import train_teacher

    cfg = {s: C.from_dict(s, d) for s, d in C.resolve_pipeline(PROFILE, PARAMS).items()}
    store = root / "store"
    teachers, buffers, latents, results = {}, {}, {}, []
    for g in games:
        t = train_teacher(g, cfg["teacher"], root / "teacher" / g)
        teachers[g] = t.checkpoint_dir
        buffers[g] = (store / "buffers" / g).as_uri()
        export_buffer(t.out_dir, buffers[g], t.checkpoint_dir, cfg["export"])
        ae = train_autoencoder(buffers[g], cfg["autoencoder"], root / "autoencoder" / g)
        latents[g] = (store / "latents" / g).as_uri()
        encode_buffer(buffers[g], ae.checkpoint_dir, t.checkpoint_dir, latents[g],
                      code_dtype=cfg["autoencoder"].code_dtype, shard_steps=cfg["export"].shard_steps,
                      q_dtype=cfg["export"].q_dtype)
        results.append(evaluate(t.checkpoint_dir, [g], cfg["evaluate"], label="teacher"))
    for source, datasets in (("subset", buffers), ("latent", latents)):
        dcfg = cfg["distill"].model_copy(update={"source": source})
        s = distill(teachers, datasets, dcfg, root / f"distill-{source}")
        results.append(evaluate(s.checkpoint_dir, games, cfg["evaluate"], label=f"student_{source}"))
    results.append(evaluate("random", games, cfg["evaluate"], label="random"))
    write_report(results, root / "report")


def run_components(games: list[str], root: Path) -> None:
    """Every component's function in this process, in DAG order, with artifacts on disk and MLflow."""
    from kfp import dsl

    from polydistill import config as C
    from polydistill_kfp.components.distill import distill
    from polydistill_kfp.components.encode_buffer import encode_buffer
    from polydistill_kfp.components.evaluate import evaluate
    from polydistill_kfp.components.export_buffer import export_buffer
    from polydistill_kfp.components.report import report
    from polydistill_kfp.components.start_run import start_run
    from polydistill_kfp.components.train_autoencoder import train_autoencoder
    from polydistill_kfp.components.train_teacher import train_teacher
    from polydistill_kfp.pipeline import REGISTERED_MODEL, parameter_sentinel

    def art(cls: type, *parts: str) -> Any:
        path = root.joinpath("artifacts", *parts)
        return cls(name=parts[-1], uri=str(path), metadata={})

    hyper = {n: PARAMS.get(n, parameter_sentinel(n)[1]) for n in C.PIPELINE_PARAMETERS}
    out = start_run.python_func(profile=PROFILE, games=games, store_uri=(root / "store").as_uri(),
                                tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="bench",
                                kfp_run_id="1", **hyper)
    common = {"tracking_uri": out.tracking_uri, "parent_run_id": out.parent_run_id, "experiment": "bench"}
    store = {"run_root": out.run_root, "minio_endpoint": "", **common}
    per: dict[str, SimpleNamespace] = {}
    for g in out.games:
        o = SimpleNamespace(
            teacher=art(dsl.Model, g, "teacher"), experience=art(dsl.Dataset, g, "experience"),
            buffer=art(dsl.Dataset, g, "buffer"), autoencoder=art(dsl.Model, g, "autoencoder"),
            latents=art(dsl.Dataset, g, "latents"), scores=art(dsl.Artifact, g, "scores"))
        train_teacher.python_func(
            game=g, config=out.teacher_config, teacher=o.teacher, experience=o.experience,
            curve=art(dsl.HTML, g, "curve"), metrics=art(dsl.Metrics, g, "m1"), **store)
        export_buffer.python_func(
            game=g, experience=o.experience, teacher=o.teacher, config=out.export_config, buffer=o.buffer,
            metrics=art(dsl.Metrics, g, "m2"), **store)
        train_autoencoder.python_func(
            game=g, buffer=o.buffer, config=out.autoencoder_config, autoencoder=o.autoencoder,
            grid=art(dsl.HTML, g, "grid"), metrics=art(dsl.Metrics, g, "m3"), **store)
        encode_buffer.python_func(
            game=g, buffer=o.buffer, autoencoder=o.autoencoder, teacher=o.teacher,
            autoencoder_config=out.autoencoder_config, export_config=out.export_config, latents=o.latents,
            metrics=art(dsl.Metrics, g, "m4"), **store)
        evaluate.python_func(
            label="teacher", games=[g], config=out.evaluate_config, agent=o.teacher, scores=o.scores,
            metrics=art(dsl.Metrics, g, "m5"), **common)
        per[g] = o
    students, scores = {}, {}
    for source in ("subset", "latent"):
        students[source] = art(dsl.Model, source, "student")
        distill.python_func(source=source, teachers=[o.teacher for o in per.values()],
                            buffers=[o.buffer for o in per.values()],
                            latents=[o.latents for o in per.values()], config=out.distill_config,
                            student=students[source], curves=art(dsl.HTML, source, "curves"),
                            metrics=art(dsl.Metrics, source, "m6"), **store)
        scores[source] = art(dsl.Artifact, source, "scores")
        evaluate.python_func(label=f"student_{source}", games=out.games, config=out.evaluate_config,
                             agent=students[source], scores=scores[source],
                             metrics=art(dsl.Metrics, source, "m7"), **common)
    rnd = art(dsl.Artifact, "random", "scores")
    evaluate.python_func(label="random", games=out.games, config=out.evaluate_config, scores=rnd,
                         metrics=art(dsl.Metrics, "random", "m8"), **common)
    report.python_func(
        teacher_scores=[o.scores for o in per.values()], student_scores=[scores["subset"], scores["latent"]],
        random_scores=rnd, students=[students["subset"], students["latent"]],
        buffers=[o.buffer for o in per.values()],
        latents=[o.latents for o in per.values()], tracking_uri=out.tracking_uri,
        parent_run_id=out.parent_run_id, registered_model=REGISTERED_MODEL,
        report_md=art(dsl.Markdown, "report", "md"), report_html=art(dsl.HTML, "report", "html"),
        report_json=art(dsl.Artifact, "report", "json"))


def run_local_runner(games: list[str], root: Path) -> None:
    """``polydistill run``: the whole DAG on kfp's local runner."""
    from polydistill_kfp.local import run_local

    run_local(profile=PROFILE, games=games, run_dir=root / "run", params=PARAMS)


MODES = {"library": run_library, "components": run_components, "local-runner": run_local_runner}


def say(text: str) -> None:
    """Print a result line (to the real stdout: kfp's local runner leaves ``print`` indented)."""
    sys.__stdout__.write(text + "\n")
    sys.__stdout__.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", nargs="+", default=["Pong", "Breakout"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--keep", type=Path, default=None, help="Keep the outputs under this directory.")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="polydistill-bench-"))
    seconds: dict[str, float] = {}
    say(f"profile {PROFILE} + {PARAMS}, games {' '.join(args.games)}, {os.cpu_count()} CPUs")
    try:
        for mode in args.modes:
            root = base / mode
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            # The stages' own output (logs, the runner's task dumps) goes to a file: stdout keeps the results.
            with open(root / f"{mode}.log", "w") as log, contextlib.redirect_stdout(log):
                t0 = time.perf_counter()
                MODES[mode](args.games, root)
                seconds[mode] = time.perf_counter() - t0
                logging.basicConfig(stream=sys.stderr, level=logging.WARNING, force=True)  # drop the file
            say(f"{mode:>13}: {seconds[mode]:8.1f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    if "local-runner" in seconds:
        for other in ("library", "components"):
            if other in seconds:
                say(f"local-runner / {other}: {seconds['local-runner'] / seconds[other]:.2f}x "
                    f"({seconds['local-runner'] - seconds[other]:+.1f} s)")


if __name__ == "__main__":
    main()
