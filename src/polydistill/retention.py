"""Retention: keep the datasets and teachers of the last K pipeline runs (and the champion's), delete the rest.

A recurring retraining writes a new ``STORE/runs/<run id>/`` every run (teachers, buffers, latents); without
retention the store only grows. Every run records itself in the *run index* ``STORE/runs/polydistill-runs.json``
(:func:`record_run`, written by ``start-run``); at the end of a run (the ``report`` task) :func:`apply` deletes
the run roots of indexed runs older than the last ``keep`` ones, except every run root a protected model
version points at (the champion's: a warm start and the champion's lineage need its teachers and buffers).

No listing of the bucket is needed: Kubeflow's per-profile key may not list (``s3:ListBucket``) and may not
delete (no ``s3:DeleteObject``, kubeflow/manifests v1.11.0 ``sync.py``). Each run root's objects are found
from what the run wrote: a teacher's ``polydistill-index.json`` names its keys, a dataset's ``manifest.json``
its shards. A key that may not delete at all is found first (:func:`can_delete`) and retention is skipped
with one warning; a delete refused later is a logged warning (the bucket's lifecycle rules or an admin
remove them) and the run stays in the index, marked, so a later run does not retry it every time.

Entries of the index are data, never paths: a run is deleted only under the run root this module derives
itself, ``STORE/runs/<run id>`` (:func:`run_root_of`), for a run id and games of plain names. An entry whose
recorded ``run_root`` is anything else (an edited index naming ``file:///home`` or another bucket's prefix)
is refused with one warning line and left alone, and so is everything it names.

The index is read-modified-written by each run's start: two runs starting in the same second may lose one
entry (that run's datasets are then never deleted automatically, which is the safe side).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Collection, Sequence
from typing import Any

from .errors import PolydistillError
from .mirror import INDEX_KEY as _TEACHER_INDEX  # a published teacher's index (mirror.publish_dir)
from .store import ObjectNotFoundError, StoreAccessDeniedError, join_uri, open_store

log = logging.getLogger(__name__)

RUN_INDEX = "polydistill-runs.json"
_MANIFEST = "manifest.json"  # polydistill.buffer.MANIFEST (not imported: buffer pulls in numpy and zstd)


#: What a run id (a KFP run's UUID, or a local run's) and a game name may be: a plain name, one path segment.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


class RetentionRefused(PolydistillError, ValueError):
    """An index entry retention will not act on; the message is one line naming the entry and why."""


def run_root_of(store_uri: str, run_id: str) -> str:
    """Where pipeline run ``run_id`` keeps its datasets: ``STORE/runs/RUN_ID`` (the only place retention
    deletes). Raises :class:`RetentionRefused` for an id that is not one plain path segment."""
    if not isinstance(run_id, str) or not _PLAIN_NAME.fullmatch(run_id) or run_id.strip(".") == "":
        raise RetentionRefused(f"invalid pipeline run id {run_id!r} (one plain name: letters, digits, '_.-')")
    return join_uri(store_uri, "runs", run_id)


def _checked_entry(store_uri: str, entry: dict[str, Any]) -> tuple[str, list[str]]:
    """The run root (derived, never the entry's) and games of an index entry, or :class:`RetentionRefused`."""
    root = run_root_of(store_uri, entry.get("run_id"))  # type: ignore[arg-type]
    if str(entry.get("run_root", "")).rstrip("/") != root:
        raise RetentionRefused(f"run {entry.get('run_id')!r}: its recorded run root {entry.get('run_root')!r} is "
                               f"not {root}")
    games = entry.get("games", [])
    if not isinstance(games, list) or not all(isinstance(g, str) and _PLAIN_NAME.fullmatch(g) for g in games):
        raise RetentionRefused(f"run {entry.get('run_id')!r}: games {games!r} are not plain game names")
    return root, games


def _runs_store(store_uri: str) -> Any:
    return open_store(join_uri(store_uri, "runs"), create_bucket=True)


def read_index(store_uri: str) -> list[dict[str, Any]]:
    """The run index's entries, oldest first (``[]`` when there is none yet)."""
    try:
        data = json.loads(_runs_store(store_uri).get_bytes(RUN_INDEX))
    except ObjectNotFoundError:
        return []
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"{store_uri}/runs/{RUN_INDEX} is not a run index; move it away to start a new one")
    return sorted((r for r in runs if isinstance(r, dict) and r.get("run_root")), key=lambda r: r.get("started", 0))


def _write_index(store_uri: str, runs: list[dict[str, Any]]) -> None:
    _runs_store(store_uri).put_bytes(RUN_INDEX, json.dumps({"runs": runs}, indent=1).encode())


