"""The ``polydistill`` command: one subcommand per stage, plus the pipeline commands.

Each stage's command lives in its own module of this package; flags for a stage's settings are generated
from its config model (:mod:`polydistill.config`), so ``--help`` always matches the config. Precedence:
flags > ``--config FILE`` > ``--profile``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from .. import __version__
from .handler import PolydistillGroup

# Modules that register subcommands on :data:`main`, imported below (after main exists: they decorate it).
COMMAND_MODULES = ("teacher", "interop", "buffer", "autoencoder", "distill", "evaluate", "tracking", "pipeline")


@click.group(cls=PolydistillGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="polydistill")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, default=False,
              help="Show the traceback of an unexpected error instead of the one-line message.")
def main(verbose: int, debug: bool) -> None:
    """Multi-task policy distillation for Atari, from teachers to one student, as a Kubeflow pipeline.

    Stages: train-teacher (or import-teacher), export-buffer, buffer-info, train-autoencoder, encode-buffer,
    distill, evaluate, report. Pipeline: run (whole DAG locally), compile, submit, schedule. MLflow: compare.
    Minari: export-minari.

    Errors: bad input is one line (polydistill: error: ...) and exit status 2; anything unexpected is one
    line naming the file its traceback went to, status 1 (--debug: the traceback).
    """
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # torch on a shared laptop: one intra-op pool is plenty next to the env threads.
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2)))


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
