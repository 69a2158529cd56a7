"""MLflow tracking: the datasets a training task read, as MLflow dataset inputs.

Each dataset in the object store is named by its store URI and identified by the sha256 of its manifest
(:func:`polydistill_kfp.components.runtime.manifest_digest`): the manifest lists every shard with its own
digest, so the manifest's digest names one exact version of the buffer. MLflow keeps at most 36 characters
of a digest (``mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE``), so the digest column shows the first 32
hex digits and the full sha256 is in the dataset's profile and in an input tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: ``source_type`` of polydistill's datasets in MLflow (shown in the UI's dataset details).
SOURCE_TYPE = "polydistill-store"
_DIGEST_CHARS = 32


@dataclass(frozen=True)
class DatasetRef:
    """One dataset a task trained on: ``name`` (``buffer/Pong``), its store ``uri``, the manifest's
    ``sha256`` (hex), the ``game`` and its ``steps`` (agent steps recorded)."""

    name: str
    uri: str
    sha256: str
    game: str
    steps: int | None = None
    context: str = "training"


def dataset_inputs(refs: Sequence[DatasetRef]) -> list[Any]:
    """MLflow ``DatasetInput`` entities for ``refs`` (for ``MlflowClient.log_inputs``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    out = []
    for r in refs:
        profile = {"game": r.game, "steps": r.steps, "sha256": r.sha256}
        ds = Dataset(name=r.name, digest=r.sha256[:_DIGEST_CHARS], source_type=SOURCE_TYPE,
                     source=json.dumps({"uri": r.uri}), profile=json.dumps(profile))
        out.append(DatasetInput(ds, tags=[InputTag(MLFLOW_DATASET_CONTEXT, r.context),
                                          InputTag("polydistill.sha256", r.sha256),
                                          InputTag("polydistill.game", r.game)]))
    return out
