"""Vector-index pieces that set no policy: locking, normalising, the GPU mirror, IVF dumps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

logger = logging.getLogger(__name__)


class ReadWriteLock:
    """Many readers or one writer; waiting writers go first so searches can't starve them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


NORMALIZE_BLOCK = 65_536


def normalize(vectors: np.ndarray, dim: int, copy: bool = True) -> np.ndarray:
    """C-contiguous float32 (N, dim) with unit rows (zero rows stay zero).

    `copy=False` normalises in place when `vectors` already is such a writable array (saves 2 GB
    at 1M x 512); blocks bound the temporaries.
    """
    array = np.array(vectors, dtype=np.float32, ndmin=2, order="C", copy=True if copy else None)
    if not array.flags.writeable:
        array = array.copy()
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {np.shape(vectors)}")
    for start in range(0, len(array), NORMALIZE_BLOCK):
        block = array[start : start + NORMALIZE_BLOCK]  # (b, D) view
        norms = np.sqrt(np.einsum("nd,nd->n", block, block))[:, None]  # (b, 1)
        np.divide(block, norms, out=block, where=norms > 0)
    return array


# Largest id served by a bitmap selector (8 MiB of bits); sparser id sets use a hash set.
BITMAP_MAX_ID = 1 << 26


def id_selector(allowed: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """A faiss selector for `allowed` ids (int64), and the buffer it reads (keep it alive).

    Image ids are dense (autoincrement), so a bitmap is usually possible: building it is a numpy
    scatter, where IDSelectorBatch hashes every id (milliseconds for 100k ids, on every query).
    """
    allowed = allowed[allowed >= 0]
    top = int(allowed.max()) if len(allowed) else 0
    if top >= BITMAP_MAX_ID:
        return faiss.IDSelectorBatch(allowed), allowed
    mask = np.zeros(top + 1, dtype=bool)
    mask[allowed] = True
    bits = np.packbits(mask, bitorder="little")  # bit i of byte j <-> id 8 j + i, as faiss reads
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


def ivf_contents(index: faiss.Index, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    ivf = faiss.downcast_index(index)  # the IndexIVFScalarQuantizer, with its `sq`
    invlists = ivf.invlists
    all_ids: list[np.ndarray] = []
    all_vectors: list[np.ndarray] = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size == 0:
            continue
        all_ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
        if vectors:
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * ivf.code_size)
            all_vectors.append(ivf.sq.decode(codes.reshape(size, ivf.code_size)))  # (size, D)
    if not all_ids:
        return np.empty(0, np.int64), (np.empty((0, ivf.d), np.float32) if vectors else None)
    ids = np.concatenate(all_ids).astype(np.int64)
    return ids, (np.concatenate(all_vectors) if vectors else None)


class GpuMirror:
    """A GPU copy of the index for unfiltered search, refreshed lazily after writes.

    Filtered search stays on the CPU (faiss GPU indexes don't take ID selectors).
    """

    def __init__(self, wanted: bool) -> None:
        self._enabled = wanted and faiss.get_num_gpus() > 0
        self._copy: faiss.Index | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._copy = None

    def search(self, index: faiss.Index, queries: np.ndarray, k: int):
        if not self._enabled or index.ntotal == 0:
            return index.search(queries, k)
        with self._lock:  # GPU resources aren't safe to share between concurrent searches
            try:
                if self._copy is None:
                    self._copy = faiss.index_cpu_to_all_gpus(index)
                return self._copy.search(queries, min(k, 2048))
            except (RuntimeError, AttributeError) as error:
                logger.warning("faiss GPU search failed (%s); using the CPU from now on", error)
                self._enabled, self._copy = False, None
        return index.search(queries, k)
