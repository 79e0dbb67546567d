"""The catalog's tables as SQLAlchemy 2.0 typed ORM classes.

The catalog is the source of truth: every image file seen, the models used, and per (image,
model) one embedding and one caption. The FAISS index (`storage.vectors`) is derived from
`embeddings` and can be rebuilt from it at any time.

Content hash (`images.content_hash`, see `storage.hashing`): "2:" + blake2b-120 over the file
size and 64 KiB of samples spread through the file (BMP and TIFF whole); older catalogs also hold
the first format, 32 hex digits over the first and last 64 KiB. It is cheap and recognises a
renamed or moved file; it is not a cryptographic identity of the whole file.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class ImageStatus(str, enum.Enum):
    OK = "ok"
    ERROR = "error"


class Image(Base):
    """One file under a library root; `path` is relative to `root`, POSIX separators.

    AUTOINCREMENT: an image id is never reused, so caches keyed by id (thumbnails, a stale vector
    index) can't show one photo's data for another.
    """

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("root", "path", name="uq_images_root_path"),
        Index("ix_images_root_folder", "root", "folder"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root: Mapped[str] = mapped_column(String)
    path: Mapped[str] = mapped_column(String)
    # Parent folder of `path` ("" at the root): folder filters and the folder list use it.
    folder: Mapped[str] = mapped_column(String, default="")
    size: Mapped[int] = mapped_column(BigInteger)
    # Integer nanoseconds: exact equality in the incremental diff, no float rounding.
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)
    camera: Mapped[str | None] = mapped_column(String)
    # EXIF taken-at when known, else the file's mtime: one indexed column for date filters/sorting.
    photo_date: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    status: Mapped[ImageStatus] = mapped_column(
        Enum(ImageStatus, values_callable=lambda e: [m.value for m in e], native_enum=False),
        default=ImageStatus.OK,
        index=True,
    )
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime)

    captions: Mapped[list[Caption]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class Model(Base):
    """A model the catalog was built with: `source` as given to `coca.load` + its config hash."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("source", "config_hash", name="uq_models_source_config"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String)
    config_hash: Mapped[str] = mapped_column(String(64))
    embed_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Caption(Base):
    """One caption per (image, model); `decoding` is `dataclasses.asdict(DecodingConfig)`."""

    __tablename__ = "captions"
    __table_args__ = (UniqueConstraint("image_id", "model_id", name="uq_captions_image_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    decoding: Mapped[dict] = mapped_column(JSON, default=dict)
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    image: Mapped[Image] = relationship(back_populates="captions")


class Embedding(Base):
    """One L2-normalised float32 vector per (image, model), stored as raw little-endian bytes.

    AUTOINCREMENT: ids are never reused, so (count, max id, sum of ids) per model fingerprints the
    embedding set; a replaced vector gets a new id and the fingerprint changes (see vectors.py).
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("image_id", "model_id", name="uq_embeddings_image_model"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    image: Mapped[Image] = relationship(back_populates="embeddings")


class SchemaVersion(Base):
    """One row per applied migration step; the catalog's version is the highest."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String)
    applied_at: Mapped[datetime] = mapped_column(DateTime)
