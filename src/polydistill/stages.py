"""The pipeline's stage names: one constant each, used by the DAG, the components, the CLI and MLflow.

A stage's name is its KFP component name (the component function's name with ``_`` -> ``-``, which
``tests/test_pipeline.py`` checks against these constants), its CLI subcommand where it has one, and the first
part of its MLflow child run's name (``train-teacher/Pong``).
"""

from __future__ import annotations

START_RUN = "start-run"
TRAIN_TEACHER = "train-teacher"
EXPORT_BUFFER = "export-buffer"
TRAIN_AUTOENCODER = "train-autoencoder"
ENCODE_BUFFER = "encode-buffer"
DISTILL = "distill"
EVALUATE = "evaluate"
REPORT = "report"
END_RUN = "end-run"

#: Every stage of the pipeline, in DAG order.
ALL = (START_RUN, TRAIN_TEACHER, EXPORT_BUFFER, TRAIN_AUTOENCODER, ENCODE_BUFFER, DISTILL, EVALUATE, REPORT, END_RUN)
#: Stages that train a network and resume from their last checkpoint when retried.
TRAINING = (TRAIN_TEACHER, TRAIN_AUTOENCODER, DISTILL)
#: Stages that read or write the object store (and get its credentials): start-run records the run in the
#: store's run index, report applies the retention setting.
STORE = (START_RUN, TRAIN_TEACHER, EXPORT_BUFFER, TRAIN_AUTOENCODER, ENCODE_BUFFER, DISTILL, REPORT)
#: The config model (a key of ``polydistill.config.STAGES``) each stage's task reads; the training stages'
#: working directories are ``RUN_ROOT/work/<this>/NAME``.
CONFIG = {TRAIN_TEACHER: "teacher", EXPORT_BUFFER: "export", TRAIN_AUTOENCODER: "autoencoder", DISTILL: "distill",
          EVALUATE: "evaluate"}
