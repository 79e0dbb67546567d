"""The indexer: scan -> decode -> encode + caption -> commit, one photo library at a time.

`run_index` takes the model and the catalog from its caller (nothing is a global), so tests pass a
tiny model and a temp catalog. The catalog is the source of truth and every batch is committed in
one transaction; the FAISS file is derived from it. After each commit the batch's vectors go into
the in-memory index, which is saved atomically now and then and at the end. If the process dies
between a commit and a save, the saved file no longer matches the catalog's embedding fingerprint
and `storage.open_or_rebuild` rebuilds it on the next run; files that were decoded but not
committed are simply new again. So a run killed at any moment resumes into exactly one catalog row
and one vector per file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coca.identity import model_identity
from indexer.batch_loop import BatchLoop
from indexer.gpu_decode import resolve_decoder
from indexer.records import (
    IndexConfig,
    IndexProgress,
    ProgressCallback,
    StageTimes,
    WorkItem,
)
from indexer.roots import (
    adopt_nested_roots,
    claim_moved_library,
    find_scope,
    gone_roots_rows,
    prefixed,
)
from indexer.scan import ScanDiff, diff_library, printable_path, storable_path, walk_images
from storage import Catalog, VectorIndex, open_or_rebuild
from storage.vector_files import writer_lock_path

# Re-exported: callers build an IndexConfig and read progress from the module they run.
__all__ = [
    "IndexConfig",
    "IndexProgress",
    "IndexSummary",
    "IndexerBusyError",
    "exclusive_writer",
    "ProgressCallback",
    "StageTimes",
    "register_model",
    "run_index",
]

logger = logging.getLogger(__name__)

# Seconds an indexer waits for the data folder's lock before reporting another indexer.
LOCK_PATIENCE_S = 1.0


class IndexerBusyError(RuntimeError):
    """Another indexer is writing to the same data folder."""


@dataclass(frozen=True)
class IndexSummary:
    """What a run did; `--json` prints `to_dict()`."""

    indexed: int  # images embedded (and captioned) in this run
    unchanged: int
    moved: int
    removed: int
    errors: int  # files recorded with status error in this run
    seconds: float
    images_per_second: float
    # Unchanged files that failed in an earlier run (not retried until they change).
    still_unreadable: int = 0
    times: StageTimes = field(default_factory=StageTimes)
    decoder: str = "cpu"  # where JPEG pixels were decoded: "cpu" (Pillow) or "gpu" (nvJPEG)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def register_model(catalog: Catalog, model: torch.nn.Module) -> int:
    """The catalog's id for this model: the same weights get the same id whatever their source."""
    identity = model_identity(model)
    for known in catalog.list_models():
        if known.config_hash == identity.config_hash and known.embed_dim == identity.embed_dim:
            return known.id
    return catalog.get_or_create_model(identity.source, identity.config_hash, identity.embed_dim)


def run_index(
    config: IndexConfig,
    model: torch.nn.Module,
    catalog: Catalog,
    progress: ProgressCallback | None = None,
) -> IndexSummary:
    """Bring the catalog and the vector index in step with the photo folder."""
    started = time.perf_counter()
    root = config.photos_dir.expanduser().resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{config.photos_dir} is not a folder; pass your photo folder")
    if not storable_path(str(root)):
        raise NotADirectoryError(
            f"{printable_path(str(root))}: the folder's path is not valid UTF-8, which the "
            "catalog cannot store; rename it to index it"
        )
    model_id = register_model(catalog, model)
    # Resolved before any work, so --decode gpu where it cannot run fails at once.
    device = next(model.parameters()).device
    decoder = resolve_decoder(config.decode.decoder, device, config.decode.workers)
    config = dataclasses.replace(config, decode=dataclasses.replace(config.decode, decoder=decoder))
    with exclusive_writer(config.index_path):
        open_start = time.perf_counter()
        index = open_or_rebuild(catalog, model_id, config.index_path, config.vectors)
        scan_start = time.perf_counter()
        scope = find_scope(catalog.roots(), root)
        adopt_nested_roots(catalog, index, scope)
        unstorable: list[str] = []
        found = prefixed(walk_images(root, unstorable), scope.prefix)
        known = scope.known_files(catalog)
        diff = diff_library(scope.root, found, known)
        claim_moved_library(diff, gone_roots_rows(catalog, scope), scope.root)
        removed = _apply_removals(catalog, index, diff)
        _apply_moves(catalog, index, scope.key, diff)
        work = _plan_work(catalog, model_id, scope.key, diff, config.encode.captions)
        scan_seconds = time.perf_counter() - scan_start
        logger.info(
            "%s: %d new, %d changed, %d moved, %d removed, %d unchanged; %d to index",
            root,
            len(diff.new),
            len(diff.changed),
            len(diff.moved),
            removed,
            len(diff.unchanged),
            len(work),
        )
        run = BatchLoop(config, model, catalog, index, model_id, scope.root, progress)
        run.times["scan"] = scan_seconds
        run.times["open_index"] = scan_start - open_start
        with _heap_frozen():
            run.process(work)
    seconds = time.perf_counter() - started
    return IndexSummary(
        indexed=run.indexed,
        unchanged=len(diff.unchanged) - _redone(diff, work),
        moved=len(diff.moved),
        removed=removed,
        errors=run.errors + len(unstorable),  # files with names the catalog cannot store
        still_unreadable=sum(known[f.relative_path].status == "error" for f in diff.unchanged),
        seconds=round(seconds, 3),
        images_per_second=round(run.indexed / seconds, 2) if seconds > 0 else 0.0,
        times=StageTimes(**{k: round(v, 3) for k, v in run.times.items()}),
        decoder=decoder,
    )


