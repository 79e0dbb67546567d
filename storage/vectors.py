"""The FAISS vector index, kept in step with the catalog's embeddings.

Ids are image ids. Vectors are L2-normalised float32 and compared by inner product (= cosine).
Small collections use an exact index (IndexFlatIP behind IndexIDMap2). Past
`VectorIndexConfig.approx_threshold` vectors the index switches to IVF over 8-bit scalar-quantised
vectors (IndexIVFScalarQuantizer, QT_8bit): a quarter of the float32 memory, ids removable, exact
enough at 8 bits that re-ranking isn't needed (see benchmarks/bench_vectors.py for the 1M figures).

The file is saved atomically with a JSON sidecar (model id, row count, dimension, kind, checksum and
the catalog fingerprint it was built from); `open_or_rebuild` loads it when it still matches the
catalog and rebuilds it from the catalog otherwise.

Thread safety: one `VectorIndex` may be shared by many threads (the app shares one across
sessions). Searches share a read lock; add/remove take the write lock.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from storage.vector_files import IndexFileError, IndexMeta, read_index, write_index
from storage.vector_support import GpuMirror, ReadWriteLock, id_selector, ivf_contents, normalize

if TYPE_CHECKING:
    from storage.catalog import Catalog
    from storage.records import EmbeddingFingerprint

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf_sq8"]


@dataclass(frozen=True)
class VectorIndexConfig:
    # Exact search scans every vector per query (about 10 ms at 50k x 512 on one core); past this
    # an approximate index keeps queries around a millisecond.
    approx_threshold: int = 50_000
    # IVF lists; None picks a power of two near 2 * sqrt(rows): ~500 vectors per list at 1M.
    nlist: int | None = None
    # Lists scanned per query, the speed/recall knob: at 1M x 512 (2,048 lists) 8 gives recall@10
    # 0.977 at ~1 ms on two cores (benchmarks/bench_vectors.py sweeps it). `VectorIndex.nprobe`.
    nprobe: int = 8
    # k-means sample per list and iterations: bounds IVF training time on small CPUs.
    train_points_per_list: int = 40
    kmeans_iters: int = 10
    # Retrain the IVF when it holds this many times the rows it was trained on (lists grow long).
    retrain_growth: float = 4.0
    # Use faiss GPUs for unfiltered search when the installed faiss has any.
    use_gpu: bool = True
    seed: int = 1234


@dataclass(frozen=True)
class SearchHits:
    """Per query, the k best ids (int64, -1 where fewer than k exist) and their cosine scores."""

    ids: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32

    def row(self, query: int) -> list[tuple[int, float]]:
        """(image id, score) pairs of one query, best first, padding dropped."""
        ids, scores = self.ids[query], self.scores[query]
        return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]


def auto_nlist(rows: int) -> int:
    """A power of two near 2 * sqrt(rows), with at least 39 rows per list (k-means needs them)."""
    near = 2 ** round(math.log2(2 * math.sqrt(max(rows, 1))))
    trainable = 2 ** int(math.log2(max(rows // 39, 1)))
    return int(min(65536, near, trainable))


def expected_kind(rows: int, current: IndexKind | None, config: VectorIndexConfig) -> IndexKind:
    """Exact below the threshold; an IVF stays until rows fall under half of it (no flapping)."""
    if rows >= config.approx_threshold:
        return "ivf_sq8"
    if current == "ivf_sq8" and rows >= config.approx_threshold // 2:
        return "ivf_sq8"
    return "flat"


def _as_ids(ids: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _check_ids(ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate ids: pass each image once")


def _flat_index(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _gpu_clustering_index(dim: int) -> faiss.Index | None:
    if faiss.get_num_gpus() == 0:
        return None
    try:
        return faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    except (RuntimeError, AttributeError) as error:
        logger.warning("faiss GPU k-means unavailable (%s); training on the CPU", error)
        return None


def _train_ivf(vectors: np.ndarray, config: VectorIndexConfig) -> faiss.IndexIVFScalarQuantizer:
    rows, dim = vectors.shape
    nlist = config.nlist or auto_nlist(rows)
    quantizer = faiss.IndexFlatIP(dim)
    # by_residual=False: codes are the vectors themselves, so the index can hand them back
    # (decode) when it has to retrain, and queries skip per-list residual tables.
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
    )
    index.cp.niter = config.kmeans_iters
    index.cp.spherical = True  # centroids on the sphere, like the vectors
    index.cp.max_points_per_centroid = config.train_points_per_list
    index.cp.seed = config.seed
    sample_size = min(rows, nlist * config.train_points_per_list)
    sample = np.random.default_rng(config.seed).choice(rows, sample_size, replace=False)
    gpu_assign = _gpu_clustering_index(dim) if config.use_gpu else None
    if gpu_assign is not None:
        index.clustering_index = gpu_assign  # k-means assignment on the GPU(s)
    index.train(vectors[np.sort(sample)])
    index.clustering_index = None  # gpu_assign (kept alive until here) is only for training
    return index


class VectorIndex:
    """A FAISS index over one model's embeddings, ids = image ids."""

    def __init__(self, dim: int, model_id: int, config: VectorIndexConfig | None = None) -> None:
        self.dim = dim
        self.model_id = model_id
        self.config = config or VectorIndexConfig()
        self._index: faiss.Index = _flat_index(dim)
        self._kind: IndexKind = "flat"
        self._trained_rows = 0
        self._lock = ReadWriteLock()
        self._gpu = GpuMirror(self.config.use_gpu)
        self._nprobe = self.config.nprobe
        # The catalog fingerprint this index reflects (set by load, save and a rebuild from the
        # catalog; cleared by writes).
        self.fingerprint: str | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_vectors(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        model_id: int,
        config: VectorIndexConfig | None = None,
        dim: int | None = None,
        copy: bool = True,
    ) -> VectorIndex:
        """An index over (ids, vectors) of the kind its size calls for.

        `copy=False` lets it normalise `vectors` in place (the caller gives the array up).
        """
        dim = dim if dim is not None else int(np.shape(vectors)[1])
        ids, vectors = _as_ids(ids), normalize(vectors, dim, copy=copy)
        _check_ids(ids, vectors)
        index = cls(dim, model_id, config)
        with index._lock.write():
            index._rebuild(ids, vectors)
        return index

    def _rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        kind = expected_kind(len(ids), self._kind, self.config)
        if kind == "flat":
            built = _flat_index(self.dim)
            self._trained_rows = 0
        else:
            logger.info("training IVF-SQ8 index on %d vectors", len(ids))
            built = _train_ivf(vectors, self.config)
            self._trained_rows = len(ids)
        for start in range(0, len(ids), 100_000):  # bounded temporary memory while adding
            built.add_with_ids(vectors[start : start + 100_000], ids[start : start + 100_000])
        self._index, self._kind = built, kind
        self._apply_nprobe()
        self._gpu.invalidate()

    @classmethod
    def _from_faiss(
        cls, built: faiss.Index, meta: IndexMeta, config: VectorIndexConfig
    ) -> VectorIndex:
        index = cls(meta.dim, meta.model_id, config)
        index._index, index._kind, index._trained_rows = built, meta.kind, meta.trained_rows
        index.fingerprint = meta.fingerprint
        index._apply_nprobe()
        return index

    @classmethod
    def load(cls, path: str | Path, config: VectorIndexConfig | None = None) -> VectorIndex:
        """Load a saved index; raises FileNotFoundError or IndexFileError (corrupt, mismatched)."""
        built, meta = read_index(Path(path))
        return cls._from_faiss(built, meta, config or VectorIndexConfig())

    # -- state ----------------------------------------------------------------------------------

    @property
    def nprobe(self) -> int:
        """IVF lists scanned per query (ignored by the exact index)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be at least 1, got {value}")
        with self._lock.write():
            self._nprobe = int(value)
            self._apply_nprobe()

    def _apply_nprobe(self) -> None:
        if self._kind == "ivf_sq8":
            faiss.extract_index_ivf(self._index).nprobe = self._nprobe
            self._gpu.invalidate()

    @property
    def kind(self) -> IndexKind:
        return self._kind

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def trained_rows(self) -> int:
        return self._trained_rows

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> np.ndarray:
        """All ids in the index (int64, sorted)."""
        with self._lock.read():
            return np.sort(self._contents(vectors=False)[0])

    def serialized_size(self) -> int:
        """Bytes of the index as saved (faiss.serialize_index): its memory footprint."""
        with self._lock.read():
            return int(faiss.serialize_index(self._index).nbytes)

    def _contents(self, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self._kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            data = self._index.index.reconstruct_n(0, self.ntotal) if vectors else None
            return ids, data
        return ivf_contents(self._index, vectors)

    # -- updates --------------------------------------------------------------------------------

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Add vectors under image ids; an id already present gets the new vector."""
        ids = _as_ids(ids)
        vectors = normalize(vectors, self.dim)
        _check_ids(ids, vectors)
        if len(ids) == 0:
            return
        with self._lock.write():
            self._remove(ids)
            self._index.add_with_ids(vectors, ids)
            self._gpu.invalidate()
            self.fingerprint = None
            self._switch_if_needed()

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        ids = _as_ids(ids)
        if len(ids) == 0:
            return 0
        with self._lock.write():
            removed = self._remove(ids)
            self._gpu.invalidate()
            self.fingerprint = None
            self._switch_if_needed()
            return removed

    def _remove(self, ids: np.ndarray) -> int:
        if self.ntotal == 0:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _switch_if_needed(self) -> None:
        rows = self.ntotal
        kind = expected_kind(rows, self._kind, self.config)
        grown = self._kind == "ivf_sq8" and rows > self.config.retrain_growth * self._trained_rows
        if kind != self._kind or grown:
            logger.info("vector index: %s with %d rows -> %s", self._kind, rows, kind)
            ids, vectors = self._contents(vectors=True)
            self._rebuild(ids, vectors)

    # -- search ---------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> SearchHits:
        """The k nearest vectors per query (rows of `queries`, normalised here).

        `allowed_ids` restricts results to those image ids (folder/date filters): an empty array
        gives no results.
        """
        queries = normalize(queries, self.dim)  # (Q, D)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        empty = SearchHits(
            np.full((len(queries), k), -1, np.int64),
            np.full((len(queries), k), -np.inf, np.float32),
        )
        with self._lock.read():
            if self.ntotal == 0 or (allowed_ids is not None and len(allowed_ids) == 0):
                return empty
            if allowed_ids is None:
                scores, ids = self._gpu.search(self._index, queries, k)
            else:
                scores, ids = self._search_filtered(queries, k, _as_ids(allowed_ids))
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return SearchHits(ids=ids, scores=scores)

    def _search_filtered(self, queries: np.ndarray, k: int, allowed: np.ndarray):
        selector, _buffer = id_selector(allowed)  # _buffer must outlive the search
        if self._kind == "flat":
            params = faiss.SearchParameters(sel=selector)
        else:
            # Probe more lists as the allowed share shrinks, so a narrow filter still fills k.
            nlist = faiss.extract_index_ivf(self._index).nlist
            share = min(1.0, len(allowed) / max(self.ntotal, 1))
            nprobe = min(nlist, math.ceil(self._nprobe / max(share, 1e-9)))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return self._index.search(queries, k, params=params)

    # -- files --------------------------------------------------------------------------------

    def save(self, path: str | Path, fingerprint: str) -> IndexMeta:
        """Write atomically (temp file, fsync, rename) with its sidecar; `fingerprint` is the
        catalog's `EmbeddingFingerprint.token` this index reflects."""
        with self._lock.read():
            meta = IndexMeta(
                model_id=self.model_id,
                dim=self.dim,
                kind=self._kind,
                ntotal=self.ntotal,
                trained_rows=self._trained_rows,
                fingerprint=fingerprint,
            )
            written = write_index(self._index, meta, Path(path))
            self.fingerprint = fingerprint
            return written


