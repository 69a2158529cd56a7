"""The store-directory protocol: directories kept under a store prefix and read back without listing it.

A pipeline task's local directories (a published checkpoint, a training task's working directory) are
kept in the object store as one key per file plus an *index* (:data:`INDEX_KEY`) naming those keys,
written after them. Readers never list the prefix: a key scoped to a prefix may not (ListObjects needs
``s3:ListBucket`` on the bucket, which Kubeflow's per-profile policy does not grant: kubeflow/manifests
v1.11.0 ``pipelines-profile-controller/sync.py``), and that policy grants no ``s3:DeleteObject`` either, so a
refused delete is logged and harmless once the index no longer names the key.

- :func:`publish_dir` / :func:`fetch_dir`: a finished directory (a teacher checkpoint, ``metadata.json``
  last) to a prefix and back.
- :class:`WorkDir` / :func:`work_dir`: a training task's working directory, mirrored while it trains so a
  retry in a fresh pod (an empty local disk) resumes from the last resume point; with a ``file://`` store
  the prefix *is* the directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polydistill.errors import PolydistillError

log = logging.getLogger(__name__)

#: The index of a mirrored or published directory: ``{"keys": [...]}``, the keys under the prefix.
INDEX_KEY = "polydistill-index.json"
#: Seconds between mirrors of a training task's working directory to an ``s3://`` store.
SYNC_SECONDS_ENV = "POLYDISTILL_SYNC_SECONDS"
DEFAULT_SYNC_SECONDS = 300.0
#: Written last when a checkpoint is published: a reader that finds it finds the whole checkpoint.
_PUBLISHED_LAST = "metadata.json"


class MirrorError(PolydistillError, ValueError):
    """A mirrored or published directory's index is unusable."""


class NotPublishedError(PolydistillError, FileNotFoundError):
    """Nothing is published at a store prefix (no index there)."""


def _pointer_files() -> tuple[str, ...]:
    """The run directory's pointers (``resume/LATEST``, ``run.json``), uploaded last so a reader of the mirror
    never follows a pointer to a half-uploaded resume point (imported here: rundir pulls in torch)."""
    from .checkpoint import RUN_RECORD
    from .rundir import LATEST

    return (LATEST, RUN_RECORD)


def read_index(store: Any) -> list[str]:
    """The keys a mirror's index names ([] when there is no index yet)."""
    from .store import ObjectNotFoundError

    try:
        data = json.loads(store.get_bytes(INDEX_KEY))
    except ObjectNotFoundError:
        return []
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise MirrorError(f"{store.uri}/{INDEX_KEY} is not an index of keys; delete it to start afresh")
    return keys


def write_index(store: Any, keys: list[str]) -> None:
    """Write the index naming ``keys`` (after the files it names, so a reader finds them all)."""
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
    """Delete ``keys``; returns how many could not be, because the key may not delete (Kubeflow's per-profile
    policy grants ``s3:Put*``, ``s3:Get*`` and ``s3:List*`` but no ``s3:DeleteObject``)."""
    from .store import StoreAccessDeniedError

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


def local_dir(uri: str) -> Path | None:
    """The directory of a ``file://`` URI or plain path; ``None`` for remote stores."""
    if "://" not in uri:
        return Path(uri)
    if uri.startswith("file://"):
        from .store import open_store

        return open_store(uri).local_path()
    return None


class WorkDir:
    """A training task's local working directory, mirrored to ``uri`` when that is a remote store."""

    def __init__(self, uri: str, sync_seconds: float | None = None) -> None:
        self.uri = uri
        local = local_dir(uri)
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
            from .store import open_store

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
        keys = read_index(store)
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
        pointers = _pointer_files()
        changed.sort(key=lambda k: (k.rsplit("/", 1)[-1] in pointers, k))
        for key in changed:
            st = files[key].stat()
            store.put_file(key, files[key])
            self._synced[key] = (st.st_size, st.st_mtime_ns)
        before = read_index(store)
        if changed or sorted(before) != sorted(files):
            write_index(store, list(files))  # after the files it names, before the old ones go
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
            if _delete_all(store, read_index(store)):
                write_index(store, [])  # what stays is no resume point for a later attempt
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


def publish_dir(src: str | Path, uri: str) -> str:
    """Copy the local directory ``src`` to the store prefix ``uri`` (files first, ``metadata.json`` last, so a
    reader that finds the metadata finds the whole checkpoint), then its index; returns ``uri``."""
    from .store import open_store

    store = open_store(uri, create_bucket=True)
    src = Path(src)
    files = sorted((p.relative_to(src).as_posix(), p) for p in src.rglob("*") if p.is_file())
    if store.local_path() is not None and store.local_path() == src.resolve():
        return uri
    store.put_files([(k, p) for k, p in files if k != _PUBLISHED_LAST])
    store.put_files([(k, p) for k, p in files if k == _PUBLISHED_LAST])
    write_index(store, [k for k, _ in files])
    return uri


def fetch_dir(uri: str) -> Path:
    """A local directory with everything published at the store prefix ``uri``: the directory itself for
    ``file://``, a fresh temporary download for ``s3://``.

    Raises:
        NotPublishedError: nothing is published there (no index).
    """
    local = local_dir(uri)
    if local is not None:
        return local
    from .store import open_store

    store = open_store(uri)
    keys = read_index(store)
    if not keys:
        raise NotPublishedError(f"nothing published at {uri} (no {INDEX_KEY}); publish the directory first")
    dest = Path(tempfile.mkdtemp(prefix="polydistill-fetch-"))  # after the index: a refusal leaves nothing
    _download(store, keys, dest)
    return dest


def fetch_file(uri: str) -> Path:
    """A local copy of the one file at ``uri`` (an imported teacher's checkpoint): the file itself for a path
    or ``file://`` URI, a fresh temporary download for ``s3://bucket/prefix/name``."""
    if "://" not in uri:
        return Path(uri)
    parent, _, name = uri.rstrip("/").rpartition("/")
    local = local_dir(parent)
    if local is not None:
        return local / name
    from .store import open_store

    dest = Path(tempfile.mkdtemp(prefix="polydistill-fetch-")) / name
    open_store(parent, create=False).get_file(name, dest)
    return dest


def fetch_source(uri: str) -> Path:
    """A local copy of an imported teacher's source at ``uri``: a file (an SB3 ``.zip``, a CleanRL state_dict)
    or a directory (a polydistill teacher). Paths and ``file://`` URIs are used in place; an ``s3://`` prefix
    that holds a published directory (its index, as the pipeline publishes teachers) is downloaded whole,
    anything else as one file."""
    local = local_dir(uri)
    if local is not None:
        return local if local.is_dir() else fetch_file(uri)
    try:
        return fetch_dir(uri)  # reads the index once: a published directory, or NotPublishedError
    except NotPublishedError:
        return fetch_file(uri)