@contextmanager
def exclusive_writer(index_path: Path) -> Iterator[None]:
    """One indexer per data folder: two writers would each save an index missing the other's rows.

    The lock is an flock on a file next to the index, released by the OS even after kill -9.
    """
    lock_path = writer_lock_path(index_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_or_give_up(handle, index_path)
        yield
    finally:
        os.close(handle)


def _lock_or_give_up(handle: int, index_path: Path) -> None:
    """The exclusive lock, retried for LOCK_PATIENCE_S: a search checking whether an indexer runs
    holds a shared lock for an instant (storage.vector_files.writer_active), which must not read
    as a second indexer; one that really runs holds it for the whole run."""
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise IndexerBusyError(
                    f"another indexer is running on {index_path.parent}; wait for it to finish"
                ) from None
            time.sleep(0.05)


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects alive before the batches start.

    Everything alive then (torch and the other modules, the model, the scan's file list) lives
    through the run, yet each full collection walks all of it: with the GPU path's stand-ins
    (benchmarks/bench_index_host.py, 16,384 photos) two full collections cost 0.44 s, ~27 us a
    photo, on the indexing process's interpreter, shared by the decode, model and commit
    threads. Frozen, those objects are skipped (and the forked decode workers share their pages
    untouched); the run's own garbage is collected as usual. Unfrozen afterwards, so a caller's
    later garbage among them is collected again. A caller that froze the heap itself keeps it
    as it was: gc.unfreeze would thaw its objects too, so nothing is touched then.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _apply_removals(catalog: Catalog, index: VectorIndex, diff: ScanDiff) -> int:
    """Forget files that are gone: catalog first (the truth), then the index."""
    ids = [row.id for row in diff.deleted.values()]
    if not ids:
        return 0
    catalog.delete_images(ids)
    index.remove(ids)
    return len(ids)


def _apply_moves(catalog: Catalog, index: VectorIndex, root: str, diff: ScanDiff) -> None:
    """Moved or renamed files keep their row, embedding and caption; only the path changes."""
    for moved in diff.moved:
        new = moved.new
        displaced = catalog.move_image(moved.image_id, root, new.relative_path, new.mtime_ns)
        if displaced:
            index.remove(displaced)


def _redone(diff: ScanDiff, work: list[WorkItem]) -> int:
    """Unchanged files planned again (a model that has not embedded or captioned them yet): they
    count as indexed, not as unchanged."""
    unchanged = {file.relative_path for file in diff.unchanged}
    return sum(item.file.relative_path in unchanged for item in work)


def _plan_work(
    catalog: Catalog, model_id: int, root: str, diff: ScanDiff, captions: bool
) -> list[WorkItem]:
    """New and changed files, plus catalogued files this model has not embedded yet (or, when
    captioning, not captioned yet: a `--no-captions` run leaves those)."""
    work = [WorkItem(f, None, diff.hashes.get(f.relative_path)) for f in diff.new + diff.changed]
    planned = {item.file.relative_path for item in work}
    found = {f.relative_path: f for f in diff.unchanged}
    found.update((m.new.relative_path, m.new) for m in diff.moved)
    pending = catalog.images_needing_work(model_id, root)
    if captions:
        # One vision pass gives both outputs, so these are redone whole (embedding too).
        pending += catalog.images_missing_caption(model_id, root)
    for record in pending:
        file = found.get(record.path)
        if file is not None and record.path not in planned:
            work.append(WorkItem(file, record.id, record.content_hash))
    work.sort(key=lambda item: item.file.relative_path)
    return work
