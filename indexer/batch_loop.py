"""One indexing run's batches: decode -> model -> commit on three overlapping threads.

The indexing thread gathers decoded photos into batches, a model thread runs the vision pass and
the captions of one batch, a commit thread writes the batch before it to the catalog (one
transaction) and adds its vectors to the in-memory index; at most one batch waits for each thread.
`indexer.pipeline.run_index` plans the work and hands it to `BatchLoop.process`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from indexer.decode import DecodedImage, DecodeResult
from indexer.encode import BatchEncoder
from indexer.gpu_decode import decode_for_model
from indexer.records import IndexConfig, IndexProgress, ProgressCallback, StageTimes, WorkItem
from storage import Catalog, ImageMeta, ImageResult, IndexedFile, NewCaption, VectorIndex

logger = logging.getLogger(__name__)

# What `decode_for_model` returns: results in input order; closing it stops the decode workers.
DecodeStage = Generator[DecodeResult, None, None]


@dataclass
class _Batch:
    """Decoded images waiting for the model, plus failures to record with them."""

    items: list[WorkItem] = field(default_factory=list)
    # The photos' metadata (pixels stripped, see _gather) and, apart, their pixels, which the
    # model thread lets go of as soon as the model has run: GPU-decoded pixels are views that
    # keep their whole decoded chunk alive.
    images: list[DecodedImage] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)  # uint8 (3, S, S) each
    failures: list[tuple[WorkItem, str]] = field(default_factory=list)


_NO_PIXELS = torch.empty(0, dtype=torch.uint8)  # a batch's photos: metadata only


class BatchLoop:
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
        # Built once: _gather checks each result against the same objects.
        paths = [self.root / item.file.relative_path for item in work]
        results = decode_for_model(paths, decode_config, self.model.preprocess, self.encoder.device)
        try:
            self._consume(work, paths, results)
        finally:
            results.close()  # on any exit stop the decode workers (a second close is a no-op)
        if self._index_behind():
            self._save_index()

    def _index_behind(self) -> bool:
        """Whether the saved file may differ from the catalog: this run added vectors, or
        removed some (vanished, displaced or now-failing files, before or during the batches).

        Removals and moves are applied by the pipeline before this loop starts and leave
        `dirty` unset; any write clears the index's fingerprint, so comparing it with the
        catalog's (one SQL aggregate) catches every change, whoever made it.
        """
        if self.dirty or not self.config.index_path.exists():
            return True
        return self.index.fingerprint != self.catalog.embedding_fingerprint(self.model_id).token

    def _consume(self, work: list[WorkItem], paths: list[Path], results: DecodeStage) -> None:
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
                in_model = self._gather(work, paths, results, modeller)
            except BaseException:
                # Ctrl-C or a failed batch: stop the decode workers now, not after the model
                # and commit threads have finished the batches they hold.
                results.close()
                raise
            # The last batches: the indexing thread waits for them to be stored.
            self._wait(in_model, "model_wait")
            self._wait(self._pending_commit, "model_wait")

    def _gather(
        self,
        work: list[WorkItem],
        paths: list[Path],
        results: DecodeStage,
        modeller: ThreadPoolExecutor,
    ) -> Future[None] | None:
        """Pair each work item (at `paths`) with its decode result and hand full batches to the
        model."""
        in_model: Future[None] | None = None
        batch = _Batch()
        for item, path in zip(work, paths, strict=True):
            wait_start = time.perf_counter()
            result = next(results)
            self.times["decode_wait"] += time.perf_counter() - wait_start
            if result.path != path:
                # Rows are matched to results by position: a shift would store every later row
                # with another photo's vector and caption, so stop instead.
                raise RuntimeError(f"decoder returned {result.path} for {item.file.relative_path}")
            if item.content_hash is None:
                item = dataclasses.replace(item, content_hash=result.content_hash)
            if result.image is None:
                batch.failures.append((item, result.error or "unknown decode error"))
            else:
                batch.items.append(item)
                # Stripped here, off the model thread, whose host time between GPU batches
                # leaves the GPU idle; this thread mostly waits for the decoders.
                batch.pixels.append(result.image.pixels)
                batch.images.append(dataclasses.replace(result.image, pixels=_NO_PIXELS))
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
        pixels, batch.pixels = batch.pixels, []
        encoded = self.encoder.encode_ids(pixels) if pixels else None
        del pixels  # the commit needs the photos' metadata only
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
            ids = self._store(batch, self.encoder.with_texts(encoded))
            self.index.add(ids, encoded.embeddings)
            self.indexed += len(ids)
            self.dirty = True
        for item, message in batch.failures:
            if not (self.root / item.file.relative_path).exists():
                self._forget_vanished(item)  # deleted since the scan: gone, not broken
                continue
            self.errors += 1
            image_id = self.catalog.record_error(
                self.root.as_posix(),
                item.file.relative_path,
                item.file.size,
                item.file.mtime_ns,
                message[:2000],
                item.content_hash,
            )
            self.index.remove([image_id])  # a changed file that now fails loses its old vector
            self.dirty = True  # record_error dropped its embedding: the file must follow
            logger.warning("%s: %s", item.file.relative_path, message)
        self.done += len(batch.items) + len(batch.failures)
        self.times["commit"] += time.perf_counter() - start
        if time.perf_counter() - self.last_save >= self.config.save_index_every_s:
            self._save_index()
        self._report()

    def _forget_vanished(self, item: WorkItem) -> None:
        """A file deleted while the run decoded others: its row (if it had one) goes, as the next
        scan would remove it, instead of an error row for a file that no longer exists."""
        image_id = self.catalog.delete_file(self.root.as_posix(), item.file.relative_path)
        if image_id is not None:
            self.index.remove([image_id])
            self.dirty = True
        logger.info("%s: deleted while indexing", item.file.relative_path)

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
