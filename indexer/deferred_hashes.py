"""Content hashes of the files to index, computed beside decoding instead of before it.

The scan hashes only files that could be moves (`indexer.scan.diff_library`); the others still
need their hash in the catalog (a later run finds them by it when they move), but nothing needs it
before their row is committed. Threads hash them in the order the pipeline will commit them, so a
hash is almost always ready when its row is written; `get` waits for the one it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from indexer.scan import HASH_WORKERS, FoundFile, hash_or_none
from storage.hashing import content_hash


class DeferredHashes:
    """Hashes of `files` (under `root`) computed by background threads; close() when done."""

    def __init__(
        self,
        root: Path,
        files: Iterable[FoundFile],
        workers: int = HASH_WORKERS,
        hasher: Callable[[Path], str] = content_hash,
    ) -> None:
        files = list(files)
        self._pool = None
        self._futures: dict[str, Future[str | None]] = {}
        if files:
            self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="hash")
            for file in files:
                future = self._pool.submit(hash_or_none, hasher, root, file)
                self._futures[file.relative_path] = future

    def get(self, relative_path: str) -> str | None:
        """The file's hash (waiting for it), or None when it was not asked for or is unreadable."""
        future = self._futures.get(relative_path)
        return None if future is None else future.result()

    def close(self) -> None:
        """Stop hashing (a run that ends early drops the hashes nobody will read)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
