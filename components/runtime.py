"""Glue shared by the component bodies, imported inside them at run time (never imports kfp).

A KFP lightweight component runs only its function's source, so helpers must be importable in the step's
environment: the project image installs ``polydistill_kfp`` together with the library, and the local runner
uses the editable install. Everything here is plumbing between KFP and the library (environment, where a
stage keeps its resumable state, copying outputs into artifacts); the stage logic lives in ``polydistill``.

Layout of a pipeline run in the object store (``RUN_ROOT = STORE/runs/<kfp run id>``)::

    RUN_ROOT/teachers/GAME/   the teacher's checkpoint                    (train-teacher)
    RUN_ROOT/buffers/GAME/    experience dataset with teacher Q-values    (export-buffer)
    RUN_ROOT/latents/GAME/    latent dataset                              (encode-buffer)
    RUN_ROOT/work/STAGE/NAME/ resumable state of a training task, removed when the task succeeds

The students read every game's teacher and datasets from there, named by one *game record* per game (a dict
parameter, see :func:`game_record`), not through list-typed artifact inputs: the Kubeflow backend hands a
sub-DAG's task only the last artifact of a list input (kubeflow/pipelines#13900,
``backend/src/v2/metadata/client.go`` ``GetInputArtifactsByExecutionID``), while parameters cross DAG
boundaries whole.

Retries: Kubeflow retries a failed training task in a fresh pod, whose local disk is empty. The task's
working directory is therefore tied to ``RUN_ROOT/work/...``: with a ``file://`` store that *is* the working
directory; with ``s3://`` the task restores it from there at start and mirrors new resume points back while
it trains (:class:`WorkDir`), so the retry resumes from the last checkpoint instead of starting over.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("polydistill.pipeline")

#: Seconds between mirrors of a training task's working directory to an ``s3://`` store.
SYNC_SECONDS_ENV = "POLYDISTILL_SYNC_SECONDS"
DEFAULT_SYNC_SECONDS = 300.0
#: torch threads for a task inside the per-game loop. Set by the local runner, whose loop iterations run at once
#: on one machine while its top-level tasks run one at a time; unset on a cluster (each pod has its CPU request).
LOOP_THREADS_ENV = "POLYDISTILL_LOOP_THREADS"
# Uploaded last, so a reader of the mirror never follows a pointer to a half-uploaded resume point.
_POINTER_FILES = ("LATEST", "run.json")
#: The keys under a mirrored directory, written after them: readers never list the prefix, since a key scoped
#: to a prefix may not (ListObjects needs s3:ListBucket on the bucket, which Kubeflow's per-profile policy
#: does not grant: kubeflow/manifests v1.11.0 pipelines-profile-controller/sync.py).
INDEX_KEY = "polydistill-index.json"


def _read_index(store: Any) -> list[str]:
    """The keys a mirror's index names ([] when there is no index yet)."""
    from polydistill.store import ObjectNotFoundError

    try:
        data = json.loads(store.get_bytes(INDEX_KEY))
    except ObjectNotFoundError:
        return []
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{store.uri}/{INDEX_KEY} is not an index of keys")
    return keys


def _write_index(store: Any, keys: list[str]) -> None:
    store.put_bytes(INDEX_KEY, json.dumps({"keys": sorted(keys)}).encode())


def _download(store: Any, keys: list[str], dest: Path) -> list[Path]:
    """Download each of ``keys`` to ``dest/KEY``; returns the local paths, in order."""
    paths = []
    for key in keys:
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, target)
        paths.append(target)
    return paths


def _delete_all(store: Any, keys: list[str]) -> int:
    """Delete ``keys``; returns how many could not be, because the key may not delete: Kubeflow's
    per-profile policy grants ``s3:Put*``, ``s3:Get*`` and ``s3:List*`` but no ``s3:DeleteObject``
    (kubeflow/manifests v1.11.0 sync.py). Stale objects are harmless once the index no longer names them."""
    from polydistill.store import StoreAccessDeniedError

    kept = 0
    for key in keys:
        try:
            store.delete(key)
        except StoreAccessDeniedError:
            kept += 1
    if kept:
        log.warning("%d objects under %s stay: this key may not delete (on Kubeflow the profile's policy "
                    "grants no s3:DeleteObject; the bucket's lifecycle rules or an admin remove them)",
                    kept, store.uri)
    return kept


