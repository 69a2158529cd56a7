"""Multi-task policy distillation: one student learns every game from its teacher, offline, from states.

The algorithm, top to bottom (Rusu et al. 2015, "Policy Distillation"; Parisotto et al. 2015, "Actor-Mimic";
the seed paper):

1. Pair each game's teacher checkpoint with its experience dataset (by canonical game name) and check
   everything (games, action sets, codecs, action layout, initialisation) before any training.
2. Build the student: the teacher's Dueling architecture scaled by ``width``, with heads laid out by
   ``actions``: ``shared`` (one head, all games have the same number of actions), ``per-game`` (one head per
   game, selected by task id) or ``union`` (one head over the 18 ALE actions; each game's illegal actions
   masked). Initialised at random or as a copy of one teacher (``init=teacher:GAME``, the seed paper).
3. Every optimizer step draw ``batch_size`` states per game from a
   :class:`~polydistill.sampling.StreamingSampler` (bounded memory: a pool of decoded shards; ``source``:
   ``full`` all of the dataset, ``subset`` its most recent ``subset_fraction``, ``latent`` autoencoder
   codes decoded on the training device). Teacher targets are the Q-values stored in the dataset when
   present, else the teacher's forward pass on the same states.
4. One loss per game (``kl`` / ``nll`` / ``mse`` / ``actor_mimic``, see :mod:`polydistill.losses`), then the
   gradient of their sum (``schedule=sum``, the seed) or of one game per step in turn (``round_robin``,
   Policy Distillation). Adam. Actor-Mimic trains a per-game feature regressor jointly.
5. Every ``eval_every`` steps: action agreement with the teacher (argmax match) and the loss on up to
   :data:`VALIDATION_STATES` held-out states per game (the sampler's held-out split of the trained range,
   spread over the dataset); logged through ``on_metrics`` and the progress bar.
6. Every ``checkpoint_every`` steps a resume point (student, optimizer, regressors, step, RNG, sampler seeds);
   a run killed and restarted with the same ``out_dir`` resumes there and ends at the same step count. The
   minibatch stream after a resume is seeded from the resume step: reproducible, not bit-identical to an
   unbroken run.
7. At the end: the student checkpoint (``OUT/checkpoint``, loadable with ``weights_only=True`` through
   :func:`polydistill.agents.load_agent`), ``curves.csv`` and ``curves.png`` (loss and agreement per game).
   A finished run in ``out_dir`` is reused, not retrained.
"""

from __future__ import annotations

from .curves import CURVES_CSV, CURVES_PNG
from .data import VALIDATION_BATCH, VALIDATION_SHARDS, VALIDATION_STATES, validation_batches
from .errors import DistillError
from .games import teacher_checkpoint_dir
from .layout import StudentLayout, build_student, parse_init, plan_layout
from .objective import compute_losses, game_loss, to_head_columns
from .trainer import REGRESSORS_FILE, DistillResult, distill

__all__ = [
    "CURVES_CSV",
    "CURVES_PNG",
    "REGRESSORS_FILE",
    "VALIDATION_BATCH",
    "VALIDATION_SHARDS",
    "VALIDATION_STATES",
    "DistillError",
    "DistillResult",
    "StudentLayout",
    "build_student",
    "compute_losses",
    "distill",
    "game_loss",
    "parse_init",
    "plan_layout",
    "teacher_checkpoint_dir",
    "to_head_columns",
    "validation_batches",
]
