"""storage: the catalog (SQLAlchemy 2.0, SQLite by default) and the FAISS vector index kept in step.

    catalog = storage.open_catalog("data/catalog.db")        # or any SQLAlchemy URL
    model_id = catalog.get_or_create_model(source, config_hash, embed_dim)
    index = storage.open_or_rebuild(catalog, model_id, "data/index-1.faiss")

Knows nothing of torch or streamlit.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL

from storage.catalog import Catalog
from storage.db import CatalogOpenError, Database
from storage.hashing import content_hash
from storage.migrations import LATEST_VERSION, SchemaVersionError, apply_migrations
from storage.records import (
    CaptionRecord,
    CatalogStats,
    EmbeddingFingerprint,
    EmbeddingSnapshot,
    FolderCount,
    ImageDetail,
    ImageFilter,
    ImageMeta,
    ImagePage,
    ImageRecord,
    ImageResult,
    IndexedFile,
    KnownFile,
    ModelInfo,
    ModelStats,
    NewCaption,
    TextHit,
)
from storage.schema import ImageStatus
from storage.vector_files import IndexFileError, IndexMeta
from storage.vectors import SearchHits, VectorIndex, VectorIndexConfig, open_or_rebuild


def open_catalog(
    target: str | Path | URL, *, echo: bool = False, read_only: bool | None = None
) -> Catalog:
    """Open (creating and migrating as needed) the catalog at a file path or SQLAlchemy URL.

    A catalog this process cannot write is opened read-only (see `Database`) and must already be
    at the current schema version. Raises `CatalogOpenError` with a one-line, actionable message
    when the file is not a catalog, cannot be opened, or is too new or too old to use.
    """
    db = Database(target, echo=echo, read_only=read_only)
    apply_migrations(db)
    return Catalog(db)


__all__ = [
    "LATEST_VERSION",
    "CaptionRecord",
    "Catalog",
    "CatalogOpenError",
    "CatalogStats",
    "Database",
    "EmbeddingFingerprint",
    "EmbeddingSnapshot",
    "FolderCount",
    "ImageDetail",
    "ImageFilter",
    "ImageMeta",
    "ImagePage",
    "ImageRecord",
    "ImageResult",
    "ImageStatus",
    "IndexFileError",
    "IndexMeta",
    "IndexedFile",
    "KnownFile",
    "ModelInfo",
    "ModelStats",
    "NewCaption",
    "SchemaVersionError",
    "SearchHits",
    "TextHit",
    "VectorIndex",
    "VectorIndexConfig",
    "apply_migrations",
    "content_hash",
    "open_catalog",
    "open_or_rebuild",
]
