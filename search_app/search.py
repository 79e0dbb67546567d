"""Queries -> ranked photos: the search core shared by `coca-search search` and the web app.

No streamlit here. The engine gets the catalog, the vector index and the model from its caller.
Text and images are embedded with the model and looked up in the FAISS index; hybrid search fuses
those results with caption full-text matches by reciprocal rank fusion (RRF). Every result carries
its cosine similarity to the query, so the relevance cutoff means the same in both modes; sorting by
date happens after the cutoff. Problems the user can fix (an empty catalog, a catalog indexed with
another model, an empty or overlong query, an unreadable upload) raise `SearchError` subclasses
with a message meant for the user.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coca.identity import model_identity
from search_app.catch_up import CATCH_UP_S, add_committed_since_save
from search_app.errors import BadQueryError, EmptyCatalogError, ModelMismatchError, SearchError
from storage import Catalog, ImageDetail, ImageFilter, VectorIndex, open_or_rebuild
from storage.vector_files import IndexFileError, writer_active

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500
RRF_K = 60  # the usual RRF constant: damps the head of each list so neither dominates
CANDIDATES_PER_RESULT = 5  # hybrid fetches k * this from each list before fusing
MIN_CANDIDATES = 50
MAX_K = 1000


@dataclass(frozen=True)
class DataLayout:
    """Where a data folder keeps its files: one catalog, one FAISS file per model."""

    data_dir: Path

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.db"

    def index_path(self, model_id: int) -> Path:
        return self.data_dir / f"vectors-model{model_id}.faiss"


@dataclass(frozen=True)
class SearchFilters:
    """Restrict any search to a folder (prefix, relative to the library or absolute) and dates."""

    folder: str | None = None
    date_from: date | None = None
    date_to: date | None = None  # inclusive day

    @property
    def is_empty(self) -> bool:
        return not (self.folder or self.date_from or self.date_to)

    def to_image_filter(self) -> ImageFilter:
        folder = self.folder.strip() if self.folder else None
        return ImageFilter(folder=folder or None, date_from=self.date_from, date_to=self.date_to)


@dataclass(frozen=True)
class SearchResult:
    """One ranked photo."""

    id: int
    path: str  # absolute path of the file
    score: float  # cosine similarity to the query, in [-1, 1]
    caption: str | None
    taken_at: datetime | None  # EXIF capture time
    photo_date: datetime | None  # taken_at, else the file's modification time
    width: int | None
    height: int | None
    fused_score: float | None = None  # the RRF score that ranked it (hybrid search only)
    caption_match: bool = False  # found by the caption full-text search (hybrid only)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "caption": self.caption,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "photo_date": self.photo_date.isoformat() if self.photo_date else None,
            "width": self.width,
            "height": self.height,
            "fused_score": self.fused_score,
            "caption_match": self.caption_match,
        }


@dataclass(frozen=True)
class SearchResponse:
    results: list[SearchResult]
    latency_ms: float
    hybrid: bool = False
    cut_off: int = 0  # results dropped by the minimum score


@dataclass(frozen=True)
class SearchOptions:
    """How to rank and trim results."""

    k: int = 10
    filters: SearchFilters = field(default_factory=SearchFilters)
    hybrid: bool = False
    min_score: float | None = None  # drop results whose cosine similarity is lower
    sort_by_date: bool = False  # newest first, applied after the cutoff


class SearchEngine:
    """Text, image and more-like-this search over one catalog with one model."""

    def __init__(
        self,
        catalog: Catalog,
        index: VectorIndex | None,
        model: torch.nn.Module,
        index_path: Path | None = None,
    ) -> None:
        self.catalog = catalog
        self.model = model
        self.index = index
        self.index_path = index_path  # reloaded when the indexer saves a newer file
        self.identity = model_identity(model)
        self._index_mtime = _mtime(index_path)
        self._model_id: int | None = None  # found once; the catalog can gain a model, not lose it
        self._lock = threading.Lock()
        self._caught_up_at = 0.0  # monotonic time of the last catch-up with a running indexer

    # -- public searches ----------------------------------------------------------------------

    def search_text(
        self,
        query: str,
        k: int = 10,
        filters: SearchFilters | None = None,
        hybrid: bool = False,
        min_score: float | None = None,
        sort_by_date: bool = False,
    ) -> SearchResponse:
        """Photos matching a text query, best first."""
        start = time.perf_counter()
        options = _options(k, filters, hybrid, min_score, sort_by_date)
        text = _check_query(query)
        model_id, index = self._ready()
        tokens = self.model.tokenizer([text]).to(self.model.device)  # (1, T)
        if len(self.model.tokenizer.encode(text)) + 2 > tokens.shape[1]:
            raise BadQueryError(
                f"the query is too long for the model ({tokens.shape[1] - 2} tokens at most); "
                "shorten it"
            )
        with torch.inference_mode():
            vector = self.model.encode_text(tokens).float().cpu().numpy()  # (1, E)
        text_hits = self._caption_hits(text, model_id, options) if hybrid else None
        return self._rank(start, model_id, index, vector[0], options, text_hits)

    def search_image(
        self,
        image: Image.Image,
        k: int = 10,
        filters: SearchFilters | None = None,
        min_score: float | None = None,
        sort_by_date: bool = False,
    ) -> SearchResponse:
        """Photos that look like `image` (an upload, already opened with `open_upload`)."""
        start = time.perf_counter()
        options = _options(k, filters, False, min_score, sort_by_date)
        model_id, index = self._ready()
        try:
            pixels = self.model.preprocess(image).unsqueeze(0).to(self.model.device)  # (1,3,S,S)
        except (ValueError, OSError) as error:
            raise BadQueryError(f"cannot use this image: {error}") from error
        with torch.inference_mode():
            vector = self.model.encode_image(pixels.to(self.model.dtype)).float().cpu().numpy()
        return self._rank(start, model_id, index, vector[0], options, None)

    def find_similar(
        self,
        image_id: int,
        k: int = 10,
        filters: SearchFilters | None = None,
        min_score: float | None = None,
        sort_by_date: bool = False,
    ) -> SearchResponse:
        """More like this: the nearest photos to a catalogued photo, itself excluded."""
        start = time.perf_counter()
        options = _options(k, filters, False, min_score, sort_by_date)
        model_id, index = self._ready()
        ids, vectors = self.catalog.get_embeddings(model_id, [image_id])
        if len(ids) == 0:
            raise BadQueryError(
                f"image {image_id} has no embedding from this model (not indexed, or a bad file)"
            )
        return self._rank(start, model_id, index, vectors[0], options, None, exclude=image_id)

    # -- readiness ----------------------------------------------------------------------------

    def model_id(self) -> int:
        """The catalog's id for the loaded model; raises when the catalog can't be searched."""
        if self._model_id is not None:
            return self._model_id
        models = self.catalog.list_models()
        if not models:
            raise EmptyCatalogError(
                "the catalog is empty: index your photos first (coca-search index PHOTOS_DIR)"
            )
        for known in models:
            if known.config_hash == self.identity.config_hash:
                self._model_id = known.id
                return known.id
        sources = ", ".join(sorted({m.source for m in models}))
        raise ModelMismatchError(
            f"the catalog was indexed with another model ({sources}), not the loaded "
            f"{self.identity.source}: load that model, or re-run coca-search index with this one"
        )

    def _ready(self) -> tuple[int, VectorIndex]:
        model_id = self.model_id()
        with self._lock:
            if self._needs_open(model_id):
                self.index = self._open_index(model_id)
            elif self._indexer_may_have_committed():
                add_committed_since_save(self.catalog, self.index, model_id)
                self._caught_up_at = time.monotonic()
            index = self.index
        if index.ntotal == 0:
            raise EmptyCatalogError(
                "no photo has been indexed with this model yet: run coca-search index PHOTOS_DIR"
            )
        return model_id, index

    def _needs_open(self, model_id: int) -> bool:
        if self.index is None or self.index.model_id != model_id or self._file_changed():
            return True
        # An empty index is checked again on every search: an indexer stopped before its first
        # save leaves the file unchanged while the catalog gains photos, and with nothing
        # indexed the check is one aggregate over no rows.
        return self.index.ntotal == 0 and self.index_path is not None

    def _indexer_may_have_committed(self) -> bool:
        """An indexer holds the folder and the last catch-up is CATCH_UP_S old (see catch_up)."""
        if self.index_path is None or time.monotonic() - self._caught_up_at < CATCH_UP_S:
            return False
        return writer_active(self.index_path)

    def _file_changed(self) -> bool:
        return self.index_path is not None and _mtime(self.index_path) != self._index_mtime

    def _open_index(self, model_id: int) -> VectorIndex:
        """The saved index when it matches the catalog, else one rebuilt (in memory) from it.

        The file's sidecar holds the catalog fingerprint it was saved at; comparing it with the
        catalog's (one SQL aggregate, once per load) catches a file left behind by an indexer
        killed or interrupted before it saved, or saved mid-run: served as is, it would miss
        committed photos or spend top-k slots on removed ones and return short results. The
        engine reloads when the indexer saves again. Readers never write the file: only the
        indexer, under its lock, may, so a reader can never overwrite a newer save.
        """
        if self.index_path is None:
            raise ModelMismatchError(
                f"the vector index is for model {getattr(self.index, 'model_id', None)}, but the "
                f"loaded model is catalogued as {model_id}: open the engine with open_engine()"
            )
        self._index_mtime = _mtime(self.index_path)
        if writer_active(self.index_path):
            saved = self._saved_index_while_indexing(model_id)
            if saved is not None:
                return saved
        return open_or_rebuild(self.catalog, model_id, self.index_path, save=False)

    def _saved_index_while_indexing(self, model_id: int) -> VectorIndex | None:
        """While an indexer runs, the catalog moves ahead of every save, so the fingerprint check
        would rebuild the whole index from the catalog at each of its saves (minutes at a
        million photos). Its latest save is served instead, as long as it holds something:
        ids removed since are skipped when results are read, and the engine reloads at the
        indexer's next save; the run's end leaves a file that matches the catalog."""
        try:
            index = VectorIndex.load(self.index_path)
        except (FileNotFoundError, IndexFileError):
            return None
        if index.model_id != model_id or index.ntotal == 0:
            return None
        add_committed_since_save(self.catalog, index, model_id)
        self._caught_up_at = time.monotonic()
        return index

    # -- ranking ------------------------------------------------------------------------------

    def _caption_hits(self, text: str, model_id: int, options: SearchOptions) -> list[int]:
        spec = options.filters.to_image_filter()
        hits = self.catalog.search_captions(
            text, model_id, limit=_candidates(options.k), spec=spec, match_all=False
        )
        return [hit.image_id for hit in hits]

    def _rank(
        self,
        start: float,
        model_id: int,
        index: VectorIndex,
        query: np.ndarray,
        options: SearchOptions,
        text_hits: list[int] | None,
        exclude: int | None = None,
    ) -> SearchResponse:
        allowed = None
        if not options.filters.is_empty:
            spec = options.filters.to_image_filter()
            allowed = self.catalog.filter_image_ids(spec, model_id)
        fetch = _candidates(options.k) if text_hits is not None else options.k
        fetch += 1 if exclude is not None else 0  # room for the excluded photo: its own nearest
        hits = index.search(query[None, :], min(fetch, MAX_K * CANDIDATES_PER_RESULT), allowed)
        vector_ranked = [(i, s) for i, s in hits.row(0) if i != exclude]
        scores = dict(vector_ranked)
        if text_hits is None:
            order = [i for i, _ in vector_ranked]
            fused: dict[int, float] = {}
        else:
            fused = _reciprocal_rank_fusion([[i for i, _ in vector_ranked], text_hits])
            order = sorted(fused, key=lambda i: -fused[i])
            self._score_missing(model_id, query, order, scores)
        details = {d.image.id: d for d in self.catalog.get_images(order[: options.k], model_id)}
        caption_matches = set(text_hits or ())
        results = [
            _result(details[i], scores.get(i, -1.0), fused.get(i), i in caption_matches)
            for i in order[: options.k]
            if i in details
        ]
        kept = [r for r in results if options.min_score is None or r.score >= options.min_score]
        if options.sort_by_date:
            kept.sort(key=lambda r: (r.photo_date is None, -(_timestamp(r.photo_date))))
        latency = (time.perf_counter() - start) * 1000
        return SearchResponse(
            kept, round(latency, 2), text_hits is not None, len(results) - len(kept)
        )

    def _score_missing(
        self, model_id: int, query: np.ndarray, ids: list[int], scores: dict[int, float]
    ) -> None:
        """Cosine scores for caption-only matches, from their stored embeddings."""
        missing = [i for i in ids if i not in scores]
        if not missing:
            return
        found_ids, vectors = self.catalog.get_embeddings(model_id, missing)
        norm = np.linalg.norm(query) or 1.0
        for image_id, similarity in zip(found_ids.tolist(), (vectors @ query) / norm, strict=True):
            scores[int(image_id)] = float(similarity)


def open_engine(data_dir: Path, model: torch.nn.Module) -> SearchEngine:
    """The engine over a data folder written by `coca-search index`, for the loaded model."""
    layout = DataLayout(Path(data_dir))
    if not layout.catalog_path.is_file():
        raise EmptyCatalogError(
            f"no catalog in {layout.data_dir}: index your photos first "
            f"(coca-search index PHOTOS_DIR --data {layout.data_dir})"
        )
    import storage

    catalog = storage.open_catalog(layout.catalog_path)
    engine = SearchEngine(catalog, None, model)
    try:
        model_id = engine.model_id()
    except SearchError:
        return engine  # searches raise the same clear error; the app shows it as a state
    engine.index_path = layout.index_path(model_id)
    return engine


def _options(
    k: int,
    filters: SearchFilters | None,
    hybrid: bool,
    min_score: float | None,
    sort_by_date: bool,
) -> SearchOptions:
    if not 1 <= k <= MAX_K:
        raise BadQueryError(f"ask for between 1 and {MAX_K} results (got k={k})")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise BadQueryError(f"min_score is a cosine similarity between -1 and 1 (got {min_score})")
    return SearchOptions(k, filters or SearchFilters(), hybrid, min_score, sort_by_date)


def _check_query(query: str) -> str:
    text = " ".join(str(query).split())
    if not text:
        raise BadQueryError("type a few words to search for, e.g. 'a red car on a beach'")
    if len(text) > MAX_QUERY_CHARS:
        raise BadQueryError(
            f"the query has {len(text)} characters; keep it under {MAX_QUERY_CHARS}"
        )
    return text


def _candidates(k: int) -> int:
    return max(MIN_CANDIDATES, k * CANDIDATES_PER_RESULT)


def _reciprocal_rank_fusion(rankings: list[list[int]]) -> dict[int, float]:
    """Sum of 1 / (RRF_K + rank) over the lists an id appears in (rank from 1)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, image_id in enumerate(ranking, start=1):
            fused[image_id] = fused.get(image_id, 0.0) + 1.0 / (RRF_K + rank)
    return fused


def _result(
    detail: ImageDetail, score: float, fused: float | None, caption_match: bool
) -> SearchResult:
    image = detail.image
    return SearchResult(
        id=image.id,
        path=str(image.abs_path),
        score=float(score),
        caption=detail.caption.text if detail.caption else None,
        taken_at=image.taken_at,
        photo_date=image.photo_date,
        width=image.width,
        height=image.height,
        fused_score=None if fused is None else round(fused, 6),
        caption_match=caption_match,
    )


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _mtime(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
