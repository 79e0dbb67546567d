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
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coca.identity import model_identity
from indexer.decode import DecodeConfig, DecodedImage, DecodeResult
from indexer.encode import BatchEncoder, EncodeConfig
from indexer.gpu_decode import decode_for_model, resolve_decoder
from indexer.scan import FoundFile, ScanDiff, diff_library, walk_images
from storage import (
    Catalog,
    ImageMeta,
    ImageResult,
    IndexedFile,
    NewCaption,
    VectorIndex,
    VectorIndexConfig,
    open_or_rebuild,
)

logger = logging.getLogger(__name__)


class IndexerBusyError(RuntimeError):
    """Another indexer is writing to the same data folder."""


@dataclass(frozen=True)
class IndexConfig:
    """One indexing run; built from command-line flags by `coca_search`."""

    photos_dir: Path  # the library root: every path in the catalog is relative to it
    index_path: Path  # this model's FAISS file (the caller names it per model id)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    # Seconds between index saves during a run: a crash costs at most one rebuild from the
    # catalog, while saving a large index after every batch would dominate the run.
    save_index_every_s: float = 120.0
    vectors: VectorIndexConfig = field(default_factory=VectorIndexConfig)


@dataclass(frozen=True)
class StageTimes:
    """Where the wall-clock time of a run went (seconds)."""

    open_index: float = 0.0  # loading (or rebuilding) the vector index
    scan: float = 0.0  # walk, diff against the catalog, removals and moves
    # The three stages run on their own threads and overlap: the indexing thread gathers
    # decoded images, the model thread runs the model, the commit thread writes the catalog.
    decode_wait: float = 0.0  # the indexing thread waiting for decoded images
    # The indexing thread waiting for the model thread to take a batch, and at the end for the
    # last batches to be stored.
    model_wait: float = 0.0
    model: float = 0.0  # model thread: vision pass + captions + copies back, synchronised
    model_device: float = 0.0  # the device's span over the model's kernels (CUDA events)
    commit: float = 0.0  # commit thread: catalog transactions and index updates
    commit_wait: float = 0.0  # the model thread waiting for the previous commit to finish
    save: float = 0.0  # writing the FAISS file


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
    times: StageTimes = field(default_factory=StageTimes)
    decoder: str = "cpu"  # where JPEG pixels were decoded: "cpu" (Pillow) or "gpu" (nvJPEG)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class IndexProgress:
    """Reported after every committed batch (and once when the work is known)."""

    done: int  # files finished (indexed or failed)
    total: int  # files that need work in this run
    errors: int
    images_per_second: float


ProgressCallback = Callable[[IndexProgress], None]


@dataclass(frozen=True)
class WorkItem:
    """A file to run through the model; `image_id` is set when its catalog row is kept."""

    file: FoundFile
    image_id: int | None
    content_hash: str | None


@dataclass
class _Batch:
    """Decoded images waiting for the model, plus failures to record with them."""

    items: list[WorkItem] = field(default_factory=list)
    images: list[DecodedImage] = field(default_factory=list)
    failures: list[tuple[WorkItem, str]] = field(default_factory=list)


_NO_PIXELS = torch.empty(0, dtype=torch.uint8)  # a committed batch's photos: metadata only


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
    model_id = register_model(catalog, model)
    # Resolved before any work, so --decode gpu where it cannot run fails at once.
    device = next(model.parameters()).device
    decoder = resolve_decoder(config.decode.decoder, device, config.decode.workers)
    config = dataclasses.replace(config, decode=dataclasses.replace(config.decode, decoder=decoder))
    with _exclusive(config.index_path):
        open_start = time.perf_counter()
        index = open_or_rebuild(catalog, model_id, config.index_path, config.vectors)
        scan_start = time.perf_counter()
        diff = diff_library(root, walk_images(root), catalog.known_files(root.as_posix()))
        removed = _apply_removals(catalog, index, diff)
        _apply_moves(catalog, index, root.as_posix(), diff)
        work = _plan_work(catalog, model_id, root.as_posix(), diff, config.encode.captions)
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
        run = _Run(config, model, catalog, index, model_id, root, progress)
        run.times["scan"] = scan_seconds
        run.times["open_index"] = scan_start - open_start
        run.process(work)
    seconds = time.perf_counter() - started
    return IndexSummary(
        indexed=run.indexed,
        unchanged=len(diff.unchanged),
        moved=len(diff.moved),
        removed=removed,
        errors=run.errors,
        seconds=round(seconds, 3),
        images_per_second=round(run.indexed / seconds, 2) if seconds > 0 else 0.0,
        times=StageTimes(**{k: round(v, 3) for k, v in run.times.items()}),
        decoder=decoder,
    )


