"""The interface every store implements: :class:`ObjectStore`."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from .uri import join_uri


class ObjectStore(abc.ABC):
    """A flat namespace of byte objects under a root URI; keys are relative '/'-separated paths."""

    uri: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def _describe(self, key: str = "") -> str:
        return join_uri(self.uri, key) if key else self.uri

    @abc.abstractmethod
    def child(self, *parts: str) -> ObjectStore:
        """A store rooted at ``uri/parts...`` (parts joined with '/'), sharing this store's connection."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically: readers see the whole object or none of it."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload the local file ``path`` to ``key`` atomically (multipart on S3 for large files)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object at ``key``; :class:`ObjectNotFoundError` when missing."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download ``key`` to the local ``path`` atomically (temp file in the same dir, then rename)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (a string prefix), recursive, relative to the root, sorted."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size of the object at ``key`` in bytes; :class:`ObjectNotFoundError` when missing."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key``; no error if it does not exist."""

    def local_path(self) -> Path | None:
        """The root directory for local stores, ``None`` for remote ones."""
        return None

    def put_files(
        self,
        items: Sequence[tuple[str, str | Path]],
        workers: int = 4,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload many ``(key, local path)`` pairs with ``workers`` threads.

        ``progress(nbytes)`` is called in the calling thread after each file, with that file's size in
        bytes. The first failure cancels the uploads not yet started and is raised.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        sizes = [os.path.getsize(path) for _, path in items]  # fails early on a missing file
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-put") as pool:
            pending = {
                pool.submit(self.put_file, key, path): nbytes
                for (key, path), nbytes in zip(items, sizes, strict=True)
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    nbytes = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        future.result()  # raises
                    if progress is not None:
                        progress(nbytes)
