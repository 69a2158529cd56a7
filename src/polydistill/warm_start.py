"""Warm-started teachers: a pipeline run's teachers start from the champion's pipeline run's teachers.

With ``retraining.warm_start = champion`` each teacher loads the weights of the teacher that the current
champion student (MLflow registry alias ``champion``) was distilled from, for its game, and trains
``teacher.total_steps`` further agent steps in a fresh run directory, recording fresh experience. The
champion's model version names those teachers (tag ``polydistill.teachers``: store URI and the sha256 of
the checkpoint's ``metadata.json``, which itself holds the weights' sha256), so the source is found
without listing the store and verified before it is used. A game the champion has no teacher for (or no
champion at all) starts from scratch.

What is carried over: the online network's weights (also copied into the target network). Not carried
over: the optimizer state, which a finished teacher checkpoint does not keep (Adam starts afresh), and
the replay memory (the new run records its own experience). The run's own resume points are untouched:
once the warm-started run has written one, a resume loads that, so a killed warm-started run resumes to
the same bytes as an unbroken one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polydistill.errors import PolydistillError

from .checkpoint import CheckpointError, checkpoint_digest, load_checkpoint

__all__ = ["WarmStartError", "WarmStartSource", "checkpoint_digest", "load_initial_weights", "plan", "verify"]

log = logging.getLogger(__name__)


class WarmStartError(PolydistillError, ValueError):
    """A warm-start source is unusable (changed since it was recorded, another game or architecture)."""


@dataclass(frozen=True)
class WarmStartSource:
    """Where one game's teacher starts from: the checkpoint's store ``uri`` and ``sha256`` (of its
    ``metadata.json``), the MLflow parent run and KFP run it was trained in, and the champion version."""

    game: str
    uri: str
    sha256: str
    source_run_id: str
    kfp_run_id: str
    model_version: str

    def as_dict(self) -> dict[str, str]:
        """As a plain dict (a pipeline parameter)."""
        return asdict(self)


def plan(champion: dict[str, str] | None, games: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{GAME: WarmStartSource.as_dict()}`` for the games the champion's version names a teacher for
    (``champion``: :func:`polydistill.tracking.champion_tags`, None when there is none)."""
    from .tracking.champion import teachers_of
    from .tracking.names import VTAG_KFP_RUN, VTAG_PIPELINE_RUN

    if not champion:
        return {}
    teachers = teachers_of(champion)
    out = {}
    for game in games:
        t = teachers.get(game)
        if t and t.get("sha256"):
            out[game] = WarmStartSource(game, t["uri"], t["sha256"], champion.get(VTAG_PIPELINE_RUN, ""),
                                        champion.get(VTAG_KFP_RUN, ""), champion.get("version", "")).as_dict()
    return out


def verify(source: dict[str, str], directory: str | Path) -> Path:
    """The fetched checkpoint ``directory`` of ``source`` after checking its digest; raises
    :class:`WarmStartError` naming the URI when it changed since the champion recorded it."""
    d = Path(directory)
    try:
        digest = checkpoint_digest(d)
    except OSError as e:
        raise WarmStartError(f"warm-start teacher at {source['uri']} is unreadable ({e}); "
                             "run with --warm-start none") from None
    if digest != source["sha256"]:
        raise WarmStartError(f"warm-start teacher at {source['uri']} changed since the champion recorded it "
                             f"(sha256 {digest[:12]}... != {source['sha256'][:12]}...); run with --warm-start none")
    return d


def load_initial_weights(online: Any, target: Any, directory: str | Path, game: str) -> None:
    """Copy the teacher weights of checkpoint ``directory`` into ``online`` and ``target`` (same
    architecture and game required)."""
    try:
        model, meta = load_checkpoint(directory, "cpu")
    except CheckpointError as e:
        raise WarmStartError(f"cannot warm-start {game} from {directory}: {e}") from None
    if meta.get("kind") != "teacher" or meta.get("game") != game:
        raise WarmStartError(f"{directory} holds a {meta.get('kind')} for {meta.get('game')!r}, not a {game} "
                             "teacher; warm-start from a teacher of the same game")
    try:
        online.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise WarmStartError(f"the teacher at {directory} does not fit this run's network ({str(e)[:200]}); "
                             "use the same env settings or --warm-start none") from None
    target.load_state_dict(online.state_dict())
    log.info("%s teacher warm-started from %s", game, directory)
