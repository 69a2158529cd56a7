"""Stores in local directories: :class:`LocalStore`, whose writes are atomic renames."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .base import ObjectStore
from .errors import ObjectNotFoundError, StoreConfigError
from .uri import _clean_key

logger = logging.getLogger(__package__)  # one logger for the package, named as before the split

# Suffix of LocalStore's temporary files; list() hides them.
_TMP_SUFFIX = ".polydistill-tmp"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened, so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(dest: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``dest`` through a temp file in the same directory, fsync it, then ``os.replace`` it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(dest.parent)


class LocalStore(ObjectStore):
    """An object store in a local directory; ``put_*`` are atomic renames, readers never see halves."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        """Open the directory ``root``; ``create`` makes it (and its parents) when missing. Readers pass
        ``create=False`` so that looking at a wrong path leaves no directory behind."""
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()
        if self.root.exists() and not self.root.is_dir():
            raise StoreConfigError(f"{self.uri} is a file, not a directory: choose another store path")
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreConfigError(
                    f"store {self.uri} cannot be created ({e.strerror or e}): choose a directory you can write"
                ) from None

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*_clean_key(key, self.uri).split("/"))
        # A symlink inside the store could still point outside it: the resolved path must stay under root.
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StoreConfigError(
                f"key {key!r} of {self.uri} resolves to {resolved}, outside the store (a symlink?): "
                "keys may not escape the store's root"
            )
        return path

    def child(self, *parts: str) -> LocalStore:
        """A store rooted at the subdirectory ``parts`` (created; must stay inside this store)."""
        path = self.root
        for part in parts:
            part = part.strip("/")
            if part:
                path = path.joinpath(*_clean_key(part, self.uri, what="path part").split("/"))
        try:
            child = LocalStore(path, create=False)
        except StoreConfigError:
            raise StoreConfigError(f"{path} is an object of {self.uri}, not a directory: choose another name") from None
        if child.root != self.root and self.root not in child.root.parents:
            raise StoreConfigError(f"{path} resolves outside {self.uri}: keys may not escape the store's root")
        try:
            child.root.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            raise StoreConfigError(f"{path} runs through an object of {self.uri}: choose another name") from None
        return child

    def _write(self, key: str, write: Callable[[BinaryIO], None]) -> None:
        """Atomic write of ``key``; a key that collides with a directory (or runs through a file) is a
        one-line StoreConfigError, as S3 would hold both but a directory tree cannot."""
        dest = self._path(key)
        try:
            _atomic_write(dest, write)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as e:
            raise StoreConfigError(
                f"cannot write {self._describe(key)}: {e.strerror} (a key and a directory of keys share that "
                "name in this local store); choose another key"
            ) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically."""

        def write(f: BinaryIO) -> None:
            f.write(data)

        self._write(key, write)
        logger.debug("wrote %s (%d bytes)", self._describe(key), len(data))

    def put_file(self, key: str, path: str | Path) -> None:
        """Copy the local file ``path`` to ``key`` atomically."""
        with open(path, "rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, 1024 * 1024))
        logger.debug("copied %s to %s", path, self._describe(key))

    def get_bytes(self, key: str) -> bytes:
        """The contents of ``key``."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None

    def get_file(self, key: str, path: str | Path) -> None:
        """Copy ``key`` to the local ``path`` atomically."""
        try:
            src = open(self._path(key), "rb")  # noqa: SIM115 - closed below, after the existence check
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None
        with src:
            _atomic_write(Path(path), lambda f: shutil.copyfileobj(src, f, 1024 * 1024))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored object (a file, not a directory)."""
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Keys under the root starting with ``prefix``, sorted; temp files of writes in flight are hidden."""
        _clean_key(prefix, self.uri, what="prefix", prefix=True)
        # Walk only the deepest directory the prefix names, not the whole tree.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_rel.split("/")) if base_rel else self.root
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):  # does not follow symlinked directories
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def size(self, key: str) -> int:
        """Size of ``key`` in bytes."""
        path = self._path(key)
        if not path.is_file():
            raise self._not_found(key)
        return path.stat().st_size

    def delete(self, key: str) -> None:
        """Remove ``key`` and the directories it leaves empty; no error if missing."""
        path = self._path(key)
        if not path.is_file():
            return
        path.unlink(missing_ok=True)
        # Drop emptied directories so a deleted prefix disappears as it does on S3.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def local_path(self) -> Path:
        """The root directory."""
        return self.root

    def _not_found(self, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(
            f"no object at {self._describe(key)}: check the key, or that the stage that writes it has run"
        )
