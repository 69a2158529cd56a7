"""Where one pipeline run keeps its data in the object store, and the game records that name it.

Layout of a pipeline run (``RUN_ROOT = STORE/runs/<kfp run id>``)::

    RUN_ROOT/teachers/GAME/   the teacher's checkpoint, published (mirror.publish_dir)   (train-teacher)
    RUN_ROOT/buffers/GAME/    experience dataset with teacher Q-values                   (export-buffer)
    RUN_ROOT/latents/GAME/    latent dataset                                             (encode-buffer)
    RUN_ROOT/work/STAGE/NAME/ resumable state of a training task (mirror.WorkDir), removed when it succeeds

The students read every game's teacher and datasets from there, named by one *game record* per game (a dict
parameter, :func:`game_record`), not through list-typed artifact inputs: the Kubeflow backend hands a
sub-DAG's task only the last artifact of a list input (kubeflow/pipelines#13900,
``backend/src/v2/metadata/client.go`` ``GetInputArtifactsByExecutionID``), while parameters cross DAG
boundaries whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from polydistill.errors import PolydistillError

#: Set by the local overlay's ConfigMap (``s3://polydistill``, the bucket it creates); unset or empty on Kubeflow.
STORE_URI_ENV = "POLYDISTILL_STORE_URI"
#: Kubeflow's object store and the prefix a profile's key may write (kubeflow/manifests v1.11,
#: ``pipelines-profile-controller/sync.py``: ``mlpipeline/private/<namespace>/*``, ``shared/*``, ``artifacts/*``).
KUBEFLOW_BUCKET = "mlpipeline"
#: The fields of a game record (:func:`game_record`): what the students need of one game, by URI.
GAME_RECORD_FIELDS = ("game", "teacher", "buffer", "buffer_sha256", "latents", "latents_sha256")
UPSTREAM_LIST_ISSUE = "kubeflow/pipelines#13900"


class RunLayoutError(PolydistillError, ValueError):
    """A pipeline run's store, run id or game records are unusable; the message names which and the fix."""


def default_store_uri(namespace_file: str | Path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                      environ: dict[str, str] | None = None) -> str:
    """The store a pipeline run uses when its ``store_uri`` parameter is empty: ``$POLYDISTILL_STORE_URI``
    (the standalone overlay's bucket), else inside a Kubeflow pod the profile's private prefix of
    Kubeflow's own bucket, ``s3://mlpipeline/private/<namespace>/polydistill``.

    Raises:
        RunLayoutError: neither is there (not on a cluster): the caller must name a store.
    """
    env = os.environ if environ is None else environ
    uri = env.get(STORE_URI_ENV, "").strip()
    if uri:
        return uri
    path = Path(namespace_file)
    if path.is_file() and path.read_text().strip():
        return f"s3://{KUBEFLOW_BUCKET}/private/{path.read_text().strip()}/polydistill"
    raise RunLayoutError("store_uri is empty and this is no Kubeflow pod: pass s3://bucket/prefix or file:///path")


def run_root(store_uri: str, run_id: str) -> str:
    """Where one pipeline run keeps its datasets: ``STORE/runs/RUN_ID`` (``retention.run_root_of``, the one
    definition: retention deletes nothing else).

    Raises:
        RunLayoutError: ``run_id`` is not one plain path segment.
    """
    from .retention import RetentionRefused, run_root_of

    try:
        return run_root_of(store_uri, run_id)
    except RetentionRefused as e:
        raise RunLayoutError(str(e)) from None


def data_uri(root: str, kind: str, game: str) -> str:
    """``RUN_ROOT/KIND/GAME``, e.g. the buffer of one game."""
    from .store import join_uri

    return join_uri(root, kind, game)


def dataset_ref(name: str, uri: str, game: str, sha256: str | None = None) -> Any:
    """A :class:`polydistill.tracking.lineage.DatasetRef` for the dataset at ``uri`` (its manifest's digest
    and step count read from the store unless ``sha256`` is given)."""
    from .buffer import MANIFEST, manifest_digest
    from .store import open_store
    from .tracking.lineage import DatasetRef

    store = open_store(uri)
    manifest = json.loads(store.get_bytes(MANIFEST))
    return DatasetRef(name=f"{name}/{game}", uri=uri, sha256=sha256 or manifest_digest(store), game=game,
                      steps=manifest.get("num_steps"))


def teacher_lineage(root: str, games: list[str]) -> dict[str, dict[str, str]]:
    """``{GAME: {"uri", "sha256"}}`` of the teachers a run published (``RUN_ROOT/teachers/GAME``), the
    digest of each checkpoint's ``metadata.json``: what a later run's warm start finds and verifies."""
    from .checkpoint import METADATA_FILE, checkpoint_digest
    from .store import open_store

    out = {}
    for game in games:
        uri = data_uri(root, "teachers", game)
        out[game] = {"uri": uri, "sha256": checkpoint_digest(open_store(uri).get_bytes(METADATA_FILE))}
    return out


def game_record(game: str, teacher_uri: str, buffer_uri: str, latents_uri: str) -> dict[str, str]:
    """What the students need of one game: its teacher and datasets by store URI, with the datasets'
    manifest digests (the students refuse a dataset that changed since)."""
    from .buffer import manifest_digest

    return {"game": game, "teacher": teacher_uri, "buffer": buffer_uri, "buffer_sha256": manifest_digest(buffer_uri),
            "latents": latents_uri, "latents_sha256": manifest_digest(latents_uri)}


def check_game_records(games: list[str], records: list[Any]) -> dict[str, dict[str, str]]:
    """The game records by game, after checking that there is exactly one complete record per game.

    Raises:
        ValueError: one line naming what differs (counts, games, a missing field); a count short of the games
            is what a backend that drops list items produces, so the message names that issue. A plain
            ValueError: not the user's input but the backend's delivery (the parent run's error tag names it).
    """
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"game records must be a list of dicts, got {type(records).__name__}")
    by_game: dict[str, dict[str, str]] = {}
    for r in records:
        missing = [f for f in GAME_RECORD_FIELDS if not r.get(f)]
        if missing:
            raise ValueError(f"the game record of {r.get('game', '?')!r} lacks {', '.join(missing)}")
        if r["game"] in by_game:
            raise ValueError(f"two game records for {r['game']}: each game's teacher, buffer and latents once")
        by_game[r["game"]] = {f: str(r[f]) for f in GAME_RECORD_FIELDS}
    if sorted(by_game) != sorted(games) or len(records) != len(games):
        raise ValueError(
            f"{len(games)} games ({', '.join(games) or 'none'}) but {len(records)} teachers, buffers and latents "
            f"({', '.join(sorted(by_game)) or 'none'}); the per-game outputs did not all arrive (a backend that "
            f"drops list items does this: {UPSTREAM_LIST_ISSUE})")
    return by_game


def check_recorded_datasets(records: dict[str, dict[str, str]], kind: str) -> dict[str, str]:
    """``{GAME: URI}`` of the ``kind`` (``buffer`` or ``latents``) datasets the records name, after checking
    that each manifest still has the digest recorded for it.

    Raises:
        RunLayoutError: a dataset changed after it was recorded (naming the game and URI).
    """
    from .buffer import manifest_digest

    for game, r in records.items():
        if manifest_digest(r[kind]) != r[f"{kind}_sha256"]:
            raise RunLayoutError(f"the {kind} dataset of {game} at {r[kind]} changed after it was recorded "
                                 f"(manifest sha256 differs); rerun the pipeline")
    return {game: r[kind] for game, r in records.items()}