@contextmanager
def _exclusive(index_path: Path) -> Iterator[None]:
    """One indexer per data folder: two writers would each save an index missing the other's rows.

    The lock is an flock on a file next to the index, released by the OS even after kill -9.
    """
    lock_path = index_path.with_name(index_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexerBusyError(
                f"another indexer is running on {index_path.parent}; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(handle)


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


class _Run:
    """The decode -> model -> commit loop of one run, with its counters."""

    def __init__(
        self,
        config: IndexConfig,
        model: torch.nn.Module,
        catalog: Catalog,
        index: VectorIndex,
        model_id: int,
        root: Path,
        progress: ProgressCallback | None,
    ) -> None:
        self.config, self.model, self.catalog, self.index = config, model, catalog, index
        self.model_id, self.root, self.progress = model_id, root, progress
        self.encoder = BatchEncoder(model, config.encode)
        self.decoding = dataclasses.asdict(config.encode.decoding)
        self.indexed = self.errors = self.done = self.total = 0
        self.times: dict[str, float] = {f.name: 0.0 for f in dataclasses.fields(StageTimes)}
        self.started = time.perf_counter()
        self.last_save = time.perf_counter()
        self.dirty = False
        self._committer: ThreadPoolExecutor | None = None  # set while _consume runs
        self._pending_commit: Future[None] | None = None  # the last batch given to it

    def process(self, work: list[WorkItem]) -> None:
        self.total = len(work)
        self._report()
        decode_config = dataclasses.replace(
            self.config.decode,
            image_size=self.model.preprocess.image_size,
            prefetch=max(self.config.decode.prefetch, 2 * self.config.encode.batch_size),
            # The scan hashed only files that could be moves; the decode workers hash the rest
            # as they read them, for the catalog (a later run finds a moved file by its hash).
            hash_files=True,
        )
        paths = (self.root / item.file.relative_path for item in work)
        results = decode_for_model(paths, decode_config, self.model.preprocess, self.encoder.device)
        try:
            self._consume(work, results)
        finally:
            results.close()  # on any exit stop the decode workers (a second close is a no-op)
        if self.dirty or not self.config.index_path.exists():
            self._save_index()

    def _consume(self, work: list[WorkItem], results: Iterator[DecodeResult]) -> None:
        """Group decoded images into batches and pass them down the model and commit threads.

        This thread gathers batch N+1 while the model thread runs batch N and the commit thread
        stores batch N-1, so the GPU is not left idle while the host stages, copies back, turns
        tokens into text or writes rows. At most one batch waits for each thread.
        """
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as self._committer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as modeller,
        ):
            try:
                in_model = self._gather(work, results, modeller)
            except BaseException:
                # Ctrl-C or a failed batch: stop the decode workers now, not after the model
                # and commit threads have finished the batches they hold.
                close = getattr(results, "close", None)
                if close is not None:
                    close()
                raise
            # The last batches: the indexing thread waits for them to be stored.
            self._wait(in_model, "model_wait")
            self._wait(self._pending_commit, "model_wait")

    def _gather(
        self,
        work: list[WorkItem],
        results: Iterator[DecodeResult],
        modeller: ThreadPoolExecutor,
    ) -> Future[None] | None:
        """Pair each work item with its decode result and hand full batches to the model."""
        in_model: Future[None] | None = None
        batch = _Batch()
        for item in work:
            wait_start = time.perf_counter()
            result = next(results)
            self.times["decode_wait"] += time.perf_counter() - wait_start
            if result.path != self.root / item.file.relative_path:
                # Rows are matched to results by position: a shift would store every later row
                # with another photo's vector and caption, so stop instead.
                raise RuntimeError(f"decoder returned {result.path} for {item.file.relative_path}")
            if item.content_hash is None:
                item = dataclasses.replace(item, content_hash=result.content_hash)
            if result.image is None:
                batch.failures.append((item, result.error or "unknown decode error"))
            else:
                batch.items.append(item)
                batch.images.append(result.image)
            if len(batch.images) >= self.config.encode.batch_size:
                in_model = self._hand_over(modeller, in_model, batch)
                batch = _Batch()
        if batch.images or batch.failures:
            in_model = self._hand_over(modeller, in_model, batch)
        return in_model

    def _hand_over(
        self, modeller: ThreadPoolExecutor, in_model: Future[None] | None, batch: _Batch
    ) -> Future[None]:
        """Give `batch` to the model thread once it has taken the previous one."""
        self._wait(in_model, "model_wait")  # re-raises a failed batch here, stopping the run
        return modeller.submit(self._encode_then_commit, batch)

    def _encode_then_commit(self, batch: _Batch) -> None:
        """Model thread: run the model on a batch, then queue it for the commit thread."""
        pixels = [image.pixels for image in batch.images]  # uint8 (3, S, S) each
        encoded = self.encoder.encode(pixels) if pixels else None
        # The commit needs the photos' metadata only; GPU-decoded pixels are views that keep
        # their whole decoded chunk alive, so they are let go here.
        del pixels
        batch.images = [dataclasses.replace(image, pixels=_NO_PIXELS) for image in batch.images]
        if encoded is not None:
            self.times["model"] += encoded.gpu_seconds
            self.times["model_device"] += encoded.device_seconds
        self._wait(self._pending_commit, "commit_wait")  # batches commit in order
        self._pending_commit = self._committer.submit(self._commit, batch, encoded)

    def _wait(self, pending: Future[None] | None, waited: str) -> None:
        if pending is None:
            return
        start = time.perf_counter()
        pending.result()  # re-raises a failed model run or commit in the waiting thread
        self.times[waited] += time.perf_counter() - start

    def _commit(self, batch: _Batch, encoded) -> None:  # noqa: ANN001 - EncodedBatch | None
        start = time.perf_counter()
        if encoded is not None:
            ids = self._store(batch, encoded)
            self.index.add(ids, encoded.embeddings)
            self.indexed += len(ids)
            self.dirty = True
        for item, message in batch.failures:
            image_id = self.catalog.record_error(
                self.root.as_posix(),
                item.file.relative_path,
                item.file.size,
                item.file.mtime_ns,
                message[:2000],
                item.content_hash,
            )
            self.index.remove([image_id])  # a changed file that now fails loses its old vector
            logger.warning("%s: %s", item.file.relative_path, message)
        self.errors += len(batch.failures)
        self.done += len(batch.items) + len(batch.failures)
        self.times["commit"] += time.perf_counter() - start
        if time.perf_counter() - self.last_save >= self.config.save_index_every_s:
            self._save_index()
        self._report()

    def _store(self, batch: _Batch, encoded) -> list[int]:  # noqa: ANN001 - EncodedBatch
        """Commit one batch: new files with their metadata, kept rows with their model output."""
        captions = encoded.captions or [None] * len(batch.items)
        fresh: list[IndexedFile] = []
        kept: list[ImageResult] = []
        order: list[tuple[bool, int]] = []  # (is fresh, position in its list) per batch row
        for row, (item, image) in enumerate(zip(batch.items, batch.images, strict=True)):
            caption = None if captions[row] is None else NewCaption(captions[row], self.decoding)
            vector = encoded.embeddings[row]
            if item.image_id is None:
                order.append((True, len(fresh)))
                fresh.append(IndexedFile(self._meta(item, image), vector, caption))
            else:
                order.append((False, len(kept)))
                kept.append(ImageResult(item.image_id, vector, caption))
        fresh_ids = self.catalog.store_indexed(self.model_id, fresh) if fresh else []
        if kept:
            self.catalog.store_results(self.model_id, kept)
        return [fresh_ids[pos] if is_fresh else kept[pos].image_id for is_fresh, pos in order]

    def _meta(self, item: WorkItem, image: DecodedImage) -> ImageMeta:
        return ImageMeta(
            root=self.root.as_posix(),
            path=item.file.relative_path,
            size=item.file.size,
            mtime_ns=item.file.mtime_ns,
            content_hash=item.content_hash,
            width=image.width,
            height=image.height,
            format=image.format,
            taken_at=image.taken_at,
            camera=image.camera,
        )

    def _save_index(self) -> None:
        start = time.perf_counter()
        fingerprint = self.catalog.embedding_fingerprint(self.model_id).token
        self.index.save(self.config.index_path, fingerprint)
        self.last_save = time.perf_counter()
        self.dirty = False
        self.times["save"] += self.last_save - start

    def _report(self) -> None:
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.progress(IndexProgress(self.done, self.total, self.errors, self.indexed / elapsed))
