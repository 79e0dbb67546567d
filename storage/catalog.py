"""The catalog's write side: what the indexer records (models, images, errors, model output).

Every method runs in its own transaction and takes or returns plain dataclasses (storage.records).
Reads for the app (browse, details, text search, stats) are in `storage.queries`, mixed in here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import PurePosixPath

import numpy as np
from sqlalchemy import String, delete, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.queries import CatalogQueries, image_record
from storage.records import (
    ImageMeta,
    ImageRecord,
    ImageResult,
    IndexedFile,
    KnownFile,
    NewCaption,
)
from storage.schema import Caption, Embedding, Image, ImageStatus, Model

logger = logging.getLogger(__name__)

# Rows per IN (...) list: well under SQLite's bound-parameter limit.
CHUNK = 500


def chunks(values: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _folder_of(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


def _photo_date(taken_at: datetime | None, mtime_ns: int) -> datetime:
    return taken_at if taken_at is not None else datetime.fromtimestamp(mtime_ns / 1e9)


def _meta_values(meta: ImageMeta) -> dict:
    return {
        "root": meta.root,
        "path": meta.path,
        "folder": _folder_of(meta.path),
        "size": meta.size,
        "mtime_ns": meta.mtime_ns,
        "content_hash": meta.content_hash,
        "width": meta.width,
        "height": meta.height,
        "format": meta.format,
        "taken_at": meta.taken_at,
        "camera": meta.camera,
        "photo_date": _photo_date(meta.taken_at, meta.mtime_ns),
        "status": ImageStatus.OK,
        "error": None,
        "indexed_at": _now(),
    }


class Catalog(CatalogQueries):
    """Queries and updates on one catalog database (`storage.open_catalog` makes one)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- models ---------------------------------------------------------------------------------

    def get_or_create_model(self, source: str, config_hash: str, embed_dim: int) -> int:
        """The id of the model row for (source, config_hash), created when new."""
        with self.db.session(write=True) as session:
            found = session.execute(
                select(Model).where(Model.source == source, Model.config_hash == config_hash)
            ).scalar_one_or_none()
            if found is not None:
                if found.embed_dim != embed_dim:
                    raise ValueError(
                        f"model {source!r} ({config_hash}) is catalogued with embedding size "
                        f"{found.embed_dim}, not {embed_dim}: its config hash must change too"
                    )
                return found.id
            model = Model(
                source=source, config_hash=config_hash, embed_dim=embed_dim, created_at=_now()
            )
            session.add(model)
            session.flush()
            return model.id

    # -- images -----------------------------------------------------------------------------------

    def known_files(self, root: str) -> dict[str, KnownFile]:
        """Every catalogued file under `root`: relative path -> what the incremental diff needs."""
        # Plain columns, status as text, fetched in one go: ~100k rows must load well under 1 s.
        table = Image.__table__
        stmt = select(
            table.c.path,
            table.c.id,
            table.c.size,
            table.c.mtime_ns,
            table.c.content_hash,
            type_coerce(table.c.status, String),
        ).where(table.c.root == root)
        with self.db.session() as session:
            rows = session.connection().execute(stmt).all()  # Core rows: no ORM loading cost
        return {row[0]: KnownFile(*row[1:]) for row in rows}

    def find_by_hash(self, hashes: Iterable[str]) -> dict[str, list[ImageRecord]]:
        """Catalogued images per content hash (to recognise moved or renamed files)."""
        wanted = sorted(set(hashes))
        found: dict[str, list[ImageRecord]] = {}
        with self.db.session() as session:
            for part in chunks(wanted):
                rows = session.execute(
                    select(Image).where(Image.content_hash.in_(part)).order_by(Image.id)
                ).scalars()
                for row in rows:
                    found.setdefault(row.content_hash, []).append(image_record(row))
        return found

    def upsert_images(self, metas: Sequence[ImageMeta]) -> list[int]:
        """Insert or update images by (root, path), status ok; ids in the order of `metas`.

        When a file's content hash changed, its embeddings and captions are dropped: they
        describe the old content, and the image now needs work again.
        """
        with self.db.session(write=True) as session:
            return self._upsert(session, metas)

    def upsert_image(self, meta: ImageMeta) -> int:
        return self.upsert_images([meta])[0]

    def _existing(self, session: Session, metas: Sequence[ImageMeta]) -> dict[tuple, tuple]:
        by_root: dict[str, list[str]] = {}
        for meta in metas:
            by_root.setdefault(meta.root, []).append(meta.path)
        existing: dict[tuple, tuple] = {}
        for root, paths in by_root.items():
            for part in chunks(paths):
                stmt = select(Image.path, Image.id, Image.content_hash).where(
                    Image.root == root, Image.path.in_(part)
                )
                for path, id_, content_hash in session.execute(stmt):
                    existing[(root, path)] = (id_, content_hash)
        return existing

    def _upsert(self, session: Session, metas: Sequence[ImageMeta]) -> list[int]:
        existing = self._existing(session, metas)
        ids: list[int] = []
        stale: list[int] = []
        for meta in metas:
            values = _meta_values(meta)
            found = existing.get((meta.root, meta.path))
            if found is None:
                new_id = session.execute(insert(Image).values(**values)).inserted_primary_key[0]
                existing[(meta.root, meta.path)] = (new_id, meta.content_hash)
                ids.append(int(new_id))
                continue
            image_id, old_hash = found
            session.execute(update(Image).where(Image.id == image_id).values(**values))
            if old_hash is None or old_hash != meta.content_hash:
                stale.append(image_id)
            ids.append(image_id)
        self._drop_model_output(session, stale)
        return ids

    @staticmethod
    def _drop_model_output(session: Session, image_ids: Sequence[int]) -> None:
        for part in chunks(list(image_ids)):
            session.execute(delete(Embedding).where(Embedding.image_id.in_(part)))
            session.execute(delete(Caption).where(Caption.image_id.in_(part)))

    def record_error(
        self,
        root: str,
        path: str,
        size: int,
        mtime_ns: int,
        message: str,
        content_hash: str | None = None,
    ) -> int:
        """Mark a file as failed (status error + message); returns its image id.

        Any embedding or caption it had is dropped. The file is retried when its size or
        mtime changes.
        """
        meta = ImageMeta(root=root, path=path, size=size, mtime_ns=mtime_ns, content_hash=None)
        with self.db.session(write=True) as session:
            image_id = self._upsert(session, [meta])[0]
            session.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(status=ImageStatus.ERROR, error=message, content_hash=content_hash)
            )
            return image_id

    def move_image(
        self, image_id: int, root: str, path: str, mtime_ns: int | None = None
    ) -> list[int]:
        """Give an image a new location, keeping its data (a moved or renamed file).

        A different row already at the new location describes a file that is gone: it is deleted
        and its id returned (remove it from the vector index too).
        """
        with self.db.session(write=True) as session:
            displaced = (
                session.execute(
                    select(Image.id).where(
                        Image.root == root, Image.path == path, Image.id != image_id
                    )
                )
                .scalars()
                .all()
            )
            if displaced:
                logger.info("move over %s/%s replaces catalog rows %s", root, path, displaced)
                session.execute(delete(Image).where(Image.id.in_(displaced)))
            values: dict = {"root": root, "path": path, "folder": _folder_of(path)}
            if mtime_ns is not None:
                values["mtime_ns"] = mtime_ns
            moved = session.execute(update(Image).where(Image.id == image_id).values(**values))
            if moved.rowcount == 0:
                raise KeyError(f"image {image_id} is not in the catalog")
            return [int(i) for i in displaced]

    def delete_images(self, image_ids: Iterable[int]) -> int:
        """Delete images with their captions and embeddings; returns how many rows went."""
        ids = sorted({int(i) for i in image_ids})
        deleted = 0
        with self.db.session(write=True) as session:
            for part in chunks(ids):
                deleted += session.execute(delete(Image).where(Image.id.in_(part))).rowcount
        return deleted

    # -- model output ---------------------------------------------------------------------------

    def store_results(self, model_id: int, results: Sequence[ImageResult]) -> None:
        """Store embeddings (+ captions) for catalogued images in ONE transaction.

        An embedding or caption by the same model replaces the older one.
        """
        with self.db.session(write=True) as session:
            self._store(session, model_id, [(r.image_id, r.embedding, r.caption) for r in results])

    def store_indexed(self, model_id: int, files: Sequence[IndexedFile]) -> list[int]:
        """Upsert the files' metadata and store their model output in ONE transaction."""
        with self.db.session(write=True) as session:
            ids = self._upsert(session, [f.meta for f in files])
            self._store(
                session,
                model_id,
                [(i, f.embedding, f.caption) for i, f in zip(ids, files, strict=True)],
            )
            return ids

    def _store(
        self,
        session: Session,
        model_id: int,
        items: Sequence[tuple[int, np.ndarray, NewCaption | None]],
    ) -> None:
        embed_dim = session.execute(select(Model.embed_dim).where(Model.id == model_id)).scalar()
        if embed_dim is None:
            raise KeyError(f"model {model_id} is not in the catalog: call get_or_create_model")
        image_ids = [image_id for image_id, _, _ in items]
        for part in chunks(image_ids):
            session.execute(
                delete(Embedding).where(
                    Embedding.model_id == model_id, Embedding.image_id.in_(part)
                )
            )
            session.execute(
                delete(Caption).where(Caption.model_id == model_id, Caption.image_id.in_(part))
            )
        embeddings = [_embedding_row(i, model_id, v, embed_dim) for i, v, _ in items]
        if embeddings:
            session.execute(insert(Embedding), embeddings)
        now = _now()
        captions = [_caption_row(i, model_id, c, now) for i, _, c in items if c is not None]
        if captions:
            session.execute(insert(Caption), captions)


def _embedding_row(image_id: int, model_id: int, vector: np.ndarray, embed_dim: int) -> dict:
    array = np.asarray(vector, dtype="<f4").reshape(-1)
    if array.shape[0] != embed_dim:
        raise ValueError(
            f"embedding for image {image_id} has {array.shape[0]} values; model {model_id} "
            f"stores {embed_dim}"
        )
    return {"image_id": image_id, "model_id": model_id, "vector": array.tobytes()}


def _caption_row(image_id: int, model_id: int, caption: NewCaption, now: datetime) -> dict:
    return {
        "image_id": image_id,
        "model_id": model_id,
        "text": caption.text,
        "decoding": dict(caption.decoding),
        "score": caption.score,
        "created_at": now,
    }
