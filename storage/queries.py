"""The catalog's read side: what the app and the index rebuild ask (all read-only transactions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from storage import fulltext
from storage.filters import filter_conditions
from storage.records import (
    CaptionRecord,
    CatalogStats,
    EmbeddingFingerprint,
    EmbeddingSnapshot,
    FolderCount,
    ImageDetail,
    ImageFilter,
    ImageOrder,
    ImagePage,
    ImageRecord,
    ModelInfo,
    ModelStats,
    TextHit,
)
from storage.schema import Caption, Embedding, Image, ImageStatus, Model

if TYPE_CHECKING:
    from storage.db import Database

# Rows fetched per round trip when streaming all embeddings of a model.
EMBEDDING_BATCH = 20_000
_CHUNK = 500


def image_record(row: Image) -> ImageRecord:
    return ImageRecord(
        id=row.id,
        root=row.root,
        path=row.path,
        folder=row.folder,
        size=row.size,
        mtime_ns=row.mtime_ns,
        content_hash=row.content_hash,
        width=row.width,
        height=row.height,
        format=row.format,
        taken_at=row.taken_at,
        camera=row.camera,
        photo_date=row.photo_date,
        status=ImageStatus(row.status).value,
        error=row.error,
        indexed_at=row.indexed_at,
    )


def _model_info(row: Model) -> ModelInfo:
    return ModelInfo(row.id, row.source, row.config_hash, row.embed_dim)


def _fingerprint(session: Session, model_id: int) -> EmbeddingFingerprint:
    stmt = select(func.count(), func.max(Embedding.id), func.sum(Embedding.id)).where(
        Embedding.model_id == model_id
    )
    count, max_id, id_sum = session.execute(stmt).one()
    return EmbeddingFingerprint(model_id, int(count), int(max_id or 0), int(id_sum or 0))


def _id_chunks(image_ids: list[int] | None) -> list[list[int] | None]:
    if image_ids is None:
        return [None]
    return [image_ids[i : i + _CHUNK] for i in range(0, len(image_ids), _CHUNK)]


def _order_by(order: ImageOrder) -> tuple:
    if order == "path":
        return (Image.root, Image.path)
    if order == "date_asc":
        return (Image.photo_date.asc().nulls_last(), Image.id)
    return (Image.photo_date.desc().nulls_last(), Image.id.desc())


class CatalogQueries:
    db: Database

    # -- models and embeddings ----------------------------------------------------------------

    def get_model(self, model_id: int) -> ModelInfo | None:
        with self.db.session() as session:
            row = session.get(Model, model_id)
            return None if row is None else _model_info(row)

    def list_models(self) -> list[ModelInfo]:
        with self.db.session() as session:
            return [
                _model_info(m) for m in session.execute(select(Model).order_by(Model.id)).scalars()
            ]

    def images_needing_work(
        self, model_id: int, root: str | None = None, limit: int | None = None
    ) -> list[ImageRecord]:
        """Images with status ok and no embedding by `model_id`, in id order."""
        has_embedding = exists().where(
            Embedding.image_id == Image.id, Embedding.model_id == model_id
        )
        stmt = select(Image).where(Image.status == ImageStatus.OK, ~has_embedding)
        if root is not None:
            stmt = stmt.where(Image.root == root)
        with self.db.session() as session:
            rows = session.execute(stmt.order_by(Image.id).limit(limit)).scalars()
            return [image_record(row) for row in rows]

    def images_missing_caption(self, model_id: int, root: str | None = None) -> list[ImageRecord]:
        """Images with status ok and an embedding by `model_id` but no caption by it, in id order.

        What a `--no-captions` run leaves behind: a later run with captions redoes them.
        """
        has_embedding = exists().where(
            Embedding.image_id == Image.id, Embedding.model_id == model_id
        )
        has_caption = exists().where(Caption.image_id == Image.id, Caption.model_id == model_id)
        stmt = select(Image).where(Image.status == ImageStatus.OK, has_embedding, ~has_caption)
        if root is not None:
            stmt = stmt.where(Image.root == root)
        with self.db.session() as session:
            rows = session.execute(stmt.order_by(Image.id)).scalars()
            return [image_record(row) for row in rows]

    def embedding_fingerprint(self, model_id: int) -> EmbeddingFingerprint:
        """Changes with any insert, delete or replacement of the model's embeddings (cheap)."""
        with self.db.session() as session:
            return _fingerprint(session, model_id)

    def embedding_snapshot(self, model_id: int) -> EmbeddingSnapshot:
        """All embeddings of a model with the fingerprint of exactly that set (one transaction)."""
        with self.db.session() as session:
            fingerprint = _fingerprint(session, model_id)
            ids, vectors = self._read_embeddings(session, model_id, None)
        return EmbeddingSnapshot(ids, vectors, fingerprint)

    def load_embeddings(self, model_id: int) -> tuple[np.ndarray, np.ndarray]:
        """All embeddings of a model: ids (N,) int64 sorted, vectors (N, E) float32."""
        with self.db.session() as session:
            return self._read_embeddings(session, model_id, None)

    def embedded_ids_after(self, model_id: int, image_id: int) -> np.ndarray:
        """Ids (int64, sorted) of images above `image_id` that the model has embedded: what an
        index saved when `image_id` was its largest is missing of photos added since."""
        table = Embedding.__table__
        stmt = (
            select(table.c.image_id)
            .where(table.c.model_id == model_id, table.c.image_id > image_id)
            .order_by(table.c.image_id)
        )
        with self.db.session() as session:
            ids = session.connection().execute(stmt).scalars().all()
        return np.asarray(ids, dtype=np.int64)

    def get_embeddings(
        self, model_id: int, image_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the given images that have one: ids (M,) int64 sorted, (M, E) float32."""
        with self.db.session() as session:
            return self._read_embeddings(session, model_id, sorted({int(i) for i in image_ids}))

    def _read_embeddings(
        self, session: Session, model_id: int, image_ids: list[int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        embed_dim = session.execute(select(Model.embed_dim).where(Model.id == model_id)).scalar()
        if embed_dim is None:
            raise KeyError(f"model {model_id} is not in the catalog")
        table = Embedding.__table__
        where = [table.c.model_id == model_id]
        if image_ids is None:
            id_stmt = select(table.c.image_id).where(*where).order_by(table.c.image_id)
            ids = np.asarray(session.connection().execute(id_stmt).scalars().all(), np.int64)
        else:
            ids = np.asarray(image_ids, np.int64)
        vectors = np.empty((len(ids), embed_dim), np.float32)
        found = np.zeros(len(ids), bool)
        # Blobs stream in storage order (no sort of 2 KB rows) and land at their id's row.
        stmt = select(table.c.image_id, table.c.vector).order_by(table.c.id)
        for part in _id_chunks(image_ids):
            query = (
                stmt.where(*where)
                if part is None
                else stmt.where(*where, table.c.image_id.in_(part))
            )
            result = session.connection().execute(
                query.execution_options(yield_per=EMBEDDING_BATCH)
            )
            for rows in result.partitions():
                batch_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                at = np.searchsorted(ids, batch_ids)
                flat = np.frombuffer(
                    b"".join(r[1] for r in rows), dtype="<f4"
                )  # one copy per batch
                vectors[at] = flat.reshape(len(rows), embed_dim)
                found[at] = True
        if image_ids is not None and not found.all():
            ids, vectors = ids[found], vectors[found]
        return ids, vectors

    # -- images ----------------------------------------------------------------------------------

    def roots(self) -> list[str]:
        with self.db.session() as session:
            return list(
                session.execute(select(Image.root).distinct().order_by(Image.root)).scalars()
            )

    def get_images(
        self, image_ids: Sequence[int], model_id: int | None = None
    ) -> list[ImageDetail]:
        """Images with their caption (by `model_id`, else the newest), in the order asked.

        Ids not in the catalog are skipped.
        """
        wanted = [int(i) for i in image_ids]
        with self.db.session() as session:
            found: dict[int, ImageRecord] = {}
            for start in range(0, len(wanted), _CHUNK):
                rows = session.execute(
                    select(Image).where(Image.id.in_(wanted[start : start + _CHUNK]))
                )
                found.update((row.id, image_record(row)) for row in rows.scalars())
            captions = self._captions_for(session, list(found), model_id)
        return [ImageDetail(found[i], captions.get(i)) for i in wanted if i in found]

    def get_image(self, image_id: int, model_id: int | None = None) -> ImageDetail | None:
        details = self.get_images([image_id], model_id)
        return details[0] if details else None

    @staticmethod
    def _captions_for(
        session: Session, image_ids: list[int], model_id: int | None
    ) -> dict[int, CaptionRecord]:
        stmt = select(Caption, Model.source).join(Model, Model.id == Caption.model_id)
        if model_id is not None:
            stmt = stmt.where(Caption.model_id == model_id)
        chosen: dict[int, CaptionRecord] = {}
        for start in range(0, len(image_ids), _CHUNK):
            part = image_ids[start : start + _CHUNK]
            rows = session.execute(
                stmt.where(Caption.image_id.in_(part)).order_by(Caption.created_at, Caption.id)
            )
            for caption, source in rows:  # later rows are newer: they win
                chosen[caption.image_id] = CaptionRecord(
                    text=caption.text,
                    model_id=caption.model_id,
                    model_source=source,
                    decoding=dict(caption.decoding or {}),
                    score=caption.score,
                    created_at=caption.created_at,
                )
        return chosen

    def list_images(
        self,
        spec: ImageFilter | None = None,
        page: int = 0,
        page_size: int = 50,
        model_id: int | None = None,
        order: ImageOrder = "date_desc",
    ) -> ImagePage:
        """One page (0-based) of the images matching `spec`, with captions and the total count."""
        if page < 0 or page_size <= 0:
            raise ValueError(f"page must be >= 0 and page_size > 0 (got {page}, {page_size})")
        conditions = filter_conditions(spec, self.roots())
        with self.db.session() as session:
            total = session.execute(select(func.count(Image.id)).where(*conditions)).scalar_one()
            stmt = select(Image.id).where(*conditions).order_by(*_order_by(order))
            ids = list(session.execute(stmt.offset(page * page_size).limit(page_size)).scalars())
        return ImagePage(self.get_images(ids, model_id), int(total), page, page_size)

    def filter_image_ids(self, spec: ImageFilter, model_id: int | None = None) -> np.ndarray:
        """Ids (int64, sorted) of images matching `spec` (and embedded by `model_id` when given):
        the allowed set for a filtered vector search."""
        stmt = select(Image.id).where(*filter_conditions(spec, self.roots()))
        if model_id is not None:
            stmt = stmt.join(Embedding, Embedding.image_id == Image.id).where(
                Embedding.model_id == model_id
            )
        with self.db.session() as session:
            ids = session.execute(stmt.order_by(Image.id)).scalars().all()
        return np.asarray(ids, dtype=np.int64)

    def search_captions(
        self,
        query: str,
        model_id: int,
        limit: int = 100,
        spec: ImageFilter | None = None,
        match_all: bool = True,
    ) -> list[TextHit]:
        """Images whose caption matches the words of `query`, best first (FTS5 bm25 on SQLite).

        Any user text is safe: it is reduced to quoted word tokens. `match_all=False` ranks
        captions containing any of the words.
        """
        conditions = filter_conditions(spec or ImageFilter(), self.roots())
        with self.db.session() as session:
            return fulltext.search_captions(session, query, model_id, conditions, limit, match_all)

    def folders(self, root: str | None = None) -> list[FolderCount]:
        """Every folder holding images (ancestors included) with its recursive count of photos
        that can be shown (files that failed to index are left out, as browsing leaves them)."""
        stmt = (
            select(Image.root, Image.folder, func.count())
            .where(Image.status == ImageStatus.OK)
            .group_by(Image.root, Image.folder)
        )
        if root is not None:
            stmt = stmt.where(Image.root == root)
        counts: dict[tuple[str, str], int] = {}
        with self.db.session() as session:
            for root_, folder, count in session.execute(stmt):
                parts = folder.split("/") if folder else []
                for depth in range(len(parts) + 1):
                    key = (root_, "/".join(parts[:depth]))
                    counts[key] = counts.get(key, 0) + int(count)
        return [FolderCount(r, f, n) for (r, f), n in sorted(counts.items())]

    def stats(self) -> CatalogStats:
        with self.db.session() as session:
            by_status = dict(
                session.execute(select(Image.status, func.count()).group_by(Image.status)).all()
            )
            models = [
                ModelStats(
                    _model_info(model),
                    session.execute(
                        select(func.count()).where(Embedding.model_id == model.id)
                    ).scalar_one(),
                    session.execute(
                        select(func.count()).where(Caption.model_id == model.id)
                    ).scalar_one(),
                )
                for model in session.execute(select(Model).order_by(Model.id)).scalars()
            ]
        ok = int(by_status.get(ImageStatus.OK, 0))
        errors = int(by_status.get(ImageStatus.ERROR, 0))
        return CatalogStats(images=ok + errors, ok=ok, errors=errors, models=models)