def setup(minio_endpoint: str = "", in_loop: bool = False) -> None:
    """Prepare a step's process: log lines to stdout (KFP shows them), the S3 endpoint from the parameter, and
    for a task of the per-game loop (``in_loop``) its share of the cores when ``POLYDISTILL_LOOP_THREADS`` says.

    An empty ``minio_endpoint`` keeps ``MINIO_ENDPOINT`` from the environment (on a cluster: the
    ``polydistill-config`` ConfigMap).
    """
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("POLYDISTILL_PROGRESS", "log")
    if minio_endpoint:
        os.environ["MINIO_ENDPOINT"] = minio_endpoint
    threads = os.environ.get(LOOP_THREADS_ENV, "").strip() if in_loop else ""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        log.info("torch threads: %s (this machine's share for one game's task)", threads)


#: Set by the local overlay's ConfigMap (``s3://polydistill``, the bucket it creates); unset or empty on Kubeflow.
STORE_URI_ENV = "POLYDISTILL_STORE_URI"
#: Kubeflow's object store and the prefix a profile's key may write (kubeflow/manifests v1.11,
#: ``pipelines-profile-controller/sync.py``: ``mlpipeline/private/<namespace>/*``, ``shared/*``, ``artifacts/*``).
KUBEFLOW_BUCKET = "mlpipeline"


def default_store_uri(namespace_file: str | Path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                      environ: dict[str, str] | None = None) -> str:
    """The store a pipeline run uses when its ``store_uri`` parameter is empty: ``$POLYDISTILL_STORE_URI``
    (the standalone overlay's bucket), else inside a Kubeflow pod the profile's private prefix of
    Kubeflow's own bucket, ``s3://mlpipeline/private/<namespace>/polydistill``.

    Raises:
        ValueError: neither is there (not on a cluster): the caller must name a store.
    """
    env = os.environ if environ is None else environ
    uri = env.get(STORE_URI_ENV, "").strip()
    if uri:
        return uri
    path = Path(namespace_file)
    if path.is_file() and path.read_text().strip():
        return f"s3://{KUBEFLOW_BUCKET}/private/{path.read_text().strip()}/polydistill"
    raise ValueError("store_uri is empty and this is no Kubeflow pod: pass s3://bucket/prefix or file:///path")


def run_root(store_uri: str, run_id: str) -> str:
    """Where one pipeline run keeps its datasets: ``STORE/runs/RUN_ID`` (``retention.run_root_of``, the one
    definition: retention deletes nothing else)."""
    from polydistill.retention import run_root_of

    return run_root_of(store_uri, run_id)


def data_uri(root: str, kind: str, game: str) -> str:
    """``RUN_ROOT/KIND/GAME``, e.g. the buffer of one game."""
    from polydistill.store import join_uri

    return join_uri(root, kind, game)


def _local_dir(uri: str) -> Path | None:
    """The directory of a ``file://`` URI or plain path; ``None`` for remote stores."""
    if "://" not in uri:
        return Path(uri)
    if uri.startswith("file://"):
        from polydistill.store import open_store

        return open_store(uri).local_path()
    return None