def open_or_rebuild(
    catalog: Catalog,
    model_id: int,
    path: str | Path,
    config: VectorIndexConfig | None = None,
    save: bool = True,
) -> VectorIndex:
    """The model's index from `path` when it matches the catalog, else rebuilt from the catalog
    (and saved when `save`). The reason for a rebuild is logged."""
    config = config or VectorIndexConfig()
    model = catalog.get_model(model_id)
    if model is None:
        raise KeyError(f"model {model_id} is not in the catalog")
    fingerprint = catalog.embedding_fingerprint(model_id)
    try:
        index = VectorIndex.load(path, config)
        reason = _stale_reason(index, model.embed_dim, fingerprint, config)
    except FileNotFoundError:
        reason = "no index file yet"
    except IndexFileError as error:
        reason = str(error)
    if reason is None:
        logger.info("vector index %s loaded: %d vectors (%s)", path, index.ntotal, index.kind)
        return index
    # No file for an empty catalog is how every new data folder starts: not worth a warning, unlike
    # a file that must be replaced or a long rebuild of a catalog whose file went missing.
    usual = reason == "no index file yet" and fingerprint.count == 0
    level = logging.INFO if usual else logging.WARNING
    logger.log(level, "rebuilding vector index %s from the catalog: %s", path, reason)
    snapshot = catalog.embedding_snapshot(model_id)
    index = VectorIndex.from_vectors(
        snapshot.ids, snapshot.vectors, model_id, config, dim=model.embed_dim, copy=False
    )
    if save:
        index.save(path, snapshot.fingerprint.token)
    else:
        # Unsaved, it still reflects exactly this catalog state: a reader can tell later
        # whether the catalog has moved on since.
        index.fingerprint = snapshot.fingerprint.token
    return index


def _stale_reason(
    index: VectorIndex, dim: int, fingerprint: EmbeddingFingerprint, config: VectorIndexConfig
) -> str | None:
    if index.model_id != fingerprint.model_id:
        return f"file is for model {index.model_id}, not {fingerprint.model_id}"
    if index.dim != dim:
        return f"file has dimension {index.dim}, the model {dim}"
    if index.fingerprint != fingerprint.token:
        return f"catalog changed since it was saved ({index.fingerprint} -> {fingerprint.token})"
    rows = fingerprint.count
    if index.ntotal != rows:
        return f"file holds {index.ntotal} vectors, the catalog {rows}"
    if expected_kind(rows, index.kind, config) != index.kind:
        return f"{rows} vectors call for a {expected_kind(rows, index.kind, config)} index"
    if index.kind == "ivf_sq8" and rows > config.retrain_growth * index.trained_rows:
        return f"IVF trained on {index.trained_rows} rows now holds {rows}: retraining"
    return None
