"""The polydistill Kubeflow pipeline (``polydistill_kfp``): the DAG (:mod:`.pipeline`), compiling
(:mod:`.compile`; the images each task runs in: :mod:`.images`), local runs (:mod:`.local`), submitting and
scheduling (:mod:`.submit`); the components are in :mod:`polydistill_kfp.components`. Importing this package
imports nothing else."""