class WorkDir:
    """A training task's local working directory, mirrored to ``uri`` when that is a remote store."""

    def __init__(self, uri: str, sync_seconds: float | None = None) -> None:
        self.uri = uri
        local = _local_dir(uri)
        self.remote = local is None
        self.path = local if local is not None else Path(tempfile.mkdtemp(prefix="polydistill-work-"))
        self.path.mkdir(parents=True, exist_ok=True)
        env = os.environ.get(SYNC_SECONDS_ENV)
        self.sync_seconds = sync_seconds if sync_seconds is not None else float(env or DEFAULT_SYNC_SECONDS)
        self._synced: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) as last uploaded
        self._last_sync = time.monotonic()
        self._store: Any = None

    def _open(self) -> Any:
        if self._store is None:
            from polydistill.store import open_store

            self._store = open_store(self.uri, create_bucket=True)
        return self._store

    def _local_files(self) -> dict[str, Path]:
        files = {}
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path)
            # Hidden entries are writes in progress (e.g. the teacher's ".step-N.tmp" directories).
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                files[rel.as_posix()] = p
        return files

    def restore(self) -> int:
        """Download what an earlier attempt of this task left at ``uri``; returns the number of files."""
        if not self.remote:
            return 0
        store = self._open()
        keys = _read_index(store)
        for key, path in zip(keys, _download(store, keys, self.path), strict=True):
            st = path.stat()
            self._synced[key] = (st.st_size, st.st_mtime_ns)
        if keys:
            log.info("restored %d files of an earlier attempt from %s", len(keys), self.uri)
        return len(keys)

    def sync(self) -> None:
        """Upload new and changed files (pointers last), then delete remote files gone locally."""
        if not self.remote:
            return
        store = self._open()
        files = self._local_files()
        changed = [
            k for k, p in files.items()
            if self._synced.get(k) != (p.stat().st_size, p.stat().st_mtime_ns)
        ]
        changed.sort(key=lambda k: (k.rsplit("/", 1)[-1] in _POINTER_FILES, k))
        for key in changed:
            st = files[key].stat()
            store.put_file(key, files[key])
            self._synced[key] = (st.st_size, st.st_mtime_ns)
        before = _read_index(store)
        if changed or sorted(before) != sorted(files):
            _write_index(store, list(files))  # after the files it names, before the old ones go
        gone = [k for k in before if k not in files]
        _delete_all(store, gone)
        for key in gone:
            self._synced.pop(key, None)
        self._last_sync = time.monotonic()
        if changed or gone:
            log.info("mirrored working directory to %s (%d uploaded, %d removed)", self.uri, len(changed),
                     len(gone))

    def maybe_sync(self, *_: Any) -> None:
        """:meth:`sync` if ``sync_seconds`` have passed; usable as an ``on_metrics`` callback."""
        if self.remote and time.monotonic() - self._last_sync >= self.sync_seconds:
            try:
                self.sync()
            except Exception as e:  # a failed mirror must not stop training; the next one may succeed
                log.warning("could not mirror %s: %s", self.uri, e)

    def discard(self) -> None:
        """Remove the remote mirror (the task succeeded; its outputs are in artifacts and the store)."""
        if self.remote:
            store = self._open()
            if _delete_all(store, _read_index(store)):
                _write_index(store, [])  # what stays is no resume point for a later attempt
            else:
                _delete_all(store, [INDEX_KEY])
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def work_dir(uri: str, sync_seconds: float | None = None) -> Iterator[WorkDir]:
    """A :class:`WorkDir` for ``uri``: restored on entry; on success the remote mirror is removed, on
    failure it is brought up to date so a retry resumes from the newest checkpoint."""
    wd = WorkDir(uri, sync_seconds)
    wd.restore()
    try:
        yield wd
    except BaseException:
        with contextlib.suppress(Exception):
            wd.sync()
        if wd.remote:  # the mirror has it; the scratch copy is of no use to anyone
            shutil.rmtree(wd.path, ignore_errors=True)
        raise
    wd.discard()


MetricsCallback = Callable[[dict[str, float], int], Any]


def chain(*callbacks: MetricsCallback | None) -> MetricsCallback:
    """One ``on_metrics(metrics, step)`` callback calling each of ``callbacks`` in turn."""
    live = [c for c in callbacks if c is not None]

    def call(metrics: dict[str, float], step: int) -> None:
        for c in live:
            c(metrics, step)

    return call


def copy_dir(src: str | Path, dest: str | Path) -> Path:
    """Copy the directory ``src`` to ``dest`` (an output artifact's path), creating it."""
    dest = Path(dest)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def copy_file(src: str | Path, dest: str | Path) -> Path:
    """Copy the file ``src`` to ``dest`` (an output artifact's path), creating its directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def write_html(path: str | Path, title: str, images: Sequence[str | Path] = (), body: str = "") -> None:
    """A self-contained HTML page (PNG images inlined) for an ``Output[HTML]``: the Kubeflow UI shows it."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>",
             f"<body><h2>{html.escape(title)}</h2>", body]
    for img in images:
        p = Path(img)
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{html.escape(p.name)}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts))


