"""Decode in worker processes, for machines with many cores (`DecodeConfig.backend`).

Each task is a chunk of paths; the worker runs the per-file work on them (`decode_or_error`, or
the GPU decoder's header-only read) and sends back one uint8 (n, S, S, 3) array for the decoded
images plus small per-file records, so a chunk costs one pickle, not one per image, and no torch
tensor crosses the process boundary (torch would pass each through shared memory). Other results
(the GPU decoder's JPEG headers, `indexer.jpeg_files`) travel as they are. Results come back in
input order, like the thread pool's.

Workers are forked, all at once on the first task (as torch's DataLoader does, CUDA may be up in
the parent; the workers never touch it) and, like DataLoader's workers, run torch on one thread.
A forkserver or spawn would re-run the caller's main script in every worker and import torch
again in each. Each worker asks Linux to kill it when the indexer dies, so a `kill -9` leaves no
decoders behind.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import pickle
import signal
import sys
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from indexer.decode import (
    DecodeConfig,
    DecodedImage,
    DecodeResult,
    FileResult,
    FileWork,
    Prepare,
    decode_or_error,
)

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class _FileRecord:
    """One file of a chunk: its metadata, or its error (then it has no row in the pixel array)."""

    path: Path
    error: str | None
    content_hash: str | None = None
    width: int = 0
    height: int = 0
    format: str | None = None
    taken_at: datetime | None = None
    camera: str | None = None


@dataclass(frozen=True)
class _Chunk:
    """What a worker sends back: pixels of the decoded files in order, and every file's record."""

    pixels: np.ndarray | None  # uint8 (n_ok, S, S, 3); None when no file of the chunk decoded
    records: list[object]  # a _FileRecord per DecodeResult; any other result as it is


def decode_in_processes(
    paths: Iterable[Path],
    config: DecodeConfig,
    prepare: Prepare,
    work: FileWork = decode_or_error,
) -> Generator[FileResult, None, None]:
    """`map_files` over a process pool; at most about `prefetch` files are in flight."""
    try:
        pickle.dumps(prepare)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ValueError(
            f"decoding in processes needs a picklable prepare function ({error}); "
            "use DecodeConfig(backend='threads')"
        ) from error
    context = multiprocessing.get_context("fork")
    window = max(2 * config.workers, -(-config.prefetch // config.chunk_size))
    pool = ProcessPoolExecutor(
        max_workers=config.workers, mp_context=context, initializer=_init_worker
    )
    pending: deque[Future[_Chunk]] = deque()
    try:
        for chunk in _chunks(paths, config.chunk_size):
            with warnings.catch_warnings():
                # Python 3.12+ warns that forking a threaded process (CUDA, BLAS) may deadlock
                # the child; the workers only run Pillow and numpy, never the parent's threads.
                warnings.filterwarnings("ignore", "This process .* is multi-threaded")
                pending.append(pool.submit(_decode_chunk, chunk, config, prepare, work))
            if len(pending) >= window:
                yield from _results(pending.popleft().result())
        while pending:
            yield from _results(pending.popleft().result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    iterator = iter(paths)
    # Paths pass as they are (the caller's Path objects, most often): building each one again
    # costs the indexing process's interpreter a few microseconds a photo.
    while chunk := [p if isinstance(p, Path) else Path(p) for p in islice(iterator, size)]:
        yield chunk


def _init_worker() -> None:
    """Worker initializer: one torch thread (the resize in `Preprocess.pixels_for_model` runs a
    torch kernel; every core already has its own worker), and die with the parent."""
    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """On Linux, get SIGKILL when the parent process dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError) as error:
        logger.debug("cannot ask to die with the parent: %s", error)


def _decode_chunk(
    paths: list[Path], config: DecodeConfig, prepare: Prepare, work: FileWork
) -> _Chunk:
    """Runs in a worker: `work` on every path, never raising for a bad file."""
    arrays: list[np.ndarray] = []
    records: list[object] = []
    for path in paths:
        result = work(path, config, prepare)
        if not isinstance(result, DecodeResult):
            records.append(result)
            continue
        image = result.image
        if image is None:
            error = result.error or "unknown decode error"
            records.append(_FileRecord(path, error, result.content_hash))
            continue
        arrays.append(image.pixels.permute(1, 2, 0).numpy())  # (S, S, 3), a view
        records.append(
            _FileRecord(
                path,
                None,
                result.content_hash,
                image.width,
                image.height,
                image.format,
                image.taken_at,
                image.camera,
            )
        )
    return _Chunk(np.stack(arrays) if arrays else None, records)


def _results(chunk: _Chunk) -> Iterator[object]:
    """Turn a worker's chunk back into per-file results (pixels are views of the chunk array)."""
    pixels = chunk.pixels
    if pixels is not None and not pixels.flags.writeable:
        pixels = pixels.copy()  # torch.from_numpy warns on read-only memory
    row = 0
    for record in chunk.records:
        if not isinstance(record, _FileRecord):
            yield record
            continue
        if record.error is not None:
            yield DecodeResult(record.path, None, record.error, record.content_hash)
            continue
        assert pixels is not None  # a record without an error has a row
        tensor = torch.from_numpy(pixels[row]).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)
        row += 1
        image = DecodedImage(
            tensor, record.width, record.height, record.format, record.taken_at, record.camera
        )
        yield DecodeResult(record.path, image, None, record.content_hash)
