"""Plain dataclasses the catalog returns and accepts: no ORM object leaves `storage`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

ImageOrder = Literal["date_desc", "date_asc", "path"]


@dataclass(slots=True)
class KnownFile:
    """What the incremental diff needs about a catalogued file (treat as read-only).

    Not frozen: frozen construction costs twice as much, and 100k of these load per scan.
    """

    id: int
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str  # "ok" | "error"


@dataclass(frozen=True)
class ImageMeta:
    """Metadata of one decoded file, as the indexer hands it to the catalog."""

    root: str  # absolute library root, POSIX separators
    path: str  # relative to root, POSIX separators
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: datetime | None = None  # EXIF DateTimeOriginal, naive local time
    camera: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    id: int
    root: str
    path: str
    folder: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None
    height: int | None
    format: str | None
    taken_at: datetime | None
    camera: str | None
    photo_date: datetime | None  # taken_at, else the file's mtime (naive local time)
    status: str
    error: str | None
    indexed_at: datetime | None

    @property
    def abs_path(self) -> Path:
        return Path(self.root) / self.path


@dataclass(frozen=True)
class CaptionRecord:
    """A stored caption with its provenance."""

    text: str
    model_id: int
    model_source: str
    decoding: dict[str, Any]
    score: float | None
    created_at: datetime


@dataclass(frozen=True)
class ImageDetail:
    image: ImageRecord
    caption: CaptionRecord | None


@dataclass(frozen=True)
class NewCaption:
    text: str
    decoding: Mapping[str, Any] = field(default_factory=dict)  # dataclasses.asdict(DecodingConfig)
    score: float | None = None  # e.g. mean token log-probability


@dataclass(frozen=True)
class ImageResult:
    """Model output for an image already in the catalog."""

    image_id: int
    embedding: np.ndarray  # (E,) float32, L2-normalised
    caption: NewCaption | None = None


@dataclass(frozen=True)
class IndexedFile:
    """A file's metadata and its model output, committed together."""

    meta: ImageMeta
    embedding: np.ndarray  # (E,) float32, L2-normalised
    caption: NewCaption | None = None


@dataclass(frozen=True)
class ModelInfo:
    id: int
    source: str
    config_hash: str
    embed_dim: int


@dataclass(frozen=True)
class ImageFilter:
    """Restricts browse, caption search and vector search (via `Catalog.filter_image_ids`).

    `folder` is relative to `root` (or to every root when `root` is None), or an absolute path;
    it matches the folder and everything below it. Dates compare with `photo_date`; a plain `date`
    as `date_to` includes that whole day.
    """

    root: str | None = None
    folder: str | None = None
    date_from: date | datetime | None = None
    date_to: date | datetime | None = None
    status: str | None = "ok"  # None: any status

    @property
    def is_empty(self) -> bool:
        return not (self.root or self.folder or self.date_from or self.date_to)


@dataclass(frozen=True)
class ImagePage:
    items: list[ImageDetail]
    total: int  # matching images over all pages
    page: int  # 0-based
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass(frozen=True)
class TextHit:
    image_id: int
    score: float  # higher is better (negated FTS5 bm25; matched-term count on LIKE fallback)


@dataclass(frozen=True)
class FolderCount:
    root: str
    folder: str  # relative to root; "" is the root itself
    images: int  # images in this folder and below


@dataclass(frozen=True)
class ModelStats:
    model: ModelInfo
    embeddings: int
    captions: int


@dataclass(frozen=True)
class CatalogStats:
    images: int
    ok: int
    errors: int
    models: list[ModelStats]


@dataclass(frozen=True)
class EmbeddingFingerprint:
    """Identifies a model's embedding set: any insert, delete or replacement changes it.

    Embedding row ids are never reused (AUTOINCREMENT), so count + max id + id sum suffice.
    """

    model_id: int
    count: int
    max_id: int
    id_sum: int

    @property
    def token(self) -> str:
        return f"{self.model_id}:{self.count}:{self.max_id}:{self.id_sum}"


@dataclass(frozen=True)
class EmbeddingSnapshot:
    """A model's embeddings and their fingerprint, read in one transaction."""

    ids: np.ndarray  # (N,) int64, sorted
    vectors: np.ndarray  # (N, E) float32
    fingerprint: EmbeddingFingerprint