def finite(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values``: artifact metadata is a protobuf Struct, which rejects NaN and inf
    (a teacher that finished no episode has a NaN mean return)."""
    import math

    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def log_scalars(metrics_artifact: Any, values: dict[str, Any]) -> None:
    """Record the finite numbers of ``values`` on an ``Output[Metrics]`` (shown in the Kubeflow UI)."""
    for name, value in finite(values).items():
        metrics_artifact.log_metric(name, value)


def log_checkpoint(run: Any, checkpoint_dir: str | Path, name: str) -> str | None:
    """Log the network saved in ``checkpoint_dir`` to the MLflow stage ``run`` as model ``name``.

    MLflow's pt2 format traces the network, so it gets an input example: two blank uint8 states.
    """
    if not run.active:  # tracking is off (MLflow unreachable): do not load the network for nothing
        return None
    import numpy as np

    from polydistill.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_dir)
    obs = meta.get("observation") or {}
    shape = (2, int(obs.get("frame_stack", 4)), *[int(x) for x in obs.get("frame_shape", (84, 84))])
    return run.log_model(model, name, meta, np.zeros(shape, dtype=np.uint8))


def find_pipeline_run(tracking_uri: str, experiment: str, kfp_run_id: str) -> str:
    """The id of the MLflow parent run tagged ``kfp.run_id=kfp_run_id`` ("" when none or MLflow is down).

    Through the tracking layer's client, whose HTTP retries are bounded (``tracking.HTTP_DEFAULTS``: MLflow's
    own defaults retried a killed server for minutes), after a connection check that fails at once."""
    try:
        from polydistill.tracking.connection import _check_reachable, _client

        _check_reachable(tracking_uri)
        client = _client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return ""
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`kfp.run_id` = '{kfp_run_id}' and tags.`polydistill.kind` = 'pipeline'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else ""
    except Exception as e:  # tracking must never fail a pipeline step
        from polydistill.redaction import redact_uri

        log.warning("could not look up the MLflow parent run of %s (%s); its end, outcome and failure tags are "
                    "lost: it stays RUNNING in MLflow", kfp_run_id, redact_uri(" ".join(str(e).split())[:300]))
        return ""


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to an artifact path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))


#: The fields of a game record (:func:`game_record`): what the students need of one game, by URI.
GAME_RECORD_FIELDS = ("game", "teacher", "buffer", "buffer_sha256", "latents", "latents_sha256")
UPSTREAM_LIST_ISSUE = "kubeflow/pipelines#13900"


def publish_dir(src: str | Path, uri: str) -> str:
    """Copy the local directory ``src`` to the store prefix ``uri`` (files first, ``metadata.json`` last, so a
    reader that finds the metadata finds the whole checkpoint); returns ``uri``."""
    from polydistill.store import open_store

    store = open_store(uri, create_bucket=True)
    src = Path(src)
    files = sorted((p.relative_to(src).as_posix(), p) for p in src.rglob("*") if p.is_file())
    if store.local_path() is not None and store.local_path() == src.resolve():
        return uri
    last = [(k, p) for k, p in files if k == "metadata.json"]
    store.put_files([(k, p) for k, p in files if k != "metadata.json"])
    store.put_files(last)
    _write_index(store, [k for k, _ in files])
    return uri


def fetch_dir(uri: str) -> Path:
    """A local directory with everything under the store prefix ``uri``: the directory itself for ``file://``,
    a fresh temporary download for ``s3://``."""
    local = _local_dir(uri)
    if local is not None:
        return local
    from polydistill.store import open_store

    store = open_store(uri)
    dest = Path(tempfile.mkdtemp(prefix="polydistill-fetch-"))
    keys = _read_index(store)
    if not keys:
        raise FileNotFoundError(f"nothing published at {uri} (no {INDEX_KEY})")
    _download(store, keys, dest)
    return dest


def manifest_digest(uri: str) -> str:
    """sha256 (hex) of the dataset manifest stored at ``uri``: names one exact version of the dataset."""
    import hashlib

    from polydistill.buffer import MANIFEST
    from polydistill.store import open_store

    return hashlib.sha256(open_store(uri).get_bytes(MANIFEST)).hexdigest()


def dataset_ref(name: str, uri: str, game: str, sha256: str | None = None) -> Any:
    """A :class:`polydistill.tracking.lineage.DatasetRef` for the dataset at ``uri`` (its manifest's digest
    and step count read from the store unless ``sha256`` is given)."""
    from polydistill.buffer import MANIFEST
    from polydistill.store import open_store
    from polydistill.tracking.lineage import DatasetRef

    manifest = json.loads(open_store(uri).get_bytes(MANIFEST))
    return DatasetRef(name=f"{name}/{game}", uri=uri, sha256=sha256 or manifest_digest(uri), game=game,
                      steps=manifest.get("num_steps"))


def teacher_lineage(run_root: str, games: list[str]) -> dict[str, dict[str, str]]:
    """``{GAME: {"uri", "sha256"}}`` of the teachers a run published (``RUN_ROOT/teachers/GAME``), the
    digest of each checkpoint's ``metadata.json``: what a later run's warm start finds and verifies."""
    import hashlib

    from polydistill.checkpoint import METADATA_FILE
    from polydistill.store import open_store

    out = {}
    for game in games:
        uri = data_uri(run_root, "teachers", game)
        out[game] = {"uri": uri, "sha256": hashlib.sha256(open_store(uri).get_bytes(METADATA_FILE)).hexdigest()}
    return out


def game_record(game: str, teacher_uri: str, buffer_uri: str, latents_uri: str) -> dict[str, str]:
    """What the students need of one game: its teacher and datasets by store URI, with the datasets'
    manifest digests (the students refuse a dataset that changed since)."""
    return {"game": game, "teacher": teacher_uri, "buffer": buffer_uri, "buffer_sha256": manifest_digest(buffer_uri),
            "latents": latents_uri, "latents_sha256": manifest_digest(latents_uri)}


def check_game_records(games: list[str], records: list[Any]) -> dict[str, dict[str, str]]:
    """The game records by game, after checking that there is exactly one complete record per game.

    Raises:
        ValueError: one line naming what differs (counts, games, a missing field); a count short of the games
            is what a backend that drops list items produces, so the message names that issue.
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