def record_run(store_uri: str, run_id: str, run_root: str, games: Sequence[str], started: float | None = None) -> None:
    """Add (or refresh) pipeline run ``run_id`` in the run index: its run root and games."""
    _checked_entry(store_uri, {"run_id": run_id, "run_root": run_root, "games": list(games)})
    runs = [r for r in read_index(store_uri) if r.get("run_id") != run_id]
    runs.append({"run_id": run_id, "run_root": run_root, "games": list(games),
                 "started": time.time() if started is None else started})
    _write_index(store_uri, runs)


def to_delete(runs: Sequence[dict[str, Any]], keep: int, protected: Collection[str]) -> list[dict[str, Any]]:
    """The entries (oldest first) outside the last ``keep`` runs whose run root no protected version
    names; nothing when ``keep`` is 0 (keep all). Entries already deleted are skipped."""
    if keep <= 0:
        return []
    live = [r for r in runs if not r.get("deleted")]
    old = live[: max(0, len(live) - keep)]
    return [r for r in old if str(r["run_root"]).rstrip("/") not in {p.rstrip("/") for p in protected}]


def _delete_keys(uri: str, keys: list[str]) -> int:
    """Delete ``keys`` under ``uri``; returns how many were refused."""
    store = open_store(uri)
    refused = 0
    for key in keys:
        try:
            store.delete(key)
        except StoreAccessDeniedError:
            refused += 1
    return refused


def _keys_of(uri: str, kind: str) -> list[str]:
    """The keys a teacher (its index) or a dataset (its manifest's shards) has under ``uri``."""
    store = open_store(uri)
    try:
        if kind == "teachers":
            return [*json.loads(store.get_bytes(_TEACHER_INDEX))["keys"], _TEACHER_INDEX]
        manifest = json.loads(store.get_bytes(_MANIFEST))
        return [*(s["name"] for s in manifest.get("shards", [])), _MANIFEST]
    except ObjectNotFoundError:
        return []


def delete_run(run_root: str, games: Sequence[str]) -> int:
    """Delete a run root's teachers, buffers and latents; returns the number of objects refused."""
    refused = 0
    for kind in ("teachers", "buffers", "latents"):
        for game in games:
            uri = join_uri(run_root, kind, game)
            refused += _delete_keys(uri, _keys_of(uri, kind))
    local = open_store(run_root, create=False).local_path() if run_root.startswith("file://") else None
    if local is not None and not refused:
        shutil.rmtree(local, ignore_errors=True)  # what else a local run left (emptied work dirs)
    return refused


#: A key no run writes: deleting it (a no-op where deletes are allowed) asks the store whether this key may delete.
_DELETE_PROBE = ".polydistill-delete-probe"


def can_delete(store_uri: str) -> bool:
    """Whether this process's key may delete under ``store_uri``/runs: a DELETE of an absent key succeeds
    where the policy allows deletes and is refused (403) where it does not, leaving nothing behind."""
    try:
        _runs_store(store_uri).delete(_DELETE_PROBE)
    except StoreAccessDeniedError:
        return False
    return True


def apply(store_uri: str, keep: int, protected: Collection[str]) -> list[dict[str, Any]]:
    """Delete the run roots :func:`to_delete` picks; returns their entries (with ``refused`` counts).

    Each deletion is logged; a refused one is a warning and the entry is marked so it is not retried. A key
    that may not delete at all (Kubeflow's per-profile key: no ``s3:DeleteObject``) skips retention with one
    warning line and leaves the index as it is (docs/KUBEFLOW.md: the policy an admin adds to allow it).
    """
    runs = read_index(store_uri)
    candidates = to_delete(runs, keep, protected)
    if candidates and not can_delete(store_uri):
        log.warning("retention skipped: this key may not delete under %s (on Kubeflow the profile's policy grants "
                    "no s3:DeleteObject; docs/KUBEFLOW.md names the policy an admin adds); %d old runs stay",
                    store_uri, len(candidates))
        return []
    doomed = []
    for entry in candidates:
        try:
            root, games = _checked_entry(store_uri, entry)
        except RetentionRefused as e:  # an edited or foreign index: delete nothing it names
            log.warning("retention: refused an entry of %s/runs/%s: %s; entries of the run index are data, "
                        "never paths, so nothing of it is deleted", store_uri, RUN_INDEX, e)
            continue
        doomed.append(entry)
        refused = delete_run(root, games)
        entry["deleted"] = True
        entry["refused"] = refused
        if refused:
            log.warning("retention: %d objects of %s could not be deleted (this key may not delete; "
                        "the bucket's lifecycle rules or an admin remove them)", refused, entry["run_root"])
        else:
            log.info("retention: deleted %s (run %s)", entry["run_root"], entry["run_id"])
    if doomed:
        _write_index(store_uri, runs)
    return doomed
